//! `nasop results`: the trials of a run directory as a table, JSON or CSV.

use super::journal::Journal;
use super::manifest;
use crate::engine::final_training::{self, Finalist};
use crate::engine::{Experiment, Stage, TrialPhase, TrialRecord, best_trial, pareto_front};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// A run directory's experiment, trials, and each trial's non-numeric results.
pub struct Run {
    pub experiment: Experiment,
    pub trials: Vec<TrialRecord>,
    pub info: BTreeMap<u32, BTreeMap<String, String>>,
    pub reasons: BTreeMap<u32, String>,
    pub finished: Option<(bool, String, String)>,
}

pub fn load(dir: &Path) -> Result<Run> {
    let manifest_path = dir.join("manifest.yaml");
    anyhow::ensure!(
        manifest_path.exists(),
        "{} is not a run directory (no manifest.yaml); runs live in nasop-runs/<experiment>",
        dir.display()
    );
    let m = manifest::load(&manifest_path)?;
    let replay = Journal::replay(&dir.join("journal.jsonl"), Some(&m.experiment.space))
        .with_context(|| format!("reading {}", dir.display()))?;
    Ok(Run {
        experiment: m.experiment,
        trials: replay.trials,
        info: replay.info,
        reasons: replay.reasons,
        finished: replay.done,
    })
}

fn ranked<'a>(exp: &Experiment, trials: &'a [TrialRecord]) -> Vec<&'a TrialRecord> {
    let o = &exp.objectives[0];
    let mut done: Vec<&TrialRecord> = trials
        .iter()
        .filter(|t| t.phase == TrialPhase::Succeeded && t.metrics.contains_key(&o.metric))
        .filter(|t| t.stage == Stage::Search)
        .collect();
    done.sort_by(|a, b| {
        b.epochs.cmp(&a.epochs).then(
            o.oriented(b.metrics[&o.metric])
                .total_cmp(&o.oriented(a.metrics[&o.metric])),
        )
    });
    done
}

fn duration(t: &TrialRecord) -> f64 {
    match (t.started_at, t.finished_at) {
        (Some(s), Some(f)) => f - s,
        _ => 0.0,
    }
}

/// The columns shown: the objectives, then test accuracy, then the usual cost metrics.
fn columns(exp: &Experiment) -> Vec<String> {
    let mut cols: Vec<String> = exp.objectives.iter().map(|o| o.metric.clone()).collect();
    for extra in ["test_accuracy", "params", "latency_ms"] {
        if !cols.iter().any(|c| c == extra) {
            cols.push(extra.to_string());
        }
    }
    cols
}

pub fn print_table(
    exp: &Experiment,
    trials: &[TrialRecord],
    info: &BTreeMap<u32, BTreeMap<String, String>>,
    top: usize,
) {
    let cols = columns(exp);
    let done = trials.iter().filter(|t| !t.phase.is_active()).count();
    let failed = trials
        .iter()
        .filter(|t| t.phase == TrialPhase::Failed)
        .count();
    println!(
        "\n{}: {} trials, {done} ended, {failed} failed. Top {top} by {} (largest budget first):",
        exp.name,
        trials.len(),
        exp.objectives[0].metric
    );
    let mut header = format!("{:>5} {:>6}", "trial", "epochs");
    for c in &cols {
        header.push_str(&format!(" {c:>14}"));
    }
    header.push_str(&format!(" {:>9}  candidate", "seconds"));
    println!("{header}");
    for t in ranked(exp, trials).into_iter().take(top) {
        let mut row = format!("{:>5} {:>6}", t.index, t.epochs);
        for c in &cols {
            row.push_str(&format!(
                " {:>14}",
                t.metrics.get(c).map_or("-".into(), |v| fmt(*v))
            ));
        }
        row.push_str(&format!(" {:>9.1}  {}", duration(t), t.candidate));
        if let Some(d) = info
            .get(&t.index)
            .and_then(|i| i.get("derived_architecture"))
        {
            row.push_str(&format!("  derived {d}"));
        }
        println!("{row}");
    }
    print_final_training(exp, trials, &cols);
    if let Some(best) = best_trial(exp, trials) {
        println!("\nbest: trial {} {}", best.index, best.candidate);
        let metrics: Vec<String> = best
            .metrics
            .iter()
            .map(|(k, v)| format!("{k}={}", fmt(*v)))
            .collect();
        println!("      {}", metrics.join(" "));
        if let Some(path) = info
            .get(&best.index)
            .and_then(|i| i.get(nasop_core::contract::INFO_ARTIFACT))
        {
            println!("      model: {path}");
        }
    }
}

/// The final-training table: each finalist's mean ± standard deviation over its seeds.
fn print_final_training(exp: &Experiment, trials: &[TrialRecord], cols: &[String]) {
    let Some(plan) = &exp.final_training else {
        return;
    };
    if !final_training::in_final_training(trials) {
        return;
    }
    let finalists = final_training::finalists(exp, plan, trials);
    let winner = final_training::winner(exp, &finalists).map(|w| w.rank);
    println!(
        "\nfinal training: the search's top {} trained again, {} seed(s) of {} epochs each (mean ± sd):",
        finalists.len(),
        plan.seeds,
        plan.epochs
    );
    let mut header = format!("{:>5} {:>6}", "rank", "done");
    for c in cols {
        header.push_str(&format!(" {c:>22}"));
    }
    header.push_str("  candidate");
    println!("{header}");
    for f in &finalists {
        let succeeded = f.succeeded();
        let mut row = format!(
            "{:>5} {:>6}",
            if winner == Some(f.rank) {
                format!("*{}", f.rank)
            } else {
                f.rank.to_string()
            },
            format!("{succeeded}/{}", plan.seeds)
        );
        for c in cols {
            let cell = f
                .metrics
                .get(c)
                .map_or("-".into(), |s| format!("{} ± {}", fmt(s.mean), fmt(s.std)));
            row.push_str(&format!(" {cell:>22}"));
        }
        row.push_str(&format!("  {}", f.search_trial.candidate));
        println!("{row}");
    }
    if winner.is_some() {
        println!(
            "(* marks the winner: the best mean {} over its seeds)",
            exp.objectives[0].metric
        );
    }
}

fn finalist_json(f: &Finalist) -> serde_json::Value {
    serde_json::json!({
        "rank": f.rank,
        "candidate": f.search_trial.candidate,
        "search_trial": f.search_trial.index,
        "trials": f.trials.iter().map(|t| t.index).collect::<Vec<_>>(),
        "metrics": f.metrics.iter().map(|(k, s)| (k.clone(), serde_json::json!({"mean": s.mean, "std": s.std, "count": s.count}))).collect::<serde_json::Map<_, _>>(),
    })
}

fn fmt(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

fn trial_json(run: &Run, t: &TrialRecord) -> serde_json::Value {
    serde_json::json!({
        "index": t.index,
        "candidate": t.candidate,
        "architecture": run.experiment.space.architecture(&t.point).map(|a| a.to_string()),
        "hyperparameters": run.experiment.space.hyperparameter_values(&t.point),
        "epochs": t.epochs,
        "phase": format!("{:?}", t.phase),
        "stage": t.stage.name(),
        "reason": run.reasons.get(&t.index),
        "metrics": t.metrics,
        "info": run.info.get(&t.index),
        "artifact": run.info.get(&t.index).and_then(|i| i.get(nasop_core::contract::INFO_ARTIFACT)),
        "duration_seconds": duration(t),
    })
}

/// `{experiment, finished, best, pareto_front, final_training, trials}`.
pub fn json(run: &Run) -> serde_json::Value {
    let final_training = run.experiment.final_training.as_ref().map(|plan| {
        let finalists = final_training::finalists(&run.experiment, plan, &run.trials);
        let winner = final_training::winner(&run.experiment, &finalists).map(|w| w.rank);
        serde_json::json!({
            "top": plan.top,
            "epochs": plan.epochs,
            "seeds": plan.seeds,
            "winner": winner,
            "candidates": finalists.iter().map(finalist_json).collect::<Vec<_>>(),
        })
    });
    let best = best_trial(&run.experiment, &run.trials).map(|t| trial_json(run, t));
    let front: Vec<serde_json::Value> = if run.experiment.objectives.len() > 1 {
        pareto_front(&run.experiment, &run.trials)
            .into_iter()
            .map(|t| trial_json(run, t))
            .collect()
    } else {
        Vec::new()
    };
    serde_json::json!({
        "experiment": run.experiment.name,
        "finished": run.finished.as_ref().map(|(ok, reason, message)| serde_json::json!({"succeeded": ok, "reason": reason, "message": message})),
        "best": best,
        "pareto_front": front,
        "final_training": final_training,
        "trials": run.trials.iter().map(|t| trial_json(run, t)).collect::<Vec<_>>(),
    })
}

pub fn csv(run: &Run, out: &mut impl std::io::Write) -> Result<()> {
    let mut metric_names: Vec<String> = run
        .trials
        .iter()
        .flat_map(|t| t.metrics.keys().cloned())
        .collect();
    metric_names.sort();
    metric_names.dedup();
    let mut w = csv::Writer::from_writer(out);
    let mut header = vec![
        "index".to_string(),
        "stage".into(),
        "phase".into(),
        "epochs".into(),
        "candidate".into(),
        "duration_seconds".into(),
    ];
    header.extend(metric_names.iter().cloned());
    w.write_record(&header)?;
    for t in &run.trials {
        let mut row = vec![
            t.index.to_string(),
            t.stage.name().to_string(),
            format!("{:?}", t.phase),
            t.epochs.to_string(),
            t.candidate.clone(),
            format!("{:.3}", duration(t)),
        ];
        row.extend(
            metric_names
                .iter()
                .map(|m| t.metrics.get(m).map_or(String::new(), |v| v.to_string())),
        );
        w.write_record(&row)?;
    }
    w.flush()?;
    Ok(())
}
