//! The server's side of the ledger: what each canonical event contributes to it (a [`Fact`]),
//! the [`Announcer`] that turns the ledger's conclusions into canonical events with their
//! deliveries, and the sweep that announces payments no invoice claimed.
//!
//! The rules themselves live in `billhook_core::ledger`; the store applies them inside the
//! ingest transaction.

use std::sync::Arc;

use billhook_core::entity::EntityData;
use billhook_core::event::{CanonicalEvent, EventDraft, EventType, Reception};
use billhook_core::ledger::{self, Conclusion, Entity, Fact, Snapshot};
use billhook_core::subscription::FanOutEvent;
use billhook_core::time::Timestamp;
use billhook_store::{Announcement, Concluder, NewEvent};
use bytes::Bytes;

use crate::App;
use crate::config::Source;
use crate::delivery::Planner;

/// The provider event named by conclusions billhook reaches on its own, without a message.
pub const LEDGER_EVENT: &str = "billhook.ledger";

/// What a canonical event tells the ledger, ranked by its provider and linked by its source's
/// rule. `provider_time` is the provider's own time for it, if it gave one (the event's
/// `occurred_at` is otherwise the reception time), else the earliest it can have happened, if
/// the provider tells that. `None` for kinds the ledger does not keep.
pub(crate) fn fact_for(
    event: &CanonicalEvent,
    (provider_time, not_before): (Option<Timestamp>, Option<Timestamp>),
    source: &Source,
) -> Option<Fact> {
    let kind = event.data.kind();
    if !ledger::tracks(kind) {
        return None;
    }
    let provider = &source.spec.provider;
    let (status, _) = ledger::status_of(&event.data);
    Some(Fact {
        event_id: event.id,
        event_type: event.event_type,
        inbound_id: event.source.inbound_id,
        source: event.source.name.clone(),
        provider: event.source.provider.clone(),
        provider_event: event.source.event.clone(),
        sandbox: event.source.sandbox,
        occurred_at: provider_time,
        not_before,
        received_at: event.received_at,
        // Serialized here, on the request's task, not inside the writer's transaction.
        snapshot: Snapshot::of(event.data.clone()),
        rank: status.and_then(|word| provider.status_rank(kind, &word)),
        link_rule: source.link_rule.clone(),
    })
}

/// The stored form of a canonical event: serialized once, so the stored bytes are the
/// delivered bytes.
pub(crate) fn stored_event(event: &CanonicalEvent) -> NewEvent {
    NewEvent {
        id: event.id,
        event_type: event.event_type.as_str(),
        source: event.source.name.clone(),
        subject_kind: event.subject.kind.as_str(),
        subject_id: event.subject.id.clone(),
        occurred_at: event.occurred_at,
        received_at: event.received_at,
        payload: Bytes::from(serde_json::to_vec(event).unwrap_or_default()),
    }
}

/// Announces the ledger's conclusions as canonical events, delivered to the canonical endpoints
/// subscribed to them.
pub struct Announcer {
    planner: Planner,
}

impl Announcer {
    pub fn new(planner: Planner) -> Self {
        Self { planner }
    }

    fn event(&self, conclusion: &Conclusion) -> CanonicalEvent {
        match conclusion {
            Conclusion::InvoiceSettled { invoice, trigger }
            | Conclusion::InvoiceUnsettled {
                invoice, trigger, ..
            } => {
                let reception = Reception {
                    inbound_id: trigger.inbound_id,
                    received_at: trigger.at,
                    source_name: &trigger.source,
                    provider: &trigger.provider,
                    provider_event: &trigger.provider_event,
                    provider_event_id: None,
                    // The invoice's mode: only payments of its mode can settle it.
                    sandbox: invoice.sandbox,
                };
                let mut event = EventDraft::new(
                    conclusion.event_type(),
                    settled_snapshot(invoice),
                    Some(trigger.at),
                )
                .finish(&reception, &[]);
                if let Conclusion::InvoiceUnsettled { reverses, .. } = conclusion {
                    event.reverses = Some(*reverses);
                }
                event
            }
            Conclusion::PaymentUnmatched { payment, at } => {
                let reception = Reception {
                    inbound_id: payment.inbound_id,
                    received_at: *at,
                    source_name: &payment.source,
                    provider: &payment.provider,
                    provider_event: LEDGER_EVENT,
                    provider_event_id: None,
                    sandbox: payment.sandbox,
                };
                EventDraft::new(
                    EventType::PaymentUnmatched,
                    unmatched_snapshot(payment),
                    Some(*at),
                )
                .finish(&reception, &[])
            }
        }
    }
}

impl Concluder for Announcer {
    fn announce(&self, conclusion: &Conclusion) -> Announcement {
        let event = self.event(conclusion);
        // The event belongs to the message that led to it, received long ago if it was
        // reprocessed from quarantine; its deliveries are made now, and are found by what was
        // made since (a recovery, a listing) as such.
        let planned_at = Timestamp::now().max(event.received_at);
        let deliveries = self.planner.canonical(
            &event.source.name,
            FanOutEvent {
                id: event.id,
                event_type: event.event_type,
            },
            event.source.inbound_id,
            planned_at,
        );
        Announcement {
            inbound_id: event.source.inbound_id,
            event: stored_event(&event),
            deliveries,
            planned_at,
        }
    }
}

/// The invoice as the ledger sees it when settled or unsettled: the latest snapshot with the winning status
/// and the ledger's own paid and due amounts.
fn settled_snapshot(invoice: &Entity) -> EntityData {
    match invoice.snapshot.data() {
        EntityData::Invoice(snapshot) => {
            let mut snapshot = snapshot.clone();
            snapshot.status = invoice.status.clone();
            snapshot.provider_status = invoice.provider_status.clone();
            snapshot.amount_paid = Some(invoice.paid);
            snapshot.amount_due = invoice.due;
            EntityData::Invoice(snapshot)
        }
        other => other.clone(),
    }
}

/// The payment as the ledger holds it: its content is the latest snapshot by provider time,
/// which need not be the one whose status won (an unstamped `success` ranks below a stamped
/// `pending` for content, never for status), and the event says the payment succeeded.
fn unmatched_snapshot(payment: &Entity) -> EntityData {
    match payment.snapshot.data() {
        EntityData::Payment(snapshot) => {
            let mut snapshot = snapshot.clone();
            if let Some(status) = &payment.status {
                snapshot.status.clone_from(status);
            }
            if let Some(provider_status) = &payment.provider_status {
                snapshot.provider_status.clone_from(provider_status);
            }
            EntityData::Payment(snapshot)
        }
        other => other.clone(),
    }
}

/// How many payments one sweep statement looks at.
const UNMATCHED_BATCH: u32 = 100;

/// Announces every succeeded payment that has matched nothing for `ledger.unmatched_after`.
/// Safe on any number of instances: the store records each announcement once. A backlog (after
/// a long stop) is left between pages once `stopped` is set, for the next start.
pub(crate) async fn announce_unmatched(
    app: &Arc<App>,
    stopped: &tokio::sync::watch::Receiver<bool>,
) -> Result<usize, billhook_store::StoreError> {
    let mut announced = 0;
    loop {
        let now = Timestamp::now();
        let before = now.sub(app.settings.ledger.unmatched_after.0);
        let payments = app
            .store
            .unmatched_payments(before, UNMATCHED_BATCH)
            .await?;
        let full = payments.len() == UNMATCHED_BATCH as usize;
        for payment in payments {
            let id = payment.id.clone();
            let announcement = app
                .announcer
                .announce(&Conclusion::PaymentUnmatched { payment, at: now });
            if app.store.record_unmatched(&id, announcement).await? {
                announced += 1;
                tracing::info!(payment = %id, "announced a payment that matches no invoice or bill");
            }
        }
        if !full || *stopped.borrow() {
            break;
        }
    }
    if announced > 0 {
        app.metrics
            .concluded(EventType::PaymentUnmatched.as_str(), announced);
        app.delivery.wake();
    }
    Ok(announced)
}
