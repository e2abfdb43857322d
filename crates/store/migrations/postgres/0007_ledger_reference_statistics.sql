-- No planner statistics for the references payments carry. Link lookups search them only for
-- an invoice's or a bill's own id and number, values that are rare among them, while what the
-- statistics describe are the common ones: many payments share a remark or a merchant
-- reference. Ingest transactions run the lookups on plans their connections keep, made for any
-- value, and with these statistics such a plan reads every payment instead of the references'
-- indexes. Without them the planner assumes each value is rare, which is right for the values
-- billhook looks for.
ALTER TABLE ledger_entities
    ALTER COLUMN ref_invoice SET STATISTICS 0,
    ALTER COLUMN ref_order SET STATISTICS 0,
    ALTER COLUMN ref_merchant SET STATISTICS 0,
    ALTER COLUMN ref_remark SET STATISTICS 0,
    ALTER COLUMN ref_bill SET STATISTICS 0,
    ALTER COLUMN ref_biller SET STATISTICS 0;
-- Statistics gathered before stay until removed, which takes a superuser; a database owned by
-- a less privileged role keeps them (its lookups plan as before until the columns' statistics
-- are removed by hand).
DO $$
BEGIN
    DELETE FROM pg_statistic
    WHERE starelid = 'ledger_entities'::regclass
      AND staattnum IN (SELECT attnum FROM pg_attribute
                        WHERE attrelid = 'ledger_entities'::regclass
                          AND attname IN ('ref_invoice', 'ref_order', 'ref_merchant',
                                          'ref_remark', 'ref_bill', 'ref_biller'));
EXCEPTION WHEN insufficient_privilege THEN
    NULL;
END
$$;
