//! Starting a trial's pod: the trial contract injected into the template, and what the API
//! server's refusals mean (wait for a quota or a service account; fail on a bad template).
//! Both controllers start pods: the experiment controller a trial's first, with the trial.

use super::context::{Ctx, Error, lock, now, publish_event};
use super::pod::{self, PodInput};
use super::status::{self, micro};
use crate::api::{NasExperiment, NasTrial, NasTrialStatus, TrialPhaseName};
use crate::engine::Experiment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::info;

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
/// it for now, says why in `next` and returns when to try again.
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
    let uid = trial.uid().unwrap_or_default();
    let pod = desired_pod(ctx, trial, exp, experiment, attempt)?;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    match api.create(&PostParams::default(), &pod).await {
        Ok(created) => {
            let mut kept = created;
            pod::strip(&mut kept);
            lock(&ctx.written.pods).created(kept, Instant::now());
            info!(namespace = %ns, experiment = %trial.spec.experiment, trial = %name, attempt, "created pod");
            if attempt == 1 {
                if let Some(free) = ctx
                    .states
                    .slot_taken(&(ns.clone(), trial.spec.experiment.clone()))
                {
                    ctx.metrics.queue_latency.observe(free.as_secs_f64());
                }
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
                return Err(Error::PodTaken { pod: pod_name });
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
            return Ok(Some(ctx.backoff.next(&format!("quota/{uid}"))));
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
    ctx.backoff.reset(&format!("quota/{uid}"));
    Ok(None)
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
    let point = status::point(experiment, trial).map_err(|e| status::RecordError {
        trial: name.clone(),
        ..e
    })?;
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
    let token = ctx.settings.key.sign(&ns, &name, &uid);
    let template = exp.spec.trial_template.as_ref().ok_or(Error::NoTemplate)?;
    Ok(pod::build(&PodInput {
        template,
        namespace: &ns,
        experiment: &trial.spec.experiment,
        trial: &name,
        trial_uid: &uid,
        attempt,
        input: &input,
        report_url: &ctx.settings.report_url,
        token: &token,
        storage: exp.spec.storage.as_ref(),
    }))
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
