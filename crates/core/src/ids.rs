//! billhook's own identifiers: a short type prefix and a ULID, e.g. `evt_01JD3R6Q9K5M2XW8T4HZ7BCN1E`.
//!
//! The ULID's first 48 bits are the creation time in milliseconds, so ids sort by creation time both
//! as text and in a database index; that is what cursor pagination relies on. Each kind of id is its
//! own type, so an event id can never be passed where an endpoint id is expected.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use rand::Rng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ulid::Ulid;

use crate::time::Timestamp;

/// Why a text is not an id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("expected an id starting with `{expected}_`")]
    WrongPrefix { expected: &'static str },
    #[error("`{0}` is not a valid id (a prefix and 26 Crockford base32 characters)")]
    Malformed(String),
}

/// The last id handed out, so that ids made in the same millisecond still sort in creation
/// order (the events of one message keep their order in listings).
static LAST: Mutex<u128> = Mutex::new(0);

/// Draws the 80 random bits of a new ULID; within the millisecond of the previous id it is the
/// previous id plus one instead. Shared by every id kind.
fn fresh_ulid(at: Timestamp) -> Ulid {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes[6..]);
    let random = u128::from_be_bytes(bytes);
    let candidate = Ulid::from_parts(at.unix_millis().max(0).unsigned_abs(), random);
    let Ok(mut last) = LAST.lock() else {
        return candidate;
    };
    let previous = Ulid(*last);
    let next = if previous.timestamp_ms() == candidate.timestamp_ms() && candidate.0 <= previous.0 {
        Ulid(previous.0.wrapping_add(1))
    } else {
        candidate
    };
    *last = next.0;
    next
}

/// A fresh time-sortable id with a given prefix, for ids that are plain text (`iv_…`).
pub fn prefixed_id(prefix: &str, at: Timestamp) -> String {
    format!("{prefix}_{}", fresh_ulid(at))
}

fn parse_prefixed(text: &str, prefix: &'static str) -> Result<Ulid, IdError> {
    let rest = text
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .ok_or(IdError::WrongPrefix { expected: prefix })?;
    exact_ulid(rest).ok_or_else(|| IdError::Malformed(text.to_owned()))
}

/// The ULID `text` spells, if it spells it as billhook writes one, letters of either case.
/// A value past 128 bits (a first digit above `7`) is refused: it would decode, wrapped, to an
/// id whose text is another one.
pub(crate) fn exact_ulid(text: &str) -> Option<Ulid> {
    // Checked on the bytes: ids are parsed for every row read, and rendering each one again to
    // compare would cost an allocation apiece.
    let bytes = text.as_bytes();
    let exact =
        bytes.len() == ulid::ULID_LEN && bytes[0] <= b'7' && bytes.iter().all(|byte| {
            matches!(
                byte.to_ascii_uppercase(),
                b'0'..=b'9' | b'A'..=b'H' | b'J' | b'K' | b'M' | b'N' | b'P'..=b'T' | b'V'..=b'Z'
            )
        });
    exact.then(|| Ulid::from_string(text).ok()).flatten()
}

macro_rules! prefixed_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Ulid);

        impl $name {
            /// The text before the underscore.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh id stamped with the current time.
            pub fn new() -> Self {
                Self(fresh_ulid(Timestamp::now()))
            }

            /// A fresh id stamped with `at`.
            pub fn new_at(at: Timestamp) -> Self {
                Self(fresh_ulid(at))
            }

            /// The smallest id created at `at`: a cursor bound for time-range queries.
            pub fn lower_bound(at: Timestamp) -> Self {
                Self(Ulid::from_parts(at.unix_millis().max(0).unsigned_abs(), 0))
            }

            /// The id right after this one: the exclusive bound that keeps this id inside a
            /// range (the largest id is its own successor).
            pub fn successor(&self) -> Self {
                Self(Ulid(self.0.0.saturating_add(1)))
            }

            /// The creation time encoded in the id, to the millisecond.
            pub fn created_at(&self) -> Timestamp {
                Timestamp::from_unix_millis(i64::try_from(self.0.timestamp_ms()).unwrap_or(i64::MAX))
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}_{}", $prefix, self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                parse_prefixed(text, $prefix).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some(concat!("^", $prefix, "_[0-7][0-9A-HJKMNP-TV-Z]{25}$")))
                    .examples([concat!($prefix, "_01JD3R6Q9K5M2XW8T4HZ7BCN1E")])
                    .description(Some(concat!("A billhook id: `", $prefix, "_` and a ULID.")))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

prefixed_id!(
    /// A canonical event.
    EventId,
    "evt"
);
prefixed_id!(
    /// One received provider request, as stored.
    InboundId,
    "inb"
);
prefixed_id!(
    /// A subscriber endpoint.
    EndpointId,
    "ep"
);
prefixed_id!(
    /// One message owed to one endpoint (the outbox row).
    DeliveryId,
    "dlv"
);
prefixed_id!(
    /// One HTTP attempt of a delivery.
    AttemptId,
    "att"
);
prefixed_id!(
    /// An admin API token.
    TokenId,
    "tok"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = EventId::new();
        let text = id.to_string();
        assert!(text.starts_with("evt_"));
        assert_eq!(text.len(), 4 + 26);
        assert_eq!(text.parse::<EventId>().unwrap(), id);
    }

    #[test]
    fn a_successor_sorts_right_after_its_id_as_text_too() {
        let id: DeliveryId = "dlv_01JD3R6Q9K5M2XW8T4HZ7BCN1Z".parse().unwrap();
        let next = id.successor();
        // The last digit carries into the one before it.
        assert_eq!(next.to_string(), "dlv_01JD3R6Q9K5M2XW8T4HZ7BCN20");
        assert!(id.to_string() < next.to_string());
        let last: DeliveryId = "dlv_7ZZZZZZZZZZZZZZZZZZZZZZZZZ".parse().unwrap();
        assert_eq!(last.successor(), last);
    }

    #[test]
    fn wrong_prefix_is_refused() {
        let id = EventId::new().to_string();
        assert_eq!(
            id.parse::<EndpointId>(),
            Err(IdError::WrongPrefix { expected: "ep" })
        );
        assert!(matches!(
            "evt_notaulid".parse::<EventId>(),
            Err(IdError::Malformed(_))
        ));
    }

    #[test]
    fn only_an_exact_spelling_parses() {
        let id = EventId::new();
        let text = id.to_string();
        assert_eq!(text.to_lowercase().parse::<EventId>(), Ok(id));
        let ulid = &text[4..];
        // A first digit past `7` overflows 128 bits: it would wrap to another id.
        let overflowing = format!("evt_{}{}", "8", &ulid[1..]);
        assert!(overflowing.parse::<EventId>().is_err());
        for _ in 0..1000 {
            let id = EventId::new();
            assert_eq!(id.to_string().parse::<EventId>(), Ok(id));
        }
        let max = Ulid(u128::MAX).to_string();
        assert_eq!(exact_ulid(&max), Some(Ulid(u128::MAX)));
    }

    #[test]
    fn ids_sort_by_creation_time() {
        let earlier = EventId::new_at(Timestamp::from_unix_millis(1_700_000_000_000));
        let later = EventId::new_at(Timestamp::from_unix_millis(1_700_000_000_001));
        assert!(earlier < later);
        assert!(earlier.to_string() < later.to_string());
        assert_eq!(earlier.created_at().unix_millis(), 1_700_000_000_000);
        assert!(EventId::lower_bound(later.created_at()) <= later);
    }

    #[test]
    fn ids_of_one_millisecond_keep_creation_order() {
        let at = Timestamp::from_unix_millis(1_800_000_000_000);
        let ids: Vec<EventId> = (0..1000).map(|_| EventId::new_at(at)).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(ids.iter().all(|id| id.created_at() == at));
    }

    #[test]
    fn serde_uses_the_text_form() {
        let id = InboundId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<InboundId>(&json).unwrap(), id);
    }
}
