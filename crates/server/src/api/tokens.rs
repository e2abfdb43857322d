//! `/v1/tokens`: admin tokens beside the configuration's root token. A token is shown once, at
//! creation; billhook keeps its digest.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use billhook_core::access::{Scope, digest, generate_token, token_hint};
use billhook_core::ids::TokenId;
use billhook_core::time::Timestamp;
use billhook_store::{NewToken, TokenRecord};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::ApiJson;
use crate::App;
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateToken {
    /// What the token is for (`ci`, `grafana`).
    name: String,
    /// `read` or `admin`.
    scope: Scope,
}

/// A token as listed: never the token itself.
#[derive(Debug, Serialize)]
pub(crate) struct TokenView {
    id: TokenId,
    name: String,
    scope: Scope,
    /// The token's first characters, to recognise it.
    hint: String,
    created_at: Timestamp,
    last_used_at: Option<Timestamp>,
    revoked_at: Option<Timestamp>,
}

impl From<TokenRecord> for TokenView {
    fn from(record: TokenRecord) -> Self {
        Self {
            id: record.id,
            name: record.name,
            scope: record.scope,
            hint: record.hint,
            created_at: record.created_at,
            last_used_at: record.last_used_at,
            revoked_at: record.revoked_at,
        }
    }
}

/// The answer to a creation: the only time the token is shown.
#[derive(Debug, Serialize)]
struct CreatedToken {
    #[serde(flatten)]
    view: TokenView,
    token: String,
}

#[derive(Debug, Serialize)]
struct TokenList {
    data: Vec<TokenView>,
}

pub(crate) async fn create(
    State(app): State<Arc<App>>,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<Response, ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::invalid("name must be 1 to 100 characters"));
    }
    let token = generate_token();
    let record = app
        .store
        .create_token(NewToken {
            id: TokenId::new(),
            name: name.to_owned(),
            scope: body.scope,
            digest: digest(&token),
            hint: token_hint(&token),
            created_at: Timestamp::now(),
        })
        .await?;
    tracing::info!(token = %record.id, scope = %record.scope, "created an admin token");
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            view: record.into(),
            token,
        }),
    )
        .into_response())
}

pub(crate) async fn list(State(app): State<Arc<App>>) -> Result<Json<impl Serialize>, ApiError> {
    let data = app
        .store
        .tokens()
        .await?
        .into_iter()
        .map(TokenView::from)
        .collect();
    Ok(Json(TokenList { data }))
}

pub(crate) async fn revoke(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id: TokenId = id.parse().map_err(|_| ApiError::not_found("token"))?;
    if app.store.revoke_token(id, Timestamp::now()).await? {
        tracing::info!(token = %id, "revoked an admin token");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("live token"))
    }
}
