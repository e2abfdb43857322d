//! `GET /v1/event-types[/{name}]`: the canonical catalog with a JSON Schema per type.

use crate::api::ApiPath;
use axum::Json;
use billhook_core::entity::SubjectKind;
use billhook_core::event::{EventType, SCHEMA_VERSION};
use billhook_core::schema::event_schema;
use serde::Serialize;

use crate::error::ApiError;
#[allow(unused_imports, reason = "named in the OpenAPI attributes")]
use crate::error::ErrorBody as Error;

/// A canonical event type with the JSON Schema (draft 2020-12) of its events.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = EventTypeInfo)]
pub(crate) struct EventTypeView {
    name: &'static str,
    description: &'static str,
    /// The kinds of entity its `data` may describe.
    subject_kinds: Vec<&'static str>,
    schema_version: u32,
    /// A standalone JSON Schema document.
    #[schema(value_type = Object)]
    schema: serde_json::Value,
}

fn view(event_type: EventType) -> EventTypeView {
    EventTypeView {
        name: event_type.as_str(),
        description: event_type.description(),
        subject_kinds: event_type
            .subject_kinds()
            .iter()
            .map(SubjectKind::as_str)
            .collect(),
        schema_version: SCHEMA_VERSION,
        schema: event_schema(event_type),
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Catalog {
    data: Vec<EventTypeView>,
}

/// The canonical event catalog.
#[utoipa::path(get, path = "/v1/event-types", tag = "events",
    responses(
        (status = 200, description = "Every canonical type", body = Catalog),
        (status = 401, description = "No valid token", body = Error),
    ))]
pub(crate) async fn list() -> Json<Catalog> {
    Json(Catalog {
        data: EventType::ALL.iter().copied().map(view).collect(),
    })
}

/// One canonical type.
#[utoipa::path(get, path = "/v1/event-types/{name}", tag = "events",
    params(("name" = String, Path, description = "The type's name (`invoice.paid`)")),
    responses(
        (status = 200, description = "The type", body = EventTypeView),
        (status = 401, description = "No valid token", body = Error), (status = 404, description = "Not found", body = Error),
    ))]
pub(crate) async fn show(ApiPath(name): ApiPath<String>) -> Result<Json<EventTypeView>, ApiError> {
    let event_type: EventType = name
        .parse()
        .map_err(|_| ApiError::not_found("event type"))?;
    Ok(Json(view(event_type)))
}
