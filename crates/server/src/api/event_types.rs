//! `GET /v1/event-types[/{name}]`: the canonical catalog with a JSON Schema per type.

use axum::Json;
use axum::extract::Path;
use billhook_core::entity::SubjectKind;
use billhook_core::event::{EventType, SCHEMA_VERSION};
use billhook_core::schema::event_schema;
use serde::Serialize;

use crate::error::ApiError;

#[derive(Debug, Serialize)]
pub(crate) struct EventTypeView {
    name: &'static str,
    description: &'static str,
    subject_kinds: Vec<&'static str>,
    schema_version: u32,
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

#[derive(Debug, Serialize)]
pub(crate) struct Catalog {
    data: Vec<EventTypeView>,
}

pub(crate) async fn list() -> Json<Catalog> {
    Json(Catalog {
        data: EventType::ALL.iter().copied().map(view).collect(),
    })
}

pub(crate) async fn show(Path(name): Path<String>) -> Result<Json<EventTypeView>, ApiError> {
    let event_type: EventType = name
        .parse()
        .map_err(|_| ApiError::not_found("event type"))?;
    Ok(Json(view(event_type)))
}
