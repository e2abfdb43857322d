//! Reads on PostgreSQL: events and stored requests, with cursor pagination (newest first).

use billhook_core::ids::{EventId, InboundId};
use billhook_core::time::Timestamp;
use bytes::Bytes;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::ingest::{event_ids_of, parse_id};
use super::{PgStore, pg_error};
use crate::StoreError;
use crate::model::*;
use crate::page::{clamp_limit, paginate};

const EVENT_COLUMNS: &str =
    "id, type, source, subject_kind, subject_id, inbound_id, occurred_at, received_at, payload";

pub(super) fn to_event(row: &Row) -> Result<EventRecord, StoreError> {
    Ok(EventRecord {
        id: parse_id(row.get::<_, &str>(0))?,
        event_type: row.get(1),
        source: row.get(2),
        subject_kind: row.get(3),
        subject_id: row.get(4),
        inbound_id: parse_id(row.get::<_, &str>(5))?,
        occurred_at: Timestamp::from_unix_millis(row.get(6)),
        received_at: Timestamp::from_unix_millis(row.get(7)),
        payload: Bytes::from(row.get::<_, Vec<u8>>(8)),
    })
}

/// Builds `WHERE a = $1 AND b = $2 …` from the filters that are set.
#[derive(Default)]
pub(super) struct Filters {
    clauses: Vec<String>,
    values: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Filters {
    pub(super) fn add<T: ToSql + Sync + Send + 'static>(
        &mut self,
        column: &str,
        operator: &str,
        value: Option<T>,
    ) {
        if let Some(value) = value {
            self.values.push(Box::new(value));
            self.clauses
                .push(format!("{column} {operator} ${}", self.values.len()));
        }
    }

    /// A clause of one parameter, which `clause` is given as its placeholder (`$3`).
    pub(super) fn add_with<T: ToSql + Sync + Send + 'static>(
        &mut self,
        clause: impl FnOnce(&str) -> String,
        value: Option<T>,
    ) {
        if let Some(value) = value {
            self.values.push(Box::new(value));
            let placeholder = format!("${}", self.values.len());
            self.clauses.push(clause(&placeholder));
        }
    }

    /// A clause without parameters.
    pub(super) fn add_clause(&mut self, clause: String) {
        self.clauses.push(clause);
    }

    /// A parameter outside the conditions (a `LIMIT`), as its placeholder. Written into the
    /// text instead, every page size would be a statement of its own, prepared and kept on
    /// each pooled connection for its life.
    pub(super) fn bind(&mut self, value: i64) -> String {
        self.values.push(Box::new(value));
        format!("${}", self.values.len())
    }

    pub(super) fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.clauses.join(" AND "))
        }
    }

    pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.values
            .iter()
            .map(|v| v.as_ref() as &(dyn ToSql + Sync))
            .collect()
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

impl PgStore {
    pub(crate) async fn event(&self, id: EventId) -> Result<Option<EventRecord>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"))
            .await
            .map_err(pg_error)?;
        client
            .query_opt(&statement, &[&id.to_string()])
            .await
            .map_err(pg_error)?
            .as_ref()
            .map(to_event)
            .transpose()
    }

    pub(crate) async fn events(&self, query: EventQuery) -> Result<Page<EventRecord>, StoreError> {
        let client = self.client().await?;
        let limit = clamp_limit(query.limit);
        let mut filters = Filters::default();
        filters.add("type", "=", query.event_type);
        filters.add("source", "=", query.source);
        filters.add("subject_id", "=", query.subject);
        filters.add("id", "<", query.before.map(|id| id.to_string()));
        filters.add("id", ">=", query.after.map(|id| id.to_string()));
        let conditions = filters.sql();
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events {conditions} ORDER BY id DESC LIMIT {}",
            filters.bind(i64::from(limit) + 1)
        );
        let statement = client.prepare_cached(&sql).await.map_err(pg_error)?;
        let rows = client
            .query(&statement, &filters.params())
            .await
            .map_err(pg_error)?;
        let mut items = rows.iter().map(to_event).collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(&mut items, limit, |e| e.id.to_string()))
    }

    pub(crate) async fn inbound(&self, id: InboundId) -> Result<Option<InboundRecord>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT source, provider, received_at, status, provider_event, provider_event_id,
                    dedup_key, verification, remote_addr, headers, body, error_code, error_message,
                    duplicate_of
                 FROM inbound WHERE id = $1",
            )
            .await
            .map_err(pg_error)?;
        let Some(row) = client
            .query_opt(&statement, &[&id.to_string()])
            .await
            .map_err(pg_error)?
        else {
            return Ok(None);
        };
        let headers: String = row.get(9);
        Ok(Some(InboundRecord {
            id,
            source: row.get(0),
            provider: row.get(1),
            received_at: Timestamp::from_unix_millis(row.get(2)),
            status: parse_status(row.get(3))?,
            provider_event: row.get(4),
            provider_event_id: row.get(5),
            dedup_key: row.get(6),
            verification: row.get(7),
            remote_addr: row.get(8),
            headers: serde_json::from_str(&headers)
                .map_err(|e| StoreError::Corrupt(format!("stored headers: {e}")))?,
            body: row.get::<_, Option<Vec<u8>>>(10).map(Bytes::from),
            error: recorded_error(row.get(11), row.get(12)),
            duplicate_of: row.get::<_, Option<&str>>(13).map(parse_id).transpose()?,
            event_ids: event_ids_of(&client, id).await?,
        }))
    }

    pub(crate) async fn inbound_list(
        &self,
        query: InboundQuery,
    ) -> Result<Page<InboundSummary>, StoreError> {
        let client = self.client().await?;
        let limit = clamp_limit(query.limit);
        let mut filters = Filters::default();
        filters.add("status", "=", query.status.map(|s| s.as_str().to_owned()));
        filters.add("source", "=", query.source);
        let (past_cursor, order) = if query.oldest_first {
            (">", "ASC")
        } else {
            ("<", "DESC")
        };
        filters.add("id", past_cursor, query.cursor.map(|id| id.to_string()));
        let conditions = filters.sql();
        let sql = format!(
            "SELECT id, source, provider, received_at, status, provider_event, provider_event_id,
                verification, octet_length(body), error_code, error_message, duplicate_of
             FROM inbound {conditions} ORDER BY id {order} LIMIT {}",
            filters.bind(i64::from(limit) + 1)
        );
        let statement = client.prepare_cached(&sql).await.map_err(pg_error)?;
        let rows = client
            .query(&statement, &filters.params())
            .await
            .map_err(pg_error)?;
        let mut items = rows
            .iter()
            .map(|row| {
                Ok(InboundSummary {
                    id: parse_id(row.get::<_, &str>(0))?,
                    source: row.get(1),
                    provider: row.get(2),
                    received_at: Timestamp::from_unix_millis(row.get(3)),
                    status: parse_status(row.get(4))?,
                    provider_event: row.get(5),
                    provider_event_id: row.get(6),
                    verification: row.get(7),
                    body_size: row
                        .get::<_, Option<i32>>(8)
                        .and_then(|n| u64::try_from(n).ok()),
                    error: recorded_error(row.get(9), row.get(10)),
                    duplicate_of: row.get::<_, Option<&str>>(11).map(parse_id).transpose()?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(paginate(&mut items, limit, |i| i.id.to_string()))
    }
}
