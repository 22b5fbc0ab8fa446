//! `nasop ui --cluster` against an experiment the operator runs on KWOK nodes, in a real
//! browser: the list, the charts (a point per trial), sorting, a trial's cell, a trial that
//! ends while the page is open, and a user who may not list experiments.

use super::browser::{Browser, Ui, cell_ops};
use super::harness::{Env, Plan, manifest, value_of};
use super::{LONG, phase_is};
use kube::api::{Patch, PatchParams};
use nasop::api::{ExperimentPhase, TrialPhaseName};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_view_shows_the_operators_experiment_live_with_the_users_rights() {
    let mut env = Env::new("op-ui").await;
    env.start_operator(&[]);
    // Each trial reports two epochs, then ends with its value.
    env.start_trainer(Arc::new(|input, _| {
        let v = value_of(&input.candidate);
        Plan::Later(Box::pin(async move { Ok(Plan::Report(vec![v - 5.0, v])) }))
    }));
    env.apply(&manifest(
        "searched",
        "{algorithm: random, seed: 11}",
        "{maxTrials: 6, parallelism: 2, trialEpochs: 2}",
        "",
    ))
    .await
    .unwrap();
    env.wait_for("searched", LONG, phase_is(ExperimentPhase::Succeeded))
        .await;

    let ui = Ui::start(&["--cluster", "-n", &env.ns], &[]);
    let b = Browser::start().await;
    b.goto(&ui.url).await;
    b.wait_until(
        "the list",
        "document.querySelector('#experiments')",
        Duration::from_secs(20),
    )
    .await;
    let row = b.text("#experiments tbody tr").await;
    for want in ["searched", env.ns.as_str(), "Succeeded", "random", "6/0/6"] {
        assert!(row.contains(want), "{want} missing from {row:?}");
    }
    assert!(
        b.text("header .source")
            .await
            .contains(&format!("namespace {}", env.ns))
    );
    b.screenshot("cluster-experiments", "light").await;

    b.click("#experiments tbody tr a").await;
    b.wait_until(
        "the experiment",
        "document.querySelector('#trials-time')",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        b.count("#trials-time circle.pt").await,
        6,
        "a point per trial"
    );
    assert!(b.text("#conditions").await.contains("Succeeded"));
    let values = b.sort_by_value().await;
    assert_eq!(values.len(), 6);
    assert!(values.windows(2).all(|w| w[0] >= w[1]), "{values:?}");
    let trials = env.all_trials("searched").await;
    let best = trials
        .iter()
        .map(|t| value_of(&t.spec.candidate))
        .fold(f64::MIN, f64::max);
    assert_eq!(values[0], best);
    b.screenshot("cluster-experiment", "light").await;

    // A trial: its cell and its curve of two reports.
    let t = &trials[0];
    b.goto(&format!(
        "{}/e/{}/searched/{}",
        ui.url, env.ns, t.spec.index
    ))
    .await;
    let ops: Vec<String> = serde_json::from_value(
        b.eval("return Array.from(document.querySelectorAll('svg.cell g.edge')).map(g => g.dataset.op)")
            .await,
    )
    .unwrap();
    assert_eq!(ops, cell_ops(&t.spec.candidate));
    b.wait_until(
        "two reports on the curve",
        "document.querySelectorAll('figure.curve[data-metric=val_accuracy] circle.curve-pt').length == 2",
        Duration::from_secs(5),
    )
    .await;
    // KWOK pods have no kubelet to serve logs: the page says what the API server said.
    b.wait_until(
        "the log's answer",
        "!document.querySelector('#log').innerText.includes('loading')",
        Duration::from_secs(10),
    )
    .await;

    // Live: a raised budget's trials appear on the open page within 2 s of their status.
    b.goto(&format!("{}/e/{}/searched", ui.url, env.ns)).await;
    b.eval("window.__loaded = 1; return 1").await;
    env.experiments()
        .patch(
            "searched",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"spec": {"budget": {"maxTrials": 8}}})),
        )
        .await
        .unwrap();
    let mut slowest = Duration::ZERO;
    for want in [7, 8] {
        let waited = Instant::now();
        loop {
            let done = env
                .all_trials("searched")
                .await
                .iter()
                .filter(|t| {
                    t.status.as_ref().and_then(|s| s.phase) == Some(TrialPhaseName::Succeeded)
                })
                .count();
            if done >= want {
                break;
            }
            assert!(waited.elapsed() < LONG, "trial {want} did not succeed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = b
            .wait_until(
                &format!("trial {want} on the page"),
                &format!("document.querySelectorAll('#trials-time circle.pt').length >= {want}"),
                Duration::from_secs(5),
            )
            .await;
        slowest = slowest.max(took);
    }
    assert_eq!(
        b.eval("return window.__loaded").await,
        1,
        "the page was reloaded"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "a new trial took {slowest:?} to show"
    );

    // A user without `list` on the namespace is told so, not shown an empty page.
    let nobody = env.account_kubeconfig("ui-nobody", None).await;
    let denied = Ui::start(
        &["--cluster", "-n", &env.ns],
        &[("KUBECONFIG", nobody.to_str().unwrap())],
    );
    b.goto(&denied.url).await;
    b.wait_until(
        "the refusal",
        "document.querySelector('.problem')",
        Duration::from_secs(20),
    )
    .await;
    let problem = b.text(".problem").await;
    assert!(
        problem.contains(&format!(
            "may not list nasexperiments in the namespace {}",
            env.ns
        )) && problem.contains("forbidden"),
        "{problem}"
    );
    b.screenshot("cluster-forbidden", "light").await;
    b.close().await;
}
