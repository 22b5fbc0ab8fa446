//! Whole-space screening for small spaces.
//!
//! When a space has few enough distinct networks (NAS-Bench-201 has 4,930), every one of
//! them can be scored by a cheap linear model on its decisions and paths; the best few join
//! the candidates that the Gaussian process judges. That lets predictor-guided search jump
//! to a distant basin instead of polishing the nearest local optimum.

use nasop_core::space::Domain;
use nasop_core::{Point, SearchSpace};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Spaces with at most this many grid points are enumerated.
const MAX_POINTS: u128 = 100_000;

/// One representative point per distinct network, with dense feature indices.
pub struct Catalogue {
    pub points: Vec<Point>,
    pub keys: Vec<String>,
    /// Feature indices of each point: one per decision value, one per cell path.
    pub features: Vec<Vec<u32>>,
    pub index: HashMap<String, usize>,
    pub n_features: usize,
}

impl Catalogue {
    /// The shared catalogue of `space`, built on first use; `None` for spaces too large or
    /// with numeric decisions.
    pub fn of(space: &SearchSpace) -> Option<Arc<Catalogue>> {
        let enumerable = space
            .decisions()
            .iter()
            .all(|d| matches!(d.domain, Domain::Choice { .. }))
            && space.grid_size() <= MAX_POINTS;
        if !enumerable {
            return None;
        }
        static CACHE: OnceLock<Mutex<HashMap<String, Arc<Catalogue>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        let id = format!("{space:?}");
        let mut guard = cache.lock().unwrap_or_else(|e| e.into_inner());
        Some(
            guard
                .entry(id)
                .or_insert_with(|| Arc::new(Catalogue::build(space)))
                .clone(),
        )
    }

    fn build(space: &SearchSpace) -> Catalogue {
        let mut offsets = Vec::new();
        let mut total = 0u32;
        for d in space.decisions() {
            offsets.push(total);
            if let Domain::Choice { options } = &d.domain {
                total += options.len() as u32;
            }
        }
        let mut path_ids: HashMap<u64, u32> = HashMap::new();
        let mut cat = Catalogue {
            points: Vec::new(),
            keys: Vec::new(),
            features: Vec::new(),
            index: HashMap::new(),
            n_features: 0,
        };
        for k in 0..space.grid_size() {
            let point = space.grid_point(k).expect("k is below the grid size");
            let key = space.key(&point);
            if cat.index.contains_key(&key) {
                continue;
            }
            let mut f: Vec<u32> = point
                .iter()
                .zip(&offsets)
                .map(|(v, o)| match v {
                    nasop_core::Value::Choice(i) => o + i,
                    _ => unreachable!("only choice spaces are enumerated"),
                })
                .collect();
            for p in space.paths(&point) {
                let next = total + path_ids.len() as u32;
                f.push(*path_ids.entry(p).or_insert(next));
            }
            cat.index.insert(key.clone(), cat.points.len());
            cat.points.push(point);
            cat.keys.push(key);
            cat.features.push(f);
        }
        cat.n_features = total as usize + path_ids.len();
        cat
    }

    /// Ridge regression on binary features: the weight of every feature, from (catalogue
    /// index, target) pairs. Solved in whichever form is smaller (dual n×n for few results,
    /// primal d×d for many), so its cost stops growing with the history.
    pub fn ridge(&self, data: &[(usize, f64)], lambda: f64) -> Option<Vec<f64>> {
        let n = data.len();
        if n == 0 {
            return None;
        }
        let d = self.n_features;
        if n <= d {
            let mut k = vec![0.0; n * n];
            let mut mark = vec![u32::MAX; d];
            for i in 0..n {
                for &f in &self.features[data[i].0] {
                    mark[f as usize] = i as u32;
                }
                for j in 0..=i {
                    let shared = self.features[data[j].0]
                        .iter()
                        .filter(|&&f| mark[f as usize] == i as u32)
                        .count();
                    k[i * n + j] = shared as f64 + if i == j { lambda } else { 0.0 };
                }
            }
            let ys: Vec<f64> = data.iter().map(|x| x.1).collect();
            let alpha = super::bayesian::solve_spd(k, n, &ys)?;
            let mut w = vec![0.0; d];
            for (i, a) in alpha.iter().enumerate() {
                for &f in &self.features[data[i].0] {
                    w[f as usize] += a;
                }
            }
            Some(w)
        } else {
            // (XᵀX + λI) w = Xᵀy, filling the lower triangle.
            let mut a = vec![0.0; d * d];
            let mut b = vec![0.0; d];
            for &(i, y) in data {
                let f = &self.features[i];
                for &p in f {
                    b[p as usize] += y;
                    for &q in f {
                        if q <= p {
                            a[p as usize * d + q as usize] += 1.0;
                        }
                    }
                }
            }
            for p in 0..d {
                a[p * d + p] += lambda;
            }
            super::bayesian::solve_spd(a, d, &b)
        }
    }

    pub fn score(&self, weights: &[f64], i: usize) -> f64 {
        self.features[i].iter().map(|&f| weights[f as usize]).sum()
    }
}
