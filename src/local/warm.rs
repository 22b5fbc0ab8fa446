//! `spec.warmStart` for `nasop run`: the finished trials of earlier run directories over the
//! same search space, read from their journals.

use super::journal::Journal;
use crate::api::{NasExperimentSpec, first_difference};
use crate::engine::TrialRecord;
use anyhow::{Context, Result, bail};
use nasop_core::SearchSpace;
use std::path::{Path, PathBuf};

/// Where an earlier run named in warmStart lives: a run directory under `runs_dir` by its
/// experiment's name, or a path.
fn run_dir(runs_dir: &Path, name: &str) -> PathBuf {
    if name.contains('/') {
        PathBuf::from(name)
    } else {
        runs_dir.join(name)
    }
}

/// The finished trials of each run that `spec.warmStart` names, with their points in
/// `space`. A run that is missing, or that searched another space, is an error naming the
/// entry and (for a space) the first field that differs.
pub fn prior_trials(
    runs_dir: &Path,
    spec: &NasExperimentSpec,
    space: &SearchSpace,
) -> Result<Vec<TrialRecord>> {
    let Some(warm) = &spec.warm_start else {
        return Ok(Vec::new());
    };
    let ours = serde_json::to_value(&spec.search_space)?;
    let mut prior = Vec::new();
    for (i, name) in warm.experiments.iter().enumerate() {
        let field = format!("spec.warmStart.experiments[{i}]");
        let dir = run_dir(runs_dir, name);
        let journal = dir.join("journal.jsonl");
        if !journal.is_file() {
            bail!(
                "{field}: no run of {name:?} at {} (no journal.jsonl); name an earlier run under --runs-dir {}, or give its path",
                dir.display(),
                runs_dir.display()
            );
        }
        let recorded = Journal::replay(&journal, None)
            .with_context(|| format!("{field}: reading {}", journal.display()))?;
        let theirs = recorded
            .identity
            .as_ref()
            .and_then(|i| i.get("searchSpace"))
            .cloned()
            .unwrap_or_default();
        if let Some(path) = first_difference(&theirs, &ours, "spec.searchSpace") {
            bail!(
                "{field}: {} searched another space ({path} differs); warm starts need the same searchSpace",
                dir.display()
            );
        }
        let replay = Journal::replay(&journal, Some(space))
            .with_context(|| format!("{field}: reading {}", journal.display()))?;
        prior.extend(replay.trials.into_iter().filter(|t| !t.phase.is_active()));
    }
    Ok(prior)
}
