//! What operators look at: `/v1/sources` (each source's latest traffic and verification
//! failures), `/v1/retention` (what retention would remove, and removing it now), and the
//! overview behind the console's front page.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use billhook_core::ids::InboundId;
use billhook_core::time::Timestamp;
use billhook_providers::auth::SourceAuth;
use billhook_store::PruneReport;
use serde::Serialize;

use crate::App;
use crate::background::{prune_now, retention_cutoff};
use crate::error::ApiError;
#[allow(unused_imports, reason = "named in the OpenAPI attributes")]
use crate::error::ErrorBody as Error;

/// One configured source with its recent traffic.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Source)]
pub(crate) struct SourceView {
    pub name: String,
    pub provider: &'static str,
    /// How requests are verified: `signature`, `header`, `basic`, `jwt_hs256`, `path_token`.
    pub auth: &'static str,
    /// Where the provider posts (a path token shows as `{token}`).
    pub ingest_path: String,
    pub allow_ips: Vec<String>,
    pub last_received_at: Option<Timestamp>,
    pub last_inbound: Option<InboundId>,
    pub received_24h: u64,
    pub quarantined: u64,
    /// Requests refused by verification since this instance started.
    pub verification_failures: u64,
    pub last_verification_failure: Option<FailureView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = VerificationFailure)]
pub(crate) struct FailureView {
    pub at: Timestamp,
    pub code: String,
}

fn auth_name(auth: &SourceAuth) -> &'static str {
    match auth {
        SourceAuth::Signature { .. } => "signature",
        SourceAuth::Header { .. } => "header",
        SourceAuth::Basic { .. } => "basic",
        SourceAuth::JwtHs256 { .. } => "jwt_hs256",
        SourceAuth::PathToken { .. } => "path_token",
    }
}

/// Every configured source, by name, with its figures.
pub(crate) async fn source_views(app: &App) -> Result<Vec<SourceView>, ApiError> {
    let mut names: Vec<String> = app.settings.sources.keys().cloned().collect();
    names.sort();
    let since = Timestamp::now().sub(Duration::from_secs(86_400));
    let stats = app.store.source_stats(names, since).await?;
    Ok(stats
        .into_iter()
        .filter_map(|stats| {
            let source = app.settings.sources.get(&stats.source)?;
            let (failures, last) = app.metrics.verification_failures(&stats.source);
            let token = matches!(source.spec.auth, SourceAuth::PathToken { .. });
            Some(SourceView {
                ingest_path: format!(
                    "/ingest/{}{}",
                    stats.source,
                    if token { "/{token}" } else { "" }
                ),
                name: stats.source,
                provider: source.spec.provider.name(),
                auth: auth_name(&source.spec.auth),
                allow_ips: source
                    .spec
                    .allow_ips
                    .iter()
                    .map(|n| n.to_string())
                    .collect(),
                last_received_at: stats.last_received_at,
                last_inbound: stats.last_inbound,
                received_24h: stats.received_since,
                quarantined: stats.quarantined,
                verification_failures: failures,
                last_verification_failure: last.map(|l| FailureView {
                    at: l.at,
                    code: l.code,
                }),
            })
        })
        .collect())
}

#[derive(Serialize, utoipa::ToSchema)]
struct SourceList {
    data: Vec<SourceView>,
}

/// The configured sources with their latest traffic and verification failures.
#[utoipa::path(get, path = "/v1/sources", tag = "operations",
    responses(
        (status = 200, description = "Every configured source", body = SourceList),
        (status = 401, description = "No valid token", body = Error),
    ))]
pub(crate) async fn sources(State(app): State<Arc<App>>) -> Result<Json<impl Serialize>, ApiError> {
    Ok(Json(SourceList {
        data: source_views(&app).await?,
    }))
}

/// Counts of what retention removes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = PruneCounts)]
pub(crate) struct PruneView {
    pub inbound: u64,
    pub events: u64,
    pub deliveries: u64,
    pub attempts: u64,
    pub payload_bytes: u64,
}

impl From<PruneReport> for PruneView {
    fn from(report: PruneReport) -> Self {
        Self {
            inbound: report.inbound,
            events: report.events,
            deliveries: report.deliveries,
            attempts: report.attempts,
            payload_bytes: report.payload_bytes,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Retention)]
struct RetentionView {
    /// `retention.max_age`.
    max_age: String,
    /// Messages received before this go (once nothing is owed to an endpoint).
    cutoff: Timestamp,
    /// What would be removed now.
    would_remove: PruneView,
}

/// What retention would remove now.
#[utoipa::path(get, path = "/v1/retention", tag = "operations",
    responses(
        (status = 200, description = "The retention settings and what they would remove", body = RetentionView),
        (status = 401, description = "No valid token", body = Error),
    ))]
pub(crate) async fn retention(
    State(app): State<Arc<App>>,
) -> Result<Json<impl Serialize>, ApiError> {
    let now = Timestamp::now();
    let cutoff = retention_cutoff(&app, now);
    let would_remove = app.store.prune_preview(cutoff).await?;
    Ok(Json(RetentionView {
        max_age: app.settings.retention.max_age.to_string(),
        cutoff: cutoff.created_at(),
        would_remove: would_remove.into(),
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
struct Pruned {
    removed: PruneView,
    /// False when billhook began to stop before it was done: what is left goes at the next run.
    complete: bool,
}

/// Removes now what retention would remove, batch by batch, stopping between two once billhook
/// is stopping.
#[utoipa::path(post, path = "/v1/retention/prune", tag = "operations",
    responses(
        (status = 200, description = "What was removed", body = Pruned),
        (status = 401, description = "No valid token", body = Error), (status = 403, description = "The token's scope does not allow this", body = Error),
    ))]
pub(crate) async fn prune(State(app): State<Arc<App>>) -> Result<Json<impl Serialize>, ApiError> {
    // Stops between batches once billhook is stopping, rather than holding the stop up for as
    // long as a backlog takes; every batch is whole, so what is left is left for the next run.
    let run = prune_now(&app, &app.stopping.subscribe()).await?;
    tracing::info!(
        inbound = run.removed.inbound,
        complete = run.complete,
        "pruned on request"
    );
    Ok(Json(Pruned {
        removed: run.removed.into(),
        complete: run.complete,
    }))
}
