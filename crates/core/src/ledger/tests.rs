//! The ledger rules against an in-memory repository: out-of-order and duplicate sequences, and
//! the property that arrival order never changes the outcome.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;
use crate::entity::{BillSnapshot, Direction, InvoiceSnapshot, PaymentReferences, PaymentSnapshot};

/// The ledger tables as maps, the conclusions recorded, and how many questions were asked.
#[derive(Default)]
struct MemoryRepo {
    entities: HashMap<String, Entity>,
    history: Vec<HistoryEntry>,
    conclusions: Vec<Conclusion>,
    /// The event id each conclusion was announced as, in order.
    announced_as: Vec<EventId>,
    questions: usize,
}

impl LedgerRepo for MemoryRepo {
    type Error = std::convert::Infallible;

    async fn entity(
        &mut self,
        kind: SubjectKind,
        provider: &str,
        provider_id: &str,
    ) -> Result<Option<Entity>, Self::Error> {
        self.questions += 1;
        Ok(self
            .entities
            .values()
            .find(|e| e.kind == kind && e.provider == provider && e.provider_id == provider_id)
            .cloned())
    }

    async fn entity_by_id(&mut self, id: &str) -> Result<Option<Entity>, Self::Error> {
        self.questions += 1;
        Ok(self.entities.get(id).cloned())
    }

    async fn targets_for(&mut self, refs: &PaymentRefs) -> Result<Vec<Entity>, Self::Error> {
        self.questions += 1;
        Ok(self
            .entities
            .values()
            .filter(|e| {
                matches!(e.kind, SubjectKind::Invoice | SubjectKind::Bill)
                    && link_reason(refs, e).is_some()
            })
            .cloned()
            .collect())
    }

    async fn linkable_payments(&mut self, target: &Entity) -> Result<Vec<Entity>, Self::Error> {
        self.questions += 1;
        Ok(self
            .entities
            .values()
            .filter(|e| {
                e.kind == SubjectKind::Payment
                    && e.linked_to.is_none()
                    && link_reason(&e.refs, target).is_some()
            })
            .cloned()
            .collect())
    }

    async fn linked_payments(&mut self, target: &Entity) -> Result<Vec<Entity>, Self::Error> {
        self.questions += 1;
        Ok(self
            .entities
            .values()
            .filter(|e| e.linked_to.as_ref() == Some(&target.id))
            .cloned()
            .collect())
    }

    async fn save(&mut self, entity: &Entity) -> Result<(), Self::Error> {
        self.entities.insert(entity.id.clone(), entity.clone());
        Ok(())
    }

    async fn record_history(&mut self, entry: &HistoryEntry) -> Result<(), Self::Error> {
        self.history.push(entry.clone());
        Ok(())
    }

    async fn conclude(&mut self, conclusion: &Conclusion) -> Result<EventId, Self::Error> {
        self.conclusions.push(conclusion.clone());
        let id = EventId::new();
        self.announced_as.push(id);
        Ok(id)
    }
}

impl MemoryRepo {
    fn apply(&mut self, fact: &Fact) -> Applied {
        match run_ready(apply(self, fact)) {
            Ok(applied) => applied,
            Err(never) => match never {},
        }
    }

    fn find(&self, kind: SubjectKind, provider_id: &str) -> &Entity {
        self.entities
            .values()
            .find(|e| e.kind == kind && e.provider_id == provider_id)
            .unwrap_or_else(|| panic!("no {kind:?} {provider_id}"))
    }

    /// The ledger with billhook's own ids replaced by what they identify, for comparing runs.
    fn outcome(&self) -> BTreeMap<String, String> {
        let key = |id: &str| {
            let e = &self.entities[id];
            format!("{}:{}:{}", e.kind.as_str(), e.provider, e.provider_id)
        };
        self.entities
            .values()
            .map(|e| {
                let mut e = e.clone();
                let linked = e.linked_to.as_deref().map(key);
                let settled = e.settled_event.is_some();
                e.id = String::new();
                e.settled_event = None;
                e.settled_at = None;
                e.created_at = Timestamp::from_unix_millis(0);
                e.updated_at = Timestamp::from_unix_millis(0);
                e.linked_to = None;
                (
                    format!("{}:{}:{}", e.kind.as_str(), e.provider, e.provider_id),
                    format!("{e:?} linked={linked:?} settled={settled}"),
                )
            })
            .collect()
    }
}

impl MemoryRepo {
    /// Every entity that answers some part of `reading`, as the stores' SQL finds them.
    fn read(&self, reading: &Reading) -> Vec<Entity> {
        let asked = |column: LookupColumn, value: Option<&String>| {
            value.is_some_and(|v| reading.values(column).contains(&v.as_str()))
        };
        self.entities
            .values()
            .filter(|e| {
                reading
                    .identities
                    .iter()
                    .any(|(kind, provider, provider_id)| {
                        e.kind == *kind && e.provider == *provider && e.provider_id == *provider_id
                    })
                    || (matches!(e.kind, SubjectKind::Invoice | SubjectKind::Bill)
                        && (asked(LookupColumn::TargetId, Some(&e.provider_id))
                            || asked(LookupColumn::TargetOrder, e.keys.order_id.as_ref())
                            || e.keys.numbers().any(|number| {
                                reading.values(LookupColumn::TargetNumber).contains(&number)
                            })))
                    || (e.kind == SubjectKind::Payment
                        && e.linked_to.is_none()
                        && e.refs
                            .each()
                            .any(|(which, v)| asked(LookupColumn::Payment(which), Some(v))))
                    || reading.ids.contains(&e.id)
            })
            .cloned()
            .collect()
    }

    /// The payments linked to any of `targets`.
    fn linked_to(&self, targets: &[String]) -> Vec<Entity> {
        self.entities
            .values()
            .filter(|e| e.linked_to.as_ref().is_some_and(|t| targets.contains(t)))
            .cloned()
            .collect()
    }
}

/// Applies the facts as the PostgreSQL store does, in groups of the given sizes (the last
/// group takes what is left): each group reads ahead (unless `read_ahead` is false, when every
/// question goes to the store), applies its facts through a `GroupedLedger` and writes its
/// entities at its end. The store counts the questions that reached it.
fn run_grouped(facts: &[Fact], group_sizes: &[usize], read_ahead: bool) -> MemoryRepo {
    let mut repo = GroupedLedger::new(MemoryRepo::default(), ReadAhead::default());
    let mut rest = facts;
    for size in group_sizes
        .iter()
        .copied()
        .chain(std::iter::repeat(usize::MAX))
    {
        if rest.is_empty() {
            break;
        }
        let (group, after) = rest.split_at(size.min(rest.len()));
        let group: Vec<&Fact> = group.iter().collect();
        repo.read_ahead = ReadAhead::default();
        if read_ahead {
            repo.read_ahead = read_ahead_from(&repo.store, &group);
        }
        for fact in group {
            match run_ready(apply(&mut repo, fact)) {
                Ok(_) => {}
                Err(never) => match never {},
            }
        }
        for entity in std::mem::take(&mut repo.unwritten).into_entities() {
            repo.store.entities.insert(entity.id.clone(), entity);
        }
        rest = after;
    }
    repo.store
}

/// What the PostgreSQL repository reads ahead for a group, from `stored`.
fn read_ahead_from(stored: &MemoryRepo, group: &[&Fact]) -> ReadAhead {
    let mut read_ahead = ReadAhead::default();
    let first = ReadAhead::first_round(group);
    let found = stored.read(&first);
    read_ahead.add(first, found);
    let second = read_ahead.second_round();
    let found = stored.read(&second);
    read_ahead.add(second, found);
    let targets = read_ahead.linked_targets(group);
    let found = stored.linked_to(&targets);
    read_ahead.add_linked(targets, found);
    read_ahead
}

const T0: i64 = 1_700_000_000_000;

fn invoice(id: &str, status: &str, amount: i64, at: i64, rank: StatusRank) -> Fact {
    let snapshot = InvoiceSnapshot {
        provider_invoice_id: id.to_owned(),
        number: Some(format!("N-{id}")),
        direction: None,
        status: Some(status.to_owned()),
        provider_status: Some(status.to_owned()),
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
        order_id: Some(format!("order_{id}")),
        payment_id: None,
        description: None,
        issued_at: None,
        paid_at: None,
        expires_at: None,
        cancelled_at: None,
        expired_at: None,
    };
    fact(
        EntityData::Invoice(snapshot),
        at,
        Some(rank),
        "razorpay",
        vec![],
    )
}

/// [`invoice`], as `provider` issued it (a Bharat Connect invoice is Zwitch's).
fn invoice_of(
    provider: &str,
    id: &str,
    status: &str,
    amount: i64,
    at: i64,
    rank: StatusRank,
) -> Fact {
    let mut fact = invoice(id, status, amount, at, rank);
    provider.clone_into(&mut fact.provider);
    provider.clone_into(&mut fact.source);
    fact
}

#[expect(
    clippy::too_many_arguments,
    reason = "one argument per field the cases vary, so each case reads as a row"
)]
fn payment(
    id: &str,
    status: &str,
    amount: i64,
    invoice: Option<&str>,
    merchant: Option<&str>,
    at: i64,
    rank: Option<StatusRank>,
    provider: &str,
) -> Fact {
    let references = PaymentReferences {
        invoice_id: invoice.map(str::to_owned),
        merchant_reference: merchant.map(str::to_owned),
        ..PaymentReferences::default()
    };
    let rule = if provider == "razorpay" {
        vec![PaymentRef::InvoiceId, PaymentRef::OrderId]
    } else {
        vec![PaymentRef::MerchantReference, PaymentRef::Remark]
    };
    let snapshot = payment_snapshot(id, status, amount, references);
    fact(EntityData::Payment(snapshot), at, rank, provider, rule)
}

fn payment_snapshot(
    id: &str,
    status: &str,
    amount: i64,
    references: PaymentReferences,
) -> PaymentSnapshot {
    PaymentSnapshot {
        provider_payment_id: id.to_owned(),
        rail: Some("upi".into()),
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
        references,
        description: None,
        failure: None,
        created_at: None,
        completed_at: None,
        settled: None,
        settled_at: None,
    }
}

/// A succeeded payment of `provider`, matched on `rule`, naming what `references` holds.
fn succeeded_payment(
    id: &str,
    amount: i64,
    at: i64,
    provider: &str,
    rule: Vec<PaymentRef>,
    references: PaymentReferences,
) -> Fact {
    let snapshot = payment_snapshot(id, "succeeded", amount, references);
    fact(
        EntityData::Payment(snapshot),
        at,
        Some(CAPTURED),
        provider,
        rule,
    )
}

/// A bill fetched from a biller: Setu's `refId` and the biller's reference for the customer.
fn bill(ref_id: &str, biller_ref_id: &str, amount: i64, at: i64) -> Fact {
    let snapshot = BillSnapshot {
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
        provider_status: Some("success".to_owned()),
        payment_limits: Vec::new(),
    };
    fact(
        EntityData::Bill(snapshot),
        at,
        Some(StatusRank::new(1)),
        "setu",
        vec![],
    )
}

/// Payments linking by each way the rules know but `lifecycle`'s two (an invoice's id as
/// `invoice_id`, its number as a merchant reference): an invoice's order, its id as a remark and
/// as a merchant reference, its number as a remark; a bill's reference and its biller's
/// reference for the customer. Each payment names only its own target.
fn every_reference() -> Vec<Fact> {
    // A Razorpay source told to match on merchant references and remarks too (Zwitch's
    // default rule): a payment names only its own provider's invoices.
    let zwitch = || vec![PaymentRef::MerchantReference, PaymentRef::Remark];
    let setu = || vec![PaymentRef::BillRefId, PaymentRef::BillerRefId];
    vec![
        invoice("inv_20", "issued", 1000, 0, ISSUED),
        succeeded_payment(
            "pay_20",
            300,
            10,
            "razorpay",
            vec![PaymentRef::InvoiceId, PaymentRef::OrderId],
            PaymentReferences {
                order_id: Some("order_inv_20".to_owned()),
                ..PaymentReferences::default()
            },
        ),
        succeeded_payment(
            "tx_21",
            200,
            20,
            "razorpay",
            zwitch(),
            PaymentReferences {
                remark: Some("inv_20".to_owned()),
                ..PaymentReferences::default()
            },
        ),
        succeeded_payment(
            "tx_22",
            250,
            22,
            "razorpay",
            zwitch(),
            PaymentReferences {
                merchant_reference: Some("inv_20".to_owned()),
                ..PaymentReferences::default()
            },
        ),
        succeeded_payment(
            "tx_23",
            250,
            24,
            "razorpay",
            zwitch(),
            PaymentReferences {
                remark: Some("N-inv_20".to_owned()),
                ..PaymentReferences::default()
            },
        ),
        bill("ref_30", "BR-30", 500, 30),
        succeeded_payment(
            "sp_31",
            200,
            40,
            "setu",
            setu(),
            PaymentReferences {
                bill_ref_id: Some("ref_30".to_owned()),
                ..PaymentReferences::default()
            },
        ),
        succeeded_payment(
            "sp_32",
            300,
            50,
            "setu",
            setu(),
            PaymentReferences {
                biller_ref_id: Some("BR-30".to_owned()),
                ..PaymentReferences::default()
            },
        ),
    ]
}

fn fact(
    data: EntityData,
    at: i64,
    rank: Option<StatusRank>,
    provider: &str,
    link_rule: Vec<PaymentRef>,
) -> Fact {
    Fact {
        event_id: EventId::new(),
        event_type: EventType::PaymentUpdated,
        inbound_id: InboundId::new(),
        source: provider.to_owned(),
        provider: provider.to_owned(),
        provider_event: "test".to_owned(),
        sandbox: false,
        occurred_at: Some(Timestamp::from_unix_millis(T0 + at)),
        not_before: None,
        received_at: Timestamp::from_unix_millis(T0 + 1_000_000 + at),
        snapshot: Snapshot::of(data),
        rank,
        link_rule,
    }
}

// Razorpay-like ranks, as the provider module defines them.
const ISSUED: StatusRank = StatusRank::new(1);
const PARTIALLY_PAID: StatusRank = StatusRank::new(2);
const PAID: StatusRank = StatusRank::settling(4);
const CREATED: StatusRank = StatusRank::new(0);
const AUTHORIZED: StatusRank = StatusRank::new(1);
const CAPTURED: StatusRank = StatusRank::new(2);

#[test]
fn a_late_older_snapshot_never_regresses_but_enters_the_history() {
    let mut repo = MemoryRepo::default();
    let captured = payment(
        "pay_1",
        "succeeded",
        500,
        None,
        None,
        20,
        Some(CAPTURED),
        "razorpay",
    );
    let authorized = payment(
        "pay_1",
        "authorized",
        500,
        None,
        None,
        10,
        Some(AUTHORIZED),
        "razorpay",
    );
    assert!(repo.apply(&captured).status_applied);
    assert!(!repo.apply(&authorized).status_applied);
    let entity = repo.find(SubjectKind::Payment, "pay_1");
    assert_eq!(entity.status.as_deref(), Some("succeeded"));
    assert_eq!(entity.counted, Amount::from_minor(500));
    assert_eq!(repo.history.len(), 2);
    assert!(!repo.history[1].applied);
}

#[test]
fn unknown_statuses_are_recorded_without_moving_a_ranked_state() {
    let mut repo = MemoryRepo::default();
    repo.apply(&payment(
        "tx_1",
        "succeeded",
        100,
        None,
        None,
        10,
        Some(StatusRank::new(1)),
        "zwitch",
    ));
    let odd = payment("tx_1", "on_hold", 100, None, None, 30, None, "zwitch");
    assert!(!repo.apply(&odd).status_applied);
    assert_eq!(
        repo.find(SubjectKind::Payment, "tx_1").status.as_deref(),
        Some("succeeded")
    );
    assert_eq!(
        repo.history.last().unwrap().status.as_deref(),
        Some("on_hold")
    );
    // An entity that never had a ranked status takes what comes.
    repo.apply(&payment(
        "tx_2", "on_hold", 100, None, None, 30, None, "zwitch",
    ));
    assert_eq!(
        repo.find(SubjectKind::Payment, "tx_2").status.as_deref(),
        Some("on_hold")
    );
}

#[test]
fn payments_before_their_invoice_are_linked_when_it_arrives() {
    let mut repo = MemoryRepo::default();
    repo.apply(&payment(
        "pay_a",
        "succeeded",
        600,
        Some("inv_1"),
        None,
        20,
        Some(CAPTURED),
        "razorpay",
    ));
    // A Razorpay source that matches on merchant references too.
    repo.apply(&succeeded_payment(
        "tx_b",
        400,
        30,
        "razorpay",
        vec![PaymentRef::MerchantReference, PaymentRef::Remark],
        PaymentReferences {
            merchant_reference: Some("N-inv_1".to_owned()),
            ..PaymentReferences::default()
        },
    ));
    repo.apply(&invoice("inv_1", "issued", 1000, 10, ISSUED));
    let invoice = repo.find(SubjectKind::Invoice, "inv_1").clone();
    assert_eq!(invoice.paid, Amount::from_minor(1000));
    assert_eq!(invoice.due, Some(Amount::ZERO));
    assert!(invoice.settled_event.is_some());
    assert_eq!(repo.conclusions.len(), 1);
    assert_eq!(
        repo.find(SubjectKind::Payment, "tx_b").link_rule.as_deref(),
        Some("merchant_reference")
    );
    assert_eq!(
        repo.find(SubjectKind::Payment, "pay_a")
            .link_rule
            .as_deref(),
        Some("invoice_id")
    );
}

#[test]
fn overpayment_and_a_paid_status_settle_once() {
    let mut repo = MemoryRepo::default();
    repo.apply(&invoice("inv_2", "issued", 1000, 10, ISSUED));
    repo.apply(&payment(
        "pay_x",
        "succeeded",
        700,
        Some("inv_2"),
        None,
        20,
        Some(CAPTURED),
        "razorpay",
    ));
    repo.apply(&payment(
        "pay_y",
        "succeeded",
        700,
        Some("inv_2"),
        None,
        30,
        Some(CAPTURED),
        "razorpay",
    ));
    let settled = repo.find(SubjectKind::Invoice, "inv_2").clone();
    assert_eq!(
        (settled.paid, settled.due, settled.overpaid),
        (
            Amount::from_minor(1400),
            Some(Amount::ZERO),
            Amount::from_minor(400)
        )
    );
    assert_eq!(repo.conclusions.len(), 1);
    // A paid status on an invoice nobody has seen payments for settles it too.
    repo.apply(&invoice("inv_3", "paid", 500, 10, PAID));
    assert_eq!(
        repo.find(SubjectKind::Invoice, "inv_3").due,
        Some(Amount::ZERO)
    );
    assert_eq!(repo.conclusions.len(), 2);
}

/// A Razorpay invoice paid in two parts, a Zwitch collect matched by reference, a failed try.
fn lifecycle() -> Vec<Fact> {
    vec![
        invoice("inv_9", "issued", 1000, 0, ISSUED),
        payment(
            "pay_1",
            "created",
            600,
            Some("inv_9"),
            None,
            10,
            Some(CREATED),
            "razorpay",
        ),
        // Later messages about the payment leave its invoice out: it is still the payment's.
        payment(
            "pay_1",
            "authorized",
            600,
            None,
            None,
            20,
            Some(AUTHORIZED),
            "razorpay",
        ),
        payment(
            "pay_1",
            "succeeded",
            600,
            None,
            None,
            30,
            Some(CAPTURED),
            "razorpay",
        ),
        invoice("inv_9", "partially_paid", 1000, 30, PARTIALLY_PAID),
        payment(
            "pay_2",
            "failed",
            400,
            Some("inv_9"),
            None,
            40,
            Some(CAPTURED),
            "razorpay",
        ),
        payment(
            "pay_3",
            "succeeded",
            400,
            Some("inv_9"),
            None,
            50,
            Some(CAPTURED),
            "razorpay",
        ),
        invoice("inv_9", "paid", 1000, 50, PAID),
        payment(
            "tx_7",
            "pending",
            250,
            None,
            Some("N-inv_10"),
            60,
            Some(StatusRank::new(0)),
            "zwitch",
        ),
        payment(
            "tx_7",
            "succeeded",
            250,
            None,
            Some("N-inv_10"),
            70,
            Some(StatusRank::new(1)),
            "zwitch",
        ),
        invoice_of("zwitch", "inv_10", "issued", 500, 55, ISSUED),
    ]
}

fn run(facts: &[Fact]) -> MemoryRepo {
    let mut repo = MemoryRepo::default();
    for fact in facts {
        repo.apply(fact);
    }
    repo
}

#[test]
fn the_lifecycle_in_order() {
    let repo = run(&lifecycle());
    let invoice = repo.find(SubjectKind::Invoice, "inv_9");
    assert_eq!(invoice.status.as_deref(), Some("paid"));
    assert_eq!(
        (invoice.paid, invoice.due),
        (Amount::from_minor(1000), Some(Amount::ZERO))
    );
    let partial = repo.find(SubjectKind::Invoice, "inv_10");
    assert_eq!(
        (partial.paid, partial.due),
        (Amount::from_minor(250), Some(Amount::from_minor(250)))
    );
    assert_eq!(repo.conclusions.len(), 1);
}

#[test]
fn every_reference_links_its_payment_in_order() {
    let repo = run(&every_reference());
    let invoice = repo.find(SubjectKind::Invoice, "inv_20").id.clone();
    let bill = repo.find(SubjectKind::Bill, "ref_30").id.clone();
    for (payment, target, reason) in [
        ("pay_20", &invoice, "order_id"),
        ("tx_21", &invoice, "remark"),
        ("tx_22", &invoice, "merchant_reference"),
        ("tx_23", &invoice, "remark"),
        ("sp_31", &bill, "bill_ref_id"),
        ("sp_32", &bill, "biller_ref_id"),
    ] {
        let payment = repo.find(SubjectKind::Payment, payment);
        assert_eq!(
            payment.linked_to.as_ref(),
            Some(target),
            "{}",
            payment.provider_id
        );
        assert_eq!(payment.link_rule.as_deref(), Some(reason));
    }
    let bill = repo.find(SubjectKind::Bill, "ref_30");
    assert_eq!(
        (bill.paid, bill.due),
        (Amount::from_minor(500), Some(Amount::ZERO))
    );
    assert_eq!(
        repo.conclusions.len(),
        1,
        "the invoice settles; a bill is only totalled"
    );
}

/// The common order, an invoice stored and then a payment naming it: the first round finds the
/// invoice by what the payment names, and the second has nothing left to ask, neither the
/// invoice's other payments (no question reads them) nor what it already read.
#[test]
fn a_payment_naming_a_stored_invoice_is_read_in_one_round() {
    let facts = every_reference();
    let stored = run(&facts[..1]);
    for payment in &facts[1..5] {
        let group = [payment];
        let mut read_ahead = ReadAhead::default();
        let first = ReadAhead::first_round(&group);
        let found = stored.read(&first);
        assert_eq!(found.len(), 1, "the invoice {payment:?} names");
        read_ahead.add(first, found);
        assert_eq!(read_ahead.second_round(), Reading::default());
    }
}

/// The numbers below `n`, in any order.
fn an_order_of(n: usize) -> impl Strategy<Value = Vec<usize>> {
    Just((0..n).collect::<Vec<usize>>()).prop_shuffle()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arrival_order_and_duplicates_never_change_the_ledger(
        copies in proptest::collection::vec(1usize..=3, 11),
        order in an_order_of(30),
    ) {
        let facts = lifecycle();
        let expected = run(&facts);
        let mut delivered: Vec<Fact> = Vec::new();
        for (fact, count) in facts.iter().zip(&copies) {
            for _ in 0..*count {
                delivered.push(fact.clone());
            }
        }
        let mut shuffled: Vec<Fact> = order.iter().filter(|i| **i < delivered.len()).map(|i| delivered[*i].clone()).collect();
        shuffled.extend(delivered.iter().skip(30).cloned());
        let actual = run(&shuffled);
        prop_assert_eq!(actual.outcome(), expected.outcome());
        prop_assert_eq!(actual.conclusions.len(), 1, "exactly one settlement");
    }

    #[test]
    fn facts_read_ahead_and_written_in_groups_give_the_same_ledger(
        group_sizes in proptest::collection::vec(1usize..=8, 1..12),
        order in an_order_of(11),
    ) {
        let facts = lifecycle();
        let shuffled: Vec<Fact> = order.iter().map(|i| facts[*i].clone()).collect();
        let expected = run(&shuffled);
        let grouped = run_grouped(&shuffled, &group_sizes, true);
        prop_assert_eq!(grouped.questions, 0, "everything was read ahead");
        // Nothing read ahead: every question goes to the store and is merged with what the
        // group has not written yet.
        let unread = run_grouped(&shuffled, &group_sizes, false);
        prop_assert!(unread.questions > 0);
        for actual in [grouped, unread] {
            prop_assert_eq!(actual.outcome(), expected.outcome());
            prop_assert_eq!(actual.history.len(), expected.history.len());
            prop_assert_eq!(actual.conclusions.len(), 1, "exactly one settlement");
        }
    }

    /// An invoice is found by every number its messages gave it: the one it has now, the one
    /// it had before, and an edit's whose snapshot never wins. Every order, one by one and
    /// grouped (read ahead, with nothing left to ask, or not at all), links each payment
    /// naming one of them, to the same ledger.
    #[test]
    fn an_invoice_is_found_by_every_number_it_had(
        group_sizes in proptest::collection::vec(1usize..=6, 1..6),
        order in an_order_of(6),
    ) {
        let facts = renumbered_invoice();
        let shuffled: Vec<Fact> = order.iter().map(|i| facts[*i].clone()).collect();
        let expected = run(&facts);
        let grouped = run_grouped(&shuffled, &group_sizes, true);
        prop_assert_eq!(grouped.questions, 0, "everything was read ahead");
        for repo in [run(&shuffled), grouped, run_grouped(&shuffled, &group_sizes, false)] {
            prop_assert_eq!(repo.outcome(), expected.outcome());
            let invoice = repo.find(SubjectKind::Invoice, "bc_R");
            prop_assert_eq!(invoice.keys.number.as_deref(), Some("N-NEW"));
            prop_assert_eq!(&invoice.keys.former_numbers, &["N-EDIT", "N-OLD"]);
            for payment in ["tx_old", "tx_new", "tx_edit"] {
                prop_assert_eq!(
                    repo.find(SubjectKind::Payment, payment).linked_to.as_deref(),
                    Some(invoice.id.as_str())
                );
            }
            prop_assert_eq!(invoice.due, Some(Amount::ZERO));
            prop_assert_eq!(repo.conclusions.len(), 1, "settled once");
        }
    }

    /// The same for payments naming their targets by every other reference: each column is
    /// read ahead for the values that could match in it, and nothing is left to ask.
    #[test]
    fn every_reference_is_read_ahead_in_its_own_column(
        group_sizes in proptest::collection::vec(1usize..=5, 1..8),
        order in an_order_of(8),
    ) {
        let facts = every_reference();
        let shuffled: Vec<Fact> = order.iter().map(|i| facts[*i].clone()).collect();
        let expected = run(&shuffled);
        let grouped = run_grouped(&shuffled, &group_sizes, true);
        prop_assert_eq!(grouped.questions, 0, "everything was read ahead");
        prop_assert_eq!(grouped.outcome(), expected.outcome());
        prop_assert_eq!(grouped.conclusions.len(), 1);
    }
}

/// A Bharat Connect invoice numbered `N-OLD`, then `N-NEW`, and an older edit numbering it
/// `N-EDIT`; a payment naming each number, together its amount.
fn renumbered_invoice() -> Vec<Fact> {
    let numbered = |at: i64, number: &str| {
        let mut fact = invoice_of("zwitch", "bc_R", "issued", 1000, at, ISSUED);
        if let EntityData::Invoice(mut invoice) = fact.snapshot.data().clone() {
            invoice.number = Some(number.to_owned());
            fact.snapshot = Snapshot::of(EntityData::Invoice(invoice));
        }
        fact
    };
    let paying = |id: &str, amount: i64, number: &str| {
        let at = 30;
        payment(
            id,
            "succeeded",
            amount,
            None,
            Some(number),
            at,
            Some(CAPTURED),
            "zwitch",
        )
    };
    vec![
        numbered(10, "N-OLD"),
        numbered(20, "N-NEW"),
        numbered(5, "N-EDIT"),
        paying("tx_old", 300, "N-OLD"),
        paying("tx_new", 400, "N-NEW"),
        paying("tx_edit", 300, "N-EDIT"),
    ]
}

/// A number one invoice had and another has now: a payment naming it, arriving after both,
/// pays the one that has it now, though the other's provider id sorts first.
#[test]
fn a_current_number_names_its_invoice_before_a_former_one() {
    let numbered = |id: &str, at: i64, number: &str| {
        let mut fact = invoice_of("zwitch", id, "issued", 1000, at, ISSUED);
        if let EntityData::Invoice(mut invoice) = fact.snapshot.data().clone() {
            invoice.number = Some(number.to_owned());
            fact.snapshot = Snapshot::of(EntityData::Invoice(invoice));
        }
        fact
    };
    let invoices = [
        numbered("bc_A", 10, "N-7"),
        numbered("bc_A", 20, "N-8"),
        numbered("bc_B", 10, "N-7"),
    ];
    let paid = payment(
        "tx_7",
        "succeeded",
        1000,
        None,
        Some("N-7"),
        30,
        Some(CAPTURED),
        "zwitch",
    );
    for order in [[0, 1, 2], [2, 0, 1], [1, 2, 0]] {
        let facts: Vec<Fact> = order
            .iter()
            .map(|i| invoices[*i].clone())
            .chain([paid.clone()])
            .collect();
        for repo in [run(&facts), run_grouped(&facts, &[4], true)] {
            let now_numbered = repo.find(SubjectKind::Invoice, "bc_B");
            assert_eq!(
                repo.find(SubjectKind::Payment, "tx_7").linked_to.as_deref(),
                Some(now_numbered.id.as_str()),
                "{order:?}"
            );
            assert_eq!(
                repo.find(SubjectKind::Invoice, "bc_A").keys.former_numbers,
                ["N-7"]
            );
        }
    }
}

#[test]
fn an_unwritten_entity_replaces_what_the_store_found_and_leaves_what_it_no_longer_answers() {
    let mut stored = run(&lifecycle()[..1]);
    let invoice = stored.find(SubjectKind::Invoice, "inv_9").clone();
    let mut unwritten = UnwrittenEntities::default();
    let found = run_ready(stored.linkable_payments(&invoice));
    assert_eq!(found, Ok(Vec::new()));

    // A payment saved in this transaction answers for its invoice before it is written.
    let payments = run_grouped(&lifecycle()[1..2], &[], true);
    let mut payment = payments.find(SubjectKind::Payment, "pay_1").clone();
    unwritten.save(&payment);
    assert_eq!(
        unwritten.linkable_payments(&invoice, Vec::new()),
        vec![payment.clone()]
    );
    assert_eq!(
        unwritten.entity(SubjectKind::Payment, "razorpay", "pay_1"),
        Some(&payment)
    );

    // Once linked (unwritten), the stored unlinked version no longer answers, and the linked
    // one answers for the invoice's linked payments.
    stored.entities.insert(payment.id.clone(), payment.clone());
    payment.linked_to = Some(invoice.id.clone());
    unwritten.save(&payment);
    let stored_unlinked = run_ready(stored.linkable_payments(&invoice)).unwrap();
    assert_eq!(stored_unlinked.len(), 1);
    assert_eq!(
        unwritten.linkable_payments(&invoice, stored_unlinked),
        Vec::new()
    );
    assert_eq!(
        unwritten.linked_payments(&invoice.id, Vec::new()),
        vec![payment.clone()]
    );
    assert_eq!(unwritten.into_entities(), vec![payment]);
}

#[test]
fn a_payment_and_the_invoice_it_names_share_a_lock_name() {
    let invoice = invoice("inv_1", "issued", 1000, 0, ISSUED);
    let by_id = payment(
        "pay_1",
        "succeeded",
        500,
        Some("inv_1"),
        None,
        0,
        Some(CAPTURED),
        "razorpay",
    );
    let by_number = payment(
        "pay_2",
        "succeeded",
        500,
        None,
        Some("N-inv_1"),
        0,
        None,
        "zwitch",
    );
    let unrelated = payment(
        "pay_3",
        "succeeded",
        500,
        Some("inv_9"),
        None,
        0,
        Some(CAPTURED),
        "razorpay",
    );
    let invoice_names = lock_names(std::slice::from_ref(&invoice));
    // Two writers wait for each other when they name the same lock and one holds it alone.
    let conflict = |a: &[LockName], b: &[LockName]| {
        a.iter().any(|x| {
            b.iter()
                .any(|y| x.name == y.name && (x.exclusive || y.exclusive))
        })
    };
    let names = |fact: &Fact| lock_names(std::slice::from_ref(fact));
    assert!(conflict(&names(&by_id), &invoice_names));
    assert!(conflict(&names(&by_number), &invoice_names));
    assert!(!conflict(&names(&unrelated), &invoice_names));
    // Payments that seek the same reference do not wait for each other…
    let same_reference = payment(
        "pay_4",
        "succeeded",
        700,
        None,
        Some("N-inv_1"),
        0,
        None,
        "zwitch",
    );
    assert!(!conflict(&names(&by_number), &names(&same_reference)));
    // …but two snapshots of one payment do.
    assert!(conflict(&names(&by_number), &names(&by_number.clone())));

    let both = lock_names(&[by_id.clone(), by_id, invoice]);
    let mut sorted: Vec<&str> = both.iter().map(|l| l.name.as_str()).collect();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        both.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        sorted,
        "names come sorted and once each"
    );
    let invoice_ref = format!("ref/{}", "inv_1");
    assert!(
        both.iter().any(|l| l.name == invoice_ref && l.exclusive),
        "a name any fact needs alone is taken alone: {both:?}"
    );
}

#[test]
fn the_stable_hash_is_fixed_across_releases() {
    // Stored precedences depend on these values: they must never change.
    assert_eq!(stable_hash(&[]), 0xcbf2_9ce4_8422_2325);
    assert_eq!(stable_hash(&["a"]), 0x089b_e207_b544_f1e4);
    assert_ne!(stable_hash(&["ab", ""]), stable_hash(&["a", "b"]));
}

#[test]
fn at_the_same_provider_time_the_higher_status_gives_the_content() {
    for order in [[0, 1], [1, 0]] {
        let mut repo = MemoryRepo::default();
        let facts = [
            invoice("inv_9", "partially_paid", 1000, 5, PARTIALLY_PAID),
            invoice("inv_9", "paid", 1000, 5, PAID),
        ];
        for index in order {
            repo.apply(&facts[index]);
        }
        let entity = repo.find(SubjectKind::Invoice, "inv_9");
        let EntityData::Invoice(snapshot) = entity.snapshot.data() else {
            panic!("not an invoice");
        };
        assert_eq!(snapshot.status.as_deref(), Some("paid"));
        assert_eq!(entity.status.as_deref(), Some("paid"));
    }
}

#[test]
fn every_kind_owns_a_range_of_ids_that_no_other_kind_enters() {
    let kinds = [
        SubjectKind::Invoice,
        SubjectKind::Payment,
        SubjectKind::Bill,
        SubjectKind::Dispute,
        SubjectKind::Biller,
        SubjectKind::Document,
        SubjectKind::NetworkMember,
    ];
    // The earliest and latest ids a kind can have, and one of now.
    let times = [0, Timestamp::now().unix_millis(), 281_474_976_710_655];
    for kind in kinds {
        for at in times {
            let id = crate::ids::prefixed_id(prefix(kind), Timestamp::from_unix_millis(at));
            for other in kinds {
                let (lower, upper) = id_bounds(other);
                let inside = id.as_str() > lower && id.as_str() < upper.as_str();
                assert_eq!(
                    inside,
                    other == kind,
                    "{id} against the bounds of {other:?}"
                );
            }
        }
    }
}

#[test]
fn a_stored_snapshot_keeps_its_text_and_equals_the_data_it_holds() {
    let fresh = payment(
        "pay_1",
        "succeeded",
        500,
        None,
        Some("INV-1"),
        0,
        None,
        "zwitch",
    )
    .snapshot;
    let value: serde_json::Value = serde_json::from_str(fresh.json().unwrap()).unwrap();
    let pretty = serde_json::to_string_pretty(&value).unwrap();
    let stored = Snapshot::from_stored(SubjectKind::Payment, &pretty).unwrap();
    // Saved again as it was read, never re-serialized.
    assert_eq!(stored.json(), Some(pretty.as_str()));
    assert_ne!(stored.json(), fresh.json());
    assert_eq!(stored, fresh);
    assert!(Snapshot::from_stored(SubjectKind::Invoice, "{\"amount\":").is_err());
}

/// A Bharat Connect invoice's life: its events carry no time, and the edit no amount.
fn unstamped_invoice_lifecycle() -> Vec<Fact> {
    let unstamped = |mut fact: Fact| {
        fact.occurred_at = None;
        fact.provider = "zwitch".to_owned();
        fact.source = "zwitch".to_owned();
        fact
    };
    let created = unstamped(invoice("bc_1", "sent_to_buyer", 400, 0, StatusRank::new(0)));
    let confirmed = unstamped(invoice("bc_1", "accepted", 400, 0, StatusRank::new(1)));
    let EntityData::Invoice(mut edited) = created.snapshot.data().clone() else {
        unreachable!("an invoice")
    };
    edited.amount = None;
    edited.status = None;
    edited.provider_status = None;
    edited.description = Some("edited".to_owned());
    let edited = unstamped(fact(
        EntityData::Invoice(edited),
        0,
        None,
        "zwitch",
        Vec::new(),
    ));
    let paid = payment(
        "pay_bc",
        "succeeded",
        400,
        None,
        Some("N-bc_1"),
        10,
        Some(CAPTURED),
        "zwitch",
    );
    vec![created, confirmed, edited, paid]
}

#[test]
fn an_edit_without_an_amount_leaves_the_invoice_s_amount() {
    let repo = run(&unstamped_invoice_lifecycle());
    let invoice = repo.find(SubjectKind::Invoice, "bc_1");
    assert_eq!(invoice.amount, Some(Amount::from_minor(400)));
    assert_eq!(invoice.due, Some(Amount::ZERO));
    assert_eq!(invoice.status.as_deref(), Some("accepted"));
    assert_eq!(repo.conclusions.len(), 1, "settled by the payment");
}

/// A payment's link follows its references as every order of its messages ends them: a later
/// message that names a stronger reference moves it to the invoice that reference names, and
/// one that names a stronger reference to the same invoice says so in `link_rule`.
#[test]
fn a_payment_s_link_is_the_same_in_every_order_of_its_messages() {
    let zwitch_payment = |status: &str, merchant: Option<&str>, remark: &str, at, rank| {
        let references = PaymentReferences {
            merchant_reference: merchant.map(str::to_owned),
            remark: Some(remark.to_owned()),
            ..PaymentReferences::default()
        };
        fact(
            EntityData::Payment(payment_snapshot("tx_1", status, 1000, references)),
            at,
            Some(rank),
            "zwitch",
            vec![PaymentRef::MerchantReference, PaymentRef::Remark],
        )
    };
    let invoices = [
        invoice_of("zwitch", "bc_A", "issued", 1000, 0, ISSUED),
        invoice_of("zwitch", "bc_B", "issued", 1000, 0, ISSUED),
    ];
    let pending = zwitch_payment("pending", None, "N-bc_B", 10, StatusRank::new(0));
    let succeeded = zwitch_payment(
        "succeeded",
        Some("N-bc_A"),
        "N-bc_B",
        20,
        StatusRank::new(1),
    );
    let runs = [
        [pending.clone(), succeeded.clone()],
        [succeeded.clone(), pending],
    ]
    .map(|payments| {
        let facts: Vec<Fact> = invoices.iter().cloned().chain(payments).collect();
        run(&facts)
    });
    assert_eq!(runs[0].outcome(), runs[1].outcome());
    for repo in &runs {
        let named = repo.find(SubjectKind::Invoice, "bc_A");
        let payment = repo.find(SubjectKind::Payment, "tx_1");
        assert_eq!(payment.linked_to.as_deref(), Some(named.id.as_str()));
        assert_eq!(payment.link_rule.as_deref(), Some("merchant_reference"));
        assert_eq!(named.due, Some(Amount::ZERO));
        assert_eq!(repo.find(SubjectKind::Invoice, "bc_B").paid, Amount::ZERO);
        assert_eq!(repo.conclusions.len(), 1, "bc_A settled, once");
    }

    // Moved after it had settled the invoice it left: that settlement is taken back.
    let left_behind = zwitch_payment("succeeded", None, "N-bc_B", 10, StatusRank::new(1));
    let facts: Vec<Fact> = invoices
        .iter()
        .cloned()
        .chain([left_behind, succeeded])
        .collect();
    let repo = run(&facts);
    let kinds: Vec<EventType> = repo
        .conclusions
        .iter()
        .map(Conclusion::event_type)
        .collect();
    assert_eq!(
        kinds,
        [
            EventType::InvoiceSettled,
            EventType::InvoiceUnsettled,
            EventType::InvoiceSettled
        ]
    );
    assert_eq!(repo.find(SubjectKind::Invoice, "bc_B").paid, Amount::ZERO);
}

/// A source's `reconcile` rule narrowed after a payment linked moves nothing: its next message
/// names no reference the payment had not, so the link stays, with nothing announced.
#[test]
fn a_narrowed_rule_alone_moves_no_payment() {
    let references = PaymentReferences {
        merchant_reference: Some("N-bc_A".to_owned()),
        remark: Some("N-bc_B".to_owned()),
        ..PaymentReferences::default()
    };
    let message = |status: &str, at, rule| {
        fact(
            EntityData::Payment(payment_snapshot("tx_2", status, 1000, references.clone())),
            at,
            Some(StatusRank::new(1)),
            "zwitch",
            rule,
        )
    };
    let facts = [
        invoice_of("zwitch", "bc_A", "issued", 1000, 0, ISSUED),
        invoice_of("zwitch", "bc_B", "issued", 1000, 0, ISSUED),
        message(
            "succeeded",
            10,
            vec![PaymentRef::MerchantReference, PaymentRef::Remark],
        ),
        // The source now matches on remarks only, which name bc_B.
        message("succeeded", 20, vec![PaymentRef::Remark]),
        message("succeeded", 30, vec![PaymentRef::Remark]),
    ];
    let repo = run(&facts);
    let kept = repo.find(SubjectKind::Invoice, "bc_A");
    let payment = repo.find(SubjectKind::Payment, "tx_2");
    assert_eq!(payment.linked_to.as_deref(), Some(kept.id.as_str()));
    assert_eq!(kept.due, Some(Amount::ZERO));
    assert_eq!(
        repo.conclusions.len(),
        1,
        "bc_A settled once, nothing moved"
    );
}

/// A collect request's update that names no time of its own (Zwitch states none for a failure
/// or an expiry) is no older than the request it updates: its snapshot replaces the creation's
/// in either order, while its history entry stays without a provider time.
#[test]
fn an_update_no_older_than_its_creation_replaces_the_creation_s_snapshot() {
    let created = payment(
        "tx_1",
        "pending",
        100,
        None,
        None,
        0,
        Some(StatusRank::new(0)),
        "zwitch",
    );
    let mut failed = payment(
        "tx_1",
        "failed",
        100,
        None,
        None,
        0,
        Some(StatusRank::new(1)),
        "zwitch",
    );
    failed.not_before = failed.occurred_at.take();
    for facts in [[created.clone(), failed.clone()], [failed.clone(), created]] {
        let repo = run(&facts);
        let entity = repo.find(SubjectKind::Payment, "tx_1");
        assert_eq!(entity.status.as_deref(), Some("failed"));
        let EntityData::Payment(snapshot) = entity.snapshot.data() else {
            unreachable!("a payment")
        };
        assert_eq!(snapshot.status, "failed", "the update's snapshot is kept");
        let entry = repo
            .history
            .iter()
            .find(|entry| entry.event_id == failed.event_id)
            .unwrap();
        assert_eq!(entry.occurred_at, failed.received_at);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Without the provider's time, arrival (retries come at any time) orders nothing: each
    /// fact arrives at its position in the shuffled order, and the ledger is the same.
    #[test]
    fn facts_without_a_provider_time_give_one_ledger_in_every_order(order in an_order_of(4)) {
        let facts = unstamped_invoice_lifecycle();
        let arriving = |order: &[usize]| -> Vec<Fact> {
            order
                .iter()
                .enumerate()
                .map(|(position, i)| {
                    let mut fact = facts[*i].clone();
                    let offset = i64::try_from(position).unwrap_or(0) * 60_000;
                    fact.received_at = Timestamp::from_unix_millis(T0 + 1_000_000 + offset);
                    fact
                })
                .collect()
        };
        let expected = run(&arriving(&[0, 1, 2, 3]));
        let actual = run(&arriving(&order));
        prop_assert_eq!(actual.outcome(), expected.outcome());
        prop_assert_eq!(actual.conclusions.len(), 1, "exactly one settlement");
    }
}

/// Two months' bills for one customer share its `billerRefId`; the payment names this month's
/// bill by its `refId` as well. It pays that bill, however the bills' ids sort and in whichever
/// order they and the payment came, read ahead or asked for.
#[test]
fn a_payment_links_to_the_target_its_strongest_reference_names() {
    let last_month = bill("ref_A", "CUSTOMER-7", 50_000, 0);
    let this_month = bill("ref_B", "CUSTOMER-7", 70_000, 10);
    let paid = succeeded_payment(
        "sp_B",
        70_000,
        20,
        "setu",
        vec![PaymentRef::BillRefId, PaymentRef::BillerRefId],
        PaymentReferences {
            bill_ref_id: Some("ref_B".to_owned()),
            biller_ref_id: Some("CUSTOMER-7".to_owned()),
            ..PaymentReferences::default()
        },
    );
    // Before its own bill too: it waits for it rather than pay last month's.
    let facts = [last_month.clone(), paid.clone(), this_month.clone()];
    for repo in [run(&facts), run_grouped(&facts, &[2, 1], true)] {
        let paid_bill = repo.find(SubjectKind::Bill, "ref_B");
        assert_eq!(
            repo.find(SubjectKind::Payment, "sp_B").linked_to.as_ref(),
            Some(&paid_bill.id)
        );
        assert_eq!(paid_bill.due, Some(Amount::ZERO));
        assert_eq!(
            repo.find(SubjectKind::Bill, "ref_A").due,
            Some(Amount::from_minor(50_000))
        );
    }
    for bills in [
        [last_month.clone(), this_month.clone()],
        [this_month, last_month],
    ] {
        let facts = [bills[0].clone(), bills[1].clone(), paid.clone()];
        for repo in [
            run(&facts),
            run_grouped(&facts, &[3], true),
            run_grouped(&facts, &[2, 1], false),
        ] {
            let payment = repo.find(SubjectKind::Payment, "sp_B");
            let paid_bill = repo.find(SubjectKind::Bill, "ref_B");
            assert_eq!(payment.linked_to.as_ref(), Some(&paid_bill.id));
            assert_eq!(payment.link_rule.as_deref(), Some("bill_ref_id"));
            assert_eq!(paid_bill.due, Some(Amount::ZERO));
            let other = repo.find(SubjectKind::Bill, "ref_A");
            assert_eq!(other.due, Some(Amount::from_minor(50_000)));
        }
    }
}

/// Payments too large to add up leave the invoice paid at the largest amount, in both orders,
/// rather than dropping the payment that came last.
#[test]
fn payments_beyond_the_largest_amount_add_up_to_it_in_every_order() {
    let huge = i64::MAX / 2 + 1;
    let first = payment(
        "pay_h1",
        "succeeded",
        huge,
        Some("inv_h"),
        None,
        20,
        Some(CAPTURED),
        "razorpay",
    );
    let second = payment(
        "pay_h2",
        "succeeded",
        huge + 1,
        Some("inv_h"),
        None,
        30,
        Some(CAPTURED),
        "razorpay",
    );
    let issued = invoice("inv_h", "issued", 1000, 10, ISSUED);
    for facts in [
        [issued.clone(), first.clone(), second.clone()],
        [issued, second, first],
    ] {
        let repo = run(&facts);
        let invoice = repo.find(SubjectKind::Invoice, "inv_h");
        assert_eq!(invoice.paid, Amount::from_minor(i64::MAX));
        assert_eq!(invoice.due, Some(Amount::ZERO));
    }
}

/// A payment in another currency than the invoice it names is not linked to it, in either
/// order: it would count towards nothing and hide from the unmatched payments.
#[test]
fn a_payment_in_another_currency_stays_unmatched() {
    let issued = invoice("inv_fx", "issued", 1000, 10, ISSUED);
    let mut paid = payment(
        "pay_fx",
        "succeeded",
        1000,
        Some("inv_fx"),
        None,
        20,
        Some(CAPTURED),
        "razorpay",
    );
    let EntityData::Payment(mut snapshot) = paid.snapshot.data().clone() else {
        unreachable!("a payment")
    };
    snapshot.currency = Currency::USD;
    paid.snapshot = Snapshot::of(EntityData::Payment(snapshot));
    for facts in [[issued.clone(), paid.clone()], [paid, issued]] {
        for repo in [run(&facts), run_grouped(&facts, &[2], true)] {
            let payment = repo.find(SubjectKind::Payment, "pay_fx");
            assert_eq!(payment.linked_to, None);
            assert_eq!(payment.counted, Amount::from_minor(1000));
            let invoice = repo.find(SubjectKind::Invoice, "inv_fx");
            assert_eq!(invoice.due, Some(Amount::from_minor(1000)));
        }
    }
}

/// A payment links only to an invoice of its own mode: a test payment naming a real invoice's
/// number never counts towards it, nor a real payment towards a test invoice. Each pair in
/// either order, written one by one and grouped.
#[test]
fn payments_link_only_to_invoices_of_their_own_mode() {
    let in_mode = |mut fact: Fact, sandbox: bool| {
        fact.sandbox = sandbox;
        fact
    };
    let paying = |id: &str, invoice: &str| {
        payment(
            id,
            "succeeded",
            1000,
            None,
            Some(invoice),
            20,
            Some(CAPTURED),
            "zwitch",
        )
    };
    for (invoice_sandbox, payment_sandbox) in [(false, true), (true, false), (true, true)] {
        let issued = in_mode(
            invoice_of("zwitch", "inv_mode", "issued", 1000, 10, ISSUED),
            invoice_sandbox,
        );
        let paid = in_mode(paying("pay_mode", "N-inv_mode"), payment_sandbox);
        for facts in [[issued.clone(), paid.clone()], [paid, issued]] {
            for repo in [run(&facts), run_grouped(&facts, &[2], true)] {
                let payment = repo.find(SubjectKind::Payment, "pay_mode");
                let invoice = repo.find(SubjectKind::Invoice, "inv_mode");
                assert_eq!(invoice.sandbox, invoice_sandbox);
                assert_eq!(payment.sandbox, payment_sandbox);
                if invoice_sandbox == payment_sandbox {
                    assert_eq!(payment.linked_to, Some(invoice.id.clone()));
                    assert_eq!(invoice.due, Some(Amount::ZERO));
                } else {
                    assert_eq!(
                        payment.linked_to, None,
                        "{invoice_sandbox}/{payment_sandbox}"
                    );
                    assert_eq!(invoice.due, Some(Amount::from_minor(1000)));
                }
            }
        }
    }
}

/// A payment's references name only its own provider's invoices: a Zwitch payment whose
/// merchant reference equals a Razorpay invoice's number pays the Zwitch invoice of that number,
/// or nothing, never the Razorpay one (whose provider name sorts first). Every order, written
/// one by one and grouped.
#[test]
fn a_payment_names_only_its_own_providers_invoices() {
    let razorpay = invoice("inv_same", "issued", 1000, 10, ISSUED);
    let zwitch = invoice_of("zwitch", "bcinv_same", "issued", 1000, 10, ISSUED);
    let with_number = |mut fact: Fact| {
        if let EntityData::Invoice(mut invoice) = fact.snapshot.data().clone() {
            invoice.number = Some("INV-7".to_owned());
            fact.snapshot = Snapshot::of(EntityData::Invoice(invoice));
        }
        fact
    };
    let (razorpay, zwitch) = (with_number(razorpay), with_number(zwitch));
    let paid = payment(
        "tx_same",
        "succeeded",
        1000,
        None,
        Some("INV-7"),
        20,
        Some(CAPTURED),
        "zwitch",
    );
    for facts in [
        vec![razorpay.clone(), paid.clone()],
        vec![paid.clone(), razorpay.clone()],
    ] {
        for repo in [run(&facts), run_grouped(&facts, &[2], true)] {
            assert_eq!(repo.find(SubjectKind::Payment, "tx_same").linked_to, None);
            let invoice = repo.find(SubjectKind::Invoice, "inv_same");
            assert_eq!(invoice.paid, Amount::ZERO);
            assert!(invoice.settled_event.is_none());
        }
    }
    for facts in [
        vec![razorpay.clone(), zwitch.clone(), paid.clone()],
        vec![paid.clone(), razorpay.clone(), zwitch.clone()],
        vec![zwitch, paid, razorpay],
    ] {
        for repo in [run(&facts), run_grouped(&facts, &[3], true)] {
            let own = repo.find(SubjectKind::Invoice, "bcinv_same").id.clone();
            assert_eq!(
                repo.find(SubjectKind::Payment, "tx_same").linked_to,
                Some(own)
            );
            assert_eq!(
                repo.find(SubjectKind::Invoice, "inv_same").paid,
                Amount::ZERO
            );
        }
    }
}

#[test]
fn payments_never_link_to_an_invoice_the_business_received() {
    let with_direction = |mut fact: Fact, direction: Direction| {
        if let EntityData::Invoice(mut invoice) = fact.snapshot.data().clone() {
            invoice.number = Some("INV-0042".to_owned());
            invoice.direction = Some(direction);
            fact.snapshot = Snapshot::of(EntityData::Invoice(invoice));
        }
        fact
    };
    // A supplier's invoice that happens to share the business's own invoice's number; its id
    // sorts first, so only its direction keeps the payment from it.
    let received = with_direction(
        invoice_of("zwitch", "bcinv_a", "accepted", 1000, 10, ISSUED),
        Direction::Incoming,
    );
    let issued = with_direction(
        invoice_of("zwitch", "bcinv_b", "sent_to_buyer", 1000, 10, ISSUED),
        Direction::Outgoing,
    );
    let paid = payment(
        "tx_42",
        "succeeded",
        1000,
        None,
        Some("INV-0042"),
        20,
        Some(CAPTURED),
        "zwitch",
    );

    for facts in [
        vec![received.clone(), paid.clone()],
        vec![paid.clone(), received.clone()],
    ] {
        let repo = run(&facts);
        assert_eq!(repo.find(SubjectKind::Payment, "tx_42").linked_to, None);
        assert_eq!(
            repo.find(SubjectKind::Invoice, "bcinv_a").paid,
            Amount::ZERO
        );
    }
    for facts in [
        [received.clone(), issued.clone(), paid.clone()],
        [paid.clone(), received.clone(), issued.clone()],
        [issued, paid, received],
    ] {
        for repo in [run(&facts), run_grouped(&facts, &[3], true)] {
            let payment = repo.find(SubjectKind::Payment, "tx_42");
            let ours = repo.find(SubjectKind::Invoice, "bcinv_b");
            assert_eq!(payment.linked_to.as_ref(), Some(&ours.id));
            assert_eq!(ours.due, Some(Amount::ZERO));
            assert_eq!(repo.conclusions.len(), 1);
        }
    }
}

/// `fact` as a Bharat Connect invoice `id` numbered `INV-0042`, going `direction`.
fn bharat_connect(mut fact: Fact, id: &str, direction: Option<Direction>) -> Fact {
    if let EntityData::Invoice(mut invoice) = fact.snapshot.data().clone() {
        invoice.provider_invoice_id = id.to_owned();
        invoice.number = Some("INV-0042".to_owned());
        invoice.order_id = None;
        invoice.direction = direction;
        fact.snapshot = Snapshot::of(EntityData::Invoice(invoice));
    }
    fact.provider = "zwitch".to_owned();
    fact
}

/// A Bharat Connect edit of invoice `id`: no status, no direction.
fn bharat_connect_edit(id: &str) -> Fact {
    let mut edit = bharat_connect(invoice(id, "ignored", 1000, 10, ISSUED), id, None);
    if let EntityData::Invoice(mut invoice) = edit.snapshot.data().clone() {
        invoice.status = None;
        invoice.provider_status = None;
        edit.snapshot = Snapshot::of(EntityData::Invoice(invoice));
    }
    edit.rank = None;
    edit
}

/// A received invoice is never announced settled, even when its own status says it is paid (the
/// business paid its supplier): settlements count money the business receives. One announced
/// settled while its direction was unknown is taken back when the direction comes, even in the
/// message that says it is paid.
#[test]
fn a_received_invoice_is_never_settled() {
    let received = bharat_connect(
        invoice("bcinv_r", "accepted", 1000, 10, ISSUED),
        "bcinv_r",
        Some(Direction::Incoming),
    );
    let received_paid = bharat_connect(
        invoice("bcinv_r", "paid", 1000, 30, PAID),
        "bcinv_r",
        Some(Direction::Incoming),
    );
    for facts in [
        [received.clone(), received_paid.clone()],
        [received_paid.clone(), received],
    ] {
        for repo in [run(&facts), run_grouped(&facts, &[2], true)] {
            let invoice = repo.find(SubjectKind::Invoice, "bcinv_r");
            assert_eq!(invoice.status.as_deref(), Some("paid"));
            assert_eq!(invoice.due, Some(Amount::ZERO));
            assert!(invoice.settled_event.is_none());
            assert_eq!(repo.conclusions.len(), 0);
        }
    }

    // An edit says no direction: a payment naming its number links and settles it, until the
    // invoice's `PAID`, sent as received, takes the settlement back.
    let edit = bharat_connect_edit("bcinv_r");
    let paid = payment(
        "tx_r",
        "succeeded",
        1000,
        None,
        Some("INV-0042"),
        20,
        Some(CAPTURED),
        "zwitch",
    );
    let facts = [edit, paid, received_paid];
    for repo in [run(&facts), run_grouped(&facts, &[1, 1, 1], true)] {
        let types: Vec<EventType> = repo
            .conclusions
            .iter()
            .map(Conclusion::event_type)
            .collect();
        assert_eq!(
            types,
            [EventType::InvoiceSettled, EventType::InvoiceUnsettled]
        );
        let invoice = repo.find(SubjectKind::Invoice, "bcinv_r");
        assert!(invoice.settled_event.is_none());
        assert_eq!(repo.find(SubjectKind::Payment, "tx_r").linked_to, None);
    }
}

/// An invoice of amount zero settles when its status says it is paid, as one of unknown
/// amount does; not before.
#[test]
fn an_invoice_of_nothing_settles_by_its_status() {
    let facts = [
        invoice("inv_zero", "issued", 0, 10, ISSUED),
        invoice("inv_zero", "paid", 0, 20, PAID),
    ];
    let issued = run(&facts[..1]);
    assert_eq!(issued.conclusions.len(), 0);
    for repo in [run(&facts), run_grouped(&facts, &[2], true)] {
        assert_eq!(repo.conclusions.len(), 1);
        assert_eq!(repo.conclusions[0].event_type(), EventType::InvoiceSettled);
    }
}

/// A Bharat Connect edit states no direction. Delivered before the message that says the
/// invoice is one the business received, it let a payment link there; that message moves the
/// payment to the business's own invoice of the number, or back to waiting, and a later edit
/// does not make the invoice's direction unknown again.
#[test]
fn a_payment_linked_before_an_invoice_was_known_received_moves_on() {
    // An edit: no status, no time, no direction.
    let mut edit = bharat_connect_edit("bcinv_a");
    edit.occurred_at = None;
    let received = bharat_connect(
        invoice("bcinv_a", "accepted", 1000, 10, ISSUED),
        "bcinv_a",
        Some(Direction::Incoming),
    );
    let issued = bharat_connect(
        invoice("bcinv_b", "sent_to_buyer", 1000, 10, ISSUED),
        "bcinv_b",
        Some(Direction::Outgoing),
    );
    let paid = payment(
        "tx_42",
        "succeeded",
        1000,
        None,
        Some("INV-0042"),
        20,
        Some(CAPTURED),
        "zwitch",
    );

    // One stamped after the invoice's acceptance wins the content, not the direction.
    let mut late_edit = edit.clone();
    late_edit.occurred_at = received
        .occurred_at
        .map(|at| at.add(std::time::Duration::from_secs(60)));

    // The edit first: the payment links to the only invoice of its number, until the invoice
    // turns out to be received; with nothing else to go to, it waits, unlinked.
    let facts = [edit.clone(), paid.clone(), received.clone(), late_edit];
    for repo in [run(&facts), run_grouped(&facts, &[2], true)] {
        let theirs = repo.find(SubjectKind::Invoice, "bcinv_a");
        assert_eq!(repo.find(SubjectKind::Payment, "tx_42").linked_to, None);
        assert_eq!(theirs.paid, Amount::ZERO);
        assert!(
            matches!(theirs.snapshot.data(), EntityData::Invoice(i) if i.direction == Some(Direction::Incoming)),
            "a later edit keeps the direction known"
        );
    }
    // With the business's own invoice of that number there, the payment goes to it.
    let facts = [issued, edit, paid, received];
    for repo in [run(&facts), run_grouped(&facts, &[3], true)] {
        let ours = repo.find(SubjectKind::Invoice, "bcinv_b");
        let payment = repo.find(SubjectKind::Payment, "tx_42");
        assert_eq!(payment.linked_to.as_ref(), Some(&ours.id));
        assert_eq!(ours.due, Some(Amount::ZERO));
        assert_eq!(
            repo.find(SubjectKind::Invoice, "bcinv_a").paid,
            Amount::ZERO
        );
    }
}

/// The provider's own lifecycle of one Bharat Connect invoice states the direction of the call
/// that raised each message: created `OUTGOING`, confirmed by the buyer `INCOMING`. The
/// business issued it, in every order: a payment naming it stays linked and it settles once,
/// never unsettled by the buyer's acceptance.
#[test]
fn a_buyers_acceptance_does_not_make_an_issued_invoice_received() {
    let unstamped = |mut fact: Fact| {
        fact.occurred_at = None;
        fact
    };
    let created = unstamped(bharat_connect(
        invoice("bcinv_o", "sent_to_buyer", 1000, 10, ISSUED),
        "bcinv_o",
        Some(Direction::Outgoing),
    ));
    let accepted = unstamped(bharat_connect(
        invoice("bcinv_o", "accepted", 1000, 20, StatusRank::new(2)),
        "bcinv_o",
        Some(Direction::Incoming),
    ));
    let paid = payment(
        "tx_o",
        "succeeded",
        1000,
        None,
        Some("INV-0042"),
        30,
        Some(CAPTURED),
        "zwitch",
    );
    let orders = [
        [created.clone(), accepted.clone(), paid.clone()],
        [created.clone(), paid.clone(), accepted.clone()],
        [accepted.clone(), created.clone(), paid.clone()],
        [accepted.clone(), paid.clone(), created.clone()],
        [paid.clone(), created.clone(), accepted.clone()],
        [paid, accepted, created],
    ];
    for facts in orders {
        for repo in [run(&facts), run_grouped(&facts, &[3], true)] {
            let invoice = repo.find(SubjectKind::Invoice, "bcinv_o");
            assert!(
                matches!(invoice.snapshot.data(), EntityData::Invoice(i) if i.direction == Some(Direction::Outgoing)),
                "{facts:?}"
            );
            assert_eq!(invoice.status.as_deref(), Some("accepted"));
            assert_eq!(
                repo.find(SubjectKind::Payment, "tx_o").linked_to.as_ref(),
                Some(&invoice.id)
            );
            assert_eq!(invoice.due, Some(Amount::ZERO));
            let types: Vec<EventType> = repo
                .conclusions
                .iter()
                .map(Conclusion::event_type)
                .collect();
            assert_eq!(types, [EventType::InvoiceSettled], "{facts:?}");
        }
    }
}

/// A settled invoice whose cover goes (its payment refunded) is announced unsettled, once, and
/// settled again when another payment covers it.
#[test]
fn an_invoice_no_longer_covered_is_unsettled_and_can_settle_again() {
    let refunded_rank = StatusRank::new(3);
    let facts = [
        invoice("inv_r", "issued", 1000, 10, ISSUED),
        payment(
            "pay_r1",
            "succeeded",
            1000,
            Some("inv_r"),
            None,
            20,
            Some(CAPTURED),
            "razorpay",
        ),
        payment(
            "pay_r1",
            "refunded",
            1000,
            Some("inv_r"),
            None,
            30,
            Some(refunded_rank),
            "razorpay",
        ),
        // The same refund again changes nothing.
        payment(
            "pay_r1",
            "refunded",
            1000,
            Some("inv_r"),
            None,
            31,
            Some(refunded_rank),
            "razorpay",
        ),
        payment(
            "pay_r2",
            "succeeded",
            1000,
            Some("inv_r"),
            None,
            40,
            Some(CAPTURED),
            "razorpay",
        ),
    ];
    let mut repo = MemoryRepo::default();
    let mut states = Vec::new();
    for fact in &facts {
        repo.apply(fact);
        let invoice = repo.find(SubjectKind::Invoice, "inv_r");
        states.push((invoice.settled_at.is_some(), invoice.due));
    }
    let due = |minor| Some(Amount::from_minor(minor));
    assert_eq!(
        states,
        [
            (false, due(1000)),
            (true, due(0)),
            (false, due(1000)),
            (false, due(1000)),
            (true, due(0)),
        ]
    );
    let announced: Vec<EventType> = repo
        .conclusions
        .iter()
        .map(Conclusion::event_type)
        .collect();
    assert_eq!(
        announced,
        [
            EventType::InvoiceSettled,
            EventType::InvoiceUnsettled,
            EventType::InvoiceSettled
        ]
    );
    let Conclusion::InvoiceUnsettled {
        invoice, reverses, ..
    } = &repo.conclusions[1]
    else {
        unreachable!()
    };
    assert_eq!(invoice.due, due(1000), "announced with what is due now");
    assert_eq!(invoice.settled_event, None);
    assert_eq!(
        *reverses, repo.announced_as[0],
        "names the settlement it takes back"
    );
}

#[test]
fn an_invoice_a_status_says_is_paid_is_settled_with_its_amount_unknown() {
    let mut paid = invoice("inv_open", "paid", 0, 10, PAID);
    if let EntityData::Invoice(mut data) = paid.snapshot.data().clone() {
        data.amount = None;
        paid.snapshot = Snapshot::of(EntityData::Invoice(data));
    }
    let repo = run(&[paid.clone(), paid]);
    let invoice = repo.find(SubjectKind::Invoice, "inv_open");
    assert_eq!(invoice.amount, None);
    assert!(invoice.settled_event.is_some());
    assert_eq!(repo.conclusions.len(), 1, "settled once");
}

/// A reference kept from an earlier message no longer counts once the source stops matching on
/// it (`reconcile` narrowed): the payment's references are held to the rule of today.
#[test]
fn a_kept_reference_the_rule_no_longer_allows_links_nothing() {
    let first = payment(
        "tx_rule",
        "pending",
        500,
        None,
        None,
        10,
        Some(StatusRank::new(0)),
        "zwitch",
    );
    let with_remark = |mut fact: Fact, rule: Vec<PaymentRef>| {
        if let EntityData::Payment(mut data) = fact.snapshot.data().clone() {
            data.references.remark = Some("N-inv_rule".to_owned());
            fact.snapshot = Snapshot::of(EntityData::Payment(data));
        }
        fact.link_rule = rule;
        fact
    };
    let pending = with_remark(
        first,
        vec![PaymentRef::MerchantReference, PaymentRef::Remark],
    );
    let mut succeeded = payment(
        "tx_rule",
        "succeeded",
        500,
        None,
        None,
        20,
        Some(StatusRank::new(1)),
        "zwitch",
    );
    succeeded.link_rule = vec![PaymentRef::MerchantReference];
    let issued = invoice("inv_rule", "issued", 500, 30, ISSUED);
    let repo = run(&[pending, succeeded, issued]);
    let paid = repo.find(SubjectKind::Payment, "tx_rule");
    assert_eq!(paid.refs.remark, None);
    assert_eq!(paid.linked_to, None);
}
