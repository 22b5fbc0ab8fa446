use super::*;
use crate::operator::jobset::{
    Kind, LABEL_COMPLETION_INDEX, LABEL_JOB_INDEX, LABEL_JOBSET_NAME, LABEL_REPLICATED_JOB,
};
use crate::operator::pod::Outcome;
use crate::operator::pod::tests::{input, pod_input};
use k8s_openapi::api::core::v1::Pod;
use kube::api::DynamicObject;
use nasop_core::contract;
use std::collections::BTreeMap;
use std::sync::Arc;

fn template(yaml: &str) -> TrainJobTemplate {
    serde_yaml::from_str(yaml).unwrap()
}

/// Two nodes of one GPU each on the torch runtime, queued in `gpus`.
fn two_nodes() -> TrainJobTemplate {
    template(
        r#"
metadata:
  labels: {kueue.x-k8s.io/queue-name: gpus}
  annotations: {team: vision}
spec:
  runtimeRef: {name: torch-distributed}
  trainer:
    image: python:3.11
    command: [torchrun, train.py]
    numNodes: 2
    env: [{name: NASOP_TRIAL, value: stale}, {name: OMP_NUM_THREADS, value: "1"}]
    resourcesPerNode: {limits: {nvidia.com/gpu: "1"}}
"#,
    )
}

fn built(t: &TrainJobTemplate) -> Value {
    let input = input();
    build(&pod_input(&input, 2, None), t, "e-3-2")
}

#[test]
fn the_contract_goes_into_the_trainer_env_and_nasops_own_runtime_patch() {
    let tj = built(&two_nodes());
    assert_eq!(tj["kind"], "TrainJob");
    assert_eq!(tj["metadata"]["name"], "e-3-2");
    assert_eq!(tj["metadata"]["ownerReferences"][0]["uid"], "uid");
    assert_eq!(tj["metadata"]["labels"][pod::LABEL_TRIAL], "e-3");
    assert_eq!(tj["metadata"]["annotations"]["team"], "vision");
    let env: BTreeMap<&str, &Value> = tj["spec"]["trainer"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), &e["value"]))
        .collect();
    // The template's own variables stay; a stale contract variable is replaced.
    assert_eq!(env["OMP_NUM_THREADS"], "1");
    assert!(
        env[contract::ENV_TRIAL]
            .as_str()
            .unwrap()
            .contains("\"e-3\"")
    );
    assert_eq!(env[contract::ENV_REPORT_URL], "http://op/v1/report");
    assert!(env.contains_key(contract::ENV_REPORT_TOKEN_FILE));
    assert!(!env.keys().any(|k| k.starts_with("PET_")));
    let patches = tj["spec"]["runtimePatches"].as_array().unwrap();
    let ours = patches.iter().find(|p| p["manager"] == MANAGER).unwrap();
    let job = &ours["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0];
    assert_eq!(job["name"], NODE);
    let pod = &job["template"]["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"][pod::LABEL_TRIAL], "e-3");
    assert_eq!(pod["metadata"]["labels"][pod::LABEL_ATTEMPT], "2");
    assert_eq!(pod["spec"]["containers"][0]["name"], NODE);
    assert_eq!(
        pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
        pod::TOKEN_MOUNT
    );
    assert_eq!(
        pod["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        contract::REPORT_AUDIENCE
    );
    // Queued: suspended at creation; Kueue's webhook adds its own patch, nasop does not.
    assert_eq!(tj["spec"]["suspend"], true);
    assert_eq!(patches.len(), 1);
    assert_eq!(gpus(&two_nodes()), 2.0);
    // Not queued: not suspended.
    let mut plain = two_nodes();
    plain.metadata = None;
    let tj = built(&plain);
    assert!(tj["spec"]["suspend"].is_null());
}

#[test]
fn a_template_that_cannot_run_is_refused_with_the_field() {
    let refused = |yaml: &str| check(&template(yaml), "e").unwrap_err();
    assert!(
        refused("spec: {trainer: {numNodes: 2}}")
            .contains("spec.trialTrainJob.spec.runtimeRef.name")
    );
    assert!(
        refused("spec: {runtimeRef: {name: torch-distributed}}")
            .contains("spec.trialTrainJob.spec.trainer is missing")
    );
    assert!(
        refused("spec: {runtimeRef: {name: t}, trainer: {env: [{name: PET_NNODES, value: '2'}]}}")
            .contains("trainer.env[0] is PET_NNODES")
    );
    assert!(
        refused("spec: {runtimeRef: {name: t}, trainer: {}, runtimePatches: [{manager: nasop.dev/operator}]}")
            .contains("nasop's own")
    );
    assert!(
        refused("spec: {runtimeRef: {name: t, kind: Runtime}, trainer: {}}")
            .contains("runtimeRef.kind is \"Runtime\"")
    );
    assert!(
        refused("spec: {runtimeRef: {name: t}, trainer: {}, activeDeadlineSeconds: 60}")
            .contains("trialTimeoutSeconds")
    );
    assert!(
        check(
            &template("spec: {runtimeRef: {name: t}, trainer: {}}"),
            "1e"
        )
        .unwrap_err()
        .contains("does not start with a letter")
    );
    let long = check(
        &template("spec: {runtimeRef: {name: t}, trainer: {numNodes: 16}}"),
        &"x".repeat(48),
    )
    .unwrap_err();
    assert!(long.contains("longer than 63"), "{long}");
    check(&two_nodes(), "e").unwrap();
}

fn trainjob(conditions: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {
            "name": "e-3-1", "namespace": "ns", "uid": "tj-uid",
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"runtimeRef": {"name": "torch-distributed"}},
        "status": {"conditions": conditions},
    }))
    .unwrap()
}

/// Pod `index` (completion index) of the TrainJob's `node` job.
fn node(index: u32, phase: &str, message: &str) -> Arc<Pod> {
    let state = if phase == "Running" {
        json!({"running": {}})
    } else {
        json!({"terminated": {"exitCode": i32::from(phase != "Succeeded"), "message": message, "reason": "Error"}})
    };
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {
                "name": format!("e-3-1-node-0-{index}-abcde"),
                "creationTimestamp": "2026-01-01T00:00:01Z",
                "labels": {
                    LABEL_JOBSET_NAME: "e-3-1",
                    LABEL_REPLICATED_JOB: NODE,
                    LABEL_JOB_INDEX: "0",
                    LABEL_COMPLETION_INDEX: index.to_string(),
                },
            },
            "status": {
                "phase": phase,
                "containerStatuses": [{
                    "name": NODE, "image": "", "imageID": "", "ready": false, "restartCount": 0,
                    "state": state,
                }],
            },
        }))
        .unwrap(),
    )
}

fn outcome_of(tj: &DynamicObject, pods: &[Arc<Pod>]) -> Outcome {
    Kind::TrainJob.outcome(tj, &Kind::TrainJob.pods_of(tj, pods), 1.8e9, 30.0)
}

#[test]
fn a_complete_trainjob_is_rank_zeros_result_and_a_failed_rank_fails_it() {
    let done = r#"{"step": 4, "metrics": {"acc": 0.9}, "end": "completed"}"#;
    let tj =
        trainjob(json!([{"type": "Complete", "status": "True", "reason": "AllJobsCompleted"}]));
    let pods = [node(1, "Succeeded", ""), node(0, "Succeeded", done)];
    assert!(Kind::TrainJob.ended(&tj));
    match outcome_of(&tj, &pods) {
        Outcome::Succeeded { report, .. } => assert_eq!(report.unwrap().step, 4),
        other => panic!("{other:?}"),
    }
    let tj = trainjob(
        json!([{"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "jobset failed"}]),
    );
    let pods = [
        node(0, "Running", ""),
        node(1, "Failed", "rank 1: out of memory"),
    ];
    match outcome_of(&tj, &pods) {
        Outcome::Failed { message, .. } => assert!(
            message.contains("e-3-1-node-0-1") && message.contains("out of memory"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    match outcome_of(&tj, &[]) {
        Outcome::Failed { message, .. } => {
            assert!(
                message.starts_with("TrainJob e-3-1: FailedJobs"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    // Pods of another TrainJob's JobSet say nothing.
    let other = trainjob(json!([]));
    let mut renamed = (*node(0, "Failed", "x")).clone();
    renamed
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(LABEL_JOBSET_NAME.into(), "e-3-2".into());
    assert!(
        Kind::TrainJob
            .pods_of(&other, &[Arc::new(renamed)])
            .is_empty()
    );
}

#[test]
fn a_suspended_trainjob_is_queued() {
    let tj = trainjob(json!([{"type": "Suspended", "status": "True", "reason": "Suspended"}]));
    match outcome_of(&tj, &[]) {
        Outcome::Waiting(w) => {
            assert_eq!(w.reason.as_deref(), Some("Queued"));
            assert_eq!(w.message.as_deref(), Some("TrainJob e-3-1 is suspended"));
            assert_eq!(w.since, None);
        }
        other => panic!("{other:?}"),
    }
    let tj = trainjob(json!([]));
    assert!(matches!(
        outcome_of(&tj, &[node(0, "Running", "")]),
        Outcome::Running { .. }
    ));
}
