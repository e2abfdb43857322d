//! The provider emulator's shared plumbing: options, fresh ids in provider formats, `--set`
//! overrides and the finished request.
//!
//! Each provider module builds its own payloads (from the shapes of the providers' published
//! samples) and signs them; this module holds what they share. Output is reproducible with a
//! seed: the same seed, event and clock reading give the same bytes.

use std::fmt;

use billhook_core::time::Timestamp;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Map, Value};

/// One event the emulator can build.
#[derive(Debug, Clone, Copy)]
pub struct EmulatedEvent {
    /// The provider's event name (`invoice.paid`, `BILL_PAY`).
    pub name: &'static str,
    /// Alternatives that change the message coherently (a payment method, a status); the first
    /// is the default.
    pub variants: &'static [&'static str],
    pub description: &'static str,
}

/// Choices for one generated message.
#[derive(Debug)]
pub struct GenerateOptions {
    pub variant: Option<String>,
    /// Mark the message as sandbox / test mode where the provider has such a flag.
    pub sandbox: bool,
    /// The clock reading every timestamp in the message derives from.
    pub now: Timestamp,
    pub rng: EmulatorRng,
}

impl GenerateOptions {
    pub fn new(now: Timestamp, seed: Option<u64>) -> Self {
        Self {
            variant: None,
            sandbox: false,
            now,
            rng: EmulatorRng::new(seed),
        }
    }

    pub fn with_variant(mut self, variant: &str) -> Self {
        self.variant = Some(variant.to_owned());
        self
    }

    /// The chosen variant, checked against the event's list; the first when none was chosen.
    pub fn variant_of(&self, event: &EmulatedEvent) -> Result<&'static str, EmulateError> {
        find_variant(event, self.variant.as_deref())
    }
}

/// `chosen` in the event's list of variants (in any case); the first when none was chosen.
pub fn find_variant(
    event: &EmulatedEvent,
    chosen: Option<&str>,
) -> Result<&'static str, EmulateError> {
    match chosen {
        None => Ok(event.variants.first().copied().unwrap_or("")),
        Some(chosen) => event
            .variants
            .iter()
            .copied()
            .find(|v| v.eq_ignore_ascii_case(chosen))
            .ok_or_else(|| EmulateError::UnknownVariant {
                event: event.name,
                variant: chosen.to_owned(),
                known: event.variants.join(", "),
            }),
    }
}

/// The random source for ids: seeded for reproducible output, from the OS otherwise.
pub struct EmulatorRng(StdRng);

impl EmulatorRng {
    pub fn new(seed: Option<u64>) -> Self {
        Self(match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => rand::make_rng(),
        })
    }

    /// `count` characters of `alphabet`.
    pub fn chars(&mut self, alphabet: &[u8], count: usize) -> String {
        (0..count)
            .map(|_| char::from(alphabet[self.0.random_range(0..alphabet.len())]))
            .collect()
    }

    /// `prefix` + `count` base62 characters (`pay_` + 14 for Razorpay, `evl_` + 25 for Zwitch).
    pub fn base62_id(&mut self, prefix: &str, count: usize) -> String {
        format!("{prefix}{}", self.chars(BASE62, count))
    }

    /// `count` decimal digits, the first non-zero.
    pub fn digits(&mut self, count: usize) -> String {
        let first = self.chars(b"123456789", 1);
        format!(
            "{first}{}",
            self.chars(b"0123456789", count.saturating_sub(1))
        )
    }

    /// A random version-4 UUID in lower-case hex.
    pub fn uuid_v4(&mut self) -> String {
        let mut bytes: [u8; 16] = self.0.random();
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        let hex = hex::encode(bytes);
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    }

    /// A number in `range`.
    pub fn between(&mut self, low: i64, high: i64) -> i64 {
        self.0.random_range(low..=high)
    }
}

impl fmt::Debug for EmulatorRng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EmulatorRng")
    }
}

pub const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
pub const UPPER_ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// A generated message before signing.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The provider's event name.
    pub event: String,
    /// The message body as a JSON value; [`Generated::body`] gives the exact bytes sent.
    pub json: Value,
    /// Headers the provider sends besides its signature (`x-razorpay-event-id`).
    pub headers: Vec<(String, String)>,
}

impl Generated {
    /// The exact bytes sent: compact JSON in the provider's key order.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.json).unwrap_or_default()
    }

    /// The body as indented JSON, as providers' own samples are written.
    pub fn pretty_body(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.json).unwrap_or_default()
    }
}

/// Why the emulator cannot build a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmulateError {
    #[error("{provider} has no event `{event}` in the emulator (known: {known})")]
    UnknownEvent {
        provider: &'static str,
        event: String,
        known: String,
    },
    #[error("`{event}` has no variant `{variant}` (known: {known})")]
    UnknownVariant {
        event: &'static str,
        variant: String,
        known: String,
    },
    #[error("`--set {0}`: expected `json.path=value`")]
    MalformedOverride(String),
    #[error("`--set {path}`: {reason}")]
    BadOverridePath { path: String, reason: String },
    #[error(
        "`{0}` cannot be sent digit for digit as a JSON number here; quote it to send it as a string"
    )]
    InexactNumber(String),
}

/// The list of event names, for error messages.
pub fn known_events(events: &[EmulatedEvent]) -> String {
    events.iter().map(|e| e.name).collect::<Vec<_>>().join(", ")
}

/// Finds `name` in a provider's event list.
pub fn find_event(
    provider: &'static str,
    events: &'static [EmulatedEvent],
    name: &str,
) -> Result<&'static EmulatedEvent, EmulateError> {
    events
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| EmulateError::UnknownEvent {
            provider,
            event: name.to_owned(),
            known: known_events(events),
        })
}

/// The first number in the JSON `text` that a [`Value`] would not carry digit for digit: an
/// integer beyond 64 bits, or a decimal with more significant digits than a double keeps.
/// Money and big ids must survive exactly, so such a number is refused rather than rounded.
pub fn inexact_number(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let (mut index, mut in_string, mut escaped) = (0, false, false);
    while index < bytes.len() {
        let byte = bytes[index];
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            index += 1;
        } else if byte == b'"' {
            in_string = true;
            index += 1;
        } else if byte == b'-' || byte.is_ascii_digit() {
            let start = index;
            while index < bytes.len()
                && matches!(bytes[index], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
            {
                index += 1;
            }
            let token = &text[start..index];
            // An integer past 64 bits becomes a float, which may hold its value exactly and
            // still be sent as `1e20`: not the integer that was written.
            let integer = !token.contains(['.', 'e', 'E']);
            if integer && token.parse::<i64>().is_err() && token.parse::<u64>().is_err() {
                return Some(token);
            }
            let carried = serde_json::from_str::<Value>(token)
                .ok()
                .map(|value| value.to_string());
            if carried.is_none_or(|carried| decimal_digits(&carried) != decimal_digits(token)) {
                return Some(token);
            }
        } else {
            index += 1;
        }
    }
    None
}

/// A JSON number's value as sign, significant digits and the power of ten of the last one, so
/// that `1180.50`, `1180.5` and `1.1805e3` compare equal.
fn decimal_digits(number: &str) -> (bool, String, i64) {
    let (negative, unsigned) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (
            &unsigned[..at],
            unsigned[at + 1..].parse::<i64>().unwrap_or(0),
        ),
        None => (unsigned, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{whole}{fraction}");
    let fraction_len = i64::try_from(fraction.len()).unwrap_or(i64::MAX);
    let trimmed_end = digits.trim_end_matches('0');
    let trailing = i64::try_from(digits.len() - trimmed_end.len()).unwrap_or(0);
    let significant = trimmed_end.trim_start_matches('0');
    if significant.is_empty() {
        return (false, String::new(), 0);
    }
    (
        negative,
        significant.to_owned(),
        exponent
            .saturating_sub(fraction_len)
            .saturating_add(trailing),
    )
}

/// Parses a provider sample shipped with billhook into a value to build from.
pub fn template(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// One `--set json.path=value` override. The value is JSON when it parses as JSON (`50000`,
/// `true`, `null`, `"007"`, `{…}`), a string otherwise (`success`).
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub path: String,
    pub value: Value,
}

impl Override {
    pub fn parse(text: &str) -> Result<Self, EmulateError> {
        let (path, value) = text
            .split_once('=')
            .filter(|(path, _)| !path.is_empty())
            .ok_or_else(|| EmulateError::MalformedOverride(text.to_owned()))?;
        let value = match serde_json::from_str(value) {
            Ok(json) => {
                if let Some(number) = inexact_number(value) {
                    return Err(EmulateError::InexactNumber(number.to_owned()));
                }
                json
            }
            Err(_) => Value::String(value.to_owned()),
        };
        Ok(Self {
            path: path.to_owned(),
            value,
        })
    }

    /// Sets the value at the dotted path (`payload.payment.entity.amount`, `data.0.Status`),
    /// creating objects along the way.
    pub fn apply(&self, root: &mut Value) -> Result<(), EmulateError> {
        let bad = |reason: &str| EmulateError::BadOverridePath {
            path: self.path.clone(),
            reason: reason.to_owned(),
        };
        let segments: Vec<&str> = self.path.split('.').collect();
        let mut cursor = root;
        for (position, segment) in segments.iter().enumerate() {
            let last = position + 1 == segments.len();
            cursor = match cursor {
                Value::Array(items) => {
                    let index: usize = segment
                        .parse()
                        .map_err(|_| bad(&format!("`{segment}` is not an index into an array")))?;
                    let length = items.len();
                    items.get_mut(index).ok_or_else(|| {
                        bad(&format!(
                            "index {index} is beyond the array's {length} items"
                        ))
                    })?
                }
                Value::Object(map) => map.entry((*segment).to_owned()).or_insert_with(|| {
                    if last {
                        Value::Null
                    } else {
                        Value::Object(Map::new())
                    }
                }),
                Value::Null => {
                    *cursor = Value::Object(Map::new());
                    match cursor {
                        Value::Object(map) => {
                            map.entry((*segment).to_owned()).or_insert_with(|| {
                                if last {
                                    Value::Null
                                } else {
                                    Value::Object(Map::new())
                                }
                            })
                        }
                        _ => unreachable!("just replaced with an object"),
                    }
                }
                _ => return Err(bad(&format!("cannot descend into a scalar at `{segment}`"))),
            };
        }
        *cursor = self.value.clone();
        Ok(())
    }
}

/// Looks up a dotted path in a JSON value (`payload.payment.entity.id`, `data.0.ID`).
pub fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(root, |value, segment| match value {
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            Value::Object(map) => map.get(segment),
            _ => None,
        })
}

/// Sets a field that the template is known to have; used by provider modules while building.
pub(crate) fn set(root: &mut Value, path: &str, value: impl Into<Value>) {
    let over = Override {
        path: path.to_owned(),
        value: value.into(),
    };
    // Templates are billhook's own files; a path that does not fit is a bug caught by tests.
    let _ = over.apply(root);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_a_value_cannot_carry_exactly_are_refused() {
        for exact in [
            "50000",
            "1180.5",
            "1180.50",
            "-3.69",
            "699158487875191900",
            "1e3",
            "{\"amount\": 3.69, \"id\": 18446744073709551615}",
            "\"12345678901234567.89\"",
            "[\"a\\\"1e400\"]",
        ] {
            assert_eq!(inexact_number(exact), None, "{exact}");
            Override::parse(&format!("data.x={exact}")).expect(exact);
        }
        for inexact in [
            "37492803268785177510",
            "100000000000000000000",
            "-9223372036854775809",
            "12345678901234567.89",
            "0.12345678901234567",
            "1.5e-9223372036854775808",
            "{\"amount\": 1.00000000000000001}",
        ] {
            assert!(inexact_number(inexact).is_some(), "{inexact}");
            let refused = Override::parse(&format!("data.x={inexact}")).unwrap_err();
            assert!(refused.to_string().contains("quote it"), "{refused}");
        }
    }
    use serde_json::json;

    #[test]
    fn overrides_are_typed_and_create_objects() {
        let mut value = json!({"a": {"b": [1, {"c": 2}]}});
        Override::parse("a.b.1.c=\"007\"")
            .unwrap()
            .apply(&mut value)
            .unwrap();
        Override::parse("a.d.e=50000")
            .unwrap()
            .apply(&mut value)
            .unwrap();
        Override::parse("a.f=success")
            .unwrap()
            .apply(&mut value)
            .unwrap();
        Override::parse("a.g=null")
            .unwrap()
            .apply(&mut value)
            .unwrap();
        assert_eq!(
            value,
            json!({"a": {"b": [1, {"c": "007"}], "d": {"e": 50000}, "f": "success", "g": null}})
        );
        assert!(Override::parse("novalue").is_err());
        assert!(
            Override::parse("a.b.9=1")
                .unwrap()
                .apply(&mut value)
                .is_err()
        );
        assert!(
            Override::parse("a.f.x=1")
                .unwrap()
                .apply(&mut value)
                .is_err()
        );
        assert_eq!(lookup(&value, "a.b.1.c"), Some(&json!("007")));
    }

    #[test]
    fn seeded_output_is_reproducible() {
        let mut first = EmulatorRng::new(Some(7));
        let mut second = EmulatorRng::new(Some(7));
        assert_eq!(first.base62_id("pay_", 14), second.base62_id("pay_", 14));
        let uuid = first.uuid_v4();
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4");
    }
}
