-- Migration 2: the status CHECK constraint also admits 'update_pending' (a created row whose case is to be
-- updated; issue 13 writes it). Widening only: every existing row satisfies the new constraint, no row is rewritten.
-- Safe to run twice: it drops whichever CHECK constraints cover the status column alone (found in the catalog, as
-- their names depend on the table's name) and adds the new one under a fixed name.
DO $$
DECLARE
    con record;
BEGIN
    FOR con IN
        SELECT c.conname
          FROM pg_constraint c
          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
         WHERE c.conrelid = 'ticket_requests'::regclass AND c.contype = 'c' AND a.attname = 'status'
           AND cardinality(c.conkey) = 1
    LOOP
        EXECUTE format('ALTER TABLE ticket_requests DROP CONSTRAINT %I', con.conname);
    END LOOP;
END
$$;
ALTER TABLE ticket_requests ADD CONSTRAINT ticket_requests_status_check
    CHECK (status IN ('pending', 'created', 'rejected', 'failed', 'update_pending'));
