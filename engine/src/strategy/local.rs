use super::{Context, KeySet, Observation, Proposal, Strategy};
use nasop_core::{Point, SearchSpace};

/// First-improvement local search with random restarts (White et al., "Local search is
/// state of the art for NAS benchmarks", 2020).
///
/// The climb moves to the first neighbour that beats the current point. When every
/// neighbour of the current point has been seen without improvement, it is a local optimum
/// and the next result that is not its neighbour becomes the new start.
pub struct LocalSearch {
    space: SearchSpace,
    current: Option<(Point, String, f64)>,
    /// Keys of the current point's neighbours, and how many of them have been seen.
    neighbourhood: KeySet,
    seen_neighbours: KeySet,
    seen: KeySet,
}

impl LocalSearch {
    pub fn new(space: SearchSpace) -> Self {
        LocalSearch {
            space,
            current: None,
            neighbourhood: KeySet::new(),
            seen_neighbours: KeySet::new(),
            seen: KeySet::new(),
        }
    }

    fn move_to(&mut self, point: &Point, key: &str, value: f64) {
        self.neighbourhood = self
            .space
            .neighbours(point)
            .iter()
            .map(|p| self.space.key(p))
            .filter(|k| k != key)
            .collect();
        self.seen_neighbours = self
            .neighbourhood
            .intersection(&self.seen)
            .cloned()
            .collect();
        self.current = Some((point.clone(), key.to_string(), value));
    }

    fn at_local_optimum(&self) -> bool {
        self.current.is_some() && self.seen_neighbours.len() == self.neighbourhood.len()
    }
}

impl Strategy for LocalSearch {
    fn propose(&mut self, ctx: &mut Context<'_>, n: usize) -> Vec<Proposal> {
        let mut out = Vec::with_capacity(n);
        if let Some((point, _, _)) = &self.current {
            let mut neighbours = ctx.space.neighbours(point);
            ctx.rng.shuffle(&mut neighbours);
            for q in neighbours {
                if out.len() == n {
                    break;
                }
                if let Some(p) = ctx.claim(q) {
                    out.push(p);
                }
            }
        }
        // A fresh start, a restart, or extra parallel slots: random points.
        while out.len() < n {
            match ctx.random() {
                Some(p) => out.push(p),
                None => break,
            }
        }
        out
    }

    fn observe(&mut self, obs: &Observation) {
        self.seen.insert(obs.key.clone());
        if self.neighbourhood.contains(&obs.key) {
            self.seen_neighbours.insert(obs.key.clone());
        }
        let Some(value) = obs.value() else { return };
        let better = self.current.as_ref().is_none_or(|(_, _, v)| value > *v);
        let restart = self.at_local_optimum() && !self.neighbourhood.contains(&obs.key);
        if better || restart {
            self.move_to(&obs.point, &obs.key, value);
        }
    }
}
