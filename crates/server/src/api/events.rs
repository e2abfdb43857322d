//! `GET /v1/events` and `GET /v1/events/{id}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use billhook_core::event::EventType;
use billhook_core::ids::{DeliveryId, EndpointId, EventId};
use billhook_core::time::Timestamp;
use billhook_store::{AttemptRecord, DeliveryRecord, DeliveryStatus, EventQuery, NewDelivery};
use http::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::endpoints::AttemptView;
use super::inbound::InboundView;
use super::{ApiQuery, Page, page_limit, parse_cursor, raw_json, raw_page};
#[allow(unused_imports, reason = "named in the OpenAPI attributes")]
use crate::error::ErrorBody as Error;
#[allow(unused_imports, reason = "named in the OpenAPI attributes")]
use billhook_core::event::CanonicalEvent;

use crate::App;
use crate::api::ApiPath;
use crate::error::ApiError;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Only this canonical type (`invoice.paid`).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    event_type: Option<String>,
    /// Only events from this source.
    source: Option<String>,
    /// Only events about this provider id (`inv_…`, `pay_…`).
    subject: Option<String>,
    /// Only events received at or after this time (RFC 3339).
    since: Option<String>,
    /// Only events received before this time (RFC 3339).
    until: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// An optional RFC 3339 query parameter.
pub(crate) fn time_param(name: &str, value: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| {
            Timestamp::parse_rfc3339(v).map_err(|_| {
                ApiError::invalid(format!("{name} must be an RFC 3339 time, not `{v}`"))
            })
        })
        .transpose()
}

/// Canonical events, newest first, exactly as delivered.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(ListParams),
    responses(
        (status = 200, description = "A page of events", body = Page<CanonicalEvent>),
        (status = 400, description = "A parameter is invalid", body = Error),
        (status = 401, description = "No valid token", body = Error),
    ))]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Response, ApiError> {
    if let Some(event_type) = &params.event_type {
        event_type
            .parse::<EventType>()
            .map_err(|e| ApiError::invalid(e.to_string()))?;
    }
    let since = time_param("since", params.since.as_deref())?;
    let until = time_param("until", params.until.as_deref())?;
    let cursor: Option<EventId> = parse_cursor(params.cursor.as_deref())?;
    // The cursor continues a listing; `until` bounds it; the earlier of the two applies.
    let before = match (cursor, until.map(EventId::lower_bound)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let page = app
        .store
        .events(EventQuery {
            event_type: params.event_type,
            source: params.source,
            subject: params.subject,
            before,
            after: since.map(EventId::lower_bound),
            limit: page_limit(params.limit)?,
        })
        .await?;
    Ok(raw_page(
        page.items.iter().map(|e| &e.payload[..]),
        page.next_cursor.as_deref(),
    ))
}

/// A delivery of an event to one endpoint.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct DeliverySummary {
    id: DeliveryId,
    endpoint_id: EndpointId,
    /// The `webhook-id` the endpoint receives: the event id, or the stored request's for raw
    /// endpoints.
    message_id: String,
    event_type: String,
    /// `pending`, `failed` (retrying), `delivered`, `dead`, `held` or `cancelled`.
    status: &'static str,
    attempt_count: u32,
    next_attempt_at: Option<Timestamp>,
    last_status_code: Option<u16>,
    last_error: Option<String>,
    created_at: Timestamp,
    updated_at: Timestamp,
}

/// A delivery of an event, with its attempts oldest first.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Delivery)]
pub(crate) struct DeliveryView {
    #[serde(flatten)]
    delivery: DeliverySummary,
    attempts: Vec<AttemptView>,
}

impl DeliveryView {
    fn new(delivery: DeliveryRecord, attempts: Vec<AttemptRecord>) -> Self {
        Self {
            delivery: DeliverySummary::from(delivery),
            attempts: attempts.into_iter().map(AttemptView::from).collect(),
        }
    }
}

impl From<DeliveryRecord> for DeliverySummary {
    fn from(delivery: DeliveryRecord) -> Self {
        let waiting = matches!(
            delivery.status,
            DeliveryStatus::Pending | DeliveryStatus::Failed
        );
        Self {
            id: delivery.id,
            endpoint_id: delivery.endpoint_id,
            message_id: delivery.message_id,
            event_type: delivery.event_type,
            status: delivery.status.as_str(),
            attempt_count: delivery.attempts,
            next_attempt_at: waiting.then_some(delivery.next_attempt_at),
            last_status_code: delivery.last_status_code,
            last_error: delivery.last_error,
            created_at: delivery.created_at,
            updated_at: delivery.updated_at,
        }
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct EventDetail {
    #[schema(value_type = CanonicalEvent)]
    event: Box<RawValue>,
    /// The provider's request it came from (absent once retention removed it).
    inbound: Option<InboundView>,
    deliveries: Vec<DeliveryView>,
}

/// One event with the provider request it came from and every delivery with its attempts.
#[utoipa::path(get, path = "/v1/events/{id}", tag = "events",
    params(("id" = String, Path, description = "The event's id (`evt_…`)")),
    responses(
        (status = 200, description = "The event", body = EventDetail),
        (status = 401, description = "No valid token", body = Error),
        (status = 404, description = "No such event", body = Error),
    ))]
pub(crate) async fn show(
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id: EventId = id.parse().map_err(|_| ApiError::not_found("event"))?;
    let event = app
        .store
        .event(id)
        .await?
        .ok_or_else(|| ApiError::not_found("event"))?;
    let inbound = app.store.inbound(event.inbound_id).await?;
    let deliveries = app.store.deliveries_of_event(id, event.inbound_id).await?;
    let payload = std::str::from_utf8(&event.payload).map_err(|e| ApiError::internal(&e))?;
    let raw: Box<RawValue> = serde_json::from_str(payload).map_err(|e| ApiError::internal(&e))?;
    let detail = EventDetail {
        event: raw,
        inbound: inbound.map(InboundView::from),
        deliveries: deliveries
            .into_iter()
            .map(|(delivery, attempts)| DeliveryView::new(delivery, attempts))
            .collect(),
    };
    let body = serde_json::to_vec(&detail).map_err(|e| ApiError::internal(&e))?;
    Ok(raw_json(StatusCode::OK, body))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Redeliver {
    /// Only to this endpoint; it gets a delivery even if it never had one.
    endpoint_id: Option<String>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Redelivered {
    /// The deliveries that will be attempted again (or anew).
    deliveries: Vec<DeliveryId>,
}

/// Sends an event again to the endpoints that had it (or to one endpoint).
#[utoipa::path(post, path = "/v1/events/{id}/redeliver", tag = "events",
    params(("id" = String, Path, description = "The event's id (`evt_…`)")),
    request_body(content = Option<Redeliver>, description = "Optional: one endpoint to deliver to"),
    responses(
        (status = 202, description = "Deliveries scheduled", body = Redelivered),
        (status = 400, description = "The body or endpoint is invalid", body = Error),
        (status = 401, description = "No valid token", body = Error),
        (status = 403, description = "The token's scope is read", body = Error),
        (status = 404, description = "No such event", body = Error),
    ))]
pub(crate) async fn redeliver(
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    body: bytes::Bytes,
) -> Result<(StatusCode, Json<Redelivered>), ApiError> {
    let id: EventId = id.parse().map_err(|_| ApiError::not_found("event"))?;
    let body: Redeliver = super::optional_body(&body)?;
    let event = app
        .store
        .event(id)
        .await?
        .ok_or_else(|| ApiError::not_found("event"))?;
    let endpoint = match &body.endpoint_id {
        Some(text) => {
            let endpoint_id: EndpointId = text
                .parse()
                .map_err(|_| ApiError::invalid(format!("`{text}` is not an endpoint id")))?;
            let record = app
                .store
                .endpoint(endpoint_id)
                .await?
                .ok_or_else(|| ApiError::invalid(format!("no endpoint `{text}`")))?;
            if !record.enabled {
                return Err(ApiError::invalid(format!(
                    "endpoint `{text}` is disabled: enable it (with recover_since to send what \
                     it missed) before redelivering to it"
                )));
            }
            Some(record)
        }
        None => None,
    };
    let now = Timestamp::now();
    let mut create = Vec::new();
    if let Some(endpoint) = &endpoint {
        let existing = app.store.deliveries_of_event(id, event.inbound_id).await?;
        if !existing.iter().any(|(d, _)| d.endpoint_id == endpoint.id) {
            let raw = endpoint.format == "raw";
            // A raw endpoint is sent the provider's request behind the event. An announcement
            // made after retention removed that request has none: refused here, rather than
            // left as a delivery that can only die.
            if raw && app.store.inbound(event.inbound_id).await?.is_none() {
                return Err(ApiError::invalid(format!(
                    "endpoint `{}` takes the provider's request as sent, and the request behind \
                     event `{id}` was removed by retention; redeliver it to an endpoint in the \
                     canonical format",
                    endpoint.id
                )));
            }
            create.push(NewDelivery {
                id: DeliveryId::new_at(now),
                endpoint_id: endpoint.id,
                message_id: if raw {
                    event.inbound_id.to_string()
                } else {
                    id.to_string()
                },
                event_id: (!raw).then_some(id),
                event_type: event
                    .event_type
                    .parse::<EventType>()
                    .map_err(|e| ApiError::internal(&e))?
                    .as_str(),
                status: DeliveryStatus::Pending,
                next_attempt_at: now,
                lease: None,
            });
        }
    }
    let deliveries = app
        .store
        .redeliver(id, endpoint.map(|e| e.id), create, now)
        .await?;
    app.delivery.wake();
    tracing::info!(event = %id, count = deliveries.len(), "redelivering an event");
    Ok((StatusCode::ACCEPTED, Json(Redelivered { deliveries })))
}
