//! Trials of several pods: NasExperiments whose trials are JobSets, run by the real JobSet
//! controller (v0.12, started by tools/testenv/up.sh) on KWOK's GPU nodes, the ranks
//! played by the fake trainer.

use super::harness::{Env, Plan, report_json, value_of};
use k8s_openapi::api::core::v1::Pod;
use kube::api::DynamicObject;
use kube::{Api, ResourceExt};
use nasop::api::{ExperimentPhase, NasTrial, TrialPhaseName};
use nasop::operator::jobset;
use nasop_core::contract::{self, TrialInput};
use nasop_testkit::{FakeTrainer, Player, pod_env, pod_token, post_report};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A NasExperiment of `max` trials, each a JobSet of `ranks` one-GPU pods (one per Job).
fn jobset_manifest(name: &str, max: u32) -> String {
    format!(
        r#"
apiVersion: nasop.dev/v1alpha1
kind: NasExperiment
metadata:
  name: {name}
spec:
  objectives: [{{metric: val_accuracy, goal: maximize}}]
  searchSpace:
    cell: {{nodes: 4, operations: [none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3]}}
  strategy: {{algorithm: random, seed: 5}}
  budget: {{maxTrials: {max}, parallelism: 2, trialEpochs: 3, maxFailedTrials: 3}}
  trialJobSet:
    spec:
      replicatedJobs:
        - name: node
          replicas: 2
          template:
            spec:
              template:
                spec:
                  tolerations: [{{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}}]
                  containers:
                    - name: trainer
                      image: ghcr.io/nasop/nasop-trainer:dev
                      resources: {{limits: {{nvidia.com/gpu: "1"}}}}
"#
    )
}

/// Plays each rank (the pod label `rank` names it): rank 0 reports three epochs and ends
/// with the last; the other rank ends at once, with `rank1` (exit code, message). Every
/// rank's environment is kept.
pub(super) struct Ranks {
    rank: &'static str,
    rank1: (i32, String),
    pub(super) envs: Mutex<Vec<(String, std::collections::BTreeMap<String, String>)>>,
}

impl Player for Ranks {
    fn plan(&self, pod: &Pod) -> Option<Plan> {
        let env = pod_env(pod);
        let input: TrialInput = serde_json::from_str(env.get(contract::ENV_TRIAL)?).ok()?;
        let rank = pod.labels().get(self.rank)?.clone();
        self.envs.lock().unwrap().push((pod.name_any(), env));
        let v = value_of(&input.candidate);
        Some(if rank == "0" {
            Plan::Report(vec![v - 2.0, v - 1.0, v])
        } else {
            Plan::Exit(self.rank1.0, self.rank1.1.clone())
        })
    }
}

fn ranks(code: i32, message: &str) -> Arc<Ranks> {
    ranks_by(jobset::LABEL_JOB_INDEX, code, message)
}

pub(super) fn ranks_by(rank: &'static str, code: i32, message: &str) -> Arc<Ranks> {
    Arc::new(Ranks {
        rank,
        rank1: (code, message.into()),
        envs: Mutex::default(),
    })
}

#[tokio::test]
async fn a_jobset_trial_trains_on_all_its_ranks_and_records_rank_zeros_result() {
    let mut env = Env::new("jobset-ok").await;
    env.start_operator(&[]);
    let player = ranks(0, "");
    let _trainer = FakeTrainer::start(env.pods(), player.clone());
    env.apply(&jobset_manifest("dist", 3)).await.unwrap();
    let exp = env
        .wait_for("dist", Duration::from_secs(120), |e| {
            e.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(ExperimentPhase::Succeeded))
        })
        .await;
    let status = exp.status.unwrap();
    assert_eq!(status.trials.succeeded, 3, "{:?}", status.trials);
    let jobsets: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.ns, &jobset::resource());
    for t in env.all_trials("dist").await {
        let s = t.status.clone().unwrap();
        let name = t.name_any();
        // Rank 0's result, as it reported it, through its JobSet.
        assert_eq!(s.value, Some(value_of(&t.spec.candidate)), "{name}: {s:?}");
        assert_eq!(
            s.history.len(),
            3,
            "{name}: one report per epoch of rank 0: {s:?}"
        );
        let js_name = s.pod.clone().unwrap();
        assert_eq!(js_name, format!("{name}-1"));
        let js = jobsets.get(&js_name).await.unwrap();
        assert!(jobset::owned_by(&js, &t.uid().unwrap()));
        assert_eq!(js.data["spec"]["failurePolicy"]["maxRestarts"], 0);
        assert!(
            jobset::Kind::JobSet.ended(&js),
            "{js_name}: {:?}",
            js.data["status"]
        );
    }
    // Both ranks of every trial got the contract and the process group's address.
    let envs = player.envs.lock().unwrap().clone();
    assert_eq!(
        envs.len(),
        6,
        "{:?}",
        envs.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    for (pod, e) in &envs {
        assert_eq!(e.get("WORLD_SIZE").map(String::as_str), Some("2"), "{pod}");
        let js = pod.split("-node-").next().unwrap();
        assert_eq!(
            e.get("MASTER_ADDR"),
            Some(&format!("{js}-node-0-0.{js}")),
            "{pod}"
        );
    }
}

#[tokio::test]
async fn only_rank_zero_reports_and_a_failed_rank_fails_the_trial_with_its_words() {
    let mut env = Env::new("jobset-fail").await;
    env.start_operator(&[]);
    // Rank 1 dies before rank 0 has finished; it first tries to report.
    let player = ranks(1, "rank 1: NCCL watchdog timed out");
    let _trainer = FakeTrainer::start(env.pods(), player.clone());
    env.apply(&jobset_manifest("broken", 1)).await.unwrap();
    let trials: Api<NasTrial> = env.trials();
    let failed = harness_poll(&trials, "broken-0", |t| {
        t.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(TrialPhaseName::Failed))
    })
    .await;
    let s = failed.status.unwrap();
    let message = s.message.unwrap_or_default();
    assert_eq!(s.reason.as_deref(), Some("TrainerFailed"), "{message}");
    assert!(
        message.contains("broken-0-1-node-1-0") && message.contains("NCCL watchdog"),
        "{message}"
    );
}

#[tokio::test]
async fn a_report_from_another_rank_is_refused() {
    let mut env = Env::new("jobset-rank").await;
    env.start_operator(&[]);
    // No trainer: the ranks run until the test reports for them.
    env.apply(&jobset_manifest("ranks", 1)).await.unwrap();
    let pods: Api<Pod> = env.pods();
    let running = harness_poll_pods(&pods).await;
    let rank = |i: &str| {
        running
            .iter()
            .find(|p| p.labels().get(jobset::LABEL_JOB_INDEX).map(String::as_str) == Some(i))
            .cloned()
            .unwrap()
    };
    let (zero, one) = (rank("0"), rank("1"));
    let url = pod_env(&zero)[contract::ENV_REPORT_URL].clone();
    let client = env.client.clone();
    let token1 = pod_token(&client, &one).await.unwrap();
    let refused = post_report(&url, Some(&token1), report_json(1, "val_accuracy", 99.0)).await;
    assert_eq!(refused, Err(403), "rank 1's report");
    let token0 = pod_token(&client, &zero).await.unwrap();
    let accepted = post_report(&url, Some(&token0), report_json(1, "val_accuracy", 50.0)).await;
    assert!(accepted.is_ok(), "rank 0's report: {accepted:?}");
    let t = env.trials().get("ranks-0").await.unwrap();
    let history = t.status.unwrap().history;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].metrics["val_accuracy"], 50.0);
}

/// Polls trial `name` until it exists and `done` holds of it (60 s).
async fn harness_poll(
    trials: &Api<NasTrial>,
    name: &str,
    done: impl Fn(&NasTrial) -> bool,
) -> NasTrial {
    super::harness::poll(
        Duration::from_secs(60),
        async || trials.get_opt(name).await.ok().flatten(),
        |t| t.as_ref().is_some_and(&done),
        |t| format!("{name}: {:?}", t.as_ref().map(|t| &t.status)),
    )
    .await
    .unwrap()
}

/// Waits until two pods run.
async fn harness_poll_pods(pods: &Api<Pod>) -> Vec<Pod> {
    super::harness::poll(
        Duration::from_secs(60),
        async || {
            pods.list(&Default::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default()
                .into_iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .collect::<Vec<_>>()
        },
        |running| running.len() == 2,
        |running| format!("{} running", running.len()),
    )
    .await
}
