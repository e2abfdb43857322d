//! The embedded SQLite backend.
//!
//! One writer thread owns the only writing connection. Callers hand it write jobs over a channel;
//! it runs every job waiting in the queue inside one transaction, each job in its own savepoint
//! (so one failing job does not undo the others), commits once with `synchronous=FULL` (one
//! fsync for the whole group), and only then answers each caller. Under load the queue fills
//! while a commit is in progress, so the next transaction carries more jobs: group commit with no
//! timer and no added latency when idle. Reads use a small pool of read-only connections on the
//! blocking thread pool; WAL mode lets them proceed while the writer commits.

mod access;
mod delivery;
mod endpoints;
mod ingest;
mod ledger;
mod operations;
mod read;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

use crate::StoreError;

/// Migrations, in order. A database records the versions it has applied.
const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_ingest.sql")),
    (2, include_str!("../../migrations/sqlite/0002_delivery.sql")),
    (3, include_str!("../../migrations/sqlite/0003_ledger.sql")),
    (
        4,
        include_str!("../../migrations/sqlite/0004_operations.sql"),
    ),
    (
        5,
        include_str!("../../migrations/sqlite/0005_lean_indexes.sql"),
    ),
];

/// At most this many jobs share one transaction.
const MAX_GROUP: usize = 512;

/// A unit of work for the writer thread. It runs inside the open transaction (or, given no
/// connection, learns that the transaction could not start) and returns what to do once the
/// commit's outcome is known.
type Job = Box<dyn FnOnce(Option<&Connection>) -> Completion + Send>;
type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

pub(crate) struct SqliteStore {
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Arc<Readers>,
}

impl SqliteStore {
    pub(crate) async fn open(path: &Path, target: Option<u32>) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let connection = tokio::task::spawn_blocking({
            let path = path.clone();
            move || open_writer(&path, target.unwrap_or_else(latest_version))
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))??;
        let checkpointer = Checkpointer::start(&path)?;
        let (sender, receiver) = mpsc::channel::<Job>(4096);
        let thread = std::thread::Builder::new()
            .name("billhook-sqlite-writer".to_owned())
            .spawn(move || write_loop(connection, receiver, checkpointer))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            writer: Mutex::new(Some(sender)),
            writer_thread: Mutex::new(Some(thread)),
            readers: Arc::new(Readers {
                path,
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Runs `work` in the next group transaction and returns its result once that transaction
    /// has committed. If `work` fails its savepoint is rolled back and the others still commit.
    pub(crate) async fn write<R, F>(&self, work: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |connection| {
            let result = match connection {
                Some(connection) => in_savepoint(connection, work),
                None => Err(StoreError::Unavailable(
                    "the write transaction could not start".to_owned(),
                )),
            };
            Box::new(move |commit: Result<(), StoreError>| {
                let _ = reply.send(commit.and(result));
            })
        });
        let sender = self
            .writer
            .lock()
            .map_err(|_| StoreError::Unavailable("writer lock poisoned".to_owned()))?
            .clone()
            .ok_or_else(|| StoreError::Unavailable("the store is closed".to_owned()))?;
        sender
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("the writer thread has stopped".to_owned()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the writer thread has stopped".to_owned()))?
    }

    /// Runs `work` on a read-only connection from the pool.
    pub(crate) async fn read<R, F>(&self, work: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let connection = readers.take()?;
            let result = work(&connection);
            readers.give_back(connection);
            result
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }

    pub(crate) async fn schema_version(&self) -> Result<u32, StoreError> {
        self.read(applied_version).await
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        self.read(|connection| {
            connection
                .query_row("SELECT 1", [], |_| Ok(()))
                .map_err(db_error)
        })
        .await
    }

    pub(crate) async fn close(&self) {
        let sender = self.writer.lock().ok().and_then(|mut w| w.take());
        drop(sender);
        let thread = self.writer_thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn in_savepoint<R>(
    connection: &Connection,
    work: impl FnOnce(&Connection) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    // Cached statements: a group runs hundreds of jobs, each opening and closing a savepoint.
    let run = |sql: &str| {
        connection
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map_err(db_error)
    };
    run("SAVEPOINT job")?;
    match work(connection) {
        Ok(result) => {
            run("RELEASE job")?;
            Ok(result)
        }
        Err(error) => {
            let _ = run("ROLLBACK TO job").and_then(|_| run("RELEASE job"));
            Err(error)
        }
    }
}

fn write_loop(
    connection: Connection,
    mut receiver: mpsc::Receiver<Job>,
    checkpointer: Checkpointer,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = receiver.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        if let Err(error) = connection.execute_batch("BEGIN IMMEDIATE") {
            let error = db_error(error);
            tracing::error!(%error, "a write group could not start");
            for job in group.drain(..) {
                job(None)(Err(error.clone()));
            }
            continue;
        }
        let completions: Vec<Completion> =
            group.drain(..).map(|job| job(Some(&connection))).collect();
        let commit = connection.execute_batch("COMMIT").map_err(db_error);
        if commit.is_err() {
            let _ = connection.execute_batch("ROLLBACK");
        }
        for completion in completions {
            completion(commit.clone());
        }
        checkpointer.nudge();
    }
}

/// Copies committed WAL frames into the database file on a thread of its own, so the writer
/// never pays for a checkpoint inside a commit (SQLite's automatic checkpoint would run it on the
/// writer, holding up every caller of the group). The writer nudges it after each commit;
/// nudges that arrive while it works or rests coalesce into one.
struct Checkpointer {
    nudge: std::sync::mpsc::SyncSender<()>,
}

impl Checkpointer {
    /// Pause after a checkpoint, so that one checkpoint covers many commits.
    const REST: std::time::Duration = std::time::Duration::from_millis(50);

    fn start(path: &Path) -> Result<Self, StoreError> {
        let connection = Connection::open(path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        connection
            .execute_batch("PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;")
            .map_err(db_error)?;
        let (nudge, nudged) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("billhook-sqlite-checkpointer".to_owned())
            .spawn(move || {
                let checkpoint = |mode: &str| {
                    if let Err(error) =
                        connection
                            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
                    {
                        tracing::warn!(%error, "WAL checkpoint failed");
                    }
                };
                // Ends when the writer, and with it the sender, is gone.
                while nudged.recv().is_ok() {
                    checkpoint("PASSIVE");
                    std::thread::sleep(Self::REST);
                }
                checkpoint("TRUNCATE");
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the checkpointer: {e}")))?;
        Ok(Self { nudge })
    }

    fn nudge(&self) {
        // Full means a checkpoint is already due.
        let _ = self.nudge.try_send(());
    }
}

fn open_writer(path: &Path, target: u32) -> Result<Connection, StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
        })?;
    }
    let connection = Connection::open(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    connection
        .execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA wal_autocheckpoint = 0;
             PRAGMA busy_timeout = 5000;
             PRAGMA temp_store = MEMORY;
             PRAGMA cache_size = -8000;",
        )
        .map_err(db_error)?;
    migrate(&connection, target)?;
    Ok(connection)
}

/// The highest migration this build knows.
pub(crate) fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |(version, _)| *version)
}

fn applied_version(connection: &Connection) -> Result<u32, StoreError> {
    connection
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM billhook_migrations",
            [],
            |row| row.get(0),
        )
        .map_err(db_error)
}

/// Applies every migration newer than the database up to `target`, each in its own transaction.
fn migrate(connection: &Connection, target: u32) -> Result<(), StoreError> {
    connection
        .execute_batch(
            "CREATE TABLE IF NOT EXISTS billhook_migrations (
                version    INTEGER PRIMARY KEY,
                applied_at INTEGER NOT NULL
            )",
        )
        .map_err(db_error)?;
    let current = applied_version(connection)?;
    if current > latest_version() {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known: latest_version(),
        });
    }
    for (version, sql) in MIGRATIONS
        .iter()
        .filter(|(v, _)| *v > current && *v <= target)
    {
        let apply = || -> rusqlite::Result<()> {
            connection.execute_batch("BEGIN IMMEDIATE")?;
            connection.execute_batch(sql)?;
            connection.execute(
                "INSERT INTO billhook_migrations (version, applied_at) VALUES (?1, ?2)",
                (version, billhook_core::time::Timestamp::now().unix_millis()),
            )?;
            connection.execute_batch("COMMIT")
        };
        if let Err(error) = apply() {
            let _ = connection.execute_batch("ROLLBACK");
            return Err(StoreError::Migration {
                version: *version,
                message: error.to_string(),
            });
        }
        tracing::info!(version, "applied database migration");
    }
    Ok(())
}

/// A pool of read-only connections, opened on demand and kept for reuse.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    const MAX_IDLE: usize = 8;

    fn take(&self) -> Result<Connection, StoreError> {
        if let Some(connection) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            return Ok(connection);
        }
        let connection = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::Unavailable(format!("cannot open a reader: {e}")))?;
        connection
            .execute_batch("PRAGMA busy_timeout = 5000; PRAGMA cache_size = -2000;")
            .map_err(db_error)?;
        Ok(connection)
    }

    fn give_back(&self, connection: Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < Self::MAX_IDLE
        {
            idle.push(connection);
        }
    }
}

pub(crate) fn db_error(error: rusqlite::Error) -> StoreError {
    StoreError::Database(error.to_string())
}
