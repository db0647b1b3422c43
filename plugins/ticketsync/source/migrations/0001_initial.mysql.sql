-- ticketsync source table, MariaDB >= 10.6 / MySQL >= 8.0. Idempotent: safe to run on every DAG run.
-- Columns up to `notes` are written by the producing system; the rest belong to the sync.
-- Timestamps are DATETIME(6) in UTC. Text compares byte for byte (utf8mb4_nopad_bin), as on PostgreSQL: request
-- ids and claim tokens that differ in case or trailing blanks are different. Free text is LONGTEXT (unbounded, like
-- TEXT on PostgreSQL); the indexed columns are VARCHAR.
CREATE TABLE IF NOT EXISTS ticket_requests (
    id                 BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    request_id         VARCHAR(255) NOT NULL UNIQUE,
    source_system      LONGTEXT,
    target_table       LONGTEXT NOT NULL DEFAULT 'sn_bom_loan_service',
    consumer           LONGTEXT,
    sold_product       LONGTEXT,
    assignment_group   LONGTEXT,
    contact_type       LONGTEXT,
    product            LONGTEXT,
    service_definition LONGTEXT,
    category           LONGTEXT,
    short_description  LONGTEXT,
    notes              LONGTEXT,
    -- written by the sync
    status             VARCHAR(16) NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'created', 'rejected', 'failed')),
    sys_id             LONGTEXT,
    number             LONGTEXT,
    error              LONGTEXT,
    attempts           INTEGER NOT NULL DEFAULT 0,
    synced_at          DATETIME(6),
    sync_action        VARCHAR(16) CHECK (sync_action IN ('created', 'adopted')),
    last_http_status   INTEGER,
    claim_token        VARCHAR(512),
    lease_expires_at   DATETIME(6),
    created_at         DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    updated_at         DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;
-- No partial indexes here: status leads instead of a WHERE status = 'pending'.
CREATE INDEX IF NOT EXISTS ticket_requests_pending_idx ON ticket_requests (status, id);
CREATE INDEX IF NOT EXISTS ticket_requests_claim_idx ON ticket_requests (claim_token, status, id);
-- Audit trail of replays (DAG param request_ids): each row reset to pending, as it was before. Append-only.
CREATE TABLE IF NOT EXISTS ticket_requests_replays (
    id                   BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    request_id           VARCHAR(255) NOT NULL,
    claim_token          VARCHAR(512) NOT NULL,
    previous_status      VARCHAR(16) NOT NULL,
    previous_error       LONGTEXT,
    previous_sys_id      LONGTEXT,
    previous_number      LONGTEXT,
    previous_sync_action VARCHAR(16),
    previous_attempts    INTEGER NOT NULL,
    replayed_at          DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;
CREATE INDEX IF NOT EXISTS ticket_requests_replays_request_idx ON ticket_requests_replays (request_id);
