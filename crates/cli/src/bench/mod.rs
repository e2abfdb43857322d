//! `billhook bench`: drives signed provider traffic through a billhook and measures what comes
//! out the other side.
//!
//! The bench starts (or targets) a billhook, starts a receiver endpoint subscribed to every
//! event, builds emulator messages before the clock starts, then sends them with a fixed number
//! of connections (closed loop) or at a fixed rate (open loop, latency measured from each
//! request's scheduled time, so a stall is not hidden by the requests it delays). It waits for
//! every acknowledged event to arrive and reports throughput, latency percentiles, errors, lost
//! and duplicated deliveries and the server's CPU time and peak memory. A run with lost or
//! duplicated events fails, whatever its speed.

mod receiver;
mod stats;
mod target;
mod tracker;
mod traffic;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use billhook_core::signing::EndpointSecret;
use billhook_providers::{PROVIDERS, by_name};
use billhook_server::config::HumanDuration;
use billhook_server::delivery::{PooledClient, pooled_client};
use clap::{Args, ValueEnum};
use http::Request;
use http::header::{self, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::GaiResolver;
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::output;
use crate::{CliError, client};
use receiver::{Receiver, SignatureChecks};
use stats::{Latency, Millis, per_second};
use target::{Launch, Target, Usage};
use tracker::Tracker;
use traffic::{Message, Mix, Source};

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Measured messages to send (default 20000 unless --duration is given).
    #[arg(long, conflicts_with = "duration")]
    events: Option<u64>,
    /// Send for this long instead (`60s`, `2m`).
    #[arg(long)]
    duration: Option<HumanDuration>,
    /// Messages sent before measuring, to warm connections and caches.
    #[arg(long, default_value_t = 2000)]
    warmup: u64,
    /// Requests in flight at once (connections to billhook); also the endpoint's concurrency.
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// Send at this many messages per second (open loop) instead of as fast as acknowledged.
    #[arg(long)]
    rate: Option<u32>,
    /// Only this provider's events (default: a mix of all).
    #[arg(long)]
    provider: Option<String>,
    /// Measure ingest alone: no endpoint, nothing delivered.
    #[arg(long)]
    no_endpoint: bool,
    /// The database of the billhook the bench starts.
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,
    /// The PostgreSQL database for `--backend postgres`; the bench works in a schema of its own
    /// and drops it afterwards.
    #[arg(
        long,
        env = "BILLHOOK_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    /// Measure a running billhook instead of starting one (its --config gives the sources; an
    /// endpoint to the bench's receiver is created through the admin API and deleted after).
    #[arg(long)]
    url: Option<String>,
    /// The running billhook's configuration file (with --url; default: the data directory's
    /// billhook.toml, as for the other commands).
    #[arg(long, requires = "url")]
    config: Option<PathBuf>,
    /// Where the bench's receiver listens. A billhook on another machine (--url) cannot reach
    /// the default, this machine's loopback: listen on an address it can, and give the URL it
    /// reaches it by with --receiver-url.
    #[arg(long, default_value = "127.0.0.1:0")]
    receiver_listen: std::net::SocketAddr,
    /// The URL billhook delivers to, when it is not the address the receiver listens on
    /// (`http://bench-host:9000/hook`; the path is `/hook`).
    #[arg(long)]
    receiver_url: Option<String>,
    /// The running billhook's admin token (with --url; a bench without --url starts its own
    /// server and needs none).
    #[arg(long, env = "BILLHOOK_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The most seconds one admin API request of a run with --url may take (creating, reading
    /// and deleting the receiver's endpoint), as for the other client commands.
    #[arg(
        long,
        env = "BILLHOOK_CLIENT_TIMEOUT",
        default_value_t = crate::CLIENT_TIMEOUT_SECONDS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    timeout: u64,
    /// How long to wait for acknowledged events still to arrive after the last progress.
    #[arg(long, default_value = "30s")]
    drain_timeout: HumanDuration,
    /// Seed for the generated messages (their ids and contents); a new one each run unless
    /// given, so a second run against the same server is not refused as duplicates. The report
    /// names the seed used.
    #[arg(long)]
    seed: Option<u64>,
    /// Keep the started server's data directory (and PostgreSQL schema) for inspection.
    #[arg(long)]
    keep: bool,
    /// Fail the run on any failed request, not only on more than one in a hundred: a request
    /// that timed out may have been stored all the same, and its events are then not followed.
    #[arg(long)]
    strict: bool,
    /// Print one JSON object of figures instead of the report.
    #[arg(long)]
    json: bool,
}

/// The fastest schedule `--rate` keeps: one message a microsecond.
const MAX_RATE: u32 = 1_000_000;

/// The most messages one phase builds ahead (a few GiB with the fixtures' bodies).
const MAX_MESSAGES: u64 = 5_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Backend {
    Sqlite,
    Postgres,
}

/// Every figure of a run; `--json` prints it as is.
#[derive(Debug, Serialize)]
struct Report {
    backend: &'static str,
    provider: String,
    mode: String,
    concurrency: u32,
    /// What the messages were generated from: `--seed` gives the same messages again.
    seed: u64,
    warmup_messages: u64,
    /// Messages sent in the measured window, and how long sending them took.
    messages: u64,
    /// Of those, acknowledged as new (2xx, neither a duplicate nor quarantined).
    acknowledged: u64,
    send_ms: u64,
    /// With --duration: the messages built ahead ran out before the time was up.
    ran_out: bool,
    /// Acknowledged (2xx, not a duplicate) per second over the measured window.
    ingest_per_second: u64,
    ack_latency: Option<Latency>,
    errors: BTreeMap<String, u64>,
    delivery: Option<DeliveryReport>,
    server: Option<Usage>,
    /// Server CPU milliseconds per thousand measured messages.
    server_cpu_ms_per_1k: Option<u64>,
}

#[derive(Debug, Serialize)]
struct DeliveryReport {
    /// Events acknowledged in the measured window and those that reached the receiver.
    events: usize,
    delivered: usize,
    /// Delivered events per second, from the first measured request to the last arrival.
    delivered_per_second: u64,
    end_to_end_latency: Option<Latency>,
    lost: usize,
    duplicated: usize,
    duplicate_arrivals: usize,
    /// Ledger conclusions (`invoice.settled`, …) that arrived besides the acknowledged events.
    conclusions: usize,
    /// Deliveries billhook still owed the receiver when the run ended (pending or failed, after
    /// up to `--drain-timeout` of waiting). Each may be a retry of an event that did arrive, a
    /// duplicate the run could not see, so any fails the run.
    owed_after_drain: u64,
    signatures: SignatureChecks,
}

/// One phase of a run (the warm-up or the measured window) and what its senders share.
struct Run {
    sources: Arc<Vec<Source>>,
    messages: Vec<Message>,
    measured: bool,
    http: Sender,
    tracker: Option<Arc<Tracker>>,
    acknowledged: AtomicU64,
    failed: AtomicU64,
    ack_latencies: Mutex<Vec<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Run {
    /// Records how long a measured request took to be answered, or to fail: a request that
    /// timed out or was refused counts in the latency as much as one acknowledged.
    fn answered(&self, started: Instant, at: Instant) {
        let micros = at.duration_since(started).as_micros();
        self.ack_latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(u64::try_from(micros).unwrap_or(u64::MAX));
    }
}

#[derive(serde::Deserialize)]
struct Ack {
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    quarantined: bool,
}

pub(crate) async fn bench(args: BenchArgs) -> Result<(), CliError> {
    let provider_names: Vec<&'static str> = match &args.provider {
        Some(name) => vec![
            by_name(name)
                .ok_or_else(|| CliError::Usage(format!("unknown provider `{name}`")))?
                .name(),
        ],
        None => PROVIDERS.iter().map(|p| p.name()).collect(),
    };
    if args.concurrency == 0 || args.rate == Some(0) || args.events == Some(0) {
        return Err(CliError::Usage(
            "--concurrency, --rate and --events must be positive".to_owned(),
        ));
    }
    if args.duration.as_ref().is_some_and(|d| d.0.is_zero()) {
        return Err(CliError::Usage("--duration must be positive".to_owned()));
    }
    if args.rate.is_some_and(|rate| rate > MAX_RATE) {
        return Err(CliError::Usage(format!(
            "--rate is at most {MAX_RATE} messages per second"
        )));
    }
    if args.events.is_some_and(|events| events > MAX_MESSAGES) || args.warmup > MAX_MESSAGES {
        return Err(CliError::Usage(format!(
            "--events and --warmup are at most {MAX_MESSAGES}: every message is built before the clock starts"
        )));
    }
    if let (Some(duration), Some(rate)) = (&args.duration, args.rate)
        && scheduled_messages(rate, duration.0) > MAX_MESSAGES
    {
        return Err(CliError::Usage(format!(
            "--rate {rate} for {duration} is more than {MAX_MESSAGES} messages, every one built before the clock starts: run shorter or slower"
        )));
    }
    let tracker = (!args.no_endpoint).then(|| Arc::new(Tracker::default()));
    let secret = EndpointSecret::generate();
    let receiver = match &tracker {
        Some(tracker) => Some(
            Receiver::start(
                Arc::clone(tracker),
                secret.clone(),
                args.receiver_listen,
                args.receiver_url.as_deref(),
            )
            .await
            .map_err(|e| CliError::Io(format!("cannot start the receiver: {e}")))?,
        ),
        None => None,
    };

    let (target, remote_endpoint) = match &args.url {
        None => {
            let secret_text = secret.expose();
            let launch = Launch {
                endpoint: receiver
                    .as_ref()
                    .map(|r| (r.url.as_str(), secret_text.as_str())),
                concurrency: args.concurrency,
                postgres: (args.backend == Backend::Postgres).then_some(args.postgres_url.as_str()),
                keep: args.keep,
            };
            (Target::spawn(launch).await?, None)
        }
        Some(url) => {
            let remote = crate::Remote {
                url: Some(url.clone()),
                token: args.token.clone(),
                config: args.config.clone(),
                json: false,
                timeout: args.timeout,
            };
            let config = crate::serve::load_config(args.config.as_deref())?;
            let endpoint = match &receiver {
                Some(receiver) => {
                    let client = client::Client::connect(&remote)?;
                    let created = client
                        .post(
                            "/v1/endpoints",
                            &json!({
                                "url": receiver.url,
                                "event_types": ["*"],
                                "max_concurrency": args.concurrency,
                                "secret": secret.expose(),
                                "description": "billhook bench receiver (deleted after the run)",
                            }),
                        )
                        .await?;
                    let id = created["id"].as_str().unwrap_or_default().to_owned();
                    Some((client, id))
                }
                None => None,
            };
            (Target::remote(url, config), endpoint)
        }
    };
    let outcome = async {
        let api = receiver_endpoint(&target, remote_endpoint.as_ref()).await?;
        let api = api.as_ref().map(|(client, id)| (client, id.as_str()));
        measure(
            &args,
            &provider_names,
            tracker,
            receiver.as_ref(),
            &target,
            api,
        )
        .await
    }
    .await;
    if let Some((client, id)) = remote_endpoint
        && let Err(error) = client.delete(&format!("/v1/endpoints/{id}")).await
    {
        eprintln!("billhook bench: could not delete the receiver endpoint {id}: {error}");
    }
    if args.keep
        && let Some(dir) = target.data_dir()
    {
        eprintln!("billhook bench: kept {}", dir.display());
    }
    target.stop().await;
    if let Some(receiver) = receiver {
        receiver.stop();
    }
    let report = outcome?;
    if args.json {
        output::line(&serde_json::to_string(&report).unwrap_or_default());
    } else {
        print_report(&report);
    }
    match &report.delivery {
        Some(delivery) if delivery.lost > 0 || delivery.duplicated > 0 => {
            Err(CliError::Usage(format!(
                "{} event(s) lost and {} delivered more than once",
                delivery.lost, delivery.duplicated
            )))
        }
        Some(delivery) if delivery.owed_after_drain > 0 => Err(CliError::Usage(format!(
            "billhook still owed {} deliveries --drain-timeout after the last arrival, though every acknowledged event had arrived: duplicates cannot be ruled out",
            delivery.owed_after_drain
        ))),
        Some(delivery) if delivery.signatures.bad > 0 => Err(CliError::Usage(format!(
            "{} delivery signature(s) did not verify",
            delivery.signatures.bad
        ))),
        _ => refused(&report, args.strict).map_or(Ok(()), |why| Err(CliError::Usage(why))),
    }
}

/// The admin API of the billhook measured and the id of the receiver's endpoint there: the one
/// the bench created on a running billhook, or the `bench` endpoint of the one it started.
async fn receiver_endpoint(
    target: &Target,
    created: Option<&(client::Client, String)>,
) -> Result<Option<(client::Client, String)>, CliError> {
    if let Some((client, id)) = created {
        return Ok(Some((client.clone(), id.clone())));
    }
    let Some(client) = target.admin_client()? else {
        return Ok(None);
    };
    let listed = client.get("/v1/endpoints", &[]).await?;
    let id = listed["data"].as_array().and_then(|endpoints| {
        endpoints
            .iter()
            .find(|endpoint| endpoint["name"] == "bench")
            .and_then(|endpoint| endpoint["id"].as_str())
    });
    Ok(id.map(|id| (client, id.to_owned())))
}

/// Why a run measured nothing worth its figures: nothing acknowledged (wrong secrets, every
/// message a duplicate of an earlier run's), or more than one message in a hundred failed (any,
/// when `strict`).
fn refused(report: &Report, strict: bool) -> Option<String> {
    let failed: u64 = report.errors.values().sum();
    let kinds = || {
        report
            .errors
            .iter()
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if report.messages > 0 && report.acknowledged == 0 {
        Some(format!(
            "none of {} messages was acknowledged ({})",
            report.messages,
            kinds()
        ))
    } else if (strict && failed > 0) || failed.saturating_mul(100) > report.messages {
        Some(format!(
            "{failed} of {} messages failed ({})",
            report.messages,
            kinds()
        ))
    } else {
        None
    }
}

async fn measure(
    args: &BenchArgs,
    provider_names: &[&'static str],
    tracker: Option<Arc<Tracker>>,
    receiver: Option<&Receiver>,
    target: &Target,
    endpoint_api: Option<(&client::Client, &str)>,
) -> Result<Report, CliError> {
    let sources = sources_of(target, provider_names, tracker.is_some())?;
    let mix = Mix::new(&sources);
    if mix.len() == 0 {
        return Err(CliError::Usage("no events to send".to_owned()));
    }
    let sources = Arc::new(sources);
    let http = sender(args.concurrency as usize)?;
    let phase = |messages: Vec<Message>, measured: bool| {
        Arc::new(Run {
            sources: Arc::clone(&sources),
            measured,
            ack_latencies: Mutex::new(Vec::with_capacity(if measured {
                messages.len()
            } else {
                0
            })),
            messages,
            http: http.clone(),
            tracker: tracker.clone(),
            acknowledged: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
        })
    };

    let seed = args.seed.unwrap_or_else(rand::random);
    // Warm-up: connections, caches, and for --duration a first reading of the pace.
    let warmup = phase(build(&mix, &sources, 0..args.warmup, seed)?, false);
    let warmup_started = Instant::now();
    send_range(&warmup, args, None).await;
    let warmup_pace = per_second(
        warmup.acknowledged.load(Ordering::Relaxed) as usize,
        warmup_started.elapsed(),
    );
    let measured = match (args.events, &args.duration, args.rate) {
        (Some(events), _, _) => events,
        (None, Some(duration), Some(rate)) => scheduled_messages(rate, duration.0),
        // Closed loop for a duration: messages for twice the warm-up's pace (at least 1,000/s),
        // built before the clock starts; if they run out first, the run ends early and says so.
        (None, Some(duration), None) => {
            messages_at(warmup_pace.max(1_000).saturating_mul(2), duration.0).min(MAX_MESSAGES)
        }
        (None, None, _) => 20_000,
    };
    let run = phase(
        build(&mix, &sources, args.warmup..args.warmup + measured, seed)?,
        true,
    );
    // The warm-up's deliveries are done before the window opens: left queued, they would be
    // sent, timed and paid for in CPU within it.
    if let Some(tracker) = &tracker {
        drain(tracker, args.drain_timeout.0).await;
    }

    let usage_before = target.usage();
    let window_start = Instant::now();
    let bar = indicatif::ProgressBar::new(measured).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bar:30} {pos}/{len} sent  {msg}  {elapsed}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let ticker = tokio::spawn({
        let run = Arc::clone(&run);
        let bar = bar.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let acked = run.acknowledged.load(Ordering::Relaxed);
                let failed = run.failed.load(Ordering::Relaxed);
                let delivered = run
                    .tracker
                    .as_ref()
                    .map_or(String::new(), |t| format!(", {} arrived", t.progress().1));
                bar.set_position(acked + failed);
                bar.set_message(format!(
                    "{} acknowledged/s{delivered}, {failed} failed",
                    per_second(acked as usize, window_start.elapsed())
                ));
            }
        }
    });
    let deadline = args.duration.as_ref().map(|d| window_start + d.0);
    let sent = send_range(&run, args, deadline).await;
    let send_elapsed = window_start.elapsed();

    if let Some(tracker) = &tracker {
        drain(tracker, args.drain_timeout.0).await;
    }
    // Read before the questions that follow, which are the bench's, not the traffic's.
    let usage_after = target.usage();
    let mut owed_after_drain = 0;
    if let Some(tracker) = &tracker
        && let Some((client, endpoint)) = endpoint_api
    {
        // A running billhook's endpoint is also owed that billhook's own traffic, which may
        // never be all delivered at once: only the run's events count there.
        let only_ours = args.url.is_some().then_some(&**tracker);
        owed_after_drain = settle(client, endpoint, only_ours, args.drain_timeout.0).await?;
    }
    ticker.abort();
    bar.finish_and_clear();

    let acknowledged = run.acknowledged.load(Ordering::Relaxed);
    let ack_latency = Latency::of(std::mem::take(
        &mut *run.ack_latencies.lock().unwrap_or_else(|p| p.into_inner()),
    ));
    let errors = run.errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let delivery = tracker.map(|tracker| {
        // A running billhook's endpoint also receives its own traffic: what nobody here
        // acknowledged may be another sender's, and arrive twice as that sender's retries do.
        let outcome = tracker.outcome(args.url.is_some());
        let delivered_span = outcome.last_arrival.map_or(send_elapsed, |last| {
            last.saturating_duration_since(window_start)
        });
        DeliveryReport {
            events: outcome.acknowledged,
            delivered: outcome.delivered,
            delivered_per_second: per_second(outcome.delivered, delivered_span),
            end_to_end_latency: Latency::of(outcome.end_to_end_us),
            lost: outcome.lost,
            duplicated: outcome.duplicated_events,
            duplicate_arrivals: outcome.duplicate_arrivals,
            conclusions: outcome.unsolicited,
            owed_after_drain,
            signatures: receiver.map_or(
                SignatureChecks {
                    verified: 0,
                    bad: 0,
                },
                |r| r.signature_checks(),
            ),
        }
    });
    let server = match (usage_before, usage_after) {
        (Some(before), Some(after)) => Some(Usage {
            cpu_ms: after.cpu_ms.saturating_sub(before.cpu_ms),
            peak_rss_kib: after.peak_rss_kib,
        }),
        _ => None,
    };
    Ok(Report {
        backend: match (&args.url, args.backend) {
            (Some(_), _) => "remote",
            (None, Backend::Sqlite) => "sqlite",
            (None, Backend::Postgres) => "postgres",
        },
        provider: args.provider.clone().unwrap_or_else(|| "mix".to_owned()),
        mode: match args.rate {
            Some(rate) => format!("open loop at {rate}/s"),
            None => format!("closed loop, {} connections", args.concurrency),
        },
        concurrency: args.concurrency,
        seed,
        warmup_messages: args.warmup,
        messages: sent,
        acknowledged,
        send_ms: u64::try_from(send_elapsed.as_millis()).unwrap_or(u64::MAX),
        // An open loop is built exactly to its schedule; only a closed loop can run out.
        ran_out: args.rate.is_none()
            && args
                .duration
                .as_ref()
                .is_some_and(|d| send_elapsed < d.0 && sent == measured),
        ingest_per_second: per_second(acknowledged as usize, send_elapsed),
        ack_latency,
        errors,
        delivery,
        server_cpu_ms_per_1k: server
            .filter(|_| sent > 0)
            .map(|usage| usage.cpu_ms * 1000 / sent),
        server,
    })
}

/// Builds messages `range` (numbered across the whole run) with a progress bar.
fn build(
    mix: &Mix,
    sources: &[Source],
    range: std::ops::Range<u64>,
    seed: u64,
) -> Result<Vec<Message>, CliError> {
    let bar = indicatif::ProgressBar::new(range.end - range.start).with_style(
        indicatif::ProgressStyle::with_template("{spinner} building messages {bar:30} {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let messages = tokio::task::block_in_place(|| mix.build(sources, range, seed, &|n| bar.inc(n)));
    bar.finish_and_clear();
    messages
}

/// The target's sources for the chosen providers, with their ingest URLs. Following events to
/// the receiver needs their ids, which a source acknowledging with `204` does not give.
fn sources_of(
    target: &Target,
    providers: &[&'static str],
    follows_events: bool,
) -> Result<Vec<Source>, CliError> {
    let mut sources = Vec::new();
    for name in providers {
        let Some(config) = target.config.sources.iter().find(|s| s.provider == *name) else {
            if providers.len() == 1 {
                return Err(CliError::Usage(format!("the target has no {name} source")));
            }
            continue;
        };
        if follows_events && config.ack_status == Some(204) {
            return Err(CliError::Usage(format!(
                "source `{}` acknowledges with 204, without the ids of the events it stored, so their deliveries cannot be followed: measure it with --no-endpoint",
                config.name
            )));
        }
        let spec = config.spec()?;
        let url = crate::trigger::ingest_url(&target.base_url, &config.name, Some(&spec.auth));
        // The URL may end in the source's path token: name the source, not the URL.
        let uri = url.parse().map_err(|e| {
            CliError::Usage(format!(
                "the ingest URL of source `{}` at {} is not a URL: {e}",
                config.name, target.base_url
            ))
        })?;
        sources.push(Source {
            provider: spec.provider,
            uri,
            auth: spec.auth,
        });
    }
    Ok(sources)
}

/// Sends the phase's messages, closed loop or at the configured rate, until done or `deadline`;
/// returns how many were sent.
async fn send_range(run: &Arc<Run>, args: &BenchArgs, deadline: Option<Instant>) -> u64 {
    let range = 0..run.messages.len() as u64;
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    match args.rate {
        None => {
            let next = Arc::new(AtomicU64::new(range.start));
            let workers: Vec<_> = (0..args.concurrency)
                .map(|_| {
                    let run = Arc::clone(run);
                    let next = Arc::clone(&next);
                    let sent = Arc::clone(&sent);
                    let end = range.end;
                    tokio::spawn(async move {
                        loop {
                            if deadline.is_some_and(|d| Instant::now() >= d) {
                                break;
                            }
                            let n = next.fetch_add(1, Ordering::Relaxed);
                            if n >= end {
                                break;
                            }
                            sent.fetch_add(1, Ordering::Relaxed);
                            send_one(&run, n, Instant::now()).await;
                        }
                    })
                })
                .collect();
            for worker in workers {
                let _ = worker.await;
            }
        }
        Some(rate) => {
            let permits = Arc::new(Semaphore::new(args.concurrency as usize));
            let interval_ns = interval_of(rate).as_nanos() as u64;
            let mut tasks = Vec::new();
            for n in range {
                let scheduled = started + Duration::from_nanos(interval_ns.saturating_mul(n));
                if deadline.is_some_and(|d| scheduled >= d) {
                    break;
                }
                tokio::time::sleep_until(scheduled.into()).await;
                // Tokio's timer wakes on its millisecond tick, up to a tick after `scheduled`:
                // that wait is the bench's own and is not charged to billhook. Any later start
                // (this loop held up, every connection busy) is.
                let due = Instant::now().min(scheduled + TIMER_TICK);
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    break;
                };
                let run = Arc::clone(run);
                sent.fetch_add(1, Ordering::Relaxed);
                tasks.push(tokio::spawn(async move {
                    // Latency counts from when the request was due, so waiting for a
                    // connection counts.
                    send_one(&run, n, due).await;
                    drop(permit);
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        }
    }
    sent.load(Ordering::Relaxed)
}

/// The granularity of tokio's timer: a sleep ends on the first tick at or after its deadline.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// The time between two messages of an open loop at `rate` per second.
fn interval_of(rate: u32) -> Duration {
    Duration::from_nanos(1_000_000_000 / u64::from(rate.max(1)))
}

/// How many messages an open loop at `rate` starts within `duration`.
fn scheduled_messages(rate: u32, duration: Duration) -> u64 {
    let interval = interval_of(rate).as_nanos();
    u64::try_from(duration.as_nanos().div_ceil(interval)).unwrap_or(u64::MAX)
}

/// How many messages `duration` holds at `per_second`.
fn messages_at(per_second: u64, duration: Duration) -> u64 {
    let messages = (u128::from(per_second) * duration.as_nanos()).div_ceil(1_000_000_000);
    u64::try_from(messages).unwrap_or(u64::MAX)
}

/// The client the traffic goes out through: hyper's pooled client, plain or TLS, one kept-alive
/// connection per sender. Lean on purpose: the bench shares the machine with the billhook it
/// measures, so every cycle it spends is one billhook does not get.
type Sender = PooledClient<GaiResolver>;

fn sender(connections: usize) -> Result<Sender, CliError> {
    pooled_client(HttpConnector::new(), CONNECT_TIMEOUT, connections)
        .map_err(|e| CliError::Io(format!("cannot build the HTTP client: {e}")))
}

/// How long one request may take before it counts as a `timeout` error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long opening a connection may take before the request counts as a `connect` error: a
/// billhook that does not accept within seconds is down, not slow.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const USER_AGENT: &str = concat!("billhook-bench/", env!("CARGO_PKG_VERSION"));

/// Waits for every acknowledged event to arrive, as long as arrivals keep coming: until none
/// has for `stalled`.
async fn drain(tracker: &Tracker, stalled: Duration) {
    let mut last = tracker.progress();
    let mut last_change = Instant::now();
    while last.0 > 0 && last_change.elapsed() < stalled {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = tracker.progress();
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
}

/// Waits until billhook owes the receiver's endpoint nothing (no delivery pending or failed), up
/// to `timeout`, and returns how many deliveries it still owed. Only then is every duplicate in:
/// a delivery recorded as delivered is never sent again, and the receiver records an arrival
/// before it answers, so before billhook records it. One still owed may be a retry of an
/// event that did arrive. With `only_ours`, only deliveries of events the run acknowledged
/// count.
async fn settle(
    client: &client::Client,
    endpoint: &str,
    only_ours: Option<&Tracker>,
    timeout: Duration,
) -> Result<u64, CliError> {
    let deadline = Instant::now() + timeout;
    loop {
        let owed = match only_ours {
            None => {
                let path = format!("/v1/endpoints/{}", client::segment(endpoint));
                let stats = &client.get(&path, &[]).await?["stats"];
                stats["pending"].as_u64().unwrap_or(0) + stats["failed"].as_u64().unwrap_or(0)
            }
            Some(tracker) => owed_of_run(client, endpoint, tracker).await?,
        };
        if owed == 0 || Instant::now() >= deadline {
            return Ok(owed);
        }
        tokio::time::sleep(Duration::from_millis(if only_ours.is_some() {
            250
        } else {
            50
        }))
        .await;
    }
}

/// The endpoint's pending or retrying deliveries of events this run acknowledged.
async fn owed_of_run(
    client: &client::Client,
    endpoint: &str,
    tracker: &Tracker,
) -> Result<u64, CliError> {
    let path = format!("/v1/endpoints/{}/deliveries", client::segment(endpoint));
    let mut owed = 0;
    for status in ["pending", "failed"] {
        let mut cursor: Option<String> = None;
        loop {
            let mut query = vec![("status", status.to_owned()), ("limit", "500".to_owned())];
            query.extend(cursor.take().map(|cursor| ("cursor", cursor)));
            let page = client.get(&path, &query).await?;
            owed += page["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|delivery| {
                    delivery["message_id"]
                        .as_str()
                        .is_some_and(|id| tracker.was_acknowledged(id))
                })
                .count() as u64;
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
    }
    Ok(owed)
}

/// Sends message `n` and records its acknowledgement or error.
async fn send_one(run: &Run, n: u64, started: Instant) {
    let measured = run.measured;
    let message = &run.messages[n as usize];
    let source = &run.sources[message.source];
    let mut request = Request::post(source.uri.clone());
    for (name, value) in message.signed_headers(source) {
        request = request.header(name, value);
    }
    let exchange = async {
        let mut request = request
            .body(Full::new(message.body.clone()))
            .map_err(|_| "request")?;
        // Some providers' messages bring their own.
        request
            .headers_mut()
            .entry(header::USER_AGENT)
            .or_insert(HeaderValue::from_static(USER_AGENT));
        let response = run.http.request(request).await.map_err(|error| {
            if error.is_connect() {
                "connect"
            } else {
                "request"
            }
        })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|_| "request")?
            .to_bytes();
        Ok::<_, &'static str>((status, body))
    };
    let error = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Err(_) => {
            if measured {
                run.answered(started, Instant::now());
            }
            "timeout".to_owned()
        }
        Ok(Err(kind)) => {
            if measured {
                run.answered(started, Instant::now());
            }
            kind.to_owned()
        }
        Ok(Ok((status, body))) => {
            let acked_at = Instant::now();
            if measured {
                run.answered(started, acked_at);
            }
            // A source set to `ack_status = 204` answers stored and duplicate alike, with no
            // body; only a run without an endpoint sends to one.
            if status == http::StatusCode::NO_CONTENT {
                run.acknowledged.fetch_add(1, Ordering::Relaxed);
                return;
            }
            match serde_json::from_slice::<Ack>(&body) {
                Ok(ack) if status.is_success() && !ack.duplicate && !ack.quarantined => {
                    if let Some(tracker) = &run.tracker {
                        tracker.acknowledged(
                            ack.events.iter().map(String::as_str),
                            started,
                            measured,
                        );
                    }
                    run.acknowledged.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(ack) if status.is_success() && ack.duplicate => "duplicate".to_owned(),
                Ok(ack) if status.is_success() && ack.quarantined => "quarantined".to_owned(),
                _ => format!("http_{}", status.as_u16()),
            }
        }
    };
    run.failed.fetch_add(1, Ordering::Relaxed);
    *run.errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(error)
        .or_default() += 1;
}

fn print_report(report: &Report) {
    let mut lines = vec![
        format!(
            "billhook bench: {} backend, {} traffic, {}",
            report.backend, report.provider, report.mode
        ),
        format!(
            "  sent        {} messages in {} s after {} warm-up",
            report.messages,
            Millis(report.send_ms),
            report.warmup_messages
        ),
        format!("  ingest      {} acknowledged/s", report.ingest_per_second),
    ];
    if report.ran_out {
        lines.push(
            "  note        the messages built ahead ran out before --duration was up".to_owned(),
        );
    }
    if let Some(latency) = &report.ack_latency {
        lines.push(format!("  ack         {}", latency_line(latency)));
    }
    if let Some(delivery) = &report.delivery {
        lines.push(format!(
            "  delivered   {}/{} events, {}/s",
            delivery.delivered, delivery.events, delivery.delivered_per_second
        ));
        if let Some(latency) = &delivery.end_to_end_latency {
            lines.push(format!("  end to end  {}", latency_line(latency)));
        }
        lines.push(format!(
            "  lost        {}   duplicated {}   conclusions {}   signatures checked {} (bad {})",
            delivery.lost,
            delivery.duplicated,
            delivery.conclusions,
            delivery.signatures.verified,
            delivery.signatures.bad
        ));
    }
    if report.errors.is_empty() {
        lines.push("  errors      none".to_owned());
    } else {
        let errors: Vec<String> = report
            .errors
            .iter()
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        lines.push(format!("  errors      {}", errors.join(", ")));
    }
    if let Some(server) = &report.server {
        lines.push(format!(
            "  server      {} s CPU ({} ms per 1k messages), peak RSS {} MiB",
            Millis(server.cpu_ms),
            report.server_cpu_ms_per_1k.unwrap_or(0),
            server.peak_rss_kib.div_ceil(1024)
        ));
    }
    output::line(&lines.join("\n"));
}

fn latency_line(latency: &Latency) -> String {
    format!(
        "p50 {} ms  p90 {} ms  p99 {} ms  max {} ms",
        Millis(latency.p50_us),
        Millis(latency.p90_us),
        Millis(latency.p99_us),
        Millis(latency.max_us)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_loop_holds_its_rate_for_a_part_of_a_second_too() {
        assert_eq!(
            scheduled_messages(1_000, Duration::from_millis(1_500)),
            1_500
        );
        assert_eq!(scheduled_messages(200, Duration::from_millis(500)), 100);
        // Starts at 0 and 1/3 s fall within half a second.
        assert_eq!(scheduled_messages(3, Duration::from_millis(500)), 2);
        assert_eq!(
            scheduled_messages(MAX_RATE, Duration::from_secs(1)),
            1_000_000
        );
        assert_eq!(messages_at(2_000, Duration::from_millis(250)), 500);
        assert_eq!(messages_at(u64::MAX, Duration::from_secs(86_400)), u64::MAX);
    }

    fn report_with(messages: u64, errors: &[(&str, u64)]) -> Report {
        let failed: u64 = errors.iter().map(|(_, count)| count).sum();
        Report {
            backend: "sqlite",
            provider: "mix".to_owned(),
            mode: "closed loop, 64 connections".to_owned(),
            concurrency: 64,
            seed: 1,
            warmup_messages: 0,
            messages,
            acknowledged: messages - failed,
            send_ms: 1_000,
            ran_out: false,
            ingest_per_second: messages - failed,
            ack_latency: None,
            errors: errors
                .iter()
                .map(|(kind, count)| ((*kind).to_owned(), *count))
                .collect(),
            delivery: None,
            server: None,
            server_cpu_ms_per_1k: None,
        }
    }

    #[test]
    fn a_run_is_refused_for_failures_beyond_one_in_a_hundred_or_any_when_strict() {
        let one_timeout = report_with(1_000, &[("timeout", 1)]);
        assert_eq!(refused(&one_timeout, false), None);
        assert_eq!(
            refused(&one_timeout, true).as_deref(),
            Some("1 of 1000 messages failed (timeout 1)")
        );
        assert!(refused(&report_with(1_000, &[("http_503", 11)]), false).is_some());
        assert!(refused(&report_with(1_000, &[]), true).is_none());
        let nothing = report_with(5, &[("duplicate", 5)]);
        assert_eq!(
            refused(&nothing, false).as_deref(),
            Some("none of 5 messages was acknowledged (duplicate 5)")
        );
    }
}
