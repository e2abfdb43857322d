//! Operations on SQLite: retention, the activity behind the console's charts, the overview
//! and per-source figures.

use billhook_core::ids::{DeliveryId, EventId, InboundId};
use billhook_core::time::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};

use super::ingest::parse_id;
use super::{SqliteStore, db_error};
use crate::StoreError;
use crate::model::*;

/// Whether retention may remove the message `i`, older than the cutoff: nothing is owed of it,
/// and it is not quarantined (a quarantined request was acknowledged and never processed, so it
/// is kept until it is reprocessed, however old) nor processed since the cutoff (reprocessed
/// late, its events are new and its dedup key holds again). `?2` is the cutoff in unix
/// milliseconds.
fn may_go() -> String {
    format!(
        "i.status <> 'quarantined' AND (i.processed_at IS NULL OR i.processed_at < ?2)
         AND NOT EXISTS (SELECT 1 FROM deliveries d
            WHERE d.inbound_id = i.id AND d.status IN ({OWED_DELIVERIES}))"
    )
}

/// Every message retention may remove: older than `?1` (an id bound).
fn prunable() -> String {
    format!(
        "SELECT i.id FROM inbound i WHERE i.id < ?1 AND {}",
        may_go()
    )
}

/// Whether the event `e`, older than `?1` (an event id bound), is an announcement whose message
/// retention removed before it was made (see `Store::prune_orphaned_events`), with nothing of it
/// still owed to an endpoint. An event's deliveries are found among its message's
/// (`deliveries_by_inbound`).
fn orphaned() -> String {
    format!(
        "e.id < ?1 AND NOT EXISTS (SELECT 1 FROM inbound i WHERE i.id = e.inbound_id)
         AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.inbound_id = e.inbound_id
            AND d.event_id = e.id AND d.status IN ({OWED_DELIVERIES}))"
    )
}

fn count(connection: &Connection, sql: &str, before: InboundId) -> Result<u64, StoreError> {
    connection
        .query_row(
            sql,
            params![before.to_string(), before.created_at().unix_millis()],
            |row| row.get::<_, i64>(0),
        )
        .map(unsigned)
        .map_err(db_error)
}

fn unsigned(value: i64) -> u64 {
    value.max(0).unsigned_abs()
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// What retention would remove now: every finished message older than `before`.
    pub(crate) async fn prune_preview(&self, before: InboundId) -> Result<PruneReport, StoreError> {
        self.read(move |connection| {
            let doomed = prunable();
            let mut report = PruneReport {
                inbound: count(
                    connection,
                    &format!("SELECT count(*) FROM ({doomed})"),
                    before,
                )?,
                events: count(
                    connection,
                    &format!("SELECT count(*) FROM events WHERE inbound_id IN ({doomed})"),
                    before,
                )?,
                deliveries: count(
                    connection,
                    &format!("SELECT count(*) FROM deliveries WHERE inbound_id IN ({doomed})"),
                    before,
                )?,
                attempts: count(
                    connection,
                    &format!(
                        "SELECT count(*) FROM attempts WHERE delivery_id IN
                           (SELECT id FROM deliveries WHERE inbound_id IN ({doomed}))"
                    ),
                    before,
                )?,
                payload_bytes: count(
                    connection,
                    &format!(
                        "SELECT COALESCE(sum(length(body)), 0) FROM inbound WHERE id IN ({doomed})"
                    ),
                    before,
                )?,
            };
            let orphaned = orphaned();
            let bound = EventId::lower_bound(before.created_at()).to_string();
            let count_orphans = |sql: &str| {
                connection
                    .query_row(sql, params![bound], |row| row.get::<_, i64>(0))
                    .map(unsigned)
                    .map_err(db_error)
            };
            report.add(PruneReport {
                events: count_orphans(&format!("SELECT count(*) FROM events e WHERE {orphaned}"))?,
                deliveries: count_orphans(&format!(
                    "SELECT count(*) FROM events e JOIN deliveries d
                       ON d.inbound_id = e.inbound_id AND d.event_id = e.id WHERE {orphaned}"
                ))?,
                attempts: count_orphans(&format!(
                    "SELECT count(*) FROM events e JOIN deliveries d
                       ON d.inbound_id = e.inbound_id AND d.event_id = e.id
                     JOIN attempts a ON a.delivery_id = d.id WHERE {orphaned}"
                ))?,
                ..PruneReport::default()
            });
            Ok(report)
        })
        .await
    }

    /// Removes up to `batch` finished messages older than `before` and past `after`, with their
    /// events, deliveries and attempts, in one transaction. They are chosen on a reader, so
    /// that walking past the old messages kept never holds up the writer, and checked again
    /// in the writer.
    pub(crate) async fn prune(
        &self,
        before: InboundId,
        after: Option<InboundId>,
        batch: u32,
    ) -> Result<PruneBatch, StoreError> {
        let cutoff_ms = before.created_at().unix_millis();
        // The writer reads each body it removes (its columns after the body lie past it, and
        // freeing it walks its pages): a batch of large bodies would hold every ingest behind
        // it, so a batch also stops at PRUNE_BATCH_BYTES, taking one message at least. Rows are
        // stepped one by one and no further than the budget: each one stepped walks its body
        // here too, to reach the columns the choice reads.
        let (chosen, full): (Vec<String>, bool) = self
            .read(move |connection| {
                let sql = format!(
                    "SELECT i.id, length(i.body) FROM inbound i
                     WHERE i.id < ?1 AND i.id > ?3 AND {} ORDER BY i.id LIMIT {batch}",
                    may_go()
                );
                let mut statement = connection.prepare_cached(&sql).map_err(db_error)?;
                let mut rows = statement
                    .query(params![
                        before.to_string(),
                        cutoff_ms,
                        after.map(|id| id.to_string()).unwrap_or_default()
                    ])
                    .map_err(db_error)?;
                let mut chosen = Vec::new();
                let mut bytes = 0_i64;
                while let Some(row) = rows.next().map_err(db_error)? {
                    let length = row.get::<_, Option<i64>>(1).map_err(db_error)?.unwrap_or(0);
                    if !chosen.is_empty() && bytes.saturating_add(length) > PRUNE_BATCH_BYTES {
                        return Ok((chosen, true));
                    }
                    bytes = bytes.saturating_add(length);
                    chosen.push(row.get(0).map_err(db_error)?);
                }
                let full = fills(chosen.len(), batch);
                Ok((chosen, full))
            })
            .await?;
        let resume_after = resume_after(&chosen, full)?;
        if chosen.is_empty() {
            return Ok(PruneBatch::default());
        }
        let removed = self.write(move |connection| {
            connection
                .execute_batch("CREATE TEMP TABLE IF NOT EXISTS doomed (id TEXT PRIMARY KEY); DELETE FROM doomed;")
                .map_err(db_error)?;
            // A redelivery or a reprocess since the choice keeps its message.
            let mut still_prunable = connection
                .prepare_cached(&format!(
                    "INSERT INTO doomed SELECT i.id FROM inbound i WHERE i.id = ?1 AND {}",
                    may_go()
                ))
                .map_err(db_error)?;
            for id in &chosen {
                still_prunable.execute(params![id, cutoff_ms]).map_err(db_error)?;
            }
            let payload_bytes = connection
                .query_row(
                    "SELECT COALESCE(sum(length(body)), 0) FROM inbound WHERE id IN (SELECT id FROM doomed)",
                    [],
                    |row| row.get::<_, i64>(0),
                )
                .map_err(db_error)?;
            let delete = |sql: &str| connection.execute(sql, []).map(|n| n as u64).map_err(db_error);
            let report = PruneReport {
                attempts: delete(
                    "DELETE FROM attempts WHERE delivery_id IN
                       (SELECT id FROM deliveries WHERE inbound_id IN (SELECT id FROM doomed))",
                )?,
                deliveries: delete("DELETE FROM deliveries WHERE inbound_id IN (SELECT id FROM doomed)")?,
                events: delete("DELETE FROM events WHERE inbound_id IN (SELECT id FROM doomed)")?,
                inbound: delete("DELETE FROM inbound WHERE id IN (SELECT id FROM doomed)")?,
                payload_bytes: payload_bytes.max(0).unsigned_abs(),
            };
            connection.execute("DELETE FROM doomed", []).map_err(db_error)?;
            Ok(report)
        })
        .await?;
        Ok(PruneBatch {
            removed,
            resume_after,
        })
    }

    /// Removes up to `batch` announcements older than `before` and past `after` whose message
    /// is gone, with their finished deliveries and attempts: chosen on a reader, checked again
    /// in the writer, as messages are.
    pub(crate) async fn prune_orphaned_events(
        &self,
        before: EventId,
        after: Option<EventId>,
        batch: u32,
    ) -> Result<PruneBatch<EventId>, StoreError> {
        let bound = before.to_string();
        let chosen: Vec<String> = self
            .read({
                let bound = bound.clone();
                move |connection| {
                    let sql = format!(
                        "SELECT e.id FROM events e WHERE e.id > ?2 AND {} ORDER BY e.id LIMIT {batch}",
                        orphaned()
                    );
                    let mut statement = connection.prepare_cached(&sql).map_err(db_error)?;
                    let rows = statement
                        .query_map(
                            params![bound, after.map(|id| id.to_string()).unwrap_or_default()],
                            |row| row.get(0),
                        )
                        .map_err(db_error)?;
                    rows.collect::<Result<_, _>>().map_err(db_error)
                }
            })
            .await?;
        let resume_after = resume_after(&chosen, fills(chosen.len(), batch))?;
        if chosen.is_empty() {
            return Ok(PruneBatch::default());
        }
        let removed = self.write(move |connection| {
            connection
                .execute_batch(
                    "CREATE TEMP TABLE IF NOT EXISTS doomed_events (id TEXT PRIMARY KEY, inbound_id TEXT NOT NULL);
                     DELETE FROM doomed_events;",
                )
                .map_err(db_error)?;
            // A redelivery since the choice keeps its event.
            let mut still_orphaned = connection
                .prepare_cached(&format!(
                    "INSERT INTO doomed_events SELECT e.id, e.inbound_id FROM events e
                     WHERE e.id = ?2 AND {}",
                    orphaned()
                ))
                .map_err(db_error)?;
            for id in &chosen {
                still_orphaned.execute(params![bound, id]).map_err(db_error)?;
            }
            let delete = |sql: &str| connection.execute(sql, []).map(|n| n as u64).map_err(db_error);
            let theirs = "SELECT d.id FROM deliveries d JOIN doomed_events g
                ON d.inbound_id = g.inbound_id AND d.event_id = g.id";
            let report = PruneReport {
                attempts: delete(&format!(
                    "DELETE FROM attempts WHERE delivery_id IN ({theirs})"
                ))?,
                deliveries: delete(&format!("DELETE FROM deliveries WHERE id IN ({theirs})"))?,
                events: delete("DELETE FROM events WHERE id IN (SELECT id FROM doomed_events)")?,
                ..PruneReport::default()
            };
            connection.execute("DELETE FROM doomed_events", []).map_err(db_error)?;
            Ok(report)
        })
        .await?;
        Ok(PruneBatch {
            removed,
            resume_after,
        })
    }

    /// Adds an instance's counts to a minute.
    pub(crate) async fn record_activity(
        &self,
        instance: String,
        minute: i64,
        counts: ActivityCounts,
    ) -> Result<(), StoreError> {
        self.write(move |connection| {
            connection
                .prepare_cached(
                    "INSERT INTO activity (minute, instance, ingested, duplicates, quarantined,
                        unverified, delivered, failed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (minute, instance) DO UPDATE SET
                        ingested = ingested + excluded.ingested,
                        duplicates = duplicates + excluded.duplicates,
                        quarantined = quarantined + excluded.quarantined,
                        unverified = unverified + excluded.unverified,
                        delivered = delivered + excluded.delivered,
                        failed = failed + excluded.failed",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        minute,
                        instance,
                        signed(counts.ingested),
                        signed(counts.duplicates),
                        signed(counts.quarantined),
                        signed(counts.unverified),
                        signed(counts.delivered),
                        signed(counts.failed)
                    ])
                })
                .map(|_| ())
                .map_err(db_error)
        })
        .await
    }

    /// Every instance's activity per minute since `since_minute`, oldest first.
    pub(crate) async fn activity(
        &self,
        since_minute: i64,
    ) -> Result<Vec<ActivityMinute>, StoreError> {
        self.read(move |connection| {
            let mut statement = connection
                .prepare_cached(
                    "SELECT minute, sum(ingested), sum(duplicates), sum(quarantined),
                        sum(unverified), sum(delivered), sum(failed)
                     FROM activity WHERE minute >= ?1 GROUP BY minute ORDER BY minute",
                )
                .map_err(db_error)?;
            let rows = statement
                .query_map([since_minute], |row| {
                    Ok(ActivityMinute {
                        minute: row.get(0)?,
                        counts: ActivityCounts {
                            ingested: unsigned(row.get(1)?),
                            duplicates: unsigned(row.get(2)?),
                            quarantined: unsigned(row.get(3)?),
                            unverified: unsigned(row.get(4)?),
                            delivered: unsigned(row.get(5)?),
                            failed: unsigned(row.get(6)?),
                        },
                    })
                })
                .map_err(db_error)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_error)?;
            Ok(rows)
        })
        .await
    }

    pub(crate) async fn prune_activity(&self, before_minute: i64) -> Result<u64, StoreError> {
        self.write(move |connection| {
            connection
                .prepare_cached("DELETE FROM activity WHERE minute < ?1")
                .and_then(|mut s| s.execute([before_minute]))
                .map(|n| n as u64)
                .map_err(db_error)
        })
        .await
    }

    /// What needs attention now.
    pub(crate) async fn overview(&self) -> Result<Overview, StoreError> {
        self.read(|connection| {
            let (pending, oldest): (i64, Option<String>) = connection
                .query_row(
                    "SELECT count(*), min(id) FROM deliveries WHERE status IN ('pending', 'failed')",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .map_err(db_error)?;
            let (disabled, failing): (i64, i64) = connection
                .query_row(
                    "SELECT
                        coalesce(sum(CASE WHEN enabled = 0 THEN 1 ELSE 0 END), 0),
                        coalesce(sum(CASE WHEN enabled = 1 AND failing_since IS NOT NULL THEN 1 ELSE 0 END), 0)
                     FROM endpoints WHERE deleted_at IS NULL",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .map_err(db_error)?;
            let quarantined: i64 = connection
                .query_row("SELECT count(*) FROM inbound WHERE status = 'quarantined'", [], |row| row.get(0))
                .map_err(db_error)?;
            Ok(Overview {
                pending_deliveries: unsigned(pending),
                oldest_pending: oldest
                    .as_deref()
                    .map(parse_id::<DeliveryId>)
                    .transpose()?
                    .map(|id| id.created_at()),
                disabled_endpoints: unsigned(disabled),
                failing_endpoints: unsigned(failing),
                quarantined: unsigned(quarantined),
            })
        })
        .await
    }

    /// Per source: its latest message, how many arrived since `since`, how many wait in
    /// quarantine.
    pub(crate) async fn source_stats(
        &self,
        sources: Vec<String>,
        since: Timestamp,
    ) -> Result<Vec<SourceStats>, StoreError> {
        self.read(move |connection| {
            let since = InboundId::lower_bound(since).to_string();
            sources
                .into_iter()
                .map(|source| {
                    let last: Option<(String, i64)> = connection
                        .prepare_cached(
                            "SELECT id, received_at FROM inbound WHERE source = ?1 ORDER BY id DESC LIMIT 1",
                        )
                        .and_then(|mut s| s.query_row([&source], |row| Ok((row.get(0)?, row.get(1)?))).optional())
                        .map_err(db_error)?;
                    let recent: i64 = connection
                        .prepare_cached("SELECT count(*) FROM inbound WHERE source = ?1 AND id >= ?2")
                        .and_then(|mut s| s.query_row(params![source, since], |row| row.get(0)))
                        .map_err(db_error)?;
                    let quarantined: i64 = connection
                        .prepare_cached(
                            "SELECT count(*) FROM inbound WHERE status = 'quarantined' AND source = ?1",
                        )
                        .and_then(|mut s| s.query_row([&source], |row| row.get(0)))
                        .map_err(db_error)?;
                    Ok(SourceStats {
                        last_inbound: last.as_ref().map(|(id, _)| parse_id(id)).transpose()?,
                        last_received_at: last.map(|(_, at)| Timestamp::from_unix_millis(at)),
                        source,
                        received_since: unsigned(recent),
                        quarantined: unsigned(quarantined),
                    })
                })
                .collect()
        })
        .await
    }
}
