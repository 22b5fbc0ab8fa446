//! The side-by-side table: one row per shape and figure, a column per operator, medians over
//! runs with the spread; and the runs saved as JSON lines (`--save`), read back (`--from`) so
//! that a matrix measured over several sessions prints as one table.

use super::{Run, VersusArgs};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Appends one run to a file of JSON lines (each run as it ends: a later failure keeps it).
pub fn save(path: &Path, run: &Run) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("--save {}", path.display()))?;
    writeln!(file, "{}", serde_json::to_string(run)?)?;
    Ok(())
}

/// Runs saved by `--save` or `--json`, or the progress lines the benchmark writes to stderr
/// (`nasop latency run 1: {...}`); other lines are skipped.
pub fn load(paths: &[PathBuf]) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    for path in paths {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("--from {}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let Some(start) = line.find('{') else {
                continue;
            };
            if !line[start..].starts_with("{\"operator\"") {
                continue;
            }
            let run: Run = serde_json::from_str(&line[start..])
                .with_context(|| format!("--from {} line {}", path.display(), n + 1))?;
            runs.push(run);
        }
    }
    Ok(runs)
}

/// Median and spread of one figure over runs.
fn spread(values: &[f64], digits: usize) -> String {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return "–".into();
    }
    v.sort_by(f64::total_cmp);
    let median = median(&v);
    if v.len() == 1 || v[0] == v[v.len() - 1] {
        return format!("{median:.digits$}");
    }
    format!(
        "{median:.digits$} ({:.digits$}–{:.digits$})",
        v[0],
        v[v.len() - 1]
    )
}

/// A run's settings as its column names them: the operator's flags, and the controller
/// manager's client limit it ran beside ("" for runs saved before that was recorded).
fn setting(r: &Run) -> String {
    let flag = |name: &str| {
        r.control_plane
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("--{name}=")))
            .unwrap_or("?")
            .to_string()
    };
    let plane = match r.control_plane.as_str() {
        "" => String::new(),
        "defaults" => "controller manager: defaults (20 qps)".into(),
        _ => format!(
            "controller manager: {} qps, burst {}",
            flag("kube-api-qps"),
            flag("kube-api-burst")
        ),
    };
    [r.settings.as_str(), plane.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The table's columns: each operator of `--operators`, at each setting the runs were
/// measured with (its defaults first), in the order first seen.
fn columns(args: &VersusArgs, runs: &[Run]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for side in &args.operators {
        let side = super::name(*side);
        let mut mine: Vec<(String, String)> = runs
            .iter()
            .filter(|r| r.operator == side)
            .map(|r| (side.clone(), setting(r)))
            .collect();
        if mine.is_empty() {
            mine.push((side.clone(), String::new()));
        }
        // Its defaults first.
        mine.sort_by_key(|c| !c.1.is_empty());
        for column in mine {
            if !out.contains(&column) {
                out.push(column);
            }
        }
    }
    out
}

/// The side-by-side table: one row per shape and figure, a column per operator, medians
/// over runs with the spread.
pub fn print(args: &VersusArgs, runs: &[Run]) {
    let sides = columns(args, runs);
    let labels: Vec<String> = sides
        .iter()
        .map(|(operator, settings)| match settings.as_str() {
            "" => operator.clone(),
            s => format!("{operator} `{s}`"),
        })
        .collect();
    println!("| shape | figure | {} |", labels.join(" | "));
    println!("|---|---|{}", "---|".repeat(sides.len()));
    for shape in &args.shapes {
        let shape = super::name(shape);
        // A shape no run measured (`--from` files of other shapes) has no rows.
        if !runs.iter().any(|r| r.shape == shape) {
            continue;
        }
        let of = |side: &(String, String)| -> Vec<&Run> {
            runs.iter()
                .filter(|r| r.shape == shape && r.operator == side.0 && setting(r) == side.1)
                .collect()
        };
        type Figure = (&'static str, usize, fn(&Run) -> f64);
        let figures: [Figure; 17] = [
            ("wall time, s", 1, |r| r.wall_seconds),
            ("trials per second", 1, |r| r.trials_per_second),
            ("slot utilisation (trial pods running / slots)", 2, |r| {
                r.slot_utilisation
            }),
            ("apply → first trial pod running, s", 1, |r| {
                r.apply_to_first_running_seconds
            }),
            ("a slot freed → its next pod, p50 ms", 0, |r| {
                r.refill_ms_p50
            }),
            ("a slot freed → its next pod, p99 ms", 0, |r| {
                r.refill_ms_p99
            }),
            ("most trial pods running", 0, |r| r.max_running_pods as f64),
            ("operator CPU-seconds", 1, |r| r.cpu_seconds),
            ("operator CPU-ms per trial", 1, |r| {
                r.cpu_seconds * 1000.0 / r.trials.max(1) as f64
            }),
            ("operator peak PSS, MiB", 1, |r| r.peak_pss_mib),
            ("operator peak RSS (summed), MiB", 1, |r| r.peak_rss_mib),
            ("operator API requests per trial", 2, |r| {
                r.api_requests_per_trial
            }),
            ("controller-manager API requests per trial", 2, |r| {
                r.controller_manager_requests_per_trial
            }),
            ("controller-manager throttling waits", 0, |r| {
                r.throttled_waits
                    .get("controller-manager")
                    .map_or(f64::NAN, |n| *n as f64)
            }),
            ("operator client throttling waits", 0, |r| {
                let theirs: Vec<f64> = r
                    .throttled_waits
                    .iter()
                    .filter(|(k, _)| *k != "controller-manager")
                    .map(|(_, n)| *n as f64)
                    .collect();
                match (r.throttled_waits.is_empty(), theirs.is_empty()) {
                    (true, _) => f64::NAN,
                    // nasop's kube-rs client has no client-side limit.
                    (false, true) => 0.0,
                    (false, false) => theirs.iter().sum(),
                }
            }),
            ("trials lost", 0, |r| r.trials_lost as f64),
            ("trials run twice", 0, |r| r.trials_run_twice as f64),
        ];
        // One row: a cell per column, each from that column's runs of this shape.
        let row = |figure: &str, cell: &dyn Fn(&[&Run]) -> String| {
            let cells: Vec<String> = sides.iter().map(|side| cell(&of(side))).collect();
            println!("| {shape} | {figure} | {} |", cells.join(" | "));
        };
        for (figure, digits, get) in figures {
            row(figure, &|runs| {
                let finished: Vec<f64> = runs
                    .iter()
                    .filter(|r| r.error.is_none())
                    .map(|r| get(r))
                    .collect();
                spread(&finished, digits)
            });
        }
        row("largest object, bytes", &|runs| {
            let mut best: BTreeMap<String, usize> = BTreeMap::new();
            for r in runs {
                for (kind, bytes) in &r.largest_objects {
                    let b = best.entry(kind.clone()).or_default();
                    *b = (*b).max(*bytes);
                }
            }
            best.iter()
                .map(|(k, b)| format!("{k} {b}"))
                .collect::<Vec<_>>()
                .join(", ")
        });
        if shape == "faults" {
            row("controller restart → its first new trial, s", &|runs| {
                let all: Vec<f64> = runs.iter().flat_map(|r| r.resume_seconds.clone()).collect();
                spread(&all, 2)
            });
        }
        row("operator CPU-seconds by process (median)", &|runs| {
            medians(runs, |r| &r.cpu_seconds_by_process, 1)
        });
        row(
            "requests per trial by verb and resource (median)",
            &|runs| medians(runs, |r| &r.requests_per_trial, 2),
        );
        for (i, side) in sides.iter().enumerate() {
            for r in of(side) {
                if let Some(e) = &r.error {
                    // The error in its operator's column.
                    let cells: Vec<&str> = (0..sides.len())
                        .map(|j| if i == j { e.as_str() } else { "" })
                        .collect();
                    println!(
                        "| {shape} | {} run {} did not finish | {} |",
                        labels[i],
                        r.run,
                        cells.join(" | ")
                    );
                }
            }
        }
    }
}

/// "key median, ..." over runs of a figure kept by key, leaving out medians below 0.01.
fn medians(runs: &[&Run], get: fn(&Run) -> &BTreeMap<String, f64>, digits: usize) -> String {
    let mut keys: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in runs {
        for (k, v) in get(r) {
            keys.entry(k.clone()).or_default().push(*v);
        }
    }
    keys.iter()
        .map(|(k, v)| (k, median_of(v)))
        .filter(|(_, m)| *m >= 0.01)
        .map(|(k, m)| format!("{k} {m:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn median_of(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    median(&v)
}

/// The median of sorted values: the middle one, or the mean of the two middle ones (an
/// even number of runs).
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_number_of_runs_is_the_mean_of_the_middle_two() {
        assert_eq!(
            spread(&[356.0, 280.3, 375.6, 340.7], 1),
            "348.4 (280.3–375.6)"
        );
        assert_eq!(spread(&[3.0, 1.0, 2.0], 0), "2 (1–3)");
        assert_eq!(spread(&[f64::NAN, 5.0], 1), "5.0");
        assert_eq!(spread(&[], 1), "–");
    }

    #[test]
    fn saved_runs_read_back_with_their_unmeasured_figures() {
        let dir = std::env::temp_dir().join(format!("nasop-versus-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let saved = dir.join("runs.jsonl");
        let _ = std::fs::remove_file(&saved);
        let run = Run {
            operator: "katib".into(),
            shape: "long".into(),
            run: 2,
            wall_seconds: 12.5,
            end_to_next_pod_ms_p99: f64::NAN,
            resume_seconds: vec![0.5, f64::NAN],
            error: Some("stalled".into()),
            ..Run::default()
        };
        save(&saved, &run).unwrap();
        save(&saved, &run).unwrap();
        // The progress lines on stderr, from a run before `--save` existed (fewer fields).
        let progress = dir.join("progress.log");
        std::fs::write(
            &progress,
            "nasop latency run 1 ...\nnasop latency run 1: {\"operator\":\"nasop\",\"shape\":\"latency\",\"run\":1,\"wall_seconds\":73.4}\nkubectl noise {\"kind\":\"x\"}\n",
        )
        .unwrap();
        let runs = load(&[saved, progress]).unwrap();
        assert_eq!(runs.len(), 3);
        assert_eq!(runs[0].wall_seconds, 12.5);
        assert!(runs[0].end_to_next_pod_ms_p99.is_nan());
        assert_eq!(runs[0].resume_seconds[0], 0.5);
        assert!(runs[0].resume_seconds[1].is_nan());
        assert_eq!(runs[0].error.as_deref(), Some("stalled"));
        assert_eq!(
            (runs[2].operator.as_str(), runs[2].wall_seconds),
            ("nasop", 73.4)
        );
        assert!(runs[2].cpu_seconds_by_process.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn runs_at_other_settings_get_columns_of_their_own() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: VersusArgs,
        }
        let args = Cli::parse_from(["x"]).args;
        let run = |operator: &str, settings: &str| Run {
            operator: operator.into(),
            settings: settings.into(),
            ..Run::default()
        };
        let runs = [
            run("katib", ""),
            run("nasop", "--concurrency 32"),
            run("nasop", ""),
            run("nasop", "--concurrency 32"),
        ];
        let columns: Vec<(String, String)> = columns(&args, &runs);
        let expected = [("nasop", ""), ("nasop", "--concurrency 32"), ("katib", "")];
        assert_eq!(
            columns,
            expected.map(|(o, s)| (o.to_string(), s.to_string()))
        );
        // The controller manager's limit makes columns of its own.
        let on = |operator: &str, plane: &str| Run {
            operator: operator.into(),
            control_plane: plane.into(),
            ..Run::default()
        };
        let tuned = "--kube-api-qps=100 --kube-api-burst=200 --use-service-account-credentials";
        let runs = [
            on("nasop", tuned),
            on("nasop", "defaults"),
            on("katib", tuned),
        ];
        let labels: Vec<String> = super::columns(&args, &runs)
            .into_iter()
            .map(|c| c.1)
            .collect();
        assert_eq!(
            labels,
            [
                "controller manager: 100 qps, burst 200",
                "controller manager: defaults (20 qps)",
                "controller manager: 100 qps, burst 200"
            ]
        );
    }

    #[test]
    fn spread_is_the_median_and_range_of_the_finite_values() {
        assert_eq!(spread(&[3.0, 1.0, 2.0], 1), "2.0 (1.0–3.0)");
        assert_eq!(spread(&[f64::NAN, 4.0], 0), "4");
        assert_eq!(spread(&[], 0), "–");
    }
}
