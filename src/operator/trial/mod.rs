//! The NasTrial controller: one pod per attempt, read back into the trial's status.

pub mod decide;
mod end;

use super::context::{Ctx, Error, MANAGER, lock, now};
use super::experiment::ExpKey;
use super::index;
use super::metrics::ExperimentLabels;
use super::start::{self, event, find_pod};
use super::status::{self, micro};
use super::{jobset, pod, trainjob};
use crate::api::{self, NasExperiment, NasTrial, NasTrialStatus, TrialPhaseName};
use crate::engine::Experiment;
use decide::{Ending, Step};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
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
        Action::requeue(ctx.backoff.next(&trial.uid().unwrap_or_default()))
    }
}

/// The engine's experiment for a trial (cached by the experiment controller).
pub(super) fn experiment_of(
    ctx: &Ctx,
    key: &ExpKey,
    exp: &NasExperiment,
) -> Option<Arc<Experiment>> {
    let cached = ctx.states.experiment(exp);
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
    lock(&ctx.written.trials).updated(trial.resource_version(), written, Instant::now());
    Ok(())
}

/// The newest copy of a trial: the store's, or the one we just wrote if the store still
/// holds the version it replaced (a watch event is on its way).
pub fn freshest(ctx: &Ctx, trial: Arc<NasTrial>) -> Arc<NasTrial> {
    let (ns, name) = (trial.namespace().unwrap_or_default(), trial.name_any());
    lock(&ctx.written.trials)
        .newest(&ns, &name, Some(trial.clone()), Instant::now())
        .unwrap_or(trial)
}

/// The longest a trial that has not ended goes without a reconcile.
const RESYNC: f64 = 300.0;

/// Created in the last two seconds.
fn young(trial: &NasTrial) -> bool {
    trial
        .metadata
        .creation_timestamp
        .as_ref()
        .is_some_and(|t| now() - status::seconds(&t.0) < 2.0)
}

/// What one reconcile of a trial sees, and the status it leaves (`next`, from `current`).
struct Seen {
    trial: Arc<NasTrial>,
    ns: String,
    exp: Arc<NasExperiment>,
    experiment: Arc<Experiment>,
    current: NasTrialStatus,
    next: NasTrialStatus,
    /// Attempts started so far, and the current one's pod (or JobSet) if it exists.
    attempt: u32,
    pod: Option<Workload>,
    now: f64,
}

/// What runs an attempt: a pod, or a JobSet (or TrainJob) and the pods made for it so far.
enum Workload {
    Pod(Arc<Pod>),
    Group(jobset::Kind, Arc<DynamicObject>, Vec<Arc<Pod>>),
}

impl Workload {
    fn outcome(&self, now: f64, lost_after: f64) -> pod::Outcome {
        match self {
            Workload::Pod(p) => pod::outcome_at(p, now, lost_after),
            Workload::Group(kind, obj, pods) => {
                kind.outcome(obj, &kind.pods_of(obj, pods), now, lost_after)
            }
        }
    }

    /// The UID of the pod or JobSet (what Kueue's Workload names).
    fn uid(&self) -> String {
        match self {
            Workload::Pod(p) => p.uid(),
            Workload::Group(_, obj, _) => obj.uid(),
        }
        .unwrap_or_default()
    }

    fn deleting(&self) -> bool {
        match self {
            Workload::Pod(p) => p.metadata.deletion_timestamp.is_some(),
            Workload::Group(_, obj, _) => obj.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// How often a JobSet trial is looked at while it has not ended: its JobSet is read, not
/// watched (its pods are, and wake it), and a queue's admission or the JobSet's own end
/// comes without a pod event.
const JOB_SET_POLL: f64 = 5.0;

/// What carrying out a step left to do: when to look again, and the end to record.
#[derive(Default)]
struct Acted {
    requeue: Option<f64>,
    ending: Option<Ending>,
}

pub async fn reconcile(trial: Arc<NasTrial>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let mut seen = match read(&ctx, trial).await? {
        Ok(seen) => seen,
        Err(action) => return Ok(action),
    };
    let lost_after = ctx.settings.stop_grace.as_secs_f64();
    let mut outcome = seen.pod.as_ref().map(|w| w.outcome(seen.now, lost_after));
    if let (Some(pod::Outcome::Waiting(w)), Some(workload)) = (outcome.as_mut(), &seen.pod)
        && w.reason.as_deref() == Some(pod::QUEUED)
        && let Some(why) = ctx
            .queue_messages
            .why_queued(&ctx.client, &seen.ns, &workload.uid())
            .await
    {
        w.message = Some(format!(
            "{}: {why}",
            w.message.as_deref().unwrap_or("waits in its queue")
        ));
    }
    let step = decide::next_step(&view(&ctx, &seen, outcome.as_ref()));
    let acted = act(&ctx, &mut seen, step).await?;
    write(&ctx, seen, acted).await
}

/// The trial as the controller acts on it, or what to do when it does not (ended, deleted,
/// its experiment gone or unreadable).
async fn read(ctx: &Ctx, trial: Arc<NasTrial>) -> Result<Result<Seen, Action>, Error> {
    let trial = freshest(ctx, trial);
    if trial.metadata.deletion_timestamp.is_some() {
        return Ok(Err(Action::await_change()));
    }
    let ns = trial.namespace().unwrap_or_default();
    let exp_name = &trial.spec.experiment;
    let key: ExpKey = (ns.clone(), exp_name.clone());
    let current = trial.status.clone().unwrap_or_default();
    if matches!(
        current.phase,
        Some(TrialPhaseName::Succeeded | TrialPhaseName::Failed | TrialPhaseName::Stopped)
    ) {
        return Ok(Err(Action::await_change()));
    }
    let exp = match ctx.experiment(&ns, exp_name) {
        Some(Ok(exp))
            if Some(exp.uid().unwrap_or_default().as_str()) == index::owner_uid(&trial) =>
        {
            exp
        }
        // Orphaned (its experiment deleted with --cascade=orphan): it is the user's now.
        _ if index::owner_uid(&trial).is_none() => return Ok(Err(Action::await_change())),
        // Deleted, or replaced by a new experiment of the same name: garbage collection
        // removes this trial and its pod; the new experiment does not adopt it.
        Some(Ok(_)) | None => return Ok(Err(Action::requeue(Duration::from_secs(10)))),
        // The experiment controller reports it on the experiment.
        Some(Err(_)) => return Ok(Err(Action::await_change())),
    };
    // Another nasop installation runs this experiment: its trials are its too.
    if super::context::controlled_elsewhere(
        &ctx.settings,
        exp.annotations(),
        exp.status.as_ref().and_then(|s| s.controller.as_deref()),
    )
    .is_some()
    {
        return Ok(Err(Action::await_change()));
    }
    let Some(experiment) = experiment_of(ctx, &key, &exp) else {
        return Ok(Err(Action::await_change()));
    };
    let mut next = current.clone();
    let uid = trial.uid().unwrap_or_default();
    // Only a pod the trial controls counts: pod names are predictable, and a pod of the
    // name made by anyone else (or left by an earlier trial of this name) says nothing.
    let ours = |p: Option<Arc<Pod>>| p.filter(|p| pod::owned_by(p, &uid)).map(Workload::Pod);
    let (attempt, pod) = if let Some(kind) = jobset::Kind::of(&exp.spec) {
        current_group(ctx, kind, &trial, &ns, &current, &mut next).await?
    } else if current.attempts > 0 {
        let name = current
            .pod
            .clone()
            .unwrap_or_else(|| pod::pod_name(&trial.name_any(), current.attempts));
        (current.attempts, ours(find_pod(ctx, &ns, &name).await?))
    } else if let Some((name, p)) = pod::pod_names(&trial.name_any(), 1, &uid)
        .into_iter()
        .find_map(|name| Some((name.clone(), ours(ctx.pod(&ns, &name))?)))
    {
        // The experiment controller created the first pod with the trial: record it.
        next.attempts = 1;
        next.pod = Some(name);
        next.phase = Some(TrialPhaseName::Pending);
        (1, Some(p))
    } else {
        (0, None)
    };
    Ok(Ok(Seen {
        trial,
        ns,
        exp,
        experiment,
        current,
        next,
        attempt,
        pod,
        now: now(),
    }))
}

/// A JobSet (or TrainJob) trial's current attempt: its object (read from the API server:
/// those are not watched) if the trial controls it, with the trial's pods from the cache.
async fn current_group(
    ctx: &Ctx,
    kind: jobset::Kind,
    trial: &NasTrial,
    ns: &str,
    current: &NasTrialStatus,
    next: &mut NasTrialStatus,
) -> Result<(u32, Option<Workload>), Error> {
    let uid = trial.uid().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &kind.resource());
    let find = |name: String| {
        let api = api.clone();
        let uid = uid.clone();
        async move {
            match api.get_opt(&name).await {
                Ok(js) => Ok(js.filter(|js| jobset::owned_by(js, &uid)).map(Arc::new)),
                // No such API (the controller uninstalled): nothing runs the attempt.
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
                Err(e) => Err(e),
            }
        }
    };
    let (attempt, js) = if current.attempts > 0 {
        let name = current
            .pod
            .clone()
            .unwrap_or_else(|| pod::pod_name(&trial.name_any(), current.attempts));
        (current.attempts, find(name).await?)
    } else {
        let mut found = None;
        for name in pod::pod_names(&trial.name_any(), 1, &uid) {
            if let Some(js) = find(name.clone()).await? {
                found = Some((name, js));
                break;
            }
        }
        match found {
            Some((name, js)) => {
                // The experiment controller created the first object with the trial.
                next.attempts = 1;
                next.pod = Some(name);
                next.phase = Some(TrialPhaseName::Pending);
                (1, Some(js))
            }
            None => (0, None),
        }
    };
    let Some(obj) = js else {
        return Ok((attempt, None));
    };
    // A TrainJob's pods are its JobSet's (named as the TrainJob), and only while the TrainJob
    // controls it: a JobSet of the name left by an earlier TrainJob says nothing.
    let job_set_uid = match kind {
        jobset::Kind::JobSet => None,
        jobset::Kind::TrainJob => {
            let job_sets: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), ns, &jobset::resource());
            let owner = obj.uid().unwrap_or_default();
            let js = match job_sets.get_opt(&obj.name_any()).await {
                Ok(js) => js,
                Err(kube::Error::Api(s)) if s.code == 404 => None,
                Err(e) => return Err(e.into()),
            };
            Some(
                js.filter(|js| jobset::owned_by(js, &owner))
                    .and_then(|js| js.uid())
                    .unwrap_or_default(),
            )
        }
    };
    let pods: Vec<Arc<Pod>> = ctx
        .stores
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns))
        .filter(|p| {
            job_set_uid.as_ref().is_none_or(|uid| {
                !uid.is_empty() && p.labels().get(jobset::LABEL_JOBSET_UID) == Some(uid)
            })
        })
        .collect();
    let pods = kind.pods_of(&obj, &pods).into_iter().cloned().collect();
    Ok((attempt, Some(Workload::Group(kind, obj, pods))))
}

/// What the pure decision sees.
fn view<'a>(ctx: &Ctx, seen: &'a Seen, outcome: Option<&'a pod::Outcome>) -> decide::TrialView<'a> {
    decide::TrialView {
        attempt: seen.attempt,
        outcome,
        stop: seen.trial.spec.stop.as_deref(),
        stop_requested_at: seen
            .next
            .stop_requested_time
            .as_ref()
            .map(|t| status::seconds(&t.0)),
        young: young(&seen.trial),
        now: seen.now,
        grace: ctx.settings.stop_grace.as_secs_f64(),
        report_interval: report_interval(&seen.next, seen.now),
        max_attempts: ctx.settings.max_attempts,
        pending_timeout: seen
            .exp
            .spec
            .budget
            .pending_timeout_seconds
            .unwrap_or(api::DEFAULT_PENDING_TIMEOUT_SECONDS) as f64,
        final_report: final_report(&seen.next),
    }
}

/// The final report the current attempt's pod posted, if it did.
fn final_report(status: &NasTrialStatus) -> Option<nasop_core::contract::Report> {
    let f = status
        .final_report
        .as_ref()
        .filter(|f| status.pod.as_deref() == Some(f.pod.as_str()))?;
    Some(nasop_core::contract::Report {
        step: f.step,
        metrics: f.metrics.clone(),
        info: f.info.clone(),
        end: serde_json::from_value(serde_json::Value::String(f.end.clone())).ok(),
    })
}

/// Carries out `step`: starts a pod, deletes a stopped trial's pod, or takes the pod's state
/// into `seen.next`.
async fn act(ctx: &Ctx, seen: &mut Seen, step: Step) -> Result<Acted, Error> {
    let mut acted = Acted::default();
    match step {
        Step::Wait(after) => acted.requeue = after,
        Step::Start { attempt, lost } => {
            if let Some(why) = lost {
                pod_lost(ctx, &seen.trial, attempt, &why);
                // A JobSet or TrainJob that lost a pod may go on with the rest (a runtime
                // that retries): the attempt is over, its object goes before the next starts.
                if let Some(w @ Workload::Group(kind, obj, _)) = seen.pod.as_ref()
                    && !kind.ended(obj)
                    && !w.deleting()
                {
                    delete_workload(ctx, &seen.ns, w).await?;
                }
            }
            let started = start::start_pod(
                ctx,
                &seen.trial,
                &seen.exp,
                &seen.experiment,
                attempt,
                &mut seen.next,
            )
            .await?;
            acted.requeue = started.map(|after| after.as_secs_f64());
        }
        Step::End(end) => acted.ending = Some(end),
        Step::Track {
            phase,
            reason,
            message,
            started_at,
            stop: stop_progress,
            after,
        } => {
            acted.requeue = after;
            let next = &mut seen.next;
            next.phase = Some(phase);
            next.reason = reason;
            next.message = message.map(|m| status::bounded(m, status::MESSAGE_LIMIT));
            if next.start_time.is_none() {
                next.start_time = started_at.map(micro);
            }
            if let Some(sp) = stop_progress {
                next.stop_requested_time
                    .get_or_insert_with(|| micro(sp.requested_at));
                acted.requeue = sp.requeue;
                if sp.delete {
                    delete_stopped_pod(ctx, seen).await?;
                }
            }
        }
    }
    Ok(acted)
}

/// Writes the status the step led to (nothing when it is unchanged) and counts an end once
/// the status says so (a conflict retries the whole reconcile).
async fn write(ctx: &Ctx, mut seen: Seen, acted: Acted) -> Result<Action, Error> {
    // A trial that has not ended is looked at again at least every RESYNC: a pod deleted
    // while the watch was away (the relist drops it from the cache, but wakes nobody) is
    // then seen to be gone.
    let resync = acted
        .ending
        .is_none()
        .then_some(if jobset::Kind::of(&seen.exp.spec).is_some() {
            JOB_SET_POLL
        } else {
            RESYNC
        });

    let again = |requeue: Option<f64>| match (requeue, resync) {
        (Some(s), Some(r)) => Action::requeue(Duration::from_secs_f64(s.min(r))),
        (Some(s), None) | (None, Some(s)) => Action::requeue(Duration::from_secs_f64(s)),
        (None, None) => Action::await_change(),
    };
    if acted.ending.is_none() && seen.next == seen.current {
        return Ok(again(acted.requeue));
    }
    let gpus = match (&seen.exp.spec.trial_train_job, &seen.exp.spec.trial_job_set) {
        (Some(tj), _) => trainjob::gpus(tj),
        (None, Some(js)) => jobset::gpus(js),
        (None, None) => pod::gpus(seen.exp.spec.trial_template.as_ref()),
    };
    let storage = seen.exp.spec.storage.as_ref();
    let ended = acted.ending.map(|end| {
        end::finish(
            &seen.experiment,
            storage,
            &mut seen.next,
            end,
            gpus,
            seen.now,
        )
    });
    write_status(ctx, &seen.trial, &seen.next).await?;
    // A JobSet trial that ended while some of its ranks still run (rank 0 stopped when
    // asked, a rank failed): they are stopped, once the end is recorded (deleted before, a
    // lost status write would make the next reconcile take the JobSet for lost).
    if ended.is_some()
        && let Some(w @ Workload::Group(kind, obj, _)) = seen.pod.as_ref()
        && !kind.ended(obj)
        && !w.deleting()
    {
        delete_workload(ctx, &seen.ns, w).await?;
    }
    if let Some(end) = ended {
        end::record_end(ctx, &seen.trial, &seen.experiment, &seen.next, end).await;
    }
    Ok(again(acted.requeue))
}

/// The previous attempt's pod is gone: count it and say so on the trial.
fn pod_lost(ctx: &Ctx, trial: &NasTrial, attempt: u32, why: &str) {
    let (ns, exp_name, name) = (
        trial.namespace().unwrap_or_default(),
        &trial.spec.experiment,
        trial.name_any(),
    );
    info!(namespace = %ns, experiment = %exp_name, trial = %name, attempt = attempt - 1, %why, "pod lost; starting it again");
    ctx.metrics
        .pod_retries
        .get_or_create(&ExperimentLabels {
            namespace: ns.clone(),
            experiment: exp_name.clone(),
        })
        .inc();
    event(
        ctx,
        trial,
        EventType::Warning,
        "PodLost",
        format!("attempt {}: {why}; starting attempt {attempt}", attempt - 1),
    );
}

/// Deletes the pod (or JobSet, with its pods) of a trial that was asked to stop and did
/// not within its grace.
async fn delete_stopped_pod(ctx: &Ctx, seen: &Seen) -> Result<(), Error> {
    let Some(w) = seen.pod.as_ref().filter(|w| !w.deleting()) else {
        return Ok(());
    };
    info!(namespace = %seen.ns, experiment = %seen.trial.spec.experiment, trial = %seen.trial.name_any(), reason = ?seen.trial.spec.stop, "deleting the pod of a stopped trial");
    delete_workload(ctx, &seen.ns, w).await
}

async fn delete_workload(ctx: &Ctx, ns: &str, w: &Workload) -> Result<(), Error> {
    let deleted = match w {
        Workload::Pod(p) => {
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
            api.delete(&p.name_any(), &DeleteParams::default())
                .await
                .map(|_| ())
        }
        Workload::Group(kind, obj, _) => {
            let api: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), ns, &kind.resource());
            api.delete(&obj.name_any(), &DeleteParams::background())
                .await
                .map(|_| ())
        }
    };
    match deleted {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
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
