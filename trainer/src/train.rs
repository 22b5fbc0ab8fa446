//! Training a fixed architecture: SGD (Nesterov) or Adam with a cosine schedule, validation
//! every epoch, a checkpoint every epoch, reports through the trial contract, the test set
//! at the end.

use crate::data::{Dataset, Split, augment};
use crate::dist::Group;
use crate::model::{NetConfig, Network, mflops, parameter_count};
use crate::optim::{Optimizer, OptimizerKind};
use anyhow::{Context, Result};
use nasop_core::Architecture;
use nasop_core::client::Reporter;
use nasop_core::contract::ReportAction;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub arch: Architecture,
    pub net: NetConfig,
    pub epochs: u32,
    pub seed: u64,
    pub batch_size: i64,
    pub learning_rate: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub optimizer: OptimizerKind,
    pub device: Device,
    /// Where a checkpoint is written every epoch and resumed from.
    pub checkpoint_dir: Option<PathBuf>,
    /// Another trial's checkpoint to continue (a promotion to more epochs).
    pub resume_from: Option<PathBuf>,
    /// Stop an epoch after this many batches (quick checks); 0 = all.
    pub max_batches: usize,
    /// Where the final model goes when the run completes its budget (crate::artifact).
    pub artifact_dir: Option<PathBuf>,
    /// The recipe as used, for the model's description.
    pub recipe: serde_json::Value,
    /// The bucket prefix `checkpoint_dir` mirrors (crate::storage): each checkpoint saved is
    /// uploaded there.
    pub checkpoint_remote: Option<std::sync::Arc<crate::storage::Remote>>,
}

/// A checkpoint's files, in the order they are uploaded (the state, which says the
/// checkpoint is complete, last).
pub const CHECKPOINT_FILES: [&str; 3] = ["weights.ot", "optimizer.ot", "state.json"];

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    Completed,
    /// The runner answered a report with "stop".
    StoppedByRunner,
    /// SIGTERM: the last completed epoch is checkpointed.
    Terminated,
}

pub struct Outcome {
    pub ending: Ending,
    pub metrics: BTreeMap<String, f64>,
    /// Non-numeric results (the derived architecture of a one-shot search).
    pub info: BTreeMap<String, String>,
}

impl Outcome {
    /// SIGTERM arrived: the last completed epoch's checkpoint and metrics stand.
    pub fn terminated(metrics: BTreeMap<String, f64>) -> Self {
        Outcome {
            ending: Ending::Terminated,
            metrics,
            info: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    architecture: String,
    seed: u64,
    epochs_done: u32,
}

/// The loss of a step, or the error that ends a diverged run (a non-finite loss never
/// becomes a result).
pub fn finite_loss(loss: f64, epoch: u32, batch: usize, lr: f64) -> Result<f64> {
    anyhow::ensure!(
        loss.is_finite(),
        "training diverged: the loss is {loss} at epoch {}, batch {} (learning rate {lr:.4}); lower the learning rate or raise the batch size",
        epoch + 1,
        batch + 1
    );
    Ok(loss)
}

/// The learning rate at `step` of `total` (cosine annealing to zero).
pub fn cosine(lr: f64, step: usize, total: usize) -> f64 {
    0.5 * lr * (1.0 + (std::f64::consts::PI * step as f64 / total.max(1) as f64).cos())
}

/// Batches in an epoch over `images` images: all of them, or at most `max_batches` (0: no
/// limit).
pub fn batches_per_epoch(images: usize, batch_size: i64, max_batches: usize) -> usize {
    let batch = batch_size as usize; // validated: 1 or more (recipe::validate)
    let batches = images.div_ceil(batch);
    if max_batches > 0 {
        batches.min(max_batches)
    } else {
        batches
    }
}

/// (mean loss, accuracy) on a split, with `forward` in evaluation mode.
pub fn evaluate(forward: impl Fn(&Tensor) -> Tensor, split: &Split, device: Device) -> (f64, f64) {
    tch::no_grad(|| {
        let n = split.len();
        let (mut loss, mut correct) = (0.0, 0.0);
        let mut start = 0;
        while start < n {
            let len = (n - start).min(1000);
            let x = split.images.narrow(0, start, len).to_device(device);
            let y = split.labels.narrow(0, start, len).to_device(device);
            let logits = tch::autocast(device.is_cuda(), || forward(&x)).to_kind(Kind::Float);
            loss += logits.cross_entropy_for_logits(&y).double_value(&[]) * len as f64;
            correct += logits
                .argmax(-1, false)
                .eq_tensor(&y)
                .to_kind(Kind::Float)
                .sum(Kind::Float)
                .double_value(&[]);
            start += len;
        }
        (loss / n.max(1) as f64, correct / n.max(1) as f64)
    })
}

/// Median batch-1 inference latency in milliseconds on `device`.
pub fn latency_ms(net: &impl ModuleT, sample: &Tensor, device: Device) -> f64 {
    tch::no_grad(|| {
        let x = sample.narrow(0, 0, 1).to_device(device);
        let sync = || {
            if let Device::Cuda(i) = device {
                tch::Cuda::synchronize(i as i64);
            }
        };
        for _ in 0..5 {
            let _ = net.forward_t(&x, false);
        }
        sync();
        let mut times: Vec<f64> = (0..20)
            .map(|_| {
                let t = Instant::now();
                let _ = net.forward_t(&x, false);
                sync();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    })
}

/// Images per second of training steps on random CIFAR-sized batches, and the parameter count.
pub fn throughput(
    arch: &Architecture,
    net: NetConfig,
    steps: usize,
    warmup: usize,
    batch: i64,
    device: Device,
    bf16: bool,
) -> Result<(f64, i64)> {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let model = Network::new(&vs.root(), arch, net)?;
    let mut opt = Optimizer::new(
        OptimizerKind::Sgd,
        vs.trainable_variables(),
        5e-4,
        0.9,
        (0.9, 0.999),
    );
    let x = Tensor::randn([batch, net.input_channels, 32, 32], (Kind::Float, device));
    let y = Tensor::randint(net.classes, [batch], (Kind::Int64, device));
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let mut step = || {
        let loss = tch::autocast(device.is_cuda() && bf16, || {
            model.forward_t(&x, true).cross_entropy_for_logits(&y)
        });
        opt.zero_grad();
        loss.backward();
        opt.step(0.1);
    };
    for _ in 0..warmup {
        step();
    }
    sync();
    let started = Instant::now();
    for _ in 0..steps {
        step();
    }
    sync();
    Ok((
        steps as f64 * batch as f64 / started.elapsed().as_secs_f64(),
        parameter_count(&vs),
    ))
}

fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let [w, o, s] = CHECKPOINT_FILES;
    (dir.join(w), dir.join(o), dir.join(s))
}

fn save_checkpoint(
    dir: &Path,
    vs: &nn::VarStore,
    opt: &Optimizer,
    state: &CheckpointState,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (w, o, s) = paths(dir);
    // Write beside, then rename: a crash mid-write never leaves a torn checkpoint.
    let tmp = |p: &Path| p.with_extension("tmp");
    vs.save(tmp(&w))
        .with_context(|| format!("saving weights to {}", w.display()))?;
    opt.save(&tmp(&o))?;
    std::fs::write(tmp(&s), serde_json::to_vec(state)?)?;
    std::fs::rename(tmp(&w), &w)?;
    std::fs::rename(tmp(&o), &o)?;
    std::fs::rename(tmp(&s), &s)?;
    Ok(())
}

fn load_checkpoint(
    dir: &Path,
    vs: &mut nn::VarStore,
    opt: &mut Optimizer,
) -> Result<Option<CheckpointState>> {
    let (w, o, s) = paths(dir);
    if !s.exists() {
        return Ok(None);
    }
    let state: CheckpointState = serde_json::from_slice(&std::fs::read(&s)?)
        .with_context(|| format!("reading {}", s.display()))?;
    vs.load(&w)
        .with_context(|| format!("loading weights from {}", w.display()))?;
    opt.load(&o)?;
    Ok(Some(state))
}

/// What rank 0 tells the other ranks after each epoch's report.
const GO_ON: f64 = 0.0;
const STOPPED: f64 = 1.0;
const SUPERSEDED: f64 = 2.0;

/// Trains `cfg`'s network; with `group`, as one rank of a data-parallel run (crate::dist):
/// every rank trains its share of each batch, and rank 0 alone evaluates, reports,
/// checkpoints and saves the model, and tells the others when to stop.
pub fn train(
    cfg: &TrainConfig,
    data: &Dataset,
    reporter: &Reporter,
    terminate: &AtomicBool,
    group: Option<&Group>,
) -> Result<Outcome> {
    let mut run = Training::new(cfg, data, group)?;
    let start_epoch = run.resume()?;
    let mut metrics = BTreeMap::new();
    let mut ending = Ending::Completed;
    for epoch in start_epoch..cfg.epochs {
        let started = Instant::now();
        let Some(train_loss) = run.epoch(epoch, terminate)? else {
            return Ok(Outcome::terminated(metrics));
        };
        if let Some(g) = group.filter(|g| !g.is_primary()) {
            // The other ranks wait for rank 0's evaluation and report, then do as it says.
            match g.share(GO_ON)? {
                GO_ON => continue,
                STOPPED => {
                    ending = Ending::StoppedByRunner;
                    break;
                }
                _ => return Ok(Outcome::terminated(metrics)),
            }
        }
        let (val_loss, val_accuracy) = run.evaluate(&data.valid);
        metrics = BTreeMap::from([
            ("epoch".to_string(), (epoch + 1) as f64),
            ("train_loss".to_string(), train_loss),
            ("val_loss".to_string(), val_loss),
            ("val_accuracy".to_string(), val_accuracy),
            ("epoch_seconds".to_string(), started.elapsed().as_secs_f64()),
        ]);
        // Report first, then checkpoint: an attempt that another one replaced hears so in
        // the reply (409) and writes nothing more to the trial's checkpoint, which is the
        // current attempt's now. (Killed between the two, the next attempt trains this
        // epoch again and reports it in place of this report.)
        let action = reporter.report(epoch + 1, &metrics);
        if !reporter.superseded() {
            run.checkpoint(epoch + 1)?;
        }
        if let Some(g) = group {
            g.share(if reporter.superseded() {
                SUPERSEDED
            } else if action == ReportAction::Stop {
                STOPPED
            } else {
                GO_ON
            })?;
        }
        if action == ReportAction::Stop {
            ending = Ending::StoppedByRunner;
            break;
        }
    }
    if let Some(g) = group {
        // Every rank holds the same model; the digest shows it in the logs.
        eprintln!(
            "nasop-trainer: rank {} of {}: weights digest {:e}",
            g.rank,
            g.world,
            run.digest()
        );
    }
    if group.is_some_and(|g| !g.is_primary()) {
        // Rank 0 measures and saves the result.
        return Ok(Outcome {
            ending,
            metrics,
            info: BTreeMap::new(),
        });
    }
    if !metrics.contains_key("val_accuracy") {
        // Resumed after the last epoch: the result is the checkpoint's.
        let (val_loss, val_accuracy) = run.evaluate(&data.valid);
        metrics.insert("epoch".into(), start_epoch as f64);
        metrics.insert("val_loss".into(), val_loss);
        metrics.insert("val_accuracy".into(), val_accuracy);
    }
    run.measure_final(&mut metrics);
    let mut info = BTreeMap::new();
    if ending == Ending::Completed
        && let Some(dir) = &cfg.artifact_dir
    {
        let saved = run.export(dir, &metrics)?;
        info.insert(
            nasop_core::contract::INFO_ARTIFACT.to_string(),
            saved.display().to_string(),
        );
    }
    Ok(Outcome {
        ending,
        metrics,
        info,
    })
}

/// A training run's network and optimiser, with the settings every epoch needs.
struct Training<'a> {
    cfg: &'a TrainConfig,
    data: &'a Dataset,
    vs: nn::VarStore,
    net: Network,
    opt: Optimizer,
    /// The architecture as checkpoints name it.
    arch_string: String,
    batches_per_epoch: usize,
    group: Option<&'a Group>,
}

impl<'a> Training<'a> {
    /// The freshly initialised network (seeded) and its optimiser.
    fn new(cfg: &'a TrainConfig, data: &'a Dataset, group: Option<&'a Group>) -> Result<Self> {
        tch::manual_seed(cfg.seed as i64);
        let vs = nn::VarStore::new(cfg.device);
        let net = Network::new(&vs.root(), &cfg.arch, cfg.net)?;
        let mut opt = Optimizer::new(
            cfg.optimizer,
            vs.trainable_variables(),
            cfg.weight_decay,
            cfg.momentum,
            (0.9, 0.999),
        );
        if group.is_some() {
            // Every rank exchanges the same list of gradients at every step (a rank whose
            // share of a short last batch is empty, too): all defined from the start, zeroed
            // in place.
            let zero = vs
                .trainable_variables()
                .iter()
                .fold(Tensor::zeros([], (Kind::Float, cfg.device)), |acc, p| {
                    acc + p.sum(Kind::Float) * 0.0
                });
            zero.backward();
            opt.keep_gradients();
        }
        Ok(Training {
            cfg,
            data,
            vs,
            net,
            opt,
            arch_string: cfg.arch.to_string(),
            batches_per_epoch: batches_per_epoch(
                data.train.len() as usize,
                cfg.batch_size,
                cfg.max_batches,
            ),
            group,
        })
    }

    /// Loads the trial's own checkpoint (a restarted trial), else the parent trial's (a
    /// promotion), and returns the epochs it holds; 0 without either. In a data-parallel run
    /// rank 0 loads it, and every rank starts from rank 0's weights, optimiser state and epoch.
    fn resume(&mut self) -> Result<u32> {
        let start_epoch = match self.group {
            Some(g) if !g.is_primary() => 0,
            _ => self.load()?,
        };
        let Some(g) = self.group else {
            return Ok(start_epoch);
        };
        let mut variables: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let mut state: Vec<Tensor> = variables.into_iter().map(|(_, t)| t).collect();
        state.extend(self.opt.state());
        g.broadcast(&mut state)?;
        let steps = g.share(self.opt.steps() as f64)?;
        self.opt.set_steps(steps as i64);
        Ok(g.share(start_epoch as f64)? as u32)
    }

    fn load(&mut self) -> Result<u32> {
        let cfg = self.cfg;
        if let Some(dir) = &cfg.checkpoint_dir
            && let Some(state) = load_checkpoint(dir, &mut self.vs, &mut self.opt)?
        {
            anyhow::ensure!(
                state.architecture == self.arch_string && state.seed == cfg.seed,
                "the checkpoint in {} belongs to another trial ({} seed {}); use another --checkpoint-dir",
                dir.display(),
                state.architecture,
                state.seed
            );
            let start_epoch = state.epochs_done;
            eprintln!(
                "nasop-trainer: resuming after epoch {start_epoch} from {}",
                dir.display()
            );
            return Ok(start_epoch);
        }
        if let Some(parent) = &cfg.resume_from {
            let state =
                load_checkpoint(parent, &mut self.vs, &mut self.opt)?.with_context(|| {
                    format!("--resume-from {}: no checkpoint there", parent.display())
                })?;
            anyhow::ensure!(
                state.architecture == self.arch_string,
                "--resume-from {} holds {}, not this architecture",
                parent.display(),
                state.architecture
            );
            let start_epoch = state.epochs_done;
            eprintln!(
                "nasop-trainer: continuing {}'s {start_epoch} epochs",
                parent.display()
            );
            return Ok(start_epoch);
        }
        Ok(0)
    }

    /// One epoch of training steps: the mean training loss, or `None` when SIGTERM arrived
    /// before the epoch's end.
    fn epoch(&mut self, epoch: u32, terminate: &AtomicBool) -> Result<Option<f64>> {
        let (cfg, data) = (self.cfg, self.data);
        let n = data.train.len() as usize;
        let batch = cfg.batch_size as usize; // validated: 1 or more (recipe::validate)
        let batches = self.batches_per_epoch;
        let total_steps = batches * cfg.epochs as usize;
        let (order, mut rng) = crate::data::epoch_order(cfg.seed, epoch, n as i64);
        let mut train_loss = 0.0;
        for b in 0..batches {
            if terminate.load(Ordering::Relaxed) && self.group.is_none() {
                return Ok(None);
            }
            let idx = Tensor::from_slice(&order[b * batch..((b + 1) * batch).min(n)]);
            let mut x = data.train.images.index_select(0, &idx);
            if data.augment {
                // The whole batch, as one process draws it, so that N ranks train on the
                // images one process would.
                x = augment(&x, &data.mean, &data.std, &mut rng);
            }
            let mut y = data.train.labels.index_select(0, &idx);
            // This rank's share of the batch, and its weight in the batch's mean loss (the
            // weighted shares' losses and gradients average to the batch's).
            let mut weight = 1.0;
            if let Some(g) = self.group {
                let len = idx.size()[0] as usize;
                let (start, end) = crate::dist::share(len, g.rank, g.world);
                let (start, size) = (start as i64, (end - start) as i64);
                x = x.narrow(0, start, size);
                y = y.narrow(0, start, size);
                weight = size as f64 * g.world as f64 / len as f64;
            }
            let lr = cosine(cfg.learning_rate, epoch as usize * batches + b, total_steps);
            self.opt.zero_grad();
            if weight > 0.0 {
                let (x, y) = (x.to_device(cfg.device), y.to_device(cfg.device));
                let loss = tch::autocast(cfg.device.is_cuda(), || {
                    self.net.forward_t(&x, true).cross_entropy_for_logits(&y)
                });
                (&loss * weight).backward();
                train_loss += weight * finite_loss(loss.double_value(&[]), epoch, b, lr)?;
            }
            if let Some(g) = self.group
                && !self.average_gradients(g, terminate)?
            {
                return Ok(None);
            }
            self.opt.step(lr);
        }
        let mut train_loss = train_loss / batches as f64;
        if let Some(g) = self.group {
            let mut mean = [Tensor::from_slice(&[train_loss])];
            g.average(&mut mean)?;
            train_loss = mean[0].double_value(&[0]);
        }
        Ok(Some(train_loss))
    }

    /// Replaces each gradient by its mean over the ranks (every one is defined: see new()); `false` when a rank received
    /// SIGTERM (every rank then ends the epoch together). A rank gone without one fails the
    /// run with the process group's words, unless this rank is being terminated too.
    fn average_gradients(&self, g: &Group, terminate: &AtomicBool) -> Result<bool> {
        let mut tensors: Vec<Tensor> = self
            .vs
            .trainable_variables()
            .iter()
            .map(Tensor::grad)
            .collect();
        debug_assert!(tensors.iter().all(Tensor::defined), "keep_gradients");
        let flag = if terminate.load(Ordering::Relaxed) {
            1.0f32
        } else {
            0.0
        };
        tensors.push(Tensor::from_slice(&[flag]).to_device(self.cfg.device));
        match g.average(&mut tensors) {
            Ok(()) => Ok(tensors.pop().expect("the flag").double_value(&[0]) == 0.0),
            Err(_) if terminate.load(Ordering::Relaxed) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The sum of the trainable weights' magnitudes: equal on every rank of a run.
    fn digest(&self) -> f64 {
        tch::no_grad(|| {
            self.vs
                .trainable_variables()
                .iter()
                .map(|t| t.abs().sum(Kind::Double).double_value(&[]))
                .sum()
        })
    }

    /// (mean loss, accuracy) of the network on `split`.
    fn evaluate(&self, split: &Split) -> (f64, f64) {
        evaluate(|x| self.net.forward_t(x, false), split, self.cfg.device)
    }

    /// Saves (and mirrors) the checkpoint after `epochs_done` epochs, when the run keeps one.
    fn checkpoint(&self, epochs_done: u32) -> Result<()> {
        let Some(dir) = &self.cfg.checkpoint_dir else {
            return Ok(());
        };
        debug_assert!(self.group.is_none_or(Group::is_primary));
        save_checkpoint(
            dir,
            &self.vs,
            &self.opt,
            &CheckpointState {
                architecture: self.arch_string.clone(),
                seed: self.cfg.seed,
                epochs_done,
            },
        )?;
        if let Some(remote) = &self.cfg.checkpoint_remote {
            remote.upload(&CHECKPOINT_FILES)?;
        }
        Ok(())
    }

    /// Adds the test results and the network's size, cost and latency to `metrics`.
    fn measure_final(&self, metrics: &mut BTreeMap<String, f64>) {
        let (cfg, data) = (self.cfg, self.data);
        let (test_loss, test_accuracy) = self.evaluate(&data.test);
        let hw = data.train.images.size()[2];
        metrics.insert("test_loss".into(), test_loss);
        metrics.insert("test_accuracy".into(), test_accuracy);
        metrics.insert("params".into(), parameter_count(&self.vs) as f64);
        metrics.insert("flops".into(), mflops(&cfg.arch, cfg.net, hw));
        metrics.insert(
            "latency_ms".into(),
            latency_ms(&self.net, &data.test.images, cfg.device),
        );
    }

    /// Saves the final model in `dir` (crate::artifact) and returns where it is.
    fn export(&self, dir: &Path, metrics: &BTreeMap<String, f64>) -> Result<PathBuf> {
        let (cfg, data) = (self.cfg, self.data);
        let size = data.train.images.size();
        let saved = crate::artifact::save(
            dir,
            &self.vs,
            &crate::artifact::Export {
                arch: &cfg.arch,
                net: cfg.net,
                mean: &data.mean,
                std: &data.std,
                size: (size[2], size[3]),
                recipe: cfg.recipe.clone(),
                metrics,
            },
        )
        .with_context(|| format!("saving the model to {}", dir.display()))?;
        eprintln!(
            "nasop-trainer: the model is in {} ({}, {}, {})",
            saved.display(),
            crate::artifact::WEIGHTS,
            crate::artifact::TORCHSCRIPT,
            crate::artifact::DESCRIPTION
        );
        Ok(saved)
    }
}
