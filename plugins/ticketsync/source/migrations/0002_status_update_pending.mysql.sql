-- Migration 2: the status CHECK constraint also admits 'update_pending' (a created row whose case is to be
-- updated; issue 13 writes it). Widening only: every existing row satisfies the new constraint, no row is rewritten.
-- MariaDB keeps a column's CHECK with the column: MODIFY replaces both. DDL commits by itself on MariaDB / MySQL, so
-- this one statement is the whole migration, and it is safe to run twice.
ALTER TABLE ticket_requests MODIFY status VARCHAR(16) NOT NULL DEFAULT 'pending'
    CHECK (status IN ('pending', 'created', 'rejected', 'failed', 'update_pending'));
