use super::{Context, Observation, Proposal, Strategy};

/// Uniform random sampling without repeats.
pub struct RandomSearch;

impl Strategy for RandomSearch {
    fn propose(&mut self, ctx: &mut Context<'_>, n: usize) -> Vec<Proposal> {
        (0..n).map_while(|_| ctx.random()).collect()
    }

    fn observe(&mut self, _: &Observation) {}
}
