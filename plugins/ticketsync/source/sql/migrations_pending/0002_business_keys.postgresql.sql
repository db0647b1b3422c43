-- PENDING MIGRATION (issue 12, business keys for references), PostgreSQL. To become a numbered migration of the
-- migration runner (issue 14). Until then ensure_schema applies it after the base schema; idempotent.
-- Producer columns: a business key in place of a reference sys_id (either one per reference, never both).
ALTER TABLE ticket_requests ADD COLUMN IF NOT EXISTS consumer_number TEXT;
ALTER TABLE ticket_requests ADD COLUMN IF NOT EXISTS account_number TEXT;
ALTER TABLE ticket_requests ADD COLUMN IF NOT EXISTS assignment_group_name TEXT;
-- Written by the sync: the sys_ids the keys resolved to, as a JSON object {"consumer": "<sys_id>", ...}.
ALTER TABLE ticket_requests ADD COLUMN IF NOT EXISTS resolved_references TEXT;
