//! The chart on its own: lint, the values schema, and its renderings through a server-side
//! dry run.

use super::*;

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
    wait_established(&["servicemonitors.monitoring.coreos.com"]);
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
            // Who may run what: on by default, for every namespace.
            assert_eq!(of_kind(&docs, "ValidatingAdmissionPolicy").len(), 1);
            let binding = of_kind(&docs, "ValidatingAdmissionPolicyBinding")[0];
            assert!(binding["spec"]["matchResources"].is_null());
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
            let binding = of_kind(&docs, "ValidatingAdmissionPolicyBinding")[0];
            assert_eq!(
                binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                watched.as_str()
            );
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
