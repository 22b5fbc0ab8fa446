//! `nasop bench operators`: nasop and Kubeflow Katib side by side, on the same test control
//! plane (tools/testenv) and the same simulated GPU nodes, in one run.
//!
//! Both search NAS-Bench-201's cell at random; one simulated trainer plays both, answering
//! each trial pod from the NAS-Bench-201 table (the 12-epoch validation accuracy of the
//! architecture the pod was given) and ending it through KWOK: for nasop through the
//! termination message, for Katib by pushing the metric to its DB manager first, as Katib's SDK
//! does in a trial container. Each shape runs for each operator in turn, `--runs` times; the
//! table shows the median and the spread (min–max) of every figure.
//!
//! What is measured from outside, the same way for both: trial pods from a watch (time from a
//! trial pod's end to the next pod of its experiment, the most running at once), the
//! operator's processes from /proc (for Katib the controller, the DB manager, PostgreSQL and
//! the suggestion services), and API requests from the API server's audit log (each operator
//! runs as a service account).

pub mod katib;
pub mod measure;

use crate::api::{self, NasExperiment};
use crate::local::executor::Tabular;
use crate::operator::pod::{LABEL_ATTEMPT, LABEL_EXPERIMENT, LABEL_TRIAL};
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use measure::{Audit, Sampler, Timeline, quantile};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Nasop,
    Katib,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// One experiment of --trials trials at --parallelism.
    Latency,
    /// --experiments experiments of --experiment-trials trials at --experiment-parallelism.
    Many,
    /// One experiment of --long-trials trials at --parallelism.
    Long,
    /// The latency shape with the operator's controller killed --kills times.
    Faults,
}

#[derive(clap::Args, Debug, Clone)]
pub struct VersusArgs {
    /// The operators to compare.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "nasop,katib")]
    pub operators: Vec<Side>,
    /// The shapes to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "latency,many,long,faults"
    )]
    pub shapes: Vec<Shape>,
    /// Runs of each shape for each operator (the table shows the median and spread).
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    #[command(flatten)]
    pub sizes: super::operator::Sizes,
    /// Trials of each experiment of the `many` shape.
    #[arg(long, default_value_t = 60)]
    pub experiment_trials: u32,
    /// Controller kills in the `faults` shape, spread over the run.
    #[arg(long, default_value_t = 3)]
    pub kills: u32,
    /// Flags added to `nasop operator` (e.g. "--concurrency 32"), for a run at other settings
    /// than the defaults.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub nasop_args: String,
    /// Give up on a run after this many seconds (its row says so).
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
    /// Give up on a run when no trial pod was created or ended for this many seconds.
    #[arg(long, default_value_t = 180)]
    pub stall: u64,
    /// Print every run as JSON lines instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One run of one shape by one operator.
#[derive(Serialize, Debug, Default, Clone)]
pub struct Run {
    pub operator: String,
    pub shape: String,
    pub run: u32,
    pub trials: u32,
    pub wall_seconds: f64,
    pub trials_per_second: f64,
    pub end_to_next_pod_ms_p50: f64,
    pub end_to_next_pod_ms_p99: f64,
    pub max_running_pods: usize,
    pub cpu_seconds: f64,
    /// CPU-seconds by process name (Katib: controller, DB manager, PostgreSQL, suggestions).
    pub cpu_seconds_by_process: BTreeMap<String, f64>,
    pub peak_rss_mib: f64,
    pub api_requests_per_trial: f64,
    /// `verb resource` -> requests per trial.
    pub requests_per_trial: BTreeMap<String, f64>,
    /// The largest object of each of the operator's kinds, bytes of JSON.
    pub largest_objects: Vec<(String, usize)>,
    /// Trials that did not succeed, and trials that had more than one pod.
    pub trials_lost: u32,
    pub trials_run_twice: usize,
    /// Seconds from each controller restart to the first trial object it created.
    pub resume_seconds: Vec<f64>,
    /// Why the run did not finish, if it did not.
    pub error: Option<String>,
}

pub async fn run(args: &VersusArgs) -> Result<Vec<Run>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await.context(
        "nasop bench operators needs the test control plane: `make testenv-up`, then export the KUBECONFIG it prints",
    )?;
    let table = Arc::new(Tabular::built_in()?);
    super::operator::install_crds(&client).await?;
    let gpus = args
        .sizes
        .parallelism
        .max(args.sizes.experiments * args.sizes.experiment_parallelism);
    super::operator::add_nodes(&client, gpus.div_ceil(8) + 1).await?;
    // Restarted controllers stay up after the benchmark; tools/katib/down.sh stops them.
    let katib = if args.operators.contains(&Side::Katib) {
        Some(Arc::new(katib::Katib::attach()?))
    } else {
        None
    };
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        for &shape in &args.shapes {
            // Interleaved, so that drift in the machine hits both alike.
            for &side in &args.operators {
                let label = format!("{side:?} {shape:?} run {run}").to_lowercase();
                eprintln!("{label} ...");
                let mut r =
                    match shape_run(&client, &table, args, side, shape, run, katib.clone()).await {
                        Ok(r) => r,
                        Err(e) => Run {
                            error: Some(format!("{e:#}")),
                            ..Run::default()
                        },
                    };
                r.operator = format!("{side:?}").to_lowercase();
                r.shape = format!("{shape:?}").to_lowercase();
                r.run = run;
                eprintln!("{label}: {}", serde_json::to_string(&r)?);
                if args.json {
                    println!("{}", serde_json::to_string(&r)?);
                }
                runs.push(r);
            }
        }
    }
    Ok(runs)
}

/// The nasop operator as a child process, running as a service account of its own.
struct NasopOperator {
    child: Child,
    namespace: String,
    kubeconfig: std::path::PathBuf,
    flags: Vec<String>,
}

const NASOP_ACCOUNT: &str = "nasop-bench-operator";

impl NasopOperator {
    /// A service account bound to cluster-admin (RBAC does not change what it requests), and
    /// a kubeconfig with its token.
    fn start(namespace: &str, flags: &str) -> Result<NasopOperator> {
        let kubectl = |args: &[&str]| -> Result<String> {
            let out = Command::new("kubectl").args(args).output()?;
            if !out.status.success() {
                bail!(
                    "kubectl {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        kubectl(&["create", "serviceaccount", "-n", namespace, NASOP_ACCOUNT])?;
        kubectl(&[
            "create",
            "clusterrolebinding",
            &format!("{NASOP_ACCOUNT}-{namespace}"),
            "--clusterrole=cluster-admin",
            &format!("--serviceaccount={namespace}:{NASOP_ACCOUNT}"),
        ])?;
        let token = kubectl(&[
            "create",
            "token",
            "-n",
            namespace,
            NASOP_ACCOUNT,
            "--duration",
            "24h",
        ])?;
        let server = kubectl(&[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ])?;
        let dir = std::env::temp_dir().join(format!("nasop-versus-{namespace}"));
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: t, cluster: {{server: \"{server}\", insecure-skip-tls-verify: true}}}}]\nusers: [{{name: u, user: {{token: \"{token}\"}}}}]\ncontexts: [{{name: c, context: {{cluster: t, user: u, namespace: {namespace}}}}}]\ncurrent-context: c\n"
            ),
        )?;
        std::fs::write(
            dir.join("key"),
            "bench-report-key-0123456789abcdef0123456789",
        )?;
        let flags: Vec<String> = flags.split_whitespace().map(String::from).collect();
        let child = Self::spawn(namespace, &kubeconfig, &flags)?;
        Ok(NasopOperator {
            child,
            namespace: namespace.to_string(),
            kubeconfig,
            flags,
        })
    }

    fn spawn(namespace: &str, kubeconfig: &std::path::Path, flags: &[String]) -> Result<Child> {
        let dir = kubeconfig.parent().unwrap_or(std::path::Path::new("."));
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join("operator.log"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Command::new(std::env::current_exe()?)
            .args(["operator", "--namespace", namespace, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--report-key-file")
            .arg(dir.join("key"))
            .args(flags)
            .env("KUBECONFIG", kubeconfig)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting nasop operator")
    }

    fn restart(&mut self) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.namespace, &self.kubeconfig, &self.flags)?;
        Ok(())
    }

    fn user(&self) -> String {
        format!("system:serviceaccount:{}:{NASOP_ACCOUNT}", self.namespace)
    }
}

impl Drop for NasopOperator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("kubectl")
            .args([
                "delete",
                "clusterrolebinding",
                &format!("{NASOP_ACCOUNT}-{}", self.namespace),
            ])
            .output();
    }
}

/// What the simulated trainer needs of a trial pod: its experiment, trial and candidate.
fn pod_trial(side: Side, pod: &Pod) -> Option<(String, String, Option<String>)> {
    let labels = pod.labels();
    match side {
        Side::Nasop => {
            labels.get(LABEL_ATTEMPT)?;
            let candidate = pod
                .spec
                .as_ref()?
                .containers
                .first()?
                .env
                .as_ref()?
                .iter()
                .find(|e| e.name == nasop_core::contract::ENV_TRIAL)
                .and_then(|e| e.value.as_deref())
                .and_then(|v| serde_json::from_str::<nasop_core::contract::TrialInput>(v).ok())
                .map(|t| t.candidate);
            Some((
                labels.get(LABEL_EXPERIMENT)?.clone(),
                labels.get(LABEL_TRIAL)?.clone(),
                candidate,
            ))
        }
        Side::Katib => Some((
            labels.get(katib::LABEL_EXPERIMENT)?.clone(),
            labels.get(katib::LABEL_JOB)?.clone(),
            katib::pod_candidate(pod),
        )),
    }
}

/// Plays the trainer for every trial pod of the namespace: records the timeline and ends
/// each running pod with its table result.
fn play_trainer(
    side: Side,
    pods: Api<Pod>,
    table: Arc<Tabular>,
    katib: Option<Arc<katib::Katib>>,
    timeline: Arc<Mutex<Timeline>>,
    failures: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut events = watcher(pods.clone(), watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        let mut ending: HashSet<String> = HashSet::new();
        while let Some(event) = events.next().await {
            let Ok(pod) = event else { continue };
            let Some((experiment, trial, candidate)) = pod_trial(side, &pod) else {
                continue;
            };
            let name = pod.name_any();
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            {
                let mut t = timeline.lock().unwrap_or_else(|e| e.into_inner());
                t.seen(&name, &experiment, &trial);
                if phase == "Succeeded" || phase == "Failed" {
                    t.ended(&name);
                }
            }
            if phase != "Running" || !ending.insert(name.clone()) {
                continue;
            }
            let (pods, table, katib, failures) =
                (pods.clone(), table.clone(), katib.clone(), failures.clone());
            tokio::spawn(async move {
                let result = async {
                    let candidate = candidate.context("the pod names no architecture")?;
                    let metrics = table.evaluate(&candidate, 12)?;
                    let val = metrics.get("val_accuracy").copied().unwrap_or(0.0);
                    let mut annotations = serde_json::json!({"testenv.nasop.dev/exit-code": "0"});
                    match (side, &katib) {
                        (Side::Katib, Some(k)) => {
                            k.report(&trial, &[("val_accuracy".to_string(), val)])
                                .await?
                        }
                        _ => {
                            annotations["testenv.nasop.dev/termination-message"] =
                                serde_json::json!({"step": 12, "metrics": {"val_accuracy": val}})
                                    .to_string()
                                    .into();
                        }
                    }
                    let patch = serde_json::json!({"metadata": {"annotations": annotations}});
                    pods.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                    anyhow::Ok(())
                }
                .await;
                if let Err(e) = result {
                    failures
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("{name}: {e:#}"));
                }
            });
        }
    })
}

/// Creates the shape's experiments, waits for them to end, and measures.
async fn shape_run(
    client: &Client,
    table: &Arc<Tabular>,
    args: &VersusArgs,
    side: Side,
    shape: Shape,
    run: u32,
    katib: Option<Arc<katib::Katib>>,
) -> Result<Run> {
    let (experiments, trials, parallelism) = match shape {
        Shape::Latency | Shape::Faults => (1, args.sizes.trials, args.sizes.parallelism),
        Shape::Long => (1, args.sizes.long_trials, args.sizes.parallelism),
        Shape::Many => (
            args.sizes.experiments,
            args.experiment_trials,
            args.sizes.experiment_parallelism,
        ),
    };
    let names: Vec<String> = (0..experiments).map(|i| format!("e{i}")).collect();
    let ns = format!(
        "versus-{}-{}-{run}-{}",
        format!("{side:?}").to_lowercase(),
        format!("{shape:?}").to_lowercase(),
        std::process::id()
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut n = Namespace::default();
    n.metadata.name = Some(ns.clone());
    if side == Side::Katib {
        // Katib's validating webhook refuses experiments in a namespace without it.
        n.metadata.labels =
            Some([(katib::NAMESPACE_LABEL.to_string(), "enabled".to_string())].into());
    }
    namespaces.create(&PostParams::default(), &n).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let result = measure_shape(
        client,
        table,
        args,
        side,
        shape,
        &ns,
        &names,
        trials,
        parallelism,
        katib,
        &pods,
    )
    .await;
    // The next run starts once this one's objects are gone: their deletion (and, for Katib,
    // its finalizers) would otherwise load the machine during the next operator's run.
    let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        match namespaces.get_opt(&ns).await {
            Ok(None) => break,
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure_shape(
    client: &Client,
    table: &Arc<Tabular>,
    args: &VersusArgs,
    side: Side,
    shape: Shape,
    ns: &str,
    names: &[String],
    trials: u32,
    parallelism: u32,
    katib: Option<Arc<katib::Katib>>,
    pods: &Api<Pod>,
) -> Result<Run> {
    let total_trials = trials * names.len() as u32;
    let timeline: Arc<Mutex<Timeline>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    // The operator under test: its processes, its user, how to restart its controller.
    let mut nasop = None;
    if side == Side::Nasop {
        nasop = Some(NasopOperator::start(ns, &args.nasop_args)?);
    }
    let katib = match side {
        Side::Nasop => None,
        Side::Katib => Some(katib.context("Katib is not attached")?),
    };
    let user = match &nasop {
        Some(op) => op.user(),
        None => katib::USER.to_string(),
    };
    // Processes already running count from here; Katib's suggestion services, started
    // next, count from their start (in a cluster, each experiment's suggestion pod).
    let existing: Vec<u32> = match (&nasop, &katib) {
        (Some(op), _) => vec![op.child.id()],
        (_, Some(k)) => k.pids(),
        _ => vec![],
    };
    let pid_source: Arc<Mutex<Vec<u32>>> = Arc::new(Mutex::new(existing.clone()));
    let sampler = {
        let katib_pids = katib.clone();
        let pid_source = pid_source.clone();
        Sampler::start(
            move || match &katib_pids {
                Some(k) => k.pids(),
                None => pid_source.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            },
            &existing,
        )
    };
    if let Some(k) = &katib {
        k.start_suggestions(ns, names)?;
    }
    let trainer = play_trainer(
        side,
        pods.clone(),
        table.clone(),
        katib.clone(),
        timeline.clone(),
        failures.clone(),
    );
    let trials_seen = watch_trials(client, side, ns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let audit = Audit::from_now()?;
    let started = Instant::now();
    // Create every experiment.
    match side {
        Side::Nasop => {
            let api: Api<NasExperiment> = Api::namespaced(client.clone(), ns);
            for name in names {
                api.create(
                    &PostParams::default(),
                    &super::operator::random_search(name, trials, parallelism, ""),
                )
                .await?;
            }
        }
        Side::Katib => {
            let api = katib::Katib::experiments(client, ns);
            for name in names {
                api.create(
                    &PostParams::default(),
                    &katib::experiment(name, trials, parallelism)?,
                )
                .await
                .with_context(|| format!("creating Katib experiment {ns}/{name}"))?;
            }
        }
    }
    // Wait for all to end; in the fault rows, kill the controller at even steps.
    let kills = if shape == Shape::Faults {
        args.kills
    } else {
        0
    };
    let mut kill_at: Vec<usize> = (1..=kills)
        .map(|k| (total_trials as usize * k as usize) / (kills as usize + 1))
        .collect();
    let mut restarts: Vec<Instant> = Vec::new();
    let mut error = None;
    loop {
        let ended = timeline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ended_count();
        if kill_at.first().is_some_and(|k| ended >= *k) {
            kill_at.remove(0);
            restarts.push(Instant::now());
            match side {
                Side::Nasop => {
                    if let Some(op) = nasop.as_mut() {
                        op.restart()?;
                        pid_source
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(op.child.id());
                    }
                }
                Side::Katib => {
                    if let Some(k) = &katib {
                        k.restart_controller()?;
                    }
                }
            }
        }
        if all_ended(client, side, ns, names).await? {
            break;
        }
        if started.elapsed() > Duration::from_secs(args.timeout) {
            error = Some(format!(
                "not ended after {} s ({ended} trial pods ended)",
                args.timeout
            ));
            break;
        }
        let last = timeline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_change()
            .unwrap_or(started);
        if last.elapsed() > Duration::from_secs(args.stall) {
            error = Some(format!(
                "stalled: no trial pod created or ended for {} s, after {ended} ended",
                args.stall
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    // Requests until the last experiment ended (no more from here).
    let requests = audit.count(&user)?;
    trainer.abort();
    trials_seen.0.abort();
    let (cpu, cpu_by_process, peak) = sampler.finish().await;
    let (largest, counts) = match side {
        Side::Nasop => (
            nasop_largest(client, ns).await?,
            nasop_trials(client, ns).await?,
        ),
        Side::Katib => (
            katib::Katib::largest_objects(client, ns).await?,
            katib::Katib::trials(client, ns).await?,
        ),
    };
    let succeeded: u32 = counts.values().map(|c| c.1).sum();
    let t = timeline.lock().unwrap_or_else(|e| e.into_inner());
    let latency = t.end_to_next_pod_ms();
    let total_requests: u64 = requests.values().sum();
    let failures = failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if error.is_none() && !failures.is_empty() {
        error = Some(format!(
            "{} trainer failures, first: {}",
            failures.len(),
            failures[0]
        ));
    }
    let run = Run {
        trials: total_trials,
        wall_seconds: wall,
        trials_per_second: succeeded as f64 / wall,
        end_to_next_pod_ms_p50: quantile(&latency, 0.5),
        end_to_next_pod_ms_p99: quantile(&latency, 0.99),
        max_running_pods: t.max_active,
        cpu_seconds: cpu,
        cpu_seconds_by_process: cpu_by_process,
        peak_rss_mib: peak,
        api_requests_per_trial: total_requests as f64 / total_trials as f64,
        requests_per_trial: requests
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64 / total_trials as f64))
            .collect(),
        largest_objects: largest,
        trials_lost: total_trials.saturating_sub(succeeded),
        trials_run_twice: t.trials_with_several_pods(),
        resume_seconds: {
            let seen = trials_seen.1.lock().unwrap_or_else(|e| e.into_inner());
            restarts
                .iter()
                .map(|r| {
                    seen.values()
                        .filter(|c| *c > r)
                        .min()
                        .map_or(f64::NAN, |c| (*c - *r).as_secs_f64())
                })
                .collect()
        },
        error,
        ..Run::default()
    };
    drop(t);
    if let Some(k) = &katib {
        k.stop_suggestions(ns);
    }
    Ok(run)
}

/// When a watch first saw each trial object (NasTrial, or Katib's Trial) of the namespace:
/// the fault rows' time to resume is a restart to the first trial the new controller made.
type TrialsSeen = Arc<Mutex<std::collections::HashMap<String, Instant>>>;

fn watch_trials(
    client: &Client,
    side: Side,
    ns: &str,
) -> (tokio::task::JoinHandle<()>, TrialsSeen) {
    let resource = match side {
        Side::Nasop => kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("nasop.dev", "v1alpha1", "NasTrial"),
            "nastrials",
        ),
        Side::Katib => katib::resource("Trial", "trials"),
    };
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let seen: TrialsSeen = Arc::default();
    let shared = seen.clone();
    let task = tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(event) = events.next().await {
            if let Ok(trial) = event {
                shared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(trial.name_any())
                    .or_insert_with(Instant::now);
            }
        }
    });
    (task, seen)
}

/// Whether every experiment of the run has ended.
async fn all_ended(client: &Client, side: Side, ns: &str, names: &[String]) -> Result<bool> {
    let ended: usize = match side {
        Side::Nasop => {
            let api: Api<NasExperiment> = Api::namespaced(client.clone(), ns);
            api.list(&ListParams::default())
                .await?
                .items
                .iter()
                .filter(|e| {
                    matches!(
                        e.status.as_ref().and_then(|s| s.phase),
                        Some(api::ExperimentPhase::Succeeded | api::ExperimentPhase::Failed)
                    )
                })
                .count()
        }
        Side::Katib => katib::Katib::experiments(client, ns)
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|e| katib::ended(e).is_some())
            .count(),
    };
    Ok(ended >= names.len())
}

async fn nasop_largest(client: &Client, ns: &str) -> Result<Vec<(String, usize)>> {
    let size = |s: serde_json::Result<String>| s.map_or(0, |s| s.len());
    let exps: Api<NasExperiment> = Api::namespaced(client.clone(), ns);
    let trials: Api<api::NasTrial> = Api::namespaced(client.clone(), ns);
    let e = exps.list(&ListParams::default()).await?.items;
    let t = trials.list(&ListParams::default()).await?.items;
    Ok(vec![
        (
            "NasExperiment".into(),
            e.iter()
                .map(|o| size(serde_json::to_string(o)))
                .max()
                .unwrap_or(0),
        ),
        (
            "NasTrial".into(),
            t.iter()
                .map(|o| size(serde_json::to_string(o)))
                .max()
                .unwrap_or(0),
        ),
    ])
}

/// Trials of each experiment, and how many succeeded.
async fn nasop_trials(
    client: &Client,
    ns: &str,
) -> Result<std::collections::HashMap<String, (u32, u32)>> {
    let trials: Api<api::NasTrial> = Api::namespaced(client.clone(), ns);
    let mut out: std::collections::HashMap<String, (u32, u32)> = Default::default();
    for t in trials.list(&ListParams::default()).await?.items {
        let e = out.entry(t.spec.experiment.clone()).or_default();
        e.0 += 1;
        if t.status.as_ref().and_then(|s| s.phase) == Some(api::TrialPhaseName::Succeeded) {
            e.1 += 1;
        }
    }
    Ok(out)
}

/// Median and spread of one figure over runs.
fn spread(values: &[f64], digits: usize) -> String {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return "–".into();
    }
    v.sort_by(f64::total_cmp);
    let median = quantile(&v, 0.5);
    if v.len() == 1 || v[0] == v[v.len() - 1] {
        return format!("{median:.digits$}");
    }
    format!(
        "{median:.digits$} ({:.digits$}–{:.digits$})",
        v[0],
        v[v.len() - 1]
    )
}

/// The side-by-side table: one row per shape and figure, a column per operator, medians
/// over runs with the spread.
pub fn print(args: &VersusArgs, runs: &[Run]) {
    let sides: Vec<String> = args
        .operators
        .iter()
        .map(|s| format!("{s:?}").to_lowercase())
        .collect();
    println!("| shape | figure | {} |", sides.join(" | "));
    println!("|---|---|{}", "---|".repeat(sides.len()));
    for shape in &args.shapes {
        let shape = format!("{shape:?}").to_lowercase();
        let of = |side: &str| -> Vec<&Run> {
            runs.iter()
                .filter(|r| r.shape == shape && r.operator == side)
                .collect()
        };
        type Figure = (&'static str, usize, fn(&Run) -> f64);
        let figures: [Figure; 10] = [
            ("wall time, s", 1, |r| r.wall_seconds),
            ("trials per second", 1, |r| r.trials_per_second),
            ("trial end → next pod, p50 ms", 0, |r| {
                r.end_to_next_pod_ms_p50
            }),
            ("trial end → next pod, p99 ms", 0, |r| {
                r.end_to_next_pod_ms_p99
            }),
            ("most trial pods running", 0, |r| r.max_running_pods as f64),
            ("operator CPU-seconds", 1, |r| r.cpu_seconds),
            ("operator peak RSS, MiB", 1, |r| r.peak_rss_mib),
            ("API requests per trial", 2, |r| r.api_requests_per_trial),
            ("trials lost", 0, |r| r.trials_lost as f64),
            ("trials run twice", 0, |r| r.trials_run_twice as f64),
        ];
        for (figure, digits, get) in figures {
            let cells: Vec<String> = sides
                .iter()
                .map(|side| {
                    let rs: Vec<f64> = of(side)
                        .iter()
                        .filter(|r| r.error.is_none())
                        .map(|r| get(r))
                        .collect();
                    spread(&rs, digits)
                })
                .collect();
            println!("| {shape} | {figure} | {} |", cells.join(" | "));
        }
        let largest: Vec<String> = sides
            .iter()
            .map(|side| {
                let mut best: BTreeMap<String, usize> = BTreeMap::new();
                for r in of(side) {
                    for (kind, bytes) in &r.largest_objects {
                        let b = best.entry(kind.clone()).or_default();
                        *b = (*b).max(*bytes);
                    }
                }
                best.iter()
                    .map(|(k, b)| format!("{k} {b}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .collect();
        println!(
            "| {shape} | largest object, bytes | {} |",
            largest.join(" | ")
        );
        if shape == "faults" {
            let resume: Vec<String> = sides
                .iter()
                .map(|side| {
                    let all: Vec<f64> = of(side)
                        .iter()
                        .flat_map(|r| r.resume_seconds.clone())
                        .collect();
                    spread(&all, 2)
                })
                .collect();
            println!(
                "| {shape} | controller restart → its first new trial, s | {} |",
                resume.join(" | ")
            );
        }
        let by_key = |get: fn(&Run) -> &BTreeMap<String, f64>, digits: usize| -> Vec<String> {
            sides
                .iter()
                .map(|side| medians(&of(side), get, digits))
                .collect()
        };
        println!(
            "| {shape} | operator CPU-seconds by process (median) | {} |",
            by_key(|r| &r.cpu_seconds_by_process, 1).join(" | ")
        );
        println!(
            "| {shape} | requests per trial by verb and resource (median) | {} |",
            by_key(|r| &r.requests_per_trial, 2).join(" | ")
        );
        for side in &sides {
            for r in of(side) {
                if let Some(e) = &r.error {
                    println!("| {shape} | {side} run {} did not finish | {e} |", r.run);
                }
            }
        }
    }
}

/// "key median, ..." over runs of a figure kept by key, leaving out medians below 0.01.
fn medians(runs: &[&Run], get: fn(&Run) -> &BTreeMap<String, f64>, digits: usize) -> String {
    let mut keys: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in runs {
        for (k, v) in get(r) {
            keys.entry(k.clone()).or_default().push(*v);
        }
    }
    keys.iter()
        .map(|(k, v)| (k, quantile_of(v)))
        .filter(|(_, m)| *m >= 0.01)
        .map(|(k, m)| format!("{k} {m:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn quantile_of(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    quantile(&v, 0.5)
}
