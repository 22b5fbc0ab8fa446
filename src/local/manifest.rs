//! Reading a `NasExperiment` manifest from a file, with errors that point at the YAML line.

use crate::api::{NasExperiment, validate};
use crate::engine::Experiment;
use std::path::{Path, PathBuf};

/// A manifest that cannot be used: where, which field, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {field}{}{problem}", path.display(), line.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default(), if field.is_empty() { "" } else { ": " })]
pub struct ManifestError {
    pub path: PathBuf,
    pub line: Option<(usize, usize)>,
    pub field: String,
    pub problem: String,
}

pub struct Manifest {
    pub resource: NasExperiment,
    pub experiment: Experiment,
    pub text: String,
}

pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    let fail = |line, field: &str, problem: String| ManifestError {
        path: path.to_path_buf(),
        line,
        field: field.to_string(),
        problem,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(None, "", format!("cannot read the manifest: {e}")))?;
    let resource: NasExperiment = serde_yaml::from_str(&text).map_err(|e| {
        let line = e.location().map(|l| (l.line(), l.column()));
        fail(
            line,
            "",
            e.to_string()
                .split(" at line ")
                .next()
                .unwrap_or_default()
                .to_string(),
        )
    })?;
    if resource
        .metadata
        .name
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        return Err(fail(
            locate(&text, "metadata"),
            "metadata.name",
            "is required: the run directory and trial names come from it".into(),
        ));
    }
    let name = resource.metadata.name.clone().unwrap_or_default();
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || name.len() > 63
    {
        return Err(fail(
            locate(&text, "metadata.name"),
            "metadata.name",
            format!("{name:?} must be a DNS label: lowercase letters, digits and '-', at most 63"),
        ));
    }
    let experiment = validate(&name, &resource.spec)
        .map_err(|e| fail(locate(&text, &e.field), &e.field, e.problem))?;
    Ok(Manifest {
        resource,
        experiment,
        text,
    })
}

/// The (line, column), 1-based, of a field path such as `spec.objectives[1].metric` in
/// block-style YAML; the deepest part found when the field itself is absent.
pub fn locate(text: &str, field: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = None;
    let mut start = 0;
    let mut parent: Option<usize> = None;
    for part in field.split('.') {
        let (key, indices) = match part.find('[') {
            Some(b) => (
                &part[..b],
                part[b..]
                    .trim_matches(|c| c == '[' || c == ']')
                    .split("][")
                    .filter_map(|i| i.parse::<usize>().ok())
                    .collect::<Vec<_>>(),
            ),
            None => (part, Vec::new()),
        };
        let Some((line, indent)) = find_key(&lines, start, parent, key) else {
            return found;
        };
        found = Some((line + 1, indent + 1));
        start = line + 1;
        parent = Some(indent);
        for index in indices {
            let Some((line, indent)) = find_item(&lines, start, parent, index) else {
                return found;
            };
            found = Some((line + 1, indent + 1));
            start = line;
            // A list item's keys sit two columns right of its dash.
            parent = Some(indent + 1);
        }
    }
    found
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The line and column of `key:` inside the block below `parent` (its keys indented more).
fn find_key(
    lines: &[&str],
    start: usize,
    parent: Option<usize>,
    key: &str,
) -> Option<(usize, usize)> {
    for (i, line) in lines.iter().enumerate().skip(start) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut indent = indent_of(line);
        let mut body = trimmed;
        if let Some(rest) = body.strip_prefix("- ") {
            if parent.is_some_and(|p| indent <= p) && i != start {
                return None;
            }
            indent += 2;
            body = rest;
        } else if parent.is_some_and(|p| indent <= p) {
            return None;
        }
        if body.strip_prefix(key).is_some_and(|r| r.starts_with(':')) {
            return Some((i, indent));
        }
    }
    None
}

/// The `index`-th list item (`- `) of the block below `parent`.
fn find_item(
    lines: &[&str],
    start: usize,
    parent: Option<usize>,
    index: usize,
) -> Option<(usize, usize)> {
    let mut seen = 0;
    let mut dash: Option<usize> = None;
    for (i, line) in lines.iter().enumerate().skip(start) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = indent_of(line);
        if parent.is_some_and(|p| indent < p)
            || (parent.is_some_and(|p| indent == p) && !trimmed.starts_with('-'))
        {
            return None;
        }
        if trimmed.starts_with("- ") || trimmed == "-" {
            let d = *dash.get_or_insert(indent);
            if indent == d {
                if seen == index {
                    return Some((i, indent));
                }
                seen += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "apiVersion: nasop.dev/v1alpha1
kind: NasExperiment
metadata:
  name: demo
spec:
  objectives:
    - metric: val_accuracy
      goal: maximize
    - metric: latency_ms
      goal: minimize
  searchSpace:
    cell:
      nodes: 4
      operations: []
  strategy:
    algorithm: evolution
    settings:
      population: 1
  budget:
    maxTrials: 3
";

    #[test]
    fn locates_nested_fields_and_list_items() {
        assert_eq!(
            locate(YAML, "spec.strategy.settings.population"),
            Some((18, 7))
        );
        assert_eq!(locate(YAML, "spec.objectives[1].metric"), Some((9, 7)));
        assert_eq!(
            locate(YAML, "spec.searchSpace.cell.operations"),
            Some((14, 7))
        );
        // Absent: the deepest part that exists.
        assert_eq!(locate(YAML, "spec.budget.parallelism"), Some((19, 3)));
    }

    #[test]
    fn invalid_manifests_name_the_line_and_field() {
        let dir = std::env::temp_dir().join(format!("nasop-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.yaml");
        std::fs::write(&path, YAML).unwrap();
        let e = load(&path).err().unwrap().to_string();
        assert!(
            e.contains(
                "bad.yaml:14:7: spec.searchSpace.cell.operations: must list at least one operation"
            ),
            "{e}"
        );
        std::fs::write(
            &path,
            YAML.replace("operations: []", "operations: [none, nor_conv_3x3]"),
        )
        .unwrap();
        let e = load(&path).err().unwrap().to_string();
        assert!(
            e.contains("bad.yaml:18:7: spec.strategy.settings.population: 1 is out of range"),
            "{e}"
        );
        std::fs::write(
            &path,
            YAML.replace("algorithm: evolution", "algorithm: annealing"),
        )
        .unwrap();
        let e = load(&path).err().unwrap().to_string();
        assert!(e.contains("bad.yaml:16:") && e.contains("annealing"), "{e}");
    }
}
