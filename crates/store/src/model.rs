//! The rows the store writes and reads. These are the store's wire format: explicit types, so a
//! change to what is stored is a change to this file and to a migration.

use billhook_core::ids::{EventId, InboundId};
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
    pub verification: String,
    pub remote_addr: Option<String>,
    /// Selected headers, secrets already redacted.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub error: Option<RecordedError>,
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

/// One ingest: the request, its events, all in one transaction.
#[derive(Debug, Clone)]
pub struct IngestWrite {
    pub inbound: NewInbound,
    pub events: Vec<NewEvent>,
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
    /// Only events older than this one (the cursor).
    pub before: Option<EventId>,
    pub limit: u32,
}

/// Filters for listing stored requests, newest first.
#[derive(Debug, Clone, Default)]
pub struct InboundQuery {
    pub status: Option<InboundStatus>,
    pub source: Option<String>,
    pub before: Option<InboundId>,
    pub limit: u32,
}

/// One page of a listing and the cursor of the next, if there is more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// The result of reprocessing a quarantined request.
#[derive(Debug, Clone)]
pub enum Reprocess {
    /// It now normalizes: store these events under this dedup key.
    Normalized {
        provider_event: String,
        provider_event_id: Option<String>,
        dedup_key: String,
        events: Vec<NewEvent>,
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
