-- The ledger: one row per invoice, payment, bill, biller, dispute or document, holding what
-- billhook concluded about it. Typed columns hold what is queried; `snapshot` the latest content.
CREATE TABLE ledger_entities (
    id               TEXT PRIMARY KEY,      -- iv_ / py_ / bl_ / br_ / dp_ / dc_ + ulid
    kind             TEXT NOT NULL,
    provider         TEXT NOT NULL,
    provider_id      TEXT NOT NULL,
    source           TEXT NOT NULL,
    status           TEXT,
    provider_status  TEXT,
    status_level     INTEGER NOT NULL,      -- precedence of the winning status: rank, time, hash
    status_at        BIGINT NOT NULL,
    status_tiebreak  BIGINT NOT NULL,
    status_settles   BOOLEAN NOT NULL,
    content_at       BIGINT NOT NULL,      -- precedence of the snapshot: time, hash
    content_tiebreak BIGINT NOT NULL,
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
    amount           BIGINT,
    counted          BIGINT NOT NULL,
    paid             BIGINT NOT NULL,
    due              BIGINT,
    overpaid         BIGINT NOT NULL,
    due_by           BIGINT,
    linked_to        TEXT,
    link_rule        TEXT,
    settled_event    TEXT,
    settled_at       BIGINT,
    unmatched_event  TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    inbound_id       TEXT NOT NULL,         -- the stored message the snapshot came from
    UNIQUE (kind, provider, provider_id)
);
CREATE INDEX ledger_by_kind ON ledger_entities (kind, id);
-- Payments' references and invoice lookups name the provider's id.
CREATE INDEX ledger_by_provider_id ON ledger_entities (provider_id);
-- The sweep for payments no invoice claimed reads only those.
CREATE INDEX ledger_unmatched ON ledger_entities (id)
    WHERE kind = 'payment' AND counted > 0 AND linked_to IS NULL AND unmatched_event IS NULL;
CREATE INDEX ledger_by_linked ON ledger_entities (linked_to);
CREATE INDEX ledger_by_number ON ledger_entities (number);
CREATE INDEX ledger_by_order ON ledger_entities (order_ref);
CREATE INDEX ledger_by_ref_invoice ON ledger_entities (ref_invoice);
CREATE INDEX ledger_by_ref_order ON ledger_entities (ref_order);
CREATE INDEX ledger_by_ref_merchant ON ledger_entities (ref_merchant);
CREATE INDEX ledger_by_ref_remark ON ledger_entities (ref_remark);
CREATE INDEX ledger_by_ref_bill ON ledger_entities (ref_bill);
CREATE INDEX ledger_by_ref_biller ON ledger_entities (ref_biller);

-- Every status an entity reported, applied or not.
CREATE TABLE ledger_history (
    seq             BIGSERIAL PRIMARY KEY,
    entity_id       TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    status          TEXT,
    provider_status TEXT,
    level           INTEGER,
    occurred_at     BIGINT NOT NULL,
    received_at     BIGINT NOT NULL,
    applied         BOOLEAN NOT NULL
);
CREATE INDEX ledger_history_by_entity ON ledger_history (entity_id, seq);
