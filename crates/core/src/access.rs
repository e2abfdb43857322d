//! Who may use the admin API and the console: admin tokens with a scope, and console sessions.
//!
//! Tokens and session cookies are random secrets shown once; billhook stores only their SHA-256
//! digests. A digest of a 256-bit random secret needs no salt or slow hash: there is nothing to
//! guess from it.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read everything except endpoint secrets and header values; change nothing.
    Read,
    /// Everything.
    Admin,
}

impl Scope {
    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    /// Whether this scope covers `needed`.
    pub fn allows(&self, needed: Scope) -> bool {
        *self >= needed
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text that names no scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a scope: read or admin")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;
    fn from_str(text: &str) -> Result<Self, UnknownScope> {
        match text {
            "read" => Ok(Scope::Read),
            "admin" => Ok(Scope::Admin),
            other => Err(UnknownScope(other.to_owned())),
        }
    }
}

/// The prefix of every token billhook issues, so they are recognisable in leaked-secret scans.
pub const TOKEN_PREFIX: &str = "bh_";

/// A fresh secret: 32 random bytes, base64url.
fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A new admin token (`bh_…`), to be shown once.
pub fn generate_token() -> String {
    format!("{TOKEN_PREFIX}{}", random_secret())
}

/// A new console session cookie value or CSRF token.
pub fn generate_session_secret() -> String {
    random_secret()
}

/// The digest billhook stores for a token or session secret (hex SHA-256).
pub fn digest(secret: &str) -> String {
    let hash = Sha256::digest(secret.as_bytes());
    let mut text = String::with_capacity(64);
    for byte in hash {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// The beginning of a token, enough to recognise it in a listing.
pub fn token_hint(token: &str) -> String {
    token.chars().take(TOKEN_PREFIX.len() + 6).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_digested() {
        let first = generate_token();
        let second = generate_token();
        assert!(first.starts_with("bh_"));
        assert_eq!(first.len(), 3 + 43);
        assert_ne!(first, second);
        assert_eq!(digest(&first).len(), 64);
        assert_eq!(digest(&first), digest(&first));
        assert_ne!(digest(&first), digest(&second));
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(token_hint(&first).len(), 9);
    }

    #[test]
    fn admin_covers_read_but_not_the_reverse() {
        assert!(Scope::Admin.allows(Scope::Read));
        assert!(Scope::Admin.allows(Scope::Admin));
        assert!(Scope::Read.allows(Scope::Read));
        assert!(!Scope::Read.allows(Scope::Admin));
        assert_eq!("read".parse::<Scope>().unwrap(), Scope::Read);
        assert!("root".parse::<Scope>().is_err());
    }
}
