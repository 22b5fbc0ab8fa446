//! One run of one shape by one operator: a namespace of its own, the operator's processes,
//! the experiments, the wait for their end (with the fault rows' controller kills), and the
//! figures.

use super::katib::{self, Katib};
use super::measure::{Audit, LogTail, Sampler, Timeline, quantile};
use super::nasop_operator::NasopOperator;
use super::{Run, Shape, Side, VersusArgs, largest_objects, name, play_trainer, succeeded_trials};
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, DynamicObject, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use nasop::api::NasExperiment;
use nasop::tabular::Tabular;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The prefix of every namespace a run makes.
const NAMESPACE_PREFIX: &str = "versus-";

/// Creates the shape's experiments in a namespace of their own, waits for them to end, and
/// measures. The namespace is deleted afterwards, and the next run starts only once every
/// earlier run's namespace is gone.
pub async fn shape_run(
    client: &Client,
    table: &Arc<Tabular>,
    args: &VersusArgs,
    side: Side,
    shape: Shape,
    run: u32,
    katib: Option<Arc<Katib>>,
) -> Result<Run> {
    let (experiments, trials, parallelism) = match shape {
        Shape::Latency | Shape::Faults => (1, args.sizes.trials, args.sizes.parallelism),
        Shape::Long => (1, args.sizes.long_trials, args.sizes.parallelism),
        Shape::Many => (
            args.sizes.experiments,
            args.experiment_trials,
            args.sizes.experiment_parallelism,
        ),
        Shape::Running => (1, args.running_trials, args.running_parallelism),
        Shape::RunningMany => (
            args.running_experiments,
            args.running_experiment_trials,
            args.running_experiment_parallelism,
        ),
    };
    let ns = format!(
        "{NAMESPACE_PREFIX}{}-{}-{run}-{}",
        name(side),
        name(shape),
        std::process::id()
    );
    let plan = Plan {
        side,
        ns: ns.clone(),
        shape,
        names: (0..experiments).map(|i| format!("e{i}")).collect(),
        trials,
        parallelism,
    };
    let namespaces: Api<Namespace> = Api::all(client.clone());
    // Deleting an earlier run's objects (and, for Katib, running their finalizers) would
    // load the machine during this run: Katib's `many` namespace takes minutes to go.
    await_namespaces_gone(&namespaces, Duration::from_secs(args.timeout)).await?;
    let mut n = Namespace::default();
    n.metadata.name = Some(ns.clone());
    if side == Side::Katib {
        // Katib's validating webhook refuses experiments in a namespace without it.
        n.metadata.labels =
            Some([(katib::NAMESPACE_LABEL.to_string(), "enabled".to_string())].into());
    }
    namespaces.create(&PostParams::default(), &n).await?;
    let result = measure_shape(client, table, args, &plan, katib.clone()).await;
    // Also when the run failed half-way: the suggestion services are this run's.
    if let Some(k) = &katib {
        k.stop_suggestions(&ns);
    }
    let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
    result
}

/// Deletes what is left of earlier runs' namespaces (also of a benchmark that was stopped)
/// and waits until they are gone, saying so every minute.
async fn await_namespaces_gone(namespaces: &Api<Namespace>, limit: Duration) -> Result<()> {
    let started = Instant::now();
    let mut said = started;
    loop {
        let left: Vec<String> = namespaces
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(|n| n.name_any())
            .filter(|n| n.starts_with(NAMESPACE_PREFIX))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!(
                "earlier runs' namespaces {} still being deleted after {} s; a run now would measure their deletion too",
                left.join(", "),
                limit.as_secs()
            );
        }
        for ns in &left {
            let _ = namespaces.delete(ns, &DeleteParams::background()).await;
        }
        if said.elapsed() >= Duration::from_secs(60) {
            eprintln!(
                "  waiting for {} to be deleted ({} s so far)",
                left.join(", "),
                started.elapsed().as_secs()
            );
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// What one run creates: in namespace `ns`, `names.len()` experiments of `trials` trials at
/// `parallelism`, for operator `side`.
struct Plan {
    side: Side,
    ns: String,
    shape: Shape,
    names: Vec<String>,
    trials: u32,
    parallelism: u32,
}

impl Plan {
    fn total_trials(&self) -> u32 {
        self.trials * self.names.len() as u32
    }

    /// The number of trial pods ended at which the fault rows kill the controller, evenly
    /// spread over the run.
    fn kill_points(&self, kills: u32) -> Vec<usize> {
        if self.shape != Shape::Faults {
            return Vec::new();
        }
        (1..=kills)
            .map(|k| (self.total_trials() as usize * k as usize) / (kills as usize + 1))
            .collect()
    }
}

/// The operator under test in one run: its processes, the API user whose requests count, and
/// the processes whose CPU and memory count.
struct UnderTest {
    nasop: Option<NasopOperator>,
    katib: Option<Arc<Katib>>,
    pids: Arc<Mutex<Vec<u32>>>,
}

impl UnderTest {
    fn start(side: Side, ns: &str, args: &VersusArgs, katib: Option<Arc<Katib>>) -> Result<Self> {
        let (nasop, katib) = match side {
            Side::Nasop => (Some(NasopOperator::start(ns, &args.nasop_args)?), None),
            Side::Katib => (None, Some(katib.context("Katib is not attached")?)),
        };
        let pids = match (&nasop, &katib) {
            (Some(op), _) => vec![op.child.id()],
            (_, Some(k)) => k.pids(),
            _ => vec![],
        };
        Ok(UnderTest {
            nasop,
            katib,
            pids: Arc::new(Mutex::new(pids)),
        })
    }

    fn user(&self) -> String {
        match &self.nasop {
            Some(op) => op.user(),
            None => katib::USER.to_string(),
        }
    }

    /// Samples the operator's processes from now: those already running count from here;
    /// Katib's suggestion services, started after, from their start (in a cluster, each
    /// experiment's suggestion pod).
    fn sampler(&self) -> Sampler {
        let existing = self.pids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let katib = self.katib.clone();
        let pids = self.pids.clone();
        Sampler::start(
            move || match &katib {
                Some(k) => k.pids(),
                None => pids.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            },
            &existing,
        )
    }

    /// Kills the controller and starts it again.
    fn restart(&mut self) -> Result<()> {
        if let Some(op) = self.nasop.as_mut() {
            op.restart()?;
            self.pids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(op.child.id());
        }
        if let Some(k) = &self.katib {
            k.restart_controller()?;
        }
        Ok(())
    }
}

/// Creates every experiment of the run. The long shape searches a learning rate too: the
/// cell alone has fewer distinct candidates than its trials (see LEARNING_RATE_SPACE).
async fn create_experiments(client: &Client, plan: &Plan) -> Result<()> {
    let ns = plan.ns.as_str();
    let learning_rate = plan.shape == Shape::Long;
    for name in &plan.names {
        match plan.side {
            Side::Nasop => {
                let space = if learning_rate {
                    crate::operator::LEARNING_RATE_SPACE
                } else {
                    ""
                };
                let experiment =
                    crate::operator::random_search(name, plan.trials, plan.parallelism, space);
                Api::<NasExperiment>::namespaced(client.clone(), ns)
                    .create(&PostParams::default(), &experiment)
                    .await?;
            }
            Side::Katib => {
                let experiment =
                    katib::experiment(name, plan.trials, plan.parallelism, learning_rate)?;
                Katib::experiments(client, ns)
                    .create(&PostParams::default(), &experiment)
                    .await
                    .with_context(|| format!("creating Katib experiment {ns}/{name}"))?;
            }
        }
    }
    Ok(())
}

/// How the wait for a run's end went.
struct Ending {
    wall_seconds: f64,
    /// When each controller restart happened.
    restarts: Vec<Instant>,
    /// Why the run did not end, if it did not.
    error: Option<String>,
}

/// Waits until every experiment ended, killing the controller at the fault rows' points; gives
/// up after `--timeout`, or when neither a trial pod nor a trial object changed for `--stall`.
async fn await_end(
    client: &Client,
    args: &VersusArgs,
    plan: &Plan,
    operator: &mut UnderTest,
    timeline: &Mutex<Timeline>,
    trials_seen: &Mutex<Trials>,
) -> Result<Ending> {
    let started = Instant::now();
    let mut kill_at = plan.kill_points(args.kills);
    let mut restarts = Vec::new();
    let mut error = None;
    loop {
        let (ended, pods_changed) = {
            let t = timeline.lock().unwrap_or_else(|e| e.into_inner());
            (t.ended_count(), t.last_change())
        };
        if kill_at.first().is_some_and(|k| ended >= *k) {
            kill_at.remove(0);
            restarts.push(Instant::now());
            operator.restart()?;
        }
        if all_ended(client, plan.side, &plan.ns, &plan.names).await? {
            break;
        }
        if started.elapsed() > Duration::from_secs(args.timeout) {
            error = Some(format!(
                "not ended after {} s ({ended} trial pods ended)",
                args.timeout
            ));
            break;
        }
        let trials_changed = trials_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_change;
        let last = pods_changed.max(trials_changed).unwrap_or(started);
        if last.elapsed() > Duration::from_secs(args.stall) {
            error = Some(format!(
                "stalled: no trial pod or trial object changed for {} s, after {ended} trial pods ended",
                args.stall
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(Ending {
        wall_seconds: started.elapsed().as_secs_f64(),
        restarts,
        error,
    })
}

async fn measure_shape(
    client: &Client,
    table: &Arc<Tabular>,
    args: &VersusArgs,
    plan: &Plan,
    katib: Option<Arc<Katib>>,
) -> Result<Run> {
    let (side, ns) = (plan.side, plan.ns.as_str());
    let timeline: Arc<Mutex<Timeline>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut operator = UnderTest::start(side, ns, args, katib)?;
    let sampler = operator.sampler();
    if let Some(k) = &operator.katib {
        k.start_suggestions(ns, &plan.names)?;
    }
    let hold =
        matches!(plan.shape, Shape::Running | Shape::RunningMany).then_some(args.hold_seconds);
    let trainer = play_trainer(
        side,
        hold,
        Api::<Pod>::namespaced(client.clone(), ns),
        table.clone(),
        operator.katib.clone(),
        timeline.clone(),
        failures.clone(),
    );
    let (trials_task, trials_seen) = watch_trials(client, side, ns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let audit = Audit::from_now()?;
    // Client-side throttling: the controller manager's (client-go, its --kube-api-qps) and
    // Katib's controller's (controller-runtime's client); nasop's kube-rs client has none.
    let logs = std::env::var("KUBECONFIG")
        .ok()
        .and_then(|k| std::path::PathBuf::from(k).parent().map(|d| d.join("logs")))
        .unwrap_or_default();
    let mut throttle_logs = vec![(
        "controller-manager",
        LogTail::from_now(logs.join("kube-controller-manager.log")),
    )];
    if let Some(k) = &operator.katib {
        throttle_logs.push(("katib-controller", LogTail::from_now(k.controller_log())));
    }
    let applied = Instant::now();
    create_experiments(client, plan).await?;
    let ending = await_end(client, args, plan, &mut operator, &timeline, &trials_seen).await?;
    let ended_at = Instant::now();
    // What went wrong is in what the operator logged while nothing moved.
    let gave_up_window = k8s_openapi::jiff::Timestamp::now()
        - k8s_openapi::jiff::SignedDuration::from_secs(args.stall as i64);
    // Requests until the last experiment ended (no more from here).
    let requests = audit.count(&operator.user())?;
    let controller_manager: u64 = audit
        .count_prefix("system:serviceaccount:kube-system:")?
        .values()
        .sum();
    let throttled_waits = throttle_logs
        .iter()
        .map(|(who, log)| (who.to_string(), log.count("client-side throttling")))
        .collect();
    drop(trainer);
    trials_task.abort();
    let (cpu, cpu_by_process, peak, peak_pss) = sampler.finish().await;
    let largest = largest_objects(client, side, ns).await?;
    let succeeded = succeeded_trials(client, side, ns).await?;
    let t = timeline.lock().unwrap_or_else(|e| e.into_inner());
    let seen = trials_seen.lock().unwrap_or_else(|e| e.into_inner());
    let latency = t.end_to_next_pod_ms();
    let refill = t.refill_ms(plan.parallelism as usize);
    let slots = plan.names.len() * plan.parallelism as usize;
    let total_requests: u64 = requests.values().sum();
    // Per trial made: the same as per trial of the shape when the run finished, and still
    // a per-trial figure when it did not.
    let made = (seen.first_seen.len() as f64).max(1.0);
    let mut error = ending.error;
    let failures = failures.lock().unwrap_or_else(|e| e.into_inner());
    if error.is_none() && !failures.is_empty() {
        error = Some(format!(
            "{} trainer failures, first: {}",
            failures.len(),
            failures[0]
        ));
    }
    if let (Some(e), Some(k)) = (error.as_mut(), &operator.katib)
        && let Some(why) = k.errors_since(ns, gave_up_window)
    {
        e.push_str("; ");
        e.push_str(&why);
    }
    let total_trials = plan.total_trials();
    Ok(Run {
        trials: total_trials,
        wall_seconds: ending.wall_seconds,
        trials_per_second: succeeded as f64 / ending.wall_seconds,
        end_to_next_pod_ms_p50: quantile(&latency, 0.5),
        end_to_next_pod_ms_p99: quantile(&latency, 0.99),
        max_running_pods: t.max_active,
        cpu_seconds: cpu,
        cpu_seconds_by_process: cpu_by_process,
        peak_rss_mib: peak,
        api_requests_per_trial: total_requests as f64 / made,
        requests_per_trial: requests
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64 / made))
            .collect(),
        largest_objects: largest,
        trials_lost: total_trials.saturating_sub(succeeded),
        trials_run_twice: t.trials_with_several_pods(),
        resume_seconds: seen.resume_seconds(&ending.restarts),
        error,
        control_plane: super::control_plane(),
        refill_ms_p50: quantile(&refill, 0.5),
        refill_ms_p99: quantile(&refill, 0.99),
        slot_utilisation: t.slot_utilisation(slots, applied, ended_at),
        apply_to_first_running_seconds: t
            .first_running()
            .map_or(f64::NAN, |f| (f - applied).as_secs_f64()),
        peak_pss_mib: peak_pss,
        controller_manager_requests_per_trial: controller_manager as f64 / made,
        throttled_waits,
        ..Run::default()
    })
}

/// When a watch first saw each trial object (NasTrial, or Katib's Trial) of the namespace,
/// and when one last changed: the fault rows' time to resume is a restart to the first trial
/// the new controller made, and a run whose trial objects still change (an operator behind
/// on its bookkeeping after the last pod ended) has not stalled.
#[derive(Default)]
struct Trials {
    first_seen: HashMap<String, Instant>,
    last_change: Option<Instant>,
}

impl Trials {
    /// Seconds from each restart to the first trial object seen after it (NaN if none was).
    fn resume_seconds(&self, restarts: &[Instant]) -> Vec<f64> {
        restarts
            .iter()
            .map(|r| {
                self.first_seen
                    .values()
                    .filter(|c| *c > r)
                    .min()
                    .map_or(f64::NAN, |c| (*c - *r).as_secs_f64())
            })
            .collect()
    }
}

fn watch_trials(
    client: &Client,
    side: Side,
    ns: &str,
) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Trials>>) {
    let resource = side.kinds()[0].1.clone();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let seen: Arc<Mutex<Trials>> = Arc::default();
    let shared = seen.clone();
    let task = tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(event) = events.next().await {
            if let Ok(trial) = event {
                let mut trials = shared.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                trials.first_seen.entry(trial.name_any()).or_insert(now);
                trials.last_change = Some(now);
            }
        }
    });
    (task, seen)
}

/// Whether every experiment of the run has ended.
async fn all_ended(client: &Client, side: Side, ns: &str, names: &[String]) -> Result<bool> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &side.kinds()[1].1);
    let experiments = api.list(&ListParams::default()).await?.items;
    let ended = experiments.iter().filter(|e| side.ended(e)).count();
    Ok(ended >= names.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(shape: Shape, experiments: usize, trials: u32) -> Plan {
        Plan {
            side: Side::Nasop,
            ns: "versus-test".into(),
            shape,
            names: (0..experiments).map(|i| format!("e{i}")).collect(),
            trials,
            parallelism: 10,
        }
    }

    #[test]
    fn only_the_fault_rows_kill_and_they_kill_evenly() {
        assert_eq!(
            plan(Shape::Faults, 1, 2000).kill_points(3),
            vec![500, 1000, 1500]
        );
        assert!(plan(Shape::Latency, 1, 2000).kill_points(3).is_empty());
        assert_eq!(plan(Shape::Many, 120, 60).total_trials(), 7200);
    }

    #[test]
    fn resume_is_counted_to_the_first_trial_after_each_restart() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let trials = Trials {
            first_seen: [("a", 0), ("b", 1500), ("c", 1200), ("d", 5000)]
                .into_iter()
                .map(|(n, ms)| (n.to_string(), at(ms)))
                .collect(),
            last_change: Some(at(5000)),
        };
        let resume = trials.resume_seconds(&[at(1000), at(4000), at(6000)]);
        assert_eq!(resume[..2], [0.2, 1.0]);
        assert!(resume[2].is_nan());
    }
}
