//! The operator's test harness: a namespace of its own on the test control plane
//! (tools/testenv), the operator binary as a child process scoped to it, and a fake trainer
//! that plays each trial pod: it posts reports with the injected token and ends the pod
//! through KWOK (annotations that become the exit code and termination message).

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use nasop::api::{NasExperiment, NasTrial, TrialPhaseName};
use nasop_core::contract::{self, ReportAction, TrialInput};
use nasop_testkit::{FakeTrainer, GPU_TRIAL_TEMPLATE, Player};
// Not every test that includes the harness uses all of it.
#[allow(unused_imports)]
pub use nasop_testkit::{Plan, pod_env, post_report, report_json};
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const NB201_OPS: &str = "[none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3]";

/// The value the fake trainer reports for a candidate: more 3x3 convolutions are better.
pub fn value_of(candidate: &str) -> f64 {
    let c3 = candidate.matches("nor_conv_3x3").count() as f64;
    let c1 = candidate.matches("nor_conv_1x1").count() as f64;
    let skip = candidate.matches("skip_connect").count() as f64;
    50.0 + 6.0 * c3 + 2.0 * c1 + 0.5 * skip
}

pub type Policy = Arc<dyn Fn(&TrialInput, u32) -> Plan + Send + Sync>;

pub struct Env {
    pub client: Client,
    pub ns: String,
    pub port: u16,
    pub logs: PathBuf,
    operators: Vec<Child>,
    pub replies: Arc<Mutex<Vec<(String, u32, ReportAction)>>>,
    trainer: Option<FakeTrainer>,
    /// The ports of the replicas behind the report router, when there is one.
    routed: Option<Arc<Mutex<Vec<u16>>>>,
}

/// Whether the operator on `port` answers `/readyz` with 200 within a second.
async fn ready(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let check = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        Some(head.ends_with(b"200"))
    };
    tokio::time::timeout(Duration::from_secs(1), check)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Env {
    pub async fn new(name: &str) -> Env {
        Env::create(&format!("{name}-{}", std::process::id()), true).await
    }

    /// An existing namespace, without applying crds/ (the chart test installs them).
    pub async fn existing(ns: &str) -> Env {
        Env::create(ns, false).await
    }

    async fn create(ns: &str, fresh: bool) -> Env {
        let kubeconfig = std::env::var("KUBECONFIG").unwrap_or_default();
        assert!(
            std::path::Path::new(&kubeconfig).is_file(),
            "KUBECONFIG does not point at the test control plane: run `make test`, or `eval $(make testenv-up | tail -1)` first"
        );
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::try_default()
            .await
            .expect("a client for the test control plane");
        if fresh {
            let out = Command::new("kubectl")
                .args(["apply", "--server-side", "--force-conflicts", "-f"])
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/crds"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let ns = ns.to_string();
        if fresh {
            let nss: Api<Namespace> = Api::all(client.clone());
            let mut n = Namespace::default();
            n.metadata.name = Some(ns.clone());
            nss.create(&PostParams::default(), &n).await.unwrap();
        }
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("operator")
            .join(&ns);
        std::fs::create_dir_all(&dir).unwrap();
        Env {
            client,
            ns,
            port: free_port(),
            logs: dir,
            operators: Vec::new(),
            replies: Arc::default(),
            trainer: None,
            routed: None,
        }
    }

    /// Puts a router on the report port, as a Service in front of replicas is: each
    /// connection goes to a running replica that answers `/readyz` (the leader), so that
    /// reports reach whichever replica leads now. Operators started afterwards listen on
    /// ports of their own.
    pub fn route_reports(&mut self) {
        let listener = std::net::TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let ports: Arc<Mutex<Vec<u16>>> = Arc::default();
        self.routed = Some(ports.clone());
        tokio::spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let ports = ports.lock().unwrap().clone();
                tokio::spawn(async move {
                    for port in ports {
                        if ready(port).await
                            && let Ok(mut outbound) =
                                tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                        {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                    // None ready: the connection closes, and the trainer retries.
                });
            }
        });
    }

    /// Starts an operator process for this namespace; returns its index.
    pub fn start_operator(&mut self, extra: &[&str]) -> usize {
        self.start_operator_with(extra, &[])
    }

    /// [`Env::start_operator`] with extra environment variables.
    pub fn start_operator_with(&mut self, extra: &[&str], envs: &[(&str, &str)]) -> usize {
        // A restarted operator takes the report port of the one it replaces; a second
        // replica running beside the first gets its own.
        let alive = self
            .operators
            .iter_mut()
            .any(|c| matches!(c.try_wait(), Ok(None)));
        let port = if alive || self.routed.is_some() {
            free_port()
        } else {
            self.port
        };
        if let Some(ports) = &self.routed {
            ports.lock().unwrap().push(port);
        }
        let mut args: Vec<String> = ["operator", "--namespace", &self.ns, "--listen"]
            .map(String::from)
            .into();
        args.push(format!("127.0.0.1:{port}"));
        args.push("--report-url".into());
        args.push(format!("http://127.0.0.1:{}/v1/report", self.port));
        args.extend(["--stop-grace-seconds", "2", "--lease-namespace", &self.ns].map(String::from));
        args.extend(extra.iter().map(|a| a.to_string()));
        self.spawn_operator(&args, envs)
    }

    /// A kubeconfig that authenticates as a new ServiceAccount `name` of this namespace
    /// bound to cluster-admin: its requests are in the API server's audit log.
    pub async fn service_account_kubeconfig(&self, name: &str) -> PathBuf {
        self.account_kubeconfig(name, Some("cluster-admin")).await
    }

    /// A kubeconfig that authenticates as a new ServiceAccount `name` of this namespace,
    /// bound to `cluster_role` everywhere, or to nothing (it may do nothing).
    pub async fn account_kubeconfig(&self, name: &str, cluster_role: Option<&str>) -> PathBuf {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        use k8s_openapi::api::core::v1::ServiceAccount;
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &self.ns);
        let mut account = ServiceAccount::default();
        account.metadata.name = Some(name.into());
        accounts
            .create(&PostParams::default(), &account)
            .await
            .unwrap();
        if let Some(role) = cluster_role {
            self.bind(name, role).await;
        }
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(3600),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        let token = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap()
            .status
            .unwrap()
            .token;
        let server = kube::Config::infer().await.unwrap().cluster_url.to_string();
        let path = self.logs.join(format!("{name}.kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: t, cluster: {{server: \"{server}\", insecure-skip-tls-verify: true}}}}]\n\
                 users: [{{name: u, user: {{token: \"{token}\"}}}}]\n\
                 contexts: [{{name: c, context: {{cluster: t, user: u, namespace: {}}}}}]\ncurrent-context: c\n",
                self.ns
            ),
        )
        .unwrap();
        path
    }

    /// Binds ServiceAccount `name` of this namespace to `cluster_role` everywhere.
    async fn bind(&self, name: &str, cluster_role: &str) {
        use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
        let binding = ClusterRoleBinding {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("{}-{name}", self.ns)),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: cluster_role.into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: name.into(),
                namespace: Some(self.ns.clone()),
                ..Default::default()
            }]),
        };
        let bindings: Api<ClusterRoleBinding> = Api::all(self.client.clone());
        let _ = bindings
            .delete(&format!("{}-{name}", self.ns), &Default::default())
            .await;
        bindings
            .create(&PostParams::default(), &binding)
            .await
            .unwrap();
    }

    /// Starts `nasop <args>` with extra environment variables; returns its index.
    pub fn spawn_operator(&mut self, args: &[String], envs: &[(&str, &str)]) -> usize {
        let i = self.operators.len();
        let log = std::fs::File::create(self.logs.join(format!("operator-{i}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_nasop"))
            .args(args)
            .envs(envs.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("the nasop binary runs");
        self.operators.push(child);
        i
    }

    pub fn kill_operator(&mut self, i: usize) {
        let c = &mut self.operators[i];
        let _ = c.kill();
        let _ = c.wait();
    }

    /// How operator `i` exited, or None while it runs.
    pub fn operator_exit(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.operators[i].try_wait().ok().flatten()
    }

    /// The process id of operator `i`.
    pub fn operator_pid(&self, i: usize) -> u32 {
        self.operators[i].id()
    }

    /// Creates an object from YAML as `kubectl create` would, without nasop's types (so
    /// that a manifest nasop cannot read can be written).
    pub async fn create_raw(&self, yaml: &str) -> Result<(), kube::Error> {
        let value: serde_json::Value = serde_yaml::from_str(yaml).expect("test manifests parse");
        let resource = kube::api::ApiResource::erase::<NasExperiment>(&());
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.ns, &resource);
        let object: kube::api::DynamicObject = serde_json::from_value(value).unwrap();
        api.create(&PostParams::default(), &object)
            .await
            .map(|_| ())
    }

    /// Waits until the status of experiment `name`, read untyped, satisfies `done`.
    pub async fn raw_status(
        &self,
        name: &str,
        timeout: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let resource = kube::api::ApiResource::erase::<NasExperiment>(&());
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.ns, &resource);
        poll(
            timeout,
            async || api.get(name).await.unwrap().data["status"].clone(),
            done,
            |status| format!("status of {name}: {status}"),
        )
        .await
    }

    pub fn operator_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.logs.join(format!("operator-{i}.log"))).unwrap_or_default()
    }

    pub fn experiments(&self) -> Api<NasExperiment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn trials(&self) -> Api<NasTrial> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub async fn apply(&self, yaml: &str) -> Result<NasExperiment, kube::Error> {
        let exp: NasExperiment = serde_yaml::from_str(yaml).expect("test manifests parse");
        self.experiments()
            .create(&PostParams::default(), &exp)
            .await
    }

    /// Plays the trainer for every pod of this namespace, as `policy` says.
    pub fn start_trainer(&mut self, policy: Policy) {
        let player = PolicyPlayer {
            policy,
            replies: self.replies.clone(),
        };
        self.trainer = Some(FakeTrainer::start(self.pods(), Arc::new(player)));
    }

    /// Waits until the experiment's status satisfies `done`, failing after `timeout` with
    /// the last status and the operator's log.
    pub async fn wait_for(
        &self,
        name: &str,
        timeout: Duration,
        done: impl Fn(&NasExperiment) -> bool,
    ) -> NasExperiment {
        poll(
            timeout,
            async || self.experiments().get(name).await.unwrap(),
            done,
            |exp| {
                format!(
                    "status: {}\n{}",
                    serde_json::to_string_pretty(&exp.status).unwrap(),
                    self.log_tail()
                )
            },
        )
        .await
    }

    /// Waits until the experiment's trials (by index) satisfy `done`, failing after
    /// `timeout` with their phases and the operator's log.
    pub async fn wait_for_trials(
        &self,
        experiment: &str,
        timeout: Duration,
        done: impl Fn(&[NasTrial]) -> bool,
    ) -> Vec<NasTrial> {
        poll(
            timeout,
            async || self.all_trials(experiment).await,
            |trials: &Vec<NasTrial>| done(trials),
            |trials| {
                let phases: Vec<_> = trials
                    .iter()
                    .map(|t| (t.spec.index, t.status.as_ref().and_then(|s| s.phase)))
                    .collect();
                format!("trial phases: {phases:?}\n{}", self.log_tail())
            },
        )
        .await
    }

    /// The last 30 lines of the newest operator's log, for a failure message.
    fn log_tail(&self) -> String {
        format!(
            "operator log tail:\n{}",
            tail(
                &self.operator_log(self.operators.len().saturating_sub(1)),
                30
            )
        )
    }

    pub async fn all_trials(&self, experiment: &str) -> Vec<NasTrial> {
        let mut trials: Vec<NasTrial> = self
            .trials()
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|t| t.spec.experiment == experiment)
            .collect();
        trials.sort_by_key(|t| t.spec.index);
        trials
    }

    /// The most trials of `experiment` that were ever active at once, as seen by a watch
    /// (a trial is active from its creation until its status says it ended).
    pub fn watch_parallelism(&self, experiment: &str) -> Arc<Mutex<(usize, usize)>> {
        let seen: Arc<Mutex<(usize, usize)>> = Arc::default();
        let out = seen.clone();
        let trials = self.trials();
        let experiment = experiment.to_string();
        tokio::spawn(async move {
            let mut active: HashSet<String> = HashSet::new();
            let mut ended: HashSet<String> = HashSet::new();
            // A re-list (after the API server or etcd was away) arrives one object at a time
            // in name order, so trials created during the gap can come before older ones that
            // ended in it: the count is taken from the whole list at its end, not from each
            // object as it comes, or the watch itself would see more trials than ever ran.
            let mut relist: Option<Vec<NasTrial>> = None;
            let mut events = watcher(trials, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                let Ok(event) = event else { continue };
                let batch = match event {
                    watcher::Event::Init => {
                        relist = Some(Vec::new());
                        continue;
                    }
                    watcher::Event::InitApply(t) => {
                        if let Some(list) = relist.as_mut() {
                            list.push(t);
                        }
                        continue;
                    }
                    watcher::Event::InitDone => relist.take().unwrap_or_default(),
                    watcher::Event::Apply(t) => vec![t],
                    watcher::Event::Delete(_) => continue,
                };
                for t in batch {
                    if t.spec.experiment != experiment {
                        continue;
                    }
                    let name = t.name_any();
                    let done = matches!(
                        t.status.as_ref().and_then(|s| s.phase),
                        Some(
                            TrialPhaseName::Succeeded
                                | TrialPhaseName::Failed
                                | TrialPhaseName::Stopped
                        )
                    );
                    if done {
                        active.remove(&name);
                        ended.insert(name);
                    } else if !ended.contains(&name) {
                        active.insert(name);
                    }
                }
                let mut s = seen.lock().unwrap();
                s.0 = s.0.max(active.len());
                s.1 = active.len() + ended.len();
            }
        });
        out
    }

    pub async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        tokio::task::spawn_blocking(move || {
            ureq::get(&url)
                .call()
                .map(|mut r| r.body_mut().read_to_string().unwrap_or_default())
                .unwrap_or_default()
        })
        .await
        .unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for c in &mut self.operators {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.trainer.take();
        // Leave the namespace for post-mortems only when the test failed.
        if !std::thread::panicking() {
            let _ = Command::new("kubectl")
                .args(["delete", "namespace", &self.ns, "--wait=false"])
                .output();
        }
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Ends the running pod `name` as the trainer would, with `exit` and `message`.
pub async fn end_pod(pods: &Api<Pod>, name: &str, exit: i32, message: &str) {
    nasop_testkit::end_pod(pods, name, exit, message)
        .await
        .unwrap_or_else(|e| panic!("ending pod {name}: {e}"));
}

/// The test's policy as the fake trainer's player: the plan from the trial contract and the
/// attempt, and every reply kept.
struct PolicyPlayer {
    policy: Policy,
    replies: Arc<Mutex<Vec<(String, u32, ReportAction)>>>,
}

impl Player for PolicyPlayer {
    /// Pods that are not a trial's (no trial contract, no attempt label) are left alone.
    fn plan(&self, pod: &Pod) -> Option<Plan> {
        let env = pod_env(pod);
        let input: TrialInput = serde_json::from_str(env.get(contract::ENV_TRIAL)?).ok()?;
        let attempt: u32 = pod.labels().get("nasop.dev/attempt")?.parse().ok()?;
        Some((self.policy)(&input, attempt))
    }

    fn replied(&self, trial: &str, step: u32, action: ReportAction) {
        self.replies
            .lock()
            .unwrap()
            .push((trial.to_string(), step, action));
    }
}

/// A NasExperiment manifest over the NAS-Bench-201 cell space, with a GPU trial template.
pub fn manifest(name: &str, strategy: &str, budget: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: nasop.dev/v1alpha1
kind: NasExperiment
metadata:
  name: {name}
spec:
  objectives: [{{metric: val_accuracy, goal: maximize}}]
  searchSpace:
    cell: {{nodes: 4, operations: {NB201_OPS}}}
  strategy: {strategy}
  budget: {budget}
{extra}
{GPU_TRIAL_TEMPLATE}"#
    )
}

/// Polls `fetch` every 100 ms until `done` holds of what it returns; after `timeout`,
/// panics with `describe` of the last value.
pub async fn poll<T>(
    timeout: Duration,
    mut fetch: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
    describe: impl Fn(&T) -> String,
) -> T {
    let started = Instant::now();
    loop {
        let value = fetch().await;
        if done(&value) {
            return value;
        }
        if started.elapsed() > timeout {
            panic!("timed out; {}", describe(&value));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
