//! The PostgreSQL backend, for running several billhook instances on one database.
//!
//! Each store call is one transaction on a pooled connection, except ingests: a few writer
//! tasks take them from a queue in groups, one transaction and one commit per group
//! (`ingest::IngestWriters`). Deliveries are claimed with
//! `FOR UPDATE SKIP LOCKED`, so instances never work the same row while its lease holds, and
//! `LISTEN`/`NOTIFY` tells every instance at once when deliveries or endpoints change. Channel
//! names include the schema, so several billhook deployments can share one database.
//!
//! A statement costs mostly its round trip and executor start-up, so writes are set-based
//! where they can be: the rows of a group of ingests are one statement, their ledger locks one,
//! what their facts will ask of the ledger one to three (`ledger::read_ahead`), their ledger
//! entities one and their ledger history one; a completion batch's rows are one statement per
//! table.
//! Transactions that lock several rows take them in one order (endpoints, then deliveries by
//! id) so they cannot deadlock one another.
//!
//! Leases and endpoint ownership are judged by the database's clock ([`DB_NOW`]), not by the
//! instances' own, which may disagree: an instant `t` an instance gives at its `now` is written
//! as `DB_NOW + (t - now)`, and a lease has lapsed when its end is at or before `DB_NOW`.
//!
//! Every text column is `COLLATE "C"` (migration 8): keys compare as bytes, as on SQLite and in
//! Rust, whatever the database's collation, which is faster and makes a kind's ledger ids one
//! range of the primary key. A migration that adds a text column declares it so.

mod access;
mod delivery;
mod endpoints;
mod ingest;
mod ledger;
mod operations;
mod read;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::{Notification, PostgresOptions, StoreError};

/// Migrations, in order, shared by every instance; an advisory lock keeps two instances from
/// applying them at once.
const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_ingest.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_delivery.sql"),
    ),
    (3, include_str!("../../migrations/postgres/0003_ledger.sql")),
    (
        4,
        include_str!("../../migrations/postgres/0004_operations.sql"),
    ),
    (
        5,
        include_str!("../../migrations/postgres/0005_lean_indexes.sql"),
    ),
    (
        6,
        include_str!("../../migrations/postgres/0006_ledger_identity.sql"),
    ),
    (
        7,
        include_str!("../../migrations/postgres/0007_ledger_reference_statistics.sql"),
    ),
    (
        8,
        include_str!("../../migrations/postgres/0008_byte_order_keys.sql"),
    ),
    (
        9,
        include_str!("../../migrations/postgres/0009_unstamped_ledger_times.sql"),
    ),
    (
        10,
        include_str!("../../migrations/postgres/0010_ledger_sandbox.sql"),
    ),
    (
        11,
        include_str!("../../migrations/postgres/0011_held_and_dead_deliveries.sql"),
    ),
    (
        12,
        include_str!("../../migrations/postgres/0012_former_numbers.sql"),
    ),
];

/// The database's clock in Unix milliseconds, as one statement reads it. Leases and endpoint
/// ownership are judged by it (see the module's docs).
pub(crate) const DB_NOW: &str = "(extract(epoch FROM statement_timestamp()) * 1000)::int8";

/// An arbitrary constant naming billhook's migration locks: one per schema, taken as
/// [`LOCK_MIGRATIONS`] does, so deployments sharing a database in schemas of their own migrate
/// without waiting for each other.
pub(crate) const MIGRATION_LOCK: i32 = 0x6268_6b6d;

/// Takes the migration lock of the connection's schema; [`UNLOCK_MIGRATIONS`] gives it back.
pub(crate) const LOCK_MIGRATIONS: &str = "SELECT pg_advisory_lock($1, hashtext(current_schema()))";

/// Gives back the lock [`LOCK_MIGRATIONS`] took.
pub(crate) const UNLOCK_MIGRATIONS: &str =
    "SELECT pg_advisory_unlock($1, hashtext(current_schema()))";

#[derive(Clone)]
pub(crate) struct PgStore {
    pool: Pool,
    config: tokio_postgres::Config,
    deliveries_channel: String,
    endpoints_channel: String,
    /// Where ingests wait for a writer (`ingest::IngestWriters`); `None` in the
    /// writers' own copies, which write directly.
    ingests: Option<Arc<ingest::IngestWriters>>,
}

pub(crate) fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |(version, _)| *version)
}

pub(crate) fn pg_error(error: tokio_postgres::Error) -> StoreError {
    // `Display` of a server error says only "db error"; the server's message is the useful part
    // (logged, never sent to clients).
    let text = match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    };
    // The connection lost, or never made: the database is away, and the same statement may
    // succeed later. An error of the client's own (a value it could not encode) is not that,
    // and must not be waited out.
    // A server shutting down, restarting, out of connections, memory or disk, or read-only (a
    // standby after a failover) says so with its own codes: the same write can succeed once it
    // is past that, and readiness says it is not ready meanwhile. (A limit of the
    // configuration's, 53400, would refuse the same statement again: not that.)
    let unreachable = error.is_closed()
        || std::error::Error::source(&error).is_some_and(|source| source.is::<std::io::Error>())
        || error.code().is_some_and(|code| {
            let code = code.code();
            code.starts_with("08")
                || code.starts_with("57P")
                || matches!(code, "53000" | "53100" | "53200" | "53300" | "25006")
        });
    if unreachable {
        StoreError::Unavailable(text)
    } else if error.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) {
        StoreError::TimedOut(text)
    } else if error.code().is_none() {
        StoreError::Database(text)
    } else if error
        .code()
        .is_some_and(|code| code.code().starts_with("40") || code.code() == "55P03")
    {
        // A serialization failure, a deadlock, or a lock waited for past `lock_timeout`.
        StoreError::Conflict(text)
    } else if error.code() == Some(&tokio_postgres::error::SqlState::CHARACTER_NOT_IN_REPERTOIRE) {
        StoreError::Unstorable(text)
    } else {
        StoreError::Database(text)
    }
}

/// The notification channel of `kind` for the tables in `schema`. A channel name is at most 63
/// bytes and compared exactly (`pg_notify` takes it as given, an unquoted `LISTEN` folds it to
/// lower case). Names that always worked keep their channel, so running instances of earlier
/// releases still hear new ones: the schema with every character but ASCII letters and digits
/// made `_`, when it has no capitals and fits. Any other schema's channel is named by a stable
/// hash of it.
fn channel(kind: &str, schema: &str) -> String {
    let plain: String = schema
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let plain = format!("billhook_{kind}_{plain}");
    if !schema.chars().any(|c| c.is_ascii_uppercase()) && plain.len() <= 63 {
        plain
    } else {
        format!(
            "billhook_{kind}_{:016x}",
            billhook_core::ledger::stable_hash(&[schema])
        )
    }
}

pub(crate) fn pool_error(error: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

/// Writers of ingest groups for a pool of `pool_size` connections. Fewer writers make larger
/// groups, which is what saves work; a few keep one group's commit from holding up the next.
/// A quarter of the pool leaves the rest to deliveries and reads.
fn ingest_writers(pool_size: usize) -> usize {
    (pool_size / 4).clamp(1, 4)
}

impl PgStore {
    /// Connects (waiting with backoff for up to `options.wait` while the database is
    /// unreachable), migrates to `target` (the latest when `None`) and returns the store.
    pub(crate) async fn open(
        options: &PostgresOptions,
        target: Option<u32>,
    ) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|_| StoreError::BadUrl(crate::redact_url(&options.url)))?;
        config.application_name("billhook");
        config.connect_timeout(options.connect_timeout);
        let existing = config.get_options().unwrap_or_default().to_owned();
        // An acknowledgement waits for its commit to be durable, whatever the database's or
        // the role's default for `synchronous_commit` says. JIT compilation is off unless the
        // URL's own options turn it on: billhook's statements are short, and the poller's, one
        // probe per endpoint, is estimated dear enough with a thousand endpoints to be
        // compiled afresh at every poll, which costs more than running it.
        config.options(format!(
            "-c jit=off {existing} -c statement_timeout={} -c synchronous_commit=on",
            options.statement_timeout.as_millis()
        ));
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut delay = Duration::from_millis(250);
        let started = tokio::time::Instant::now();
        let schema = loop {
            match Self::schema_of(&pool).await {
                Ok(schema) => break schema,
                Err(error) if started.elapsed() < options.wait => {
                    tracing::warn!(
                        database = %crate::redact_url(&options.url),
                        %error,
                        retry_in_ms = delay.as_millis() as u64,
                        "waiting for the database"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(error) => return Err(error),
            }
        };
        let mut store = Self {
            pool,
            config,
            deliveries_channel: channel("deliveries", &schema),
            endpoints_channel: channel("endpoints", &schema),
            ingests: None,
        };
        store.migrate(target.unwrap_or_else(latest_version)).await?;
        store.ingests = Some(Arc::new(ingest::IngestWriters::start(
            &store,
            ingest_writers(options.pool_size),
            options.connect_timeout,
        )));
        Ok(store)
    }

    /// The schema tables live in.
    async fn schema_of(pool: &Pool) -> Result<String, StoreError> {
        let client = pool.get().await.map_err(pool_error)?;
        let row = client
            .query_one("SELECT current_schema()", &[])
            .await
            .map_err(pg_error)?;
        let schema: Option<String> = row.get(0);
        let schema = schema.ok_or_else(|| {
            StoreError::Unavailable(
                "no schema on the search_path exists; create it first".to_owned(),
            )
        })?;
        Ok(schema)
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    async fn migrate(&self, target: u32) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        // Waiting for another instance's migration, and a migration building an index over a
        // large table, can each take longer than any statement should at run time; the
        // statement timeout would fail the start, and every start after it the same way.
        client
            .batch_execute("SET statement_timeout = 0")
            .await
            .map_err(pg_error)?;
        client
            .execute(LOCK_MIGRATIONS, &[&MIGRATION_LOCK])
            .await
            .map_err(pg_error)?;
        let result = async {
            // Asked first: `CREATE TABLE IF NOT EXISTS` needs the right to create in the schema
            // even when the table is there, and a role that only reads and writes may run
            // billhook once the schema is up to date.
            let exists: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = current_schema()
                                      AND tablename = 'billhook_migrations')",
                    &[],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            if !exists {
                client
                    .batch_execute(
                        "CREATE TABLE billhook_migrations (
                            version    INTEGER PRIMARY KEY,
                            applied_at BIGINT NOT NULL,
                            checksum   TEXT COLLATE \"C\"
                        )",
                    )
                    .await
                    .map_err(pg_error)?;
            }
            // Written by a billhook from before checksums. Asked first: altering a table needs
            // its owner even when there is nothing to add, and a role that only writes may run
            // billhook once the schema is up to date.
            let has_checksums: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                                    WHERE table_schema = current_schema()
                                      AND table_name = 'billhook_migrations'
                                      AND column_name = 'checksum')",
                    &[],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            if !has_checksums {
                client
                    .batch_execute(
                        "ALTER TABLE billhook_migrations ADD COLUMN checksum TEXT COLLATE \"C\"",
                    )
                    .await
                    .map_err(pg_error)?;
            }
            let current = applied_version(&client).await?;
            if current > latest_version() {
                return Err(StoreError::SchemaTooNew {
                    found: current,
                    known: latest_version(),
                });
            }
            let applied: Vec<(u32, Option<String>)> = client
                .query(
                    "SELECT version, checksum FROM billhook_migrations ORDER BY version",
                    &[],
                )
                .await
                .map_err(pg_error)?
                .iter()
                .map(|row| {
                    let version: i32 = row.get(0);
                    (u32::try_from(version).unwrap_or(0), row.get(1))
                })
                .collect();
            for (version, checksum) in crate::unrecorded_checksums(&applied, MIGRATIONS)? {
                client
                    .execute(
                        "UPDATE billhook_migrations SET checksum = $2 WHERE version = $1",
                        &[&i32::try_from(version).unwrap_or(i32::MAX), &checksum],
                    )
                    .await
                    .map_err(pg_error)?;
            }
            for (version, sql) in MIGRATIONS
                .iter()
                .filter(|(v, _)| *v > current && *v <= target)
            {
                let transaction = client.transaction().await.map_err(pg_error)?;
                let applied = async {
                    transaction.batch_execute(sql).await?;
                    transaction
                        .execute(
                            "INSERT INTO billhook_migrations (version, applied_at, checksum)
                             VALUES ($1, $2, $3)",
                            &[
                                &i32::try_from(*version).unwrap_or(i32::MAX),
                                &billhook_core::time::Timestamp::now().unix_millis(),
                                &crate::migration_checksum(sql),
                            ],
                        )
                        .await?;
                    transaction.commit().await
                }
                .await;
                applied.map_err(|error| StoreError::Migration {
                    version: *version,
                    message: error.to_string(),
                })?;
                tracing::info!(version, "applied database migration");
            }
            Ok(())
        }
        .await;
        let _ = client.execute(UNLOCK_MIGRATIONS, &[&MIGRATION_LOCK]).await;
        // Back to the connection's own timeout before the pool lends it out again.
        let _ = client.batch_execute("RESET statement_timeout").await;
        result
    }

    pub(crate) async fn schema_version(&self) -> Result<u32, StoreError> {
        let client = self.client().await?;
        applied_version(&client).await
    }

    /// Answers only while a write could succeed: a server that answers but is a standby (a
    /// failover left the address on it) or read-only by default refuses every write.
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let writable: bool = client
            .query_one(
                "SELECT NOT pg_is_in_recovery()
                    AND current_setting('transaction_read_only') = 'off'",
                &[],
            )
            .await
            .map_err(pg_error)?
            .get(0);
        if !writable {
            return Err(StoreError::Unavailable(
                "the database is read-only: a standby, or default_transaction_read_only".to_owned(),
            ));
        }
        Ok(())
    }

    pub(crate) async fn close(&self) {
        if let Some(writers) = &self.ingests {
            writers.close().await;
        }
        self.pool.close();
    }

    /// Starts a connection that LISTENs for changes and forwards them (checking every
    /// [`LISTEN_HEARTBEAT`] that it still answers); it reconnects with
    /// backoff when the connection drops, and says `Reconnected` each time it listens (the
    /// first included) so listeners can catch up.
    pub(crate) fn subscribe(&self) -> mpsc::Receiver<Notification> {
        let (sender, receiver) = mpsc::channel(64);
        let config = self.config.clone();
        let deliveries = self.deliveries_channel.clone();
        let endpoints = self.endpoints_channel.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(250);
            while !sender.is_closed() {
                match config.connect(NoTls).await {
                    Ok((client, mut connection)) => {
                        delay = Duration::from_millis(250);
                        let mut messages =
                            futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                        let listen = format!("LISTEN \"{deliveries}\"; LISTEN \"{endpoints}\";");
                        let drive = async {
                            while let Some(message) = messages.next().await {
                                match message {
                                    Ok(AsyncMessage::Notification(notification)) => {
                                        let kind = if notification.channel() == endpoints {
                                            Notification::Endpoints
                                        } else {
                                            Notification::Deliveries
                                        };
                                        if sender.send(kind).await.is_err() {
                                            return;
                                        }
                                    }
                                    Ok(_) => {}
                                    Err(_) => return,
                                }
                            }
                        };
                        let subscribe = async {
                            if client.batch_execute(&listen).await.is_err() {
                                return;
                            }
                            // The first time too: what changed between the caller's initial
                            // load and this LISTEN (another instance creating an endpoint as
                            // this one starts) would otherwise be missed until a restart.
                            let _ = sender.send(Notification::Reconnected).await;
                            // A connection a NAT or a load balancer dropped without a word hears
                            // nothing and fails nothing (TCP keepalive notices after two hours),
                            // and every change made meanwhile would be missed. A query now and
                            // then finds out, and the reconnection catches up.
                            loop {
                                tokio::time::sleep(LISTEN_HEARTBEAT).await;
                                let answered = tokio::time::timeout(
                                    LISTEN_HEARTBEAT_TIMEOUT,
                                    client.simple_query("SELECT 1"),
                                )
                                .await;
                                if !matches!(answered, Ok(Ok(_))) {
                                    return;
                                }
                            }
                        };
                        tokio::select! {
                            () = drive => {}
                            () = subscribe => {}
                            () = sender.closed() => return,
                        }
                        tracing::warn!("lost the database notification connection; reconnecting");
                    }
                    Err(error) => {
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot open the notification connection");
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        });
        receiver
    }
}

/// How often the notification connection is asked whether it still answers, and how long it
/// has to.
const LISTEN_HEARTBEAT: Duration = Duration::from_secs(30);
const LISTEN_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

async fn applied_version(client: &tokio_postgres::Client) -> Result<u32, StoreError> {
    let row = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM billhook_migrations",
            &[],
        )
        .await
        .map_err(pg_error)?;
    let version: i32 = row.get(0);
    Ok(u32::try_from(version).unwrap_or(0))
}

/// One column of `rows`, for statements that read their rows from arrays (`unnest`): one
/// statement for many rows.
pub(crate) fn column<'a, T, U>(rows: &'a [T], value: impl Fn(&'a T) -> U) -> Vec<U> {
    rows.iter().map(value).collect()
}

/// Runs `sql` as a statement the connection prepares once and keeps; returns the rows affected.
pub(crate) async fn execute_cached<C: GenericClient>(
    client: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
    client.execute(&statement, params).await.map_err(pg_error)
}

/// `i64` for `u64`-ish values stored as BIGINT.
pub(crate) fn big(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `i32` for small unsigned values stored as INTEGER.
pub(crate) fn small(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// Back from INTEGER.
pub(crate) fn unsigned(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

/// Creates schema `name` in the database at `url` and returns a URL whose connections use it,
/// so a scratch deployment (a bench run) gets tables of its own in a shared database.
pub async fn create_scratch_schema(url: &str, name: &str) -> Result<String, StoreError> {
    let client = scratch_client(url).await?;
    client
        .batch_execute(&format!("CREATE SCHEMA {}", quoted_identifier(name)?))
        .await
        .map_err(pg_error)?;
    let separator = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{separator}options=-c%20search_path%3D{name}"))
}

/// Drops a schema made by [`create_scratch_schema`] with everything in it.
pub async fn drop_scratch_schema(url: &str, name: &str) -> Result<(), StoreError> {
    let client = scratch_client(url).await?;
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            quoted_identifier(name)?
        ))
        .await
        .map_err(pg_error)
}

async fn scratch_client(url: &str) -> Result<tokio_postgres::Client, StoreError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| StoreError::Unavailable(format!("{}: {e}", crate::redact_url(url))))?;
    tokio::spawn(connection);
    Ok(client)
}

/// `name` as an SQL identifier; only lower-case letters, digits and `_`, so it also survives a
/// URL's `search_path` option unescaped.
fn quoted_identifier(name: &str) -> Result<String, StoreError> {
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain {
        Ok(format!("\"{name}\""))
    } else {
        Err(StoreError::Database(format!(
            "`{name}` is not a plain schema name"
        )))
    }
}
