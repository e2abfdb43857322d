//! Delivering to subscriber endpoints over real HTTP: signatures, retries, limits, the SSRF guard.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use billhook_core::signing::{EndpointSecret, verify};
use billhook_core::time::Timestamp;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend_tests;
use crate::helpers::*;

backend_tests!(
    a_recovery_the_endpoint_refuses_with_410_fails_the_waiting_command,
    a_waiting_recovery_waits_for_what_it_resent_not_for_live_traffic,
    a_healthy_receiver_gets_every_event_once_correctly_signed,
    a_receiver_failing_at_first_gets_everything_on_the_retry_schedule,
    gone_disables_the_endpoint_and_holds_its_deliveries,
    too_many_requests_with_retry_after_is_waited_out,
    a_rate_limit_of_ten_per_second_holds,
    a_rate_limit_holds_after_a_wait_for_concurrency,
    a_pause_asked_for_while_a_job_waits_for_concurrency_holds_it,
    attempts_in_flight_when_a_410_disables_the_endpoint_are_held,
    a_job_waiting_for_a_slot_when_a_410_disables_the_endpoint_is_held,
    a_delivery_claimed_again_during_its_attempt_is_sent_once,
    a_hanging_endpoint_does_not_slow_a_healthy_one,
    private_destinations_are_refused_at_creation,
    private_destinations_are_refused_at_delivery,
    a_declared_endpoint_whose_host_does_not_resolve_yet_does_not_stop_the_start,
    failures_without_a_status_are_named_by_kind,
    a_success_whose_answer_stalls_is_delivered,
    an_endpoints_headers_replace_the_defaults,
    raw_endpoints_get_the_provider_body_byte_for_byte,
    redeliver_and_recover_send_again,
    rotation_signs_with_both_secrets,
    dead_deliveries_stop_after_the_last_attempt,
    an_endpoints_deliveries_are_listed_by_status,
    retries_due_at_once_go_out_at_once,
    shutdown_lets_in_flight_attempts_finish,
    a_re_enabled_endpoint_starts_its_failing_time_afresh,
    a_job_whose_lease_lapsed_goes_out_only_under_its_new_claim,
    a_redelivery_leaves_a_disabled_endpoint_alone,
    a_delivery_left_pending_for_a_disabled_endpoint_is_held,
    a_delivery_left_pending_for_a_deleted_endpoint_is_cancelled,
    endpoints_created_together_each_get_the_next_event,
);

/// Posts every fixture; returns the acknowledged event ids.
async fn ingest_all_fixtures(app: &TestApp, tag: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for (index, (path, source)) in all_fixtures().into_iter().enumerate() {
        let response = app
            .post_signed(
                source,
                &fixture(&path),
                &[("x-razorpay-event-id", &format!("{tag}{index}"))],
            )
            .await;
        assert_eq!(response.status().as_u16(), ack_status(source));
        let ack: Value = response.json().await.unwrap();
        for id in ack["events"].as_array().unwrap() {
            ids.insert(id.as_str().unwrap().to_owned());
        }
    }
    ids
}

fn verifies(arrival: &Arrival, secret: &str) -> bool {
    let secret = EndpointSecret::parse(secret).unwrap();
    verify(
        &secret,
        arrival.header("webhook-id"),
        arrival.header("webhook-timestamp"),
        arrival.header("webhook-signature"),
        &arrival.body,
        Timestamp::now().unix_seconds(),
    )
    .is_ok()
}

async fn a_healthy_receiver_gets_every_event_once_correctly_signed(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::ok().await;
    let (_, secret) = app
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    let mut expected = ingest_all_fixtures(&app, "healthy").await;
    // The ledger's `invoice.settled` for the invoices the fixtures pay go out too.
    let (_, settled) = app.admin_get("/v1/events?type=invoice.settled").await;
    let settled = settled["data"].as_array().unwrap();
    assert!(!settled.is_empty());
    expected.extend(settled.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
    app.eventually(Duration::from_secs(10), "every event", || async {
        receiver.count() >= expected.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let arrivals = receiver.arrivals();
    assert_eq!(arrivals.len(), expected.len(), "each event exactly once");
    assert_eq!(receiver.message_ids(), expected);
    for arrival in &arrivals {
        assert!(
            verifies(arrival, &secret),
            "signature of {}",
            arrival.header("webhook-id")
        );
        assert_eq!(arrival.header("content-type"), "application/json");
        let event: Value = serde_json::from_slice(&arrival.body).unwrap();
        assert_eq!(event["id"].as_str().unwrap(), arrival.header("webhook-id"));
    }
    // The body is exactly the stored canonical event.
    let first = &arrivals[0];
    let text = app
        .admin_get_response("/v1/events?limit=500")
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains(std::str::from_utf8(&first.body).unwrap()));
    app.stop().await;
}

async fn a_receiver_failing_at_first_gets_everything_on_the_retry_schedule(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::start(Arc::new(|n| {
        let status = if n < 4 { 503 } else { 200 };
        (status, vec![], Some(Duration::ZERO))
    }))
    .await;
    let (endpoint, _) = app
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["payment.*"] }))
        .await;
    let expected: BTreeSet<String> = ingest_payments(&app, 4, "retry")
        .await
        .into_iter()
        .collect();
    app.eventually(
        Duration::from_secs(10),
        "every payment delivered",
        || async {
            let delivered: BTreeSet<String> = receiver
                .arrivals()
                .iter()
                .skip(4)
                .map(|a| a.header("webhook-id").to_owned())
                .collect();
            delivered == expected
        },
    )
    .await;
    // Each delivery: a 503 first, then a 200 no sooner than the schedule's 300 ms later.
    let arrivals = receiver.arrivals();
    for id in &expected {
        let times: Vec<_> = arrivals
            .iter()
            .filter(|a| a.header("webhook-id") == id)
            .map(|a| a.at)
            .collect();
        assert_eq!(times.len(), 2, "{id}: {times:?}");
        assert!(
            times[1] - times[0] >= Duration::from_millis(290),
            "{id} retried too soon"
        );
    }
    // The receiver notes an arrival before answering it; the attempt is recorded after the
    // answer, so wait for the records.
    app.eventually(Duration::from_secs(5), "every attempt recorded", || async {
        let (_, attempts) = app
            .admin_get(&format!("/v1/endpoints/{endpoint}/attempts?limit=100"))
            .await;
        attempts["data"].as_array().map_or(0, Vec::len) == 8
    })
    .await;
    let (_, attempts) = app
        .admin_get(&format!("/v1/endpoints/{endpoint}/attempts?limit=100"))
        .await;
    let statuses: Vec<u64> = attempts["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 4);
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 4);
    let attempt = &attempts["data"][0];
    assert_eq!(attempt["response_body"], json!("received"));
    assert!(attempt["duration_ms"].is_u64());
    // The event's timeline shows both attempts.
    let id = expected.iter().next().unwrap();
    let (_, detail) = app.admin_get(&format!("/v1/events/{id}")).await;
    let delivery = &detail["deliveries"][0];
    assert_eq!(delivery["status"], json!("delivered"));
    assert_eq!(delivery["attempt_count"], json!(2));
    assert_eq!(delivery["attempts"][0]["status_code"], json!(503));
    assert_eq!(delivery["attempts"][1]["status_code"], json!(200));
    app.stop().await;
}

async fn gone_disables_the_endpoint_and_holds_its_deliveries(backend: Backend) {
    let app = spawn_app(backend).await;
    let gone = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let switch = Arc::clone(&gone);
    let receiver = Receiver::start(Arc::new(move |_| {
        let status = if switch.load(Ordering::SeqCst) {
            410
        } else {
            200
        };
        (status, vec![], Some(Duration::ZERO))
    }))
    .await;
    let (endpoint, _) = app
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    ingest_payments(&app, 1, "gone").await;
    app.eventually(Duration::from_secs(5), "the endpoint disabled", || async {
        let (_, view) = app.admin_get(&format!("/v1/endpoints/{endpoint}")).await;
        view["enabled"] == json!(false)
    })
    .await;
    let (_, view) = app.admin_get(&format!("/v1/endpoints/{endpoint}")).await;
    assert_eq!(
        view["disabled_reason"],
        json!("the endpoint answered 410 Gone")
    );
    let later = ingest_payments(&app, 2, "gone-later").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        receiver.count(),
        1,
        "nothing more is sent to a gone endpoint"
    );
    let (_, detail) = app.admin_get(&format!("/v1/events/{}", later[0])).await;
    assert_eq!(detail["deliveries"][0]["status"], json!("held"));
    let (_, view) = app.admin_get(&format!("/v1/endpoints/{endpoint}")).await;
    assert_eq!(view["stats"]["held"], json!(3));

    // Fixed: re-enabling with recover_since delivers the backlog.
    gone.store(false, Ordering::SeqCst);
    let since = Timestamp::now().sub(Duration::from_secs(60)).to_rfc3339();
    let (status, view) = app
        .admin_patch(
            &format!("/v1/endpoints/{endpoint}"),
            json!({ "enabled": true, "recover_since": since }),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["enabled"], json!(true));
    assert_eq!(view["disabled_reason"], Value::Null);
    app.eventually(Duration::from_secs(5), "the backlog delivered", || async {
        let (_, view) = app.admin_get(&format!("/v1/endpoints/{endpoint}")).await;
        view["stats"]["delivered"] == json!(3)
    })
    .await;
    app.stop().await;
}

async fn too_many_requests_with_retry_after_is_waited_out(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::start(Arc::new(|n| {
        if n == 0 {
            (
                429,
                vec![("retry-after", "2".to_owned())],
                Some(Duration::ZERO),
            )
        } else {
            (200, vec![], Some(Duration::ZERO))
        }
    }))
    .await;
    app.create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    ingest_payments(&app, 1, "limited").await;
    app.eventually(Duration::from_secs(6), "the retry", || async {
        receiver.count() >= 2
    })
    .await;
    let arrivals = receiver.arrivals();
    let waited = arrivals[1].at - arrivals[0].at;
    assert!(
        waited >= Duration::from_millis(1950),
        "waited only {waited:?}"
    );
    assert!(waited < Duration::from_secs(4), "waited {waited:?}");
    app.stop().await;
}

async fn a_rate_limit_of_ten_per_second_holds(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::ok().await;
    app.create_endpoint(json!({ "url": receiver.url, "event_types": ["*"], "rate_limit": 10 }))
        .await;
    ingest_payments(&app, 70, "rate").await;
    app.eventually(
        Duration::from_secs(12),
        "five seconds of deliveries",
        || async {
            let arrivals = receiver.arrivals();
            arrivals
                .first()
                .is_some_and(|first| first.at.elapsed() > Duration::from_millis(5200))
        },
    )
    .await;
    let arrivals = receiver.arrivals();
    let start = arrivals[0].at;
    let in_five_seconds = arrivals
        .iter()
        .filter(|a| a.at - start < Duration::from_secs(5))
        .count();
    assert!(
        (45..=55).contains(&in_five_seconds),
        "{in_five_seconds} in 5 s at 10/s"
    );
    app.stop().await;
}

/// The rate limit counts from when a request goes out: a job that waited for a concurrency slot
/// behind a slow answer must not go out together with the one after it.
async fn a_rate_limit_holds_after_a_wait_for_concurrency(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::start(Arc::new(|index| {
        let delay = if index == 0 { 1200 } else { 0 };
        (200, vec![], Some(Duration::from_millis(delay)))
    }))
    .await;
    app.create_endpoint(json!({
        "url": receiver.url,
        "event_types": ["*"],
        "rate_limit": 2,
        "max_concurrency": 1,
    }))
    .await;
    ingest_payments(&app, 4, "slow-first").await;
    app.eventually(Duration::from_secs(10), "four arrivals", || async {
        receiver.count() >= 4
    })
    .await;
    let arrivals = receiver.arrivals();
    for pair in arrivals.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(450),
            "two requests {gap:?} apart at 2 a second"
        );
    }
    app.stop().await;
}

/// A `429` with `Retry-After` pauses the endpoint for every job, the one already waiting for a
/// concurrency slot behind it included.
async fn a_pause_asked_for_while_a_job_waits_for_concurrency_holds_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::start(Arc::new(|index| {
        if index == 0 {
            let wait = vec![("retry-after", "2".to_owned())];
            (429, wait, Some(Duration::from_millis(800)))
        } else {
            (200, vec![], Some(Duration::ZERO))
        }
    }))
    .await;
    app.create_endpoint(json!({
        "url": receiver.url,
        "event_types": ["*"],
        "max_concurrency": 1,
    }))
    .await;
    ingest_payments(&app, 2, "paused").await;
    app.eventually(Duration::from_secs(10), "the second arrival", || async {
        receiver.count() >= 2
    })
    .await;
    let arrivals = receiver.arrivals();
    let waited = arrivals[1].at - arrivals[0].at;
    // 800 ms for the answer, then the 2 s it asked for.
    assert!(
        waited >= Duration::from_millis(2700),
        "the next request went out {waited:?} after the first"
    );
    app.stop().await;
}

/// Attempts in flight when one of them disables the endpoint (a `410`) and that then fail are
/// held with the rest of the endpoint's deliveries, for a recover: not left as retrying, which
/// nothing would do while it is disabled.
async fn attempts_in_flight_when_a_410_disables_the_endpoint_are_held(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::start(Arc::new(|index| {
        if index == 0 {
            (410, vec![], Some(Duration::from_millis(100)))
        } else {
            (503, vec![], Some(Duration::from_millis(700)))
        }
    }))
    .await;
    let (endpoint, _) = app
        .create_endpoint(json!({
            "url": receiver.url,
            "event_types": ["*"],
            "max_concurrency": 4,
        }))
        .await;
    let ids = ingest_payments(&app, 3, "in-flight").await;
    app.eventually(
        Duration::from_secs(10),
        "every attempt recorded",
        || async {
            let (_, view) = app.admin_get(&format!("/v1/endpoints/{endpoint}")).await;
            view["enabled"] == json!(false) && view["stats"]["held"] == json!(3)
        },
    )
    .await;
    for id in &ids {
        let (_, detail) = app.admin_get(&format!("/v1/events/{id}")).await;
        assert_eq!(detail["deliveries"][0]["status"], json!("held"), "{detail}");
    }
    assert_eq!(receiver.count(), 3, "each sent once, none retried");
    app.stop().await;
}

/// At its concurrency cap, an endpoint's next job waits for the attempt before it. When that
/// attempt's 410 disables the endpoint, the waiting job is held, not sent to the endpoint
/// that just said it is gone.
async fn a_job_waiting_for_a_slot_when_a_410_disables_the_endpoint_is_held(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::start(Arc::new(|index| {
        if index == 0 {
            (410, vec![], Some(Duration::from_millis(300)))
        } else {
            (200, vec![], Some(Duration::ZERO))
        }
    }))
    .await;
    let (endpoint, _) = app
        .create_endpoint(json!({
            "url": receiver.url,
            "event_types": ["*"],
            "max_concurrency": 1,
        }))
        .await;
    let ids = ingest_payments(&app, 2, "waiting").await;
    app.eventually(Duration::from_secs(10), "both held", || async {
        let (_, view) = app.admin_get(&format!("/v1/endpoints/{endpoint}")).await;
        view["enabled"] == json!(false) && view["stats"]["held"] == json!(2)
    })
    .await;
    // Long enough for a job sent after the 410 to have arrived.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 1, "only the attempt that was told 410");
    for id in &ids {
        let (_, detail) = app.admin_get(&format!("/v1/events/{id}")).await;
        assert_eq!(detail["deliveries"][0]["status"], json!("held"), "{detail}");
    }
    app.stop().await;
}

async fn a_hanging_endpoint_does_not_slow_a_healthy_one(backend: Backend) {
    // Attempts to the hanging endpoint last 10 s: served behind them, the healthy one would be
    // served after, not within 6 s, however busy the machine running the tests.
    let delivery = TEST_DELIVERY
        .replace("request_timeout = \"3s\"", "request_timeout = \"10s\"")
        .replace("lease = \"5s\"", "lease = \"15s\"");
    assert_ne!(delivery, TEST_DELIVERY);
    let app = spawn_app_with(backend, &delivery).await;
    let hanging = Receiver::start(Arc::new(|_| (200, vec![], None))).await;
    let healthy = Receiver::ok().await;
    app.create_endpoint(json!({ "url": hanging.url, "event_types": ["*"], "max_concurrency": 2 }))
        .await;
    app.create_endpoint(json!({ "url": healthy.url, "event_types": ["*"] }))
        .await;
    let started = std::time::Instant::now();
    let ids = ingest_payments(&app, 20, "hang").await;
    app.eventually(
        Duration::from_secs(6),
        "the healthy endpoint served",
        || async { healthy.count() >= ids.len() },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(6));
    assert!(
        hanging.count() <= 2,
        "the hanging endpoint's concurrency cap holds"
    );
    app.stop().await;
}

async fn private_destinations_are_refused_at_creation(backend: Backend) {
    let app = spawn_app_with(backend, "[delivery]\n").await;
    let receiver = Receiver::ok().await;
    let localhost = receiver.url.replace("127.0.0.1", "localhost");
    for (url, words) in [
        ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
        ("http://10.0.0.1/hooks", "private"),
        (localhost.as_str(), "loopback"),
        ("http://[::1]:9/", "loopback"),
    ] {
        let (status, body) = app
            .admin_post("/v1/endpoints", json!({ "url": url, "event_types": ["*"] }))
            .await;
        assert_eq!(status, 400, "{url}");
        assert_eq!(body["code"], json!("invalid_request"));
        assert!(
            body["message"].as_str().unwrap().contains(words),
            "{url}: {body}"
        );
    }
    app.stop().await;
}

async fn private_destinations_are_refused_at_delivery(backend: Backend) {
    // Endpoints created while private destinations were allowed…
    let receiver = Receiver::ok().await;
    let first = spawn_app(backend).await;
    let by_name = receiver.url.replace("127.0.0.1", "localhost");
    let (named, _) = first
        .create_endpoint(json!({ "url": by_name, "event_types": ["*"] }))
        .await;
    let (literal, _) = first
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    let dir = Arc::clone(&first.dir);
    first.stop().await;
    // …are refused at connect time once the allow-list is gone.
    let app = spawn_app_in(
        backend,
        dir,
        "[delivery]\nretry_schedule = [\"0s\", \"5s\"]\nrequest_timeout = \"2s\"\nlease = \"5s\"\n",
    )
    .await;
    ingest_payments(&app, 1, "ssrf").await;
    for endpoint in [&named, &literal] {
        app.eventually(Duration::from_secs(5), "a refused attempt", || async {
            let (_, attempts) = app
                .admin_get(&format!("/v1/endpoints/{endpoint}/attempts"))
                .await;
            attempts["data"][0]["error_kind"] == json!("ssrf_refused")
        })
        .await;
        let (_, attempts) = app
            .admin_get(&format!("/v1/endpoints/{endpoint}/attempts"))
            .await;
        assert!(
            attempts["data"][0]["error_message"]
                .as_str()
                .unwrap()
                .contains("loopback")
        );
    }
    assert_eq!(receiver.count(), 0, "nothing reached the loopback receiver");
    app.stop().await;
}

/// A subscriber's DNS failing while billhook starts does not stop providers' webhooks from
/// being received: the endpoint is declared all the same, and its attempts fail, with the
/// reason, until its host resolves.
async fn a_declared_endpoint_whose_host_does_not_resolve_yet_does_not_stop_the_start(
    backend: Backend,
) {
    let app = spawn_app_with(
        backend,
        "[[endpoint]]\nname = \"ledger\"\nurl = \"http://ledger.billhook-test.invalid/hooks\"\nevent_types = [\"*\"]\n",
    )
    .await;
    let (status, listed) = app.admin_get("/v1/endpoints").await;
    assert_eq!(status, 200, "{listed}");
    let endpoint = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == json!("ledger"))
        .unwrap_or_else(|| panic!("the declared endpoint: {listed}"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ingest_payments(&app, 1, "unresolved").await;
    app.eventually(Duration::from_secs(5), "an attempt refused", || async {
        let (_, attempts) = app
            .admin_get(&format!("/v1/endpoints/{endpoint}/attempts"))
            .await;
        attempts["data"][0]["error_kind"] == json!("dns")
    })
    .await;
    app.stop().await;
}

async fn failures_without_a_status_are_named_by_kind(backend: Backend) {
    let app = spawn_app_with(
        backend,
        "[delivery]\nallow_private_destinations = [\"127.0.0.0/8\"]\nretry_schedule = [\"0s\", \"60s\"]\nrequest_timeout = \"3s\"\nconnect_timeout = \"3s\"\n",
    )
    .await;
    // A port held for the whole test without listening: connections to it are refused.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = held.local_addr().unwrap();
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_address = silent.local_addr().unwrap();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
        }
    });
    // Speaks plain HTTP to a client that expects TLS.
    let plain = Receiver::ok().await;
    let plain_as_https = plain.url.replace("http://", "https://");
    let mut endpoints = Vec::new();
    for (url, kind) in [
        (format!("http://{closed}/hooks"), "connect"),
        (format!("http://{silent_address}/hooks"), "timeout"),
        (plain_as_https, "tls"),
    ] {
        let (id, _) = app
            .create_endpoint(json!({ "url": url, "event_types": ["*"] }))
            .await;
        endpoints.push((id, url, kind));
    }
    ingest_payments(&app, 1, "kinds").await;
    for (id, url, kind) in &endpoints {
        app.eventually(Duration::from_secs(10), "a failed attempt", || async {
            let (_, attempts) = app.admin_get(&format!("/v1/endpoints/{id}/attempts")).await;
            !attempts["data"][0]["error_kind"].is_null()
        })
        .await;
        let (_, attempts) = app.admin_get(&format!("/v1/endpoints/{id}/attempts")).await;
        let attempt = &attempts["data"][0];
        assert_eq!(attempt["error_kind"], json!(kind), "{url}: {attempt}");
        assert!(attempt["status_code"].is_null(), "{url}: {attempt}");
        assert!(
            !attempt["error_message"].as_str().unwrap().is_empty(),
            "{url}: {attempt}"
        );
    }
    assert_eq!(
        plain.count(),
        0,
        "no request reached the plain server as HTTP"
    );
    app.stop().await;
}

/// A receiver that answered 200 has the event, even if the rest of its answer never comes: the
/// attempt ends at the request timeout with the status it got, and nothing is sent again.
async fn a_success_whose_answer_stalls_is_delivered(backend: Backend) {
    let app = spawn_app_with(
        backend,
        "[delivery]\nallow_private_destinations = [\"127.0.0.0/8\"]\nretry_schedule = [\"0s\", \"500ms\"]\njitter_percent = 0\nrequest_timeout = \"1s\"\nlease = \"5s\"\n",
    )
    .await;
    let stalling = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = stalling.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let _stalling = tokio::spawn({
        let requests = Arc::clone(&requests);
        async move {
            let mut held = Vec::new();
            while let Ok((mut connection, _)) = stalling.accept().await {
                requests.fetch_add(1, Ordering::SeqCst);
                let mut head = vec![0; 64 * 1024];
                let _ = connection.read(&mut head).await;
                connection
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npartial")
                    .await
                    .unwrap();
                held.push(connection);
            }
        }
    });
    let (endpoint, _) = app
        .create_endpoint(json!({ "url": format!("http://{address}/hooks"), "event_types": ["*"] }))
        .await;
    let ids = ingest_payments(&app, 1, "stalled").await;
    app.eventually(Duration::from_secs(10), "the attempt recorded", || async {
        let (_, detail) = app.admin_get(&format!("/v1/events/{}", ids[0])).await;
        detail["deliveries"][0]["attempt_count"] == json!(1)
    })
    .await;
    let (_, detail) = app.admin_get(&format!("/v1/events/{}", ids[0])).await;
    assert_eq!(
        detail["deliveries"][0]["status"],
        json!("delivered"),
        "{detail}"
    );
    let (_, attempts) = app
        .admin_get(&format!("/v1/endpoints/{endpoint}/attempts"))
        .await;
    let attempt = &attempts["data"][0];
    assert_eq!(attempt["status_code"], json!(200), "{attempt}");
    assert!(attempt["error_kind"].is_null(), "{attempt}");
    assert_eq!(attempt["response_body"], json!("partial"), "{attempt}");
    // Past when a retry would have gone, had the attempt been taken for a timeout.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    app.stop().await;
}

async fn an_endpoints_headers_replace_the_defaults(backend: Backend) {
    let app = spawn_app(backend).await;
    let plain = Receiver::ok().await;
    let custom = Receiver::ok().await;
    app.create_endpoint(json!({ "url": plain.url, "event_types": ["*"] }))
        .await;
    app.create_endpoint(json!({
        "url": custom.url,
        "event_types": ["*"],
        "headers": { "User-Agent": "ledger-service/2", "X-Team": "payments" },
    }))
    .await;
    ingest_payments(&app, 1, "headers").await;
    app.eventually(Duration::from_secs(5), "both endpoints served", || async {
        plain.count() >= 1 && custom.count() >= 1
    })
    .await;
    let values = |arrival: &Arrival, name: &str| -> Vec<String> {
        arrival
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    let plain_url = plain.url.clone();
    let plain = &plain.arrivals()[0];
    let user_agent = values(plain, "user-agent");
    assert!(
        user_agent.len() == 1 && user_agent[0].starts_with("billhook/"),
        "{user_agent:?}"
    );
    assert_eq!(values(plain, "accept"), ["*/*"]);
    let custom = &custom.arrivals()[0];
    assert_eq!(values(custom, "user-agent"), ["ledger-service/2"]);
    assert_eq!(values(custom, "x-team"), ["payments"]);

    // Headers billhook sets, or that speak of the connection, are not an endpoint's to set.
    for name in [
        "webhook-signature",
        "Content-Length",
        "Upgrade",
        "TE",
        "Expect",
    ] {
        let (status, body) = app
            .admin_post(
                "/v1/endpoints",
                json!({ "url": plain_url, "event_types": ["*"], "headers": { name: "x" } }),
            )
            .await;
        assert_eq!(status, 400, "{name}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("cannot be set"),
            "{body}"
        );
    }
    app.stop().await;
}

async fn raw_endpoints_get_the_provider_body_byte_for_byte(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::ok().await;
    let (_, secret) = app
        .create_endpoint(
            json!({ "url": receiver.url, "event_types": ["invoice.paid"], "format": "raw" }),
        )
        .await;
    let body = fixture("razorpay/invoice.paid.netbanking.json");
    let response = app
        .post_signed("razorpay", &body, &[("x-razorpay-event-id", "raw-1")])
        .await;
    let ack: Value = response.json().await.unwrap();
    app.eventually(Duration::from_secs(5), "the raw delivery", || async {
        receiver.count() >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let arrivals = receiver.arrivals();
    assert_eq!(arrivals.len(), 1, "one raw delivery per provider message");
    let arrival = &arrivals[0];
    assert_eq!(arrival.body, body, "the provider's bytes, unchanged");
    assert_eq!(
        arrival.header("webhook-id"),
        ack["inbound_id"].as_str().unwrap()
    );
    assert_eq!(arrival.header("billhook-provider-event"), "invoice.paid");
    assert_eq!(arrival.header("billhook-provider"), "razorpay");
    assert_eq!(arrival.header("billhook-source"), "razorpay");
    assert!(verifies(arrival, &secret));
    app.stop().await;
}

async fn redeliver_and_recover_send_again(backend: Backend) {
    let app = spawn_app(backend).await;
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let switch = Arc::clone(&failing);
    let receiver = Receiver::start(Arc::new(move |_| {
        let status = if switch.load(Ordering::SeqCst) {
            500
        } else {
            200
        };
        (status, vec![], Some(Duration::ZERO))
    }))
    .await;
    let (endpoint, _) = app
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    let ids = ingest_payments(&app, 2, "recover").await;
    // Five attempts each at 300 ms apart: both die.
    app.eventually(Duration::from_secs(10), "both deliveries dead", || async {
        let (_, view) = app.admin_get(&format!("/v1/endpoints/{endpoint}")).await;
        view["stats"]["dead"] == json!(2)
    })
    .await;
    assert_eq!(receiver.count(), 10);
    failing.store(false, Ordering::SeqCst);
    let since = Timestamp::now().sub(Duration::from_secs(60)).to_rfc3339();
    let (status, recovered) = app
        .admin_post(
            &format!("/v1/endpoints/{endpoint}/recover"),
            json!({ "since": since }),
        )
        .await;
    assert_eq!((status, recovered["recovered"].clone()), (200, json!(2)));
    app.eventually(Duration::from_secs(5), "recovered deliveries", || async {
        let (_, view) = app.admin_get(&format!("/v1/endpoints/{endpoint}")).await;
        view["stats"]["delivered"] == json!(2)
    })
    .await;
    // Redelivering a delivered event sends it once more, with the same webhook-id.
    let before = receiver.count();
    let (status, redelivered) = app
        .admin_post(&format!("/v1/events/{}/redeliver", ids[0]), json!({}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(redelivered["deliveries"].as_array().unwrap().len(), 1);
    app.eventually(Duration::from_secs(5), "the redelivery", || async {
        receiver.count() > before
    })
    .await;
    assert_eq!(
        receiver.arrivals().last().unwrap().header("webhook-id"),
        ids[0]
    );
    app.stop().await;
}

/// `billhook endpoints recover` waits for the deliveries it resent, however much other traffic
/// the endpoint delivers meanwhile (counting every delivery that finished, it ended while the
/// resent ones were still being sent), and not for older ones it did not resend.
async fn a_waiting_recovery_waits_for_what_it_resent_not_for_live_traffic(backend: Backend) {
    let app = spawn_app(backend).await;
    // Ten failed attempts (two deliveries, five each), then the two resent, slow; then live
    // traffic, answered at once.
    let receiver = Receiver::start(Arc::new(|arrival| match arrival {
        0..10 => (500, vec![], Some(Duration::ZERO)),
        10..12 => (200, vec![], Some(Duration::from_secs(2))),
        _ => (200, vec![], Some(Duration::ZERO)),
    }))
    .await;
    let (endpoint, _) = app
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    // Held while the endpoint was disabled, and left held when it was enabled again.
    let path = format!("/v1/endpoints/{endpoint}");
    let switch = |enabled: bool| app.admin_patch(&path, json!({ "enabled": enabled }));
    assert_eq!(switch(false).await.0, 200);
    let older = ingest_payments(&app, 1, "older").await;
    assert_eq!(switch(true).await.0, 200);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = Timestamp::now().to_rfc3339();
    let resent = ingest_payments(&app, 2, "resent").await;
    app.eventually(Duration::from_secs(10), "both deliveries dead", || async {
        let (_, view) = app.admin_get(&format!("/v1/endpoints/{endpoint}")).await;
        view["stats"]["dead"] == json!(2)
    })
    .await;
    let command = ["endpoints", "recover", &endpoint, "--since", &since];
    let waiting = async {
        tokio::time::timeout(Duration::from_secs(30), app.cli(&command))
            .await
            .expect("the command ends once what it resent is delivered")
    };
    let (recovery, ()) = tokio::join!(waiting, async {
        app.eventually(
            Duration::from_secs(10),
            "the resent deliveries out",
            || async { receiver.count() == 12 },
        )
        .await;
        ingest_payments(&app, 3, "live").await;
        app.eventually(Duration::from_secs(5), "the live deliveries", || async {
            receiver.count() == 15
        })
        .await;
    });
    let (ok, printed) = recovery;
    assert!(ok, "{printed}");
    for event in &resent {
        let (_, view) = app.admin_get(&format!("/v1/events/{event}")).await;
        assert_eq!(
            view["deliveries"][0]["status"],
            json!("delivered"),
            "the command ended before what it resent was delivered: {view}"
        );
    }
    let (_, view) = app.admin_get(&format!("/v1/events/{}", older[0])).await;
    assert_eq!(view["deliveries"][0]["status"], json!("held"), "{view}");
    app.stop().await;
}

/// `billhook endpoints recover` waits for what it resent; an endpoint that answers `410 Gone`
/// is disabled with the deliveries still waiting, and the command says so and fails.
async fn a_recovery_the_endpoint_refuses_with_410_fails_the_waiting_command(backend: Backend) {
    let app = spawn_app(backend).await;
    let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let switch = Arc::clone(&gone);
    let receiver = Receiver::start(Arc::new(move |_| {
        let status = if switch.load(Ordering::SeqCst) {
            410
        } else {
            500
        };
        (status, vec![], Some(Duration::ZERO))
    }))
    .await;
    let (endpoint, _) = app
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    ingest_payments(&app, 2, "gone").await;
    app.eventually(Duration::from_secs(10), "both deliveries dead", || async {
        let (_, view) = app.admin_get(&format!("/v1/endpoints/{endpoint}")).await;
        view["stats"]["dead"] == json!(2)
    })
    .await;
    gone.store(true, Ordering::SeqCst);
    let (ok, printed) = app
        .cli(&["endpoints", "recover", &endpoint, "--since", "1h"])
        .await;
    assert!(!ok, "{printed}");
    assert!(printed.contains("was disabled while"), "{printed}");
    app.stop().await;
}

async fn rotation_signs_with_both_secrets(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::ok().await;
    let (endpoint, old) = app
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    let (status, rotated) = app
        .admin_post(
            &format!("/v1/endpoints/{endpoint}/secret/rotate"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(rotated["previous"][0]["secret"], json!(old));
    ingest_payments(&app, 1, "rotate").await;
    app.eventually(Duration::from_secs(5), "a delivery", || async {
        receiver.count() >= 1
    })
    .await;
    let arrival = &receiver.arrivals()[0];
    assert_eq!(arrival.header("webhook-signature").split(' ').count(), 2);
    assert!(verifies(arrival, &old) && verifies(arrival, &new));
    let (_, current) = app
        .admin_get(&format!("/v1/endpoints/{endpoint}/secret"))
        .await;
    assert_eq!(current["secret"], json!(new));
    app.stop().await;
}

async fn dead_deliveries_stop_after_the_last_attempt(backend: Backend) {
    let app = spawn_app_with(
        backend,
        "[delivery]\nallow_private_destinations = [\"127.0.0.0/8\"]\nretry_schedule = [\"0s\", \"100ms\", \"100ms\"]\nrequest_timeout = \"2s\"\nlease = \"5s\"\n",
    )
    .await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let receiver = Receiver::start(Arc::new(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        (500, vec![], Some(Duration::ZERO))
    }))
    .await;
    let (endpoint, _) = app
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    let ids = ingest_payments(&app, 1, "dead").await;
    app.eventually(Duration::from_secs(5), "a dead delivery", || async {
        let (_, detail) = app.admin_get(&format!("/v1/events/{}", ids[0])).await;
        detail["deliveries"][0]["status"] == json!("dead")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "three attempts, as scheduled"
    );
    let (_, view) = app.admin_get(&format!("/v1/endpoints/{endpoint}")).await;
    assert_eq!(view["last_error"], json!("HTTP 500"));
    assert!(view["failing_since"].is_string());

    // Sent again, it has the whole schedule before it, not one attempt past its last.
    let (status, body) = app
        .admin_post(&format!("/v1/events/{}/redeliver", ids[0]), json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    app.eventually(Duration::from_secs(5), "three more attempts", || async {
        calls.load(Ordering::SeqCst) >= 6
    })
    .await;
    app.eventually(Duration::from_secs(5), "dead again", || async {
        let (_, detail) = app.admin_get(&format!("/v1/events/{}", ids[0])).await;
        detail["deliveries"][0]["status"] == json!("dead")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    app.stop().await;
}

/// An endpoint's deliveries are listed newest first, all or of one status, a page at a time,
/// through the API and the CLI.
async fn an_endpoints_deliveries_are_listed_by_status(backend: Backend) {
    let app = spawn_app_with(
        backend,
        "[delivery]\nallow_private_destinations = [\"127.0.0.0/8\"]\nretry_schedule = [\"0s\"]\nrequest_timeout = \"2s\"\n",
    )
    .await;
    // The first three arrivals are taken, every later one refused.
    let receiver = Receiver::start(Arc::new(|arrival| {
        (
            if arrival < 3 { 200 } else { 500 },
            vec![],
            Some(Duration::ZERO),
        )
    }))
    .await;
    let (endpoint, _) = app
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    let delivered = ingest_payments(&app, 3, "taken").await;
    app.eventually(Duration::from_secs(5), "three deliveries", || async {
        receiver.count() == 3
    })
    .await;
    let refused = ingest_payments(&app, 2, "refused").await;
    let listing = |query: &'static str| {
        let app = &app;
        let endpoint = endpoint.clone();
        async move {
            app.admin_get(&format!("/v1/endpoints/{endpoint}/deliveries{query}"))
                .await
        }
    };
    app.eventually(Duration::from_secs(5), "two dead deliveries", || async {
        listing("?status=dead").await.1["data"]
            .as_array()
            .map(Vec::len)
            == Some(2)
    })
    .await;

    let (status, all) = listing("").await;
    assert_eq!(status, 200, "{all}");
    let ids: Vec<&str> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5, "{all}");
    assert!(
        ids.windows(2).all(|pair| pair[0] > pair[1]),
        "newest first: {all}"
    );
    let (_, dead) = listing("?status=dead").await;
    let mut dead_events: Vec<&str> = dead["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["status"], "dead", "{dead}");
            assert_eq!(d["attempt_count"], 1, "{dead}");
            assert_eq!(d["last_status_code"], 500, "{dead}");
            assert_eq!(d["next_attempt_at"], Value::Null, "{dead}");
            assert_eq!(d["endpoint_id"], json!(endpoint), "{dead}");
            assert!(d.get("attempts").is_none(), "{dead}");
            d["message_id"].as_str().unwrap()
        })
        .collect();
    dead_events.sort_unstable();
    let mut expected: Vec<&str> = refused.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(dead_events, expected);

    // Pages of two: the cursor carries on where the last page ended, within the status.
    let (_, first) = listing("?status=delivered&limit=2").await;
    assert_eq!(first["data"].as_array().unwrap().len(), 2, "{first}");
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let (_, second) = app
        .admin_get(&format!(
            "/v1/endpoints/{endpoint}/deliveries?status=delivered&limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(second["data"].as_array().unwrap().len(), 1, "{second}");
    assert_eq!(second["next_cursor"], Value::Null, "{second}");
    let mut paged: Vec<&str> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["data"].as_array().unwrap())
        .map(|d| d["message_id"].as_str().unwrap())
        .collect();
    paged.sort_unstable();
    let mut expected: Vec<&str> = delivered.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(paged, expected);

    let (status, bad) = listing("?status=gone").await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["code"], "invalid_request", "{bad}");
    assert!(
        bad["message"].as_str().unwrap().contains("not `gone`"),
        "{bad}"
    );
    let (status, missing) = app
        .admin_get("/v1/endpoints/ep_01JD3R6Q9K5M2XW8T4HZ7BCN1E/deliveries")
        .await;
    assert_eq!(status, 404, "{missing}");

    let (ok, printed) = app
        .cli(&["endpoints", "deliveries", &endpoint, "--status", "dead"])
        .await;
    assert!(ok, "{printed}");
    assert!(printed.contains("LAST ANSWER"), "{printed}");
    assert_eq!(printed.matches(" dead ").count(), 2, "{printed}");
    assert_eq!(printed.matches("HTTP 500").count(), 2, "{printed}");
    app.stop().await;
}

/// A retry due at once is claimed again as soon as its failure is written, often before this
/// instance has counted that attempt off. The new claim is still this instance's to send: it
/// goes out at once rather than waiting for its lease to run out.
async fn retries_due_at_once_go_out_at_once(backend: Backend) {
    let app = spawn_app_with(
        backend,
        "[delivery]\nallow_private_destinations = [\"127.0.0.0/8\"]\n\
         retry_schedule = [\"0s\", \"0s\", \"0s\", \"0s\", \"0s\"]\njitter_percent = 0\n\
         request_timeout = \"2s\"\nlease = \"60s\"\n",
    )
    .await;
    let receiver = Receiver::start(Arc::new(|_| (500, vec![], Some(Duration::ZERO)))).await;
    app.create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    let messages = 40;
    let ids = ingest_payments(&app, messages, "at-once").await;
    // Well inside the lease: a claim dropped unsent would hold its delivery for all of it.
    app.eventually(Duration::from_secs(20), "every attempt made", || async {
        receiver.count() >= messages * 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut per_message = std::collections::BTreeMap::<String, usize>::new();
    for arrival in receiver.arrivals() {
        *per_message
            .entry(arrival.header("webhook-id").to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_message.len(), messages);
    assert!(
        per_message.values().all(|attempts| *attempts == 5),
        "five attempts each, none sent beside another: {per_message:?}"
    );
    for id in &ids {
        let (_, detail) = app.admin_get(&format!("/v1/events/{id}")).await;
        assert_eq!(detail["deliveries"][0]["status"], json!("dead"), "{detail}");
    }
    app.stop().await;
}

/// An endpoint disabled for failing too long and then enabled again is judged on its failures
/// since, not on the ones that disabled it: its next failure is retried, not a reason to
/// disable it at once.
async fn a_re_enabled_endpoint_starts_its_failing_time_afresh(backend: Backend) {
    let app = spawn_app_with(
        backend,
        "[delivery]\nallow_private_destinations = [\"127.0.0.0/8\"]\n\
         retry_schedule = [\"0s\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\"]\n\
         jitter_percent = 0\ndisable_after = \"1s\"\nrequest_timeout = \"2s\"\nlease = \"5s\"\n",
    )
    .await;
    let receiver = Receiver::start(Arc::new(|_| (503, vec![], Some(Duration::ZERO)))).await;
    let (endpoint, _) = app
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    ingest_payments(&app, 1, "afresh").await;
    app.eventually(Duration::from_secs(5), "the endpoint disabled", || async {
        let (_, view) = app.admin_get(&format!("/v1/endpoints/{endpoint}")).await;
        view["enabled"] == json!(false)
    })
    .await;

    let (status, view) = app
        .admin_patch(
            &format!("/v1/endpoints/{endpoint}"),
            json!({ "enabled": true }),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    let before = receiver.count();
    ingest_payments(&app, 1, "afresh-again").await;
    app.eventually(Duration::from_secs(5), "a failed attempt", || async {
        receiver.count() > before + 1
    })
    .await;
    let (_, view) = app.admin_get(&format!("/v1/endpoints/{endpoint}")).await;
    assert_eq!(
        view["enabled"],
        json!(true),
        "failing since the re-enabling, not for a second yet: {view}"
    );
    app.stop().await;
}

async fn shutdown_lets_in_flight_attempts_finish(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::start(Arc::new(|_| {
        (200, vec![], Some(Duration::from_millis(600)))
    }))
    .await;
    app.create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    let ids = ingest_payments(&app, 1, "drain").await;
    app.eventually(Duration::from_secs(5), "the attempt to start", || async {
        receiver.count() == 1
    })
    .await;
    let dir = Arc::clone(&app.dir);
    app.stop().await;
    let again = spawn_app_in(backend, dir, "").await;
    let (_, detail) = again.admin_get(&format!("/v1/events/{}", ids[0])).await;
    assert_eq!(
        detail["deliveries"][0]["status"],
        json!("delivered"),
        "{detail}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 1, "not sent again after the restart");
    again.stop().await;
}

/// A delivery claimed again while its attempt is still in flight (its lease lapsed: renewals
/// failing through a database outage, played here by lapsing it in the database) is not sent
/// beside that attempt, whose outcome, written under the same owner name, decides the row.
async fn a_delivery_claimed_again_during_its_attempt_is_sent_once(backend: Backend) {
    let app = spawn_app_with(
        backend,
        "[delivery]\nallow_private_destinations = [\"127.0.0.0/8\"]\n\
         retry_schedule = [\"0s\", \"300ms\"]\njitter_percent = 0\n\
         request_timeout = \"5s\"\nlease = \"7s\"\n",
    )
    .await;
    let receiver = Receiver::start(Arc::new(|index| {
        let delay = if index == 0 { 3000 } else { 0 };
        (200, vec![], Some(Duration::from_millis(delay)))
    }))
    .await;
    app.create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    let ids = ingest_payments(&app, 1, "in-flight").await;
    app.eventually(Duration::from_secs(5), "the first arrival", || async {
        receiver.count() >= 1
    })
    .await;
    let lapsed = app
        .execute_sql("UPDATE deliveries SET lease_until = 1 WHERE lease_owner IS NOT NULL")
        .await;
    assert_eq!(lapsed, 1);
    app.eventually(Duration::from_secs(10), "the attempt recorded", || async {
        let (_, detail) = app.admin_get(&format!("/v1/events/{}", ids[0])).await;
        detail["deliveries"][0]["status"] == json!("delivered")
    })
    .await;
    // Past when the second claim would have gone out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.count(), 1, "sent beside the attempt in flight");
    app.stop().await;
}

/// A delivery whose lease lapsed while it waited in memory (its renewals failing through a
/// database outage, played here by lapsing the leases in the database) is claimed again from
/// the database, under the same owner; the job still waiting in memory must not go out too.
async fn a_job_whose_lease_lapsed_goes_out_only_under_its_new_claim(backend: Backend) {
    let app = spawn_app_with(
        backend,
        "[delivery]\nallow_private_destinations = [\"127.0.0.0/8\"]\n\
         retry_schedule = [\"0s\", \"300ms\"]\njitter_percent = 0\n\
         request_timeout = \"1s\"\nlease = \"2s\"\n",
    )
    .await;
    let receiver = Receiver::ok().await;
    app.create_endpoint(json!({ "url": receiver.url, "event_types": ["*"], "rate_limit": 1 }))
        .await;
    ingest_payments(&app, 6, "lapse").await;
    app.eventually(Duration::from_secs(5), "the first arrival", || async {
        receiver.count() >= 1
    })
    .await;
    let lapsed = app
        .execute_sql(
            "UPDATE deliveries SET lease_until = 1
             WHERE lease_owner IS NOT NULL AND status = 'pending'",
        )
        .await;
    assert!(lapsed >= 4, "{lapsed} jobs waiting in memory");
    app.eventually(
        Duration::from_secs(20),
        "every message delivered",
        || async { receiver.message_ids().len() == 6 },
    )
    .await;
    // Long enough for the new claims queued behind the old jobs to go out at one a second.
    tokio::time::sleep(Duration::from_secs(7)).await;
    // A job or two may go out before the new claims are made: those are the at-least-once of
    // a lapse. Every job left waiting after that must be dropped.
    let arrivals = receiver.count();
    assert!(
        arrivals <= 6 + 2,
        "{arrivals} arrivals for 6 messages: jobs whose lease lapsed went out beside their new claims"
    );
    let dropped = sample(
        &app.metrics().await,
        "billhook_delivery_leases_lapsed_total",
    );
    assert!(
        dropped >= Some(lapsed as f64 - 2.0),
        "{dropped:?} dropped of {lapsed}"
    );
    app.stop().await;
}

/// Redelivering sends only to enabled endpoints: a disabled one's deliveries are left as they
/// are (no instance works a disabled endpoint, so a pending one would wait for good), and
/// naming one is refused.
async fn a_redelivery_leaves_a_disabled_endpoint_alone(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::ok().await;
    let (had_it, _) = app
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    let (never_had_it, _) = app
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["invoice.*"] }))
        .await;
    let ids = ingest_payments(&app, 1, "disabled-redelivery").await;
    app.eventually(Duration::from_secs(5), "delivered", || async {
        receiver.count() == 1
    })
    .await;
    for endpoint in [&had_it, &never_had_it] {
        let (status, _) = app
            .admin_patch(
                &format!("/v1/endpoints/{endpoint}"),
                json!({ "enabled": false }),
            )
            .await;
        assert_eq!(status, 200);
    }
    let redeliver = format!("/v1/events/{}/redeliver", ids[0]);
    // An optional body may be `null`, as the OpenAPI document allows.
    for body in [json!({}), json!(null)] {
        let (status, redelivered) = app.admin_post(&redeliver, body).await;
        assert_eq!(status, 202, "{redelivered}");
        assert_eq!(redelivered["deliveries"], json!([]));
    }
    let (status, refusal) = app
        .admin_post(&redeliver, json!({ "endpoint_id": never_had_it }))
        .await;
    assert_eq!(status, 400, "{refusal}");
    assert!(
        refusal["message"].as_str().unwrap().contains("disabled"),
        "{refusal}"
    );
    let (_, detail) = app.admin_get(&format!("/v1/events/{}", ids[0])).await;
    let statuses: Vec<&Value> = detail["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["status"])
        .collect();
    assert_eq!(statuses, [&json!("delivered")], "{detail}");
    let metrics = app.metrics().await;
    assert_eq!(
        sample(&metrics, "billhook_pending_deliveries"),
        Some(0.0),
        "{metrics}"
    );
    app.stop().await;
}

/// A delivery left pending for an endpoint already deleted (planned by an instance that had not
/// heard of the deletion, played here by reviving one behind billhook's back) is cancelled by
/// the poller rather than counted as pending for good.
async fn a_delivery_left_pending_for_a_deleted_endpoint_is_cancelled(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::ok().await;
    let (endpoint, _) = app
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    let ids = ingest_payments(&app, 1, "deleted-meanwhile").await;
    // Recorded, not just arrived: an outcome written after the revival below would undo it.
    app.eventually(Duration::from_secs(5), "delivered", || async {
        let (_, detail) = app.admin_get(&format!("/v1/events/{}", ids[0])).await;
        detail["deliveries"][0]["status"] == json!("delivered")
    })
    .await;
    let metrics = app.metrics().await;
    assert!(metrics.contains(&endpoint));
    assert_eq!(sample(&metrics, "billhook_delivery_lanes"), Some(1.0));
    let deleted = app
        .http
        .delete(app.url(&format!("/v1/endpoints/{endpoint}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    // Its metric series and its lane go with it.
    let metrics = app.metrics().await;
    assert!(!metrics.contains(&endpoint), "{metrics}");
    assert_eq!(sample(&metrics, "billhook_delivery_lanes"), Some(0.0));
    let revived = app
        .execute_sql(&format!(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = 0
             WHERE endpoint_id = '{endpoint}'"
        ))
        .await;
    assert_eq!(revived, 1);
    app.eventually(Duration::from_secs(5), "cancelled", || async {
        let (_, detail) = app.admin_get(&format!("/v1/events/{}", ids[0])).await;
        detail["deliveries"][0]["status"] == json!("cancelled")
    })
    .await;
    assert_eq!(receiver.count(), 1);
    app.stop().await;
}

/// The settings of the two tests below: one attempt, a long lease.
const LOCKED_DATABASE_DELIVERY: &str = "[delivery]\nallow_private_destinations = [\"127.0.0.0/8\"]\n\
     retry_schedule = [\"0s\", \"300ms\"]\njitter_percent = 0\n\
     request_timeout = \"1s\"\nlease = \"60s\"\n";

/// An endpoint of `app` answering 200, whose first request has the SQLite database in `dir`
/// locked by another connection for 6.5 s before it answers, so that attempt's outcome meets a
/// database that refuses writes past the writer's five-second wait. Ingests one payment for it
/// and returns once the lock is taken, with the receiver and the payment's event id.
async fn a_delivery_whose_outcome_meets_a_locked_database(
    app: &TestApp,
    dir: &std::path::Path,
    tag: &str,
) -> (Receiver, String) {
    let database = dir.join(billhook_server::config::DATABASE_FILE);
    let (locked, lock_taken) = std::sync::mpsc::channel::<()>();
    let lock = std::sync::Mutex::new(Some((database, locked)));
    let receiver = Receiver::start(Arc::new(move |_| {
        if let Some((database, locked)) = lock.lock().unwrap().take() {
            std::thread::spawn(move || {
                let connection = rusqlite::Connection::open(database).unwrap();
                connection.execute_batch("BEGIN EXCLUSIVE").unwrap();
                locked.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(6500));
                connection.execute_batch("COMMIT").unwrap();
            });
        }
        (200, vec![], Some(Duration::ZERO))
    }))
    .await;
    app.create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    let ids = ingest_payments(app, 1, tag).await;
    tokio::task::spawn_blocking(move || lock_taken.recv().unwrap())
        .await
        .unwrap();
    (receiver, ids[0].clone())
}

/// A batch of outcomes the database refused (here SQLite, locked by another process past the
/// writer's five-second wait) is recorded once the database takes writes again: the delivery
/// is delivered, not left leased and sent again when its lease lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_the_database_refused_are_recorded_when_it_is_back() {
    let app = spawn_app_with(Backend::Sqlite, LOCKED_DATABASE_DELIVERY).await;
    let (receiver, event) =
        a_delivery_whose_outcome_meets_a_locked_database(&app, app.dir.path(), "locked").await;
    app.eventually(Duration::from_secs(20), "the outcome recorded", || async {
        let (_, detail) = app.admin_get(&format!("/v1/events/{event}")).await;
        detail["deliveries"][0]["status"] == json!("delivered")
    })
    .await;
    assert_eq!(receiver.count(), 1, "sent once");
    app.stop().await;
}

/// Stopping does not drop outcomes the database refused a moment before (locked here by another
/// process past the writer's five-second wait): they are tried for a few seconds more, so a
/// delivered event is not sent again after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_refused_as_billhook_stops_are_still_recorded() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_app_in(Backend::Sqlite, Arc::clone(&dir), LOCKED_DATABASE_DELIVERY).await;
    let (receiver, event) =
        a_delivery_whose_outcome_meets_a_locked_database(&app, dir.path(), "stopping").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.stop().await;

    let again = spawn_app_in(Backend::Sqlite, Arc::clone(&dir), LOCKED_DATABASE_DELIVERY).await;
    let (_, detail) = again.admin_get(&format!("/v1/events/{event}")).await;
    assert_eq!(
        detail["deliveries"][0]["status"],
        json!("delivered"),
        "{detail}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(receiver.count(), 1, "sent again after the restart");
    again.stop().await;
}

/// A delivery left pending for a disabled endpoint (planned as the endpoint was being disabled,
/// or given back by an instance that stopped) is held by the next pass over due deliveries:
/// pending, it would wait for good, keeping its message from retention and the backlog gauge
/// from ever emptying.
async fn a_delivery_left_pending_for_a_disabled_endpoint_is_held(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::ok().await;
    let (endpoint, _) = app
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    let (status, _) = app
        .admin_patch(
            &format!("/v1/endpoints/{endpoint}"),
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!(status, 200);
    let events = ingest_payments(&app, 1, "left-pending").await;
    let status_of = || async {
        let (_, detail) = app.admin_get(&format!("/v1/events/{}", events[0])).await;
        detail["deliveries"][0]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    app.eventually(Duration::from_secs(5), "the delivery held", || async {
        status_of().await == "held"
    })
    .await;
    // As an instance that had not heard of the disabling would have written it.
    let changed = app
        .execute_sql(&format!(
            "UPDATE deliveries SET status = 'pending' WHERE endpoint_id = '{endpoint}'"
        ))
        .await;
    assert_eq!(changed, 1);
    app.eventually(
        Duration::from_secs(5),
        "the delivery held again",
        || async { status_of().await == "held" },
    )
    .await;
    assert_eq!(
        receiver.count(),
        0,
        "nothing is sent to a disabled endpoint"
    );
    app.stop().await;
}

/// Endpoints created at the same moment each reload the endpoint set; however those reloads
/// interleave, once every creation has been answered the next event is planned for all of
/// them (a reload that read before another's creation must not replace what that one read).
async fn endpoints_created_together_each_get_the_next_event(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::ok().await;
    let mut created = 0;
    for round in 0..6 {
        let mut creations = tokio::task::JoinSet::new();
        for _ in 0..12 {
            let request = app
                .http
                .post(app.url("/v1/endpoints"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({ "url": receiver.url, "event_types": ["*"] }));
            creations.spawn(async move { request.send().await.unwrap().status().as_u16() });
        }
        while let Some(status) = creations.join_next().await {
            assert_eq!(status.unwrap(), 201);
            created += 1;
        }
        let ids = ingest_payments(&app, 1, &format!("together-{round}")).await;
        let (_, detail) = app.admin_get(&format!("/v1/events/{}", ids[0])).await;
        let planned = detail["deliveries"].as_array().unwrap().len();
        assert_eq!(planned, created, "round {round}: a delivery per endpoint");
    }
    app.stop().await;
}
