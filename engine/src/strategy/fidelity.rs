use super::{Context, Observation, Proposal, Strategy};
use nasop_core::Point;
use std::collections::HashMap;

/// How trial budgets grow (multi-fidelity scheduling over epochs).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum FidelityKind {
    /// Asynchronous successive halving (Li et al. 2020): whenever a slot frees, promote the
    /// best untried `1/eta` of a rung to the next one, else start a new candidate.
    Asha,
    /// Successive halving (Jamieson & Talwalkar 2016): like ASHA, but a rung's candidates are
    /// promoted only once no trial at that rung is still running.
    SuccessiveHalving,
    /// Hyperband (Li et al. 2017), asynchronous: each new candidate starts in a bracket drawn
    /// at random (bracket s starts at rung s) and competes for promotion inside it.
    Hyperband,
}

/// The rungs (budgets in epochs, increasing) and the reduction factor.
#[derive(Debug, Clone, PartialEq)]
pub struct FidelitySchedule {
    pub kind: FidelityKind,
    pub rungs: Vec<u32>,
    pub eta: f64,
}

impl FidelitySchedule {
    /// Rungs min, min·eta, min·eta², … below max, then max.
    pub fn geometric(kind: FidelityKind, min: u32, max: u32, eta: f64) -> Self {
        let mut rungs = Vec::new();
        let mut r = min.max(1) as f64;
        while (r.round() as u32) < max {
            rungs.push(r.round() as u32);
            r *= eta;
        }
        rungs.push(max);
        rungs.dedup();
        FidelitySchedule { kind, rungs, eta }
    }

    fn rung_of(&self, budget: u32) -> usize {
        self.rungs.iter().rposition(|&r| r <= budget).unwrap_or(0)
    }
}

/// Results of one (bracket, rung): point, key, value.
type RungResults = Vec<(Point, String, f64)>;

/// A base strategy (which picks new candidates) under a multi-fidelity schedule.
pub struct Scheduled {
    base: Box<dyn Strategy>,
    schedule: FidelitySchedule,
    /// Results per (bracket, rung): point, key, value.
    results: HashMap<(usize, usize), RungResults>,
    /// The bracket of each candidate (the rung it started at).
    bracket_of: HashMap<String, usize>,
}

impl Scheduled {
    pub fn new(base: Box<dyn Strategy>, schedule: FidelitySchedule) -> Self {
        Scheduled {
            base,
            schedule,
            results: HashMap::new(),
            bracket_of: HashMap::new(),
        }
    }

    fn promotion(&self, ctx: &mut Context<'_>) -> Option<Proposal> {
        let top = self.schedule.rungs.len() - 1;
        let brackets = if self.schedule.kind == FidelityKind::Hyperband {
            top + 1
        } else {
            1
        };
        for rung in (0..top).rev() {
            let next_budget = self.schedule.rungs[rung + 1];
            if self.schedule.kind == FidelityKind::SuccessiveHalving
                && ctx
                    .pending
                    .get(&self.schedule.rungs[rung])
                    .copied()
                    .unwrap_or(0)
                    > 0
            {
                continue;
            }
            for bracket in 0..brackets.min(rung + 1) {
                let Some(done) = self.results.get(&(bracket, rung)) else {
                    continue;
                };
                let quota = (done.len() as f64 / self.schedule.eta).floor() as usize;
                let mut order: Vec<&(Point, String, f64)> = done.iter().collect();
                order.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.1.cmp(&b.1)));
                for (point, key, _) in order.into_iter().take(quota) {
                    if ctx.taken.insert(key, next_budget) {
                        return Some(Proposal {
                            point: point.clone(),
                            key: key.clone(),
                            budget: next_budget,
                        });
                    }
                }
            }
        }
        None
    }
}

impl Strategy for Scheduled {
    fn propose(&mut self, ctx: &mut Context<'_>, n: usize) -> Vec<Proposal> {
        let mut out = Vec::with_capacity(n);
        let top = self.schedule.rungs.len() - 1;
        while out.len() < n {
            if let Some(p) = self.promotion(ctx) {
                out.push(p);
                continue;
            }
            let bracket = if self.schedule.kind == FidelityKind::Hyperband {
                ctx.rng.below(top + 1)
            } else {
                0
            };
            let budget = ctx.budget;
            ctx.budget = self.schedule.rungs[bracket];
            let fresh = self.base.propose(ctx, 1);
            ctx.budget = budget;
            match fresh.into_iter().next() {
                Some(p) => out.push(p),
                None => break,
            }
        }
        out
    }

    fn observe(&mut self, obs: &Observation) {
        let rung = self.schedule.rung_of(obs.budget);
        let bracket = *self.bracket_of.entry(obs.key.clone()).or_insert(rung);
        if bracket == rung {
            self.base.observe(obs);
        }
        if let Some(v) = obs.value() {
            let bracket = if self.schedule.kind == FidelityKind::Hyperband {
                bracket
            } else {
                0
            };
            self.results.entry((bracket, rung)).or_default().push((
                obs.point.clone(),
                obs.key.clone(),
                v,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometric_rungs_end_at_max() {
        let s = FidelitySchedule::geometric(FidelityKind::Asha, 1, 27, 3.0);
        assert_eq!(s.rungs, vec![1, 3, 9, 27]);
        let s = FidelitySchedule::geometric(FidelityKind::Asha, 2, 20, 3.0);
        assert_eq!(s.rungs, vec![2, 6, 18, 20]);
        assert_eq!(s.rung_of(7), 1);
        assert_eq!(
            FidelitySchedule::geometric(FidelityKind::Asha, 5, 5, 3.0).rungs,
            vec![5]
        );
    }
}
