//! Admin tokens and console sessions on SQLite.

use billhook_core::access::Scope;
use billhook_core::ids::TokenId;
use billhook_core::time::Timestamp;
use rusqlite::{OptionalExtension, Row, params};

use super::ingest::parse_id;
use super::{SqliteStore, db_error};
use crate::StoreError;
use crate::model::*;

fn scope(text: &str) -> Result<Scope, StoreError> {
    text.parse()
        .map_err(|e: billhook_core::access::UnknownScope| StoreError::Corrupt(e.to_string()))
}

fn millis(value: Option<i64>) -> Option<Timestamp> {
    value.map(Timestamp::from_unix_millis)
}

type TokenRow = (
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
);

fn token_row(row: &Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
    ))
}

fn token_record(row: TokenRow) -> Result<TokenRecord, StoreError> {
    let (id, name, scope_text, hint, created_at, last_used_at, revoked_at) = row;
    Ok(TokenRecord {
        id: parse_id(&id)?,
        name,
        scope: scope(&scope_text)?,
        hint,
        created_at: Timestamp::from_unix_millis(created_at),
        last_used_at: millis(last_used_at),
        revoked_at: millis(revoked_at),
    })
}

const TOKEN_COLUMNS: &str = "id, name, scope, hint, created_at, last_used_at, revoked_at";

impl SqliteStore {
    pub(crate) async fn create_token(&self, token: NewToken) -> Result<TokenRecord, StoreError> {
        self.write(move |connection| {
            connection
                .prepare_cached(
                    "INSERT INTO admin_tokens (id, name, scope, digest, hint, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        token.id.to_string(),
                        token.name,
                        token.scope.as_str(),
                        token.digest,
                        token.hint,
                        token.created_at.unix_millis()
                    ])
                })
                .map_err(db_error)?;
            Ok(TokenRecord {
                id: token.id,
                name: token.name.clone(),
                scope: token.scope,
                hint: token.hint.clone(),
                created_at: token.created_at,
                last_used_at: None,
                revoked_at: None,
            })
        })
        .await
    }

    pub(crate) async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(|connection| {
            let rows = connection
                .prepare_cached(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM admin_tokens ORDER BY id DESC"
                ))
                .and_then(|mut s| s.query_map([], token_row)?.collect::<Result<Vec<_>, _>>())
                .map_err(db_error)?;
            rows.into_iter().map(token_record).collect()
        })
        .await
    }

    pub(crate) async fn token_by_digest(
        &self,
        digest: String,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.read(move |connection| {
            connection
                .prepare_cached(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM admin_tokens WHERE digest = ?1 AND revoked_at IS NULL"
                ))
                .and_then(|mut s| s.query_row([digest], token_row).optional())
                .map_err(db_error)?
                .map(token_record)
                .transpose()
        })
        .await
    }

    pub(crate) async fn revoke_token(
        &self,
        id: TokenId,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.write(move |connection| {
            let changed = connection
                .prepare_cached(
                    "UPDATE admin_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                )
                .and_then(|mut s| s.execute(params![id.to_string(), now.unix_millis()]))
                .map_err(db_error)?;
            connection
                .prepare_cached("DELETE FROM console_sessions WHERE token_id = ?1")
                .and_then(|mut s| s.execute([id.to_string()]))
                .map_err(db_error)?;
            Ok(changed == 1)
        })
        .await
    }

    pub(crate) async fn touch_token(&self, id: TokenId, now: Timestamp) -> Result<(), StoreError> {
        self.write(move |connection| {
            connection
                .prepare_cached("UPDATE admin_tokens SET last_used_at = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id.to_string(), now.unix_millis()]))
                .map(|_| ())
                .map_err(db_error)
        })
        .await
    }

    pub(crate) async fn create_session(&self, session: NewSession) -> Result<(), StoreError> {
        self.write(move |connection| {
            connection
                .prepare_cached(
                    "INSERT INTO console_sessions (digest, token_id, token_digest, scope, csrf,
                        created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        session.digest,
                        session.token_id,
                        session.token_digest,
                        session.scope.as_str(),
                        session.csrf,
                        session.created_at.unix_millis(),
                        session.expires_at.unix_millis()
                    ])
                })
                .map(|_| ())
                .map_err(db_error)
        })
        .await
    }

    pub(crate) async fn session(
        &self,
        digest: String,
        now: Timestamp,
    ) -> Result<Option<SessionRecord>, StoreError> {
        self.read(move |connection| {
            let row = connection
                .prepare_cached(
                    "SELECT s.token_id, s.token_digest, s.scope, s.csrf, s.expires_at,
                        s.token_id = 'root' OR (t.id IS NOT NULL AND t.revoked_at IS NULL)
                     FROM console_sessions s LEFT JOIN admin_tokens t ON t.id = s.token_id
                     WHERE s.digest = ?1 AND s.expires_at > ?2",
                )
                .and_then(|mut s| {
                    s.query_row(params![digest, now.unix_millis()], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, String>(2)?,
                            row.get::<_, String>(3)?,
                            row.get::<_, i64>(4)?,
                            row.get::<_, bool>(5)?,
                        ))
                    })
                    .optional()
                })
                .map_err(db_error)?;
            row.map(
                |(token_id, token_digest, scope_text, csrf, expires_at, token_live)| {
                    Ok(SessionRecord {
                        token_id,
                        token_digest,
                        scope: scope(&scope_text)?,
                        csrf,
                        expires_at: Timestamp::from_unix_millis(expires_at),
                        token_live,
                    })
                },
            )
            .transpose()
        })
        .await
    }

    pub(crate) async fn delete_session(&self, digest: String) -> Result<(), StoreError> {
        self.write(move |connection| {
            connection
                .prepare_cached("DELETE FROM console_sessions WHERE digest = ?1")
                .and_then(|mut s| s.execute([&digest]))
                .map(|_| ())
                .map_err(db_error)
        })
        .await
    }

    pub(crate) async fn prune_sessions(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.write(move |connection| {
            connection
                .prepare_cached("DELETE FROM console_sessions WHERE expires_at <= ?1")
                .and_then(|mut s| s.execute([now.unix_millis()]))
                .map(|n| n as u64)
                .map_err(db_error)
        })
        .await
    }
}
