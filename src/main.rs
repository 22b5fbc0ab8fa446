use clap::{Parser, Subcommand};
use std::path::PathBuf;

// The static image's binary: see Cargo.toml.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// nasop: neural architecture search on Kubernetes and on your laptop.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a NasExperiment manifest on this machine, trials as local processes (or table
    /// lookups); running it again resumes.
    Run {
        manifest: PathBuf,
        /// Where run directories are kept.
        #[arg(long, default_value = "nasop-runs")]
        runs_dir: PathBuf,
        /// Trials at once (default: what the machine can hold, at most the manifest's
        /// parallelism; CPU threads are split between them).
        #[arg(long)]
        parallel: Option<usize>,
        /// Plain log lines instead of a progress bar.
        #[arg(long)]
        plain: bool,
    },
    /// Shows a run directory's trials: the best first.
    Results {
        dir: PathBuf,
        /// One JSON object: experiment, best, pareto_front, trials.
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// Every trial as CSV.
        #[arg(long)]
        csv: bool,
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Draws a run directory's charts (PNG and SVG): best so far against trials and time,
    /// every trial's value, and the Pareto front when there are several objectives.
    Plot {
        dir: PathBuf,
        /// Where to write them (default: DIR/plots).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A trial that looks its candidate up in the NAS-Bench-201 tables (reads NASOP_TRIAL,
    /// writes the result to the termination-message file): for manifests and pods that
    /// should cost nothing to run.
    Nb201Trial {
        /// A folder with the tables (plain or .gz); without it, the copy built into nasop.
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value = "cifar10")]
        dataset: String,
        #[arg(long)]
        latency: Option<String>,
    },
    /// Runs the Kubernetes operator: NasExperiments in the cluster become trial pods.
    #[cfg(feature = "operator")]
    Operator(nasop::operator::OperatorArgs),
    /// Runs the Kubernetes operator (not in this build of nasop: `make build` builds it).
    #[cfg(not(feature = "operator"))]
    Operator {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Runs an unmodified training command as a trial: hands it the candidate and
    /// hyperparameters, reports the metrics it prints (`name=value`) or writes to
    /// TensorBoard, stops it when the search says stop. `nasop wrap -- python train.py --lr {lr}`
    Wrap(nasop::wrap::WrapArgs),
    /// Copies this nasop binary to FILE (executable by anyone): the init container of a
    /// wrapped trial pod (spec.wrap) runs it, as the operator's image has no cp.
    #[command(hide = true)]
    CopySelf { file: PathBuf },
    /// Writes the CRD YAML generated from the API types (crds/ by default), and the Helm
    /// chart's CRD templates.
    Crds {
        #[arg(long, default_value = "crds")]
        out: PathBuf,
        /// Where the chart's CRD templates go; "" skips them.
        #[arg(long, default_value = "charts/nasop/templates/crds")]
        chart_out: PathBuf,
        /// Where the Python client's copy of the NasExperiment CRD goes; "" skips it.
        #[arg(long, default_value = "python/nasop/_crd")]
        python_out: PathBuf,
    },
    /// Serves a web page on this machine for watching searches: a runs directory's
    /// (`nasop ui nasop-runs`) or, with your kubeconfig, a cluster's (`nasop ui --cluster`).
    #[cfg(feature = "ui")]
    Ui(nasop::ui::UiArgs),
    /// Serves the web UI (not in this build of nasop: `make build` builds it).
    #[cfg(not(feature = "ui"))]
    Ui {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Benchmarks search strategies on tabular results, and the UI on a big experiment.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Runs strategies on NAS-Bench-201 (a trial is a table lookup with simulated cost).
    Nb201(Box<nasop::bench::command::Nb201Args>),
    /// Times one proposal of every strategy after a long history.
    Proposal(nasop::bench::proposal::ProposalArgs),
    /// Times the UI's pages on an experiment of 10,000 trials.
    #[cfg(feature = "ui")]
    Ui(nasop::ui::bench::UiBenchArgs),
}

/// A part this nasop was built without (`make demo` builds the local runner alone).
#[cfg(not(all(feature = "operator", feature = "plot", feature = "ui")))]
fn not_built(part: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "this nasop was built without {part} (`make demo` builds only what a local search needs); `make build` builds all of nasop"
    )
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("nasop: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            manifest,
            runs_dir,
            parallel,
            plain,
        } => {
            let dir = nasop::local::run(&nasop::local::RunOptions {
                manifest,
                runs_dir,
                parallel,
                plain,
            })?;
            println!(
                "\nrun directory: {} (nasop results {} --json)",
                dir.display(),
                dir.display()
            );
            Ok(())
        }
        Command::Results {
            dir,
            json,
            csv,
            top,
        } => {
            let run = nasop::local::results::load(&dir)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&nasop::local::results::json(&run))?
                );
            } else if csv {
                nasop::local::results::csv(&run, &mut std::io::stdout().lock())?;
            } else {
                nasop::local::results::print_table(&run.experiment, &run.trials, &run.info, top);
            }
            Ok(())
        }
        #[cfg(not(feature = "plot"))]
        Command::Plot { .. } => Err(not_built("`nasop plot`")),
        #[cfg(feature = "plot")]
        Command::Plot { dir, out } => {
            let run = nasop::local::results::load(&dir)?;
            for path in nasop::local::plot::plot(&run, &out.unwrap_or_else(|| dir.join("plots")))? {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Nb201Trial {
            data,
            dataset,
            latency,
        } => {
            let mut args = vec!["--dataset".to_string(), dataset];
            if let Some(d) = data {
                args.extend(["--data".to_string(), d.display().to_string()]);
            }
            if let Some(l) = latency {
                args.extend(["--latency".to_string(), l]);
            }
            nasop::tabular::nb201_trial(&args)
        }
        #[cfg(not(feature = "operator"))]
        Command::Operator { .. } => Err(not_built("the operator")),
        #[cfg(feature = "operator")]
        Command::Operator(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(nasop::operator::run(args)),
        #[cfg(not(feature = "ui"))]
        Command::Ui { .. } => Err(not_built("`nasop ui`")),
        #[cfg(feature = "ui")]
        Command::Ui(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(nasop::ui::run(args)),
        Command::Wrap(args) => {
            let code = nasop::wrap::run(&args)?;
            std::process::exit(code)
        }
        Command::CopySelf { file } => nasop::wrap::copy_self(&file),
        Command::Crds {
            out,
            chart_out,
            python_out,
        } => {
            fn some(p: &std::path::Path) -> Option<&std::path::Path> {
                (!p.as_os_str().is_empty()).then_some(p)
            }
            for path in nasop::api::write_crds(&out, some(&chart_out), some(&python_out))? {
                println!("wrote {path}");
            }
            Ok(())
        }
        Command::Bench(Bench::Nb201(args)) => nasop::bench::command::run(&args),
        #[cfg(feature = "ui")]
        Command::Bench(Bench::Ui(args)) => nasop::ui::bench::run(&args),
        Command::Bench(Bench::Proposal(args)) => {
            let timings = nasop::bench::proposal::run(&args);
            if args.json {
                println!("{}", serde_json::to_string(&timings)?);
            } else {
                nasop::bench::proposal::print(&timings);
            }
            Ok(())
        }
    }
}
