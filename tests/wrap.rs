//! `nasop wrap` end to end: an unmodified command that prints `name=value` lines (or writes
//! TensorBoard event files) becomes a trial; a stop ends it within the grace even when it
//! ignores SIGTERM; the final report is its last values.

use nasop_core::contract::{self, Report, ReportAction, ReportReply};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A report endpoint: records every report, answers stop from `stop_at` on.
struct Endpoint {
    url: String,
    reports: Arc<Mutex<Vec<Report>>>,
}

impl Endpoint {
    fn start(stop_at: Option<u32>) -> Endpoint {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/report", server.server_addr().to_ip().unwrap());
        let reports: Arc<Mutex<Vec<Report>>> = Arc::default();
        let seen = reports.clone();
        std::thread::spawn(move || {
            for mut request in server.incoming_requests() {
                let auth = request
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Authorization"))
                    .map(|h| h.value.to_string());
                assert_eq!(auth.as_deref(), Some("Bearer secret"));
                let mut body = String::new();
                request.as_reader().read_to_string(&mut body).unwrap();
                let report: Report = serde_json::from_str(&body).unwrap();
                let stop = stop_at.is_some_and(|s| report.step >= s);
                seen.lock().unwrap().push(report);
                let reply = ReportReply {
                    action: if stop {
                        ReportAction::Stop
                    } else {
                        ReportAction::Continue
                    },
                };
                let _ = request.respond(tiny_http::Response::from_string(
                    serde_json::to_string(&reply).unwrap(),
                ));
            }
        });
        Endpoint { url, reports }
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nasop-wrap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn trial_json() -> String {
    serde_json::json!({
        "experiment": "e", "trial": "e-7", "index": 7, "seed": 3,
        "candidate": "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|none~1|nor_conv_1x1~2|;lr=0.05",
        "hyperparameters": {"lr": 0.05},
        "budget": {"epochs": 4},
        "metrics": ["val_accuracy"]
    })
    .to_string()
}

/// Runs `nasop wrap <args>` as a trial reporting to `endpoint`.
fn wrap(dir: &Path, endpoint: &Endpoint, args: &[&str]) -> (Output, String) {
    let termination = dir.join("termination.json");
    let out = Command::new(env!("CARGO_BIN_EXE_nasop"))
        .arg("wrap")
        .args(args)
        .env(contract::ENV_TRIAL, trial_json())
        .env(contract::ENV_REPORT_URL, &endpoint.url)
        .env(contract::ENV_REPORT_TOKEN, "secret")
        .env(contract::ENV_TERMINATION_PATH, &termination)
        .current_dir(dir)
        .output()
        .unwrap();
    let message = std::fs::read_to_string(&termination).unwrap_or_default();
    (out, message)
}

#[test]
fn printed_epochs_are_reported_and_the_last_printed_values_are_the_result() {
    let dir = scratch("completed");
    let endpoint = Endpoint::start(None);
    let script = "echo \"lr=$NASOP_HP_LR arch=$1\"; for i in 1 2 3 4; do echo \"epoch=$i val_accuracy=0.8$i loss=0.$((9-i))\"; done";
    let (out, message) = wrap(
        &dir,
        &endpoint,
        &["--", "sh", "-c", script, "sh", "{architecture}"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("lr=0.05 arch=|nor_conv_3x3~0|"), "{stdout}");
    let reports = endpoint.reports.lock().unwrap().clone();
    let steps: Vec<u32> = reports
        .iter()
        .filter(|r| r.end.is_none())
        .map(|r| r.step)
        .collect();
    // `lr=0.05` on the first line is a metric too, at step 1 (no step named yet).
    assert_eq!(steps, vec![1, 1, 2, 3, 4]);
    assert_eq!(reports[2].metrics["val_accuracy"], 0.82);
    let last: Report = serde_json::from_str(&message).unwrap();
    assert_eq!(last.end, Some(contract::RunEnd::Completed));
    assert_eq!(last.step, 4);
    assert_eq!(last.metrics["val_accuracy"], 0.84);
    assert_eq!(last.metrics["loss"], 0.5);
}

#[test]
fn a_stop_ends_a_command_that_ignores_sigterm_within_the_grace() {
    let dir = scratch("stopped");
    let endpoint = Endpoint::start(Some(3));
    // Ignores SIGTERM: only the SIGKILL after the grace ends it.
    let script = "trap 'echo ignoring SIGTERM' TERM; i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo \"epoch=$i val_accuracy=0.$((50+i))\"; sleep 0.2; done";
    let started = Instant::now();
    let (out, message) = wrap(
        &dir,
        &endpoint,
        &["--stop-grace-seconds", "1.5", "--", "sh", "-c", script],
    );
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Stopped at epoch 3 (0.6 s), killed 1.5 s later: far sooner than the 8 s it would run.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(stdout.contains("ignoring SIGTERM"), "{stdout}");
    let last_printed = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("epoch="))
        .and_then(|l| l.split("val_accuracy=").nth(1))
        .map(|v| v.trim().parse::<f64>().unwrap())
        .unwrap();
    let last: Report = serde_json::from_str(&message).unwrap();
    assert_eq!(last.end, Some(contract::RunEnd::Stopped));
    assert_eq!(last.metrics["val_accuracy"], last_printed);
    let steps: Vec<u32> = endpoint
        .reports
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.step)
        .collect();
    assert!(steps.starts_with(&[1, 2, 3]), "{steps:?}");
}

#[test]
fn a_failing_command_fails_the_trial_with_its_last_output() {
    let dir = scratch("failed");
    let endpoint = Endpoint::start(None);
    let (out, message) = wrap(
        &dir,
        &endpoint,
        &[
            "--",
            "sh",
            "-c",
            "echo epoch=1 val_accuracy=0.5; echo CUDA out of memory; exit 3",
        ],
    );
    assert!(!out.status.success());
    assert!(message.starts_with("nasop wrap: error:"), "{message}");
    assert!(
        message.contains("exit status: 3") && message.contains("CUDA out of memory"),
        "{message}"
    );
    let (out, message) = wrap(&dir, &endpoint, &["--", "train.py", "--wd={wd}"]);
    assert!(!out.status.success());
    assert!(
        message.contains("{wd}") && message.contains("{lr}"),
        "{message}"
    );
}

/// The checked-in event file (tests/data/tfevents, written by TensorBoard's own writer).
fn event_file() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tfevents");
    std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("events.out.tfevents"))
        })
        .expect("an event file in tests/data/tfevents")
}

#[test]
fn tensorboard_scalars_are_reported_per_step_while_they_are_written() {
    let dir = scratch("tensorboard");
    let endpoint = Endpoint::start(None);
    let file = event_file();
    let size = std::fs::metadata(&file).unwrap().len();
    // The script writes the event file in three pieces, 0.7 s apart, and prints nothing.
    let third = size / 3 + 1;
    let script = format!(
        "mkdir -p logs/validation; for k in 0 1 2; do dd if={} bs={third} skip=$k count=1 status=none >> logs/validation/events.out.tfevents.1.test; sleep 0.7; done",
        file.display()
    );
    let (out, message) = wrap(
        &dir,
        &endpoint,
        &["--tensorboard", "logs", "--", "sh", "-c", &script],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports = endpoint.reports.lock().unwrap().clone();
    let steps: std::collections::BTreeSet<u32> = reports.iter().map(|r| r.step).collect();
    assert_eq!(steps, (1..=4).collect(), "{reports:?}");
    let last: Report = serde_json::from_str(&message).unwrap();
    assert_eq!(last.end, Some(contract::RunEnd::Completed));
    assert_eq!(last.step, 4);
    // Written by the generator (make.py): val_accuracy 0.5 + 0.1 * step (simple_value),
    // loss 1 / step (a TF2-style scalar tensor).
    assert!(
        (last.metrics["validation_val_accuracy"] - 0.9).abs() < 1e-6,
        "{last:?}"
    );
    assert!(
        (last.metrics["validation_loss"] - 0.25).abs() < 1e-6,
        "{last:?}"
    );
    // More than one report arrived before the script ended: read while written.
    assert!(reports.len() >= 3);
}

#[test]
fn a_process_left_holding_the_output_does_not_hold_the_trial() {
    let dir = scratch("orphan");
    let endpoint = Endpoint::start(None);
    let started = Instant::now();
    let (out, message) = wrap(
        &dir,
        &endpoint,
        &["--", "sh", "-c", "sleep 30 & echo epoch=1 val_accuracy=0.5"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let last: Report = serde_json::from_str(&message).unwrap();
    assert_eq!(last.metrics["val_accuracy"], 0.5);
}
