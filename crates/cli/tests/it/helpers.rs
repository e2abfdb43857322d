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
    };
}

pub const ADMIN_TOKEN: &str = "test-admin-token";
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

/// A running billhook for one test.
pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: Arc<tempfile::TempDir>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, "").await
}

/// Starts billhook with the test sources plus `extra` TOML appended.
pub async fn spawn_app_with(backend: Backend, extra: &str) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let data_dir = dir.path().to_path_buf();
    let text = format!("{}\n{extra}", test_config(&data_dir));
    let config = Config::from_toml(&text).unwrap();
    match backend {
        Backend::Sqlite => {}
    }
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
        _dir: dir,
    }
}

impl TestApp {
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

    /// GET on the admin API with the admin token; the status and JSON body.
    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
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
