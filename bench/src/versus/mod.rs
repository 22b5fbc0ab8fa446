//! `nasop-bench operators`: nasop and Kubeflow Katib side by side, on the same test control
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
pub mod nasop_operator;
pub mod shape;
pub mod table;

pub use table::print;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, Client, ResourceExt};
use measure::Timeline;
use nasop::api::{ExperimentPhase, TrialPhaseName};
use nasop::operator::pod::{LABEL_ATTEMPT, LABEL_EXPERIMENT, LABEL_TRIAL};
use nasop::tabular::Tabular;
use nasop_testkit::{FakeTrainer, Plan, Player};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

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
    /// Trials that take time, as a user's do: one experiment of --running-trials trials at
    /// --running-parallelism, each trial pod held --hold-seconds (60-120) by KWOK.
    Running,
    /// The same with --running-experiments experiments of --running-experiment-trials
    /// trials at --running-experiment-parallelism.
    RunningMany,
}

/// An operator's or a shape's name in the table and the JSON, as on the command line:
/// "nasop", "latency", "running-many".
pub fn name(v: impl std::fmt::Debug) -> String {
    let mut out = String::new();
    for (i, c) in format!("{v:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('-');
        }
        out.extend(c.to_lowercase());
    }
    out
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
        default_value = "latency,many,long,faults,running,running-many"
    )]
    pub shapes: Vec<Shape>,
    /// Runs of each shape for each operator (the table shows the median and spread).
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    #[command(flatten)]
    pub sizes: crate::operator::Sizes,
    /// Trials of each experiment of the `many` shape.
    #[arg(long, default_value_t = 60)]
    pub experiment_trials: u32,
    /// Trials of the `running` shape's experiment.
    #[arg(long, default_value_t = 600)]
    pub running_trials: u32,
    /// Its parallelism.
    #[arg(long, default_value_t = 100)]
    pub running_parallelism: u32,
    /// Experiments of the `running-many` shape, their trials and parallelism each.
    #[arg(long, default_value_t = 20)]
    pub running_experiments: u32,
    #[arg(long, default_value_t = 10)]
    pub running_experiment_trials: u32,
    #[arg(long, default_value_t = 5)]
    pub running_experiment_parallelism: u32,
    /// How long a trial pod of the running shapes runs, in seconds: MIN-MAX, each trial's
    /// own from its name (the same for both operators).
    #[arg(long, default_value = "60-120", value_parser = parse_hold)]
    pub hold_seconds: (u64, u64),
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
    /// Give up on a run when no trial pod and no trial object changed for this many seconds.
    #[arg(long, default_value_t = 180)]
    pub stall: u64,
    /// Print every run as JSON lines instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Append every run, as it ends, to this file of JSON lines (for `--from`).
    #[arg(long)]
    pub save: Option<std::path::PathBuf>,
    /// Measure nothing: print the table of the runs saved in these files (`--save`, `--json`,
    /// or the benchmark's progress lines), e.g. runs of one matrix measured on several days.
    #[arg(long, value_delimiter = ',')]
    pub from: Vec<std::path::PathBuf>,
}

/// One run of one shape by one operator. Figures that could not be measured are NaN (null
/// in JSON).
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
#[serde(default)]
pub struct Run {
    pub operator: String,
    /// The operator's flags other than its defaults (`--nasop-args`); empty at defaults.
    pub settings: String,
    pub shape: String,
    pub run: u32,
    pub trials: u32,
    #[serde(deserialize_with = "nan_if_null")]
    pub wall_seconds: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub trials_per_second: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub end_to_next_pod_ms_p50: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub end_to_next_pod_ms_p99: f64,
    pub max_running_pods: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub cpu_seconds: f64,
    /// CPU-seconds by process name (Katib: controller, DB manager, PostgreSQL, suggestions).
    pub cpu_seconds_by_process: BTreeMap<String, f64>,
    #[serde(deserialize_with = "nan_if_null")]
    pub peak_rss_mib: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub api_requests_per_trial: f64,
    /// `verb resource` -> requests per trial.
    pub requests_per_trial: BTreeMap<String, f64>,
    /// The largest object of each of the operator's kinds, bytes of JSON.
    pub largest_objects: Vec<(String, usize)>,
    /// Trials that did not succeed, and trials that had more than one pod.
    pub trials_lost: u32,
    pub trials_run_twice: usize,
    /// Seconds from each controller restart to the first trial object it created.
    #[serde(deserialize_with = "nans_if_null")]
    pub resume_seconds: Vec<f64>,
    /// Why the run did not finish, if it did not.
    pub error: Option<String>,
    /// The controller manager's client settings (see [`control_plane`]).
    pub control_plane: String,
    /// A slot freed → the pod created for it (see `Timeline::refill_ms`).
    // Runs saved before it was measured read as not measured.
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub refill_ms_p50: f64,
    // Runs saved before it was measured read as not measured.
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub refill_ms_p99: f64,
    /// The share of slot-seconds (experiments × parallelism × wall time) with a trial pod
    /// running.
    // Runs saved before it was measured read as not measured.
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub slot_utilisation: f64,
    /// From creating the experiments to the first trial pod running.
    // Runs saved before it was measured read as not measured.
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub apply_to_first_running_seconds: f64,
    /// The peak of the operator's processes' summed PSS (smaps_rollup).
    // Runs saved before it was measured read as not measured.
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub peak_pss_mib: f64,
    /// The controller manager's API requests per trial (its controllers' service
    /// accounts; 0 unless it runs with --use-service-account-credentials).
    // Runs saved before it was measured read as not measured.
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub controller_manager_requests_per_trial: f64,
    /// Client-side throttling waits logged during the run, by component.
    pub throttled_waits: BTreeMap<String, u64>,
}

fn parse_hold(text: &str) -> Result<(u64, u64), String> {
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let parse = |x: &str| {
        x.trim()
            .parse::<u64>()
            .map_err(|_| format!("{text:?}: give seconds as MIN-MAX, e.g. 60-120"))
    };
    let (a, b) = (parse(a)?, parse(b)?);
    if a > b {
        return Err(format!("{text:?}: MIN above MAX"));
    }
    Ok((a, b))
}

/// How long the running shapes hold trial `trial`'s pod: a value in `hold` from its name.
pub fn hold_for(trial: &str, hold: (u64, u64)) -> std::time::Duration {
    // FNV-1a: the same name, the same time, in every run and for both operators' names.
    let h = trial.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    std::time::Duration::from_secs(hold.0 + h % (hold.1 - hold.0 + 1))
}

/// The control plane the runs were measured on: tools/testenv/up.sh's extra
/// kube-controller-manager flags (NASOP_TESTENV_CM_FLAGS), or "defaults".
pub fn control_plane() -> String {
    match std::env::var("NASOP_TESTENV_CM_FLAGS") {
        Ok(f) if f.contains("--kube-api-qps") => f.trim().to_string(),
        _ => "defaults".into(),
    }
}

fn nan() -> f64 {
    f64::NAN
}

fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn nans_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    Ok(Vec::<Option<f64>>::deserialize(d)?
        .into_iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect())
}

/// Measures every shape for every operator `--runs` times, or, with `--from`, reads runs
/// measured before.
pub async fn run(args: &VersusArgs) -> Result<Vec<Run>> {
    if !args.from.is_empty() {
        return Ok(table::load(&args.from)?
            .into_iter()
            .filter(|r| {
                args.operators.iter().any(|s| name(*s) == r.operator)
                    && args.shapes.iter().any(|s| name(*s) == r.shape)
            })
            .collect());
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await.context(
        "nasop-bench operators needs the test control plane: `make testenv-up`, then export the KUBECONFIG it prints",
    )?;
    let table = Arc::new(Tabular::built_in()?);
    crate::operator::install_crds(&client).await?;
    let gpus = args
        .sizes
        .parallelism
        .max(args.sizes.experiments * args.sizes.experiment_parallelism);
    nasop_testkit::add_gpu_nodes(&client, gpus.div_ceil(8) + 1).await?;
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
                    match shape::shape_run(&client, &table, args, side, shape, run, katib.clone())
                        .await
                    {
                        Ok(r) => r,
                        Err(e) => Run {
                            error: Some(format!("{e:#}")),
                            ..Run::default()
                        },
                    };
                r.operator = name(side);
                if side == Side::Nasop {
                    r.settings = args.nasop_args.trim().to_string();
                }
                r.shape = name(shape);
                r.run = run;
                eprintln!("{label}: {}", serde_json::to_string(&r)?);
                if args.json {
                    println!("{}", serde_json::to_string(&r)?);
                }
                if let Some(path) = &args.save {
                    table::save(path, &r)?;
                }
                runs.push(r);
            }
        }
    }
    Ok(runs)
}

impl Side {
    /// The operator's kinds: its trial kind first, its experiment kind second.
    fn kinds(self) -> Vec<(&'static str, ApiResource)> {
        match self {
            Side::Nasop => [
                ("NasTrial", "nastrials"),
                ("NasExperiment", "nasexperiments"),
            ]
            .map(|(kind, plural)| {
                let gvk = GroupVersionKind::gvk("nasop.dev", "v1alpha1", kind);
                (kind, ApiResource::from_gvk_with_plural(&gvk, plural))
            })
            .to_vec(),
            Side::Katib => [
                ("Trial", "trials"),
                ("Experiment", "experiments"),
                ("Suggestion", "suggestions"),
            ]
            .map(|(kind, plural)| (kind, katib::resource(kind, plural)))
            .to_vec(),
        }
    }

    /// Whether an experiment object says it ended, succeeded or failed.
    fn ended(self, experiment: &DynamicObject) -> bool {
        match self {
            Side::Nasop => matches!(
                serde_json::from_value(experiment.data["status"]["phase"].clone()),
                Ok(ExperimentPhase::Succeeded | ExperimentPhase::Failed)
            ),
            Side::Katib => katib::ended(experiment).is_some(),
        }
    }

    /// Whether a trial object (NasTrial, or Katib's Trial) says it succeeded.
    fn succeeded(self, trial: &DynamicObject) -> bool {
        match self {
            Side::Nasop => matches!(
                serde_json::from_value(trial.data["status"]["phase"].clone()),
                Ok(TrialPhaseName::Succeeded)
            ),
            Side::Katib => katib::ended(trial) == Some("Succeeded"),
        }
    }
}

/// The largest object of each of the operator's kinds in the namespace, in bytes of JSON as
/// the API server returns it.
async fn largest_objects(client: &Client, side: Side, ns: &str) -> Result<Vec<(String, usize)>> {
    let mut out = Vec::new();
    for (kind, resource) in side.kinds() {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
        let largest = api
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(|o| serde_json::to_string(o).map_or(0, |s| s.len()))
            .max()
            .unwrap_or(0);
        out.push((kind.to_string(), largest));
    }
    Ok(out)
}

/// How many of the namespace's trials succeeded.
async fn succeeded_trials(client: &Client, side: Side, ns: &str) -> Result<u32> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &side.kinds()[0].1);
    let trials = api.list(&ListParams::default()).await?.items;
    Ok(trials.iter().filter(|t| side.succeeded(t)).count() as u32)
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

/// The trainer of both operators' trial pods: records the timeline and ends each running
/// pod with its table result (for Katib, pushed to its database first, as its metrics
/// collector would).
struct VersusPlayer {
    side: Side,
    /// The running shapes: how long each trial pod runs.
    hold: Option<(u64, u64)>,
    table: Arc<Tabular>,
    katib: Option<Arc<katib::Katib>>,
    timeline: Arc<Mutex<Timeline>>,
    failures: Arc<Mutex<Vec<String>>>,
}

impl Player for VersusPlayer {
    fn saw(&self, pod: &Pod) {
        let Some((experiment, trial, _)) = pod_trial(self.side, pod) else {
            return;
        };
        let name = pod.name_any();
        let mut t = self.timeline.lock().unwrap_or_else(|e| e.into_inner());
        t.seen(&name, &experiment, &trial);
        if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
            t.running(&name);
        }
        if matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            t.ended(&name);
        }
    }

    fn plan(&self, pod: &Pod) -> Option<Plan> {
        let (_, trial, candidate) = pod_trial(self.side, pod)?;
        let (side, table, katib) = (self.side, self.table.clone(), self.katib.clone());
        let hold = self.hold.map(|h| hold_for(&trial, h));
        Some(Plan::Later(Box::pin(async move {
            if let Some(hold) = hold {
                tokio::time::sleep(hold).await;
            }
            let candidate = candidate.context("the pod names no architecture")?;
            let metrics = table.evaluate(&candidate, 12)?;
            let val = metrics.get("val_accuracy").copied().unwrap_or(0.0);
            match (side, &katib) {
                (Side::Katib, Some(k)) => {
                    k.report(&trial, &[("val_accuracy".to_string(), val)])
                        .await?;
                    Ok(Plan::Exit(0, String::new()))
                }
                _ => {
                    let message = nasop_testkit::report_json(12, "val_accuracy", val);
                    Ok(Plan::Exit(0, message))
                }
            }
        })))
    }

    fn failed(&self, pod: &str, error: anyhow::Error) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{pod}: {error:#}"));
    }
}

/// Plays the trainer for every trial pod of the namespace (see [`VersusPlayer`]).
fn play_trainer(
    side: Side,
    hold: Option<(u64, u64)>,
    pods: Api<Pod>,
    table: Arc<Tabular>,
    katib: Option<Arc<katib::Katib>>,
    timeline: Arc<Mutex<Timeline>>,
    failures: Arc<Mutex<Vec<String>>>,
) -> FakeTrainer {
    let player = VersusPlayer {
        side,
        hold,
        table,
        katib,
        timeline,
        failures,
    };
    FakeTrainer::start(pods, Arc::new(player))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(kind: &str, status: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({"apiVersion": "v1", "kind": kind,
            "metadata": {"name": "x"}, "status": status}))
        .unwrap()
    }

    #[test]
    fn a_trial_is_held_the_same_time_in_every_run_within_the_range() {
        let names: Vec<String> = (0..200).map(|i| format!("e0-{i}")).collect();
        let holds: Vec<u64> = names
            .iter()
            .map(|n| hold_for(n, (60, 120)).as_secs())
            .collect();
        assert!(holds.iter().all(|h| (60..=120).contains(h)));
        assert!(holds.iter().min() < Some(&70) && holds.iter().max() > Some(&110));
        assert_eq!(hold_for("e0-7", (60, 120)), hold_for("e0-7", (60, 120)));
        assert_eq!(parse_hold("60-120"), Ok((60, 120)));
        assert_eq!(parse_hold("5"), Ok((5, 5)));
        assert!(parse_hold("9-3").is_err());
    }

    #[test]
    fn both_operators_objects_are_read_the_same_way() {
        let nasop = |phase: &str| object("NasTrial", serde_json::json!({"phase": phase}));
        assert!(Side::Nasop.succeeded(&nasop("Succeeded")));
        assert!(!Side::Nasop.succeeded(&nasop("Failed")));
        assert!(Side::Nasop.ended(&nasop("Failed")));
        assert!(!Side::Nasop.ended(&nasop("Training")));
        assert!(!Side::Nasop.ended(&object("NasExperiment", serde_json::json!({}))));
        let katib = |kind: &str| {
            object(
                "Trial",
                serde_json::json!({"conditions": [{"type": kind, "status": "True"}]}),
            )
        };
        assert!(Side::Katib.succeeded(&katib("Succeeded")));
        assert!(!Side::Katib.succeeded(&katib("Running")));
        assert!(Side::Katib.ended(&katib("Failed")));
        for side in [Side::Nasop, Side::Katib] {
            let kinds: Vec<&str> = side.kinds().iter().map(|k| k.0).collect();
            assert!(kinds[0].ends_with("Trial") && kinds[1].ends_with("Experiment"));
        }
    }
}
