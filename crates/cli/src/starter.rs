//! The commented starter configuration `billhook serve` writes on first run: one source per
//! provider with freshly generated secrets, so `serve` and `trigger` work with no setup.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;

/// A random secret of 24 bytes as URL-safe text.
pub(crate) fn generate_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The starter configuration with fresh secrets.
pub(crate) fn starter_config() -> String {
    TEMPLATE
        .replace("{razorpay}", &generate_secret())
        .replace("{zwitch}", &generate_secret())
        .replace("{setu}", &generate_secret())
        .replace("{caminvoice}", &generate_secret())
}

const TEMPLATE: &str = r#"# billhook configuration, written by the first `billhook serve`.
# Every key is documented in docs/configuration.md. Environment variables override this file:
# BILLHOOK_LISTEN, BILLHOOK_DATABASE_URL, BILLHOOK_DATA_DIR, BILLHOOK_ADMIN_TOKEN, and nested keys
# with `__` (BILLHOOK_INGEST__MAX_BODY_BYTES=2097152).

# listen = "127.0.0.1:8080"
# database_url = "sqlite://./billhook-data/billhook.db"   # or postgres://user@host/db

[ingest]
# max_body_bytes = 1048576      # larger bodies are refused with 413
# dedup_window = "8d"           # how long a provider's event id is remembered (at least 8 days)

# One [[source]] per provider account. The name is the URL segment: POST /ingest/{name}.
# The secrets below were generated for local use with `billhook trigger`; replace them with the
# ones from each provider's dashboard when you point a real account here.

[[source]]
name = "razorpay"
provider = "razorpay"
# Razorpay dashboard → Webhooks → secret. Newest first; keep the previous one while rotating.
secrets = ["{razorpay}"]

[[source]]
name = "zwitch"
provider = "zwitch"
# Zwitch dashboard → Webhooks → Signing Secret. Covers UPI collect and Bharat Connect.
secrets = ["{zwitch}"]
# The ledger links a UPI payment to the invoice whose number or id its merchant reference (or
# remark) names; narrow it with reconcile = ["merchant_reference"].

[[source]]
name = "setu"
provider = "setu_bbps"
# Setu does not sign these callbacks: agree a credential with Setu. Alternatives:
#   auth = { kind = "basic", username = "setu", password = "…" }
#   auth = { kind = "jwt_hs256", secret = "…" }      # iat older than 120 s is refused
auth = { kind = "header", name = "X-BILL-WEBHOOK-API-KEY", value = "{setu}" }
# allow_ips = ["52.66.75.174/32"]

[[source]]
name = "caminvoice"
provider = "caminvoice"
# CamInvoice documents no signature: give it a URL with a secret last segment,
# POST /ingest/caminvoice/<token>, or use a header, Basic or JWT credential as for Setu.
auth = { kind = "path_token", token = "{caminvoice}" }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_starter_config_is_valid_and_has_fresh_secrets() {
        let text = starter_config();
        assert!(!text.contains("{razorpay}"));
        let config = billhook_server::config::Config::from_toml(&text).unwrap();
        let settings = config
            .into_settings(billhook_providers::auth::Secret::new("t"))
            .unwrap();
        assert_eq!(settings.sources.len(), 4);
        assert_ne!(starter_config(), text);
    }
}
