use super::{Context, Observation, Proposal, Settings, Strategy};
use nasop_core::space::Domain;
use nasop_core::{Point, SearchSpace, Value};

/// REINFORCE (Williams 1992) as in the NAS-Bench-201 baselines: an independent softmax
/// policy per choice (a Gaussian over the unit range for numbers), updated after every
/// result by the policy gradient with a moving-average baseline. Advantages are divided by
/// a moving average of their size so the learning rate does not depend on the metric's
/// scale.
pub struct Reinforce {
    space: SearchSpace,
    logits: Vec<Vec<f64>>,
    means: Vec<f64>,
    learning_rate: f64,
    decay: f64,
    baseline: Option<f64>,
    scale: f64,
}

const SIGMA: f64 = 0.2;

impl Reinforce {
    pub fn new(space: &SearchSpace, settings: &Settings) -> Self {
        let logits = space
            .decisions()
            .iter()
            .map(|d| match &d.domain {
                Domain::Choice { options } => vec![0.0; options.len()],
                _ => Vec::new(),
            })
            .collect();
        Reinforce {
            space: space.clone(),
            logits,
            means: vec![0.5; space.decisions().len()],
            learning_rate: settings.learning_rate,
            decay: settings.baseline_decay,
            baseline: None,
            scale: 0.0,
        }
    }

    fn sample(&self, ctx: &mut Context<'_>) -> Point {
        self.space
            .decisions()
            .iter()
            .enumerate()
            .map(|(i, d)| match &d.domain {
                Domain::Choice { .. } => {
                    let probs = softmax(&self.logits[i]);
                    let mut u = ctx.rng.unit();
                    let mut pick = probs.len() - 1;
                    for (k, p) in probs.iter().enumerate() {
                        if u < *p {
                            pick = k;
                            break;
                        }
                        u -= p;
                    }
                    Value::Choice(pick as u32)
                }
                Domain::Int { min, max } => {
                    let u = (self.means[i] + SIGMA * ctx.rng.normal()).clamp(0.0, 1.0);
                    Value::Int((*min as f64 + u * (max - min) as f64).round() as i64)
                }
                Domain::Real { min, max, log } => {
                    let u = (self.means[i] + SIGMA * ctx.rng.normal()).clamp(0.0, 1.0);
                    let x = if *log {
                        (min.ln() + u * (max.ln() - min.ln())).exp()
                    } else {
                        min + u * (max - min)
                    };
                    Value::Real(x.clamp(*min, *max))
                }
            })
            .collect()
    }
}

fn softmax(logits: &[f64]) -> Vec<f64> {
    let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

impl Strategy for Reinforce {
    fn propose(&mut self, ctx: &mut Context<'_>, n: usize) -> Vec<Proposal> {
        let mut out = Vec::with_capacity(n);
        'slots: for _ in 0..n {
            for _ in 0..super::TRIES {
                let p = self.sample(ctx);
                if let Some(prop) = ctx.claim(p) {
                    out.push(prop);
                    continue 'slots;
                }
            }
            // The policy has converged onto taken candidates: explore uniformly.
            match ctx.random() {
                Some(p) => out.push(p),
                None => break,
            }
        }
        out
    }

    fn observe(&mut self, obs: &Observation) {
        let Some(reward) = obs.value() else { return };
        let baseline = *self.baseline.get_or_insert(reward);
        let advantage = reward - baseline;
        self.scale = if self.scale == 0.0 {
            advantage.abs()
        } else {
            self.decay * self.scale + (1.0 - self.decay) * advantage.abs()
        };
        self.baseline = Some(self.decay * baseline + (1.0 - self.decay) * reward);
        if self.scale <= 0.0 {
            return;
        }
        let step = self.learning_rate * advantage / self.scale;
        for (i, d) in self.space.decisions().iter().enumerate() {
            match (&d.domain, obs.point[i]) {
                (Domain::Choice { .. }, Value::Choice(a)) => {
                    let probs = softmax(&self.logits[i]);
                    for (k, l) in self.logits[i].iter_mut().enumerate() {
                        let indicator = if k == a as usize { 1.0 } else { 0.0 };
                        *l += step * (indicator - probs[k]);
                    }
                }
                (domain, v) => {
                    let u = domain.unit(v);
                    let grad = (u - self.means[i]) / (SIGMA * SIGMA);
                    self.means[i] = (self.means[i] + step * SIGMA * SIGMA * grad).clamp(0.0, 1.0);
                }
            }
        }
    }
}
