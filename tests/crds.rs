//! The committed CRD YAML, and the Helm chart's CRD templates, must be what `nasop crds`
//! generates from the types today.

fn check(dir: &str, generated: Vec<(String, String)>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    for (name, yaml) in &generated {
        let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(
            &committed == yaml,
            "{}/{name} is out of date with src/api; run `cargo run -- crds` (or `make crds`) and commit the result",
            dir.display()
        );
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = generated.into_iter().map(|(n, _)| n).collect();
    expected.sort();
    assert_eq!(
        on_disk,
        expected,
        "{} holds a file the types no longer generate",
        dir.display()
    );
}

#[test]
fn committed_crds_match_the_types() {
    check("crds", nasop::api::crd_files());
}

#[test]
fn chart_crds_match_the_types() {
    check("charts/nasop/templates/crds", nasop::api::chart_crd_files());
}

#[test]
fn the_python_clients_crd_matches_the_types() {
    check("python/nasop/_crd", nasop::api::python_crd_files());
}

#[test]
fn chart_crds_are_the_plain_crds_behind_the_install_switch() {
    for ((name, plain), (chart_name, chart)) in nasop::api::crd_files()
        .into_iter()
        .zip(nasop::api::chart_crd_files())
    {
        assert_eq!(name, chart_name);
        assert!(chart.contains("{{- if .Values.crds.install }}\n"));
        assert!(chart.contains("helm.sh/resource-policy: keep"));
        // Same spec: everything after the metadata block is identical.
        let spec = |y: &str| y[y.find("\nspec:").unwrap()..].replace("{{- end }}\n", "");
        assert_eq!(spec(&plain), spec(&chart), "{name}");
    }
}

/// kubectl and Helm read YAML 1.1, where a bare key such as `n`, `y`, `on` or `no` is a
/// boolean: the API server then refuses the CRD. serde_yaml writes YAML 1.2 and leaves such
/// keys bare, so no field may be named like that.
#[test]
fn no_key_of_the_crds_reads_as_a_boolean_in_yaml_1_1() {
    const BOOLEANS: [&str; 22] = [
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
    ];
    for (name, yaml) in nasop::api::crd_files() {
        for (number, line) in yaml.lines().enumerate() {
            let Some((key, _)) = line.trim_start().trim_start_matches("- ").split_once(':') else {
                continue;
            };
            assert!(
                !BOOLEANS.contains(&key),
                "{name}:{}: the key {key:?} is a boolean to kubectl (YAML 1.1); rename the field",
                number + 1
            );
        }
    }
}
