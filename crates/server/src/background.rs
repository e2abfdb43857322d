//! Background work inside `billhook serve`: forgetting expired dedup keys, announcing payments
//! that matched no invoice, retention, flushing activity counts for the console, and keeping
//! PostgreSQL's planner statistics in step with the ledger.

use std::sync::Arc;
use std::time::Duration;

use billhook_core::ids::{EventId, InboundId};
use billhook_core::time::Timestamp;
use billhook_store::{PruneBatch, PruneReport, StoreError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::App;

/// How often expired dedup keys are swept, and how many go per statement.
const DEDUP_SWEEP_EVERY: Duration = Duration::from_secs(60);
const DEDUP_SWEEP_BATCH: u32 = 1_000;

/// Running background tasks, stopped together.
pub(crate) struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Background {
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

pub(crate) fn spawn(app: Arc<App>) -> Background {
    let (stop, stopped) = watch::channel(false);
    let with_app = |run: fn(Arc<App>, watch::Receiver<bool>) -> TaskFuture| {
        let app = Arc::clone(&app);
        move |stopped| run(Arc::clone(&app), stopped)
    };
    let mut tasks = vec![
        supervise(
            "dedup sweep",
            stopped.clone(),
            with_app(|app, stopped| Box::pin(sweep_dedup(app, stopped))),
        ),
        supervise(
            "unmatched payments sweep",
            stopped.clone(),
            with_app(|app, stopped| Box::pin(sweep_unmatched(app, stopped))),
        ),
        supervise(
            "retention",
            stopped.clone(),
            with_app(|app, stopped| Box::pin(retain(app, stopped))),
        ),
        supervise(
            "activity flush",
            stopped.clone(),
            with_app(|app, stopped| Box::pin(flush_activity(app, stopped))),
        ),
    ];
    if app.store.keeps_planner_statistics() {
        tasks.push(supervise(
            "planner statistics",
            stopped,
            with_app(|app, stopped| Box::pin(refresh_statistics(app, stopped))),
        ));
    }
    Background { stop, tasks }
}

/// A background task's future, boxed so that every task has one type.
type TaskFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The pause before a task that panicked starts again, doubling while it keeps panicking.
const RESTART_PAUSE_FIRST: Duration = Duration::from_secs(1);
const RESTART_PAUSE_MOST: Duration = Duration::from_secs(60);

/// Runs `task` until it returns, which it does when billhook stops. A panic in it (a bug met by
/// one pass over some row) is logged and the task started again after a pause: otherwise that
/// work (retention, the dedup sweep, the unmatched sweep) would end for the life of the process
/// without a word.
fn supervise<F>(name: &'static str, mut stopped: watch::Receiver<bool>, task: F) -> JoinHandle<()>
where
    F: Fn(watch::Receiver<bool>) -> TaskFuture + Send + 'static,
{
    tokio::spawn(async move {
        let mut pause = RESTART_PAUSE_FIRST;
        loop {
            let started = tokio::time::Instant::now();
            let Err(failure) = tokio::spawn(task(stopped.clone())).await else {
                return;
            };
            // The panic's own message went to standard error through the panic hook; rows or
            // values it may name stay out of the structured log.
            if *stopped.borrow() {
                tracing::error!(
                    task = name,
                    panicked = failure.is_panic(),
                    "a background task failed as billhook stopped"
                );
                return;
            }
            tracing::error!(
                task = name,
                panicked = failure.is_panic(),
                "a background task failed; starting it again"
            );
            // A task that ran a long while before failing starts again soon, as a first time.
            if started.elapsed() > RESTART_PAUSE_MOST * 10 {
                pause = RESTART_PAUSE_FIRST;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stopped.changed() => return,
            }
            pause = pause.saturating_mul(2).min(RESTART_PAUSE_MOST);
        }
    })
}

async fn sweep_dedup(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(DEDUP_SWEEP_EVERY) => {}
            _ = stopped.changed() => return,
        }
        loop {
            match app
                .store
                .prune_dedup(Timestamp::now(), DEDUP_SWEEP_BATCH)
                .await
            {
                // A backlog of keys (after a long stop) is left for the next start rather than
                // holding up this stop.
                Ok(removed) if u64::from(DEDUP_SWEEP_BATCH) <= removed => {
                    if *stopped.borrow() {
                        return;
                    }
                }
                Ok(removed) => {
                    if removed > 0 {
                        tracing::debug!(removed, "forgot expired dedup keys");
                    }
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "could not sweep expired dedup keys");
                    break;
                }
            }
        }
    }
}

async fn sweep_unmatched(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    let every = app.settings.ledger.sweep_every.0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.changed() => return,
        }
        if let Err(error) = crate::ledger::announce_unmatched(&app, &stopped).await {
            tracing::warn!(%error, "could not look for unmatched payments");
        }
    }
}

/// How often the store checks whether its planner statistics are stale: often, because a new
/// deployment's ledger grows from nothing and plans made for an empty ledger scan it.
const STATISTICS_CHECK_EVERY: Duration = Duration::from_secs(2);
/// The longest wait between checks while they fail.
const STATISTICS_RETRY_AT_MOST: Duration = Duration::from_secs(60);

/// The wait before the next check after `failures` failed ones in a row: the usual interval,
/// doubling while checks fail (the database is down, or billhook's role may not analyze), so a
/// failing check neither keeps the database busy nor fills the log.
fn statistics_check_delay(failures: u32) -> Duration {
    STATISTICS_CHECK_EVERY
        .saturating_mul(1 << failures.min(16))
        .min(STATISTICS_RETRY_AT_MOST)
}

async fn refresh_statistics(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    let mut failures = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(statistics_check_delay(failures)) => {}
            _ = stopped.changed() => return,
        }
        match app.store.refresh_statistics().await {
            Ok(refreshed) => {
                if failures > 0 {
                    tracing::info!(failures, "planner statistics can be refreshed again");
                }
                failures = 0;
                if refreshed {
                    tracing::debug!("refreshed the ledger's planner statistics");
                }
            }
            Err(error) => {
                failures += 1;
                // Once per run of failures; the rest would repeat it every check.
                if failures == 1 {
                    tracing::warn!(%error, "could not refresh planner statistics; retrying less often");
                } else {
                    tracing::debug!(%error, failures, "could not refresh planner statistics");
                }
            }
        }
    }
}

/// How often this instance's activity counts go to the database: the console's charts lag by
/// at most this much.
const ACTIVITY_FLUSH_EVERY: Duration = Duration::from_secs(5);
/// Activity older than this is forgotten; the console charts the last day.
const ACTIVITY_KEPT: Duration = Duration::from_secs(2 * 86_400);

async fn flush_activity(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(ACTIVITY_FLUSH_EVERY) => false,
            _ = stopped.changed() => true,
        };
        let counts = app.metrics.take_activity();
        if !counts.is_empty() {
            let minute = Timestamp::now().unix_millis().div_euclid(60_000);
            if let Err(error) = app
                .store
                .record_activity(app.delivery.owner(), minute, counts)
                .await
            {
                tracing::debug!(%error, "could not record activity; keeping it for the next flush");
                app.metrics.restore_activity(counts);
            }
        }
        if stopping {
            return;
        }
    }
}

/// Removes what is older than `retention.max_age` in small batches, then expired console
/// sessions and old activity.
async fn retain(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    let every = app.settings.retention.every.0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.changed() => return,
        }
        match prune_now(&app, &stopped).await.map(|run| run.removed) {
            Ok(removed) if removed != PruneReport::default() => {
                log_removed(&removed, "retention removed old messages");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "retention could not run"),
        }
        let now = Timestamp::now();
        if let Err(error) = app.store.prune_sessions(now).await {
            tracing::debug!(%error, "could not forget expired console sessions");
        }
        let oldest_minute = now.sub(ACTIVITY_KEPT).unix_millis().div_euclid(60_000);
        if let Err(error) = app.store.prune_activity(oldest_minute).await {
            tracing::debug!(%error, "could not forget old activity");
        }
    }
}

/// The id bound below which messages are old enough for retention.
pub(crate) fn retention_cutoff(app: &App, now: Timestamp) -> InboundId {
    InboundId::lower_bound(now.sub(app.settings.retention.max_age.0))
}

/// Prunes batch after batch until nothing old is left (or the server stops): the old messages,
/// then the announcements as old whose message was already gone when they were made.
pub(crate) async fn prune_now(
    app: &App,
    stopped: &watch::Receiver<bool>,
) -> Result<PruneRun, StoreError> {
    let cutoff = retention_cutoff(app, Timestamp::now());
    let store = &app.store;
    let size = app.settings.retention.batch;
    let mut removed = PruneReport::default();
    let mut count = |batch: PruneReport| {
        for (kind, count) in [
            ("inbound", batch.inbound),
            ("events", batch.events),
            ("deliveries", batch.deliveries),
            ("attempts", batch.attempts),
        ] {
            if count > 0 {
                app.metrics.pruned(kind, count);
            }
        }
        removed.add(batch);
    };
    let orphans_before = EventId::lower_bound(cutoff.created_at());
    let run = async {
        let messages_done = prune_batches(size, stopped, &mut count, |after, batch| {
            store.prune(cutoff, after, batch)
        })
        .await?;
        Ok(messages_done
            && prune_batches(size, stopped, &mut count, |after, batch| {
                store.prune_orphaned_events(orphans_before, after, batch)
            })
            .await?)
    }
    .await;
    match run {
        Ok(complete) => Ok(PruneRun { removed, complete }),
        Err(error) => {
            // The batches before the failure are committed: said here, as the error is all
            // the caller gets.
            if removed != PruneReport::default() {
                log_removed(&removed, "retention removed old rows before a batch failed");
            }
            Err(error)
        }
    }
}

fn log_removed(removed: &PruneReport, message: &'static str) {
    tracing::info!(
        inbound = removed.inbound,
        events = removed.events,
        deliveries = removed.deliveries,
        attempts = removed.attempts,
        bytes = removed.payload_bytes,
        "{message}"
    );
}

/// Runs `prune` batch after batch of `size`, each going on after the last, until one says
/// nothing is left (true) or the server stops (false), handing each one's report to `removed`.
/// A batch the database refuses is tried again at half the size, down to one row: a batch too
/// large for the database's statement timeout, or one that lost a deadlock to ingest, would
/// otherwise fail again at every run, and retention, which starts from the oldest each time,
/// would never get past it. A database that is away ends the run at once.
async fn prune_batches<Key: Copy, Batch>(
    mut size: u32,
    stopped: &watch::Receiver<bool>,
    removed: &mut impl FnMut(PruneReport),
    mut prune: impl FnMut(Option<Key>, u32) -> Batch,
) -> Result<bool, StoreError>
where
    Batch: Future<Output = Result<PruneBatch<Key>, StoreError>>,
{
    let mut after = None;
    loop {
        // Once smaller, a batch stays smaller for the rest of the run.
        let batch = match prune(after, size).await {
            Ok(batch) => batch,
            // Not when the database is away: a smaller batch would fail the same way.
            Err(error) if size > 1 && !matches!(error, StoreError::Unavailable(_)) => {
                tracing::warn!(%error, size, "a retention batch failed; trying a smaller one");
                size = (size / 2).max(1);
                continue;
            }
            Err(error) => return Err(error),
        };
        removed(batch.removed);
        after = batch.resume_after;
        if after.is_none() {
            return Ok(true);
        }
        if *stopped.borrow() {
            return Ok(false);
        }
        // Let ingest's writes in between batches.
        tokio::task::yield_now().await;
    }
}

/// What one run of retention removed, and whether it got through everything old enough.
pub(crate) struct PruneRun {
    pub removed: PruneReport,
    /// False when a stop came between two batches: the rest waits for the next run.
    pub complete: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch over what the database can do (here: more than three rows) is tried again
    /// smaller until it goes through, and the run goes on at that size to the end; one that
    /// fails even at one row ends the run with its error, as a database that is away does at
    /// once.
    #[tokio::test]
    async fn a_failing_prune_batch_is_retried_smaller_until_one_row() {
        let (_stop, stopped) = watch::channel(false);
        let rows = 10_u32;
        let mut sizes = Vec::new();
        let mut removed = PruneReport::default();
        let done = prune_batches(
            8,
            &stopped,
            &mut |batch| removed.add(batch),
            |after: Option<u32>, size| {
                sizes.push(size);
                let start = after.unwrap_or(0);
                std::future::ready(if size > 3 {
                    Err(StoreError::Database(
                        "canceling statement due to statement timeout".into(),
                    ))
                } else {
                    let end = (start + size).min(rows);
                    Ok(PruneBatch {
                        removed: PruneReport {
                            inbound: u64::from(end - start),
                            ..PruneReport::default()
                        },
                        resume_after: (end < rows).then_some(end),
                    })
                })
            },
        )
        .await
        .unwrap();
        assert!(done);
        assert_eq!(removed.inbound, u64::from(rows));
        assert_eq!(sizes, [8, 4, 2, 2, 2, 2, 2]);

        let mut tries = 0;
        let failed = prune_batches(4, &stopped, &mut |_| {}, |_: Option<u32>, _| {
            tries += 1;
            std::future::ready(Err::<PruneBatch<u32>, _>(StoreError::Database(
                "always".into(),
            )))
        })
        .await;
        assert!(failed.is_err());
        assert_eq!(tries, 3, "4, 2, then 1");

        let mut tries = 0;
        let away = prune_batches(4, &stopped, &mut |_| {}, |_: Option<u32>, _| {
            tries += 1;
            std::future::ready(Err::<PruneBatch<u32>, _>(StoreError::Unavailable(
                "connection refused".into(),
            )))
        })
        .await;
        assert!(away.is_err());
        assert_eq!(tries, 1, "a database away is not tried smaller");
    }

    #[tokio::test]
    async fn a_task_that_panics_is_started_again_until_billhook_stops() {
        let passes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stop, stopped) = watch::channel(false);
        let supervised = supervise("test", stopped, {
            let passes = Arc::clone(&passes);
            move |mut stopped: watch::Receiver<bool>| -> TaskFuture {
                let pass = passes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Box::pin(async move {
                    assert!(pass > 0, "the first pass meets a bug");
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
            }
        });
        tokio::time::timeout(RESTART_PAUSE_FIRST * 5, async {
            while passes.load(std::sync::atomic::Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("started again after the panic");
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), supervised)
            .await
            .expect("stops with billhook")
            .unwrap();
        assert_eq!(passes.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn failing_statistics_checks_back_off_to_a_minute_and_recover_at_once() {
        let delays = (0..8).map(statistics_check_delay).collect::<Vec<_>>();
        let seconds = delays.iter().map(Duration::as_secs).collect::<Vec<_>>();
        assert_eq!(seconds, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(statistics_check_delay(u32::MAX), STATISTICS_RETRY_AT_MOST);
    }
}
