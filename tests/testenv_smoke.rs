//! The test control plane (tools/testenv) does what the operator's tests rely on: it
//! enforces our CRDs' schemas, schedules GPU pods onto KWOK's GPU nodes, and completes
//! pods with a termination message. `make test` starts it and sets KUBECONFIG.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    let kubeconfig = std::env::var("KUBECONFIG").unwrap_or_default();
    assert!(
        std::path::Path::new(&kubeconfig).is_file(),
        "KUBECONFIG does not point at the test control plane: run `make test`, or `eval $(make testenv-up | tail -1)` first"
    );
    let mut cmd = Command::new("kubectl");
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl runs");
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn ok(args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(args, stdin);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `jsonpath` of an object until it equals `want`, or fails after `timeout`.
fn wait_for(
    kind_name: &str,
    namespace: &str,
    jsonpath: &str,
    want: &str,
    timeout: Duration,
) -> String {
    let started = Instant::now();
    loop {
        let got = ok(
            &[
                "get",
                kind_name,
                "-n",
                namespace,
                "-o",
                &format!("jsonpath={jsonpath}"),
            ],
            None,
        );
        if got == want {
            return got;
        }
        assert!(
            started.elapsed() < timeout,
            "{kind_name} {jsonpath} is {got:?}, waited {timeout:?} for {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Namespace(String);

impl Namespace {
    fn new(name: &str) -> Namespace {
        let ns = format!("{name}-{}", std::process::id());
        ok(&["create", "namespace", &ns], None);
        Namespace(ns)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.0, "--wait=false"], None);
    }
}

#[test]
fn crds_install_and_the_schema_is_enforced() {
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");
    ok(&["apply", "--server-side", "-f", crds], None);
    // Polled: `kubectl wait --for=condition` fails at once while no condition is written.
    for crd in ["crd/nasexperiments.nasop.dev", "crd/nastrials.nasop.dev"] {
        wait_for(
            crd,
            "default",
            r#"{.status.conditions[?(@.type=="Established")].status}"#,
            "True",
            Duration::from_secs(30),
        );
    }
    let ns = Namespace::new("smoke-crd");
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/nb201-evolution.yaml"
    ))
    .unwrap();
    ok(&["apply", "-n", &ns.0, "-f", "-"], Some(&manifest));
    // Out of the schema's bounds: rejected by the API server, naming the field.
    let bad = manifest
        .replace("name: nb201-evolution", "name: bad")
        .replace("population: 20", "population: 1");
    let out = kubectl(&["apply", "-n", &ns.0, "-f", "-"], Some(&bad));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.strategy.settings.population")
            && err.contains("greater than or equal to 2"),
        "{err}"
    );
    // CEL: the strategy is immutable.
    let changed = manifest.replace("seed: 1", "seed: 2");
    let out = kubectl(&["apply", "-n", &ns.0, "-f", "-"], Some(&changed));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("strategy is immutable"), "{err}");
}

const GPU_POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: NAME
  annotations:
    EXIT_CODE: "CODE"
    TERMINATION_MESSAGE: '{"step":3,"metrics":{"val_accuracy":0.91}}'
spec:
  restartPolicy: Never
  tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
  containers:
    - name: trainer
      image: ghcr.io/nasop/nasop-trainer:dev
      resources: {limits: {nvidia.com/gpu: "GPUS"}}
"#;

fn gpu_pod(name: &str, code: &str, gpus: &str) -> String {
    // The fake trainer's annotations, which tools/testenv/stages.yaml ends a pod on.
    GPU_POD
        .replace("TERMINATION_MESSAGE", nasop_testkit::TERMINATION_MESSAGE)
        .replace("EXIT_CODE", nasop_testkit::EXIT_CODE)
        .replace("NAME", name)
        .replace("CODE", code)
        .replace("GPUS", gpus)
}

#[test]
fn gpu_pods_are_scheduled_onto_gpu_nodes_and_completed_by_kwok() {
    let ns = Namespace::new("smoke-gpu");
    ok(
        &["apply", "-n", &ns.0, "-f", "-"],
        Some(&gpu_pod("trainer", "0", "1")),
    );
    wait_for(
        "pod/trainer",
        &ns.0,
        "{.status.phase}",
        "Succeeded",
        Duration::from_secs(30),
    );
    let node = ok(
        &[
            "get",
            "pod/trainer",
            "-n",
            &ns.0,
            "-o",
            "jsonpath={.spec.nodeName}",
        ],
        None,
    );
    assert!(node.starts_with("gpu-node-"), "scheduled onto {node:?}");
    let gpus = ok(
        &[
            "get",
            "node",
            &node,
            "-o",
            "jsonpath={.status.allocatable.nvidia\\.com/gpu}",
        ],
        None,
    );
    assert_eq!(gpus, "4");
    let message = ok(
        &[
            "get",
            "pod/trainer",
            "-n",
            &ns.0,
            "-o",
            "jsonpath={.status.containerStatuses[0].state.terminated.message}",
        ],
        None,
    );
    assert_eq!(message, r#"{"step":3,"metrics":{"val_accuracy":0.91}}"#);
    // A failing trainer.
    ok(
        &["apply", "-n", &ns.0, "-f", "-"],
        Some(&gpu_pod("failing", "2", "1")),
    );
    wait_for(
        "pod/failing",
        &ns.0,
        "{.status.phase}",
        "Failed",
        Duration::from_secs(30),
    );
    wait_for(
        "pod/failing",
        &ns.0,
        "{.status.containerStatuses[0].state.terminated.exitCode}",
        "2",
        Duration::from_secs(5),
    );
}

#[test]
fn a_pod_asking_for_more_gpus_than_any_node_has_stays_pending() {
    let ns = Namespace::new("smoke-big");
    ok(
        &["apply", "-n", &ns.0, "-f", "-"],
        Some(&gpu_pod("too-big", "0", "8")),
    );
    let started = Instant::now();
    loop {
        let reason = ok(
            &[
                "get",
                "pod/too-big",
                "-n",
                &ns.0,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].reason}",
            ],
            None,
        );
        if reason == "Unschedulable" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not marked unschedulable: {reason:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        ok(
            &[
                "get",
                "pod/too-big",
                "-n",
                &ns.0,
                "-o",
                "jsonpath={.status.phase}"
            ],
            None
        ),
        "Pending"
    );
    assert_eq!(
        ok(
            &[
                "get",
                "pod/too-big",
                "-n",
                &ns.0,
                "-o",
                "jsonpath={.spec.nodeName}"
            ],
            None
        ),
        ""
    );
}
