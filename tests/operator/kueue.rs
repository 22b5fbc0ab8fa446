//! Trials that wait in a Kueue queue: Kueue v0.17 (started by tools/testenv/up.sh, its
//! webhooks registered) admits pod, JobSet and TrainJob trials on KWOK's GPU nodes by a
//! ClusterQueue's quota of one GPU. A held trial is Pending with reason Queued and Kueue's
//! own message, is not failed by its pending timeout, counts against parallelism, and runs
//! once admitted; deleting the experiment takes its trials out of the queue.

use super::harness::{Env, Plan, poll, value_of};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use nasop::api::{ExperimentPhase, NasTrial, TrialPhaseName};
use std::time::Duration;

const NB201_OPS: &str = "[none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3]";

fn kueue(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kueue.x-k8s.io", "v1beta2", kind),
        plural,
    )
}

/// A ClusterQueue (named after the test's namespace) with room for one GPU, its flavor,
/// and the LocalQueue `trials` in the namespace.
async fn one_gpu_queue(env: &Env) {
    let cq = format!("cq-{}", env.ns);
    let objects = [
        (
            kueue("ResourceFlavor", "resourceflavors"),
            None,
            serde_json::json!({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
                "metadata": {"name": "nasop-test"}}),
        ),
        (
            kueue("ClusterQueue", "clusterqueues"),
            None,
            serde_json::json!({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue",
                "metadata": {"name": cq},
                "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": env.ns}},
                    "resourceGroups": [{"coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                        "flavors": [{"name": "nasop-test", "resources": [
                            {"name": "cpu", "nominalQuota": "100"},
                            {"name": "memory", "nominalQuota": "1Ti"},
                            {"name": "nvidia.com/gpu", "nominalQuota": "1"}]}]}]}}),
        ),
        (
            kueue("LocalQueue", "localqueues"),
            Some(env.ns.clone()),
            serde_json::json!({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
                "metadata": {"name": "trials", "namespace": env.ns},
                "spec": {"clusterQueue": cq}}),
        ),
    ];
    for (resource, ns, object) in objects {
        let api: Api<DynamicObject> = match &ns {
            Some(ns) => Api::namespaced_with(env.client.clone(), ns, &resource),
            None => Api::all_with(env.client.clone(), &resource),
        };
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        api.patch(
            &name,
            &PatchParams::apply("nasop-test").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// What a queued experiment's trials run as.
#[derive(Clone, Copy)]
enum Kind {
    Pod,
    JobSet,
    TrainJob,
}

/// An experiment of three one-GPU trials, two at a time, through queue `trials`: as pods,
/// as JobSets of one pod, or as TrainJobs of one node.
fn queued_manifest(name: &str, kind: Kind) -> String {
    let trial = match kind {
        Kind::JobSet => {
            r#"  trialJobSet:
    metadata:
      labels: {kueue.x-k8s.io/queue-name: trials}
    spec:
      replicatedJobs:
        - name: node
          replicas: 1
          template:
            spec:
              template:
                spec:
                  tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
                  containers:
                    - name: trainer
                      image: ghcr.io/nasop/nasop-trainer:dev
                      resources: {limits: {nvidia.com/gpu: "1"}}"#
        }
        Kind::TrainJob => {
            r#"  trialTrainJob:
    metadata:
      labels: {kueue.x-k8s.io/queue-name: trials}
    spec:
      runtimeRef: {name: nasop-torch-distributed}
      trainer:
        image: ghcr.io/nasop/nasop-trainer:dev
        numNodes: 1
        resourcesPerNode: {limits: {nvidia.com/gpu: "1"}}
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
                            tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]"#
        }
        Kind::Pod => {
            r#"  trialTemplate:
    metadata:
      labels: {kueue.x-k8s.io/queue-name: trials}
    spec:
      tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
      containers:
        - name: trainer
          image: ghcr.io/nasop/nasop-trainer:dev
          resources: {limits: {nvidia.com/gpu: "1"}}"#
        }
    };
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
  strategy: {{algorithm: random, seed: 3}}
  budget: {{maxTrials: 3, parallelism: 2, trialEpochs: 2, pendingTimeoutSeconds: 3}}
{trial}
"#
    )
}

/// The trials of `experiment` as (name, phase, reason, message).
async fn trial_states(
    trials: &Api<NasTrial>,
    experiment: &str,
) -> Vec<(String, Option<TrialPhaseName>, String, String)> {
    let list = trials
        .list(&ListParams::default().labels(&format!("nasop.dev/experiment={experiment}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    list.into_iter()
        .map(|t| {
            let s = t.status.clone().unwrap_or_default();
            (
                t.metadata.name.clone().unwrap_or_default(),
                s.phase,
                s.reason.unwrap_or_default(),
                s.message.unwrap_or_default(),
            )
        })
        .collect()
}

async fn a_queued_trial_waits_for_its_queue_then_runs(env_name: &str, kind: Kind) {
    let mut env = Env::new(env_name).await;
    one_gpu_queue(&env).await;
    env.start_operator(&[]);
    let name = "queued";
    env.apply(&queued_manifest(name, kind)).await.unwrap();
    let trials = env.trials();

    // One GPU: one trial runs (its pod holds the GPU until the trainer ends it), the
    // other waits in the queue with Kueue's reason, past its pending timeout of 3 s.
    let waiting = poll(
        Duration::from_secs(60),
        async || trial_states(&trials, name).await,
        |ts| {
            ts.iter().any(|t| t.1 == Some(TrialPhaseName::Running))
                && ts.iter().any(|t| {
                    t.1 == Some(TrialPhaseName::Pending)
                        && t.2 == "Queued"
                        && t.3.contains("insufficient unused quota for nvidia.com/gpu")
                })
        },
        |ts| format!("{ts:?}"),
    )
    .await;
    assert_eq!(
        waiting.len(),
        2,
        "parallelism counts the queued trial: {waiting:?}"
    );
    let queued = waiting.iter().find(|t| t.2 == "Queued").unwrap().0.clone();
    let message = &waiting.iter().find(|t| t.0 == queued).unwrap().3;
    assert!(message.contains("waits in queue trials"), "{message}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let t = trials.get(&queued).await.unwrap();
    let s = t.status.clone().unwrap();
    assert_eq!(
        (s.phase, s.reason.as_deref()),
        (Some(TrialPhaseName::Pending), Some("Queued")),
        "no pending timeout for a queued trial: {s:?}"
    );
    // The experiment says so too (it looks again when its trials change).
    let experiments = env.experiments();
    poll(
        Duration::from_secs(30),
        async || {
            let exp = experiments.get(name).await.unwrap();
            exp.status.and_then(|s| {
                s.conditions
                    .into_iter()
                    .find(|c| c.type_ == "TrialsPending")
            })
        },
        |c| {
            c.as_ref().is_some_and(|c| {
                c.reason == "Queued" && c.message.contains("insufficient unused quota")
            })
        },
        |c| format!("TrialsPending: {c:?}"),
    )
    .await;

    // The trainer ends each trial as it reports: the queue admits the next; all three run.
    env.start_trainer(std::sync::Arc::new(|input, _| {
        let v = value_of(&input.candidate);
        Plan::Report(vec![v - 1.0, v])
    }));
    let exp = env
        .wait_for(name, Duration::from_secs(120), |e| {
            e.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(ExperimentPhase::Succeeded))
        })
        .await;
    let status = exp.status.unwrap();
    assert_eq!(status.trials.succeeded, 3, "{:?}", status.trials);
    assert_eq!(status.trials.failed, 0, "{:?}", status.trials);
}

#[tokio::test]
async fn a_pod_trial_waits_in_its_queue_and_runs_once_admitted() {
    a_queued_trial_waits_for_its_queue_then_runs("kueue-pods", Kind::Pod).await;
}

#[tokio::test]
async fn a_jobset_trial_waits_in_its_queue_and_runs_once_admitted() {
    a_queued_trial_waits_for_its_queue_then_runs("kueue-jobsets", Kind::JobSet).await;
}

#[tokio::test]
async fn a_trainjob_trial_waits_in_its_queue_and_runs_once_admitted() {
    super::trainjobs::apply_runtime();
    a_queued_trial_waits_for_its_queue_then_runs("kueue-trainjobs", Kind::TrainJob).await;
}

/// Deleting the experiment while a trial waits takes it out of the queue: its pod and so
/// its Workload are gone.
#[tokio::test]
async fn a_stopped_queued_trial_leaves_the_queue() {
    let mut env = Env::new("kueue-stop").await;
    one_gpu_queue(&env).await;
    env.start_operator(&[]);
    env.apply(&queued_manifest("leave", Kind::Pod))
        .await
        .unwrap();
    let trials = env.trials();
    poll(
        Duration::from_secs(60),
        async || trial_states(&trials, "leave").await,
        |ts| ts.iter().any(|t| t.2 == "Queued"),
        |ts| format!("{ts:?}"),
    )
    .await;
    let workloads: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.ns, &kueue("Workload", "workloads"));
    // Both trials' Workloads (the second may come a moment after the first is Queued).
    poll(
        Duration::from_secs(30),
        async || {
            workloads
                .list(&Default::default())
                .await
                .map(|l| l.items.len())
                .unwrap_or(0)
        },
        |n| *n == 2,
        |n| format!("{n} workloads"),
    )
    .await;
    assert_eq!(
        workloads
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    env.experiments()
        .delete("leave", &Default::default())
        .await
        .unwrap();
    poll(
        Duration::from_secs(60),
        async || {
            workloads
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .len()
        },
        |n| *n == 0,
        |n| format!("{n} Workloads left in the queue"),
    )
    .await;
}
