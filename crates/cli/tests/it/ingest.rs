//! Receiving webhooks over real HTTP: every fixture, every documented refusal.

use std::io::{Read, Write};
use std::time::Duration;

use billhook_core::time::Timestamp;
use billhook_providers::auth::{Secret, SourceAuth, hex_hmac, issue_jwt};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;

backend_tests!(
    every_fixture_becomes_the_expected_canonical_events,
    the_biller_id_survives_digit_for_digit,
    each_fixture_delivered_twice_is_stored_once,
    a_razorpay_body_sent_again_under_a_new_event_id_is_a_duplicate,
    an_event_id_of_any_length_is_stored_alike,
    ids_and_references_too_long_to_index_are_handled_alike,
    oversized_bodies_are_refused_before_they_are_read,
    unknown_sources_and_empty_bodies_are_refused,
    unverifiable_requests_get_401_with_a_stable_code,
    verified_but_unreadable_bodies_are_quarantined_not_lost,
    previous_secret_and_compact_zwitch_signatures_verify,
    static_credentials_jwt_basic_and_ip_allow_lists,
);

/// What each fixture must become: canonical types and, per event, a JSON pointer into `data`
/// with its exact value.
fn expectations(fixture: &str) -> (Vec<&'static str>, Vec<(usize, &'static str, Value)>) {
    match fixture {
        f if f.starts_with("razorpay/invoice.paid") => (
            vec!["invoice.paid", "payment.succeeded"],
            vec![
                (0, "/amount", json!(479030)),
                (0, "/amount_due", json!(0)),
                (1, "/amount", json!(479030)),
                (1, "/currency", json!("INR")),
            ],
        ),
        "zwitch_upi/payments.created.json" => (
            vec!["payment.created"],
            vec![(0, "/amount", json!(100)), (0, "/currency", json!("INR"))],
        ),
        "zwitch_upi/payments.updated.json" => (
            vec!["payment.succeeded"],
            vec![(0, "/amount", json!(100)), (0, "/currency", json!("INR"))],
        ),
        "bharat_connect/invoice.create.json" => (
            vec!["invoice.issued"],
            vec![
                (0, "/line_items/0/unit_price", json!(200)),
                (0, "/amount", json!(400)),
            ],
        ),
        "bharat_connect/invoice.confirm.json" => (
            vec!["invoice.accepted"],
            vec![(0, "/line_items/0/unit_price", json!(200))],
        ),
        "bharat_connect/invoice.change_status.json" => (
            vec!["invoice.status_changed"],
            vec![
                (0, "/line_items/0/unit_price", json!(200)),
                (0, "/status", json!("closed")),
            ],
        ),
        "bharat_connect/invoice.edit.json" => (
            vec!["invoice.updated"],
            vec![(0, "/line_items/0/unit_price", json!(200))],
        ),
        "setu_bbps/BILL_FETCH.json" => (vec!["bill.fetched"], vec![(0, "/amount", json!(60500))]),
        "setu_bbps/BILL_PAY.PROCESSING.json" => (
            vec!["payment.processing"],
            vec![(0, "/amount", json!(10000))],
        ),
        "setu_bbps/BILL_PAY.SUCCESS.json" => (
            vec!["payment.succeeded"],
            vec![(0, "/amount", json!(10000))],
        ),
        "setu_bbps/BILL_PAY.FAILURE.json" => (
            vec!["payment.failed"],
            vec![
                (0, "/amount", json!(10000)),
                (0, "/failure/code", json!("BRR005")),
            ],
        ),
        "setu_bbps/BILL_DISPUTE.json" => (
            vec!["dispute.updated"],
            vec![(0, "/status", json!("resolved"))],
        ),
        "setu_bbps/BILLER_UPDATES.json" => (
            vec!["biller.updated"],
            vec![
                (0, "/plans/0/amount", json!(9900)),
                (0, "/id", json!("699158487875191900")),
            ],
        ),
        "caminvoice/DOCUMENT.DELIVERED.json" => (vec!["document.delivered"], vec![]),
        "caminvoice/DOCUMENT.RECEIVED.json" => (vec!["document.received"], vec![]),
        "caminvoice/DOCUMENT.STATUS_UPDATED.json" => (
            vec!["invoice.status_changed"],
            vec![(0, "/status", json!("accepted"))],
        ),
        "caminvoice/ENTITY.REVOKED.json" => (
            vec!["network.member_revoked"],
            vec![(0, "/member_id", json!("KHUID000001"))],
        ),
        other => panic!("no expectation for fixture {other}"),
    }
}

async fn post_fixture(
    app: &TestApp,
    fixture_path: &str,
    source: &str,
    event_id: &str,
) -> (u16, Value) {
    let body = fixture(fixture_path);
    post_body(app, source, &body, &[("x-razorpay-event-id", event_id)]).await
}

/// Posts `body`, signed for `source`, and reads the answer.
async fn post_body(
    app: &TestApp,
    source: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let response = app.post_signed(source, body, extra).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn every_fixture_becomes_the_expected_canonical_events(backend: Backend) {
    let app = spawn_app(backend).await;
    for (index, (path, source)) in all_fixtures().into_iter().enumerate() {
        let (status, ack) =
            post_fixture(&app, &path, source, &format!("evt_fixture_{index}")).await;
        assert_eq!(status, ack_status(source), "{path}: {ack}");
        assert_eq!(ack["duplicate"], json!(false), "{path}");
        assert_eq!(ack["quarantined"], json!(false), "{path}: {ack}");
        let (types, values) = expectations(&path);
        let ids = ack["events"].as_array().unwrap();
        assert_eq!(ids.len(), types.len(), "{path}: {ack}");
        let mut events = Vec::new();
        for id in ids {
            let (status, detail) = app
                .admin_get(&format!("/v1/events/{}", id.as_str().unwrap()))
                .await;
            assert_eq!(status, 200);
            assert_eq!(detail["inbound"]["id"], ack["inbound_id"]);
            events.push(detail["event"].clone());
        }
        let got: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(got, types, "{path}");
        for (index, pointer, expected) in values {
            assert_eq!(
                events[index]["data"].pointer(pointer),
                Some(&expected),
                "{path} {pointer}"
            );
        }
        for event in &events {
            assert_eq!(event["schema_version"], json!(1));
            assert_eq!(event["source"]["name"], json!(source));
            assert!(event["id"].as_str().unwrap().starts_with("evt_"));
        }
    }
    app.stop().await;
}

async fn the_biller_id_survives_digit_for_digit(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, ack) = post_fixture(&app, "setu_bbps/BILLER_UPDATES.json", "setu", "-").await;
    assert_eq!(status, 202);
    let event_id = ack["events"][0].as_str().unwrap();
    // Checked on the response text, so no JSON number parsing can round it on our side.
    let text = app
        .admin_get_response(&format!("/v1/events/{event_id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains(r#""id":"699158487875191900""#), "{text}");
    assert!(text.contains(r#""id":"773944272117303200""#));
    // The stored raw body keeps the provider's number as sent.
    assert!(text.contains(r#"\"ID\": 699158487875191900"#), "{text}");
    let listed = app
        .admin_get_response("/v1/events?type=biller.updated")
        .await
        .text()
        .await
        .unwrap();
    assert!(listed.contains(r#""id":"699158487875191900""#));
    let inbound_id = ack["inbound_id"].as_str().unwrap();
    let (_, inbound) = app.admin_get(&format!("/v1/inbound/{inbound_id}")).await;
    assert_eq!(
        inbound["body"].as_str().unwrap().as_bytes(),
        fixture("setu_bbps/BILLER_UPDATES.json")
    );
    app.stop().await;
}

async fn each_fixture_delivered_twice_is_stored_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let fixtures = all_fixtures();
    let mut first_acks = Vec::new();
    for (index, (path, source)) in fixtures.iter().enumerate() {
        let (status, ack) = post_fixture(&app, path, source, &format!("twice_{index}")).await;
        assert_eq!(status, ack_status(source), "{path}");
        first_acks.push(ack);
    }
    for (index, (path, source)) in fixtures.iter().enumerate() {
        let (status, ack) = post_fixture(&app, path, source, &format!("twice_{index}")).await;
        assert_eq!(status, ack_status(source), "{path}");
        assert_eq!(ack["duplicate"], json!(true), "{path}");
        assert_eq!(ack["inbound_id"], first_acks[index]["inbound_id"], "{path}");
        assert_eq!(ack["events"], first_acks[index]["events"], "{path}");
    }
    let expected_events: usize = first_acks
        .iter()
        .map(|a| a["events"].as_array().unwrap().len())
        .sum();
    let (_, events) = app.admin_get("/v1/events?limit=500").await;
    let from_messages = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] != json!("invoice.settled"))
        .count();
    assert_eq!(from_messages, expected_events);
    // The ledger settled each paid invoice once, however many times its messages came.
    let (_, settled) = app.admin_get("/v1/events?type=invoice.settled").await;
    let mut subjects: Vec<&str> = settled["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"]["id"].as_str().unwrap())
        .collect();
    let count = subjects.len();
    subjects.sort_unstable();
    subjects.dedup();
    assert!(count > 0);
    assert_eq!(subjects.len(), count, "one settlement per invoice");
    let (_, inbound) = app.admin_get("/v1/inbound?limit=500").await;
    assert_eq!(inbound["data"].as_array().unwrap().len(), fixtures.len());
    app.stop().await;
}

/// Razorpay signs the body, not the `x-razorpay-event-id` header that is its dedup key: a
/// captured request sent again with a new id must not become a second payment.
async fn a_razorpay_body_sent_again_under_a_new_event_id_is_a_duplicate(backend: Backend) {
    let app = spawn_app(backend).await;
    let upi = "razorpay/invoice.paid.upi.json";
    let (_, first) = post_fixture(&app, upi, "razorpay", "evt_original").await;
    assert_eq!(first["duplicate"], json!(false), "{first}");
    let (status, again) = post_fixture(&app, upi, "razorpay", "evt_replayed").await;
    assert_eq!(status, ack_status("razorpay"));
    assert_eq!(again["duplicate"], json!(true), "{again}");
    assert_eq!(again["inbound_id"], first["inbound_id"]);
    assert_eq!(again["events"], first["events"]);
    // The replay did not keep the id it came with: a message that is new may carry it.
    let (_, card) = post_fixture(
        &app,
        "razorpay/invoice.paid.card.json",
        "razorpay",
        "evt_replayed",
    )
    .await;
    assert_eq!(card["duplicate"], json!(false), "{card}");
    let (_, inbound) = app.admin_get("/v1/inbound?source=razorpay").await;
    assert_eq!(inbound["data"].as_array().unwrap().len(), 2, "{inbound}");

    // So is one that is quarantined (an event billhook does not take): each copy would
    // otherwise wait in quarantine for good.
    let unsupported = String::from_utf8(fixture(upi)).unwrap().replacen(
        "\"invoice.paid\"",
        "\"subscription.charged\"",
        1,
    );
    let mut quarantined = Vec::new();
    for id in ["evt_q1", "evt_q2"] {
        let response = app
            .post_signed(
                "razorpay",
                unsupported.as_bytes(),
                &[("x-razorpay-event-id", id)],
            )
            .await;
        assert_eq!(response.status().as_u16(), ack_status("razorpay"));
        quarantined.push(response.json::<Value>().await.unwrap());
    }
    assert_eq!(
        quarantined[0]["quarantined"],
        json!(true),
        "{}",
        quarantined[0]
    );
    assert_eq!(
        quarantined[1]["duplicate"],
        json!(true),
        "{}",
        quarantined[1]
    );
    assert_eq!(quarantined[1]["inbound_id"], quarantined[0]["inbound_id"]);
    app.stop().await;
}

/// `length` hex digits with no repeats to compress: as long in PostgreSQL as in the request.
fn incompressible(length: usize) -> String {
    let digits: String = (0u32..)
        .map(|n| hex_hmac("padding", &n.to_be_bytes()))
        .take(length.div_ceil(64))
        .collect();
    digits[..length].to_owned()
}

/// Razorpay's event id comes in a header its signature does not cover, so it can be any
/// length. One past what a PostgreSQL index entry holds is stored (as its hash) like any
/// other, on both backends, and recognised when it comes again.
async fn an_event_id_of_any_length_is_stored_alike(backend: Backend) {
    let app = spawn_app(backend).await;
    let long_id = incompressible(12_288);
    let upi = "razorpay/invoice.paid.upi.json";
    let (status, first) = post_fixture(&app, upi, "razorpay", &long_id).await;
    assert_eq!(status, ack_status("razorpay"), "{first}");
    assert_eq!(first["duplicate"], json!(false), "{first}");
    let (status, again) = post_fixture(&app, upi, "razorpay", &long_id).await;
    assert_eq!(status, ack_status("razorpay"), "{again}");
    assert_eq!(again["duplicate"], json!(true), "{again}");
    // A body billhook does not take, under another such id, waits in quarantine.
    let unsupported = String::from_utf8(fixture(upi)).unwrap().replacen(
        "\"invoice.paid\"",
        "\"subscription.charged\"",
        1,
    );
    let other_id = format!("{long_id}-2");
    let response = app
        .post_signed(
            "razorpay",
            unsupported.as_bytes(),
            &[("x-razorpay-event-id", other_id.as_str())],
        )
        .await;
    assert_eq!(response.status().as_u16(), ack_status("razorpay"));
    let quarantined: Value = response.json().await.unwrap();
    assert_eq!(quarantined["quarantined"], json!(true), "{quarantined}");
    app.stop().await;
}

/// A provider's ids and references are looked up through indexes, and PostgreSQL refuses an
/// index entry past about 2.7 KB. A payment whose id is that long is quarantined, and one whose
/// remark is that long is stored with the remark kept but not looked up by, on both backends
/// alike: refused by the database, it would be answered 500 and lost once the provider gave up.
async fn ids_and_references_too_long_to_index_are_handled_alike(backend: Backend) {
    let app = spawn_app(backend).await;
    let long = incompressible(4_096);
    let payment = |id: &str, remark: &str, event: &str| {
        let mut body: Value =
            serde_json::from_slice(&fixture("zwitch_upi/payments.updated.json")).unwrap();
        body["id"] = json!(event);
        body["data"]["object"]["id"] = json!(id);
        body["data"]["object"]["remark"] = json!(remark);
        serde_json::to_vec(&body).unwrap()
    };
    let (status, stored) = post_body(
        &app,
        "zwitch",
        &payment("tx_long_remark", &long, "evl_1"),
        &[],
    )
    .await;
    assert_eq!(status, ack_status("zwitch"));
    assert_eq!(stored["quarantined"], json!(false), "{stored}");
    let (status, event) = app
        .admin_get(&format!(
            "/v1/events/{}",
            stored["events"][0].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(event["event"]["data"]["references"]["remark"], json!(long));

    let (status, quarantined) =
        post_body(&app, "zwitch", &payment(&long, "a remark", "evl_2"), &[]).await;
    assert_eq!(status, ack_status("zwitch"));
    assert_eq!(quarantined["quarantined"], json!(true), "{quarantined}");
    let (_, record) = app
        .admin_get(&format!(
            "/v1/inbound/{}",
            quarantined["inbound_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        record["error"]["code"],
        json!("unexpected_shape"),
        "{record}"
    );
    app.stop().await;
}

async fn oversized_bodies_are_refused_before_they_are_read(backend: Backend) {
    let app = spawn_app_with(backend, "[ingest]\nmax_body_bytes = 4096\n").await;
    let big = vec![b' '; 5000];
    let response = app.post_signed("razorpay", &big, &[]).await;
    assert_eq!(response.status().as_u16(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], json!("payload_too_large"));

    // A chunked body with no length: refused once the limit is crossed, while the client is
    // still sending (it never finishes its body). Its signature header is well formed, as one
    // must be before a body is read at all.
    let address = app.address.trim_start_matches("http://").to_owned();
    let status = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        let head = format!(
            "POST /ingest/razorpay HTTP/1.1\r\nhost: billhook\r\ntransfer-encoding: chunked\r\n\
             content-type: application/json\r\nx-razorpay-signature: {}\r\n\r\n",
            "0".repeat(64)
        );
        stream.write_all(head.as_bytes()).unwrap();
        let chunk = vec![b'a'; 1024];
        for _ in 0..8 {
            let _ = stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes());
            let _ = stream.write_all(&chunk);
            let _ = stream.write_all(b"\r\n");
        }
        let mut response = vec![0u8; 512];
        let read = stream.read(&mut response).unwrap();
        String::from_utf8_lossy(&response[..read]).into_owned()
    })
    .await
    .unwrap();
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    assert!(status.contains("payload_too_large"), "{status}");
    app.stop().await;
}

async fn unknown_sources_and_empty_bodies_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .http
        .post(app.url("/ingest/stripe"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        json!("unknown_source")
    );

    let response = app.post_signed("razorpay", b"", &[]).await;
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        json!("empty_body")
    );

    let response = app
        .http
        .get(app.url("/ingest/razorpay"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        json!("method_not_allowed")
    );

    // A path that is not UTF-8 once decoded is refused as `{code, message}` too.
    for (method, path) in [
        (reqwest::Method::POST, "/ingest/%FF"),
        (reqwest::Method::POST, "/ingest/caminvoice/%FF"),
        (reqwest::Method::GET, "/v1/events/%FF"),
        (reqwest::Method::GET, "/v1/invoices/%FF"),
    ] {
        let response = app
            .http
            .request(method, app.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], json!("invalid_request"), "{path}: {body}");
        assert!(body["message"].is_string(), "{path}: {body}");
    }
    app.stop().await;
}

async fn unverifiable_requests_get_401_with_a_stable_code(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = fixture("razorpay/invoice.paid.upi.json");
    let post = |headers: Vec<(&'static str, String)>, body: Vec<u8>| {
        let mut request = app.http.post(app.url("/ingest/razorpay")).body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    let cases = [
        (vec![], "missing_signature"),
        (
            vec![("x-razorpay-signature", "not-hex".to_owned())],
            "malformed_signature",
        ),
        (
            vec![("x-razorpay-signature", hex_hmac("some other secret", &body))],
            "invalid_signature",
        ),
    ];
    for (headers, code) in cases {
        let response = post(headers, body.clone()).await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{code}");
        assert_eq!(response.json::<Value>().await.unwrap()["code"], json!(code));
    }
    // One changed byte under a valid signature of the original.
    let signature = hex_hmac(RAZORPAY_SECRET, &body);
    let mut tampered = body.clone();
    let at = tampered.iter().position(|&b| b == b'9').unwrap();
    tampered[at] = b'8';
    let response = post(vec![("x-razorpay-signature", signature.clone())], tampered)
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        json!("invalid_signature")
    );
    // Nothing unverified was stored.
    let (_, inbound) = app.admin_get("/v1/inbound").await;
    assert_eq!(inbound["data"], json!([]));
    app.stop().await;
}

async fn verified_but_unreadable_bodies_are_quarantined_not_lost(backend: Backend) {
    let app = spawn_app(backend).await;
    let deep = "[".repeat(50_000).into_bytes();
    let unknown_event =
        br#"{"entity":"event","event":"subscription.charged","payload":{}}"#.to_vec();
    // PostgreSQL cannot store the NUL character in text; SQLite could, but both quarantine it.
    let with_nul = String::from_utf8(fixture("zwitch_upi/payments.created.json"))
        .unwrap()
        .replace("\"Lego Death Star\"", "\"Lego\\u0000\"")
        .into_bytes();
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("razorpay", b"this is not json".to_vec(), "invalid_json"),
        (
            "zwitch",
            b"{\"id\": \"evl_\xff\xfe\"}".to_vec(),
            "invalid_utf8",
        ),
        ("setu", deep, "invalid_json"),
        ("razorpay", unknown_event, "unsupported_event"),
        ("zwitch", with_nul, "unexpected_shape"),
    ];
    let mut quarantined = Vec::new();
    for (index, (source, body, code)) in cases.iter().enumerate() {
        let response = app
            .post_signed(
                source,
                body,
                &[("x-razorpay-event-id", &format!("q{index}"))],
            )
            .await;
        assert_eq!(response.status().as_u16(), ack_status(source), "{code}");
        let ack: Value = response.json().await.unwrap();
        assert_eq!(ack["quarantined"], json!(true), "{code}");
        assert_eq!(ack["events"], json!([]));
        quarantined.push((
            ack["inbound_id"].as_str().unwrap().to_owned(),
            *code,
            body.clone(),
        ));
    }
    let (status, listed) = app.admin_get("/v1/inbound?status=quarantined").await;
    assert_eq!(status, 200);
    assert_eq!(listed["data"].as_array().unwrap().len(), quarantined.len());
    for (id, code, body) in &quarantined {
        let (_, record) = app.admin_get(&format!("/v1/inbound/{id}")).await;
        assert_eq!(record["status"], json!("quarantined"));
        assert_eq!(record["error"]["code"], json!(code));
        let stored = match record["body"].as_str() {
            Some(text) => text.as_bytes().to_vec(),
            None => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(record["body_base64"].as_str().unwrap())
                    .unwrap()
            }
        };
        assert_eq!(&stored, body, "{code}: the exact bytes are kept");
    }
    // Reprocessing with the same code keeps them quarantined and says why.
    let (status, summary) = app.admin_post("/v1/inbound/reprocess", json!({})).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["attempted"], json!(5));
    assert_eq!(summary["still_quarantined"], json!(5));
    let (status, one) = app
        .admin_post(
            &format!("/v1/inbound/{}/reprocess", quarantined[0].0),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(one["outcome"], json!("quarantined"));
    assert_eq!(one["error"]["code"], json!("invalid_json"));
    app.stop().await;
}

async fn previous_secret_and_compact_zwitch_signatures_verify(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = fixture("razorpay/invoice.paid.wallet.json");
    let previous = SourceAuth::Signature {
        secrets: vec![Secret::new(RAZORPAY_PREVIOUS_SECRET)],
    };
    let provider = billhook_providers::by_name("razorpay").unwrap();
    let mut request = app
        .http
        .post(app.url("/ingest/razorpay"))
        .body(body.clone());
    for (name, value) in provider.sign(&previous, &body, Timestamp::now()) {
        request = request.header(name, value);
    }
    let response = request
        .header("x-razorpay-event-id", "rotated")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let ack: Value = response.json().await.unwrap();
    let (_, record) = app
        .admin_get(&format!(
            "/v1/inbound/{}",
            ack["inbound_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        record["verification"],
        json!("razorpay-signature: previous secret (2 of 2)")
    );
    // The stored signature header is shortened, never kept whole.
    let signature = record["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "x-razorpay-signature")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(signature.chars().count(), 9, "{signature}");

    // Zwitch: the pretty body sent, the signature computed over its compact form.
    let pretty = fixture("zwitch_upi/payments.updated.json");
    let compact = serde_json::to_vec(&serde_json::from_slice::<Value>(&pretty).unwrap()).unwrap();
    let response = app
        .http
        .post(app.url("/ingest/zwitch"))
        .header("x-zwitch-signature", hex_hmac(ZWITCH_SECRET, &compact))
        .body(pretty)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let ack: Value = response.json().await.unwrap();
    let (_, record) = app
        .admin_get(&format!(
            "/v1/inbound/{}",
            ack["inbound_id"].as_str().unwrap()
        ))
        .await;
    assert!(
        record["verification"]
            .as_str()
            .unwrap()
            .contains("without insignificant whitespace")
    );
    app.stop().await;
}

async fn static_credentials_jwt_basic_and_ip_allow_lists(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = fixture("setu_bbps/BILL_DISPUTE.json");
    let send = |source: &str, headers: Vec<(&'static str, String)>| {
        let mut request = app
            .http
            .post(app.url(&format!("/ingest/{source}")))
            .body(body.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    let status_and_code = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        (status, body["code"].as_str().unwrap_or("").to_owned())
    };
    let now = Timestamp::now().unix_seconds();
    let jwt = Secret::new("setu-jwt-secret");
    let fresh = send(
        "setu-jwt",
        vec![("authorization", format!("Bearer {}", issue_jwt(&jwt, now)))],
    )
    .await
    .unwrap();
    assert_eq!(fresh.status().as_u16(), 202);
    let stale = send(
        "setu-jwt",
        vec![(
            "authorization",
            format!("Bearer {}", issue_jwt(&jwt, now - 121)),
        )],
    )
    .await
    .unwrap();
    assert_eq!(
        status_and_code(stale).await,
        (401, "token_expired".to_owned())
    );

    let wrong_basic = send(
        "setu-basic",
        vec![("authorization", "Basic c2V0dTpub3Bl".to_owned())],
    )
    .await
    .unwrap();
    assert_eq!(
        status_and_code(wrong_basic).await,
        (401, "invalid_credentials".to_owned())
    );
    let basic = app.post_signed("setu-basic", &body, &[]).await;
    assert_eq!(basic.status().as_u16(), 202);

    let no_key = send("setu", vec![]).await.unwrap();
    assert_eq!(
        status_and_code(no_key).await,
        (401, "missing_credentials".to_owned())
    );

    // The right key from the wrong network.
    let outside = send(
        "setu-office",
        vec![("X-BILL-WEBHOOK-API-KEY", SETU_KEY.to_owned())],
    )
    .await
    .unwrap();
    assert_eq!(
        status_and_code(outside).await,
        (401, "ip_not_allowed".to_owned())
    );
    // Refused before its body is even looked at: a request announcing a body over the size
    // limit (none of which is sent) is refused for its address, not its size.
    let mut connection = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /ingest/setu-office HTTP/1.1\r\nHost: billhook\r\n\
         X-BILL-WEBHOOK-API-KEY: {SETU_KEY}\r\nContent-Length: 2097152\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut connection, head.as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut connection, &mut answer),
    )
    .await
    .expect("answered without the body")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(
        answer.starts_with("HTTP/1.1 401") && answer.contains("ip_not_allowed"),
        "{answer}"
    );

    // CamInvoice's path token.
    let document = fixture("caminvoice/DOCUMENT.RECEIVED.json");
    let wrong = app
        .http
        .post(app.url("/ingest/caminvoice/not-the-token"))
        .body(document.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        status_and_code(wrong).await,
        (401, "invalid_credentials".to_owned())
    );
    let right = app.post_signed("caminvoice", &document, &[]).await;
    assert_eq!(right.status().as_u16(), 202);
    // Credentials are never stored.
    let ack: Value = right.json().await.unwrap();
    let (_, record) = app
        .admin_get(&format!(
            "/v1/inbound/{}",
            ack["inbound_id"].as_str().unwrap()
        ))
        .await;
    assert!(!record.to_string().contains(CAMINVOICE_TOKEN));
    app.stop().await;
}

/// Bodies being read are held in memory; past `ingest.max_buffered_bytes` of them a webhook is
/// refused with 503 before its body is read, so clients that announce large bodies and stall
/// cannot grow billhook's memory without bound. Room comes back as those requests end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_past_the_bodies_billhook_may_hold_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(
        Backend::Sqlite,
        "[ingest]\nmax_body_bytes = 16384\nmax_buffered_bytes = 32768\nrequest_timeout = \"2s\"\n",
    )
    .await;
    let address = app.address.trim_start_matches("http://").to_owned();
    // Two requests announce the most a body may be, send a little of it, and stall. Their
    // signature headers are well formed: a request without one takes no room.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let head = format!(
            "POST /ingest/razorpay HTTP/1.1\r\nHost: billhook\r\nContent-Type: application/json\r\n\
             X-Razorpay-Signature: {}\r\nContent-Length: 16384\r\n\r\n{{\"a\":",
            "0".repeat(64)
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stalled.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let body = fixture("razorpay/invoice.paid.upi.json");
    let refused = app.post_signed("razorpay", &body, &[]).await;
    assert_eq!(refused.status().as_u16(), 503);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["code"], json!("overloaded"), "{error}");
    let (_, inbound) = app.admin_get("/v1/inbound").await;
    assert_eq!(inbound["data"], json!([]), "nothing was stored");
    // One too large for any room is told so, not to come back later.
    let oversized = app.post_signed("razorpay", &[b' '; 20_000], &[]).await;
    assert_eq!(oversized.status().as_u16(), 413);

    // The stalled requests time out and give their room back.
    for mut stream in stalled {
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("the stalled request is answered");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    let accepted = app.post_signed("razorpay", &body, &[]).await;
    assert_eq!(accepted.status().as_u16(), 202);
    app.stop().await;
}

/// A webhook without its source's credential is refused as soon as its headers are in, not
/// after its body: a body sent a byte at a time would otherwise hold a share of the memory kept
/// for bodies, and enough of them would have every real webhook answered `503`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_without_its_credential_is_refused_before_its_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app(Backend::Sqlite).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    for (path, headers, code) in [
        ("/ingest/razorpay", "", "missing_signature"),
        (
            "/ingest/razorpay",
            "X-Razorpay-Signature: not-hex\r\n",
            "malformed_signature",
        ),
        ("/ingest/setu", "", "missing_credentials"),
        (
            "/ingest/setu",
            "X-BILL-WEBHOOK-API-KEY: wrong\r\n",
            "invalid_credentials",
        ),
        ("/ingest/caminvoice/wrong-token", "", "invalid_credentials"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: billhook\r\nContent-Type: application/json\r\n\
             {headers}Content-Length: 100000\r\n\r\n{{\"a\":"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0; 4096];
        // The ingest request timeout is 30 s: an answer within 5 s did not wait for the body.
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
            .await
            .expect("answered before the body came")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(answer.starts_with("HTTP/1.1 401"), "{path}: {answer}");
        assert!(answer.contains(code), "{path}: {answer}");
    }
    app.stop().await;
}

/// A client that sends a request's headers a byte now and then (or not at all) does not keep
/// its connection: the headers must arrive within the ingest request timeout, or the
/// connection is closed. Without a deadline, enough such clients hold every file descriptor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_slow_with_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(Backend::Sqlite, "[ingest]\nrequest_timeout = \"1s\"\n").await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(b"POST /ingest/razorpay HTTP/1.1\r\nHost: billhook\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    // Closed (or reset), not kept open waiting, and nothing was acknowledged.
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the connection is closed, not kept open waiting");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed by the deadline, not at once: {:?}",
        started.elapsed()
    );

    // A client that sends its headers in time is served as ever.
    let (status, _) = app.admin_get("/v1/events").await;
    assert_eq!(status, 200);
    app.stop().await;
}

/// The login form, and every admin route, reads its body within the request timeout: a client
/// that sends the body it announced a byte now and then is answered `408` and let go rather than
/// holding its connection. A body over the limit is `413`, in the API's error shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_or_login_body_too_slow_or_too_large_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(Backend::Sqlite, "[ingest]\nrequest_timeout = \"1s\"\n").await;
    let address = app.address.trim_start_matches("http://").to_owned();
    for path in ["/login", "/v1/endpoints"] {
        let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: billhook\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 10000\r\n\r\ntoken="
        );
        writer.write_all(head.as_bytes()).await.unwrap();
        let started = std::time::Instant::now();
        let dribble = tokio::spawn(async move {
            // A byte every 200 ms: never idle for long, never done.
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if writer.write_all(b"a").await.is_err() {
                    break;
                }
            }
        });
        let mut answer = vec![0; 4096];
        let read = tokio::time::timeout(Duration::from_secs(5), reader.read(&mut answer))
            .await
            .expect("answered, not kept waiting")
            .unwrap();
        dribble.abort();
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        // The console answers with its error page, the API with its JSON.
        let code = if path == "/login" {
            "<strong>request_timeout</strong>"
        } else {
            "\"code\":\"request_timeout\""
        };
        assert!(answer.contains(code), "{path}: {answer}");
        assert!(started.elapsed() < Duration::from_secs(4), "{path}");
    }

    // Sends only a request's head and reads the first of the answer.
    let answer_to_head = |head: String| {
        let address = address.clone();
        async move {
            let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
            stream.write_all(head.as_bytes()).await.unwrap();
            let mut answer = vec![0; 4096];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
                .await
                .expect("answered at once")
                .unwrap();
            String::from_utf8_lossy(&answer[..read]).into_owned()
        }
    };
    // Announced too large: answered before any of the body is read.
    let answer = answer_to_head(format!(
        "POST /v1/endpoints HTTP/1.1\r\nHost: billhook\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 3000000\r\n\r\n"
    ))
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("\"code\":\"payload_too_large\""),
        "{answer}"
    );
    // Without a valid token, nothing of the body is looked at: the caller is refused first.
    let answer = answer_to_head(
        "POST /v1/endpoints HTTP/1.1\r\nHost: billhook\r\n\
         Content-Type: application/json\r\nContent-Length: 3000000\r\n\r\n"
            .to_owned(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // The console's forms are small: a body past 64 KiB is refused before anyone is known.
    let form = app
        .http
        .post(app.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", "a".repeat(70 * 1024)))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status().as_u16(), 413);
    app.stop().await;
}

/// A request still running when billhook stops (here an admin request whose body never comes)
/// gets the request timeout to finish, and then the stop goes on without it.
#[tokio::test]
async fn a_request_that_never_finishes_does_not_hold_up_the_stop() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(Backend::Sqlite, "[ingest]\nrequest_timeout = \"1s\"\n").await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = request_in_flight(&address).await;
    stream.write_all(b"{\"url\":").await.unwrap();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(20), app.stop())
        .await
        .expect("stopped without waiting for the body");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the request had its time first: {:?}",
        started.elapsed()
    );
    drop(stream);
}

/// Past `max_connections`, a new connection waits to be served until one closes: here two
/// requests in flight take both slots, and a health check on a third connection is answered
/// only once one of them goes.
#[tokio::test]
async fn a_connection_past_the_limit_waits_for_one_to_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(Backend::Sqlite, "max_connections = 2\n").await;
    // The client's pooled connection is closed, so only this test's connections are open.
    let closing = app
        .http
        .get(app.url("/healthz"))
        .header("connection", "close")
        .send()
        .await
        .unwrap();
    assert_eq!(closing.status(), 200);
    let address = app.address.trim_start_matches("http://").to_owned();
    // Two requests in flight until the request timeout (30 s).
    let first = request_in_flight(&address).await;
    let second = request_in_flight(&address).await;

    let mut third = tokio::net::TcpStream::connect(&address).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: billhook\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 256];
    let waiting = tokio::time::timeout(Duration::from_millis(500), third.read(&mut answer)).await;
    assert!(
        waiting.is_err(),
        "a third connection is not served while two are open"
    );

    drop(first);
    let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut answer))
        .await
        .expect("served once a connection closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(second);
    app.stop().await;
}
