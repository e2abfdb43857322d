//! Which endpoint receives what: subscriptions and the fan-out of one inbound message.
//!
//! A `canonical` endpoint receives each matching canonical event as its own message (webhook id
//! = the event id). A `raw` endpoint receives the provider's original body once per inbound
//! message (webhook id = the inbound id) when any of the message's events match.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::event::{EventType, EventTypePattern};
use crate::ids::{EndpointId, EventId, InboundId};

/// What an endpoint receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// billhook's canonical event JSON.
    Canonical,
    /// The provider's original body, byte for byte, re-signed by billhook.
    Raw,
}

impl PayloadFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            PayloadFormat::Canonical => "canonical",
            PayloadFormat::Raw => "raw",
        }
    }
}

impl fmt::Display for PayloadFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PayloadFormat {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "canonical" => Ok(PayloadFormat::Canonical),
            "raw" => Ok(PayloadFormat::Raw),
            other => Err(format!(
                "format must be `canonical` or `raw`, not `{other}`"
            )),
        }
    }
}

/// What an endpoint subscribes to: event type patterns and, optionally, only some sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub event_types: Vec<EventTypePattern>,
    /// `None` means every source.
    pub sources: Option<Vec<String>>,
}

impl Subscription {
    pub fn matches(&self, event_type: EventType, source: &str) -> bool {
        self.sources
            .as_ref()
            .is_none_or(|sources| sources.iter().any(|s| s == source))
            && self.event_types.iter().any(|p| p.matches(event_type))
    }
}

/// An endpoint as the fan-out sees it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub id: EndpointId,
    pub subscription: Subscription,
    pub format: PayloadFormat,
    pub enabled: bool,
}

/// One event of an inbound message, for the fan-out.
#[derive(Debug, Clone, Copy)]
pub struct FanOutEvent {
    pub id: EventId,
    pub event_type: EventType,
}

/// A message owed to an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDelivery {
    pub endpoint_id: EndpointId,
    /// The event delivered (canonical format), or `None` for the raw body of the inbound message.
    pub event_id: Option<EventId>,
    /// The type named in listings: the event's, or for raw deliveries the first matching event's.
    pub event_type: EventType,
    /// False when the endpoint is disabled: the delivery is held until it is recovered.
    pub active: bool,
}

impl PlannedDelivery {
    /// The Standard Webhooks message id: the event id, or the inbound id for raw deliveries.
    pub fn message_id(&self, inbound_id: InboundId) -> String {
        match self.event_id {
            Some(event) => event.to_string(),
            None => inbound_id.to_string(),
        }
    }
}

/// Every delivery the events of one inbound message from `source` create.
pub fn plan_deliveries(
    source: &str,
    events: &[FanOutEvent],
    subscribers: &[Subscriber],
) -> Vec<PlannedDelivery> {
    let mut planned = Vec::new();
    for subscriber in subscribers {
        let matching = events
            .iter()
            .filter(|e| subscriber.subscription.matches(e.event_type, source));
        match subscriber.format {
            PayloadFormat::Canonical => planned.extend(matching.map(|event| PlannedDelivery {
                endpoint_id: subscriber.id,
                event_id: Some(event.id),
                event_type: event.event_type,
                active: subscriber.enabled,
            })),
            PayloadFormat::Raw => {
                if let Some(first) = matching.into_iter().next() {
                    planned.push(PlannedDelivery {
                        endpoint_id: subscriber.id,
                        event_id: None,
                        event_type: first.event_type,
                        active: subscriber.enabled,
                    });
                }
            }
        }
    }
    planned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber(
        patterns: &[&str],
        sources: Option<&[&str]>,
        format: PayloadFormat,
    ) -> Subscriber {
        Subscriber {
            id: EndpointId::new(),
            subscription: Subscription {
                event_types: patterns
                    .iter()
                    .map(|p| EventTypePattern::parse(p).unwrap())
                    .collect(),
                sources: sources.map(|s| s.iter().map(|s| (*s).to_owned()).collect()),
            },
            format,
            enabled: true,
        }
    }

    #[test]
    fn canonical_endpoints_get_each_matching_event_and_raw_ones_the_message_once() {
        let events = [
            FanOutEvent {
                id: EventId::new(),
                event_type: EventType::InvoicePaid,
            },
            FanOutEvent {
                id: EventId::new(),
                event_type: EventType::PaymentSucceeded,
            },
        ];
        let everything = subscriber(&["*"], None, PayloadFormat::Canonical);
        let invoices = subscriber(&["invoice.*"], None, PayloadFormat::Canonical);
        let raw = subscriber(
            &["payment.succeeded", "invoice.paid"],
            None,
            PayloadFormat::Raw,
        );
        let other_source = subscriber(&["*"], Some(&["zwitch"]), PayloadFormat::Canonical);
        let planned = plan_deliveries(
            "razorpay",
            &events,
            &[
                everything.clone(),
                invoices.clone(),
                raw.clone(),
                other_source,
            ],
        );
        let for_endpoint = |id: EndpointId| planned.iter().filter(|p| p.endpoint_id == id).count();
        assert_eq!(for_endpoint(everything.id), 2);
        assert_eq!(for_endpoint(invoices.id), 1);
        assert_eq!(for_endpoint(raw.id), 1);
        assert_eq!(planned.len(), 4);
        let raw_delivery = planned.iter().find(|p| p.endpoint_id == raw.id).unwrap();
        assert_eq!(raw_delivery.event_id, None);
        let inbound = InboundId::new();
        assert_eq!(raw_delivery.message_id(inbound), inbound.to_string());
    }
}
