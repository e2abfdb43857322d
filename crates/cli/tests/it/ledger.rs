//! The ledger end to end: provider messages from the emulator, in and out of order and
//! redelivered, and what `/v1/invoices`, `/v1/payments` and the other listings conclude.

use std::time::Duration;

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;

backend_tests!(
    two_partial_payments_settle_the_invoice_once,
    a_refund_that_uncovers_an_invoice_is_announced,
    zwitch_success_before_pending_stays_succeeded,
    razorpay_captured_before_authorized_stays_captured,
    setu_failure_then_late_processing_stays_failed,
    caminvoice_paid_then_late_accepted_stays_paid,
    a_zwitch_payment_settles_the_bharat_connect_invoice_it_names,
    a_test_mode_payment_pays_only_a_test_mode_invoice,
    a_renumbered_invoice_is_paid_under_every_number_it_had,
    a_setu_payment_pays_the_bill_it_was_fetched_for,
    unstamped_biller_updates_leave_the_latest_status,
    a_payment_no_invoice_claims_is_announced_once,
    listings_filter_find_by_reference_and_export_csv,
    the_cli_lists_invoices_and_payments,
    a_csv_export_of_many_pages_holds_every_row_once,
    a_csv_export_cut_short_says_so_and_the_cli_fails,
);

/// Runs a scenario (TOML text) through `billhook trigger --scenario`; panics if any step fails.
async fn run_scenario(app: &TestApp, name: &str, text: &str) {
    let path = app.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    let (ok, printed) = app
        .cli(&["trigger", "--scenario", path.to_str().unwrap()])
        .await;
    assert!(ok && !printed.contains("FAILED"), "{name}: {printed}");
}

/// A shipped scenario's text.
fn shipped(file: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../../scenarios/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Every item of a ledger listing (one page is enough for these tests).
async fn listing(app: &TestApp, path: &str) -> Vec<Value> {
    let (status, page) = app.admin_get(path).await;
    assert_eq!(status, 200, "{path}: {page}");
    assert_eq!(page["next_cursor"], Value::Null, "{path}");
    page["data"].as_array().unwrap().clone()
}

/// The one entity a listing holds.
async fn only(app: &TestApp, path: &str) -> Value {
    let items = listing(app, path).await;
    assert_eq!(items.len(), 1, "{path}: {items:?}");
    items.into_iter().next().unwrap()
}

async fn detail(app: &TestApp, kind: &str, id: &str) -> Value {
    let (status, detail) = app.admin_get(&format!("/v1/{kind}/{id}")).await;
    assert_eq!(status, 200, "{detail}");
    detail
}

/// The statuses of an entity's history, in arrival order, with whether each moved the state.
fn history(detail: &Value) -> Vec<(String, bool)> {
    detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["status"].as_str().unwrap_or_default().to_owned(),
                h["applied"].as_bool().unwrap(),
            )
        })
        .collect()
}

async fn events_of_type(app: &TestApp, event_type: &str) -> Vec<Value> {
    listing(app, &format!("/v1/events?type={event_type}")).await
}

async fn two_partial_payments_settle_the_invoice_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::ok().await;
    app.create_endpoint(json!({ "url": receiver.url, "event_types": ["invoice.settled"] }))
        .await;
    // The shipped scenario, then both messages redelivered as Razorpay would.
    let scenario = format!(
        "{}\n[[step]]\nname = \"first_again\"\nresend = \"first_half\"\n\n[[step]]\nname = \"second_again\"\nresend = \"second_half\"\n",
        shipped("razorpay-invoice-two-partial-payments.toml")
    );
    run_scenario(&app, "two-partials", &scenario).await;

    let invoice = only(&app, "/v1/invoices?provider=razorpay").await;
    let payments = listing(&app, "/v1/payments?provider=razorpay").await;
    assert_eq!(payments.len(), 2, "{payments:?}");
    let sum: i64 = payments.iter().map(|p| p["amount"].as_i64().unwrap()).sum();
    assert!(payments.iter().all(|p| p["linked_to"] == invoice["id"]));
    assert_eq!(invoice["paid"].as_i64().unwrap(), sum);
    assert_eq!(invoice["amount"].as_i64().unwrap(), sum);
    assert_eq!(invoice["due"], json!(0));
    assert_eq!(invoice["overpaid"], json!(0));
    assert_eq!(invoice["status"], json!("paid"));

    let settled = events_of_type(&app, "invoice.settled").await;
    assert_eq!(settled.len(), 1, "{settled:?}");
    assert_eq!(settled[0]["id"], invoice["settled_event"]);
    assert_eq!(settled[0]["data"]["amount_paid"].as_i64().unwrap(), sum);
    assert_eq!(settled[0]["data"]["amount_due"], json!(0));
    assert_eq!(
        settled[0]["subject"]["id"], invoice["provider_id"],
        "the announcement is about the provider's invoice"
    );
    app.eventually(
        Duration::from_secs(10),
        "the announcement delivered",
        || async { receiver.count() >= 1 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let arrivals = receiver.arrivals();
    assert_eq!(arrivals.len(), 1);
    let delivered: Value = serde_json::from_slice(&arrivals[0].body).unwrap();
    assert_eq!(delivered["type"], json!("invoice.settled"));

    let shown = detail(&app, "invoices", invoice["id"].as_str().unwrap()).await;
    assert_eq!(shown["payments"].as_array().unwrap().len(), 2);
    assert_eq!(
        history(&shown),
        vec![
            ("partially_paid".to_owned(), true),
            ("paid".to_owned(), true)
        ]
    );
    app.stop().await;
}

/// Payments cover a Razorpay invoice (its own status stays `partially_paid`, so only they do);
/// a part of the second is then refunded (`refund.processed`, the payment still `captured`
/// with `amount_refunded`): `invoice.unsettled` follows the `invoice.settled`, and the invoice
/// shows what the refund left due.
async fn a_refund_that_uncovers_an_invoice_is_announced(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::ok().await;
    app.create_endpoint(json!({
        "url": receiver.url,
        "event_types": ["invoice.settled", "invoice.unsettled"]
    }))
    .await;
    let rest = r#"
"payload.payment.entity.amount" = "${first_half.payload.invoice.entity.amount_due}"
"payload.payment.entity.order_id" = "${first_half.payload.order.entity.id}"
"payload.payment.entity.invoice_id" = "${first_half.payload.invoice.entity.id}""#;
    let scenario = format!(
        r#"
name = "paid, then refunded"

[[step]]
name = "first_half"
provider = "razorpay"
event = "invoice.partially_paid"
variant = "upi"

[[step]]
name = "rest"
provider = "razorpay"
event = "payment.captured"
[step.set]{rest}

[[step]]
name = "refund"
provider = "razorpay"
event = "refund.processed"
variant = "partial"
# Refunded after the capture, as Razorpay's times say (they count in seconds).
delay = "1s"
[step.set]{rest}
"payload.payment.entity.id" = "${{rest.payload.payment.entity.id}}"
"payload.payment.entity.amount_refunded" = 12345
"payload.refund.entity.amount" = 12345
"payload.refund.entity.payment_id" = "${{rest.payload.payment.entity.id}}"
"#
    );
    run_scenario(&app, "refunded", &scenario).await;

    let invoice = only(&app, "/v1/invoices?provider=razorpay").await;
    assert_eq!(invoice["status"], json!("partially_paid"));
    assert_eq!(invoice["settled_event"], Value::Null, "{invoice}");
    assert_eq!(invoice["settled_at"], Value::Null, "{invoice}");
    let due = invoice["due"].as_i64().unwrap();
    assert_eq!(due, 12_345, "{invoice}");
    let payments = listing(&app, "/v1/payments?provider=razorpay").await;
    let refunded = payments
        .iter()
        .find(|p| p["counted"] != p["amount"])
        .unwrap_or_else(|| panic!("{payments:?}"));
    assert_eq!(refunded["status"], json!("succeeded"), "{refunded}");
    assert_eq!(events_of_type(&app, "payment.refunded").await.len(), 1);
    let settled = events_of_type(&app, "invoice.settled").await;
    let unsettled = events_of_type(&app, "invoice.unsettled").await;
    assert_eq!((settled.len(), unsettled.len()), (1, 1), "{unsettled:?}");
    assert_eq!(unsettled[0]["data"]["amount_due"], json!(due));
    assert_eq!(unsettled[0]["subject"], settled[0]["subject"]);
    assert_eq!(
        unsettled[0]["reverses"], settled[0]["id"],
        "names what it takes back"
    );
    assert!(settled[0].get("reverses").is_none(), "{}", settled[0]);
    assert_eq!(unsettled[0]["source"]["event"], json!("refund.processed"));
    app.eventually(Duration::from_secs(10), "both delivered", || async {
        receiver.count() >= 2
    })
    .await;
    let types: Vec<Value> = receiver
        .arrivals()
        .iter()
        .map(|arrival| serde_json::from_slice::<Value>(&arrival.body).unwrap()["type"].clone())
        .collect();
    assert_eq!(
        types,
        [json!("invoice.settled"), json!("invoice.unsettled")]
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("billhook_ledger_conclusions_total{type=\"invoice.unsettled\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

async fn zwitch_success_before_pending_stays_succeeded(backend: Backend) {
    let app = spawn_app(backend).await;
    run_scenario(&app, "zwitch", &shipped("zwitch-upi-out-of-order.toml")).await;
    let payment = only(&app, "/v1/payments?provider=zwitch").await;
    assert_eq!(payment["status"], json!("succeeded"));
    assert_eq!(payment["provider_status"], json!("success"));
    assert_eq!(payment["counted"], payment["amount"]);
    let shown = detail(&app, "payments", payment["id"].as_str().unwrap()).await;
    // The redelivered success was recognised at the door; the late pending entered the
    // history without moving the state back.
    assert_eq!(
        history(&shown),
        vec![
            ("succeeded".to_owned(), true),
            ("pending".to_owned(), false)
        ]
    );
    app.stop().await;
}

async fn razorpay_captured_before_authorized_stays_captured(backend: Backend) {
    let app = spawn_app(backend).await;
    let scenario = r#"
name = "captured before authorized"

[[step]]
name = "captured"
provider = "razorpay"
event = "payment.captured"

[[step]]
name = "authorized"
provider = "razorpay"
event = "payment.authorized"
[step.set]
"payload.payment.entity.id" = "${captured.payload.payment.entity.id}"
"payload.payment.entity.order_id" = "${captured.payload.payment.entity.order_id}"
"payload.payment.entity.amount" = "${captured.payload.payment.entity.amount}"

[[step]]
name = "captured_again"
resend = "captured"
"#;
    run_scenario(&app, "razorpay", scenario).await;
    let payment = only(&app, "/v1/payments?provider=razorpay").await;
    assert_eq!(payment["status"], json!("succeeded"));
    assert_eq!(payment["provider_status"], json!("captured"));
    let shown = detail(&app, "payments", payment["id"].as_str().unwrap()).await;
    assert_eq!(
        history(&shown),
        vec![
            ("succeeded".to_owned(), true),
            ("authorized".to_owned(), false)
        ]
    );
    app.stop().await;
}

async fn setu_failure_then_late_processing_stays_failed(backend: Backend) {
    let app = spawn_app(backend).await;
    let scenario = r#"
name = "failure, then a late processing"

[[step]]
name = "fetched"
provider = "setu_bbps"
event = "BILL_FETCH"

[[step]]
name = "failed"
provider = "setu_bbps"
event = "BILL_PAY"
variant = "Failure"
[step.set]
"data.refId" = "${fetched.data.refId}"
"data.billerRefId" = "${fetched.data.billerRefId}"
"data.paymentDetails.amount" = "${fetched.data.bill.amount}"

[[step]]
name = "late_processing"
provider = "setu_bbps"
event = "BILL_PAY"
variant = "Processing"
[step.set]
"data.refId" = "${fetched.data.refId}"
"data.billerRefId" = "${fetched.data.billerRefId}"
"data.transactionId" = "${failed.data.transactionId}"
"data.paymentDetails.paymentRefId" = "${failed.data.paymentDetails.paymentRefId}"
"data.paymentDetails.amount" = "${fetched.data.bill.amount}"

[[step]]
name = "failed_again"
resend = "failed"
"#;
    run_scenario(&app, "setu", scenario).await;
    let payment = only(&app, "/v1/payments?provider=setu_bbps").await;
    assert_eq!(payment["status"], json!("failed"));
    assert_eq!(payment["counted"], json!(0));
    let shown = detail(&app, "payments", payment["id"].as_str().unwrap()).await;
    assert_eq!(
        history(&shown),
        vec![
            ("failed".to_owned(), true),
            ("processing".to_owned(), false)
        ]
    );
    // Linked to its bill, which a failed payment does not pay.
    let bill = only(&app, "/v1/bills").await;
    assert_eq!(payment["linked_to"], bill["id"]);
    assert_eq!(bill["paid"], json!(0));
    assert_eq!(bill["due"], bill["amount"]);
    app.stop().await;
}

async fn caminvoice_paid_then_late_accepted_stays_paid(backend: Backend) {
    let app = spawn_app(backend).await;
    let scenario = r#"
name = "paid, then a late accepted"

[[step]]
name = "paid"
provider = "caminvoice"
event = "DOCUMENT.STATUS_UPDATED"
variant = "PAID"

[[step]]
name = "accepted"
provider = "caminvoice"
event = "DOCUMENT.STATUS_UPDATED"
variant = "ACCEPTED"
[step.set]
"document_id" = "${paid.document_id}"
"endpoint_id" = "${paid.endpoint_id}"

[[step]]
name = "paid_again"
resend = "paid"
"#;
    run_scenario(&app, "caminvoice", scenario).await;
    let document = only(&app, "/v1/documents").await;
    assert_eq!(document["status"], json!("paid"));
    let shown = detail(&app, "documents", document["id"].as_str().unwrap()).await;
    assert_eq!(
        history(&shown),
        vec![("paid".to_owned(), true), ("accepted".to_owned(), false)]
    );
    assert_eq!(
        listing(&app, "/v1/documents?status=accepted").await.len(),
        0
    );
    app.stop().await;
}

/// Zwitch marks test-mode messages `is_sandbox`. A sandbox payment naming a live invoice's
/// number does not pay it; one naming a sandbox invoice does. Each message is its own request,
/// so each finds the other stored.
async fn a_test_mode_payment_pays_only_a_test_mode_invoice(backend: Backend) {
    let app = spawn_app(backend).await;
    let scenario = r#"
name = "test payments and live and test invoices"

[[step]]
name = "live-invoice"
provider = "zwitch"
event = "bharat_connect.invoice.create"
[step.set]
"data.object.supplier_invoice_number" = "INV/LIVE/1"
"data.object.value_details.total_invoice_value" = 500

[[step]]
name = "test-payment-of-live"
provider = "zwitch"
event = "payments.updated"
variant = "success"
sandbox = true
[step.set]
"data.object.merchant_reference_id" = "INV/LIVE/1"
"data.object.amount" = 500

[[step]]
name = "test-invoice"
provider = "zwitch"
event = "bharat_connect.invoice.create"
sandbox = true
[step.set]
"data.object.supplier_invoice_number" = "INV/TEST/1"
"data.object.value_details.total_invoice_value" = 500

[[step]]
name = "test-payment-of-test"
provider = "zwitch"
event = "payments.updated"
variant = "success"
sandbox = true
[step.set]
"data.object.merchant_reference_id" = "INV/TEST/1"
"data.object.amount" = 500
"#;
    run_scenario(&app, "zwitch-modes", scenario).await;
    let live = only(&app, "/v1/invoices?reference=INV/LIVE/1").await;
    assert_eq!(live["sandbox"], json!(false), "{live}");
    assert_eq!(live["due"], json!(50_000), "{live}");
    assert!(live["settled_event"].is_null(), "{live}");
    let test = only(&app, "/v1/invoices?reference=INV/TEST/1").await;
    assert_eq!(test["sandbox"], json!(true), "{test}");
    assert_eq!(test["due"], json!(0), "{test}");
    let (_, payments) = app.admin_get("/v1/payments?provider=zwitch").await;
    let payments = payments["data"].as_array().unwrap();
    assert_eq!(payments.len(), 2, "{payments:?}");
    assert!(payments.iter().all(|p| p["sandbox"] == json!(true)));
    let linked: Vec<&Value> = payments.iter().map(|p| &p["linked_to"]).collect();
    assert!(linked.contains(&&test["id"]), "{payments:?}");
    assert!(linked.contains(&&Value::Null), "{payments:?}");
    let settled = events_of_type(&app, "invoice.settled").await;
    assert_eq!(settled.len(), 1);
    assert_eq!(
        settled[0]["source"]["sandbox"],
        json!(true),
        "{:?}",
        settled[0]
    );
    app.stop().await;
}

async fn a_zwitch_payment_settles_the_bharat_connect_invoice_it_names(backend: Backend) {
    let app = spawn_app(backend).await;
    // The payment arrives first and names the invoice by its number; the invoice follows.
    let scenario = r#"
name = "a UPI collect paying a Bharat Connect invoice"

[[step]]
name = "paid"
provider = "zwitch"
event = "payments.updated"
variant = "success"
[step.set]
"data.object.merchant_reference_id" = "INV/2026/0042"
"data.object.amount" = 1180.5

[[step]]
name = "invoice"
provider = "zwitch"
event = "bharat_connect.invoice.create"
[step.set]
"data.object.supplier_invoice_number" = "INV/2026/0042"
"data.object.value_details.total_invoice_value" = 1180.5

# Bharat Connect stamps no time, and its edit states no amount: it leaves the amount alone,
# arriving last as it does here or first.
[[step]]
name = "edit"
provider = "zwitch"
event = "bharat_connect.invoice.edit"
[step.set]
"data.object.id" = "${invoice.data.object.id}"
"data.object.supplier_invoice_number" = "INV/2026/0042"
"#;
    run_scenario(&app, "zwitch-bc", scenario).await;
    let invoice = only(&app, "/v1/invoices?reference=INV/2026/0042").await;
    assert_eq!(invoice["amount"], json!(118_050));
    assert_eq!(invoice["paid"], json!(118_050));
    assert_eq!(invoice["due"], json!(0));
    assert!(invoice["settled_event"].is_string(), "{invoice}");
    let payment = only(&app, "/v1/payments?provider=zwitch").await;
    assert_eq!(payment["linked_to"], invoice["id"]);
    assert_eq!(payment["link_rule"], json!("merchant_reference"));
    assert_eq!(events_of_type(&app, "invoice.settled").await.len(), 1);
    // The invoice can be looked up by its number as well as by billhook's id, a GST number's
    // slashes and all.
    let (ok, shown) = app.cli(&["invoices", "show", "INV/2026/0042"]).await;
    assert!(ok, "{shown}");
    let by_number: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(by_number["id"], invoice["id"]);
    assert_eq!(by_number["payments"][0]["id"], payment["id"]);
    let paid_by = detail(&app, "payments", payment["id"].as_str().unwrap()).await;
    assert_eq!(paid_by["paid_by"]["id"], invoice["id"]);

    // Closed is not paid: an invoice closed with nothing paid is not announced as settled.
    let closed = r#"
name = "a Bharat Connect invoice closed unpaid"

[[step]]
name = "unpaid"
provider = "zwitch"
event = "bharat_connect.invoice.create"
[step.set]
"data.object.supplier_invoice_number" = "INV/2026/0043"
"data.object.value_details.total_invoice_value" = 500

[[step]]
name = "closed"
provider = "zwitch"
event = "bharat_connect.invoice.change_status"
[step.set]
"data.object.id" = "${unpaid.data.object.id}"
"data.object.supplier_invoice_number" = "INV/2026/0043"
"data.object.value_details.total_invoice_value" = 500
"data.object.status" = "CLOSED"
"#;
    run_scenario(&app, "zwitch-bc-closed", closed).await;
    let unpaid = only(&app, "/v1/invoices?reference=INV/2026/0043").await;
    assert_eq!(unpaid["status"], json!("closed"), "{unpaid}");
    assert_eq!(unpaid["paid"], json!(0));
    assert_eq!(unpaid["due"], json!(50_000));
    assert!(unpaid["settled_event"].is_null(), "{unpaid}");
    assert_eq!(events_of_type(&app, "invoice.settled").await.len(), 1);

    // Paid by its status with no amount stated: paid, not outstanding.
    let unstated = r#"
name = "a Bharat Connect invoice without an amount, paid"

[[step]]
name = "issued"
provider = "zwitch"
event = "bharat_connect.invoice.create"
[step.set]
"data.object.supplier_invoice_number" = "INV/2026/0044"
"data.object.value_details" = {}

[[step]]
name = "paid"
provider = "zwitch"
event = "bharat_connect.invoice.change_status"
[step.set]
"data.object.id" = "${issued.data.object.id}"
"data.object.supplier_invoice_number" = "INV/2026/0044"
"data.object.value_details" = {}
"data.object.status" = "PAID"
"#;
    run_scenario(&app, "zwitch-bc-unstated", unstated).await;
    let paid = only(&app, "/v1/invoices?reference=INV/2026/0044").await;
    assert_eq!(paid["status"], json!("paid"), "{paid}");
    assert!(paid["amount"].is_null() && paid["due"].is_null(), "{paid}");
    let (_, outstanding) = app
        .admin_get("/v1/invoices?status=outstanding&reference=INV/2026/0044")
        .await;
    assert_eq!(outstanding["data"], json!([]), "{outstanding}");
    let listed = only(&app, "/v1/invoices?status=paid&reference=INV/2026/0044").await;
    assert_eq!(listed["id"], paid["id"]);
    app.stop().await;
}

async fn a_renumbered_invoice_is_paid_under_every_number_it_had(backend: Backend) {
    let app = spawn_app(backend).await;
    // Sent to the buyer as INV/R/1, accepted as INV/R/2; an edit (no status, so its snapshot
    // never wins) calls it INV/R/3. A payment names each number, one before the invoice.
    let scenario = r#"
name = "a renumbered Bharat Connect invoice"

[[step]]
name = "early"
provider = "zwitch"
event = "payments.updated"
variant = "success"
[step.set]
"data.object.merchant_reference_id" = "INV/R/2"
"data.object.amount" = 300

[[step]]
name = "sent"
provider = "zwitch"
event = "bharat_connect.invoice.create"
[step.set]
"data.object.supplier_invoice_number" = "INV/R/1"
"data.object.value_details.total_invoice_value" = 900

[[step]]
name = "by-first-number"
provider = "zwitch"
event = "payments.updated"
variant = "success"
[step.set]
"data.object.merchant_reference_id" = "INV/R/1"
"data.object.amount" = 300

[[step]]
name = "accepted"
provider = "zwitch"
event = "bharat_connect.invoice.change_status"
[step.set]
"data.object.id" = "${sent.data.object.id}"
"data.object.supplier_invoice_number" = "INV/R/2"
"data.object.value_details.total_invoice_value" = 900
"data.object.status" = "ACCEPTED"

[[step]]
name = "edit"
provider = "zwitch"
event = "bharat_connect.invoice.edit"
[step.set]
"data.object.id" = "${sent.data.object.id}"
"data.object.supplier_invoice_number" = "INV/R/3"

[[step]]
name = "by-edited-number"
provider = "zwitch"
event = "payments.updated"
variant = "success"
[step.set]
"data.object.merchant_reference_id" = "INV/R/3"
"data.object.amount" = 300
"#;
    run_scenario(&app, "zwitch-bc-renumbered", scenario).await;
    let invoice = only(&app, "/v1/invoices?reference=INV/R/2").await;
    assert_eq!(invoice["number"], json!("INV/R/2"), "{invoice}");
    assert_eq!(invoice["former_numbers"], json!(["INV/R/1", "INV/R/3"]));
    let csv = app
        .admin_get_response("/v1/invoices?format=csv&reference=INV/R/2")
        .await
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].contains(",number,former_numbers,"), "{csv}");
    assert!(lines[1].contains(",INV/R/2,INV/R/1; INV/R/3,"), "{csv}");
    assert_eq!(invoice["paid"], json!(90_000), "{invoice}");
    assert_eq!(invoice["due"], json!(0));
    assert_eq!(events_of_type(&app, "invoice.settled").await.len(), 1);
    let payments = listing(&app, "/v1/payments?provider=zwitch").await;
    assert_eq!(payments.len(), 3);
    assert!(
        payments.iter().all(|p| p["linked_to"] == invoice["id"]),
        "{payments:?}"
    );
    for number in ["INV/R/1", "INV/R/3"] {
        let (ok, shown) = app.cli(&["invoices", "show", number]).await;
        assert!(ok, "{shown}");
        let by_number: Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(by_number["id"], invoice["id"], "{number}");
    }
    // Another invoice numbered INV/R/1 now: the number shows it, and the payment that named
    // the number before stays where it went.
    let reused = r#"
name = "a number used again"

[[step]]
name = "again"
provider = "zwitch"
event = "bharat_connect.invoice.create"
[step.set]
"data.object.supplier_invoice_number" = "INV/R/1"
"data.object.value_details.total_invoice_value" = 50
"#;
    run_scenario(&app, "zwitch-bc-reused", reused).await;
    let (ok, shown) = app.cli(&["invoices", "show", "INV/R/1"]).await;
    assert!(ok, "{shown}");
    let now_numbered: Value = serde_json::from_str(&shown).unwrap();
    assert_ne!(now_numbered["id"], invoice["id"]);
    assert_eq!(now_numbered["number"], json!("INV/R/1"));
    assert_eq!(now_numbered["paid"], json!(0));
    let (session, _) = crate::console::log_in(&app, ADMIN_TOKEN).await;
    let page = format!("/invoices/{}", invoice["id"].as_str().unwrap());
    let (status, html) = crate::console::get(&app, &session, &page).await;
    assert_eq!(status, 200);
    assert!(html.contains("INV/R/1, INV/R/3"), "{html}");
    app.stop().await;
}

async fn a_setu_payment_pays_the_bill_it_was_fetched_for(backend: Backend) {
    let app = spawn_app(backend).await;
    run_scenario(&app, "setu", &shipped("setu-bill-lifecycle.toml")).await;
    let bill = only(&app, "/v1/bills").await;
    let payment = only(&app, "/v1/payments?provider=setu_bbps").await;
    assert_eq!(payment["status"], json!("succeeded"));
    assert_eq!(payment["linked_to"], bill["id"]);
    assert_eq!(payment["link_rule"], json!("bill_ref_id"));
    assert_eq!(bill["paid"], bill["amount"]);
    assert_eq!(bill["due"], json!(0));
    assert_eq!(listing(&app, "/v1/bills?status=paid").await.len(), 1);
    assert_eq!(listing(&app, "/v1/bills?status=outstanding").await.len(), 0);
    let dispute = only(&app, "/v1/disputes").await;
    assert_eq!(dispute["status"], json!("initialized"));

    // Billers, with their plans; the id beyond 2^53 survives digit for digit.
    let response = app
        .post_signed("setu", &fixture("setu_bbps/BILLER_UPDATES.json"), &[])
        .await;
    assert_eq!(response.status().as_u16(), 202);
    let billers = listing(&app, "/v1/billers").await;
    assert!(!billers.is_empty());
    let biller = detail(&app, "billers", "699158487875191900").await;
    assert_eq!(biller["provider_id"], json!("699158487875191900"));
    assert_eq!(biller["status"], json!("active"));
    assert!(biller["data"]["plans"].is_array(), "{biller}");
    app.stop().await;
}

/// Setu often sends biller updates with no `timeStamp`, and a biller's statuses have no order:
/// the update received last is the biller's status, whichever way round the two came.
async fn unstamped_biller_updates_leave_the_latest_status(backend: Backend) {
    let app = spawn_app(backend).await;
    let update = |id: &str, status: &str| {
        let mut body: Value =
            serde_json::from_slice(&fixture("setu_bbps/BILLER_UPDATES.json")).unwrap();
        let envelope = body.as_object_mut().unwrap();
        envelope.remove("timeStamp");
        envelope.remove("traceId");
        body["data"][0]["ID"] = serde_json::from_str(id).unwrap();
        body["data"][0]["Status"] = json!(status);
        body.to_string()
    };
    for (id, first, last) in [
        ("7001", "ACTIVE", "DEACTIVATED"),
        ("7002", "DEACTIVATED", "ACTIVE"),
    ] {
        for status in [first, last] {
            let response = app
                .post_signed("setu", update(id, status).as_bytes(), &[])
                .await;
            assert_eq!(response.status().as_u16(), 202);
        }
        let biller = detail(&app, "billers", id).await;
        assert_eq!(
            biller["provider_status"],
            json!(last),
            "{first} then {last}: {biller}"
        );
    }
    app.stop().await;
}

async fn a_payment_no_invoice_claims_is_announced_once(backend: Backend) {
    let app = spawn_app_with(
        backend,
        "[ledger]\nunmatched_after = \"300ms\"\nsweep_every = \"100ms\"\n",
    )
    .await;
    let receiver = Receiver::ok().await;
    app.create_endpoint(json!({ "url": receiver.url, "event_types": ["payment.unmatched"] }))
        .await;
    let scenario = r#"
name = "a stray payment and a matched one"

# The stray payment's success is stamped before its creation: the created message's content
# stays the latest, while the status is the success's.
[[step]]
name = "stray created"
provider = "zwitch"
event = "payments.created"
[step.set]
"data.object.id" = "pay_stray"
"data.object.created_at" = 1790000000
"data.object.merchant_reference_id" = "NO-SUCH-INVOICE"
"data.object.remark" = "nothing to see"

[[step]]
name = "stray"
provider = "zwitch"
event = "payments.updated"
variant = "success"
[step.set]
"data.object.id" = "pay_stray"
"data.object.created_at" = 1789990000
"data.object.transacted_at" = 1789999000
"data.object.merchant_reference_id" = "NO-SUCH-INVOICE"
"data.object.remark" = "nothing to see"

[[step]]
name = "invoice"
provider = "zwitch"
event = "bharat_connect.invoice.create"
[step.set]
"data.object.supplier_invoice_number" = "INV-7"

[[step]]
name = "matched"
provider = "zwitch"
event = "payments.updated"
variant = "success"
[step.set]
"data.object.merchant_reference_id" = "INV-7"
"#;
    run_scenario(&app, "unmatched", scenario).await;
    app.eventually(
        Duration::from_secs(10),
        "payment.unmatched announced",
        || async { receiver.count() >= 1 },
    )
    .await;
    // Several more sweeps pass: still one announcement, for the stray payment only.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let announced = events_of_type(&app, "payment.unmatched").await;
    assert_eq!(announced.len(), 1, "{announced:?}");
    assert_eq!(receiver.count(), 1);
    let unmatched = only(&app, "/v1/payments?unmatched=true").await;
    assert_eq!(
        unmatched["data"]["references"]["merchant_reference"],
        json!("NO-SUCH-INVOICE")
    );
    assert_eq!(unmatched["unmatched_event"], announced[0]["id"]);
    assert_eq!(announced[0]["source"]["event"], json!("billhook.ledger"));
    assert_eq!(
        announced[0]["data"]["status"],
        json!("succeeded"),
        "the status the ledger holds, not the latest content's: {}",
        announced[0]
    );
    assert_eq!(listing(&app, "/v1/payments").await.len(), 2);
    app.stop().await;
}

async fn listings_filter_find_by_reference_and_export_csv(backend: Backend) {
    let app = spawn_app(backend).await;
    let scenario = r#"
name = "one invoice paid, one outstanding, one expired"

[[step]]
name = "paid"
provider = "razorpay"
event = "invoice.paid"
[step.set]
"payload.invoice.entity.invoice_number" = "PAID-1"
"payload.invoice.entity.customer_details.name" = "=SUM(A1:A9)"

[[step]]
name = "issued"
provider = "zwitch"
event = "bharat_connect.invoice.create"
[step.set]
"data.object.supplier_invoice_number" = "OPEN-1"
"data.object.value_details.total_invoice_value" = 2500.75

[[step]]
name = "expired"
provider = "razorpay"
event = "invoice.expired"
[step.set]
"payload.invoice.entity.invoice_number" = "GONE-1"
"#;
    run_scenario(&app, "listings", scenario).await;
    let numbers = |items: Vec<Value>| {
        let mut numbers: Vec<String> = items
            .iter()
            .map(|i| i["number"].as_str().unwrap().to_owned())
            .collect();
        numbers.sort();
        numbers
    };
    assert_eq!(
        numbers(listing(&app, "/v1/invoices").await),
        ["GONE-1", "OPEN-1", "PAID-1"]
    );
    assert_eq!(
        numbers(listing(&app, "/v1/invoices?status=outstanding").await),
        ["OPEN-1"]
    );
    assert_eq!(
        numbers(listing(&app, "/v1/invoices?status=paid").await),
        ["PAID-1"]
    );
    assert_eq!(
        numbers(listing(&app, "/v1/invoices?status=expired").await),
        ["GONE-1"]
    );
    assert_eq!(
        numbers(listing(&app, "/v1/invoices?provider=zwitch").await),
        ["OPEN-1"]
    );
    assert_eq!(listing(&app, "/v1/invoices?status=overdue").await.len(), 0);

    // Pagination walks every invoice once.
    let (_, first) = app.admin_get("/v1/invoices?limit=2").await;
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = app
        .admin_get(&format!("/v1/invoices?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(second["data"].as_array().unwrap().len(), 1);
    assert_eq!(second["next_cursor"], Value::Null);
    // A cursor of another listing, or none at all, would give a wrong page without a word.
    let payments_cursor = cursor.replacen("iv_", "py_", 1);
    let invoices_cursor = format!("/v1/invoices?cursor={payments_cursor}");
    let payments_with_invoice_cursor = format!("/v1/payments?cursor={cursor}");
    // Stored ids are upper case: a lower-cased cursor would sort past every one of them.
    let lowered_cursor = format!("/v1/invoices?cursor={}", cursor.to_lowercase());

    // Bad requests get stable codes.
    for (path, code) in [
        (invoices_cursor.as_str(), "invalid_cursor"),
        (payments_with_invoice_cursor.as_str(), "invalid_cursor"),
        ("/v1/invoices?cursor=junk", "invalid_cursor"),
        (lowered_cursor.as_str(), "invalid_cursor"),
        ("/v1/invoices?unmatched=true", "invalid_request"),
        (
            "/v1/payments?unmatched=true&status=failed",
            "invalid_request",
        ),
        ("/v1/invoices?format=xml", "invalid_request"),
        ("/v1/payments?status=outstanding", "invalid_request"),
        ("/v1/payments?status=paid", "invalid_request"),
        ("/v1/invoices?provider=stripe", "invalid_request"),
        ("/v1/invoices?format=csv&limit=5", "invalid_request"),
        ("/v1/invoices?limit=0", "invalid_request"),
        ("/v1/invoices/iv_nonexistent", "not_found"),
        ("/v1/payments/nothing-like-it", "not_found"),
    ] {
        let (status, body) = app.admin_get(path).await;
        assert!(status == 400 || status == 404, "{path}: {status}");
        assert_eq!(body["code"], json!(code), "{path}: {body}");
    }

    // The CSV export: every invoice, money in major units, formulas defused.
    let response = app.admin_get_response("/v1/invoices?format=csv").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("billhook-invoices-")
    );
    let csv = response.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[0].starts_with("id,provider,source,provider_id,status"));
    let open = lines.iter().find(|l| l.contains("OPEN-1")).unwrap();
    assert!(open.contains(",2500.75,"), "{open}");
    let paid = lines.iter().find(|l| l.contains("PAID-1")).unwrap();
    assert!(paid.contains(",'=SUM(A1:A9),"), "{paid}");
    app.stop().await;
}

async fn the_cli_lists_invoices_and_payments(backend: Backend) {
    let app = spawn_app(backend).await;
    run_scenario(
        &app,
        "two-partials",
        &shipped("razorpay-invoice-two-partial-payments.toml"),
    )
    .await;
    let (ok, table) = app.cli(&["invoices"]).await;
    assert!(ok, "{table}");
    assert!(table.contains("paid"), "{table}");
    assert!(table.lines().count() >= 2, "{table}");
    let (ok, json_out) = app.cli(&["invoices", "--status", "paid", "--json"]).await;
    assert!(ok, "{json_out}");
    let page: Value = serde_json::from_str(&json_out).unwrap();
    let invoices = page["data"].as_array().unwrap();
    assert_eq!(invoices.len(), 1);
    let id = invoices[0]["id"].as_str().unwrap();
    let (ok, shown) = app.cli(&["invoices", "show", id]).await;
    assert!(ok, "{shown}");
    assert!(shown.contains(id), "{shown}");
    let (ok, csv) = app.cli(&["payments", "--csv"]).await;
    assert!(ok, "{csv}");
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let (ok, unmatched) = app.cli(&["payments", "--unmatched", "--json"]).await;
    assert!(ok, "{unmatched}");
    let page: Value = serde_json::from_str(&unmatched).unwrap();
    assert_eq!(page["data"], json!([]));
    app.stop().await;
}

/// An export longer than a page is sent page after page: every payment once, newest first, and
/// not marked as cut short.
async fn a_csv_export_of_many_pages_holds_every_row_once(backend: Backend) {
    const PAYMENTS: usize = 1_100;
    let app = spawn_app(backend).await;
    let template = String::from_utf8(fixture("zwitch_upi/payments.updated.json")).unwrap();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let writer = || async {
        loop {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n >= PAYMENTS {
                return;
            }
            let body = template
                .replace("evl_tbs3NybYGbbjP5MMzptoFyU3W", &format!("evl_csv_{n}"))
                .replace("tx_LDOr1fte7Npd5xBTS6BMGuRd6", &format!("tx_csv_{n:04}"));
            let response = app.post_signed("zwitch", body.as_bytes(), &[]).await;
            assert_eq!(response.status().as_u16(), 200);
        }
    };
    tokio::join!(
        writer(),
        writer(),
        writer(),
        writer(),
        writer(),
        writer(),
        writer(),
        writer()
    );

    let response = app.admin_get_response("/v1/payments?format=csv").await;
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers().get("x-billhook-truncated").is_none());
    let csv = response.text().await.unwrap();
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("id,provider,source,provider_id")
    );
    let provider_ids: Vec<&str> = lines.map(|line| line.split(',').nth(3).unwrap()).collect();
    assert_eq!(provider_ids.len(), PAYMENTS, "{csv:.300}");
    let distinct: std::collections::BTreeSet<&str> = provider_ids.iter().copied().collect();
    assert_eq!(distinct.len(), PAYMENTS);
    app.stop().await;
}

/// An export past `ledger.max_export_rows` is cut short and says so; the CLI writes what came
/// and fails, so a script never takes it for the whole ledger.
async fn a_csv_export_cut_short_says_so_and_the_cli_fails(backend: Backend) {
    let app = spawn_app_with(backend, "[ledger]\nmax_export_rows = 2\n").await;
    let template = String::from_utf8(fixture("zwitch_upi/payments.updated.json")).unwrap();
    for n in 0..3 {
        let body = template
            .replace("evl_tbs3NybYGbbjP5MMzptoFyU3W", &format!("evl_cut_{n}"))
            .replace("tx_LDOr1fte7Npd5xBTS6BMGuRd6", &format!("tx_cut_{n}"));
        let response = app.post_signed("zwitch", body.as_bytes(), &[]).await;
        assert_eq!(response.status().as_u16(), 200);
    }
    let response = app.admin_get_response("/v1/payments?format=csv").await;
    assert_eq!(
        response.headers().get("x-billhook-truncated").unwrap(),
        "true"
    );
    assert_eq!(response.text().await.unwrap().lines().count(), 1 + 2);
    let (ok, printed) = app.cli(&["payments", "--csv"]).await;
    assert!(!ok, "{printed}");
    assert_eq!(printed.matches("tx_cut_").count(), 2, "{printed}");
    assert!(printed.contains("cut short"), "{printed}");
    // Narrowed below the limit, it is whole.
    let (ok, printed) = app
        .cli(&["payments", "--csv", "--reference", "tx_cut_1"])
        .await;
    assert!(ok, "{printed}");
    assert_eq!(printed.lines().count(), 1 + 1, "{printed}");
    app.stop().await;
}
