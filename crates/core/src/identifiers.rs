//! Indian business and payment identifiers: GSTIN, IFSC, UPI VPA and HSN/SAC codes.
//!
//! billhook checks them to *warn*, never to reject: a provider's event with a malformed GSTIN is
//! still a real event that happened (the seeds' own samples carry invalid GSTINs). Each parser
//! returns a typed value or an error that becomes a warning on the canonical event.

use std::fmt;

use serde::{Serialize, Serializer};

const BASE36: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// Why a text is not a valid GSTIN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GstinError {
    #[error("a GSTIN has 15 characters, `{0}` has {1}")]
    Length(String, usize),
    #[error("`{0}` does not start with a GST state code (01-38, 97 or 99)")]
    StateCode(String),
    #[error("characters 3-12 of `{0}` are not a PAN (5 letters, 4 digits, 1 letter)")]
    Pan(String),
    #[error("character 13 of `{0}` must be 1-9 or A-Z")]
    EntityNumber(String),
    #[error("character 14 of `{0}` must be `Z`")]
    MissingZ(String),
    #[error("`{gstin}` fails its checksum: the check character should be `{expected}`")]
    Checksum { gstin: String, expected: char },
}

/// A GSTIN whose structure and check character are valid.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Gstin(String);

impl Gstin {
    pub fn parse(text: &str) -> Result<Self, GstinError> {
        let bytes = text.as_bytes();
        if bytes.len() != 15 {
            return Err(GstinError::Length(text.to_owned(), text.chars().count()));
        }
        text.get(..2)
            .and_then(|code| code.parse::<u32>().ok())
            .filter(|code| matches!(code, 1..=38 | 97 | 99))
            .ok_or_else(|| GstinError::StateCode(text.to_owned()))?;
        let pan = &bytes[2..12];
        let pan_ok = pan[..5].iter().all(u8::is_ascii_uppercase)
            && pan[5..9].iter().all(u8::is_ascii_digit)
            && pan[9].is_ascii_uppercase();
        if !pan_ok {
            return Err(GstinError::Pan(text.to_owned()));
        }
        if !(bytes[12].is_ascii_uppercase() || (b'1'..=b'9').contains(&bytes[12])) {
            return Err(GstinError::EntityNumber(text.to_owned()));
        }
        if bytes[13] != b'Z' {
            return Err(GstinError::MissingZ(text.to_owned()));
        }
        let expected = gstin_check_char(&text[..14]).unwrap_or('?');
        if char::from(bytes[14]) != expected {
            return Err(GstinError::Checksum {
                gstin: text.to_owned(),
                expected,
            });
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The two-digit GST state code the GSTIN was registered in.
    pub fn state_code(&self) -> &str {
        &self.0[..2]
    }
}

/// The GSTIN check character for the first 14 characters: Luhn mod 36 over `0-9A-Z`, factors
/// 1, 2, 1, 2… from the left, summing `p / 36 + p % 36` of each product `p`.
pub fn gstin_check_char(first_fourteen: &str) -> Option<char> {
    let mut sum = 0u32;
    for (index, byte) in first_fourteen.bytes().enumerate() {
        let value = BASE36.iter().position(|&c| c == byte)?;
        let value = u32::try_from(value).ok()?;
        let factor = if index % 2 == 0 { 1 } else { 2 };
        let product = value * factor;
        sum += product / 36 + product % 36;
    }
    let check = (36 - sum % 36) % 36;
    BASE36
        .get(usize::try_from(check).ok()?)
        .map(|&b| char::from(b))
}

impl fmt::Display for Gstin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Gstin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Gstin {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Why a text is not a valid IFSC, VPA or HSN code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    #[error("`{0}` is not an IFSC (4 letters, `0`, then 6 letters or digits)")]
    Ifsc(String),
    #[error("`{0}` is not a UPI address (`name@handle`)")]
    Vpa(String),
    #[error("`{0}` is not an HSN/SAC code (4, 6 or 8 digits)")]
    Hsn(String),
}

/// Checks an IFSC: `^[A-Z]{4}0[A-Z0-9]{6}$`.
pub fn check_ifsc(text: &str) -> Result<(), IdentifierError> {
    let bytes = text.as_bytes();
    let valid = bytes.len() == 11
        && bytes[..4].iter().all(u8::is_ascii_uppercase)
        && bytes[4] == b'0'
        && bytes[5..]
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(IdentifierError::Ifsc(text.to_owned()))
    }
}

/// Checks a UPI virtual payment address: a local part of letters, digits, `.`, `-` or `_`, an `@`,
/// and a handle of letters and digits.
pub fn check_vpa(text: &str) -> Result<(), IdentifierError> {
    let valid = text.split_once('@').is_some_and(|(local, handle)| {
        !local.is_empty()
            && local.len() <= 256
            && local
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            && !handle.is_empty()
            && handle.len() <= 64
            && handle.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    if valid {
        Ok(())
    } else {
        Err(IdentifierError::Vpa(text.to_owned()))
    }
}

/// Checks an HSN (goods) or SAC (services) code: 4, 6 or 8 digits.
pub fn check_hsn(text: &str) -> Result<(), IdentifierError> {
    let valid = matches!(text.len(), 4 | 6 | 8) && text.bytes().all(|b| b.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(IdentifierError::Hsn(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn published_gstins_are_valid() {
        for gstin in ["27AAPFU0939F1ZV", "29AAGCB7383J1Z4", "24AABCJ1087G1ZT"] {
            let parsed = Gstin::parse(gstin).unwrap();
            assert_eq!(parsed.as_str(), gstin);
        }
        assert_eq!(Gstin::parse("27AAPFU0939F1ZV").unwrap().state_code(), "27");
    }

    #[test]
    fn the_seeds_invalid_gstins_are_reported() {
        assert_eq!(
            Gstin::parse("22AAAAA0000A3Z9"),
            Err(GstinError::Checksum {
                gstin: "22AAAAA0000A3Z9".into(),
                expected: 'A'
            })
        );
        assert_eq!(
            Gstin::parse("22AAAAA0000A1H2"),
            Err(GstinError::MissingZ("22AAAAA0000A1H2".into()))
        );
        assert!(matches!(
            Gstin::parse("55AAPFU0939F1ZV"),
            Err(GstinError::StateCode(_))
        ));
        assert!(matches!(
            Gstin::parse("27AAPFU0939F1Z"),
            Err(GstinError::Length(..))
        ));
    }

    #[test]
    fn ifsc_vpa_and_hsn() {
        assert!(check_ifsc("SBIN0070305").is_ok());
        assert!(check_ifsc("HDFC0000123").is_ok());
        assert!(check_ifsc("SBIN1070305").is_err());
        assert!(check_ifsc("sbin0070305").is_err());
        assert!(check_vpa("9876543210@ibl").is_ok());
        assert!(check_vpa("gaurav.kumar@exampleupi").is_ok());
        assert!(check_vpa("no-handle").is_err());
        assert!(check_vpa("a@b@c").is_err());
        assert!(check_hsn("19059040").is_ok());
        assert!(check_hsn("9983").is_ok());
        assert!(check_hsn("12345").is_err());
    }

    fn gstin_prefix() -> impl Strategy<Value = String> {
        (
            prop_oneof![1u32..=38, Just(97), Just(99)],
            "[A-Z]{5}[0-9]{4}[A-Z]",
            "[1-9A-Z]",
        )
            .prop_map(|(state, pan, entity)| format!("{state:02}{pan}{entity}Z"))
    }

    proptest! {
        #[test]
        fn the_computed_check_character_always_validates(prefix in gstin_prefix()) {
            let check = gstin_check_char(&prefix).unwrap();
            let gstin = format!("{prefix}{check}");
            prop_assert!(Gstin::parse(&gstin).is_ok());
        }

        #[test]
        fn any_other_check_character_fails(prefix in gstin_prefix(), other in 0usize..36) {
            let check = gstin_check_char(&prefix).unwrap();
            let candidate = char::from(BASE36[other]);
            prop_assume!(candidate != check);
            let gstin = format!("{prefix}{candidate}");
            let is_checksum_error = matches!(Gstin::parse(&gstin), Err(GstinError::Checksum { .. }));
            prop_assert!(is_checksum_error);
        }

        #[test]
        fn a_single_changed_character_is_detected(prefix in gstin_prefix(), position in 2usize..12, replacement in 0usize..36) {
            let check = gstin_check_char(&prefix).unwrap();
            let mut bytes = format!("{prefix}{check}").into_bytes();
            prop_assume!(bytes[position] != BASE36[replacement]);
            bytes[position] = BASE36[replacement];
            let mutated = String::from_utf8(bytes).unwrap();
            prop_assert!(Gstin::parse(&mutated).is_err());
        }
    }
}
