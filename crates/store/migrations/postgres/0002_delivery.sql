-- Subscriber endpoints. `name` is set for endpoints declared in the configuration file.
CREATE TABLE endpoints (
    id              TEXT PRIMARY KEY,       -- ep_<ulid>
    name            TEXT UNIQUE,
    url             TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    event_types     TEXT NOT NULL,          -- JSON array of patterns (`invoice.*`)
    sources         TEXT,                   -- JSON array of source names; NULL: every source
    format          TEXT NOT NULL,          -- canonical | raw
    headers         TEXT NOT NULL DEFAULT '[]', -- JSON array of [name, value]
    rate_limit      INTEGER,               -- requests per second
    max_concurrency INTEGER,
    enabled         BOOLEAN NOT NULL DEFAULT TRUE,
    disabled_reason TEXT,
    failing_since   BIGINT,                -- first failure since the last success
    last_success_at BIGINT,
    last_failure_at BIGINT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    deleted_at      BIGINT
);

-- Signing secrets; the current one has no expiry, rotated-out ones sign until expires_at.
CREATE TABLE endpoint_secrets (
    seq         BIGSERIAL PRIMARY KEY,
    endpoint_id TEXT NOT NULL,
    secret      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT
);
CREATE INDEX endpoint_secrets_by_endpoint ON endpoint_secrets (endpoint_id);

-- The outbox: one row per message owed to an endpoint, written in the ingest transaction.
CREATE TABLE deliveries (
    id               TEXT PRIMARY KEY,      -- dlv_<ulid>
    endpoint_id      TEXT NOT NULL,
    message_id       TEXT NOT NULL,         -- webhook-id: the event id, or the inbound id (raw)
    event_id         TEXT,                  -- NULL for raw deliveries
    inbound_id       TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    status           TEXT NOT NULL,         -- pending | failed | delivered | dead | held | cancelled
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    lease_owner      TEXT,
    lease_until      BIGINT,
    last_status_code INTEGER,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (endpoint_id, next_attempt_at)
    WHERE status IN ('pending', 'failed');
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id, id);
CREATE INDEX deliveries_by_event ON deliveries (event_id);
CREATE INDEX deliveries_by_inbound ON deliveries (inbound_id);

-- Every HTTP attempt of a delivery.
CREATE TABLE attempts (
    id            TEXT PRIMARY KEY,         -- att_<ulid>
    delivery_id   TEXT NOT NULL,
    endpoint_id   TEXT NOT NULL,
    number        INTEGER NOT NULL,
    started_at    BIGINT NOT NULL,
    duration_ms   BIGINT NOT NULL,
    status_code   INTEGER,
    response_body BYTEA,                     -- the first 4 KiB
    error_kind    TEXT,                     -- timeout | connect | tls | ssrf_refused | …
    error_message TEXT
);
CREATE INDEX attempts_by_delivery ON attempts (delivery_id, id);
CREATE INDEX attempts_by_endpoint ON attempts (endpoint_id, id);

-- Which instance delivers to an endpoint: one at a time, so per-endpoint rate limits and
-- concurrency caps hold across instances. Taken over when `until` passes.
CREATE TABLE endpoint_owners (
    endpoint_id TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    until       BIGINT NOT NULL
);
