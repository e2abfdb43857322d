//! The provider registry: the one list of providers billhook speaks, and the trait each
//! provider module implements.

use billhook_core::entity::SubjectKind;
use billhook_core::ledger::{PaymentRef, StatusRank};
use billhook_core::time::Timestamp;

use crate::auth::{AuthKind, Secret, SourceAuth, Verification, VerifyError};
use crate::emulate::{EmulateError, EmulatedEvent, GenerateOptions, Generated};
use crate::{InboundRequest, NormalizeError, Normalized};

/// Everything billhook knows about one provider.
pub trait Provider: Send + Sync + 'static {
    /// The name used in configuration (`provider = "razorpay"`) and on canonical events.
    fn name(&self) -> &'static str;

    /// A human title for listings (`Razorpay invoices and payments`).
    fn title(&self) -> &'static str;

    /// The authentication kinds a source of this provider may be configured with.
    fn auth_kinds(&self) -> &'static [AuthKind];

    /// The status that acknowledges this provider's webhooks unless a source says otherwise:
    /// 202, except for a provider whose documentation asks for another.
    fn ack_status(&self) -> u16 {
        202
    }

    /// Whether the provider counts only [`ack_status`](Provider::ack_status) as delivered, so
    /// that a source may not choose another.
    fn requires_ack_status(&self) -> bool {
        false
    }

    /// How soon the provider must have the acknowledgement, where its documentation says: a
    /// later answer counts as a failure, and the webhook is sent again.
    fn ack_deadline(&self) -> Option<std::time::Duration> {
        None
    }

    /// Request headers worth keeping with the stored request, besides the common ones.
    fn kept_headers(&self) -> &'static [&'static str] {
        &[]
    }

    /// The header carrying the provider's hex HMAC-SHA256 of the body, for providers that sign
    /// so: checked to be there and well formed before the body is read.
    fn signature_header(&self) -> Option<&'static str> {
        None
    }

    /// Verifies the provider's own body signature under any of `secrets` (newest first).
    /// Providers without a signature scheme keep the default, which refuses.
    fn verify_signature(
        &self,
        secrets: &[Secret],
        request: &InboundRequest<'_>,
    ) -> Result<Verification, VerifyError> {
        let _ = (secrets, request);
        Err(VerifyError::InvalidSignature)
    }

    /// The dedup key when it can be read without parsing the body (Razorpay's event id header);
    /// used for messages that end up quarantined.
    fn dedup_key_hint(&self, request: &InboundRequest<'_>) -> Option<String> {
        let _ = request;
        None
    }

    /// Where a status (billhook's word for it) stands among this provider's statuses for one kind
    /// of entity, so the ledger moves only forward. `None` for statuses without an order.
    fn status_rank(&self, kind: SubjectKind, status: &str) -> Option<StatusRank> {
        let _ = (kind, status);
        None
    }

    /// The payment references the ledger matches this provider's payments on, unless a source
    /// says otherwise.
    fn default_link_rule(&self) -> &'static [PaymentRef] {
        &[]
    }

    /// Parses and normalizes a verified message into canonical event drafts.
    fn normalize(&self, request: &InboundRequest<'_>) -> Result<Normalized, NormalizeError>;

    /// The headers the provider adds when sending `body` to a source configured with `auth`:
    /// its signature, or the configured credential.
    fn sign(&self, auth: &SourceAuth, body: &[u8], now: Timestamp) -> Vec<(String, String)> {
        let _ = body;
        crate::auth::credential_headers(auth, now.unix_seconds())
    }

    /// The events the emulator can build for this provider.
    fn emulated_events(&self) -> &'static [EmulatedEvent];

    /// Builds a fresh, provider-faithful message for `event` (see [`crate::emulate`]).
    fn generate(
        &self,
        event: &str,
        options: &mut GenerateOptions,
    ) -> Result<Generated, EmulateError>;
}

/// Every provider billhook speaks. Adding a provider adds a line here.
pub static PROVIDERS: &[&dyn Provider] = &[
    &crate::razorpay::Razorpay,
    &crate::zwitch::Zwitch,
    &crate::setu_bbps::SetuBbps,
    &crate::caminvoice::CamInvoice,
];

/// Looks a provider up by its configuration name.
pub fn by_name(name: &str) -> Option<&'static dyn Provider> {
    PROVIDERS.iter().copied().find(|p| p.name() == name)
}
