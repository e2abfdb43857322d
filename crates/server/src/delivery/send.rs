//! One HTTP attempt: sign, POST, keep the first 4 KiB of the answer, name what went wrong.

use std::error::Error as _;
use std::time::Duration;

use billhook_core::retry::parse_retry_after;
use billhook_core::signing::signature_header;
use billhook_core::time::Timestamp;
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use reqwest::Client;
use reqwest::redirect::Policy;
use url::Host;

use super::Job;
use super::endpoints::EndpointRuntime;
use super::ssrf::{DestinationPolicy, GuardedResolver, Refusal};

/// How much of a response body is kept with the attempt.
pub const RESPONSE_BODY_LIMIT: usize = 4096;

/// What one attempt produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    pub body: Option<Bytes>,
    /// The kind and description of a failure before any status arrived.
    pub error: Option<(&'static str, String)>,
}

impl AttemptResult {
    fn failed(kind: &'static str, message: String) -> Self {
        Self {
            status: None,
            retry_after: None,
            body: None,
            error: Some((kind, message)),
        }
    }

    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// The HTTP client for deliveries: the SSRF guard as its resolver, no redirects, no proxies,
/// rustls, pooled keep-alive connections.
pub fn client(
    policy: std::sync::Arc<DestinationPolicy>,
    request_timeout: Duration,
    connect_timeout: Duration,
) -> Result<Client, reqwest::Error> {
    Client::builder()
        .dns_resolver(std::sync::Arc::new(GuardedResolver { policy }))
        .redirect(Policy::none())
        .no_proxy()
        .timeout(request_timeout)
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .user_agent(concat!("billhook/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Sends one delivery to its endpoint.
pub async fn send(
    client: &Client,
    policy: &DestinationPolicy,
    endpoint: &EndpointRuntime,
    job: &Job,
) -> AttemptResult {
    // Addresses written as IP literals never reach the resolver: check them here.
    let literal = match endpoint.url.host() {
        Some(Host::Ipv4(v4)) => Some(std::net::IpAddr::V4(v4)),
        Some(Host::Ipv6(v6)) => Some(std::net::IpAddr::V6(v6)),
        _ => None,
    };
    if let Some(address) = literal
        && let Err(refusal) = policy.check_ip(address)
    {
        return AttemptResult::failed("ssrf_refused", refusal.to_string());
    }
    let now = Timestamp::now();
    let timestamp = now.unix_seconds();
    let signature = signature_header(
        endpoint.live_secrets(now),
        &job.message_id,
        timestamp,
        &job.payload,
    );
    let mut request = client
        .post(endpoint.url.clone())
        .header(CONTENT_TYPE, "application/json")
        .header("webhook-id", &job.message_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature);
    if let Some(raw) = &job.raw {
        request = request
            .header("billhook-source", &raw.source)
            .header("billhook-provider", &raw.provider);
        if let Some(event) = &raw.provider_event {
            request = request.header("billhook-provider-event", event);
        }
    }
    for (name, value) in &endpoint.headers {
        request = request.header(name, value);
    }
    let mut response = match request.body(job.payload.clone()).send().await {
        Ok(response) => response,
        Err(error) => {
            let (kind, message) = classify(&error);
            return AttemptResult::failed(kind, message);
        }
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, Timestamp::now()));
    let mut body = BytesMut::new();
    // Keep the beginning of the answer; the rest is never read.
    while body.len() < RESPONSE_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(RESPONSE_BODY_LIMIT);
    AttemptResult {
        status: Some(status),
        retry_after,
        body: (!body.is_empty()).then(|| body.freeze()),
        error: None,
    }
}

/// Names a failure that produced no status: `ssrf_refused`, `timeout`, `dns`, `tls`, `connect`
/// or `request`.
fn classify(error: &reqwest::Error) -> (&'static str, String) {
    let mut source = error.source();
    let mut chain = Vec::new();
    while let Some(cause) = source {
        if let Some(refusal) = cause.downcast_ref::<Refusal>() {
            return ("ssrf_refused", refusal.to_string());
        }
        chain.push(cause.to_string());
        source = cause.source();
    }
    let detail = chain.last().cloned().unwrap_or_else(|| error.to_string());
    let lowered = chain.join(" ").to_ascii_lowercase();
    if error.is_timeout() {
        ("timeout", "the endpoint did not answer in time".to_owned())
    } else if lowered.contains("dns")
        || lowered.contains("failed to lookup")
        || lowered.contains("resolve")
    {
        ("dns", detail)
    } else if lowered.contains("certificate")
        || lowered.contains("tls")
        || lowered.contains("handshake")
    {
        ("tls", detail)
    } else if error.is_connect() {
        ("connect", detail)
    } else {
        ("request", detail)
    }
}
