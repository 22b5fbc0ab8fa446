use super::*;
use crate::strategy::{Algorithm, FidelityKind, FidelitySchedule, Settings, StrategyConfig};
use nasop_core::{SearchSpace, Value};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashSet};

fn experiment(algorithm: Algorithm, max_trials: u32, parallelism: u32) -> Experiment {
    Experiment {
        name: "e".into(),
        space: SearchSpace::nas_bench_201(),
        objectives: vec![Objective {
            metric: "val_accuracy".into(),
            maximize: true,
            target: None,
        }],
        constraints: vec![],
        strategy: StrategyConfig {
            algorithm,
            seed: 5,
            settings: Settings::default(),
            fidelity: None,
        },
        early_stopping: None,
        budget: Budget {
            max_trials,
            parallelism,
            max_failed_trials: 2,
            trial_epochs: 10,
            trial_timeout: None,
            deadline: None,
        },
        final_training: None,
    }
}

fn clock(now: f64) -> Clock {
    Clock {
        started_at: 0.0,
        now,
    }
}

/// A synthetic trainer's accuracy: convolutions help.
fn accuracy(point: &[Value]) -> f64 {
    50.0 + 5.0
        * point
            .iter()
            .filter(|v| matches!(v, Value::Choice(3)))
            .count() as f64
}

fn record(t: &NewTrial, phase: TrialPhase, at: f64) -> TrialRecord {
    let done = !phase.is_active();
    let metrics: BTreeMap<String, f64> = if phase == TrialPhase::Succeeded {
        BTreeMap::from([("val_accuracy".into(), accuracy(&t.point))])
    } else {
        BTreeMap::new()
    };
    TrialRecord {
        index: t.index,
        candidate: t.candidate.clone(),
        point: t.point.clone(),
        key: t.key.clone(),
        epochs: t.epochs,
        stage: t.stage,
        phase,
        started_at: Some(at),
        finished_at: done.then_some(at),
        reports: vec![],
        metrics,
    }
}

/// The trials of the experiment's first decision, all running.
fn started(exp: &Experiment) -> Vec<TrialRecord> {
    decide(exp, &[], clock(0.0))
        .create
        .iter()
        .map(|t| record(t, TrialPhase::Running, 0.0))
        .collect()
}

fn finish(
    trials: &mut [TrialRecord],
    index: u32,
    phase: TrialPhase,
    at: f64,
    metrics: &[(&str, f64)],
) {
    let t = trials.iter_mut().find(|t| t.index == index).unwrap();
    t.phase = phase;
    t.finished_at = Some(at);
    t.metrics = metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect();
}

#[test]
fn first_decision_fills_the_parallel_slots() {
    let d = decide(&experiment(Algorithm::Random, 10, 3), &[], clock(0.0));
    assert_eq!(d.create.len(), 3);
    assert_eq!(
        d.create.iter().map(|t| t.index).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(
        d.create
            .iter()
            .all(|t| t.epochs == 10 && t.resume_from.is_none())
    );
    assert!(d.finish.is_none() && d.stop.is_empty());
}

/// A trial decided but never created (its creator died between parallel creates) leaves
/// a gap in the indices; the next decision fills it before numbering on.
#[test]
fn new_trials_fill_the_gaps_in_the_indices_first() {
    let exp = experiment(Algorithm::Random, 10, 4);
    let mut trials = started(&exp);
    trials.retain(|t| t.index != 1 && t.index != 2);
    let d = decide(&exp, &trials, clock(1.0));
    let indices: Vec<u32> = d.create.iter().map(|t| t.index).collect();
    assert_eq!(indices, [1, 2]);
    finish(
        &mut trials,
        0,
        TrialPhase::Succeeded,
        2.0,
        &[("val_accuracy", 60.0)],
    );
    trials.extend(d.create.iter().map(|t| record(t, TrialPhase::Running, 2.0)));
    let d = decide(&exp, &trials, clock(2.0));
    assert_eq!(d.create.iter().map(|t| t.index).collect::<Vec<_>>(), [4]);
    assert_eq!(
        free_indices(&trials, &Default::default())
            .take(3)
            .collect::<Vec<_>>(),
        [4, 5, 6],
        "no gap below 4"
    );
    // An index whose name another object holds is not tried again.
    let mut engine = Engine::new(exp.clone());
    engine.skip_index(4);
    finish(
        &mut trials,
        1,
        TrialPhase::Succeeded,
        3.0,
        &[("val_accuracy", 61.0)],
    );
    let d = engine.decide(&trials, clock(3.0));
    // Trials 0 and 1 are done: two slots, 4 skipped.
    assert_eq!(d.create.iter().map(|t| t.index).collect::<Vec<_>>(), [5, 6]);
}

#[test]
fn never_creates_past_max_trials() {
    let exp = experiment(Algorithm::Random, 4, 3);
    let mut trials = started(&exp);
    finish(
        &mut trials,
        0,
        TrialPhase::Succeeded,
        1.0,
        &[("val_accuracy", 60.0)],
    );
    finish(
        &mut trials,
        1,
        TrialPhase::Succeeded,
        2.0,
        &[("val_accuracy", 61.0)],
    );
    let d = decide(&exp, &trials, clock(3.0));
    assert_eq!(d.create.len(), 1, "only one trial is left in the budget");
    assert_eq!(d.create[0].index, 3);
}

#[test]
fn budget_spent_finishes_only_when_nothing_runs() {
    let exp = experiment(Algorithm::Random, 2, 2);
    let mut trials = started(&exp);
    finish(
        &mut trials,
        0,
        TrialPhase::Succeeded,
        1.0,
        &[("val_accuracy", 60.0)],
    );
    assert_eq!(decide(&exp, &trials, clock(1.0)), Decision::default());
    finish(
        &mut trials,
        1,
        TrialPhase::Succeeded,
        2.0,
        &[("val_accuracy", 70.0)],
    );
    let d = decide(&exp, &trials, clock(2.0));
    let f = d.finish.expect("finished");
    assert!(f.succeeded);
    assert_eq!(f.reason, FinishReason::BudgetSpent);
    assert_eq!(best_trial(&exp, &trials).unwrap().index, 1);
}

#[test]
fn too_many_failures_fail_the_experiment_and_stop_the_rest() {
    let exp = experiment(Algorithm::Random, 10, 4);
    let mut trials = started(&exp);
    for i in 0..2 {
        finish(&mut trials, i, TrialPhase::Failed, 1.0, &[]);
    }
    assert!(
        decide(&exp, &trials, clock(1.0)).finish.is_none(),
        "two failures are allowed"
    );
    finish(&mut trials, 2, TrialPhase::Failed, 1.0, &[]);
    let d = decide(&exp, &trials, clock(1.0));
    assert_eq!(
        d.finish.as_ref().map(|f| (f.succeeded, f.reason)),
        Some((false, FinishReason::TooManyFailures))
    );
    assert_eq!(
        d.stop,
        vec![Stop {
            index: 3,
            reason: StopReason::ExperimentFinished
        }]
    );
    assert!(d.create.is_empty());
}

#[test]
fn target_reached_ends_the_experiment() {
    let mut exp = experiment(Algorithm::Random, 10, 2);
    exp.objectives[0].target = Some(0.9);
    let mut trials = started(&exp);
    finish(
        &mut trials,
        0,
        TrialPhase::Succeeded,
        1.0,
        &[("val_accuracy", 0.85)],
    );
    assert!(decide(&exp, &trials, clock(1.0)).finish.is_none());
    finish(
        &mut trials,
        0,
        TrialPhase::Succeeded,
        1.0,
        &[("val_accuracy", 0.93)],
    );
    let d = decide(&exp, &trials, clock(1.0));
    assert_eq!(
        d.finish.map(|f| f.reason),
        Some(FinishReason::TargetReached)
    );
    assert_eq!(
        d.stop,
        vec![Stop {
            index: 1,
            reason: StopReason::ExperimentFinished
        }]
    );
}

#[test]
fn a_target_outside_the_constraints_does_not_count() {
    let mut exp = experiment(Algorithm::Random, 10, 1);
    exp.objectives[0].target = Some(0.9);
    exp.constraints.push(Constraint {
        metric: "latency_ms".into(),
        min: None,
        max: Some(5.0),
    });
    let mut trials = started(&exp);
    finish(
        &mut trials,
        0,
        TrialPhase::Succeeded,
        1.0,
        &[("val_accuracy", 0.95), ("latency_ms", 9.0)],
    );
    let d = decide(&exp, &trials, clock(1.0));
    assert!(d.finish.is_none());
    assert!(
        best_trial(&exp, &trials).is_none(),
        "an infeasible trial is never the best"
    );
}

#[test]
fn deadline_stops_everything() {
    let mut exp = experiment(Algorithm::Random, 10, 2);
    exp.budget.deadline = Some(100.0);
    let trials = started(&exp);
    assert!(decide(&exp, &trials, clock(99.0)).stop.is_empty());
    let d = decide(&exp, &trials, clock(100.0));
    assert_eq!(d.stop.len(), 2);
    assert!(d.stop.iter().all(|s| s.reason == StopReason::Deadline));
    let f = d.finish.unwrap();
    assert_eq!(
        (f.succeeded, f.reason),
        (false, FinishReason::DeadlineExceeded)
    );
}

#[test]
fn timed_out_trials_are_stopped_and_keep_their_slot() {
    let mut exp = experiment(Algorithm::Random, 10, 2);
    exp.budget.trial_timeout = Some(50.0);
    let mut trials = started(&exp);
    trials[1].started_at = Some(30.0);
    let d = decide(&exp, &trials, clock(60.0));
    assert_eq!(
        d.stop,
        vec![Stop {
            index: 0,
            reason: StopReason::Timeout
        }]
    );
    assert!(
        d.create.is_empty(),
        "the stopped trial still runs until it exits"
    );
}

#[test]
fn median_rule_stops_a_trial_below_the_median() {
    let mut exp = experiment(Algorithm::Random, 10, 4);
    exp.early_stopping = Some(MedianStop {
        min_trials: 2,
        start_step: 2,
    });
    let mut trials = started(&exp);
    let curve = |vals: &[f64]| -> Vec<Report> {
        vals.iter()
            .enumerate()
            .map(|(i, v)| Report {
                step: i as u32 + 1,
                metrics: BTreeMap::from([("val_accuracy".into(), *v)]),
            })
            .collect()
    };
    for (i, vals) in [(0u32, vec![0.5, 0.6, 0.7]), (1, vec![0.6, 0.7, 0.8])] {
        trials[i as usize].reports = curve(&vals);
        finish(
            &mut trials,
            i,
            TrialPhase::Succeeded,
            1.0,
            &[("val_accuracy", *vals.last().unwrap())],
        );
    }
    trials[2].reports = curve(&[0.2]);
    trials[3].reports = curve(&[0.2, 0.3]);
    let d = decide(&exp, &trials, clock(2.0));
    // Trial 2 is before start_step; trial 3 is at step 2 with best 0.3 < median of (0.55, 0.65).
    assert_eq!(
        d.stop,
        vec![Stop {
            index: 3,
            reason: StopReason::EarlyStopped
        }]
    );
    trials[3].reports = curve(&[0.2, 0.9]);
    assert!(decide(&exp, &trials, clock(2.0)).stop.is_empty());
}

#[test]
fn promotions_resume_from_the_lower_rung() {
    let mut exp = experiment(Algorithm::Random, 20, 1);
    exp.strategy.fidelity = Some(FidelitySchedule {
        kind: FidelityKind::Asha,
        rungs: vec![3, 9],
        eta: 2.0,
    });
    let mut trials: Vec<TrialRecord> = Vec::new();
    let mut engine = Engine::new(exp.clone());
    for step in 0..6 {
        let d = engine.decide(&trials, clock(step as f64));
        for t in &d.create {
            let mut r = record(t, TrialPhase::Succeeded, step as f64);
            r.metrics
                .insert("val_accuracy".into(), accuracy(&t.point) + t.epochs as f64);
            trials.push(r);
            if t.epochs == 9 {
                let parent = t.resume_from.expect("a promotion resumes");
                let p = trials.iter().find(|x| x.index == parent).unwrap();
                assert_eq!((p.key.as_str(), p.epochs), (t.key.as_str(), 3));
                return;
            }
        }
    }
    panic!("no promotion in 6 rounds");
}

#[test]
fn the_cached_engine_answers_like_the_pure_function() {
    let exp = experiment(Algorithm::Evolution, 30, 3);
    let mut engine = Engine::new(exp.clone());
    let mut trials: Vec<TrialRecord> = Vec::new();
    for step in 0..40 {
        let now = step as f64;
        let cached = engine.decide(&trials, clock(now));
        assert_eq!(cached, decide(&exp, &trials, clock(now)), "step {step}");
        for t in &cached.create {
            trials.push(record(t, TrialPhase::Running, now));
        }
        // Finish the oldest running trial.
        if let Some(t) = trials.iter_mut().find(|t| t.phase == TrialPhase::Running) {
            t.phase = TrialPhase::Succeeded;
            t.finished_at = Some(now + 0.5);
            t.metrics.insert("val_accuracy".into(), accuracy(&t.point));
        }
        if cached.finish.is_some() {
            return;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Whatever order trials finish in, and however often the runner restarts (a fresh
    /// engine), the experiment never exceeds its budget or parallelism, never repeats a
    /// network at a budget, and ends with exactly maxTrials trials.
    #[test]
    fn budgets_hold_and_nothing_repeats(
        algorithm in prop::sample::select(vec![Algorithm::Random, Algorithm::Evolution, Algorithm::Local, Algorithm::Bayesian, Algorithm::Reinforce]),
        max_trials in 1u32..40,
        parallelism in 1u32..6,
        seed in any::<u64>(),
        fail_every in 0u32..7,
    ) {
        let mut exp = experiment(algorithm, max_trials, parallelism);
        exp.budget.max_failed_trials = 1000;
        let mut engine = Engine::new(exp.clone());
        let mut trials: Vec<TrialRecord> = Vec::new();
        let mut rng = nasop_core::Rng::new(seed);
        for step in 0..10_000 {
            let now = step as f64;
            if rng.below(5) == 0 {
                engine = Engine::new(exp.clone()); // a restart
            }
            let d = engine.decide(&trials, clock(now));
            for t in &d.create {
                trials.push(record(t, TrialPhase::Running, now));
            }
            let active = trials.iter().filter(|t| t.phase.is_active()).count() as u32;
            prop_assert!(active <= parallelism, "{active} running > {parallelism}");
            prop_assert!(trials.len() as u32 <= max_trials);
            let keys: HashSet<(&str, u32)> = trials.iter().map(|t| (t.key.as_str(), t.epochs)).collect();
            prop_assert_eq!(keys.len(), trials.len(), "a network was evaluated twice");
            let indices: HashSet<u32> = trials.iter().map(|t| t.index).collect();
            prop_assert_eq!(indices.len(), trials.len());
            if d.finish.is_some() {
                prop_assert_eq!(trials.len() as u32, max_trials);
                prop_assert!(trials.iter().all(|t| !t.phase.is_active()));
                return Ok(());
            }
            // Some running trial ends, in random order; every fail_every-th fails.
            let running: Vec<usize> = (0..trials.len()).filter(|&i| trials[i].phase.is_active()).collect();
            if !running.is_empty() {
                let i = running[rng.below(running.len())];
                let t = &mut trials[i];
                t.finished_at = Some(now + 0.5);
                if fail_every > 0 && t.index.is_multiple_of(fail_every) {
                    t.phase = TrialPhase::Failed;
                } else {
                    t.phase = TrialPhase::Succeeded;
                    t.metrics.insert("val_accuracy".into(), accuracy(&t.point));
                }
            }
        }
        prop_assert!(false, "the experiment never finished");
    }
}

#[test]
#[ignore = "a timing probe, run by hand"]
fn decide_cost_at_ten_thousand_trials() {
    let exp = experiment(Algorithm::Random, 20_000, 200);
    let mut engine = Engine::new(exp.clone());
    let mut trials: Vec<TrialRecord> = Vec::new();
    let mut t = 0.0;
    while trials.len() < 10_000 {
        let d = engine.decide(&trials, clock(t));
        for n in &d.create {
            trials.push(record(n, TrialPhase::Succeeded, t));
            t += 0.001;
        }
        if trials.len() % 2000 < 200 {
            let started = std::time::Instant::now();
            let _ = engine.decide(&trials, clock(t));
            eprintln!("{} trials: {:?}", trials.len(), started.elapsed());
        }
    }
}

/// Runs `engine` to its end with the synthetic trainer, one trial at a time; returns the
/// trials.
fn run_to_end(engine: &mut Engine) -> Vec<TrialRecord> {
    let mut trials: Vec<TrialRecord> = Vec::new();
    for step in 0..10_000 {
        let d = engine.decide(&trials, clock(step as f64));
        if d.finish.is_some() {
            return trials;
        }
        for t in &d.create {
            trials.push(record(t, TrialPhase::Succeeded, step as f64));
        }
    }
    panic!("the experiment never ended");
}

#[test]
fn a_warm_start_learns_from_prior_results_without_running_them_again() {
    let exp = experiment(Algorithm::Evolution, 40, 1);
    let prior = run_to_end(&mut Engine::new(exp.clone()));
    let prior_keys: HashSet<&str> = prior.iter().map(|t| t.key.as_str()).collect();
    let mut warm = Engine::with_prior(exp.clone(), &prior);
    assert_eq!(warm.prior_results(), prior.len());
    let trials = run_to_end(&mut warm);
    // Its own budget: maxTrials new trials, none of them a prior candidate.
    assert_eq!(trials.len(), 40);
    assert!(
        trials.iter().all(|t| !prior_keys.contains(t.key.as_str())),
        "a prior candidate ran again"
    );
    // Evolution starts from the prior population: its first proposals are mutants of good
    // prior candidates, better than a cold start's random ones.
    let mean = |ts: &[TrialRecord]| {
        ts.iter().map(|t| t.metrics["val_accuracy"]).sum::<f64>() / ts.len() as f64
    };
    let cold = run_to_end(&mut Engine::new(exp));
    assert!(
        mean(&trials[..10]) > mean(&cold[..10]),
        "warm {} vs cold {}",
        mean(&trials[..10]),
        mean(&cold[..10])
    );
}

#[test]
fn prior_trials_that_failed_or_lack_the_objective_are_left_out() {
    let exp = experiment(Algorithm::Random, 4, 1);
    let mut prior = run_to_end(&mut Engine::new(exp.clone()));
    prior[0].phase = TrialPhase::Failed;
    prior[1].metrics.clear();
    assert_eq!(Engine::with_prior(exp, &prior).prior_results(), 2);
}

mod final_training_tests {
    use super::*;
    use crate::final_training;

    fn with_final(top: u32, seeds: u32, max_trials: u32, parallelism: u32) -> Experiment {
        let mut exp = experiment(Algorithm::Random, max_trials, parallelism);
        exp.final_training = Some(FinalTraining {
            top,
            epochs: 30,
            seeds,
        });
        exp
    }

    /// Runs the search: every trial succeeds with its synthetic accuracy, until the engine
    /// turns to final training (or finishes). Returns the trials and that first decision.
    fn search(exp: &Experiment) -> (Vec<TrialRecord>, Decision) {
        let mut engine = Engine::new(exp.clone());
        let mut trials: Vec<TrialRecord> = Vec::new();
        let mut now = 0.0;
        loop {
            now += 1.0;
            let d = engine.decide(&trials, clock(now));
            if d.finish.is_some() || d.create.iter().any(|t| t.stage == Stage::Final) {
                return (trials, d);
            }
            assert!(!d.create.is_empty(), "the search goes on until its budget");
            for t in &d.create {
                trials.push(record(t, TrialPhase::Succeeded, now));
            }
        }
    }

    /// A final-training result: `val` for the objective and `test` beside it.
    fn end_final(t: &mut TrialRecord, val: f64, test: f64, at: f64) {
        t.phase = TrialPhase::Succeeded;
        t.finished_at = Some(at);
        t.metrics = BTreeMap::from([
            ("val_accuracy".to_string(), val),
            ("test_accuracy".to_string(), test),
        ]);
    }

    #[test]
    fn the_search_ends_in_final_training_of_its_best_distinct_candidates() {
        let exp = with_final(2, 3, 12, 2);
        let (mut trials, d) = search(&exp);
        assert_eq!(trials.len(), 12);
        assert!(d.finish.is_none(), "final training follows the search");
        // The two best distinct networks of the search, best first, seeds of their own.
        let chosen: Vec<TrialRecord> = final_training::chosen(&exp, 2, &trials)
            .into_iter()
            .cloned()
            .collect();
        assert_eq!(chosen.len(), 2);
        assert_ne!(chosen[0].key, chosen[1].key);
        let best = accuracy(&chosen[0].point);
        assert!(trials.iter().all(|t| accuracy(&t.point) <= best));
        assert_eq!(d.create.len(), 2, "within the parallelism");
        assert!(d.create.iter().all(|t| t.stage == Stage::Final
            && t.epochs == 30
            && t.key == chosen[0].key
            && t.resume_from.is_none()));
        assert_eq!(
            d.create.iter().map(|t| t.index).collect::<Vec<_>>(),
            vec![12, 13]
        );
        assert_ne!(d.create[0].seed, d.create[1].seed);

        // Run final training to its end; the search's second wins on the mean of
        // val_accuracy, although the first's test accuracy is higher.
        let mut engine = Engine::new(exp.clone());
        let mut now = 100.0;
        let mut pending = d.create;
        let mut made = Vec::new();
        loop {
            for t in &pending {
                let mut r = record(t, TrialPhase::Running, now);
                let second = t.key == chosen[1].key;
                let k = made.len() as f64;
                end_final(
                    &mut r,
                    if second { 0.80 + k * 0.001 } else { 0.78 },
                    if second { 0.70 } else { 0.90 },
                    now,
                );
                made.push(t.clone());
                trials.push(r);
            }
            now += 1.0;
            let d = engine.decide(&trials, clock(now));
            if let Some(f) = d.finish {
                assert!(f.succeeded);
                assert_eq!(f.reason, FinishReason::FinalTrainingDone);
                assert!(f.message.contains("#2"), "{}", f.message);
                break;
            }
            assert!(!d.create.is_empty());
            pending = d.create;
        }
        assert_eq!(made.len(), 6, "2 candidates x 3 seeds");
        assert_eq!(made.iter().filter(|t| t.key == chosen[1].key).count(), 3);
        let finalists =
            final_training::finalists(&exp, exp.final_training.as_ref().unwrap(), &trials);
        let w = final_training::winner(&exp, &finalists).unwrap();
        assert_eq!(w.rank, 2);
        let spread = w.metrics["val_accuracy"];
        assert_eq!(spread.count, 3);
        assert!(spread.std > 0.0 && (spread.mean - 0.8).abs() < 0.01);
        // The trial to ship is the winner's best final-training trial.
        let best = best_trial(&exp, &trials).unwrap();
        assert_eq!((best.stage, &best.key), (Stage::Final, &chosen[1].key));
        assert_eq!(
            best.metrics["val_accuracy"],
            finalists[1]
                .trials
                .iter()
                .map(|t| t.metrics["val_accuracy"])
                .fold(0.0, f64::max)
        );
        // A rebuilt engine agrees (the plan follows from the recorded trials alone).
        assert_eq!(
            decide(&exp, &trials, clock(now)).finish.unwrap().reason,
            FinishReason::FinalTrainingDone
        );
    }

    #[test]
    fn the_same_network_is_chosen_once() {
        let exp = with_final(3, 1, 4, 1);
        let trials: Vec<TrialRecord> = [55.0, 70.0, 70.0, 60.0]
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let mut t = record(
                    &NewTrial {
                        index: i as u32,
                        candidate: format!("c{i}"),
                        key: if i == 2 { "k1".into() } else { format!("k{i}") },
                        point: vec![],
                        epochs: 10,
                        seed: 0,
                        resume_from: None,
                        stage: Stage::Search,
                    },
                    TrialPhase::Succeeded,
                    1.0,
                );
                t.metrics = BTreeMap::from([("val_accuracy".to_string(), *v)]);
                t
            })
            .collect();
        let chosen: Vec<u32> = final_training::chosen(&exp, 3, &trials)
            .iter()
            .map(|t| t.index)
            .collect();
        assert_eq!(chosen, vec![1, 3, 0], "trial 2 is trial 1's network");
    }

    #[test]
    fn a_reached_target_stops_the_search_then_trains_its_best() {
        let mut exp = with_final(1, 2, 10, 2);
        exp.objectives[0].target = Some(60.0);
        let mut trials = started(&exp);
        finish(
            &mut trials,
            0,
            TrialPhase::Succeeded,
            1.0,
            &[("val_accuracy", 65.0)],
        );
        let d = decide(&exp, &trials, clock(1.0));
        assert!(d.finish.is_none() && d.create.is_empty());
        assert_eq!(
            d.stop,
            vec![Stop {
                index: 1,
                reason: StopReason::ExperimentFinished
            }]
        );
        finish(&mut trials, 1, TrialPhase::Stopped, 2.0, &[]);
        let d = decide(&exp, &trials, clock(2.0));
        assert_eq!(d.create.len(), 2);
        assert!(
            d.create
                .iter()
                .all(|t| t.stage == Stage::Final && t.key == trials[0].key)
        );
    }

    #[test]
    fn final_training_that_fails_throughout_fails_the_experiment() {
        let exp = with_final(2, 1, 3, 2);
        let (mut trials, d) = search(&exp);
        for t in &d.create {
            trials.push(record(t, TrialPhase::Failed, 50.0));
        }
        let f = decide(&exp, &trials, clock(51.0)).finish.unwrap();
        assert_eq!(
            (f.succeeded, f.reason),
            (false, FinishReason::FinalTrainingFailed)
        );
        // Nothing to ship; the search's best stays the best trial.
        assert_eq!(best_trial(&exp, &trials).unwrap().stage, Stage::Search);
    }

    #[test]
    fn the_deadline_stops_final_training_too() {
        let mut exp = with_final(1, 2, 2, 2);
        exp.budget.deadline = Some(1000.0);
        let (mut trials, d) = search(&exp);
        for t in &d.create {
            trials.push(record(t, TrialPhase::Running, 50.0));
        }
        assert_eq!(decide(&exp, &trials, clock(999.0)), Decision::default());
        let d = decide(&exp, &trials, clock(1000.0));
        assert_eq!(d.stop.len(), 2);
        assert!(d.stop.iter().all(|s| s.reason == StopReason::Deadline));
        assert_eq!(d.finish.unwrap().reason, FinishReason::DeadlineExceeded);
    }

    #[test]
    fn without_a_succeeded_search_trial_there_is_nothing_to_train() {
        let exp = with_final(2, 2, 2, 2);
        let mut trials = started(&exp);
        finish(&mut trials, 0, TrialPhase::Failed, 1.0, &[]);
        finish(&mut trials, 1, TrialPhase::Failed, 1.0, &[]);
        let d = decide(&exp, &trials, clock(2.0));
        assert!(d.create.is_empty());
        let f = d.finish.unwrap();
        assert_eq!((f.succeeded, f.reason), (false, FinishReason::BudgetSpent));
    }
}
