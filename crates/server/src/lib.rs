//! billhook's server: the HTTP edge (ingest, admin API, health) and its background work, put
//! together in one composition root, [`run`].
//!
//! Configuration is validated into [`config::Settings`] before anything starts; the store is
//! opened here; handlers only translate between HTTP and the store, provider and core layers.

pub mod access;
mod api;
mod background;
pub mod config;
mod console;
pub mod delivery;
pub mod error;
mod health;
mod http_server;
mod ingest;
pub mod ledger;
pub mod metrics;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use billhook_store::{Store, StoreError};
use tokio::net::TcpListener;

pub use api::docs::openapi_json;
pub use config::Settings;
pub use ingest::redact_signature;

use crate::error::{ApiError, ErrorCode};

/// Shared state of a running server.
pub struct App {
    pub settings: Settings,
    pub store: Store,
    pub delivery: delivery::Delivery,
    /// Turns the ledger's conclusions into canonical events.
    pub announcer: Arc<ledger::Announcer>,
    pub access: access::AccessControl,
    pub metrics: Arc<metrics::Metrics>,
    /// Set once shutdown begins: a long request (a manual prune) stops between its steps
    /// instead of holding the stop up.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Bytes of ingest bodies that may be held in memory at once (`ingest.max_buffered_bytes`):
    /// a request takes its share before its body is read.
    pub ingest_budget: Arc<tokio::sync::Semaphore>,
    /// Ingest writes still running, which outlive their requests by design: the stop waits for
    /// them before delivery stops.
    pub ingest_writes: Arc<ingest::WritesInFlight>,
}

impl App {
    /// How the configuration file declares the endpoint named `name`, if it does. A declared
    /// endpoint is set back to its declaration at every start.
    pub(crate) fn declaration(&self, name: Option<&str>) -> Option<&config::EndpointConfig> {
        let name = name?;
        self.settings.endpoints.iter().find(|e| e.name == name)
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot open the database ({0})")]
    Store(#[from] StoreError),
    #[error("cannot start delivery: {0}")]
    Delivery(#[from] delivery::StartError),
    #[error("the HTTP server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Runs billhook until `shutdown` resolves: opens the store, serves HTTP on `listener`, runs the
/// background tasks, then drains in-flight requests and closes the store.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    Server::start_answering(settings, &listener)
        .await?
        .serve(listener, shutdown)
        .await
}

/// A server whose database is open, ready to serve.
pub struct Server {
    app: Arc<App>,
}

impl Server {
    /// [`Server::start`], answering on `listener` once it has taken a while: `/healthz` that
    /// the process is alive, everything else `503 starting`. A start can take minutes (a
    /// migration, a database still coming up): an orchestrator's liveness probe must not kill it
    /// halfway, and a provider's webhook is better answered "retry" than left waiting for its
    /// timeout. A start of a moment answers nothing meanwhile: its requests wait to be served.
    pub async fn start_answering(
        settings: Settings,
        listener: &TcpListener,
    ) -> Result<Self, RunError> {
        let limits = http_server::Limits::of(&settings);
        let (started, starting) = tokio::sync::oneshot::channel::<()>();
        let start = async move {
            let server = Self::start(settings).await;
            let _ = started.send(());
            server
        };
        tokio::pin!(start);
        tokio::select! {
            server = &mut start => return server,
            () = tokio::time::sleep(QUIET_START) => {}
        }
        let answer = http_server::serve_for_now(listener, starting_routes(), limits, async {
            let _ = starting.await;
        });
        let (server, ()) = tokio::join!(start, answer);
        server
    }

    /// Opens (and migrates) the database.
    pub async fn start(settings: Settings) -> Result<Self, RunError> {
        // Guessing is slowed (twenty tries a minute per address), not stopped: a short root
        // token can still be found, and its digest in a copied database cracked offline.
        let root_length = settings.admin_token.expose().chars().count();
        if root_length < 24 {
            tracing::warn!(
                characters = root_length,
                "the admin token is short; use 24 or more random characters, as billhook generates when none is set"
            );
        }
        let mut names: Vec<&String> = settings.sources.keys().collect();
        names.sort();
        for name in names {
            for weakness in settings.sources[name].spec.auth.weaknesses() {
                tracing::warn!(source = %name, "{weakness}");
            }
        }
        let store = Store::open(&settings.database).await?;
        let schema = store.schema_version().await?;
        tracing::info!(database = %settings.database.describe(), schema, "database ready");
        let mut sources: Vec<String> = settings.sources.keys().cloned().collect();
        sources.sort();
        let metrics = Arc::new(metrics::Metrics::new());
        let delivery = delivery::Delivery::start(
            store.clone(),
            settings.delivery.clone(),
            &settings.endpoints,
            &sources,
            settings.role.delivers(),
            Arc::clone(&metrics),
        )
        .await?;
        let announcer = Arc::new(ledger::Announcer::new(delivery.planner()));
        let access = access::AccessControl::new(settings.admin_token.clone());
        let ingest_budget = Arc::new(tokio::sync::Semaphore::new(
            settings.ingest.max_buffered_bytes,
        ));
        Ok(Self {
            app: Arc::new(App {
                settings,
                store,
                delivery,
                announcer,
                access,
                metrics,
                stopping: tokio::sync::watch::Sender::new(false),
                ingest_budget,
                ingest_writes: Arc::default(),
            }),
        })
    }

    /// Serves HTTP on `listener` and runs the background tasks until `shutdown` resolves, then
    /// drains in-flight requests and closes the store.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RunError> {
        let app = self.app;
        let background = background::spawn(Arc::clone(&app));
        let address = listener.local_addr()?;
        tracing::info!(%address, role = ?app.settings.role, sources = app.settings.sources.len(), "billhook is listening");
        let shutdown = {
            let app = Arc::clone(&app);
            async move {
                shutdown.await;
                app.stopping.send_replace(true);
            }
        };
        let routes = if app.settings.role.serves_api() {
            router(Arc::clone(&app))
        } else {
            health_only(Arc::clone(&app))
        };
        let limits = http_server::Limits::of(&app.settings);
        http_server::serve(listener, routes, limits, shutdown).await;
        // A write that committed deliveries leased to this instance hands them to their lanes;
        // once delivery has stopped, they could only wait out their leases.
        let writes = app.ingest_writes.settled();
        if tokio::time::timeout(app.settings.ingest.request_timeout.0, writes)
            .await
            .is_err()
        {
            tracing::warn!(
                "ingest writes still running at shutdown; their deliveries wait out their leases"
            );
        }
        app.delivery.shutdown().await;
        background.stop().await;
        app.store.close().await;
        tracing::info!("billhook stopped");
        Ok(())
    }
}

fn router(app: Arc<App>) -> Router {
    // Ingest reads its body under a deadline of its own; the console and the API read theirs
    // whole first, within the same time: the console before knowing who asks (its login form
    // has to), so only as much as its forms need; the API once the token is known.
    let console = if app.settings.console.enabled {
        console::router(Arc::clone(&app))
    } else {
        Router::new()
    };
    Router::new()
        .merge(console)
        .nest("/v1", api::router(Arc::clone(&app)))
        .route("/ingest/{source}", post(ingest::receive))
        .route("/ingest/{source}/{token}", post(ingest::receive_with_token))
        .route("/healthz", get(health::alive))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

/// What answers while the server starts.
fn starting_routes() -> Router {
    Router::new()
        .route("/healthz", get(health::starting))
        .fallback(|| async {
            ApiError::new(
                ErrorCode::Starting,
                "billhook is starting: the database is being opened or migrated",
            )
            .retry_after(std::time::Duration::from_secs(STARTING_RETRY_AFTER_SECONDS))
        })
        .method_not_allowed_fallback(method_not_allowed)
}

/// How long a start may take before the port answers that it is starting.
const QUIET_START: std::time::Duration = std::time::Duration::from_secs(2);

/// The `Retry-After` of a request that came while the server starts.
const STARTING_RETRY_AFTER_SECONDS: u64 = 5;

/// A worker instance answers health checks only.
fn health_only(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(health::alive))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such path")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this path does not accept that method",
    )
}
