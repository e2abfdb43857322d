//! Writes on PostgreSQL: ingests, reprocessing and dedup pruning.

use billhook_core::ids::{EventId, InboundId};
use billhook_core::time::Timestamp;
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use deadpool_postgres::GenericClient;
use deadpool_postgres::Transaction;
use futures_util::FutureExt;
use tokio::sync::mpsc::error::SendTimeoutError;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;

use super::ledger::{LedgerGroup, apply_facts};
use super::{DB_NOW, PgStore, execute_cached, pg_error};
use crate::StoreError;
use crate::model::*;

pub(crate) use crate::model::parse_id;

/// Takes (or, if it already holds it, renews) the dedup key for `inbound_id` unless another live
/// request holds it; returns the holder.
async fn claim_dedup(
    transaction: &Transaction<'_>,
    source: &str,
    key: &str,
    inbound_id: InboundId,
    now: Timestamp,
    expires_at: Timestamp,
) -> Result<Option<InboundId>, StoreError> {
    let statement = transaction
        .prepare_cached(
            "INSERT INTO dedup (source, key, inbound_id, expires_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (source, key) DO UPDATE
               SET inbound_id = excluded.inbound_id, expires_at = excluded.expires_at
               WHERE dedup.expires_at <= $5 OR dedup.inbound_id = excluded.inbound_id
             RETURNING inbound_id",
        )
        .await
        .map_err(pg_error)?;
    let claimed = transaction
        .query_opt(
            &statement,
            &[
                &source,
                &key,
                &inbound_id.to_string(),
                &expires_at.unix_millis(),
                &now.unix_millis(),
            ],
        )
        .await
        .map_err(pg_error)?;
    if claimed.is_some() {
        return Ok(None);
    }
    dedup_holder(transaction, source, key)
        .await?
        .map(Some)
        .ok_or_else(|| StoreError::Database(format!("dedup key `{key}` has no holder")))
}

/// Takes every key in `keys` for `inbound_id`, or none: at the first key another request holds,
/// the keys this call took are given up again, and that holder is returned.
async fn claim_all(
    transaction: &Transaction<'_>,
    source: &str,
    keys: &[&str],
    inbound_id: InboundId,
    now: Timestamp,
    expires_at: Timestamp,
) -> Result<Option<InboundId>, StoreError> {
    for (index, key) in keys.iter().enumerate() {
        let Some(holder) =
            claim_dedup(transaction, source, key, inbound_id, now, expires_at).await?
        else {
            continue;
        };
        if index > 0 {
            release_claims(
                transaction,
                &vec![source; index],
                &keys[..index],
                &vec![inbound_id.to_string(); index],
            )
            .await?;
        }
        return Ok(Some(holder));
    }
    Ok(None)
}

/// Gives up the dedup claims `(sources[i], keys[i])` where `inbound_ids[i]` holds them.
async fn release_claims(
    transaction: &Transaction<'_>,
    sources: &[&str],
    keys: &[&str],
    inbound_ids: &[String],
) -> Result<(), StoreError> {
    execute_cached(
        transaction,
        "DELETE FROM dedup d
         USING unnest($1::text[], $2::text[], $3::text[]) AS c(source, key, inbound_id)
         WHERE d.source = c.source AND d.key = c.key AND d.inbound_id = c.inbound_id",
        &[&sources, &keys, &inbound_ids],
    )
    .await?;
    Ok(())
}

/// The request that holds a dedup key (locked by a failed claim, so it stays the holder).
async fn dedup_holder(
    transaction: &Transaction<'_>,
    source: &str,
    key: &str,
) -> Result<Option<InboundId>, StoreError> {
    let row = transaction
        .query_opt(
            "SELECT inbound_id FROM dedup WHERE source = $1 AND key = $2",
            &[&source, &key],
        )
        .await
        .map_err(pg_error)?;
    row.map(|row| parse_id(row.get::<_, &str>(0))).transpose()
}

/// The insert of events passed as nine arrays from parameter `$first` on (the request each
/// belongs to, then the event's columns): one statement however many events and requests.
fn insert_events_sql(first: usize) -> String {
    let [
        inbound,
        id,
        kind,
        source,
        subject_kind,
        subject_id,
        occurred,
        received,
        payload,
    ] = std::array::from_fn::<usize, 9, _>(|i| first + i);
    format!(
        "INSERT INTO events (id, type, source, subject_kind, subject_id, inbound_id, occurred_at,
            received_at, payload)
         SELECT id, type, source, subject_kind, subject_id, inbound_id, occurred_at, received_at,
            payload
         FROM unnest(${inbound}::text[], ${id}::text[], ${kind}::text[], ${source}::text[],
            ${subject_kind}::text[], ${subject_id}::text[], ${occurred}::bigint[],
            ${received}::bigint[], ${payload}::bytea[])
           AS e(inbound_id, id, type, source, subject_kind, subject_id, occurred_at, received_at,
            payload)"
    )
}

/// The insert of deliveries passed as eleven arrays from parameter `$first` on (the request
/// each belongs to, when it was created, then the delivery's columns, with how long its lease
/// has to run, if it has one: the lease ends on the database's clock).
///
/// A delivery planned as held (its endpoint disabled as the planning instance saw it) is
/// judged again against the endpoint as written: one enabled meanwhile, by another instance
/// or just before, would otherwise hold it after the recovery that came with the enabling,
/// with nothing left to release it. The endpoint is locked for that, so an enabling either
/// waits for this write (and its recovery sees the held row) or is seen by it. It is locked by
/// its id alone, and whether it is enabled read from the locked row: a filter on `enabled`
/// would be judged on the row as the statement first saw it, and an enabling not committed yet
/// would be neither waited for nor seen.
fn insert_deliveries_sql(first: usize) -> String {
    let [
        inbound,
        created,
        id,
        endpoint,
        message,
        event,
        kind,
        status,
        next,
        owner,
        lease_for,
    ] = std::array::from_fn::<usize, 11, _>(|i| first + i);
    format!(
        "INSERT INTO deliveries (id, endpoint_id, message_id, event_id, inbound_id, event_type,
            status, next_attempt_at, lease_owner, lease_until, created_at, updated_at)
         SELECT id, endpoint_id, message_id, event_id, inbound_id, event_type,
            CASE WHEN status = 'held' THEN
                CASE WHEN COALESCE((SELECT e.enabled AND e.deleted_at IS NULL FROM endpoints e
                    WHERE e.id = d.endpoint_id FOR SHARE), false) THEN 'pending' ELSE 'held' END
            ELSE status END,
            next_attempt_at, lease_owner, {DB_NOW} + lease_for, created_at, created_at
         FROM unnest(${inbound}::text[], ${created}::bigint[], ${id}::text[],
            ${endpoint}::text[], ${message}::text[], ${event}::text[], ${kind}::text[],
            ${status}::text[], ${next}::bigint[], ${owner}::text[], ${lease_for}::bigint[])
           AS d(inbound_id, created_at, id, endpoint_id, message_id, event_id, event_type, status,
            next_attempt_at, lease_owner, lease_for)"
    )
}

/// Events of any number of requests as the arrays `insert_events_sql` reads.
#[derive(Default)]
struct EventArrays<'a> {
    inbound_ids: Vec<String>,
    ids: Vec<String>,
    types: Vec<&'static str>,
    sources: Vec<&'a str>,
    subject_kinds: Vec<&'static str>,
    subject_ids: Vec<&'a str>,
    occurred_at: Vec<i64>,
    received_at: Vec<i64>,
    payloads: Vec<&'a [u8]>,
}

impl<'a> EventArrays<'a> {
    fn push(&mut self, inbound_id: InboundId, events: &'a [NewEvent]) {
        for e in events {
            self.inbound_ids.push(inbound_id.to_string());
            self.ids.push(e.id.to_string());
            self.types.push(e.event_type);
            self.sources.push(&e.source);
            self.subject_kinds.push(e.subject_kind);
            self.subject_ids.push(&e.subject_id);
            self.occurred_at.push(e.occurred_at.unix_millis());
            self.received_at.push(e.received_at.unix_millis());
            self.payloads.push(&e.payload);
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.inbound_ids,
            &self.ids,
            &self.types,
            &self.sources,
            &self.subject_kinds,
            &self.subject_ids,
            &self.occurred_at,
            &self.received_at,
            &self.payloads,
        ]
    }
}

/// Deliveries of any number of requests as the arrays `insert_deliveries_sql` reads.
#[derive(Default)]
struct DeliveryArrays<'a> {
    inbound_ids: Vec<String>,
    created_at: Vec<i64>,
    ids: Vec<String>,
    endpoint_ids: Vec<String>,
    message_ids: Vec<&'a str>,
    event_ids: Vec<Option<String>>,
    event_types: Vec<&'static str>,
    statuses: Vec<&'static str>,
    next_attempt_at: Vec<i64>,
    lease_owners: Vec<Option<&'a str>>,
    /// Milliseconds to the lease's end, from the instance's clock when the rows were written.
    lease_for: Vec<Option<i64>>,
}

impl<'a> DeliveryArrays<'a> {
    /// `clock` is the instance's time now, what a lease's end is measured from.
    fn push(
        &mut self,
        inbound_id: InboundId,
        created_at: Timestamp,
        deliveries: &'a [NewDelivery],
        clock: Timestamp,
    ) {
        for d in deliveries {
            self.inbound_ids.push(inbound_id.to_string());
            self.created_at.push(created_at.unix_millis());
            self.ids.push(d.id.to_string());
            self.endpoint_ids.push(d.endpoint_id.to_string());
            self.message_ids.push(&d.message_id);
            self.event_ids.push(d.event_id.map(|e| e.to_string()));
            self.event_types.push(d.event_type);
            self.statuses.push(d.status.as_str());
            self.next_attempt_at.push(d.next_attempt_at.unix_millis());
            self.lease_owners
                .push(d.lease.as_ref().map(|l| l.owner.as_str()));
            self.lease_for.push(
                d.lease
                    .as_ref()
                    .map(|l| l.until.unix_millis() - clock.unix_millis()),
            );
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 11] {
        [
            &self.inbound_ids,
            &self.created_at,
            &self.ids,
            &self.endpoint_ids,
            &self.message_ids,
            &self.event_ids,
            &self.event_types,
            &self.statuses,
            &self.next_attempt_at,
            &self.lease_owners,
            &self.lease_for,
        ]
    }
}

/// Every dedup key of a group's requests, as the arrays its claim reads, in one order (by
/// source and key) for every group: two groups claiming the same keys wait for each other
/// instead of deadlocking.
#[derive(Default)]
struct ClaimArrays<'a> {
    sources: Vec<&'a str>,
    keys: Vec<&'a str>,
    inbound_ids: Vec<String>,
    expires_at: Vec<i64>,
}

impl<'a> ClaimArrays<'a> {
    fn of(writes: &[&'a IngestWrite]) -> Self {
        let mut claims: Vec<(&str, &str, &IngestWrite)> = writes
            .iter()
            .flat_map(|write| {
                let inbound = &write.inbound;
                inbound
                    .dedup_keys()
                    .map(move |key| (inbound.source.as_str(), key, *write))
            })
            .collect();
        claims.sort_unstable_by_key(|&(source, key, _)| (source, key));
        let mut arrays = Self::default();
        for (source, key, write) in claims {
            arrays.sources.push(source);
            arrays.keys.push(key);
            arrays.inbound_ids.push(write.inbound.id.to_string());
            arrays.expires_at.push(write.dedup_expires_at.unix_millis());
        }
        arrays
    }
}

/// Requests as the arrays the ingest statement reads.
#[derive(Default)]
struct RequestArrays<'a> {
    ids: Vec<String>,
    sources: Vec<&'a str>,
    dedup_keys: Vec<&'a str>,
    providers: Vec<&'a str>,
    received_at: Vec<i64>,
    statuses: Vec<&'static str>,
    provider_events: Vec<Option<&'a str>>,
    provider_event_ids: Vec<Option<&'a str>>,
    verifications: Vec<&'a str>,
    remote_addrs: Vec<Option<&'a str>>,
    headers: Vec<String>,
    bodies: Vec<&'a [u8]>,
    error_codes: Vec<Option<&'a str>>,
    error_messages: Vec<Option<&'a str>>,
    processed_at: Vec<Option<i64>>,
}

impl<'a> RequestArrays<'a> {
    fn push(&mut self, write: &'a IngestWrite) -> Result<(), StoreError> {
        let inbound = &write.inbound;
        let received_at = inbound.received_at.unix_millis();
        self.ids.push(inbound.id.to_string());
        self.sources.push(&inbound.source);
        self.dedup_keys.push(&inbound.dedup_key);
        self.providers.push(&inbound.provider);
        self.received_at.push(received_at);
        self.statuses.push(inbound.status.as_str());
        self.provider_events.push(inbound.provider_event.as_deref());
        self.provider_event_ids
            .push(inbound.provider_event_id.as_deref());
        self.verifications.push(&inbound.verification);
        self.remote_addrs.push(inbound.remote_addr.as_deref());
        self.headers.push(
            serde_json::to_string(&inbound.headers)
                .map_err(|e| StoreError::Database(e.to_string()))?,
        );
        self.bodies.push(&inbound.body);
        self.error_codes
            .push(inbound.error.as_ref().map(|e| e.code.as_str()));
        self.error_messages
            .push(inbound.error.as_ref().map(|e| e.message.as_str()));
        self.processed_at
            .push((inbound.status == InboundStatus::Processed).then_some(received_at));
        Ok(())
    }
}

/// Whether other instances should hear of these deliveries: some are left for whichever
/// instance claims them first. One planned as held may be written pending too (its endpoint
/// enabled meanwhile, see `insert_deliveries_sql`); the statements ask what they wrote for
/// those, since most stay held (an endpoint that stays disabled), and a notification for each
/// would wake every instance for nothing.
fn announced(deliveries: &[NewDelivery]) -> bool {
    deliveries
        .iter()
        .any(|d| d.lease.is_none() && d.status == DeliveryStatus::Pending)
}

/// What a deliveries insert returns for each row: whether it was left due for any instance.
const RETURNING_UNLEASED_PENDING: &str =
    "RETURNING status = 'pending' AND lease_owner IS NULL AS unleased_pending";

/// The writes of a group of ingests in one statement: each request's dedup claims, and for
/// the requests that took every key they claimed, the request itself, its events and its
/// deliveries, and the notification of other instances. On PostgreSQL a statement costs mostly
/// its round trip and executor start-up, however many rows it writes. Returns the ids of the
/// requests written (the others are duplicates). Parts with no rows are left out (a store
/// opened at an older schema version in tests has no deliveries table), which makes four
/// statements, indexed by `[has events, has deliveries]`.
fn ingest_statement(with_events: bool, with_deliveries: bool) -> String {
    // Only the requests written write the rest: each insert keeps their rows.
    let guarded = |name: &str, insert: Option<String>, alias: &str, returning: &str| {
        insert.map_or_else(String::new, |insert| {
            format!(
                ", {name} AS ({insert}
                   WHERE {alias}.inbound_id IN (SELECT inbound_id FROM written) {returning})"
            )
        })
    };
    let first_delivery = if with_events { 32 } else { 23 };
    let events = guarded(
        "request_events",
        with_events.then(|| insert_events_sql(23)),
        "e",
        "",
    );
    let deliveries = guarded(
        "request_deliveries",
        with_deliveries.then(|| insert_deliveries_sql(first_delivery)),
        "d",
        RETURNING_UNLEASED_PENDING,
    );
    // A delivery planned as held and written pending is announced too.
    let written_pending = if with_deliveries {
        " OR EXISTS (SELECT 1 FROM request_deliveries WHERE unleased_pending)"
    } else {
        ""
    };
    format!(
        "WITH claimed AS (
            INSERT INTO dedup (source, key, inbound_id, expires_at)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
            ON CONFLICT (source, key) DO UPDATE
              SET inbound_id = excluded.inbound_id, expires_at = excluded.expires_at
              WHERE dedup.expires_at <= $5
            RETURNING source, key, inbound_id
          ), written AS (
            SELECT wanted.inbound_id FROM unnest($3::text[]) AS wanted(inbound_id)
            GROUP BY wanted.inbound_id
            HAVING count(*) = (SELECT count(*) FROM claimed
                               WHERE claimed.inbound_id = wanted.inbound_id)
          ), refused AS (
            SELECT * FROM claimed WHERE inbound_id NOT IN (SELECT inbound_id FROM written)
          ), request AS (
            INSERT INTO inbound (id, source, provider, received_at, status, provider_event,
                provider_event_id, dedup_key, verification, remote_addr, headers, body,
                error_code, error_message, processed_at)
            SELECT * FROM unnest($20::text[], $21::text[], $6::text[], $7::bigint[], $8::text[],
                $9::text[], $10::text[], $22::text[], $11::text[], $12::text[], $13::text[],
                $14::bytea[], $15::text[], $16::text[], $17::bigint[])
              AS r(id, source, provider, received_at, status, provider_event, provider_event_id,
                dedup_key, verification, remote_addr, headers, body, error_code, error_message,
                processed_at)
            WHERE r.id IN (SELECT inbound_id FROM written)
          ){events}{deliveries}
         SELECT ARRAY(SELECT inbound_id FROM written),
                CASE WHEN $18::text IS NOT NULL
                      AND (EXISTS (SELECT 1 FROM written WHERE inbound_id = ANY($19::text[])){written_pending})
                     THEN pg_notify($18, '')::text END,
                ARRAY(SELECT source FROM refused ORDER BY source, key),
                ARRAY(SELECT key FROM refused ORDER BY source, key),
                ARRAY(SELECT inbound_id FROM refused ORDER BY source, key)"
    )
}

static INGEST_STATEMENTS: LazyLock<[[String; 2]; 2]> = LazyLock::new(|| {
    [false, true].map(|with_events| {
        [false, true].map(|with_deliveries| ingest_statement(with_events, with_deliveries))
    })
});

/// Writes each request, its events and deliveries unless one of its dedup keys is held;
/// returns the requests that were written. No two of `writes` may share a dedup key.
async fn insert_requests(
    store: &PgStore,
    transaction: &Transaction<'_>,
    writes: &[&IngestWrite],
) -> Result<HashSet<InboundId>, StoreError> {
    let claims = ClaimArrays::of(writes);
    let mut requests = RequestArrays::default();
    let mut events = EventArrays::default();
    let mut deliveries = DeliveryArrays::default();
    let mut announcing = Vec::new();
    let clock = Timestamp::now();
    for write in writes {
        let id = write.inbound.id;
        requests.push(write)?;
        events.push(id, &write.events);
        deliveries.push(id, write.inbound.received_at, &write.deliveries, clock);
        if announced(&write.deliveries) {
            announcing.push(id.to_string());
        }
    }
    // A key is free once expired by the time of the latest request (for one request, its
    // own time): no request of the group is written before all of them have arrived.
    let now = writes
        .iter()
        .map(|w| w.inbound.received_at.unix_millis())
        .max()
        .unwrap_or_default();
    // A delivery planned as held may be written pending: the statement judges those itself.
    let planned_held = writes
        .iter()
        .flat_map(|write| &write.deliveries)
        .any(|d| d.status == DeliveryStatus::Held);
    let channel =
        (!announcing.is_empty() || planned_held).then_some(store.deliveries_channel.as_str());
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![
        &claims.sources,
        &claims.keys,
        &claims.inbound_ids,
        &claims.expires_at,
        &now,
        &requests.providers,
        &requests.received_at,
        &requests.statuses,
        &requests.provider_events,
        &requests.provider_event_ids,
        &requests.verifications,
        &requests.remote_addrs,
        &requests.headers,
        &requests.bodies,
        &requests.error_codes,
        &requests.error_messages,
        &requests.processed_at,
        &channel,
        &announcing,
        &requests.ids,
        &requests.sources,
        &requests.dedup_keys,
    ];
    let with_events = !events.ids.is_empty();
    let with_deliveries = !deliveries.ids.is_empty();
    if with_events {
        params.extend(events.params());
    }
    if with_deliveries {
        params.extend(deliveries.params());
    }
    let statement = transaction
        .prepare_cached(&INGEST_STATEMENTS[usize::from(with_events)][usize::from(with_deliveries)])
        .await
        .map_err(pg_error)?;
    let row = transaction
        .query_one(&statement, &params)
        .await
        .map_err(pg_error)?;
    let written: HashSet<InboundId> = row
        .get::<_, Vec<&str>>(0)
        .into_iter()
        .map(parse_id)
        .collect::<Result<_, _>>()?;
    // A request refused under one of its keys gives up the others it took.
    let taken_keys: Vec<&str> = row.get(3);
    if !taken_keys.is_empty() {
        let sources: Vec<&str> = row.get(2);
        let inbound_ids: Vec<String> = row.get(4);
        release_claims(transaction, &sources, &taken_keys, &inbound_ids).await?;
    }
    Ok(written)
}

pub(super) async fn insert_events(
    transaction: &Transaction<'_>,
    inbound_id: InboundId,
    events: &[NewEvent],
) -> Result<(), StoreError> {
    static STATEMENT: LazyLock<String> = LazyLock::new(|| insert_events_sql(1));
    if events.is_empty() {
        return Ok(());
    }
    let statement = transaction
        .prepare_cached(&STATEMENT)
        .await
        .map_err(pg_error)?;
    let mut arrays = EventArrays::default();
    arrays.push(inbound_id, events);
    transaction
        .execute(&statement, &arrays.params())
        .await
        .map_err(pg_error)?;
    Ok(())
}

/// Inserts deliveries and, when any is left for whichever instance claims it first, tells the
/// other instances (the notification is sent at commit).
pub(super) async fn insert_deliveries(
    store: &PgStore,
    transaction: &Transaction<'_>,
    inbound_id: InboundId,
    deliveries: &[NewDelivery],
    now: Timestamp,
) -> Result<(), StoreError> {
    static STATEMENT: LazyLock<String> =
        LazyLock::new(|| format!("{} {RETURNING_UNLEASED_PENDING}", insert_deliveries_sql(1)));
    if deliveries.is_empty() {
        return Ok(());
    }
    let statement = transaction
        .prepare_cached(&STATEMENT)
        .await
        .map_err(pg_error)?;
    let mut arrays = DeliveryArrays::default();
    arrays.push(inbound_id, now, deliveries, Timestamp::now());
    let written = transaction
        .query(&statement, &arrays.params())
        .await
        .map_err(pg_error)?;
    if written.iter().any(|row| row.get::<_, bool>(0)) {
        store.notify_deliveries(transaction).await?;
    }
    Ok(())
}

pub(super) async fn event_ids_of<C: GenericClient>(
    client: &C,
    inbound_id: InboundId,
) -> Result<Vec<EventId>, StoreError> {
    let rows = client
        .query(
            &format!(
                "SELECT id FROM events WHERE inbound_id = $1 AND type NOT IN ({}) ORDER BY id",
                conclusion_types_sql()
            ),
            &[&inbound_id.to_string()],
        )
        .await
        .map_err(pg_error)?;
    rows.iter()
        .map(|row| parse_id(row.get::<_, &str>(0)))
        .collect()
}

/// Tells the other instances on `channel`; sent when the transaction commits.
async fn notify<C: GenericClient>(client: &C, channel: &str) -> Result<(), StoreError> {
    execute_cached(client, "SELECT pg_notify($1, '')", &[&channel]).await?;
    Ok(())
}

/// The most requests one ingest transaction writes. Each takes a few advisory locks for the
/// ledger, and advisory locks share one table in the database's shared memory
/// (`max_locks_per_transaction` × `max_connections`, 6,400 by default) with every session:
/// groups of 32 take a few hundred, however many instances there are.
const MAX_GROUP: usize = 32;

/// How often an ingest transaction the database cancelled for conflicting with another (a
/// deadlock) is written again before giving up: a group's requests are then written one by
/// one, a single request fails.
const CONFLICT_RETRIES: u32 = 2;

/// An ingest waiting for a writer, and where its outcome goes.
pub(super) struct QueuedIngest {
    write: IngestWrite,
    reply: oneshot::Sender<Result<IngestOutcome, StoreError>>,
}

fn dedup_keys(write: &IngestWrite) -> impl Iterator<Item = (&str, &str)> {
    let inbound = &write.inbound;
    inbound
        .dedup_keys()
        .map(move |key| (inbound.source.as_str(), key))
}

/// The tasks that write ingests in groups, and their queue.
///
/// Each group is one transaction and one commit: a writer takes everything queued (up to
/// `MAX_GROUP`) while the others write theirs. On PostgreSQL what an ingest costs is mostly
/// per statement and per commit, and a group shares its statements (one for every request's
/// rows, one for every ledger lock, one to three reading what the ledger will ask, one for every
/// ledger entity, one for all ledger history) and its commit. Alone, a request is written as
/// soon as a writer is free.
pub(super) struct IngestWriters {
    /// `None` once the store is closed.
    queue: std::sync::Mutex<Option<mpsc::Sender<QueuedIngest>>>,
    tasks: tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// How long an ingest may wait for room in the queue, as long as for a connection.
    wait: Duration,
}

impl IngestWriters {
    /// Starts `writers` tasks writing for `store`.
    pub(super) fn start(store: &PgStore, writers: usize, wait: Duration) -> Self {
        let (queue, receiver) = mpsc::channel(MAX_GROUP * writers);
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let tasks = (0..writers)
            .map(|_| {
                let store = PgStore {
                    ingests: None,
                    ..store.clone()
                };
                let receiver = Arc::clone(&receiver);
                tokio::spawn(async move {
                    let mut queued = Vec::with_capacity(MAX_GROUP);
                    loop {
                        let mut receiver = receiver.lock().await;
                        if receiver.recv_many(&mut queued, MAX_GROUP).await == 0 {
                            return;
                        }
                        drop(receiver);
                        // A panic outside a request's write (each is caught in
                        // `write_retrying`) fails this group's requests (their replies are
                        // dropped), not the writer: the next group is written as usual.
                        let written =
                            AssertUnwindSafe(store.write_group(std::mem::take(&mut queued)))
                                .catch_unwind()
                                .await;
                        if written.is_err() {
                            tracing::error!(
                                "an ingest writer panicked; its group was not answered"
                            );
                        }
                    }
                })
            })
            .collect();
        Self {
            queue: std::sync::Mutex::new(Some(queue)),
            tasks: tokio::sync::Mutex::new(tasks),
            wait,
        }
    }

    fn queue(&self) -> Option<mpsc::Sender<QueuedIngest>> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Writes what is queued, then stops the writers.
    pub(super) async fn close(&self) {
        drop(
            self.queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
        for task in std::mem::take(&mut *self.tasks.lock().await) {
            let _ = task.await;
        }
    }
}

impl PgStore {
    pub(super) async fn notify_deliveries<C: GenericClient>(
        &self,
        client: &C,
    ) -> Result<(), StoreError> {
        notify(client, &self.deliveries_channel).await
    }

    pub(super) async fn notify_endpoints<C: GenericClient>(
        &self,
        client: &C,
    ) -> Result<(), StoreError> {
        notify(client, &self.endpoints_channel).await
    }

    /// Queues an ingest for the next group a writer takes, or, for a store without writers
    /// (the writers' own), writes it at once.
    pub(crate) async fn ingest(&self, write: IngestWrite) -> Result<IngestOutcome, StoreError> {
        let Some(writers) = &self.ingests else {
            return self.write_alone(&write).await;
        };
        let queue = writers
            .queue()
            .ok_or_else(|| StoreError::Unavailable("the store is closed".to_owned()))?;
        let (reply, outcome) = oneshot::channel();
        queue
            .send_timeout(QueuedIngest { write, reply }, writers.wait)
            .await
            .map_err(|error| {
                StoreError::Unavailable(match error {
                    SendTimeoutError::Timeout(_) => {
                        "ingests are queued beyond what the database keeps up with".to_owned()
                    }
                    SendTimeoutError::Closed(_) => "the store is closed".to_owned(),
                })
            })?;
        drop(queue);
        outcome
            .await
            .map_err(|_| StoreError::Unavailable("the ingest writer stopped".to_owned()))?
    }

    /// Writes one group of queued ingests and answers each.
    async fn write_group(&self, queued: Vec<QueuedIngest>) {
        // The first of each dedup key is written with the group, in the order they arrived;
        // later requests claiming it (one statement cannot claim a key twice) on their own
        // after it.
        let mut seen = HashSet::new();
        let firsts: Vec<bool> = queued
            .iter()
            .map(|q| {
                let first = dedup_keys(&q.write).all(|key| !seen.contains(&key));
                // A request held back holds its keys back too: one that shares another of
                // them is written after it, not before.
                seen.extend(dedup_keys(&q.write));
                first
            })
            .collect();
        drop(seen);
        let writes: Vec<&IngestWrite> = queued
            .iter()
            .zip(&firsts)
            .filter(|(_, first)| **first)
            .map(|(q, _)| &q.write)
            .collect();
        let mut outcomes = self.write_outcomes(&writes).await.into_iter();
        let mut copies = Vec::new();
        for (queued, first) in queued.into_iter().zip(firsts) {
            if first {
                let outcome = outcomes.next().unwrap_or_else(|| {
                    Err(StoreError::Database(
                        "an ingest group wrote no outcome".to_owned(),
                    ))
                });
                // The caller may have gone; what was written stays written.
                let _ = queued.reply.send(outcome);
            } else {
                copies.push(queued);
            }
        }
        for copy in copies {
            let outcome = self.write_alone(&copy.write).await;
            let _ = copy.reply.send(outcome);
        }
    }

    /// Writes requests, none sharing a dedup key, together; an outcome for each, in order.
    async fn write_outcomes(
        &self,
        writes: &[&IngestWrite],
    ) -> Vec<Result<IngestOutcome, StoreError>> {
        match self.write_retrying(writes).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            // The database, not a request, failed: each request gets the error at once.
            Err(error) if writes.len() == 1 || matches!(error, StoreError::Unavailable(_)) => {
                writes.iter().map(|_| Err(error.clone())).collect()
            }
            // Nothing of the group was written, and one of its requests may be one the
            // database refuses, or too large for `statement_timeout`: each is written again on
            // its own, so a bad one fails alone. One of them timing out too, or finding the
            // database away, says the database is the trouble: the rest fail with it at once,
            // rather than each waiting out the timeout in turn.
            Err(error) => {
                tracing::warn!(%error, requests = writes.len(), "an ingest group failed; writing its requests one by one");
                let mut outcomes = Vec::with_capacity(writes.len());
                let mut overloaded = None;
                for write in writes {
                    if let Some(error) = &overloaded {
                        outcomes.push(Err(StoreError::clone(error)));
                        continue;
                    }
                    let outcome = self.write_alone(write).await;
                    if let Err(error @ (StoreError::TimedOut(_) | StoreError::Unavailable(_))) =
                        &outcome
                    {
                        overloaded = Some(error.clone());
                    }
                    outcomes.push(outcome);
                }
                outcomes
            }
        }
    }

    async fn write_alone(&self, write: &IngestWrite) -> Result<IngestOutcome, StoreError> {
        self.write_retrying(&[write])
            .await?
            .pop()
            .ok_or_else(|| StoreError::Database("an ingest wrote no outcome".to_owned()))
    }

    /// `write_together`, again when the database cancelled the transaction for conflicting
    /// with another: the other has gone on, so this one will too. Each of a group's locking
    /// statements takes its rows in one order, but two groups can still lock rows in opposite
    /// orders across statements (one reads an invoice as its own entity, the other finds it
    /// as a payment's target), and PostgreSQL cancels one of the two.
    async fn write_retrying(
        &self,
        writes: &[&IngestWrite],
    ) -> Result<Vec<IngestOutcome>, StoreError> {
        let mut retries = 0;
        loop {
            // A bug that panics in one request's write (ledger code runs here) fails the
            // transaction, which is rolled back as it is dropped; a group is then written
            // again one by one, so the request fails alone.
            let written = AssertUnwindSafe(self.write_together(writes))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Err(StoreError::panicked(panic.as_ref())));
            match written {
                Err(error @ StoreError::Conflict(_)) if retries < CONFLICT_RETRIES => {
                    retries += 1;
                    tracing::warn!(%error, requests = writes.len(), "an ingest conflicted with another transaction; writing it again");
                }
                written => return written,
            }
        }
    }

    /// Writes requests, none sharing a dedup key, in one transaction; an outcome for each, in
    /// order.
    async fn write_together(
        &self,
        writes: &[&IngestWrite],
    ) -> Result<Vec<IngestOutcome>, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(pg_error)?;
        let stored = insert_requests(self, &transaction, writes).await?;
        let facts = writes
            .iter()
            .filter(|w| stored.contains(&w.inbound.id))
            .flat_map(|w| &w.facts);
        let mut ledger = LedgerGroup::begin(self, &transaction, facts).await?;
        let mut outcomes = Vec::with_capacity(writes.len());
        for write in writes {
            let inbound = &write.inbound;
            if stored.contains(&inbound.id) {
                let concluded = ledger
                    .apply(&write.facts, write.concluder.as_deref())
                    .await?;
                outcomes.push(IngestOutcome::Stored {
                    inbound_id: inbound.id,
                    event_ids: write.events.iter().map(|e| e.id).collect(),
                    concluded,
                });
            } else {
                let mut holder = None;
                for key in inbound.dedup_keys() {
                    holder = dedup_holder(&transaction, &inbound.source, key).await?;
                    if holder.is_some() {
                        break;
                    }
                }
                let original = holder.ok_or_else(|| {
                    StoreError::Database("a refused ingest found no holder of its keys".to_owned())
                })?;
                outcomes.push(IngestOutcome::Duplicate {
                    inbound_id: original,
                    event_ids: event_ids_of(&transaction, original).await?,
                });
            }
        }
        ledger.finish().await?;
        transaction.commit().await.map_err(pg_error)?;
        Ok(outcomes)
    }

    /// `reprocess_once`, again when the database cancelled it for conflicting with another
    /// transaction, as an ingest is: a reprocess takes the ledger's locks too, and one that
    /// relinks a payment takes the payment's out of the group's sorted order (`hold`).
    pub(crate) async fn reprocess(
        &self,
        id: InboundId,
        outcome: Reprocess,
    ) -> Result<ReprocessOutcome, StoreError> {
        let mut retries = 0;
        loop {
            match self.reprocess_once(id, &outcome).await {
                Err(error @ StoreError::Conflict(_)) if retries < CONFLICT_RETRIES => {
                    retries += 1;
                    tracing::warn!(%error, "a reprocess conflicted with another transaction; writing it again");
                }
                done => return done,
            }
        }
    }

    async fn reprocess_once(
        &self,
        id: InboundId,
        outcome: &Reprocess,
    ) -> Result<ReprocessOutcome, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(pg_error)?;
        let current = transaction
            .query_opt(
                "SELECT status, source, dedup_key FROM inbound WHERE id = $1 FOR UPDATE",
                &[&id.to_string()],
            )
            .await
            .map_err(pg_error)?;
        let Some(current) = current else {
            return Ok(ReprocessOutcome::NotQuarantined);
        };
        let status: String = current.get(0);
        let source: String = current.get(1);
        let old_key: String = current.get(2);
        if status != InboundStatus::Quarantined.as_str() {
            return Ok(ReprocessOutcome::NotQuarantined);
        }
        let now = Timestamp::now();
        let result = match outcome {
            Reprocess::StillFailing(error) => {
                transaction
                    .execute(
                        "UPDATE inbound SET error_code = $2, error_message = $3 WHERE id = $1",
                        &[&id.to_string(), &error.code, &error.message],
                    )
                    .await
                    .map_err(pg_error)?;
                ReprocessOutcome::StillQuarantined
            }
            Reprocess::Normalized {
                provider_event,
                provider_event_id,
                dedup_key,
                body_dedup_key,
                events,
                deliveries,
                facts,
                concluder,
                dedup_expires_at,
            } => {
                // The key is claimed again even when it is unchanged: it may have expired while
                // the request sat in quarantine and been taken by a later copy of the message.
                let keys: Vec<&str> = claimed_keys(dedup_key, body_dedup_key.as_deref()).collect();
                let holder =
                    claim_all(&transaction, &source, &keys, id, now, *dedup_expires_at).await?;
                if let Some(holder) = holder {
                    transaction
                        .execute(
                            "UPDATE inbound SET status = 'duplicate', duplicate_of = $2,
                                provider_event = $3, provider_event_id = $4, processed_at = $5
                             WHERE id = $1",
                            &[
                                &id.to_string(),
                                &holder.to_string(),
                                &provider_event,
                                &provider_event_id,
                                &now.unix_millis(),
                            ],
                        )
                        .await
                        .map_err(pg_error)?;
                    ReprocessOutcome::DuplicateOf(holder)
                } else {
                    // The old key goes unless it is one of the new (a body's hash stays one).
                    if !keys.contains(&old_key.as_str()) {
                        transaction
                            .execute(
                                "DELETE FROM dedup WHERE source = $1 AND key = $2 AND inbound_id = $3",
                                &[&source, &old_key, &id.to_string()],
                            )
                            .await
                            .map_err(pg_error)?;
                    }
                    transaction
                        .execute(
                            "UPDATE inbound SET status = 'processed', provider_event = $2,
                                provider_event_id = $3, dedup_key = $4, error_code = NULL,
                                error_message = NULL, processed_at = $5
                             WHERE id = $1",
                            &[
                                &id.to_string(),
                                &provider_event,
                                &provider_event_id,
                                &dedup_key,
                                &now.unix_millis(),
                            ],
                        )
                        .await
                        .map_err(pg_error)?;
                    insert_events(&transaction, id, events).await?;
                    insert_deliveries(self, &transaction, id, deliveries, now).await?;
                    let concluded =
                        apply_facts(self, &transaction, facts, concluder.as_deref()).await?;
                    ReprocessOutcome::Processed {
                        event_ids: events.iter().map(|e| e.id).collect(),
                        concluded,
                    }
                }
            }
        };
        transaction.commit().await.map_err(pg_error)?;
        Ok(result)
    }

    pub(crate) async fn prune_dedup(&self, now: Timestamp, batch: u32) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                // The outer condition again: a key claimed anew between the scan and the delete
                // (its row updated in place) is no longer expired, and stays.
                "DELETE FROM dedup WHERE ctid IN
                   (SELECT ctid FROM dedup WHERE expires_at <= $1 LIMIT $2)
                   AND expires_at <= $1",
                &[&now.unix_millis(), &i64::from(batch)],
            )
            .await
            .map_err(pg_error)
    }
}
