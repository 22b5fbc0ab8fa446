//! Pareto dominance, non-dominated sorting, crowding distance and hypervolume, for
//! objective vectors in which every component is to be maximised.

/// `a` dominates `b`: no worse in every objective and better in one.
pub fn dominates(a: &[f64], b: &[f64]) -> bool {
    let mut better = false;
    for (x, y) in a.iter().zip(b) {
        if x < y {
            return false;
        }
        if x > y {
            better = true;
        }
    }
    better
}

/// Indices of the non-dominated vectors.
pub fn front(points: &[Vec<f64>]) -> Vec<usize> {
    (0..points.len())
        .filter(|&i| {
            !points
                .iter()
                .enumerate()
                .any(|(j, p)| j != i && dominates(p, &points[i]))
        })
        .collect()
}

/// Fast non-dominated sort (Deb et al. 2002): the rank (0 = Pareto front) of every vector.
pub fn ranks(points: &[Vec<f64>]) -> Vec<usize> {
    let n = points.len();
    let mut dominated_by = vec![0usize; n];
    let mut dominates_list: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        for j in i + 1..n {
            if dominates(&points[i], &points[j]) {
                dominates_list[i].push(j);
                dominated_by[j] += 1;
            } else if dominates(&points[j], &points[i]) {
                dominates_list[j].push(i);
                dominated_by[i] += 1;
            }
        }
    }
    let mut rank = vec![0usize; n];
    let mut current: Vec<usize> = (0..n).filter(|&i| dominated_by[i] == 0).collect();
    let mut level = 0;
    while !current.is_empty() {
        let mut next = Vec::new();
        for &i in &current {
            rank[i] = level;
            for &j in &dominates_list[i] {
                dominated_by[j] -= 1;
                if dominated_by[j] == 0 {
                    next.push(j);
                }
            }
        }
        current = next;
        level += 1;
    }
    rank
}

/// Crowding distance of each member of one front (infinite at the extremes).
pub fn crowding(points: &[Vec<f64>], members: &[usize]) -> Vec<f64> {
    let mut dist = vec![0.0; members.len()];
    let Some(first) = members.first() else {
        return dist;
    };
    let objectives = points[*first].len();
    #[allow(clippy::needless_range_loop)] // m indexes the inner vectors of many points
    for m in 0..objectives {
        let mut order: Vec<usize> = (0..members.len()).collect();
        order.sort_by(|&a, &b| points[members[a]][m].total_cmp(&points[members[b]][m]));
        let lo = points[members[order[0]]][m];
        let hi = points[members[*order.last().unwrap()]][m];
        dist[order[0]] = f64::INFINITY;
        dist[*order.last().unwrap()] = f64::INFINITY;
        if hi > lo {
            for w in 1..order.len().saturating_sub(1) {
                let gap = points[members[order[w + 1]]][m] - points[members[order[w - 1]]][m];
                dist[order[w]] += gap / (hi - lo);
            }
        }
    }
    dist
}

/// The area dominated by two-objective vectors and bounded below by `reference`.
pub fn hypervolume_2d(points: &[Vec<f64>], reference: [f64; 2]) -> f64 {
    let mut pts: Vec<[f64; 2]> = points
        .iter()
        .filter(|p| p[0] > reference[0] && p[1] > reference[1])
        .map(|p| [p[0], p[1]])
        .collect();
    pts.sort_by(|a, b| b[0].total_cmp(&a[0]));
    let mut area = 0.0;
    let mut best_y = reference[1];
    for [x, y] in pts {
        if y > best_y {
            area += (x - reference[0]) * (y - best_y);
            best_y = y;
        }
    }
    area
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_front() {
        let pts = vec![
            vec![1.0, 5.0],
            vec![2.0, 4.0],
            vec![1.5, 3.0],
            vec![0.5, 0.5],
            vec![3.0, 1.0],
        ];
        assert_eq!(front(&pts), vec![0, 1, 4]);
        assert_eq!(ranks(&pts), vec![0, 0, 1, 2, 0]);
    }

    #[test]
    fn crowding_prefers_extremes_and_gaps() {
        let pts = vec![
            vec![0.0, 3.0],
            vec![1.0, 2.0],
            vec![1.1, 1.9],
            vec![3.0, 0.0],
        ];
        let d = crowding(&pts, &[0, 1, 2, 3]);
        assert!(d[0].is_infinite() && d[3].is_infinite());
        assert!(d[1] > 0.0 && d[2] > 0.0);
    }

    #[test]
    fn hypervolume_of_a_staircase() {
        let pts = vec![
            vec![1.0, 3.0],
            vec![2.0, 2.0],
            vec![3.0, 1.0],
            vec![1.0, 1.0],
        ];
        assert!((hypervolume_2d(&pts, [0.0, 0.0]) - 6.0).abs() < 1e-12);
        assert_eq!(hypervolume_2d(&[], [0.0, 0.0]), 0.0);
    }
}
