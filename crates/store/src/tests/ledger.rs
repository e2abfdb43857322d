//! The ledger inside ingest transactions, on both backends: linking, settling once, the
//! listings, unmatched payments, and concurrent writers about the same invoice.

use std::sync::Arc;

use billhook_core::entity::{
    BillSnapshot, Direction, EntityData, InvoiceSnapshot, PaymentReferences, PaymentSnapshot,
    SubjectKind,
};
use billhook_core::event::EventType;
use billhook_core::ids::{EventId, InboundId};
use billhook_core::ledger::{Conclusion, Fact, PaymentRef, Precedence, Snapshot, StatusRank};
use billhook_core::money::{Amount, Currency};
use billhook_core::time::Timestamp;
use bytes::Bytes;

use super::{backends, event, inbound, runtime, write};
use crate::*;

/// Announces conclusions as bare events without deliveries.
struct BareConcluder;

impl Concluder for BareConcluder {
    fn announce(&self, conclusion: &Conclusion) -> Announcement {
        let (inbound_id, at) = match conclusion {
            Conclusion::InvoiceSettled { trigger, .. }
            | Conclusion::InvoiceUnsettled { trigger, .. } => (trigger.inbound_id, trigger.at),
            Conclusion::PaymentUnmatched { payment, at } => (payment.inbound_id, *at),
        };
        let event_type = conclusion.event_type().as_str();
        let subject = conclusion.entity().provider_id.clone();
        Announcement {
            event: NewEvent {
                id: EventId::new_at(at),
                event_type,
                source: "zw".to_owned(),
                subject_kind: if event_type.starts_with("invoice.") {
                    "invoice"
                } else {
                    "payment"
                },
                subject_id: subject,
                occurred_at: at,
                received_at: at,
                payload: Bytes::from_static(b"{}"),
            },
            inbound_id,
            deliveries: Vec::new(),
            planned_at: at,
        }
    }
}

/// A concluder with a bug: it panics on any conclusion.
struct PanickingConcluder;

impl Concluder for PanickingConcluder {
    fn announce(&self, _: &Conclusion) -> Announcement {
        panic!("a bug in announcing")
    }
}

fn invoice_data(id: &str, number: &str, amount: i64) -> EntityData {
    EntityData::Invoice(InvoiceSnapshot {
        provider_invoice_id: id.to_owned(),
        number: Some(number.to_owned()),
        direction: None,
        status: Some("issued".to_owned()),
        provider_status: Some("SENT TO BUYER".to_owned()),
        currency: Currency::INR,
        amount: Some(Amount::from_minor(amount)),
        taxable_amount: None,
        tax_amount: None,
        amount_paid: None,
        amount_due: None,
        supplier: None,
        buyer: None,
        place_of_supply: None,
        line_items: Vec::new(),
        order_id: None,
        payment_id: None,
        description: None,
        issued_at: None,
        paid_at: None,
        expires_at: None,
        cancelled_at: None,
        expired_at: None,
    })
}

fn payment_data(id: &str, status: &str, amount: i64, merchant_reference: &str) -> EntityData {
    EntityData::Payment(PaymentSnapshot {
        provider_payment_id: id.to_owned(),
        rail: Some("upi".to_owned()),
        method: None,
        status: status.to_owned(),
        provider_status: status.to_owned(),
        amount: Amount::from_minor(amount),
        currency: Currency::INR,
        amount_refunded: None,
        fee: None,
        fee_tax: None,
        payer: None,
        payee: None,
        references: PaymentReferences {
            merchant_reference: Some(merchant_reference.to_owned()),
            ..PaymentReferences::default()
        },
        description: None,
        failure: None,
        created_at: None,
        completed_at: None,
        settled: None,
        settled_at: None,
    })
}

/// One ingest carrying one fact about `data`, under a fresh dedup key.
fn ingest_of(data: EntityData, rank: Option<StatusRank>) -> IngestWrite {
    let mut request = inbound(
        "zw",
        &format!("key-{}", InboundId::new()),
        InboundStatus::Processed,
    );
    request.provider = "zwitch".to_owned();
    let now = Timestamp::now();
    let fact = Fact {
        event_id: EventId::new_at(now),
        event_type: EventType::PaymentUpdated,
        inbound_id: request.id,
        source: "zw".to_owned(),
        provider: "zwitch".to_owned(),
        provider_event: "test".to_owned(),
        sandbox: false,
        occurred_at: Some(now),
        not_before: None,
        received_at: now,
        snapshot: Snapshot::of(data),
        rank,
        link_rule: vec![PaymentRef::MerchantReference, PaymentRef::Remark],
    };
    let mut ingest = write(request, Vec::new());
    ingest.facts = vec![fact];
    ingest.concluder = Some(Arc::new(BareConcluder));
    ingest
}

/// The ingest with the canonical event its fact comes from, about the same subject.
fn with_its_event(mut ingest: IngestWrite) -> IngestWrite {
    let fact = &ingest.facts[0];
    let data = fact.snapshot.data();
    ingest.events.push(NewEvent {
        id: fact.event_id,
        event_type: if data.kind() == SubjectKind::Payment {
            "payment.updated"
        } else {
            "invoice.updated"
        },
        source: fact.source.clone(),
        subject_kind: data.kind().as_str(),
        subject_id: data.provider_id().to_owned(),
        occurred_at: fact.occurred_at.unwrap_or(fact.received_at),
        received_at: fact.received_at,
        payload: Bytes::from_static(b"{}"),
    });
    ingest
}

/// Ingests a succeeded payment of `amount` that names `reference`.
async fn pay(store: &Store, id: &str, amount: i64, reference: &str) -> IngestOutcome {
    store
        .ingest(ingest_of(
            payment_data(id, "succeeded", amount, reference),
            SUCCEEDED,
        ))
        .await
        .unwrap()
}

/// Ingests an issued invoice.
async fn issue(store: &Store, id: &str, number: &str, amount: i64) -> IngestOutcome {
    store
        .ingest(ingest_of(
            invoice_data(id, number, amount),
            Some(StatusRank::new(1)),
        ))
        .await
        .unwrap()
}

/// A store at an older schema version that today's code can write the ledger of: the
/// `sandbox` column (SQLite 12, PostgreSQL 10) and the former numbers (SQLite 14, PostgreSQL
/// 12), which entity writes name, are added for the writes and dropped by [`close_old`], so
/// the upgrade adds them as it would.
async fn open_old(config: &DatabaseConfig, version: u32) -> Store {
    let store = Store::open_at(config, Some(version)).await.unwrap();
    schema_change(
        config,
        "ALTER TABLE ledger_entities ADD COLUMN sandbox INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE ledger_entities ADD COLUMN former_numbers TEXT;
         CREATE TABLE ledger_former_numbers (number TEXT NOT NULL, entity_id TEXT NOT NULL,
             PRIMARY KEY (number, entity_id)) WITHOUT ROWID;",
        "ALTER TABLE ledger_entities ADD COLUMN sandbox BOOLEAN NOT NULL DEFAULT false;
         ALTER TABLE ledger_entities ADD COLUMN former_numbers TEXT COLLATE \"C\";",
    )
    .await;
    store
}

async fn close_old(store: Store, config: &DatabaseConfig) {
    store.close().await;
    schema_change(
        config,
        "ALTER TABLE ledger_entities DROP COLUMN sandbox;
         ALTER TABLE ledger_entities DROP COLUMN former_numbers;
         DROP TABLE ledger_former_numbers;",
        "ALTER TABLE ledger_entities DROP COLUMN sandbox;
         ALTER TABLE ledger_entities DROP COLUMN former_numbers;",
    )
    .await;
}

async fn schema_change(config: &DatabaseConfig, sqlite: &str, postgres: &str) {
    match config {
        DatabaseConfig::Sqlite { path } => rusqlite::Connection::open(path)
            .unwrap()
            .execute_batch(sqlite)
            .unwrap(),
        DatabaseConfig::Postgres(_) => super::postgres_session(config)
            .await
            .batch_execute(postgres)
            .await
            .unwrap(),
    }
}

/// Every entity of `kind` (up to a page).
async fn every(store: &Store, kind: SubjectKind) -> Vec<Entity> {
    store
        .ledger_entities(query(kind, LedgerFilter::All))
        .await
        .unwrap()
        .items
}

/// The entities of `kind` a listing finds by `reference` (a provider's id or a number).
async fn listed_by_reference(store: &Store, kind: SubjectKind, reference: &str) -> Vec<Entity> {
    let mut by_reference = query(kind, LedgerFilter::All);
    by_reference.reference = Some(reference.to_owned());
    store.ledger_entities(by_reference).await.unwrap().items
}

fn concluded(outcome: IngestOutcome) -> Vec<EventId> {
    match outcome {
        IngestOutcome::Stored { concluded, .. } => concluded.iter().map(|c| c.id).collect(),
        IngestOutcome::Duplicate { .. } => panic!("unexpected duplicate"),
    }
}

const SUCCEEDED: Option<StatusRank> = Some(StatusRank::new(2));

fn query(kind: SubjectKind, filter: LedgerFilter) -> LedgerQuery {
    LedgerQuery {
        kind,
        filter,
        provider: None,
        source: None,
        reference: None,
        before: None,
        limit: 50,
        now: Timestamp::now(),
    }
}

#[test]
fn payments_link_to_their_invoice_which_settles_once() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let first = pay(store, "tx_1", 600, "INV-1").await;
            assert!(concluded(first).is_empty());
            let invoice = issue(store, "bcinv_1", "INV-1", 1000).await;
            assert!(concluded(invoice).is_empty(), "600 of 1000 is not settled");
            let second = pay(store, "tx_2", 400, "INV-1").await;
            let settled = concluded(second);
            assert_eq!(settled.len(), 1);
            // A later message about an already-counted payment concludes nothing again.
            let again = pay(store, "tx_2", 400, "INV-1").await;
            assert!(concluded(again).is_empty());

            let invoices = every(store, SubjectKind::Invoice).await;
            assert_eq!(invoices.len(), 1);
            let invoice = &invoices[0];
            assert_eq!(invoice.paid, Amount::from_minor(1000));
            assert_eq!(invoice.due, Some(Amount::ZERO));
            assert_eq!(invoice.settled_event, Some(settled[0]));
            let event = store.event(settled[0]).await.unwrap().unwrap();
            assert_eq!(event.event_type, "invoice.settled");
            assert_eq!(store.ledger_linked(&invoice.id).await.unwrap().len(), 2);
            assert_eq!(store.ledger_history(&invoice.id).await.unwrap().len(), 1);
            let by_id = store.ledger_entity(&invoice.id).await.unwrap().unwrap();
            assert_eq!(&by_id, invoice);

            let count = |filter: LedgerFilter, kind: SubjectKind| {
                let query = query(kind, filter);
                async move { store.ledger_entities(query).await.unwrap().items.len() }
            };
            assert_eq!(count(LedgerFilter::Paid, SubjectKind::Invoice).await, 1);
            assert_eq!(
                count(LedgerFilter::Outstanding, SubjectKind::Invoice).await,
                0
            );
            assert_eq!(
                count(LedgerFilter::Status("issued".into()), SubjectKind::Invoice).await,
                1
            );
            assert_eq!(
                count(LedgerFilter::Unmatched, SubjectKind::Payment).await,
                0
            );
            assert_eq!(count(LedgerFilter::All, SubjectKind::Payment).await, 2);
            assert_eq!(
                listed_by_reference(store, SubjectKind::Invoice, "INV-1")
                    .await
                    .len(),
                1
            );
        }
    });
}

/// A payment linked to (and settling) an invoice whose direction no message had stated yet
/// moves to the business's own invoice of that number once the first turns out to be received:
/// the settlement is taken back and made where it belongs, on both backends (on PostgreSQL
/// with the moved payment held afresh under its own locks).
#[test]
fn a_payment_moves_off_an_invoice_that_turns_out_received() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let with_direction = |data: EntityData, direction| match data {
                EntityData::Invoice(mut invoice) => {
                    invoice.direction = Some(direction);
                    EntityData::Invoice(invoice)
                }
                other => other,
            };
            // Known only by its number so far (as after a Bharat Connect edit).
            issue(store, "bcinv_a", "INV-9", 1000).await;
            let ours = ingest_of(
                with_direction(invoice_data("bcinv_b", "INV-9", 1000), Direction::Outgoing),
                Some(StatusRank::new(1)),
            );
            store.ingest(ours).await.unwrap();
            let paid = concluded(pay(store, "tx_9", 1000, "INV-9").await);
            assert_eq!(paid.len(), 1, "settles the first invoice of the number");

            let received = ingest_of(
                with_direction(invoice_data("bcinv_a", "INV-9", 1000), Direction::Incoming),
                Some(StatusRank::new(2)),
            );
            let moved = concluded(store.ingest(received).await.unwrap());
            let mut types = Vec::new();
            for id in &moved {
                types.push(store.event(*id).await.unwrap().unwrap().event_type);
            }
            types.sort();
            assert_eq!(types, ["invoice.settled", "invoice.unsettled"]);

            let invoices = every(store, SubjectKind::Invoice).await;
            let by_provider_id = |id: &str| {
                invoices
                    .iter()
                    .find(|i| i.provider_id == id)
                    .unwrap()
                    .clone()
            };
            let (theirs, ours) = (by_provider_id("bcinv_a"), by_provider_id("bcinv_b"));
            assert_eq!((theirs.paid, theirs.settled_event), (Amount::ZERO, None));
            assert_eq!(ours.due, Some(Amount::ZERO));
            assert!(ours.settled_event.is_some());
            let payment = &every(store, SubjectKind::Payment).await[0];
            assert_eq!(payment.linked_to.as_ref(), Some(&ours.id));
        }
    });
}

/// A Bharat Connect invoice returned for correction is still owed; a rejected one is not.
#[test]
fn a_returned_invoice_stays_outstanding_and_a_rejected_one_does_not() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            for (id, status) in [("bcinv_ret", "returned"), ("bcinv_rej", "rejected")] {
                let EntityData::Invoice(mut invoice) = invoice_data(id, id, 1000) else {
                    unreachable!()
                };
                invoice.status = Some(status.to_owned());
                store
                    .ingest(ingest_of(
                        EntityData::Invoice(invoice),
                        Some(StatusRank::new(1)),
                    ))
                    .await
                    .unwrap();
            }
            let outstanding = store
                .ledger_entities(query(SubjectKind::Invoice, LedgerFilter::Outstanding))
                .await
                .unwrap()
                .items;
            let ids: Vec<&str> = outstanding.iter().map(|i| i.provider_id.as_str()).collect();
            assert_eq!(ids, ["bcinv_ret"]);
            assert!(is_outstanding(&outstanding[0]));
        }
    });
}

fn bill_data(ref_id: &str, biller_ref_id: &str, amount: i64) -> EntityData {
    EntityData::Bill(BillSnapshot {
        ref_id: ref_id.to_owned(),
        biller_ref_id: Some(biller_ref_id.to_owned()),
        biller_id: None,
        bill_number: None,
        customer_name: None,
        amount: Some(Amount::from_minor(amount)),
        currency: Currency::INR,
        bill_date: None,
        due_date: None,
        bill_period: None,
        exactness: None,
        status: Some("success".to_owned()),
        provider_status: Some("SUCCESS".to_owned()),
        payment_limits: Vec::new(),
    })
}

/// A bill whose fetch failed brought nothing to pay: it is listed, but not as outstanding,
/// while a fetched bill with an amount is.
#[test]
fn a_bill_whose_fetch_failed_is_not_outstanding() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let fetched = bill_data("bill_ok", "CUST-OK", 500);
            let mut failed = bill_data("bill_failed", "CUST-FAILED", 0);
            if let EntityData::Bill(bill) = &mut failed {
                bill.amount = None;
                bill.status = Some("failure".to_owned());
                bill.provider_status = Some("FAILURE".to_owned());
            }
            for data in [fetched, failed] {
                store
                    .ingest(ingest_of(data, Some(StatusRank::new(1))))
                    .await
                    .unwrap();
            }
            let listed = |filter: LedgerFilter| {
                let query = query(SubjectKind::Bill, filter);
                async move {
                    let page = store.ledger_entities(query).await.unwrap();
                    page.items
                        .into_iter()
                        .map(|e| e.provider_id)
                        .collect::<Vec<_>>()
                }
            };
            assert_eq!(listed(LedgerFilter::All).await.len(), 2);
            assert_eq!(listed(LedgerFilter::Outstanding).await, ["bill_ok"]);
            // An export asks whether a listing runs past its limit without reading it.
            let exceeds = |filter: LedgerFilter, rows: u64| {
                let query = query(SubjectKind::Bill, filter);
                async move { store.ledger_listing_exceeds(query, rows).await.unwrap() }
            };
            assert!(exceeds(LedgerFilter::All, 1).await);
            assert!(!exceeds(LedgerFilter::All, 2).await);
            assert!(!exceeds(LedgerFilter::Outstanding, 1).await);
            assert!(exceeds(LedgerFilter::Outstanding, 0).await);
        }
    });
}

/// Which of a target's keys a payment's reference holds.
#[derive(Clone, Copy)]
enum TargetKey {
    InvoiceId,
    InvoiceOrder,
    InvoiceNumber,
    BillId,
    BillNumber,
}

/// Every reference a payment can name its invoice or bill by, with the key it is compared with.
const LINKS: [(PaymentRef, TargetKey); 8] = [
    (PaymentRef::InvoiceId, TargetKey::InvoiceId),
    (PaymentRef::OrderId, TargetKey::InvoiceOrder),
    (PaymentRef::MerchantReference, TargetKey::InvoiceNumber),
    (PaymentRef::MerchantReference, TargetKey::InvoiceId),
    (PaymentRef::Remark, TargetKey::InvoiceNumber),
    (PaymentRef::Remark, TargetKey::InvoiceId),
    (PaymentRef::BillRefId, TargetKey::BillId),
    (PaymentRef::BillerRefId, TargetKey::BillNumber),
];

/// Case `n`'s target: an invoice `inv_n` (number `INV-n`, order `order_n`) or a bill `bill_n`
/// (biller reference `CUST-n`), and the value of `key` a payment names it by.
fn target_of(n: usize, key: TargetKey) -> (EntityData, String) {
    let mut invoice = invoice_data(&format!("inv_{n}"), &format!("INV-{n}"), 500);
    if let EntityData::Invoice(snapshot) = &mut invoice {
        snapshot.order_id = Some(format!("order_{n}"));
    }
    let bill = bill_data(&format!("bill_{n}"), &format!("CUST-{n}"), 500);
    match key {
        TargetKey::InvoiceId => (invoice, format!("inv_{n}")),
        TargetKey::InvoiceOrder => (invoice, format!("order_{n}")),
        TargetKey::InvoiceNumber => (invoice, format!("INV-{n}")),
        TargetKey::BillId => (bill, format!("bill_{n}")),
        TargetKey::BillNumber => (bill, format!("CUST-{n}")),
    }
}

/// A succeeded payment `pay_n` naming `value` by `reference` only.
fn payment_naming(n: usize, reference: PaymentRef, value: &str) -> IngestWrite {
    let mut data = payment_data(&format!("pay_{n}"), "succeeded", 100, "-");
    if let EntityData::Payment(snapshot) = &mut data {
        let value = Some(value.to_owned());
        let mut references = PaymentReferences::default();
        match reference {
            PaymentRef::InvoiceId => references.invoice_id = value,
            PaymentRef::OrderId => references.order_id = value,
            PaymentRef::MerchantReference => references.merchant_reference = value,
            PaymentRef::Remark => references.remark = value,
            PaymentRef::BillRefId => references.bill_ref_id = value,
            PaymentRef::BillerRefId => references.biller_ref_id = value,
        }
        snapshot.references = references;
    }
    let mut ingest = ingest_of(data, SUCCEEDED);
    ingest.facts[0].link_rule = vec![reference];
    ingest
}

#[test]
fn a_payment_and_its_target_find_each_other_by_each_reference_whichever_comes_first() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            // Each case has its own target; every other case's target is a decoy for it.
            for (case, (reference, key)) in LINKS.into_iter().enumerate() {
                for payment_first in [false, true] {
                    let n = 2 * case + usize::from(payment_first);
                    let (target, value) = target_of(n, key);
                    let target_kind = target.kind();
                    let target_provider_id = target.provider_id().to_owned();
                    let payment = payment_naming(n, reference, &value);
                    let target = ingest_of(target, Some(StatusRank::new(1)));
                    let (first, second) = if payment_first {
                        (payment, target)
                    } else {
                        (target, payment)
                    };
                    store.ingest(first).await.unwrap();
                    store.ingest(second).await.unwrap();
                    let target_id = listed_by_reference(store, target_kind, &target_provider_id)
                        .await[0]
                        .id
                        .clone();
                    let payment_id = format!("pay_{n}");
                    let payments = listed_by_reference(store, SubjectKind::Payment, &payment_id);
                    let payment = &payments.await[0];
                    assert_eq!(
                        (payment.linked_to.as_deref(), payment.link_rule.as_deref()),
                        (Some(target_id.as_str()), Some(reference.as_str())),
                        "{:?}: a payment naming `{value}` by {}, the payment first: {payment_first}",
                        test.config,
                        reference.as_str(),
                    );
                }
            }
        }
    });
}

#[test]
fn an_unmatched_payment_is_announced_once() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            pay(store, "tx_9", 250, "NOTHING").await;
            store
                .ingest(ingest_of(
                    payment_data("tx_8", "pending", 250, "NOTHING"),
                    Some(StatusRank::new(0)),
                ))
                .await
                .unwrap();
            let later = Timestamp::now().add(Duration::from_secs(1));
            let waiting = store.unmatched_payments(later, 10).await.unwrap();
            assert_eq!(waiting.len(), 1, "only succeeded payments count");
            assert_eq!(
                store
                    .unmatched_payments(Timestamp::from_unix_millis(0), 10)
                    .await
                    .unwrap()
                    .len(),
                0,
                "not before the window has passed"
            );
            let payment = waiting.into_iter().next().unwrap();
            let conclusion = Conclusion::PaymentUnmatched {
                payment: payment.clone(),
                at: later,
            };
            let announcement = BareConcluder.announce(&conclusion);
            let event_id = announcement.event.id;
            assert!(
                store
                    .record_unmatched(&payment.id, announcement.clone())
                    .await
                    .unwrap()
            );
            assert!(
                !store
                    .record_unmatched(&payment.id, announcement)
                    .await
                    .unwrap()
            );
            assert!(
                store
                    .unmatched_payments(later, 10)
                    .await
                    .unwrap()
                    .is_empty()
            );
            let shown = store.ledger_entity(&payment.id).await.unwrap().unwrap();
            assert_eq!(shown.unmatched_event, Some(event_id));
            let unmatched = store
                .ledger_entities(query(SubjectKind::Payment, LedgerFilter::Unmatched))
                .await
                .unwrap()
                .items;
            assert_eq!(unmatched.len(), 1, "still unmatched, announced or not");

            // A payment that failed (or was refunded) between the sweep's read and its
            // announcement no longer counts, and is not announced as money matching nothing.
            pay(store, "tx_7", 300, "NOTHING").await;
            let read = store.unmatched_payments(later, 10).await.unwrap();
            let stale = read.into_iter().find(|p| p.provider_id == "tx_7").unwrap();
            store
                .ingest(ingest_of(
                    payment_data("tx_7", "refunded", 300, "NOTHING"),
                    Some(StatusRank::new(3)),
                ))
                .await
                .unwrap();
            let announcement = BareConcluder.announce(&Conclusion::PaymentUnmatched {
                payment: stale.clone(),
                at: later,
            });
            assert!(
                !store
                    .record_unmatched(&stale.id, announcement)
                    .await
                    .unwrap(),
                "announced a payment that no longer counts"
            );
        }
    });
}

#[test]
fn concurrent_writers_about_one_invoice_always_find_each_other() {
    runtime().block_on(async {
        for test in backends().await {
            let store = test.store.clone();
            let pairs = 30;
            let mut tasks = Vec::new();
            for pair in 0..pairs {
                let number = format!("INV-C{pair}");
                let writes = [
                    ingest_of(
                        invoice_data(&format!("bcinv_c{pair}"), &number, 1000),
                        Some(StatusRank::new(1)),
                    ),
                    ingest_of(
                        payment_data(&format!("tx_c{pair}"), "succeeded", 1000, &number),
                        SUCCEEDED,
                    ),
                    // The same payment reported again at the same moment by another message.
                    ingest_of(
                        payment_data(&format!("tx_c{pair}"), "succeeded", 1000, &number),
                        SUCCEEDED,
                    ),
                ];
                for write in writes {
                    let store = store.clone();
                    tasks.push(tokio::spawn(async move { store.ingest(write).await }));
                }
            }
            let mut settlements = 0;
            for task in tasks {
                settlements += concluded(task.await.unwrap().unwrap()).len();
            }
            assert_eq!(settlements, pairs, "every invoice settled exactly once");
            let mut all = query(SubjectKind::Invoice, LedgerFilter::Paid);
            all.limit = 500;
            assert_eq!(store.ledger_entities(all).await.unwrap().items.len(), pairs);
            let mut payments = query(SubjectKind::Payment, LedgerFilter::All);
            payments.limit = 500;
            let payments = store.ledger_entities(payments).await.unwrap().items;
            assert_eq!(
                payments.len(),
                pairs,
                "one payment each, however many messages"
            );
            assert!(payments.iter().all(|p| p.linked_to.is_some()));
        }
    });
}

/// An invoice renumbered is found by every number it had: the payment linked by the old one
/// stays, a later one naming the old number links too, and a listing finds it by either. An
/// entity rewritten with the same keys (a save that names none of the key columns) is still
/// found by them.
#[test]
fn an_invoice_renumbered_is_found_by_every_number_it_had() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            issue(store, "bcinv_r", "INV-OLD", 1000).await;
            // Provider time has millisecond precision: the next snapshot must be later.
            tokio::time::sleep(Duration::from_millis(5)).await;
            issue(store, "bcinv_r", "INV-OLD", 1000).await;
            let first = pay(store, "tx_r1", 300, "INV-OLD").await;
            assert!(concluded(first).is_empty(), "300 of 1000");
            tokio::time::sleep(Duration::from_millis(5)).await;
            issue(store, "bcinv_r", "INV-NEW", 1000).await;

            let invoices = every(store, SubjectKind::Invoice).await;
            assert_eq!(invoices.len(), 1);
            let invoice = &invoices[0];
            assert_eq!(invoice.keys.number.as_deref(), Some("INV-NEW"));
            assert_eq!(invoice.keys.former_numbers, ["INV-OLD"]);
            assert_eq!(
                invoice.paid,
                Amount::from_minor(300),
                "the linked payment stays"
            );

            pay(store, "tx_r2", 100, "INV-OLD").await;
            let settling = pay(store, "tx_r3", 600, "INV-NEW").await;
            assert_eq!(concluded(settling).len(), 1, "300 + 100 + 600 of 1000");
            let linked = store.ledger_linked(&invoice.id).await.unwrap();
            let mut names = linked
                .iter()
                .map(|p| p.provider_id.as_str())
                .collect::<Vec<_>>();
            names.sort_unstable();
            assert_eq!(
                names,
                ["tx_r1", "tx_r2", "tx_r3"],
                "the old number still names it"
            );
            for number in ["INV-OLD", "INV-NEW"] {
                let listed = listed_by_reference(store, SubjectKind::Invoice, number).await;
                assert_eq!(listed.len(), 1, "{number}");
                assert_eq!(listed[0].id, invoice.id);
            }
        }
    });
}

/// A payment naming an invoice's former number, arriving first, is linked when the invoice
/// that had that number arrives: the lookup by former number works from the invoice's side
/// too.
#[test]
fn a_waiting_payment_naming_a_former_number_is_linked() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            pay(store, "tx_w1", 400, "INV-W-OLD").await;
            issue(store, "bcinv_w", "INV-W-NEW", 1000).await;
            assert!(
                store
                    .ledger_linked(&every(store, SubjectKind::Invoice).await[0].id)
                    .await
                    .unwrap()
                    .is_empty()
            );
            // An older snapshot (an edit, say) naming the old number: it wins nothing but
            // the number.
            let mut older = ingest_of(
                invoice_data("bcinv_w", "INV-W-OLD", 1000),
                Some(StatusRank::new(1)),
            );
            older.facts[0].occurred_at = Some(Timestamp::from_unix_millis(1));
            store.ingest(older).await.unwrap();
            let invoice = &every(store, SubjectKind::Invoice).await[0];
            assert_eq!(invoice.keys.number.as_deref(), Some("INV-W-NEW"));
            assert_eq!(invoice.keys.former_numbers, ["INV-W-OLD"]);
            let linked = store.ledger_linked(&invoice.id).await.unwrap();
            assert_eq!(linked.len(), 1);
            assert_eq!(linked[0].provider_id, "tx_w1");
            assert_eq!(invoice.paid, Amount::from_minor(400));
        }
    });
}

/// A payment whose later message names a stronger reference moves to the invoice it names,
/// the one it leaves unsettled, on both backends (PostgreSQL reads a linked payment's targets
/// past what it read ahead).
#[test]
fn a_payment_naming_a_stronger_reference_moves_to_its_invoice() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            issue(store, "bcinv_ma", "INV-MA", 1000).await;
            issue(store, "bcinv_mb", "INV-MB", 1000).await;
            let mut by_remark = payment_data("tx_move", "succeeded", 1000, "");
            if let EntityData::Payment(payment) = &mut by_remark {
                payment.references = PaymentReferences {
                    remark: Some("INV-MB".to_owned()),
                    ..PaymentReferences::default()
                };
            }
            let settled = store.ingest(ingest_of(by_remark, SUCCEEDED)).await.unwrap();
            assert_eq!(concluded(settled).len(), 1, "INV-MB settled by its remark");
            tokio::time::sleep(Duration::from_millis(5)).await;
            let mut by_merchant = payment_data("tx_move", "succeeded", 1000, "INV-MA");
            if let EntityData::Payment(payment) = &mut by_merchant {
                payment.references.remark = Some("INV-MB".to_owned());
            }
            let moved = store
                .ingest(ingest_of(by_merchant, SUCCEEDED))
                .await
                .unwrap();
            assert_eq!(
                concluded(moved).len(),
                2,
                "INV-MB unsettled, INV-MA settled"
            );
            let invoices = every(store, SubjectKind::Invoice).await;
            let paid = |id: &str| {
                let invoice = invoices.iter().find(|i| i.provider_id == id).unwrap();
                (invoice.paid, invoice.id.clone())
            };
            let (paid_a, a) = paid("bcinv_ma");
            assert_eq!(paid_a, Amount::from_minor(1000));
            assert_eq!(paid("bcinv_mb").0, Amount::ZERO);
            let linked = store.ledger_linked(&a).await.unwrap();
            assert_eq!(linked.len(), 1);
            assert_eq!(linked[0].link_rule.as_deref(), Some("merchant_reference"));
        }
    });
}

/// The migration to one identity index (SQLite 7, PostgreSQL 6) keeps every entity, and an
/// upgraded ledger still finds entities by their identity and by the provider's id alone.
#[test]
fn the_ledger_identity_migration_keeps_entities_and_their_lookups() {
    runtime().block_on(async {
        for ((config, _dir), before) in [
            (super::sqlite_config(), 6),
            (super::postgres_config().await, 5),
        ] {
            let old = open_old(&config, before).await;
            pay(&old, "tx_m1", 400, "INV-M").await;
            issue(&old, "bcinv_m", "INV-M", 1000).await;
            close_old(old, &config).await;

            let store = Store::open(&config).await.unwrap();
            assert_eq!(
                store.schema_version().await.unwrap(),
                Store::latest_version(&config)
            );
            // The same payment again is found by its identity and stays one entity.
            pay(&store, "tx_m1", 400, "INV-M").await;
            let settling = pay(&store, "tx_m2", 600, "INV-M").await;
            assert_eq!(concluded(settling).len(), 1, "1000 of 1000 settles");
            let payments = every(&store, SubjectKind::Payment).await;
            assert_eq!(payments.len(), 2);
            let invoices = every(&store, SubjectKind::Invoice).await;
            assert_eq!(invoices.len(), 1);
            assert_eq!(invoices[0].paid, Amount::from_minor(1000));
            assert_eq!(store.ledger_linked(&invoices[0].id).await.unwrap().len(), 2);
            // A lookup by the provider's id alone.
            assert_eq!(
                listed_by_reference(&store, SubjectKind::Invoice, "bcinv_m")
                    .await
                    .len(),
                1
            );
            store.close().await;
        }
    });
}

/// PostgreSQL's migration 8 makes every text column compare as bytes and lists the ledger by
/// ranges of ids instead of an index on the kind: an upgraded ledger keeps every entity, lists
/// each kind apart, newest first and page by page, and still links what arrives after.
#[test]
fn the_byte_order_migration_keeps_the_ledger_and_lists_it_by_kind() {
    runtime().block_on(async {
        let (config, _dir) = super::postgres_config().await;
        let old = open_old(&config, 7).await;
        for n in 0..3 {
            issue(&old, &format!("bcinv_b{n}"), &format!("INV-B{n}"), 1000).await;
            pay(&old, &format!("tx_b{n}"), 400, &format!("INV-B{n}")).await;
        }
        close_old(old, &config).await;

        let store = Store::open(&config).await.unwrap();
        let client = super::postgres_session(&config).await;
        let other_collations: Vec<String> = client
            .query(
                "SELECT table_name || '.' || column_name FROM information_schema.columns
                 WHERE table_schema = current_schema() AND data_type = 'text'
                   AND collation_name IS DISTINCT FROM 'C'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(other_collations, Vec::<String>::new());

        let settling = pay(&store, "tx_b3", 600, "INV-B0").await;
        assert_eq!(concluded(settling).len(), 1, "1000 of 1000 settles");
        let invoices = every(&store, SubjectKind::Invoice).await;
        assert_eq!(invoices.len(), 3);
        assert!(invoices.iter().all(|e| e.kind == SubjectKind::Invoice));
        let ids: Vec<&str> = invoices.iter().map(|e| e.id.as_str()).collect();
        let mut newest_first = ids.clone();
        newest_first.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(ids, newest_first);
        let payments = every(&store, SubjectKind::Payment).await;
        assert_eq!(payments.len(), 4);
        assert!(payments.iter().all(|e| e.kind == SubjectKind::Payment));

        let mut pages = Vec::new();
        let mut page = query(SubjectKind::Invoice, LedgerFilter::All);
        page.limit = 2;
        loop {
            let found = store.ledger_entities(page.clone()).await.unwrap();
            pages.extend(found.items.into_iter().map(|e| e.id));
            match found.next_cursor {
                Some(next) => page.before = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, ids);
        store.close().await;
    });
}

/// Stores an invoice, a payment that settles it and an event about the invoice that the ledger
/// does not file; `check_subject_listings` then expects each to be found by its subject.
async fn store_events_about_one_invoice(store: &Store) {
    let invoice = ingest_of(
        invoice_data("bcinv_s", "INV-S", 1000),
        Some(StatusRank::new(1)),
    );
    store.ingest(with_its_event(invoice)).await.unwrap();
    let payment = ingest_of(payment_data("tx_s1", "succeeded", 1000, "INV-S"), SUCCEEDED);
    let settling = store.ingest(with_its_event(payment)).await.unwrap();
    assert_eq!(concluded(settling).len(), 1);
    let unfiled = event("zw", "invoice.viewed", "bcinv_s");
    store
        .ingest(write(
            inbound("zw", "key-unfiled", InboundStatus::Processed),
            vec![unfiled],
        ))
        .await
        .unwrap();
}

async fn check_subject_listings(store: &Store) {
    let by_subject = |subject: &str| EventQuery {
        subject: Some(subject.to_owned()),
        limit: 100,
        ..EventQuery::default()
    };
    let invoice = store.events(by_subject("bcinv_s")).await.unwrap().items;
    let mut types: Vec<&str> = invoice.iter().map(|e| e.event_type.as_str()).collect();
    types.sort_unstable();
    assert_eq!(
        types,
        ["invoice.settled", "invoice.updated", "invoice.viewed"],
        "the ledger's event, its conclusion and the unfiled one"
    );
    assert!(
        invoice.windows(2).all(|w| w[0].id > w[1].id),
        "newest first"
    );
    let payment = store.events(by_subject("tx_s1")).await.unwrap().items;
    assert_eq!(payment.len(), 1);
    assert_eq!(payment[0].subject_id, "tx_s1");
    // A page of one, then the rest after its cursor.
    let mut first = by_subject("bcinv_s");
    first.limit = 1;
    let page = store.events(first).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let mut rest = by_subject("bcinv_s");
    rest.before = Some(page.items[0].id);
    assert_eq!(store.events(rest).await.unwrap().items.len(), 2);
    assert!(
        store
            .events(by_subject("INV-S"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[test]
fn events_are_listed_by_subject_with_the_ledgers_conclusions() {
    runtime().block_on(async {
        for test in backends().await {
            store_events_about_one_invoice(&test.store).await;
            check_subject_listings(&test.store).await;
        }
    });
}

/// The types of the events stored without a ledger entity, in a SQLite database.
fn unfiled_event_types(path: &std::path::Path) -> Vec<String> {
    let connection = rusqlite::Connection::open(path).unwrap();
    let mut statement = connection
        .prepare("SELECT type FROM events WHERE entity_id IS NULL ORDER BY type")
        .unwrap();
    statement
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn events_about_ledger_entities_are_filed_under_them() {
    runtime().block_on(async {
        let (config, _dir) = super::sqlite_config();
        let DatabaseConfig::Sqlite { path } = &config else {
            unreachable!("a SQLite configuration")
        };
        let store = Store::open(&config).await.unwrap();
        store_events_about_one_invoice(&store).await;
        // A payment nothing claims, announced by the sweep.
        let lonely = ingest_of(payment_data("tx_u", "succeeded", 70, "NOTHING"), SUCCEEDED);
        store.ingest(with_its_event(lonely)).await.unwrap();
        let later = Timestamp::now().add(Duration::from_secs(1));
        let payment = store.unmatched_payments(later, 10).await.unwrap().remove(0);
        let conclusion = Conclusion::PaymentUnmatched {
            payment: payment.clone(),
            at: later,
        };
        let announcement = BareConcluder.announce(&conclusion);
        assert!(
            store
                .record_unmatched(&payment.id, announcement)
                .await
                .unwrap()
        );
        let unmatched = store.events(EventQuery {
            subject: Some("tx_u".to_owned()),
            limit: 10,
            ..EventQuery::default()
        });
        assert_eq!(
            unmatched.await.unwrap().items.len(),
            2,
            "the payment and its announcement"
        );
        // A quarantined request, reprocessed into a payment.
        let quarantined = inbound("zw", "sha256:late", InboundStatus::Quarantined);
        store
            .ingest(write(quarantined.clone(), vec![]))
            .await
            .unwrap();
        let mut late = with_its_event(ingest_of(
            payment_data("tx_r", "succeeded", 30, "NOTHING"),
            SUCCEEDED,
        ));
        late.facts[0].inbound_id = quarantined.id;
        let reprocessed = store
            .reprocess(
                quarantined.id,
                Reprocess::Normalized {
                    provider_event: "payment.updated".into(),
                    provider_event_id: None,
                    dedup_key: "tx_r".into(),
                    body_dedup_key: None,
                    events: late.events,
                    deliveries: Vec::new(),
                    facts: late.facts,
                    concluder: late.concluder,
                    dedup_expires_at: late.dedup_expires_at,
                },
            )
            .await
            .unwrap();
        assert!(matches!(reprocessed, ReprocessOutcome::Processed { .. }));
        check_subject_listings(&store).await;
        store.close().await;
        // Only the event about no entity the ledger keeps went without one.
        assert_eq!(unfiled_event_types(path), ["invoice.viewed"]);
    });
}

#[test]
fn the_events_by_entity_migration_keeps_listings_by_subject() {
    runtime().block_on(async {
        let (config, _dir) = super::sqlite_config();
        let store = Store::open(&config).await.unwrap();
        store_events_about_one_invoice(&store).await;
        store.close().await;
        // Back to version 8 as it would have stored the same events: no entity ids, and the
        // subject index over every event.
        let DatabaseConfig::Sqlite { path } = &config else {
            unreachable!("a SQLite configuration")
        };
        rusqlite::Connection::open(path)
            .unwrap()
            .execute_batch(
                "DROP INDEX events_by_entity;
                 DROP INDEX events_by_subject;
                 ALTER TABLE events DROP COLUMN entity_id;
                 CREATE INDEX events_by_subject ON events (subject_id, id);
                 CREATE INDEX deliveries_by_event ON deliveries (event_id);
                 ALTER TABLE ledger_entities DROP COLUMN sandbox;
                 DROP INDEX deliveries_held;
                 DROP INDEX deliveries_dead;
                 ALTER TABLE ledger_entities DROP COLUMN former_numbers;
                 DROP TABLE ledger_former_numbers;
                 DELETE FROM billhook_migrations WHERE version >= 9;",
            )
            .unwrap();
        let store = Store::open(&config).await.unwrap();
        assert_eq!(
            store.schema_version().await.unwrap(),
            Store::latest_version(&config)
        );
        // The events stored before stay unfiled, and are found by their subject all the same.
        check_subject_listings(&store).await;
        store.close().await;
        assert_eq!(unfiled_event_types(path).len(), 4);
    });
}

#[test]
fn a_grown_ledger_is_analyzed_once_and_its_lookups_still_link() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            let postgres = matches!(test.config, DatabaseConfig::Postgres(_));
            assert!(
                !store.refresh_statistics().await.unwrap(),
                "an empty ledger"
            );
            for n in 0..150 {
                issue(store, &format!("bcinv_{n}"), &format!("INV-{n}"), 1000).await;
            }
            // PostgreSQL's activity counters reach `pg_stat_user_tables` within seconds of a
            // commit, not at once.
            let mut refreshed = false;
            for _ in 0..120 {
                refreshed = store.refresh_statistics().await.unwrap();
                if refreshed || !postgres {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            assert_eq!(refreshed, postgres, "only PostgreSQL keeps statistics");
            assert!(
                !store.refresh_statistics().await.unwrap(),
                "not again until the ledger doubles"
            );
            // Link lookups planned from the new statistics still find the invoice.
            let paid = pay(store, "tx_77", 1000, "INV-77").await;
            assert_eq!(concluded(paid).len(), 1);
        }
    });
}

/// The hot paths run on plans their connections keep, made when a new database's tables are a
/// page or two, and kept until an ANALYZE, which autovacuum runs only after a minute or more of
/// traffic. Made to read by key, such plans stay right as the tables grow: the ledger's
/// read-ahead and lookups and a completion's locks and updates never read the whole table.
#[test]
fn plans_kept_from_a_new_database_still_read_by_key_once_it_has_grown() {
    // More than the five runs after which PostgreSQL keeps a statement's generic plan.
    const ROUNDS: i64 = 8;
    const GROWN: i64 = 4_000;
    runtime().block_on(async {
        let (mut config, _dir) = super::postgres_config().await;
        // One connection, so the plans made in the first rounds are the ones the last use.
        if let DatabaseConfig::Postgres(options) = &mut config {
            options.pool_size = 1;
        }
        let store = Store::open(&config).await.unwrap();
        // Autovacuum is kept away, as its ANALYZE would make the connection plan anew; and
        // before any plan is made, since changing a table's settings does so too.
        let session = super::postgres_session(&config).await;
        session
            .batch_execute(
                "ALTER TABLE ledger_entities SET (autovacuum_enabled = off);
                 ALTER TABLE deliveries SET (autovacuum_enabled = off);",
            )
            .await
            .unwrap();
        let endpoint = super::canonical_endpoint(&store).await;
        // Each round writes an invoice, a payment of it and a delivery, then delivers it: two
        // ledger entities, one delivery, updated twice (claimed, completed).
        let rounds = |first: i64| {
            let (store, endpoint) = (&store, &endpoint);
            async move {
                for n in first..first + ROUNDS {
                    issue(store, &format!("bcinv_{n}"), &format!("INV-{n}"), 1000).await;
                    let paid = pay(store, &format!("tx_{n}"), 1000, &format!("INV-{n}")).await;
                    assert_eq!(concluded(paid).len(), 1);
                    let owed = super::ingest_owed(store, endpoint, &format!("pay_{n}")).await;
                    super::deliver(store, &owed, endpoint.id).await;
                }
            }
        };
        rounds(0).await;

        // The tables grow by copies of their rows, under new keys that no lookup asks for.
        session
            .batch_execute(&format!(
                "INSERT INTO ledger_entities
                 SELECT (jsonb_populate_record(NULL::ledger_entities,
                    to_jsonb(e) || jsonb_build_object('id', e.id || '_' || n,
                        'provider_id', e.provider_id || '_' || n, 'number', e.number || '_' || n))).*
                 FROM (SELECT * FROM ledger_entities WHERE kind = 'invoice' LIMIT 1) e,
                      generate_series(1, {GROWN}) n;
                 INSERT INTO deliveries
                 SELECT (jsonb_populate_record(NULL::deliveries,
                    to_jsonb(d) || jsonb_build_object('id', d.id || '_' || n))).*
                 FROM (SELECT * FROM deliveries LIMIT 1) d, generate_series(1, {GROWN}) n;"
            ))
            .await
            .unwrap();
        drop(session);
        rounds(ROUNDS).await;
        // Closing ends the connection, and a server process reports its counters as it ends.
        store.close().await;

        // The counters of a table's reads arrive with those of its writes in the same
        // transactions, so once every write is counted, so is every read.
        let (entities, deliveries, delivery_updates) = (4 * ROUNDS, 2 * ROUNDS, 4 * ROUNDS);
        let session = super::postgres_session(&config).await;
        let mut read = Vec::new();
        for _ in 0..120 {
            read = session
                .query(
                    "SELECT relname, seq_tup_read + COALESCE(idx_tup_fetch, 0)
                     FROM pg_stat_user_tables
                     WHERE schemaname = current_schema()
                       AND ((relname = 'ledger_entities' AND n_tup_ins >= $1)
                         OR (relname = 'deliveries' AND n_tup_ins >= $2 AND n_tup_upd >= $3))
                     ORDER BY relname",
                    &[&(GROWN + entities), &(GROWN + deliveries), &delivery_updates],
                )
                .await
                .unwrap()
                .iter()
                .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1)))
                .collect();
            if read.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(read.len(), 2, "every counter arrived: {read:?}");
        for (table, rows_read) in read {
            assert!(
                rows_read < GROWN,
                "{table}: {rows_read} rows read, as many as a scan of it"
            );
        }
    });
}

/// A role that may write the ledger but not maintain it (ANALYZE skips such a table with only
/// a warning) gets an error from the statistics refresh, so the server backs off, instead of a
/// refresh that silently did nothing and would be asked for again every few seconds.
#[test]
fn a_refresh_that_analyzes_nothing_is_an_error() {
    runtime().block_on(async {
        let (config, _dir) = super::postgres_config().await;
        let DatabaseConfig::Postgres(options) = &config else {
            unreachable!("a PostgreSQL configuration")
        };
        let owner = Store::open(&config).await.unwrap();
        for n in 0..150 {
            issue(&owner, &format!("bcinv_{n}"), &format!("INV-{n}"), 1000).await;
        }

        let client = super::postgres_session(&config).await;
        let schema = options
            .url
            .split("search_path%3D%22")
            .nth(1)
            .and_then(|quoted| quoted.split("%22").next())
            .expect("the test URL names its schema");
        client
            .batch_execute(&format!(
                "DO $$ BEGIN CREATE ROLE billhook_test_writer LOGIN;
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
                 GRANT USAGE, CREATE ON SCHEMA {schema} TO billhook_test_writer;
                 GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema}
                    TO billhook_test_writer;
                 GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO billhook_test_writer;"
            ))
            .await
            .unwrap();
        // The same database and schema, as the writer role (the test server trusts local users).
        let (scheme, rest) = options.url.split_once("://").unwrap();
        let host_and_rest = rest.split_once('@').map_or(rest, |(_, after)| after);
        let mut writer_options = options.clone();
        writer_options.url = format!("{scheme}://billhook_test_writer@{host_and_rest}");
        let writer = Store::open(&DatabaseConfig::Postgres(writer_options))
            .await
            .unwrap();

        // The activity counters reach the statistics within seconds of a commit, not at once.
        let mut outcome = Ok(false);
        for _ in 0..120 {
            outcome = writer.refresh_statistics().await;
            if !matches!(outcome, Ok(false)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let error = outcome.expect_err("the writer role cannot analyze the ledger");
        assert!(error.to_string().contains("still stale"), "{error}");
        assert!(
            owner.refresh_statistics().await.unwrap(),
            "the owner can, and does"
        );
        writer.close().await;
        owner.close().await;
    });
}

/// A refresh that finds the ledger locked by another session's maintenance (another instance
/// analyzing it, autovacuum) did nothing, and says so without an error: it is not the role's
/// fault, and backing off would leave the plans stale for a minute.
#[test]
fn a_refresh_skipped_for_another_session_s_analyze_is_not_an_error() {
    runtime().block_on(async {
        let (config, _dir) = super::postgres_config().await;
        let store = Store::open(&config).await.unwrap();
        for n in 0..150 {
            issue(&store, &format!("bcinv_{n}"), &format!("INV-{n}"), 1000).await;
        }
        let mut other = super::postgres_session(&config).await;
        // The activity counters reach the statistics within seconds of a commit, not at once.
        let mut grown = false;
        for _ in 0..120 {
            let live: i64 = other
                .query_one(
                    "SELECT pg_stat_get_live_tuples(to_regclass('ledger_entities'))",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if live > 100 {
                grown = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(grown, "the ledger's growth reached the statistics");
        let maintaining = other.transaction().await.unwrap();
        maintaining
            .batch_execute("LOCK TABLE ledger_entities IN SHARE UPDATE EXCLUSIVE MODE")
            .await
            .unwrap();
        assert!(
            !store.refresh_statistics().await.unwrap(),
            "skipped, not failed"
        );
        maintaining.rollback().await.unwrap();
        assert!(
            store.refresh_statistics().await.unwrap(),
            "analyzed once the lock is gone"
        );
        store.close().await;
    });
}

/// Entries of providers that stamp no time, stored when their snapshots took the reception
/// time, take the unstamped time at the migration; other entries keep theirs.
#[test]
fn the_unstamped_times_migration_reorders_only_unstamped_providers() {
    runtime().block_on(async {
        // The migration is SQLite's 11th and PostgreSQL's 9th.
        for ((config, _dir), before) in [
            (super::sqlite_config(), 10),
            (super::postgres_config().await, 8),
        ] {
            let old = open_old(&config, before).await;
            issue(&old, "bcinv_u1", "INV-U1", 1000).await;
            pay(&old, "tx_u1", 400, "INV-U1").await;
            close_old(old, &config).await;

            let store = Store::open(&config).await.unwrap();
            let invoice = every(&store, SubjectKind::Invoice).await.remove(0);
            assert_eq!(invoice.content_precedence.at, Precedence::UNSTAMPED);
            assert_eq!(invoice.status_precedence.at, Precedence::UNSTAMPED);
            let payment = every(&store, SubjectKind::Payment).await.remove(0);
            assert!(payment.content_precedence.at > Precedence::UNSTAMPED);
            assert!(payment.status_precedence.at > Precedence::UNSTAMPED);
            store.close().await;
        }
    });
}

/// A write that panics (a bug in ledger code, which runs inside the write) fails alone: the
/// requests written in the same group as it are stored, on both backends.
#[test]
fn an_ingest_that_panics_fails_alone() {
    runtime().block_on(async {
        for test in backends().await {
            let store = &test.store;
            issue(store, "bcinv_panic", "INV-PANIC", 500).await;
            let mut settling = ingest_of(
                payment_data("tx_panic", "succeeded", 500, "INV-PANIC"),
                SUCCEEDED,
            );
            settling.concluder = Some(Arc::new(PanickingConcluder));
            // On PostgreSQL the writer is held up first, so what follows queues behind it and
            // is written as one group: the panicking write first, 30 others after it.
            let mut hold_up = None;
            if matches!(test.config, DatabaseConfig::Postgres(_)) {
                let session = super::postgres_session(&test.config).await;
                session
                    .batch_execute("BEGIN; LOCK TABLE inbound IN SHARE MODE")
                    .await
                    .unwrap();
                let store = store.clone();
                let blocked = tokio::spawn(async move {
                    store
                        .ingest(ingest_of(
                            invoice_data("bcinv_first", "INV-FIRST", 100),
                            Some(StatusRank::new(1)),
                        ))
                        .await
                });
                tokio::time::sleep(Duration::from_millis(200)).await;
                hold_up = Some((session, blocked));
            }
            let panicking = {
                let store = store.clone();
                tokio::spawn(async move { store.ingest(settling).await })
            };
            tokio::time::sleep(Duration::from_millis(50)).await;
            let others: Vec<_> = (0..30)
                .map(|n| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        store
                            .ingest(ingest_of(
                                invoice_data(&format!("bcinv_{n}"), &format!("INV-{n}"), 100),
                                Some(StatusRank::new(1)),
                            ))
                            .await
                    })
                })
                .collect();
            if let Some((session, blocked)) = hold_up {
                tokio::time::sleep(Duration::from_millis(200)).await;
                session.batch_execute("COMMIT").await.unwrap();
                blocked.await.unwrap().expect("the write held up");
            }
            for other in others {
                other
                    .await
                    .unwrap()
                    .expect("written beside a panicking write");
            }
            let error = panicking
                .await
                .unwrap()
                .expect_err("the panicking write fails")
                .to_string();
            assert!(error.contains("a bug in announcing"), "{error}");
            let invoices = every(store, SubjectKind::Invoice).await.len();
            let held_up = matches!(test.config, DatabaseConfig::Postgres(_));
            assert_eq!(invoices, if held_up { 32 } else { 31 });
            assert!(every(store, SubjectKind::Payment).await.is_empty());
        }
    });
}

/// Entries stored before the ledger kept the mode take it from their message's events: a
/// Zwitch entry whose event says `source.sandbox` becomes a test entry, others stay live.
#[test]
fn the_sandbox_migration_takes_the_mode_from_stored_events() {
    runtime().block_on(async {
        for ((config, _dir), before) in [
            (super::sqlite_config(), 11),
            (super::postgres_config().await, 9),
        ] {
            let old = open_old(&config, before).await;
            issue(&old, "bcinv_test", "INV-TEST", 1000).await;
            issue(&old, "bcinv_live", "INV-LIVE", 1000).await;
            close_old(old, &config).await;
            let event = "INSERT INTO events (id, type, source, subject_kind, subject_id,
                    inbound_id, occurred_at, received_at, payload)
                 SELECT 'ID', 'invoice.created', 'zw', 'invoice', provider_id,
                    inbound_id, 0, 0, PAYLOAD
                 FROM ledger_entities WHERE provider_id = 'ENTITY'";
            // The live entry's event holds an escaped U+0000, which PostgreSQL's jsonb refuses.
            for (id, entity, payload) in [
                (
                    "evt_sandbox",
                    "bcinv_test",
                    r#"'{"source":{"sandbox":true}}'"#,
                ),
                ("evt_nul", "bcinv_live", r#"'{"note":"\u0000"}'"#),
            ] {
                let event = event.replace("ID", id).replace("ENTITY", entity);
                schema_change(
                    &config,
                    &event.replace("PAYLOAD", &format!("CAST({payload} AS BLOB)")),
                    &event.replace("PAYLOAD", &format!("convert_to({payload}, 'UTF8')")),
                )
                .await;
            }

            let store = Store::open(&config).await.unwrap();
            let invoices = every(&store, SubjectKind::Invoice).await;
            let mode = |id: &str| {
                invoices
                    .iter()
                    .find(|e| e.provider_id == id)
                    .unwrap()
                    .sandbox
            };
            assert!(mode("bcinv_test"));
            assert!(!mode("bcinv_live"));
            store.close().await;
        }
    });
}
