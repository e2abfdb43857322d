//! The admin API under `/v1`: JSON in and out, `Authorization: Bearer <token>` (scope `read` for
//! reading, `admin` for everything else), cursor pagination (`{"data": […], "next_cursor": …}`),
//! errors from the one table in [`crate::error`].

pub mod docs;
pub(crate) mod endpoints;
mod event_types;
pub(crate) mod events;
pub(crate) mod inbound;
pub(crate) mod ledger;
pub(crate) mod operations;
mod tokens;

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use billhook_core::access::Scope;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::App;
use crate::error::{ApiError, ErrorCode};

pub(crate) fn router(app: Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route("/events", get(events::list))
        .route("/events/{id}", get(events::show))
        .route("/events/{id}/redeliver", post(events::redeliver))
        .route("/endpoints", get(endpoints::list).post(endpoints::create))
        .route(
            "/endpoints/{id}",
            get(endpoints::show)
                .patch(endpoints::update)
                .delete(endpoints::delete),
        )
        .route("/endpoints/{id}/secret", get(endpoints::secret))
        .route(
            "/endpoints/{id}/secret/rotate",
            post(endpoints::rotate_secret),
        )
        .route("/endpoints/{id}/deliveries", get(endpoints::deliveries))
        .route("/endpoints/{id}/attempts", get(endpoints::attempts))
        .route("/endpoints/{id}/recover", post(endpoints::recover))
        .route("/inbound", get(inbound::list))
        .route("/inbound/reprocess", post(inbound::reprocess_all))
        .route("/inbound/{id}", get(inbound::show))
        .route("/inbound/{id}/reprocess", post(inbound::reprocess_one))
        .route("/event-types", get(event_types::list))
        .route("/event-types/{name}", get(event_types::show))
        .merge(ledger::routes())
        .route("/sources", get(operations::sources))
        .route("/retention", get(operations::retention))
        .route("/retention/prune", post(operations::prune))
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{id}", axum::routing::delete(tokens::revoke))
        // Inside the token check: a body is read only for a caller known to be allowed.
        .route_layer(middleware::from_fn_with_state(
            crate::http_server::BodyDeadline {
                timeout: app.settings.ingest.request_timeout.0,
                limit: crate::http_server::ADMIN_BODY_LIMIT,
                refuse: IntoResponse::into_response,
            },
            crate::http_server::read_body_in_time,
        ))
        .route_layer(middleware::from_fn_with_state(app, require_token))
        // The API's description is public, like any API reference.
        .route("/openapi.json", get(docs::serve))
}

/// Lets a request through when its bearer token's scope covers what it asks; the caller's
/// [`Access`] goes along as a request extension.
async fn require_token(
    State(app): State<Arc<App>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme's name is case-insensitive (RFC 9110, 11.1).
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(token) = given else {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "send `Authorization: Bearer <admin token>`",
        ));
    };
    let client = requesting_client(&app, &request);
    if let Some(wait) = app.access.refused_for(client) {
        return Err(too_many_attempts(wait));
    }
    let Some(access) = app.access.token(&app.store, token).await? else {
        app.access.failed(client);
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "the admin token is not valid",
        ));
    };
    // Judged by the route, not the path: `/v1/invoices/tokens-2024` is an invoice, not tokens.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| request.uri().path(), MatchedPath::as_str);
    let needed = needed_scope(request.method(), route);
    if !access.scope.allows(needed) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "this token has the `{}` scope; {} {} needs `{needed}`",
                access.scope,
                request.method(),
                request.uri().path()
            ),
        ));
    }
    request.extensions_mut().insert(access);
    Ok(next.run(request).await)
}

/// The address a request came from, as the source allow-lists judge it (the peer, or what a
/// trusted proxy says).
pub(crate) fn requesting_client(app: &App, request: &Request) -> std::net::IpAddr {
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or_else(
            || std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            |info| info.0,
        );
    crate::ingest::client_ip(peer, request.headers(), &app.settings.trusted_proxies)
}

/// The refusal of a client that presented too many invalid tokens lately.
pub(crate) fn too_many_attempts(wait: std::time::Duration) -> ApiError {
    ApiError::new(
        ErrorCode::TooManyAttempts,
        format!(
            "too many invalid tokens from this address; try again in {} s",
            crate::error::whole_seconds(wait)
        ),
    )
    .retry_after(wait)
}

/// The scope a request to `route` (its template, `/v1/endpoints/{id}/secret`) needs: reading is
/// `read`, except secrets and tokens; everything that changes something is `admin`.
fn needed_scope(method: &http::Method, route: &str) -> Scope {
    let reads = matches!(*method, http::Method::GET | http::Method::HEAD);
    let sensitive = route.ends_with("/secret") || route.contains("/tokens");
    if reads && !sensitive {
        Scope::Read
    } else {
        Scope::Admin
    }
}

/// Query parameters, refused with `invalid_request` when malformed.
pub(crate) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|rejection: QueryRejection| ApiError::invalid(rejection.body_text()))
    }
}

/// Path parameters, refused with `invalid_request` when they cannot be read (percent-encoding
/// that is not UTF-8, say), so every refusal is `{code, message}`.
pub(crate) struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|rejection: PathRejection| ApiError::invalid(rejection.body_text()))
    }
}

/// A JSON body, refused with `invalid_request` when malformed.
pub(crate) struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        axum::Json::<T>::from_request(request, state)
            .await
            .map(|j| ApiJson(j.0))
            .map_err(|rejection: JsonRejection| match rejection {
                JsonRejection::MissingJsonContentType(_) => {
                    ApiError::new(ErrorCode::UnsupportedMediaType, rejection.body_text())
                }
                rejection => ApiError::invalid(rejection.body_text()),
            })
    }
}

/// One page of a listing: `{"data": […], "next_cursor": …}`; pass `next_cursor` as `cursor` to
/// continue.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Page<T> {
    pub data: Vec<T>,
    /// `null` on the last page.
    pub next_cursor: Option<String>,
}

/// An optional JSON body: none at all, or `null`, is the default; anything else must be a `T`.
pub(crate) fn optional_body<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice::<Option<T>>(body)
        .map(Option::unwrap_or_default)
        .map_err(|e| ApiError::invalid(format!("body: {e}")))
}

/// Default and maximum page sizes.
pub(crate) const DEFAULT_LIMIT: u32 = 50;
pub(crate) const MAX_LIMIT: u32 = 500;

pub(crate) fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(limit @ 1..=MAX_LIMIT) => Ok(limit),
        Some(other) => Err(ApiError::invalid(format!(
            "limit must be between 1 and {MAX_LIMIT}, not {other}"
        ))),
    }
}

/// Parses a cursor this API issued (an id of the listed kind).
pub(crate) fn parse_cursor<T: std::str::FromStr>(
    cursor: Option<&str>,
) -> Result<Option<T>, ApiError> {
    cursor
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse().map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidCursor,
                    format!("`{c}` is not a cursor from this listing"),
                )
            })
        })
        .transpose()
}

/// A JSON response assembled from bytes that are already JSON (stored canonical events), so
/// they are sent exactly as stored and never re-serialized.
pub(crate) fn raw_json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, Bytes::from(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `{"data": [items…], "next_cursor": …}` from items that are already JSON.
pub(crate) fn raw_page<'a>(
    items: impl Iterator<Item = &'a [u8]>,
    next_cursor: Option<&str>,
) -> Response {
    let mut body = Vec::with_capacity(4096);
    body.extend_from_slice(b"{\"data\":[");
    for (index, item) in items.enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"],\"next_cursor\":");
    match next_cursor {
        Some(cursor) => body.extend_from_slice(
            serde_json::to_string(cursor)
                .unwrap_or_else(|_| "null".to_owned())
                .as_bytes(),
        ),
        None => body.extend_from_slice(b"null"),
    }
    body.push(b'}');
    raw_json(StatusCode::OK, body)
}
