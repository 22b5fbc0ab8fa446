//! `nasop run`'s live display: on a terminal, a bar for the budget with the time left
//! (estimated from the trials that have ended) and a line per running trial; log lines
//! elsewhere.

use crate::engine::{Experiment, Seconds, Stage, TrialPhase, TrialRecord};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

fn took(t: &TrialRecord) -> Option<f64> {
    Some(t.finished_at? - t.started_at?).filter(|d| *d > 0.0)
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Seconds until the budget is spent, estimated from the durations of the trials that have
/// ended: the running trials' remainders and the trials still to start, spread over the
/// parallel slots, capped by the deadline. A final-training trial (the full budget, from
/// scratch) is expected to take as long as those that ended, or else its epochs at the
/// pace of the search's smallest budget (whose trials start from scratch too). None until
/// a trial has ended.
fn eta(exp: &Experiment, trials: &[TrialRecord], started_at: Seconds, now: Seconds) -> Option<f64> {
    let ended = |stage: Stage| {
        trials
            .iter()
            .filter(move |t| !t.phase.is_active() && t.stage == stage)
    };
    let search = mean(ended(Stage::Search).filter_map(took));
    let smallest = ended(Stage::Search)
        .filter(|t| t.phase == TrialPhase::Succeeded)
        .map(|t| t.epochs)
        .min();
    let per_epoch = mean(
        ended(Stage::Search)
            .filter(|t| t.phase == TrialPhase::Succeeded && Some(t.epochs) == smallest)
            .filter_map(|t| Some(took(t)? / t.epochs.max(1) as f64)),
    );
    let plan = exp.final_training;
    let final_mean = mean(ended(Stage::Final).filter_map(took))
        .or_else(|| Some(per_epoch? * plan?.epochs as f64));
    let expected = |stage: Stage| match stage {
        Stage::Search => search,
        Stage::Final => final_mean.or(search),
    };
    if search.is_none() && final_mean.is_none() {
        return None;
    }
    let running: Vec<f64> = trials
        .iter()
        .filter(|t| t.phase == TrialPhase::Running)
        .map(|t| {
            let d = expected(t.stage).unwrap_or_default();
            (d - t.started_at.map_or(0.0, |s| now - s)).max(0.0)
        })
        .collect();
    let count = |stage: Stage| trials.iter().filter(|t| t.stage == stage).count();
    let pending = |stage: Stage| {
        trials
            .iter()
            .filter(|t| t.phase == TrialPhase::Pending && t.stage == stage)
            .count()
    };
    let search_left = if count(Stage::Final) > 0 {
        0
    } else {
        (exp.budget.max_trials as usize).saturating_sub(count(Stage::Search))
    };
    let final_left = plan.map_or(0, |p| {
        ((p.top * p.seeds) as usize).saturating_sub(count(Stage::Final))
    });
    let slots = exp.budget.parallelism.max(1) as f64;
    let work = running.iter().sum::<f64>()
        + (pending(Stage::Search) + search_left) as f64 * search.unwrap_or_default()
        + (pending(Stage::Final) + final_left) as f64 * expected(Stage::Final).unwrap_or_default();
    let longest = running.iter().copied().fold(0.0, f64::max);
    let mut eta = (work / slots).max(longest);
    if let Some(deadline) = exp.budget.deadline {
        eta = eta.min((started_at + deadline - now).max(0.0));
    }
    Some(eta)
}

/// How a line marks a final-training trial.
fn stage_mark(t: &TrialRecord) -> &'static str {
    match t.stage {
        Stage::Search => "",
        Stage::Final => "final ",
    }
}

/// A duration as a person reads it: 45s, 12m, 1h05m.
fn human(seconds: f64) -> String {
    let s = seconds.round().max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The live display: on a terminal, a bar for the budget with the estimated time left and a
/// line per running trial (its epoch and last reported value); log lines elsewhere.
pub(super) struct Progress {
    bars: Option<Bars>,
    objective: String,
    maximize: bool,
    tabular_quiet: bool,
    started_at: Seconds,
}

struct Bars {
    multi: indicatif::MultiProgress,
    budget: indicatif::ProgressBar,
    trials: BTreeMap<u32, indicatif::ProgressBar>,
}

impl Progress {
    pub(super) fn new(
        exp: &Experiment,
        plain: bool,
        trials: &[TrialRecord],
        started_at: Seconds,
    ) -> Self {
        let bars = (!plain && std::io::stderr().is_terminal()).then(|| {
            let multi = indicatif::MultiProgress::new();
            let budget = multi.add(indicatif::ProgressBar::new(exp.total_trials() as u64));
            budget.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {bar:30} {pos}/{len} trials  {msg}  [{elapsed_precise}]",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            budget.set_position(trials.iter().filter(|t| !t.phase.is_active()).count() as u64);
            budget.enable_steady_tick(Duration::from_millis(250));
            Bars {
                multi,
                budget,
                trials: BTreeMap::new(),
            }
        });
        Progress {
            bars,
            objective: exp.objectives[0].metric.clone(),
            maximize: exp.objectives[0].maximize,
            tabular_quiet: exp.budget.max_trials > 200,
            started_at,
        }
    }

    pub(super) fn line(&self, text: &str) {
        match &self.bars {
            Some(b) => {
                let _ = b.multi.println(text);
            }
            None => println!("{text}"),
        }
    }

    fn best(&self, trials: &[TrialRecord]) -> Option<f64> {
        let values = trials
            .iter()
            .filter(|t| t.phase == TrialPhase::Succeeded)
            .filter_map(|t| t.metrics.get(&self.objective).copied());
        if self.maximize {
            values.reduce(f64::max)
        } else {
            values.reduce(f64::min)
        }
    }

    pub(super) fn trial_line(&self, t: &TrialRecord, reason: &str, seconds: f64) {
        if self.tabular_quiet && self.bars.is_none() && t.phase == TrialPhase::Succeeded {
            return;
        }
        let value = t
            .metrics
            .get(&self.objective)
            .map_or("-".into(), |v| format!("{v:.4}"));
        self.line(&format!(
            "{}trial {:>4} {:<9} {}={value} epochs={} {:.1}s {}  {}",
            stage_mark(t),
            t.index,
            format!("{:?}", t.phase).to_lowercase(),
            self.objective,
            t.epochs,
            seconds,
            reason,
            t.candidate
        ));
    }

    /// What a running trial's line says: its epoch of its budget, its last reported value of
    /// the objective, and how long it has run.
    fn running_line(&self, t: &TrialRecord, now: Seconds) -> String {
        let last = t.reports.iter().max_by_key(|r| r.step);
        let value = last
            .and_then(|r| r.metrics.get(&self.objective))
            .map_or("-".into(), |v| format!("{v:.4}"));
        format!(
            "  {}trial {:>4}  epoch {}/{}  {} {value}  {}  {}",
            stage_mark(t),
            t.index,
            last.map_or(0, |r| r.step),
            t.epochs,
            self.objective,
            human(t.started_at.map_or(0.0, |s| now - s)),
            t.candidate
        )
    }

    pub(super) fn update(&mut self, trials: &[TrialRecord], exp: &Experiment, now: Seconds) {
        let best = self.best(trials).map_or("-".into(), |b| format!("{b:.4}"));
        let eta = eta(exp, trials, self.started_at, now)
            .map_or("estimating time left".into(), |s| {
                format!("~{} left", human(s))
            });
        let lines: BTreeMap<u32, String> = trials
            .iter()
            .filter(|t| t.phase == TrialPhase::Running)
            .map(|t| (t.index, self.running_line(t, now)))
            .collect();
        let Some(bars) = &mut self.bars else { return };
        let done = trials.iter().filter(|t| !t.phase.is_active()).count();
        let failed = trials
            .iter()
            .filter(|t| t.phase == TrialPhase::Failed)
            .count();
        bars.budget.set_position(done as u64);
        bars.budget.set_message(format!(
            "running {}  failed {failed}  best {} {best}  {eta}",
            lines.len(),
            self.objective
        ));
        bars.trials.retain(|index, bar| {
            let keep = lines.contains_key(index);
            if !keep {
                bar.finish_and_clear();
                bars.multi.remove(bar);
            }
            keep
        });
        for (index, line) in lines {
            let bar = bars.trials.entry(index).or_insert_with(|| {
                let bar = bars.multi.add(indicatif::ProgressBar::new_spinner());
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{msg}").expect("a valid template"),
                );
                bar
            });
            bar.set_message(line);
        }
    }

    pub(super) fn done(&mut self, text: &str) {
        if let Some(bars) = self.bars.take() {
            for bar in bars.trials.values() {
                bar.finish_and_clear();
            }
            bars.budget.finish_and_clear();
            let _ = bars.multi.clear();
        }
        println!("{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(
        index: u32,
        phase: TrialPhase,
        started: Option<f64>,
        finished: Option<f64>,
    ) -> TrialRecord {
        TrialRecord {
            index,
            candidate: String::new(),
            point: Default::default(),
            key: index.to_string(),
            epochs: 5,
            stage: Default::default(),
            phase,
            started_at: started,
            finished_at: finished,
            reports: Vec::new(),
            metrics: BTreeMap::new(),
        }
    }

    fn experiment(max_trials: u32, parallelism: u32) -> Experiment {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/quickstart.yaml");
        let mut exp = super::super::manifest::load(std::path::Path::new(path))
            .expect("the quickstart loads")
            .experiment;
        exp.budget.max_trials = max_trials;
        exp.budget.parallelism = parallelism;
        exp.budget.deadline = None;
        exp.final_training = None;
        exp
    }

    #[test]
    fn final_training_is_estimated_at_the_pace_of_the_smallest_budget() {
        let mut exp = experiment(2, 2);
        exp.final_training = Some(crate::engine::FinalTraining {
            top: 1,
            epochs: 10,
            seeds: 2,
        });
        let mut trials = vec![
            trial(0, TrialPhase::Succeeded, Some(0.0), Some(50.0)),
            trial(1, TrialPhase::Succeeded, Some(0.0), Some(50.0)),
        ];
        trials[1].epochs = 10;
        // Trial 0 trained 5 epochs in 50 s: two final trials of 10 epochs, 100 s each, side by
        // side.
        assert_eq!(eta(&exp, &trials, 0.0, 50.0), Some(100.0));
        // Once a final trial has ended, its own duration: the other one has 60 s left.
        let mut done = trial(2, TrialPhase::Succeeded, Some(50.0), Some(170.0));
        done.stage = Stage::Final;
        let mut running = trial(3, TrialPhase::Running, Some(110.0), None);
        running.stage = Stage::Final;
        trials.extend([done, running]);
        assert_eq!(eta(&exp, &trials, 0.0, 170.0), Some(60.0));
    }

    #[test]
    fn the_estimate_comes_from_finished_trials_and_the_budget() {
        let exp = experiment(10, 2);
        let mut trials = vec![
            trial(0, TrialPhase::Succeeded, Some(0.0), Some(60.0)),
            trial(1, TrialPhase::Stopped, Some(0.0), Some(120.0)),
        ];
        assert_eq!(eta(&exp, &trials[..0], 0.0, 120.0), None);
        // Mean 90 s; 8 trials to go on 2 slots.
        assert_eq!(eta(&exp, &trials, 0.0, 120.0), Some(360.0));
        // Two running for 30 s: 60 s left each, 6 still to start.
        trials.push(trial(2, TrialPhase::Running, Some(120.0), None));
        trials.push(trial(3, TrialPhase::Running, Some(120.0), None));
        assert_eq!(
            eta(&exp, &trials, 0.0, 150.0),
            Some((120.0 + 6.0 * 90.0) / 2.0)
        );
        // The deadline caps it.
        let mut short = exp.clone();
        short.budget.deadline = Some(200.0);
        assert_eq!(eta(&short, &trials, 0.0, 150.0), Some(50.0));
        // The last trial running: what it has left.
        let mut last = exp;
        last.budget.max_trials = 4;
        assert_eq!(eta(&last, &trials, 0.0, 150.0), Some(60.0));
    }

    #[test]
    fn durations_read_as_a_person_says_them() {
        assert_eq!(human(42.4), "42s");
        assert_eq!(human(125.0), "2m05s");
        assert_eq!(human(3900.0), "1h05m");
    }
}
