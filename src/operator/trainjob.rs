//! A trial as a Kubeflow Trainer TrainJob (trainer.kubeflow.org/v1alpha1): built from the
//! experiment's `trialTrainJob`. Pure functions; what a TrainJob and its pods say is read as
//! for a JobSet ([`super::jobset::Kind`]).
//!
//! The Trainer controller makes from a TrainJob a JobSet of the TrainJob's name whose trainer
//! job is `node`: one Job of `numNodes` indexed pods, the PET_* variables in its `node`
//! container (PET_NODE_RANK is the pod's completion index). nasop writes only what the
//! TrainJob API lets a creator write: the trial contract in `spec.trainer.env`, and a
//! runtime patch of its own that labels the `node` pods and mounts the report token (and the
//! storage claim) into their `node` container. Retries are the runtime's to set
//! (`backoffLimit`, `failurePolicy` are not in the TrainJob API); a rank that restarts
//! anyway fails the trial ([`super::jobset::Kind::outcome`]).

use super::pod::{self, LABEL_QUEUE, PodInput};
use crate::api::TrainJobTemplate;
use kube::api::ApiResource;
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

pub const GROUP: &str = "trainer.kubeflow.org";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "TrainJob";
/// The replicated job (and container) of a runtime that trains: its first pod is rank 0.
pub const NODE: &str = "node";
/// nasop's runtime patch's manager.
pub const MANAGER: &str = "nasop.dev/operator";

/// The TrainJob resource, for the dynamic client.
pub fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, KIND), "trainjobs")
}

/// Why a trialTrainJob cannot run trials: the message names the field and the fix.
pub fn check(t: &TrainJobTemplate, experiment: &str) -> Result<(), String> {
    if t.spec["runtimeRef"]["name"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        return Err("spec.trialTrainJob.spec.runtimeRef.name is missing: name the (Cluster)TrainingRuntime, e.g. torch-distributed".into());
    }
    let runtime = &t.spec["runtimeRef"];
    if let Some(kind) = runtime["kind"].as_str()
        && !["ClusterTrainingRuntime", "TrainingRuntime"].contains(&kind)
    {
        return Err(format!(
            "spec.trialTrainJob.spec.runtimeRef.kind is {kind:?}: give ClusterTrainingRuntime (the default) or TrainingRuntime"
        ));
    }
    if let Some(group) = runtime["apiGroup"].as_str()
        && group != GROUP
    {
        return Err(format!(
            "spec.trialTrainJob.spec.runtimeRef.apiGroup is {group:?}: give {GROUP} or leave it out"
        ));
    }
    if !t.spec["activeDeadlineSeconds"].is_null() {
        return Err("spec.trialTrainJob.spec.activeDeadlineSeconds is set: bound a trial with spec.budget.trialTimeoutSeconds instead (nasop ends the trial and its TrainJob then)".into());
    }
    if !experiment.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!(
            "the experiment's name {experiment:?} does not start with a letter, and its trials' TrainJobs (named <experiment>-<index>-<attempt>) must: rename the experiment"
        ));
    }
    if t.spec["runtimePatches"]
        .as_array()
        .is_some_and(|p| p.len() > 14)
    {
        return Err("spec.trialTrainJob.spec.runtimePatches has more than 14 patches: a TrainJob holds 16, and nasop and Kueue add one each".into());
    }
    if !t.spec["trainer"].is_object() {
        return Err("spec.trialTrainJob.spec.trainer is missing: give the trainer (image, command, numNodes); without it the runtime sets no PET_* variables".into());
    }
    if let Some(env) = t.spec["trainer"]["env"].as_array() {
        for (i, e) in env.iter().enumerate() {
            let name = e["name"].as_str().unwrap_or_default();
            if name.starts_with("PET_") {
                return Err(format!(
                    "spec.trialTrainJob.spec.trainer.env[{i}] is {name}: the runtime sets the PET_* variables; remove it"
                ));
            }
        }
    }
    if let Some(patches) = t.spec["runtimePatches"].as_array()
        && patches.iter().any(|p| p["manager"] == MANAGER)
    {
        return Err(format!(
            "spec.trialTrainJob.spec.runtimePatches has a patch of manager {MANAGER}: that is nasop's own; give yours another manager"
        ));
    }
    // Its name is <experiment>-<index>-<attempt>; its pods' host names
    // <name>-node-0-<index> (DNS labels, at most 63).
    let nodes = nodes(t);
    let longest = format!("{experiment}-99999-9-{NODE}-0-{}", nodes - 1);
    if longest.len() > 63 {
        return Err(format!(
            "the pods' host names ({longest}: experiment, trial index, attempt, job and index) would be longer than 63 characters: shorten the experiment's name"
        ));
    }
    Ok(())
}

/// The trainer's `numNodes` (1 when the runtime decides).
fn nodes(t: &TrainJobTemplate) -> u64 {
    t.spec["trainer"]["numNodes"].as_u64().unwrap_or(1).max(1)
}

/// GPUs a trial of this TrainJob holds: every node's `resourcesPerNode` (what the runtime
/// gives when that is not set is not known here, and not counted).
pub fn gpus(t: &TrainJobTemplate) -> f64 {
    let r = &t.spec["trainer"]["resourcesPerNode"];
    let per_node = [&r["limits"], &r["requests"]]
        .iter()
        .find_map(|m| {
            let q = &m[pod::GPU_RESOURCE];
            q.as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .or_else(|| q.as_f64())
        })
        .unwrap_or(0.0);
    nodes(t) as f64 * per_node
}

/// The TrainJob of attempt `p.attempt` of a trial, named `name`: the template's spec with the
/// trial contract in `spec.trainer.env`, nasop's runtime patch, and owned by the trial.
pub fn build(p: &PodInput, t: &TrainJobTemplate, name: &str) -> Value {
    let parts = pod::contract_parts(p);
    let mut spec = t.spec.clone();
    let trainer = &mut spec["trainer"];
    let mut env: Vec<Value> = trainer["env"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !parts.env.iter().any(|ours| e["name"] == ours.name.as_str()))
        .collect();
    env.extend(parts.env.iter().map(|e| json!(e)));
    trainer["env"] = Value::Array(env);
    let ours = json!({
        "manager": MANAGER,
        "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
            "name": NODE,
            "template": {"spec": {"template": {
                "metadata": {"labels": parts.labels},
                "spec": {
                    "volumes": parts.volumes,
                    "containers": [{"name": NODE, "volumeMounts": parts.mounts}],
                },
            }}},
        }]}}},
    });
    let mut patches = spec["runtimePatches"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    patches.push(ours);
    let meta = t.metadata.clone().unwrap_or_default();
    // Queued: created suspended, as Kueue's webhook would make it. That webhook also appends
    // the runtime patch Kueue writes its admission into (manager kueue.x-k8s.io/manager),
    // always: nasop must not add one too (runtimePatches is keyed by manager).
    if meta.labels.contains_key(LABEL_QUEUE) && spec["suspend"].is_null() {
        spec["suspend"] = json!(true);
    }
    spec["runtimePatches"] = Value::Array(patches);
    pod::trial_object(p, (GROUP, VERSION, KIND), name, meta, spec)
}

#[cfg(test)]
mod tests;
