//! `/v1/tokens`: admin tokens beside the configuration's root token. A token is shown once, at
//! creation; billhook keeps its digest.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use billhook_core::access::{Scope, digest, generate_token, token_hint};
use billhook_core::ids::TokenId;
use billhook_core::time::Timestamp;
use billhook_store::{NewToken, TokenRecord};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::ApiJson;
use crate::App;
use crate::api::ApiPath;
use crate::error::ApiError;
#[allow(unused_imports, reason = "named in the OpenAPI attributes")]
use crate::error::ErrorBody as Error;

/// A token's scope, as a schema.
pub(crate) struct ScopeName;

impl utoipa::PartialSchema for ScopeName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        super::docs::one_of(
            ["read", "admin"],
            Some("`read`: look, change nothing; `admin`: everything."),
        )
    }
}

impl utoipa::ToSchema for ScopeName {}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateToken {
    /// What the token is for (`ci`, `grafana`).
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// `read` or `admin`.
    #[schema(value_type = ScopeName)]
    scope: Scope,
}

/// A token as listed: never the token itself.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Token)]
pub(crate) struct TokenView {
    id: TokenId,
    name: String,
    #[schema(value_type = ScopeName)]
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct CreatedToken {
    #[serde(flatten)]
    view: TokenView,
    /// The token (`bh_…`): store it now, billhook keeps only its digest.
    token: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct TokenList {
    data: Vec<TokenView>,
}

/// Creates an admin token with a `read` or `admin` scope; the answer is the only time it is shown.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = CreateToken,
    responses(
        (status = 201, description = "Created", body = CreatedToken),
        (status = 400, description = "A parameter or the body is invalid", body = Error), (status = 401, description = "No valid token", body = Error), (status = 403, description = "The token's scope does not allow this", body = Error), (status = 415, description = "The body was not sent as JSON", body = Error),
    ))]
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

/// Every token, revoked ones included (never the tokens themselves).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses(
        (status = 200, description = "The tokens", body = TokenList),
        (status = 401, description = "No valid token", body = Error), (status = 403, description = "The token's scope does not allow this", body = Error),
    ))]
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

/// Revokes a token; its console sessions end with it.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "The token's id (`tok_…`)")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No valid token", body = Error), (status = 403, description = "The token's scope does not allow this", body = Error), (status = 404, description = "Not found", body = Error),
    ))]
pub(crate) async fn revoke(
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id: TokenId = id.parse().map_err(|_| ApiError::not_found("token"))?;
    if app.store.revoke_token(id, Timestamp::now()).await? {
        tracing::info!(token = %id, "revoked an admin token");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("live token"))
    }
}
