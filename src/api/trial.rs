//! The `NasTrial` resource: one candidate trained at one budget.

// kube's printcolumn(...) attributes repeat keys such as type_ by design.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One trial of a NasExperiment, recorded before it runs. Created by the operator; its name
/// is `<experiment>-<index>`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "nasop.dev",
    version = "v1alpha1",
    kind = "NasTrial",
    namespaced,
    status = "NasTrialStatus",
    shortname = "nastrial",
    category = "nasop",
    doc = "One candidate architecture trained at one budget.",
    selectable = ".spec.experiment",
    printcolumn(name = "Experiment", type_ = "string", json_path = ".spec.experiment"),
    printcolumn(name = "Index", type_ = "integer", json_path = ".spec.index"),
    printcolumn(name = "Epochs", type_ = "integer", json_path = ".spec.epochs"),
    printcolumn(
        name = "Stage",
        type_ = "string",
        json_path = ".spec.stage",
        description = "Final for the final training of a chosen candidate; empty in the search"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Value", type_ = "number", json_path = ".status.value"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.reason",
        description = "Why it ended, or while pending why its pod has not started"
    ),
    printcolumn(
        name = "Candidate",
        type_ = "string",
        json_path = ".spec.candidate",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NasTrialSpec {
    /// The owning NasExperiment.
    pub experiment: String,
    /// The trial's number within the experiment, from 0.
    pub index: u32,
    /// The candidate: architecture string, then `;name=value` hyperparameters.
    pub candidate: String,
    /// Epochs to train.
    pub epochs: u32,
    /// Training seed.
    pub seed: u64,
    /// The trial whose checkpoint this one continues (a multi-fidelity promotion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_from: Option<u32>,
    /// Final: the final training of a candidate the search chose (spec.finalTraining), at
    /// the full budget with a seed of its own. Absent for the search's trials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<TrialStage>,
    /// Set by the operator to stop the trial: EarlyStopped, Timeout, Deadline or
    /// ExperimentFinished. The trial's next report is answered "stop"; a pod that has not
    /// ended within the grace period is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NasTrialStatus {
    /// Pending, Running, Succeeded, Failed or Stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TrialPhaseName>,
    /// Pods started for this trial (a pod lost to eviction or node loss is retried).
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The first objective's final value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Progress reports, newest last; the oldest are thinned out past 64 entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<ReportEntry>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// Why the trial ended: Completed, TrainerFailed, PendingTimeout, PodLost, EarlyStopped,
    /// Timeout, Deadline, ExperimentFinished. While Pending: why its pod has not started
    /// (Unschedulable, ImagePullBackOff, CreateContainerConfigError, QuotaExceeded, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the trial's pod was first seen running (microseconds, so that the order in
    /// which trials ended survives a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<MicroTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<MicroTime>,
    /// When the operator first asked the trial to stop (the grace period counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_requested_time: Option<MicroTime>,
    /// GPUs requested by the trial's pods times their running time, over all attempts.
    #[serde(default)]
    pub gpu_seconds: f64,
    /// Where the trial's final model is (`pvc://<claim>/<path>` or `s3://<bucket>/<key>`:
    /// model.safetensors, model.json, model.pt), when it completed its epochs with
    /// spec.storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// The current attempt's final report, as it posted it (with `end`: completed or
    /// stopped): the trial's result even if its pod is deleted before its termination
    /// message is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_report: Option<FinalReport>,
}

/// A final report posted by a trial's pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FinalReport {
    /// The pod that posted it.
    pub pod: String,
    pub step: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub info: BTreeMap<String, String>,
    /// completed or stopped.
    pub end: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum TrialStage {
    Search,
    Final,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum TrialPhaseName {
    Pending,
    Running,
    Succeeded,
    Failed,
    Stopped,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ReportEntry {
    pub step: u32,
    pub metrics: BTreeMap<String, f64>,
}
