//! The OpenAPI 3.1 document, generated from the handlers' own annotations: served at
//! `/v1/openapi.json`, printed by `billhook openapi`, committed as `docs/openapi.json` and
//! checked against it by a test, so the document cannot drift from the code.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{endpoints, event_types, events, inbound, ledger, operations, tokens};

/// The schema of a string that is one of `words`, for the types that stand for such a string
/// in the document (a scope, an error code, a provider's name).
pub(crate) fn one_of(
    words: impl IntoIterator<Item = &'static str>,
    description: Option<&str>,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(words))
        .description(description)
        .into()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "billhook",
        description = "A webhook gateway for invoice, payment and bill events from Razorpay, Zwitch (UPI collect and Bharat Connect), Setu BBPS and CamInvoice: ingest, the admin API, the ledger and operations. Every `/v1` route needs `Authorization: Bearer <token>`; a `read` token may call the GET routes except secrets and tokens. Errors are `{code, message}`.",
        license(name = "Apache-2.0"),
    ),
    paths(
        crate::ingest::receive,
        crate::ingest::receive_with_token,
        events::list,
        events::show,
        events::redeliver,
        event_types::list,
        event_types::show,
        inbound::list,
        inbound::show,
        inbound::reprocess_one,
        inbound::reprocess_all,
        endpoints::create,
        endpoints::list,
        endpoints::show,
        endpoints::update,
        endpoints::delete,
        endpoints::secret,
        endpoints::rotate_secret,
        endpoints::deliveries,
        endpoints::attempts,
        endpoints::recover,
        ledger::list_invoices,
        ledger::show_invoice,
        ledger::list_payments,
        ledger::show_payment,
        ledger::list_bills,
        ledger::show_bill,
        ledger::list_billers,
        ledger::show_biller,
        ledger::list_disputes,
        ledger::show_dispute,
        ledger::list_documents,
        ledger::show_document,
        tokens::create,
        tokens::list,
        tokens::revoke,
        operations::sources,
        operations::retention,
        operations::prune,
        crate::health::alive,
        crate::health::ready,
        crate::health::metrics,
    ),
    modifiers(&AdminToken, &CommonResponses),
    security(("admin_token" = [])),
    tags(
        (name = "ingest", description = "Where providers post their webhooks"),
        (name = "events", description = "Canonical events, their deliveries and the catalog"),
        (name = "inbound", description = "Stored provider requests and quarantine"),
        (name = "endpoints", description = "Subscriber endpoints, secrets, attempts and recovery"),
        (name = "ledger", description = "Invoices, payments, bills, billers, disputes and documents as billhook concludes them"),
        (name = "tokens", description = "Admin tokens"),
        (name = "operations", description = "Sources and retention"),
        (name = "health", description = "Liveness, readiness and metrics"),
    ),
)]
pub struct ApiDoc;

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The configuration's admin token, or one from `billhook token create`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The answers any `/v1` route may give besides its own, added where a route does not describe
/// them itself: every request there passes the URL check, the body deadline and the token
/// lockout, and may find the database away.
struct CommonResponses;

impl CommonResponses {
    const ANSWERS: [(&'static str, &'static str); 6] = [
        (
            "400",
            "The URL holds the NUL character, or a parameter is invalid",
        ),
        (
            "408",
            "The body did not arrive within `ingest.request_timeout`",
        ),
        ("413", "The body exceeds 2 MiB"),
        (
            "429",
            "This address presented too many invalid tokens lately; `Retry-After` says when to try again",
        ),
        (
            "500",
            "An unexpected failure; the cause is in the server log",
        ),
        ("503", "The database is unavailable; retry later"),
    ];
}

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};

        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                for (status, description) in Self::ANSWERS {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| {
                            ResponseBuilder::new()
                                .description(description)
                                .content(
                                    "application/json",
                                    ContentBuilder::new()
                                        .schema(Some(Ref::from_schema_name("Error")))
                                        .build(),
                                )
                                .build()
                                .into()
                        });
                }
            }
        }
    }
}

/// The document as pretty JSON, as committed in `docs/openapi.json`.
pub fn openapi_json() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_owned());
    text.push('\n');
    text
}

pub(crate) async fn serve() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        openapi_json(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_document_matches_the_code() {
        let committed = include_str!("../../../../docs/openapi.json");
        assert!(
            committed == openapi_json(),
            "docs/openapi.json is out of date: run `cargo run -p billhook -- openapi > docs/openapi.json`"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_and_covers_every_route() {
        let document: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap();
        assert_eq!(document["openapi"], "3.1.0");
        let paths = document["paths"].as_object().unwrap();
        for path in [
            "/ingest/{source}",
            "/v1/events/{id}/redeliver",
            "/v1/endpoints/{id}/recover",
            "/v1/invoices",
            "/v1/tokens/{id}",
            "/v1/retention/prune",
            "/metrics",
        ] {
            assert!(paths.contains_key(path), "{path}");
        }
        assert_eq!(
            document["components"]["securitySchemes"]["admin_token"]["scheme"],
            "bearer"
        );
    }
}
