//! One HTTP attempt: sign, POST, keep the first 4 KiB of the answer, name what went wrong.
//!
//! The client is hyper's pooled client over rustls, with the SSRF guard as its resolver: it
//! follows no redirects and knows no proxies, so nothing but the endpoint's own answer counts.

use std::error::Error as _;
use std::time::Duration;

use billhook_core::retry::parse_retry_after;
use billhook_core::signing::signature_header;
use billhook_core::time::Timestamp;
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use url::Host;

use super::Job;
use super::endpoints::EndpointRuntime;
use super::ssrf::{DestinationPolicy, GuardedResolver, Refusal};

/// How much of a response body is kept with the attempt.
pub const RESPONSE_BODY_LIMIT: usize = 4096;

/// The pooled HTTP client deliveries go out through.
#[derive(Clone)]
pub struct Client {
    http: HyperClient<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>,
    request_timeout: Duration,
}

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

const USER_AGENT_VALUE: &str = concat!("billhook/", env!("CARGO_PKG_VERSION"));

/// The HTTP client for deliveries: the SSRF guard as its resolver, no redirects, no proxies,
/// rustls with the Web PKI's roots, pooled keep-alive connections.
pub fn client(
    policy: std::sync::Arc<DestinationPolicy>,
    request_timeout: Duration,
    connect_timeout: Duration,
) -> Client {
    let mut connector = HttpConnector::new_with_resolver(GuardedResolver { policy });
    connector.set_connect_timeout(Some(connect_timeout));
    Client {
        http: pooled_client(connector, 64),
        request_timeout,
    }
}

/// hyper's pooled HTTP/1 client over `connector`, for `http` and `https` alike (rustls with the
/// Web PKI's roots); idle connections are kept 90 s, at most `idle_per_host` per host. It
/// follows no redirects and knows no proxies.
pub fn pooled_client<R>(
    mut connector: HttpConnector<R>,
    idle_per_host: usize,
) -> HyperClient<HttpsConnector<HttpConnector<R>>, Full<Bytes>>
where
    HttpsConnector<HttpConnector<R>>: Connect + Clone + Send + Sync + 'static,
{
    // The TLS layer wrapped around it takes `https`; the plain connector must not refuse it.
    connector.enforce_http(false);
    connector.set_nodelay(true);
    let connector = HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    HyperClient::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(idle_per_host)
        .build(connector)
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
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(endpoint.uri.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
        .header("webhook-id", &job.message_id)
        .header("webhook-timestamp", timestamp)
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
    let request = match request.body(Full::new(job.payload.clone())) {
        Ok(request) => request,
        Err(error) => return AttemptResult::failed("request", error.to_string()),
    };
    // One deadline for the whole exchange, the answer's body included.
    match tokio::time::timeout(client.request_timeout, exchange(&client.http, request)).await {
        Ok(result) => result,
        Err(_) => {
            AttemptResult::failed("timeout", "the endpoint did not answer in time".to_owned())
        }
    }
}

async fn exchange(
    http: &HyperClient<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> AttemptResult {
    let response = match http.request(request).await {
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
    let mut answer = response.into_body();
    let mut body = BytesMut::new();
    // Keep the beginning of the answer; the rest is never read.
    while body.len() < RESPONSE_BODY_LIMIT {
        match answer.frame().await {
            Some(Ok(frame)) => {
                if let Some(chunk) = frame.data_ref() {
                    body.extend_from_slice(chunk);
                }
            }
            Some(Err(_)) | None => break,
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

/// Names a failure that produced no status: `ssrf_refused`, `dns`, `tls`, `connect` or
/// `request` (a `timeout` is named by the deadline around the exchange).
fn classify(error: &hyper_util::client::legacy::Error) -> (&'static str, String) {
    let mut source = error.source();
    let mut chain = Vec::new();
    let mut tls = false;
    while let Some(cause) = source {
        if let Some(refusal) = cause.downcast_ref::<Refusal>() {
            return ("ssrf_refused", refusal.to_string());
        }
        tls |= is_tls(cause);
        chain.push(cause.to_string());
        source = cause.source();
    }
    let detail = chain.last().cloned().unwrap_or_else(|| error.to_string());
    let lowered = chain.join(" ").to_ascii_lowercase();
    if tls {
        ("tls", detail)
    } else if lowered.contains("timed out") || lowered.contains("timeout") {
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

/// Whether `error` is rustls's, directly or inside I/O errors: the TLS layer reports a failed
/// handshake as an I/O error holding an I/O error holding rustls's.
fn is_tls(mut error: &(dyn std::error::Error + 'static)) -> bool {
    loop {
        if error.is::<rustls::Error>() {
            return true;
        }
        match error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => error = inner,
            None => return false,
        }
    }
}
