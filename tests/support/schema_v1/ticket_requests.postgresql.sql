-- ticketsync source table, PostgreSQL. Idempotent: safe to run on every DAG run.
-- Columns up to `notes` are written by the producing system; the rest belong to the sync.
CREATE TABLE IF NOT EXISTS ticket_requests (
    id                 BIGSERIAL PRIMARY KEY,
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
    -- written by the sync
    status             TEXT NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'created', 'rejected', 'failed')),
    sys_id             TEXT,
    number             TEXT,
    error              TEXT,
    attempts           INTEGER NOT NULL DEFAULT 0,
    synced_at          TIMESTAMPTZ,
    sync_action        TEXT CHECK (sync_action IN ('created', 'adopted')),
    last_http_status   INTEGER,
    claim_token        TEXT,
    lease_expires_at   TIMESTAMPTZ,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ticket_requests_pending_idx ON ticket_requests (id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS ticket_requests_claim_idx ON ticket_requests (claim_token, id) WHERE status = 'pending';
-- Audit trail of replays (DAG param request_ids): each row reset to pending, as it was before. Append-only.
CREATE TABLE IF NOT EXISTS ticket_requests_replays (
    id                   BIGSERIAL PRIMARY KEY,
    request_id           TEXT NOT NULL,
    claim_token          TEXT NOT NULL,
    previous_status      TEXT NOT NULL,
    previous_error       TEXT,
    previous_sys_id      TEXT,
    previous_number      TEXT,
    previous_sync_action TEXT,
    previous_attempts    INTEGER NOT NULL,
    replayed_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ticket_requests_replays_request_idx ON ticket_requests_replays (request_id);
