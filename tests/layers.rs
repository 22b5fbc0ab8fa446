//! The layers ARCHITECTURE.md draws, checked: the engine crate stays pure, the cluster
//! benchmarks and the test kit stay out of the nasop binary, and the operator's modules
//! import one another without a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The packages `package` depends on to build (normal dependencies, every feature it uses).
fn dependencies(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(ROOT)
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_engine_depends_on_no_kube_runtime_or_http() {
    let deps = dependencies("nasop-engine");
    for impure in [
        "kube",
        "kube-client",
        "k8s-openapi",
        "tokio",
        "axum",
        "hyper",
        "reqwest",
        "tch",
    ] {
        assert!(
            !deps.contains(impure),
            "nasop-engine depends on {impure}: the engine must stay a pure function (ARCHITECTURE.md, \"Layers\"); its dependencies: {deps:?}"
        );
    }
    assert!(deps.contains("nasop-core"));
}

#[test]
fn the_nasop_binary_carries_no_benchmark_or_test_kit() {
    let deps = dependencies("nasop");
    for kept_out in ["nasop-bench", "nasop-testkit", "nasop-trainer"] {
        assert!(
            !deps.contains(kept_out),
            "nasop depends on {kept_out}, which the operator image must not carry"
        );
    }
}

/// The module path of a file under src/ (`src/operator/trial/mod.rs` is `operator::trial`),
/// or None for a test module.
fn module_of(file: &Path, src: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    match parts.last().map(String::as_str) {
        Some("tests") => None,
        Some("mod") => {
            parts.pop();
            Some(parts)
        }
        _ => Some(parts),
    }
}

/// Every .rs file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The modules of `modules` that the code of module `at` names: through `super::`,
/// `crate::operator::` or a child module, each path resolved to the deepest module it
/// names (an item's module, not the item).
fn imports(code: &str, at: &[String], modules: &BTreeSet<Vec<String>>) -> BTreeSet<Vec<String>> {
    let mut found = BTreeSet::new();
    let mut resolve = |base: Vec<String>, rest: &str| {
        let mut target = base;
        for seg in rest.split("::").filter(|s| !s.is_empty()) {
            let seg: String = seg
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let mut deeper = target.clone();
            deeper.push(seg);
            if modules.contains(&deeper) {
                target = deeper;
            } else {
                break;
            }
        }
        if target.as_slice() != at && modules.contains(&target) {
            found.insert(target);
        }
    };
    // Paths, with `{a, b::c}` groups expanded one level.
    let tokens: Vec<&str> = code
        .split(|c: char| c.is_whitespace() || c == ';' || c == '(' || c == ')' || c == '&')
        .filter(|t| !t.is_empty())
        .collect();
    let text = tokens.join(" ");
    let children: BTreeSet<String> = modules
        .iter()
        .filter(|m| m.len() == at.len() + 1 && m.starts_with(at))
        .map(|m| m.last().unwrap().clone())
        .collect();
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < text.len() {
        let rest = &text[i..];
        let start_ok = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':');
        let (base, skip) = if !start_ok {
            (None, 1)
        } else if rest.starts_with("crate::operator::") {
            (
                Some(vec!["operator".to_string()]),
                "crate::operator::".len(),
            )
        } else if rest.starts_with("super::") {
            let mut base = at.to_vec();
            let mut n = 0;
            while text[i + n..].starts_with("super::") {
                base.pop();
                n += "super::".len();
            }
            (Some(base), n)
        } else {
            let word: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if children.contains(&word) && text[i + word.len()..].starts_with("::") {
                let mut base = at.to_vec();
                base.push(word.clone());
                (Some(base), word.len() + 2)
            } else {
                (None, word.len().max(1))
            }
        };
        let Some(base) = base else {
            i += skip;
            continue;
        };
        let path = &text[i + skip..];
        let end = path
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(path.len());
        let (head, after) = path.split_at(end);
        if after.starts_with('{') && (head.is_empty() || head.ends_with("::")) {
            let group = &after[1..after.find('}').unwrap_or(after.len())];
            let mut b = base.clone();
            for seg in head
                .trim_end_matches("::")
                .split("::")
                .filter(|s| !s.is_empty())
            {
                b.push(seg.to_string());
            }
            for item in group.split(',') {
                let item = item.trim();
                if item == "self" {
                    resolve(b.clone(), "");
                } else {
                    resolve(b.clone(), item);
                }
            }
        } else {
            resolve(base, head);
        }
        i += skip + end.max(1);
    }
    found
}

/// The code of a file up to its tests.
fn code_of(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let end = text.find("#[cfg(test)]").unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_operators_modules_import_each_other_without_a_cycle() {
    let src = PathBuf::from(ROOT).join("src");
    let mut by_module: BTreeMap<Vec<String>, PathBuf> = BTreeMap::new();
    for file in files(&src.join("operator")) {
        if let Some(m) = module_of(&file, &src) {
            by_module.insert(m, file);
        }
    }
    let modules: BTreeSet<Vec<String>> = by_module.keys().cloned().collect();
    let graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = by_module
        .iter()
        .map(|(m, file)| (m.clone(), imports(&code_of(file), m, &modules)))
        .collect();
    let name = |m: &Vec<String>| m.join("::");
    let module = |s: &str| s.split("::").map(str::to_string).collect::<Vec<_>>();
    // The base imports no controller and not the wiring; the wiring is imported by nobody
    // but the operator's root, which only re-exports it.
    for up in [
        "operator::experiment",
        "operator::trial",
        "operator::run",
        "operator::http",
        "operator::start",
    ] {
        assert!(
            !graph[&module("operator::context")].contains(&module(up)),
            "operator::context imports {up}: the base must not depend on what builds on it"
        );
    }
    for (m, edges) in &graph {
        if m != &module("operator") {
            assert!(
                !edges.contains(&module("operator::run")),
                "{} imports the wiring",
                name(m)
            );
            assert!(
                !edges.contains(&module("operator")),
                "{} imports from operator/mod.rs, which is only declarations",
                name(m)
            );
        }
    }
    // Depth-first search for a cycle.
    fn visit(
        m: &Vec<String>,
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        path: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(i) = path.iter().position(|p| p == m) {
            let cycle: Vec<String> = path[i..].iter().map(|p| p.join("::")).collect();
            panic!(
                "an import cycle in src/operator: {} -> {}",
                cycle.join(" -> "),
                m.join("::")
            );
        }
        path.push(m.clone());
        for next in graph.get(m).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(m.clone());
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
    // The check sees imports at all: the trial controller uses the base.
    assert!(graph[&module("operator::trial")].contains(&module("operator::context")));
}

/// The top-level modules of src/ that `part`'s files name as `crate::<module>`.
fn crate_imports(part: &str) -> BTreeSet<String> {
    let src = PathBuf::from(ROOT).join("src");
    let mut found = BTreeSet::new();
    for file in files(&src.join(part)) {
        let code = code_of(&file);
        for (k, _) in code.match_indices("crate::") {
            let rest = &code[k + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

#[test]
fn the_ui_reads_runs_and_the_api_but_no_operator_and_nothing_imports_it() {
    let ui = crate_imports("ui");
    assert!(
        !ui.contains("operator"),
        "src/ui imports the operator: {ui:?}"
    );
    assert!(
        !ui.contains("bench"),
        "src/ui imports the strategy benchmark: {ui:?}"
    );
    for part in ["local", "operator", "api", "bench", "tabular"] {
        assert!(
            !crate_imports(part).contains("ui"),
            "src/{part} imports src/ui, which sits on top"
        );
    }
}
