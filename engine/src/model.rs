//! The engine's inputs and outputs: plain data, shared by both runners.

use crate::strategy::StrategyConfig;
use nasop_core::contract::{self, ArchitectureInput, TrialInput};
use nasop_core::{Point, SearchSpace};
use std::collections::BTreeMap;

/// Seconds since the Unix epoch (fractional); the runners convert their clocks to this.
pub type Seconds = f64;

/// One objective: a metric, its direction, and an optional target that ends the experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Objective {
    pub metric: String,
    pub maximize: bool,
    pub target: Option<f64>,
}

impl Objective {
    /// The value oriented so that larger is better.
    pub fn oriented(&self, value: f64) -> f64 {
        if self.maximize { value } else { -value }
    }

    pub fn reached(&self, value: f64) -> bool {
        match self.target {
            Some(t) if self.maximize => value >= t,
            Some(t) => value <= t,
            None => false,
        }
    }
}

/// A hard limit on a metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Constraint {
    pub metric: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Constraint {
    /// How far `value` is outside the limits (0 inside); a missing metric is infinitely far.
    pub fn violation(&self, value: Option<f64>) -> f64 {
        let Some(v) = value else { return f64::INFINITY };
        let below = self.min.map_or(0.0, |m| (m - v).max(0.0));
        let above = self.max.map_or(0.0, |m| (v - m).max(0.0));
        below + above
    }
}

/// The median stopping rule (Golovin et al., Google Vizier, 2017).
#[derive(Debug, Clone, PartialEq)]
pub struct MedianStop {
    /// Finished trials needed before any trial is stopped.
    pub min_trials: usize,
    /// The first step at which a trial may be stopped.
    pub start_step: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub max_trials: u32,
    pub parallelism: u32,
    /// The experiment fails once more trials than this have failed.
    pub max_failed_trials: u32,
    /// Epochs of a trial outside a multi-fidelity schedule.
    pub trial_epochs: u32,
    pub trial_timeout: Option<Seconds>,
    pub deadline: Option<Seconds>,
}

/// After the search: the best distinct candidates trained again at full budget with
/// several seeds (`spec.finalTraining`); the winner is the best mean of the first objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinalTraining {
    /// Candidates to train (distinct networks, best first by the search's objective).
    pub top: u32,
    /// Epochs of each final-training trial.
    pub epochs: u32,
    /// Trials (training seeds) per candidate.
    pub seeds: u32,
}

/// A validated experiment: what `api::validate` makes of a `NasExperimentSpec`.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub name: String,
    pub space: SearchSpace,
    pub objectives: Vec<Objective>,
    pub constraints: Vec<Constraint>,
    pub strategy: StrategyConfig,
    pub early_stopping: Option<MedianStop>,
    pub budget: Budget,
    pub final_training: Option<FinalTraining>,
}

impl Experiment {
    /// The budget of an ordinary (first) trial of a candidate.
    pub fn first_budget(&self) -> u32 {
        match &self.strategy.fidelity {
            Some(f) => f.rungs[0],
            None => self.budget.trial_epochs,
        }
    }

    /// Trials the experiment runs in all: the search's, then final training's.
    pub fn total_trials(&self) -> u32 {
        self.budget.max_trials
            + self
                .final_training
                .map_or(0, |f| f.top.saturating_mul(f.seeds))
    }

    /// What trial `index` receives under the trial contract (both runners send this).
    #[allow(clippy::too_many_arguments)]
    pub fn trial_input(
        &self,
        trial: String,
        index: u32,
        seed: u64,
        point: &Point,
        epochs: u32,
        resume_from: Option<u32>,
        stage: Stage,
    ) -> TrialInput {
        TrialInput {
            experiment: self.name.clone(),
            trial,
            index,
            seed,
            candidate: self.space.format(point),
            architecture: self.space.architecture(point).map(|a| ArchitectureInput {
                string: a.to_string(),
                structure: a,
            }),
            hyperparameters: self.space.hyperparameter_values(point),
            budget: contract::Budget { epochs },
            metrics: self.objectives.iter().map(|o| o.metric.clone()).collect(),
            resume_from,
            stage: stage.contract(),
        }
    }
}

/// What a trial is for: the search, or the final training of a chosen candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Stage {
    #[default]
    Search,
    Final,
}

impl Stage {
    /// As `nasop results` and the trial contract spell it.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Search => "search",
            Stage::Final => "final",
        }
    }

    pub fn contract(self) -> contract::Stage {
        match self {
            Stage::Search => contract::Stage::Search,
            Stage::Final => contract::Stage::Final,
        }
    }

    pub fn from_contract(stage: contract::Stage) -> Stage {
        match stage {
            contract::Stage::Search => Stage::Search,
            contract::Stage::Final => Stage::Final,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrialPhase {
    /// Recorded, not started (no pod or process yet, or waiting for one).
    Pending,
    Running,
    Succeeded,
    /// The trainer failed: counts against `maxFailedTrials`.
    Failed,
    /// Stopped by the engine (early stopping, timeout, deadline, end of the experiment).
    Stopped,
}

impl TrialPhase {
    pub fn is_active(self) -> bool {
        matches!(self, TrialPhase::Pending | TrialPhase::Running)
    }
}

/// One progress report of a trial.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub step: u32,
    pub metrics: BTreeMap<String, f64>,
}

/// A trial as recorded by a runner (a NasTrial object or a journal entry).
#[derive(Debug, Clone, PartialEq)]
pub struct TrialRecord {
    pub index: u32,
    /// The candidate string (architecture, then `;name=value` hyperparameters).
    pub candidate: String,
    pub point: Point,
    pub key: String,
    pub epochs: u32,
    pub stage: Stage,
    pub phase: TrialPhase,
    pub started_at: Option<Seconds>,
    pub finished_at: Option<Seconds>,
    pub reports: Vec<Report>,
    /// Final metrics (empty until the trial ends; the last report's if it was stopped).
    pub metrics: BTreeMap<String, f64>,
}

/// What the engine was asked about.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub started_at: Seconds,
    pub now: Seconds,
}

/// A trial to record and start.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTrial {
    pub index: u32,
    pub candidate: String,
    pub key: String,
    pub point: Point,
    pub epochs: u32,
    pub seed: u64,
    /// The trial whose checkpoint this one continues (a promotion to a larger budget).
    pub resume_from: Option<u32>,
    pub stage: Stage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The median stopping rule.
    EarlyStopped,
    /// The trial outlived `trialTimeoutSeconds`.
    Timeout,
    /// The experiment's deadline passed.
    Deadline,
    /// The experiment finished (target reached, too many failures).
    ExperimentFinished,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stop {
    pub index: u32,
    pub reason: StopReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// maxTrials trials have ended.
    BudgetSpent,
    /// A trial met every objective's target.
    TargetReached,
    /// More than maxFailedTrials trials failed.
    TooManyFailures,
    DeadlineExceeded,
    /// The strategy has nothing left to propose.
    SearchSpaceExhausted,
    /// Final training ended with a winner.
    FinalTrainingDone,
    /// Every final-training trial failed.
    FinalTrainingFailed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub succeeded: bool,
    pub reason: FinishReason,
    pub message: String,
}

/// The engine's answer. Apply `stop` before `create`; when `finish` is set, `create` is
/// empty and the experiment is over once the stopped trials have ended.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    pub create: Vec<NewTrial>,
    pub stop: Vec<Stop>,
    pub finish: Option<Finish>,
}
