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
tls: {secretName: nasop-tls}
service: {type: ClusterIP, port: 9443}
resources: {requests: {cpu: 200m, memory: 256Mi}, limits: {cpu: "1", memory: 1Gi}}
serviceAccount: {create: false, name: platform-nasop}
podAnnotations: {team: ml-platform}
podLabels: {cost-center: research}
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: dedicated, operator: Equal, value: control, effect: NoSchedule}]
priorityClassName: system-cluster-critical
networkPolicy:
  enabled: true
  metricsFrom: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: GRAFANA}}, podSelector: {matchLabels: {app.kubernetes.io/name: prometheus}}}]
  extraIngress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}}], ports: [{port: 9443, protocol: TCP}]}]
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
        ("networkPolicy.enabled=yes", "/networkPolicy/enabled"),
        // Gone with the HMAC report tokens: an upgrade with old values says so.
        ("reportKey.existingSecret=my-key", "'reportKey' not allowed"),
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
            assert!(of_kind(&docs, "NetworkPolicy").is_empty());
            assert!(args.contains(
                &format!("--report-url=http://nasop.{release_ns}.svc:8080/v1/report").as_str()
            ));
            assert_eq!(container["image"], "ghcr.io/nasop/nasop:0.1.0");
        } else {
            assert!(of_kind(&docs, "CustomResourceDefinition").is_empty());
            // TokenReview is cluster-scoped: the one cluster-wide right of a release that
            // watches one namespace.
            let cluster_roles = of_kind(&docs, "ClusterRole");
            assert_eq!(cluster_roles.len(), 1, "{cluster_roles:?}");
            assert_eq!(cluster_roles[0]["rules"], token_review_rules());
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
            let policy = of_kind(&docs, "NetworkPolicy")[0];
            let rules = policy["spec"]["ingress"].as_array().unwrap();
            assert_eq!(
                rules.len(),
                3,
                "trials, metricsFrom, extraIngress: {rules:?}"
            );
            assert_eq!(
                rules[0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                watched.as_str()
            );
            assert_eq!(
                rules[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                grafana.as_str()
            );
            assert_eq!(rules[2]["from"][0]["ipBlock"]["cidr"], "10.0.0.0/8");
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

/// The chart rendered in namespace nasop-system with these extra `helm template` arguments.
fn render(args: &[&str]) -> Vec<Value> {
    documents(&ok(helm()
        .args(["template", RELEASE])
        .arg(chart())
        .args(["--namespace", "nasop-system"])
        .args(args)))
}

/// Whether `role`'s rules grant `verb` on `resource` of API group `group`.
fn grants(role: &Value, verb: &str, group: &str, resource: &str) -> bool {
    role["rules"].as_array().into_iter().flatten().any(|rule| {
        let has = |field: &str, want: &str| {
            rule[field]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x.as_str() == Some(want)))
        };
        has("verbs", verb) && has("apiGroups", group) && has("resources", resource)
    })
}

fn token_review_rules() -> Value {
    serde_json::json!([{
        "apiGroups": ["authentication.k8s.io"],
        "resources": ["tokenreviews"],
        "verbs": ["create"],
    }])
}

/// Trial pods report with a projected ServiceAccount token (audience nasop.dev) that the
/// operator checks with a TokenReview: the chart makes no report key, and the operator's
/// ServiceAccount may create TokenReviews through a ClusterRole (TokenReview is
/// cluster-scoped, so a Role could not grant it), whether the release watches every
/// namespace or one.
#[test]
fn the_chart_makes_no_report_key_and_lets_the_operator_review_tokens() {
    for args in [vec![], vec!["--set", "watchNamespace=ml-team"]] {
        let docs = render(&args);
        assert!(
            of_kind(&docs, "Secret").is_empty(),
            "{args:?}: the chart renders a Secret"
        );
        let deployment = of_kind(&docs, "Deployment")[0];
        assert!(
            !deployment.to_string().contains("report-key"),
            "{args:?}: the Deployment still has a report key: {deployment}"
        );
        let account = &deployment["spec"]["template"]["spec"]["serviceAccountName"];
        let bound_to_operator = |binding: &Value, role: &Value| {
            binding["roleRef"]["kind"] == role["kind"]
                && binding["roleRef"]["name"] == role["metadata"]["name"]
                && binding["subjects"].as_array().unwrap().iter().any(|s| {
                    s["kind"] == "ServiceAccount"
                        && s["name"] == *account
                        && s["namespace"] == "nasop-system"
                })
        };
        let reviewers: Vec<&Value> = of_kind(&docs, "ClusterRole")
            .into_iter()
            .filter(|r| grants(r, "create", "authentication.k8s.io", "tokenreviews"))
            .collect();
        assert_eq!(reviewers.len(), 1, "{args:?}: {reviewers:?}");
        assert!(
            of_kind(&docs, "ClusterRoleBinding")
                .into_iter()
                .any(|b| bound_to_operator(b, reviewers[0])),
            "{args:?}: no ClusterRoleBinding gives {} to the operator's ServiceAccount",
            reviewers[0]["metadata"]["name"]
        );
        // The operator reads the pods of its trials where it runs them.
        let runs_pods = of_kind(&docs, "ClusterRole")
            .into_iter()
            .chain(of_kind(&docs, "Role"))
            .find(|r| {
                ["get", "list", "watch"]
                    .iter()
                    .all(|v| grants(r, v, "", "pods"))
            })
            .expect("a role that reads pods");
        let bindings = [
            of_kind(&docs, "ClusterRoleBinding"),
            of_kind(&docs, "RoleBinding"),
        ]
        .concat();
        assert!(
            bindings
                .into_iter()
                .any(|b| bound_to_operator(b, runs_pods)),
            "{args:?}: the role that reads pods is not the operator's"
        );
    }
}

/// networkPolicy.enabled: one NetworkPolicy on the operator's pods admits, on the report
/// port only, trial pods (label nasop.dev/trial, in any namespace or in the watched one) and
/// metrics scrapers (any pod of the release namespace unless metricsFrom names others),
/// then extraIngress as written. Off by default. The test control plane has no network
/// plugin that enforces NetworkPolicy: this checks what the policy says, not what a CNI does.
#[test]
fn the_network_policy_admits_only_trial_pods_and_scrapers_on_the_report_port() {
    assert!(
        of_kind(&render(&[]), "NetworkPolicy").is_empty(),
        "a NetworkPolicy is rendered by default"
    );
    let trial_pods = serde_json::json!({
        "matchExpressions": [{"key": "nasop.dev/trial", "operator": "Exists"}]
    });
    for watched in ["", "ml-team"] {
        let namespace = format!("watchNamespace={watched}");
        let docs = render(&["--set", "networkPolicy.enabled=true", "--set", &namespace]);
        let policies = of_kind(&docs, "NetworkPolicy");
        assert_eq!(policies.len(), 1, "{policies:?}");
        let (policy, deployment) = (policies[0], of_kind(&docs, "Deployment")[0]);
        assert_eq!(policy["metadata"]["namespace"], "nasop-system");
        let spec = &policy["spec"];
        // The operator's pods, chosen as the Deployment chooses them.
        let selected = spec["podSelector"]["matchLabels"].as_object().unwrap();
        assert_eq!(
            spec["podSelector"]["matchLabels"],
            deployment["spec"]["selector"]["matchLabels"]
        );
        assert!(spec["podSelector"]["matchExpressions"].is_null());
        let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
        for (key, value) in selected {
            assert_eq!(&pod_labels[key], value, "the operator's pods lack {key}");
        }
        assert_eq!(spec["policyTypes"], serde_json::json!(["Ingress"]));
        // The report port: the container port the Service sends reports to.
        let port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "http")
            .expect("the operator's http port")["containerPort"]
            .clone();
        assert_eq!(port, 8080);
        let rules = spec["ingress"].as_array().unwrap();
        assert_eq!(rules.len(), 2, "trials and metrics only: {rules:?}");
        for rule in rules {
            // A rule without peers would admit every source.
            assert!(
                rule["from"].as_array().is_some_and(|f| !f.is_empty()),
                "a rule admits every source: {rule}"
            );
            assert_eq!(
                rule["ports"],
                serde_json::json!([{"port": port, "protocol": "TCP"}]),
                "{rule}"
            );
        }
        let namespaces = if watched.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::json!({"matchLabels": {"kubernetes.io/metadata.name": watched}})
        };
        assert_eq!(
            rules[0]["from"],
            serde_json::json!([{"podSelector": trial_pods, "namespaceSelector": namespaces}]),
            "watchNamespace={watched}"
        );
        assert_eq!(rules[1]["from"], serde_json::json!([{"podSelector": {}}]));
    }

    let docs = render(&[
        "--set",
        "networkPolicy.enabled=true",
        "--set-json",
        r#"networkPolicy.metricsFrom=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]"#,
        "--set-json",
        r#"networkPolicy.extraIngress=[{"from":[{"ipBlock":{"cidr":"10.0.0.0/8"}}],"ports":[{"port":8080}]}]"#,
    ]);
    let policies = of_kind(&docs, "NetworkPolicy");
    let rules = &policies[0]["spec"]["ingress"];
    assert_eq!(
        rules[1]["from"],
        serde_json::json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}])
    );
    assert_eq!(
        rules[2],
        serde_json::json!({"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 8080}]})
    );
    assert!(rules[3].is_null(), "{rules}");
}
