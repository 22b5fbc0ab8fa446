//! `nasop bench ui`: the UI's server time on a big experiment. Writes a run directory of
//! N trials (default 10,000, 12 reports each, two objectives, a learning rate), serves it
//! on loopback and times the pages over HTTP: the first (uncached) load, then repeated
//! loads, sorted and paged tables, and a trial page. Prints one line per page.

use crate::local::journal::{Entry, FinishedPhase, Journal};
use nasop_core::rng::Rng;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct UiBenchArgs {
    /// Trials in the experiment.
    #[arg(long, default_value_t = 10_000)]
    pub trials: u32,
    /// Loads of each page to time.
    #[arg(long, default_value_t = 20)]
    pub repeat: usize,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Keep the run in this runs directory (to look at with `nasop ui DIR`).
    #[arg(long)]
    pub keep: Option<std::path::PathBuf>,
}

const MANIFEST: &str = r#"apiVersion: nasop.dev/v1alpha1
kind: NasExperiment
metadata:
  name: ui-bench
spec:
  objectives:
    - metric: val_accuracy
      goal: maximize
    - metric: latency_ms
      goal: minimize
  constraints:
    - metric: latency_ms
      max: 20
  searchSpace:
    cell:
      nodes: 4
      operations: [none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3]
    hyperparameters:
      - name: lr
        float: {min: 0.001, max: 0.3, log: true}
  strategy:
    algorithm: random
    seed: 1
  budget:
    maxTrials: MAX_TRIALS
    parallelism: 16
    trialEpochs: 12
  trialTemplate:
    spec:
      containers:
        - name: trial
          image: ghcr.io/nasop/nasop:dev
          command: [nasop, nb201-trial]
"#;

/// Writes a finished run of `trials` trials into `dir` (its name is the experiment's).
pub fn write_run(dir: &Path, trials: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let manifest = MANIFEST.replace("MAX_TRIALS", &trials.to_string());
    std::fs::write(dir.join("manifest.yaml"), &manifest)?;
    let m = crate::local::manifest::load(&dir.join("manifest.yaml"))?;
    let space = &m.experiment.space;
    let path = dir.join("journal.jsonl");
    let _ = std::fs::remove_file(&path);
    // One write at the end: fsyncing 150,000 lines one by one is not what is measured.
    let mut lines = String::new();
    let mut push = |e: &Entry| {
        lines.push_str(&serde_json::to_string(e).expect("entries serialise"));
        lines.push('\n');
    };
    let t0 = 1_800_000_000.0;
    push(&Entry::Experiment {
        name: "ui-bench".into(),
        identity: serde_json::json!({}),
        at: t0,
    });
    let mut rng = Rng::new(7);
    for i in 0..trials {
        let point = space.sample(&mut rng);
        let start = t0 + i as f64 * 3.0;
        push(&Entry::Trial {
            index: i,
            candidate: space.format(&point),
            epochs: 12,
            seed: i as u64,
            resume_from: None,
            stage: Default::default(),
            at: start,
        });
        push(&Entry::Started {
            index: i,
            attempt: 1,
            at: start,
        });
        let quality = rng.unit();
        let latency = 5.0 + 30.0 * rng.unit();
        let mut acc = 0.0;
        for step in 1..=12 {
            acc = quality * 0.9 * (1.0 - (-(step as f64) / 4.0).exp());
            push(&Entry::Report {
                index: i,
                step,
                metrics: BTreeMap::from([
                    ("val_accuracy".to_string(), acc),
                    ("train_loss".to_string(), 2.3 * (1.0 - acc)),
                ]),
            });
        }
        let failed = i % 97 == 5;
        push(&Entry::Finished {
            index: i,
            phase: if failed {
                FinishedPhase::Failed
            } else {
                FinishedPhase::Succeeded
            },
            metrics: if failed {
                BTreeMap::new()
            } else {
                BTreeMap::from([
                    ("val_accuracy".to_string(), acc),
                    ("latency_ms".to_string(), latency),
                ])
            },
            info: BTreeMap::new(),
            reason: if failed { "Error" } else { "Completed" }.into(),
            at: start + 40.0 + 20.0 * rng.unit(),
        });
    }
    std::fs::write(&path, lines)?;
    // The journal reads back the way the runner's own does.
    Journal::replay(&path, Some(space))?;
    Ok(())
}

/// Appends one finished trial to a journal, as the runner does.
fn append_trial(journal: &Path, index: u32) -> anyhow::Result<()> {
    let mut j = Journal::open(journal)?;
    // Where the written run's trials would have gone on: 3 s apart.
    let at = 1_800_000_000.0 + index as f64 * 3.0;
    let candidate = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|;lr=0.01".to_string();
    let metrics = BTreeMap::from([
        ("val_accuracy".to_string(), 0.5),
        ("latency_ms".to_string(), 12.0),
    ]);
    for e in [
        Entry::Trial {
            index,
            candidate,
            epochs: 12,
            seed: index as u64,
            resume_from: None,
            stage: Default::default(),
            at,
        },
        Entry::Started {
            index,
            attempt: 1,
            at,
        },
        Entry::Report {
            index,
            step: 12,
            metrics: metrics.clone(),
        },
        Entry::Finished {
            index,
            phase: FinishedPhase::Succeeded,
            metrics,
            info: BTreeMap::new(),
            reason: "Completed".into(),
            at: at + 30.0,
        },
    ] {
        j.append(&e)?;
    }
    Ok(())
}

/// The cluster source's model of the written run: its trials as NasTrial objects (as the
/// watch cache holds them), turned into the pages' model as after each change. The
/// median of 5 builds, in ms.
fn cluster_model_ms(run_dir: &Path) -> anyhow::Result<f64> {
    use crate::api::{NasTrial, NasTrialSpec, NasTrialStatus, ReportEntry, TrialPhaseName};
    use crate::engine::TrialPhase;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    let m = crate::local::manifest::load(&run_dir.join("manifest.yaml"))?;
    let replay = Journal::replay(&run_dir.join("journal.jsonl"), Some(&m.experiment.space))?;
    let mut resource = m.resource.clone();
    resource.metadata.namespace = Some("bench".into());
    let obj: kube::api::DynamicObject = serde_json::from_value(serde_json::to_value(&resource)?)?;
    let time = |t: f64| {
        MicroTime(
            k8s_openapi::jiff::Timestamp::from_millisecond((t * 1000.0) as i64).unwrap_or_default(),
        )
    };
    let trials: Vec<NasTrial> = replay
        .trials
        .iter()
        .map(|r| {
            let mut t = NasTrial::new(
                &format!("ui-bench-{}", r.index),
                NasTrialSpec {
                    experiment: "ui-bench".into(),
                    index: r.index,
                    candidate: r.candidate.clone(),
                    epochs: r.epochs,
                    seed: 0,
                    resume_from: None,
                    stage: None,
                    stop: None,
                },
            );
            t.metadata.namespace = Some("bench".into());
            t.status = Some(NasTrialStatus {
                phase: Some(match r.phase {
                    TrialPhase::Succeeded => TrialPhaseName::Succeeded,
                    TrialPhase::Failed => TrialPhaseName::Failed,
                    _ => TrialPhaseName::Running,
                }),
                attempts: 1,
                history: r
                    .reports
                    .iter()
                    .map(|rep| ReportEntry {
                        step: rep.step,
                        metrics: rep.metrics.clone(),
                    })
                    .collect(),
                metrics: r.metrics.clone(),
                start_time: r.started_at.map(time),
                completion_time: r.finished_at.map(time),
                ..Default::default()
            });
            t
        })
        .collect();
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let detail =
            super::cluster::detail_from(&obj, trials.iter()).map_err(anyhow::Error::msg)?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(detail.trials.len() == trials.len());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[2])
}

/// One GET over a fresh connection: (server time in ms from Server-Timing, total ms, bytes,
/// status line).
fn get(
    addr: std::net::SocketAddr,
    path: &str,
    gzip: bool,
) -> anyhow::Result<(f64, f64, usize, String)> {
    let started = Instant::now();
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{}\r\n",
        if gzip {
            "Accept-Encoding: gzip\r\n"
        } else {
            ""
        }
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let total = started.elapsed().as_secs_f64() * 1000.0;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..split]);
    // Chunked framing adds a few bytes per chunk; close enough for a size.
    let body = &buf[(split + 4).min(buf.len())..];
    let status = head.lines().next().unwrap_or_default().to_string();
    let server = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("server-timing: render;dur=")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(f64::NAN);
    Ok((server, total, body.len(), status))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn run(args: &UiBenchArgs) -> anyhow::Result<()> {
    let dir = args.keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("nasop-ui-bench-{}", std::process::id()))
    });
    let run_dir = dir.join("ui-bench");
    let written = Instant::now();
    write_run(&run_dir, args.trials)?;
    let journal_mb = std::fs::metadata(run_dir.join("journal.jsonl"))?.len() as f64 / 1e6;
    eprintln!(
        "wrote {} trials ({journal_mb:.1} MB of journal) in {:.1} s",
        args.trials,
        written.elapsed().as_secs_f64()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let local = super::local::Local::new(dir.clone())?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let router = super::router(super::Source::Local(local));
    runtime.spawn(async move { axum::serve(listener, router).await });
    let pages: Vec<(&str, String)> = vec![
        (
            "experiment page, first load (journal read)",
            "/e/local/ui-bench".into(),
        ),
        ("experiment page", "/e/local/ui-bench".into()),
        (
            "experiment page after a trial ended",
            "/e/local/ui-bench".into(),
        ),
        (
            "sorted by value, descending",
            "/e/local/ui-bench?sort=value&desc=true".into(),
        ),
        (
            "filtered (Failed), page 2",
            "/e/local/ui-bench?phase=Failed&page=1".into(),
        ),
        (
            "last page of the table",
            format!("/e/local/ui-bench?page={}", args.trials / 50),
        ),
        (
            "trial page",
            format!("/e/local/ui-bench/{}", args.trials / 2),
        ),
        ("experiments list", "/".into()),
    ];
    if !args.json {
        println!(
            "nasop ui, {} trials ({journal_mb:.1} MB journal), {} loads each over HTTP on loopback",
            args.trials, args.repeat
        );
        println!(
            "{:<44} {:>11} {:>11} {:>11} {:>9} {:>9}",
            "page", "server p50", "server p95", "total p50", "KiB", "gzip KiB"
        );
    }
    let journal = run_dir.join("journal.jsonl");
    for (k, (label, path)) in pages.iter().enumerate() {
        let n = if k == 0 { 1 } else { args.repeat };
        let mut server = Vec::new();
        let mut total = Vec::new();
        let mut bytes = 0;
        for i in 0..n {
            if k == 2 {
                // A trial ends before each load, as in a running search: the journal is
                // followed from where it was read, not read again.
                append_trial(&journal, args.trials + i as u32)?;
            }
            let (s, t, b, status) = get(addr, path, false)?;
            anyhow::ensure!(status.contains(" 200 "), "{path}: {status}");
            server.push(s);
            total.push(t);
            bytes = b;
        }
        let gzipped = get(addr, path, true)?.2;
        server.sort_by(f64::total_cmp);
        total.sort_by(f64::total_cmp);
        let (s50, s95, t50) = (
            percentile(&server, 0.5),
            percentile(&server, 0.95),
            percentile(&total, 0.5),
        );
        if args.json {
            println!(
                "{}",
                serde_json::json!({"page": label, "path": path, "trials": args.trials, "loads": n,
                    "server_ms_p50": s50, "server_ms_p95": s95, "total_ms_p50": t50, "bytes": bytes,
                    "gzip_bytes": gzipped})
            );
        } else {
            println!(
                "{label:<44} {s50:>9.1}ms {s95:>9.1}ms {t50:>9.1}ms {:>9.0} {:>9.0}",
                bytes as f64 / 1024.0,
                gzipped as f64 / 1024.0
            );
        }
    }
    let model = cluster_model_ms(&run_dir)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"page": "cluster source: the model from NasTrials", "trials": args.trials, "ms_p50": model})
        );
    } else {
        println!(
            "cluster source: the model from {} NasTrials after a change: {model:.1}ms (median of 5)",
            args.trials
        );
    }
    if args.keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
