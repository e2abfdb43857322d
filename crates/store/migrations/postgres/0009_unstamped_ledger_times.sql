-- Bharat Connect invoices (Zwitch) and CamInvoice documents carry no provider time. Their
-- snapshots and statuses are now ordered by rank and a hash, at the unstamped time
-- (i64::MIN + 1), never by when they arrived: providers retry at any time. Entries stored
-- before took their reception time instead; they take the unstamped time, so a new snapshot
-- compares with them as with its own kind.
UPDATE ledger_entities SET content_at = -9223372036854775807
 WHERE (kind = 'invoice' AND provider = 'zwitch')
    OR (kind = 'document' AND provider = 'caminvoice');

UPDATE ledger_entities SET status_at = -9223372036854775807
 WHERE status IS NOT NULL
   AND ((kind = 'invoice' AND provider = 'zwitch')
     OR (kind = 'document' AND provider = 'caminvoice'));
