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
    /// Benchmarks search strategies on tabular results.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Runs strategies on NAS-Bench-201 (a trial is a table lookup with simulated cost).
    Nb201(nasop::bench::command::Nb201Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(Bench::Nb201(args)) => nasop::bench::command::run(&args),
    }
}
