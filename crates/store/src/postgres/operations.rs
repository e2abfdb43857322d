//! Operations on PostgreSQL: retention, the activity behind the console's charts, the overview
//! and per-source figures.

use std::collections::HashSet;

use billhook_core::ids::{DeliveryId, EventId, InboundId};
use billhook_core::time::Timestamp;
use deadpool_postgres::GenericClient;

use super::ingest::parse_id;
use super::{PgStore, pg_error};
use crate::StoreError;
use crate::model::*;

/// Every message retention may remove: older than `$1` (an id bound), nothing owed of it, and
/// not quarantined (a quarantined request was acknowledged and never processed, so it is kept
/// until it is reprocessed, however old) nor processed since the cutoff (reprocessed late, its
/// events are new and its dedup key holds again). `$2` is the cutoff in unix milliseconds.
fn prunable() -> String {
    format!("SELECT i.id FROM inbound i WHERE {}", may_go())
}

/// The condition of `prunable` on the message `i`.
fn may_go() -> String {
    format!(
        "i.id < $1 AND i.status <> 'quarantined'
            AND (i.processed_at IS NULL OR i.processed_at < $2) AND NOT {}",
        owed("i.id")
    )
}

/// A condition true while a delivery of the message `inbound_column` names is still owed.
fn owed(inbound_column: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM deliveries d WHERE d.inbound_id = {inbound_column}
            AND d.status IN ({OWED_DELIVERIES}))"
    )
}

/// Whether the event `e`, older than `$1` (an event id bound), is an announcement whose message
/// retention removed before it was made (see `Store::prune_orphaned_events`), with nothing of it
/// still owed to an endpoint. An event's deliveries are found among its message's
/// (`deliveries_by_inbound`).
fn orphaned() -> String {
    format!(
        "e.id < $1 AND NOT EXISTS (SELECT 1 FROM inbound i WHERE i.id = e.inbound_id)
         AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.inbound_id = e.inbound_id
            AND d.event_id = e.id AND d.status IN ({OWED_DELIVERIES}))"
    )
}

fn unsigned(value: i64) -> u64 {
    value.max(0).unsigned_abs()
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl PgStore {
    pub(crate) async fn prune_preview(&self, before: InboundId) -> Result<PruneReport, StoreError> {
        let client = self.client().await?;
        let doomed = prunable();
        let row = client
            .query_one(
                &format!(
                    "WITH doomed AS ({doomed}) SELECT
                        (SELECT count(*) FROM doomed),
                        (SELECT count(*) FROM events WHERE inbound_id IN (SELECT id FROM doomed)),
                        (SELECT count(*) FROM deliveries WHERE inbound_id IN (SELECT id FROM doomed)),
                        (SELECT count(*) FROM attempts WHERE delivery_id IN
                            (SELECT id FROM deliveries WHERE inbound_id IN (SELECT id FROM doomed))),
                        (SELECT COALESCE(sum(length(body)), 0)::BIGINT FROM inbound
                            WHERE id IN (SELECT id FROM doomed))"
                ),
                &[&before.to_string(), &before.created_at().unix_millis()],
            )
            .await
            .map_err(pg_error)?;
        let orphans = client
            .query_one(
                &format!(
                    "WITH orphans AS (SELECT e.id, e.inbound_id FROM events e WHERE {}),
                        theirs AS (SELECT d.id FROM deliveries d JOIN orphans o
                            ON d.inbound_id = o.inbound_id AND d.event_id = o.id)
                     SELECT (SELECT count(*) FROM orphans), (SELECT count(*) FROM theirs),
                        (SELECT count(*) FROM attempts WHERE delivery_id IN (SELECT id FROM theirs))",
                    orphaned()
                ),
                &[&EventId::lower_bound(before.created_at()).to_string()],
            )
            .await
            .map_err(pg_error)?;
        Ok(PruneReport {
            inbound: unsigned(row.get(0)),
            events: unsigned(row.get(1)) + unsigned(orphans.get(0)),
            deliveries: unsigned(row.get(2)) + unsigned(orphans.get(1)),
            attempts: unsigned(row.get(3)) + unsigned(orphans.get(2)),
            payload_bytes: unsigned(row.get(4)),
        })
    }

    /// Removes up to `batch` finished messages older than `before` and past `after`, with their
    /// events, deliveries and attempts, in one transaction.
    pub(crate) async fn prune(
        &self,
        before: InboundId,
        after: Option<InboundId>,
        batch: u32,
    ) -> Result<PruneBatch, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(pg_error)?;
        // SKIP LOCKED: instances pruning at once take different messages.
        let rows = transaction
            .query(
                &format!(
                    "SELECT i.id, length(i.body) FROM inbound i WHERE {} AND i.id > $3
                     ORDER BY i.id LIMIT {batch} FOR UPDATE SKIP LOCKED",
                    may_go()
                ),
                &[
                    &before.to_string(),
                    &before.created_at().unix_millis(),
                    &after.map(|id| id.to_string()).unwrap_or_default(),
                ],
            )
            .await
            .map_err(pg_error)?;
        // The batch stops at its byte budget, one message at least; the rest it locked stays.
        let mut ids: Vec<String> = Vec::with_capacity(rows.len());
        let mut bytes = 0_i64;
        let mut full = fills(rows.len(), batch);
        for row in &rows {
            let length = row.get::<_, Option<i32>>(1).map_or(0, i64::from);
            if !ids.is_empty() && bytes.saturating_add(length) > PRUNE_BATCH_BYTES {
                full = true;
                break;
            }
            bytes = bytes.saturating_add(length);
            ids.push(row.get(0));
        }
        let resume_after = resume_after(&ids, full)?;
        // Their deliveries are locked before anything goes: a recovery (which does not touch
        // the message) that sets one pending again either committed first, and its message
        // stays whole, or waits and finds nothing. Checked only statement by statement, a
        // message could lose its delivered rows and keep the recovered one.
        transaction
            .execute(
                "SELECT 1 FROM deliveries WHERE inbound_id = ANY($1) ORDER BY id FOR UPDATE",
                &[&ids],
            )
            .await
            .map_err(pg_error)?;
        let still_owed: HashSet<String> = transaction
            .query(
                &format!(
                    "SELECT DISTINCT inbound_id FROM deliveries
                     WHERE inbound_id = ANY($1) AND status IN ({OWED_DELIVERIES})"
                ),
                &[&ids],
            )
            .await
            .map_err(pg_error)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let ids: Vec<String> = ids
            .into_iter()
            .filter(|id| !still_owed.contains(id))
            .collect();
        if ids.is_empty() {
            transaction.commit().await.map_err(pg_error)?;
            return Ok(PruneBatch {
                resume_after,
                ..PruneBatch::default()
            });
        }
        let payload_bytes: i64 = transaction
            .query_one(
                "SELECT COALESCE(sum(length(body)), 0)::BIGINT FROM inbound WHERE id = ANY($1)",
                &[&ids],
            )
            .await
            .map_err(pg_error)?
            .get(0);
        // Each statement checks again that nothing is owed: a redelivery requested since the
        // selection keeps its message.
        let finished = format!("status NOT IN ({OWED_DELIVERIES})");
        let attempts = transaction
            .execute(
                &format!(
                    "DELETE FROM attempts WHERE delivery_id IN
                       (SELECT id FROM deliveries WHERE inbound_id = ANY($1) AND {finished})"
                ),
                &[&ids],
            )
            .await
            .map_err(pg_error)?;
        let deliveries = transaction
            .execute(
                &format!("DELETE FROM deliveries WHERE inbound_id = ANY($1) AND {finished}"),
                &[&ids],
            )
            .await
            .map_err(pg_error)?;
        let events = transaction
            .execute(
                &format!(
                    "DELETE FROM events e WHERE e.inbound_id = ANY($1) AND NOT {}",
                    owed("e.inbound_id")
                ),
                &[&ids],
            )
            .await
            .map_err(pg_error)?;
        let inbound = transaction
            .execute(
                &format!(
                    "DELETE FROM inbound i WHERE i.id = ANY($1) AND NOT {}",
                    owed("i.id")
                ),
                &[&ids],
            )
            .await
            .map_err(pg_error)?;
        transaction.commit().await.map_err(pg_error)?;
        Ok(PruneBatch {
            removed: PruneReport {
                inbound,
                events,
                deliveries,
                attempts,
                payload_bytes: unsigned(payload_bytes),
            },
            resume_after,
        })
    }

    /// Removes up to `batch` announcements older than `before` and past `after` whose message
    /// is gone, with their finished deliveries and attempts, in one transaction.
    pub(crate) async fn prune_orphaned_events(
        &self,
        before: EventId,
        after: Option<EventId>,
        batch: u32,
    ) -> Result<PruneBatch<EventId>, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(pg_error)?;
        let bound = before.to_string();
        let (events, messages): (Vec<String>, Vec<String>) = transaction
            .query(
                &format!(
                    "SELECT e.id, e.inbound_id FROM events e WHERE {} AND e.id > $2
                     ORDER BY e.id LIMIT {batch} FOR UPDATE SKIP LOCKED",
                    orphaned()
                ),
                &[&bound, &after.map(|id| id.to_string()).unwrap_or_default()],
            )
            .await
            .map_err(pg_error)?
            .iter()
            .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)))
            .unzip();
        let resume_after = resume_after(&events, fills(events.len(), batch))?;
        if events.is_empty() {
            transaction.commit().await.map_err(pg_error)?;
            return Ok(PruneBatch::default());
        }
        // As for messages: their deliveries are locked first, and each statement checks again
        // that nothing is owed, so a redelivery requested meanwhile keeps its event whole.
        let theirs = "SELECT d.id FROM deliveries d
            WHERE d.inbound_id = ANY($2) AND d.event_id = ANY($1)";
        transaction
            .execute(
                &format!("{theirs} ORDER BY d.id FOR UPDATE"),
                &[&events, &messages],
            )
            .await
            .map_err(pg_error)?;
        let finished = format!("d.status NOT IN ({OWED_DELIVERIES})");
        let still_orphaned = format!(
            "e.id = ANY($1) AND NOT EXISTS (SELECT 1 FROM inbound i WHERE i.id = e.inbound_id)
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.inbound_id = e.inbound_id
                AND d.event_id = e.id AND d.status IN ({OWED_DELIVERIES}))"
        );
        // The finished deliveries of the events still orphaned.
        let doomed = format!(
            "{theirs} AND {finished}
                AND d.event_id IN (SELECT e.id FROM events e WHERE {still_orphaned})"
        );
        let attempts = transaction
            .execute(
                &format!("DELETE FROM attempts WHERE delivery_id IN ({doomed})"),
                &[&events, &messages],
            )
            .await
            .map_err(pg_error)?;
        let deliveries = transaction
            .execute(
                &format!("DELETE FROM deliveries WHERE id IN ({doomed})"),
                &[&events, &messages],
            )
            .await
            .map_err(pg_error)?;
        let removed_events = transaction
            .execute(
                &format!("DELETE FROM events e WHERE {still_orphaned}"),
                &[&events],
            )
            .await
            .map_err(pg_error)?;
        transaction.commit().await.map_err(pg_error)?;
        Ok(PruneBatch {
            removed: PruneReport {
                events: removed_events,
                deliveries,
                attempts,
                ..PruneReport::default()
            },
            resume_after,
        })
    }

    pub(crate) async fn record_activity(
        &self,
        instance: String,
        minute: i64,
        counts: ActivityCounts,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO activity (minute, instance, ingested, duplicates, quarantined,
                    unverified, delivered, failed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (minute, instance) DO UPDATE SET
                    ingested = activity.ingested + excluded.ingested,
                    duplicates = activity.duplicates + excluded.duplicates,
                    quarantined = activity.quarantined + excluded.quarantined,
                    unverified = activity.unverified + excluded.unverified,
                    delivered = activity.delivered + excluded.delivered,
                    failed = activity.failed + excluded.failed",
                &[
                    &minute,
                    &instance,
                    &signed(counts.ingested),
                    &signed(counts.duplicates),
                    &signed(counts.quarantined),
                    &signed(counts.unverified),
                    &signed(counts.delivered),
                    &signed(counts.failed),
                ],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    pub(crate) async fn activity(
        &self,
        since_minute: i64,
    ) -> Result<Vec<ActivityMinute>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT minute, sum(ingested)::BIGINT, sum(duplicates)::BIGINT,
                    sum(quarantined)::BIGINT, sum(unverified)::BIGINT, sum(delivered)::BIGINT,
                    sum(failed)::BIGINT
                 FROM activity WHERE minute >= $1 GROUP BY minute ORDER BY minute",
                &[&since_minute],
            )
            .await
            .map_err(pg_error)?;
        Ok(rows
            .iter()
            .map(|row| ActivityMinute {
                minute: row.get(0),
                counts: ActivityCounts {
                    ingested: unsigned(row.get(1)),
                    duplicates: unsigned(row.get(2)),
                    quarantined: unsigned(row.get(3)),
                    unverified: unsigned(row.get(4)),
                    delivered: unsigned(row.get(5)),
                    failed: unsigned(row.get(6)),
                },
            })
            .collect())
    }

    pub(crate) async fn prune_activity(&self, before_minute: i64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM activity WHERE minute < $1", &[&before_minute])
            .await
            .map_err(pg_error)
    }

    pub(crate) async fn overview(&self) -> Result<Overview, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT
                    (SELECT count(*) FROM deliveries WHERE status IN ('pending', 'failed')),
                    -- Taken from the owed rows themselves (OFFSET 0 keeps the planner from
                    -- walking the primary key up from the oldest delivery instead: owed rows
                    -- are the newest, and that walk would read most of the table).
                    (SELECT min(id) FROM
                        (SELECT id FROM deliveries WHERE status IN ('pending', 'failed') OFFSET 0) owed),
                    (SELECT count(*) FROM endpoints WHERE deleted_at IS NULL AND NOT enabled),
                    (SELECT count(*) FROM endpoints
                        WHERE deleted_at IS NULL AND enabled AND failing_since IS NOT NULL),
                    (SELECT count(*) FROM inbound WHERE status = 'quarantined')",
                &[],
            )
            .await
            .map_err(pg_error)?;
        let oldest: Option<String> = row.get(1);
        Ok(Overview {
            pending_deliveries: unsigned(row.get(0)),
            oldest_pending: oldest
                .as_deref()
                .map(parse_id::<DeliveryId>)
                .transpose()?
                .map(|id| id.created_at()),
            disabled_endpoints: unsigned(row.get(2)),
            failing_endpoints: unsigned(row.get(3)),
            quarantined: unsigned(row.get(4)),
        })
    }

    pub(crate) async fn source_stats(
        &self,
        sources: Vec<String>,
        since: Timestamp,
    ) -> Result<Vec<SourceStats>, StoreError> {
        let client = self.client().await?;
        let since = InboundId::lower_bound(since).to_string();
        let mut stats = Vec::with_capacity(sources.len());
        for source in sources {
            let last = client
                .query_opt(
                    "SELECT id, received_at FROM inbound WHERE source = $1 ORDER BY id DESC LIMIT 1",
                    &[&source],
                )
                .await
                .map_err(pg_error)?;
            let counts = client
                .query_one(
                    "SELECT
                        (SELECT count(*) FROM inbound WHERE source = $1 AND id >= $2),
                        (SELECT count(*) FROM inbound WHERE status = 'quarantined' AND source = $1)",
                    &[&source, &since],
                )
                .await
                .map_err(pg_error)?;
            stats.push(SourceStats {
                last_inbound: last
                    .as_ref()
                    .map(|row| parse_id(row.get::<_, &str>(0)))
                    .transpose()?,
                last_received_at: last.map(|row| Timestamp::from_unix_millis(row.get(1))),
                source,
                received_since: unsigned(counts.get(0)),
                quarantined: unsigned(counts.get(1)),
            });
        }
        Ok(stats)
    }
}
