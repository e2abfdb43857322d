//! `billhook endpoints`: subscriber endpoints through the admin API.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use crate::output::{self, table, text};
use crate::{CliError, Remote, client, parse_since};

#[derive(Debug, Subcommand)]
pub(crate) enum EndpointsCommand {
    /// List endpoints with their health.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one endpoint with its delivery figures.
    Show {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Create an endpoint; prints its signing secret.
    Create {
        /// Where deliveries go (`https://…`).
        #[arg(value_name = "URL")]
        destination: String,
        #[command(flatten)]
        fields: Fields,
        #[command(flatten)]
        remote: Remote,
    },
    /// Change an endpoint: only the fields given change.
    Update {
        id: String,
        /// A new destination URL.
        #[arg(long = "endpoint-url", value_name = "URL")]
        destination: Option<String>,
        #[command(flatten)]
        fields: Fields,
        #[command(flatten)]
        remote: Remote,
    },
    /// Start delivering again; `--recover-since` also resends what failed, died or was held.
    Enable {
        id: String,
        /// An RFC 3339 time, or a duration back from now (`2h`).
        #[arg(long)]
        recover_since: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stop delivering; deliveries are held until it is enabled again.
    Disable {
        id: String,
        #[arg(long, default_value = "disabled from the CLI")]
        reason: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete an endpoint and cancel what it was still owed.
    Delete {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show the signing secret (and a rotated-out one still signing).
    Secret {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Rotate the signing secret; the previous one keeps signing for a while.
    RotateSecret {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// The latest deliveries, newest first: what the endpoint was sent, is owed or gave up on.
    Deliveries {
        id: String,
        /// Only these: pending, failed (retrying), delivered, dead, held or cancelled.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        remote: Remote,
    },
    /// The latest attempts, newest first.
    Attempts {
        id: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        remote: Remote,
    },
    /// Resend every failed, dead or held delivery since a time, and follow their progress.
    Recover {
        id: String,
        /// An RFC 3339 time, or a duration back from now (`2h`, `3d`).
        #[arg(long)]
        since: String,
        /// Return at once instead of following the deliveries until they are done.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Endpoint fields settable from the command line.
#[derive(Debug, Args)]
pub(crate) struct Fields {
    /// A canonical type or pattern (`invoice.*`, `*`); repeat for several.
    #[arg(long = "event-type")]
    event_types: Vec<String>,
    /// Only events from this source; repeat for several.
    #[arg(long = "source")]
    sources: Vec<String>,
    /// `canonical` or `raw`.
    #[arg(long)]
    format: Option<String>,
    /// `Name: value` sent with every delivery; repeat for several.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Requests per second at most.
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Concurrent requests at most.
    #[arg(long)]
    max_concurrency: Option<u32>,
    #[arg(long)]
    description: Option<String>,
}

impl Fields {
    fn body(self, url: Option<String>) -> Result<Value, CliError> {
        let mut body = Map::new();
        if let Some(url) = url {
            body.insert("url".into(), json!(url));
        }
        if !self.event_types.is_empty() {
            body.insert("event_types".into(), json!(self.event_types));
        }
        if !self.sources.is_empty() {
            body.insert("sources".into(), json!(self.sources));
        }
        if let Some(format) = self.format {
            body.insert("format".into(), json!(format));
        }
        if !self.headers.is_empty() {
            let mut headers = Map::new();
            for header in self.headers {
                let (name, value) = header.split_once(':').ok_or_else(|| {
                    CliError::Usage(format!("--header `{header}`: write it as `Name: value`"))
                })?;
                headers.insert(name.trim().to_owned(), json!(value.trim()));
            }
            body.insert("headers".into(), Value::Object(headers));
        }
        if let Some(rate) = self.rate_limit {
            body.insert("rate_limit".into(), json!(rate));
        }
        if let Some(max) = self.max_concurrency {
            body.insert("max_concurrency".into(), json!(max));
        }
        if let Some(description) = self.description {
            body.insert("description".into(), json!(description));
        }
        Ok(Value::Object(body))
    }
}

fn health(endpoint: &Value) -> String {
    if endpoint["enabled"] == Value::Bool(false) {
        return format!("disabled: {}", text(&endpoint["disabled_reason"]));
    }
    if endpoint["failing_since"].is_string() {
        return format!("failing since {}", text(&endpoint["failing_since"]));
    }
    "healthy".to_owned()
}

fn print(endpoint: &Value, json: bool) {
    if json {
        output::pretty(endpoint);
        return;
    }
    let mut lines = vec![
        format!("id           {}", text(&endpoint["id"])),
        format!("url          {}", text(&endpoint["url"])),
        format!("event types  {}", text(&endpoint["event_types"])),
        format!("format       {}", text(&endpoint["format"])),
        format!("health       {}", health(endpoint)),
    ];
    if let Some(secret) = endpoint["secret"].as_str() {
        lines.push(format!("secret       {secret}"));
    }
    if endpoint["last_error"].is_string() {
        lines.push(format!("last error   {}", text(&endpoint["last_error"])));
    }
    if let Some(stats) = endpoint["stats"].as_object() {
        lines.push(format!(
            "deliveries   {} pending, {} failed, {} delivered, {} dead, {} held",
            stats["pending"], stats["failed"], stats["delivered"], stats["dead"], stats["held"]
        ));
    }
    output::line(&lines.join("\n"));
}

pub(crate) async fn run(command: EndpointsCommand) -> Result<(), CliError> {
    match command {
        EndpointsCommand::List { remote } => {
            let client = client::Client::connect(&remote)?;
            // Every endpoint, page after page: a list that stopped at the first page would
            // hide the rest without a word.
            let mut endpoints = Vec::new();
            let mut query = vec![("limit", "500".to_owned())];
            loop {
                let mut page = client.get("/v1/endpoints", &query).await?;
                if let Some(data) = page["data"].as_array_mut() {
                    endpoints.append(data);
                }
                match page["next_cursor"].as_str() {
                    Some(cursor) => {
                        query = vec![("limit", "500".to_owned()), ("cursor", cursor.to_owned())]
                    }
                    None => break,
                }
            }
            if remote.json {
                output::pretty(&serde_json::json!({ "data": endpoints, "next_cursor": null }));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = endpoints
                .iter()
                .map(|e| {
                    vec![
                        text(&e["id"]),
                        text(&e["name"]),
                        text(&e["url"]),
                        e["event_types"]
                            .as_array()
                            .map(|t| t.iter().map(text).collect::<Vec<_>>().join(","))
                            .unwrap_or_default(),
                        health(e),
                    ]
                })
                .collect();
            table(&["ID", "NAME", "URL", "EVENT TYPES", "HEALTH"], &rows);
            Ok(())
        }
        EndpointsCommand::Show { id, remote } => {
            let client = client::Client::connect(&remote)?;
            print(
                &client
                    .get(&format!("/v1/endpoints/{}", client::segment(&id)), &[])
                    .await?,
                remote.json,
            );
            Ok(())
        }
        EndpointsCommand::Create {
            destination,
            fields,
            remote,
        } => {
            let client = client::Client::connect(&remote)?;
            let body = fields.body(Some(destination))?;
            if body.get("event_types").is_none() {
                return Err(CliError::Usage(
                    "create needs at least one --event-type".to_owned(),
                ));
            }
            print(&client.post("/v1/endpoints", &body).await?, remote.json);
            Ok(())
        }
        EndpointsCommand::Update {
            id,
            destination,
            fields,
            remote,
        } => {
            let client = client::Client::connect(&remote)?;
            let body = fields.body(destination)?;
            print(
                &client
                    .patch(&format!("/v1/endpoints/{}", client::segment(&id)), &body)
                    .await?,
                remote.json,
            );
            Ok(())
        }
        EndpointsCommand::Enable {
            id,
            recover_since,
            remote,
        } => {
            let client = client::Client::connect(&remote)?;
            let mut body = json!({ "enabled": true });
            // Enabling with a recovery takes as long as the backlog it resends.
            let client = match recover_since {
                Some(since) => {
                    body["recover_since"] = json!(parse_since(&since)?);
                    client.without_time_limit()
                }
                None => client,
            };
            print(
                &client
                    .patch(&format!("/v1/endpoints/{}", client::segment(&id)), &body)
                    .await?,
                remote.json,
            );
            Ok(())
        }
        EndpointsCommand::Disable { id, reason, remote } => {
            let client = client::Client::connect(&remote)?;
            let body = json!({ "enabled": false, "disabled_reason": reason });
            print(
                &client
                    .patch(&format!("/v1/endpoints/{}", client::segment(&id)), &body)
                    .await?,
                remote.json,
            );
            Ok(())
        }
        EndpointsCommand::Delete { id, remote } => {
            let client = client::Client::connect(&remote)?;
            client
                .delete(&format!("/v1/endpoints/{}", client::segment(&id)))
                .await?;
            if remote.json {
                output::pretty(&json!({ "id": id, "deleted": true }));
            } else {
                output::line(&format!("deleted {id}"));
            }
            Ok(())
        }
        EndpointsCommand::Secret { id, remote } => {
            let client = client::Client::connect(&remote)?;
            let secret = client
                .get(
                    &format!("/v1/endpoints/{}/secret", client::segment(&id)),
                    &[],
                )
                .await?;
            if remote.json {
                output::pretty(&secret);
            } else {
                output::line(&text(&secret["secret"]));
                // While a rotation overlaps, receivers must accept the one rotated out too.
                for previous in secret["previous"].as_array().into_iter().flatten() {
                    let until = match previous["expires_at"].as_str() {
                        Some(at) => format!("signs until {at}"),
                        None => "still signing".to_owned(),
                    };
                    output::line(&format!(
                        "{} (rotated out; {until})",
                        text(&previous["secret"])
                    ));
                }
            }
            Ok(())
        }
        EndpointsCommand::RotateSecret { id, remote } => {
            let client = client::Client::connect(&remote)?;
            let rotated = client
                .post(
                    &format!("/v1/endpoints/{}/secret/rotate", client::segment(&id)),
                    &json!({}),
                )
                .await?;
            if remote.json {
                output::pretty(&rotated);
            } else {
                output::line(&text(&rotated["secret"]));
            }
            Ok(())
        }
        EndpointsCommand::Attempts { id, limit, remote } => {
            let path = format!("/v1/endpoints/{}/attempts", client::segment(&id));
            let query = [("limit", limit.to_string())];
            let header = ["STARTED", "DELIVERY", "STATUS", "TOOK", "ERROR"];
            print_page(&remote, &path, &query, &header, |a| {
                vec![
                    text(&a["started_at"]),
                    text(&a["delivery_id"]),
                    text(&a["status_code"]),
                    format!("{} ms", text(&a["duration_ms"])),
                    text(&a["error_kind"]),
                ]
            })
            .await
        }
        EndpointsCommand::Deliveries {
            id,
            status,
            limit,
            remote,
        } => {
            let path = format!("/v1/endpoints/{}/deliveries", client::segment(&id));
            let mut query = vec![("limit", limit.to_string())];
            query.extend(status.map(|status| ("status", status)));
            let header = [
                "CREATED",
                "DELIVERY",
                "EVENT TYPE",
                "STATUS",
                "ATTEMPTS",
                "NEXT",
                "LAST ANSWER",
            ];
            print_page(&remote, &path, &query, &header, |d| {
                vec![
                    text(&d["created_at"]),
                    text(&d["id"]),
                    text(&d["event_type"]),
                    text(&d["status"]),
                    text(&d["attempt_count"]),
                    text(&d["next_attempt_at"]),
                    match d["last_status_code"].as_u64() {
                        Some(code) => format!("HTTP {code}"),
                        None => text(&d["last_error"]),
                    },
                ]
            })
            .await
        }
        EndpointsCommand::Recover {
            id,
            since,
            no_wait,
            remote,
        } => recover(&remote, &id, &since, !no_wait).await,
    }
}

/// Gets one page of a listing and prints it: as it came with `--json`, else as a table of
/// `header` with a row of each item.
async fn print_page(
    remote: &Remote,
    path: &str,
    query: &[(&str, String)],
    header: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> Result<(), CliError> {
    let page = client::Client::connect(remote)?.get(path, query).await?;
    if remote.json {
        output::pretty(&page);
    } else {
        let rows: Vec<Vec<String>> = page["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(row)
            .collect();
        table(header, &rows);
    }
    Ok(())
}

/// Resends an endpoint's failures since a time and, when `wait`, shows a progress bar until
/// none of them is pending any more.
pub(crate) async fn recover(
    remote: &Remote,
    id: &str,
    since: &str,
    wait: bool,
) -> Result<(), CliError> {
    let client = client::Client::connect(remote)?.without_time_limit();
    let since = parse_since(since)?;
    let path = format!("/v1/endpoints/{}", client::segment(id));
    let result = client
        .post(
            &format!("/v1/endpoints/{}/recover", client::segment(id)),
            &json!({ "since": since }),
        )
        .await?;
    let recovered = result["recovered"].as_u64().unwrap_or(0);
    if remote.json {
        output::pretty(&result);
    } else {
        output::line(&format!(
            "recovering {recovered} deliveries of {id} since {since}"
        ));
    }
    if !wait || recovered == 0 {
        return Ok(());
    }
    let Some(resent_before) = result["resent_before"].as_str().map(str::to_owned) else {
        return Err(CliError::Io(
            "the server does not say which deliveries it resent (it is older than this command), so there is nothing to wait on; pass --no-wait".to_owned(),
        ));
    };
    // Whether any delivery the recovery resent still waits: one made in its range (since
    // `since`, before the recovery) that is pending or failed (or held: the endpoint was
    // disabled meanwhile, which the next look reports). The endpoint's figures alone count
    // deliveries made since as well, and under live traffic they would end the wait early or
    // keep it going for ever; older deliveries it did not resend are not its to wait on.
    let deliveries = format!("{path}/deliveries");
    let still_waiting = || async {
        for status in ["pending", "failed", "held"] {
            let page = client
                .get(
                    &deliveries,
                    &[
                        ("status", status.to_owned()),
                        ("since", since.clone()),
                        ("cursor", resent_before.clone()),
                        ("limit", "1".to_owned()),
                    ],
                )
                .await?;
            if page["data"].as_array().is_some_and(|data| !data.is_empty()) {
                return Ok::<_, CliError>(true);
            }
        }
        Ok(false)
    };
    let finished = |endpoint: &Value| {
        let stats = &endpoint["stats"];
        stats["delivered"].as_u64().unwrap_or(0) + stats["dead"].as_u64().unwrap_or(0)
    };
    // Counted after the recovery, which turned the dead deliveries it resends back to pending:
    // counted before, they would stand for progress already made. The bar is an estimate
    // (deliveries of other messages finishing meanwhile count too); the wait is not.
    let start = finished(&client.get(&path, &[]).await?);
    let bar = indicatif::ProgressBar::new(recovered).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bar:30} {pos}/{len} delivered or given up  {elapsed}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    loop {
        let endpoint = client.get(&path, &[]).await?;
        bar.set_position(finished(&endpoint).saturating_sub(start).min(recovered));
        let waiting = endpoint["stats"]["pending"].as_u64().unwrap_or(0)
            + endpoint["stats"]["failed"].as_u64().unwrap_or(0);
        let held = endpoint["stats"]["held"].as_u64().unwrap_or(0);
        if endpoint["enabled"] == Value::Bool(false) && waiting + held > 0 {
            // Disabled again (a 410, or failing for days): what waits is held, not delivered.
            bar.abandon();
            return Err(CliError::Io(format!(
                "{id} was disabled while {} of its deliveries still waited; they are held until it is recovered again",
                waiting + held
            )));
        }
        if !still_waiting().await? {
            bar.set_position(recovered);
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bar.finish();
    Ok(())
}
