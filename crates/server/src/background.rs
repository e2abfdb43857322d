//! Background work inside `billhook serve`: forgetting expired dedup keys and announcing
//! payments that matched no invoice.

use std::sync::Arc;
use std::time::Duration;

use billhook_core::time::Timestamp;
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
    let tasks = vec![
        tokio::spawn(sweep_dedup(Arc::clone(&app), stopped.clone())),
        tokio::spawn(sweep_unmatched(app, stopped)),
    ];
    Background { stop, tasks }
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
                Ok(removed) if u64::from(DEDUP_SWEEP_BATCH) <= removed => continue,
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
        if let Err(error) = crate::ledger::announce_unmatched(&app).await {
            tracing::warn!(%error, "could not look for unmatched payments");
        }
    }
}
