-- Whether an entry is known from a provider's test mode (Zwitch `is_sandbox`): payments link
-- only to invoices and bills of their own mode. Entries stored before are taken as live.
ALTER TABLE ledger_entities ADD COLUMN sandbox BOOLEAN NOT NULL DEFAULT false;
