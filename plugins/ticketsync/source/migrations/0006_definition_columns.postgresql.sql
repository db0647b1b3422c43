-- Migration 6 (issue 12, sync definitions): two producer columns of FSO case tables that the ticket_requests
-- contract did not have, read by the definitions that map them (the credit card service case sends them as
-- description and priority; the loan definition does not read them). Every source table gets them: the schema is
-- one for every definition (docs/definitions.md, docs/adr/0017). Nullable, no default: no row is rewritten.
ALTER TABLE ticket_requests ADD COLUMN IF NOT EXISTS description TEXT;
ALTER TABLE ticket_requests ADD COLUMN IF NOT EXISTS priority TEXT;
