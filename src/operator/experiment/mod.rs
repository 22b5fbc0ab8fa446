//! The NasExperiment controller: engine decisions become NasTrials and stop requests, and
//! the trials become the experiment's status.

mod conditions;
pub mod state;
mod upkeep;
mod warm;
mod world;

use super::context::{CONTROLLER_ANNOTATION, Ctx, Error, MANAGER, controlled_elsewhere, lock, now};
use super::status::{self, StatusInput, trial_name};
use super::written::Written;
use super::{index, jobset, pod, start, trainjob};
use crate::api::{self, NasExperiment, NasExperimentStatus, NasTrial, NasTrialSpec};
use crate::engine::Clock;
use conditions::{Blocked, publish, set_conditions};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
pub use state::{Cached, ExpKey, ExperimentState, Prior, States};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};
pub use upkeep::forget;
use upkeep::{clean_up_pods, update_metrics};
use warm::prior_trials;
use world::World;

/// Longest experiment name: trial and pod names (`<name>-<index>-<attempt>`) must stay
/// valid label values (63 characters).
pub const MAX_NAME: usize = 50;

/// How often an experiment looks again for a missing warm-start experiment.
const PRIOR_RECHECK: Duration = Duration::from_secs(5);

/// Least time between two status writes that only change counts.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

pub fn error_policy(object: Arc<DynamicObject>, err: &Error, ctx: Arc<Ctx>) -> Action {
    warn!(
        namespace = %object.namespace().unwrap_or_default(),
        experiment = %object.name_any(),
        error = %err,
        "reconcile failed; retrying"
    );
    Action::requeue(ctx.backoff.next(&object.uid().unwrap_or_default()))
}

/// The experiment's trials as the store shows them, and those this process created that the
/// store does not show yet (its watch lags under load): a reconcile in between would
/// otherwise take their indices for gaps and propose them again, each a refused create and a
/// read (see [`written`](super::written)).
pub(super) fn with_created(
    mut trials: Vec<Arc<NasTrial>>,
    created: &mut Written<NasTrial>,
    uid: &str,
    now: Instant,
) -> Vec<Arc<NasTrial>> {
    if created.is_empty() {
        return trials;
    }
    let stored: std::collections::HashSet<&str> = trials
        .iter()
        .filter_map(|t| t.metadata.name.as_deref())
        .collect();
    let unseen = created.unseen(now, |name| stored.contains(name));
    if unseen.is_empty() {
        return trials;
    }
    // A trial of an earlier experiment of this name is not this one's.
    trials.extend(
        unseen
            .into_iter()
            .filter(|t| index::owner_uid(t) == Some(uid)),
    );
    trials.sort_by_key(|t| t.spec.index);
    trials
}

/// The status as stored, read leniently (a status nasop cannot read counts as none).
fn stored_status(object: &DynamicObject) -> NasExperimentStatus {
    object
        .data
        .get("status")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_default()
}

async fn write_status(
    ctx: &Ctx,
    object: &DynamicObject,
    previous: &NasExperimentStatus,
    status: NasExperimentStatus,
) -> Result<(), Error> {
    if object.data.get("status").is_some() && *previous == status {
        return Ok(());
    }
    // Untyped: the answer is the whole object, which nasop's types may not read.
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &object.namespace().unwrap_or_default(),
        &ctx.stores.experiment_resource,
    );
    let patch = serde_json::json!({
        "apiVersion": "nasop.dev/v1alpha1",
        "kind": "NasExperiment",
        "status": status,
    });
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Why nasop cannot run an experiment as written: its status says so, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error(
        "metadata.name {name:?} has {} characters; use at most {MAX_NAME} so that trial and pod names stay valid",
        name.len()
    )]
    NameTooLong { name: String },
    #[error(transparent)]
    Unreadable(#[from] api::ParseError),
    #[error(transparent)]
    Template(#[from] pod::TemplateError),
    #[error(transparent)]
    Spec(#[from] api::ValidationError),
    #[error(transparent)]
    WarmStart(#[from] warm::WarmStartError),
}

/// Reads the experiment and checks what the API server cannot.
fn read(
    ctx: &Ctx,
    object: &DynamicObject,
) -> Result<(Arc<NasExperiment>, crate::engine::Experiment), Invalid> {
    let name = object.name_any();
    if name.len() > MAX_NAME {
        return Err(Invalid::NameTooLong { name });
    }
    let exp = ctx.parse(object)?;
    match (&exp.spec.trial_train_job, &exp.spec.trial_job_set) {
        (Some(tj), _) => trainjob::check(tj, &name).map_err(pod::TemplateError::Group)?,
        (None, Some(js)) => jobset::check(js, &name).map_err(pod::TemplateError::Group)?,
        (None, None) => pod::check_template(exp.spec.trial_template.as_ref())?,
    }
    let experiment = api::validate(&name, &exp.spec)?;
    Ok((exp, experiment))
}

/// What the engine decided, and the status that follows.
struct Plan {
    decision: crate::engine::Decision,
    status: NasExperimentStatus,
    experiment: Arc<crate::engine::Experiment>,
}

/// Read the world, decide, apply, write the status.
pub async fn reconcile(object: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if object.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if let Some(other) = controlled_elsewhere(
        &ctx.settings,
        object.annotations(),
        stored_status(&object).controller.as_deref(),
    ) {
        leave_alone(&ctx, &object, &other);
        return Ok(Action::await_change());
    }
    let Some((world, experiment)) = read_world(&ctx, object).await? else {
        return Ok(Action::await_change());
    };
    let mut plan = decide(&ctx, &world, experiment)?;
    stop_trials(&ctx, &world, &plan.decision.stop).await?;
    let blocked = create_trials(&ctx, &world, &plan).await?;
    skip_taken_names(&ctx, &world, &blocked);
    set_conditions(&ctx, &world, &mut plan.status, &blocked);
    clean_up_pods(&ctx, &world);
    plan.status.controller = Some(ctx.settings.controller.clone());
    let flush = write(&ctx, &world, &plan.status).await?;
    if matches!(world.prior, Some(Prior::Missing(_))) {
        // Nothing announces the experiment it waits for: look again soon.
        return Ok(Action::requeue(
            flush.map_or(PRIOR_RECHECK, |f| f.min(PRIOR_RECHECK)),
        ));
    }
    Ok(next_action(&ctx, &world, &plan, flush, !blocked.is_empty()))
}

/// Says once (a log line and an event) that another installation runs this experiment.
fn leave_alone(ctx: &Ctx, object: &DynamicObject, other: &str) {
    let uid = object.uid().unwrap_or_default();
    if !lock(&ctx.elsewhere).insert(uid) {
        return;
    }
    warn!(namespace = ?object.namespace(), experiment = %object.name_any(), controller = %other, this = %ctx.settings.controller, "another nasop installation runs this experiment; leaving it alone");
    publish(
        ctx,
        object,
        EventType::Warning,
        "ControlledElsewhere",
        format!(
            "the nasop installation {other} runs this experiment; {} also watches this namespace and leaves it alone (to move it: kubectl annotate nasexp {} {CONTROLLER_ANNOTATION}={} --overwrite)",
            ctx.settings.controller,
            object.name_any(),
            ctx.settings.controller
        ),
    );
}

/// No later trial takes an index whose name another object holds: the engine fills gaps in
/// the indices, and would otherwise try that one at every decision.
fn skip_taken_names(ctx: &Ctx, world: &World, blocked: &[Blocked]) {
    let state = ctx.states.of(&world.uid, &world.key);
    let mut state = lock(&state);
    let Some(cached) = state.engine.as_mut() else {
        return;
    };
    for b in blocked {
        if let Blocked::Conflict(index, _) = b {
            cached.engine.skip_index(*index);
        }
    }
}

/// Fails an experiment nasop cannot run: a Failed status naming the field, and an event
/// when that is new.
async fn fail_invalid(
    ctx: &Ctx,
    object: &DynamicObject,
    key: &ExpKey,
    previous: &NasExperimentStatus,
    invalid: Invalid,
    now: f64,
) -> Result<(), Error> {
    let message = invalid.to_string();
    let status = status::invalid_status(previous, object.metadata.generation, &message, now);
    if previous.phase != status.phase || previous.message != status.message {
        warn!(namespace = %key.0, experiment = %key.1, %message, "invalid experiment");
        publish(ctx, object, EventType::Warning, "InvalidSpec", message);
    }
    write_status(ctx, object, previous, status).await
}

/// Reads the experiment and its trials. An experiment nasop cannot run gets a Failed
/// status naming the field (and None here).
async fn read_world(
    ctx: &Ctx,
    object: Arc<DynamicObject>,
) -> Result<Option<(World, crate::engine::Experiment)>, Error> {
    let key: ExpKey = (object.namespace().unwrap_or_default(), object.name_any());
    let uid = object.uid().unwrap_or_default();
    // The status as stored; but once this process has written this object's end, that
    // status until the spec changes, whatever older version the store still shows (else a
    // later reconcile would end the experiment, stamp and announce it, again).
    let state = ctx.states.of(&uid, &key);
    let previous = {
        let stored = stored_status(&object);
        let ended = lock(&state).ended.clone();
        match ended {
            Some(done)
                if stored.completion_time.is_none()
                    && done.observed_generation == object.metadata.generation =>
            {
                done
            }
            _ => stored,
        }
    };
    let generation = object.metadata.generation;
    let now = now();
    let (exp, experiment) = match read(ctx, &object) {
        Ok(read) => read,
        Err(invalid) => {
            fail_invalid(ctx, &object, &key, &previous, invalid, now).await?;
            return Ok(None);
        }
    };
    {
        let mut reporting = lock(&ctx.states.reporting);
        if exp.spec.early_stopping.is_some() {
            reporting.insert(key.clone());
        } else {
            reporting.remove(&key);
        }
    }
    let trials = with_created(
        ctx.stores.trials_of(&key.0, &uid),
        &mut lock(&state).created,
        &uid,
        Instant::now(),
    );
    let rebuild = !lock(&state)
        .engine
        .as_ref()
        .is_some_and(|c| c.spec == exp.spec && !c.prior_missing);
    let prior = if rebuild {
        match prior_trials(ctx, &key.0, &exp, &experiment) {
            Ok(prior) => Some(prior),
            Err(invalid) => {
                fail_invalid(ctx, &object, &key, &previous, invalid.into(), now).await?;
                return Ok(None);
            }
        }
    } else {
        None
    };
    Ok(Some((
        World {
            object,
            key,
            uid,
            exp,
            trials,
            previous,
            generation,
            now,
            prior,
        },
        experiment,
    )))
}

/// The engine's decision with the cached engine (rebuilt when the spec or the object
/// changed), and the status it leads to.
fn decide(ctx: &Ctx, world: &World, experiment: crate::engine::Experiment) -> Result<Plan, Error> {
    let previous = &world.previous;
    let started_at = previous
        .start_time
        .as_ref()
        .map_or(world.now, |t| status::seconds(&t.0));
    let clock = Clock {
        started_at,
        now: world.now,
    };
    let state = ctx.states.of(&world.uid, &world.key);
    let mut state = lock(&state);
    let fresh = state
        .engine
        .as_ref()
        .is_some_and(|c| c.spec == world.exp.spec);
    // Rebuilt when read_world read the prior results for it, or when the state went away
    // since (a delete racing this reconcile): then without them until the next reconcile.
    let unread = Prior::Missing(String::new());
    if let Some(prior) = world.prior.as_ref().or((!fresh).then_some(&unread)) {
        let mut built = Cached::new(world.exp.spec.clone(), experiment, prior);
        // A search under way (an earlier operator started it) goes on without an experiment
        // named in warmStart that has gone since, rather than rebuilding at every reconcile.
        if !world.trials.is_empty() {
            built.prior_missing = false;
        }
        if let (Prior::Found(_), Some(warm)) = (prior, &world.exp.spec.warm_start) {
            publish(
                ctx,
                &world.object,
                EventType::Normal,
                "WarmStart",
                format!(
                    "the strategy starts from {} results of {}",
                    built.engine.prior_results(),
                    warm.experiments.join(", ")
                ),
            );
        }
        state.engine = Some(built);
    }
    let cached = state.engine.as_mut().expect("built above when not fresh");
    cached.sync(&world.trials)?;
    let started = Instant::now();
    let mut decision = cached.engine.decide(&cached.records, clock);
    ctx.metrics
        .proposal_latency
        .observe(started.elapsed().as_secs_f64());
    let mut status = status::experiment_status(
        &StatusInput {
            experiment: &cached.experiment,
            name: &world.key.1,
            generation: world.generation,
            previous,
            finish: decision.finish.as_ref(),
            started_at,
            now: world.now,
            gpu_seconds: cached.gpu.iter().sum::<f64>(),
            artifacts: &cached.artifacts,
        },
        &cached.records,
    );
    // A finished experiment stays finished, with its completion time, until its spec
    // changes (a raised budget): nothing a restart or a relist sees may rewrite it.
    if status::keep_ended(previous, &mut status, world.generation) {
        decision.create.clear();
    }
    // A search that has not started waits for the experiments it is to start from.
    if cached.prior_missing && world.trials.is_empty() {
        decision.create.clear();
    }
    Ok(Plan {
        decision,
        status,
        experiment: cached.experiment.clone(),
    })
}

/// Asks trials to stop (`spec.stop`); those already asked are left alone.
async fn stop_trials(ctx: &Ctx, world: &World, stops: &[crate::engine::Stop]) -> Result<(), Error> {
    let (ns, name) = (&world.key.0, &world.key.1);
    let trial_api: Api<NasTrial> = Api::namespaced(ctx.client.clone(), ns);
    for stop in stops {
        let tname = trial_name(name, stop.index);
        let already = world
            .trials
            .iter()
            .find(|t| t.spec.index == stop.index)
            .is_some_and(|t| t.spec.stop.is_some());
        if already {
            continue;
        }
        info!(namespace = %ns, experiment = %name, trial = %tname, reason = ?stop.reason, "stopping trial");
        request_stop(&trial_api, &tname, stop.reason).await?;
    }
    Ok(())
}

/// Asks a trial to stop (`spec.stop`); its controller and its next report carry it out. A
/// trial already gone needs no stop.
pub(super) async fn request_stop(
    api: &Api<NasTrial>,
    name: &str,
    reason: crate::engine::StopReason,
) -> Result<(), kube::Error> {
    let patch = serde_json::json!({"spec": {"stop": format!("{reason:?}")}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Records the new trials, concurrently (one API round trip is most of a slot's wait),
/// each with its first pod. Returns the trials that could not be created, and why.
async fn create_trials(ctx: &Arc<Ctx>, world: &World, plan: &Plan) -> Result<Vec<Blocked>, Error> {
    let trial_api: Api<NasTrial> = Api::namespaced(ctx.client.clone(), &world.key.0);
    let owner = world
        .object
        .controller_owner_ref(&ctx.stores.experiment_resource)
        .expect("a stored object has a name and UID");
    let state = ctx.states.of(&world.uid, &world.key);
    let jobs: Vec<NasTrial> = plan
        .decision
        .create
        .iter()
        .map(|new| new_trial(&world.key, new, &owner))
        .collect();
    let creates = jobs.into_iter().map(|trial| {
        let trial_api = trial_api.clone();
        let (ctx, exp, experiment, uid, state) = (
            ctx.clone(),
            world.exp.clone(),
            plan.experiment.clone(),
            world.uid.clone(),
            state.clone(),
        );
        async move {
            match trial_api.create(&PostParams::default(), &trial).await {
                Ok(created) => {
                    lock(&state).created.created(created.clone(), Instant::now());
                    info!(namespace = %trial.metadata.namespace.as_deref().unwrap_or_default(), experiment = %trial.spec.experiment, trial = %trial.name_any(), candidate = %trial.spec.candidate, epochs = trial.spec.epochs, "created trial");
                    // The first pod right away (the trial controller would create it one
                    // watch event later; it finds this one and records it).
                    let mut scratch = Default::default();
                    if let Err(e) =
                        start::start_pod(&ctx, &created, &exp, &experiment, 1, &mut scratch).await
                    {
                        // The trial controller retries.
                        warn!(trial = %trial.name_any(), error = %e, "could not create the trial's pod");
                    }
                    Ok(None)
                }
                // Names are deterministic: the trial may be ours (the store has not seen
                // it yet), or another object's (an experiment of the same name deleted
                // moments ago, whose trials garbage collection has not removed yet).
                Err(kube::Error::Api(s)) if s.is_already_exists() => {
                    let existing = trial_api.get_opt(&trial.name_any()).await?;
                    Ok(existing
                        .filter(|t| index::owner_uid(t) != Some(uid.as_str()))
                        .map(|t| taken_by_another(&t)))
                }
                // A ResourceQuota on NasTrials: wait for room, say why.
                Err(kube::Error::Api(s)) if s.is_forbidden() && start::is_quota(&s.message) => {
                    Ok(Some(Blocked::Quota(s.message)))
                }
                Err(e) => Err(e),
            }
        }
    });
    let results: Vec<Result<Option<Blocked>, kube::Error>> = futures::stream::iter(creates)
        .buffer_unordered(16)
        .collect()
        .await;
    let mut blocked = Vec::new();
    for r in results {
        if let Some(b) = r? {
            blocked.push(b);
        }
    }
    Ok(blocked)
}

/// The NasTrial the engine asked for, owned by the experiment.
fn new_trial(key: &ExpKey, new: &crate::engine::NewTrial, owner: &OwnerReference) -> NasTrial {
    let (ns, name) = key;
    let mut trial = NasTrial::new(
        &trial_name(name, new.index),
        NasTrialSpec {
            experiment: name.clone(),
            index: new.index,
            candidate: new.candidate.clone(),
            epochs: new.epochs,
            seed: new.seed,
            resume_from: new.resume_from,
            stage: status::stage_field(new.stage),
            stop: None,
        },
    );
    trial.metadata.namespace = Some(ns.clone());
    trial.metadata.labels = Some(
        [(pod::LABEL_EXPERIMENT.to_string(), name.clone())]
            .into_iter()
            .collect(),
    );
    trial.metadata.owner_references = Some(vec![owner.clone()]);
    trial
}

/// A trial of the wanted name that another object owns: the index is left to it.
fn taken_by_another(t: &NasTrial) -> Blocked {
    let owner = index::controller(t).unwrap_or_else(|| "no owner".into());
    Blocked::Conflict(
        t.spec.index,
        format!(
            "trial {} already exists and belongs to another object: {owner}; nasop leaves it alone and numbers its trials past it (it is likely a trial of an earlier experiment of this name that garbage collection has not removed yet)",
            t.name_any(),
        ),
    )
}

/// Events for an experiment that just ended, the metrics, and the status: phase,
/// conditions, the best trial and the front at once, counts at most once per
/// [`STATUS_INTERVAL`]. Returns how long until the held-back counts are due.
async fn write(
    ctx: &Ctx,
    world: &World,
    status: &NasExperimentStatus,
) -> Result<Option<Duration>, Error> {
    let (ns, name) = (&world.key.0, &world.key.1);
    let previous = &world.previous;
    update_metrics(ctx, &world.uid, &world.key, status);
    let ended_now = previous.completion_time.is_none() && status.completion_time.is_some();
    if ended_now {
        let message = status.message.clone().unwrap_or_default();
        info!(namespace = %ns, experiment = %name, phase = ?status.phase, %message, "experiment ended");
        let (type_, reason) = match status.phase {
            Some(api::ExperimentPhase::Succeeded) => (EventType::Normal, "ExperimentSucceeded"),
            _ => (EventType::Warning, "ExperimentFailed"),
        };
        publish(ctx, &world.object, type_, reason, message);
    }
    let important = previous.phase != status.phase
        || previous.conditions != status.conditions
        || previous.best_trial != status.best_trial
        || previous.pareto_front != status.pareto_front
        || previous.observed_generation != status.observed_generation;
    let state = ctx.states.of(&world.uid, &world.key);
    let since = lock(&state)
        .engine
        .as_ref()
        .and_then(|c| c.last_status_write)
        .map(|t| t.elapsed());
    if let Some(since) = since
        && !important
        && since < STATUS_INTERVAL
    {
        return Ok(Some(STATUS_INTERVAL - since));
    }
    let changed = previous != status;
    write_status(ctx, &world.object, previous, status.clone()).await?;
    if status.completion_time.is_some() {
        lock(&state).ended = Some(status.clone());
    }
    if changed && let Some(c) = lock(&state).engine.as_mut() {
        c.last_status_write = Some(Instant::now());
    }
    Ok(None)
}

/// When to look again: held-back counts, a blocked create (with backoff), a clock tick for
/// timeouts and deadlines, or the grace period of stopped trials.
fn next_action(
    ctx: &Ctx,
    world: &World,
    plan: &Plan,
    flush: Option<Duration>,
    blocked: bool,
) -> Action {
    let retry = format!("blocked/{}", world.uid);
    if let Some(flush) = flush {
        return Action::requeue(flush);
    }
    if blocked {
        return Action::requeue(ctx.backoff.next(&retry));
    }
    ctx.backoff.reset(&retry);
    let b = &plan.experiment.budget;
    let next = [b.trial_timeout, b.deadline]
        .into_iter()
        .flatten()
        .map(|s| s.min(60.0))
        .fold(f64::INFINITY, f64::min);
    if next.is_finite() && plan.decision.finish.is_none() {
        Action::requeue(Duration::from_secs_f64(next.clamp(1.0, 30.0)))
    } else if !plan.decision.stop.is_empty() {
        // Stopped trials are re-checked for the grace period.
        Action::requeue(ctx.settings.stop_grace)
    } else {
        Action::await_change()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::index::tests::trial;

    #[test]
    fn created_trials_count_until_the_store_shows_them() {
        let t0 = Instant::now();
        let stored = vec![
            Arc::new(trial("e-0", 0, "u")),
            Arc::new(trial("e-2", 2, "u")),
        ];
        let mut created = Written::default();
        for (i, at, owner) in [
            // The store has it already: dropped.
            (2, t0, "u"),
            // Not in the store yet: counted, in index order.
            (1, t0, "u"),
            (3, t0 + Duration::from_secs(10), "u"),
            // An earlier experiment's of the same name: not this one's.
            (4, t0, "old"),
        ] {
            created.created(trial(&format!("e-{i}"), i, owner), at);
        }
        let seen = |trials: Vec<Arc<NasTrial>>| -> Vec<u32> {
            trials.iter().map(|t| t.spec.index).collect()
        };
        let now = t0 + Duration::from_secs(1);
        assert_eq!(
            seen(with_created(stored.clone(), &mut created, "u", now)),
            vec![0, 1, 2, 3]
        );
        // Past the grace, a trial the store never showed (deleted at once) no longer counts.
        let later = t0 + super::super::written::GRACE + Duration::from_secs(1);
        assert_eq!(
            seen(with_created(stored, &mut created, "u", later)),
            vec![0, 2, 3]
        );
        assert_eq!(
            seen(with_created(Vec::new(), &mut created, "u", later)),
            vec![3]
        );
    }
}
