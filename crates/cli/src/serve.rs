//! `billhook serve`: first-run setup, logging, and the server's composition root.

use std::path::{Path, PathBuf};

use billhook_providers::auth::{Secret, SourceAuth};
use billhook_server::config::{ADMIN_TOKEN_FILE, CONFIG_FILE, Config, LogFormat, Settings};
use clap::Args;
use tokio::net::TcpListener;

use crate::CliError;
use crate::starter::{generate_secret, starter_config};

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The configuration file (default: billhook.toml in the data directory, written with fresh
    /// secrets on first run).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run everything (`all`), only ingest and the admin API (`api`), or only delivery
    /// (`worker`). Split roles need PostgreSQL.
    #[arg(long, value_parser = ["all", "api", "worker"])]
    role: Option<String>,
}

pub(crate) async fn serve(args: ServeArgs) -> Result<(), CliError> {
    let mut config = match args.config {
        Some(path) => Config::load(Some(&path))?,
        None => {
            let data_dir = Config::load(None)?.data_dir;
            let path = data_dir.join(CONFIG_FILE);
            if !path.exists() {
                write_private(&path, &starter_config())?;
                eprintln!(
                    "billhook: first run: wrote a starter configuration to {}",
                    path.display()
                );
            }
            Config::load(Some(&path))?
        }
    };
    if let Some(role) = &args.role {
        config.role = role.parse().map_err(CliError::Usage)?;
    }
    init_logging(config.log.format, &config.log.level);
    let admin_token = admin_token(&config)?;
    let settings = config.into_settings(admin_token)?;
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|error| CliError::Io(format!("cannot listen on {}: {error}", settings.listen)))?;
    let urls = ingest_urls(&settings, &listener);
    // Listened for once, from before the start: a signal that came while the start ran (its
    // migrations can take minutes) would otherwise be lost with the listener that heard it, and
    // the process would serve on until killed.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut signals = StopSignals::listen();
    tokio::spawn(async move {
        signals.next().await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stop.send(true);
        // A graceful stop can take a while (requests in flight, the delivery grace, a database
        // that has stopped answering); a second signal ends the process at once. Nothing
        // acknowledged is lost by that: it is on disk before its acknowledgement, and what
        // was being delivered is sent again after its lease.
        signals.next().await;
        eprintln!("billhook: a second signal: stopping at once");
        std::process::exit(FORCED_STOP_EXIT);
    });
    let signalled = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let server = tokio::select! {
        started = billhook_server::Server::start_answering(settings, &listener) => started?,
        () = signalled(stopped.clone()) => return Ok(()),
    };
    for line in urls {
        eprintln!("billhook: {line}");
    }
    server.serve(listener, signalled(stopped)).await?;
    Ok(())
}

/// The admin token: from the configuration or environment, else the one generated into the data
/// directory on first start (printed that once).
fn admin_token(config: &Config) -> Result<Secret, CliError> {
    if let Some(token) = config
        .admin_token
        .as_ref()
        .filter(|t| !t.expose().is_empty())
    {
        return Ok(token.clone());
    }
    let path = config.data_dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(token) => return Ok(Secret::new(token.trim().to_owned())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        // One that cannot be read (owned by root after a `sudo billhook serve`) is not replaced.
        Err(error) => {
            return Err(CliError::Io(format!(
                "cannot read the admin token in {}: {error}",
                path.display()
            )));
        }
    }
    // An api instance serves beside others, each of which would generate its own, and a
    // client's token would work on some of them. A worker serves no admin API.
    if config.role == billhook_server::config::Role::Api {
        return Err(CliError::Usage(
            "an api instance runs beside others: set admin_token (BILLHOOK_ADMIN_TOKEN) to the same value on every instance".to_owned(),
        ));
    }
    let token = format!("bh_{}", generate_secret());
    write_private(&path, &token)?;
    eprintln!(
        "billhook: generated an admin token (shown this once, kept in {}):\n\n    {token}\n",
        path.display()
    );
    if config
        .database_url
        .as_ref()
        .is_some_and(|url| url.expose().starts_with("postgres"))
    {
        eprintln!(
            "billhook: other instances on this database generate tokens of their own; to run more than one, set admin_token (BILLHOOK_ADMIN_TOKEN) to the same value on each"
        );
    }
    Ok(Secret::new(token))
}

/// The configuration a command other than `serve` runs with: `--config`, else the data
/// directory's `billhook.toml` when there is one (the file `serve` reads), else the defaults;
/// `BILLHOOK_*` variables override each.
pub(crate) fn load_config(path: Option<&Path>) -> Result<Config, CliError> {
    if let Some(path) = path {
        return Ok(Config::load(Some(path))?);
    }
    let defaults = Config::load(None)?;
    let file = defaults.data_dir.join(CONFIG_FILE);
    if file.exists() {
        Ok(Config::load(Some(&file))?)
    } else {
        Ok(defaults)
    }
}

/// Reads the admin token the way `serve` resolves it, for the CLI's client commands.
pub(crate) fn stored_admin_token(data_dir: &Path) -> Option<String> {
    std::fs::read_to_string(data_dir.join(ADMIN_TOKEN_FILE))
        .ok()
        .map(|t| t.trim().to_owned())
}

/// Creates a directory only its owner can enter, as the data directory must be: it holds the
/// database, with the endpoints' signing secrets and every raw body. One that exists is left
/// as it is.
pub(crate) fn create_private_dir(path: &Path) -> Result<(), CliError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(path)
        .map_err(|e| CliError::Io(format!("cannot create {}: {e}", path.display())))
}

/// Writes a new file only its owner can read: it holds secrets.
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<(), CliError> {
    if let Some(parent) = path.parent() {
        create_private_dir(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write;
    options
        .open(path)
        .and_then(|mut file| {
            file.write_all(contents.as_bytes())?;
            // On disk before anything relies on it: the admin token is printed only once. The
            // file's name is in its directory, which a crash could lose without a sync of its own.
            file.sync_all()?;
            #[cfg(unix)]
            if let Some(parent) = path.parent() {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                std::fs::File::open(parent)?.sync_all()?;
            }
            Ok(())
        })
        .map_err(|e| CliError::Io(format!("cannot write {}: {e}", path.display())))
}

/// What to tell the user once the server is ready: each source's URL, then where the admin API
/// is (the last line, which scripts wait for).
fn ingest_urls(settings: &Settings, listener: &TcpListener) -> Vec<String> {
    let address = listener
        .local_addr()
        .map_or_else(|_| settings.listen.to_string(), |a| a.to_string());
    let mut names: Vec<&String> = settings.sources.keys().collect();
    names.sort();
    let mut lines = Vec::new();
    if !settings.role.serves_api() {
        lines.push(format!(
            "worker: delivering; health checks at http://{address}/healthz"
        ));
        return lines;
    }
    for name in names {
        let source = &settings.sources[name];
        let suffix = match &source.spec.auth {
            SourceAuth::PathToken { .. } => "/<token>",
            _ => "",
        };
        lines.push(format!(
            "{:<11} → POST http://{address}/ingest/{name}{suffix}",
            source.spec.provider.name()
        ));
    }
    lines.push(format!("admin API and console at http://{address}/"));
    lines
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// The exit status of a stop forced by a second signal, as a shell reports one interrupted.
const FORCED_STOP_EXIT: i32 = 130;

/// Ctrl-C and SIGTERM, listened for once for the whole run: a listener made after a signal
/// would not hear it, so a second signal sent while the first was being handled would be lost.
struct StopSignals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves on the next Ctrl-C or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn received(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = received(&mut self.interrupt) => {}
                () = received(&mut self.terminate) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
