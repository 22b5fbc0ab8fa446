//! `nasop bench nb201`: the command line around the harness.

use super::{BenchConfig, RunResult, Summary, run_many};
use crate::strategy::{Algorithm, FidelityKind, FidelitySchedule, Settings, StrategyConfig};
use crate::tabular::{Dataset, Table};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Nb201Args {
    /// A folder with nb201.csv (and nb201_hw_latency.csv for latency objectives), plain or
    /// .gz; without it, the copy of data/nasbench201 built into nasop.
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "cifar10")]
    pub dataset: Dataset,
    /// random, grid, evolution, local, reinforce, bayesian, nsga2; or `all`.
    #[arg(long, default_value = "evolution")]
    pub strategy: String,
    #[arg(long, default_value_t = 500)]
    pub runs: usize,
    /// Simulated training seconds per run (the paper: 12000 cifar10, 40000 cifar100,
    /// 120000 imagenet16).
    #[arg(long, default_value_t = 12_000.0)]
    pub budget_seconds: f64,
    /// Simulated parallel workers.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Epochs of an ordinary trial: 12 (the benchmark's search signal) or 200.
    #[arg(long, default_value_t = 12, value_parser = clap::builder::TypedValueParser::map(clap::builder::PossibleValuesParser::new(["12", "200"]), |s| s.parse::<u32>().unwrap()))]
    pub epochs: u32,
    /// Multi-fidelity schedule over the 12- and 200-epoch results.
    #[arg(long, value_parser = ["asha", "successive-halving", "hyperband"])]
    pub fidelity: Option<String>,
    /// Reduction factor of the schedule: promote the best 1/eta of a rung.
    #[arg(long, default_value_t = 8.0)]
    pub eta: f64,
    /// Add latency (this column of nb201_hw_latency.csv, minimised) as a second objective.
    #[arg(long)]
    pub latency: Option<String>,
    /// A hard limit on latency in milliseconds (needs --latency).
    #[arg(long, requires = "latency")]
    pub max_latency_ms: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub population: Option<usize>,
    #[arg(long)]
    pub sample_size: Option<usize>,
    #[arg(long)]
    pub learning_rate: Option<f64>,
    #[arg(long)]
    pub initial_samples: Option<usize>,
    /// Print one JSON object (a JSON array with --strategy all).
    #[arg(long)]
    pub json: bool,
    /// Write every run's result (queries, pick, its accuracies) as JSON lines.
    #[arg(long)]
    pub runs_out: Option<PathBuf>,
    /// Write best-so-far curves (run, queries, seconds, test accuracy of the pick) as CSV.
    #[arg(long)]
    pub curve: Option<PathBuf>,
    /// Compare each strategy started from the results of N random architectures of an
    /// earlier search (spec.warmStart) with the same strategy started cold: the simulated
    /// seconds each needs to reach the cold run's result at --budget-seconds.
    #[arg(long, value_name = "N")]
    pub warm_start: Option<usize>,
}

/// How much sooner a warm-started search reaches the cold one's result.
#[derive(Debug, serde::Serialize)]
pub struct WarmStart {
    pub strategy: String,
    pub prior_results: usize,
    pub runs: usize,
    pub budget_seconds: f64,
    /// Mean test accuracy of the pick at the budget, cold and warm.
    pub cold_test: f64,
    pub warm_test: f64,
    /// Simulated seconds until the mean pick reaches `cold_test`, cold and warm.
    pub cold_seconds: Option<f64>,
    pub warm_seconds: Option<f64>,
}

pub fn run(args: &Nb201Args) -> anyhow::Result<()> {
    let algorithms = algorithms(&args.strategy)?;
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    anyhow::ensure!(args.workers > 0, "--workers must be at least 1");
    anyhow::ensure!(args.eta > 1.0, "--eta must be above 1");
    let table = Table::load(args.data.as_deref(), args.dataset, args.latency.as_deref())?;
    let mut summaries: Vec<Summary> = Vec::new();
    let mut warm: Vec<WarmStart> = Vec::new();
    let mut curve_out = match &args.curve {
        Some(p) => {
            let mut f = std::io::BufWriter::new(std::fs::File::create(p)?);
            writeln!(f, "strategy,run,queries,seconds,test_accuracy")?;
            Some(f)
        }
        None => None,
    };
    for algorithm in algorithms {
        let cfg = config(args, algorithm);
        if let Some(prior) = args.warm_start {
            let w = warm_start(&table, &cfg, prior, args.seed);
            if !args.json {
                print_warm_start(&w, table.dataset.name(), warm.is_empty());
            }
            warm.push(w);
            continue;
        }
        let (summary, results) = run_many(&table, &cfg, args.seed);
        if let Some(f) = curve_out.as_mut() {
            for (run, r) in results.iter().enumerate() {
                for (q, t, acc) in &r.curve {
                    writeln!(f, "{},{run},{q},{t:.1},{acc}", summary.strategy)?;
                }
            }
        }
        if let Some(path) = &args.runs_out {
            append_runs(path, &summary, &results)?;
        }
        if !args.json {
            print_row(&summary, summaries.is_empty());
            if args.runs == 1
                && let Some(r) = results.first()
            {
                print_pick(r);
            }
        }
        summaries.push(summary);
    }
    if args.json && !warm.is_empty() {
        println!("{}", serde_json::to_string(&warm)?);
    } else if args.json {
        let text = if summaries.len() == 1 {
            serde_json::to_string(&summaries[0])?
        } else {
            serde_json::to_string(&summaries)?
        };
        println!("{text}");
    }
    Ok(())
}

/// The strategies `--strategy` names (`all`: every one but grid).
fn algorithms(strategy: &str) -> anyhow::Result<Vec<Algorithm>> {
    if strategy == "all" {
        return Ok(Algorithm::ALL
            .into_iter()
            .filter(|a| *a != Algorithm::Grid)
            .collect());
    }
    let one = Algorithm::parse(strategy).ok_or_else(|| {
        let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
        anyhow::anyhow!(
            "--strategy {strategy:?} is unknown; use one of {} or all",
            names.join(", ")
        )
    })?;
    Ok(vec![one])
}

/// The benchmark setting of one strategy from the command line.
fn config(args: &Nb201Args, algorithm: Algorithm) -> BenchConfig {
    let mut settings = Settings::default();
    if let Some(v) = args.population {
        settings.population = v;
    }
    if let Some(v) = args.sample_size {
        settings.sample_size = v;
    }
    if let Some(v) = args.learning_rate {
        settings.learning_rate = v;
    }
    if let Some(v) = args.initial_samples {
        settings.initial_samples = v;
    }
    let fidelity = args.fidelity.as_deref().map(|f| FidelitySchedule {
        kind: match f {
            "asha" => FidelityKind::Asha,
            "successive-halving" => FidelityKind::SuccessiveHalving,
            _ => FidelityKind::Hyperband,
        },
        rungs: vec![12, 200],
        eta: args.eta,
    });
    BenchConfig {
        strategy: StrategyConfig {
            algorithm,
            seed: args.seed,
            settings,
            fidelity: fidelity.clone(),
        },
        runs: args.runs,
        budget_seconds: args.budget_seconds,
        workers: args.workers,
        epochs: if fidelity.is_some() { 12 } else { args.epochs },
        latency_objective: args.latency.is_some(),
        max_latency_ms: args.max_latency_ms,
        warm_start: 0,
    }
}

/// Appends each run as a JSON line to `path`.
fn append_runs(
    path: &std::path::Path,
    summary: &Summary,
    results: &[RunResult],
) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?,
    );
    for r in results {
        writeln!(
            f,
            "{}",
            serde_json::json!({"strategy": summary.strategy, "run": r})
        )?;
    }
    Ok(())
}

/// What a single run picked.
fn print_pick(r: &RunResult) {
    println!(
        "  picked {} (NAS-Bench-201 index {}): 200-epoch valid {:.2}, test {:.2} after {} trials",
        r.picked_architecture.as_deref().unwrap_or("nothing"),
        r.picked_index.map_or("-".into(), |i| i.to_string()),
        r.picked_valid,
        r.picked_test,
        r.queries
    );
}

/// The same strategy cold and started from `prior` random results, at the same budget.
pub fn warm_start(table: &Table, cfg: &BenchConfig, prior: usize, seed: u64) -> WarmStart {
    let (cold, cold_runs) = run_many(table, cfg, seed);
    let warm_cfg = BenchConfig {
        warm_start: prior,
        ..cfg.clone()
    };
    let (warm, warm_runs) = run_many(table, &warm_cfg, seed);
    let floor = table
        .rows()
        .iter()
        .map(|r| r.test)
        .fold(f64::INFINITY, f64::min);
    WarmStart {
        strategy: cold.strategy,
        prior_results: prior,
        runs: cfg.runs,
        budget_seconds: cfg.budget_seconds,
        cold_test: cold.test_mean,
        warm_test: warm.test_mean,
        cold_seconds: super::seconds_to_reach(&cold_runs, cold.test_mean, floor),
        warm_seconds: super::seconds_to_reach(&warm_runs, cold.test_mean, floor),
    }
}

fn print_warm_start(w: &WarmStart, dataset: &str, header: bool) {
    if header {
        println!(
            "NAS-Bench-201 {dataset}: {} runs, {} simulated s; warm start from {} random prior results",
            w.runs, w.budget_seconds, w.prior_results
        );
        println!(
            "{:<10} {:>10} {:>10} {:>22} {:>8}",
            "strategy", "cold test", "warm test", "warm s to cold result", "ratio"
        );
    }
    println!(
        "{:<10} {:>10.2} {:>10.2} {:>22} {:>8}",
        w.strategy,
        w.cold_test,
        w.warm_test,
        w.warm_seconds
            .map_or("not reached".into(), |s| format!("{s:.0}")),
        w.warm_seconds
            .map_or("-".into(), |s| format!("{:.2}", s / w.budget_seconds))
    );
}

fn print_row(s: &Summary, header: bool) {
    if header {
        println!(
            "NAS-Bench-201 {}: {} runs, {} simulated s, {} worker(s); optimum test {:.2}",
            s.dataset, s.runs, s.budget_seconds, s.workers, s.optimum_test
        );
        println!(
            "{:<10} {:>8} {:>10} {:>16} {:>9} {:>9}{}",
            "strategy",
            "queries",
            "valid",
            "test (mean±std)",
            "optimum",
            "wall s",
            if s.hypervolume_mean.is_some() {
                "  hypervolume"
            } else {
                ""
            }
        );
    }
    println!(
        "{:<10} {:>8.1} {:>10.2} {:>10.2} ± {:.2} {:>8.0}% {:>9.2}{}",
        s.strategy,
        s.queries_mean,
        s.valid_mean,
        s.test_mean,
        s.test_std,
        s.optimum_found * 100.0,
        s.wall_seconds,
        s.hypervolume_mean
            .map(|h| format!("  {h:.4}"))
            .unwrap_or_default()
    );
}
