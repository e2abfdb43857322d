//! Instants as billhook speaks them: UTC, millisecond precision, RFC 3339 on the wire.
//!
//! Providers send unix seconds (Razorpay, Zwitch) or ISO 8601 with an offset such as `+05:30` (Setu).
//! Everything is converted to UTC on the way in; the offset a provider used is not kept because the
//! raw request is.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, UtcOffset};

/// Why a text is not a time billhook understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("`{0}` is not an RFC 3339 / ISO 8601 date-time with an offset")]
    NotRfc3339(String),
    #[error("`{0}` is not a date (YYYY-MM-DD)")]
    NotADate(String),
    #[error("unix time {0} is out of range")]
    OutOfRange(i64),
    #[error("`{0}` is not a whole number of unix seconds")]
    NotUnixSeconds(String),
}

/// An instant in UTC with millisecond precision.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self::from_offset_date_time(OffsetDateTime::now_utc())
    }

    pub const fn from_unix_millis(millis: i64) -> Self {
        Self(millis)
    }

    /// From unix seconds, as Razorpay and Zwitch send them. Fails beyond the year 9999.
    pub fn from_unix_seconds(seconds: i64) -> Result<Self, TimeError> {
        // Keep within what RFC 3339 can print (years 0000-9999).
        const MAX_SECONDS: i64 = 253_402_300_799;
        if !(-62_167_219_200..=MAX_SECONDS).contains(&seconds) {
            return Err(TimeError::OutOfRange(seconds));
        }
        Ok(Self(seconds * 1000))
    }

    /// Parses RFC 3339 / ISO 8601 with an explicit offset (`2023-08-27T17:09:24.566+05:30`).
    pub fn parse_rfc3339(text: &str) -> Result<Self, TimeError> {
        OffsetDateTime::parse(text, &Rfc3339)
            .map(Self::from_offset_date_time)
            .map_err(|_| TimeError::NotRfc3339(text.to_owned()))
    }

    fn from_offset_date_time(at: OffsetDateTime) -> Self {
        let millis = at.unix_timestamp_nanos() / 1_000_000;
        Self(i64::try_from(millis).unwrap_or(i64::MAX))
    }

    pub const fn unix_millis(&self) -> i64 {
        self.0
    }

    pub const fn unix_seconds(&self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// This instant plus `duration`, saturating.
    pub fn add(&self, duration: Duration) -> Self {
        let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(millis))
    }

    /// This instant minus `duration`, saturating.
    pub fn sub(&self, duration: Duration) -> Self {
        let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Self(self.0.saturating_sub(millis))
    }

    /// How long after `earlier` this instant is; zero if it is not after.
    pub fn since(&self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    /// The RFC 3339 text in UTC, with milliseconds only when they are not zero.
    pub fn to_rfc3339(&self) -> String {
        let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            .to_offset(UtcOffset::UTC);
        at.format(&Rfc3339)
            .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z"))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::schema::string_schema(
            Some(utoipa::openapi::schema::KnownFormat::DateTime),
            "An RFC 3339 instant in UTC.",
        )
    }
}

impl utoipa::ToSchema for Timestamp {}

/// A calendar date without a time zone (`2023-06-02`), as providers write due dates.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CalendarDate(Date);

impl CalendarDate {
    pub fn parse(text: &str) -> Result<Self, TimeError> {
        let format = time::macros::format_description!("[year]-[month]-[day]");
        Date::parse(text, &format)
            .map(Self)
            .map_err(|_| TimeError::NotADate(text.to_owned()))
    }
}

impl fmt::Display for CalendarDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}",
            self.0.year(),
            u8::from(self.0.month()),
            self.0.day()
        )
    }
}

impl fmt::Debug for CalendarDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for CalendarDate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CalendarDate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Parses a duration written as text: `500ms`, `30s`, `5m`, `2h`, `8d` (a bare number is
/// seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as `30s`, `5m`, `2h` or `8d`"))?;
    let millis = match unit.trim() {
        "ms" => Some(number),
        "s" | "" => number.checked_mul(1_000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        "d" => number.checked_mul(86_400_000),
        _ => return Err(format!("`{text}`: the unit must be ms, s, m, h or d")),
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too long a duration"))
}

/// Writes a duration in the largest unit that divides it (`7200s` → `2h`).
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    let units = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    for (size, unit) in units {
        if millis >= size && millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("8d"), Ok(Duration::from_secs(8 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("fast").is_err());
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn india_offset_is_converted_to_utc() {
        let at = Timestamp::parse_rfc3339("2023-08-27T17:09:24.566+05:30").unwrap();
        assert_eq!(at.to_rfc3339(), "2023-08-27T11:39:24.566Z");
        let whole = Timestamp::parse_rfc3339("2020-12-12T13:12:00+05:30").unwrap();
        assert_eq!(whole.to_rfc3339(), "2020-12-12T07:42:00Z");
    }

    #[test]
    fn unix_seconds_print_as_utc() {
        let at = Timestamp::from_unix_seconds(1_567_687_078).unwrap();
        assert_eq!(at.to_rfc3339(), "2019-09-05T12:37:58Z");
        assert_eq!(at.unix_seconds(), 1_567_687_078);
        assert!(Timestamp::from_unix_seconds(i64::MAX).is_err());
    }

    #[test]
    fn serde_round_trip() {
        let at = Timestamp::from_unix_millis(1_700_000_000_123);
        let json = serde_json::to_string(&at).unwrap();
        assert_eq!(json, "\"2023-11-14T22:13:20.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), at);
    }

    #[test]
    fn dates_parse_and_print() {
        let date = CalendarDate::parse("2023-06-02").unwrap();
        assert_eq!(date.to_string(), "2023-06-02");
        assert!(CalendarDate::parse("02/06/2023").is_err());
    }
}
