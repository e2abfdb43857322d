-- Admin tokens beside the root token of the configuration. Only digests are kept.
CREATE TABLE admin_tokens (
    id           TEXT PRIMARY KEY,          -- tok_<ulid>
    name         TEXT NOT NULL,
    scope        TEXT NOT NULL,             -- read | admin
    digest       TEXT NOT NULL UNIQUE,      -- hex SHA-256 of the token
    hint         TEXT NOT NULL,             -- its first characters, to recognise it
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);

-- Console sessions: a cookie's digest, the token that opened it and the form (CSRF) token.
CREATE TABLE console_sessions (
    digest       TEXT PRIMARY KEY,
    token_id     TEXT NOT NULL,             -- tok_<ulid>, or `root` for the configuration's token
    token_digest TEXT NOT NULL,
    scope        TEXT NOT NULL,
    csrf         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at);

-- Activity per minute and instance, for the console's charts: each instance adds what it counted
-- since its last flush. Retention keeps two days.
CREATE TABLE activity (
    minute      BIGINT NOT NULL,           -- unix minutes
    instance    TEXT NOT NULL,
    ingested    BIGINT NOT NULL DEFAULT 0, -- stored messages, quarantined ones included
    duplicates  BIGINT NOT NULL DEFAULT 0,
    quarantined BIGINT NOT NULL DEFAULT 0,
    unverified  BIGINT NOT NULL DEFAULT 0,
    delivered   BIGINT NOT NULL DEFAULT 0, -- successful attempts
    failed      BIGINT NOT NULL DEFAULT 0, -- failed attempts
    PRIMARY KEY (minute, instance)
);
