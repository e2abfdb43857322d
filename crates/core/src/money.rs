//! Money: integer minor units and an upper-case ISO 4217 currency. Never a float.
//!
//! Providers write amounts three ways: integer paise (Razorpay, Setu `amount`), decimal rupees as a
//! JSON number (Zwitch `amount: 3.69`, Bharat Connect `unit_price: 2.0`) and decimal rupees as a
//! string (Setu plans, `"99.0"`). All of them are parsed here from the number's *text*, digit by
//! digit, so `3.69` is exactly 369 paise and a value that has no exact minor-unit form (`3.691` INR)
//! is refused with a clear error instead of being rounded.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a text is not an amount of money in the expected currency.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("`{0}` is not a decimal number")]
    NotANumber(String),
    #[error(
        "`{text}` has more decimal places than {currency} allows ({max}); refusing to round money"
    )]
    TooPrecise {
        text: String,
        currency: Currency,
        max: u32,
    },
    #[error("`{0}` is too large to be an amount of money")]
    Overflow(String),
    #[error("`{0}` is negative; an amount paid, owed or refunded never is")]
    Negative(String),
    #[error("`{0}` is not an ISO 4217 currency code")]
    BadCurrency(String),
}

/// An ISO 4217 currency code, stored upper-case (`inr` from Zwitch becomes `INR`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    pub const INR: Currency = Currency(*b"INR");
    pub const KHR: Currency = Currency(*b"KHR");
    pub const USD: Currency = Currency(*b"USD");

    /// Accepts three ASCII letters in any case.
    pub fn parse(text: &str) -> Result<Self, MoneyError> {
        let bytes = text.as_bytes();
        if bytes.len() != 3 || !bytes.iter().all(u8::is_ascii_alphabetic) {
            return Err(MoneyError::BadCurrency(text.to_owned()));
        }
        Ok(Self([
            bytes[0].to_ascii_uppercase(),
            bytes[1].to_ascii_uppercase(),
            bytes[2].to_ascii_uppercase(),
        ]))
    }

    pub fn as_str(&self) -> &str {
        // Built only from ASCII letters, so always valid UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }

    /// Decimal places of the minor unit (2 for INR: 1 rupee = 100 paise).
    pub fn minor_exponent(&self) -> u32 {
        match &self.0 {
            b"BIF" | b"CLP" | b"DJF" | b"GNF" | b"ISK" | b"JPY" | b"KMF" | b"KRW" | b"PYG"
            | b"RWF" | b"UGX" | b"UYI" | b"VND" | b"VUV" | b"XAF" | b"XOF" | b"XPF" => 0,
            b"BHD" | b"IQD" | b"JOD" | b"KWD" | b"LYD" | b"OMR" | b"TND" => 3,
            _ => 2,
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Currency {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::schema::string_schema(None, "An upper-case ISO 4217 currency code (`INR`).")
    }
}

impl utoipa::ToSchema for Currency {}

/// An amount in minor units of a currency given alongside it (paise for INR).
///
/// Serialized as a plain JSON integer; `i64` keeps every digit on the way through serde_json.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Amount(i64);

impl Amount {
    pub const ZERO: Amount = Amount(0);

    pub const fn from_minor(minor: i64) -> Self {
        Self(minor)
    }

    pub const fn minor(&self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }

    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).map(Amount)
    }

    /// Parses an amount written in major units (`"3.69"` rupees → 369 paise).
    pub fn parse_major(text: &str, currency: Currency) -> Result<Self, MoneyError> {
        parse_decimal(text, currency.minor_exponent(), currency)
    }

    /// Parses an amount already in minor units (`"479030"` paise). A fractional part is accepted
    /// only when it is zero (`479030.0`).
    pub fn parse_minor(text: &str, currency: Currency) -> Result<Self, MoneyError> {
        parse_decimal(text, 0, currency)
    }

    /// The amount in major units as exact decimal text (`479030` INR → `4790.30`).
    pub fn format_major(&self, currency: Currency) -> String {
        let exponent = currency.minor_exponent();
        let sign = if self.0 < 0 { "-" } else { "" };
        let digits = self.0.unsigned_abs().to_string();
        if exponent == 0 {
            return format!("{sign}{digits}");
        }
        let width = usize::try_from(exponent).unwrap_or(2) + 1;
        let padded = format!("{digits:0>width$}");
        let (whole, fraction) = padded.split_at(padded.len() - (width - 1));
        format!("{sign}{whole}.{fraction}")
    }
}

impl utoipa::PartialSchema for Amount {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Integer)
            .format(Some(utoipa::openapi::schema::SchemaFormat::KnownFormat(
                utoipa::openapi::schema::KnownFormat::Int64,
            )))
            .description(Some(
                "An amount in minor units of the object's currency (paise for INR).",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Amount {}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An amount with its currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub amount: Amount,
    pub currency: Currency,
}

/// Parses a decimal number's text (JSON grammar, plus a leading `+` and a bare `.5` or `5.`) and
/// scales it by `10^shift_by`, demanding an exact integer result.
fn parse_decimal(text: &str, shift_by: u32, currency: Currency) -> Result<Amount, MoneyError> {
    let not_a_number = || MoneyError::NotANumber(text.to_owned());
    let trimmed = text.trim();
    let (negative, unsigned) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => {
            let exponent: i64 = unsigned[at + 1..].parse().map_err(|_| not_a_number())?;
            (&unsigned[..at], exponent)
        }
        None => (unsigned, 0),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (mantissa, ""),
    };
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(not_a_number());
    }

    // value = digits × 10^(exponent − fraction.len()); minor units = value × 10^shift_by.
    let digits: String = whole.chars().chain(fraction.chars()).collect();
    let digits = digits.trim_start_matches('0');
    let fraction_len = i64::try_from(fraction.len()).map_err(|_| not_a_number())?;
    let shift = exponent
        .saturating_sub(fraction_len)
        .saturating_add(i64::from(shift_by));
    if digits.is_empty() {
        return Ok(Amount::ZERO);
    }
    let significant = if shift < 0 {
        let dropped = usize::try_from(shift.unsigned_abs()).unwrap_or(usize::MAX);
        if dropped > digits.len() || !digits[digits.len() - dropped..].bytes().all(|b| b == b'0') {
            return Err(MoneyError::TooPrecise {
                text: text.to_owned(),
                currency,
                max: shift_by,
            });
        }
        digits[..digits.len() - dropped].to_owned()
    } else {
        let zeros = usize::try_from(shift).unwrap_or(usize::MAX);
        if digits.len().saturating_add(zeros) > 19 {
            return Err(MoneyError::Overflow(text.to_owned()));
        }
        format!("{digits}{}", "0".repeat(zeros))
    };
    let magnitude: i128 = if significant.is_empty() {
        0
    } else {
        significant
            .parse()
            .map_err(|_| MoneyError::Overflow(text.to_owned()))?
    };
    let value = if negative { -magnitude } else { magnitude };
    i64::try_from(value)
        .map(Amount)
        .map_err(|_| MoneyError::Overflow(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rupees(text: &str) -> Result<i64, MoneyError> {
        Amount::parse_major(text, Currency::INR).map(|amount| amount.minor())
    }

    #[test]
    fn decimal_rupees_become_exact_paise() {
        assert_eq!(rupees("1"), Ok(100));
        assert_eq!(rupees("2.0"), Ok(200));
        assert_eq!(rupees("3.69"), Ok(369));
        assert_eq!(rupees("99.0"), Ok(9900));
        assert_eq!(rupees("0.01"), Ok(1));
        assert_eq!(rupees("-5.5"), Ok(-550));
        assert_eq!(rupees("1e2"), Ok(10_000));
        assert_eq!(rupees("1.5E-1"), Ok(15));
        assert_eq!(rupees("2.000"), Ok(200));
        assert_eq!(rupees("0"), Ok(0));
        assert_eq!(rupees("0.00"), Ok(0));
    }

    #[test]
    fn more_than_two_decimals_for_inr_is_refused() {
        let error = rupees("3.691").unwrap_err();
        assert!(matches!(error, MoneyError::TooPrecise { max: 2, .. }));
        assert_eq!(
            error.to_string(),
            "`3.691` has more decimal places than INR allows (2); refusing to round money"
        );
        assert!(rupees("0.001").is_err());
    }

    #[test]
    fn garbage_and_overflow_are_refused() {
        for text in ["", "abc", "1.2.3", "--1", "1e", ".", "0x10", "1,000"] {
            assert!(
                matches!(rupees(text), Err(MoneyError::NotANumber(_))),
                "{text}"
            );
        }
        assert!(matches!(
            rupees("100000000000000000000"),
            Err(MoneyError::Overflow(_))
        ));
        assert!(matches!(rupees("1e400"), Err(MoneyError::Overflow(_))));
        // The smallest exponent there is, in a field already in minor units: refused, not a
        // panic negating it.
        assert!(matches!(
            Amount::parse_minor("1e-9223372036854775808", Currency::INR),
            Err(MoneyError::TooPrecise { .. })
        ));
    }

    #[test]
    fn minor_units_keep_every_digit() {
        let big = "9007199254740993"; // 2^53 + 1: not representable as f64
        assert_eq!(
            Amount::parse_minor(big, Currency::INR).unwrap().minor(),
            9_007_199_254_740_993
        );
        assert_eq!(
            Amount::parse_minor("479030", Currency::INR)
                .unwrap()
                .minor(),
            479_030
        );
        assert!(Amount::parse_minor("479030.5", Currency::INR).is_err());
    }

    #[test]
    fn formats_major_units() {
        assert_eq!(
            Amount::from_minor(479_030).format_major(Currency::INR),
            "4790.30"
        );
        assert_eq!(Amount::from_minor(5).format_major(Currency::INR), "0.05");
        assert_eq!(
            Amount::from_minor(-550).format_major(Currency::INR),
            "-5.50"
        );
        assert_eq!(
            Amount::from_minor(12).format_major(Currency::parse("jpy").unwrap()),
            "12"
        );
    }

    #[test]
    fn currency_codes_are_upper_cased() {
        assert_eq!(Currency::parse("inr").unwrap(), Currency::INR);
        assert!(Currency::parse("rupees").is_err());
        assert_eq!(serde_json::to_string(&Currency::INR).unwrap(), "\"INR\"");
    }

    proptest! {
        #[test]
        fn any_paise_value_round_trips_through_its_rupee_text(paise in -(10i64.pow(17))..10i64.pow(17)) {
            let text = Amount::from_minor(paise).format_major(Currency::INR);
            prop_assert_eq!(rupees(&text), Ok(paise));
        }

        #[test]
        fn whole_rupees_with_any_zero_decimals(rupee in 0i64..10i64.pow(15), zeros in 0usize..6) {
            let text = if zeros == 0 { rupee.to_string() } else { format!("{rupee}.{}", "0".repeat(zeros)) };
            prop_assert_eq!(rupees(&text), Ok(rupee * 100));
        }

        #[test]
        fn a_third_nonzero_decimal_is_always_refused(rupee in 0i64..10i64.pow(12), cents in 0u32..100, third in 1u32..10) {
            let text = format!("{rupee}.{cents:02}{third}");
            let refused = matches!(rupees(&text), Err(MoneyError::TooPrecise { .. }));
            prop_assert!(refused);
        }

        #[test]
        fn large_integers_survive_digit_for_digit(value in any::<i64>()) {
            prop_assert_eq!(Amount::parse_minor(&value.to_string(), Currency::INR).map(|a| a.minor()), Ok(value));
        }

        #[test]
        fn never_panics_on_arbitrary_text(text in "\\PC{0,30}") {
            let _ = rupees(&text);
        }
    }
}
