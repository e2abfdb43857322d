//! The console's page shell and the small pieces pages are built from. Status is always written
//! out in words (and a symbol), never shown by colour alone.

use std::fmt::Write as _;

use billhook_core::money::{Amount, Currency};
use billhook_core::time::Timestamp;
use maud::{DOCTYPE, Markup, html};

use super::Viewer;

/// The navigation: (path, label).
const NAV: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/events", "Events"),
    ("/endpoints", "Endpoints"),
    ("/sources", "Sources"),
    ("/quarantine", "Quarantine"),
    ("/invoices", "Invoices"),
    ("/bills", "Bills"),
    ("/payments", "Payments"),
    ("/records", "Records"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="color-scheme" content="light dark";
            title { (title) " · billhook" }
            link rel="stylesheet" href="/assets/console.css";
        }
    }
}

/// A page without navigation (login, errors).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { (body) }
        }
    }
}

/// A page with the navigation; `current` is the path of the section it belongs to.
pub fn page(viewer: &Viewer, title: &str, current: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "billhook" }
                    nav aria-label="Sections" {
                        ul {
                            @for (path, label) in NAV {
                                li {
                                    @if *path == current {
                                        a href=(path) aria-current="page" { (label) }
                                    } @else {
                                        a href=(path) { (label) }
                                    }
                                }
                            }
                        }
                    }
                    form.logout method="post" action="/logout" {
                        (csrf(viewer))
                        span.scope { "scope: " (viewer.access.scope.as_str()) }
                        button.link type="submit" { "Log out" }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

/// The hidden CSRF field every form carries.
pub fn csrf(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf); }
}

/// How a state reads: good, bad, waiting or neutral. The word and symbol carry the meaning;
/// the class only adds colour.
#[derive(Debug, Clone, Copy)]
pub enum Tone {
    Good,
    Bad,
    Waiting,
    Neutral,
}

pub fn badge(tone: Tone, text: &str) -> Markup {
    let (class, symbol) = match tone {
        Tone::Good => ("badge good", "✓"),
        Tone::Bad => ("badge bad", "✗"),
        Tone::Waiting => ("badge waiting", "…"),
        Tone::Neutral => ("badge", "•"),
    };
    html! { span class=(class) { span aria-hidden="true" { (symbol) " " } (text) } }
}

/// The tone of a delivery status.
pub fn delivery_tone(status: &str) -> Tone {
    match status {
        "delivered" => Tone::Good,
        "dead" | "cancelled" => Tone::Bad,
        "pending" | "failed" | "held" => Tone::Waiting,
        _ => Tone::Neutral,
    }
}

/// A time as text, machine-readable too.
pub fn time(at: Timestamp) -> Markup {
    let text = at.to_rfc3339();
    html! { time datetime=(text) { (short_time(&text)) } }
}

pub fn maybe_time(at: Option<Timestamp>) -> Markup {
    match at {
        Some(at) => time(at),
        None => html! { span.muted { "—" } },
    }
}

/// `2026-11-22T06:50:30.121Z` → `2026-11-22 06:50:30 UTC`.
fn short_time(rfc3339: &str) -> String {
    let trimmed = rfc3339
        .split('.')
        .next()
        .unwrap_or(rfc3339)
        .trim_end_matches('Z');
    format!("{} UTC", trimmed.replacen('T', " ", 1))
}

/// How long ago, in words (`3 min ago`).
pub fn ago(now: Timestamp, at: Timestamp) -> String {
    let seconds = now.since(at).as_secs();
    match seconds {
        0..=59 => format!("{seconds} s ago"),
        60..=3599 => format!("{} min ago", seconds / 60),
        3600..=172_799 => format!("{} h ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

/// An amount in major units with its currency.
pub fn money(amount: Option<Amount>, currency: Option<Currency>) -> Markup {
    match (amount, currency) {
        (Some(amount), Some(currency)) => html! {
            span.money { (amount.format_major(currency)) " " (currency.as_str()) }
        },
        _ => html! { span.muted { "—" } },
    }
}

/// Pretty JSON, escaped.
pub fn json_block(value: &serde_json::Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    html! { pre.code { code { (text) } } }
}

/// Text that may be long, escaped.
pub fn text_block(text: &str) -> Markup {
    html! { pre.code { code { (text) } } }
}

/// The most bytes a hex dump shows: four times as many characters on the page.
const HEX_DUMP_MAX: usize = 64 * 1024;

/// Bytes that are not UTF-8, as a hex dump (offset, sixteen bytes, their printable ASCII): a
/// text rendering would replace what it cannot decode, and those bytes are often the clue.
pub fn bytes_block(bytes: &[u8]) -> Markup {
    let shown = &bytes[..bytes.len().min(HEX_DUMP_MAX)];
    let mut dump = String::with_capacity(shown.len() * 5);
    for (line, chunk) in shown.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = chunk
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    char::from(b)
                } else {
                    '.'
                }
            })
            .collect();
        // Writing to a String cannot fail.
        let _ = writeln!(dump, "{:08x}  {:<47}  |{ascii}|", line * 16, hex.join(" "));
    }
    html! {
        p.muted { "Not UTF-8 text: shown byte for byte in hexadecimal"
            @if shown.len() < bytes.len() {
                " (the first " (shown.len()) " of " (bytes.len()) " bytes; `billhook inbound show` prints them all)"
            } "." }
        pre.code { code { (dump) } }
    }
}

/// A "next page" link keeping the other query parameters.
pub fn next_page(path: &str, params: &[(&str, Option<String>)], cursor: Option<&str>) -> Markup {
    let Some(cursor) = cursor else {
        return html! {};
    };
    let mut params = params.to_vec();
    params.push(("cursor", Some(cursor.to_owned())));
    html! { p.pager { a href=(href_with(path, &params)) rel="next" { "Older →" } } }
}

/// `path` with a query of the parameters that have a value, so a link keeps the filters in force.
pub fn href_with(path: &str, params: &[(&str, Option<String>)]) -> String {
    let query: Vec<String> = params
        .iter()
        .filter_map(|(name, value)| {
            value
                .as_deref()
                .filter(|v| !v.is_empty())
                .map(|v| format!("{name}={}", super::url_encode(v)))
        })
        .collect();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// A message shown once after an action.
pub fn notice(text: Option<&str>) -> Markup {
    match text {
        Some(text) if !text.is_empty() => html! { p.notice role="status" { (text) } },
        _ => html! {},
    }
}

/// Marks up nothing; used where a section has no rows.
pub fn empty(text: &str) -> Markup {
    html! { p.muted { (text) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_hex_dump_shows_its_start_and_says_where_the_rest_is() {
        let bytes: Vec<u8> = (0..HEX_DUMP_MAX + 10).map(|n| (n % 251) as u8).collect();
        let page = bytes_block(&bytes).into_string();
        assert!(
            page.contains(
                "(the first 65536 of 65546 bytes; `billhook inbound show` prints them all)"
            ),
            "{}",
            &page[..200]
        );
        assert_eq!(page.matches('\n').count(), HEX_DUMP_MAX / 16);
        assert!(page.contains("0000fff0  "), "the last line shown");
        assert!(!page.contains("00010000  "), "no line past the limit");
    }
}
