//! The provider emulator through the real `billhook trigger` binary.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use billhook_providers::auth::hex_hmac;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;

backend_tests!(
    every_listed_event_round_trips_through_a_billhook_server,
    a_pretty_zwitch_message_is_signed_over_its_compact_form,
    every_shipped_scenario_runs_green,
    a_message_dated_in_the_past_is_signed_now,
    a_resent_step_carries_a_fresh_credential,
    a_given_header_replaces_the_generated_one,
    a_path_token_source_sent_with_to_is_told_where_its_token_goes,
);

/// The canonical types each emulated event must become (for its default variant and others).
fn expected_types(provider: &str, event: &str, variant: &str) -> Vec<&'static str> {
    match (provider, event, variant) {
        ("razorpay", "invoice.paid", _) => vec!["invoice.paid", "payment.succeeded"],
        ("razorpay", "invoice.partially_paid", _) => {
            vec!["invoice.partially_paid", "payment.succeeded"]
        }
        ("razorpay", "invoice.expired", _) => vec!["invoice.expired"],
        ("razorpay", "payment.authorized", _) => vec!["payment.authorized"],
        ("razorpay", "payment.captured", _) => vec!["payment.succeeded"],
        ("razorpay", "payment.failed", _) => vec!["payment.failed"],
        ("razorpay", "refund.processed", _) => vec!["payment.refunded"],
        ("zwitch", "payments.created", _) => vec!["payment.created"],
        ("zwitch", "payments.updated", "success") => vec!["payment.succeeded"],
        ("zwitch", "payments.updated", "pending") => vec!["payment.processing"],
        ("zwitch", "payments.updated", "failed") => vec!["payment.failed"],
        ("zwitch", "bharat_connect.invoice.create", _) => vec!["invoice.issued"],
        ("zwitch", "bharat_connect.invoice.confirm", "ACCEPTED") => vec!["invoice.accepted"],
        ("zwitch", "bharat_connect.invoice.confirm", "REJECTED") => vec!["invoice.rejected"],
        ("zwitch", "bharat_connect.invoice.change_status", _) => vec!["invoice.status_changed"],
        ("zwitch", "bharat_connect.invoice.edit", _) => vec!["invoice.updated"],
        ("setu_bbps", "BILL_FETCH", _) => vec!["bill.fetched"],
        ("setu_bbps", "BILL_PAY", "Success") => vec!["payment.succeeded"],
        ("setu_bbps", "BILL_PAY", "Processing") => vec!["payment.processing"],
        ("setu_bbps", "BILL_PAY", "Failure") => vec!["payment.failed"],
        ("setu_bbps", "BILL_DISPUTE", _) => vec!["dispute.updated"],
        ("setu_bbps", "BILLER_UPDATES", _) => vec!["biller.updated"],
        ("caminvoice", "DOCUMENT.DELIVERED", _) => vec!["document.delivered"],
        ("caminvoice", "DOCUMENT.RECEIVED", _) => vec!["document.received"],
        ("caminvoice", "DOCUMENT.STATUS_UPDATED", _) => vec!["invoice.status_changed"],
        ("caminvoice", "ENTITY.REVOKED", _) => vec!["network.member_revoked"],
        other => panic!("no expectation for {other:?}"),
    }
}

async fn every_listed_event_round_trips_through_a_billhook_server(backend: Backend) {
    let app = spawn_app(backend).await;
    let (ok, listing) = app.cli(&["trigger", "--list", "--json"]).await;
    assert!(ok, "{listing}");
    let listed: Vec<Value> = serde_json::from_str(&listing).unwrap();
    assert!(listed.len() >= 20);
    let mut triggered = 0;
    for entry in &listed {
        let provider = entry["provider"].as_str().unwrap();
        let event = entry["event"].as_str().unwrap();
        let variants: Vec<&str> = entry["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let variants = if variants.is_empty() {
            vec![""]
        } else {
            variants
        };
        for variant in variants {
            let mut args = vec!["trigger", provider, event, "--json"];
            if !variant.is_empty() {
                args.extend(["--variant", variant]);
            }
            let (ok, printed) = app.cli(&args).await;
            assert!(ok, "{provider} {event} {variant}: {printed}");
            let answer: Value = serde_json::from_str(&printed).unwrap();
            assert_eq!(
                answer["status"],
                json!(ack_status(provider)),
                "{provider} {event} {variant}"
            );
            assert_eq!(
                answer["body"]["quarantined"],
                json!(false),
                "{provider} {event} {variant}: {answer}"
            );
            let mut types = Vec::new();
            for id in answer["body"]["events"].as_array().unwrap() {
                let (_, detail) = app
                    .admin_get(&format!("/v1/events/{}", id.as_str().unwrap()))
                    .await;
                assert_eq!(
                    detail["event"]["warnings"],
                    json!([]),
                    "{provider} {event} {variant}"
                );
                types.push(detail["event"]["type"].as_str().unwrap().to_owned());
            }
            assert_eq!(
                types,
                expected_types(provider, event, variant),
                "{provider} {event} {variant}"
            );
            triggered += 1;
        }
    }
    assert!(triggered >= 40, "{triggered}");
    app.stop().await;
}

async fn every_shipped_scenario_runs_green(backend: Backend) {
    let dir = format!("{}/../../scenarios", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 6);
    for file in files {
        let app = spawn_app(backend).await;
        let (ok, printed) = app
            .cli(&["trigger", "--scenario", file.to_str().unwrap()])
            .await;
        assert!(ok, "{}: {printed}", file.display());
        assert!(!printed.contains("FAILED"), "{printed}");
        app.stop().await;
    }
}

/// `--to` sends exactly what `--print` shows: the same bytes, the same headers, Razorpay's
/// signature over those bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_sends_exactly_the_request_it_prints() {
    let receiver = Receiver::ok().await;
    let args = [
        "trigger",
        "razorpay",
        "invoice.paid",
        "--variant",
        "wallet",
        "--secret",
        RAZORPAY_SECRET,
        "--seed",
        "11",
        "--at",
        "2026-03-01T10:00:00Z",
        "--set",
        "payload.invoice.entity.notes={\"po\":\"PO-7\"}",
        "--header",
        "X-Trace: demo",
    ];
    let run = |extra: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_billhook"));
        command.args(args).args(extra).env_remove("BILLHOOK_URL");
        command.output().unwrap()
    };
    let printed = run(&["--print", "--to", &receiver.url]);
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    let text = String::from_utf8(printed.stdout).unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let printed_body = rest.split("HTTP 200 from").next().unwrap().as_bytes();
    let mut lines = head.split("\r\n");
    assert_eq!(lines.next().unwrap(), "POST /hooks HTTP/1.1");
    let printed_headers: BTreeMap<String, String> = lines
        .map(|line| {
            let (name, value) = line.split_once(": ").unwrap();
            (name.to_ascii_lowercase(), value.to_owned())
        })
        .collect();

    let arrival = &receiver.arrivals()[0];
    assert_eq!(
        &arrival.body[..],
        printed_body,
        "the bytes sent are the bytes printed"
    );
    // Every header that arrived was printed, with the same value, and nothing more.
    let arrived: BTreeMap<String, String> = arrival
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap().to_owned()))
        .collect();
    assert_eq!(arrived, printed_headers);
    assert_eq!(
        arrival.headers.len(),
        arrived.len(),
        "no header arrived twice"
    );
    for name in ["x-razorpay-event-id", "x-razorpay-signature", "x-trace"] {
        assert!(arrived.contains_key(name), "{name}");
    }
    assert_eq!(
        arrival.header("x-razorpay-signature"),
        hex_hmac(RAZORPAY_SECRET, &arrival.body)
    );
    let body: Value = serde_json::from_slice(&arrival.body).unwrap();
    assert_eq!(
        body["payload"]["invoice"]["entity"]["notes"],
        json!({"po": "PO-7"})
    );
    assert_eq!(body["created_at"], json!(1_772_359_200));

    // The same seed and clock print the same request again.
    let again = run(&["--print"]);
    let again = String::from_utf8(again.stdout).unwrap();
    assert_eq!(
        again.split_once("\r\n\r\n").unwrap().1.as_bytes(),
        printed_body
    );

    // With --json, standard output is the answer alone, for a script to parse; the request
    // printed goes to standard error.
    let as_json = run(&["--print", "--to", &receiver.url, "--json"]);
    assert!(as_json.status.success());
    let answer: Value = serde_json::from_slice(&as_json.stdout).unwrap();
    assert_eq!(answer["status"], 200, "{answer}");
    assert!(
        String::from_utf8_lossy(&as_json.stderr).contains("POST /hooks HTTP/1.1"),
        "{}",
        String::from_utf8_lossy(&as_json.stderr)
    );
}

/// `--pretty` sends indented JSON, as Zwitch's samples are, signed over its compact form as
/// Zwitch documents: billhook verifies it by its second check, over the compacted body.
async fn a_pretty_zwitch_message_is_signed_over_its_compact_form(backend: Backend) {
    let receiver = Receiver::ok().await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_billhook"))
        .args([
            "trigger",
            "zwitch",
            "payments.updated",
            "--pretty",
            "--secret",
            ZWITCH_SECRET,
            "--to",
            &receiver.url,
        ])
        .env_remove("BILLHOOK_URL")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let arrival = &receiver.arrivals()[0];
    assert!(arrival.body.contains(&b'\n'), "indented");
    assert_ne!(
        arrival.header("x-zwitch-signature"),
        hex_hmac(ZWITCH_SECRET, &arrival.body),
        "not over the indented bytes"
    );

    let app = spawn_app(backend).await;
    let (ok, printed) = app
        .cli(&["trigger", "zwitch", "payments.updated", "--pretty"])
        .await;
    assert!(ok && printed.contains("HTTP 200"), "{printed}");
    let (_, inbound) = app.admin_get("/v1/inbound").await;
    assert_eq!(
        inbound["data"][0]["status"],
        json!("processed"),
        "{inbound}"
    );
    app.stop().await;
}

/// A redirect is the target's answer, as it would be to a provider: `trigger` does not follow
/// it (following would turn the POST into a GET without its body) and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_does_not_follow_a_redirect() {
    let receiver = Receiver::start(Arc::new(|_| {
        (
            302,
            vec![("location", "/elsewhere".to_owned())],
            Some(Duration::ZERO),
        )
    }))
    .await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_billhook"))
        .args([
            "trigger",
            "razorpay",
            "invoice.paid",
            "--secret",
            RAZORPAY_SECRET,
            "--to",
            &receiver.url,
        ])
        .env_remove("BILLHOOK_URL")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("HTTP 302"), "{printed}");
    assert_eq!(receiver.count(), 1, "the redirect was not followed");
}

/// `trigger` takes an answer as the provider would: Zwitch counts only a 200, and Razorpay and
/// Zwitch only one within 5 s; an answer they would send the webhook again for fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_takes_an_answer_as_the_provider_would() {
    let trigger = |receiver: &str, provider: &str, event: &str, secret: &str| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_billhook"))
            .args([
                "trigger", provider, event, "--secret", secret, "--to", receiver,
            ])
            .env_remove("BILLHOOK_URL")
            .output()
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), printed)
    };
    let accepted = Receiver::start(Arc::new(|_| (202, vec![], Some(Duration::ZERO)))).await;
    let (ok, printed) = trigger(&accepted.url, "zwitch", "payments.updated", ZWITCH_SECRET);
    assert!(!ok, "{printed}");
    assert!(
        printed.contains("zwitch takes only 200 as an acknowledgement"),
        "{printed}"
    );
    let (ok, printed) = trigger(&accepted.url, "razorpay", "invoice.paid", RAZORPAY_SECRET);
    assert!(ok, "any 2xx acknowledges a Razorpay webhook: {printed}");

    let slow = Receiver::start(Arc::new(|_| {
        (200, vec![], Some(Duration::from_millis(5_300)))
    }))
    .await;
    let (ok, printed) = trigger(&slow.url, "razorpay", "invoice.paid", RAZORPAY_SECRET);
    assert!(!ok, "{printed}");
    assert!(
        printed.contains("only after 5.") && printed.contains("razorpay waits 5 s"),
        "{printed}"
    );
}

/// A resent step's credential is issued anew, as the provider would issue it: a JWT from the
/// first send would by then be older than the source accepts, and the resend would be refused
/// instead of answered as a duplicate.
async fn a_resent_step_carries_a_fresh_credential(backend: Backend) {
    let app = spawn_app_with(
        backend,
        "[[source]]\nname = \"setu-short-lived\"\nprovider = \"setu_bbps\"\nauth = { kind = \"jwt_hs256\", secret = \"setu-short-lived-jwt-secret-32-bytes\", max_age = \"1s\" }\n",
    )
    .await;
    let path = app.dir.path().join("resend.toml");
    std::fs::write(
        &path,
        r#"
name = "resent later"

[[step]]
name = "paid"
provider = "setu_bbps"
event = "BILL_PAY"
source = "setu-short-lived"

[[step]]
name = "again"
resend = "paid"
delay = "2500ms"
expect_duplicate = true
"#,
    )
    .unwrap();
    let (ok, printed) = app
        .cli(&["trigger", "--scenario", path.to_str().unwrap()])
        .await;
    assert!(ok, "{printed}");
    assert!(printed.contains("duplicate"), "{printed}");
    app.stop().await;
}

/// A message dated in the past with `--at` is still signed now: a Setu JWT issued at that date
/// would be refused as too old.
async fn a_message_dated_in_the_past_is_signed_now(backend: Backend) {
    let app = spawn_app(backend).await;
    let (ok, printed) = app
        .cli(&[
            "trigger",
            "setu_bbps",
            "BILL_PAY",
            "--source",
            "setu-jwt",
            "--at",
            "2025-01-01T00:00:00+05:30",
        ])
        .await;
    assert!(ok, "{printed}");
    assert!(printed.contains("HTTP 202"), "{printed}");
    app.stop().await;
}

/// A CamInvoice source's path token is its credential: an unreachable target's error names
/// the URL without it.
#[tokio::test]
async fn an_unreachable_target_is_named_without_its_path_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("billhook.toml");
    std::fs::write(&config, test_config(dir.path())).unwrap();
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_billhook"))
        .args(["trigger", "caminvoice", "DOCUMENT.RECEIVED", "--config"])
        .arg(&config)
        .env("BILLHOOK_URL", format!("http://{address}"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(printed.contains("/ingest/caminvoice/…"), "{printed}");
    assert!(!printed.contains(CAMINVOICE_TOKEN), "{printed}");
}

/// `--source` must name a source of the message's provider: another's credential would sign a
/// message of another kind, which was never what was meant.
#[test]
fn a_source_of_another_provider_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("billhook.toml");
    std::fs::write(&config, test_config(dir.path())).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_billhook"))
        .args([
            "trigger",
            "razorpay",
            "invoice.paid",
            "--source",
            "zwitch",
            "--print",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let printed = String::from_utf8_lossy(&output.stderr);
    assert!(
        printed.contains("source `zwitch` takes zwitch webhooks, not razorpay"),
        "{printed}"
    );
}

/// `--secret ""` (an unset variable) and an `--at` too late to write are refused before
/// anything is sent, each with what is wrong.
#[test]
fn an_empty_secret_and_a_time_past_writing_are_refused() {
    let refused = |args: &[&str], expected: &str| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_billhook"))
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        let printed = String::from_utf8_lossy(&output.stderr);
        assert!(printed.contains(expected), "{printed}");
    };
    refused(
        &[
            "trigger",
            "zwitch",
            "payments.updated",
            "--to",
            "http://127.0.0.1:9/",
            "--secret",
            "",
        ],
        "--secret is empty",
    );
    for late in ["9999-12-31T20:00:00Z", "9999-01-01T00:00:00Z"] {
        refused(
            &[
                "trigger",
                "setu_bbps",
                "BILL_FETCH",
                "--at",
                late,
                "--print",
            ],
            "is too late",
        );
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_billhook"))
        .args([
            "trigger",
            "setu_bbps",
            "BILL_FETCH",
            "--at",
            "9998-12-31T23:59:59Z",
            "--print",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.contains("9999-01-01T05:29:59.000+05:30"),
        "{printed}"
    );
}

/// A scenario whose later step cannot be sent (a source the configuration lacks) stops before
/// its first message; one sent to a plain receiver with `--to` does not fail a step expecting
/// quarantine, which only billhook could report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_is_checked_whole_and_a_receiver_is_not_asked_about_quarantine() {
    let app = spawn_app(Backend::Sqlite).await;
    let receiver = Receiver::ok().await;
    let path = app.dir.path().join("checked.toml");
    let scenario = |source: &str| {
        format!(
            r#"
name = "checked whole"

[[step]]
name = "paid"
provider = "zwitch"
event = "payments.updated"

[[step]]
name = "refused"
provider = "zwitch"
event = "payments.updated"
source = "{source}"
expect_quarantined = true
"#
        )
    };
    std::fs::write(&path, scenario("zwich")).unwrap();
    let (ok, printed) = app
        .cli(&["trigger", "--scenario", path.to_str().unwrap()])
        .await;
    assert!(!ok, "{printed}");
    assert!(
        printed.contains("step `refused`: no source named `zwich`"),
        "{printed}"
    );
    let (_, stored) = app.admin_get("/v1/inbound").await;
    assert_eq!(stored["data"], serde_json::json!([]), "nothing was sent");

    std::fs::write(&path, scenario("zwitch")).unwrap();
    let (ok, printed) = app
        .cli(&[
            "trigger",
            "--scenario",
            path.to_str().unwrap(),
            "--to",
            &receiver.url,
            "--secret",
            ZWITCH_SECRET,
        ])
        .await;
    assert!(ok, "{printed}");
    assert_eq!(receiver.count(), 2);
    app.stop().await;
}

/// A step whose message billhook quarantines fails unless the step expects it; a resent step's
/// message can be referred to by the resend's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_billhook_quarantines_fails_unless_it_expects_so() {
    let app = spawn_app(Backend::Sqlite).await;
    let scenario = |expect_quarantined: bool| {
        format!(
            r#"
name = "a refund larger than nothing"

[[step]]
name = "paid"
provider = "razorpay"
event = "invoice.paid"

[[step]]
name = "again"
resend = "paid"

[[step]]
name = "broken"
provider = "razorpay"
event = "invoice.paid"
expect_quarantined = {expect_quarantined}
[step.set]
"payload.invoice.entity.id" = "${{again.payload.invoice.entity.id}}"
"payload.invoice.entity.amount" = -5
"#
        )
    };
    let path = app.dir.path().join("quarantined.toml");

    std::fs::write(&path, scenario(false)).unwrap();
    let (ok, printed) = app
        .cli(&["trigger", "--scenario", path.to_str().unwrap()])
        .await;
    assert!(!ok, "{printed}");
    assert!(
        printed.contains("step `broken`: expected quarantined = false"),
        "{printed}"
    );

    std::fs::write(&path, scenario(true)).unwrap();
    let (ok, printed) = app
        .cli(&["trigger", "--scenario", path.to_str().unwrap()])
        .await;
    assert!(ok, "{printed}");
    assert!(
        printed.contains("broken (razorpay invoice.paid) → 202, 0 event(s), quarantined"),
        "{printed}"
    );
    let (_, quarantined) = app.admin_get("/v1/inbound?status=quarantined").await;
    assert_eq!(
        quarantined["data"].as_array().unwrap().len(),
        2,
        "{quarantined}"
    );

    // Sent with --to, billhook's answer still counts.
    let ingest = app.url("/ingest/razorpay");
    let to = ["--to", ingest.as_str(), "--secret", RAZORPAY_SECRET];
    for expect_quarantined in [false, true] {
        std::fs::write(&path, scenario(expect_quarantined)).unwrap();
        let mut args = vec!["trigger", "--scenario", path.to_str().unwrap()];
        args.extend(to);
        let (ok, printed) = app.cli(&args).await;
        assert_eq!(ok, expect_quarantined, "{printed}");
    }
    app.stop().await;
}

/// A redelivery must be reported as a duplicate; a source that acknowledges with an empty 204
/// cannot say so, and the step fails rather than pass unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_that_cannot_be_checked_fails_its_step() {
    let app = spawn_app_with(
        Backend::Sqlite,
        &format!(
            r#"
[[source]]
name = "razorpay-quiet"
provider = "razorpay"
secrets = ["{RAZORPAY_SECRET}"]
ack_status = 204
"#
        ),
    )
    .await;
    let path = app.dir.path().join("redelivered.toml");
    std::fs::write(
        &path,
        r#"
name = "redelivered"

[[step]]
name = "paid"
provider = "razorpay"
event = "invoice.paid"
source = "razorpay-quiet"
repeat = 2
"#,
    )
    .unwrap();
    let (ok, printed) = app
        .cli(&["trigger", "--scenario", path.to_str().unwrap()])
        .await;
    assert!(!ok, "{printed}");
    assert!(
        printed.contains("  ok     paid (razorpay invoice.paid #1) → 204"),
        "{printed}"
    );
    assert!(
        printed
            .contains("step `paid`: expected duplicate = true, but billhook's answer does not say"),
        "{printed}"
    );
    app.stop().await;
}

/// A scenario that fails still prints, with `--json`, the steps sent so far and the failed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_scenario_still_prints_its_steps_as_json() {
    let app = spawn_app(Backend::Sqlite).await;
    let path = app.dir.path().join("expects-too-much.toml");
    std::fs::write(
        &path,
        r#"
name = "expects too much"

[[step]]
name = "paid"
provider = "razorpay"
event = "invoice.paid"

[[step]]
name = "refused"
provider = "razorpay"
event = "invoice.paid"
expect = 409
"#,
    )
    .unwrap();
    let (ok, printed) = app
        .cli(&["trigger", "--scenario", path.to_str().unwrap(), "--json"])
        .await;
    assert!(!ok, "{printed}");
    // The report on standard output, then the error on standard error.
    let report: Value = serde_json::Deserializer::from_str(&printed)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{report}");
    assert_eq!(steps[1]["step"], json!("refused"));
    assert_eq!(steps[1]["status"], json!(202));
    assert!(
        printed.contains("step `refused` got 202, expected 409"),
        "{printed}"
    );
    app.stop().await;
}

/// A path token cannot ride along with --to, which gives the path whole: the 401 says where
/// the token goes.
async fn a_path_token_source_sent_with_to_is_told_where_its_token_goes(backend: Backend) {
    let app = spawn_app(backend).await;
    let without_token = app.url("/ingest/caminvoice");
    let (ok, printed) = app
        .cli(&[
            "trigger",
            "caminvoice",
            "DOCUMENT.RECEIVED",
            "--to",
            &without_token,
        ])
        .await;
    assert!(!ok, "{printed}");
    assert!(
        printed.contains("authenticates by a token in the path"),
        "{printed}"
    );
    assert!(!printed.contains(CAMINVOICE_TOKEN), "{printed}");
    // A wrong token is told as wrong, not as missing.
    let (ok, printed) = app
        .cli(&[
            "trigger",
            "caminvoice",
            "DOCUMENT.RECEIVED",
            "--to",
            &format!("{without_token}/not-the-token"),
        ])
        .await;
    assert!(!ok, "{printed}");
    assert!(
        printed.contains("the token at the end of --to is not source `caminvoice`'s"),
        "{printed}"
    );
    let with_token = format!("{without_token}/{CAMINVOICE_TOKEN}");
    let (ok, printed) = app
        .cli(&[
            "trigger",
            "caminvoice",
            "DOCUMENT.RECEIVED",
            "--to",
            &with_token,
        ])
        .await;
    assert!(ok, "{printed}");
    app.stop().await;
}

/// `--header` replaces a generated header of its name: a wrong signature or credential given on
/// purpose is what billhook sees, and refuses.
async fn a_given_header_replaces_the_generated_one(backend: Backend) {
    let app = spawn_app(backend).await;
    let wrong_signature = format!("X-Razorpay-Signature: {}", "0".repeat(64));
    let wrong_key = "x-bill-webhook-api-key: not-the-key";
    for (provider, event, header, code) in [
        (
            "razorpay",
            "invoice.paid",
            wrong_signature.as_str(),
            "invalid_signature",
        ),
        ("setu_bbps", "BILL_PAY", wrong_key, "invalid_credentials"),
    ] {
        let (ok, printed) = app
            .cli(&["trigger", provider, event, "--header", header])
            .await;
        assert!(!ok, "{provider}: {printed}");
        assert!(printed.contains(code), "{provider}: {printed}");
    }
    let (_, listing) = app.admin_get("/v1/events").await;
    assert_eq!(listing["data"], json!([]), "nothing was taken in");
    app.stop().await;
}
