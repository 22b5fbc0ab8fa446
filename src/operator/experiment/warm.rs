//! Warm start (`spec.warmStart`): the finished trials of earlier experiments over the same
//! search space, read from the watch caches when an experiment's engine is built.

use super::state::Prior;
use crate::api::{self, NasExperiment};
use crate::engine::Experiment;
use crate::operator::context::Ctx;
use crate::operator::status;

/// Why an experiment named in `spec.warmStart` cannot seed this one; `field` is its entry.
#[derive(Debug, thiserror::Error)]
pub enum WarmStartError {
    #[error(
        "{field}: {name} searched another space ({path} differs); warm starts need the same searchSpace"
    )]
    OtherSpace {
        field: String,
        name: String,
        path: String,
    },
    #[error("{field}: {name} cannot be read: {error}")]
    Unreadable {
        field: String,
        name: String,
        error: api::ParseError,
    },
    #[error("spec.searchSpace: {0}")]
    Json(#[from] serde_json::Error),
}

/// The finished trials of the experiments `spec.warmStart` names, from the watch caches.
/// Err: one that the experiment cannot get past (another space, or unreadable).
pub(super) fn prior_trials(
    ctx: &Ctx,
    namespace: &str,
    exp: &NasExperiment,
    experiment: &Experiment,
) -> Result<Prior, WarmStartError> {
    let Some(warm) = &exp.spec.warm_start else {
        return Ok(Prior::Found(Vec::new()));
    };
    let ours = serde_json::to_value(&exp.spec.search_space)?;
    let mut prior = Vec::new();
    for (i, name) in warm.experiments.iter().enumerate() {
        let field = format!("spec.warmStart.experiments[{i}]");
        let other = match ctx.experiment(namespace, name) {
            None => {
                return Ok(Prior::Missing(format!(
                    "{field}: there is no NasExperiment {name:?} in namespace {namespace}; create it, or remove it from warmStart"
                )));
            }
            Some(Err(error)) => {
                return Err(WarmStartError::Unreadable {
                    field,
                    name: name.clone(),
                    error,
                });
            }
            Some(Ok(other)) => other,
        };
        let theirs = serde_json::to_value(&other.spec.search_space)?;
        if let Some(path) = api::first_difference(&theirs, &ours, "spec.searchSpace") {
            return Err(WarmStartError::OtherSpace {
                field,
                name: name.clone(),
                path,
            });
        }
        let uid = other.metadata.uid.clone().unwrap_or_default();
        prior.extend(
            ctx.stores
                .trials_of(namespace, &uid)
                .iter()
                .filter_map(|t| status::record(experiment, t).ok())
                .filter(|r| !r.phase.is_active()),
        );
    }
    Ok(Prior::Found(prior))
}
