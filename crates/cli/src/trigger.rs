//! `billhook trigger`: the provider emulator. Builds a provider-faithful message, signs it the
//! way the provider signs, and prints it or sends it.
//!
//! Without `--secret` or `--to`, the matching source is read from billhook's configuration (the
//! data directory's `billhook.toml` unless `--config` says otherwise), so `billhook serve` in one
//! terminal and `billhook trigger razorpay invoice.paid` in another work with no setup.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use billhook_core::time::Timestamp;
use billhook_providers::auth::{Secret, SourceAuth, path_suffix};
use billhook_providers::emulate::{GenerateOptions, Generated, Override};
use billhook_providers::scenario::Scenario;
use billhook_providers::{PROVIDERS, Provider, by_name};
use billhook_server::config::{Config, SourceConfig};
use clap::Args;
use serde_json::{Value, json};

use crate::CliError;
use crate::output;
use crate::serve::load_config;

#[derive(Debug, Args)]
pub(crate) struct TriggerArgs {
    /// The provider: razorpay, zwitch, setu_bbps or caminvoice.
    #[arg(required_unless_present_any = ["list", "scenario"])]
    provider: Option<String>,
    /// The provider's event name (`invoice.paid`, `payments.updated`, `BILL_PAY`, …).
    #[arg(required_unless_present_any = ["list", "scenario"])]
    event: Option<String>,
    /// List every event the emulator can build.
    #[arg(long)]
    list: bool,
    /// Play a scenario file (TOML, or JSON by extension).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["provider", "event", "list", "variant", "overrides", "sandbox", "print"]
    )]
    scenario: Option<PathBuf>,
    /// A variant of the event: a payment method, a status (see --list).
    #[arg(long)]
    variant: Option<String>,
    /// Override a field: `json.path=value`; the value is JSON when it parses as JSON. Repeatable.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    overrides: Vec<String>,
    /// Mark the message as sandbox / test mode, where the provider has such a flag.
    #[arg(long)]
    sandbox: bool,
    /// Seed the ids and amounts, for reproducible output.
    #[arg(long)]
    seed: Option<u64>,
    /// Build the message as if it were this time (RFC 3339) instead of now.
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// Send to this URL instead of the local billhook's source.
    #[arg(long)]
    to: Option<String>,
    /// The billhook source to use (default: the first source of the provider).
    #[arg(long)]
    source: Option<String>,
    /// The provider signing secret (Razorpay, Zwitch) instead of the source's.
    #[arg(long, hide_env_values = true)]
    secret: Option<String>,
    /// A request header, `Name: value`, replacing any generated one of that name (a signature,
    /// an event id, a credential). Repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Write the exact HTTP/1.1 request to standard output (and send it only with --to).
    #[arg(long)]
    print: bool,
    /// Send the JSON indented, as providers' own samples are; each provider signs it its way
    /// (Zwitch over the body with its whitespace removed).
    #[arg(long)]
    pretty: bool,
    /// The local billhook (default: http:// + the configured listen address).
    #[arg(long, env = "BILLHOOK_URL")]
    url: Option<String>,
    /// billhook's configuration file, for sources and secrets.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// A message ready to go: where, with which headers, which bytes.
#[derive(Clone)]
struct Request {
    url: String,
    /// The URL as it may be shown: a path token replaced by `…`.
    shown_url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Whose acknowledgement rules judge the answer, and who signs a resend.
    provider: &'static dyn Provider,
    /// The source's credential, issued anew for a resend as the provider would (a JWT's `iat`
    /// must be fresh); signatures over the body come out the same.
    credential: Option<SourceAuth>,
    /// Headers given with `--header`: never signed over.
    given: Vec<String>,
}

impl Request {
    /// The same request, its credential issued now.
    fn signed_again(&self) -> Self {
        let mut again = self.clone();
        if let Some(auth) = &self.credential {
            for (name, value) in self.provider.sign(auth, &self.body, Timestamp::now()) {
                if self
                    .given
                    .iter()
                    .any(|given| given.eq_ignore_ascii_case(&name))
                {
                    continue;
                }
                if let Some(slot) = again
                    .headers
                    .iter_mut()
                    .find(|(set, _)| set.eq_ignore_ascii_case(&name))
                {
                    slot.1 = value;
                }
            }
        }
        again
    }

    /// Why the provider would not count this answer as delivered (and would send the webhook
    /// again), if it would not: only some status is an acknowledgement to some providers, and
    /// some wait only so long.
    fn not_acknowledged(&self, status: u16, took: std::time::Duration) -> Option<String> {
        let provider = self.provider;
        if !(200..300).contains(&status) {
            return Some("expected a 2xx".to_owned());
        }
        if provider.requires_ack_status() && status != provider.ack_status() {
            return Some(format!(
                "but {} takes only {} as an acknowledgement and would send the webhook again",
                provider.name(),
                provider.ack_status()
            ));
        }
        match provider.ack_deadline() {
            Some(deadline) if took > deadline => Some(format!(
                "but only after {:.1} s: {} waits {} s for an acknowledgement and would send the webhook again",
                took.as_secs_f64(),
                provider.name(),
                deadline.as_secs()
            )),
            _ => None,
        }
    }
}

pub(crate) async fn trigger(args: TriggerArgs) -> Result<(), CliError> {
    if args.list {
        list(args.json);
        return Ok(());
    }
    let config = load_config(args.config.as_deref())?;
    let now = match &args.at {
        Some(text) => {
            let at = Timestamp::parse_rfc3339(text)
                .map_err(|e| CliError::Usage(format!("--at: {e}")))?;
            // Messages write their times in the providers' zones, and a scenario adds its
            // delays: a time in the last year a date can be written in has no room for either.
            if at >= LATEST_AT {
                return Err(CliError::Usage(format!(
                    "--at: `{text}` is too late; the latest is 9998-12-31T23:59:59Z"
                )));
            }
            at
        }
        None => Timestamp::now(),
    };
    let mut options = GenerateOptions::new(now, args.seed);
    options.sandbox = args.sandbox;
    if let Some(file) = &args.scenario {
        return play(file, &args, &config, options).await;
    }
    let (Some(provider_name), Some(event)) = (&args.provider, &args.event) else {
        return Err(CliError::Usage(
            "name a provider and an event, or use --list".to_owned(),
        ));
    };
    let provider = by_name(provider_name).ok_or_else(|| {
        CliError::Usage(format!(
            "unknown provider `{provider_name}` (known: {})",
            PROVIDERS
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    options.variant.clone_from(&args.variant);
    let mut generated = provider
        .generate(event, &mut options)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    for text in &args.overrides {
        Override::parse(text)
            .and_then(|over| over.apply(&mut generated.json))
            .map_err(|e| CliError::Usage(e.to_string()))?;
    }
    let mut target = Target::resolve(
        provider,
        args.source.as_deref(),
        args.secret.as_deref(),
        &config,
    )?;
    if args.print && args.to.is_none() && target.source.is_none() {
        // Only printing: show the request as it would go to a source named after the provider.
        target.source = Some(provider.name().to_owned());
    }
    let request = target.request(provider, &generated, &Sending::new(&args, &config))?;
    if args.print {
        let text = http_text(&request)?;
        if args.json && args.to.is_some() {
            // Standard output carries the JSON answer alone.
            eprint!("{text}");
        } else {
            output::write(&text);
        }
        if args.to.is_none() {
            return Ok(());
        }
    }
    let (status, body, took) = send(&request).await?;
    if args.json {
        output::pretty(&json!({ "status": status, "body": body }));
    } else {
        output::line(&format!("HTTP {status} from {}", request.shown_url));
        if !body.is_null() {
            output::line(&body.to_string());
        }
    }
    let refusal = request.not_acknowledged(status, took);
    if refusal.is_none() {
        Ok(())
    } else if let Some(to) = args
        .to
        .as_deref()
        .filter(|_| status == 401 && matches!(target.auth, Some(SourceAuth::PathToken { .. })))
    {
        // The token goes in the path, which --to gives whole: either it was left out, or the
        // one given is not the source's.
        let source = target.source.as_deref().unwrap_or("SOURCE");
        Err(CliError::Usage(if names_a_path_token(to) {
            format!(
                "the target answered 401: the token at the end of --to is not source `{source}`'s"
            )
        } else {
            format!(
                "the target answered 401: source `{source}` authenticates by a token in the path, which --to must end with (…/ingest/{source}/TOKEN)"
            )
        }))
    } else if (200..300).contains(&status) {
        Err(CliError::Usage(format!(
            "the target answered {status}, {}",
            refusal.unwrap_or_default()
        )))
    } else {
        Err(CliError::Usage(format!("the target answered {status}")))
    }
}

/// Whether an ingest URL goes on past its source's name (`…/ingest/SOURCE/TOKEN`).
fn names_a_path_token(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    let segments: Vec<&str> = url
        .path_segments()
        .map(|segments| segments.filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    segments
        .iter()
        .rposition(|segment| *segment == "ingest")
        .is_some_and(|at| segments.len() > at + 2)
}

fn list(json: bool) {
    let mut rows = Vec::new();
    let mut entries = Vec::new();
    for provider in PROVIDERS {
        for event in provider.emulated_events() {
            rows.push(vec![
                provider.name().to_owned(),
                event.name.to_owned(),
                event.variants.join(", "),
                event.description.to_owned(),
            ]);
            entries.push(json!({
                "provider": provider.name(),
                "event": event.name,
                "variants": event.variants,
                "description": event.description,
            }));
        }
    }
    if json {
        output::pretty(&Value::Array(entries));
    } else {
        output::table(&["PROVIDER", "EVENT", "VARIANTS", "DESCRIPTION"], &rows);
    }
}

/// What the command line says about sending, shared by every message.
struct Sending<'a> {
    /// An explicit destination URL.
    to: Option<&'a str>,
    /// The local billhook's base URL.
    base: Option<&'a str>,
    config: &'a Config,
    /// Extra `Name: value` headers.
    headers: &'a [String],
    /// Indented JSON instead of compact.
    pretty: bool,
}

impl<'a> Sending<'a> {
    fn new(args: &'a TriggerArgs, config: &'a Config) -> Self {
        Self {
            to: args.to.as_deref(),
            base: args.url.as_deref(),
            config,
            headers: &args.headers,
            pretty: args.pretty,
        }
    }
}

/// Where a message goes and how it is authenticated.
struct Target {
    source: Option<String>,
    auth: Option<SourceAuth>,
}

impl Target {
    fn resolve(
        provider: &dyn Provider,
        source: Option<&str>,
        secret: Option<&str>,
        config: &Config,
    ) -> Result<Self, CliError> {
        let configured: Option<&SourceConfig> = match source {
            Some(name) => {
                let named = config
                    .sources
                    .iter()
                    .find(|s| s.name == name)
                    .ok_or_else(|| {
                        CliError::Usage(format!("no source named `{name}` in the configuration"))
                    })?;
                // Its credential would sign a message of another kind: refused, and never
                // what was meant.
                if named.provider != provider.name() {
                    return Err(CliError::Usage(format!(
                        "source `{name}` takes {} webhooks, not {}",
                        named.provider,
                        provider.name()
                    )));
                }
                Some(named)
            }
            None => config
                .sources
                .iter()
                .find(|s| s.provider == provider.name()),
        };
        let auth = match (secret, configured) {
            (Some(""), _) => {
                // An unset variable (`--secret "$ZWITCH_SECRET"`) would sign with an empty key,
                // and the target's 401 would not say why.
                return Err(CliError::Usage(
                    "--secret is empty (is the variable it came from set?)".to_owned(),
                ));
            }
            (Some(secret), _) => {
                if !provider
                    .auth_kinds()
                    .contains(&billhook_providers::AuthKind::Signature)
                {
                    return Err(CliError::Usage(format!(
                        "{} does not sign its webhooks; pass its credential with --header, or use a configured source",
                        provider.name()
                    )));
                }
                Some(SourceAuth::Signature {
                    secrets: vec![Secret::new(secret)],
                })
            }
            (None, Some(source)) => Some(source.spec()?.auth),
            (None, None) => None,
        };
        Ok(Self {
            source: configured.map(|s| s.name.clone()),
            auth,
        })
    }

    /// The URL for people: a path token is a credential, so it is not shown.
    fn shown_url(&self, url: &str) -> String {
        match &self.auth {
            Some(auth @ SourceAuth::PathToken { .. }) => url.replace(&path_suffix(auth), "/…"),
            _ => url.to_owned(),
        }
    }

    fn request(
        &self,
        provider: &'static dyn Provider,
        generated: &Generated,
        sending: &Sending<'_>,
    ) -> Result<Request, CliError> {
        let body = if sending.pretty {
            generated.pretty_body()
        } else {
            generated.body()
        };
        let url = match (sending.to, &self.source) {
            (Some(url), _) => url.to_owned(),
            (None, Some(source)) => {
                let base = sending.base.map_or_else(
                    || format!("http://{}", sending.config.listen),
                    str::to_owned,
                );
                ingest_url(&base, source, self.auth.as_ref())
            }
            (None, None) => {
                return Err(CliError::Usage(format!(
                    "no {} source is configured here: pass --to URL (and --secret)",
                    provider.name()
                )));
            }
        };
        if self.auth.is_none()
            && provider
                .auth_kinds()
                .contains(&billhook_providers::AuthKind::Signature)
        {
            return Err(CliError::Usage(format!(
                "no {} signing secret: pass --secret, or run where billhook's data directory is",
                provider.name()
            )));
        }
        let mut headers = generated.headers.clone();
        // What an HTTP client would add on its own is set here, so `--print` shows it too.
        for (name, value) in [
            (
                "User-Agent",
                concat!("billhook-trigger/", env!("CARGO_PKG_VERSION")),
            ),
            ("Accept", "*/*"),
        ] {
            if !headers
                .iter()
                .any(|(set, _)| set.eq_ignore_ascii_case(name))
            {
                headers.push((name.to_owned(), value.to_owned()));
            }
        }
        if let Some(auth) = &self.auth {
            // Signed now whatever `--at` says of the message: a credential issued in the past
            // (a JWT's `iat`) is refused.
            headers.extend(provider.sign(auth, &body, Timestamp::now()));
        }
        let mut given = Vec::with_capacity(sending.headers.len());
        for header in sending.headers {
            let (name, value) = header.split_once(':').ok_or_else(|| {
                CliError::Usage(format!("--header `{header}`: expected `Name: value`"))
            })?;
            given.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        // A given header replaces the generated one of its name: a receiver reads the first of
        // two, so a wrong signature or a fixed event id added after the real one would go
        // unnoticed, and a test meant to be refused would pass.
        headers.retain(|(name, _)| !given.iter().any(|(set, _)| set.eq_ignore_ascii_case(name)));
        let given_names = given.iter().map(|(name, _)| name.clone()).collect();
        headers.extend(given);
        Ok(Request {
            shown_url: self.shown_url(&url),
            url,
            headers,
            body,
            provider,
            credential: self.auth.clone(),
            given: given_names,
        })
    }
}

/// Where source `name` of the billhook at `base` takes its webhooks, with the path token when
/// its credential is one.
pub(crate) fn ingest_url(base: &str, name: &str, auth: Option<&SourceAuth>) -> String {
    let suffix = auth.map(path_suffix).unwrap_or_default();
    format!("{}/ingest/{name}{suffix}", base.trim_end_matches('/'))
}

/// The exact HTTP/1.1 request: request line, headers, blank line, body.
fn http_text(request: &Request) -> Result<String, CliError> {
    let url = reqwest::Url::parse(&request.url)
        .map_err(|e| CliError::Usage(format!("{}: {e}", request.url)))?;
    let mut path = url.path().to_owned();
    if let Some(query) = url.query() {
        path.push('?');
        path.push_str(query);
    }
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let mut text = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in &request.headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n", request.body.len()));
    text.push_str(&String::from_utf8_lossy(&request.body));
    Ok(text)
}

/// Sends one request as a provider would: a redirect is an answer, not followed (following
/// one would turn the POST into a GET without its body, or carry the credentials elsewhere),
/// and an answer that never comes fails after [`SEND_TIMEOUT`].
async fn send(request: &Request) -> Result<(u16, Value, std::time::Duration), CliError> {
    let started = std::time::Instant::now();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(SEND_TIMEOUT)
        .build()
        .map_err(|e| CliError::Io(e.to_string()))?;
    let mut builder = client.post(&request.url).body(request.body.clone());
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    let response = builder.send().await.map_err(|e| {
        let unsendable = e.is_builder();
        let reason = e.without_url().to_string();
        if unsendable {
            // Nothing was sent: the URL or a header cannot be.
            CliError::Usage(format!("cannot send to {}: {reason}", request.shown_url))
        } else {
            CliError::Unreachable {
                url: request.shown_url.clone(),
                reason,
            }
        }
    })?;
    let status = response.status().as_u16();
    // The provider waits for the status, not the body.
    let took = started.elapsed();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(if text.is_empty() {
        Value::Null
    } else {
        Value::String(text)
    });
    Ok((status, body, took))
}

/// The first time `--at` refuses: 9999-01-01T00:00:00Z.
const LATEST_AT: Timestamp = Timestamp::from_unix_millis(253_370_764_800_000);

/// How long `trigger` waits for the target's answer.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What a scenario's step sends, known before the first is sent.
enum Planned<'a> {
    /// An earlier step's request, as it was.
    Resend(&'a str),
    /// A new message of the provider's, to the target.
    Send(&'static dyn Provider, Target),
}

/// Plays a scenario file step by step, checking each step's expectations.
async fn play(
    file: &Path,
    args: &TriggerArgs,
    config: &Config,
    mut options: GenerateOptions,
) -> Result<(), CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Io(format!("{}: {e}", file.display())))?;
    let is_json = file.extension().is_some_and(|e| e == "json");
    let scenario = Scenario::parse(&text, is_json)
        .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
    if !args.json {
        output::line(&format!("scenario: {}", scenario.name));
    }
    // Every step's target before the first is sent: a misspelt source or a missing credential
    // stops the run before anything is stored, not halfway through it.
    let targets = scenario
        .steps
        .iter()
        .map(|step| match &step.resend {
            Some(earlier) => Ok(Planned::Resend(earlier)),
            None => {
                let provider = by_name(&step.provider).ok_or_else(|| {
                    CliError::Usage(format!("unknown provider `{}`", step.provider))
                })?;
                let source = step.source.as_deref().or(args.source.as_deref());
                Target::resolve(provider, source, args.secret.as_deref(), config)
                    .map(|target| Planned::Send(provider, target))
                    .map_err(|e| match e {
                        CliError::Usage(message) => {
                            CliError::Usage(format!("step `{}`: {message}", step.name))
                        }
                        other => other,
                    })
            }
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    let mut messages: HashMap<String, Value> = HashMap::new();
    let mut requests: HashMap<String, Request> = HashMap::new();
    let mut results = Vec::new();
    // Each step's messages carry the time it is sent at: the start (or `--at`) plus the delays
    // so far, which is the same in every run.
    let started_at = options.now;
    let mut waited = std::time::Duration::ZERO;
    for (step, target) in scenario.steps.iter().zip(&targets) {
        let wait = step.delay().map_err(|e| CliError::Usage(e.to_string()))?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        waited += wait;
        options.now = started_at.add(waited);
        let (request, label) = match target {
            Planned::Resend(earlier) => {
                let request = requests
                    .get(*earlier)
                    .map(Request::signed_again)
                    .ok_or_else(|| {
                        CliError::Usage(format!("step `{}`: nothing to resend", step.name))
                    })?;
                // Later steps may refer to the resent message by this step's name too.
                if let Some(message) = messages.get(*earlier).cloned() {
                    messages.insert(step.name.clone(), message);
                }
                (request, format!("resend of {earlier}"))
            }
            Planned::Send(provider, target) => {
                let generated = step
                    .build(&messages, &mut options)
                    .map_err(|e| CliError::Usage(e.to_string()))?;
                let request = target.request(*provider, &generated, &Sending::new(args, config))?;
                messages.insert(step.name.clone(), generated.json);
                (request, format!("{} {}", step.provider, step.event))
            }
        };
        for attempt in 1..=step.repeat {
            let sent = if attempt == 1 {
                send(&request).await?
            } else {
                send(&request.signed_again()).await?
            };
            let (status, body, took) = sent;
            // Without an expectation, the step is to be acknowledged as its provider counts it.
            let refusal = match step.expect {
                Some(expected) => (expected != status).then(|| format!("expected {expected}")),
                None => request.not_acknowledged(status, took),
            };
            let status_ok = refusal.is_none();
            // billhook's acknowledgement says whether the message was a duplicate and whether
            // it was quarantined; a receiver given by `--to` says neither, and neither does
            // billhook for a source that acknowledges with an empty 204.
            let answered = args.to.is_none() && (200..300).contains(&status);
            let duplicate = body["duplicate"].as_bool();
            let expected_duplicate = attempt > 1 || step.expects_duplicate();
            let duplicate_ok = match duplicate {
                Some(duplicate) => duplicate == expected_duplicate,
                None => !(answered && expected_duplicate),
            };
            // Taken from the answer whenever it says, as `duplicate` is: billhook reached through
            // `--to` still says whether it quarantined the message.
            let quarantined = body["quarantined"].as_bool() == Some(true);
            let quarantine_ok = match body["quarantined"].as_bool() {
                Some(quarantined) => quarantined == step.expect_quarantined,
                None => !(answered && step.expect_quarantined),
            };
            results.push(json!({
                "step": step.name, "attempt": attempt, "status": status, "response": body,
            }));
            if !args.json {
                let mark = if status_ok && duplicate_ok && quarantine_ok {
                    "ok"
                } else {
                    "FAILED"
                };
                let events = body["events"].as_array().map_or(0, Vec::len);
                let note = match (duplicate == Some(true), quarantined) {
                    (_, true) => ", quarantined",
                    (true, false) => ", duplicate",
                    (false, false) => "",
                };
                let repeat = if step.repeat > 1 {
                    format!(" #{attempt}")
                } else {
                    String::new()
                };
                output::line(&format!(
                    "  {mark:<6} {} ({label}{repeat}) → {status}, {events} event(s){note}",
                    step.name
                ));
            }
            let failure = if let Some(refusal) = &refusal {
                Some(format!(
                    "step `{}` got {status}, {refusal}: {body}",
                    step.name
                ))
            } else if !duplicate_ok && duplicate.is_none() {
                Some(format!(
                    "step `{}`: expected duplicate = {expected_duplicate}, but billhook's answer does not say (a source that acknowledges with 204 has no body to say it in)",
                    step.name
                ))
            } else if !duplicate_ok {
                Some(format!(
                    "step `{}`: expected duplicate = {expected_duplicate}, got {body}",
                    step.name
                ))
            } else if !quarantine_ok && body["quarantined"].is_null() {
                Some(format!(
                    "step `{}`: expected quarantined = true, but billhook's answer does not say (a source that acknowledges with 204 has no body to say it in)",
                    step.name
                ))
            } else if !quarantine_ok {
                Some(format!(
                    "step `{}`: expected quarantined = {}, got {body}",
                    step.name, step.expect_quarantined
                ))
            } else {
                None
            };
            if let Some(failure) = failure {
                // The steps so far, the failed one last, for a script reading the JSON.
                if args.json {
                    output::pretty(&json!({ "scenario": scenario.name, "steps": results }));
                }
                return Err(CliError::Usage(failure));
            }
        }
        requests.insert(step.name.clone(), request);
    }
    if args.json {
        output::pretty(&json!({ "scenario": scenario.name, "steps": results }));
    }
    Ok(())
}
