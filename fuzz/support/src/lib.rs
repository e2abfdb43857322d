//! What every provider fuzz target does with its input.

use billhook_core::time::Timestamp;
use billhook_providers::{InboundRequest, by_name};

/// Normalizes `body` as `provider`, once bare and once with the headers real requests carry,
/// and compacts it as Zwitch's verifier does. Only panics are failures.
pub fn normalize(provider: &str, body: &[u8]) {
    let provider = by_name(provider).expect("a registered provider");
    let bare = http::HeaderMap::new();
    let mut with_id = http::HeaderMap::new();
    with_id.insert("x-razorpay-event-id", http::HeaderValue::from_static("evt_fuzz"));
    for headers in [&bare, &with_id] {
        let request = InboundRequest {
            headers,
            body,
            remote_ip: None,
            path_token: None,
            received_at: Timestamp::from_unix_millis(1_700_000_000_000),
        };
        if let Ok(normalized) = provider.normalize(&request) {
            assert!(!normalized.dedup_key.is_empty());
        }
    }
    let _ = billhook_providers::json::compact(body);
}
