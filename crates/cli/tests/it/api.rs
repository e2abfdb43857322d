//! The admin API's read side: authentication, filters, pagination, the catalog, health.

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;

backend_tests!(
    the_admin_api_requires_the_token,
    events_filter_and_paginate,
    event_types_come_with_json_schemas,
    health_and_readiness,
    bad_input_is_refused_by_code_never_as_a_server_failure,
    an_address_guessing_tokens_is_refused_for_a_while,
);

async fn the_admin_api_requires_the_token(backend: Backend) {
    let app = spawn_app(backend).await;
    for token in [None, Some("wrong")] {
        let mut request = app.http.get(app.url("/v1/events"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401);
        assert_eq!(
            response.json::<Value>().await.unwrap()["code"],
            json!("unauthorized")
        );
    }
    let (status, body) = app.admin_get("/v1/nothing-here").await;
    assert_eq!((status, body["code"].clone()), (404, json!("not_found")));
    let (status, body) = app.admin_get("/v1/events/evt_nope").await;
    assert_eq!((status, body["code"].clone()), (404, json!("not_found")));
    app.stop().await;
}

async fn events_filter_and_paginate(backend: Backend) {
    let app = spawn_app(backend).await;
    for (index, (path, source)) in all_fixtures().into_iter().enumerate() {
        let response = app
            .post_signed(
                source,
                &fixture(&path),
                &[("x-razorpay-event-id", &format!("p{index}"))],
            )
            .await;
        assert_eq!(response.status().as_u16(), ack_status(source));
    }
    let (_, everything) = app.admin_get("/v1/events?limit=500").await;
    let events = everything["data"].as_array().unwrap();
    // 24 from the fixtures, plus the ledger's `invoice.settled` for the invoices they pay.
    let (settled, from_fixtures): (Vec<&Value>, Vec<&Value>) = events
        .iter()
        .partition(|e| e["type"] == json!("invoice.settled"));
    assert_eq!(from_fixtures.len(), 24);
    assert!(!settled.is_empty());
    // Pages of 5, newest first, every event exactly once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/events?limit=5&cursor={c}"),
            None => "/v1/events?limit=5".to_owned(),
        };
        let (status, page) = app.admin_get(&path).await;
        assert_eq!(status, 200);
        for event in page["data"].as_array().unwrap() {
            seen.push(event["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = everything["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, expected);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(seen, sorted, "newest first");

    let (_, paid) = app.admin_get("/v1/events?type=invoice.paid").await;
    assert_eq!(paid["data"].as_array().unwrap().len(), 4);
    let (_, setu) = app.admin_get("/v1/events?source=setu").await;
    assert_eq!(setu["data"].as_array().unwrap().len(), 6);
    let (_, subject) = app
        .admin_get("/v1/events?subject=bcinv_k3pbaALyh1CmzTPTOToHywYey")
        .await;
    // Four from Bharat Connect; closed with nothing paid, the invoice is not settled.
    assert_eq!(subject["data"].as_array().unwrap().len(), 4);
    assert!(
        subject["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["subject"]["kind"] == "invoice")
    );

    for (query, code) in [
        ("type=invoice.nope", "invalid_request"),
        ("limit=0", "invalid_request"),
        ("limit=abc", "invalid_request"),
        ("cursor=garbage", "invalid_cursor"),
        ("colour=blue", "invalid_request"),
    ] {
        let (status, body) = app.admin_get(&format!("/v1/events?{query}")).await;
        assert_eq!(
            (status, body["code"].as_str().unwrap()),
            (400, code),
            "{query}"
        );
    }
    app.stop().await;
}

async fn event_types_come_with_json_schemas(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, catalog) = app.admin_get("/v1/event-types").await;
    assert_eq!(status, 200);
    let types = catalog["data"].as_array().unwrap();
    assert!(types.len() >= 20);
    for entry in types {
        let schema = &entry["schema"];
        assert_eq!(
            schema["$schema"],
            json!("https://json-schema.org/draft/2020-12/schema")
        );
        assert_eq!(schema["properties"]["type"]["const"], entry["name"]);
        assert!(schema["$defs"]["CanonicalEvent"].is_object());
    }
    let (status, one) = app.admin_get("/v1/event-types/payment.succeeded").await;
    assert_eq!(status, 200);
    assert_eq!(one["subject_kinds"], json!(["payment"]));
    let (status, _) = app.admin_get("/v1/event-types/payment.nope").await;
    assert_eq!(status, 404);
    app.stop().await;
}

async fn health_and_readiness(backend: Backend) {
    let app = spawn_app(backend).await;
    let alive: Value = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(alive["status"], json!("ok"));
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    app.stop().await;
}

/// Input the database cannot hold, or a body of the wrong type, is the caller's error with its
/// own code, on either backend: never a `500`.
async fn bad_input_is_refused_by_code_never_as_a_server_failure(backend: Backend) {
    let app = spawn_app(backend).await;
    for path in [
        "/v1/events?source=a%00",
        "/v1/invoices/%00",
        "/v1/payments?reference=x%00y",
    ] {
        let (status, body) = app.admin_get(path).await;
        assert_eq!(
            (status, body["code"].clone()),
            (400, json!("invalid_request")),
            "{path}"
        );
    }
    // A NUL inside a JSON body: PostgreSQL cannot store it, so no backend takes it; a
    // backslash and digits are text.
    let (status, body) = app
        .admin_post("/v1/tokens", json!({ "name": "a\u{0}b", "scope": "read" }))
        .await;
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!("invalid_request")),
        "{body}"
    );
    assert!(body["message"].as_str().unwrap().contains("NUL"), "{body}");
    let (status, body) = app
        .admin_post(
            "/v1/tokens",
            json!({ "name": "a \\u0000 b", "scope": "read" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let response = app
        .http
        .post(app.url("/v1/tokens"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "text/plain")
        .body(r#"{"name": "n", "scope": "read"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], json!("unsupported_media_type"), "{body}");

    // A change that would be taken as no change at all is refused, not ignored.
    let receiver = Receiver::ok().await;
    let (endpoint, _) = app
        .create_endpoint(json!({ "url": receiver.url, "event_types": ["*"] }))
        .await;
    let path = format!("/v1/endpoints/{endpoint}");
    for change in [
        json!({ "url": null }),
        json!({ "event_types": null }),
        json!({ "headers": null }),
        json!({ "enabled": null }),
        json!({ "disabled_reason": "why" }),
    ] {
        let (status, body) = app.admin_patch(&path, change.clone()).await;
        assert_eq!(
            (status, body["code"].clone()),
            (400, json!("invalid_request")),
            "{change}: {body}"
        );
    }
    let (status, body) = app
        .admin_patch(&path, json!({ "enabled": false, "disabled_reason": null }))
        .await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}

/// An address that presents twenty invalid tokens in a minute is refused without a check (the
/// right token included) until its minute ends, whatever valid ones it sent between them, at the API and the console's login alike;
/// other addresses go on as ever. Addresses come from a trusted proxy's `X-Forwarded-For`.
async fn an_address_guessing_tokens_is_refused_for_a_while(backend: Backend) {
    let app = spawn_app_with(backend, "trusted_proxies = [\"127.0.0.0/8\"]\n").await;
    let from = |client: &str, token: &str| {
        app.http
            .get(app.url("/v1/events"))
            .bearer_auth(token)
            .header("x-forwarded-for", client)
    };
    for n in 0..21 {
        // A valid token among the guesses does not clear the count: a holder of any token
        // could guess on between two requests of its own.
        let token = if n == 10 { ADMIN_TOKEN } else { "guess" };
        let response = from("10.0.0.1", token).send().await.unwrap();
        let expected = if n == 10 { 200 } else { 401 };
        assert_eq!(response.status().as_u16(), expected, "request {n}");
    }
    let refused = from("10.0.0.1", ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], json!("too_many_attempts"), "{body}");
    let elsewhere = from("10.0.0.2", ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(elsewhere.status().as_u16(), 200);

    // The console's login counts the same.
    let http = crate::console::browserless();
    let form = http.get(app.url("/login")).send().await.unwrap();
    let (login, _) = crate::console::set_cookie(&form, "billhook_login").unwrap();
    let cookie = format!("billhook_login={login}");
    let csrf = crate::console::csrf_in(&form.text().await.unwrap());
    for (client, refused) in [("10.0.0.1", true), ("10.0.0.3", false)] {
        let response = http
            .post(app.url("/login"))
            .header("cookie", &cookie)
            .header("x-forwarded-for", client)
            .form(&[
                ("token", ADMIN_TOKEN),
                ("csrf", csrf.as_str()),
                ("next", "/"),
            ])
            .send()
            .await
            .unwrap();
        let expected = if refused { 429 } else { 303 };
        assert_eq!(response.status().as_u16(), expected, "{client}");
        assert_eq!(
            response.headers().contains_key("retry-after"),
            refused,
            "{client}"
        );
    }
    app.stop().await;
}
