//! A trial as a JobSet (jobset.x-k8s.io/v1alpha2): built from the experiment's
//! `trialJobSet` with the trial contract in every replicated job's pod template, and read
//! back, with its pods, into what happened to the trial. Pure functions.
//!
//! The first replicated job's first pod (job index 0, completion index 0) is rank 0: the
//! only pod whose reports and termination message count. nasop retries nothing through the
//! JobSet (maxRestarts 0, every Job's backoffLimit 0): a lost pod loses the attempt, which
//! nasop starts again as a new JobSet; a rank that fails fails the trial.

use super::pod::{self, Outcome, PodInput, Waiting};
use super::status::seconds;
use super::trainjob;
use crate::api::{JobSetTemplate, NasExperimentSpec};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodTemplateSpec};
use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use nasop_core::contract;
use serde_json::{Value, json};
use std::sync::Arc;

pub const GROUP: &str = "jobset.x-k8s.io";
pub const VERSION: &str = "v1alpha2";
pub const KIND: &str = "JobSet";

/// The JobSet resource, for the dynamic client.
pub fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, KIND), "jobsets")
}

/// Labels JobSet puts on its Jobs' pods, and the Job controller's completion index.
pub const LABEL_JOBSET_NAME: &str = "jobset.sigs.k8s.io/jobset-name";
pub const LABEL_JOBSET_UID: &str = "jobset.sigs.k8s.io/jobset-uid";
pub const LABEL_REPLICATED_JOB: &str = "jobset.sigs.k8s.io/replicatedjob-name";
pub const LABEL_JOB_INDEX: &str = "jobset.sigs.k8s.io/job-index";
pub const LABEL_JOB_GLOBAL_INDEX: &str = "jobset.sigs.k8s.io/job-global-index";
pub const LABEL_COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// Kueue's queue label: a JobSet that carries it starts suspended, until Kueue admits it.
pub use super::pod::LABEL_QUEUE;
/// The port rank 0 listens on for the process group (torchrun's default).
pub const MASTER_PORT: u16 = 29500;

/// What a trial of several pods runs as: a JobSet it writes, or a TrainJob whose JobSet the
/// Kubeflow Trainer controller writes (named as the TrainJob, its trainer job `node`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    JobSet,
    TrainJob,
}

impl Kind {
    /// The kind an experiment's trials run as, when not a pod.
    pub fn of(spec: &NasExperimentSpec) -> Option<Kind> {
        if spec.trial_train_job.is_some() {
            Some(Kind::TrainJob)
        } else if spec.trial_job_set.is_some() {
            Some(Kind::JobSet)
        } else {
            None
        }
    }

    pub fn resource(self) -> ApiResource {
        match self {
            Kind::JobSet => resource(),
            Kind::TrainJob => trainjob::resource(),
        }
    }

    /// The kind's name, as the API has it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::JobSet => KIND,
            Kind::TrainJob => trainjob::KIND,
        }
    }

    /// The experiment's field that gives it.
    pub fn field(self) -> &'static str {
        match self {
            Kind::JobSet => "spec.trialJobSet",
            Kind::TrainJob => "spec.trialTrainJob",
        }
    }

    /// The condition that says it completed.
    fn completed(self) -> &'static str {
        match self {
            Kind::JobSet => "Completed",
            Kind::TrainJob => "Complete",
        }
    }

    /// The replicated job whose first pod is rank 0.
    pub fn rank_zero_job(self, obj: &DynamicObject) -> String {
        match self {
            Kind::JobSet => first_job(obj).unwrap_or_default(),
            Kind::TrainJob => trainjob::NODE.into(),
        }
    }

    /// The pods of this object among `pods`: a JobSet's by its UID on them, a TrainJob's by
    /// the name of its JobSet (the TrainJob's own: unique per attempt).
    pub fn pods_of<'a>(self, obj: &DynamicObject, pods: &'a [Arc<Pod>]) -> Vec<&'a Arc<Pod>> {
        let (key, want) = match self {
            Kind::JobSet => (LABEL_JOBSET_UID, obj.uid().unwrap_or_default()),
            Kind::TrainJob => (LABEL_JOBSET_NAME, obj.name_any()),
        };
        pods.iter()
            .filter(|p| label(p, key) == Some(want.as_str()))
            .collect()
    }

    /// Whether it has ended (completed or failed): its pods are done.
    pub fn ended(self, obj: &DynamicObject) -> bool {
        condition(obj, self.completed()).is_some() || condition(obj, "Failed").is_some()
    }

    /// What the object and its pods say about the trial at `now` (a pod or the object still
    /// terminating `lost_after` seconds past its deletion counts as lost, as for a pod
    /// trial).
    pub fn outcome(
        self,
        obj: &DynamicObject,
        pods: &[&Arc<Pod>],
        now: f64,
        lost_after: f64,
    ) -> Outcome {
        group_outcome(self, obj, pods, now, lost_after)
    }
}

/// Why a trialJobSet cannot run trials: the message names the field and the fix.
pub fn check(t: &JobSetTemplate, experiment: &str) -> Result<(), String> {
    let jobs = replicated_jobs(&t.spec);
    if jobs.is_empty() {
        return Err("spec.trialJobSet.spec.replicatedJobs is empty: give at least one replicated job with a Job template".into());
    }
    for (i, j) in jobs.iter().enumerate() {
        let name = j["name"].as_str().unwrap_or_default();
        let field = format!("spec.trialJobSet.spec.replicatedJobs[{i}]");
        if j["template"]["spec"]["template"]["spec"]["containers"]
            .as_array()
            .is_none_or(|c| c.is_empty())
        {
            return Err(format!(
                "{field}.template.spec.template.spec.containers is empty: give the container that trains"
            ));
        }
        pod_template(j)
            .map_err(|e| format!("{field}.template.spec.template is not a pod template: {e}"))?;
        // Pod hostnames are <jobset>-<job>-<jobIndex>-<podIndex> (a DNS label, at most 63):
        // the JobSet is <trial>-<attempt>, <experiment>-<index>-<attempt>.
        let longest = format!(
            "{experiment}-99999-9-{name}-{}-{}",
            count(j, "replicas") - 1,
            count(&j["template"]["spec"], "parallelism") - 1
        );
        if longest.len() > 63 {
            return Err(format!(
                "the pods' host names ({longest}: experiment, trial index, attempt, {field}.name and indices) would be longer than 63 characters: shorten the experiment's or the replicated job's name"
            ));
        }
    }
    Ok(())
}

fn replicated_jobs(spec: &Value) -> Vec<Value> {
    spec["replicatedJobs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A replicated job's `replicas`, or a Job spec's `parallelism` (1 when not given).
fn count(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or(1).max(1)
}

fn pod_template(job: &Value) -> Result<PodTemplateSpec, serde_json::Error> {
    serde_json::from_value(job["template"]["spec"]["template"].clone())
}

/// GPUs a trial of this JobSet holds: every pod's, over every replicated job.
pub fn gpus(t: &JobSetTemplate) -> f64 {
    replicated_jobs(&t.spec)
        .iter()
        .map(|j| {
            let pods = count(j, "replicas") * count(&j["template"]["spec"], "parallelism");
            let template = pod_template(j).ok();
            pods as f64 * pod::gpus(template.as_ref())
        })
        .sum()
}

/// An env var from one of the pod's labels (downward API).
fn label_env(name: &str, label: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: format!("metadata.labels['{label}']"),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn plain_env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    }
}

/// The JobSet of attempt `p.attempt` of a trial, named `name`: the template's spec with the
/// trial contract and the process group's address in every pod template, no retries of its
/// own, and owned by the trial.
pub fn build(p: &PodInput, t: &JobSetTemplate, name: &str) -> Value {
    let mut spec = t.spec.clone();
    let jobs = replicated_jobs(&spec);
    let first = jobs
        .first()
        .and_then(|j| j["name"].as_str())
        .unwrap_or_default()
        .to_string();
    let world: u64 = jobs
        .iter()
        .map(|j| count(j, "replicas") * count(&j["template"]["spec"], "parallelism"))
        .sum();
    // A rank is one number from the pod's labels only when there is one replicated job of
    // one Job (the completion index) or of one pod per Job (the job index).
    let rank = match jobs.as_slice() {
        [j] if count(j, "replicas") == 1 => Some(LABEL_COMPLETION_INDEX),
        [j] if count(&j["template"]["spec"], "parallelism") == 1 => Some(LABEL_JOB_INDEX),
        _ => None,
    };
    let mut built = Vec::new();
    for mut j in jobs {
        let mut env = vec![
            plain_env("MASTER_ADDR", format!("{name}-{first}-0-0.{name}")),
            plain_env("MASTER_PORT", MASTER_PORT.to_string()),
            plain_env("WORLD_SIZE", world.to_string()),
        ];
        if let Some(label) = rank {
            env.push(label_env("RANK", label));
        }
        // Rank 0 is in the first replicated job.
        env.push(plain_env(
            contract::ENV_PRIMARY_JOB,
            built.is_empty().to_string(),
        ));
        env.push(label_env(contract::ENV_JOB_INDEX, LABEL_JOB_INDEX));
        let template = pod_template(&j).unwrap_or_default();
        let (meta, pod_spec) = pod::trial_pod(p, &template, env);
        let job = &mut j["template"]["spec"];
        job["template"] = json!({"metadata": meta, "spec": pod_spec});
        job["completionMode"] = json!("Indexed");
        job["backoffLimit"] = json!(0);
        // An Indexed Job needs its completions: one per pod it runs at once.
        if job["completions"].is_null() {
            job["completions"] = json!(count(job, "parallelism"));
        }
        built.push(j);
    }
    spec["replicatedJobs"] = Value::Array(built);
    spec["failurePolicy"] = json!({"maxRestarts": 0});
    if spec["network"].is_null() {
        spec["network"] = json!({"enableDNSHostnames": true, "publishNotReadyAddresses": true});
    }
    if spec["successPolicy"].is_null() {
        spec["successPolicy"] = json!({"operator": "All"});
    }
    let meta = t.metadata.clone().unwrap_or_default();
    if meta.labels.contains_key(LABEL_QUEUE) && spec["suspend"].is_null() {
        // Kueue's webhook would suspend it; without the webhook, the queue still holds it.
        spec["suspend"] = json!(true);
    }
    pod::trial_object(p, (GROUP, VERSION, KIND), name, meta, spec)
}

/// Whether the trial with this UID controls the JobSet.
pub fn owned_by(js: &DynamicObject, trial_uid: &str) -> bool {
    js.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == trial_uid)
}

fn label<'a>(p: &'a Pod, key: &str) -> Option<&'a str> {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

/// Whether `p` is rank 0 of the JobSet whose first replicated job is `first`.
pub fn is_rank_zero(p: &Pod, first: &str) -> bool {
    label(p, LABEL_REPLICATED_JOB) == Some(first)
        && label(p, LABEL_JOB_INDEX) == Some("0")
        && label(p, LABEL_COMPLETION_INDEX) == Some("0")
}

/// The name of a JobSet's first replicated job (whose first pod is rank 0).
pub fn first_job(js: &DynamicObject) -> Option<String> {
    js.data["spec"]["replicatedJobs"][0]["name"]
        .as_str()
        .map(str::to_string)
}

fn condition(js: &DynamicObject, type_: &str) -> Option<(String, String)> {
    js.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_ && c["status"] == "True")
        .map(|c| {
            (
                c["reason"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
}

/// A rank's container that restarted in place (a runtime whose pods restart on failure): the
/// rank failed, and nasop's retry rules are the only ones, so the trial fails with why.
fn restarted(p: &Pod) -> Option<String> {
    let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
    let c = statuses.iter().find(|c| c.restart_count > 0)?;
    let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    let why = last.map_or_else(String::new, |t| {
        let mut why = format!(
            ": exit code {}{}",
            t.exit_code,
            t.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
        if let Some(m) = t.message.as_deref().filter(|m| !m.trim().is_empty()) {
            why.push_str(&format!(": {}", m.trim()));
        }
        why
    });
    Some(format!(
        "container {} ended and was restarted in place{why}; a trial's ranks are not restarted (give the runtime restartPolicy Never and backoffLimit 0)",
        c.name
    ))
}

fn group_outcome(
    kind: Kind,
    js: &DynamicObject,
    pods: &[&Arc<Pod>],
    now: f64,
    lost_after: f64,
) -> Outcome {
    // Its pending time runs from its creation, or from when a queue resumed it.
    let resumed = js.data["status"]["conditions"]
        .as_array()
        .and_then(|cs| {
            cs.iter()
                .find(|c| c["type"] == "Suspended" && c["status"] == "False")
        })
        .and_then(|c| {
            serde_json::from_value::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>(
                c["lastTransitionTime"].clone(),
            )
            .ok()
        })
        .map(|t| seconds(&t.0));
    let created = js
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| seconds(&t.0))
        .map(|c| resumed.map_or(c, |r| c.max(r)));
    if let Some(deleted) = js.metadata.deletion_timestamp.as_ref() {
        let gone_by = seconds(&deleted.0) + lost_after;
        return if now >= gone_by {
            Outcome::Lost(format!(
                "{} {} was still terminating {:.0}s after its deletion time",
                kind.name(),
                js.name_any(),
                now - seconds(&deleted.0)
            ))
        } else {
            Outcome::Terminating(Some(gone_by - now + 0.05))
        };
    }
    let first = kind.rank_zero_job(js);
    let seen: Vec<(&Arc<Pod>, Outcome)> = pods
        .iter()
        .map(|p| {
            let o = match restarted(p) {
                Some(message) => Outcome::Failed {
                    message,
                    started_at: None,
                    finished_at: None,
                },
                None => pod::outcome_at(p, now, lost_after),
            };
            (*p, o)
        })
        .collect();
    let rank0 = seen
        .iter()
        .filter(|(p, _)| is_rank_zero(p, &first))
        .max_by_key(|(p, _)| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    // Rank 0 ended by itself (completed its budget or stopped when asked): that is the
    // trial's result, whatever the other ranks do next (nasop deletes them).
    if let Some((_, Outcome::Succeeded { report, .. })) = rank0
        && report.as_ref().and_then(|r| r.end) == Some(nasop_core::contract::RunEnd::Stopped)
    {
        return rank0.unwrap().1.clone();
    }
    // A pod the cluster took (evicted, preempted, deleted, its node lost) loses the
    // attempt, even though the JobSet calls that a failure.
    if let Some((p, Outcome::Lost(why))) = seen.iter().find(|(_, o)| matches!(o, Outcome::Lost(_)))
    {
        return Outcome::Lost(format!("pod {}: {why}", p.name_any()));
    }
    if let Some((
        p,
        Outcome::Failed {
            message,
            started_at,
            finished_at,
        },
    )) = seen
        .iter()
        .find(|(_, o)| matches!(o, Outcome::Failed { .. }))
    {
        return Outcome::Failed {
            message: format!("pod {}: {message}", p.name_any()),
            started_at: *started_at,
            finished_at: *finished_at,
        };
    }
    if condition(js, kind.completed()).is_some() {
        return match rank0 {
            Some((_, o @ Outcome::Succeeded { .. })) => o.clone(),
            _ => Outcome::Succeeded {
                report: None,
                started_at: None,
                finished_at: None,
            },
        };
    }
    if let Some((reason, message)) = condition(js, "Failed") {
        return Outcome::Failed {
            message: format!("{} {}: {reason}: {message}", kind.name(), js.name_any()),
            started_at: None,
            finished_at: None,
        };
    }
    if condition(js, "Suspended").is_some() || js.data["spec"]["suspend"] == true {
        let queue = js.labels().get(LABEL_QUEUE).cloned();
        return Outcome::Waiting(Waiting {
            reason: Some(pod::QUEUED.into()),
            message: Some(match queue {
                Some(q) => format!("{} {} waits in queue {q}", kind.name(), js.name_any()),
                None => format!("{} {} is suspended", kind.name(), js.name_any()),
            }),
            // Waiting in a queue is not waiting to start: no pending timeout runs.
            since: None,
        });
    }
    match rank0 {
        Some((_, o @ Outcome::Running { .. })) => return o.clone(),
        // Rank 0 is done; the others are finishing.
        Some((_, Outcome::Succeeded { started_at, .. })) => {
            return Outcome::Running {
                started_at: *started_at,
            };
        }
        _ => {}
    }
    // Not running yet: the reason of the pod that waits longest on something hopeless,
    // else of any that says why, else of the JobSet's creation.
    let waits: Vec<&Waiting> = seen
        .iter()
        .filter_map(|(_, o)| match o {
            Outcome::Waiting(w) => Some(w),
            _ => None,
        })
        .collect();
    let pick = waits
        .iter()
        .find(|w| w.is_hopeless())
        .or_else(|| waits.iter().find(|w| w.reason.is_some()));
    // A TrainJob that made no pods: its runtime may be missing (without the Trainer's
    // webhook, only an event says so).
    let none_yet = (kind == Kind::TrainJob && pods.is_empty()).then(|| {
        let name = js.name_any();
        format!(
            "TrainJob {name} has no pods yet; if it stays so, see `kubectl describe trainjob {name}` (does its runtime {} exist?) and its Jobs' events (`kubectl describe jobs -l jobset.sigs.k8s.io/jobset-name={name}`: a pod the namespace's Pod Security level refuses?)",
            js.data["spec"]["runtimeRef"]["name"].as_str().unwrap_or_default()
        )
    });
    Outcome::Waiting(Waiting {
        reason: pick.and_then(|w| w.reason.clone()),
        message: pick.and_then(|w| w.message.clone()).or(none_yet),
        since: pick.and_then(|w| w.since).or(created),
    })
}

#[cfg(test)]
mod tests;
