-- PENDING MIGRATION (issue 13, status back; to become a numbered migration of issue 14's runner).
-- Adds the case's state as ServiceNow reports it, and the status pull's watermark. Applied by
-- SourceTable.ensure_case_status_schema() when `case_state` is missing (SQLite has no ADD COLUMN IF NOT EXISTS).
ALTER TABLE ticket_requests ADD COLUMN case_state TEXT;
ALTER TABLE ticket_requests ADD COLUMN case_state_label TEXT;
ALTER TABLE ticket_requests ADD COLUMN case_updated_at TEXT;
ALTER TABLE ticket_requests ADD COLUMN case_checked_at TEXT;
CREATE INDEX IF NOT EXISTS ticket_requests_sys_id_idx ON ticket_requests (sys_id) WHERE sys_id IS NOT NULL;
-- One row per instance table pulled: the newest sys_updated_on written back ('YYYY-MM-DD HH:MM:SS', UTC, as the
-- instance writes it), where the existence check of stored cases goes on, and when a pull last read to its end.
CREATE TABLE IF NOT EXISTS ticket_requests_status_pulls (
    instance_table  TEXT PRIMARY KEY,
    watermark       TEXT,
    verify_after_id INTEGER NOT NULL DEFAULT 0,
    completed_at    TEXT,
    updated_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
