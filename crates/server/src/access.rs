//! Who is asking: the configuration's root token, a stored admin token, or a console session,
//! and what its scope allows.
//!
//! Tokens arrive as `Authorization: Bearer …` (the API and the CLI) or were exchanged for a
//! session cookie at the console's login. Only digests are stored; comparisons of the root token
//! are constant-time, and stored tokens are found by their digest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use billhook_core::access::{Scope, digest};
use billhook_core::ids::TokenId;
use billhook_core::time::Timestamp;
use billhook_providers::auth::Secret;
use billhook_store::{ROOT_TOKEN, SessionRecord, Store, StoreError};
use subtle::ConstantTimeEq;

/// A token's `last_used_at` is written at most this often, so reads do not become writes.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Which token a request or session acts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRef {
    /// The configuration's admin token.
    Root,
    Stored(TokenId),
}

impl TokenRef {
    /// How sessions record it.
    pub fn as_session_owner(&self) -> String {
        match self {
            TokenRef::Root => ROOT_TOKEN.to_owned(),
            TokenRef::Stored(id) => id.to_string(),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub token: TokenRef,
    pub scope: Scope,
}

/// Checks tokens and sessions against the configuration and the store.
pub struct AccessControl {
    root_digest: String,
    last_touched: Mutex<HashMap<TokenId, Instant>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

/// Invalid tokens a client address presented in the current window.
#[derive(Debug, Clone, Copy)]
struct Failures {
    since: Instant,
    count: u32,
}

/// How many invalid tokens a client address may present in [`FAILURE_WINDOW`] before it is
/// refused without a check until the window ends: guessing a token is then slow, while an
/// operator who mistyped one is not locked out for long.
pub const FAILURES_ALLOWED: u32 = 20;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Client addresses remembered at most; past it, windows already over are forgotten first.
const FAILURES_REMEMBERED: usize = 10_000;

impl AccessControl {
    pub fn new(root: Secret) -> Self {
        let root_digest = digest(root.expose());
        Self {
            root_digest,
            last_touched: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The caller a bearer token stands for, if any.
    pub async fn token(&self, store: &Store, token: &str) -> Result<Option<Access>, StoreError> {
        // Compared by digest: equal lengths, so the time taken says nothing of the root token's.
        let presented = digest(token);
        if bool::from(presented.as_bytes().ct_eq(self.root_digest.as_bytes())) {
            return Ok(Some(Access {
                token: TokenRef::Root,
                scope: Scope::Admin,
            }));
        }
        let Some(record) = store.token_by_digest(&presented).await? else {
            return Ok(None);
        };
        self.touch(store, record.id).await;
        Ok(Some(Access {
            token: TokenRef::Stored(record.id),
            scope: record.scope,
        }))
    }

    /// How long `client` must wait before presenting a token again, if it presented too many
    /// invalid ones lately.
    pub fn refused_for(&self, client: IpAddr) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let entry = failures.get(&client)?;
        let elapsed = entry.since.elapsed();
        (entry.count >= FAILURES_ALLOWED && elapsed < FAILURE_WINDOW)
            .then(|| FAILURE_WINDOW - elapsed)
    }

    /// Counts an invalid token from `client`. The first of a window and the one that reaches
    /// the limit are logged, not every one: a guesser would otherwise fill the log.
    pub fn failed(&self, client: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= FAILURES_REMEMBERED && !failures.contains_key(&client) {
            failures.retain(|_, entry| entry.since.elapsed() < FAILURE_WINDOW);
            if failures.len() >= FAILURES_REMEMBERED {
                // Every one of them is guessing right now: make room, oldest window first.
                if let Some(oldest) = failures
                    .iter()
                    .min_by_key(|(_, entry)| entry.since)
                    .map(|(ip, _)| *ip)
                {
                    failures.remove(&oldest);
                }
            }
        }
        let now = Instant::now();
        let entry = failures.entry(client).or_insert(Failures {
            since: now,
            count: 0,
        });
        if now.duration_since(entry.since) >= FAILURE_WINDOW {
            *entry = Failures {
                since: now,
                count: 0,
            };
        }
        entry.count += 1;
        if entry.count == 1 {
            tracing::warn!(%client, "refused an invalid admin token");
        } else if entry.count == FAILURES_ALLOWED {
            tracing::warn!(
                %client,
                failures = entry.count,
                "too many invalid admin tokens; refusing this address until its window ends"
            );
        }
    }

    /// A valid token from `client`: its earlier mistakes no longer count.
    pub fn succeeded(&self, client: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&client);
    }

    /// The caller a console session cookie stands for, with the session's CSRF token.
    pub async fn session(
        &self,
        store: &Store,
        cookie: &str,
    ) -> Result<Option<(Access, SessionRecord)>, StoreError> {
        let Some(session) = store.session(&digest(cookie), Timestamp::now()).await? else {
            return Ok(None);
        };
        let token = if session.token_id == ROOT_TOKEN {
            // A changed root token ends the sessions it opened.
            if session.token_digest != self.root_digest {
                return Ok(None);
            }
            TokenRef::Root
        } else {
            if !session.token_live {
                return Ok(None);
            }
            match session.token_id.parse::<TokenId>() {
                Ok(id) => {
                    self.touch(store, id).await;
                    TokenRef::Stored(id)
                }
                Err(_) => return Ok(None),
            }
        };
        Ok(Some((
            Access {
                token,
                scope: session.scope,
            },
            session,
        )))
    }

    /// Records a stored token's use, at most once per [`TOUCH_EVERY`]; a failure only loses the
    /// timestamp.
    async fn touch(&self, store: &Store, id: TokenId) {
        let due = {
            let mut touched = self.last_touched.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            match touched.get(&id) {
                Some(at) if now.duration_since(*at) < TOUCH_EVERY => false,
                _ => {
                    touched.insert(id, now);
                    true
                }
            }
        };
        if due && let Err(error) = store.touch_token(id, Timestamp::now()).await {
            tracing::debug!(%error, "could not record a token's use");
        }
    }
}
