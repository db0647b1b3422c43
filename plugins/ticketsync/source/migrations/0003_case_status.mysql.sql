-- Migration 3: the case's state as ServiceNow reports it (issue 13, status back; written by the DAG
-- servicenow_case_status, docs/case-status.md), an index to write it back by sys_id, and the status pull's watermark
-- table. Adds only: no row is rewritten, the sync columns are untouched.
-- Every statement is safe to run again from any point (MariaDB commits each DDL statement by itself).
ALTER TABLE ticket_requests ADD COLUMN IF NOT EXISTS case_state VARCHAR(64);
ALTER TABLE ticket_requests ADD COLUMN IF NOT EXISTS case_state_label LONGTEXT;
ALTER TABLE ticket_requests ADD COLUMN IF NOT EXISTS case_updated_at DATETIME(6);
ALTER TABLE ticket_requests ADD COLUMN IF NOT EXISTS case_checked_at DATETIME(6);
CREATE INDEX IF NOT EXISTS ticket_requests_sys_id_idx ON ticket_requests (sys_id(32));
-- One row per instance table pulled: the newest sys_updated_on written back ('YYYY-MM-DD HH:MM:SS', UTC, as the
-- instance writes it), where the existence check of stored cases goes on, and when a pull last read to its end.
CREATE TABLE IF NOT EXISTS ticket_requests_status_pulls (
    instance_table  VARCHAR(255) NOT NULL PRIMARY KEY,
    watermark       VARCHAR(19),
    verify_after_id BIGINT NOT NULL DEFAULT 0,
    completed_at    DATETIME(6),
    updated_at      DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;
