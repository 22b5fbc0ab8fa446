use super::*;
use crate::api::{NasExperimentSpec, NasTrial, NasTrialSpec, NasTrialStatus, TrialPhaseName};
use crate::engine::FinishReason;

fn spec(yaml: &str) -> NasExperimentSpec {
    serde_yaml::from_str(yaml).unwrap()
}

fn experiment(objectives: &str) -> Experiment {
    let s = spec(&format!(
        r#"
objectives: {objectives}
searchSpace:
  cell: {{nodes: 4, operations: [none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3]}}
strategy: {{algorithm: random, seed: 1}}
budget: {{maxTrials: 10, parallelism: 2, trialEpochs: 12}}
"#
    ));
    crate::api::validate("e", &s).unwrap()
}

const CELL: &str = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|";

fn trial(index: u32, phase: Option<TrialPhaseName>, metrics: &[(&str, f64)]) -> NasTrial {
    let mut t = NasTrial::new(
        &trial_name("e", index),
        NasTrialSpec {
            experiment: "e".into(),
            index,
            candidate: CELL.into(),
            epochs: 12,
            seed: 7,
            resume_from: None,
            stage: None,
            stop: None,
        },
    );
    t.status = Some(NasTrialStatus {
        phase,
        metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        completion_time: Some(micro(1_700_000_000.123456)),
        ..NasTrialStatus::default()
    });
    t
}

#[test]
fn a_trial_becomes_the_engines_record() {
    let exp = experiment("[{metric: acc, goal: maximize}]");
    let r = record(
        &exp,
        &trial(3, Some(TrialPhaseName::Succeeded), &[("acc", 0.9)]),
    )
    .unwrap();
    assert_eq!(r.index, 3);
    assert_eq!(r.phase, TrialPhase::Succeeded);
    assert_eq!(r.metrics["acc"], 0.9);
    assert_eq!(exp.space.format(&r.point), CELL);
    // Microseconds survive, so the order trials ended in is kept across restarts.
    assert!((r.finished_at.unwrap() - 1_700_000_000.123456).abs() < 1e-5);
    let pending = record(&exp, &trial(4, None, &[])).unwrap();
    assert_eq!(pending.phase, TrialPhase::Pending);
    let mut bad = trial(5, None, &[]);
    bad.spec.candidate = "|conv~0|".into();
    assert!(
        record(&exp, &bad)
            .unwrap_err()
            .to_string()
            .contains("trial 5")
    );
}

#[test]
fn history_replaces_repeated_steps_and_stays_bounded() {
    let mut h = Vec::new();
    for step in 1..=1000 {
        push_report(
            &mut h,
            ReportEntry {
                step,
                metrics: BTreeMap::from([("acc".to_string(), step as f64)]),
            },
            &|_| true,
        );
        assert!(h.len() <= HISTORY_LIMIT);
    }
    assert_eq!(h.first().unwrap().step, 1, "the first report is kept");
    assert_eq!(h.last().unwrap().step, 1000, "the newest report is kept");
    assert!(h.windows(2).all(|w| w[0].step < w[1].step));
    push_report(
        &mut h,
        ReportEntry {
            step: 1000,
            metrics: BTreeMap::from([("acc".to_string(), -1.0)]),
        },
        &|_| true,
    );
    assert_eq!(h.last().unwrap().metrics["acc"], -1.0);
    assert_eq!(h.iter().filter(|r| r.step == 1000).count(), 1);
}

#[test]
fn only_the_newest_report_keeps_metrics_no_decision_reads() {
    let mut h = Vec::new();
    for step in 1..=3 {
        push_report(
            &mut h,
            ReportEntry {
                step,
                metrics: BTreeMap::from([("acc".to_string(), 1.0), ("loss".to_string(), 2.0)]),
            },
            &|m| m == "acc",
        );
    }
    assert_eq!(h.len(), 3);
    assert!(h[..2].iter().all(|r| r.metrics.keys().eq(["acc"])));
    assert_eq!(h[2].metrics.len(), 2, "the newest report is whole");
}

fn status_for(
    exp: &Experiment,
    records: &[TrialRecord],
    finish: Option<&Finish>,
) -> crate::api::NasExperimentStatus {
    experiment_status(
        &StatusInput {
            experiment: exp,
            name: "e",
            generation: Some(2),
            previous: &Default::default(),
            finish,
            started_at: 100.0,
            now: 200.0,
            gpu_seconds: 12.5,
            artifacts: &Default::default(),
        },
        records,
    )
}

#[test]
fn the_status_counts_trials_and_names_the_best() {
    let exp = experiment("[{metric: acc, goal: maximize}]");
    let records: Vec<TrialRecord> = [
        trial(0, Some(TrialPhaseName::Succeeded), &[("acc", 0.8)]),
        trial(1, Some(TrialPhaseName::Succeeded), &[("acc", 0.9)]),
        trial(2, Some(TrialPhaseName::Failed), &[]),
        trial(3, Some(TrialPhaseName::Running), &[]),
    ]
    .iter()
    .map(|t| record(&exp, t).unwrap())
    .collect();
    let s = status_for(&exp, &records, None);
    assert_eq!(s.phase, Some(crate::api::ExperimentPhase::Running));
    assert_eq!(
        (
            s.trials.created,
            s.trials.succeeded,
            s.trials.failed,
            s.trials.running
        ),
        (4, 2, 1, 1)
    );
    assert_eq!(s.progress.as_deref(), Some("3/1/10"));
    assert_eq!(s.best_value, Some(0.9));
    assert_eq!(s.best_trial.as_ref().unwrap().name, "e-1");
    assert!(s.pareto_front.is_empty(), "one objective: no front");
    assert_eq!(s.observed_generation, Some(2));
    assert_eq!(s.conditions[0].type_, "Running");
    assert_eq!(s.conditions[0].status, "True");
    assert_eq!(s.gpu_seconds, 12.5);

    // The engine's finish ends the experiment only once no trial is active.
    let finish = Finish {
        succeeded: true,
        reason: FinishReason::BudgetSpent,
        message: "done".into(),
    };
    let s = status_for(&exp, &records, Some(&finish));
    assert_eq!(s.phase, Some(crate::api::ExperimentPhase::Running));
    assert!(s.completion_time.is_none());
    let done: Vec<TrialRecord> = records.into_iter().filter(|r| r.index != 3).collect();
    let s = status_for(&exp, &done, Some(&finish));
    assert_eq!(s.phase, Some(crate::api::ExperimentPhase::Succeeded));
    assert!(s.completion_time.is_some());
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Succeeded")
        .unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "BudgetSpent")
    );
}

#[test]
fn several_objectives_give_a_bounded_pareto_front_and_a_flat_status() {
    let exp = experiment("[{metric: acc, goal: maximize}, {metric: latency, goal: minimize}]");
    let records: Vec<TrialRecord> = (0..500u32)
        .map(|i| {
            // Every trial is on the front: accuracy and latency both grow with i.
            let t = trial(
                i,
                Some(TrialPhaseName::Succeeded),
                &[("acc", i as f64), ("latency", i as f64)],
            );
            record(&exp, &t).unwrap()
        })
        .collect();
    let small = serde_json::to_string(&status_for(&exp, &records[..50], None))
        .unwrap()
        .len();
    let s = status_for(&exp, &records, None);
    assert_eq!(s.pareto_front.len(), PARETO_LIMIT);
    assert_eq!(s.pareto_front[0].index, 499, "best first objective first");
    let large = serde_json::to_string(&s).unwrap().len();
    assert!(
        large < small + 256,
        "status grew (beyond longer numbers) from {small} to {large} bytes"
    );
}

#[test]
fn unchanged_conditions_keep_their_transition_time() {
    let exp = experiment("[{metric: acc, goal: maximize}]");
    let records = vec![record(&exp, &trial(0, Some(TrialPhaseName::Running), &[])).unwrap()];
    let first = status_for(&exp, &records, None);
    let again = experiment_status(
        &StatusInput {
            experiment: &exp,
            name: "e",
            generation: Some(2),
            previous: &first,
            finish: None,
            started_at: 100.0,
            now: 900.0,
            gpu_seconds: 12.5,
            artifacts: &Default::default(),
        },
        &records,
    );
    assert_eq!(first, again, "nothing changed, so nothing is written");
    let invalid = invalid_status(&first, Some(3), "spec.x: fix it", 950.0);
    assert_eq!(invalid.phase, Some(crate::api::ExperimentPhase::Failed));
    assert_eq!(invalid.conditions[0].reason, "InvalidSpec");
    assert_eq!(invalid.message.as_deref(), Some("spec.x: fix it"));
}
