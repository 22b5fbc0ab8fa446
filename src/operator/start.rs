//! Starting a trial's pod: the trial contract injected into the template, and what the API
//! server's refusals mean (wait for a quota or a service account; fail on a bad template).
//! Both controllers start pods: the experiment controller a trial's first, with the trial.

use super::context::{Ctx, Error, lock, now, publish_event};
use super::pod::{self, PodInput};
use super::status::{self, micro};
use super::{jobset, trainjob};
use crate::api::{NasExperiment, NasTrial, NasTrialStatus, TrialPhaseName};
use crate::engine::Experiment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DynamicObject, PostParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The pod of this attempt: from the store, or, when the store does not have it, from the
/// API server (a pod we just created may not have reached the store yet).
pub async fn find_pod(ctx: &Ctx, ns: &str, name: &str) -> Result<Option<Arc<Pod>>, Error> {
    if let Some(p) = ctx.pod(ns, name) {
        return Ok(Some(p));
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    Ok(api.get_opt(name).await?.map(Arc::new))
}

/// An event about a trial.
pub fn event(ctx: &Ctx, trial: &NasTrial, type_: EventType, reason: &str, note: String) {
    publish_event(ctx, trial.object_ref(&()), type_, reason, note);
}

/// Creates pod `attempt` of `trial` and records it in `next`; when the API server refuses
/// it for now, says why in `next` and returns when to try again. A pod of its name that the
/// trial does not control (made in advance, or left by an earlier object of the trial's
/// name) is reported and the pod takes its other name.
pub async fn start_pod(
    ctx: &Ctx,
    trial: &NasTrial,
    exp: &NasExperiment,
    experiment: &Experiment,
    attempt: u32,
    next: &mut NasTrialStatus,
) -> Result<Option<Duration>, Error> {
    if let Some(kind) = jobset::Kind::of(&exp.spec) {
        return start_group(ctx, trial, exp, experiment, kind, attempt, next).await;
    }
    let ns = trial.namespace().unwrap_or_default();
    let name = trial.name_any();
    let uid = trial.uid().unwrap_or_default();
    let mut pod = desired_pod(ctx, trial, exp, experiment, attempt)?;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let [own, other] = pod::pod_names(&name, attempt, &uid);
    let mut pod_name = own.clone();
    loop {
        pod.metadata.name = Some(pod_name.clone());
        match api.create(&PostParams::default(), &pod).await {
            Ok(created) => {
                let mut kept = created;
                pod::strip(&mut kept);
                lock(&ctx.written.pods).created(kept, Instant::now());
                info!(namespace = %ns, experiment = %trial.spec.experiment, trial = %name, attempt, pod = %pod_name, "created pod");
                if attempt == 1 {
                    first_pod_created(ctx, trial, &pod_name);
                }
                break;
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() => {
                // Ours (created moments ago), or another object's: that one is not adopted.
                let Some(existing) = find_pod(ctx, &ns, &pod_name).await? else {
                    return Err(kube::Error::Api(s).into());
                };
                if pod::owned_by(&existing, &uid) {
                    break;
                }
                if pod_name == other {
                    return Err(Error::PodTaken { pod: pod_name });
                }
                name_taken(ctx, trial, &existing, &other);
                pod_name = other.clone();
            }
            Err(kube::Error::Api(s)) if s.is_invalid() || s.is_forbidden() => {
                return Ok(refused(ctx, trial, next, &s, "spec.trialTemplate"));
            }
            Err(e) => return Err(e.into()),
        }
    }
    started(ctx, trial, next, attempt, pod_name);
    Ok(None)
}

/// Attempt `attempt` was created as `name`: the status says so, and a wait for quota is
/// over.
fn started(ctx: &Ctx, trial: &NasTrial, next: &mut NasTrialStatus, attempt: u32, name: String) {
    next.attempts = attempt;
    next.pod = Some(name);
    next.phase = Some(TrialPhaseName::Pending);
    if next
        .reason
        .as_deref()
        .is_some_and(|r| WAIT_REASONS.contains(&r))
    {
        next.reason = None;
        next.message = None;
    }
    ctx.backoff
        .reset(&format!("quota/{}", trial.uid().unwrap_or_default()));
}

/// The JobSet (or TrainJob) of attempt `attempt` of a trial of several pods, as
/// [`start_pod`] does for a pod: an object of its name that the trial does not control is
/// reported and the trial takes its other name.
async fn start_group(
    ctx: &Ctx,
    trial: &NasTrial,
    exp: &NasExperiment,
    experiment: &Experiment,
    kind: jobset::Kind,
    attempt: u32,
    next: &mut NasTrialStatus,
) -> Result<Option<Duration>, Error> {
    let ns = trial.namespace().unwrap_or_default();
    let name = trial.name_any();
    let uid = trial.uid().unwrap_or_default();
    let input = trial_input(trial, experiment)?;
    let p = PodInput {
        namespace: &ns,
        experiment: &trial.spec.experiment,
        experiment_uid: &exp.uid().unwrap_or_default(),
        trial: &name,
        trial_uid: &uid,
        attempt,
        input: &input,
        report_url: &ctx.settings.report_url,
        storage: exp.spec.storage.as_ref(),
        wrap: exp
            .spec
            .wrap
            .as_ref()
            .map(|w| (w, ctx.settings.wrap_image.as_str())),
    };
    let build = |object_name: &str| match (&exp.spec.trial_train_job, &exp.spec.trial_job_set) {
        (Some(t), _) => trainjob::build(&p, t, object_name),
        (None, Some(t)) => jobset::build(&p, t, object_name),
        (None, None) => unreachable!("Kind::of found a trial kind"),
    };
    let (what, field) = (kind.name(), kind.field());
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &kind.resource());
    let [own, other] = pod::pod_names(&name, attempt, &uid);
    let mut object_name = own.clone();
    loop {
        let object: DynamicObject = serde_json::from_value(build(&object_name))
            .expect("a built JobSet or TrainJob is an object with metadata");
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => {
                info!(namespace = %ns, experiment = %trial.spec.experiment, trial = %name, attempt, kind = what, object = %object_name, "created the trial's object");
                if attempt == 1 {
                    first_pod_created(ctx, trial, &object_name);
                }
                break;
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() => {
                let existing = api.get_opt(&object_name).await?;
                if existing.as_ref().is_some_and(|e| jobset::owned_by(e, &uid)) {
                    break;
                }
                if object_name == other {
                    return Err(Error::PodTaken { pod: object_name });
                }
                warn!(namespace = %ns, trial = %name, kind = what, object = %object_name, "an object of the trial's name belongs to another");
                event(
                    ctx,
                    trial,
                    EventType::Warning,
                    "PodNameTaken",
                    format!(
                        "{what} {object_name} belongs to another object, not to this trial: nothing it says counts; the trial's {what} is {other}"
                    ),
                );
                object_name = other.clone();
            }
            // No such API: the controller is not installed.
            Err(kube::Error::Api(s)) if s.code == 404 => {
                let r = kind.resource();
                let install = match kind {
                    jobset::Kind::JobSet => "the JobSet controller (v0.12 or newer)",
                    jobset::Kind::TrainJob => "Kubeflow Trainer (v2.3 or newer)",
                };
                next.phase = Some(TrialPhaseName::Failed);
                next.reason = Some(format!("{what}NotInstalled"));
                next.message = Some(format!(
                    "{field}: the API server has no {}/{} {what} resource ({}): install {install}, or run the trials as pods with spec.trialTemplate",
                    r.group, r.version, s.message
                ));
                next.completion_time = Some(micro(now()));
                return Ok(None);
            }
            Err(kube::Error::Api(s)) if s.is_invalid() || s.is_forbidden() => {
                return Ok(refused(ctx, trial, next, &s, field));
            }
            Err(e) => return Err(e.into()),
        }
    }
    started(ctx, trial, next, attempt, object_name);
    Ok(None)
}

/// The trial's first pod took a slot: the queue metric and the event.
fn first_pod_created(ctx: &Ctx, trial: &NasTrial, pod_name: &str) {
    let free = super::index::owner_uid(trial).and_then(|u| ctx.states.slot_taken(u));
    if let Some(free) = free {
        ctx.metrics.queue_latency.observe(free.as_secs_f64());
    }
    event(
        ctx,
        trial,
        EventType::Normal,
        "TrialCreated",
        format!(
            "candidate {} for {} epochs, pod {pod_name}",
            trial.spec.candidate, trial.spec.epochs
        ),
    );
}

/// Another object holds the pod's name: say so (once per pod it would have been).
fn name_taken(ctx: &Ctx, trial: &NasTrial, existing: &Pod, other: &str) {
    let owner = super::index::controller(existing).unwrap_or_else(|| "no controller".into());
    warn!(namespace = ?trial.namespace(), trial = %trial.name_any(), pod = %existing.name_any(), %owner, "a pod of the trial's name belongs to another object");
    event(
        ctx,
        trial,
        EventType::Warning,
        "PodNameTaken",
        format!(
            "pod {} belongs to {owner}, not to this trial: nothing it says counts; the trial's pod is {other}",
            existing.name_any()
        ),
    );
}

/// What the API server's refusal of a pod means for the trial: wait (a full quota, a
/// service account not there yet) and when to try again, or fail (a template that cannot
/// make a pod).
fn refused(
    ctx: &Ctx,
    trial: &NasTrial,
    next: &mut NasTrialStatus,
    s: &kube::core::Status,
    field: &str,
) -> Option<Duration> {
    if let Some(reason) = waits(&s.message).filter(|_| s.is_forbidden()) {
        // Not the template's fault: a namespace created moments ago has no `default` service
        // account until the controller manager makes it. The trial says why and tries again
        // (with backoff).
        info!(namespace = ?trial.namespace(), experiment = %trial.spec.experiment, trial = %trial.name_any(), message = %s.message, reason, "pod refused for now; waiting");
        next.phase = Some(TrialPhaseName::Pending);
        next.reason = Some(reason.into());
        next.message = Some(status::bounded(s.message.clone(), status::MESSAGE_LIMIT));
        let uid = trial.uid().unwrap_or_default();
        return Some(ctx.backoff.next(&format!("quota/{uid}")));
    }
    // The template cannot make a pod (invalid, or refused by admission): the trial fails
    // with the API server's words.
    next.phase = Some(TrialPhaseName::Failed);
    next.reason = Some("InvalidPodTemplate".into());
    next.message = Some(format!("{field}: {}", s.message));
    next.completion_time = Some(micro(now()));
    None
}

/// Pod `attempt` of `trial`: the experiment's template with the trial contract.
fn desired_pod(
    ctx: &Ctx,
    trial: &NasTrial,
    exp: &NasExperiment,
    experiment: &Experiment,
    attempt: u32,
) -> Result<Pod, Error> {
    let ns = trial.namespace().unwrap_or_default();
    let name = trial.name_any();
    let input = trial_input(trial, experiment)?;
    let uid = trial.uid().unwrap_or_default();
    let template = exp.spec.trial_template.as_ref().ok_or(Error::NoTemplate)?;
    Ok(pod::build(
        &PodInput {
            namespace: &ns,
            experiment: &trial.spec.experiment,
            experiment_uid: &exp.uid().unwrap_or_default(),
            trial: &name,
            trial_uid: &uid,
            attempt,
            input: &input,
            report_url: &ctx.settings.report_url,
            storage: exp.spec.storage.as_ref(),
            wrap: exp
                .spec
                .wrap
                .as_ref()
                .map(|w| (w, ctx.settings.wrap_image.as_str())),
        },
        template,
    ))
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

/// What the trial's trainer is given (NASOP_TRIAL).
fn trial_input(
    trial: &NasTrial,
    experiment: &Experiment,
) -> Result<nasop_core::contract::TrialInput, Error> {
    let name = trial.name_any();
    let point = status::point(experiment, trial).map_err(|e| status::RecordError {
        trial: name.clone(),
        ..e
    })?;
    Ok(experiment.trial_input(
        name,
        trial.spec.index,
        trial.spec.seed,
        &point,
        trial.spec.epochs,
        trial.spec.resume_from,
        status::stage(trial),
    ))
}
