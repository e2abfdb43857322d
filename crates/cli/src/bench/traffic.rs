//! The bench's traffic: provider-faithful messages from the emulator, built before the clock
//! starts and signed as each is sent (the provider signs at sending time, and a JWT's `iat` must
//! be fresh).

use std::time::Instant;

use billhook_core::time::Timestamp;
use billhook_providers::Provider;
use billhook_providers::auth::SourceAuth;
use billhook_providers::emulate::GenerateOptions;
use bytes::Bytes;

use crate::CliError;

/// A source of the target billhook the bench posts to.
pub(crate) struct Source {
    pub provider: &'static dyn Provider,
    pub auth: SourceAuth,
    /// `…/ingest/{name}` with the path token when the source has one, parsed once.
    pub uri: http::Uri,
}

/// One message, ready but for its signature.
pub(crate) struct Message {
    pub source: usize,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Message {
    /// The headers to send now: the provider's own, its signature or credential, and the
    /// content type unless the provider's own carry it (sent twice, it would be a request no
    /// provider sends).
    pub(crate) fn signed_headers(&self, source: &Source) -> Vec<(String, String)> {
        let mut headers = self.headers.clone();
        headers.extend(
            source
                .provider
                .sign(&source.auth, &self.body, Timestamp::now()),
        );
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        {
            headers.push(("content-type".to_owned(), "application/json".to_owned()));
        }
        headers
    }
}

/// Events left out of the mix: a member revocation is deduplicated on the member's id alone,
/// a six-digit `KHUID…` number, so tens of thousands of them would repeat ids and be answered as
/// duplicates (as the real network's would). Revocations are rare in real traffic anyway.
const NOT_IN_MIX: &[(&str, &str)] = &[("caminvoice", "ENTITY.REVOKED")];

/// The mix: every emulated event of every chosen source, in turn.
pub(crate) struct Mix {
    kinds: Vec<(usize, &'static str)>,
}

impl Mix {
    pub(crate) fn new(sources: &[Source]) -> Self {
        let kinds = sources
            .iter()
            .enumerate()
            .flat_map(|(index, source)| {
                source
                    .provider
                    .emulated_events()
                    .iter()
                    .filter(|event| !NOT_IN_MIX.contains(&(source.provider.name(), event.name)))
                    .map(move |event| (index, event.name))
            })
            .collect();
        Self { kinds }
    }

    pub(crate) fn len(&self) -> usize {
        self.kinds.len()
    }

    /// Builds messages `range` of the run (message `n` is kind `n % len`, seeded by `seed + n`),
    /// on every core, with `progress` told of each thousand.
    pub(crate) fn build(
        &self,
        sources: &[Source],
        range: std::ops::Range<u64>,
        seed: u64,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<Message>, CliError> {
        let now = Timestamp::now();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let total = range.end - range.start;
        let chunk = total.div_ceil(threads).max(1);
        let started = Instant::now();
        let parts: Vec<Result<Vec<Message>, CliError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let low = range.start + t * chunk;
                    let high = (low + chunk).min(range.end);
                    scope.spawn(move || {
                        (low..high)
                            .map(|n| {
                                if n % 1000 == 0 {
                                    progress(1000);
                                }
                                self.message(sources, n, seed.wrapping_add(n), now)
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(CliError::Io("a builder thread panicked".into())))
                })
                .collect()
        });
        let mut messages = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for part in parts {
            messages.extend(part?);
        }
        tracing::debug!(count = messages.len(), elapsed = ?started.elapsed(), "built bench messages");
        Ok(messages)
    }

    fn message(
        &self,
        sources: &[Source],
        n: u64,
        seed: u64,
        now: Timestamp,
    ) -> Result<Message, CliError> {
        let (source, event) = self.kinds[(n % self.kinds.len() as u64) as usize];
        let mut options = GenerateOptions::new(now, Some(seed));
        let generated = sources[source]
            .provider
            .generate(event, &mut options)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        Ok(Message {
            source,
            body: Bytes::from(generated.body()),
            headers: generated.headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use billhook_providers::auth::Secret;
    use billhook_providers::{InboundRequest, PROVIDERS};

    use super::*;

    fn all_sources() -> Vec<Source> {
        PROVIDERS
            .iter()
            .map(|&provider| Source {
                provider,
                auth: SourceAuth::Signature {
                    secrets: vec![Secret::new("bench-test")],
                },
                uri: format!("http://127.0.0.1:1/ingest/{}", provider.name())
                    .parse()
                    .unwrap(),
            })
            .collect()
    }

    /// A duplicate would be answered `"duplicate": true` and deliver nothing: every message of a
    /// run must be new to billhook, whatever the provider's dedup key is made of.
    #[test]
    fn every_message_of_a_run_is_new_to_billhook() {
        let sources = all_sources();
        let mix = Mix::new(&sources);
        let emulated: usize = PROVIDERS.iter().map(|p| p.emulated_events().len()).sum();
        assert_eq!(mix.len(), emulated - NOT_IN_MIX.len());
        let messages = mix.build(&sources, 0..30_000, 1, &|_| {}).unwrap();
        assert_eq!(messages.len(), 30_000);
        let mut keys = HashSet::new();
        let headers_of = |message: &Message| {
            let mut map = http::HeaderMap::new();
            for (name, value) in &message.headers {
                map.insert(
                    http::HeaderName::try_from(name.as_str()).unwrap(),
                    http::HeaderValue::try_from(value.as_str()).unwrap(),
                );
            }
            map
        };
        for message in &messages {
            let source = &sources[message.source];
            let headers = headers_of(message);
            let request = InboundRequest {
                headers: &headers,
                body: &message.body,
                remote_ip: None,
                path_token: None,
                received_at: Timestamp::now(),
            };
            let sent = message.signed_headers(source);
            for name in ["content-type", "user-agent"] {
                assert!(
                    sent.iter()
                        .filter(|(set, _)| set.eq_ignore_ascii_case(name))
                        .count()
                        <= 1,
                    "{} sends {name} twice",
                    source.provider.name()
                );
            }
            let normalized = source.provider.normalize(&request).unwrap();
            for key in std::iter::once(normalized.dedup_key).chain(normalized.body_dedup_key) {
                assert!(
                    keys.insert((source.provider.name(), key.clone())),
                    "{} sent `{key}` twice",
                    source.provider.name(),
                );
            }
        }
    }
}
