use super::{Context, Observation, Proposal, Strategy};

/// Grid points in order, skipping any whose network was already taken.
///
/// The cursor only skips taken points, so a strategy rebuilt with the cursor at zero
/// proposes the same points as one that kept it.
#[derive(Default)]
pub struct GridSearch {
    cursor: u128,
}

impl Strategy for GridSearch {
    fn propose(&mut self, ctx: &mut Context<'_>, n: usize) -> Vec<Proposal> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let Some(point) = ctx.space.grid_point(self.cursor) else {
                break;
            };
            self.cursor += 1;
            if let Some(p) = ctx.claim(point) {
                out.push(p);
            }
        }
        out
    }

    fn observe(&mut self, _: &Observation) {}
}
