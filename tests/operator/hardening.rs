//! The operator's edges as a cluster meets them: a manifest nasop cannot read, restarts,
//! a name taken by another object's trial, pods that never start, a full quota, a missing
//! service account, a node that stops answering, hostile reports, and a trainer that
//! reports as much as it may.

use crate::harness::{self, Env, Plan, manifest, post_report, report_json, value_of};
use crate::{LONG, completes, phase_is};
use base64::Engine as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ResourceQuota, ServiceAccount};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use nasop::api::{ExperimentPhase, NasExperiment, NasTrial, NasTrialSpec, TrialPhaseName};
use nasop_core::contract::{self, ReportAction};
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn condition<'a>(
    exp: &'a NasExperiment,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    exp.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

async fn event_reasons(env: &Env) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(env.client.clone(), &env.ns);
    events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect()
}

/// Every status of `name` a watch sees, in order.
fn watch_statuses(env: &Env, name: &str) -> Arc<Mutex<Vec<NasExperiment>>> {
    let seen: Arc<Mutex<Vec<NasExperiment>>> = Arc::default();
    let out = seen.clone();
    let api = env.experiments();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    tokio::spawn(async move {
        let mut events = watcher(api, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(e)) = events.next().await {
            seen.lock().unwrap().push(e);
        }
    });
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_nasop_cannot_read_fails_only_its_experiment_across_restarts() {
    let mut env = Env::new("op-bad").await;
    // Accepted by the API server (the template is opaque to it), unreadable as a pod:
    // an env value must be a string.
    let bad = manifest(
        "bad",
        "{algorithm: random, seed: 1}",
        "{maxTrials: 3, parallelism: 1, trialEpochs: 12}",
        "",
    )
    .replace(
        "          image: ghcr.io/nasop/nasop-trainer:dev",
        "          image: ghcr.io/nasop/nasop-trainer:dev\n          env: [{name: X, value: 5}]",
    );
    env.create_raw(&bad).await.unwrap();
    let op = env.start_operator(&[]);
    env.start_trainer(Arc::new(|input, _| completes(value_of(&input.candidate))));
    env.apply(&manifest(
        "good",
        "{algorithm: random, seed: 2}",
        "{maxTrials: 24, parallelism: 3, trialEpochs: 12}",
        "",
    ))
    .await
    .unwrap();
    // nasop's own types cannot read it either: look at it untyped, as kubectl does.
    let status = env
        .raw_status("bad", LONG, |s| s["phase"] == "Failed")
        .await;
    let c = &status["conditions"][0];
    assert_eq!(c["reason"], "InvalidSpec");
    let message = c["message"].as_str().unwrap();
    assert!(
        message.contains("spec.trialTemplate.spec.containers[0].env[0].value"),
        "{message}"
    );
    // A restart lists every experiment again: the bad one must not stop the good one.
    env.wait_for("good", LONG, |e| {
        e.status.as_ref().is_some_and(|s| s.trials.created >= 8)
    })
    .await;
    env.kill_operator(op);
    env.start_operator(&[]);
    let good = env
        .wait_for("good", LONG, phase_is(ExperimentPhase::Succeeded))
        .await;
    assert_eq!(good.status.unwrap().trials.succeeded, 24);
    assert!(env.all_trials("bad").await.is_empty());
    assert!(event_reasons(&env).await.contains(&"InvalidSpec".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_experiment_keeps_its_status_and_completion_time_across_restarts() {
    let mut env = Env::new("op-done").await;
    let mut op = env.start_operator(&[]);
    env.start_trainer(Arc::new(|input, _| completes(value_of(&input.candidate))));
    env.apply(&manifest(
        "done",
        "{algorithm: random, seed: 5}",
        "{maxTrials: 60, parallelism: 20, trialEpochs: 12}",
        "",
    ))
    .await
    .unwrap();
    let finished = env
        .wait_for("done", LONG, phase_is(ExperimentPhase::Succeeded))
        .await;
    let first = finished.status.clone().unwrap();
    let seen = watch_statuses(&env, "done");
    for _ in 0..3 {
        env.kill_operator(op);
        op = env.start_operator(&[]);
        // Long enough for the new operator to list and reconcile everything.
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    for e in &seen {
        let s = e.status.as_ref().unwrap();
        assert_eq!(s.phase, Some(ExperimentPhase::Succeeded));
        assert_eq!(s.completion_time, first.completion_time, "re-stamped");
        assert_eq!(s.trials.succeeded, 60, "counts went back: {:?}", s.trials);
    }
    let succeeded = event_reasons(&env)
        .await
        .iter()
        .filter(|r| *r == "ExperimentSucceeded")
        .count();
    assert_eq!(succeeded, 1, "the experiment's end was announced again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_deleted_and_applied_again_runs_a_fresh_search() {
    let mut env = Env::new("op-again").await;
    env.start_operator(&[]);
    env.start_trainer(Arc::new(|input, _| completes(value_of(&input.candidate))));
    let yaml = manifest(
        "again",
        "{algorithm: random, seed: 5}",
        "{maxTrials: 5, parallelism: 5, trialEpochs: 12}",
        "",
    );
    env.apply(&yaml).await.unwrap();
    let first = env
        .wait_for("again", LONG, phase_is(ExperimentPhase::Succeeded))
        .await;
    // `kubectl replace --force`: the object is deleted and the same manifest created at
    // once, while the operator still remembers the old one.
    env.experiments()
        .delete("again", &DeleteParams::background())
        .await
        .unwrap();
    harness::poll(
        LONG,
        async || env.experiments().get_opt("again").await.unwrap(),
        Option::is_none,
        |e| format!("still there: {e:?}"),
    )
    .await;
    let second = env.apply(&yaml).await.unwrap();
    assert_ne!(second.uid(), first.uid());
    let done = env
        .wait_for("again", LONG, phase_is(ExperimentPhase::Succeeded))
        .await;
    let status = done.status.unwrap();
    let created = done.metadata.creation_timestamp.unwrap().0;
    let completed = status.completion_time.expect("a completion time").0;
    assert!(
        completed >= created,
        "completed at {completed}, before it was created at {created}"
    );
    assert_eq!(status.trials.succeeded, 5, "{:?}", status.trials);
    // Five trials of its own ran (the old object's may still wait for garbage collection).
    let uid = done.metadata.uid.unwrap();
    let trials = env.all_trials("again").await;
    let own: Vec<&NasTrial> = trials
        .iter()
        .filter(|t| t.metadata.owner_references.as_ref().unwrap()[0].uid == uid)
        .collect();
    assert_eq!(own.len(), 5, "{} trials of the new object", own.len());
    for t in own {
        assert_eq!(
            t.status.as_ref().and_then(|s| s.phase),
            Some(TrialPhaseName::Succeeded)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_made_in_advance_under_a_trials_name_counts_for_nothing() {
    let mut env = Env::new("op-forged").await;
    // Pod names are predictable: anyone who may create pods in the namespace can make trial
    // 5's first pod before the experiment does, ending at once with a result of its own.
    let forged: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "forged-5-1",
            "labels": {"nasop.dev/experiment": "forged", "nasop.dev/trial": "forged-5",
                       "nasop.dev/attempt": "1"},
            "annotations": {
                nasop_testkit::EXIT_CODE: "0",
                nasop_testkit::TERMINATION_MESSAGE: report_json(12, "val_accuracy", 99.9),
            },
        },
        "spec": {
            "restartPolicy": "Never",
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "trainer", "image": "ghcr.io/nasop/nasop-trainer:dev",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        },
    }))
    .unwrap();
    env.pods()
        .create(&PostParams::default(), &forged)
        .await
        .unwrap();
    env.start_operator(&[]);
    env.start_trainer(Arc::new(|input, _| completes(value_of(&input.candidate))));
    env.apply(&manifest(
        "forged",
        "{algorithm: random, seed: 5}",
        "{maxTrials: 8, parallelism: 4, trialEpochs: 12}",
        "",
    ))
    .await
    .unwrap();
    let exp = env
        .wait_for("forged", LONG, phase_is(ExperimentPhase::Succeeded))
        .await;
    let trials = env.all_trials("forged").await;
    let five = trials.iter().find(|t| t.spec.index == 5).unwrap();
    let status = five.status.as_ref().unwrap();
    assert_eq!(
        status.value,
        Some(value_of(&five.spec.candidate)),
        "trial 5 recorded another pod's result"
    );
    assert_ne!(status.pod.as_deref(), Some("forged-5-1"));
    let best = exp.status.unwrap().best_value.unwrap();
    assert!(best < 99.0, "the forged pod's 99.9 became the best: {best}");
    assert!(event_reasons(&env).await.contains(&"PodNameTaken".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_adopts_no_trial_another_object_owns() {
    let mut env = Env::new("op-owner").await;
    // A trial named like the experiment's first, owned by something else: what an
    // experiment deleted and applied again finds before garbage collection has run.
    let mut other = ConfigMap::default();
    other.metadata.name = Some("other-owner".into());
    let other = Api::<ConfigMap>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &other)
        .await
        .unwrap();
    let mut stale = NasTrial::new(
        "again-0",
        NasTrialSpec {
            experiment: "again".into(),
            index: 0,
            candidate: "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|".into(),
            epochs: 12,
            seed: 1,
            resume_from: None,
            stage: None,
            stop: None,
        },
    );
    stale.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "other-owner".into(),
            uid: other.uid().unwrap(),
            controller: Some(true),
            block_owner_deletion: None,
        },
    ]);
    let stale = env
        .trials()
        .create(&PostParams::default(), &stale)
        .await
        .unwrap();
    let done = serde_json::json!({"status": {"phase": "Succeeded", "value": 99.0,
        "metrics": {"val_accuracy": 99.0}, "completionTime": "2026-01-01T00:00:00.000000Z"}});
    env.trials()
        .patch_status("again-0", &PatchParams::default(), &Patch::Merge(&done))
        .await
        .unwrap();
    env.start_operator(&[]);
    env.start_trainer(Arc::new(|input, _| completes(value_of(&input.candidate))));
    env.apply(&manifest(
        "again",
        "{algorithm: random, seed: 6}",
        "{maxTrials: 3, parallelism: 3, trialEpochs: 12}",
        "",
    ))
    .await
    .unwrap();
    // The experiment runs its budget with trials of its own, and never writes to the
    // trial it does not own.
    let exp = env
        .wait_for("again", LONG, phase_is(ExperimentPhase::Succeeded))
        .await;
    let status = exp.status.unwrap();
    assert_eq!(status.trials.succeeded, 3);
    assert_ne!(status.best_value, Some(99.0));
    let owned: Vec<NasTrial> = env
        .all_trials("again")
        .await
        .into_iter()
        .filter(|t| {
            t.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == exp.metadata.uid.as_ref())
        })
        .collect();
    assert_eq!(owned.len(), 3);
    let untouched = env.trials().get("again-0").await.unwrap();
    assert_eq!(untouched.uid(), stale.uid());
    assert_eq!(untouched.status.unwrap().value, Some(99.0));
    // The user is told, on the experiment, which object holds the name.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(env.client.clone(), &env.ns);
    let note = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("TrialNameConflict"))
        .and_then(|e| e.note)
        .expect("a TrialNameConflict event");
    assert!(
        note.contains("again-0") && note.contains("ConfigMap other-owner"),
        "{note}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_cannot_start_says_why_and_fails_its_trial_after_the_pending_timeout() {
    let mut env = Env::new("op-pending").await;
    env.start_operator(&[]);
    // Sixteen GPUs: no node has them.
    let exp = manifest(
        "stuck",
        "{algorithm: random, seed: 7}",
        "{maxTrials: 2, parallelism: 1, trialEpochs: 12, maxFailedTrials: 0, pendingTimeoutSeconds: 6}",
        "",
    )
    .replace("nvidia.com/gpu: \"1\"", "nvidia.com/gpu: \"16\"");
    env.apply(&exp).await.unwrap();
    let waiting = env
        .wait_for("stuck", LONG, |e| condition(e, "TrialsPending").is_some())
        .await;
    let c = condition(&waiting, "TrialsPending").unwrap();
    assert_eq!(c.reason, "Unschedulable");
    assert!(c.message.contains("stuck-0"), "{}", c.message);
    let trial = env.trials().get("stuck-0").await.unwrap();
    let s = trial.status.unwrap();
    assert_eq!(s.phase, Some(TrialPhaseName::Pending));
    assert_eq!(s.reason.as_deref(), Some("Unschedulable"));
    assert!(
        s.message.unwrap_or_default().contains("nvidia.com/gpu"),
        "the scheduler's words"
    );
    let exp = env
        .wait_for("stuck", LONG, phase_is(ExperimentPhase::Failed))
        .await;
    let trial = env.trials().get("stuck-0").await.unwrap();
    let s = trial.status.unwrap();
    assert_eq!(s.phase, Some(TrialPhaseName::Failed));
    assert_eq!(s.reason.as_deref(), Some("PendingTimeout"));
    assert!(s.message.unwrap().contains("Unschedulable"));
    assert_eq!(exp.status.unwrap().trials.failed, 1);
    assert!(event_reasons(&env).await.contains(&"TrialsPending".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_quota_makes_trials_wait_not_fail() {
    let mut env = Env::new("op-quota").await;
    let quota: ResourceQuota = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "one-pod"},
        "spec": {"hard": {"pods": "1"}}
    }))
    .unwrap();
    let quotas: Api<ResourceQuota> = Api::namespaced(env.client.clone(), &env.ns);
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    // The quota controller must have counted the namespace before it admits anything.
    harness::poll(
        LONG,
        async || quotas.get("one-pod").await.unwrap(),
        |q| q.status.as_ref().is_some_and(|s| s.hard.is_some()),
        |q| format!("the quota was never counted: {:?}", q.status),
    )
    .await;
    env.start_operator(&[]);
    // Each trial runs a little while, so that the others meet the full quota.
    env.start_trainer(Arc::new(|input, _| {
        Plan::Report(vec![60.0, 61.0, value_of(&input.candidate)])
    }));
    env.apply(&manifest(
        "quota",
        "{algorithm: random, seed: 8}",
        "{maxTrials: 4, parallelism: 3, trialEpochs: 12}",
        "",
    ))
    .await
    .unwrap();
    let waiting = env
        .wait_for("quota", LONG, |e| {
            condition(e, "TrialsPending").is_some_and(|c| c.reason == "QuotaExceeded")
        })
        .await;
    assert!(
        condition(&waiting, "TrialsPending")
            .unwrap()
            .message
            .contains("exceeded quota")
    );
    let exp = env
        .wait_for("quota", LONG, phase_is(ExperimentPhase::Succeeded))
        .await;
    let status = exp.status.unwrap();
    assert_eq!((status.trials.succeeded, status.trials.failed), (4, 0));
    for t in env.all_trials("quota").await {
        assert_eq!(
            t.status.unwrap().phase,
            Some(TrialPhaseName::Succeeded),
            "{}",
            t.metadata.name.unwrap()
        );
    }
}

/// A pod refused because its service account does not exist (yet: a namespace created a
/// moment ago has no `default` until the controller manager makes it) waits and is tried
/// again; it does not fail the trial as an invalid template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_service_account_makes_trials_wait_not_fail() {
    let mut env = Env::new("op-sa").await;
    env.start_operator(&[]);
    env.start_trainer(Arc::new(|input, _| completes(value_of(&input.candidate))));
    let with_account = manifest(
        "sa",
        "{algorithm: random, seed: 3}",
        "{maxTrials: 2, parallelism: 2, trialEpochs: 12, maxFailedTrials: 0}",
        "",
    )
    .replace(
        "    spec:\n      tolerations",
        "    spec:\n      serviceAccountName: trainer\n      tolerations",
    );
    assert!(with_account.contains("serviceAccountName"));
    env.apply(&with_account).await.unwrap();
    let waiting = env
        .wait_for("sa", LONG, |e| {
            condition(e, "TrialsPending").is_some_and(|c| c.reason == "ServiceAccountMissing")
        })
        .await;
    let message = &condition(&waiting, "TrialsPending").unwrap().message;
    assert!(
        message.contains("serviceaccount \"trainer\" not found"),
        "{message}"
    );
    assert_eq!(waiting.status.unwrap().trials.failed, 0);

    let accounts: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &env.ns);
    let account: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "trainer"}})).unwrap();
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let exp = env
        .wait_for("sa", LONG, phase_is(ExperimentPhase::Succeeded))
        .await;
    let status = exp.status.unwrap();
    assert_eq!((status.trials.succeeded, status.trials.failed), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_left_terminating_by_a_lost_node_is_replaced() {
    let mut env = Env::new("op-lost").await;
    env.start_operator(&[]);
    env.start_trainer(Arc::new(|input, attempt| {
        if attempt == 1 {
            Plan::Hang
        } else {
            completes(value_of(&input.candidate))
        }
    }));
    env.apply(&manifest(
        "lost",
        "{algorithm: random, seed: 9}",
        "{maxTrials: 1, parallelism: 1, trialEpochs: 12}",
        "",
    ))
    .await
    .unwrap();
    let pods = env.pods();
    wait_running(&pods, "lost-0-1").await;
    // A node that stops answering never confirms the deletion (KWOK leaves such pods).
    let lost = serde_json::json!({"metadata": {"annotations": {nasop_testkit::NODE_LOST: "true"}}});
    pods.patch("lost-0-1", &PatchParams::default(), &Patch::Merge(&lost))
        .await
        .unwrap();
    pods.delete("lost-0-1", &DeleteParams::default().grace_period(1))
        .await
        .unwrap();
    let exp = env
        .wait_for("lost", LONG, phase_is(ExperimentPhase::Succeeded))
        .await;
    let trial = env.trials().get("lost-0").await.unwrap();
    let s = trial.status.unwrap();
    assert_eq!(s.attempts, 2);
    assert_eq!(s.phase, Some(TrialPhaseName::Succeeded));
    assert_eq!(exp.status.unwrap().trials.failed, 0);
    let first = pods.get("lost-0-1").await.unwrap();
    assert!(
        first.metadata.deletion_timestamp.is_some(),
        "the lost pod is still there, terminating"
    );
    pods.delete("lost-0-1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_hostile_reports_change_nothing() {
    let mut env = Env::new("op-hostile").await;
    let op = env.start_operator(&[]);
    // A finished experiment whose trials the requests aim at...
    env.start_trainer(Arc::new(|input, _| {
        if input.experiment == "target" {
            Plan::Hang
        } else {
            Plan::Report(vec![55.0, 60.0, value_of(&input.candidate)])
        }
    }));
    env.apply(&manifest(
        "target",
        "{algorithm: random, seed: 10}",
        "{maxTrials: 2, parallelism: 2, trialEpochs: 12}",
        "",
    ))
    .await
    .unwrap();
    env.wait_for("target", LONG, |e| {
        e.status.as_ref().is_some_and(|s| s.trials.running == 2)
    })
    .await;
    let pod = env.pods().get("target-0-1").await.unwrap();
    let real_env = crate::harness::pod_env(&pod);
    let token = nasop_testkit::pod_token(&env.client, &pod).await.unwrap();
    let url = real_env[contract::ENV_REPORT_URL].clone();
    let other = env.pods().get("target-1-1").await.unwrap();
    let api_token = nasop_testkit::pod_token_for(
        &env.client,
        &pod,
        "https://kubernetes.default.svc.cluster.local",
    )
    .await
    .unwrap();
    let before: BTreeMap<String, String> = env
        .all_trials("target")
        .await
        .into_iter()
        .map(|t| (t.name_any(), t.resource_version().unwrap()))
        .collect();
    // ...while another experiment runs beside them.
    env.apply(&manifest(
        "bystander",
        "{algorithm: random, seed: 11}",
        "{maxTrials: 12, parallelism: 3, trialEpochs: 12}",
        "",
    ))
    .await
    .unwrap();
    let rss_before = rss_kib(env.operator_pid(op));

    // Tokens that are not the trial's: the real one's claims with another signature, the
    // claims rewritten to name the other trial's pod, another audience's, an expired one.
    let parts: Vec<String> = token.split('.').map(String::from).collect();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&parts[1])
            .unwrap(),
    )
    .unwrap();
    let resign = |claims: &serde_json::Value| {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{}.{payload}.{}", parts[0], parts[2])
    };
    let forged = format!("{}.{}.Zm9yZ2Vk", parts[0], parts[1]);
    let mut theirs = claims.clone();
    theirs["kubernetes.io"]["pod"]["name"] = other.metadata.name.clone().unwrap().into();
    theirs["kubernetes.io"]["pod"]["uid"] = other.metadata.uid.clone().unwrap().into();
    let theirs = resign(&theirs);
    let mut expired = claims.clone();
    expired["exp"] = 1.into();
    let expired = resign(&expired);
    let big = format!(
        "{{\"step\": 1, \"metrics\": {{\"a\": 1.0}}, \"pad\": \"{}\"}}",
        "x".repeat(2 << 20)
    );
    let many: BTreeMap<String, f64> = (0..65).map(|i| (format!("m{i}"), 1.0)).collect();
    let many = serde_json::json!({"step": 1, "metrics": many}).to_string();
    let long_name = format!(
        "{{\"step\": 1, \"metrics\": {{\"{}\": 1.0}}}}",
        "n".repeat(64)
    );
    let bad_name = "{\"step\": 1, \"metrics\": {\"a b\": 1.0}}".to_string();
    let huge_number = "{\"step\": 1, \"metrics\": {\"a\": 1e999}}".to_string();
    let counts: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let threads: Vec<_> = (0..4)
        .map(|k| {
            let (url, token, counts) = (url.clone(), token.clone(), counts.clone());
            let fakes = [
                forged.clone(),
                theirs.clone(),
                api_token.clone(),
                expired.clone(),
            ];
            let bodies = [
                big.clone(),
                many.clone(),
                long_name.clone(),
                bad_name.clone(),
                huge_number.clone(),
            ];
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                for i in 0..2500 {
                    let n = k * 2500 + i;
                    let (auth, body): (Option<String>, String) = match n % 8 {
                        0 => (None, report_json(1, "val_accuracy", 99.0)),
                        k @ 1..=4 => (
                            Some(fakes[k - 1].clone()),
                            report_json(1, "val_accuracy", 99.0),
                        ),
                        5 => (Some("garbage".into()), "{".into()),
                        // The real token with bodies it must refuse.
                        _ => (Some(token.clone()), bodies[n % bodies.len()].clone()),
                    };
                    let mut req = agent.post(&url);
                    if let Some(a) = auth {
                        req = req.header("Authorization", format!("Bearer {a}"));
                    }
                    let code = match req.header("Content-Type", "application/json").send(body) {
                        Ok(r) => r.status().as_u16().to_string(),
                        Err(e) => format!("error: {e}"),
                    };
                    *counts.lock().unwrap().entry(code).or_default() += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let counts = counts.lock().unwrap().clone();
    eprintln!("answers to 10,000 hostile requests: {counts:?}");
    assert!(!counts.contains_key("200"), "{counts:?}");
    // Every token that is not the trial's is refused: 401, or 429 when the flood of tokens
    // to review spends the claimed pod's review budget (the API server is not flooded).
    let refused = ["401", "429"]
        .iter()
        .map(|c| counts.get(*c).copied().unwrap_or(0))
        .sum::<usize>();
    assert_eq!(refused, 7500, "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 10_000);
    let after: BTreeMap<String, String> = env
        .all_trials("target")
        .await
        .into_iter()
        .map(|t| (t.name_any(), t.resource_version().unwrap()))
        .collect();
    assert_eq!(before, after, "a refused report changed a trial");
    let rss_after = rss_kib(env.operator_pid(op));
    eprintln!("operator RSS {rss_before} KiB before, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "the operator grew from {rss_before} to {rss_after} KiB"
    );
    let bystander = env
        .wait_for("bystander", LONG, phase_is(ExperimentPhase::Succeeded))
        .await;
    let s = bystander.status.unwrap();
    assert_eq!(s.trials.succeeded, 12);
    for t in env.all_trials("bystander").await {
        let st = t.status.unwrap();
        assert_eq!(st.value, Some(value_of(&t.spec.candidate)));
        assert_eq!(st.history.len(), 3, "{}", t.metadata.name.unwrap());
    }
    // The real token still works after all that.
    assert_eq!(
        post_report(&url, Some(&token), report_json(1, "val_accuracy", 50.0)).await,
        Ok(ReportAction::Continue)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_metrics_every_step_for_ten_thousand_steps_keeps_statuses_bounded() {
    let mut env = Env::new("op-size").await;
    env.start_operator(&[]);
    env.start_trainer(Arc::new(|_, _| Plan::Hang));
    env.apply(&manifest(
        "size",
        "{algorithm: random, seed: 12}",
        "{maxTrials: 1, parallelism: 1, trialEpochs: 12}",
        "",
    ))
    .await
    .unwrap();
    let pods: Api<Pod> = env.pods();
    let pod = wait_running(&pods, "size-0-1").await;
    let penv = crate::harness::pod_env(&pod);
    let (url, token) = (
        penv[contract::ENV_REPORT_URL].clone(),
        nasop_testkit::pod_token(&env.client, &pod).await.unwrap(),
    );
    let codes = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut codes: BTreeMap<u16, usize> = BTreeMap::new();
        for step in 1..=10_000u32 {
            // 64 metrics of 63-character names: the most a report may carry.
            let metrics: BTreeMap<String, f64> = (0..contract::MAX_METRICS)
                .map(|i| (format!("{i:02}{}", "m".repeat(61)), step as f64 + i as f64))
                .collect();
            let body = serde_json::json!({"step": step, "metrics": metrics}).to_string();
            let code = agent
                .post(&url)
                .header("Authorization", format!("Bearer {token}"))
                .header("Content-Type", "application/json")
                .send(body)
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            *codes.entry(code).or_default() += 1;
        }
        codes
    })
    .await
    .unwrap();
    eprintln!("answers to 10,000 steps of 64 metrics: {codes:?}");
    assert!(codes.get(&200).copied().unwrap_or(0) >= 20, "{codes:?}");
    assert_eq!(codes.get(&0), None, "{codes:?}");
    let trial = env.trials().get("size-0").await.unwrap();
    let size = serde_json::to_vec(&trial).unwrap().len();
    eprintln!("the trial's object: {size} bytes");
    assert!(size < 128 * 1024, "{size} bytes");
    crate::harness::end_pod(
        &pods,
        "size-0-1",
        0,
        &report_json(10_000, "val_accuracy", 70.0),
    )
    .await;
    let exp = env
        .wait_for("size", LONG, phase_is(ExperimentPhase::Succeeded))
        .await;
    assert_eq!(exp.status.as_ref().unwrap().best_value, Some(70.0));
    let size = serde_json::to_vec(&exp).unwrap().len();
    assert!(size < 512 * 1024, "the experiment is {size} bytes");
    let trial = env.trials().get("size-0").await.unwrap();
    assert!(trial.status.unwrap().history.len() <= nasop::operator::status::HISTORY_LIMIT);
}

/// Waits until the pod `name` runs, failing after `LONG` with its last status.
async fn wait_running(pods: &Api<Pod>, name: &str) -> Pod {
    let phase = |p: &Option<Pod>| {
        p.as_ref()
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.clone())
    };
    harness::poll(
        LONG,
        async || pods.get_opt(name).await.unwrap(),
        |p| phase(p).as_deref() == Some("Running"),
        |p| format!("pod {name} never ran; phase {:?}", phase(p)),
    )
    .await
    .unwrap()
}

/// Ends a pod that is being deleted as a trainer does on SIGTERM: `exit` with `message`
/// (the pod stays, its node "lost", so that the operator sees the ended pod before it goes).
async fn end_as_terminated(pods: &Api<Pod>, name: &str, exit: i32, message: &str) {
    let phase = if exit == 0 { "Succeeded" } else { "Failed" };
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = serde_json::json!({"status": {
        "phase": phase,
        "containerStatuses": [{
            "name": "trainer", "image": "trainer", "imageID": "", "ready": false,
            "restartCount": 0,
            "state": {"terminated": {"exitCode": exit, "message": message, "finishedAt": now,
                                     "reason": if exit == 0 { "Completed" } else { "Error" }}},
        }],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// Evicted (the eviction API) or deleted while it ran, a trial's pod is a lost attempt,
/// run again, whatever its trainer did on SIGTERM: a clean exit with its epoch-1 report
/// (nasop_trial.py before it said so) or exit 143. Before the fix, trial 0 recorded 41 at
/// step 1 as its result, and trial 1 failed as TrainerFailed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_or_deleted_trial_runs_again_and_records_only_its_own_full_run() {
    let mut env = Env::new("op-evict").await;
    env.start_operator(&[]);
    env.start_trainer(Arc::new(|input, attempt| {
        if attempt == 1 {
            Plan::Hang
        } else {
            Plan::Report(vec![50.0, 60.0, value_of(&input.candidate)])
        }
    }));
    env.apply(&manifest(
        "evict",
        "{algorithm: random, seed: 21}",
        "{maxTrials: 2, parallelism: 2, trialEpochs: 12, maxFailedTrials: 0}",
        "",
    ))
    .await
    .unwrap();
    let pods = env.pods();
    let early = report_json(1, "val_accuracy", 41.0);
    for (pod, evict) in [("evict-0-1", true), ("evict-1-1", false)] {
        wait_running(&pods, pod).await;
        // KWOK would remove a deleted pod at once; a real kubelet keeps it while the trainer
        // shuts down, which is when it writes its last words.
        let keep =
            serde_json::json!({"metadata": {"annotations": {nasop_testkit::NODE_LOST: "true"}}});
        pods.patch(pod, &PatchParams::default(), &Patch::Merge(&keep))
            .await
            .unwrap();
        if evict {
            pods.evict(pod, &Default::default()).await.unwrap();
            let evicted = pods.get(pod).await.unwrap();
            let conditions = evicted.status.unwrap().conditions.unwrap_or_default();
            assert!(
                conditions.iter().any(|c| c.type_ == "DisruptionTarget"),
                "the eviction API marks the pod: {conditions:?}"
            );
            end_as_terminated(&pods, pod, 0, &early).await;
        } else {
            pods.delete(pod, &DeleteParams::default()).await.unwrap();
            end_as_terminated(&pods, pod, 143, "terminated").await;
        }
    }
    let exp = env
        .wait_for("evict", LONG, phase_is(ExperimentPhase::Succeeded))
        .await;
    let s = exp.status.unwrap();
    assert_eq!((s.trials.succeeded, s.trials.failed), (2, 0), "{s:?}");
    for t in env.all_trials("evict").await {
        let st = t.status.clone().unwrap();
        assert_eq!(st.attempts, 2, "{}: {st:?}", t.name_any());
        assert_eq!(
            st.value,
            Some(value_of(&t.spec.candidate)),
            "{}",
            t.name_any()
        );
    }
    for pod in ["evict-0-1", "evict-1-1"] {
        let _ = pods
            .delete(pod, &DeleteParams::default().grace_period(0))
            .await;
    }
}

/// The requests `user` made that change something (not reads, not watches), with when the
/// API server received each, from its audit log.
fn audited_writes(user: &str) -> Vec<(String, String, String)> {
    let kubeconfig = std::path::PathBuf::from(std::env::var("KUBECONFIG").unwrap());
    let log = kubeconfig.parent().unwrap().join("logs/audit.log");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["user"]["username"] == user && e["stage"] == "ResponseComplete")
        .filter(|e| !matches!(e["verb"].as_str(), Some("get" | "list" | "watch")))
        .map(|e| {
            (
                e["requestReceivedTimestamp"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                e["verb"].as_str().unwrap_or("").to_string(),
                e["requestURI"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// A leader paused (SIGSTOP) past its lease while a standby runs: the standby takes over, and
/// the old leader, continued (SIGCONT), sends not one write after the handover (the reports
/// that queued on its port while it slept are not recorded by it) and exits. The API server's
/// audit log is the witness. Before the fix the continued leader recorded the queued reports
/// and reconciled on until its lease manager noticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_writes_nothing_after_its_standby_takes_over() {
    let mut env = Env::new("op-pause").await;
    env.route_reports();
    let (a, b) = (
        env.service_account_kubeconfig("leader-a").await,
        env.service_account_kubeconfig("leader-b").await,
    );
    let ns = env.ns.clone();
    let user = |name: &str| format!("system:serviceaccount:{ns}:{name}");
    let (a, b) = (a.display().to_string(), b.display().to_string());
    let first = env.start_operator_with(
        &["--leader-election"],
        &[("KUBECONFIG", a.as_str()), ("POD_NAME", "leader-a")],
    );
    env.start_trainer(Arc::new(|input, _| {
        Plan::Report(vec![40.0, 50.0, 55.0, 60.0, value_of(&input.candidate)])
    }));
    env.apply(&manifest(
        "pause",
        "{algorithm: random, seed: 31}",
        "{maxTrials: 10, parallelism: 2, trialEpochs: 12}",
        "",
    ))
    .await
    .unwrap();
    env.wait_for("pause", LONG, |e| {
        e.status.as_ref().is_some_and(|s| s.trials.succeeded >= 1)
    })
    .await;
    env.start_operator_with(
        &["--leader-election"],
        &[("KUBECONFIG", b.as_str()), ("POD_NAME", "leader-b")],
    );
    let pid = env.operator_pid(first).to_string();
    let signal = |sig: &str| {
        let ok = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(ok.success());
    };
    signal("-STOP");
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(env.client.clone(), &env.ns);
    let taken = harness::poll(
        LONG,
        async || leases.get_opt("nasop-operator").await.ok().flatten(),
        |l| {
            l.as_ref()
                .and_then(|l| l.spec.as_ref())
                .and_then(|s| s.holder_identity.as_deref())
                .is_some_and(|h| h.starts_with("leader-b_"))
        },
        |l| format!("the standby never took the lease: {l:?}"),
    )
    .await;
    let handover = taken.unwrap().spec.unwrap().acquire_time.unwrap().0;
    // Paused a while longer: reports queue on its port.
    tokio::time::sleep(Duration::from_secs(3)).await;
    signal("-CONT");
    let exit = harness::poll(
        Duration::from_secs(30),
        async || env.operator_exit(first),
        Option::is_some,
        |_| "the continued leader did not exit".into(),
    )
    .await;
    assert!(
        !exit.unwrap().success(),
        "it exits because it lost the lease"
    );
    assert!(
        env.operator_log(first).contains("lost the leader lease"),
        "{}",
        harness::tail(&env.operator_log(first), 20)
    );
    let exp = env
        .wait_for("pause", LONG, phase_is(ExperimentPhase::Succeeded))
        .await;
    assert_eq!(exp.status.unwrap().trials.succeeded, 10);
    let writes = audited_writes(&user("leader-a"));
    assert!(
        writes.len() > 5,
        "the audit log shows the leader's writes before the pause: {writes:?}"
    );
    let late: Vec<_> = writes
        .iter()
        .filter(|(at, ..)| at.parse::<k8s_openapi::jiff::Timestamp>().unwrap() > handover)
        .collect();
    assert!(
        late.is_empty(),
        "the old leader wrote after the handover at {handover}: {late:?}"
    );
    assert!(!audited_writes(&user("leader-b")).is_empty());
}

/// Two nasop installations that watch one namespace (a cluster-wide one and one for the
/// namespace hold different leases): the one that ran an experiment first keeps it, the
/// other leaves it and its trials alone and says so once; moving it is one annotation.
/// Before the fix both reconciled it, each creating trials and writing its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_installation_watching_the_namespace_leaves_the_experiment_alone() {
    let mut env = Env::new("op-two").await;
    env.route_reports();
    let first = env.start_operator(&["--lease-name", "cluster-wide"]);
    env.start_trainer(Arc::new(|input, _| {
        Plan::Report(vec![50.0, 55.0, value_of(&input.candidate)])
    }));
    env.apply(&manifest(
        "shared",
        "{algorithm: random, seed: 41}",
        "{maxTrials: 8, parallelism: 2, trialEpochs: 12}",
        "",
    ))
    .await
    .unwrap();
    env.wait_for("shared", LONG, |e| {
        e.status.as_ref().is_some_and(|s| s.trials.succeeded >= 1)
    })
    .await;
    let second = env.start_operator(&["--lease-name", "team"]);
    let exp = env
        .wait_for("shared", LONG, phase_is(ExperimentPhase::Succeeded))
        .await;
    let status = exp.status.unwrap();
    assert_eq!(
        status.controller.as_deref(),
        Some(format!("{}/cluster-wide", env.ns).as_str())
    );
    assert_eq!((status.trials.created, status.trials.succeeded), (8, 8));
    let log = env.operator_log(second);
    for acted in [
        "created trial",
        "created pod",
        "trial ended",
        "experiment ended",
    ] {
        assert!(
            !log.contains(acted),
            "the second installation acted ({acted}):\n{}",
            harness::tail(&log, 20)
        );
    }
    assert_eq!(
        log.matches("another nasop installation runs this experiment")
            .count(),
        1,
        "{}",
        harness::tail(&log, 20)
    );
    // Moved by a person: the annotation names the one that runs it now.
    env.kill_operator(first);
    let more = serde_json::json!({
        "metadata": {"annotations": {"nasop.dev/controller": format!("{}/team", env.ns)}},
        "spec": {"budget": {"maxTrials": 10}},
    });
    env.experiments()
        .patch("shared", &PatchParams::default(), &Patch::Merge(&more))
        .await
        .unwrap();
    let exp = env
        .wait_for("shared", LONG, |e| {
            e.status.as_ref().is_some_and(|s| s.trials.succeeded == 10)
        })
        .await;
    assert_eq!(
        exp.status.unwrap().controller.as_deref(),
        Some(format!("{}/team", env.ns).as_str())
    );
}
