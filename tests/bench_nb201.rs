//! The strategy benchmark on the real NAS-Bench-201 tables: the copy built into nasop
//! (data/nasbench201 of the repository), and the same folder read with --data.

use std::path::PathBuf;
use std::process::Command;

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/nasbench201")
}

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_nasop"))
        .args(["bench", "nb201"])
        .args(args)
        .arg("--json")
        .output()
        .expect("nasop runs");
    assert!(
        out.status.success(),
        "nasop bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn random_search_reproduces_the_published_row() {
    // NAS-Bench-201 paper, Table 5: RS 93.70 ± 0.36 on CIFAR-10 at 12,000 s.
    let r = bench(&[
        "--dataset",
        "cifar10",
        "--strategy",
        "random",
        "--runs",
        "200",
        "--budget-seconds",
        "12000",
    ]);
    for key in [
        "strategy",
        "dataset",
        "runs",
        "queries_mean",
        "valid_mean",
        "test_mean",
        "test_std",
    ] {
        assert!(r.get(key).is_some(), "missing {key} in {r}");
    }
    assert_eq!(r["strategy"], "random");
    assert_eq!(r["runs"], 200);
    let mean = r["test_mean"].as_f64().unwrap();
    assert!(
        (93.70 - 0.36..=93.70 + 0.36).contains(&mean),
        "random search test mean {mean}"
    );
    let queries = r["queries_mean"].as_f64().unwrap();
    assert!(
        (90.0..=120.0).contains(&queries),
        "{queries} queries in 12,000 simulated seconds"
    );
}

#[test]
fn guided_search_beats_random_and_is_reproducible() {
    let args = [
        "--dataset",
        "cifar10",
        "--strategy",
        "bayesian",
        "--runs",
        "40",
        "--seed",
        "3",
    ];
    let a = bench(&args);
    let random = bench(&[
        "--dataset",
        "cifar10",
        "--strategy",
        "random",
        "--runs",
        "40",
        "--seed",
        "3",
    ]);
    assert!(
        a["test_mean"].as_f64().unwrap() > random["test_mean"].as_f64().unwrap() + 0.2,
        "bayesian {a} vs random {random}"
    );
    let b = bench(&args);
    assert_eq!(a["test_mean"], b["test_mean"]);
}

#[test]
fn multi_objective_runs_report_hypervolume() {
    let r = bench(&[
        "--strategy",
        "nsga2",
        "--runs",
        "10",
        "--latency",
        "hwnas_pixel3_latency_ms",
        "--max-latency-ms",
        "20",
    ]);
    let hv = r["hypervolume_mean"]
        .as_f64()
        .expect("hypervolume in multi-objective runs");
    assert!(hv > 0.5 && hv <= 1.0, "hypervolume share {hv}");
}

#[test]
fn the_built_in_tables_are_the_repository_folder() {
    let args = [
        "--strategy",
        "evolution",
        "--runs",
        "20",
        "--latency",
        "help_1080ti_1_latency_ms",
    ];
    // Everything but the time it took.
    let result = |args: &[&str]| {
        let mut r = bench(args);
        r.as_object_mut().unwrap().remove("wall_seconds");
        r
    };
    let built_in = result(&args);
    let dir = data().display().to_string();
    let mut with_dir: Vec<&str> = args.to_vec();
    with_dir.extend(["--data", &dir]);
    assert_eq!(result(&with_dir), built_in, "--data {dir}");
}

#[test]
fn the_repository_tables_are_the_reference_tables() {
    // SHA-256 of the reference CSV files the copy was taken from (the project's shared
    // data/nasbench201), so that a clone checks its copy with nothing beside it.
    use sha2::{Digest, Sha256};
    use std::io::Read;
    for (name, reference) in [
        (
            "nb201.csv",
            "956bb79c67f5a4425b93d0e1a1fc29b540657dd969be7998118275a52d4d5042",
        ),
        (
            "nb201_hw_latency.csv",
            "2cbf44c9fe6eafba56a698ba30c98bcf175c978bcf69f9c9c3bcf167ee1adf61",
        ),
        (
            "derived_random_search_expectation.csv",
            "13da55acf2fec4ea79246633a596738dbf9c2a41d3e58192317a367dede10e98",
        ),
    ] {
        let path = data().join(format!("{name}.gz"));
        let mut csv = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
            .read_to_end(&mut csv)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let digest: String = Sha256::digest(&csv)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(digest, reference, "{} decompressed", path.display());
    }
}

#[test]
fn multi_fidelity_runs_and_bad_input_is_explained() {
    let r = bench(&["--strategy", "random", "--fidelity", "asha", "--runs", "10"]);
    assert!(r["test_mean"].as_f64().unwrap() > 90.0);
    let out = Command::new(env!("CARGO_BIN_EXE_nasop"))
        .args(["bench", "nb201", "--strategy", "annealing", "--data"])
        .arg(data())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("annealing") && err.contains("evolution"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_nasop"))
        .args(["bench", "nb201", "--data", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pass --data"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
