//! The median stopping rule: stop a trial whose best objective so far is worse than the
//! median, over finished trials, of their running averages up to the same step.

use super::model::{MedianStop, Objective, TrialPhase, TrialRecord};

pub fn should_stop(
    rule: &MedianStop,
    objective: &Objective,
    trial: &TrialRecord,
    all: &[TrialRecord],
) -> bool {
    let Some(step) = trial.reports.last().map(|r| r.step) else {
        return false;
    };
    if step < rule.start_step {
        return false;
    }
    let best = trial
        .reports
        .iter()
        .filter_map(|r| {
            r.metrics
                .get(&objective.metric)
                .map(|v| objective.oriented(*v))
        })
        .fold(f64::NEG_INFINITY, f64::max);
    if best == f64::NEG_INFINITY {
        return false;
    }
    let mut averages: Vec<f64> = all
        .iter()
        .filter(|t| t.index != trial.index && t.phase == TrialPhase::Succeeded)
        .filter_map(|t| {
            let values: Vec<f64> = t
                .reports
                .iter()
                .filter(|r| r.step <= step)
                .filter_map(|r| {
                    r.metrics
                        .get(&objective.metric)
                        .map(|v| objective.oriented(*v))
                })
                .collect();
            (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
        })
        .collect();
    if averages.len() < rule.min_trials.max(1) {
        return false;
    }
    averages.sort_by(f64::total_cmp);
    let m = averages.len();
    let median = if m % 2 == 1 {
        averages[m / 2]
    } else {
        (averages[m / 2 - 1] + averages[m / 2]) / 2.0
    };
    best < median
}
