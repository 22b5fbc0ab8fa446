use clap::{Parser, Subcommand};

/// nasop: neural architecture search on Kubernetes and on your laptop.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes the CRD YAML generated from the API types (crds/ by default).
    Crds {
        #[arg(long, default_value = "crds")]
        out: std::path::PathBuf,
    },
    /// Benchmarks search strategies on tabular results.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Runs strategies on NAS-Bench-201 (a trial is a table lookup with simulated cost).
    Nb201(Box<nasop::bench::command::Nb201Args>),
    /// Times one proposal of every strategy after a long history.
    Proposal(nasop::bench::proposal::ProposalArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds { out } => {
            for path in nasop::api::write_crds(&out)? {
                println!("wrote {path}");
            }
            Ok(())
        }
        Command::Bench(Bench::Nb201(args)) => nasop::bench::command::run(&args),
        Command::Bench(Bench::Proposal(args)) => {
            let timings = nasop::bench::proposal::run(&args);
            if args.json {
                println!("{}", serde_json::to_string(&timings)?);
            } else {
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
            Ok(())
        }
    }
}
