-- Migration 6 (issue 12, sync definitions): two producer columns of FSO case tables that the ticket_requests
-- contract did not have, read by the definitions that map them (the credit card service case sends them as
-- description and priority; the loan definition does not read them). Every source table gets them: the schema is
-- one for every definition (docs/definitions.md, docs/adr/0017). Nullable, no default: no row's values change.
-- SQLite has no ADD COLUMN IF NOT EXISTS, so, as migrations 2 to 5 do, the table is rebuilt with the new (NULL)
-- columns at its end, in the runner's one transaction: safe to run twice on the schema it upgrades from.
-- No foreign keys, triggers or views refer to the table; a rebuild of a table with any must recreate them here.
DROP TABLE IF EXISTS ticket_requests_rebuild;
CREATE TABLE ticket_requests_rebuild (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id         TEXT NOT NULL UNIQUE,
    source_system      TEXT,
    target_table       TEXT NOT NULL DEFAULT 'sn_bom_loan_service',
    consumer           TEXT,
    sold_product       TEXT,
    assignment_group   TEXT,
    contact_type       TEXT,
    product            TEXT,
    service_definition TEXT,
    category           TEXT,
    short_description  TEXT,
    notes              TEXT,
    status             TEXT NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'created', 'rejected', 'failed', 'update_pending')),
    sys_id             TEXT,
    number             TEXT,
    error              TEXT,
    attempts           INTEGER NOT NULL DEFAULT 0,
    synced_at          TEXT,
    sync_action        TEXT CHECK (sync_action IN ('created', 'adopted')),
    last_http_status   INTEGER,
    claim_token        TEXT,
    lease_expires_at   TEXT,
    created_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    case_state         TEXT,
    case_state_label   TEXT,
    case_updated_at    TEXT,
    case_checked_at    TEXT,
    consumer_number       TEXT,
    account_number        TEXT,
    assignment_group_name TEXT,
    resolved_references   TEXT,
    sent_fields           TEXT,
    description           TEXT,
    priority              TEXT
);
INSERT INTO ticket_requests_rebuild (
    id, request_id, source_system, target_table, consumer, sold_product, assignment_group, contact_type, product,
    service_definition, category, short_description, notes, status, sys_id, number, error, attempts, synced_at,
    sync_action, last_http_status, claim_token, lease_expires_at, created_at, updated_at, case_state,
    case_state_label, case_updated_at, case_checked_at, consumer_number, account_number, assignment_group_name,
    resolved_references, sent_fields)
SELECT
    id, request_id, source_system, target_table, consumer, sold_product, assignment_group, contact_type, product,
    service_definition, category, short_description, notes, status, sys_id, number, error, attempts, synced_at,
    sync_action, last_http_status, claim_token, lease_expires_at, created_at, updated_at, case_state,
    case_state_label, case_updated_at, case_checked_at, consumer_number, account_number, assignment_group_name,
    resolved_references, sent_fields
FROM ticket_requests;
-- AUTOINCREMENT: carry the old high-water mark, so an id once used (by a since-deleted row) is never reused.
DELETE FROM sqlite_sequence WHERE name = 'ticket_requests_rebuild';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'ticket_requests_rebuild', seq FROM sqlite_sequence WHERE name = 'ticket_requests';
DROP TABLE ticket_requests;
ALTER TABLE ticket_requests_rebuild RENAME TO ticket_requests;
CREATE INDEX IF NOT EXISTS ticket_requests_pending_idx ON ticket_requests (id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS ticket_requests_claim_idx ON ticket_requests (claim_token, id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS ticket_requests_sys_id_idx ON ticket_requests (sys_id) WHERE sys_id IS NOT NULL;
