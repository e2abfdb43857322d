//! The ledger: what billhook concludes about invoices, payments, bills, billers, disputes and
//! documents from everything providers have said, whatever the order they said it in.
//!
//! Rules, all order-independent:
//!
//! - **Forward-only status.** Each provider ranks its statuses per entity kind (its module's
//!   `status_rank`). An entity's status is the one with the greatest [`Precedence`]: the higher
//!   rank, then the later provider time, then a hash of the status (so ties break the same way
//!   every time). A late, older snapshot never regresses an entity, and every snapshot still enters
//!   the history. Statuses without a rank (unknown ones, billers) lose to ranked ones and follow
//!   time among themselves.
//! - **Content** (names, amounts, line items) comes from the latest snapshot by provider time,
//!   and at equal times from the one with the higher status rank.
//! - **Reconciliation.** A payment links to the invoice or bill its references name, by the
//!   source's link rule (Razorpay: invoice and order ids; Zwitch: merchant reference or remark
//!   equal to an invoice number or id; Setu: the bill's `refId` or `billerRefId`), never to an
//!   invoice the business received (Bharat Connect `INCOMING`). A payment's references are
//!   those all its snapshots named. An invoice or bill arriving after its payments picks them up. `paid` sums the succeeded linked payments,
//!   each once; a status that means "paid" (Bharat Connect `PAID`, Razorpay `paid`) settles the
//!   amount by itself. `due` and `overpaid` follow.
//! - **Conclusions.** An invoice whose `paid` reaches its amount is settled, once: the repository
//!   records an `invoice.settled` event in the same transaction.
//!
//! [`apply`] is written once, against [`LedgerRepo`]; each store backend implements the
//! repository over its own SQL, inside the ingest transaction.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::entity::{Direction, EntityData, PaymentReferences, SubjectKind, as_key};
use crate::event::EventType;
use crate::ids::{EventId, InboundId};
use crate::money::{Amount, Currency};
use crate::time::Timestamp;

/// An entity's snapshot and the JSON the ledger stores it as, made together once. The content
/// hash, the first save and every later save of an unchanged snapshot use the same text, so the
/// writer's transaction neither serializes a snapshot nor re-serializes one it has read.
#[derive(Debug, Clone)]
pub struct Snapshot {
    data: EntityData,
    /// `None` only if the data did not serialize.
    json: Option<Arc<str>>,
}

impl Snapshot {
    /// Serializes `data`. A snapshot is plain structs, strings and numbers, so this does not
    /// fail; were it to, the snapshot has no stored form and cannot be saved.
    pub fn of(data: EntityData) -> Self {
        let json = serde_json::to_string(&data).ok().map(Arc::from);
        Self { data, json }
    }

    /// A stored snapshot of an entity of `kind`, keeping the text it was stored as.
    pub fn from_stored(kind: SubjectKind, json: &str) -> Result<Self, serde_json::Error> {
        Ok(Self {
            data: EntityData::from_json(kind, json)?,
            json: Some(json.into()),
        })
    }

    pub fn data(&self) -> &EntityData {
        &self.data
    }

    /// The stored form; `None` if the data did not serialize.
    pub fn json(&self) -> Option<&str> {
        self.json.as_deref()
    }
}

/// Snapshots are equal when their data is: a stored text may differ from a fresh one in
/// whitespace or key order alone.
impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.data == other.data
    }
}

impl Eq for Snapshot {}

/// Where a status stands among a provider's statuses for one kind of entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRank {
    pub level: i32,
    /// The status means the entity is paid in full (an invoice `paid`, a document `PAID`).
    pub settles: bool,
}

impl StatusRank {
    pub const fn new(level: i32) -> Self {
        Self {
            level,
            settles: false,
        }
    }

    pub const fn settling(level: i32) -> Self {
        Self {
            level,
            settles: true,
        }
    }
}

/// The order in which snapshots win: rank, then provider time, then a stable hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Precedence {
    pub level: i32,
    pub at: i64,
    pub tiebreak: u64,
}

impl Precedence {
    /// Below every real snapshot.
    pub const NONE: Precedence = Precedence {
        level: i32::MIN,
        at: i64::MIN,
        tiebreak: 0,
    };

    /// The time of a snapshot the provider did not stamp: before every stamped one, and above
    /// [`Self::NONE`].
    pub const UNSTAMPED: i64 = i64::MIN + 1;
}

/// FNV-1a over the parts, each followed by a zero byte. Hashes are stored and compared across
/// releases and instances, so the function is fixed here rather than left to the standard
/// library (whose hasher may change between Rust versions).
pub fn stable_hash(parts: &[&str]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for part in parts {
        for byte in part.bytes().chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    hash
}

/// A name writers serialize on, and whether they must hold it alone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LockName {
    pub name: String,
    /// Exclusive for the entity a fact changes and for the references an invoice or bill is
    /// known by; shared for the references a payment looks for, so payments naming the same
    /// reference (a common remark) do not wait for each other, only for the invoice or bill
    /// that answers to it.
    pub exclusive: bool,
}

/// The names of everything applying `facts` may read or change: their entities and the
/// references that link payments to invoices and bills. Writers that apply facts concurrently
/// (several instances on one database) serialize on these names, so a payment and its invoice
/// arriving at the same moment still find each other. Sorted by name, each once (exclusive when
/// any fact needs it so).
pub fn lock_names(facts: &[Fact]) -> Vec<LockName> {
    let mut names = Vec::new();
    for fact in facts {
        let data = fact.snapshot.data();
        let kind = data.kind();
        if !tracks(kind) {
            continue;
        }
        names.push(entity_lock(kind, &fact.provider, data.provider_id()));
        // A payment seeks its references, shared; an invoice or bill is known by its own.
        let exclusive = kind != SubjectKind::Payment;
        names.extend(
            link_references(data)
                .into_iter()
                .map(|value| reference_lock(value, exclusive)),
        );
    }
    sorted_once(names)
}

/// The names a writer holds to change a payment no fact it applies is about (see
/// [`LedgerRepo::hold`]): the payment's, and its references, shared, as a fact about it would.
pub fn payment_lock_names(payment: &Entity) -> Vec<LockName> {
    let mut names: Vec<LockName> = payment
        .refs
        .values()
        .map(|value| reference_lock(value, false))
        .collect();
    names.push(entity_lock(
        payment.kind,
        &payment.provider,
        &payment.provider_id,
    ));
    sorted_once(names)
}

fn entity_lock(kind: SubjectKind, provider: &str, provider_id: &str) -> LockName {
    LockName {
        name: format!("entity/{}/{provider}/{provider_id}", kind.as_str()),
        exclusive: true,
    }
}

fn reference_lock(value: &str, exclusive: bool) -> LockName {
    LockName {
        name: format!("ref/{value}"),
        exclusive,
    }
}

/// Sorted by name, each once: exclusive sorts after shared for the same name, and the last of
/// each name is kept.
fn sorted_once(mut names: Vec<LockName>) -> Vec<LockName> {
    names.sort();
    let mut unique: Vec<LockName> = Vec::with_capacity(names.len());
    for lock in names {
        match unique.last_mut() {
            Some(last) if last.name == lock.name => *last = lock,
            _ => unique.push(lock),
        }
    }
    unique
}

/// The references a snapshot links by: those a payment seeks (all it has; its source's rule
/// picks among them), or those an invoice or bill is known by (its id among them). Non-empty.
fn link_references(data: &EntityData) -> Vec<&str> {
    let values: Vec<&Option<String>> = match data {
        EntityData::Payment(payment) => {
            let r = &payment.references;
            vec![
                &r.invoice_id,
                &r.order_id,
                &r.merchant_reference,
                &r.remark,
                &r.bill_ref_id,
                &r.biller_ref_id,
            ]
        }
        EntityData::Invoice(invoice) => vec![&invoice.number, &invoice.order_id],
        EntityData::Bill(bill) => vec![&bill.biller_ref_id],
        _ => Vec::new(),
    };
    let own =
        matches!(data, EntityData::Invoice(_) | EntityData::Bill(_)).then(|| data.provider_id());
    own.into_iter()
        .chain(values.into_iter().flatten().map(String::as_str))
        .filter(|v| !v.is_empty())
        .collect()
}

/// Which payment references a source's payments are matched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PaymentRef {
    /// The provider's invoice id named by the payment (Razorpay `invoice_id`).
    InvoiceId,
    /// The order id, matched with the invoice's order (Razorpay).
    OrderId,
    /// The merchant reference, matched with an invoice number or id (Zwitch).
    MerchantReference,
    /// The payment remark, matched with an invoice number or id (Zwitch).
    Remark,
    /// The bill's reference id (Setu `refId`).
    BillRefId,
    /// The biller's reference for the customer (Setu `billerRefId`).
    BillerRefId,
}

impl PaymentRef {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "invoice_id" => PaymentRef::InvoiceId,
            "order_id" => PaymentRef::OrderId,
            "merchant_reference" => PaymentRef::MerchantReference,
            "remark" => PaymentRef::Remark,
            "bill_ref_id" => PaymentRef::BillRefId,
            "biller_ref_id" => PaymentRef::BillerRefId,
            _ => return None,
        })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            PaymentRef::InvoiceId => "invoice_id",
            PaymentRef::OrderId => "order_id",
            PaymentRef::MerchantReference => "merchant_reference",
            PaymentRef::Remark => "remark",
            PaymentRef::BillRefId => "bill_ref_id",
            PaymentRef::BillerRefId => "biller_ref_id",
        }
    }
}

/// The references a payment is matched on, as the source's rule allows (others stay `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PaymentRefs {
    pub invoice_id: Option<String>,
    pub order_id: Option<String>,
    pub merchant_reference: Option<String>,
    pub remark: Option<String>,
    pub bill_ref_id: Option<String>,
    pub biller_ref_id: Option<String>,
    /// The payment came from a provider's test mode: its references name only invoices and
    /// bills of that mode (see [`Entity::sandbox`]).
    pub sandbox: bool,
    /// The payment's provider: its references name only that provider's invoices and bills. A
    /// Zwitch payment's free-text reference that happens to equal a Razorpay invoice's number
    /// says nothing about that invoice.
    pub provider: String,
}

impl PaymentRefs {
    /// The references of a payment from `provider` (its test mode if `sandbox`) its source's
    /// rule matches on.
    pub fn ruled(
        references: &PaymentReferences,
        rule: &[PaymentRef],
        sandbox: bool,
        provider: &str,
    ) -> Self {
        let r = references;
        Self {
            invoice_id: as_key(&r.invoice_id),
            order_id: as_key(&r.order_id),
            merchant_reference: as_key(&r.merchant_reference),
            remark: as_key(&r.remark),
            bill_ref_id: as_key(&r.bill_ref_id),
            biller_ref_id: as_key(&r.biller_ref_id),
            sandbox,
            provider: provider.to_owned(),
        }
        .within(rule)
    }

    /// These references less those `rule` does not match on.
    pub fn within(self, rule: &[PaymentRef]) -> Self {
        let allowed =
            |which: PaymentRef, value: Option<String>| value.filter(|_| rule.contains(&which));
        Self {
            invoice_id: allowed(PaymentRef::InvoiceId, self.invoice_id),
            order_id: allowed(PaymentRef::OrderId, self.order_id),
            merchant_reference: allowed(PaymentRef::MerchantReference, self.merchant_reference),
            remark: allowed(PaymentRef::Remark, self.remark),
            bill_ref_id: allowed(PaymentRef::BillRefId, self.bill_ref_id),
            biller_ref_id: allowed(PaymentRef::BillerRefId, self.biller_ref_id),
            sandbox: self.sandbox,
            provider: self.provider,
        }
    }

    /// These references together with `other`'s: each one only one of them names is kept, and
    /// where both name one differently, the lesser. A payment's references are all its
    /// snapshots', merged so: a message that leaves a reference out (Razorpay's
    /// `payment.captured` without the order's receipt, say) does not take it away, and every
    /// arrival order ends with the same references.
    pub fn merged(self, other: Self) -> Self {
        let either = |ours: Option<String>, theirs: Option<String>| match (ours, theirs) {
            (Some(ours), Some(theirs)) => Some(ours.min(theirs)),
            (ours, theirs) => ours.or(theirs),
        };
        Self {
            invoice_id: either(self.invoice_id, other.invoice_id),
            order_id: either(self.order_id, other.order_id),
            merchant_reference: either(self.merchant_reference, other.merchant_reference),
            remark: either(self.remark, other.remark),
            bill_ref_id: either(self.bill_ref_id, other.bill_ref_id),
            biller_ref_id: either(self.biller_ref_id, other.biller_ref_id),
            sandbox: self.sandbox,
            provider: self.provider,
        }
    }

    /// Whether these references, merged into `kept`, change it: they name one `kept` does not,
    /// or a lesser value of one it does.
    fn change(&self, kept: &Self) -> bool {
        let changes = |theirs: &Option<String>, ours: &Option<String>| match (theirs, ours) {
            (Some(theirs), Some(ours)) => theirs < ours,
            (Some(_), None) => true,
            (None, _) => false,
        };
        changes(&self.invoice_id, &kept.invoice_id)
            || changes(&self.order_id, &kept.order_id)
            || changes(&self.merchant_reference, &kept.merchant_reference)
            || changes(&self.remark, &kept.remark)
            || changes(&self.bill_ref_id, &kept.bill_ref_id)
            || changes(&self.biller_ref_id, &kept.biller_ref_id)
    }

    /// The references present.
    pub fn values(&self) -> impl Iterator<Item = &String> {
        self.each().map(|(_, value)| value)
    }

    /// The references present, each with which it is.
    pub fn each(&self) -> impl Iterator<Item = (PaymentRef, &String)> {
        [
            (PaymentRef::InvoiceId, &self.invoice_id),
            (PaymentRef::OrderId, &self.order_id),
            (PaymentRef::MerchantReference, &self.merchant_reference),
            (PaymentRef::Remark, &self.remark),
            (PaymentRef::BillRefId, &self.bill_ref_id),
            (PaymentRef::BillerRefId, &self.biller_ref_id),
        ]
        .into_iter()
        .filter_map(|(which, value)| value.as_ref().map(|value| (which, value)))
    }
}

/// The keys an invoice or bill is found by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TargetKeys {
    /// Invoice number, or a bill's biller reference: the latest snapshot's.
    pub number: Option<String>,
    /// The invoice's order (Razorpay).
    pub order_id: Option<String>,
    /// Every other number its messages gave it (an invoice renumbered, or an edit whose
    /// snapshot a ranked status hides), sorted, each once. A payment raised against an
    /// invoice under one of them still pays it, in whichever order the messages come.
    pub former_numbers: Vec<String>,
}

impl TargetKeys {
    /// The keys of an invoice's or a bill's snapshot; `None` for other kinds.
    pub fn of(data: &EntityData) -> Option<Self> {
        match data {
            EntityData::Invoice(invoice) => Some(Self {
                number: as_key(&invoice.number),
                order_id: as_key(&invoice.order_id),
                former_numbers: Vec::new(),
            }),
            EntityData::Bill(bill) => Some(Self {
                number: as_key(&bill.biller_ref_id),
                order_id: None,
                former_numbers: Vec::new(),
            }),
            _ => None,
        }
    }

    /// Every number it is found by: the current one, then the former ones.
    pub fn numbers(&self) -> impl Iterator<Item = &str> {
        self.number
            .iter()
            .chain(&self.former_numbers)
            .map(String::as_str)
    }

    /// Keeps every number of `earlier` (those known before, and the one a message named) that
    /// is not the current one as a former number; the current one is never a former one.
    fn remember<'a>(&mut self, earlier: impl IntoIterator<Item = &'a str>) {
        for number in earlier {
            if self.number.as_deref() != Some(number)
                && let Err(at) = self
                    .former_numbers
                    .binary_search_by(|known| known.as_str().cmp(number))
            {
                self.former_numbers.insert(at, number.to_owned());
            }
        }
        let current = self.number.clone();
        self.former_numbers
            .retain(|known| Some(known) != current.as_ref());
    }
}

/// A column the ledger finds entities by, besides their identity and id: what invoices and
/// bills are known by, or a payment's references. A locked round of [`ReadAhead`] asks each
/// column for its own values, the ones [`link_reason`] compares with it, so the database
/// searches each reference index only for what could match there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LookupColumn {
    /// An invoice's or a bill's provider id.
    TargetId,
    /// An invoice's order.
    TargetOrder,
    /// An invoice's number or a bill's biller reference.
    TargetNumber,
    /// A payment's reference of this kind (payments not linked yet).
    Payment(PaymentRef),
}

/// Where the invoices and bills that `refs` may name are found: each reference in the columns
/// [`link_reason`] compares it with.
fn target_lookups(refs: &PaymentRefs) -> impl Iterator<Item = (LookupColumn, &str)> {
    refs.each().flat_map(|(which, value)| {
        let columns: &[LookupColumn] = match which {
            PaymentRef::InvoiceId | PaymentRef::BillRefId => &[LookupColumn::TargetId],
            PaymentRef::OrderId => &[LookupColumn::TargetOrder],
            PaymentRef::MerchantReference | PaymentRef::Remark => {
                &[LookupColumn::TargetId, LookupColumn::TargetNumber]
            }
            PaymentRef::BillerRefId => &[LookupColumn::TargetNumber],
        };
        columns.iter().map(move |column| (*column, value.as_str()))
    })
}

/// Where the payments that may name an invoice or bill (`kind`, known by `provider_id` and
/// `keys`) are found: each of its keys in the payment references [`link_reason`] compares with
/// it. Empty keys name nothing.
fn payment_lookups<'a>(
    kind: SubjectKind,
    provider_id: &'a str,
    keys: &'a TargetKeys,
) -> impl Iterator<Item = (LookupColumn, &'a str)> {
    let id = Some(provider_id);
    let numbers = keys.numbers().map(Some);
    let lookups: Vec<(PaymentRef, Option<&str>)> = match kind {
        SubjectKind::Invoice => [
            (PaymentRef::InvoiceId, id),
            (PaymentRef::OrderId, keys.order_id.as_deref()),
            (PaymentRef::MerchantReference, id),
            (PaymentRef::Remark, id),
        ]
        .into_iter()
        .chain(numbers.flat_map(|number| {
            [
                (PaymentRef::MerchantReference, number),
                (PaymentRef::Remark, number),
            ]
        }))
        .collect(),
        SubjectKind::Bill => [(PaymentRef::BillRefId, id)]
            .into_iter()
            .chain(numbers.map(|number| (PaymentRef::BillerRefId, number)))
            .collect(),
        _ => Vec::new(),
    };
    lookups.into_iter().filter_map(|(which, value)| {
        value
            .filter(|v| !v.is_empty())
            .map(|v| (LookupColumn::Payment(which), v))
    })
}

/// One canonical event's contribution to the ledger.
#[derive(Debug, Clone)]
pub struct Fact {
    pub event_id: EventId,
    pub event_type: EventType,
    pub inbound_id: InboundId,
    pub source: String,
    pub provider: String,
    pub provider_event: String,
    /// The message came from a provider's test mode.
    pub sandbox: bool,
    /// The provider's time for the event, when it gave one. Its absence is kept: the reception
    /// time is no order between snapshots, since a provider retries any of them at any time.
    pub occurred_at: Option<Timestamp>,
    /// Without `occurred_at`, the earliest the event can have happened, when the provider tells
    /// it (a payment's creation): the snapshot is ordered by it, but the history keeps the
    /// event unstamped.
    pub not_before: Option<Timestamp>,
    pub received_at: Timestamp,
    pub snapshot: Snapshot,
    /// The provider's rank for the snapshot's status, when it has one.
    pub rank: Option<StatusRank>,
    /// For payments: which references the source matches on.
    pub link_rule: Vec<PaymentRef>,
}

/// One entity in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    /// billhook's id for it (`iv_…`, `py_…`, `bl_…`, `br_…`, `dp_…`, `dc_…`).
    pub id: String,
    pub kind: SubjectKind,
    pub provider: String,
    pub provider_id: String,
    pub source: String,
    /// Known from a provider's test mode (its first message said so). Payments link only to
    /// invoices and bills of their own mode, so a test payment naming a real invoice's number
    /// never counts towards it, nor a real one towards a test invoice.
    pub sandbox: bool,
    pub status: Option<String>,
    pub provider_status: Option<String>,
    pub status_precedence: Precedence,
    /// The winning status means paid in full.
    pub status_settles: bool,
    /// The latest snapshot by provider time (status fields as the provider sent them).
    pub snapshot: Snapshot,
    pub content_precedence: Precedence,
    pub keys: TargetKeys,
    pub refs: PaymentRefs,
    pub currency: Option<Currency>,
    pub amount: Option<Amount>,
    /// For payments: what counts towards an invoice (succeeded, net of refunds); zero otherwise.
    pub counted: Amount,
    /// For invoices and bills: what linked payments (or a paid status) cover.
    pub paid: Amount,
    pub due: Option<Amount>,
    pub overpaid: Amount,
    /// When an outstanding invoice becomes overdue (Razorpay `expire_by`, a bill's due date).
    pub due_by: Option<Timestamp>,
    /// For payments: the invoice or bill it pays, and by which reference.
    pub linked_to: Option<String>,
    pub link_rule: Option<String>,
    pub settled_event: Option<EventId>,
    pub settled_at: Option<Timestamp>,
    pub unmatched_event: Option<EventId>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The stored message the content came from.
    pub inbound_id: InboundId,
}

/// A status the entity reported, applied or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub entity_id: String,
    pub event_id: EventId,
    pub event_type: EventType,
    pub status: Option<String>,
    pub provider_status: Option<String>,
    pub level: Option<i32>,
    pub occurred_at: Timestamp,
    pub received_at: Timestamp,
    /// False when the snapshot was older than the state and only entered the history.
    pub applied: bool,
}

/// What the message that led to a conclusion was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    pub source: String,
    /// The message came from a provider's test mode.
    pub sandbox: bool,
    pub provider: String,
    pub provider_event: String,
    pub inbound_id: InboundId,
    pub at: Timestamp,
}

/// Something the ledger concluded, to be announced as a canonical event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conclusion {
    /// The payments linked to an invoice cover its amount.
    InvoiceSettled { invoice: Entity, trigger: Trigger },
    /// An invoice announced settled (by the event `reverses`) is no longer covered.
    InvoiceUnsettled {
        invoice: Entity,
        trigger: Trigger,
        reverses: EventId,
    },
    /// A succeeded payment matched no invoice or bill within the matching window.
    PaymentUnmatched { payment: Entity, at: Timestamp },
}

impl Conclusion {
    pub fn event_type(&self) -> EventType {
        match self {
            Conclusion::InvoiceSettled { .. } => EventType::InvoiceSettled,
            Conclusion::InvoiceUnsettled { .. } => EventType::InvoiceUnsettled,
            Conclusion::PaymentUnmatched { .. } => EventType::PaymentUnmatched,
        }
    }

    /// The entity the conclusion is about.
    pub fn entity(&self) -> &Entity {
        match self {
            Conclusion::InvoiceSettled { invoice, .. }
            | Conclusion::InvoiceUnsettled { invoice, .. } => invoice,
            Conclusion::PaymentUnmatched { payment, .. } => payment,
        }
    }
}

/// A conclusion as announced: its event, and the event's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concluded {
    pub id: EventId,
    pub event_type: EventType,
}

/// The storage the ledger rules run against: one transaction's view of the ledger tables.
#[allow(async_fn_in_trait)]
pub trait LedgerRepo {
    type Error;

    async fn entity(
        &mut self,
        kind: SubjectKind,
        provider: &str,
        provider_id: &str,
    ) -> Result<Option<Entity>, Self::Error>;

    async fn entity_by_id(&mut self, id: &str) -> Result<Option<Entity>, Self::Error>;

    /// The entity as it stands now, held for a change no fact being applied is about (a
    /// payment moved off an invoice that turned out to be received): a store several writers
    /// share takes the locks a fact about it would ([`payment_lock_names`]) and reads it
    /// afresh, so that no concurrent writer overwrites the change, or misses it. `None` if it
    /// is gone.
    async fn hold(&mut self, entity: &Entity) -> Result<Option<Entity>, Self::Error> {
        self.entity_by_id(&entity.id).await
    }

    /// Invoices and bills that a payment's references name.
    async fn targets_for(&mut self, refs: &PaymentRefs) -> Result<Vec<Entity>, Self::Error>;

    /// Payments not linked yet whose references name this invoice or bill.
    async fn linkable_payments(&mut self, target: &Entity) -> Result<Vec<Entity>, Self::Error>;

    /// Payments linked to this invoice or bill.
    async fn linked_payments(&mut self, target: &Entity) -> Result<Vec<Entity>, Self::Error>;

    async fn save(&mut self, entity: &Entity) -> Result<(), Self::Error>;

    async fn record_history(&mut self, entry: &HistoryEntry) -> Result<(), Self::Error>;

    /// Records a conclusion as a canonical event (with its deliveries); returns the event's id.
    async fn conclude(&mut self, conclusion: &Conclusion) -> Result<EventId, Self::Error>;
}

/// Entities saved by a transaction's facts and not yet written, for a repository that writes
/// them all in one statement when the facts are applied. Every read goes through it: what the
/// store found is replaced by the unwritten version of the same entity, dropped when that
/// version no longer answers the query, and joined by unwritten entities that do (a payment
/// applied after its invoice in the same transaction must find it). The queries are
/// [`LedgerRepo`]'s, said here in Rust; the store's SQL must select the same entities.
#[derive(Debug, Default)]
pub struct UnwrittenEntities {
    by_id: HashMap<String, Entity>,
    /// Ids in the order first saved, so the write is the same for the same facts.
    order: Vec<String>,
}

impl UnwrittenEntities {
    pub fn save(&mut self, entity: &Entity) {
        if self
            .by_id
            .insert(entity.id.clone(), entity.clone())
            .is_none()
        {
            self.order.push(entity.id.clone());
        }
    }

    /// The unwritten entity with this identity.
    pub fn entity(&self, kind: SubjectKind, provider: &str, provider_id: &str) -> Option<&Entity> {
        self.by_id
            .values()
            .find(|e| e.kind == kind && e.provider == provider && e.provider_id == provider_id)
    }

    pub fn entity_by_id(&self, id: &str) -> Option<&Entity> {
        self.by_id.get(id)
    }

    /// [`LedgerRepo::targets_for`], given what the store found for it.
    pub fn targets_for(&self, refs: &PaymentRefs, stored: Vec<Entity>) -> Vec<Entity> {
        self.merge(stored, |e| is_target_of(e, refs))
    }

    /// [`LedgerRepo::linkable_payments`], given what the store found for it.
    pub fn linkable_payments(&self, target: &Entity, stored: Vec<Entity>) -> Vec<Entity> {
        self.merge(stored, |e| is_linkable_to(e, target))
    }

    /// [`LedgerRepo::linked_payments`], given what the store found for it.
    pub fn linked_payments(&self, target_id: &str, stored: Vec<Entity>) -> Vec<Entity> {
        self.merge(stored, |e| is_linked_to(e, target_id))
    }

    /// What the store found, as the unwritten entities have it, and the unwritten entities
    /// the store could not find; those that answer `query`, by id.
    fn merge(&self, stored: Vec<Entity>, query: impl Fn(&Entity) -> bool) -> Vec<Entity> {
        let mut found: Vec<Entity> = stored
            .into_iter()
            .filter(|e| !self.by_id.contains_key(&e.id) && query(e))
            .chain(self.by_id.values().filter(|e| query(e)).cloned())
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found
    }

    /// The entities to write, each once, in the order first saved.
    pub fn into_entities(mut self) -> Vec<Entity> {
        self.order
            .iter()
            .filter_map(|id| self.by_id.remove(id))
            .collect()
    }
}

/// [`LedgerRepo::targets_for`]'s question: an invoice or bill the references name.
fn is_target_of(entity: &Entity, refs: &PaymentRefs) -> bool {
    matches!(entity.kind, SubjectKind::Invoice | SubjectKind::Bill)
        && link_reason(refs, entity).is_some()
}

/// [`LedgerRepo::linkable_payments`]'s question: a payment, not linked yet, naming the target.
fn is_linkable_to(entity: &Entity, target: &Entity) -> bool {
    entity.kind == SubjectKind::Payment
        && entity.linked_to.is_none()
        && link_reason(&entity.refs, target).is_some()
}

/// [`LedgerRepo::linked_payments`]'s question.
fn is_linked_to(entity: &Entity, target_id: &str) -> bool {
    entity.linked_to.as_deref() == Some(target_id)
}

/// The ledger entities a transaction read before applying its facts, and the questions they
/// answer in full, so that applying the facts seldom asks the store anything: a few
/// statements for a whole group of requests instead of one or more per fact. A question it
/// cannot answer in full says so (`None`), and the repository asks the store; so what it reads
/// decides only how fast facts apply, never what they conclude.
///
/// Reading happens in rounds, each asking what the one before found: the facts' entities and
/// what the facts link to ([`first_round`](Self::first_round): the invoices and bills their
/// payments name, the payments naming their invoices and bills), then what the facts' own
/// entities, as stored, link to that was not asked yet ([`second_round`](Self::second_round):
/// nothing, when they name what their facts do), both locked by the store, then the payments
/// linked to the invoices and bills the facts will total
/// ([`linked_targets`](Self::linked_targets)), not locked, as the lookup they replace never
/// was; those answer only [`linked_payments`](Self::linked_payments). References are asked per
/// [`LookupColumn`], each for the values that could match in it.
///
/// It stays exact while the facts apply because nothing else can change what it read: it is
/// for a transaction that holds its saves back until its facts are applied
/// ([`UnwrittenEntities`]), takes the advisory locks of [`lock_names`] first (so no one else
/// writes an entity or reference the facts name), and locks the rows of the first two rounds
/// (so no one links to or from them). A payment linked to an invoice changes only by someone
/// holding that invoice's row, and the transaction holds the rows of the invoices whose payments
/// it read.
#[derive(Debug, Default)]
pub struct ReadAhead {
    /// Read locked: the first two rounds.
    stored: HashMap<String, Entity>,
    /// Read unlocked: payments linked to `linked_targets`.
    linked: Vec<Entity>,
    identities: HashSet<(SubjectKind, String, String)>,
    /// Every entity a column finds by one of its values here is stored (for a payment's
    /// references, every payment not linked yet).
    lookups: HashMap<LookupColumn, HashSet<String>>,
    /// Every payment linked to one of these is in `linked`.
    linked_targets: HashSet<String>,
}

/// What one locked round of [`ReadAhead`] reads; the store finds every entity that answers any
/// part.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reading {
    /// Entities by (kind, provider, provider's id).
    pub identities: Vec<(SubjectKind, String, String)>,
    /// Invoices and bills (for the target columns) and payments not linked yet (for a
    /// payment's references) whose column holds the value; sorted.
    pub lookups: Vec<(LookupColumn, String)>,
    /// Entities by id.
    pub ids: Vec<String>,
}

impl Reading {
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty() && self.lookups.is_empty() && self.ids.is_empty()
    }

    /// The values `column` is asked for.
    pub fn values(&self, column: LookupColumn) -> Vec<&str> {
        self.lookups
            .iter()
            .filter(|(asked, _)| *asked == column)
            .map(|(_, value)| value.as_str())
            .collect()
    }

    fn add_targets_of(&mut self, refs: &PaymentRefs) {
        self.lookups
            .extend(target_lookups(refs).map(|(column, value)| (column, value.to_owned())));
    }

    fn add_payments_of(&mut self, kind: SubjectKind, provider_id: &str, keys: &TargetKeys) {
        self.lookups.extend(
            payment_lookups(kind, provider_id, keys)
                .map(|(column, value)| (column, value.to_owned())),
        );
    }

    /// Sorted, each once, and without what `read_ahead` has already read.
    fn settle(mut self, read_ahead: &ReadAhead) -> Self {
        self.identities
            .sort_by(|a, b| (a.0.as_str(), &a.1, &a.2).cmp(&(b.0.as_str(), &b.1, &b.2)));
        self.identities.dedup();
        self.identities
            .retain(|i| !read_ahead.identities.contains(i));
        self.lookups.sort();
        self.lookups.dedup();
        self.lookups
            .retain(|(column, value)| !read_ahead.asked(*column, value));
        self.ids.sort();
        self.ids.dedup();
        self.ids.retain(|id| !read_ahead.stored.contains_key(id));
        self
    }
}

impl ReadAhead {
    /// The first round: the entities `facts` are about, and what the facts themselves link to
    /// (the invoices and bills their payments name, the payments naming their invoices and
    /// bills). A payment's references are those its source's rule matches on, as the ledger
    /// keeps them.
    pub fn first_round(facts: &[&Fact]) -> Reading {
        let mut reading = Reading::default();
        for fact in facts {
            let data = fact.snapshot.data();
            if !tracks(data.kind()) {
                continue;
            }
            reading.identities.push((
                data.kind(),
                fact.provider.clone(),
                data.provider_id().to_owned(),
            ));
            match data {
                EntityData::Payment(payment) => reading.add_targets_of(&PaymentRefs::ruled(
                    &payment.references,
                    &fact.link_rule,
                    fact.sandbox,
                    &fact.provider,
                )),
                _ => {
                    if let Some(keys) = TargetKeys::of(data) {
                        reading.add_payments_of(data.kind(), data.provider_id(), &keys);
                    }
                }
            }
        }
        reading.settle(&ReadAhead::default())
    }

    /// The second round: what the facts' own entities, as stored, link to that the first round
    /// did not ask already: nothing, when they name what their facts do and are linked to what
    /// the first round found. Only the facts' own entities are followed: applying the facts asks
    /// about them alone, and following what lookups found (a payment naming several invoices,
    /// say) would lock rows no question reads.
    pub fn second_round(&self) -> Reading {
        let mut reading = Reading::default();
        let own = |e: &&Entity| {
            self.identities
                .contains(&(e.kind, e.provider.clone(), e.provider_id.clone()))
        };
        for entity in self.stored.values().filter(own) {
            match entity.kind {
                SubjectKind::Payment => reading.add_targets_of(&entity.refs),
                kind => reading.add_payments_of(kind, &entity.provider_id, &entity.keys),
            }
            reading.ids.extend(entity.linked_to.iter().cloned());
        }
        reading.settle(self)
    }

    /// The last round: the invoices and bills whose linked payments the facts will total. Their
    /// own entities, those payments are linked to, and the one each unlinked payment would
    /// link to; other candidates a payment names are left out (a reference common to many
    /// bills would read all their payments), and if one of them is chosen after all, its
    /// question goes to the store.
    pub fn linked_targets(&self, facts: &[&Fact]) -> Vec<String> {
        let targets = || {
            self.stored
                .values()
                .filter(|e| matches!(e.kind, SubjectKind::Invoice | SubjectKind::Bill))
        };
        let chosen = |refs: &PaymentRefs, currency: Option<Currency>| {
            best_target(refs, currency, targets()).map(|(target, _)| target.id.clone())
        };
        let mut ids: Vec<String> = targets()
            .filter(|t| {
                self.identities
                    .contains(&(t.kind, t.provider.clone(), t.provider_id.clone()))
            })
            .map(|t| t.id.clone())
            .collect();
        for entity in self.stored.values() {
            match &entity.linked_to {
                Some(target) => ids.push(target.clone()),
                None if entity.kind == SubjectKind::Payment => {
                    ids.extend(chosen(&entity.refs, entity.currency));
                }
                None => {}
            }
        }
        for fact in facts {
            if let EntityData::Payment(payment) = fact.snapshot.data() {
                ids.extend(chosen(
                    &PaymentRefs::ruled(
                        &payment.references,
                        &fact.link_rule,
                        fact.sandbox,
                        &fact.provider,
                    ),
                    Some(payment.currency),
                ));
            }
        }
        ids.sort();
        ids.dedup();
        ids
    }

    /// Takes in what the store found for a locked round.
    pub fn add(&mut self, reading: Reading, found: Vec<Entity>) {
        for entity in found {
            self.stored.insert(entity.id.clone(), entity);
        }
        self.identities.extend(reading.identities);
        for (column, value) in reading.lookups {
            self.lookups.entry(column).or_default().insert(value);
        }
    }

    /// Takes in the payments the store found linked to `targets`.
    pub fn add_linked(&mut self, targets: Vec<String>, found: Vec<Entity>) {
        self.linked.extend(found);
        self.linked_targets.extend(targets);
    }

    fn asked(&self, column: LookupColumn, value: &str) -> bool {
        self.lookups
            .get(&column)
            .is_some_and(|values| values.contains(value))
    }

    /// [`LedgerRepo::entity`]; `None` if not read.
    pub fn entity(
        &self,
        kind: SubjectKind,
        provider: &str,
        provider_id: &str,
    ) -> Option<Option<&Entity>> {
        let stored = self
            .stored
            .values()
            .find(|e| e.kind == kind && e.provider == provider && e.provider_id == provider_id);
        let asked = || {
            self.identities
                .contains(&(kind, provider.to_owned(), provider_id.to_owned()))
        };
        (stored.is_some() || asked()).then_some(stored)
    }

    /// [`LedgerRepo::entity_by_id`]; `None` if not read.
    pub fn entity_by_id(&self, id: &str) -> Option<&Entity> {
        self.stored.get(id)
    }

    /// [`LedgerRepo::targets_for`] as stored; `None` if not read.
    pub fn targets_for(&self, refs: &PaymentRefs) -> Option<Vec<Entity>> {
        let read = target_lookups(refs).all(|(column, v)| self.asked(column, v));
        read.then(|| answers(self.stored.values(), |e| is_target_of(e, refs)))
    }

    /// [`LedgerRepo::linkable_payments`] as stored; `None` if not read.
    pub fn linkable_payments(&self, target: &Entity) -> Option<Vec<Entity>> {
        let read = payment_lookups(target.kind, &target.provider_id, &target.keys)
            .all(|(column, v)| self.asked(column, v));
        read.then(|| answers(self.stored.values(), |e| is_linkable_to(e, target)))
    }

    /// [`LedgerRepo::linked_payments`] as stored; `None` if not read. An entity this
    /// transaction created (its identity was asked and not found) has none.
    pub fn linked_payments(&self, target: &Entity) -> Option<Vec<Entity>> {
        let created_here =
            self.entity(target.kind, &target.provider, &target.provider_id) == Some(None);
        let read = created_here || self.linked_targets.contains(&target.id);
        read.then(|| answers(&self.linked, |e| is_linked_to(e, &target.id)))
    }
}

fn answers<'a>(
    entities: impl IntoIterator<Item = &'a Entity>,
    query: impl Fn(&Entity) -> bool,
) -> Vec<Entity> {
    entities.into_iter().filter(|e| query(e)).cloned().collect()
}

/// A repository for applying a group of facts, over a store's own: every question goes first
/// to what the group has not written yet and what it read ahead, and to the store only when
/// those cannot answer it in full; saves stay unwritten until the caller writes
/// `unwritten` at the group's end. History and conclusions go straight to the store's
/// repository.
pub struct GroupedLedger<S> {
    pub store: S,
    pub read_ahead: ReadAhead,
    pub unwritten: UnwrittenEntities,
}

impl<S> GroupedLedger<S> {
    pub fn new(store: S, read_ahead: ReadAhead) -> Self {
        Self {
            store,
            read_ahead,
            unwritten: UnwrittenEntities::default(),
        }
    }
}

impl<S: LedgerRepo> LedgerRepo for GroupedLedger<S> {
    type Error = S::Error;

    async fn entity(
        &mut self,
        kind: SubjectKind,
        provider: &str,
        provider_id: &str,
    ) -> Result<Option<Entity>, Self::Error> {
        if let Some(entity) = self.unwritten.entity(kind, provider, provider_id) {
            return Ok(Some(entity.clone()));
        }
        if let Some(read) = self.read_ahead.entity(kind, provider, provider_id) {
            return Ok(read.cloned());
        }
        self.store.entity(kind, provider, provider_id).await
    }

    async fn entity_by_id(&mut self, id: &str) -> Result<Option<Entity>, Self::Error> {
        if let Some(entity) = self
            .unwritten
            .entity_by_id(id)
            .or_else(|| self.read_ahead.entity_by_id(id))
        {
            return Ok(Some(entity.clone()));
        }
        self.store.entity_by_id(id).await
    }

    /// What this group saved of it already is the latest (a fact of the group was about it,
    /// so its locks are held); otherwise the store holds it, past what was read ahead.
    async fn hold(&mut self, entity: &Entity) -> Result<Option<Entity>, Self::Error> {
        if let Some(saved) = self.unwritten.entity_by_id(&entity.id) {
            return Ok(Some(saved.clone()));
        }
        self.store.hold(entity).await
    }

    async fn targets_for(&mut self, refs: &PaymentRefs) -> Result<Vec<Entity>, Self::Error> {
        let stored = match self.read_ahead.targets_for(refs) {
            Some(read) => read,
            None => self.store.targets_for(refs).await?,
        };
        Ok(self.unwritten.targets_for(refs, stored))
    }

    async fn linkable_payments(&mut self, target: &Entity) -> Result<Vec<Entity>, Self::Error> {
        let stored = match self.read_ahead.linkable_payments(target) {
            Some(read) => read,
            None => self.store.linkable_payments(target).await?,
        };
        Ok(self.unwritten.linkable_payments(target, stored))
    }

    async fn linked_payments(&mut self, target: &Entity) -> Result<Vec<Entity>, Self::Error> {
        let stored = match self.read_ahead.linked_payments(target) {
            Some(read) => read,
            None => self.store.linked_payments(target).await?,
        };
        Ok(self.unwritten.linked_payments(&target.id, stored))
    }

    async fn save(&mut self, entity: &Entity) -> Result<(), Self::Error> {
        self.unwritten.save(entity);
        Ok(())
    }

    async fn record_history(&mut self, entry: &HistoryEntry) -> Result<(), Self::Error> {
        self.store.record_history(entry).await
    }

    async fn conclude(&mut self, conclusion: &Conclusion) -> Result<EventId, Self::Error> {
        self.store.conclude(conclusion).await
    }
}

/// The ids of every entity of `kind` lie strictly between these two strings in byte order, so
/// where keys compare as bytes (SQLite, and PostgreSQL's `COLLATE "C"` columns) a listing by kind
/// is a range of the primary key and needs no index of its own. An id is the kind's two-letter
/// prefix, `_` and a ULID: it sorts after the prefix alone and before the prefix with its last
/// letter advanced.
pub fn id_bounds(kind: SubjectKind) -> (&'static str, String) {
    let prefix = prefix(kind);
    let mut upper = prefix.to_owned();
    if let Some(last) = upper.pop() {
        upper.push(char::from(last as u8 + 1));
    }
    (prefix, upper)
}

/// Whether `text` is the id of an entity of `kind`: its prefix, `_` and a ULID.
pub fn is_id_of(kind: SubjectKind, text: &str) -> bool {
    text.strip_prefix(prefix(kind))
        .and_then(|rest| rest.strip_prefix('_'))
        // Exactly as written, upper case: listings compare the text itself.
        .is_some_and(|ulid| {
            !ulid.bytes().any(|byte| byte.is_ascii_lowercase())
                && crate::ids::exact_ulid(ulid).is_some()
        })
}

/// The id prefix of each kind of ledger entity.
fn prefix(kind: SubjectKind) -> &'static str {
    match kind {
        SubjectKind::Invoice => "iv",
        SubjectKind::Payment => "py",
        SubjectKind::Bill => "bl",
        SubjectKind::Biller => "br",
        SubjectKind::Dispute => "dp",
        SubjectKind::Document => "dc",
        SubjectKind::NetworkMember => "nm",
    }
}

/// Whether the ledger keeps entities of this kind.
pub fn tracks(kind: SubjectKind) -> bool {
    !matches!(kind, SubjectKind::NetworkMember)
}

/// The status fields of a snapshot: billhook's word and the provider's text.
pub fn status_of(data: &EntityData) -> (Option<String>, Option<String>) {
    match data {
        EntityData::Invoice(i) => (i.status.clone(), i.provider_status.clone()),
        EntityData::Payment(p) => (Some(p.status.clone()), Some(p.provider_status.clone())),
        EntityData::Bill(b) => (b.status.clone(), b.provider_status.clone()),
        EntityData::Dispute(d) => (Some(d.status.clone()), Some(d.provider_status.clone())),
        EntityData::Biller(b) => (b.status.clone(), b.provider_status.clone()),
        EntityData::Document(d) => (d.status.clone(), d.provider_status.clone()),
        EntityData::NetworkMember(m) => (Some(m.status.clone()), None),
    }
}

/// Money, due date and keys from a snapshot.
fn describe(entity: &mut Entity) {
    match entity.snapshot.data() {
        EntityData::Invoice(invoice) => {
            entity.currency = Some(invoice.currency);
            entity.amount = invoice.amount;
            entity.due_by = invoice.expires_at;
            replace_keys(entity);
        }
        EntityData::Bill(bill) => {
            entity.currency = Some(bill.currency);
            entity.amount = bill.amount;
            entity.due_by = bill
                .due_date
                .as_deref()
                .and_then(|d| Timestamp::parse_rfc3339(&format!("{d}T23:59:59+05:30")).ok());
            replace_keys(entity);
        }
        EntityData::Payment(payment) => {
            entity.currency = Some(payment.currency);
            entity.amount = Some(payment.amount);
        }
        _ => {}
    }
}

/// The keys of the entity's snapshot, with every number it had before kept as a former one.
fn replace_keys(entity: &mut Entity) {
    let earlier = std::mem::take(&mut entity.keys);
    entity.keys = TargetKeys::of(entity.snapshot.data()).unwrap_or_default();
    entity.keys.remember(earlier.numbers());
}

/// What a payment contributes: its amount net of refunds once it has succeeded.
fn counted(entity: &Entity) -> Amount {
    match (entity.snapshot.data(), entity.status.as_deref()) {
        (EntityData::Payment(payment), Some("succeeded")) => {
            let refunded = payment.amount_refunded.unwrap_or(Amount::ZERO);
            payment
                .amount
                .checked_sub(refunded)
                .filter(|a| a.minor() > 0)
                .unwrap_or(Amount::ZERO)
        }
        _ => Amount::ZERO,
    }
}

/// Which reference links a payment to a target, if any, and its strength: lower is stronger, in
/// the order of the source's rule (an id before a number, a number before a free-text remark),
/// and for each reference, the target's id or current number before a number it had before
/// (an invoice that now has the number before one renumbered away from it).
fn link_reason(payment: &PaymentRefs, target: &Entity) -> Option<(u8, &'static str)> {
    if payment.sandbox != target.sandbox || payment.provider != target.provider {
        return None;
    }
    // 0: by its id or current number, 1: by a former number only.
    let numbered = |value: &str| {
        if target.keys.number.as_deref() == Some(value) {
            Some(0)
        } else {
            target
                .keys
                .former_numbers
                .iter()
                .any(|number| number == value)
                .then_some(1)
        }
    };
    let names = |value: &Option<String>| {
        let value = value.as_deref()?;
        if value == target.provider_id {
            Some(0)
        } else {
            numbered(value)
        }
    };
    match target.kind {
        SubjectKind::Invoice if is_incoming(target) => None,
        SubjectKind::Invoice => {
            if payment.invoice_id.as_ref() == Some(&target.provider_id) {
                Some((0, "invoice_id"))
            } else if payment.order_id.is_some() && payment.order_id == target.keys.order_id {
                Some((2, "order_id"))
            } else if let Some(former) = names(&payment.merchant_reference) {
                Some((4 + former, "merchant_reference"))
            } else if let Some(former) = names(&payment.remark) {
                Some((6 + former, "remark"))
            } else {
                None
            }
        }
        SubjectKind::Bill => {
            if payment.bill_ref_id.as_ref() == Some(&target.provider_id) {
                Some((0, "bill_ref_id"))
            } else if payment.bill_ref_id.is_none()
                && let Some(former) = payment.biller_ref_id.as_deref().and_then(numbered)
            {
                // Every month's bill of a customer shares its `billerRefId`: a payment that
                // names its own bill waits for that one rather than pay another month's.
                Some((2 + former, "biller_ref_id"))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// An invoice a supplier sent the business (Bharat Connect `INCOMING`): the business owes it,
/// so no payment the business receives pays it, however alike their numbers.
fn is_incoming(invoice: &Entity) -> bool {
    matches!(
        invoice.snapshot.data(),
        EntityData::Invoice(data) if data.direction == Some(Direction::Incoming)
    )
}

/// The target a payment links to among `candidates`, and by which reference: one in the
/// payment's currency (money in another would count towards nothing, and keep the payment from
/// being announced as unmatched), the one its strongest reference names (a bill's own `refId`
/// before the customer's `billerRefId`, which every month's bill shares), then the lowest
/// provider and provider id, so that every arrival order makes the same choice.
fn best_target<'a>(
    refs: &PaymentRefs,
    currency: Option<Currency>,
    candidates: impl IntoIterator<Item = &'a Entity>,
) -> Option<(&'a Entity, &'static str)> {
    candidates
        .into_iter()
        .filter(|target| same_currency(currency, target.currency))
        .filter_map(|target| {
            link_reason(refs, target).map(|(strength, reason)| (strength, target, reason))
        })
        .min_by_key(|&(strength, target, _)| {
            (
                strength,
                target.provider.as_str(),
                target.provider_id.as_str(),
            )
        })
        .map(|(_, target, reason)| (target, reason))
}

/// Whether a payment's money can count towards a target: the same currency, or one not known.
fn same_currency(paid: Option<Currency>, owed: Option<Currency>) -> bool {
    match (paid, owed) {
        (Some(paid), Some(owed)) => paid == owed,
        _ => true,
    }
}

/// What applying one fact did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The entity the fact was about, if the ledger keeps its kind.
    pub entity_id: Option<String>,
    /// Whether its status moved.
    pub status_applied: bool,
    pub conclusions: Vec<Concluded>,
}

/// Applies one fact: merges it into its entity, links payments and their invoices or bills,
/// recomputes totals, and concludes settlements.
pub async fn apply<R: LedgerRepo>(repo: &mut R, fact: &Fact) -> Result<Applied, R::Error> {
    let kind = fact.snapshot.data().kind();
    if !tracks(kind) {
        return Ok(Applied::default());
    }
    let provider_id = fact.snapshot.data().provider_id().to_owned();
    let now = fact.received_at;
    let mut entity = match repo.entity(kind, &fact.provider, &provider_id).await? {
        Some(entity) => entity,
        None => Entity {
            id: crate::ids::prefixed_id(prefix(kind), fact.received_at),
            kind,
            provider: fact.provider.clone(),
            provider_id: provider_id.clone(),
            source: fact.source.clone(),
            sandbox: fact.sandbox,
            status: None,
            provider_status: None,
            status_precedence: Precedence::NONE,
            status_settles: false,
            snapshot: fact.snapshot.clone(),
            content_precedence: Precedence::NONE,
            keys: TargetKeys::default(),
            refs: PaymentRefs {
                sandbox: fact.sandbox,
                provider: fact.provider.clone(),
                ..PaymentRefs::default()
            },
            currency: None,
            amount: None,
            counted: Amount::ZERO,
            paid: Amount::ZERO,
            due: None,
            overpaid: Amount::ZERO,
            due_by: None,
            linked_to: None,
            link_rule: None,
            settled_event: None,
            settled_at: None,
            unmatched_event: None,
            created_at: now,
            updated_at: now,
            inbound_id: fact.inbound_id,
        },
    };

    // A snapshot the provider did not stamp has no place in time: it comes before every
    // stamped one, and among unstamped ones the rank and the hash decide, in every order. One
    // known to be no older than a time is placed at that time, where the rank decides against
    // a snapshot of the same time (an update after the creation it is no older than).
    let at = fact
        .occurred_at
        .or(fact.not_before)
        .map_or(Precedence::UNSTAMPED, |time| time.unix_millis());

    // Status: forward only.
    let (status, provider_status) = status_of(fact.snapshot.data());
    let mut status_applied = false;
    if let Some(word) = &status {
        let precedence = Precedence {
            level: fact.rank.map_or(i32::MIN, |r| r.level),
            at,
            tiebreak: stable_hash(&[word, provider_status.as_deref().unwrap_or("")]),
        };
        if precedence > entity.status_precedence {
            entity.status = Some(word.clone());
            entity.provider_status = provider_status.clone();
            entity.status_precedence = precedence;
            entity.status_settles = fact.rank.is_some_and(|r| r.settles);
            status_applied = true;
        }
    }

    // Content: the latest snapshot by provider time; at the same time, the one with the higher
    // status rank (providers often stamp a whole lifecycle with one second, and Bharat Connect
    // stamps none), then a stable hash. So an unstamped snapshot with no status (a Bharat
    // Connect edit, which states no amount either) never hides a ranked one's amount.
    let level = fact.rank.map_or(i32::MIN, |r| r.level);
    let rank_bits = u64::from(level.cast_unsigned() ^ 0x8000_0000);
    let content = Precedence {
        level: 0,
        at,
        tiebreak: (rank_bits << 32)
            | (stable_hash(&[fact.snapshot.json().unwrap_or_default()]) & 0xFFFF_FFFF),
    };
    let was_incoming = is_incoming(&entity);
    if content > entity.content_precedence {
        entity.snapshot = with_direction_kept(&fact.snapshot, entity.snapshot.data())
            .unwrap_or_else(|| fact.snapshot.clone());
        entity.content_precedence = content;
        entity.inbound_id = fact.inbound_id;
        describe(&mut entity);
    } else if let Some(known) = with_direction_kept(&entity.snapshot, fact.snapshot.data()) {
        entity.snapshot = known;
    }
    // A number the fact names stays one the entry is found by, whichever snapshot wins.
    if let Some(named) = TargetKeys::of(fact.snapshot.data()) {
        entity.keys.remember(named.number.as_deref());
    }
    // Whether the fact names a reference the payment had not, or a lesser value of one: not
    // merely that the source's rule changed what is kept.
    let mut names_new_references = false;
    if let EntityData::Payment(payment) = fact.snapshot.data() {
        let named = PaymentRefs::ruled(
            &payment.references,
            &fact.link_rule,
            entity.sandbox,
            &entity.provider,
        );
        // Kept references are held to today's rule too: one the source no longer matches on
        // (`reconcile` narrowed) links nothing more.
        let kept = std::mem::take(&mut entity.refs).within(&fact.link_rule);
        names_new_references = named.change(&kept);
        entity.refs = kept.merged(named);
    }
    entity.counted = counted(&entity);
    entity.updated_at = now;

    repo.record_history(&HistoryEntry {
        entity_id: entity.id.clone(),
        event_id: fact.event_id,
        event_type: fact.event_type,
        status: status.clone(),
        provider_status,
        level: fact.rank.map(|r| r.level),
        occurred_at: fact.occurred_at.unwrap_or(fact.received_at),
        received_at: fact.received_at,
        applied: status_applied,
    })
    .await?;

    let trigger = Trigger {
        source: fact.source.clone(),
        sandbox: fact.sandbox,
        provider: fact.provider.clone(),
        provider_event: fact.provider_event.clone(),
        inbound_id: fact.inbound_id,
        at: now,
    };
    let mut conclusions = Vec::new();
    match kind {
        SubjectKind::Payment => {
            // A payment not linked yet looks for its target. One linked looks again when a
            // message of its own names a reference it had not (or a lesser value of one), so
            // that, with its targets known, every order of its messages ends with the same
            // link, as it ends with the same references. A target that arrives later does not
            // take it over by itself, narrowing the source's rule moves nothing, and a link no
            // target answers to any more stays.
            let previous = entity.linked_to.clone();
            if previous.is_none() || names_new_references {
                let targets = repo.targets_for(&entity.refs).await?;
                if let Some((target, reason)) = best_target(&entity.refs, entity.currency, &targets)
                {
                    entity.linked_to = Some(target.id.clone());
                    entity.link_rule = Some(reason.to_owned());
                }
            }
            repo.save(&entity).await?;
            if let Some(left) = previous.filter(|left| entity.linked_to.as_ref() != Some(left)) {
                conclusions.extend(recompute(repo, &left, &trigger).await?);
            }
            if let Some(target) = entity.linked_to.clone() {
                conclusions.extend(recompute(repo, &target, &trigger).await?);
            }
        }
        SubjectKind::Invoice | SubjectKind::Bill => {
            if !was_incoming && is_incoming(&entity) {
                // Boxed: rare, and its lookups would otherwise enlarge every apply's future.
                conclusions.extend(Box::pin(relink_from_received(repo, &entity, &trigger)).await?);
            }
            for mut payment in repo.linkable_payments(&entity).await? {
                if !same_currency(payment.currency, entity.currency) {
                    continue;
                }
                if let Some((_, reason)) = link_reason(&payment.refs, &entity) {
                    payment.linked_to = Some(entity.id.clone());
                    payment.link_rule = Some(reason.to_owned());
                    payment.updated_at = now;
                    repo.save(&payment).await?;
                }
            }
            // Totalled with the entity in hand: one save, and no second read of what this
            // fact has just written.
            conclusions.extend(settle(repo, &mut entity, &trigger).await?);
            repo.save(&entity).await?;
        }
        _ => repo.save(&entity).await?,
    }
    Ok(Applied {
        entity_id: Some(entity.id),
        status_applied,
        conclusions,
    })
}

/// Moves the payments linked to an invoice that turned out to be one the business received:
/// linked while no message had said which way it went (a Bharat Connect edit, which does not,
/// delivered before the invoice's creation), they go to the target they name among the others,
/// or back to waiting for one.
async fn relink_from_received<R: LedgerRepo>(
    repo: &mut R,
    received: &Entity,
    trigger: &Trigger,
) -> Result<Vec<Concluded>, R::Error> {
    let mut concluded = Vec::new();
    for linked in repo.linked_payments(received).await? {
        let Some(mut payment) = repo.hold(&linked).await? else {
            continue;
        };
        if payment.linked_to.as_deref() != Some(received.id.as_str()) {
            continue;
        }
        let mut targets = repo.targets_for(&payment.refs).await?;
        targets.retain(|target| target.id != received.id);
        let (linked_to, link_rule) = best_target(&payment.refs, payment.currency, &targets)
            .map_or((None, None), |(target, reason)| {
                (Some(target.id.clone()), Some(reason.to_owned()))
            });
        payment.linked_to = linked_to;
        payment.link_rule = link_rule;
        payment.updated_at = trigger.at;
        repo.save(&payment).await?;
        if let Some(target) = &payment.linked_to {
            concluded.extend(recompute(repo, target, trigger).await?);
        }
    }
    Ok(concluded)
}

/// `snapshot` with the direction its messages state together, if that differs from its own.
/// An invoice's direction, once a message has stated it, stays known whichever snapshot wins (a
/// Bharat Connect edit states none): a payment must never link to an invoice the business
/// received because the message that won did not say so.
///
/// Where messages disagree, `OUTGOING` wins, in every arrival order. Bharat Connect states the
/// direction of the API call that raised the message: the provider's own lifecycle of one
/// invoice is a create `OUTGOING` (the supplier sent it), a confirm `INCOMING` (the buyer
/// accepted it) and a change of status `OUTGOING` (the supplier marked it paid). An account that
/// sees its invoice go out has issued it; the buyer's acceptance does not make it one the
/// business owes.
fn with_direction_kept(snapshot: &Snapshot, other: &EntityData) -> Option<Snapshot> {
    match (snapshot.data(), other) {
        (EntityData::Invoice(invoice), EntityData::Invoice(stated)) => {
            let direction = match (invoice.direction, stated.direction) {
                (Some(Direction::Outgoing), _) | (_, Some(Direction::Outgoing)) => {
                    Some(Direction::Outgoing)
                }
                (own, other) => own.or(other),
            };
            (direction != invoice.direction).then(|| {
                let mut invoice = invoice.clone();
                invoice.direction = direction;
                Snapshot::of(EntityData::Invoice(invoice))
            })
        }
        _ => None,
    }
}

/// Loads an invoice or bill, settles it ([`settle`]) and saves it: for a payment's target.
async fn recompute<R: LedgerRepo>(
    repo: &mut R,
    target_id: &str,
    trigger: &Trigger,
) -> Result<Vec<Concluded>, R::Error> {
    let Some(mut target) = repo.entity_by_id(target_id).await? else {
        return Ok(Vec::new());
    };
    let concluded = settle(repo, &mut target, trigger).await?;
    repo.save(&target).await?;
    Ok(concluded)
}

/// Sets an invoice's or bill's totals from its linked payments and its status, and concludes
/// its settlement the first time it is covered. The caller saves the target.
async fn settle<R: LedgerRepo>(
    repo: &mut R,
    target: &mut Entity,
    trigger: &Trigger,
) -> Result<Vec<Concluded>, R::Error> {
    let payments = repo.linked_payments(target).await?;
    let from_payments = payments
        .iter()
        .filter(|p| p.currency == target.currency || target.currency.is_none())
        // Counted amounts are never negative: a sum past the largest amount stays there, the
        // same in every order, rather than dropping whichever payment came last.
        .fold(Amount::ZERO, |sum, p| {
            sum.checked_add(p.counted)
                .unwrap_or(Amount::from_minor(i64::MAX))
        });
    let amount = target.amount;
    let paid = match amount {
        Some(amount) if target.status_settles => from_payments.max(amount),
        _ => from_payments,
    };
    target.paid = paid;
    target.due = amount.map(|a| {
        a.checked_sub(paid)
            .filter(|d| d.minor() > 0)
            .unwrap_or(Amount::ZERO)
    });
    target.overpaid = amount
        .and_then(|a| paid.checked_sub(a))
        .filter(|o| o.minor() > 0)
        .unwrap_or(Amount::ZERO);
    let mut concluded = Vec::new();
    // With its amount unknown or zero, an invoice is covered when a status says it is paid in
    // full. One the business received is never covered: settlements count money the business
    // receives, and that invoice's money goes the other way (its own `PAID` shows in its
    // status), so one announced settled before its direction was known is taken back.
    let covered = !is_incoming(target)
        && match amount {
            Some(amount) if amount.minor() > 0 => paid >= amount,
            _ => target.status_settles,
        };
    if target.kind != SubjectKind::Invoice || covered == target.settled_event.is_some() {
        return Ok(concluded);
    }
    // Covered for the first time, or again; or no longer (a refund, a larger amount, a payment
    // that turned out to be another's), which subscribers counting money from `invoice.settled`
    // must hear of as surely as they heard of the settlement.
    target.updated_at = trigger.at;
    let conclusion = if covered {
        Conclusion::InvoiceSettled {
            invoice: target.clone(),
            trigger: trigger.clone(),
        }
    } else {
        // Not covered and yet announced settled: `settled_event` is there (checked above).
        let Some(reverses) = target.settled_event.take() else {
            return Ok(concluded);
        };
        target.settled_at = None;
        Conclusion::InvoiceUnsettled {
            invoice: target.clone(),
            trigger: trigger.clone(),
            reverses,
        }
    };
    let event = repo.conclude(&conclusion).await?;
    if covered {
        target.settled_event = Some(event);
        target.settled_at = Some(trigger.at);
    }
    concluded.push(Concluded {
        id: event,
        event_type: conclusion.event_type(),
    });
    Ok(concluded)
}

/// Runs a future that never waits (a repository over a synchronous database connection) to
/// completion on the current thread.
pub fn run_ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut context) {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("a synchronous repository's future never waits"),
    }
}

#[cfg(test)]
mod tests;
