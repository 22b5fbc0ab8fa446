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
    /// libtorch's own optimizer over the same parameters, used only for its `zero_grad`, which
    /// resets gradients to undefined as PyTorch's does by default (tch has no other way to):
    /// the next backward then writes each gradient instead of zeroing it and adding to it.
    resetter: Option<tch::COptimizer>,
    /// Weight decay, momentum and the step's -lr as 0-dim tensors on the parameters' device,
    /// so that each SGD term is one `addcmul_` (PyTorch's `add_(x, alpha=a)`), not a product
    /// and a sum: 5 operations per parameter, as in PyTorch's loop.
    scalars: [Tensor; 3],
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
        let resetter = tch::COptimizer::sgd(0.0, 0.0, 0.0, 0.0, false)
            .and_then(|mut o| {
                for p in &params {
                    o.add_parameters(p, 0)?;
                }
                Ok(o)
            })
            .ok();
        let (dtype, device) = params
            .first()
            .map_or((tch::Kind::Float, tch::Device::Cpu), |p| {
                (p.kind(), p.device())
            });
        let scalars =
            [weight_decay, momentum, 0.0].map(|v| Tensor::from(v).to_kind(dtype).to_device(device));
        Optimizer {
            kind,
            params,
            resetter,
            scalars,
            first,
            second,
            steps: 0,
            weight_decay,
            momentum,
            betas,
        }
    }

    /// Zeroes the gradients in place from now on instead of resetting them to undefined:
    /// a data-parallel run exchanges every parameter's gradient at every step, so each must
    /// stay defined (call it once the gradients are).
    pub fn keep_gradients(&mut self) {
        self.resetter = None;
    }

    pub fn zero_grad(&mut self) {
        match &self.resetter {
            Some(o) if o.zero_grad().is_ok() => {}
            _ => {
                for p in &mut self.params {
                    p.zero_grad();
                }
            }
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
            let _ = self.scalars[2].fill_(-lr);
            for (i, p) in self.params.iter_mut().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                // The gradient is ours until the next zero_grad, so the decay and momentum
                // terms are added to it in place.
                let mut g = g;
                match self.kind {
                    OptimizerKind::Sgd => {
                        let [wd, momentum, neg_lr] = &self.scalars;
                        if self.weight_decay > 0.0 {
                            let _ = g.addcmul_(p, wd);
                        }
                        self.first[i] *= self.momentum;
                        self.first[i] += &g;
                        let _ = g.addcmul_(&self.first[i], momentum);
                        let _ = p.addcmul_(&g, neg_lr);
                    }
                    OptimizerKind::Adam => {
                        if self.weight_decay > 0.0 {
                            g += &*p * self.weight_decay;
                        }
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

    /// The state tensors (momentum and second-moment buffers), sharing storage with the
    /// optimiser's: writing into them sets its state (a data-parallel run's broadcast).
    pub fn state(&self) -> Vec<Tensor> {
        self.first
            .iter()
            .chain(&self.second)
            .map(Tensor::shallow_clone)
            .collect()
    }

    /// Steps taken (Adam's bias correction).
    pub fn steps(&self) -> i64 {
        self.steps
    }

    pub fn set_steps(&mut self, steps: i64) {
        self.steps = steps;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    /// One SGD step by hand, as PyTorch's `_single_tensor_sgd` writes it (Nesterov).
    fn by_hand(p: &[f64], g: &[f64], m: &[f64], lr: f64, wd: f64, mu: f64) -> (Vec<f64>, Vec<f64>) {
        let mut np = Vec::new();
        let mut nm = Vec::new();
        for i in 0..p.len() {
            let g = g[i] + wd * p[i];
            let m = mu * m[i] + g;
            let d = g + mu * m;
            np.push(p[i] - lr * d);
            nm.push(m);
        }
        (np, nm)
    }

    #[test]
    fn sgd_steps_as_pytorch_does_and_zero_grad_unsets_the_gradients() {
        let p = Tensor::from_slice(&[1.0f32, -2.0, 0.5]).set_requires_grad(true);
        let mut opt = Optimizer::new(
            OptimizerKind::Sgd,
            vec![p.shallow_clone()],
            5e-4,
            0.9,
            (0.9, 0.999),
        );
        let (mut want_p, mut want_m) = (vec![1.0, -2.0, 0.5], vec![0.0; 3]);
        for (step, lr) in [(1.0, 0.1), (2.0, 0.05)] {
            // loss = step * sum(p^2): gradient 2 * step * p.
            let loss = (&p * &p).sum(Kind::Float) * step;
            opt.zero_grad();
            assert!(
                !p.grad().defined(),
                "zero_grad sets gradients to none, as PyTorch's does"
            );
            loss.backward();
            let g: Vec<f64> = want_p.iter().map(|x| 2.0 * step * x).collect();
            (want_p, want_m) = by_hand(&want_p, &g, &want_m, lr, 5e-4, 0.9);
            opt.step(lr);
            let got = Vec::<f32>::try_from(p.detach()).unwrap();
            for (a, b) in got.iter().zip(&want_p) {
                assert!((*a as f64 - b).abs() < 1e-6, "{got:?} vs {want_p:?}");
            }
            let m = Vec::<f32>::try_from(&opt.first[0]).unwrap();
            for (a, b) in m.iter().zip(&want_m) {
                assert!((*a as f64 - b).abs() < 1e-6, "{m:?} vs {want_m:?}");
            }
        }
    }
}
