//! `nasop bench proposal`: how long one proposal takes with a long history.

use crate::strategy::{self, Algorithm, Context, Observation, Settings, StrategyConfig, Taken};
use nasop_core::{Rng, SearchSpace, Value};
use std::collections::HashMap;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct ProposalArgs {
    /// Finished trials the strategy has observed before it is timed.
    #[arg(long, default_value_t = 1000)]
    pub history: usize,
    /// Proposals timed per strategy.
    #[arg(long, default_value_t = 50)]
    pub proposals: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct ProposalTiming {
    pub strategy: String,
    pub history: usize,
    /// Mean and worst wall time of one proposal, milliseconds.
    pub mean_ms: f64,
    pub max_ms: f64,
    /// Time to rebuild the strategy from the whole history (a restart), milliseconds.
    pub rebuild_ms: f64,
}

/// Times every strategy on the NAS-Bench-201 space with a synthetic objective.
pub fn run(args: &ProposalArgs) -> Vec<ProposalTiming> {
    let space = SearchSpace::nas_bench_201();
    let value = |p: &[Value]| {
        p.iter()
            .map(|v| {
                if let Value::Choice(i) = v {
                    (*i as f64 - 2.0).abs()
                } else {
                    0.0
                }
            })
            .sum::<f64>()
    };
    let mut out = Vec::new();
    for algorithm in Algorithm::ALL {
        let cfg = StrategyConfig {
            algorithm,
            seed: 1,
            settings: Settings::default(),
            fidelity: None,
        };
        // A history of distinct networks, as an experiment would have.
        let mut taken = Taken::default();
        let mut history = Vec::new();
        let mut rng = Rng::new(9);
        while history.len() < args.history.min(4_000) {
            let p = space.sample(&mut rng);
            let key = space.key(&p);
            if taken.insert(&key, 10) {
                let v = value(&p);
                history.push(Observation {
                    point: p,
                    key,
                    budget: 10,
                    objectives: Some(vec![v, -v]),
                    violation: 0.0,
                });
            }
        }
        let started = Instant::now();
        let mut s = strategy::build(&cfg, &space);
        for o in &history {
            s.observe(o);
        }
        let rebuild_ms = started.elapsed().as_secs_f64() * 1e3;
        let pending = HashMap::new();
        let mut times = Vec::new();
        for k in 0..args.proposals {
            let mut round = taken.clone();
            let mut ctx = Context {
                space: &space,
                rng: Rng::stream(1, (history.len() + k) as u64),
                taken: &mut round,
                budget: 10,
                pending: &pending,
            };
            let t = Instant::now();
            let proposed = s.propose(&mut ctx, 1);
            times.push(t.elapsed().as_secs_f64() * 1e3);
            assert!(proposed.len() <= 1);
        }
        out.push(ProposalTiming {
            strategy: algorithm.name().into(),
            history: history.len(),
            mean_ms: times.iter().sum::<f64>() / times.len().max(1) as f64,
            max_ms: times.iter().copied().fold(0.0, f64::max),
            rebuild_ms,
        });
    }
    out
}

/// The timings as a table.
pub fn print(timings: &[ProposalTiming]) {
    println!(
        "{:<10} {:>8} {:>10} {:>10} {:>11}",
        "strategy", "history", "mean ms", "max ms", "rebuild ms"
    );
    for t in timings {
        println!(
            "{:<10} {:>8} {:>10.3} {:>10.3} {:>11.1}",
            t.strategy, t.history, t.mean_ms, t.max_ms, t.rebuild_ms
        );
    }
}
