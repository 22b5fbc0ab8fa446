//! `nasop bench nb201`: the command line around the harness.

use super::nb201::{Dataset, Table};
use super::{BenchConfig, Summary, run_many};
use crate::strategy::{Algorithm, FidelityKind, FidelitySchedule, Settings, StrategyConfig};
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
}

pub fn run(args: &Nb201Args) -> anyhow::Result<()> {
    let algorithms: Vec<Algorithm> = if args.strategy == "all" {
        Algorithm::ALL
            .into_iter()
            .filter(|a| *a != Algorithm::Grid)
            .collect()
    } else {
        vec![Algorithm::parse(&args.strategy).ok_or_else(|| {
            let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
            anyhow::anyhow!(
                "--strategy {:?} is unknown; use one of {} or all",
                args.strategy,
                names.join(", ")
            )
        })?]
    };
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    anyhow::ensure!(args.workers > 0, "--workers must be at least 1");
    anyhow::ensure!(args.eta > 1.0, "--eta must be above 1");
    let table = Table::load(args.data.as_deref(), args.dataset, args.latency.as_deref())?;
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
    let mut summaries: Vec<Summary> = Vec::new();
    let mut curve_out = match &args.curve {
        Some(p) => {
            let mut f = std::io::BufWriter::new(std::fs::File::create(p)?);
            writeln!(f, "strategy,run,queries,seconds,test_accuracy")?;
            Some(f)
        }
        None => None,
    };
    for algorithm in algorithms {
        let cfg = BenchConfig {
            strategy: StrategyConfig {
                algorithm,
                seed: args.seed,
                settings: settings.clone(),
                fidelity: fidelity.clone(),
            },
            runs: args.runs,
            budget_seconds: args.budget_seconds,
            workers: args.workers,
            epochs: if fidelity.is_some() { 12 } else { args.epochs },
            latency_objective: args.latency.is_some(),
            max_latency_ms: args.max_latency_ms,
        };
        let (summary, results) = run_many(&table, &cfg, args.seed);
        if let Some(f) = curve_out.as_mut() {
            for (run, r) in results.iter().enumerate() {
                for (q, t, acc) in &r.curve {
                    writeln!(f, "{},{run},{q},{t:.1},{acc}", summary.strategy)?;
                }
            }
        }
        if let Some(path) = &args.runs_out {
            let mut f = std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            );
            for r in &results {
                writeln!(
                    f,
                    "{}",
                    serde_json::json!({"strategy": summary.strategy, "run": r})
                )?;
            }
        }
        if !args.json {
            print_row(&summary, summaries.is_empty());
            if args.runs == 1
                && let Some(r) = results.first()
            {
                println!(
                    "  picked {} (NAS-Bench-201 index {}): 200-epoch valid {:.2}, test {:.2} after {} trials",
                    r.picked_architecture.as_deref().unwrap_or("nothing"),
                    r.picked_index.map_or("-".into(), |i| i.to_string()),
                    r.picked_valid,
                    r.picked_test,
                    r.queries
                );
            }
        }
        summaries.push(summary);
    }
    if args.json {
        let text = if summaries.len() == 1 {
            serde_json::to_string(&summaries[0])?
        } else {
            serde_json::to_string(&summaries)?
        };
        println!("{text}");
    }
    Ok(())
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
