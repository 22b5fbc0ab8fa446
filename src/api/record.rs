//! A NasTrial as the engine's [`TrialRecord`]: the one translation the operator (its
//! state, warm start, report endpoint) and `nasop ui --cluster` share. Pure.

use super::{NasTrial, TrialPhaseName, TrialStage};
use crate::engine::{Experiment, Report, Stage, TrialPhase, TrialRecord};
use k8s_openapi::jiff::Timestamp;
use nasop_core::Point;

pub fn seconds(t: &Timestamp) -> f64 {
    t.as_microsecond() as f64 / 1e6
}

pub fn engine_phase(p: TrialPhaseName) -> TrialPhase {
    match p {
        TrialPhaseName::Pending => TrialPhase::Pending,
        TrialPhaseName::Running => TrialPhase::Running,
        TrialPhaseName::Succeeded => TrialPhase::Succeeded,
        TrialPhaseName::Failed => TrialPhase::Failed,
        TrialPhaseName::Stopped => TrialPhase::Stopped,
    }
}

/// What a NasTrial is for (no stage: the search).
pub fn stage(trial: &NasTrial) -> Stage {
    match trial.spec.stage {
        Some(TrialStage::Final) => Stage::Final,
        Some(TrialStage::Search) | None => Stage::Search,
    }
}

/// A recorded trial whose candidate the experiment's search space cannot read (its spec was
/// written by hand, or by another version).
#[derive(Debug, Clone, thiserror::Error)]
#[error("trial {trial}: {error}")]
pub struct RecordError {
    /// The trial's index, or its name where one is at hand.
    pub trial: String,
    pub error: String,
}

/// The trial's candidate as a point of the experiment's search space.
pub fn point(exp: &Experiment, trial: &NasTrial) -> Result<Point, RecordError> {
    exp.space
        .parse(&trial.spec.candidate)
        .map_err(|e| RecordError {
            trial: trial.spec.index.to_string(),
            error: e.to_string(),
        })
}

/// The engine's view of a NasTrial.
pub fn record(exp: &Experiment, trial: &NasTrial) -> Result<TrialRecord, RecordError> {
    let point = point(exp, trial)?;
    let key = exp.space.key(&point);
    Ok(record_at(trial, point, key))
}

/// The engine's view of a NasTrial whose point and key are given (a view that keeps a
/// trial it cannot parse passes an empty point and the candidate as its key).
pub fn record_at(trial: &NasTrial, point: Point, key: String) -> TrialRecord {
    let status = trial.status.clone().unwrap_or_default();
    TrialRecord {
        index: trial.spec.index,
        candidate: trial.spec.candidate.clone(),
        key,
        point,
        epochs: trial.spec.epochs,
        stage: stage(trial),
        phase: status.phase.map_or(TrialPhase::Pending, engine_phase),
        started_at: status.start_time.as_ref().map(|t| seconds(&t.0)),
        finished_at: status.completion_time.as_ref().map(|t| seconds(&t.0)),
        reports: status
            .history
            .into_iter()
            .map(|r| Report {
                step: r.step,
                metrics: r.metrics,
            })
            .collect(),
        metrics: status.metrics,
    }
}
