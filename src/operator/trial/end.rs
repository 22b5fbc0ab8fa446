//! A trial's end: its final metrics and artifact into the status, then counted in the
//! metrics and announced in an event.

use super::decide::Ending;
use crate::api::{NasTrial, NasTrialStatus, ReportEntry, StorageSpec, TrialPhaseName};
use crate::engine::Experiment;
use crate::operator::context::Ctx;
use crate::operator::metrics::{ExperimentLabels, OnlyResult, ResultLabels};
use crate::operator::pod;
use crate::operator::start::event;
use crate::operator::status::{self, micro};
use kube::ResourceExt;
use kube::runtime::events::EventType;
use tracing::info;

/// What is counted once a trial's end is recorded.
pub(super) struct Ended {
    phase: TrialPhaseName,
    reason: String,
    message: Option<String>,
    ran: f64,
    gpu_seconds: f64,
}

pub(super) fn finish(
    experiment: &Experiment,
    storage: Option<&StorageSpec>,
    next: &mut NasTrialStatus,
    end: Ending,
    gpus: f64,
    t_now: f64,
) -> Ended {
    if let Some(r) = &end.report {
        status::push_report(
            &mut next.history,
            ReportEntry {
                step: r.step,
                metrics: status::sanitize_metrics(&r.metrics),
            },
            &|m| status::decides(experiment, m),
        );
    }
    next.metrics = status::final_metrics(end.report.as_ref().map(|r| &r.metrics), &next.history);
    next.value = next.metrics.get(&experiment.objectives[0].metric).copied();
    next.artifact = end
        .report
        .as_ref()
        .filter(|_| end.phase == TrialPhaseName::Succeeded)
        .and_then(|r| r.info.get(nasop_core::contract::INFO_ARTIFACT))
        .map(|path| status::bounded(pod::storage_url(storage, path), status::MESSAGE_LIMIT));
    next.phase = Some(end.phase);
    next.reason = Some(end.reason.clone());
    next.message = end
        .message
        .clone()
        .map(|m| status::bounded(m, status::MESSAGE_LIMIT));
    next.completion_time = Some(micro(t_now));
    let started = next
        .start_time
        .as_ref()
        .map(|t| status::seconds(&t.0))
        .or(end.started_at);
    if next.start_time.is_none() {
        next.start_time = Some(micro(started.unwrap_or(t_now).min(t_now)));
    }
    let ran = match (started, end.finished_at) {
        (Some(s), Some(f)) if f >= s => f - s,
        (Some(s), None) => (t_now - s).max(0.0),
        _ => 0.0,
    };
    let gpu_seconds = gpus * ran;
    next.gpu_seconds += gpu_seconds;
    Ended {
        phase: end.phase,
        reason: end.reason,
        message: end.message,
        ran,
        gpu_seconds,
    }
}

pub(super) async fn record_end(
    ctx: &Ctx,
    trial: &NasTrial,
    experiment: &Experiment,
    next: &NasTrialStatus,
    end: Ended,
) {
    let ns = trial.namespace().unwrap_or_default();
    let name = trial.name_any();
    let m = &ctx.metrics;
    let result = match end.phase {
        TrialPhaseName::Succeeded => "Succeeded".to_string(),
        TrialPhaseName::Failed => "Failed".to_string(),
        _ => end.reason.clone(),
    };
    m.trials_finished
        .get_or_create(&ResultLabels {
            namespace: ns.clone(),
            experiment: trial.spec.experiment.clone(),
            result: result.clone(),
        })
        .inc();
    m.trial_duration
        .get_or_create(&OnlyResult { result })
        .observe(end.ran);
    m.gpu_seconds
        .get_or_create(&ExperimentLabels {
            namespace: ns.clone(),
            experiment: trial.spec.experiment.clone(),
        })
        .inc_by(end.gpu_seconds);
    if let Some(uid) = crate::operator::index::owner_uid(trial) {
        ctx.states.slot_freed(uid);
    }
    info!(namespace = %ns, experiment = %trial.spec.experiment, trial = %name, phase = ?end.phase, reason = %end.reason, value = ?next.value, "trial ended");
    let (type_, reason) = match end.phase {
        TrialPhaseName::Succeeded => (EventType::Normal, "TrialSucceeded"),
        TrialPhaseName::Failed => (EventType::Warning, "TrialFailed"),
        _ if end.reason == "EarlyStopped" => (EventType::Normal, "TrialStoppedEarly"),
        _ => (EventType::Normal, "TrialStopped"),
    };
    let note = match (&next.value, &end.message) {
        (_, Some(msg)) => msg.clone(),
        (Some(v), None) => format!("{} = {v}", experiment.objectives[0].metric),
        (None, None) => end.reason.clone(),
    };
    event(ctx, trial, type_, reason, note);
}
