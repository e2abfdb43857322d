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

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_http::catch_panic::CatchPanicLayer;

use crate::error::ApiError;

/// Serves `routes` on `listener` until `shutdown` resolves, then lets each connection finish
/// the request it is on, for up to `request_timeout`, and closes it.
///
/// `request_timeout` also bounds reading each request's headers. An ingest request ends within
/// it by its own deadline; an admin request still running after it (a client that never sends
/// the body it announced, a long export) is left behind rather than holding the stop for ever.
pub(crate) async fn serve(
    listener: TcpListener,
    routes: Router,
    request_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let connections = accept_until(&listener, routes, request_timeout, shutdown).await;
    // Closed before the drain, so a client connecting now is refused at once rather than left
    // waiting for a server that will not answer.
    drop(listener);
    drain(connections, request_timeout).await;
}

/// Serves `routes` on a listener the caller keeps until `until` resolves, and returns then:
/// the requests in flight finish in the background (for up to `request_timeout`), so a client
/// slow to send its headers does not hold up whoever accepts next. Connections that arrive
/// meanwhile wait for that.
pub(crate) async fn serve_for_now(
    listener: &TcpListener,
    routes: Router,
    request_timeout: Duration,
    until: impl Future<Output = ()>,
) {
    let connections = accept_until(listener, routes, request_timeout, until).await;
    tokio::spawn(drain(connections, request_timeout));
}

async fn accept_until(
    listener: &TcpListener,
    routes: Router,
    request_timeout: Duration,
    until: impl Future<Output = ()>,
) -> GracefulShutdown {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(request_timeout);
    let connections = GracefulShutdown::new();
    let routes = routes.layer(CatchPanicLayer::custom(answer_panic));
    tokio::pin!(until);
    loop {
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

/// How long a request's body may take to arrive, and how large it may be.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyDeadline {
    pub timeout: Duration,
    pub limit: usize,
}

/// Reads an admin or console request's body whole, within the deadline, before its handler
/// runs.
///
/// The header deadline above ends once the headers are in; a client could then send the body it
/// announced a byte now and then, and hold the connection for as long as it liked. The login
/// form, the one such route that reads a body before knowing who sent it, made that open to
/// anyone. A body too large, or too slow, is answered here in the API's error shape.
pub(crate) async fn read_body_in_time(
    axum::extract::State(deadline): axum::extract::State<BodyDeadline>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;

    use crate::error::{ApiError, ErrorCode};

    // No text billhook stores may hold the NUL character (PostgreSQL refuses it), and no name
    // or id does: refused here, the same on every backend.
    let uri = request.uri();
    if uri.path().contains("%00") || uri.query().is_some_and(|query| query.contains("%00")) {
        return ApiError::invalid("the URL holds the NUL character (%00)").into_response();
    }
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body exceeds {} bytes", deadline.limit),
        )
        .into_response()
    };
    if declared_length(request.headers()).is_some_and(|length| length > deadline.limit as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(deadline.timeout, axum::body::to_bytes(body, deadline.limit)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, bytes.into()))
                .await
        }
        Ok(Err(error)) => {
            let error = error.into_inner();
            if error.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                ApiError::invalid(format!("the body could not be read: {error}")).into_response()
            }
        }
        Err(_) => ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the body did not arrive within {} s",
                deadline.timeout.as_secs_f64()
            ),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn a_handler_that_panics_is_answered_500_without_its_message() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        async fn boom() -> &'static str {
            panic!("secret detail of a bug")
        }
        let routes = Router::new().route("/boom", get(boom));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, routes, Duration::from_secs(5), async {
            let _ = stopped.await;
        }));
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /boom HTTP/1.1\r\nhost: billhook\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
        assert!(answer.contains("\"code\":\"internal\""), "{answer}");
        assert!(!answer.contains("secret detail"), "{answer}");
        let _ = stop.send(());
        server.await.unwrap();
    }
}
