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
        let entry = failures.get(&guessing_unit(client))?;
        let elapsed = entry.since.elapsed();
        (entry.count >= FAILURES_ALLOWED && elapsed < FAILURE_WINDOW)
            .then(|| FAILURE_WINDOW - elapsed)
    }

    /// Counts an invalid token from `client`. The first of a window and the one that reaches
    /// the limit are logged, not every one: a guesser would otherwise fill the log. A valid
    /// token does not clear the count, or a holder of any token could guess on between two
    /// requests of its own.
    pub fn failed(&self, client: IpAddr) {
        let unit = guessing_unit(client);
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= FAILURES_REMEMBERED && !failures.contains_key(&unit) {
            failures.retain(|_, entry| entry.since.elapsed() < FAILURE_WINDOW);
            if failures.len() >= FAILURES_REMEMBERED {
                // Room is made from addresses not refused yet, oldest first; never by letting
                // one that is refused go.
                let Some(oldest) = failures
                    .iter()
                    .filter(|(_, entry)| entry.count < FAILURES_ALLOWED)
                    .min_by_key(|(_, entry)| entry.since)
                    .map(|(unit, _)| *unit)
                else {
                    return;
                };
                failures.remove(&oldest);
            }
        }
        let now = Instant::now();
        let entry = failures.entry(unit).or_insert(Failures {
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

/// What invalid tokens are counted by: an IPv4 address, or an IPv6 address's /64, which one
/// client usually holds whole (counting single addresses would let it rotate through them).
fn guessing_unit(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(segments.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control() -> AccessControl {
        AccessControl::new(Secret::new("root-token-for-tests".to_owned()))
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        let access = control();
        for n in 0..FAILURES_ALLOWED {
            access.failed(format!("2001:db8:1:2::{n:x}").parse().unwrap());
        }
        let neighbour: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert!(access.refused_for(neighbour).is_some(), "the same /64");
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(access.refused_for(elsewhere).is_none(), "another /64");
    }

    /// A crowd of addresses cannot free a refused one by filling the table.
    #[test]
    fn a_refused_address_is_never_forgotten_to_make_room() {
        let access = control();
        let guesser: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..FAILURES_ALLOWED {
            access.failed(guesser);
        }
        for n in 0..(FAILURES_REMEMBERED as u32 + 10) {
            access.failed(IpAddr::V4((0x0b00_0000 + n).into()));
        }
        assert!(access.refused_for(guesser).is_some());
        let remembered = access.failures.lock().unwrap().len();
        assert!(remembered <= FAILURES_REMEMBERED, "{remembered}");
    }
}
