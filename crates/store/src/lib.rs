//! billhook's storage: one [`Store`] over embedded SQLite (the default) or PostgreSQL.
//!
//! This is the only crate that knows SQL. Each backend applies its own versioned migrations at
//! open. Writes that must be atomic (an ingest: the request, its events and everything derived
//! from them) are single store calls, each one transaction; on SQLite many such calls share one
//! fsync'd commit (group commit) so that durability does not cost throughput.

pub mod model;
mod page;
mod postgres;
pub(crate) mod sqlite;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use billhook_core::ids::{AttemptId, DeliveryId, EndpointId, EventId, InboundId, TokenId};
use billhook_core::time::Timestamp;

pub use model::*;
pub use postgres::{create_scratch_schema, drop_scratch_schema};

/// Why a store operation failed. Messages are for logs, never for API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(String),
    /// The database cancelled the transaction because it conflicted with a concurrent one (a
    /// deadlock, a serialization failure): nothing was written, and trying again can succeed.
    #[error("the database cancelled a conflicting transaction: {0}")]
    Conflict(String),
    /// The database cancelled a statement that ran past `statement_timeout`: it may be
    /// overloaded, or the statement too large (a group that would pass one request at a time),
    /// so the caller decides whether to try again, smaller or later.
    #[error("the database cancelled a statement that took too long: {0}")]
    TimedOut(String),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// A value the database cannot hold (PostgreSQL refuses text with the NUL character): the
    /// caller's input, not the database, is at fault.
    #[error("a value cannot be stored: {0}")]
    Unstorable(String),
    #[error("migration {version} failed: {message}")]
    Migration { version: u32, message: String },
    #[error(
        "the database was written by a newer billhook (schema version {found}, this build knows {known}); upgrade billhook"
    )]
    SchemaTooNew { found: u32, known: u32 },
    #[error(
        "migration {version} is not the one this database applied (its text changed since): a released migration must never change; restore it and add a new one"
    )]
    MigrationChanged { version: u32 },
    #[error("`{0}` is not a database URL billhook understands (sqlite://PATH or postgres://…)")]
    BadUrl(String),
}

/// A migration's checksum as recorded: the hex SHA-256 of its lines with their trailing
/// whitespace (carriage returns among it) and the blank lines at its end left out, so that a
/// checkout converting line endings or an editor trimming lines reads the same migration.
pub(crate) fn migration_checksum(sql: &str) -> String {
    let lines: Vec<&str> = sql.lines().map(str::trim_end).collect();
    let text = lines.join("\n");
    billhook_core::access::digest(text.trim_end())
}

/// Checks the applied migrations' recorded checksums against `migrations`; returns those
/// recorded without one (by a billhook from before checksums), to record now.
pub(crate) fn unrecorded_checksums(
    applied: &[(u32, Option<String>)],
    migrations: &[(u32, &str)],
) -> Result<Vec<(u32, String)>, StoreError> {
    let mut unrecorded = Vec::new();
    for (version, recorded) in applied {
        // A version this build does not know is a newer build's, refused as such elsewhere.
        let Some((_, sql)) = migrations.iter().find(|(known, _)| known == version) else {
            continue;
        };
        let checksum = migration_checksum(sql);
        match recorded {
            None => unrecorded.push((*version, checksum)),
            Some(recorded) if *recorded != checksum => {
                return Err(StoreError::MigrationChanged { version: *version });
            }
            Some(_) => {}
        }
    }
    Ok(unrecorded)
}

impl StoreError {
    /// A write that panicked, with the panic's message.
    pub(crate) fn panicked(panic: &(dyn std::any::Any + Send)) -> Self {
        let reason = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("no message");
        Self::Database(format!("a write panicked: {reason}"))
    }
}

/// Where the data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseConfig {
    /// An SQLite file; its directory is created if missing.
    Sqlite { path: PathBuf },
    /// A PostgreSQL database, shared by any number of billhook instances.
    Postgres(PostgresOptions),
}

/// How billhook uses a PostgreSQL database.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/database?options=…` (libpq syntax).
    pub url: String,
    /// Connections per instance.
    pub pool_size: usize,
    /// The most one statement may run before the database cancels it.
    pub statement_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long to keep retrying when the database is unreachable at start.
    pub wait: Duration,
}

/// With the URL's password left out.
impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("wait", &self.wait)
            .finish()
    }
}

impl PostgresOptions {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            pool_size: 16,
            statement_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            wait: Duration::from_secs(300),
        }
    }
}

impl DatabaseConfig {
    /// Parses `sqlite://PATH` (or `sqlite:PATH`) and `postgres://…` (or `postgresql://…`).
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
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseConfig::Postgres(PostgresOptions::new(url)));
        }
        Err(StoreError::BadUrl(redact_url(url)))
    }

    /// A short description for logs (never a password).
    pub fn describe(&self) -> String {
        match self {
            DatabaseConfig::Sqlite { path } => format!("SQLite at {}", path.display()),
            DatabaseConfig::Postgres(options) => {
                format!("PostgreSQL at {}", redact_url(&options.url))
            }
        }
    }
}

/// A database URL with its password replaced, for logs and errors: the user, hosts, ports and
/// database as the PostgreSQL client reads them (so what is shown is what is dialled). Text
/// the client cannot read (a password may be anywhere in it) is not shown, nor parameters.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://").filter(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
    }) else {
        return "(not shown: not a URL)".to_owned();
    };
    // Two `@`: which one ends the credentials is a guess the client may make differently, and
    // either side of the other can be part of a password.
    if rest.matches('@').count() > 1 {
        return format!("{scheme}://(not shown: an ambiguous URL)");
    }
    let Ok(config) = url.parse::<tokio_postgres::Config>() else {
        return format!("{scheme}://(not shown: not a valid URL)");
    };
    // A name is shown only if it looks like one: a URL the client reads differently from what
    // was meant (a raw `@` in a password or a parameter) can carry a secret into any part.
    let plain = |text: &str, also: &str| {
        text.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c) || also.contains(c))
    };
    let hidden = "(not shown)";
    let user = match (config.get_user(), config.get_password()) {
        (Some(user), _) if !plain(user, "@") => format!("{hidden}@"),
        (Some(user), Some(_)) => format!("{user}:…@"),
        (Some(user), None) => format!("{user}@"),
        (None, _) => String::new(),
    };
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let name = match host {
                tokio_postgres::config::Host::Tcp(name) if !plain(name, ":") => hidden.to_owned(),
                tokio_postgres::config::Host::Tcp(name) if name.contains(':') => {
                    format!("[{name}]")
                }
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            match ports
                .get(index)
                .or(ports.first().filter(|_| ports.len() == 1))
            {
                Some(port) => format!("{name}:{port}"),
                None => name,
            }
        })
        .collect();
    let database = match config.get_dbname() {
        Some(name) if !plain(name, "") => hidden,
        Some(name) => name,
        None => "",
    };
    format!("{scheme}://{user}{}/{database}", hosts.join(","))
}

#[cfg(test)]
mod redaction_tests {
    use super::redact_url;

    #[test]
    fn no_password_survives_redaction() {
        for (url, shown) in [
            (
                "postgres://billhook:s3cret@db:5432/billhook",
                "postgres://billhook:…@db:5432/billhook",
            ),
            (
                "postgresql://db/billhook?user=billhook&password=s3cret",
                "postgresql://billhook:…@db:5432/billhook",
            ),
            (
                "postgres://db:5432/billhook?user=billhook@server&password=s3cret",
                "postgres://db:…@(not shown):5432/",
            ),
            (
                "postgres://billhook:ab@cd/ef@db/billhook",
                "postgres://(not shown: an ambiguous URL)",
            ),
            (
                "host=db user=billhook password=s3cr://et",
                "(not shown: not a URL)",
            ),
            ("postgres://db/billhook", "postgres://db:5432/billhook"),
            (
                "postgres://billhook@[::1]:5433/billhook",
                "postgres://billhook@[::1]:5433/billhook",
            ),
            (
                "postgres://billhook:p%40ss@db/billhook",
                "postgres://billhook:…@db:5432/billhook",
            ),
            (
                "postgres://billhook:p@ss@db/billhook",
                "postgres://(not shown: an ambiguous URL)",
            ),
            (
                "host=db user=billhook password=s3cret",
                "(not shown: not a URL)",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}

/// A change another instance (or this one) made, announced through the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notification {
    /// Deliveries became due that any instance may claim.
    Deliveries,
    /// Endpoints changed.
    Endpoints,
    /// The notification connection is (again) listening; something may have been missed before.
    Reconnected,
}

/// The store. Cheap to clone; clones share the same connections.
#[derive(Clone)]
pub struct Store {
    backend: Arc<Backend>,
}

enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(Box<postgres::PgStore>),
}

macro_rules! dispatch {
    ($self:ident, $store:ident => $body:expr) => {
        match &*$self.backend {
            Backend::Sqlite($store) => $body,
            Backend::Postgres($store) => $body,
        }
    };
}

impl Store {
    /// Opens the database, creating it and applying migrations as needed.
    pub async fn open(config: &DatabaseConfig) -> Result<Self, StoreError> {
        Self::open_at(config, None).await
    }

    /// Opens the database migrated to `version` (the latest when `None`): for tests of upgrades
    /// and for `billhook migrate --to`.
    pub async fn open_at(
        config: &DatabaseConfig,
        version: Option<u32>,
    ) -> Result<Self, StoreError> {
        let backend = match config {
            DatabaseConfig::Sqlite { path } => {
                Backend::Sqlite(sqlite::SqliteStore::open(path, version).await?)
            }
            DatabaseConfig::Postgres(options) => {
                Backend::Postgres(Box::new(postgres::PgStore::open(options, version).await?))
            }
        };
        Ok(Self {
            backend: Arc::new(backend),
        })
    }

    /// The newest schema version this build knows for the configured backend.
    pub fn latest_version(config: &DatabaseConfig) -> u32 {
        match config {
            DatabaseConfig::Sqlite { .. } => sqlite::latest_version(),
            DatabaseConfig::Postgres(_) => postgres::latest_version(),
        }
    }

    /// Announcements of changes made by any instance, for backends shared between instances;
    /// `None` where one process owns the database.
    pub fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<Notification>> {
        match &*self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(store) => Some(store.subscribe()),
        }
    }

    /// Takes (or keeps) the right to deliver to these endpoints until `until`, returning those
    /// this owner now holds. One owner per endpoint keeps its rate limit and concurrency cap
    /// across instances; a single-process backend owns everything.
    pub async fn own_endpoints(
        &self,
        owner: &str,
        endpoints: Vec<EndpointId>,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<EndpointId>, StoreError> {
        match &*self.backend {
            Backend::Sqlite(_) => Ok(endpoints),
            Backend::Postgres(store) => {
                store
                    .own_endpoints(owner.to_owned(), endpoints, now, until)
                    .await
            }
        }
    }

    /// Gives up the right to deliver to these endpoints.
    pub async fn disown_endpoints(
        &self,
        owner: &str,
        endpoints: Vec<EndpointId>,
    ) -> Result<(), StoreError> {
        match &*self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(store) => store.disown_endpoints(owner.to_owned(), endpoints).await,
        }
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        dispatch!(self, store => store.schema_version().await)
    }

    /// Stores one request with its events in one transaction, unless one of its dedup keys is
    /// already held, in which case nothing is written (a key it took is given up) and the
    /// original's ids come back.
    ///
    /// A write whose own request holds the key was stored already: the same write submitted
    /// twice. No path of the server does that today (a group whose commit went unanswered
    /// fails as a whole, and the provider's retry is a new request), so this is a safeguard: it
    /// is answered as stored, not as a duplicate of itself, and nothing is written twice. What
    /// the ledger concluded then is not known now; those deliveries wait in the outbox.
    pub async fn ingest(&self, write: IngestWrite) -> Result<IngestOutcome, StoreError> {
        let id = write.inbound.id;
        let outcome = dispatch!(self, store => store.ingest(write).await)?;
        Ok(match outcome {
            IngestOutcome::Duplicate {
                inbound_id,
                event_ids,
            } if inbound_id == id => IngestOutcome::Stored {
                inbound_id,
                event_ids,
                concluded: Vec::new(),
            },
            outcome => outcome,
        })
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

    /// Keeps the database's planner statistics in step with fast-growing tables; returns
    /// whether it refreshed any. SQLite plans every statement from its schema alone and has
    /// nothing to refresh.
    pub async fn refresh_statistics(&self) -> Result<bool, StoreError> {
        match &*self.backend {
            Backend::Sqlite(_) => Ok(false),
            Backend::Postgres(store) => store.refresh_statistics().await,
        }
    }

    /// Forgets dedup keys that expired before `now`. Returns how many went.
    pub async fn prune_dedup(&self, now: Timestamp, batch: u32) -> Result<u64, StoreError> {
        dispatch!(self, store => store.prune_dedup(now, batch).await)
    }

    pub async fn create_endpoint(
        &self,
        endpoint: NewEndpoint,
    ) -> Result<EndpointRecord, StoreError> {
        dispatch!(self, store => store.create_endpoint(endpoint).await)
    }

    /// Creates the endpoint named in the configuration, or updates it to match. Its secret is
    /// replaced only when the configuration names a different one (`previous_secret_until` is
    /// `Some`), and the one replaced keeps signing until then, as after a rotation.
    pub async fn upsert_named_endpoint(
        &self,
        endpoint: NewEndpoint,
        previous_secret_until: Option<Timestamp>,
    ) -> Result<EndpointRecord, StoreError> {
        dispatch!(self, store => store.upsert_named_endpoint(endpoint, previous_secret_until).await)
    }

    pub async fn endpoint(&self, id: EndpointId) -> Result<Option<EndpointRecord>, StoreError> {
        dispatch!(self, store => store.endpoint(id).await)
    }

    /// Endpoints, newest first.
    pub async fn endpoints(
        &self,
        before: Option<EndpointId>,
        limit: u32,
    ) -> Result<Page<EndpointRecord>, StoreError> {
        dispatch!(self, store => store.endpoints(before, limit).await)
    }

    /// Every endpoint that is not deleted, for the delivery runtime's cache.
    pub async fn all_endpoints(&self) -> Result<Vec<EndpointRecord>, StoreError> {
        dispatch!(self, store => store.all_endpoints().await)
    }

    /// Applies a patch; `None` when there is no such endpoint.
    pub async fn update_endpoint(
        &self,
        id: EndpointId,
        patch: EndpointPatch,
        now: Timestamp,
    ) -> Result<Option<EndpointRecord>, StoreError> {
        dispatch!(self, store => store.update_endpoint(id, patch, now).await)
    }

    /// Cancels up to [`BACKLOG_BATCH`] pending or failed deliveries of those of `endpoints`
    /// that are deleted; the number cancelled (call again while it is the whole batch). The
    /// deletion cancels only the first batch; and a delivery planned by an instance that had
    /// not heard of a deletion yet is written after it, where no lane would ever work it.
    pub async fn cancel_deliveries_of_deleted(
        &self,
        endpoints: Vec<EndpointId>,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        dispatch!(self, store => store.cancel_deliveries_of_deleted(endpoints, now).await)
    }

    /// Holds up to [`BACKLOG_BATCH`] waiting deliveries of those of `endpoints` that are
    /// disabled; the number held (call again while it is the whole batch). The disabling holds
    /// only the first batch; and a delivery planned as its endpoint was being disabled, or left
    /// pending by a holder that stopped, is written or left after it, and no lane works it:
    /// pending, it would keep its message from retention and the backlog from ever emptying.
    pub async fn hold_deliveries_of_disabled(
        &self,
        endpoints: Vec<EndpointId>,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        dispatch!(self, store => store.hold_deliveries_of_disabled(endpoints, now).await)
    }

    /// Cancels up to [`BACKLOG_BATCH`] held deliveries of a deleted endpoint, oldest first;
    /// the number cancelled (call again while it is the whole batch).
    pub async fn cancel_held_of_deleted(
        &self,
        endpoint: EndpointId,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        dispatch!(self, store => store.cancel_held_of_deleted(endpoint, now).await)
    }

    /// Deletes an endpoint and cancels the first [`BACKLOG_BATCH`] of its pending and failed
    /// deliveries; [`Store::cancel_deliveries_of_deleted`] and [`Store::cancel_held_of_deleted`]
    /// cancel the rest. False when there is no such endpoint.
    pub async fn delete_endpoint(
        &self,
        id: EndpointId,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        dispatch!(self, store => store.delete_endpoint(id, now).await)
    }

    /// Makes `secret` the endpoint's signing secret; the previous one signs until `previous_until`.
    pub async fn rotate_secret(
        &self,
        id: EndpointId,
        secret: String,
        now: Timestamp,
        previous_until: Timestamp,
    ) -> Result<Option<EndpointRecord>, StoreError> {
        dispatch!(self, store => store.rotate_secret(id, secret, now, previous_until).await)
    }

    /// Claims up to `limit` deliveries of `endpoint` that are due at `now` and not leased, under
    /// a lease to `lease_until`. On PostgreSQL, shared by instances whose clocks may disagree,
    /// leases are judged by the database's clock: the lease runs `lease_until - now` from the
    /// database's now, and a lease is live until the database's clock passes its end.
    pub async fn claim_due(
        &self,
        endpoint: EndpointId,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let owner = owner.to_owned();
        dispatch!(self, store => store.claim_due(endpoint, owner, now, lease_until, limit).await)
    }

    /// Endpoints with claimable deliveries due by `now` (and endpoints deleted within
    /// [`DELETED_ENDPOINTS_WATCHED_FOR`] that still owe any), and the earliest time another
    /// delivery could be claimed. A few index probes per endpoint, whatever the backlog.
    pub async fn due_endpoints(
        &self,
        now: Timestamp,
    ) -> Result<(Vec<EndpointId>, Option<Timestamp>), StoreError> {
        dispatch!(self, store => store.due_endpoints(now).await)
    }

    /// Deleted endpoints that still owe deliveries: a deletion whose cancelling was cut short
    /// (see [`BACKLOG_BATCH`]). Asked once at start.
    pub async fn deleted_endpoints_owing(&self) -> Result<Vec<EndpointId>, StoreError> {
        dispatch!(self, store => store.deleted_endpoints_owing().await)
    }

    /// Extends to `until` the leases `owner` holds on `ids` and that have not lapsed at `now`
    /// (on PostgreSQL, by the database's clock, as for [`Store::claim_due`]); returns the
    /// deliveries renewed. A lapsed lease is not renewed even if no one claimed the delivery
    /// since: the claim that would take it over may be on its way.
    pub async fn renew_leases(
        &self,
        owner: &str,
        ids: Vec<DeliveryId>,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        let owner = owner.to_owned();
        dispatch!(self, store => store.renew_leases(owner, ids, now, until).await)
    }

    /// Clears every lease (single-process backends, at start; elsewhere leases expire).
    pub async fn release_all_leases(&self) -> Result<u64, StoreError> {
        match &*self.backend {
            Backend::Sqlite(store) => store.release_all_leases().await,
            Backend::Postgres(_) => Ok(0),
        }
    }

    /// Records attempts and their consequences, all in one transaction. The attempts are
    /// recorded whatever happened since, and so is what they say about the endpoint (its
    /// health, a disabling); but a delivery changes only while `owner` still holds its lease.
    /// Once the lease lapsed another owner may have claimed or even finished it, and what
    /// follows is that owner's to record (the late attempt is then not counted in its
    /// `attempts`).
    pub async fn complete(
        &self,
        completions: impl Into<Arc<[Completion]>>,
        owner: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        // Shared, so a batch written again after a refusal is not copied for each try.
        let completions = completions.into();
        let owner = owner.to_owned();
        dispatch!(self, store => store.complete(completions, owner, now).await)
    }

    /// Resends an endpoint's failed, dead and held deliveries created since `since`, if it is
    /// enabled and not deleted as this runs (nothing otherwise): how many, and an id above all
    /// of them. Written
    /// [`BACKLOG_BATCH`] deliveries' stretch at a time, each in its own transaction: stopped
    /// between two (a disabling, a failure), what was resent stays resent, and the same call
    /// again resends the rest.
    pub async fn recover(
        &self,
        endpoint: EndpointId,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Recovery, StoreError> {
        dispatch!(self, store => store.recover(endpoint, since, now).await)
    }

    /// Sends an event again (to one endpoint, or to all that had it), creating the deliveries in
    /// `create` for endpoints that never had it. Each starts the retry schedule afresh: a dead
    /// delivery sent again gets every attempt a new one would. Only enabled endpoints are sent
    /// to: a disabled one's deliveries are left as they are, and none is created for it.
    pub async fn redeliver(
        &self,
        event: EventId,
        endpoint: Option<EndpointId>,
        create: Vec<NewDelivery>,
        now: Timestamp,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        dispatch!(self, store => store.redeliver(event, endpoint, create, now).await)
    }

    /// An event's deliveries with their attempts.
    pub async fn deliveries_of_event(
        &self,
        event: EventId,
        inbound: InboundId,
    ) -> Result<Vec<(DeliveryRecord, Vec<AttemptRecord>)>, StoreError> {
        dispatch!(self, store => store.deliveries_of_event(event, inbound).await)
    }

    pub async fn delivery(&self, id: DeliveryId) -> Result<Option<DeliveryRecord>, StoreError> {
        dispatch!(self, store => store.delivery(id).await)
    }

    /// An endpoint's deliveries, newest first, of one status or all, before `before` and
    /// after `after` (ids, so a time range through [`DeliveryId::lower_bound`]).
    pub async fn deliveries_of_endpoint(
        &self,
        endpoint: EndpointId,
        status: Option<DeliveryStatus>,
        (after, before): (Option<DeliveryId>, Option<DeliveryId>),
        limit: u32,
    ) -> Result<Page<DeliveryRecord>, StoreError> {
        dispatch!(self, store => store.deliveries_of_endpoint(endpoint, status, (after, before), limit).await)
    }

    /// An endpoint's attempts, newest first.
    pub async fn attempts_of_endpoint(
        &self,
        endpoint: EndpointId,
        before: Option<AttemptId>,
        limit: u32,
    ) -> Result<Page<AttemptRecord>, StoreError> {
        dispatch!(self, store => store.attempts_of_endpoint(endpoint, before, limit).await)
    }

    pub async fn endpoint_stats(
        &self,
        endpoint: EndpointId,
        now: Timestamp,
    ) -> Result<EndpointStats, StoreError> {
        dispatch!(self, store => store.endpoint_stats(endpoint, now).await)
    }

    /// Ledger entities of one kind, newest first.
    pub async fn ledger_entities(&self, query: LedgerQuery) -> Result<Page<Entity>, StoreError> {
        dispatch!(self, store => store.ledger_entities(query).await)
    }

    /// Whether the listing holds more than `rows` entities, found without reading them all.
    pub async fn ledger_listing_exceeds(
        &self,
        query: LedgerQuery,
        rows: u64,
    ) -> Result<bool, StoreError> {
        dispatch!(self, store => store.ledger_listing_exceeds(query, rows).await)
    }

    /// One ledger entity by billhook's id.
    pub async fn ledger_entity(&self, id: &str) -> Result<Option<Entity>, StoreError> {
        let id = id.to_owned();
        dispatch!(self, store => store.ledger_entity(id).await)
    }

    /// The payments linked to an invoice or bill.
    pub async fn ledger_linked(&self, id: &str) -> Result<Vec<Entity>, StoreError> {
        let id = id.to_owned();
        dispatch!(self, store => store.ledger_linked(id).await)
    }

    /// Every status an entity reported, oldest first.
    pub async fn ledger_history(&self, id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let id = id.to_owned();
        dispatch!(self, store => store.ledger_history(id).await)
    }

    /// Succeeded payments created before `before` that match nothing and were not announced yet.
    pub async fn unmatched_payments(
        &self,
        before: Timestamp,
        limit: u32,
    ) -> Result<Vec<Entity>, StoreError> {
        dispatch!(self, store => store.unmatched_payments(before, limit).await)
    }

    /// Records a `payment.unmatched` announcement, unless the payment was matched or announced
    /// meanwhile. True when it was recorded.
    pub async fn record_unmatched(
        &self,
        payment_id: &str,
        announcement: Announcement,
    ) -> Result<bool, StoreError> {
        let payment_id = payment_id.to_owned();
        dispatch!(self, store => store.record_unmatched(payment_id, announcement).await)
    }

    /// Stores a new admin token (its digest only).
    pub async fn create_token(&self, token: NewToken) -> Result<TokenRecord, StoreError> {
        dispatch!(self, store => store.create_token(token).await)
    }

    /// Every admin token, revoked ones included, newest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        dispatch!(self, store => store.tokens().await)
    }

    /// The live (unrevoked) token with this digest.
    pub async fn token_by_digest(&self, digest: &str) -> Result<Option<TokenRecord>, StoreError> {
        let digest = digest.to_owned();
        dispatch!(self, store => store.token_by_digest(digest).await)
    }

    /// Revokes a token and ends its console sessions. True if it was live.
    pub async fn revoke_token(&self, id: TokenId, now: Timestamp) -> Result<bool, StoreError> {
        dispatch!(self, store => store.revoke_token(id, now).await)
    }

    /// Records that a token was used.
    pub async fn touch_token(&self, id: TokenId, now: Timestamp) -> Result<(), StoreError> {
        dispatch!(self, store => store.touch_token(id, now).await)
    }

    pub async fn create_session(&self, session: NewSession) -> Result<(), StoreError> {
        dispatch!(self, store => store.create_session(session).await)
    }

    /// The unexpired session whose cookie has this digest.
    pub async fn session(
        &self,
        digest: &str,
        now: Timestamp,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let digest = digest.to_owned();
        dispatch!(self, store => store.session(digest, now).await)
    }

    pub async fn delete_session(&self, digest: &str) -> Result<(), StoreError> {
        let digest = digest.to_owned();
        dispatch!(self, store => store.delete_session(digest).await)
    }

    /// Forgets expired console sessions; returns how many.
    pub async fn prune_sessions(&self, now: Timestamp) -> Result<u64, StoreError> {
        dispatch!(self, store => store.prune_sessions(now).await)
    }

    /// What retention would remove: every message older than `before` (an id bound, see
    /// `InboundId::lower_bound`), not quarantined nor processed since, with nothing still owed
    /// to an endpoint (see `OWED_DELIVERIES`), with its events, deliveries and attempts; and the
    /// announcements as old whose message is gone (`prune_orphaned_events`). The ledger is
    /// never pruned.
    pub async fn prune_preview(&self, before: InboundId) -> Result<PruneReport, StoreError> {
        dispatch!(self, store => store.prune_preview(before).await)
    }

    /// Removes up to `batch` such messages in one transaction: the oldest past `after`, the
    /// previous batch's `resume_after` (`None` to start from the oldest). A batch also stops
    /// at 8 MiB of bodies, taking one message at least.
    pub async fn prune(
        &self,
        before: InboundId,
        after: Option<InboundId>,
        batch: u32,
    ) -> Result<PruneBatch, StoreError> {
        dispatch!(self, store => store.prune(before, after, batch).await)
    }

    /// Removes up to `batch` canonical events older than `before` (an id bound) and past
    /// `after` whose message is gone, with their finished deliveries and attempts; an event
    /// with a delivery still owed stays. Such events are the ledger's announcements filed under
    /// a message that retention had already removed (an unmatched payment announced after a
    /// stop longer than `max_age`, a payment unlinked by a late reprocess): the message-by-
    /// message batches of `prune` never reach them.
    pub async fn prune_orphaned_events(
        &self,
        before: EventId,
        after: Option<EventId>,
        batch: u32,
    ) -> Result<PruneBatch<EventId>, StoreError> {
        dispatch!(self, store => store.prune_orphaned_events(before, after, batch).await)
    }

    /// Adds an instance's activity counts to a minute (unix minutes).
    pub async fn record_activity(
        &self,
        instance: &str,
        minute: i64,
        counts: ActivityCounts,
    ) -> Result<(), StoreError> {
        let instance = instance.to_owned();
        dispatch!(self, store => store.record_activity(instance, minute, counts).await)
    }

    /// Activity per minute since `since_minute`, summed over instances, oldest first. Minutes
    /// without activity are absent.
    pub async fn activity(&self, since_minute: i64) -> Result<Vec<ActivityMinute>, StoreError> {
        dispatch!(self, store => store.activity(since_minute).await)
    }

    /// Forgets activity before `before_minute`.
    pub async fn prune_activity(&self, before_minute: i64) -> Result<u64, StoreError> {
        dispatch!(self, store => store.prune_activity(before_minute).await)
    }

    /// Backlog, endpoint health and quarantine, now.
    pub async fn overview(&self) -> Result<Overview, StoreError> {
        dispatch!(self, store => store.overview().await)
    }

    /// Each named source's latest message and counts.
    pub async fn source_stats(
        &self,
        sources: Vec<String>,
        since: Timestamp,
    ) -> Result<Vec<SourceStats>, StoreError> {
        dispatch!(self, store => store.source_stats(sources, since).await)
    }

    /// True for backends where one process owns the database (SQLite): leases left by a crash
    /// can be cleared at start instead of waiting for them to expire.
    pub fn is_single_process(&self) -> bool {
        matches!(&*self.backend, Backend::Sqlite(_))
    }

    /// True for backends whose planner keeps statistics that `refresh_statistics` refreshes
    /// (PostgreSQL): only they need the task that calls it.
    pub fn keeps_planner_statistics(&self) -> bool {
        matches!(&*self.backend, Backend::Postgres(_))
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
