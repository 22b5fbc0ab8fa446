//! `nasop-bench`: nasop's cluster benchmarks, kept out of the operator's binary and image.
//! Each needs the test control plane (`make testenv-up`, or `make bench-operator` /
//! `make bench-katib`, which start one); `operators --from` only reads saved runs.

mod operator;
mod versus;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "nasop-bench", about = "nasop's cluster benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The operator at scale on the test control plane (needs KUBECONFIG from
    /// `make testenv-up`): pod turnaround, CPU, memory, API requests, long experiments.
    Operator(operator::OperatorBenchArgs),
    /// nasop and Kubeflow Katib side by side on the test control plane (needs KUBECONFIG
    /// from `make testenv-up` and KATIB_STATE from tools/katib/up.sh; `make bench-katib`).
    Operators(versus::VersusArgs),
}

/// The nasop binary the benchmarks run as the operator: the one built beside this one.
pub fn nasop_binary() -> Result<std::path::PathBuf> {
    nasop::local::executor::find_program("nasop")
        .context("nasop was not found beside nasop-bench or on PATH; build both with `cargo build --release -p nasop -p nasop-bench`")
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match Cli::parse().command {
        Command::Operator(args) => {
            let report = runtime.block_on(operator::run(&args))?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                operator::print(&report);
            }
        }
        Command::Operators(args) => {
            let runs = runtime.block_on(versus::run(&args))?;
            if !args.json {
                versus::print(&args, &runs);
            }
        }
    }
    Ok(())
}
