//! Reads on SQLite: events and stored requests, with cursor pagination (newest first).

use billhook_core::ids::{EventId, InboundId};
use billhook_core::time::Timestamp;
use bytes::Bytes;
use rusqlite::types::Value as SqlValue;
use rusqlite::{OptionalExtension, Row, params_from_iter};

use super::ingest::{event_ids_of, parse_id};
use super::{SqliteStore, db_error};
use crate::StoreError;
use crate::model::*;
use crate::page::{clamp_limit, paginate};

const EVENT_COLUMNS: &str =
    "id, type, source, subject_kind, subject_id, inbound_id, occurred_at, received_at, payload";

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<(String, EventRecordParts)> {
    Ok((
        row.get(0)?,
        EventRecordParts {
            event_type: row.get(1)?,
            source: row.get(2)?,
            subject_kind: row.get(3)?,
            subject_id: row.get(4)?,
            inbound_id: row.get(5)?,
            occurred_at: row.get(6)?,
            received_at: row.get(7)?,
            payload: row.get(8)?,
        },
    ))
}

struct EventRecordParts {
    event_type: String,
    source: String,
    subject_kind: String,
    subject_id: String,
    inbound_id: String,
    occurred_at: i64,
    received_at: i64,
    payload: Vec<u8>,
}

fn to_event((id, parts): (String, EventRecordParts)) -> Result<EventRecord, StoreError> {
    Ok(EventRecord {
        id: parse_id(&id)?,
        event_type: parts.event_type,
        source: parts.source,
        subject_kind: parts.subject_kind,
        subject_id: parts.subject_id,
        inbound_id: parse_id(&parts.inbound_id)?,
        occurred_at: Timestamp::from_unix_millis(parts.occurred_at),
        received_at: Timestamp::from_unix_millis(parts.received_at),
        payload: Bytes::from(parts.payload),
    })
}

/// Builds `WHERE a = ? AND b = ? …` from the filters that are set.
#[derive(Default)]
struct Filters {
    clauses: Vec<&'static str>,
    values: Vec<SqlValue>,
}

impl Filters {
    fn add(&mut self, clause: &'static str, value: Option<SqlValue>) {
        if let Some(value) = value {
            self.clauses.push(clause);
            self.values.push(value);
        }
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.clauses.join(" AND "))
        }
    }
}

impl SqliteStore {
    pub(crate) async fn event(&self, id: EventId) -> Result<Option<EventRecord>, StoreError> {
        self.read(move |connection| {
            connection
                .prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1"))
                .and_then(|mut statement| {
                    statement
                        .query_row([id.to_string()], event_from_row)
                        .optional()
                })
                .map_err(db_error)?
                .map(to_event)
                .transpose()
        })
        .await
    }

    pub(crate) async fn events(&self, query: EventQuery) -> Result<Page<EventRecord>, StoreError> {
        self.read(move |connection| {
            let limit = clamp_limit(query.limit);
            let mut filters = Filters::default();
            filters.add("type = ?", query.event_type.map(SqlValue::Text));
            filters.add("source = ?", query.source.map(SqlValue::Text));
            // An event about an entity the ledger keeps is indexed under that entity, found by
            // the provider's id; any other event under its subject (migration 9).
            filters.add("subject_id = ?", query.subject.clone().map(SqlValue::Text));
            filters.add(
                "(entity_id IN (SELECT id FROM ledger_entities WHERE provider_id = ?)
                  OR entity_id IS NULL)",
                query.subject.map(SqlValue::Text),
            );
            filters.add(
                "id < ?",
                query.before.map(|id| SqlValue::Text(id.to_string())),
            );
            filters.add(
                "id >= ?",
                query.after.map(|id| SqlValue::Text(id.to_string())),
            );
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events {} ORDER BY id DESC LIMIT {}",
                filters.sql(),
                limit + 1
            );
            let mut statement = connection.prepare_cached(&sql).map_err(db_error)?;
            let rows = statement
                .query_map(params_from_iter(filters.values.iter()), event_from_row)
                .map_err(db_error)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_error)?;
            let mut items = rows
                .into_iter()
                .map(to_event)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(paginate(&mut items, limit, |e| e.id.to_string()))
        })
        .await
    }

    pub(crate) async fn inbound(&self, id: InboundId) -> Result<Option<InboundRecord>, StoreError> {
        self.read(move |connection| {
            let row = connection
                .prepare_cached(
                    "SELECT id, source, provider, received_at, status, provider_event,
                        provider_event_id, dedup_key, verification, remote_addr, headers, body,
                        error_code, error_message, duplicate_of
                     FROM inbound WHERE id = ?1",
                )
                .and_then(|mut statement| {
                    statement
                        .query_row([id.to_string()], |row| {
                            Ok((
                                row.get::<_, String>(1)?,
                                row.get::<_, String>(2)?,
                                row.get::<_, i64>(3)?,
                                row.get::<_, String>(4)?,
                                row.get::<_, Option<String>>(5)?,
                                row.get::<_, Option<String>>(6)?,
                                row.get::<_, String>(7)?,
                                row.get::<_, String>(8)?,
                                row.get::<_, Option<String>>(9)?,
                                row.get::<_, String>(10)?,
                                row.get::<_, Option<Vec<u8>>>(11)?,
                                row.get::<_, Option<String>>(12)?,
                                row.get::<_, Option<String>>(13)?,
                                row.get::<_, Option<String>>(14)?,
                            ))
                        })
                        .optional()
                })
                .map_err(db_error)?;
            let Some((
                source,
                provider,
                received_at,
                status,
                provider_event,
                provider_event_id,
                dedup_key,
                verification,
                remote_addr,
                headers,
                body,
                error_code,
                error_message,
                duplicate_of,
            )) = row
            else {
                return Ok(None);
            };
            Ok(Some(InboundRecord {
                id,
                source,
                provider,
                received_at: Timestamp::from_unix_millis(received_at),
                status: parse_status(&status)?,
                provider_event,
                provider_event_id,
                dedup_key,
                verification,
                remote_addr,
                headers: serde_json::from_str(&headers)
                    .map_err(|e| StoreError::Corrupt(format!("stored headers: {e}")))?,
                body: body.map(Bytes::from),
                error: recorded_error(error_code, error_message),
                duplicate_of: duplicate_of.as_deref().map(parse_id).transpose()?,
                event_ids: event_ids_of(connection, id)?,
            }))
        })
        .await
    }

    pub(crate) async fn inbound_list(
        &self,
        query: InboundQuery,
    ) -> Result<Page<InboundSummary>, StoreError> {
        self.read(move |connection| {
            let limit = clamp_limit(query.limit);
            let mut filters = Filters::default();
            filters.add(
                "status = ?",
                query.status.map(|s| SqlValue::Text(s.as_str().to_owned())),
            );
            filters.add("source = ?", query.source.map(SqlValue::Text));
            let (past_cursor, order) = if query.oldest_first {
                ("id > ?", "ASC")
            } else {
                ("id < ?", "DESC")
            };
            filters.add(
                past_cursor,
                query.cursor.map(|id| SqlValue::Text(id.to_string())),
            );
            let sql = format!(
                "SELECT id, source, provider, received_at, status, provider_event,
                    provider_event_id, verification, length(body), error_code, error_message,
                    duplicate_of
                 FROM inbound {} ORDER BY id {order} LIMIT {}",
                filters.sql(),
                limit + 1
            );
            let mut statement = connection.prepare_cached(&sql).map_err(db_error)?;
            let rows = statement
                .query_map(params_from_iter(filters.values.iter()), |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, Option<String>>(5)?,
                        row.get::<_, Option<String>>(6)?,
                        row.get::<_, String>(7)?,
                        row.get::<_, Option<i64>>(8)?,
                        row.get::<_, Option<String>>(9)?,
                        row.get::<_, Option<String>>(10)?,
                        row.get::<_, Option<String>>(11)?,
                    ))
                })
                .map_err(db_error)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_error)?;
            let mut items = rows
                .into_iter()
                .map(|row| {
                    Ok(InboundSummary {
                        id: parse_id(&row.0)?,
                        source: row.1,
                        provider: row.2,
                        received_at: Timestamp::from_unix_millis(row.3),
                        status: parse_status(&row.4)?,
                        provider_event: row.5,
                        provider_event_id: row.6,
                        verification: row.7,
                        body_size: row.8.and_then(|n| u64::try_from(n).ok()),
                        error: recorded_error(row.9, row.10),
                        duplicate_of: row.11.as_deref().map(parse_id).transpose()?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(paginate(&mut items, limit, |i| i.id.to_string()))
        })
        .await
    }
}

fn parse_status(text: &str) -> Result<InboundStatus, StoreError> {
    InboundStatus::parse(text)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown inbound status `{text}`")))
}

fn recorded_error(code: Option<String>, message: Option<String>) -> Option<RecordedError> {
    code.map(|code| RecordedError {
        code,
        message: message.unwrap_or_default(),
    })
}
