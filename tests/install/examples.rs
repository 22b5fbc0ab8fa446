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
            assert!(
                out.status.success(),
                "{} is refused by the API server: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let _ = run(kubectl().args(["delete", "namespace", &ns, "--wait=false"]));
    assert!(seen >= 15, "only {seen} examples");
}

/// The custom-trainer example's script, run as trials by `nasop run`, speaks the contract.
#[test]
fn the_custom_trainer_example_speaks_the_trial_contract() {
    let dir = scratch("custom-trainer");
    let docs =
        documents(&std::fs::read_to_string(repo("examples/k8s/custom-trainer.yaml")).unwrap());
    let script = dir.join("trainer.py");
    std::fs::write(
        &script,
        of_kind(&docs, "ConfigMap")[0]["data"]["trainer.py"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let mut exp = of_kind(&docs, "NasExperiment")[0].clone();
    exp["spec"]["budget"] = serde_json::json!({"maxTrials": 6, "parallelism": 2, "trialEpochs": 4});
    exp["spec"]["trialTemplate"] = serde_json::json!({"spec": {"containers": [{
        "name": "trainer", "command": ["python3", script.display().to_string()]}]}});
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
    let results: Value = serde_json::from_str(&ok(Command::new(env!("CARGO_BIN_EXE_nasop"))
        .arg("results")
        .arg(runs.join("custom-trainer"))
        .arg("--json")))
    .unwrap();
    let text = results.to_string();
    assert!(text.contains("val_accuracy"), "{text}");
    assert!(!text.contains("\"Failed\""), "{text}");
}
