use super::catalogue::Catalogue;
use super::{Context, Observation, Proposal, Settings, Strategy};
use nasop_core::space::Domain;
use nasop_core::{Point, SearchSpace, Value};
use std::sync::Arc;

/// Predictor-guided search in the spirit of BANANAS (White et al., AAAI 2021), with two
/// models whose proposals alternate:
/// - local: a Gaussian process whose kernel compares candidates by their path encoding
///   (shared input-to-output paths) and their decisions, fitted to the normal scores of the
///   results' ranks, with expected improvement maximised over the neighbours and mutations
///   of the best candidates seen so far;
/// - global (spaces small enough to enumerate, see `catalogue`): a ridge regression on the
///   same features scores every distinct network and proposes the best untaken one, so the
///   search leaves a local optimum for a distant, better basin.
///
/// The first `initial_samples` candidates are random.
pub struct Bayesian {
    space: SearchSpace,
    initial: usize,
    candidates: usize,
    data: Vec<(Features, f64)>,
    points: Vec<Point>,
    keys: Vec<String>,
    catalogue: Option<Arc<Catalogue>>,
}

/// What the kernel compares: decision values, cell paths, and numbers on the unit range.
#[derive(Clone)]
struct Features {
    choices: Vec<u32>,
    paths: Vec<u64>,
    numbers: Vec<f64>,
}

/// At most this many results train the model (the best and the most recent), which keeps a
/// proposal at a few milliseconds however long the history.
const MAX_TRAINING: usize = 160;
/// Kernel length scale, in units of "one decision or path differs".
const LENGTH: f64 = 3.0;
/// Observation noise relative to the signal's variance.
const NOISE: f64 = 0.05;
/// Regularisation of the whole-space ridge screen.
const RIDGE_LAMBDA: f64 = 3.0;
/// Parents whose neighbourhoods are scored, and random candidates added to them.
const PARENTS: usize = 5;
const RANDOM_CANDIDATES: usize = 20;

impl Bayesian {
    pub fn new(space: &SearchSpace, settings: &Settings) -> Self {
        Bayesian {
            space: space.clone(),
            initial: settings.initial_samples.max(1),
            candidates: settings.candidates.max(1),
            data: Vec::new(),
            points: Vec::new(),
            keys: Vec::new(),
            catalogue: Catalogue::of(space),
        }
    }

    fn features(&self, point: &Point) -> Features {
        let mut choices = Vec::new();
        let mut numbers = Vec::new();
        for (d, v) in self.space.decisions().iter().zip(point) {
            match (&d.domain, v) {
                (Domain::Choice { .. }, Value::Choice(i)) => choices.push(*i),
                (domain, v) => numbers.push(domain.unit(*v)),
            }
        }
        Features {
            choices,
            paths: self.space.paths(point),
            numbers,
        }
    }

    /// The `k` untaken networks of the catalogue that a ridge model on all results rates best.
    fn screen(&self, cat: &Catalogue, ctx: &Context<'_>, k: usize) -> Vec<Point> {
        let values: Vec<f64> = self.data.iter().map(|d| d.1).collect();
        let targets = normal_scores(&values);
        let data: Vec<(usize, f64)> = self
            .keys
            .iter()
            .zip(targets)
            .filter_map(|(key, t)| cat.index.get(key).map(|&i| (i, t)))
            .collect();
        let Some(w) = cat.ridge(&data, RIDGE_LAMBDA) else {
            return Vec::new();
        };
        let mut scored: Vec<(usize, f64)> = (0..cat.points.len())
            .map(|i| (i, cat.score(&w, i)))
            .collect();
        scored.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored
            .into_iter()
            .filter(|(i, _)| !ctx.taken.contains(&cat.keys[*i], ctx.budget))
            .take(k)
            .map(|(i, _)| cat.points[i].clone())
            .collect()
    }

    /// Neighbours and mutations of the best candidates (and a few random points), untaken,
    /// best expected improvement first; empty when the model cannot be fitted.
    fn expected_improvement_ranking(&self, ctx: &mut Context<'_>) -> Vec<Point> {
        let training = self.training();
        let Some(gp) = Gp::fit(&training) else {
            return Vec::new();
        };
        let parents: Vec<Point> = self.parents(PARENTS);
        let mut pool: Vec<Point> = Vec::new();
        for p in &parents {
            pool.extend(ctx.space.neighbours(p));
        }
        let mut k = 0;
        while pool.len() < self.candidates && !parents.is_empty() && k < self.candidates * 2 {
            let once = ctx.space.mutate(&parents[k % parents.len()], &mut ctx.rng);
            pool.push(ctx.space.mutate(&once, &mut ctx.rng));
            k += 1;
        }
        for _ in 0..RANDOM_CANDIDATES {
            pool.push(ctx.space.sample(&mut ctx.rng));
        }
        let mut seen = std::collections::HashSet::new();
        let mut scored: Vec<(Point, f64)> = pool
            .into_iter()
            .filter_map(|p| {
                let key = ctx.space.key(&p);
                if ctx.taken.contains(&key, ctx.budget) || !seen.insert(key) {
                    return None;
                }
                let (mu, sigma) = gp.predict(&self.features(&p));
                Some((p, expected_improvement(mu, sigma, gp.best)))
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored.into_iter().map(|(p, _)| p).collect()
    }

    /// The `k` best points seen.
    fn parents(&self, k: usize) -> Vec<Point> {
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        order.sort_by(|&a, &b| self.data[b].1.total_cmp(&self.data[a].1));
        order
            .into_iter()
            .take(k)
            .map(|i| self.points[i].clone())
            .collect()
    }

    /// The training set: the best half and the most recent half of the cap.
    fn training(&self) -> Vec<&(Features, f64)> {
        if self.data.len() <= MAX_TRAINING {
            return self.data.iter().collect();
        }
        let mut by_value: Vec<usize> = (0..self.data.len()).collect();
        by_value.sort_by(|&a, &b| self.data[b].1.total_cmp(&self.data[a].1));
        let mut keep: Vec<usize> = by_value[..MAX_TRAINING / 2].to_vec();
        for i in (0..self.data.len()).rev() {
            if keep.len() == MAX_TRAINING {
                break;
            }
            if !keep.contains(&i) {
                keep.push(i);
            }
        }
        keep.sort_unstable();
        keep.into_iter().map(|i| &self.data[i]).collect()
    }
}

fn distance(a: &Features, b: &Features) -> f64 {
    let choices = a
        .choices
        .iter()
        .zip(&b.choices)
        .filter(|(x, y)| x != y)
        .count();
    // Symmetric difference of two sorted path lists.
    let (mut i, mut j, mut common) = (0, 0, 0);
    while i < a.paths.len() && j < b.paths.len() {
        match a.paths[i].cmp(&b.paths[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let paths = a.paths.len() + b.paths.len() - 2 * common;
    let numbers: f64 = a
        .numbers
        .iter()
        .zip(&b.numbers)
        .map(|(x, y)| ((x - y) * 10.0).powi(2))
        .sum::<f64>()
        .sqrt();
    choices as f64 + paths as f64 + numbers
}

fn kernel(a: &Features, b: &Features) -> f64 {
    (-distance(a, b) / LENGTH).exp()
}

/// A fitted Gaussian process: Cholesky factor and weights, in standardised units.
struct Gp<'a> {
    train: Vec<&'a Features>,
    chol: Vec<f64>,
    alpha: Vec<f64>,
    best: f64,
}

impl<'a> Gp<'a> {
    fn fit(data: &[&'a (Features, f64)]) -> Option<Self> {
        let n = data.len();
        let values: Vec<f64> = data.iter().map(|d| d.1).collect();
        let z = normal_scores(&values);
        let train: Vec<&Features> = data.iter().map(|d| &d.0).collect();
        let mut k = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let v = kernel(train[i], train[j]) + if i == j { NOISE } else { 0.0 };
                k[i * n + j] = v;
            }
        }
        let chol = cholesky(k, n)?;
        let alpha = solve_upper(&chol, n, &solve_lower(&chol, n, &z));
        let best = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Gp {
            train,
            chol,
            alpha,
            best,
        })
    }

    /// Posterior mean and standard deviation, standardised.
    fn predict(&self, f: &Features) -> (f64, f64) {
        let n = self.train.len();
        let ks: Vec<f64> = self.train.iter().map(|t| kernel(t, f)).collect();
        let mu = ks.iter().zip(&self.alpha).map(|(a, b)| a * b).sum();
        let v = solve_lower(&self.chol, n, &ks);
        let var = (1.0 - v.iter().map(|x| x * x).sum::<f64>()).max(1e-12);
        (mu, var.sqrt())
    }
}

fn cholesky(mut a: Vec<f64>, n: usize) -> Option<Vec<f64>> {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d <= 0.0 {
            return None;
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    Some(a)
}

/// Solves the symmetric positive definite system `a x = b` (a is n×n, lower triangle used).
pub(crate) fn solve_spd(a: Vec<f64>, n: usize, b: &[f64]) -> Option<Vec<f64>> {
    let l = cholesky(a, n)?;
    Some(solve_upper(&l, n, &solve_lower(&l, n, b)))
}

fn solve_lower(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut x = vec![0.0; n];
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * n + k] * x[k];
        }
        x[i] = s / l[i * n + i];
    }
    x
}

fn solve_upper(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in i + 1..n {
            s -= l[k * n + i] * x[k];
        }
        x[i] = s / l[i * n + i];
    }
    x
}

/// Expected improvement over `best` of a Gaussian N(mu, sigma²).
fn expected_improvement(mu: f64, sigma: f64, best: f64) -> f64 {
    let z = (mu - best) / sigma;
    (mu - best) * normal_cdf(z) + sigma * normal_pdf(z)
}

/// Gaussian copula: the normal scores of the values' ranks, so a few very bad results do not
/// flatten the differences between good ones, whatever the metric's scale.
fn normal_scores(values: &[f64]) -> Vec<f64> {
    let n = values.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut scores = vec![0.0; n];
    for (rank, &i) in order.iter().enumerate() {
        scores[i] = normal_quantile((rank as f64 + 0.5) / n as f64);
    }
    scores
}

/// The standard normal quantile (Acklam's rational approximation, relative error 1e-9).
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383_577_518_672_69e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let low = 0.02425;
    if p < low {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p > 1.0 - low {
        -normal_quantile(1.0 - p)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

fn normal_pdf(z: f64) -> f64 {
    (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

fn normal_cdf(z: f64) -> f64 {
    0.5 * (1.0 + erf(z / std::f64::consts::SQRT_2))
}

/// Abramowitz & Stegun 7.1.26 (error below 1.5e-7, plenty for ranking candidates).
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
            + 0.254_829_592)
            * t
            * (-x * x).exp();
    if x >= 0.0 { y } else { -y }
}

impl Strategy for Bayesian {
    fn propose(&mut self, ctx: &mut Context<'_>, n: usize) -> Vec<Proposal> {
        if self.data.len() < self.initial {
            return (0..n).map_while(|_| ctx.random()).collect();
        }
        let mut local = self.expected_improvement_ranking(ctx).into_iter();
        let mut global = match &self.catalogue {
            Some(cat) => self.screen(cat, ctx, n),
            None => Vec::new(),
        }
        .into_iter();
        let mut out = Vec::with_capacity(n);
        for slot in 0..n {
            // Alternate between the global screen and local expected improvement.
            let use_global = (self.data.len() + slot).is_multiple_of(2);
            let pick = if use_global {
                global.next().or_else(|| local.next())
            } else {
                local.next().or_else(|| global.next())
            };
            let claimed = pick.and_then(|p| ctx.claim(p)).or_else(|| {
                // Taken meanwhile (or nothing ranked): the next of either list, then random.
                local
                    .by_ref()
                    .chain(global.by_ref())
                    .find_map(|p| ctx.claim(p))
                    .or_else(|| ctx.random())
            });
            match claimed {
                Some(p) => out.push(p),
                None => break,
            }
        }
        out
    }

    fn observe(&mut self, obs: &Observation) {
        if let Some(v) = obs.value() {
            let f = self.features(&obs.point);
            self.data.push((f, v));
            self.points.push(obs.point.clone());
            self.keys.push(obs.key.clone());
        }
    }
}
