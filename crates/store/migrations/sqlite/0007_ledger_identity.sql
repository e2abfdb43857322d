-- One index for an entity's identity instead of two. The identity's uniqueness was kept by an
-- index on (kind, provider, provider_id) and lookups by the provider's id alone (a payment's
-- references, an invoice named in a bill) by a second one on provider_id. Both are keyed on a
-- provider's random id, so every new entity wrote a page of each to the WAL: together about a
-- sixth of all the pages an ingest writes. Led by provider_id, the identity index serves both.
-- SQLite cannot change a table's constraint in place, so the table is rebuilt.
CREATE TABLE ledger_entities_keyed (
    id               TEXT PRIMARY KEY,      -- iv_ / py_ / bl_ / br_ / dp_ / dc_ + ulid
    kind             TEXT NOT NULL,
    provider         TEXT NOT NULL,
    provider_id      TEXT NOT NULL,
    source           TEXT NOT NULL,
    status           TEXT,
    provider_status  TEXT,
    status_level     INTEGER NOT NULL,      -- precedence of the winning status: rank, time, hash
    status_at        INTEGER NOT NULL,
    status_tiebreak  INTEGER NOT NULL,
    status_settles   INTEGER NOT NULL,
    content_at       INTEGER NOT NULL,      -- precedence of the snapshot: time, hash
    content_tiebreak INTEGER NOT NULL,
    snapshot         TEXT NOT NULL,
    number           TEXT,                  -- invoice number, or a bill's biller reference
    order_ref        TEXT,
    ref_invoice      TEXT,                  -- a payment's references, as its source matches them
    ref_order        TEXT,
    ref_merchant     TEXT,
    ref_remark       TEXT,
    ref_bill         TEXT,
    ref_biller       TEXT,
    currency         TEXT,
    amount           INTEGER,
    counted          INTEGER NOT NULL,
    paid             INTEGER NOT NULL,
    due              INTEGER,
    overpaid         INTEGER NOT NULL,
    due_by           INTEGER,
    linked_to        TEXT,
    link_rule        TEXT,
    settled_event    TEXT,
    settled_at       INTEGER,
    unmatched_event  TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    inbound_id       TEXT NOT NULL,         -- the stored message the snapshot came from
    UNIQUE (provider_id, kind, provider)
);
INSERT INTO ledger_entities_keyed (
        id, kind, provider, provider_id, source, status, provider_status, status_level, status_at,
        status_tiebreak, status_settles, content_at, content_tiebreak, snapshot, number,
        order_ref, ref_invoice, ref_order, ref_merchant, ref_remark, ref_bill, ref_biller,
        currency, amount, counted, paid, due, overpaid, due_by, linked_to, link_rule,
        settled_event, settled_at, unmatched_event, created_at, updated_at, inbound_id)
    SELECT
        id, kind, provider, provider_id, source, status, provider_status, status_level, status_at,
        status_tiebreak, status_settles, content_at, content_tiebreak, snapshot, number,
        order_ref, ref_invoice, ref_order, ref_merchant, ref_remark, ref_bill, ref_biller,
        currency, amount, counted, paid, due, overpaid, due_by, linked_to, link_rule,
        settled_event, settled_at, unmatched_event, created_at, updated_at, inbound_id
    FROM ledger_entities;
DROP TABLE ledger_entities;
ALTER TABLE ledger_entities_keyed RENAME TO ledger_entities;
CREATE INDEX ledger_by_kind ON ledger_entities (kind, id);
CREATE INDEX ledger_unmatched ON ledger_entities (id)
    WHERE kind = 'payment' AND counted > 0 AND linked_to IS NULL AND unmatched_event IS NULL;
CREATE INDEX ledger_by_linked ON ledger_entities (linked_to) WHERE linked_to IS NOT NULL;
CREATE INDEX ledger_by_number ON ledger_entities (number) WHERE number IS NOT NULL;
CREATE INDEX ledger_by_order ON ledger_entities (order_ref) WHERE order_ref IS NOT NULL;
CREATE INDEX ledger_by_ref_invoice ON ledger_entities (ref_invoice) WHERE ref_invoice IS NOT NULL;
CREATE INDEX ledger_by_ref_order ON ledger_entities (ref_order) WHERE ref_order IS NOT NULL;
CREATE INDEX ledger_by_ref_merchant ON ledger_entities (ref_merchant)
    WHERE ref_merchant IS NOT NULL;
CREATE INDEX ledger_by_ref_remark ON ledger_entities (ref_remark) WHERE ref_remark IS NOT NULL;
CREATE INDEX ledger_by_ref_bill ON ledger_entities (ref_bill) WHERE ref_bill IS NOT NULL;
CREATE INDEX ledger_by_ref_biller ON ledger_entities (ref_biller) WHERE ref_biller IS NOT NULL;
