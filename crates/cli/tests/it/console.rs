//! The web console: login, sessions, CSRF, scopes, what the pages show, and a headless Chromium
//! driving it (console-tests/browser.mjs).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;

backend_tests!(
    pages_need_a_login_and_a_login_needs_a_valid_token,
    forms_refuse_a_request_without_the_csrf_token,
    a_read_session_sees_everything_and_changes_nothing,
    the_pages_show_what_came_in_and_what_it_became,
    a_browser_logs_in_finds_an_event_and_redelivers_it,
    more_unmatched_payments_than_the_overview_shows_are_linked,
    malformed_requests_get_the_error_page,
    the_event_page_refreshes_only_while_an_attempt_is_near,
    a_quarantined_request_is_shown_as_sent_and_reprocessed_by_source,
    a_removed_sources_quarantine_offers_no_reprocess,
    what_the_configuration_file_declares_is_changed_only_there,
    an_endpoint_declared_again_is_enabled_again_unless_an_operator_disabled_it,
);

/// A client that does not follow redirects, so each step can be checked.
pub(crate) fn browserless() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value of a `Set-Cookie` for `name`, and the whole header.
pub(crate) fn set_cookie(response: &reqwest::Response, name: &str) -> Option<(String, String)> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let value = v[name.len() + 1..]
                .split(';')
                .next()
                .unwrap_or("")
                .to_owned();
            (value, v.to_owned())
        })
}

/// The hidden CSRF field's value in a page.
pub(crate) fn csrf_in(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).expect("a CSRF field") + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

/// Logs in with `token`; the session cookie and the CSRF token of the first page.
pub(crate) async fn log_in(app: &TestApp, token: &str) -> (String, String) {
    let http = browserless();
    let form = http.get(app.url("/login")).send().await.unwrap();
    let (login_cookie, _) = set_cookie(&form, "billhook_login").unwrap();
    let html = form.text().await.unwrap();
    let response = http
        .post(app.url("/login"))
        .header("cookie", format!("billhook_login={login_cookie}"))
        .form(&[("token", token), ("csrf", &csrf_in(&html)), ("next", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
    let (session, _) = set_cookie(&response, "billhook_session").unwrap();
    let page = get(app, &session, "/").await.1;
    (session, csrf_in(&page))
}

/// A console page, with the session's cookie: its status and text.
pub(crate) async fn get(app: &TestApp, session: &str, path: &str) -> (u16, String) {
    let response = browserless()
        .get(app.url(path))
        .header("cookie", format!("billhook_session={session}"))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn post(
    app: &TestApp,
    session: &str,
    path: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    browserless()
        .post(app.url(path))
        .header("cookie", format!("billhook_session={session}"))
        .form(form)
        .send()
        .await
        .unwrap()
}

/// Ingests a Zwitch payment delivered to a receiver; returns the event id once delivered.
async fn delivered_payment(app: &TestApp, receiver: &Receiver) -> String {
    app.create_endpoint(json!({ "url": receiver.url, "event_types": ["payment.*"] }))
        .await;
    let response = app
        .post_signed("zwitch", &fixture("zwitch_upi/payments.updated.json"), &[])
        .await;
    assert_eq!(response.status().as_u16(), 200);
    let ack: Value = response.json().await.unwrap();
    app.eventually(Duration::from_secs(10), "the first delivery", || async {
        receiver.count() >= 1
    })
    .await;
    ack["events"][0].as_str().unwrap().to_owned()
}

async fn pages_need_a_login_and_a_login_needs_a_valid_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let http = browserless();
    let response = http
        .get(app.url("/events?type=invoice.paid"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(
        response.headers()["location"],
        "/login?next=/events%3Ftype%3Dinvoice.paid"
    );
    // A HEAD asks for a page as a GET does: it is sent to log in, not told a form was lost.
    let head = http.head(app.url("/events")).send().await.unwrap();
    assert_eq!(head.status().as_u16(), 303);
    assert_eq!(head.headers()["location"], "/login?next=/events");

    let form = http.get(app.url("/login")).send().await.unwrap();
    assert_eq!(form.status().as_u16(), 200);
    let csp = form.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(form.headers()["x-frame-options"], "DENY");
    let (login_cookie, header) = set_cookie(&form, "billhook_login").unwrap();
    assert!(header.contains("HttpOnly") && header.contains("SameSite=Lax"));
    assert!(!header.contains("Secure"), "plain HTTP: {header}");
    assert!(!form.headers().contains_key("strict-transport-security"));
    // Reached over HTTPS through a proxy, the console's cookies are Secure with no setting, and
    // the browser is told to come back over HTTPS only.
    let over_tls = http
        .get(app.url("/login"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let (_, header) = set_cookie(&over_tls, "billhook_login").unwrap();
    assert!(header.contains("; Secure"), "{header}");
    assert_eq!(
        over_tls.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    let csrf = csrf_in(&form.text().await.unwrap());
    // The login page opened again (another tab) keeps the form token the browser holds, so
    // the first tab's form still logs in.
    let again = http
        .get(app.url("/login"))
        .header("cookie", format!("billhook_login={login_cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        set_cookie(&again, "billhook_login").unwrap().0,
        login_cookie
    );
    assert_eq!(csrf_in(&again.text().await.unwrap()), csrf);

    let wrong = http
        .post(app.url("/login"))
        .header("cookie", format!("billhook_login={login_cookie}"))
        .form(&[("token", "not-the-token"), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(
        wrong
            .text()
            .await
            .unwrap()
            .contains("That token is not valid.")
    );

    let right = http
        .post(app.url("/login"))
        .header("cookie", format!("billhook_login={login_cookie}"))
        .form(&[
            ("token", ADMIN_TOKEN),
            ("csrf", csrf.as_str()),
            ("next", "/invoices"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(right.status().as_u16(), 303);
    assert_eq!(right.headers()["location"], "/invoices");
    let (session, header) = set_cookie(&right, "billhook_session").unwrap();
    assert!(
        header.contains("HttpOnly") && header.contains("SameSite=Lax") && header.contains("Path=/")
    );

    // Every page's navigation names every section, so each is told by its own title and by
    // the section its navigation marks as current.
    for (path, title) in [
        ("/", "Overview"),
        ("/events", "Events"),
        ("/endpoints", "Endpoints"),
        ("/sources", "Sources"),
        ("/quarantine", "Quarantine"),
        ("/invoices", "Invoices"),
        ("/bills", "Bills"),
        ("/payments", "Payments"),
        ("/records", "Records"),
    ] {
        let (status, body) = get(&app, &session, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            body.contains(&format!("<title>{title} · billhook</title>")),
            "{path}"
        );
        assert!(
            body.contains(&format!(
                "<a href=\"{path}\" aria-current=\"page\">{title}</a>"
            )),
            "{path}"
        );
    }
    let (status, css) = get(&app, &session, "/assets/console.css").await;
    assert_eq!(status, 200);
    assert!(css.contains("--accent"));
    let (status, body) = get(&app, &session, "/events/evt_nothing").await;
    assert_eq!(status, 404);
    assert!(body.contains("not_found"));

    // Logging out ends the session.
    let (_, page) = get(&app, &session, "/").await;
    let out = post(&app, &session, "/logout", &[("csrf", &csrf_in(&page))]).await;
    assert_eq!(out.status().as_u16(), 303);
    let (status, _) = get(&app, &session, "/").await;
    assert_eq!(status, 303);
    app.stop().await;
}

async fn forms_refuse_a_request_without_the_csrf_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::ok().await;
    let event = delivered_payment(&app, &receiver).await;
    let (session, csrf) = log_in(&app, ADMIN_TOKEN).await;
    let path = format!("/events/{event}/redeliver");
    for form in [
        vec![],
        vec![("csrf", "")],
        vec![("csrf", "forged-token-value")],
    ] {
        let response = post(&app, &session, &path, &form).await;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        // Missing, empty or wrong, it is refused by name.
        assert_eq!(status, 403, "{form:?}");
        assert!(body.contains("csrf_rejected"), "{form:?}: {body}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 1, "nothing was redelivered");

    // Without the login cookie the login form is refused too, and comes back to be sent again
    // with a fresh token and the same place to go after.
    let response = browserless()
        .post(app.url("/login"))
        .form(&[
            ("token", ADMIN_TOKEN),
            ("csrf", "anything"),
            ("next", "/endpoints"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    assert!(set_cookie(&response, "billhook_login").is_some());
    let again = response.text().await.unwrap();
    assert!(
        again.contains("csrf_rejected")
            && again.contains("name=\"csrf\"")
            && again.contains("value=\"/endpoints\""),
        "{again}"
    );

    // A form sent after the session ended leads back to its page through the login.
    let response = browserless()
        .post(app.url(&path))
        .header(
            "referer",
            app.url(&format!("/events/{event}?done=redelivered&n=1")),
        )
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let ended = response.text().await.unwrap();
    assert!(
        ended.contains(&format!(
            "href=\"/login?next=/events/{event}%3Fdone%3Dredelivered%26n%3D1\""
        )),
        "{ended}"
    );

    // With the token it works.
    let response = post(&app, &session, &path, &[("csrf", &csrf)]).await;
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(
        response.headers()["location"],
        format!("/events/{event}?done=redelivered&n=1").as_str()
    );
    app.eventually(Duration::from_secs(10), "the redelivery", || async {
        receiver.count() >= 2
    })
    .await;
    app.stop().await;
}

async fn a_read_session_sees_everything_and_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::ok().await;
    let event = delivered_payment(&app, &receiver).await;
    let (_, created) = app
        .admin_post("/v1/tokens", json!({ "name": "auditor", "scope": "read" }))
        .await;
    let (session, csrf) = log_in(&app, created["token"].as_str().unwrap()).await;
    let (status, page) = get(&app, &session, &format!("/events/{event}")).await;
    assert_eq!(status, 200);
    assert!(page.contains("scope: read"));
    // An endpoint's URL may carry its receiver's credential: a reader sees its origin only.
    let (_, listed) = app.admin_get("/v1/endpoints").await;
    let endpoint = listed["data"][0]["id"].as_str().unwrap().to_owned();
    let (status, page) = get(&app, &session, &format!("/endpoints/{endpoint}")).await;
    assert_eq!(status, 200);
    assert!(!page.contains("/hooks"), "{page}");
    assert!(page.contains("/[redacted]"), "{page}");
    assert!(
        !page.contains(">Redeliver<"),
        "no button for a read session"
    );
    let response = post(
        &app,
        &session,
        &format!("/events/{event}/redeliver"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(response.status().as_u16(), 403);
    assert!(response.text().await.unwrap().contains("forbidden"));

    // Revoking the token ends its session.
    let id = created["id"].as_str().unwrap();
    app.http
        .delete(app.url(&format!("/v1/tokens/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let (status, _) = get(&app, &session, "/").await;
    assert_eq!(status, 303);
    app.stop().await;
}

async fn the_pages_show_what_came_in_and_what_it_became(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::ok().await;
    let event = delivered_payment(&app, &receiver).await;
    for scenario in [
        "razorpay-invoice-two-partial-payments",
        "setu-bill-lifecycle",
        "caminvoice-document-lifecycle",
    ] {
        let text = std::fs::read_to_string(format!(
            "{}/../../scenarios/{scenario}.toml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let path = app.dir.path().join(format!("{scenario}.toml"));
        std::fs::write(&path, text).unwrap();
        let (ok, printed) = app
            .cli(&["trigger", "--scenario", path.to_str().unwrap()])
            .await;
        assert!(ok, "{printed}");
    }
    for (event, variant) in [("BILL_DISPUTE", "ASSIGNED"), ("BILLER_UPDATES", "ACTIVE")] {
        let (ok, printed) = app
            .cli(&["trigger", "setu_bbps", event, "--variant", variant])
            .await;
        assert!(ok, "{printed}");
    }
    let quarantined = app
        .post_signed(
            "zwitch",
            b"{\"not\": \"a zwitch event\", \"amount\": 100000000000000000000001, \"rate\": 0.10}",
            &[],
        )
        .await;
    assert_eq!(quarantined.status().as_u16(), 200);
    let forged = app
        .http
        .post(app.url("/ingest/razorpay"))
        .header("x-razorpay-signature", "22".repeat(32))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 401);
    let (session, csrf) = log_in(&app, ADMIN_TOKEN).await;

    // A page's cursor is checked as the API checks it, not paged from wherever it sorts.
    for path in [
        "/invoices?status=all&cursor=zzz",
        "/payments?status=all&cursor=iv_01J00000000000000000000000",
        "/records?kind=biller&cursor=zzz",
        "/events?cursor=zzz",
        "/quarantine?cursor=evt_01J00000000000000000000000",
    ] {
        let (status, page) = get(&app, &session, path).await;
        assert_eq!(status, 400, "{path}: {page}");
        assert!(
            page.contains("<strong>invalid_cursor</strong>")
                && page.contains("is not a cursor from this listing"),
            "{path}: {page}"
        );
    }
    // A status word that no payment can have is refused as the API refuses it.
    for (path, why) in [
        ("/payments?status=paid", "a payment is `succeeded`"),
        (
            "/payments?status=overdue",
            "applies to invoices and bills only",
        ),
    ] {
        let (status, page) = get(&app, &session, path).await;
        assert_eq!(status, 400, "{path}: {page}");
        assert!(page.contains(why), "{path}: {page}");
    }
    let (_, events) = get(&app, &session, "/events?type=invoice.settled").await;
    assert!(events.contains("invoice.settled") && !events.contains("payment.succeeded</code>"));
    let (_, detail) = get(&app, &session, &format!("/events/{event}")).await;
    for expected in [
        "payment.succeeded",
        "Deliveries",
        "HTTP 200",
        "x-zwitch-signature",
        "verified",
        "Canonical event",
    ] {
        assert!(detail.contains(expected), "event page lacks {expected}");
    }
    assert!(!detail.contains(ZWITCH_SECRET));

    let (_, invoices) = get(&app, &session, "/invoices").await;
    assert!(
        invoices.contains("Outstanding") && invoices.contains("paid"),
        "{invoices}"
    );
    // A filtered listing's links to the rest keep the filter.
    let (_, razorpay) = get(&app, &session, "/invoices?provider=razorpay").await;
    assert!(
        razorpay.contains("href=\"/invoices?status=all&amp;provider=razorpay\""),
        "{razorpay}"
    );
    // A misspelt provider is refused as the API refuses it, not shown as an empty ledger.
    for path in [
        "/invoices?provider=razorpya",
        "/payments?status=all&provider=razorpya",
        "/records?provider=razorpya",
    ] {
        let (status, page) = get(&app, &session, path).await;
        assert_eq!(status, 400, "{path}: {page}");
        assert!(page.contains("is not a provider"), "{path}: {page}");
    }
    // A filter the form does not list (a provider's own status, a source since removed) stays
    // chosen in the form, so changing another field keeps it.
    let (_, issued) = get(&app, &session, "/invoices?status=issued").await;
    assert!(
        issued.contains("<option value=\"issued\" selected>issued</option>"),
        "{issued}"
    );
    let (_, removed) = get(&app, &session, "/events?source=retired").await;
    assert!(
        removed.contains("<option value=\"retired\" selected>retired</option>"),
        "{removed}"
    );
    let (_, payments) = get(&app, &session, "/payments").await;
    assert!(payments.contains("Unmatched") && payments.contains("invoice_id"));
    // The BBPS bill the scenario fetched and paid: listed as paid, its page showing whose it is,
    // the payment that paid it and what it reported; the payment links back to it.
    let (_, bills) = get(&app, &session, "/bills").await;
    let bill = bills
        .split("<h2 id=\"paid\">")
        .nth(1)
        .and_then(|paid| paid.split("href=\"/bills/").nth(1))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("a paid bill: {bills}"))
        .to_owned();
    let (status, detail) = get(&app, &session, &format!("/bills/{bill}")).await;
    assert_eq!(status, 200);
    for expected in [
        "<h1>Bill ",
        "fetched",
        "Elijah White",
        "Monthly",
        "bill_ref_id",
        "bill.fetched",
    ] {
        assert!(
            detail.contains(expected),
            "the bill page lacks {expected}: {detail}"
        );
    }
    assert!(
        payments.contains(&format!("href=\"/bills/{bill}\"")),
        "{payments}"
    );
    let (status, _) = get(&app, &session, &format!("/invoices/{bill}")).await;
    assert_eq!(status, 404, "a bill is not an invoice");
    // Disputes, billers and documents: each kind listed with what it is, each record's page
    // showing its own facts, history and a status badge in its kind's tone, and each kind
    // listed alone.
    let (_, records) = get(&app, &session, "/records").await;
    let mut pages = Vec::new();
    for (kind, badge, facts) in [
        (
            "dispute",
            "badge waiting",
            ["Disputed transaction", "Assigned to", "dispute.updated"],
        ),
        (
            "biller",
            "badge good",
            ["BBPS biller id", "Category", "biller.updated"],
        ),
        (
            "document",
            "badge good",
            ["Addressed to", "document.delivered", "KHUID"],
        ),
    ] {
        let section = records
            .split(&format!("<h2 id=\"{kind}\">"))
            .nth(1)
            .and_then(|rest| rest.split("</section>").next())
            .unwrap_or_else(|| panic!("a {kind} section: {records}"));
        let id = section
            .split("href=\"/records/")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("a {kind} listed: {records}"))
            .to_owned();
        let (status, detail) = get(&app, &session, &format!("/records/{id}")).await;
        assert_eq!(status, 200);
        for expected in facts {
            assert!(
                detail.contains(expected),
                "the {kind} page lacks {expected}: {detail}"
            );
        }
        let heading = detail
            .split("<h1>")
            .nth(1)
            .and_then(|rest| rest.split("</h1>").next())
            .unwrap_or_default();
        assert!(heading.contains(badge), "{kind}: {heading}");
        let (status, alone) = get(&app, &session, &format!("/records?kind={kind}")).await;
        assert_eq!(status, 200);
        assert!(alone.contains(&format!("/records/{id}")), "{alone}");
        pages.push(id);
    }
    let (status, _) = get(&app, &session, &format!("/invoices/{}", pages[0])).await;
    assert_eq!(status, 404, "a dispute is not an invoice");
    let (status, _) = get(&app, &session, &format!("/records/{bill}")).await;
    assert_eq!(status, 404, "a bill has pages of its own");
    let (status, _) = get(&app, &session, "/records?kind=invoice").await;
    assert_eq!(status, 400, "invoices have pages of their own");
    let (_, sources) = get(&app, &session, "/sources").await;
    assert!(sources.contains("invalid_signature"), "{sources}");

    let (_, quarantine) = get(&app, &session, "/quarantine").await;
    assert!(quarantine.contains("Reprocess, oldest first (500 at most)"));
    let inbound = quarantine
        .split("/inbound/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    // A request kept for what went wrong with it shows its numbers as they were sent.
    let (_, kept) = get(&app, &session, &format!("/inbound/{inbound}")).await;
    assert!(
        kept.contains("100000000000000000000001") && kept.contains("0.10"),
        "{kept}"
    );
    let response = post(
        &app,
        &session,
        &format!("/inbound/{inbound}/reprocess"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(response.status().as_u16(), 303);
    let (_, overview) = get(&app, &session, "/").await;
    assert!(overview.contains("<svg") && overview.contains("stored"));

    // Endpoint actions from the console.
    let endpoint = app.admin_get("/v1/endpoints").await.1["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = post(
        &app,
        &session,
        &format!("/endpoints/{endpoint}/disable"),
        &[("csrf", &csrf), ("reason", "maintenance window")],
    )
    .await;
    assert_eq!(response.status().as_u16(), 303);
    let (_, page) = get(&app, &session, &format!("/endpoints/{endpoint}")).await;
    assert!(page.contains("maintenance window") && page.contains("disabled"));
    let response = post(
        &app,
        &session,
        &format!("/endpoints/{endpoint}/enable"),
        &[("csrf", &csrf), ("recover_since", "")],
    )
    .await;
    assert_eq!(response.status().as_u16(), 303);
    let (_, enabled) = app.admin_get(&format!("/v1/endpoints/{endpoint}")).await;
    assert_eq!(enabled["enabled"], true, "{enabled}");
    assert!(enabled["disabled_reason"].is_null(), "{enabled}");

    let secret_path = format!("/v1/endpoints/{endpoint}/secret");
    let (_, before) = app.admin_get(&secret_path).await;
    let response = post(
        &app,
        &session,
        &format!("/endpoints/{endpoint}/rotate"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(response.status().as_u16(), 303);
    let (_, after) = app.admin_get(&secret_path).await;
    assert_ne!(after["secret"], before["secret"], "{after}");
    assert_eq!(after["previous"][0]["secret"], before["secret"], "{after}");
    app.stop().await;
}

/// The payments overview shows the newest hundred unmatched payments; past that, money no
/// invoice claims must not drop out of sight.
async fn more_unmatched_payments_than_the_overview_shows_are_linked(backend: Backend) {
    let app = spawn_app(backend).await;
    let (session, _) = log_in(&app, ADMIN_TOKEN).await;
    ingest_payments(&app, 100, "few").await;
    let (_, payments) = get(&app, &session, "/payments").await;
    let link = "href=\"/payments?status=unmatched\"";
    assert!(!payments.contains(link), "a hundred fit: {payments}");
    ingest_payments(&app, 1, "one-more").await;
    let (_, payments) = get(&app, &session, "/payments").await;
    assert!(payments.contains(link), "{payments}");
    app.stop().await;
}

async fn a_browser_logs_in_finds_an_event_and_redelivers_it(backend: Backend) {
    let dir = format!("{}/../../console-tests", env!("CARGO_MANIFEST_DIR"));
    assert!(
        std::path::Path::new(&format!("{dir}/node_modules/playwright-core")).exists(),
        "the browser tests need `npm ci --prefix console-tests` and Debian's chromium (.ci/run installs both)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no Chromium at {chromium}: install Debian's chromium or set CHROMIUM"
    );
    let app = spawn_app(backend).await;
    let receiver = Receiver::ok().await;
    delivered_payment(&app, &receiver).await;
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("node")
            .arg("browser.mjs")
            .current_dir(&dir)
            .env("BILLHOOK_URL", &app.address)
            .env("BILLHOOK_TOKEN", ADMIN_TOKEN)
            .env("CHROMIUM", &chromium)
            .output(),
    )
    .await
    .expect("the browser test took more than two minutes")
    .expect("node runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{printed}");
    assert!(
        printed.contains("ok - the new attempt appeared"),
        "{printed}"
    );
    assert!(
        printed.contains("ok - a form without its CSRF token gets 403"),
        "{printed}"
    );
    assert!(
        printed.contains("ok - a link from another site opens the page logged in"),
        "{printed}"
    );
    assert_eq!(
        receiver.count(),
        2,
        "one delivery and one redelivery, nothing more"
    );
    app.stop().await;
}

/// A query, path or form the console cannot read gets its error page with a stable code, as
/// every other refusal does, not the framework's plain text.
async fn malformed_requests_get_the_error_page(backend: Backend) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::ok().await;
    let event = delivered_payment(&app, &receiver).await;
    let (session, csrf) = log_in(&app, ADMIN_TOKEN).await;
    let error_page = |status: u16, body: &str, expected: u16, code: &str| {
        assert_eq!(status, expected, "{body}");
        assert!(body.contains("<h1>Something went wrong</h1>"), "{body}");
        assert!(body.contains(&format!("<strong>{code}</strong>")), "{body}");
    };

    let (status, body) = get(&app, &session, &format!("/events/{event}?n=many")).await;
    error_page(status, &body, 400, "invalid_request");
    let (status, body) = get(&app, &session, "/events/evt_%FF%FE").await;
    error_page(status, &body, 400, "invalid_request");

    let path = format!("/events/{event}/redeliver");
    let as_json = browserless()
        .post(app.url(&path))
        .header("cookie", format!("billhook_session={session}"))
        .json(&json!({ "csrf": csrf }))
        .send()
        .await
        .unwrap();
    let status = as_json.status().as_u16();
    error_page(
        status,
        &as_json.text().await.unwrap(),
        415,
        "unsupported_media_type",
    );
    // Refused before any handler runs (by the body's reader), still as a console page.
    let oversized = browserless()
        .post(app.url(&path))
        .header("cookie", format!("billhook_session={session}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&pad={}", "a".repeat(70 * 1024)))
        .send()
        .await
        .unwrap();
    assert!(
        oversized.headers().contains_key("content-security-policy"),
        "{:?}",
        oversized.headers()
    );
    let status = oversized.status().as_u16();
    error_page(
        status,
        &oversized.text().await.unwrap(),
        413,
        "payload_too_large",
    );
    let nul = browserless()
        .get(app.url("/events?subject=%00"))
        .header("cookie", format!("billhook_session={session}"))
        .send()
        .await
        .unwrap();
    assert!(nul.headers().contains_key("content-security-policy"));
    let status = nul.status().as_u16();
    error_page(status, &nul.text().await.unwrap(), 400, "invalid_request");
    // A form's raw byte 0 is as much a NUL as its escape, whatever the media type's case.
    let endpoint = app.admin_get("/v1/endpoints").await.1["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let raw = browserless()
        .post(app.url(&format!("/endpoints/{endpoint}/disable")))
        .header("cookie", format!("billhook_session={session}"))
        .header("content-type", "Application/X-WWW-Form-Urlencoded")
        .body(format!("csrf={csrf}&reason=a\0b").into_bytes())
        .send()
        .await
        .unwrap();
    let status = raw.status().as_u16();
    error_page(status, &raw.text().await.unwrap(), 400, "invalid_request");
    let (_, still) = app.admin_get(&format!("/v1/endpoints/{endpoint}")).await;
    assert_eq!(still["enabled"], json!(true), "{still}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 1, "nothing was redelivered");
    app.stop().await;
}

/// The event page reloads itself while an attempt is under way or due within half a minute,
/// to its own address (an action's notice is not repeated), and not while the next retry is
/// an hour away.
async fn the_event_page_refreshes_only_while_an_attempt_is_near(backend: Backend) {
    let app = spawn_app_with(
        backend,
        "[delivery]\nallow_private_destinations = [\"127.0.0.0/8\"]\nretry_schedule = [\"0s\", \"1h\"]\n",
    )
    .await;
    let failing = Receiver::start(Arc::new(|_| (500, vec![], Some(Duration::ZERO)))).await;
    app.create_endpoint(json!({ "url": failing.url, "event_types": ["payment.*"] }))
        .await;
    let response = app
        .post_signed("zwitch", &fixture("zwitch_upi/payments.updated.json"), &[])
        .await;
    let ack: Value = response.json().await.unwrap();
    let event = ack["events"][0].as_str().unwrap().to_owned();
    app.eventually(Duration::from_secs(10), "the first attempt", || async {
        failing.count() >= 1
    })
    .await;
    let (session, _) = log_in(&app, ADMIN_TOKEN).await;
    let page = format!("/events/{event}");
    let refresh = format!("content=\"2; url=/events/{event}\"");
    app.eventually(Duration::from_secs(10), "the failure recorded", || async {
        get(&app, &session, &page).await.1.contains("HTTP 500")
    })
    .await;
    let (_, detail) = get(&app, &session, &page).await;
    assert!(
        !detail.contains("http-equiv=\"refresh\""),
        "the retry is an hour away: {detail}"
    );
    let soon = billhook_core::time::Timestamp::now()
        .add(Duration::from_secs(20))
        .unix_millis();
    app.execute_sql(&format!("UPDATE deliveries SET next_attempt_at = {soon}"))
        .await;
    let (_, detail) = get(&app, &session, &format!("{page}?done=redelivered&n=1")).await;
    assert!(detail.contains(&refresh), "the retry is near: {detail}");
    app.stop().await;
}

/// A request kept for what went wrong with it is shown byte for byte: parsed and pretty-printed,
/// a repeated key (which a provider's parser may refuse) would show once, hiding the cause. And
/// reprocessing one source's quarantine comes back to that source's list.
async fn a_quarantined_request_is_shown_as_sent_and_reprocessed_by_source(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .post_signed(
            "zwitch",
            b"{\"not\": \"a zwitch event\", \"dup\": 1, \"dup\": 2}",
            &[],
        )
        .await;
    let ack: Value = response.json().await.unwrap();
    assert_eq!(ack["quarantined"], json!(true), "{ack}");
    let (session, csrf) = log_in(&app, ADMIN_TOKEN).await;
    let (_, page) = get(
        &app,
        &session,
        &format!("/inbound/{}", ack["inbound_id"].as_str().unwrap()),
    )
    .await;
    assert!(
        page.contains("&quot;dup&quot;: 1, &quot;dup&quot;: 2"),
        "{page}"
    );
    // Bytes that are not UTF-8 are shown as they are, in hexadecimal, not replaced.
    let response = app
        .post_signed("razorpay", b"{\"amount\": \xff\xfe <x>}", &[])
        .await;
    let binary: Value = response.json().await.unwrap();
    assert_eq!(binary["quarantined"], json!(true), "{binary}");
    let (_, page) = get(
        &app,
        &session,
        &format!("/inbound/{}", binary["inbound_id"].as_str().unwrap()),
    )
    .await;
    assert!(
        page.contains("Not UTF-8 text: shown byte for byte in hexadecimal.")
            && page.contains(
                "00000000  7b 22 61 6d 6f 75 6e 74 22 3a 20 ff fe 20 3c 78  |{&quot;amount&quot;: .. &lt;x|\n\
                 00000010  3e 7d                                            |&gt;}|"
            )
            && !page.contains('\u{fffd}'),
        "{page}"
    );
    // Each row's button names its request for a screen reader's list of buttons.
    let (_, quarantine) = get(&app, &session, "/quarantine?source=zwitch").await;
    assert!(
        quarantine.contains(&format!(
            "aria-label=\"Reprocess {}\"",
            ack["inbound_id"].as_str().unwrap()
        )),
        "{quarantine}"
    );
    // Reprocessing a source's quarantine leads back to that source's list.
    let response = post(
        &app,
        &session,
        "/quarantine/reprocess",
        &[("csrf", &csrf), ("source", "zwitch")],
    )
    .await;
    assert_eq!(response.status().as_u16(), 303);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(
        location,
        "/quarantine?source=zwitch&done=reprocessed&n=0&of=1"
    );
    // The list says it is one source's, and that the request tried did not leave quarantine.
    let (_, page) = get(&app, &session, &location).await;
    assert!(
        page.contains("Reprocessed 1 request(s): 0 left quarantine.")
            && page.contains("Showing requests to <code>zwitch</code> only."),
        "{page}"
    );
    assert!(
        !page.contains("Reprocess the next 500"),
        "nothing follows: {page}"
    );
    // Where a bulk reprocess stopped with more to go, the next one goes on past what it tried.
    let inbound_id = ack["inbound_id"].as_str().unwrap();
    let (_, page) = get(
        &app,
        &session,
        &format!("/quarantine?source=zwitch&done=reprocessed&n=0&of=500&after={inbound_id}"),
    )
    .await;
    assert!(
        page.contains(&format!(
            "<input type=\"hidden\" name=\"cursor\" value=\"{inbound_id}\">"
        )) && page.contains("Reprocess the next 500"),
        "{page}"
    );
    let response = post(
        &app,
        &session,
        "/quarantine/reprocess",
        &[
            ("csrf", &csrf),
            ("source", "zwitch"),
            ("cursor", inbound_id),
        ],
    )
    .await;
    assert_eq!(
        response.headers()["location"].to_str().unwrap(),
        "/quarantine?source=zwitch&done=reprocessed&n=0&of=0",
        "nothing after the one request"
    );
    let (status, _) = get(&app, &session, "/quarantine?after=%3Cb%3E").await;
    assert_eq!(status, 400);
    app.stop().await;
}

/// A request to a source since removed from the configuration stays listed, but no button
/// offers what could only be refused (there is no provider or secret to run it through).
async fn a_removed_sources_quarantine_offers_no_reprocess(backend: Backend) {
    let retired =
        "[[source]]\nname = \"retired\"\nprovider = \"zwitch\"\nsecrets = [\"retired-secret\"]\n";
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_app_in(backend, Arc::clone(&dir), retired).await;
    let response = app
        .post_signed("retired", b"{\"not\": \"a zwitch event\"}", &[])
        .await;
    let ack: Value = response.json().await.unwrap();
    assert_eq!(ack["quarantined"], json!(true), "{ack}");
    let inbound = ack["inbound_id"].as_str().unwrap().to_owned();
    let (session, _) = log_in(&app, ADMIN_TOKEN).await;
    let (_, page) = get(&app, &session, "/quarantine?source=retired").await;
    assert!(page.contains("Reprocess, oldest first"), "{page}");
    app.stop().await;

    let app = spawn_app_in(backend, Arc::clone(&dir), "").await;
    let (session, _) = log_in(&app, ADMIN_TOKEN).await;
    for path in ["/quarantine?source=retired", "/quarantine"] {
        let (status, page) = get(&app, &session, path).await;
        assert_eq!(status, 200, "{path}: {page}");
        assert!(
            page.contains(&format!("/inbound/{inbound}")),
            "{path}: {page}"
        );
        assert!(
            !page.contains(&format!("aria-label=\"Reprocess {inbound}\"")),
            "{path}: {page}"
        );
    }
    let (_, page) = get(&app, &session, "/quarantine?source=retired").await;
    assert!(
        !page.contains("Reprocess, oldest first")
            && page.contains("is no longer a configured source"),
        "{page}"
    );
    let (_, page) = get(&app, &session, &format!("/inbound/{inbound}")).await;
    assert!(!page.contains("Reprocess"), "{page}");
    app.stop().await;
}

/// A declared endpoint is set back to the file at every start, so the API and the console
/// refuse to change what the file sets instead of letting a restart undo it; enabling and
/// disabling stay theirs, and so does the secret of an endpoint whose file leaves it out.
async fn what_the_configuration_file_declares_is_changed_only_there(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &format!(
            "{TEST_DELIVERY}\n\
             [[endpoint]]\nname = \"ledger\"\nurl = \"http://127.0.0.1:9/hooks\"\nevent_types = [\"*\"]\n\
             secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\
             [[endpoint]]\nname = \"archive\"\nurl = \"http://127.0.0.1:9/archive\"\nevent_types = [\"*\"]\n"
        ),
    )
    .await;
    let (_, listed) = app.admin_get("/v1/endpoints").await;
    let id_of = |name: &str| {
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == json!(name))
            .unwrap_or_else(|| panic!("{name}: {listed}"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (ledger, archive) = (id_of("ledger"), id_of("archive"));

    let (status, refused) = app
        .admin_patch(
            &format!("/v1/endpoints/{ledger}"),
            json!({ "url": "http://127.0.0.1:9/elsewhere", "description": "moved" }),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["code"], json!("declared_in_configuration"));
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("url, description"),
        "{refused}"
    );
    let (status, disabled) = app
        .admin_patch(
            &format!("/v1/endpoints/{ledger}"),
            json!({ "enabled": false, "disabled_reason": "maintenance" }),
        )
        .await;
    assert_eq!(status, 200, "{disabled}");
    assert_eq!(disabled["url"], json!("http://127.0.0.1:9/hooks"));

    let (status, refused) = app
        .admin_post(&format!("/v1/endpoints/{ledger}/secret/rotate"), json!({}))
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["code"], json!("declared_in_configuration"));
    let (_, secret) = app
        .admin_get(&format!("/v1/endpoints/{ledger}/secret"))
        .await;
    assert_eq!(
        secret["secret"],
        json!("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    );
    let (status, rotated) = app
        .admin_post(&format!("/v1/endpoints/{archive}/secret/rotate"), json!({}))
        .await;
    assert_eq!(
        status, 200,
        "the file leaves this secret to billhook: {rotated}"
    );

    // The console offers only what it may do.
    let (session, _) = log_in(&app, ADMIN_TOKEN).await;
    let (_, page) = get(&app, &session, &format!("/endpoints/{ledger}")).await;
    assert!(
        page.contains("The configuration file sets the signing secret")
            && !page.contains(&format!("/endpoints/{ledger}/rotate"))
            && page.contains("in the configuration file as <code>ledger</code>"),
        "{page}"
    );
    let (_, page) = get(&app, &session, &format!("/endpoints/{archive}")).await;
    assert!(
        page.contains(&format!("/endpoints/{archive}/rotate")),
        "{page}"
    );
    app.stop().await;
}

/// An endpoint removed from the file is disabled at the next start, and declared again, it is
/// enabled again at the one after; one an operator disabled stays disabled through both.
async fn an_endpoint_declared_again_is_enabled_again_unless_an_operator_disabled_it(
    backend: Backend,
) {
    let declare = |names: &[&str]| {
        let mut text = TEST_DELIVERY.to_owned();
        for name in names {
            text.push_str(&format!(
                "\n[[endpoint]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:9/{name}\"\nevent_types = [\"*\"]\n"
            ));
        }
        text
    };
    let state = |listed: &Value, name: &str| {
        let endpoint = listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == json!(name))
            .unwrap_or_else(|| panic!("{name}: {listed}"))
            .clone();
        (
            endpoint["enabled"].clone(),
            endpoint["disabled_reason"].clone(),
        )
    };
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_app_in(backend, Arc::clone(&dir), &declare(&["kept", "dropped"])).await;
    let (_, listed) = app.admin_get("/v1/endpoints").await;
    let kept = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == json!("kept"))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = app
        .admin_patch(
            &format!("/v1/endpoints/{kept}"),
            json!({ "enabled": false, "disabled_reason": "maintenance" }),
        )
        .await;
    assert_eq!(status, 200);
    app.stop().await;

    let app = spawn_app_in(backend, Arc::clone(&dir), &declare(&["kept"])).await;
    let (_, listed) = app.admin_get("/v1/endpoints").await;
    assert_eq!(
        state(&listed, "dropped"),
        (json!(false), json!("removed from the configuration file"))
    );
    app.stop().await;

    let app = spawn_app_in(backend, Arc::clone(&dir), &declare(&["kept", "dropped"])).await;
    let (_, listed) = app.admin_get("/v1/endpoints").await;
    assert_eq!(state(&listed, "dropped"), (json!(true), Value::Null));
    assert_eq!(state(&listed, "kept"), (json!(false), json!("maintenance")));
    app.stop().await;
}
