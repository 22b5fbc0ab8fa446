//! `nasop-bench operator`: the operator at scale on the test control plane (tools/testenv).
//!
//! Starts `nasop operator` as a child process for a namespace of its own, adds simulated
//! GPU nodes to KWOK, and plays the trainer: each trial pod that runs is ended at once
//! through KWOK with a termination message. It prints
//! - the time from a trial pod's end to its successor's pod creation (p50, p99, max), both
//!   as seen by a watch here;
//! - the operator's CPU time and peak resident memory (from /proc), and API requests per
//!   trial (the operator counts them in `nasop_kube_requests_total`);
//! - for a long experiment, the mean experiment reconcile time and the status size per
//!   window of trials, to show whether they grow with the experiment;
//! - how many trials run at once across many experiments (Katib's users report about 160
//!   for 120 experiments of 30).

use crate::versus::measure::{command, cpu_seconds, quantile};
use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use nasop::api::{self, NasExperiment};
use nasop::operator::pod::{LABEL_ATTEMPT, LABEL_EXPERIMENT};
use nasop_testkit::{FakeTrainer, GPU_TRIAL_TEMPLATE, Plan, Player, add_gpu_nodes};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The experiments both operator benchmarks run (`bench operator`, `bench operators`).
#[derive(clap::Args, Debug, Clone)]
pub struct Sizes {
    /// Trials of the latency experiment.
    #[arg(long, default_value_t = 2000)]
    pub trials: u32,
    /// Its parallelism (and the long experiment's).
    #[arg(long, default_value_t = 200)]
    pub parallelism: u32,
    /// Trials of the long experiment (reconcile time and status size as it grows); 0 skips it.
    #[arg(long, default_value_t = 10000)]
    pub long_trials: u32,
    /// Experiments × parallelism of the concurrency run; 0 skips it.
    #[arg(long, default_value_t = 120)]
    pub experiments: u32,
    #[arg(long, default_value_t = 30)]
    pub experiment_parallelism: u32,
}

#[derive(clap::Args, Debug, Clone)]
pub struct OperatorBenchArgs {
    #[command(flatten)]
    pub sizes: Sizes,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Default, Debug)]
pub struct LatencyRun {
    pub trials: u32,
    pub parallelism: u32,
    pub seconds: f64,
    pub trials_per_second: f64,
    pub end_to_next_pod_ms_p50: f64,
    pub end_to_next_pod_ms_p99: f64,
    pub end_to_next_pod_ms_max: f64,
    pub operator_cpu_seconds: f64,
    pub operator_peak_mib: f64,
    pub api_requests_per_trial: f64,
    pub max_active_pods: usize,
    /// CPU-seconds of each control-plane process during the run (they share the machine).
    pub control_plane_cpu_seconds: Vec<(String, f64)>,
    /// The operator's own view: time from a trial's end being recorded to the next pod.
    pub operator_queue_ms_mean: f64,
    /// Reconciles that failed (status write conflicts among them), per trial.
    pub reconcile_errors_per_trial: f64,
    /// API requests per trial by HTTP method.
    pub requests_per_trial_by_method: Vec<(String, f64)>,
}

#[derive(Serialize, Default, Debug)]
pub struct Window {
    pub trials_created: u32,
    pub reconcile_ms_mean: f64,
    /// The engine's decision alone (CPU): strategy proposals, stopping rules, budget.
    pub decide_ms_mean: f64,
    pub status_bytes: usize,
}

#[derive(Serialize, Default, Debug)]
pub struct Report {
    pub latency: Option<LatencyRun>,
    pub long: Vec<Window>,
    pub long_peak_mib: f64,
    pub concurrent_trials: Option<(u32, u32, usize, f64)>,
}

/// CPU-seconds used so far by each process of the test control plane.
fn control_plane_cpu() -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = command(pid);
        if ![
            "kube-apiserver",
            "etcd",
            "kwok",
            "kube-scheduler",
            "kube-controller",
        ]
        .iter()
        .any(|p| comm.starts_with(p))
        {
            continue;
        }
        out.push((comm, cpu_seconds(pid).unwrap_or(0.0)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The operator child process and what /proc says of it.
struct Operator {
    child: Child,
    port: u16,
}

impl Operator {
    fn start(ns: &str, log: &std::path::Path) -> Result<Operator> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let file = std::fs::File::create(log)?;
        let child = Command::new(crate::nasop_binary()?)
            .args(["operator", "--namespace", ns, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--concurrency", "32"])
            .stdout(file.try_clone()?)
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .context("starting nasop operator")?;
        Ok(Operator { child, port })
    }

    fn proc_field(&self, file: &str, key: &str) -> f64 {
        let text = std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id()))
            .unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    fn peak_mib(&self) -> f64 {
        self.proc_field("status", "VmHWM:") / 1024.0
    }

    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id()).unwrap_or(0.0)
    }

    async fn metrics(&self) -> String {
        let port = self.port;
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut text = String::new();
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n");
                let _ = s.read_to_string(&mut text);
            }
            text
        })
        .await
        .unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of a metric's samples whose line starts with `prefix`.
fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn install_crds(client: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, yaml) in api::crd_files() {
        let crd: CustomResourceDefinition = serde_yaml::from_str(&yaml)?;
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply("nasop-bench").force(),
            &Patch::Apply(&crd),
        )
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

/// A learning rate beside the cell, which the simulated trainer ignores: the cell alone has
/// 4,914 distinct candidates (nasop's random search ends when every one was tried), so
/// experiments of more trials search this too.
pub const LEARNING_RATE_SPACE: &str =
    "    hyperparameters: [{name: lr, float: {min: 0.001, max: 1.0, log: true}}]\n";

fn manifest(name: &str, trials: u32, parallelism: u32) -> NasExperiment {
    random_search(name, trials, parallelism, LEARNING_RATE_SPACE)
}

/// A random search over the NAS-Bench-201 cell (plus `space`, further lines of the search
/// space) on the simulated GPU nodes: both operator benchmarks' experiment.
pub fn random_search(name: &str, trials: u32, parallelism: u32, space: &str) -> NasExperiment {
    let yaml = format!(
        r#"
apiVersion: nasop.dev/v1alpha1
kind: NasExperiment
metadata: {{name: {name}}}
spec:
  objectives: [{{metric: val_accuracy, goal: maximize}}]
  searchSpace:
    cell: {{nodes: 4, operations: [none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3]}}
{space}  strategy: {{algorithm: random, seed: 1}}
  budget: {{maxTrials: {trials}, parallelism: {parallelism}, trialEpochs: 12}}
{GPU_TRIAL_TEMPLATE}"#
    );
    serde_yaml::from_str(&yaml).expect("the bench manifest parses")
}

/// Pod creation and end times seen by a watch, and the trainer that ends pods.
#[derive(Default)]
struct Timeline {
    created: Vec<Instant>,
    ended: Vec<Instant>,
    seen: HashSet<String>,
    done: HashSet<String>,
    active: usize,
    max_active: usize,
}

/// The benchmark's trainer: records the timeline, and ends each running trial pod at once
/// with a value from its name (unless `hang` lists its experiment).
struct BenchPlayer {
    timeline: Arc<Mutex<Timeline>>,
    hang: Arc<Mutex<HashSet<String>>>,
}

impl Player for BenchPlayer {
    fn saw(&self, pod: &Pod) {
        let name = pod.name_any();
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let mut t = self.timeline.lock().unwrap_or_else(|e| e.into_inner());
        if t.seen.insert(name.clone()) {
            t.created.push(Instant::now());
            t.active += 1;
            t.max_active = t.max_active.max(t.active);
        }
        if matches!(phase, Some("Succeeded" | "Failed")) && t.done.insert(name) {
            t.ended.push(Instant::now());
            t.active -= 1;
        }
    }

    fn plan(&self, pod: &Pod) -> Option<Plan> {
        let exp = pod
            .labels()
            .get(LABEL_EXPERIMENT)
            .cloned()
            .unwrap_or_default();
        if pod.labels().get(LABEL_ATTEMPT).is_none()
            || self
                .hang
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&exp)
        {
            return None;
        }
        let h = pod
            .name_any()
            .bytes()
            .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64));
        let value = 50.0 + (nasop_core::rng::mix64(h) % 4000) as f64 / 100.0;
        let message = nasop_testkit::report_json(12, "val_accuracy", value);
        Some(Plan::Exit(0, message))
    }
}

fn play_trainer(
    pods: Api<Pod>,
    timeline: Arc<Mutex<Timeline>>,
    hang: Arc<Mutex<HashSet<String>>>,
) -> FakeTrainer {
    FakeTrainer::start(pods, Arc::new(BenchPlayer { timeline, hang }))
}

async fn wait_phase(
    exps: &Api<NasExperiment>,
    name: &str,
    timeout: Duration,
) -> Result<NasExperiment> {
    let started = Instant::now();
    loop {
        let e = exps.get(name).await?;
        if matches!(
            e.status.as_ref().and_then(|s| s.phase),
            Some(api::ExperimentPhase::Succeeded | api::ExperimentPhase::Failed)
        ) {
            return Ok(e);
        }
        if started.elapsed() > timeout {
            bail!("{name} did not finish within {timeout:?}: {:?}", e.status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(args: &OperatorBenchArgs) -> Result<Report> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default()
        .await
        .context("nasop-bench operator needs the test control plane: `make testenv-up`, then export the KUBECONFIG it prints")?;
    install_crds(&client).await?;
    let gpus_needed = args
        .sizes
        .parallelism
        .max(args.sizes.experiments * args.sizes.experiment_parallelism);
    add_gpu_nodes(&client, gpus_needed.div_ceil(8) + 1).await?;
    let ns = format!("nasop-bench-{}", std::process::id());
    let nss: Api<Namespace> = Api::all(client.clone());
    let mut n = Namespace::default();
    n.metadata.name = Some(ns.clone());
    nss.create(&PostParams::default(), &n).await?;
    let logs = std::env::temp_dir().join(format!("{ns}-operator.log"));
    eprintln!("namespace {ns}; operator log {}", logs.display());
    let bench = Bench {
        exps: Api::namespaced(client.clone(), &ns),
        pods: Api::namespaced(client.clone(), &ns),
        ns,
        logs,
    };
    let mut report = Report::default();
    if args.sizes.trials > 0 {
        report.latency = latency(&bench, &args.sizes).await?;
    }
    if args.sizes.long_trials > 0 {
        (report.long, report.long_peak_mib) = long(&bench, &args.sizes).await?;
    }
    if args.sizes.experiments > 0 {
        report.concurrent_trials = many(&bench, &args.sizes).await?;
    }
    let _ = nss.delete(&bench.ns, &DeleteParams::background()).await;
    Ok(report)
}

/// The benchmark's namespace, with the operator log's path and its APIs.
struct Bench {
    ns: String,
    logs: std::path::PathBuf,
    exps: Api<NasExperiment>,
    pods: Api<Pod>,
}

/// Part 1: latency, CPU, memory and requests per trial.
async fn latency(bench: &Bench, sizes: &Sizes) -> Result<Option<LatencyRun>> {
    let Bench {
        ns,
        logs,
        exps,
        pods,
    } = bench;
    let op = Operator::start(ns, logs)?;
    let timeline: Arc<Mutex<Timeline>> = Arc::default();
    let trainer = play_trainer(pods.clone(), timeline.clone(), Arc::default());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m0 = op.metrics().await;
    let requests_before = metric_sum(&m0, "nasop_kube_requests_total");
    let cpu_before = control_plane_cpu();
    let started = Instant::now();
    exps.create(
        &PostParams::default(),
        &manifest("latency", sizes.trials, sizes.parallelism),
    )
    .await?;
    wait_phase(exps, "latency", Duration::from_secs(3600)).await?;
    let seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = op.metrics().await;
    let requests = metric_sum(&m, "nasop_kube_requests_total") - requests_before;
    let queue_ms = metric_sum(&m, "nasop_trial_queue_seconds_sum")
        / metric_sum(&m, "nasop_trial_queue_seconds_count").max(1.0)
        * 1000.0;
    let cpu: Vec<(String, f64)> = control_plane_cpu()
        .into_iter()
        .map(|(name, after)| {
            let before = cpu_before
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0.0, |b| b.1);
            (name, after - before)
        })
        .collect();
    drop(trainer);
    let latency = {
        let t = timeline.lock().unwrap_or_else(|e| e.into_inner());
        let mut ends = t.ended.clone();
        ends.sort();
        let creates: Vec<Instant> = t
            .created
            .iter()
            .skip(sizes.parallelism as usize)
            .copied()
            .collect();
        let mut lat: Vec<f64> = creates
            .iter()
            .zip(&ends)
            .map(|(c, e)| c.saturating_duration_since(*e).as_secs_f64() * 1000.0)
            .collect();
        lat.sort_by(f64::total_cmp);
        Some(LatencyRun {
            trials: sizes.trials,
            parallelism: sizes.parallelism,
            seconds,
            trials_per_second: sizes.trials as f64 / seconds,
            end_to_next_pod_ms_p50: quantile(&lat, 0.5),
            end_to_next_pod_ms_p99: quantile(&lat, 0.99),
            end_to_next_pod_ms_max: lat.last().copied().unwrap_or(f64::NAN),
            operator_cpu_seconds: op.cpu_seconds(),
            operator_peak_mib: op.peak_mib(),
            api_requests_per_trial: requests / sizes.trials as f64,
            max_active_pods: t.max_active,
            control_plane_cpu_seconds: cpu,
            reconcile_errors_per_trial: (metric_sum(
                &m,
                "controller_runtime_reconcile_errors_total",
            ) - metric_sum(
                &m0,
                "controller_runtime_reconcile_errors_total",
            )) / sizes.trials as f64,
            requests_per_trial_by_method: ["GET", "POST", "PATCH", "DELETE", "PUT"]
                .iter()
                .map(|verb| {
                    let p = format!("nasop_kube_requests_total{{method=\"{verb}\"}}");
                    let n = (metric_sum(&m, &p) - metric_sum(&m0, &p)) / sizes.trials as f64;
                    (verb.to_string(), n)
                })
                .filter(|(_, n)| *n > 0.0)
                .collect(),
            operator_queue_ms_mean: queue_ms,
        })
    };
    eprintln!("{latency:?}");
    drop(op);
    exps.delete("latency", &DeleteParams::background()).await?;
    Ok(latency)
}

/// Part 2: a long experiment; reconcile time and status size per window of trials, and
/// the peak memory.
async fn long(bench: &Bench, sizes: &Sizes) -> Result<(Vec<Window>, f64)> {
    let Bench {
        ns,
        logs,
        exps,
        pods,
    } = bench;
    let op = Operator::start(ns, &logs.with_extension("long.log"))?;
    let trainer = play_trainer(pods.clone(), Arc::default(), Arc::default());
    tokio::time::sleep(Duration::from_secs(2)).await;
    exps.create(
        &PostParams::default(),
        &manifest("long", sizes.long_trials, sizes.parallelism),
    )
    .await?;
    let mut windows = Vec::new();
    let step = (sizes.long_trials / 10).max(1);
    let mut next = step;
    let (mut sum0, mut count0, mut dsum0, mut dcount0) = (0.0, 0.0, 0.0, 0.0);
    let prefix_sum = "controller_runtime_reconcile_time_seconds_sum{controller=\"nasexperiment\"}";
    let prefix_count =
        "controller_runtime_reconcile_time_seconds_count{controller=\"nasexperiment\"}";
    let started = Instant::now();
    loop {
        let e = exps.get("long").await?;
        let status = e.status.clone().unwrap_or_default();
        let ended = matches!(
            status.phase,
            Some(api::ExperimentPhase::Succeeded | api::ExperimentPhase::Failed)
        );
        if status.trials.created >= next || ended {
            let m = op.metrics().await;
            let (sum, count) = (metric_sum(&m, prefix_sum), metric_sum(&m, prefix_count));
            let dsum = metric_sum(&m, "nasop_strategy_proposal_seconds_sum");
            let dcount = metric_sum(&m, "nasop_strategy_proposal_seconds_count");
            let w = Window {
                trials_created: status.trials.created,
                reconcile_ms_mean: (sum - sum0) / (count - count0).max(1.0) * 1000.0,
                decide_ms_mean: (dsum - dsum0) / (dcount - dcount0).max(1.0) * 1000.0,
                status_bytes: serde_json::to_string(&status)?.len(),
            };
            eprintln!("{w:?}");
            windows.push(w);
            (sum0, count0, dsum0, dcount0) = (sum, count, dsum, dcount);
            next = status.trials.created + step;
        }
        if ended {
            break;
        }
        if started.elapsed() > Duration::from_secs(7200) {
            bail!("the long experiment did not finish in 2 hours");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let peak = op.peak_mib();
    drop(trainer);
    drop(op);
    exps.delete("long", &DeleteParams::background()).await?;
    Ok((windows, peak))
}

/// Part 3: many experiments whose trials never end; how many run at once.
async fn many(bench: &Bench, sizes: &Sizes) -> Result<Option<(u32, u32, usize, f64)>> {
    let Bench {
        ns,
        logs,
        exps,
        pods,
    } = bench;
    let op = Operator::start(ns, &logs.with_extension("many.log"))?;
    let timeline: Arc<Mutex<Timeline>> = Arc::default();
    let hang: Arc<Mutex<HashSet<String>>> = Arc::default();
    for i in 0..sizes.experiments {
        hang.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(format!("many-{i}"));
    }
    let trainer = play_trainer(pods.clone(), timeline.clone(), hang);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    for i in 0..sizes.experiments {
        exps.create(
            &PostParams::default(),
            &manifest(
                &format!("many-{i}"),
                sizes.experiment_parallelism * 2,
                sizes.experiment_parallelism,
            ),
        )
        .await?;
    }
    let want = (sizes.experiments * sizes.experiment_parallelism) as usize;
    let mut running = 0;
    while started.elapsed() < Duration::from_secs(600) {
        let list = pods.list(&ListParams::default()).await?;
        let mut by_phase: HashMap<String, usize> = HashMap::new();
        for p in &list.items {
            *by_phase
                .entry(
                    p.status
                        .as_ref()
                        .and_then(|s| s.phase.clone())
                        .unwrap_or_default(),
                )
                .or_default() += 1;
        }
        running = by_phase.get("Running").copied().unwrap_or(0);
        if running >= want {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let concurrent = Some((
        sizes.experiments,
        sizes.experiment_parallelism,
        running,
        started.elapsed().as_secs_f64(),
    ));
    eprintln!("{:?} peak {:.1} MiB", concurrent, op.peak_mib());
    drop(trainer);
    drop(op);
    Ok(concurrent)
}

pub fn print(report: &Report) {
    if let Some(l) = &report.latency {
        println!(
            "latency experiment: {} trials at parallelism {} in {:.1} s ({:.1} trials/s)",
            l.trials, l.parallelism, l.seconds, l.trials_per_second
        );
        println!(
            "  trial end -> next pod created: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            l.end_to_next_pod_ms_p50, l.end_to_next_pod_ms_p99, l.end_to_next_pod_ms_max
        );
        println!(
            "  operator: {:.1} CPU-seconds ({:.2} ms per trial), peak RSS {:.1} MiB, {:.2} API requests per trial, {} pods active at most",
            l.operator_cpu_seconds,
            l.operator_cpu_seconds * 1000.0 / l.trials as f64,
            l.operator_peak_mib,
            l.api_requests_per_trial,
            l.max_active_pods
        );
        println!(
            "  operator's own mean from a recorded trial end to the next pod: {:.1} ms",
            l.operator_queue_ms_mean
        );
        let cp: Vec<String> = l
            .control_plane_cpu_seconds
            .iter()
            .map(|(n, s)| format!("{n} {s:.1}"))
            .collect();
        println!("  control plane CPU-seconds meanwhile: {}", cp.join(", "));
        let by: Vec<String> = l
            .requests_per_trial_by_method
            .iter()
            .map(|(v, n)| format!("{v} {n:.2}"))
            .collect();
        println!(
            "  API requests per trial by method: {} (failed reconciles per trial: {:.2})",
            by.join(", "),
            l.reconcile_errors_per_trial
        );
    }
    if !report.long.is_empty() {
        println!(
            "long experiment (peak RSS {:.1} MiB):",
            report.long_peak_mib
        );
        println!(
            "  {:>8} {:>18} {:>15} {:>13}",
            "trials", "reconcile ms mean", "decide ms mean", "status bytes"
        );
        for w in &report.long {
            println!(
                "  {:>8} {:>18.2} {:>15.3} {:>13}",
                w.trials_created, w.reconcile_ms_mean, w.decide_ms_mean, w.status_bytes
            );
        }
    }
    if let Some((e, p, running, s)) = report.concurrent_trials {
        println!(
            "concurrency: {e} experiments x {p} parallel trials: {running} trials running at once after {s:.0} s"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_benchmarks_search_the_cell_at_random_and_only_this_one_tunes_lr() {
        let own = manifest("a", 20, 5);
        let plain = random_search("b", 30, 6, "");
        for (e, trials, parallelism) in [(&own, 20, 5), (&plain, 30, 6)] {
            assert_eq!(e.spec.budget.max_trials, trials);
            assert_eq!(e.spec.budget.parallelism, parallelism);
            assert!(e.spec.search_space.cell.is_some());
            assert!(e.spec.trial_template.is_some());
        }
        assert_eq!(own.spec.search_space.hyperparameters.len(), 1);
        assert!(plain.spec.search_space.hyperparameters.is_empty());
    }
}
