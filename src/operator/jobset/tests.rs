use super::*;
use crate::api::StorageSpec;
use crate::operator::pod::tests::{input, pod_input};
use nasop_core::contract;
use std::collections::BTreeMap;

fn template(yaml: &str) -> JobSetTemplate {
    serde_yaml::from_str(yaml).unwrap()
}

/// Two nodes of one pod each, a GPU per pod, queued in `gpus`.
fn two_nodes() -> JobSetTemplate {
    template(
        r#"
metadata:
  labels: {kueue.x-k8s.io/queue-name: gpus}
spec:
  replicatedJobs:
    - name: node
      replicas: 2
      template:
        spec:
          template:
            spec:
              containers:
                - name: trainer
                  image: nasop-trainer:cpu
                  env: [{name: MASTER_PORT, value: "1234"}]
                  resources: {limits: {nvidia.com/gpu: "1"}}
"#,
    )
}

fn built(t: &JobSetTemplate, storage: Option<&StorageSpec>) -> Value {
    let input = input();
    build(&pod_input(&input, 2, storage), t, "e-3-2")
}

fn env_of(pod_spec: &Value) -> BTreeMap<String, Value> {
    pod_spec["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

#[test]
fn every_rank_gets_the_contract_and_the_jobset_retries_nothing() {
    let js = built(&two_nodes(), None);
    assert_eq!(js["metadata"]["name"], "e-3-2");
    assert_eq!(js["metadata"]["ownerReferences"][0]["uid"], "uid");
    assert_eq!(js["metadata"]["labels"][pod::LABEL_TRIAL], "e-3");
    assert_eq!(js["metadata"]["labels"][pod::LABEL_ATTEMPT], "2");
    assert_eq!(js["spec"]["failurePolicy"], json!({"maxRestarts": 0}));
    assert_eq!(js["spec"]["successPolicy"], json!({"operator": "All"}));
    assert_eq!(js["spec"]["network"]["enableDNSHostnames"], true);
    // The queue label without Kueue's webhook: the JobSet starts suspended.
    assert_eq!(js["spec"]["suspend"], true);
    let job = &js["spec"]["replicatedJobs"][0]["template"]["spec"];
    assert_eq!(job["backoffLimit"], 0);
    assert_eq!(job["completionMode"], "Indexed");
    assert_eq!(job["completions"], 1);
    let pod_spec = &job["template"]["spec"];
    assert_eq!(pod_spec["restartPolicy"], "Never");
    assert_eq!(pod_spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        job["template"]["metadata"]["labels"][pod::LABEL_TRIAL],
        "e-3"
    );
    let env = env_of(pod_spec);
    assert!(
        env[contract::ENV_TRIAL]["value"]
            .as_str()
            .unwrap()
            .contains("\"e-3\"")
    );
    assert!(env.contains_key(contract::ENV_REPORT_TOKEN_FILE));
    assert_eq!(env["MASTER_ADDR"]["value"], "e-3-2-node-0-0.e-3-2");
    // The template's own value stands.
    assert_eq!(env["MASTER_PORT"]["value"], "1234");
    assert_eq!(env["WORLD_SIZE"]["value"], "2");
    // One pod per Job: the rank is the job index.
    assert_eq!(
        env["RANK"]["valueFrom"]["fieldRef"]["fieldPath"],
        format!("metadata.labels['{LABEL_JOB_INDEX}']")
    );
    assert_eq!(gpus(&two_nodes()), 2.0);
}

#[test]
fn one_job_of_several_pods_ranks_by_completion_index_and_several_jobs_leave_rank_unset() {
    let one = template(
        r#"
spec:
  replicatedJobs:
    - name: workers
      template:
        spec:
          parallelism: 3
          template: {spec: {containers: [{name: t, image: i}]}}
"#,
    );
    let js = built(&one, None);
    assert!(js["spec"]["suspend"].is_null());
    let job = &js["spec"]["replicatedJobs"][0]["template"]["spec"];
    assert_eq!(job["completions"], 3);
    let env = env_of(&job["template"]["spec"]);
    assert_eq!(env["WORLD_SIZE"]["value"], "3");
    assert_eq!(
        env["RANK"]["valueFrom"]["fieldRef"]["fieldPath"],
        format!("metadata.labels['{LABEL_COMPLETION_INDEX}']")
    );
    let two = template(
        r#"
spec:
  replicatedJobs:
    - {name: a, template: {spec: {template: {spec: {containers: [{name: t, image: i}]}}}}}
    - {name: b, replicas: 2, template: {spec: {template: {spec: {containers: [{name: t, image: i}]}}}}}
"#,
    );
    let js = built(&two, None);
    for j in 0..2 {
        let env = env_of(&js["spec"]["replicatedJobs"][j]["template"]["spec"]["template"]["spec"]);
        assert!(!env.contains_key("RANK"));
        assert_eq!(env["WORLD_SIZE"]["value"], "3");
        assert_eq!(env["MASTER_ADDR"]["value"], "e-3-2-a-0-0.e-3-2");
        // Without a RANK, a program still knows where rank 0 is (nasop wrap reports there).
        let primary = if j == 0 { "true" } else { "false" };
        assert_eq!(env[contract::ENV_PRIMARY_JOB]["value"], primary);
        assert_eq!(
            env[contract::ENV_JOB_INDEX]["valueFrom"]["fieldRef"]["fieldPath"],
            format!("metadata.labels['{LABEL_JOB_INDEX}']")
        );
    }
}

#[test]
fn a_template_that_cannot_run_is_refused_with_the_field() {
    let empty = template("spec: {replicatedJobs: []}");
    assert!(
        check(&empty, "e")
            .unwrap_err()
            .contains("replicatedJobs is empty")
    );
    let no_container = template(
        "spec: {replicatedJobs: [{name: a, template: {spec: {template: {spec: {containers: []}}}}}]}",
    );
    assert!(
        check(&no_container, "e")
            .unwrap_err()
            .contains("replicatedJobs[0].template.spec.template.spec.containers")
    );
    let long = "x".repeat(50);
    let err = check(&two_nodes(), &long).unwrap_err();
    assert!(err.contains("longer than 63"), "{err}");
    assert!(check(&two_nodes(), "e").is_ok());
}

fn jobset(conditions: Value, suspend: bool) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {
            "name": "e-3-1", "namespace": "ns", "uid": "js-uid",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {LABEL_QUEUE: "gpus"},
        },
        "spec": {"suspend": suspend, "replicatedJobs": [{"name": "node", "replicas": 2}]},
        "status": {"conditions": conditions},
    }))
    .unwrap()
}

/// Pod `index` (job index) of the JobSet, in `phase`, its container ended with `exit` and
/// `message`; `disrupted` when the cluster evicted it.
pub(super) fn rank(
    index: u32,
    phase: &str,
    exit: Option<(i32, &str)>,
    disrupted: bool,
) -> Arc<Pod> {
    let terminated = exit.map(|(code, message)| {
        json!({"terminated": {"exitCode": code, "message": message, "reason": "Error"}})
    });
    let mut conditions = vec![];
    if disrupted {
        conditions.push(json!({"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}));
    }
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {
                "name": format!("e-3-1-node-{index}-0-abcde"),
                "creationTimestamp": "2026-01-01T00:00:01Z",
                "labels": {
                    LABEL_JOBSET_UID: "js-uid",
                    LABEL_REPLICATED_JOB: "node",
                    LABEL_JOB_INDEX: index.to_string(),
                    LABEL_COMPLETION_INDEX: "0",
                },
            },
            "status": {
                "phase": phase,
                "conditions": conditions,
                "containerStatuses": [{
                    "name": "t", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                    "state": terminated.unwrap_or(json!({"running": {}})),
                }],
            },
        }))
        .unwrap(),
    )
}

const DONE: &str = r#"{"step": 4, "metrics": {"acc": 0.9}, "end": "completed"}"#;
const STOPPED: &str = r#"{"step": 2, "metrics": {"acc": 0.5}, "end": "stopped"}"#;

fn outcome_of(js: &DynamicObject, pods: &[Arc<Pod>]) -> Outcome {
    Kind::JobSet.outcome(js, &Kind::JobSet.pods_of(js, pods), 1.8e9, 30.0)
}

#[test]
fn a_completed_jobset_is_rank_zeros_result() {
    let js = jobset(
        json!([{"type": "Completed", "status": "True", "reason": "AllJobsCompleted"}]),
        false,
    );
    let pods = [
        rank(1, "Succeeded", Some((0, "")), false),
        rank(0, "Succeeded", Some((0, DONE)), false),
    ];
    match outcome_of(&js, &pods) {
        Outcome::Succeeded { report, .. } => assert_eq!(report.unwrap().step, 4),
        other => panic!("{other:?}"),
    }
    // Rank 0 done, rank 1 still training: not yet.
    let js = jobset(json!([]), false);
    let pods = [
        rank(1, "Running", None, false),
        rank(0, "Succeeded", Some((0, DONE)), false),
    ];
    assert!(matches!(outcome_of(&js, &pods), Outcome::Running { .. }));
}

#[test]
fn a_stopped_rank_zero_ends_the_trial_whatever_the_others_do() {
    let js = jobset(json!([]), false);
    let pods = [
        rank(0, "Succeeded", Some((0, STOPPED)), false),
        rank(1, "Failed", Some((1, "peer gone")), false),
    ];
    match outcome_of(&js, &pods) {
        Outcome::Succeeded { report, .. } => assert_eq!(report.unwrap().step, 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_evicted_rank_loses_the_attempt_and_a_failed_rank_fails_the_trial() {
    let failed = json!([{"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "jobset failed"}]);
    let js = jobset(failed.clone(), false);
    let pods = [
        rank(0, "Running", None, false),
        rank(1, "Failed", Some((143, "")), true),
    ];
    match outcome_of(&js, &pods) {
        Outcome::Lost(why) => assert!(why.contains("e-3-1-node-1-0"), "{why}"),
        other => panic!("{other:?}"),
    }
    let pods = [
        rank(0, "Running", None, false),
        rank(1, "Failed", Some((1, "CUDA error")), false),
    ];
    match outcome_of(&js, &pods) {
        Outcome::Failed { message, .. } => {
            assert!(
                message.contains("e-3-1-node-1-0") && message.contains("CUDA error"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    // Its pods already gone: the JobSet's words.
    match outcome_of(&js, &[]) {
        Outcome::Failed { message, .. } => assert!(message.contains("FailedJobs"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_suspended_jobset_waits_in_its_queue_without_a_pending_timeout() {
    let js = jobset(
        json!([{"type": "Suspended", "status": "True", "reason": "SuspendedJobs"}]),
        true,
    );
    match outcome_of(&js, &[]) {
        Outcome::Waiting(w) => {
            assert_eq!(w.reason.as_deref(), Some("Queued"));
            assert!(w.message.unwrap().contains("queue gpus"));
            assert_eq!(w.since, None);
        }
        other => panic!("{other:?}"),
    }
    // Admitted, no pods yet: waiting since the JobSet's creation.
    let js = jobset(json!([]), false);
    match outcome_of(&js, &[]) {
        Outcome::Waiting(w) => assert!(w.since.is_some()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn pods_of_another_jobset_say_nothing() {
    let js = jobset(json!([]), false);
    let mut other = (*rank(0, "Failed", Some((1, "x")), false)).clone();
    other
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(LABEL_JOBSET_UID.into(), "old".into());
    assert!(Kind::JobSet.pods_of(&js, &[Arc::new(other)]).is_empty());
}

#[test]
fn a_rank_restarted_in_place_fails_the_trial_with_its_reason() {
    let js = jobset(json!([]), false);
    let mut restarted = (*rank(1, "Running", None, false)).clone();
    let c = &mut restarted
        .status
        .as_mut()
        .unwrap()
        .container_statuses
        .as_mut()
        .unwrap()[0];
    c.restart_count = 1;
    c.last_state = serde_json::from_value(
        json!({"terminated": {"exitCode": 1, "reason": "Error", "message": "rank 1: NCCL timeout"}}),
    )
    .unwrap();
    let pods = [rank(0, "Running", None, false), Arc::new(restarted)];
    match outcome_of(&js, &pods) {
        Outcome::Failed { message, .. } => assert!(
            message.contains("e-3-1-node-1-0")
                && message.contains("exit code 1")
                && message.contains("NCCL timeout")
                && message.contains("restartPolicy Never"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
}
