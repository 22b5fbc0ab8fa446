//! Installing nasop the way users do, on the test control plane (tools/testenv): the Helm
//! chart (lint, schema, rendered manifests through a server-side dry run, a real install
//! whose ServiceAccount runs an example experiment with nothing more than the chart's RBAC),
//! the Grafana dashboard (every panel's PromQL answered by a Prometheus scraping that
//! operator), and the examples (each one accepted by the CRDs and the operator's checks).

#[allow(dead_code)]
#[path = "../operator/harness.rs"]
mod harness;

mod examples;
mod installed;
mod prometheus;
mod render;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("install")
        .join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
