//! The NasTrial controller: one pod per attempt, read back into the trial's status.

use super::metrics::{ExperimentLabels, OnlyResult, ResultLabels};
use super::pod::{self, Outcome, PodInput};
use super::status::{self, micro};
use super::{Ctx, Error, ExpKey, MANAGER, now};
use crate::api::{self, NasExperiment, NasTrial, NasTrialStatus, ReportEntry, TrialPhaseName};
use crate::engine::Experiment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

pub fn error_policy(trial: Arc<NasTrial>, err: &Error, _ctx: Arc<Ctx>) -> Action {
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
    Action::requeue(Duration::from_millis(if conflict { 200 } else { 2000 }))
}

/// The engine's experiment for a trial (cached by the experiment controller).
fn experiment_of(ctx: &Ctx, key: &ExpKey, exp: &NasExperiment) -> Option<Arc<Experiment>> {
    if let Some(c) = super::lock(&ctx.engines).get(key) {
        return Some(c.experiment.clone());
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
    api.patch_status(
        &trial.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// The pod of this attempt: from the store, or, when the store does not have it, from the
/// API server (a pod we just created may not have reached the store yet).
async fn find_pod(ctx: &Ctx, ns: &str, name: &str) -> Result<Option<Arc<Pod>>, Error> {
    if let Some(p) = ctx.pods.get(&ObjectRef::new(name).within(ns)) {
        return Ok(Some(p));
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    Ok(api.get_opt(name).await?.map(Arc::new))
}

async fn event(ctx: &Ctx, trial: &NasTrial, type_: EventType, reason: &str, note: String) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &trial.object_ref(&())).await {
        warn!(trial = %trial.name_any(), error = %e, "could not record an event");
    }
}

/// How a trial ended.
struct Ending {
    phase: TrialPhaseName,
    reason: String,
    message: Option<String>,
    report: Option<nasop_core::contract::Report>,
    started_at: Option<f64>,
    finished_at: Option<f64>,
}

pub async fn reconcile(trial: Arc<NasTrial>, ctx: Arc<Ctx>) -> Result<Action, Error> {
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
    let Some(exp) = ctx.experiments.get(&ObjectRef::new(exp_name).within(&ns)) else {
        // Deleted: garbage collection removes this trial and its pod.
        return Ok(Action::await_change());
    };
    let Some(experiment) = experiment_of(&ctx, &key, &exp) else {
        return Ok(Action::await_change());
    };
    let mut next = current.clone();
    let t_now = now();
    let attempt = current.attempts;
    let pod = if attempt > 0 {
        find_pod(&ctx, &ns, &pod::pod_name(&name, attempt)).await?
    } else {
        None
    };
    let gpus = pod::gpus(exp.spec.trial_template.as_ref());
    let outcome = pod.as_deref().map(pod::outcome);
    let stop = trial.spec.stop.clone();
    let mut requeue = None;
    let mut ending = None;

    let lost = match &outcome {
        None if attempt > 0 => Some("the pod was deleted".to_string()),
        Some(Outcome::Lost(why)) => Some(why.clone()),
        _ => None,
    };
    match (&outcome, &lost) {
        (_, Some(why)) => {
            // The cluster lost the pod: retry unless asked to stop or out of attempts.
            if let Some(reason) = &stop {
                ending = Some(Ending {
                    phase: TrialPhaseName::Stopped,
                    reason: reason.clone(),
                    message: None,
                    report: None,
                    started_at: None,
                    finished_at: None,
                });
            } else if attempt >= ctx.max_attempts {
                ending = Some(Ending {
                    phase: TrialPhaseName::Failed,
                    reason: "PodLost".into(),
                    message: Some(format!(
                        "lost {attempt} pods (last: {why}); raise --max-attempts or check the nodes"
                    )),
                    report: None,
                    started_at: None,
                    finished_at: None,
                });
            } else {
                info!(namespace = %ns, experiment = %exp_name, trial = %name, attempt, %why, "pod lost; starting it again");
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
                    format!("attempt {attempt}: {why}; starting attempt {}", attempt + 1),
                )
                .await;
                start_pod(&ctx, &trial, &exp, &experiment, attempt + 1, &mut next).await?;
            }
        }
        (None, None) => {
            if let Some(reason) = &stop {
                ending = Some(Ending {
                    phase: TrialPhaseName::Stopped,
                    reason: reason.clone(),
                    message: Some("stopped before it started".into()),
                    report: None,
                    started_at: None,
                    finished_at: None,
                });
            } else {
                start_pod(&ctx, &trial, &exp, &experiment, 1, &mut next).await?;
            }
        }
        (Some(Outcome::Waiting(message)), None) => {
            next.phase = Some(TrialPhaseName::Pending);
            next.message = message.clone();
        }
        (Some(Outcome::Running { started_at }), None) => {
            next.phase = Some(TrialPhaseName::Running);
            next.message = None;
            if next.start_time.is_none() {
                next.start_time = Some(micro(
                    started_at.unwrap_or(t_now).max(t_now - 1.0).min(t_now),
                ));
            }
        }
        (Some(Outcome::Terminating), None) => {}
        (
            Some(Outcome::Succeeded {
                report,
                started_at,
                finished_at,
            }),
            None,
        ) => {
            ending = Some(Ending {
                phase: if stop.is_some() {
                    TrialPhaseName::Stopped
                } else {
                    TrialPhaseName::Succeeded
                },
                reason: stop.clone().unwrap_or_else(|| "Completed".into()),
                message: None,
                report: report.clone(),
                started_at: *started_at,
                finished_at: *finished_at,
            });
        }
        (
            Some(Outcome::Failed {
                message,
                started_at,
                finished_at,
            }),
            None,
        ) => {
            ending = Some(Ending {
                phase: if stop.is_some() {
                    TrialPhaseName::Stopped
                } else {
                    TrialPhaseName::Failed
                },
                reason: stop.clone().unwrap_or_else(|| "TrainerFailed".into()),
                message: Some(message.clone()),
                report: None,
                started_at: *started_at,
                finished_at: *finished_at,
            });
        }
        (Some(Outcome::Lost(_)), None) => unreachable!("lost pods are handled above"),
    }

    // Asked to stop while the pod lives: the next report says so; after the grace period
    // the pod is deleted.
    if ending.is_none()
        && let (Some(reason), Some(p)) = (&stop, &pod)
        && p.metadata.deletion_timestamp.is_none()
    {
        let asked = next
            .stop_requested_time
            .get_or_insert_with(|| micro(t_now))
            .clone();
        let waited = t_now - status::seconds(&asked.0);
        let never_ran = matches!(outcome, Some(Outcome::Waiting(_)));
        if never_ran || waited >= ctx.stop_grace.as_secs_f64() {
            info!(namespace = %ns, experiment = %exp_name, trial = %name, %reason, "deleting the pod of a stopped trial");
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
            match api.delete(&p.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            requeue = Some(Duration::from_secs_f64(
                ctx.stop_grace.as_secs_f64() - waited + 0.05,
            ));
        }
    }

    let ended = ending.map(|end| finish(&experiment, &mut next, end, gpus, t_now));
    write_status(&ctx, &trial, &next).await?;
    if let Some(end) = ended {
        // Counted once the status says so (a conflict above retries the whole reconcile).
        record_end(&ctx, &trial, &experiment, &next, end).await;
    }
    Ok(requeue.map_or(Action::await_change(), Action::requeue))
}

pub async fn start_pod(
    ctx: &Ctx,
    trial: &NasTrial,
    exp: &NasExperiment,
    experiment: &Experiment,
    attempt: u32,
    next: &mut NasTrialStatus,
) -> Result<(), Error> {
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
    });
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    match api.create(&PostParams::default(), &pod).await {
        Ok(_) => {
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
                )
                .await;
            }
        }
        Err(kube::Error::Api(s)) if s.is_already_exists() => {}
        Err(kube::Error::Api(s)) if s.is_invalid() || s.is_forbidden() => {
            // The template cannot make a pod: the trial fails with the API server's words.
            next.phase = Some(TrialPhaseName::Failed);
            next.reason = Some("InvalidPodTemplate".into());
            next.message = Some(format!("spec.trialTemplate: {}", s.message));
            next.completion_time = Some(micro(now()));
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    next.attempts = attempt;
    next.pod = Some(pod::pod_name(&name, attempt));
    next.phase = Some(TrialPhaseName::Pending);
    Ok(())
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
                metrics: r.metrics.clone(),
            },
        );
    }
    next.metrics = status::final_metrics(end.report.as_ref().map(|r| &r.metrics), &next.history);
    next.value = next.metrics.get(&experiment.objectives[0].metric).copied();
    next.phase = Some(end.phase);
    next.reason = Some(end.reason.clone());
    next.message = end.message.clone();
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
    event(ctx, trial, type_, reason, note).await;
}
