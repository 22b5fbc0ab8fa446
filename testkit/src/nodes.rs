//! Simulated GPU nodes and the trial template whose pods land on them.

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use std::time::{Duration, Instant};

/// The trial template of the benchmarks' and the operator tests' experiments: one GPU on a
/// tainted GPU node, as tools/testenv's simulated nodes offer (the image is never pulled).
pub const GPU_TRIAL_TEMPLATE: &str = r#"  trialTemplate:
    spec:
      tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
      containers:
        - name: trainer
          image: ghcr.io/nasop/nasop-trainer:dev
          resources: {limits: {nvidia.com/gpu: "1"}}
"#;

/// Adds `n` KWOK nodes of 8 GPUs each (`bench-node-<i>`, labelled `nasop.dev/bench=true`,
/// tainted for GPU pods only) and waits until they are Ready.
pub async fn add_gpu_nodes(client: &Client, n: u32) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    for i in 0..n {
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": format!("bench-node-{i}"),
                "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": {"type": "kwok", "nasop.dev/bench": "true"}},
            "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
            "status": {
                "allocatable": {"cpu": "128", "memory": "1Ti", "pods": "250", "nvidia.com/gpu": "8"},
                "capacity": {"cpu": "128", "memory": "1Ti", "pods": "250", "nvidia.com/gpu": "8"}}
        }))?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Ready (KWOK's node stage), so the scheduler uses them.
    let started = Instant::now();
    loop {
        let ready = nodes
            .list(&ListParams::default().labels("nasop.dev/bench=true"))
            .await?
            .items
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count() as u32;
        if ready >= n {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("only {ready} of {n} bench nodes became Ready");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
