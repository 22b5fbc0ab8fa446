use super::pareto::{crowding, ranks};
use super::{Context, Observation, Proposal, Settings, Strategy};
use nasop_core::Point;
use nasop_core::space::Value;

/// NSGA-II (Deb et al. 2002) for several objectives: the population is the best
/// `population` results by constrained non-dominated rank (candidates outside the
/// constraints rank after all inside, by how far outside) and crowding distance; parents are
/// picked by binary tournament; a child takes each decision from either parent and is then
/// mutated in one decision.
pub struct Nsga2 {
    capacity: usize,
    results: Vec<(Point, Vec<f64>, f64)>,
}

impl Nsga2 {
    pub fn new(settings: &Settings) -> Self {
        Nsga2 {
            capacity: settings.population.max(2),
            results: Vec::new(),
        }
    }

    /// The population as (point, rank, crowding), best first.
    fn population(&self) -> Vec<(usize, usize, f64)> {
        let feasible: Vec<usize> = (0..self.results.len())
            .filter(|&i| self.results[i].2 == 0.0)
            .collect();
        let objs: Vec<Vec<f64>> = feasible
            .iter()
            .map(|&i| self.results[i].1.clone())
            .collect();
        let rank = ranks(&objs);
        let mut scored: Vec<(usize, usize, f64)> = Vec::new();
        let max_rank = rank.iter().copied().max().unwrap_or(0);
        for r in 0..=max_rank {
            let members: Vec<usize> = (0..feasible.len()).filter(|&k| rank[k] == r).collect();
            let crowd = crowding(&objs, &members);
            for (m, c) in members.iter().zip(crowd) {
                scored.push((feasible[*m], r, c));
            }
        }
        scored.sort_by(|a, b| a.1.cmp(&b.1).then(b.2.total_cmp(&a.2)));
        // Infeasible results fill the population after every feasible one, least violating first.
        let mut infeasible: Vec<usize> = (0..self.results.len())
            .filter(|&i| self.results[i].2 > 0.0)
            .collect();
        infeasible.sort_by(|&a, &b| self.results[a].2.total_cmp(&self.results[b].2));
        scored.extend(infeasible.into_iter().map(|i| (i, max_rank + 1, 0.0)));
        scored.truncate(self.capacity);
        scored
    }
}

impl Strategy for Nsga2 {
    fn propose(&mut self, ctx: &mut Context<'_>, n: usize) -> Vec<Proposal> {
        let mut out = Vec::with_capacity(n);
        let population = if self.results.len() >= self.capacity {
            self.population()
        } else {
            Vec::new()
        };
        for _ in 0..n {
            let next = if population.len() < 2 {
                ctx.random()
            } else {
                let tournament = |rng: &mut nasop_core::Rng| {
                    let a = &population[rng.below(population.len())];
                    let b = &population[rng.below(population.len())];
                    if (a.1, -a.2) <= (b.1, -b.2) { a.0 } else { b.0 }
                };
                let pa = tournament(&mut ctx.rng);
                let pb = tournament(&mut ctx.rng);
                let child: Point = self.results[pa]
                    .0
                    .iter()
                    .zip(&self.results[pb].0)
                    .map(|(x, y): (&Value, &Value)| if ctx.rng.unit() < 0.5 { *x } else { *y })
                    .collect();
                ctx.mutant(&child)
            };
            match next {
                Some(p) => out.push(p),
                None => break,
            }
        }
        out
    }

    fn observe(&mut self, obs: &Observation) {
        if let Some(objectives) = &obs.objectives {
            self.results
                .push((obs.point.clone(), objectives.clone(), obs.violation));
        }
    }
}
