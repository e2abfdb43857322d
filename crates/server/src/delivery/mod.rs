//! Delivering events to subscriber endpoints.
//!
//! The outbox row written by the ingest transaction is the truth; everything here is a way of
//! working those rows quickly and safely:
//!
//! - **Hand-off.** Ingest reserves room in the endpoint's lane before it writes, writes the
//!   delivery already leased to this instance, and after the commit passes it (payload in hand)
//!   straight to the lane: a new delivery starts within milliseconds, without a database read.
//! - **Lanes.** Each endpoint has its own queue, rate limiter, concurrency cap and slow-down
//!   state, so a slow or dead endpoint only ever delays itself. A lane holds at most
//!   `queue_per_endpoint` deliveries in memory; the rest wait in the database.
//! - **Poller.** Claims due rows (retries, deliveries that found no room, leases left by a
//!   crashed worker) per endpoint, as lanes have room, sleeping until the next one falls due.
//! - **Completer.** Records attempts and their consequences in batches, one transaction each.
//! - **Leases.** Rows held in memory are leased and the lease is renewed; a crashed instance's
//!   rows come back when its leases expire. A job is attempted only while its lease outlasts the
//!   attempt (see [`claims`]), so a lease lost during a database outage is never sent on.
//! - **Ownership.** On a database shared by several instances, one instance at a time delivers
//!   to a given endpoint (a renewable lease on the endpoint), so its rate limit and concurrency
//!   cap hold across instances. Instances tell each other about new work through the database's
//!   notifications; an instance in the `api` role only plans deliveries and leaves them to the
//!   workers.

mod claims;
mod endpoints;
mod send;
pub mod ssrf;

pub use send::{ConnectDeadline, PooledClient, pooled_client};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use billhook_core::event::EventType;
use billhook_core::ids::{AttemptId, DeliveryId, EndpointId, EventId, InboundId};
use billhook_core::retry::{AttemptOutcome, Decision, RetryPolicy};
use billhook_core::subscription::{FanOutEvent, PlannedDelivery, plan_deliveries};
use billhook_core::time::Timestamp;
use billhook_store::{
    BACKLOG_BATCH, ClaimedDelivery, Completion, DeliveryStatus, Lease, NewAttempt, NewDelivery,
    NextStep, RawOrigin, Store, StoreError,
};
use bytes::Bytes;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{DeliveryConfig, EndpointConfig};
use crate::metrics::{self, Metrics};
use claims::{Asked, ClaimNumber, HeldClaims, Turn};
pub use endpoints::{
    EndpointDefinition, EndpointRuntime, EndpointSet, check_destination, sendable_headers,
};
pub use send::RESPONSE_BODY_LIMIT;
use ssrf::{DestinationPolicy, Refusal};

/// One delivery in memory, ready for its next attempt.
#[derive(Debug)]
pub struct Job {
    pub delivery_id: DeliveryId,
    pub endpoint_id: EndpointId,
    pub message_id: String,
    pub event_type: String,
    /// Attempts made before this one.
    pub attempts: u32,
    pub payload: Bytes,
    pub raw: Option<RawOrigin>,
    /// Which claim of the delivery this is; the default, until the job is handed off, is
    /// never attempted.
    claim: ClaimNumber,
    /// When the lease taken with the claim ends, unless renewed.
    leased_until: Timestamp,
    /// The place this job holds in its lane.
    _slot: OwnedSemaphorePermit,
}

/// Deliveries ingest is about to write, and the jobs to hand off once they are committed.
#[derive(Debug, Default)]
pub struct Prepared {
    pub rows: Vec<NewDelivery>,
    jobs: Vec<Job>,
}

/// What an endpoint's lane shares with the attempts it starts.
struct Lane {
    id: EndpointId,
    /// Room for deliveries held in memory.
    slots: Arc<Semaphore>,
    /// How many of its attempts may run at once.
    concurrency: ConcurrencyLimit,
    paused_until: Mutex<Option<tokio::time::Instant>>,
    failing_since: Mutex<Option<Timestamp>>,
}

/// A lane as the instance holds it: the lane and the only sender of its queue. Dropping the
/// entry (its endpoint deleted) closes the queue, and the lane's task ends once it has worked
/// through what was queued.
struct LaneEntry {
    lane: Arc<Lane>,
    queue: mpsc::UnboundedSender<Job>,
}

/// An endpoint's limit on attempts at once, which an operator may change while attempts hold
/// its permits. The permits are resized rather than replaced: a new semaphore beside the old
/// one would let the attempts already running and as many new ones run together.
struct ConcurrencyLimit {
    permits: Arc<Semaphore>,
    sizing: Mutex<LimitSizing>,
}

struct LimitSizing {
    cap: u32,
    /// Permits out beyond a lowered cap: each is forgotten as it comes back.
    excess: u32,
}

impl ConcurrencyLimit {
    fn new(cap: u32) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(cap as usize)),
            sizing: Mutex::new(LimitSizing { cap, excess: 0 }),
        }
    }

    /// A permit under the limit as it is now; `None` if the permits are closed.
    async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        loop {
            let permit = Arc::clone(&self.permits).acquire_owned().await.ok()?;
            let mut sizing = self.sizing.lock().unwrap_or_else(|p| p.into_inner());
            if sizing.excess == 0 {
                return Some(permit);
            }
            sizing.excess -= 1;
            permit.forget();
        }
    }

    /// Sets the limit, when the endpoint is loaded again: the only time it changes.
    fn resize(&self, cap: u32) {
        let mut sizing = self.sizing.lock().unwrap_or_else(|p| p.into_inner());
        if cap > sizing.cap {
            let raise = cap - sizing.cap;
            let cancelled = raise.min(sizing.excess);
            sizing.excess -= cancelled;
            self.permits.add_permits((raise - cancelled) as usize);
        } else if cap < sizing.cap {
            let lower = sizing.cap - cap;
            let forgotten =
                u32::try_from(self.permits.forget_permits(lower as usize)).unwrap_or(lower);
            sizing.excess += lower - forgotten;
        }
        sizing.cap = cap;
    }
}

impl Lane {
    fn pause(&self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        let mut paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }
}

struct Shared {
    store: Store,
    metrics: Arc<Metrics>,
    owner: String,
    /// False in the `api` role: deliveries are planned but worked by other instances.
    works: bool,
    /// Endpoints this instance delivers to, with when each last had work.
    owned: Mutex<HashMap<EndpointId, tokio::time::Instant>>,
    config: DeliveryConfig,
    policy: RetryPolicy,
    destinations: Arc<DestinationPolicy>,
    client: send::Client,
    endpoints: RwLock<Arc<EndpointSet>>,
    /// Numbers the reads of the endpoint set, in the order they start (see `reload_endpoints`).
    endpoint_reads: AtomicU64,
    /// The number of the read whose set `endpoints` holds; changed only under `lanes`' lock.
    installed_read: AtomicU64,
    lanes: Mutex<HashMap<EndpointId, LaneEntry>>,
    in_flight: Arc<Semaphore>,
    /// Deliveries held in memory under this instance's lease, each with its claims not yet
    /// counted off: a delivery given back can be claimed again before the completion that gave
    /// it back is counted off, and the newer claim must keep its lease renewed. Holds the jobs
    /// set aside to wait for an earlier claim of their delivery.
    held: Mutex<HeldClaims<Job>>,
    /// Unbounded so a lane never waits on the database and nothing finished is left behind at
    /// shutdown. It grows only while the completer writes slower than attempts finish; the
    /// claims that feed the attempts go to the same database, so the two slow down together.
    completions: mpsc::UnboundedSender<ToCompleter>,
    lane_tasks: Mutex<Vec<JoinHandle<()>>>,
    wake_poller: Notify,
    stopping: watch::Sender<bool>,
    /// Set once no attempt runs any more: leases are renewed until then.
    stop_renewing: watch::Sender<bool>,
    abort: watch::Sender<bool>,
    running_attempts: AtomicUsize,
    attempts_done: Notify,
}

/// What the completer is asked to do, in order.
enum ToCompleter {
    Record(Completion),
    /// Write everything received so far, then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The delivery runtime of one billhook instance.
pub struct Delivery {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    renewal: Mutex<Option<JoinHandle<()>>>,
    completer: Mutex<Option<JoinHandle<()>>>,
}

impl Delivery {
    /// Loads endpoints, syncs those declared in the configuration, and starts the poller,
    /// completer and lease renewal.
    pub async fn start(
        store: Store,
        config: DeliveryConfig,
        declared: &[EndpointConfig],
        known_sources: &[String],
        works: bool,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StartError> {
        let destinations = Arc::new(DestinationPolicy::new(
            config.allow_private_destinations.clone(),
        ));
        let client = send::client(
            Arc::clone(&destinations),
            config.request_timeout.0,
            config.connect_timeout.0,
        )
        .map_err(|e| StartError::Client(e.to_string()))?;
        sync_declared(
            &store,
            &destinations,
            declared,
            known_sources,
            config.secret_overlap.0,
        )
        .await?;
        if works && store.is_single_process() {
            let released = store.release_all_leases().await?;
            if released > 0 {
                tracing::info!(released, "released leases left by the previous run");
            }
        }
        let (completions, completion_queue) = mpsc::unbounded_channel();
        let notifications = store.subscribe();
        let shared = Arc::new(Shared {
            metrics,
            owner: format!(
                "billhook-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
            works,
            owned: Mutex::new(HashMap::new()),
            policy: config.retry_policy(),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight as usize)),
            config,
            destinations,
            client,
            endpoints: RwLock::new(Arc::new(EndpointSet::default())),
            endpoint_reads: AtomicU64::new(0),
            installed_read: AtomicU64::new(0),
            lanes: Mutex::new(HashMap::new()),
            held: Mutex::new(HeldClaims::default()),
            completions,
            lane_tasks: Mutex::new(Vec::new()),
            wake_poller: Notify::new(),
            stopping: watch::channel(false).0,
            stop_renewing: watch::channel(false).0,
            abort: watch::channel(false).0,
            running_attempts: AtomicUsize::new(0),
            attempts_done: Notify::new(),
            store,
        });
        shared.reload_endpoints().await?;
        // A disabling or a deletion stopped before it held or cancelled its whole backlog
        // (see `settle_backlogs`). The poller looks for the deliveries of deleted endpoints
        // only for a while after the deletion.
        let disabled: Vec<EndpointId> = shared
            .endpoints()
            .by_id
            .values()
            .filter(|endpoint| !endpoint.enabled)
            .map(|endpoint| endpoint.id)
            .collect();
        shared.settle_backlogs(disabled, Vec::new());
        tokio::spawn({
            let shared = Arc::clone(&shared);
            async move {
                match shared.store.deleted_endpoints_owing().await {
                    Ok(deleted) => shared.settle_backlogs(Vec::new(), deleted),
                    Err(error) => {
                        tracing::warn!(%error, "could not look for deleted endpoints still owed deliveries")
                    }
                }
            }
        });
        let completer = tokio::spawn(run_completer(Arc::clone(&shared), completion_queue));
        let mut tasks = Vec::new();
        let mut renewal = None;
        if works {
            tasks.push(tokio::spawn(run_poller(Arc::clone(&shared))));
            renewal = Some(tokio::spawn(run_lease_renewal(Arc::clone(&shared))));
        }
        if let Some(notifications) = notifications {
            tasks.push(tokio::spawn(run_listener(
                Arc::clone(&shared),
                notifications,
            )));
        }
        Ok(Self {
            shared,
            tasks: Mutex::new(tasks),
            renewal: Mutex::new(renewal),
            completer: Mutex::new(Some(completer)),
        })
    }

    /// The SSRF guard's policy, for checking endpoint URLs.
    pub fn destinations(&self) -> &DestinationPolicy {
        &self.shared.destinations
    }

    pub fn default_concurrency(&self) -> u32 {
        self.shared.config.default_max_concurrency
    }

    pub fn secret_overlap(&self) -> Duration {
        self.shared.config.secret_overlap.0
    }

    /// Re-reads endpoints after this instance changed one; `enabled` is the endpoint enabled or
    /// disabled by the change, if it was. The change is committed whatever happens here, so a
    /// failed read is not the caller's (who would retry a change already made): it is logged
    /// and tried again in the background until it succeeds, and meanwhile an endpoint enabled
    /// or disabled is taken as such, so ingest plans its deliveries accordingly.
    pub async fn reload_after_change(&self, enabled: Option<(EndpointId, bool)>) {
        if self.shared.reload_endpoints_until_read().await.is_err()
            && let Some((id, enabled)) = enabled
        {
            self.shared.set_enabled(id, enabled);
        }
    }

    /// Plans the deliveries of one inbound message's events and reserves lane room for those
    /// that can start at once. `payloads` gives each event's canonical bytes (by position in
    /// `events`); `raw` is the provider's body for raw endpoints.
    pub fn prepare(
        &self,
        inbound_id: InboundId,
        source: &str,
        events: &[(FanOutEvent, Bytes)],
        raw: (&Bytes, RawOrigin),
        now: Timestamp,
    ) -> Prepared {
        let set = self.shared.endpoints();
        let fan_out: Vec<FanOutEvent> = events.iter().map(|(e, _)| *e).collect();
        let planned = plan_deliveries(source, &fan_out, &set.subscribers);
        let mut prepared = Prepared::default();
        if planned.is_empty() {
            return prepared;
        }
        let first_wait = self.shared.policy.wait_before(1, &mut rand::rng());
        let lease = Lease {
            owner: self.shared.owner.clone(),
            until: now.add(self.shared.config.lease.0),
        };
        for plan in planned {
            let id = DeliveryId::new_at(now);
            let payload = match plan.event_id {
                Some(event) => events
                    .iter()
                    .find(|(e, _)| e.id == event)
                    .map(|(_, bytes)| bytes.clone())
                    .unwrap_or_default(),
                None => raw.0.clone(),
            };
            // Start at once only what is due at once, active, ours to deliver, and has room in
            // its lane; the rest waits in the database for the poller (here or elsewhere).
            let slot = (plan.active && first_wait.is_zero() && self.shared.owns(plan.endpoint_id))
                .then(|| self.shared.lane(plan.endpoint_id))
                .flatten()
                .and_then(|lane| Arc::clone(&lane.slots).try_acquire_owned().ok());
            prepared.rows.push(new_delivery(
                &plan,
                id,
                inbound_id,
                now.add(first_wait),
                slot.as_ref().map(|_| lease.clone()),
            ));
            if let Some(slot) = slot {
                prepared.jobs.push(Job {
                    delivery_id: id,
                    endpoint_id: plan.endpoint_id,
                    message_id: plan.message_id(inbound_id),
                    event_type: plan.event_type.as_str().to_owned(),
                    attempts: 0,
                    payload,
                    raw: plan.event_id.is_none().then(|| raw.1.clone()),
                    claim: ClaimNumber::default(),
                    leased_until: lease.until,
                    _slot: slot,
                });
            }
        }
        prepared
    }

    /// Plans deliveries without handing anything off (reprocessing, redelivery to new endpoints):
    /// the poller picks them up.
    pub fn plan(
        &self,
        source: &str,
        events: &[FanOutEvent],
        inbound_id: InboundId,
        now: Timestamp,
    ) -> Vec<NewDelivery> {
        let set = self.shared.endpoints();
        plan_deliveries(source, events, &set.subscribers)
            .iter()
            .map(|plan| {
                let due = self.shared.first_attempt_at(now);
                new_delivery(plan, DeliveryId::new_at(now), inbound_id, due, None)
            })
            .collect()
    }

    /// This instance's name, as it appears on leases and endpoint ownership.
    pub fn owner(&self) -> &str {
        &self.shared.owner
    }

    /// A handle that plans deliveries against this instance's current endpoints, for the
    /// ledger's announcements (planned inside a store transaction, picked up by the poller).
    pub fn planner(&self) -> Planner {
        Planner {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Starts the jobs of a committed ingest.
    pub fn hand_off(&self, prepared: Prepared) {
        for mut job in prepared.jobs {
            job.claim = self.shared.hold(job.delivery_id, job.leased_until, None);
            self.shared.enqueue(job);
        }
    }

    /// Works through what a disabling or a deletion left of an endpoint's backlog, in the
    /// background (see [`Shared::settle_backlogs`]).
    pub fn settle_backlogs(&self, disabled: Vec<EndpointId>, deleted: Vec<EndpointId>) {
        self.shared.settle_backlogs(disabled, deleted);
    }

    /// Wakes the poller: deliveries became due outside the hand-off (recovery, redelivery).
    pub fn wake(&self) {
        self.shared.wake_poller.notify_one();
    }

    /// Stops claiming, lets in-flight attempts finish for up to `shutdown_grace` (still renewing
    /// their leases), gives back what was not attempted, and records the last outcomes.
    pub async fn shutdown(&self) {
        let shared = &self.shared;
        let _ = shared.stopping.send(true);
        shared.wake_poller.notify_one();
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let lane_tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *shared.lane_tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks.into_iter().chain(lane_tasks) {
            let _ = task.await;
        }
        let deadline = tokio::time::Instant::now() + shared.config.shutdown_grace.0;
        let mut aborted = false;
        while shared.running_attempts.load(Ordering::SeqCst) > 0 {
            let notified = shared.attempts_done.notified();
            if shared.running_attempts.load(Ordering::SeqCst) == 0 {
                break;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline), if !aborted => {
                    tracing::warn!("shutdown grace elapsed; giving back the attempts still in flight");
                    let _ = shared.abort.send(true);
                    aborted = true;
                }
            }
        }
        // Leases (and endpoint ownership) were renewed while attempts ran: an attempt that
        // outlived its lease could be claimed and sent again by another instance meanwhile.
        let _ = shared.stop_renewing.send(true);
        let renewal = self
            .renewal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(renewal) = renewal {
            let _ = renewal.await;
        }
        // Twice: a job set aside for an earlier claim of its delivery is handed back, and given
        // back, as the first flush records that claim's outcome.
        for _ in 0..2 {
            let (flushed, done) = tokio::sync::oneshot::channel();
            if shared.completions.send(ToCompleter::Flush(flushed)).is_ok() {
                let _ = done.await;
            }
        }
        let completer = self
            .completer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(completer) = completer {
            completer.abort();
            let _ = completer.await;
        }
        // Everything is recorded: hand the endpoints over now, rather than have the other
        // instances wait out their ownership leases before they deliver to them.
        let owned: Vec<EndpointId> =
            std::mem::take(&mut *shared.owned.lock().unwrap_or_else(|p| p.into_inner()))
                .into_keys()
                .collect();
        if !owned.is_empty()
            && let Err(error) = shared.store.disown_endpoints(&shared.owner, owned).await
        {
            tracing::warn!(%error, "could not hand over endpoints; other instances take them when their leases lapse");
        }
    }
}

fn new_delivery(
    plan: &PlannedDelivery,
    id: DeliveryId,
    inbound_id: InboundId,
    due: Timestamp,
    lease: Option<Lease>,
) -> NewDelivery {
    NewDelivery {
        id,
        endpoint_id: plan.endpoint_id,
        message_id: plan.message_id(inbound_id),
        event_id: plan.event_id,
        event_type: plan.event_type.as_str(),
        status: if plan.active {
            DeliveryStatus::Pending
        } else {
            DeliveryStatus::Held
        },
        next_attempt_at: due,
        lease,
    }
}

/// Plans deliveries for events billhook itself announces.
#[derive(Clone)]
pub struct Planner {
    shared: Arc<Shared>,
}

impl Planner {
    /// Deliveries of one announced event to the canonical endpoints subscribed to it, made at
    /// `now`. Raw endpoints receive providers' messages only, and billhook's conclusions are
    /// none.
    pub fn canonical(
        &self,
        source: &str,
        event: FanOutEvent,
        inbound_id: InboundId,
        now: Timestamp,
    ) -> Vec<NewDelivery> {
        let set = self.shared.endpoints();
        plan_deliveries(source, &[event], &set.subscribers)
            .iter()
            .filter(|plan| plan.event_id.is_some())
            .map(|plan| {
                let due = self.shared.first_attempt_at(now);
                new_delivery(plan, DeliveryId::new_at(now), inbound_id, due, None)
            })
            .collect()
    }
}

/// Why the delivery runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("endpoint `{name}` in the configuration: {message}")]
    Endpoint { name: String, message: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Why billhook disabled a named endpoint: the configuration file no longer declares it.
const REMOVED_FROM_CONFIGURATION: &str = "removed from the configuration file";

/// Creates or updates the endpoints declared in the configuration file, disables named
/// endpoints that are no longer declared, and enables again those declared again after that.
async fn sync_declared(
    store: &Store,
    destinations: &DestinationPolicy,
    declared: &[EndpointConfig],
    known_sources: &[String],
    secret_overlap: Duration,
) -> Result<(), StartError> {
    let now = Timestamp::now();
    for endpoint in declared {
        let invalid = |message: String| StartError::Endpoint {
            name: endpoint.name.clone(),
            message,
        };
        let headers: Vec<(String, String)> = endpoint.headers.clone().into_iter().collect();
        EndpointDefinition::check_static(
            &endpoint.event_types,
            endpoint.sources.as_deref(),
            &endpoint.format,
            &headers,
            endpoint.rate_limit,
            endpoint.max_concurrency,
        )
        .map_err(&invalid)?;
        if let Some(unknown) = endpoint
            .sources
            .iter()
            .flatten()
            .find(|s| !known_sources.contains(s))
        {
            return Err(invalid(format!(
                "sources names `{unknown}`, which is not a configured source"
            )));
        }
        // A host that does not resolve now may later; the gateway starts all the same, and
        // each attempt checks where the host then resolves to. One that resolves to an address
        // the policy refuses is a mistake in the configuration.
        match destinations.check_url(&endpoint.url).await {
            Ok(_) => {}
            Err(Refusal::Unresolvable(host)) => tracing::warn!(
                endpoint = %endpoint.name,
                %host,
                "a declared endpoint's host does not resolve now; attempts to it fail until it does"
            ),
            Err(refused) => return Err(invalid(refused.to_string())),
        }
        let secret = match &endpoint.secret {
            Some(text) => billhook_core::signing::EndpointSecret::parse(text.expose())
                .map_err(|e| invalid(e.to_string()))?
                .expose(),
            None => billhook_core::signing::EndpointSecret::generate().expose(),
        };
        store
            .upsert_named_endpoint(
                billhook_store::NewEndpoint {
                    id: EndpointId::new(),
                    name: Some(endpoint.name.clone()),
                    url: endpoint.url.clone(),
                    description: endpoint.description.clone(),
                    event_types: endpoint.event_types.clone(),
                    sources: endpoint.sources.clone(),
                    format: endpoint.format.clone(),
                    headers,
                    rate_limit: endpoint.rate_limit,
                    max_concurrency: endpoint.max_concurrency,
                    enabled: true,
                    secret,
                    now,
                },
                // A secret changed in the file is a rotation: the one it replaces keeps signing
                // for the overlap, so receivers can take the new one in their own time.
                endpoint.secret.is_some().then(|| now.add(secret_overlap)),
            )
            .await?;
    }
    for record in store.all_endpoints().await? {
        let Some(name) = &record.name else {
            continue;
        };
        let is_declared = declared.iter().any(|e| &e.name == name);
        if record.enabled && !is_declared {
            store
                .update_endpoint(
                    record.id,
                    billhook_store::EndpointPatch {
                        enabled: Some(false),
                        disabled_reason: Some(REMOVED_FROM_CONFIGURATION.to_owned()),
                        ..billhook_store::EndpointPatch::default()
                    },
                    now,
                )
                .await?;
            tracing::warn!(endpoint = %record.id, name, "disabled an endpoint no longer in the configuration");
        } else if !record.enabled
            && is_declared
            && record.disabled_reason.as_deref() == Some(REMOVED_FROM_CONFIGURATION)
        {
            // Only billhook's own disabling is undone: one by an operator, or for failing,
            // stands until someone enables it. What was held meanwhile stays held, as after
            // any enabling without `recover_since`.
            store
                .update_endpoint(
                    record.id,
                    billhook_store::EndpointPatch {
                        enabled: Some(true),
                        ..billhook_store::EndpointPatch::default()
                    },
                    now,
                )
                .await?;
            tracing::info!(
                endpoint = %record.id,
                name,
                "enabled an endpoint declared again; `billhook endpoints recover` resends what it missed"
            );
        }
    }
    Ok(())
}

impl Shared {
    fn endpoints(&self) -> Arc<EndpointSet> {
        Arc::clone(&self.endpoints.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn endpoint(&self, id: EndpointId) -> Option<Arc<EndpointRuntime>> {
        self.endpoints().by_id.get(&id).cloned()
    }

    /// `reload_endpoints`, and when that fails, again in the background (backing off) until a
    /// read succeeds or delivery stops: a change already committed must reach this instance's
    /// endpoint set, and the caller has nothing to retry. The first failure is returned, for
    /// the caller to act on meanwhile.
    async fn reload_endpoints_until_read(self: &Arc<Self>) -> Result<(), StoreError> {
        let Err(error) = self.reload_endpoints().await else {
            return Ok(());
        };
        tracing::warn!(%error, "could not reload endpoints; trying again");
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(250);
            while !shared.stopping() {
                tokio::time::sleep(delay).await;
                match shared.reload_endpoints().await {
                    Ok(()) => return,
                    Err(_) => delay = (delay * 2).min(Duration::from_secs(5)),
                }
            }
        });
        Err(error)
    }

    /// Reads the endpoints and makes them this instance's set. Every change to an endpoint
    /// reloads after its commit, and reloads overlap (admin requests, other instances'
    /// notifications, a disabling): one that started reading before another's change committed
    /// may finish after that one's reload, and installing it then would forget the change (an
    /// endpoint created and never planned for, a disabled one still sent to). So reads are
    /// numbered as they start, and a read older than the set installed is dropped: the newest
    /// read started after every change whose reload has begun, and has seen them all.
    async fn reload_endpoints(self: &Arc<Self>) -> Result<(), StoreError> {
        let read = self.endpoint_reads.fetch_add(1, Ordering::SeqCst) + 1;
        let records = self.store.all_endpoints().await?;
        let set = Arc::new(EndpointSet::build(
            &records,
            self.config.default_max_concurrency,
        ));
        // The lanes' lock is held across the swap: a lane is started only by a reader of the
        // set holding that lock (`lane`), so none is started for an endpoint of the old set
        // after the deleted endpoints' lanes are removed below.
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        if self.installed_read.load(Ordering::SeqCst) > read {
            return Ok(());
        }
        self.installed_read.store(read, Ordering::SeqCst);
        // A lane remembers since when its endpoint has been failing. The store forgets it when
        // the endpoint is disabled and enabled again (or succeeds on another instance); a lane
        // that did not would disable a re-enabled endpoint again at its first failure. Reset
        // before the endpoint is seen as enabled again.
        for record in &records {
            if let Some(entry) = lanes.get(&record.id)
                && (!record.enabled || record.failing_since.is_none())
            {
                *entry
                    .lane
                    .failing_since
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
            }
        }
        let previous = std::mem::replace(
            &mut *self.endpoints.write().unwrap_or_else(|p| p.into_inner()),
            Arc::clone(&set),
        );
        // A deleted endpoint's lane goes, or an instance would keep a task and a queue for
        // every endpoint ever made. What it still holds is cancelled as its task works through
        // it; a job on its way to it finds no lane and goes back to the database.
        lanes.retain(|id, _| set.by_id.contains_key(id));
        self.metrics.set_lanes(lanes.len());
        // A lane waiting for a permit under the old limit would otherwise take the next one
        // freed before it learns of a lower one.
        for (id, entry) in lanes.iter() {
            if let Some(endpoint) = set.by_id.get(id) {
                entry.lane.concurrency.resize(endpoint.max_concurrency);
            }
        }
        drop(lanes);
        // A deleted endpoint's series go with it, or every endpoint ever made (a CI creating
        // and deleting one per run) would stay in /metrics until a restart.
        for gone in previous
            .by_id
            .keys()
            .filter(|id| !set.by_id.contains_key(id))
        {
            self.metrics.forget_endpoint(&gone.to_string());
        }
        self.wake_poller.notify_one();
        Ok(())
    }

    /// Holds the waiting deliveries of `disabled` endpoints and cancels those of `deleted`
    /// ones, batch after batch, in the background: the disabling or deletion changed only the
    /// first [`BACKLOG_BATCH`], so that a backlog of any length never holds the database for
    /// long. Stops at the first failure or at shutdown; the poller holds or cancels any
    /// delivery of such an endpoint that falls due, and the next start holds the rest.
    fn settle_backlogs(self: &Arc<Self>, disabled: Vec<EndpointId>, deleted: Vec<EndpointId>) {
        if disabled.is_empty() && deleted.is_empty() {
            return;
        }
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            let whole = u64::from(BACKLOG_BATCH);
            let store = &shared.store;
            let result: Result<(), StoreError> = async {
                while !disabled.is_empty()
                    && !shared.stopping()
                    && shared
                        .retrying(|| {
                            store.hold_deliveries_of_disabled(disabled.clone(), Timestamp::now())
                        })
                        .await?
                        == whole
                {}
                while !deleted.is_empty()
                    && !shared.stopping()
                    && shared
                        .retrying(|| {
                            store.cancel_deliveries_of_deleted(deleted.clone(), Timestamp::now())
                        })
                        .await?
                        == whole
                {}
                for endpoint in &deleted {
                    while !shared.stopping()
                        && shared
                            .retrying(|| store.cancel_held_of_deleted(*endpoint, Timestamp::now()))
                            .await?
                            == whole
                    {}
                }
                Ok(())
            }
            .await;
            if let Err(error) = result {
                tracing::warn!(%error, "could not hold or cancel the rest of an endpoint's backlog");
            }
        });
    }

    /// `step`, tried again a few times, backing off, while the database is away or cancels it
    /// for a conflict (a deadlock with a statement locking the same rows in another order).
    async fn retrying<T, Step, Fut>(&self, mut step: Step) -> Result<T, StoreError>
    where
        Step: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut pause = Duration::from_millis(100);
        for _ in 0..5 {
            match step().await {
                Err(StoreError::Unavailable(_) | StoreError::Conflict(_)) if !self.stopping() => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                done => return done,
            }
        }
        step().await
    }

    /// When a delivery planned at `now` is first due: the retry schedule's first wait applies
    /// to every delivery, whether ingest, reprocessing or the ledger planned it.
    fn first_attempt_at(&self, now: Timestamp) -> Timestamp {
        now.add(self.policy.wait_before(1, &mut rand::rng()))
    }

    /// The lane of an endpoint that exists and is enabled, started on first use.
    fn lane(self: &Arc<Self>, id: EndpointId) -> Option<Arc<Lane>> {
        if !self.works || *self.stopping.borrow() {
            return None;
        }
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        // Read under the lanes' lock (see `reload_endpoints`).
        let endpoint = self.endpoint(id).filter(|e| e.enabled)?;
        if let Some(entry) = lanes.get(&id) {
            return Some(Arc::clone(&entry.lane));
        }
        // Asked again under the lane tasks' lock: the stop says so before it takes the tasks to
        // wait for, so a lane started now is either among them or never started.
        let mut tasks = self.lane_tasks.lock().unwrap_or_else(|p| p.into_inner());
        if *self.stopping.borrow() {
            return None;
        }
        let (queue, jobs) = mpsc::unbounded_channel();
        let lane = Arc::new(Lane {
            id,
            slots: Arc::new(Semaphore::new(self.config.queue_per_endpoint as usize)),
            concurrency: ConcurrencyLimit::new(endpoint.max_concurrency),
            paused_until: Mutex::new(None),
            failing_since: Mutex::new(endpoint.failing_since),
        });
        let entry = LaneEntry {
            lane: Arc::clone(&lane),
            queue,
        };
        lanes.insert(id, entry);
        self.metrics.set_lanes(lanes.len());
        let task = tokio::spawn(run_lane(Arc::clone(self), Arc::clone(&lane), jobs));
        tasks.retain(|task| !task.is_finished());
        tasks.push(task);
        Some(lane)
    }

    /// Counts a claim of a delivery taken into memory; its completion counts it off. `asked` is
    /// when the poller asked for it; a claim written with its new row, which no outcome can
    /// have ended yet, has none.
    fn hold(&self, id: DeliveryId, leased_until: Timestamp, asked: Option<Asked>) -> ClaimNumber {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let asked = asked.unwrap_or_else(|| held.asking());
        held.claim(id, leased_until, asked)
    }

    /// Whether `job` may be attempted now, its lease lasting the longest an attempt may take.
    /// A lease too short for that, or not known to be this instance's, is renewed first, if
    /// the database still holds it for this instance.
    async fn turn(&self, job: &Job) -> Turn {
        let longest = self.config.request_timeout.0;
        let turn = self.turn_at(job, Timestamp::now(), longest);
        if !matches!(turn, Turn::Lapsing | Turn::Unproven) {
            return turn;
        }
        if let Err(error) = self.renew(vec![job.delivery_id], Timestamp::now()).await {
            tracing::debug!(%error, "could not renew a lease before an attempt");
        }
        self.turn_at(job, Timestamp::now(), longest)
    }

    /// Extends the leases of `ids` that have not lapsed at `now`, and records those extended.
    async fn renew(&self, ids: Vec<DeliveryId>, now: Timestamp) -> Result<(), StoreError> {
        let until = now.add(self.config.lease.0);
        let asked = self.held.lock().unwrap_or_else(|p| p.into_inner()).asking();
        let renewed = self
            .store
            .renew_leases(&self.owner, ids, now, until)
            .await?;
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .renewed(&renewed, until, asked);
        Ok(())
    }

    /// Whether `job` may start, at `now`, an attempt lasting up to `longest`.
    fn turn_at(&self, job: &Job, now: Timestamp, longest: Duration) -> Turn {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).turn(
            job.delivery_id,
            job.claim,
            now,
            longest,
        )
    }

    /// Puts off a job that must not be attempted now. One waiting for an earlier claim of its
    /// delivery is set aside until that claim is counted off. Any other is let go, writing
    /// nothing: its lease has lapsed or soon will, or a newer claim holds the delivery, so the
    /// row is the database's to hand out.
    fn put_off(self: &Arc<Self>, job: Job, turn: Turn) {
        if turn == Turn::Waiting {
            let (id, claim) = (job.delivery_id, job.claim);
            let job = self
                .held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_aside(id, claim, job);
            if let Some(job) = job {
                self.enqueue(job);
            }
            return;
        }
        tracing::debug!(delivery = %job.delivery_id, ?turn, "dropping a job whose lease is not ours to use");
        self.metrics.lease_lapsed();
        let waiting = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release(job.delivery_id);
        if let Some(waiting) = waiting {
            self.enqueue(waiting);
        }
    }

    fn enqueue(self: &Arc<Self>, job: Job) {
        let queue = self
            .lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&job.endpoint_id)
            .map(|entry| entry.queue.clone());
        match queue {
            Some(queue) => {
                if let Err(mpsc::error::SendError(job)) = queue.send(job) {
                    self.give_back(job);
                }
            }
            None => self.give_back(job),
        }
    }

    /// Returns a job to the database unattempted: its lease is cleared and its schedule kept.
    fn give_back(&self, job: Job) {
        self.finish(Completion {
            delivery_id: job.delivery_id,
            endpoint_id: job.endpoint_id,
            attempt: None,
            next: NextStep::Released,
            disable_endpoint: None,
        });
    }

    /// Returns a job to the database as its lane stops, unless another claim of its delivery
    /// is out: the write, matched by owner name, would end that claim's lease while its
    /// attempt may be in flight. A superseded job is let go; one waiting for an earlier claim
    /// is given back once that claim is counted off.
    fn give_back_at_stop(self: &Arc<Self>, job: Job) {
        match self.turn_at(&job, Timestamp::now(), Duration::ZERO) {
            turn @ (Turn::Superseded | Turn::Waiting) => self.put_off(job, turn),
            Turn::Attempt | Turn::Unproven | Turn::Lapsing => self.give_back(job),
        }
    }

    fn finish(&self, completion: Completion) {
        if self
            .completions
            .send(ToCompleter::Record(completion))
            .is_err()
        {
            tracing::warn!(
                "a delivery outcome could not be recorded; its lease will expire and it will be retried"
            );
        }
    }

    fn stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Whether this instance delivers to the endpoint now.
    fn owns(&self, id: EndpointId) -> bool {
        if !self.works {
            return false;
        }
        if self.store.is_single_process() {
            return true;
        }
        let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        match owned.get_mut(&id) {
            Some(active) => {
                *active = tokio::time::Instant::now();
                true
            }
            None => false,
        }
    }

    /// On taking over an endpoint, its lane's failing time becomes the database's: the
    /// endpoint may have recovered, or started failing afresh, under another instance, and
    /// judging it by what this instance saw before would disable it too early.
    /// If the read fails the lanes keep what they had: the risk of an early disabling is
    /// smaller than that of not delivering.
    async fn take_failing_since_from_store(&self, taken: &[EndpointId]) {
        if taken.is_empty() {
            return;
        }
        let records = match self.store.all_endpoints().await {
            Ok(records) => records,
            Err(error) => {
                tracing::warn!(%error, "could not read the failing times of endpoints taken over");
                return;
            }
        };
        let lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        for record in records.iter().filter(|r| taken.contains(&r.id)) {
            if let Some(entry) = lanes.get(&record.id) {
                *entry
                    .lane
                    .failing_since
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = record.failing_since;
            }
        }
    }

    /// Treats an endpoint as enabled or disabled from now on, ahead of the reload from the
    /// database.
    fn set_enabled(&self, id: EndpointId, enabled: bool) {
        let mut endpoints = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
        let mut set = EndpointSet::clone(&endpoints);
        if let Some(endpoint) = set.by_id.get_mut(&id) {
            let mut updated = EndpointRuntime::clone(endpoint);
            updated.enabled = enabled;
            *endpoint = Arc::new(updated);
        }
        for subscriber in set.subscribers.iter_mut().filter(|s| s.id == id) {
            subscriber.enabled = enabled;
        }
        *endpoints = Arc::new(set);
    }
}

/// Works one endpoint's queue in order: slow-down pauses, the rate limit, then concurrency.
async fn run_lane(shared: Arc<Shared>, lane: Arc<Lane>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut stopping = shared.stopping.subscribe();
    let mut next_slot = tokio::time::Instant::now();
    loop {
        let job = tokio::select! {
            job = jobs.recv() => match job { Some(job) => job, None => break },
            _ = stopping.wait_for(|stop| *stop) => break,
        };
        // A job superseded or whose lease is over is let go before it waits for anything,
        // so a lane backed up behind an outage empties at once and makes room for new claims.
        // One whose lease is unproven (an outcome of its delivery written since its claim)
        // waits for its permits like the rest, and is renewed then.
        if let turn @ (Turn::Superseded | Turn::Waiting | Turn::Lapsing) =
            shared.turn_at(&job, Timestamp::now(), Duration::ZERO)
        {
            shared.put_off(job, turn);
            continue;
        }
        let Some(endpoint) = sendable_endpoint(&shared, &lane, &job) else {
            continue;
        };
        // The pause is checked again once the permits are held: a wait for them can outlast
        // it, and a pause set meanwhile (a 429) would otherwise let the job go out at once.
        // The rate limit's slot is taken only as the attempt starts, below. Permits are not
        // held while waiting, which would keep other endpoints' attempts out.
        let permits = loop {
            let now = tokio::time::Instant::now();
            let paused = *lane.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            let wait_until = paused
                .into_iter()
                .chain(endpoint.rate_limit.map(|_| next_slot))
                .max()
                .filter(|until| *until > now);
            if let Some(until) = wait_until {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => continue,
                    _ = stopping.wait_for(|stop| *stop) => break None,
                }
            }
            let permits = tokio::select! {
                permits = async {
                    let local = lane.concurrency.acquire().await;
                    let global = Arc::clone(&shared.in_flight).acquire_owned().await;
                    local.zip(global.ok())
                } => permits,
                _ = stopping.wait_for(|stop| *stop) => None,
            };
            let Some(permits) = permits else {
                break None;
            };
            let now = tokio::time::Instant::now();
            let paused = *lane.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            if paused.is_some_and(|until| until > now) {
                continue;
            }
            break Some(permits);
        };
        let Some(permits) = permits else {
            shared.give_back_at_stop(job);
            break;
        };
        match shared.turn(&job).await {
            Turn::Attempt => {}
            turn => {
                shared.put_off(job, turn);
                continue;
            }
        }
        // The waits above can last up to `retry_after_cap`; meanwhile the endpoint may have
        // been deleted, disabled (an attempt beside this one answered 410) or pointed elsewhere.
        // The attempt goes by the endpoint as it is now.
        let Some(endpoint) = sendable_endpoint(&shared, &lane, &job) else {
            continue;
        };
        // The send slot is taken as the attempt starts, not when the permits came: the turn
        // may have renewed the lease in the database meanwhile, and a slot reserved before that
        // wait would let the next attempt follow this one closer than the rate allows.
        if let Some(rate) = endpoint.rate_limit {
            next_slot = tokio::time::Instant::now() + Duration::from_secs(1) / rate;
        }
        shared.running_attempts.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(attempt(
            Arc::clone(&shared),
            Arc::clone(&lane),
            endpoint,
            job,
            permits,
        ));
    }
    // Whatever is still queued goes back to the database for the next run or another instance.
    jobs.close();
    while let Some(job) = jobs.recv().await {
        shared.give_back_at_stop(job);
    }
}

/// The lane's endpoint as it is now, if the job may go to it; otherwise the job is finished
/// unsent: cancelled if the endpoint was deleted, held if it is disabled.
fn sendable_endpoint(shared: &Shared, lane: &Lane, job: &Job) -> Option<Arc<EndpointRuntime>> {
    let endpoint = shared.endpoint(lane.id);
    let next = match &endpoint {
        None => NextStep::Cancelled,
        Some(endpoint) if !endpoint.enabled => NextStep::Held,
        Some(_) => return endpoint,
    };
    shared.finish(Completion {
        delivery_id: job.delivery_id,
        endpoint_id: job.endpoint_id,
        attempt: None,
        next,
        disable_endpoint: None,
    });
    None
}

/// Makes one attempt and decides what follows.
async fn attempt(
    shared: Arc<Shared>,
    lane: Arc<Lane>,
    endpoint: Arc<EndpointRuntime>,
    job: Job,
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
) {
    let mut abort = shared.abort.subscribe();
    let started_at = Timestamp::now();
    let clock = std::time::Instant::now();
    let result = tokio::select! {
        result = send::send(&shared.client, &shared.destinations, &endpoint, &job) => Some(result),
        _ = abort.wait_for(|abort| *abort) => None,
    };
    let completion = match result {
        None => Completion {
            delivery_id: job.delivery_id,
            endpoint_id: job.endpoint_id,
            attempt: None,
            next: NextStep::Released,
            disable_endpoint: None,
        },
        Some(result) => judge(&shared, &lane, &job, result, started_at, clock.elapsed()),
    };
    let disabled = completion.disable_endpoint.is_some();
    shared.finish(completion);
    if disabled {
        // Stop the lane at once; the completer reloads endpoints from the database after
        // recording the change.
        shared.set_enabled(job.endpoint_id, false);
    }
    drop(job);
    shared.running_attempts.fetch_sub(1, Ordering::SeqCst);
    shared.attempts_done.notify_waiters();
}

/// Applies the retry policy to an attempt's result.
fn judge(
    shared: &Shared,
    lane: &Lane,
    job: &Job,
    result: send::AttemptResult,
    started_at: Timestamp,
    took: Duration,
) -> Completion {
    let now = Timestamp::now();
    let number = job.attempts + 1;
    let outcome = if result.succeeded() {
        AttemptOutcome::Success
    } else {
        AttemptOutcome::Failure {
            status: result.status,
            retry_after: result.retry_after,
        }
    };
    let failing_since = {
        let mut failing = lane.failing_since.lock().unwrap_or_else(|p| p.into_inner());
        let before = *failing;
        *failing = match outcome {
            AttemptOutcome::Success => None,
            AttemptOutcome::Failure { .. } => Some(before.unwrap_or(now)),
        };
        before
    };
    let decision = shared
        .policy
        .decide(number, outcome, now, failing_since, &mut rand::rng());
    let (next, disable_endpoint) = match decision {
        Decision::Delivered => (NextStep::Delivered, None),
        Decision::Retry { at, slow_down } => {
            if let Some(wait) = slow_down {
                lane.pause(wait);
            }
            (NextStep::Retry { at }, None)
        }
        Decision::Dead { slow_down } => {
            if let Some(wait) = slow_down {
                lane.pause(wait);
            }
            (NextStep::Dead, None)
        }
        Decision::DisableEndpoint { reason } => (NextStep::Held, Some(reason)),
    };
    let (error_kind, error_message) = match &result.error {
        Some((kind, message)) => (Some((*kind).to_owned()), Some(message.clone())),
        None => (None, None),
    };
    tracing::debug!(
        endpoint = %job.endpoint_id,
        delivery = %job.delivery_id,
        attempt = number,
        status = result.status,
        error = error_kind.as_deref(),
        took_ms = took.as_millis() as u64,
        next = ?next,
        "delivery attempt"
    );
    if let Some(reason) = &disable_endpoint {
        tracing::warn!(endpoint = %job.endpoint_id, reason, "disabling an endpoint");
    }
    let counted = match next {
        NextStep::Delivered => metrics::AttemptOutcome::delivered,
        NextStep::Dead => metrics::AttemptOutcome::dead,
        _ if disable_endpoint.is_some() => metrics::AttemptOutcome::endpoint_disabled,
        _ => metrics::AttemptOutcome::retrying,
    };
    // An attempt that was in flight when its endpoint was deleted would bring back the series
    // the deletion dropped, for good.
    if shared.endpoint(job.endpoint_id).is_some() {
        shared.metrics.attempted(
            &job.endpoint_id.to_string(),
            counted,
            took,
            received_at(&job.message_id),
        );
    }
    Completion {
        delivery_id: job.delivery_id,
        endpoint_id: job.endpoint_id,
        attempt: Some(NewAttempt {
            id: AttemptId::new_at(started_at),
            number,
            started_at,
            duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            status_code: result.status,
            response_body: result.body,
            error_kind,
            error_message,
        }),
        next,
        disable_endpoint,
    }
}

/// When billhook received the message a delivery carries: the time in its id (an event's or,
/// for raw deliveries, the stored request's).
fn received_at(message_id: &str) -> Option<Timestamp> {
    message_id
        .parse::<EventId>()
        .map(|id| id.created_at())
        .or_else(|_| message_id.parse::<InboundId>().map(|id| id.created_at()))
        .ok()
}

/// The first pause before recording a batch of outcomes again, doubled up to the second.
const COMPLETION_RETRY_FIRST: Duration = Duration::from_millis(100);
const COMPLETION_RETRY_MOST: Duration = Duration::from_secs(5);
/// How many times a batch is written again after errors other than the database being away.
const COMPLETION_REFUSALS_KEPT_AT: usize = 5;
/// How long a batch is still tried once billhook is stopping: the stop waits for outcomes to be
/// written, but not for a database that does not come back.
const COMPLETION_RETRY_AT_STOP: Duration = Duration::from_secs(5);

/// Records completions in batches, one transaction each.
async fn run_completer(shared: Arc<Shared>, mut queue: mpsc::UnboundedReceiver<ToCompleter>) {
    let mut messages = Vec::with_capacity(256);
    while queue.recv_many(&mut messages, 512).await > 0 {
        let mut batch = Vec::with_capacity(messages.len());
        let mut flushes = Vec::new();
        for message in messages.drain(..) {
            match message {
                ToCompleter::Record(completion) => batch.push(completion),
                ToCompleter::Flush(reply) => flushes.push(reply),
            }
        }
        if !batch.is_empty() {
            record(&shared, batch).await;
        }
        for reply in flushes {
            let _ = reply.send(());
        }
    }
}

/// Records a batch of outcomes, trying again until the database takes them (or, once billhook is
/// stopping, for five seconds more; or until it refused them five times for another reason than
/// being away).
/// Dropping them would send every delivered event in the batch again once its lease lapsed, and
/// lose an endpoint's disabling: later batches, holding its deliveries, would commit meanwhile
/// and the reload after them would find it enabled. The batch's claims stay held while it
/// waits, so their leases are renewed whenever the database answers.
async fn record(shared: &Arc<Shared>, batch: Vec<Completion>) {
    let done: Vec<DeliveryId> = batch.iter().map(|c| c.delivery_id).collect();
    let batch: Arc<[Completion]> = batch.into();
    let disabled: Vec<EndpointId> = batch
        .iter()
        .filter(|c| c.disable_endpoint.is_some())
        .map(|c| c.endpoint_id)
        .collect();
    let mut stopping = shared.stopping.subscribe();
    let mut pause = COMPLETION_RETRY_FIRST;
    let mut refusals = 0;
    // Once stopping, the database away is waited out a little longer, not for good.
    let mut stop_by = None;
    loop {
        let Err(error) = shared
            .store
            .complete(Arc::clone(&batch), &shared.owner, Timestamp::now())
            .await
        else {
            break;
        };
        // The database away, or a conflict, passes; any other refusal may be this batch's own
        // for good, and must not hold up every outcome after it.
        let passing = matches!(error, StoreError::Unavailable(_) | StoreError::Conflict(_));
        refusals += usize::from(!passing);
        let out_of_time = shared.stopping()
            && *stop_by
                .get_or_insert_with(|| tokio::time::Instant::now() + COMPLETION_RETRY_AT_STOP)
                <= tokio::time::Instant::now();
        if refusals >= COMPLETION_REFUSALS_KEPT_AT || out_of_time {
            tracing::error!(%error, count = done.len(), "could not record delivery outcomes; their leases will expire and they will be retried");
            break;
        }
        tracing::warn!(%error, count = done.len(), retry_in_ms = pause.as_millis() as u64, "could not record delivery outcomes; trying again");
        match stop_by {
            Some(deadline) => {
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause)).await
            }
            None => tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stopping.wait_for(|stop| *stop) => {}
            },
        }
        pause = (pause * 2).min(COMPLETION_RETRY_MOST);
    }
    // Counted off as written even when given up on: a commit whose answer was lost may have
    // written it, and a later claim's lease must then be proven before it is used.
    let waiting: Vec<Job> = {
        let mut held = shared.held.lock().unwrap_or_else(|p| p.into_inner());
        done.into_iter()
            .filter_map(|id| held.recorded(id))
            .collect()
    };
    for job in waiting {
        shared.enqueue(job);
    }
    if !disabled.is_empty() {
        // The endpoint was taken as disabled in memory when its attempt was judged.
        let _ = shared.reload_endpoints_until_read().await;
        shared.settle_backlogs(disabled, Vec::new());
    }
    shared.wake_poller.notify_one();
}

/// Claims due deliveries for lanes with room, then sleeps until the next one falls due.
async fn run_poller(shared: Arc<Shared>) {
    /// The longest the poller sleeps without looking, in case of a missed wake-up.
    const MAX_SLEEP: Duration = Duration::from_secs(1);
    let mut stopping = shared.stopping.subscribe();
    loop {
        if shared.stopping() {
            return;
        }
        let now = Timestamp::now();
        let next_due = match poll_once(&shared, now).await {
            Ok(next) => next,
            Err(error) => {
                tracing::warn!(%error, "could not claim due deliveries");
                Some(now.add(MAX_SLEEP))
            }
        };
        let sleep = next_due.map_or(MAX_SLEEP, |at| at.since(Timestamp::now()).min(MAX_SLEEP));
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = shared.wake_poller.notified() => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
    }
}

/// One pass of the poller; returns when it should look again.
async fn poll_once(shared: &Arc<Shared>, now: Timestamp) -> Result<Option<Timestamp>, StoreError> {
    let asked = shared
        .held
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .claiming();
    let (due, next) = shared.store.due_endpoints(now).await?;
    // Due rows of an endpoint this instance does not know: most often one created elsewhere a
    // moment ago, but a delivery planned for an endpoint as it was deleted elsewhere would
    // otherwise wait for good.
    let unknown: Vec<EndpointId> = due
        .iter()
        .copied()
        .filter(|id| shared.endpoint(*id).is_none())
        .collect();
    if !unknown.is_empty() {
        match shared
            .store
            .cancel_deliveries_of_deleted(unknown, now)
            .await
        {
            Ok(0) => {}
            Ok(cancelled) => tracing::info!(
                cancelled,
                "cancelled deliveries planned for endpoints deleted meanwhile"
            ),
            // Claiming for the endpoints this instance knows goes on regardless.
            Err(error) => {
                tracing::warn!(%error, "could not cancel deliveries of deleted endpoints")
            }
        }
    }
    // Due rows of an endpoint this instance knows as disabled: written as it was disabled, or
    // left pending by a holder that stopped. No lane works them; held, they wait for a recover
    // like the rest, and pending they would keep their messages from retention for good.
    let disabled: Vec<EndpointId> = due
        .iter()
        .copied()
        .filter(|id| shared.endpoint(*id).is_some_and(|e| !e.enabled))
        .collect();
    if !disabled.is_empty() {
        match shared
            .store
            .hold_deliveries_of_disabled(disabled, now)
            .await
        {
            Ok(0) => {}
            Ok(held) => tracing::info!(held, "held deliveries due to disabled endpoints"),
            Err(error) => {
                tracing::warn!(%error, "could not hold deliveries of disabled endpoints")
            }
        }
    }
    // Only endpoints this instance has a lane for: owning one it does not know yet (an endpoint
    // created elsewhere a moment ago) would hold its deliveries back from every instance.
    // `owns` is asked only of endpoints with a lane: asking marks an owned endpoint active,
    // and one gone from memory must fall idle, to be handed over to an instance that can work it.
    let unowned: Vec<EndpointId> = due
        .iter()
        .copied()
        .filter(|id| shared.lane(*id).is_some() && !shared.owns(*id))
        .collect();
    if !unowned.is_empty() {
        let taken = shared
            .store
            .own_endpoints(&shared.owner, unowned, now, now.add(shared.config.lease.0))
            .await?;
        shared.take_failing_since_from_store(&taken).await;
        let mut owned = shared.owned.lock().unwrap_or_else(|p| p.into_inner());
        for id in taken {
            owned.insert(id, tokio::time::Instant::now());
        }
    }
    let mut again_now = false;
    for endpoint in due {
        let Some(lane) = shared.lane(endpoint) else {
            continue;
        };
        if !shared.owns(endpoint) {
            continue;
        }
        let room = lane.slots.available_permits().min(256);
        if room == 0 {
            continue;
        }
        let Ok(slots) = Arc::clone(&lane.slots).try_acquire_many_owned(room as u32) else {
            continue;
        };
        let leased_until = now.add(shared.config.lease.0);
        let claimed = shared
            .store
            .claim_due(endpoint, &shared.owner, now, leased_until, room as u32)
            .await?;
        again_now |= claimed.len() == room;
        let mut slots = Some(slots);
        for delivery in claimed {
            let slot = match slots.as_mut().and_then(|s| s.split(1)) {
                Some(slot) => slot,
                None => break,
            };
            dispatch_claimed(shared, delivery, leased_until, asked, slot);
        }
    }
    Ok(if again_now { Some(now) } else { next })
}

fn dispatch_claimed(
    shared: &Arc<Shared>,
    delivery: ClaimedDelivery,
    leased_until: Timestamp,
    asked: Asked,
    slot: OwnedSemaphorePermit,
) {
    let claim = shared.hold(delivery.id, leased_until, Some(asked));
    let Some(payload) = delivery.payload else {
        // Retention pruned the payload before the delivery could go out.
        shared.finish(Completion {
            delivery_id: delivery.id,
            endpoint_id: delivery.endpoint_id,
            attempt: None,
            next: NextStep::Dead,
            disable_endpoint: None,
        });
        return;
    };
    shared.enqueue(Job {
        delivery_id: delivery.id,
        endpoint_id: delivery.endpoint_id,
        message_id: delivery.message_id,
        event_type: delivery.event_type,
        attempts: delivery.attempts,
        payload,
        raw: delivery.raw,
        claim,
        leased_until,
        _slot: slot,
    });
}

/// Extends the lease on everything held in memory, well before it would expire: often enough
/// that a renewed lease always outlasts an attempt starting before the next renewal.
async fn run_lease_renewal(shared: Arc<Shared>) {
    let config = &shared.config;
    let every =
        (config.lease.0 / 3).min(config.lease.0.saturating_sub(config.request_timeout.0) / 2);
    let mut stop = shared.stop_renewing.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let now = Timestamp::now();
        let until = now.add(shared.config.lease.0);
        if !shared.store.is_single_process() {
            renew_ownership(&shared, now, until).await;
        }
        let ids = shared.held.lock().unwrap_or_else(|p| p.into_inner()).ids();
        if ids.is_empty() {
            continue;
        }
        if let Err(error) = shared.renew(ids, Timestamp::now()).await {
            tracing::warn!(%error, "could not renew delivery leases");
        }
    }
}

/// Keeps the endpoints that had work recently and hands over those idle for a whole lease, so
/// work spreads across instances as endpoints come and go. A stopping instance keeps only those
/// it still has attempts for.
async fn renew_ownership(shared: &Arc<Shared>, now: Timestamp, until: Timestamp) {
    let idle_after = shared.config.lease.0;
    let (active, idle): (Vec<EndpointId>, Vec<EndpointId>) = {
        let lanes = shared.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let owned = shared.owned.lock().unwrap_or_else(|p| p.into_inner());
        owned.iter().fold(
            (Vec::new(), Vec::new()),
            |(mut active, mut idle), (id, last)| {
                let busy = lanes.get(id).is_some_and(|entry| {
                    entry.lane.slots.available_permits() < shared.config.queue_per_endpoint as usize
                });
                // A stopping instance keeps only the endpoints it still has attempts for.
                let recent = !shared.stopping() && last.elapsed() < idle_after;
                if busy || recent {
                    active.push(*id);
                } else {
                    idle.push(*id);
                }
                (active, idle)
            },
        )
    };
    if !idle.is_empty() {
        shared
            .owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| !idle.contains(id));
        if let Err(error) = shared.store.disown_endpoints(&shared.owner, idle).await {
            tracing::warn!(%error, "could not hand over idle endpoints");
        }
    }
    match shared
        .store
        .own_endpoints(&shared.owner, active.clone(), now, until)
        .await
    {
        Ok(kept) => {
            let lost: Vec<EndpointId> =
                active.into_iter().filter(|id| !kept.contains(id)).collect();
            if !lost.is_empty() {
                tracing::warn!(
                    count = lost.len(),
                    "another instance took over endpoints whose lease lapsed"
                );
                shared
                    .owned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|id, _| !lost.contains(id));
            }
        }
        Err(error) => tracing::warn!(%error, "could not renew endpoint ownership"),
    }
}

/// Reacts to other instances' announcements: new work wakes the poller, changed endpoints are
/// reloaded, and after a reconnection both (something may have been missed).
async fn run_listener(
    shared: Arc<Shared>,
    mut notifications: mpsc::Receiver<billhook_store::Notification>,
) {
    let mut stopping = shared.stopping.subscribe();
    loop {
        let notification = tokio::select! {
            notification = notifications.recv() => match notification { Some(n) => n, None => return },
            _ = stopping.wait_for(|stop| *stop) => return,
        };
        use billhook_store::Notification;
        if matches!(
            notification,
            Notification::Endpoints | Notification::Reconnected
        ) {
            // Another instance's change is not announced twice.
            let _ = shared.reload_endpoints_until_read().await;
        }
        if matches!(
            notification,
            Notification::Deliveries | Notification::Reconnected
        ) {
            shared.wake_poller.notify_one();
        }
    }
}

/// Canonical events of one message, for the fan-out: (event, payload).
pub fn fan_out_events(events: &[billhook_store::NewEvent]) -> Vec<(FanOutEvent, Bytes)> {
    events
        .iter()
        .filter_map(|event| {
            event
                .event_type
                .parse::<EventType>()
                .ok()
                .map(|event_type| {
                    (
                        FanOutEvent {
                            id: event.id,
                            event_type,
                        },
                        event.payload.clone(),
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ready_within(
        acquiring: &mut std::pin::Pin<Box<impl Future<Output = Option<OwnedSemaphorePermit>>>>,
    ) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(Duration::from_millis(20), acquiring)
            .await
            .ok()
            .flatten()
    }

    /// Lowering the limit while attempts run lets no new one start until those running are
    /// under the new limit; raising it lets more start at once.
    #[tokio::test]
    async fn a_changed_concurrency_limit_holds_while_attempts_run() {
        let limit = ConcurrencyLimit::new(3);
        let mut running = Vec::new();
        for _ in 0..3 {
            running.push(limit.acquire().await.expect("a permit"));
        }
        limit.resize(1);
        let mut next = Box::pin(limit.acquire());
        assert!(ready_within(&mut next).await.is_none(), "three run");
        running.pop();
        assert!(
            ready_within(&mut next).await.is_none(),
            "two run, the limit is one"
        );
        running.pop();
        assert!(ready_within(&mut next).await.is_none(), "one runs");
        running.pop();
        let only = ready_within(&mut next)
            .await
            .expect("none runs: one may start");
        let mut second = Box::pin(limit.acquire());
        assert!(
            ready_within(&mut second).await.is_none(),
            "the limit is one"
        );
        drop(second);

        limit.resize(3);
        let mut raised = Vec::new();
        for _ in 0..2 {
            let mut acquiring = Box::pin(limit.acquire());
            raised.push(ready_within(&mut acquiring).await.expect("raised to three"));
        }
        let mut fourth = Box::pin(limit.acquire());
        assert!(ready_within(&mut fourth).await.is_none(), "three run");
        drop(only);
        assert!(ready_within(&mut fourth).await.is_some());
    }

    /// A lane already waiting under the old limit when it is lowered (the endpoint reloaded)
    /// does not take the next permit freed.
    #[tokio::test]
    async fn a_limit_lowered_while_the_lane_waits_holds() {
        let limit = ConcurrencyLimit::new(2);
        let mut running = vec![
            limit.acquire().await.expect("a permit"),
            limit.acquire().await.expect("a permit"),
        ];
        let mut waiting = Box::pin(limit.acquire());
        assert!(ready_within(&mut waiting).await.is_none(), "two run");
        limit.resize(1);
        running.pop();
        assert!(
            ready_within(&mut waiting).await.is_none(),
            "one runs, the limit is one"
        );
        running.pop();
        assert!(ready_within(&mut waiting).await.is_some());
    }
}
