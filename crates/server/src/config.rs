//! Configuration: a TOML file plus `BILLHOOK_*` environment overrides, turned into validated
//! [`Settings`] before anything starts.
//!
//! Environment variables override the file: `BILLHOOK_LISTEN`, `BILLHOOK_DATABASE_URL`,
//! `BILLHOOK_DATA_DIR`, `BILLHOOK_ADMIN_TOKEN`, and any nested key with `__` between levels
//! (`BILLHOOK_INGEST__MAX_BODY_BYTES=2097152`). A configuration that cannot work (an unknown
//! provider, a source without usable authentication, a malformed duration) stops the server at
//! start with a message that names the problem.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use billhook_core::ledger::PaymentRef;
use billhook_providers::auth::{Secret, SourceAuth, SourceSpec, SpecError};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

/// The configuration file's name inside the data directory.
pub const CONFIG_FILE: &str = "billhook.toml";
/// The SQLite database's name inside the data directory.
pub const DATABASE_FILE: &str = "billhook.db";
/// The generated admin token's file inside the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Top-level keys that environment variables may set; other `BILLHOOK_*` variables (used by the
/// CLI) are not configuration.
const ENV_SECTIONS: &[&str] = &[
    "role",
    "database",
    "listen",
    "data_dir",
    "database_url",
    "admin_token",
    "ingest",
    "delivery",
    "ledger",
    "retention",
    "console",
    "log",
    "trusted_proxies",
    "max_connections",
];

/// A refusal for the first variable that names a section's key with one underscore
/// (`BILLHOOK_RETENTION_MAX_AGE`), which the environment's reading would otherwise skip as not
/// configuration: the file's or the default value would apply without a word. Only a key the
/// section has counts: other variables of such a shape (a Kubernetes service's
/// `BILLHOOK_INGEST_SERVICE_HOST`) are none of billhook's. Only names are looked at, never
/// values.
fn nested_key_with_one_underscore(
    names: impl Iterator<Item = std::ffi::OsString>,
) -> Option<String> {
    let defaults = serde_json::to_value(Config::default()).ok()?;
    let sections: Vec<(&String, &serde_json::Map<String, serde_json::Value>)> = defaults
        .as_object()?
        .iter()
        .filter_map(|(section, value)| Some((section, value.as_object()?)))
        .collect();
    names.filter_map(|name| name.into_string().ok()).find_map(|name| {
        let key = name.strip_prefix("BILLHOOK_")?.to_ascii_lowercase();
        let top = key.split("__").next().unwrap_or_default();
        let (section, rest) = sections.iter().find_map(|(section, keys)| {
            let rest = top.strip_prefix(section.as_str())?.strip_prefix('_')?;
            keys.contains_key(rest).then_some((section, rest))
        })?;
        Some(format!(
            "the environment variable {name} sets nothing: a key of [{section}] takes two underscores, as in BILLHOOK_{}__{}",
            section.to_ascii_uppercase(),
            rest.to_ascii_uppercase()
        ))
    })
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Parse(String),
    #[error(transparent)]
    Source(#[from] SpecError),
    #[error("source `{0}` is configured twice")]
    DuplicateSource(String),
    #[error("endpoint `{0}` is configured twice")]
    DuplicateEndpoint(String),
    #[error("source `{source_name}`: {message}")]
    SourceSetting {
        source_name: String,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// A duration written as text: `500ms`, `5s`, `5m`, `2h`, `8d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct HumanDuration(pub Duration);

/// The longest duration any setting takes. Past it a deadline computed from the clock can
/// overflow (`Instant + d` panics), and no retry, lease or retention is meant to be longer.
const LONGEST_SETTING: Duration = Duration::from_secs(100 * 365 * 86_400);

impl HumanDuration {
    fn bounded(duration: Duration) -> Result<Self, String> {
        if duration > LONGEST_SETTING {
            return Err(format!(
                "{} is too long a duration: at most 100 years ({})",
                billhook_core::time::format_duration(duration),
                billhook_core::time::format_duration(LONGEST_SETTING)
            ));
        }
        Ok(HumanDuration(duration))
    }
}

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        billhook_core::time::parse_duration(text).and_then(HumanDuration::bounded)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&billhook_core::time::format_duration(self.0))
    }
}

impl From<HumanDuration> for String {
    fn from(duration: HumanDuration) -> String {
        duration.to_string()
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            Text(String),
            Seconds(u64),
        }
        match Text::deserialize(deserializer)? {
            Text::Text(text) => text.parse().map_err(serde::de::Error::custom),
            Text::Seconds(seconds) => HumanDuration::bounded(Duration::from_secs(seconds))
                .map_err(serde::de::Error::custom),
        }
    }
}

/// The file and environment, as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What this instance runs: `all`, or only the `api` or the `worker` side.
    #[serde(default)]
    pub role: Role,
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The most client connections served at once; more wait to be accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://…`; default: `billhook.db` in the data directory. A
    /// secret because a PostgreSQL URL may carry a password.
    #[serde(default)]
    pub database_url: Option<Secret>,
    /// The root admin token; generated into the data directory when unset.
    #[serde(default)]
    pub admin_token: Option<Secret>,
    #[serde(default)]
    pub database: DatabaseSection,
    /// Proxies whose `X-Forwarded-For` is trusted for the client address (IP allow-lists).
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub ledger: LedgerConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub console: ConsoleConfig,
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    #[serde(default, rename = "endpoint")]
    pub endpoints: Vec<EndpointConfig>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// The most `max_connections` may be: more than a process can have files open on any common
/// system.
const MAX_CONNECTIONS: usize = 1_000_000;

/// With `delivery.max_in_flight`'s 512 attempts, the database's connections and files, still
/// under the common soft limit of 1,024 open files: a flood of connections must not take the
/// descriptors deliveries need.
fn default_max_connections() -> usize {
    256
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./billhook-data")
}

impl Default for Config {
    fn default() -> Self {
        Self {
            role: Role::default(),
            listen: default_listen(),
            max_connections: default_max_connections(),
            data_dir: default_data_dir(),
            database_url: None,
            admin_token: None,
            database: DatabaseSection::default(),
            trusted_proxies: Vec::new(),
            ingest: IngestConfig::default(),
            log: LogConfig::default(),
            delivery: DeliveryConfig::default(),
            ledger: LedgerConfig::default(),
            retention: RetentionConfig::default(),
            console: ConsoleConfig::default(),
            sources: Vec::new(),
            endpoints: Vec::new(),
        }
    }
}

/// What one billhook process runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Ingest, the admin API and delivery.
    #[default]
    All,
    /// Ingest and the admin API; deliveries are left to worker instances.
    Api,
    /// Delivery only (and health checks).
    Worker,
}

impl Role {
    pub fn serves_api(self) -> bool {
        matches!(self, Role::All | Role::Api)
    }

    pub fn delivers(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "all" => Ok(Role::All),
            "api" => Ok(Role::Api),
            "worker" => Ok(Role::Worker),
            other => Err(format!("`{other}` is not a role: all, api or worker")),
        }
    }
}

/// `[database]`: how billhook uses PostgreSQL (SQLite needs no tuning).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    /// Connections per instance.
    pub pool_size: usize,
    /// A statement running longer is cancelled by the database.
    pub statement_timeout: HumanDuration,
    pub connect_timeout: HumanDuration,
    /// How long to keep retrying, with backoff, when the database is unreachable at start.
    pub wait_at_start: HumanDuration,
}

impl Default for DatabaseSection {
    fn default() -> Self {
        Self {
            pool_size: 16,
            statement_timeout: HumanDuration(Duration::from_secs(30)),
            connect_timeout: HumanDuration(Duration::from_secs(5)),
            wait_at_start: HumanDuration(Duration::from_secs(300)),
        }
    }
}

/// `[ingest]`: limits and windows for receiving webhooks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Bodies above this many bytes are refused with 413 before being read in full.
    pub max_body_bytes: usize,
    /// How long a provider's dedup key keeps recognising redeliveries (at least 8 days).
    pub dedup_window: HumanDuration,
    /// The most time one ingest request may take.
    pub request_timeout: HumanDuration,
    /// The most bytes of ingest bodies held in memory at once; a request that would pass it is
    /// refused with 503 before its body is read. Each request counts its `Content-Length`, or
    /// `max_body_bytes` when it declares none.
    pub max_buffered_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            dedup_window: HumanDuration(Duration::from_secs(8 * 86_400)),
            request_timeout: HumanDuration(Duration::from_secs(30)),
            max_buffered_bytes: 64 * 1024 * 1024,
        }
    }
}

/// `[log]`: structured logs on standard error.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `billhook=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".to_owned(),
        }
    }
}

impl LogConfig {
    /// Every directive names a level, alone or after `target=`. A bare word is a valid tracing
    /// filter, but it means "everything from the target of that name": `warning` or `debg`
    /// would silence every log billhook writes.
    fn validate(&self) -> Result<(), ConfigError> {
        const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
        let is_level = |word: &str| {
            LEVELS.contains(&word.to_ascii_lowercase().as_str())
                || matches!(word, "0" | "1" | "2" | "3" | "4" | "5")
        };
        for directive in self.level.split(',').map(str::trim) {
            // `target[span{field=value}]` without a level enables every level of that span.
            if directive.is_empty() || directive.ends_with(']') {
                continue;
            }
            let level = directive
                .rsplit_once('=')
                .map_or(directive, |(_, level)| level);
            if !is_level(level) {
                return Err(ConfigError::Invalid(format!(
                    "log.level: `{directive}` names no level; write one of {} alone, or after a target (`billhook_server=debug`)",
                    LEVELS.join(", ")
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// `[delivery]`: how billhook delivers to subscriber endpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Destination networks allowed despite being private, loopback or link-local (SSRF guard
    /// exceptions), e.g. `["127.0.0.0/8"]` to deliver to a service on the same host.
    pub allow_private_destinations: Vec<IpNet>,
    /// The wait before each attempt; its length is the number of attempts.
    pub retry_schedule: Vec<HumanDuration>,
    /// Waits are moved by up to this percentage either way.
    pub jitter_percent: u32,
    /// `Retry-After` is honoured up to this long.
    pub retry_after_cap: HumanDuration,
    /// An endpoint failing every attempt for this long is disabled.
    pub disable_after: HumanDuration,
    /// How long an endpoint pauses after 429, 502 or 504 (when no `Retry-After` says otherwise).
    pub slow_down: HumanDuration,
    /// The most time one attempt may take, response included.
    pub request_timeout: HumanDuration,
    pub connect_timeout: HumanDuration,
    /// How long a worker owns a claimed delivery before another may take it; renewed while held.
    pub lease: HumanDuration,
    /// Attempts in flight at once, across all endpoints.
    pub max_in_flight: u32,
    /// Concurrent attempts per endpoint unless the endpoint sets `max_concurrency`.
    pub default_max_concurrency: u32,
    /// Deliveries an endpoint may have queued in memory; more wait in the database.
    pub queue_per_endpoint: u32,
    /// On shutdown, in-flight attempts get this long to finish.
    pub shutdown_grace: HumanDuration,
    /// After a secret rotation the previous secret keeps signing this long.
    pub secret_overlap: HumanDuration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        let policy = billhook_core::retry::RetryPolicy::default();
        Self {
            allow_private_destinations: Vec::new(),
            retry_schedule: policy.schedule.iter().copied().map(HumanDuration).collect(),
            jitter_percent: policy.jitter_percent,
            retry_after_cap: HumanDuration(policy.retry_after_cap),
            disable_after: HumanDuration(policy.disable_after),
            slow_down: HumanDuration(policy.slow_down),
            request_timeout: HumanDuration(Duration::from_secs(15)),
            connect_timeout: HumanDuration(Duration::from_secs(5)),
            lease: HumanDuration(Duration::from_secs(60)),
            max_in_flight: 512,
            default_max_concurrency: 16,
            queue_per_endpoint: 256,
            shutdown_grace: HumanDuration(Duration::from_secs(10)),
            secret_overlap: HumanDuration(Duration::from_secs(24 * 3600)),
        }
    }
}

impl DeliveryConfig {
    /// The retry policy this configuration describes.
    pub fn retry_policy(&self) -> billhook_core::retry::RetryPolicy {
        billhook_core::retry::RetryPolicy {
            schedule: self.retry_schedule.iter().map(|d| d.0).collect(),
            jitter_percent: self.jitter_percent,
            retry_after_cap: self.retry_after_cap.0,
            disable_after: self.disable_after.0,
            slow_down: self.slow_down.0,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: &str| Err(ConfigError::Invalid(format!("delivery: {message}")));
        if self.retry_schedule.is_empty() {
            return invalid(
                "retry_schedule needs at least one entry (the wait before the first attempt)",
            );
        }
        if self.jitter_percent > 100 {
            return invalid("jitter_percent must be between 0 and 100");
        }
        if self.max_in_flight == 0
            || self.default_max_concurrency == 0
            || self.queue_per_endpoint == 0
        {
            return invalid(
                "max_in_flight, default_max_concurrency and queue_per_endpoint must be positive",
            );
        }
        if self.lease.0 < Duration::from_secs(1) {
            return invalid("lease must be at least 1s");
        }
        // A job is attempted only while its lease outlasts an attempt, and leases are renewed
        // every half of the room between the two: too little room, and a database round trip
        // slower than it would leave every job unattempted.
        let room = self.lease.0.saturating_sub(self.request_timeout.0);
        if room < (self.lease.0 / 4).max(Duration::from_secs(1)) {
            return invalid(
                "lease must exceed request_timeout by a quarter of the lease, and by 1s at least, \
                 or a slow attempt could be taken over",
            );
        }
        Ok(())
    }
}

/// `[ledger]`: how the ledger concludes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// A succeeded payment still linked to no invoice or bill this long after billhook first
    /// saw it is announced as `payment.unmatched`.
    pub unmatched_after: HumanDuration,
    /// How often payments are checked for that.
    pub sweep_every: HumanDuration,
    /// The most rows one CSV export of the ledger holds; past it the export says it was cut
    /// short.
    pub max_export_rows: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            unmatched_after: HumanDuration(Duration::from_secs(30 * 60)),
            sweep_every: HumanDuration(Duration::from_secs(60)),
            max_export_rows: 1_000_000,
        }
    }
}

/// `[retention]`: how long raw requests, events, finished deliveries and attempts are kept.
/// The ledger is kept whatever their age.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Messages older than this go, with everything derived from them, once nothing is still
    /// owed to an endpoint.
    pub max_age: HumanDuration,
    /// Messages removed per transaction, so pruning never holds the database for long.
    pub batch: u32,
    /// How often retention runs.
    pub every: HumanDuration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            max_age: HumanDuration(Duration::from_secs(30 * 86_400)),
            batch: 500,
            every: HumanDuration(Duration::from_secs(60)),
        }
    }
}

impl RetentionConfig {
    fn validate(&self, dedup_window: HumanDuration) -> Result<(), ConfigError> {
        if self.max_age.0 < dedup_window.0 {
            return Err(ConfigError::Invalid(format!(
                "retention.max_age ({}) is shorter than ingest.dedup_window ({dedup_window}): a redelivery would find its original gone",
                self.max_age
            )));
        }
        if !(1..=10_000).contains(&self.batch) {
            return Err(ConfigError::Invalid(
                "retention.batch must be between 1 and 10000".to_owned(),
            ));
        }
        if self.every.0 < Duration::from_secs(1) {
            return Err(ConfigError::Invalid(
                "retention.every must be at least 1s".to_owned(),
            ));
        }
        Ok(())
    }
}

/// `[console]`: the web console at `/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve the console (the admin API and `/metrics` are served either way).
    pub enabled: bool,
    /// How long a login lasts.
    pub session_ttl: HumanDuration,
    /// Mark the session cookie `Secure` (send it over HTTPS only). Set it when billhook is
    /// reached over HTTPS, directly or through a proxy.
    pub secure_cookies: bool,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            session_ttl: HumanDuration(Duration::from_secs(12 * 3600)),
            secure_cookies: false,
        }
    }
}

/// One `[[endpoint]]` declared in the configuration; created at start and kept in line with the
/// file (matched by `name`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub name: String,
    pub url: String,
    pub event_types: Vec<String>,
    #[serde(default)]
    pub sources: Option<Vec<String>>,
    #[serde(default = "default_format")]
    pub format: String,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub rate_limit: Option<u32>,
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    #[serde(default)]
    pub description: String,
    /// `whsec_…`; generated (and shown by the API) when unset.
    #[serde(default)]
    pub secret: Option<Secret>,
}

/// Without the URL (its path or query may hold a token), the headers' values (an
/// `Authorization` more often than not) or the secret.
impl fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("name", &self.name)
            .field("event_types", &self.event_types)
            .field("sources", &self.sources)
            .field("format", &self.format)
            .field("header_names", &self.headers.keys().collect::<Vec<_>>())
            .field("rate_limit", &self.rate_limit)
            .field("max_concurrency", &self.max_concurrency)
            .finish_non_exhaustive()
    }
}

fn default_format() -> String {
    "canonical".to_owned()
}

/// One `[[source]]`: where a provider sends its webhooks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The URL segment: `POST /ingest/{name}`.
    pub name: String,
    /// `razorpay`, `zwitch`, `setu_bbps` or `caminvoice`.
    pub provider: String,
    /// Signing secrets, newest first (Razorpay, Zwitch).
    #[serde(default)]
    pub secrets: Vec<Secret>,
    /// A credential, for providers without a signature of their own (Setu, CamInvoice).
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Only requests from these networks are accepted.
    #[serde(default)]
    pub allow_ips: Vec<IpNet>,
    /// The status that acknowledges a request (the provider's own: 202, or 200 for Zwitch).
    #[serde(default)]
    pub ack_status: Option<u16>,
    /// The payment references the ledger links this source's payments to invoices and bills
    /// by: `invoice_id`, `order_id`, `merchant_reference`, `remark`, `bill_ref_id`,
    /// `biller_ref_id`. Default: the provider's own rule.
    #[serde(default)]
    pub reconcile: Option<Vec<String>>,
}

/// `auth = { kind = …, … }` for a source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    Header {
        name: String,
        value: Secret,
    },
    Basic {
        username: String,
        password: Secret,
    },
    JwtHs256 {
        secret: Secret,
        /// The oldest acceptable `iat` (default 120 s).
        #[serde(default)]
        max_age: Option<HumanDuration>,
    },
    PathToken {
        token: Secret,
    },
}

/// A configured source ready to use.
#[derive(Debug, Clone)]
pub struct Source {
    pub spec: SourceSpec,
    pub ack_status: http::StatusCode,
    /// The references the ledger matches this source's payments on.
    pub link_rule: Vec<PaymentRef>,
}

/// Everything the server needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub role: Role,
    pub listen: SocketAddr,
    pub max_connections: usize,
    pub data_dir: PathBuf,
    pub database: billhook_store::DatabaseConfig,
    pub admin_token: Secret,
    pub trusted_proxies: Vec<IpNet>,
    pub ingest: IngestConfig,
    pub delivery: DeliveryConfig,
    pub ledger: LedgerConfig,
    pub retention: RetentionConfig,
    pub console: ConsoleConfig,
    pub sources: HashMap<String, Source>,
    pub endpoints: Vec<EndpointConfig>,
}

/// A configuration that does not parse, told without the text of any value: a secret written
/// where a list of them belongs would otherwise be quoted in the message, which every command
/// prints.
fn parse_error(error: figment::Error) -> ConfigError {
    use figment::error::{Actual, Kind};
    // Numbers too: a secret of digits written without quotes (or set in the environment,
    // which figment reads as TOML) is a number.
    let unquoted = |actual: Actual| match actual {
        Actual::Str(_) => Actual::Other("a string".to_owned()),
        Actual::Bytes(_) => Actual::Other("bytes".to_owned()),
        Actual::Char(_) => Actual::Other("a character".to_owned()),
        Actual::Unsigned(_) | Actual::Signed(_) | Actual::Float(_) => {
            Actual::Other("a number".to_owned())
        }
        other => other,
    };
    // A TOML syntax error quotes the offending line (`4 | secrets = [...]`) and marks it
    // (`  |    ^`); the line and column before it, and the reason after, remain.
    let without_snippet = |message: String| {
        message
            .lines()
            .filter(|line| {
                let line = line
                    .trim_start()
                    .trim_start_matches(|c: char| c.is_ascii_digit());
                !line.trim_start().starts_with('|')
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let messages: Vec<String> = error
        .into_iter()
        .map(|mut each| {
            each.kind = match each.kind {
                Kind::InvalidType(actual, expected) => {
                    Kind::InvalidType(unquoted(actual), expected)
                }
                Kind::InvalidValue(actual, expected) => {
                    Kind::InvalidValue(unquoted(actual), expected)
                }
                Kind::Message(message) => Kind::Message(without_snippet(message)),
                other => other,
            };
            each.to_string()
        })
        .collect();
    ConfigError::Parse(format!("configuration: {}", messages.join("; ")))
}

impl Config {
    /// Reads the TOML file (if given) and applies `BILLHOOK_*` overrides.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Parse(format!(
                    "the configuration file {} does not exist",
                    file.display()
                )));
            }
            figment = if file.is_file() {
                figment.merge(Toml::file(file))
            } else {
                // figment reads only regular files, and would silently take nothing from a
                // pipe (`--config <(sops -d billhook.toml)`); a directory is refused here.
                let text = std::fs::read_to_string(file).map_err(|e| {
                    ConfigError::Parse(format!(
                        "cannot read the configuration file {}: {e}",
                        file.display()
                    ))
                })?;
                figment.merge(Toml::string(&text))
            };
        }
        if let Some(refusal) = nested_key_with_one_underscore(std::env::vars_os().map(|(k, _)| k)) {
            return Err(ConfigError::Parse(refusal));
        }
        figment = figment.merge(Env::prefixed("BILLHOOK_").split("__").filter(|key| {
            let top = key.as_str().split('.').next().unwrap_or_default();
            ENV_SECTIONS
                .iter()
                .any(|section| section.eq_ignore_ascii_case(top))
        }));
        figment.extract().map_err(parse_error)
    }

    /// Parses a configuration from TOML text alone (no environment), for tests and tools.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(parse_error)
    }

    /// The database the configuration points at.
    pub fn database(&self) -> Result<billhook_store::DatabaseConfig, ConfigError> {
        match &self.database_url {
            Some(url) => match billhook_store::DatabaseConfig::from_url(url.expose())
                .map_err(|e| ConfigError::Invalid(e.to_string()))?
            {
                billhook_store::DatabaseConfig::Postgres(mut options) => {
                    if self.database.pool_size == 0 {
                        return Err(ConfigError::Invalid(
                            "database.pool_size must be positive".to_owned(),
                        ));
                    }
                    options.pool_size = self.database.pool_size;
                    options.statement_timeout = self.database.statement_timeout.0;
                    options.connect_timeout = self.database.connect_timeout.0;
                    options.wait = self.database.wait_at_start.0;
                    Ok(billhook_store::DatabaseConfig::Postgres(options))
                }
                sqlite => Ok(sqlite),
            },
            None => Ok(billhook_store::DatabaseConfig::Sqlite {
                path: self.data_dir.join(DATABASE_FILE),
            }),
        }
    }

    /// Validates everything and resolves the admin token (which the caller provides when the
    /// configuration has none).
    pub fn into_settings(self, admin_token: Secret) -> Result<Settings, ConfigError> {
        // An empty token would let an empty login in (and an empty file is what a crash
        // while the first start wrote it could leave).
        if admin_token.expose().trim().is_empty() {
            return Err(ConfigError::Invalid(
                "the admin token is empty: set admin_token, or remove the data directory's empty admin-token file to have one generated".to_owned(),
            ));
        }
        // Presented tokens are trimmed, so a configured one must be too: a secret read from a
        // file or an environment variable often ends in a newline, and would match nothing.
        let admin_token = Secret::new(admin_token.expose().trim().to_owned());
        if self.ingest.dedup_window.0 < Duration::from_secs(8 * 86_400) {
            return Err(ConfigError::Invalid(format!(
                "ingest.dedup_window is {}: keep dedup keys at least 8 days (providers retry for up to 7)",
                self.ingest.dedup_window
            )));
        }
        if self.ingest.max_body_bytes == 0 {
            return Err(ConfigError::Invalid(
                "ingest.max_body_bytes must be positive".to_owned(),
            ));
        }
        // A body's share of the budget is taken in one piece, which counts at most u32::MAX.
        if self.ingest.max_body_bytes > u32::MAX as usize {
            return Err(ConfigError::Invalid(
                "ingest.max_body_bytes must be under 4 GiB".to_owned(),
            ));
        }
        if self.ingest.max_buffered_bytes < self.ingest.max_body_bytes
            || self.ingest.max_buffered_bytes > tokio::sync::Semaphore::MAX_PERMITS
        {
            return Err(ConfigError::Invalid(format!(
                "ingest.max_buffered_bytes ({}) must be at least ingest.max_body_bytes ({})",
                self.ingest.max_buffered_bytes, self.ingest.max_body_bytes
            )));
        }
        // Zero would not mean "no deadline": a zero request timeout refuses every webhook and
        // every attempt, a zero pool wait every connection, and PostgreSQL reads a zero
        // statement timeout as none at all.
        let ms = Duration::from_millis;
        for (key, value, least) in [
            (
                "ingest.request_timeout",
                self.ingest.request_timeout,
                ms(1000),
            ),
            (
                "delivery.request_timeout",
                self.delivery.request_timeout,
                ms(1000),
            ),
            (
                "delivery.connect_timeout",
                self.delivery.connect_timeout,
                ms(100),
            ),
            (
                "database.statement_timeout",
                self.database.statement_timeout,
                ms(1000),
            ),
            (
                "database.connect_timeout",
                self.database.connect_timeout,
                ms(100),
            ),
        ] {
            if value.0 < least {
                return Err(ConfigError::Invalid(format!(
                    "{key} is {value}: it must be at least {}",
                    HumanDuration(least)
                )));
            }
        }
        // PostgreSQL takes a statement timeout in milliseconds as a 32-bit integer (about 24.8
        // days), and refuses every connection asking for more.
        let longest_statement = Duration::from_secs(24 * 86_400);
        if self.database.statement_timeout.0 > longest_statement {
            return Err(ConfigError::Invalid(format!(
                "database.statement_timeout is {}: PostgreSQL takes at most {}",
                self.database.statement_timeout,
                HumanDuration(longest_statement)
            )));
        }
        self.log.validate()?;
        self.delivery.validate()?;
        self.retention.validate(self.ingest.dedup_window)?;
        if self.console.session_ttl.0 < Duration::from_secs(60) {
            return Err(ConfigError::Invalid(
                "console.session_ttl must be at least 1m".to_owned(),
            ));
        }
        if self.ledger.unmatched_after.0 >= self.retention.max_age.0 {
            return Err(ConfigError::Invalid(format!(
                "ledger.unmatched_after ({}) must be shorter than retention.max_age ({}): an announcement is filed under its payment's message, which would be gone",
                self.ledger.unmatched_after, self.retention.max_age
            )));
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections) {
            return Err(ConfigError::Invalid(format!(
                "max_connections must be between 1 and {MAX_CONNECTIONS}"
            )));
        }
        if self.ledger.max_export_rows == 0 {
            return Err(ConfigError::Invalid(
                "ledger.max_export_rows must be at least 1".to_owned(),
            ));
        }
        if self.ledger.sweep_every.0 < Duration::from_millis(100) {
            return Err(ConfigError::Invalid(
                "ledger.sweep_every must be at least 100ms".to_owned(),
            ));
        }
        let database = self.database()?;
        if self.role != Role::All
            && matches!(database, billhook_store::DatabaseConfig::Sqlite { .. })
        {
            return Err(ConfigError::Invalid(
                "role api and worker need PostgreSQL: one process owns an SQLite database, so run role all"
                    .to_owned(),
            ));
        }
        let mut sources = HashMap::new();
        for source in self.sources {
            let name = source.name.clone();
            let spec = source.spec()?;
            let required = spec.provider.ack_status();
            let ack_status = match source.ack_status.unwrap_or(required) {
                code if spec.provider.requires_ack_status() && code != required => {
                    return Err(ConfigError::SourceSetting {
                        source_name: name,
                        message: format!(
                            "ack_status {code}: {} counts only {required} as delivered, and retries anything else",
                            spec.provider.name()
                        ),
                    });
                }
                code @ (200 | 202 | 204) => {
                    http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::ACCEPTED)
                }
                other => {
                    return Err(ConfigError::SourceSetting {
                        source_name: name,
                        message: format!("ack_status {other} is not one of 200, 202, 204"),
                    });
                }
            };
            let link_rule = source.link_rule(&spec)?;
            if sources
                .insert(
                    name.clone(),
                    Source {
                        spec,
                        ack_status,
                        link_rule,
                    },
                )
                .is_some()
            {
                return Err(ConfigError::DuplicateSource(name));
            }
        }
        // Declared endpoints are kept in line with the file by name: of two tables with one
        // name, one would silently never be sent to.
        let mut endpoint_names = std::collections::HashSet::new();
        for endpoint in &self.endpoints {
            if !endpoint_names.insert(endpoint.name.as_str()) {
                return Err(ConfigError::DuplicateEndpoint(endpoint.name.clone()));
            }
        }
        Ok(Settings {
            role: self.role,
            listen: self.listen,
            max_connections: self.max_connections,
            data_dir: self.data_dir,
            database,
            admin_token,
            trusted_proxies: self
                .trusted_proxies
                .into_iter()
                .map(billhook_providers::auth::canonical_net)
                .collect(),
            ingest: self.ingest,
            delivery: self.delivery,
            ledger: self.ledger,
            retention: self.retention,
            console: self.console,
            sources,
            endpoints: self.endpoints,
        })
    }
}

impl SourceConfig {
    /// The validated source this table describes.
    pub fn spec(&self) -> Result<SourceSpec, ConfigError> {
        let auth = source_auth(self)?;
        Ok(SourceSpec::new(
            &self.name,
            &self.provider,
            auth,
            self.allow_ips.clone(),
        )?)
    }

    /// The references the ledger matches this source's payments on.
    fn link_rule(&self, spec: &SourceSpec) -> Result<Vec<PaymentRef>, ConfigError> {
        let Some(names) = &self.reconcile else {
            return Ok(spec.provider.default_link_rule().to_vec());
        };
        names
            .iter()
            .map(|name| {
                PaymentRef::parse(name).ok_or_else(|| ConfigError::SourceSetting {
                    source_name: self.name.clone(),
                    message: format!(
                        "reconcile: `{name}` is not a payment reference; use invoice_id, order_id, merchant_reference, remark, bill_ref_id or biller_ref_id"
                    ),
                })
            })
            .collect()
    }
}

/// The JWT `iat` age limit when a source does not set one.
pub const DEFAULT_JWT_MAX_AGE: Duration = Duration::from_secs(120);

fn source_auth(source: &SourceConfig) -> Result<Option<SourceAuth>, ConfigError> {
    let invalid = |message: String| ConfigError::SourceSetting {
        source_name: source.name.clone(),
        message,
    };
    match (&source.auth, source.secrets.is_empty()) {
        (Some(_), false) => Err(invalid(
            "set either `secrets` (a provider signature) or `auth`, not both".to_owned(),
        )),
        (None, true) => Ok(None),
        (None, false) => Ok(Some(SourceAuth::Signature {
            secrets: source.secrets.clone(),
        })),
        (Some(auth), true) => Ok(Some(match auth {
            AuthConfig::Header { name, value } => SourceAuth::Header {
                name: http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| invalid(format!("`{name}` is not a valid header name")))?,
                value: value.clone(),
            },
            AuthConfig::Basic { username, password } => SourceAuth::Basic {
                username: username.clone(),
                password: password.clone(),
            },
            AuthConfig::JwtHs256 { secret, max_age } => SourceAuth::JwtHs256 {
                secret: secret.clone(),
                max_age_seconds: i64::try_from(
                    max_age.map_or(DEFAULT_JWT_MAX_AGE, |d| d.0).as_secs(),
                )
                .unwrap_or(i64::MAX),
            },
            AuthConfig::PathToken { token } => SourceAuth::PathToken {
                token: token.clone(),
            },
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            "5m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(300)
        );
        assert_eq!(
            "8d".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(8 * 86_400)
        );
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!("0s".parse::<HumanDuration>().unwrap().0, Duration::ZERO);
        assert!("5 weeks".parse::<HumanDuration>().is_err());
        assert!("fast".parse::<HumanDuration>().is_err());
        assert_eq!(HumanDuration(Duration::from_secs(7200)).to_string(), "2h");
    }

    #[test]
    fn a_source_may_not_choose_an_acknowledgement_its_provider_retries() {
        let settings = |provider: &str, extra: &str| {
            Config::from_toml(&format!(
                "[[source]]\nname = \"s\"\nprovider = \"{provider}\"\nsecrets = [\"k\"]\n{extra}"
            ))
            .unwrap()
            .into_settings(Secret::new("token"))
        };
        let refused = settings("zwitch", "ack_status = 202").unwrap_err();
        assert!(refused.to_string().contains("counts only 200"), "{refused}");
        assert!(settings("zwitch", "ack_status = 200").is_ok());
        let razorpay = settings("razorpay", "ack_status = 204").unwrap();
        assert_eq!(
            razorpay.sources["s"].ack_status,
            http::StatusCode::NO_CONTENT
        );
    }

    #[test]
    fn an_endpoint_declared_twice_is_refused() {
        let table = "[[endpoint]]\nname = \"books\"\nurl = \"https://example.com/a\"\nevent_types = [\"*\"]\n";
        let refused = Config::from_toml(&format!("{table}{table}"))
            .unwrap()
            .into_settings(Secret::new("token"))
            .unwrap_err();
        assert_eq!(refused.to_string(), "endpoint `books` is configured twice");
    }

    /// A duration past what a deadline can hold is refused in either spelling, and so is a
    /// statement timeout PostgreSQL would refuse every connection for.
    #[test]
    fn durations_too_long_to_use_are_refused() {
        for value in ["9223372036854775807", "\"36501d\""] {
            let refused = Config::from_toml(&format!("[delivery]\nslow_down = {value}\n"))
                .unwrap_err()
                .to_string();
            assert!(refused.contains("at most 100 years"), "{value}: {refused}");
        }
        assert!(Config::from_toml("[retention]\nmax_age = \"36500d\"\n").is_ok());
        let settings = |timeout: &str| {
            Config::from_toml(&format!("[database]\nstatement_timeout = \"{timeout}\"\n"))
                .unwrap()
                .into_settings(Secret::new("token"))
        };
        let refused = settings("25d").unwrap_err().to_string();
        assert!(
            refused.contains("PostgreSQL takes at most 24d"),
            "{refused}"
        );
        assert!(settings("24d").is_ok());
    }

    #[test]
    fn a_section_key_set_with_one_underscore_is_refused() {
        let first_refused = |names: &[&str]| {
            nested_key_with_one_underscore(names.iter().map(std::ffi::OsString::from))
        };
        assert_eq!(
            first_refused(&["PATH", "BILLHOOK_RETENTION_MAX_AGE"]).as_deref(),
            Some(
                "the environment variable BILLHOOK_RETENTION_MAX_AGE sets nothing: a key of \
                 [retention] takes two underscores, as in BILLHOOK_RETENTION__MAX_AGE"
            )
        );
        assert!(
            first_refused(&["BILLHOOK_DATABASE_POOL_SIZE"])
                .is_some_and(|refusal| refusal.contains("BILLHOOK_DATABASE__POOL_SIZE"))
        );
        // Top-level keys, nested keys as documented, the command line's own variables, and
        // others' variables that only look like a section's (a Kubernetes service's).
        assert_eq!(
            first_refused(&[
                "BILLHOOK_INGEST_SERVICE_HOST",
                "BILLHOOK_DATABASE_PORT",
                "BILLHOOK_CONSOLE_PORT_8080_TCP",
                "BILLHOOK_DATABASE_URL",
                "BILLHOOK_DATA_DIR",
                "BILLHOOK_MAX_CONNECTIONS",
                "BILLHOOK_INGEST__MAX_BODY_BYTES",
                "BILLHOOK_LOG__LEVEL",
                "BILLHOOK_URL",
                "BILLHOOK_TOKEN",
                "BILLHOOK_CLIENT_TIMEOUT",
                "BILLHOOK_TEST_POSTGRES_URL",
                "BILLHOOK_LOG",
            ]),
            None
        );
    }

    #[test]
    fn max_connections_is_bounded() {
        let settings = |value: &str| {
            Config::from_toml(&format!("max_connections = {value}\n"))
                .unwrap()
                .into_settings(Secret::new("token"))
        };
        assert_eq!(settings("64").unwrap().max_connections, 64);
        for refused in ["0", "1000001"] {
            let error = settings(refused).unwrap_err();
            assert!(
                error.to_string().contains("between 1 and 1000000"),
                "{refused}: {error}"
            );
        }
        let default = Config::from_toml("").unwrap();
        assert_eq!(default.max_connections, 256);
    }

    #[test]
    fn a_basic_username_holding_a_colon_is_refused() {
        let config = Config::from_toml(
            "[[source]]\nname = \"s\"\nprovider = \"setu_bbps\"\n\
             auth = { kind = \"basic\", username = \"a:b\", password = \"secret-password\" }\n",
        )
        .unwrap();
        let refused = config.into_settings(Secret::new("token")).unwrap_err();
        assert!(
            refused.to_string().contains("may not hold `:`"),
            "{refused}"
        );
    }

    /// Configuration and settings are `Debug` for diagnostics; none of their secrets may show.
    #[test]
    fn debug_output_holds_no_secret() {
        let config = Config::from_toml(
            "admin_token = \"SECRET-admin\"\n\
             database_url = \"postgres://billhook:SECRET-db@db.internal/billhook\"\n\
             [[source]]\nname = \"r\"\nprovider = \"razorpay\"\nsecrets = [\"SECRET-razorpay\"]\n\
             [[source]]\nname = \"s\"\nprovider = \"setu_bbps\"\n\
             auth = { kind = \"basic\", username = \"setu\", password = \"SECRET-basic\" }\n\
             [[source]]\nname = \"c\"\nprovider = \"caminvoice\"\n\
             auth = { kind = \"jwt_hs256\", secret = \"SECRET-jwt\" }\n\
             [[source]]\nname = \"h\"\nprovider = \"setu_bbps\"\n\
             auth = { kind = \"header\", name = \"x-key\", value = \"SECRET-header\" }\n\
             [[source]]\nname = \"p\"\nprovider = \"caminvoice\"\n\
             auth = { kind = \"path_token\", token = \"SECRET-path-token-long-enough\" }\n\
             [[endpoint]]\nname = \"e\"\nurl = \"https://hooks.example.com/in/SECRET-url\"\n\
             event_types = [\"*\"]\nsecret = \"whsec_U0VDUkVULWVuZHBvaW50LXNlY3JldC1ieXRlcw==\"\n\
             headers = { Authorization = \"Bearer SECRET-bearer\" }\n",
        )
        .unwrap();
        let settings = config
            .clone()
            .into_settings(Secret::new("SECRET-admin"))
            .unwrap();
        let database = config.database().unwrap();
        for shown in [
            format!("{config:?}"),
            format!("{settings:?}"),
            format!("{database:?}"),
        ] {
            assert!(!shown.contains("SECRET"), "{shown}");
            assert!(!shown.contains("whsec_U0VD"), "{shown}");
        }
        assert!(format!("{database:?}").contains("db.internal"));
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let example = include_str!("../../../billhook.example.toml");
        let settings = Config::from_toml(example)
            .unwrap()
            .into_settings(Secret::new("token"))
            .unwrap();
        assert_eq!(settings.sources.len(), 4);
        assert_eq!(settings.sources["zwitch"].ack_status, http::StatusCode::OK);
    }

    /// The example says it has every key: each key of every section the defaults hold is set
    /// (or shown commented out) in that section of it.
    #[test]
    fn the_example_configuration_has_every_key() {
        let example = include_str!("../../../billhook.example.toml");
        // Each (table, key) the example sets or shows, "" being the top level.
        let mut shown = std::collections::HashSet::new();
        let mut table = String::new();
        for line in example.lines() {
            let line = line.trim_start_matches(['#', ' ']);
            if let Some(header) = line.strip_prefix('[') {
                table = header
                    .split(']')
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches('[')
                    .to_owned();
                shown.insert((String::new(), table.clone()));
            } else if let Some((key, _)) = line.split_once('=') {
                shown.insert((table.clone(), key.trim().to_owned()));
            }
        }
        let defaults = serde_json::to_value(Config::default()).unwrap();
        let mut missing = Vec::new();
        for (key, value) in defaults.as_object().unwrap() {
            let wanted: Vec<(String, String)> = match value.as_object() {
                Some(keys) => keys.keys().map(|k| (key.clone(), k.clone())).collect(),
                None => vec![(String::new(), key.clone())],
            };
            missing.extend(wanted.into_iter().filter(|w| !shown.contains(w)));
        }
        assert_eq!(missing, Vec::new(), "keys the example leaves out");
    }

    #[test]
    fn a_log_level_must_name_a_level() {
        let settings = |level: &str| {
            Config::from_toml(&format!("[log]\nlevel = \"{level}\"\n"))
                .unwrap()
                .into_settings(Secret::new("token"))
        };
        for typo in [
            "warning",
            "debg",
            "billhook_server=verbose",
            "info,billhook",
        ] {
            let refused = settings(typo).unwrap_err().to_string();
            assert!(refused.contains("names no level"), "{typo}: {refused}");
        }
        for level in [
            "info",
            "WARN",
            "billhook_server=debug,info",
            "off",
            "3",
            "billhook_server=4",
            "billhook_server[ingest]",
            "billhook_server[ingest{source=razorpay}]=debug",
        ] {
            assert!(settings(level).is_ok(), "{level}");
        }
    }

    #[test]
    fn a_zero_or_tiny_timeout_is_refused() {
        let settings = |table: &str, key: &str, value: &str| {
            Config::from_toml(&format!("[{table}]\n{key} = \"{value}\"\n"))
                .unwrap()
                .into_settings(Secret::new("token"))
        };
        for (table, key, least) in [
            ("ingest", "request_timeout", "1s"),
            ("delivery", "request_timeout", "1s"),
            ("delivery", "connect_timeout", "100ms"),
            ("database", "statement_timeout", "1s"),
            ("database", "connect_timeout", "100ms"),
        ] {
            let refused = settings(table, key, "0s").unwrap_err().to_string();
            assert!(
                refused.contains(&format!(
                    "{table}.{key} is 0ms: it must be at least {least}"
                )),
                "{refused}"
            );
            assert!(
                settings(table, key, least).is_ok(),
                "{table}.{key} = {least}"
            );
        }
    }

    /// A lease leaves room for an attempt and the renewals before it: a quarter of the lease
    /// and a second at least.
    #[test]
    fn a_lease_leaves_room_beyond_an_attempt() {
        let settings = |lease: &str, timeout: &str| {
            Config::from_toml(&format!(
                "[delivery]\nlease = \"{lease}\"\nrequest_timeout = \"{timeout}\"\n"
            ))
            .unwrap()
            .into_settings(Secret::new("token"))
        };
        for (lease, timeout) in [("6s", "5900ms"), ("2s", "1500ms"), ("60s", "46s")] {
            let refused = settings(lease, timeout).unwrap_err();
            assert!(
                refused.to_string().contains("exceed request_timeout"),
                "{lease}/{timeout}: {refused}"
            );
        }
        for (lease, timeout) in [("8s", "5900ms"), ("2s", "1s"), ("60s", "45s")] {
            assert!(settings(lease, timeout).is_ok(), "{lease}/{timeout}");
        }
    }

    /// A secret written where a list of them belongs, or one that is not valid TOML, is
    /// refused without quoting it, and the error still says where and why.
    #[test]
    fn a_misplaced_secret_is_not_quoted_in_the_error() {
        let text =
            "[[source]]\nname = \"r\"\nprovider = \"razorpay\"\nsecrets = \"whsec_TOPSECRET\"\n";
        let refused = Config::from_toml(text).unwrap_err().to_string();
        assert!(!refused.contains("TOPSECRET"), "{refused}");
        assert!(
            refused.contains("invalid type: found a string, expected a sequence"),
            "{refused}"
        );
        let text =
            "[[source]]\nname = \"r\"\nprovider = \"razorpay\"\nsecrets = [\"rzp\\qTOPSECRET\"]\n";
        let refused = Config::from_toml(text).unwrap_err().to_string();
        assert!(!refused.contains("TOPSECRET"), "{refused}");
        assert!(refused.contains("line 4"), "{refused}");
        assert!(refused.contains("escape"), "{refused}");
    }

    /// A secret of digits written without quotes is a number, and is not quoted either.
    #[test]
    fn a_secret_of_digits_is_not_quoted_in_the_error() {
        let refused = Config::from_toml("admin_token = 1234567890123456\n")
            .unwrap_err()
            .to_string();
        assert!(!refused.contains("1234567890123456"), "{refused}");
        assert!(refused.contains("found a number"), "{refused}");
    }

    /// A configuration given as a pipe (`--config <(sops -d billhook.toml)`) is read like a
    /// file; a directory is refused, not taken as an empty configuration.
    #[test]
    fn a_configuration_from_a_pipe_is_read_and_a_directory_refused() {
        let dir = std::env::temp_dir().join(format!(
            "billhook-config-pipe-{}-{}",
            std::process::id(),
            billhook_core::time::Timestamp::now().unix_millis()
        ));
        std::fs::create_dir(&dir).unwrap();
        let fifo = dir.join("billhook.toml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                std::fs::write(fifo, "listen = \"127.0.0.1:9911\"\n").unwrap();
            })
        };
        let config = Config::load(Some(&fifo)).unwrap();
        // Before joining: a reader that never opened the pipe leaves the writer blocked.
        assert_eq!(config.listen.to_string(), "127.0.0.1:9911");
        writer.join().unwrap();
        let refused = Config::load(Some(&dir)).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            refused.contains("cannot read the configuration file"),
            "{refused}"
        );
    }

    #[test]
    fn an_empty_admin_token_is_refused() {
        for empty in ["", "  \n"] {
            let refused = Config::from_toml("")
                .unwrap()
                .into_settings(Secret::new(empty))
                .unwrap_err();
            assert!(
                refused.to_string().contains("admin token is empty"),
                "{refused}"
            );
        }
        assert!(
            Config::from_toml("")
                .unwrap()
                .into_settings(Secret::new("bh_token"))
                .is_ok()
        );
        // A token read from a file or the environment with a trailing newline is the token:
        // presented ones are trimmed, and the untrimmed one would match nothing.
        let settings = Config::from_toml("")
            .unwrap()
            .into_settings(Secret::new(" bh_token\n"))
            .unwrap();
        assert_eq!(settings.admin_token.expose(), "bh_token");
    }

    #[test]
    fn sources_are_validated() {
        let config = Config::from_toml(
            r#"
            [[source]]
            name = "razorpay-live"
            provider = "razorpay"
            secrets = ["current", "previous"]

            [[source]]
            name = "setu"
            provider = "setu_bbps"
            auth = { kind = "jwt_hs256", secret = "s3cret" }
            allow_ips = ["52.66.75.174/32"]
            "#,
        )
        .unwrap();
        let settings = config.into_settings(Secret::new("token")).unwrap();
        assert_eq!(settings.sources.len(), 2);
        assert_eq!(settings.sources["setu"].spec.allow_ips.len(), 1);

        let missing = Config::from_toml("[[source]]\nname = \"cam\"\nprovider = \"caminvoice\"\n")
            .unwrap()
            .into_settings(Secret::new("t"))
            .unwrap_err();
        assert!(
            missing.to_string().contains("no usable authentication"),
            "{missing}"
        );

        let unknown_key = Config::from_toml("[ingest]\nmax_body = 3\n").unwrap_err();
        assert!(
            unknown_key.to_string().contains("max_body"),
            "{unknown_key}"
        );

        let short_window = Config::from_toml("[ingest]\ndedup_window = \"1d\"\n")
            .unwrap()
            .into_settings(Secret::new("t"))
            .unwrap_err();
        assert!(short_window.to_string().contains("at least 8 days"));

        let late_announcement = Config::from_toml(
            "[ledger]\nunmatched_after = \"31d\"\n[retention]\nmax_age = \"30d\"\n",
        )
        .unwrap()
        .into_settings(Secret::new("t"))
        .unwrap_err();
        assert!(
            late_announcement.to_string().contains("unmatched_after"),
            "{late_announcement}"
        );
    }
}
