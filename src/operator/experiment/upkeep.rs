//! Upkeep after a reconcile: finished trials' pods deleted beyond the keep count, the
//! metrics, and what a deleted experiment leaves behind.

use super::state::ExpKey;
use crate::api::{self, NasTrial};
use crate::operator::context::{Ctx, lock};
use crate::operator::metrics::{ExperimentLabels, ExperimentPhaseLabels, PhaseLabels};
use crate::operator::{pod, status};
use kube::Api;
use kube::runtime::reflector::ObjectRef;
use std::sync::Arc;

/// Deletes the pods of finished trials beyond the newest `--keep-finished-pods`: their
/// results are in the trials' status, and thousands of finished pods cost the API server
/// and every watch of pods. Each trial is looked at once when it ends (a restarted operator
/// looks at each once more); the deletes run in the background.
pub(super) fn clean_up_pods(ctx: &Arc<Ctx>, key: &ExpKey, trials: &[Arc<NasTrial>]) {
    let state = ctx.states.of(key);
    let mut state = lock(&state);
    let mut ended: Vec<(f64, String, u32)> = trials
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
            Some((at, name.to_string(), s.attempts.max(1)))
        })
        .collect();
    if ended.is_empty() {
        return;
    }
    ended.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (at, name, attempts) in ended {
        state.seen_finished.insert(name.clone());
        state.finished.push_back((at, name, attempts));
    }
    let mut doomed = Vec::new();
    while state.finished.len() > ctx.settings.keep_finished_pods {
        let (_, name, attempts) = state
            .finished
            .pop_front()
            .expect("longer than the keep count");
        doomed.extend((1..=attempts).map(|a| pod::pod_name(&name, a)).filter(|p| {
            ctx.stores
                .pods
                .get(&ObjectRef::new(p).within(&key.0))
                .is_some()
        }));
    }
    drop(state);
    if doomed.is_empty() {
        return;
    }
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(ctx.client.clone(), &key.0);
    tokio::spawn(async move {
        for name in doomed {
            if let Err(e) = api.delete(&name, &Default::default()).await {
                tracing::debug!(pod = %name, error = %e, "could not delete a finished trial's pod");
            }
        }
    });
}

pub(super) fn update_metrics(ctx: &Ctx, key: &ExpKey, status: &api::NasExperimentStatus) {
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
    let first = lock(&ctx.states.of(key)).phase.replace(phase).is_none();
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

/// Forgets a deleted experiment's caches and metric series.
pub fn forget(ctx: &Ctx, key: &ExpKey) {
    let removed = ctx.states.remove(key);
    if let Some(uid) = removed.and_then(|s| lock(&s).engine.as_ref().map(|c| c.uid.clone())) {
        ctx.stores.index.forget(&uid);
    }
    recount_experiments(ctx);
    ctx.metrics.forget(&key.0, &key.1);
}
