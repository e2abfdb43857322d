//! `GET /healthz` (the process answers), `GET /readyz` (the database answers and can be written) and
//! `GET /metrics` (Prometheus, OpenMetrics text).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use billhook_core::time::Timestamp;
use http::{HeaderValue, header};
use serde_json::{Value, json};

use crate::App;
#[allow(unused_imports, reason = "named in the OpenAPI attributes")]
use crate::error::ErrorBody as Error;
use crate::error::{ApiError, ErrorCode};

/// Answers while the process runs: `{"status": "ok"}`, or `{"status": "starting"}` while the
/// database is opened and migrated (when every other path answers `503 starting`).
#[utoipa::path(get, path = "/healthz", tag = "health", security(()),
    responses((status = 200, description = "Alive", body = Object, example = json!({"status": "ok"}))))]
pub(crate) async fn alive() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `/healthz` while the server starts.
pub(crate) async fn starting() -> Json<Value> {
    Json(json!({ "status": "starting" }))
}

/// Answers 200 only while the database answers and writes can succeed (on SQLite, not after a
/// failed fsync: only a restart makes writes durable again; on PostgreSQL, not on a standby or
/// a server read-only by default).
#[utoipa::path(get, path = "/readyz", tag = "health", security(()),
    responses(
        (status = 200, description = "Ready", body = Object, example = json!({"status": "ready"})),
        (status = 503, description = "The database does not answer or cannot be written (`storage_unavailable`), or billhook is still starting (`starting`)", body = Error),
    ))]
pub(crate) async fn ready(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    match app.store.ping().await {
        Ok(()) => Ok(Json(json!({ "status": "ready" }))),
        Err(error) => {
            tracing::warn!(%error, "not ready: the database does not answer or cannot be written");
            Err(ApiError::new(
                ErrorCode::StorageUnavailable,
                "the database does not answer or cannot be written",
            ))
        }
    }
}

/// The metrics, with the gauges read from the database at scrape time. When the database does
/// not answer, the counters are still served and the gauges keep their last values.
/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "health", security(()),
    responses((status = 200, description = "The metrics",
        content((String = "application/openmetrics-text; version=1.0.0; charset=utf-8"))),
        (status = 503, description = "billhook is starting (its database is opening or migrating)", body = crate::error::ErrorBody)))]
pub(crate) async fn metrics(State(app): State<Arc<App>>) -> Response {
    let overview = match app.store.overview().await {
        Ok(overview) => Some(overview),
        Err(error) => {
            tracing::debug!(%error, "metrics: the overview is unavailable");
            None
        }
    };
    let text = app.metrics.encode(overview.as_ref(), Timestamp::now());
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
