//! The real `billhook` binary: killed with SIGKILL mid-load, every acknowledged event is there
//! after a restart; stopped with SIGTERM, it exits cleanly and gives back what it held.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

/// Starts `billhook serve` on port 0 over `data_dir` and returns it with its address.
fn start_binary(data_dir: &std::path::Path) -> (Child, String) {
    let (child, address, _) = start_binary_logging(data_dir, "warn");
    (child, address)
}

/// Like [`start_binary`], logging at `level`, with everything the process writes to stderr.
fn start_binary_logging(data_dir: &std::path::Path, level: &str) -> (Child, String, Logs) {
    let config = data_dir.join("billhook.toml");
    if !config.exists() {
        std::fs::write(&config, test_config(data_dir)).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_billhook"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("BILLHOOK_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", level)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let logs = Logs::default();
    let address = loop {
        let Some(line) = lines.next() else {
            panic!("billhook exited before listening:\n{}", logs.text());
        };
        let line = line.unwrap();
        logs.push(&line);
        if let Some(rest) = line.strip_prefix("billhook: admin API and console at ") {
            break rest.trim_end_matches('/').to_owned();
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    let kept = logs.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            kept.push(&line);
        }
    });
    (child, address, logs)
}

/// What a process wrote to stderr so far.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<String>>);

impl Logs {
    fn push(&self, line: &str) {
        let mut text = self.0.lock().unwrap();
        text.push_str(line);
        text.push('\n');
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, address) = start_binary(dir.path());
    let http = reqwest::Client::new();
    let body = fixture("zwitch_upi/payments.updated.json");
    let provider = billhook_providers::by_name("zwitch").unwrap();

    // Eight writers keep ingesting distinct messages; the process is killed while they run.
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for writer in 0..8 {
        let http = http.clone();
        let address = address.clone();
        let acknowledged = acknowledged.clone();
        let template = body.clone();
        writers.push(tokio::spawn(async move {
            for n in 0.. {
                let text = String::from_utf8(template.clone()).unwrap().replace(
                    "evl_tbs3NybYGbbjP5MMzptoFyU3W",
                    &format!("evl_w{writer}n{n}"),
                );
                let auth = billhook_providers::auth::SourceAuth::Signature {
                    secrets: vec![billhook_providers::auth::Secret::new(ZWITCH_SECRET)],
                };
                let mut request = http
                    .post(format!("{address}/ingest/zwitch"))
                    .body(text.clone());
                for (name, value) in provider.sign(
                    &auth,
                    text.as_bytes(),
                    billhook_core::time::Timestamp::now(),
                ) {
                    request = request.header(name, value);
                }
                let Ok(response) = request.send().await else {
                    return;
                };
                if response.status().as_u16() != 200 {
                    return;
                }
                let Ok(ack) = response.json::<Value>().await else {
                    return;
                };
                for id in ack["events"].as_array().unwrap() {
                    acknowledged
                        .lock()
                        .unwrap()
                        .push(id.as_str().unwrap().to_owned());
                }
            }
        }));
    }
    while acknowledged.lock().unwrap().len() < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 300);

    let (mut restarted, address) = start_binary(dir.path());
    let mut missing = Vec::new();
    for id in &acknowledged {
        let response = http
            .get(format!("{address}/v1/events/{id}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        if response.status().as_u16() != 200 {
            missing.push(id.clone());
        }
    }
    restarted.kill().unwrap();
    restarted.wait().unwrap();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events lost: {missing:?}",
        missing.len(),
        acknowledged.len()
    );
}

/// Runs `billhook serve` with `args` in `dir` until it prints its address (returning everything
/// it printed up to then) or exits (returning its output and status).
fn serve_once(dir: &std::path::Path, args: &[&str]) -> (String, Option<std::process::ExitStatus>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_billhook"))
        .arg("serve")
        .args(args)
        .current_dir(dir)
        .env("BILLHOOK_LISTEN", "127.0.0.1:0")
        .env_remove("BILLHOOK_ADMIN_TOKEN")
        .env_remove("BILLHOOK_DATA_DIR")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut printed = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("billhook: admin API and console at ") {
            child.kill().unwrap();
            child.wait().unwrap();
            return (printed, None);
        }
    }
    (printed, Some(child.wait().unwrap()))
}

#[test]
fn the_first_run_writes_a_starter_config_and_shows_the_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let (first, exited) = serve_once(dir.path(), &[]);
    assert!(exited.is_none(), "{first}");
    assert!(first.contains("wrote a starter configuration"), "{first}");
    assert!(first.contains("generated an admin token"), "{first}");
    for url in [
        "/ingest/razorpay",
        "/ingest/zwitch",
        "/ingest/setu",
        "/ingest/caminvoice/<token>",
    ] {
        assert!(first.contains(url), "{url} missing from {first}");
    }
    let data_dir = dir.path().join("billhook-data");
    let token = std::fs::read_to_string(data_dir.join("admin-token")).unwrap();
    assert!(first.contains(token.trim()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |name: &str| {
            std::fs::metadata(data_dir.join(name))
                .unwrap()
                .permissions()
                .mode()
        };
        assert_eq!(mode("admin-token") & 0o077, 0, "the token file is private");
        // The database holds the endpoints' secrets and every raw body.
        assert_eq!(mode("") & 0o777, 0o700, "the data directory is private");
        assert_eq!(mode("billhook.db") & 0o077, 0, "the database is private");
    }
    assert!(data_dir.join("billhook.db").exists());

    let (second, exited) = serve_once(dir.path(), &[]);
    assert!(exited.is_none(), "{second}");
    assert!(
        !second.contains(token.trim()),
        "the token is shown only once"
    );
    assert!(!second.contains("starter configuration"));
}

#[test]
fn a_source_without_usable_auth_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "admin_token = \"t\"\n[[source]]\nname = \"cam\"\nprovider = \"caminvoice\"\n",
    )
    .unwrap();
    let (printed, exited) = serve_once(dir.path(), &["--config", config.to_str().unwrap()]);
    assert!(exited.is_some_and(|status| !status.success()), "{printed}");
    assert!(
        printed.contains("source `cam` (caminvoice) has no usable authentication"),
        "{printed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_is_delivered_across_a_sigkill() {
    // A receiver slow enough that deliveries are in flight when the process dies.
    let receiver = Receiver::start(Arc::new(|_| {
        (200, vec![], Some(Duration::from_millis(100)))
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n{TEST_DELIVERY}\n[[endpoint]]\nname = \"receiver\"\nurl = \"{}\"\nevent_types = [\"*\"]\nmax_concurrency = 4\n",
        test_config(dir.path()),
        receiver.url
    );
    std::fs::write(dir.path().join("billhook.toml"), config).unwrap();
    let (mut child, address) = start_binary(dir.path());
    let http = reqwest::Client::new();
    let template = String::from_utf8(fixture("zwitch_upi/payments.updated.json")).unwrap();
    let provider = billhook_providers::by_name("zwitch").unwrap();
    let auth = billhook_providers::auth::SourceAuth::Signature {
        secrets: vec![billhook_providers::auth::Secret::new(ZWITCH_SECRET)],
    };
    let mut acknowledged = Vec::new();
    for n in 0..400 {
        let body = template.replace("evl_tbs3NybYGbbjP5MMzptoFyU3W", &format!("evl_kill_{n}"));
        let mut request = http
            .post(format!("{address}/ingest/zwitch"))
            .body(body.clone());
        for (name, value) in provider.sign(
            &auth,
            body.as_bytes(),
            billhook_core::time::Timestamp::now(),
        ) {
            request = request.header(name, value);
        }
        let ack: Value = request.send().await.unwrap().json().await.unwrap();
        acknowledged.push(ack["events"][0].as_str().unwrap().to_owned());
    }
    // Kill it while most deliveries are still queued or in flight.
    assert!(receiver.count() < acknowledged.len());
    child.kill().unwrap();
    child.wait().unwrap();
    let delivered_before = receiver.message_ids().len();

    let (mut restarted, _) = start_binary(dir.path());
    every_one_arrives(&receiver, &acknowledged, "never reached the receiver").await;
    restarted.kill().unwrap();
    restarted.wait().unwrap();
    assert!(
        delivered_before < acknowledged.len(),
        "the kill happened mid-delivery"
    );
}

/// Waits up to a minute for every one of `acknowledged` to reach `receiver`; fails saying how
/// many did not, and that they `failed`.
async fn every_one_arrives(receiver: &Receiver, acknowledged: &[String], failed: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let received = receiver.message_ids();
        let missing = acknowledged
            .iter()
            .filter(|id| !received.contains(*id))
            .count();
        if missing == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing} of {} acknowledged events {failed}",
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Posts distinct Zwitch payments to `addresses` (round robin) until `stop` returns true or
/// `count` are sent; returns the acknowledged event ids. Requests an instance refuses or cannot
/// answer (it was killed) are not acknowledged and not counted.
async fn ingest_round_robin(
    addresses: &[String],
    count: usize,
    tag: &str,
    mut stop: impl FnMut(usize) -> bool,
) -> Vec<String> {
    let http = reqwest::Client::new();
    let template = String::from_utf8(fixture("zwitch_upi/payments.updated.json")).unwrap();
    let provider = billhook_providers::by_name("zwitch").unwrap();
    let auth = billhook_providers::auth::SourceAuth::Signature {
        secrets: vec![billhook_providers::auth::Secret::new(ZWITCH_SECRET)],
    };
    let mut acknowledged = Vec::new();
    for n in 0..count {
        if stop(acknowledged.len()) {
            break;
        }
        let body = template.replace("evl_tbs3NybYGbbjP5MMzptoFyU3W", &format!("evl_{tag}_{n}"));
        let address = &addresses[n % addresses.len()];
        let mut request = http
            .post(format!("{address}/ingest/zwitch"))
            .body(body.clone());
        for (name, value) in provider.sign(
            &auth,
            body.as_bytes(),
            billhook_core::time::Timestamp::now(),
        ) {
            request = request.header(name, value);
        }
        let Ok(response) = request.send().await else {
            continue;
        };
        if response.status().as_u16() != 200 {
            continue;
        }
        let ack: Value = response.json().await.unwrap();
        acknowledged.push(ack["events"][0].as_str().unwrap().to_owned());
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_postgres_survive_a_sigkill() {
    let receiver =
        Receiver::start(Arc::new(|_| (200, vec![], Some(Duration::from_millis(5))))).await;
    let url = fresh_postgres_url().await;
    let delivery = TEST_DELIVERY
        .replace("lease = \"5s\"", "lease = \"2s\"")
        .replace("request_timeout = \"3s\"", "request_timeout = \"1s\"");
    let config = |dir: &std::path::Path| {
        format!(
            "database_url = \"{url}\"\n{}\n{delivery}\n[[endpoint]]\nname = \"receiver\"\nurl = \"{}\"\nevent_types = [\"*\"]\n",
            test_config(dir),
            receiver.url
        )
    };
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(
        first_dir.path().join("billhook.toml"),
        config(first_dir.path()),
    )
    .unwrap();
    std::fs::write(
        second_dir.path().join("billhook.toml"),
        config(second_dir.path()),
    )
    .unwrap();
    let (mut first, first_address) = start_binary(first_dir.path());
    let (mut second, second_address) = start_binary(second_dir.path());
    let both = [first_address.clone(), second_address.clone()];

    // Both healthy: every event arrives, none twice.
    let healthy = ingest_round_robin(&both, 1000, "healthy", |_| false).await;
    assert_eq!(healthy.len(), 1000);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while receiver.message_ids().len() < healthy.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of 1000 delivered",
            receiver.message_ids().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.count(),
        1000,
        "no event delivered twice while both instances are healthy"
    );

    // Kill one mid-run: the other takes over its leased work once the leases expire.
    let mut killed = false;
    let mut acknowledged = ingest_round_robin(&both, 1000, "killed", |acked| {
        if acked >= 300 && !killed {
            first.kill().unwrap();
            first.wait().unwrap();
            killed = true;
        }
        false
    })
    .await;
    assert!(killed);
    acknowledged.extend(healthy);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let received = receiver.message_ids();
        let missing = acknowledged
            .iter()
            .filter(|id| !received.contains(*id))
            .count();
        if missing == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing} acknowledged events never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        acknowledged.len() >= 1600,
        "{} acknowledged",
        acknowledged.len()
    );
    second.kill().unwrap();
    second.wait().unwrap();
}

/// Logs never hold a secret: not the admin token, a source's signing secret or an endpoint's,
/// nor a signature sent, nor what an endpoint's URL or headers carry for its receiver. Checked
/// on the real process's output at `debug`, through an endpoint's creation, a failed and a
/// retried delivery, and a request whose signature does not verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{}{TEST_DELIVERY}", test_config(dir.path()));
    std::fs::write(dir.path().join("billhook.toml"), config).unwrap();
    let (mut child, address, logs) = start_binary_logging(dir.path(), "debug");
    let http = reqwest::Client::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let receiver = Receiver::start({
        let calls = Arc::clone(&calls);
        Arc::new(move |_| {
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            (if first { 500 } else { 200 }, vec![], Some(Duration::ZERO))
        })
    })
    .await;
    let query_token = "query-token-for-the-receiver";
    let header_token = "header-token-for-the-receiver";
    let created: Value = http
        .post(format!("{address}/v1/endpoints"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({
            "url": format!("{}?token={query_token}", receiver.url),
            "event_types": ["*"],
            "headers": { "Authorization": format!("Bearer {header_token}") },
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let endpoint_secret = created["secret"].as_str().unwrap().to_owned();

    let body = fixture("zwitch_upi/payments.updated.json");
    let provider = billhook_providers::by_name("zwitch").unwrap();
    let auth = billhook_providers::auth::SourceAuth::Signature {
        secrets: vec![billhook_providers::auth::Secret::new(ZWITCH_SECRET)],
    };
    let mut request = http
        .post(format!("{address}/ingest/zwitch"))
        .body(body.clone());
    for (name, value) in provider.sign(&auth, &body, billhook_core::time::Timestamp::now()) {
        request = request.header(name, value);
    }
    assert_eq!(request.send().await.unwrap().status().as_u16(), 200);
    let forged = "f".repeat(64);
    let refused = http
        .post(format!("{address}/ingest/razorpay"))
        .header("x-razorpay-signature", &forged)
        .header("x-razorpay-event-id", "evt_forged")
        .body(fixture("razorpay/invoice.paid.card.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while receiver.count() < 2 {
        assert!(std::time::Instant::now() < deadline, "no retried delivery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = receiver.arrivals();
    let sent_signature = delivered[1].header("webhook-signature").to_owned();
    // Give the process a moment to log the completed delivery.
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().unwrap();
    child.wait().unwrap();

    let printed = logs.text();
    assert!(
        printed.contains("created an endpoint") && printed.contains("signature"),
        "the logs were not captured at the level asked for:\n{printed}"
    );
    for (what, secret) in [
        ("the admin token", ADMIN_TOKEN),
        ("a source's signing secret", ZWITCH_SECRET),
        ("a source's signing secret", RAZORPAY_SECRET),
        ("the endpoint's secret", &endpoint_secret),
        (
            "the endpoint's secret",
            endpoint_secret.trim_start_matches("whsec_"),
        ),
        ("a token in the endpoint's URL", query_token),
        ("a token in the endpoint's headers", header_token),
        ("a forged signature", &forged),
        (
            "a delivery's signature",
            sent_signature.trim_start_matches("v1,"),
        ),
    ] {
        assert!(!printed.contains(secret), "{what} was logged:\n{printed}");
    }
}

/// An api instance runs beside others, which must accept the same admin token: it will not
/// generate one of its own.
#[test]
fn an_api_instance_without_an_admin_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("billhook.toml");
    // Were the token generated, the start would fail soon after on the database, not wait.
    std::fs::write(&config, "[database]\nwait_at_start = \"0s\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_billhook"))
        .args(["serve", "--role", "api", "--config"])
        .arg(&config)
        .env("BILLHOOK_DATA_DIR", dir.path())
        .env(
            "BILLHOOK_DATABASE_URL",
            "postgres://billhook@127.0.0.1:9/billhook",
        )
        .env_remove("BILLHOOK_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .contains("set admin_token (BILLHOOK_ADMIN_TOKEN) to the same value on every instance"),
        "{stderr}"
    );
    assert!(!dir.path().join("admin-token").exists());
}

/// A graceful stop waits for requests in flight (here one whose body never comes, for up to
/// the request timeout); a second signal ends the process at once, with status 130.
#[tokio::test]
async fn a_second_signal_stops_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, address, logs) = start_binary_logging(dir.path(), "info");
    let pid = child.id().to_string();
    let stream = request_in_flight(address.trim_start_matches("http://")).await;

    let terminate = || {
        let signalled = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(signalled.success());
    };
    terminate();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal waits for the request in flight:\n{}",
        logs.text()
    );
    terminate();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running after a second signal:\n{}",
            logs.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(exit.code(), Some(130), "{}", logs.text());
    assert!(logs.text().contains("a second signal: stopping at once"));
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_gracefully_on_sqlite() {
    sigterm_stops_gracefully_and_gives_back_what_it_held(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_gracefully_on_postgres() {
    sigterm_stops_gracefully_and_gives_back_what_it_held(Some(fresh_postgres_url().await)).await;
}

/// SIGTERM stops the real binary gracefully: it exits with success, requests in flight are
/// answered or refused (never acknowledged and dropped), and every acknowledged event is
/// delivered after the next start. On PostgreSQL, where leases outlive a process, deliveries it
/// held are given back rather than left leased: the next start sends them at once, not a lease
/// later. On SQLite the write-ahead log is checkpointed into the database.
async fn sigterm_stops_gracefully_and_gives_back_what_it_held(postgres: Option<String>) {
    // The receiver is slow until the process has stopped, so the signal always finds deliveries
    // owed: the shutdown grace cannot catch up with every acknowledged event.
    let stopped = Arc::new(AtomicBool::new(false));
    let receiver = Receiver::start(Arc::new({
        let stopped = stopped.clone();
        move |_| {
            let delay = if stopped.load(Ordering::Relaxed) {
                20
            } else {
                100
            };
            (200, vec![], Some(Duration::from_millis(delay)))
        }
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    // A lease far longer than the test may wait, so only a given-back delivery goes out in time.
    let database = postgres
        .as_ref()
        .map(|url| format!("database_url = \"{url}\"\n"))
        .unwrap_or_default();
    let config = format!(
        "{database}{}\n[delivery]\nallow_private_destinations = [\"127.0.0.0/8\"]\n\
         retry_schedule = [\"0s\", \"300ms\"]\njitter_percent = 0\nrequest_timeout = \"3s\"\n\
         lease = \"120s\"\nshutdown_grace = \"1s\"\n\
         [[endpoint]]\nname = \"receiver\"\nurl = \"{}\"\nevent_types = [\"*\"]\nmax_concurrency = 4\n",
        test_config(dir.path()),
        receiver.url
    );
    std::fs::write(dir.path().join("billhook.toml"), config).unwrap();
    let (mut child, address, logs) = start_binary_logging(dir.path(), "info");
    let pid = child.id().to_string();

    // Writers keep ingesting while the signal arrives.
    let stop_after = Arc::new(AtomicBool::new(false));
    let acknowledged_so_far: Arc<[AtomicUsize; 4]> = Arc::default();
    let mut writers = Vec::new();
    for writer in 0..4 {
        let addresses = vec![address.clone()];
        let stop_after = stop_after.clone();
        let acknowledged_so_far = acknowledged_so_far.clone();
        writers.push(tokio::spawn(async move {
            ingest_round_robin(&addresses, 300, &format!("term{writer}"), |acknowledged| {
                acknowledged_so_far[writer].store(acknowledged, Ordering::Relaxed);
                stop_after.load(Ordering::Relaxed)
            })
            .await
        }));
    }
    // Signal mid-delivery: some events delivered, and far more acknowledged than the shutdown
    // grace can deliver at the receiver's pace.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let acknowledged: usize = acknowledged_so_far
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum();
        if receiver.count() >= 10 && acknowledged >= receiver.count() + 150 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{acknowledged} acknowledged and {} delivered after 30 s",
            receiver.count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signalled = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(signalled.success());
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running after SIGTERM:\n{}",
            logs.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop_after.store(true, Ordering::Relaxed);
    stopped.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    assert!(exit.success(), "{exit:?}:\n{}", logs.text());
    assert!(logs.text().contains("billhook stopped"), "{}", logs.text());
    if postgres.is_none() {
        let wal = dir.path().join("billhook.db-wal");
        assert!(
            std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
            "the write-ahead log was left behind"
        );
    }
    let delivered_before = receiver.message_ids();
    assert!(
        delivered_before.len() < acknowledged.len(),
        "the signal came mid-delivery"
    );

    let (mut restarted, _) = start_binary(dir.path());
    every_one_arrives(
        &receiver,
        &acknowledged,
        "were not delivered well within the lease",
    )
    .await;
    restarted.kill().unwrap();
    restarted.wait().unwrap();
}

/// An admin token file that cannot be read is reported as such, not replaced by a new token
/// (which would fail all the same, the file being there) nor taken as missing.
#[test]
fn an_unreadable_admin_token_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("billhook.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"{}\"\n", dir.path().display()),
    )
    .unwrap();
    // Not UTF-8: unreadable as text even to root, who reads any file whatever its mode.
    std::fs::write(dir.path().join("admin-token"), [0xff, 0xfe, 0x00]).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_billhook"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("BILLHOOK_LISTEN", "127.0.0.1:0")
        .env_remove("BILLHOOK_ADMIN_TOKEN")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{printed}");
    assert!(
        printed.contains("cannot read the admin token in"),
        "{printed}"
    );
}
