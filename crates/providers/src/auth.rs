//! How a source proves a request came from its provider.
//!
//! Razorpay and Zwitch sign bodies with their own HMAC schemes (implemented in their modules). Setu
//! BBPS and CamInvoice document no scheme for these callbacks, so a source chooses one of the
//! credentials here: a static header, HTTP Basic, an HS256 JWT bearer token or a secret path token.
//! Any source may add an IP allow-list. Every comparison of a secret is constant-time.

use std::fmt;
use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as BASE64URL};
use billhook_core::entity::MAX_KEY_BYTES;
use hmac::{Hmac, KeyInit, Mac};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::InboundRequest;
use crate::registry::{self, Provider};

type HmacSha256 = Hmac<Sha256>;

/// A secret from the configuration. `Debug` never prints it; it reads from and writes to a
/// configuration as the plain string it is.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret's text, for signing and comparing. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// The kinds of authentication a source can be configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// The provider's own body signature (`secrets = [...]`).
    Signature,
    Header,
    Basic,
    JwtHs256,
    PathToken,
}

impl AuthKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthKind::Signature => "secrets (the provider's signature)",
            AuthKind::Header => "header",
            AuthKind::Basic => "basic",
            AuthKind::JwtHs256 => "jwt_hs256",
            AuthKind::PathToken => "path_token",
        }
    }
}

/// A source's configured authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceAuth {
    /// The provider's signing secrets, newest first; older ones verify retried messages.
    Signature { secrets: Vec<Secret> },
    /// A static header that must carry this value.
    Header {
        name: http::HeaderName,
        value: Secret,
    },
    /// HTTP Basic credentials.
    Basic { username: String, password: Secret },
    /// `Authorization: Bearer <jwt>` signed HS256 with this secret, `iat` at most `max_age_seconds` old.
    JwtHs256 {
        secret: Secret,
        max_age_seconds: i64,
    },
    /// A secret final path segment: `POST /ingest/{source}/{token}`.
    PathToken { token: Secret },
}

impl SourceAuth {
    pub fn kind(&self) -> AuthKind {
        match self {
            SourceAuth::Signature { .. } => AuthKind::Signature,
            SourceAuth::Header { .. } => AuthKind::Header,
            SourceAuth::Basic { .. } => AuthKind::Basic,
            SourceAuth::JwtHs256 { .. } => AuthKind::JwtHs256,
            SourceAuth::PathToken { .. } => AuthKind::PathToken,
        }
    }

    /// What makes it unusable, if anything: an empty credential, a JWT age under a second, or
    /// a path token too short to guess hard or holding what a URL path would change.
    fn problem(&self) -> Option<&'static str> {
        let problem = match self {
            SourceAuth::Signature { secrets } if secrets.is_empty() => "`secrets` is empty",
            SourceAuth::Signature { secrets } if secrets.iter().any(|s| s.expose().is_empty()) => {
                "one of `secrets` is empty"
            }
            SourceAuth::Header { value, .. } if value.expose().is_empty() => {
                "the header's `value` is empty"
            }
            SourceAuth::Basic { username, password }
                if username.is_empty() || password.expose().is_empty() =>
            {
                "`username` or `password` is empty"
            }
            // HTTP Basic splits the pair at its first colon: such a name could never match.
            SourceAuth::Basic { username, .. } if username.contains(':') => {
                "`username` may not hold `:`"
            }
            SourceAuth::JwtHs256 { secret, .. } if secret.expose().is_empty() => {
                "the JWT `secret` is empty"
            }
            SourceAuth::JwtHs256 {
                max_age_seconds, ..
            } if *max_age_seconds < 1 => "the JWT `max_age` must be at least 1s",
            SourceAuth::PathToken { token } if token.expose().len() < 16 => {
                "the path `token` must be at least 16 characters"
            }
            // Sent as one path segment, unencoded: `/`, `?`, `#` and `%` would change the URL.
            SourceAuth::PathToken { token } if !token.expose().bytes().all(is_path_safe) => {
                "the path `token` may hold only letters, digits and `-._~!$&'()*+,;=:@`"
            }
            _ => return None,
        };
        Some(problem)
    }
}

impl SourceAuth {
    /// What makes a usable credential weak, each thing once: short enough to guess, or, for a
    /// JWT, shorter than its hash (RFC 7518 asks 32 bytes for HS256) or accepted so long after
    /// it was issued that a captured token can be replayed for hours. Warned about at start,
    /// not refused: a provider may have issued it.
    pub fn weaknesses(&self) -> Vec<&'static str> {
        match self {
            SourceAuth::Header { value, .. } if value.expose().chars().count() < 16 => {
                vec!["the header's `value` is under 16 characters: easy to guess"]
            }
            SourceAuth::Basic { password, .. } if password.expose().chars().count() < 16 => {
                vec!["the Basic `password` is under 16 characters: easy to guess"]
            }
            SourceAuth::JwtHs256 {
                secret,
                max_age_seconds,
            } => [
                (secret.expose().len() < 32).then_some(
                    "the JWT `secret` is under 32 bytes, the least HS256 asks for (RFC 7518)",
                ),
                (*max_age_seconds > 3600).then_some(
                    "the JWT `max_age` is over an hour: a captured token can be replayed that long",
                ),
            ]
            .into_iter()
            .flatten()
            .collect(),
            _ => Vec::new(),
        }
    }
}

/// A URL path segment's own characters: unreserved, sub-delimiters, `:` and `@` (RFC 3986).
fn is_path_safe(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte)
}

/// A configured source: a name (the URL segment), its provider and how its requests are checked.
#[derive(Clone)]
pub struct SourceSpec {
    pub name: String,
    pub provider: &'static dyn Provider,
    pub auth: SourceAuth,
    pub allow_ips: Vec<IpNet>,
}

impl fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceSpec")
            .field("name", &self.name)
            .field("provider", &self.provider.name())
            .field("auth", &self.auth.kind())
            .field("allow_ips", &self.allow_ips)
            .finish()
    }
}

/// Why a source's configuration cannot be used. The server refuses to start on any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("source `{0}`: a name is 1-64 characters of a-z, 0-9, `-` and `_`")]
    BadName(String),
    #[error("source `{source_name}`: unknown provider `{provider}` (known: {known})")]
    UnknownProvider {
        source_name: String,
        provider: String,
        known: String,
    },
    #[error(
        "source `{source_name}` ({provider}) has no usable authentication: configure {accepted}"
    )]
    NoUsableAuth {
        source_name: String,
        provider: &'static str,
        accepted: String,
    },
    #[error("source `{source_name}` ({provider}): {problem}")]
    UnusableAuth {
        source_name: String,
        provider: &'static str,
        problem: &'static str,
    },
    #[error(
        "source `{source_name}` ({provider}) cannot use `{kind}` authentication: configure {accepted}"
    )]
    UnsupportedAuth {
        source_name: String,
        provider: &'static str,
        kind: &'static str,
        accepted: String,
    },
}

impl SourceSpec {
    /// The provider's reading of a verified request, its dedup key bounded
    /// ([`crate::bounded_dedup_key`]) as every stored key is. A message about an entity whose
    /// id is empty is refused: the ledger would merge every such entity into one, and a dedup
    /// key built on the id would take different messages for repeats.
    pub fn normalize(
        &self,
        request: &InboundRequest<'_>,
    ) -> Result<crate::Normalized, crate::NormalizeError> {
        let mut normalized = self.provider.normalize(request)?;
        for draft in &normalized.events {
            let id = draft.data.provider_id();
            let fault = if id.trim().is_empty() {
                "an empty id".to_owned()
            } else if id.len() > MAX_KEY_BYTES {
                format!(
                    "an id of {} bytes, past the {MAX_KEY_BYTES} billhook keeps",
                    id.len()
                )
            } else {
                continue;
            };
            return Err(crate::NormalizeError::Shape {
                provider: self.provider.name(),
                detail: format!("the {} it is about has {fault}", draft.data.kind().as_str()),
            });
        }
        normalized.dedup_key = crate::bounded_dedup_key(std::mem::take(&mut normalized.dedup_key));
        Ok(normalized)
    }

    /// The provider's dedup key for a request it cannot read, bounded likewise.
    pub fn dedup_key_hint(&self, request: &InboundRequest<'_>) -> Option<String> {
        self.provider
            .dedup_key_hint(request)
            .map(crate::bounded_dedup_key)
    }

    /// Validates a source: a known provider, a URL-safe name and a usable credential the provider
    /// accepts.
    pub fn new(
        name: &str,
        provider: &str,
        auth: Option<SourceAuth>,
        allow_ips: Vec<IpNet>,
    ) -> Result<Self, SpecError> {
        let name_ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(SpecError::BadName(name.to_owned()));
        }
        let provider = registry::by_name(provider).ok_or_else(|| SpecError::UnknownProvider {
            source_name: name.to_owned(),
            provider: provider.to_owned(),
            known: registry::PROVIDERS
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        let accepted = provider
            .auth_kinds()
            .iter()
            .map(AuthKind::as_str)
            .collect::<Vec<_>>()
            .join(" or ");
        let Some(auth) = auth else {
            return Err(SpecError::NoUsableAuth {
                source_name: name.to_owned(),
                provider: provider.name(),
                accepted,
            });
        };
        if let Some(problem) = auth.problem() {
            return Err(SpecError::UnusableAuth {
                source_name: name.to_owned(),
                provider: provider.name(),
                problem,
            });
        }
        if !provider.auth_kinds().contains(&auth.kind()) {
            return Err(SpecError::UnsupportedAuth {
                source_name: name.to_owned(),
                provider: provider.name(),
                kind: auth.kind().as_str(),
                accepted,
            });
        }
        Ok(Self {
            name: name.to_owned(),
            provider,
            auth,
            allow_ips: allow_ips.into_iter().map(canonical_net).collect(),
        })
    }

    /// Checks a client address against this source's allow-list (everyone, when it has none).
    pub fn admits(&self, remote_ip: Option<IpAddr>) -> Result<(), VerifyError> {
        if self.allow_ips.is_empty() {
            return Ok(());
        }
        // IPv4 peers reached over an IPv6 socket arrive as `::ffff:a.b.c.d`; allow-lists are
        // written in IPv4.
        let allowed = remote_ip
            .map(|ip| ip.to_canonical())
            .is_some_and(|ip| self.allow_ips.iter().any(|net| net.contains(&ip)));
        if allowed {
            Ok(())
        } else {
            Err(VerifyError::IpNotAllowed)
        }
    }

    /// What can be checked of a request before its body is read: the allow-list, a credential
    /// that does not depend on the body (all but the providers' signatures), or that a signature
    /// is there, well formed, to check. A request refused here never holds memory for a body.
    /// Returns the verification when it is complete without the body; a signature is checked
    /// once the body is in, with [`verify_body`](Self::verify_body).
    pub fn check_before_body(
        &self,
        request: &InboundRequest<'_>,
    ) -> Result<Option<Verification>, VerifyError> {
        self.admits(request.remote_ip)?;
        match &self.auth {
            SourceAuth::Signature { .. } => {
                if let Some(header) = self.provider.signature_header() {
                    hex_signature(request.signature(header)?, header)?;
                }
                Ok(None)
            }
            credential => verify_credential(credential, request).map(Some),
        }
    }

    /// Checks a request's signature over its body, once [`check_before_body`] passed it.
    ///
    /// [`check_before_body`]: Self::check_before_body
    pub fn verify_body(&self, request: &InboundRequest<'_>) -> Result<Verification, VerifyError> {
        match &self.auth {
            SourceAuth::Signature { secrets } => self.provider.verify_signature(secrets, request),
            credential => verify_credential(credential, request),
        }
    }

    /// Checks a request against this source's allow-list and credential.
    pub fn verify(&self, request: &InboundRequest<'_>) -> Result<Verification, VerifyError> {
        self.admits(request.remote_ip)?;
        self.verify_body(request)
    }
}

/// A range of IPv4-mapped IPv6 addresses (`::ffff:10.0.0.0/104`) as the IPv4 range it stands
/// for. Client addresses are compared in their canonical form, IPv4 for a mapped one, so a
/// mapped range kept as written would match nothing.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => v6
            .network()
            .to_ipv4_mapped()
            .and_then(|v4| ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).ok())
            .map_or(net, IpNet::V4),
        _ => net,
    }
}

/// How a request was verified, recorded with the stored request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// The scheme (`razorpay-signature`, `header`, `jwt_hs256`, …).
    pub scheme: &'static str,
    /// Which secret or variant matched (`secret 2 of 2`, `compacted body`).
    pub detail: String,
}

/// Why a request was refused. Every variant answers 401 with its [`code`](VerifyError::code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the `{0}` header is missing")]
    MissingSignature(&'static str),
    #[error("the `{0}` header is not a hex HMAC-SHA256 signature")]
    MalformedSignature(&'static str),
    #[error("the signature does not match the body under any configured secret")]
    InvalidSignature,
    #[error("the request carries no credentials")]
    MissingCredentials,
    #[error("the credentials are not valid for this source")]
    InvalidCredentials,
    #[error("the token is not a valid HS256 JWT: {0}")]
    MalformedToken(&'static str),
    #[error("the token was issued too long ago, has expired or is not valid yet")]
    TokenExpired,
    #[error("the request's address is not on this source's allow-list")]
    IpNotAllowed,
}

impl VerifyError {
    /// The stable error code sent to the caller.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::MissingSignature(_) => "missing_signature",
            VerifyError::MalformedSignature(_) => "malformed_signature",
            VerifyError::InvalidSignature => "invalid_signature",
            VerifyError::MissingCredentials => "missing_credentials",
            VerifyError::InvalidCredentials => "invalid_credentials",
            VerifyError::MalformedToken(_) => "malformed_token",
            VerifyError::TokenExpired => "token_expired",
            VerifyError::IpNotAllowed => "ip_not_allowed",
        }
    }
}

/// Checks a lower- or upper-case hex HMAC-SHA256 `signature` of `message` under each secret in
/// turn, in constant time. Returns the index of the secret that matched.
pub fn match_hex_hmac(
    secrets: &[Secret],
    message: &[u8],
    signature: &str,
    header: &'static str,
) -> Result<Option<usize>, VerifyError> {
    let expected = hex_signature(signature, header)?;
    Ok(secrets.iter().position(|secret| {
        hmac_of(secret.expose().as_bytes(), message)
            .verify_slice(&expected)
            .is_ok()
    }))
}

/// The bytes of a hex HMAC-SHA256 signature (either case), if it is one.
fn hex_signature(signature: &str, header: &'static str) -> Result<Vec<u8>, VerifyError> {
    let signature = signature.trim();
    if signature.len() != 64 {
        return Err(VerifyError::MalformedSignature(header));
    }
    hex::decode(signature).map_err(|_| VerifyError::MalformedSignature(header))
}

/// The lower-case hex HMAC-SHA256 of `message`, as Razorpay and Zwitch sign.
pub fn hex_hmac(secret: &str, message: &[u8]) -> String {
    hex::encode(hmac_of(secret.as_bytes(), message).finalize().into_bytes())
}

fn hmac_of(key: &[u8], message: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(message);
    mac
}

/// Describes which of several secrets matched, for the stored verification outcome.
pub fn secret_detail(index: usize, count: usize) -> String {
    if index == 0 {
        format!("current secret (1 of {count})")
    } else {
        format!("previous secret ({} of {count})", index + 1)
    }
}

/// Equal texts, compared in constant time over their SHA-256 digests so that not even the length
/// of the expected value leaks.
fn secret_eq(given: &[u8], expected: &[u8]) -> bool {
    Sha256::digest(given)
        .ct_eq(&Sha256::digest(expected))
        .into()
}

fn verify_credential(
    auth: &SourceAuth,
    request: &InboundRequest<'_>,
) -> Result<Verification, VerifyError> {
    match auth {
        SourceAuth::Signature { .. } => Err(VerifyError::InvalidSignature),
        SourceAuth::Header { name, value } => {
            let given = request
                .headers
                .get(name)
                .ok_or(VerifyError::MissingCredentials)?;
            if secret_eq(given.as_bytes(), value.expose().as_bytes()) {
                Ok(Verification {
                    scheme: "header",
                    detail: format!("static `{name}` header"),
                })
            } else {
                Err(VerifyError::InvalidCredentials)
            }
        }
        SourceAuth::Basic { username, password } => {
            let encoded = request
                .header("authorization")
                .and_then(|value| strip_scheme(value, "basic"))
                .ok_or(VerifyError::MissingCredentials)?;
            let decoded = BASE64
                .decode(encoded.trim())
                .map_err(|_| VerifyError::InvalidCredentials)?;
            let Some(colon) = decoded.iter().position(|&b| b == b':') else {
                return Err(VerifyError::InvalidCredentials);
            };
            let user_ok = secret_eq(&decoded[..colon], username.as_bytes());
            let password_ok = secret_eq(&decoded[colon + 1..], password.expose().as_bytes());
            if user_ok & password_ok {
                Ok(Verification {
                    scheme: "basic",
                    detail: "HTTP Basic".to_owned(),
                })
            } else {
                Err(VerifyError::InvalidCredentials)
            }
        }
        SourceAuth::JwtHs256 {
            secret,
            max_age_seconds,
        } => {
            let token = request
                .header("authorization")
                .and_then(|value| strip_scheme(value, "bearer"))
                .ok_or(VerifyError::MissingCredentials)?;
            verify_jwt(
                token.trim(),
                secret,
                *max_age_seconds,
                request.received_at.unix_seconds(),
            )?;
            Ok(Verification {
                scheme: "jwt_hs256",
                detail: "HS256 bearer token".to_owned(),
            })
        }
        SourceAuth::PathToken { token } => {
            let given = request.path_token.ok_or(VerifyError::MissingCredentials)?;
            if secret_eq(given.as_bytes(), token.expose().as_bytes()) {
                Ok(Verification {
                    scheme: "path_token",
                    detail: "secret path token".to_owned(),
                })
            } else {
                Err(VerifyError::InvalidCredentials)
            }
        }
    }
}

/// `Scheme credentials` with the scheme matched case-insensitively.
fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = value.split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// How far the sender's clock may be from billhook's (seconds): a token issued this far in the
/// future, or expired this long ago, is still taken.
const JWT_CLOCK_SKEW_SECONDS: i64 = 60;

#[derive(Deserialize)]
struct JwtHeader {
    alg: String,
}

#[derive(Deserialize)]
struct JwtClaims {
    iat: Option<NumericDate>,
    exp: Option<NumericDate>,
    nbf: Option<NumericDate>,
}

/// A JWT time: seconds since the epoch, which RFC 7519 lets be any JSON number (`1700000000.5`,
/// `1.7e9`); the fraction is dropped, and a number past the range of seconds is its end.
struct NumericDate(i64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let number = serde_json::Number::deserialize(deserializer)?;
        let seconds = match (number.as_i64(), number.as_u64(), number.as_f64()) {
            (Some(seconds), _, _) => seconds,
            (None, Some(_), _) => i64::MAX,
            // A cast from a float saturates at the ends of the range.
            (None, None, Some(seconds)) if seconds.is_finite() => seconds.floor() as i64,
            _ => return Err(serde::de::Error::custom("a NumericDate must be a number")),
        };
        Ok(NumericDate(seconds))
    }
}

/// Verifies an HS256 JWT: the algorithm is pinned to HS256 (no `none`, no key confusion), the
/// signature is checked in constant time, `iat` must be present and at most `max_age_seconds`
/// old, `exp`, when present, must not have passed, and `nbf`, when present, must have come.
fn verify_jwt(
    token: &str,
    secret: &Secret,
    max_age_seconds: i64,
    now: i64,
) -> Result<(), VerifyError> {
    let mut parts = token.split('.');
    let (Some(header_part), Some(claims_part), Some(signature_part), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::MalformedToken(
            "expected three dot-separated parts",
        ));
    };
    let header: JwtHeader = BASE64URL
        .decode(header_part)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(VerifyError::MalformedToken("unreadable header"))?;
    if header.alg != "HS256" {
        return Err(VerifyError::MalformedToken("the algorithm must be HS256"));
    }
    let signature = BASE64URL
        .decode(signature_part)
        .map_err(|_| VerifyError::MalformedToken("unreadable signature"))?;
    let signed_part = &token[..header_part.len() + 1 + claims_part.len()];
    hmac_of(secret.expose().as_bytes(), signed_part.as_bytes())
        .verify_slice(&signature)
        .map_err(|_| VerifyError::InvalidCredentials)?;
    let claims: JwtClaims = BASE64URL
        .decode(claims_part)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(VerifyError::MalformedToken("unreadable claims"))?;
    let issued_at = claims
        .iat
        .ok_or(VerifyError::MalformedToken("the `iat` claim is required"))?
        .0;
    if now.saturating_sub(issued_at) > max_age_seconds
        || issued_at.saturating_sub(now) > JWT_CLOCK_SKEW_SECONDS
    {
        return Err(VerifyError::TokenExpired);
    }
    if claims
        .exp
        .is_some_and(|exp| exp.0.saturating_add(JWT_CLOCK_SKEW_SECONDS) < now)
        || claims
            .nbf
            .is_some_and(|nbf| nbf.0.saturating_sub(JWT_CLOCK_SKEW_SECONDS) > now)
    {
        return Err(VerifyError::TokenExpired);
    }
    Ok(())
}

/// Builds an HS256 JWT with `iat = now`, as the emulator signs for a `jwt_hs256` source.
pub fn issue_jwt(secret: &Secret, now: i64) -> String {
    jwt_with_claims(secret, &format!(r#"{{"iat":{now}}}"#))
}

fn jwt_with_claims(secret: &Secret, claims: &str) -> String {
    let header = BASE64URL.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = BASE64URL.encode(claims);
    let signed = format!("{header}.{claims}");
    let signature = BASE64URL.encode(
        hmac_of(secret.expose().as_bytes(), signed.as_bytes())
            .finalize()
            .into_bytes(),
    );
    format!("{signed}.{signature}")
}

/// The headers a static credential adds to a request (none for a path token, which goes in the
/// URL: see [`path_suffix`]).
pub fn credential_headers(auth: &SourceAuth, now: i64) -> Vec<(String, String)> {
    match auth {
        SourceAuth::Signature { .. } | SourceAuth::PathToken { .. } => Vec::new(),
        SourceAuth::Header { name, value } => {
            vec![(name.as_str().to_owned(), value.expose().to_owned())]
        }
        SourceAuth::Basic { username, password } => vec![(
            "authorization".to_owned(),
            format!(
                "Basic {}",
                BASE64.encode(format!("{username}:{}", password.expose()))
            ),
        )],
        SourceAuth::JwtHs256 { secret, .. } => vec![(
            "authorization".to_owned(),
            format!("Bearer {}", issue_jwt(secret, now)),
        )],
    }
}

/// The headers a provider that signs bodies with a hex HMAC sends: `header` carrying the
/// signature under the newest secret. Other credentials are added as configured.
pub fn hex_signature_headers(
    auth: &SourceAuth,
    header: &str,
    body: &[u8],
    now: i64,
) -> Vec<(String, String)> {
    match auth {
        SourceAuth::Signature { secrets } => secrets
            .first()
            .map(|secret| vec![(header.to_owned(), hex_hmac(secret.expose(), body))])
            .unwrap_or_default(),
        other => credential_headers(other, now),
    }
}

/// The extra path segment a path-token source expects (`/{token}`), empty otherwise.
pub fn path_suffix(auth: &SourceAuth) -> String {
    match auth {
        SourceAuth::PathToken { token } => format!("/{}", token.expose()),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use billhook_core::time::Timestamp;

    fn request<'a>(
        headers: &'a http::HeaderMap,
        path_token: Option<&'a str>,
    ) -> InboundRequest<'a> {
        InboundRequest {
            headers,
            body: b"{}",
            remote_ip: Some("52.66.75.174".parse().unwrap()),
            path_token,
            received_at: Timestamp::from_unix_millis(1_700_000_000_000),
        }
    }

    fn spec(auth: SourceAuth, allow_ips: Vec<IpNet>) -> SourceSpec {
        SourceSpec::new("setu", "setu_bbps", Some(auth), allow_ips).unwrap()
    }

    #[test]
    fn static_header() {
        let source = spec(
            SourceAuth::Header {
                name: http::HeaderName::from_static("x-bill-webhook-api-key"),
                value: Secret::new("k3y"),
            },
            vec![],
        );
        let mut headers = http::HeaderMap::new();
        assert_eq!(
            source.verify(&request(&headers, None)),
            Err(VerifyError::MissingCredentials)
        );
        headers.insert("x-bill-webhook-api-key", "wrong".parse().unwrap());
        assert_eq!(
            source.verify(&request(&headers, None)),
            Err(VerifyError::InvalidCredentials)
        );
        headers.insert("x-bill-webhook-api-key", "k3y".parse().unwrap());
        assert!(source.verify(&request(&headers, None)).is_ok());
    }

    #[test]
    fn basic_auth() {
        let auth = SourceAuth::Basic {
            username: "setu".into(),
            password: Secret::new("pa:ss"),
        };
        let source = spec(auth.clone(), vec![]);
        let mut headers = http::HeaderMap::new();
        for (name, value) in credential_headers(&auth, 0) {
            headers.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        assert!(source.verify(&request(&headers, None)).is_ok());
        headers.insert(
            "authorization",
            format!("Basic {}", BASE64.encode("setu:nope"))
                .parse()
                .unwrap(),
        );
        assert_eq!(
            source.verify(&request(&headers, None)),
            Err(VerifyError::InvalidCredentials)
        );
    }

    #[test]
    fn jwt_age_algorithm_and_signature() {
        let secret = Secret::new("jwt-secret");
        let auth = SourceAuth::JwtHs256 {
            secret: secret.clone(),
            max_age_seconds: 120,
        };
        let source = spec(auth, vec![]);
        let now = 1_700_000_000;
        let with_token = |token: String| {
            let mut headers = http::HeaderMap::new();
            headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
            headers
        };
        assert!(
            source
                .verify(&request(&with_token(issue_jwt(&secret, now - 60)), None))
                .is_ok()
        );
        assert_eq!(
            source.verify(&request(&with_token(issue_jwt(&secret, now - 121)), None)),
            Err(VerifyError::TokenExpired)
        );
        // `exp` is judged with the same allowance for clocks apart as `iat`.
        let expiring = |exp: i64| {
            let claims = format!(r#"{{"iat":{},"exp":{exp}}}"#, now - 90);
            source.verify(&request(
                &with_token(jwt_with_claims(&secret, &claims)),
                None,
            ))
        };
        assert!(expiring(now - 30).is_ok(), "expired by less than the skew");
        assert_eq!(expiring(now - 61), Err(VerifyError::TokenExpired));
        // So is `nbf`, from the other side.
        let not_before = |nbf: i64| {
            let claims = format!(r#"{{"iat":{now},"nbf":{nbf}}}"#);
            source.verify(&request(
                &with_token(jwt_with_claims(&secret, &claims)),
                None,
            ))
        };
        assert!(not_before(now + 30).is_ok(), "valid within the skew");
        assert_eq!(not_before(now + 61), Err(VerifyError::TokenExpired));
        assert_eq!(not_before(i64::MAX), Err(VerifyError::TokenExpired));
        // A NumericDate may be any JSON number.
        let issued = |iat: &str| {
            let claims = format!(r#"{{"iat":{iat}}}"#);
            source.verify(&request(
                &with_token(jwt_with_claims(&secret, &claims)),
                None,
            ))
        };
        assert!(issued(&format!("{}.75", now - 10)).is_ok());
        assert!(issued("1.69999999e9").is_ok());
        assert_eq!(issued("1e300"), Err(VerifyError::TokenExpired));
        assert_eq!(
            issued("18446744073709551615"),
            Err(VerifyError::TokenExpired)
        );
        assert!(matches!(
            issued(r#""1700000000""#),
            Err(VerifyError::MalformedToken(_))
        ));
        // Times at the ends of the range are out of date, not an overflow.
        for far in [i64::MIN, i64::MAX] {
            assert_eq!(
                source.verify(&request(&with_token(issue_jwt(&secret, far)), None)),
                Err(VerifyError::TokenExpired)
            );
        }
        assert_eq!(
            source.verify(&request(
                &with_token(issue_jwt(&Secret::new("other"), now)),
                None
            )),
            Err(VerifyError::InvalidCredentials)
        );
        let unsigned = format!(
            "{}.{}.",
            BASE64URL.encode(br#"{"alg":"none"}"#),
            BASE64URL.encode(format!(r#"{{"iat":{now}}}"#))
        );
        assert_eq!(
            source.verify(&request(&with_token(unsigned), None)),
            Err(VerifyError::MalformedToken("the algorithm must be HS256"))
        );
    }

    /// Short static credentials, a short HS256 key and a long JWT age are named at start.
    #[test]
    fn weak_credentials_are_named() {
        let weak = [
            SourceAuth::Header {
                name: http::HeaderName::from_static("x-key"),
                value: Secret::new("short-key"),
            },
            SourceAuth::Basic {
                username: "setu".to_owned(),
                password: Secret::new("password"),
            },
            SourceAuth::JwtHs256 {
                secret: Secret::new("sixteen-chars-ok"),
                max_age_seconds: 120,
            },
            SourceAuth::JwtHs256 {
                secret: Secret::new("k".repeat(32)),
                max_age_seconds: 86_400,
            },
        ];
        for auth in weak {
            assert_eq!(auth.weaknesses().len(), 1, "{:?}", auth.kind());
        }
        let twice_weak = SourceAuth::JwtHs256 {
            secret: Secret::new("sixteen-chars-ok"),
            max_age_seconds: 86_400,
        };
        assert_eq!(twice_weak.weaknesses().len(), 2, "each named");
        let strong = [
            SourceAuth::Header {
                name: http::HeaderName::from_static("x-key"),
                value: Secret::new("a-sixteen-char-k"),
            },
            SourceAuth::JwtHs256 {
                secret: Secret::new("k".repeat(32)),
                max_age_seconds: 120,
            },
            SourceAuth::PathToken {
                token: Secret::new("0123456789abcdef"),
            },
            SourceAuth::Signature {
                secrets: vec![Secret::new("s")],
            },
        ];
        for auth in strong {
            assert!(auth.weaknesses().is_empty(), "{:?}", auth.kind());
        }
    }

    #[test]
    fn path_token_and_ip_allow_list() {
        let auth = SourceAuth::PathToken {
            token: Secret::new("0123456789abcdef0123"),
        };
        let headers = http::HeaderMap::new();
        let source = spec(auth.clone(), vec!["52.66.75.174/32".parse().unwrap()]);
        assert!(
            source
                .verify(&request(&headers, Some("0123456789abcdef0123")))
                .is_ok()
        );
        assert_eq!(
            source.verify(&request(&headers, Some("0123456789abcdef0124"))),
            Err(VerifyError::InvalidCredentials)
        );
        let elsewhere = spec(auth.clone(), vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            elsewhere.verify(&request(&headers, Some("0123456789abcdef0123"))),
            Err(VerifyError::IpNotAllowed)
        );
        // A range written IPv4-mapped stands for its IPv4 range, as client addresses are read.
        let mapped = spec(auth, vec!["::ffff:52.66.75.0/120".parse().unwrap()]);
        assert!(
            mapped
                .verify(&request(&headers, Some("0123456789abcdef0123")))
                .is_ok()
        );
        assert_eq!(
            canonical_net("2001:db8::/32".parse().unwrap()),
            "2001:db8::/32".parse::<IpNet>().unwrap(),
            "other IPv6 ranges stay as they are"
        );
    }

    #[test]
    fn sources_without_usable_auth_are_refused() {
        let error = SourceSpec::new("rzp", "razorpay", None, vec![]).unwrap_err();
        assert!(
            error.to_string().contains("no usable authentication"),
            "{error}"
        );
        // Each unusable credential says what is wrong with it.
        let problems = [
            (
                "razorpay",
                SourceAuth::Signature {
                    secrets: vec![Secret::new("s"), Secret::new("")],
                },
                "one of `secrets` is empty",
            ),
            (
                "setu_bbps",
                SourceAuth::JwtHs256 {
                    secret: Secret::new("s"),
                    max_age_seconds: 0,
                },
                "the JWT `max_age` must be at least 1s",
            ),
            (
                "caminvoice",
                SourceAuth::PathToken {
                    token: Secret::new("short"),
                },
                "the path `token` must be at least 16 characters",
            ),
            (
                "caminvoice",
                SourceAuth::PathToken {
                    token: Secret::new("0123456789abcdef/ghi"),
                },
                "the path `token` may hold only",
            ),
        ];
        for (provider, auth, problem) in problems {
            let error = SourceSpec::new("src", provider, Some(auth), vec![]).unwrap_err();
            assert!(
                matches!(error, SpecError::UnusableAuth { .. })
                    && error.to_string().contains(problem),
                "{error}"
            );
        }
        let token = SourceAuth::PathToken {
            token: Secret::new("Ab0-._~!$&'()*+,;=:@xyz"),
        };
        assert!(SourceSpec::new("cam", "caminvoice", Some(token), vec![]).is_ok());
        let basic = SourceAuth::Basic {
            username: "a".into(),
            password: Secret::new("b"),
        };
        assert!(matches!(
            SourceSpec::new("rzp", "razorpay", Some(basic), vec![]),
            Err(SpecError::UnsupportedAuth { .. })
        ));
        assert!(matches!(
            SourceSpec::new("Bad Name", "razorpay", None, vec![]),
            Err(SpecError::BadName(_))
        ));
        assert!(matches!(
            SourceSpec::new("x", "stripe", None, vec![]),
            Err(SpecError::UnknownProvider { .. })
        ));
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(…)");
    }
}
