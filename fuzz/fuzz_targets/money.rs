//! Fuzzes money parsing: any text is an exact amount or a clear error, and an amount's major-unit
//! text parses back to the same minor units.
#![no_main]

use billhook_core::money::{Amount, Currency};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(amount) = Amount::parse_major(text, Currency::INR) {
        let printed = amount.format_major(Currency::INR);
        assert_eq!(Amount::parse_major(&printed, Currency::INR), Ok(amount));
    }
    let _ = Amount::parse_minor(text, Currency::INR);
});
