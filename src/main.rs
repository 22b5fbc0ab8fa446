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
    }
}
