//! billhook's storage: one [`Store`] over embedded SQLite (the default) or PostgreSQL.
//!
//! This is the only crate that knows SQL. Each backend applies its own versioned migrations at
//! open. Writes that must be atomic (an ingest: the request, its events and everything derived
//! from them) are single store calls, each one transaction; on SQLite many such calls share one
//! fsync'd commit (group commit) so that durability does not cost throughput.

pub mod model;
pub(crate) mod sqlite;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use billhook_core::ids::{EventId, InboundId};
use billhook_core::time::Timestamp;

pub use model::*;

/// Why a store operation failed. Messages are for logs, never for API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("migration {version} failed: {message}")]
    Migration { version: u32, message: String },
    #[error(
        "the database was written by a newer billhook (schema version {found}, this build knows {known}); upgrade billhook"
    )]
    SchemaTooNew { found: u32, known: u32 },
    #[error("`{0}` is not a database URL billhook understands (sqlite://PATH or postgres://…)")]
    BadUrl(String),
}

/// Where the data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseConfig {
    /// An SQLite file; its directory is created if missing.
    Sqlite { path: PathBuf },
}

impl DatabaseConfig {
    /// Parses `sqlite://PATH` (or `sqlite:PATH`).
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .filter(|p| !p.is_empty())
        {
            return Ok(DatabaseConfig::Sqlite {
                path: PathBuf::from(path),
            });
        }
        Err(StoreError::BadUrl(url.to_owned()))
    }

    /// A short description for logs (never a password).
    pub fn describe(&self) -> String {
        match self {
            DatabaseConfig::Sqlite { path } => format!("SQLite at {}", path.display()),
        }
    }
}

/// The store. Cheap to clone; clones share the same connections.
#[derive(Clone)]
pub struct Store {
    backend: Arc<Backend>,
}

enum Backend {
    Sqlite(sqlite::SqliteStore),
}

macro_rules! dispatch {
    ($self:ident, $store:ident => $body:expr) => {
        match &*$self.backend {
            Backend::Sqlite($store) => $body,
        }
    };
}

impl Store {
    /// Opens the database, creating it and applying migrations as needed.
    pub async fn open(config: &DatabaseConfig) -> Result<Self, StoreError> {
        let backend = match config {
            DatabaseConfig::Sqlite { path } => {
                Backend::Sqlite(sqlite::SqliteStore::open(path).await?)
            }
        };
        Ok(Self {
            backend: Arc::new(backend),
        })
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        dispatch!(self, store => store.schema_version().await)
    }

    /// Stores one request with its events in one transaction, unless its dedup key is already
    /// held, in which case nothing is written and the original's ids come back.
    pub async fn ingest(&self, write: IngestWrite) -> Result<IngestOutcome, StoreError> {
        dispatch!(self, store => store.ingest(write).await)
    }

    pub async fn event(&self, id: EventId) -> Result<Option<EventRecord>, StoreError> {
        dispatch!(self, store => store.event(id).await)
    }

    pub async fn events(&self, query: EventQuery) -> Result<Page<EventRecord>, StoreError> {
        dispatch!(self, store => store.events(query).await)
    }

    pub async fn inbound(&self, id: InboundId) -> Result<Option<InboundRecord>, StoreError> {
        dispatch!(self, store => store.inbound(id).await)
    }

    /// Stored requests, newest first, without their bodies.
    pub async fn inbound_list(
        &self,
        query: InboundQuery,
    ) -> Result<Page<InboundSummary>, StoreError> {
        dispatch!(self, store => store.inbound_list(query).await)
    }

    /// Applies the outcome of reprocessing a quarantined request.
    pub async fn reprocess(
        &self,
        id: InboundId,
        outcome: Reprocess,
    ) -> Result<ReprocessOutcome, StoreError> {
        dispatch!(self, store => store.reprocess(id, outcome).await)
    }

    /// Forgets dedup keys that expired before `now`. Returns how many went.
    pub async fn prune_dedup(&self, now: Timestamp, batch: u32) -> Result<u64, StoreError> {
        dispatch!(self, store => store.prune_dedup(now, batch).await)
    }

    /// Succeeds when the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, store => store.ping().await)
    }

    /// Finishes queued writes and stops the writer. Further writes fail.
    pub async fn close(&self) {
        dispatch!(self, store => store.close().await)
    }
}
