//! Upkeep after a reconcile: finished trials' pods deleted beyond the keep count, the
//! metrics, and what a deleted experiment leaves behind.

use super::state::ExpKey;
use super::world::World;
use crate::api;
use crate::operator::context::{Ctx, lock};
use crate::operator::metrics::{ExperimentLabels, ExperimentPhaseLabels, PhaseLabels};
use crate::operator::{pod, status};
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use std::sync::Arc;

/// Deletes the pods of finished trials beyond the newest `--keep-finished-pods`: their
/// results are in the trials' status, and thousands of finished pods cost the API server
/// and every watch of pods. Each trial is looked at once when it ends (a restarted operator
/// looks at each once more); the deletes run in the background.
pub(super) fn clean_up_pods(ctx: &Arc<Ctx>, world: &World) {
    let (key, trials) = (&world.key, &world.trials);
    let state = ctx.states.of(&world.uid, key);
    let mut state = lock(&state);
    let mut ended: Vec<(f64, String, u32, String)> = trials
        .iter()
        .filter_map(|t| {
            let s = t.status.as_ref()?;
            let done = matches!(
                s.phase,
                Some(
                    api::TrialPhaseName::Succeeded
                        | api::TrialPhaseName::Failed
                        | api::TrialPhaseName::Stopped
                )
            );
            let name = t.metadata.name.as_deref()?;
            if !done || state.seen_finished.contains(name) {
                return None;
            }
            let at = s.completion_time.as_ref().map(|c| status::seconds(&c.0))?;
            Some((at, name.to_string(), s.attempts.max(1), t.uid()?))
        })
        .collect();
    if ended.is_empty() {
        return;
    }
    ended.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (at, name, attempts, uid) in ended {
        state.seen_finished.insert(name.clone());
        state.finished.push_back((at, name, attempts, uid));
    }
    let mut doomed = Vec::new();
    while state.finished.len() > ctx.settings.keep_finished_pods {
        let (_, name, attempts, trial_uid) = state
            .finished
            .pop_front()
            .expect("longer than the keep count");
        // The trial's own pods only, each by its UID: a pod of the name that another
        // object holds, or made since, is left alone.
        for name in (1..=attempts).flat_map(|a| pod::pod_names(&name, a, &trial_uid)) {
            let Some(pod) = ctx.stores.pods.get(&ObjectRef::new(&name).within(&key.0)) else {
                continue;
            };
            if let Some(uid) = pod.uid().filter(|_| pod::owned_by(&pod, &trial_uid)) {
                doomed.push((name, uid));
            }
        }
    }
    drop(state);
    if doomed.is_empty() {
        return;
    }
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(ctx.client.clone(), &key.0);
    tokio::spawn(async move {
        for (name, uid) in doomed {
            let only = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            if let Err(e) = api.delete(&name, &only).await {
                tracing::debug!(pod = %name, error = %e, "could not delete a finished trial's pod");
            }
        }
    });
}

pub(super) fn update_metrics(
    ctx: &Ctx,
    uid: &str,
    key: &ExpKey,
    status: &api::NasExperimentStatus,
) {
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
    let first = lock(&ctx.states.of(uid, key))
        .phase
        .replace(phase)
        .is_none();
    if first {
        m.experiment_seen(ns, name);
    }
    recount_experiments(ctx);
}

/// The experiments-by-phase gauges, counted over every experiment's state.
fn recount_experiments(ctx: &Ctx) {
    let phases = ctx.states.phases();
    for phase in ["Pending", "Running", "Training", "Succeeded", "Failed"] {
        let n = phases
            .iter()
            .filter(|p| p.as_deref() == Some(phase))
            .count();
        ctx.metrics
            .experiments
            .get_or_create(&ExperimentPhaseLabels {
                phase: phase.into(),
            })
            .set(n as i64);
    }
}

/// Forgets a deleted experiment object's caches, and its metric series unless an
/// experiment of the same name took its place.
pub fn forget(ctx: &Ctx, uid: &str, key: &ExpKey) {
    ctx.states.remove(uid);
    ctx.stores.index.forget(uid);
    recount_experiments(ctx);
    if ctx.stores.experiment(&key.0, &key.1).is_none() {
        ctx.metrics.forget(&key.0, &key.1);
    }
}
