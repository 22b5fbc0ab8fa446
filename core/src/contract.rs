//! The trial contract: what a trial receives and what it reports (ARCHITECTURE.md, "The trial
//! contract"). Any container that honours it can be a trial.

use crate::arch::Architecture;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Environment variable holding the [`TrialInput`] as JSON.
pub const ENV_TRIAL: &str = "NASOP_TRIAL";
/// Environment variable holding the URL that progress reports are posted to.
pub const ENV_REPORT_URL: &str = "NASOP_REPORT_URL";
/// Environment variable holding the trial's bearer token for the report URL (`nasop run`).
pub const ENV_REPORT_TOKEN: &str = "NASOP_REPORT_TOKEN";
/// Environment variable naming the file that holds the bearer token (a trial pod: a
/// projected service-account token for [`REPORT_AUDIENCE`], rotated by the kubelet, so read
/// it for every report). When set it wins over [`ENV_REPORT_TOKEN`].
pub const ENV_REPORT_TOKEN_FILE: &str = "NASOP_REPORT_TOKEN_FILE";
/// The audience of a trial pod's report token.
pub const REPORT_AUDIENCE: &str = "nasop.dev";
/// Environment variable naming the termination-message file (defaults to
/// [`DEFAULT_TERMINATION_PATH`] in a pod).
pub const ENV_TERMINATION_PATH: &str = "NASOP_TERMINATION_PATH";
pub const DEFAULT_TERMINATION_PATH: &str = "/dev/termination-log";
/// Optional: a directory the trial checkpoints into every epoch and resumes from.
pub const ENV_CHECKPOINT_DIR: &str = "NASOP_CHECKPOINT_DIR";
/// Optional: another trial's checkpoint directory to continue (a multi-fidelity promotion).
pub const ENV_RESUME_FROM: &str = "NASOP_RESUME_FROM";
/// Optional: a directory for the final model of a trial that completes its budget (weights,
/// description, TorchScript); the trial names it in its final report's `artifact` info.
pub const ENV_ARTIFACT_DIR: &str = "NASOP_ARTIFACT_DIR";
/// The final report's info entry naming where the trial's model is.
pub const INFO_ARTIFACT: &str = "artifact";
/// What a trainer's failure message says (`StorageRefused: ...`) when its storage (a
/// bucket) refused it: the operator gives the trial this reason, and the experiment a
/// `Storage` condition.
pub const STORAGE_REFUSED: &str = "StorageRefused";
/// Optional: CPU threads the trial may use.
pub const ENV_THREADS: &str = "NASOP_THREADS";
/// In a JobSet trial's pods: "true" in the first replicated job's (where rank 0 is), "false"
/// in the others'; with [`ENV_JOB_INDEX`] and Kubernetes' JOB_COMPLETION_INDEX, a program
/// that does not compute ranks (`nasop wrap`) knows whether its reports count.
pub const ENV_PRIMARY_JOB: &str = "NASOP_PRIMARY_JOB";
/// In a JobSet trial's pods: the pod's Job index within its replicated job.
pub const ENV_JOB_INDEX: &str = "NASOP_JOB_INDEX";
/// Kubernetes keeps at most this many bytes of a termination message.
pub const TERMINATION_MESSAGE_MAX_BYTES: usize = 4096;

/// What a trial is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrialInput {
    pub experiment: String,
    pub trial: String,
    pub index: u32,
    pub seed: u64,
    /// The candidate's string (architecture, then `;name=value` hyperparameters).
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<ArchitectureInput>,
    #[serde(default)]
    pub hyperparameters: BTreeMap<String, serde_json::Value>,
    pub budget: Budget,
    /// The metrics the experiment optimises; the trial should report at least these.
    pub metrics: Vec<String>,
    /// Index of the trial whose checkpoint this one continues (multi-fidelity promotion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_from: Option<u32>,
    /// `search`, or `final` for the final training of a chosen candidate (another seed,
    /// the full budget).
    #[serde(default, skip_serializing_if = "Stage::is_search")]
    pub stage: Stage,
}

/// What a trial is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    #[default]
    Search,
    Final,
}

impl Stage {
    pub fn is_search(&self) -> bool {
        *self == Stage::Search
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchitectureInput {
    /// The architecture's string form (NAS-Bench-201 format for cells).
    pub string: String,
    pub structure: Architecture,
}

/// How much training a trial gets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    pub epochs: u32,
}

/// One progress report, posted after an epoch and printed to stdout as a JSON line. The
/// final report (also the termination message) holds the final metrics.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Report {
    pub step: u32,
    pub metrics: BTreeMap<String, f64>,
    /// Non-numeric results, e.g. `derived_architecture` of a one-shot (DARTS) search.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub info: BTreeMap<String, String>,
    /// In the final report: how the run ended. A trial whose final report says
    /// `interrupted` did not earn its result (it was evicted, drained, preempted or deleted)
    /// and is run again from its checkpoint; one without it is taken as it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<RunEnd>,
}

/// How a run ended, as its final report says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunEnd {
    /// It trained its whole budget.
    Completed,
    /// The search answered a report with "stop" (early stopping, a deadline).
    Stopped,
    /// Something else ended it (SIGTERM: an eviction, a drain, a deleted pod): the result
    /// is not the trial's, and the trial is run again.
    Interrupted,
}

/// Most metrics in one report (and so in a trial's recorded metrics).
pub const MAX_METRICS: usize = 64;
/// Most `info` entries in one report, and the longest info value in bytes.
pub const MAX_INFO: usize = 8;
pub const MAX_INFO_VALUE: usize = 1024;
/// Longest metric or info name: a Kubernetes label's length, `[A-Za-z0-9_.-]`.
pub const MAX_NAME: usize = 63;
/// Largest report body accepted, in bytes.
pub const MAX_REPORT_BYTES: usize = 64 * 1024;

/// Whether `name` can name a metric: 1 to 63 characters of `[A-Za-z0-9_.-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Checks a report against the contract's bounds, which keep every recorded status small
/// (see the limits above); the error says what is wrong and the bound.
pub fn check_report(report: &Report) -> Result<(), String> {
    if report.metrics.len() > MAX_METRICS {
        return Err(format!(
            "{} metrics in one report; report at most {MAX_METRICS}",
            report.metrics.len()
        ));
    }
    if report.info.len() > MAX_INFO {
        return Err(format!(
            "{} info entries in one report; report at most {MAX_INFO}",
            report.info.len()
        ));
    }
    for name in report.metrics.keys().chain(report.info.keys()) {
        if !valid_name(name) {
            let shown: String = name.chars().take(MAX_NAME + 1).collect();
            return Err(format!(
                "name {shown:?} is not 1 to {MAX_NAME} characters of [A-Za-z0-9_.-]"
            ));
        }
    }
    if let Some((name, v)) = report.metrics.iter().find(|(_, v)| !v.is_finite()) {
        return Err(format!("metric {name} is {v}; report finite numbers only"));
    }
    if let Some((name, _)) = report.info.iter().find(|(_, v)| v.len() > MAX_INFO_VALUE) {
        return Err(format!("info {name} is longer than {MAX_INFO_VALUE} bytes"));
    }
    Ok(())
}

/// The answer to a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReportAction {
    Continue,
    /// Checkpoint and exit cleanly (early stopping, deadline, experiment deleted).
    Stop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportReply {
    pub action: ReportAction,
}

/// The final report as the compact JSON written to the termination-message file, trimmed
/// to fit Kubernetes' 4 KiB limit (info entries first, then metrics, from the end of the
/// alphabet).
pub fn termination_message(report: &Report) -> String {
    let mut kept = report.clone();
    loop {
        let text = serde_json::to_string(&kept).expect("reports serialise");
        if text.len() <= TERMINATION_MESSAGE_MAX_BYTES {
            return text;
        }
        if let Some(last) = kept.info.keys().next_back().cloned() {
            kept.info.remove(&last);
        } else {
            let last = kept
                .metrics
                .keys()
                .next_back()
                .cloned()
                .expect("an empty report fits");
            kept.metrics.remove(&last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn termination_message_fits() {
        let metrics: BTreeMap<String, f64> = (0..500)
            .map(|i| (format!("metric_{i:04}"), i as f64 / 3.0))
            .collect();
        let info = BTreeMap::from([("derived_architecture".to_string(), "x".repeat(5000))]);
        let text = termination_message(&Report {
            step: 3,
            metrics,
            info,
            end: None,
        });
        assert!(text.len() <= TERMINATION_MESSAGE_MAX_BYTES);
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back.step, 3);
        assert!(back.metrics.contains_key("metric_0000"));
        assert!(back.metrics.len() < 500 && back.info.is_empty());
    }

    #[test]
    fn input_round_trips_as_camel_case_json() {
        let input = TrialInput {
            experiment: "e".into(),
            trial: "e-3".into(),
            index: 3,
            seed: 9,
            candidate: "x".into(),
            architecture: None,
            hyperparameters: BTreeMap::new(),
            budget: Budget { epochs: 12 },
            metrics: vec!["val_accuracy".into()],
            resume_from: Some(1),
            stage: Stage::Final,
        };
        let json = serde_json::to_string(&input).unwrap();
        assert!(json.contains("\"resumeFrom\":1"), "{json}");
        assert!(json.contains("\"stage\":\"final\""), "{json}");
        assert_eq!(serde_json::from_str::<TrialInput>(&json).unwrap(), input);
        // A search trial's input has no stage, as before final training existed.
        let search = TrialInput {
            stage: Stage::Search,
            ..input
        };
        let json = serde_json::to_string(&search).unwrap();
        assert!(!json.contains("stage"), "{json}");
        assert_eq!(serde_json::from_str::<TrialInput>(&json).unwrap(), search);
    }
}
