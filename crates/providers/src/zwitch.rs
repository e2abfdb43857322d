//! Open Financial's Zwitch: UPI collect payments (`payments.*`) and Bharat Connect B2B invoices
//! (`bharat_connect.invoice.*`), which share one envelope and one signature scheme.
//!
//! - Verification: `x-zwitch-signature` is the lower-case hex HMAC-SHA256 under the dashboard's
//!   signing secret. The docs say the payload is signed "with all whitespace removed" while their
//!   samples are pretty-printed, so the raw body is tried first, then the body with JSON-insignificant
//!   whitespace removed (never whitespace inside strings).
//! - Envelope: `{id: "evl_…", object: "event", name, is_sandbox, data: {object: {…}}}`; some
//!   messages put the object directly in `data`.
//! - Dedup: `name` and `id` together. The event id is documented as unique; pairing it with the
//!   name also keeps the published samples (four events sharing one id) apart. A name spelt two
//!   ways is keyed by one spelling, so a retry under the other is still a duplicate.
//! - Units: UPI `amount` and every Bharat Connect money field are decimal rupees; times are unix
//!   seconds. The UPI seed spells the events `payment.created` and `payments.created`; Bharat
//!   Connect's edit event is also sent as `change_status` (recognised by its missing `status`), and
//!   `transaction_detais` is accepted for `transaction_details`.

use billhook_core::entity::SubjectKind;
use billhook_core::entity::{
    Address, Direction, EntityData, InvoiceSnapshot, LineItem, Party, PaymentParty,
    PaymentReferences, PaymentSnapshot, status_word,
};
use billhook_core::event::{EventDraft, EventType};
use billhook_core::ledger::{PaymentRef, StatusRank};
use billhook_core::money::{Amount, Currency};
use billhook_core::time::Timestamp;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::auth::{self, AuthKind, Secret, SourceAuth, Verification, VerifyError};
use crate::checks::{Ratio, Warnings, product_matches, tax_inclusive_matches};
use crate::emulate::{self, EmulateError, EmulatedEvent, GenerateOptions, Generated, set};
use crate::json::{self, NumText, ScalarText, parse_body, parse_raw};
use crate::registry::Provider;
use crate::{InboundRequest, NormalizeError, Normalized, body_hash_key};

/// The Zwitch provider (UPI collect and Bharat Connect).
pub struct Zwitch;

const NAME: &str = "zwitch";
const SIGNATURE_HEADER: &str = "x-zwitch-signature";

impl Provider for Zwitch {
    fn name(&self) -> &'static str {
        NAME
    }

    fn title(&self) -> &'static str {
        "Zwitch UPI collect and Bharat Connect B2B invoices"
    }

    fn auth_kinds(&self) -> &'static [AuthKind] {
        &[AuthKind::Signature]
    }

    /// Zwitch expects HTTP 200 within 5 seconds; live mode retries anything else, every 30
    /// minutes and then every 6 hours, for 7 days.
    fn ack_status(&self) -> u16 {
        200
    }

    fn requires_ack_status(&self) -> bool {
        true
    }

    /// Zwitch retries a webhook it has no 200 for within 5 s.
    fn ack_deadline(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(5))
    }

    fn kept_headers(&self) -> &'static [&'static str] {
        &[SIGNATURE_HEADER]
    }

    fn signature_header(&self) -> Option<&'static str> {
        Some(SIGNATURE_HEADER)
    }

    fn verify_signature(
        &self,
        secrets: &[Secret],
        request: &InboundRequest<'_>,
    ) -> Result<Verification, VerifyError> {
        let signature = request.signature(SIGNATURE_HEADER)?;
        if let Some(index) =
            auth::match_hex_hmac(secrets, request.body, signature, SIGNATURE_HEADER)?
        {
            return Ok(Verification {
                scheme: "zwitch-signature",
                detail: format!("raw body, {}", auth::secret_detail(index, secrets.len())),
            });
        }
        // Only for a body that is JSON as sent: whitespace that breaks it (`1 00`) is dropped by
        // compaction too, and the signature would then vouch for bytes other than the ones
        // stored, in as many variants as a sender cares to make.
        if serde_json::from_slice::<serde::de::IgnoredAny>(request.body).is_ok()
            && let Some(compacted) = json::compact(request.body)
            && let Some(index) =
                auth::match_hex_hmac(secrets, &compacted, signature, SIGNATURE_HEADER)?
        {
            return Ok(Verification {
                scheme: "zwitch-signature",
                detail: format!(
                    "body without insignificant whitespace, {}",
                    auth::secret_detail(index, secrets.len())
                ),
            });
        }
        Err(VerifyError::InvalidSignature)
    }

    fn normalize(&self, request: &InboundRequest<'_>) -> Result<Normalized, NormalizeError> {
        let envelope: Envelope = parse_body(request.body, NAME)?;
        let object = envelope.object()?;
        let mut warnings = Warnings::default();
        let mut sandbox = envelope.is_sandbox.unwrap_or(false);
        let events = match envelope.name.as_str() {
            "payments.created" | "payment.created" | "payments.updated" | "payment.updated" => {
                let payment: UpiPayment = parse_raw(object, NAME, "data.object")?;
                sandbox |= payment.is_sandbox.unwrap_or(false);
                let created = envelope.name.ends_with(".created");
                vec![payment.normalize(created, &mut warnings)?]
            }
            name if name.starts_with("bharat_connect.invoice.") => {
                let invoice: BcInvoice = parse_raw(object, NAME, "data.object")?;
                sandbox |= invoice.is_sandbox.unwrap_or(false);
                let action = &name["bharat_connect.invoice.".len()..];
                vec![invoice.normalize(action, &mut warnings)?]
            }
            _ => {
                return Err(NormalizeError::UnsupportedEvent {
                    provider: NAME,
                    event: envelope.name,
                });
            }
        };
        // An event id is what tells two messages apart; without one, the signed body does.
        let (dedup_key, provider_event_id) = if envelope.id.trim().is_empty() {
            (body_hash_key(request.body), None)
        } else {
            (
                format!("{}:{}", dedup_name(&envelope.name, &events), envelope.id),
                Some(envelope.id),
            )
        };
        Ok(Normalized {
            dedup_key,
            body_dedup_key: None,
            provider_event_id,
            provider_event: envelope.name,
            sandbox,
            events,
            warnings: warnings.into_vec(),
        })
    }

    /// UPI payments: pending < succeeded | failed. Bharat Connect invoices: sent_to_buyer |
    /// returned < accepted | rejected | declined < payment_initiated < closed < paid. A
    /// return asks the supplier for a correction, after which the buyer may still accept:
    /// acceptance must win over it, in any order. Only paid settles: closed says the invoice
    /// is done with, not that it was paid, and a paid invoice closed after stays paid.
    fn status_rank(&self, kind: SubjectKind, status: &str) -> Option<StatusRank> {
        Some(match (kind, status) {
            (SubjectKind::Payment, "pending") => StatusRank::new(0),
            (SubjectKind::Payment, "succeeded" | "failed") => StatusRank::new(1),
            (SubjectKind::Invoice, "sent_to_buyer" | "returned") => StatusRank::new(0),
            (SubjectKind::Invoice, "accepted" | "rejected" | "declined") => StatusRank::new(1),
            (SubjectKind::Invoice, "payment_initiated") => StatusRank::new(2),
            (SubjectKind::Invoice, "closed") => StatusRank::new(3),
            (SubjectKind::Invoice, "paid") => StatusRank::settling(4),
            _ => return None,
        })
    }

    fn default_link_rule(&self) -> &'static [PaymentRef] {
        &[PaymentRef::MerchantReference, PaymentRef::Remark]
    }

    /// Over the body with its insignificant whitespace removed, as Zwitch documents: the same
    /// bytes for a compact body, and a pretty-printed one is signed as Zwitch would sign it.
    fn sign(&self, auth: &SourceAuth, body: &[u8], now: Timestamp) -> Vec<(String, String)> {
        let compacted = json::compact(body);
        let signed = compacted.as_deref().unwrap_or(body);
        auth::hex_signature_headers(auth, "x-zwitch-signature", signed, now.unix_seconds())
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

/// The event's name as its dedup key spells it. Zwitch sends one event under two names
/// (`payment.created` beside `payments.created`, Bharat Connect's edit as `change_status`
/// without a status): a retry under the other spelling is the same event, and must find its key.
fn dedup_name<'a>(name: &'a str, events: &[EventDraft]) -> &'a str {
    match name {
        "payment.created" => "payments.created",
        "payment.updated" => "payments.updated",
        "bharat_connect.invoice.change_status"
            if events
                .first()
                .is_some_and(|event| event.event_type == EventType::InvoiceUpdated) =>
        {
            "bharat_connect.invoice.edit"
        }
        other => other,
    }
}

#[derive(Deserialize)]
struct Envelope {
    id: String,
    name: String,
    is_sandbox: Option<bool>,
    data: Box<RawValue>,
}

#[derive(Deserialize)]
struct DataProbe<'a> {
    #[serde(borrow)]
    object: Option<&'a RawValue>,
}

impl Envelope {
    /// `data.object` when it holds an object, else `data` itself (whose own `object` field is then
    /// a type tag such as `"payment"`).
    fn object(&self) -> Result<&RawValue, NormalizeError> {
        let probe: DataProbe<'_> =
            serde_json::from_str(self.data.get()).map_err(|error| NormalizeError::Shape {
                provider: NAME,
                detail: format!("data: {error}"),
            })?;
        Ok(match probe.object {
            Some(inner) if inner.get().starts_with('{') => inner,
            _ => &self.data,
        })
    }
}

#[derive(Deserialize)]
struct UpiPayment {
    id: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    account_id: Option<String>,
    amount: NumText,
    currency: Option<String>,
    transacted_at: Option<NumText>,
    bank_reference_number: Option<ScalarText>,
    status: String,
    remitter_bank_account_number: Option<ScalarText>,
    remitter_bank_ifsc_code: Option<String>,
    remitter_full_name: Option<String>,
    remitter_note: Option<String>,
    remitter_vpa_handle: Option<String>,
    paid_mode: Option<String>,
    paid_to: Option<String>,
    transaction_reference_id: Option<ScalarText>,
    remark: Option<String>,
    merchant_reference_id: Option<ScalarText>,
    is_sandbox: Option<bool>,
    created_at: Option<NumText>,
    is_settled: Option<bool>,
    settled_at: Option<NumText>,
}

/// billhook's payment vocabulary for a Zwitch collect status. A collect request that expired
/// unpaid, or that the payer declined or the request was cancelled, ends without money as a
/// failure does (its own word stays in `provider_status`): left unranked, it would lose to
/// `pending` and the payment would wait for good.
fn upi_status(status: &str) -> String {
    match status.to_ascii_lowercase().as_str() {
        "success" | "successful" | "completed" => "succeeded".to_owned(),
        "failed" | "failure" | "expired" | "cancelled" | "canceled" | "declined" | "rejected" => {
            "failed".to_owned()
        }
        other => status_word(other),
    }
}

impl UpiPayment {
    fn normalize(
        self,
        created: bool,
        warnings: &mut Warnings,
    ) -> Result<EventDraft, NormalizeError> {
        const AT: &str = "data.object";
        let currency = match self.currency.as_deref() {
            Some(code) => Currency::parse(code).map_err(|source| NormalizeError::Money {
                path: format!("{AT}.currency"),
                source,
            })?,
            None => Currency::INR,
        };
        let amount = self.amount.major(&format!("{AT}.amount"), currency)?;
        warnings.vpa(
            self.remitter_vpa_handle.as_deref(),
            &format!("{AT}.remitter_vpa_handle"),
        );
        warnings.vpa(self.paid_to.as_deref(), &format!("{AT}.paid_to"));
        warnings.ifsc(
            self.remitter_bank_ifsc_code.as_deref(),
            &format!("{AT}.remitter_bank_ifsc_code"),
        );
        let status = upi_status(&self.status);
        if !matches!(status.as_str(), "pending" | "succeeded" | "failed") {
            warnings.unknown_status(&self.status, &format!("{AT}.status"));
        }
        let event_type = match status.as_str() {
            "succeeded" => EventType::PaymentSucceeded,
            "failed" => EventType::PaymentFailed,
            "pending" if created => EventType::PaymentCreated,
            "pending" => EventType::PaymentProcessing,
            _ => EventType::PaymentUpdated,
        };
        let time = |value: &Option<NumText>, field: &str| {
            value
                .as_ref()
                .map(|v| v.unix_seconds(&format!("{AT}.{field}")))
                .transpose()
        };
        let created_at = time(&self.created_at, "created_at")?;
        let completed_at = time(&self.transacted_at, "transacted_at")?;
        let occurred_at = completed_at.or(if created { created_at } else { None });
        let rail = self
            .paid_mode
            .clone()
            .or_else(|| self.kind.as_ref().map(|_| "upi".to_owned()));
        let snapshot = PaymentSnapshot {
            provider_payment_id: self.id,
            rail,
            method: self.kind,
            status,
            provider_status: self.status,
            amount,
            currency,
            amount_refunded: None,
            fee: None,
            fee_tax: None,
            payer: Some(PaymentParty {
                name: self.remitter_full_name,
                vpa: self.remitter_vpa_handle,
                account_number: self.remitter_bank_account_number.map(String::from),
                ifsc: self.remitter_bank_ifsc_code,
                ..PaymentParty::default()
            }),
            payee: Some(PaymentParty {
                vpa: self.paid_to,
                account_id: self.account_id,
                ..PaymentParty::default()
            }),
            references: PaymentReferences {
                bank_reference: self.bank_reference_number.map(String::from),
                transaction_reference: self.transaction_reference_id.map(String::from),
                merchant_reference: self.merchant_reference_id.map(String::from),
                remark: self.remark,
                ..PaymentReferences::default()
            },
            description: self.remitter_note,
            failure: None,
            created_at,
            completed_at,
            settled: self.is_settled,
            settled_at: time(&self.settled_at, "settled_at")?,
        };
        // An update names no time of its own until the money moves (a failure or an expiry
        // names none); it is no older than the collect request it updates.
        Ok(
            EventDraft::new(event_type, EntityData::Payment(snapshot), occurred_at)
                .not_before(created_at),
        )
    }
}

#[derive(Deserialize)]
struct BcAddress {
    address: Option<String>,
    city: Option<String>,
    postal_code: Option<ScalarText>,
    state: Option<String>,
}

#[derive(Deserialize)]
struct BcParty {
    b2b_id: Option<String>,
    gst_in: Option<String>,
    legal_name: Option<String>,
    trade_name: Option<String>,
    email: Option<String>,
    mobile_number: Option<ScalarText>,
    state_code: Option<ScalarText>,
    place_of_supply_code: Option<ScalarText>,
    address: Option<BcAddress>,
}

#[derive(Deserialize)]
struct BcItem {
    serial_no: Option<ScalarText>,
    is_service: Option<ScalarText>,
    hsn_code: Option<ScalarText>,
    quantity: Option<NumText>,
    unit_price: Option<NumText>,
    total_amount: Option<NumText>,
    assessment_amount: Option<NumText>,
    gst_rate: Option<NumText>,
    total_item_value: Option<NumText>,
    product_description: Option<String>,
}

#[derive(Deserialize)]
struct BcValues {
    assessment_value: Option<NumText>,
    total_invoice_value: Option<NumText>,
}

#[derive(Deserialize)]
struct BcBank {
    vpa: Option<String>,
    bank_ifsc_code: Option<String>,
}

#[derive(Deserialize)]
struct BcInvoice {
    id: String,
    #[serde(rename = "type")]
    direction: Option<String>,
    supplier_invoice_number: Option<ScalarText>,
    supplier_details: Option<BcParty>,
    buyer_details: Option<BcParty>,
    #[serde(default, deserialize_with = "crate::json::null_as_default")]
    items_details: Vec<BcItem>,
    value_details: Option<BcValues>,
    supplier_bank_details: Option<BcBank>,
    status: Option<String>,
    is_sandbox: Option<bool>,
}

/// billhook's invoice vocabulary for a Bharat Connect status. The buyer's refusals, however
/// worded (`REJECTED BY BUYER`), are `rejected` or `declined`, which close the invoice unpaid,
/// and a return to the supplier for correction is `returned` (the words stay in
/// `provider_status`).
fn bc_invoice_status(status: &str) -> String {
    let upper = status.to_ascii_uppercase();
    if is_return(status) {
        "returned".to_owned()
    } else if upper.contains("REJECT") {
        "rejected".to_owned()
    } else if upper.contains("DECLINE") {
        "declined".to_owned()
    } else {
        status_word(status)
    }
}

/// Bharat Connect statuses by which the buyer refused the invoice.
fn is_rejection(status: &str) -> bool {
    let status = status.to_ascii_uppercase();
    status.contains("REJECT") || status.contains("DECLINE")
}

/// Bharat Connect statuses by which the buyer sent the invoice back for a correction.
fn is_return(status: &str) -> bool {
    status.to_ascii_uppercase().contains("RETURN")
}

impl BcParty {
    fn normalize(self, at: &str, warnings: &mut Warnings) -> Party {
        warnings.gstin(self.gst_in.as_deref(), &format!("{at}.gst_in"));
        Party {
            provider_id: self.b2b_id,
            legal_name: self.legal_name,
            trade_name: self.trade_name,
            gstin: self.gst_in,
            state_code: self.state_code.map(String::from).filter(|s| !s.is_empty()),
            email: self.email,
            phone: self
                .mobile_number
                .map(String::from)
                .filter(|s| !s.is_empty()),
            address: self.address.map(|a| Address {
                line1: a.address,
                line2: None,
                city: a.city,
                state: a.state,
                postal_code: a.postal_code.map(String::from),
                country: Some("IN".to_owned()),
            }),
        }
    }
}

impl BcInvoice {
    fn normalize(
        self,
        action: &str,
        warnings: &mut Warnings,
    ) -> Result<EventDraft, NormalizeError> {
        const AT: &str = "data.object";
        let currency = Currency::INR;
        let rupees =
            |value: &Option<NumText>, path: String| -> Result<Option<Amount>, NormalizeError> {
                value.as_ref().map(|v| v.major(&path, currency)).transpose()
            };
        let event_type = match (action, self.status.as_deref()) {
            ("create", _) => EventType::InvoiceIssued,
            ("confirm", Some(status)) if is_rejection(status) => EventType::InvoiceRejected,
            ("confirm", Some(status)) if status.eq_ignore_ascii_case("ACCEPTED") => {
                EventType::InvoiceAccepted
            }
            ("confirm", _) => EventType::InvoiceStatusChanged,
            ("edit", _) | ("change_status", None) => EventType::InvoiceUpdated,
            ("change_status", Some(_)) => EventType::InvoiceStatusChanged,
            (other, _) => {
                return Err(NormalizeError::UnsupportedEvent {
                    provider: NAME,
                    event: format!("bharat_connect.invoice.{other}"),
                });
            }
        };
        if let Some(status) = &self.status
            && !KNOWN_BC_STATUSES.contains(&status.to_ascii_uppercase().as_str())
            && !is_rejection(status)
            && !is_return(status)
        {
            warnings.unknown_status(status, &format!("{AT}.status"));
        }

        let mut line_items = Vec::with_capacity(self.items_details.len());
        let mut sum_totals = Some(Amount::ZERO);
        let mut sum_assessed = Some(Amount::ZERO);
        for (index, item) in self.items_details.into_iter().enumerate() {
            let at = format!("{AT}.items_details.{index}");
            warnings.hsn(
                item.hsn_code.as_ref().map(|h| h.0.as_str()),
                &format!("{at}.hsn_code"),
            );
            let unit_price = rupees(&item.unit_price, format!("{at}.unit_price"))?;
            let amount = rupees(&item.total_amount, format!("{at}.total_amount"))?;
            let assessed = rupees(&item.assessment_amount, format!("{at}.assessment_amount"))?;
            let total = rupees(&item.total_item_value, format!("{at}.total_item_value"))?;
            let quantity = item
                .quantity
                .as_ref()
                .and_then(|q| Ratio::parse(q.as_str()));
            if let (Some(price), Some(quantity), Some(amount)) = (unit_price, quantity, amount)
                && !product_matches(price, quantity, amount)
            {
                warnings.push(
                    "totals_mismatch",
                    &format!("{at}.total_amount"),
                    format!("unit_price × quantity is not total_amount ({amount} minor units)"),
                );
            }
            let rate = item
                .gst_rate
                .as_ref()
                .and_then(|r| Ratio::parse(r.as_str()));
            if let (Some(base), Some(rate), Some(total)) = (assessed.or(amount), rate, total)
                && !tax_inclusive_matches(base, rate, total)
            {
                warnings.push(
                    "totals_mismatch",
                    &format!("{at}.total_item_value"),
                    format!(
                        "assessment_amount plus {}% GST is not total_item_value ({total} minor units)",
                        item.gst_rate.as_ref().map_or("", |r| r.as_str())
                    ),
                );
            }
            sum_totals = sum_totals.zip(total).and_then(|(s, t)| s.checked_add(t));
            sum_assessed = sum_assessed
                .zip(assessed)
                .and_then(|(s, a)| s.checked_add(a));
            line_items.push(LineItem {
                serial_no: item.serial_no.map(String::from),
                description: item.product_description,
                hsn_code: item.hsn_code.map(String::from),
                is_service: item
                    .is_service
                    .map(|s| matches!(s.0.to_ascii_uppercase().as_str(), "YES" | "Y" | "TRUE")),
                quantity: item.quantity.map(|q| q.0),
                unit_price,
                amount,
                taxable_amount: assessed,
                gst_rate: item.gst_rate.map(|r| r.0),
                total,
            });
        }
        let (taxable_amount, amount) = match &self.value_details {
            Some(values) => (
                rupees(
                    &values.assessment_value,
                    format!("{AT}.value_details.assessment_value"),
                )?,
                rupees(
                    &values.total_invoice_value,
                    format!("{AT}.value_details.total_invoice_value"),
                )?,
            ),
            None => (None, None),
        };
        if !line_items.is_empty() {
            warnings.total(
                amount,
                sum_totals,
                &format!("{AT}.value_details.total_invoice_value"),
                "total_invoice_value should be the sum of the items' total_item_value",
            );
            warnings.total(
                taxable_amount,
                sum_assessed,
                &format!("{AT}.value_details.assessment_value"),
                "assessment_value should be the sum of the items' assessment_amount",
            );
        }
        if let Some(bank) = &self.supplier_bank_details {
            warnings.vpa(
                bank.vpa.as_deref(),
                &format!("{AT}.supplier_bank_details.vpa"),
            );
            warnings.ifsc(
                bank.bank_ifsc_code.as_deref(),
                &format!("{AT}.supplier_bank_details.bank_ifsc_code"),
            );
        }
        let place_of_supply = self
            .buyer_details
            .as_ref()
            .and_then(|b| b.place_of_supply_code.clone())
            .map(String::from)
            .filter(|s| !s.is_empty());
        let direction =
            self.direction
                .as_deref()
                .and_then(|d| match d.to_ascii_uppercase().as_str() {
                    "OUTGOING" => Some(Direction::Outgoing),
                    "INCOMING" => Some(Direction::Incoming),
                    _ => None,
                });
        let tax_amount = amount
            .zip(taxable_amount)
            .and_then(|(total, base)| total.checked_sub(base))
            .filter(|tax| tax.minor() >= 0);
        let snapshot = InvoiceSnapshot {
            provider_invoice_id: self.id,
            number: self.supplier_invoice_number.map(String::from),
            direction,
            status: self.status.as_deref().map(bc_invoice_status),
            provider_status: self.status,
            currency,
            amount,
            taxable_amount,
            tax_amount,
            amount_paid: None,
            amount_due: None,
            supplier: self
                .supplier_details
                .map(|p| p.normalize(&format!("{AT}.supplier_details"), warnings)),
            buyer: self
                .buyer_details
                .map(|p| p.normalize(&format!("{AT}.buyer_details"), warnings)),
            place_of_supply,
            line_items,
            order_id: None,
            payment_id: None,
            description: None,
            issued_at: None,
            paid_at: None,
            expires_at: None,
            cancelled_at: None,
            expired_at: None,
        };
        Ok(EventDraft::new(
            event_type,
            EntityData::Invoice(snapshot),
            None,
        ))
    }
}

const KNOWN_BC_STATUSES: &[&str] = &[
    "SENT TO BUYER",
    "ACCEPTED",
    "PAYMENT INITIATED",
    "PAID",
    "CLOSED",
];

static EVENTS: &[EmulatedEvent] = &[
    EmulatedEvent {
        name: "payments.created",
        variants: &[],
        description: "A UPI collect request was created and awaits the payer (status pending).",
    },
    EmulatedEvent {
        name: "payments.updated",
        variants: &["success", "pending", "failed"],
        description: "A UPI collect request changed status.",
    },
    EmulatedEvent {
        name: "bharat_connect.invoice.create",
        variants: &[],
        description: "A B2B invoice was sent to the buyer (SENT TO BUYER).",
    },
    EmulatedEvent {
        name: "bharat_connect.invoice.confirm",
        variants: &["ACCEPTED", "REJECTED"],
        description: "The buyer confirmed (accepted) or rejected the invoice.",
    },
    EmulatedEvent {
        name: "bharat_connect.invoice.change_status",
        variants: &["PAYMENT INITIATED", "PAID", "CLOSED"],
        description: "The invoice moved to a new status.",
    },
    EmulatedEvent {
        name: "bharat_connect.invoice.edit",
        variants: &[],
        description: "The invoice's contents were edited.",
    },
];

const TEMPLATE_CREATED: &str = include_str!("../fixtures/zwitch_upi/payments.created.json");
const TEMPLATE_UPDATED: &str = include_str!("../fixtures/zwitch_upi/payments.updated.json");
const TEMPLATE_BC_CREATE: &str = include_str!("../fixtures/bharat_connect/invoice.create.json");
const TEMPLATE_BC_CONFIRM: &str = include_str!("../fixtures/bharat_connect/invoice.confirm.json");
const TEMPLATE_BC_STATUS: &str =
    include_str!("../fixtures/bharat_connect/invoice.change_status.json");
const TEMPLATE_BC_EDIT: &str = include_str!("../fixtures/bharat_connect/invoice.edit.json");

/// Zwitch ids: a prefix and 25 base62 characters (`evl_…`, `tx_…`, `bcinv_…`).
fn zwitch_id(options: &mut GenerateOptions, prefix: &str) -> String {
    options.rng.base62_id(prefix, 25)
}

fn generate(event: &str, options: &mut GenerateOptions) -> Result<Generated, EmulateError> {
    let spec = emulate::find_event(NAME, EVENTS, event)?;
    let variant = options.variant_of(spec)?;
    let now = options.now.unix_seconds();
    let mut body = emulate::template(match event {
        "payments.created" => TEMPLATE_CREATED,
        "payments.updated" => TEMPLATE_UPDATED,
        "bharat_connect.invoice.create" => TEMPLATE_BC_CREATE,
        "bharat_connect.invoice.confirm" => TEMPLATE_BC_CONFIRM,
        "bharat_connect.invoice.change_status" => TEMPLATE_BC_STATUS,
        _ => TEMPLATE_BC_EDIT,
    });
    set(&mut body, "id", zwitch_id(options, "evl_"));
    set(&mut body, "is_sandbox", options.sandbox);
    if event.starts_with("payments.") {
        let object = "data.object";
        set(
            &mut body,
            &format!("{object}.id"),
            zwitch_id(options, "tx_"),
        );
        set(
            &mut body,
            &format!("{object}.account_id"),
            zwitch_id(options, "va_"),
        );
        set(&mut body, &format!("{object}.is_sandbox"), options.sandbox);
        let rupees = options.rng.between(1, 5_000);
        let paise = options.rng.between(0, 99);
        let amount: Value = if paise == 0 {
            Value::from(rupees)
        } else {
            serde_json::from_str(&format!("{rupees}.{paise:02}")).unwrap_or(Value::from(rupees))
        };
        set(&mut body, &format!("{object}.amount"), amount);
        set(
            &mut body,
            &format!("{object}.bank_reference_number"),
            options.rng.digits(12),
        );
        set(
            &mut body,
            &format!("{object}.merchant_reference_id"),
            options.rng.digits(7),
        );
        set(&mut body, &format!("{object}.created_at"), now - 10);
        if event == "payments.updated" {
            set(&mut body, &format!("{object}.status"), variant);
            match variant {
                "success" => {
                    set(&mut body, &format!("{object}.transacted_at"), now);
                    set(&mut body, &format!("{object}.is_settled"), false);
                    set(&mut body, &format!("{object}.settled_at"), Value::Null);
                    set(
                        &mut body,
                        &format!("{object}.transaction_reference_id"),
                        options.rng.chars(b"0123456789abcdef", 32),
                    );
                }
                _ => {
                    // Until the payer pays, the remitter's bank details are unknown: the
                    // provider's pending sample has them null, as a failed collect does.
                    for field in [
                        "transacted_at",
                        "settled_at",
                        "transaction_reference_id",
                        "remitter_bank_account_number",
                        "remitter_bank_ifsc_code",
                        "remitter_full_name",
                        "remitter_note",
                    ] {
                        set(&mut body, &format!("{object}.{field}"), Value::Null);
                    }
                    set(&mut body, &format!("{object}.is_settled"), false);
                }
            }
        }
    } else {
        let object = "data.object";
        set(
            &mut body,
            &format!("{object}.id"),
            zwitch_id(options, "bcinv_"),
        );
        set(
            &mut body,
            &format!("{object}.supplier_invoice_number"),
            format!("INV{}", options.rng.digits(7)),
        );
        let unit_price = options.rng.between(1, 50_000);
        let quantity = options.rng.between(1, 5);
        let assessed = unit_price * quantity;
        let with_gst = assessed * 118;
        let total: Value = if with_gst % 100 == 0 {
            Value::from(with_gst / 100)
        } else {
            serde_json::from_str(&format!("{}.{:02}", with_gst / 100, with_gst % 100))
                .unwrap_or(Value::from(with_gst / 100))
        };
        let item = format!("{object}.items_details.0");
        set(&mut body, &format!("{item}.quantity"), quantity);
        set(&mut body, &format!("{item}.unit_price"), unit_price);
        set(&mut body, &format!("{item}.total_amount"), assessed);
        set(&mut body, &format!("{item}.assessment_amount"), assessed);
        set(
            &mut body,
            &format!("{item}.total_item_value"),
            total.clone(),
        );
        if event != "bharat_connect.invoice.edit" {
            set(
                &mut body,
                &format!("{object}.value_details.assessment_value"),
                assessed,
            );
            set(
                &mut body,
                &format!("{object}.value_details.total_invoice_value"),
                total,
            );
        }
        match event {
            "bharat_connect.invoice.create" => {
                set(&mut body, &format!("{object}.status"), "SENT TO BUYER");
            }
            "bharat_connect.invoice.confirm" | "bharat_connect.invoice.change_status" => {
                set(&mut body, &format!("{object}.status"), variant);
            }
            _ => {}
        }
        // Valid GSTINs and a consistent invoice, unlike the published samples.
        set(
            &mut body,
            &format!("{object}.supplier_details.gst_in"),
            "29AAGCB7383J1Z4",
        );
        set(
            &mut body,
            &format!("{object}.buyer_details.gst_in"),
            "27AAPFU0939F1ZV",
        );
    }
    Ok(Generated {
        event: event.to_owned(),
        json: body,
        headers: vec![("Content-Type".to_owned(), "application/json".to_owned())],
    })
}
