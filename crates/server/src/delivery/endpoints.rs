//! Endpoints as the delivery runtime holds them, and the validation every endpoint definition
//! passes, whether it comes from the API or the configuration file.

use std::collections::HashMap;
use std::sync::Arc;

use billhook_core::event::EventTypePattern;
use billhook_core::ids::EndpointId;
use billhook_core::signing::EndpointSecret;
use billhook_core::subscription::{PayloadFormat, Subscriber, Subscription};
use billhook_core::time::Timestamp;
use billhook_store::EndpointRecord;
use http::{HeaderName, HeaderValue};
use url::Url;

use super::ssrf::{DestinationPolicy, parse_destination};

/// Headers billhook sets itself, or that speak of the connection rather than the message; an
/// endpoint cannot set them.
const RESERVED_HEADERS: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
];

/// More headers of the connection, refused since endpoints could already be stored with them:
/// such a stored endpoint keeps working, without sending them (see [`sendable_headers`]).
const CONNECTION_HEADERS: &[&str] = &[
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "proxy-authorization",
    "proxy-connection",
];

/// A stored endpoint's headers without those of [`CONNECTION_HEADERS`], which it may hold from
/// before they were refused.
pub fn sendable_headers(headers: &[(String, String)]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| !CONNECTION_HEADERS.contains(&name.to_ascii_lowercase().as_str()))
        .cloned()
        .collect()
}

/// Limits on what an endpoint may ask for.
pub const MAX_RATE_LIMIT: u32 = 10_000;
pub const MAX_CONCURRENCY: u32 = 1_000;

/// An endpoint ready to deliver to.
#[derive(Debug, Clone)]
pub struct EndpointRuntime {
    pub id: EndpointId,
    pub url: Url,
    /// The same destination as the HTTP client takes it, parsed once rather than per attempt.
    pub uri: http::Uri,
    pub format: PayloadFormat,
    pub subscription: Subscription,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub rate_limit: Option<u32>,
    pub max_concurrency: u32,
    pub enabled: bool,
    pub failing_since: Option<Timestamp>,
    /// Newest first, with the time each stops signing (`None` for the current one).
    secrets: Vec<(EndpointSecret, Option<Timestamp>)>,
}

impl EndpointRuntime {
    /// Builds the runtime view of a stored endpoint. Stored endpoints were validated when written,
    /// so a failure here means the row was edited by hand; such an endpoint is skipped.
    pub fn from_record(record: &EndpointRecord, default_concurrency: u32) -> Result<Self, String> {
        let url = parse_destination(&record.url).map_err(|e| e.to_string())?;
        let uri = http::Uri::try_from(url.as_str()).map_err(|e| e.to_string())?;
        let definition = EndpointDefinition::check_static(
            &record.event_types,
            record.sources.as_deref(),
            &record.format,
            &sendable_headers(&record.headers),
            record.rate_limit,
            record.max_concurrency,
        )?;
        // Every secret must read: one dropped could leave nothing to sign with, and the
        // deliveries would go out unsigned.
        let secrets = record
            .secrets
            .iter()
            .map(|s| {
                EndpointSecret::parse(&s.secret)
                    .map(|key| (key, s.expires_at))
                    .map_err(|_| "one of its signing secrets does not read".to_owned())
            })
            .collect::<Result<Vec<_>, _>>()?;
        if secrets.is_empty() {
            return Err("it has no signing secret".to_owned());
        }
        Ok(Self {
            id: record.id,
            url,
            uri,
            format: definition.format,
            subscription: definition.subscription,
            headers: definition.headers,
            rate_limit: record.rate_limit,
            max_concurrency: record.max_concurrency.unwrap_or(default_concurrency),
            enabled: record.enabled,
            failing_since: record.failing_since,
            secrets,
        })
    }

    /// The secrets that sign at `now`: the current one and any rotated out less than the overlap
    /// ago.
    pub fn live_secrets(&self, now: Timestamp) -> impl Iterator<Item = &EndpointSecret> {
        self.secrets
            .iter()
            .filter(move |(_, expires)| expires.is_none_or(|at| at > now))
            .map(|(secret, _)| secret)
    }

    pub fn subscriber(&self) -> Subscriber {
        Subscriber {
            id: self.id,
            subscription: self.subscription.clone(),
            format: self.format,
            enabled: self.enabled,
        }
    }
}

/// The endpoints the runtime knows, by id, with the subscribers ingest fans out to.
#[derive(Debug, Default, Clone)]
pub struct EndpointSet {
    pub by_id: HashMap<EndpointId, Arc<EndpointRuntime>>,
    pub subscribers: Vec<Subscriber>,
}

impl EndpointSet {
    pub fn build(records: &[EndpointRecord], default_concurrency: u32) -> Self {
        let mut set = EndpointSet::default();
        for record in records {
            match EndpointRuntime::from_record(record, default_concurrency) {
                Ok(endpoint) => {
                    set.subscribers.push(endpoint.subscriber());
                    set.by_id.insert(endpoint.id, Arc::new(endpoint));
                }
                Err(error) => {
                    tracing::error!(endpoint = %record.id, %error, "skipping an endpoint that cannot be used");
                }
            }
        }
        set
    }
}

/// The checked parts of an endpoint definition.
#[derive(Debug, Clone)]
pub struct EndpointDefinition {
    pub subscription: Subscription,
    pub format: PayloadFormat,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl EndpointDefinition {
    /// Checks everything but the URL's destination: patterns, sources, format, headers, limits.
    pub fn check_static(
        event_types: &[String],
        sources: Option<&[String]>,
        format: &str,
        headers: &[(String, String)],
        rate_limit: Option<u32>,
        max_concurrency: Option<u32>,
    ) -> Result<Self, String> {
        if event_types.is_empty() {
            return Err("event_types needs at least one pattern (`*` for every event)".to_owned());
        }
        let patterns = event_types
            .iter()
            .map(|p| EventTypePattern::parse(p).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        if sources.is_some_and(<[String]>::is_empty) {
            return Err("sources, when given, needs at least one source name".to_owned());
        }
        let format: PayloadFormat = format.parse()?;
        let mut checked_headers = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a valid header name"))?;
            if RESERVED_HEADERS.contains(&header.as_str())
                || CONNECTION_HEADERS.contains(&header.as_str())
                || header.as_str().starts_with("billhook-")
            {
                return Err(format!(
                    "the `{name}` header is billhook's own or the connection's, and cannot be set"
                ));
            }
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("the value of `{name}` is not a valid header value"))?;
            checked_headers.push((header, value));
        }
        if rate_limit.is_some_and(|r| r == 0 || r > MAX_RATE_LIMIT) {
            return Err(format!(
                "rate_limit must be between 1 and {MAX_RATE_LIMIT} requests per second"
            ));
        }
        if max_concurrency.is_some_and(|c| c == 0 || c > MAX_CONCURRENCY) {
            return Err(format!(
                "max_concurrency must be between 1 and {MAX_CONCURRENCY}"
            ));
        }
        Ok(Self {
            subscription: Subscription {
                event_types: patterns,
                sources: sources.map(<[String]>::to_vec),
            },
            format,
            headers: checked_headers,
        })
    }
}

/// Checks a destination URL for a new or changed endpoint: its shape and, through the SSRF
/// guard, every address it resolves to.
pub async fn check_destination(policy: &DestinationPolicy, url: &str) -> Result<(), String> {
    policy
        .check_url(url)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use billhook_core::ids::EndpointId;
    use billhook_core::signing::EndpointSecret;
    use billhook_core::time::Timestamp;
    use billhook_store::{EndpointRecord, SecretRecord};

    use super::*;

    fn record(secrets: &[&str]) -> EndpointRecord {
        let now = Timestamp::now();
        EndpointRecord {
            id: EndpointId::new(),
            name: None,
            url: "https://hooks.example.com/in".to_owned(),
            description: String::new(),
            event_types: vec!["*".to_owned()],
            sources: None,
            format: "canonical".to_owned(),
            headers: Vec::new(),
            rate_limit: None,
            max_concurrency: None,
            enabled: true,
            disabled_reason: None,
            failing_since: None,
            last_success_at: None,
            last_failure_at: None,
            last_error: None,
            created_at: now,
            updated_at: now,
            secrets: secrets
                .iter()
                .map(|secret| SecretRecord {
                    secret: (*secret).to_owned(),
                    created_at: now,
                    expires_at: None,
                })
                .collect(),
        }
    }

    /// An endpoint whose stored secrets do not all read (a row edited by hand) is skipped, not
    /// sent to with what is left, which could be nothing: deliveries would go out unsigned.
    #[test]
    fn an_endpoint_without_readable_secrets_is_skipped() {
        let good = EndpointSecret::generate().expose();
        let usable = record(&[&good]);
        let garbled = record(&["whsec_not base64"]);
        let partly = record(&[&good, "garbage"]);
        let none = record(&[]);
        let set = EndpointSet::build(&[usable.clone(), garbled, partly, none], 4);
        assert_eq!(
            set.by_id.keys().copied().collect::<Vec<_>>(),
            vec![usable.id]
        );
    }

    /// An endpoint stored with a header of the connection from before those were refused keeps
    /// working, without sending it.
    #[test]
    fn a_stored_connection_header_is_left_out_not_fatal() {
        let mut stored = record(&[&EndpointSecret::generate().expose()]);
        stored.headers = vec![
            ("Expect".to_owned(), "100-continue".to_owned()),
            ("x-team".to_owned(), "payments".to_owned()),
        ];
        let endpoint = EndpointRuntime::from_record(&stored, 4).unwrap();
        let names: Vec<&str> = endpoint.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-team"]);
        assert!(
            EndpointDefinition::check_static(
                &stored.event_types,
                None,
                "canonical",
                &stored.headers,
                None,
                None
            )
            .is_err(),
            "refused as new input"
        );
    }
}
