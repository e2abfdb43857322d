//! Admin tokens and console sessions on PostgreSQL.

use billhook_core::access::Scope;
use billhook_core::ids::TokenId;
use billhook_core::time::Timestamp;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::ingest::parse_id;
use super::{PgStore, pg_error};
use crate::StoreError;
use crate::model::*;

fn scope(text: &str) -> Result<Scope, StoreError> {
    text.parse()
        .map_err(|e: billhook_core::access::UnknownScope| StoreError::Corrupt(e.to_string()))
}

const TOKEN_COLUMNS: &str = "id, name, scope, hint, created_at, last_used_at, revoked_at";

fn token_record(row: &Row) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id: parse_id(row.get::<_, &str>(0))?,
        name: row.get(1),
        scope: scope(row.get::<_, &str>(2))?,
        hint: row.get(3),
        created_at: Timestamp::from_unix_millis(row.get(4)),
        last_used_at: row
            .get::<_, Option<i64>>(5)
            .map(Timestamp::from_unix_millis),
        revoked_at: row
            .get::<_, Option<i64>>(6)
            .map(Timestamp::from_unix_millis),
    })
}

impl PgStore {
    pub(crate) async fn create_token(&self, token: NewToken) -> Result<TokenRecord, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO admin_tokens (id, name, scope, digest, hint, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &token.id.to_string(),
                    &token.name,
                    &token.scope.as_str(),
                    &token.digest,
                    &token.hint,
                    &token.created_at.unix_millis(),
                ],
            )
            .await
            .map_err(pg_error)?;
        Ok(TokenRecord {
            id: token.id,
            name: token.name,
            scope: token.scope,
            hint: token.hint,
            created_at: token.created_at,
            last_used_at: None,
            revoked_at: None,
        })
    }

    pub(crate) async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {TOKEN_COLUMNS} FROM admin_tokens ORDER BY id DESC"),
                &[],
            )
            .await
            .map_err(pg_error)?;
        rows.iter().map(token_record).collect()
    }

    pub(crate) async fn token_by_digest(
        &self,
        digest: String,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM admin_tokens WHERE digest = $1 AND revoked_at IS NULL"
            ))
            .await
            .map_err(pg_error)?;
        client
            .query_opt(&statement, &[&digest])
            .await
            .map_err(pg_error)?
            .as_ref()
            .map(token_record)
            .transpose()
    }

    pub(crate) async fn revoke_token(
        &self,
        id: TokenId,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(pg_error)?;
        let changed = transaction
            .execute(
                "UPDATE admin_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&id.to_string(), &now.unix_millis()],
            )
            .await
            .map_err(pg_error)?;
        transaction
            .execute(
                "DELETE FROM console_sessions WHERE token_id = $1",
                &[&id.to_string()],
            )
            .await
            .map_err(pg_error)?;
        transaction.commit().await.map_err(pg_error)?;
        Ok(changed == 1)
    }

    pub(crate) async fn touch_token(&self, id: TokenId, now: Timestamp) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE admin_tokens SET last_used_at = $2 WHERE id = $1",
                &[&id.to_string(), &now.unix_millis()],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    pub(crate) async fn create_session(&self, session: NewSession) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO console_sessions (digest, token_id, token_digest, scope, csrf,
                    created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &session.digest,
                    &session.token_id,
                    &session.token_digest,
                    &session.scope.as_str(),
                    &session.csrf,
                    &session.created_at.unix_millis(),
                    &session.expires_at.unix_millis(),
                ],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    pub(crate) async fn session(
        &self,
        digest: String,
        now: Timestamp,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT s.token_id, s.token_digest, s.scope, s.csrf, s.expires_at,
                    s.token_id = 'root' OR (t.id IS NOT NULL AND t.revoked_at IS NULL)
                 FROM console_sessions s LEFT JOIN admin_tokens t ON t.id = s.token_id
                 WHERE s.digest = $1 AND s.expires_at > $2",
            )
            .await
            .map_err(pg_error)?;
        let Some(row) = client
            .query_opt(&statement, &[&digest, &now.unix_millis()])
            .await
            .map_err(pg_error)?
        else {
            return Ok(None);
        };
        Ok(Some(SessionRecord {
            token_id: row.get(0),
            token_digest: row.get(1),
            scope: scope(row.get::<_, &str>(2))?,
            csrf: row.get(3),
            expires_at: Timestamp::from_unix_millis(row.get(4)),
            token_live: row.get(5),
        }))
    }

    pub(crate) async fn delete_session(&self, digest: String) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM console_sessions WHERE digest = $1", &[&digest])
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    pub(crate) async fn prune_sessions(&self, now: Timestamp) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM console_sessions WHERE expires_at <= $1",
                &[&now.unix_millis()],
            )
            .await
            .map_err(pg_error)
    }
}
