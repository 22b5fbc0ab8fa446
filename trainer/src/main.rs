//! nasop-trainer: trains one candidate network (or runs a one-shot search) and reports
//! through the trial contract. See `nasop-trainer --help`.

mod artifact;
mod darts;
mod data;
mod dist;
mod model;
mod optim;
mod recipe;
mod storage;
mod train;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use data::{DatasetKind, LoadOptions};
use model::NetConfig;
use nasop_core::Architecture;
use nasop_core::client::Reporter;
use nasop_core::contract::{ENV_TRIAL, Report, RunEnd, TrialInput};
use optim::OptimizerKind;
use recipe::{Origins, Recipe, RecipeName};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
        /// bf16: CUDA autocast in bfloat16, as training runs; fp32: none (CPU is always fp32).
        #[arg(long, value_enum, default_value = "bf16")]
        precision: Precision,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Precision {
    Bf16,
    Fp32,
}

#[derive(Args, Clone, Copy)]
struct NetArgs {
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    input_channels: i64,
    #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
    classes: i64,
    /// Channels of the first stage (NAS-Bench-201: 16).
    #[arg(long, default_value_t = 16, allow_negative_numbers = true)]
    channels: i64,
    /// Cells per stage (NAS-Bench-201: 5).
    #[arg(long, default_value_t = 5, allow_negative_numbers = true)]
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
    /// The training recipe: every setting below that is not given comes from it (default:
    /// small; darts for --mode darts|gdas). The trial's first log line prints it in full.
    #[arg(long, value_enum)]
    recipe: Option<RecipeName>,
    /// Training epochs (small: 10, nb201: 200, nb201-12: 12, darts: 50).
    #[arg(long)]
    epochs: Option<u32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per batch (small: 128, nb201: 256, darts: 64).
    #[arg(long)]
    batch_size: Option<i64>,
    /// The learning rate at the start of the cosine schedule (0.1; darts: 0.025).
    #[arg(long)]
    learning_rate: Option<f64>,
    /// SGD's Nesterov momentum (0.9).
    #[arg(long)]
    momentum: Option<f64>,
    /// L2 weight decay (5e-4; darts: 3e-4).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// sgd (Nesterov) or adam.
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerKind>,
    /// Random crop (pad 4, black) and horizontal flip: true or false (default: nb201 always,
    /// small for natural images: CIFAR).
    #[arg(long)]
    augment: Option<bool>,
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
    /// Channels of the first stage (16, as NAS-Bench-201).
    #[arg(long, allow_negative_numbers = true)]
    channels: Option<i64>,
    /// Cells per stage (5, as NAS-Bench-201).
    #[arg(long, allow_negative_numbers = true)]
    cells_per_stage: Option<i64>,
    /// Share of the training images held out for validation (small: 0.1, nb201: 0.5).
    #[arg(long)]
    valid_fraction: Option<f64>,
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
    /// Save the final model here when the run completes its epochs: model.safetensors,
    /// model.json and model.pt (TorchScript, for torch.jit.load). Default: NASOP_ARTIFACT_DIR.
    #[arg(long)]
    artifact_dir: Option<PathBuf>,
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
            for (flag, value, most) in [
                ("--channels", net.channels, recipe::MAX_CHANNELS),
                (
                    "--cells-per-stage",
                    net.cells_per_stage,
                    recipe::MAX_CELLS_PER_STAGE,
                ),
                ("--input-channels", net.input_channels, 64),
                ("--classes", net.classes, 100_000),
            ] {
                anyhow::ensure!(
                    (1..=most).contains(&value),
                    "{flag} = {value}: must be from 1 to {most}"
                );
            }
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
            precision,
        } => {
            anyhow::ensure!(
                steps > 0 && batch_size > 0 && threads > 0,
                "--steps, --batch-size and --threads must be 1 or more"
            );
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
                precision == Precision::Bf16,
            )?;
            let out = serde_json::json!({
                "implementation": "nasop-trainer", "device": format!("{device:?}"), "params": params,
                "steps": steps, "batch_size": batch_size, "threads": threads, "images_per_second": images_per_second,
                "precision": if device.is_cuda() && precision == Precision::Bf16 { "bf16" } else { "fp32" },
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

/// The trial's description (NASOP_TRIAL), if set.
fn read_trial() -> Result<Option<TrialInput>> {
    let Ok(text) = std::env::var(ENV_TRIAL) else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .with_context(|| format!("{ENV_TRIAL} is not a valid trial description"))
}

/// The run's settings: the recipe, the flags over it, the trial's budget and hyperparameters
/// over those; checked, with the origin of each value for messages.
fn resolve(args: &mut TrainArgs, trial: Option<&TrialInput>) -> Result<Recipe> {
    let mut origins = Origins::default();
    let one_shot = args.mode != Mode::Train;
    let mut name = args.recipe.unwrap_or(if one_shot {
        RecipeName::Darts
    } else {
        RecipeName::Small
    });
    if let Some(value) = trial.and_then(|t| t.hyperparameters.get("recipe")) {
        name = recipe::recipe_hyperparameter(value)?;
    }
    let mut r = Recipe::named(name);
    macro_rules! flag {
        ($field:ident, $flag:literal) => {
            if let Some(v) = args.$field {
                r.$field = v;
                origins.set(stringify!($field), $flag);
            }
        };
    }
    flag!(epochs, "--epochs");
    flag!(batch_size, "--batch-size");
    flag!(learning_rate, "--learning-rate");
    flag!(momentum, "--momentum");
    flag!(weight_decay, "--weight-decay");
    flag!(optimizer, "--optimizer");
    flag!(valid_fraction, "--valid-fraction");
    flag!(channels, "--channels");
    flag!(cells_per_stage, "--cells-per-stage");
    if args.augment.is_some() {
        r.augment = args.augment;
        origins.set("augment", "--augment");
    }
    if let Some(t) = trial {
        args.arch = Some(
            t.architecture
                .as_ref()
                .map(|a| a.string.clone())
                .unwrap_or_else(|| {
                    t.candidate
                        .split(';')
                        .next()
                        .unwrap_or_default()
                        .to_string()
                }),
        );
        args.seed = t.seed;
        r.epochs = t.budget.epochs;
        origins.set("epochs", "NASOP_TRIAL budget.epochs");
        for (name, value) in &t.hyperparameters {
            if name != "recipe" && !recipe::apply_hyperparameter(&mut r, &mut origins, name, value)?
            {
                // Other hyperparameters are the user's own trainer's business.
                eprintln!(
                    "nasop-trainer: ignoring hyperparameter {name} (not one of recipe, learning_rate, momentum, weight_decay, batch_size, channels, cells_per_stage, optimizer, valid_fraction, augment)"
                );
            }
        }
    }
    recipe::validate(&r, &origins)?;
    if args.threads == Some(0) {
        bail!("--threads = 0: must be 1 or more (or leave it out for all cores)");
    }
    if one_shot && !(2..=10).contains(&args.nodes) {
        bail!("--nodes = {}: must be from 2 to 10", args.nodes);
    }
    Ok(r)
}

/// The bucket locations (`s3://`) among the checkpoint, resume and artifact locations,
/// each mirrored in a local directory that the flags then name (storage.rs).
struct Mirrors {
    checkpoint: Option<Arc<storage::Remote>>,
    artifact: Option<storage::Remote>,
}

impl Mirrors {
    fn open(args: &mut TrainArgs) -> Result<Mirrors> {
        let remote = |dir: &Option<PathBuf>| {
            dir.as_deref()
                .filter(|d| storage::is_remote(d))
                .map(|d| d.to_string_lossy().into_owned())
        };
        // The state first: a checkpoint is complete only once its state is there.
        let [weights, optimizer, state] = train::CHECKPOINT_FILES;
        let checkpoint_files = [state, weights, optimizer];
        let mut mirrors = Mirrors {
            checkpoint: None,
            artifact: None,
        };
        if let Some(url) = remote(&args.checkpoint_dir) {
            let r = storage::Remote::open(&url, storage::scratch("checkpoint"))?;
            // A bucket that refuses writes fails the trial now, not after an epoch.
            r.probe()?;
            if r.download(&checkpoint_files)? {
                eprintln!("nasop-trainer: checkpoint downloaded from {url}");
            }
            args.checkpoint_dir = Some(r.local.clone());
            mirrors.checkpoint = Some(Arc::new(r));
        }
        if let Some(url) = remote(&args.resume_from) {
            let r = storage::Remote::open(&url, storage::scratch("resume"))?;
            anyhow::ensure!(
                r.download(&checkpoint_files)?,
                "resuming from {url}: no checkpoint there (the parent trial left none)"
            );
            args.resume_from = Some(r.local.clone());
        }
        if let Some(url) = remote(&args.artifact_dir) {
            let r = storage::Remote::open(&url, storage::scratch("artifact"))?;
            r.probe()?;
            args.artifact_dir = Some(r.local.clone());
            mirrors.artifact = Some(r);
        }
        Ok(mirrors)
    }
}

fn train(mut args: TrainArgs) -> Result<()> {
    let rendezvous = dist::Rendezvous::from_env(|name| std::env::var(name).ok());
    let rank = match &rendezvous {
        Ok(Some(r)) => r.rank,
        _ => 0,
    };
    let mut reporter = Reporter::from_env("nasop-trainer", args.termination_file.clone());
    if rank > 0 {
        // Rank 0 reports for the whole run (the operator refuses other ranks' reports).
        reporter.stay_quiet();
    }
    // A run that cannot train says why where the operator and `nasop run` look: the
    // termination message (a Failed trial's reason), besides stderr.
    let result = rendezvous
        .and_then(|r| train_reporting(&mut args, &reporter, r))
        .inspect_err(|e| {
            let at = if rank > 0 {
                format!("rank {rank}: ")
            } else {
                String::new()
            };
            reporter.fail(&format!("{at}{e:#}"))
        });
    // The local mirrors of bucket locations (storage.rs), whether the run succeeded or not:
    // what mattered is uploaded by now.
    let _ = std::fs::remove_dir_all(storage::scratch_root());
    result
}

fn train_reporting(
    args: &mut TrainArgs,
    reporter: &Reporter,
    rendezvous: Option<dist::Rendezvous>,
) -> Result<()> {
    let trial = read_trial()?;
    let recipe = resolve(args, trial.as_ref())?;
    eprintln!("nasop-trainer: {recipe}");
    locations_from_env(args);
    let mirrors = Mirrors::open(args)?;
    set_threads(args);
    let device = parse_device(&args.device)?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(args.dataset.default_dir()));
    let terminate = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&terminate))
        .context("installing the SIGTERM handler")?;
    // Check the architecture before the (slow) data load.
    let arch = match args.mode {
        Mode::Train => Some(checked_architecture(args, &recipe)?),
        Mode::Darts | Mode::Gdas => None,
    };
    if let Some(r) = &rendezvous {
        anyhow::ensure!(
            args.mode == Mode::Train,
            "WORLD_SIZE={}: a one-shot search (--mode darts|gdas) runs as one process; data-parallel runs train one architecture (--mode train)",
            r.world
        );
    }
    let data = load_data(args, &recipe, &data_dir)?;
    let group = match &rendezvous {
        Some(r) => {
            eprintln!(
                "nasop-trainer: rank {} of {}, joining the process group at {}:{}",
                r.rank, r.world, r.addr, r.port
            );
            Some(dist::Group::join(r)?)
        }
        None => None,
    };
    let net = NetConfig {
        channels: recipe.channels,
        cells_per_stage: recipe.cells_per_stage,
        input_channels: data.channels,
        classes: data.classes,
    };
    let outcome = match arch {
        Some(arch) => {
            let cfg = train_config(args, &recipe, arch, net, device, data.augment, &mirrors);
            train::train(&cfg, &data, reporter, &terminate, group.as_ref())?
        }
        None => {
            let cfg = search_config(args, &recipe, net, device);
            darts::search(&cfg, &data, reporter, &terminate)?
        }
    };
    if let Some(g) = group.as_ref().filter(|g| !g.is_primary()) {
        // Rank 0 reports the run's result; this rank ends as it does.
        eprintln!("nasop-trainer: rank {}: {:?}", g.rank, outcome.ending);
        if outcome.ending == train::Ending::Terminated {
            std::process::exit(143);
        }
        return Ok(());
    }
    let step = outcome.metrics.get("epoch").copied().unwrap_or_default() as u32;
    if outcome.ending == train::Ending::Terminated || reporter.superseded() {
        // The final report says the run did not earn its result: the search runs it again
        // from the checkpoint instead of recording an epoch-1 value as the trial's.
        reporter.finish(&Report {
            step,
            metrics: outcome.metrics,
            info: BTreeMap::new(),
            end: Some(RunEnd::Interrupted),
        });
        eprintln!(
            "nasop-trainer: {}; the last completed epoch is checkpointed",
            if reporter.superseded() {
                "this attempt no longer counts"
            } else {
                "terminated"
            }
        );
        std::process::exit(143);
    }
    let end = match outcome.ending {
        train::Ending::Completed => RunEnd::Completed,
        _ => RunEnd::Stopped,
    };
    let info = final_info(outcome.info, &outcome.ending, &mirrors, trial.as_ref())?;
    let last = Report {
        step,
        metrics: outcome.metrics,
        info,
        end: Some(end),
    };
    reporter.send(&last);
    reporter.finish(&last);
    Ok(())
}

/// The optional parts of the contract fill the location flags that were not given.
fn locations_from_env(args: &mut TrainArgs) {
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
    args.artifact_dir = args
        .artifact_dir
        .take()
        .or_else(|| env_path(nasop_core::contract::ENV_ARTIFACT_DIR));
}

/// Sets libtorch's CPU threads: the flag, else the contract's, else all cores.
fn set_threads(args: &mut TrainArgs) {
    if args.threads.is_none() {
        args.threads = std::env::var(nasop_core::contract::ENV_THREADS)
            .ok()
            .and_then(|t| t.parse().ok());
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tch::set_num_threads(threads as i32);
}

/// The architecture to train, parsed and built once as a small CPU network: one the
/// trainer cannot build fails here, not after the data load.
fn checked_architecture(args: &TrainArgs, recipe: &Recipe) -> Result<Architecture> {
    let text = args
        .arch
        .as_deref()
        .context("--arch is required (or NASOP_TRIAL with an architecture)")?;
    let arch = Architecture::parse(text)?;
    model::Network::new(
        &tch::nn::VarStore::new(Device::Cpu).root(),
        &arch,
        NetConfig {
            channels: recipe.channels.min(16),
            cells_per_stage: 1,
            ..NetConfig::default()
        },
    )?;
    Ok(arch)
}

/// The dataset, split as the recipe says.
fn load_data(args: &TrainArgs, recipe: &Recipe, data_dir: &Path) -> Result<data::Dataset> {
    let mut data = data::load(
        args.dataset,
        data_dir,
        &LoadOptions {
            valid_fraction: recipe.valid_fraction,
            limit: args.limit,
            seed: args.seed,
        },
    )?;
    // The recipe's choice, or the loader's default (natural images only).
    if let Some(augment) = recipe.augment {
        data.augment = augment;
    }
    Ok(data)
}

/// The settings of a training run (`--mode train`).
fn train_config(
    args: &TrainArgs,
    recipe: &Recipe,
    arch: Architecture,
    net: NetConfig,
    device: Device,
    augment: bool,
    mirrors: &Mirrors,
) -> train::TrainConfig {
    train::TrainConfig {
        arch,
        net,
        epochs: recipe.epochs,
        seed: args.seed,
        batch_size: recipe.batch_size,
        learning_rate: recipe.learning_rate,
        momentum: recipe.momentum,
        weight_decay: recipe.weight_decay,
        optimizer: recipe.optimizer,
        device,
        checkpoint_dir: args.checkpoint_dir.clone(),
        resume_from: args.resume_from.clone(),
        max_batches: args.max_batches,
        artifact_dir: args.artifact_dir.clone(),
        recipe: recipe.to_json(augment, args.seed),
        checkpoint_remote: mirrors.checkpoint.clone(),
    }
}

/// The settings of a one-shot search (`--mode darts|gdas`).
fn search_config(
    args: &TrainArgs,
    recipe: &Recipe,
    net: NetConfig,
    device: Device,
) -> darts::SearchConfig {
    darts::SearchConfig {
        method: if args.mode == Mode::Darts {
            darts::OneShot::Darts
        } else {
            darts::OneShot::Gdas
        },
        nodes: args.nodes,
        operations: args.operations.clone(),
        net,
        epochs: recipe.epochs,
        seed: args.seed,
        batch_size: recipe.batch_size,
        learning_rate: recipe.learning_rate,
        momentum: recipe.momentum,
        weight_decay: recipe.weight_decay,
        device,
        max_batches: args.max_batches,
    }
}

/// The final report's info: the run's own, with the model's bucket location once it is
/// uploaded there, how the run ended and the trial.
fn final_info(
    mut info: BTreeMap<String, String>,
    ending: &train::Ending,
    mirrors: &Mirrors,
    trial: Option<&TrialInput>,
) -> Result<BTreeMap<String, String>> {
    if let (Some(remote), Some(_)) = (
        &mirrors.artifact,
        info.get(nasop_core::contract::INFO_ARTIFACT),
    ) {
        remote.upload(&[
            artifact::DESCRIPTION,
            artifact::WEIGHTS,
            artifact::TORCHSCRIPT,
        ])?;
        eprintln!("nasop-trainer: the model is uploaded to {}", remote.url());
        info.insert(
            nasop_core::contract::INFO_ARTIFACT.to_string(),
            remote.url().to_string(),
        );
    }
    info.insert("ending".into(), format!("{ending:?}"));
    if let Some(t) = trial {
        info.insert("trial".into(), t.trial.clone());
    }
    Ok(info)
}
