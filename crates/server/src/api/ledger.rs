//! The ledger's read API: `GET /v1/{invoices,payments,bills,billers,disputes,documents}` and
//! `GET /v1/{kind}/{id}`, as JSON pages or, with `format=csv`, one CSV export of every match.
//!
//! Money is in minor units in JSON (as in canonical events) and in major units in CSV, the form
//! accountants' spreadsheets expect.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use billhook_core::entity::{EntityData, SubjectKind};
use billhook_core::ids::{EventId, InboundId};
use billhook_core::ledger::{Entity, HistoryEntry, is_id_of};
use billhook_core::money::{Amount, Currency};
use billhook_core::time::Timestamp;
use billhook_store::{LedgerFilter, LedgerQuery, Page, is_outstanding};
use futures_util::StreamExt;
use http::{HeaderValue, header};
use serde::{Deserialize, Serialize};

use super::{ApiQuery, MAX_LIMIT, page_limit};
use crate::App;
use crate::api::ApiPath;
#[allow(unused_imports, reason = "named in the OpenAPI attributes")]
use crate::error::ErrorBody as Error;
use crate::error::{ApiError, ErrorCode};

/// The kinds the ledger lists, with their path segment and name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Listing {
    pub kind: SubjectKind,
    /// The path segment under `/v1` and the CSV file's name.
    pub plural: &'static str,
    pub singular: &'static str,
}

pub(crate) const LISTINGS: &[Listing] = &[
    Listing {
        kind: SubjectKind::Invoice,
        plural: "invoices",
        singular: "invoice",
    },
    Listing {
        kind: SubjectKind::Payment,
        plural: "payments",
        singular: "payment",
    },
    Listing {
        kind: SubjectKind::Bill,
        plural: "bills",
        singular: "bill",
    },
    Listing {
        kind: SubjectKind::Biller,
        plural: "billers",
        singular: "biller",
    },
    Listing {
        kind: SubjectKind::Dispute,
        plural: "disputes",
        singular: "dispute",
    },
    Listing {
        kind: SubjectKind::Document,
        plural: "documents",
        singular: "document",
    },
];

/// A provider's name, as a schema: one of those billhook speaks.
pub(crate) struct ProviderName;

impl utoipa::PartialSchema for ProviderName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        super::docs::one_of(
            billhook_providers::registry::PROVIDERS
                .iter()
                .map(|provider| provider.name()),
            None,
        )
    }
}

impl utoipa::ToSchema for ProviderName {}

/// A listing's format, as a schema.
pub(crate) struct ListingFormat;

impl utoipa::PartialSchema for ListingFormat {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        super::docs::one_of(["json", "csv"], None)
    }
}

impl utoipa::ToSchema for ListingFormat {}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Invoices and bills: `outstanding`, `overdue` or `paid`; any kind: a status word.
    status: Option<String>,
    /// Payments: only succeeded payments linked to no invoice or bill.
    unmatched: Option<bool>,
    /// Only this provider (`razorpay`, `zwitch`, `setu_bbps`, `caminvoice`).
    #[param(value_type = Option<ProviderName>, inline)]
    provider: Option<String>,
    /// Only this source.
    source: Option<String>,
    /// The provider's id or the invoice number.
    reference: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// `json` (default) or `csv`.
    #[param(value_type = Option<ListingFormat>, inline)]
    format: Option<String>,
}

/// The parameters of the payments listing, as documented: [`ListParams`] whole.
pub(crate) struct PaymentListParams;

/// The parameters of the other listings, as documented: [`ListParams`] but `unmatched`, which
/// they refuse.
pub(crate) struct ListParamsButUnmatched;

impl utoipa::IntoParams for PaymentListParams {
    fn into_params(
        parameter_in: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        <ListParams as utoipa::IntoParams>::into_params(parameter_in)
    }
}

impl utoipa::IntoParams for ListParamsButUnmatched {
    fn into_params(
        parameter_in: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        let mut params = <ListParams as utoipa::IntoParams>::into_params(parameter_in);
        params.retain(|param| param.name != "unmatched");
        params
    }
}

fn is_payable(kind: SubjectKind) -> bool {
    matches!(kind, SubjectKind::Invoice | SubjectKind::Bill)
}

fn filter(kind: SubjectKind, params: &ListParams) -> Result<LedgerFilter, ApiError> {
    status_filter(
        kind,
        params.status.as_deref(),
        params.unmatched.unwrap_or(false),
    )
}

/// A listing's `status` and `unmatched`, as the API and the console both take them: a word
/// that never names a status of the kind is refused, not answered with an empty listing.
pub(crate) fn status_filter(
    kind: SubjectKind,
    status: Option<&str>,
    unmatched: bool,
) -> Result<LedgerFilter, ApiError> {
    if unmatched && kind != SubjectKind::Payment {
        return Err(ApiError::invalid("`unmatched` applies to payments only"));
    }
    Ok(match (status, unmatched) {
        (Some(_), true) => {
            return Err(ApiError::invalid(
                "use either `status` or `unmatched`, not both",
            ));
        }
        (None, true) => LedgerFilter::Unmatched,
        (None, false) => LedgerFilter::All,
        (Some("outstanding"), false) if is_payable(kind) => LedgerFilter::Outstanding,
        (Some("overdue"), false) if is_payable(kind) => LedgerFilter::Overdue,
        (Some("paid"), false) if is_payable(kind) => LedgerFilter::Paid,
        // Never a status word of the kinds below: asked of them, the listing would be empty
        // without a word. (A CamInvoice document's own status can be `paid`.)
        (Some(word @ ("outstanding" | "overdue")), false) => {
            return Err(ApiError::invalid(format!(
                "`status={word}` applies to invoices and bills only"
            )));
        }
        (Some("paid"), false) if kind == SubjectKind::Payment => {
            return Err(ApiError::invalid(
                "`status=paid` applies to invoices and bills; a payment is `succeeded`",
            ));
        }
        (Some(""), false) => return Err(ApiError::invalid("`status` is empty")),
        (Some(word), false) => LedgerFilter::Status(word.to_owned()),
    })
}

enum Format {
    Json,
    Csv,
}

fn format(params: &ListParams) -> Result<Format, ApiError> {
    match params.format.as_deref() {
        None | Some("json") => Ok(Format::Json),
        Some("csv") => Ok(Format::Csv),
        Some(other) => Err(ApiError::invalid(format!(
            "format must be `json` or `csv`, not `{other}`"
        ))),
    }
}

/// A CSV export sent page by page as it is read, so that its size, up to `max_export_rows`
/// (`[ledger]`), is never held in memory.
struct CsvExport {
    app: Arc<App>,
    query: LedgerQuery,
    now: Timestamp,
    /// The header line, sent with the first rows.
    head: String,
    /// The page to send next; the first is read before the response starts.
    next: Option<Page<Entity>>,
    sent: u64,
    /// What the header said. Rows that joined the listing meanwhile can still take an export
    /// the header called whole past the limit: it then ends incomplete rather than cut short
    /// without a word.
    announced_truncated: bool,
    /// Set once the body has ended in an error: nothing more is sent.
    ended: bool,
}

impl CsvExport {
    /// The next page's rows, read only when the client has taken the last ones; after them, an
    /// error when the body must end incomplete (a database failure midway, an export grown
    /// past its limit), which the client sees as a download cut off.
    async fn next_chunks(mut self) -> Option<(Vec<Result<bytes::Bytes, std::io::Error>>, Self)> {
        if self.ended {
            return None;
        }
        let page = match self.next.take() {
            Some(page) => page,
            None => {
                self.query.before.as_ref()?;
                match self.app.store.ledger_entities(self.query.clone()).await {
                    Ok(page) => page,
                    Err(error) => {
                        tracing::warn!(%error, "a CSV export stopped midway");
                        self.ended = true;
                        let failed = std::io::Error::other("the export stopped");
                        return Some((vec![Err(failed)], self));
                    }
                }
            }
        };
        let limit = self.app.settings.ledger.max_export_rows;
        let room = usize::try_from(limit.saturating_sub(self.sent)).unwrap_or(usize::MAX);
        let take = room.min(page.items.len());
        let mut chunk = std::mem::take(&mut self.head);
        chunk.reserve(take * 160);
        for entity in &page.items[..take] {
            csv_row(entity, self.now, &mut chunk);
        }
        self.sent += take as u64;
        let more = page.next_cursor.is_some() || take < page.items.len();
        self.query.before = page.next_cursor.filter(|_| self.sent < limit);
        let mut chunks = vec![Ok(bytes::Bytes::from(chunk))];
        if self.sent >= limit && more && !self.announced_truncated {
            tracing::warn!("a CSV export grew past its limit while it was sent");
            self.ended = true;
            chunks.push(Err(std::io::Error::other(format!(
                "the export grew past {limit} rows while it was sent"
            ))));
        }
        Some((chunks, self))
    }
}

/// A listing's cursor is the id of the last entity of the page before, so an id of another kind
/// (or no id at all) would silently give a wrong page.
pub(crate) fn ledger_cursor(
    kind: SubjectKind,
    cursor: Option<&str>,
) -> Result<Option<String>, ApiError> {
    match cursor.filter(|c| !c.is_empty()) {
        None => Ok(None),
        Some(cursor) if is_id_of(kind, cursor) => Ok(Some(cursor.to_owned())),
        Some(cursor) => Err(ApiError::new(
            ErrorCode::InvalidCursor,
            format!("`{cursor}` is not a cursor from this listing"),
        )),
    }
}

/// Refuses a provider filter that names no provider: it could only answer an empty listing,
/// which reads as "nothing there" for a misspelt name.
pub(crate) fn check_provider(provider: Option<&str>) -> Result<(), ApiError> {
    match provider {
        Some(provider) if billhook_providers::registry::by_name(provider).is_none() => {
            Err(ApiError::invalid(format!(
                "`{provider}` is not a provider (razorpay, zwitch, setu_bbps, caminvoice)"
            )))
        }
        _ => Ok(()),
    }
}

pub(crate) async fn list(
    app: Arc<App>,
    listing: Listing,
    params: ListParams,
) -> Result<Response, ApiError> {
    let kind = listing.kind;
    let now = Timestamp::now();
    check_provider(params.provider.as_deref())?;
    let query = LedgerQuery {
        kind,
        filter: filter(kind, &params)?,
        provider: params.provider.clone(),
        source: params.source.clone(),
        reference: params.reference.clone(),
        before: ledger_cursor(kind, params.cursor.as_deref())?,
        limit: page_limit(params.limit)?,
        now,
    };
    match format(&params)? {
        Format::Json => {
            let page = app.store.ledger_entities(query).await?;
            Ok(Json(PageView {
                data: page.items.iter().map(|e| EntityView::new(e, now)).collect(),
                next_cursor: page.next_cursor,
            })
            .into_response())
        }
        Format::Csv => {
            if params.cursor.as_deref().is_some_and(|c| !c.is_empty()) || params.limit.is_some() {
                return Err(ApiError::invalid(
                    "a CSV export holds every row: `limit` and `cursor` do not apply",
                ));
            }
            let query = LedgerQuery {
                limit: MAX_LIMIT,
                before: None,
                ..query
            };
            // Known before the first row is sent, as a header must be.
            let truncated = app
                .store
                .ledger_listing_exceeds(query.clone(), app.settings.ledger.max_export_rows)
                .await?;
            // The first page before answering, so a failing query is still a status code.
            let first = app.store.ledger_entities(query.clone()).await?;
            let mut head = String::new();
            csv_header(kind, &mut head);
            let export = CsvExport {
                app: Arc::clone(&app),
                query,
                now,
                head,
                next: Some(first),
                sent: 0,
                announced_truncated: truncated,
                ended: false,
            };
            let body = futures_util::stream::unfold(export, CsvExport::next_chunks)
                .flat_map(futures_util::stream::iter);
            let mut response = axum::body::Body::from_stream(body).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            );
            let disposition = format!(
                "attachment; filename=\"billhook-{}-{}.csv\"",
                listing.plural,
                now.to_rfc3339().get(..10).unwrap_or("export")
            );
            if let Ok(value) = HeaderValue::from_str(&disposition) {
                headers.insert(header::CONTENT_DISPOSITION, value);
            }
            if truncated {
                headers.insert("x-billhook-truncated", HeaderValue::from_static("true"));
            }
            Ok(response)
        }
    }
}

/// Finds an entity by billhook's id, or by a provider id or invoice number that names exactly
/// one entity of the kind.
async fn find(app: &App, listing: Listing, id: &str) -> Result<Entity, ApiError> {
    let not_found = || ApiError::not_found(listing.singular);
    if let Some(entity) = app.store.ledger_entity(id).await? {
        return if entity.kind == listing.kind {
            Ok(entity)
        } else {
            Err(not_found())
        };
    }
    let page = app
        .store
        .ledger_entities(LedgerQuery {
            kind: listing.kind,
            filter: LedgerFilter::All,
            provider: None,
            source: None,
            reference: Some(id.to_owned()),
            before: None,
            limit: FIND_LIMIT,
            now: Timestamp::now(),
        })
        .await?;
    // A provider id or a current number names an entry before a number it had before (an
    // invoice renumbered away from the number another now has).
    let (current, former): (Vec<Entity>, Vec<Entity>) = page
        .items
        .into_iter()
        .partition(|e| e.provider_id == id || e.keys.number.as_deref() == Some(id));
    let several = || {
        ApiError::invalid(format!(
            "several {} have the reference `{id}`; use billhook's id",
            listing.plural
        ))
    };
    match (current.len(), former.len()) {
        (1, _) => current.into_iter().next().ok_or_else(not_found),
        (0, 0) => Err(not_found()),
        (0, 1) if page.next_cursor.is_none() => former.into_iter().next().ok_or_else(not_found),
        _ => Err(several()),
    }
}

/// How many entries a lookup by reference reads to tell one from several.
const FIND_LIMIT: u32 = 50;

pub(crate) async fn show(
    app: Arc<App>,
    listing: Listing,
    id: String,
) -> Result<Response, ApiError> {
    let now = Timestamp::now();
    let entity = find(&app, listing, &id).await?;
    let history = app.store.ledger_history(&entity.id).await?;
    let payments = if is_payable(entity.kind) {
        Some(app.store.ledger_linked(&entity.id).await?)
    } else {
        None
    };
    let target = match &entity.linked_to {
        Some(target) => app.store.ledger_entity(target).await?,
        None => None,
    };
    Ok(Json(DetailView {
        entity: EntityView::new(&entity, now),
        payments: payments
            .as_ref()
            .map(|p| p.iter().map(|e| EntityView::new(e, now)).collect()),
        paid_by: target.as_ref().map(|t| EntityView::new(t, now)),
        history: history.iter().map(HistoryView::from).collect(),
    })
    .into_response())
}

#[derive(Serialize)]
struct PageView<'a> {
    data: Vec<EntityView<'a>>,
    next_cursor: Option<String>,
}

/// One ledger entity as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = LedgerEntry)]
pub(crate) struct EntityView<'a> {
    id: &'a str,
    kind: &'static str,
    provider: &'a str,
    provider_id: &'a str,
    source: &'a str,
    /// Known from the provider's test mode; payments link only to entries of their own mode.
    sandbox: bool,
    /// The invoice number, or a bill's biller reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    number: Option<&'a str>,
    /// Invoices and bills: every other number its messages gave it, by which payments still
    /// find it (an invoice renumbered).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    former_numbers: &'a [String],
    status: Option<&'a str>,
    provider_status: Option<&'a str>,
    currency: Option<Currency>,
    amount: Option<Amount>,
    /// Invoices and bills: what linked payments (or a paid status) cover.
    paid: Option<Amount>,
    /// Invoices and bills: what is still owed (`null` when the amount is unknown).
    due: Option<Amount>,
    /// Invoices and bills: what was paid beyond the amount.
    overpaid: Option<Amount>,
    /// Invoices and bills: when an outstanding one becomes overdue.
    due_by: Option<Timestamp>,
    /// Invoices and bills: outstanding past `due_by`.
    overdue: Option<bool>,
    /// Invoices: when linked payments covered the amount (`null` again once an
    /// `invoice.unsettled` says they no longer do).
    settled_at: Option<Timestamp>,
    /// Invoices: the `invoice.settled` event of the current settlement.
    settled_event: Option<EventId>,
    /// Payments: what the payment contributes to an invoice (its amount net of refunds once it
    /// succeeded, else 0).
    counted: Option<Amount>,
    /// Payments: the invoice or bill it pays.
    linked_to: Option<&'a str>,
    /// Payments: the reference that linked it (`invoice_id`, `merchant_reference`, …).
    link_rule: Option<&'a str>,
    /// Payments: the `payment.unmatched` event, if one was announced.
    unmatched_event: Option<EventId>,
    created_at: Timestamp,
    updated_at: Timestamp,
    /// The stored message the latest snapshot came from.
    inbound_id: InboundId,
    /// The latest snapshot, as canonical events carry it.
    data: &'a EntityData,
}

impl<'a> EntityView<'a> {
    pub(crate) fn new(entity: &'a Entity, now: Timestamp) -> Self {
        let payable = is_payable(entity.kind);
        let payment = entity.kind == SubjectKind::Payment;
        let number = match entity.kind {
            SubjectKind::Invoice | SubjectKind::Bill => entity.keys.number.as_deref(),
            _ => None,
        };
        Self {
            id: &entity.id,
            kind: entity.kind.as_str(),
            provider: &entity.provider,
            provider_id: &entity.provider_id,
            source: &entity.source,
            sandbox: entity.sandbox,
            number,
            former_numbers: &entity.keys.former_numbers,
            status: entity.status.as_deref(),
            provider_status: entity.provider_status.as_deref(),
            currency: entity.currency,
            amount: entity.amount,
            paid: payable.then_some(entity.paid),
            due: if payable { entity.due } else { None },
            overpaid: payable.then_some(entity.overpaid),
            due_by: if payable { entity.due_by } else { None },
            overdue: payable
                .then(|| is_outstanding(entity) && entity.due_by.is_some_and(|by| by < now)),
            settled_at: entity.settled_at,
            settled_event: entity.settled_event,
            counted: payment.then_some(entity.counted),
            linked_to: entity.linked_to.as_deref(),
            link_rule: entity.link_rule.as_deref(),
            unmatched_event: entity.unmatched_event,
            created_at: entity.created_at,
            updated_at: entity.updated_at,
            inbound_id: entity.inbound_id,
            data: entity.snapshot.data(),
        }
    }
}

/// A status an entity reported, in the order billhook received them.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = LedgerHistoryEntry)]
struct HistoryView<'a> {
    event_id: EventId,
    event_type: &'static str,
    status: Option<&'a str>,
    provider_status: Option<&'a str>,
    /// The status's rank among the provider's statuses, if it has one.
    rank: Option<i32>,
    occurred_at: Timestamp,
    received_at: Timestamp,
    /// False when the snapshot was older than what billhook already knew: it is kept here but
    /// did not move the status.
    applied: bool,
}

impl<'a> From<&'a HistoryEntry> for HistoryView<'a> {
    fn from(entry: &'a HistoryEntry) -> Self {
        Self {
            event_id: entry.event_id,
            event_type: entry.event_type.as_str(),
            status: entry.status.as_deref(),
            provider_status: entry.provider_status.as_deref(),
            rank: entry.level,
            occurred_at: entry.occurred_at,
            received_at: entry.received_at,
            applied: entry.applied,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = LedgerEntryDetail)]
struct DetailView<'a> {
    #[serde(flatten)]
    entity: EntityView<'a>,
    /// Invoices and bills: the payments linked to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    payments: Option<Vec<EntityView<'a>>>,
    /// Payments: the invoice or bill it pays.
    #[serde(skip_serializing_if = "Option::is_none")]
    paid_by: Option<EntityView<'a>>,
    history: Vec<HistoryView<'a>>,
}

/// CSV columns shared by every kind, then each kind's own.
const COMMON_COLUMNS: &[&str] = &[
    "id",
    "provider",
    "source",
    "provider_id",
    "status",
    "provider_status",
    "currency",
    "amount",
];
const PAYABLE_COLUMNS: &[&str] = &[
    "number",
    "former_numbers",
    "counterparty",
    "counterparty_gstin",
    "paid",
    "due",
    "overpaid",
    "due_by",
    "overdue",
    "settled_at",
];
const PAYMENT_COLUMNS: &[&str] = &[
    "rail",
    "method",
    "fee",
    "bank_reference",
    "merchant_reference",
    "linked_to",
    "link_rule",
    "completed_at",
];
const TRAILING_COLUMNS: &[&str] = &["created_at", "updated_at", "sandbox"];

fn csv_header(kind: SubjectKind, out: &mut String) {
    let specific: &[&str] = match kind {
        SubjectKind::Invoice | SubjectKind::Bill => PAYABLE_COLUMNS,
        SubjectKind::Payment => PAYMENT_COLUMNS,
        _ => &[],
    };
    let columns: Vec<&str> = COMMON_COLUMNS
        .iter()
        .chain(specific)
        .chain(TRAILING_COLUMNS)
        .copied()
        .collect();
    out.push_str(&columns.join(","));
    out.push_str("\r\n");
}

fn csv_row(entity: &Entity, now: Timestamp, out: &mut String) {
    let currency = entity.currency;
    let money = |amount: Option<Amount>| match (amount, currency) {
        (Some(amount), Some(currency)) => amount.format_major(currency),
        _ => String::new(),
    };
    let time = |at: Option<Timestamp>| at.map(|t| t.to_rfc3339()).unwrap_or_default();
    let text = |value: Option<&str>| value.unwrap_or_default().to_owned();
    let mut fields = vec![
        text(Some(&entity.id)),
        text(Some(&entity.provider)),
        text(Some(&entity.source)),
        text(Some(&entity.provider_id)),
        text(entity.status.as_deref()),
        text(entity.provider_status.as_deref()),
        currency.map(|c| c.as_str().to_owned()).unwrap_or_default(),
        money(entity.amount),
    ];
    match entity.snapshot.data() {
        EntityData::Invoice(_) | EntityData::Bill(_) => {
            let (counterparty, gstin) = match entity.snapshot.data() {
                EntityData::Invoice(invoice) => {
                    let buyer = invoice.buyer.as_ref();
                    (
                        buyer.and_then(|b| b.legal_name.clone().or_else(|| b.trade_name.clone())),
                        buyer.and_then(|b| b.gstin.clone()),
                    )
                }
                EntityData::Bill(bill) => (bill.customer_name.clone(), None),
                _ => (None, None),
            };
            fields.extend([
                text(entity.keys.number.as_deref()),
                // One cell: an export has one row per entry.
                entity.keys.former_numbers.join("; "),
                counterparty.unwrap_or_default(),
                gstin.unwrap_or_default(),
                money(Some(entity.paid)),
                money(entity.due),
                money(Some(entity.overpaid)),
                time(entity.due_by),
                (is_outstanding(entity) && entity.due_by.is_some_and(|by| by < now)).to_string(),
                time(entity.settled_at),
            ]);
        }
        EntityData::Payment(payment) => fields.extend([
            text(payment.rail.as_deref()),
            text(payment.method.as_deref()),
            money(payment.fee),
            text(payment.references.bank_reference.as_deref()),
            text(payment.references.merchant_reference.as_deref()),
            text(entity.linked_to.as_deref()),
            text(entity.link_rule.as_deref()),
            time(payment.completed_at),
        ]),
        _ => {}
    }
    fields.extend([
        time(Some(entity.created_at)),
        time(Some(entity.updated_at)),
        entity.sandbox.to_string(),
    ]);
    let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
    out.push_str(&line.join(","));
    out.push_str("\r\n");
}

/// One CSV field (RFC 4180): quoted when it holds a comma, quote or line break. Text that a
/// spreadsheet would run as a formula gets a leading apostrophe; amounts never start that way
/// unless negative, and a negative amount is a number, not a formula.
fn csv_field(value: &str) -> String {
    let formula = !is_decimal(value) && value.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let value = if formula {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

/// `-?digits(.digits)?`: the form amounts are written in.
fn is_decimal(value: &str) -> bool {
    let unsigned = value.strip_prefix('-').unwrap_or(value);
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, "0"));
    !whole.is_empty()
        && !fraction.is_empty()
        && whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
}

/// One documented handler pair per listing (the OpenAPI document needs a function per path).
macro_rules! ledger_handlers {
    ($($kind:ident($params:ident): $list:ident $list_path:literal, $show:ident $show_path:literal, $what:literal;)*) => {
        $(
            #[doc = concat!("Ledger ", $what, ", newest first; `format=csv` exports every match.")]
            #[utoipa::path(get, path = $list_path, tag = "ledger", params($params),
                responses(
                    (status = 200, description = "A page of entries, or a CSV export",
                        content((super::Page<EntityView<'static>> = "application/json"), (String = "text/csv")),
                        headers(
                            ("content-disposition" = String, description = "CSV only: `attachment` with a file name"),
                            ("x-billhook-truncated" = String, description = "CSV only: `true` when the export stopped at its row limit"),
                        )),
                    (status = 400, description = "A parameter or the body is invalid", body = Error), (status = 401, description = "No valid token", body = Error),
                ))]
            pub(crate) async fn $list(
                State(app): State<Arc<App>>,
                ApiQuery(params): ApiQuery<ListParams>,
            ) -> Result<Response, ApiError> {
                list(app, listing(SubjectKind::$kind), params).await
            }

            #[doc = concat!("One of the ledger's ", $what, " with its status history and links. The id is billhook's or a provider id or number that names one entry.")]
            #[utoipa::path(get, path = $show_path, tag = "ledger",
                params(("id" = String, Path, description = "billhook's id, or a provider id or invoice number")),
                responses(
                    (status = 200, description = "The entry", body = DetailView<'static>),
                    (status = 400, description = "A parameter or the body is invalid", body = Error), (status = 401, description = "No valid token", body = Error), (status = 404, description = "Not found", body = Error),
                ))]
            pub(crate) async fn $show(
                State(app): State<Arc<App>>,
                ApiPath(id): ApiPath<String>,
            ) -> Result<Response, ApiError> {
                show(app, listing(SubjectKind::$kind), id).await
            }
        )*

        /// Serves the listings.
        pub(crate) fn routes() -> axum::Router<Arc<App>> {
            axum::Router::new()
                $(
                    .route(&$list_path["/v1".len()..], axum::routing::get($list))
                    .route(&$show_path["/v1".len()..], axum::routing::get($show))
                )*
        }
    };
}

ledger_handlers! {
    Invoice(ListParamsButUnmatched): list_invoices "/v1/invoices", show_invoice "/v1/invoices/{id}", "invoices";
    Payment(PaymentListParams): list_payments "/v1/payments", show_payment "/v1/payments/{id}", "payments";
    Bill(ListParamsButUnmatched): list_bills "/v1/bills", show_bill "/v1/bills/{id}", "BBPS bills";
    Biller(ListParamsButUnmatched): list_billers "/v1/billers", show_biller "/v1/billers/{id}", "BBPS billers";
    Dispute(ListParamsButUnmatched): list_disputes "/v1/disputes", show_dispute "/v1/disputes/{id}", "BBPS disputes";
    Document(ListParamsButUnmatched): list_documents "/v1/documents", show_document "/v1/documents/{id}", "CamInvoice documents";
}

fn listing(kind: SubjectKind) -> Listing {
    LISTINGS
        .iter()
        .copied()
        .find(|l| l.kind == kind)
        .unwrap_or(LISTINGS[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_field("-12.50"), "-12.50");
        assert_eq!(csv_field("-1-1"), "'-1-1");
        assert_eq!(csv_field("line\nbreak"), "\"line\nbreak\"");
    }

    #[test]
    fn filters_follow_the_kind() {
        let params = |status: &str| ListParams {
            status: Some(status.to_owned()),
            ..ListParams::default()
        };
        assert_eq!(
            filter(SubjectKind::Invoice, &params("outstanding")).unwrap(),
            LedgerFilter::Outstanding
        );
        assert_eq!(
            filter(SubjectKind::Document, &params("paid")).unwrap(),
            LedgerFilter::Status("paid".to_owned()),
            "a document's own status word"
        );
        assert!(filter(SubjectKind::Payment, &params("paid")).is_err());
        assert!(filter(SubjectKind::Dispute, &params("overdue")).is_err());
        let unmatched = ListParams {
            unmatched: Some(true),
            ..ListParams::default()
        };
        assert_eq!(
            filter(SubjectKind::Payment, &unmatched).unwrap(),
            LedgerFilter::Unmatched
        );
        assert!(filter(SubjectKind::Invoice, &unmatched).is_err());
    }
}
