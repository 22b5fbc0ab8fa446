//! The data shaping behind the charts, kept apart from drawing so that it is tested on its
//! own: downsampling, best so far, the cell drawing's layout, parallel coordinates.

use nasop_core::arch::{Architecture, ZERO_OPS};

/// One plotted point: x, y and the trial it stands for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub trial: u32,
}

/// Points thinned to at most one per cell of a `cols` × `rows` grid over their extent
/// (the first point of each cell is kept, in input order, and the highest and lowest
/// point whatever their cell), so that 10,000 trials draw as what a screen can show.
/// Fewer points than a quarter of the cells come back unchanged.
pub fn thin(points: &[Point], cols: usize, rows: usize) -> Vec<Point> {
    if points.len() <= cols * rows / 4 || points.is_empty() {
        return points.to_vec();
    }
    let (x0, x1) = extent(points.iter().map(|p| p.x));
    let (y0, y1) = extent(points.iter().map(|p| p.y));
    let cell = |v: f64, lo: f64, hi: f64, n: usize| -> usize {
        if hi <= lo {
            0
        } else {
            (((v - lo) / (hi - lo)) * (n - 1) as f64).round() as usize
        }
    };
    // The highest and lowest points always stay: the best trial is one of them.
    let by_y = |a: &&Point, b: &&Point| a.y.total_cmp(&b.y);
    let keep = [
        points
            .iter()
            .filter(|p| p.y.is_finite())
            .min_by(by_y)
            .map(|p| p.trial),
        points
            .iter()
            .filter(|p| p.y.is_finite())
            .max_by(by_y)
            .map(|p| p.trial),
    ];
    let mut seen = vec![false; cols * rows];
    points
        .iter()
        .filter(|p| {
            let k = cell(p.y, y0, y1, rows) * cols + cell(p.x, x0, x1, cols);
            !std::mem::replace(&mut seen[k], true) || keep.contains(&Some(p.trial))
        })
        .copied()
        .collect()
}

/// The smallest and largest finite value (0, 1 when there is none).
pub fn extent(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi { (0.0, 1.0) } else { (lo, hi) }
}

/// The best value so far at each improvement, in x order: a step line's corners. `points`
/// need not be sorted.
pub fn best_so_far(points: &[Point], maximize: bool) -> Vec<Point> {
    let mut sorted = points.to_vec();
    sorted.sort_by(|a, b| a.x.total_cmp(&b.x).then(a.trial.cmp(&b.trial)));
    let mut out: Vec<Point> = Vec::new();
    for p in sorted {
        let better = match out.last() {
            None => true,
            Some(b) => {
                if maximize {
                    p.y > b.y
                } else {
                    p.y < b.y
                }
            }
        };
        if better {
            out.push(p);
        }
    }
    out
}

/// A cell laid out for drawing: node positions in [0, 1]² and each edge with whether it
/// matters (lies on a path from the input to the output through non-zero edges).
#[derive(Debug, Clone, PartialEq)]
pub struct CellLayout {
    pub nodes: Vec<(f64, f64)>,
    pub edges: Vec<CellEdge>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CellEdge {
    pub from: usize,
    pub to: usize,
    pub op: String,
    /// False for a zero edge, and for an edge no input reaches or that reaches no output.
    pub live: bool,
}

/// Lays a cell out left to right, the input at the left and the output at the right, the
/// nodes between on a gentle arc so that every edge i → j is visible.
pub fn cell_layout(nodes: usize, edges: &[nasop_core::arch::Edge]) -> CellLayout {
    let n = nodes.max(2);
    let positions = (0..n)
        .map(|k| {
            let x = k as f64 / (n - 1) as f64;
            let y = if k == 0 || k == n - 1 {
                0.5
            } else if k % 2 == 1 {
                0.15
            } else {
                0.85
            };
            (x, y)
        })
        .collect();
    let zero = |op: &str| ZERO_OPS.contains(&op);
    // Forward: reached from the input. Backward: reaches the output.
    let mut reached = vec![false; n];
    reached[0] = true;
    for j in 1..n {
        reached[j] = edges
            .iter()
            .any(|e| e.to == j && !zero(&e.op) && reached[e.from]);
    }
    let mut reaches = vec![false; n];
    reaches[n - 1] = true;
    for i in (0..n - 1).rev() {
        reaches[i] = edges
            .iter()
            .any(|e| e.from == i && !zero(&e.op) && reaches[e.to]);
    }
    CellLayout {
        nodes: positions,
        edges: edges
            .iter()
            .map(|e| CellEdge {
                from: e.from,
                to: e.to,
                op: e.op.clone(),
                live: !zero(&e.op) && reached[e.from] && reaches[e.to],
            })
            .collect(),
    }
}

/// A candidate's architecture, if it has one that parses.
pub fn architecture(candidate: &str) -> Option<Architecture> {
    let arch = candidate.split(';').next()?;
    if arch.is_empty() || arch.contains('=') {
        return None;
    }
    Architecture::parse(arch).ok()
}

/// Which of `n` items (sorted by value, best first) parallel coordinates draws when it may
/// draw `max`: all of them when they fit, else the best tenth of `max` and an even spread of
/// the rest, so that the picture keeps both the winners and the distribution.
pub fn sample_ranked(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    let top = (max / 10).max(1);
    let rest = max - top;
    let mut out: Vec<usize> = (0..top).collect();
    let span = (n - top) as f64;
    out.extend((0..rest).map(|k| top + ((k as f64 + 0.5) * span / rest as f64) as usize));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use nasop_core::arch::Edge;

    fn p(x: f64, y: f64, trial: u32) -> Point {
        Point { x, y, trial }
    }

    #[test]
    fn thinning_keeps_small_sets_and_caps_large_ones_per_cell() {
        let few: Vec<Point> = (0..10).map(|i| p(i as f64, i as f64, i)).collect();
        assert_eq!(thin(&few, 100, 50), few);
        let many: Vec<Point> = (0..10_000)
            .map(|i| p((i % 100) as f64, (i / 100) as f64, i))
            .collect();
        let out = thin(&many, 20, 10);
        assert_eq!(
            out.len(),
            201,
            "one point per cell of a 20x10 grid, and the highest"
        );
        // The extremes survive: the first point and the highest.
        assert!(out.iter().any(|q| q.trial == 0));
        assert!(out.iter().any(|q| q.x == 99.0 && q.y == 99.0));
    }

    #[test]
    fn best_so_far_steps_only_on_improvement_in_either_direction() {
        let pts = vec![
            p(3.0, 0.5, 3),
            p(1.0, 0.2, 1),
            p(2.0, 0.1, 2),
            p(4.0, 0.9, 4),
        ];
        let up: Vec<u32> = best_so_far(&pts, true).iter().map(|q| q.trial).collect();
        assert_eq!(up, vec![1, 3, 4]);
        let down: Vec<u32> = best_so_far(&pts, false).iter().map(|q| q.trial).collect();
        assert_eq!(down, vec![1, 2]);
        assert!(best_so_far(&[], true).is_empty());
    }

    fn cell(text: &str) -> (usize, Vec<Edge>) {
        match Architecture::parse(text).unwrap() {
            Architecture::Cell { nodes, edges } => (nodes, edges),
            _ => unreachable!(),
        }
    }

    #[test]
    fn cell_layout_greys_edges_that_cannot_reach_the_output() {
        // Node 1 gets a conv from the input, but nothing leaves node 1 except `none`:
        // 0→1 is dead; 0→2 via conv, 2→3 skip: live; 0→3 avg_pool: live.
        let (n, e) =
            cell("|nor_conv_3x3~0|+|nor_conv_1x1~0|none~1|+|avg_pool_3x3~0|none~1|skip_connect~2|");
        let layout = cell_layout(n, &e);
        let live: Vec<(usize, usize, bool)> = layout
            .edges
            .iter()
            .map(|e| (e.from, e.to, e.live))
            .collect();
        assert_eq!(
            live,
            vec![
                (0, 1, false),
                (0, 2, true),
                (1, 2, false),
                (0, 3, true),
                (1, 3, false),
                (2, 3, true)
            ]
        );
        assert_eq!(layout.nodes.len(), 4);
        assert_eq!(layout.nodes[0], (0.0, 0.5));
        assert_eq!(layout.nodes[3], (1.0, 0.5));
    }

    #[test]
    fn cell_layout_of_a_cell_cut_off_from_its_input_is_all_grey() {
        // Nothing leaves the input: no edge matters.
        let (n, e) =
            cell("|none~0|+|none~0|skip_connect~1|+|none~0|nor_conv_3x3~1|skip_connect~2|");
        assert!(cell_layout(n, &e).edges.iter().all(|e| !e.live));
    }

    #[test]
    fn architectures_parse_from_candidates_with_hyperparameters() {
        assert!(matches!(
            architecture("conv_3x3@32,conv_5x5@64;lr=0.1"),
            Some(Architecture::Layers { .. })
        ));
        assert!(architecture("lr=0.1;wd=0.01").is_none());
        assert!(architecture("").is_none());
    }

    #[test]
    fn ranked_samples_keep_the_best_and_spread_the_rest() {
        assert_eq!(sample_ranked(5, 10), vec![0, 1, 2, 3, 4]);
        let s = sample_ranked(10_000, 1000);
        assert!(s.len() <= 1000 && s.len() > 900);
        assert!((0..100).all(|k| s.contains(&k)), "the best 100 are kept");
        assert!(*s.last().unwrap() > 9_900, "the worst end is represented");
        assert!(s.windows(2).all(|w| w[0] < w[1]));
    }
}
