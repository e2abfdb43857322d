//! Several instances on one PostgreSQL, and a database that goes away and comes back.

use std::sync::Arc;
use std::time::Duration;

use billhook_core::time::Timestamp;
use serde_json::{Value, json};

use crate::helpers::*;

/// Posts `count` distinct Zwitch payments, spread over `apps` by `concurrency` writers; returns
/// the acknowledged event ids.
async fn ingest_across(
    apps: &[&TestApp],
    count: usize,
    concurrency: usize,
    tag: &str,
) -> Vec<String> {
    let template = String::from_utf8(fixture("zwitch_upi/payments.updated.json")).unwrap();
    let provider = billhook_providers::by_name("zwitch").unwrap();
    let auth = billhook_providers::auth::SourceAuth::Signature {
        secrets: vec![billhook_providers::auth::Secret::new(ZWITCH_SECRET)],
    };
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for writer in 0..concurrency {
        let targets: Vec<String> = apps.iter().map(|a| a.url("/ingest/zwitch")).collect();
        let (next, acknowledged, template, auth, http) = (
            Arc::clone(&next),
            Arc::clone(&acknowledged),
            template.clone(),
            auth.clone(),
            apps[0].http.clone(),
        );
        let tag = tag.to_owned();
        writers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n >= count {
                    return;
                }
                let body =
                    template.replace("evl_tbs3NybYGbbjP5MMzptoFyU3W", &format!("evl_{tag}_{n}"));
                let target = &targets[(n + writer) % targets.len()];
                let mut request = http.post(target).body(body.clone());
                for (name, value) in provider.sign(&auth, body.as_bytes(), Timestamp::now()) {
                    request = request.header(name, value);
                }
                let response = request.send().await.unwrap();
                assert_eq!(response.status().as_u16(), 200);
                let ack: Value = response.json().await.unwrap();
                acknowledged
                    .lock()
                    .unwrap()
                    .push(ack["events"][0].as_str().unwrap().to_owned());
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let mut ids = acknowledged.lock().unwrap();
    std::mem::take(&mut *ids)
}

/// Waits until every app delivers to the receiver's endpoint: an instance learns of an endpoint
/// created on another through the database's notification, and until then plans nothing for it.
/// Probes one message at a time through each app; returns the probes' event ids.
async fn until_each_delivers(apps: &[&TestApp], receiver: &Receiver) -> Vec<String> {
    let mut probes = Vec::new();
    for (index, app) in apps.iter().enumerate() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        'probing: for attempt in 0.. {
            assert!(
                tokio::time::Instant::now() < deadline,
                "instance {index} never delivered to the new endpoint"
            );
            let probe = ingest_across(&[app], 1, 1, &format!("probe{index}x{attempt}")).await;
            probes.extend(probe.iter().cloned());
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if probe.iter().all(|id| receiver.message_ids().contains(id)) {
                    break 'probing;
                }
            }
        }
    }
    probes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_deliver_every_event_exactly_once() {
    let receiver = Receiver::ok().await;
    let first = spawn_app(Backend::Postgres).await;
    let second = first.another_instance("").await;
    first
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    let probes = until_each_delivers(&[&first, &second], &receiver).await;
    let ids = ingest_across(&[&first, &second], 1000, 8, "pair").await;
    assert_eq!(ids.len(), 1000);
    first
        .eventually(Duration::from_secs(60), "every event delivered", || async {
            receiver.message_ids().len() >= ids.len()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = receiver.message_ids();
    assert!(ids.iter().all(|id| received.contains(id)));
    let probes_received = probes.iter().filter(|id| received.contains(*id)).count();
    assert_eq!(
        receiver.count(),
        ids.len() + probes_received,
        "no event delivered twice while both instances are healthy"
    );
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_across_instances() {
    let receiver = Receiver::ok().await;
    let first = spawn_app(Backend::Postgres).await;
    let second = first.another_instance("").await;
    first
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["*"], "rate_limit": 20 }))
        .await;
    let probes = until_each_delivers(&[&first, &second], &receiver).await;
    // The window under test starts with the first of these, after the probes.
    let measured = || {
        receiver
            .arrivals()
            .into_iter()
            .filter(|a| !probes.iter().any(|p| p == a.header("webhook-id")))
            .collect::<Vec<_>>()
    };
    ingest_across(&[&first, &second], 120, 4, "limit").await;
    first
        .eventually(
            // Generous: the window is measured from the first arrival, and under a loaded CI
            // the endpoint's owner can take seconds to start.
            Duration::from_secs(30),
            "three seconds of deliveries",
            || async {
                measured()
                    .first()
                    .is_some_and(|a| a.at.elapsed() > Duration::from_millis(3200))
            },
        )
        .await;
    let arrivals = measured();
    let start = arrivals[0].at;
    let in_three_seconds = arrivals
        .iter()
        .filter(|a| a.at - start < Duration::from_secs(3))
        .count();
    assert!(
        in_three_seconds <= 66,
        "{in_three_seconds} in 3 s at 20/s across two instances"
    );
    assert!(in_three_seconds >= 54, "{in_three_seconds} in 3 s");
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database_and_nothing_acknowledged_is_lost() {
    let proxy = DatabaseProxy::new().await;
    let url = proxy.url().await;
    // The database is unreachable at start: billhook waits with backoff.
    let dir = Arc::new(tempfile::tempdir().unwrap());
    std::fs::write(dir.path().join("database-url"), &url).unwrap();
    let starting = tokio::spawn(spawn_app_in(
        Backend::Postgres,
        dir,
        "[database]\nconnect_timeout = \"1s\"\nstatement_timeout = \"5s\"\n",
    ));
    tokio::time::sleep(Duration::from_millis(800)).await;
    proxy.up().await;
    let app = starting.await.unwrap();
    app.eventually(Duration::from_secs(10), "ready", || async {
        app.http
            .get(app.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 200)
    })
    .await;
    let before = ingest_across(&[&app], 20, 2, "before").await;

    proxy.down().await;
    app.eventually(Duration::from_secs(10), "not ready", || async {
        app.http
            .get(app.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 503)
    })
    .await;
    let body = fixture("zwitch_upi/payments.created.json");
    let refused = app.post_signed("zwitch", &body, &[]).await;
    assert_eq!(refused.status().as_u16(), 503);
    let refusal: Value = refused.json().await.unwrap();
    assert_eq!(refusal["code"], json!("storage_unavailable"));

    proxy.up().await;
    app.eventually(Duration::from_secs(15), "ready again", || async {
        app.http
            .get(app.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 200)
    })
    .await;
    let after = ingest_across(&[&app], 20, 2, "after").await;
    for id in before.iter().chain(&after) {
        let (status, _) = app.admin_get(&format!("/v1/events/{id}")).await;
        assert_eq!(status, 200, "{id}");
    }
    app.stop().await;
    proxy.down().await;
}

/// A statement the database cancels at `statement_timeout` (here: an ingest waiting behind a
/// table lock) is the database overloaded, not a bug: the provider is told `503
/// storage_unavailable`, to retry, and billhook serves again once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_its_timeout_is_a_503_to_retry() {
    let app = spawn_app_with(
        Backend::Postgres,
        "[database]\nstatement_timeout = \"1s\"\n",
    )
    .await;
    let locker = holding_inbound(&app).await;
    let body = fixture("zwitch_upi/payments.created.json");
    let refused = app.post_signed("zwitch", &body, &[]).await;
    assert_eq!(refused.status().as_u16(), 503);
    let refusal: Value = refused.json().await.unwrap();
    assert_eq!(refusal["code"], json!("storage_unavailable"));
    locker.batch_execute("ROLLBACK").await.unwrap();
    let accepted = app.post_signed("zwitch", &body, &[]).await;
    assert!(accepted.status().is_success(), "{}", accepted.status());
    let acknowledgement: Value = accepted.json().await.unwrap();
    assert_eq!(
        acknowledgement["duplicate"],
        json!(false),
        "nothing of the first was stored"
    );
    app.stop().await;
}

/// A webhook answered `408` whose write commits after (here: behind a table lock released
/// after the timeout) is counted as stored, not as refused, and its retry is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_stored_after_its_408_is_counted_stored() {
    let app = spawn_app_with(Backend::Postgres, "[ingest]\nrequest_timeout = \"1s\"\n").await;
    let locker = holding_inbound(&app).await;
    let body = fixture("zwitch_upi/payments.created.json");
    let timed_out = app.post_signed("zwitch", &body, &[]).await;
    assert_eq!(timed_out.status().as_u16(), 408);
    locker.batch_execute("COMMIT").await.unwrap();
    let series = |outcome: &str| {
        format!("billhook_ingest_requests_total{{source=\"zwitch\",outcome=\"{outcome}\"}}")
    };
    app.eventually(
        Duration::from_secs(10),
        "the write to be counted",
        || async { sample(&app.metrics().await, &series("stored")) == Some(1.0) },
    )
    .await;
    let retried = app.post_signed("zwitch", &body, &[]).await;
    let acknowledgement: Value = retried.json().await.unwrap();
    assert_eq!(acknowledgement["duplicate"], json!(true));
    let text = app.metrics().await;
    assert_eq!(sample(&text, &series("rejected")), None, "{text}");
    assert_eq!(sample(&text, &series("duplicate")), Some(1.0));
    app.stop().await;
}

/// A worker instance answers health checks only, and refuses everything else as `{code,
/// message}` like the API does: an unknown path 404, a wrong method 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_health_checks_only_and_refuses_in_json() {
    let app = spawn_app_with(Backend::Postgres, "role = \"worker\"\n").await;
    let alive = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(alive.status().as_u16(), 200);
    for (method, path, status, code) in [
        (reqwest::Method::GET, "/v1/events", 404, "not_found"),
        (reqwest::Method::POST, "/ingest/zwitch", 404, "not_found"),
        (reqwest::Method::POST, "/healthz", 405, "method_not_allowed"),
        (
            reqwest::Method::DELETE,
            "/metrics",
            405,
            "method_not_allowed",
        ),
    ] {
        let response = app
            .http
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        let refusal: Value = response.json().await.unwrap();
        assert_eq!(refusal["code"], json!(code), "{method} {path}");
    }
    app.stop().await;
}

/// A session of the test's own holding `app`'s table of requests, so that every ingest waits
/// behind it until the session commits or rolls back.
async fn holding_inbound(app: &TestApp) -> tokio_postgres::Client {
    let locker = database_session(app).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE inbound IN EXCLUSIVE MODE")
        .await
        .unwrap();
    locker
}

/// A connection of the test's own to the PostgreSQL schema `app` uses, to set up or observe
/// what the API does not show.
async fn database_session(app: &TestApp) -> tokio_postgres::Client {
    let url = std::fs::read_to_string(app.dir.path().join("database-url")).unwrap();
    let (database, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    database
}

/// An instance taking an endpoint back judges it by its failures since, as the database has
/// them: here another instance delivered to it meanwhile, so the failure this instance saw
/// before handing it over must not count towards disabling it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_taken_back_is_judged_by_the_databases_failing_time() {
    let app = spawn_app_with(
        Backend::Postgres,
        "[delivery]\nallow_private_destinations = [\"127.0.0.0/8\"]\n\
         retry_schedule = [\"0s\", \"30s\"]\njitter_percent = 0\ndisable_after = \"2s\"\n\
         request_timeout = \"1s\"\nlease = \"2s\"\n",
    )
    .await;
    let receiver = Receiver::start(Arc::new(|_| (503, vec![], Some(Duration::ZERO)))).await;
    let (endpoint, _) = app
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    ingest_across(&[&app], 1, 1, "before-hand-over").await;
    app.eventually(Duration::from_secs(5), "a failure recorded", || async {
        let (_, view) = app.admin_get(&format!("/v1/endpoints/{endpoint}")).await;
        !view["failing_since"].is_null()
    })
    .await;

    // Another instance takes the endpoint over and delivers to it successfully.
    let database = database_session(&app).await;
    let far = Timestamp::now()
        .add(Duration::from_secs(3600))
        .unix_millis();
    let taken_over = database
        .execute(
            "UPDATE endpoint_owners SET owner = 'another-instance', until = $2
             WHERE endpoint_id = $1",
            &[&endpoint, &far],
        )
        .await
        .unwrap();
    assert_eq!(taken_over, 1, "the instance owned the endpoint before");
    database
        .execute(
            "UPDATE endpoints SET failing_since = NULL WHERE id = $1",
            &[&endpoint],
        )
        .await
        .unwrap();
    // Long enough for this instance to notice it lost the endpoint, and for its own failure to
    // be older than `disable_after`.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    database
        .execute(
            "DELETE FROM endpoint_owners WHERE owner = 'another-instance'",
            &[],
        )
        .await
        .unwrap();

    let before = receiver.count();
    ingest_across(&[&app], 1, 1, "after-hand-over").await;
    app.eventually(
        Duration::from_secs(5),
        "an attempt after taking it back",
        || async { receiver.count() > before },
    )
    .await;
    app.eventually(Duration::from_secs(5), "the failure recorded", || async {
        let (_, view) = app.admin_get(&format!("/v1/endpoints/{endpoint}")).await;
        !view["failing_since"].is_null()
    })
    .await;
    let (_, view) = app.admin_get(&format!("/v1/endpoints/{endpoint}")).await;
    assert_eq!(
        view["enabled"],
        json!(true),
        "failing since the take-over, not for two seconds yet: {view}"
    );
    app.stop().await;
}

/// Deliveries held in memory whose leases another instance took over after they lapsed (this
/// instance cut off from the database meanwhile, played here by moving the leases in the
/// database) are let go unattempted once their leases could end before an attempt would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_whose_leases_were_taken_over_are_not_sent() {
    let app = spawn_app_with(
        Backend::Postgres,
        "[delivery]\nallow_private_destinations = [\"127.0.0.0/8\"]\n\
         request_timeout = \"1s\"\nlease = \"2s\"\n",
    )
    .await;
    let receiver = Receiver::ok().await;
    app.create_endpoint(json!({ "url": receiver.url, "event_types": ["*"], "rate_limit": 1 }))
        .await;
    ingest_across(&[&app], 8, 1, "taken-over").await;
    app.eventually(Duration::from_secs(5), "the first arrival", || async {
        receiver.count() >= 1
    })
    .await;
    let far = Timestamp::now()
        .add(Duration::from_secs(3600))
        .unix_millis();
    let taken_over = app
        .execute_sql(&format!(
            "UPDATE deliveries SET lease_owner = 'another-instance', lease_until = {far}
             WHERE lease_owner IS NOT NULL AND status = 'pending'"
        ))
        .await;
    assert!(taken_over >= 5, "{taken_over} jobs waiting in memory");
    let at_take_over = receiver.count();
    tokio::time::sleep(Duration::from_secs(6)).await;
    // The lease known in memory lasts at most two seconds past the take-over, and an attempt
    // may take one: at one a second, at most two more go out.
    let sent_after = receiver.count() - at_take_over;
    assert!(
        sent_after <= 2,
        "{sent_after} sent under leases another instance holds"
    );
    let still_theirs = app
        .execute_sql(
            "UPDATE deliveries SET updated_at = updated_at
             WHERE lease_owner = 'another-instance' AND status = 'pending'",
        )
        .await;
    assert_eq!(
        still_theirs, taken_over,
        "the deliveries are left to the instance that holds them"
    );
    let dropped = sample(
        &app.metrics().await,
        "billhook_delivery_leases_lapsed_total",
    );
    assert!(dropped >= Some(taken_over as f64 - 2.0), "{dropped:?}");
    app.stop().await;
}

/// Leases are renewed while attempts run out the shutdown grace: an attempt slower than what is
/// left of its lease would otherwise be claimed and sent again by another instance meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_renewed_while_shutdown_waits_for_attempts() {
    let app = spawn_app_with(
        Backend::Postgres,
        "[delivery]\nallow_private_destinations = [\"127.0.0.0/8\"]\n\
         request_timeout = \"5900ms\"\nlease = \"8s\"\nshutdown_grace = \"10s\"\n",
    )
    .await;
    let receiver = Receiver::start(Arc::new(|_| {
        (200, vec![], Some(Duration::from_millis(5800)))
    }))
    .await;
    app.create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    let database = database_session(&app).await;
    ingest_across(&[&app], 1, 1, "slow").await;
    app.eventually(Duration::from_secs(5), "the attempt to start", || async {
        receiver.count() == 1
    })
    .await;

    let shutdown_started = Timestamp::now();
    let stopping = tokio::spawn(app.stop());
    // Every lease set before shutdown ends by `shutdown_started + lease`; renewals come about
    // every second, and the attempt runs for almost six.
    let renewed_past = shutdown_started.add(Duration::from_secs(8));
    let mut lease_until = None;
    for _ in 0..40 {
        let until: Option<i64> = database
            .query_one("SELECT lease_until FROM deliveries", &[])
            .await
            .unwrap()
            .get(0);
        lease_until = until.map(Timestamp::from_unix_millis);
        if lease_until.is_none_or(|until| until > renewed_past) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        lease_until.is_some_and(|until| until > renewed_past),
        "the lease was not renewed after shutdown began: until {lease_until:?}, \
         shutdown began {shutdown_started:?}"
    );
    stopping.await.unwrap();
    let status: String = database
        .query_one("SELECT status FROM deliveries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "delivered");
}

/// An instance that stops hands its endpoints over: another instance delivers to them at once,
/// not after their ownership leases lapse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_instance_hands_its_endpoints_over() {
    let delivery = "[delivery]\nallow_private_destinations = [\"127.0.0.0/8\"]\n\
                    request_timeout = \"3s\"\nlease = \"20s\"\n";
    let receiver = Receiver::ok().await;
    let first = spawn_app_with(Backend::Postgres, delivery).await;
    first
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    ingest_across(&[&first], 1, 1, "owned-by-first").await;
    first
        .eventually(Duration::from_secs(5), "the first delivery", || async {
            receiver.count() == 1
        })
        .await;
    let second = first.another_instance(delivery).await;
    first.stop().await;

    ingest_across(&[&second], 1, 1, "after-the-hand-over").await;
    second
        .eventually(
            Duration::from_secs(8),
            "a delivery well before the first instance's lease of 20 s lapses",
            || async { receiver.count() == 2 },
        )
        .await;
    second.stop().await;
}
