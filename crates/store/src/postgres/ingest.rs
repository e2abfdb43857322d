//! Writes on PostgreSQL: ingests, reprocessing and dedup pruning.

use billhook_core::ids::{EventId, InboundId};
use billhook_core::time::Timestamp;
use deadpool_postgres::GenericClient;
use deadpool_postgres::Transaction;

use super::ledger::apply_facts;
use super::{PgStore, pg_error};
use crate::StoreError;
use crate::model::*;

pub(crate) fn parse_id<T: std::str::FromStr>(text: &str) -> Result<T, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("`{text}` is not a valid id")))
}

/// Takes the dedup key for `inbound_id` unless another live request holds it; returns the holder.
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
               WHERE dedup.expires_at <= $5
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
    let row = transaction
        .query_one(
            "SELECT inbound_id FROM dedup WHERE source = $1 AND key = $2",
            &[&source, &key],
        )
        .await
        .map_err(pg_error)?;
    parse_id(row.get::<_, &str>(0)).map(Some)
}

async fn insert_inbound(
    transaction: &Transaction<'_>,
    inbound: &NewInbound,
) -> Result<(), StoreError> {
    let headers =
        serde_json::to_string(&inbound.headers).map_err(|e| StoreError::Database(e.to_string()))?;
    let statement = transaction
        .prepare_cached(
            "INSERT INTO inbound (id, source, provider, received_at, status, provider_event,
                provider_event_id, dedup_key, verification, remote_addr, headers, body,
                error_code, error_message, processed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .await
        .map_err(pg_error)?;
    transaction
        .execute(
            &statement,
            &[
                &inbound.id.to_string(),
                &inbound.source,
                &inbound.provider,
                &inbound.received_at.unix_millis(),
                &inbound.status.as_str(),
                &inbound.provider_event,
                &inbound.provider_event_id,
                &inbound.dedup_key,
                &inbound.verification,
                &inbound.remote_addr,
                &headers,
                &&inbound.body[..],
                &inbound.error.as_ref().map(|e| e.code.as_str()),
                &inbound.error.as_ref().map(|e| e.message.as_str()),
                &(inbound.status == InboundStatus::Processed)
                    .then(|| inbound.received_at.unix_millis()),
            ],
        )
        .await
        .map_err(pg_error)?;
    Ok(())
}

pub(super) async fn insert_events(
    transaction: &Transaction<'_>,
    inbound_id: InboundId,
    events: &[NewEvent],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let statement = transaction
        .prepare_cached(
            "INSERT INTO events (id, type, source, subject_kind, subject_id, inbound_id,
                occurred_at, received_at, payload)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .await
        .map_err(pg_error)?;
    let inbound_id = inbound_id.to_string();
    for event in events {
        transaction
            .execute(
                &statement,
                &[
                    &event.id.to_string(),
                    &event.event_type,
                    &event.source,
                    &event.subject_kind,
                    &event.subject_id,
                    &inbound_id,
                    &event.occurred_at.unix_millis(),
                    &event.received_at.unix_millis(),
                    &&event.payload[..],
                ],
            )
            .await
            .map_err(pg_error)?;
    }
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
    if deliveries.is_empty() {
        return Ok(());
    }
    let statement = transaction
        .prepare_cached(
            "INSERT INTO deliveries (id, endpoint_id, message_id, event_id, inbound_id, event_type,
                status, next_attempt_at, lease_owner, lease_until, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)",
        )
        .await
        .map_err(pg_error)?;
    let inbound_id = inbound_id.to_string();
    for delivery in deliveries {
        transaction
            .execute(
                &statement,
                &[
                    &delivery.id.to_string(),
                    &delivery.endpoint_id.to_string(),
                    &delivery.message_id,
                    &delivery.event_id.map(|e| e.to_string()),
                    &inbound_id,
                    &delivery.event_type,
                    &delivery.status.as_str(),
                    &delivery.next_attempt_at.unix_millis(),
                    &delivery.lease.as_ref().map(|l| l.owner.as_str()),
                    &delivery.lease.as_ref().map(|l| l.until.unix_millis()),
                    &now.unix_millis(),
                ],
            )
            .await
            .map_err(pg_error)?;
    }
    if deliveries
        .iter()
        .any(|d| d.lease.is_none() && d.status == DeliveryStatus::Pending)
    {
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

impl PgStore {
    pub(super) async fn notify_deliveries<C: GenericClient>(
        &self,
        client: &C,
    ) -> Result<(), StoreError> {
        client
            .execute("SELECT pg_notify($1, '')", &[&self.deliveries_channel])
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    pub(super) async fn notify_endpoints<C: GenericClient>(
        &self,
        client: &C,
    ) -> Result<(), StoreError> {
        client
            .execute("SELECT pg_notify($1, '')", &[&self.endpoints_channel])
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    pub(crate) async fn ingest(&self, write: IngestWrite) -> Result<IngestOutcome, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(pg_error)?;
        let inbound = &write.inbound;
        if let Some(original) = claim_dedup(
            &transaction,
            &inbound.source,
            &inbound.dedup_key,
            inbound.id,
            inbound.received_at,
            write.dedup_expires_at,
        )
        .await?
        {
            let event_ids = event_ids_of(&transaction, original).await?;
            transaction.commit().await.map_err(pg_error)?;
            return Ok(IngestOutcome::Duplicate {
                inbound_id: original,
                event_ids,
            });
        }
        insert_inbound(&transaction, inbound).await?;
        insert_events(&transaction, inbound.id, &write.events).await?;
        insert_deliveries(
            self,
            &transaction,
            inbound.id,
            &write.deliveries,
            inbound.received_at,
        )
        .await?;
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
                let holder = if dedup_key == old_key {
                    None
                } else {
                    claim_dedup(&transaction, &source, &dedup_key, id, now, dedup_expires_at)
                        .await?
                };
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
