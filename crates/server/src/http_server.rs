//! The HTTP server: the router on hyper's HTTP/1 connections, with a deadline on reading each
//! request's headers.
//!
//! `axum::serve` gives hyper no timer, and without one hyper reads headers for as long as a
//! client keeps sending them: a client sending a byte now and then held a connection for ever,
//! and enough such clients every file descriptor, on the port providers post to. Here the
//! headers of every request, and the next request on a kept-alive connection, must arrive
//! within the ingest request timeout, and so must the body of every admin and console request
//! ([`read_body_in_time`]; ingest bounds its own).
//!
//! A handler that panics (a bug) is answered `500 internal` like any other failure, rather
//! than with the connection cut mid-request, which a client cannot tell from a network fault.
//!
//! At most `max_connections` connections are served at once. Past that the server stops
//! accepting, and new connections wait in the kernel's queue until one closes: a flood of
//! connections slows ingest rather than taking the file descriptors that deliveries and the
//! database need, and a short burst is served late rather than refused.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tower_http::catch_panic::CatchPanicLayer;

use crate::error::ApiError;

/// How the server bounds its clients.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Bounds reading each request's headers, and the drain at shutdown.
    pub(crate) request_timeout: Duration,
    /// The most connections served at once.
    pub(crate) max_connections: usize,
}

impl Limits {
    pub(crate) fn of(settings: &crate::config::Settings) -> Self {
        Self {
            request_timeout: settings.ingest.request_timeout.0,
            max_connections: settings.max_connections,
        }
    }
}

/// Serves `routes` on `listener` until `shutdown` resolves, then lets each connection finish
/// the request it is on, for up to the request timeout, and closes it.
///
/// The request timeout also bounds reading each request's headers. An ingest request ends
/// within it by its own deadline; an admin request still running after it (a client that never
/// sends the body it announced, a long export) is left behind rather than holding the stop for
/// ever.
pub(crate) async fn serve(
    listener: TcpListener,
    routes: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let connections = accept_until(&listener, routes, limits, shutdown).await;
    // Closed before the drain, so a client connecting now is refused at once rather than left
    // waiting for a server that will not answer.
    drop(listener);
    drain(connections, limits.request_timeout).await;
}

/// Serves `routes` on a listener the caller keeps until `until` resolves, and returns then:
/// the requests in flight finish in the background (for up to the request timeout), so a
/// client slow to send its headers does not hold up whoever accepts next. Connections that
/// arrive meanwhile wait for that.
pub(crate) async fn serve_for_now(
    listener: &TcpListener,
    routes: Router,
    limits: Limits,
    until: impl Future<Output = ()>,
) {
    let connections = accept_until(listener, routes, limits, until).await;
    tokio::spawn(drain(connections, limits.request_timeout));
}

/// How often a server whose connection slots are all taken says so.
const SATURATION_WARNING_EVERY: Duration = Duration::from_secs(10);

/// The most a connection buffers from its client at once: its headers must fit.
const MAX_READ_BUFFER: usize = 64 * 1024;

async fn accept_until(
    listener: &TcpListener,
    routes: Router,
    limits: Limits,
    until: impl Future<Output = ()>,
) -> GracefulShutdown {
    let mut builder = hyper::server::conn::http1::Builder::new();
    // A connection's read buffer, which bounds its headers, is held before any body is
    // counted against the memory kept for bodies; hyper's default would let each one hold
    // 400 KiB of headers.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_timeout)
        .max_buf_size(MAX_READ_BUFFER);
    let connections = GracefulShutdown::new();
    let routes = routes.layer(CatchPanicLayer::custom(answer_panic));
    // The start's answering (`serve_for_now`) counts its own connections: those it kept alive
    // go on after the start under its count, for up to the request timeout.
    let open = Arc::new(Semaphore::new(limits.max_connections));
    // In a flood every pass finds the slots taken: warned of once in a while, not each time.
    let mut warned_at: Option<std::time::Instant> = None;
    tokio::pin!(until);
    loop {
        let slot = match Arc::clone(&open).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if warned_at.is_none_or(|at| at.elapsed() >= SATURATION_WARNING_EVERY) {
                    warned_at = Some(std::time::Instant::now());
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "every connection slot is taken; new connections wait until one closes"
                    );
                }
                tokio::select! {
                    slot = Arc::clone(&open).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => return connections,
                    },
                    () = &mut until => return connections,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: asking again at once would spin.
                    tracing::warn!(%error, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut until => return connections,
        };
        let service = routes
            .clone()
            .map_request(move |mut request: http::Request<Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                request
            });
        let connection = connections.watch(
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)),
        );
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "a connection ended with an error");
            }
            // Moves the slot into the task: it is given back when the connection ends, not
            // when it is accepted.
            drop(slot);
        });
    }
}

/// The answer to a request whose handler panicked. The panic's message went to standard error
/// through the panic hook; it may hold request data, so it reaches neither the log's fields
/// nor the client.
fn answer_panic(_panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    ApiError::internal(&"a request's handler panicked").into_response()
}

/// Lets each connection finish the request it is on, for up to `request_timeout`.
async fn drain(connections: GracefulShutdown, request_timeout: Duration) {
    if tokio::time::timeout(request_timeout, connections.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            waited_ms = request_timeout.as_millis() as u64,
            "requests still running at shutdown are cut short"
        );
    }
}

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("the body could not be read: {0}")]
    Unreadable(String),
}

/// Reads a body of at most `limit` bytes into one buffer as it arrives. Kept frame by frame
/// (as `collect` keeps them), a body sent a byte per chunk would cost a handle of its own per
/// byte, and each would keep the connection's read buffer alive: tens of times the bytes
/// counted against the memory kept for bodies.
pub(crate) async fn read_whole_body(
    mut body: axum::body::Body,
    limit: usize,
) -> Result<bytes::Bytes, BodyError> {
    use http_body_util::BodyExt as _;

    // A body that comes in one frame (most do) is kept as it came, without a copy.
    let mut first: Option<bytes::Bytes> = None;
    let mut gathered = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| BodyError::Unreadable(error.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let length = first.as_ref().map_or(0, bytes::Bytes::len) + gathered.len() + data.len();
        if length > limit {
            return Err(BodyError::TooLarge(limit));
        }
        match first.take() {
            None if gathered.is_empty() => first = Some(data),
            earlier => {
                if gathered.capacity() < length {
                    // Doubling, as a vector grows, but never past the limit (a vector's own
                    // growth could take twice the limit).
                    let capacity = (gathered.capacity() * 2).clamp(length, limit);
                    let mut larger = bytes::BytesMut::with_capacity(capacity);
                    larger.extend_from_slice(&gathered);
                    gathered = larger;
                }
                if let Some(earlier) = earlier {
                    gathered.extend_from_slice(&earlier);
                }
                gathered.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| gathered.freeze()))
}

/// The body length a request's `Content-Length` declares, if it declares one that parses.
pub(crate) fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
}

/// The largest body an admin API request may have (axum's own default limit).
pub(crate) const ADMIN_BODY_LIMIT: usize = 2 * 1024 * 1024;
/// The largest body a console request may have: its forms are a few fields each, and the
/// login form is read before anyone is known.
pub(crate) const CONSOLE_BODY_LIMIT: usize = 64 * 1024;

/// How long a request's body may take to arrive, how large it may be, and how a refusal is
/// answered (the API's JSON, or the console's error page).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyDeadline {
    pub timeout: Duration,
    pub limit: usize,
    pub refuse: fn(ApiError) -> axum::response::Response,
}

/// Reads an admin or console request's body whole, within the deadline, before its handler
/// runs.
///
/// The header deadline above ends once the headers are in; a client could then send the body it
/// announced a byte now and then, and hold the connection for as long as it liked. The login
/// form, the one such route that reads a body before knowing who sent it, made that open to
/// anyone. A body too large, or too slow, is refused here, in the shape of the part it was sent to.
pub(crate) async fn read_body_in_time(
    axum::extract::State(deadline): axum::extract::State<BodyDeadline>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use crate::error::ErrorCode;

    // No text billhook stores may hold the NUL character (PostgreSQL refuses it), and no name
    // or id does: refused here, the same on every backend.
    let uri = request.uri();
    if uri.path().contains("%00") || uri.query().is_some_and(|query| query.contains("%00")) {
        return (deadline.refuse)(ApiError::invalid("the URL holds the NUL character (%00)"));
    }
    let too_large = || {
        (deadline.refuse)(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body exceeds {} bytes", deadline.limit),
        ))
    };
    if declared_length(request.headers()).is_some_and(|length| length > deadline.limit as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(deadline.timeout, read_whole_body(body, deadline.limit)).await {
        Ok(Ok(bytes)) if body_holds_nul(&parts.headers, &bytes) => (deadline.refuse)(
            ApiError::invalid("the body holds the NUL character (\\u0000 or %00)"),
        ),
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, bytes.into()))
                .await
        }
        Ok(Err(BodyError::TooLarge(_))) => too_large(),
        Ok(Err(error @ BodyError::Unreadable(_))) => {
            (deadline.refuse)(ApiError::invalid(error.to_string()))
        }
        Err(_) => (deadline.refuse)(ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the body did not arrive within {} s",
                deadline.timeout.as_secs_f64()
            ),
        )),
    }
}

/// Whether a JSON or form body decodes to text with the NUL character in it, which no text
/// billhook stores may hold (PostgreSQL refuses it; SQLite would keep it): refused the same
/// on every backend, as in a URL.
fn body_holds_nul(headers: &http::HeaderMap, body: &[u8]) -> bool {
    let form = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| {
            media
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if form {
        // Decoded as sent: a raw byte 0 is as much a NUL as its escape.
        return body.contains(&0) || body.windows(3).any(|w| w == b"%00");
    }
    // Only a body that spells the escape can hold the character (JSON has no raw NUL).
    if !body.windows(6).any(|w| w == b"\\u0000") {
        return false;
    }
    fn holds(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(text) => text.contains('\0'),
            serde_json::Value::Array(items) => items.iter().any(holds),
            serde_json::Value::Object(fields) => fields
                .iter()
                .any(|(name, value)| name.contains('\0') || holds(value)),
            _ => false,
        }
    }
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|value| holds(&value))
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// `routes` served on a port of their own until [`Served::stop`].
    struct Served {
        address: SocketAddr,
        stop: tokio::sync::oneshot::Sender<()>,
        server: tokio::task::JoinHandle<()>,
    }

    impl Served {
        async fn start(routes: Router) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let limits = Limits {
                request_timeout: Duration::from_secs(5),
                max_connections: 16,
            };
            let server = tokio::spawn(serve(listener, routes, limits, async {
                let _ = stopped.await;
            }));
            Self {
                address,
                stop,
                server,
            }
        }

        /// Sends `request` as it is on a new connection and reads the answer to its end. The
        /// server may answer and close before it has read all of a request it refuses.
        async fn exchange(&self, request: &[u8]) -> String {
            let mut stream = tokio::net::TcpStream::connect(self.address).await.unwrap();
            let _ = stream.write_all(request).await;
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            String::from_utf8_lossy(&answer).into_owned()
        }

        async fn stop(self) {
            let _ = self.stop.send(());
            self.server.await.unwrap();
        }
    }

    /// A body sent a byte per chunk arrives whole, and one a byte over the limit is refused as
    /// that byte arrives.
    #[tokio::test]
    async fn a_body_in_many_small_chunks_is_read_whole_within_its_limit() {
        const LIMIT: usize = 4096;
        async fn sum(request: axum::extract::Request) -> String {
            match read_whole_body(request.into_body(), LIMIT).await {
                Ok(body) => {
                    let sum: u64 = body.iter().map(|byte| u64::from(*byte)).sum();
                    format!("read {} bytes summing {sum}", body.len())
                }
                Err(error) => error.to_string(),
            }
        }
        let served = Served::start(Router::new().route("/sum", axum::routing::post(sum))).await;
        let chunked = |bytes: usize| {
            let mut request = b"POST /sum HTTP/1.1\r\nhost: billhook\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            for index in 0..bytes {
                request.extend_from_slice(format!("1\r\n{}\r\n", index % 10).as_bytes());
            }
            request.extend_from_slice(b"0\r\n\r\n");
            request
        };
        let whole = served.exchange(&chunked(LIMIT)).await;
        // The digits 0 to 9 in turn: 4,096 times `0` (48), plus 409 rounds of 45 and 0 to 5.
        assert!(whole.ends_with("read 4096 bytes summing 215028"), "{whole}");
        let over = served.exchange(&chunked(LIMIT + 1)).await;
        assert!(over.ends_with("the body exceeds 4096 bytes"), "{over}");
        served.stop().await;
    }

    /// Headers must fit a connection's read buffer: larger ones are refused (431), not held.
    #[tokio::test]
    async fn headers_larger_than_the_read_buffer_are_refused() {
        let served = Served::start(Router::new().route("/", get(|| async { "ok" }))).await;
        let with_header_of = |bytes: usize| {
            format!(
                "GET / HTTP/1.1\r\nhost: billhook\r\nconnection: close\r\nx-padding: {}\r\n\r\n",
                "a".repeat(bytes)
            )
        };
        let fits = served
            .exchange(with_header_of(MAX_READ_BUFFER / 2).as_bytes())
            .await;
        assert!(fits.starts_with("HTTP/1.1 200"), "{fits}");
        let too_large = served
            .exchange(with_header_of(MAX_READ_BUFFER * 2).as_bytes())
            .await;
        assert!(too_large.starts_with("HTTP/1.1 431"), "{too_large}");
        served.stop().await;
    }

    #[tokio::test]
    async fn a_handler_that_panics_is_answered_500_without_its_message() {
        async fn boom() -> &'static str {
            panic!("secret detail of a bug")
        }
        let served = Served::start(Router::new().route("/boom", get(boom))).await;
        let answer = served
            .exchange(b"GET /boom HTTP/1.1\r\nhost: billhook\r\nconnection: close\r\n\r\n")
            .await;
        assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
        assert!(answer.contains("\"code\":\"internal\""), "{answer}");
        assert!(!answer.contains("secret detail"), "{answer}");
        served.stop().await;
    }
}
