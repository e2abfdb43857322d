-- Every received, verified request, byte for byte, with what became of it.
CREATE TABLE inbound (
    id                TEXT PRIMARY KEY,     -- inb_<ulid>
    source            TEXT NOT NULL,        -- configured source name
    provider          TEXT NOT NULL,
    received_at       BIGINT NOT NULL,      -- unix milliseconds
    status            TEXT NOT NULL,        -- processed | quarantined | duplicate
    provider_event    TEXT,
    provider_event_id TEXT,
    dedup_key         TEXT NOT NULL,
    verification      TEXT NOT NULL,        -- how the request was authenticated
    remote_addr       TEXT,
    headers           TEXT NOT NULL,        -- JSON array of [name, value], secrets redacted
    body              BYTEA,                 -- NULL once retention has pruned it
    error_code        TEXT,
    error_message     TEXT,
    duplicate_of      TEXT,
    processed_at      BIGINT
);
CREATE INDEX inbound_by_status ON inbound (status, id);
CREATE INDEX inbound_by_source ON inbound (source, id);

-- Provider dedup keys, kept for the configured window (at least 8 days).
CREATE TABLE dedup (
    source     TEXT NOT NULL,
    key        TEXT NOT NULL,
    inbound_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (source, key)
);
CREATE INDEX dedup_by_expiry ON dedup (expires_at);

-- Canonical events; payload is the exact JSON delivered to canonical endpoints.
CREATE TABLE events (
    id           TEXT PRIMARY KEY,          -- evt_<ulid>, time-sortable
    type         TEXT NOT NULL,
    source       TEXT NOT NULL,
    subject_kind TEXT NOT NULL,
    subject_id   TEXT NOT NULL,
    inbound_id   TEXT NOT NULL,
    occurred_at  BIGINT NOT NULL,
    received_at  BIGINT NOT NULL,
    payload      BYTEA NOT NULL
);
CREATE INDEX events_by_type ON events (type, id);
CREATE INDEX events_by_source ON events (source, id);
CREATE INDEX events_by_subject ON events (subject_id, id);
CREATE INDEX events_by_inbound ON events (inbound_id);
