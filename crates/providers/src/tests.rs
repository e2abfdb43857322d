//! Fixture-driven tests across the provider modules: every published sample normalizes to the
//! expected canonical events, every documented variant is accepted, signatures verify the way
//! each provider signs.

use billhook_core::entity::{EntityData, SubjectKind};
use billhook_core::event::EventType;
use billhook_core::time::Timestamp;
use serde_json::{Value, json};

use crate::auth::{Secret, SourceAuth, SourceSpec, VerifyError};
use crate::{InboundRequest, NormalizeError, Normalized, by_name};

fn fixture(path: &str) -> Vec<u8> {
    let full = format!("{}/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in pairs {
        map.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
        );
    }
    map
}

fn normalize_with(
    provider: &str,
    body: &[u8],
    pairs: &[(&str, &str)],
) -> Result<Normalized, NormalizeError> {
    let headers = headers(pairs);
    let request = InboundRequest {
        headers: &headers,
        body,
        remote_ip: None,
        path_token: None,
        received_at: Timestamp::from_unix_millis(1_700_000_000_000),
    };
    by_name(provider).unwrap().normalize(&request)
}

fn normalize(provider: &str, body: &[u8]) -> Normalized {
    normalize_with(provider, body, &[("x-razorpay-event-id", "EvtTest0000001")])
        .unwrap_or_else(|e| panic!("{provider}: {e}"))
}

fn types(normalized: &Normalized) -> Vec<EventType> {
    normalized.events.iter().map(|e| e.event_type).collect()
}

fn data_json(normalized: &Normalized, index: usize) -> Value {
    serde_json::to_value(&normalized.events[index].data).unwrap()
}

fn codes(normalized: &Normalized) -> Vec<String> {
    normalized.warnings.iter().map(|w| w.code.clone()).collect()
}

#[test]
fn a_razorpay_body_is_a_dedup_key_beside_its_unsigned_event_id() {
    let body = fixture("razorpay/invoice.paid.upi.json");
    let first = normalize("razorpay", &body);
    let replayed = normalize_with(
        "razorpay",
        &body,
        &[("x-razorpay-event-id", "EvtReplayed01")],
    )
    .unwrap();
    assert_ne!(first.dedup_key, replayed.dedup_key);
    assert_eq!(first.body_dedup_key, Some(crate::body_hash_key(&body)));
    assert_eq!(first.body_dedup_key, replayed.body_dedup_key);
    // Without the header the hash is the key, and there is no second one.
    let unnamed = normalize_with("razorpay", &body, &[]).unwrap();
    assert_eq!(unnamed.dedup_key, crate::body_hash_key(&body));
    assert_eq!(unnamed.body_dedup_key, None);
    // Other providers' keys come from the signed body already.
    let zwitch = normalize("zwitch", &fixture("zwitch_upi/payments.created.json"));
    assert_eq!(zwitch.body_dedup_key, None);
}

#[test]
fn razorpay_invoice_paid_yields_the_invoice_and_its_payment_in_paise() {
    for method in ["card", "netbanking", "upi", "wallet"] {
        let normalized = normalize(
            "razorpay",
            &fixture(&format!("razorpay/invoice.paid.{method}.json")),
        );
        assert_eq!(
            types(&normalized),
            [EventType::InvoicePaid, EventType::PaymentSucceeded]
        );
        assert_eq!(normalized.provider_event, "invoice.paid");
        assert_eq!(normalized.dedup_key, "event:EvtTest0000001");
        let invoice = data_json(&normalized, 0);
        assert_eq!(invoice["amount"], json!(479030));
        assert_eq!(invoice["amount_paid"], json!(479030));
        assert_eq!(invoice["amount_due"], json!(0));
        assert_eq!(invoice["tax_amount"], json!(54030));
        assert_eq!(invoice["currency"], json!("INR"));
        assert_eq!(invoice["status"], json!("paid"));
        assert_eq!(invoice["buyer"]["gstin"], json!("24AABCJ1087G1ZT"));
        let payment = data_json(&normalized, 1);
        assert_eq!(payment["amount"], json!(479030));
        assert_eq!(payment["status"], json!("succeeded"));
        assert_eq!(payment["provider_status"], json!("captured"));
        assert_eq!(payment["rail"], json!(method));
        assert_eq!(payment["fee"], json!(11305));
        assert_eq!(
            payment["references"]["invoice_id"],
            invoice["provider_invoice_id"]
        );
        assert_eq!(payment["references"]["order_id"], invoice["order_id"]);
        assert!(codes(&normalized).is_empty(), "{:?}", normalized.warnings);
        let occurred = normalized.events[0].occurred_at.unwrap();
        assert_eq!(occurred.unix_seconds(), invoice_created_at(method));
    }
}

fn invoice_created_at(method: &str) -> i64 {
    let body: Value =
        serde_json::from_slice(&fixture(&format!("razorpay/invoice.paid.{method}.json"))).unwrap();
    body["created_at"].as_i64().unwrap()
}

#[test]
fn razorpay_payment_events_and_unknown_events() {
    let payment_only = json!({
        "entity": "event", "event": "payment.captured", "contains": ["payment"],
        "payload": {"payment": {"entity": {"id": "pay_X", "amount": 9007199254740993u64, "currency": "INR",
            "status": "captured", "method": "upi", "vpa": "not a vpa", "created_at": 1567687127}}},
        "created_at": 1567687127
    });
    let normalized = normalize("razorpay", payment_only.to_string().as_bytes());
    assert_eq!(types(&normalized), [EventType::PaymentSucceeded]);
    assert_eq!(
        data_json(&normalized, 0)["amount"],
        json!(9_007_199_254_740_993_i64)
    );
    assert_eq!(codes(&normalized), ["invalid_vpa"]);

    let authorized = payment_only
        .to_string()
        .replace("\"captured\"", "\"authorized\"");
    assert_eq!(
        types(&normalize("razorpay", authorized.as_bytes())),
        [EventType::PaymentAuthorized]
    );

    let subscription = json!({"event": "subscription.activated", "payload": {}});
    let error = normalize_with("razorpay", subscription.to_string().as_bytes(), &[]).unwrap_err();
    assert_eq!(error.code(), "unsupported_event");
    let refund = json!({"event": "refund.created", "payload": {}});
    let error = normalize_with("razorpay", refund.to_string().as_bytes(), &[]).unwrap_err();
    assert_eq!(
        error.code(),
        "unexpected_shape",
        "a refund without its payment"
    );
}

/// A refund's messages carry the payment as it stands after it: a partial refund keeps it
/// `captured` (`succeeded`) with `amount_refunded`, a full one makes it `refunded`. Only the
/// refund's completion is announced as `payment.refunded`; its creation updates the payment.
#[test]
fn razorpay_refunds_update_their_payment() {
    for (variant, status, announced) in [
        ("partial", "succeeded", EventType::PaymentRefunded),
        ("full", "refunded", EventType::PaymentRefunded),
    ] {
        let mut options =
            crate::emulate::GenerateOptions::new(Timestamp::now(), Some(5)).with_variant(variant);
        let generated = by_name("razorpay")
            .unwrap()
            .generate("refund.processed", &mut options)
            .unwrap();
        let payment = &generated.json["payload"]["payment"]["entity"];
        let refund = &generated.json["payload"]["refund"]["entity"];
        assert_eq!(refund["payment_id"], payment["id"]);
        assert_eq!(refund["amount"], payment["amount_refunded"]);
        let normalized = normalize("razorpay", &generated.body());
        assert_eq!(types(&normalized), [announced]);
        let EntityData::Payment(snapshot) = &normalized.events[0].data else {
            panic!("not a payment: {normalized:?}");
        };
        assert_eq!(snapshot.status, status);
        assert_eq!(
            snapshot.amount_refunded.map(|a| a.minor()),
            refund["amount"].as_i64()
        );

        let created = String::from_utf8(generated.body()).unwrap().replacen(
            "\"refund.processed\"",
            "\"refund.created\"",
            1,
        );
        assert_eq!(
            types(&normalize("razorpay", created.as_bytes())),
            [EventType::PaymentUpdated]
        );
    }
}

/// Razorpay's payloads are built in PHP, which writes an empty object as `[]`: an empty
/// `acquirer_data` or `card` is none, not a payment of the wrong shape.
#[test]
fn razorpay_objects_written_as_an_empty_list_are_none() {
    let payment = |acquirer_data: Value| {
        json!({
            "entity": "event", "event": "payment.captured", "contains": ["payment"],
            "payload": {"payment": {"entity": {"id": "pay_X", "amount": 100, "currency": "INR",
                "status": "captured", "method": "netbanking", "acquirer_data": acquirer_data,
                "created_at": 1567687127}}},
            "created_at": 1567687127
        })
        .to_string()
    };
    let empty = normalize("razorpay", payment(json!([])).as_bytes());
    assert_eq!(types(&empty), [EventType::PaymentSucceeded]);
    assert_eq!(
        data_json(&empty, 0)["references"]["bank_reference"],
        Value::Null
    );
    let stated = normalize(
        "razorpay",
        payment(json!({"bank_transaction_id": "5733649"})).as_bytes(),
    );
    assert_eq!(
        data_json(&stated, 0)["references"]["bank_reference"],
        "5733649"
    );
    let mut no_card: Value = serde_json::from_str(&payment(json!(null))).unwrap();
    no_card["payload"]["payment"]["entity"]["card"] = json!([]);
    let no_card = normalize("razorpay", no_card.to_string().as_bytes());
    assert_eq!(types(&no_card), [EventType::PaymentSucceeded]);
    let error =
        normalize_with("razorpay", payment(json!(["5733649"])).as_bytes(), &[]).unwrap_err();
    assert_eq!(error.code(), "unexpected_shape");
}

/// An invoice with a discount: tax is on the taxable amount, the gross less the discount, and
/// the total adds up without a warning; one that does not is warned about.
#[test]
fn a_razorpay_invoice_with_a_discount_adds_up() {
    let mut body: Value =
        serde_json::from_slice(&fixture("razorpay/invoice.paid.upi.json")).unwrap();
    let invoice = &mut body["payload"]["invoice"]["entity"];
    invoice["gross_amount"] = json!(1000);
    invoice["taxable_amount"] = json!(900);
    invoice["tax_amount"] = json!(162);
    invoice["amount"] = json!(1062);
    invoice["amount_paid"] = json!(1062);
    invoice["amount_due"] = json!(0);
    let normalized = normalize("razorpay", body.to_string().as_bytes());
    assert!(
        !codes(&normalized).contains(&"totals_mismatch".to_owned()),
        "{:?}",
        normalized.warnings
    );
    body["payload"]["invoice"]["entity"]["tax_amount"] = json!(180);
    let normalized = normalize("razorpay", body.to_string().as_bytes());
    assert!(codes(&normalized).contains(&"totals_mismatch".to_owned()));

    // Without tax Razorpay states a taxable amount of 0: the gross is the total.
    let invoice = &mut body["payload"]["invoice"]["entity"];
    invoice["gross_amount"] = json!(1062);
    invoice["taxable_amount"] = json!(0);
    invoice["tax_amount"] = json!(0);
    let normalized = normalize("razorpay", body.to_string().as_bytes());
    assert!(
        !codes(&normalized).contains(&"totals_mismatch".to_owned()),
        "{:?}",
        normalized.warnings
    );
}

#[test]
fn zwitch_upi_amounts_are_decimal_rupees() {
    let created = normalize("zwitch", &fixture("zwitch_upi/payments.created.json"));
    assert_eq!(types(&created), [EventType::PaymentCreated]);
    let payment = data_json(&created, 0);
    assert_eq!(payment["amount"], json!(100));
    assert_eq!(payment["currency"], json!("INR"));
    assert_eq!(payment["status"], json!("pending"));
    assert_eq!(
        payment["references"]["merchant_reference"],
        json!("1000247")
    );
    assert_eq!(
        payment["references"]["bank_reference"],
        json!("220601503307")
    );
    assert_eq!(
        created.dedup_key,
        "payments.created:evl_llAStNiyWShkO2EaGM1k8iL9C"
    );
    assert_eq!(
        created.provider_event_id.as_deref(),
        Some("evl_llAStNiyWShkO2EaGM1k8iL9C")
    );

    let updated = normalize("zwitch", &fixture("zwitch_upi/payments.updated.json"));
    assert_eq!(types(&updated), [EventType::PaymentSucceeded]);
    let payment = data_json(&updated, 0);
    assert_eq!(payment["completed_at"], json!("2022-07-25T09:31:36Z"));
    assert_eq!(payment["settled"], json!(true));
    assert_eq!(payment["payer"]["ifsc"], json!("HDFC0000123"));
    assert_eq!(
        updated.events[0].occurred_at,
        Some(Timestamp::from_unix_millis(1_658_741_496_000))
    );

    // A failure names no time of its own: no event time, but no older than the request.
    let failed = with_null(
        "zwitch_upi/payments.updated.json",
        &["data", "object", "transacted_at"],
    );
    let failed = String::from_utf8(failed)
        .unwrap()
        .replace("\"success\"", "\"failed\"");
    let failed = normalize("zwitch", failed.as_bytes());
    assert_eq!(types(&failed), [EventType::PaymentFailed]);
    assert_eq!(failed.events[0].occurred_at, None);
    assert_eq!(
        failed.events[0].not_before,
        Some(Timestamp::from_unix_millis(1_658_741_486_000))
    );

    // `3.69` rupees is exactly 369 paise.
    let mut body: Value =
        serde_json::from_slice(&fixture("zwitch_upi/payments.updated.json")).unwrap();
    body["data"]["object"]["amount"] = serde_json::from_str("3.69").unwrap();
    let normalized = normalize("zwitch", body.to_string().as_bytes());
    assert_eq!(data_json(&normalized, 0)["amount"], json!(369));
    body["data"]["object"]["amount"] = serde_json::from_str("3.691").unwrap();
    let error = normalize_with("zwitch", body.to_string().as_bytes(), &[]).unwrap_err();
    assert_eq!(error.code(), "invalid_amount");
    assert!(error.to_string().contains("data.object.amount"), "{error}");
}

#[test]
fn zwitch_documented_variants() {
    // `payment.created` as the seed's table spells it.
    let body = String::from_utf8(fixture("zwitch_upi/payments.created.json")).unwrap();
    let singular = body.replace("\"payments.created\"", "\"payment.created\"");
    let singular = normalize("zwitch", singular.as_bytes());
    assert_eq!(types(&singular), [EventType::PaymentCreated]);
    // One event under either name: a retry under the other is a duplicate.
    assert_eq!(
        singular.dedup_key,
        normalize("zwitch", body.as_bytes()).dedup_key
    );

    // The object directly under `data`.
    let mut value: Value = serde_json::from_str(&body).unwrap();
    let object = value["data"]["object"].take();
    value["data"] = object;
    let flat = normalize("zwitch", value.to_string().as_bytes());
    assert_eq!(data_json(&flat, 0)["amount"], json!(100));

    // An unknown status is kept verbatim, not refused.
    let odd = body.replace("\"pending\"", "\"on_hold\"");
    let normalized = normalize("zwitch", odd.as_bytes());
    assert_eq!(types(&normalized), [EventType::PaymentUpdated]);
    assert_eq!(
        data_json(&normalized, 0)["provider_status"],
        json!("on_hold")
    );
    assert_eq!(codes(&normalized), ["unknown_status"]);

    // A failed collect, and collects that ended without money in other words.
    let updated = String::from_utf8(fixture("zwitch_upi/payments.updated.json")).unwrap();
    for word in ["failed", "expired", "cancelled", "declined"] {
        let ended = updated.replace("\"success\"", &format!("\"{word}\""));
        let normalized = normalize("zwitch", ended.as_bytes());
        assert_eq!(types(&normalized), [EventType::PaymentFailed], "{word}");
        let payment = data_json(&normalized, 0);
        assert_eq!(payment["status"], json!("failed"), "{word}");
        assert_eq!(payment["provider_status"], json!(word));
        assert!(normalized.warnings.is_empty(), "{word}");
    }
}

#[test]
fn bharat_connect_lifecycle_and_spellings() {
    let expectations = [
        (
            "invoice.create",
            EventType::InvoiceIssued,
            Some("sent_to_buyer"),
        ),
        (
            "invoice.confirm",
            EventType::InvoiceAccepted,
            Some("accepted"),
        ),
        (
            "invoice.change_status",
            EventType::InvoiceStatusChanged,
            Some("closed"),
        ),
        ("invoice.edit", EventType::InvoiceUpdated, None),
    ];
    for (file, expected, status) in expectations {
        let normalized = normalize("zwitch", &fixture(&format!("bharat_connect/{file}.json")));
        assert_eq!(types(&normalized), [expected], "{file}");
        let invoice = data_json(&normalized, 0);
        assert_eq!(invoice["status"], json!(status), "{file}");
        assert_eq!(invoice["line_items"][0]["unit_price"], json!(200), "{file}");
        assert_eq!(invoice["line_items"][0]["hsn_code"], json!("19059040"));
        assert_eq!(invoice["number"], json!("INV0012312"));
        assert!(normalized.sandbox);
        let warnings = codes(&normalized);
        // The samples' GSTINs are invalid and their totals do not add up: warned, not refused.
        assert_eq!(
            warnings.iter().filter(|c| *c == "invalid_gstin").count(),
            2,
            "{file}"
        );
        assert!(warnings.contains(&"totals_mismatch".to_owned()), "{file}");
    }
    let create = normalize("zwitch", &fixture("bharat_connect/invoice.create.json"));
    assert_eq!(data_json(&create, 0)["amount"], json!(400));
    assert_eq!(data_json(&create, 0)["direction"], json!("outgoing"));
    assert_eq!(
        data_json(
            &normalize("zwitch", &fixture("bharat_connect/invoice.confirm.json")),
            0
        )["direction"],
        json!("incoming")
    );

    // The sandbox flag on the invoice alone marks it too, as on a UPI payment.
    let mut object_only: Value =
        serde_json::from_slice(&fixture("bharat_connect/invoice.create.json")).unwrap();
    object_only["is_sandbox"] = json!(false);
    object_only["data"]["object"]["is_sandbox"] = json!(true);
    assert!(normalize("zwitch", object_only.to_string().as_bytes()).sandbox);
    object_only["data"]["object"]["is_sandbox"] = json!(false);
    assert!(!normalize("zwitch", object_only.to_string().as_bytes()).sandbox);

    // The seed names the edit event `change_status` a second time; it has no status.
    let edit = String::from_utf8(fixture("bharat_connect/invoice.edit.json"))
        .unwrap()
        .replace(
            "bharat_connect.invoice.edit",
            "bharat_connect.invoice.change_status",
        );
    let edit_as_change_status = normalize("zwitch", edit.as_bytes());
    assert_eq!(types(&edit_as_change_status), [EventType::InvoiceUpdated]);
    // One event under either name: a retry under the other finds its key.
    assert_eq!(
        edit_as_change_status.dedup_key,
        normalize("zwitch", &fixture("bharat_connect/invoice.edit.json")).dedup_key
    );
    let closed = normalize(
        "zwitch",
        &fixture("bharat_connect/invoice.change_status.json"),
    );
    assert!(
        closed
            .dedup_key
            .starts_with("bharat_connect.invoice.change_status:")
    );

    let rejected = String::from_utf8(fixture("bharat_connect/invoice.confirm.json"))
        .unwrap()
        .replace("\"ACCEPTED\"", "\"REJECTED\"");
    assert_eq!(
        types(&normalize("zwitch", rejected.as_bytes())),
        [EventType::InvoiceRejected]
    );

    // A refusal however worded closes the invoice as `rejected`; a return for correction is
    // `returned`, which a later acceptance outranks in any order.
    let zwitch = by_name("zwitch").unwrap();
    for (sent, word) in [
        ("REJECTED BY BUYER", "rejected"),
        ("Declined", "declined"),
        ("RETURNED FOR CORRECTION", "returned"),
    ] {
        let confirm = String::from_utf8(fixture("bharat_connect/invoice.confirm.json"))
            .unwrap()
            .replace("\"ACCEPTED\"", &format!("\"{sent}\""));
        let invoice = data_json(&normalize("zwitch", confirm.as_bytes()), 0);
        assert_eq!(invoice["status"], json!(word), "{sent}");
        assert_eq!(invoice["provider_status"], json!(sent));
        assert!(
            zwitch.status_rank(SubjectKind::Invoice, word).is_some(),
            "{word} is ranked"
        );
    }
    let rank = |status| {
        zwitch
            .status_rank(SubjectKind::Invoice, status)
            .unwrap()
            .level
    };
    assert!(rank("accepted") > rank("returned"));
    assert_eq!(rank("rejected"), rank("accepted"));
}

#[test]
fn setu_bbps_amounts_statuses_and_big_ids() {
    let fetch = normalize("setu_bbps", &fixture("setu_bbps/BILL_FETCH.json"));
    assert_eq!(types(&fetch), [EventType::BillFetched]);
    let bill = data_json(&fetch, 0);
    assert_eq!(bill["amount"], json!(60500));
    assert_eq!(bill["payment_limits"][4]["max"], json!(4_999_900));
    assert_eq!(
        fetch.events[0].occurred_at.unwrap().to_rfc3339(),
        "2023-08-27T11:39:24.566Z"
    );
    assert_eq!(
        fetch.dedup_key,
        "BILL_FETCH:CJLJBQK91PA0FD9MPMK0W75BD9M32391709:success"
    );

    for (file, expected) in [
        ("BILL_PAY.PROCESSING", EventType::PaymentProcessing),
        ("BILL_PAY.SUCCESS", EventType::PaymentSucceeded),
        ("BILL_PAY.FAILURE", EventType::PaymentFailed),
    ] {
        let pay = normalize("setu_bbps", &fixture(&format!("setu_bbps/{file}.json")));
        assert_eq!(types(&pay), [expected]);
        let payment = data_json(&pay, 0);
        assert_eq!(payment["amount"], json!(10000));
        assert_eq!(payment["rail"], json!("bbps"));
        assert_eq!(payment["method"], json!("UPI"));
        assert_eq!(
            payment["references"]["bill_ref_id"],
            json!("HENSVVR4QOS7X1UGPY7JGUV444P10102202")
        );
    }
    // Statuses in any case mean the same, and dedup agrees.
    let mixed = String::from_utf8(fixture("setu_bbps/BILL_PAY.SUCCESS.json"))
        .unwrap()
        .replace("\"SUCCESS\"", "\"Success\"");
    let mixed = normalize("setu_bbps", mixed.as_bytes());
    assert_eq!(types(&mixed), [EventType::PaymentSucceeded]);
    let upper = normalize("setu_bbps", &fixture("setu_bbps/BILL_PAY.SUCCESS.json"));
    assert_eq!(mixed.dedup_key, upper.dedup_key);

    let dispute = normalize("setu_bbps", &fixture("setu_bbps/BILL_DISPUTE.json"));
    assert_eq!(types(&dispute), [EventType::DisputeUpdated]);
    // A second dispute about the same payment is not a copy of the first.
    let second = String::from_utf8(fixture("setu_bbps/BILL_DISPUTE.json"))
        .unwrap()
        .replace("OP0121046567755", "OP0999");
    let second = normalize("setu_bbps", second.as_bytes());
    assert_ne!(second.dedup_key, dispute.dedup_key);
    assert_eq!(
        dispute.dedup_key,
        "BILL_DISPUTE:JPMRPBOGGDTP1EFRZVXVESQVQIS10461642:op0121046567755:resolved"
    );
    assert_eq!(data_json(&dispute, 0)["status"], json!("resolved"));

    let billers = normalize("setu_bbps", &fixture("setu_bbps/BILLER_UPDATES.json"));
    assert_eq!(types(&billers), [EventType::BillerUpdated]);
    let biller = data_json(&billers, 0);
    assert_eq!(biller["id"], json!("699158487875191900"));
    assert_eq!(biller["plans"][0]["id"], json!("773944272117303200"));
    assert_eq!(biller["plans"][0]["amount"], json!(9900));
    assert_eq!(biller["plans"][1]["amount"], json!(29900));
    assert_eq!(biller["payment_channels"][0]["max"], json!(500_000_000));
    assert!(billers.dedup_key.starts_with("sha256:"));

    // A BILLER_UPDATES array yields one event per biller.
    let mut two: Value = serde_json::from_slice(&fixture("setu_bbps/BILLER_UPDATES.json")).unwrap();
    let mut second = two["data"][0].clone();
    second["ID"] = serde_json::from_str("12345678901234567890").unwrap();
    two["data"].as_array_mut().unwrap().push(second);
    let both = normalize("setu_bbps", two.to_string().as_bytes());
    assert_eq!(both.events.len(), 2);
    assert_eq!(data_json(&both, 1)["id"], json!("12345678901234567890"));

    // Setu's empty string for a value it does not have is absent, not an amount gone wrong.
    let mut blank: Value =
        serde_json::from_slice(&fixture("setu_bbps/BILLER_UPDATES.json")).unwrap();
    blank["data"][0]["Plans"][0]["AmountInRupees"] = json!("");
    blank["data"][0]["BillerPaymentChannels"][0]["minLimit"] = json!("");
    let blank = normalize("setu_bbps", blank.to_string().as_bytes());
    let biller = data_json(&blank, 0);
    assert_eq!(biller["plans"][0]["amount"], json!(null));
    assert_eq!(biller["payment_channels"][0]["min"], json!(null));
    assert_eq!(biller["plans"][1]["amount"], json!(29900));
}

#[test]
fn caminvoice_documents() {
    let expectations = [
        ("DOCUMENT.DELIVERED", EventType::DocumentDelivered),
        ("DOCUMENT.RECEIVED", EventType::DocumentReceived),
        ("DOCUMENT.STATUS_UPDATED", EventType::InvoiceStatusChanged),
        ("ENTITY.REVOKED", EventType::NetworkMemberRevoked),
    ];
    for (file, expected) in expectations {
        let normalized = normalize("caminvoice", &fixture(&format!("caminvoice/{file}.json")));
        assert_eq!(types(&normalized), [expected], "{file}");
        assert!(
            normalized.warnings.is_empty(),
            "{file}: {:?}",
            normalized.warnings
        );
    }
    let status = normalize(
        "caminvoice",
        &fixture("caminvoice/DOCUMENT.STATUS_UPDATED.json"),
    );
    assert_eq!(
        status.dedup_key,
        "DOCUMENT.STATUS_UPDATED:df5dcf78-e78b-4396-87bb-2d2a44c1302e:ACCEPTED"
    );
    match &status.events[0].data {
        EntityData::Document(document) => {
            assert_eq!(document.status.as_deref(), Some("accepted"));
            assert_eq!(document.member_id.as_deref(), Some("KHUID000001"));
        }
        other => panic!("{other:?}"),
    }
    let revoked = normalize("caminvoice", &fixture("caminvoice/ENTITY.REVOKED.json"));
    assert_eq!(revoked.dedup_key, "ENTITY.REVOKED:KHUID000001");
}

/// `fixture` with the value at `path` replaced by `null`, or added as `null` where absent.
fn with_null(fixture_path: &str, path: &[&str]) -> Vec<u8> {
    let mut body: Value = serde_json::from_slice(&fixture(fixture_path)).unwrap();
    let (last, parents) = path.split_last().unwrap();
    let parent = parents
        .iter()
        .fold(&mut body, |value, key| value.get_mut(*key).unwrap());
    parent[*last] = Value::Null;
    serde_json::to_vec(&body).unwrap()
}

#[test]
fn a_list_written_as_null_is_an_empty_list() {
    let fetch = normalize(
        "setu_bbps",
        &with_null("setu_bbps/BILL_FETCH.json", &["data", "paymentLimits"]),
    );
    assert_eq!(types(&fetch), [EventType::BillFetched]);
    let invoice = normalize(
        "zwitch",
        &with_null(
            "bharat_connect/invoice.create.json",
            &["data", "object", "items_details"],
        ),
    );
    assert_eq!(types(&invoice), [EventType::InvoiceIssued]);
    assert_eq!(data_json(&invoice, 0)["line_items"], serde_json::json!([]));
    let paid = normalize(
        "razorpay",
        &with_null(
            "razorpay/invoice.paid.card.json",
            &["payload", "invoice", "entity", "line_items"],
        ),
    );
    assert_eq!(types(&paid)[0], EventType::InvoicePaid);
}

#[test]
fn bad_bodies_are_named_by_code() {
    assert_eq!(
        normalize_with("zwitch", b"not json", &[])
            .unwrap_err()
            .code(),
        "invalid_json"
    );
    assert_eq!(
        normalize_with("zwitch", b"{\"id\": \"\xff\"}", &[])
            .unwrap_err()
            .code(),
        "invalid_utf8"
    );
    assert_eq!(
        normalize_with("caminvoice", b"{\"type\": 5}", &[])
            .unwrap_err()
            .code(),
        "unexpected_shape"
    );
    let deep = "[".repeat(100_000);
    assert_eq!(
        normalize_with("setu_bbps", deep.as_bytes(), &[])
            .unwrap_err()
            .code(),
        "invalid_json"
    );
}

/// No amount a provider sends is negative (paid, owed, refunded, a fee, a limit): a negative one
/// is quarantined as `invalid_amount` rather than sent on as a payment of minus a sum. A time
/// that is not unix seconds is `invalid_time`, whatever the number parser said of it.
#[test]
fn negative_amounts_and_bad_unix_times_are_refused_by_their_own_codes() {
    let with = |provider: &str, fixture_path: &str, pointer: &str, value: &str| {
        let mut body: Value = serde_json::from_slice(&fixture(fixture_path)).unwrap();
        *body.pointer_mut(pointer).unwrap() = serde_json::from_str(value).unwrap();
        normalize_with(provider, body.to_string().as_bytes(), &[])
    };
    for (provider, path, pointer) in [
        (
            "razorpay",
            "razorpay/invoice.paid.card.json",
            "/payload/payment/entity/amount",
        ),
        (
            "zwitch",
            "zwitch_upi/payments.updated.json",
            "/data/object/amount",
        ),
        (
            "setu_bbps",
            "setu_bbps/BILL_PAY.SUCCESS.json",
            "/data/paymentDetails/amount",
        ),
    ] {
        let error = with(provider, path, pointer, "-10000").unwrap_err();
        assert_eq!(error.code(), "invalid_amount", "{provider}: {error}");
        assert!(error.to_string().contains("is negative"), "{error}");
        assert!(
            with(provider, path, pointer, "0").is_ok(),
            "{provider}: zero is an amount"
        );
    }
    for value in ["1567686996.5", "\"2019-09-05\""] {
        let error = with(
            "razorpay",
            "razorpay/invoice.paid.card.json",
            "/created_at",
            value,
        )
        .unwrap_err();
        assert_eq!(error.code(), "invalid_time", "{value}: {error}");
        assert!(
            error
                .to_string()
                .contains("not a whole number of unix seconds")
        );
    }
}

/// Text holding the NUL character is a shape error, named by where it is; the six characters
/// `\u0000` written as text (an escaped backslash before them) are ordinary text.
#[test]
fn text_holding_nul_is_refused_where_it_is() {
    let payment = String::from_utf8(fixture("zwitch_upi/payments.updated.json")).unwrap();
    let with_nul = payment.replace("\"Lego Death Star\"", "\"Lego\\u0000Death Star\"");
    assert_ne!(with_nul, payment);
    let error = normalize_with("zwitch", with_nul.as_bytes(), &[]).unwrap_err();
    assert_eq!(error.code(), "unexpected_shape");
    assert!(
        error.to_string().contains("data.object.remitter_note"),
        "{error}"
    );
    let spelled = payment.replace("\"Lego Death Star\"", "\"Lego\\\\u0000Death Star\"");
    let normalized = normalize("zwitch", spelled.as_bytes());
    assert_eq!(
        data_json(&normalized, 0)["references"]["remark"],
        serde_json::json!("Lego\\u0000Death Star")
    );
}

fn verify(spec: &SourceSpec, body: &[u8], pairs: &[(&str, &str)]) -> Result<String, VerifyError> {
    let headers = headers(pairs);
    let request = InboundRequest {
        headers: &headers,
        body,
        remote_ip: None,
        path_token: None,
        received_at: Timestamp::now(),
    };
    spec.verify(&request).map(|v| v.detail)
}

fn signature_source(provider: &str, secrets: &[&str]) -> SourceSpec {
    let auth = SourceAuth::Signature {
        secrets: secrets.iter().map(|s| Secret::new(*s)).collect(),
    };
    SourceSpec::new(provider, provider, Some(auth), vec![]).unwrap()
}

/// `fixture` with the text value at `path` replaced by `value`.
fn with_text(fixture_path: &str, path: &[&str], value: &str) -> Vec<u8> {
    let mut body: Value = serde_json::from_slice(&fixture(fixture_path)).unwrap();
    let (last, parents) = path.split_last().unwrap();
    let parent = parents
        .iter()
        .fold(&mut body, |value, key| value.get_mut(*key).unwrap());
    parent[*last] = Value::String(value.to_owned());
    serde_json::to_vec(&body).unwrap()
}

/// A source's reading of `body`, as ingest asks for it.
fn read_by(spec: &SourceSpec, body: &[u8]) -> Result<Normalized, NormalizeError> {
    let headers = headers(&[]);
    spec.normalize(&InboundRequest {
        headers: &headers,
        body,
        remote_ip: None,
        path_token: None,
        received_at: Timestamp::from_unix_millis(1_700_000_000_000),
    })
}

/// A message about an entity with an empty id is refused, whatever the provider: the ledger
/// would merge every such entity into one, and keys built on the id would collide. A Zwitch
/// event without an id of its own is told apart from others by its body.
#[test]
fn an_entity_with_an_empty_id_is_refused_and_an_event_without_one_is_keyed_by_its_body() {
    let zwitch = signature_source("zwitch", &["secret"]);
    let setu = SourceSpec::new(
        "setu",
        "setu_bbps",
        Some(SourceAuth::Header {
            name: http::HeaderName::from_static("x-bill-webhook-api-key"),
            value: Secret::new("key"),
        }),
        vec![],
    )
    .unwrap();
    let caminvoice = SourceSpec::new(
        "caminvoice",
        "caminvoice",
        Some(SourceAuth::PathToken {
            token: Secret::new("caminvoice-path-token-0123456789"),
        }),
        vec![],
    )
    .unwrap();
    let refused = [
        (
            &zwitch,
            with_text(
                "zwitch_upi/payments.updated.json",
                &["data", "object", "id"],
                "",
            ),
        ),
        (
            &setu,
            with_text("setu_bbps/BILL_PAY.SUCCESS.json", &["data", "refId"], " "),
        ),
        (
            &caminvoice,
            with_text("caminvoice/DOCUMENT.DELIVERED.json", &["document_id"], ""),
        ),
    ];
    for (spec, body) in &refused {
        let error = read_by(spec, body).unwrap_err();
        assert_eq!(error.code(), "unexpected_shape", "{error}");
        assert!(error.to_string().contains("empty id"), "{error}");
    }

    let no_event_id = |remark: &str| {
        let body = with_text("zwitch_upi/payments.updated.json", &["id"], "");
        let mut body: Value = serde_json::from_slice(&body).unwrap();
        body["data"]["object"]["remark"] = Value::String(remark.to_owned());
        read_by(&zwitch, &serde_json::to_vec(&body).unwrap()).unwrap()
    };
    let (first, second) = (no_event_id("one"), no_event_id("two"));
    assert_eq!(first.provider_event_id, None);
    assert!(
        first.dedup_key.starts_with("sha256:"),
        "{}",
        first.dedup_key
    );
    assert_ne!(first.dedup_key, second.dedup_key);
    assert_eq!(first.dedup_key, no_event_id("one").dedup_key);
}

#[test]
fn razorpay_public_sdk_vector_rotation_and_tamper() {
    let body = br#"{"a":1,"b":2,"c":{"d":3}}"#;
    let vector = "2fe04e22977002e6c7cb553adab8b460cb9e2a4970d5953cb27a8472752e3bbc";
    let source = signature_source("razorpay", &["123456"]);
    assert!(verify(&source, body, &[("X-Razorpay-Signature", vector)]).is_ok());
    let signed = by_name("razorpay")
        .unwrap()
        .sign(&source.auth, body, Timestamp::now());
    assert_eq!(
        signed,
        [("X-Razorpay-Signature".to_owned(), vector.to_owned())]
    );

    // Rotation: the previous secret still verifies.
    let rotated = signature_source("razorpay", &["new-secret", "123456"]);
    assert_eq!(
        verify(&rotated, body, &[("X-Razorpay-Signature", vector)]).unwrap(),
        "previous secret (2 of 2)"
    );
    // One changed byte is refused.
    let tampered = br#"{"a":1,"b":2,"c":{"d":4}}"#;
    assert_eq!(
        verify(&source, tampered, &[("X-Razorpay-Signature", vector)]),
        Err(VerifyError::InvalidSignature)
    );
    assert_eq!(
        verify(&source, body, &[]),
        Err(VerifyError::MissingSignature("x-razorpay-signature"))
    );
    assert_eq!(
        verify(&source, body, &[("X-Razorpay-Signature", "zz")]),
        Err(VerifyError::MalformedSignature("x-razorpay-signature"))
    );
    // Present but not ASCII is malformed, not missing.
    let not_ascii = format!("{}é", &vector[..62]);
    assert_eq!(
        verify(&source, body, &[("X-Razorpay-Signature", &not_ascii)]),
        Err(VerifyError::MalformedSignature("x-razorpay-signature"))
    );
    // Upper-case hex is the same signature.
    assert!(
        verify(
            &source,
            body,
            &[("X-Razorpay-Signature", &vector.to_uppercase())]
        )
        .is_ok()
    );
}

#[test]
fn zwitch_accepts_a_signature_over_the_compact_body() {
    let pretty = fixture("zwitch_upi/payments.created.json");
    let compact = crate::json::compact(&pretty).unwrap();
    let secret = "zwitch-signing-secret";
    let source = signature_source("zwitch", &[secret]);
    let over_compact = crate::auth::hex_hmac(secret, &compact);
    let detail = verify(&source, &pretty, &[("x-zwitch-signature", &over_compact)]).unwrap();
    assert!(
        detail.starts_with("body without insignificant whitespace"),
        "{detail}"
    );
    let over_raw = crate::auth::hex_hmac(secret, &pretty);
    let detail = verify(&source, &pretty, &[("x-zwitch-signature", &over_raw)]).unwrap();
    assert!(detail.starts_with("raw body"), "{detail}");
    // Removing the spaces inside "Lego Death Star" is not the provider's compaction.
    let wrongly = String::from_utf8(compact)
        .unwrap()
        .replace("Lego Death Star", "LegoDeathStar");
    let wrong = crate::auth::hex_hmac(secret, wrongly.as_bytes());
    assert_eq!(
        verify(&source, &pretty, &[("x-zwitch-signature", &wrong)]),
        Err(VerifyError::InvalidSignature)
    );
    // A body that whitespace breaks (`"created_at": 16587 37934`) compacts to the signed bytes,
    // but it is not what was signed: refused, not stored and quarantined in as many variants as
    // a sender cares to make.
    let compact_text = String::from_utf8(crate::json::compact(&pretty).unwrap()).unwrap();
    let broken = compact_text.replacen("1658737934", "16587 37934", 1);
    assert_ne!(broken, compact_text);
    assert!(serde_json::from_str::<Value>(&broken).is_err());
    assert_eq!(
        crate::json::compact(broken.as_bytes()).unwrap(),
        compact_text.as_bytes()
    );
    assert_eq!(
        verify(
            &source,
            broken.as_bytes(),
            &[("x-zwitch-signature", &over_compact)]
        ),
        Err(VerifyError::InvalidSignature)
    );
}

#[test]
fn every_emulated_event_normalizes_without_warnings() {
    for provider in crate::PROVIDERS {
        for event in provider.emulated_events() {
            let variants: Vec<Option<&str>> = if event.variants.is_empty() {
                vec![None]
            } else {
                event.variants.iter().map(|v| Some(*v)).collect()
            };
            for variant in variants {
                let mut options = crate::emulate::GenerateOptions::new(Timestamp::now(), Some(42));
                options.variant = variant.map(str::to_owned);
                let generated = provider.generate(event.name, &mut options).unwrap();
                let body = generated.body();
                let pairs: Vec<(&str, &str)> = generated
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                let normalized =
                    normalize_with(provider.name(), &body, &pairs).unwrap_or_else(|e| {
                        panic!("{} {} {variant:?}: {e}", provider.name(), event.name)
                    });
                assert_eq!(normalized.provider_event, event.name);
                assert!(!normalized.events.is_empty());
                assert!(
                    normalized.warnings.is_empty(),
                    "{} {} {variant:?}: {:?}",
                    provider.name(),
                    event.name,
                    normalized.warnings
                );
            }
        }
    }
}

/// Replaces ids and times (which change with every run or generator) so a snapshot pins shape.
fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, entry) in map.iter_mut() {
                let lower = key.to_ascii_lowercase();
                let is_id = lower == "id"
                    || lower.ends_with("_id")
                    || (key.ends_with("Id") && key.len() > 2)
                    || key.ends_with("ID");
                let is_time = lower.ends_with("_at")
                    || lower.contains("timestamp")
                    || lower.ends_with("date")
                    || lower == "expire_by";
                if (is_id || is_time) && !entry.is_null() && !entry.is_object() && !entry.is_array()
                {
                    *entry = Value::String(if is_id { "[id]" } else { "[time]" }.to_owned());
                } else {
                    redact(entry);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[test]
fn emulated_events_keep_their_shape() {
    let at = Timestamp::parse_rfc3339("2026-01-15T09:30:00+05:30").unwrap();
    for provider in crate::PROVIDERS {
        for event in provider.emulated_events() {
            let variants: Vec<Option<&str>> = if event.variants.is_empty() {
                vec![None]
            } else {
                event.variants.iter().map(|v| Some(*v)).collect()
            };
            for variant in variants {
                let mut options = crate::emulate::GenerateOptions::new(at, Some(7));
                options.variant = variant.map(str::to_owned);
                let generated = provider.generate(event.name, &mut options).unwrap();
                let mut body = generated.json.clone();
                redact(&mut body);
                let header_names: Vec<&str> =
                    generated.headers.iter().map(|(n, _)| n.as_str()).collect();
                let name = format!(
                    "{}__{}__{}",
                    provider.name(),
                    event.name,
                    variant.unwrap_or("default")
                )
                .replace(' ', "_");
                insta::assert_json_snapshot!(
                    name,
                    json!({ "headers": header_names, "body": body })
                );
            }
        }
    }
}

fn matches_format(text: &str, prefix: &str, len: usize, alphabet: fn(char) -> bool) -> bool {
    text.strip_prefix(prefix)
        .is_some_and(|rest| rest.chars().count() == len && rest.chars().all(alphabet))
}

#[test]
fn generated_ids_follow_each_providers_format() {
    let base62 = |c: char| c.is_ascii_alphanumeric();
    let upper = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit();
    for _ in 0..20 {
        let options = crate::emulate::GenerateOptions::new(Timestamp::now(), None);
        let razorpay = by_name("razorpay")
            .unwrap()
            .generate("invoice.paid", &mut options.with_variant("card"))
            .unwrap();
        let payload = &razorpay.json["payload"];
        assert!(matches_format(
            payload["payment"]["entity"]["id"].as_str().unwrap(),
            "pay_",
            14,
            base62
        ));
        assert!(matches_format(
            payload["order"]["entity"]["id"].as_str().unwrap(),
            "order_",
            14,
            base62
        ));
        assert!(matches_format(
            payload["invoice"]["entity"]["id"].as_str().unwrap(),
            "inv_",
            14,
            base62
        ));
        assert!(matches_format(
            payload["payment"]["entity"]["card_id"].as_str().unwrap(),
            "card_",
            14,
            base62
        ));
        // Cross-references agree.
        assert_eq!(
            payload["payment"]["entity"]["order_id"],
            payload["order"]["entity"]["id"]
        );
        assert_eq!(
            payload["invoice"]["entity"]["payment_id"],
            payload["payment"]["entity"]["id"]
        );
        let invoice = &payload["invoice"]["entity"];
        let number = |field: &str| invoice[field].as_i64().unwrap();
        assert_eq!(
            number("amount"),
            number("gross_amount") + number("tax_amount")
        );
        assert_eq!(
            number("amount"),
            number("amount_paid") + number("amount_due")
        );

        let mut options = crate::emulate::GenerateOptions::new(Timestamp::now(), None);
        let zwitch = by_name("zwitch")
            .unwrap()
            .generate("payments.updated", &mut options)
            .unwrap();
        assert!(matches_format(
            zwitch.json["id"].as_str().unwrap(),
            "evl_",
            25,
            base62
        ));
        assert!(matches_format(
            zwitch.json["data"]["object"]["id"].as_str().unwrap(),
            "tx_",
            25,
            base62
        ));
        let bc = by_name("zwitch")
            .unwrap()
            .generate("bharat_connect.invoice.create", &mut options)
            .unwrap();
        assert!(matches_format(
            bc.json["data"]["object"]["id"].as_str().unwrap(),
            "bcinv_",
            25,
            base62
        ));

        let cam = by_name("caminvoice")
            .unwrap()
            .generate("DOCUMENT.RECEIVED", &mut options)
            .unwrap();
        let document = cam.json["document_id"].as_str().unwrap();
        let groups: Vec<usize> = document.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert_eq!(&document[14..15], "4", "a version-4 UUID");
        assert!(matches_format(
            cam.json["endpoint_id"].as_str().unwrap(),
            "KHUID",
            6,
            |c| c.is_ascii_digit()
        ));

        let setu = by_name("setu_bbps")
            .unwrap()
            .generate("BILL_FETCH", &mut options)
            .unwrap();
        assert!(matches_format(
            setu.json["data"]["refId"].as_str().unwrap(),
            "",
            35,
            upper
        ));
        let billers = by_name("setu_bbps")
            .unwrap()
            .generate("BILLER_UPDATES", &mut options)
            .unwrap();
        let id = billers.json["data"][0]["ID"].as_u64().unwrap();
        assert!(id > 1 << 53, "biller ids exceed 2^53 like Setu's");
    }
}

/// An emulated biller's `ID` and `BillerID` go together: one seed restates one biller, whatever
/// the variant (so a deactivation reaches the biller activated), and two seeds are two billers.
#[test]
fn an_emulated_biller_keeps_one_id_per_biller() {
    let biller = |seed: u64, variant: &str| {
        let mut options = crate::emulate::GenerateOptions::new(Timestamp::now(), Some(seed))
            .with_variant(variant);
        let generated = by_name("setu_bbps")
            .unwrap()
            .generate("BILLER_UPDATES", &mut options)
            .unwrap();
        let data = &generated.json["data"][0];
        let plans: Vec<Value> = (0..5)
            .map(|n| data["Plans"][n]["BillerID"].clone())
            .collect();
        assert!(plans.iter().all(|plan| *plan == data["BillerID"]), "{data}");
        (data["ID"].clone(), data["BillerID"].clone())
    };
    let activated = biller(1, "ACTIVE");
    assert_eq!(biller(1, "DEACTIVATED"), activated);
    let other = biller(2, "ACTIVE");
    assert_ne!(other.0, activated.0);
    assert_ne!(other.1, activated.1);
}

#[test]
fn the_same_seed_and_clock_give_the_same_bytes() {
    let at = Timestamp::now();
    let build = || {
        let mut options = crate::emulate::GenerateOptions::new(at, Some(99));
        by_name("razorpay")
            .unwrap()
            .generate("invoice.paid", &mut options)
            .unwrap()
    };
    assert_eq!(build().body(), build().body());
    assert_eq!(build().headers, build().headers);
}

/// A variant given for an event that has none is refused by every provider, rather than
/// accepted and ignored.
#[test]
fn a_variant_for_an_event_without_variants_is_refused() {
    for provider in crate::PROVIDERS {
        for event in provider.emulated_events() {
            let mut options = crate::emulate::GenerateOptions::new(Timestamp::now(), Some(7));
            options.variant = Some("card".to_owned());
            let generated = provider.generate(event.name, &mut options);
            if event
                .variants
                .iter()
                .any(|v| v.eq_ignore_ascii_case("card"))
            {
                assert!(generated.is_ok(), "{} {}", provider.name(), event.name);
            } else {
                assert!(
                    matches!(
                        generated,
                        Err(crate::emulate::EmulateError::UnknownVariant { .. })
                    ),
                    "{} {} took a variant it does not have",
                    provider.name(),
                    event.name
                );
            }
        }
    }
}
