//! `nasop run` end to end: tabular search, resume after SIGKILL, results, bad manifests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn nasop() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nasop"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nasop-run-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "nasop failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn results(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(nasop()
        .arg("results")
        .arg(dir)
        .arg("--json")
        .output()
        .unwrap()))
    .unwrap()
}

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// A manifest whose trials are a shell script speaking the trial contract: it sleeps, then
/// writes a result that depends on the candidate.
fn script_manifest(dir: &Path, max_trials: u32, parallelism: u32, sleep: &str) -> PathBuf {
    let path = dir.join("script.yaml");
    let script = format!(
        "sleep {sleep}; n=$(printf %s \"$NASOP_TRIAL\" | grep -o nor_conv_3x3 | wc -l); printf '{{\"step\":1,\"metrics\":{{\"val_accuracy\":%s}}}}' \"$n\" > \"$NASOP_TERMINATION_PATH\""
    );
    std::fs::write(
        &path,
        script_yaml(
            "script",
            "{algorithm: evolution, seed: 4}",
            &format!("{{maxTrials: {max_trials}, parallelism: {parallelism}, trialEpochs: 1}}"),
            "",
            &script,
        ),
    )
    .unwrap();
    path
}

/// A NAS-Bench-201 cell search whose trials run `script` with `sh -c`.
fn script_yaml(name: &str, strategy: &str, budget: &str, extra: &str, script: &str) -> String {
    format!(
        r#"apiVersion: nasop.dev/v1alpha1
kind: NasExperiment
metadata:
  name: {name}
spec:
  objectives: [{{metric: val_accuracy, goal: maximize}}]
  searchSpace:
    cell: {{nodes: 4, operations: [none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3]}}
  strategy: {strategy}
  budget: {budget}
{extra}
  trialTemplate:
    spec:
      containers:
        - name: trial
          command: [sh, -c]
          args: [{script:?}]
"#
    )
}

#[test]
fn tabular_example_finds_the_same_best_for_the_same_seed() {
    let dir = scratch("tabular");
    let mut best = Vec::new();
    for run in ["a", "b"] {
        let runs = dir.join(run);
        let out = ok(nasop()
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg("run")
            .arg(example("nb201-evolution.yaml"))
            .arg("--runs-dir")
            .arg(&runs)
            .output()
            .unwrap());
        assert!(out.contains("finished: all 2000 trials ended"), "{out}");
        let r = results(&runs.join("nb201-evolution"));
        assert_eq!(r["trials"].as_array().unwrap().len(), 2000);
        best.push(r["best"]["candidate"].as_str().unwrap().to_string());
        assert!(
            r["best"]["metrics"]["test_accuracy"].as_f64().unwrap() > 94.0,
            "{}",
            r["best"]
        );
    }
    assert_eq!(best[0], best[1]);
}

#[test]
fn a_short_search_of_real_processes_ends_with_a_results_table() {
    let dir = scratch("processes");
    let manifest = script_manifest(&dir, 6, 3, "0.05");
    let out = ok(nasop()
        .arg("run")
        .arg(&manifest)
        .arg("--runs-dir")
        .arg(dir.join("runs"))
        .arg("--plain")
        .output()
        .unwrap());
    assert!(out.contains("Top 10 by val_accuracy"), "{out}");
    assert!(out.contains("best: trial"), "{out}");
    let r = results(&dir.join("runs/script"));
    let trials = r["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 6);
    assert!(trials.iter().all(|t| t["phase"] == "Succeeded"), "{r}");
    let csv = ok(nasop()
        .arg("results")
        .arg(dir.join("runs/script"))
        .arg("--csv")
        .output()
        .unwrap());
    assert_eq!(csv.lines().count(), 7);
    assert!(csv.lines().next().unwrap().contains("val_accuracy"));
}

/// spec.wrap: an unmodified script that only prints `epoch=… val_accuracy=…` lines, its
/// architecture given as an argument, is a trial: it reports each epoch (the journal holds
/// them), and its result is the last value it printed.
#[test]
fn an_unmodified_script_is_a_trial_under_spec_wrap() {
    let dir = scratch("wrap");
    let path = dir.join("wrap.yaml");
    let script = "n=$(printf %s \"$1\" | grep -o nor_conv_3x3 | wc -l); for e in 1 2 3; do echo \"epoch=$e val_accuracy=0.$n$e loss=1.$e\"; done";
    let yaml = script_yaml(
        "wrapped",
        "{algorithm: random, seed: 4}",
        "{maxTrials: 4, parallelism: 2, trialEpochs: 3}",
        "  wrap: {stepMetrics: [epoch]}",
        script,
    )
    .replace(
        &format!("args: [{script:?}]"),
        // `sh -c SCRIPT NAME ARG`: $1 is the architecture.
        &format!("args: [{script:?}, wrapped, \"{{architecture}}\"]"),
    );
    std::fs::write(&path, &yaml).unwrap();
    ok(nasop()
        .arg("run")
        .arg(&path)
        .arg("--runs-dir")
        .arg(dir.join("runs"))
        .arg("--plain")
        .output()
        .unwrap());
    let r = results(&dir.join("runs/wrapped"));
    let trials = r["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 4, "{r}");
    for t in trials {
        assert_eq!(t["phase"], "Succeeded", "{t}");
        let convs = t["architecture"]
            .as_str()
            .unwrap()
            .matches("nor_conv_3x3")
            .count();
        let value = t["metrics"]["val_accuracy"].as_f64().unwrap();
        assert!(
            (value - format!("0.{convs}3").parse::<f64>().unwrap()).abs() < 1e-9,
            "the last printed value is the result: {t}"
        );
        assert_eq!(t["metrics"]["loss"].as_f64(), Some(1.3), "{t}");
    }
    // Every epoch was reported while the script ran.
    let reports = journal_counts(&dir.join("runs/wrapped/journal.jsonl"), "report");
    assert_eq!(reports.len(), 4, "{reports:?}");
    assert!(reports.values().all(|&n| n >= 3), "{reports:?}");
    // Without a written command there is nothing to wrap: the error names the field.
    std::fs::write(
        &path,
        yaml.replace("command: [sh, -c]", "image: python:3.11"),
    )
    .unwrap();
    let out = nasop()
        .arg("run")
        .arg(&path)
        .arg("--runs-dir")
        .arg(dir.join("runs2"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("spec.trialTemplate.spec.containers[0].command") && err.contains("entrypoint"),
        "{err}"
    );
}

/// Journal entries of one kind, by trial index.
fn journal_counts(path: &Path, event: &str) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["event"] == event {
            *counts.entry(v["index"].as_u64().unwrap()).or_default() += 1;
        }
    }
    counts
}

#[test]
fn sigkill_at_any_moment_loses_nothing_and_repeats_nothing() {
    let dir = scratch("kill");
    let manifest = script_manifest(&dir, 24, 3, "0.15");
    let runs = dir.join("runs");
    for wait_ms in [150, 420, 700, 1000, 1300] {
        let mut child = nasop()
            .arg("run")
            .arg(&manifest)
            .arg("--runs-dir")
            .arg(&runs)
            .arg("--plain")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(wait_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let journal = runs.join("script/journal.jsonl");
    let finished_before: BTreeSet<u64> = journal_counts(&journal, "finished").into_keys().collect();
    assert!(
        !finished_before.is_empty(),
        "no trial finished before the kills; the test did not test anything"
    );
    ok(nasop()
        .arg("run")
        .arg(&manifest)
        .arg("--runs-dir")
        .arg(&runs)
        .arg("--plain")
        .output()
        .unwrap());
    let created = journal_counts(&journal, "trial");
    let finished = journal_counts(&journal, "finished");
    assert_eq!(created.len(), 24, "exactly maxTrials trials: {created:?}");
    assert!(
        created.values().all(|&n| n == 1),
        "a trial index was recorded twice: {created:?}"
    );
    assert_eq!(finished.len(), 24, "every trial finished: {finished:?}");
    assert!(
        finished.values().all(|&n| n == 1),
        "a finished trial ran again: {finished:?}"
    );
    assert_eq!(
        created.keys().copied().collect::<Vec<_>>(),
        (0..24).collect::<Vec<_>>()
    );
    let r = results(&runs.join("script"));
    assert!(
        r["trials"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["phase"] == "Succeeded"),
        "{r}"
    );
}

#[test]
fn a_changed_search_space_is_refused() {
    let dir = scratch("conflict");
    let manifest = script_manifest(&dir, 2, 2, "0");
    ok(nasop()
        .arg("run")
        .arg(&manifest)
        .arg("--runs-dir")
        .arg(dir.join("runs"))
        .output()
        .unwrap());
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("seed: 4", "seed: 5");
    std::fs::write(&manifest, text).unwrap();
    let out = nasop()
        .arg("run")
        .arg(&manifest)
        .arg("--runs-dir")
        .arg(dir.join("runs"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("different strategy"), "{err}");
}

#[test]
fn a_raised_budget_continues_a_finished_run() {
    let dir = scratch("continue");
    let manifest = script_manifest(&dir, 3, 3, "0");
    ok(nasop()
        .arg("run")
        .arg(&manifest)
        .arg("--runs-dir")
        .arg(dir.join("runs"))
        .output()
        .unwrap());
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("maxTrials: 3", "maxTrials: 5");
    std::fs::write(&manifest, text).unwrap();
    ok(nasop()
        .arg("run")
        .arg(&manifest)
        .arg("--runs-dir")
        .arg(dir.join("runs"))
        .output()
        .unwrap());
    assert_eq!(
        results(&dir.join("runs/script"))["trials"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
}

#[test]
fn bad_manifests_and_missing_programs_say_what_to_do() {
    let dir = scratch("bad");
    let path = dir.join("bad.yaml");
    let good = std::fs::read_to_string(example("nb201-evolution.yaml")).unwrap();
    std::fs::write(&path, good.replace("sampleSize: 5", "sampleSize: 50")).unwrap();
    let out = nasop()
        .arg("run")
        .arg(&path)
        .arg("--runs-dir")
        .arg(dir.join("runs"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:21:7: spec.strategy.settings.sampleSize"),
        "{err}"
    );
    std::fs::write(
        &path,
        good.replace(
            "command: [nasop, nb201-trial]",
            "command: [nasop-trainer-missing]",
        ),
    )
    .unwrap();
    let out = nasop()
        .arg("run")
        .arg(&path)
        .arg("--runs-dir")
        .arg(dir.join("runs"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nasop-trainer-missing") && err.contains("not found"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// A failed trainer's termination message (its reason, as the operator shows it) is in the
/// trial's reason beside the pointer to its log.
#[test]
fn failing_trials_fail_the_experiment_with_a_pointer_to_the_log() {
    let dir = scratch("failing");
    let manifest = script_manifest(&dir, 6, 1, "0");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "args: [\"sleep 0;",
        "args: [\"echo dataset missing >&2; echo training diverged >$NASOP_TERMINATION_PATH; exit 3; sleep 0;",
    );
    std::fs::write(&manifest, text).unwrap();
    let out = nasop()
        .arg("run")
        .arg(&manifest)
        .arg("--runs-dir")
        .arg(dir.join("runs"))
        .arg("--plain")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("failed: 4 trials failed, more than maxFailedTrials (3)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("TrainerFailed: exit status: 3: training diverged; see")
            && stdout.contains("log.txt"),
        "{stdout}"
    );
    let log = std::fs::read_to_string(dir.join("runs/script/trials/0/log.txt")).unwrap();
    assert!(log.contains("dataset missing"));
}

#[test]
fn every_example_is_a_valid_manifest() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            if let Err(e) = nasop::local::manifest::load(&path) {
                panic!("{e}");
            }
            seen += 1;
        }
    }
    assert!(seen >= 5, "only {seen} examples");
}

#[test]
fn plot_writes_non_empty_charts_including_the_pareto_front() {
    let dir = scratch("plot");
    let runs = dir.join("runs");
    ok(nasop()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("run")
        .arg(example("nb201-multi-objective.yaml"))
        .arg("--runs-dir")
        .arg(&runs)
        .output()
        .unwrap());
    let r = results(&runs.join("nb201-pareto"));
    let front = r["pareto_front"].as_array().unwrap();
    assert!(front.len() >= 3, "{}", r["pareto_front"]);
    assert!(
        front
            .iter()
            .all(|t| t["metrics"]["latency_ms"].as_f64().unwrap() <= 20.0),
        "the front respects the constraint"
    );
    let out = ok(nasop()
        .arg("plot")
        .arg(runs.join("nb201-pareto"))
        .output()
        .unwrap());
    for chart in ["best_vs_trials", "best_vs_time", "pareto"] {
        for ext in ["png", "svg"] {
            let path = runs
                .join("nb201-pareto/plots")
                .join(format!("{chart}.{ext}"));
            let len = std::fs::metadata(&path)
                .unwrap_or_else(|e| panic!("{}: {e}\n{out}", path.display()))
                .len();
            assert!(len > 5_000, "{} is only {len} bytes", path.display());
        }
    }
    let png = std::fs::read(runs.join("nb201-pareto/plots/pareto.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
}

/// The tabular example with another name, budget, seed and (optionally) warm start.
fn tabular_manifest(dir: &Path, name: &str, max_trials: u32, seed: u64, warm: &[&str]) -> PathBuf {
    let mut text = std::fs::read_to_string(example("nb201-evolution.yaml"))
        .unwrap()
        .replace("name: nb201-evolution", &format!("name: {name}"))
        .replace("maxTrials: 2000", &format!("maxTrials: {max_trials}"))
        .replace("seed: 1", &format!("seed: {seed}"));
    if !warm.is_empty() {
        text = text.replace(
            "  budget:",
            &format!(
                "  warmStart:\n    experiments: [{}]\n  budget:",
                warm.join(", ")
            ),
        );
    }
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_warm_start_learns_from_earlier_runs_and_does_not_repeat_them() {
    let dir = scratch("warm");
    let runs = dir.join("runs");
    let run = |manifest: &Path| {
        nasop()
            .arg("run")
            .arg(manifest)
            .arg("--runs-dir")
            .arg(&runs)
            .output()
            .unwrap()
    };
    ok(run(&tabular_manifest(&dir, "first", 100, 1, &[])));
    let out = ok(run(&tabular_manifest(&dir, "second", 60, 2, &["first"])));
    assert!(
        out.contains("warm start: the strategy starts from 100 results of first"),
        "{out}"
    );
    let first = results(&runs.join("first"));
    let second = results(&runs.join("second"));
    let candidates = |r: &serde_json::Value| -> BTreeSet<String> {
        r["trials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["candidate"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        second["trials"].as_array().unwrap().len(),
        60,
        "its own budget"
    );
    let repeated: Vec<_> = candidates(&first)
        .intersection(&candidates(&second))
        .cloned()
        .collect();
    assert!(repeated.is_empty(), "trained again: {repeated:?}");
    // Another space is refused, naming the field that differs; so is a run that is not there.
    let other = tabular_manifest(&dir, "third", 10, 3, &["first"]);
    let text = std::fs::read_to_string(&other)
        .unwrap()
        .replace("nodes: 4", "nodes: 3");
    std::fs::write(&other, text).unwrap();
    let out = run(&other);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("spec.warmStart.experiments[0]")
            && err.contains("spec.searchSpace.cell.nodes differs"),
        "{err}"
    );
    let out = run(&tabular_manifest(&dir, "fourth", 10, 4, &["nowhere"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no run of \"nowhere\""), "{err}");
}

#[test]
fn final_training_trains_the_best_again_with_seeds_and_picks_by_validation() {
    let dir = scratch("final");
    let path = dir.join("final.yaml");
    // The search reports the number of 3x3 convolutions; final training (the stage in
    // NASOP_TRIAL) reverses that order in val_accuracy, with the seed's parity as noise,
    // and keeps it in test_accuracy.
    let script = r#"n=$(printf %s "$NASOP_TRIAL" | grep -o nor_conv_3x3 | wc -l); case "$NASOP_TRIAL" in *'"stage":"final"'*) s=$(printf %s "$NASOP_TRIAL" | sed 's/.*"seed":\([0-9]*\).*/\1/'); v=$((100 - n + s % 2)); t=$n;; *) v=$n; t=0;; esac; printf '{"step":1,"metrics":{"val_accuracy":%s,"test_accuracy":%s}}' "$v" "$t" > "$NASOP_TERMINATION_PATH""#;
    let yaml = script_yaml(
        "final",
        "{algorithm: random, seed: 4}",
        "{maxTrials: 8, parallelism: 2, trialEpochs: 1}",
        "  finalTraining: {top: 3, seeds: 2, epochs: 2}",
        script,
    );
    std::fs::write(&path, yaml).unwrap();
    let run = || {
        nasop()
            .arg("run")
            .arg(&path)
            .arg("--runs-dir")
            .arg(dir.join("runs"))
            .arg("--plain")
            .output()
            .unwrap()
    };
    let out = ok(run());
    assert!(out.contains("final training: the search's top 3"), "{out}");
    assert!(out.contains("final trial"), "{out}");
    let r = results(&dir.join("runs/final"));
    let trials = r["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 8 + 3 * 2);
    let finals: Vec<&serde_json::Value> = trials.iter().filter(|t| t["stage"] == "final").collect();
    assert_eq!(finals.len(), 6);
    assert!(
        finals
            .iter()
            .all(|t| t["epochs"] == 2 && t["phase"] == "Succeeded")
    );
    let ft = &r["final_training"];
    let candidates = ft["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 3);
    for c in candidates {
        assert_eq!(c["trials"].as_array().unwrap().len(), 2);
        assert_eq!(c["metrics"]["val_accuracy"]["count"], 2);
    }
    // The winner has the best mean validation accuracy (here: the search's worst of the
    // three), not the best test accuracy.
    let mean = |c: &serde_json::Value, m: &str| c["metrics"][m]["mean"].as_f64().unwrap();
    let by_val = candidates
        .iter()
        .max_by(|a, b| {
            mean(a, "val_accuracy")
                .total_cmp(&mean(b, "val_accuracy"))
                .then(b["rank"].as_u64().cmp(&a["rank"].as_u64()))
        })
        .unwrap();
    assert_eq!(ft["winner"], by_val["rank"]);
    assert_eq!(r["best"]["stage"], "final");
    assert_eq!(r["best"]["candidate"], by_val["candidate"]);
    assert_eq!(r["finished"]["reason"], "FinalTrainingDone");
    // Run again: nothing more to do, nothing trained twice.
    ok(run());
    assert_eq!(
        results(&dir.join("runs/final"))["trials"]
            .as_array()
            .unwrap()
            .len(),
        14
    );
}
