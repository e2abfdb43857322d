//! A small client for the admin API, used by the CLI's inspection and replay commands.

use std::time::Duration;

use serde_json::Value;

use crate::serve::{load_config, stored_admin_token};
use crate::{CliError, Remote};

/// `text` as one segment of a path: an id given on the command line may hold `/`, `#`, `?` or
/// `%` (a GST invoice number such as `INV/2026/42` does), which would otherwise change the path.
pub(crate) fn segment(text: &str) -> percent_encoding::PercentEncode<'_> {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC)
}

/// Whether `base` names this machine (a loopback address or `localhost`).
fn is_local(base: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(base) else {
        return false;
    };
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    /// The most one request may take, answer included (`--timeout`), so that a server that
    /// accepted the connection and went quiet is reported rather than waited on for ever;
    /// `None` for the commands that take as long as there is data
    /// ([`Client::without_time_limit`]).
    time_limit: Option<Duration>,
}

impl Client {
    /// Resolves the server URL and admin token from flags, environment and configuration.
    pub(crate) fn connect(remote: &Remote) -> Result<Self, CliError> {
        let config = load_config(remote.config.as_deref())?;
        // A blank flag or variable (an env file's placeholder) is one not given, as `serve`
        // takes a blank admin token.
        let given = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        let url = given(&remote.url);
        let base = url
            .clone()
            .unwrap_or_else(|| format!("http://{}", config.listen))
            .trim_end_matches('/')
            .to_owned();
        // The server the configuration describes (its `listen`) is the one its token is for.
        let local = url.is_none() || is_local(&base);
        // A token from the data directory, or from a configuration found there rather than
        // named with --config, is this machine's server's: a --url elsewhere (a staging host
        // in BILLHOOK_URL) must not receive it.
        let own = local || remote.config.is_some();
        let token = given(&remote.token)
            .or_else(|| {
                own.then(|| given(&config.admin_token.as_ref().map(|t| t.expose().to_owned())))
                    .flatten()
            })
            .or_else(|| local.then(|| stored_admin_token(&config.data_dir)).flatten())
            // As the server reads it (a secret from a file often ends in a newline).
            .map(|token| token.trim().to_owned())
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                CliError::Usage(
                    "no admin token: pass --token, set BILLHOOK_ADMIN_TOKEN, or run where the data directory is"
                        .to_owned(),
                )
            })?;
        if !local && base.starts_with("http://") {
            eprintln!(
                "billhook: warning: sending the admin token to {base} over plain HTTP, readable on the way; use https"
            );
        }
        // The admin API never redirects; following one could take the bearer token elsewhere.
        let mut http = reqwest::Client::builder()
            .user_agent(concat!("billhook-cli/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10));
        if local {
            // This machine's server is reached directly: an `HTTP_PROXY` would otherwise carry
            // the data directory's token over plain HTTP to the proxy's host.
            http = http.no_proxy();
        }
        let http = http.build().map_err(|e| CliError::Io(e.to_string()))?;
        Ok(Self {
            http,
            base,
            token,
            time_limit: Some(Duration::from_secs(remote.timeout)),
        })
    }

    /// For a prune, an export or a recovery, which take as long as there is data.
    pub(crate) fn without_time_limit(self) -> Self {
        Self {
            time_limit: None,
            ..self
        }
    }

    pub(crate) async fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Value, CliError> {
        let request = self.http.get(format!("{}{path}", self.base)).query(query);
        self.send(request).await
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        self.send(request).await
    }

    pub(crate) async fn patch(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        let request = self
            .http
            .patch(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        self.send(request).await
    }

    pub(crate) async fn delete(&self, path: &str) -> Result<Value, CliError> {
        let request = self.http.delete(format!("{}{path}", self.base));
        self.send(request).await
    }

    /// A CSV export: its text, and whether the server cut it short at its row limit (it says
    /// so in a header, since the body alone looks whole).
    pub(crate) async fn export(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<(String, bool), CliError> {
        let request = self.http.get(format!("{}{path}", self.base)).query(query);
        let (headers, bytes) = self.send_raw(request).await?;
        let csv = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/csv"));
        if !csv {
            return Err(CliError::Io(format!(
                "{} answered with something that is not billhook's CSV: is --url billhook's address?",
                self.base
            )));
        }
        let truncated = headers
            .get("x-billhook-truncated")
            .is_some_and(|value| value == "true");
        let text = String::from_utf8(bytes).map_err(|e| CliError::Io(e.to_string()))?;
        Ok((text, truncated))
    }

    /// A JSON answer; an empty one (a `204`) is `null`. Anything else that is not JSON did not
    /// come from billhook's API (a proxy's page, say): taken as done, it would print nothing
    /// done and exit 0.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, CliError> {
        let (_, bytes) = self.send_raw(request).await?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|_| {
            CliError::Io(format!(
                "{} answered with something that is not billhook's JSON: is --url billhook's address?",
                self.base
            ))
        })
    }

    /// Sends with the admin token; a successful answer's headers and body, or the API's error.
    async fn send_raw(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(reqwest::header::HeaderMap, Vec<u8>), CliError> {
        let request = match self.time_limit {
            Some(limit) => request.timeout(limit),
            None => request,
        };
        let unreachable = |error: reqwest::Error| CliError::Unreachable {
            url: self.base.clone(),
            reason: match self.time_limit {
                Some(limit) if error.is_timeout() => {
                    format!("no answer within {} s", limit.as_secs())
                }
                _ => error.to_string(),
            },
        };
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(unreachable)?;
        if status.is_success() {
            return Ok((headers, bytes.to_vec()));
        }
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Err(CliError::Api {
            status: status.as_u16(),
            code: body["code"].as_str().unwrap_or("unknown").to_owned(),
            message: body["message"]
                .as_str()
                .unwrap_or("the server gave no reason")
                .to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::is_local;

    #[test]
    fn local_means_this_machine() {
        for local in [
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://LOCALHOST",
            "http://[::1]:8080",
            "http://127.0.0.2",
            "http://0.0.0.0:8080",
        ] {
            assert!(is_local(local), "{local}");
        }
        for remote in [
            "http://10.0.0.5:8080",
            "https://billhook.example.com",
            "http://localhost.example.com",
            "not a url",
        ] {
            assert!(!is_local(remote), "{remote}");
        }
    }
}
