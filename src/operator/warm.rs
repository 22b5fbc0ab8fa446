//! Warm start (`spec.warmStart`): the finished trials of earlier experiments over the same
//! search space, read from the watch caches when an experiment's engine is built.

use super::Ctx;
use super::experiment::trials_of;
use super::status;
use crate::api::{self, NasExperiment};
use crate::engine::{Experiment, TrialRecord};

/// What `spec.warmStart` names, read when the engine is built.
pub(super) enum Prior {
    /// The finished trials of the named experiments (none without warmStart).
    Found(Vec<TrialRecord>),
    /// A named experiment is not there (the message says which).
    Missing(String),
}

/// The finished trials of the experiments `spec.warmStart` names, from the watch caches.
/// Err: one searched another space (the message names the field that differs), which
/// the experiment cannot get past.
pub(super) fn prior_trials(
    ctx: &Ctx,
    namespace: &str,
    exp: &NasExperiment,
    experiment: &Experiment,
) -> Result<Prior, String> {
    let Some(warm) = &exp.spec.warm_start else {
        return Ok(Prior::Found(Vec::new()));
    };
    let ours = serde_json::to_value(&exp.spec.search_space).map_err(|e| e.to_string())?;
    let mut prior = Vec::new();
    for (i, name) in warm.experiments.iter().enumerate() {
        let field = format!("spec.warmStart.experiments[{i}]");
        let other = match ctx.experiment(namespace, name) {
            None => {
                return Ok(Prior::Missing(format!(
                    "{field}: there is no NasExperiment {name:?} in namespace {namespace}; create it, or remove it from warmStart"
                )));
            }
            Some(Err(e)) => return Err(format!("{field}: {name} cannot be read: {e}")),
            Some(Ok(other)) => other,
        };
        let theirs = serde_json::to_value(&other.spec.search_space).map_err(|e| e.to_string())?;
        if let Some(path) = api::first_difference(&theirs, &ours, "spec.searchSpace") {
            return Err(format!(
                "{field}: {name} searched another space ({path} differs); warm starts need the same searchSpace"
            ));
        }
        let uid = other.metadata.uid.clone().unwrap_or_default();
        prior.extend(
            trials_of(ctx, namespace, &uid)
                .iter()
                .filter_map(|t| status::record(experiment, t).ok())
                .filter(|r| !r.phase.is_active()),
        );
    }
    Ok(Prior::Found(prior))
}
