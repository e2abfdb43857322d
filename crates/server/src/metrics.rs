//! What billhook counts: Prometheus metrics served at `/metrics` (OpenMetrics text), and the
//! per-minute activity behind the console's charts, flushed to the database so every instance's
//! work is in one picture.
//!
//! Names follow Prometheus conventions: a `billhook_` prefix, base units (seconds), `_total` on
//! counters. Labels are bounded: source names and endpoint ids come from the configuration and
//! the API, outcomes from fixed lists.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use billhook_core::time::Timestamp;
use billhook_store::{ActivityCounts, Overview};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// What became of one ingest request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum IngestOutcome {
    stored,
    duplicate,
    quarantined,
    unverified,
    rejected,
    error,
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AttemptOutcome {
    /// The endpoint answered 2xx.
    delivered,
    /// It failed and will be tried again.
    retrying,
    /// It failed and the delivery is out of attempts.
    dead,
    /// It failed and the endpoint was disabled.
    endpoint_disabled,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IngestLabels {
    source: String,
    outcome: IngestOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VerificationLabels {
    source: String,
    code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AttemptLabels {
    endpoint: String,
    outcome: AttemptOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TypeLabel {
    r#type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// For work bounded by a request: 0.25 ms to about 65 s, past every request timeout's default.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 19))
}

/// For a message's way to its receiver, which retries stretch over a day and more (the default
/// schedule spans about 28 hours): 0.25 ms to 8 s by doubling, then minutes to two days.
fn delivery_latency_histogram() -> Histogram {
    const LATER: [f64; 12] = [
        15.0, 30.0, 60.0, 300.0, 900.0, 1_800.0, 3_600.0, 7_200.0, 21_600.0, 43_200.0, 86_400.0,
        172_800.0,
    ];
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16).chain(LATER))
}

/// The last verification failure of a source, for the console.
#[derive(Debug, Clone)]
pub struct LastFailure {
    pub at: Timestamp,
    pub code: String,
}

/// Counters kept since the last flush to the database.
#[derive(Default)]
struct Pending {
    ingested: AtomicU64,
    duplicates: AtomicU64,
    quarantined: AtomicU64,
    unverified: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl Pending {
    fn take(&self) -> ActivityCounts {
        ActivityCounts {
            ingested: self.ingested.swap(0, Ordering::Relaxed),
            duplicates: self.duplicates.swap(0, Ordering::Relaxed),
            quarantined: self.quarantined.swap(0, Ordering::Relaxed),
            unverified: self.unverified.swap(0, Ordering::Relaxed),
            delivered: self.delivered.swap(0, Ordering::Relaxed),
            failed: self.failed.swap(0, Ordering::Relaxed),
        }
    }

    fn put_back(&self, counts: ActivityCounts) {
        self.ingested.fetch_add(counts.ingested, Ordering::Relaxed);
        self.duplicates
            .fetch_add(counts.duplicates, Ordering::Relaxed);
        self.quarantined
            .fetch_add(counts.quarantined, Ordering::Relaxed);
        self.unverified
            .fetch_add(counts.unverified, Ordering::Relaxed);
        self.delivered
            .fetch_add(counts.delivered, Ordering::Relaxed);
        self.failed.fetch_add(counts.failed, Ordering::Relaxed);
    }
}

/// Every metric of one billhook instance.
pub struct Metrics {
    registry: Registry,
    ingest_requests: Family<IngestLabels, Counter>,
    verification_failures: Family<VerificationLabels, Counter>,
    ingest_duration: HistogramFamily<SourceLabel>,
    delivery_attempts: Family<AttemptLabels, Counter>,
    attempt_duration: HistogramFamily<EndpointLabel>,
    delivery_latency: HistogramFamily<EndpointLabel>,
    leases_lapsed: Counter,
    ledger_conclusions: Family<TypeLabel, Counter>,
    pruned: Family<KindLabel, Counter>,
    pending_deliveries: Gauge,
    oldest_pending_age: Gauge<f64, AtomicU64>,
    disabled_endpoints: Gauge,
    failing_endpoints: Gauge,
    quarantined: Gauge,
    lanes: Gauge,
    pending: Pending,
    /// Per source: verification failures since start, and the last one.
    last_failures: Mutex<HashMap<String, (u64, LastFailure)>>,
    started_at: Timestamp,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("billhook");
        let ingest_requests = Family::<IngestLabels, Counter>::default();
        registry.register(
            "ingest_requests",
            "Ingest requests by source and outcome (stored, duplicate, quarantined, unverified, rejected, error)",
            ingest_requests.clone(),
        );
        let verification_failures = Family::<VerificationLabels, Counter>::default();
        registry.register(
            "verification_failures",
            "Ingest requests refused because they failed the source's verification, by error code",
            verification_failures.clone(),
        );
        let ingest_duration: HistogramFamily<SourceLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "ingest_duration",
            "Time from reading an ingest request to acknowledging it (stored and fsync'd)",
            Unit::Seconds,
            ingest_duration.clone(),
        );
        let delivery_attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "delivery_attempts",
            "Delivery attempts by endpoint and outcome (delivered, retrying, dead, endpoint_disabled)",
            delivery_attempts.clone(),
        );
        let attempt_duration: HistogramFamily<EndpointLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "delivery_attempt_duration",
            "Duration of one delivery attempt, response included",
            Unit::Seconds,
            attempt_duration.clone(),
        );
        let delivery_latency: HistogramFamily<EndpointLabel> =
            Family::new_with_constructor(delivery_latency_histogram);
        registry.register_with_unit(
            "delivery_latency",
            "Time from receiving a message to its successful delivery to an endpoint",
            Unit::Seconds,
            delivery_latency.clone(),
        );
        let leases_lapsed = Counter::default();
        registry.register(
            "delivery_leases_lapsed",
            "Deliveries held in memory and let go unattempted because their lease could end before an attempt would, or a newer claim held them; the database hands them out again",
            leases_lapsed.clone(),
        );
        let ledger_conclusions = Family::<TypeLabel, Counter>::default();
        registry.register(
            "ledger_conclusions",
            "Events the ledger concluded (invoice.settled, invoice.unsettled, payment.unmatched)",
            ledger_conclusions.clone(),
        );
        let pruned = Family::<KindLabel, Counter>::default();
        registry.register(
            "pruned",
            "Rows removed by retention (inbound, events, deliveries, attempts)",
            pruned.clone(),
        );
        let pending_deliveries = Gauge::default();
        registry.register(
            "pending_deliveries",
            "Deliveries waiting for their first or next attempt, across instances",
            pending_deliveries.clone(),
        );
        let oldest_pending_age = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "oldest_pending_delivery_age",
            "Age of the oldest delivery still waiting",
            Unit::Seconds,
            oldest_pending_age.clone(),
        );
        let disabled_endpoints = Gauge::default();
        registry.register(
            "disabled_endpoints",
            "Endpoints disabled by an operator or by billhook",
            disabled_endpoints.clone(),
        );
        let failing_endpoints = Gauge::default();
        registry.register(
            "failing_endpoints",
            "Enabled endpoints whose last attempt failed",
            failing_endpoints.clone(),
        );
        let quarantined = Gauge::default();
        registry.register(
            "quarantined_requests",
            "Verified requests waiting in quarantine for reprocessing",
            quarantined.clone(),
        );
        let lanes = Gauge::default();
        registry.register(
            "delivery_lanes",
            "Endpoints this instance holds a delivery lane for (one queue and task each)",
            lanes.clone(),
        );
        Self {
            registry,
            ingest_requests,
            verification_failures,
            ingest_duration,
            delivery_attempts,
            attempt_duration,
            delivery_latency,
            leases_lapsed,
            ledger_conclusions,
            pruned,
            pending_deliveries,
            oldest_pending_age,
            disabled_endpoints,
            failing_endpoints,
            quarantined,
            lanes,
            pending: Pending::default(),
            last_failures: Mutex::new(HashMap::new()),
            started_at: Timestamp::now(),
        }
    }

    /// Records an ingest request's outcome and, when it was acknowledged, how long it took.
    pub fn ingested(&self, source: &str, outcome: IngestOutcome, took: Option<Duration>) {
        self.ingest_requests
            .get_or_create(&IngestLabels {
                source: source.to_owned(),
                outcome,
            })
            .inc();
        if let Some(took) = took {
            self.ingest_duration
                .get_or_create(&SourceLabel {
                    source: source.to_owned(),
                })
                .observe(took.as_secs_f64());
        }
        let counter = match outcome {
            IngestOutcome::stored => &self.pending.ingested,
            IngestOutcome::duplicate => &self.pending.duplicates,
            IngestOutcome::quarantined => {
                self.pending.ingested.fetch_add(1, Ordering::Relaxed);
                &self.pending.quarantined
            }
            IngestOutcome::unverified => &self.pending.unverified,
            IngestOutcome::rejected | IngestOutcome::error => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a request refused by verification.
    pub fn verification_failed(&self, source: &str, code: &str) {
        self.verification_failures
            .get_or_create(&VerificationLabels {
                source: source.to_owned(),
                code: code.to_owned(),
            })
            .inc();
        self.ingested(source, IngestOutcome::unverified, None);
        let last = LastFailure {
            at: Timestamp::now(),
            code: code.to_owned(),
        };
        let mut failures = self.last_failures.lock().unwrap_or_else(|p| p.into_inner());
        let entry = failures
            .entry(source.to_owned())
            .or_insert((0, last.clone()));
        entry.0 += 1;
        entry.1 = last;
    }

    /// Verification failures of a source since this instance started, and the last one.
    pub fn verification_failures(&self, source: &str) -> (u64, Option<LastFailure>) {
        self.last_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(source)
            .map_or((0, None), |(count, last)| (*count, Some(last.clone())))
    }

    /// Records one delivery attempt. `received_at` is when billhook received the message, for
    /// the end-to-end latency of successful deliveries.
    pub fn attempted(
        &self,
        endpoint: &str,
        outcome: AttemptOutcome,
        took: Duration,
        received_at: Option<Timestamp>,
    ) {
        self.delivery_attempts
            .get_or_create(&AttemptLabels {
                endpoint: endpoint.to_owned(),
                outcome,
            })
            .inc();
        let label = EndpointLabel {
            endpoint: endpoint.to_owned(),
        };
        self.attempt_duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        if outcome == AttemptOutcome::delivered {
            self.pending.delivered.fetch_add(1, Ordering::Relaxed);
            if let Some(received_at) = received_at {
                self.delivery_latency
                    .get_or_create(&label)
                    .observe(Timestamp::now().since(received_at).as_secs_f64());
            }
        } else {
            self.pending.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops the series of an endpoint that no longer exists.
    pub fn forget_endpoint(&self, endpoint: &str) {
        for outcome in [
            AttemptOutcome::delivered,
            AttemptOutcome::retrying,
            AttemptOutcome::dead,
            AttemptOutcome::endpoint_disabled,
        ] {
            self.delivery_attempts.remove(&AttemptLabels {
                endpoint: endpoint.to_owned(),
                outcome,
            });
        }
        let label = EndpointLabel {
            endpoint: endpoint.to_owned(),
        };
        self.attempt_duration.remove(&label);
        self.delivery_latency.remove(&label);
    }

    pub fn set_lanes(&self, count: usize) {
        self.lanes.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn lease_lapsed(&self) {
        self.leases_lapsed.inc();
    }

    /// Counts the events the ledger concluded, by type.
    pub fn concluded_events(&self, concluded: &[billhook_core::ledger::Concluded]) {
        for event in concluded {
            self.concluded(event.event_type.as_str(), 1);
        }
    }

    pub fn concluded(&self, event_type: &str, count: usize) {
        self.ledger_conclusions
            .get_or_create(&TypeLabel {
                r#type: event_type.to_owned(),
            })
            .inc_by(count as u64);
    }

    pub fn pruned(&self, kind: &str, count: u64) {
        self.pruned
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc_by(count);
    }

    /// The activity counted since the last call; on a failed flush, give it back with
    /// [`Metrics::restore_activity`].
    pub fn take_activity(&self) -> ActivityCounts {
        self.pending.take()
    }

    pub fn restore_activity(&self, counts: ActivityCounts) {
        self.pending.put_back(counts);
    }

    /// The OpenMetrics text of every metric, with the gauges set from `overview` when there is
    /// one.
    pub fn encode(&self, overview: Option<&Overview>, now: Timestamp) -> String {
        if let Some(overview) = overview {
            self.set_gauges(overview, now);
        }
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }

    fn set_gauges(&self, overview: &Overview, now: Timestamp) {
        let as_gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.pending_deliveries
            .set(as_gauge(overview.pending_deliveries));
        self.oldest_pending_age.set(
            overview
                .oldest_pending
                .map_or(0.0, |at| now.since(at).as_secs_f64()),
        );
        self.disabled_endpoints
            .set(as_gauge(overview.disabled_endpoints));
        self.failing_endpoints
            .set(as_gauge(overview.failing_endpoints));
        self.quarantined.set(as_gauge(overview.quarantined));
    }

    /// When this instance started counting.
    pub fn started_at(&self) -> Timestamp {
        self.started_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_has_conventional_names_and_the_gauges() {
        let metrics = Metrics::new();
        metrics.ingested(
            "razorpay",
            IngestOutcome::stored,
            Some(Duration::from_millis(2)),
        );
        metrics.verification_failed("razorpay", "invalid_signature");
        metrics.attempted(
            "ep_1",
            AttemptOutcome::delivered,
            Duration::from_millis(5),
            Some(Timestamp::now()),
        );
        let overview = Overview {
            pending_deliveries: 7,
            quarantined: 2,
            ..Overview::default()
        };
        // A delivery after retries, ten minutes on, lands in a bucket of its own, not past
        // the last one; an attempt that took the whole default request timeout does too.
        metrics.attempted(
            "ep_1",
            AttemptOutcome::delivered,
            Duration::from_secs(15),
            Some(Timestamp::now().sub(Duration::from_secs(600))),
        );
        let text = metrics.encode(Some(&overview), Timestamp::now());
        for expected in [
            "billhook_delivery_latency_seconds_bucket{le=\"300.0\",endpoint=\"ep_1\"} 1",
            "billhook_delivery_latency_seconds_bucket{le=\"900.0\",endpoint=\"ep_1\"} 2",
            "billhook_delivery_attempt_duration_seconds_bucket{le=\"8.192\",endpoint=\"ep_1\"} 1",
            "billhook_delivery_attempt_duration_seconds_bucket{le=\"16.384\",endpoint=\"ep_1\"} 2",
            "billhook_ingest_requests_total{source=\"razorpay\",outcome=\"stored\"} 1",
            "billhook_ingest_requests_total{source=\"razorpay\",outcome=\"unverified\"} 1",
            "billhook_verification_failures_total{source=\"razorpay\",code=\"invalid_signature\"} 1",
            "# TYPE billhook_ingest_duration_seconds histogram",
            "billhook_delivery_attempts_total{endpoint=\"ep_1\",outcome=\"delivered\"} 2",
            "# TYPE billhook_delivery_latency_seconds histogram",
            "billhook_pending_deliveries 7",
            "billhook_quarantined_requests 2",
            "# EOF",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        let (failures, last) = metrics.verification_failures("razorpay");
        assert_eq!(failures, 1);
        assert_eq!(last.unwrap().code, "invalid_signature");
        let activity = metrics.take_activity();
        assert_eq!(activity.ingested, 1);
        assert_eq!(activity.unverified, 1);
        assert_eq!(activity.delivered, 2);
        assert!(metrics.take_activity().is_empty());
    }
}
