//! The console's pages. Reads go to the store; actions call the admin API's own handlers, so
//! the console can do nothing the API would not, with the same checks and the same logs.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Redirect, Response};
use billhook_core::entity::EntityData;
use billhook_core::entity::SubjectKind;
use billhook_core::event::EventType;
use billhook_core::ids::{EndpointId, EventId, InboundId};
use billhook_core::ledger::{self, Entity};
use billhook_core::time::Timestamp;
use billhook_store::{
    EventQuery, InboundQuery, InboundStatus, LedgerFilter, LedgerQuery, is_outstanding,
};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::layout::{
    Tone, ago, badge, bytes_block, csrf, delivery_tone, empty, href_with, json_block, maybe_time,
    money, next_page, notice, text_block, time,
};
use super::{
    ConsoleError, CsrfForm, PageForm, PagePath, PageQuery, Viewer, charts, page, url_encode,
};
use crate::App;
use crate::api::endpoints::url_for_reader;
use crate::api::{
    ApiJson, ApiPath, endpoints as endpoints_api, events as events_api, inbound as inbound_api,
};
use crate::error::ApiError;

type PageResult = Result<Response, ConsoleError>;

fn render(markup: Markup) -> PageResult {
    Ok(Html(markup.into_string()).into_response())
}

/// A notice shown after an action: a fixed message per action, never text from the URL.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Done {
    done: Option<String>,
    n: Option<u64>,
    /// Of how many, where `n` counts those of a batch that succeeded.
    of: Option<u64>,
}

impl Done {
    fn message(&self) -> Option<String> {
        let n = self.n.unwrap_or(0);
        Some(match self.done.as_deref()? {
            "redelivered" => format!("Redelivering to {n} endpoint(s). New attempts appear below."),
            "enabled" => "The endpoint is enabled.".to_owned(),
            "disabled" => "The endpoint is disabled; its deliveries are held.".to_owned(),
            "rotated" => "A new signing secret is in use, and the previous one keeps signing for \
                 delivery.secret_overlap: give the receiver the new one before then \
                 (`billhook endpoints secret <id>` prints it)."
                .to_owned(),
            "recovered" => format!("Resending {n} deliveries."),
            "reprocessed" => format!(
                "Reprocessed {} request(s): {n} left quarantine.",
                self.of.unwrap_or(n)
            ),
            _ => return None,
        })
    }
}

fn redirect_done(path: &str, done: &str, n: Option<u64>) -> PageResult {
    let count = n.map(|n| format!("&n={n}")).unwrap_or_default();
    Ok(Redirect::to(&format!("{path}?done={done}{count}")).into_response())
}

// ---------------------------------------------------------------------------------------------
// Overview

pub(crate) async fn overview(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
) -> PageResult {
    let now = Timestamp::now();
    let now_minute = now.unix_millis().div_euclid(60_000);
    let activity = app.store.activity(now_minute - 24 * 60).await?;
    let hour = charts::Series::bucket(&activity, now_minute, 1, 60);
    let day = charts::Series::bucket(&activity, now_minute, 60, 24);
    let overview = app.store.overview().await?;
    let failing: Vec<_> = app
        .store
        .all_endpoints()
        .await?
        .into_iter()
        .filter(|e| !e.enabled || e.failing_since.is_some())
        .collect();
    let last_hour = hour.total();
    let body = html! {
        h1 { "Overview" }
        section.cards aria-label="Now" {
            div.card {
                h2 { "Last hour" }
                p.figure { (last_hour.ingested) }
                p { "messages stored · " (last_hour.duplicates) " duplicates · "
                    (last_hour.unverified) " refused unverified" }
            }
            div.card {
                h2 { "Delivery success" }
                p.figure { (charts::percent(last_hour.delivered, last_hour.delivered + last_hour.failed)) }
                p { (last_hour.delivered) " delivered · " (last_hour.failed) " failed attempts in the last hour" }
            }
            div.card {
                h2 { "Pending deliveries" }
                p.figure { (overview.pending_deliveries) }
                p { "oldest: "
                    @match overview.oldest_pending {
                        Some(at) => { (ago(now, at)) }
                        None => { "none waiting" }
                    }
                }
            }
            div.card {
                h2 { a href="/quarantine" { "Quarantine" } }
                p.figure { (overview.quarantined) }
                p { "verified requests billhook could not read" }
            }
            div.card {
                h2 { a href="/endpoints" { "Endpoints" } }
                p.figure { (overview.failing_endpoints + overview.disabled_endpoints) }
                p { (overview.failing_endpoints) " failing · " (overview.disabled_endpoints) " disabled" }
            }
        }
        section aria-labelledby="hour" {
            h2 #hour { "The last hour, per minute" }
            (charts::ingest(&hour, "hour-ingest", "Ingested"))
            (charts::deliveries(&hour, "hour-deliveries", "Deliveries"))
        }
        section aria-labelledby="day" {
            h2 #day { "The last day, per hour" }
            (charts::ingest(&day, "day-ingest", "Ingested"))
            (charts::deliveries(&day, "day-deliveries", "Deliveries"))
        }
        section aria-labelledby="failing" {
            h2 #failing { "Endpoints that need attention" }
            @if failing.is_empty() {
                (empty("Every endpoint is enabled and its last attempt succeeded."))
            } @else {
                div.scroll { table {
                    thead { tr { th { "Endpoint" } th { "State" } th { "Since" } th { "Last error" } } }
                    tbody {
                        @for endpoint in &failing {
                            tr {
                                td { a href=(format!("/endpoints/{}", endpoint.id)) { (endpoint_label(endpoint, &viewer)) } }
                                td { @if endpoint.enabled { (badge(Tone::Bad, "failing")) } @else { (badge(Tone::Bad, "disabled")) } }
                                td { (maybe_time(endpoint.failing_since.or(Some(endpoint.updated_at)))) }
                                td.wrap { (endpoint.last_error.as_deref().or(endpoint.disabled_reason.as_deref()).unwrap_or("—")) }
                            }
                        }
                    }
                } }
            }
        }
    };
    render(page(&viewer, "Overview", "/", body))
}

/// An endpoint's name, or its URL as `viewer` may see it.
fn endpoint_label(endpoint: &billhook_store::EndpointRecord, viewer: &Viewer) -> String {
    endpoint
        .name
        .clone()
        .unwrap_or_else(|| endpoint_url(endpoint, viewer))
}

/// The URL in full for those who may change endpoints; a reader sees its origin only (see
/// [`url_for_reader`]).
fn endpoint_url(endpoint: &billhook_store::EndpointRecord, viewer: &Viewer) -> String {
    if viewer.can_change() {
        endpoint.url.clone()
    } else {
        url_for_reader(&endpoint.url)
    }
}

// ---------------------------------------------------------------------------------------------
// Events

#[derive(Debug, Default, Deserialize)]
pub(crate) struct EventFilters {
    #[serde(rename = "type")]
    event_type: Option<String>,
    source: Option<String>,
    subject: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
}

/// A `datetime-local` value (`2026-11-22T06:50`, taken as UTC) or an RFC 3339 time.
fn form_time(name: &str, value: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    // A `datetime-local` value has no offset (`…T06:50`, `…T06:50:07`, `…T06:50:07.250`); the
    // date before the time is always ten characters, whatever separates the two.
    let time_of_day = value.get(11..).unwrap_or_default();
    let full = if time_of_day.contains(['Z', 'z', '+', '-']) {
        value.to_owned()
    } else if time_of_day.len() == 5 {
        format!("{value}:00Z")
    } else {
        format!("{value}Z")
    };
    Timestamp::parse_rfc3339(&full)
        .map(Some)
        .map_err(|_| ApiError::invalid(format!("{name}: `{value}` is not a time")))
}

/// A time as a `datetime-local` input shows it (UTC, to the minute, or as finely as it has
/// seconds and milliseconds): an RFC 3339 value from a link, put back as given, would be invalid
/// there and the browser would show the field empty, dropping the bound at the next "Filter".
fn datetime_local(at: Timestamp) -> String {
    let text = at.to_rfc3339();
    let to_second = text.get(..19).unwrap_or_default();
    let millis = at.unix_millis().rem_euclid(1000);
    if millis != 0 {
        format!("{to_second}.{millis:03}")
    } else {
        to_second
            .strip_suffix(":00")
            .unwrap_or(to_second)
            .to_owned()
    }
}

fn blank(value: &Option<String>) -> Option<String> {
    value.clone().filter(|v| !v.trim().is_empty())
}

/// A page's cursor parameter: absent when blank, refused as the API refuses it when it is not
/// an id of the listing.
fn page_cursor<T: std::str::FromStr>(value: &Option<String>) -> Result<Option<T>, ApiError> {
    crate::api::parse_cursor(blank(value).as_deref())
}

pub(crate) async fn events(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    PageQuery(filters): PageQuery<EventFilters>,
) -> PageResult {
    let event_type = blank(&filters.event_type);
    if let Some(t) = &event_type {
        t.parse::<EventType>()
            .map_err(|e| ApiError::invalid(e.to_string()))?;
    }
    let since = form_time("since", filters.since.as_deref())?;
    let until = form_time("until", filters.until.as_deref())?;
    let cursor: Option<EventId> = page_cursor(&filters.cursor)?;
    let before = match (cursor, until.map(EventId::lower_bound)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let result = app
        .store
        .events(EventQuery {
            event_type: event_type.clone(),
            source: blank(&filters.source),
            subject: blank(&filters.subject),
            before,
            after: since.map(EventId::lower_bound),
            limit: 50,
        })
        .await?;
    let mut sources: Vec<&String> = app.settings.sources.keys().collect();
    sources.sort();
    let body = html! {
        h1 { "Events" }
        form.filters method="get" action="/events" {
            label { "Type"
                select name="type" {
                    option value="" { "any" }
                    @for t in EventType::ALL {
                        option value=(t.as_str()) selected[event_type.as_deref() == Some(t.as_str())] { (t.as_str()) }
                    }
                }
            }
            label { "Source"
                select name="source" {
                    option value="" { "any" }
                    @for s in &sources {
                        option value=(s) selected[filters.source.as_deref() == Some(s.as_str())] { (s) }
                    }
                    // Events outlive a source removed from the configuration.
                    @if let Some(removed) = blank(&filters.source).filter(|s| !app.settings.sources.contains_key(s)) {
                        option value=(removed) selected { (removed) }
                    }
                }
            }
            label { "Provider id" input type="text" name="subject" value=[filters.subject.as_deref()] placeholder="inv_…, pay_…"; }
            label { "Since (UTC)" input type="datetime-local" name="since" step="any" value=[since.map(datetime_local)]; }
            label { "Until (UTC)" input type="datetime-local" name="until" step="any" value=[until.map(datetime_local)]; }
            button type="submit" { "Filter" }
        }
        @if result.items.is_empty() {
            (empty("No events match."))
        } @else {
            div.scroll { table {
                thead { tr { th { "Received" } th { "Type" } th { "Source" } th { "Subject" } th { "Event" } } }
                tbody {
                    @for event in &result.items {
                        tr {
                            td { (time(event.received_at)) }
                            td { code { (event.event_type) } }
                            td { (event.source) }
                            td { (event.subject_kind) " " code { (event.subject_id) } }
                            td { a href=(format!("/events/{}", event.id)) { (event.id.to_string()) } }
                        }
                    }
                }
            } }
        }
        (next_page("/events", &[
            ("type", filters.event_type.clone()),
            ("source", filters.source.clone()),
            ("subject", filters.subject.clone()),
            ("since", filters.since.clone()),
            ("until", filters.until.clone()),
        ], result.next_cursor.as_deref()))
    };
    render(page(&viewer, "Events", "/events", body))
}

pub(crate) async fn event(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    PagePath(id): PagePath<String>,
    PageQuery(done): PageQuery<Done>,
) -> PageResult {
    let id: EventId = id.parse().map_err(|_| ConsoleError::not_found("event"))?;
    let event = app
        .store
        .event(id)
        .await?
        .ok_or_else(|| ConsoleError::not_found("event"))?;
    let inbound = app.store.inbound(event.inbound_id).await?;
    let deliveries = app.store.deliveries_of_event(id, event.inbound_id).await?;
    let canonical: Value = serde_json::from_slice(&event.payload).unwrap_or(Value::Null);
    let mut endpoint_names = std::collections::HashMap::new();
    for (delivery, _) in &deliveries {
        if let Some(endpoint) = app.store.endpoint(delivery.endpoint_id).await? {
            endpoint_names.insert(delivery.endpoint_id, endpoint_label(&endpoint, &viewer));
        }
    }
    // Only an attempt under way or due within half a minute is worth watching for: a retry
    // hours away (the schedule reaches 10 h) would reload the page every two seconds until then.
    let soon = Timestamp::now().add(Duration::from_secs(30));
    let waiting = deliveries.iter().any(|(d, _)| {
        matches!(d.status.as_str(), "pending" | "failed") && d.next_attempt_at <= soon
    });
    let warnings = canonical["warnings"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let body = html! {
        @if waiting {
            // Refreshes while deliveries are under way, so new attempts appear by themselves;
            // to the page itself, so an action's notice is not announced again at each reload.
            meta http-equiv="refresh" content=(format!("2; url=/events/{id}"));
        }
        p.crumbs { a href="/events" { "Events" } " / " (id.to_string()) }
        h1 { code { (event.event_type) } }
        (notice(done.message().as_deref()))
        dl.facts {
            dt { "Event" } dd { code { (id.to_string()) } }
            dt { "Subject" } dd { (event.subject_kind) " " code { (event.subject_id) } }
            dt { "Source" } dd { (event.source) }
            dt { "Occurred" } dd { (time(event.occurred_at)) }
            dt { "Received" } dd { (time(event.received_at)) }
        }
        section aria-labelledby="deliveries" {
            h2 #deliveries { "Deliveries" }
            @if viewer.can_change() {
                form method="post" action=(format!("/events/{id}/redeliver")) {
                    (csrf(&viewer))
                    button type="submit" { "Redeliver" }
                    " to every endpoint that had it"
                }
            }
            @if deliveries.is_empty() {
                (empty("No endpoint is subscribed to this event."))
            }
            @for (delivery, attempts) in &deliveries {
                article.delivery {
                    h3 {
                        a href=(format!("/endpoints/{}", delivery.endpoint_id)) {
                            (endpoint_names.get(&delivery.endpoint_id).cloned().unwrap_or_else(|| delivery.endpoint_id.to_string()))
                        }
                        " " (badge(delivery_tone(delivery.status.as_str()), delivery.status.as_str()))
                    }
                    p.muted { (delivery.attempts) " attempt(s)"
                        @if matches!(delivery.status.as_str(), "pending" | "failed") {
                            " · next " (time(delivery.next_attempt_at))
                        }
                    }
                    @if attempts.is_empty() {
                        (empty("No attempt yet."))
                    } @else {
                        ol.timeline {
                            @for attempt in attempts {
                                li {
                                    @let ok = attempt.status_code.is_some_and(|c| (200..300).contains(&c));
                                    (time(attempt.started_at)) " · attempt " (attempt.number) " · "
                                    (badge(if ok { Tone::Good } else { Tone::Bad },
                                        &attempt.status_code.map_or_else(|| attempt.error_kind.clone().unwrap_or_else(|| "error".to_owned()), |c| format!("HTTP {c}"))))
                                    " · " (attempt.duration_ms) " ms"
                                    @if let Some(message) = &attempt.error_message {
                                        " · " span.wrap { (message) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="canonical" {
            h2 #canonical { "Canonical event" }
            @if !warnings.is_empty() {
                h3 { "Warnings" }
                ul.warnings {
                    @for warning in &warnings {
                        li { code { (warning["code"].as_str().unwrap_or_default()) } " at "
                            code { (warning["path"].as_str().unwrap_or_default()) } ": "
                            (warning["message"].as_str().unwrap_or_default()) }
                    }
                }
            }
            (json_block(&canonical))
        }
        section aria-labelledby="raw" {
            h2 #raw { "The provider's request" }
            @match &inbound {
                Some(inbound) => { (inbound_details(inbound)) }
                None => { (empty("The stored request has been removed by retention.")) }
            }
        }
    };
    render(page(&viewer, event.event_type.as_str(), "/events", body))
}

fn inbound_details(inbound: &billhook_store::InboundRecord) -> Markup {
    html! {
        dl.facts {
            dt { "Request" } dd { a href=(format!("/inbound/{}", inbound.id)) { code { (inbound.id.to_string()) } } }
            dt { "Received" } dd { (time(inbound.received_at)) }
            dt { "Provider event" } dd { (inbound.provider_event.as_deref().unwrap_or("—"))
                @if let Some(id) = &inbound.provider_event_id { " · " code { (id) } } }
            dt { "Verification" } dd { (badge(Tone::Good, "verified")) " " (inbound.verification) }
            dt { "Status" } dd { (inbound.status.as_str()) }
            @if let Some(error) = &inbound.error {
                dt { "Error" } dd { (badge(Tone::Bad, &error.code)) " " (error.message) }
            }
            dt { "From" } dd { (inbound.remote_addr.as_deref().unwrap_or("—")) }
        }
        h3 { "Headers" }
        div.scroll { table {
            tbody { @for (name, value) in &inbound.headers { tr { th scope="row" { code { (name) } } td.wrap { code { (value) } } } } }
        } }
        h3 { "Body" }
        @match &inbound.body {
            Some(body) => {
                // Pretty only when that shows the same numbers, and never for a request kept
                // for what went wrong with it: that is shown as the provider sent it (parsed,
                // a repeated key would show once, and the cause would be gone).
                @match serde_json::from_slice::<Value>(body) {
                    Ok(value) if inbound.status != InboundStatus::Quarantined
                        && numbers_are_exact(&value) => { (json_block(&value)) }
                    _ => @match std::str::from_utf8(body) {
                        Ok(text) => { (text_block(text)) }
                        Err(_) => { (bytes_block(body)) }
                    }
                }
            }
            None => { (empty("The body has been removed by retention.")) }
        }
    }
}

pub(crate) async fn redeliver(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    PagePath(id): PagePath<String>,
    PageForm(form): PageForm<CsrfForm>,
) -> PageResult {
    viewer.check_form(&form.csrf)?;
    let (_, axum::Json(result)) = events_api::redeliver(
        State(Arc::clone(&app)),
        ApiPath(id.clone()),
        bytes::Bytes::new(),
    )
    .await?;
    let count = serde_json::to_value(&result)
        .ok()
        .and_then(|v| v["deliveries"].as_array().map(|d| d.len() as u64));
    redirect_done(&format!("/events/{id}"), "redelivered", count)
}

// ---------------------------------------------------------------------------------------------
// Endpoints

pub(crate) async fn endpoints(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
) -> PageResult {
    let now = Timestamp::now();
    let endpoints = app.store.all_endpoints().await?;
    let mut rows = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let stats = app.store.endpoint_stats(endpoint.id, now).await?;
        rows.push((endpoint, stats));
    }
    let body = html! {
        h1 { "Endpoints" }
        @if rows.is_empty() {
            (empty("No endpoints yet: create one with POST /v1/endpoints, `billhook endpoints create` or an [[endpoint]] in the configuration."))
        } @else {
            div.scroll { table {
                thead { tr { th { "Endpoint" } th { "Health" } th { "Success (24 h)" } th { "Waiting" } th { "Last error" } } }
                tbody {
                    @for (endpoint, stats) in &rows {
                        tr {
                            td { a href=(format!("/endpoints/{}", endpoint.id)) { (endpoint_label(endpoint, &viewer)) }
                                br; span.muted { (endpoint.event_types.join(", ")) } }
                            td { (health(endpoint)) }
                            td { (charts::percent(stats.successes_24h, stats.attempts_24h)) " of " (stats.attempts_24h) }
                            td { (stats.pending + stats.failed) @if stats.held > 0 { " · " (stats.held) " held" } }
                            td.wrap { @if endpoint.failing_since.is_some() || !endpoint.enabled {
                                (endpoint.last_error.as_deref().unwrap_or("—"))
                            } @else { span.muted { "—" } } }
                        }
                    }
                }
            } }
        }
    };
    render(page(&viewer, "Endpoints", "/endpoints", body))
}

fn health(endpoint: &billhook_store::EndpointRecord) -> Markup {
    if !endpoint.enabled {
        badge(Tone::Bad, "disabled")
    } else if endpoint.failing_since.is_some() {
        badge(Tone::Bad, "failing")
    } else {
        badge(Tone::Good, "healthy")
    }
}

pub(crate) async fn endpoint(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    PagePath(id): PagePath<String>,
    PageQuery(done): PageQuery<Done>,
) -> PageResult {
    let endpoint_id: EndpointId = id
        .parse()
        .map_err(|_| ConsoleError::not_found("endpoint"))?;
    let endpoint = app
        .store
        .endpoint(endpoint_id)
        .await?
        .ok_or_else(|| ConsoleError::not_found("endpoint"))?;
    let now = Timestamp::now();
    let stats = app.store.endpoint_stats(endpoint_id, now).await?;
    let attempts = app
        .store
        .attempts_of_endpoint(endpoint_id, None, 25)
        .await?;
    // To the minute, as the input steps by default.
    let day_ago = now.sub(Duration::from_secs(86_400)).unix_millis();
    let day_ago = datetime_local(Timestamp::from_unix_millis(
        day_ago - day_ago.rem_euclid(60_000),
    ));
    let declaration = app.declaration(endpoint.name.as_deref());
    let body = html! {
        p.crumbs { a href="/endpoints" { "Endpoints" } " / " (endpoint_label(&endpoint, &viewer)) }
        h1 { (endpoint_label(&endpoint, &viewer)) " " (health(&endpoint)) }
        (notice(done.message().as_deref()))
        dl.facts {
            dt { "Id" } dd { code { (endpoint.id.to_string()) } }
            @if let Some(declared) = &declaration {
                dt { "Declared" } dd { "in the configuration file as " code { (declared.name) } ", which sets it back at every start" }
            }
            dt { "URL" } dd.wrap { code { (endpoint_url(&endpoint, &viewer)) } }
            dt { "Events" } dd { (endpoint.event_types.join(", ")) }
            dt { "Sources" } dd { (endpoint.sources.as_ref().map_or("all".to_owned(), |s| s.join(", "))) }
            dt { "Format" } dd { (endpoint.format) }
            dt { "Limits" } dd {
                (endpoint.rate_limit.map_or("no rate limit".to_owned(), |r| format!("{r} requests/s")))
                " · " (endpoint.max_concurrency.map_or("default concurrency".to_owned(), |c| format!("{c} at once")))
            }
            @if let Some(reason) = &endpoint.disabled_reason { dt { "Disabled because" } dd { (reason) } }
            dt { "Failing since" } dd { (maybe_time(endpoint.failing_since)) }
            dt { "Last success" } dd { (maybe_time(endpoint.last_success_at)) }
            dt { "Last error" } dd.wrap { (endpoint.last_error.as_deref().unwrap_or("—")) }
            dt { "Last 24 h" } dd { (stats.successes_24h) " of " (stats.attempts_24h) " attempts succeeded ("
                (charts::percent(stats.successes_24h, stats.attempts_24h)) ")" }
            dt { "Deliveries" } dd { (stats.pending) " pending · " (stats.failed) " retrying · " (stats.delivered)
                " delivered · " (stats.dead) " dead · " (stats.held) " held" }
        }
        @if viewer.can_change() {
            section.actions aria-labelledby="actions" {
                h2 #actions { "Actions" }
                @if endpoint.enabled {
                    form method="post" action=(format!("/endpoints/{}/disable", endpoint.id)) {
                        (csrf(&viewer))
                        label { "Reason" input type="text" name="reason" value="disabled from the console"; }
                        button type="submit" { "Disable" }
                    }
                    form method="post" action=(format!("/endpoints/{}/recover", endpoint.id)) {
                        (csrf(&viewer))
                        label { "Resend failures since (UTC)" input type="datetime-local" name="since" step="any" value=(day_ago) required; }
                        button type="submit" { "Recover" }
                    }
                } @else {
                    form method="post" action=(format!("/endpoints/{}/enable", endpoint.id)) {
                        (csrf(&viewer))
                        label { "Also resend what failed since (UTC, optional)" input type="datetime-local" name="recover_since" step="any"; }
                        button type="submit" { "Enable" }
                    }
                }
                @if declaration.is_some_and(|declared| declared.secret.is_some()) {
                    p { "The configuration file sets the signing secret: a new one there rotates it at the next start." }
                } @else {
                    form method="post" action=(format!("/endpoints/{}/rotate", endpoint.id)) {
                        (csrf(&viewer))
                        button type="submit" { "Rotate the signing secret" }
                    }
                }
            }
        }
        section aria-labelledby="attempts" {
            h2 #attempts { "Latest attempts" }
            @if attempts.items.is_empty() {
                (empty("No attempts yet."))
            } @else {
                div.scroll { table {
                    thead { tr { th { "Started" } th { "Result" } th { "Took" } th { "Delivery" } th { "Response" } } }
                    tbody {
                        @for attempt in &attempts.items {
                            @let ok = attempt.status_code.is_some_and(|c| (200..300).contains(&c));
                            tr {
                                td { (time(attempt.started_at)) }
                                td { (badge(if ok { Tone::Good } else { Tone::Bad },
                                    &attempt.status_code.map_or_else(|| attempt.error_kind.clone().unwrap_or_else(|| "error".to_owned()), |c| format!("HTTP {c}")))) }
                                td { (attempt.duration_ms) " ms" }
                                td { code { (attempt.delivery_id.to_string()) } }
                                td.wrap { (attempt.error_message.clone().or_else(|| attempt.response_body.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())).unwrap_or_default()) }
                            }
                        }
                    }
                } }
            }
        }
    };
    render(page(
        &viewer,
        &endpoint_label(&endpoint, &viewer),
        "/endpoints",
        body,
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct DisableForm {
    /// Missing reads as empty, so it is refused as `csrf_rejected` like a wrong one.
    #[serde(default)]
    csrf: String,
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct EnableForm {
    /// Missing reads as empty, so it is refused as `csrf_rejected` like a wrong one.
    #[serde(default)]
    csrf: String,
    recover_since: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RecoverForm {
    /// Missing reads as empty, so it is refused as `csrf_rejected` like a wrong one.
    #[serde(default)]
    csrf: String,
    since: String,
}

async fn patch_endpoint(app: &Arc<App>, id: &str, body: Value) -> Result<(), ConsoleError> {
    let body = serde_json::from_value(body).map_err(|e| ApiError::invalid(e.to_string()))?;
    let _updated = endpoints_api::update(
        State(Arc::clone(app)),
        ApiPath(id.to_owned()),
        ApiJson(body),
    )
    .await?;
    Ok(())
}

pub(crate) async fn disable_endpoint(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    PagePath(id): PagePath<String>,
    PageForm(form): PageForm<DisableForm>,
) -> PageResult {
    viewer.check_form(&form.csrf)?;
    let reason = blank(&form.reason).unwrap_or_else(|| "disabled from the console".to_owned());
    patch_endpoint(
        &app,
        &id,
        json!({ "enabled": false, "disabled_reason": reason }),
    )
    .await?;
    redirect_done(&format!("/endpoints/{id}"), "disabled", None)
}

pub(crate) async fn enable_endpoint(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    PagePath(id): PagePath<String>,
    PageForm(form): PageForm<EnableForm>,
) -> PageResult {
    viewer.check_form(&form.csrf)?;
    let mut body = json!({ "enabled": true });
    if let Some(since) = form_time("recover_since", form.recover_since.as_deref())? {
        body["recover_since"] = json!(since.to_rfc3339());
    }
    patch_endpoint(&app, &id, body).await?;
    redirect_done(&format!("/endpoints/{id}"), "enabled", None)
}

pub(crate) async fn rotate_secret(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    PagePath(id): PagePath<String>,
    PageForm(form): PageForm<CsrfForm>,
) -> PageResult {
    viewer.check_form(&form.csrf)?;
    let _rotated = endpoints_api::rotate_secret(
        State(Arc::clone(&app)),
        ApiPath(id.clone()),
        bytes::Bytes::new(),
    )
    .await?;
    redirect_done(&format!("/endpoints/{id}"), "rotated", None)
}

pub(crate) async fn recover(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    PagePath(id): PagePath<String>,
    PageForm(form): PageForm<RecoverForm>,
) -> PageResult {
    viewer.check_form(&form.csrf)?;
    let since = form_time("since", Some(&form.since))?
        .ok_or_else(|| ApiError::invalid("since is required"))?;
    let body = serde_json::from_value(json!({ "since": since.to_rfc3339() }))
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let axum::Json(recovered) =
        endpoints_api::recover(State(Arc::clone(&app)), ApiPath(id.clone()), ApiJson(body)).await?;
    let count = serde_json::to_value(&recovered)
        .ok()
        .and_then(|v| v["recovered"].as_u64());
    redirect_done(&format!("/endpoints/{id}"), "recovered", count)
}

// ---------------------------------------------------------------------------------------------
// Sources and quarantine

pub(crate) async fn sources(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
) -> PageResult {
    let now = Timestamp::now();
    let sources = crate::api::operations::source_views(&app).await?;
    let body = html! {
        h1 { "Sources" }
        p { "Each source is one provider account posting to billhook. Verification failures are counted since this instance started." }
        div.scroll { table {
            thead { tr { th { "Source" } th { "Provider" } th { "Verified by" } th { "Last message" } th { "24 h" } th { "Quarantined" } th { "Refused" } } }
            tbody {
                @for source in &sources {
                    tr {
                        td { strong { (source.name) } br; code.muted { (source.ingest_path) } }
                        td { (source.provider) }
                        td { (source.auth) @if !source.allow_ips.is_empty() { " + IP allow-list" } }
                        td { @match (source.last_received_at, source.last_inbound) {
                            (Some(at), Some(id)) => { a href=(format!("/inbound/{id}")) { (ago(now, at)) } }
                            _ => { span.muted { "never" } }
                        } }
                        td { (source.received_24h) }
                        td { @if source.quarantined > 0 {
                            a href=(format!("/quarantine?source={}", url_encode(&source.name))) { (badge(Tone::Bad, &source.quarantined.to_string())) }
                        } @else { "0" } }
                        td { @match &source.last_verification_failure {
                            Some(last) => { (badge(Tone::Bad, &source.verification_failures.to_string()))
                                " last: " code { (last.code) } ", " (ago(now, last.at)) }
                            None => { "0" }
                        } }
                    }
                }
            }
        } }
    };
    render(page(&viewer, "Sources", "/sources", body))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct QuarantineQuery {
    source: Option<String>,
    cursor: Option<String>,
    done: Option<String>,
    n: Option<u64>,
    of: Option<u64>,
    /// Where a bulk reprocess stopped with more to go: the next one goes on from there.
    after: Option<String>,
}

pub(crate) async fn quarantine(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    PageQuery(query): PageQuery<QuarantineQuery>,
) -> PageResult {
    let cursor: Option<InboundId> = page_cursor(&query.cursor)?;
    let list = app
        .store
        .inbound_list(InboundQuery {
            status: Some(InboundStatus::Quarantined),
            source: blank(&query.source),
            cursor,
            oldest_first: false,
            limit: 50,
        })
        .await?;
    let done = Done {
        done: query.done.clone(),
        n: query.n,
        of: query.of,
    };
    let source = blank(&query.source);
    // A request to a source no longer configured, or now another provider's, cannot be
    // reprocessed (there is no provider it was verified for to run it through): no button is
    // offered that could only fail.
    let source_configured = source
        .as_deref()
        .is_none_or(|name| app.settings.sources.contains_key(name));
    // Only an id goes back into the form: the page never echoes other text from its URL.
    let after: Option<InboundId> = page_cursor(&query.after)?;
    let body = html! {
        h1 { "Quarantine" }
        (notice(done.message().as_deref()))
        p { "Requests that passed verification but that billhook could not read. They are kept, and reprocessing runs them through this version's provider code again." }
        @if let Some(source) = &source {
            p { "Showing requests to " code { (source) } " only. " a href="/quarantine" { "Show every source" } }
            @if !source_configured {
                p.muted { code { (source) } " is no longer a configured source, so its requests cannot be reprocessed; configure it again to reprocess them." }
            }
        }
        @if viewer.can_change() && source_configured && !list.items.is_empty() {
            div.bulk {
                form method="post" action="/quarantine/reprocess" {
                    (csrf(&viewer))
                    @if let Some(source) = &source { input type="hidden" name="source" value=(source); }
                    button type="submit" { "Reprocess, oldest first (500 at most)" }
                }
                // Those that keep failing stay first in line; this goes on past them.
                @if let Some(after) = after {
                    form method="post" action="/quarantine/reprocess" {
                        (csrf(&viewer))
                        @if let Some(source) = &source { input type="hidden" name="source" value=(source); }
                        input type="hidden" name="cursor" value=(after.to_string());
                        button type="submit" { "Reprocess the next 500" }
                    }
                }
            }
        }
        @if list.items.is_empty() {
            (empty("Nothing in quarantine."))
        } @else {
            div.scroll { table {
                thead { tr { th { "Received" } th { "Source" } th { "Error" } th { span.visually-hidden { "Action" } } } }
                tbody {
                    @for item in &list.items {
                        tr {
                            td { a href=(format!("/inbound/{}", item.id)) { (time(item.received_at)) } }
                            td { (item.source) }
                            td.wrap { @if let Some(error) = &item.error { (badge(Tone::Bad, &error.code)) " " (error.message) } }
                            td { @if viewer.can_change() && reprocessable(&app, &item.source, &item.provider) {
                                form method="post" action=(format!("/inbound/{}/reprocess", item.id)) {
                                    (csrf(&viewer))
                                    button type="submit" aria-label=(format!("Reprocess {}", item.id)) { "Reprocess" }
                                }
                            } }
                        }
                    }
                }
            } }
        }
        (next_page("/quarantine", &[("source", query.source.clone())], list.next_cursor.as_deref()))
    };
    render(page(&viewer, "Quarantine", "/quarantine", body))
}

/// Whether a stored request's source is still configured, for the provider it came from.
fn reprocessable(app: &App, source: &str, provider: &str) -> bool {
    app.settings
        .sources
        .get(source)
        .is_some_and(|configured| configured.spec.provider.name() == provider)
}

pub(crate) async fn inbound(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    PagePath(id): PagePath<String>,
) -> PageResult {
    let id: InboundId = id.parse().map_err(|_| ConsoleError::not_found("request"))?;
    let record = app
        .store
        .inbound(id)
        .await?
        .ok_or_else(|| ConsoleError::not_found("request"))?;
    let body = html! {
        p.crumbs { a href="/sources" { "Sources" } " / " (record.source) " / " (id.to_string()) }
        h1 { "Request from " (record.source) }
        @if record.status == InboundStatus::Quarantined && viewer.can_change() && reprocessable(&app, &record.source, &record.provider) {
            form method="post" action=(format!("/inbound/{id}/reprocess")) {
                (csrf(&viewer))
                button type="submit" { "Reprocess" }
            }
        }
        (inbound_details(&record))
        h2 { "Events" }
        @if record.event_ids.is_empty() {
            (empty("None."))
        } @else {
            ul { @for event in &record.event_ids { li { a href=(format!("/events/{event}")) { (event.to_string()) } } } }
        }
    };
    render(page(&viewer, "Request", "/sources", body))
}

pub(crate) async fn reprocess(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    PagePath(id): PagePath<String>,
    PageForm(form): PageForm<CsrfForm>,
) -> PageResult {
    viewer.check_form(&form.csrf)?;
    let _outcome = inbound_api::reprocess_one(State(Arc::clone(&app)), ApiPath(id.clone())).await?;
    Ok(Redirect::to(&format!("/inbound/{id}")).into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct ReprocessAllForm {
    /// Missing reads as empty, so it is refused as `csrf_rejected` like a wrong one.
    #[serde(default)]
    csrf: String,
    source: Option<String>,
    /// Where the previous bulk reprocess stopped.
    cursor: Option<String>,
}

pub(crate) async fn reprocess_all(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    PageForm(form): PageForm<ReprocessAllForm>,
) -> PageResult {
    viewer.check_form(&form.csrf)?;
    let body = json!({ "source": blank(&form.source), "cursor": blank(&form.cursor) });
    let axum::Json(summary) = inbound_api::reprocess_all(
        State(Arc::clone(&app)),
        bytes::Bytes::from(body.to_string()),
    )
    .await?;
    let summary = serde_json::to_value(&summary).unwrap_or_default();
    let count = |field: &str| summary[field].as_u64().map(|n| n.to_string());
    // A request found to be a duplicate leaves quarantine as one processed does.
    let left = summary["processed"]
        .as_u64()
        .zip(summary["duplicates"].as_u64())
        .map(|(processed, duplicates)| (processed + duplicates).to_string());
    // Back to the list as it was filtered.
    let filtered = href_with(
        "/quarantine",
        &[
            ("source", form.source.clone()),
            ("done", Some("reprocessed".to_owned())),
            ("n", left),
            ("of", count("attempted")),
            ("after", summary["next_cursor"].as_str().map(str::to_owned)),
        ],
    );
    Ok(Redirect::to(&filtered).into_response())
}

// ---------------------------------------------------------------------------------------------
// The ledger

#[derive(Debug, Default, Deserialize)]
pub(crate) struct LedgerFilters {
    status: Option<String>,
    provider: Option<String>,
    reference: Option<String>,
    cursor: Option<String>,
}

async fn ledger_page(
    app: &App,
    kind: SubjectKind,
    filter: LedgerFilter,
    filters: &LedgerFilters,
    cursor: Option<String>,
    limit: u32,
) -> Result<billhook_store::Page<Entity>, ConsoleError> {
    // Refused as the API refuses them: any other text would page from wherever it sorts, and a
    // misspelt provider would show an empty ledger.
    let before = crate::api::ledger::ledger_cursor(kind, cursor.as_deref())?;
    let provider = blank(&filters.provider);
    crate::api::ledger::check_provider(provider.as_deref())?;
    Ok(app
        .store
        .ledger_entities(LedgerQuery {
            kind,
            filter,
            provider,
            source: None,
            reference: blank(&filters.reference),
            before,
            limit,
            now: Timestamp::now(),
        })
        .await?)
}

/// What differs between the pages of the ledger's two kinds of target, invoices and bills.
struct Targets {
    kind: SubjectKind,
    path: &'static str,
    /// "Invoice", "Bill".
    one: &'static str,
    /// "Invoices", "Bills".
    many: &'static str,
    /// A provider of this kind, as the filter form's example.
    provider_hint: &'static str,
}

const INVOICES: Targets = Targets {
    kind: SubjectKind::Invoice,
    path: "/invoices",
    one: "Invoice",
    many: "Invoices",
    provider_hint: "razorpay",
};

const BILLS: Targets = Targets {
    kind: SubjectKind::Bill,
    path: "/bills",
    one: "Bill",
    many: "Bills",
    provider_hint: "setu_bbps",
};

/// An invoice's number or a bill's biller reference, else the provider's id.
fn target_title(entity: &Entity) -> String {
    entity
        .keys
        .number
        .clone()
        .unwrap_or_else(|| entity.provider_id.clone())
}

fn target_table(targets: &Targets, entities: &[Entity], now: Timestamp) -> Markup {
    html! {
        div.scroll { table {
            thead { tr { th { (targets.one) } th { "Provider" } th { "Status" } th.num { "Amount" } th.num { "Paid" } th.num { "Due" } th { "Due by" } } }
            tbody {
                @for target in entities {
                    @let overdue = is_outstanding(target) && target.due_by.is_some_and(|by| by < now);
                    tr {
                        td { a href=(format!("{}/{}", targets.path, target.id)) { (target_title(target)) } }
                        td { (target.provider) }
                        td { (status_badge(target)) @if overdue { " " (badge(Tone::Bad, "overdue")) } }
                        td.num { (money(target.amount, target.currency)) }
                        td.num { (money(Some(target.paid), target.currency)) }
                        td.num { (money(target.due, target.currency)) }
                        td { (maybe_time(target.due_by)) }
                    }
                }
            }
        } }
    }
}

fn status_badge(entity: &Entity) -> Markup {
    let status = entity.status.as_deref().unwrap_or("unknown");
    // A bill's status is how its fetch went, not whether it is paid (its amounts say that).
    if entity.kind == SubjectKind::Bill {
        return match status {
            "success" => badge(Tone::Neutral, "fetched"),
            "failure" => badge(Tone::Bad, "fetch failed"),
            other => badge(Tone::Neutral, other),
        };
    }
    // A document is told of its delivery or receipt without a status.
    if entity.kind == SubjectKind::Document && entity.status.is_none() {
        return badge(Tone::Neutral, "no status reported");
    }
    badge(status_tone(entity.kind, status), status)
}

/// How a status reads for its kind: ended well, ended badly, or still under way.
fn status_tone(kind: SubjectKind, status: &str) -> Tone {
    match (kind, status) {
        (SubjectKind::Dispute, "resolved" | "default_resolved" | "refunded") => Tone::Good,
        (SubjectKind::Dispute, "unresolved" | "rejected" | "failed") => Tone::Bad,
        // Initialized, assigned (to whichever party), escalated: the complaint is open.
        (SubjectKind::Dispute, _) => Tone::Waiting,
        (SubjectKind::Biller, "active") => Tone::Good,
        (SubjectKind::Biller, "deactivated") => Tone::Bad,
        (SubjectKind::Biller, pending) if pending.starts_with("pending") => Tone::Waiting,
        (
            SubjectKind::Document,
            "pending"
            | "acknowledged"
            | "in_process"
            | "under_query"
            | "conditionally_accepted"
            | "sent",
        ) => Tone::Waiting,
        (SubjectKind::Document, "delivered") => Tone::Good,
        (_, "paid" | "succeeded" | "accepted" | "closed" | "resolved" | "success") => Tone::Good,
        (_, "failed" | "expired" | "cancelled" | "rejected" | "declined" | "failure") => Tone::Bad,
        // Sent back to the supplier for a correction the buyer may then accept.
        (SubjectKind::Invoice, "returned") => Tone::Waiting,
        (_, "pending" | "processing" | "issued" | "partially_paid" | "authorized" | "created") => {
            Tone::Waiting
        }
        _ => Tone::Neutral,
    }
}

/// A ledger listing of `status`, keeping the provider and reference the page is filtered by.
fn ledger_href(path: &str, status: &str, filters: &LedgerFilters) -> String {
    href_with(
        path,
        &[
            ("status", Some(status.to_owned())),
            ("provider", filters.provider.clone()),
            ("reference", filters.reference.clone()),
        ],
    )
}

fn ledger_filter_form(
    path: &str,
    filters: &LedgerFilters,
    statuses: &[(&str, &str)],
    provider_hint: &str,
) -> Markup {
    html! {
        form.filters method="get" action=(path) {
            label { "Show"
                select name="status" {
                    @for (value, label) in statuses {
                        option value=(value) selected[filters.status.as_deref().unwrap_or("") == *value] { (label) }
                    }
                    // A provider's own status, reached by a link or typed into the URL, stays
                    // the filter when another field changes.
                    @if let Some(other) = blank(&filters.status).filter(|s| statuses.iter().all(|(value, _)| value != s)) {
                        option value=(other) selected { (other) }
                    }
                }
            }
            label { "Provider" input type="text" name="provider" value=[filters.provider.as_deref()] placeholder=(provider_hint); }
            label { "Number or id" input type="text" name="reference" value=[filters.reference.as_deref()]; }
            button type="submit" { "Filter" }
        }
    }
}

pub(crate) async fn invoices(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    PageQuery(filters): PageQuery<LedgerFilters>,
) -> PageResult {
    targets_page(&app, &viewer, &filters, &INVOICES).await
}

pub(crate) async fn bills(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    PageQuery(filters): PageQuery<LedgerFilters>,
) -> PageResult {
    targets_page(&app, &viewer, &filters, &BILLS).await
}

/// Invoices or bills: by default the outstanding ones, then the paid; or one filter's, page by
/// page.
async fn targets_page(
    app: &App,
    viewer: &Viewer,
    filters: &LedgerFilters,
    targets: &Targets,
) -> PageResult {
    let now = Timestamp::now();
    let statuses = [
        ("", "outstanding first"),
        ("outstanding", "outstanding"),
        ("overdue", "overdue"),
        ("paid", "paid"),
        ("all", "all"),
    ];
    let (path, many) = (targets.path, targets.many.to_lowercase());
    let form = ledger_filter_form(path, filters, &statuses, targets.provider_hint);
    let title = targets.many;
    let all = |status: &str| ledger_href(path, status, filters);
    let body = match blank(&filters.status).as_deref() {
        None => {
            let outstanding = ledger_page(
                app,
                targets.kind,
                LedgerFilter::Outstanding,
                filters,
                None,
                100,
            )
            .await?;
            let paid =
                ledger_page(app, targets.kind, LedgerFilter::Paid, filters, None, 100).await?;
            html! {
                h1 { (title) }
                (form)
                section aria-labelledby="outstanding" {
                    h2 #outstanding { "Outstanding" }
                    @if outstanding.items.is_empty() { (empty("Nothing is outstanding.")) } @else { (target_table(targets, &outstanding.items, now)) }
                    @if outstanding.next_cursor.is_some() { p { a href=(all("outstanding")) { "All outstanding " (many) " →" } } }
                }
                section aria-labelledby="paid" {
                    h2 #paid { "Paid" }
                    @if paid.items.is_empty() { (empty(&format!("No {} is paid yet.", targets.one.to_lowercase()))) } @else { (target_table(targets, &paid.items, now)) }
                    @if paid.next_cursor.is_some() { p { a href=(all("paid")) { "All paid " (many) " →" } } }
                }
                p { a href=(all("all")) { "Every " (targets.one.to_lowercase()) ", closed ones included →" } }
            }
        }
        Some(status) => {
            let filter = match status {
                "all" => LedgerFilter::All,
                word => crate::api::ledger::status_filter(targets.kind, Some(word), false)?,
            };
            let list = ledger_page(
                app,
                targets.kind,
                filter,
                filters,
                blank(&filters.cursor),
                50,
            )
            .await?;
            html! {
                h1 { (title) ": " (status) }
                (form)
                @if list.items.is_empty() { (empty(&format!("No {many} match."))) } @else { (target_table(targets, &list.items, now)) }
                (next_page(path, &[("status", filters.status.clone()), ("provider", filters.provider.clone()), ("reference", filters.reference.clone())], list.next_cursor.as_deref()))
            }
        }
    };
    render(page(viewer, title, path, body))
}

fn payment_table(entities: &[Entity]) -> Markup {
    html! {
        div.scroll { table {
            thead { tr { th { "Payment" } th { "Provider" } th { "Rail" } th { "Status" } th.num { "Amount" } th { "Pays" } th { "Received" } } }
            tbody {
                @for payment in entities {
                    tr {
                        td { a href=(format!("/payments/{}", payment.id)) { code { (payment.provider_id) } } }
                        td { (payment.provider) }
                        td { (payment_rail(payment)) }
                        td { (status_badge(payment)) }
                        td.num { (money(payment.amount, payment.currency)) }
                        td { @match &payment.linked_to {
                            Some(target) => { (target_link(target, target)) " " span.muted { "by " (payment.link_rule.as_deref().unwrap_or("")) } }
                            None if payment.counted.minor() > 0 => { (badge(Tone::Bad, "unmatched")) }
                            None => { span.muted { "—" } }
                        } }
                        td { (time(payment.created_at)) }
                    }
                }
            }
        } }
    }
}

fn payment_rail(payment: &Entity) -> String {
    match payment.snapshot.data() {
        EntityData::Payment(p) => p.rail.clone().unwrap_or_else(|| "—".to_owned()),
        _ => "—".to_owned(),
    }
}

/// A link to what a payment pays, an invoice or a bill.
fn target_link(id: &str, label: &str) -> Markup {
    if ledger::is_id_of(SubjectKind::Bill, id) {
        html! { "bill " a href=(format!("/bills/{id}")) { (label) } }
    } else {
        html! { a href=(format!("/invoices/{id}")) { (label) } }
    }
}

pub(crate) async fn payments(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    PageQuery(filters): PageQuery<LedgerFilters>,
) -> PageResult {
    let statuses = [
        ("", "unmatched first"),
        ("unmatched", "unmatched"),
        ("succeeded", "succeeded"),
        ("failed", "failed"),
        ("all", "all"),
    ];
    let form = ledger_filter_form("/payments", &filters, &statuses, "razorpay");
    let body = match blank(&filters.status).as_deref() {
        None => {
            let unmatched = ledger_page(
                &app,
                SubjectKind::Payment,
                LedgerFilter::Unmatched,
                &filters,
                None,
                100,
            )
            .await?;
            let recent = ledger_page(
                &app,
                SubjectKind::Payment,
                LedgerFilter::All,
                &filters,
                None,
                100,
            )
            .await?;
            html! {
                h1 { "Payments" }
                (form)
                section aria-labelledby="unmatched" {
                    h2 #unmatched { "Unmatched" }
                    p.muted { "Succeeded payments that no invoice or bill claims (yet)." }
                    @if unmatched.items.is_empty() { (empty("Every succeeded payment is matched.")) } @else { (payment_table(&unmatched.items)) }
                    @if unmatched.next_cursor.is_some() { p { a href=(ledger_href("/payments", "unmatched", &filters)) { "All unmatched payments →" } } }
                }
                section aria-labelledby="recent" {
                    h2 #recent { "Latest payments" }
                    @if recent.items.is_empty() { (empty("No payments yet.")) } @else { (payment_table(&recent.items)) }
                    @if recent.next_cursor.is_some() { p { a href=(ledger_href("/payments", "all", &filters)) { "All payments →" } } }
                }
            }
        }
        Some(status) => {
            let filter = match status {
                "unmatched" => LedgerFilter::Unmatched,
                "all" => LedgerFilter::All,
                word => crate::api::ledger::status_filter(SubjectKind::Payment, Some(word), false)?,
            };
            let list = ledger_page(
                &app,
                SubjectKind::Payment,
                filter,
                &filters,
                blank(&filters.cursor),
                50,
            )
            .await?;
            html! {
                h1 { "Payments: " (status) }
                (form)
                @if list.items.is_empty() { (empty("No payments match.")) } @else { (payment_table(&list.items)) }
                (next_page("/payments", &[("status", filters.status.clone()), ("provider", filters.provider.clone()), ("reference", filters.reference.clone())], list.next_cursor.as_deref()))
            }
        }
    };
    render(page(&viewer, "Payments", "/payments", body))
}

/// The end of every ledger entry's page: each status it reported, then what it says now.
fn history_and_snapshot(history: &[ledger::HistoryEntry], entity: &Entity) -> Markup {
    html! {
        section aria-labelledby="history" {
            h2 #history { "Status history" }
            (history_table(history))
        }
        section aria-labelledby="snapshot" {
            h2 #snapshot { "Latest snapshot" }
            (json_block(&serde_json::to_value(entity.snapshot.data()).unwrap_or(Value::Null)))
        }
    }
}

fn history_table(history: &[ledger::HistoryEntry]) -> Markup {
    html! {
        div.scroll { table {
            thead { tr { th { "Received" } th { "Event" } th { "Status" } th { "Provider's word" } th { "Effect" } } }
            tbody {
                @for entry in history {
                    tr {
                        td { (time(entry.received_at)) }
                        td { a href=(format!("/events/{}", entry.event_id)) { code { (entry.event_type.as_str()) } } }
                        td { (entry.status.as_deref().unwrap_or("—")) }
                        td { (entry.provider_status.as_deref().unwrap_or("—")) }
                        td { @if entry.applied { (badge(Tone::Good, "applied")) } @else { (badge(Tone::Neutral, "older: history only")) } }
                    }
                }
            }
        } }
    }
}

async fn find_entity(app: &App, kind: SubjectKind, id: &str) -> Result<Entity, ConsoleError> {
    let entity = app
        .store
        .ledger_entity(id)
        .await?
        .filter(|e| e.kind == kind)
        .ok_or_else(|| ConsoleError::not_found(kind.as_str()))?;
    Ok(entity)
}

pub(crate) async fn invoice(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    PagePath(id): PagePath<String>,
) -> PageResult {
    target_page(&app, &viewer, &id, &INVOICES).await
}

pub(crate) async fn bill(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    PagePath(id): PagePath<String>,
) -> PageResult {
    target_page(&app, &viewer, &id, &BILLS).await
}

/// An invoice or a bill: what it amounts to, the payments linked to it, every status it
/// reported and its latest snapshot.
async fn target_page(app: &App, viewer: &Viewer, id: &str, targets: &Targets) -> PageResult {
    let now = Timestamp::now();
    let target = find_entity(app, targets.kind, id).await?;
    let payments = app.store.ledger_linked(&target.id).await?;
    let history = app.store.ledger_history(&target.id).await?;
    let title = target_title(&target);
    let bill = match target.snapshot.data() {
        EntityData::Bill(bill) => Some(bill),
        _ => None,
    };
    let body = html! {
        p.crumbs { a href=(targets.path) { (targets.many) } " / " (title) }
        h1 { (targets.one) " " (title) " " (status_badge(&target)) }
        dl.facts {
            dt { "Provider" } dd { (target.provider) " · " code { (target.provider_id) } " · source " (target.source) }
            @if !target.keys.former_numbers.is_empty() {
                dt { "Also numbered" } dd { (target.keys.former_numbers.join(", ")) }
            }
            @if let Some(bill) = bill {
                @if let Some(biller) = &bill.biller_id { dt { "Biller" } dd { (biller) } }
                @if let Some(customer) = &bill.customer_name { dt { "Customer" } dd { (customer) } }
                @if let Some(period) = &bill.bill_period { dt { "Period" } dd { (period) } }
            }
            dt { "Amount" } dd { (money(target.amount, target.currency)) }
            dt { "Paid" } dd { (money(Some(target.paid), target.currency)) }
            dt { "Due" } dd { (money(target.due, target.currency))
                @if is_outstanding(&target) && target.due_by.is_some_and(|by| by < now) { " " (badge(Tone::Bad, "overdue")) } }
            @if target.overpaid.minor() > 0 { dt { "Overpaid" } dd { (money(Some(target.overpaid), target.currency)) } }
            dt { "Due by" } dd { (maybe_time(target.due_by)) }
            @if targets.kind == SubjectKind::Invoice {
                dt { "Settled" } dd { @match (target.settled_at, target.settled_event) {
                    (Some(at), Some(event)) => { (time(at)) " · " a href=(format!("/events/{event}")) { "invoice.settled" } }
                    _ => { span.muted { "not yet" } }
                } }
            }
        }
        section aria-labelledby="payments" {
            h2 #payments { "Payments" }
            @if payments.is_empty() { (empty(&format!("No payment is linked to this {}.", targets.one.to_lowercase()))) } @else { (payment_table(&payments)) }
        }
        (history_and_snapshot(&history, &target))
    };
    render(page(
        viewer,
        &format!("{} {title}", targets.one),
        targets.path,
        body,
    ))
}

pub(crate) async fn payment(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    PagePath(id): PagePath<String>,
) -> PageResult {
    let payment = find_entity(&app, SubjectKind::Payment, &id).await?;
    let history = app.store.ledger_history(&payment.id).await?;
    let target = match &payment.linked_to {
        Some(target) => app.store.ledger_entity(target).await?,
        None => None,
    };
    let body = html! {
        p.crumbs { a href="/payments" { "Payments" } " / " (payment.provider_id) }
        h1 { "Payment " code { (payment.provider_id) } " " (status_badge(&payment)) }
        dl.facts {
            dt { "Provider" } dd { (payment.provider) " · source " (payment.source) " · rail " (payment_rail(&payment)) }
            dt { "Amount" } dd { (money(payment.amount, payment.currency)) }
            dt { "Counts towards what it pays" } dd { (money(Some(payment.counted), payment.currency)) }
            dt { "Pays" } dd { @match &target {
                Some(target) => { (target_link(&target.id, &target.keys.number.clone().unwrap_or_else(|| target.provider_id.clone())))
                    " · matched by " (payment.link_rule.as_deref().unwrap_or("—")) }
                None if payment.counted.minor() > 0 => { (badge(Tone::Bad, "unmatched")) @if let Some(event) = payment.unmatched_event { " · " a href=(format!("/events/{event}")) { "payment.unmatched" } } }
                None => { span.muted { "nothing (not succeeded)" } }
            } }
        }
        (history_and_snapshot(&history, &payment))
    };
    render(page(&viewer, "Payment", "/payments", body))
}

/// The ledger's records that are neither owed nor paid: complaints about bill payments,
/// BBPS billers and e-invoicing documents. (Network members are only announced as events.)
/// Each kind with its name, one and many.
const RECORDS: [(SubjectKind, &str, &str); 3] = [
    (SubjectKind::Dispute, "Dispute", "Disputes"),
    (SubjectKind::Biller, "Biller", "Billers"),
    (SubjectKind::Document, "Document", "Documents"),
];

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RecordFilters {
    kind: Option<String>,
    provider: Option<String>,
    reference: Option<String>,
    cursor: Option<String>,
}

/// The kind of record `name` names (`dispute`), with its names.
fn record_kind(name: &str) -> Option<(SubjectKind, &'static str, &'static str)> {
    RECORDS
        .into_iter()
        .find(|(kind, _, _)| kind.as_str() == name)
}

/// One line on what a record is, from its latest snapshot.
fn record_summary(entity: &Entity) -> Markup {
    match entity.snapshot.data() {
        EntityData::Dispute(dispute) => html! {
            @match &dispute.ref_id { Some(transaction) => { "about " code { (transaction) } } None => { "—" } }
            @if let Some(assigned) = &dispute.assigned_to { " · assigned to " (assigned) }
        },
        EntityData::Biller(biller) => html! {
            (biller.name.as_deref().unwrap_or("—"))
            @if let Some(category) = &biller.category { " · " (category) }
        },
        EntityData::Document(document) => html! {
            @match &document.member_id { Some(member) => { "for " code { (member) } } None => { "—" } }
        },
        _ => html! { "—" },
    }
}

fn record_table(entities: &[Entity]) -> Markup {
    html! {
        div.scroll { table {
            thead { tr { th { "Id" } th { "Provider" } th { "Status" } th { "What" } th { "Updated" } } }
            tbody {
                @for record in entities {
                    tr {
                        td { a href=(format!("/records/{}", record.id)) { code { (record.provider_id) } } }
                        td { (record.provider) }
                        td { (status_badge(record)) }
                        td { (record_summary(record)) }
                        td { (time(record.updated_at)) }
                    }
                }
            }
        } }
    }
}

/// Disputes, billers and documents: the newest of each kind, or one kind page by page.
pub(crate) async fn records(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    PageQuery(filters): PageQuery<RecordFilters>,
) -> PageResult {
    let ledger_filters = LedgerFilters {
        status: None,
        provider: filters.provider.clone(),
        reference: filters.reference.clone(),
        cursor: None,
    };
    let kind = blank(&filters.kind);
    let form = html! {
        form.filters method="get" action="/records" {
            label { "Kind"
                select name="kind" {
                    option value="" selected[kind.is_none()] { "every kind" }
                    @for (kind_of, _, many) in RECORDS {
                        option value=(kind_of.as_str()) selected[kind.as_deref() == Some(kind_of.as_str())] { (many) }
                    }
                }
            }
            label { "Provider" input type="text" name="provider" value=[filters.provider.as_deref()] placeholder="setu_bbps"; }
            label { "Provider's id" input type="text" name="reference" value=[filters.reference.as_deref()]; }
            button type="submit" { "Filter" }
        }
    };
    let body = match kind {
        None => {
            let newest = futures_util::future::try_join_all(RECORDS.iter().map(|(kind, ..)| {
                ledger_page(&app, *kind, LedgerFilter::All, &ledger_filters, None, 20)
            }))
            .await?;
            let sections: Vec<_> = RECORDS
                .iter()
                .zip(newest)
                .map(|((kind, _, many), newest)| (kind, many, newest))
                .collect();
            html! {
                h1 { "Records" }
                (form)
                @for (kind, many, newest) in &sections {
                    section aria-labelledby=(kind.as_str()) {
                        h2 id=(kind.as_str()) { (many) }
                        @if newest.items.is_empty() { (empty(&format!("No {} yet.", many.to_lowercase()))) } @else { (record_table(&newest.items)) }
                        @if newest.next_cursor.is_some() { p { a href=(href_with("/records", &[("kind", Some(kind.as_str().to_owned())), ("provider", filters.provider.clone()), ("reference", filters.reference.clone())])) { "All " (many.to_lowercase()) " →" } } }
                    }
                }
            }
        }
        Some(name) => {
            let (kind, _, many) = record_kind(&name)
                .ok_or_else(|| ApiError::invalid(format!("kind: no records of kind `{name}`")))?;
            let list = ledger_page(
                &app,
                kind,
                LedgerFilter::All,
                &ledger_filters,
                blank(&filters.cursor),
                50,
            )
            .await?;
            html! {
                p.crumbs { a href="/records" { "Records" } " / " (many) }
                h1 { (many) }
                (form)
                @if list.items.is_empty() { (empty(&format!("No {} match.", many.to_lowercase()))) } @else { (record_table(&list.items)) }
                (next_page("/records", &[("kind", Some(name.clone())), ("provider", filters.provider.clone()), ("reference", filters.reference.clone())], list.next_cursor.as_deref()))
            }
        }
    };
    render(page(&viewer, "Records", "/records", body))
}

/// A dispute, biller or document: what it says now, every status it reported, and its latest
/// snapshot.
pub(crate) async fn record(
    State(app): State<Arc<App>>,
    Extension(viewer): Extension<Viewer>,
    PagePath(id): PagePath<String>,
) -> PageResult {
    let record = app.store.ledger_entity(&id).await?.and_then(|entity| {
        let (_, one, many) = RECORDS
            .into_iter()
            .find(|(kind, ..)| *kind == entity.kind)?;
        Some((entity, one, many))
    });
    let Some((record, one, many)) = record else {
        return Err(ConsoleError::not_found("record"));
    };
    let history = app.store.ledger_history(&record.id).await?;
    let details = match record.snapshot.data() {
        EntityData::Dispute(dispute) => html! {
            @if let Some(transaction) = &dispute.ref_id { dt { "Disputed transaction" } dd { code { (transaction) } } }
            @if let Some(assigned) = &dispute.assigned_to { dt { "Assigned to" } dd { (assigned) } }
            @if let Some(remarks) = &dispute.remarks { dt { "Remarks" } dd { (remarks) } }
        },
        EntityData::Biller(biller) => html! {
            @if let Some(name) = &biller.name { dt { "Name" } dd { (name) } }
            @if let Some(biller_id) = &biller.biller_id { dt { "BBPS biller id" } dd { code { (biller_id) } } }
            @if let Some(category) = &biller.category { dt { "Category" } dd { (category) } }
            @if let Some(coverage) = &biller.coverage { dt { "Coverage" } dd { (coverage) } }
            @if let Some(fetch) = &biller.fetch_requirement { dt { "Bill fetch" } dd { (fetch) } }
            dt { "Plans" } dd { (biller.plans.len()) }
        },
        EntityData::Document(document) => html! {
            @if let Some(member) = &document.member_id { dt { "Addressed to" } dd { code { (member) } } }
        },
        _ => html! {},
    };
    let body = html! {
        p.crumbs { a href="/records" { "Records" } " / " a href=(format!("/records?kind={}", record.kind.as_str())) { (many) } " / " (record.provider_id) }
        h1 { (one) " " code { (record.provider_id) } " " (status_badge(&record)) }
        dl.facts {
            dt { "Provider" } dd { (record.provider) " · source " (record.source) }
            dt { "Provider's status" } dd { (record.provider_status.as_deref().unwrap_or("—")) }
            (details)
            dt { "First seen" } dd { (time(record.created_at)) }
            dt { "Updated" } dd { (time(record.updated_at)) }
        }
        (history_and_snapshot(&history, &record))
    };
    render(page(
        &viewer,
        &format!("{one} {}", record.provider_id),
        "/records",
        body,
    ))
}

/// Whether every number in `value` is an integer a `Value` holds digit for digit: a fraction
/// or an integer beyond 64 bits is held as a float, and printed again it may read otherwise.
fn numbers_are_exact(value: &Value) -> bool {
    match value {
        Value::Number(number) => number.is_i64() || number.is_u64(),
        Value::Array(items) => items.iter().all(numbers_are_exact),
        Value::Object(fields) => fields.values().all(numbers_are_exact),
        Value::Null | Value::Bool(_) | Value::String(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A time given in a link in any RFC 3339 form comes back as a `datetime-local` input
    /// reads it, in UTC, so the next "Filter" keeps the bound.
    #[test]
    fn a_filter_time_is_put_back_as_the_input_reads_it() {
        for (given, shown) in [
            ("2026-11-20T10:00", "2026-11-20T10:00"),
            ("2026-11-20T10:00:00Z", "2026-11-20T10:00"),
            ("2026-11-20T15:30:00+05:30", "2026-11-20T10:00"),
            ("2026-11-20T10:00:07Z", "2026-11-20T10:00:07"),
            ("2026-11-20T10:00:07.250Z", "2026-11-20T10:00:07.250"),
            ("2026-11-20t15:30:00+05:30", "2026-11-20T10:00"),
            ("2026-11-20 10:00:00Z", "2026-11-20T10:00"),
            ("2026-11-20T05:00:00-05:00", "2026-11-20T10:00"),
        ] {
            let parsed = form_time("since", Some(given)).unwrap().unwrap();
            assert_eq!(datetime_local(parsed), shown, "{given}");
            assert_eq!(
                form_time("since", Some(shown)).unwrap(),
                Some(parsed),
                "{shown} reads back as the same time"
            );
        }
    }
}
