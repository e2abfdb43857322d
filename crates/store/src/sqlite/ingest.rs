//! Writes on SQLite: ingests, reprocessing and dedup pruning.

use billhook_core::ids::{EventId, InboundId};
use billhook_core::time::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};

use super::delivery::insert_deliveries;
use super::ledger::apply_facts;
use super::{SqliteStore, db_error};
use crate::StoreError;
use crate::model::*;

impl SqliteStore {
    pub(crate) async fn ingest(&self, write: IngestWrite) -> Result<IngestOutcome, StoreError> {
        self.write(move |connection| ingest(connection, &write))
            .await
    }

    pub(crate) async fn reprocess(
        &self,
        id: InboundId,
        outcome: Reprocess,
    ) -> Result<ReprocessOutcome, StoreError> {
        self.write(move |connection| reprocess(connection, id, &outcome))
            .await
    }

    pub(crate) async fn prune_dedup(&self, now: Timestamp, batch: u32) -> Result<u64, StoreError> {
        self.write(move |connection| {
            connection
                .prepare_cached(
                    "DELETE FROM dedup WHERE (source, key) IN
                       (SELECT source, key FROM dedup WHERE expires_at <= ?1 LIMIT ?2)",
                )
                .and_then(|mut statement| statement.execute(params![now.unix_millis(), batch]))
                .map(|deleted| deleted as u64)
                .map_err(db_error)
        })
        .await
    }
}

/// Whether a request may take a dedup key it already holds.
#[derive(Clone, Copy)]
enum OwnClaim {
    /// A new request's id holding the key means this very request was stored already.
    Held,
    /// A reprocessed request takes its key again (and renews it).
    Renewed,
}

/// Takes the dedup key for `inbound_id` unless another live request holds it (or, per `own`,
/// this one); returns the holder.
fn claim_dedup(
    connection: &Connection,
    source: &str,
    key: &str,
    inbound_id: InboundId,
    now: Timestamp,
    expires_at: Timestamp,
    own: OwnClaim,
) -> Result<Option<InboundId>, StoreError> {
    let claimed = connection
        .prepare_cached(match own {
            OwnClaim::Held => {
                "INSERT INTO dedup (source, key, inbound_id, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (source, key) DO UPDATE
                   SET inbound_id = excluded.inbound_id, expires_at = excluded.expires_at
                   WHERE dedup.expires_at <= ?5"
            }
            OwnClaim::Renewed => {
                "INSERT INTO dedup (source, key, inbound_id, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (source, key) DO UPDATE
                   SET inbound_id = excluded.inbound_id, expires_at = excluded.expires_at
                   WHERE dedup.expires_at <= ?5 OR dedup.inbound_id = excluded.inbound_id"
            }
        })
        .and_then(|mut statement| {
            statement.execute(params![
                source,
                key,
                inbound_id.to_string(),
                expires_at.unix_millis(),
                now.unix_millis()
            ])
        })
        .map_err(db_error)?;
    if claimed == 1 {
        return Ok(None);
    }
    let holder: String = connection
        .prepare_cached("SELECT inbound_id FROM dedup WHERE source = ?1 AND key = ?2")
        .and_then(|mut statement| statement.query_row(params![source, key], |row| row.get(0)))
        .map_err(db_error)?;
    parse_id(&holder).map(Some)
}

/// Takes every key in `keys` for `inbound_id`, or none: at the first key another request holds,
/// the keys this call took are given up again, and that holder is returned.
fn claim_all(
    connection: &Connection,
    source: &str,
    keys: &[&str],
    inbound_id: InboundId,
    now: Timestamp,
    expires_at: Timestamp,
    own: OwnClaim,
) -> Result<Option<InboundId>, StoreError> {
    for (index, key) in keys.iter().enumerate() {
        let Some(holder) = claim_dedup(connection, source, key, inbound_id, now, expires_at, own)?
        else {
            continue;
        };
        for taken in &keys[..index] {
            release_claim(connection, source, taken, inbound_id)?;
        }
        return Ok(Some(holder));
    }
    Ok(None)
}

/// Gives up a dedup key, if `inbound_id` holds it.
fn release_claim(
    connection: &Connection,
    source: &str,
    key: &str,
    inbound_id: InboundId,
) -> Result<(), StoreError> {
    connection
        .prepare_cached("DELETE FROM dedup WHERE source = ?1 AND key = ?2 AND inbound_id = ?3")
        .and_then(|mut statement| statement.execute(params![source, key, inbound_id.to_string()]))
        .map_err(db_error)?;
    Ok(())
}

fn ingest(connection: &Connection, write: &IngestWrite) -> Result<IngestOutcome, StoreError> {
    let inbound = &write.inbound;
    let keys: Vec<&str> = inbound.dedup_keys().collect();
    if let Some(original) = claim_all(
        connection,
        &inbound.source,
        &keys,
        inbound.id,
        inbound.received_at,
        write.dedup_expires_at,
        OwnClaim::Held,
    )? {
        return Ok(IngestOutcome::Duplicate {
            inbound_id: original,
            event_ids: event_ids_of(connection, original)?,
        });
    }
    insert_inbound(connection, inbound)?;
    // The ledger first: the events are stored naming the entities it filed them under.
    let (concluded, entities) = apply_facts(connection, &write.facts, write.concluder.as_deref())?;
    insert_events(connection, inbound.id, &write.events, &entities)?;
    insert_deliveries(
        connection,
        inbound.id,
        &write.deliveries,
        inbound.received_at,
    )?;
    Ok(IngestOutcome::Stored {
        inbound_id: inbound.id,
        event_ids: write.events.iter().map(|e| e.id).collect(),
        concluded,
    })
}

fn insert_inbound(connection: &Connection, inbound: &NewInbound) -> Result<(), StoreError> {
    let headers =
        serde_json::to_string(&inbound.headers).map_err(|e| StoreError::Database(e.to_string()))?;
    connection
        .prepare_cached(
            "INSERT INTO inbound (id, source, provider, received_at, status, provider_event,
                provider_event_id, dedup_key, verification, remote_addr, headers, body,
                error_code, error_message, processed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                inbound.id.to_string(),
                inbound.source,
                inbound.provider,
                inbound.received_at.unix_millis(),
                inbound.status.as_str(),
                inbound.provider_event,
                inbound.provider_event_id,
                inbound.dedup_key,
                inbound.verification,
                inbound.remote_addr,
                headers,
                &inbound.body[..],
                inbound.error.as_ref().map(|e| &e.code),
                inbound.error.as_ref().map(|e| &e.message),
                (inbound.status == InboundStatus::Processed)
                    .then(|| inbound.received_at.unix_millis()),
            ])
        })
        .map_err(db_error)?;
    Ok(())
}

/// The ledger entity each event is about, when the ledger keeps its subject. Stored with the
/// event, it is how a listing by subject finds the event (migration 9). An ingest has a fact
/// or two, so a list searched in order is all it needs.
#[derive(Default)]
pub(super) struct EventEntities(Vec<FiledUnder>);

struct FiledUnder {
    event: EventId,
    entity_id: String,
    provider_id: String,
}

impl EventEntities {
    pub(super) fn add(&mut self, event: EventId, entity_id: String, provider_id: String) {
        self.0.push(FiledUnder {
            event,
            entity_id,
            provider_id,
        });
    }

    /// Only for an event whose subject is the entity's provider id, the one a listing by
    /// subject looks the entity up by; any other event keeps the index on its subject.
    fn of(&self, event: &NewEvent) -> Option<&str> {
        self.0
            .iter()
            .find(|filed| filed.event == event.id && filed.provider_id == event.subject_id)
            .map(|filed| filed.entity_id.as_str())
    }
}

const INSERT_EVENT: &str = "INSERT INTO events (id, type, source, subject_kind, subject_id,
        inbound_id, occurred_at, received_at, payload)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

const INSERT_FILED_EVENT: &str = "INSERT INTO events (id, type, source, subject_kind, subject_id,
        inbound_id, occurred_at, received_at, payload, entity_id)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

pub(super) fn insert_events(
    connection: &Connection,
    inbound_id: InboundId,
    events: &[NewEvent],
    entities: &EventEntities,
) -> Result<(), StoreError> {
    let inbound_id = inbound_id.to_string();
    for event in events {
        let id = event.id.to_string();
        let occurred_at = event.occurred_at.unix_millis();
        let received_at = event.received_at.unix_millis();
        let payload = &event.payload[..];
        let entity_id = entities.of(event);
        let values: [&dyn rusqlite::ToSql; 10] = [
            &id,
            &event.event_type,
            &event.source,
            &event.subject_kind,
            &event.subject_id,
            &inbound_id,
            &occurred_at,
            &received_at,
            &payload,
            &entity_id,
        ];
        // An event the ledger does not file is stored as it was before migration 9.
        let (sql, bound) = match entity_id {
            Some(_) => (INSERT_FILED_EVENT, &values[..]),
            None => (INSERT_EVENT, &values[..9]),
        };
        connection
            .prepare_cached(sql)
            .and_then(|mut statement| statement.execute(bound))
            .map_err(db_error)?;
    }
    Ok(())
}

pub(super) fn event_ids_of(
    connection: &Connection,
    inbound_id: InboundId,
) -> Result<Vec<EventId>, StoreError> {
    let mut statement = connection
        .prepare_cached(&format!(
            "SELECT id FROM events WHERE inbound_id = ?1 AND type NOT IN ({}) ORDER BY id",
            conclusion_types_sql()
        ))
        .map_err(db_error)?;
    let ids = statement
        .query_map([inbound_id.to_string()], |row| row.get::<_, String>(0))
        .map_err(db_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_error)?;
    ids.iter().map(|id| parse_id(id)).collect()
}

fn reprocess(
    connection: &Connection,
    id: InboundId,
    outcome: &Reprocess,
) -> Result<ReprocessOutcome, StoreError> {
    let current: Option<(String, String, String)> = connection
        .prepare_cached("SELECT status, source, dedup_key FROM inbound WHERE id = ?1")
        .and_then(|mut statement| {
            statement
                .query_row([id.to_string()], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()
        })
        .map_err(db_error)?;
    let Some((status, source, old_key)) = current else {
        return Ok(ReprocessOutcome::NotQuarantined);
    };
    if status != InboundStatus::Quarantined.as_str() {
        return Ok(ReprocessOutcome::NotQuarantined);
    }
    let now = Timestamp::now();
    match outcome {
        Reprocess::StillFailing(error) => {
            connection
                .prepare_cached(
                    "UPDATE inbound SET error_code = ?2, error_message = ?3 WHERE id = ?1",
                )
                .and_then(|mut statement| {
                    statement.execute(params![id.to_string(), error.code, error.message])
                })
                .map_err(db_error)?;
            Ok(ReprocessOutcome::StillQuarantined)
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
            if let Some(holder) = claim_all(
                connection,
                &source,
                &keys,
                id,
                now,
                *dedup_expires_at,
                OwnClaim::Renewed,
            )? {
                connection
                    .prepare_cached(
                        "UPDATE inbound SET status = 'duplicate', duplicate_of = ?2,
                                provider_event = ?3, provider_event_id = ?4, processed_at = ?5
                             WHERE id = ?1",
                    )
                    .and_then(|mut statement| {
                        statement.execute(params![
                            id.to_string(),
                            holder.to_string(),
                            provider_event,
                            provider_event_id,
                            now.unix_millis()
                        ])
                    })
                    .map_err(db_error)?;
                return Ok(ReprocessOutcome::DuplicateOf(holder));
            }
            // The old key goes unless it is one of the new (a body's hash stays one).
            if !keys.contains(&old_key.as_str()) {
                release_claim(connection, &source, &old_key, id)?;
            }
            connection
                .prepare_cached(
                    "UPDATE inbound SET status = 'processed', provider_event = ?2,
                        provider_event_id = ?3, dedup_key = ?4, error_code = NULL,
                        error_message = NULL, processed_at = ?5
                     WHERE id = ?1",
                )
                .and_then(|mut statement| {
                    statement.execute(params![
                        id.to_string(),
                        provider_event,
                        provider_event_id,
                        dedup_key,
                        now.unix_millis()
                    ])
                })
                .map_err(db_error)?;
            let (concluded, entities) = apply_facts(connection, facts, concluder.as_deref())?;
            insert_events(connection, id, events, &entities)?;
            insert_deliveries(connection, id, deliveries, now)?;
            Ok(ReprocessOutcome::Processed {
                event_ids: events.iter().map(|e| e.id).collect(),
                concluded,
            })
        }
    }
}

pub(super) use crate::model::parse_id;
