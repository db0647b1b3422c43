-- Migration 3: the case's state as ServiceNow reports it (issue 13, status back; written by the DAG
-- servicenow_case_status, docs/case-status.md), an index to write it back by sys_id, and the status pull's watermark
-- table. Adds only: no row is rewritten, the sync columns are untouched.
ALTER TABLE ticket_requests ADD COLUMN IF NOT EXISTS case_state TEXT;
ALTER TABLE ticket_requests ADD COLUMN IF NOT EXISTS case_state_label TEXT;
ALTER TABLE ticket_requests ADD COLUMN IF NOT EXISTS case_updated_at TIMESTAMPTZ;
ALTER TABLE ticket_requests ADD COLUMN IF NOT EXISTS case_checked_at TIMESTAMPTZ;
CREATE INDEX IF NOT EXISTS ticket_requests_sys_id_idx ON ticket_requests (sys_id) WHERE sys_id IS NOT NULL;
-- One row per instance table pulled: the newest sys_updated_on written back ('YYYY-MM-DD HH:MM:SS', UTC, as the
-- instance writes it), where the existence check of stored cases goes on, and when a pull last read to its end.
CREATE TABLE IF NOT EXISTS ticket_requests_status_pulls (
    instance_table  TEXT PRIMARY KEY,
    watermark       TEXT,
    verify_after_id BIGINT NOT NULL DEFAULT 0,
    completed_at    TIMESTAMPTZ,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
