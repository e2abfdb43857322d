//! Operating billhook: admin tokens and scopes, Prometheus metrics, sources, retention, and the
//! CLI commands over them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use billhook_core::ids::{DeliveryId, EndpointId, EventId, InboundId};
use billhook_core::time::Timestamp;
use billhook_store::{
    BACKLOG_BATCH, DeliveryStatus, EndpointRecord, InboundStatus, IngestWrite, NewDelivery,
    NewEndpoint, NewEvent, NewInbound, RecordedError, Store,
};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;

backend_tests!(
    a_read_token_reads_and_only_an_admin_token_changes,
    metrics_count_ingest_verification_and_delivery,
    sources_show_traffic_and_verification_failures,
    retention_previews_and_prunes_old_messages_on_request,
    retention_runs_in_the_background,
    a_prune_on_request_stops_between_batches_when_billhook_stops,
    the_cli_manages_endpoints_end_to_end,
    reprocessing_in_bulk_goes_oldest_first_and_past_what_it_cannot_do,
    reprocessing_in_bulk_goes_past_a_request_the_database_refuses,
    a_settlement_reached_by_reprocessing_is_counted,
    every_first_delivery_waits_the_schedules_first_wait,
    a_backlog_longer_than_a_batch_is_held_recovered_and_cancelled_whole,
    an_endpoint_whose_source_left_the_configuration_can_be_disabled,
    a_request_is_not_reprocessed_by_another_providers_code,
    enabling_an_enabled_endpoint_keeps_how_long_it_has_been_failing,
);

async fn request(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app.http.request(method, app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn a_read_token_reads_and_only_an_admin_token_changes(backend: Backend) {
    let app = spawn_app(backend).await;
    // The scheme is case-insensitive; a missing space is no scheme at all.
    for (header, expected) in [
        (format!("BEARER {ADMIN_TOKEN}"), 200),
        (format!("bEaReR {ADMIN_TOKEN}"), 200),
        (format!("Bearer{ADMIN_TOKEN}"), 401),
        (format!("Basic {ADMIN_TOKEN}"), 401),
    ] {
        let response = app
            .http
            .get(app.url("/v1/sources"))
            .header("authorization", &header)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), expected, "{header}");
    }
    let (status, created) = app
        .admin_post("/v1/tokens", json!({ "name": "grafana", "scope": "read" }))
        .await;
    assert_eq!(status, 201, "{created}");
    let read = created["token"].as_str().unwrap().to_owned();
    assert!(read.starts_with("bh_"));
    let read_id = created["id"].as_str().unwrap().to_owned();
    let receiver = Receiver::ok().await;
    let url = format!("{}?token=query-credential", receiver.url);
    let (endpoint_id, _) = app
        .create_endpoint(json!({
            "url": url,
            "event_types": ["*"],
            "headers": { "Authorization": "Bearer subscriber-credential" },
        }))
        .await;

    use reqwest::Method;
    for path in ["/v1/events", "/v1/endpoints", "/v1/invoices", "/v1/sources"] {
        let (status, body) = request(&app, Method::GET, path, &read, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // An endpoint's headers are its subscriber's credentials: a read token sees their names.
    let (_, listed) = request(&app, Method::GET, "/v1/endpoints", &read, None).await;
    let (_, shown) = request(
        &app,
        Method::GET,
        &format!("/v1/endpoints/{endpoint_id}"),
        &read,
        None,
    )
    .await;
    // So may its URL's path and query be: a read token sees its origin.
    let origin = receiver.url.trim_end_matches("/hooks");
    for view in [&listed["data"][0], &shown] {
        assert_eq!(
            view["headers"],
            json!({ "Authorization": "[redacted]" }),
            "{view}"
        );
        assert_eq!(view["url"], json!(format!("{origin}/[redacted]")), "{view}");
    }
    assert!(!listed.to_string().contains("subscriber-credential"));
    assert!(!listed.to_string().contains("query-credential"));
    let (_, as_admin) = app.admin_get(&format!("/v1/endpoints/{endpoint_id}")).await;
    assert_eq!(as_admin["url"], json!(url), "an admin token sees it whole");
    // What a request needs is judged by its route: these are ledger lookups, not tokens.
    for path in ["/v1/invoices/tokens-2024", "/v1/payments/secret"] {
        let (status, body) = request(&app, Method::GET, path, &read, None).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/endpoints".to_owned(),
            Some(json!({ "url": receiver.url, "event_types": ["*"] })),
        ),
        (
            Method::GET,
            format!("/v1/endpoints/{endpoint_id}/secret"),
            None,
        ),
        (Method::DELETE, format!("/v1/endpoints/{endpoint_id}"), None),
        (Method::GET, "/v1/tokens".to_owned(), None),
        (
            Method::POST,
            "/v1/retention/prune".to_owned(),
            Some(json!({})),
        ),
    ] {
        let (status, body) = request(&app, method.clone(), &path, &read, body).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert_eq!(body["code"], json!("forbidden"));
    }

    // An admin token does everything the root token does.
    let (_, admin) = app
        .admin_post("/v1/tokens", json!({ "name": "ops", "scope": "admin" }))
        .await;
    let admin = admin["token"].as_str().unwrap().to_owned();
    let (status, _) = request(
        &app,
        Method::GET,
        &format!("/v1/endpoints/{endpoint_id}/secret"),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (_, shown) = request(
        &app,
        Method::GET,
        &format!("/v1/endpoints/{endpoint_id}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(
        shown["headers"],
        json!({ "Authorization": "Bearer subscriber-credential" })
    );

    // Listings never show a token, only its hint; revoking ends it.
    let (_, list) = app.admin_get("/v1/tokens").await;
    let listed = list.to_string();
    assert!(!listed.contains(&read) && !listed.contains(&admin));
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    let (status, _) = request(
        &app,
        Method::DELETE,
        &format!("/v1/tokens/{read_id}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, body) = request(&app, Method::GET, "/v1/events", &read, None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = request(
        &app,
        Method::DELETE,
        &format!("/v1/tokens/{read_id}"),
        &admin,
        None,
    )
    .await;
    assert_eq!((status, body["code"].clone()), (404, json!("not_found")));
    let (status, body) = app
        .admin_post("/v1/tokens", json!({ "name": "x", "scope": "root" }))
        .await;
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!("invalid_request"))
    );

    // The CLI: create, list, revoke.
    let (ok, printed) = app
        .cli(&[
            "token", "create", "--name", "ci", "--scope", "read", "--json",
        ])
        .await;
    assert!(ok, "{printed}");
    let created: Value = serde_json::from_str(&printed).unwrap();
    let id = created["id"].as_str().unwrap();
    let (ok, listed) = app.cli(&["token", "list"]).await;
    assert!(
        ok && listed.contains(id) && listed.contains("ci"),
        "{listed}"
    );
    assert!(!listed.contains(created["token"].as_str().unwrap()));
    let (ok, revoked) = app.cli(&["token", "revoke", id, "--json"]).await;
    assert!(ok, "{revoked}");
    let revoked: Value = serde_json::from_str(&revoked).unwrap();
    assert_eq!(revoked, json!({ "id": id, "revoked": true }));
    let (ok, listed) = app.cli(&["token", "list", "--json"]).await;
    assert!(ok);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let entry = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == json!(id))
        .unwrap();
    assert!(entry["revoked_at"].is_string());
    app.stop().await;
}

async fn metrics_count_ingest_verification_and_delivery(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::ok().await;
    let (endpoint, _) = app
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["payment.*"] }))
        .await;
    let response = app
        .post_signed("zwitch", &fixture("zwitch_upi/payments.updated.json"), &[])
        .await;
    assert_eq!(response.status().as_u16(), 200);
    let again = app
        .post_signed("zwitch", &fixture("zwitch_upi/payments.updated.json"), &[])
        .await;
    assert_eq!(again.status().as_u16(), 200);
    let forged = app
        .http
        .post(app.url("/ingest/razorpay"))
        .header("x-razorpay-signature", "00".repeat(32))
        .body(fixture("razorpay/invoice.paid.card.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 401);
    let unknown = app
        .http
        .post(app.url("/ingest/nowhere"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
    app.eventually(Duration::from_secs(10), "the delivery", || async {
        receiver.count() >= 1
    })
    .await;

    // No token needed, as for Prometheus scrapers.
    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let mut text = response.text().await.unwrap();
    // Delivery outcomes are counted as the attempt completes; wait for it.
    for _ in 0..100 {
        if text.contains("outcome=\"delivered\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = app.metrics().await;
    }
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    };
    expect(
        "billhook_ingest_requests_total{source=\"zwitch\",outcome=\"stored\"}",
        1.0,
    );
    expect(
        "billhook_ingest_requests_total{source=\"zwitch\",outcome=\"duplicate\"}",
        1.0,
    );
    expect(
        "billhook_ingest_requests_total{source=\"(unknown)\",outcome=\"rejected\"}",
        1.0,
    );
    expect(
        "billhook_verification_failures_total{source=\"razorpay\",code=\"invalid_signature\"}",
        1.0,
    );
    expect(
        &format!(
            "billhook_delivery_attempts_total{{endpoint=\"{endpoint}\",outcome=\"delivered\"}}"
        ),
        1.0,
    );
    expect(
        "billhook_ingest_duration_seconds_count{source=\"zwitch\"}",
        2.0,
    );
    expect(
        &format!("billhook_delivery_latency_seconds_count{{endpoint=\"{endpoint}\"}}"),
        1.0,
    );
    for gauge in [
        "billhook_pending_deliveries",
        "billhook_oldest_pending_delivery_age_seconds",
        "billhook_disabled_endpoints",
        "billhook_quarantined_requests",
    ] {
        assert!(sample(&text, gauge).is_some(), "{gauge} in\n{text}");
    }
    assert!(text.ends_with("# EOF\n"));
    app.stop().await;
}

async fn sources_show_traffic_and_verification_failures(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .post_signed("razorpay", &fixture("razorpay/invoice.paid.card.json"), &[])
        .await;
    assert_eq!(response.status().as_u16(), 202);
    let forged = app
        .http
        .post(app.url("/ingest/razorpay"))
        .header("x-razorpay-signature", "11".repeat(32))
        .body(fixture("razorpay/invoice.paid.card.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 401);
    let (status, list) = app.admin_get("/v1/sources").await;
    assert_eq!(status, 200);
    let sources = list["data"].as_array().unwrap();
    assert_eq!(sources.len(), app.config.sources.len());
    let razorpay = sources.iter().find(|s| s["name"] == "razorpay").unwrap();
    assert_eq!(razorpay["provider"], json!("razorpay"));
    assert_eq!(razorpay["auth"], json!("signature"));
    assert_eq!(razorpay["received_24h"], json!(1));
    assert_eq!(razorpay["verification_failures"], json!(1));
    assert_eq!(
        razorpay["last_verification_failure"]["code"],
        json!("invalid_signature")
    );
    assert!(razorpay["last_received_at"].is_string());
    let caminvoice = sources.iter().find(|s| s["name"] == "caminvoice").unwrap();
    assert_eq!(
        caminvoice["ingest_path"],
        json!("/ingest/caminvoice/{token}")
    );
    assert!(
        !list.to_string().contains(CAMINVOICE_TOKEN),
        "a path token is a credential"
    );
    let (ok, table) = app.cli(&["sources"]).await;
    assert!(ok, "{table}");
    assert!(
        table.contains("razorpay") && table.contains("invalid_signature"),
        "{table}"
    );
    app.stop().await;
}

/// A processed request from `source` received at `at`, as a test stores it before the server
/// starts.
fn seeded_request(source: &str, key: &str, at: Timestamp) -> NewInbound {
    NewInbound {
        id: InboundId::new_at(at),
        source: source.to_owned(),
        provider: "razorpay".to_owned(),
        received_at: at,
        status: InboundStatus::Processed,
        provider_event: Some("payment.captured".to_owned()),
        provider_event_id: Some(key.to_owned()),
        dedup_key: key.to_owned(),
        body_dedup_key: None,
        verification: "seeded".to_owned(),
        remote_addr: None,
        headers: Vec::new(),
        body: Bytes::from_static(b"{\"seeded\":true}"),
        error: None,
    }
}

/// A Razorpay `invoice.paid` that an older billhook quarantined and today's code processes, as
/// a test stores it before the server starts.
fn quarantined_invoice_paid(key: &str) -> NewInbound {
    NewInbound {
        status: InboundStatus::Quarantined,
        provider_event: None,
        provider_event_id: None,
        body: Bytes::from(fixture("razorpay/invoice.paid.upi.json")),
        error: Some(RecordedError {
            code: "unexpected_shape".to_owned(),
            message: "a provider change since fixed".to_owned(),
        }),
        ..seeded_request("razorpay", key, Timestamp::now())
    }
}

/// Stores requests and their events through the store itself, before the server starts.
async fn seed(backend: Backend, dir: &tempfile::TempDir, writes: Vec<(NewInbound, Vec<NewEvent>)>) {
    let store = Store::open(&database_in(backend, dir.path()).await)
        .await
        .unwrap();
    for (inbound, events) in writes {
        let dedup_expires_at = inbound.received_at.add(Duration::from_secs(8 * 86_400));
        store
            .ingest(IngestWrite {
                inbound,
                events,
                deliveries: Vec::new(),
                facts: Vec::new(),
                concluder: None,
                dedup_expires_at,
            })
            .await
            .unwrap();
    }
    store.close().await;
}

/// Stores messages received `days_ago`, before the server starts: the only way to have data
/// older than the retention window in a test.
async fn seed_old_messages(backend: Backend, dir: &tempfile::TempDir, count: usize, days_ago: u64) {
    let at = Timestamp::now().sub(Duration::from_secs(days_ago * 86_400));
    let writes = (0..count)
        .map(|n| {
            let id = EventId::new_at(at);
            let event = NewEvent {
                id,
                event_type: "payment.succeeded",
                source: "razorpay".to_owned(),
                subject_kind: "payment",
                subject_id: format!("pay_old{n}"),
                occurred_at: at,
                received_at: at,
                payload: Bytes::from(format!("{{\"id\":\"{id}\"}}")),
            };
            (
                seeded_request("razorpay", &format!("old-{n}"), at),
                vec![event],
            )
        })
        .collect();
    seed(backend, dir, writes).await;
}

async fn retention_previews_and_prunes_old_messages_on_request(backend: Backend) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    seed_old_messages(backend, &dir, 3, 40).await;
    let app = spawn_app_in(
        backend,
        Arc::clone(&dir),
        "[retention]\nmax_age = \"30d\"\nevery = \"1h\"\n",
    )
    .await;
    let response = app
        .post_signed("razorpay", &fixture("razorpay/invoice.paid.card.json"), &[])
        .await;
    assert_eq!(response.status().as_u16(), 202);
    // An announcement as old, filed under a message retention had already removed.
    let gone = InboundId::new_at(Timestamp::now().sub(Duration::from_secs(50 * 86_400)));
    assert_eq!(
        app.execute_sql(&format!(
            "UPDATE events SET inbound_id = '{gone}' WHERE subject_id = 'pay_old0'"
        ))
        .await,
        1
    );
    let (_, orphan) = app.admin_get("/v1/events?subject=pay_old0").await;
    assert_eq!(orphan["data"].as_array().unwrap().len(), 1);
    // A raw endpoint is sent the request behind an event, which this one no longer has.
    let (raw_endpoint, _) = app
        .create_endpoint(json!({
            "url": "http://127.0.0.1:9/hooks",
            "event_types": ["payment.*"],
            "format": "raw",
        }))
        .await;
    let orphan_id = orphan["data"][0]["id"].as_str().unwrap();
    let (status, refused) = app
        .admin_post(
            &format!("/v1/events/{orphan_id}/redeliver"),
            json!({ "endpoint_id": raw_endpoint }),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["code"], "invalid_request", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("the request behind event `evt_"),
        "{refused}"
    );
    assert!(
        refused["message"].as_str().unwrap().ends_with(
            "was removed by retention; redeliver it to an endpoint in the canonical format"
        ),
        "{refused}"
    );
    let (_, detail) = app.admin_get(&format!("/v1/events/{orphan_id}")).await;
    assert_eq!(detail["deliveries"], json!([]), "{detail}");

    let (ok, printed) = app.cli(&["prune", "--dry-run", "--json"]).await;
    assert!(ok, "{printed}");
    let preview: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(preview["max_age"], json!("30d"));
    assert_eq!(preview["would_remove"]["inbound"], json!(3));
    assert_eq!(preview["would_remove"]["events"], json!(3));
    assert_eq!(preview["would_remove"]["payload_bytes"], json!(3 * 15));
    let (ok, printed) = app.cli(&["prune", "--dry-run"]).await;
    assert!(
        ok && printed.contains("Would remove: 3 messages"),
        "{printed}"
    );
    let (_, inbound) = app.admin_get("/v1/inbound?limit=500").await;
    assert_eq!(
        inbound["data"].as_array().unwrap().len(),
        4,
        "a dry run removes nothing"
    );

    let (ok, printed) = app.cli(&["prune"]).await;
    assert!(ok && printed.contains("removed 3 messages"), "{printed}");
    let (_, orphan) = app.admin_get("/v1/events?subject=pay_old0").await;
    assert_eq!(orphan["data"], json!([]), "the announcement goes too");
    let (_, inbound) = app.admin_get("/v1/inbound?limit=500").await;
    assert_eq!(
        inbound["data"].as_array().unwrap().len(),
        1,
        "the recent one stays"
    );
    let (_, preview) = app.admin_get("/v1/retention").await;
    assert_eq!(preview["would_remove"]["inbound"], json!(0));
    app.stop().await;
}

/// A manual prune of a backlog does not hold a stop up: it ends after the batch under way,
/// answers with what it removed and that it is not complete, and the next run removes the rest.
async fn a_prune_on_request_stops_between_batches_when_billhook_stops(backend: Backend) {
    const OLD: u64 = 600;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    seed_old_messages(backend, &dir, OLD as usize, 31).await;
    let settings = "[retention]\nmax_age = \"30d\"\nevery = \"1h\"\nbatch = 1\n";
    let app = spawn_app_in(backend, Arc::clone(&dir), settings).await;
    let pruning = tokio::spawn({
        let request = app
            .http
            .post(app.url("/v1/retention/prune"))
            .bearer_auth(ADMIN_TOKEN);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
            response.json::<Value>().await.unwrap()
        }
    });
    app.eventually(Duration::from_secs(15), "the prune to begin", || async {
        let (_, preview) = app.admin_get("/v1/retention").await;
        preview["would_remove"]["inbound"].as_u64().unwrap() < OLD
    })
    .await;
    app.stop().await;
    let first = pruning.await.unwrap();
    assert_eq!(first["complete"], json!(false), "{first}");
    let removed = first["removed"]["inbound"].as_u64().unwrap();
    assert!(0 < removed && removed < OLD, "{first}");

    let app = spawn_app_in(backend, Arc::clone(&dir), settings).await;
    let (_, preview) = app.admin_get("/v1/retention").await;
    assert_eq!(preview["would_remove"]["inbound"], json!(OLD - removed));
    let (ok, printed) = app.cli(&["prune", "--json"]).await;
    assert!(ok, "{printed}");
    let rest: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(rest["complete"], json!(true), "{rest}");
    assert_eq!(rest["removed"]["inbound"], json!(OLD - removed));
    app.stop().await;
}

async fn retention_runs_in_the_background(backend: Backend) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    seed_old_messages(backend, &dir, 5, 31).await;
    let app = spawn_app_in(
        backend,
        Arc::clone(&dir),
        "[retention]\nmax_age = \"30d\"\nevery = \"1s\"\nbatch = 2\n",
    )
    .await;
    app.eventually(Duration::from_secs(15), "retention to run", || async {
        let (_, inbound) = app.admin_get("/v1/inbound?limit=500").await;
        inbound["data"].as_array().unwrap().is_empty()
    })
    .await;
    let text = app.metrics().await;
    assert_eq!(
        sample(&text, "billhook_pruned_total{kind=\"inbound\"}"),
        Some(5.0),
        "{text}"
    );
    app.stop().await;
}

async fn the_cli_manages_endpoints_end_to_end(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::ok().await;
    let (ok, printed) = app
        .cli(&[
            "endpoints",
            "create",
            &receiver.url,
            "--event-type",
            "invoice.*",
            "--event-type",
            "payment.succeeded",
            "--header",
            "X-Team: payments",
            "--rate-limit",
            "20",
            "--json",
        ])
        .await;
    assert!(ok, "{printed}");
    let created: Value = serde_json::from_str(&printed).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["headers"]["X-Team"], json!("payments"));

    let (ok, listed) = app.cli(&["endpoints", "list"]).await;
    assert!(
        ok && listed.contains(&id) && listed.contains("healthy"),
        "{listed}"
    );
    let (ok, shown) = app
        .cli(&["endpoints", "disable", &id, "--reason", "maintenance"])
        .await;
    assert!(ok && shown.contains("disabled: maintenance"), "{shown}");
    let (ok, shown) = app
        .cli(&["endpoints", "enable", &id, "--recover-since", "1h"])
        .await;
    assert!(ok && shown.contains("healthy"), "{shown}");
    let (ok, shown) = app
        .cli(&[
            "endpoints",
            "update",
            &id,
            "--description",
            "ledger service",
        ])
        .await;
    assert!(ok, "{shown}");
    let (_, endpoint) = app.admin_get(&format!("/v1/endpoints/{id}")).await;
    assert_eq!(endpoint["description"], json!("ledger service"));
    assert_eq!(endpoint["rate_limit"], json!(20));

    let (ok, old) = app.cli(&["endpoints", "secret", &id]).await;
    assert!(ok);
    let (ok, new) = app.cli(&["endpoints", "rotate-secret", &id]).await;
    assert!(
        ok && new.trim().starts_with("whsec_") && new.trim() != old.trim(),
        "{new}"
    );
    // Both sign while the rotation overlaps, and both are shown.
    let (ok, both) = app.cli(&["endpoints", "secret", &id]).await;
    let lines: Vec<&str> = both.lines().collect();
    assert!(ok && lines.len() == 2, "{both}");
    assert_eq!(lines[0], new.trim());
    assert!(
        lines[1].starts_with(&format!("{} (rotated out; signs until 20", old.trim())),
        "{both}"
    );
    let (ok, recovered) = app
        .cli(&["endpoints", "recover", &id, "--since", "2h", "--no-wait"])
        .await;
    assert!(
        ok && recovered.contains("recovering 0 deliveries"),
        "{recovered}"
    );
    let (ok, deleted) = app.cli(&["endpoints", "delete", &id, "--json"]).await;
    assert!(ok, "{deleted}");
    let deleted: Value = serde_json::from_str(&deleted).unwrap();
    assert_eq!(deleted, json!({ "id": id, "deleted": true }));
    let (status, _) = app.admin_get(&format!("/v1/endpoints/{id}")).await;
    assert_eq!(status, 404);
    let (ok, failed) = app.cli(&["endpoints", "show", &id]).await;
    assert!(!ok && failed.contains("not_found"), "{failed}");
    app.stop().await;
}

/// The admin token the local server generated into its data directory goes only to a local
/// server: pointed elsewhere, a client command asks for a token instead of sending that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stored_admin_token_goes_only_to_a_local_server() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("admin-token"),
        "bh_stored_token_of_this_machine\n",
    )
    .unwrap();
    let run = |url: &str| {
        let url = url.to_owned();
        let dir = dir.path().to_owned();
        async move {
            let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_billhook"))
                .args(["events", "list", "--url", &url])
                .env("BILLHOOK_DATA_DIR", &dir)
                .env_remove("BILLHOOK_ADMIN_TOKEN")
                .env_remove("BILLHOOK_URL")
                .current_dir(&dir)
                .output()
                .await
                .unwrap();
            String::from_utf8_lossy(&output.stderr).into_owned()
        }
    };
    // TEST-NET-1: nothing answers there, and nothing is sent.
    let elsewhere = run("http://192.0.2.1:9").await;
    assert!(elsewhere.contains("no admin token"), "{elsewhere}");
    // Nor the token of the configuration found in the data directory.
    std::fs::write(
        dir.path().join("billhook.toml"),
        "admin_token = \"bh_configured_token_of_this_machine\"\n",
    )
    .unwrap();
    let elsewhere = run("http://192.0.2.1:9").await;
    assert!(elsewhere.contains("no admin token"), "{elsewhere}");
    // A closed local port: the token would be sent, so the connection is tried.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let local = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let here = run(&local).await;
    assert!(here.contains("cannot reach billhook"), "{here}");
}

/// A `2xx` that is not JSON did not come from billhook's API: the command fails instead of
/// reporting nothing done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_command_answered_by_something_else_fails() {
    let not_billhook = Receiver::ok().await;
    // From an empty directory: nothing of this tree (a configuration, a data directory) is used.
    let away = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_billhook"))
            .args(args)
            .args(["--url", &not_billhook.url, "--token", "bh_any"])
            .env_remove("BILLHOOK_URL")
            .current_dir(away.path())
            .output()
    };
    let output = run(&["prune"]).await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("not billhook's JSON"), "{stderr}");
    assert_eq!(not_billhook.count(), 1);
    // Nor is a page that is not CSV written out as an export.
    let output = run(&["invoices", "--csv"]).await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("not billhook's CSV"), "{stderr}");
    assert!(output.stdout.is_empty());
}

/// A server that accepts the connection and then says nothing is reported after `--timeout`
/// rather than waited on for ever; a prune, which takes as long as there is data, waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_command_gives_up_on_a_server_that_does_not_answer() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            connections.push(connection);
        }
    });
    let away = tempfile::tempdir().unwrap();
    let command = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_billhook"));
        command
            .args(args)
            .args(["--url", &url, "--token", "bh_any", "--timeout", "1"])
            .env_remove("BILLHOOK_URL")
            .env_remove("BILLHOOK_CLIENT_TIMEOUT")
            .current_dir(away.path())
            .kill_on_drop(true);
        command
    };
    let started = std::time::Instant::now();
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        command(&["events", "list"]).output(),
    )
    .await
    .expect("gives up by itself")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot reach billhook at {url}: no answer within 1 s"
        )),
        "{stderr}"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    // The bench's admin requests to a running billhook (its receiver's endpoint) too.
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        command(&["bench", "--events", "10", "--warmup", "0"]).output(),
    )
    .await
    .expect("the bench gives up by itself")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("no answer within 1 s"), "{stderr}");
    let mut prune = command(&["prune"]).spawn().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        prune.try_wait().unwrap().is_none(),
        "a prune waits for its answer"
    );
    prune.kill().await.unwrap();
    held.abort();
}

/// The client commands read the data directory's configuration, as `serve` does: run where a
/// data directory's `billhook.toml` sets the admin token, they need no token of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_read_the_data_directory_s_configuration() {
    let app = spawn_app(Backend::Sqlite).await;
    let body = fixture("zwitch_upi/payments.updated.json");
    let response = app.post_signed("zwitch", &body, &[]).await;
    assert_eq!(response.status().as_u16(), 200);
    let stored: Value = response.json().await.unwrap();

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_billhook"))
        .args(["events", "list", "--json", "--url", &app.address])
        .env("BILLHOOK_DATA_DIR", app.dir.path())
        .env_remove("BILLHOOK_ADMIN_TOKEN")
        .env_remove("BILLHOOK_URL")
        .current_dir(tempfile::tempdir().unwrap().path())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let listed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listed["data"][0]["id"], stored["events"][0], "{listed}");
    app.stop().await;
}

/// `migrate` without `--config` migrates the database the data directory's configuration
/// names: the one `serve` there would open, not a new one beside it.
#[test]
fn migrate_migrates_the_database_the_data_directory_names() {
    let dir = tempfile::tempdir().unwrap();
    let named = dir.path().join("elsewhere/ledger.db");
    std::fs::write(
        dir.path().join("billhook.toml"),
        format!("database_url = \"sqlite://{}\"\n", named.display()),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_billhook"))
        .arg("migrate")
        .env("BILLHOOK_DATA_DIR", dir.path())
        .env_remove("BILLHOOK_DATABASE_URL")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(named.exists(), "{stderr}");
    assert!(
        !dir.path()
            .join(billhook_server::config::DATABASE_FILE)
            .exists(),
        "{stderr}"
    );
}

#[test]
fn completions_are_generated_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_billhook"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8(output.stdout).unwrap();
        assert!(script.contains("billhook"), "{shell}");
        assert!(
            script.contains("invoices") && script.contains("endpoints"),
            "{shell}"
        );
    }
}

/// Three verified Razorpay requests whose bodies are not JSON, quarantined; their ids, oldest
/// first.
async fn quarantine_three(app: &TestApp) -> Vec<String> {
    let mut quarantined = Vec::new();
    for n in 0..3 {
        let body = format!("not json {n}");
        let response = app.post_signed("razorpay", body.as_bytes(), &[]).await;
        assert_eq!(response.status().as_u16(), 202);
        let ack: Value = response.json().await.unwrap();
        quarantined.push(ack["inbound_id"].as_str().unwrap().to_owned());
    }
    quarantined
}

/// Reprocessing in bulk takes the quarantined requests that waited longest first, and goes past
/// one it cannot reprocess (its source is no longer configured) rather than failing the batch,
/// which would stop every later call at the same request.
async fn reprocessing_in_bulk_goes_oldest_first_and_past_what_it_cannot_do(backend: Backend) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let at = Timestamp::now().sub(Duration::from_secs(3600));
    let retired = NewInbound {
        status: InboundStatus::Quarantined,
        provider_event: None,
        provider_event_id: None,
        body: Bytes::from_static(b"not json"),
        error: Some(RecordedError {
            code: "invalid_json".to_owned(),
            message: "expected value".to_owned(),
        }),
        ..seeded_request("retired", "sha256:retired", at)
    };
    let retired_id = retired.id;
    seed(backend, &dir, vec![(retired, Vec::new())]).await;
    let app = spawn_app_in(backend, dir, "").await;
    let mut quarantined = vec![retired_id.to_string()];
    quarantined.extend(quarantine_three(&app).await);

    let (status, summary) = app
        .admin_post("/v1/inbound/reprocess", json!({ "limit": 2 }))
        .await;
    assert_eq!(status, 200, "{summary}");
    let results = summary["results"].as_array().unwrap();
    let ids: Vec<&str> = results.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [&quarantined[0], &quarantined[1]], "{summary}");
    assert_eq!(results[0]["outcome"], json!("skipped"), "{summary}");
    assert_eq!(results[0]["error"]["code"], json!("invalid_request"));
    assert_eq!(results[1]["outcome"], json!("quarantined"), "{summary}");
    assert_eq!(
        (summary["attempted"].clone(), summary["skipped"].clone()),
        (json!(2), json!(1))
    );
    // Those two keep failing, so without a cursor the next call would try them again; the
    // cursor goes on to the ones behind them, and is absent once nothing follows.
    assert_eq!(summary["next_cursor"], json!(quarantined[1]), "{summary}");
    let (status, rest) = app
        .admin_post(
            "/v1/inbound/reprocess",
            json!({ "limit": 2, "cursor": quarantined[1] }),
        )
        .await;
    assert_eq!(status, 200, "{rest}");
    let ids: Vec<&Value> = rest["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["id"])
        .collect();
    assert_eq!(
        ids,
        [&json!(quarantined[2]), &json!(quarantined[3])],
        "{rest}"
    );
    assert_eq!(rest["next_cursor"], Value::Null, "{rest}");
    let (status, refused) = app
        .admin_post("/v1/inbound/reprocess", json!({ "cursor": "evt_1" }))
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["code"], json!("invalid_cursor"), "{refused}");

    // Named, a source that is not configured is refused rather than answered with nothing done.
    for source in ["retired", "razorpya"] {
        let (status, refused) = app
            .admin_post("/v1/inbound/reprocess", json!({ "source": source }))
            .await;
        assert_eq!(status, 400, "{refused}");
        assert_eq!(refused["code"], json!("invalid_request"), "{refused}");
        assert!(
            refused["message"]
                .as_str()
                .unwrap()
                .contains("not a configured source"),
            "{refused}"
        );
    }

    let (status, summary) = app.admin_post("/v1/inbound/reprocess", json!({})).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["attempted"], json!(4), "{summary}");
    assert_eq!(summary["still_quarantined"], json!(3), "{summary}");
    let (_, record) = app.admin_get(&format!("/v1/inbound/{retired_id}")).await;
    assert_eq!(
        record["status"],
        json!("quarantined"),
        "kept for when its source is back"
    );

    // The CLI goes past it too.
    let (ok, printed) = app.cli(&["reprocess", "--json"]).await;
    assert!(ok, "{printed}");
    let results: Vec<Value> = serde_json::from_str(&printed).unwrap();
    assert_eq!(results.len(), 4, "{printed}");
    let skipped: Vec<&Value> = results
        .iter()
        .filter(|r| r["outcome"] == json!("skipped"))
        .collect();
    assert_eq!(skipped.len(), 1, "{printed}");
    assert_eq!(skipped[0]["id"], json!(retired_id.to_string()));
    assert_eq!(skipped[0]["error"]["code"], json!("invalid_request"));

    // Named ids: one that does not exist is skipped, and the ones after it are still done.
    // Neither it nor one still refused is success.
    let missing = "inb_01J00000000000000000000000";
    let (ok, printed) = app
        .cli(&["reprocess", missing, &quarantined[1], "--json"])
        .await;
    assert!(!ok, "a mistyped id is not success: {printed}");
    assert!(
        printed.contains(
            "2 of the named requests could not be reprocessed (1 skipped, 1 still quarantined)"
        ),
        "{printed}"
    );
    let json_part = &printed[..printed.rfind(']').unwrap() + 1];
    let results: Vec<Value> = serde_json::from_str(json_part).unwrap();
    let outcomes: Vec<&Value> = results.iter().map(|r| &r["outcome"]).collect();
    assert_eq!(
        outcomes,
        [&json!("skipped"), &json!("quarantined")],
        "{printed}"
    );
    assert_eq!(results[0]["error"]["code"], json!("not_found"), "{printed}");
    let (ok, printed) = app.cli(&["reprocess", &quarantined[1]]).await;
    assert!(
        !ok && printed.contains("0 skipped, 1 still quarantined"),
        "still refused is not success: {printed}"
    );
    let (ok, printed) = app
        .cli(&["reprocess", &quarantined[1], "--source", "razorpay"])
        .await;
    assert!(!ok && printed.contains("not both"), "{printed}");
    app.stop().await;
}

/// A request whose reprocessing the database refuses is reported `failed`, and the requests
/// after it are reprocessed all the same: stopping at it would stop every later call there.
async fn reprocessing_in_bulk_goes_past_a_request_the_database_refuses(backend: Backend) {
    let app = spawn_app(backend).await;
    let quarantined = quarantine_three(&app).await;
    let refused = &quarantined[0];
    match backend {
        Backend::Sqlite => {
            app.execute_sql(&format!(
                "CREATE TRIGGER refuse_one BEFORE UPDATE ON inbound WHEN OLD.id = '{refused}' \
                 BEGIN SELECT RAISE(ABORT, 'refused for the test'); END"
            ))
            .await;
        }
        Backend::Postgres => {
            app.execute_sql(
                "CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'refused for the test'; END $$",
            )
            .await;
            app.execute_sql(&format!(
                "CREATE TRIGGER refuse_one BEFORE UPDATE ON inbound FOR EACH ROW \
                 WHEN (OLD.id = '{refused}') EXECUTE FUNCTION refuse_one()"
            ))
            .await;
        }
    }

    let (status, summary) = app.admin_post("/v1/inbound/reprocess", json!({})).await;
    assert_eq!(status, 200, "{summary}");
    let outcomes: Vec<(&str, &str)> = summary["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (refused.as_str(), "failed"),
            (quarantined[1].as_str(), "quarantined"),
            (quarantined[2].as_str(), "quarantined"),
        ],
        "{summary}"
    );
    let failure = &summary["results"][0]["error"];
    assert_eq!(failure["code"], json!("internal"), "{summary}");
    assert!(
        !failure["message"]
            .as_str()
            .unwrap()
            .contains("refused for the test"),
        "the database's words stay in the log: {summary}"
    );
    assert_eq!(
        (
            summary["failed"].clone(),
            summary["still_quarantined"].clone()
        ),
        (json!(1), json!(2))
    );
    app.stop().await;
}

/// A quarantined message that today's code processes, and that settles its invoice, counts in
/// the ledger's conclusions as one received would.
async fn a_settlement_reached_by_reprocessing_is_counted(backend: Backend) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let stored = quarantined_invoice_paid("sha256:settles");
    let id = stored.id;
    seed(backend, &dir, vec![(stored, Vec::new())]).await;
    let app = spawn_app_in(backend, dir, "").await;
    let (status, reprocessed) = app
        .admin_post(&format!("/v1/inbound/{id}/reprocess"), json!({}))
        .await;
    assert_eq!(status, 200, "{reprocessed}");
    assert_eq!(reprocessed["outcome"], json!("processed"), "{reprocessed}");
    let text = app.metrics().await;
    assert!(
        text.contains("billhook_ledger_conclusions_total{type=\"invoice.settled\"} 1"),
        "{text}"
    );
    app.stop().await;
}

/// The retry schedule's first entry is the wait before every delivery's first attempt: those
/// of a received message, of a reprocessed one, and of the ledger's conclusions alike.
async fn every_first_delivery_waits_the_schedules_first_wait(backend: Backend) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    // Quarantined two hours ago: the wait runs from the reprocessing, not from the reception.
    let received_at = Timestamp::now().sub(Duration::from_secs(7200));
    let stored = NewInbound {
        id: InboundId::new_at(received_at),
        received_at,
        ..quarantined_invoice_paid("sha256:waits")
    };
    let id = stored.id;
    seed(backend, &dir, vec![(stored, Vec::new())]).await;
    let app = spawn_app_in(
        backend,
        dir,
        "[delivery]\nallow_private_destinations = [\"127.0.0.0/8\"]\n\
         retry_schedule = [\"1h\", \"1h\"]\njitter_percent = 0\n",
    )
    .await;
    let receiver = Receiver::ok().await;
    let (endpoint, _) = app
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    let planned_from = Timestamp::now();
    let (status, reprocessed) = app
        .admin_post(&format!("/v1/inbound/{id}/reprocess"), json!({}))
        .await;
    assert_eq!(status, 200, "{reprocessed}");
    assert_eq!(reprocessed["outcome"], json!("processed"), "{reprocessed}");
    let received = ingest_payments(&app, 1, "received").await;
    let (status, listed) = app
        .admin_get(&format!("/v1/endpoints/{endpoint}/deliveries"))
        .await;
    assert_eq!(status, 200, "{listed}");
    let deliveries = listed["data"].as_array().unwrap();
    let types: BTreeSet<&str> = deliveries
        .iter()
        .map(|d| d["event_type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains("invoice.paid") && types.contains("invoice.settled"),
        "the reprocessed message and the ledger's conclusion: {listed}"
    );
    assert!(
        deliveries
            .iter()
            .any(|d| d["message_id"] == json!(received[0])),
        "and the received payment: {listed}"
    );
    for delivery in deliveries {
        assert_eq!(delivery["status"], json!("pending"), "{delivery}");
        let due: Timestamp = serde_json::from_value(delivery["next_attempt_at"].clone()).unwrap();
        assert!(
            due.since(planned_from) >= Duration::from_secs(3600),
            "due an hour after it was planned: {delivery}"
        );
        // Made at the reprocessing, not two hours ago with the message: a recovery, and a
        // listing of what was made since, find the conclusion's deliveries too.
        let made: Timestamp = serde_json::from_value(delivery["created_at"].clone()).unwrap();
        assert!(made >= planned_from, "{delivery}");
    }
    let (status, since) = app
        .admin_get(&format!(
            "/v1/endpoints/{endpoint}/deliveries?since={planned_from}"
        ))
        .await;
    assert_eq!(status, 200, "{since}");
    assert_eq!(
        since["data"].as_array().unwrap().len(),
        deliveries.len(),
        "{since}"
    );
    assert_eq!(receiver.count(), 0);
    app.stop().await;
}

/// An endpoint down for long owes thousands of deliveries. Disabled, by a `410 Gone` or by an
/// operator, its whole backlog is held, a batch per write so that no one write holds the
/// database for all of it; recovered, all of it is sent; deleted, all of it is cancelled.
async fn a_backlog_longer_than_a_batch_is_held_recovered_and_cancelled_whole(backend: Backend) {
    let owed = u64::from(BACKLOG_BATCH) + 5;
    let gone = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let receiver = Receiver::start(Arc::new({
        let gone = Arc::clone(&gone);
        move |_| {
            let status = if gone.load(std::sync::atomic::Ordering::SeqCst) {
                410
            } else {
                200
            };
            (status, vec![], Some(Duration::ZERO))
        }
    }))
    .await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let since = Timestamp::now().sub(Duration::from_secs(1));
    let (gone_away, let_go) = {
        let store = Store::open(&database_in(backend, dir.path()).await)
            .await
            .unwrap();
        let mut endpoints = Vec::new();
        for (n, name) in ["gone-away", "let-go"].into_iter().enumerate() {
            let endpoint = store
                .create_endpoint(NewEndpoint {
                    id: EndpointId::new(),
                    name: None,
                    url: receiver.url.clone(),
                    description: name.to_owned(),
                    event_types: vec!["*".to_owned()],
                    sources: None,
                    format: "raw".to_owned(),
                    headers: Vec::new(),
                    rate_limit: None,
                    max_concurrency: None,
                    enabled: true,
                    secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
                    now: Timestamp::now(),
                })
                .await
                .unwrap();
            // One delivery due now (for the first endpoint, the attempt that finds it gone),
            // the rest in an hour.
            let request = seeded_request("razorpay", &format!("backlog-{n}"), Timestamp::now());
            let deliveries = (0..owed)
                .map(|i| NewDelivery {
                    id: DeliveryId::new(),
                    endpoint_id: endpoint.id,
                    message_id: request.id.to_string(),
                    event_id: None,
                    event_type: "payment.succeeded",
                    status: DeliveryStatus::Pending,
                    next_attempt_at: match (n, i) {
                        (0, 0) => Timestamp::now(),
                        _ => Timestamp::now().add(Duration::from_secs(3600)),
                    },
                    lease: None,
                })
                .collect();
            let dedup_expires_at = request.received_at.add(Duration::from_secs(86_400));
            store
                .ingest(IngestWrite {
                    inbound: request,
                    events: Vec::new(),
                    deliveries,
                    facts: Vec::new(),
                    concluder: None,
                    dedup_expires_at,
                })
                .await
                .unwrap();
            endpoints.push(endpoint);
        }
        store.close().await;
        let mut endpoints = endpoints.into_iter().map(|e: EndpointRecord| e.id);
        (endpoints.next().unwrap(), endpoints.next().unwrap())
    };
    let app = spawn_app_in(backend, Arc::clone(&dir), "").await;
    let stats = |endpoint: EndpointId| {
        let app = &app;
        async move {
            let (_, view) = app.admin_get(&format!("/v1/endpoints/{endpoint}")).await;
            view["stats"].clone()
        }
    };

    // Gone: disabled by its answer, and every delivery held.
    app.eventually(
        Duration::from_secs(20),
        "the whole backlog held",
        || async { stats(gone_away).await["held"] == json!(owed) },
    )
    .await;
    // Back: recovered, and every delivery sent.
    gone.store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, enabled) = app
        .admin_patch(
            &format!("/v1/endpoints/{gone_away}"),
            json!({ "enabled": true, "recover_since": since.to_rfc3339() }),
        )
        .await;
    assert_eq!(status, 200, "{enabled}");
    app.eventually(
        Duration::from_secs(60),
        "the whole backlog delivered",
        || async { stats(gone_away).await["delivered"] == json!(owed) },
    )
    .await;

    // Disabled by an operator, then deleted.
    let (status, disabled) = app
        .admin_patch(
            &format!("/v1/endpoints/{let_go}"),
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!(status, 200, "{disabled}");
    app.eventually(
        Duration::from_secs(20),
        "the whole backlog held",
        || async { stats(let_go).await["held"] == json!(owed) },
    )
    .await;
    let deleted = app
        .http
        .delete(app.url(&format!("/v1/endpoints/{let_go}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    // A deleted endpoint is not the API's to show any more: its deliveries left uncancelled
    // are counted by an update that changes nothing, locking in id order on PostgreSQL as
    // billhook does (in another order, the two could deadlock).
    let lock = match backend {
        Backend::Sqlite => "",
        Backend::Postgres => "ORDER BY id FOR UPDATE",
    };
    let left = format!(
        "UPDATE deliveries SET status = status WHERE id IN (SELECT id FROM deliveries
            WHERE endpoint_id = '{let_go}' AND status IN ('pending', 'failed', 'held') {lock})"
    );
    app.eventually(
        Duration::from_secs(20),
        "the whole backlog cancelled",
        || async { app.execute_sql(&left).await == 0 },
    )
    .await;
    app.stop().await;
}

/// `endpoints list` shows every endpoint, past the API's largest page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_every_endpoint_past_one_page() {
    const ENDPOINTS: usize = 501;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let store = Store::open(&database_in(Backend::Sqlite, dir.path()).await)
        .await
        .unwrap();
    // Created together, so they share the writer's commits.
    let mut creating = tokio::task::JoinSet::new();
    for n in 0..ENDPOINTS {
        let store = store.clone();
        creating.spawn(async move {
            store
                .create_endpoint(NewEndpoint {
                    id: EndpointId::new(),
                    name: None,
                    url: format!("https://subscriber.example/hooks/{n}"),
                    description: String::new(),
                    event_types: vec!["*".to_owned()],
                    sources: None,
                    format: "canonical".to_owned(),
                    headers: Vec::new(),
                    rate_limit: None,
                    max_concurrency: None,
                    enabled: true,
                    secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
                    now: Timestamp::now(),
                })
                .await
                .unwrap();
        });
    }
    creating.join_all().await;
    store.close().await;
    let app = spawn_app_in(Backend::Sqlite, dir, "").await;
    let (ok, printed) = app.cli(&["endpoints", "list", "--json"]).await;
    assert!(ok, "{printed}");
    let listed: Value = serde_json::from_str(&printed).unwrap();
    let urls: BTreeSet<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["url"].as_str().unwrap())
        .collect();
    assert_eq!(urls.len(), ENDPOINTS);
    let (ok, table) = app.cli(&["endpoints", "list"]).await;
    assert!(ok, "{table}");
    assert!(
        table.contains("/hooks/0 ") || table.contains("/hooks/0\n"),
        "{table:.300}"
    );
    app.stop().await;
}

/// An endpoint can name a source the configuration no longer has (it was removed and billhook
/// restarted); changing something else, disabling it say, does not require naming its sources
/// anew.
async fn an_endpoint_whose_source_left_the_configuration_can_be_disabled(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::ok().await;
    let (endpoint, _) = app
        .create_endpoint(
            json!({ "url": receiver.url, "event_types": ["*"], "sources": ["zwitch"] }),
        )
        .await;
    let changed = app
        .execute_sql(&format!(
            "UPDATE endpoints SET sources = '[\"zwitch-retired\"]' WHERE id = '{endpoint}'"
        ))
        .await;
    assert_eq!(changed, 1);
    let path = format!("/v1/endpoints/{endpoint}");
    let (status, view) = app.admin_patch(&path, json!({ "enabled": false })).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["enabled"], json!(false));
    let (status, refusal) = app
        .admin_patch(&path, json!({ "sources": ["zwitch-retired"] }))
        .await;
    assert_eq!(status, 400, "naming an unknown source is still refused");
    assert_eq!(refusal["code"], json!("invalid_request"));
    app.stop().await;
}

/// A start of a moment answers nothing meanwhile: a webhook sent as it starts waits to be
/// served and is acknowledged, rather than told to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_sent_during_a_quick_start_is_served() {
    let sent = std::time::Instant::now();
    let app = start_app_in(Backend::Sqlite, Arc::new(tempfile::tempdir().unwrap()), "").await;
    let webhook = app
        .post_signed("zwitch", &fixture("zwitch_upi/payments.updated.json"), &[])
        .await;
    // A start slower than 2 s (a loaded machine) may answer `503 starting`, but never sooner.
    let status = webhook.status().as_u16();
    assert!(
        status == 200 || (status == 503 && sent.elapsed() >= Duration::from_secs(2)),
        "{status} after {:?}",
        sent.elapsed()
    );
    app.stop().await;
}

/// While its database is not there yet, a starting server is alive (`/healthz`) but answers
/// everything else `503 starting` with a `Retry-After`, rather than leaving probes and webhooks
/// waiting on a port nobody accepts on. Once the database comes, it is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_server_says_so_until_its_database_comes() {
    // A stand-in for a database coming up: it hangs up on every connection until opened, then
    // forwards them to the test PostgreSQL.
    let url = fresh_postgres_url().await;
    let database = reqwest::Url::parse(&url).unwrap();
    let upstream = format!(
        "{}:{}",
        database.host_str().unwrap(),
        database.port().unwrap_or(5432)
    );
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxied = url.replacen(&upstream, &proxy.local_addr().unwrap().to_string(), 1);
    let (open, opened) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = proxy.accept().await {
            if !*opened.borrow() {
                continue;
            }
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    let dir = Arc::new(tempfile::tempdir().unwrap());
    std::fs::write(dir.path().join("database-url"), &proxied).unwrap();
    let app = start_app_in(Backend::Postgres, dir, "").await;

    let health = |expected: Value| {
        let app = &app;
        async move {
            let response = app.http.get(app.url("/healthz")).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
            assert_eq!(response.json::<Value>().await.unwrap(), expected);
        }
    };
    health(json!({ "status": "starting" })).await;
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    assert_eq!(ready.headers()["retry-after"], "5");
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["code"], json!("starting"), "{body}");
    let webhook = app
        .post_signed("zwitch", &fixture("zwitch_upi/payments.updated.json"), &[])
        .await;
    assert_eq!(webhook.status().as_u16(), 503);
    let (status, listing) = app.admin_get("/v1/events").await;
    assert_eq!((status, listing["code"].clone()), (503, json!("starting")));

    open.send_replace(true);
    app.eventually(
        Duration::from_secs(30),
        "ready once the database came",
        || async {
            app.http
                .get(app.url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await;
    health(json!({ "status": "ok" })).await;
    let webhook = app
        .post_signed("zwitch", &fixture("zwitch_upi/payments.updated.json"), &[])
        .await;
    assert_eq!(webhook.status().as_u16(), 200);
    app.stop().await;
}

/// The CLI reaches this machine's server directly, never through an `HTTP_PROXY`, which would
/// carry the admin token over plain HTTP to the proxy's host; and a blank token in the
/// environment (an env file's placeholder) is one not given, as `serve` takes it: the data
/// directory's token is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reaches_a_local_server_directly_and_takes_a_blank_token_as_none() {
    let app = spawn_app(Backend::Sqlite).await;
    std::fs::write(
        app.dir.path().join("admin-token"),
        format!("{ADMIN_TOKEN}\n"),
    )
    .unwrap();
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let proxied = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&proxied);
    let proxy_task = tokio::spawn(async move {
        while let Ok((connection, _)) = proxy.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(connection);
        }
    });
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_billhook"))
        .args(["sources", "--config"])
        .arg(app.dir.path().join("billhook.toml"))
        .args(["--url", &app.address])
        .env("BILLHOOK_ADMIN_TOKEN", "")
        .env("HTTP_PROXY", &proxy_url)
        .env("http_proxy", &proxy_url)
        .env("ALL_PROXY", &proxy_url)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .await
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("razorpay"), "{printed}");
    assert_eq!(
        proxied.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing went through the proxy"
    );
    proxy_task.abort();
    app.stop().await;
}

/// A source renamed to another provider keeps its old requests: reprocessing one would run
/// the new provider's code over a body the old provider signed (and it is not verified again),
/// so it is refused, one at a time and in bulk, and the request keeps its error.
async fn a_request_is_not_reprocessed_by_another_providers_code(backend: Backend) {
    let as_provider = |provider: &str, secret: &str| {
        format!("[[source]]\nname = \"pay\"\nprovider = \"{provider}\"\nsecrets = [\"{secret}\"]\n")
    };
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_app_in(
        backend,
        Arc::clone(&dir),
        &as_provider("razorpay", "pay-secret"),
    )
    .await;
    let response = app
        .post_signed(
            "pay",
            b"{\"event\": \"payment.captured\", \"payload\": {}}",
            &[],
        )
        .await;
    let ack: Value = response.json().await.unwrap();
    assert_eq!(ack["quarantined"], json!(true), "{ack}");
    let inbound = ack["inbound_id"].as_str().unwrap().to_owned();
    app.stop().await;

    let app = spawn_app_in(
        backend,
        Arc::clone(&dir),
        &as_provider("zwitch", "pay-secret"),
    )
    .await;
    let (status, refused) = app
        .admin_post(&format!("/v1/inbound/{inbound}/reprocess"), json!({}))
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("is now a zwitch source, and this request came from razorpay"),
        "{refused}"
    );
    let (status, summary) = app
        .admin_post("/v1/inbound/reprocess", json!({ "source": "pay" }))
        .await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(
        summary["results"][0]["outcome"],
        json!("skipped"),
        "{summary}"
    );
    let (_, record) = app.admin_get(&format!("/v1/inbound/{inbound}")).await;
    assert_eq!(record["status"], json!("quarantined"), "{record}");
    assert_eq!(record["provider"], json!("razorpay"), "{record}");
    // Nor does the console offer what would be refused.
    let (session, _) = crate::console::log_in(&app, ADMIN_TOKEN).await;
    let (_, page) = crate::console::get(&app, &session, "/quarantine").await;
    assert!(page.contains(&format!("/inbound/{inbound}")), "{page}");
    assert!(
        !page.contains(&format!("aria-label=\"Reprocess {inbound}\"")),
        "{page}"
    );
    app.stop().await;
}

/// Enabling an endpoint that is enabled (as a way to recover its failures) changes nothing of
/// its health: how long it has been failing, which its automatic disabling counts from, stays.
async fn enabling_an_enabled_endpoint_keeps_how_long_it_has_been_failing(backend: Backend) {
    let app = spawn_app(backend).await;
    let failing = Receiver::start(Arc::new(|_| (500, vec![], Some(Duration::ZERO)))).await;
    let (endpoint, _) = app
        .create_endpoint(json!({ "url": failing.url, "event_types": ["payment.*"] }))
        .await;
    app.post_signed("zwitch", &fixture("zwitch_upi/payments.updated.json"), &[])
        .await;
    let path = format!("/v1/endpoints/{endpoint}");
    app.eventually(Duration::from_secs(10), "the endpoint failing", || async {
        !app.admin_get(&path).await.1["failing_since"].is_null()
    })
    .await;
    let since = app.admin_get(&path).await.1["failing_since"].clone();
    let (status, patched) = app.admin_patch(&path, json!({ "enabled": true })).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["failing_since"], since, "{patched}");
    assert_eq!(app.admin_get(&path).await.1["failing_since"], since);
    app.stop().await;
}

/// Output that cannot be written (a full disk) fails the command and says why, so an export cut
/// short never looks like one done.
#[test]
fn output_that_cannot_be_written_fails_and_says_why() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_billhook"))
        .arg("openapi")
        .stdout(full)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("cannot write to standard output"), "{said}");
}
