//! Endpoints and their signing secrets on SQLite.

use billhook_core::ids::EndpointId;
use billhook_core::time::Timestamp;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::ingest::parse_id;
use super::{SqliteStore, db_error};
use crate::StoreError;
use crate::model::*;
use crate::page::paginate;

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

/// The columns of an endpoint row, before parsing.
struct EndpointRow {
    id: String,
    name: Option<String>,
    url: String,
    description: String,
    event_types: String,
    sources: Option<String>,
    format: String,
    headers: String,
    rate_limit: Option<u32>,
    max_concurrency: Option<u32>,
    enabled: bool,
    disabled_reason: Option<String>,
    failing_since: Option<i64>,
    last_success_at: Option<i64>,
    last_failure_at: Option<i64>,
    last_error: Option<String>,
    created_at: i64,
    updated_at: i64,
}

fn endpoint_row(row: &Row<'_>) -> rusqlite::Result<EndpointRow> {
    Ok(EndpointRow {
        id: row.get(0)?,
        name: row.get(1)?,
        url: row.get(2)?,
        description: row.get(3)?,
        event_types: row.get(4)?,
        sources: row.get(5)?,
        format: row.get(6)?,
        headers: row.get(7)?,
        rate_limit: row.get(8)?,
        max_concurrency: row.get(9)?,
        enabled: row.get(10)?,
        disabled_reason: row.get(11)?,
        failing_since: row.get(12)?,
        last_success_at: row.get(13)?,
        last_failure_at: row.get(14)?,
        last_error: row.get(15)?,
        created_at: row.get(16)?,
        updated_at: row.get(17)?,
    })
}

fn to_record(connection: &Connection, row: EndpointRow) -> Result<EndpointRecord, StoreError> {
    let id: EndpointId = parse_id(&row.id)?;
    Ok(EndpointRecord {
        id,
        name: row.name,
        url: row.url,
        description: row.description,
        event_types: from_json(&row.event_types, "event types")?,
        sources: row
            .sources
            .as_deref()
            .map(|s| from_json(s, "sources"))
            .transpose()?,
        format: row.format,
        headers: from_json(&row.headers, "headers")?,
        rate_limit: row.rate_limit,
        max_concurrency: row.max_concurrency,
        enabled: row.enabled,
        disabled_reason: row.disabled_reason,
        failing_since: millis(row.failing_since),
        last_success_at: millis(row.last_success_at),
        last_failure_at: millis(row.last_failure_at),
        last_error: row.last_error,
        created_at: Timestamp::from_unix_millis(row.created_at),
        updated_at: Timestamp::from_unix_millis(row.updated_at),
        secrets: secrets_of(connection, id)?,
    })
}

fn secrets_of(connection: &Connection, id: EndpointId) -> Result<Vec<SecretRecord>, StoreError> {
    let mut statement = connection
        .prepare_cached(
            "SELECT secret, created_at, expires_at FROM endpoint_secrets
             WHERE endpoint_id = ?1 ORDER BY rowid DESC",
        )
        .map_err(db_error)?;
    let rows = statement
        .query_map([id.to_string()], |row| {
            Ok(SecretRecord {
                secret: row.get(0)?,
                created_at: Timestamp::from_unix_millis(row.get(1)?),
                expires_at: millis(row.get(2)?),
            })
        })
        .map_err(db_error)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_error)
}

pub(super) fn endpoint_by_id(
    connection: &Connection,
    id: EndpointId,
) -> Result<Option<EndpointRecord>, StoreError> {
    let row = connection
        .prepare_cached(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE id = ?1 AND deleted_at IS NULL"
        ))
        .and_then(|mut statement| {
            statement
                .query_row([id.to_string()], endpoint_row)
                .optional()
        })
        .map_err(db_error)?;
    row.map(|row| to_record(connection, row)).transpose()
}

fn insert(connection: &Connection, endpoint: &NewEndpoint) -> Result<(), StoreError> {
    connection
        .prepare_cached(
            "INSERT INTO endpoints (id, name, url, description, event_types, sources, format,
                headers, rate_limit, max_concurrency, enabled, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12)",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                endpoint.id.to_string(),
                endpoint.name,
                endpoint.url,
                endpoint.description,
                json(&endpoint.event_types).unwrap_or_default(),
                endpoint
                    .sources
                    .as_ref()
                    .map(|s| json(s).unwrap_or_default()),
                endpoint.format,
                json(&endpoint.headers).unwrap_or_default(),
                endpoint.rate_limit,
                endpoint.max_concurrency,
                endpoint.enabled,
                endpoint.now.unix_millis(),
            ])
        })
        .map_err(db_error)?;
    add_secret(connection, endpoint.id, &endpoint.secret, endpoint.now)
}

fn add_secret(
    connection: &Connection,
    id: EndpointId,
    secret: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    connection
        .prepare_cached(
            "INSERT INTO endpoint_secrets (endpoint_id, secret, created_at) VALUES (?1, ?2, ?3)",
        )
        .and_then(|mut statement| {
            statement.execute(params![id.to_string(), secret, now.unix_millis()])
        })
        .map_err(db_error)?;
    Ok(())
}

/// Applies a patch; the caller has checked the endpoint exists.
fn apply_patch(
    connection: &Connection,
    id: EndpointId,
    patch: &EndpointPatch,
    now: Timestamp,
) -> Result<(), StoreError> {
    let id_text = id.to_string();
    let set = |column: &str, value: &dyn rusqlite::ToSql| -> Result<(), StoreError> {
        connection
            .execute(
                &format!("UPDATE endpoints SET {column} = ?1, updated_at = ?2 WHERE id = ?3"),
                params![value, now.unix_millis(), id_text],
            )
            .map(drop)
            .map_err(db_error)
    };
    if let Some(url) = &patch.url {
        set("url", url)?;
    }
    if let Some(description) = &patch.description {
        set("description", description)?;
    }
    if let Some(event_types) = &patch.event_types {
        set("event_types", &json(event_types)?)?;
    }
    if let Some(sources) = &patch.sources {
        set("sources", &sources.as_ref().map(json).transpose()?)?;
    }
    if let Some(format) = &patch.format {
        set("format", format)?;
    }
    if let Some(headers) = &patch.headers {
        set("headers", &json(headers)?)?;
    }
    if let Some(rate_limit) = &patch.rate_limit {
        set("rate_limit", rate_limit)?;
    }
    if let Some(max_concurrency) = &patch.max_concurrency {
        set("max_concurrency", max_concurrency)?;
    }
    match patch.enabled {
        Some(true) => {
            connection
                .execute(
                    // Only a disabled one starts its health afresh: enabling one already
                    // enabled (to recover its failures, say) keeps how long it has been
                    // failing, which its automatic disabling counts from. It is an operator's
                    // change all the same, which an attempt begun before it does not outlast.
                    "UPDATE endpoints SET failing_since = CASE WHEN enabled = 1 THEN failing_since END,
                        enabled = 1, disabled_reason = NULL, updated_at = ?2 WHERE id = ?1",
                    params![id_text, now.unix_millis()],
                )
                .map_err(db_error)?;
        }
        Some(false) => disable(
            connection,
            id,
            patch
                .disabled_reason
                .as_deref()
                .unwrap_or("disabled by an operator"),
            now,
            None,
        )?,
        None => {}
    }
    Ok(())
}

/// Cancels up to `?3` owed deliveries of endpoint `?1` if it is deleted (`?2` now), found
/// through the index of owed deliveries, which those cancelled leave.
const CANCEL_OWED: &str = "UPDATE deliveries SET status = 'cancelled', updated_at = ?2
    WHERE id IN (SELECT id FROM deliveries
        WHERE endpoint_id = ?1 AND status IN ('pending', 'failed')
          AND EXISTS (SELECT 1 FROM endpoints WHERE id = ?1 AND deleted_at IS NOT NULL)
        LIMIT ?3)";

/// Holds up to `?3` deliveries of endpoint `?1` waiting to be sent (none under a live lease at
/// `?2`), where `$condition` (`AND …`) holds too. Found through the index of owed deliveries,
/// which those held leave: each batch starts where there is work.
macro_rules! hold_waiting {
    ($condition:literal) => {
        concat!(
            "UPDATE deliveries SET status = 'held', lease_owner = NULL, lease_until = NULL,
                updated_at = ?2
             WHERE id IN (SELECT id FROM deliveries
                WHERE endpoint_id = ?1 AND status IN ('pending', 'failed')
                  AND (lease_owner IS NULL OR lease_until <= ?2) ",
            $condition,
            " LIMIT ?3)"
        )
    };
}

/// Disables an endpoint and holds its undelivered deliveries, the first [`BACKLOG_BATCH`] at
/// once and the rest through [`SqliteStore::hold_deliveries_of_disabled`], until it is
/// recovered. With
/// `unchanged_since` (when the attempt that judged it gone began), only an endpoint no one has
/// changed since: one an operator re-enabled meanwhile stays enabled, even when a batch of
/// outcomes is written a second time.
pub(super) fn disable(
    connection: &Connection,
    id: EndpointId,
    reason: &str,
    now: Timestamp,
    unchanged_since: Option<Timestamp>,
) -> Result<(), StoreError> {
    let id = id.to_string();
    let since = unchanged_since.map_or(i64::MAX, |at| at.unix_millis());
    let disabled = connection
        .prepare_cached(
            "UPDATE endpoints SET enabled = 0, disabled_reason = ?2, updated_at = ?3
             WHERE id = ?1 AND updated_at <= ?4",
        )
        .and_then(|mut statement| statement.execute(params![id, reason, now.unix_millis(), since]))
        .map_err(db_error)?;
    if disabled == 0 {
        return Ok(());
    }
    connection
        .prepare_cached(hold_waiting!(""))
        .and_then(|mut statement| statement.execute(params![id, now.unix_millis(), BACKLOG_BATCH]))
        .map_err(db_error)?;
    Ok(())
}

impl SqliteStore {
    pub(crate) async fn create_endpoint(
        &self,
        endpoint: NewEndpoint,
    ) -> Result<EndpointRecord, StoreError> {
        self.write(move |connection| {
            insert(connection, &endpoint)?;
            endpoint_by_id(connection, endpoint.id)?
                .ok_or_else(|| StoreError::Database("the new endpoint vanished".to_owned()))
        })
        .await
    }

    /// Creates the named endpoint, or brings an existing one in line with `endpoint` (its id and
    /// secret kept unless the configuration names a different secret).
    pub(crate) async fn upsert_named_endpoint(
        &self,
        endpoint: NewEndpoint,
        previous_secret_until: Option<Timestamp>,
    ) -> Result<EndpointRecord, StoreError> {
        self.write(move |connection| {
            let existing: Option<String> = connection
                .prepare_cached("SELECT id FROM endpoints WHERE name = ?1 AND deleted_at IS NULL")
                .and_then(|mut s| s.query_row([&endpoint.name], |row| row.get(0)).optional())
                .map_err(db_error)?;
            let Some(existing) = existing else {
                insert(connection, &endpoint)?;
                return endpoint_by_id(connection, endpoint.id)?
                    .ok_or_else(|| StoreError::Database("the new endpoint vanished".to_owned()));
            };
            let id: EndpointId = parse_id(&existing)?;
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
            apply_patch(connection, id, &patch, endpoint.now)?;
            let current = secrets_of(connection, id)?;
            if let Some(until) = previous_secret_until
                && current.first().is_none_or(|s| s.secret != endpoint.secret)
            {
                rotate(connection, id, &endpoint.secret, endpoint.now, until)?;
            }
            endpoint_by_id(connection, id)?
                .ok_or_else(|| StoreError::Database("the endpoint vanished".to_owned()))
        })
        .await
    }

    pub(crate) async fn endpoint(
        &self,
        id: EndpointId,
    ) -> Result<Option<EndpointRecord>, StoreError> {
        self.read(move |connection| endpoint_by_id(connection, id))
            .await
    }

    pub(crate) async fn endpoints(
        &self,
        before: Option<EndpointId>,
        limit: u32,
    ) -> Result<Page<EndpointRecord>, StoreError> {
        self.read(move |connection| {
            let limit = crate::page::clamp_limit(limit);
            let rows = connection
                .prepare_cached(&format!(
                    "SELECT {ENDPOINT_COLUMNS} FROM endpoints
                     WHERE deleted_at IS NULL AND (?1 IS NULL OR id < ?1)
                     ORDER BY id DESC LIMIT ?2"
                ))
                .and_then(|mut statement| {
                    statement
                        .query_map(
                            params![before.map(|b| b.to_string()), limit + 1],
                            endpoint_row,
                        )?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(db_error)?;
            let mut items = rows
                .into_iter()
                .map(|row| to_record(connection, row))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(paginate(&mut items, limit, |e| e.id.to_string()))
        })
        .await
    }

    pub(crate) async fn all_endpoints(&self) -> Result<Vec<EndpointRecord>, StoreError> {
        self.read(|connection| {
            let rows = connection
                .prepare_cached(&format!(
                    "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE deleted_at IS NULL ORDER BY id"
                ))
                .and_then(|mut statement| {
                    statement
                        .query_map([], endpoint_row)?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(db_error)?;
            rows.into_iter()
                .map(|row| to_record(connection, row))
                .collect()
        })
        .await
    }

    pub(crate) async fn update_endpoint(
        &self,
        id: EndpointId,
        patch: EndpointPatch,
        now: Timestamp,
    ) -> Result<Option<EndpointRecord>, StoreError> {
        self.write(move |connection| {
            if endpoint_by_id(connection, id)?.is_none() {
                return Ok(None);
            }
            apply_patch(connection, id, &patch, now)?;
            endpoint_by_id(connection, id)
        })
        .await
    }

    pub(crate) async fn delete_endpoint(
        &self,
        id: EndpointId,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.write(move |connection| {
            let deleted = connection
                .prepare_cached(
                    // The name is freed: an endpoint still declared in the configuration is created
                    // anew at the next start, which a kept name would refuse as taken.
                    "UPDATE endpoints SET deleted_at = ?2, enabled = 0, name = NULL
                     WHERE id = ?1 AND deleted_at IS NULL",
                )
                .and_then(|mut s| s.execute(params![id.to_string(), now.unix_millis()]))
                .map_err(db_error)?;
            if deleted == 1 {
                // The first batch of what is owed; the rest, and what is held, follow through
                // `cancel_deliveries_of_deleted` and `cancel_held_of_deleted`.
                connection
                    .prepare_cached(CANCEL_OWED)
                    .and_then(|mut s| {
                        s.execute(params![id.to_string(), now.unix_millis(), BACKLOG_BATCH])
                    })
                    .map_err(db_error)?;
            }
            Ok(deleted == 1)
        })
        .await
    }

    pub(crate) async fn cancel_deliveries_of_deleted(
        &self,
        endpoints: Vec<EndpointId>,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        self.update_deliveries_of_each(CANCEL_OWED, endpoints, now)
            .await
    }

    /// Cancels up to [`BACKLOG_BATCH`] held deliveries of a deleted endpoint, found through the
    /// index of held deliveries; the number cancelled.
    pub(crate) async fn cancel_held_of_deleted(
        &self,
        endpoint: EndpointId,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        self.write(move |connection| {
            let changed = connection
                .prepare_cached(
                    "UPDATE deliveries SET status = 'cancelled', updated_at = ?2
                     WHERE id IN (SELECT id FROM deliveries
                        WHERE endpoint_id = ?1 AND status = 'held' ORDER BY id LIMIT ?3)
                       AND EXISTS (SELECT 1 FROM endpoints WHERE id = ?1 AND deleted_at IS NOT NULL)",
                )
                .and_then(|mut s| {
                    s.execute(params![endpoint.to_string(), now.unix_millis(), BACKLOG_BATCH])
                })
                .map_err(db_error)?;
            Ok(changed as u64)
        })
        .await
    }

    pub(crate) async fn hold_deliveries_of_disabled(
        &self,
        endpoints: Vec<EndpointId>,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        self.update_deliveries_of_each(
            hold_waiting!(
                "AND EXISTS (SELECT 1 FROM endpoints
                             WHERE id = ?1 AND enabled = 0 AND deleted_at IS NULL)"
            ),
            endpoints,
            now,
        )
        .await
    }

    /// Runs `sql` (`?1` an endpoint id, `?2` now, `?3` the most rows to change) once per
    /// endpoint, in one write, changing at most [`BACKLOG_BATCH`] rows in all; the rows changed.
    async fn update_deliveries_of_each(
        &self,
        sql: &'static str,
        endpoints: Vec<EndpointId>,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        self.write(move |connection| {
            let mut statement = connection.prepare_cached(sql).map_err(db_error)?;
            let mut changed = 0;
            for id in &endpoints {
                let room = u64::from(BACKLOG_BATCH) - changed;
                if room == 0 {
                    break;
                }
                changed += statement
                    .execute(params![id.to_string(), now.unix_millis(), room])
                    .map_err(db_error)? as u64;
            }
            Ok(changed)
        })
        .await
    }

    pub(crate) async fn rotate_secret(
        &self,
        id: EndpointId,
        secret: String,
        now: Timestamp,
        previous_until: Timestamp,
    ) -> Result<Option<EndpointRecord>, StoreError> {
        self.write(move |connection| {
            if endpoint_by_id(connection, id)?.is_none() {
                return Ok(None);
            }
            rotate(connection, id, &secret, now, previous_until)?;
            endpoint_by_id(connection, id)
        })
        .await
    }
}

/// Makes `secret` current; the previous current secret keeps signing until `previous_until`, and
/// secrets already expired are dropped.
fn rotate(
    connection: &Connection,
    id: EndpointId,
    secret: &str,
    now: Timestamp,
    previous_until: Timestamp,
) -> Result<(), StoreError> {
    let id_text = id.to_string();
    connection
        .prepare_cached(
            "UPDATE endpoint_secrets SET expires_at = ?2 WHERE endpoint_id = ?1 AND expires_at IS NULL",
        )
        .and_then(|mut s| s.execute(params![id_text, previous_until.unix_millis()]))
        .map_err(db_error)?;
    connection
        .prepare_cached("DELETE FROM endpoint_secrets WHERE endpoint_id = ?1 AND expires_at <= ?2")
        .and_then(|mut s| s.execute(params![id_text, now.unix_millis()]))
        .map_err(db_error)?;
    add_secret(connection, id, secret, now)
}
