//! `/v1/endpoints`: subscriber endpoints, their secrets, attempts and recovery.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use billhook_core::access::Scope;
use billhook_core::ids::{AttemptId, DeliveryId, EndpointId};
use billhook_core::signing::EndpointSecret;
use billhook_core::time::Timestamp;
use billhook_store::{
    AttemptRecord, DeliveryStatus, EndpointPatch, EndpointRecord, EndpointStats, NewEndpoint,
};
use http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::events::DeliverySummary;
use super::{ApiJson, ApiQuery, Page, page_limit, parse_cursor};
use crate::App;
use crate::access::Access;
use crate::api::ApiPath;
use crate::delivery::{EndpointDefinition, check_destination};
#[allow(unused_imports, reason = "named in the OpenAPI attributes")]
use crate::error::ErrorBody as Error;
use crate::error::{ApiError, ErrorCode};

/// Distinguishes a field set to `null` (`Some(None)`) from one left out (`None`).
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A field that may be left out but not sent as `null`: it has nothing to clear to, and taking
/// `null` as "unchanged" would hide the caller's mistake.
fn not_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// A new endpoint.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateEndpoint {
    /// Where deliveries go: `https://…` (or `http://` to an allowed private network).
    url: String,
    /// Canonical types or patterns: `invoice.paid`, `invoice.*`, `*`.
    #[schema(min_items = 1)]
    event_types: Vec<String>,
    /// Only events from these sources; absent or `null` for every source.
    #[serde(default)]
    #[schema(min_items = 1)]
    sources: Option<Vec<String>>,
    /// `canonical` (billhook's events) or `raw` (the provider's body, re-signed).
    #[serde(default = "canonical")]
    #[schema(default = "canonical", pattern = "^(canonical|raw)$")]
    format: String,
    /// Headers sent with every delivery.
    #[serde(default)]
    #[schema(value_type = std::collections::HashMap<String, String>)]
    headers: Map<String, Value>,
    /// Requests per second at most.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10_000)]
    rate_limit: Option<u32>,
    /// Requests in flight at most.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_000)]
    max_concurrency: Option<u32>,
    #[serde(default)]
    description: String,
    #[serde(default = "yes")]
    #[schema(default = true)]
    enabled: bool,
    /// A `whsec_…` secret to use instead of a generated one.
    #[serde(default)]
    secret: Option<String>,
}

fn canonical() -> String {
    "canonical".to_owned()
}

fn yes() -> bool {
    true
}

/// Changes to an endpoint: only the fields given change; `null` clears `sources`, `rate_limit`
/// and `max_concurrency`, is the same as absent for `disabled_reason`, and is refused elsewhere.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateEndpoint {
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    url: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    event_types: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Vec<String>>, min_items = 1)]
    sources: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false, pattern = "^(canonical|raw)$")]
    format: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = std::collections::HashMap<String, String>)]
    headers: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 10_000)]
    rate_limit: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1_000)]
    max_concurrency: Option<Option<u32>>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    description: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    enabled: Option<bool>,
    /// With `enabled: false`: why, shown with the endpoint; absent or `null` for "disabled by
    /// an operator".
    disabled_reason: Option<String>,
    /// With `enabled: true`: also resend what failed, died or was held since this time.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    recover_since: Option<Timestamp>,
}

/// An endpoint's deliveries by status, and its attempts in the last 24 hours.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = EndpointStats)]
pub(crate) struct StatsView {
    pending: u64,
    failed: u64,
    delivered: u64,
    dead: u64,
    held: u64,
    attempts_24h: u64,
    successes_24h: u64,
}

impl From<EndpointStats> for StatsView {
    fn from(s: EndpointStats) -> Self {
        Self {
            pending: s.pending,
            failed: s.failed,
            delivered: s.delivered,
            dead: s.dead,
            held: s.held,
            attempts_24h: s.attempts_24h,
            successes_24h: s.successes_24h,
        }
    }
}

/// An endpoint as the API shows it. The secret appears only where asked for.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Endpoint)]
pub(crate) struct EndpointView {
    id: EndpointId,
    name: Option<String>,
    url: String,
    description: String,
    event_types: Vec<String>,
    sources: Option<Vec<String>>,
    format: String,
    /// Their values only to an admin token: a read token sees `[redacted]`.
    #[schema(value_type = std::collections::HashMap<String, String>)]
    headers: Map<String, Value>,
    rate_limit: Option<u32>,
    max_concurrency: Option<u32>,
    enabled: bool,
    disabled_reason: Option<String>,
    failing_since: Option<Timestamp>,
    last_success_at: Option<Timestamp>,
    last_failure_at: Option<Timestamp>,
    last_error: Option<String>,
    created_at: Timestamp,
    updated_at: Timestamp,
    /// In `GET /v1/endpoints/{id}` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    stats: Option<StatsView>,
    /// In the answer to a creation only.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

/// An endpoint's URL as a reader (a token without the admin scope) sees it: its origin only. A
/// receiver's credential often rides in the path (`/services/T0/B0/…`) or the query
/// (`?token=…`), as much a secret as the header values a reader sees the names of only.
pub(crate) fn url_for_reader(url: &str) -> String {
    let Ok(parsed) = url::Url::parse(url) else {
        return "[redacted]".to_owned();
    };
    let origin = match (parsed.host_str(), parsed.port()) {
        (Some(host), Some(port)) => format!("{}://{host}:{port}", parsed.scheme()),
        (Some(host), None) => format!("{}://{host}", parsed.scheme()),
        (None, _) => return "[redacted]".to_owned(),
    };
    if parsed.path() == "/" && parsed.query().is_none() {
        format!("{origin}/")
    } else {
        format!("{origin}/[redacted]")
    }
}

impl EndpointView {
    /// The view a token of `access`'s scope may read. An endpoint's headers carry the
    /// subscriber's credentials more often than not (`Authorization`), as much a secret as the
    /// signing secret a read token cannot read either: it sees their names only.
    fn shown_to(mut self, access: &Access) -> Self {
        if access.scope != Scope::Admin {
            for value in self.headers.values_mut() {
                *value = Value::String("[redacted]".to_owned());
            }
            self.url = url_for_reader(&self.url);
        }
        self
    }

    fn new(record: EndpointRecord) -> Self {
        Self {
            id: record.id,
            name: record.name,
            url: record.url,
            description: record.description,
            event_types: record.event_types,
            sources: record.sources,
            format: record.format,
            headers: record
                .headers
                .into_iter()
                .map(|(name, value)| (name, Value::String(value)))
                .collect(),
            rate_limit: record.rate_limit,
            max_concurrency: record.max_concurrency,
            enabled: record.enabled,
            disabled_reason: record.disabled_reason,
            failing_since: record.failing_since,
            last_success_at: record.last_success_at,
            last_failure_at: record.last_failure_at,
            last_error: record.last_error,
            created_at: record.created_at,
            updated_at: record.updated_at,
            stats: None,
            secret: None,
        }
    }
}

fn header_pairs(headers: &Map<String, Value>) -> Result<Vec<(String, String)>, ApiError> {
    headers
        .iter()
        .map(|(name, value)| match value {
            Value::String(text) => Ok((name.clone(), text.clone())),
            _ => Err(ApiError::invalid(format!(
                "header `{name}` must be a string"
            ))),
        })
        .collect()
}

fn endpoint_id(text: &str) -> Result<EndpointId, ApiError> {
    text.parse().map_err(|_| ApiError::not_found("endpoint"))
}

/// Checks sources against the configured ones.
pub(crate) fn check_sources(app: &App, sources: Option<&[String]>) -> Result<(), ApiError> {
    if let Some(unknown) = sources
        .into_iter()
        .flatten()
        .find(|s| !app.settings.sources.contains_key(*s))
    {
        let mut known: Vec<&String> = app.settings.sources.keys().collect();
        known.sort();
        return Err(ApiError::invalid(format!(
            "`{unknown}` is not a configured source (known: {})",
            known
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

/// Creates an endpoint; the answer carries its `whsec_…` signing secret.
#[utoipa::path(post, path = "/v1/endpoints", tag = "endpoints", request_body = CreateEndpoint,
    responses(
        (status = 201, description = "Created", body = EndpointView),
        (status = 400, description = "A parameter or the body is invalid", body = Error), (status = 401, description = "No valid token", body = Error), (status = 403, description = "The token's scope does not allow this", body = Error), (status = 415, description = "The body was not sent as JSON", body = Error),
    ))]
pub(crate) async fn create(
    State(app): State<Arc<App>>,
    ApiJson(body): ApiJson<CreateEndpoint>,
) -> Result<Response, ApiError> {
    let headers = header_pairs(&body.headers)?;
    EndpointDefinition::check_static(
        &body.event_types,
        body.sources.as_deref(),
        &body.format,
        &headers,
        body.rate_limit,
        body.max_concurrency,
    )
    .map_err(ApiError::invalid)?;
    check_sources(&app, body.sources.as_deref())?;
    check_destination(app.delivery.destinations(), &body.url)
        .await
        .map_err(ApiError::invalid)?;
    let secret = match &body.secret {
        Some(text) => EndpointSecret::parse(text).map_err(|e| ApiError::invalid(e.to_string()))?,
        None => EndpointSecret::generate(),
    };
    let record = app
        .store
        .create_endpoint(NewEndpoint {
            id: EndpointId::new(),
            name: None,
            url: body.url,
            description: body.description,
            event_types: body.event_types,
            sources: body.sources,
            format: body.format,
            headers,
            rate_limit: body.rate_limit,
            max_concurrency: body.max_concurrency,
            enabled: body.enabled,
            secret: secret.expose(),
            now: Timestamp::now(),
        })
        .await?;
    app.delivery.reload_after_change(None).await;
    // The host alone: a receiver's token may ride in the URL's path or query.
    let host = url::Url::parse(&record.url)
        .ok()
        .and_then(|url| url.host_str().map(str::to_owned))
        .unwrap_or_default();
    tracing::info!(endpoint = %record.id, %host, "created an endpoint");
    let mut view = EndpointView::new(record);
    view.secret = Some(secret.expose());
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Endpoints, newest first.
#[utoipa::path(get, path = "/v1/endpoints", tag = "endpoints", params(ListParams),
    responses(
        (status = 200, description = "A page of endpoints", body = Page<EndpointView>),
        (status = 400, description = "A parameter or the body is invalid", body = Error), (status = 401, description = "No valid token", body = Error),
    ))]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    Extension(access): Extension<Access>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<EndpointView>>, ApiError> {
    let page = app
        .store
        .endpoints(
            parse_cursor(params.cursor.as_deref())?,
            page_limit(params.limit)?,
        )
        .await?;
    Ok(Json(Page {
        data: page
            .items
            .into_iter()
            .map(|record| EndpointView::new(record).shown_to(&access))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One endpoint with its health and delivery figures.
#[utoipa::path(get, path = "/v1/endpoints/{id}", tag = "endpoints",
    params(("id" = String, Path, description = "The endpoint's id (`ep_…`)")),
    responses(
        (status = 200, description = "The endpoint", body = EndpointView),
        (status = 401, description = "No valid token", body = Error), (status = 404, description = "Not found", body = Error),
    ))]
pub(crate) async fn show(
    State(app): State<Arc<App>>,
    Extension(access): Extension<Access>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<EndpointView>, ApiError> {
    let id = endpoint_id(&id)?;
    let record = app
        .store
        .endpoint(id)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))?;
    let stats = app.store.endpoint_stats(id, Timestamp::now()).await?;
    let mut view = EndpointView::new(record).shown_to(&access);
    view.stats = Some(stats.into());
    Ok(Json(view))
}

/// Changes an endpoint. `{"enabled": false, "disabled_reason"}` holds its deliveries;
/// `{"enabled": true, "recover_since"}` resumes them and resends the backlog.
#[utoipa::path(patch, path = "/v1/endpoints/{id}", tag = "endpoints", request_body = UpdateEndpoint,
    params(("id" = String, Path, description = "The endpoint's id (`ep_…`)")),
    responses(
        (status = 200, description = "The endpoint as changed", body = EndpointView),
        (status = 400, description = "A parameter or the body is invalid", body = Error), (status = 401, description = "No valid token", body = Error), (status = 403, description = "The token's scope does not allow this", body = Error), (status = 404, description = "Not found", body = Error), (status = 409, description = "The configuration file declares what this would change", body = Error), (status = 415, description = "The body was not sent as JSON", body = Error),
    ))]
pub(crate) async fn update(
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateEndpoint>,
) -> Result<Json<EndpointView>, ApiError> {
    let id = endpoint_id(&id)?;
    let current = app
        .store
        .endpoint(id)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))?;
    if app.declaration(current.name.as_deref()).is_some() {
        let declared: Vec<&str> = [
            ("url", body.url.is_some()),
            ("description", body.description.is_some()),
            ("event_types", body.event_types.is_some()),
            ("sources", body.sources.is_some()),
            ("format", body.format.is_some()),
            ("headers", body.headers.is_some()),
            ("rate_limit", body.rate_limit.is_some()),
            ("max_concurrency", body.max_concurrency.is_some()),
        ]
        .into_iter()
        .filter_map(|(field, named)| named.then_some(field))
        .collect();
        if !declared.is_empty() {
            return Err(ApiError::new(
                ErrorCode::DeclaredInConfiguration,
                format!(
                    "the configuration file declares this endpoint and sets {}: change it there (only enabling and disabling it are the API's)",
                    declared.join(", ")
                ),
            ));
        }
    }
    let headers = body.headers.as_ref().map(header_pairs).transpose()?;
    let sources = body.sources.clone().unwrap_or(current.sources.clone());
    EndpointDefinition::check_static(
        body.event_types.as_ref().unwrap_or(&current.event_types),
        sources.as_deref(),
        body.format.as_ref().unwrap_or(&current.format),
        // The stored headers, when not replaced, as they are sent: without headers of the
        // connection an older billhook let an endpoint keep.
        headers
            .as_ref()
            .unwrap_or(&crate::delivery::sendable_headers(&current.headers)),
        body.rate_limit.unwrap_or(current.rate_limit),
        body.max_concurrency.unwrap_or(current.max_concurrency),
    )
    .map_err(ApiError::invalid)?;
    // Only sources named now: an endpoint whose source left the configuration can still be
    // changed (disabled, say) without naming its sources anew.
    check_sources(&app, body.sources.clone().flatten().as_deref())?;
    if let Some(url) = &body.url {
        check_destination(app.delivery.destinations(), url)
            .await
            .map_err(ApiError::invalid)?;
    }
    if body.recover_since.is_some() && body.enabled != Some(true) {
        return Err(ApiError::invalid("recover_since goes with enabled: true"));
    }
    if body.disabled_reason.is_some() && body.enabled != Some(false) {
        return Err(ApiError::invalid(
            "disabled_reason goes with enabled: false",
        ));
    }
    let now = Timestamp::now();
    let enabled = body.enabled.map(|enabled| (id, enabled));
    let patch = EndpointPatch {
        url: body.url,
        description: body.description,
        event_types: body.event_types,
        sources: body.sources,
        format: body.format,
        headers,
        rate_limit: body.rate_limit,
        max_concurrency: body.max_concurrency,
        enabled: body.enabled,
        disabled_reason: body.disabled_reason,
    };
    let record = app
        .store
        .update_endpoint(id, patch, now)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))?;
    // This instance plans new deliveries by the endpoints as reloaded: reloaded before the
    // backlog is recovered, an endpoint enabled again gets its new deliveries as pending rather
    // than held behind the recovery, where nothing would release them.
    app.delivery.reload_after_change(enabled).await;
    if body.enabled == Some(false) {
        app.delivery.settle_backlogs(vec![id], Vec::new());
    }
    if let Some(since) = body.recover_since {
        let recovered = app.store.recover(id, since, now).await?.resent;
        tracing::info!(endpoint = %id, recovered, "re-enabled an endpoint and recovered its backlog");
    }
    app.delivery.wake();
    Ok(Json(EndpointView::new(record)))
}

/// Deletes an endpoint and cancels what it was still owed.
#[utoipa::path(delete, path = "/v1/endpoints/{id}", tag = "endpoints",
    params(("id" = String, Path, description = "The endpoint's id (`ep_…`)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = Error), (status = 403, description = "The token's scope does not allow this", body = Error), (status = 404, description = "Not found", body = Error),
    ))]
pub(crate) async fn delete(
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = endpoint_id(&id)?;
    if !app.store.delete_endpoint(id, Timestamp::now()).await? {
        return Err(ApiError::not_found("endpoint"));
    }
    app.delivery.reload_after_change(None).await;
    app.delivery.settle_backlogs(Vec::new(), vec![id]);
    tracing::info!(endpoint = %id, "deleted an endpoint");
    Ok(StatusCode::NO_CONTENT)
}

/// An endpoint's signing secrets.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = EndpointSecrets)]
pub(crate) struct SecretView {
    /// The current signing secret.
    secret: String,
    /// Secrets rotated out that still sign, and until when.
    previous: Vec<PreviousSecret>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct PreviousSecret {
    secret: String,
    expires_at: Option<Timestamp>,
}

fn secret_view(record: &EndpointRecord) -> SecretView {
    let now = Timestamp::now();
    let mut secrets = record.secrets.iter();
    SecretView {
        secret: secrets.next().map(|s| s.secret.clone()).unwrap_or_default(),
        previous: secrets
            .filter(|s| s.expires_at.is_none_or(|at| at > now))
            .map(|s| PreviousSecret {
                secret: s.secret.clone(),
                expires_at: s.expires_at,
            })
            .collect(),
    }
}

/// The current signing secret and any rotated-out one still signing.
#[utoipa::path(get, path = "/v1/endpoints/{id}/secret", tag = "endpoints",
    params(("id" = String, Path, description = "The endpoint's id (`ep_…`)")),
    responses(
        (status = 200, description = "The secrets", body = SecretView),
        (status = 401, description = "No valid token", body = Error), (status = 403, description = "The token's scope does not allow this", body = Error), (status = 404, description = "Not found", body = Error),
    ))]
pub(crate) async fn secret(
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SecretView>, ApiError> {
    let id = endpoint_id(&id)?;
    let record = app
        .store
        .endpoint(id)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))?;
    Ok(Json(secret_view(&record)))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateSecret {
    /// A `whsec_…` secret to use instead of a generated one.
    secret: Option<String>,
}

/// Makes a new secret current; the previous one keeps signing for `delivery.secret_overlap`.
#[utoipa::path(post, path = "/v1/endpoints/{id}/secret/rotate", tag = "endpoints",
    params(("id" = String, Path, description = "The endpoint's id (`ep_…`)")),
    request_body(content = Option<RotateSecret>, description = "Optional: the new secret"),
    responses(
        (status = 200, description = "The secrets after the rotation", body = SecretView),
        (status = 400, description = "A parameter or the body is invalid", body = Error), (status = 401, description = "No valid token", body = Error), (status = 403, description = "The token's scope does not allow this", body = Error), (status = 404, description = "Not found", body = Error), (status = 409, description = "The configuration file declares what this would change", body = Error),
    ))]
pub(crate) async fn rotate_secret(
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    body: bytes::Bytes,
) -> Result<Json<SecretView>, ApiError> {
    let id = endpoint_id(&id)?;
    let body: RotateSecret = super::optional_body(&body)?;
    let current = app
        .store
        .endpoint(id)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))?;
    if app
        .declaration(current.name.as_deref())
        .is_some_and(|declared| declared.secret.is_some())
    {
        return Err(ApiError::new(
            ErrorCode::DeclaredInConfiguration,
            "the configuration file sets this endpoint's secret: change it there, and the next start rotates it",
        ));
    }
    let secret = match &body.secret {
        Some(text) => EndpointSecret::parse(text).map_err(|e| ApiError::invalid(e.to_string()))?,
        None => EndpointSecret::generate(),
    };
    let now = Timestamp::now();
    let record = app
        .store
        .rotate_secret(
            id,
            secret.expose(),
            now,
            now.add(app.delivery.secret_overlap()),
        )
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))?;
    app.delivery.reload_after_change(None).await;
    tracing::info!(endpoint = %id, "rotated an endpoint's signing secret");
    Ok(Json(secret_view(&record)))
}

/// An attempt as the API shows it; the response body is the first 4 KiB as text.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Attempt)]
pub(crate) struct AttemptView {
    id: AttemptId,
    delivery_id: DeliveryId,
    endpoint_id: EndpointId,
    number: u32,
    started_at: Timestamp,
    duration_ms: u64,
    status_code: Option<u16>,
    response_body: Option<String>,
    error_kind: Option<String>,
    error_message: Option<String>,
}

impl From<AttemptRecord> for AttemptView {
    fn from(a: AttemptRecord) -> Self {
        Self {
            id: a.id,
            delivery_id: a.delivery_id,
            endpoint_id: a.endpoint_id,
            number: a.number,
            started_at: a.started_at,
            duration_ms: a.duration_ms,
            status_code: a.status_code,
            response_body: a
                .response_body
                .map(|b| String::from_utf8_lossy(&b).into_owned()),
            error_kind: a.error_kind,
            error_message: a.error_message,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeliveryListParams {
    /// Only deliveries in this status: `pending`, `failed` (retrying), `delivered`, `dead`,
    /// `held` or `cancelled`.
    status: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only deliveries made since this RFC 3339 time.
    since: Option<String>,
}

/// The endpoint's deliveries, newest first: what it was sent, is owed, gave up on or holds.
#[utoipa::path(get, path = "/v1/endpoints/{id}/deliveries", tag = "endpoints",
    params(("id" = String, Path, description = "The endpoint's id (`ep_…`)"), DeliveryListParams),
    responses(
        (status = 200, description = "A page of deliveries", body = Page<DeliverySummary>),
        (status = 400, description = "A parameter or the body is invalid", body = Error), (status = 401, description = "No valid token", body = Error), (status = 404, description = "Not found", body = Error),
    ))]
pub(crate) async fn deliveries(
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<DeliveryListParams>,
) -> Result<Json<Page<DeliverySummary>>, ApiError> {
    let id = endpoint_id(&id)?;
    let status = params
        .status
        .as_deref()
        .map(|text| {
            DeliveryStatus::parse(text).ok_or_else(|| {
                ApiError::invalid(format!(
                    "status must be pending, failed, delivered, dead, held or cancelled, not `{text}`"
                ))
            })
        })
        .transpose()?;
    let since = super::events::time_param("since", params.since.as_deref())?;
    if app.store.endpoint(id).await?.is_none() {
        return Err(ApiError::not_found("endpoint"));
    }
    // A delivery's id is made from when it was made, so `since` is a range of ids.
    let after = since.map(DeliveryId::lower_bound);
    let page = app
        .store
        .deliveries_of_endpoint(
            id,
            status,
            (after, parse_cursor(params.cursor.as_deref())?),
            page_limit(params.limit)?,
        )
        .await?;
    Ok(Json(Page {
        data: page.items.into_iter().map(DeliverySummary::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Every attempt to deliver to the endpoint, newest first.
#[utoipa::path(get, path = "/v1/endpoints/{id}/attempts", tag = "endpoints",
    params(("id" = String, Path, description = "The endpoint's id (`ep_…`)"), ListParams),
    responses(
        (status = 200, description = "A page of attempts", body = Page<AttemptView>),
        (status = 400, description = "A parameter or the body is invalid", body = Error), (status = 401, description = "No valid token", body = Error), (status = 404, description = "Not found", body = Error),
    ))]
pub(crate) async fn attempts(
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<AttemptView>>, ApiError> {
    let id = endpoint_id(&id)?;
    if app.store.endpoint(id).await?.is_none() {
        return Err(ApiError::not_found("endpoint"));
    }
    let page = app
        .store
        .attempts_of_endpoint(
            id,
            parse_cursor(params.cursor.as_deref())?,
            page_limit(params.limit)?,
        )
        .await?;
    Ok(Json(Page {
        data: page.items.into_iter().map(AttemptView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Recover {
    /// Resend what failed, died or was held since this time.
    since: Timestamp,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Recovered {
    /// How many deliveries will be attempted again.
    recovered: u64,
    /// Every delivery resent was made before this point of the endpoint's deliveries: as a
    /// `cursor` of its listing with `status=pending` and `status=failed`, it shows what is
    /// left of the recovery apart from deliveries made since.
    resent_before: String,
}

/// Resends every failed, dead or held delivery of the endpoint created since `since`.
#[utoipa::path(post, path = "/v1/endpoints/{id}/recover", tag = "endpoints", request_body = Recover,
    params(("id" = String, Path, description = "The endpoint's id (`ep_…`)")),
    responses(
        (status = 200, description = "Deliveries scheduled", body = Recovered),
        (status = 400, description = "A parameter or the body is invalid", body = Error), (status = 401, description = "No valid token", body = Error), (status = 403, description = "The token's scope does not allow this", body = Error), (status = 404, description = "Not found", body = Error), (status = 415, description = "The body was not sent as JSON", body = Error),
    ))]
pub(crate) async fn recover(
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Recover>,
) -> Result<Json<Recovered>, ApiError> {
    let id = endpoint_id(&id)?;
    let endpoint = app
        .store
        .endpoint(id)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))?;
    if !endpoint.enabled {
        return Err(ApiError::invalid(
            "the endpoint is disabled: enable it (PATCH with enabled: true and recover_since) to recover",
        ));
    }
    let recovery = app.store.recover(id, body.since, Timestamp::now()).await?;
    app.delivery.wake();
    tracing::info!(endpoint = %id, recovered = recovery.resent, "recovering deliveries");
    Ok(Json(Recovered {
        recovered: recovery.resent,
        resent_before: recovery.resent_before.to_string(),
    }))
}
