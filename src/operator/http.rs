//! The operator's one HTTP server: `/metrics`, `/healthz`, `/readyz` and the trial report
//! endpoint `POST /v1/report` (TLS when a certificate is mounted).

use super::context::Ctx;
use super::status;
use super::token;
use super::{jobset, pod, trainjob};
use crate::api::{FinalReport, NasTrial, ReportEntry, TrialPhaseName};
use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kube::api::DynamicObject;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use nasop_core::contract::{Report, ReportAction, ReportReply, RunEnd};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tower_http::timeout::TimeoutLayer;
use tracing::{info, warn};

/// The longest a request may take, body included.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/v1/report",
            post(report).layer(DefaultBodyLimit::max(
                nasop_core::contract::MAX_REPORT_BYTES,
            )),
        )
        // A slow client (or one that never finishes its body) is cut off.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(ctx)
}

/// Cuts off clients that are slow to send their request head.
fn harden<A>(server: &mut axum_server::Server<A>) {
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT);
}

pub async fn serve(addr: SocketAddr, cert: PathBuf, key: PathBuf, ctx: Arc<Ctx>) {
    let app = router(ctx);
    let result = if cert.exists() && key.exists() {
        match axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key).await {
            Ok(tls) => {
                info!(%addr, cert = %cert.display(), "serving metrics and reports over TLS");
                let mut server = axum_server::bind_rustls(addr, tls);
                harden(&mut server);
                server.serve(app.into_make_service()).await
            }
            Err(e) => Err(e),
        }
    } else {
        let mut server = axum_server::bind(addr);
        harden(&mut server);
        server.serve(app.into_make_service()).await
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

async fn healthz(State(ctx): State<Arc<Ctx>>) -> Response {
    match ctx.health.problem(Instant::now()) {
        None => "ok".into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn readyz(State(ctx): State<Arc<Ctx>>) -> Response {
    // Ready only while it may act: a leader cut off from the API server stops taking
    // reports (they go to the replica that leads) before it notices it lost the lease.
    if ctx.ready.load(Ordering::Relaxed) && ctx.leadership.leading() {
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

/// Every refusal of a report that is not a trial's own gets this one answer, whatever the
/// reason (no token, a forged or expired one, another audience's, a pod that is no trial's),
/// so that a caller without a token learns nothing about which trials exist.
fn unauthorized() -> (&'static str, Response) {
    (
        "refused",
        refuse(
            StatusCode::UNAUTHORIZED,
            "a report needs its pod's token: Authorization: Bearer <the file $NASOP_REPORT_TOKEN_FILE names>",
        ),
    )
}

/// A report nasop will not record although the token is the pod's: the trial has ended, or
/// another attempt replaced this pod. The trainer stops, and says so.
fn not_recorded(why: String) -> (&'static str, Response) {
    (
        "superseded",
        (
            StatusCode::CONFLICT,
            axum::Json(serde_json::json!({"action": ReportAction::Stop, "error": why})),
        )
            .into_response(),
    )
}

/// A report's answer, as a metric's result label and the response.
type Answer = (&'static str, Response);

async fn handle(ctx: &Ctx, headers: &HeaderMap, body: &[u8]) -> Answer {
    let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return unauthorized();
    };
    let now = super::context::now();
    // What the token says of itself, unverified: a token for another audience, expired or
    // not a pod's is refused without asking the API server.
    let Some(claimed) = token::peek(bearer, now) else {
        return unauthorized();
    };
    let report = match read_report(body) {
        Ok(report) => report,
        Err(why) => return ("invalid", refuse(StatusCode::BAD_REQUEST, &why)),
    };
    // A token that claims a pod the cache knows as another (or as no trial's) is not worth a
    // review. One it does not know yet (a cache behind) is reviewed.
    if let Some(p) = ctx.pod(&claimed.identity.namespace, &claimed.identity.pod)
        && (p.uid().as_deref() != Some(claimed.identity.uid.as_str())
            || pod::trial_of(&p).is_none())
    {
        return unauthorized();
    }
    let who = match ctx.reviews.review(&ctx.client, bearer, &claimed, now).await {
        Ok(token::Verdict::Pod(who)) => who,
        Ok(token::Verdict::Refused) => return unauthorized(),
        Ok(token::Verdict::Busy) => {
            return (
                "limited",
                refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many new report tokens to check this second; retry",
                ),
            );
        }
        Err(e) => return unavailable(&e),
    };
    // Only a pod's own token spends its report budget.
    if !ctx.reports.allow(&who.namespace, &who.pod) {
        return (
            "limited",
            refuse(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "more than {} reports a second for this trial; report once per epoch or step, not faster",
                    super::limit::RATE
                ),
            ),
        );
    }
    match current_attempt(ctx, &who).await {
        Ok((trial, attempt, name)) => record(ctx, trial, &who, (attempt, &name), &report).await,
        Err(answer) => *answer,
    }
}

/// The report in the body, checked as the trial contract says; why not, for the reply.
fn read_report(body: &[u8]) -> Result<Report, String> {
    let report: Report = serde_json::from_slice(body).map_err(|e| {
        format!("the body is not a report ({{\"step\": N, \"metrics\": {{...}}}}): {e}")
    })?;
    nasop_core::contract::check_report(&report)?;
    Ok(report)
}

/// The trial whose current attempt is the pod `who`, and its attempt: the pod exists with
/// the token's UID, a trial controls it, and no later attempt replaced it. Else the answer:
/// 401 for a pod that is no trial's, 409 for an attempt that no longer counts (asked of the
/// API server, not only the caches, before saying so).
async fn current_attempt(
    ctx: &Ctx,
    who: &token::PodIdentity,
) -> Result<(Arc<NasTrial>, u32, String), Box<Answer>> {
    let pod = match super::start::find_pod(ctx, &who.namespace, &who.pod).await {
        Ok(p) => p,
        Err(super::context::Error::Kube(e)) => return Err(Box::new(unavailable(&e))),
        Err(_) => return Err(Box::new(unauthorized())),
    };
    let ours =
        |p: &Arc<k8s_openapi::api::core::v1::Pod>| p.uid().as_deref() == Some(who.uid.as_str());
    let pod = match pod {
        Some(p) if ours(&p) => Some(p),
        // The cache may be behind: ask the API server before saying the pod is gone.
        _ => match Api::<k8s_openapi::api::core::v1::Pod>::namespaced(
            ctx.client.clone(),
            &who.namespace,
        )
        .get_opt(&who.pod)
        .await
        {
            Ok(p) => p.map(Arc::new).filter(ours),
            Err(e) => return Err(Box::new(unavailable(&e))),
        },
    };
    let Some(pod) = pod else {
        return Err(Box::new(not_recorded(format!(
            "pod {} is gone: this attempt no longer counts",
            who.pod
        ))));
    };
    let owner = match pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == "NasTrial")
    {
        Some(o) => o.clone(),
        // A pod of a JobSet trial: its Job's, whose JobSet the trial controls.
        None => job_set_owner(ctx, &pod).await?,
    };
    let owned = |t: &Arc<NasTrial>| t.uid().as_deref() == Some(owner.uid.as_str());
    let trial = match trial_named(ctx, &who.namespace, &owner.name).await {
        Ok(Some(t)) if owned(&t) => Ok(Some(t)),
        // The cache may be behind: ask the API server before saying the trial is gone.
        Ok(_) => Api::<NasTrial>::namespaced(ctx.client.clone(), &who.namespace)
            .get_opt(&owner.name)
            .await
            .map(|t| t.map(Arc::new)),
        Err(e) => Err(e),
    };
    let trial = match trial {
        Ok(Some(t)) if owned(&t) => t,
        Ok(_) => {
            return Err(Box::new(not_recorded(format!(
                "trial {} is gone: this attempt no longer counts",
                owner.name
            ))));
        }
        Err(e) => return Err(Box::new(unavailable(&e))),
    };
    let attempt = attempt_of(&pod);
    // The attempt's name, as the trial's status has it: the pod's, or its JobSet's.
    let name = pod
        .labels()
        .get(jobset::LABEL_JOBSET_NAME)
        .cloned()
        .unwrap_or_else(|| who.pod.clone());
    superseded(&trial, &who.pod, attempt).map_or(Ok((trial, attempt, name)), |why| {
        Err(Box::new(not_recorded(why)))
    })
}

/// The trial a JobSet trial's pod reports for, as the owner reference of the JobSet that
/// made it (read from the API server): only rank 0 of a JobSet the trial controls reports.
async fn job_set_owner(
    ctx: &Ctx,
    pod: &k8s_openapi::api::core::v1::Pod,
) -> Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference, Box<Answer>> {
    let labels = pod.labels();
    let (Some(name), Some(uid)) = (
        labels.get(jobset::LABEL_JOBSET_NAME),
        labels.get(jobset::LABEL_JOBSET_UID),
    ) else {
        return Err(Box::new(unauthorized()));
    };
    let by_job = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.kind == "Job");
    if !by_job {
        return Err(Box::new(unauthorized()));
    }
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &ns, &jobset::resource());
    let js = match api.get_opt(name).await {
        Ok(Some(js)) if js.uid().as_deref() == Some(uid.as_str()) => js,
        Ok(_) => {
            return Err(Box::new(not_recorded(format!(
                "JobSet {name} is gone: this attempt no longer counts"
            ))));
        }
        Err(e) => return Err(Box::new(unavailable(&e))),
    };
    let controller = |o: &DynamicObject, kind: &str| {
        o.metadata
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true) && r.kind == kind)
            .cloned()
    };
    // A TrainJob trial's JobSet is the TrainJob's, and the TrainJob the trial's.
    let (kind, owner) = match (controller(&js, "NasTrial"), controller(&js, trainjob::KIND)) {
        (Some(owner), _) => (jobset::Kind::JobSet, owner),
        (None, Some(tj)) if tj.name == *name => {
            let api: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), &ns, &trainjob::resource());
            match api.get_opt(&tj.name).await {
                Ok(Some(t)) if t.uid().as_deref() == Some(tj.uid.as_str()) => {
                    match controller(&t, "NasTrial") {
                        Some(owner) => (jobset::Kind::TrainJob, owner),
                        None => return Err(Box::new(unauthorized())),
                    }
                }
                Ok(_) => {
                    return Err(Box::new(not_recorded(format!(
                        "TrainJob {} is gone: this attempt no longer counts",
                        tj.name
                    ))));
                }
                Err(e) => return Err(Box::new(unavailable(&e))),
            }
        }
        _ => return Err(Box::new(unauthorized())),
    };
    // The object is the trial's own attempt, by the names nasop gives it (a JobSet or
    // TrainJob anyone made with an owner reference to the trial is not); a TrainJob's JobSet
    // has the TrainJob's name.
    if !pod::pod_names(&owner.name, attempt_of(pod), &owner.uid).contains(name) {
        return Err(Box::new(unauthorized()));
    }
    if !jobset::is_rank_zero(pod, &kind.rank_zero_job(&js)) {
        return Err(Box::new((
            "refused",
            refuse(
                StatusCode::FORBIDDEN,
                "only rank 0 of a trial (its first replicated job's first pod; a TrainJob's first node) reports; report from RANK 0 alone",
            ),
        )));
    }
    Ok(owner)
}

/// The attempt a trial's pod is (its label; 0, the oldest, when it has none).
fn attempt_of(pod: &k8s_openapi::api::core::v1::Pod) -> u32 {
    pod.labels()
        .get(pod::LABEL_ATTEMPT)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0)
}

/// The trial from the cache (or what we last wrote of it), else from the API server.
async fn trial_named(
    ctx: &Ctx,
    namespace: &str,
    name: &str,
) -> Result<Option<Arc<NasTrial>>, kube::Error> {
    let cached = ctx
        .stores
        .trials
        .get(&ObjectRef::new(name).within(namespace));
    match cached {
        Some(t) => Ok(Some(super::trial::freshest(ctx, t))),
        None => Api::<NasTrial>::namespaced(ctx.client.clone(), namespace)
            .get_opt(name)
            .await
            .map(|t| t.map(Arc::new)),
    }
}

/// Why the report of pod `pod` is not recorded on `trial`, if it is not: the trial ended,
/// or its current attempt is another pod.
fn superseded(trial: &NasTrial, pod: &str, attempt: u32) -> Option<String> {
    let status = trial.status.clone().unwrap_or_default();
    if let Some(
        phase @ (TrialPhaseName::Succeeded | TrialPhaseName::Failed | TrialPhaseName::Stopped),
    ) = status.phase
    {
        return Some(format!(
            "trial {} has ended ({phase:?}); this report is not recorded",
            trial.name_any()
        ));
    }
    // The trial's pods are numbered: a pod of an earlier attempt than the status's is
    // superseded; the current one, or one created a moment ago whose attempt the status does
    // not record yet, is not.
    (attempt < status.attempts).then(|| {
        format!(
            "pod {pod} is a superseded attempt of trial {} (the current one is {}); stop",
            trial.name_any(),
            status.pod.as_deref().unwrap_or("not started yet")
        )
    })
}

/// Records `report` of pod `who` on `trial` (retrying on a newer version, as long as the pod
/// is still the trial's current attempt) and answers whether the trainer goes on.
async fn record(
    ctx: &Ctx,
    mut trial: Arc<NasTrial>,
    who: &token::PodIdentity,
    (attempt, attempt_name): (u32, &str),
    report: &Report,
) -> Answer {
    let stop = || ("stop", reply(StatusCode::OK, ReportAction::Stop));
    let api: Api<NasTrial> = Api::namespaced(ctx.client.clone(), &who.namespace);
    // The history keeps whole only the newest report; older entries keep the metrics the
    // experiment decides by (all of them while the experiment cannot be read).
    let key = (who.namespace.clone(), trial.spec.experiment.clone());
    let experiment = match ctx.experiment(&key.0, &key.1) {
        Some(Ok(exp)) => super::trial::experiment_of(ctx, &key, &exp),
        _ => None,
    };
    let uid = trial.uid().unwrap_or_default();
    for _ in 0..8 {
        if let Some(why) = superseded(&trial, &who.pod, attempt) {
            return not_recorded(why);
        }
        let mut next = trial.status.clone().unwrap_or_default();
        status::push_report(
            &mut next.history,
            ReportEntry {
                step: report.step,
                metrics: report.metrics.clone(),
            },
            &|m| experiment.as_ref().is_none_or(|e| status::decides(e, m)),
        );
        if let Some(end @ (RunEnd::Completed | RunEnd::Stopped)) = report.end {
            next.final_report = Some(FinalReport {
                pod: attempt_name.to_string(),
                step: report.step,
                metrics: status::sanitize_metrics(&report.metrics),
                info: report.info.clone(),
                end: if end == RunEnd::Completed {
                    "completed"
                } else {
                    "stopped"
                }
                .into(),
            });
        }
        match super::trial::write_status(ctx, &trial, &next).await {
            Ok(()) => {
                let stopped = trial.spec.stop.is_some()
                    || (experiment
                        .as_ref()
                        .is_some_and(|e| falls_behind(ctx, e, &trial, &next))
                        && mark_early_stopped(&api, &trial).await);
                return if stopped {
                    stop()
                } else {
                    ("accepted", reply(StatusCode::OK, ReportAction::Continue))
                };
            }
            Err(kube::Error::Api(s)) if s.is_conflict() => {
                match api.get_opt(&trial.name_any()).await {
                    Ok(Some(t)) if t.uid().as_deref() == Some(uid.as_str()) => trial = Arc::new(t),
                    Ok(_) => return stop(),
                    Err(e) => return unavailable(&e),
                }
            }
            Err(e) => return unavailable(&e),
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

/// Whether this report puts the trial behind the experiment's early-stopping rule, decided
/// here with the engine's own rule so that the trainer hears it in this reply. Left to the
/// experiment controller, the stop would reach the trainer only with its next report, an
/// epoch later: GPU time spent for nothing, and often past the stop grace period, so the pod
/// would be deleted instead of the trainer ending on its own.
fn falls_behind(
    ctx: &Ctx,
    exp: &crate::engine::Experiment,
    trial: &NasTrial,
    status: &crate::api::NasTrialStatus,
) -> bool {
    let (Some(rule), Some(objective)) = (&exp.early_stopping, exp.objectives.first()) else {
        return false;
    };
    let (Some(namespace), Some(uid)) = (trial.namespace(), super::index::owner_uid(trial)) else {
        return false;
    };
    let mut now = trial.clone();
    now.status = Some(status.clone());
    let Ok(me) = status::record(exp, &now) else {
        return false;
    };
    // The rule compares with finished trials only; the others need not be read.
    let all: Vec<_> = ctx
        .stores
        .trials_of(&namespace, uid)
        .iter()
        .filter(|t| {
            t.status.as_ref().and_then(|s| s.phase) == Some(crate::api::TrialPhaseName::Succeeded)
        })
        .filter_map(|t| status::record(exp, t).ok())
        .collect();
    crate::engine::median_should_stop(rule, objective, &me, &all)
}

/// Records the stop on the trial (as the experiment controller would) before the reply
/// tells the trainer, so that its exit counts as stopped, not completed. False when it could
/// not be recorded: the trainer then goes on, and the controller decides again.
async fn mark_early_stopped(api: &Api<NasTrial>, trial: &NasTrial) -> bool {
    let name = trial.name_any();
    match super::experiment::request_stop(api, &name, crate::engine::StopReason::EarlyStopped).await
    {
        Ok(()) => {
            info!(namespace = ?trial.namespace(), trial = %name, "stopping trial in its report's reply: it fell behind the median");
            true
        }
        Err(e) => {
            warn!(trial = %name, error = %e, "could not record an early stop");
            false
        }
    }
}

/// The API server could not take the report. Its own refusals (a 4xx other than a
/// conflict or throttling) will not change on a retry, so they are not 503s.
fn unavailable(e: &kube::Error) -> (&'static str, Response) {
    warn!(error = %e, "could not record a report");
    match e {
        kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 429 && s.code != 409 => (
            "invalid",
            refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                "the report could not be recorded and will not be on a retry",
            ),
        ),
        _ => (
            "error",
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the Kubernetes API is unavailable; retry",
            ),
        ),
    }
}
