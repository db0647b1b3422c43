-- Migration 4 (issue 12): business keys for reference fields. Producer columns: a key in place of a reference
-- sys_id (either one per reference, never both): consumer_number -> csm_consumer.number (fills consumer),
-- account_number -> sn_bom_financial_account.account_number (sold_product), assignment_group_name ->
-- sys_user_group.name (assignment_group). Sync column: resolved_references, the sys_ids the keys resolved to, as
-- JSON {"consumer": "<sys_id>", ...}. Only adds nullable columns: no row is rewritten. Each statement commits by
-- itself on MariaDB and is safe to run again (ADD COLUMN IF NOT EXISTS).
ALTER TABLE ticket_requests ADD COLUMN IF NOT EXISTS consumer_number LONGTEXT;
ALTER TABLE ticket_requests ADD COLUMN IF NOT EXISTS account_number LONGTEXT;
ALTER TABLE ticket_requests ADD COLUMN IF NOT EXISTS assignment_group_name LONGTEXT;
ALTER TABLE ticket_requests ADD COLUMN IF NOT EXISTS resolved_references LONGTEXT;
