//! `spawn_app()` and friends: a real billhook on port 0 over a fresh database, and requests
//! signed the way each provider signs them (by the provider modules themselves).

use std::sync::Arc;

use billhook_core::time::Timestamp;
use billhook_providers::auth::Secret;
use billhook_providers::by_name;
use billhook_server::config::Config;
use serde_json::Value;
use tokio::sync::oneshot;

/// The database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL the tests use (`BILLHOOK_TEST_POSTGRES_URL`, default the local server).
pub fn postgres_base_url() -> String {
    std::env::var("BILLHOOK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A database URL for a new, empty schema of the test PostgreSQL. Schemas of earlier runs older
/// than an hour are dropped on the way.
pub async fn fresh_postgres_url() -> String {
    let base = postgres_base_url();
    let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("the test PostgreSQL at {base} is not reachable: {e}"));
    tokio::spawn(connection);
    let now = Timestamp::now().unix_millis();
    for row in client
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'billhook_it_%'",
            &[],
        )
        .await
        .unwrap()
    {
        let name: String = row.get(0);
        let created: i64 = name
            .split('_')
            .nth(2)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        if created < now - 3_600_000 {
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .await;
        }
    }
    let schema = format!("billhook_it_{now}_{:08x}", rand::random::<u32>());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-c%20search_path%3D{schema}")
}

/// Generates one `#[tokio::test]` per backend for each listed `async fn name(backend: Backend)`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The status billhook acknowledges a provider's webhooks with: 200 for Zwitch, whose docs
/// require it, 202 for the others.
pub fn ack_status(provider: &str) -> u16 {
    if provider.starts_with("zwitch") {
        200
    } else {
        202
    }
}
pub const RAZORPAY_SECRET: &str = "razorpay-test-secret";
pub const RAZORPAY_PREVIOUS_SECRET: &str = "razorpay-previous-secret";
pub const ZWITCH_SECRET: &str = "zwitch-test-secret";
pub const SETU_KEY: &str = "setu-api-key-value";
pub const CAMINVOICE_TOKEN: &str = "caminvoice-path-token-0123456789";

/// The sources every test server has.
pub fn test_config(data_dir: &std::path::Path) -> String {
    format!(
        r#"
data_dir = "{data_dir}"
admin_token = "{ADMIN_TOKEN}"

[[source]]
name = "razorpay"
provider = "razorpay"
secrets = ["{RAZORPAY_SECRET}", "{RAZORPAY_PREVIOUS_SECRET}"]

[[source]]
name = "zwitch"
provider = "zwitch"
secrets = ["{ZWITCH_SECRET}"]

[[source]]
name = "setu"
provider = "setu_bbps"
auth = {{ kind = "header", name = "X-BILL-WEBHOOK-API-KEY", value = "{SETU_KEY}" }}

[[source]]
name = "setu-jwt"
provider = "setu_bbps"
auth = {{ kind = "jwt_hs256", secret = "setu-jwt-secret" }}

[[source]]
name = "setu-basic"
provider = "setu_bbps"
auth = {{ kind = "basic", username = "setu", password = "basic-password" }}

[[source]]
name = "setu-office"
provider = "setu_bbps"
auth = {{ kind = "header", name = "X-BILL-WEBHOOK-API-KEY", value = "{SETU_KEY}" }}
allow_ips = ["10.20.30.0/24"]

[[source]]
name = "caminvoice"
provider = "caminvoice"
auth = {{ kind = "path_token", token = "{CAMINVOICE_TOKEN}" }}
"#,
        data_dir = data_dir.display()
    )
}

/// The `[delivery]` section tests use unless they bring their own: deliveries to this host are
/// allowed and retries come quickly.
pub const TEST_DELIVERY: &str = r#"
[delivery]
allow_private_destinations = ["127.0.0.0/8", "::1/128"]
retry_schedule = ["0s", "300ms", "300ms", "300ms", "300ms"]
jitter_percent = 0
request_timeout = "3s"
lease = "5s"
shutdown_grace = "3s"
"#;

/// A running billhook for one test.
pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    pub dir: Arc<tempfile::TempDir>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, "").await
}

/// Starts billhook with the test sources plus `extra` TOML appended (and [`TEST_DELIVERY`] when
/// `extra` has no `[delivery]` section of its own).
pub async fn spawn_app_with(backend: Backend, extra: &str) -> TestApp {
    spawn_app_in(backend, Arc::new(tempfile::tempdir().unwrap()), extra).await
}

/// Like [`spawn_app_with`], over an existing data directory (to restart on the same data).
/// Returns once the server is ready.
pub async fn spawn_app_in(backend: Backend, dir: Arc<tempfile::TempDir>, extra: &str) -> TestApp {
    let app = start_app_in(backend, dir, extra).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Ok(response) = app.http.get(app.url("/readyz")).send().await
            && response.status().is_success()
        {
            return app;
        }
        assert!(
            !app.task.as_ref().is_some_and(|task| task.is_finished()),
            "the server stopped while starting"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server was not ready within a minute"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Like [`spawn_app_in`], returning as soon as the server listens (it answers `503 starting`
/// until its start is done).
pub async fn start_app_in(backend: Backend, dir: Arc<tempfile::TempDir>, extra: &str) -> TestApp {
    let data_dir = dir.path().to_path_buf();
    let delivery = if extra.contains("[delivery]") {
        ""
    } else {
        TEST_DELIVERY
    };
    let database = match postgres_url_in(backend, &data_dir).await {
        None => String::new(),
        Some(url) => format!("database_url = \"{url}\"\n"),
    };
    // Keys before `extra`'s first table are top-level settings, which must come before any.
    let (top, tables) = match extra
        .find("\n[")
        .map(|at| at + 1)
        .or_else(|| extra.starts_with('[').then_some(0))
    {
        Some(at) => extra.split_at(at),
        None => (extra, ""),
    };
    let text = format!(
        "{database}{top}\n{}\n{delivery}\n{tables}",
        test_config(&data_dir)
    );
    // Written out too, so the CLI can be pointed at this server's sources with --config.
    std::fs::write(data_dir.join("billhook.toml"), &text).unwrap();
    let config = Config::from_toml(&text).unwrap();
    let settings = config
        .clone()
        .into_settings(Secret::new(ADMIN_TOKEN))
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        billhook_server::run(settings, listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    TestApp {
        address,
        http: reqwest::Client::new(),
        config,
        shutdown: Some(shutdown),
        task: Some(task),
        dir,
    }
}

/// The PostgreSQL URL of the test server kept in `data_dir` (one schema per test server, kept
/// across its restarts); `None` on SQLite.
async fn postgres_url_in(backend: Backend, data_dir: &std::path::Path) -> Option<String> {
    match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let remembered = data_dir.join("database-url");
            Some(match std::fs::read_to_string(&remembered) {
                Ok(url) => url,
                Err(_) => {
                    let url = fresh_postgres_url().await;
                    std::fs::write(&remembered, &url).unwrap();
                    url
                }
            })
        }
    }
}

/// The database a test server in `data_dir` uses, to prepare data before it starts.
pub async fn database_in(
    backend: Backend,
    data_dir: &std::path::Path,
) -> billhook_store::DatabaseConfig {
    match postgres_url_in(backend, data_dir).await {
        None => billhook_store::DatabaseConfig::Sqlite {
            path: data_dir.join(billhook_server::config::DATABASE_FILE),
        },
        Some(url) => billhook_store::DatabaseConfig::from_url(&url).unwrap(),
    }
}

impl TestApp {
    /// Runs the `billhook` binary with `args` against this server; its status and stdout.
    pub async fn cli(&self, args: &[&str]) -> (bool, String) {
        let config = self.dir.path().join("billhook.toml");
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_billhook"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .arg("--url")
            .arg(&self.address)
            .env_remove("BILLHOOK_ADMIN_TOKEN")
            .output()
            .await
            .unwrap();
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Posts `body` to `/ingest/{source}` signed as the source's provider signs (with the
    /// provider module's own signer), plus `extra` headers.
    pub async fn post_signed(
        &self,
        source: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> reqwest::Response {
        let settings = self
            .config
            .clone()
            .into_settings(Secret::new(ADMIN_TOKEN))
            .unwrap();
        let spec = &settings.sources[source].spec;
        let provider = by_name(spec.provider.name()).unwrap();
        let mut request = self
            .http
            .post(self.url(&format!(
                "/ingest/{source}{}",
                billhook_providers::auth::path_suffix(&spec.auth)
            )))
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (name, value) in provider.sign(&spec.auth, body, Timestamp::now()) {
            request = request.header(name, value);
        }
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    /// The metrics as Prometheus scrapes them (no token).
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// GET on the admin API with the admin token: the response as it came, for its headers
    /// or its exact text.
    pub async fn admin_get_response(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
    }

    /// GET on the admin API with the admin token; the status and JSON body.
    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        let response = self.admin_get_response(path).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn admin_patch(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .patch(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Creates an endpoint; returns its id and secret.
    pub async fn create_endpoint(&self, body: Value) -> (String, String) {
        let (status, created) = self.admin_post("/v1/endpoints", body).await;
        assert_eq!(status, 201, "{created}");
        (
            created["id"].as_str().unwrap().to_owned(),
            created["secret"].as_str().unwrap().to_owned(),
        )
    }

    /// Waits until `check` holds, polling; panics with `what` after `timeout`.
    pub async fn eventually<F, Fut>(&self, timeout: std::time::Duration, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        while !check().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// A provider fixture shipped with billhook.
pub fn fixture(path: &str) -> Vec<u8> {
    let full = format!(
        "{}/../providers/fixtures/{path}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// Every shipped fixture: (provider directory, file, source to post it to).
pub fn all_fixtures() -> Vec<(String, &'static str)> {
    let root = format!("{}/../providers/fixtures", env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for (dir, source) in [
        ("razorpay", "razorpay"),
        ("zwitch_upi", "zwitch"),
        ("bharat_connect", "zwitch"),
        ("setu_bbps", "setu"),
        ("caminvoice", "caminvoice"),
    ] {
        let mut files: Vec<String> = std::fs::read_dir(format!("{root}/{dir}"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        for file in files {
            out.push((format!("{dir}/{file}"), source));
        }
    }
    out
}

/// The value of the sample with exactly these name and labels in an OpenMetrics text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// One request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub at: std::time::Instant,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

impl Arrival {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// How a [`Receiver`] answers its `n`th request (0-based): status, extra headers, and a delay
/// before answering (`None` = never answer).
pub type Responder = Arc<
    dyn Fn(
            usize,
        ) -> (
            u16,
            Vec<(&'static str, String)>,
            Option<std::time::Duration>,
        ) + Send
        + Sync,
>;

/// A test endpoint: records every request and answers as told.
pub struct Receiver {
    pub url: String,
    arrivals: Arc<std::sync::Mutex<Vec<Arrival>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// A receiver that answers 200 at once.
    pub async fn ok() -> Self {
        Self::start(Arc::new(|_| (200, vec![], Some(std::time::Duration::ZERO)))).await
    }

    pub async fn start(respond: Responder) -> Self {
        let arrivals: Arc<std::sync::Mutex<Vec<Arrival>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let recorded = Arc::clone(&arrivals);
        let app =
            axum::Router::new().fallback(move |headers: http::HeaderMap, body: bytes::Bytes| {
                let recorded = Arc::clone(&recorded);
                let respond = Arc::clone(&respond);
                async move {
                    let index = {
                        let mut arrivals = recorded.lock().unwrap();
                        arrivals.push(Arrival {
                            at: std::time::Instant::now(),
                            headers,
                            body,
                        });
                        arrivals.len() - 1
                    };
                    let (status, headers, delay) = respond(index);
                    match delay {
                        Some(delay) => tokio::time::sleep(delay).await,
                        None => std::future::pending::<()>().await,
                    }
                    let mut response =
                        axum::response::Response::new(axum::body::Body::from("received"));
                    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    for (name, value) in headers {
                        response.headers_mut().insert(name, value.parse().unwrap());
                    }
                    response
                }
            });
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            arrivals,
            _server: server,
        }
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }

    /// Distinct `webhook-id`s received.
    pub fn message_ids(&self) -> std::collections::BTreeSet<String> {
        self.arrivals()
            .iter()
            .map(|a| a.header("webhook-id").to_owned())
            .collect()
    }
}

impl TestApp {
    /// Runs one statement on this server's database behind its back, to play what the API does
    /// not offer (another instance, a lapse); returns the number of rows it changed.
    pub async fn execute_sql(&self, sql: &str) -> u64 {
        match std::fs::read_to_string(self.dir.path().join("database-url")) {
            Ok(url) => {
                let (database, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                database.execute(sql, &[]).await.unwrap()
            }
            Err(_) => {
                let path = self.dir.path().join(billhook_server::config::DATABASE_FILE);
                let sql = sql.to_owned();
                tokio::task::spawn_blocking(move || {
                    let database = rusqlite::Connection::open(path).unwrap();
                    database
                        .busy_timeout(std::time::Duration::from_secs(10))
                        .unwrap();
                    database.execute(&sql, []).unwrap() as u64
                })
                .await
                .unwrap()
            }
        }
    }

    /// Another instance on the same database (PostgreSQL), with its own data directory.
    pub async fn another_instance(&self, extra: &str) -> TestApp {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let url = std::fs::read_to_string(self.dir.path().join("database-url"))
            .expect("another instance shares a PostgreSQL database");
        std::fs::write(dir.path().join("database-url"), url).unwrap();
        spawn_app_in(Backend::Postgres, dir, extra).await
    }
}

/// A TCP proxy in front of the test PostgreSQL that a test can cut and restore, to play a
/// database that goes away and comes back.
pub struct DatabaseProxy {
    pub port: u16,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl DatabaseProxy {
    /// A proxy on a free port, not yet forwarding.
    pub async fn new() -> Self {
        let port = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self {
            port,
            task: std::sync::Mutex::new(None),
        }
    }

    /// A database URL through this proxy for a fresh schema.
    pub async fn url(&self) -> String {
        let direct = fresh_postgres_url().await;
        direct.replacen("127.0.0.1:5432", &format!("127.0.0.1:{}", self.port), 1)
    }

    /// Starts forwarding to the real database.
    pub async fn up(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                connections.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Stops forwarding and cuts every open connection.
    pub async fn down(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Posts `count` distinct Zwitch payments (each its own message and payment); returns their
/// event ids in order.
pub async fn ingest_payments(app: &TestApp, count: usize, tag: &str) -> Vec<String> {
    let template = String::from_utf8(fixture("zwitch_upi/payments.updated.json")).unwrap();
    let mut ids = Vec::new();
    for n in 0..count {
        let body = template
            .replace("evl_tbs3NybYGbbjP5MMzptoFyU3W", &format!("evl_{tag}_{n}"))
            .replace("tx_LDOr1fte7Npd5xBTS6BMGuRd6", &format!("tx_{tag}_{n}"));
        let response = app.post_signed("zwitch", body.as_bytes(), &[]).await;
        assert_eq!(response.status().as_u16(), 200);
        let ack: Value = response.json().await.unwrap();
        ids.push(ack["events"][0].as_str().unwrap().to_owned());
    }
    ids
}

/// Opens a connection to `address` (host and port) and starts an admin request whose body never
/// comes. Once the server asks for the body (`100 Continue`) its handler is running: the request
/// is in flight until the request timeout, holding its connection and any stop.
pub async fn request_in_flight(address: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/endpoints HTTP/1.1\r\nHost: billhook\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("asked for the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 100"), "{answer}");
    stream
}
