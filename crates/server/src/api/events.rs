//! `GET /v1/events` and `GET /v1/events/{id}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use billhook_core::ids::EventId;
use billhook_store::EventQuery;
use http::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::inbound::InboundView;
use super::{ApiQuery, page_limit, parse_cursor, raw_json, raw_page};
use crate::App;
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    #[serde(rename = "type")]
    event_type: Option<String>,
    source: Option<String>,
    subject: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

pub(crate) async fn list(
    State(app): State<Arc<App>>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Response, ApiError> {
    if let Some(event_type) = &params.event_type {
        event_type
            .parse::<billhook_core::event::EventType>()
            .map_err(|e| ApiError::invalid(e.to_string()))?;
    }
    let page = app
        .store
        .events(EventQuery {
            event_type: params.event_type,
            source: params.source,
            subject: params.subject,
            before: parse_cursor(params.cursor.as_deref())?,
            limit: page_limit(params.limit)?,
        })
        .await?;
    Ok(raw_page(
        page.items.iter().map(|e| &e.payload[..]),
        page.next_cursor.as_deref(),
    ))
}

#[derive(serde::Serialize)]
struct EventDetail<'a> {
    event: &'a RawValue,
    inbound: Option<InboundView>,
    deliveries: Vec<()>,
}

pub(crate) async fn show(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: EventId = id.parse().map_err(|_| ApiError::not_found("event"))?;
    let event = app
        .store
        .event(id)
        .await?
        .ok_or_else(|| ApiError::not_found("event"))?;
    let inbound = app.store.inbound(event.inbound_id).await?;
    let payload = std::str::from_utf8(&event.payload).map_err(|e| ApiError::internal(&e))?;
    let raw: &RawValue = serde_json::from_str(payload).map_err(|e| ApiError::internal(&e))?;
    let detail = EventDetail {
        event: raw,
        inbound: inbound.map(InboundView::from),
        deliveries: Vec::new(),
    };
    let body = serde_json::to_vec(&detail).map_err(|e| ApiError::internal(&e))?;
    Ok(raw_json(StatusCode::OK, body))
}
