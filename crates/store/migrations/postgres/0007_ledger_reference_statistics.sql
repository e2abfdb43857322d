-- The references payments carry are searched only for an invoice's or a bill's own id and
-- number, values that are rare among them, while their statistics describe the common ones:
-- many payments share a remark or a merchant reference. Ingest transactions run the lookups on
-- plans their connections keep, made for any value, and with those statistics such a plan reads
-- every payment instead of the references' indexes. Declared all distinct, every value looks
-- rare to the planner, which is right for the values billhook looks for. Applied by the next
-- ANALYZE, run here so it holds at once.
ALTER TABLE ledger_entities
    ALTER COLUMN ref_invoice SET (n_distinct = -1),
    ALTER COLUMN ref_order SET (n_distinct = -1),
    ALTER COLUMN ref_merchant SET (n_distinct = -1),
    ALTER COLUMN ref_remark SET (n_distinct = -1),
    ALTER COLUMN ref_bill SET (n_distinct = -1),
    ALTER COLUMN ref_biller SET (n_distinct = -1);
ANALYZE ledger_entities (ref_invoice, ref_order, ref_merchant, ref_remark, ref_bill, ref_biller);
