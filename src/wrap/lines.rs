//! Metrics from a command's standard output: Katib's `name=value` lines by default, or the
//! user's regular expression.

use regex::Regex;
use std::collections::BTreeMap;

/// Katib's StdOut collector's default filter: `name=value`, the value a decimal number.
pub const KATIB_FORMAT: &str = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)";

/// Finds metrics in lines. A pattern has two capture groups, name then value, or the
/// named groups `name` and `value`.
pub struct LineMetrics {
    pattern: Regex,
    /// Which names carry the step (the first found wins): epoch, step by default.
    step_names: Vec<String>,
}

/// What one line said: its step, if it names one, and its metrics.
#[derive(Debug, Default, PartialEq)]
pub struct Found {
    pub step: Option<u32>,
    pub metrics: BTreeMap<String, f64>,
}

impl LineMetrics {
    pub fn new(pattern: Option<&str>, step_names: Vec<String>) -> Result<LineMetrics, String> {
        let pattern = Regex::new(pattern.unwrap_or(KATIB_FORMAT))
            .map_err(|e| format!("--metrics-regex: {e}"))?;
        let groups = pattern.captures_len() - 1;
        let named = pattern.capture_names().flatten().any(|n| n == "name")
            && pattern.capture_names().flatten().any(|n| n == "value");
        if !named && groups < 2 {
            return Err(format!(
                "--metrics-regex {:?} must capture the name and the value: two groups, or groups named `name` and `value`",
                pattern.as_str()
            ));
        }
        Ok(LineMetrics {
            pattern,
            step_names,
        })
    }

    pub fn scan(&self, line: &str) -> Found {
        let mut found = Found::default();
        for c in self.pattern.captures_iter(line) {
            let (Some(name), Some(value)) = (
                c.name("name").or_else(|| c.get(1)),
                c.name("value").or_else(|| c.get(2)),
            ) else {
                continue;
            };
            let (name, value) = (name.as_str().trim(), value.as_str().trim());
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            if !v.is_finite() || !nasop_core::contract::valid_name(name) {
                continue;
            }
            if self.step_names.iter().any(|s| s == name) {
                if found.step.is_none() && v >= 0.0 && v.fract() == 0.0 {
                    found.step = Some(v as u32);
                }
                continue;
            }
            found.metrics.insert(name.to_string(), v);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn katib() -> LineMetrics {
        LineMetrics::new(None, vec!["epoch".into(), "step".into()]).unwrap()
    }

    #[test]
    fn katib_lines_give_their_epoch_and_metrics() {
        let f = katib().scan("epoch=3 val_accuracy=0.81 loss = 1.5e-2");
        assert_eq!(f.step, Some(3));
        assert_eq!(
            f.metrics,
            BTreeMap::from([("val_accuracy".into(), 0.81), ("loss".into(), 0.015)])
        );
        let f = katib().scan("loading data... done");
        assert_eq!(f, Found::default());
        // A value that is not a number is no metric.
        assert!(katib().scan("mode=train lr=0.1").metrics.contains_key("lr"));
        assert!(!katib().scan("mode=train").metrics.contains_key("mode"));
    }

    #[test]
    fn a_users_pattern_may_name_its_groups() {
        let m = LineMetrics::new(
            Some(r"(?P<name>\w+): (?P<value>[0-9.]+)"),
            vec!["epoch".into()],
        )
        .unwrap();
        let f = m.scan("epoch: 2 | acc: 0.9");
        assert_eq!(f.step, Some(2));
        assert_eq!(f.metrics, BTreeMap::from([("acc".into(), 0.9)]));
    }

    #[test]
    fn a_pattern_without_two_groups_is_refused_naming_the_flag() {
        let e = LineMetrics::new(Some(r"acc=[0-9.]+"), vec![])
            .err()
            .unwrap();
        assert!(e.starts_with("--metrics-regex"), "{e}");
        assert!(
            LineMetrics::new(Some("("), vec![])
                .err()
                .unwrap()
                .contains("--metrics-regex")
        );
    }
}
