//! One module per provider, each owning everything about its provider: how its webhooks are
//! verified, parsed and normalized into canonical events, which key deduplicates them, and how
//! the emulator builds and signs them.
//!
//! Adding a provider means writing its module and adding one line to [`registry::PROVIDERS`].
//! Like the core, this crate is pure: it sees bytes, headers and a clock reading, never a socket.

#![deny(clippy::float_arithmetic)]

pub mod auth;
pub mod caminvoice;
pub mod emulate;
pub mod json;
pub mod razorpay;
pub mod registry;
pub mod scenario;
pub mod setu_bbps;
pub mod zwitch;

mod checks;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use billhook_core::event::{EventDraft, Warning};
use billhook_core::money::MoneyError;
use billhook_core::time::{TimeError, Timestamp};
use sha2::{Digest, Sha256};

pub use auth::{AuthKind, SourceAuth, SourceSpec, SpecError, Verification, VerifyError};
pub use registry::{PROVIDERS, Provider, by_name};

/// A received request as provider code sees it: no socket, just what arrived.
#[derive(Debug, Clone, Copy)]
pub struct InboundRequest<'a> {
    pub headers: &'a http::HeaderMap,
    pub body: &'a [u8],
    /// The peer address (after trusted proxy resolution), for IP allow-lists.
    pub remote_ip: Option<IpAddr>,
    /// The token segment of `/ingest/{source}/{token}`, for path-token auth.
    pub path_token: Option<&'a str>,
    pub received_at: Timestamp,
}

impl InboundRequest<'_> {
    /// A header's value as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// A signature header's value: one absent is missing, one present but not visible ASCII
    /// (no hex signature is) is malformed, so the caller is told which it sent.
    pub fn signature(&self, name: &'static str) -> Result<&str, VerifyError> {
        let value = self
            .headers
            .get(name)
            .ok_or(VerifyError::MissingSignature(name))?;
        value
            .to_str()
            .map_err(|_| VerifyError::MalformedSignature(name))
    }
}

/// What a provider module makes of a verified message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// The provider's event name (`invoice.paid`, `BILL_PAY`).
    pub provider_event: String,
    /// The provider's event id, where it sends one.
    pub provider_event_id: Option<String>,
    /// The key under which a redelivery of the same message is recognised (see PROVIDERS.md).
    pub dedup_key: String,
    /// A second key, a hash of the signed body, for a provider whose `dedup_key` comes from an
    /// unsigned header (Razorpay's event id): a captured body sent again under a new id is a
    /// duplicate too. A message is stored only if neither key is held.
    pub body_dedup_key: Option<String>,
    pub sandbox: bool,
    pub events: Vec<EventDraft>,
    /// Warnings about the message as a whole; each event carries them too.
    pub warnings: Vec<Warning>,
}

/// Why a verified message could not be turned into canonical events. Such a message is kept,
/// quarantined, and can be reprocessed after an upgrade.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    #[error("the body is not valid UTF-8 (byte {0})")]
    NotUtf8(usize),
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body does not have the shape of a {provider} webhook: {detail}")]
    Shape {
        provider: &'static str,
        detail: String,
    },
    #[error("{provider} event `{event}` is not one billhook understands yet")]
    UnsupportedEvent {
        provider: &'static str,
        event: String,
    },
    #[error("{path}: {source}")]
    Money {
        path: String,
        #[source]
        source: MoneyError,
    },
    #[error("{path}: {source}")]
    Time {
        path: String,
        #[source]
        source: TimeError,
    },
}

impl NormalizeError {
    /// The stable code recorded on the quarantined inbound record.
    pub fn code(&self) -> &'static str {
        match self {
            NormalizeError::NotUtf8(_) => "invalid_utf8",
            NormalizeError::NotJson(_) => "invalid_json",
            NormalizeError::Shape { .. } => "unexpected_shape",
            NormalizeError::UnsupportedEvent { .. } => "unsupported_event",
            NormalizeError::Money { .. } => "invalid_amount",
            NormalizeError::Time { .. } => "invalid_time",
        }
    }
}

/// The fallback dedup key for a message without a usable provider key: a hash of its bytes.
pub fn body_hash_key(body: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(body)))
}

/// The longest dedup key kept as the provider wrote it.
pub const MAX_DEDUP_KEY_BYTES: usize = 256;

/// `key`, or its hash when it is longer than [`MAX_DEDUP_KEY_BYTES`]. A key can be anything an
/// unsigned header carries (Razorpay's event id, padded by whoever replays a captured body),
/// and PostgreSQL refuses an index entry past about 2.7 KB where SQLite takes it: hashed, every
/// key fits both, and the same request is stored alike on each.
pub fn bounded_dedup_key(key: String) -> String {
    if key.len() <= MAX_DEDUP_KEY_BYTES {
        key
    } else {
        format!("long:{}", hex::encode(Sha256::digest(key.as_bytes())))
    }
}
