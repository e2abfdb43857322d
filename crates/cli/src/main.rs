//! `billhook`: the one binary. `serve` runs the gateway; the other subcommands talk to a running
//! gateway's admin API or emulate providers.

// The binary is where billhook talks to its user; libraries below it only log.
#![allow(clippy::print_stderr)]

mod admin;
mod bench;
mod client;
mod endpoints;
mod ledger;
mod output;
mod serve;
mod starter;
mod trigger;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// A webhook gateway for invoice, payment and bill events from Razorpay, Zwitch (UPI collect and
/// Bharat Connect), Setu BBPS and CamInvoice.
#[derive(Debug, Parser)]
#[command(name = "billhook", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway: receive, verify, store and serve the admin API.
    Serve(serve::ServeArgs),
    /// List or show canonical events.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// List or show stored provider requests (e.g. the quarantined ones).
    Inbound {
        #[command(subcommand)]
        command: InboundCommand,
    },
    /// Run quarantined requests through today's provider code again.
    Reprocess(ReprocessArgs),
    /// Emulate a provider: build a provider-faithful webhook, signed as the provider signs, and
    /// print or send it. `--scenario FILE` plays several in order.
    Trigger(trigger::TriggerArgs),
    /// Apply database migrations (billhook serve also does at start) and report the version.
    Migrate {
        /// Migrate to this schema version instead of the newest.
        #[arg(long)]
        to: Option<u32>,
        /// The configuration file, for the database.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Send events again: one event, or an endpoint's failures since a time.
    Replay {
        #[command(subcommand)]
        command: ReplayCommand,
    },
    /// Subscriber endpoints: list, create, change, enable, disable, rotate secrets, recover.
    Endpoints {
        #[command(subcommand)]
        command: endpoints::EndpointsCommand,
    },
    /// The configured sources with their latest traffic and verification failures.
    Sources {
        #[command(flatten)]
        remote: Remote,
    },
    /// Admin tokens with a `read` or `admin` scope.
    Token {
        #[command(subcommand)]
        command: admin::TokenCommand,
    },
    /// Remove what retention keeps no longer (`--dry-run`: show what would go).
    Prune {
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Measure throughput and latency: drive signed provider traffic through a fresh (or
    /// running) billhook to a built-in receiver, and report what arrived, how fast, and what
    /// was lost.
    Bench(bench::BenchArgs),
    /// Print the admin API's OpenAPI 3.1 document (also served at /v1/openapi.json).
    Openapi,
    /// Print a shell completion script: `billhook completions bash > /etc/bash_completion.d/billhook`.
    Completions { shell: clap_complete::Shell },
    /// The ledger's invoices: what each is owed, has been paid and by what.
    Invoices(ledger::LedgerArgs),
    /// The ledger's payments and the invoices or bills they pay (`--unmatched`: none).
    Payments(ledger::LedgerArgs),
    /// BBPS bills fetched for customers, and what was paid against them.
    Bills(ledger::LedgerArgs),
    /// BBPS billers and their plans.
    Billers(ledger::LedgerArgs),
    /// BBPS complaints.
    Disputes(ledger::LedgerArgs),
    /// CamInvoice e-invoice documents.
    Documents(ledger::LedgerArgs),
}

#[derive(Debug, Subcommand)]
enum ReplayCommand {
    /// Redeliver one event to the endpoints that had it (or to one endpoint).
    Event {
        id: String,
        /// Only to this endpoint; it gets the event even if it never had it.
        #[arg(long)]
        endpoint: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Resend every failed, dead or held delivery of an endpoint since a time.
    Endpoint {
        id: String,
        /// An RFC 3339 time, or a duration back from now (`2h`, `3d`).
        #[arg(long)]
        since: String,
        /// Follow the deliveries with a progress bar until they are done.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

/// How long a client command's request may take by default, in seconds.
pub(crate) const CLIENT_TIMEOUT_SECONDS: u64 = 60;

/// How to reach a running billhook.
#[derive(Debug, Clone, Args)]
pub(crate) struct Remote {
    /// The billhook server (default: http:// + the configured listen address).
    #[arg(long, env = "BILLHOOK_URL", global = true)]
    url: Option<String>,
    /// The admin token (default: BILLHOOK_ADMIN_TOKEN, then the data directory's admin-token).
    #[arg(
        long,
        env = "BILLHOOK_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    token: Option<String>,
    /// The configuration file, to find the listen address and data directory.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// The most seconds one request may take before the command gives up (`prune`, `recover`
    /// and `--csv` exports take as long as there is data, without a limit).
    #[arg(
        long,
        env = "BILLHOOK_CLIENT_TIMEOUT",
        global = true,
        default_value_t = CLIENT_TIMEOUT_SECONDS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    timeout: u64,
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// List events, newest first.
    List {
        /// Only this canonical type (`invoice.paid`).
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Only this subject (the provider's id of the invoice, payment…).
        #[arg(long)]
        subject: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Continue after this cursor.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one event with its stored request.
    Show {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
enum InboundCommand {
    /// List stored requests, newest first.
    List {
        /// processed, quarantined or duplicate.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        source: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one stored request, body included.
    Show {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Args)]
struct ReprocessArgs {
    /// Reprocess these requests (default: every quarantined request). Fails if any of them
    /// does not exist or is still quarantined.
    ids: Vec<String>,
    /// Only requests of this source.
    #[arg(long)]
    source: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

/// Why a command failed; printed on standard error with exit code 1.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error(transparent)]
    Config(#[from] billhook_server::config::ConfigError),
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("cannot reach billhook at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Run(#[from] billhook_server::RunError),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("billhook: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli.command));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("billhook: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> Result<(), CliError> {
    match command {
        Command::Serve(args) => serve::serve(args).await,
        Command::Events { command } => match command {
            EventsCommand::List {
                event_type,
                source,
                subject,
                limit,
                cursor,
                remote,
            } => {
                let client = client::Client::connect(&remote)?;
                let mut query = vec![("limit", limit.to_string())];
                push(&mut query, "type", event_type);
                push(&mut query, "source", source);
                push(&mut query, "subject", subject);
                push(&mut query, "cursor", cursor);
                let page = client.get("/v1/events", &query).await?;
                output::events(&page, remote.json);
                Ok(())
            }
            EventsCommand::Show { id, remote } => {
                let client = client::Client::connect(&remote)?;
                let detail = client
                    .get(&format!("/v1/events/{}", client::segment(&id)), &[])
                    .await?;
                output::pretty(&detail);
                Ok(())
            }
        },
        Command::Inbound { command } => match command {
            InboundCommand::List {
                status,
                source,
                limit,
                cursor,
                remote,
            } => {
                let client = client::Client::connect(&remote)?;
                let mut query = vec![("limit", limit.to_string())];
                push(&mut query, "status", status);
                push(&mut query, "source", source);
                push(&mut query, "cursor", cursor);
                let page = client.get("/v1/inbound", &query).await?;
                output::inbound(&page, remote.json);
                Ok(())
            }
            InboundCommand::Show { id, remote } => {
                let client = client::Client::connect(&remote)?;
                let detail = client
                    .get(&format!("/v1/inbound/{}", client::segment(&id)), &[])
                    .await?;
                output::pretty(&detail);
                Ok(())
            }
        },
        Command::Reprocess(args) => admin::reprocess(args.ids, args.source, args.remote).await,
        Command::Trigger(args) => trigger::trigger(args).await,
        Command::Endpoints { command } => endpoints::run(command).await,
        Command::Sources { remote } => admin::sources(remote).await,
        Command::Token { command } => admin::token(command).await,
        Command::Prune { dry_run, remote } => admin::prune(dry_run, remote).await,
        Command::Bench(args) => bench::bench(args).await,
        Command::Openapi => {
            output::write(&billhook_server::openapi_json());
            Ok(())
        }
        Command::Completions { shell } => {
            admin::completions(shell);
            Ok(())
        }
        Command::Invoices(args) => ledger::run(ledger::Kind::Invoices, args).await,
        Command::Payments(args) => ledger::run(ledger::Kind::Payments, args).await,
        Command::Bills(args) => ledger::run(ledger::Kind::Bills, args).await,
        Command::Billers(args) => ledger::run(ledger::Kind::Billers, args).await,
        Command::Disputes(args) => ledger::run(ledger::Kind::Disputes, args).await,
        Command::Documents(args) => ledger::run(ledger::Kind::Documents, args).await,
        Command::Migrate { to, config } => {
            let config = serve::load_config(config.as_deref())?;
            let database = config.database()?;
            let latest = billhook_store::Store::latest_version(&database);
            if to.is_some_and(|to| to > latest) {
                return Err(CliError::Usage(format!(
                    "this billhook knows schema versions up to {latest}"
                )));
            }
            let store = billhook_store::Store::open_at(&database, to)
                .await
                .map_err(|e| CliError::Io(e.to_string()))?;
            let version = store
                .schema_version()
                .await
                .map_err(|e| CliError::Io(e.to_string()))?;
            store.close().await;
            output::line(&format!(
                "{}: schema version {version} (newest known: {latest})",
                database.describe()
            ));
            Ok(())
        }
        Command::Replay { command } => match command {
            ReplayCommand::Event {
                id,
                endpoint,
                remote,
            } => {
                let client = client::Client::connect(&remote)?;
                let body = match endpoint {
                    Some(endpoint) => serde_json::json!({ "endpoint_id": endpoint }),
                    None => serde_json::json!({}),
                };
                let result = client
                    .post(
                        &format!("/v1/events/{}/redeliver", client::segment(&id)),
                        &body,
                    )
                    .await?;
                if remote.json {
                    output::pretty(&result);
                } else {
                    let count = result["deliveries"].as_array().map_or(0, Vec::len);
                    output::line(&format!("redelivering {id} to {count} endpoint(s)"));
                }
                Ok(())
            }
            ReplayCommand::Endpoint {
                id,
                since,
                wait,
                remote,
            } => endpoints::recover(&remote, &id, &since, wait).await,
        },
    }
}

/// An RFC 3339 time, or a duration (`90m`, `2d`) back from now.
pub(crate) fn parse_since(text: &str) -> Result<String, CliError> {
    if let Ok(at) = billhook_core::time::Timestamp::parse_rfc3339(text) {
        return Ok(at.to_rfc3339());
    }
    let ago: billhook_server::config::HumanDuration = text
        .parse()
        .map_err(|e: String| CliError::Usage(format!("--since: {e}")))?;
    Ok(billhook_core::time::Timestamp::now()
        .sub(ago.0)
        .to_rfc3339())
}

pub(crate) fn push(
    query: &mut Vec<(&'static str, String)>,
    name: &'static str,
    value: Option<String>,
) {
    if let Some(value) = value {
        query.push((name, value));
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
