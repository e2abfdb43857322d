-- Whether an entry is known from a provider's test mode (Zwitch `is_sandbox`): payments link
-- only to invoices and bills of their own mode. An entry stored before takes the mode its
-- message's events recorded (`source.sandbox`, in billhook's own JSON); one whose events
-- retention removed is live. A payload holding the escape of U+0000, which jsonb refuses, is
-- skipped rather than failing the upgrade.
ALTER TABLE ledger_entities ADD COLUMN sandbox BOOLEAN NOT NULL DEFAULT false;

UPDATE ledger_entities le SET sandbox = true
 WHERE le.provider = 'zwitch'
   AND EXISTS (SELECT 1 FROM events e
                WHERE e.inbound_id = le.inbound_id
                  AND CASE WHEN strpos(convert_from(e.payload, 'UTF8'), '\u0000') = 0
                           THEN convert_from(e.payload, 'UTF8')::jsonb #>> '{source,sandbox}'
                      END = 'true');
