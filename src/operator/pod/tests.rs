use super::*;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, PodCondition,
    PodStatus,
};

fn template() -> PodTemplateSpec {
    serde_yaml::from_str(
        r#"
metadata:
  labels: {team: vision}
  annotations: {note: kept}
spec:
  nodeSelector: {gpu: h100}
  tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
  volumes: [{name: data, emptyDir: {}}]
  containers:
    - name: trainer
      image: ghcr.io/nasop/nasop-trainer:dev
      env: [{name: NASOP_TRIAL, value: overwritten}, {name: KEEP, value: "1"}]
      resources: {limits: {nvidia.com/gpu: "2"}}
      volumeMounts: [{name: data, mountPath: /data}]
    - name: sidecar
      image: busybox
"#,
    )
    .unwrap()
}

fn input() -> TrialInput {
    TrialInput {
        experiment: "e".into(),
        trial: "e-3".into(),
        index: 3,
        seed: 1,
        candidate: "c".into(),
        architecture: None,
        hyperparameters: BTreeMap::new(),
        budget: contract::Budget { epochs: 4 },
        metrics: vec!["acc".into()],
        resume_from: None,
        stage: Default::default(),
    }
}

#[test]
fn the_pod_is_the_template_plus_the_contract() {
    let t = template();
    let i = input();
    let pod = build(&PodInput {
        template: &t,
        namespace: "ns",
        experiment: "e",
        trial: "e-3",
        trial_uid: "uid",
        attempt: 2,
        input: &i,
        report_url: "http://op/v1/report",
        token: "tok",
        storage: None,
    });
    assert_eq!(pod.metadata.name.as_deref(), Some("e-3-2"));
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["team"], "vision");
    assert_eq!(labels[LABEL_TRIAL], "e-3");
    assert_eq!(labels[LABEL_ATTEMPT], "2");
    assert_eq!(pod.metadata.annotations.as_ref().unwrap()["note"], "kept");
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("NasTrial", "uid", Some(true))
    );
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.node_selector.as_ref().unwrap()["gpu"], "h100");
    assert_eq!(spec.tolerations.as_ref().unwrap().len(), 1);
    assert_eq!(spec.volumes.as_ref().unwrap().len(), 1);
    let c = &spec.containers[0];
    assert_eq!(c.image.as_deref(), Some("ghcr.io/nasop/nasop-trainer:dev"));
    assert_eq!(
        c.resources,
        t.spec.as_ref().unwrap().containers[0].resources
    );
    let env: BTreeMap<_, _> = c
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.clone().unwrap()))
        .collect();
    assert_eq!(env["KEEP"], "1");
    assert_eq!(env[contract::ENV_REPORT_URL], "http://op/v1/report");
    assert_eq!(env[contract::ENV_REPORT_TOKEN], "tok");
    let sent: TrialInput = serde_json::from_str(&env[contract::ENV_TRIAL]).unwrap();
    assert_eq!(sent, i);
    assert_eq!(
        c.env
            .as_ref()
            .unwrap()
            .iter()
            .filter(|e| e.name == contract::ENV_TRIAL)
            .count(),
        1
    );
    assert!(
        spec.containers[1].env.is_none(),
        "only the first container gets the contract"
    );
    assert_eq!(gpus(Some(&t)), 2.0);
}

#[test]
fn templates_that_cannot_run_are_refused_with_the_field() {
    assert!(
        check_template(None)
            .unwrap_err()
            .to_string()
            .contains("spec.trialTemplate is required")
    );
    let mut t = template();
    t.spec.as_mut().unwrap().restart_policy = Some("OnFailure".into());
    assert!(
        check_template(Some(&t))
            .unwrap_err()
            .to_string()
            .contains("spec.trialTemplate.spec.restartPolicy")
    );
    t.spec.as_mut().unwrap().containers.clear();
    assert!(
        check_template(Some(&t))
            .unwrap_err()
            .to_string()
            .contains("containers is empty")
    );
    assert!(check_template(Some(&template())).is_ok());
}

fn pod_with(phase: &str, reason: Option<&str>, terminated: Option<(i32, &str)>) -> Pod {
    Pod {
        status: Some(PodStatus {
            phase: Some(phase.into()),
            reason: reason.map(Into::into),
            container_statuses: terminated.map(|(code, msg)| {
                vec![ContainerStatus {
                    name: "trainer".into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: code,
                            message: Some(msg.into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn pod_outcomes() {
    let ok = pod_with(
        "Succeeded",
        None,
        Some((0, r#"{"step":4,"metrics":{"acc":0.93}}"#)),
    );
    match outcome(&ok) {
        Outcome::Succeeded {
            report: Some(r), ..
        } => assert_eq!((r.step, r.metrics["acc"]), (4, 0.93)),
        o => panic!("{o:?}"),
    }
    // A trainer that writes no report still succeeded; its last progress report counts.
    assert!(matches!(
        outcome(&pod_with("Succeeded", None, Some((0, "")))),
        Outcome::Succeeded { report: None, .. }
    ));
    match outcome(&pod_with("Failed", None, Some((2, "CUDA out of memory")))) {
        Outcome::Failed { message, .. } => assert_eq!(
            message,
            "the trainer exited with code 2: CUDA out of memory"
        ),
        o => panic!("{o:?}"),
    }
    assert!(matches!(
        outcome(&pod_with("Failed", Some("Evicted"), None)),
        Outcome::Lost(_)
    ));
    let mut preempted = pod_with("Failed", None, Some((137, "")));
    preempted.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
        type_: "DisruptionTarget".into(),
        status: "True".into(),
        ..Default::default()
    }]);
    assert!(matches!(outcome(&preempted), Outcome::Lost(_)));
    let mut waiting = pod_with("Pending", None, None);
    waiting.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
        type_: "PodScheduled".into(),
        status: "False".into(),
        message: Some("0/3 nodes are available: 3 Insufficient nvidia.com/gpu.".into()),
        ..Default::default()
    }]);
    match outcome(&waiting) {
        Outcome::Waiting(w) => {
            assert_eq!(w.reason.as_deref(), Some("Unschedulable"));
            assert_eq!(
                w.describe().as_deref(),
                Some("Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
            );
            assert!(!w.is_config_error());
        }
        other => panic!("{other:?}"),
    }
    // A container that cannot start says why, and that waiting will not help.
    let mut pulling = pod_with("Pending", None, None);
    pulling.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
        name: "trainer".into(),
        state: Some(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ImagePullBackOff".into()),
                message: Some("Back-off pulling image \"nosuch:1\"".into()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    match outcome(&pulling) {
        Outcome::Waiting(w) => {
            assert_eq!(w.reason.as_deref(), Some("ImagePullBackOff"));
            assert!(w.is_config_error());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        outcome(&pod_with("Running", None, None)),
        Outcome::Running { .. }
    ));
}

#[test]
fn a_stripped_pod_says_the_same() {
    let mut ok = pod_with(
        "Succeeded",
        None,
        Some((0, r#"{"step":4,"metrics":{"acc":0.93}}"#)),
    );
    ok.spec = Some(template().spec.unwrap());
    let before = outcome(&ok);
    strip(&mut ok);
    assert!(ok.spec.is_none());
    assert_eq!(outcome(&ok), before);
}

#[test]
fn a_pod_terminating_past_its_deletion_time_is_lost() {
    let mut pod = pod_with("Running", None, None);
    pod.metadata.deletion_timestamp = Some(crate::operator::status::time(1000.0));
    // Within the allowance it is still on its way out, and says when to look again.
    assert_eq!(
        outcome_at(&pod, 1010.0, 30.0),
        Outcome::Terminating(Some(20.05))
    );
    // Past it, the node no longer answers: the trial's next attempt may start.
    assert!(matches!(outcome_at(&pod, 1031.0, 30.0), Outcome::Lost(_)));
}

/// Trial 3's pod with `storage`, continuing trial 1.
fn promoted_pod(storage: &StorageSpec) -> Pod {
    let mut i = input();
    i.resume_from = Some(1);
    build(&PodInput {
        template: &template(),
        namespace: "ns",
        experiment: "e",
        trial: "e-3",
        trial_uid: "uid",
        attempt: 1,
        input: &i,
        report_url: "http://op/v1/report",
        token: "tok",
        storage: Some(storage),
    })
}

#[test]
fn storage_mounts_the_claim_and_names_the_trials_directories() {
    let storage: StorageSpec =
        serde_yaml::from_str("persistentVolumeClaim: {claimName: nas-ckpt, subPath: runs/e}")
            .unwrap();
    let pod = promoted_pod(&storage);
    let spec = pod.spec.unwrap();
    let volumes = spec.volumes.unwrap();
    assert_eq!(volumes.len(), 2, "the template's volume is kept");
    let claim = volumes[1].persistent_volume_claim.as_ref().unwrap();
    assert_eq!(claim.claim_name, "nas-ckpt");
    let c = &spec.containers[0];
    let mounts = c.volume_mounts.as_ref().unwrap();
    assert_eq!(mounts.len(), 2);
    assert_eq!(mounts[1].mount_path, STORAGE_MOUNT);
    let env: BTreeMap<&str, &str> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        env[contract::ENV_CHECKPOINT_DIR],
        "/var/lib/nasop/storage/runs/e/trials/3/checkpoint"
    );
    assert_eq!(
        env[contract::ENV_ARTIFACT_DIR],
        "/var/lib/nasop/storage/runs/e/trials/3/artifact"
    );
    assert_eq!(
        env[contract::ENV_RESUME_FROM],
        "/var/lib/nasop/storage/runs/e/trials/1/checkpoint"
    );
    assert!(
        spec.containers[1].volume_mounts.is_none(),
        "only the trainer mounts it"
    );
    // What the trainer reports, as a user finds it.
    assert_eq!(
        storage_url(
            Some(&storage),
            "/var/lib/nasop/storage/runs/e/trials/3/artifact"
        ),
        "pvc://nas-ckpt/runs/e/trials/3/artifact"
    );
    assert_eq!(storage_url(None, "/tmp/model"), "/tmp/model");
    // The default directory is the experiment's name.
    let plain: StorageSpec = serde_yaml::from_str("persistentVolumeClaim: {claimName: c}").unwrap();
    assert_eq!(trial_dir(&plain, "e", 3), "e/trials/3");
}

#[test]
fn a_bucket_gives_urls_endpoint_and_secret_credentials_and_no_volume() {
    let storage: StorageSpec = serde_yaml::from_str(
        "s3: {bucket: nas-models, prefix: runs/e, endpoint: 'http://s3.local:9000', region: eu-west-1, credentialsSecret: s3-keys}",
    )
    .unwrap();
    let pod = promoted_pod(&storage);
    let spec = pod.spec.unwrap();
    assert_eq!(spec.volumes.unwrap().len(), 1, "no volume for a bucket");
    let c = &spec.containers[0];
    assert_eq!(
        c.volume_mounts.as_ref().unwrap().len(),
        1,
        "only the template's mount"
    );
    let env: BTreeMap<&str, &k8s_openapi::api::core::v1::EnvVar> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.as_str(), e))
        .collect();
    let value = |k: &str| env[k].value.as_deref().unwrap();
    assert_eq!(
        value(contract::ENV_CHECKPOINT_DIR),
        "s3://nas-models/runs/e/trials/3/checkpoint"
    );
    assert_eq!(
        value(contract::ENV_ARTIFACT_DIR),
        "s3://nas-models/runs/e/trials/3/artifact"
    );
    assert_eq!(
        value(contract::ENV_RESUME_FROM),
        "s3://nas-models/runs/e/trials/1/checkpoint"
    );
    assert_eq!(value("AWS_ENDPOINT"), "http://s3.local:9000");
    assert_eq!(value("AWS_ALLOW_HTTP"), "true");
    assert_eq!(value("AWS_REGION"), "eu-west-1");
    for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        let from = env[key].value_from.as_ref().unwrap();
        let secret = from.secret_key_ref.as_ref().unwrap();
        assert_eq!(
            (secret.name.as_str(), secret.key.as_str()),
            ("s3-keys", key)
        );
        assert!(
            env[key].value.is_none(),
            "credentials never in the pod spec"
        );
    }
    // The trainer reports the bucket's URL, kept as it is.
    assert_eq!(
        storage_url(Some(&storage), "s3://nas-models/runs/e/trials/3/artifact"),
        "s3://nas-models/runs/e/trials/3/artifact"
    );
}
