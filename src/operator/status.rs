//! Pure translations between the API objects and the engine's model: a NasTrial becomes a
//! [`TrialRecord`], the records become the NasExperiment's status. No I/O, so the operator's
//! bookkeeping is unit-tested without a cluster.

use crate::api::{
    ExperimentPhase, FinalCandidateStatus, FinalTrainingStatus, MetricSpread, NasExperimentStatus,
    ReportEntry, TrialCounts, TrialStage, TrialSummary,
};
use crate::engine::{self, Experiment, Finish, Stage, TrialPhase, TrialRecord};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use nasop_core::contract;
use std::collections::{BTreeMap, HashMap};

// The NasTrial → TrialRecord translation lives with the API types (`nasop ui` reads
// trials too); the operator's callers keep their names for it.
pub use crate::api::record::{RecordError, engine_phase, point, record, seconds, stage};

/// Progress reports kept in a trial's status; older ones are thinned out.
pub const HISTORY_LIMIT: usize = 64;
/// Pareto-front entries kept in an experiment's status (best first objective first).
pub const PARETO_LIMIT: usize = 32;

/// Longest message kept in a status (a trainer's last words, the scheduler's reason).
pub const MESSAGE_LIMIT: usize = 1024;

/// `text` cut to at most `limit` bytes at a character boundary, marked when cut.
pub fn bounded(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut end = limit.saturating_sub(3);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// Metrics as the contract allows them in a status: names of `[A-Za-z0-9_.-]` up to 63
/// characters, finite values, at most 64 (the first by name). A termination message is
/// written by the trial's container, so it is read with the same bounds as a report.
pub fn sanitize_metrics(metrics: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    metrics
        .iter()
        .filter(|(k, v)| contract::valid_name(k) && v.is_finite())
        .take(contract::MAX_METRICS)
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// The name of trial `index` of `experiment`.
pub fn trial_name(experiment: &str, index: u32) -> String {
    format!("{experiment}-{index}")
}

fn timestamp(seconds: f64) -> Timestamp {
    Timestamp::from_microsecond((seconds * 1e6) as i64).unwrap_or(Timestamp::UNIX_EPOCH)
}

pub fn micro(seconds: f64) -> MicroTime {
    MicroTime(timestamp(seconds))
}

pub fn time(seconds: f64) -> Time {
    Time(timestamp(seconds))
}

/// The NasTrial's stage field for the engine's stage (the search's trials have none, as
/// before final training existed).
pub fn stage_field(stage: Stage) -> Option<TrialStage> {
    match stage {
        Stage::Search => None,
        Stage::Final => Some(TrialStage::Final),
    }
}

/// Adds a report to a trial's history (a repeated step replaces the earlier one) and keeps
/// the history under [`HISTORY_LIMIT`] by dropping every other entry of its older half.
/// Every entry but the newest keeps only the metrics `kept` names (the experiment's
/// objectives and constraints, which decisions read), so a history costs at most
/// 64 entries of those plus one report of at most 64 metrics.
pub fn push_report(
    history: &mut Vec<ReportEntry>,
    entry: ReportEntry,
    kept: &dyn Fn(&str) -> bool,
) {
    history.retain(|r| r.step != entry.step);
    let at = history.partition_point(|r| r.step < entry.step);
    history.insert(at, entry);
    let newest = history.len() - 1;
    for r in &mut history[..newest] {
        r.metrics.retain(|k, _| kept(k));
    }
    while history.len() > HISTORY_LIMIT {
        let half = history.len() / 2;
        let mut k = 0;
        history.retain(|_| {
            k += 1;
            // Keep the first entry, the newer half, and every other of the rest.
            k == 1 || k > half || k % 2 == 1
        });
    }
}

/// Whether the experiment's decisions read this metric (an objective or a constraint).
pub fn decides(experiment: &Experiment, metric: &str) -> bool {
    experiment.objectives.iter().any(|o| o.metric == metric)
        || experiment.constraints.iter().any(|c| c.metric == metric)
}

/// What the experiment status is made of, besides the trials.
pub struct StatusInput<'a> {
    pub experiment: &'a Experiment,
    pub name: &'a str,
    pub generation: Option<i64>,
    pub previous: &'a NasExperimentStatus,
    /// The engine's end of the experiment, if it has decided one.
    pub finish: Option<&'a Finish>,
    pub started_at: f64,
    pub now: f64,
    pub gpu_seconds: f64,
    /// Each trial's final model, where it has one (NasTrialStatus.artifact).
    pub artifacts: &'a HashMap<u32, String>,
}

fn summary(input: &StatusInput, t: &TrialRecord) -> TrialSummary {
    TrialSummary {
        name: trial_name(input.name, t.index),
        index: t.index,
        candidate: t.candidate.clone(),
        epochs: t.epochs,
        metrics: t.metrics.clone(),
        artifact: input.artifacts.get(&t.index).cloned(),
    }
}

fn condition(
    previous: &[Condition],
    type_: &str,
    on: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: f64,
) -> Condition {
    let status = if on { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| time(now));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// The experiment's status for these trials: counts, best trial, Pareto front, phase and
/// conditions. Its size does not grow with the number of trials.
/// The trials by phase.
fn count(trials: &[TrialRecord]) -> TrialCounts {
    let mut counts = TrialCounts {
        created: trials.len() as u32,
        ..TrialCounts::default()
    };
    for t in trials {
        match t.phase {
            TrialPhase::Pending => counts.pending += 1,
            TrialPhase::Running => counts.running += 1,
            TrialPhase::Succeeded => counts.succeeded += 1,
            TrialPhase::Failed => counts.failed += 1,
            TrialPhase::Stopped => counts.stopped += 1,
        }
    }
    counts
}

/// The Pareto front of a multi-objective experiment, best first by the first objective, at
/// most [`PARETO_LIMIT`] trials (none with one objective).
fn pareto_summaries(input: &StatusInput, trials: &[TrialRecord]) -> Vec<TrialSummary> {
    let exp = input.experiment;
    if exp.objectives.len() < 2 {
        return Vec::new();
    }
    let mut front: Vec<&TrialRecord> = engine::pareto_front(exp, trials);
    let o = &exp.objectives[0];
    front.sort_by(|a, b| {
        let v = |t: &TrialRecord| {
            t.metrics
                .get(&o.metric)
                .map_or(f64::MIN, |v| o.oriented(*v))
        };
        v(b).total_cmp(&v(a)).then(a.index.cmp(&b.index))
    });
    front
        .into_iter()
        .take(PARETO_LIMIT)
        .map(|t| summary(input, t))
        .collect()
}

/// `Running` (with the progress), and `Succeeded` or `Failed` once the experiment ended.
fn experiment_conditions(
    input: &StatusInput,
    ended: Option<&Finish>,
    progress: &str,
) -> Vec<Condition> {
    let prev = &input.previous.conditions;
    let g = input.generation;
    let reason = if ended.is_some() {
        "Ended"
    } else {
        "TrialsRunning"
    };
    let mut conditions = vec![condition(
        prev,
        "Running",
        ended.is_none(),
        reason,
        progress,
        g,
        input.now,
    )];
    if let Some(f) = ended {
        conditions.push(condition(
            prev,
            if f.succeeded { "Succeeded" } else { "Failed" },
            true,
            &format!("{:?}", f.reason),
            &f.message,
            g,
            input.now,
        ));
    }
    conditions
}

pub fn experiment_status(input: &StatusInput, trials: &[TrialRecord]) -> NasExperimentStatus {
    let exp = input.experiment;
    let counts = count(trials);
    let active = counts.pending + counts.running;
    let done = counts.created - active;
    let best = engine::best_trial(exp, trials);
    let pareto_front = pareto_summaries(input, trials);
    // The experiment has ended when the engine says so and its stopped trials are gone.
    let ended = input.finish.filter(|_| active == 0);
    let training = engine::final_training::in_final_training(trials);
    let phase = match ended {
        Some(f) if f.succeeded => ExperimentPhase::Succeeded,
        Some(_) => ExperimentPhase::Failed,
        None if counts.created == 0 => ExperimentPhase::Pending,
        None if training => ExperimentPhase::Training,
        None => ExperimentPhase::Running,
    };
    let total = exp.total_trials();
    let g = input.generation;
    let progress = if training && ended.is_none() {
        format!("final training: {done} of {total} trials done, {active} running")
    } else {
        format!("{done} of {total} trials done, {active} running")
    };
    let conditions = experiment_conditions(input, ended, &progress);
    let completion_time = ended.map(|_| {
        input
            .previous
            .completion_time
            .clone()
            .unwrap_or_else(|| time(input.now))
    });
    NasExperimentStatus {
        phase: Some(phase),
        controller: input.previous.controller.clone(),
        conditions,
        observed_generation: g,
        progress: Some(format!("{done}/{active}/{total}")),
        trials: counts,
        best_value: best.and_then(|t| t.metrics.get(&exp.objectives[0].metric).copied()),
        best_trial: best.map(|t| summary(input, t)),
        pareto_front,
        final_training: training.then(|| final_training_status(input, trials)),
        gpu_seconds: (input.gpu_seconds * 1000.0).round() / 1000.0,
        start_time: Some(time(input.started_at)),
        completion_time,
        message: ended.map(|f| f.message.clone()),
    }
}

/// Each finalist's results over its seeds, and the winner so far.
fn final_training_status(input: &StatusInput, trials: &[TrialRecord]) -> FinalTrainingStatus {
    let exp = input.experiment;
    let Some(plan) = &exp.final_training else {
        return FinalTrainingStatus::default();
    };
    let finalists = engine::final_training::finalists(exp, plan, trials);
    let winner = engine::final_training::winner(exp, &finalists).map(|w| w.rank);
    FinalTrainingStatus {
        candidates: finalists
            .iter()
            .map(|f| FinalCandidateStatus {
                rank: f.rank,
                candidate: f.search_trial.candidate.clone(),
                search_trial: trial_name(input.name, f.search_trial.index),
                trials: f.trials.len() as u32,
                succeeded: f.succeeded() as u32,
                // A trial's metrics are bounded (sanitize_metrics), and so these.
                metrics: f
                    .metrics
                    .iter()
                    .map(|(k, s)| {
                        let spread = MetricSpread {
                            mean: s.mean,
                            std: s.std,
                            count: s.count,
                        };
                        (k.clone(), spread)
                    })
                    .collect(),
            })
            .collect(),
        winner,
    }
}

/// Keeps a finished experiment finished: while its generation is the one that finished
/// (its budget was not raised), the phase, conditions, message and completion time stay
/// as they were, and counts never go back (trials deleted by hand, a partial relist).
/// Returns whether the experiment had ended, so that nothing new is started for it.
pub fn keep_ended(
    previous: &NasExperimentStatus,
    status: &mut NasExperimentStatus,
    generation: Option<i64>,
) -> bool {
    let ended = matches!(
        previous.phase,
        Some(ExperimentPhase::Succeeded | ExperimentPhase::Failed)
    ) && previous.completion_time.is_some();
    if !ended || previous.observed_generation != generation {
        return false;
    }
    if status.trials.created < previous.trials.created
        || status.trials.succeeded + status.trials.failed + status.trials.stopped
            < previous.trials.succeeded + previous.trials.failed + previous.trials.stopped
    {
        *status = previous.clone();
        return true;
    }
    status.phase = previous.phase;
    status.conditions = previous.conditions.clone();
    status.message = previous.message.clone();
    status.start_time = previous.start_time.clone();
    status.completion_time = previous.completion_time.clone();
    true
}

/// Sets (or adds) a condition of this type, keeping its transition time while its status
/// does not change.
pub fn set_condition(
    status: &mut NasExperimentStatus,
    previous: &NasExperimentStatus,
    type_: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: f64,
) {
    let c = condition(
        &previous.conditions,
        type_,
        true,
        reason,
        message,
        generation,
        now,
    );
    status.conditions.retain(|c| c.type_ != type_);
    status.conditions.push(c);
}

/// The status of an experiment whose spec cannot run: the field and the fix in the message.
pub fn invalid_status(
    previous: &NasExperimentStatus,
    generation: Option<i64>,
    message: &str,
    now: f64,
) -> NasExperimentStatus {
    NasExperimentStatus {
        phase: Some(ExperimentPhase::Failed),
        conditions: vec![condition(
            &previous.conditions,
            "Failed",
            true,
            "InvalidSpec",
            &bounded(message.to_string(), MESSAGE_LIMIT),
            generation,
            now,
        )],
        observed_generation: generation,
        message: Some(bounded(message.to_string(), MESSAGE_LIMIT)),
        ..previous.clone()
    }
}

/// Final metrics from the termination message, or else from the last report.
pub fn final_metrics(
    termination: Option<&BTreeMap<String, f64>>,
    history: &[ReportEntry],
) -> BTreeMap<String, f64> {
    match termination.map(sanitize_metrics) {
        Some(m) if !m.is_empty() => m,
        _ => history
            .last()
            .map(|r| r.metrics.clone())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests;
