-- Text compared byte for byte. Under the database's collation every comparison of two keys in
-- an index went through the C library's locale-aware `strcoll` (a few percent of the database's
-- CPU in `billhook bench`); every text billhook stores is an id, a key, a provider's reference
-- or a value it only stores, none needing a language's order. In byte order, an id's order is
-- also billhook's own (`ulid` text sorts by time, as it does in Rust and on SQLite), so a
-- listing by kind is a range of the primary key: the kind's own index goes. Equality between
-- columns of different collations is an error, so every text column changes, and a later
-- migration's text columns are declared `COLLATE "C"` (a store test checks). Only the indexes
-- on these columns are rebuilt: the rows keep their bytes.
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN
        SELECT table_name, column_name FROM information_schema.columns
        WHERE table_schema = current_schema() AND data_type = 'text'
          AND collation_name IS DISTINCT FROM 'C'
        ORDER BY table_name, ordinal_position
    LOOP
        EXECUTE format('ALTER TABLE %I ALTER COLUMN %I TYPE TEXT COLLATE "C"',
                       c.table_name, c.column_name);
    END LOOP;
END
$$;
DROP INDEX ledger_by_kind;
-- An event's deliveries are found among its message's (`deliveries_by_inbound`): a message has
-- a few events, each a few deliveries, so the event's own index only repeated that, and every
-- delivery paid for it twice, when inserted and when its attempt updated it (on PostgreSQL such
-- an update writes a new entry in every index of the table).
DROP INDEX deliveries_by_event;
