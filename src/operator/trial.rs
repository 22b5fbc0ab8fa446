//! The NasTrial controller: one pod per attempt, read back into the trial's status.

use super::decide::{self, Ending, Step};
use super::metrics::{ExperimentLabels, OnlyResult, ResultLabels};
use super::pod::{self, PodInput};
use super::status::{self, micro};
use super::{Ctx, Error, ExpKey, MANAGER, index, lock, now};
use crate::api::{self, NasExperiment, NasTrial, NasTrialStatus, ReportEntry, TrialPhaseName};
use crate::engine::Experiment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

pub fn error_policy(trial: Arc<NasTrial>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let conflict = matches!(err, Error::Kube(kube::Error::Api(s)) if s.is_conflict());
    if !conflict {
        warn!(
            namespace = %trial.namespace().unwrap_or_default(),
            experiment = %trial.spec.experiment,
            trial = %trial.name_any(),
            error = %err,
            "reconcile failed; retrying"
        );
    }
    // A conflict means our copy was stale: the newer one is on its way.
    if conflict {
        Action::requeue(Duration::from_millis(200))
    } else {
        Action::requeue(ctx.backoff(&trial.uid().unwrap_or_default()))
    }
}

/// The engine's experiment for a trial (cached by the experiment controller).
pub(super) fn experiment_of(
    ctx: &Ctx,
    key: &ExpKey,
    exp: &NasExperiment,
) -> Option<Arc<Experiment>> {
    let cached = super::lock(&ctx.state_of(key))
        .engine
        .as_ref()
        .filter(|c| c.spec == exp.spec)
        .map(|c| c.experiment.clone());
    if cached.is_some() {
        return cached;
    }
    api::validate(&key.1, &exp.spec).ok().map(Arc::new)
}

/// Writes a trial's whole status with server-side apply, only if it changed, and only onto
/// the version it was computed from (a conflict is retried with the newer one).
pub async fn write_status(
    ctx: &Ctx,
    trial: &NasTrial,
    status: &NasTrialStatus,
) -> Result<(), kube::Error> {
    if trial.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<NasTrial> =
        Api::namespaced(ctx.client.clone(), &trial.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "nasop.dev/v1alpha1",
        "kind": "NasTrial",
        "metadata": {"resourceVersion": trial.resource_version()},
        "status": status,
    });
    let written = api
        .patch_status(
            &trial.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    // Until the store has this version, reconciles and reports start from it.
    super::lock(&ctx.written_trials).updated(trial.resource_version(), written, Instant::now());
    Ok(())
}

/// The newest copy of a trial: the store's, or the one we just wrote if the store still
/// holds the version it replaced (a watch event is on its way).
pub fn freshest(ctx: &Ctx, trial: Arc<NasTrial>) -> Arc<NasTrial> {
    let (ns, name) = (trial.namespace().unwrap_or_default(), trial.name_any());
    super::lock(&ctx.written_trials)
        .newest(&ns, &name, Some(trial.clone()), Instant::now())
        .unwrap_or(trial)
}

/// The pod of this attempt: from the store, or, when the store does not have it, from the
/// API server (a pod we just created may not have reached the store yet).
async fn find_pod(ctx: &Ctx, ns: &str, name: &str) -> Result<Option<Arc<Pod>>, Error> {
    if let Some(p) = ctx.pod(ns, name) {
        return Ok(Some(p));
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    Ok(api.get_opt(name).await?.map(Arc::new))
}

fn event(ctx: &Ctx, trial: &NasTrial, type_: EventType, reason: &str, note: String) {
    super::publish_event(ctx, trial.object_ref(&()), type_, reason, note);
}

/// Created in the last two seconds.
fn young(trial: &NasTrial) -> bool {
    trial
        .metadata
        .creation_timestamp
        .as_ref()
        .is_some_and(|t| now() - status::seconds(&t.0) < 2.0)
}

pub async fn reconcile(trial: Arc<NasTrial>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let trial = freshest(&ctx, trial);
    if trial.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = trial.namespace().unwrap_or_default();
    let name = trial.name_any();
    let exp_name = &trial.spec.experiment;
    let key: ExpKey = (ns.clone(), exp_name.clone());
    let current = trial.status.clone().unwrap_or_default();
    if matches!(
        current.phase,
        Some(TrialPhaseName::Succeeded | TrialPhaseName::Failed | TrialPhaseName::Stopped)
    ) {
        return Ok(Action::await_change());
    }
    let exp = match ctx.experiment(&ns, exp_name) {
        Some(Ok(exp))
            if Some(exp.uid().unwrap_or_default().as_str()) == index::owner_uid(&trial) =>
        {
            exp
        }
        // Deleted, or replaced by a new experiment of the same name: garbage collection
        // removes this trial and its pod; the new experiment does not adopt it.
        Some(Ok(_)) | None => return Ok(Action::requeue(Duration::from_secs(10))),
        // The experiment controller reports it on the experiment.
        Some(Err(_)) => return Ok(Action::await_change()),
    };
    let Some(experiment) = experiment_of(&ctx, &key, &exp) else {
        return Ok(Action::await_change());
    };
    let mut next = current.clone();
    let t_now = now();
    let first_pod = pod::pod_name(&name, 1);
    let (attempt, pod) = if current.attempts > 0 {
        let pod = find_pod(&ctx, &ns, &pod::pod_name(&name, current.attempts)).await?;
        (current.attempts, pod)
    } else if let Some(p) = ctx.pod(&ns, &first_pod) {
        // The experiment controller created the first pod with the trial: record it.
        next.attempts = 1;
        next.pod = Some(first_pod);
        next.phase = Some(TrialPhaseName::Pending);
        (1, Some(p))
    } else {
        (0, None)
    };
    let gpus = pod::gpus(exp.spec.trial_template.as_ref());
    let lost_after = ctx.stop_grace.as_secs_f64();
    let outcome = pod
        .as_deref()
        .map(|p| pod::outcome_at(p, t_now, lost_after));
    let stop = trial.spec.stop.clone();
    let step = decide::next_step(&decide::TrialView {
        attempt,
        outcome: outcome.as_ref(),
        stop: stop.as_deref(),
        stop_requested_at: next
            .stop_requested_time
            .as_ref()
            .map(|t| status::seconds(&t.0)),
        young: young(&trial),
        now: t_now,
        grace: ctx.stop_grace.as_secs_f64(),
        report_interval: report_interval(&next, t_now),
        max_attempts: ctx.max_attempts,
        pending_timeout: exp
            .spec
            .budget
            .pending_timeout_seconds
            .unwrap_or(api::DEFAULT_PENDING_TIMEOUT_SECONDS) as f64,
    });
    let mut requeue = None;
    let mut ending = None;
    match step {
        Step::Wait(after) => {
            if next == current {
                return Ok(after.map_or(Action::await_change(), |s| {
                    Action::requeue(Duration::from_secs_f64(s))
                }));
            }
            requeue = after;
        }
        Step::Start { attempt, lost } => {
            if let Some(why) = lost {
                info!(namespace = %ns, experiment = %exp_name, trial = %name, attempt = attempt - 1, %why, "pod lost; starting it again");
                ctx.metrics
                    .pod_retries
                    .get_or_create(&ExperimentLabels {
                        namespace: ns.clone(),
                        experiment: exp_name.clone(),
                    })
                    .inc();
                event(
                    &ctx,
                    &trial,
                    EventType::Warning,
                    "PodLost",
                    format!("attempt {}: {why}; starting attempt {attempt}", attempt - 1),
                );
            }
            if let Some(after) =
                start_pod(&ctx, &trial, &exp, &experiment, attempt, &mut next).await?
            {
                requeue = Some(after.as_secs_f64());
            }
        }
        Step::End(end) => ending = Some(end),
        Step::Track {
            phase,
            reason,
            message,
            started_at,
            stop: stop_progress,
            after,
        } => {
            requeue = after;
            next.phase = Some(phase);
            next.reason = reason;
            next.message = message.map(|m| status::bounded(m, status::MESSAGE_LIMIT));
            if next.start_time.is_none() {
                next.start_time = started_at.map(micro);
            }
            if let Some(sp) = stop_progress {
                next.stop_requested_time
                    .get_or_insert_with(|| micro(sp.requested_at));
                requeue = sp.requeue;
                if sp.delete
                    && let Some(p) = &pod
                    && p.metadata.deletion_timestamp.is_none()
                {
                    info!(namespace = %ns, experiment = %exp_name, trial = %name, reason = ?stop, "deleting the pod of a stopped trial");
                    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
                    match api.delete(&p.name_any(), &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.is_not_found() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
    }

    let storage = exp.spec.storage.as_ref();
    let ended = ending.map(|end| finish(&experiment, storage, &mut next, end, gpus, t_now));
    write_status(&ctx, &trial, &next).await?;
    if let Some(end) = ended {
        // Counted once the status says so (a conflict above retries the whole reconcile).
        record_end(&ctx, &trial, &experiment, &next, end).await;
    }
    Ok(requeue.map_or(Action::await_change(), |s| {
        Action::requeue(Duration::from_secs_f64(s))
    }))
}

/// The trainer's mean time between reports: from its start to the stop request (or now),
/// over the reports it made. 0 before the first.
fn report_interval(status: &NasTrialStatus, now: f64) -> f64 {
    let n = status.history.len();
    let Some(start) = status.start_time.as_ref().filter(|_| n > 0) else {
        return 0.0;
    };
    let until = status
        .stop_requested_time
        .as_ref()
        .map_or(now, |t| status::seconds(&t.0));
    ((until - status::seconds(&start.0)) / n as f64).max(0.0)
}

pub async fn start_pod(
    ctx: &Ctx,
    trial: &NasTrial,
    exp: &NasExperiment,
    experiment: &Experiment,
    attempt: u32,
    next: &mut NasTrialStatus,
) -> Result<Option<Duration>, Error> {
    let ns = trial.namespace().unwrap_or_default();
    let name = trial.name_any();
    let point = experiment
        .space
        .parse(&trial.spec.candidate)
        .map_err(|e| Error::Other(format!("trial {name}: {e}")))?;
    let input = experiment.trial_input(
        name.clone(),
        trial.spec.index,
        trial.spec.seed,
        &point,
        trial.spec.epochs,
        trial.spec.resume_from,
        status::stage(trial),
    );
    let uid = trial.uid().unwrap_or_default();
    let token = ctx.key.sign(&ns, &name, &uid);
    let template = exp
        .spec
        .trial_template
        .as_ref()
        .ok_or_else(|| Error::Other("spec.trialTemplate is missing".into()))?;
    let pod = pod::build(&PodInput {
        template,
        namespace: &ns,
        experiment: &trial.spec.experiment,
        trial: &name,
        trial_uid: &uid,
        attempt,
        input: &input,
        report_url: &ctx.report_url,
        token: &token,
        storage: exp.spec.storage.as_ref(),
    });
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    match api.create(&PostParams::default(), &pod).await {
        Ok(created) => {
            let mut kept = created;
            pod::strip(&mut kept);
            lock(&ctx.written_pods).created(kept, Instant::now());
            info!(namespace = %ns, experiment = %trial.spec.experiment, trial = %name, attempt, "created pod");
            if attempt == 1 {
                ctx.slot_taken(&(ns.clone(), trial.spec.experiment.clone()));
                event(
                    ctx,
                    trial,
                    EventType::Normal,
                    "TrialCreated",
                    format!(
                        "candidate {} for {} epochs, pod {}",
                        trial.spec.candidate,
                        trial.spec.epochs,
                        pod::pod_name(&name, attempt)
                    ),
                );
            }
        }
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            // Ours (created moments ago), or a pod of an earlier trial of this name that
            // garbage collection has not removed yet: that one is not adopted.
            let pod_name = pod::pod_name(&name, attempt);
            if let Some(existing) = find_pod(ctx, &ns, &pod_name).await?
                && !pod::owned_by(&existing, &uid)
            {
                return Err(Error::Other(format!(
                    "pod {pod_name} already exists and belongs to another object; waiting for it to be deleted"
                )));
            }
        }
        Err(kube::Error::Api(s)) if s.is_forbidden() && waits(&s.message).is_some() => {
            let reason = waits(&s.message).expect("the guard matched");
            // A full ResourceQuota, or a service account not there yet (a namespace created
            // moments ago has no `default` until the controller manager makes it): not the
            // template's fault. The trial waits, says why, and tries again (with backoff).
            info!(namespace = %ns, experiment = %trial.spec.experiment, trial = %name, message = %s.message, reason, "pod refused for now; waiting");
            next.phase = Some(TrialPhaseName::Pending);
            next.reason = Some(reason.into());
            next.message = Some(status::bounded(s.message.clone(), status::MESSAGE_LIMIT));
            return Ok(Some(ctx.backoff(&format!("quota/{uid}"))));
        }
        Err(kube::Error::Api(s)) if s.is_invalid() || s.is_forbidden() => {
            // The template cannot make a pod: the trial fails with the API server's words.
            next.phase = Some(TrialPhaseName::Failed);
            next.reason = Some("InvalidPodTemplate".into());
            next.message = Some(format!("spec.trialTemplate: {}", s.message));
            next.completion_time = Some(micro(now()));
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    }
    next.attempts = attempt;
    next.pod = Some(pod::pod_name(&name, attempt));
    next.phase = Some(TrialPhaseName::Pending);
    if next
        .reason
        .as_deref()
        .is_some_and(|r| WAIT_REASONS.contains(&r))
    {
        next.reason = None;
        next.message = None;
    }
    ctx.succeeded(&format!("quota/{uid}"));
    Ok(None)
}

/// Whether an API refusal is a ResourceQuota's (admission says "exceeded quota").
pub fn is_quota(message: &str) -> bool {
    message.contains("exceeded quota")
}

/// The reasons a trial waits with for a pod the API server refused for now.
const WAIT_REASONS: [&str; 2] = ["QuotaExceeded", "ServiceAccountMissing"];

/// Why a pod refused with this message is worth trying again, if it is: a full quota, or a
/// service account that does not exist (yet); admission says "error looking up service
/// account <ns>/<name>: serviceaccount \"<name>\" not found".
fn waits(message: &str) -> Option<&'static str> {
    if is_quota(message) {
        Some(WAIT_REASONS[0])
    } else if message.contains("error looking up service account") {
        Some(WAIT_REASONS[1])
    } else {
        None
    }
}

/// What is counted once a trial's end is recorded.
struct Ended {
    phase: TrialPhaseName,
    reason: String,
    message: Option<String>,
    ran: f64,
    gpu_seconds: f64,
}

fn finish(
    experiment: &Experiment,
    storage: Option<&crate::api::StorageSpec>,
    next: &mut NasTrialStatus,
    end: Ending,
    gpus: f64,
    t_now: f64,
) -> Ended {
    if let Some(r) = &end.report {
        status::push_report(
            &mut next.history,
            ReportEntry {
                step: r.step,
                metrics: status::sanitize_metrics(&r.metrics),
            },
            &|m| status::decides(experiment, m),
        );
    }
    next.metrics = status::final_metrics(end.report.as_ref().map(|r| &r.metrics), &next.history);
    next.value = next.metrics.get(&experiment.objectives[0].metric).copied();
    next.artifact = end
        .report
        .as_ref()
        .filter(|_| end.phase == TrialPhaseName::Succeeded)
        .and_then(|r| r.info.get(nasop_core::contract::INFO_ARTIFACT))
        .map(|path| status::bounded(pod::storage_url(storage, path), status::MESSAGE_LIMIT));
    next.phase = Some(end.phase);
    next.reason = Some(end.reason.clone());
    next.message = end
        .message
        .clone()
        .map(|m| status::bounded(m, status::MESSAGE_LIMIT));
    next.completion_time = Some(micro(t_now));
    let started = next
        .start_time
        .as_ref()
        .map(|t| status::seconds(&t.0))
        .or(end.started_at);
    if next.start_time.is_none() {
        next.start_time = Some(micro(started.unwrap_or(t_now).min(t_now)));
    }
    let ran = match (started, end.finished_at) {
        (Some(s), Some(f)) if f >= s => f - s,
        (Some(s), None) => (t_now - s).max(0.0),
        _ => 0.0,
    };
    let gpu_seconds = gpus * ran;
    next.gpu_seconds += gpu_seconds;
    Ended {
        phase: end.phase,
        reason: end.reason,
        message: end.message,
        ran,
        gpu_seconds,
    }
}

async fn record_end(
    ctx: &Ctx,
    trial: &NasTrial,
    experiment: &Experiment,
    next: &NasTrialStatus,
    end: Ended,
) {
    let ns = trial.namespace().unwrap_or_default();
    let name = trial.name_any();
    let m = &ctx.metrics;
    let result = match end.phase {
        TrialPhaseName::Succeeded => "Succeeded".to_string(),
        TrialPhaseName::Failed => "Failed".to_string(),
        _ => end.reason.clone(),
    };
    m.trials_finished
        .get_or_create(&ResultLabels {
            namespace: ns.clone(),
            experiment: trial.spec.experiment.clone(),
            result: result.clone(),
        })
        .inc();
    m.trial_duration
        .get_or_create(&OnlyResult { result })
        .observe(end.ran);
    m.gpu_seconds
        .get_or_create(&ExperimentLabels {
            namespace: ns.clone(),
            experiment: trial.spec.experiment.clone(),
        })
        .inc_by(end.gpu_seconds);
    ctx.slot_freed(&(ns.clone(), trial.spec.experiment.clone()));
    info!(namespace = %ns, experiment = %trial.spec.experiment, trial = %name, phase = ?end.phase, reason = %end.reason, value = ?next.value, "trial ended");
    let (type_, reason) = match end.phase {
        TrialPhaseName::Succeeded => (EventType::Normal, "TrialSucceeded"),
        TrialPhaseName::Failed => (EventType::Warning, "TrialFailed"),
        _ if end.reason == "EarlyStopped" => (EventType::Normal, "TrialStoppedEarly"),
        _ => (EventType::Normal, "TrialStopped"),
    };
    let note = match (&next.value, &end.message) {
        (_, Some(msg)) => msg.clone(),
        (Some(v), None) => format!("{} = {v}", experiment.objectives[0].metric),
        (None, None) => end.reason.clone(),
    };
    event(ctx, trial, type_, reason, note);
}
