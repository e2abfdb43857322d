//! The rows the store writes and reads. These are the store's wire format: explicit types, so a
//! change to what is stored is a change to this file and to a migration.

use billhook_core::access::Scope;
use billhook_core::ids::{EventId, InboundId, TokenId};
use billhook_core::ledger::Concluded;
use billhook_core::time::Timestamp;
use bytes::Bytes;

/// What became of a received request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundStatus {
    /// Normalized into canonical events.
    Processed,
    /// Verified but not understood; kept for reprocessing.
    Quarantined,
    /// Found, on reprocessing, to repeat a message stored since.
    Duplicate,
}

impl InboundStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            InboundStatus::Processed => "processed",
            InboundStatus::Quarantined => "quarantined",
            InboundStatus::Duplicate => "duplicate",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "processed" => Some(InboundStatus::Processed),
            "quarantined" => Some(InboundStatus::Quarantined),
            "duplicate" => Some(InboundStatus::Duplicate),
            _ => None,
        }
    }
}

/// A stable error code and its message, as recorded on a quarantined request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedError {
    pub code: String,
    pub message: String,
}

/// A received request to store.
#[derive(Debug, Clone)]
pub struct NewInbound {
    pub id: InboundId,
    pub source: String,
    pub provider: String,
    pub received_at: Timestamp,
    pub status: InboundStatus,
    pub provider_event: Option<String>,
    pub provider_event_id: Option<String>,
    pub dedup_key: String,
    /// A second key the request is a duplicate under, claimed beside `dedup_key` (the
    /// provider's `body_dedup_key`); kept in the dedup table only.
    pub body_dedup_key: Option<String>,
    pub verification: String,
    pub remote_addr: Option<String>,
    /// Selected headers, secrets already redacted.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub error: Option<RecordedError>,
}

impl NewInbound {
    /// Every key the request claims: it is stored only if it gets them all.
    pub fn dedup_keys(&self) -> impl Iterator<Item = &str> {
        claimed_keys(&self.dedup_key, self.body_dedup_key.as_deref())
    }
}

/// The distinct keys a request claims, `dedup_key` first (the order every claim takes them
/// in). A body key equal to the main one is claimed once: one statement cannot claim a key
/// twice.
pub fn claimed_keys<'a>(
    dedup_key: &'a str,
    body_dedup_key: Option<&'a str>,
) -> impl Iterator<Item = &'a str> {
    std::iter::once(dedup_key).chain(body_dedup_key.filter(|key| *key != dedup_key))
}

/// A canonical event to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: EventId,
    pub event_type: &'static str,
    pub source: String,
    pub subject_kind: &'static str,
    pub subject_id: String,
    pub occurred_at: Timestamp,
    pub received_at: Timestamp,
    /// The canonical JSON, exactly as it will be delivered.
    pub payload: Bytes,
}

/// One ingest: the request, its events, their deliveries and what they change in the ledger, all
/// in one transaction.
#[derive(Clone)]
pub struct IngestWrite {
    pub inbound: NewInbound,
    pub events: Vec<NewEvent>,
    pub deliveries: Vec<NewDelivery>,
    /// The events' contributions to the ledger, applied in order.
    pub facts: Vec<Fact>,
    /// Announces what the ledger concludes; without one, nothing is concluded.
    pub concluder: Option<std::sync::Arc<dyn Concluder>>,
    /// Until when the dedup key keeps recognising redeliveries.
    pub dedup_expires_at: Timestamp,
}

/// What an ingest did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Stored, with these events.
    Stored {
        inbound_id: InboundId,
        event_ids: Vec<EventId>,
        /// Events the ledger concluded from this message (`invoice.settled`), with their
        /// deliveries: stored, but not handed off in memory.
        concluded: Vec<Concluded>,
    },
    /// The dedup key was already held: nothing new was stored. The ids are the original's.
    Duplicate {
        inbound_id: InboundId,
        event_ids: Vec<EventId>,
    },
}

/// A stored canonical event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub id: EventId,
    pub event_type: String,
    pub source: String,
    pub subject_kind: String,
    pub subject_id: String,
    pub inbound_id: InboundId,
    pub occurred_at: Timestamp,
    pub received_at: Timestamp,
    pub payload: Bytes,
}

/// A stored request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundRecord {
    pub id: InboundId,
    pub source: String,
    pub provider: String,
    pub received_at: Timestamp,
    pub status: InboundStatus,
    pub provider_event: Option<String>,
    pub provider_event_id: Option<String>,
    pub dedup_key: String,
    pub verification: String,
    pub remote_addr: Option<String>,
    pub headers: Vec<(String, String)>,
    /// `None` once retention has pruned the payload.
    pub body: Option<Bytes>,
    pub error: Option<RecordedError>,
    pub duplicate_of: Option<InboundId>,
    pub event_ids: Vec<EventId>,
}

/// Filters for listing events, newest first.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub event_type: Option<String>,
    pub source: Option<String>,
    /// The subject's provider id.
    pub subject: Option<String>,
    /// Only events older than this one (the cursor, or `EventId::lower_bound(until)`).
    pub before: Option<EventId>,
    /// Only events newer than this one (`EventId::lower_bound(since)`).
    pub after: Option<EventId>,
    pub limit: u32,
}

/// Filters for listing stored requests, newest first unless `oldest_first`.
#[derive(Debug, Clone, Default)]
pub struct InboundQuery {
    pub status: Option<InboundStatus>,
    pub source: Option<String>,
    /// The listing goes on past this id, in its order: a page's `next_cursor`.
    pub cursor: Option<InboundId>,
    /// Oldest first: how a backlog is worked through, the longest-waiting request first.
    pub oldest_first: bool,
    pub limit: u32,
}

/// One page of a listing and the cursor of the next, if there is more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl std::fmt::Debug for IngestWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestWrite")
            .field("inbound", &self.inbound.id)
            .field("events", &self.events.len())
            .field("deliveries", &self.deliveries.len())
            .field("facts", &self.facts.len())
            .finish()
    }
}

/// The result of reprocessing a quarantined request.
#[derive(Clone)]
pub enum Reprocess {
    /// It now normalizes: store these events and deliveries under this dedup key.
    Normalized {
        provider_event: String,
        provider_event_id: Option<String>,
        dedup_key: String,
        /// Claimed beside `dedup_key`, as at ingest.
        body_dedup_key: Option<String>,
        events: Vec<NewEvent>,
        deliveries: Vec<NewDelivery>,
        facts: Vec<Fact>,
        concluder: Option<std::sync::Arc<dyn Concluder>>,
        dedup_expires_at: Timestamp,
    },
    /// It still fails: record the latest error.
    StillFailing(RecordedError),
}

/// What reprocessing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReprocessOutcome {
    Processed {
        event_ids: Vec<EventId>,
        concluded: Vec<Concluded>,
    },
    StillQuarantined,
    DuplicateOf(InboundId),
    /// The request is not (or no longer) quarantined.
    NotQuarantined,
}

/// A stored request without its headers and body, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundSummary {
    pub id: InboundId,
    pub source: String,
    pub provider: String,
    pub received_at: Timestamp,
    pub status: InboundStatus,
    pub provider_event: Option<String>,
    pub provider_event_id: Option<String>,
    pub verification: String,
    /// `None` once retention has pruned the payload.
    pub body_size: Option<u64>,
    pub error: Option<RecordedError>,
    pub duplicate_of: Option<InboundId>,
}

use billhook_core::ids::{AttemptId, DeliveryId, EndpointId};

/// A signing secret of an endpoint. `Debug` leaves the secret out.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretRecord {
    /// `whsec_…`
    pub secret: String,
    pub created_at: Timestamp,
    /// `None` for the current secret; rotated-out secrets sign until then.
    pub expires_at: Option<Timestamp>,
}

impl std::fmt::Debug for SecretRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRecord")
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A subscriber endpoint as stored. `Debug` leaves out the URL and headers' values, which may
/// carry the subscriber's credentials, and the secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointRecord {
    pub id: EndpointId,
    /// Set for endpoints declared in the configuration file.
    pub name: Option<String>,
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub sources: Option<Vec<String>>,
    pub format: String,
    pub headers: Vec<(String, String)>,
    pub rate_limit: Option<u32>,
    pub max_concurrency: Option<u32>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<Timestamp>,
    pub last_success_at: Option<Timestamp>,
    pub last_failure_at: Option<Timestamp>,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Newest first.
    pub secrets: Vec<SecretRecord>,
}

impl std::fmt::Debug for EndpointRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("event_types", &self.event_types)
            .field("sources", &self.sources)
            .field("format", &self.format)
            .field("header_names", &header_names(&self.headers))
            .field("rate_limit", &self.rate_limit)
            .field("max_concurrency", &self.max_concurrency)
            .field("enabled", &self.enabled)
            .field("disabled_reason", &self.disabled_reason)
            .field("failing_since", &self.failing_since)
            .field("updated_at", &self.updated_at)
            .field("secrets", &self.secrets)
            .finish_non_exhaustive()
    }
}

/// An endpoint to create. `Debug` leaves out the secret and the URL and headers' values, which
/// may carry the subscriber's credentials.
#[derive(Clone)]
pub struct NewEndpoint {
    pub id: EndpointId,
    pub name: Option<String>,
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub sources: Option<Vec<String>>,
    pub format: String,
    pub headers: Vec<(String, String)>,
    pub rate_limit: Option<u32>,
    pub max_concurrency: Option<u32>,
    pub enabled: bool,
    pub secret: String,
    pub now: Timestamp,
}

impl std::fmt::Debug for NewEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewEndpoint")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("event_types", &self.event_types)
            .field("sources", &self.sources)
            .field("format", &self.format)
            .field("header_names", &header_names(&self.headers))
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

fn header_names(headers: &[(String, String)]) -> Vec<&str> {
    headers.iter().map(|(name, _)| name.as_str()).collect()
}

/// Changes to an endpoint; `None` leaves a field as it is. `Debug` shows which fields change,
/// not the URL's or headers' new values.
#[derive(Clone, Default)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub sources: Option<Option<Vec<String>>>,
    pub format: Option<String>,
    pub headers: Option<Vec<(String, String)>>,
    pub rate_limit: Option<Option<u32>>,
    pub max_concurrency: Option<Option<u32>>,
    /// Disabling holds the endpoint's pending deliveries; enabling clears its failure streak.
    pub enabled: Option<bool>,
    pub disabled_reason: Option<String>,
}

impl std::fmt::Debug for EndpointPatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointPatch")
            .field("url_changes", &self.url.is_some())
            .field("description", &self.description)
            .field("event_types", &self.event_types)
            .field("sources", &self.sources)
            .field("format", &self.format)
            .field("header_names", &self.headers.as_deref().map(header_names))
            .field("rate_limit", &self.rate_limit)
            .field("max_concurrency", &self.max_concurrency)
            .field("enabled", &self.enabled)
            .field("disabled_reason", &self.disabled_reason)
            .finish()
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Waiting for its first attempt.
    Pending,
    /// An attempt failed; another is scheduled.
    Failed,
    Delivered,
    /// Out of attempts.
    Dead,
    /// Its endpoint is disabled; recovering the endpoint resumes it.
    Held,
    /// Its endpoint was deleted.
    Cancelled,
}

impl DeliveryStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
            DeliveryStatus::Held => "held",
            DeliveryStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => DeliveryStatus::Pending,
            "failed" => DeliveryStatus::Failed,
            "delivered" => DeliveryStatus::Delivered,
            "dead" => DeliveryStatus::Dead,
            "held" => DeliveryStatus::Held,
            "cancelled" => DeliveryStatus::Cancelled,
            _ => return None,
        })
    }
}

/// A lease on a delivery: who works it, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub until: Timestamp,
}

/// A delivery to create with its ingest.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: DeliveryId,
    pub endpoint_id: EndpointId,
    pub message_id: String,
    pub event_id: Option<EventId>,
    pub event_type: &'static str,
    /// `Pending`, or `Held` for a disabled endpoint.
    pub status: DeliveryStatus,
    pub next_attempt_at: Timestamp,
    /// Set when this instance takes the delivery straight from ingest.
    pub lease: Option<Lease>,
}

/// What a raw delivery needs to say about its provider message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawOrigin {
    pub source: String,
    pub provider: String,
    pub provider_event: Option<String>,
}

/// A delivery claimed for work, with the bytes to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedDelivery {
    pub id: DeliveryId,
    pub endpoint_id: EndpointId,
    pub message_id: String,
    pub event_id: Option<EventId>,
    pub inbound_id: InboundId,
    pub event_type: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// `None` when retention has pruned the payload.
    pub payload: Option<Bytes>,
    /// Set for raw deliveries.
    pub raw: Option<RawOrigin>,
}

/// One HTTP attempt to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAttempt {
    pub id: AttemptId,
    pub number: u32,
    pub started_at: Timestamp,
    pub duration_ms: u64,
    pub status_code: Option<u16>,
    /// The first 4 KiB of the response body.
    pub response_body: Option<Bytes>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
}

/// What follows an attempt (or a delivery given back without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextStep {
    Delivered,
    Retry {
        at: Timestamp,
    },
    Dead,
    /// The endpoint is disabled: hold until recovered.
    Held,
    /// Given back unattempted (shutdown): clear the lease, keep the schedule.
    Released,
    /// The endpoint was deleted.
    Cancelled,
}

impl NextStep {
    /// What it writes to the delivery's row: the status (none: unchanged) and the time of the
    /// next attempt (none: unchanged).
    pub(crate) fn columns(&self) -> (Option<&'static str>, Option<i64>) {
        match self {
            Self::Delivered => (Some("delivered"), None),
            Self::Retry { at } => (Some("failed"), Some(at.unix_millis())),
            Self::Dead => (Some("dead"), None),
            Self::Held => (Some("held"), None),
            Self::Cancelled => (Some("cancelled"), None),
            Self::Released => (None, None),
        }
    }
}

/// The result of working one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub delivery_id: DeliveryId,
    pub endpoint_id: EndpointId,
    pub attempt: Option<NewAttempt>,
    pub next: NextStep,
    /// Disable the endpoint, for this reason (410, or failing for too long).
    pub disable_endpoint: Option<String>,
}

/// What one batch of completions did to an endpoint's health columns. A batch is recorded with
/// one clock reading, so writing this once per endpoint leaves the row as writing each attempt
/// in turn would, at the cost of one update instead of one per attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EndpointHealth {
    pub endpoint_id: EndpointId,
    /// Some attempt succeeded: `last_success_at` is now.
    pub succeeded: bool,
    /// Some attempt failed: `last_failure_at` is now and `last_error` the last failure's error.
    pub failed: Option<Option<String>>,
    pub failing_since: FailingSince,
}

/// Where an endpoint's `failing_since` ends up after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailingSince {
    /// The last attempt succeeded.
    Cleared,
    /// Failing since this batch: a failure followed a success in it.
    Now,
    /// Only failures: failing since the earlier first failure, or now if there was none.
    Kept,
}

impl FailingSince {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Cleared => "cleared",
            Self::Now => "now",
            Self::Kept => "kept",
        }
    }
}

/// Folds a batch's attempts, in order, into one [`EndpointHealth`] per endpoint attempted.
pub(crate) fn endpoint_health(completions: &[Completion]) -> Vec<EndpointHealth> {
    let mut health: Vec<EndpointHealth> = Vec::new();
    for completion in completions {
        let Some(attempt) = &completion.attempt else {
            continue;
        };
        let index = match health
            .iter()
            .position(|h| h.endpoint_id == completion.endpoint_id)
        {
            Some(index) => index,
            None => {
                health.push(EndpointHealth {
                    endpoint_id: completion.endpoint_id,
                    succeeded: false,
                    failed: None,
                    failing_since: FailingSince::Kept,
                });
                health.len() - 1
            }
        };
        let entry = &mut health[index];
        if completion.next == NextStep::Delivered {
            entry.succeeded = true;
            entry.failing_since = FailingSince::Cleared;
        } else {
            entry.failed = Some(
                attempt
                    .error_message
                    .clone()
                    .or_else(|| attempt.status_code.map(|s| format!("HTTP {s}"))),
            );
            if entry.failing_since == FailingSince::Cleared {
                entry.failing_since = FailingSince::Now;
            }
        }
    }
    health
}

/// A stored attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub id: AttemptId,
    pub delivery_id: DeliveryId,
    pub endpoint_id: EndpointId,
    pub number: u32,
    pub started_at: Timestamp,
    pub duration_ms: u64,
    pub status_code: Option<u16>,
    pub response_body: Option<Bytes>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
}

/// A stored delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub id: DeliveryId,
    pub endpoint_id: EndpointId,
    pub message_id: String,
    pub event_id: Option<EventId>,
    pub inbound_id: InboundId,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at: Timestamp,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What a recovery resent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// How many deliveries it returned to pending.
    pub resent: u64,
    /// Above every delivery it looked at, so above every one it resent: taken from the ids it
    /// walked, not from a clock, which on another instance may run ahead of them.
    pub resent_before: DeliveryId,
}

/// Counts of an endpoint's deliveries by status, and of its recent attempts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub pending: u64,
    pub failed: u64,
    pub delivered: u64,
    pub dead: u64,
    pub held: u64,
    /// Attempts in the last 24 hours, and how many got a 2xx.
    pub attempts_24h: u64,
    pub successes_24h: u64,
}

pub use billhook_core::ledger::{Conclusion, Entity, Fact, HistoryEntry};

/// Turns a ledger conclusion into the canonical event (and its deliveries) that announces it.
/// The server provides one; the store calls it inside the transaction that reached the
/// conclusion, so the announcement is as durable as the conclusion.
pub trait Concluder: Send + Sync {
    fn announce(&self, conclusion: &Conclusion) -> Announcement;
}

/// A conclusion's canonical event and its deliveries.
#[derive(Debug, Clone)]
pub struct Announcement {
    pub event: NewEvent,
    pub inbound_id: InboundId,
    pub deliveries: Vec<NewDelivery>,
    /// When the deliveries were planned: their creation time. Not the event's reception,
    /// which for a message reprocessed from quarantine is long past.
    pub planned_at: Timestamp,
}

/// What a ledger listing selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerFilter {
    /// Everything of the kind.
    All,
    /// Invoices and bills still to be paid (amount due, not expired, cancelled or rejected).
    Outstanding,
    /// Outstanding past their due date.
    Overdue,
    /// Invoices and bills paid in full.
    Paid,
    /// Succeeded payments linked to no invoice or bill.
    Unmatched,
    /// A status word.
    Status(String),
}

/// A listing of ledger entities, newest first.
#[derive(Debug, Clone)]
pub struct LedgerQuery {
    pub kind: billhook_core::entity::SubjectKind,
    pub filter: LedgerFilter,
    pub provider: Option<String>,
    pub source: Option<String>,
    /// Matches the provider's id or the invoice number exactly.
    pub reference: Option<String>,
    pub before: Option<String>,
    pub limit: u32,
    pub now: Timestamp,
}

/// The SQL list of the ledger's conclusion types (`'invoice.settled', 'payment.unmatched'`): they
/// share the inbound id of the message that led to them, but are not that message's events.
pub(crate) fn conclusion_types_sql() -> String {
    billhook_core::event::EventType::ALL
        .iter()
        .filter(|t| t.is_conclusion())
        .map(|t| format!("'{}'", t.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Statuses after which an invoice or bill is no longer expected to be paid: a bill's is how its
/// fetch went, and a failed fetch brought no bill to pay.
pub const CLOSED_UNPAID: &[&str] = &[
    "expired",
    "cancelled",
    "deleted",
    "rejected",
    "declined",
    "failure",
];

/// Whether an invoice or bill is still owed, as the `outstanding` listing has it: something is
/// due, or its amount is unknown and no status said it was paid; and no status closed it.
pub fn is_outstanding(entity: &Entity) -> bool {
    entity
        .due
        .map_or(!entity.status_settles, |due| due.minor() > 0)
        && !entity
            .status
            .as_deref()
            .is_some_and(|s| CLOSED_UNPAID.contains(&s))
}

/// An admin token to store: only its digest and a hint of it.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub id: TokenId,
    pub name: String,
    pub scope: Scope,
    pub digest: String,
    pub hint: String,
    pub created_at: Timestamp,
}

/// A stored admin token (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: TokenId,
    pub name: String,
    pub scope: Scope,
    pub hint: String,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

/// Who opened a console session: a stored token's id, or [`ROOT_TOKEN`].
pub const ROOT_TOKEN: &str = "root";

/// A console session to store, keyed by its cookie's digest.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub digest: String,
    pub token_id: String,
    /// The digest of the token that opened it, so a changed root token ends its sessions.
    pub token_digest: String,
    pub scope: Scope,
    pub csrf: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A live console session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub token_id: String,
    pub token_digest: String,
    pub scope: Scope,
    pub csrf: String,
    pub expires_at: Timestamp,
    /// For stored tokens: whether the token is still valid. Always true for the root token,
    /// which the caller checks against the configuration.
    pub token_live: bool,
}

/// What retention removed (or, for a dry run, would remove).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Stored provider requests, with their raw bodies.
    pub inbound: u64,
    pub events: u64,
    /// Finished deliveries (delivered, dead, cancelled).
    pub deliveries: u64,
    pub attempts: u64,
    /// Raw request bodies, in bytes.
    pub payload_bytes: u64,
}

/// One batch of retention: what it removed, and where the next batch starts. Messages are
/// pruned in batches keyed by message (`InboundId`); announcements left without their message
/// in batches keyed by event (`EventId`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneBatch<Key = InboundId> {
    pub removed: PruneReport,
    /// The last row this batch looked at, when more may follow it: the next batch starts
    /// after it rather than walking again the old rows kept (owed or quarantined).
    pub resume_after: Option<Key>,
}

/// An id as stored, parsed back; one that does not parse is corrupt data.
pub(crate) fn parse_id<T: std::str::FromStr>(text: &str) -> Result<T, crate::StoreError> {
    text.parse()
        .map_err(|_| crate::StoreError::Corrupt(format!("`{text}` is not a valid id")))
}

/// Whether a prune batch that looked at `looked_at` rows of at most `batch` took all it could,
/// so that more may follow it.
pub(crate) fn fills(looked_at: usize, batch: u32) -> bool {
    looked_at >= usize::try_from(batch).unwrap_or(usize::MAX)
}

/// Where the next prune batch starts: after the last row this one looked at, when more may
/// follow it (`full`).
pub(crate) fn resume_after<Key: std::str::FromStr>(
    looked_at: &[String],
    full: bool,
) -> Result<Option<Key>, crate::StoreError> {
    match looked_at.last() {
        Some(last) if full => parse_id(last).map(Some),
        _ => Ok(None),
    }
}

/// The most bytes of bodies one prune batch removes (unless its first message alone is larger):
/// on SQLite the one writer reads them all with every ingest waiting behind it, and on
/// PostgreSQL a batch of large bodies could run past `statement_timeout` and fail at every run.
pub(crate) const PRUNE_BATCH_BYTES: i64 = 8 * 1024 * 1024;

impl PruneReport {
    pub fn add(&mut self, other: PruneReport) {
        self.inbound += other.inbound;
        self.events += other.events;
        self.deliveries += other.deliveries;
        self.attempts += other.attempts;
        self.payload_bytes += other.payload_bytes;
    }
}

/// Delivery statuses that keep their message from retention whatever its age: still to be sent
/// or retried. A delivery held for a disabled endpoint keeps it only until it is as old as
/// retention allows (`recover` reaches back that far), or one endpoint left disabled would
/// keep every message it subscribes to for good.
pub const OWED_DELIVERIES: &str = "'pending', 'failed'";

/// Per endpoint (`$1` now, `$2` the oldest deletion still watched): whether it has claimable
/// deliveries due, and if not, the earliest time one of its deliveries could be: the next
/// attempt due, or the end of a lease on one due and in flight. Each is an index probe or a
/// short range per endpoint, where one statement over the owed deliveries would read them all
/// at every poll, and an endpoint down for a day owes a million. The probes ask for the first
/// row in the index's order (`ORDER BY next_attempt_at LIMIT 1`, not `EXISTS`): for `EXISTS`,
/// PostgreSQL may expect a scan of the table to meet a match at once (it would, for the one
/// endpoint owed most) and read all of it for an endpoint owed nothing. A deleted endpoint is due
/// while it owes anything, for the poller to cancel it. A due endpoint's lease ends are not
/// asked: the deliveries due and leased (in flight) are few, but due and unleased may be any
/// number, and its next attempt to come, one probe, tells when to look again.
/// Written with `$n` for PostgreSQL; SQLite's copy has `?n`. Leases are judged at `LEASE_NOW`,
/// the database's clock on PostgreSQL and `$1` on SQLite, and a lease's end comes back on the
/// caller's clock.
pub const DUE_BY_ENDPOINT: &str = "
    SELECT id, due,
        (SELECT min(d.next_attempt_at) FROM deliveries d
         WHERE d.endpoint_id = owed.id AND d.status IN ('pending', 'failed')
           AND d.next_attempt_at > $1),
        CASE WHEN due THEN NULL ELSE (
            SELECT min(d.lease_until) - LEASE_NOW + $1 FROM deliveries d
            WHERE d.endpoint_id = owed.id AND d.status IN ('pending', 'failed')
              AND d.next_attempt_at <= $1 AND d.lease_until > LEASE_NOW) END
    FROM (
        SELECT e.id, CASE WHEN e.deleted_at IS NULL
            THEN (SELECT 1 FROM deliveries d
                WHERE d.endpoint_id = e.id AND d.status IN ('pending', 'failed')
                  AND d.next_attempt_at <= $1
                  AND (d.lease_until IS NULL OR d.lease_until <= LEASE_NOW)
                ORDER BY d.next_attempt_at LIMIT 1) IS NOT NULL
            ELSE (SELECT 1 FROM deliveries d
                WHERE d.endpoint_id = e.id AND d.status IN ('pending', 'failed')
                ORDER BY d.next_attempt_at LIMIT 1) IS NOT NULL
            END AS due
        FROM endpoints e
        WHERE e.deleted_at IS NULL OR e.deleted_at > $2
    ) owed";

/// The condition on a listing's deliveries for one status, written out rather than bound: only
/// then may the database read them through the partial index of that status's rows (held and
/// dead deliveries have one), where a bound parameter leaves it reading past every delivery of
/// the endpoint. The text is one of [`DeliveryStatus`]'s own words.
pub(crate) fn status_filter(status: Option<DeliveryStatus>) -> String {
    status
        .map(|status| format!("AND status = '{}'", status.as_str()))
        .unwrap_or_default()
}

/// Deleted endpoints that still owe deliveries or hold some, two index probes per deleted
/// endpoint.
pub const DELETED_OWING: &str = "
    SELECT e.id FROM endpoints e
    WHERE e.deleted_at IS NOT NULL
      AND ((SELECT 1 FROM deliveries d
            WHERE d.endpoint_id = e.id AND d.status IN ('pending', 'failed')
            ORDER BY d.next_attempt_at LIMIT 1) IS NOT NULL
        OR (SELECT 1 FROM deliveries d
            WHERE d.endpoint_id = e.id AND d.status = 'held'
            ORDER BY d.id LIMIT 1) IS NOT NULL)";

/// The endpoints due and the earliest time another delivery could be, from the rows of
/// [`DUE_BY_ENDPOINT`].
pub(crate) fn due_and_next(
    rows: impl IntoIterator<Item = (EndpointId, bool, Option<i64>, Option<i64>)>,
) -> (Vec<EndpointId>, Option<Timestamp>) {
    let mut due = Vec::new();
    let mut next: Option<i64> = None;
    for (id, is_due, next_attempt, lease_end) in rows {
        if is_due {
            due.push(id);
        }
        for at in [next_attempt, lease_end].into_iter().flatten() {
            next = Some(next.map_or(at, |earliest| earliest.min(at)));
        }
    }
    (due, next.map(Timestamp::from_unix_millis))
}

/// How long after its deletion an endpoint's deliveries are still looked for by the poller: a
/// delivery planned by an instance that had not heard of the deletion yet is written within
/// seconds of it. Older ones are found once, at start.
pub const DELETED_ENDPOINTS_WATCHED_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

/// The most deliveries one statement changes when an endpoint's backlog is held (the endpoint
/// disabled), cancelled (deleted) or recovered. An endpoint down for a day can owe a million;
/// changed at once, they would hold SQLite's one writer, and with it every ingest, for seconds,
/// or run a PostgreSQL transaction past its statement timeout. The rest follows batch by batch.
pub const BACKLOG_BATCH: u32 = 1_000;

/// What happened in one minute (or since an instance's last flush).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActivityCounts {
    /// Messages stored, quarantined ones included.
    pub ingested: u64,
    pub duplicates: u64,
    pub quarantined: u64,
    /// Requests refused for failing verification.
    pub unverified: u64,
    /// Successful delivery attempts.
    pub delivered: u64,
    /// Failed delivery attempts.
    pub failed: u64,
}

impl ActivityCounts {
    pub fn is_empty(&self) -> bool {
        *self == ActivityCounts::default()
    }
}

/// One minute of activity across instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivityMinute {
    /// Unix minutes.
    pub minute: i64,
    pub counts: ActivityCounts,
}

/// What needs an operator's attention now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overview {
    /// Deliveries pending or failed and waiting for a retry.
    pub pending_deliveries: u64,
    /// When the oldest of them was created.
    pub oldest_pending: Option<Timestamp>,
    pub disabled_endpoints: u64,
    /// Enabled endpoints whose last attempt failed.
    pub failing_endpoints: u64,
    pub quarantined: u64,
}

/// One source's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceStats {
    pub source: String,
    pub last_inbound: Option<InboundId>,
    pub last_received_at: Option<Timestamp>,
    /// Messages received since the time asked for.
    pub received_since: u64,
    /// Messages waiting in quarantine.
    pub quarantined: u64,
}

/// Splits a batch into runs that can each be written as one set-based statement per table with
/// the same result as writing the completions one by one: no delivery appears twice in a run,
/// and a completion that disables its endpoint is a run of its own. Disabling holds the
/// endpoint's unleased deliveries, and a run disables before it updates: what came before the
/// disabling must be written before it (a delivery given back is then held with the rest), and
/// what follows it after it.
pub(crate) fn completion_runs(completions: &[Completion]) -> Vec<&[Completion]> {
    let mut runs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut start = 0;
    for (index, completion) in completions.iter().enumerate() {
        if !seen.insert(completion.delivery_id) {
            runs.push(&completions[start..index]);
            seen.clear();
            seen.insert(completion.delivery_id);
            start = index;
        }
        if completion.disable_endpoint.is_some() {
            if start < index {
                runs.push(&completions[start..index]);
            }
            runs.push(&completions[index..=index]);
            seen.clear();
            start = index + 1;
        }
    }
    if start < completions.len() {
        runs.push(&completions[start..]);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_runs_keep_each_delivery_once_and_disable_alone() {
        let endpoint = EndpointId::new();
        let first = attempted(endpoint, 500, NextStep::Dead);
        let mut again = attempted(endpoint, 200, NextStep::Delivered);
        again.delivery_id = first.delivery_id;
        let mut disabling = attempted(endpoint, 410, NextStep::Dead);
        disabling.disable_endpoint = Some("gone".to_owned());
        let batch = vec![
            attempted(endpoint, 200, NextStep::Delivered),
            first,
            attempted(endpoint, 200, NextStep::Delivered),
            again,
            disabling,
            attempted(endpoint, 200, NextStep::Delivered),
        ];
        let lengths: Vec<usize> = completion_runs(&batch).iter().map(|r| r.len()).collect();
        assert_eq!(lengths, vec![3, 1, 1, 1]);
        assert!(completion_runs(&[]).is_empty());
    }

    fn attempted(endpoint: EndpointId, status: u16, next: NextStep) -> Completion {
        Completion {
            delivery_id: DeliveryId::new(),
            endpoint_id: endpoint,
            attempt: Some(NewAttempt {
                id: AttemptId::new(),
                number: 1,
                started_at: Timestamp::from_unix_millis(0),
                duration_ms: 1,
                status_code: Some(status),
                response_body: None,
                error_kind: None,
                error_message: None,
            }),
            next,
            disable_endpoint: None,
        }
    }

    fn retry() -> NextStep {
        NextStep::Retry {
            at: Timestamp::from_unix_millis(1),
        }
    }

    #[test]
    fn a_batch_folds_into_one_health_update_per_endpoint_in_attempt_order() {
        let (a, b, c, d) = (
            EndpointId::new(),
            EndpointId::new(),
            EndpointId::new(),
            EndpointId::new(),
        );
        let released = Completion {
            attempt: None,
            next: NextStep::Released,
            ..attempted(d, 0, NextStep::Released)
        };
        let batch = vec![
            attempted(a, 500, retry()),
            attempted(b, 200, NextStep::Delivered),
            attempted(a, 503, retry()),
            attempted(b, 502, retry()),
            attempted(c, 500, NextStep::Dead),
            attempted(c, 200, NextStep::Delivered),
            released,
        ];
        assert_eq!(
            endpoint_health(&batch),
            vec![
                EndpointHealth {
                    endpoint_id: a,
                    succeeded: false,
                    failed: Some(Some("HTTP 503".to_owned())),
                    failing_since: FailingSince::Kept,
                },
                EndpointHealth {
                    endpoint_id: b,
                    succeeded: true,
                    failed: Some(Some("HTTP 502".to_owned())),
                    failing_since: FailingSince::Now,
                },
                EndpointHealth {
                    endpoint_id: c,
                    succeeded: true,
                    failed: Some(Some("HTTP 500".to_owned())),
                    failing_since: FailingSince::Cleared,
                },
            ]
        );
    }
}
