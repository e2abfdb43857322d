//! The outbox on PostgreSQL: deliveries, leases, attempts, completions and endpoint ownership.

use std::sync::{Arc, LazyLock};

use billhook_core::ids::{AttemptId, DeliveryId, EndpointId, EventId, InboundId};
use billhook_core::time::Timestamp;
use bytes::Bytes;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::Type;

use super::endpoints::disable;
use super::ingest::{insert_deliveries, parse_id};
use super::{DB_NOW, PgStore, big, column, execute_cached, pg_error, small, unsigned};
use crate::StoreError;
use crate::model::*;
use crate::page::{clamp_limit, paginate};

const CLAIMED_COLUMNS: &str = "d.id, d.endpoint_id, d.message_id, d.event_id, d.inbound_id,
    d.event_type, d.attempts,
    CASE WHEN d.event_id IS NULL THEN i.body ELSE e.payload END,
    i.source, i.provider, i.provider_event";

fn to_claimed(row: &Row) -> Result<ClaimedDelivery, StoreError> {
    let event_id: Option<&str> = row.get(3);
    Ok(ClaimedDelivery {
        id: parse_id(row.get::<_, &str>(0))?,
        endpoint_id: parse_id(row.get::<_, &str>(1))?,
        message_id: row.get(2),
        event_id: event_id.map(parse_id).transpose()?,
        inbound_id: parse_id(row.get::<_, &str>(4))?,
        event_type: row.get(5),
        attempts: unsigned(row.get(6)),
        payload: row.get::<_, Option<Vec<u8>>>(7).map(Bytes::from),
        raw: event_id.is_none().then(|| RawOrigin {
            source: row.get::<_, Option<String>>(8).unwrap_or_default(),
            provider: row.get::<_, Option<String>>(9).unwrap_or_default(),
            provider_event: row.get(10),
        }),
    })
}

const DELIVERY_COLUMNS: &str = "id, endpoint_id, message_id, event_id, inbound_id, event_type,
    status, attempts, next_attempt_at, last_status_code, last_error, created_at, updated_at";

fn to_delivery(row: &Row) -> Result<DeliveryRecord, StoreError> {
    let status: &str = row.get(6);
    Ok(DeliveryRecord {
        id: parse_id(row.get::<_, &str>(0))?,
        endpoint_id: parse_id(row.get::<_, &str>(1))?,
        message_id: row.get(2),
        event_id: row.get::<_, Option<&str>>(3).map(parse_id).transpose()?,
        inbound_id: parse_id(row.get::<_, &str>(4))?,
        event_type: row.get(5),
        status: DeliveryStatus::parse(status)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery status `{status}`")))?,
        attempts: unsigned(row.get(7)),
        next_attempt_at: Timestamp::from_unix_millis(row.get(8)),
        last_status_code: row
            .get::<_, Option<i32>>(9)
            .and_then(|s| u16::try_from(s).ok()),
        last_error: row.get(10),
        created_at: Timestamp::from_unix_millis(row.get(11)),
        updated_at: Timestamp::from_unix_millis(row.get(12)),
    })
}

const ATTEMPT_COLUMNS: &str = "id, delivery_id, endpoint_id, number, started_at, duration_ms,
    status_code, response_body, error_kind, error_message";

fn to_attempt(row: &Row) -> Result<AttemptRecord, StoreError> {
    Ok(AttemptRecord {
        id: parse_id(row.get::<_, &str>(0))?,
        delivery_id: parse_id(row.get::<_, &str>(1))?,
        endpoint_id: parse_id(row.get::<_, &str>(2))?,
        number: unsigned(row.get(3)),
        started_at: Timestamp::from_unix_millis(row.get(4)),
        duration_ms: u64::try_from(row.get::<_, i64>(5)).unwrap_or(0),
        status_code: row
            .get::<_, Option<i32>>(6)
            .and_then(|s| u16::try_from(s).ok()),
        response_body: row.get::<_, Option<Vec<u8>>>(7).map(Bytes::from),
        error_kind: row.get(8),
        error_message: row.get(9),
    })
}

async fn record_health<C: GenericClient>(
    client: &C,
    health: &EndpointHealth,
    now: Timestamp,
) -> Result<(), StoreError> {
    execute_cached(
        client,
        "UPDATE endpoints SET
                last_success_at = CASE WHEN $2 THEN $5 ELSE last_success_at END,
                last_failure_at = CASE WHEN $3 THEN $5 ELSE last_failure_at END,
                last_error = CASE WHEN $3 THEN $4 ELSE last_error END,
                failing_since = CASE $6 WHEN 'cleared' THEN NULL WHEN 'now' THEN $5
                    ELSE COALESCE(failing_since, $5) END
             WHERE id = $1",
        &[
            &health.endpoint_id.to_string(),
            &health.succeeded,
            &health.failed.is_some(),
            &health.failed.as_ref().and_then(Option::as_deref),
            &now.unix_millis(),
            &health.failing_since.as_str(),
        ],
    )
    .await?;
    Ok(())
}

/// Records a run of completions of distinct deliveries: their attempts in one insert, their
/// deliveries in one update. One statement per table instead of one per row: on PostgreSQL the
/// cost of a statement is mostly its round trip and executor start-up, not its rows.
async fn complete_run<C: GenericClient>(
    client: &C,
    run: &[Completion],
    existing: &std::collections::HashSet<DeliveryId>,
    owner: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    let attempted: Vec<(&Completion, &NewAttempt)> = run
        .iter()
        .filter(|c| existing.contains(&c.delivery_id))
        .filter_map(|c| c.attempt.as_ref().map(|a| (c, a)))
        .collect();
    if !attempted.is_empty() {
        // Only attempts of deliveries that still exist (`existing`). One recorded already is
        // left as it is: a batch is written again when its commit went unanswered (the
        // connection lost after the server committed), and must not fail on its own rows.
        execute_cached(
            client,
            "INSERT INTO attempts (id, delivery_id, endpoint_id, number, started_at,
                    duration_ms, status_code, response_body, error_kind, error_message)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::bigint[],
                    $6::bigint[], $7::int[], $8::bytea[], $9::text[], $10::text[])
                 ON CONFLICT (id) DO NOTHING",
            &[
                &column(&attempted, |(_, a)| a.id.to_string()),
                &column(&attempted, |(c, _)| c.delivery_id.to_string()),
                &column(&attempted, |(c, _)| c.endpoint_id.to_string()),
                &column(&attempted, |(_, a)| small(a.number)),
                &column(&attempted, |(_, a)| a.started_at.unix_millis()),
                &column(&attempted, |(_, a)| big(a.duration_ms)),
                &column(&attempted, |(_, a)| a.status_code.map(i32::from)),
                &column(&attempted, |(_, a)| a.response_body.as_deref()),
                &column(&attempted, |(_, a)| a.error_kind.as_deref()),
                &column(&attempted, |(_, a)| a.error_message.as_deref()),
            ],
        )
        .await?;
    }
    // Disabling first (a disabling completion is a run of its own): the update below holds
    // its delivery only if the endpoint is disabled once it has run.
    if let Some(last) = run.last()
        && let Some(reason) = &last.disable_endpoint
    {
        let judged_at = last.attempt.as_ref().map(|a| a.started_at);
        disable(client, last.endpoint_id, reason, now, judged_at).await?;
    }
    let next_steps = column(run, |completion| completion.next.columns());
    // A delivery cancelled meanwhile (its endpoint deleted) stays cancelled: the attempt is
    // recorded, but no retry may bring it back. One is cancelled only if its endpoint is
    // deleted in the database, not merely unknown to this instance's memory (say, one it
    // cannot use, written by a newer version): such a one is left as it was, unleased, for an
    // instance that can. Whether a delivery not done waits held or is
    // retried is judged here, as it is written, by whether its endpoint is disabled now (or
    // deleted: cancelled, for one the deletion's batch passed over as locked): a
    // retry of an endpoint a 410 beside it disabled waits with the others for a recover, and
    // one held by a disabling that did not apply (the endpoint re-enabled during its attempt)
    // is retried. Only a delivery still leased to this owner changes: once the lease lapsed,
    // another owner may have claimed (or even finished) it, and it is theirs to finish. The
    // count of attempts is the attempt's number, so a batch written twice counts once.
    execute_cached(client, "UPDATE deliveries AS d SET
                status = CASE WHEN d.status = 'cancelled' THEN d.status
                              WHEN c.status = 'cancelled' AND EXISTS (SELECT 1 FROM endpoints
                                  WHERE id = d.endpoint_id AND deleted_at IS NULL) THEN d.status
                              WHEN c.status IN ('failed', 'held') THEN COALESCE(
                                (SELECT CASE WHEN deleted_at IS NOT NULL THEN 'cancelled'
                                             WHEN NOT enabled THEN 'held' END
                                 FROM endpoints WHERE id = d.endpoint_id), 'failed')
                              ELSE COALESCE(c.status, d.status) END,
                next_attempt_at = COALESCE(c.next_at, d.next_attempt_at),
                attempts = CASE WHEN c.attempted = 1 THEN GREATEST(d.attempts, c.number)
                                ELSE d.attempts END,
                last_status_code = CASE WHEN c.attempted = 1 THEN c.status_code ELSE d.last_status_code END,
                last_error = CASE WHEN c.attempted = 1 THEN c.error ELSE d.last_error END,
                lease_owner = NULL, lease_until = NULL, updated_at = $7
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[], $5::int[], $6::text[],
                    $9::int[])
                AS c(id, status, next_at, attempted, status_code, error, number)
             WHERE d.id = c.id AND d.lease_owner = $8", &[
                &column(run, |c| c.delivery_id.to_string()),
                &column(&next_steps, |(status, _)| *status),
                &column(&next_steps, |(_, at)| *at),
                &column(run, |c| i32::from(c.attempt.is_some())),
                &column(run, |c| {
                    c.attempt
                        .as_ref()
                        .and_then(|a| a.status_code)
                        .map(i32::from)
                }),
                &column(run, |c| {
                    c.attempt.as_ref().and_then(|a| a.error_message.as_deref())
                }),
                &now.unix_millis(),
                &owner,
                &column(run, |c| c.attempt.as_ref().map(|a| small(a.number))),
            ]).await?;
    Ok(())
}

impl PgStore {
    pub(crate) async fn claim_due(
        &self,
        endpoint: EndpointId,
        owner: String,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let client = self.client().await?;
        // Unnamed, so planned for these values: a cached generic plan chosen while the outbox
        // was small could join it by scanning long after it has grown. The join to the message
        // is LEFT: an announcement can outlive the message it names, and every claimed
        // delivery must come back (one without a payload is given up as dead). The lease runs
        // on the database's clock (see `DB_NOW`).
        let sql = format!(
            "WITH claimed AS (
                    UPDATE deliveries SET lease_owner = $1, lease_until = {DB_NOW} + ($2 - $4)
                    WHERE id IN (
                        SELECT id FROM deliveries
                        WHERE endpoint_id = $3 AND status IN ('pending', 'failed')
                          AND next_attempt_at <= $4
                          AND (lease_until IS NULL OR lease_until <= {DB_NOW})
                        ORDER BY next_attempt_at LIMIT $5
                        FOR UPDATE SKIP LOCKED)
                    RETURNING *)
                 SELECT {CLAIMED_COLUMNS} FROM claimed d
                 LEFT JOIN inbound i ON i.id = d.inbound_id
                 LEFT JOIN events e ON e.id = d.event_id"
        );
        let rows = client
            .query_typed(
                &sql,
                &[
                    (&owner, Type::TEXT),
                    (&lease_until.unix_millis(), Type::INT8),
                    (&endpoint.to_string(), Type::TEXT),
                    (&now.unix_millis(), Type::INT8),
                    (&i64::from(limit), Type::INT8),
                ],
            )
            .await
            .map_err(pg_error)?;
        rows.iter().map(to_claimed).collect()
    }

    pub(crate) async fn due_endpoints(
        &self,
        now: Timestamp,
    ) -> Result<(Vec<EndpointId>, Option<Timestamp>), StoreError> {
        let client = self.client().await?;
        let watched_since = now.sub(DELETED_ENDPOINTS_WATCHED_FOR).unix_millis();
        // Prepared once per connection: the statement is long, and the poller asks it after
        // every batch of outcomes.
        static STATEMENT: LazyLock<String> =
            LazyLock::new(|| DUE_BY_ENDPOINT.replace("LEASE_NOW", DB_NOW));
        let statement = client.prepare_cached(&STATEMENT).await.map_err(pg_error)?;
        let rows = client
            .query(&statement, &[&now.unix_millis(), &watched_since])
            .await
            .map_err(pg_error)?;
        let rows = rows
            .iter()
            .map(|row| {
                Ok((
                    parse_id(row.get::<_, &str>(0))?,
                    row.get::<_, bool>(1),
                    row.get::<_, Option<i64>>(2),
                    row.get::<_, Option<i64>>(3),
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(due_and_next(rows))
    }

    /// Deleted endpoints that still owe deliveries: a deletion whose cancelling was cut short.
    pub(crate) async fn deleted_endpoints_owing(&self) -> Result<Vec<EndpointId>, StoreError> {
        let client = self.client().await?;
        client
            .query(DELETED_OWING, &[])
            .await
            .map_err(pg_error)?
            .iter()
            .map(|row| parse_id(row.get::<_, &str>(0)))
            .collect()
    }

    pub(crate) async fn renew_leases(
        &self,
        owner: String,
        ids: Vec<DeliveryId>,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        let client = self.client().await?;
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let rows = client
            .query(
                // Locks the rows in id order, as completions do (see `complete`).
                // Never shortens a lease a claim or another renewal extended meanwhile.
                &format!(
                    "UPDATE deliveries
                     SET lease_until = GREATEST(lease_until, {DB_NOW} + ($3::INT8 - $4::INT8))
                     WHERE id IN (SELECT id FROM deliveries
                        WHERE id = ANY($1) AND lease_owner = $2 AND lease_until > {DB_NOW}
                        ORDER BY id FOR UPDATE)
                     RETURNING id"
                ),
                &[&ids, &owner, &until.unix_millis(), &now.unix_millis()],
            )
            .await
            .map_err(pg_error)?;
        rows.iter()
            .map(|row| parse_id(row.get::<_, &str>(0)))
            .collect()
    }

    pub(crate) async fn complete(
        &self,
        completions: Arc<[Completion]>,
        owner: String,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(pg_error)?;
        // The statements below run on plans the connection keeps. Each has an index for what
        // it looks for and none reads in order up to a limit, so they are made to read only
        // through indexes (bitmap scans). A plan made while the outbox was a few pages would
        // read all of it for every batch, in a sequential scan or along the primary key for a
        // merge join, until the next ANALYZE, which on a new database autovacuum runs only
        // after a minute or more of traffic. The settings apply when a statement is planned,
        // so these statements (`record_health`, `complete_run`) run only in here.
        transaction
            .batch_execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_indexscan = off")
            .await
            .map_err(pg_error)?;
        // Rows are locked in one order everywhere, endpoints before their deliveries and each
        // kind by id, so a completion cannot deadlock with a lease renewal or an endpoint's
        // deletion (PostgreSQL would abort one of them). The health is folded in attempt order.
        let mut health = endpoint_health(&completions);
        health.sort_by_key(|h| h.endpoint_id);
        for health in &health {
            record_health(&transaction, health, now).await?;
        }
        let ids: Vec<String> = completions
            .iter()
            .map(|c| c.delivery_id.to_string())
            .collect();
        // The batch's deliveries that still exist: a completion so late that retention removed
        // its delivery meanwhile records no attempt, which no later pass would ever remove.
        // Locked, none can go before the commit. A disabling holds the endpoint's other waiting
        // deliveries too, but passes over those locked elsewhere (`hold_waiting`), so it waits
        // for no delivery but the batch's own.
        let statement = transaction
            .prepare_cached("SELECT id FROM deliveries WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .await
            .map_err(pg_error)?;
        let locked = transaction
            .query(&statement, &[&ids])
            .await
            .map_err(pg_error)?;
        let existing = locked
            .iter()
            .map(|row| parse_id(row.get::<_, &str>(0)))
            .collect::<Result<std::collections::HashSet<DeliveryId>, _>>()?;
        for run in completion_runs(&completions) {
            complete_run(&transaction, run, &existing, &owner, now).await?;
        }
        if completions.iter().any(|c| c.disable_endpoint.is_some()) {
            self.notify_endpoints(&transaction).await?;
        }
        if completions
            .iter()
            .any(|c| matches!(c.next, NextStep::Released))
        {
            self.notify_deliveries(&transaction).await?;
        }
        transaction.commit().await.map_err(pg_error)?;
        Ok(())
    }

    pub(crate) async fn recover(
        &self,
        endpoint: EndpointId,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Recovery, StoreError> {
        // The endpoint's deliveries are walked in id order from a little before `since` (an id
        // is made as its delivery is planned, a moment before its row is written), a bounded
        // stretch per transaction, so a long backlog never runs one past its statement timeout.
        let mut after = DeliveryId::lower_bound(since.sub(std::time::Duration::from_secs(60)));
        let mut recovered = 0;
        let mut client = self.client().await?;
        loop {
            let transaction = client.transaction().await.map_err(pg_error)?;
            // Only an endpoint enabled and not deleted is sent to, checked here rather than by
            // the caller beforehand: a disabling or a deletion in between would otherwise be
            // undone for its deliveries. Held against both until the commit, endpoints before
            // their deliveries as everywhere.
            let sendable = transaction
                .query_opt(
                    "SELECT 1 FROM endpoints WHERE id = $1 AND enabled AND deleted_at IS NULL
                     FOR SHARE",
                    &[&endpoint.to_string()],
                )
                .await
                .map_err(pg_error)?;
            if sendable.is_none() {
                break;
            }
            let last: Option<String> = transaction
                .query_one(
                    "SELECT max(id) FROM (SELECT id FROM deliveries
                        WHERE endpoint_id = $1 AND id > $2 ORDER BY id LIMIT $3) stretch",
                    &[
                        &endpoint.to_string(),
                        &after.to_string(),
                        &i64::from(BACKLOG_BATCH),
                    ],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            let Some(last) = last else {
                break;
            };
            let changed = transaction
                .execute(
                    // Locked in id order, as everywhere (see `complete`): a retried delivery
                    // can be failed and in flight at once, so its completion may hold it
                    // meanwhile. One under a live lease is left alone: it is being sent, and
                    // taking its lease would let it be sent twice at once.
                    &format!(
                        "UPDATE deliveries SET status = 'pending', next_attempt_at = $4,
                            attempts = 0, lease_owner = NULL, lease_until = NULL, updated_at = $4
                         WHERE id IN (SELECT id FROM deliveries
                            WHERE endpoint_id = $1 AND id > $2 AND id <= $3 AND created_at >= $5
                              AND status IN ('failed', 'dead', 'held')
                              AND (lease_owner IS NULL OR lease_until <= {DB_NOW})
                            ORDER BY id FOR UPDATE)"
                    ),
                    &[
                        &endpoint.to_string(),
                        &after.to_string(),
                        &last,
                        &now.unix_millis(),
                        &since.unix_millis(),
                    ],
                )
                .await
                .map_err(pg_error)?;
            if changed > 0 {
                self.notify_deliveries(&transaction).await?;
            }
            transaction.commit().await.map_err(pg_error)?;
            recovered += changed;
            after = parse_id(&last)?;
        }
        Ok(Recovery {
            resent: recovered,
            resent_before: after.successor(),
        })
    }

    pub(crate) async fn redeliver(
        &self,
        event: EventId,
        endpoint: Option<EndpointId>,
        create: Vec<NewDelivery>,
        now: Timestamp,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(pg_error)?;
        let Some(inbound) = transaction
            .query_opt(
                "SELECT inbound_id FROM events WHERE id = $1",
                &[&event.to_string()],
            )
            .await
            .map_err(pg_error)?
        else {
            return Ok(Vec::new());
        };
        let inbound: String = inbound.get(0);
        // The message is held for the rest of the transaction, as retention holds the messages it
        // removes: otherwise retention could remove the event between this read and the commit,
        // leaving the new deliveries owed for an event that no longer exists. If retention holds
        // it now, this waits for its commit and then finds the message gone.
        let held = transaction
            .query_opt("SELECT 1 FROM inbound WHERE id = $1 FOR SHARE", &[&inbound])
            .await
            .map_err(pg_error)?;
        // An announcement can outlive the message it named (retention keeps the ledger, not
        // the messages behind it); such an event is still redelivered if it is still there,
        // held as the message would be: retention removes such events under their own row
        // lock (`prune_orphaned_events`), and this waits for that and finds the event gone.
        if held.is_none()
            && transaction
                .query_opt(
                    "SELECT 1 FROM events WHERE id = $1 FOR SHARE",
                    &[&event.to_string()],
                )
                .await
                .map_err(pg_error)?
                .is_none()
        {
            return Ok(Vec::new());
        }
        // Only enabled endpoints are sent to: a disabled one's deliveries stay as they are until
        // it is re-enabled (and its backlog recovered). Their rows are held against a disabling
        // or an enabling until the commit, endpoints before their deliveries as everywhere.
        let created: Vec<String> = create.iter().map(|d| d.endpoint_id.to_string()).collect();
        // Two redeliveries naming an endpoint that never had the event both found none before
        // they began: they take turns on the endpoints' rows, locked in one pass in id order as
        // completions lock them, and the second then finds the first's delivery.
        let lock = if created.is_empty() {
            "FOR SHARE"
        } else {
            "FOR NO KEY UPDATE"
        };
        let enabled: Vec<String> = transaction
            .query(
                &format!(
                    "SELECT id FROM endpoints
                     WHERE enabled AND deleted_at IS NULL
                       AND (id = ANY($3) OR id IN (SELECT endpoint_id FROM deliveries
                            WHERE inbound_id = $1 AND (event_id = $2 OR event_id IS NULL)))
                     ORDER BY id {lock}"
                ),
                &[&inbound, &event.to_string(), &created],
            )
            .await
            .map_err(pg_error)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let mut had: Vec<String> = Vec::new();
        if !created.is_empty() {
            had = transaction
                .query(
                    "SELECT DISTINCT endpoint_id FROM deliveries
                     WHERE inbound_id = $1 AND (event_id = $2 OR event_id IS NULL)
                       AND endpoint_id = ANY($3)",
                    &[&inbound, &event.to_string(), &created],
                )
                .await
                .map_err(pg_error)?
                .iter()
                .map(|row| row.get(0))
                .collect();
        }
        let rows = transaction
            .query(
                &format!(
                    "UPDATE deliveries SET status = 'pending', next_attempt_at = $3, attempts = 0,
                        lease_owner = NULL, lease_until = NULL, updated_at = $3
                     WHERE inbound_id = $2 AND (event_id = $1 OR event_id IS NULL)
                       AND ($4::TEXT IS NULL OR endpoint_id = $4) AND endpoint_id = ANY($5)
                       AND status <> 'cancelled'
                       AND (lease_owner IS NULL OR lease_until <= {DB_NOW})
                     RETURNING id"
                ),
                &[
                    &event.to_string(),
                    &inbound,
                    &now.unix_millis(),
                    &endpoint.map(|e| e.to_string()),
                    &enabled,
                ],
            )
            .await
            .map_err(pg_error)?;
        let create: Vec<NewDelivery> = create
            .into_iter()
            .filter(|d| {
                let endpoint = d.endpoint_id.to_string();
                enabled.contains(&endpoint) && !had.contains(&endpoint)
            })
            .collect();
        insert_deliveries(self, &transaction, parse_id(&inbound)?, &create, now).await?;
        self.notify_deliveries(&transaction).await?;
        transaction.commit().await.map_err(pg_error)?;
        let mut ids = rows
            .iter()
            .map(|row| parse_id(row.get::<_, &str>(0)))
            .collect::<Result<Vec<DeliveryId>, _>>()?;
        ids.extend(create.iter().map(|d| d.id));
        Ok(ids)
    }

    pub(crate) async fn deliveries_of_event(
        &self,
        event: EventId,
        inbound: InboundId,
    ) -> Result<Vec<(DeliveryRecord, Vec<AttemptRecord>)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries
                     WHERE inbound_id = $2 AND (event_id = $1 OR event_id IS NULL) ORDER BY id"
                ),
                &[&event.to_string(), &inbound.to_string()],
            )
            .await
            .map_err(pg_error)?;
        let mut result = Vec::with_capacity(rows.len());
        for row in &rows {
            let delivery = to_delivery(row)?;
            let attempts = client
                .query(
                    &format!(
                        "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE delivery_id = $1 ORDER BY id"
                    ),
                    &[&delivery.id.to_string()],
                )
                .await
                .map_err(pg_error)?
                .iter()
                .map(to_attempt)
                .collect::<Result<Vec<_>, _>>()?;
            result.push((delivery, attempts));
        }
        Ok(result)
    }

    pub(crate) async fn delivery(
        &self,
        id: DeliveryId,
    ) -> Result<Option<DeliveryRecord>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(
                &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = $1"),
                &[&id.to_string()],
            )
            .await
            .map_err(pg_error)?
            .as_ref()
            .map(to_delivery)
            .transpose()
    }

    pub(crate) async fn deliveries_of_endpoint(
        &self,
        endpoint: EndpointId,
        status: Option<DeliveryStatus>,
        (after, before): (Option<DeliveryId>, Option<DeliveryId>),
        limit: u32,
    ) -> Result<Page<DeliveryRecord>, StoreError> {
        let client = self.client().await?;
        let limit = clamp_limit(limit);
        // Newest first, along `deliveries_by_endpoint` (endpoint_id, id), or the index of the
        // status's rows where it has one (see `status_filter`).
        let rows = client
            .query(
                &format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries
                     WHERE endpoint_id = $1 {} AND ($2::TEXT IS NULL OR id < $2)
                       AND ($3::TEXT IS NULL OR id > $3)
                     ORDER BY id DESC LIMIT $4",
                    status_filter(status)
                ),
                &[
                    &endpoint.to_string(),
                    &before.map(|b| b.to_string()),
                    &after.map(|a| a.to_string()),
                    &i64::from(limit + 1),
                ],
            )
            .await
            .map_err(pg_error)?;
        let mut items = rows
            .iter()
            .map(to_delivery)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(&mut items, limit, |d| d.id.to_string()))
    }

    pub(crate) async fn attempts_of_endpoint(
        &self,
        endpoint: EndpointId,
        before: Option<AttemptId>,
        limit: u32,
    ) -> Result<Page<AttemptRecord>, StoreError> {
        let client = self.client().await?;
        let limit = clamp_limit(limit);
        let rows = client
            .query(
                &format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM attempts
                     WHERE endpoint_id = $1 AND ($2::TEXT IS NULL OR id < $2)
                     ORDER BY id DESC LIMIT $3"
                ),
                &[
                    &endpoint.to_string(),
                    &before.map(|b| b.to_string()),
                    &i64::from(limit + 1),
                ],
            )
            .await
            .map_err(pg_error)?;
        let mut items = rows.iter().map(to_attempt).collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(&mut items, limit, |a| a.id.to_string()))
    }

    pub(crate) async fn endpoint_stats(
        &self,
        endpoint: EndpointId,
        now: Timestamp,
    ) -> Result<EndpointStats, StoreError> {
        let client = self.client().await?;
        let mut stats = EndpointStats::default();
        let rows = client
            .query(
                "SELECT status, COUNT(*) FROM deliveries WHERE endpoint_id = $1 GROUP BY status",
                &[&endpoint.to_string()],
            )
            .await
            .map_err(pg_error)?;
        for row in &rows {
            let count = u64::try_from(row.get::<_, i64>(1)).unwrap_or(0);
            match DeliveryStatus::parse(row.get(0)) {
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
        let row = client
            .query_one(
                "SELECT COUNT(*), COALESCE(SUM(CASE WHEN status_code BETWEEN 200 AND 299 THEN 1 ELSE 0 END), 0)
                 FROM attempts WHERE endpoint_id = $1 AND started_at >= $2 AND id >= $3",
                &[&endpoint.to_string(), &day_ago.unix_millis(), &since_id],
            )
            .await
            .map_err(pg_error)?;
        stats.attempts_24h = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        stats.successes_24h = u64::try_from(row.get::<_, i64>(1)).unwrap_or(0);
        Ok(stats)
    }

    /// Takes (or keeps) the right to deliver to each endpoint for `owner` until `until`;
    /// returns the endpoints `owner` now owns.
    pub(crate) async fn own_endpoints(
        &self,
        owner: String,
        endpoints: Vec<EndpointId>,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<EndpointId>, StoreError> {
        if endpoints.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let ids: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
        let rows = client
            .query(
                // On the database's clock, as leases are (see `DB_NOW`).
                &format!(
                    "INSERT INTO endpoint_owners (endpoint_id, owner, until)
                     SELECT id, $2, {DB_NOW} + ($4::INT8 - $3::INT8) FROM unnest($1::TEXT[]) AS id
                     ON CONFLICT (endpoint_id) DO UPDATE
                       SET owner = excluded.owner, until = excluded.until
                       WHERE endpoint_owners.owner = excluded.owner
                          OR endpoint_owners.until <= {DB_NOW}
                     RETURNING endpoint_id"
                ),
                &[&ids, &owner, &now.unix_millis(), &until.unix_millis()],
            )
            .await
            .map_err(pg_error)?;
        rows.iter()
            .map(|row| parse_id(row.get::<_, &str>(0)))
            .collect()
    }

    /// Gives up `owner`'s right to deliver to these endpoints.
    pub(crate) async fn disown_endpoints(
        &self,
        owner: String,
        endpoints: Vec<EndpointId>,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let ids: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
        client
            .execute(
                "DELETE FROM endpoint_owners WHERE endpoint_id = ANY($1) AND owner = $2",
                &[&ids, &owner],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }
}
