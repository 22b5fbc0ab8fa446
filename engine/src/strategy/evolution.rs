use super::{Context, Observation, Proposal, Settings, Strategy};
use nasop_core::Point;
use std::collections::VecDeque;

/// Regularized evolution (Real et al., AAAI 2019): the population is the most recent
/// `population` results; a child mutates the best of `sample_size` random members; ageing
/// (not fitness) removes members.
pub struct RegularizedEvolution {
    population: VecDeque<(Point, f64)>,
    capacity: usize,
    sample_size: usize,
}

impl RegularizedEvolution {
    pub fn new(settings: &Settings) -> Self {
        RegularizedEvolution {
            population: VecDeque::with_capacity(settings.population),
            capacity: settings.population.max(1),
            sample_size: settings.sample_size.clamp(1, settings.population.max(1)),
        }
    }
}

impl Strategy for RegularizedEvolution {
    fn propose(&mut self, ctx: &mut Context<'_>, n: usize) -> Vec<Proposal> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let next = if self.population.len() < self.capacity {
                ctx.random()
            } else {
                let picks = ctx
                    .rng
                    .choose_indices(self.population.len(), self.sample_size);
                let parent = picks
                    .into_iter()
                    .map(|i| &self.population[i])
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|(p, _)| p.clone())
                    .expect("a full population");
                ctx.mutant(&parent)
            };
            match next {
                Some(p) => out.push(p),
                None => break,
            }
        }
        out
    }

    fn observe(&mut self, obs: &Observation) {
        let Some(value) = obs.value() else { return };
        if self.population.len() == self.capacity {
            self.population.pop_front();
        }
        self.population.push_back((obs.point.clone(), value));
    }
}
