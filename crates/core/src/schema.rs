//! Helpers for the hand-written OpenAPI / JSON Schema fragments of billhook's primitive types.

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};

/// A `type: string` schema with an optional well-known format and a description.
pub fn string_schema(format: Option<KnownFormat>, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(format.map(SchemaFormat::KnownFormat))
        .description(Some(description))
        .into()
}

/// The JSON Schema (draft 2020-12) of one canonical event type: the shared envelope with `type`
/// pinned to the type's name and `data` to the snapshot(s) it carries. Every referenced schema is
/// embedded under `$defs`, so the document stands alone.
pub fn event_schema(event_type: crate::event::EventType) -> serde_json::Value {
    use crate::entity::SubjectKind;
    use serde_json::json;

    let defs = catalog_definitions();
    let snapshot = |kind: &SubjectKind| match kind {
        SubjectKind::Invoice => "InvoiceSnapshot",
        SubjectKind::Payment => "PaymentSnapshot",
        SubjectKind::Bill => "BillSnapshot",
        SubjectKind::Dispute => "DisputeSnapshot",
        SubjectKind::Biller => "BillerSnapshot",
        SubjectKind::Document => "DocumentSnapshot",
        SubjectKind::NetworkMember => "NetworkMemberSnapshot",
    };
    let kinds = event_type.subject_kinds();
    let data = if let [only] = kinds {
        json!({ "$ref": format!("#/$defs/{}", snapshot(only)) })
    } else {
        json!({ "oneOf": kinds.iter().map(|k| json!({ "$ref": format!("#/$defs/{}", snapshot(k)) })).collect::<Vec<_>>() })
    };
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": event_type.as_str(),
        "description": event_type.description(),
        "$ref": "#/$defs/CanonicalEvent",
        "properties": {
            "type": { "const": event_type.as_str() },
            "schema_version": { "const": crate::event::SCHEMA_VERSION },
            "subject": {
                "properties": { "kind": { "enum": kinds.iter().map(SubjectKind::as_str).collect::<Vec<_>>() } }
            },
            "data": data,
        },
        "$defs": defs,
    })
}

/// Every schema of the canonical catalog, keyed by name, with references rewritten from OpenAPI
/// (`#/components/schemas/X`) to JSON Schema (`#/$defs/X`) form.
pub fn catalog_definitions() -> serde_json::Value {
    use utoipa::OpenApi;

    #[derive(OpenApi)]
    #[openapi(components(schemas(crate::event::CanonicalEvent)))]
    struct Catalog;

    let components = Catalog::openapi()
        .components
        .map(|c| c.schemas)
        .unwrap_or_default();
    let mut value = serde_json::to_value(components).unwrap_or_default();
    rewrite_refs(&mut value);
    value
}

fn rewrite_refs(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, entry) in map.iter_mut() {
                if key == "$ref"
                    && let serde_json::Value::String(target) = entry
                    && let Some(name) = target.strip_prefix("#/components/schemas/")
                {
                    *target = format!("#/$defs/{name}");
                } else {
                    rewrite_refs(entry);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;

    #[test]
    fn every_event_type_has_a_self_contained_schema() {
        for event_type in EventType::ALL {
            let schema = event_schema(*event_type);
            let defs = schema["$defs"].as_object().unwrap();
            for name in [
                "CanonicalEvent",
                "EventSource",
                "Subject",
                "InvoiceSnapshot",
                "PaymentSnapshot",
                "BillerSnapshot",
                "Timestamp",
                "Amount",
            ] {
                assert!(defs.contains_key(name), "{name} missing from {event_type}");
            }
            let text = schema.to_string();
            assert!(
                !text.contains("#/components/"),
                "{event_type}: unrewritten reference"
            );
            for target in text.split("\"#/$defs/").skip(1) {
                let name = &target[..target.find('"').unwrap()];
                assert!(
                    defs.contains_key(name),
                    "{event_type}: dangling reference to {name}"
                );
            }
        }
        let status = event_schema(EventType::InvoiceStatusChanged);
        assert_eq!(
            status["properties"]["data"]["oneOf"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
}
