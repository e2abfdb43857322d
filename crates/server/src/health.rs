//! `GET /healthz` (the process answers) and `GET /readyz` (the database answers too).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::App;
use crate::error::{ApiError, ErrorCode};

pub(crate) async fn alive() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub(crate) async fn ready(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    match app.store.ping().await {
        Ok(()) => Ok(Json(json!({ "status": "ready" }))),
        Err(error) => {
            tracing::warn!(%error, "not ready: the database does not answer");
            Err(ApiError::new(
                ErrorCode::StorageUnavailable,
                "the database does not answer",
            ))
        }
    }
}
