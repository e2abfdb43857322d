//! The bench's receiver: a subscriber endpoint that answers 200 at once and records each
//! arrival by its `webhook-id`. One arrival in [`VERIFY_EVERY`] also has its Standard Webhooks
//! signature checked, so a bench run proves the deliveries are signed without the receiver's
//! HMAC work weighing on the figures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use billhook_core::signing::{EndpointSecret, verify};
use billhook_core::time::Timestamp;
use tokio::sync::oneshot;

use super::tracker::Tracker;

/// Every this many arrivals, one signature is verified.
const VERIFY_EVERY: u64 = 16;

struct Shared {
    tracker: Arc<Tracker>,
    secret: EndpointSecret,
    seen: AtomicU64,
    bad_signatures: AtomicU64,
    verified: AtomicU64,
}

/// A running receiver.
pub(crate) struct Receiver {
    pub url: String,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

/// Signature checks made and failed.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct SignatureChecks {
    pub verified: u64,
    pub bad: u64,
}

impl Receiver {
    /// Listens on `listen`; billhook is to deliver to `public_url`, or to the address listened
    /// on when none is given.
    pub(crate) async fn start(
        tracker: Arc<Tracker>,
        secret: EndpointSecret,
        listen: SocketAddr,
        public_url: Option<&str>,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            tracker,
            secret,
            seen: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
            verified: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/hook", post(arrive))
            .with_state(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            url: public_url.map_or_else(|| format!("http://{address}/hook"), str::to_owned),
            shared,
            stop: Some(stop),
        })
    }

    pub(crate) fn signature_checks(&self) -> SignatureChecks {
        SignatureChecks {
            verified: self.shared.verified.load(Ordering::Relaxed),
            bad: self.shared.bad_signatures.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn arrive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let at = Instant::now();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(id) = header("webhook-id") else {
        shared.bad_signatures.fetch_add(1, Ordering::Relaxed);
        return StatusCode::BAD_REQUEST;
    };
    shared.tracker.arrived(id, at);
    if shared.seen.fetch_add(1, Ordering::Relaxed) % VERIFY_EVERY == 0 {
        shared.verified.fetch_add(1, Ordering::Relaxed);
        let valid = verify(
            &shared.secret,
            id,
            header("webhook-timestamp").unwrap_or_default(),
            header("webhook-signature").unwrap_or_default(),
            &body,
            Timestamp::now().unix_seconds(),
        );
        if valid.is_err() {
            shared.bad_signatures.fetch_add(1, Ordering::Relaxed);
        }
    }
    StatusCode::OK
}
