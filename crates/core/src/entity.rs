//! Normalized snapshots of the things events are about: invoices, payments, bills, disputes,
//! billers, CamInvoice documents and network members.
//!
//! A snapshot is what one provider message says about one entity at one moment, in billhook's
//! vocabulary: money as [`Amount`] in minor units with one [`Currency`] per snapshot, times as UTC
//! [`Timestamp`]s, ids as text (a provider's numeric id such as Setu's `699158487875191900` keeps
//! every digit). Statuses are open: `status` is billhook's lower-case vocabulary for the entity,
//! `provider_status` is the provider's value verbatim, and a status nobody has seen before is
//! carried through unchanged rather than refused.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::money::{Amount, Currency};
use crate::time::Timestamp;

/// The longest id or reference, in bytes, billhook finds entities by. Ids and references are
/// looked up through database indexes, and PostgreSQL refuses an index entry past about
/// 2.7 KB: an entity whose id is longer is refused, and a longer reference or number is kept in
/// its snapshot but not looked up by. Providers' ids are a few dozen characters.
pub const MAX_KEY_BYTES: usize = 512;

/// `value` if it can be a key: not empty and at most [`MAX_KEY_BYTES`] long.
pub fn as_key(value: &Option<String>) -> Option<String> {
    value
        .clone()
        .filter(|v| !v.is_empty() && v.len() <= MAX_KEY_BYTES)
}

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    Invoice,
    Payment,
    Bill,
    Dispute,
    Biller,
    Document,
    NetworkMember,
}

impl SubjectKind {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "invoice" => SubjectKind::Invoice,
            "payment" => SubjectKind::Payment,
            "bill" => SubjectKind::Bill,
            "dispute" => SubjectKind::Dispute,
            "biller" => SubjectKind::Biller,
            "document" => SubjectKind::Document,
            "network_member" => SubjectKind::NetworkMember,
            _ => return None,
        })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            SubjectKind::Invoice => "invoice",
            SubjectKind::Payment => "payment",
            SubjectKind::Bill => "bill",
            SubjectKind::Dispute => "dispute",
            SubjectKind::Biller => "biller",
            SubjectKind::Document => "document",
            SubjectKind::NetworkMember => "network_member",
        }
    }
}

/// The entity an event is about: its kind and the provider's id for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Subject {
    pub kind: SubjectKind,
    /// The provider's id (`inv_DEWIP9zGRk1Col`, `tx_…`, a Setu `refId`, a CamInvoice document UUID).
    pub id: String,
}

/// A postal address as the provider wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Address {
    pub line1: Option<String>,
    pub line2: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub postal_code: Option<String>,
    pub country: Option<String>,
}

/// A business or person on an invoice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Party {
    /// The provider's id for the party (Bharat Connect `b2b_id`, Razorpay `customer_id`).
    pub provider_id: Option<String>,
    pub legal_name: Option<String>,
    pub trade_name: Option<String>,
    /// As sent; an invalid GSTIN is kept and reported as a warning.
    pub gstin: Option<String>,
    /// GST state code (`29` for Karnataka).
    pub state_code: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub address: Option<Address>,
}

/// One line of an invoice. Money in the invoice's currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LineItem {
    pub serial_no: Option<String>,
    pub description: Option<String>,
    /// HSN (goods) or SAC (services) code.
    pub hsn_code: Option<String>,
    pub is_service: Option<bool>,
    /// Exact decimal text; quantities may be fractional.
    pub quantity: Option<String>,
    pub unit_price: Option<Amount>,
    /// Price × quantity before tax.
    pub amount: Option<Amount>,
    pub taxable_amount: Option<Amount>,
    /// GST rate in percent, exact decimal text (`"18"`).
    pub gst_rate: Option<String>,
    /// Line total including tax.
    pub total: Option<Amount>,
}

/// Whether an invoice was issued by the account billhook serves or received by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Outgoing,
    Incoming,
}

/// An invoice as one provider message describes it.
///
/// `status` vocabulary: `draft`, `issued`, `sent_to_buyer`, `accepted`, `rejected`,
/// `partially_paid`, `payment_initiated`, `paid`, `closed`, `cancelled`, `expired`, `deleted`,
/// and any other provider status lower-cased with spaces as underscores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InvoiceSnapshot {
    pub provider_invoice_id: String,
    pub number: Option<String>,
    pub direction: Option<Direction>,
    pub status: Option<String>,
    pub provider_status: Option<String>,
    pub currency: Currency,
    /// Total payable, tax included.
    pub amount: Option<Amount>,
    pub taxable_amount: Option<Amount>,
    pub tax_amount: Option<Amount>,
    pub amount_paid: Option<Amount>,
    pub amount_due: Option<Amount>,
    pub supplier: Option<Party>,
    pub buyer: Option<Party>,
    /// GST place-of-supply state code.
    pub place_of_supply: Option<String>,
    pub line_items: Vec<LineItem>,
    pub order_id: Option<String>,
    pub payment_id: Option<String>,
    pub description: Option<String>,
    pub issued_at: Option<Timestamp>,
    pub paid_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub cancelled_at: Option<Timestamp>,
    pub expired_at: Option<Timestamp>,
}

/// Card details a provider shares about a card payment (never the number).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CardInfo {
    pub network: Option<String>,
    pub last4: Option<String>,
    #[serde(rename = "type")]
    pub card_type: Option<String>,
    pub issuer: Option<String>,
}

/// Who paid or who was paid.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PaymentParty {
    pub name: Option<String>,
    /// UPI virtual payment address.
    pub vpa: Option<String>,
    pub account_number: Option<String>,
    pub ifsc: Option<String>,
    /// The provider's account id (Zwitch virtual account `va_…`).
    pub account_id: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub bank: Option<String>,
    pub wallet: Option<String>,
    pub card: Option<CardInfo>,
}

/// The references that tie a payment to the rest of the world.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PaymentReferences {
    /// Bank reference: RRN for UPI, UTR for bank transfers.
    pub bank_reference: Option<String>,
    /// The payment network's or aggregator's transaction reference.
    pub transaction_reference: Option<String>,
    /// The merchant's own reference for the payment (Zwitch `merchant_reference_id`).
    pub merchant_reference: Option<String>,
    pub order_id: Option<String>,
    pub invoice_id: Option<String>,
    /// Setu `refId` of the bill this payment pays.
    pub bill_ref_id: Option<String>,
    pub biller_ref_id: Option<String>,
    pub biller_id: Option<String>,
    /// Free text the payer or merchant attached (Zwitch `remark`).
    pub remark: Option<String>,
}

/// Why a payment failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PaymentFailure {
    pub code: Option<String>,
    pub reason: Option<String>,
}

/// A payment as one provider message describes it.
///
/// `status` vocabulary: `created`, `pending`, `authorized`, `processing`, `succeeded`, `failed`,
/// `refunded`, and any other provider status lower-cased. `rail` vocabulary: `upi`, `card`,
/// `netbanking`, `wallet`, `emi`, `bank_transfer`, `bbps`, `cash`, and others as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PaymentSnapshot {
    pub provider_payment_id: String,
    pub rail: Option<String>,
    /// How the payer paid within the rail, as the provider names it (`card`, `UPI`, `Debit Card`).
    pub method: Option<String>,
    pub status: String,
    pub provider_status: String,
    pub amount: Amount,
    pub currency: Currency,
    pub amount_refunded: Option<Amount>,
    /// The provider's fee, tax included.
    pub fee: Option<Amount>,
    /// Tax on the provider's fee.
    pub fee_tax: Option<Amount>,
    pub payer: Option<PaymentParty>,
    pub payee: Option<PaymentParty>,
    pub references: PaymentReferences,
    pub description: Option<String>,
    pub failure: Option<PaymentFailure>,
    pub created_at: Option<Timestamp>,
    /// When the money moved (Zwitch `transacted_at`, Setu payment timestamp).
    pub completed_at: Option<Timestamp>,
    pub settled: Option<bool>,
    pub settled_at: Option<Timestamp>,
}

/// A payment mode's limits for a bill, in minor units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PaymentLimit {
    pub mode: String,
    pub min: Option<Amount>,
    pub max: Option<Amount>,
    pub supports_pending_status: Option<bool>,
}

/// A BBPS bill fetched for a customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BillSnapshot {
    /// Setu's `refId` for the fetch; a later `BILL_PAY` carries the same one.
    pub ref_id: String,
    pub biller_ref_id: Option<String>,
    pub biller_id: Option<String>,
    pub bill_number: Option<String>,
    pub customer_name: Option<String>,
    pub amount: Option<Amount>,
    pub currency: Currency,
    /// `YYYY-MM-DD` as the biller wrote it.
    pub bill_date: Option<String>,
    pub due_date: Option<String>,
    pub bill_period: Option<String>,
    pub exactness: Option<String>,
    /// The outcome of the fetch, lower-cased (`success`, `failure`).
    pub status: Option<String>,
    pub provider_status: Option<String>,
    pub payment_limits: Vec<PaymentLimit>,
}

/// A BBPS complaint about a bill payment.
///
/// `status` is the provider's dispute status lower-cased (`initialized`, `assigned`, `escalated`,
/// `resolved`, `unresolved`, `rejected`, `refunded`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DisputeSnapshot {
    pub dispute_id: String,
    /// The `refId` of the disputed transaction.
    pub ref_id: Option<String>,
    pub status: String,
    pub provider_status: String,
    pub assigned_to: Option<String>,
    pub remarks: Option<String>,
}

/// A plan a BBPS biller offers (a subscription tier, a recharge pack).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BillerPlan {
    /// The plan's numeric id as exact digits.
    pub id: String,
    pub plan_id: Option<String>,
    pub amount: Option<Amount>,
    pub currency: Currency,
    pub category_type: Option<String>,
    pub sub_type: Option<String>,
    pub description: Option<String>,
    pub effective_from: Option<String>,
    pub effective_to: Option<String>,
    pub status: Option<String>,
}

/// A payment channel or mode a biller accepts, with its limits in minor units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BillerPaymentOption {
    pub name: String,
    pub min: Option<Amount>,
    pub max: Option<Amount>,
}

/// A BBPS biller as Setu's `BILLER_UPDATES` describes it.
///
/// `status` is the provider's biller status lower-cased (`active`, `deactivated`,
/// `pending_deactivation`, `pending_delete`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BillerSnapshot {
    /// The biller's numeric id as exact digits (it exceeds 2^53).
    pub id: String,
    /// The BBPS biller id (`ZEE500000NAT01`).
    pub biller_id: Option<String>,
    pub name: Option<String>,
    pub alias_name: Option<String>,
    pub category: Option<String>,
    pub status: Option<String>,
    pub provider_status: Option<String>,
    pub coverage: Option<String>,
    pub mode: Option<String>,
    pub fetch_requirement: Option<String>,
    pub payment_exactness: Option<String>,
    pub effective_from: Option<String>,
    pub effective_to: Option<String>,
    pub payment_channels: Vec<BillerPaymentOption>,
    pub payment_modes: Vec<BillerPaymentOption>,
    pub plans: Vec<BillerPlan>,
}

/// A CamInvoice e-invoicing document (a UBL 2.1 invoice) as the network reports it.
///
/// `status` is the CamInvoice document status lower-cased (`pending`, `acknowledged`,
/// `in_process`, `under_query`, `conditionally_accepted`, `accepted`, `rejected`, `paid`, `sent`,
/// `delivered`); absent when the event only reports delivery or receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DocumentSnapshot {
    pub document_id: String,
    /// The CamInvoice member (`KHUID…`) the notification was addressed to.
    pub member_id: Option<String>,
    pub status: Option<String>,
    pub provider_status: Option<String>,
}

/// A member of an e-invoicing network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkMemberSnapshot {
    /// CamInvoice member id (`KHUID…`).
    pub member_id: String,
    pub status: String,
}

/// The entity snapshot carried by a canonical event; which one follows from `subject.kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum EntityData {
    Invoice(InvoiceSnapshot),
    Payment(PaymentSnapshot),
    Bill(BillSnapshot),
    Dispute(DisputeSnapshot),
    Biller(BillerSnapshot),
    Document(DocumentSnapshot),
    NetworkMember(NetworkMemberSnapshot),
}

/// `anyOf` the snapshots: `subject.kind` says which one `data` is, and the snapshots' schemas
/// leave room for fields added later, so more than one may match a value.
impl utoipa::PartialSchema for EntityData {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AnyOfBuilder, Ref};
        let mut any_of = AnyOfBuilder::new().description(Some(
            "The entity snapshot carried by a canonical event; which one follows from `subject.kind`.",
        ));
        for name in SNAPSHOT_SCHEMAS {
            any_of = any_of.item(Ref::from_schema_name(*name));
        }
        any_of.into()
    }
}

const SNAPSHOT_SCHEMAS: &[&str] = &[
    "InvoiceSnapshot",
    "PaymentSnapshot",
    "BillSnapshot",
    "DisputeSnapshot",
    "BillerSnapshot",
    "DocumentSnapshot",
    "NetworkMemberSnapshot",
];

impl ToSchema for EntityData {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        fn add<T: ToSchema>(
            schemas: &mut Vec<(
                String,
                utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
            )>,
        ) {
            schemas.push((T::name().into_owned(), T::schema()));
            T::schemas(schemas);
        }
        add::<InvoiceSnapshot>(schemas);
        add::<PaymentSnapshot>(schemas);
        add::<BillSnapshot>(schemas);
        add::<DisputeSnapshot>(schemas);
        add::<BillerSnapshot>(schemas);
        add::<DocumentSnapshot>(schemas);
        add::<NetworkMemberSnapshot>(schemas);
    }
}

impl EntityData {
    pub fn kind(&self) -> SubjectKind {
        match self {
            EntityData::Invoice(_) => SubjectKind::Invoice,
            EntityData::Payment(_) => SubjectKind::Payment,
            EntityData::Bill(_) => SubjectKind::Bill,
            EntityData::Dispute(_) => SubjectKind::Dispute,
            EntityData::Biller(_) => SubjectKind::Biller,
            EntityData::Document(_) => SubjectKind::Document,
            EntityData::NetworkMember(_) => SubjectKind::NetworkMember,
        }
    }

    /// The provider's id of the entity.
    pub fn provider_id(&self) -> &str {
        match self {
            EntityData::Invoice(invoice) => &invoice.provider_invoice_id,
            EntityData::Payment(payment) => &payment.provider_payment_id,
            EntityData::Bill(bill) => &bill.ref_id,
            EntityData::Dispute(dispute) => &dispute.dispute_id,
            EntityData::Biller(biller) => &biller.id,
            EntityData::Document(document) => &document.document_id,
            EntityData::NetworkMember(member) => &member.member_id,
        }
    }

    /// Reads a snapshot of the given kind back from its JSON.
    pub fn from_json(kind: SubjectKind, json: &str) -> Result<Self, serde_json::Error> {
        Ok(match kind {
            SubjectKind::Invoice => EntityData::Invoice(serde_json::from_str(json)?),
            SubjectKind::Payment => EntityData::Payment(serde_json::from_str(json)?),
            SubjectKind::Bill => EntityData::Bill(serde_json::from_str(json)?),
            SubjectKind::Dispute => EntityData::Dispute(serde_json::from_str(json)?),
            SubjectKind::Biller => EntityData::Biller(serde_json::from_str(json)?),
            SubjectKind::Document => EntityData::Document(serde_json::from_str(json)?),
            SubjectKind::NetworkMember => EntityData::NetworkMember(serde_json::from_str(json)?),
        })
    }

    pub fn subject(&self) -> Subject {
        Subject {
            kind: self.kind(),
            id: self.provider_id().to_owned(),
        }
    }
}

/// billhook's status vocabulary for a provider's status text: lower case, spaces and dashes as
/// underscores (`SENT TO BUYER` → `sent_to_buyer`, `Success` → `success`).
pub fn status_word(provider_status: &str) -> String {
    provider_status
        .trim()
        .chars()
        .map(|c| match c {
            ' ' | '-' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_words() {
        assert_eq!(status_word("SENT TO BUYER"), "sent_to_buyer");
        assert_eq!(status_word("Success"), "success");
        assert_eq!(status_word("Credit_Adjustment"), "credit_adjustment");
        assert_eq!(status_word(" PAYMENT INITIATED "), "payment_initiated");
    }
}
