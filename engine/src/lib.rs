//! The experiment engine: a pure decision function shared by the operator and the local
//! runner (ARCHITECTURE.md, "The data flow"), and the search strategies it drives.
//!
//! This crate depends on nasop-core, serde and schemars only: no kube, no tokio, no HTTP, so
//! that nothing here can wait on the world.
//!
//! [`decide`] maps (experiment, trials, clock) to a [`Decision`]: trials to create, trials to
//! stop, or the end of the experiment. It does no I/O. [`Engine`] gives the same answers
//! while keeping the rebuilt strategy between calls, feeding it only new results.

pub mod final_training;
mod median;
pub mod strategy;
pub use median::should_stop as median_should_stop;
pub mod model;

pub use model::*;

use crate::strategy::{Context, Observation, Strategy, Taken, pareto};
use nasop_core::Rng;
use nasop_core::rng::mix64;
use std::collections::HashMap;

/// The decision for `trials` at `clock`, computed from scratch.
pub fn decide(experiment: &Experiment, trials: &[TrialRecord], clock: Clock) -> Decision {
    Engine::new(experiment.clone()).decide(trials, clock)
}

/// The engine with its strategy cache.
pub struct Engine {
    experiment: Experiment,
    strategy: Box<dyn Strategy>,
    /// Indices of the trials the cached strategy has observed, in order.
    observed: Vec<u32>,
    /// The taken set of the recorded trials, for the trials at the front of the slice it
    /// was built from (by index, in order); rounds add to it without copying it.
    taken: std::sync::Arc<Taken>,
    taken_for: Vec<u32>,
    /// Results of earlier searches over the same space (`spec.warmStart`).
    prior: Vec<Observation>,
    /// Indices no new trial takes: their names are held by another object (see
    /// [`Engine::skip_index`]).
    skipped: std::collections::BTreeSet<u32>,
}

impl Engine {
    pub fn new(experiment: Experiment) -> Self {
        let strategy = strategy::build(&experiment.strategy, &experiment.space);
        Engine {
            experiment,
            strategy,
            observed: Vec::new(),
            taken: Default::default(),
            taken_for: Vec::new(),
            prior: Vec::new(),
            skipped: Default::default(),
        }
    }

    /// Gives no new trial this index: the operator found its name held by another object
    /// (a trial of an earlier experiment of the same name that garbage collection has not
    /// removed yet), which it leaves alone.
    pub fn skip_index(&mut self, index: u32) {
        self.skipped.insert(index);
    }

    /// An engine whose strategy starts from the finished trials of earlier searches over the
    /// same space (`spec.warmStart`): it observes them before anything else, and never
    /// proposes their candidates again at the budget they ran. They are not this
    /// experiment's trials: they count against none of its budget and are never its best.
    /// Trials that failed or lack an objective's metric teach nothing and are left out.
    pub fn with_prior(experiment: Experiment, prior: &[TrialRecord]) -> Self {
        let mut engine = Engine::new(experiment);
        engine.prior = prior
            .iter()
            .filter(|t| matches!(t.phase, TrialPhase::Succeeded | TrialPhase::Stopped))
            .map(|t| engine.observation(t))
            .filter(|o| o.objectives.is_some() && o.budget > 0)
            .collect();
        engine.restart_strategy();
        engine.reset_taken();
        engine
    }

    /// How many earlier results the strategy started from.
    pub fn prior_results(&self) -> usize {
        self.prior.len()
    }

    /// A fresh strategy that has seen the prior results only.
    fn restart_strategy(&mut self) {
        self.strategy = strategy::build(&self.experiment.strategy, &self.experiment.space);
        for obs in &self.prior {
            self.strategy.observe(obs);
        }
        self.observed.clear();
    }

    /// An empty taken set but for the prior results.
    fn reset_taken(&mut self) {
        self.taken = Default::default();
        self.taken_for.clear();
        let base = std::sync::Arc::make_mut(&mut self.taken);
        for obs in &self.prior {
            base.insert(&obs.key, obs.budget);
        }
    }

    pub fn experiment(&self) -> &Experiment {
        &self.experiment
    }

    /// The seed of trial `index` (its training seed; derived, so a restart reuses it). 53
    /// bits, so that it is an exact integer in any JSON reader (the API server refuses
    /// integers beyond int64).
    pub fn trial_seed(&self, index: u32) -> u64 {
        mix64(self.experiment.strategy.seed ^ mix64(index as u64)) >> 11
    }

    /// The decision for `trials` at `clock`, in three phases: has the experiment ended (and
    /// what to stop because of it); which running trials to stop; what to create, or how
    /// the search ends when nothing is left to create.
    pub fn decide(&mut self, trials: &[TrialRecord], clock: Clock) -> Decision {
        let active: Vec<&TrialRecord> = trials.iter().filter(|t| t.phase.is_active()).collect();
        let training = final_training::in_final_training(trials);
        if let Some(finish) = self.ending(trials, training, clock) {
            return self.end(trials, &active, finish);
        }
        let mut decision = Decision {
            stop: self.stops(trials, &active, clock),
            ..Decision::default()
        };
        // A stopped trial holds its slot until it has really ended.
        let free = self
            .experiment
            .budget
            .parallelism
            .saturating_sub(active.len() as u32);
        if training {
            decision.create = self.final_trials(trials, free);
            if decision.create.is_empty() && active.is_empty() {
                decision.finish = Some(self.final_finish(trials));
            }
            return decision;
        }
        self.search(trials, &active, free, decision)
    }

    /// The experiment's end before its budget is spent, in order of precedence: too many
    /// failures, a target reached (by a search trial), the deadline.
    fn ending(&self, trials: &[TrialRecord], training: bool, clock: Clock) -> Option<Finish> {
        let exp = &self.experiment;
        let count = |phase: TrialPhase| trials.iter().filter(|t| t.phase == phase).count();
        let (failed, succeeded) = (
            count(TrialPhase::Failed) as u32,
            count(TrialPhase::Succeeded),
        );
        let past_deadline = exp
            .budget
            .deadline
            .is_some_and(|d| clock.now - clock.started_at >= d);
        let target = trials.iter().find(|t| {
            !training
                && t.stage == Stage::Search
                && t.phase == TrialPhase::Succeeded
                && self.meets_targets(t)
        });
        if failed > exp.budget.max_failed_trials {
            Some(Finish {
                succeeded: false,
                reason: FinishReason::TooManyFailures,
                message: format!(
                    "{failed} trials failed, more than maxFailedTrials ({}); see the failed trials' logs",
                    exp.budget.max_failed_trials
                ),
            })
        } else if let Some(t) = target {
            Some(Finish {
                succeeded: true,
                reason: FinishReason::TargetReached,
                message: format!("trial {} reached the target", t.index),
            })
        } else if past_deadline {
            Some(Finish {
                succeeded: succeeded > 0,
                reason: FinishReason::DeadlineExceeded,
                message: format!(
                    "the deadline of {}s passed with {succeeded} trials succeeded",
                    exp.budget.deadline.unwrap_or_default()
                ),
            })
        } else {
            None
        }
    }

    /// The experiment ended with `finish`: stop what runs, and finish, unless a search that
    /// reached its target goes on to final training once its trials have stopped.
    fn end(&self, trials: &[TrialRecord], active: &[&TrialRecord], finish: Finish) -> Decision {
        let reason = if finish.reason == FinishReason::DeadlineExceeded {
            StopReason::Deadline
        } else {
            StopReason::ExperimentFinished
        };
        let mut decision = Decision {
            stop: active
                .iter()
                .map(|t| Stop {
                    index: t.index,
                    reason,
                })
                .collect(),
            ..Decision::default()
        };
        if finish.reason == FinishReason::TargetReached && self.final_planned(trials) {
            if active.is_empty() {
                decision.create = self.final_trials(trials, self.experiment.budget.parallelism);
            }
            return decision;
        }
        decision.finish = Some(finish);
        decision
    }

    /// Running trials to stop: timeouts, then the median rule (not in final training, whose
    /// trials run the full budget by design).
    fn stops(&self, trials: &[TrialRecord], active: &[&TrialRecord], clock: Clock) -> Vec<Stop> {
        let exp = &self.experiment;
        let mut stops = Vec::new();
        for t in active {
            let timed_out = matches!((exp.budget.trial_timeout, t.started_at), (Some(limit), Some(start)) if clock.now - start >= limit);
            if timed_out {
                stops.push(Stop {
                    index: t.index,
                    reason: StopReason::Timeout,
                });
            } else if let Some(rule) = &exp.early_stopping
                && t.phase == TrialPhase::Running
                && t.stage == Stage::Search
                && median::should_stop(rule, &exp.objectives[0], t, trials)
            {
                stops.push(Stop {
                    index: t.index,
                    reason: StopReason::EarlyStopped,
                });
            }
        }
        stops
    }

    /// The search goes on: new trials for the `free` slots, final training once the search
    /// is over, or its end when nothing is left to run.
    fn search(
        &mut self,
        trials: &[TrialRecord],
        active: &[&TrialRecord],
        free: u32,
        mut decision: Decision,
    ) -> Decision {
        let created = trials.len() as u32;
        let max_trials = self.experiment.budget.max_trials;
        let slots = free.min(max_trials.saturating_sub(created));
        if slots > 0 {
            decision.create = self.propose(trials, slots as usize);
        }
        if !decision.create.is_empty() || !active.is_empty() {
            return decision;
        }
        if self.final_planned(trials) {
            // The search is over: train its best candidates again.
            decision.create = self.final_trials(trials, free);
            return decision;
        }
        let succeeded = trials
            .iter()
            .filter(|t| t.phase == TrialPhase::Succeeded)
            .count();
        let reason = if created >= max_trials {
            FinishReason::BudgetSpent
        } else {
            FinishReason::SearchSpaceExhausted
        };
        decision.finish = Some(Finish {
            succeeded: succeeded > 0,
            reason,
            message: match reason {
                FinishReason::BudgetSpent => {
                    format!("all {created} trials ended, {succeeded} succeeded")
                }
                _ => format!("every candidate of the search space was tried ({created} trials)"),
            },
        });
        decision
    }

    /// Whether final training follows the search: it is asked for and the search has a
    /// candidate for it.
    fn final_planned(&self, trials: &[TrialRecord]) -> bool {
        self.experiment.final_training.is_some_and(|plan| {
            !final_training::chosen(&self.experiment, plan.top, trials).is_empty()
        })
    }

    /// Up to `slots` final-training trials still to create: each finalist, best first, gets
    /// `seeds` trials at the final budget, each with a seed of its own (from its index).
    fn final_trials(&self, trials: &[TrialRecord], slots: u32) -> Vec<NewTrial> {
        let Some(plan) = self.experiment.final_training else {
            return Vec::new();
        };
        let mut indices = free_indices(trials, &self.skipped);
        let mut create = Vec::new();
        for finalist in final_training::finalists(&self.experiment, &plan, trials) {
            let missing = plan.seeds.saturating_sub(finalist.trials.len() as u32);
            for _ in 0..missing {
                if create.len() as u32 >= slots {
                    return create;
                }
                let t = finalist.search_trial;
                let index = indices.next().expect("free indices never end");
                create.push(NewTrial {
                    index,
                    candidate: t.candidate.clone(),
                    key: t.key.clone(),
                    point: t.point.clone(),
                    epochs: plan.epochs,
                    seed: self.trial_seed(index),
                    resume_from: None,
                    stage: Stage::Final,
                });
            }
        }
        create
    }

    /// The end of final training: the winner by the mean of the first objective.
    fn final_finish(&self, trials: &[TrialRecord]) -> Finish {
        let exp = &self.experiment;
        let plan = exp.final_training.expect("only in final training");
        let finalists = final_training::finalists(exp, &plan, trials);
        let o = &exp.objectives[0];
        match final_training::winner(exp, &finalists) {
            Some(w) => {
                let s = w.metrics[&o.metric];
                Finish {
                    succeeded: true,
                    reason: FinishReason::FinalTrainingDone,
                    message: format!(
                        "final training: the search's #{} ({}) won with {} {:.4} ± {:.4} over {} seed(s) of {} epochs",
                        w.rank,
                        w.search_trial.candidate,
                        o.metric,
                        s.mean,
                        s.std,
                        s.count,
                        plan.epochs
                    ),
                }
            }
            None => Finish {
                succeeded: false,
                reason: FinishReason::FinalTrainingFailed,
                message: format!(
                    "final training: no trial of the {} candidate(s) succeeded with {}; see the final-training trials' logs",
                    finalists.len(),
                    o.metric
                ),
            },
        }
    }

    fn meets_targets(&self, t: &TrialRecord) -> bool {
        let with_target: Vec<_> = self
            .experiment
            .objectives
            .iter()
            .filter(|o| o.target.is_some())
            .collect();
        !with_target.is_empty()
            && self.violation(t) == 0.0
            && with_target
                .iter()
                .all(|o| t.metrics.get(&o.metric).is_some_and(|v| o.reached(*v)))
    }

    fn violation(&self, t: &TrialRecord) -> f64 {
        self.experiment
            .constraints
            .iter()
            .map(|c| c.violation(t.metrics.get(&c.metric).copied()))
            .sum()
    }

    /// What a strategy learns from a finished trial.
    pub fn observation(&self, t: &TrialRecord) -> Observation {
        let objectives: Option<Vec<f64>> = if t.phase == TrialPhase::Failed {
            None
        } else {
            self.experiment
                .objectives
                .iter()
                .map(|o| t.metrics.get(&o.metric).map(|v| o.oriented(*v)))
                .collect()
        };
        let budget = match t.phase {
            // A stopped trial trained only as far as its last report.
            TrialPhase::Stopped => t.reports.last().map_or(0, |r| r.step).min(t.epochs),
            _ => t.epochs,
        };
        Observation {
            point: t.point.clone(),
            key: t.key.clone(),
            budget,
            objectives,
            violation: self.violation(t),
        }
    }

    /// Brings the cached strategy up to date with the finished trials, in the order they
    /// finished; rebuilds it when the history is not an extension of what it saw.
    fn sync_strategy(&mut self, trials: &[TrialRecord]) {
        let mut finished: Vec<&TrialRecord> = trials
            .iter()
            .filter(|t| !t.phase.is_active() && t.stage == Stage::Search)
            .collect();
        finished.sort_by(|a, b| {
            a.finished_at
                .unwrap_or(f64::MAX)
                .total_cmp(&b.finished_at.unwrap_or(f64::MAX))
                .then(a.index.cmp(&b.index))
        });
        let order: Vec<u32> = finished.iter().map(|t| t.index).collect();
        if !order.starts_with(&self.observed) {
            self.restart_strategy();
        }
        for t in &finished[self.observed.len()..] {
            let obs = self.observation(t);
            self.strategy.observe(&obs);
            self.observed.push(t.index);
        }
    }

    fn propose(&mut self, trials: &[TrialRecord], n: usize) -> Vec<NewTrial> {
        self.sync_strategy(trials);
        // The recorded trials' taken set, extended with the trials recorded since the last
        // round (rebuilt when the slice is not an extension of what it was built from).
        let extends = trials.len() >= self.taken_for.len()
            && trials
                .iter()
                .zip(&self.taken_for)
                .all(|(t, i)| t.index == *i);
        if !extends {
            self.reset_taken();
        }
        {
            let base = std::sync::Arc::make_mut(&mut self.taken);
            for t in &trials[self.taken_for.len()..] {
                base.insert(&t.key, t.epochs);
                self.taken_for.push(t.index);
            }
        }
        let mut taken = Taken::over(self.taken.clone());
        let mut pending: HashMap<u32, usize> = HashMap::new();
        for t in trials.iter().filter(|t| t.phase.is_active()) {
            *pending.entry(t.epochs).or_default() += 1;
        }
        let created = trials.len() as u64;
        let mut ctx = Context {
            space: &self.experiment.space,
            rng: Rng::stream(self.experiment.strategy.seed, created),
            taken: &mut taken,
            budget: self.experiment.first_budget(),
            pending: &pending,
        };
        let proposals = self.strategy.propose(&mut ctx, n);
        let mut indices = free_indices(trials, &self.skipped);
        // Succeeded (budget, index) of each key, in trial order: what a promotion resumes.
        let mut done: HashMap<&str, Vec<(u32, u32)>> = HashMap::new();
        if self.experiment.strategy.fidelity.is_some() {
            for t in trials.iter().filter(|t| t.phase == TrialPhase::Succeeded) {
                done.entry(t.key.as_str())
                    .or_default()
                    .push((t.epochs, t.index));
            }
        }
        proposals
            .into_iter()
            .take(n)
            .map(|p| {
                let index = indices.next().expect("free indices never end");
                let resume_from = done
                    .get(p.key.as_str())
                    .and_then(|runs| {
                        runs.iter()
                            .filter(|(epochs, _)| *epochs < p.budget)
                            .max_by_key(|(epochs, _)| *epochs)
                    })
                    .map(|(_, index)| *index);
                NewTrial {
                    index,
                    candidate: self.experiment.space.format(&p.point),
                    key: p.key,
                    point: p.point,
                    epochs: p.budget,
                    seed: self.trial_seed(index),
                    resume_from,
                    stage: Stage::Search,
                }
            })
            .collect()
    }
}

/// The best trial: after final training, the winning candidate's best final-training trial
/// (the model to ship); else the best first objective among succeeded search trials inside
/// the constraints, at the largest budget any of them reached (a multi-fidelity pick is made
/// on full runs).
pub fn best_trial<'a>(
    experiment: &Experiment,
    trials: &'a [TrialRecord],
) -> Option<&'a TrialRecord> {
    if let Some(t) = final_training::best_final_trial(experiment, trials) {
        return Some(t);
    }
    let engine_view = |t: &TrialRecord| {
        let o = &experiment.objectives[0];
        let feasible = experiment
            .constraints
            .iter()
            .all(|c| c.violation(t.metrics.get(&c.metric).copied()) == 0.0);
        (t.phase == TrialPhase::Succeeded && t.stage == Stage::Search && feasible)
            .then(|| t.metrics.get(&o.metric).map(|v| o.oriented(*v)))
            .flatten()
    };
    trials
        .iter()
        .filter_map(|t| engine_view(t).map(|v| (t, v)))
        .max_by(|(a, va), (b, vb)| {
            a.epochs
                .cmp(&b.epochs)
                .then(va.total_cmp(vb))
                .then(b.index.cmp(&a.index))
        })
        .map(|(t, _)| t)
}

/// The Pareto front over all objectives among succeeded search trials inside the
/// constraints.
pub fn pareto_front<'a>(
    experiment: &Experiment,
    trials: &'a [TrialRecord],
) -> Vec<&'a TrialRecord> {
    let candidates: Vec<(&TrialRecord, Vec<f64>)> = trials
        .iter()
        .filter(|t| t.phase == TrialPhase::Succeeded && t.stage == Stage::Search)
        .filter(|t| {
            experiment
                .constraints
                .iter()
                .all(|c| c.violation(t.metrics.get(&c.metric).copied()) == 0.0)
        })
        .filter_map(|t| {
            let v: Option<Vec<f64>> = experiment
                .objectives
                .iter()
                .map(|o| t.metrics.get(&o.metric).map(|v| o.oriented(*v)))
                .collect();
            v.map(|v| (t, v))
        })
        .collect();
    let objs: Vec<Vec<f64>> = candidates.iter().map(|c| c.1.clone()).collect();
    pareto::front(&objs)
        .into_iter()
        .map(|i| candidates[i].0)
        .collect()
}

#[cfg(test)]
mod tests;

/// The indices new trials take, lowest first: those below the highest index that no trial
/// has (and that is not skipped), then those after it. A gap is a trial that was decided but
/// never created (the operator died between its parallel creates, or one create failed and
/// the decision was made again); filling it keeps a run's trials numbered 0..n, as its
/// budget counts them.
fn free_indices(
    trials: &[TrialRecord],
    skipped: &std::collections::BTreeSet<u32>,
) -> impl Iterator<Item = u32> + use<> {
    // The usual case, no gap (indices are distinct): one pass, nothing sorted.
    let next = trials.iter().map(|t| t.index + 1).max().unwrap_or(0);
    let mut used: Vec<u32> = if next as usize == trials.len() && skipped.is_empty() {
        Vec::new()
    } else {
        trials
            .iter()
            .map(|t| t.index)
            .chain(skipped.iter().copied())
            .collect()
    };
    let first = if used.is_empty() { next } else { 0 };
    used.sort_unstable();
    used.dedup();
    let mut used = used.into_iter().peekable();
    (first..).filter(move |i| {
        while used.next_if(|u| u < i).is_some() {}
        used.next_if_eq(i).is_none()
    })
}
