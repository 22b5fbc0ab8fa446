//! One-shot search over a cell space: DARTS (Liu et al., ICLR 2019, first order) and GDAS
//! (Dong & Yang, CVPR 2019). A supernet puts every operation on every edge; the weights
//! train on one half of the training split and the architecture parameters (Adam) on the
//! other, alternating. The derived cell takes each edge's strongest operation.

use crate::data::{Dataset, Split};
use crate::model::{CELL_OPERATIONS, NetConfig, Op, Skeleton, sum_or_zeros};
use crate::optim::{Optimizer, OptimizerKind};
use crate::train::{Ending, Outcome, batches_per_epoch, cosine, evaluate, finite_loss};
use anyhow::{Result, bail};
use nasop_core::arch::{Architecture, Edge, cell_edges};
use nasop_core::client::Reporter;
use nasop_core::contract::{Report, ReportAction};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::nn;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OneShot {
    Darts,
    Gdas,
}

pub struct SearchConfig {
    pub method: OneShot,
    pub nodes: usize,
    pub operations: Vec<String>,
    pub net: NetConfig,
    pub epochs: u32,
    pub seed: u64,
    pub batch_size: i64,
    pub learning_rate: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub device: Device,
    pub max_batches: usize,
}

/// The weights' gradient norm limit of both papers' search scripts (DARTS `--grad_clip 5`,
/// GDAS's NAS-Bench-201 configuration).
pub const GRAD_CLIP: f64 = 5.0;

/// GDAS's Gumbel-softmax temperature at `epoch` of `epochs`: linear from 10 at the first
/// epoch to 0.1 at the last (Dong & Yang 2019, section 4.1).
pub fn gdas_temperature(epoch: u32, epochs: u32) -> f64 {
    const MAX: f64 = 10.0;
    const MIN: f64 = 0.1;
    if epochs <= 1 {
        return MAX;
    }
    MAX - (MAX - MIN) * epoch as f64 / (epochs - 1) as f64
}

/// The supernet: every cell holds all operations on every edge; one set of architecture
/// parameters (edges × operations) is shared by all cells, as in NAS-Bench-201's baselines.
struct Supernet {
    skeleton: Skeleton,
    /// cells[stage * N + k][edge][op]
    cells: Vec<Vec<Vec<Op>>>,
    edges: Vec<(usize, usize)>,
    nodes: usize,
    alpha: Tensor,
}

/// How edges mix their operations in one forward pass.
enum Mixing {
    /// DARTS: softmax weights over all operations.
    Soft(Tensor),
    /// GDAS: one sampled operation per edge, with straight-through weights.
    Hard { weights: Tensor, picks: Vec<usize> },
}

impl Supernet {
    /// Every operation on every edge of every cell (weights under `root`), and the shared
    /// architecture parameters (under `arch_root`), near zero: a uniform start.
    fn new(root: &nn::Path, arch_root: &nn::Path, cfg: &SearchConfig) -> Self {
        let skeleton = Skeleton::new(root, cfg.net);
        let edges = cell_edges(cfg.nodes);
        let mut cells = Vec::new();
        for stage in 0..3 {
            let c = skeleton.stage_channels(stage);
            for k in 0..cfg.net.cells_per_stage {
                let cp = root / format!("cell{stage}_{k}");
                let cell: Vec<Vec<Op>> = edges
                    .iter()
                    .map(|(i, j)| {
                        cfg.operations
                            .iter()
                            .map(|name| {
                                Op::new(&cp / format!("edge{i}_{j}_{name}"), name, c)
                                    .expect("search checked the operations")
                            })
                            .collect()
                    })
                    .collect();
                cells.push(cell);
            }
        }
        let alpha = arch_root.var(
            "alpha",
            &[edges.len() as i64, cfg.operations.len() as i64],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 1e-3,
            },
        );
        Supernet {
            skeleton,
            cells,
            edges,
            nodes: cfg.nodes,
            alpha,
        }
    }

    fn forward(&self, x: &Tensor, train: bool, mixing: &Mixing) -> Tensor {
        let per_stage = self.skeleton.config.cells_per_stage as usize;
        self.skeleton.forward_with(x, train, |stage, k, h| {
            let ops = &self.cells[stage * per_stage + k];
            let mut states = vec![h.shallow_clone()];
            for j in 1..self.nodes {
                let mut terms = Vec::new();
                for (e, &(from, to)) in self.edges.iter().enumerate() {
                    if to != j {
                        continue;
                    }
                    match mixing {
                        Mixing::Soft(w) => {
                            for (o, op) in ops[e].iter().enumerate() {
                                if let Some(y) = op.forward(&states[from], train) {
                                    terms.push(y * w.get(e as i64).get(o as i64));
                                }
                            }
                        }
                        Mixing::Hard { weights, picks } => {
                            let o = picks[e];
                            let w = weights.get(e as i64).get(o as i64);
                            match ops[e][o].forward(&states[from], train) {
                                Some(y) => terms.push(y * w),
                                // A zero pick still passes its gradient to alpha through the weight.
                                None => terms.push(states[from].zeros_like() * w),
                            }
                        }
                    }
                }
                states.push(sum_or_zeros(terms, h));
            }
            states.pop().expect("an output node")
        })
    }

    fn soft(&self) -> Mixing {
        Mixing::Soft(self.alpha.softmax(-1, Kind::Float))
    }

    /// Gumbel-softmax sample at temperature `tau` (GDAS).
    fn hard(&self, tau: f64) -> Mixing {
        let gumbel = -(-(self.alpha.rand_like().clamp(1e-9, 1.0 - 1e-9)).log()).log();
        let soft = ((&self.alpha + gumbel) / tau).softmax(-1, Kind::Float);
        let picks: Vec<usize> = Vec::<i64>::try_from(soft.argmax(-1, false))
            .expect("indices")
            .into_iter()
            .map(|i| i as usize)
            .collect();
        let one_hot = soft
            .zeros_like()
            .scatter_value(-1, &soft.argmax(-1, true), 1.0);
        let weights = one_hot - soft.detach() + soft;
        Mixing::Hard { weights, picks }
    }

    fn derived(&self, operations: &[String]) -> Architecture {
        let best: Vec<i64> = Vec::<i64>::try_from(self.alpha.argmax(-1, false)).expect("indices");
        let edges = self
            .edges
            .iter()
            .zip(best)
            .map(|(&(from, to), o)| Edge {
                from,
                to,
                op: operations[o as usize].clone(),
            })
            .collect();
        Architecture::Cell {
            nodes: self.nodes,
            edges,
        }
    }

    /// Mean entropy (nats) of the edges' operation distributions.
    fn entropy(&self) -> f64 {
        let p = self.alpha.softmax(-1, Kind::Float);
        let h = -(&p * p.clamp_min(1e-12).log()).sum_dim_intlist(-1, false, Kind::Float);
        h.mean(Kind::Float).double_value(&[])
    }
}

pub fn search(
    cfg: &SearchConfig,
    data: &Dataset,
    reporter: &Reporter,
    terminate: &AtomicBool,
) -> Result<Outcome> {
    check_operations(&cfg.operations)?;
    let mut search = Search::new(cfg, data);
    let mut metrics = BTreeMap::new();
    let mut ending = Ending::Completed;
    for epoch in 0..cfg.epochs {
        let started = Instant::now();
        let Some(train_loss) = search.epoch(epoch, terminate)? else {
            return Ok(Outcome::terminated(metrics));
        };
        let (val_loss, val_accuracy) = search.evaluate(&data.valid);
        metrics = BTreeMap::from([
            ("epoch".to_string(), (epoch + 1) as f64),
            ("train_loss".to_string(), train_loss),
            ("val_loss".to_string(), val_loss),
            ("val_accuracy".to_string(), val_accuracy),
            ("entropy".to_string(), search.net.entropy()),
            ("epoch_seconds".to_string(), started.elapsed().as_secs_f64()),
        ]);
        let info = BTreeMap::from([(
            "derived_architecture".to_string(),
            search.net.derived(&cfg.operations).to_string(),
        )]);
        if reporter.send(&Report {
            step: epoch + 1,
            metrics: metrics.clone(),
            info,
            end: None,
        }) == ReportAction::Stop
        {
            ending = Ending::StoppedByRunner;
            break;
        }
    }
    Ok(search.finish(ending, metrics))
}

fn check_operations(operations: &[String]) -> Result<()> {
    for op in operations {
        if !CELL_OPERATIONS.contains(&op.as_str()) {
            bail!(
                "operation {op:?} is unknown; the trainer knows {}",
                CELL_OPERATIONS.join(", ")
            );
        }
    }
    Ok(())
}

/// A search in progress: the supernet, the weights' SGD and the architecture's Adam.
struct Search<'a> {
    cfg: &'a SearchConfig,
    data: &'a Dataset,
    net: Supernet,
    w_opt: Optimizer,
    a_opt: Optimizer,
    /// Batches per epoch, in each half of the training split.
    batches: usize,
    // The stores own the supernet's variables: kept for as long as the supernet.
    _weights: nn::VarStore,
    _architecture: nn::VarStore,
}

impl<'a> Search<'a> {
    /// The freshly initialised (seeded) supernet and its optimisers.
    fn new(cfg: &'a SearchConfig, data: &'a Dataset) -> Self {
        tch::manual_seed(cfg.seed as i64);
        let vs = nn::VarStore::new(cfg.device);
        let arch_vs = nn::VarStore::new(cfg.device);
        let net = Supernet::new(&vs.root(), &arch_vs.root(), cfg);
        let w_opt = Optimizer::new(
            OptimizerKind::Sgd,
            vs.trainable_variables(),
            cfg.weight_decay,
            cfg.momentum,
            (0.9, 0.999),
        );
        let a_opt = Optimizer::new(
            OptimizerKind::Adam,
            arch_vs.trainable_variables(),
            1e-3,
            0.0,
            (0.5, 0.999),
        );
        // Half the training split for the weights, half for the architecture.
        let half = data.train.len() / 2;
        Search {
            cfg,
            data,
            net,
            w_opt,
            a_opt,
            batches: batches_per_epoch(half as usize, cfg.batch_size, cfg.max_batches),
            _weights: vs,
            _architecture: arch_vs,
        }
    }

    /// One epoch of alternating architecture and weight steps: the mean weight-step loss,
    /// or `None` when SIGTERM arrived before the epoch's end.
    fn epoch(&mut self, epoch: u32, terminate: &AtomicBool) -> Result<Option<f64>> {
        let cfg = self.cfg;
        let n = self.data.train.len();
        let (order, _) = crate::data::epoch_order(cfg.seed, epoch, n);
        let (w_part, a_part) = order.split_at((n / 2) as usize);
        let tau = gdas_temperature(epoch, cfg.epochs);
        let batch = cfg.batch_size as usize; // validated: 1 or more (recipe::validate)
        let total = self.batches * cfg.epochs as usize;
        let mut train_loss = 0.0;
        for b in 0..self.batches {
            if terminate.load(Ordering::Relaxed) {
                return Ok(None);
            }
            self.architecture_step(batch_of(a_part, b, batch), tau);
            let lr = cosine(cfg.learning_rate, epoch as usize * self.batches + b, total);
            let loss = self.weight_step(batch_of(w_part, b, batch), tau, lr);
            train_loss += finite_loss(loss, epoch, b, lr)?;
        }
        Ok(Some(train_loss / self.batches.max(1) as f64))
    }

    /// How this search mixes operations in a training pass at temperature `tau`.
    fn mixing(&self, tau: f64) -> Mixing {
        match self.cfg.method {
            OneShot::Darts => self.net.soft(),
            OneShot::Gdas => self.net.hard(tau),
        }
    }

    /// A first-order step of the architecture parameters on `idx` (none when it is empty).
    fn architecture_step(&mut self, idx: &[i64], tau: f64) {
        let (x, y) = self.batch(idx);
        if x.size()[0] > 0 {
            let loss = self
                .net
                .forward(&x, true, &self.mixing(tau))
                .cross_entropy_for_logits(&y);
            self.a_opt.zero_grad();
            self.w_opt.zero_grad();
            loss.backward();
            self.a_opt.step(3e-4);
        }
    }

    /// A step of the weights on `idx` at learning rate `lr`; its loss.
    fn weight_step(&mut self, idx: &[i64], tau: f64, lr: f64) -> f64 {
        let (x, y) = self.batch(idx);
        let loss = self
            .net
            .forward(&x, true, &self.mixing(tau))
            .cross_entropy_for_logits(&y);
        self.w_opt.zero_grad();
        self.a_opt.zero_grad();
        loss.backward();
        self.w_opt.clip_grad_norm(GRAD_CLIP);
        self.w_opt.step(lr);
        loss.double_value(&[])
    }

    /// The training images and labels at `idx`, on the search's device.
    fn batch(&self, idx: &[i64]) -> (Tensor, Tensor) {
        let split = &self.data.train;
        let i = Tensor::from_slice(idx);
        (
            split.images.index_select(0, &i).to_device(self.cfg.device),
            split.labels.index_select(0, &i).to_device(self.cfg.device),
        )
    }

    /// (mean loss, accuracy) of the supernet on `split`, with softmax mixing.
    fn evaluate(&self, split: &Split) -> (f64, f64) {
        evaluate(
            |x| self.net.forward(x, false, &self.net.soft()),
            split,
            self.cfg.device,
        )
    }

    /// The outcome: the derived cell, and the supernet's test results added to `metrics`.
    fn finish(self, ending: Ending, mut metrics: BTreeMap<String, f64>) -> Outcome {
        let derived = self.net.derived(&self.cfg.operations);
        let (test_loss, test_accuracy) = self.evaluate(&self.data.test);
        metrics.insert("supernet_test_loss".into(), test_loss);
        metrics.insert("supernet_test_accuracy".into(), test_accuracy);
        metrics.insert("entropy".into(), self.net.entropy());
        let info = BTreeMap::from([("derived_architecture".to_string(), derived.to_string())]);
        Outcome {
            ending,
            metrics,
            info,
        }
    }
}

/// Batch `b` of `part`: empty, or short at the end, when `part` runs out.
fn batch_of(part: &[i64], b: usize, batch: usize) -> &[i64] {
    &part[(b * batch).min(part.len())..((b + 1) * batch).min(part.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdas_temperature_falls_linearly_from_10_to_0_1() {
        let taus: Vec<f64> = (0..5).map(|e| gdas_temperature(e, 5)).collect();
        assert_eq!(taus[0], 10.0);
        assert!((taus[4] - 0.1).abs() < 1e-12, "{taus:?}");
        let steps: Vec<f64> = taus.windows(2).map(|w| w[0] - w[1]).collect();
        assert!(steps.iter().all(|d| (d - 2.475).abs() < 1e-12), "{steps:?}");
        assert_eq!(gdas_temperature(0, 1), 10.0);
    }

    #[test]
    fn clipping_bounds_the_global_gradient_norm() {
        let a = Tensor::from_slice(&[3.0f32, 0.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[0.0f32, 4.0]).set_requires_grad(true);
        let mut opt = Optimizer::new(
            OptimizerKind::Sgd,
            vec![a.shallow_clone(), b.shallow_clone()],
            0.0,
            0.0,
            (0.9, 0.999),
        );
        // Gradients (6, 0) and (0, 8): global norm 10, clipped to 5 -> halved.
        ((&a * &a).sum(Kind::Float) + (&b * &b).sum(Kind::Float)).backward();
        opt.clip_grad_norm(GRAD_CLIP);
        let g: Vec<f32> = Vec::try_from(Tensor::cat(&[a.grad(), b.grad()], 0)).unwrap();
        assert!(
            g.iter()
                .zip([3.0f32, 0.0, 0.0, 4.0])
                .all(|(x, y)| (x - y).abs() < 1e-4),
            "{g:?}"
        );
        // Below the limit nothing changes.
        opt.zero_grad();
        ((&a * &a).sum(Kind::Float) * 0.1).backward();
        opt.clip_grad_norm(GRAD_CLIP);
        let g: Vec<f32> = Vec::try_from(a.grad()).unwrap();
        assert!((g[0] - 0.6).abs() < 1e-6, "{g:?}");
    }
}
