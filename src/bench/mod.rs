//! The strategy benchmark on NAS-Bench-201: a trial is a table lookup, its cost is simulated
//! training time, and the result is the test accuracy of the architecture the strategy
//! finally picks (the NAS-Bench-201 paper's protocol, Section 5).

pub mod command;
pub mod proposal;

use crate::strategy::{self, Context, Observation, StrategyConfig, Taken, pareto};
use crate::tabular::{Row, Table};
use nasop_core::{Point, Rng};
use serde::Serialize;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// One benchmark setting.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub strategy: StrategyConfig,
    pub runs: usize,
    pub budget_seconds: f64,
    pub workers: usize,
    /// Epochs of an ordinary trial: 12 (the cheap signal) or 200.
    pub epochs: u32,
    /// A second objective, latency (minimised), from the latency column loaded in the table.
    pub latency_objective: bool,
    /// A hard limit on latency in milliseconds.
    pub max_latency_ms: Option<f64>,
    /// Results of this many random architectures (at `epochs`), from an earlier search, that
    /// the strategy observes before it proposes anything (`spec.warmStart`). They cost
    /// nothing here and are never the pick: the pick is this search's own.
    pub warm_start: usize,
}

/// What one run found.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub queries: usize,
    pub seconds_used: f64,
    pub picked_index: Option<u32>,
    pub picked_architecture: Option<String>,
    pub picked_valid: f64,
    pub picked_test: f64,
    /// (queries, simulated seconds, test accuracy of the pick so far) after every result.
    #[serde(skip)]
    pub curve: Vec<(usize, f64, f64)>,
    pub hypervolume: Option<f64>,
}

/// Means and spreads over runs, the form `nasop bench nb201 --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub strategy: String,
    pub fidelity: Option<String>,
    pub dataset: String,
    pub runs: usize,
    pub budget_seconds: f64,
    pub workers: usize,
    pub queries_mean: f64,
    pub valid_mean: f64,
    pub test_mean: f64,
    pub test_std: f64,
    pub test_min: f64,
    pub test_max: f64,
    pub optimum_test: f64,
    /// Share of runs whose pick is within 0.01 points of the table's best test accuracy.
    pub optimum_found: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hypervolume_mean: Option<f64>,
    pub wall_seconds: f64,
}

/// The random stream of a run's warm-start results (apart from its proposals' streams).
const WARM_START_STREAM: u64 = 0x5741_524d_5354_5254;

/// The simulated seconds at which the mean over runs of the pick's test accuracy first
/// reaches `target` (a run without a pick yet counts as `floor`), or None within the runs.
pub fn seconds_to_reach(results: &[RunResult], target: f64, floor: f64) -> Option<f64> {
    let mut events: Vec<(f64, usize, f64)> = results
        .iter()
        .enumerate()
        .flat_map(|(run, r)| r.curve.iter().map(move |(_, t, acc)| (*t, run, *acc)))
        .filter(|(_, _, acc)| acc.is_finite())
        .collect();
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = results.len() as f64;
    let mut current = vec![floor; results.len()];
    let mut sum = floor * n;
    let mut i = 0;
    while i < events.len() {
        let t = events[i].0;
        // Every result at the same instant before the mean is read.
        while i < events.len() && events[i].0 == t {
            let (_, run, acc) = events[i];
            sum += acc - current[run];
            current[run] = acc;
            i += 1;
        }
        if sum / n >= target - 1e-9 {
            return Some(t);
        }
    }
    None
}

/// A running simulated trial, ordered by finish time (earliest first in the heap).
struct Running {
    finish: f64,
    order: usize,
    obs: Observation,
    row: Row,
}

impl PartialEq for Running {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Running {}
impl PartialOrd for Running {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Running {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .finish
            .total_cmp(&self.finish)
            .then(other.order.cmp(&self.order))
    }
}

/// What a simulated trial of `point` at `budget` epochs observes, and its row.
fn simulate(
    table: &Table,
    cfg: &BenchConfig,
    point: Point,
    key: String,
    budget: u32,
) -> (Observation, Row, f64) {
    let row = *table.row(&point);
    let (signal, cost) = if budget >= 200 {
        (row.valid_200ep, row.train_time_200ep)
    } else {
        (row.valid_12ep, row.train_time_200ep * budget as f64 / 200.0)
    };
    let mut objectives = vec![signal];
    if cfg.latency_objective {
        objectives.push(-row.latency_ms);
    }
    let violation = cfg
        .max_latency_ms
        .map_or(0.0, |m| (row.latency_ms - m).max(0.0));
    let obs = Observation {
        point,
        key,
        budget,
        objectives: Some(objectives),
        violation,
    };
    (obs, row, cost)
}

/// Simulates one run with `seed`.
pub fn run_once(table: &Table, cfg: &BenchConfig, seed: u64) -> RunResult {
    let space = &table.space;
    let mut config = cfg.strategy.clone();
    config.seed = seed;
    let mut strategy = strategy::build(&config, space);
    let mut taken = Taken::default();
    let mut running: BinaryHeap<Running> = BinaryHeap::new();
    let mut pending: HashMap<u32, usize> = HashMap::new();
    if cfg.warm_start > 0 {
        // An earlier search's results: distinct random architectures, observed first and
        // taken (they are not trained again).
        let no_pending = HashMap::new();
        let mut ctx = Context {
            space,
            rng: Rng::stream(seed ^ WARM_START_STREAM, 0),
            taken: &mut taken,
            budget: cfg.epochs,
            pending: &no_pending,
        };
        let prior: Vec<_> = (0..cfg.warm_start).filter_map(|_| ctx.random()).collect();
        for p in prior {
            let (obs, _, _) = simulate(table, cfg, p.point, p.key, p.budget);
            strategy.observe(&obs);
        }
    }
    let mut created = 0usize;
    let mut clock = 0.0;
    let mut observed: Vec<(Observation, Row)> = Vec::new();
    let mut best: Option<(u32, f64, Row, String)> = None;
    let mut curve = Vec::new();
    loop {
        let free = cfg.workers.saturating_sub(running.len());
        if free > 0 && clock < cfg.budget_seconds {
            let mut ctx = Context {
                space,
                rng: Rng::stream(seed, created as u64),
                taken: &mut taken,
                budget: cfg.epochs,
                pending: &pending,
            };
            let proposals = strategy.propose(&mut ctx, free);
            for p in proposals {
                let (obs, row, cost) = simulate(table, cfg, p.point, p.key, p.budget);
                *pending.entry(p.budget).or_default() += 1;
                running.push(Running {
                    finish: clock + cost,
                    order: created,
                    obs,
                    row,
                });
                created += 1;
            }
        }
        let Some(done) = running.pop() else { break };
        if done.finish > cfg.budget_seconds {
            // Results that would arrive after the budget is spent do not count.
            break;
        }
        clock = done.finish;
        *pending
            .get_mut(&done.obs.budget)
            .expect("counted when started") -= 1;
        strategy.observe(&done.obs);
        if let Some(v) = done.obs.value() {
            // The pick: the best value at the highest budget evaluated.
            let better = best
                .as_ref()
                .is_none_or(|(b, bv, _, _)| (done.obs.budget, v) > (*b, *bv));
            if better {
                best = Some((done.obs.budget, v, done.row, space.format(&done.obs.point)));
            }
        }
        observed.push((done.obs, done.row));
        curve.push((
            observed.len(),
            clock,
            best.as_ref().map_or(f64::NAN, |b| b.2.test),
        ));
    }
    let hypervolume = cfg
        .latency_objective
        .then(|| normalised_hypervolume(table, &observed));
    RunResult {
        queries: observed.len(),
        seconds_used: clock,
        picked_index: best.as_ref().map(|b| b.2.index),
        picked_architecture: best.as_ref().map(|b| b.3.clone()),
        picked_valid: best.as_ref().map_or(f64::NAN, |b| b.2.valid_200ep),
        picked_test: best.as_ref().map_or(f64::NAN, |b| b.2.test),
        curve,
        hypervolume,
    }
}

/// The hypervolume of the architectures a run would report as its Pareto front (by the
/// objectives it observed), measured in test accuracy and latency, as a share of the
/// hypervolume of the table's true front. Infeasible architectures are left out.
fn normalised_hypervolume(table: &Table, observed: &[(Observation, Row)]) -> f64 {
    let feasible: Vec<&(Observation, Row)> = observed
        .iter()
        .filter(|(o, _)| o.violation == 0.0)
        .collect();
    let objs: Vec<Vec<f64>> = feasible
        .iter()
        .map(|(o, _)| o.objectives.clone().unwrap_or_default())
        .collect();
    let reported: Vec<Vec<f64>> = pareto::front(&objs)
        .into_iter()
        .map(|i| vec![feasible[i].1.test, -feasible[i].1.latency_ms])
        .collect();
    let rows = table.rows();
    let min_test = rows.iter().map(|r| r.test).fold(f64::INFINITY, f64::min);
    let max_lat = rows
        .iter()
        .map(|r| r.latency_ms)
        .fold(f64::NEG_INFINITY, f64::max);
    let reference = [min_test, -max_lat];
    let all: Vec<Vec<f64>> = rows.iter().map(|r| vec![r.test, -r.latency_ms]).collect();
    let truth = pareto::hypervolume_2d(&all, reference);
    if truth > 0.0 {
        pareto::hypervolume_2d(&reported, reference) / truth
    } else {
        0.0
    }
}

/// Runs `cfg.runs` seeded runs on all cores and summarises them.
pub fn run_many(table: &Table, cfg: &BenchConfig, base_seed: u64) -> (Summary, Vec<RunResult>) {
    let started = std::time::Instant::now();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(cfg.runs.max(1));
    let mut results: Vec<Option<RunResult>> = vec![None; cfg.runs];
    std::thread::scope(|s| {
        for (t, chunk) in results
            .chunks_mut(cfg.runs.div_ceil(threads).max(1))
            .enumerate()
        {
            let offset = t * cfg.runs.div_ceil(threads).max(1);
            s.spawn(move || {
                for (k, slot) in chunk.iter_mut().enumerate() {
                    *slot = Some(run_once(
                        table,
                        cfg,
                        base_seed.wrapping_add((offset + k) as u64),
                    ));
                }
            });
        }
    });
    let results: Vec<RunResult> = results
        .into_iter()
        .map(|r| r.expect("every run ran"))
        .collect();
    let n = results.len().max(1) as f64;
    let tests: Vec<f64> = results.iter().map(|r| r.picked_test).collect();
    let mean = |xs: &mut dyn Iterator<Item = f64>| xs.sum::<f64>() / n;
    let test_mean = mean(&mut tests.iter().copied());
    let optimum = table.optimum_test();
    let summary = Summary {
        strategy: cfg.strategy.algorithm.name().to_string(),
        fidelity: cfg
            .strategy
            .fidelity
            .as_ref()
            .map(|f| format!("{:?} rungs {:?} eta {}", f.kind, f.rungs, f.eta)),
        dataset: table.dataset.name().to_string(),
        runs: cfg.runs,
        budget_seconds: cfg.budget_seconds,
        workers: cfg.workers,
        queries_mean: mean(&mut results.iter().map(|r| r.queries as f64)),
        valid_mean: mean(&mut results.iter().map(|r| r.picked_valid)),
        test_mean,
        test_std: (tests.iter().map(|t| (t - test_mean).powi(2)).sum::<f64>() / n).sqrt(),
        test_min: tests.iter().copied().fold(f64::INFINITY, f64::min),
        test_max: tests.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        optimum_test: optimum,
        optimum_found: tests.iter().filter(|t| **t >= optimum - 0.01).count() as f64 / n,
        hypervolume_mean: cfg
            .latency_objective
            .then(|| mean(&mut results.iter().map(|r| r.hypervolume.unwrap_or(0.0)))),
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    (summary, results)
}
