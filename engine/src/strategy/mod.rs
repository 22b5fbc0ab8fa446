//! Search strategies behind one trait.
//!
//! A strategy's state is a function of its seed and the results it has observed, in order:
//! `observe` is the only way state changes, and every random draw in `propose` comes from a
//! stream numbered by how many trials the experiment has created. A strategy rebuilt by
//! replaying the recorded history therefore proposes exactly what the original would, which
//! is how the operator survives restarts without a database.

mod bayesian;
mod catalogue;
mod evolution;
mod fidelity;
mod grid;
mod local;
mod nsga2;
pub mod pareto;
mod random;
mod reinforce;

pub use fidelity::{FidelityKind, FidelitySchedule};

use nasop_core::{Point, Rng, SearchSpace};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fmt;

/// The search algorithm, `spec.strategy.algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Algorithm {
    /// Uniform random sampling: the baseline every other strategy must beat.
    Random,
    /// Every grid point in order (reals and large integer ranges cut into 5 points).
    Grid,
    /// Regularized evolution (Real et al. 2019): tournament selection, one-decision
    /// mutation, the oldest member dies.
    Evolution,
    /// Local search: first-improvement hill climbing over one-decision neighbours, restarting
    /// at a random point from each local optimum.
    Local,
    /// REINFORCE: a policy over the decisions trained by policy gradient with a moving
    /// baseline.
    Reinforce,
    /// Predictor-guided search: a Gaussian process on the path encoding, expected improvement
    /// maximised over mutations of the best candidates.
    Bayesian,
    /// NSGA-II: non-dominated sorting and crowding distance over several objectives, with
    /// constraints as hard limits.
    Nsga2,
}

impl Algorithm {
    pub const ALL: [Algorithm; 7] = [
        Algorithm::Random,
        Algorithm::Grid,
        Algorithm::Evolution,
        Algorithm::Local,
        Algorithm::Reinforce,
        Algorithm::Bayesian,
        Algorithm::Nsga2,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Random => "random",
            Algorithm::Grid => "grid",
            Algorithm::Evolution => "evolution",
            Algorithm::Local => "local",
            Algorithm::Reinforce => "reinforce",
            Algorithm::Bayesian => "bayesian",
            Algorithm::Nsga2 => "nsga2",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Tuning of the algorithms; each reads the fields that concern it.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// evolution, nsga2: population size.
    pub population: usize,
    /// evolution: tournament size.
    pub sample_size: usize,
    /// bayesian: random candidates evaluated before the model is used.
    pub initial_samples: usize,
    /// bayesian: candidates scored per proposal.
    pub candidates: usize,
    /// reinforce: policy learning rate.
    pub learning_rate: f64,
    /// reinforce: decay of the moving reward baseline.
    pub baseline_decay: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            population: 10,
            sample_size: 3,
            initial_samples: 5,
            candidates: 200,
            learning_rate: 0.2,
            baseline_decay: 0.9,
        }
    }
}

/// A finished trial as a strategy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub point: Point,
    pub key: String,
    /// Epochs (or another fidelity unit) the trial trained for.
    pub budget: u32,
    /// Objective values, each oriented so that larger is better; `None` when the trial
    /// failed or reported no value.
    pub objectives: Option<Vec<f64>>,
    /// How far the trial is outside the experiment's constraints (0 when inside).
    pub violation: f64,
}

impl Observation {
    /// The value a single-objective strategy ranks by: the first objective of a trial that
    /// succeeded inside the constraints.
    pub fn value(&self) -> Option<f64> {
        match &self.objectives {
            Some(o) if self.violation == 0.0 => o.first().copied(),
            _ => None,
        }
    }
}

/// A candidate to run at a budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub point: Point,
    pub key: String,
    pub budget: u32,
}

/// Candidates already taken (run, running or proposed in this round), by key and budget.
/// A round's set may sit on a shared `base` (the engine keeps the recorded trials' set
/// between rounds), so that a round costs what it adds, not the whole history.
#[derive(Debug, Default, Clone)]
pub struct Taken {
    budgets: HashMap<String, Vec<u32>>,
    base: Option<std::sync::Arc<Taken>>,
}

impl Taken {
    /// An empty round on top of `base`.
    pub fn over(base: std::sync::Arc<Taken>) -> Taken {
        Taken {
            budgets: HashMap::new(),
            base: Some(base),
        }
    }

    pub fn insert(&mut self, key: &str, budget: u32) -> bool {
        if self.base.as_ref().is_some_and(|b| b.contains(key, budget)) {
            return false;
        }
        let budgets = self.budgets.entry(key.to_string()).or_default();
        if budgets.contains(&budget) {
            return false;
        }
        budgets.push(budget);
        true
    }

    pub fn contains(&self, key: &str, budget: u32) -> bool {
        self.budgets.get(key).is_some_and(|b| b.contains(&budget))
            || self.base.as_ref().is_some_and(|b| b.contains(key, budget))
    }

    pub fn len(&self) -> usize {
        self.budgets.values().map(Vec::len).sum::<usize>()
            + self.base.as_ref().map_or(0, |b| b.len())
    }

    pub fn is_empty(&self) -> bool {
        self.budgets.is_empty() && self.base.as_ref().is_none_or(|b| b.is_empty())
    }
}

/// What a strategy may consult while proposing.
pub struct Context<'a> {
    pub space: &'a SearchSpace,
    /// The random stream of this round (seeded by the experiment seed and the number of
    /// trials created so far).
    pub rng: Rng,
    /// Taken candidates, including those proposed earlier in this round.
    pub taken: &'a mut Taken,
    /// The budget this strategy proposes at.
    pub budget: u32,
    /// Trials not finished yet, per budget (for synchronous schedules).
    pub pending: &'a HashMap<u32, usize>,
}

/// Attempts to find an untaken candidate before a strategy falls back or gives up.
const TRIES: usize = 200;

impl Context<'_> {
    /// Claims `point` at this round's budget if nobody has run or proposed it.
    pub fn claim(&mut self, point: Point) -> Option<Proposal> {
        let key = self.space.key(&point);
        if self.taken.insert(&key, self.budget) {
            Some(Proposal {
                point,
                key,
                budget: self.budget,
            })
        } else {
            None
        }
    }

    /// An untaken uniform sample, or `None` when none turns up in many tries (the space is
    /// nearly exhausted).
    pub fn random(&mut self) -> Option<Proposal> {
        for _ in 0..TRIES * 5 {
            let p = self.space.sample(&mut self.rng);
            if let Some(prop) = self.claim(p) {
                return Some(prop);
            }
        }
        None
    }

    /// An untaken mutation of `parent` (one decision, then more if the neighbourhood is
    /// taken), falling back to a random sample.
    pub fn mutant(&mut self, parent: &Point) -> Option<Proposal> {
        for attempt in 0..TRIES {
            let mut p = self.space.mutate(parent, &mut self.rng);
            for _ in 0..attempt / 20 {
                p = self.space.mutate(&p, &mut self.rng);
            }
            if let Some(prop) = self.claim(p) {
                return Some(prop);
            }
        }
        self.random()
    }
}

/// A search strategy. See the module documentation for the determinism contract.
pub trait Strategy: Send {
    /// Up to `n` new candidates; fewer when the strategy waits for results or the space is
    /// exhausted. Must claim each proposal in `ctx.taken`.
    fn propose(&mut self, ctx: &mut Context<'_>, n: usize) -> Vec<Proposal>;
    /// Learns from one finished trial.
    fn observe(&mut self, obs: &Observation);
}

/// The strategy's configuration, from `spec.strategy` and `spec.fidelity`.
#[derive(Debug, Clone, PartialEq)]
pub struct StrategyConfig {
    pub algorithm: Algorithm,
    pub seed: u64,
    pub settings: Settings,
    pub fidelity: Option<FidelitySchedule>,
}

/// Builds the configured strategy for a space, fresh (nothing observed).
pub fn build(config: &StrategyConfig, space: &SearchSpace) -> Box<dyn Strategy> {
    let base = build_base(config.algorithm, &config.settings, space);
    match &config.fidelity {
        Some(schedule) => Box::new(fidelity::Scheduled::new(base, schedule.clone())),
        None => base,
    }
}

fn build_base(algorithm: Algorithm, settings: &Settings, space: &SearchSpace) -> Box<dyn Strategy> {
    match algorithm {
        Algorithm::Random => Box::new(random::RandomSearch),
        Algorithm::Grid => Box::new(grid::GridSearch::default()),
        Algorithm::Evolution => Box::new(evolution::RegularizedEvolution::new(settings)),
        Algorithm::Local => Box::new(local::LocalSearch::new(space.clone())),
        Algorithm::Reinforce => Box::new(reinforce::Reinforce::new(space, settings)),
        Algorithm::Bayesian => Box::new(bayesian::Bayesian::new(space, settings)),
        Algorithm::Nsga2 => Box::new(nsga2::Nsga2::new(settings)),
    }
}

/// Deduplicating helper: keys of points, for strategies that remember what they saw.
pub(crate) type KeySet = HashSet<String>;

#[cfg(test)]
mod tests;
