//! The NasExperiment controller: engine decisions become NasTrials and stop requests, and
//! the trials become the experiment's status.

use super::metrics::{ExperimentLabels, ExperimentPhaseLabels, PhaseLabels};
use super::status::{self, StatusInput, trial_name};
use super::{Ctx, Error, ExpKey, MANAGER, lock, now, pod, trial};
use crate::api::{self, NasExperiment, NasExperimentSpec, NasTrial, NasTrialSpec};
use crate::engine::{Clock, Engine, Experiment, TrialRecord};
use futures::StreamExt;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Longest experiment name: trial and pod names (`<name>-<index>-<attempt>`) must stay
/// valid label values (63 characters).
pub const MAX_NAME: usize = 50;

/// Least time between two status writes that only change counts.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// The engine and the trial records of one experiment, kept between reconciles; records
/// are re-read only for trials whose resourceVersion changed.
pub struct Cached {
    uid: String,
    spec: NasExperimentSpec,
    pub experiment: Arc<Experiment>,
    engine: Engine,
    records: Vec<TrialRecord>,
    versions: Vec<String>,
    gpu: Vec<f64>,
    position: HashMap<u32, usize>,
    last_status_write: Option<Instant>,
}

impl Cached {
    fn new(uid: String, spec: NasExperimentSpec, experiment: Experiment) -> Cached {
        Cached {
            uid,
            spec,
            engine: Engine::new(experiment.clone()),
            experiment: Arc::new(experiment),
            records: Vec::new(),
            versions: Vec::new(),
            gpu: Vec::new(),
            position: HashMap::new(),
            last_status_write: None,
        }
    }

    /// Brings the records up to date with the experiment's trials.
    fn sync(&mut self, trials: &[Arc<NasTrial>]) -> Result<(), String> {
        if trials.len() < self.records.len() {
            // Trials were deleted by hand: start over.
            self.records.clear();
            self.versions.clear();
            self.gpu.clear();
            self.position.clear();
        }
        for t in trials {
            let rv = t.resource_version().unwrap_or_default();
            let gpu = t.status.as_ref().map_or(0.0, |s| s.gpu_seconds);
            match self.position.get(&t.spec.index) {
                Some(&i) if self.versions[i] == rv => {}
                Some(&i) => {
                    self.records[i] = status::record(&self.experiment, t)?;
                    self.versions[i] = rv;
                    self.gpu[i] = gpu;
                }
                None => {
                    self.position.insert(t.spec.index, self.records.len());
                    self.records.push(status::record(&self.experiment, t)?);
                    self.versions.push(rv);
                    self.gpu.push(gpu);
                }
            }
        }
        Ok(())
    }
}

pub fn error_policy(exp: Arc<NasExperiment>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    warn!(
        namespace = %exp.namespace().unwrap_or_default(),
        experiment = %exp.name_any(),
        error = %err,
        "reconcile failed; retrying"
    );
    Action::requeue(Duration::from_secs(2))
}

fn key_of(exp: &NasExperiment) -> ExpKey {
    (exp.namespace().unwrap_or_default(), exp.name_any())
}

/// The experiment's trials from the store, by index.
fn trials_of(ctx: &Ctx, key: &ExpKey) -> Vec<Arc<NasTrial>> {
    let mut trials = ctx.trials.state_filter(|t| {
        t.spec.experiment == key.1 && t.metadata.namespace.as_deref() == Some(key.0.as_str())
    });
    trials.sort_by_key(|t| t.spec.index);
    trials
}

fn publish(ctx: &Ctx, exp: &NasExperiment, type_: EventType, reason: &str, note: String) {
    super::publish_event(ctx, exp.object_ref(&()), type_, reason, note);
}

async fn write_status(
    ctx: &Ctx,
    exp: &NasExperiment,
    status: api::NasExperimentStatus,
) -> Result<(), Error> {
    if exp.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<NasExperiment> =
        Api::namespaced(ctx.client.clone(), &exp.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "nasop.dev/v1alpha1",
        "kind": "NasExperiment",
        "status": status,
    });
    api.patch_status(
        &exp.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

pub async fn reconcile(exp: Arc<NasExperiment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let key = key_of(&exp);
    let (ns, name) = (&key.0, &key.1);
    if exp.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let previous = exp.status.clone().unwrap_or_default();
    let t_now = now();
    let invalid = if name.len() > MAX_NAME {
        Some(format!(
            "metadata.name {name:?} has {} characters; use at most {MAX_NAME} so that trial and pod names stay valid",
            name.len()
        ))
    } else {
        pod::check_template(exp.spec.trial_template.as_ref()).err()
    };
    let validated = match invalid {
        Some(message) => Err(message),
        None => api::validate(name, &exp.spec).map_err(|e| e.to_string()),
    };
    let experiment = match validated {
        Ok(e) => e,
        Err(message) => {
            let status =
                status::invalid_status(&previous, exp.metadata.generation, &message, t_now);
            if previous.phase != status.phase {
                warn!(namespace = %ns, experiment = %name, %message, "invalid experiment");
                publish(&ctx, &exp, EventType::Warning, "InvalidSpec", message);
            }
            write_status(&ctx, &exp, status).await?;
            return Ok(Action::await_change());
        }
    };

    let trials = trials_of(&ctx, &key);
    let uid = exp.uid().unwrap_or_default();
    let started_at = previous
        .start_time
        .as_ref()
        .map_or(t_now, |t| status::seconds(&t.0));
    let clock = Clock {
        started_at,
        now: t_now,
    };

    // Decide with the cached engine (rebuilt when the spec or the object changed).
    let (decision, status, experiment) = {
        let mut engines = lock(&ctx.engines);
        let cached = match engines.get_mut(&key) {
            Some(c) if c.uid == uid && c.spec == exp.spec => c,
            _ => {
                engines.insert(
                    key.clone(),
                    Cached::new(uid.clone(), exp.spec.clone(), experiment),
                );
                engines.get_mut(&key).expect("just inserted")
            }
        };
        cached.sync(&trials).map_err(Error::Other)?;
        let started = Instant::now();
        let decision = cached.engine.decide(&cached.records, clock);
        ctx.metrics
            .proposal_latency
            .observe(started.elapsed().as_secs_f64());
        let status = status::experiment_status(
            &StatusInput {
                experiment: &cached.experiment,
                name,
                generation: exp.metadata.generation,
                previous: &previous,
                finish: decision.finish.as_ref(),
                started_at,
                now: t_now,
                gpu_seconds: cached.gpu.iter().sum::<f64>(),
            },
            &cached.records,
        );
        (decision, status, cached.experiment.clone())
    };

    // Stops first, then new trials.
    let trial_api: Api<NasTrial> = Api::namespaced(ctx.client.clone(), ns);
    for stop in &decision.stop {
        let tname = trial_name(name, stop.index);
        let already = trials
            .iter()
            .find(|t| t.spec.index == stop.index)
            .is_some_and(|t| t.spec.stop.is_some());
        if already {
            continue;
        }
        let reason = format!("{:?}", stop.reason);
        info!(namespace = %ns, experiment = %name, trial = %tname, %reason, "stopping trial");
        let patch = serde_json::json!({"spec": {"stop": reason}});
        match trial_api
            .patch(&tname, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    // New trials, created concurrently (one API round trip is most of a slot's wait).
    let owner = exp
        .controller_owner_ref(&())
        .expect("a stored object has a name and UID");
    let jobs: Vec<NasTrial> = decision
        .create
        .iter()
        .map(|new| {
            let mut trial = NasTrial::new(
                &trial_name(name, new.index),
                NasTrialSpec {
                    experiment: name.clone(),
                    index: new.index,
                    candidate: new.candidate.clone(),
                    epochs: new.epochs,
                    seed: new.seed,
                    resume_from: new.resume_from,
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
        })
        .collect();
    // Each trial's first pod is created right after it (the trial controller would do the
    // same one watch event later; it finds the pod and records it).
    let creates = jobs.into_iter().map(|trial| {
        let trial_api = trial_api.clone();
        let (ctx, exp, experiment) = (ctx.clone(), exp.clone(), experiment.clone());
        async move {
            match trial_api.create(&PostParams::default(), &trial).await {
                Ok(created) => {
                    info!(namespace = %trial.metadata.namespace.as_deref().unwrap_or_default(), experiment = %trial.spec.experiment, trial = %trial.name_any(), candidate = %trial.spec.candidate, epochs = trial.spec.epochs, "created trial");
                    let mut scratch = Default::default();
                    if let Err(e) =
                        trial::start_pod(&ctx, &created, &exp, &experiment, 1, &mut scratch).await
                    {
                        // The trial controller retries.
                        warn!(trial = %trial.name_any(), error = %e, "could not create the trial's pod");
                    }
                    Ok(())
                }
                // Recorded already (our store had not seen it yet): names are deterministic.
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
                Err(e) => Err(e),
            }
        }
    });
    let results: Vec<Result<(), kube::Error>> = futures::stream::iter(creates)
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;

    update_metrics(&ctx, &key, &status);
    let ended_now = previous.completion_time.is_none() && status.completion_time.is_some();
    if ended_now {
        let message = status.message.clone().unwrap_or_default();
        info!(namespace = %ns, experiment = %name, phase = ?status.phase, %message, "experiment ended");
        let (type_, reason) = match status.phase {
            Some(api::ExperimentPhase::Succeeded) => (EventType::Normal, "ExperimentSucceeded"),
            _ => (EventType::Warning, "ExperimentFailed"),
        };
        publish(&ctx, &exp, type_, reason, message);
    }
    // Counts change with every trial; they are written at most once per STATUS_INTERVAL.
    // Phase, conditions, the best trial and the front are written at once.
    let important = previous.phase != status.phase
        || previous.conditions != status.conditions
        || previous.best_trial != status.best_trial
        || previous.pareto_front != status.pareto_front
        || previous.observed_generation != status.observed_generation;
    let since = lock(&ctx.engines)
        .get(&key)
        .and_then(|c| c.last_status_write)
        .map(|t| t.elapsed());
    let mut flush = None;
    match since {
        Some(since) if !important && since < STATUS_INTERVAL => {
            flush = Some(STATUS_INTERVAL - since);
        }
        _ => {
            let changed = exp.status.as_ref() != Some(&status);
            write_status(&ctx, &exp, status).await?;
            if changed && let Some(c) = lock(&ctx.engines).get_mut(&key) {
                c.last_status_write = Some(Instant::now());
            }
        }
    }

    // Timeouts and deadlines need a clock tick; everything else arrives as a change.
    let b = &experiment.budget;
    let next = [b.trial_timeout, b.deadline]
        .into_iter()
        .flatten()
        .map(|s| s.min(60.0))
        .fold(f64::INFINITY, f64::min);
    if let Some(flush) = flush {
        return Ok(Action::requeue(flush));
    }
    Ok(if next.is_finite() && decision.finish.is_none() {
        Action::requeue(Duration::from_secs_f64(next.clamp(1.0, 30.0)))
    } else if !decision.stop.is_empty() {
        // Stopped trials are re-checked for the grace period.
        Action::requeue(ctx.stop_grace)
    } else {
        Action::await_change()
    })
}

fn update_metrics(ctx: &Ctx, key: &ExpKey, status: &api::NasExperimentStatus) {
    let m = &ctx.metrics;
    let (ns, name) = key;
    let c = &status.trials;
    for (phase, n) in [
        ("Pending", c.pending),
        ("Running", c.running),
        ("Succeeded", c.succeeded),
        ("Failed", c.failed),
        ("Stopped", c.stopped),
    ] {
        m.trials
            .get_or_create(&PhaseLabels {
                namespace: ns.clone(),
                experiment: name.clone(),
                phase: phase.into(),
            })
            .set(n as i64);
    }
    if let Some(v) = status.best_value {
        m.best_objective
            .get_or_create(&ExperimentLabels {
                namespace: ns.clone(),
                experiment: name.clone(),
            })
            .set(v);
    }
    let phase = status
        .phase
        .map_or("Pending".to_string(), |p| format!("{p:?}"));
    let mut phases = lock(&ctx.phases);
    if !phases.contains_key(key) {
        m.experiment_seen(ns, name);
    }
    phases.insert(key.clone(), phase);
    recount_experiments(ctx, &phases);
}

fn recount_experiments(ctx: &Ctx, phases: &HashMap<ExpKey, String>) {
    for phase in ["Pending", "Running", "Succeeded", "Failed"] {
        let n = phases.values().filter(|p| *p == phase).count();
        ctx.metrics
            .experiments
            .get_or_create(&ExperimentPhaseLabels {
                phase: phase.into(),
            })
            .set(n as i64);
    }
}

/// Forgets a deleted experiment's caches and metric series.
pub fn forget(ctx: &Ctx, key: &ExpKey) {
    lock(&ctx.engines).remove(key);
    lock(&ctx.free_slots).remove(key);
    let mut phases = lock(&ctx.phases);
    phases.remove(key);
    recount_experiments(ctx, &phases);
    ctx.metrics.forget(&key.0, &key.1);
}
