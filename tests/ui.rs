//! `nasop ui` over local runs, in a real browser (Debian's headless Chromium): a finished
//! run's charts, table and cell drawings, and a run being written showing up live.
//! Screenshots go to target/ui-screenshots (the README's pictures come from there).

#[path = "support/browser.rs"]
mod browser;

use browser::{Browser, Ui, cell_ops};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn nasop() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nasop"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nasop-ui-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn results(dir: &Path) -> serde_json::Value {
    let out = nasop()
        .arg("results")
        .arg(dir)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_run_draws_its_search_and_its_cells() {
    let runs = scratch("finished");
    let out = nasop()
        .args(["run", "--plain", "--runs-dir"])
        .arg(&runs)
        .arg(repo("examples/nb201-multi-objective.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run_dir = runs.join("nb201-pareto");
    let res = results(&run_dir);
    let trials = res["trials"].as_array().unwrap();
    let with_value = trials
        .iter()
        .filter(|t| t["metrics"]["val_accuracy"].is_number())
        .count();

    let ui = Ui::start(&[runs.to_str().unwrap()], &[]);
    let b = Browser::start().await;

    // The list: the experiment with kubectl's columns.
    b.goto(&ui.url).await;
    assert_eq!(b.count("#experiments tbody tr").await, 1);
    let row = b.text("#experiments tbody tr").await;
    for want in ["nb201-pareto", "local", "Succeeded", "nsga2", "300/0/300"] {
        assert!(row.contains(want), "{want} missing from the row {row:?}");
    }
    b.screenshot("experiments", "light").await;

    // The experiment: one point per trial, best so far, the Pareto front with its
    // constraint, parallel coordinates.
    b.click("#experiments tbody tr a").await;
    b.wait_until(
        "the experiment page",
        "document.querySelector('#trials-time')",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(b.count("#trials-time circle.pt").await, with_value);
    assert!(b.count("#best-trials path.best").await == 1);
    assert!(b.count("#pareto .pareto circle.pt").await >= 2);
    assert!(
        b.text("#pareto").await.contains("latency_ms max 20"),
        "the constraint is drawn"
    );
    assert!(b.count("svg.parallel polyline").await >= 100);
    let best_trial = res["best"]["index"].as_u64().unwrap();
    assert!(
        b.text("main dl.facts")
            .await
            .contains(&format!("trial {best_trial}"))
    );
    b.screenshot("experiment", "light").await;
    b.screenshot("experiment-dark", "dark").await;

    // The table sorts by value (best first for a maximized objective) and pages.
    assert_eq!(b.count("#trial-table tbody tr").await, 50);
    let values = b.sort_by_value().await;
    assert!(
        values.windows(2).all(|w| w[0] >= w[1]),
        "not descending: {values:?}"
    );
    let best_value = trials
        .iter()
        .filter_map(|t| t["metrics"]["val_accuracy"].as_f64())
        .fold(f64::MIN, f64::max);
    assert!(
        (values[0] - best_value).abs() < 1e-3,
        "{} is not the best {best_value}",
        values[0]
    );
    b.click("#trial-table a[data-sort=value]").await;
    b.wait_until(
        "ascending",
        "location.search.includes('sort=value') && !location.search.includes('desc')",
        Duration::from_secs(10),
    )
    .await;
    let first: f64 = b.texts("#trial-table td.value").await[0].parse().unwrap();
    assert!(first <= values[values.len() - 1]);
    b.click("a[rel=next]").await;
    b.wait_until(
        "page 2",
        "location.search.includes('page=1')",
        Duration::from_secs(10),
    )
    .await;
    assert!(b.text(".pager").await.contains("page 2 of 6"));

    // Keyboard: j moves to the first row, Enter opens its trial.
    b.eval("document.activeElement.blur(); return 1").await;
    b.client
        .active_element()
        .await
        .unwrap()
        .send_keys("j")
        .await
        .unwrap();
    b.wait_until(
        "a row is focused",
        "document.activeElement.matches('tr[data-href]')",
        Duration::from_secs(5),
    )
    .await;

    // A trial: its cell with the operation on every edge, in order.
    b.goto(&format!("{}/e/local/nb201-pareto/{best_trial}", ui.url))
        .await;
    let candidate = b.text("#candidate").await;
    let ops: Vec<String> = serde_json::from_value(
        b.eval("return Array.from(document.querySelectorAll('svg.cell g.edge')).map(g => g.dataset.op)").await,
    )
    .unwrap();
    assert_eq!(ops, cell_ops(&candidate));
    assert_eq!(b.count("svg.cell g.node").await, 4);
    // An edge whose op is `none` is never drawn live.
    assert_eq!(b.count("svg.cell g.edge.live[data-op=none]").await, 0);
    assert!(
        b.count("figure.curve").await >= 1,
        "a learning curve per metric"
    );
    b.screenshot("trial", "light").await;
    b.close().await;
    let _ = std::fs::remove_dir_all(&runs);
}

/// A search whose trials are Python with the trial helper: each reports three epochs, a
/// little over half a second apart, and prints what it does.
fn live_manifest(dir: &Path) -> PathBuf {
    let script = [
        "import time, nasop_trial",
        "with nasop_trial.Trial.from_env() as t:",
        "    n = t.candidate.count('nor_conv_3x3')",
        "    for e in t.epochs():",
        "        time.sleep(0.6)",
        "        print(f'epoch {e} of', t.candidate, flush=True)",
        "        t.report(e, {'val_accuracy': 50.0 + 10.0 * n + e})",
    ]
    .join("\n");
    let path = dir.join("live.yaml");
    std::fs::write(
        &path,
        format!(
            r#"apiVersion: nasop.dev/v1alpha1
kind: NasExperiment
metadata:
  name: live
spec:
  objectives: [{{metric: val_accuracy, goal: maximize}}]
  searchSpace:
    cell: {{nodes: 4, operations: [none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3]}}
  strategy: {{algorithm: random, seed: 5}}
  budget: {{maxTrials: 6, parallelism: 1, trialEpochs: 3}}
  trialTemplate:
    spec:
      containers:
        - name: trial
          command: [python3, -c]
          args: [{script:?}]
          env: [{{name: PYTHONPATH, value: {python:?}}}]
"#,
            python = repo("python").display().to_string()
        ),
    )
    .unwrap();
    path
}

fn journal_lines(path: &Path, event: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("\"event\":\"{event}\"")))
        .count()
}

/// Waits for the journal's `count`th `event` line, then for `script` to hold on the open
/// page; how long the page took after the journal.
async fn appears(b: &Browser, journal: &Path, event: &str, count: usize, script: &str) -> Duration {
    let seen = Instant::now();
    while journal_lines(journal, event) < count {
        assert!(
            seen.elapsed() < Duration::from_secs(30),
            "no {event} line {count}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    b.wait_until(
        &format!("{event} {count} on the page"),
        script,
        Duration::from_secs(5),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_being_written_shows_each_new_trial_and_report_within_two_seconds() {
    let runs = scratch("live");
    let manifest = live_manifest(&runs);
    let mut run = nasop()
        .args(["run", "--plain", "--runs-dir"])
        .arg(&runs)
        .arg(&manifest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = runs.join("live").join("journal.jsonl");
    let started = Instant::now();
    while journal_lines(&journal, "started") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ui = Ui::start(&[runs.to_str().unwrap()], &[]);
    let b = Browser::start().await;

    // The trial page of the running trial: each report appears without a reload.
    b.goto(&format!("{}/e/local/live/0", ui.url)).await;
    b.eval("window.__loaded = 1; return 1").await;
    let mut slowest = Duration::ZERO;
    for step in 1..=2 {
        let took = appears(
            &b,
            &journal,
            "report",
            step,
            &format!("document.querySelectorAll('figure.curve[data-metric=val_accuracy] circle.curve-pt').length >= {step}"),
        )
        .await;
        slowest = slowest.max(took);
    }
    assert_eq!(
        b.eval("return window.__loaded").await,
        1,
        "the page was not reloaded"
    );
    b.wait_until(
        "the trial's log",
        "document.querySelector('#log').innerText.includes('epoch 1 of |')",
        Duration::from_secs(5),
    )
    .await;

    // The experiment page: each finished trial appears as a point without a reload.
    b.goto(&format!("{}/e/local/live", ui.url)).await;
    for _ in 0..2 {
        let want = journal_lines(&journal, "finished") + 1;
        let took = appears(
            &b,
            &journal,
            "finished",
            want,
            &format!("document.querySelectorAll('#trial-table tbody tr td .phase.Succeeded').length >= {want}"),
        )
        .await;
        slowest = slowest.max(took);
    }
    assert!(
        slowest < Duration::from_secs(2),
        "the page showed a change after {slowest:?}"
    );
    println!("slowest change to reach the open page: {slowest:?}");
    b.screenshot("live", "light").await;
    b.close().await;
    assert!(run.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&runs);
}

#[test]
fn ui_refuses_what_it_cannot_show() {
    let out = nasop().args(["ui", "/nonexistent/runs"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/runs is not a directory"),
        "{err}"
    );
    let out = nasop().args(["ui", "-n", "x"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cluster"));
}
