-- PENDING MIGRATION (issue 12, business keys for references), SQLite. To become a numbered migration of the
-- migration runner (issue 14). Until then ensure_schema applies it after the base schema, skipping each
-- ADD COLUMN whose column exists already (SQLite has no ADD COLUMN IF NOT EXISTS).
-- Producer columns: a business key in place of a reference sys_id (either one per reference, never both).
ALTER TABLE ticket_requests ADD COLUMN consumer_number TEXT;
ALTER TABLE ticket_requests ADD COLUMN account_number TEXT;
ALTER TABLE ticket_requests ADD COLUMN assignment_group_name TEXT;
-- Written by the sync: the sys_ids the keys resolved to, as a JSON object {"consumer": "<sys_id>", ...}.
ALTER TABLE ticket_requests ADD COLUMN resolved_references TEXT;
