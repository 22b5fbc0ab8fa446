//! `nasop operator` on the test control plane (tools/testenv; `make test` starts it and sets
//! KUBECONFIG): whole experiments on KWOK GPU nodes with the test playing the trainer.

#[allow(dead_code)]
#[path = "../support/browser.rs"]
mod browser;
// Shared with tests/install, which uses parts of it this binary does not.
mod hardening;
#[allow(dead_code)]
mod harness;
mod jobsets;
mod kueue;
#[path = "../support/pyclient.rs"]
mod pyclient;
mod python;
mod trainjobs;
mod ui;

use harness::{Env, Plan, manifest, post_report, report_json, value_of};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use nasop::api::{ExperimentPhase, NasTrial, TrialPhaseName};
use nasop_core::contract::{self, ReportAction};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

fn phase_is(p: ExperimentPhase) -> impl Fn(&nasop::api::NasExperiment) -> bool {
    move |e| e.status.as_ref().and_then(|s| s.phase) == Some(p)
}

fn completes(value: f64) -> Plan {
    Plan::Exit(0, report_json(12, "val_accuracy", value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_runs_to_the_right_best_trial_within_its_parallelism() {
    let mut env = Env::new("op-full").await;
    env.start_operator(&[]);
    env.start_trainer(Arc::new(|input, _| completes(value_of(&input.candidate))));
    let seen = env.watch_parallelism("full");
    env.apply(&manifest(
        "full",
        "{algorithm: evolution, seed: 3, settings: {population: 4, sampleSize: 2}}",
        "{maxTrials: 12, parallelism: 3, trialEpochs: 12}",
        "",
    ))
    .await
    .unwrap();
    let exp = env
        .wait_for("full", LONG, phase_is(ExperimentPhase::Succeeded))
        .await;
    let status = exp.status.unwrap();
    let trials = env.all_trials("full").await;
    assert_eq!(trials.len(), 12);
    let indices: BTreeSet<u32> = trials.iter().map(|t| t.spec.index).collect();
    assert_eq!(indices, (0..12).collect());
    // The best trial is the one whose value the trainer made highest.
    let best = trials
        .iter()
        .max_by(|a, b| {
            value_of(&a.spec.candidate)
                .total_cmp(&value_of(&b.spec.candidate))
                .then(b.spec.index.cmp(&a.spec.index))
        })
        .unwrap();
    let best_status = status.best_trial.as_ref().unwrap();
    assert_eq!(status.best_value, Some(value_of(&best.spec.candidate)));
    assert_eq!(
        value_of(&best_status.candidate),
        value_of(&best.spec.candidate)
    );
    assert_eq!(status.trials.succeeded, 12);
    assert_eq!(status.progress.as_deref(), Some("12/0/12"));
    assert!(status.conditions.iter().any(|c| c.type_ == "Succeeded"
        && c.status == "True"
        && c.observed_generation == exp.metadata.generation));
    assert!(status.completion_time.is_some() && status.start_time.is_some());
    let max_active = seen.lock().unwrap().0;
    assert!(
        (1..=3).contains(&max_active),
        "{max_active} trials were active at once; parallelism is 3"
    );
    for t in &trials {
        let s = t.status.as_ref().unwrap();
        assert_eq!(s.phase, Some(TrialPhaseName::Succeeded));
        assert_eq!(s.reason.as_deref(), Some("Completed"));
        assert_eq!(s.attempts, 1);
        assert_eq!(s.value, Some(value_of(&t.spec.candidate)));
        assert!(s.start_time.is_some() && s.completion_time.is_some());
    }
    let metrics = env.metrics().await;
    for want in [
        format!(
            "nasop_trials_finished_total{{namespace=\"{}\",experiment=\"full\",result=\"Succeeded\"}} 12",
            env.ns
        ),
        "nasop_experiments{phase=\"Succeeded\"} 1".into(),
        "nasop_trial_queue_seconds_count".into(),
        "controller_runtime_reconcile_total{controller=\"nastrial\",result=\"success\"}".into(),
    ] {
        assert!(
            metrics.contains(&want),
            "{want} missing from /metrics:\n{metrics}"
        );
    }
    // Events a user sees in `kubectl describe`.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(env.client.clone(), &env.ns);
    let reasons: BTreeSet<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for r in ["TrialCreated", "TrialSucceeded", "ExperimentSucceeded"] {
        assert!(reasons.contains(r), "no {r} event in {reasons:?}");
    }

    // Raising the budget of a finished experiment continues it.
    env.experiments()
        .patch(
            "full",
            &PatchParams::default(),
            &Patch::Merge(
                &serde_json::json!({"spec": {"budget": {"maxTrials": 15, "parallelism": 4}}}),
            ),
        )
        .await
        .unwrap();
    let exp = env
        .wait_for("full", LONG, |e| {
            e.status.as_ref().is_some_and(|s| {
                s.phase == Some(ExperimentPhase::Succeeded) && s.trials.created == 15
            })
        })
        .await;
    assert_eq!(exp.status.unwrap().trials.succeeded, 15);
    assert_eq!(env.all_trials("full").await.len(), 15);

    // Deleting the experiment removes its trials and their pods (garbage collection).
    env.experiments()
        .delete("full", &Default::default())
        .await
        .unwrap();
    harness::poll(
        LONG,
        async || {
            let trials = env.trials().list(&Default::default()).await.unwrap();
            let pods = env.pods().list(&Default::default()).await.unwrap();
            (trials.items.len(), pods.items.len())
        },
        |&left| left == (0, 0),
        |(trials, pods)| format!("{trials} trials and {pods} pods left after deletion"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn median_stopping_stops_a_bad_trial_and_forged_tokens_are_refused() {
    let mut env = Env::new("op-stop").await;
    env.start_operator(&[]);
    // Trial 2 reports poorly; the others well.
    env.start_trainer(Arc::new(|input, _| {
        let base = if input.index == 2 { 10.0 } else { 80.0 };
        Plan::Report(
            (0..40).map(|s| base + s as f64 * 0.1).collect::<Vec<_>>()
                [..if input.index == 2 { 40 } else { 4 }]
                .to_vec(),
        )
    }));
    env.apply(&manifest(
        "stop",
        "{algorithm: random, seed: 5}",
        "{maxTrials: 4, parallelism: 1, trialEpochs: 40}",
        "  earlyStopping: {algorithm: medianStop, minTrials: 2, startStep: 1}",
    ))
    .await
    .unwrap();

    // Tokens: none, a forged one, one of the pod's for another audience; the pod's own with
    // a body that is no report.
    let pod = loop {
        if let Some(p) = env
            .pods()
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .next()
        {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let penv = harness::pod_env(&pod);
    let url = penv[contract::ENV_REPORT_URL].clone();
    assert!(
        penv.contains_key(contract::ENV_REPORT_TOKEN_FILE),
        "{penv:?}"
    );
    assert!(!penv.contains_key(contract::ENV_REPORT_TOKEN), "{penv:?}");
    let token = nasop_testkit::pod_token(&env.client, &pod).await.unwrap();
    let body = report_json(1, "val_accuracy", 99.0);
    assert_eq!(post_report(&url, None, body.clone()).await, Err(401));
    // The real token's claims, re-signed by nobody.
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[2] = "Zm9yZ2Vk";
    let forged = parts.join(".");
    assert_eq!(
        post_report(&url, Some(&forged), body.clone()).await,
        Err(401)
    );
    let api_token = nasop_testkit::pod_token_for(
        &env.client,
        &pod,
        "https://kubernetes.default.svc.cluster.local",
    )
    .await
    .unwrap();
    assert_eq!(
        post_report(&url, Some(&api_token), body.clone()).await,
        Err(401)
    );
    assert_eq!(
        post_report(&url, Some(&token), "not json".into()).await,
        Err(400)
    );

    let exp = env
        .wait_for("stop", LONG, phase_is(ExperimentPhase::Succeeded))
        .await;
    // The ended trial's pod may report no more: refused (409 while its pod is kept, 401
    // once it is deleted and its bound token with it).
    let late = post_report(&url, Some(&token), body).await;
    assert!(matches!(late, Err(401 | 409)), "{late:?}");
    let trials = env.all_trials("stop").await;
    let bad = trials[2].status.clone().unwrap();
    assert_eq!(bad.phase, Some(TrialPhaseName::Stopped), "{bad:?}");
    assert_eq!(bad.reason.as_deref(), Some("EarlyStopped"));
    let stop_replies: Vec<_> = env
        .replies
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _, a)| t == "stop-2" && *a == ReportAction::Stop)
        .cloned()
        .collect();
    assert_eq!(
        stop_replies.len(),
        1,
        "trial 2 was answered stop once and then ended"
    );
    assert!(
        stop_replies[0].1 < 40,
        "stopped at step {}",
        stop_replies[0].1
    );
    for i in [0, 1, 3] {
        let s = trials[i].status.clone().unwrap();
        assert_eq!(s.phase, Some(TrialPhaseName::Succeeded), "trial {i}: {s:?}");
        assert_eq!(s.history.len(), 4, "trial {i}'s reports are its history");
    }
    let status = exp.status.unwrap();
    assert_eq!((status.trials.succeeded, status.trials.stopped), (3, 1));
    let metrics = env.metrics().await;
    assert!(
        metrics.contains("nasop_reports_total{result=\"refused\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trainer_failures_fail_the_experiment_and_lost_pods_are_retried() {
    let mut env = Env::new("op-fail").await;
    env.start_operator(&[]);
    env.start_trainer(Arc::new(|input, attempt| {
        if input.experiment == "lost" {
            // Trial 0's first pod is lost with its node; every other pod completes.
            if input.index == 0 && attempt == 1 {
                Plan::Lose
            } else {
                completes(value_of(&input.candidate))
            }
        } else if input.experiment == "hang" {
            Plan::Hang
        } else {
            Plan::Exit(3, "RuntimeError: CUDA error: out of memory".into())
        }
    }));
    env.apply(&manifest(
        "fail",
        "{algorithm: random, seed: 1}",
        "{maxTrials: 10, parallelism: 1, maxFailedTrials: 1, trialEpochs: 12}",
        "",
    ))
    .await
    .unwrap();
    env.apply(&manifest(
        "lost",
        "{algorithm: random, seed: 2}",
        "{maxTrials: 3, parallelism: 2, maxFailedTrials: 0, trialEpochs: 12}",
        "",
    ))
    .await
    .unwrap();
    env.apply(&manifest(
        "hang",
        "{algorithm: random, seed: 3}",
        "{maxTrials: 1, parallelism: 1, trialEpochs: 12, trialTimeoutSeconds: 2}",
        "",
    ))
    .await
    .unwrap();

    let exp = env
        .wait_for("fail", LONG, phase_is(ExperimentPhase::Failed))
        .await;
    let status = exp.status.unwrap();
    assert_eq!(
        status.trials.failed, 2,
        "maxFailedTrials 1: the second failure ends it"
    );
    let failed = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed")
        .unwrap();
    assert_eq!(failed.reason, "TooManyFailures");
    let t0 = env.trials().get("fail-0").await.unwrap().status.unwrap();
    assert_eq!(t0.reason.as_deref(), Some("TrainerFailed"));
    assert!(
        t0.message
            .as_deref()
            .unwrap()
            .contains("exited with code 3: RuntimeError: CUDA error"),
        "{t0:?}"
    );

    let exp = env
        .wait_for("lost", LONG, phase_is(ExperimentPhase::Succeeded))
        .await;
    let status = exp.status.unwrap();
    assert_eq!((status.trials.succeeded, status.trials.failed), (3, 0));
    let t0 = env.trials().get("lost-0").await.unwrap().status.unwrap();
    assert_eq!(t0.attempts, 2, "the lost pod was started again");
    assert_eq!(t0.pod.as_deref(), Some("lost-0-2"));
    assert_eq!(t0.phase, Some(TrialPhaseName::Succeeded));

    // A trial that outlives trialTimeoutSeconds is stopped and its pod deleted after the
    // grace period (2 s here).
    let exp = env
        .wait_for("hang", LONG, |e| {
            e.status.as_ref().is_some_and(|s| s.trials.stopped == 1)
        })
        .await;
    let t = env.trials().get("hang-0").await.unwrap().status.unwrap();
    assert_eq!(t.reason.as_deref(), Some("Timeout"), "{t:?}");
    assert!(
        env.pods()
            .get_opt("hang-0-1")
            .await
            .unwrap()
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
    );
    assert!(
        exp.status.unwrap().gpu_seconds > 0.0,
        "the hung pod held a GPU"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_manifest_is_rejected_naming_the_field() {
    let env = Env::new("op-invalid").await;
    let err = env
        .apply(&manifest(
            "bad",
            "{algorithm: evolution, seed: 1, settings: {population: 1}}",
            "{maxTrials: 5}",
            "",
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("spec.strategy.settings.population"), "{err}");
    let err = env
        .apply(&manifest(
            "bad",
            "{algorithm: random, seed: 1}",
            "{maxTrials: 0}",
            "",
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("spec.budget.maxTrials"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_operator_at_any_point_loses_nothing() {
    let mut env = Env::new("op-restart").await;
    let mut op = env.start_operator(&[]);
    env.start_trainer(Arc::new(|input, _| {
        // Some trials report first, so kills land between reports too.
        if input.index % 3 == 0 {
            Plan::Report(vec![60.0, value_of(&input.candidate)])
        } else {
            completes(value_of(&input.candidate))
        }
    }));
    let seen = env.watch_parallelism("restart");
    env.apply(&manifest(
        "restart",
        "{algorithm: evolution, seed: 9, settings: {population: 5, sampleSize: 2}}",
        "{maxTrials: 30, parallelism: 4, trialEpochs: 12}",
        "",
    ))
    .await
    .unwrap();
    for kill_at in [3, 9, 16, 24] {
        env.wait_for("restart", LONG, |e| {
            e.status
                .as_ref()
                .is_some_and(|s| s.trials.created >= kill_at)
        })
        .await;
        env.kill_operator(op);
        tokio::time::sleep(Duration::from_millis(300)).await;
        op = env.start_operator(&[]);
    }
    let exp = env
        .wait_for("restart", LONG, phase_is(ExperimentPhase::Succeeded))
        .await;
    let trials = env.all_trials("restart").await;
    let indices: BTreeSet<u32> = trials.iter().map(|t| t.spec.index).collect();
    assert_eq!(
        indices,
        (0..30).collect(),
        "exactly maxTrials distinct trials"
    );
    let status = exp.status.unwrap();
    assert_eq!((status.trials.created, status.trials.succeeded), (30, 30));
    let max_active = seen.lock().unwrap().0;
    assert!(
        max_active <= 4,
        "{max_active} trials active at once across restarts"
    );
    // Each trial ran one pod: a restart never starts a trial twice.
    for t in &trials {
        assert_eq!(t.status.as_ref().unwrap().attempts, 1, "{}", t.name_any());
    }
    // The rebuilt strategy proposed what one uninterrupted run would have: no candidate
    // twice (evolution never repeats an architecture it has tried).
    let candidates: BTreeSet<&str> = trials.iter().map(|t| t.spec.candidate.as_str()).collect();
    assert_eq!(candidates.len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_leader_and_the_other_takes_over() {
    let mut env = Env::new("op-lease").await;
    let first = env.start_operator(&["--leader-election"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = env.start_operator(&["--leader-election"]);
    // Trials run until the test ends them, so that the experiment outlives the leader.
    env.start_trainer(Arc::new(|_, _| Plan::Hang));
    env.apply(&manifest(
        "lease",
        "{algorithm: random, seed: 4}",
        "{maxTrials: 4, parallelism: 2, trialEpochs: 12}",
        "",
    ))
    .await
    .unwrap();
    env.wait_for("lease", LONG, |e| {
        e.status.as_ref().is_some_and(|s| s.trials.created >= 2)
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    let holder = leases
        .get("nasop-operator")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity;
    assert!(holder.is_some());
    assert!(
        env.operator_log(first)
            .contains("acquired the leader lease")
    );
    assert!(
        !env.operator_log(second)
            .contains("acquired the leader lease"),
        "only one replica leads"
    );
    assert!(
        !env.operator_log(second).contains("created trial"),
        "the standby does not act"
    );
    // The leader dies; the standby takes the lease (15 s) and finishes the experiment.
    env.kill_operator(first);
    let started = std::time::Instant::now();
    let exp = loop {
        for p in env.pods().list(&Default::default()).await.unwrap().items {
            let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if running && !p.annotations().contains_key(nasop_testkit::EXIT_CODE) {
                harness::end_pod(
                    &env.pods(),
                    &p.name_any(),
                    0,
                    &report_json(12, "val_accuracy", 70.0),
                )
                .await;
            }
        }
        let e = env.experiments().get("lease").await.unwrap();
        if phase_is(ExperimentPhase::Succeeded)(&e) {
            break e;
        }
        assert!(
            started.elapsed() < LONG,
            "{:?}\n{}",
            e.status,
            harness::tail(&env.operator_log(second), 20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(exp.status.unwrap().trials.created, 4);
    assert!(
        env.operator_log(second)
            .contains("acquired the leader lease")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_start_waits_for_its_experiments_and_learns_from_them() {
    let mut env = Env::new("op-warm").await;
    env.start_operator(&[]);
    env.start_trainer(Arc::new(|input, _| completes(value_of(&input.candidate))));
    let warm = "  warmStart: {experiments: [first]}";
    // Named before it exists: a condition and an event say so, and nothing starts.
    env.apply(&manifest(
        "second",
        "{algorithm: evolution, seed: 4, settings: {population: 6, sampleSize: 2}}",
        "{maxTrials: 6, parallelism: 3, trialEpochs: 12}",
        warm,
    ))
    .await
    .unwrap();
    let waiting = env
        .wait_for("second", LONG, |e| {
            e.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "WarmStart" && c.reason == "ExperimentNotFound")
            })
        })
        .await;
    let message = waiting
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "WarmStart")
        .unwrap()
        .message;
    assert!(
        message.contains("spec.warmStart.experiments[0]") && message.contains("\"first\""),
        "{message}"
    );
    assert!(env.all_trials("second").await.is_empty());

    env.apply(&manifest(
        "first",
        "{algorithm: random, seed: 1}",
        "{maxTrials: 10, parallelism: 5, trialEpochs: 12}",
        "",
    ))
    .await
    .unwrap();
    env.wait_for("first", LONG, phase_is(ExperimentPhase::Succeeded))
        .await;
    let exp = env
        .wait_for("second", LONG, phase_is(ExperimentPhase::Succeeded))
        .await;
    let status = exp.status.unwrap();
    assert!(
        !status.conditions.iter().any(|c| c.type_ == "WarmStart"),
        "{:?}",
        status.conditions
    );
    let first: BTreeSet<String> = env
        .all_trials("first")
        .await
        .into_iter()
        .map(|t| t.spec.candidate)
        .collect();
    let second = env.all_trials("second").await;
    assert_eq!(
        second.len(),
        6,
        "warm-start results count against no budget"
    );
    for t in &second {
        assert!(
            !first.contains(&t.spec.candidate),
            "{} ran again",
            t.spec.candidate
        );
    }
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(env.client.clone(), &env.ns);
    let notes: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("WarmStart"))
        .filter_map(|e| e.note)
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("starts from 10 results of first")),
        "{notes:?}"
    );

    // Another space is refused, naming the field that differs.
    let other = manifest(
        "third",
        "{algorithm: random, seed: 2}",
        "{maxTrials: 2, parallelism: 1, trialEpochs: 12}",
        warm,
    )
    .replace("nodes: 4", "nodes: 3");
    env.apply(&other).await.unwrap();
    let exp = env
        .wait_for("third", LONG, phase_is(ExperimentPhase::Failed))
        .await;
    let message = exp.status.unwrap().message.unwrap_or_default();
    assert!(
        message.contains("spec.searchSpace.cell.nodes differs"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_storage_claim_is_named_and_trial_pods_carry_the_storage() {
    let mut env = Env::new("op-storage").await;
    env.start_operator(&[]);
    env.apply(&manifest(
        "stored",
        "{algorithm: random, seed: 1}",
        "{maxTrials: 2, parallelism: 2, trialEpochs: 12}",
        "  storage: {persistentVolumeClaim: {claimName: nas-ckpt}}",
    ))
    .await
    .unwrap();
    // The scheduler holds the pods: the condition names the field and the claim.
    let exp = env
        .wait_for("stored", LONG, |e| {
            e.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Storage" && c.reason == "ClaimNotFound")
            })
        })
        .await;
    let condition = exp
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Storage")
        .unwrap();
    assert!(
        condition
            .message
            .contains("spec.storage.persistentVolumeClaim.claimName")
            && condition.message.contains("\"nas-ckpt\""),
        "{}",
        condition.message
    );
    // Each pod mounts the claim and is told its directories in it.
    let uid = env
        .experiments()
        .get("stored")
        .await
        .unwrap()
        .uid()
        .unwrap();
    let pods = env.pods().list(&Default::default()).await.unwrap().items;
    assert_eq!(pods.len(), 2);
    for pod in &pods {
        let env_vars = harness::pod_env(pod);
        let index = pod.labels()["nasop.dev/trial"]
            .rsplit('-')
            .next()
            .unwrap()
            .to_string();
        // Under the namespace, the experiment's name and this object's UID.
        assert_eq!(
            env_vars[contract::ENV_CHECKPOINT_DIR],
            format!(
                "/var/lib/nasop/storage/{}/stored/{}/trials/{index}/checkpoint",
                env.ns, uid
            )
        );
        let volumes = pod
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .clone()
            .unwrap_or_default();
        assert!(
            volumes.iter().any(|v| v
                .persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.claim_name == "nas-ckpt")),
            "{volumes:?}"
        );
    }
    // The trial controller records each pod a moment after the scheduler refused it (the
    // condition above can come first); then the trials wait, and none fails.
    let pending = |trials: &[NasTrial]| {
        trials.len() == 2
            && trials.iter().all(|t| {
                t.status
                    .as_ref()
                    .is_some_and(|s| s.phase == Some(TrialPhaseName::Pending) && s.attempts == 1)
            })
    };
    env.wait_for_trials("stored", LONG, pending).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let trials = env.all_trials("stored").await;
    assert!(
        pending(&trials),
        "no trial is lost while the claim is missing: {:?}",
        trials.iter().map(|t| &t.status).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_training_trains_the_best_candidates_again_and_picks_by_validation() {
    let mut env = Env::new("op-final").await;
    env.start_operator(&[]);
    // Search trials report their value; final-training pods wait for the test, which ends
    // them with a validation accuracy that reverses the search's order (plus a little noise
    // from the seed) and a test accuracy that keeps it: a winner picked on test would be
    // another one.
    env.start_trainer(Arc::new(|input, _| match input.stage {
        contract::Stage::Search => completes(value_of(&input.candidate)),
        contract::Stage::Final => Plan::Hang,
    }));
    env.apply(&manifest(
        "final",
        "{algorithm: random, seed: 11}",
        "{maxTrials: 6, parallelism: 2, trialEpochs: 12}",
        "  finalTraining: {top: 2, seeds: 2, epochs: 20}",
    ))
    .await
    .unwrap();
    let training = env
        .wait_for("final", LONG, phase_is(ExperimentPhase::Training))
        .await
        .status
        .unwrap();
    let ft = training.final_training.expect("final training status");
    assert_eq!(ft.candidates.len(), 2);
    assert_eq!(ft.winner, None, "no final-training trial has ended yet");
    assert_eq!(training.trials.succeeded, 6);

    let pods = env.pods();
    let mut ended = BTreeSet::new();
    let started = std::time::Instant::now();
    loop {
        let exp = env.experiments().get("final").await.unwrap();
        if phase_is(ExperimentPhase::Succeeded)(&exp) {
            break;
        }
        assert!(
            started.elapsed() < LONG,
            "final training did not end: {:?}",
            exp.status
        );
        let mut alive = 0;
        for pod in pods.list(&Default::default()).await.unwrap().items {
            let name = pod.name_any();
            let input: contract::TrialInput =
                serde_json::from_str(&harness::pod_env(&pod)[contract::ENV_TRIAL]).unwrap();
            if input.stage != contract::Stage::Final || ended.contains(&name) {
                continue;
            }
            alive += 1;
            let v = value_of(&input.candidate);
            let val = 200.0 - v + (input.seed % 7) as f64 * 0.01;
            let message = serde_json::json!({"step": input.budget.epochs, "metrics": {"val_accuracy": val, "test_accuracy": v}});
            harness::end_pod(&pods, &name, 0, &message.to_string()).await;
            ended.insert(name);
        }
        assert!(
            alive <= 2,
            "{alive} final-training pods at once; parallelism is 2"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = env
        .experiments()
        .get("final")
        .await
        .unwrap()
        .status
        .unwrap();
    let trials = env.all_trials("final").await;
    assert_eq!(
        trials.len(),
        10,
        "6 search trials, then 2 candidates x 2 seeds"
    );
    let finals: Vec<_> = trials
        .iter()
        .filter(|t| t.spec.stage == Some(nasop::api::TrialStage::Final))
        .collect();
    assert_eq!(finals.len(), 4);
    assert!(
        finals
            .iter()
            .all(|t| t.spec.index >= 6 && t.spec.epochs == 20)
    );
    let seeds: BTreeSet<u64> = finals.iter().map(|t| t.spec.seed).collect();
    assert_eq!(seeds.len(), 4, "each final-training trial has its own seed");
    // The chosen candidates are the search's two best distinct networks.
    let ft = status
        .final_training
        .as_ref()
        .expect("final training status");
    assert_eq!(ft.candidates.len(), 2);
    let search_best = trials
        .iter()
        .filter(|t| t.spec.stage.is_none())
        .map(|t| value_of(&t.spec.candidate))
        .fold(f64::MIN, f64::max);
    assert_eq!(value_of(&ft.candidates[0].candidate), search_best);
    for c in &ft.candidates {
        assert_eq!((c.trials, c.succeeded), (2, 2));
        let val = c.metrics["val_accuracy"];
        assert_eq!(val.count, 2);
        assert!((val.mean - (200.0 - value_of(&c.candidate))).abs() < 0.1);
        assert!(val.std < 0.1);
        assert_eq!(c.metrics["test_accuracy"].mean, value_of(&c.candidate));
    }
    // The winner: the best mean validation accuracy, whatever the test accuracy says.
    let by_val = ft
        .candidates
        .iter()
        .max_by(|a, b| {
            a.metrics["val_accuracy"]
                .mean
                .total_cmp(&b.metrics["val_accuracy"].mean)
                .then(b.rank.cmp(&a.rank))
        })
        .unwrap();
    assert_eq!(ft.winner, Some(by_val.rank));
    let best = status.best_trial.as_ref().unwrap();
    assert_eq!(best.candidate, by_val.candidate);
    assert!(best.index >= 6 && best.epochs == 20, "{best:?}");
    assert_eq!(status.progress.as_deref(), Some("10/0/10"));
    let message = status.message.unwrap_or_default();
    assert!(message.starts_with("final training:"), "{message}");
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Succeeded" && c.reason == "FinalTrainingDone"),
        "{:?}",
        status.conditions
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_refuses_the_trainer_is_named_on_the_experiment() {
    let mut env = Env::new("op-s3").await;
    env.start_operator(&[]);
    // The trainer's own words when the bucket refuses its first write (trainer/src/storage.rs).
    env.start_trainer(Arc::new(|_, _| {
        Plan::Exit(
            1,
            "nasop-trainer: error: StorageRefused: s3://nas-models/bucket/trials/0/checkpoint refused a write: NoSuchBucket".into(),
        )
    }));
    env.apply(&manifest(
        "bucket",
        "{algorithm: random, seed: 1}",
        "{maxTrials: 4, parallelism: 1, trialEpochs: 12, maxFailedTrials: 1}",
        "  storage: {s3: {bucket: nas-models, endpoint: 'http://s3.storage:9000', credentialsSecret: s3-keys}}",
    ))
    .await
    .unwrap();
    let exp = env
        .wait_for("bucket", LONG, phase_is(ExperimentPhase::Failed))
        .await;
    let status = exp.status.clone().unwrap();
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Storage")
        .unwrap_or_else(|| panic!("no Storage condition: {:?}", status.conditions));
    assert_eq!(condition.reason, "WriteRefused");
    assert!(
        condition.message.contains("spec.storage.s3")
            && condition.message.contains("\"nas-models\"")
            && condition.message.contains("NoSuchBucket"),
        "{}",
        condition.message
    );
    let trials = env.all_trials("bucket").await;
    assert!(!trials.is_empty());
    for t in &trials {
        let s = t.status.as_ref().unwrap();
        assert_eq!(s.reason.as_deref(), Some("StorageRefused"), "{s:?}");
    }
    // The pods were told the bucket's URLs, its endpoint, and the Secret's keys by reference.
    let pods = env.pods().list(&Default::default()).await.unwrap().items;
    let pod = pods.first().expect("a pod");
    let vars = harness::pod_env(pod);
    assert_eq!(
        vars[contract::ENV_CHECKPOINT_DIR],
        format!(
            "s3://nas-models/{}/bucket/{}/trials/0/checkpoint",
            env.ns,
            exp.uid().unwrap()
        )
    );
    assert_eq!(vars["AWS_ENDPOINT"], "http://s3.storage:9000");
    let container = &pod.spec.as_ref().unwrap().containers[0];
    let key = container
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "AWS_SECRET_ACCESS_KEY")
        .unwrap();
    assert!(key.value.is_none());
    assert_eq!(
        key.value_from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref())
            .map(|s| s.name.as_str()),
        Some("s3-keys")
    );
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(env.client.clone(), &env.ns);
    let storage_events = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Storage"))
        .count();
    assert!(storage_events >= 1, "a Storage event for kubectl describe");
}
