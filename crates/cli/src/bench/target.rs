//! The billhook under test: a fresh `billhook serve` started by the bench (its own data
//! directory, or its own schema on PostgreSQL), or a running one at `--url`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use billhook_server::config::Config;

use crate::CliError;
use crate::starter::{generate_secret, starter_config};

/// Where the bench finds the billhook it measures.
pub(crate) struct Target {
    pub base_url: String,
    pub config: Config,
    /// The process the bench started, with what it must clean up.
    spawned: Option<Spawned>,
}

struct Spawned {
    child: Child,
    data_dir: PathBuf,
    /// The admin token it was started with, for the bench's questions to its API.
    admin_token: String,
    keep: bool,
    /// The scratch PostgreSQL schema: the server's database URL and the schema's name.
    schema: Option<(String, String)>,
}

/// What the spawned server needs from the bench.
pub(crate) struct Launch<'a> {
    /// The receiver's URL and the endpoint secret, when deliveries are measured.
    pub endpoint: Option<(&'a str, &'a str)>,
    pub concurrency: u32,
    /// A PostgreSQL URL to create a scratch schema in; SQLite in the data directory otherwise.
    pub postgres: Option<&'a str>,
    pub keep: bool,
}

/// CPU and memory figures of the server process, read from `/proc`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct Usage {
    /// User plus system CPU time, in milliseconds.
    pub cpu_ms: u64,
    /// Peak resident set size (`VmHWM`), in KiB.
    pub peak_rss_kib: u64,
}

impl Target {
    /// A running billhook; its sources (and secrets) come from `config`.
    pub(crate) fn remote(base_url: &str, config: Config) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            config,
            spawned: None,
        }
    }

    /// Starts `billhook serve` on a fresh data directory (and schema) and waits until it
    /// listens.
    pub(crate) async fn spawn(launch: Launch<'_>) -> Result<Self, CliError> {
        let stamp = billhook_core::time::Timestamp::now().unix_millis();
        let data_dir =
            std::env::temp_dir().join(format!("billhook-bench-{}-{stamp}", std::process::id()));
        crate::serve::create_private_dir(&data_dir)?;
        let mut text = starter_config();
        text.push_str(&format!(
            "\n[delivery]\nallow_private_destinations = [\"127.0.0.0/8\"]\nmax_in_flight = {}\n",
            launch.concurrency.max(16) * 4
        ));
        if let Some((url, secret)) = launch.endpoint {
            text.push_str(&format!(
                "\n[[endpoint]]\nname = \"bench\"\nurl = \"{url}\"\nevent_types = [\"*\"]\n\
                 max_concurrency = {}\nsecret = \"{secret}\"\n",
                launch.concurrency
            ));
        }
        let config_path = data_dir.join(billhook_server::config::CONFIG_FILE);
        // It holds every source's secret and the endpoint's.
        crate::serve::write_private(&config_path, &text)?;
        let config = Config::from_toml(&text)?;

        let schema = match launch.postgres {
            Some(url) => {
                let name = format!("billhook_bench_{stamp}");
                let scoped = billhook_store::create_scratch_schema(url, &name)
                    .await
                    .map_err(|e| CliError::Io(e.to_string()))?;
                Some((url.to_owned(), name, scoped))
            }
            None => None,
        };
        let admin_token = generate_secret();
        let mut command = Command::new(
            std::env::current_exe().map_err(|e| CliError::Io(format!("own executable: {e}")))?,
        );
        command
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("BILLHOOK_LISTEN", "127.0.0.1:0")
            .env("BILLHOOK_DATA_DIR", &data_dir)
            .env("BILLHOOK_ADMIN_TOKEN", &admin_token)
            // Room for every sender's connection, and the bench's own calls to the API.
            .env(
                "BILLHOOK_MAX_CONNECTIONS",
                (u64::from(launch.concurrency) + 64)
                    .min(1_000_000)
                    .to_string(),
            )
            .env("RUST_LOG", "warn")
            .env_remove("BILLHOOK_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((_, _, scoped)) = &schema {
            command.env("BILLHOOK_DATABASE_URL", scoped);
        }
        let mut child = command
            .spawn()
            .map_err(|e| CliError::Io(format!("cannot start billhook serve: {e}")))?;
        let spawned_schema = schema.map(|(url, name, _)| (url, name));
        let stderr = child.stderr.take();
        let spawned = Spawned {
            child,
            data_dir,
            admin_token,
            keep: launch.keep,
            schema: spawned_schema,
        };
        let address = tokio::task::spawn_blocking(move || listening_address(stderr))
            .await
            .map_err(|e| CliError::Io(e.to_string()))?;
        let base_url = match address {
            Ok(address) => address,
            Err(printed) => {
                spawned.stop().await;
                return Err(CliError::Io(format!(
                    "billhook serve exited before listening:\n{printed}"
                )));
            }
        };
        Ok(Self {
            base_url,
            config,
            spawned: Some(spawned),
        })
    }

    /// The spawned server's resource use so far; `None` for a remote one.
    pub(crate) fn usage(&self) -> Option<Usage> {
        let pid = self.spawned.as_ref()?.child.id();
        read_usage(pid)
    }

    /// A client for the spawned server's admin API; `None` for a remote one.
    pub(crate) fn admin_client(&self) -> Result<Option<crate::client::Client>, CliError> {
        let Some(spawned) = &self.spawned else {
            return Ok(None);
        };
        crate::client::Client::connect(&crate::Remote {
            url: Some(self.base_url.clone()),
            token: Some(spawned.admin_token.clone()),
            config: Some(spawned.data_dir.join(billhook_server::config::CONFIG_FILE)),
            json: false,
            timeout: crate::CLIENT_TIMEOUT_SECONDS,
        })
        .map(Some)
    }

    /// Where the spawned server keeps its data (kept after the run with `--keep`).
    pub(crate) fn data_dir(&self) -> Option<&std::path::Path> {
        self.spawned.as_ref().map(|s| s.data_dir.as_path())
    }

    /// Stops the spawned server and removes its data unless asked to keep it.
    pub(crate) async fn stop(self) {
        if let Some(spawned) = self.spawned {
            spawned.stop().await;
        }
    }
}

impl Spawned {
    async fn stop(mut self) {
        // SIGTERM for a graceful stop; SIGKILL if it takes too long.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.data_dir);
            if let Some((url, name)) = &self.schema
                && let Err(error) = billhook_store::drop_scratch_schema(url, name).await
            {
                tracing::warn!(%error, schema = name, "could not drop the bench schema");
            }
        }
    }
}

/// Reads the server's standard error until it says where it listens; what it printed instead
/// when it exits first. Keeps draining afterwards so the server never blocks on a full pipe.
fn listening_address(stderr: Option<std::process::ChildStderr>) -> Result<String, String> {
    let Some(stderr) = stderr else {
        return Err("no standard error".to_owned());
    };
    let mut lines = BufReader::new(stderr).lines();
    let mut printed = String::new();
    loop {
        let Some(Ok(line)) = lines.next() else {
            return Err(printed);
        };
        if let Some(rest) = line.strip_prefix("billhook: admin API and console at ") {
            let address = rest.trim_end_matches('/').to_owned();
            std::thread::spawn(move || for _ in lines {});
            return Ok(address);
        }
        printed.push_str(&line);
        printed.push('\n');
    }
}

/// CPU time and peak RSS of process `pid`, from `/proc` (Linux only).
fn read_usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Usage {
        cpu_ms: cpu_ms_of_stat(&stat)?,
        peak_rss_kib: peak_rss_of_status(&status)?,
    })
}

/// `utime + stime` of a `/proc/PID/stat` line, in milliseconds. The kernel reports them in
/// USER_HZ ticks, which Linux fixes at 100 per second for this interface on every architecture.
fn cpu_ms_of_stat(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces; fields are counted after its `)`.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 10)
}

fn peak_rss_of_status(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        let stat = "4242 (billhook serve) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 9 0 123456 100000000 5000";
        assert_eq!(cpu_ms_of_stat(stat), Some(3_250));
        assert_eq!(cpu_ms_of_stat("garbage"), None);
    }

    #[test]
    fn peak_rss_comes_from_vmhwm() {
        let status =
            "Name:\tbillhook\nVmPeak:\t  900000 kB\nVmHWM:\t   41236 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(peak_rss_of_status(status), Some(41_236));
    }

    #[test]
    fn this_process_has_usage() {
        let usage = read_usage(std::process::id()).unwrap();
        assert!(usage.peak_rss_kib > 0);
    }
}
