//! Final training (`spec.finalTraining`): once the search has ended, its best distinct
//! candidates are trained again at the full budget with several seeds, and the winner is
//! the candidate with the best mean of the first objective over its seeds. Which
//! candidates these are follows from the search's trials alone (they have all ended when
//! final training starts), so a restarted runner finds the same ones.

use super::model::{Experiment, FinalTraining, Stage, TrialPhase, TrialRecord};
use std::collections::{BTreeMap, HashSet};

/// Mean and spread of one metric over a candidate's final-training trials.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub mean: f64,
    /// The sample standard deviation (0 for one trial).
    pub std: f64,
    /// Trials it is over.
    pub count: u32,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = if values.len() > 1 {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Some(Spread {
            mean,
            std: var.sqrt(),
            count: values.len() as u32,
        })
    }
}

/// A candidate chosen for final training, and how its trials went.
#[derive(Debug, Clone)]
pub struct Finalist<'a> {
    /// 1 for the search's best.
    pub rank: u32,
    /// The search trial that chose it (its best run at the largest budget).
    pub search_trial: &'a TrialRecord,
    /// Its final-training trials, by index.
    pub trials: Vec<&'a TrialRecord>,
    /// Every metric its succeeded final-training trials reported, over those trials.
    pub metrics: BTreeMap<String, Spread>,
}

impl Finalist<'_> {
    /// Its final-training trials that succeeded.
    pub fn succeeded(&self) -> usize {
        self.trials
            .iter()
            .filter(|t| t.phase == TrialPhase::Succeeded)
            .count()
    }

    /// The first objective's mean, oriented so that larger is better, if any trial succeeded
    /// and the means meet the constraints.
    fn score(&self, exp: &Experiment) -> Option<f64> {
        let feasible = exp
            .constraints
            .iter()
            .all(|c| c.violation(self.metrics.get(&c.metric).map(|s| s.mean)) == 0.0);
        let o = &exp.objectives[0];
        feasible
            .then(|| self.metrics.get(&o.metric).map(|s| o.oriented(s.mean)))
            .flatten()
    }
}

/// Whether the experiment is in final training (its search has ended).
pub fn in_final_training(trials: &[TrialRecord]) -> bool {
    trials.iter().any(|t| t.stage == Stage::Final)
}

/// The search's best `top` distinct candidates: succeeded search trials inside the
/// constraints, the largest budget first, then the first objective; one per network.
pub fn chosen<'a>(exp: &Experiment, top: u32, trials: &'a [TrialRecord]) -> Vec<&'a TrialRecord> {
    let o = &exp.objectives[0];
    let mut ranked: Vec<(&TrialRecord, f64)> = trials
        .iter()
        .filter(|t| t.stage == Stage::Search && t.phase == TrialPhase::Succeeded)
        .filter(|t| {
            exp.constraints
                .iter()
                .all(|c| c.violation(t.metrics.get(&c.metric).copied()) == 0.0)
        })
        .filter_map(|t| t.metrics.get(&o.metric).map(|v| (t, o.oriented(*v))))
        .collect();
    ranked.sort_by(|(a, va), (b, vb)| {
        b.epochs
            .cmp(&a.epochs)
            .then(vb.total_cmp(va))
            .then(a.index.cmp(&b.index))
    });
    let mut seen = HashSet::new();
    ranked
        .into_iter()
        .filter(|(t, _)| seen.insert(t.key.as_str()))
        .take(top as usize)
        .map(|(t, _)| t)
        .collect()
}

/// The finalists with their final-training trials (matched by network), best rank first.
pub fn finalists<'a>(
    exp: &Experiment,
    plan: &FinalTraining,
    trials: &'a [TrialRecord],
) -> Vec<Finalist<'a>> {
    chosen(exp, plan.top, trials)
        .into_iter()
        .enumerate()
        .map(|(i, search_trial)| {
            let mine: Vec<&TrialRecord> = trials
                .iter()
                .filter(|t| t.stage == Stage::Final && t.key == search_trial.key)
                .collect();
            let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for t in mine.iter().filter(|t| t.phase == TrialPhase::Succeeded) {
                for (k, v) in &t.metrics {
                    values.entry(k.clone()).or_default().push(*v);
                }
            }
            Finalist {
                rank: i as u32 + 1,
                search_trial,
                trials: mine,
                metrics: values
                    .into_iter()
                    .filter_map(|(k, v)| Spread::of(&v).map(|s| (k, s)))
                    .collect(),
            }
        })
        .collect()
}

/// The finalist with the best mean of the first objective (the better search rank on a
/// tie); None while no finalist has a succeeded trial inside the constraints.
pub fn winner<'a, 'b>(exp: &Experiment, finalists: &'b [Finalist<'a>]) -> Option<&'b Finalist<'a>> {
    finalists
        .iter()
        .filter_map(|f| f.score(exp).map(|s| (f, s)))
        .max_by(|(a, sa), (b, sb)| sa.total_cmp(sb).then(b.rank.cmp(&a.rank)))
        .map(|(f, _)| f)
}

/// The winner's trial to ship: its final-training trial with the best first objective.
pub fn best_final_trial<'a>(
    exp: &Experiment,
    trials: &'a [TrialRecord],
) -> Option<&'a TrialRecord> {
    let plan = exp.final_training.as_ref()?;
    let finalists = finalists(exp, plan, trials);
    let o = &exp.objectives[0];
    winner(exp, &finalists)?
        .trials
        .iter()
        .filter(|t| t.phase == TrialPhase::Succeeded)
        .filter_map(|t| t.metrics.get(&o.metric).map(|v| (*t, o.oriented(*v))))
        .max_by(|(a, va), (b, vb)| va.total_cmp(vb).then(b.index.cmp(&a.index)))
        .map(|(t, _)| t)
}
