//! Endpoints and their signing secrets on PostgreSQL.

use billhook_core::ids::EndpointId;
use billhook_core::time::Timestamp;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::ingest::parse_id;
use super::{DB_NOW, PgStore, pg_error, unsigned};
use crate::StoreError;
use crate::model::*;
use crate::page::{clamp_limit, paginate};

const ENDPOINT_COLUMNS: &str = "id, name, url, description, event_types, sources, format, headers,
    rate_limit, max_concurrency, enabled, disabled_reason, failing_since, last_success_at,
    last_failure_at, last_error, created_at, updated_at";

fn json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Database(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("stored {what}: {e}")))
}

fn millis(value: Option<i64>) -> Option<Timestamp> {
    value.map(Timestamp::from_unix_millis)
}

async fn to_record<C: GenericClient>(client: &C, row: &Row) -> Result<EndpointRecord, StoreError> {
    let id: EndpointId = parse_id(row.get::<_, &str>(0))?;
    Ok(EndpointRecord {
        id,
        name: row.get(1),
        url: row.get(2),
        description: row.get(3),
        event_types: from_json(row.get(4), "event types")?,
        sources: row
            .get::<_, Option<&str>>(5)
            .map(|s| from_json(s, "sources"))
            .transpose()?,
        format: row.get(6),
        headers: from_json(row.get(7), "headers")?,
        rate_limit: row.get::<_, Option<i32>>(8).map(unsigned),
        max_concurrency: row.get::<_, Option<i32>>(9).map(unsigned),
        enabled: row.get(10),
        disabled_reason: row.get(11),
        failing_since: millis(row.get(12)),
        last_success_at: millis(row.get(13)),
        last_failure_at: millis(row.get(14)),
        last_error: row.get(15),
        created_at: Timestamp::from_unix_millis(row.get(16)),
        updated_at: Timestamp::from_unix_millis(row.get(17)),
        secrets: secrets_of(client, id).await?,
    })
}

async fn secrets_of<C: GenericClient>(
    client: &C,
    id: EndpointId,
) -> Result<Vec<SecretRecord>, StoreError> {
    let rows = client
        .query(
            "SELECT secret, created_at, expires_at FROM endpoint_secrets
             WHERE endpoint_id = $1 ORDER BY seq DESC",
            &[&id.to_string()],
        )
        .await
        .map_err(pg_error)?;
    Ok(rows
        .iter()
        .map(|row| SecretRecord {
            secret: row.get(0),
            created_at: Timestamp::from_unix_millis(row.get(1)),
            expires_at: millis(row.get(2)),
        })
        .collect())
}

pub(super) async fn endpoint_by_id<C: GenericClient>(
    client: &C,
    id: EndpointId,
) -> Result<Option<EndpointRecord>, StoreError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE id = $1 AND deleted_at IS NULL"
            ),
            &[&id.to_string()],
        )
        .await
        .map_err(pg_error)?;
    match row {
        Some(row) => Ok(Some(to_record(client, &row).await?)),
        None => Ok(None),
    }
}

async fn insert<C: GenericClient>(client: &C, endpoint: &NewEndpoint) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO endpoints (id, name, url, description, event_types, sources, format,
                headers, rate_limit, max_concurrency, enabled, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
            &[
                &endpoint.id.to_string(),
                &endpoint.name,
                &endpoint.url,
                &endpoint.description,
                &json(&endpoint.event_types)?,
                &endpoint.sources.as_ref().map(json).transpose()?,
                &endpoint.format,
                &json(&endpoint.headers)?,
                &endpoint.rate_limit.map(super::small),
                &endpoint.max_concurrency.map(super::small),
                &endpoint.enabled,
                &endpoint.now.unix_millis(),
            ],
        )
        .await
        .map_err(pg_error)?;
    add_secret(client, endpoint.id, &endpoint.secret, endpoint.now).await
}

async fn add_secret<C: GenericClient>(
    client: &C,
    id: EndpointId,
    secret: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO endpoint_secrets (endpoint_id, secret, created_at) VALUES ($1, $2, $3)",
            &[&id.to_string(), &secret, &now.unix_millis()],
        )
        .await
        .map_err(pg_error)?;
    Ok(())
}

/// Locks endpoint `id` for a change unless it is deleted; false when it is (or is missing).
/// Without the lock a change racing a deletion would find the endpoint, wait for the deletion's
/// row lock, and then write to the deleted row.
async fn lock_live<C: GenericClient>(client: &C, id: EndpointId) -> Result<bool, StoreError> {
    let row = client
        .query_opt(
            "SELECT 1 FROM endpoints WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
            &[&id.to_string()],
        )
        .await
        .map_err(pg_error)?;
    Ok(row.is_some())
}

async fn set_column<C: GenericClient>(
    client: &C,
    id: &str,
    column: &str,
    value: &(dyn ToSql + Sync),
    now: Timestamp,
) -> Result<(), StoreError> {
    client
        .execute(
            &format!("UPDATE endpoints SET {column} = $1, updated_at = $2 WHERE id = $3"),
            &[value, &now.unix_millis(), &id],
        )
        .await
        .map_err(pg_error)?;
    Ok(())
}

async fn apply_patch<C: GenericClient>(
    client: &C,
    id: EndpointId,
    patch: &EndpointPatch,
    now: Timestamp,
) -> Result<(), StoreError> {
    let id_text = id.to_string();
    if let Some(url) = &patch.url {
        set_column(client, &id_text, "url", url, now).await?;
    }
    if let Some(description) = &patch.description {
        set_column(client, &id_text, "description", description, now).await?;
    }
    if let Some(event_types) = &patch.event_types {
        set_column(client, &id_text, "event_types", &json(event_types)?, now).await?;
    }
    if let Some(sources) = &patch.sources {
        set_column(
            client,
            &id_text,
            "sources",
            &sources.as_ref().map(json).transpose()?,
            now,
        )
        .await?;
    }
    if let Some(format) = &patch.format {
        set_column(client, &id_text, "format", format, now).await?;
    }
    if let Some(headers) = &patch.headers {
        set_column(client, &id_text, "headers", &json(headers)?, now).await?;
    }
    if let Some(rate_limit) = &patch.rate_limit {
        set_column(
            client,
            &id_text,
            "rate_limit",
            &rate_limit.map(super::small),
            now,
        )
        .await?;
    }
    if let Some(max_concurrency) = &patch.max_concurrency {
        set_column(
            client,
            &id_text,
            "max_concurrency",
            &max_concurrency.map(super::small),
            now,
        )
        .await?;
    }
    match patch.enabled {
        Some(true) => {
            client
                .execute(
                    // Only a disabled one starts its health afresh (see the SQLite store).
                    "UPDATE endpoints SET failing_since = CASE WHEN enabled THEN failing_since END,
                        enabled = TRUE, disabled_reason = NULL, updated_at = $2 WHERE id = $1",
                    &[&id_text, &now.unix_millis()],
                )
                .await
                .map_err(pg_error)?;
        }
        Some(false) => {
            disable(
                client,
                id,
                patch
                    .disabled_reason
                    .as_deref()
                    .unwrap_or("disabled by an operator"),
                now,
                None,
            )
            .await?;
        }
        None => {}
    }
    Ok(())
}

/// Disables an endpoint and holds its undelivered deliveries, the first [`BACKLOG_BATCH`] at
/// once and the rest through [`PgStore::hold_deliveries_of_disabled`], until it is recovered.
/// With
/// `unchanged_since` (when the attempt that judged it gone began), only an endpoint no one has
/// changed since: one an operator re-enabled meanwhile stays enabled, even when a batch of
/// outcomes is written a second time.
pub(super) async fn disable<C: GenericClient>(
    client: &C,
    id: EndpointId,
    reason: &str,
    now: Timestamp,
    unchanged_since: Option<Timestamp>,
) -> Result<(), StoreError> {
    let id = id.to_string();
    let since = unchanged_since.map_or(i64::MAX, |at| at.unix_millis());
    let disabled = client
        .execute(
            "UPDATE endpoints SET enabled = FALSE, disabled_reason = $2, updated_at = $3
             WHERE id = $1 AND updated_at <= $4",
            &[&id, &reason, &now.unix_millis(), &since],
        )
        .await
        .map_err(pg_error)?;
    if disabled == 0 {
        return Ok(());
    }
    hold_waiting(client, &[id], now).await?;
    Ok(())
}

/// Holds up to [`BACKLOG_BATCH`] deliveries of `endpoints` waiting to be sent (none under a
/// live lease at `now`); the number held. Found through the index of owed deliveries, which
/// those held leave. Rows another transaction has locked (a completion, a claim) are passed
/// over rather than waited for, which also keeps the lock order of completions and renewals
/// (by id) from mattering here; the next batch, or the poller's, takes them.
async fn hold_waiting<C: GenericClient>(
    client: &C,
    endpoints: &[String],
    now: Timestamp,
) -> Result<u64, StoreError> {
    client
        .execute(
            &format!(
                "UPDATE deliveries SET status = 'held', lease_owner = NULL, lease_until = NULL,
                    updated_at = $2
                 WHERE id IN (SELECT id FROM deliveries
                    WHERE endpoint_id = ANY($1) AND status IN ('pending', 'failed')
                      AND (lease_owner IS NULL OR lease_until <= {DB_NOW})
                    LIMIT $3 FOR UPDATE SKIP LOCKED)"
            ),
            &[&endpoints, &now.unix_millis(), &i64::from(BACKLOG_BATCH)],
        )
        .await
        .map_err(pg_error)
}

/// Cancels up to [`BACKLOG_BATCH`] owed deliveries of those of `endpoints` that are deleted,
/// found through the index of owed deliveries, which those cancelled leave; locked rows are
/// passed over, as in [`hold_waiting`].
async fn cancel_owed<C: GenericClient>(
    client: &C,
    endpoints: &[String],
    now: Timestamp,
) -> Result<u64, StoreError> {
    client
        .execute(
            "UPDATE deliveries SET status = 'cancelled', updated_at = $2 WHERE id IN
               (SELECT id FROM deliveries
                WHERE endpoint_id = ANY($1) AND status IN ('pending', 'failed')
                  AND endpoint_id IN (SELECT id FROM endpoints
                                      WHERE id = ANY($1) AND deleted_at IS NOT NULL)
                LIMIT $3 FOR UPDATE SKIP LOCKED)",
            &[&endpoints, &now.unix_millis(), &i64::from(BACKLOG_BATCH)],
        )
        .await
        .map_err(pg_error)
}

/// Makes `secret` current; the previous current secret keeps signing until `previous_until`.
async fn rotate<C: GenericClient>(
    client: &C,
    id: EndpointId,
    secret: &str,
    now: Timestamp,
    previous_until: Timestamp,
) -> Result<(), StoreError> {
    let id_text = id.to_string();
    client
        .execute(
            "UPDATE endpoint_secrets SET expires_at = $2 WHERE endpoint_id = $1 AND expires_at IS NULL",
            &[&id_text, &previous_until.unix_millis()],
        )
        .await
        .map_err(pg_error)?;
    client
        .execute(
            "DELETE FROM endpoint_secrets WHERE endpoint_id = $1 AND expires_at <= $2",
            &[&id_text, &now.unix_millis()],
        )
        .await
        .map_err(pg_error)?;
    add_secret(client, id, secret, now).await
}

impl PgStore {
    pub(crate) async fn create_endpoint(
        &self,
        endpoint: NewEndpoint,
    ) -> Result<EndpointRecord, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(pg_error)?;
        insert(&transaction, &endpoint).await?;
        let record = endpoint_by_id(&transaction, endpoint.id)
            .await?
            .ok_or_else(|| StoreError::Database("the new endpoint vanished".to_owned()))?;
        self.notify_endpoints(&transaction).await?;
        transaction.commit().await.map_err(pg_error)?;
        Ok(record)
    }

    pub(crate) async fn upsert_named_endpoint(
        &self,
        endpoint: NewEndpoint,
        previous_secret_until: Option<Timestamp>,
    ) -> Result<EndpointRecord, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(pg_error)?;
        // Instances starting together must not both create the endpoint.
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))",
                &[&endpoint.name],
            )
            .await
            .map_err(pg_error)?;
        // Locked, so an endpoint deleted through the API meanwhile is either deleted after
        // this update, or seen as deleted here (the row is read again once its lock is free)
        // and declared anew; never updated while deleted, which failed the start.
        let existing = transaction
            .query_opt(
                "SELECT id FROM endpoints WHERE name = $1 AND deleted_at IS NULL FOR UPDATE",
                &[&endpoint.name],
            )
            .await
            .map_err(pg_error)?;
        let id = match existing {
            None => {
                insert(&transaction, &endpoint).await?;
                endpoint.id
            }
            Some(row) => {
                let id: EndpointId = parse_id(row.get::<_, &str>(0))?;
                let patch = EndpointPatch {
                    url: Some(endpoint.url.clone()),
                    description: Some(endpoint.description.clone()),
                    event_types: Some(endpoint.event_types.clone()),
                    sources: Some(endpoint.sources.clone()),
                    format: Some(endpoint.format.clone()),
                    headers: Some(endpoint.headers.clone()),
                    rate_limit: Some(endpoint.rate_limit),
                    max_concurrency: Some(endpoint.max_concurrency),
                    enabled: None,
                    disabled_reason: None,
                };
                apply_patch(&transaction, id, &patch, endpoint.now).await?;
                let current = secrets_of(&transaction, id).await?;
                if let Some(until) = previous_secret_until
                    && current.first().is_none_or(|s| s.secret != endpoint.secret)
                {
                    rotate(&transaction, id, &endpoint.secret, endpoint.now, until).await?;
                }
                id
            }
        };
        let record = endpoint_by_id(&transaction, id)
            .await?
            .ok_or_else(|| StoreError::Database("the endpoint vanished".to_owned()))?;
        self.notify_endpoints(&transaction).await?;
        transaction.commit().await.map_err(pg_error)?;
        Ok(record)
    }

    pub(crate) async fn endpoint(
        &self,
        id: EndpointId,
    ) -> Result<Option<EndpointRecord>, StoreError> {
        let client = self.client().await?;
        endpoint_by_id(&client, id).await
    }

    pub(crate) async fn endpoints(
        &self,
        before: Option<EndpointId>,
        limit: u32,
    ) -> Result<Page<EndpointRecord>, StoreError> {
        let client = self.client().await?;
        let limit = clamp_limit(limit);
        let rows = client
            .query(
                &format!(
                    "SELECT {ENDPOINT_COLUMNS} FROM endpoints
                     WHERE deleted_at IS NULL AND ($1::TEXT IS NULL OR id < $1)
                     ORDER BY id DESC LIMIT $2"
                ),
                &[&before.map(|b| b.to_string()), &i64::from(limit + 1)],
            )
            .await
            .map_err(pg_error)?;
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            items.push(to_record(&client, row).await?);
        }
        Ok(paginate(&mut items, limit, |e| e.id.to_string()))
    }

    pub(crate) async fn all_endpoints(&self) -> Result<Vec<EndpointRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE deleted_at IS NULL ORDER BY id"
                ),
                &[],
            )
            .await
            .map_err(pg_error)?;
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            records.push(to_record(&client, row).await?);
        }
        Ok(records)
    }

    pub(crate) async fn update_endpoint(
        &self,
        id: EndpointId,
        patch: EndpointPatch,
        now: Timestamp,
    ) -> Result<Option<EndpointRecord>, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(pg_error)?;
        if !lock_live(&transaction, id).await? {
            return Ok(None);
        }
        apply_patch(&transaction, id, &patch, now).await?;
        let record = endpoint_by_id(&transaction, id).await?;
        self.notify_endpoints(&transaction).await?;
        if patch.enabled == Some(true) {
            self.notify_deliveries(&transaction).await?;
        }
        transaction.commit().await.map_err(pg_error)?;
        Ok(record)
    }

    pub(crate) async fn delete_endpoint(
        &self,
        id: EndpointId,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(pg_error)?;
        let deleted = transaction
            .execute(
                // The name is freed: an endpoint still declared in the configuration is created
                // anew at the next start, which a kept name would refuse as taken.
                "UPDATE endpoints SET deleted_at = $2, enabled = FALSE, name = NULL
                 WHERE id = $1 AND deleted_at IS NULL",
                &[&id.to_string(), &now.unix_millis()],
            )
            .await
            .map_err(pg_error)?;
        if deleted == 1 {
            // The first batch of what is owed; the rest, and what is held, follow through
            // `cancel_deliveries_of_deleted` and `cancel_held_of_deleted`.
            cancel_owed(&transaction, &[id.to_string()], now).await?;
            self.notify_endpoints(&transaction).await?;
        }
        transaction.commit().await.map_err(pg_error)?;
        Ok(deleted == 1)
    }

    pub(crate) async fn cancel_deliveries_of_deleted(
        &self,
        endpoints: Vec<EndpointId>,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let endpoints: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
        cancel_owed(&client, &endpoints, now).await
    }

    /// Cancels up to [`BACKLOG_BATCH`] held deliveries of a deleted endpoint, found through the
    /// index of held deliveries; the number cancelled. Rows locked meanwhile are waited for, in
    /// id order as everywhere.
    pub(crate) async fn cancel_held_of_deleted(
        &self,
        endpoint: EndpointId,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE deliveries SET status = 'cancelled', updated_at = $2
                 WHERE id IN (SELECT id FROM deliveries
                    WHERE endpoint_id = $1 AND status = 'held'
                      AND endpoint_id IN (SELECT id FROM endpoints
                                          WHERE id = $1 AND deleted_at IS NOT NULL)
                    ORDER BY id LIMIT $3 FOR UPDATE)",
                &[
                    &endpoint.to_string(),
                    &now.unix_millis(),
                    &i64::from(BACKLOG_BATCH),
                ],
            )
            .await
            .map_err(pg_error)
    }

    pub(crate) async fn hold_deliveries_of_disabled(
        &self,
        endpoints: Vec<EndpointId>,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(pg_error)?;
        let endpoints: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
        // The endpoints first, shared: a re-enabling waits for this transaction, or this one
        // for it and then sees the endpoint enabled. Read in the same statement as the
        // deliveries, the endpoint's state would be the statement's start, and rows a re-enable
        // and recover had just made pending could be held again on an enabled endpoint.
        let disabled: Vec<String> = transaction
            .query(
                "SELECT id FROM endpoints WHERE id = ANY($1) AND NOT enabled AND deleted_at IS NULL
                 ORDER BY id FOR SHARE",
                &[&endpoints],
            )
            .await
            .map_err(pg_error)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if disabled.is_empty() {
            return Ok(0);
        }
        let held = hold_waiting(&transaction, &disabled, now).await?;
        transaction.commit().await.map_err(pg_error)?;
        Ok(held)
    }

    pub(crate) async fn rotate_secret(
        &self,
        id: EndpointId,
        secret: String,
        now: Timestamp,
        previous_until: Timestamp,
    ) -> Result<Option<EndpointRecord>, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(pg_error)?;
        if !lock_live(&transaction, id).await? {
            return Ok(None);
        }
        rotate(&transaction, id, &secret, now, previous_until).await?;
        let record = endpoint_by_id(&transaction, id).await?;
        self.notify_endpoints(&transaction).await?;
        transaction.commit().await.map_err(pg_error)?;
        Ok(record)
    }
}
