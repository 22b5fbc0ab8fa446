//! SGD with Nesterov momentum and Adam, written out so their state can be checkpointed:
//! a resumed run continues with the same momentum buffers and gives the same result as an
//! uninterrupted one (tch's optimisers do not expose their state).

use anyhow::{Context, Result};
use std::path::Path;
use tch::Tensor;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
}

pub struct Optimizer {
    kind: OptimizerKind,
    params: Vec<Tensor>,
    first: Vec<Tensor>,
    second: Vec<Tensor>,
    steps: i64,
    weight_decay: f64,
    momentum: f64,
    betas: (f64, f64),
}

impl Optimizer {
    pub fn new(
        kind: OptimizerKind,
        params: Vec<Tensor>,
        weight_decay: f64,
        momentum: f64,
        betas: (f64, f64),
    ) -> Self {
        let zeros = |ps: &[Tensor]| ps.iter().map(|p| p.zeros_like().detach()).collect();
        let first = zeros(&params);
        let second = if kind == OptimizerKind::Adam {
            zeros(&params)
        } else {
            Vec::new()
        };
        Optimizer {
            kind,
            params,
            first,
            second,
            steps: 0,
            weight_decay,
            momentum,
            betas,
        }
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// Scales the gradients so that their global L2 norm is at most `max`, as PyTorch's
    /// `clip_grad_norm_` does (DARTS and GDAS clip at 5), without reading the norm back to
    /// the host.
    pub fn clip_grad_norm(&mut self, max: f64) {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self
                .params
                .iter()
                .map(Tensor::grad)
                .filter(Tensor::defined)
                .collect();
            if grads.is_empty() {
                return;
            }
            let norms: Vec<Tensor> = grads.iter().map(Tensor::norm).collect();
            let total = Tensor::stack(&norms, 0).norm();
            let coef = ((total + 1e-6).reciprocal() * max).clamp_max(1.0);
            for mut g in grads {
                g *= &coef;
            }
        });
    }

    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let t = self.steps as f64;
        tch::no_grad(|| {
            for (i, p) in self.params.iter_mut().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                // The gradient is ours until the next zero_grad, so the decay and momentum
                // terms are added to it in place; each product (`p * wd`, `m * momentum`,
                // `g * lr`) is still a temporary, as in PyTorch's single-tensor loop.
                let mut g = g;
                if self.weight_decay > 0.0 {
                    g += &*p * self.weight_decay;
                }
                match self.kind {
                    OptimizerKind::Sgd => {
                        self.first[i] *= self.momentum;
                        self.first[i] += &g;
                        g += &self.first[i] * self.momentum;
                        *p -= g * lr;
                    }
                    OptimizerKind::Adam => {
                        let (b1, b2) = self.betas;
                        self.first[i] *= b1;
                        self.first[i] += &g * (1.0 - b1);
                        self.second[i] *= b2;
                        self.second[i] += &g * &g * (1.0 - b2);
                        let m = &self.first[i] / (1.0 - b1.powf(t));
                        let v = &self.second[i] / (1.0 - b2.powf(t));
                        *p -= m / (v.sqrt() + 1e-8) * lr;
                    }
                }
            }
        });
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::new();
        named.push(("steps".into(), Tensor::from_slice(&[self.steps])));
        for (i, t) in self.first.iter().enumerate() {
            named.push((format!("first.{i}"), t.shallow_clone()));
        }
        for (i, t) in self.second.iter().enumerate() {
            named.push((format!("second.{i}"), t.shallow_clone()));
        }
        Tensor::save_multi(&named, path)
            .with_context(|| format!("saving the optimizer state to {}", path.display()))
    }

    pub fn load(&mut self, path: &Path) -> Result<()> {
        let device = self
            .params
            .first()
            .map(|p| p.device())
            .unwrap_or(tch::Device::Cpu);
        for (name, t) in Tensor::load_multi_with_device(path, device)
            .with_context(|| format!("loading the optimizer state from {}", path.display()))?
        {
            let slot = match name.split_once('.') {
                Some(("first", i)) => self.first.get_mut(i.parse::<usize>()?),
                Some(("second", i)) => self.second.get_mut(i.parse::<usize>()?),
                _ if name == "steps" => {
                    self.steps = t.int64_value(&[0]);
                    continue;
                }
                _ => None,
            };
            match slot {
                Some(s) => tch::no_grad(|| s.copy_(&t)),
                None => anyhow::bail!("{}: unexpected optimizer entry {name}", path.display()),
            }
        }
        Ok(())
    }
}
