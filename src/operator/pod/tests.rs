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

/// Attempt `attempt` of trial e-3 (UID `uid`) of experiment e (UID `e-uid`) in namespace
/// ns.
fn built(
    template: &PodTemplateSpec,
    input: &TrialInput,
    attempt: u32,
    storage: Option<&StorageSpec>,
) -> Pod {
    build(&pod_input(input, attempt, storage), template)
}

/// Attempt `attempt` of trial e-3 (UID `uid`) of experiment e (UID `e-uid`) in namespace
/// ns, for the tests of every kind.
pub(crate) fn pod_input<'a>(
    input: &'a TrialInput,
    attempt: u32,
    storage: Option<&'a StorageSpec>,
) -> PodInput<'a> {
    PodInput {
        namespace: "ns",
        experiment: "e",
        experiment_uid: "e-uid",
        trial: "e-3",
        trial_uid: "uid",
        attempt,
        input,
        report_url: "http://op/v1/report",
        storage,
        wrap: None,
    }
}

/// A trial's input, for the tests of the kinds built on pods.
pub(crate) fn input() -> TrialInput {
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
    let pod = built(&t, &i, 2, None);
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
    // The template's volume, and the report token's: projected for nasop's audience, bound
    // to the pod, mounted read-only where NASOP_REPORT_TOKEN_FILE says.
    let volumes = spec.volumes.as_ref().unwrap();
    assert_eq!(volumes.len(), 2);
    let projected = volumes[1]
        .projected
        .as_ref()
        .unwrap()
        .sources
        .as_ref()
        .unwrap();
    let sa = projected[0].service_account_token.as_ref().unwrap();
    assert_eq!(
        (sa.audience.as_deref(), sa.path.as_str()),
        (Some("nasop.dev"), "token")
    );
    // The restricted Pod Security Standard, where the template says nothing.
    assert_eq!(spec.automount_service_account_token, Some(false));
    let psc = spec.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    for c in &spec.containers {
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
    }
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
    assert_eq!(
        env[contract::ENV_REPORT_TOKEN_FILE],
        "/var/run/secrets/nasop.dev/report/token"
    );
    assert!(!env.contains_key(contract::ENV_REPORT_TOKEN));
    let mounts = c.volume_mounts.as_ref().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m.mount_path == "/var/run/secrets/nasop.dev/report"
                && m.read_only == Some(true)),
        "{mounts:?}"
    );
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

/// spec.wrap: the command runs under the copied nasop, which an init container from the
/// operator's image puts in an emptyDir; the rest of the pod is as without it.
#[test]
fn a_wrapped_trial_runs_its_command_under_the_copied_nasop() {
    let mut t = template();
    let c = &mut t.spec.as_mut().unwrap().containers[0];
    c.command = Some(vec!["python".into(), "train.py".into()]);
    c.args = Some(vec!["--lr".into(), "{lr}".into()]);
    let w = WrapSpec {
        metrics_regex: Some(r"(\w+): ([\d.]+)".into()),
        ..WrapSpec::default()
    };
    let input = input();
    let mut p = pod_input(&input, 1, None);
    p.wrap = Some((&w, "registry.local/nasop:9"));
    let pod = build(&p, &t);
    let spec = pod.spec.unwrap();
    let trainer = &spec.containers[0];
    assert_eq!(
        trainer.command.as_ref().unwrap(),
        &[
            "/nasop-wrap/nasop",
            "wrap",
            r"--metrics-regex=(\w+): ([\d.]+)",
            "--",
            "python",
            "train.py",
            "--lr",
            "{lr}"
        ]
    );
    assert_eq!(trainer.args, None);
    let mount = trainer
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == WRAP_MOUNT)
        .unwrap();
    assert_eq!(mount.read_only, Some(true));
    // The contract is still the trainer's, and the other container is untouched.
    let env = trainer.env.as_ref().unwrap();
    assert!(env.iter().any(|e| e.name == contract::ENV_TRIAL));
    assert_eq!(spec.containers[1].command, None);
    let init = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.image.as_deref(), Some("registry.local/nasop:9"));
    assert_eq!(
        init.command.as_ref().unwrap(),
        &["/nasop", "copy-self", "/nasop-wrap/nasop"]
    );
    // It runs restricted like the rest, with bounded resources.
    let sc = init.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert!(init.resources.as_ref().unwrap().limits.is_some());
    let volume = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "nasop-wrap")
        .unwrap();
    assert!(volume.empty_dir.is_some());
    // The kubelet waits for the wrapper's grace (20 s by default) and its final report.
    assert_eq!(spec.termination_grace_period_seconds, Some(30));
    let long = WrapSpec {
        stop_grace_seconds: Some(60),
        ..WrapSpec::default()
    };
    p.wrap = Some((&long, "registry.local/nasop:9"));
    assert_eq!(
        build(&p, &t).spec.unwrap().termination_grace_period_seconds,
        Some(70)
    );
    // Without spec.wrap, nothing of it.
    let plain = built(&t, &input, 1, None).spec.unwrap();
    assert_eq!(plain.init_containers, None);
    assert_eq!(plain.containers[0].command.as_ref().unwrap()[0], "python");
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

/// `pod` with its container having finished at `finished` and the pod deleted at
/// `deleted` with a grace period of 30 s (so asked for at `deleted - 30`).
fn deleted(mut pod: Pod, finished: f64, asked: f64) -> Pod {
    pod.metadata.deletion_timestamp = Some(crate::operator::status::time(asked + 30.0));
    pod.metadata.deletion_grace_period_seconds = Some(30);
    let status = pod.status.as_mut().unwrap();
    let c = &mut status.container_statuses.as_mut().unwrap()[0];
    let t = c.state.as_mut().unwrap().terminated.as_mut().unwrap();
    t.finished_at = Some(crate::operator::status::time(finished).0.into());
    pod
}

fn disrupted(mut pod: Pod) -> Pod {
    pod.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
        type_: "DisruptionTarget".into(),
        status: "True".into(),
        reason: Some("EvictionByEvictionAPI".into()),
        ..Default::default()
    }]);
    pod
}

#[test]
fn only_a_run_that_ended_on_its_own_is_a_result() {
    let lost = |p: &Pod| matches!(outcome(p), Outcome::Lost(_));
    let last_report = r#"{"step":1,"metrics":{"acc":0.41}}"#;
    // A trainer that turns SIGTERM into a clean exit with its last report (nasop_trial.py
    // before it said so): evicted, it is lost, not an epoch-1 success.
    assert!(lost(&disrupted(pod_with(
        "Succeeded",
        None,
        Some((0, last_report))
    ))));
    // Deleted while it ran (`kubectl delete pod`, a drain): lost, whether it exited 0 or
    // 143.
    let running_when_deleted = |code| {
        deleted(
            pod_with(
                if code == 0 { "Succeeded" } else { "Failed" },
                None,
                Some((code, last_report)),
            ),
            1010.0,
            1005.0,
        )
    };
    assert!(lost(&running_when_deleted(0)));
    assert!(lost(&running_when_deleted(143)));
    // Finished before anyone deleted it (PodGC, a drain afterwards): its result stands.
    let gc = deleted(
        pod_with("Succeeded", None, Some((0, last_report))),
        1000.0,
        1100.0,
    );
    assert!(matches!(
        outcome(&gc),
        Outcome::Succeeded {
            report: Some(_),
            ..
        }
    ));
    let gc_failed = deleted(pod_with("Failed", None, Some((2, "boom"))), 1000.0, 1100.0);
    assert!(matches!(outcome(&gc_failed), Outcome::Failed { .. }));
    // The final report says how it ended, and that decides.
    let interrupted = r#"{"step":1,"metrics":{"acc":0.41},"end":"interrupted"}"#;
    assert!(lost(&pod_with("Succeeded", None, Some((0, interrupted)))));
    assert!(lost(&pod_with("Failed", None, Some((143, interrupted)))));
    let completed = r#"{"step":12,"metrics":{"acc":0.93},"end":"completed"}"#;
    let done_then_evicted = disrupted(deleted(
        pod_with("Succeeded", None, Some((0, completed))),
        1010.0,
        1005.0,
    ));
    match outcome(&done_then_evicted) {
        Outcome::Succeeded {
            report: Some(r), ..
        } => {
            assert_eq!(r.end, Some(nasop_core::contract::RunEnd::Completed))
        }
        o => panic!("{o:?}"),
    }
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

/// Kueue's webhook gates a pod that names a queue: it waits there, with no pending timeout,
/// as long as the gate is on (the watch's stripped pod keeps the gates).
#[test]
fn a_pod_kueue_holds_is_queued() {
    use k8s_openapi::api::core::v1::PodSchedulingGate;
    let mut gated = pod_with("Pending", None, None);
    let mut spec = template().spec.unwrap();
    spec.scheduling_gates = Some(vec![PodSchedulingGate {
        name: KUEUE_GATE.into(),
    }]);
    gated.spec = Some(spec);
    gated
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(crate::operator::jobset::LABEL_QUEUE.into(), "gpus".into());
    strip(&mut gated);
    match outcome(&gated) {
        Outcome::Waiting(w) => {
            assert_eq!(w.reason.as_deref(), Some(QUEUED));
            assert!(w.message.unwrap().ends_with("waits in queue gpus"));
            assert_eq!(w.since, None, "no pending timeout runs");
        }
        o => panic!("{o:?}"),
    }
    // Admitted: the gate is gone, and the pod waits as any other.
    gated.spec = None;
    match outcome(&gated) {
        Outcome::Waiting(w) => assert_ne!(w.reason.as_deref(), Some(QUEUED)),
        o => panic!("{o:?}"),
    }
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
    built(&template(), &i, 1, Some(storage))
}

#[test]
fn storage_mounts_the_claim_and_names_the_trials_directories() {
    let storage: StorageSpec =
        serde_yaml::from_str("persistentVolumeClaim: {claimName: nas-ckpt, subPath: runs/e}")
            .unwrap();
    let pod = promoted_pod(&storage);
    let spec = pod.spec.unwrap();
    let volumes = spec.volumes.unwrap();
    assert_eq!(volumes.len(), 3, "the template's volume is kept");
    let claim = volumes[1].persistent_volume_claim.as_ref().unwrap();
    assert_eq!(claim.claim_name, "nas-ckpt");
    let c = &spec.containers[0];
    let mounts = c.volume_mounts.as_ref().unwrap();
    assert_eq!(mounts.len(), 3);
    assert_eq!(mounts[2].mount_path, STORAGE_MOUNT);
    let env: BTreeMap<&str, &str> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        env[contract::ENV_CHECKPOINT_DIR],
        "/var/lib/nasop/storage/runs/e/e-uid/trials/3/checkpoint"
    );
    assert_eq!(
        env[contract::ENV_ARTIFACT_DIR],
        "/var/lib/nasop/storage/runs/e/e-uid/trials/3/artifact"
    );
    assert_eq!(
        env[contract::ENV_RESUME_FROM],
        "/var/lib/nasop/storage/runs/e/e-uid/trials/1/checkpoint"
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
    // The default directory is the experiment's namespace and name; every run has its own,
    // by the object's UID: two namespaces, or a re-created experiment, never share one.
    let plain: StorageSpec = serde_yaml::from_str("persistentVolumeClaim: {claimName: c}").unwrap();
    let run = |namespace, uid| Run {
        namespace,
        experiment: "e",
        uid,
    };
    assert_eq!(trial_dir(&plain, &run("ns", "u1"), 3), "ns/e/u1/trials/3");
    let dirs =
        [run("ns", "u1"), run("other", "u2"), run("ns", "u3")].map(|r| trial_dir(&plain, &r, 3));
    assert!(dirs[0] != dirs[1] && dirs[0] != dirs[2], "{dirs:?}");
    // A sub-path or prefix the spec gives is the base, and still per run.
    assert_eq!(
        trial_dir(&storage, &run("ns", "u1"), 3),
        "runs/e/u1/trials/3"
    );
}

#[test]
fn a_bucket_gives_urls_endpoint_and_secret_credentials_and_no_volume() {
    let storage: StorageSpec = serde_yaml::from_str(
        "s3: {bucket: nas-models, prefix: runs/e, endpoint: 'http://s3.local:9000', region: eu-west-1, credentialsSecret: s3-keys}",
    )
    .unwrap();
    let pod = promoted_pod(&storage);
    let spec = pod.spec.unwrap();
    assert_eq!(
        spec.volumes.unwrap().len(),
        2,
        "no volume for a bucket, only the token's"
    );
    let c = &spec.containers[0];
    assert_eq!(
        c.volume_mounts.as_ref().unwrap().len(),
        2,
        "only the template's mount and the token's"
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
        "s3://nas-models/runs/e/e-uid/trials/3/checkpoint"
    );
    assert_eq!(
        value(contract::ENV_ARTIFACT_DIR),
        "s3://nas-models/runs/e/e-uid/trials/3/artifact"
    );
    assert_eq!(
        value(contract::ENV_RESUME_FROM),
        "s3://nas-models/runs/e/e-uid/trials/1/checkpoint"
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

#[test]
fn a_template_that_says_otherwise_keeps_its_own_security_settings() {
    let mut t = template();
    let spec = t.spec.as_mut().unwrap();
    spec.automount_service_account_token = Some(true);
    spec.security_context = Some(k8s_openapi::api::core::v1::PodSecurityContext {
        run_as_user: Some(0),
        ..Default::default()
    });
    spec.containers[1].security_context = Some(k8s_openapi::api::core::v1::SecurityContext {
        privileged: Some(true),
        ..Default::default()
    });
    let i = input();
    let pod = built(&t, &i, 1, None);
    let spec = pod.spec.unwrap();
    assert_eq!(spec.automount_service_account_token, Some(true));
    let psc = spec.security_context.unwrap();
    // Root, as asked: no runAsNonRoot that would refuse it.
    assert_eq!((psc.run_as_user, psc.run_as_non_root), (Some(0), None));
    // A privileged container cannot also forbid privilege escalation.
    let sidecar = spec.containers[1].security_context.clone().unwrap();
    assert_eq!(sidecar.allow_privilege_escalation, None);
    assert_eq!(sidecar.capabilities, None);
}

#[test]
fn a_container_that_asks_for_root_keeps_it() {
    let mut t = template();
    let spec = t.spec.as_mut().unwrap();
    spec.init_containers = Some(vec![k8s_openapi::api::core::v1::Container {
        name: "chown".into(),
        image: Some("busybox".into()),
        security_context: Some(k8s_openapi::api::core::v1::SecurityContext {
            run_as_user: Some(0),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    let pod = built(&t, &input(), 1, None);
    let spec = pod.spec.unwrap();
    // No pod-wide runAsNonRoot that would refuse the init container, and it keeps its
    // capabilities (chown needs CAP_CHOWN); the trainer's are still dropped.
    assert_eq!(spec.security_context.unwrap().run_as_non_root, None);
    let init = spec.init_containers.unwrap()[0]
        .security_context
        .clone()
        .unwrap();
    assert_eq!(init.capabilities, None);
    let trainer = spec.containers[0].security_context.clone().unwrap();
    assert!(trainer.capabilities.is_some());
}

/// A wrapped trial whose init container cannot pull the operator's image says so, through
/// the stripped pod too; one whose init container failed fails with its exit code.
#[test]
fn the_wrap_init_container_says_why_a_trial_cannot_start() {
    let init = |state: ContainerState| ContainerStatus {
        name: "nasop-wrap".into(),
        state: Some(state),
        ..Default::default()
    };
    let mut pod = pod_with("Pending", None, None);
    let status = pod.status.as_mut().unwrap();
    status.init_container_statuses = Some(vec![init(ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some("ImagePullBackOff".into()),
            message: Some("Back-off pulling image \"registry.local/nasop:9\"".into()),
        }),
        ..Default::default()
    })]);
    status.container_statuses = Some(vec![ContainerStatus {
        name: "trainer".into(),
        state: Some(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("PodInitializing".into()),
                message: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    let mut stripped = pod.clone();
    strip(&mut stripped);
    for p in [&pod, &stripped] {
        let Outcome::Waiting(w) = outcome(p) else {
            panic!("{:?}", outcome(p))
        };
        assert_eq!(w.reason.as_deref(), Some("ImagePullBackOff"));
        let message = w.message.unwrap();
        assert!(
            message.contains("nasop-wrap init container") && message.contains("--wrap-image"),
            "{message}"
        );
    }
    let mut failed = pod_with("Failed", None, None);
    failed.status.as_mut().unwrap().init_container_statuses = Some(vec![init(ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: 1,
            message: Some("copying /nasop: No space left on device".into()),
            ..Default::default()
        }),
        ..Default::default()
    })]);
    let Outcome::Failed { message, .. } = outcome(&failed) else {
        panic!("{:?}", outcome(&failed))
    };
    assert!(message.contains("exited with code 1: copying"), "{message}");
}
