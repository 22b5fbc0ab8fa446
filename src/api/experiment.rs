//! The `NasExperiment` resource.

// kube's printcolumn(...) attributes repeat keys such as type_ by design.
#![allow(clippy::duplicated_attributes)]

use crate::strategy::{Algorithm, FidelityKind};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A neural architecture search: a search space, a strategy, objectives and a budget. The
/// operator runs its trials as pods from `trialTemplate`; `nasop run` runs the same manifest
/// on one machine.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "nasop.dev",
    version = "v1alpha1",
    kind = "NasExperiment",
    namespaced,
    status = "NasExperimentStatus",
    shortname = "nasexp",
    shortname = "nasexps",
    category = "nasop",
    doc = "A neural architecture search run by nasop.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Best",
        type_ = "number",
        json_path = ".status.bestValue",
        description = "Best value of the first objective"
    ),
    printcolumn(
        name = "Done/Running/Total",
        type_ = "string",
        json_path = ".status.progress"
    ),
    printcolumn(
        name = "Strategy",
        type_ = "string",
        json_path = ".spec.strategy.algorithm",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.trialTemplate) ? 1 : 0) + (has(self.trialJobSet) ? 1 : 0) + (has(self.trialTrainJob) ? 1 : 0) <= 1").message("give one trial kind: trialTemplate (a pod), trialJobSet or trialTrainJob, not several"))]
#[x_kube(validation = Rule::new("!has(self.wrap) || !has(self.trialTrainJob)").message("wrap is for trialTemplate and trialJobSet trials; in a TrainJob, run the command as `nasop wrap -- <command>` with nasop in the image, or use the Python helper"))]
#[x_kube(validation = Rule::new("has(self.trialJobSet) == has(oldSelf.trialJobSet) && has(self.trialTrainJob) == has(oldSelf.trialTrainJob)").message("the trial kind is immutable: create a new NasExperiment to run its trials as another kind"))]
pub struct NasExperimentSpec {
    /// What the search optimises: one or more metrics that trials report. The first leads
    /// single-objective strategies; all of them form the Pareto front in the status.
    #[schemars(length(min = 1, max = 8))]
    pub objectives: Vec<ObjectiveSpec>,
    /// Hard limits on reported metrics (for example parameters, FLOPs, latency). A trial
    /// outside them is never the best trial, whatever its objectives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub constraints: Vec<ConstraintSpec>,
    /// The candidates the strategy may propose. Immutable: the recorded trials are only
    /// meaningful in the space they were drawn from.
    #[x_kube(validation = Rule::new("self == oldSelf").message("searchSpace is immutable; create a new NasExperiment to search another space"))]
    pub search_space: SearchSpaceSpec,
    /// The search algorithm and its settings. Immutable, so that a restarted operator
    /// rebuilds exactly the strategy that proposed the recorded trials.
    #[x_kube(validation = Rule::new("self == oldSelf").message("strategy is immutable; create a new NasExperiment to change the algorithm, seed or settings"))]
    pub strategy: StrategySpec,
    /// Multi-fidelity scheduling: trials start with few epochs and the best are promoted
    /// to more (successive halving, ASHA, Hyperband). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("fidelity is immutable"))]
    pub fidelity: Option<FidelitySpec>,
    /// Stops trials whose progress reports fall behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStoppingSpec>,
    /// How many trials, how many at once, and how long. maxTrials and parallelism may be
    /// raised on a running or finished experiment to continue it.
    pub budget: BudgetSpec,
    /// The pod each trial runs in (on Kubernetes). nasop injects the trial contract
    /// (NASOP_TRIAL, NASOP_REPORT_URL, NASOP_REPORT_TOKEN_FILE and the report token's
    /// projected volume) into its first container, and the restricted Pod Security
    /// Standard's settings wherever the template does not say otherwise; resources such as
    /// nvidia.com/gpu, node selectors, tolerations, volumes and the image are used as
    /// written. `nasop run` uses the first container's command and args, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "pod_template_schema")]
    pub trial_template: Option<PodTemplateSpec>,
    /// Trials larger than one pod: each trial runs as a JobSet (jobset.x-k8s.io/v1alpha2,
    /// the JobSet controller v0.12 or newer installed), written as for a plain run. Give
    /// this or trialTemplate, not both. nasop injects the trial contract into the first
    /// container of every replicated job's pod template (so that every rank trains the
    /// same candidate) together with MASTER_ADDR, MASTER_PORT and WORLD_SIZE (and RANK
    /// where the shape makes it one number); the first replicated job's first pod (job
    /// index 0, completion index 0) is rank 0, the only one whose reports count. nasop sets
    /// failurePolicy.maxRestarts 0 and every Job's backoffLimit 0 (a lost pod is nasop's
    /// to retry, a failed rank fails the trial), Indexed completion, restartPolicy Never,
    /// DNS hostnames and successPolicy All where the spec does not say; a
    /// kueue.x-k8s.io/queue-name label in its metadata makes the trial wait in that queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial_job_set: Option<JobSetTemplate>,
    /// Trials as Kubeflow Trainer TrainJobs (trainer.kubeflow.org/v1alpha1, Kubeflow
    /// Trainer v2.3 or newer installed), written as for a plain run: a runtimeRef and a
    /// trainer (image, command, numNodes, resourcesPerNode). Give one of trialTemplate,
    /// trialJobSet and trialTrainJob. nasop adds the trial contract to spec.trainer.env
    /// (the runtime adds the PET_* variables), and a runtime patch of its own (manager
    /// nasop.dev/operator) that labels the `node` pods and mounts the report token (and
    /// spec.storage's claim) into their `node` container. Rank 0 is the `node` job's first
    /// pod (completion index 0): the only one whose reports count. A TrainJob cannot switch
    /// off its runtime's retries, so nasop fails the trial at the first restart of any
    /// rank; a runtime with backoffLimit 0, restartPolicy Never and failurePolicy
    /// maxRestarts 0 (examples/k8s/trainjob-runtime.yaml) never restarts one. A
    /// kueue.x-k8s.io/queue-name label in its metadata makes the trial wait in that queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial_train_job: Option<TrainJobTemplate>,
    /// Start from what earlier searches learned: the finished trials of the experiments named
    /// here (their searchSpace must equal this one's) are given to the strategy as results
    /// before it proposes anything. They are not trained again and do not count against
    /// maxTrials. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("warmStart is immutable"))]
    pub warm_start: Option<WarmStartSpec>,
    /// Where trials keep their checkpoints and final models. With it, a promoted trial
    /// (ASHA, Hyperband) continues its parent's checkpoint and a retried pod its own last
    /// one, and each trial that completes its epochs leaves its model there (named in its
    /// status and in status.bestTrial.artifact). Without it, trials on the cluster start from
    /// scratch and keep no model. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage is immutable"))]
    pub storage: Option<StorageSpec>,
    /// After the search: train its best distinct candidates again at the full budget with
    /// several seeds, as trials of stage Final (within the same parallelism), while the
    /// experiment's phase is Training. The status reports each candidate's mean and spread
    /// over seeds of every metric, and the winner is the best mean of the first objective
    /// (a validation metric: never test). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("finalTraining is immutable"))]
    pub final_training: Option<FinalTrainingSpec>,
    /// For a program that does not speak the trial contract: each trial's command runs under
    /// `nasop wrap`, which gives it the candidate and hyperparameters (`{lr}`,
    /// `{architecture}`, ... in its command and args, and NASOP_HP_* in its environment),
    /// reports the metrics it prints (`name=value` lines, or metricsRegex) or writes as
    /// TensorBoard events, and turns a stop into SIGTERM (SIGKILL after stopGraceSeconds).
    /// On Kubernetes the image needs nothing: an init container copies the static `nasop`
    /// binary from the operator's image into an emptyDir at /nasop-wrap, and the trial
    /// container's command becomes `/nasop-wrap/nasop wrap ... -- <command> <args>`; the
    /// command must therefore be written in the template (nasop cannot read an image's
    /// entrypoint). `nasop run` runs the command under `nasop wrap` the same way. For
    /// trialTemplate and trialJobSet trials (every rank is wrapped; rank 0 reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrap: Option<WrapSpec>,
}

/// How `nasop wrap` reads an unmodified command's metrics.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WrapSpec {
    /// A regular expression for metrics in the command's output, capturing the name and the
    /// value (two groups, or groups named `name` and `value`). Default: Katib's `name=value`
    /// format (`epoch=3 val_accuracy=0.81`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_regex: Option<String>,
    /// Names whose value is the step rather than a metric (default: epoch, step).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub step_metrics: Vec<String>,
    /// A directory where the command writes TensorBoard event files: their scalars are
    /// reported too (a path inside the trial's container, or on this machine for nasop run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensorboard_dir: Option<String>,
    /// Seconds between SIGTERM and SIGKILL when the command must stop (default 20: shorter
    /// than a pod's 30 s grace, so that the final report is written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 3600))]
    pub stop_grace_seconds: Option<u32>,
}

impl WrapSpec {
    /// `nasop wrap`'s arguments up to and including `--`: the command follows.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["wrap".to_string()];
        // `--flag=value`: a value that starts with '-' stays a value.
        if let Some(r) = &self.metrics_regex {
            args.push(format!("--metrics-regex={r}"));
        }
        for s in &self.step_metrics {
            args.push(format!("--step-metric={s}"));
        }
        if let Some(d) = &self.tensorboard_dir {
            args.push(format!("--tensorboard={d}"));
        }
        if let Some(g) = self.stop_grace_seconds {
            args.push(format!("--stop-grace-seconds={g}"));
        }
        args.push("--".into());
        args
    }
}

/// A JobSet as a trial: its labels and annotations, and its spec.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSetTemplate {
    /// Labels and annotations of each trial's JobSet (for example
    /// kueue.x-k8s.io/queue-name); nasop adds its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// A jobset.x-k8s.io/v1alpha2 JobSetSpec: replicatedJobs (each a Job template), and
    /// optionally network, successPolicy, suspend.
    #[schemars(schema_with = "job_set_spec_schema")]
    pub spec: serde_json::Value,
}

/// A TrainJob as a trial: its labels and annotations, and its spec.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainJobTemplate {
    /// Labels and annotations of each trial's TrainJob (for example
    /// kueue.x-k8s.io/queue-name); nasop adds its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// A trainer.kubeflow.org/v1alpha1 TrainJobSpec: runtimeRef, trainer, and optionally
    /// initializer and runtimePatches.
    #[schemars(schema_with = "train_job_spec_schema")]
    pub spec: serde_json::Value,
}

fn train_job_spec_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "A trainer.kubeflow.org/v1alpha1 TrainJobSpec.",
        "required": ["runtimeRef", "trainer"],
        "properties": {
            "runtimeRef": {
                "type": "object",
                "description": "The (Cluster)TrainingRuntime the trials run on, e.g. torch-distributed.",
                "required": ["name"],
                "x-kubernetes-preserve-unknown-fields": true,
                "properties": {"name": {"type": "string", "minLength": 1}},
            },
            "trainer": {
                "type": "object",
                "description": "The trainer: image, command, args, env, numNodes, resourcesPerNode, numProcPerNode.",
                "x-kubernetes-preserve-unknown-fields": true,
                "properties": {"numNodes": {"type": "integer", "minimum": 1}},
            },
        },
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn job_set_spec_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "A jobset.x-k8s.io/v1alpha2 JobSetSpec.",
        "required": ["replicatedJobs"],
        "properties": {
            "replicatedJobs": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "template"],
                    "x-kubernetes-preserve-unknown-fields": true,
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 63},
                        "replicas": {"type": "integer", "minimum": 1},
                        "template": {
                            "type": "object",
                            "description": "A batch/v1 JobTemplateSpec.",
                            "x-kubernetes-preserve-unknown-fields": true,
                        },
                    },
                },
            },
        },
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FinalTrainingSpec {
    /// How many of the search's best candidates to train (distinct networks; default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub top: Option<u32>,
    /// Epochs of each final-training trial (default: the search's largest budget,
    /// fidelity.maxEpochs or budget.trialEpochs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub epochs: Option<u32>,
    /// Trials, each with its own training seed, per candidate (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub seeds: Option<u32>,
}

/// Exactly one of persistentVolumeClaim and s3.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.persistentVolumeClaim) != has(self.s3)").message("give exactly one of persistentVolumeClaim and s3"))]
pub struct StorageSpec {
    /// A PersistentVolumeClaim in the experiment's namespace, mounted into every trial pod
    /// (ReadWriteMany when trials run on several nodes). Trial N of experiment E uses
    /// `<subPath>/trials/N/checkpoint` and `<subPath>/trials/N/artifact` in it; the trial
    /// pod's user must be able to write there (set the pod's securityContext.fsGroup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcStorageSpec>,
    /// An S3-compatible bucket: trial N uses `s3://<bucket>/<prefix>/trials/N/checkpoint`
    /// and `.../artifact` (the trainer writes through the object_store crate; a custom
    /// trainer reads the URLs from NASOP_CHECKPOINT_DIR and NASOP_ARTIFACT_DIR and the
    /// AWS_* variables nasop sets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3StorageSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3StorageSpec {
    /// The bucket's name.
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// The key prefix this experiment's runs go under (default: `<namespace>/<name>`),
    /// without a leading '/' or "..". Each run (the object's UID) has its own:
    /// `<prefix>/<uid>/trials/<index>/{checkpoint,artifact}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub prefix: Option<String>,
    /// The S3 API's URL for an S3-compatible store, e.g. http://s3.storage.svc:9000
    /// (default: AWS). An http:// endpoint is allowed without TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub endpoint: Option<String>,
    /// The bucket's region (AWS_REGION in the trial pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
    /// A Secret in the experiment's namespace with the keys AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY, given to the trial pods as those variables. Without it the
    /// trainer finds credentials as the AWS SDKs do (for example a service account's web
    /// identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcStorageSpec {
    /// The claim's name.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// The directory in the claim this experiment's runs go under (default:
    /// `<namespace>/<name>`), a relative path without "..". Each run (the object's UID) has
    /// its own: `<subPath>/<uid>/trials/<index>/{checkpoint,artifact}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub sub_path: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WarmStartSpec {
    /// Names of NasExperiments in this namespace (for `nasop run`: run directories under
    /// --runs-dir, or paths to them).
    #[schemars(length(min = 1, max = 16))]
    pub experiments: Vec<String>,
}

/// The pod template is validated by the API server when nasop creates each pod; embedding
/// the whole PodSpec schema here would add ~500 KB to the CRD and tie it to one
/// Kubernetes version.
fn pod_template_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "A core/v1 PodTemplateSpec (metadata and spec).",
        "x-kubernetes-preserve-unknown-fields": true,
        "x-kubernetes-embedded-resource": false,
    })
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectiveSpec {
    /// The metric's name as trials report it, e.g. val_accuracy, latency_ms.
    #[schemars(length(min = 1, max = 63))]
    pub metric: String,
    /// Whether larger or smaller is better.
    pub goal: Goal,
    /// The experiment ends as soon as one trial reaches the target of every objective that
    /// has one (and meets the constraints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Goal {
    Maximize,
    Minimize,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.min) || has(self.max)").message("a constraint needs min, max or both"))]
#[x_kube(validation = Rule::new("!has(self.min) || !has(self.max) || self.min <= self.max").message("min must not be above max"))]
pub struct ConstraintSpec {
    /// The metric's name as trials report it, e.g. params, flops, latency_ms.
    #[schemars(length(min = 1, max = 63))]
    pub metric: String,
    /// Smallest allowed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest allowed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// A cell space, a layer-wise space, hyperparameters, or an architecture space together
/// with hyperparameters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.cell) && has(self.layers))").message("give either cell or layers, not both"))]
#[x_kube(validation = Rule::new("has(self.cell) || has(self.layers) || size(self.hyperparameters) > 0").message("the search space is empty: give cell, layers or hyperparameters"))]
pub struct SearchSpaceSpec {
    /// A DAG cell whose every edge picks one operation, stacked into the trainer's
    /// skeleton (NAS-Bench-201: nodes 4 and its five operations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<CellSpec>,
    /// A layer-wise (macro) space: each layer picks an operation and a width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub layers: Option<Vec<LayerSpec>>,
    /// Hyperparameters searched together with the architecture (or alone).
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub hyperparameters: Vec<HyperparameterSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CellSpec {
    /// Nodes of the cell, input and output included.
    #[schemars(range(min = 2, max = 12))]
    pub nodes: u32,
    /// The operations an edge may take; `none` removes the edge and `skip_connect` is the
    /// identity. The trainer knows none, skip_connect, nor_conv_1x1, nor_conv_3x3,
    /// avg_pool_3x3.
    #[schemars(length(min = 1, max = 16))]
    pub operations: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LayerSpec {
    #[schemars(length(min = 1, max = 16))]
    pub operations: Vec<String>,
    /// Output channels to choose from.
    #[schemars(length(min = 1, max = 16))]
    pub widths: Vec<u32>,
}

/// Exactly one of int, float and categorical.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.int) ? 1 : 0) + (has(self.float) ? 1 : 0) + (has(self.categorical) ? 1 : 0) == 1").message("give exactly one of int, float, categorical"))]
pub struct HyperparameterSpec {
    /// The name the trial receives it under, e.g. learning_rate.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int: Option<IntRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub float: Option<FloatRange>,
    /// Values to choose from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub categorical: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("self.min <= self.max").message("min must not be above max"))]
pub struct IntRange {
    pub min: i64,
    pub max: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("self.min <= self.max").message("min must not be above max"))]
#[x_kube(validation = Rule::new("!has(self.log) || !self.log || self.min > 0.0").message("a log scale needs min above 0"))]
pub struct FloatRange {
    pub min: f64,
    pub max: f64,
    /// Sample and mutate on a log scale (learning rates, weight decay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StrategySpec {
    /// random, grid, evolution, local, reinforce, bayesian or nsga2.
    pub algorithm: Algorithm,
    /// Seeds the strategy and every trial's training; the same seed and results give the
    /// same search.
    #[serde(default)]
    #[schemars(range(min = 0, max = 9007199254740991u64))]
    pub seed: u64,
    /// Algorithm settings; each algorithm reads only its own and rejects the others.
    #[serde(default, skip_serializing_if = "StrategySettings::is_empty")]
    pub settings: StrategySettings,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StrategySettings {
    /// evolution, nsga2: population size (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 10000))]
    pub population: Option<u32>,
    /// evolution: tournament size, at most the population (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub sample_size: Option<u32>,
    /// bayesian: random trials before the model guides the search (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub initial_samples: Option<u32>,
    /// bayesian: candidates scored per proposal (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub candidates: Option<u32>,
    /// reinforce: policy learning rate (default 0.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 10.0))]
    pub learning_rate: Option<f64>,
    /// reinforce: decay of the moving reward baseline, in [0, 1) (default 0.9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 0.999))]
    pub baseline_decay: Option<f64>,
}

impl StrategySettings {
    pub fn is_empty(&self) -> bool {
        self == &StrategySettings::default()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minEpochs <= self.maxEpochs").message("minEpochs must not be above maxEpochs"))]
pub struct FidelitySpec {
    /// asha, successiveHalving or hyperband.
    pub algorithm: FidelityKind,
    /// Epochs of the first rung.
    #[schemars(range(min = 1, max = 100000))]
    pub min_epochs: u32,
    /// Epochs of the last rung (a fully trained candidate).
    #[schemars(range(min = 1, max = 100000))]
    pub max_epochs: u32,
    /// Rungs grow by this factor and the best 1/reductionFactor of a rung is promoted
    /// (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.1, max = 100.0))]
    pub reduction_factor: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EarlyStoppingSpec {
    /// medianStop: stop a trial whose best value so far is below the median of finished
    /// trials' running averages at the same step.
    pub algorithm: EarlyStoppingAlgorithm,
    /// Finished trials needed before any trial is stopped (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub min_trials: Option<u32>,
    /// The first step (epoch) at which a trial may be stopped (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub start_step: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum EarlyStoppingAlgorithm {
    MedianStop,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetSpec {
    /// Trials to run in all (promotions to a larger budget count as trials).
    #[schemars(range(min = 1, max = 100000))]
    pub max_trials: u32,
    /// Trials running at once (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 10000))]
    pub parallelism: u32,
    /// The experiment fails once more trials than this have failed (default 3). Pods lost
    /// to eviction or node loss are retried and do not count.
    #[serde(default = "three")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_failed_trials: u32,
    /// Epochs a trial trains for (outside a fidelity schedule; default 10).
    #[serde(default = "ten")]
    #[schemars(range(min = 1, max = 100000))]
    pub trial_epochs: u32,
    /// A trial running longer than this is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31536000))]
    pub trial_timeout_seconds: Option<u64>,
    /// The experiment stops all trials and ends this long after it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31536000))]
    pub deadline_seconds: Option<u64>,
    /// On Kubernetes: a trial whose pod has not started this long after it was created
    /// (unschedulable, an image that cannot be pulled, a missing ConfigMap) fails with
    /// reason PendingTimeout and the pod's own reason. Default 900: long enough for a
    /// cluster autoscaler to add a GPU node and for it to pull a large image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31536000))]
    pub pending_timeout_seconds: Option<u64>,
}

/// The pending timeout when `budget.pendingTimeoutSeconds` is not set.
pub const DEFAULT_PENDING_TIMEOUT_SECONDS: u64 = 900;

fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}
fn ten() -> u32 {
    10
}

/// The observed state of a NasExperiment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NasExperimentStatus {
    /// Pending, Running, Training (spec.finalTraining, after the search), Succeeded or
    /// Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ExperimentPhase>,
    /// The nasop installation that runs this experiment (`<lease namespace>/<lease name>`
    /// of its operator): another installation that watches this namespace too leaves it
    /// alone. The annotation nasop.dev/controller, when set, names the one that may run it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub trials: TrialCounts,
    /// done/running/total, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// The first objective's value of the best trial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_trial: Option<TrialSummary>,
    /// Non-dominated trials when there are several objectives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pareto_front: Vec<TrialSummary>,
    /// With spec.finalTraining, once the search has ended: each chosen candidate's results
    /// over its seeds. Then bestTrial is the winner's best final-training trial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_training: Option<FinalTrainingStatus>,
    /// GPU-seconds used by trial pods (requested GPUs times running time).
    #[serde(default)]
    pub gpu_seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ExperimentPhase {
    Pending,
    Running,
    /// The search has ended; its best candidates are trained again (spec.finalTraining).
    Training,
    Succeeded,
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FinalTrainingStatus {
    /// The chosen candidates, the search's best first.
    #[serde(default)]
    pub candidates: Vec<FinalCandidateStatus>,
    /// The rank of the candidate with the best mean of the first objective, once one has a
    /// succeeded final-training trial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FinalCandidateStatus {
    /// 1 for the search's best.
    pub rank: u32,
    /// The candidate (architecture string, then `;name=value` hyperparameters).
    pub candidate: String,
    /// The search trial that chose it.
    pub search_trial: String,
    /// Its final-training trials: created, and succeeded.
    pub trials: u32,
    pub succeeded: u32,
    /// Every metric of its succeeded final-training trials: mean, sample standard
    /// deviation and count.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, MetricSpread>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
pub struct MetricSpread {
    pub mean: f64,
    pub std: f64,
    pub count: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrialCounts {
    pub created: u32,
    pub pending: u32,
    pub running: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub stopped: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrialSummary {
    /// The NasTrial's name.
    pub name: String,
    pub index: u32,
    /// The candidate (architecture string, then `;name=value` hyperparameters).
    pub candidate: String,
    pub epochs: u32,
    pub metrics: BTreeMap<String, f64>,
    /// Where the trial's final model is (`pvc://<claim>/<path>` or `s3://<bucket>/<key>`),
    /// with spec.storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
}
