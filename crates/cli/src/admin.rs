//! `billhook token`, `billhook sources`, `billhook prune`, `billhook reprocess` and
//! `billhook completions`.

use clap::{CommandFactory, Subcommand};
use serde_json::{Value, json};

use crate::output::{self, table, text};
use crate::{Cli, CliError, Remote, client, push};

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create an admin token; it is printed once.
    Create {
        /// What it is for (`ci`, `grafana`).
        #[arg(long)]
        name: String,
        /// `read` (look, change nothing) or `admin` (everything).
        #[arg(long, default_value = "read")]
        scope: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List tokens (never the tokens themselves).
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke a token; its console sessions end too.
    Revoke {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

pub(crate) async fn token(command: TokenCommand) -> Result<(), CliError> {
    match command {
        TokenCommand::Create {
            name,
            scope,
            remote,
        } => {
            let client = client::Client::connect(&remote)?;
            let created = client
                .post("/v1/tokens", &json!({ "name": name, "scope": scope }))
                .await?;
            if remote.json {
                output::pretty(&created);
            } else {
                output::line(&format!(
                    "{} ({}, scope {}): {}\nThis is the only time the token is shown.",
                    text(&created["id"]),
                    text(&created["name"]),
                    text(&created["scope"]),
                    text(&created["token"])
                ));
            }
            Ok(())
        }
        TokenCommand::List { remote } => {
            let client = client::Client::connect(&remote)?;
            let list = client.get("/v1/tokens", &[]).await?;
            if remote.json {
                output::pretty(&list);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list["data"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    vec![
                        text(&t["id"]),
                        text(&t["name"]),
                        text(&t["scope"]),
                        format!("{}…", text(&t["hint"])),
                        text(&t["last_used_at"]),
                        if t["revoked_at"].is_string() {
                            format!("revoked {}", text(&t["revoked_at"]))
                        } else {
                            "live".to_owned()
                        },
                    ]
                })
                .collect();
            table(
                &["ID", "NAME", "SCOPE", "TOKEN", "LAST USED", "STATE"],
                &rows,
            );
            Ok(())
        }
        TokenCommand::Revoke { id, remote } => {
            let client = client::Client::connect(&remote)?;
            client
                .delete(&format!("/v1/tokens/{}", client::segment(&id)))
                .await?;
            if remote.json {
                output::pretty(&json!({ "id": id, "revoked": true }));
            } else {
                output::line(&format!("revoked {id}"));
            }
            Ok(())
        }
    }
}

pub(crate) async fn sources(remote: Remote) -> Result<(), CliError> {
    let client = client::Client::connect(&remote)?;
    let list = client.get("/v1/sources", &[]).await?;
    if remote.json {
        output::pretty(&list);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            vec![
                text(&s["name"]),
                text(&s["provider"]),
                text(&s["auth"]),
                text(&s["last_received_at"]),
                text(&s["received_24h"]),
                text(&s["quarantined"]),
                match s["last_verification_failure"]["code"].as_str() {
                    Some(code) => format!("{} (last: {code})", s["verification_failures"]),
                    None => text(&s["verification_failures"]),
                },
            ]
        })
        .collect();
    table(
        &[
            "SOURCE",
            "PROVIDER",
            "AUTH",
            "LAST EVENT",
            "24H",
            "QUARANTINED",
            "UNVERIFIED",
        ],
        &rows,
    );
    Ok(())
}

fn prune_line(counts: &Value) -> String {
    format!(
        "{} messages ({} bytes of raw bodies), {} events, {} deliveries, {} attempts",
        counts["inbound"],
        counts["payload_bytes"],
        counts["events"],
        counts["deliveries"],
        counts["attempts"]
    )
}

pub(crate) async fn prune(dry_run: bool, remote: Remote) -> Result<(), CliError> {
    let client = client::Client::connect(&remote)?.without_time_limit();
    if dry_run {
        let preview = client.get("/v1/retention", &[]).await?;
        if remote.json {
            output::pretty(&preview);
            return Ok(());
        }
        output::line(&format!(
            "retention keeps {}: messages received before {} go once nothing is owed to an endpoint.\nWould remove: {}",
            text(&preview["max_age"]),
            text(&preview["cutoff"]),
            prune_line(&preview["would_remove"])
        ));
        return Ok(());
    }
    let spinner = indicatif::ProgressBar::new_spinner().with_message("pruning");
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let result = client.post("/v1/retention/prune", &json!({})).await;
    spinner.finish_and_clear();
    let result = result?;
    if remote.json {
        output::pretty(&result);
    } else {
        output::line(&format!("removed {}", prune_line(&result["removed"])));
    }
    // A server that began stopping midway removed whole batches only; the rest is still there.
    if result["complete"] == json!(false) {
        return Err(CliError::Io(
            "billhook began stopping before it was done; run `billhook prune` again for the rest"
                .to_owned(),
        ));
    }
    Ok(())
}

/// Reprocesses the given requests, or every quarantined one (of a source), one by one with a
/// progress bar.
pub(crate) async fn reprocess(
    ids: Vec<String>,
    source: Option<String>,
    remote: Remote,
) -> Result<(), CliError> {
    if !ids.is_empty() && source.is_some() {
        return Err(CliError::Usage(
            "--source chooses among the quarantined requests; give it or ids, not both".to_owned(),
        ));
    }
    let client = client::Client::connect(&remote)?;
    let named = !ids.is_empty();
    let ids = if ids.is_empty() {
        let mut all = Vec::new();
        let mut cursor = None;
        loop {
            let mut query = vec![
                ("status", "quarantined".to_owned()),
                ("limit", "500".to_owned()),
            ];
            push(&mut query, "source", source.clone());
            push(&mut query, "cursor", cursor.take());
            let page = client.get("/v1/inbound", &query).await?;
            all.extend(
                page["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["id"].as_str().map(str::to_owned)),
            );
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        all
    } else {
        ids
    };
    let bar = indicatif::ProgressBar::new(ids.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} reprocessed  {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut results = Vec::with_capacity(ids.len());
    let mut failure = None;
    for (index, id) in ids.iter().enumerate() {
        // One request that cannot be reprocessed (its source is gone, it does not exist) must
        // not stop the rest.
        results.push(
            match client
                .post(
                    &format!("/v1/inbound/{}/reprocess", client::segment(id)),
                    &json!({}),
                )
                .await
            {
                Ok(result) => result,
                Err(CliError::Api {
                    status: 400 | 404,
                    code,
                    message,
                }) => json!({
                    "id": id,
                    "outcome": "skipped",
                    "events": [],
                    "error": { "code": code, "message": message },
                }),
                // The server or the way to it failed: what was done so far is still shown,
                // and what was not, so the rest can be asked for again.
                Err(error) => {
                    results.push(json!({
                        "id": id,
                        "outcome": "failed",
                        "events": [],
                        "error": { "code": "request_failed", "message": error.to_string() },
                    }));
                    results.extend(
                        ids[index + 1..].iter().map(
                            |id| json!({ "id": id, "outcome": "not_attempted", "events": [] }),
                        ),
                    );
                    failure = Some(error);
                    break;
                }
            },
        );
        bar.inc(1);
    }
    bar.finish_and_clear();
    output::reprocessed(&results, remote.json);
    if let Some(error) = failure {
        return Err(error);
    }
    // Requests named one by one that could not be reprocessed fail the command: a mistyped id,
    // or one today's code still refuses, is not success. One already processed (a second run
    // of the same command) is. In a bulk run failures are expected and reported above.
    let count = |outcome: &str| results.iter().filter(|r| r["outcome"] == outcome).count();
    let (skipped, still_quarantined) = (count("skipped"), count("quarantined"));
    if named && skipped + still_quarantined > 0 {
        return Err(CliError::Usage(format!(
            "{} of the named requests could not be reprocessed ({skipped} skipped, \
             {still_quarantined} still quarantined)",
            skipped + still_quarantined
        )));
    }
    Ok(())
}

/// Writes a completion script for `shell` to standard output.
pub(crate) fn completions(shell: clap_complete::Shell) {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "billhook", &mut script);
    output::write(&String::from_utf8_lossy(&script));
}
