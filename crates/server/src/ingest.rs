//! `POST /ingest/{source}`: the path of one webhook.
//!
//! raw bytes → source lookup → size limit → provider verification → parse and normalize (or
//! quarantine) → one store transaction → 2xx. Nothing on this path calls out to the network, and
//! the acknowledgement is sent only after the store's commit has returned.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use billhook_core::event::Reception;
use billhook_core::ids::{EventId, InboundId};
use billhook_core::ledger::Fact;
use billhook_core::time::Timestamp;
use billhook_providers::auth::SourceAuth;
use billhook_providers::{InboundRequest, NormalizeError, Normalized, VerifyError, body_hash_key};
use billhook_store::{
    Concluder, InboundStatus, IngestOutcome as StoreOutcome, IngestWrite, NewEvent, NewInbound,
    RawOrigin, RecordedError,
};
use bytes::Bytes;
use http::HeaderMap;
use ipnet::IpNet;
use serde::Serialize;

use crate::App;
use crate::api::ApiPath;
use crate::config::Source;
use crate::delivery::{Prepared, fan_out_events};
#[allow(unused_imports, reason = "named in the OpenAPI attributes")]
use crate::error::ErrorBody as Error;
use crate::error::{ApiError, ErrorCode};
use crate::http_server::BodyError;
use crate::ledger;
use crate::metrics::IngestOutcome;

/// What the provider (or whoever posts) gets back.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IngestResponse {
    pub inbound_id: InboundId,
    /// The canonical events the message became (not the ledger's conclusions from it).
    pub events: Vec<EventId>,
    pub duplicate: bool,
    /// True when the message was verified but could not be normalized: it is kept for
    /// reprocessing.
    pub quarantined: bool,
}

/// A provider's webhook, exactly as the provider sends it, verified the provider's way (a
/// signature header, or the credential the source is configured with).
#[utoipa::path(post, path = "/ingest/{source}", tag = "ingest", security(()),
    params(("source" = String, Path, description = "The source's name from the configuration")),
    request_body(content = Object, description = "The provider's message", content_type = "application/json"),
    responses(
        (status = 202, description = "Stored (or recognised as a duplicate) and durable; the acknowledgement unless the provider requires another or the source sets `ack_status`", body = IngestResponse),
        (status = 200, description = "The same, for a Zwitch source (Zwitch requires 200) or one configured with `ack_status = 200`", body = IngestResponse),
        (status = 204, description = "The same, without a body, for a source configured with `ack_status = 204`"),
        (status = 400, description = "The body is empty or unreadable", body = Error),
        (status = 401, description = "The request failed the source's verification", body = Error),
        (status = 404, description = "No such source", body = Error),
        (status = 408, description = "The request took too long; it may have been stored all the same (a retry is then answered as a duplicate)", body = Error),
        (status = 413, description = "The body is too large", body = Error),
        (status = 500, description = "An unexpected failure; nothing was acknowledged", body = Error),
        (status = 503, description = "The database is unavailable, or billhook holds as many bodies as it may, or is starting; retry (a retry of a request stored after all is answered as a duplicate)", body = Error),
    ))]
pub(crate) async fn receive(
    State(app): State<Arc<App>>,
    ApiPath(source): ApiPath<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    handle(app, source, None, peer, headers, body).await
}

/// The same, for sources authenticated by a secret path segment (`auth.kind = "path_token"`).
#[utoipa::path(post, path = "/ingest/{source}/{token}", tag = "ingest", security(()),
    params(
        ("source" = String, Path, description = "The source's name from the configuration"),
        ("token" = String, Path, description = "The source's path token"),
    ),
    request_body(content = Object, description = "The provider's message", content_type = "application/json"),
    responses(
        (status = 202, description = "Stored (or recognised as a duplicate) and durable; the acknowledgement unless the provider requires another or the source sets `ack_status`", body = IngestResponse),
        (status = 200, description = "The same, for a Zwitch source (Zwitch requires 200) or one configured with `ack_status = 200`", body = IngestResponse),
        (status = 204, description = "The same, without a body, for a source configured with `ack_status = 204`"),
        (status = 400, description = "The body is empty or unreadable", body = Error),
        (status = 401, description = "The request failed the source's verification", body = Error),
        (status = 404, description = "No such source", body = Error),
        (status = 408, description = "The request took too long; it may have been stored all the same (a retry is then answered as a duplicate)", body = Error),
        (status = 413, description = "The body is too large", body = Error),
        (status = 500, description = "An unexpected failure; nothing was acknowledged", body = Error),
        (status = 503, description = "The database is unavailable, or billhook holds as many bodies as it may, or is starting; retry (a retry of a request stored after all is answered as a duplicate)", body = Error),
    ))]
pub(crate) async fn receive_with_token(
    State(app): State<Arc<App>>,
    ApiPath((source, token)): ApiPath<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    handle(app, source, Some(token), peer, headers, body).await
}

async fn handle(
    app: Arc<App>,
    source_name: String,
    path_token: Option<String>,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    // Unknown names share one label, so a scan of random paths cannot grow the metrics.
    let label = if app.settings.sources.contains_key(&source_name) {
        source_name.clone()
    } else {
        "(unknown)".to_owned()
    };
    let tally = Tally {
        label,
        started,
        handed_to_store: AtomicBool::new(false),
    };
    let timeout = app.settings.ingest.request_timeout.0;
    let result = match tokio::time::timeout(
        timeout,
        process(
            &app,
            &source_name,
            path_token.as_deref(),
            peer,
            &headers,
            body,
            &tally,
        ),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the request did not complete within {}",
                app.settings.ingest.request_timeout
            ),
        )),
    };
    // Once the write is handed to the store, the write counts the request, whatever became of
    // this answer: a webhook answered 408 and stored after is counted stored.
    if !tally.handed_to_store.load(Ordering::Acquire) {
        match &result {
            Ok(_) => {}
            // Counted where verification failed, with its code.
            Err(error) if error.code.status() == http::StatusCode::UNAUTHORIZED => {}
            Err(error) if error.code.status().is_server_error() => {
                app.metrics
                    .ingested(&tally.label, IngestOutcome::error, None);
            }
            Err(_) => app
                .metrics
                .ingested(&tally.label, IngestOutcome::rejected, None),
        }
    }
    result
}

/// The ingest writes still running. Each outlives its request (see `receive`); the stop waits
/// for them to hand their deliveries to the lanes before delivery stops.
#[derive(Debug, Default)]
pub struct WritesInFlight {
    count: std::sync::atomic::AtomicUsize,
    settled: tokio::sync::Notify,
}

/// One write counted in [`WritesInFlight`] until it is dropped.
pub(crate) struct WriteInFlight(Arc<WritesInFlight>);

impl WritesInFlight {
    pub(crate) fn start(self: &Arc<Self>) -> WriteInFlight {
        self.count.fetch_add(1, Ordering::SeqCst);
        WriteInFlight(Arc::clone(self))
    }

    /// Returns once no write is running.
    pub async fn settled(&self) {
        loop {
            let settled = self.settled.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            settled.await;
        }
    }
}

impl Drop for WriteInFlight {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.settled.notify_waiters();
        }
    }
}

/// Counts an ingest request once its write is handed to the store: as the write ends, or, if
/// the write panics before that, as an error when it is dropped.
struct WriteCounter {
    app: Arc<App>,
    label: String,
    started: std::time::Instant,
    counted: bool,
}

impl WriteCounter {
    fn count(&mut self, outcome: IngestOutcome, timed: bool) {
        self.counted = true;
        self.app
            .metrics
            .ingested(&self.label, outcome, timed.then(|| self.started.elapsed()));
    }
}

impl Drop for WriteCounter {
    fn drop(&mut self) {
        if !self.counted {
            self.app
                .metrics
                .ingested(&self.label, IngestOutcome::error, None);
        }
    }
}

/// How one ingest request is counted in metrics and activity, and by whom.
struct Tally {
    label: String,
    started: std::time::Instant,
    /// Set as the write is spawned: from then on the write counts the request.
    handed_to_store: AtomicBool,
}

async fn process(
    app: &Arc<App>,
    source_name: &str,
    path_token: Option<&str>,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Body,
    tally: &Tally,
) -> Result<Response, ApiError> {
    let source = app.settings.sources.get(source_name).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownSource,
            format!("no source named `{source_name}` is configured"),
        )
    })?;
    let remote_ip = client_ip(peer, headers, &app.settings.trusted_proxies);
    let refused = |error: VerifyError| {
        app.metrics.verification_failed(source_name, error.code());
        tracing::warn!(
            source = source_name,
            code = error.code(),
            remote = %remote_ip,
            "refused an unverified request"
        );
        ApiError::from(error)
    };
    // A request without the source's credential (an address off its allow-list, no signature
    // to check) is refused before its body is read: it never holds a share of the memory kept
    // for bodies, which anyone could otherwise fill with bodies sent a byte at a time.
    let before_body = InboundRequest {
        headers,
        body: &[],
        remote_ip: Some(remote_ip),
        path_token,
        received_at: Timestamp::now(),
    };
    let verified = source
        .spec
        .check_before_body(&before_body)
        .map_err(refused)?;
    // A body declared too large is refused before it is read: waiting would not help it.
    let limit = app.settings.ingest.max_body_bytes;
    let declared = crate::http_server::declared_length(headers);
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large(limit));
    }
    // Held until the store has the body: moved into the write below, which outlives this
    // request when the request times out or its client goes away.
    let buffered = reserve_body(app, declared)?;
    let body = read_body(body, limit).await?;
    if body.is_empty() {
        return Err(ApiError::new(
            ErrorCode::EmptyBody,
            "the request has no body",
        ));
    }
    let received_at = Timestamp::now();
    let request = InboundRequest {
        headers,
        body: &body,
        remote_ip: Some(remote_ip),
        path_token,
        received_at,
    };
    // A credential was checked whole above; a signature is checked over the body now.
    let verification = match verified {
        Some(verification) => verification,
        None => source.spec.verify_body(&request).map_err(refused)?,
    };
    let normalized = source.spec.normalize(&request);
    let mut write = build_write(
        source,
        &request,
        format!("{}: {}", verification.scheme, verification.detail),
        normalized,
        app.settings.ingest.dedup_window.0,
        body.clone(),
        app.announcer.clone(),
    );
    let quarantined = write.inbound.status == InboundStatus::Quarantined;
    let prepared = if quarantined {
        Prepared::default()
    } else {
        let origin = RawOrigin {
            source: source.spec.name.clone(),
            provider: source.spec.provider.name().to_owned(),
            provider_event: write.inbound.provider_event.clone(),
        };
        app.delivery.prepare(
            write.inbound.id,
            &source.spec.name,
            &fan_out_events(&write.events),
            (&body, origin),
            received_at,
        )
    };
    write.deliveries = prepared.rows.clone();
    if let Some(error) = &write.inbound.error {
        tracing::info!(
            source = source_name,
            inbound = %write.inbound.id,
            code = %error.code,
            "quarantined a verified message that could not be normalized"
        );
    }
    // The write and the hand-off run to their end even if this request is dropped (the client
    // went away, or the ingest timeout fired): once the deliveries leased to this instance are
    // stored, they must reach their lanes, or they would wait out their lease unsent.
    let mut counter = WriteCounter {
        app: Arc::clone(app),
        label: tally.label.clone(),
        started: tally.started,
        counted: false,
    };
    let committed = tokio::spawn({
        let app = Arc::clone(app);
        let in_flight = app.ingest_writes.start();
        async move {
            let _buffered = buffered;
            let _in_flight = in_flight;
            let outcome = match app.store.ingest(write).await {
                Ok(outcome) => outcome,
                Err(error) => {
                    // A value the database cannot hold is the request's fault (a 400).
                    let counted = if matches!(error, billhook_store::StoreError::Unstorable(_)) {
                        IngestOutcome::rejected
                    } else {
                        IngestOutcome::error
                    };
                    counter.count(counted, false);
                    return Err(error);
                }
            };
            counter.count(
                match &outcome {
                    StoreOutcome::Stored { .. } if quarantined => IngestOutcome::quarantined,
                    StoreOutcome::Stored { .. } => IngestOutcome::stored,
                    StoreOutcome::Duplicate { .. } => IngestOutcome::duplicate,
                },
                true,
            );
            if let StoreOutcome::Stored { concluded, .. } = &outcome {
                app.delivery.hand_off(prepared);
                if !concluded.is_empty() {
                    app.metrics.concluded_events(concluded);
                    // The announcements' deliveries were planned inside the transaction and
                    // wait in the database; they are due now.
                    app.delivery.wake();
                }
            }
            Ok::<_, billhook_store::StoreError>(outcome)
        }
    });
    tally.handed_to_store.store(true, Ordering::Release);
    let outcome = committed
        .await
        .map_err(|error| ApiError::internal(&error))??;
    let response = match outcome {
        StoreOutcome::Stored {
            inbound_id,
            event_ids,
            ..
        } => IngestResponse {
            inbound_id,
            events: event_ids,
            duplicate: false,
            quarantined,
        },
        StoreOutcome::Duplicate {
            inbound_id,
            event_ids,
        } => {
            tracing::debug!(source = source_name, inbound = %inbound_id, "duplicate message");
            IngestResponse {
                inbound_id,
                quarantined: event_ids.is_empty() && quarantined,
                events: event_ids,
                duplicate: true,
            }
        }
    };
    Ok((source.ack_status, Json(response)).into_response())
}

/// Takes the body's share of `ingest.max_buffered_bytes`: its declared length (within the
/// limit), or the most a body may be. Refused at once (503) rather than waited for: a provider
/// retries, while a request waiting here would hold its connection all the same.
fn reserve_body(
    app: &App,
    declared: Option<u64>,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    let limit = app.settings.ingest.max_body_bytes;
    let share = declared.map_or(limit, |length| {
        usize::try_from(length).unwrap_or(limit).clamp(1, limit)
    });
    let share = u32::try_from(share).unwrap_or(u32::MAX);
    Arc::clone(&app.ingest_budget)
        .try_acquire_many_owned(share)
        .map_err(|_| {
            // Counted as an ingest error; a line per refusal would flood the log when it
            // matters.
            tracing::debug!(
                max_buffered_bytes = app.settings.ingest.max_buffered_bytes,
                "refused a webhook: the ingest bodies in memory are at their limit"
            );
            ApiError::new(
                ErrorCode::Overloaded,
                "billhook is holding as many request bodies as it may; retry later",
            )
        })
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the body exceeds the limit of {limit} bytes"),
    )
}

/// Reads the body, refusing with 413 as soon as a streamed body crosses `limit` (one declared
/// larger was refused before).
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    crate::http_server::read_whole_body(body, limit)
        .await
        .map_err(|error| match error {
            BodyError::TooLarge(limit) => too_large(limit),
            BodyError::Unreadable(_) => ApiError::invalid(error.to_string()),
        })
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy. Addresses compare in their
/// canonical form (an IPv4 peer of a dual-stack listener arrives as `::ffff:a.b.c.d`), and an
/// entry with a port counts as its address. An entry that is neither ends the walk at the peer:
/// what lies left of it was not written by a trusted proxy, so it is not believed.
pub(crate) fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer_ip = peer.ip().to_canonical();
    if !is_trusted(&peer_ip) {
        return peer_ip;
    }
    let entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for entry in entries.rev() {
        let entry = entry.trim();
        let Some(ip) = entry
            .parse::<IpAddr>()
            .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
            .ok()
            .map(|ip| ip.to_canonical())
        else {
            return peer_ip;
        };
        if !is_trusted(&ip) {
            return ip;
        }
    }
    peer_ip
}

/// Headers kept with every stored request, besides the provider's own.
const COMMON_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "user-agent",
    "x-forwarded-for",
    "x-request-id",
];

/// Selects the headers worth keeping and redacts what could be replayed: credentials entirely,
/// signatures down to a prefix.
fn kept_headers(source: &Source, headers: &HeaderMap) -> Vec<(String, String)> {
    let provider_headers = source.spec.provider.kept_headers();
    let credential_header = match &source.spec.auth {
        SourceAuth::Header { name, .. } => Some(name.as_str()),
        _ => None,
    };
    let mut kept = Vec::new();
    for (name, value) in headers {
        let name = name.as_str();
        let is_credential = name == "authorization" || Some(name) == credential_header;
        let is_provider = provider_headers.contains(&name);
        if !(is_credential || is_provider || COMMON_HEADERS.contains(&name)) {
            continue;
        }
        let text = String::from_utf8_lossy(value.as_bytes());
        let shown = if is_credential {
            "[redacted]".to_owned()
        } else if name.ends_with("signature") {
            redact_signature(&text)
        } else {
            text.into_owned()
        };
        kept.push((name.to_owned(), shown));
    }
    kept
}

/// The first eight characters of a signature and an ellipsis: enough to tell two apart, never
/// enough to replay.
pub fn redact_signature(signature: &str) -> String {
    let prefix: String = signature.chars().take(8).collect();
    format!("{prefix}…")
}

/// Turns a verified request and what its provider made of it into one store write.
pub(crate) fn build_write(
    source: &Source,
    request: &InboundRequest<'_>,
    verification: String,
    normalized: Result<Normalized, NormalizeError>,
    dedup_window: std::time::Duration,
    body: Bytes,
    concluder: Arc<dyn Concluder>,
) -> IngestWrite {
    let inbound_id = InboundId::new_at(request.received_at);
    let provider = source.spec.provider.name();
    let (status, provider_event, provider_event_id, dedup_key, body_dedup_key, canonical, error) =
        match normalized {
            Ok(normalized) => {
                let reception = Reception {
                    inbound_id,
                    received_at: request.received_at,
                    source_name: &source.spec.name,
                    provider,
                    provider_event: &normalized.provider_event,
                    provider_event_id: normalized.provider_event_id.as_deref(),
                    sandbox: normalized.sandbox,
                };
                let canonical = canonical_events(&normalized, &reception, source);
                (
                    InboundStatus::Processed,
                    Some(normalized.provider_event.clone()),
                    normalized.provider_event_id.clone(),
                    normalized.dedup_key,
                    normalized.body_dedup_key,
                    canonical,
                    None,
                )
            }
            Err(error) => {
                let hint = source.spec.dedup_key_hint(request);
                // The body's hash beside a provider's unsigned id (Razorpay's event-id header):
                // a captured body resent under fresh ids would otherwise be stored, and wait in
                // quarantine, once per id.
                let (dedup_key, body_dedup_key) = match hint {
                    Some(hint) => (hint, Some(body_hash_key(request.body))),
                    None => (body_hash_key(request.body), None),
                };
                (
                    InboundStatus::Quarantined,
                    None,
                    None,
                    dedup_key,
                    body_dedup_key,
                    Canonical {
                        events: Vec::new(),
                        facts: Vec::new(),
                    },
                    Some(RecordedError {
                        code: error.code().to_owned(),
                        message: error.to_string(),
                    }),
                )
            }
        };
    IngestWrite {
        deliveries: Vec::new(),
        inbound: NewInbound {
            id: inbound_id,
            source: source.spec.name.clone(),
            provider: provider.to_owned(),
            received_at: request.received_at,
            status,
            provider_event,
            provider_event_id,
            dedup_key,
            body_dedup_key,
            verification,
            remote_addr: request.remote_ip.map(|ip| ip.to_string()),
            headers: kept_headers(source, request.headers),
            body,
            error,
        },
        events: canonical.events,
        facts: canonical.facts,
        concluder: Some(concluder),
        dedup_expires_at: request.received_at.add(dedup_window),
    }
}

/// A message's canonical events, stored as delivered, and what they tell the ledger.
pub(crate) struct Canonical {
    pub events: Vec<NewEvent>,
    pub facts: Vec<Fact>,
}

/// Finishes a provider's drafts into canonical events and the ledger's facts.
pub(crate) fn canonical_events(
    normalized: &Normalized,
    reception: &Reception<'_>,
    source: &Source,
) -> Canonical {
    let mut canonical = Canonical {
        events: Vec::with_capacity(normalized.events.len()),
        facts: Vec::with_capacity(normalized.events.len()),
    };
    for draft in normalized.events.iter().cloned() {
        let times = (draft.occurred_at, draft.not_before);
        let event = draft.finish(reception, &normalized.warnings);
        canonical
            .facts
            .extend(ledger::fact_for(&event, times, source));
        canonical.events.push(ledger::stored_event(&event));
    }
    canonical
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_are_trusted_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let client = |peer: &str, forwarded: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-forwarded-for", forwarded.parse().unwrap());
            client_ip(peer.parse().unwrap(), &headers, &trusted).to_string()
        };
        let via_proxy = "10.0.0.1:4000";
        assert_eq!(client(via_proxy, "203.0.113.9, 10.0.0.2"), "203.0.113.9");
        assert_eq!(
            client("198.51.100.7:4000", "203.0.113.9, 10.0.0.2"),
            "198.51.100.7"
        );
        // A dual-stack listener sees an IPv4 proxy as `::ffff:10.0.0.1`: still trusted.
        assert_eq!(
            client("[::ffff:10.0.0.1]:4000", "203.0.113.9, 10.0.0.2"),
            "203.0.113.9"
        );
        // A proxy that writes the port: the entry is its address.
        assert_eq!(
            client(via_proxy, "52.66.75.174, 198.51.100.7:55555"),
            "198.51.100.7"
        );
        // An entry that is no address ends the walk: what the client wrote left of it is not
        // believed.
        assert_eq!(
            client(via_proxy, "52.66.75.174, unknown, 10.0.0.2"),
            "10.0.0.1"
        );
    }

    #[tokio::test]
    async fn the_stop_waits_for_the_writes_in_flight() {
        let writes = Arc::new(WritesInFlight::default());
        writes.settled().await;
        let (first, second) = (writes.start(), writes.start());
        let waiting = tokio::spawn({
            let writes = Arc::clone(&writes);
            async move { writes.settled().await }
        });
        drop(first);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "one write still runs");
        drop(second);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("settled once the last write ends")
            .unwrap();
    }

    #[test]
    fn signatures_are_shortened() {
        assert_eq!(redact_signature("2fe04e22977002e6c7cb"), "2fe04e22…");
    }
}
