//! The outbox on SQLite: deliveries, their leases, attempts and completions.

use std::sync::Arc;

use billhook_core::ids::{AttemptId, DeliveryId, EndpointId, EventId, InboundId};
use billhook_core::time::Timestamp;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::endpoints::disable;
use super::ingest::parse_id;
use super::{SqliteStore, db_error};
use crate::StoreError;
use crate::model::*;
use crate::page::{clamp_limit, paginate};

/// Inserts the deliveries of one ingest (inside its transaction). One planned as held (its
/// endpoint disabled as the planner saw it) is judged again against the endpoint as written:
/// enabled meanwhile, its recovery has already run, and nothing would release it.
pub(super) fn insert_deliveries(
    connection: &Connection,
    inbound_id: InboundId,
    deliveries: &[NewDelivery],
    now: Timestamp,
) -> Result<(), StoreError> {
    if deliveries.is_empty() {
        return Ok(());
    }
    let mut statement = connection
        .prepare_cached(
            "INSERT INTO deliveries (id, endpoint_id, message_id, event_id, inbound_id, event_type,
                status, next_attempt_at, lease_owner, lease_until, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6,
                CASE WHEN ?7 = 'held' AND EXISTS (SELECT 1 FROM endpoints
                    WHERE id = ?2 AND enabled = 1 AND deleted_at IS NULL) THEN 'pending' ELSE ?7 END,
                ?8, ?9, ?10, ?11, ?11)",
        )
        .map_err(db_error)?;
    let inbound_id = inbound_id.to_string();
    for delivery in deliveries {
        statement
            .execute(params![
                delivery.id.to_string(),
                delivery.endpoint_id.to_string(),
                delivery.message_id,
                delivery.event_id.map(|e| e.to_string()),
                inbound_id,
                delivery.event_type,
                delivery.status.as_str(),
                delivery.next_attempt_at.unix_millis(),
                delivery.lease.as_ref().map(|l| &l.owner),
                delivery.lease.as_ref().map(|l| l.until.unix_millis()),
                now.unix_millis(),
            ])
            .map_err(db_error)?;
    }
    Ok(())
}

const CLAIMED_COLUMNS: &str = "d.id, d.endpoint_id, d.message_id, d.event_id, d.inbound_id,
    d.event_type, d.attempts,
    CASE WHEN d.event_id IS NULL THEN i.body ELSE e.payload END,
    i.source, i.provider, i.provider_event";

/// The columns of a claimed delivery joined with its payload, before parsing.
struct ClaimedRow {
    id: String,
    endpoint_id: String,
    message_id: String,
    event_id: Option<String>,
    inbound_id: String,
    event_type: String,
    attempts: u32,
    payload: Option<Vec<u8>>,
    source: Option<String>,
    provider: Option<String>,
    provider_event: Option<String>,
}

fn claimed_row(row: &Row<'_>) -> rusqlite::Result<ClaimedRow> {
    Ok(ClaimedRow {
        id: row.get(0)?,
        endpoint_id: row.get(1)?,
        message_id: row.get(2)?,
        event_id: row.get(3)?,
        inbound_id: row.get(4)?,
        event_type: row.get(5)?,
        attempts: row.get(6)?,
        payload: row.get(7)?,
        source: row.get(8)?,
        provider: row.get(9)?,
        provider_event: row.get(10)?,
    })
}

fn to_claimed(row: ClaimedRow) -> Result<ClaimedDelivery, StoreError> {
    let raw = row.event_id.is_none().then(|| RawOrigin {
        source: row.source.unwrap_or_default(),
        provider: row.provider.unwrap_or_default(),
        provider_event: row.provider_event,
    });
    Ok(ClaimedDelivery {
        id: parse_id(&row.id)?,
        endpoint_id: parse_id(&row.endpoint_id)?,
        message_id: row.message_id,
        event_id: row.event_id.as_deref().map(parse_id).transpose()?,
        inbound_id: parse_id(&row.inbound_id)?,
        event_type: row.event_type,
        attempts: row.attempts,
        payload: row.payload.map(Bytes::from),
        raw,
    })
}

/// Loads claimed deliveries with their payloads, by id.
fn load_claimed(
    connection: &Connection,
    ids: &[String],
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let mut statement = connection
        .prepare_cached(&format!(
            // LEFT: an announcement can outlive the message it names, and a claimed delivery
            // must come back either way (one without a payload is given up as dead).
            "SELECT {CLAIMED_COLUMNS} FROM deliveries d
             LEFT JOIN inbound i ON i.id = d.inbound_id
             LEFT JOIN events e ON e.id = d.event_id
             WHERE d.id = ?1"
        ))
        .map_err(db_error)?;
    let mut claimed = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(row) = statement
            .query_row([id], claimed_row)
            .optional()
            .map_err(db_error)?
        {
            claimed.push(to_claimed(row)?);
        }
    }
    Ok(claimed)
}

fn delivery_row(row: &Row<'_>) -> rusqlite::Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: row.get(0)?,
        endpoint_id: row.get(1)?,
        message_id: row.get(2)?,
        event_id: row.get(3)?,
        inbound_id: row.get(4)?,
        event_type: row.get(5)?,
        status: row.get(6)?,
        attempts: row.get(7)?,
        next_attempt_at: row.get(8)?,
        last_status_code: row.get(9)?,
        last_error: row.get(10)?,
        created_at: row.get(11)?,
        updated_at: row.get(12)?,
    })
}

struct DeliveryRow {
    id: String,
    endpoint_id: String,
    message_id: String,
    event_id: Option<String>,
    inbound_id: String,
    event_type: String,
    status: String,
    attempts: u32,
    next_attempt_at: i64,
    last_status_code: Option<u16>,
    last_error: Option<String>,
    created_at: i64,
    updated_at: i64,
}

const DELIVERY_COLUMNS: &str = "id, endpoint_id, message_id, event_id, inbound_id, event_type,
    status, attempts, next_attempt_at, last_status_code, last_error, created_at, updated_at";

fn to_delivery(row: DeliveryRow) -> Result<DeliveryRecord, StoreError> {
    Ok(DeliveryRecord {
        id: parse_id(&row.id)?,
        endpoint_id: parse_id(&row.endpoint_id)?,
        message_id: row.message_id,
        event_id: row.event_id.as_deref().map(parse_id).transpose()?,
        inbound_id: parse_id(&row.inbound_id)?,
        event_type: row.event_type,
        status: DeliveryStatus::parse(&row.status)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery status `{}`", row.status)))?,
        attempts: row.attempts,
        next_attempt_at: Timestamp::from_unix_millis(row.next_attempt_at),
        last_status_code: row.last_status_code,
        last_error: row.last_error,
        created_at: Timestamp::from_unix_millis(row.created_at),
        updated_at: Timestamp::from_unix_millis(row.updated_at),
    })
}

const ATTEMPT_COLUMNS: &str = "id, delivery_id, endpoint_id, number, started_at, duration_ms,
    status_code, response_body, error_kind, error_message";

fn attempt_row(row: &Row<'_>) -> rusqlite::Result<(String, String, String, AttemptRecordParts)> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        AttemptRecordParts {
            number: row.get(3)?,
            started_at: row.get(4)?,
            duration_ms: row.get(5)?,
            status_code: row.get(6)?,
            response_body: row.get(7)?,
            error_kind: row.get(8)?,
            error_message: row.get(9)?,
        },
    ))
}

struct AttemptRecordParts {
    number: u32,
    started_at: i64,
    duration_ms: i64,
    status_code: Option<u16>,
    response_body: Option<Vec<u8>>,
    error_kind: Option<String>,
    error_message: Option<String>,
}

fn to_attempt(
    (id, delivery_id, endpoint_id, parts): (String, String, String, AttemptRecordParts),
) -> Result<AttemptRecord, StoreError> {
    Ok(AttemptRecord {
        id: parse_id(&id)?,
        delivery_id: parse_id(&delivery_id)?,
        endpoint_id: parse_id(&endpoint_id)?,
        number: parts.number,
        started_at: Timestamp::from_unix_millis(parts.started_at),
        duration_ms: u64::try_from(parts.duration_ms).unwrap_or(0),
        status_code: parts.status_code,
        response_body: parts.response_body.map(Bytes::from),
        error_kind: parts.error_kind,
        error_message: parts.error_message,
    })
}

fn complete_one(
    connection: &Connection,
    completion: &Completion,
    owner: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    let delivery = completion.delivery_id.to_string();
    let endpoint = completion.endpoint_id.to_string();
    let (status, next_at) = completion.next.columns();
    let attempted = completion.attempt.as_ref();
    // Disabling first: the update below holds this delivery only if the endpoint is disabled
    // once it has run.
    if let Some(reason) = &completion.disable_endpoint {
        let judged_at = attempted.map(|a| a.started_at);
        disable(connection, completion.endpoint_id, reason, now, judged_at)?;
    }
    let updated = connection
        .prepare_cached(
            // A delivery cancelled meanwhile (its endpoint deleted) stays cancelled: the attempt
            // is recorded, but no retry may bring it back. One is cancelled only if its endpoint
            // is deleted in the database, not merely unknown to this instance's memory (say,
            // one it cannot use, written by a newer version): such a one is left as it was,
            // unleased, for an instance that can. Whether a delivery not done waits
            // held or is retried is judged here, as it is written, by whether its endpoint is
            // disabled now (or deleted: cancelled, for one written after the deletion's
            // batch): a retry of an endpoint a 410 beside it disabled waits with the
            // others for a recover, and one held by a disabling that did not apply (the
            // endpoint re-enabled during its attempt) is retried. Only a delivery still leased
            // to this owner changes: once the lease lapsed, another owner may have claimed (or
            // even finished) it, and it is theirs to finish. The count of attempts is the
            // attempt's number, so a batch written twice counts once.
            "UPDATE deliveries SET
                status = CASE WHEN status = 'cancelled' THEN status
                    WHEN ?2 = 'cancelled' AND EXISTS (SELECT 1 FROM endpoints
                        WHERE id = deliveries.endpoint_id AND deleted_at IS NULL) THEN status
                    WHEN ?2 IN ('failed', 'held') THEN COALESCE(
                        (SELECT CASE WHEN deleted_at IS NOT NULL THEN 'cancelled'
                                     WHEN enabled = 0 THEN 'held' END
                         FROM endpoints WHERE id = deliveries.endpoint_id), 'failed')
                    ELSE COALESCE(?2, status) END,
                next_attempt_at = COALESCE(?3, next_attempt_at),
                attempts = CASE WHEN ?4 = 1 THEN MAX(attempts, ?9) ELSE attempts END,
                last_status_code = CASE WHEN ?4 = 1 THEN ?5 ELSE last_status_code END,
                last_error = CASE WHEN ?4 = 1 THEN ?6 ELSE last_error END,
                lease_owner = NULL, lease_until = NULL, updated_at = ?7
             WHERE id = ?1 AND lease_owner = ?8",
        )
        .and_then(|mut s| {
            s.execute(params![
                delivery,
                status,
                next_at,
                u32::from(attempted.is_some()),
                attempted.and_then(|a| a.status_code),
                attempted.and_then(|a| a.error_message.clone()),
                now.unix_millis(),
                owner,
                attempted.map(|a| a.number),
            ])
        })
        .map_err(db_error)?;
    if let Some(attempt) = attempted {
        // A completion so late that retention removed its delivery meanwhile records nothing:
        // no later pass would ever remove an attempt of a delivery gone. The update above just
        // found it when it changed a row; only when it did not (the lease lapsed, or the
        // delivery is gone) is its existence asked. One recorded already (a batch written
        // again) is left as it is.
        macro_rules! insert_attempt {
            ($values:literal) => {
                concat!(
                    "INSERT INTO attempts (id, delivery_id, endpoint_id, number, started_at,
                        duration_ms, status_code, response_body, error_kind, error_message) ",
                    $values,
                    " ON CONFLICT (id) DO NOTHING"
                )
            };
        }
        let sql = if updated == 1 {
            insert_attempt!("VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)")
        } else {
            insert_attempt!(
                "SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10
                 WHERE EXISTS (SELECT 1 FROM deliveries WHERE id = ?2)"
            )
        };
        connection
            .prepare_cached(sql)
            .and_then(|mut s| {
                s.execute(params![
                    attempt.id.to_string(),
                    delivery,
                    endpoint,
                    attempt.number,
                    attempt.started_at.unix_millis(),
                    i64::try_from(attempt.duration_ms).unwrap_or(i64::MAX),
                    attempt.status_code,
                    attempt.response_body.as_deref(),
                    attempt.error_kind,
                    attempt.error_message,
                ])
            })
            .map_err(db_error)?;
    }
    Ok(())
}

fn record_health(
    connection: &Connection,
    health: &EndpointHealth,
    now: Timestamp,
) -> Result<(), StoreError> {
    connection
        .prepare_cached(
            "UPDATE endpoints SET
                last_success_at = CASE WHEN ?2 THEN ?5 ELSE last_success_at END,
                last_failure_at = CASE WHEN ?3 THEN ?5 ELSE last_failure_at END,
                last_error = CASE WHEN ?3 THEN ?4 ELSE last_error END,
                failing_since = CASE ?6 WHEN 'cleared' THEN NULL WHEN 'now' THEN ?5
                    ELSE COALESCE(failing_since, ?5) END
             WHERE id = ?1",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                health.endpoint_id.to_string(),
                health.succeeded,
                health.failed.is_some(),
                health.failed.as_ref().and_then(Option::as_deref),
                now.unix_millis(),
                health.failing_since.as_str(),
            ])
        })
        .map_err(db_error)?;
    Ok(())
}

/// [`DUE_BY_ENDPOINT`] in SQLite's spelling, leases judged at the caller's `now`; made once,
/// as the poller asks it after every batch of outcomes.
static DUE_STATEMENT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| DUE_BY_ENDPOINT.replace("LEASE_NOW", "$1").replace('$', "?"));

/// An endpoint's deliveries newest first, along `deliveries_by_endpoint` (endpoint_id, id), or
/// the index of the status's rows where it has one (see `status_filter`); its parameters are
/// the endpoint, `before` and `after` when given, and the limit. A bound is written only when
/// given: SQLite plans a statement once, and `(? IS NULL OR id < ?)` would be a filter on every
/// row read rather than where the index range starts and stops.
fn deliveries_of_endpoint_sql(status: Option<DeliveryStatus>, before: bool, after: bool) -> String {
    format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries
         WHERE endpoint_id = ? {} {} {}
         ORDER BY id DESC LIMIT ?",
        status_filter(status),
        if before { "AND id < ?" } else { "" },
        if after { "AND id > ?" } else { "" },
    )
}

impl SqliteStore {
    /// Claims up to `limit` due deliveries of `endpoint` for `owner` until `lease_until`.
    pub(crate) async fn claim_due(
        &self,
        endpoint: EndpointId,
        owner: String,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        self.write(move |connection| {
            let ids: Vec<String> = connection
                .prepare_cached(
                    "UPDATE deliveries SET lease_owner = ?1, lease_until = ?2
                     WHERE id IN (
                        SELECT id FROM deliveries
                        WHERE endpoint_id = ?3 AND status IN ('pending', 'failed')
                          AND next_attempt_at <= ?4
                          AND (lease_until IS NULL OR lease_until <= ?4)
                        ORDER BY next_attempt_at LIMIT ?5)
                     RETURNING id",
                )
                .and_then(|mut s| {
                    s.query_map(
                        params![
                            owner,
                            lease_until.unix_millis(),
                            endpoint.to_string(),
                            now.unix_millis(),
                            limit
                        ],
                        |row| row.get(0),
                    )?
                    .collect::<Result<Vec<_>, _>>()
                })
                .map_err(db_error)?;
            load_claimed(connection, &ids)
        })
        .await
    }

    /// Endpoints with claimable deliveries due by `now`, and the earliest time any other
    /// claimable delivery falls due (see `DUE_BY_ENDPOINT`).
    pub(crate) async fn due_endpoints(
        &self,
        now: Timestamp,
    ) -> Result<(Vec<EndpointId>, Option<Timestamp>), StoreError> {
        self.read(move |connection| {
            let watched_since = now.sub(DELETED_ENDPOINTS_WATCHED_FOR).unix_millis();
            let rows: Vec<(String, bool, Option<i64>, Option<i64>)> = connection
                .prepare_cached(&DUE_STATEMENT)
                .and_then(|mut s| {
                    s.query_map(params![now.unix_millis(), watched_since], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                    })?
                    .collect()
                })
                .map_err(db_error)?;
            let rows = rows
                .into_iter()
                .map(|(id, due, next, lease)| Ok((parse_id(&id)?, due, next, lease)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(due_and_next(rows))
        })
        .await
    }

    /// Deleted endpoints that still owe deliveries: a deletion whose cancelling was cut short.
    pub(crate) async fn deleted_endpoints_owing(&self) -> Result<Vec<EndpointId>, StoreError> {
        self.read(move |connection| {
            let ids: Vec<String> = connection
                .prepare_cached(DELETED_OWING)
                .and_then(|mut s| s.query_map([], |row| row.get(0))?.collect())
                .map_err(db_error)?;
            ids.iter().map(|id| parse_id(id)).collect()
        })
        .await
    }

    pub(crate) async fn renew_leases(
        &self,
        owner: String,
        ids: Vec<DeliveryId>,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        self.write(move |connection| {
            let mut statement = connection
                .prepare_cached(
                    // Never shortens a lease a claim or another renewal extended meanwhile.
                    "UPDATE deliveries SET lease_until = MAX(lease_until, ?3)
                     WHERE id = ?1 AND lease_owner = ?2 AND lease_until > ?4",
                )
                .map_err(db_error)?;
            let mut renewed = Vec::with_capacity(ids.len());
            for id in &ids {
                let changed = statement
                    .execute(params![
                        id.to_string(),
                        owner,
                        until.unix_millis(),
                        now.unix_millis()
                    ])
                    .map_err(db_error)?;
                if changed > 0 {
                    renewed.push(*id);
                }
            }
            Ok(renewed)
        })
        .await
    }

    /// Clears every lease: on SQLite only one process writes, so at start no lease can belong to
    /// a live worker.
    pub(crate) async fn release_all_leases(&self) -> Result<u64, StoreError> {
        self.write(|connection| {
            connection
                .execute(
                    "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL
                     WHERE lease_owner IS NOT NULL",
                    [],
                )
                .map(|n| n as u64)
                .map_err(db_error)
        })
        .await
    }

    pub(crate) async fn complete(
        &self,
        completions: Arc<[Completion]>,
        owner: String,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.write(move |connection| {
            for completion in completions.iter() {
                complete_one(connection, completion, &owner, now)?;
            }
            for health in endpoint_health(&completions) {
                record_health(connection, &health, now)?;
            }
            Ok(())
        })
        .await
    }

    /// Sends every failed, dead or held delivery of an endpoint created since `since` again,
    /// except those under a live lease: a retry already queued or in flight is being sent, and
    /// taking its lease would let it be sent twice at once.
    pub(crate) async fn recover(
        &self,
        endpoint: EndpointId,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Recovery, StoreError> {
        // The endpoint's deliveries are walked in id order from a little before `since` (an id
        // is made as its delivery is planned, a moment before its row is written), a bounded
        // stretch per write, so a long backlog never holds the writer for long.
        let mut after = DeliveryId::lower_bound(since.sub(std::time::Duration::from_secs(60)));
        let mut recovered = 0;
        loop {
            let batch = self
                .write(move |connection| {
                    let sendable = connection
                        .prepare_cached(
                            "SELECT 1 FROM endpoints
                             WHERE id = ?1 AND enabled = 1 AND deleted_at IS NULL",
                        )
                        .and_then(|mut s| s.exists([endpoint.to_string()]))
                        .map_err(db_error)?;
                    if !sendable {
                        return Ok(None);
                    }
                    let last: Option<String> = connection
                        .prepare_cached(
                            "SELECT max(id) FROM (SELECT id FROM deliveries
                                WHERE endpoint_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3)",
                        )
                        .and_then(|mut s| {
                            s.query_row(
                                params![endpoint.to_string(), after.to_string(), BACKLOG_BATCH],
                                |row| row.get(0),
                            )
                        })
                        .map_err(db_error)?;
                    let Some(last) = last else {
                        return Ok(None);
                    };
                    let changed = connection
                        .prepare_cached(
                            "UPDATE deliveries SET status = 'pending', next_attempt_at = ?4,
                                attempts = 0, lease_owner = NULL, lease_until = NULL,
                                updated_at = ?4
                             WHERE endpoint_id = ?1 AND id > ?2 AND id <= ?3 AND created_at >= ?5
                               AND status IN ('failed', 'dead', 'held')
                               AND (lease_owner IS NULL OR lease_until <= ?4)",
                        )
                        .and_then(|mut s| {
                            s.execute(params![
                                endpoint.to_string(),
                                after.to_string(),
                                last,
                                now.unix_millis(),
                                since.unix_millis()
                            ])
                        })
                        .map_err(db_error)?;
                    Ok(Some((changed as u64, parse_id::<DeliveryId>(&last)?)))
                })
                .await?;
            let Some((changed, last)) = batch else {
                break;
            };
            recovered += changed;
            after = last;
        }
        Ok(Recovery {
            resent: recovered,
            resent_before: after.successor(),
        })
    }

    /// Sends an event again: its deliveries (to `endpoint` only, if given) return to pending
    /// with the whole retry schedule before them, as recovered ones do; `create` adds
    /// deliveries for endpoints that never had one.
    pub(crate) async fn redeliver(
        &self,
        event: EventId,
        endpoint: Option<EndpointId>,
        create: Vec<NewDelivery>,
        now: Timestamp,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        self.write(move |connection| {
            let inbound: Option<String> = connection
                .prepare_cached("SELECT inbound_id FROM events WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row([event.to_string()], |row| row.get(0))
                        .optional()
                })
                .map_err(db_error)?;
            let Some(inbound) = inbound else {
                return Ok(Vec::new());
            };
            // Only enabled endpoints are sent to: a disabled one's deliveries stay as they are
            // until it is re-enabled (and its backlog recovered).
            let ids: Vec<String> = connection
                .prepare_cached(
                    "UPDATE deliveries SET status = 'pending', next_attempt_at = ?3, attempts = 0,
                        lease_owner = NULL, lease_until = NULL, updated_at = ?3
                     WHERE inbound_id = ?2 AND (event_id = ?1 OR event_id IS NULL)
                       AND (?4 IS NULL OR endpoint_id = ?4)
                       AND endpoint_id IN (SELECT id FROM endpoints
                                           WHERE enabled = 1 AND deleted_at IS NULL)
                       AND status NOT IN ('cancelled')
                       AND (lease_owner IS NULL OR lease_until <= ?3)
                     RETURNING id",
                )
                .and_then(|mut s| {
                    s.query_map(
                        params![
                            event.to_string(),
                            inbound,
                            now.unix_millis(),
                            endpoint.map(|e| e.to_string())
                        ],
                        |row| row.get(0),
                    )?
                    .collect::<Result<Vec<_>, _>>()
                })
                .map_err(db_error)?;
            let mut enabled = connection
                .prepare_cached(
                    "SELECT 1 FROM endpoints WHERE id = ?1 AND enabled = 1 AND deleted_at IS NULL",
                )
                .map_err(db_error)?;
            // Asked again here, in the writer: two redeliveries naming an endpoint that never
            // had the event both found none before they reached it, and the first made one.
            let mut had = connection
                .prepare_cached(
                    "SELECT 1 FROM deliveries
                     WHERE inbound_id = ?1 AND endpoint_id = ?2 AND (event_id = ?3 OR event_id IS NULL)",
                )
                .map_err(db_error)?;
            let mut created = Vec::with_capacity(create.len());
            for delivery in &create {
                let endpoint = delivery.endpoint_id.to_string();
                if enabled.exists([&endpoint]).map_err(db_error)?
                    && !had
                        .exists(params![inbound, endpoint, event.to_string()])
                        .map_err(db_error)?
                {
                    created.push(delivery.clone());
                }
            }
            insert_deliveries(connection, parse_id(&inbound)?, &created, now)?;
            let mut all = ids
                .iter()
                .map(|id| parse_id(id))
                .collect::<Result<Vec<DeliveryId>, _>>()?;
            all.extend(created.iter().map(|d| d.id));
            Ok(all)
        })
        .await
    }

    /// The deliveries of an event (raw deliveries of its inbound message included), each with its
    /// attempts, oldest first.
    pub(crate) async fn deliveries_of_event(
        &self,
        event: EventId,
        inbound: InboundId,
    ) -> Result<Vec<(DeliveryRecord, Vec<AttemptRecord>)>, StoreError> {
        self.read(move |connection| {
            let rows = connection
                .prepare_cached(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries
                     WHERE inbound_id = ?2 AND (event_id = ?1 OR event_id IS NULL) ORDER BY id"
                ))
                .and_then(|mut s| {
                    s.query_map(
                        params![event.to_string(), inbound.to_string()],
                        delivery_row,
                    )?
                    .collect::<Result<Vec<_>, _>>()
                })
                .map_err(db_error)?;
            let mut attempts_statement = connection
                .prepare_cached(&format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE delivery_id = ?1 ORDER BY id"
                ))
                .map_err(db_error)?;
            let mut result = Vec::with_capacity(rows.len());
            for row in rows {
                let delivery = to_delivery(row)?;
                let attempts = attempts_statement
                    .query_map([delivery.id.to_string()], attempt_row)
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(db_error)?
                    .into_iter()
                    .map(to_attempt)
                    .collect::<Result<Vec<_>, _>>()?;
                result.push((delivery, attempts));
            }
            Ok(result)
        })
        .await
    }

    pub(crate) async fn delivery(
        &self,
        id: DeliveryId,
    ) -> Result<Option<DeliveryRecord>, StoreError> {
        self.read(move |connection| {
            connection
                .prepare_cached(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?1"
                ))
                .and_then(|mut s| s.query_row([id.to_string()], delivery_row).optional())
                .map_err(db_error)?
                .map(to_delivery)
                .transpose()
        })
        .await
    }

    pub(crate) async fn deliveries_of_endpoint(
        &self,
        endpoint: EndpointId,
        status: Option<DeliveryStatus>,
        (after, before): (Option<DeliveryId>, Option<DeliveryId>),
        limit: u32,
    ) -> Result<Page<DeliveryRecord>, StoreError> {
        self.read(move |connection| {
            let limit = clamp_limit(limit);
            let rows = connection
                .prepare_cached(&deliveries_of_endpoint_sql(
                    status,
                    before.is_some(),
                    after.is_some(),
                ))
                .and_then(|mut s| {
                    use rusqlite::types::Value;
                    let values: Vec<Value> = std::iter::once(Value::Text(endpoint.to_string()))
                        .chain(before.map(|b| Value::Text(b.to_string())))
                        .chain(after.map(|a| Value::Text(a.to_string())))
                        .chain([Value::Integer(i64::from(limit) + 1)])
                        .collect();
                    s.query_map(rusqlite::params_from_iter(values), delivery_row)?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(db_error)?;
            let mut items = rows
                .into_iter()
                .map(to_delivery)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(paginate(&mut items, limit, |d| d.id.to_string()))
        })
        .await
    }

    pub(crate) async fn attempts_of_endpoint(
        &self,
        endpoint: EndpointId,
        before: Option<AttemptId>,
        limit: u32,
    ) -> Result<Page<AttemptRecord>, StoreError> {
        self.read(move |connection| {
            let limit = clamp_limit(limit);
            let rows = connection
                .prepare_cached(&format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM attempts
                     WHERE endpoint_id = ?1 AND (?2 IS NULL OR id < ?2)
                     ORDER BY id DESC LIMIT ?3"
                ))
                .and_then(|mut s| {
                    s.query_map(
                        params![
                            endpoint.to_string(),
                            before.map(|b| b.to_string()),
                            limit + 1
                        ],
                        attempt_row,
                    )?
                    .collect::<Result<Vec<_>, _>>()
                })
                .map_err(db_error)?;
            let mut items = rows
                .into_iter()
                .map(to_attempt)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(paginate(&mut items, limit, |a| a.id.to_string()))
        })
        .await
    }

    pub(crate) async fn endpoint_stats(
        &self,
        endpoint: EndpointId,
        now: Timestamp,
    ) -> Result<EndpointStats, StoreError> {
        self.read(move |connection| {
            let mut stats = EndpointStats::default();
            let mut statement = connection
                .prepare_cached("SELECT status, COUNT(*) FROM deliveries WHERE endpoint_id = ?1 GROUP BY status")
                .map_err(db_error)?;
            let rows = statement
                .query_map([endpoint.to_string()], |row| Ok((row.get::<_, String>(0)?, row.get::<_, u64>(1)?)))
                .map_err(db_error)?;
            for row in rows {
                let (status, count) = row.map_err(db_error)?;
                match DeliveryStatus::parse(&status) {
                    Some(DeliveryStatus::Pending) => stats.pending = count,
                    Some(DeliveryStatus::Failed) => stats.failed = count,
                    Some(DeliveryStatus::Delivered) => stats.delivered = count,
                    Some(DeliveryStatus::Dead) => stats.dead = count,
                    Some(DeliveryStatus::Held) => stats.held = count,
                    _ => {}
                }
            }
            let day_ago = now.sub(std::time::Duration::from_secs(86_400));
            // An attempt's id is made from its start, so the id bounds the index's range where
            // `started_at` alone would read every attempt the endpoint ever had.
            let since_id = AttemptId::lower_bound(day_ago).to_string();
            let day_ago = day_ago.unix_millis();
            let (attempts, successes): (u64, Option<u64>) = connection
                .prepare_cached(
                    "SELECT COUNT(*), SUM(CASE WHEN status_code BETWEEN 200 AND 299 THEN 1 ELSE 0 END)
                     FROM attempts WHERE endpoint_id = ?1 AND started_at >= ?2 AND id >= ?3",
                )
                .and_then(|mut s| s.query_row(params![endpoint.to_string(), day_ago, since_id], |row| Ok((row.get(0)?, row.get(1)?))))
                .map_err(db_error)?;
            stats.attempts_24h = attempts;
            stats.successes_24h = successes.unwrap_or(0);
            Ok(stats)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dead and held deliveries are listed through their partial indexes, and a listing
    /// bounded on both sides reads only that range of the endpoint's deliveries.
    #[test]
    fn deliveries_are_listed_through_the_index_of_their_status_and_range() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = runtime
            .block_on(SqliteStore::open(&dir.path().join("plan.db"), None))
            .unwrap();
        let plan = |sql: String| {
            runtime
                .block_on(store.read(move |connection| {
                    let mut statement = connection
                        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                        .map_err(db_error)?;
                    let details = statement
                        .query_map([], |row| row.get::<_, String>(3))
                        .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
                        .map_err(db_error)?;
                    Ok(details.join("\n"))
                }))
                .unwrap()
        };
        let bound = |sql: String| {
            sql.replacen("endpoint_id = ?", "endpoint_id = 'ep_1'", 1)
                .replacen("id < ?", "id < 'dl_9'", 1)
                .replacen("id > ?", "id > 'dl_1'", 1)
                .replacen("LIMIT ?", "LIMIT 2", 1)
        };
        for (status, index) in [
            (DeliveryStatus::Dead, "deliveries_dead"),
            (DeliveryStatus::Held, "deliveries_held"),
        ] {
            let plan = plan(bound(deliveries_of_endpoint_sql(
                Some(status),
                false,
                false,
            )));
            assert!(plan.contains(index), "{status:?}: {plan}");
        }
        let plan = plan(bound(deliveries_of_endpoint_sql(
            Some(DeliveryStatus::Pending),
            true,
            true,
        )));
        assert!(
            plan.contains("(endpoint_id=? AND id>? AND id<?)"),
            "a range of the index: {plan}"
        );
    }
}
