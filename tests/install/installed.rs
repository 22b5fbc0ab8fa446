//! The chart installed, in both modes: its ServiceAccount runs an example through the
//! operator, with exactly the permissions the chart grants; the dashboard is fed.

use super::harness::{Env, Plan, value_of};
use super::prometheus::{dashboard_queries, finite, get, query, start_prometheus};
use super::*;
use nasop::api::{ExperimentPhase, NasExperiment};
use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// One installed release of the chart.
pub(crate) struct Release {
    name: String,
    namespace: String,
    /// Where its experiments go (the namespace it watches, when it watches one).
    experiments: String,
}

impl Release {
    fn user(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

fn install(name: &str, namespace: &str, experiments: &str, sets: &[String]) -> Release {
    create_namespace(experiments);
    let mut cmd = helm();
    cmd.args(["install", name])
        .arg(chart())
        .args(["--namespace", namespace, "--create-namespace"]);
    for set in sets {
        cmd.args(["--set", set]);
    }
    ok(&mut cmd);
    Release {
        name: name.into(),
        namespace: namespace.into(),
        experiments: experiments.into(),
    }
}

/// The chart with its default values (cluster-wide), installed once for this test binary;
/// the CRDs come from it.
pub(crate) fn release() -> &'static Release {
    static RELEASE_ONCE: OnceLock<Release> = OnceLock::new();
    RELEASE_ONCE.get_or_init(|| {
        let id = std::process::id();
        let namespace = format!("nasop-system-{id}");
        // A cluster-wide release an earlier, failed run left on a reused control plane owns
        // the cluster-scoped objects of the same name.
        let left: Value = serde_json::from_str(&ok(helm().args(["list", "-A", "-o", "json"])))
            .unwrap_or(Value::Null);
        for old in left.as_array().into_iter().flatten() {
            let ns = old["namespace"].as_str().unwrap_or_default();
            if old["name"] == RELEASE && ns.starts_with("nasop-system-") {
                ok(helm().args(["uninstall", RELEASE, "-n", ns]));
            }
        }
        // CRDs another test applied with kubectl are handed to this release, as a user
        // moving to the chart would do (README).
        for crd in ["nasexperiments.nasop.dev", "nastrials.nasop.dev"] {
            if run(kubectl().args(["get", "crd", crd])).status.success() {
                ok(kubectl().args([
                    "label",
                    "--overwrite",
                    "crd",
                    crd,
                    "app.kubernetes.io/managed-by=Helm",
                ]));
                ok(kubectl().args([
                    "annotate",
                    "--overwrite",
                    "crd",
                    crd,
                    &format!("meta.helm.sh/release-name={RELEASE}"),
                    &format!("meta.helm.sh/release-namespace={namespace}"),
                ]));
            }
        }
        let r = install(RELEASE, &namespace, &format!("chart-exp-{id}"), &[]);
        wait_established(&["nasexperiments.nasop.dev", "nastrials.nasop.dev"]);
        r
    })
}

/// One chart operator at a time: a cluster-wide one acts on every namespace's experiments.
static ONE_OPERATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A kubeconfig for the test control plane that authenticates as the release's
/// ServiceAccount, with a token from the TokenRequest API.
fn service_account_kubeconfig(r: &Release, dir: &Path) -> PathBuf {
    let token = ok(kubectl().args([
        "create",
        "token",
        &r.name,
        "--namespace",
        &r.namespace,
        "--duration=1h",
    ]));
    let server = ok(kubectl().args([
        "config",
        "view",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]));
    let path = dir.join("service-account.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: testenv, cluster: {{server: \"{server}\", insecure-skip-tls-verify: true}}}}]\n\
             users: [{{name: sa, user: {{token: \"{}\"}}}}]\n\
             contexts: [{{name: sa, context: {{cluster: testenv, user: sa, namespace: {}}}}}]\ncurrent-context: sa\n",
            token.trim(),
            r.experiments
        ),
    )
    .unwrap();
    path
}

/// Starts the operator as the release's Deployment runs it: its arguments and its
/// ServiceAccount's token; only the addresses are this machine's. Returns
/// the ServiceAccount's kubeconfig.
fn start_as_deployed(env: &mut Env, r: &Release, dir: &Path) -> PathBuf {
    let deployment: Value = serde_json::from_str(&ok(kubectl().args([
        "get",
        "deployment",
        &r.name,
        "-n",
        &r.namespace,
        "-o",
        "json",
    ])))
    .unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .filter(|a| {
            !a.starts_with("--listen=")
                && !a.starts_with("--report-url=")
                && !a.starts_with("--stop-grace-seconds=")
        })
        .collect();
    args.extend([
        format!("--listen=127.0.0.1:{}", env.port),
        format!("--report-url=http://127.0.0.1:{}/v1/report", env.port),
        "--stop-grace-seconds=2".to_string(),
    ]);
    let kubeconfig = service_account_kubeconfig(r, dir);
    let kubeconfig_str = kubeconfig.display().to_string();
    env.spawn_operator(
        &args,
        &[
            ("KUBECONFIG", kubeconfig_str.as_str()),
            ("POD_NAMESPACE", r.namespace.as_str()),
            ("POD_NAME", "nasop-test-0"),
        ],
    );
    kubeconfig
}

/// Enough: the release's operator was refused nothing. Not more: it used every permission
/// the release grants, and each of `outside` is refused to its ServiceAccount.
/// `job_sets`: whether the run included trials of several pods (JobSets and TrainJobs); a
/// release that ran none cannot have used those rules.
async fn check_rbac(
    r: &Release,
    kubeconfig: &Path,
    outside: &[(&str, Vec<String>)],
    job_sets: bool,
) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let user = r.user();
    let requests = audited(&user);
    assert!(!requests.is_empty(), "no audited requests from {user}");
    let refused: Vec<_> = requests.iter().filter(|r| r.3).collect();
    assert!(
        refused.is_empty(),
        "the chart's RBAC refused the operator: {refused:?}"
    );
    let used: BTreeSet<(String, String, String)> = requests
        .iter()
        .map(|(v, g, res, _)| (v.clone(), g.clone(), res.clone()))
        .collect();
    let rendered = documents(&ok(helm().args([
        "get",
        "manifest",
        &r.name,
        "-n",
        &r.namespace,
    ])));
    // Needed on a path a short run may not take: a report for a trial the watch has not
    // delivered yet, or a status write that lost a race, reads the trial itself.
    // And checked by admission, never requested: OwnerReferencesPermissionEnforcement
    // (on in tools/testenv) asks for it on every pod the operator creates.
    // A JobSet (TrainJob) trial's object is deleted only when the trial ends with ranks still running
    // (an early stop before rank 0 heard it).
    // Kueue's Workloads are read only while a trial waits in a queue (tests/operator/
    // kueue.rs runs that, without the chart).
    let rare = [
        ("get", "nasop.dev", "nastrials"),
        ("update", "nasop.dev", "nastrials/finalizers"),
        ("delete", "jobset.x-k8s.io", "jobsets"),
        ("delete", "trainer.kubeflow.org", "trainjobs"),
        ("list", "kueue.x-k8s.io", "workloads"),
    ];
    let unused: Vec<_> = granted(&rendered)
        .difference(&used)
        .filter(|(v, g, res)| !rare.contains(&(v.as_str(), g.as_str(), res.as_str())))
        .filter(|(_, g, _)| job_sets || (g != "jobset.x-k8s.io" && g != "trainer.kubeflow.org"))
        .cloned()
        .collect();
    assert!(
        unused.is_empty(),
        "the chart grants what the operator never used: {unused:?} (used: {used:?})"
    );
    for (what, cmd) in outside {
        let out = run(kubectl().env("KUBECONFIG", kubeconfig).args(cmd));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("forbidden"),
            "the chart's ServiceAccount may {what}: {err}"
        );
    }
}

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// Applies examples/k8s/`file` with a smaller budget (trials, parallelism, epochs,
/// timeout seconds) and waits until it has Succeeded.
async fn run_example(env: &Env, file: &str, budget: (u32, u32, u32, u64)) -> NasExperiment {
    run_example_with(env, file, budget, |_| {}).await
}

/// [`run_example`], the example's experiment changed by `tweak` first.
async fn run_example_with(
    env: &Env,
    file: &str,
    budget: (u32, u32, u32, u64),
    tweak: impl FnOnce(&mut NasExperiment),
) -> NasExperiment {
    let path = repo("examples/k8s").join(file);
    let text = std::fs::read_to_string(path).unwrap();
    let doc = documents(&text)
        .into_iter()
        .find(|d| d["kind"] == "NasExperiment")
        .unwrap();
    let mut exp: NasExperiment = serde_json::from_value(doc).unwrap();
    tweak(&mut exp);
    let b = &mut exp.spec.budget;
    (b.max_trials, b.parallelism, b.trial_epochs) = (budget.0, budget.1, budget.2);
    b.trial_timeout_seconds = Some(budget.3);
    let name = exp.metadata.name.clone().unwrap();
    env.experiments()
        .create(&Default::default(), &exp)
        .await
        .unwrap();
    env.wait_for(&name, Duration::from_secs(180), |e| {
        e.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(ExperimentPhase::Succeeded))
    })
    .await
}

/// Uninstalling keeps the CRDs and the experiments.
fn uninstall(r: &Release, experiment: &str) {
    ok(helm().args(["uninstall", &r.name, "-n", &r.namespace, "--wait"]));
    ok(kubectl().args([
        "get",
        "crd",
        "nasexperiments.nasop.dev",
        "nastrials.nasop.dev",
    ]));
    ok(kubectl().args(["get", "nasexperiment", experiment, "-n", &r.experiments]));
    let _ = run(kubectl().args(["delete", "namespace", &r.namespace, "--wait=false"]));
}

/// The API server's audit log of service-account requests (tools/testenv/up.sh).
fn audit_log() -> PathBuf {
    let kubeconfig = PathBuf::from(std::env::var("KUBECONFIG").unwrap());
    kubeconfig.parent().unwrap().join("logs/audit.log")
}

/// (verb, group, resource[/subresource], whether RBAC refused it) of each audited request
/// `user` made. A 403 from admission (a namespace being deleted) is not RBAC's.
fn audited(user: &str) -> Vec<(String, String, String, bool)> {
    let text = std::fs::read_to_string(audit_log()).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        // A watch is logged when its response starts; other requests when they complete.
        .filter(|e| {
            e["user"]["username"] == user
                && (e["stage"] == "ResponseComplete"
                    || (e["stage"] == "ResponseStarted" && e["verb"] == "watch"))
        })
        .map(|e| {
            let o = &e["objectRef"];
            let mut resource = o["resource"].as_str().unwrap_or("").to_string();
            if let Some(sub) = o["subresource"].as_str() {
                resource = format!("{resource}/{sub}");
            }
            (
                e["verb"].as_str().unwrap_or("").to_string(),
                o["apiGroup"].as_str().unwrap_or("").to_string(),
                resource,
                e["annotations"]["authorization.k8s.io/decision"] == "forbid",
            )
        })
        .collect()
}

/// Each (verb, group, resource) the chart's Roles and ClusterRoles grant.
fn granted(rendered: &[Value]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for role in rendered
        .iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
    {
        for rule in role["rules"].as_array().unwrap() {
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        out.insert((
                            verb.as_str().unwrap().to_string(),
                            group.as_str().unwrap().to_string(),
                            resource.as_str().unwrap().to_string(),
                        ));
                    }
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_chart_runs_an_example_with_only_its_rbac_and_feeds_the_dashboard() {
    let r = tokio::task::spawn_blocking(release).await.unwrap();
    let _one = ONE_OPERATOR.lock().await;
    let mut env = Env::existing(&r.experiments).await;
    let dir = scratch("installed");
    let kubeconfig = start_as_deployed(&mut env, r, &dir);
    let prometheus = tokio::task::spawn_blocking({
        let (dir, port) = (dir.clone(), env.port);
        move || start_prometheus(&dir, port)
    })
    .await
    .unwrap();

    // The fake trainer: trial 2 loses its first pod (a retry), trial 5 runs out of GPU
    // memory, trial 7 hangs until its timeout, the rest report three epochs; weak
    // candidates fall behind and are stopped.
    env.start_trainer(Arc::new(|input, attempt| match (input.index, attempt) {
        (2, 1) => Plan::Lose,
        (5, _) => Plan::Exit(1, "CUDA out of memory".into()),
        (7, _) => Plan::Hang,
        _ => {
            let v = value_of(&input.candidate);
            Plan::Report(vec![v - 20.0, v - 10.0, v])
        }
    }));
    // (trials, parallelism, epochs, timeout) smaller than the example's, to finish quickly.
    let done = run_example(&env, "gpu-node-pool.yaml", (14, 4, 3, 4)).await;
    let name = done.metadata.name.clone().unwrap();
    let status = done.status.unwrap();
    assert_eq!(status.trials.created, 14, "{status:?}");
    assert_eq!(status.trials.failed, 1, "{status:?}");

    // The template reached the pods as written.
    let pods = env.pods().list(&Default::default()).await.unwrap();
    let pod = pods.items.first().expect("trial pods");
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(
        spec.node_selector.as_ref().unwrap()["nvidia.com/gpu.product"],
        "NVIDIA-H100-80GB-HBM3"
    );
    let tolerated: Vec<&str> = spec
        .tolerations
        .iter()
        .flatten()
        .filter_map(|t| t.key.as_deref())
        .collect();
    assert!(
        tolerated.contains(&"nvidia.com/gpu") && tolerated.contains(&"dedicated"),
        "{tolerated:?}"
    );
    assert_eq!(
        pod.metadata.labels.as_ref().unwrap()["team"],
        "vision-research"
    );

    // Trials of several pods, as the release's operator runs them: each a JobSet of two
    // ranks (the fake trainer plays both; rank 1's reports are refused, rank 0's count).
    let jobsets = run_example(&env, "jobset.yaml", (2, 2, 3, 60)).await;
    let js_status = jobsets.status.unwrap();
    assert_eq!(js_status.trials.succeeded, 2, "{js_status:?}");
    // And as TrainJobs, on the runtime of examples/k8s/trainjob-runtime.yaml (the stock
    // torch-distributed runtime needs JobSet's webhook, which the test plane does not
    // register), tolerating the GPU nodes.
    ok(kubectl()
        .args(["apply", "--server-side", "-f"])
        .arg(repo("examples/k8s/trainjob-runtime.yaml")));
    let trainjobs = run_example_with(&env, "trainjob.yaml", (2, 2, 3, 60), |e| {
        let spec = &mut e.spec.trial_train_job.as_mut().unwrap().spec;
        spec["runtimeRef"]["name"] = "nasop-torch-distributed".into();
        spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
            ["template"]["spec"]["template"]["spec"]["tolerations"] = serde_json::json!([
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]);
    })
    .await;
    let tj_status = trainjobs.status.unwrap();
    assert_eq!(tj_status.trials.succeeded, 2, "{tj_status:?}");

    let random = repo("examples/k8s/random.yaml").display().to_string();
    check_rbac(
        r,
        &kubeconfig,
        &[
            ("read secrets", args(&["get", "secrets"])),
            (
                "create experiments",
                args(&["create", "--dry-run=server", "-f", &random]),
            ),
            (
                "create config maps",
                args(&["create", "configmap", "x", "--dry-run=server"]),
            ),
            ("delete trials", args(&["delete", "nastrials", "--all"])),
            ("list nodes", args(&["get", "nodes"])),
            ("list leases", args(&["get", "leases", "-n", &r.namespace])),
            (
                "edit experiments",
                args(&["label", "nasexperiment", &name, "x=y"]),
            ),
        ],
        true,
    )
    .await;

    // The dashboard: every panel's queries return data from the operator's metrics.
    let queries = dashboard_queries(&r.experiments, &name);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut empty = Vec::new();
        for (title, expr) in &queries {
            match query(&prometheus, expr) {
                // A number, not just a series: a quantile of no observations is NaN.
                Ok(series) if series.iter().any(finite) => {}
                Ok(series) => empty.push(format!("{title}: {expr} returned no number: {series:?}")),
                Err(e) => panic!("{title}: {expr} failed: {e}"),
            }
        }
        for variable in ["namespace", "experiment"] {
            let values = get(&format!(
                "{}/api/v1/label/{variable}/values?match[]=nasop_trials",
                prometheus.url
            ))
            .unwrap_or_default();
            if !values.contains(&format!(
                "\"{}\"",
                if variable == "namespace" {
                    &r.experiments
                } else {
                    &name
                }
            )) {
                empty.push(format!("variable {variable}: {values}"));
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{}", empty.join("\n"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    uninstall(r, &name);
}

/// watchNamespace: a Role in that namespace is enough, and the operator sees nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_watching_one_namespace_works_there_and_nowhere_else() {
    tokio::task::spawn_blocking(release).await.unwrap();
    let id = std::process::id();
    let team = format!("team-{id}");
    let r = tokio::task::spawn_blocking({
        let team = team.clone();
        move || {
            install(
                "nasop-team",
                &format!("nasop-team-system-{id}"),
                &team,
                &[
                    "crds.install=false".to_string(),
                    format!("watchNamespace={team}"),
                ],
            )
        }
    })
    .await
    .unwrap();
    let _one = ONE_OPERATOR.lock().await;
    let mut env = Env::existing(&r.experiments).await;
    let dir = scratch("namespaced");
    let kubeconfig = start_as_deployed(&mut env, &r, &dir);
    // Trial 1 hangs until its timeout (its pod is deleted); the others report twice.
    env.start_trainer(Arc::new(|input, _| match input.index {
        1 => Plan::Hang,
        _ => Plan::Report(vec![50.0, value_of(&input.candidate)]),
    }));
    let done = run_example(&env, "random.yaml", (5, 2, 2, 3)).await;
    let name = done.metadata.name.clone().unwrap();
    let roles = ok(kubectl().args(["get", "clusterroles", "-o", "name"]));
    assert!(
        !roles.contains(&format!(
            "clusterrole.rbac.authorization.k8s.io/{}\n",
            r.name
        )),
        "a namespaced release made a ClusterRole"
    );
    check_rbac(
        &r,
        &kubeconfig,
        &[
            (
                "list pods elsewhere",
                args(&["get", "pods", "-n", "default"]),
            ),
            (
                "list experiments everywhere",
                args(&["get", "nasexperiments", "-A"]),
            ),
            (
                "list trials elsewhere",
                args(&["get", "nastrials", "-n", "default"]),
            ),
            ("read secrets", args(&["get", "secrets"])),
            ("list nodes", args(&["get", "nodes"])),
        ],
        false,
    )
    .await;
    uninstall(&r, &name);
}

/// Who may run what: the chart's ValidatingAdmissionPolicy refuses a NasExperiment from a
/// user who may create NasExperiments but not pods in its namespace, with a message that
/// says so, and accepts it from a user who may do both; one whose trials are JobSets also
/// needs the right to create JobSets.
#[test]
fn only_users_who_may_create_pods_may_create_experiments() {
    let _r = release();
    let ns = format!("admission-{}", std::process::id());
    create_namespace(&ns);
    for args in [
        vec![
            "create",
            "role",
            "experiments",
            "--verb=create,get",
            "--resource=nasexperiments.nasop.dev",
        ],
        vec!["create", "role", "pods", "--verb=create", "--resource=pods"],
        vec![
            "create",
            "rolebinding",
            "alice-experiments",
            "--role=experiments",
            "--user=alice",
        ],
        vec![
            "create",
            "rolebinding",
            "bob-experiments",
            "--role=experiments",
            "--user=bob",
        ],
        vec![
            "create",
            "rolebinding",
            "bob-pods",
            "--role=pods",
            "--user=bob",
        ],
    ] {
        ok(kubectl().args(&args).args(["-n", &ns]));
    }
    let manifest = |name: &str| {
        super::harness::manifest(
            name,
            "{algorithm: random, seed: 1}",
            "{maxTrials: 1, parallelism: 1, trialEpochs: 1}",
            "",
        )
    };
    // The API server loads a new policy within seconds: until then alice may still pass.
    let started = Instant::now();
    let refusal = loop {
        let name = format!("alice-{}", started.elapsed().as_millis());
        let out = with_stdin(
            kubectl().args(["create", "--as=alice", "-n", &ns, "-f", "-"]),
            &manifest(&name),
        );
        if !out.status.success() {
            break String::from_utf8_lossy(&out.stderr).to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the admission policy never refused a user without pod rights"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        refusal.contains("may not create pods in namespace")
            && refusal.contains("alice")
            && refusal.contains("spec.trialTemplate"),
        "{refusal}"
    );
    let out = with_stdin(
        kubectl().args(["create", "--as=bob", "-n", &ns, "-f", "-"]),
        &manifest("bob"),
    );
    assert!(
        out.status.success(),
        "a user with pod rights was refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Trials as JobSets need the right to create JobSets, which bob lacks.
    let job_set = r#"
apiVersion: nasop.dev/v1alpha1
kind: NasExperiment
metadata: {name: bob-jobset}
spec:
  objectives: [{metric: val_accuracy, goal: maximize}]
  searchSpace: {cell: {nodes: 4, operations: [none, skip_connect]}}
  strategy: {algorithm: random, seed: 1}
  budget: {maxTrials: 1, parallelism: 1, trialEpochs: 1}
  trialJobSet:
    spec:
      replicatedJobs:
        - name: node
          template: {spec: {template: {spec: {containers: [{name: t, image: busybox}]}}}}
"#;
    let out = with_stdin(
        kubectl().args(["create", "--as=bob", "-n", &ns, "-f", "-"]),
        job_set,
    );
    let refusal = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && refusal.contains("may not create jobsets in namespace")
            && refusal.contains("spec.trialJobSet"),
        "bob, without JobSet rights: {refusal}"
    );
    // And trials as TrainJobs, the right to create TrainJobs.
    let train_job = r#"
apiVersion: nasop.dev/v1alpha1
kind: NasExperiment
metadata: {name: bob-trainjob}
spec:
  objectives: [{metric: val_accuracy, goal: maximize}]
  searchSpace: {cell: {nodes: 4, operations: [none, skip_connect]}}
  strategy: {algorithm: random, seed: 1}
  budget: {maxTrials: 1, parallelism: 1, trialEpochs: 1}
  trialTrainJob:
    spec:
      runtimeRef: {name: torch-distributed}
      trainer: {image: busybox, numNodes: 2}
"#;
    let out = with_stdin(
        kubectl().args(["create", "--as=bob", "-n", &ns, "-f", "-"]),
        train_job,
    );
    let refusal = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && refusal.contains("may not create trainjobs in namespace")
            && refusal.contains("spec.trialTrainJob"),
        "bob, without TrainJob rights: {refusal}"
    );
    ok(kubectl().args(["delete", "namespace", &ns, "--wait=false"]));
}
