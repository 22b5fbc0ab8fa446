//! nasop as a user meets it, on the test cluster's real node (tools/testenv/node.sh): the
//! README's "Installing on a cluster" step for step. The images built from the Dockerfiles
//! are pushed to the cluster's registry, the chart installs the operator as a pod, and
//! examples/k8s/fashion-mnist-cpu.yaml trains real networks in trainer pods that the kubelet
//! pulled, reporting through the operator's Service. On the way: a Prometheus finds the
//! operator as the chart's ServiceMonitor would have it, a trial pod is evicted and the
//! operator pod deleted mid-run, median stopping ends a real trainer, and a trial whose
//! image is missing fails fast. On failure it prints what a user would look at.

#[allow(dead_code)]
#[path = "support/browser.rs"]
mod browser;
#[allow(dead_code)]
#[path = "support/cli.rs"]
mod cli;
#[allow(dead_code)]
#[path = "operator/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "install/prometheus.rs"]
mod prometheus;

use cli::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const SYSTEM: &str = "nasop-system";
const NAMESPACE: &str = "e2e";
const EXPERIMENT: &str = "fashion-mnist-cpu";
const EXAMPLE_IMAGE: &str = "ghcr.io/nasop/nasop-trainer:0.1.0-cpu";
/// The whole run: images already built by `make test-images`, six trials of 3 epochs.
const TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// kubectl with these arguments.
fn kube(args: &[&str]) -> Command {
    let mut cmd = kubectl();
    cmd.args(args);
    cmd
}

fn json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&ok(&mut kube(&all))).expect("kubectl prints JSON")
}

fn log(what: &str) {
    eprintln!("[e2e {}] {what}", chrono_now());
}

fn chrono_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

/// What a user would look at when something went wrong, printed if the test fails.
struct Diagnostics;

impl Drop for Diagnostics {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (title, args) in [
            ("experiment", vec!["describe", "nasexp", "-n", NAMESPACE]),
            (
                "trials",
                vec!["get", "nastrials", "-n", NAMESPACE, "-o", "wide"],
            ),
            ("pods", vec!["get", "pods", "-A", "-o", "wide"]),
            ("trial pods", vec!["describe", "pods", "-n", NAMESPACE]),
            (
                "trainer logs",
                vec![
                    "logs",
                    "-n",
                    NAMESPACE,
                    "-l",
                    "nasop.dev/experiment",
                    "--prefix",
                    "--tail=20",
                ],
            ),
            (
                "events",
                vec!["get", "events", "-A", "--sort-by=.lastTimestamp"],
            ),
            ("operator pods", vec!["describe", "pods", "-n", SYSTEM]),
            (
                "operator logs",
                vec!["logs", "-n", SYSTEM, "deployment/nasop", "--tail=80"],
            ),
            ("nodes", vec!["describe", "node", "worker-0"]),
        ] {
            let out = run(&mut kube(&args));
            eprintln!(
                "==== {title}: kubectl {}\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The chart's ServiceMonitor, rendered, as the scrape config the Prometheus Operator makes
/// of it: the Service's endpoints in the release namespace, kept by the selector's labels
/// and the endpoint's port name.
fn scrape_config_of_service_monitor(kubeconfig: &str) -> String {
    let rendered = ok(helm().args([
        "template",
        "nasop",
        "charts/nasop",
        "-n",
        SYSTEM,
        "--set",
        "serviceMonitor.enabled=true",
        "--show-only",
        "templates/servicemonitor.yaml",
    ]));
    let monitor: Value = serde_yaml::from_str(&rendered).expect("a ServiceMonitor");
    let mut relabel = String::new();
    for (label, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        let meta: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        relabel += &format!(
            "      - {{source_labels: [__meta_kubernetes_service_label_{meta}], regex: {}, action: keep}}\n",
            value.as_str().unwrap()
        );
    }
    let endpoint = &monitor["spec"]["endpoints"][0];
    relabel += &format!(
        "      - {{source_labels: [__meta_kubernetes_endpointslice_port_name], regex: {}, action: keep}}\n",
        endpoint["port"].as_str().unwrap()
    );
    format!(
        "  - job_name: servicemonitor\n    metrics_path: {}\n    scheme: {}\n    kubernetes_sd_configs:\n      - {{role: endpointslice, kubeconfig_file: {kubeconfig}, namespaces: {{names: [{SYSTEM}]}}}}\n    relabel_configs:\n{relabel}",
        endpoint["path"].as_str().unwrap(),
        endpoint["scheme"].as_str().unwrap(),
    )
}

/// The objects of `kubectl get KIND -n NAMESPACE -l SELECTOR`.
fn items(kind: &str, namespace: &str, selector: &str) -> Vec<Value> {
    json(&["get", kind, "-n", namespace, "-l", selector])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn trials() -> Vec<Value> {
    items(
        "nastrials",
        NAMESPACE,
        &format!("nasop.dev/experiment={EXPERIMENT}"),
    )
}

fn operator_pods() -> Vec<String> {
    items("pods", SYSTEM, "app.kubernetes.io/name=nasop")
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_cpu_search_runs_on_a_real_node_through_the_helm_installed_operator() {
    let registry = std::env::var("NASOP_TESTENV_REGISTRY")
        .expect("NASOP_TESTENV_REGISTRY: run under tools/testenv/with.sh (make test)");
    let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let started = Instant::now();
    let _diagnostics = Diagnostics;
    let images = format!("{registry}/nasop");

    // 1. Images: built by `make test-images` before the suite (the same build); here they
    // are tagged for the cluster's registry and pushed.
    log(&format!("make push REGISTRY={images}"));
    ok(Command::new("make").current_dir(repo(".")).args([
        "push",
        &format!("REGISTRY={images}"),
        "TRAINER_VARIANTS=cpu python",
        "IMAGE_BASES=local",
    ]));

    // CRDs an earlier test applied with kubectl are handed to the release (README).
    for crd in ["nasexperiments.nasop.dev", "nastrials.nasop.dev"] {
        if run(&mut kube(&["get", "crd", crd])).status.success() {
            ok(&mut kube(&[
                "label",
                "--overwrite",
                "crd",
                crd,
                "app.kubernetes.io/managed-by=Helm",
            ]));
            ok(&mut kube(&[
                "annotate",
                "--overwrite",
                "crd",
                crd,
                "meta.helm.sh/release-name=nasop",
                &format!("meta.helm.sh/release-namespace={SYSTEM}"),
            ]));
        }
    }

    // 2. Install.
    log("helm install");
    ok(helm().args([
        "install",
        "nasop",
        "charts/nasop",
        "-n",
        SYSTEM,
        "--create-namespace",
        "--set",
        &format!("image.repository={images}/nasop"),
    ]));
    ok(&mut kube(&[
        "-n",
        SYSTEM,
        "rollout",
        "status",
        "deployment/nasop",
        "--timeout=300s",
    ]));
    log(&format!("operator running after {:?}", started.elapsed()));

    let dir = std::env::temp_dir().join(format!("nasop-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prometheus = prometheus::start_prometheus_with(
        &dir,
        &scrape_config_of_service_monitor(&kubeconfig),
        "servicemonitor",
    );

    // 3. The experiment, its image pointed at the registry.
    let example = std::fs::read_to_string(repo("examples/k8s/fashion-mnist-cpu.yaml")).unwrap();
    assert!(
        example.contains(EXAMPLE_IMAGE),
        "the example uses {EXAMPLE_IMAGE}"
    );
    let manifest = example.replace(EXAMPLE_IMAGE, &format!("{images}/nasop-trainer:0.1.0-cpu"));
    let _ = run(&mut kube(&["create", "namespace", NAMESPACE]));
    // Trial pods run under the restricted Pod Security Standard: nasop's defaults and the
    // examples must satisfy it, or the API server refuses the pods.
    ok(&mut kube(&[
        "label",
        "--overwrite",
        "namespace",
        NAMESPACE,
        "pod-security.kubernetes.io/enforce=restricted",
    ]));
    let out = with_stdin(&mut kube(&["apply", "-n", NAMESPACE, "-f", "-"]), &manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Wait for the end. Once a trial has reported, mid-run: evict its pod through the
    // eviction API (as a drain does), and delete the operator pod.
    let mut killed: Option<String> = None;
    let mut evicted: Option<(String, String)> = None;
    let mut last = String::new();
    let experiment = loop {
        assert!(
            started.elapsed() < TIMEOUT,
            "the experiment did not end within {TIMEOUT:?}"
        );
        let exp = json(&["get", "nasexp", EXPERIMENT, "-n", NAMESPACE]);
        let status = &exp["status"];
        let line = format!(
            "phase {} trials {} progress {}",
            status["phase"], status["trials"], status["progress"]
        );
        if line != last {
            log(&line);
            last = line;
        }
        match status["phase"].as_str() {
            Some("Succeeded") => break exp,
            Some("Failed") => panic!("the experiment failed: {status}"),
            _ => {}
        }
        if killed.is_none() {
            let reported = trials().into_iter().find(|t| {
                t["status"]["phase"] == "Running"
                    && t["status"]["history"]
                        .as_array()
                        .is_some_and(|h| !h.is_empty())
            });
            if let Some(t) = reported {
                let trial = t["metadata"]["name"].as_str().unwrap().to_string();
                let pod = t["status"]["pod"].as_str().unwrap().to_string();
                the_ui_shows_a_running_trials_log(t["spec"]["index"].as_u64().unwrap());
                log(&format!("evicting {trial}'s pod {pod}"));
                evict(&pod);
                evicted = Some((trial, pod));
                let pods = operator_pods();
                assert_eq!(pods.len(), 1, "one operator pod: {pods:?}");
                log(&format!("deleting the operator pod {}", pods[0]));
                ok(&mut kube(&[
                    "delete",
                    "pod",
                    "-n",
                    SYSTEM,
                    &pods[0],
                    "--wait=false",
                ]));
                killed = Some(pods[0].clone());
            }
        }
        std::thread::sleep(Duration::from_secs(3));
    };
    log(&format!("Succeeded after {:?}", started.elapsed()));
    let killed = killed.expect("a trial reported before the experiment ended");
    // The evicted attempt was lost, not finished: the trial ran again in a new pod, and
    // what it recorded is that pod's run (the checks on every trial below).
    let (evicted_trial, evicted_pod) = evicted.unwrap();
    let t = json(&["get", "nastrial", &evicted_trial, "-n", NAMESPACE]);
    log(&format!("evicted {evicted_trial}: {}", t["status"]));
    assert!(
        t["status"]["attempts"].as_u64() >= Some(2)
            && t["status"]["pod"].as_str() != Some(evicted_pod.as_str()),
        "{evicted_trial} was evicted ({evicted_pod}) but ran no other attempt: {}",
        t["status"]
    );
    let now = operator_pods();
    assert!(
        now.len() == 1 && now[0] != killed,
        "a new operator pod replaced {killed}: {now:?}"
    );

    // Every trial, once: six, indices 0..6, each with its history and final metrics.
    let status = &experiment["status"];
    let all = trials();
    let mut indices: Vec<u64> = all
        .iter()
        .map(|t| t["spec"]["index"].as_u64().expect("spec.index"))
        .collect();
    indices.sort();
    assert_eq!(
        indices,
        (0..6).collect::<Vec<u64>>(),
        "no trial lost or duplicated"
    );
    assert_eq!(status["trials"]["created"], 6, "{status}");
    assert_eq!(status["trials"]["failed"], 0, "{status}");
    let mut stopped = Vec::new();
    for t in &all {
        let name = t["metadata"]["name"].as_str().unwrap();
        let s = &t["status"];
        let history = s["history"].as_array().cloned().unwrap_or_default();
        assert!(!history.is_empty(), "{name} has no reports in status: {s}");
        match (s["phase"].as_str(), s["reason"].as_str()) {
            (Some("Succeeded"), _) => {
                assert_eq!(history.len(), 3, "{name}: one report per epoch: {s}");
                for metric in ["val_accuracy", "test_accuracy", "params"] {
                    assert!(
                        s["metrics"][metric].is_number(),
                        "{name}: final {metric} in status: {s}"
                    );
                }
            }
            (Some("Stopped"), Some("EarlyStopped")) => stopped.push(t.clone()),
            other => panic!("{name} ended {other:?}: {s}"),
        }
    }
    let best = &status["bestTrial"];
    let test_accuracy = best["metrics"]["test_accuracy"].as_f64().unwrap_or(0.0);
    log(&format!(
        "best {} ({}): test accuracy {test_accuracy}",
        best["name"], best["candidate"]
    ));
    assert!(test_accuracy >= 0.85, "best trial's test accuracy: {best}");

    // Median stopping ended a real trainer: the reply reached the process, which stopped
    // after fewer epochs and exited 0, so its pod is Completed. A stop decided between two
    // reports waits for the next one for the grace period plus the trainer's report
    // interval so far; a trainer slower than that (two trials sharing the node's cores) has
    // its pod deleted instead, and the trial still ends Stopped with what it reported.
    assert!(
        !stopped.is_empty(),
        "no trial was stopped early; trials: {:?}",
        all.iter().map(|t| &t["status"]).collect::<Vec<_>>()
    );
    let mut completed = 0;
    for t in &stopped {
        let name = t["metadata"]["name"].as_str().unwrap();
        let steps = t["status"]["history"].as_array().unwrap().len();
        assert!(steps < 3, "{name} was stopped but trained {steps} epochs");
        assert!(
            t["status"]["value"].is_number(),
            "{name}: a stopped trial keeps its last value: {}",
            t["status"]
        );
        let pod = t["status"]["pod"].as_str().expect("the trial's pod");
        let out = run(&mut kube(&[
            "get", "pod", "-n", NAMESPACE, pod, "-o", "json",
        ]));
        if !out.status.success() {
            // Deleted is the one failure allowed: anything else is kubectl's error.
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("NotFound"), "kubectl get pod {pod}: {err}");
            log(&format!(
                "{name} stopped after {steps} epoch(s); pod {pod} deleted after the grace period"
            ));
            continue;
        }
        let p: Value = serde_json::from_slice(&out.stdout).expect("kubectl prints JSON");
        let terminated = &p["status"]["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(p["status"]["phase"], "Succeeded", "{pod}: {}", p["status"]);
        assert_eq!(terminated["exitCode"], 0, "{pod}: {terminated}");
        completed += 1;
        log(&format!(
            "{name} stopped after {steps} epoch(s); pod {pod} Completed"
        ));
    }
    assert!(
        completed > 0,
        "no stopped trial's trainer heard the stop and exited by itself"
    );

    // The trainer's own progress, through the API server and the kubelet.
    let pod = all[0]["status"]["pod"].as_str().unwrap();
    let logs = ok(&mut kube(&["logs", "-n", NAMESPACE, pod]));
    assert!(logs.contains("\"epoch\""), "kubectl logs {pod}:\n{logs}");

    // Prometheus found the operator pod (the new one too) through the Service's endpoints.
    let series = prometheus::query(
        &prometheus,
        &format!("nasop_best_objective{{experiment=\"{EXPERIMENT}\"}}"),
    )
    .unwrap();
    assert!(
        series.iter().any(prometheus::finite),
        "nasop_best_objective for {EXPERIMENT}: {series:?}"
    );
    let up = prometheus::query(&prometheus, "up{job=\"servicemonitor\"} == 1").unwrap();
    assert!(!up.is_empty(), "Prometheus scrapes the operator pod");

    // Deleting the experiment removes its trials' pods.
    ok(&mut kube(&[
        "delete", "nasexp", EXPERIMENT, "-n", NAMESPACE,
    ]));
    let deleted = Instant::now();
    loop {
        let left = items(
            "pods",
            NAMESPACE,
            &format!("nasop.dev/experiment={EXPERIMENT}"),
        )
        .len();
        if left == 0 {
            break;
        }
        assert!(
            deleted.elapsed() < Duration::from_secs(120),
            "{left} trial pods left after deleting the experiment"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    log(&format!("all done after {:?}", started.elapsed()));

    a_missing_image_fails_the_trial_fast(&images);
    an_unmodified_script_reports_through_the_injected_wrapper(&images);
    jobset_trials_train_data_parallel_on_two_pods(&images);
    trainjob_trials_train_data_parallel_on_two_pods(&images);
    storage_continues_promotions_and_keeps_models(&images, &dir);
    a_bucket_continues_promotions_and_keeps_models(&images);

    drop(prometheus);
    ok(helm().args(["uninstall", "nasop", "-n", SYSTEM, "--wait"]));
    let _ = run(&mut kube(&[
        "delete",
        "namespace",
        NAMESPACE,
        SYSTEM,
        "--wait=false",
    ]));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Evicts a pod of the e2e namespace through the eviction API, as `kubectl drain` does.
/// `nasop ui --cluster`, as a user with the kubeconfig runs it, shows the running trial's
/// logs from the real node (pods/log through the API server) in a browser.
fn the_ui_shows_a_running_trials_log(index: u64) {
    log(&format!("nasop ui: trial {index}'s page and log"));
    let ui = browser::Ui::start(&["--cluster", "-n", NAMESPACE], &[]);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let b = browser::Browser::start().await;
            b.goto(&format!("{}/e/{NAMESPACE}/{EXPERIMENT}/{index}", ui.url))
                .await;
            b.wait_until(
                "the trainer's log on the trial page",
                "document.querySelector('#log').innerText.includes('nasop-trainer:')",
                Duration::from_secs(30),
            )
            .await;
            assert!(
                b.count("svg.cell g.edge").await == 6,
                "the trial's cell is drawn"
            );
            b.screenshot("e2e-trial", "light").await;
            b.close().await;
        });
}

fn evict(pod: &str) {
    let body = serde_json::json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": NAMESPACE},
    });
    let out = with_stdin(
        &mut kube(&[
            "create",
            "--raw",
            &format!("/api/v1/namespaces/{NAMESPACE}/pods/{pod}/eviction"),
            "-f",
            "-",
        ]),
        &body.to_string(),
    );
    assert!(
        out.status.success(),
        "evicting {pod}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A trial whose image does not exist fails within about a minute with the kubelet's
/// words and the fix, instead of holding its place for the pending timeout (900 s).
fn a_missing_image_fails_the_trial_fast(images: &str) {
    const NAME: &str = "missing-image";
    let example = std::fs::read_to_string(repo("examples/k8s/fashion-mnist-cpu.yaml")).unwrap();
    let manifest = example
        .replace(
            EXAMPLE_IMAGE,
            &format!("{images}/nasop-trainer:no-such-tag"),
        )
        .replace(&format!("name: {EXPERIMENT}"), &format!("name: {NAME}"))
        .replace("maxTrials: 6", "maxTrials: 1")
        .replace("maxFailedTrials: 1", "maxFailedTrials: 0");
    let out = with_stdin(&mut kube(&["apply", "-n", NAMESPACE, "-f", "-"]), &manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = Instant::now();
    let trial = format!("{NAME}-0");
    let status = loop {
        let out = run(&mut kube(&[
            "get", "nastrial", &trial, "-n", NAMESPACE, "-o", "json",
        ]));
        if out.status.success() {
            let t: Value = serde_json::from_slice(&out.stdout).unwrap();
            if t["status"]["phase"] == "Failed" {
                break t["status"].clone();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "{trial} with a missing image did not fail within 240 s: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    log(&format!(
        "{trial} failed after {:?}: {status}",
        started.elapsed()
    ));
    let reason = status["reason"].as_str().unwrap_or_default();
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        matches!(reason, "ErrImagePull" | "ImagePullBackOff"),
        "{trial}: {status}"
    );
    assert!(
        message.contains("no-such-tag") && message.contains("fix the image"),
        "{trial}: {status}"
    );
    ok(&mut kube(&["delete", "nasexp", NAME, "-n", NAMESPACE]));
}

/// examples/k8s/unmodified-script.yaml in a plain Python image: nothing of nasop is in it,
/// the init container copies the operator image's nasop in, and the script's printed epochs
/// are the trials' reports; the result is the last value printed.
fn an_unmodified_script_reports_through_the_injected_wrapper(images: &str) {
    const NAME: &str = "unmodified-script";
    let started = Instant::now();
    let example = std::fs::read_to_string(repo("examples/k8s/unmodified-script.yaml")).unwrap();
    let manifest = example
        .replace(
            "image: python:3.11-slim",
            &format!("image: {images}/python:3.11-slim"),
        )
        .replace("maxTrials: 12", "maxTrials: 3")
        .replace("trialEpochs: 5", "trialEpochs: 3");
    apply_and_await(NAME, &manifest, started, Duration::from_secs(600));
    let trials = items(
        "nastrials",
        NAMESPACE,
        &format!("nasop.dev/experiment={NAME}"),
    );
    assert_eq!(trials.len(), 3);
    for t in &trials {
        let status = &t["status"];
        assert_eq!(status["phase"], "Succeeded", "{t}");
        let history = status["history"].as_array().unwrap();
        let mut steps: Vec<u64> = history.iter().filter_map(|r| r["step"].as_u64()).collect();
        // The final report repeats the last step.
        steps.dedup();
        assert_eq!(steps, [1, 2, 3], "one report per printed epoch: {status}");
        // The result is the last value the script printed, read from its own log.
        let pod = status["pod"].as_str().expect("the trial names its pod");
        let log = ok(&mut kube(&["logs", "-n", NAMESPACE, pod, "-c", "trainer"]));
        let printed: f64 = log
            .lines()
            .filter(|l| l.starts_with("epoch="))
            .filter_map(|l| l.split("val_accuracy=").nth(1))
            .next_back()
            .unwrap_or_else(|| panic!("no printed epoch in {pod}'s log:\n{log}"))
            .trim()
            .parse()
            .unwrap();
        let result = status["metrics"]["val_accuracy"].as_f64();
        assert_eq!(result, Some(printed), "{status}\n{log}");
    }
    // The trial pod: the user's image and command, under the copied nasop.
    let pod = &items("pods", NAMESPACE, &format!("nasop.dev/experiment={NAME}"))[0];
    let command = pod["spec"]["containers"][0]["command"].to_string();
    assert!(
        command.contains("/nasop-wrap/nasop") && command.contains("train.py"),
        "{command}"
    );
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "nasop-wrap");
    log(&format!(
        "{NAME}: 3 wrapped trials after {:?}",
        started.elapsed()
    ));
    ok(&mut kube(&["delete", "nasexp", NAME, "-n", NAMESPACE]));
    ok(&mut kube(&["delete", "configmap", NAME, "-n", NAMESPACE]));
}

/// examples/k8s/fashion-mnist-storage.yaml on a PersistentVolume of the real node: a promoted
/// trial's first report is the epoch after its parent's last (it continued the parent's
/// checkpoint from the claim), and the trials that completed left their models there.
fn storage_continues_promotions_and_keeps_models(images: &str, dir: &Path) {
    const STORAGE_EXPERIMENT: &str = "fashion-mnist-storage";
    let started = Instant::now();
    let volume = dir.join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    // The trainer runs as user 65532; a hostPath volume ignores fsGroup.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&volume, std::fs::Permissions::from_mode(0o777)).unwrap();
    let pv = format!(
        r#"apiVersion: v1
kind: PersistentVolume
metadata: {{name: nasop-e2e-{id}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {{path: {path}, type: Directory}}
  claimRef: {{namespace: {NAMESPACE}, name: nasop-storage}}
"#,
        id = std::process::id(),
        path = volume.display()
    );
    let out = with_stdin(&mut kube(&["apply", "-f", "-"]), &pv);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (experiment, trials, promoted) = run_to_success(
        STORAGE_EXPERIMENT,
        &std::fs::read_to_string(repo("examples/k8s/fashion-mnist-storage.yaml"))
            .unwrap()
            .replace(EXAMPLE_IMAGE, &format!("{images}/nasop-trainer:0.1.0-cpu")),
        started,
    );
    // Every trial that completed its epochs left its model in the claim, named in status.
    let best = &experiment["status"]["bestTrial"];
    let artifact = best["artifact"]
        .as_str()
        .unwrap_or_else(|| panic!("{best}"));
    let index = best["index"].as_u64().unwrap();
    // Each run of the experiment has its own directory, by the object's UID.
    let run_dir = format!(
        "{NAMESPACE}/{STORAGE_EXPERIMENT}/{}",
        experiment["metadata"]["uid"].as_str().unwrap()
    );
    assert_eq!(
        artifact,
        format!("pvc://nasop-storage/{run_dir}/trials/{index}/artifact")
    );
    for t in trials
        .iter()
        .filter(|t| t["status"]["phase"] == "Succeeded")
    {
        let index = t["spec"]["index"].as_u64().unwrap();
        let model = volume.join(format!("{run_dir}/trials/{index}/artifact"));
        for file in ["model.safetensors", "model.json", "model.pt"] {
            assert!(
                model.join(file).is_file(),
                "{} has no {file}: {}",
                model.display(),
                t["status"]
            );
        }
        assert!(t["status"]["artifact"].is_string(), "{}", t["status"]);
    }
    log(&format!(
        "{STORAGE_EXPERIMENT}: {promoted} promotion(s) continued their parents; best {artifact}; {:?}",
        started.elapsed()
    ));
    ok(&mut kube(&[
        "delete",
        "nasexp",
        STORAGE_EXPERIMENT,
        "-n",
        NAMESPACE,
    ]));
    let _ = run(&mut kube(&[
        "delete",
        "pv",
        &format!("nasop-e2e-{}", std::process::id()),
        "--wait=false",
    ]));
}

/// examples/k8s/jobset-cpu.yaml: every trial a JobSet of two trainer pods on the real node
/// (the JobSet controller of the test plane, CoreDNS for rank 0's address), training one
/// model data-parallel: rank 0 alone reports, both ranks end with the same weights, and a
/// median stop reaches both pods, which exit by themselves.
fn jobset_trials_train_data_parallel_on_two_pods(images: &str) {
    trials_train_data_parallel_on_two_pods(images, "jobset-cpu", "jobset.sigs.k8s.io/job-index");
}

/// examples/k8s/trainjob-cpu.yaml: the same with every trial a Kubeflow TrainJob (the
/// Trainer controller of the test plane, on examples/k8s/trainjob-runtime.yaml): the ranks
/// meet through the runtime's PET_* variables; rank 0 is the `node` job's completion index 0.
fn trainjob_trials_train_data_parallel_on_two_pods(images: &str) {
    ok(kube(&["apply", "--server-side", "-f"]).arg(repo("examples/k8s/trainjob-runtime.yaml")));
    trials_train_data_parallel_on_two_pods(
        images,
        "trainjob-cpu",
        "batch.kubernetes.io/job-completion-index",
    );
}

/// examples/k8s/`experiment`.yaml, run to success; `rank_label` is the pod label
/// that is "0" on rank 0 alone.
fn trials_train_data_parallel_on_two_pods(images: &str, experiment: &str, rank_label: &str) {
    let started = Instant::now();
    let manifest = std::fs::read_to_string(repo(&format!("examples/k8s/{experiment}.yaml")))
        .unwrap()
        .replace(EXAMPLE_IMAGE, &format!("{images}/nasop-trainer:0.1.0-cpu"));
    let out = with_stdin(&mut kube(&["apply", "-n", NAMESPACE, "-f", "-"]), &manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each trial's pods, with their logs, kept while they exist: a stopped trial's JobSet
    // is deleted once rank 0 has ended.
    let mut seen: std::collections::BTreeMap<String, (String, String, Value)> = Default::default();
    let mut last = String::new();
    let finished = loop {
        assert!(
            started.elapsed() < TIMEOUT,
            "{experiment} did not end within {TIMEOUT:?}"
        );
        for p in items(
            "pods",
            NAMESPACE,
            &format!("nasop.dev/experiment={experiment}"),
        ) {
            let name = p["metadata"]["name"].as_str().unwrap().to_string();
            let state = &p["status"]["containerStatuses"][0]["state"];
            if state["terminated"].is_object() && !seen.contains_key(&name) {
                let logs = run(&mut kube(&["logs", "-n", NAMESPACE, &name]));
                // A stopped trial's object is deleted once rank 0 has ended: its pods' logs
                // may be gone by now (kubectl fails); such a pod is not checked.
                if !logs.status.success() || logs.stdout.is_empty() {
                    continue;
                }
                let trial = p["metadata"]["labels"]["nasop.dev/trial"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                seen.insert(
                    name,
                    (
                        trial,
                        String::from_utf8_lossy(&logs.stdout).into_owned(),
                        p.clone(),
                    ),
                );
            }
        }
        let exp = json(&["get", "nasexp", experiment, "-n", NAMESPACE]);
        let status = &exp["status"];
        let line = format!(
            "{experiment}: phase {} progress {}",
            status["phase"], status["progress"]
        );
        if line != last {
            log(&line);
            last = line;
        }
        match status["phase"].as_str() {
            Some("Succeeded") => break exp,
            Some("Failed") => panic!("{experiment} failed: {status}"),
            _ => {}
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    assert_eq!(finished["status"]["trials"]["failed"], 0);
    let trials = items(
        "nastrials",
        NAMESPACE,
        &format!("nasop.dev/experiment={experiment}"),
    );
    let digest = |logs: &str| {
        logs.lines()
            .find_map(|l| l.split_once("weights digest ").map(|(_, d)| d.to_string()))
    };
    let (mut stopped, mut checked) = (0, 0);
    for t in &trials {
        let name = t["metadata"]["name"].as_str().unwrap();
        let s = &t["status"];
        let history = s["history"].as_array().cloned().unwrap_or_default();
        match (s["phase"].as_str(), s["reason"].as_str()) {
            (Some("Succeeded"), _) => assert_eq!(history.len(), 3, "{name}: {s}"),
            (Some("Stopped"), Some("EarlyStopped")) => {
                assert!(history.len() < 3, "{name} was stopped but trained on: {s}");
                stopped += 1;
            }
            other => panic!("{name} ended {other:?}: {s}"),
        }
        // Both ranks of the trial's last attempt, when the poll saw them end.
        let pods: Vec<_> = seen
            .values()
            .filter(|(trial, _, _)| trial == name)
            .collect();
        if pods.len() != 2 {
            log(&format!("{name}: {} of its pods seen ended", pods.len()));
            continue;
        }
        let mut digests = Vec::new();
        for (_, logs, p) in &pods {
            let pod = p["metadata"]["name"].as_str().unwrap();
            let terminated = &p["status"]["containerStatuses"][0]["state"]["terminated"];
            assert_eq!(terminated["exitCode"], 0, "{pod}: {terminated}\n{logs}");
            let rank0 = p["metadata"]["labels"][rank_label] == "0";
            assert_eq!(
                logs.contains("\"step\""),
                rank0,
                "{pod}: rank 0 alone prints reports:\n{logs}"
            );
            digests.push(digest(logs).unwrap_or_else(|| panic!("{pod}: no digest:\n{logs}")));
        }
        assert_eq!(digests[0], digests[1], "{name}: the ranks' models differ");
        checked += 1;
    }
    assert!(
        checked >= 1,
        "no trial's two pods were seen ending: {seen:?}"
    );
    assert!(stopped >= 1, "no trial was stopped early: {trials:?}");
    log(&format!(
        "{experiment}: {} trials on two pods each ({checked} with both ranks checked, {stopped} stopped early); {:?}",
        trials.len(),
        started.elapsed()
    ));
    ok(&mut kube(&[
        "delete", "nasexp", experiment, "-n", NAMESPACE,
    ]));
}

/// Applies `manifest` and waits until experiment `name` succeeds, logging each change of
/// its status; returns its object. Panics when it fails, or `limit` after `started`.
fn apply_and_await(name: &str, manifest: &str, started: Instant, limit: Duration) -> Value {
    let out = with_stdin(&mut kube(&["apply", "-n", NAMESPACE, "-f", "-"]), manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut last = String::new();
    loop {
        assert!(
            started.elapsed() < limit,
            "{name} did not end within {limit:?}: {last}"
        );
        let exp = json(&["get", "nasexp", name, "-n", NAMESPACE]);
        let status = &exp["status"];
        let line = format!(
            "{name}: phase {} progress {} conditions {}",
            status["phase"], status["progress"], status["conditions"]
        );
        if line != last {
            log(&line);
            last = line;
        }
        match status["phase"].as_str() {
            Some("Succeeded") => return exp,
            Some("Failed") => panic!("{name} failed: {status}"),
            _ => {}
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// Applies `manifest` (an experiment `name` with storage) and waits for it to succeed; every
/// promoted trial's first report must be the epoch after its parent's last (it continued the
/// parent's checkpoint from the storage). Returns the experiment, its trials and how many
/// were promotions (at least one).
fn run_to_success(name: &str, manifest: &str, started: Instant) -> (Value, Vec<Value>, usize) {
    let experiment = apply_and_await(name, manifest, started, TIMEOUT);
    let trials = items(
        "nastrials",
        NAMESPACE,
        &format!("nasop.dev/experiment={name}"),
    );
    let by_index = |i: u64| {
        trials
            .iter()
            .find(|t| t["spec"]["index"] == i)
            .unwrap_or_else(|| panic!("no trial {i}"))
    };
    let mut promoted = 0;
    for t in trials.iter().filter(|t| t["spec"]["resumeFrom"].is_u64()) {
        let parent = by_index(t["spec"]["resumeFrom"].as_u64().unwrap());
        let parent_last = parent["status"]["history"]
            .as_array()
            .and_then(|h| h.last())
            .map(|r| r["step"].as_u64().unwrap())
            .expect("the parent reported");
        let first = t["status"]["history"][0]["step"].as_u64();
        assert_eq!(
            first,
            Some(parent_last + 1),
            "{} should continue {}'s checkpoint: {}",
            t["metadata"]["name"],
            parent["metadata"]["name"],
            t["status"]
        );
        promoted += 1;
    }
    assert!(promoted >= 1, "no promotion: {trials:?}");
    (experiment, trials, promoted)
}

/// The node's address, where pods reach services of the host (tools/testenv/node.sh).
const NODE_IP: &str = "10.244.0.1";

/// examples/k8s/s3-storage.yaml against moto's S3 server on the host (scripts/moto.sh):
/// trial pods on the real node read and write their checkpoints in the bucket through the
/// trainer's object_store client, promotions continue them, and the models are uploaded.
fn a_bucket_continues_promotions_and_keeps_models(images: &str) {
    const BUCKET_EXPERIMENT: &str = "s3-storage";
    let started = Instant::now();
    let out = Command::new(repo("scripts/moto.sh")).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let port = std::net::TcpListener::bind((NODE_IP, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://{NODE_IP}:{port}");
    // Stopped when the test ends, whichever way.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _moto = Stop(
        Command::new(python)
            .args(["-m", "moto.server", "-H", NODE_IP, "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    while ureq::get(&endpoint).call().is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "moto did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Public-read, so that the test reads the objects back without signing.
    ureq::put(&format!("{endpoint}/nasop-models"))
        .header("x-amz-acl", "public-read")
        .send_empty()
        .unwrap();
    ok(&mut kube(&[
        "create",
        "secret",
        "generic",
        "nasop-s3",
        "-n",
        NAMESPACE,
        "--from-literal=AWS_ACCESS_KEY_ID=e2e",
        "--from-literal=AWS_SECRET_ACCESS_KEY=e2e",
    ]));
    let manifest = std::fs::read_to_string(repo("examples/k8s/s3-storage.yaml"))
        .unwrap()
        .replace(EXAMPLE_IMAGE, &format!("{images}/nasop-trainer:0.1.0-cpu"))
        .replace("http://s3.storage.svc:9000", &endpoint);
    let (experiment, trials, promoted) = run_to_success(BUCKET_EXPERIMENT, &manifest, started);
    let best = &experiment["status"]["bestTrial"];
    let index = best["index"].as_u64().unwrap();
    let run_dir = format!(
        "{NAMESPACE}/{BUCKET_EXPERIMENT}/{}",
        experiment["metadata"]["uid"].as_str().unwrap()
    );
    assert_eq!(
        best["artifact"],
        format!("s3://nasop-models/{run_dir}/trials/{index}/artifact"),
        "{best}"
    );
    for t in trials
        .iter()
        .filter(|t| t["status"]["phase"] == "Succeeded")
    {
        let index = t["spec"]["index"].as_u64().unwrap();
        for file in ["model.safetensors", "model.json", "model.pt"] {
            let key = format!("{run_dir}/trials/{index}/artifact/{file}");
            let size = ureq::get(&format!("{endpoint}/nasop-models/{key}"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_vec().ok())
                .map_or(0, |b| b.len());
            assert!(size > 100, "{key}: {size} bytes in the bucket");
        }
    }
    log(&format!(
        "{BUCKET_EXPERIMENT}: {promoted} promotion(s) continued their parents from the bucket; {:?}",
        started.elapsed()
    ));
    ok(&mut kube(&[
        "delete",
        "nasexp",
        BUCKET_EXPERIMENT,
        "-n",
        NAMESPACE,
    ]));
}
