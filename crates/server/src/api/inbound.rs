//! `GET /v1/inbound[/{id}]` and reprocessing of quarantined requests.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use billhook_core::event::Reception;
use billhook_core::ids::{EventId, InboundId};
use billhook_core::time::Timestamp;
use billhook_providers::InboundRequest;
use billhook_store::{
    InboundQuery, InboundRecord, InboundStatus, InboundSummary, RecordedError, Reprocess,
    ReprocessOutcome,
};
use serde::{Deserialize, Serialize};

use super::{ApiQuery, Page, page_limit, parse_cursor};
use crate::App;
use crate::api::ApiPath;
#[allow(unused_imports, reason = "named in the OpenAPI attributes")]
use crate::error::ErrorBody as Error;
use crate::error::{ApiError, ErrorCode};
use crate::ingest::canonical_events;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// `processed`, `quarantined` or `duplicate`.
    status: Option<String>,
    /// Only requests to this source.
    source: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Why a request could not be normalized.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = RecordedError)]
pub(crate) struct ErrorView {
    code: String,
    message: String,
}

impl From<ApiError> for ErrorView {
    fn from(error: ApiError) -> Self {
        Self {
            code: error.code.as_str().to_owned(),
            message: error.message,
        }
    }
}

impl From<RecordedError> for ErrorView {
    fn from(error: RecordedError) -> Self {
        Self {
            code: error.code,
            message: error.message,
        }
    }
}

/// A stored request, without its headers and body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = InboundSummary)]
pub(crate) struct InboundSummaryView {
    id: InboundId,
    source: String,
    provider: String,
    received_at: Timestamp,
    /// `processed`, `quarantined` or `duplicate`.
    status: &'static str,
    provider_event: Option<String>,
    provider_event_id: Option<String>,
    verification: String,
    body_size: Option<u64>,
    error: Option<ErrorView>,
    duplicate_of: Option<InboundId>,
}

impl From<InboundSummary> for InboundSummaryView {
    fn from(s: InboundSummary) -> Self {
        Self {
            id: s.id,
            source: s.source,
            provider: s.provider,
            received_at: s.received_at,
            status: s.status.as_str(),
            provider_event: s.provider_event,
            provider_event_id: s.provider_event_id,
            verification: s.verification,
            body_size: s.body_size,
            error: s.error.map(ErrorView::from),
            duplicate_of: s.duplicate_of,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Header)]
pub(crate) struct HeaderView {
    name: String,
    value: String,
}

/// A stored request as the API shows it. The body is text when it is UTF-8 (exactly the bytes
/// received) and base64 otherwise.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Inbound)]
pub(crate) struct InboundView {
    id: InboundId,
    source: String,
    provider: String,
    received_at: Timestamp,
    status: &'static str,
    provider_event: Option<String>,
    provider_event_id: Option<String>,
    dedup_key: String,
    verification: String,
    remote_addr: Option<String>,
    headers: Vec<HeaderView>,
    body: Option<String>,
    body_base64: Option<String>,
    body_pruned: bool,
    error: Option<ErrorView>,
    duplicate_of: Option<InboundId>,
    events: Vec<EventId>,
}

impl From<InboundRecord> for InboundView {
    fn from(record: InboundRecord) -> Self {
        let (body, body_base64) = match &record.body {
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => (Some(text.to_owned()), None),
                Err(_) => (None, Some(BASE64.encode(bytes))),
            },
            None => (None, None),
        };
        Self {
            id: record.id,
            source: record.source,
            provider: record.provider,
            received_at: record.received_at,
            status: record.status.as_str(),
            provider_event: record.provider_event,
            provider_event_id: record.provider_event_id,
            dedup_key: record.dedup_key,
            verification: record.verification,
            remote_addr: record.remote_addr,
            headers: record
                .headers
                .into_iter()
                .map(|(name, value)| HeaderView { name, value })
                .collect(),
            body_pruned: record.body.is_none(),
            body,
            body_base64,
            error: record.error.map(ErrorView::from),
            duplicate_of: record.duplicate_of,
            events: record.event_ids,
        }
    }
}

/// Stored provider requests, newest first, without bodies.
#[utoipa::path(get, path = "/v1/inbound", tag = "inbound", params(ListParams),
    responses(
        (status = 200, description = "A page of requests", body = Page<InboundSummaryView>),
        (status = 400, description = "A parameter or the body is invalid", body = Error), (status = 401, description = "No valid token", body = Error),
    ))]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<InboundSummaryView>>, ApiError> {
    let status = params
        .status
        .as_deref()
        .map(|s| {
            InboundStatus::parse(s).ok_or_else(|| {
                ApiError::invalid(format!(
                    "status must be processed, quarantined or duplicate, not `{s}`"
                ))
            })
        })
        .transpose()?;
    let page = app
        .store
        .inbound_list(InboundQuery {
            status,
            source: params.source,
            cursor: parse_cursor(params.cursor.as_deref())?,
            limit: page_limit(params.limit)?,
            oldest_first: false,
        })
        .await?;
    Ok(Json(Page {
        data: page
            .items
            .into_iter()
            .map(InboundSummaryView::from)
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One stored request: kept headers (credentials redacted), the body, the verification outcome
/// and the error, if any.
#[utoipa::path(get, path = "/v1/inbound/{id}", tag = "inbound",
    params(("id" = String, Path, description = "The request's id (`inb_…`)")),
    responses(
        (status = 200, description = "The request", body = InboundView),
        (status = 401, description = "No valid token", body = Error), (status = 404, description = "Not found", body = Error),
    ))]
pub(crate) async fn show(
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<InboundView>, ApiError> {
    let id: InboundId = id
        .parse()
        .map_err(|_| ApiError::not_found("inbound request"))?;
    let record = app
        .store
        .inbound(id)
        .await?
        .ok_or_else(|| ApiError::not_found("inbound request"))?;
    Ok(Json(InboundView::from(record)))
}

/// What reprocessing one request did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Reprocessed)]
pub(crate) struct ReprocessView {
    id: InboundId,
    /// `processed`, `quarantined`, `duplicate`, `not_quarantined`, or (reprocessing in bulk)
    /// `skipped` when the request cannot be reprocessed now, `failed` when the database
    /// refused it (`error` says why for both), and `not_attempted` after the database became
    /// unavailable.
    outcome: &'static str,
    events: Vec<EventId>,
    error: Option<ErrorView>,
    duplicate_of: Option<InboundId>,
}

/// Runs a quarantined request through today's provider code.
#[utoipa::path(post, path = "/v1/inbound/{id}/reprocess", tag = "inbound",
    params(("id" = String, Path, description = "The request's id (`inb_…`)")),
    responses(
        (status = 200, description = "What reprocessing did", body = ReprocessView),
        (status = 400, description = "A parameter or the body is invalid", body = Error), (status = 401, description = "No valid token", body = Error), (status = 403, description = "The token's scope does not allow this", body = Error), (status = 404, description = "Not found", body = Error),
    ))]
pub(crate) async fn reprocess_one(
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ReprocessView>, ApiError> {
    let id: InboundId = id
        .parse()
        .map_err(|_| ApiError::not_found("inbound request"))?;
    let record = app
        .store
        .inbound(id)
        .await?
        .ok_or_else(|| ApiError::not_found("inbound request"))?;
    Ok(Json(reprocess(&app, record).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReprocessAllParams {
    /// Only requests to this source.
    source: Option<String>,
    /// The most requests to reprocess, 1 to 500 (default 500).
    #[schema(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous call: go on with the requests after those it worked
    /// through, so that requests that keep failing do not hide the ones behind them.
    cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = ReprocessedAll)]
pub(crate) struct ReprocessAllView {
    /// Requests tried: every result but those `not_attempted`.
    attempted: usize,
    processed: usize,
    still_quarantined: usize,
    duplicates: usize,
    /// Requests that cannot be reprocessed now (their source is no longer configured); the
    /// others are reprocessed all the same.
    skipped: usize,
    /// Requests whose reprocessing failed in the database; `error` says how. With the
    /// database unavailable the rest are `not_attempted`.
    failed: usize,
    results: Vec<ReprocessView>,
    /// Set when more quarantined requests follow those worked through: pass it as `cursor` to
    /// go on with them. When the database became unavailable midway it points before the
    /// request that met it; absent then only if that was the first after the call's `cursor`.
    next_cursor: Option<String>,
}

/// Reprocesses up to `limit` quarantined requests, oldest first. A request that cannot be
/// reprocessed now is reported as `skipped` and the rest go on.
#[utoipa::path(post, path = "/v1/inbound/reprocess", tag = "inbound",
    request_body(content = Option<ReprocessAllParams>, description = "Optional: a source and a limit"),
    responses(
        (status = 200, description = "What reprocessing did", body = ReprocessAllView),
        (status = 400, description = "A parameter or the body is invalid", body = Error), (status = 401, description = "No valid token", body = Error), (status = 403, description = "The token's scope does not allow this", body = Error),
    ))]
pub(crate) async fn reprocess_all(
    State(app): State<Arc<App>>,
    body: bytes::Bytes,
) -> Result<Json<ReprocessAllView>, ApiError> {
    // An empty body means "everything quarantined, any source".
    let params: ReprocessAllParams = super::optional_body(&body)?;
    let limit = page_limit(params.limit.or(Some(super::MAX_LIMIT)))?;
    // A source that is not configured could only answer an empty success (a misspelt name) or
    // requests that would all be skipped (a removed source).
    super::endpoints::check_sources(&app, Some(params.source.as_slice()))?;
    let cursor: Option<InboundId> = parse_cursor(params.cursor.as_deref())?;
    // Oldest first: those have waited longest, and taking the newest would leave older requests
    // that keep failing in front of nothing but themselves. The cursor takes a caller past
    // those that keep failing.
    let oldest = app
        .store
        .inbound_list(InboundQuery {
            status: Some(InboundStatus::Quarantined),
            source: params.source,
            cursor,
            oldest_first: true,
            limit,
        })
        .await?;
    let mut results = Vec::new();
    let mut unavailable = false;
    // Where the next call goes on from: after the last request tried.
    let mut worked_through = cursor;
    for id in oldest.items.into_iter().map(|summary| summary.id) {
        let view = |outcome, error: Option<ErrorView>| ReprocessView {
            id,
            outcome,
            events: Vec::new(),
            error,
            duplicate_of: None,
        };
        if unavailable {
            results.push(view("not_attempted", None));
            continue;
        }
        // One request the database refuses must not stop every later call at the same request
        // (oldest first), nor hide what was done before it.
        let record = match app.store.inbound(id).await.map_err(ApiError::from) {
            Ok(Some(record)) => record,
            Ok(None) => continue,
            Err(error) => {
                unavailable = error.code == ErrorCode::StorageUnavailable;
                results.push(view("failed", Some(ErrorView::from(error))));
                continue;
            }
        };
        results.push(match reprocessable(&app, &record) {
            Err(message) => view("skipped", Some(ApiError::invalid(message).into())),
            Ok(_) => match reprocess(&app, record).await {
                Ok(done) => done,
                Err(error) => {
                    unavailable = error.code == ErrorCode::StorageUnavailable;
                    view("failed", Some(ErrorView::from(error)))
                }
            },
        });
        // A request the database was unavailable for is tried again by the next call.
        if !unavailable {
            worked_through = Some(id);
        }
    }
    Ok(Json(ReprocessAllView {
        attempted: results
            .iter()
            .filter(|r| r.outcome != "not_attempted")
            .count(),
        processed: results.iter().filter(|r| r.outcome == "processed").count(),
        still_quarantined: results
            .iter()
            .filter(|r| r.outcome == "quarantined")
            .count(),
        duplicates: results.iter().filter(|r| r.outcome == "duplicate").count(),
        skipped: results.iter().filter(|r| r.outcome == "skipped").count(),
        failed: results.iter().filter(|r| r.outcome == "failed").count(),
        next_cursor: (unavailable || oldest.next_cursor.is_some())
            .then(|| worked_through.map(|id| id.to_string()))
            .flatten(),
        results,
    }))
}

/// The source and body to reprocess a stored request with, or why it cannot be reprocessed now.
fn reprocessable<'a>(
    app: &'a App,
    record: &InboundRecord,
) -> Result<(&'a crate::config::Source, bytes::Bytes), String> {
    let source = app.settings.sources.get(&record.source).ok_or_else(|| {
        format!(
            "source `{}` is no longer configured; add it back to reprocess its requests",
            record.source
        )
    })?;
    // It was verified the first provider's way: another's code would read it as what it is
    // not, unverified (reprocessing does not verify again).
    let provider = source.spec.provider.name();
    if provider != record.provider {
        return Err(format!(
            "source `{}` is now a {provider} source, and this request came from {}; configure it as {} again to reprocess it",
            record.source, record.provider, record.provider
        ));
    }
    let body = record
        .body
        .clone()
        .ok_or_else(|| "the request's body is no longer stored".to_owned())?;
    Ok((source, body))
}

/// Runs today's provider code over a stored request. It was verified when it arrived, so it is
/// not verified again (the stored signature is redacted anyway).
async fn reprocess(app: &App, record: InboundRecord) -> Result<ReprocessView, ApiError> {
    let id = record.id;
    let (source, body) = reprocessable(app, &record).map_err(ApiError::invalid)?;
    let mut headers = http::HeaderMap::new();
    for (name, value) in &record.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    let request = InboundRequest {
        headers: &headers,
        body: &body,
        remote_ip: None,
        path_token: None,
        received_at: record.received_at,
    };
    let outcome = match source.spec.normalize(&request) {
        Ok(normalized) => {
            let reception = Reception {
                inbound_id: id,
                received_at: record.received_at,
                source_name: &source.spec.name,
                provider: source.spec.provider.name(),
                provider_event: &normalized.provider_event,
                provider_event_id: normalized.provider_event_id.as_deref(),
                sandbox: normalized.sandbox,
            };
            let canonical = canonical_events(&normalized, &reception, source);
            let fan_out: Vec<_> = crate::delivery::fan_out_events(&canonical.events)
                .into_iter()
                .map(|(event, _)| event)
                .collect();
            let deliveries = app
                .delivery
                .plan(&source.spec.name, &fan_out, id, Timestamp::now());
            Reprocess::Normalized {
                provider_event: normalized.provider_event.clone(),
                provider_event_id: normalized.provider_event_id.clone(),
                dedup_key: normalized.dedup_key.clone(),
                body_dedup_key: normalized.body_dedup_key.clone(),
                events: canonical.events,
                deliveries,
                facts: canonical.facts,
                concluder: Some(app.announcer.clone()),
                dedup_expires_at: Timestamp::now().add(app.settings.ingest.dedup_window.0),
            }
        }
        Err(error) => Reprocess::StillFailing(RecordedError {
            code: error.code().to_owned(),
            message: error.to_string(),
        }),
    };
    let failure = match &outcome {
        Reprocess::StillFailing(error) => Some(error.clone()),
        Reprocess::Normalized { .. } => None,
    };
    let view = match app.store.reprocess(id, outcome).await? {
        ReprocessOutcome::Processed {
            event_ids,
            concluded,
        } => {
            if !concluded.is_empty() {
                app.metrics.concluded_events(&concluded);
            }
            app.delivery.wake();
            ReprocessView {
                id,
                outcome: "processed",
                events: event_ids,
                error: None,
                duplicate_of: None,
            }
        }
        ReprocessOutcome::StillQuarantined => ReprocessView {
            id,
            outcome: "quarantined",
            events: Vec::new(),
            error: failure.map(ErrorView::from),
            duplicate_of: None,
        },
        ReprocessOutcome::DuplicateOf(original) => ReprocessView {
            id,
            outcome: "duplicate",
            events: Vec::new(),
            error: None,
            duplicate_of: Some(original),
        },
        ReprocessOutcome::NotQuarantined => ReprocessView {
            id,
            outcome: "not_quarantined",
            events: record.event_ids,
            error: None,
            duplicate_of: record.duplicate_of,
        },
    };
    tracing::info!(inbound = %id, outcome = view.outcome, "reprocessed a stored request");
    Ok(view)
}
