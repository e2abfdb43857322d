//! JSON plumbing shared by the provider modules: exact number text, whitespace compaction for
//! signature checks, and typed parsing with readable error paths.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::NormalizeError;
use billhook_core::money::{Amount, Currency, MoneyError};
use billhook_core::time::{TimeError, Timestamp};

/// A field a provider may write as `null` where it means "none", as Setu writes its empty lists:
/// `#[serde(default, deserialize_with = "null_as_default")]` takes absent and `null` alike.
pub fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// An object that a provider built in PHP writes as `[]` when it is empty, as Razorpay writes
/// `notes` and `acquirer_data`: `#[serde(default, deserialize_with = "object_or_empty_list")]`
/// takes absent, `null` and `[]` as none. A list with something in it is still refused.
pub fn object_or_empty_list<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct ObjectOrEmptyList<T>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectOrEmptyList<T> {
        type Value = Option<T>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("an object, null or an empty list")
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            match seq.next_element::<serde::de::IgnoredAny>()? {
                None => Ok(None),
                Some(_) => Err(serde::de::Error::invalid_type(
                    serde::de::Unexpected::Seq,
                    &self,
                )),
            }
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }

    deserializer.deserialize_any(ObjectOrEmptyList(std::marker::PhantomData))
}

/// The exact text of a JSON number (or of a JSON string holding one), as the provider wrote it.
///
/// Money and big ids go through this type so that `3.69` stays `3.69` and `699158487875191900`
/// keeps every digit: the value is never converted to a float.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumText(pub String);

impl<'de> Deserialize<'de> for NumText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"') => serde_json::from_str::<String>(text)
                .map(NumText)
                .map_err(serde::de::Error::custom),
            Some(b'-' | b'0'..=b'9') => Ok(NumText(text.to_owned())),
            _ => Err(serde::de::Error::custom(format!(
                "expected a number, found `{}`",
                truncate(text, 40)
            ))),
        }
    }
}

impl NumText {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses the text as minor units (`479030` paise). Every amount a provider sends is paid,
    /// owed, refunded, a fee or a limit, none of which is ever negative: a negative one would
    /// reach subscribers as a payment of minus a sum.
    pub fn minor(&self, path: &str, currency: Currency) -> Result<Amount, NormalizeError> {
        self.non_negative(Amount::parse_minor(&self.0, currency), path)
    }

    /// Parses the text as major units (`3.69` rupees → 369 paise); never negative either.
    pub fn major(&self, path: &str, currency: Currency) -> Result<Amount, NormalizeError> {
        self.non_negative(Amount::parse_major(&self.0, currency), path)
    }

    fn non_negative(
        &self,
        parsed: Result<Amount, MoneyError>,
        path: &str,
    ) -> Result<Amount, NormalizeError> {
        parsed
            .and_then(|amount| {
                if amount.minor() < 0 {
                    Err(MoneyError::Negative(truncate(&self.0, 40).to_owned()))
                } else {
                    Ok(amount)
                }
            })
            .map_err(|source| NormalizeError::Money {
                path: path.to_owned(),
                source,
            })
    }

    /// Parses the text as unix seconds (a whole number; a JSON number in exponent form too).
    pub fn unix_seconds(&self, path: &str) -> Result<Timestamp, NormalizeError> {
        let seconds = Amount::parse_minor(&self.0, Currency::INR)
            .map_err(|_| NormalizeError::Time {
                path: path.to_owned(),
                source: TimeError::NotUnixSeconds(truncate(&self.0, 40).to_owned()),
            })?
            .minor();
        Timestamp::from_unix_seconds(seconds).map_err(|source| NormalizeError::Time {
            path: path.to_owned(),
            source,
        })
    }
}

/// A JSON string or number kept as text; providers are loose about whether ids and references
/// are strings or numbers. `null` and booleans are refused: a required id of `null` kept as the
/// text `null` would make unrelated records one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalarText(pub String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"') => serde_json::from_str::<String>(text)
                .map(ScalarText)
                .map_err(serde::de::Error::custom),
            Some(b'-' | b'0'..=b'9') => Ok(ScalarText(text.to_owned())),
            _ => Err(serde::de::Error::custom(format!(
                "expected a string or a number, found {}",
                text.chars().take(16).collect::<String>()
            ))),
        }
    }
}

impl From<ScalarText> for String {
    fn from(text: ScalarText) -> String {
        text.0
    }
}

/// Parses RFC 3339 / ISO 8601 text into a timestamp, naming the field on failure.
pub fn iso_time(text: &str, path: &str) -> Result<Timestamp, NormalizeError> {
    Timestamp::parse_rfc3339(text).map_err(|source| NormalizeError::Time {
        path: path.to_owned(),
        source,
    })
}

/// Parses a body into `T`. On failure the body is parsed again, tracking the path, so the
/// quarantine record says *where* the shape was wrong; the happy path pays nothing for that.
///
/// Text holding the NUL character is refused as a shape error: PostgreSQL cannot store it (nor,
/// most likely, the subscribers' databases the canonical events go to), so carrying it would
/// make the same message storable on one backend and not on the other.
pub fn parse_body<T: DeserializeOwned>(
    body: &[u8],
    provider: &'static str,
) -> Result<T, NormalizeError> {
    let parsed = parse_json(body, provider)?;
    match text_with_nul(body) {
        None => Ok(parsed),
        Some(path) => Err(NormalizeError::Shape {
            provider,
            detail: format!("{path}: text holds the NUL character (\\u0000)"),
        }),
    }
}

/// [`parse_body`] without the NUL check.
fn parse_json<T: DeserializeOwned>(
    body: &[u8],
    provider: &'static str,
) -> Result<T, NormalizeError> {
    if let Ok(parsed) = serde_json::from_slice::<T>(body) {
        return Ok(parsed);
    }
    let text = std::str::from_utf8(body).map_err(|e| NormalizeError::NotUtf8(e.valid_up_to()))?;
    if let Err(error) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        return Err(NormalizeError::NotJson(error.to_string()));
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
        Ok(parsed) => Ok(parsed),
        Err(error) => Err(NormalizeError::Shape {
            provider,
            detail: format!("{}: {}", error.path(), error.inner()),
        }),
    }
}

/// Where in `body` (valid JSON) a string or key holds the NUL character, if anywhere. JSON can
/// only spell it `\u0000`, so bodies without that text are passed over at once.
fn text_with_nul(body: &[u8]) -> Option<String> {
    fn find(value: &serde_json::Value, path: &mut String) -> bool {
        let at = path.len();
        let found = match value {
            serde_json::Value::String(text) => text.contains('\0'),
            serde_json::Value::Array(items) => items.iter().enumerate().any(|(index, item)| {
                path.truncate(at);
                path.push_str(&format!("[{index}]"));
                find(item, path)
            }),
            serde_json::Value::Object(fields) => fields.iter().any(|(key, item)| {
                path.truncate(at);
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key.replace('\0', "\\u0000"));
                key.contains('\0') || find(item, path)
            }),
            _ => false,
        };
        if !found {
            path.truncate(at);
        }
        found
    }
    // Backslashes are rare in bodies: look at what follows each one only.
    let mut rest = body;
    let spelled = loop {
        match rest.iter().position(|&b| b == b'\\') {
            None => break false,
            Some(at) if rest[at..].starts_with(b"\\u0000") => break true,
            // An escaped backslash is skipped whole, so `\\u0000` is not taken for one.
            Some(at) => rest = rest.get(at + 2..).unwrap_or_default(),
        }
    };
    if !spelled {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut path = String::new();
    find(&value, &mut path).then(|| {
        if path.is_empty() {
            ".".to_owned()
        } else {
            path
        }
    })
}

/// Parses a JSON sub-document of a body read with [`parse_body`] the same way (the body's NUL
/// check covered it already).
pub fn parse_raw<T: DeserializeOwned>(
    raw: &RawValue,
    provider: &'static str,
    path: &str,
) -> Result<T, NormalizeError> {
    parse_json(raw.get().as_bytes(), provider).map_err(|error| match error {
        NormalizeError::Shape { provider, detail } => NormalizeError::Shape {
            provider,
            detail: format!("{path}.{detail}"),
        },
        other => other,
    })
}

/// The body with JSON-insignificant whitespace removed: spaces, tabs and line breaks outside
/// strings. Whitespace inside strings (`"Lego Death Star"`) is kept, escapes included. Returns
/// `None` when nothing would change.
pub fn compact(body: &[u8]) -> Option<Vec<u8>> {
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    if !body.iter().any(|&b| is_space(b)) {
        return None;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut in_string = false;
    let mut escaped = false;
    for &byte in body {
        if in_string {
            out.push(byte);
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
        } else if byte == b'"' {
            in_string = true;
            out.push(byte);
        } else if !is_space(byte) {
            out.push(byte);
        }
    }
    (out.len() != body.len()).then_some(out)
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Deserialize)]
    struct Probe {
        amount: NumText,
        id: Option<ScalarText>,
    }

    #[test]
    fn number_text_is_exact() {
        let probe: Probe =
            serde_json::from_str(r#"{"amount": 3.69, "id": 699158487875191900}"#).unwrap();
        assert_eq!(probe.amount.as_str(), "3.69");
        assert_eq!(probe.id.unwrap().0, "699158487875191900");
        let probe: Probe = serde_json::from_str(r#"{"amount": "99.0", "id": "x"}"#).unwrap();
        assert_eq!(probe.amount.as_str(), "99.0");
        assert!(serde_json::from_str::<Probe>(r#"{"amount": true}"#).is_err());
        let probe: Probe = serde_json::from_str(r#"{"amount": 1, "id": null}"#).unwrap();
        assert!(probe.id.is_none());
        for not_an_id in ["true", "[1]", "{}"] {
            let body = format!(r#"{{"amount": 1, "id": {not_an_id}}}"#);
            assert!(serde_json::from_str::<Probe>(&body).is_err(), "{body}");
        }
        // A required id that is null is refused, not kept as the text `null`.
        #[derive(Debug, Deserialize)]
        struct Required {
            id: ScalarText,
        }
        assert!(serde_json::from_str::<Required>(r#"{"id": null}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Required>(r#"{"id": -7}"#)
                .unwrap()
                .id
                .0,
            "-7"
        );
    }

    #[test]
    fn compaction_keeps_whitespace_inside_strings() {
        let body = b"{ \"remark\" : \"Lego Death Star\",\n  \"q\": \"a \\\" b\" }";
        let compacted = compact(body).unwrap();
        assert_eq!(
            compacted,
            b"{\"remark\":\"Lego Death Star\",\"q\":\"a \\\" b\"}".to_vec()
        );
        assert_eq!(compact(b"{\"a\":1}"), None);
    }

    #[test]
    fn shape_errors_name_the_path() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Outer {
            data: Inner,
        }
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Inner {
            amount: NumText,
        }
        let error = parse_body::<Outer>(br#"{"data": {"amount": {}}}"#, "zwitch").unwrap_err();
        assert_eq!(error.code(), "unexpected_shape");
        assert!(error.to_string().contains("data.amount"), "{error}");
        assert_eq!(
            parse_body::<Outer>(b"not json", "zwitch")
                .unwrap_err()
                .code(),
            "invalid_json"
        );
        assert_eq!(
            parse_body::<Outer>(b"{\"a\": \"\xff\"}", "zwitch")
                .unwrap_err()
                .code(),
            "invalid_utf8"
        );
    }

    proptest! {
        #[test]
        fn compaction_preserves_the_json_value(value in any::<std::collections::BTreeMap<String, (i32, String)>>()) {
            let pretty = serde_json::to_vec_pretty(&value).unwrap();
            let compacted = compact(&pretty).unwrap_or(pretty.clone());
            prop_assert_eq!(compacted, serde_json::to_vec(&value).unwrap());
        }
    }
}
