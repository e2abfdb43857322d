//! Fuzzes the razorpay parser and normalizer: any bytes, with or without the provider's headers,
//! must yield events or a quarantine error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    billhook_fuzz_support::normalize("razorpay", body);
});
