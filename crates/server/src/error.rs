//! The one table of error codes clients see, and the one place they become HTTP responses.
//!
//! Every error body is `{"code": "...", "message": "..."}`. Codes are stable: clients and scripts
//! branch on them. A 5xx says only that something failed; the cause is logged, never sent.

use axum::Json;
use axum::response::{IntoResponse, Response};
use billhook_providers::VerifyError;
use billhook_store::StoreError;
use http::StatusCode;
use serde::Serialize;

macro_rules! error_codes {
    ($( $variant:ident => $code:literal, $status:ident, $doc:literal; )*) => {
        /// Every error code billhook's HTTP interface returns.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode {
            $( #[doc = $doc] $variant, )*
        }

        impl ErrorCode {
            /// All codes, for documentation.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            pub fn as_str(&self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            pub fn status(&self) -> StatusCode {
                match self { $(ErrorCode::$variant => StatusCode::$status,)* }
            }

            pub fn description(&self) -> &'static str {
                match self { $(ErrorCode::$variant => $doc,)* }
            }
        }
    };
}

error_codes! {
    UnknownSource => "unknown_source", NOT_FOUND, "No source with that name is configured.";
    PayloadTooLarge => "payload_too_large", PAYLOAD_TOO_LARGE, "The body exceeds the size limit (ingest's; 2 MiB for the admin API, 64 KiB for the console).";
    EmptyBody => "empty_body", BAD_REQUEST, "The request has no body.";
    MissingSignature => "missing_signature", UNAUTHORIZED, "The provider's signature header is missing.";
    MalformedSignature => "malformed_signature", UNAUTHORIZED, "The signature header is not a hex HMAC-SHA256.";
    InvalidSignature => "invalid_signature", UNAUTHORIZED, "The signature does not match the body under any configured secret.";
    MissingCredentials => "missing_credentials", UNAUTHORIZED, "The request carries none of the source's credentials.";
    InvalidCredentials => "invalid_credentials", UNAUTHORIZED, "The request's credentials are wrong for this source.";
    MalformedToken => "malformed_token", UNAUTHORIZED, "The bearer token is not a valid HS256 JWT.";
    TokenExpired => "token_expired", UNAUTHORIZED, "The bearer token's `iat` is too old, it has expired, or its `nbf` has not come.";
    IpNotAllowed => "ip_not_allowed", UNAUTHORIZED, "The client address is not on the source's allow-list.";
    Unauthorized => "unauthorized", UNAUTHORIZED, "The admin API needs `Authorization: Bearer <admin token>`.";
    TooManyAttempts => "too_many_attempts", TOO_MANY_REQUESTS, "This address presented too many invalid tokens lately; wait and try again.";
    Forbidden => "forbidden", FORBIDDEN, "The token's scope does not allow this request: it needs the `admin` scope.";
    CsrfRejected => "csrf_rejected", FORBIDDEN, "A console form was sent without its CSRF token; reload the page and try again.";
    NotFound => "not_found", NOT_FOUND, "No such resource.";
    InvalidRequest => "invalid_request", BAD_REQUEST, "A parameter or the body is invalid; the message says which. Text holding the NUL character (`%00` in a URL or form, `\\u0000` in JSON) is refused on every backend.";
    InvalidCursor => "invalid_cursor", BAD_REQUEST, "The pagination cursor is not one this API issued.";
    DeclaredInConfiguration => "declared_in_configuration", CONFLICT, "The endpoint is declared in the configuration file, which sets what the request would change and would set it back at the next start; change the file instead.";
    MethodNotAllowed => "method_not_allowed", METHOD_NOT_ALLOWED, "The path does not accept this method.";
    UnsupportedMediaType => "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE, "The body must be JSON, sent with `Content-Type: application/json`.";
    RequestTimeout => "request_timeout", REQUEST_TIMEOUT, "The request took longer than the server allows. A webhook answered so may have been stored all the same (its write goes on), and its retry is then answered as a duplicate.";
    Starting => "starting", SERVICE_UNAVAILABLE, "billhook is starting (opening the database, applying migrations); nothing was read or stored, retry shortly.";
    Overloaded => "overloaded", SERVICE_UNAVAILABLE, "billhook holds as many request bodies in memory as `ingest.max_buffered_bytes` allows; nothing was read or stored, retry later.";
    StorageUnavailable => "storage_unavailable", SERVICE_UNAVAILABLE, "The database is unreachable, overloaded (out of connections, memory or disk, or a statement past `database.statement_timeout`), or cancelled a write that conflicted with another; retry later. A webhook answered so may have been stored all the same, and its retry is then answered as a duplicate.";
    Internal => "internal", INTERNAL_SERVER_ERROR, "An unexpected failure; nothing was acknowledged. See the server log.";
}

/// An error on its way to a client.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Sent as `Retry-After`, in whole seconds rounded up.
    pub retry_after: Option<std::time::Duration>,
}

/// Every error's body: a stable code to branch on and a message for people.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub(crate) struct ErrorBody {
    /// One of the codes in the API's error table (docs/api.md).
    #[schema(value_type = ErrorCodeName)]
    code: &'static str,
    message: String,
}

/// The error codes, as a schema.
pub(crate) struct ErrorCodeName;

impl utoipa::PartialSchema for ErrorCodeName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::api::docs::one_of(ErrorCode::ALL.iter().map(ErrorCode::as_str), None)
    }
}

impl utoipa::ToSchema for ErrorCodeName {}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Tells the client when to try again.
    pub fn retry_after(self, wait: std::time::Duration) -> Self {
        Self {
            retry_after: Some(wait),
            ..self
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("no {what} with that id"))
    }

    /// A failure whose cause must not reach the client: logged here, summarized there.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(%cause, "request failed");
        Self::new(
            ErrorCode::Internal,
            "an unexpected error occurred; details are in the server log",
        )
    }
}

impl From<VerifyError> for ApiError {
    fn from(error: VerifyError) -> Self {
        let code = match error {
            VerifyError::MissingSignature(_) => ErrorCode::MissingSignature,
            VerifyError::MalformedSignature(_) => ErrorCode::MalformedSignature,
            VerifyError::InvalidSignature => ErrorCode::InvalidSignature,
            VerifyError::MissingCredentials => ErrorCode::MissingCredentials,
            VerifyError::InvalidCredentials => ErrorCode::InvalidCredentials,
            VerifyError::MalformedToken(_) => ErrorCode::MalformedToken,
            VerifyError::TokenExpired => ErrorCode::TokenExpired,
            VerifyError::IpNotAllowed => ErrorCode::IpNotAllowed,
        };
        debug_assert_eq!(code.as_str(), error.code());
        Self::new(code, error.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) | StoreError::Conflict(_) | StoreError::TimedOut(_) => {
                tracing::error!(%error, "the database is unavailable");
                Self::new(
                    ErrorCode::StorageUnavailable,
                    "the database is unavailable; retry later",
                )
            }
            StoreError::Unstorable(_) => {
                Self::invalid("a value holds the NUL character (\\u0000), which cannot be stored")
            }
            other => Self::internal(&other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.as_str(),
            message: self.message,
        };
        let mut response = (self.code.status(), Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, whole_seconds(wait).into());
        }
        response
    }
}

/// A wait in whole seconds, rounded up, as `Retry-After` gives it.
pub(crate) fn whole_seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{} twice", code.as_str());
            assert!(
                code.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
        }
    }

    #[test]
    fn every_code_is_documented_with_its_status() {
        let docs = include_str!("../../../docs/api.md");
        for code in ErrorCode::ALL {
            let row = format!(
                "| `{}` | {} | {} |",
                code.as_str(),
                code.status().as_u16(),
                code.description()
            );
            assert!(docs.contains(&row), "docs/api.md lacks the row {row}");
        }
    }

    #[test]
    fn verification_codes_match_the_provider_layer() {
        let errors = [
            VerifyError::MissingSignature("x"),
            VerifyError::MalformedSignature("x"),
            VerifyError::InvalidSignature,
            VerifyError::MissingCredentials,
            VerifyError::InvalidCredentials,
            VerifyError::MalformedToken("x"),
            VerifyError::TokenExpired,
            VerifyError::IpNotAllowed,
        ];
        for error in errors {
            let code = error.code();
            let api = ApiError::from(error);
            assert_eq!(api.code.as_str(), code);
            assert_eq!(api.code.status(), StatusCode::UNAUTHORIZED);
        }
    }
}
