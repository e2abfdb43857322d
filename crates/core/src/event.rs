//! The canonical event catalog: one vocabulary for what every provider tells billhook.
//!
//! A [`CanonicalEvent`] is versioned ([`SCHEMA_VERSION`]) and is exactly what a `canonical`
//! endpoint receives. One provider message may yield several (Razorpay `invoice.paid` yields
//! `invoice.paid` and `payment.succeeded`). Providers build [`EventDraft`]s; [`EventDraft::finish`]
//! gives them billhook's id and the reception facts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

use crate::entity::{EntityData, Subject, SubjectKind};
use crate::ids::{EventId, InboundId};
use crate::time::Timestamp;

/// The version of the canonical event shape. Bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

macro_rules! event_types {
    ($( $variant:ident => $name:literal, [$($kind:ident),+], $doc:literal; )*) => {
        /// A canonical event type. The wire name is `noun.verb` (`invoice.paid`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType {
            $( #[doc = $doc] $variant, )*
        }

        impl EventType {
            /// Every canonical type, in catalog order.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant),*];

            pub fn as_str(&self) -> &'static str {
                match self { $(EventType::$variant => $name,)* }
            }

            /// The kinds of entity this type's `data` may describe (`invoice.status_changed`
            /// carries a Bharat Connect invoice or a CamInvoice document).
            pub fn subject_kinds(&self) -> &'static [SubjectKind] {
                match self { $(EventType::$variant => &[$(SubjectKind::$kind),+],)* }
            }

            /// What the type means, for the catalog and the API.
            pub fn description(&self) -> &'static str {
                match self { $(EventType::$variant => $doc,)* }
            }
        }

        impl FromStr for EventType {
            type Err = UnknownEventType;
            fn from_str(text: &str) -> Result<Self, UnknownEventType> {
                match text {
                    $($name => Ok(EventType::$variant),)*
                    _ => Err(UnknownEventType(text.to_owned())),
                }
            }
        }
    };
}

event_types! {
    InvoiceIssued => "invoice.issued", [Invoice], "An invoice was issued to a buyer (Bharat Connect `invoice.create`).";
    InvoiceAccepted => "invoice.accepted", [Invoice], "The buyer accepted an invoice (Bharat Connect `invoice.confirm`).";
    InvoiceRejected => "invoice.rejected", [Invoice], "The buyer rejected an invoice (Bharat Connect `invoice.confirm`); one returned for a correction is `invoice.status_changed`.";
    InvoiceStatusChanged => "invoice.status_changed", [Invoice, Document], "An invoice moved to a new status (Bharat Connect `invoice.change_status`, CamInvoice `DOCUMENT.STATUS_UPDATED`).";
    InvoiceUpdated => "invoice.updated", [Invoice], "An invoice's contents were edited (Bharat Connect `invoice.edit`).";
    InvoicePaid => "invoice.paid", [Invoice], "An invoice was paid in full (Razorpay `invoice.paid`).";
    InvoicePartiallyPaid => "invoice.partially_paid", [Invoice], "A payment covered part of an invoice (Razorpay `invoice.partially_paid`).";
    InvoiceExpired => "invoice.expired", [Invoice], "An invoice expired unpaid (Razorpay `invoice.expired`).";
    InvoiceSettled => "invoice.settled", [Invoice], "billhook's ledger concluded that the payments linked to an invoice cover its amount.";
    InvoiceUnsettled => "invoice.unsettled", [Invoice], "billhook's ledger concluded that an invoice it announced settled is no longer covered (a refund, a larger amount, or a payment that turned out to be another's).";
    PaymentCreated => "payment.created", [Payment], "A payment was initiated and awaits the payer (Zwitch collect request, Razorpay `payment` created).";
    PaymentAuthorized => "payment.authorized", [Payment], "A payment was authorized but not yet captured (Razorpay `payment.authorized`).";
    PaymentProcessing => "payment.processing", [Payment], "A payment is in flight (Setu `BILL_PAY` Processing).";
    PaymentSucceeded => "payment.succeeded", [Payment], "Money moved: a payment succeeded or was captured.";
    PaymentFailed => "payment.failed", [Payment], "A payment failed.";
    PaymentRefunded => "payment.refunded", [Payment], "A payment was refunded, in part or in full (`data.amount_refunded`; a payment refunded in part keeps its status).";
    PaymentUpdated => "payment.updated", [Payment], "A payment changed to a status billhook has no dedicated type for, or in a way its status does not show (a Razorpay refund created or failed: `data.amount_refunded`); `data.status` says which.";
    PaymentUnmatched => "payment.unmatched", [Payment], "billhook's ledger found no invoice or bill for a payment within the matching window.";
    DocumentDelivered => "document.delivered", [Document], "An e-invoice document was delivered to its customer (CamInvoice `DOCUMENT.DELIVERED`).";
    DocumentReceived => "document.received", [Document], "An e-invoice document addressed to this member was received and validated (CamInvoice `DOCUMENT.RECEIVED`).";
    NetworkMemberRevoked => "network.member_revoked", [NetworkMember], "A member was disconnected from the e-invoicing network (CamInvoice `ENTITY.REVOKED`).";
    BillFetched => "bill.fetched", [Bill], "A customer's outstanding BBPS bill was fetched (Setu `BILL_FETCH`).";
    DisputeUpdated => "dispute.updated", [Dispute], "A BBPS complaint changed status (Setu `BILL_DISPUTE`).";
    BillerUpdated => "biller.updated", [Biller], "A BBPS biller was added or changed (Setu `BILLER_UPDATES`, one event per biller).";
}

impl EventType {
    /// Types billhook's ledger emits on its own (`invoice.settled`, `invoice.unsettled`,
    /// `payment.unmatched`), as opposed to the types a provider message becomes.
    pub fn is_conclusion(&self) -> bool {
        matches!(
            self,
            EventType::InvoiceSettled | EventType::InvoiceUnsettled | EventType::PaymentUnmatched
        )
    }
}

/// A text that names no canonical event type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a canonical event type")]
pub struct UnknownEventType(pub String);

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for EventType {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(EventType::ALL.iter().map(EventType::as_str)))
            .description(Some("A canonical event type."))
            .into()
    }
}

impl ToSchema for EventType {}

/// Something billhook noticed about a message that does not stop it from being processed: an
/// invalid GSTIN, totals that do not add up, a status it has never seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Warning {
    /// Stable machine-readable code (`invalid_gstin`, `totals_mismatch`, `unknown_status`, …).
    pub code: String,
    /// Where in the provider's body, as a dotted path (`data.object.buyer_details.gst_in`).
    pub path: String,
    pub message: String,
}

impl Warning {
    pub fn new(code: &str, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Where an event came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct EventSource {
    /// The configured source name (the `/ingest/{source}` segment).
    pub name: String,
    /// `razorpay`, `zwitch`, `setu_bbps` or `caminvoice`.
    pub provider: String,
    /// The provider's own event name (`invoice.paid`, `BILL_PAY`, `DOCUMENT.RECEIVED`).
    pub event: String,
    /// The provider's event id where it has one (`x-razorpay-event-id`, Zwitch `evl_…`).
    pub event_id: Option<String>,
    /// True when the provider marked the message as sandbox / test mode.
    pub sandbox: bool,
    /// The stored request this event was derived from.
    #[schema(value_type = String)]
    pub inbound_id: InboundId,
}

/// A canonical event: what billhook stores and delivers to `canonical` endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct CanonicalEvent {
    #[schema(value_type = String, example = "evt_01JD3R6Q9K5M2XW8T4HZ7BCN1E")]
    pub id: EventId,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub schema_version: u32,
    /// When the provider says it happened; the reception time when the provider does not say.
    pub occurred_at: Timestamp,
    /// When billhook received the message.
    pub received_at: Timestamp,
    pub source: EventSource,
    pub subject: Subject,
    pub data: EntityData,
    pub warnings: Vec<Warning>,
    /// `invoice.unsettled` only: the `invoice.settled` event it takes back, so a subscriber
    /// counting settlements can pair the two whatever order they arrive in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "evt_01JD3R6Q9K5M2XW8T4HZ7BCN1E")]
    pub reverses: Option<EventId>,
}

/// A canonical event as a provider module builds it, before billhook assigns its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDraft {
    pub event_type: EventType,
    pub data: EntityData,
    /// The provider's time for the event, if it gave one.
    pub occurred_at: Option<Timestamp>,
    /// Without that time, the earliest the event can have happened, if the provider tells it
    /// (a payment's creation, for an update that names no time): it places the event's
    /// snapshot in the ledger among others of its entity, and is no time for the event itself.
    pub not_before: Option<Timestamp>,
    pub warnings: Vec<Warning>,
}

/// Reception facts shared by every event of one inbound message.
#[derive(Debug, Clone)]
pub struct Reception<'a> {
    pub inbound_id: InboundId,
    pub received_at: Timestamp,
    pub source_name: &'a str,
    pub provider: &'a str,
    pub provider_event: &'a str,
    pub provider_event_id: Option<&'a str>,
    pub sandbox: bool,
}

impl EventDraft {
    pub fn new(event_type: EventType, data: EntityData, occurred_at: Option<Timestamp>) -> Self {
        Self {
            event_type,
            data,
            occurred_at,
            not_before: None,
            warnings: Vec::new(),
        }
    }

    /// The earliest the event can have happened, for a provider that gave no time for it.
    pub fn not_before(mut self, at: Option<Timestamp>) -> Self {
        self.not_before = at;
        self
    }

    /// Gives the draft its id and reception facts. `shared_warnings` (about the message as a
    /// whole) come first, then the draft's own.
    pub fn finish(self, reception: &Reception<'_>, shared_warnings: &[Warning]) -> CanonicalEvent {
        let mut warnings = shared_warnings.to_vec();
        warnings.extend(self.warnings);
        CanonicalEvent {
            id: EventId::new_at(reception.received_at),
            event_type: self.event_type,
            schema_version: SCHEMA_VERSION,
            occurred_at: self.occurred_at.unwrap_or(reception.received_at),
            received_at: reception.received_at,
            source: EventSource {
                name: reception.source_name.to_owned(),
                provider: reception.provider.to_owned(),
                event: reception.provider_event.to_owned(),
                event_id: reception.provider_event_id.map(str::to_owned),
                sandbox: reception.sandbox,
                inbound_id: reception.inbound_id,
            },
            subject: self.data.subject(),
            data: self.data,
            warnings,
            reverses: None,
        }
    }
}

/// An endpoint's subscription pattern: an exact type (`invoice.paid`), a family (`invoice.*`) or
/// everything (`*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventTypePattern {
    All,
    Family(String),
    Exact(EventType),
}

/// A text that is not a valid subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("`{0}` is not a canonical event type; see GET /v1/event-types")]
    UnknownType(String),
    #[error("`{0}` matches no canonical event type family")]
    UnknownFamily(String),
    #[error("`{0}` is not a pattern: use an exact type, `family.*` or `*`")]
    Malformed(String),
}

impl EventTypePattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text == "*" {
            return Ok(Self::All);
        }
        if let Some(family) = text.strip_suffix(".*") {
            if family.is_empty() || family.contains(['*', '.']) {
                return Err(PatternError::Malformed(text.to_owned()));
            }
            let known = EventType::ALL
                .iter()
                .any(|t| t.as_str().split_once('.').is_some_and(|(f, _)| f == family));
            return if known {
                Ok(Self::Family(family.to_owned()))
            } else {
                Err(PatternError::UnknownFamily(text.to_owned()))
            };
        }
        if text.contains('*') {
            return Err(PatternError::Malformed(text.to_owned()));
        }
        text.parse()
            .map(Self::Exact)
            .map_err(|_| PatternError::UnknownType(text.to_owned()))
    }

    pub fn matches(&self, event_type: EventType) -> bool {
        match self {
            Self::All => true,
            Self::Exact(exact) => *exact == event_type,
            Self::Family(family) => event_type
                .as_str()
                .split_once('.')
                .is_some_and(|(f, _)| f == family),
        }
    }
}

impl fmt::Display for EventTypePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Family(family) => write!(f, "{family}.*"),
            Self::Exact(exact) => f.write_str(exact.as_str()),
        }
    }
}

impl Serialize for EventTypePattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventTypePattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_through_its_name() {
        for event_type in EventType::ALL {
            assert_eq!(event_type.as_str().parse::<EventType>(), Ok(*event_type));
            assert!(!event_type.subject_kinds().is_empty());
        }
        assert_eq!(
            EventType::InvoiceStatusChanged.subject_kinds(),
            &[SubjectKind::Invoice, SubjectKind::Document]
        );
        assert!("invoice.unknown".parse::<EventType>().is_err());
    }

    #[test]
    fn patterns() {
        let family = EventTypePattern::parse("invoice.*").unwrap();
        assert!(family.matches(EventType::InvoicePaid));
        assert!(!family.matches(EventType::PaymentSucceeded));
        assert!(
            EventTypePattern::parse("*")
                .unwrap()
                .matches(EventType::BillFetched)
        );
        let exact = EventTypePattern::parse("payment.failed").unwrap();
        assert!(exact.matches(EventType::PaymentFailed));
        assert!(!exact.matches(EventType::PaymentSucceeded));
        assert!(matches!(
            EventTypePattern::parse("invoice.paidd"),
            Err(PatternError::UnknownType(_))
        ));
        assert!(matches!(
            EventTypePattern::parse("nothing.*"),
            Err(PatternError::UnknownFamily(_))
        ));
        assert!(matches!(
            EventTypePattern::parse("in*ce.paid"),
            Err(PatternError::Malformed(_))
        ));
        assert_eq!(family.to_string(), "invoice.*");
    }
}
