//! Chaos: one experiment of 60 tabular trials at parallelism 8, run by two operator replicas
//! with leader election, while, at random points of its run (seeded; `NASOP_CHAOS_SEED=N`
//! replays one), an operator replica is SIGKILLed 5 times, the leader is paused (SIGSTOP)
//! past its lease while the standby takes over and then continued, the API server is
//! restarted, etcd stops answering for 10 s, 3 running pods are deleted and 2 evicted
//! through the eviction API, the nodes refuse new pods for a while, and a second, small
//! experiment is deleted and applied again. A replica that exits (a leader that cannot renew
//! its lease for 10 s does, as in an API server or etcd outage) is replaced, as its
//! Deployment would restart it. The experiment must end Succeeded with exactly
//! 60 distinct trials, every recorded result the trainer's, never more than 8 trials
//! active, and a count of finished trials that never goes back; the re-applied experiment
//! runs a search of its own to the end, its results its own pods'.
//!
//! Its own test binary: it restarts parts of the shared test control plane, which the
//! tests of other binaries (run one binary at a time) never see.

#[allow(dead_code)]
#[path = "operator/harness.rs"]
mod harness;

use futures::StreamExt;
use harness::{Env, Plan, manifest, value_of};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use nasop::api::{ExperimentPhase, NasExperiment};
use nasop_core::rng::Rng;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    KillOperator,
    PauseLeader,
    RestartApiServer,
    PauseEtcd,
    DeleteRunningPod,
    EvictRunningPod,
    Unschedulable,
    Reapply,
}

/// The small experiment deleted and applied again mid-run.
const CHURN: &str = "churn";

/// The small experiment; applied again with another seed, so that a result of the old
/// one's pods recorded on the new one's trials would not match their candidates.
fn churn_manifest(seed: u64) -> String {
    manifest(
        CHURN,
        &format!("{{algorithm: random, seed: {seed}}}"),
        "{maxTrials: 6, parallelism: 1, trialEpochs: 12, maxFailedTrials: 0}",
        "",
    )
}

/// The operator's replicas, kept as a Deployment keeps them: two run, each with leader
/// election and named in its POD_NAME (which the lease holder's identity starts with), and
/// one that exits (as a leader that loses its lease does) is replaced by a new one.
struct Replicas {
    /// (operator index in the harness, POD_NAME)
    running: Vec<(usize, String)>,
    named: usize,
    /// Every replica started, for the diagnosis.
    all: Vec<(usize, String)>,
}

impl Replicas {
    fn new(env: &mut Env) -> Self {
        let mut r = Replicas {
            running: Vec::new(),
            named: 0,
            all: Vec::new(),
        };
        r.start(env);
        r.start(env);
        r
    }

    fn start(&mut self, env: &mut Env) -> usize {
        self.named += 1;
        let name = format!("replica-{}", self.named);
        let i = env.start_operator_with(&["--leader-election"], &[("POD_NAME", name.as_str())]);
        self.running.push((i, name.clone()));
        self.all.push((i, name));
        i
    }

    /// Replaces replicas that exited, as the Deployment's pod restarts would.
    fn restart_exited(&mut self, env: &mut Env) {
        let mut exited = Vec::new();
        self.running
            .retain(|(i, name)| match env.operator_exit(*i) {
                Some(status) => {
                    exited.push(format!("{name} exited ({status})"));
                    false
                }
                None => true,
            });
        for why in exited {
            self.start(env);
            eprintln!("chaos: {why}; started {}", self.named_last());
        }
    }

    fn named_last(&self) -> &str {
        &self.all.last().unwrap().1
    }

    /// Kills one replica, leader or standby, and starts its replacement.
    fn kill(&mut self, env: &mut Env, k: usize) {
        let (victim, _) = self.running.remove(k);
        env.kill_operator(victim);
        self.start(env);
    }

    /// The replica that holds the lease now, if a live one does.
    async fn leader(&self, env: &Env) -> Option<usize> {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(env.client.clone(), &env.ns);
        let holder = leases
            .get_opt("nasop-operator")
            .await
            .ok()??
            .spec?
            .holder_identity?;
        self.running
            .iter()
            .find(|(_, name)| holder.starts_with(&format!("{name}_")))
            .map(|(i, _)| *i)
    }
}

/// The test control plane's state directory (beside the kubeconfig).
fn state() -> PathBuf {
    PathBuf::from(std::env::var("KUBECONFIG").unwrap())
        .parent()
        .unwrap()
        .to_path_buf()
}

fn pid_of(name: &str) -> String {
    std::fs::read_to_string(state().join("pids"))
        .unwrap()
        .lines()
        .find_map(|l| {
            let (pid, n) = l.split_once(' ')?;
            (n == name).then(|| pid.to_string())
        })
        .unwrap_or_else(|| panic!("{name} is not in the test control plane's pids"))
}

fn signal(name: &str, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid_of(name)])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {name}");
}

/// The trial a pod runs.
fn trial_of(pod: &Pod) -> String {
    pod.labels()
        .get("nasop.dev/trial")
        .cloned()
        .unwrap_or_default()
}

/// The experiment as the API server has it now, or None while it does not answer.
async fn current(env: &Env) -> Option<NasExperiment> {
    tokio::time::timeout(Duration::from_secs(5), env.experiments().get("chaos"))
        .await
        .ok()?
        .ok()
}

/// What a failure message needs to say why the run stalled: the status, the pods by phase,
/// and, for each of the last three replicas started, whether it still runs and its log.
async fn diagnose(env: &mut Env, replicas: &Replicas) -> String {
    let status = current(env).await.and_then(|e| e.status);
    let mut phases = std::collections::BTreeMap::<String, u32>::new();
    if let Ok(pods) = env.pods().list(&Default::default()).await {
        for p in pods.items {
            let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
            let deleting = if p.metadata.deletion_timestamp.is_some() {
                " (deleting)"
            } else {
                ""
            };
            *phases.entry(format!("{phase}{deleting}")).or_default() += 1;
        }
    }
    let mut out = format!("status {status:?}\npods by phase {phases:?}");
    for (i, name) in replicas.all.iter().rev().take(3) {
        let exit = env.operator_exit(*i);
        out += &format!(
            "\n{name}: {}, log:\n{}",
            exit.map_or("running".to_string(), |s| format!("exited: {s}")),
            harness::tail(&env.operator_log(*i), 15)
        );
    }
    out
}

const TAINT: &str = "chaos.nasop.dev/hold";

async fn set_taint(client: &kube::Client, on: bool) {
    let nodes: Api<Node> = Api::all(client.clone());
    for n in nodes.list(&Default::default()).await.unwrap().items {
        let mut taints: Vec<serde_json::Value> = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.key != TAINT)
            .map(|t| serde_json::to_value(t).unwrap())
            .collect();
        if on {
            taints.push(serde_json::json!({"key": TAINT, "value": "true", "effect": "NoSchedule"}));
        }
        let patch = serde_json::json!({"spec": {"taints": taints}});
        nodes
            .patch(
                &n.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_survives_operator_kills_api_server_and_etcd_outages_and_lost_pods() {
    let seed: u64 = std::env::var("NASOP_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000
        });
    eprintln!("chaos seed {seed} (replay with NASOP_CHAOS_SEED={seed})");
    let mut rng = Rng::new(seed);
    let mut faults: Vec<Fault> = [
        [Fault::KillOperator; 5].as_slice(),
        &[
            Fault::PauseLeader,
            Fault::RestartApiServer,
            Fault::PauseEtcd,
            Fault::Unschedulable,
            Fault::Reapply,
        ],
        &[Fault::DeleteRunningPod; 3],
        &[Fault::EvictRunningPod; 2],
    ]
    .concat();
    rng.shuffle(&mut faults);
    // When each lands: after this many trials were created (distinct points in 4..52).
    let mut points: Vec<u32> = rng
        .choose_indices(48, faults.len())
        .into_iter()
        .map(|i| 4 + i as u32)
        .collect();
    points.sort();
    let plan: Vec<(u32, Fault)> = points.into_iter().zip(faults).collect();
    eprintln!("chaos plan (trials created, fault): {plan:?}");

    let mut env = Env::new("chaos").await;
    env.route_reports();
    let mut replicas = Replicas::new(&mut env);
    env.start_trainer(Arc::new(|input, _| {
        let v = value_of(&input.candidate);
        Plan::Report(vec![v - 3.0, v - 2.0, v - 1.0, v])
    }));
    let seen = env.watch_parallelism("chaos");
    // Every finished count a watch sees, in order.
    let finished: Arc<Mutex<Vec<u32>>> = Arc::default();
    {
        let finished = finished.clone();
        let api = env.experiments();
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(e) = events.next().await {
                let Ok(e) = e else { continue };
                if e.name_any() != "chaos" {
                    continue;
                }
                if let Some(s) = e.status {
                    let c = s.trials;
                    finished
                        .lock()
                        .unwrap()
                        .push(c.succeeded + c.failed + c.stopped);
                }
            }
        });
    }
    env.apply(&manifest(
        "chaos",
        "{algorithm: evolution, seed: 13, settings: {population: 8, sampleSize: 3}}",
        "{maxTrials: 60, parallelism: 8, trialEpochs: 12, maxFailedTrials: 0}",
        "",
    ))
    .await
    .unwrap();
    env.apply(&churn_manifest(17)).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(500);
    let fail = |why: String| -> ! { panic!("chaos seed {seed}: {why}") };
    // Trials whose pod was deleted: each deletion takes a different trial's pod, since three
    // lost pods of one trial fail it (the operator's --max-attempts is 3), as they should.
    let mut hit = BTreeSet::new();
    for (at, fault) in &plan {
        loop {
            let status = current(&env).await.and_then(|e| e.status);
            if status.as_ref().is_some_and(|s| s.trials.created >= *at) {
                break;
            }
            if let Some(phase) = status
                .and_then(|s| s.phase)
                .filter(|p| matches!(p, ExperimentPhase::Succeeded | ExperimentPhase::Failed))
            {
                let why = diagnose(&mut env, &replicas).await;
                fail(format!(
                    "ended {phase:?} before {fault:?} at {at} trials\n{why}"
                ));
            }
            if Instant::now() > deadline {
                let why = diagnose(&mut env, &replicas).await;
                fail(format!("waiting to inject {fault:?} at {at} trials\n{why}"));
            }
            replicas.restart_exited(&mut env);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("chaos: {fault:?} at {at} trials created");
        match fault {
            Fault::KillOperator => {
                // One replica, at random: the leader or the standby.
                let k = rng.below(replicas.running.len());
                replicas.kill(&mut env, k);
            }
            Fault::PauseLeader => {
                // Right after a kill the lease may still name the dead replica: wait for a
                // live one to hold it.
                let mut paused = None;
                let wait = Instant::now() + Duration::from_secs(40);
                while paused.is_none() && Instant::now() < wait {
                    replicas.restart_exited(&mut env);
                    paused = replicas.leader(&env).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let Some(paused) = paused else {
                    fail("no live replica holds the lease".into());
                };
                let pid = env.operator_pid(paused).to_string();
                let kill = |sig: &str| Command::new("kill").args([sig, &pid]).status().unwrap();
                kill("-STOP");
                // Past the lease (15 s): the standby takes over.
                tokio::time::sleep(Duration::from_secs(22)).await;
                kill("-CONT");
                let gone = Instant::now() + Duration::from_secs(20);
                while env.operator_exit(paused).is_none() {
                    if Instant::now() > gone {
                        let why = diagnose(&mut env, &replicas).await;
                        fail(format!("the continued leader did not step down\n{why}"));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                replicas.restart_exited(&mut env);
            }
            Fault::Reapply => {
                let api = env.experiments();
                // In the background, as `kubectl delete` does: its trials and pods may
                // still be there when it is applied again.
                let _ = api.delete(CHURN, &DeleteParams::default()).await;
                let gone = Instant::now() + Duration::from_secs(60);
                while api.get_opt(CHURN).await.ok().flatten().is_some() {
                    if Instant::now() > gone {
                        fail("the deleted experiment did not go".into());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                env.apply(&churn_manifest(18)).await.unwrap();
            }
            Fault::RestartApiServer => {
                let out = Command::new(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tools/testenv/restart.sh"
                ))
                .arg("kube-apiserver")
                .output()
                .unwrap();
                if !out.status.success() {
                    fail(format!(
                        "restarting the API server: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
            }
            Fault::PauseEtcd => {
                signal("etcd", "-STOP");
                tokio::time::sleep(Duration::from_secs(10)).await;
                signal("etcd", "-CONT");
            }
            Fault::DeleteRunningPod | Fault::EvictRunningPod => {
                let pods: Api<Pod> = env.pods();
                let running = pods
                    .list(&Default::default())
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default()
                    .into_iter()
                    .find(|p| {
                        p.metadata.deletion_timestamp.is_none()
                            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                            && !hit.contains(&trial_of(p))
                    });
                if let Some(p) = running {
                    hit.insert(trial_of(&p));
                    if *fault == Fault::EvictRunningPod {
                        let _ = pods.evict(&p.name_any(), &Default::default()).await;
                    } else {
                        let _ = pods.delete(&p.name_any(), &DeleteParams::default()).await;
                    }
                }
            }
            Fault::Unschedulable => {
                set_taint(&env.client, true).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                set_taint(&env.client, false).await;
            }
        }
    }
    let exp = loop {
        if let Some(e) = current(&env).await
            && e.status.as_ref().and_then(|s| s.phase) == Some(ExperimentPhase::Succeeded)
        {
            break e;
        }
        if Instant::now() > deadline {
            let why = diagnose(&mut env, &replicas).await;
            fail(format!("the experiment did not succeed\n{why}"));
        }
        replicas.restart_exited(&mut env);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The re-applied experiment ran a search of its own, to the end, with its own pods'
    // results: none of the deleted one's trials, reports or ending.
    let churn = loop {
        if let Some(e) = env.experiments().get_opt(CHURN).await.ok().flatten()
            && e.status.as_ref().and_then(|s| s.phase) == Some(ExperimentPhase::Succeeded)
        {
            break e;
        }
        if Instant::now() > deadline {
            fail("the re-applied experiment did not succeed".into());
        }
        replicas.restart_exited(&mut env);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let churn_uid = churn.uid().unwrap();
    let churn_status = churn.status.unwrap();
    if churn_status.trials.succeeded != 6 {
        fail(format!(
            "the re-applied experiment: {:?}",
            churn_status.trials
        ));
    }
    // The deleted experiment's trials that garbage collection has not removed yet (after an
    // API server restart it can take minutes) carry its label too: they are not the new
    // one's, which numbered its own past them. Its own are exactly six, each with its own
    // pod's result; the old ones kept their own results and were not adopted.
    let churn_trials = env.all_trials(CHURN).await;
    let owner_of = |t: &nasop::api::NasTrial| t.owner_references().first().map(|o| o.uid.clone());
    let own: Vec<_> = churn_trials
        .iter()
        .filter(|t| owner_of(t).as_deref() == Some(churn_uid.as_str()))
        .collect();
    if own.len() != 6 {
        fail(format!(
            "the re-applied experiment owns {} trials: {:?}",
            own.len(),
            own.iter().map(|t| t.name_any()).collect::<Vec<_>>()
        ));
    }
    for t in &churn_trials {
        let value = t.status.as_ref().and_then(|s| s.value);
        if value.is_some() && value != Some(value_of(&t.spec.candidate)) {
            fail(format!(
                "{} (owner {:?}) recorded {value:?}",
                t.name_any(),
                owner_of(t)
            ));
        }
    }
    if let (Some(created), Some(done)) = (
        churn.metadata.creation_timestamp.as_ref(),
        churn_status.completion_time.as_ref(),
    ) && done.0 < created.0
    {
        fail("the re-applied experiment ended before it was created".into());
    }
    let status = exp.status.unwrap();
    let trials = env.all_trials("chaos").await;
    let indices: BTreeSet<u32> = trials.iter().map(|t| t.spec.index).collect();
    if indices != (0..60).collect() || status.trials.succeeded != 60 {
        fail(format!(
            "{} trials {indices:?}, counts {:?}",
            trials.len(),
            status.trials
        ));
    }
    let candidates: BTreeSet<&str> = trials.iter().map(|t| t.spec.candidate.as_str()).collect();
    if candidates.len() != 60 {
        fail(format!("{} distinct candidates", candidates.len()));
    }
    for t in &trials {
        let value = t.status.as_ref().and_then(|s| s.value);
        if value != Some(value_of(&t.spec.candidate)) {
            fail(format!(
                "{} recorded {value:?}, the trainer reported {}",
                t.name_any(),
                value_of(&t.spec.candidate)
            ));
        }
    }
    let max_active = seen.lock().unwrap().0;
    if max_active > 8 {
        fail(format!("{max_active} trials active at once"));
    }
    let counts = finished.lock().unwrap().clone();
    if let Some(w) = counts.windows(2).find(|w| w[1] < w[0]) {
        fail(format!("the finished count went from {} to {}", w[0], w[1]));
    }
    eprintln!(
        "chaos seed {seed}: 60 trials, at most {max_active} active, {} status versions watched",
        counts.len()
    );
}
