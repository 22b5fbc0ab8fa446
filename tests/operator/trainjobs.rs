//! Trials as Kubeflow TrainJobs: NasExperiments whose trials are TrainJobs, run by the real
//! Kubeflow Trainer controller (v2.3, started by tools/testenv/up.sh) through the real JobSet
//! controller on KWOK's GPU nodes, on the runtime of examples/k8s/trainjob-runtime.yaml, the
//! ranks played by the fake trainer.

use super::harness::{Env, NB201_OPS, value_of};
use super::jobsets::{Ranks, ranks_by};
use kube::api::DynamicObject;
use kube::{Api, ResourceExt};
use nasop::api::{ExperimentPhase, NasTrial, TrialPhaseName};
use nasop::operator::{jobset, trainjob};
use nasop_testkit::FakeTrainer;
use std::sync::Arc;
use std::time::Duration;

/// The runtime of examples/k8s/trainjob-runtime.yaml, applied once (cluster-scoped).
pub(super) fn apply_runtime() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/k8s/trainjob-runtime.yaml"
    );
    let out = std::process::Command::new("kubectl")
        .args(["apply", "--server-side", "-f", path])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A NasExperiment of `max` trials, each a TrainJob of two one-GPU nodes.
fn trainjob_manifest(name: &str, max: u32) -> String {
    format!(
        r#"
apiVersion: nasop.dev/v1alpha1
kind: NasExperiment
metadata:
  name: {name}
spec:
  objectives: [{{metric: val_accuracy, goal: maximize}}]
  searchSpace:
    cell: {{nodes: 4, operations: {NB201_OPS}}}
  strategy: {{algorithm: random, seed: 5}}
  budget: {{maxTrials: {max}, parallelism: 2, trialEpochs: 3, maxFailedTrials: 3}}
  trialTrainJob:
    spec:
      runtimeRef: {{name: nasop-torch-distributed}}
      trainer:
        image: ghcr.io/nasop/nasop-trainer:dev
        numNodes: 2
        env: [{{name: OMP_NUM_THREADS, value: "1"}}]
        resourcesPerNode: {{limits: {{nvidia.com/gpu: "1"}}}}
      runtimePatches:
        - manager: example.com/gpu-nodes
          trainingRuntimeSpec:
            template:
              spec:
                replicatedJobs:
                  - name: node
                    template:
                      spec:
                        template:
                          spec:
                            tolerations: [{{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}}]
"#
    )
}

fn nodes(code: i32, message: &str) -> Arc<Ranks> {
    ranks_by(jobset::LABEL_COMPLETION_INDEX, code, message)
}

#[tokio::test]
async fn a_trainjob_trial_trains_on_all_its_nodes_and_records_rank_zeros_result() {
    apply_runtime();
    let mut env = Env::new("trainjob-ok").await;
    env.start_operator(&[]);
    let player = nodes(0, "");
    let _trainer = FakeTrainer::start(env.pods(), player.clone());
    env.apply(&trainjob_manifest("tj", 2)).await.unwrap();
    let exp = env
        .wait_for("tj", Duration::from_secs(120), |e| {
            e.status.as_ref().is_some_and(|s| {
                s.phase
                    .is_some_and(|p| p != ExperimentPhase::Running && p != ExperimentPhase::Pending)
            })
        })
        .await;
    let status = exp.status.unwrap();
    assert_eq!(status.phase, Some(ExperimentPhase::Succeeded), "{status:?}");
    assert_eq!(status.trials.succeeded, 2, "{:?}", status.trials);
    let trainjobs: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.ns, &trainjob::resource());
    for t in env.all_trials("tj").await {
        let s = t.status.clone().unwrap();
        let name = t.name_any();
        // Rank 0's result, as it reported it, through its TrainJob.
        assert_eq!(s.value, Some(value_of(&t.spec.candidate)), "{name}: {s:?}");
        assert_eq!(
            s.history.len(),
            3,
            "{name}: one report per epoch of rank 0: {s:?}"
        );
        let tj_name = s.pod.clone().unwrap();
        assert_eq!(tj_name, format!("{name}-1"));
        let tj = trainjobs.get(&tj_name).await.unwrap();
        assert!(jobset::owned_by(&tj, &t.uid().unwrap()));
        assert!(
            jobset::Kind::TrainJob.ended(&tj),
            "{tj_name}: {:?}",
            tj.data["status"]
        );
    }
    // Both nodes of every trial got the contract (through spec.trainer.env) and the
    // runtime's PET_* variables.
    let envs = player.envs.lock().unwrap().clone();
    assert_eq!(
        envs.len(),
        4,
        "{:?}",
        envs.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    for (pod, e) in &envs {
        assert_eq!(
            e.get("PET_NNODES").map(String::as_str),
            Some("2"),
            "{pod}: {e:?}"
        );
        assert_eq!(
            e.get("OMP_NUM_THREADS").map(String::as_str),
            Some("1"),
            "{pod}"
        );
        let tj = pod.split("-node-").next().unwrap();
        assert_eq!(
            e.get("PET_MASTER_ADDR"),
            Some(&format!("{tj}-node-0-0.{tj}")),
            "{pod}"
        );
    }
}

#[tokio::test]
async fn a_failed_node_fails_the_trainjob_trial_with_its_words() {
    apply_runtime();
    let mut env = Env::new("trainjob-fail").await;
    env.start_operator(&[]);
    let player = nodes(1, "rank 1: NCCL watchdog timed out");
    let _trainer = FakeTrainer::start(env.pods(), player.clone());
    env.apply(&trainjob_manifest("broken", 1)).await.unwrap();
    let trials: Api<NasTrial> = env.trials();
    let failed = super::harness::poll(
        Duration::from_secs(90),
        async || trials.get_opt("broken-0").await.ok().flatten(),
        |t| {
            t.as_ref().is_some_and(|t| {
                t.status
                    .as_ref()
                    .is_some_and(|s| s.phase == Some(TrialPhaseName::Failed))
            })
        },
        |t| format!("broken-0: {:?}", t.as_ref().map(|t| &t.status)),
    )
    .await
    .unwrap();
    let s = failed.status.unwrap();
    let message = s.message.unwrap_or_default();
    assert_eq!(s.reason.as_deref(), Some("TrainerFailed"), "{message}");
    assert!(
        message.contains("broken-0-1-node-0-1") && message.contains("NCCL watchdog"),
        "{message}"
    );
}
