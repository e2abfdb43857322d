//! The web console at `/`: server-rendered HTML over the same store and operations as the admin
//! API, with its stylesheet embedded in the binary (no CDN, no scripts, works offline).
//!
//! Login exchanges an admin token for a session cookie (`HttpOnly`, `SameSite=Lax`, optionally
//! `Secure`); the store keeps the cookie's digest and the session's CSRF token, which every form
//! carries and every `POST` checks. A `read`-scoped session sees everything and changes nothing.
//! Pages send a strict Content-Security-Policy.

mod charts;
mod layout;
mod pages;

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use billhook_core::access::{Scope, digest, generate_session_secret};
use billhook_core::time::Timestamp;
use billhook_store::NewSession;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use maud::{Markup, html};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use crate::App;
use crate::access::Access;
use crate::api::{ApiPath, ApiQuery};
use crate::error::{ApiError, ErrorCode};

/// The session cookie.
const SESSION_COOKIE: &str = "billhook_session";
/// The login form's double-submit cookie (there is no session to hold its CSRF token yet).
const LOGIN_COOKIE: &str = "billhook_login";

const STYLESHEET: &str = include_str!("console.css");

/// Who is looking at the console.
#[derive(Debug, Clone)]
pub(crate) struct Viewer {
    pub access: Access,
    pub csrf: String,
    session: String,
}

impl Viewer {
    pub fn can_change(&self) -> bool {
        self.access.scope.allows(Scope::Admin)
    }

    /// Refuses a form without this session's CSRF token, or from a session that may not change
    /// anything.
    pub fn check_form(&self, csrf: &str) -> Result<(), ConsoleError> {
        if !bool::from(csrf.as_bytes().ct_eq(self.csrf.as_bytes())) {
            return Err(ConsoleError::from(ApiError::new(
                ErrorCode::CsrfRejected,
                "the form was sent without its CSRF token; reload the page and try again",
            )));
        }
        if !self.can_change() {
            return Err(ConsoleError::from(ApiError::new(
                ErrorCode::Forbidden,
                "this session's token has the read scope: it can look but not change anything",
            )));
        }
        Ok(())
    }
}

/// An error shown as a page.
#[derive(Debug)]
pub(crate) struct ConsoleError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<std::time::Duration>,
}

impl From<ApiError> for ConsoleError {
    fn from(error: ApiError) -> Self {
        Self {
            status: error.code.status(),
            code: error.code.as_str(),
            message: error.message,
            retry_after: error.retry_after,
        }
    }
}

impl From<billhook_store::StoreError> for ConsoleError {
    fn from(error: billhook_store::StoreError) -> Self {
        ApiError::from(error).into()
    }
}

impl ConsoleError {
    pub fn not_found(what: &str) -> Self {
        ApiError::not_found(what).into()
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let page = layout::bare(
            "Something went wrong",
            html! {
                main.narrow {
                    h1 { "Something went wrong" }
                    p.error role="alert" { strong { (self.code) } ": " (self.message) }
                    p { a href="/" { "Back to the overview" } }
                }
            },
        );
        let mut response = (self.status, Html(page.into_string())).into_response();
        if let Some(wait) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                crate::error::whole_seconds(wait).into(),
            );
        }
        response
    }
}

/// Query parameters; malformed ones are refused as the API refuses them (`invalid_request`),
/// on the error page.
pub(crate) struct PageQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PageQuery<T> {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ConsoleError> {
        ApiQuery::<T>::from_request_parts(parts, state)
            .await
            .map(|q| PageQuery(q.0))
            .map_err(ConsoleError::from)
    }
}

/// Path parameters (percent-encoding that is not UTF-8 is refused with the error page).
pub(crate) struct PagePath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PagePath<T> {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ConsoleError> {
        ApiPath::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PagePath(p.0))
            .map_err(ConsoleError::from)
    }
}

/// A form body; one of another content type or that does not read is refused with the error
/// page.
pub(crate) struct PageForm<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for PageForm<T> {
    type Rejection = ConsoleError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ConsoleError> {
        axum::extract::Form::<T>::from_request(request, state)
            .await
            .map(|f| PageForm(f.0))
            .map_err(|rejection: FormRejection| {
                let code = match rejection.status() {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
                    StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
                    _ => ErrorCode::InvalidRequest,
                };
                ApiError::new(code, rejection.body_text()).into()
            })
    }
}

/// The console's routes; every page but the login needs a session.
pub(crate) fn router(app: Arc<App>) -> Router<Arc<App>> {
    let pages = Router::new()
        .route("/", get(pages::overview))
        .route("/events", get(pages::events))
        .route("/events/{id}", get(pages::event))
        .route("/events/{id}/redeliver", post(pages::redeliver))
        .route("/endpoints", get(pages::endpoints))
        .route("/endpoints/{id}", get(pages::endpoint))
        .route("/endpoints/{id}/enable", post(pages::enable_endpoint))
        .route("/endpoints/{id}/disable", post(pages::disable_endpoint))
        .route("/endpoints/{id}/rotate", post(pages::rotate_secret))
        .route("/endpoints/{id}/recover", post(pages::recover))
        .route("/sources", get(pages::sources))
        .route("/quarantine", get(pages::quarantine))
        .route("/quarantine/reprocess", post(pages::reprocess_all))
        .route("/inbound/{id}", get(pages::inbound))
        .route("/inbound/{id}/reprocess", post(pages::reprocess))
        .route("/invoices", get(pages::invoices))
        .route("/invoices/{id}", get(pages::invoice))
        .route("/bills", get(pages::bills))
        .route("/bills/{id}", get(pages::bill))
        .route("/payments", get(pages::payments))
        .route("/payments/{id}", get(pages::payment))
        .route("/records", get(pages::records))
        .route("/records/{id}", get(pages::record))
        .route("/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&app),
            require_session,
        ));
    let routes = Router::new()
        .merge(pages)
        .route("/login", get(login_page).post(login))
        .route("/assets/console.css", get(stylesheet));
    // The body is read whole before anyone is known (the login form has to be), so only as
    // much as the forms need; a refusal there is a console page too, with the same headers.
    let body_deadline = crate::http_server::BodyDeadline {
        timeout: app.settings.ingest.request_timeout.0,
        limit: crate::http_server::CONSOLE_BODY_LIMIT,
        refuse: |error| ConsoleError::from(error).into_response(),
    };
    answering_panics_with_a_page(routes)
        .layer(middleware::from_fn_with_state(
            body_deadline,
            crate::http_server::read_body_in_time,
        ))
        .layer(middleware::from_fn_with_state(app, security_headers))
}

/// Answers a page whose handler panicked with the error page (the server's own guard would
/// answer the API's JSON). The panic's message went to standard error through the panic hook;
/// it may hold request data, so it is not shown.
fn answering_panics_with_a_page<S: Clone + Send + Sync + 'static>(routes: Router<S>) -> Router<S> {
    routes.layer(tower_http::catch_panic::CatchPanicLayer::custom(
        |_panic: Box<dyn std::any::Any + Send + 'static>| {
            ConsoleError::from(ApiError::internal(&"a console page's handler panicked"))
                .into_response()
        },
    ))
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLESHEET,
    )
        .into_response()
}

/// Headers every console response carries: no scripts, no framing, no sniffing, no leaking
/// paths to other sites; and, over HTTPS, HTTPS only from then on, so a first visit typed as
/// `http://` cannot be downgraded before the `Secure` cookie matters.
async fn security_headers(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let https = app.settings.console.secure_cookies || over_https(request.headers());
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if https {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A cookie's value from the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Whether `text` has the shape [`generate_session_secret`] gives (43 URL-safe characters).
fn is_session_secret(text: &str) -> bool {
    text.len() == 43
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A cookie of the console's. `Secure` when the configuration says so, or when the request came
/// over HTTPS through a proxy (`X-Forwarded-Proto: https`), so a console behind a TLS proxy
/// needs no setting for it. The header is believed from anyone: marking a cookie `Secure` only
/// keeps it off plain HTTP, so a client that lies about it locks only itself out.
///
/// `SameSite=Lax`, not `Strict`: a link to a page from elsewhere (an alert in a chat or a mail)
/// opens it logged in, while a form another site sends still arrives without the cookie. No
/// `GET` changes anything, and every `POST` checks the session's CSRF token besides.
fn set_cookie(
    app: &App,
    request: &HeaderMap,
    name: &str,
    value: &str,
    max_age_seconds: u64,
) -> HeaderValue {
    let secure = if app.settings.console.secure_cookies || over_https(request) {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_seconds}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether the request came over HTTPS through a proxy (`X-Forwarded-Proto: https`). Believed
/// from anyone: what it turns on (a `Secure` cookie, HSTS) only keeps that client off plain HTTP.
fn over_https(request: &HeaderMap) -> bool {
    request
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// A path inside the console to return to after logging in, never another site. Browsers drop
/// tabs and newlines from a URL before reading it, so `/<tab>/evil.example.com` would be
/// `//evil.example.com` to them: only visible ASCII passes (anything else arrives
/// percent-encoded from the console's own links).
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.contains('\\')
                && !path.starts_with("/login")
                && path.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            path.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// The answer to a form sent without a live session: `401 unauthorized`, with a link to log in
/// again and come back to `back` (a path of the console's, or the overview).
fn session_ended(back: Option<&str>) -> Response {
    let login = format!("/login?next={}", url_encode(&local_path(back)));
    let page = layout::bare(
        "Log in again",
        html! {
            main.narrow {
                h1 { "Log in again" }
                p.error role="alert" { strong { "unauthorized" } ": the session has ended, and what the form asked was not done." }
                p { a href=(login) { "Log in again" } " to go back to the page and send it again." }
            }
        },
    );
    (StatusCode::UNAUTHORIZED, Html(page.into_string())).into_response()
}

async fn require_session(
    State(app): State<Arc<App>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ConsoleError> {
    let found = match cookie(request.headers(), SESSION_COOKIE) {
        Some(value) => app.access.session(&app.store, value).await?,
        None => None,
    };
    let Some((access, session)) = found else {
        if !request.method().is_safe() {
            // A form sent after the session ended: its input cannot be kept, but the way back
            // can, to the page the form was on.
            let back = request
                .headers()
                .get(header::REFERER)
                .and_then(|value| value.to_str().ok())
                .and_then(|referer| url::Url::parse(referer).ok())
                .map(|referer| match referer.query() {
                    Some(query) => format!("{}?{query}", referer.path()),
                    None => referer.path().to_owned(),
                });
            return Ok(session_ended(back.as_deref()));
        }
        let here = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        let target = format!("/login?next={}", url_encode(&here));
        return Ok(Redirect::to(&target).into_response());
    };
    let session_cookie = cookie(request.headers(), SESSION_COOKIE)
        .unwrap_or_default()
        .to_owned();
    request.extensions_mut().insert(Viewer {
        access,
        csrf: session.csrf,
        session: session_cookie,
    });
    Ok(next.run(request).await)
}

/// Percent-encodes a query value.
pub(crate) fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    PageQuery(query): PageQuery<LoginQuery>,
) -> Response {
    login_form(&app, &headers, query.next.as_deref(), None)
}

fn login_form(
    app: &App,
    headers: &HeaderMap,
    next: Option<&str>,
    problem: Option<&str>,
) -> Response {
    // A login page open in another tab (each expired session's tab lands here) keeps working:
    // the form token the browser already holds is reused rather than replaced.
    let form_token = cookie(headers, LOGIN_COOKIE)
        .filter(|held| is_session_secret(held))
        .map_or_else(generate_session_secret, str::to_owned);
    let page = layout::bare(
        "Log in",
        html! {
            main.narrow {
                h1 { "billhook" }
                p { "Log in with an admin token: the one printed at the first start (kept in "
                    code { "admin-token" } " in the data directory), or one from "
                    code { "billhook token create" } "." }
                @if let Some(problem) = problem {
                    p.error role="alert" { (problem) }
                }
                form method="post" action="/login" {
                    input type="hidden" name="csrf" value=(form_token);
                    input type="hidden" name="next" value=(local_path(next));
                    label for="token" { "Admin token" }
                    input #token type="password" name="token" autocomplete="current-password" required autofocus;
                    button type="submit" { "Log in" }
                }
            }
        },
    );
    let status = if problem.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let mut response = (status, Html(page.into_string())).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(app, headers, LOGIN_COOKIE, &form_token, 3600),
    );
    response
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
    /// Missing reads as empty, so it is refused as `csrf_rejected` like a wrong one.
    #[serde(default)]
    csrf: String,
    next: Option<String>,
}

async fn login(
    State(app): State<Arc<App>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    PageForm(form): PageForm<LoginForm>,
) -> Result<Response, ConsoleError> {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(form.csrf.as_bytes())) {
        // Most often a login form left open past its cookie, or in a tab beside one already
        // used: the form comes back with a fresh token (and where to go after), not a dead end.
        let mut response = login_form(
            &app,
            &headers,
            form.next.as_deref(),
            Some("The login form had expired (csrf_rejected). Enter the token again."),
        );
        *response.status_mut() = StatusCode::FORBIDDEN;
        return Ok(response);
    }
    let client = crate::ingest::client_ip(peer, &headers, &app.settings.trusted_proxies);
    if let Some(wait) = app.access.refused_for(client) {
        return Err(crate::api::too_many_attempts(wait).into());
    }
    let Some(access) = app.access.token(&app.store, form.token.trim()).await? else {
        app.access.failed(client);
        return Ok(login_form(
            &app,
            &headers,
            form.next.as_deref(),
            Some("That token is not valid."),
        ));
    };
    let session = generate_session_secret();
    let now = Timestamp::now();
    let ttl = app.settings.console.session_ttl.0;
    app.store
        .create_session(NewSession {
            digest: digest(&session),
            token_id: access.token.as_session_owner(),
            token_digest: digest(form.token.trim()),
            scope: access.scope,
            csrf: generate_session_secret(),
            created_at: now,
            expires_at: now.add(ttl),
        })
        .await?;
    tracing::info!(token = %access.token.as_session_owner(), "console login");
    let session_cookie = set_cookie(&app, &headers, SESSION_COOKIE, &session, ttl.as_secs());
    let login_cookie = set_cookie(&app, &headers, LOGIN_COOKIE, "", 0);
    let mut response = Redirect::to(&local_path(form.next.as_deref())).into_response();
    let cookies = response.headers_mut();
    cookies.append(header::SET_COOKIE, session_cookie);
    cookies.append(header::SET_COOKIE, login_cookie);
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub(crate) struct CsrfForm {
    /// Missing reads as empty, so it is refused as `csrf_rejected` like a wrong one.
    #[serde(default)]
    pub csrf: String,
}

async fn logout(
    State(app): State<Arc<App>>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    request_headers: HeaderMap,
    PageForm(form): PageForm<CsrfForm>,
) -> Result<Response, ConsoleError> {
    // Logging out needs the CSRF token but not the admin scope.
    if !bool::from(form.csrf.as_bytes().ct_eq(viewer.csrf.as_bytes())) {
        return Err(ApiError::new(
            ErrorCode::CsrfRejected,
            "the form was sent without its CSRF token; reload the page and try again",
        )
        .into());
    }
    app.store.delete_session(&digest(&viewer.session)).await?;
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&app, &request_headers, SESSION_COOKIE, "", 0),
    );
    Ok(response)
}

/// Renders a full page for a viewer.
pub(crate) fn page(viewer: &Viewer, title: &str, current: &str, body: Markup) -> Markup {
    layout::page(viewer, title, current, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_page_that_panics_is_answered_with_the_error_page_without_its_message() {
        use http_body_util::BodyExt as _;
        use tower::ServiceExt as _;

        async fn boom() -> &'static str {
            panic!("secret detail of a bug")
        }
        let routes = answering_panics_with_a_page(Router::new().route("/boom", get(boom)));
        let response = routes
            .oneshot(
                Request::get("/boom")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let page = String::from_utf8_lossy(&body);
        assert!(page.contains("Something went wrong"), "{page}");
        assert!(page.contains("internal"), "{page}");
        assert!(!page.contains("secret detail"), "{page}");
    }

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(
            local_path(Some("/events?type=invoice.paid")),
            "/events?type=invoice.paid"
        );
        assert_eq!(local_path(Some("//evil.example.com")), "/");
        assert_eq!(local_path(Some("https://evil.example.com")), "/");
        assert_eq!(local_path(Some("/\\evil.example.com")), "/");
        assert_eq!(local_path(Some("/\t/evil.example.com")), "/");
        assert_eq!(local_path(Some("/\n/evil.example.com")), "/");
        assert_eq!(local_path(Some("/ /evil.example.com")), "/");
        assert_eq!(
            local_path(Some("/events?type=x&q=%20y")),
            "/events?type=x&q=%20y"
        );
        assert_eq!(local_path(Some("/login")), "/");
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; billhook_session=abc; b=2"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            url_encode("/events?type=a b&x"),
            "/events%3Ftype%3Da%20b%26x"
        );
    }
}
