use super::Strategy;
use super::*;
use nasop_core::Rng;
use nasop_core::Value;
use nasop_core::space::{ArchitectureSpace, CellSpace, Domain, Hyperparameter};
use proptest::prelude::*;

/// A synthetic objective: convolutions are good, plus a deterministic wobble per key.
fn score(space: &SearchSpace, point: &Point) -> Vec<f64> {
    let key = space.key(point);
    let wobble =
        (nasop_core::rng::mix64(key.len() as u64 ^ key.bytes().map(u64::from).sum::<u64>()) % 1000)
            as f64
            / 1000.0;
    let convs = point
        .iter()
        .filter(|v| matches!(v, Value::Choice(3)))
        .count() as f64;
    let ones = point
        .iter()
        .filter(|v| matches!(v, Value::Choice(2)))
        .count() as f64;
    vec![convs + wobble, -(ones + convs * 2.0)]
}

fn config(algorithm: Algorithm, seed: u64) -> StrategyConfig {
    StrategyConfig {
        algorithm,
        seed,
        settings: Settings::default(),
        fidelity: None,
    }
}

/// Runs `rounds` rounds of `parallel` proposals, observing each round's results in order.
/// Returns the proposals and observations.
fn drive(
    strategy: &mut dyn Strategy,
    space: &SearchSpace,
    seed: u64,
    rounds: usize,
    parallel: usize,
) -> (Vec<Proposal>, Vec<Observation>, Taken) {
    let mut taken = Taken::default();
    let pending = HashMap::new();
    let mut proposals = Vec::new();
    let mut observations = Vec::new();
    for _ in 0..rounds {
        let mut ctx = Context {
            space,
            rng: Rng::stream(seed, proposals.len() as u64),
            taken: &mut taken,
            budget: 10,
            pending: &pending,
        };
        let batch = strategy.propose(&mut ctx, parallel);
        for p in &batch {
            let obs = Observation {
                point: p.point.clone(),
                key: p.key.clone(),
                budget: p.budget,
                objectives: Some(score(space, &p.point)),
                violation: 0.0,
            };
            strategy.observe(&obs);
            observations.push(obs);
        }
        proposals.extend(batch);
    }
    (proposals, observations, taken)
}

fn with_hyperparameters() -> SearchSpace {
    SearchSpace::new(
        Some(ArchitectureSpace::Cell(CellSpace {
            nodes: 4,
            operations: nasop_core::arch::NB201_OPERATIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        })),
        vec![
            Hyperparameter {
                name: "lr".into(),
                domain: Domain::Real {
                    min: 1e-3,
                    max: 1.0,
                    log: true,
                },
            },
            Hyperparameter {
                name: "depth".into(),
                domain: Domain::Int { min: 1, max: 30 },
            },
        ],
    )
    .unwrap()
}

#[test]
fn every_strategy_is_deterministic_and_never_repeats() {
    for space in [SearchSpace::nas_bench_201(), with_hyperparameters()] {
        for algorithm in Algorithm::ALL {
            let run = |seed| {
                let mut s = build(&config(algorithm, seed), &space);
                drive(s.as_mut(), &space, seed, 12, 3).0
            };
            let a = run(7);
            assert_eq!(a, run(7), "{algorithm} is not deterministic");
            assert_eq!(a.len(), 36, "{algorithm} proposed too few");
            let keys: std::collections::HashSet<&String> = a.iter().map(|p| &p.key).collect();
            assert_eq!(keys.len(), a.len(), "{algorithm} proposed a network twice");
            assert!(
                a.iter().all(|p| space.contains(&p.point)),
                "{algorithm} left the space"
            );
            if algorithm != Algorithm::Grid {
                assert_ne!(a, run(8), "{algorithm} ignores its seed");
            }
        }
    }
}

#[test]
fn grid_covers_every_distinct_nb201_network_then_stops() {
    let space = SearchSpace::nas_bench_201();
    let mut s = build(&config(Algorithm::Grid, 0), &space);
    let (proposals, _, _) = drive(s.as_mut(), &space, 0, 100, 64);
    assert_eq!(proposals.len(), 4_930);
    assert_eq!(
        space.format(&proposals[0].point),
        "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    );
}

#[test]
fn guided_strategies_beat_random_on_a_synthetic_objective() {
    let space = SearchSpace::nas_bench_201();
    let best_after = |algorithm| -> f64 {
        (0..10u64)
            .map(|seed| {
                let mut s = build(&config(algorithm, seed), &space);
                let (_, obs, _) = drive(s.as_mut(), &space, seed, 60, 1);
                obs.iter()
                    .filter_map(|o| o.value())
                    .fold(f64::MIN, f64::max)
            })
            .sum::<f64>()
            / 10.0
    };
    let random = best_after(Algorithm::Random);
    for algorithm in [
        Algorithm::Evolution,
        Algorithm::Local,
        Algorithm::Reinforce,
        Algorithm::Bayesian,
    ] {
        let v = best_after(algorithm);
        assert!(
            v > random,
            "{algorithm}: {v:.3} is not above random's {random:.3}"
        );
    }
}

#[test]
fn asha_promotes_only_from_the_top_of_a_rung() {
    let space = SearchSpace::nas_bench_201();
    let mut cfg = config(Algorithm::Random, 1);
    cfg.fidelity = Some(FidelitySchedule {
        kind: FidelityKind::Asha,
        rungs: vec![10, 30, 90],
        eta: 3.0,
    });
    let mut strategy = build(&cfg, &space);
    let mut taken = Taken::default();
    let pending = HashMap::new();
    let mut seen: Vec<Observation> = Vec::new();
    let mut promotions = [0usize; 3];
    for round in 0..40u64 {
        let mut ctx = Context {
            space: &space,
            rng: Rng::stream(1, round),
            taken: &mut taken,
            budget: 10,
            pending: &pending,
        };
        let p = strategy.propose(&mut ctx, 1).remove(0);
        let rung = [10, 30, 90].iter().position(|&b| b == p.budget).unwrap();
        promotions[rung] += 1;
        if rung > 0 {
            // ASHA: a promotion comes from the top 1/eta of the rung below, as it stands now.
            let below: Vec<f64> = seen
                .iter()
                .filter(|o| o.budget == [10, 30][rung - 1])
                .map(|o| o.value().unwrap())
                .collect();
            let mine = seen
                .iter()
                .find(|o| o.key == p.key && o.budget == [10, 30][rung - 1])
                .expect("ran at the rung below")
                .value()
                .unwrap();
            let better = below.iter().filter(|v| **v > mine).count();
            assert!(
                better < below.len() / 3,
                "promoted the {}th of {}",
                better + 1,
                below.len()
            );
        }
        let obs = Observation {
            point: p.point.clone(),
            key: p.key.clone(),
            budget: p.budget,
            objectives: Some(score(&space, &p.point)),
            violation: 0.0,
        };
        strategy.observe(&obs);
        seen.push(obs);
    }
    assert!(
        promotions[1] >= 3 && promotions[2] >= 1,
        "promotions per rung: {promotions:?}"
    );
    assert!(
        promotions[0] > promotions[1] && promotions[1] > promotions[2],
        "{promotions:?}"
    );
}

#[test]
fn successive_halving_waits_for_a_rung_to_finish() {
    let space = SearchSpace::nas_bench_201();
    let mut cfg = config(Algorithm::Random, 1);
    cfg.fidelity = Some(FidelitySchedule {
        kind: FidelityKind::SuccessiveHalving,
        rungs: vec![10, 30],
        eta: 2.0,
    });
    let mut strategy = build(&cfg, &space);
    let mut taken = Taken::default();
    for (i, key) in ["a", "b"].iter().enumerate() {
        let p = space.sample(&mut Rng::new(i as u64));
        taken.insert(&space.key(&p), 10);
        strategy.observe(&Observation {
            point: p,
            key: key.to_string(),
            budget: 10,
            objectives: Some(vec![i as f64]),
            violation: 0.0,
        });
    }
    let busy = HashMap::from([(10, 1)]);
    let mut ctx = Context {
        space: &space,
        rng: Rng::new(0),
        taken: &mut taken,
        budget: 10,
        pending: &busy,
    };
    assert!(
        strategy.propose(&mut ctx, 1).iter().all(|p| p.budget == 10),
        "promoted while rung 0 was running"
    );
    let idle = HashMap::new();
    let mut ctx = Context {
        space: &space,
        rng: Rng::new(0),
        taken: &mut taken,
        budget: 10,
        pending: &idle,
    };
    let p = strategy.propose(&mut ctx, 1);
    assert_eq!((p[0].budget, p[0].key.as_str()), (30, "b"));
}

#[test]
fn nsga2_keeps_a_spread_front() {
    let space = SearchSpace::nas_bench_201();
    let mut s = build(&config(Algorithm::Nsga2, 3), &space);
    let (_, obs, _) = drive(s.as_mut(), &space, 3, 80, 1);
    let objs: Vec<Vec<f64>> = obs.iter().map(|o| o.objectives.clone().unwrap()).collect();
    let front = pareto::front(&objs);
    assert!(front.len() >= 4, "front of {} points", front.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// The restart guarantee: a strategy rebuilt from the observations alone proposes exactly
    /// what the original, which also saw its own proposals being made, proposes next.
    #[test]
    fn rebuilt_strategy_proposes_what_the_original_would(
        algorithm in prop::sample::select(Algorithm::ALL.to_vec()),
        seed in any::<u64>(),
        rounds in 1usize..15,
        parallel in 1usize..4,
        asha in any::<bool>(),
    ) {
        let space = SearchSpace::nas_bench_201();
        let mut cfg = config(algorithm, seed);
        if asha {
            cfg.fidelity = Some(FidelitySchedule { kind: FidelityKind::Asha, rungs: vec![10, 30], eta: 3.0 });
        }
        let mut original = build(&cfg, &space);
        let (proposals, observations, mut taken) = drive(original.as_mut(), &space, seed, rounds, parallel);
        let mut rebuilt = build(&cfg, &space);
        for o in &observations {
            rebuilt.observe(o);
        }
        let mut taken2 = taken.clone();
        let pending = HashMap::new();
        let mut a = Context { space: &space, rng: Rng::stream(seed, proposals.len() as u64), taken: &mut taken, budget: 10, pending: &pending };
        let next_original = original.propose(&mut a, parallel);
        let mut b = Context { space: &space, rng: Rng::stream(seed, proposals.len() as u64), taken: &mut taken2, budget: 10, pending: &pending };
        let next_rebuilt = rebuilt.propose(&mut b, parallel);
        prop_assert_eq!(next_original, next_rebuilt);
    }
}
