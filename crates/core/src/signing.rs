//! Standard Webhooks signatures: how billhook signs what it delivers.
//!
//! `webhook-signature` is a space-separated list of `v1,<base64 HMAC-SHA256(key, "{id}.{ts}.{body}")>`,
//! one entry per live key, so a receiver keeps verifying while an endpoint's secret is rotated.
//! Secrets are `whsec_` + base64 of the key bytes; the key is the decoded bytes.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of every endpoint secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Receivers should refuse timestamps further than this from their clock (seconds).
pub const TOLERANCE_SECONDS: i64 = 5 * 60;

/// Why a text is not an endpoint secret, or why a signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    #[error("an endpoint secret is `whsec_` followed by base64 of 24 to 64 bytes")]
    MalformedSecret,
    #[error("the webhook timestamp is not a unix time in seconds")]
    MalformedTimestamp,
    #[error("the webhook timestamp is more than five minutes from now")]
    TimestampOutOfTolerance,
    #[error("no signature in the header matches the message")]
    NoMatchingSignature,
}

/// An endpoint's signing secret. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointSecret(Vec<u8>);

impl EndpointSecret {
    /// A fresh secret of 32 random bytes.
    pub fn generate() -> Self {
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self(key)
    }

    /// Parses `whsec_<base64>`; the bare base64 form is accepted too.
    pub fn parse(text: &str) -> Result<Self, SigningError> {
        let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        let key = BASE64
            .decode(encoded)
            .map_err(|_| SigningError::MalformedSecret)?;
        if !(24..=64).contains(&key.len()) {
            return Err(SigningError::MalformedSecret);
        }
        Ok(Self(key))
    }

    /// The `whsec_…` text: shown to the endpoint's owner once, stored by billhook.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", BASE64.encode(&self.0))
    }

    /// The `v1,<base64>` signature of one message under this key.
    pub fn sign(&self, message_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mac = self.mac_of(message_id, timestamp, body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }

    /// The HMAC state after absorbing the signed content `{id}.{timestamp}.{body}`.
    fn mac_of(&self, message_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length; this cannot fail.
        let mut mac =
            <HmacSha256 as KeyInit>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        mac.update(message_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

impl fmt::Debug for EndpointSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EndpointSecret(…)")
    }
}

/// The `webhook-signature` header value: one `v1,…` entry per live secret.
pub fn signature_header<'a>(
    secrets: impl IntoIterator<Item = &'a EndpointSecret>,
    message_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let mut header = String::new();
    for secret in secrets {
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str(&secret.sign(message_id, timestamp, body));
    }
    header
}

/// Verifies a delivered message as a Standard Webhooks receiver would: the timestamp within
/// [`TOLERANCE_SECONDS`] of `now` and at least one `v1` signature matching, compared in constant
/// time.
pub fn verify(
    secret: &EndpointSecret,
    message_id: &str,
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now_unix_seconds: i64,
) -> Result<(), SigningError> {
    let timestamp: i64 = timestamp_header
        .trim()
        .parse()
        .map_err(|_| SigningError::MalformedTimestamp)?;
    // A difference, not a subtraction: a timestamp near the ends of i64 must not wrap into range.
    if now_unix_seconds.abs_diff(timestamp) > TOLERANCE_SECONDS.unsigned_abs() {
        return Err(SigningError::TimestampOutOfTolerance);
    }
    for entry in signature_header.split(' ') {
        let Some(encoded) = entry.strip_prefix("v1,") else {
            continue;
        };
        let Ok(candidate) = BASE64.decode(encoded) else {
            continue;
        };
        if secret
            .mac_of(message_id, timestamp, body)
            .verify_slice(&candidate)
            .is_ok()
        {
            return Ok(());
        }
    }
    Err(SigningError::NoMatchingSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks specification's public test vector.
    const VECTOR_KEY: &str = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TS: i64 = 1_614_265_330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn reproduces_the_public_test_vector() {
        let secret = EndpointSecret::parse(&format!("whsec_{VECTOR_KEY}")).unwrap();
        assert_eq!(
            secret.sign(VECTOR_ID, VECTOR_TS, VECTOR_BODY),
            VECTOR_SIGNATURE
        );
        assert_eq!(
            verify(
                &secret,
                VECTOR_ID,
                "1614265330",
                VECTOR_SIGNATURE,
                VECTOR_BODY,
                VECTOR_TS
            ),
            Ok(())
        );
    }

    #[test]
    fn verification_refuses_tampering_and_stale_timestamps() {
        let secret = EndpointSecret::parse(VECTOR_KEY).unwrap();
        assert_eq!(
            verify(
                &secret,
                VECTOR_ID,
                "1614265330",
                VECTOR_SIGNATURE,
                br#"{"test": 2432232315}"#,
                VECTOR_TS
            ),
            Err(SigningError::NoMatchingSignature)
        );
        assert_eq!(
            verify(
                &secret,
                VECTOR_ID,
                "1614265330",
                VECTOR_SIGNATURE,
                VECTOR_BODY,
                VECTOR_TS + 301
            ),
            Err(SigningError::TimestampOutOfTolerance)
        );
        for far in [i64::MIN, i64::MAX] {
            assert_eq!(
                verify(
                    &secret,
                    VECTOR_ID,
                    &far.to_string(),
                    VECTOR_SIGNATURE,
                    VECTOR_BODY,
                    VECTOR_TS
                ),
                Err(SigningError::TimestampOutOfTolerance),
                "{far}"
            );
        }
    }

    #[test]
    fn rotation_signs_with_every_live_key() {
        let old = EndpointSecret::generate();
        let new = EndpointSecret::generate();
        let header = signature_header([&new, &old], "msg_1", 1_700_000_000, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        for secret in [&old, &new] {
            assert_eq!(
                verify(secret, "msg_1", "1700000000", &header, b"{}", 1_700_000_000),
                Ok(())
            );
        }
        let stranger = EndpointSecret::generate();
        assert!(
            verify(
                &stranger,
                "msg_1",
                "1700000000",
                &header,
                b"{}",
                1_700_000_000
            )
            .is_err()
        );
    }

    #[test]
    fn secrets_round_trip_and_hide_in_debug() {
        let secret = EndpointSecret::generate();
        let text = secret.expose();
        assert!(text.starts_with("whsec_"));
        assert_eq!(EndpointSecret::parse(&text).unwrap(), secret);
        assert_eq!(format!("{secret:?}"), "EndpointSecret(…)");
        assert_eq!(
            EndpointSecret::parse("whsec_c2hvcnQ="),
            Err(SigningError::MalformedSecret)
        );
    }
}
