-- Migration 5: the snapshot of what the sync last applied to each case (issue 13, updates; docs/case-status.md):
-- a JSON object of the case fields last written and the last work note sent, set after each verified update.
-- NULL on rows synced before: their first update reads the case itself as the baseline.
-- Adds only: no row is rewritten, the sync columns are untouched.
ALTER TABLE ticket_requests ADD COLUMN IF NOT EXISTS sent_fields LONGTEXT;
