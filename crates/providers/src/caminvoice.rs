//! CamInvoice: Cambodia's e-invoicing network, run by the General Department of Taxation.
//!
//! - Verification: not documented by CamInvoice; a source is configured with a secret path
//!   token, a static header, HTTP Basic or an HS256 JWT, plus an optional IP allow-list.
//! - Body: `{type, document_id, endpoint_id, status?}` where `endpoint_id` is the member's
//!   CamInvoice id (`KHUID…`) and documents are UBL 2.1 invoices identified by UUID.
//! - Dedup: `(type, document_id, status)`; `(type, endpoint_id)` for `ENTITY.REVOKED`.
//! - Statuses: `PENDING, ACKNOWLEDGED, IN_PROCESS, UNDER_QUERY, CONDITIONALLY_ACCEPTED, ACCEPTED,
//!   REJECTED, PAID`, and `SENT`/`DELIVERED` in detail responses; unknown ones are kept.

use billhook_core::entity::{
    DocumentSnapshot, EntityData, NetworkMemberSnapshot, SubjectKind, status_word,
};
use billhook_core::event::{EventDraft, EventType};
use billhook_core::ledger::StatusRank;
use serde::Deserialize;

use crate::auth::AuthKind;
use crate::checks::Warnings;
use crate::emulate::{self, EmulateError, EmulatedEvent, GenerateOptions, Generated, set};
use crate::json::parse_body;
use crate::registry::Provider;
use crate::{InboundRequest, NormalizeError, Normalized};

/// The CamInvoice provider.
pub struct CamInvoice;

const NAME: &str = "caminvoice";

const KNOWN_STATUSES: &[&str] = &[
    "PENDING",
    "ACKNOWLEDGED",
    "IN_PROCESS",
    "UNDER_QUERY",
    "CONDITIONALLY_ACCEPTED",
    "ACCEPTED",
    "REJECTED",
    "PAID",
    "SENT",
    "DELIVERED",
];

impl Provider for CamInvoice {
    fn name(&self) -> &'static str {
        NAME
    }

    fn title(&self) -> &'static str {
        "CamInvoice e-invoicing network (Cambodia)"
    }

    fn auth_kinds(&self) -> &'static [AuthKind] {
        &[
            AuthKind::PathToken,
            AuthKind::Header,
            AuthKind::Basic,
            AuthKind::JwtHs256,
        ]
    }

    fn normalize(&self, request: &InboundRequest<'_>) -> Result<Normalized, NormalizeError> {
        let body: Body = parse_body(request.body, NAME)?;
        let mut warnings = Warnings::default();
        let shape = |detail: &str| NormalizeError::Shape {
            provider: NAME,
            detail: detail.to_owned(),
        };
        if let Some(status) = &body.status
            && !KNOWN_STATUSES.contains(&status.to_ascii_uppercase().as_str())
        {
            warnings.unknown_status(status, "status");
        }
        let document =
            |body: &Body, warnings: &mut Warnings| -> Result<DocumentSnapshot, NormalizeError> {
                let document_id = body
                    .document_id
                    .clone()
                    .ok_or_else(|| shape("document_id is missing"))?;
                if !is_uuid(&document_id) {
                    warnings.push(
                        "invalid_document_id",
                        "document_id",
                        format!("`{document_id}` is not a UUID"),
                    );
                }
                Ok(DocumentSnapshot {
                    document_id,
                    member_id: body.endpoint_id.clone(),
                    status: body.status.as_deref().map(status_word),
                    provider_status: body.status.clone(),
                })
            };
        let (event, dedup_key) = match body.kind.as_str() {
            "DOCUMENT.DELIVERED" | "DOCUMENT.RECEIVED" | "DOCUMENT.STATUS_UPDATED" => {
                let snapshot = document(&body, &mut warnings)?;
                let event_type = match body.kind.as_str() {
                    "DOCUMENT.DELIVERED" => EventType::DocumentDelivered,
                    "DOCUMENT.RECEIVED" => EventType::DocumentReceived,
                    _ => {
                        if snapshot.status.is_none() {
                            return Err(shape("status is missing from DOCUMENT.STATUS_UPDATED"));
                        }
                        EventType::InvoiceStatusChanged
                    }
                };
                let key = format!(
                    "{}:{}:{}",
                    body.kind,
                    snapshot.document_id,
                    body.status.as_deref().unwrap_or("").to_ascii_uppercase()
                );
                (
                    EventDraft::new(event_type, EntityData::Document(snapshot), None),
                    key,
                )
            }
            "ENTITY.REVOKED" => {
                let member_id = body
                    .endpoint_id
                    .clone()
                    .ok_or_else(|| shape("endpoint_id is missing"))?;
                let key = format!("{}:{member_id}", body.kind);
                let snapshot = NetworkMemberSnapshot {
                    member_id,
                    status: "revoked".to_owned(),
                };
                (
                    EventDraft::new(
                        EventType::NetworkMemberRevoked,
                        EntityData::NetworkMember(snapshot),
                        None,
                    ),
                    key,
                )
            }
            _ => {
                return Err(NormalizeError::UnsupportedEvent {
                    provider: NAME,
                    event: body.kind,
                });
            }
        };
        Ok(Normalized {
            provider_event: body.kind,
            provider_event_id: None,
            dedup_key,
            body_dedup_key: None,
            sandbox: false,
            events: vec![event],
            warnings: warnings.into_vec(),
        })
    }

    /// Documents: sent < delivered < pending < acknowledged < in_process < under_query <
    /// conditionally_accepted < accepted < paid (settles) < rejected (final).
    fn status_rank(&self, kind: SubjectKind, status: &str) -> Option<StatusRank> {
        if kind != SubjectKind::Document {
            return None;
        }
        Some(match status {
            "sent" => StatusRank::new(-2),
            "delivered" => StatusRank::new(-1),
            "pending" => StatusRank::new(0),
            "acknowledged" => StatusRank::new(1),
            "in_process" => StatusRank::new(2),
            "under_query" => StatusRank::new(3),
            "conditionally_accepted" => StatusRank::new(4),
            "accepted" => StatusRank::new(5),
            "paid" => StatusRank::settling(6),
            "rejected" => StatusRank::new(7),
            _ => return None,
        })
    }

    fn emulated_events(&self) -> &'static [EmulatedEvent] {
        EVENTS
    }

    fn generate(
        &self,
        event: &str,
        options: &mut GenerateOptions,
    ) -> Result<Generated, EmulateError> {
        generate(event, options)
    }
}

#[derive(Deserialize)]
struct Body {
    #[serde(rename = "type")]
    kind: String,
    document_id: Option<String>,
    endpoint_id: Option<String>,
    status: Option<String>,
}

/// `8-4-4-4-12` hexadecimal digits.
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

static EVENTS: &[EmulatedEvent] = &[
    EmulatedEvent {
        name: "DOCUMENT.DELIVERED",
        variants: &[],
        description: "A document you sent was delivered to your customer.",
    },
    EmulatedEvent {
        name: "DOCUMENT.RECEIVED",
        variants: &[],
        description: "A document addressed to you was received and validated.",
    },
    EmulatedEvent {
        name: "DOCUMENT.STATUS_UPDATED",
        variants: &[
            "ACCEPTED",
            "PAID",
            "REJECTED",
            "ACKNOWLEDGED",
            "IN_PROCESS",
            "UNDER_QUERY",
            "CONDITIONALLY_ACCEPTED",
            "PENDING",
        ],
        description: "Your customer updated the status of a document you sent.",
    },
    EmulatedEvent {
        name: "ENTITY.REVOKED",
        variants: &[],
        description: "A member was disconnected from the network.",
    },
];

const TEMPLATE_DELIVERED: &str = include_str!("../fixtures/caminvoice/DOCUMENT.DELIVERED.json");
const TEMPLATE_RECEIVED: &str = include_str!("../fixtures/caminvoice/DOCUMENT.RECEIVED.json");
const TEMPLATE_STATUS: &str = include_str!("../fixtures/caminvoice/DOCUMENT.STATUS_UPDATED.json");
const TEMPLATE_REVOKED: &str = include_str!("../fixtures/caminvoice/ENTITY.REVOKED.json");

fn generate(event: &str, options: &mut GenerateOptions) -> Result<Generated, EmulateError> {
    let spec = emulate::find_event(NAME, EVENTS, event)?;
    let variant = options.variant_of(spec)?;
    let mut body = emulate::template(match event {
        "DOCUMENT.DELIVERED" => TEMPLATE_DELIVERED,
        "DOCUMENT.RECEIVED" => TEMPLATE_RECEIVED,
        "DOCUMENT.STATUS_UPDATED" => TEMPLATE_STATUS,
        _ => TEMPLATE_REVOKED,
    });
    if event != "ENTITY.REVOKED" {
        set(&mut body, "document_id", options.rng.uuid_v4());
    }
    set(
        &mut body,
        "endpoint_id",
        format!("KHUID{}", options.rng.chars(b"0123456789", 6)),
    );
    if event == "DOCUMENT.STATUS_UPDATED" {
        set(&mut body, "status", variant);
    }
    Ok(Generated {
        event: event.to_owned(),
        json: body,
        headers: vec![("Content-Type".to_owned(), "application/json".to_owned())],
    })
}
