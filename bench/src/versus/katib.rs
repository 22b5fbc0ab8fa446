//! Kubeflow Katib as the side-by-side benchmark drives it: started by tools/katib/up.sh
//! (KATIB_STATE), its experiments in its own API, its suggestion services started per
//! experiment (tools/katib/suggestion.sh), and the trainer's metrics pushed to its DB
//! manager as Katib's SDK does (tools/katib/report.py).

use anyhow::{Context, Result, bail};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The service account Katib's controller runs as (its own RBAC, tools/katib/up.sh).
pub const USER: &str = "system:serviceaccount:kubeflow:katib-controller";
/// The namespace label Katib requires of a namespace before it accepts experiments there (its
/// pod webhook then sees the namespace's pods).
pub const NAMESPACE_LABEL: &str = "katib.kubeflow.org/metrics-collector-injection";
/// The label the benchmark's trial template puts on each trial pod.
pub const LABEL_EXPERIMENT: &str = "bench.nasop.dev/experiment";
/// The label the Job controller puts on a Job's pods: the Job is named after its trial.
pub const LABEL_JOB: &str = "batch.kubernetes.io/job-name";
/// The DB manager's address as the controller's hosts file names it (tools/katib/up.sh).
const DB_MANAGER: &str = "127.0.0.2:6789";
/// NAS-Bench-201's operations, each edge's categorical parameter's values.
const OPERATIONS: [&str; 5] = [
    "none",
    "skip_connect",
    "nor_conv_1x1",
    "nor_conv_3x3",
    "avg_pool_3x3",
];

pub fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubeflow.org", "v1beta1", kind),
        plural,
    )
}

/// A random search over the NAS-Bench-201 cell as a Katib Experiment: one categorical
/// parameter per edge, the trainer a Job whose pod asks for one GPU on the simulated GPU nodes
/// (as nasop's trial pods do), metrics pushed by the trainer. With `learning_rate`, also a
/// log-uniform learning rate in [0.001, 1] (the trainer's `--lr`), as
/// [`crate::operator::LEARNING_RATE_SPACE`] adds to nasop's.
pub fn experiment(
    name: &str,
    trials: u32,
    parallelism: u32,
    learning_rate: bool,
) -> Result<DynamicObject> {
    let mut parameters: Vec<serde_json::Value> = (0..6)
        .map(|i| {
            serde_json::json!({"name": format!("e{i}"), "parameterType": "categorical",
                "feasibleSpace": {"list": OPERATIONS}})
        })
        .collect();
    let mut trial_parameters: Vec<serde_json::Value> = (0..6)
        .map(|i| serde_json::json!({"name": format!("e{i}"), "reference": format!("e{i}")}))
        .collect();
    // The cell in NAS-Bench-201's string: node 1 <- 0; node 2 <- 0, 1; node 3 <- 0, 1, 2.
    let arch = "--arch=|${trialParameters.e0}~0|+|${trialParameters.e1}~0|${trialParameters.e2}~1|+|${trialParameters.e3}~0|${trialParameters.e4}~1|${trialParameters.e5}~2|";
    let mut args = vec![arch.to_string()];
    if learning_rate {
        parameters.push(serde_json::json!({"name": "lr", "parameterType": "double",
            "feasibleSpace": {"min": "0.001", "max": "1.0", "distribution": "logUniform"}}));
        trial_parameters.push(serde_json::json!({"name": "lr", "reference": "lr"}));
        args.push("--lr=${trialParameters.lr}".to_string());
    }
    let value = serde_json::json!({
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "Experiment",
        "metadata": {"name": name},
        "spec": {
            "objective": {"type": "maximize", "objectiveMetricName": "val_accuracy"},
            "algorithm": {"algorithmName": "random"},
            "parallelTrialCount": parallelism,
            "maxTrialCount": trials,
            "metricsCollectorSpec": {"collector": {"kind": "Push"}},
            "parameters": parameters,
            "trialTemplate": {
                "primaryContainerName": "trainer",
                "trialParameters": trial_parameters,
                "trialSpec": {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "spec": {"template": {
                        "metadata": {"labels": {LABEL_EXPERIMENT: name}},
                        "spec": {
                            "restartPolicy": "Never",
                            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                            "containers": [{
                                "name": "trainer",
                                "image": "ghcr.io/nasop/nasop-trainer:dev",
                                "args": args,
                                "resources": {"limits": {"nvidia.com/gpu": "1"}}
                            }]
                        }
                    }}
                }
            }
        }
    });
    Ok(serde_json::from_value(value)?)
}

/// The architecture a Katib trial pod was given (its `--arch=` argument).
pub fn pod_candidate(pod: &k8s_openapi::api::core::v1::Pod) -> Option<String> {
    pod.spec
        .as_ref()?
        .containers
        .first()?
        .args
        .as_ref()?
        .iter()
        .find_map(|a| a.strip_prefix("--arch=").map(str::to_string))
}

/// Whether a Katib object's conditions say it ended (Succeeded or Failed is True).
pub fn ended(object: &DynamicObject) -> Option<&'static str> {
    let conditions = object.data["status"]["conditions"].as_array()?;
    for (kind, word) in [("Succeeded", "Succeeded"), ("Failed", "Failed")] {
        if conditions
            .iter()
            .any(|c| c["type"] == kind && c["status"] == "True")
        {
            return Some(word);
        }
    }
    None
}

/// Katib as tools/katib/up.sh left it running.
pub struct Katib {
    state: PathBuf,
    tools: PathBuf,
    reporter: Reporter,
    /// Controllers this benchmark restarted (the fault rows).
    restarted: Mutex<Vec<Child>>,
}

impl Katib {
    pub fn attach() -> Result<Katib> {
        let state = PathBuf::from(std::env::var("KATIB_STATE").context(
            "KATIB_STATE is not set: start Katib first (eval \"$(tools/katib/up.sh | tail -1)\")",
        )?);
        if !state.join("pids").exists() {
            bail!(
                "Katib is not running in {} (tools/katib/up.sh)",
                state.display()
            );
        }
        let tools = PathBuf::from(
            std::env::var("NASOP_KATIB_TOOLS").unwrap_or_else(|_| "tools/katib".into()),
        );
        let reporter = Reporter::start(&tools)?;
        Ok(Katib {
            state,
            tools,
            reporter,
            restarted: Mutex::default(),
        })
    }

    /// Every process of Katib's: controller, DB manager, the database, suggestion services.
    pub fn pids(&self) -> Vec<u32> {
        let read = |file: &str| -> Vec<u32> {
            std::fs::read_to_string(self.state.join(file))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split_whitespace().next()?.parse().ok())
                .collect()
        };
        let mut pids = read("pids");
        pids.extend(read("suggestions"));
        // The postmaster and its backends (the DB manager's connections, the background
        // writers): memory as PSS counts their shared buffers once among them, and each
        // backend's CPU counts as its own (the postmaster's then without its children's).
        if let Ok(dir) = std::fs::read_to_string(self.state.join("pgdata"))
            && let Ok(pidfile) =
                std::fs::read_to_string(PathBuf::from(dir.trim()).join("data/postmaster.pid"))
            && let Some(pid) = pidfile.lines().next().and_then(|l| l.trim().parse().ok())
        {
            pids.push(pid);
            pids.extend(super::measure::children(pid));
        }
        pids
    }

    /// The controller's log (tools/katib/up.sh writes it; a restart appends).
    pub fn controller_log(&self) -> PathBuf {
        self.state.join("logs/katib-controller.log")
    }

    fn controller_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.state.join("pids"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.ends_with(" katib-controller"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u32>().ok())
            .rfind(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
    }

    /// Kills the controller (SIGKILL) and starts it again as tools/katib/up.sh did.
    pub fn restart_controller(&self) -> Result<()> {
        let pid = self
            .controller_pid()
            .context("no running katib-controller")?;
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.state.join("logs/katib-controller.log"))?;
        let child = Command::new("sh")
            .arg(self.state.join("controller.sh"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("restarting katib-controller")?;
        let mut pids = std::fs::OpenOptions::new()
            .append(true)
            .open(self.state.join("pids"))?;
        writeln!(pids, "{} katib-controller", child.id())?;
        self.restarted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
        Ok(())
    }

    /// Starts the suggestion service of each experiment (as Katib's suggestion Deployment
    /// would), all at once, and waits until each listens.
    pub fn start_suggestions(&self, namespace: &str, experiments: &[String]) -> Result<()> {
        let mut children = Vec::new();
        for chunk in experiments.chunks(16) {
            for name in chunk {
                children.push((
                    name,
                    Command::new(self.tools.join("suggestion.sh"))
                        .args([name.as_str(), namespace, "random"])
                        .stdin(Stdio::null())
                        .spawn()
                        .context("tools/katib/suggestion.sh")?,
                ));
            }
            for (name, mut child) in children.drain(..) {
                if !child.wait()?.success() {
                    bail!("the suggestion service of {namespace}/{name} did not start");
                }
            }
        }
        Ok(())
    }

    /// What the controller logged as failing for a namespace's objects since `since`
    /// (a stalled run: its last `--stall` seconds): a failed run's row quotes it, so that a
    /// shape Katib cannot do says why in Katib's own words.
    pub fn errors_since(
        &self,
        namespace: &str,
        since: k8s_openapi::jiff::Timestamp,
    ) -> Option<String> {
        let log = std::fs::read_to_string(self.state.join("logs/katib-controller.log")).ok()?;
        errors_since(&log, namespace, since)
    }

    /// Stops the suggestion services of a namespace's experiments.
    pub fn stop_suggestions(&self, namespace: &str) {
        let path = self.state.join("suggestions");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut keep = String::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let pid: Option<i32> = words.next().and_then(|p| p.parse().ok());
            let name = words.nth(1).unwrap_or_default();
            match pid {
                Some(pid) if name.ends_with(&format!(".{namespace}")) => unsafe {
                    libc::kill(pid, libc::SIGKILL);
                },
                _ => {
                    keep.push_str(line);
                    keep.push('\n');
                }
            }
        }
        let _ = std::fs::write(path, keep);
    }

    /// Pushes a trial's metrics to the DB manager; resolves when it answered.
    pub async fn report(&self, trial: &str, metrics: &[(String, f64)]) -> Result<()> {
        self.reporter.report(trial, metrics).await
    }

    pub fn experiments(client: &Client, namespace: &str) -> Api<DynamicObject> {
        let r = resource("Experiment", "experiments");
        Api::namespaced_with(client.clone(), namespace, &r)
    }
}

/// Reports sent and not yet answered: trial -> who waits for the answer.
type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<Result<(), String>>>>>;

/// tools/katib/report.py as a child: a line per report, a line per answer.
struct Reporter {
    child: Child,
    stdin: Mutex<ChildStdin>,
    waiting: Waiting,
}

impl Reporter {
    fn start(tools: &std::path::Path) -> Result<Reporter> {
        let mut child = Command::new(tools.join("python.sh"))
            .arg(tools.join("report.py"))
            .arg(DB_MANAGER)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting tools/katib/report.py")?;
        let stdin = child.stdin.take().context("report.py's stdin")?;
        let stdout = child.stdout.take().context("report.py's stdout")?;
        let waiting: Waiting = Arc::default();
        let shared = waiting.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut words = line.splitn(3, ' ');
                let (status, trial) = (words.next(), words.next().unwrap_or_default());
                let answer = match status {
                    Some("ok") => Ok(()),
                    _ => Err(words.next().unwrap_or("no answer").to_string()),
                };
                if let Some(tx) = shared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(trial)
                {
                    let _ = tx.send(answer);
                }
            }
        });
        Ok(Reporter {
            child,
            stdin: Mutex::new(stdin),
            waiting,
        })
    }

    async fn report(&self, trial: &str, metrics: &[(String, f64)]) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(trial.to_string(), tx);
        let mut line = trial.to_string();
        for (name, value) in metrics {
            line.push_str(&format!(" {name}={value}"));
        }
        line.push('\n');
        self.stdin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(line.as_bytes())
            .context("writing to tools/katib/report.py")?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => bail!("Katib's DB manager refused {trial}'s metrics: {e}"),
            Err(_) => bail!("tools/katib/report.py exited"),
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The failures a controller-runtime JSON log records for a namespace's objects from `since`
/// on, most frequent first (object names masked, at most three), with their counts. Update
/// conflicts ("the object has been modified") and objects already gone ("not found") are
/// left out: the controller meets both as a matter of course (it deletes each trial's Job
/// and then reconciles it once more). Katib logs some failures at info with an `err` (a status update that
/// etcd refused, for one).
fn errors_since(log: &str, namespace: &str, since: k8s_openapi::jiff::Timestamp) -> Option<String> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    let quoted = format!("\"namespace\":\"{namespace}\"");
    for line in log.lines().filter(|l| l.contains(&quoted)) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let err = v["error"].as_str().or(v["err"].as_str());
        let at = v["ts"]
            .as_str()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
        if (v["level"] != "error" && err.is_none())
            || at.is_none_or(|at| at < since)
            || err.is_some_and(|e| {
                e.contains("the object has been modified") || e.ends_with(" not found")
            })
        {
            continue;
        }
        let text = format!(
            "{}: {}",
            v["msg"].as_str().unwrap_or_default(),
            err.unwrap_or_default()
        );
        let masked: String = text
            .split('"')
            .enumerate()
            .map(|(i, part)| if i % 2 == 1 { "…" } else { part })
            .collect::<Vec<_>>()
            .join("\"");
        *counts.entry(masked).or_default() += 1;
    }
    let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if counts.is_empty() {
        return None;
    }
    let quoted: Vec<String> = counts
        .iter()
        .take(3)
        .map(|(text, n)| format!("{n}× \"{}\"", text.chars().take(200).collect::<String>()))
        .collect();
    Some(format!("Katib's controller logged {}", quoted.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_experiment_searches_the_nb201_cell_with_pushed_metrics() {
        let e = experiment("x", 2000, 200, false).unwrap();
        let spec = &e.data["spec"];
        assert_eq!(spec["maxTrialCount"], 2000);
        assert_eq!(spec["parallelTrialCount"], 200);
        assert_eq!(spec["metricsCollectorSpec"]["collector"]["kind"], "Push");
        assert_eq!(spec["parameters"].as_array().unwrap().len(), 6);
        let pod = &spec["trialTemplate"]["trialSpec"]["spec"]["template"];
        assert_eq!(pod["metadata"]["labels"][LABEL_EXPERIMENT], "x");
        // Katib fills the parameters in; the result is a NAS-Bench-201 string.
        let arg = pod["spec"]["containers"][0]["args"][0].as_str().unwrap();
        let filled = (0..6).fold(arg.to_string(), |a, i| {
            a.replace(&format!("${{trialParameters.e{i}}}"), OPERATIONS[i % 5])
        });
        let arch = filled.strip_prefix("--arch=").unwrap();
        nasop_core::SearchSpace::nas_bench_201()
            .parse(arch)
            .unwrap();
    }

    #[test]
    fn the_long_shape_adds_a_log_uniform_learning_rate() {
        let e = experiment("x", 10000, 200, true).unwrap();
        let spec = &e.data["spec"];
        let lr = &spec["parameters"][6];
        assert_eq!(lr["name"], "lr");
        assert_eq!(lr["feasibleSpace"]["distribution"], "logUniform");
        let pod = &spec["trialTemplate"]["trialSpec"]["spec"]["template"];
        assert_eq!(
            pod["spec"]["containers"][0]["args"][1],
            "--lr=${trialParameters.lr}"
        );
        assert_eq!(
            spec["trialTemplate"]["trialParameters"][6]["reference"],
            "lr"
        );
    }

    #[test]
    fn ended_reads_the_conditions() {
        let mut o: DynamicObject =
            serde_json::from_value(serde_json::json!({"apiVersion": "kubeflow.org/v1beta1",
                "kind": "Trial", "metadata": {"name": "t"},
                "status": {"conditions": [{"type": "Running", "status": "False"},
                                          {"type": "Succeeded", "status": "True"}]}}))
            .unwrap();
        assert_eq!(ended(&o), Some("Succeeded"));
        o.data["status"]["conditions"][1]["status"] = "False".into();
        assert_eq!(ended(&o), None);
    }

    #[test]
    fn errors_since_leave_out_conflicts_and_earlier_lines() {
        let line = |ts: &str, ns: &str, key: &str, err: &str| {
            serde_json::json!({"level": "info", "ts": ts, "msg": "Update failed",
                "namespace": ns, key: err})
            .to_string()
        };
        let log = [
            line("2026-12-06T12:40:00Z", "a", "err", "etcdserver: request is too large"),
            line("2026-12-06T12:46:33Z", "a", "err", "etcdserver: request is too large"),
            line("2026-12-06T12:46:40Z", "a", "error", "jobs.batch \"e0-1\" not found"),
            line("2026-12-06T12:47:00Z", "a", "err", "etcdserver: request is too large"),
            line("2026-12-06T12:47:01Z", "a", "error", "Operation cannot be fulfilled on suggestions.kubeflow.org \"e0\": the object has been modified"),
            line("2026-12-06T12:47:01Z", "a", "error", "Operation cannot be fulfilled on suggestions.kubeflow.org \"e0\": the object has been modified"),
            line("2026-12-06T12:47:02Z", "b", "err", "other"),
            r#"{"level":"info","ts":"2026-12-06T12:47:03Z","namespace":"a","msg":"fine"}"#.to_string(),
            "not json".to_string(),
        ]
        .join("\n");
        let since: k8s_openapi::jiff::Timestamp = "2026-12-06T12:46:00Z".parse().unwrap();
        let e = errors_since(&log, "a", since).unwrap();
        assert_eq!(
            e,
            "Katib's controller logged 2× \"Update failed: etcdserver: request is too large\""
        );
        assert_eq!(errors_since(&log, "c", since), None);
    }
}
