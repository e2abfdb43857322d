//! `billhook bench`: the real binary starts its own billhook (or targets a running one), drives
//! signed traffic through it to its receiver, and accounts for every event.

use serde_json::Value;

use crate::backend_tests;
use crate::helpers::*;

backend_tests!(
    a_bench_run_delivers_every_acknowledged_event_once,
    a_running_billhook_can_be_measured_at_a_fixed_rate
);

/// Runs the binary with `args`; its exit status and the figures it printed.
async fn bench(args: &[&str]) -> (bool, Value, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_billhook"))
        .arg("bench")
        .args(args)
        .arg("--json")
        // Exported for the client commands, as the README suggests; a bench that starts its
        // own billhook has no use for it and runs all the same.
        .env("BILLHOOK_ADMIN_TOKEN", "bh_for_a_running_billhook")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let figures = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (
        output.status.success(),
        figures,
        format!("{stdout}\n{stderr}"),
    )
}

/// What every run with an endpoint must show: each acknowledged event arrived exactly once, with
/// a valid signature, and the figures are filled in.
fn assert_complete(figures: &Value, messages: u64, output: &str) {
    assert_eq!(figures["messages"], messages, "{output}");
    assert_eq!(figures["errors"], serde_json::json!({}), "{output}");
    assert_eq!(figures["ack_latency"]["samples"], messages, "{output}");
    assert!(
        figures["ingest_per_second"].as_u64().unwrap() > 0,
        "{output}"
    );
    let delivery = &figures["delivery"];
    let events = delivery["events"].as_u64().unwrap();
    // Some messages carry more than one event (a paid invoice and its payment).
    assert!(events >= messages, "{output}");
    assert_eq!(delivery["delivered"], events, "{output}");
    assert_eq!(delivery["lost"], 0, "{output}");
    assert_eq!(delivery["duplicated"], 0, "{output}");
    // Nothing left that could still arrive a second time.
    assert_eq!(delivery["owed_after_drain"], 0, "{output}");
    assert_eq!(
        delivery["end_to_end_latency"]["samples"], events,
        "{output}"
    );
    let p50 = delivery["end_to_end_latency"]["p50_us"].as_u64().unwrap();
    let p99 = delivery["end_to_end_latency"]["p99_us"].as_u64().unwrap();
    assert!(0 < p50 && p50 <= p99, "{output}");
    assert!(
        delivery["signatures"]["verified"].as_u64().unwrap() > 0,
        "{output}"
    );
    assert_eq!(delivery["signatures"]["bad"], 0, "{output}");
}

async fn a_bench_run_delivers_every_acknowledged_event_once(backend: Backend) {
    let postgres = postgres_base_url();
    let mut args = vec!["--events", "400", "--warmup", "50", "--concurrency", "16"];
    if backend == Backend::Postgres {
        args.extend(["--backend", "postgres", "--postgres-url", &postgres]);
    }
    let (ok, figures, output) = bench(&args).await;
    assert!(ok, "{output}");
    assert_complete(&figures, 400, &output);
    assert_eq!(
        figures["backend"],
        if backend == Backend::Postgres {
            "postgres"
        } else {
            "sqlite"
        }
    );
    // The server the bench started reports its own resources.
    assert!(
        figures["server"]["peak_rss_kib"].as_u64().unwrap() > 1024,
        "{output}"
    );
    assert!(figures["server"]["cpu_ms"].as_u64().is_some(), "{output}");

    // A run of nothing is refused before anything starts.
    let (ok, _, output) = bench(&["--events", "0"]).await;
    assert!(!ok, "{output}");
    assert!(
        output.contains("--concurrency, --rate and --events must be positive"),
        "{output}"
    );

    // Ingest alone: nothing to deliver, nothing owed.
    let (ok, figures, output) = bench(&["--events", "200", "--warmup", "0", "--no-endpoint"]).await;
    assert!(ok, "{output}");
    assert_eq!(figures["delivery"], Value::Null, "{output}");
    assert_eq!(figures["ack_latency"]["samples"], 200, "{output}");
}

async fn a_running_billhook_can_be_measured_at_a_fixed_rate(backend: Backend) {
    let app = spawn_app(backend).await;
    let args = [
        "bench",
        "--events",
        "150",
        "--warmup",
        "10",
        "--rate",
        "300",
        "--concurrency",
        "8",
        "--provider",
        "zwitch",
        "--json",
    ];
    let (ok, output) = app.cli(&args).await;
    assert!(ok, "{output}");
    let figures: Value = serde_json::from_str(output.lines().next().unwrap()).unwrap();
    assert_complete(&figures, 150, &output);
    assert_eq!(figures["backend"], "remote");
    assert_eq!(figures["provider"], "zwitch");
    assert_eq!(figures["mode"], "open loop at 300/s");
    // Nothing to say about a process the bench did not start.
    assert_eq!(figures["server"], Value::Null);
    // The receiver's endpoint was removed after the run.
    let (_, endpoints) = app.admin_get("/v1/endpoints").await;
    assert_eq!(endpoints["data"], serde_json::json!([]), "{endpoints}");
    // Every message reached the ledger of the measured billhook.
    let (_, events) = app.admin_get("/v1/events?source=zwitch&limit=500").await;
    assert!(events["data"].as_array().unwrap().len() >= 160, "{events}");

    // A second run makes new messages, so the server takes them as new; its receiver listens
    // where it is told to, and billhook is given the URL that reaches it.
    let port = std::net::TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.2:{port}");
    let reached_at = format!("http://127.0.0.2:{port}/hook");
    let mut elsewhere = args.to_vec();
    elsewhere.extend(["--receiver-listen", &listen, "--receiver-url", &reached_at]);
    let (ok, again) = app.cli(&elsewhere).await;
    assert!(ok, "{again}");
    let second: Value = serde_json::from_str(again.lines().next().unwrap()).unwrap();
    assert_complete(&second, 150, &again);
    assert_ne!(second["seed"], figures["seed"]);
    // The first run's seed again: every message is a duplicate, nothing is measured, and the
    // bench fails rather than report figures of nothing.
    let seed = figures["seed"].to_string();
    let mut repeat = args.to_vec();
    repeat.extend(["--seed", &seed]);
    let (ok, repeated) = app.cli(&repeat).await;
    assert!(!ok, "{repeated}");
    assert!(
        repeated.contains("none of 150 messages was acknowledged (duplicate 150)"),
        "{repeated}"
    );

    // A duration under a second is kept to: at 200/s, half a second is 100 messages.
    let timed = [
        "bench",
        "--duration",
        "500ms",
        "--warmup",
        "0",
        "--rate",
        "200",
        "--provider",
        "zwitch",
        "--strict",
        "--json",
    ];
    let (ok, output) = app.cli(&timed).await;
    assert!(ok, "{output}");
    let figures: Value = serde_json::from_str(output.lines().next().unwrap()).unwrap();
    assert_complete(&figures, 100, &output);
}
