//! The examples: every manifest accepted by the CRDs and the operator's checks, and the
//! custom trainer's script speaking the trial contract.

use super::installed::release;
use super::*;
use nasop::api::NasExperiment;

#[test]
fn every_example_is_accepted_by_the_crds_and_the_operators_checks() {
    release();
    let ns = format!("examples-{}", std::process::id());
    create_namespace(&ns);
    let mut seen = 0;
    for dir in ["examples", "examples/k8s"] {
        for entry in std::fs::read_dir(repo(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in documents(&text) {
                if doc["kind"] == "NasExperiment" {
                    let exp: NasExperiment = serde_json::from_value(doc.clone())
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    if let Err(e) =
                        nasop::api::validate(&exp.metadata.name.clone().unwrap(), &exp.spec)
                    {
                        panic!("{}: {e}", path.display());
                    }
                    seen += 1;
                }
            }
            let out = run(kubectl()
                .args(["create", "--dry-run=server", "-n", &ns, "-f"])
                .arg(&path));
            // A cluster-scoped example another test applied (the TrainJob runtime) exists
            // already: the API server checks that after validating it.
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() || stderr.contains("(AlreadyExists)"),
                "{} is refused by the API server: {stderr}",
                path.display(),
            );
        }
    }
    let _ = run(kubectl().args(["delete", "namespace", &ns, "--wait=false"]));
    assert!(seen >= 15, "only {seen} examples");
}

/// The Python trainers' ConfigMaps (the custom trainer's, the TrainJob's) carry
/// python/nasop_trial.py as it is.
#[test]
fn the_python_examples_carry_the_python_helper() {
    for example in [
        "examples/k8s/custom-trainer.yaml",
        "examples/k8s/trainjob.yaml",
    ] {
        let docs = documents(&std::fs::read_to_string(repo(example)).unwrap());
        let copy = of_kind(&docs, "ConfigMap")[0]["data"]["nasop_trial.py"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            copy == std::fs::read_to_string(repo("python/nasop_trial.py")).unwrap(),
            "{example}'s nasop_trial.py differs from python/nasop_trial.py: run `make examples`"
        );
    }
}

/// Writes the custom-trainer example's scripts into `dir` and its experiment with `spec`
/// merged in, trials running the script under python3, then runs it with `nasop run`; returns
/// the run directory.
fn run_custom_trainer(dir: &Path, spec: Value) -> PathBuf {
    let docs =
        documents(&std::fs::read_to_string(repo("examples/k8s/custom-trainer.yaml")).unwrap());
    for file in ["trainer.py", "nasop_trial.py"] {
        std::fs::write(
            dir.join(file),
            of_kind(&docs, "ConfigMap")[0]["data"][file]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    }
    let mut exp = of_kind(&docs, "NasExperiment")[0].clone();
    for (key, value) in spec.as_object().unwrap() {
        exp["spec"][key] = value.clone();
    }
    exp["spec"]["trialTemplate"] = serde_json::json!({"spec": {"containers": [{
        "name": "trainer", "command": ["python3", dir.join("trainer.py").display().to_string()]}]}});
    let manifest = dir.join("custom-trainer.yaml");
    std::fs::write(&manifest, serde_yaml::to_string(&exp).unwrap()).unwrap();
    let runs = dir.join("runs");
    let _ = std::fs::remove_dir_all(&runs);
    ok(Command::new(env!("CARGO_BIN_EXE_nasop"))
        .arg("run")
        .arg(&manifest)
        .arg("--runs-dir")
        .arg(&runs)
        .arg("--plain"));
    runs.join("custom-trainer")
}

/// The custom-trainer example's script, run as trials by `nasop run`, speaks the contract.
#[test]
fn the_custom_trainer_example_speaks_the_trial_contract() {
    let dir = scratch("custom-trainer");
    let run = run_custom_trainer(
        &dir,
        serde_json::json!({"budget": {"maxTrials": 6, "parallelism": 2, "trialEpochs": 4}}),
    );
    let results: Value = serde_json::from_str(&ok(Command::new(env!("CARGO_BIN_EXE_nasop"))
        .arg("results")
        .arg(&run)
        .arg("--json")))
    .unwrap();
    let text = results.to_string();
    assert!(text.contains("val_accuracy"), "{text}");
    assert!(!text.contains("\"Failed\""), "{text}");
    // Each trial that completed its epochs left its model where its final report says.
    let completed: Vec<&Value> = results["trials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["phase"] == "Succeeded")
        .collect();
    assert!(!completed.is_empty(), "{text}");
    for t in completed {
        let artifact = t["artifact"].as_str().unwrap_or_else(|| panic!("{t}"));
        assert!(Path::new(artifact).join("model.json").is_file(), "{t}");
    }
}

/// Under ASHA, a promoted trial of the example continues its parent's checkpoint through
/// python/nasop_trial.py: its first report is the epoch after the parent's last.
#[test]
fn the_python_helper_continues_a_promoted_trials_parent() {
    let dir = scratch("custom-trainer-asha");
    let run = run_custom_trainer(
        &dir,
        serde_json::json!({
            "fidelity": {"algorithm": "asha", "minEpochs": 1, "maxEpochs": 4, "reductionFactor": 2},
            "earlyStopping": null,
            "budget": {"maxTrials": 10, "parallelism": 2},
        }),
    );
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).unwrap();
    let entries: Vec<Value> = journal
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let epochs = |index: &Value| {
        entries
            .iter()
            .find(|e| e["event"] == "trial" && e["index"] == *index)
            .map(|e| e["epochs"].as_u64().unwrap())
            .unwrap()
    };
    let mut promoted = 0;
    for child in entries
        .iter()
        .filter(|e| e["event"] == "trial" && !e["resume_from"].is_null())
    {
        let first = entries
            .iter()
            .filter(|e| e["event"] == "report" && e["index"] == child["index"])
            .map(|e| e["step"].as_u64().unwrap())
            .min()
            .unwrap_or_else(|| panic!("promoted trial {} never reported", child["index"]));
        assert_eq!(
            first,
            epochs(&child["resume_from"]) + 1,
            "trial {} should continue trial {}'s checkpoint:\n{journal}",
            child["index"],
            child["resume_from"]
        );
        promoted += 1;
    }
    assert!(promoted >= 2, "only {promoted} promotions:\n{journal}");
}

/// examples/k8s/unmodified-script.yaml's script, run by `nasop run` under spec.wrap as the
/// cluster runs it: each printed epoch is a report, the last printed value the result, and
/// the best trial is the one nearest the script's optimum.
#[test]
fn the_unmodified_script_example_reports_through_the_wrapper() {
    let dir = scratch("unmodified-script");
    let docs =
        documents(&std::fs::read_to_string(repo("examples/k8s/unmodified-script.yaml")).unwrap());
    let script = dir.join("train.py");
    std::fs::write(
        &script,
        of_kind(&docs, "ConfigMap")[0]["data"]["train.py"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let mut exp = of_kind(&docs, "NasExperiment")[0].clone();
    exp["spec"]["budget"] = serde_json::json!({"maxTrials": 4, "parallelism": 2, "trialEpochs": 3});
    // The image's path to the script becomes this machine's.
    exp["spec"]["trialTemplate"]["spec"]["containers"][0]["command"] =
        serde_json::json!(["python3", script.display().to_string()]);
    let manifest = dir.join("unmodified-script.yaml");
    std::fs::write(&manifest, serde_yaml::to_string(&exp).unwrap()).unwrap();
    let runs = dir.join("runs");
    ok(Command::new(env!("CARGO_BIN_EXE_nasop"))
        .arg("run")
        .arg(&manifest)
        .arg("--runs-dir")
        .arg(&runs)
        .arg("--plain"));
    let run = runs.join("unmodified-script");
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).unwrap();
    let results: Value = serde_json::from_str(&ok(Command::new(env!("CARGO_BIN_EXE_nasop"))
        .arg("results")
        .arg(&run)
        .arg("--json")))
    .unwrap();
    let trials = results["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 4, "{results}");
    for t in trials {
        assert_eq!(t["phase"], "Succeeded", "{t}");
        let reports: Vec<Value> = journal
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["event"] == "report" && e["index"] == t["index"])
            .collect();
        let steps: Vec<u64> = reports.iter().filter_map(|r| r["step"].as_u64()).collect();
        assert!(steps.starts_with(&[1, 2, 3]), "{steps:?}");
        let last_printed = reports
            .iter()
            .filter(|r| r["step"] == 3)
            .filter_map(|r| r["metrics"]["val_accuracy"].as_f64())
            .next_back()
            .unwrap();
        assert_eq!(
            t["metrics"]["val_accuracy"].as_f64(),
            Some(last_printed),
            "{t}"
        );
    }
}
