//! Installing nasop the way users do, on the test control plane (tools/testenv): the Helm
//! chart (lint, schema, rendered manifests through a server-side dry run, a real install
//! whose ServiceAccount runs an example experiment with nothing more than the chart's RBAC),
//! the Grafana dashboard (every panel's PromQL answered by a Prometheus scraping that
//! operator), and the examples (each one accepted by the CRDs and the operator's checks).

#[allow(dead_code)]
#[path = "../operator/harness.rs"]
mod harness;

use harness::{Env, Plan, free_port, value_of};
use nasop::api::{ExperimentPhase, NasExperiment};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const RELEASE: &str = "nasop";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn chart() -> PathBuf {
    repo("charts/nasop")
}

/// The tools tools/testenv built: helm, prometheus, the ServiceMonitor CRD.
fn tool(name: &str) -> PathBuf {
    let dir = std::env::var("NASOP_TESTENV_BIN").unwrap_or_default();
    let path = Path::new(&dir).join(name);
    assert!(
        path.exists(),
        "NASOP_TESTENV_BIN does not hold {name}: run `make test`, or `eval $(make testenv-up | tail -1)` first"
    );
    path
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{cmd:?} did not start: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn helm() -> Command {
    Command::new(tool("helm"))
}

fn kubectl() -> Command {
    Command::new("kubectl")
}

/// `cmd` with `input` on its standard input.
fn with_stdin(cmd: &mut Command, input: &str) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Every document of a multi-document YAML stream, as JSON values.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| {
            let v: Value = serde::Deserialize::deserialize(d).unwrap();
            (!v.is_null()).then_some(v)
        })
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn create_namespace(name: &str) {
    let out = run(kubectl().args(["create", "namespace", name]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("AlreadyExists"),
        "{err}"
    );
}

/// Values that change every switch the chart has.
const NON_DEFAULT: &str = r#"
image: {repository: registry.example.com/ml/nasop, tag: "0.1.0-rc1", pullPolicy: Always}
imagePullSecrets: [{name: registry-credentials}]
replicas: 2
leaderElection: {enabled: false}
watchNamespace: WATCHED
crds: {install: false}
operator: {stopGraceSeconds: 60, maxAttempts: 5, concurrency: 32, logFormat: text, logLevel: "info,nasop=debug"}
reportKey: {existingSecret: my-report-key}
tls: {secretName: nasop-tls}
service: {type: ClusterIP, port: 9443}
resources: {requests: {cpu: 200m, memory: 256Mi}, limits: {cpu: "1", memory: 1Gi}}
serviceAccount: {create: false, name: platform-nasop}
podAnnotations: {team: ml-platform}
podLabels: {cost-center: research}
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: dedicated, operator: Equal, value: control, effect: NoSchedule}]
priorityClassName: system-cluster-critical
serviceMonitor: {enabled: true, labels: {release: kube-prometheus-stack}, interval: 15s, scrapeTimeout: 5s}
dashboard: {enabled: true, namespace: GRAFANA, annotations: {grafana_folder: NAS}}
"#;

fn non_default_values(dir: &Path, watched: &str, grafana: &str) -> PathBuf {
    let path = dir.join("values-non-default.yaml");
    std::fs::write(
        &path,
        NON_DEFAULT
            .replace("WATCHED", watched)
            .replace("GRAFANA", grafana),
    )
    .unwrap();
    path
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("install")
        .join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn chart_lints_and_its_schema_refuses_wrong_values() {
    let dir = scratch("lint");
    let values = non_default_values(&dir, "ml-team", "monitoring");
    ok(helm().arg("lint").arg("--strict").arg(chart()));
    ok(helm()
        .arg("lint")
        .arg("--strict")
        .arg(chart())
        .arg("-f")
        .arg(&values));
    for (set, says) in [
        ("replicas=0", "/replicas"),
        ("operator.logFormat=xml", "/operator/logFormat"),
        ("operatr.concurrency=4", "'operatr' not allowed"),
        ("watchNamespace=Team_A", "/watchNamespace"),
        ("service.port=70000", "/service/port"),
        ("serviceMonitor.interval=soon", "/serviceMonitor/interval"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ] {
        let out = run(helm()
            .args(["template", RELEASE])
            .arg(chart())
            .args(["--set", set]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(err.contains(says), "--set {set}: {err}");
    }
    let out = run(helm()
        .args(["template", RELEASE])
        .arg(chart())
        .args(["--set", "serviceAccount.create=false"]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("serviceAccount.name"),
        "a missing service account name is named"
    );
}

#[test]
fn rendered_manifests_pass_a_server_side_dry_run() {
    let id = std::process::id();
    let (release_ns, watched, grafana) = (
        format!("nasop-dry-{id}"),
        format!("ml-team-{id}"),
        format!("monitoring-{id}"),
    );
    for ns in [&release_ns, &watched, &grafana] {
        create_namespace(ns);
    }
    // The ServiceMonitor is checked against the Prometheus Operator's own CRD.
    ok(kubectl()
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(tool("servicemonitors.crd.yaml")));
    ok(kubectl().args([
        "wait",
        "--for=condition=Established",
        "crd/servicemonitors.monitoring.coreos.com",
        "--timeout=60s",
    ]));
    let dir = scratch("dry-run");
    let values = non_default_values(&dir, &watched, &grafana);

    for extra in [vec![], vec!["-f".to_string(), values.display().to_string()]] {
        let rendered = ok(helm()
            .args(["template", RELEASE])
            .arg(chart())
            .args(["--namespace", &release_ns])
            .args(&extra));
        let out = with_stdin(
            kubectl().args([
                "apply",
                "--server-side",
                "--force-conflicts",
                "--dry-run=server",
                "-f",
                "-",
            ]),
            &rendered,
        );
        assert!(
            out.status.success(),
            "the API server refused the chart rendered with {extra:?}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let docs = documents(&rendered);
        let deployment = of_kind(&docs, "Deployment")[0];
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        // What every rendering keeps: the hardened pod.
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            container["securityContext"]["allowPrivilegeEscalation"],
            false
        );
        assert_eq!(
            container["securityContext"]["capabilities"]["drop"],
            serde_json::json!(["ALL"])
        );
        assert!(args.contains(&"--leader-election"), "{args:?}");
        let dashboard = of_kind(&docs, "ConfigMap")[0];
        assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
        let json: Value =
            serde_json::from_str(dashboard["data"]["nasop.json"].as_str().unwrap()).unwrap();
        assert_eq!(json["uid"], "nasop-operator");

        if extra.is_empty() {
            assert_eq!(of_kind(&docs, "CustomResourceDefinition").len(), 2);
            for crd in of_kind(&docs, "CustomResourceDefinition") {
                assert_eq!(
                    crd["metadata"]["annotations"]["helm.sh/resource-policy"],
                    "keep"
                );
            }
            assert_eq!(of_kind(&docs, "ClusterRole").len(), 1);
            assert!(of_kind(&docs, "ServiceMonitor").is_empty());
            let secret = of_kind(&docs, "Secret")[0];
            assert!(secret["data"]["key"].as_str().unwrap().len() >= 44);
            assert!(args.contains(
                &format!("--report-url=http://nasop.{release_ns}.svc:8080/v1/report").as_str()
            ));
            assert_eq!(container["image"], "ghcr.io/nasop/nasop:0.1.0");
        } else {
            assert!(of_kind(&docs, "CustomResourceDefinition").is_empty());
            assert!(of_kind(&docs, "ClusterRole").is_empty());
            assert!(
                of_kind(&docs, "Secret").is_empty(),
                "existingSecret is used"
            );
            assert!(of_kind(&docs, "ServiceAccount").is_empty());
            let role = of_kind(&docs, "Role")
                .into_iter()
                .find(|r| r["metadata"]["namespace"] == watched.as_str())
                .expect("a Role in the watched namespace");
            assert!(role["rules"].to_string().contains("nasexperiments"));
            let monitor = of_kind(&docs, "ServiceMonitor")[0];
            assert_eq!(
                monitor["metadata"]["labels"]["release"],
                "kube-prometheus-stack"
            );
            assert_eq!(monitor["spec"]["endpoints"][0]["scheme"], "https");
            assert_eq!(dashboard["metadata"]["namespace"], grafana.as_str());
            assert!(args.contains(&format!("--namespace={watched}").as_str()));
            assert!(args.iter().any(|a| a.starts_with(&format!(
                "--report-url=https://nasop.{release_ns}.svc:9443/"
            ))));
            assert_eq!(
                container["image"],
                "registry.example.com/ml/nasop:0.1.0-rc1"
            );
            assert_eq!(pod["serviceAccountName"], "platform-nasop");
        }
    }
    for ns in [&release_ns, &watched, &grafana] {
        let _ = run(kubectl().args(["delete", "namespace", ns, "--wait=false"]));
    }
}

/// One installed release of the chart.
struct Release {
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
fn release() -> &'static Release {
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
        for crd in ["nasexperiments.nasop.dev", "nastrials.nasop.dev"] {
            ok(kubectl().args([
                "wait",
                "--for=condition=Established",
                &format!("crd/{crd}"),
                "--timeout=60s",
            ]));
        }
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

/// Starts the operator as the release's Deployment runs it: its arguments, the release's
/// report key, its ServiceAccount's token; only the addresses are this machine's. Returns
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
                && !a.starts_with("--report-key-file=")
                && !a.starts_with("--stop-grace-seconds=")
        })
        .collect();
    args.extend([
        format!("--listen=127.0.0.1:{}", env.port),
        format!("--report-url=http://127.0.0.1:{}/v1/report", env.port),
        format!("--report-key-file={}", env.key.display()),
        "--stop-grace-seconds=2".to_string(),
    ]);
    let key = ok(kubectl().args([
        "get",
        "secret",
        &format!("{}-report-key", r.name),
        "-n",
        &r.namespace,
        "-o",
        "go-template={{index .data \"key\" | base64decode}}",
    ]));
    assert!(key.len() >= 32, "the chart's report key is too short");
    std::fs::write(&env.key, key).unwrap();
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
async fn check_rbac(r: &Release, kubeconfig: &Path, outside: &[(&str, Vec<String>)]) {
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
    let rare = [("get", "nasop.dev", "nastrials")];
    let unused: Vec<_> = granted(&rendered)
        .difference(&used)
        .filter(|(v, g, res)| !rare.contains(&(v.as_str(), g.as_str(), res.as_str())))
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
    let path = repo("examples/k8s").join(file);
    let mut exp: NasExperiment =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
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

struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(url: &str) -> Option<String> {
    ureq::get(url)
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
}

/// Prometheus scraping the operator's /metrics every second.
fn start_prometheus(dir: &Path, operator_port: u16) -> Prometheus {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: nasop\n    static_configs: [{{targets: [\"127.0.0.1:{operator_port}\"]}}]\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("prometheus starts");
    let prometheus = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    // Scraping before the experiment starts: a rate needs the counters' values before the
    // trials ran, or a fast experiment's counters never increase within Prometheus's view.
    let started = Instant::now();
    let scraping = |p: &Prometheus| query(p, "up{job=\"nasop\"} == 1").is_ok_and(|s| !s.is_empty());
    while !scraping(&prometheus) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "prometheus did not scrape the operator; see {}",
            dir.join("prometheus.log").display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    prometheus
}

/// Series a PromQL expression returns now.
fn query(prometheus: &Prometheus, expr: &str) -> Result<Vec<Value>, String> {
    let url = format!("{}/api/v1/query", prometheus.url);
    let body = ureq::get(&url)
        .query("query", expr)
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .map_err(|e| e.to_string())?
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    if v["status"] != "success" {
        return Err(body);
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Whether an instant-query series' value is a finite number.
fn finite(series: &Value) -> bool {
    series["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .is_some_and(f64::is_finite)
}

/// Each panel's queries, with Grafana's variables as the dashboard would set them for this
/// experiment.
fn dashboard_queries(namespace: &str, experiment: &str) -> Vec<(String, String)> {
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(chart().join("dashboards/nasop.json")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for panel in json["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$namespace", namespace)
                .replace("$experiment", experiment)
                .replace("$__rate_interval", "1m")
                .replace("$__range", "10m");
            out.push((panel["title"].as_str().unwrap().to_string(), expr));
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
    )
    .await;
    uninstall(&r, &name);
}

#[test]
fn every_example_is_accepted_by_the_crds_and_the_operators_checks() {
    release();
    let ns = format!("examples-{}", std::process::id());
    create_namespace(&ns);
    let mut seen = 0;
    for dir in ["examples", "examples/k8s"] {
        for entry in std::fs::read_dir(repo(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in documents(&text) {
                if doc["kind"] == "NasExperiment" {
                    let exp: NasExperiment = serde_json::from_value(doc.clone())
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    if let Err(e) =
                        nasop::api::validate(&exp.metadata.name.clone().unwrap(), &exp.spec)
                    {
                        panic!("{}: {e}", path.display());
                    }
                    seen += 1;
                }
            }
            let out = run(kubectl()
                .args(["create", "--dry-run=server", "-n", &ns, "-f"])
                .arg(&path));
            assert!(
                out.status.success(),
                "{} is refused by the API server: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let _ = run(kubectl().args(["delete", "namespace", &ns, "--wait=false"]));
    assert!(seen >= 15, "only {seen} examples");
}

/// The custom-trainer example's script, run as trials by `nasop run`, speaks the contract.
#[test]
fn the_custom_trainer_example_speaks_the_trial_contract() {
    let dir = scratch("custom-trainer");
    let docs =
        documents(&std::fs::read_to_string(repo("examples/k8s/custom-trainer.yaml")).unwrap());
    let script = dir.join("trainer.py");
    std::fs::write(
        &script,
        of_kind(&docs, "ConfigMap")[0]["data"]["trainer.py"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let mut exp = of_kind(&docs, "NasExperiment")[0].clone();
    exp["spec"]["budget"] = serde_json::json!({"maxTrials": 6, "parallelism": 2, "trialEpochs": 4});
    exp["spec"]["trialTemplate"] = serde_json::json!({"spec": {"containers": [{
        "name": "trainer", "command": ["python3", script.display().to_string()]}]}});
    let manifest = dir.join("custom-trainer.yaml");
    std::fs::write(&manifest, serde_yaml::to_string(&exp).unwrap()).unwrap();
    let runs = dir.join("runs");
    let _ = std::fs::remove_dir_all(&runs);
    ok(Command::new(env!("CARGO_BIN_EXE_nasop"))
        .arg("run")
        .arg(&manifest)
        .arg("--runs-dir")
        .arg(&runs)
        .arg("--plain"));
    let results: Value = serde_json::from_str(&ok(Command::new(env!("CARGO_BIN_EXE_nasop"))
        .arg("results")
        .arg(runs.join("custom-trainer"))
        .arg("--json")))
    .unwrap();
    let text = results.to_string();
    assert!(text.contains("val_accuracy"), "{text}");
    assert!(!text.contains("\"Failed\""), "{text}");
}
