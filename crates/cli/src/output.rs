//! How the CLI prints: aligned tables for people, `--json` for scripts.

use std::io::Write;

use serde_json::Value;

/// Writes to standard output. A reader that went away (`billhook … | head`) ends the program
/// quietly, as for any Unix tool.
pub(crate) fn write(text: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        // A full disk or a failing device: an export cut short must not look like one done.
        eprintln!("billhook: cannot write to standard output: {error}");
        std::process::exit(1);
    }
}

/// [`write`] with a line break.
pub(crate) fn line(text: &str) {
    write(&format!("{text}\n"));
}

/// Prints rows under a header, each column as wide as its widest cell.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        line(padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
}

pub(crate) fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn pretty(value: &Value) {
    line(&serde_json::to_string_pretty(value).unwrap_or_default());
}

pub(crate) fn next_page_hint(page: &Value) {
    if let Some(cursor) = page["next_cursor"].as_str() {
        line(&format!("\nmore: --cursor {cursor}"));
    }
}

pub(crate) fn events(page: &Value, json: bool) {
    if json {
        return pretty(page);
    }
    let rows: Vec<Vec<String>> = page["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            vec![
                text(&e["id"]),
                text(&e["type"]),
                text(&e["source"]["name"]),
                format!(
                    "{}:{}",
                    text(&e["subject"]["kind"]),
                    text(&e["subject"]["id"])
                ),
                text(&e["occurred_at"]),
                e["warnings"].as_array().map_or(0, Vec::len).to_string(),
            ]
        })
        .collect();
    table(
        &["ID", "TYPE", "SOURCE", "SUBJECT", "OCCURRED", "WARNINGS"],
        &rows,
    );
    next_page_hint(page);
}

pub(crate) fn inbound(page: &Value, json: bool) {
    if json {
        return pretty(page);
    }
    let rows: Vec<Vec<String>> = page["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            vec![
                text(&i["id"]),
                text(&i["source"]),
                text(&i["status"]),
                text(&i["provider_event"]),
                text(&i["received_at"]),
                text(&i["error"]["code"]),
            ]
        })
        .collect();
    table(
        &["ID", "SOURCE", "STATUS", "EVENT", "RECEIVED", "ERROR"],
        &rows,
    );
    next_page_hint(page);
}

pub(crate) fn reprocessed(results: &[Value], json: bool) {
    if json {
        return pretty(&Value::Array(results.to_vec()));
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                text(&r["id"]),
                text(&r["outcome"]),
                r["events"].as_array().map_or(0, Vec::len).to_string(),
                text(&r["error"]["code"]),
            ]
        })
        .collect();
    table(&["ID", "OUTCOME", "EVENTS", "ERROR"], &rows);
}
