//! Razorpay: invoice and payment webhooks.
//!
//! - Verification: `X-Razorpay-Signature` is the lower-case hex HMAC-SHA256 of the raw body under
//!   the webhook secret. Several secrets may be configured: Razorpay retries old events signed
//!   with the secret they were first sent with.
//! - Dedup: the `x-razorpay-event-id` header and, since the header is outside the signature, a
//!   hash of the body beside it (the hash alone when the header is missing).
//! - Units: every amount is integer paise; times are unix seconds.
//! - Events: `invoice.paid`, `invoice.partially_paid` and `invoice.expired` become the matching
//!   `invoice.*` event plus, when a payment is enclosed, a `payment.*` event by the payment's status;
//!   `payment.authorized|captured|failed` and `order.paid` become `payment.*` events.

use billhook_core::entity::SubjectKind;
use billhook_core::entity::{
    Address, CardInfo, Direction, EntityData, InvoiceSnapshot, LineItem, Party, PaymentFailure,
    PaymentParty, PaymentReferences, PaymentSnapshot, status_word,
};
use billhook_core::event::{EventDraft, EventType};
use billhook_core::ledger::{PaymentRef, StatusRank};
use billhook_core::money::{Amount, Currency};
use billhook_core::time::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{self, AuthKind, Secret, SourceAuth, Verification, VerifyError};
use crate::checks::Warnings;
use crate::emulate::{
    self, EmulateError, EmulatedEvent, EmulatorRng, GenerateOptions, Generated, set,
};
use crate::json::{NumText, ScalarText, object_or_empty_list, parse_body};
use crate::registry::Provider;
use crate::{InboundRequest, NormalizeError, Normalized, body_hash_key};

/// The Razorpay provider.
pub struct Razorpay;

const NAME: &str = "razorpay";
const SIGNATURE_HEADER: &str = "x-razorpay-signature";
const EVENT_ID_HEADER: &str = "x-razorpay-event-id";

impl Provider for Razorpay {
    fn name(&self) -> &'static str {
        NAME
    }

    fn title(&self) -> &'static str {
        "Razorpay invoices and payments"
    }

    fn auth_kinds(&self) -> &'static [AuthKind] {
        &[AuthKind::Signature]
    }

    fn kept_headers(&self) -> &'static [&'static str] {
        &[EVENT_ID_HEADER, SIGNATURE_HEADER]
    }

    /// Razorpay retries a webhook it has no 2xx for within 5 s.
    fn ack_deadline(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(5))
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
        match auth::match_hex_hmac(secrets, request.body, signature, SIGNATURE_HEADER)? {
            Some(index) => Ok(Verification {
                scheme: "razorpay-signature",
                detail: auth::secret_detail(index, secrets.len()),
            }),
            None => Err(VerifyError::InvalidSignature),
        }
    }

    fn dedup_key_hint(&self, request: &InboundRequest<'_>) -> Option<String> {
        request
            .header(EVENT_ID_HEADER)
            .filter(|id| !id.is_empty())
            .map(|id| format!("event:{id}"))
    }

    fn normalize(&self, request: &InboundRequest<'_>) -> Result<Normalized, NormalizeError> {
        let envelope: Envelope = parse_body(request.body, NAME)?;
        let mut warnings = Warnings::default();
        let occurred_at = envelope
            .created_at
            .as_ref()
            .map(|t| t.unix_seconds("created_at"))
            .transpose()?;
        let order = envelope.payload.order.map(|w| w.entity);
        let mut events = Vec::new();

        let invoice_type = match envelope.event.as_str() {
            "invoice.paid" => Some(EventType::InvoicePaid),
            "invoice.partially_paid" => Some(EventType::InvoicePartiallyPaid),
            "invoice.expired" => Some(EventType::InvoiceExpired),
            _ => None,
        };
        // A refund's messages carry the payment as it stands after it (`amount_refunded`,
        // `refunded` once refunded in full): the ledger counts the payment net of it from then.
        // Only the refund's completion is announced as one; the others update the payment.
        let refund_type = match envelope.event.as_str() {
            "refund.processed" => Some(EventType::PaymentRefunded),
            "refund.created" | "refund.failed" | "refund.speed_changed" => {
                Some(EventType::PaymentUpdated)
            }
            _ => None,
        };
        let payment_event = refund_type.is_some()
            || matches!(
                envelope.event.as_str(),
                "payment.authorized" | "payment.captured" | "payment.failed" | "order.paid"
            );
        if invoice_type.is_none() && !payment_event {
            return Err(NormalizeError::UnsupportedEvent {
                provider: NAME,
                event: envelope.event,
            });
        }
        if let Some(event_type) = invoice_type {
            let invoice = envelope
                .payload
                .invoice
                .ok_or_else(|| missing("payload.invoice"))?
                .entity;
            let snapshot = invoice.normalize(&mut warnings)?;
            events.push(EventDraft::new(
                event_type,
                EntityData::Invoice(snapshot),
                occurred_at,
            ));
        }
        match envelope.payload.payment {
            Some(payment) => {
                let snapshot = payment.entity.normalize(order.as_ref(), &mut warnings)?;
                events.push(EventDraft::new(
                    refund_type.unwrap_or_else(|| payment_event_type(&snapshot.status)),
                    EntityData::Payment(snapshot),
                    occurred_at,
                ));
            }
            None if payment_event => return Err(missing("payload.payment")),
            None => {}
        }

        let provider_event_id = request
            .header(EVENT_ID_HEADER)
            .filter(|id| !id.is_empty())
            .map(str::to_owned);
        // The event id header is outside the signature, so the body's hash is a key too.
        let body_key = body_hash_key(request.body);
        let (dedup_key, body_dedup_key) = match self.dedup_key_hint(request) {
            Some(event_key) => (event_key, Some(body_key)),
            None => (body_key, None),
        };
        Ok(Normalized {
            provider_event: envelope.event,
            provider_event_id,
            dedup_key,
            body_dedup_key,
            sandbox: false,
            events,
            warnings: warnings.into_vec(),
        })
    }

    /// Invoices: draft < issued < partially_paid < expired | cancelled | deleted < paid.
    /// Payments: created < authorized < succeeded (captured) | failed < refunded.
    fn status_rank(&self, kind: SubjectKind, status: &str) -> Option<StatusRank> {
        Some(match (kind, status) {
            (SubjectKind::Invoice, "draft") => StatusRank::new(0),
            (SubjectKind::Invoice, "issued") => StatusRank::new(1),
            (SubjectKind::Invoice, "partially_paid") => StatusRank::new(2),
            (SubjectKind::Invoice, "expired" | "cancelled" | "deleted") => StatusRank::new(3),
            (SubjectKind::Invoice, "paid") => StatusRank::settling(4),
            (SubjectKind::Payment, "created") => StatusRank::new(0),
            (SubjectKind::Payment, "authorized") => StatusRank::new(1),
            (SubjectKind::Payment, "succeeded" | "failed") => StatusRank::new(2),
            (SubjectKind::Payment, "refunded") => StatusRank::new(3),
            _ => return None,
        })
    }

    fn default_link_rule(&self) -> &'static [PaymentRef] {
        &[PaymentRef::InvoiceId, PaymentRef::OrderId]
    }

    fn sign(&self, auth: &SourceAuth, body: &[u8], now: Timestamp) -> Vec<(String, String)> {
        auth::hex_signature_headers(auth, "X-Razorpay-Signature", body, now.unix_seconds())
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

fn missing(path: &str) -> NormalizeError {
    NormalizeError::Shape {
        provider: NAME,
        detail: format!("{path} is missing"),
    }
}

/// billhook's payment vocabulary for a Razorpay payment status.
fn payment_status(status: &str) -> String {
    match status {
        "captured" => "succeeded".to_owned(),
        other => status_word(other),
    }
}

/// The canonical type announcing a payment in `status` (billhook's vocabulary).
fn payment_event_type(status: &str) -> EventType {
    match status {
        "created" => EventType::PaymentCreated,
        "authorized" => EventType::PaymentAuthorized,
        "succeeded" => EventType::PaymentSucceeded,
        "failed" => EventType::PaymentFailed,
        "refunded" => EventType::PaymentRefunded,
        _ => EventType::PaymentUpdated,
    }
}

#[derive(Deserialize)]
struct Envelope {
    event: String,
    #[serde(default, deserialize_with = "crate::json::null_as_default")]
    payload: Payload,
    created_at: Option<NumText>,
}

#[derive(Default, Deserialize)]
struct Payload {
    payment: Option<Wrapped<Payment>>,
    order: Option<Wrapped<Order>>,
    invoice: Option<Wrapped<Invoice>>,
}

#[derive(Deserialize)]
struct Wrapped<T> {
    entity: T,
}

#[derive(Deserialize)]
struct Card {
    name: Option<String>,
    last4: Option<String>,
    network: Option<String>,
    #[serde(rename = "type")]
    card_type: Option<String>,
    issuer: Option<String>,
}

#[derive(Deserialize)]
struct AcquirerData {
    rrn: Option<ScalarText>,
    upi_transaction_id: Option<ScalarText>,
    bank_transaction_id: Option<ScalarText>,
}

#[derive(Deserialize)]
struct Payment {
    id: String,
    amount: NumText,
    currency: Option<String>,
    status: String,
    order_id: Option<String>,
    invoice_id: Option<String>,
    method: Option<String>,
    amount_refunded: Option<NumText>,
    description: Option<String>,
    #[serde(default, deserialize_with = "object_or_empty_list")]
    card: Option<Card>,
    bank: Option<String>,
    wallet: Option<String>,
    vpa: Option<String>,
    email: Option<String>,
    contact: Option<String>,
    fee: Option<NumText>,
    tax: Option<NumText>,
    error_code: Option<String>,
    error_description: Option<String>,
    #[serde(default, deserialize_with = "object_or_empty_list")]
    acquirer_data: Option<AcquirerData>,
    created_at: Option<NumText>,
}

#[derive(Deserialize)]
struct Order {
    receipt: Option<ScalarText>,
}

#[derive(Deserialize)]
struct CustomerAddress {
    line1: Option<String>,
    line2: Option<String>,
    zipcode: Option<ScalarText>,
    city: Option<String>,
    state: Option<String>,
    country: Option<String>,
}

#[derive(Deserialize)]
struct CustomerDetails {
    id: Option<String>,
    name: Option<String>,
    email: Option<String>,
    contact: Option<ScalarText>,
    gstin: Option<String>,
    #[serde(default, deserialize_with = "object_or_empty_list")]
    billing_address: Option<CustomerAddress>,
}

#[derive(Deserialize)]
struct InvoiceLineItem {
    name: Option<String>,
    description: Option<String>,
    amount: Option<NumText>,
    quantity: Option<NumText>,
    hsn_code: Option<ScalarText>,
    sac_code: Option<ScalarText>,
    tax_rate: Option<NumText>,
    gross_amount: Option<NumText>,
    taxable_amount: Option<NumText>,
    net_amount: Option<NumText>,
}

#[derive(Deserialize)]
struct Invoice {
    id: String,
    invoice_number: Option<ScalarText>,
    customer_id: Option<String>,
    #[serde(default, deserialize_with = "object_or_empty_list")]
    customer_details: Option<CustomerDetails>,
    order_id: Option<String>,
    payment_id: Option<String>,
    status: Option<String>,
    expire_by: Option<NumText>,
    issued_at: Option<NumText>,
    paid_at: Option<NumText>,
    cancelled_at: Option<NumText>,
    expired_at: Option<NumText>,
    gross_amount: Option<NumText>,
    tax_amount: Option<NumText>,
    taxable_amount: Option<NumText>,
    amount: Option<NumText>,
    amount_paid: Option<NumText>,
    amount_due: Option<NumText>,
    currency: Option<String>,
    description: Option<String>,
    supply_state_code: Option<ScalarText>,
    #[serde(default, deserialize_with = "crate::json::null_as_default")]
    line_items: Vec<InvoiceLineItem>,
}

fn currency_of(code: Option<&str>, path: &str) -> Result<Currency, NormalizeError> {
    code.map_or(Ok(Currency::INR), |code| {
        Currency::parse(code).map_err(|source| NormalizeError::Money {
            path: path.to_owned(),
            source,
        })
    })
}

fn paise(
    value: Option<&NumText>,
    path: &str,
    currency: Currency,
) -> Result<Option<Amount>, NormalizeError> {
    value.map(|v| v.minor(path, currency)).transpose()
}

fn time(value: Option<&NumText>, path: &str) -> Result<Option<Timestamp>, NormalizeError> {
    value.map(|v| v.unix_seconds(path)).transpose()
}

impl Invoice {
    fn normalize(self, warnings: &mut Warnings) -> Result<InvoiceSnapshot, NormalizeError> {
        const AT: &str = "payload.invoice.entity";
        let currency = currency_of(self.currency.as_deref(), &format!("{AT}.currency"))?;
        let amount_of = |field: &Option<NumText>, name: &str| {
            paise(field.as_ref(), &format!("{AT}.{name}"), currency)
        };
        let amount = amount_of(&self.amount, "amount")?;
        let gross = amount_of(&self.gross_amount, "gross_amount")?;
        let tax = amount_of(&self.tax_amount, "tax_amount")?;
        let amount_paid = amount_of(&self.amount_paid, "amount_paid")?;
        let amount_due = amount_of(&self.amount_due, "amount_due")?;
        let taxable = amount_of(&self.taxable_amount, "taxable_amount")?;
        // Tax is on the taxable amount, the gross less any discount; invoices without tax state
        // a taxable amount of 0. Either sum may be the total.
        let with_tax = |base: Option<Amount>| base.zip(tax).and_then(|(b, t)| b.checked_add(t));
        let expected = [with_tax(taxable), with_tax(gross)]
            .into_iter()
            .flatten()
            .find(|sum| Some(*sum) == amount)
            .or(with_tax(taxable))
            .or(with_tax(gross));
        warnings.total(
            amount,
            expected,
            &format!("{AT}.amount"),
            "amount should equal taxable_amount (or gross_amount) + tax_amount",
        );
        warnings.total(
            amount,
            amount_paid
                .zip(amount_due)
                .and_then(|(p, d)| p.checked_add(d)),
            &format!("{AT}.amount"),
            "amount should equal amount_paid + amount_due",
        );
        let buyer = self.customer_details.map(|customer| {
            warnings.gstin(
                customer.gstin.as_deref(),
                &format!("{AT}.customer_details.gstin"),
            );
            Party {
                provider_id: customer.id.or_else(|| self.customer_id.clone()),
                legal_name: customer.name,
                trade_name: None,
                state_code: None,
                gstin: customer.gstin,
                email: customer.email,
                phone: customer.contact.map(String::from),
                address: customer.billing_address.map(|a| Address {
                    line1: a.line1,
                    line2: a.line2,
                    city: a.city,
                    state: a.state,
                    postal_code: a.zipcode.map(String::from),
                    country: a.country,
                }),
            }
        });
        let mut line_items = Vec::with_capacity(self.line_items.len());
        for (index, item) in self.line_items.into_iter().enumerate() {
            let at = format!("{AT}.line_items.{index}");
            let hsn = item.hsn_code.or(item.sac_code).map(String::from);
            warnings.hsn(hsn.as_deref(), &format!("{at}.hsn_code"));
            line_items.push(LineItem {
                serial_no: Some((index + 1).to_string()),
                description: item.name.or(item.description),
                hsn_code: hsn,
                is_service: None,
                quantity: item.quantity.map(|q| q.0),
                unit_price: paise(item.amount.as_ref(), &format!("{at}.amount"), currency)?,
                amount: paise(
                    item.gross_amount.as_ref(),
                    &format!("{at}.gross_amount"),
                    currency,
                )?,
                taxable_amount: paise(
                    item.taxable_amount.as_ref(),
                    &format!("{at}.taxable_amount"),
                    currency,
                )?,
                gst_rate: item.tax_rate.map(|r| r.0),
                total: paise(
                    item.net_amount.as_ref(),
                    &format!("{at}.net_amount"),
                    currency,
                )?,
            });
        }
        Ok(InvoiceSnapshot {
            provider_invoice_id: self.id,
            number: self.invoice_number.map(String::from),
            direction: Some(Direction::Outgoing),
            status: self.status.as_deref().map(status_word),
            provider_status: self.status,
            currency,
            amount,
            taxable_amount: taxable.or(gross),
            tax_amount: tax,
            amount_paid,
            amount_due,
            supplier: None,
            buyer,
            place_of_supply: self.supply_state_code.map(String::from),
            line_items,
            order_id: self.order_id,
            payment_id: self.payment_id,
            description: self.description,
            issued_at: time(self.issued_at.as_ref(), &format!("{AT}.issued_at"))?,
            paid_at: time(self.paid_at.as_ref(), &format!("{AT}.paid_at"))?,
            expires_at: time(self.expire_by.as_ref(), &format!("{AT}.expire_by"))?,
            cancelled_at: time(self.cancelled_at.as_ref(), &format!("{AT}.cancelled_at"))?,
            expired_at: time(self.expired_at.as_ref(), &format!("{AT}.expired_at"))?,
        })
    }
}

impl Payment {
    fn normalize(
        self,
        order: Option<&Order>,
        warnings: &mut Warnings,
    ) -> Result<PaymentSnapshot, NormalizeError> {
        const AT: &str = "payload.payment.entity";
        let currency = currency_of(self.currency.as_deref(), &format!("{AT}.currency"))?;
        let amount = self.amount.minor(&format!("{AT}.amount"), currency)?;
        warnings.vpa(self.vpa.as_deref(), &format!("{AT}.vpa"));
        let acquirer = self.acquirer_data;
        let failure = (self.error_code.is_some() || self.error_description.is_some()).then_some(
            PaymentFailure {
                code: self.error_code,
                reason: self.error_description,
            },
        );
        let (card, payer_name) = match self.card {
            Some(card) => (
                Some(CardInfo {
                    network: card.network,
                    last4: card.last4,
                    card_type: card.card_type,
                    issuer: card.issuer,
                }),
                card.name,
            ),
            None => (None, None),
        };
        Ok(PaymentSnapshot {
            provider_payment_id: self.id,
            rail: self.method.clone(),
            method: self.method,
            status: payment_status(&self.status),
            provider_status: self.status,
            amount,
            currency,
            amount_refunded: paise(
                self.amount_refunded.as_ref(),
                &format!("{AT}.amount_refunded"),
                currency,
            )?,
            fee: paise(self.fee.as_ref(), &format!("{AT}.fee"), currency)?,
            fee_tax: paise(self.tax.as_ref(), &format!("{AT}.tax"), currency)?,
            payer: Some(PaymentParty {
                name: payer_name,
                vpa: self.vpa,
                email: self.email,
                phone: self.contact,
                bank: self.bank,
                wallet: self.wallet,
                card,
                ..PaymentParty::default()
            }),
            payee: None,
            references: PaymentReferences {
                bank_reference: acquirer
                    .as_ref()
                    .and_then(|a| a.rrn.clone().or_else(|| a.bank_transaction_id.clone()))
                    .map(String::from),
                transaction_reference: acquirer
                    .and_then(|a| a.upi_transaction_id)
                    .map(String::from),
                merchant_reference: order.and_then(|o| o.receipt.clone()).map(String::from),
                order_id: self.order_id,
                invoice_id: self.invoice_id,
                ..PaymentReferences::default()
            },
            description: self.description,
            failure,
            created_at: time(self.created_at.as_ref(), &format!("{AT}.created_at"))?,
            completed_at: None,
            settled: None,
            settled_at: None,
        })
    }
}

const METHODS: &[&str] = &["upi", "card", "netbanking", "wallet"];

static EVENTS: &[EmulatedEvent] = &[
    EmulatedEvent {
        name: "invoice.paid",
        variants: METHODS,
        description: "An invoice paid in full, with its captured payment and paid order.",
    },
    EmulatedEvent {
        name: "invoice.partially_paid",
        variants: METHODS,
        description: "A payment covering half of an invoice that accepts partial payments.",
    },
    EmulatedEvent {
        name: "invoice.expired",
        variants: &[],
        description: "An unpaid invoice past its expiry.",
    },
    EmulatedEvent {
        name: "payment.authorized",
        variants: METHODS,
        description: "A payment authorized by the payer, not yet captured.",
    },
    EmulatedEvent {
        name: "payment.captured",
        variants: METHODS,
        description: "A captured payment.",
    },
    EmulatedEvent {
        name: "payment.failed",
        variants: METHODS,
        description: "A failed payment attempt with Razorpay's error fields.",
    },
    EmulatedEvent {
        name: "refund.processed",
        variants: &["partial", "full"],
        description: "A refund of a captured UPI payment, with the payment as it stands after it (still `captured` until refunded in full).",
    },
];

const TEMPLATE_CARD: &str = include_str!("../fixtures/razorpay/invoice.paid.card.json");
const TEMPLATE_NETBANKING: &str = include_str!("../fixtures/razorpay/invoice.paid.netbanking.json");
const TEMPLATE_UPI: &str = include_str!("../fixtures/razorpay/invoice.paid.upi.json");
const TEMPLATE_WALLET: &str = include_str!("../fixtures/razorpay/invoice.paid.wallet.json");

/// Razorpay ids: a prefix and 14 base62 characters.
fn razorpay_id(rng: &mut EmulatorRng, prefix: &str) -> String {
    rng.base62_id(prefix, 14)
}

fn generate(event: &str, options: &mut GenerateOptions) -> Result<Generated, EmulateError> {
    let spec = emulate::find_event(NAME, EVENTS, event)?;
    // An event without variants refuses one given all the same, as every other provider's do.
    let variant = options.variant_of(spec)?;
    let method = match variant {
        "" | "partial" | "full" => "upi",
        method => method,
    };
    let now_seconds = options.now.unix_seconds();
    let rng = &mut options.rng;
    let mut body = emulate::template(match method {
        "card" => TEMPLATE_CARD,
        "netbanking" => TEMPLATE_NETBANKING,
        "wallet" => TEMPLATE_WALLET,
        _ => TEMPLATE_UPI,
    });
    let now = now_seconds;
    let payment_id = razorpay_id(rng, "pay_");
    let order_id = razorpay_id(rng, "order_");
    let invoice_id = razorpay_id(rng, "inv_");
    let receipt = rng.digits(4);
    let gross = rng.between(100, 50_000) * 100;
    let tax = gross * 18 / 100;
    let amount = gross + tax;
    let paid = if event == "invoice.partially_paid" {
        amount / 2
    } else {
        amount
    };
    let fee = paid * 2 / 100 + paid * 2 * 18 / 10_000;
    let fee_tax = paid * 2 * 18 / 10_000;

    set(&mut body, "event", event);
    set(&mut body, "account_id", razorpay_id(rng, "acc_"));
    set(&mut body, "created_at", now);
    let payment = "payload.payment.entity";
    set(&mut body, &format!("{payment}.id"), payment_id.clone());
    set(&mut body, &format!("{payment}.amount"), paid);
    set(&mut body, &format!("{payment}.order_id"), order_id.clone());
    set(
        &mut body,
        &format!("{payment}.invoice_id"),
        invoice_id.clone(),
    );
    set(
        &mut body,
        &format!("{payment}.description"),
        format!("Invoice #{invoice_id}"),
    );
    set(&mut body, &format!("{payment}.fee"), fee);
    set(&mut body, &format!("{payment}.tax"), fee_tax);
    set(&mut body, &format!("{payment}.created_at"), now);
    if method == "card" {
        let card_id = razorpay_id(rng, "card_");
        set(&mut body, &format!("{payment}.card_id"), card_id.clone());
        set(&mut body, &format!("{payment}.card.id"), card_id);
        set(&mut body, &format!("{payment}.card.last4"), rng.digits(4));
    }
    let order = "payload.order.entity";
    set(&mut body, &format!("{order}.id"), order_id.clone());
    set(&mut body, &format!("{order}.amount"), amount);
    set(&mut body, &format!("{order}.amount_paid"), paid);
    set(&mut body, &format!("{order}.amount_due"), amount - paid);
    set(&mut body, &format!("{order}.receipt"), receipt.clone());
    set(&mut body, &format!("{order}.created_at"), now);
    let invoice = "payload.invoice.entity";
    set(&mut body, &format!("{invoice}.id"), invoice_id);
    set(&mut body, &format!("{invoice}.receipt"), receipt.clone());
    set(&mut body, &format!("{invoice}.invoice_number"), receipt);
    set(&mut body, &format!("{invoice}.order_id"), order_id);
    set(
        &mut body,
        &format!("{invoice}.payment_id"),
        payment_id.clone(),
    );
    set(&mut body, &format!("{invoice}.gross_amount"), gross);
    set(&mut body, &format!("{invoice}.taxable_amount"), gross);
    set(&mut body, &format!("{invoice}.tax_amount"), tax);
    set(&mut body, &format!("{invoice}.amount"), amount);
    set(&mut body, &format!("{invoice}.amount_paid"), paid);
    set(&mut body, &format!("{invoice}.amount_due"), amount - paid);
    set(&mut body, &format!("{invoice}.date"), now - 120);
    set(&mut body, &format!("{invoice}.issued_at"), now - 60);
    set(&mut body, &format!("{invoice}.paid_at"), now);
    set(&mut body, &format!("{invoice}.created_at"), now - 60);
    set(
        &mut body,
        &format!("{invoice}.expire_by"),
        now + 30 * 86_400,
    );

    match event {
        "invoice.partially_paid" => {
            set(&mut body, &format!("{order}.status"), "attempted");
            set(&mut body, &format!("{invoice}.status"), "partially_paid");
            set(&mut body, &format!("{invoice}.paid_at"), Value::Null);
        }
        "invoice.expired" => {
            if let Some(payload) = body.get_mut("payload").and_then(Value::as_object_mut) {
                payload.retain(|key, _| key == "invoice");
            }
            set(&mut body, "contains", json!(["invoice"]));
            set(&mut body, &format!("{invoice}.status"), "expired");
            set(&mut body, &format!("{invoice}.payment_id"), Value::Null);
            set(&mut body, &format!("{invoice}.paid_at"), Value::Null);
            set(&mut body, &format!("{invoice}.amount_paid"), 0);
            set(&mut body, &format!("{invoice}.amount_due"), amount);
            set(&mut body, &format!("{invoice}.expire_by"), now);
            set(&mut body, &format!("{invoice}.expired_at"), now);
        }
        "payment.authorized" | "payment.captured" | "payment.failed" => {
            if let Some(payload) = body.get_mut("payload").and_then(Value::as_object_mut) {
                payload.retain(|key, _| key == "payment");
            }
            set(&mut body, "contains", json!(["payment"]));
            set(&mut body, &format!("{payment}.invoice_id"), Value::Null);
            set(
                &mut body,
                &format!("{payment}.description"),
                "Payment for order",
            );
            let (status, captured) = match event {
                "payment.authorized" => ("authorized", false),
                "payment.captured" => ("captured", true),
                _ => ("failed", false),
            };
            set(&mut body, &format!("{payment}.status"), status);
            set(&mut body, &format!("{payment}.captured"), captured);
            if event == "payment.failed" {
                set(&mut body, &format!("{payment}.fee"), Value::Null);
                set(&mut body, &format!("{payment}.tax"), Value::Null);
                set(
                    &mut body,
                    &format!("{payment}.error_code"),
                    "BAD_REQUEST_ERROR",
                );
                set(
                    &mut body,
                    &format!("{payment}.error_description"),
                    "Payment failed because the payer's bank declined it",
                );
            }
        }
        "refund.processed" => {
            let refunded = if variant == "full" { paid } else { paid / 2 };
            let captured = body["payload"]["payment"].clone();
            let refund = json!({"entity": {
                "id": razorpay_id(rng, "rfnd_"),
                "entity": "refund",
                "amount": refunded,
                "currency": "INR",
                "payment_id": payment_id,
                "notes": [],
                "receipt": null,
                "acquirer_data": {"arn": rng.digits(23)},
                "created_at": now - 30,
                "batch_id": null,
                "status": "processed",
                "speed_processed": "normal",
                "speed_requested": "normal",
            }});
            set(
                &mut body,
                "payload",
                json!({"refund": refund, "payment": captured}),
            );
            set(&mut body, "contains", json!(["refund", "payment"]));
            set(&mut body, &format!("{payment}.invoice_id"), Value::Null);
            set(
                &mut body,
                &format!("{payment}.description"),
                "Payment for order",
            );
            let (status, refund_status) = if variant == "full" {
                ("refunded", "full")
            } else {
                ("captured", "partial")
            };
            set(&mut body, &format!("{payment}.status"), status);
            set(&mut body, &format!("{payment}.captured"), true);
            set(&mut body, &format!("{payment}.amount_refunded"), refunded);
            set(
                &mut body,
                &format!("{payment}.refund_status"),
                refund_status,
            );
            set(&mut body, &format!("{payment}.created_at"), now - 3_600);
        }
        _ => {}
    }
    let event_id = rng.base62_id("", 14);
    Ok(Generated {
        event: event.to_owned(),
        json: body,
        headers: vec![
            ("Content-Type".to_owned(), "application/json".to_owned()),
            ("User-Agent".to_owned(), "Razorpay-Webhook/v1".to_owned()),
            ("x-razorpay-event-id".to_owned(), event_id),
        ],
    })
}
