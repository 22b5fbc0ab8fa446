//! What the pages show, whichever source it came from: a local run directory or a cluster.
//! Both sources turn their trials into the engine's `TrialRecord`s, so that the best trial,
//! the Pareto front and final training are computed by the same functions as everywhere else.

use crate::engine::final_training::{self, Spread};
use crate::engine::{Experiment, Stage, TrialPhase, TrialRecord, best_trial, pareto_front};
use std::collections::BTreeMap;

/// An experiment's address: its namespace (`local` for a run directory) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

/// One row of the experiments list, in `kubectl get nasexp`'s names.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub key: Key,
    pub phase: String,
    pub strategy: String,
    pub done: u32,
    pub running: u32,
    pub total: u32,
    pub best_value: Option<f64>,
    /// Unix seconds.
    pub created: Option<f64>,
    /// Why it could not be read (a broken manifest, a spec this version rejects).
    pub problem: Option<String>,
}

/// One trial and what its source says beyond the engine's record.
#[derive(Debug, Clone)]
pub struct Trial {
    pub record: TrialRecord,
    pub name: String,
    pub reason: String,
    pub message: String,
    pub attempts: u32,
    /// The current attempt's pod (cluster) or None (local).
    pub pod: Option<String>,
    pub artifact: Option<String>,
    pub resume_from: Option<u32>,
    pub info: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Unix seconds.
    pub at: Option<f64>,
    pub type_: String,
    pub reason: String,
    pub message: String,
    pub count: i32,
}

/// One experiment with its trials.
#[derive(Debug, Clone)]
pub struct Detail {
    pub summary: Summary,
    pub experiment: Experiment,
    pub trials: Vec<Trial>,
    pub conditions: Vec<Condition>,
    pub message: Option<String>,
    /// Where the experiment started (unix seconds): the time axis' zero.
    pub started: Option<f64>,
    /// The trial pods' container whose log is the trial's (a pod template's first).
    pub container: Option<String>,
    /// A local run's directory, where a trial's model is `trials/<index>/artifact`.
    pub run_dir: Option<std::path::PathBuf>,
    /// `trial.index` → position in `trials`.
    positions: BTreeMap<u32, usize>,
    /// The trials' records, and what the engine makes of them: computed once per change
    /// of the source, not per page.
    records: Vec<TrialRecord>,
    best: Option<u32>,
    pareto: Vec<u32>,
    finalists: Vec<Finalist>,
}

/// A candidate trained again after the search, over its seeds.
#[derive(Debug, Clone)]
pub struct Finalist {
    pub rank: u32,
    pub candidate: String,
    pub search_trial: u32,
    pub trials: usize,
    pub succeeded: usize,
    pub metrics: BTreeMap<String, Spread>,
    pub winner: bool,
}

impl Detail {
    pub fn new(
        summary: Summary,
        experiment: Experiment,
        mut trials: Vec<Trial>,
        started: Option<f64>,
    ) -> Detail {
        trials.sort_by_key(|t| t.record.index);
        let positions = trials
            .iter()
            .enumerate()
            .map(|(i, t)| (t.record.index, i))
            .collect();
        let records: Vec<TrialRecord> = trials.iter().map(|t| t.record.clone()).collect();
        let best = best_trial(&experiment, &records).map(|t| t.index);
        let pareto = if experiment.objectives.len() < 2 {
            Vec::new()
        } else {
            pareto_front(&experiment, &records)
                .into_iter()
                .map(|t| t.index)
                .collect()
        };
        let finalists = finalists(&experiment, &records);
        Detail {
            summary,
            experiment,
            trials,
            conditions: Vec::new(),
            message: None,
            started,
            container: None,
            run_dir: None,
            positions,
            records,
            best,
            pareto,
            finalists,
        }
    }

    pub fn trial(&self, index: u32) -> Option<&Trial> {
        self.positions.get(&index).map(|&i| &self.trials[i])
    }

    /// Where a trial's model is: its status' artifact on a cluster, the run directory's
    /// `trials/<index>/artifact` once a succeeded local trial has written it.
    pub fn artifact(&self, t: &Trial) -> Option<String> {
        t.artifact.clone().or_else(|| {
            let dir = self.run_dir.as_ref()?;
            let path = dir
                .join("trials")
                .join(t.record.index.to_string())
                .join("artifact");
            (t.record.phase == TrialPhase::Succeeded && path.is_dir())
                .then(|| path.display().to_string())
        })
    }

    /// Every trial's record, by index.
    pub fn records(&self) -> &[TrialRecord] {
        &self.records
    }

    /// The first objective's metric name.
    pub fn objective(&self) -> &str {
        &self.experiment.objectives[0].metric
    }

    /// The engine's best trial (`status.bestTrial` on a cluster).
    pub fn best(&self) -> Option<u32> {
        self.best
    }

    /// The non-dominated trials when there are several objectives.
    pub fn pareto(&self) -> &[u32] {
        &self.pareto
    }

    pub fn finalists(&self) -> &[Finalist] {
        &self.finalists
    }

    /// The steps at which a trial of this experiment is promoted (the fidelity rungs), up to
    /// `epochs`.
    pub fn promotion_steps(&self, epochs: u32) -> Vec<u32> {
        self.experiment
            .strategy
            .fidelity
            .as_ref()
            .map(|f| f.rungs.iter().copied().filter(|r| *r < epochs).collect())
            .unwrap_or_default()
    }
}

fn finalists(exp: &Experiment, records: &[TrialRecord]) -> Vec<Finalist> {
    let Some(plan) = &exp.final_training else {
        return Vec::new();
    };
    if !final_training::in_final_training(records) {
        return Vec::new();
    }
    let finalists = final_training::finalists(exp, plan, records);
    let winner = final_training::winner(exp, &finalists).map(|w| w.rank);
    finalists
        .iter()
        .map(|f| Finalist {
            rank: f.rank,
            candidate: f.search_trial.candidate.clone(),
            search_trial: f.search_trial.index,
            trials: f.trials.len(),
            succeeded: f.succeeded(),
            metrics: f.metrics.clone(),
            winner: winner == Some(f.rank),
        })
        .collect()
}

pub fn value_of(exp: &Experiment, t: &TrialRecord) -> Option<f64> {
    let metric = &exp.objectives[0].metric;
    t.metrics
        .get(metric)
        .or_else(|| t.reports.last().and_then(|r| r.metrics.get(metric)))
        .copied()
}

/// Counts of a set of trials, the way `kubectl get nasexp` shows progress.
pub fn counts(exp: &Experiment, trials: &[TrialRecord]) -> (u32, u32, u32) {
    let done = trials.iter().filter(|t| !t.phase.is_active()).count() as u32;
    let running = trials
        .iter()
        .filter(|t| t.phase == TrialPhase::Running)
        .count() as u32;
    (done, running, exp.total_trials())
}

pub fn phase_name(p: TrialPhase) -> &'static str {
    match p {
        TrialPhase::Pending => "Pending",
        TrialPhase::Running => "Running",
        TrialPhase::Succeeded => "Succeeded",
        TrialPhase::Failed => "Failed",
        TrialPhase::Stopped => "Stopped",
    }
}

pub fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Search => "Search",
        Stage::Final => "Final",
    }
}

pub fn strategy_name(exp: &Experiment) -> String {
    serde_json::to_value(exp.strategy.algorithm)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{:?}", exp.strategy.algorithm).to_lowercase())
}
