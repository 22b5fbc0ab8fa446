//! A trial's pod: built from the experiment's `trialTemplate` with the trial contract
//! injected, and read back into what happened to it. Pure functions.

use crate::api::{StorageSpec, TemplateMetadata, WrapSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, PersistentVolumeClaimVolumeSource, Pod,
    PodSecurityContext, PodSpec, PodStatus, PodTemplateSpec, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;
use nasop_core::contract::{self, Report, RunEnd, TrialInput};
use std::collections::BTreeMap;

pub const LABEL_EXPERIMENT: &str = "nasop.dev/experiment";
pub const LABEL_TRIAL: &str = "nasop.dev/trial";
pub const LABEL_ATTEMPT: &str = "nasop.dev/attempt";
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Kueue's queue label: a pod, JobSet or TrainJob that carries it waits until Kueue admits it.
pub const LABEL_QUEUE: &str = "kueue.x-k8s.io/queue-name";

/// The name of attempt `attempt` (from 1) of a trial's pod.
pub fn pod_name(trial: &str, attempt: u32) -> String {
    format!("{trial}-{attempt}")
}

/// The names attempt `attempt` of a trial's pod may have: its own, then, when another object
/// holds that one, the same with the start of the trial's UID, which nobody can take before
/// the trial exists. Pod names are predictable; a pod of the name that the trial does not
/// control never counts for it.
pub fn pod_names(trial: &str, attempt: u32, trial_uid: &str) -> [String; 2] {
    let own = pod_name(trial, attempt);
    let tag: String = trial_uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(5)
        .collect();
    let other = format!("{own}-{tag}");
    [own, other]
}

/// Why a trial template cannot run trials; the message names the field and the fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "spec.trialTemplate is required on Kubernetes: add a pod template whose first container runs the trainer, or spec.trialJobSet or spec.trialTrainJob for trials of several pods (see examples/)"
    )]
    Missing,
    #[error("{0}")]
    Group(String),
    #[error(
        "spec.trialTemplate.spec.containers is empty: add the trial container (image and command)"
    )]
    NoContainer,
    #[error("spec.trialTemplate.spec.containers[0].image is missing: name the trainer image")]
    NoImage,
    #[error(
        "spec.trialTemplate.spec.restartPolicy is {0:?}: use \"Never\" (nasop retries lost pods itself and a failed trainer is a failed trial)"
    )]
    RestartPolicy(String),
}

/// Checks that a template can run trials.
pub fn check_template(template: Option<&PodTemplateSpec>) -> Result<(), TemplateError> {
    let spec = template
        .and_then(|t| t.spec.as_ref())
        .ok_or(TemplateError::Missing)?;
    let first = spec.containers.first().ok_or(TemplateError::NoContainer)?;
    if first.image.as_deref().unwrap_or("").is_empty() {
        return Err(TemplateError::NoImage);
    }
    if let Some(p) = spec.restart_policy.as_deref()
        && p != "Never"
    {
        return Err(TemplateError::RestartPolicy(p.to_string()));
    }
    Ok(())
}

/// GPUs a pod from this template requests (the sum of its containers' nvidia.com/gpu limits,
/// or requests where no limit is set).
pub fn gpus(template: Option<&PodTemplateSpec>) -> f64 {
    let Some(spec) = template.and_then(|t| t.spec.as_ref()) else {
        return 0.0;
    };
    spec.containers
        .iter()
        .filter_map(|c| c.resources.as_ref())
        .map(|r| {
            let q = r
                .limits
                .as_ref()
                .and_then(|l| l.get(GPU_RESOURCE))
                .or_else(|| r.requests.as_ref().and_then(|l| l.get(GPU_RESOURCE)));
            q.and_then(|q| q.0.parse::<f64>().ok()).unwrap_or(0.0)
        })
        .sum()
}

/// Everything a trial's pods are made from, besides the template they are made from.
pub struct PodInput<'a> {
    pub namespace: &'a str,
    pub experiment: &'a str,
    pub experiment_uid: &'a str,
    pub trial: &'a str,
    pub trial_uid: &'a str,
    pub attempt: u32,
    pub input: &'a TrialInput,
    pub report_url: &'a str,
    /// spec.storage: where checkpoints and models go.
    pub storage: Option<&'a StorageSpec>,
    /// spec.wrap, and the image whose `/nasop` the init container copies.
    pub wrap: Option<(&'a WrapSpec, &'a str)>,
}

/// Where a wrapped trial's pod (spec.wrap) finds nasop: an emptyDir the init container
/// `nasop-wrap` copies the operator image's static binary into.
pub const WRAP_MOUNT: &str = "/nasop-wrap";
const WRAP_VOLUME: &str = "nasop-wrap";

/// Where the trial's report token (a projected service-account token for the audience
/// `nasop.dev`, bound to the pod, rotated by the kubelet) is mounted.
pub const TOKEN_MOUNT: &str = "/var/run/secrets/nasop.dev/report";
const TOKEN_VOLUME: &str = "nasop-report-token";
/// The token's lifetime: the shortest the API server allows; the kubelet renews it at 80%.
const TOKEN_SECONDS: i64 = 600;

/// Where spec.storage's claim is mounted in a trial pod.
pub const STORAGE_MOUNT: &str = "/var/lib/nasop/storage";
/// The volume's name in the pod.
const STORAGE_VOLUME: &str = "nasop-storage";

/// One run of an experiment: the object, by namespace, name and UID.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    pub namespace: &'a str,
    pub experiment: &'a str,
    pub uid: &'a str,
}

impl Run<'_> {
    /// The run's directory under `base` (the prefix or sub-path the spec gives), or under
    /// `<namespace>/<experiment>`: always ending in the object's UID, so that two
    /// experiments of one name (in two namespaces that share a bucket, or deleted and applied
    /// again) never read or overwrite each other's checkpoints and models.
    fn dir(&self, base: Option<&str>) -> String {
        match base {
            Some(base) => format!("{}/{}", base.trim_end_matches('/'), self.uid),
            None => format!("{}/{}/{}", self.namespace, self.experiment, self.uid),
        }
    }
}

/// Trial `index`'s directory in the claim (relative to its root), or its URL in the
/// bucket.
pub fn trial_dir(storage: &StorageSpec, run: &Run, index: u32) -> String {
    match (&storage.persistent_volume_claim, &storage.s3) {
        (_, Some(s3)) => format!(
            "s3://{}/{}/trials/{index}",
            s3.bucket,
            run.dir(s3.prefix.as_deref())
        ),
        (Some(pvc), None) => format!("{}/trials/{index}", run.dir(pvc.sub_path.as_deref())),
        (None, None) => format!("{}/trials/{index}", run.dir(None)),
    }
}

/// An environment variable's value, or a key of a Secret.
enum Value {
    Plain(String),
    Secret { name: String, key: &'static str },
}

impl Value {
    fn env_var(self, name: &str) -> EnvVar {
        match self {
            Value::Plain(value) => EnvVar {
                name: name.into(),
                value: Some(value),
                value_from: None,
            },
            Value::Secret { name: secret, key } => EnvVar {
                name: name.into(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret,
                        key: key.into(),
                        optional: None,
                    }),
                    ..EnvVarSource::default()
                }),
            },
        }
    }
}

/// The trial contract's storage variables for trial `index` (continuing `resume_from`):
/// its checkpoint and model directories (in the claim, or URLs in the bucket), its
/// parent's checkpoint, and for a bucket its endpoint, region and credentials.
fn storage_env(
    storage: &StorageSpec,
    run: &Run,
    index: u32,
    resume_from: Option<u32>,
) -> Vec<(&'static str, Value)> {
    let dir = |i: u32| match &storage.s3 {
        Some(_) => trial_dir(storage, run, i),
        None => format!("{STORAGE_MOUNT}/{}", trial_dir(storage, run, i)),
    };
    let mut env = vec![
        (
            contract::ENV_CHECKPOINT_DIR,
            Value::Plain(format!("{}/checkpoint", dir(index))),
        ),
        (
            contract::ENV_ARTIFACT_DIR,
            Value::Plain(format!("{}/artifact", dir(index))),
        ),
    ];
    if let Some(parent) = resume_from {
        env.push((
            contract::ENV_RESUME_FROM,
            Value::Plain(format!("{}/checkpoint", dir(parent))),
        ));
    }
    if let Some(s3) = &storage.s3 {
        if let Some(endpoint) = &s3.endpoint {
            env.push(("AWS_ENDPOINT", Value::Plain(endpoint.clone())));
            if endpoint.starts_with("http://") {
                env.push(("AWS_ALLOW_HTTP", Value::Plain("true".into())));
            }
        }
        if let Some(region) = &s3.region {
            env.push(("AWS_REGION", Value::Plain(region.clone())));
        }
        if let Some(secret) = &s3.credentials_secret {
            for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
                env.push((
                    key,
                    Value::Secret {
                        name: secret.clone(),
                        key,
                    },
                ));
            }
        }
    }
    env
}

/// A path the trial reported inside its pod, as a user finds it: `pvc://<claim>/<path>`
/// for a path in spec.storage's claim, else as reported (a bucket's URL already is).
pub fn storage_url(storage: Option<&StorageSpec>, reported: &str) -> String {
    match (
        storage.and_then(|s| s.persistent_volume_claim.as_ref()),
        reported.strip_prefix(STORAGE_MOUNT),
    ) {
        (Some(pvc), Some(rest)) => {
            format!("pvc://{}/{}", pvc.claim_name, rest.trim_start_matches('/'))
        }
        _ => reported.to_string(),
    }
}

/// The pod for one attempt of a trial: the template as written, plus the trial contract in
/// the first container's environment (its report token as a projected volume), our labels,
/// an owner reference to the NasTrial, `restartPolicy: Never`, and the restricted Pod
/// Security Standard's settings wherever the template does not say otherwise.
pub fn build(p: &PodInput, template: &PodTemplateSpec) -> Pod {
    let (mut meta, spec) = trial_pod(p, template, Vec::new());
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(p.trial, p.attempt)),
            namespace: Some(p.namespace.into()),
            labels: meta.labels.take(),
            annotations: meta.annotations.take(),
            owner_references: Some(vec![OwnerReference {
                api_version: "nasop.dev/v1alpha1".into(),
                kind: "NasTrial".into(),
                name: p.trial.into(),
                uid: p.trial_uid.into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// A pod template of a trial's attempt, as its pods run: the template's metadata with our
/// labels, and its spec with `restartPolicy: Never`, the storage and token volumes, the
/// restricted settings, and the trial contract (plus `env`, where the container does not
/// set those variables itself) in the first container.
pub fn trial_pod(
    p: &PodInput,
    template: &PodTemplateSpec,
    env: Vec<EnvVar>,
) -> (ObjectMeta, PodSpec) {
    let template = template.clone();
    let mut meta = template.metadata.unwrap_or_default();
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(LABEL_EXPERIMENT.into(), p.experiment.into());
    labels.insert(LABEL_TRIAL.into(), p.trial.into());
    labels.insert(LABEL_ATTEMPT.into(), p.attempt.to_string());
    let mut spec = template.spec.unwrap_or_default();
    spec.restart_policy = Some("Never".into());
    let claim = p.storage.and_then(|s| s.persistent_volume_claim.as_ref());
    if let Some(claim) = claim {
        mount_claim_volume(&mut spec, &claim.claim_name);
    }
    token_volume(&mut spec);
    if let Some((w, image)) = p.wrap {
        wrap(&mut spec, w, image);
    }
    restrict(&mut spec);
    if let Some(c) = spec.containers.first_mut() {
        inject_contract(c, p, claim.is_some());
        let env_of = c.env.get_or_insert_with(Vec::new);
        for e in env {
            if !env_of.iter().any(|x| x.name == e.name) {
                env_of.push(e);
            }
        }
    }
    (meta, spec)
}

/// A trial's object of kind `(group, version, kind)` named `name`: the template's labels
/// with ours, its annotations, the trial as its controller, and `spec`.
pub fn trial_object(
    p: &PodInput,
    (group, version, kind): (&str, &str, &str),
    name: &str,
    meta: TemplateMetadata,
    spec: serde_json::Value,
) -> serde_json::Value {
    let mut labels = meta.labels;
    labels.insert(LABEL_EXPERIMENT.into(), p.experiment.into());
    labels.insert(LABEL_TRIAL.into(), p.trial.into());
    labels.insert(LABEL_ATTEMPT.into(), p.attempt.to_string());
    serde_json::json!({
        "apiVersion": format!("{group}/{version}"),
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": p.namespace,
            "labels": labels,
            "annotations": meta.annotations,
            "ownerReferences": [{
                "apiVersion": "nasop.dev/v1alpha1",
                "kind": "NasTrial",
                "name": p.trial,
                "uid": p.trial_uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": spec,
    })
}

/// The trial contract in parts, for pods whose template nasop does not write (a TrainJob's,
/// from its runtime): our labels, the trainer container's environment and volume mounts,
/// and the pod's volumes (the report token's, and spec.storage's claim).
pub struct ContractParts {
    pub labels: BTreeMap<String, String>,
    pub env: Vec<EnvVar>,
    pub mounts: Vec<VolumeMount>,
    pub volumes: Vec<Volume>,
}

pub fn contract_parts(p: &PodInput) -> ContractParts {
    let template = PodTemplateSpec {
        metadata: None,
        spec: Some(PodSpec {
            containers: vec![Container::default()],
            ..PodSpec::default()
        }),
    };
    let (meta, spec) = trial_pod(p, &template, Vec::new());
    let c = spec.containers.into_iter().next().unwrap_or_default();
    ContractParts {
        labels: meta.labels.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        mounts: c.volume_mounts.unwrap_or_default(),
        volumes: spec.volumes.unwrap_or_default(),
    }
}

/// Adds `volume` to the pod, in place of one of its name.
fn put_volume(spec: &mut PodSpec, volume: Volume) {
    let mut volumes: Vec<Volume> = spec
        .volumes
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|v| v.name != volume.name)
        .collect();
    volumes.push(volume);
    spec.volumes = Some(volumes);
}

/// spec.wrap in a pod: an emptyDir, an init container that copies nasop into it from
/// `image` (the operator's own, static, so that it runs in any Linux image), and the first
/// container's command and args run under `nasop wrap`. The Argo emissary's way: nothing
/// runs beside the trial, and the user's image is used as it is.
fn wrap(spec: &mut PodSpec, w: &WrapSpec, image: &str) {
    let Some(c) = spec.containers.first_mut() else {
        return;
    };
    let mut command = vec![format!("{WRAP_MOUNT}/nasop")];
    command.extend(w.args());
    command.extend(c.command.take().unwrap_or_default());
    command.extend(c.args.take().unwrap_or_default());
    c.command = Some(command);
    let mut mounts: Vec<VolumeMount> = c
        .volume_mounts
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.name != WRAP_VOLUME && m.mount_path != WRAP_MOUNT)
        .collect();
    let mount = VolumeMount {
        name: WRAP_VOLUME.into(),
        mount_path: WRAP_MOUNT.into(),
        ..VolumeMount::default()
    };
    mounts.push(VolumeMount {
        read_only: Some(true),
        ..mount.clone()
    });
    c.volume_mounts = Some(mounts);
    put_volume(
        spec,
        Volume {
            name: WRAP_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    );
    // Small and bounded, requests equal to limits: an init container's resources count only
    // while it runs, and a namespace that demands limits (a ResourceQuota) admits it.
    let quantity = |q: &str| k8s_openapi::apimachinery::pkg::api::resource::Quantity(q.into());
    let resources: BTreeMap<String, _> = BTreeMap::from([
        ("cpu".into(), quantity("100m")),
        ("memory".into(), quantity("64Mi")),
    ]);
    let init = Container {
        name: WRAP_VOLUME.into(),
        image: Some(image.into()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec![
            "/nasop".into(),
            "copy-self".into(),
            format!("{WRAP_MOUNT}/nasop"),
        ]),
        volume_mounts: Some(vec![mount]),
        resources: Some(ResourceRequirements {
            requests: Some(resources.clone()),
            limits: Some(resources),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    };
    let inits = spec.init_containers.get_or_insert_with(Vec::new);
    inits.retain(|c| c.name != WRAP_VOLUME);
    inits.insert(0, init);
    // The kubelet's grace must outlast the wrapper's, or a deleted pod's command is killed
    // before the wrapper writes its final report.
    let grace = i64::from(w.stop_grace_seconds.unwrap_or(20)) + 10;
    let pod_grace = spec.termination_grace_period_seconds.get_or_insert(30);
    *pod_grace = (*pod_grace).max(grace);
}

/// The report token's projected volume (replacing one of that name).
fn token_volume(spec: &mut PodSpec) {
    put_volume(
        spec,
        Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(contract::REPORT_AUDIENCE.into()),
                        expiration_seconds: Some(TOKEN_SECONDS),
                        path: "token".into(),
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        },
    );
}

/// The restricted Pod Security Standard, where the template leaves a setting out: no API
/// token unless asked for, RuntimeDefault seccomp, a non-root user, no privilege escalation,
/// no capabilities. A template that sets any of these keeps its own; one that asks for root
/// (runAsUser 0, for the pod or a container: an init container that chowns a volume) gets
/// neither runAsNonRoot nor, in that container, the dropped capabilities.
fn restrict(spec: &mut PodSpec) {
    spec.automount_service_account_token.get_or_insert(false);
    let root = |sc: Option<&SecurityContext>| sc.and_then(|s| s.run_as_user) == Some(0);
    let asks_root = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| root(c.security_context.as_ref()));
    let pod = spec
        .security_context
        .get_or_insert_with(PodSecurityContext::default);
    if pod.run_as_user != Some(0) && !asks_root {
        pod.run_as_non_root.get_or_insert(true);
    }
    pod.seccomp_profile.get_or_insert_with(|| SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    });
    let containers = spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten());
    for c in containers {
        let sc = c
            .security_context
            .get_or_insert_with(SecurityContext::default);
        if sc.privileged != Some(true) {
            sc.allow_privilege_escalation.get_or_insert(false);
            if sc.run_as_user != Some(0) {
                sc.capabilities.get_or_insert_with(|| Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    add: None,
                });
            }
        }
    }
}

/// The storage claim as the pod's storage volume (replacing one of that name).
fn mount_claim_volume(spec: &mut PodSpec, claim_name: &str) {
    put_volume(
        spec,
        Volume {
            name: STORAGE_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name.to_string(),
                read_only: None,
            }),
            ..Volume::default()
        },
    );
}

/// The trial contract into the trainer container: its environment (replacing variables of
/// the same names), the storage mount when there is a claim, and a termination message
/// policy that leaves a reason when the trainer dies without writing its result.
fn inject_contract(c: &mut Container, p: &PodInput, mount_storage: bool) {
    let mut ours = vec![
        (
            contract::ENV_TRIAL,
            Value::Plain(serde_json::to_string(p.input).expect("trial input serialises")),
        ),
        (
            contract::ENV_REPORT_URL,
            Value::Plain(p.report_url.to_string()),
        ),
        (
            contract::ENV_REPORT_TOKEN_FILE,
            Value::Plain(format!("{TOKEN_MOUNT}/token")),
        ),
    ];
    if let Some(storage) = p.storage {
        let run = Run {
            namespace: p.namespace,
            experiment: p.experiment,
            uid: p.experiment_uid,
        };
        ours.extend(storage_env(
            storage,
            &run,
            p.input.index,
            p.input.resume_from,
        ));
    }
    let mut mounts: Vec<VolumeMount> = c
        .volume_mounts
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| {
            ![STORAGE_VOLUME, TOKEN_VOLUME].contains(&m.name.as_str())
                && ![STORAGE_MOUNT, TOKEN_MOUNT].contains(&m.mount_path.as_str())
        })
        .collect();
    mounts.push(VolumeMount {
        name: TOKEN_VOLUME.into(),
        mount_path: TOKEN_MOUNT.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    if mount_storage {
        mounts.push(VolumeMount {
            name: STORAGE_VOLUME.into(),
            mount_path: STORAGE_MOUNT.into(),
            ..VolumeMount::default()
        });
    }
    c.volume_mounts = Some(mounts);
    let mut env: Vec<EnvVar> = c
        .env
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !ours.iter().any(|(n, _)| *n == e.name))
        .collect();
    env.extend(ours.into_iter().map(|(name, value)| value.env_var(name)));
    c.env = Some(env);
    c.termination_message_policy
        .get_or_insert_with(|| "FallbackToLogsOnError".into());
}

/// What a trial's pod says about the trial.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Not scheduled or not started yet: why, when the scheduler or the kubelet said
    /// (Unschedulable, ImagePullBackOff, CreateContainerConfigError, ...).
    Waiting(Waiting),
    Running {
        started_at: Option<f64>,
    },
    /// The container exited 0; the termination message's report, if it held one.
    Succeeded {
        report: Option<Report>,
        started_at: Option<f64>,
        finished_at: Option<f64>,
    },
    /// The trainer failed: this counts against maxFailedTrials.
    Failed {
        message: String,
        started_at: Option<f64>,
        finished_at: Option<f64>,
    },
    /// The pod was lost to eviction, preemption, node shutdown or deletion: retried.
    Lost(String),
    /// Being deleted (by us, or by something else); it counts as lost after this many
    /// more seconds (its node no longer answers).
    Terminating(Option<f64>),
}

/// Why a pod has not started.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Waiting {
    /// A CamelCase reason: the container's waiting reason, or Unschedulable.
    pub reason: Option<String>,
    pub message: Option<String>,
    /// When the pod was created (seconds).
    pub since: Option<f64>,
}

impl Waiting {
    /// `Reason: message`, or whichever of the two there is.
    pub fn describe(&self) -> Option<String> {
        match (&self.reason, &self.message) {
            (Some(r), Some(m)) => Some(format!("{r}: {m}")),
            (Some(r), None) => Some(r.clone()),
            (None, m) => m.clone(),
        }
    }

    /// Whether the trial should fail now rather than wait out the pending timeout: an image
    /// the kubelet failed to pull more than once (it backs off), a name that is no image
    /// name, or an image that runs as root where the pod asks for non-root.
    pub fn is_hopeless(&self) -> bool {
        match self.reason.as_deref() {
            Some("ImagePullBackOff" | "InvalidImageName") => true,
            Some("CreateContainerConfigError") => self
                .message
                .as_deref()
                .is_some_and(|m| m.contains("runAsNonRoot")),
            _ => false,
        }
    }

    /// Whether waiting longer cannot help without a change by a person: an image that
    /// cannot be pulled, a missing ConfigMap or Secret.
    pub fn is_config_error(&self) -> bool {
        matches!(
            self.reason.as_deref(),
            Some(
                "ErrImagePull"
                    | "ImagePullBackOff"
                    | "InvalidImageName"
                    | "CreateContainerConfigError"
                    | "CreateContainerError"
            )
        )
    }
}

/// Container waiting reasons that are only the normal way to start.
const STARTING: &[&str] = &["ContainerCreating", "PodInitializing"];

/// What a pod says at time `now`: [`outcome`], with a pod that is still terminating
/// `lost_after` seconds past its deletion time counted as lost (a node that stopped
/// answering keeps its pods terminating until the Node object is deleted).
pub fn outcome_at(pod: &Pod, now: f64, lost_after: f64) -> Outcome {
    match outcome(pod) {
        Outcome::Terminating(_) => {
            let Some(deleted) = pod.metadata.deletion_timestamp.as_ref() else {
                return Outcome::Terminating(None);
            };
            let gone_by = super::status::seconds(&deleted.0) + lost_after;
            if now >= gone_by {
                Outcome::Lost(format!(
                    "the pod was still terminating {:.0}s after its deletion time (its node does not answer)",
                    now - super::status::seconds(&deleted.0)
                ))
            } else {
                Outcome::Terminating(Some(gone_by - now + 0.05))
            }
        }
        other => other,
    }
}

/// Pod failure reasons that are the cluster's doing, not the trainer's.
const LOST_REASONS: &[&str] = &[
    "Evicted",
    "Preempting",
    "NodeLost",
    "Shutdown",
    "NodeShutdown",
    "Terminated",
    "UnexpectedAdmissionError",
    "OutOfcpu",
    "OutOfmemory",
    "OutOfpods",
];

pub fn outcome(pod: &Pod) -> Outcome {
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let first = status
        .container_statuses
        .as_ref()
        .and_then(|cs| cs.first())
        .cloned();
    let terminated = first
        .as_ref()
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone());
    let pod_started = status
        .start_time
        .as_ref()
        .map(|t| super::status::seconds(&t.0));
    let started_at = terminated
        .as_ref()
        .and_then(|t| t.started_at.as_ref())
        .map(|t| super::status::seconds(&t.0))
        .or(pod_started);
    let finished_at = terminated
        .as_ref()
        .and_then(|t| t.finished_at.as_ref())
        .map(|t| super::status::seconds(&t.0));
    let disrupted = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "DisruptionTarget" && c.status == "True");
    let report = terminated
        .as_ref()
        .and_then(|t| t.message.as_deref())
        .and_then(parse_report);
    if matches!(phase, "Succeeded" | "Failed")
        && let Some(why) = interrupted(pod, report.as_ref(), disrupted, finished_at)
    {
        return Outcome::Lost(why);
    }
    match phase {
        "Succeeded" => Outcome::Succeeded {
            report,
            started_at,
            finished_at,
        },
        "Failed" => failed(
            &status,
            terminated.as_ref(),
            disrupted,
            started_at,
            finished_at,
        ),
        _ if pod.metadata.deletion_timestamp.is_some() => Outcome::Terminating(None),
        "Running" => Outcome::Running {
            started_at: started_at.or(pod_started),
        },
        _ if queued(pod) => Outcome::Waiting(Waiting {
            reason: Some(QUEUED.into()),
            message: Some(format!(
                "pod {} waits in queue {}",
                pod.name_any(),
                pod.labels().get(LABEL_QUEUE).map_or("?", String::as_str)
            )),
            // Waiting in a queue is not waiting to start: no pending timeout runs.
            since: None,
        }),
        _ => Outcome::Waiting(waiting(pod, &status, first.as_ref())),
    }
}

/// The reason of a trial whose pod (or JobSet) waits in a Kueue queue.
pub const QUEUED: &str = "Queued";
/// The scheduling gate Kueue's webhook puts on a pod that names a queue, and lifts when
/// the queue admits it.
pub const KUEUE_GATE: &str = "kueue.x-k8s.io/admission";

/// Whether Kueue holds the pod in its queue (its admission gate is still on).
pub fn queued(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|gates| gates.iter().any(|g| g.name == KUEUE_GATE))
}

/// Why an ended pod's result is not the trial's, if it is not: its final report says the
/// run was interrupted; or, from a trainer that does not say, the cluster ended the pod
/// (the DisruptionTarget condition of an eviction, a preemption or a taint) or someone
/// deleted it while it ran. A final report that says the run completed (or stopped when
/// the search asked) stands, even when the pod was deleted after it ended.
fn interrupted(
    pod: &Pod,
    report: Option<&Report>,
    disrupted: bool,
    finished_at: Option<f64>,
) -> Option<String> {
    match report.and_then(|r| r.end) {
        Some(RunEnd::Interrupted) => {
            let step = report.map_or(0, |r| r.step);
            return Some(format!(
                "the trainer was interrupted after step {step}{}",
                if disrupted {
                    " (the pod was evicted or preempted)"
                } else {
                    ""
                }
            ));
        }
        Some(RunEnd::Completed | RunEnd::Stopped) => return None,
        None => {}
    }
    if disrupted {
        return Some("the pod was evicted or preempted before it ended".into());
    }
    let deleted = pod.metadata.deletion_timestamp.as_ref()?;
    let asked_at = super::status::seconds(&deleted.0)
        - pod.metadata.deletion_grace_period_seconds.unwrap_or(0) as f64;
    // Timestamps have whole seconds: an end in the second of the deletion counts as its
    // doing.
    match finished_at {
        Some(f) if f + 1.0 <= asked_at => None,
        _ => Some("the pod was deleted while it ran".into()),
    }
}

/// A failed pod: lost when the cluster ended it, else failed with the trainer's exit code
/// and the tail of what it said.
fn failed(
    status: &PodStatus,
    terminated: Option<&ContainerStateTerminated>,
    disrupted: bool,
    started_at: Option<f64>,
    finished_at: Option<f64>,
) -> Outcome {
    let reason = status.reason.clone().unwrap_or_default();
    if disrupted || LOST_REASONS.contains(&reason.as_str()) {
        let why = status.message.clone().unwrap_or(reason);
        return Outcome::Lost(if why.is_empty() {
            "the pod was disrupted".into()
        } else {
            why
        });
    }
    let message = match terminated {
        Some(t) => {
            let text = t.message.as_deref().unwrap_or("").trim();
            let tail: String = text
                .chars()
                .rev()
                .take(512)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!(
                "the trainer exited with code {}{}",
                t.exit_code,
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(": {tail}")
                }
            )
        }
        None => match wrap_init(status)
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .filter(|t| t.exit_code != 0)
        {
            Some(t) => format!(
                "the {WRAP_VOLUME} init container (spec.wrap) exited with code {}: {}",
                t.exit_code,
                t.message.as_deref().or(t.reason.as_deref()).unwrap_or("")
            ),
            None => status
                .message
                .clone()
                .unwrap_or_else(|| "the pod failed".into()),
        },
    };
    Outcome::Failed {
        message,
        started_at,
        finished_at,
    }
}

/// The status of spec.wrap's init container, if the pod has one.
fn wrap_init(status: &PodStatus) -> Option<&ContainerStatus> {
    status
        .init_container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == WRAP_VOLUME)
}

/// Why a pod that has not started waits: its container's waiting reason (past the normal
/// ones), else the scheduler's.
fn waiting(pod: &Pod, status: &PodStatus, first: Option<&ContainerStatus>) -> Waiting {
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| super::status::seconds(&t.0));
    // A pod that waited in a queue starts its pending time when the queue let it go: when
    // the scheduler's condition changed after its gate was lifted (until then, none runs).
    let scheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled");
    let since = match scheduled {
        _ if !pod.labels().contains_key(LABEL_QUEUE) => created,
        Some(c) if c.reason.as_deref() == Some("SchedulingGated") => None,
        Some(c) => c
            .last_transition_time
            .as_ref()
            .map(|t| super::status::seconds(&t.0))
            .map(|a| created.map_or(a, |c| c.max(a))),
        None => created,
    };
    let not_starting =
        |w: &&ContainerStateWaiting| !STARTING.contains(&w.reason.as_deref().unwrap_or(""));
    let container = first
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .filter(not_starting)
        .cloned()
        .or_else(|| {
            // spec.wrap's init container: its image is the operator's (--wrap-image).
            wrap_init(status)
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.waiting.as_ref())
                .filter(not_starting)
                .map(|w| ContainerStateWaiting {
                    reason: w.reason.clone(),
                    message: Some(format!(
                        "the {WRAP_VOLUME} init container (spec.wrap; the operator's --wrap-image, which this namespace must be able to pull): {}",
                        w.message.as_deref().unwrap_or("waiting")
                    )),
                })
        });
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    match (container, unscheduled) {
        (Some(w), _) => Waiting {
            reason: w.reason,
            message: w.message,
            since,
        },
        (None, Some(c)) => Waiting {
            reason: c.reason.clone().or(Some("Unschedulable".into())),
            message: c.message.clone(),
            since,
        },
        (None, None) => Waiting {
            since,
            ..Waiting::default()
        },
    }
}

/// A container's status as [`outcome`] reads it: its state alone.
fn strip_container(c: &mut ContainerStatus) {
    c.image = String::new();
    c.image_id = String::new();
    c.container_id = None;
    c.last_state = None;
    c.resources = None;
    c.allocated_resources = None;
    c.volume_mounts = None;
    c.user = None;
}

/// A report from a termination message (a contract report as JSON); None when the message
/// is not one (a trainer that does not write it, or fallback log lines).
pub fn parse_report(text: &str) -> Option<Report> {
    serde_json::from_str::<Report>(text.trim()).ok()
}

/// Drops what the operator never reads from a watched pod (its spec but the scheduling
/// gates, annotations, managed fields, all but the first container's state), so that
/// thousands of finished pods cost little memory. [`outcome`] reads the same from a
/// stripped pod as from the full one.
pub fn strip(p: &mut Pod) {
    p.metadata.managed_fields = None;
    p.metadata.annotations = None;
    p.spec = p
        .spec
        .take()
        .and_then(|s| s.scheduling_gates)
        .filter(|g| !g.is_empty())
        .map(|gates| PodSpec {
            scheduling_gates: Some(gates),
            ..Default::default()
        });
    if let Some(s) = p.status.as_mut() {
        s.pod_ips = None;
        s.host_ips = None;
        s.host_ip = None;
        s.pod_ip = None;
        // spec.wrap's init container says why a wrapped trial cannot start.
        if let Some(cs) = s.init_container_statuses.as_mut() {
            cs.retain(|c| c.name == WRAP_VOLUME);
            cs.iter_mut().for_each(strip_container);
        }
        s.init_container_statuses = s.init_container_statuses.take().filter(|c| !c.is_empty());
        s.ephemeral_container_statuses = None;
        if let Some(cs) = s.container_statuses.as_mut() {
            cs.truncate(1);
            cs.iter_mut().for_each(strip_container);
        }
    }
}

/// Whether the trial with this UID controls the pod.
pub fn owned_by(pod: &Pod, trial_uid: &str) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == trial_uid)
}

/// Our labels on a pod, for the trial it belongs to.
pub fn trial_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l: &BTreeMap<String, String>| l.get(LABEL_TRIAL))
        .map(String::as_str)
}

#[cfg(test)]
pub(crate) mod tests;
