//! The committed CRD YAML must be what `nasop crds` generates from the types today.

#[test]
fn committed_crds_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for (name, generated) in nasop::api::crd_files() {
        let committed = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        assert!(
            committed == generated,
            "crds/{name} is out of date with src/api; run `cargo run -- crds` (or `make crds`) and commit the result"
        );
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = nasop::api::crd_files()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    expected.sort();
    assert_eq!(
        on_disk, expected,
        "crds/ holds a file the types no longer generate"
    );
}
