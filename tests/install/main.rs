//! Installing nasop the way users do, on the test control plane (tools/testenv): the Helm
//! chart (lint, schema, rendered manifests through a server-side dry run, a real install
//! whose ServiceAccount runs an example experiment with nothing more than the chart's RBAC),
//! the Grafana dashboard (every panel's PromQL answered by a Prometheus scraping that
//! operator), and the examples (each one accepted by the CRDs and the operator's checks).

#[allow(dead_code)]
#[path = "../operator/harness.rs"]
mod harness;

#[allow(dead_code)]
#[path = "../support/cli.rs"]
mod cli;
mod examples;
mod installed;
mod prometheus;
mod render;

use cli::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const RELEASE: &str = "nasop";

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
