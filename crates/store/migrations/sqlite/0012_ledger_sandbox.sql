-- Whether an entry is known from a provider's test mode (Zwitch `is_sandbox`): payments link
-- only to invoices and bills of their own mode. An entry stored before takes the mode its
-- message's events recorded (`source.sandbox`); one whose events retention removed is live.
ALTER TABLE ledger_entities ADD COLUMN sandbox INTEGER NOT NULL DEFAULT 0;

UPDATE ledger_entities SET sandbox = 1
 WHERE provider = 'zwitch'
   AND EXISTS (SELECT 1 FROM events e
                WHERE e.inbound_id = ledger_entities.inbound_id
                  AND json_valid(CAST(e.payload AS TEXT))
                  AND json_extract(CAST(e.payload AS TEXT), '$.source.sandbox') = 1);
