-- The outbox, its attempts and the dedup keys, clustered on their keys (WITHOUT ROWID). A table
-- with a text primary key is otherwise two B-trees, the rows by rowid and the key's index, and
-- every message writes to each: one B-tree fewer per table is less work and fewer WAL pages per
-- commit. Their rows are small, which is where WITHOUT ROWID is at its best. (PostgreSQL keeps
-- heap tables; this migration has no PostgreSQL counterpart.)
CREATE TABLE deliveries_clustered (
    id               TEXT NOT NULL PRIMARY KEY,
    endpoint_id      TEXT NOT NULL,
    message_id       TEXT NOT NULL,
    event_id         TEXT,
    inbound_id       TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_until      INTEGER,
    last_status_code INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO deliveries_clustered (id, endpoint_id, message_id, event_id, inbound_id, event_type,
        status, attempts, next_attempt_at, lease_owner, lease_until, last_status_code, last_error,
        created_at, updated_at)
    SELECT id, endpoint_id, message_id, event_id, inbound_id, event_type, status, attempts,
        next_attempt_at, lease_owner, lease_until, last_status_code, last_error, created_at,
        updated_at
    FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_clustered RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries (endpoint_id, next_attempt_at)
    WHERE status IN ('pending', 'failed');
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id, id);
CREATE INDEX deliveries_by_event ON deliveries (event_id);
CREATE INDEX deliveries_by_inbound ON deliveries (inbound_id);

CREATE TABLE attempts_clustered (
    id            TEXT NOT NULL PRIMARY KEY,
    delivery_id   TEXT NOT NULL,
    endpoint_id   TEXT NOT NULL,
    number        INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    duration_ms   INTEGER NOT NULL,
    status_code   INTEGER,
    response_body BLOB,
    error_kind    TEXT,
    error_message TEXT
) WITHOUT ROWID;
INSERT INTO attempts_clustered (id, delivery_id, endpoint_id, number, started_at, duration_ms,
        status_code, response_body, error_kind, error_message)
    SELECT id, delivery_id, endpoint_id, number, started_at, duration_ms, status_code,
        response_body, error_kind, error_message
    FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_clustered RENAME TO attempts;
CREATE INDEX attempts_by_delivery ON attempts (delivery_id, id);
CREATE INDEX attempts_by_endpoint ON attempts (endpoint_id, id);

CREATE TABLE dedup_clustered (
    source     TEXT NOT NULL,
    key        TEXT NOT NULL,
    inbound_id TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (source, key)
) WITHOUT ROWID;
INSERT INTO dedup_clustered (source, key, inbound_id, expires_at)
    SELECT source, key, inbound_id, expires_at FROM dedup;
DROP TABLE dedup;
ALTER TABLE dedup_clustered RENAME TO dedup;
CREATE INDEX dedup_by_expiry ON dedup (expires_at);
