//! One HTTP attempt: sign, POST, keep the first 4 KiB of the answer, name what went wrong.
//!
//! The client is hyper's pooled client over rustls, with the SSRF guard as its resolver: it
//! follows no redirects and knows no proxies, so nothing but the endpoint's own answer counts.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use billhook_core::retry::parse_retry_after;
use billhook_core::signing::signature_header;
use billhook_core::time::Timestamp;
use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use http::{Method, Request, Uri};
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

/// hyper's pooled client over a connector bounded by a deadline.
pub type PooledClient<R> =
    HyperClient<ConnectDeadline<HttpsConnector<HttpConnector<R>>>, Full<Bytes>>;

/// The pooled HTTP client deliveries go out through.
#[derive(Clone)]
pub struct Client {
    http: PooledClient<GuardedResolver>,
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
) -> Result<Client, rustls::Error> {
    let connector = HttpConnector::new_with_resolver(GuardedResolver { policy });
    Ok(Client {
        http: pooled_client(connector, connect_timeout, 64)?,
        request_timeout,
    })
}

/// hyper's pooled HTTP/1 client over `connector`, for `http` and `https` alike (rustls with
/// ring and the Web PKI's roots). Connecting (resolving, TCP and the TLS handshake together)
/// may take `connect_timeout`; connections are probed by TCP keepalive and kept idle 90 s, at
/// most `idle_per_host` per host. It follows no redirects and knows no proxies.
pub fn pooled_client<R>(
    mut connector: HttpConnector<R>,
    connect_timeout: Duration,
    idle_per_host: usize,
) -> Result<PooledClient<R>, rustls::Error>
where
    ConnectDeadline<HttpsConnector<HttpConnector<R>>>: Connect + Clone + Send + Sync + 'static,
{
    // The TLS layer wrapped around it takes `https`; the plain connector must not refuse it.
    connector.enforce_http(false);
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(15)));
    connector.set_keepalive_interval(Some(Duration::from_secs(15)));
    connector.set_keepalive_retries(Some(3));
    let connector = HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Ok(HyperClient::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(idle_per_host)
        .build(ConnectDeadline {
            inner: connector,
            timeout: connect_timeout,
        }))
}

/// A connector whose connections must be made within `timeout`, resolving and the handshake
/// included (hyper's own connect timeout covers the TCP connect alone). Running out is an I/O
/// error of kind `TimedOut`.
#[derive(Debug, Clone)]
pub struct ConnectDeadline<C> {
    inner: C,
    timeout: Duration,
}

impl<C> tower::Service<Uri> for ConnectDeadline<C>
where
    C: tower::Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = C::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connecting took longer than the connect timeout",
                )) as Self::Error),
            }
        })
    }
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
        .header("webhook-id", &job.message_id)
        .header("webhook-timestamp", timestamp)
        .header("webhook-signature", signature);
    if let Some(raw) = &job.raw {
        request = request
            .header("billhook-source", &raw.source)
            .header("billhook-provider", &raw.provider);
        // The provider's event name, as its body spelled it: a name no header can carry (a
        // control character) is left out rather than failing every attempt.
        if let Some(event) = raw
            .provider_event
            .as_deref()
            .and_then(|event| HeaderValue::from_str(event).ok())
        {
            request = request.header("billhook-provider-event", event);
        }
    }
    for (name, value) in &endpoint.headers {
        request = request.header(name, value);
    }
    let mut request = match request.body(Full::new(job.payload.clone())) {
        Ok(request) => request,
        Err(error) => return AttemptResult::failed("request", error.to_string()),
    };
    // Defaults an endpoint's own headers may replace.
    let headers = request.headers_mut();
    headers
        .entry(USER_AGENT)
        .or_insert(HeaderValue::from_static(USER_AGENT_VALUE));
    headers
        .entry(ACCEPT)
        .or_insert(HeaderValue::from_static("*/*"));
    exchange(
        &client.http,
        request,
        tokio::time::Instant::now() + client.request_timeout,
    )
    .await
}

/// Sends `request` and reads the answer, all by `deadline`: an attempt never outlasts
/// `request_timeout`, which its lease is sized by. The status decides the attempt, so a body
/// still arriving at the deadline is cut there, not taken for a timeout: a receiver that
/// answered 2xx has the event, and sending it again would be a duplicate.
async fn exchange(
    http: &PooledClient<GuardedResolver>,
    request: Request<Full<Bytes>>,
    deadline: tokio::time::Instant,
) -> AttemptResult {
    let response = match tokio::time::timeout_at(deadline, http.request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            let (kind, message) = name_failure(&error, error.is_connect());
            return AttemptResult::failed(kind, message);
        }
        Err(_) => {
            return AttemptResult::failed(
                "timeout",
                "the endpoint did not answer in time".to_owned(),
            );
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
        match tokio::time::timeout_at(deadline, answer.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(chunk) = frame.data_ref() {
                    body.extend_from_slice(chunk);
                }
            }
            Ok(Some(Err(_)) | None) | Err(_) => break,
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
/// or `request`, from the error and its causes.
fn name_failure(
    error: &(dyn std::error::Error + 'static),
    is_connect: bool,
) -> (&'static str, String) {
    let mut cause = Some(error);
    let mut chain = Vec::new();
    let (mut tls, mut timed_out) = (false, false);
    while let Some(current) = cause {
        if let Some(refusal) = current.downcast_ref::<Refusal>() {
            // A name with no address is the name's failure, not the guard's refusal.
            let kind = match refusal {
                Refusal::Unresolvable(_) => "dns",
                _ => "ssrf_refused",
            };
            return (kind, refusal.to_string());
        }
        tls |= is_tls(current);
        timed_out |= current
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        chain.push(current.to_string());
        cause = current.source();
    }
    let detail = chain.last().cloned().unwrap_or_default();
    let lowered = chain.join(" ").to_ascii_lowercase();
    if timed_out {
        ("timeout", "the endpoint did not answer in time".to_owned())
    } else if tls {
        ("tls", detail)
    } else if lowered.contains("dns")
        || lowered.contains("failed to lookup")
        || lowered.contains("resolve")
    {
        ("dns", detail)
    } else if is_connect {
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

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    /// An error whose cause is `cause`, as hyper's own errors carry theirs.
    #[derive(Debug, thiserror::Error)]
    #[error("{message}")]
    struct Wrapped {
        message: &'static str,
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    }

    fn wrapped(
        message: &'static str,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Wrapped {
        Wrapped {
            message,
            cause: Box::new(cause),
        }
    }

    #[test]
    fn failures_are_named_by_what_caused_them() {
        let connect_timeout = wrapped(
            "client error (Connect)",
            io::Error::new(io::ErrorKind::TimedOut, "deadline has elapsed"),
        );
        assert_eq!(name_failure(&connect_timeout, true).0, "timeout");
        let handshake = wrapped(
            "client error (Connect)",
            io::Error::other(io::Error::new(
                io::ErrorKind::InvalidData,
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
            )),
        );
        assert_eq!(name_failure(&handshake, true).0, "tls");
        let refused = wrapped(
            "client error (Connect)",
            wrapped(
                "dns error",
                Refusal::ResolvesBlocked {
                    host: "metadata.internal".to_owned(),
                    category: "link-local",
                },
            ),
        );
        assert_eq!(name_failure(&refused, true).0, "ssrf_refused");
        let nowhere = wrapped(
            "client error (Connect)",
            wrapped(
                "dns error",
                Refusal::Unresolvable("example.invalid".to_owned()),
            ),
        );
        assert_eq!(
            name_failure(&nowhere, true),
            (
                "dns",
                "`example.invalid` does not resolve to any address".to_owned()
            )
        );
        let lookup = wrapped(
            "client error (Connect)",
            wrapped(
                "dns error",
                io::Error::other("failed to lookup address information"),
            ),
        );
        assert_eq!(name_failure(&lookup, true).0, "dns");
        let closed = wrapped(
            "client error (Connect)",
            io::Error::new(io::ErrorKind::ConnectionRefused, "Connection refused"),
        );
        assert_eq!(
            name_failure(&closed, true),
            ("connect", "Connection refused".to_owned())
        );
        let reset = wrapped(
            "client error (SendRequest)",
            io::Error::new(io::ErrorKind::ConnectionReset, "connection reset"),
        );
        assert_eq!(name_failure(&reset, false).0, "request");
    }
}
