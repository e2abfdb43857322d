//! `billhook invoices|payments|bills|billers|disputes|documents`: the ledger from a running
//! billhook, as a table, JSON or a CSV export.

use billhook_core::money::{Amount, Currency};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::output::{self, table, text};
use crate::{CliError, Remote, client, push};

/// Which ledger listing a command reads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Invoices,
    Payments,
    Bills,
    Billers,
    Disputes,
    Documents,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Invoices => "/v1/invoices",
            Kind::Payments => "/v1/payments",
            Kind::Bills => "/v1/bills",
            Kind::Billers => "/v1/billers",
            Kind::Disputes => "/v1/disputes",
            Kind::Documents => "/v1/documents",
        }
    }
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct LedgerArgs {
    #[command(subcommand)]
    show: Option<ShowCommand>,
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, Subcommand)]
enum ShowCommand {
    /// Show one entry with its linked payments (or invoice) and status history. The id is
    /// billhook's, or a provider id or invoice number that names one entry.
    Show {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Args)]
struct FilterArgs {
    /// Invoices and bills: outstanding, overdue or paid; any listing: a status word.
    #[arg(long)]
    status: Option<String>,
    /// Payments: only succeeded payments that no invoice or bill claims.
    #[arg(long)]
    unmatched: bool,
    #[arg(long)]
    provider: Option<String>,
    #[arg(long)]
    source: Option<String>,
    /// A provider id or invoice number.
    #[arg(long)]
    reference: Option<String>,
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Continue after this cursor.
    #[arg(long)]
    cursor: Option<String>,
    /// Write every match as CSV (money in major units), for a spreadsheet.
    #[arg(long, conflicts_with_all = ["limit", "cursor"])]
    csv: bool,
}

pub(crate) async fn run(kind: Kind, args: LedgerArgs) -> Result<(), CliError> {
    if let Some(ShowCommand::Show { id, remote }) = args.show {
        let client = client::Client::connect(&remote)?;
        let detail = client
            .get(&format!("{}/{}", kind.path(), client::segment(&id)), &[])
            .await?;
        output::pretty(&detail);
        return Ok(());
    }
    let filter = args.filter;
    let client = client::Client::connect(&args.remote)?;
    let client = if filter.csv {
        client.without_time_limit()
    } else {
        client
    };
    let mut query = Vec::new();
    push(&mut query, "status", filter.status);
    if filter.unmatched {
        query.push(("unmatched", "true".to_owned()));
    }
    push(&mut query, "provider", filter.provider);
    push(&mut query, "source", filter.source);
    push(&mut query, "reference", filter.reference);
    if filter.csv {
        query.push(("format", "csv".to_owned()));
        let (csv, truncated) = client.export(kind.path(), &query).await?;
        output::write(&csv);
        // Written all the same (it is what the server sent), but never taken for the whole.
        return if truncated {
            Err(CliError::Io(
                "the export was cut short at the server's row limit; narrow it with --status, \
                 --provider, --source or --reference"
                    .to_owned(),
            ))
        } else {
            Ok(())
        };
    }
    query.push(("limit", filter.limit.to_string()));
    push(&mut query, "cursor", filter.cursor);
    let page = client.get(kind.path(), &query).await?;
    if args.remote.json {
        output::pretty(&page);
    } else {
        print_table(kind, &page);
    }
    Ok(())
}

/// An amount in major units with its currency (`1954.08 INR`), or `-`.
fn money(entry: &Value, field: &str) -> String {
    let currency = entry["currency"]
        .as_str()
        .and_then(|c| Currency::parse(c).ok());
    match (entry[field].as_i64(), currency) {
        (Some(minor), Some(currency)) => format!(
            "{} {}",
            Amount::from_minor(minor).format_major(currency),
            currency.as_str()
        ),
        _ => "-".to_owned(),
    }
}

fn print_table(kind: Kind, page: &Value) {
    let entries = page["data"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    match kind {
        Kind::Invoices | Kind::Bills => {
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        text(&e["id"]),
                        text(&e["provider"]),
                        text(&e["number"]),
                        text(&e["status"]),
                        money(e, "amount"),
                        money(e, "paid"),
                        money(e, "due"),
                        if e["overdue"] == Value::Bool(true) {
                            "overdue".to_owned()
                        } else {
                            text(&e["due_by"])
                        },
                    ]
                })
                .collect();
            table(
                &[
                    "ID", "PROVIDER", "NUMBER", "STATUS", "AMOUNT", "PAID", "DUE", "DUE BY",
                ],
                &rows,
            );
        }
        Kind::Payments => {
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    let linked = match (e["linked_to"].as_str(), e["link_rule"].as_str()) {
                        (Some(target), Some(rule)) => format!("{target} ({rule})"),
                        (Some(target), None) => target.to_owned(),
                        _ => "-".to_owned(),
                    };
                    vec![
                        text(&e["id"]),
                        text(&e["provider"]),
                        text(&e["provider_id"]),
                        text(&e["status"]),
                        money(e, "amount"),
                        text(&e["data"]["rail"]),
                        linked,
                    ]
                })
                .collect();
            table(
                &[
                    "ID",
                    "PROVIDER",
                    "PROVIDER ID",
                    "STATUS",
                    "AMOUNT",
                    "RAIL",
                    "LINKED TO",
                ],
                &rows,
            );
        }
        Kind::Billers | Kind::Disputes | Kind::Documents => {
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        text(&e["id"]),
                        text(&e["provider"]),
                        text(&e["provider_id"]),
                        text(&e["status"]),
                        text(&e["updated_at"]),
                    ]
                })
                .collect();
            table(
                &["ID", "PROVIDER", "PROVIDER ID", "STATUS", "UPDATED"],
                &rows,
            );
        }
    }
    output::next_page_hint(page);
}
