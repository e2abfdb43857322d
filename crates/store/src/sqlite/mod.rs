//! The embedded SQLite backend.
//!
//! One writer thread owns the only writing connection. Callers hand it write jobs over a channel;
//! it runs every job waiting in the queue inside one transaction (should one fail, the group is
//! run again with each job in its own savepoint, so one failing job does not undo the others) and
//! commits once. A syncer thread fsyncs the WAL and only then answers the callers of every group
//! committed before that fsync began ([`Syncer`]); a checkpointer thread copies the WAL back
//! into the database file ([`Checkpointer`]). Under load the queue fills while a group runs, so
//! the next transaction carries more jobs: group commit with no timer and no added latency when
//! idle. Reads use a small pool of read-only connections on the blocking thread pool; WAL mode
//! lets them proceed while the writer commits.

mod access;
mod delivery;
mod endpoints;
mod ingest;
mod ledger;
mod operations;
mod read;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
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
    (
        6,
        include_str!("../../migrations/sqlite/0006_clustered_outbox.sql"),
    ),
    (
        7,
        include_str!("../../migrations/sqlite/0007_ledger_identity.sql"),
    ),
    (
        8,
        include_str!("../../migrations/sqlite/0008_ledger_kind_in_ids.sql"),
    ),
    (
        9,
        include_str!("../../migrations/sqlite/0009_events_by_ledger_entity.sql"),
    ),
    (
        10,
        include_str!("../../migrations/sqlite/0010_deliveries_by_message.sql"),
    ),
    (
        11,
        include_str!("../../migrations/sqlite/0011_unstamped_ledger_times.sql"),
    ),
    (
        12,
        include_str!("../../migrations/sqlite/0012_ledger_sandbox.sql"),
    ),
    (
        13,
        include_str!("../../migrations/sqlite/0013_held_and_dead_deliveries.sql"),
    ),
    (
        14,
        include_str!("../../migrations/sqlite/0014_former_numbers.sql"),
    ),
];

/// At most this many jobs share one transaction.
const MAX_GROUP: usize = 512;

/// At most this many writes wait for the writer.
const QUEUE: usize = 4096;

/// How long a write waits for room in the writer's queue before it is refused (503): a writer
/// that far behind (a stalled disk) would otherwise have every request that reached it hold its
/// body in memory until it recovers, each one long since timed out and sent again.
const QUEUE_WAIT: Duration = Duration::from_secs(5);

/// At most this many committed groups wait for an fsync; past them the writer waits too, so a
/// hung fsync stops the writer taking more from its queue.
const SYNC_BACKLOG: usize = 64;

/// Prepared statements the writer keeps: more than every statement it runs.
const WRITER_STATEMENT_CACHE: usize = 256;

/// A write waiting for the writer thread. It runs inside a group's transaction, possibly twice
/// (see [`run_group`]), and is answered once the transaction's fate is known.
trait PendingWrite: Send {
    /// Runs the work on the open transaction, keeping its result; false if it failed.
    fn run(&mut self, connection: &Connection) -> bool;
    /// Answers the caller: the work's result if `commit` succeeded, else the commit's error.
    fn answer(self: Box<Self>, commit: Result<(), StoreError>);
}

struct Write<R, F> {
    work: F,
    result: Option<Result<R, StoreError>>,
    reply: oneshot::Sender<Result<R, StoreError>>,
}

impl<R, F> PendingWrite for Write<R, F>
where
    R: Send,
    F: Fn(&Connection) -> Result<R, StoreError> + Send,
{
    fn run(&mut self, connection: &Connection) -> bool {
        // A bug that panics in one write (ledger code runs here) fails that write, which is
        // undone like any other failure, rather than unwinding the thread every write needs.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.work)(connection)))
                .unwrap_or_else(|panic| Err(StoreError::panicked(panic.as_ref())));
        let succeeded = result.is_ok();
        self.result = Some(result);
        succeeded
    }

    fn answer(self: Box<Self>, commit: Result<(), StoreError>) {
        let Self { result, reply, .. } = *self;
        let result = commit.and_then(|()| {
            result.unwrap_or_else(|| {
                Err(StoreError::Unavailable(
                    "the write transaction could not start".to_owned(),
                ))
            })
        });
        let _ = reply.send(result);
    }
}

type Job = Box<dyn PendingWrite>;

pub(crate) struct SqliteStore {
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The syncer's failure, for readiness: once set, no write succeeds until a restart.
    durability_failure: Arc<OnceLock<String>>,
    /// When the fsync under way began, for readiness: see [`Wal::syncing_since`].
    syncing_since: Arc<Mutex<Option<Instant>>>,
    readers: Arc<Readers>,
    /// Held from open to close: see [`lock_exclusively`].
    lock: Mutex<Option<std::fs::File>>,
    /// [`QUEUE_WAIT`], shorter in tests.
    queue_wait: Duration,
}

impl SqliteStore {
    pub(crate) async fn open(path: &Path, target: Option<u32>) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let lock = lock_exclusively(&path)?;
        let connection = tokio::task::spawn_blocking({
            let path = path.clone();
            move || open_writer(&path, target.unwrap_or_else(latest_version))
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))??;
        // The file SQLite opened, symbolic links resolved: its WAL lies beside that one.
        let database = connection
            .path()
            .filter(|p| !p.is_empty())
            .map_or_else(|| path.clone(), PathBuf::from);
        let syncer = Syncer::start(&database)?;
        let checkpointer = Checkpointer::start(&path, Arc::clone(&syncer.failure))?;
        let durability_failure = Arc::clone(&syncer.failure);
        let syncing_since = Arc::clone(&syncer.syncing_since);
        let (sender, receiver) = mpsc::channel::<Job>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("billhook-sqlite-writer".to_owned())
            .spawn(move || write_loop(connection, receiver, syncer, checkpointer))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            writer: Mutex::new(Some(sender)),
            writer_thread: Mutex::new(Some(thread)),
            durability_failure,
            syncing_since,
            readers: Arc::new(Readers {
                path,
                idle: Mutex::new(Vec::new()),
            }),
            lock: Mutex::new(Some(lock)),
            queue_wait: QUEUE_WAIT,
        })
    }

    /// Runs `work` in the next group transaction and returns its result once that transaction
    /// has committed. If `work` fails, what it wrote is undone and the others still commit.
    /// `work` may run twice (the first run undone), so it must not act outside the connection.
    pub(crate) async fn write<R, F>(&self, work: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: Fn(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(Write {
            work,
            result: None,
            reply,
        });
        let sender = self
            .writer
            .lock()
            .map_err(|_| StoreError::Unavailable("writer lock poisoned".to_owned()))?
            .clone()
            .ok_or_else(|| StoreError::Unavailable("the store is closed".to_owned()))?;
        let stopped = || StoreError::Unavailable("the writer thread has stopped".to_owned());
        // A timer only when there is no room: the common case stays one channel send.
        match sender.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(stopped()),
            Err(mpsc::error::TrySendError::Full(job)) => {
                match tokio::time::timeout(self.queue_wait, sender.send(job)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(stopped()),
                    Err(_) => {
                        return Err(StoreError::Unavailable(
                            "the writer is behind: its queue is full".to_owned(),
                        ));
                    }
                }
            }
        }
        // Only the store's own sender may keep the writer running: `close` drops it and waits
        // for the thread, which a clone held by a caller awaiting its answer would hold up.
        drop(sender);
        answer.await.map_err(|_| stopped())?
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

    /// Ready when reads work and writes can: the writer is running, no fsync has failed and
    /// none has hung. A failure ends every ingest with a 503 until a restart, which a probe must
    /// see; a hung fsync (a dead network volume, a device stuck in the kernel) fails nothing but
    /// leaves every acknowledgement waiting, and only this check tells.
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        if let Some(error) = self.durability_failure.get() {
            return Err(Wal::failed(error));
        }
        let syncing_for = self
            .syncing_since
            .lock()
            .map_err(|_| StoreError::Unavailable("syncer state poisoned".to_owned()))?
            .map(|since| since.elapsed());
        if let Some(waited) = syncing_for.filter(|waited| *waited >= STALLED_SYNC) {
            return Err(StoreError::Unavailable(format!(
                "an fsync of the write-ahead log has not returned for {} s",
                waited.as_secs()
            )));
        }
        let writer_running = self
            .writer
            .lock()
            .map_err(|_| StoreError::Unavailable("writer lock poisoned".to_owned()))?
            .as_ref()
            .is_some_and(|sender| !sender.is_closed());
        if !writer_running {
            return Err(StoreError::Unavailable(
                "the writer thread has stopped".to_owned(),
            ));
        }
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
        // Only once the writer is done may another process take the file over.
        drop(self.lock.lock().ok().and_then(|mut lock| lock.take()));
    }
}

/// Makes this process the database's only user until [`SqliteStore::close`]. Two processes on
/// one file would each take the other's deliveries for abandoned (a single-process store
/// releases every lease when it opens) and send them again, and fight over the write lock.
///
/// The lock is on a file of its own beside the database: closing a descriptor of the database
/// file itself would drop the POSIX locks SQLite holds on it through its own descriptors.
fn lock_exclusively(database: &Path) -> Result<std::fs::File, StoreError> {
    if let Some(directory) = database.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(directory).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", directory.display()))
        })?;
    }
    create_private(database)?;
    // Beside the file itself, symbolic links resolved: two paths to one database take one lock.
    let resolved = std::fs::canonicalize(database).map_err(|e| {
        StoreError::Unavailable(format!("cannot resolve {}: {e}", database.display()))
    })?;
    let mut lock_path = resolved.into_os_string();
    lock_path.push("-lock");
    let lock_path = PathBuf::from(lock_path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            StoreError::Unavailable(format!("cannot open {}: {e}", lock_path.display()))
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Unavailable(format!(
            "{} is in use by another billhook process (it holds {}); stop that one first",
            database.display(),
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Unavailable(format!(
            "cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}

fn write_loop(
    connection: Connection,
    mut receiver: mpsc::Receiver<Job>,
    syncer: Syncer,
    checkpointer: Checkpointer,
) {
    while let Some(first) = receiver.blocking_recv() {
        let mut group = Vec::with_capacity(receiver.len() + 1);
        group.push(first);
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        checkpointer.restart_if_wanted(&connection);
        // After a failed fsync (or checkpoint, just now included) nothing more is committed: a
        // write its caller is told failed should not be there to read, and the WAL can no
        // longer be trusted to hold it.
        if let Some(error) = syncer.failure() {
            for job in group {
                job.answer(Err(error.clone()));
            }
            continue;
        }
        match run_group(&connection, &mut group) {
            Ok(()) => syncer.make_durable(group),
            Err(error) => {
                tracing::error!(%error, "a write group failed to commit");
                for job in group {
                    job.answer(Err(error.clone()));
                }
            }
        }
        checkpointer.nudge();
    }
    syncer.finish();
    // Only now, with every commit durable: truncates the WAL and waits for it.
    drop(checkpointer);
}

/// Runs a group of jobs in one transaction and commits it.
///
/// Jobs run back to back without savepoints: a savepoint per job would copy every page a job
/// touches into the statement journal, and jobs almost never fail. When one does, the
/// transaction is rolled back and run again with each job in its own savepoint, so the failure
/// undoes only its own writes. The failed job keeps the error of its first run: it saw the same
/// state then as it would now.
fn run_group(connection: &Connection, group: &mut [Job]) -> Result<(), StoreError> {
    let execute = |sql: &str| {
        connection
            .prepare_cached(sql)
            .and_then(|mut statement| statement.execute([]))
            .map(drop)
            .map_err(db_error)
    };
    let in_savepoints = |group: &mut [Job], skip: usize| -> Result<(), StoreError> {
        for (index, job) in group.iter_mut().enumerate() {
            if index == skip {
                continue;
            }
            execute("SAVEPOINT job")?;
            if !job.run(connection) {
                execute("ROLLBACK TO job")?;
            }
            execute("RELEASE job")?;
        }
        Ok(())
    };
    execute("BEGIN IMMEDIATE")?;
    let outcome = match group.iter_mut().position(|job| !job.run(connection)) {
        None => Ok(()),
        Some(failed) => {
            // Some errors (a full disk) end the transaction themselves; start afresh either way.
            let _ = execute("ROLLBACK");
            execute("BEGIN IMMEDIATE").and_then(|()| in_savepoints(group, failed))
        }
    }
    .and_then(|()| execute("COMMIT"));
    if outcome.is_err() {
        // Whatever failed, leave no transaction open for the next group.
        let _ = connection.execute_batch("ROLLBACK");
    }
    outcome
}

/// Makes committed groups durable, then answers their callers, on a thread of its own.
///
/// The writer commits with `synchronous = NORMAL`: a commit writes its frames to the WAL but does
/// not fsync it. This thread fsyncs the WAL and only then answers the groups committed before the
/// fsync began, so every acknowledgement still follows an fsync covering its writes, as with
/// `synchronous = FULL`, while the writer runs the next group instead of waiting on the disk.
/// Groups that commit during an fsync share the next one. Until its fsync, a committed group is
/// visible to readers but nothing has been answered, acknowledged or handed to delivery.
struct Syncer {
    groups: std::sync::mpsc::SyncSender<Vec<Job>>,
    thread: std::thread::JoinHandle<()>,
    failure: Arc<OnceLock<String>>,
    syncing_since: Arc<Mutex<Option<Instant>>>,
}

/// How long an fsync may take before the store stops calling itself ready. A healthy disk takes
/// milliseconds, a busy one under a second; by ten seconds every request waiting on it has been
/// given up by its provider, which will send it again, better to an instance that can answer.
const STALLED_SYNC: Duration = Duration::from_secs(10);

impl Syncer {
    fn start(database: &Path) -> Result<Self, StoreError> {
        let mut wal_path = database.as_os_str().to_owned();
        wal_path.push("-wal");
        let failure = Arc::new(OnceLock::new());
        let syncing_since = Arc::new(Mutex::new(None));
        let wal = Wal {
            path: PathBuf::from(wal_path),
            file: None,
            failure: Arc::clone(&failure),
            syncing_since: Arc::clone(&syncing_since),
        };
        let (groups, committed) = std::sync::mpsc::sync_channel::<Vec<Job>>(SYNC_BACKLOG);
        let thread = std::thread::Builder::new()
            .name("billhook-sqlite-syncer".to_owned())
            .spawn(move || sync_loop(wal, committed))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the syncer: {e}")))?;
        Ok(Self {
            groups,
            thread,
            failure,
            syncing_since,
        })
    }

    /// The error every write gets once an fsync has failed.
    fn failure(&self) -> Option<StoreError> {
        self.failure.get().map(|error| Wal::failed(error))
    }

    fn make_durable(&self, group: Vec<Job>) {
        if let Err(std::sync::mpsc::SendError(group)) = self.groups.send(group) {
            let error = StoreError::Unavailable("the syncer thread has stopped".to_owned());
            for job in group {
                job.answer(Err(error.clone()));
            }
        }
    }

    /// Waits until every committed group has been made durable and answered.
    fn finish(self) {
        drop(self.groups);
        let _ = self.thread.join();
    }
}

fn sync_loop(mut wal: Wal, committed: std::sync::mpsc::Receiver<Vec<Job>>) {
    while let Ok(first) = committed.recv() {
        let groups: Vec<Vec<Job>> = std::iter::once(first).chain(committed.try_iter()).collect();
        let durable = wal.sync();
        for job in groups.into_iter().flatten() {
            job.answer(durable.clone());
        }
    }
}

/// The writer's write-ahead log, as the syncer sees it.
struct Wal {
    path: PathBuf,
    file: Option<std::fs::File>,
    /// Set by the first failed fsync and kept: after one, the kernel may have dropped writes
    /// that a later fsync would not report, so nothing is acknowledged, nor committed, again
    /// until a restart. Shared with the writer.
    failure: Arc<OnceLock<String>>,
    /// When the fsync under way began; `None` between fsyncs. An fsync that never returns
    /// (a dead network volume) neither fails nor lets anything be acknowledged.
    syncing_since: Arc<Mutex<Option<Instant>>>,
}

impl Wal {
    fn sync(&mut self) -> Result<(), StoreError> {
        if self.failure.get().is_none()
            && let Err(error) = self.timed_sync()
        {
            tracing::error!(
                %error,
                path = %self.path.display(),
                "cannot make writes durable; no write will be accepted until billhook restarts"
            );
            let _ = self.failure.set(error.to_string());
        }
        match self.failure.get() {
            None => Ok(()),
            Some(error) => Err(Self::failed(error)),
        }
    }

    fn failed(error: &str) -> StoreError {
        StoreError::Unavailable(format!("writes cannot be made durable: {error}"))
    }

    fn timed_sync(&mut self) -> std::io::Result<()> {
        self.mark_syncing(Some(Instant::now()));
        let synced = self.try_sync();
        self.mark_syncing(None);
        synced
    }

    fn mark_syncing(&self, since: Option<Instant>) {
        if let Ok(mut syncing_since) = self.syncing_since.lock() {
            *syncing_since = since;
        }
    }

    fn try_sync(&mut self) -> std::io::Result<()> {
        if self.file.is_none() {
            // SQLite creates the WAL at the first commit and keeps it (the writer's connection
            // holds it open), so one handle serves for the store's life. Its directory entry is
            // made durable once, as SQLite does when it syncs a new journal.
            let file = std::fs::File::open(&self.path)?;
            let directory = match self.path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            std::fs::File::open(directory)?.sync_all()?;
            self.file = Some(file);
        }
        self.file.as_ref().map_or(Ok(()), std::fs::File::sync_data)
    }
}

/// Copies committed WAL frames into the database file on a thread of its own, so the writer
/// never pays for a checkpoint inside a commit (SQLite's automatic checkpoint would run it on the
/// writer, holding up every caller of the group). The writer nudges it after each commit;
/// nudges that arrive while it works or rests coalesce into one.
///
/// SQLite writes the WAL from its start again only when a write transaction begins with every
/// frame already copied back, and a writer that never pauses never lets the checkpointer catch
/// up: the WAL would grow without bound. So once the WAL holds more than
/// [`Checkpointer::RESTART_FRAMES`], the checkpointer asks the writer to copy back the last few
/// frames itself between two groups ([`Checkpointer::restart_if_wanted`]), after which its next
/// transaction starts the WAL over.
///
/// Dropped by the writer when the store closes: it then stops resting, truncates the WAL and is
/// waited for, so a cleanly stopped store leaves no WAL to replay.
///
/// A checkpoint that fails writing to disk is a durability failure like a failed fsync (the
/// syncer's `failure`, which stops writes and readiness): the database file may not hold what
/// the WAL would next be started over without. From then on no checkpoint runs, not even the
/// last, so the WAL is left to the next start's recovery, which checks every frame.
struct Checkpointer {
    nudge: std::sync::mpsc::SyncSender<()>,
    restart_wanted: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    failure: Arc<OnceLock<String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Pause after a checkpoint, so that one checkpoint covers many commits: a page that many
    /// commits rewrote (the last leaf of an index on ids, say) is copied back once per pass.
    const REST: Duration = Duration::from_secs(1);
    /// WAL frames (pages) beyond which the WAL is started over: 256 MiB of 4 KiB pages, a few
    /// seconds of writes at full speed. Each restart costs the writer a checkpoint of its own
    /// (and its fsyncs) between two groups, so restarting often is what delays acknowledgements;
    /// the price of a long WAL is disk space and a longer scan of it when the store reopens
    /// after a crash.
    const RESTART_FRAMES: i64 = 65_536;

    fn start(path: &Path, failure: Arc<OnceLock<String>>) -> Result<Self, StoreError> {
        let connection = Connection::open(path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        connection
            .execute_batch("PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;")
            .map_err(db_error)?;
        // Its checkpoints are the ones it decides on, none when it closes.
        connection
            .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(db_error)?;
        let (nudge, nudged) = std::sync::mpsc::sync_channel::<()>(1);
        let restart_wanted = Arc::new(AtomicBool::new(false));
        let stopping = Arc::new(AtomicBool::new(false));
        let wanted = Arc::clone(&restart_wanted);
        let stop = Arc::clone(&stopping);
        let failed = Arc::clone(&failure);
        let thread = std::thread::Builder::new()
            .name("billhook-sqlite-checkpointer".to_owned())
            .spawn(move || {
                while nudged.recv().is_ok() && !stop.load(Ordering::Acquire) {
                    if failed.get().is_some() {
                        continue;
                    }
                    if let Some(progress) = checkpoint(&connection, "PASSIVE", &failed)
                        && progress.in_wal > Self::RESTART_FRAMES
                    {
                        wanted.store(true, Ordering::Relaxed);
                    }
                    // While a restart is wanted, keep up, so the writer has little left to copy.
                    if !wanted.load(Ordering::Relaxed) {
                        // Nudges that come meanwhile wait in the channel; only stopping wakes it.
                        let until = Instant::now() + Self::REST;
                        while !stop.load(Ordering::Acquire) {
                            let left = until.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                break;
                            }
                            std::thread::park_timeout(left);
                        }
                    }
                }
                if failed.get().is_some() {
                    tracing::warn!("writing to disk failed; the WAL is left to replay");
                    return;
                }
                // A read still running can hold frames back; the WAL is then replayed at the
                // next start, which is safe but slower, and worth a line in the log.
                if checkpoint(&connection, "TRUNCATE", &failed)
                    .is_some_and(|progress| progress.busy)
                {
                    tracing::warn!(
                        "a read held the last checkpoint back; the WAL is left to replay"
                    );
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the checkpointer: {e}")))?;
        Ok(Self {
            nudge,
            restart_wanted,
            stopping,
            failure,
            thread: Some(thread),
        })
    }

    /// Run by the writer between groups: if the WAL has grown past its limit, copies back what
    /// the checkpointer has not, so that the next transaction starts the WAL over. Costs the
    /// writer one short checkpoint (the frames since the checkpointer's last pass) per
    /// [`Self::RESTART_FRAMES`] written.
    fn restart_if_wanted(&self, writer: &Connection) {
        if !self.restart_wanted.load(Ordering::Relaxed) || self.failure.get().is_some() {
            return;
        }
        // A reader still using old frames can leave some uncopied; then the next group tries again.
        if let Some(progress) = checkpoint(writer, "PASSIVE", &self.failure)
            && !progress.busy
            && progress.copied >= progress.in_wal
        {
            self.restart_wanted.store(false, Ordering::Relaxed);
        }
    }

    fn nudge(&self) {
        // Full means a checkpoint is already due.
        let _ = self.nudge.try_send(());
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            // Wakes it whether it waits for a nudge or rests.
            let _ = self.nudge.try_send(());
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// What a checkpoint reported: whether another checkpoint held it off, the frames in the WAL,
/// and how many of them are in the database file.
struct CheckpointProgress {
    busy: bool,
    in_wal: i64,
    copied: i64,
}

/// Runs a checkpoint; one that failed writing to disk sets `failure` (see [`Checkpointer`]).
fn checkpoint(
    connection: &Connection,
    mode: &str,
    failure: &OnceLock<String>,
) -> Option<CheckpointProgress> {
    connection
        .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
            Ok(CheckpointProgress {
                busy: row.get::<_, i64>(0)? != 0,
                in_wal: row.get(1)?,
                copied: row.get(2)?,
            })
        })
        .inspect_err(|error| {
            tracing::warn!(%error, "WAL checkpoint failed");
            // A full disk fails the write before anything moves, and a later checkpoint can
            // do it again; an I/O error may have lost what was written.
            if error.sqlite_error_code() == Some(rusqlite::ErrorCode::SystemIoFailure) {
                tracing::error!(%error, "a WAL checkpoint failed to write; writes stop until a restart");
                let _ = failure.set(format!("a WAL checkpoint failed: {error}"));
            }
        })
        .ok()
}

/// Creates the database file, when it is new, readable by its owner only: it holds the
/// endpoints' signing secrets and every raw body. SQLite gives its WAL and shared-memory files
/// the database file's permissions.
fn create_private(database: &Path) -> Result<(), StoreError> {
    // Only a file that is not there is opened: closing a descriptor of a database this process
    // has open would drop the POSIX locks SQLite holds on it. Through a symbolic link whose
    // target is missing, the target is created.
    if database.exists() {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(database).map(drop).map_err(|error| {
        StoreError::Unavailable(format!("cannot create {}: {error}", database.display()))
    })
}

/// Opens the writer's connection; the directory exists already (see [`lock_exclusively`]).
fn open_writer(path: &Path, target: u32) -> Result<Connection, StoreError> {
    let connection = Connection::open(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    // The syncer makes writes durable by syncing the write-ahead log: without one (a filesystem
    // SQLite cannot keep it on), every write would be refused as not durable, so say so at start.
    let mode: String = connection
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(db_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "cannot keep a write-ahead log for {} (journal mode {mode}): billhook needs one",
            path.display()
        )));
    }
    connection
        .execute_batch(
            "PRAGMA synchronous = FULL;
             PRAGMA wal_autocheckpoint = 0;
             PRAGMA busy_timeout = 5000;
             PRAGMA temp_store = MEMORY;
             PRAGMA cache_size = -8000;",
        )
        .map_err(db_error)?;
    migrate(&connection, target)?;
    // One ingest runs a dozen statements, the ledger's lookups several shapes each, completions
    // and claims a few more: rusqlite's default cache of 16 would evict and re-parse them.
    connection.set_prepared_statement_cache_capacity(WRITER_STATEMENT_CACHE);
    // From here on commits do not fsync; the syncer does, before anyone is answered.
    connection
        .execute_batch("PRAGMA synchronous = NORMAL;")
        .map_err(db_error)?;
    // Checkpoints are the checkpointer's alone: the last connection to close would otherwise
    // copy the WAL back by itself, after a failed write to disk too (see `Checkpointer`).
    connection
        .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(db_error)?;
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
                applied_at INTEGER NOT NULL,
                checksum   TEXT
            )",
        )
        .map_err(db_error)?;
    // Written by a billhook from before checksums.
    let has_checksums: bool = connection
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('billhook_migrations')
                            WHERE name = 'checksum')",
            [],
            |row| row.get(0),
        )
        .map_err(db_error)?;
    if !has_checksums {
        connection
            .execute_batch("ALTER TABLE billhook_migrations ADD COLUMN checksum TEXT")
            .map_err(db_error)?;
    }
    let current = applied_version(connection)?;
    if current > latest_version() {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known: latest_version(),
        });
    }
    let applied = connection
        .prepare("SELECT version, checksum FROM billhook_migrations ORDER BY version")
        .and_then(|mut statement| {
            statement
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<Vec<(u32, Option<String>)>>>()
        })
        .map_err(db_error)?;
    for (version, checksum) in crate::unrecorded_checksums(&applied, MIGRATIONS)? {
        connection
            .execute(
                "UPDATE billhook_migrations SET checksum = ?2 WHERE version = ?1",
                (version, checksum),
            )
            .map_err(db_error)?;
    }
    for (version, sql) in MIGRATIONS
        .iter()
        .filter(|(v, _)| *v > current && *v <= target)
    {
        let apply = || -> rusqlite::Result<()> {
            connection.execute_batch("BEGIN IMMEDIATE")?;
            connection.execute_batch(sql)?;
            connection.execute(
                "INSERT INTO billhook_migrations (version, applied_at, checksum)
                 VALUES (?1, ?2, ?3)",
                (
                    version,
                    billhook_core::time::Timestamp::now().unix_millis(),
                    crate::migration_checksum(sql),
                ),
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
    // Locked by another connection past the wait (a backup, a tool holding a write lock), or
    // the disk full: nothing was written, and the same write can succeed later (503, retry),
    // where a 500 would say billhook itself failed.
    match error.sqlite_error_code() {
        Some(
            rusqlite::ErrorCode::DatabaseBusy
            | rusqlite::ErrorCode::DatabaseLocked
            | rusqlite::ErrorCode::DiskFull,
        ) => StoreError::Unavailable(error.to_string()),
        _ => StoreError::Database(error.to_string()),
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    async fn scratch_store() -> (tempfile::TempDir, Arc<SqliteStore>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("billhook.db"), None)
            .await
            .expect("open");
        create_numbers(&store).await.expect("create table");
        (dir, Arc::new(store))
    }

    async fn create_numbers(store: &SqliteStore) -> Result<(), StoreError> {
        store
            .write(|connection| {
                connection
                    .execute_batch("CREATE TABLE numbers (n INTEGER NOT NULL)")
                    .map_err(db_error)
            })
            .await
    }

    fn insert(n: i64, then_fail: bool) -> impl Fn(&Connection) -> Result<(), StoreError> {
        move |connection| {
            connection
                .execute("INSERT INTO numbers (n) VALUES (?1)", [n])
                .map_err(db_error)?;
            if then_fail {
                connection
                    .execute("INSERT INTO no_such_table VALUES (1)", [])
                    .map_err(db_error)?;
            }
            Ok(())
        }
    }

    /// Jobs queued while the writer is busy share the next transaction; a failing one among them
    /// must lose only its own writes, wherever it stands in the group.
    #[tokio::test]
    async fn a_failing_job_undoes_only_its_own_writes() {
        for failing in 0..4_i64 {
            let (_dir, store) = scratch_store().await;
            let blocker = tokio::spawn({
                let store = Arc::clone(&store);
                async move {
                    store
                        .write(|_| {
                            std::thread::sleep(Duration::from_millis(200));
                            Ok(())
                        })
                        .await
                }
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
            let jobs: Vec<_> = (0..4_i64)
                .map(|n| {
                    let store = Arc::clone(&store);
                    tokio::spawn(async move { store.write(insert(n, n == failing)).await })
                })
                .collect();
            blocker.await.expect("join").expect("blocker");
            for (n, job) in (0..4_i64).zip(jobs) {
                let result = job.await.expect("join");
                assert_eq!(
                    result.is_err(),
                    n == failing,
                    "job {n} with {failing} failing"
                );
            }
            let stored: Vec<i64> = store
                .read(|connection| {
                    let mut statement = connection
                        .prepare("SELECT n FROM numbers ORDER BY n")
                        .map_err(db_error)?;
                    statement
                        .query_map([], |row| row.get(0))
                        .map_err(db_error)?
                        .collect::<Result<Vec<i64>, _>>()
                        .map_err(db_error)
                })
                .await
                .expect("read");
            let expected: Vec<i64> = (0..4).filter(|n| *n != failing).collect();
            assert_eq!(stored, expected, "with job {failing} failing");
            store.close().await;
        }
    }

    fn numbers(path: &Path) -> Vec<i64> {
        let connection = Connection::open(path).expect("open");
        let mut statement = connection
            .prepare("SELECT n FROM numbers ORDER BY n")
            .expect("prepare");
        statement
            .query_map([], |row| row.get(0))
            .expect("query")
            .collect::<Result<Vec<i64>, _>>()
            .expect("rows")
    }

    /// SQLite follows a symbolic link to the database and keeps the WAL beside the file it
    /// found; the fsyncs must go to that WAL, or no write could be acknowledged.
    #[tokio::test]
    async fn a_store_opened_through_a_symbolic_link_syncs_the_wal_beside_its_target() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("data")).expect("mkdir");
        let target = dir.path().join("data/billhook.db");
        let link = dir.path().join("billhook.db");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let store = SqliteStore::open(&link, None).await.expect("open");
        create_numbers(&store)
            .await
            .expect("a write through the link is made durable");
        store.write(insert(1, false)).await.expect("insert");
        assert!(dir.path().join("data/billhook.db-wal").exists());
        // The file it made through the link is private, and it is one database by either name.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&target)
            .expect("made")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let by_its_own_name = SqliteStore::open(&target, None).await.err();
        assert!(
            by_its_own_name.is_some_and(|e| e.to_string().contains("in use")),
            "one lock for both paths"
        );
        store.close().await;
        assert_eq!(numbers(&target), vec![1]);
    }

    /// Once an fsync has failed, a write is refused rather than committed: its caller is told it
    /// failed, so it must not be there to read afterwards.
    #[tokio::test]
    async fn after_a_failed_fsync_nothing_more_is_committed() {
        let (dir, store) = scratch_store().await;
        store.write(insert(1, false)).await.expect("insert");
        // The syncer opened the WAL by its name at the first write; a new syncer's open fails
        // while the file is elsewhere, which stands in for a disk that refuses an fsync.
        let wal = dir.path().join("billhook.db-wal");
        let aside = dir.path().join("wal-aside");
        store.close().await;
        let store = SqliteStore::open(&dir.path().join("billhook.db"), None)
            .await
            .expect("reopen");
        // No read before the failure: with no reader open, the writer is the last connection
        // to close, and must not copy the WAL back as it goes.
        std::fs::rename(&wal, &aside).expect("move the WAL aside");
        let failed = store.write(insert(2, false)).await;
        assert!(failed.is_err(), "the fsync could not happen");
        let unready = store
            .ping()
            .await
            .expect_err("not ready once writes cannot succeed");
        assert!(
            unready.to_string().contains("cannot be made durable"),
            "{unready}"
        );
        let refused = store.write(insert(3, false)).await;
        let message = refused.expect_err("refused after the failure").to_string();
        assert!(message.contains("cannot be made durable"), "{message}");
        std::fs::rename(&aside, &wal).expect("put the WAL back");
        store.close().await;
        // No checkpoint copied it back: the next start's recovery, which checks every frame,
        // reads the WAL instead.
        let left = std::fs::metadata(&wal).expect("the WAL is kept").len();
        assert!(left > 0, "the WAL was truncated after the failure");
        // 2 was committed before its fsync failed (its caller was told so); 3 never was.
        assert_eq!(numbers(&dir.path().join("billhook.db")), vec![1, 2]);
    }

    /// A full disk fails a write as unavailable (try again later), not as a database fault,
    /// and the writes after space comes back succeed. The database's page limit plays the disk.
    #[tokio::test]
    async fn a_full_disk_makes_writes_unavailable_until_there_is_room() {
        let (dir, store) = scratch_store().await;
        let limit = |pages: Option<i64>| {
            move |connection: &Connection| {
                let count: i64 = connection
                    .query_row("PRAGMA page_count", [], |row| row.get(0))
                    .map_err(db_error)?;
                let limit = pages.unwrap_or(count);
                connection
                    .query_row(&format!("PRAGMA max_page_count = {limit}"), [], |_| Ok(()))
                    .map_err(db_error)
            }
        };
        store.write(limit(None)).await.expect("limit the pages");
        let full = store
            .write(|connection| {
                connection
                    .execute_batch(
                        "CREATE TABLE filler (b BLOB); INSERT INTO filler VALUES (zeroblob(1048576));",
                    )
                    .map_err(db_error)
            })
            .await
            .expect_err("no room");
        assert!(matches!(full, StoreError::Unavailable(_)), "{full}");
        store
            .write(limit(Some(1_000_000)))
            .await
            .expect("room again");
        store
            .write(insert(7, false))
            .await
            .expect("written once there is room");
        assert_eq!(numbers(&dir.path().join("billhook.db")), vec![7]);
    }

    /// A writer that cannot keep up refuses what it has no room for after a short wait, rather
    /// than holding every caller's data in memory until it recovers; what it took is written.
    #[tokio::test]
    async fn a_write_finding_the_queue_full_is_refused_after_a_wait() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = SqliteStore::open(&dir.path().join("billhook.db"), None)
            .await
            .expect("open");
        store.queue_wait = Duration::from_millis(200);
        create_numbers(&store).await.expect("create table");
        let store = Arc::new(store);
        // A job that holds the writer, as a stalled disk would.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Mutex::new(held);
        let (started, writer_taken) = std::sync::mpsc::channel::<()>();
        let holding = tokio::spawn({
            let store = Arc::clone(&store);
            async move {
                store
                    .write(move |_| {
                        let _ = started.send(());
                        let _ = held.lock().map(|held| held.recv());
                        Ok(())
                    })
                    .await
            }
        });
        // Queued only once the writer holds the job: queued before, they would share its group.
        while writer_taken.try_recv().is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let waiting: Vec<_> = (0..QUEUE)
            .map(|n| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.write(insert(n as i64, false)).await })
            })
            .collect();
        let room = || {
            store
                .writer
                .lock()
                .expect("writer")
                .as_ref()
                .map_or(0, mpsc::Sender::capacity)
        };
        while room() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let started = Instant::now();
        let refused = store
            .write(insert(-1, false))
            .await
            .expect_err("no room in the queue");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(matches!(refused, StoreError::Unavailable(_)), "{refused}");
        assert!(refused.to_string().contains("queue is full"), "{refused}");

        release.send(()).expect("release the writer");
        holding
            .await
            .expect("join")
            .expect("the held job is written");
        for write in waiting {
            write
                .await
                .expect("join")
                .expect("every queued write is written");
        }
        let written = numbers(&dir.path().join("billhook.db"));
        assert_eq!(written.len(), QUEUE);
        assert!(!written.contains(&-1));
    }

    /// An fsync that has hung (a dead network volume) fails nothing, so only its age can tell a
    /// probe that nothing will be acknowledged. There is no hanging disk here: the test sets the
    /// start of the fsync under way as the syncer would have, then ends it.
    #[tokio::test]
    async fn a_hung_fsync_makes_the_store_unready_until_it_returns() {
        let (_dir, store) = scratch_store().await;
        store.write(insert(1, false)).await.expect("insert");
        store.ping().await.expect("ready between fsyncs");
        let began = |ago: Duration| Some(Instant::now().checked_sub(ago).expect("uptime"));
        *store.syncing_since.lock().expect("lock") = began(Duration::from_secs(1));
        store.ping().await.expect("ready during a slow fsync");
        *store.syncing_since.lock().expect("lock") = began(STALLED_SYNC);
        let unready = store
            .ping()
            .await
            .expect_err("unready while an fsync hangs");
        assert!(
            unready.to_string().contains("has not returned for 10 s"),
            "{unready}"
        );
        *store.syncing_since.lock().expect("lock") = None;
        store.ping().await.expect("ready once it returned");
        store
            .write(insert(2, false))
            .await
            .expect("the syncer clears the mark");
        assert!(store.syncing_since.lock().expect("lock").is_none());
        store.ping().await.expect("ready after the next fsync");
    }

    /// A write that panics fails alone: the others in its group commit, the writer goes on, and
    /// the store stays ready. A closed store is not ready.
    #[tokio::test]
    async fn a_write_that_panics_fails_alone() {
        let (dir, store) = scratch_store().await;
        let (before, panicking, after) = tokio::join!(
            store.write(insert(1, false)),
            store.write(|connection: &Connection| -> Result<(), StoreError> {
                insert(2, false)(connection)?;
                panic!("a bug in a write")
            }),
            store.write(insert(3, false)),
        );
        before.expect("insert 1");
        after.expect("insert 3");
        let error = panicking
            .expect_err("the panicking write fails")
            .to_string();
        assert!(error.contains("a bug in a write"), "{error}");
        store
            .write(insert(4, false))
            .await
            .expect("the writer goes on");
        store.ping().await.expect("still ready");
        store.close().await;
        let closed = store.ping().await.expect_err("a closed store is not ready");
        assert!(closed.to_string().contains("writer"), "{closed}");
        assert_eq!(numbers(&dir.path().join("billhook.db")), vec![1, 3, 4]);
    }

    /// A new database and the directory made for it are its owner's alone: they hold the
    /// endpoints' signing secrets and every raw body.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_new_database_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("made/for/it/billhook.db");
        let store = SqliteStore::open(&path, None).await.expect("open");
        create_numbers(&store).await.expect("create table");
        store.write(insert(1, false)).await.expect("insert");
        let mode = |path: &Path| {
            std::fs::metadata(path)
                .expect("exists")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(path.parent().expect("a directory")), 0o700);
        assert_eq!(mode(&path), 0o600);
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        assert_eq!(mode(Path::new(&wal)), 0o600);
        store.close().await;
    }

    /// A second store on the same file is refused while the first is open, and opens once the
    /// first has closed.
    #[tokio::test]
    async fn one_database_file_has_one_store_at_a_time() {
        let (dir, store) = scratch_store().await;
        let path = dir.path().join("billhook.db");
        let refused = SqliteStore::open(&path, None)
            .await
            .err()
            .expect("refused while the first is open")
            .to_string();
        assert!(
            refused.contains("in use by another billhook process"),
            "{refused}"
        );
        store
            .write(insert(1, false))
            .await
            .expect("the first goes on");
        store.close().await;
        let second = SqliteStore::open(&path, None)
            .await
            .expect("opens after close");
        second.write(insert(2, false)).await.expect("insert");
        second.close().await;
        assert_eq!(numbers(&path), vec![1, 2]);
    }

    /// A caller that sent its write and stopped waiting for the answer (its future kept but no
    /// longer polled) does not keep the writer, and so `close`, from finishing.
    #[tokio::test]
    async fn closing_does_not_wait_for_callers_that_stopped_listening() {
        let (_dir, store) = scratch_store().await;
        let mut forgotten = Box::pin(store.write(insert(1, false)));
        // Polled once, so the write is sent. The writer (another thread) may answer before the
        // poll looks, rarely: then the case is not exercised, but nothing is wrong.
        std::future::poll_fn(|context| {
            let _sent = forgotten.as_mut().poll(context);
            std::task::Poll::Ready(())
        })
        .await;
        tokio::time::timeout(Duration::from_secs(10), store.close())
            .await
            .expect("the store closes");
        drop(forgotten);
    }

    /// A store that closes cleanly copies its WAL back and empties it: nothing to replay at the
    /// next start, and no WAL of hundreds of megabytes left beside the database.
    #[tokio::test]
    async fn closing_empties_the_wal() {
        let (dir, store) = scratch_store().await;
        for n in 0..200 {
            store.write(insert(n, false)).await.expect("insert");
        }
        let wal = dir.path().join("billhook.db-wal");
        assert!(std::fs::metadata(&wal).expect("a WAL while open").len() > 0);
        store.close().await;
        assert_eq!(std::fs::metadata(&wal).map_or(0, |m| m.len()), 0);
        let count: i64 = store
            .read(|connection| {
                connection
                    .query_row("SELECT count(*) FROM numbers", [], |row| row.get(0))
                    .map_err(db_error)
            })
            .await
            .expect("read after close");
        assert_eq!(count, 200);
    }
}
