//! nasop-trainer: trains one candidate network (or runs a one-shot search) and reports
//! through the trial contract. See `nasop-trainer --help`.

mod darts;
mod data;
mod model;
mod optim;
mod report;
mod train;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use data::{DatasetKind, LoadOptions};
use model::NetConfig;
use nasop_core::Architecture;
use nasop_core::contract::{ENV_TRIAL, Report, TrialInput};
use optim::OptimizerKind;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tch::Device;

#[derive(Parser)]
#[command(
    version,
    about = "Trains nasop trial networks with libtorch and reports through the trial contract"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prints the trainable parameter count of an architecture's network.
    Params {
        /// One or more architectures; one count per line.
        #[arg(long, num_args = 1..)]
        arch: Vec<String>,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Trains an architecture (or searches with --mode darts|gdas), printing one JSON line per
    /// epoch and a last line with the final metrics. With NASOP_TRIAL set, the trial's
    /// architecture, seed, epochs and hyperparameters override the flags.
    Train(Box<TrainArgs>),
    /// Trains an architecture's network on random CIFAR-sized batches for a fixed number of
    /// steps and prints images/s as JSON (compare with trainer/bench/pytorch_nb201.py).
    Bench {
        #[arg(long)]
        arch: String,
        #[arg(long, default_value_t = 30)]
        steps: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        #[arg(long, default_value_t = 64)]
        batch_size: i64,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// cpu or cuda.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

#[derive(Args, Clone, Copy)]
struct NetArgs {
    #[arg(long, default_value_t = 3)]
    input_channels: i64,
    #[arg(long, default_value_t = 10)]
    classes: i64,
    /// Channels of the first stage (NAS-Bench-201: 16).
    #[arg(long, default_value_t = 16)]
    channels: i64,
    /// Cells per stage (NAS-Bench-201: 5).
    #[arg(long, default_value_t = 5)]
    cells_per_stage: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Train,
    Darts,
    Gdas,
}

#[derive(Args)]
struct TrainArgs {
    /// The architecture (NAS-Bench-201 string or op@width layers); not needed with --mode darts|gdas.
    #[arg(long)]
    arch: Option<String>,
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    dataset: DatasetKind,
    /// Where the dataset's files are (default: the dataset's usual place).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 10)]
    epochs: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 128)]
    batch_size: i64,
    #[arg(long, default_value_t = 0.1)]
    learning_rate: f64,
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    #[arg(long, value_enum, default_value = "sgd")]
    optimizer: OptimizerKind,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, value_enum, default_value = "train")]
    mode: Mode,
    /// Cell nodes and operations of the one-shot search space.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,skip_connect,nor_conv_1x1,nor_conv_3x3,avg_pool_3x3"
    )]
    operations: Vec<String>,
    #[arg(long, default_value_t = 16)]
    channels: i64,
    #[arg(long, default_value_t = 5)]
    cells_per_stage: i64,
    /// Share of the training images held out for validation.
    #[arg(long, default_value_t = 0.1)]
    valid_fraction: f64,
    /// Use at most this many training images (0: all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// End each epoch after this many batches (0: all), for quick checks.
    #[arg(long, default_value_t = 0)]
    max_batches: usize,
    /// Checkpoint every epoch here, and resume from it when it holds one.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Continue another trial's checkpoint (a promotion to more epochs).
    #[arg(long)]
    resume_from: Option<PathBuf>,
    /// Where to write the final report (default: NASOP_TERMINATION_PATH, or
    /// /dev/termination-log when it exists).
    #[arg(long)]
    termination_file: Option<PathBuf>,
    /// cpu, cuda, or auto (CUDA when available).
    #[arg(long, default_value = "auto")]
    device: String,
}

unsafe extern "C" {
    /// csrc/autocast.cpp: CUDA autocast in bfloat16 instead of float16.
    fn nasop_autocast_cuda_bf16();
}

/// Sets CUDA autocast to bfloat16 (a no-op on CPU runs).
pub fn use_bf16_autocast() {
    // SAFETY: a plain libtorch setter with no arguments and no preconditions.
    unsafe { nasop_autocast_cuda_bf16() }
}

fn main() {
    use_bf16_autocast();
    if let Err(e) = run() {
        eprintln!("nasop-trainer: error: {e:#}");
        std::process::exit(2);
    }
}

fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Params { arch, net } => {
            let config = NetConfig {
                channels: net.channels,
                cells_per_stage: net.cells_per_stage,
                input_channels: net.input_channels,
                classes: net.classes,
            };
            for text in arch {
                let arch = Architecture::parse(&text)?;
                let vs = tch::nn::VarStore::new(Device::Cpu);
                model::Network::new(&vs.root(), &arch, config)?;
                println!("{}", model::parameter_count(&vs));
            }
            Ok(())
        }
        Command::Train(args) => train(*args),
        Command::Bench {
            arch,
            steps,
            warmup,
            batch_size,
            threads,
            device,
        } => {
            tch::set_num_threads(threads as i32);
            let device = parse_device(&device)?;
            let arch = Architecture::parse(&arch)?;
            let (images_per_second, params) = train::throughput(
                &arch,
                NetConfig::default(),
                steps,
                warmup,
                batch_size,
                device,
            )?;
            let out = serde_json::json!({
                "implementation": "nasop-trainer", "device": format!("{device:?}"), "params": params,
                "steps": steps, "batch_size": batch_size, "threads": threads, "images_per_second": images_per_second,
            });
            println!("{out}");
            Ok(())
        }
    }
}

fn parse_device(name: &str) -> Result<Device> {
    Ok(match name {
        "cpu" => Device::Cpu,
        "cuda" => {
            anyhow::ensure!(
                tch::Cuda::is_available(),
                "--device cuda: no CUDA device is available (is the GPU PyTorch's torch/lib first on LD_LIBRARY_PATH?)"
            );
            Device::Cuda(0)
        }
        "auto" => Device::cuda_if_available(),
        other => bail!("--device {other:?}: use cpu, cuda or auto"),
    })
}

/// Applies NASOP_TRIAL (if set) over the flags.
fn apply_trial(args: &mut TrainArgs) -> Result<Option<TrialInput>> {
    let Ok(text) = std::env::var(ENV_TRIAL) else {
        return Ok(None);
    };
    let trial: TrialInput = serde_json::from_str(&text)
        .with_context(|| format!("{ENV_TRIAL} is not a valid trial description"))?;
    args.arch = Some(
        trial
            .architecture
            .as_ref()
            .map(|a| a.string.clone())
            .unwrap_or_else(|| {
                trial
                    .candidate
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            }),
    );
    args.seed = trial.seed;
    args.epochs = trial.budget.epochs;
    for (name, value) in &trial.hyperparameters {
        let number = || {
            value
                .as_f64()
                .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        };
        let bad =
            || anyhow::anyhow!("{ENV_TRIAL}: hyperparameter {name} = {value} is not a number");
        match name.as_str() {
            "learning_rate" | "lr" => args.learning_rate = number().ok_or_else(bad)?,
            "weight_decay" => args.weight_decay = number().ok_or_else(bad)?,
            "batch_size" => args.batch_size = number().ok_or_else(bad)? as i64,
            "channels" => args.channels = number().ok_or_else(bad)? as i64,
            "cells_per_stage" => args.cells_per_stage = number().ok_or_else(bad)? as i64,
            "optimizer" => {
                args.optimizer = match value.as_str() {
                    Some("sgd") => OptimizerKind::Sgd,
                    Some("adam") => OptimizerKind::Adam,
                    _ => bail!("{ENV_TRIAL}: hyperparameter optimizer = {value}: use sgd or adam"),
                }
            }
            // Other hyperparameters are the user's own trainer's business.
            _ => eprintln!(
                "nasop-trainer: ignoring hyperparameter {name} (not one of learning_rate, weight_decay, batch_size, channels, cells_per_stage, optimizer)"
            ),
        }
    }
    Ok(Some(trial))
}

fn train(mut args: TrainArgs) -> Result<()> {
    let trial = apply_trial(&mut args)?;
    // The optional parts of the contract fill flags that were not given.
    let env_path = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    args.checkpoint_dir = args
        .checkpoint_dir
        .take()
        .or_else(|| env_path(nasop_core::contract::ENV_CHECKPOINT_DIR));
    args.resume_from = args
        .resume_from
        .take()
        .or_else(|| env_path(nasop_core::contract::ENV_RESUME_FROM));
    if args.threads.is_none() {
        args.threads = std::env::var(nasop_core::contract::ENV_THREADS)
            .ok()
            .and_then(|t| t.parse().ok());
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tch::set_num_threads(threads as i32);
    let device = parse_device(&args.device)?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(args.dataset.default_dir()));
    let terminate = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&terminate))
        .context("installing the SIGTERM handler")?;
    let reporter = report::Reporter::from_env(args.termination_file.clone());
    // Check the architecture before the (slow) data load.
    let arch = match args.mode {
        Mode::Train => {
            let text = args
                .arch
                .as_deref()
                .context("--arch is required (or NASOP_TRIAL with an architecture)")?;
            let arch = Architecture::parse(text)?;
            model::Network::new(
                &tch::nn::VarStore::new(Device::Cpu).root(),
                &arch,
                NetConfig::default(),
            )?;
            Some(arch)
        }
        Mode::Darts | Mode::Gdas => None,
    };
    let data = data::load(
        args.dataset,
        &data_dir,
        &LoadOptions {
            valid_fraction: args.valid_fraction,
            limit: args.limit,
            seed: args.seed,
        },
    )?;
    let net = NetConfig {
        channels: args.channels,
        cells_per_stage: args.cells_per_stage,
        input_channels: data.channels,
        classes: data.classes,
    };
    let outcome = match arch {
        Some(arch) => {
            let cfg = train::TrainConfig {
                arch,
                net,
                epochs: args.epochs,
                seed: args.seed,
                batch_size: args.batch_size,
                learning_rate: args.learning_rate,
                weight_decay: args.weight_decay,
                optimizer: args.optimizer,
                device,
                checkpoint_dir: args.checkpoint_dir.clone(),
                resume_from: args.resume_from.clone(),
                max_batches: args.max_batches,
            };
            train::train(&cfg, &data, &reporter, &terminate)?
        }
        None => {
            let cfg = darts::SearchConfig {
                method: if args.mode == Mode::Darts {
                    darts::OneShot::Darts
                } else {
                    darts::OneShot::Gdas
                },
                nodes: args.nodes,
                operations: args.operations.clone(),
                net,
                epochs: args.epochs,
                seed: args.seed,
                batch_size: args.batch_size,
                learning_rate: if args.learning_rate == 0.1 {
                    0.025
                } else {
                    args.learning_rate
                },
                device,
                max_batches: args.max_batches,
            };
            darts::search(&cfg, &data, &reporter, &terminate)?
        }
    };
    if outcome.ending == train::Ending::Terminated {
        eprintln!("nasop-trainer: terminated; the last completed epoch is checkpointed");
        std::process::exit(143);
    }
    let mut info: BTreeMap<String, String> = outcome.info;
    info.insert("ending".into(), format!("{:?}", outcome.ending));
    if let Some(t) = &trial {
        info.insert("trial".into(), t.trial.clone());
    }
    let step = outcome.metrics.get("epoch").copied().unwrap_or_default() as u32;
    let last = Report {
        step,
        metrics: outcome.metrics,
        info,
    };
    reporter.send(&last);
    reporter.finish(&last);
    Ok(())
}
