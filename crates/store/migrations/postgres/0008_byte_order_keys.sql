-- Text compared byte for byte. Under the database's collation every comparison of two keys in
-- an index went through the C library's locale-aware `strcoll` (a few percent of the database's
-- CPU in `billhook bench`); every text billhook stores is an id, a key, a provider's reference
-- or a value it only stores, none needing a language's order. In byte order an id's order is
-- also billhook's own (ULID text sorts by time, as in Rust and on SQLite), so a listing by kind
-- is a range of the primary key and the kind's own index goes. A later migration's text columns
-- are declared `COLLATE "C"` too (a store test checks).
--
-- The rows keep their bytes; every index on a text column is rebuilt, each table's once, and
-- the statistics of the changed columns are gone until the ANALYZE at the end. Instances of an
-- earlier version must be stopped first: statements they prepared no longer match the tables.
SET LOCAL statement_timeout = 0;
DROP INDEX ledger_by_kind;
-- An event's deliveries are found among its message's (`deliveries_by_inbound`): a message has
-- a few events, each a few deliveries, so the event's own index only repeated that, and every
-- delivery paid for it twice, when inserted and when its attempt updated it (on PostgreSQL such
-- an update writes a new entry in every index of the table).
DROP INDEX deliveries_by_event;
ALTER TABLE activity
    ALTER COLUMN instance TYPE TEXT COLLATE "C";
ALTER TABLE admin_tokens
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN name TYPE TEXT COLLATE "C",
    ALTER COLUMN scope TYPE TEXT COLLATE "C",
    ALTER COLUMN digest TYPE TEXT COLLATE "C",
    ALTER COLUMN hint TYPE TEXT COLLATE "C";
ALTER TABLE attempts
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN delivery_id TYPE TEXT COLLATE "C",
    ALTER COLUMN endpoint_id TYPE TEXT COLLATE "C",
    ALTER COLUMN error_kind TYPE TEXT COLLATE "C",
    ALTER COLUMN error_message TYPE TEXT COLLATE "C";
ALTER TABLE console_sessions
    ALTER COLUMN digest TYPE TEXT COLLATE "C",
    ALTER COLUMN token_id TYPE TEXT COLLATE "C",
    ALTER COLUMN token_digest TYPE TEXT COLLATE "C",
    ALTER COLUMN scope TYPE TEXT COLLATE "C",
    ALTER COLUMN csrf TYPE TEXT COLLATE "C";
ALTER TABLE dedup
    ALTER COLUMN source TYPE TEXT COLLATE "C",
    ALTER COLUMN key TYPE TEXT COLLATE "C",
    ALTER COLUMN inbound_id TYPE TEXT COLLATE "C";
ALTER TABLE deliveries
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN endpoint_id TYPE TEXT COLLATE "C",
    ALTER COLUMN message_id TYPE TEXT COLLATE "C",
    ALTER COLUMN event_id TYPE TEXT COLLATE "C",
    ALTER COLUMN inbound_id TYPE TEXT COLLATE "C",
    ALTER COLUMN event_type TYPE TEXT COLLATE "C",
    ALTER COLUMN status TYPE TEXT COLLATE "C",
    ALTER COLUMN lease_owner TYPE TEXT COLLATE "C",
    ALTER COLUMN last_error TYPE TEXT COLLATE "C";
ALTER TABLE endpoint_owners
    ALTER COLUMN endpoint_id TYPE TEXT COLLATE "C",
    ALTER COLUMN owner TYPE TEXT COLLATE "C";
ALTER TABLE endpoint_secrets
    ALTER COLUMN endpoint_id TYPE TEXT COLLATE "C",
    ALTER COLUMN secret TYPE TEXT COLLATE "C";
ALTER TABLE endpoints
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN name TYPE TEXT COLLATE "C",
    ALTER COLUMN url TYPE TEXT COLLATE "C",
    ALTER COLUMN description TYPE TEXT COLLATE "C",
    ALTER COLUMN event_types TYPE TEXT COLLATE "C",
    ALTER COLUMN sources TYPE TEXT COLLATE "C",
    ALTER COLUMN format TYPE TEXT COLLATE "C",
    ALTER COLUMN headers TYPE TEXT COLLATE "C",
    ALTER COLUMN disabled_reason TYPE TEXT COLLATE "C",
    ALTER COLUMN last_error TYPE TEXT COLLATE "C";
ALTER TABLE events
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN type TYPE TEXT COLLATE "C",
    ALTER COLUMN source TYPE TEXT COLLATE "C",
    ALTER COLUMN subject_kind TYPE TEXT COLLATE "C",
    ALTER COLUMN subject_id TYPE TEXT COLLATE "C",
    ALTER COLUMN inbound_id TYPE TEXT COLLATE "C";
ALTER TABLE inbound
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN source TYPE TEXT COLLATE "C",
    ALTER COLUMN provider TYPE TEXT COLLATE "C",
    ALTER COLUMN status TYPE TEXT COLLATE "C",
    ALTER COLUMN provider_event TYPE TEXT COLLATE "C",
    ALTER COLUMN provider_event_id TYPE TEXT COLLATE "C",
    ALTER COLUMN dedup_key TYPE TEXT COLLATE "C",
    ALTER COLUMN verification TYPE TEXT COLLATE "C",
    ALTER COLUMN remote_addr TYPE TEXT COLLATE "C",
    ALTER COLUMN headers TYPE TEXT COLLATE "C",
    ALTER COLUMN error_code TYPE TEXT COLLATE "C",
    ALTER COLUMN error_message TYPE TEXT COLLATE "C",
    ALTER COLUMN duplicate_of TYPE TEXT COLLATE "C";
ALTER TABLE ledger_entities
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN kind TYPE TEXT COLLATE "C",
    ALTER COLUMN provider TYPE TEXT COLLATE "C",
    ALTER COLUMN provider_id TYPE TEXT COLLATE "C",
    ALTER COLUMN source TYPE TEXT COLLATE "C",
    ALTER COLUMN status TYPE TEXT COLLATE "C",
    ALTER COLUMN provider_status TYPE TEXT COLLATE "C",
    ALTER COLUMN snapshot TYPE TEXT COLLATE "C",
    ALTER COLUMN number TYPE TEXT COLLATE "C",
    ALTER COLUMN order_ref TYPE TEXT COLLATE "C",
    ALTER COLUMN ref_invoice TYPE TEXT COLLATE "C",
    ALTER COLUMN ref_order TYPE TEXT COLLATE "C",
    ALTER COLUMN ref_merchant TYPE TEXT COLLATE "C",
    ALTER COLUMN ref_remark TYPE TEXT COLLATE "C",
    ALTER COLUMN ref_bill TYPE TEXT COLLATE "C",
    ALTER COLUMN ref_biller TYPE TEXT COLLATE "C",
    ALTER COLUMN currency TYPE TEXT COLLATE "C",
    ALTER COLUMN linked_to TYPE TEXT COLLATE "C",
    ALTER COLUMN link_rule TYPE TEXT COLLATE "C",
    ALTER COLUMN settled_event TYPE TEXT COLLATE "C",
    ALTER COLUMN unmatched_event TYPE TEXT COLLATE "C",
    ALTER COLUMN inbound_id TYPE TEXT COLLATE "C";
ALTER TABLE ledger_history
    ALTER COLUMN entity_id TYPE TEXT COLLATE "C",
    ALTER COLUMN event_id TYPE TEXT COLLATE "C",
    ALTER COLUMN event_type TYPE TEXT COLLATE "C",
    ALTER COLUMN status TYPE TEXT COLLATE "C",
    ALTER COLUMN provider_status TYPE TEXT COLLATE "C";
ANALYZE inbound, dedup, events, deliveries, attempts, ledger_entities, ledger_history;
