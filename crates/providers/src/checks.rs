//! Identifier and arithmetic checks that become warnings on canonical events. None of them ever
//! rejects a message.

use billhook_core::event::Warning;
use billhook_core::identifiers::{Gstin, check_hsn, check_ifsc, check_vpa};
use billhook_core::money::Amount;

/// Collects warnings while a provider module walks a message.
#[derive(Debug, Default)]
pub(crate) struct Warnings(Vec<Warning>);

impl Warnings {
    pub(crate) fn into_vec(self) -> Vec<Warning> {
        self.0
    }

    pub(crate) fn push(&mut self, code: &str, path: &str, message: impl Into<String>) {
        self.0.push(Warning::new(code, path, message));
    }

    pub(crate) fn gstin(&mut self, value: Option<&str>, path: &str) {
        if let Some(value) = value.filter(|v| !v.is_empty())
            && let Err(error) = Gstin::parse(value)
        {
            self.push("invalid_gstin", path, error.to_string());
        }
    }

    pub(crate) fn ifsc(&mut self, value: Option<&str>, path: &str) {
        if let Some(value) = value.filter(|v| !v.is_empty())
            && let Err(error) = check_ifsc(value)
        {
            self.push("invalid_ifsc", path, error.to_string());
        }
    }

    pub(crate) fn vpa(&mut self, value: Option<&str>, path: &str) {
        if let Some(value) = value.filter(|v| !v.is_empty())
            && let Err(error) = check_vpa(value)
        {
            self.push("invalid_vpa", path, error.to_string());
        }
    }

    pub(crate) fn hsn(&mut self, value: Option<&str>, path: &str) {
        if let Some(value) = value.filter(|v| !v.is_empty())
            && let Err(error) = check_hsn(value)
        {
            self.push("invalid_hsn", path, error.to_string());
        }
    }

    /// Warns when `actual` differs from `expected` (both present).
    pub(crate) fn total(
        &mut self,
        actual: Option<Amount>,
        expected: Option<Amount>,
        path: &str,
        what: &str,
    ) {
        if let (Some(actual), Some(expected)) = (actual, expected)
            && actual != expected
        {
            self.push(
                "totals_mismatch",
                path,
                format!("{what}: expected {expected} minor units, found {actual}"),
            );
        }
    }

    /// Warns about a status the provider module has no meaning for; it is kept verbatim.
    pub(crate) fn unknown_status(&mut self, status: &str, path: &str) {
        self.push(
            "unknown_status",
            path,
            format!("status `{status}` is not in billhook's vocabulary; kept as sent"),
        );
    }
}

/// A non-negative decimal as an integer numerator over a power-of-ten denominator, for exact
/// arithmetic on quantities and tax rates (`"2.5"` → 25 / 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ratio {
    pub(crate) numerator: i128,
    pub(crate) denominator: i128,
}

impl Ratio {
    pub(crate) fn parse(text: &str) -> Option<Ratio> {
        let (whole, fraction) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
        if whole.is_empty() && fraction.is_empty()
            || !whole
                .bytes()
                .chain(fraction.bytes())
                .all(|b| b.is_ascii_digit())
            || whole.len() + fraction.len() > 30
        {
            return None;
        }
        let digits = format!("{whole}{fraction}");
        let numerator = digits.parse().ok()?;
        let denominator = 10i128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
        Some(Ratio {
            numerator,
            denominator,
        })
    }
}

/// True when `total` is `base × (1 + rate%)` to within one minor unit. Figures too large to
/// multiply exactly are not judged (true): a warning must be right when it is given.
pub(crate) fn tax_inclusive_matches(base: Amount, rate: Ratio, total: Amount) -> bool {
    let judged = || {
        let hundred = rate.denominator.checked_mul(100)?;
        let expected_scaled =
            i128::from(base.minor()).checked_mul(hundred.checked_add(rate.numerator)?)?;
        let actual_scaled = i128::from(total.minor()).checked_mul(hundred)?;
        Some(actual_scaled.checked_sub(expected_scaled)?.unsigned_abs() <= hundred.unsigned_abs())
    };
    judged().unwrap_or(true)
}

/// True when `amount` is `unit_price × quantity` to within one minor unit; figures too large to
/// multiply exactly are not judged (true).
pub(crate) fn product_matches(unit_price: Amount, quantity: Ratio, amount: Amount) -> bool {
    let judged = || {
        let expected_scaled = i128::from(unit_price.minor()).checked_mul(quantity.numerator)?;
        let actual_scaled = i128::from(amount.minor()).checked_mul(quantity.denominator)?;
        Some(
            actual_scaled.checked_sub(expected_scaled)?.unsigned_abs()
                <= quantity.denominator.unsigned_abs(),
        )
    };
    judged().unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_tax_and_product_arithmetic() {
        let rate = Ratio::parse("18").unwrap();
        assert!(tax_inclusive_matches(
            Amount::from_minor(200),
            rate,
            Amount::from_minor(236)
        ));
        assert!(!tax_inclusive_matches(
            Amount::from_minor(200),
            rate,
            Amount::from_minor(400)
        ));
        let half = Ratio::parse("2.5").unwrap();
        assert!(tax_inclusive_matches(
            Amount::from_minor(1000),
            half,
            Amount::from_minor(1025)
        ));
        let quantity = Ratio::parse("1.5").unwrap();
        assert!(product_matches(
            Amount::from_minor(200),
            quantity,
            Amount::from_minor(300)
        ));
        assert!(!product_matches(
            Amount::from_minor(200),
            quantity,
            Amount::from_minor(400)
        ));
        assert_eq!(Ratio::parse("x"), None);
        // Thirty-digit figures overflow even i128 once multiplied: not judged, not a panic.
        let huge = Ratio::parse(&"9".repeat(30)).unwrap();
        let most = Amount::from_minor(i64::MAX);
        assert!(product_matches(most, huge, Amount::from_minor(1)));
        assert!(tax_inclusive_matches(most, huge, Amount::from_minor(1)));
    }

    #[test]
    fn identifier_warnings() {
        let mut warnings = Warnings::default();
        warnings.gstin(Some("22AAAAA0000A3Z9"), "a");
        warnings.gstin(Some("27AAPFU0939F1ZV"), "b");
        warnings.gstin(Some(""), "c");
        warnings.ifsc(Some("SBIN0070305"), "d");
        warnings.vpa(Some("test@vpa"), "e");
        warnings.hsn(Some("19059040"), "f");
        let warnings = warnings.into_vec();
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].code, "invalid_gstin");
        assert_eq!(warnings[0].path, "a");
    }
}
