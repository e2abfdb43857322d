//! Writes on PostgreSQL: ingests, reprocessing and dedup pruning.

use billhook_core::ids::{EventId, InboundId};
use billhook_core::time::Timestamp;
use std::sync::LazyLock;

use deadpool_postgres::GenericClient;
use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::ledger::apply_facts;
use super::{PgStore, column, execute_cached, pg_error};
use crate::StoreError;
use crate::model::*;

pub(crate) fn parse_id<T: std::str::FromStr>(text: &str) -> Result<T, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("`{text}` is not a valid id")))
}

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
    dedup_holder(transaction, source, key).await.map(Some)
}

/// The request that holds a dedup key (locked by the failed claim, so it stays the holder).
async fn dedup_holder(
    transaction: &Transaction<'_>,
    source: &str,
    key: &str,
) -> Result<InboundId, StoreError> {
    let row = transaction
        .query_one(
            "SELECT inbound_id FROM dedup WHERE source = $1 AND key = $2",
            &[&source, &key],
        )
        .await
        .map_err(pg_error)?;
    parse_id(row.get::<_, &str>(0))
}

/// The insert of events passed as eight arrays from parameter `$first` on, all of request
/// `$inbound`: one statement however many events a request has.
fn insert_events_sql(inbound: usize, first: usize) -> String {
    let [
        id,
        kind,
        source,
        subject_kind,
        subject_id,
        occurred,
        received,
        payload,
    ] = std::array::from_fn::<usize, 8, _>(|i| first + i);
    format!(
        "INSERT INTO events (id, type, source, subject_kind, subject_id, inbound_id, occurred_at,
            received_at, payload)
         SELECT id, type, source, subject_kind, subject_id, ${inbound}, occurred_at, received_at,
            payload
         FROM unnest(${id}::text[], ${kind}::text[], ${source}::text[], ${subject_kind}::text[],
            ${subject_id}::text[], ${occurred}::bigint[], ${received}::bigint[],
            ${payload}::bytea[])
           AS e(id, type, source, subject_kind, subject_id, occurred_at, received_at, payload)"
    )
}

/// The insert of deliveries passed as nine arrays from parameter `$first` on, all of request
/// `$inbound`, created at `$now`.
fn insert_deliveries_sql(inbound: usize, now: usize, first: usize) -> String {
    let [
        id,
        endpoint,
        message,
        event,
        kind,
        status,
        next,
        owner,
        until,
    ] = std::array::from_fn::<usize, 9, _>(|i| first + i);
    format!(
        "INSERT INTO deliveries (id, endpoint_id, message_id, event_id, inbound_id, event_type,
            status, next_attempt_at, lease_owner, lease_until, created_at, updated_at)
         SELECT id, endpoint_id, message_id, event_id, ${inbound}, event_type, status,
            next_attempt_at, lease_owner, lease_until, ${now}, ${now}
         FROM unnest(${id}::text[], ${endpoint}::text[], ${message}::text[], ${event}::text[],
            ${kind}::text[], ${status}::text[], ${next}::bigint[], ${owner}::text[],
            ${until}::bigint[])
           AS d(id, endpoint_id, message_id, event_id, event_type, status, next_attempt_at,
            lease_owner, lease_until)"
    )
}

/// Events as the arrays `insert_events_sql` reads.
struct EventArrays<'a> {
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
    fn of(events: &'a [NewEvent]) -> Self {
        Self {
            ids: column(events, |e| e.id.to_string()),
            types: column(events, |e| e.event_type),
            sources: column(events, |e| e.source.as_str()),
            subject_kinds: column(events, |e| e.subject_kind),
            subject_ids: column(events, |e| e.subject_id.as_str()),
            occurred_at: column(events, |e| e.occurred_at.unix_millis()),
            received_at: column(events, |e| e.received_at.unix_millis()),
            payloads: column(events, |e| &e.payload[..]),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 8] {
        [
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

/// Deliveries as the arrays `insert_deliveries_sql` reads.
struct DeliveryArrays<'a> {
    ids: Vec<String>,
    endpoint_ids: Vec<String>,
    message_ids: Vec<&'a str>,
    event_ids: Vec<Option<String>>,
    event_types: Vec<&'static str>,
    statuses: Vec<&'static str>,
    next_attempt_at: Vec<i64>,
    lease_owners: Vec<Option<&'a str>>,
    lease_until: Vec<Option<i64>>,
}

impl<'a> DeliveryArrays<'a> {
    fn of(deliveries: &'a [NewDelivery]) -> Self {
        Self {
            ids: column(deliveries, |d| d.id.to_string()),
            endpoint_ids: column(deliveries, |d| d.endpoint_id.to_string()),
            message_ids: column(deliveries, |d| d.message_id.as_str()),
            event_ids: column(deliveries, |d| d.event_id.map(|e| e.to_string())),
            event_types: column(deliveries, |d| d.event_type),
            statuses: column(deliveries, |d| d.status.as_str()),
            next_attempt_at: column(deliveries, |d| d.next_attempt_at.unix_millis()),
            lease_owners: column(deliveries, |d| d.lease.as_ref().map(|l| l.owner.as_str())),
            lease_until: column(deliveries, |d| {
                d.lease.as_ref().map(|l| l.until.unix_millis())
            }),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.ids,
            &self.endpoint_ids,
            &self.message_ids,
            &self.event_ids,
            &self.event_types,
            &self.statuses,
            &self.next_attempt_at,
            &self.lease_owners,
            &self.lease_until,
        ]
    }
}

/// Whether other instances should hear of these deliveries: some are left for whichever
/// instance claims them first.
fn announced(deliveries: &[NewDelivery]) -> bool {
    deliveries
        .iter()
        .any(|d| d.lease.is_none() && d.status == DeliveryStatus::Pending)
}

/// An ingest's writes in one statement: the dedup claim, and only if it succeeded the request,
/// its events and its deliveries, and the notification of other instances. On PostgreSQL a
/// statement costs mostly its round trip and executor start-up, and an ingest used to be one
/// statement per row. Returns whether the claim succeeded (the request is not a duplicate).
/// Parts with no rows are left out (a store opened at an older schema version in tests has no
/// deliveries table), which makes four statements, indexed by `[has events, has deliveries]`.
fn ingest_statement(with_events: bool, with_deliveries: bool) -> String {
    // Only the claim's holder writes: the rows come from a `SELECT … WHERE EXISTS`.
    let guarded = |name: &str, insert: Option<String>| {
        insert.map_or_else(String::new, |insert| {
            format!(", {name} AS ({insert} WHERE EXISTS (SELECT 1 FROM claimed))")
        })
    };
    let first_delivery = if with_events { 26 } else { 18 };
    let events = guarded(
        "request_events",
        with_events.then(|| insert_events_sql(1, 18)),
    );
    let deliveries = guarded(
        "request_deliveries",
        with_deliveries.then(|| insert_deliveries_sql(1, 4, first_delivery)),
    );
    format!(
        "WITH claimed AS (
            INSERT INTO dedup (source, key, inbound_id, expires_at) VALUES ($2, $8, $1, $16)
            ON CONFLICT (source, key) DO UPDATE
              SET inbound_id = excluded.inbound_id, expires_at = excluded.expires_at
              WHERE dedup.expires_at <= $4
            RETURNING 1
          ), request AS (
            INSERT INTO inbound (id, source, provider, received_at, status, provider_event,
                provider_event_id, dedup_key, verification, remote_addr, headers, body,
                error_code, error_message, processed_at)
            SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15
            WHERE EXISTS (SELECT 1 FROM claimed)
          ){events}{deliveries}
         SELECT stored, CASE WHEN stored AND $17::text IS NOT NULL
                             THEN pg_notify($17, '')::text END
         FROM (SELECT EXISTS (SELECT 1 FROM claimed) AS stored) AS outcome"
    )
}

static INGEST_STATEMENTS: LazyLock<[[String; 2]; 2]> = LazyLock::new(|| {
    [false, true].map(|with_events| {
        [false, true].map(|with_deliveries| ingest_statement(with_events, with_deliveries))
    })
});

/// Writes a request, its events and deliveries unless its dedup key is held; returns whether
/// it was written.
async fn insert_request(
    store: &PgStore,
    transaction: &Transaction<'_>,
    write: &IngestWrite,
) -> Result<bool, StoreError> {
    let inbound = &write.inbound;
    let headers =
        serde_json::to_string(&inbound.headers).map_err(|e| StoreError::Database(e.to_string()))?;
    let events = EventArrays::of(&write.events);
    let deliveries = DeliveryArrays::of(&write.deliveries);
    let channel = announced(&write.deliveries).then_some(store.deliveries_channel.as_str());
    let id = inbound.id.to_string();
    let received_at = inbound.received_at.unix_millis();
    let processed_at = (inbound.status == InboundStatus::Processed).then_some(received_at);
    let error_code = inbound.error.as_ref().map(|e| e.code.as_str());
    let error_message = inbound.error.as_ref().map(|e| e.message.as_str());
    let dedup_expires_at = write.dedup_expires_at.unix_millis();
    let body = &inbound.body[..];
    let status = inbound.status.as_str();
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![
        &id,
        &inbound.source,
        &inbound.provider,
        &received_at,
        &status,
        &inbound.provider_event,
        &inbound.provider_event_id,
        &inbound.dedup_key,
        &inbound.verification,
        &inbound.remote_addr,
        &headers,
        &body,
        &error_code,
        &error_message,
        &processed_at,
        &dedup_expires_at,
        &channel,
    ];
    let with_events = !write.events.is_empty();
    let with_deliveries = !write.deliveries.is_empty();
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
    Ok(row.get(0))
}

pub(super) async fn insert_events(
    transaction: &Transaction<'_>,
    inbound_id: InboundId,
    events: &[NewEvent],
) -> Result<(), StoreError> {
    static STATEMENT: LazyLock<String> = LazyLock::new(|| insert_events_sql(1, 2));
    if events.is_empty() {
        return Ok(());
    }
    let statement = transaction
        .prepare_cached(&STATEMENT)
        .await
        .map_err(pg_error)?;
    let inbound_id = inbound_id.to_string();
    let events = EventArrays::of(events);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&inbound_id];
    params.extend(events.params());
    transaction
        .execute(&statement, &params)
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
    static STATEMENT: LazyLock<String> = LazyLock::new(|| insert_deliveries_sql(1, 2, 3));
    if deliveries.is_empty() {
        return Ok(());
    }
    let statement = transaction
        .prepare_cached(&STATEMENT)
        .await
        .map_err(pg_error)?;
    let inbound_id = inbound_id.to_string();
    let now = now.unix_millis();
    let arrays = DeliveryArrays::of(deliveries);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&inbound_id, &now];
    params.extend(arrays.params());
    transaction
        .execute(&statement, &params)
        .await
        .map_err(pg_error)?;
    if announced(deliveries) {
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

    pub(crate) async fn ingest(&self, write: IngestWrite) -> Result<IngestOutcome, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(pg_error)?;
        let inbound = &write.inbound;
        if !insert_request(self, &transaction, &write).await? {
            let original = dedup_holder(&transaction, &inbound.source, &inbound.dedup_key).await?;
            let event_ids = event_ids_of(&transaction, original).await?;
            transaction.commit().await.map_err(pg_error)?;
            return Ok(IngestOutcome::Duplicate {
                inbound_id: original,
                event_ids,
            });
        }
        let concluded =
            apply_facts(self, &transaction, &write.facts, write.concluder.as_deref()).await?;
        transaction.commit().await.map_err(pg_error)?;
        Ok(IngestOutcome::Stored {
            inbound_id: inbound.id,
            event_ids: write.events.iter().map(|e| e.id).collect(),
            concluded,
        })
    }

    pub(crate) async fn reprocess(
        &self,
        id: InboundId,
        outcome: Reprocess,
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
                events,
                deliveries,
                facts,
                concluder,
                dedup_expires_at,
            } => {
                // The key is claimed again even when it is unchanged: it may have expired while
                // the request sat in quarantine and been taken by a later copy of the message.
                let holder =
                    claim_dedup(&transaction, &source, &dedup_key, id, now, dedup_expires_at)
                        .await?;
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
                    if dedup_key != old_key {
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
                    insert_events(&transaction, id, &events).await?;
                    insert_deliveries(self, &transaction, id, &deliveries, now).await?;
                    let concluded =
                        apply_facts(self, &transaction, &facts, concluder.as_deref()).await?;
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
                "DELETE FROM dedup WHERE ctid IN
                   (SELECT ctid FROM dedup WHERE expires_at <= $1 LIMIT $2)",
                &[&now.unix_millis(), &i64::from(batch)],
            )
            .await
            .map_err(pg_error)
    }
}
