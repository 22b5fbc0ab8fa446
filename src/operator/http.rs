//! The operator's one HTTP server: `/metrics`, `/healthz`, `/readyz` and the trial report
//! endpoint `POST /v1/report` (TLS when a certificate is mounted).

use super::Ctx;
use super::status;
use super::token;
use crate::api::{NasTrial, ReportEntry, TrialPhaseName};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use nasop_core::contract::{Report, ReportAction, ReportReply};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tracing::{info, warn};

pub fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/v1/report", post(report))
        .with_state(ctx)
}

pub async fn serve(addr: SocketAddr, cert: PathBuf, key: PathBuf, ctx: Arc<Ctx>) {
    let app = router(ctx);
    let result = if cert.exists() && key.exists() {
        match axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key).await {
            Ok(tls) => {
                info!(%addr, cert = %cert.display(), "serving metrics and reports over TLS");
                axum_server::bind_rustls(addr, tls)
                    .serve(app.into_make_service())
                    .await
            }
            Err(e) => Err(e),
        }
    } else {
        axum_server::bind(addr).serve(app.into_make_service()).await
    };
    if let Err(e) = result {
        // Without its server the operator cannot take reports: exit so that it restarts.
        tracing::error!(%addr, error = %e, "the HTTP server stopped");
        std::process::exit(1);
    }
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.metrics.encode(),
    )
        .into_response()
}

async fn readyz(State(ctx): State<Arc<Ctx>>) -> Response {
    if ctx.ready.load(Ordering::Relaxed) {
        "ok".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the leader lease",
        )
            .into_response()
    }
}

fn reply(code: StatusCode, action: ReportAction) -> Response {
    (code, axum::Json(ReportReply { action })).into_response()
}

fn refuse(code: StatusCode, why: &str) -> Response {
    (code, axum::Json(serde_json::json!({"error": why}))).into_response()
}

async fn report(State(ctx): State<Arc<Ctx>>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let (result, response) = handle(&ctx, &headers, &body).await;
    ctx.metrics
        .report_latency
        .observe(started.elapsed().as_secs_f64());
    ctx.metrics
        .reports
        .get_or_create(&super::metrics::OnlyResult {
            result: result.into(),
        })
        .inc();
    response
}

async fn handle(ctx: &Ctx, headers: &HeaderMap, body: &[u8]) -> (&'static str, Response) {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(claim) = bearer.and_then(token::claim) else {
        return (
            "refused",
            refuse(
                StatusCode::UNAUTHORIZED,
                "a report needs the trial's token: Authorization: Bearer $NASOP_REPORT_TOKEN",
            ),
        );
    };
    let api: Api<NasTrial> = Api::namespaced(ctx.client.clone(), claim.namespace);
    let cached = ctx
        .trials
        .get(&ObjectRef::new(claim.trial).within(claim.namespace));
    let mut trial = match cached {
        Some(t) => super::trial::freshest(ctx, t),
        None => match api.get_opt(claim.trial).await {
            Ok(Some(t)) => Arc::new(t),
            // The trial is gone (its experiment was deleted): stop.
            Ok(None) => return ("stop", reply(StatusCode::OK, ReportAction::Stop)),
            Err(e) => {
                return (
                    "error",
                    refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
                );
            }
        },
    };
    if !ctx.key.verify(&claim, &trial.uid().unwrap_or_default()) {
        warn!(namespace = %claim.namespace, trial = %claim.trial, "refused a report with a token that is not this trial's");
        return (
            "refused",
            refuse(
                StatusCode::UNAUTHORIZED,
                "this token does not belong to this trial",
            ),
        );
    }
    let report: Report = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return (
                "invalid",
                refuse(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "the body is not a report ({{\"step\": N, \"metrics\": {{...}}}}): {e}"
                    ),
                ),
            );
        }
    };
    // Record the report on the trial's status, retrying on a newer version.
    for _ in 0..8 {
        let ended = matches!(
            trial.status.as_ref().and_then(|s| s.phase),
            Some(TrialPhaseName::Succeeded | TrialPhaseName::Failed | TrialPhaseName::Stopped)
        );
        if ended {
            return ("stop", reply(StatusCode::OK, ReportAction::Stop));
        }
        let mut next = trial.status.clone().unwrap_or_default();
        status::push_report(
            &mut next.history,
            ReportEntry {
                step: report.step,
                metrics: report.metrics.clone(),
            },
        );
        match super::trial::write_status(ctx, &trial, &next).await {
            Ok(()) => {
                let action = if trial.spec.stop.is_some() {
                    ReportAction::Stop
                } else {
                    ReportAction::Continue
                };
                let result = if action == ReportAction::Stop {
                    "stop"
                } else {
                    "accepted"
                };
                return (result, reply(StatusCode::OK, action));
            }
            Err(kube::Error::Api(s)) if s.is_conflict() => match api.get_opt(claim.trial).await {
                Ok(Some(t)) => trial = Arc::new(t),
                Ok(None) => return ("stop", reply(StatusCode::OK, ReportAction::Stop)),
                Err(e) => {
                    return (
                        "error",
                        refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
                    );
                }
            },
            Err(e) => {
                return (
                    "error",
                    refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
                );
            }
        }
    }
    (
        "error",
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the trial changed too often; retry",
        ),
    )
}
