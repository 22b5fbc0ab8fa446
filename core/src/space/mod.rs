//! Search spaces: what a strategy may propose.
//!
//! Every space flattens into an ordered list of [`Decision`]s (one per cell edge, two per
//! layer, one per hyperparameter); a candidate is a [`Point`], one [`Value`] per decision.
//! Strategies work on points; trials receive the architecture and hyperparameters built from
//! them.

use crate::arch::{Architecture, Edge, Layer, ZERO_OPS, cell_edges, cell_expression};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The values one decision may take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Domain {
    Choice { options: Vec<String> },
    Int { min: i64, max: i64 },
    Real { min: f64, max: f64, log: bool },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub name: String,
    pub domain: Domain,
}

/// One decision's value: an option index, an integer or a real number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Choice(u32),
    Int(i64),
    Real(f64),
}

/// A candidate: one value per decision of its space.
pub type Point = Vec<Value>;

/// A cell space: `nodes` nodes, every edge picks one of `operations`.
#[derive(Debug, Clone, PartialEq)]
pub struct CellSpace {
    pub nodes: usize,
    pub operations: Vec<String>,
}

/// One layer's options in a layer-wise space.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerOptions {
    pub operations: Vec<String>,
    pub widths: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ArchitectureSpace {
    Cell(CellSpace),
    Layers(Vec<LayerOptions>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Hyperparameter {
    pub name: String,
    pub domain: Domain,
}

/// An invalid space or candidate; `field` is the path of the offending input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SpaceError {
    pub field: String,
    pub problem: String,
}

fn err(field: impl Into<String>, problem: impl Into<String>) -> SpaceError {
    SpaceError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Characters that structure candidate strings and so cannot appear in names.
const RESERVED: &[char] = &['|', '~', '+', ';', '=', '@', ',', ' '];

fn check_name(field: &str, name: &str) -> Result<(), SpaceError> {
    if name.is_empty() {
        return Err(err(field, "must not be empty"));
    }
    if let Some(c) = name.chars().find(|c| RESERVED.contains(c)) {
        return Err(err(
            field,
            format!("{name:?} contains {c:?}; use letters, digits, '_', '-' or '.'"),
        ));
    }
    Ok(())
}

fn check_unique(field: &str, names: &[String]) -> Result<(), SpaceError> {
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(err(
                format!("{field}[{i}]"),
                format!("{n:?} is listed twice"),
            ));
        }
    }
    Ok(())
}

/// A validated search space.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchSpace {
    architecture: Option<ArchitectureSpace>,
    hyperparameters: Vec<Hyperparameter>,
    decisions: Vec<Decision>,
    arch_decisions: usize,
}

/// How a Real or large Int decision is cut into grid points.
pub const GRID_POINTS: usize = 5;
/// Int ranges up to this size are enumerated whole by grid and neighbours.
pub(crate) const SMALL_INT_RANGE: i64 = 16;

/// A cell space's decisions, checked: one operation choice per edge.
fn cell_decisions(cell: &CellSpace) -> Result<Vec<Decision>, SpaceError> {
    if cell.nodes < 2 || cell.nodes > 12 {
        return Err(err(
            "cell.nodes",
            format!(
                "{} is out of range; use 2..=12 (NAS-Bench-201 uses 4)",
                cell.nodes
            ),
        ));
    }
    if cell.operations.is_empty() {
        return Err(err(
            "cell.operations",
            "must list at least one operation, e.g. [none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3]",
        ));
    }
    for (i, op) in cell.operations.iter().enumerate() {
        check_name(&format!("cell.operations[{i}]"), op)?;
    }
    check_unique("cell.operations", &cell.operations)?;
    Ok(cell_edges(cell.nodes)
        .into_iter()
        .map(|(i, j)| Decision {
            name: format!("edge_{i}_{j}"),
            domain: Domain::Choice {
                options: cell.operations.clone(),
            },
        })
        .collect())
}

/// A layer-wise space's decisions, checked: an operation and a width per layer.
fn layer_decisions(layers: &[LayerOptions]) -> Result<Vec<Decision>, SpaceError> {
    if layers.is_empty() {
        return Err(err("layers", "must list at least one layer"));
    }
    let mut decisions = Vec::new();
    for (k, layer) in layers.iter().enumerate() {
        check_layer(k, layer)?;
        decisions.push(Decision {
            name: format!("layer_{k}_op"),
            domain: Domain::Choice {
                options: layer.operations.clone(),
            },
        });
        decisions.push(Decision {
            name: format!("layer_{k}_width"),
            domain: Domain::Choice {
                options: layer.widths.iter().map(|w| w.to_string()).collect(),
            },
        });
    }
    Ok(decisions)
}

fn check_layer(k: usize, layer: &LayerOptions) -> Result<(), SpaceError> {
    if layer.operations.is_empty() {
        return Err(err(
            format!("layers[{k}].operations"),
            "must list at least one operation",
        ));
    }
    for (i, op) in layer.operations.iter().enumerate() {
        check_name(&format!("layers[{k}].operations[{i}]"), op)?;
    }
    check_unique(&format!("layers[{k}].operations"), &layer.operations)?;
    if layer.widths.is_empty() || layer.widths.contains(&0) {
        return Err(err(
            format!("layers[{k}].widths"),
            "must list at least one width, all positive",
        ));
    }
    Ok(())
}

/// The hyperparameters' decisions, checked: one per hyperparameter, in order.
fn hyperparameter_decisions(
    hyperparameters: &[Hyperparameter],
) -> Result<Vec<Decision>, SpaceError> {
    let names: Vec<String> = hyperparameters.iter().map(|h| h.name.clone()).collect();
    check_unique("hyperparameters", &names)?;
    let mut decisions = Vec::new();
    for (i, hp) in hyperparameters.iter().enumerate() {
        let field = format!("hyperparameters[{i}]");
        check_name(&format!("{field}.name"), &hp.name)?;
        check_domain(&field, &hp.domain)?;
        decisions.push(Decision {
            name: hp.name.clone(),
            domain: hp.domain.clone(),
        });
    }
    Ok(decisions)
}

/// Checks a hyperparameter's domain; `field` is the hyperparameter's path.
fn check_domain(field: &str, domain: &Domain) -> Result<(), SpaceError> {
    match domain {
        Domain::Choice { options } => {
            if options.is_empty() {
                return Err(err(
                    format!("{field}.categorical"),
                    "must list at least one value",
                ));
            }
            for (k, o) in options.iter().enumerate() {
                check_name(&format!("{field}.categorical[{k}]"), o)?;
            }
            check_unique(&format!("{field}.categorical"), options)?;
        }
        Domain::Int { min, max } => {
            if min > max {
                return Err(err(
                    format!("{field}.int"),
                    format!("min {min} is above max {max}"),
                ));
            }
        }
        Domain::Real { min, max, log } => {
            if !(min.is_finite() && max.is_finite()) || min > max {
                return Err(err(
                    format!("{field}.float"),
                    format!("min {min} and max {max} must be finite with min <= max"),
                ));
            }
            if *log && *min <= 0.0 {
                return Err(err(
                    format!("{field}.float.min"),
                    format!("{min} must be above 0 for a log scale"),
                ));
            }
        }
    }
    Ok(())
}

impl SearchSpace {
    /// Builds and validates a space; field paths in errors are relative to `searchSpace`.
    pub fn new(
        architecture: Option<ArchitectureSpace>,
        hyperparameters: Vec<Hyperparameter>,
    ) -> Result<Self, SpaceError> {
        let mut decisions = match &architecture {
            None => Vec::new(),
            Some(ArchitectureSpace::Cell(cell)) => cell_decisions(cell)?,
            Some(ArchitectureSpace::Layers(layers)) => layer_decisions(layers)?,
        };
        let arch_decisions = decisions.len();
        decisions.extend(hyperparameter_decisions(&hyperparameters)?);
        if decisions.is_empty() {
            return Err(err(
                "",
                "the search space is empty: give an architecture space (cell or layers) or hyperparameters",
            ));
        }
        Ok(SearchSpace {
            architecture,
            hyperparameters,
            decisions,
            arch_decisions,
        })
    }

    /// The NAS-Bench-201 cell space: 4 nodes, its five operations.
    pub fn nas_bench_201() -> Self {
        let ops = crate::arch::NB201_OPERATIONS
            .iter()
            .map(|s| s.to_string())
            .collect();
        SearchSpace::new(
            Some(ArchitectureSpace::Cell(CellSpace {
                nodes: 4,
                operations: ops,
            })),
            vec![],
        )
        .expect("the NAS-Bench-201 space is valid")
    }

    pub fn decisions(&self) -> &[Decision] {
        &self.decisions
    }

    pub fn architecture_space(&self) -> Option<&ArchitectureSpace> {
        self.architecture.as_ref()
    }

    pub fn hyperparameters(&self) -> &[Hyperparameter] {
        &self.hyperparameters
    }

    /// A uniform sample (log-uniform for log-scale reals).
    pub fn sample(&self, rng: &mut Rng) -> Point {
        self.decisions
            .iter()
            .map(|d| sample_value(&d.domain, rng))
            .collect()
    }

    /// A copy of `point` with exactly one decision changed (a decision with one option never
    /// changes; a space with no changeable decision returns the point itself).
    pub fn mutate(&self, point: &Point, rng: &mut Rng) -> Point {
        let mutable: Vec<usize> = (0..self.decisions.len())
            .filter(|&i| can_change(&self.decisions[i].domain))
            .collect();
        let mut out = point.clone();
        if mutable.is_empty() {
            return out;
        }
        let i = mutable[rng.below(mutable.len())];
        out[i] = mutate_value(&self.decisions[i].domain, point[i], rng);
        out
    }

    /// Every point that differs from `point` in one decision: all other options of a choice,
    /// ±1 of an integer (all values of a small range), and steps of a tenth of a real's range.
    pub fn neighbours(&self, point: &Point) -> Vec<Point> {
        let mut out = Vec::new();
        for (i, d) in self.decisions.iter().enumerate() {
            for v in neighbour_values(&d.domain, point[i]) {
                let mut p = point.clone();
                p[i] = v;
                out.push(p);
            }
        }
        out
    }

    /// The candidate's string: the architecture, then `;name=value` per hyperparameter.
    pub fn format(&self, point: &Point) -> String {
        let mut s = self
            .architecture(point)
            .map(|a| a.to_string())
            .unwrap_or_default();
        for (k, hp) in self.hyperparameters.iter().enumerate() {
            if !s.is_empty() || k > 0 {
                s.push(';');
            }
            s.push_str(&hp.name);
            s.push('=');
            s.push_str(&format_value(&hp.domain, point[self.arch_decisions + k]));
        }
        s
    }

    /// Parses what [`SearchSpace::format`] prints, checking every value against the space.
    pub fn parse(&self, text: &str) -> Result<Point, SpaceError> {
        let mut parts = text.split(';');
        let mut point = Vec::with_capacity(self.decisions.len());
        if let Some(space) = &self.architecture {
            let arch_text = parts.next().unwrap_or_default();
            let arch =
                Architecture::parse(arch_text).map_err(|e| err("architecture", e.to_string()))?;
            point.extend(self.arch_point(space, &arch)?);
        } else if text.is_empty() {
            parts.next();
        }
        let mut given: BTreeMap<&str, &str> = BTreeMap::new();
        for part in parts {
            let (name, value) = part.split_once('=').ok_or_else(|| {
                err(
                    "hyperparameters",
                    format!("{part:?} must be written name=value"),
                )
            })?;
            given.insert(name, value);
        }
        for hp in &self.hyperparameters {
            let raw = given
                .remove(hp.name.as_str())
                .ok_or_else(|| err(format!("hyperparameters.{}", hp.name), "is missing"))?;
            point.push(
                parse_value(&hp.domain, raw)
                    .map_err(|p| err(format!("hyperparameters.{}", hp.name), p))?,
            );
        }
        if let Some(name) = given.keys().next() {
            return Err(err(
                format!("hyperparameters.{name}"),
                "is not in the search space",
            ));
        }
        Ok(point)
    }

    /// Checks a point from elsewhere (a journal, a status) against the space.
    pub fn contains(&self, point: &Point) -> bool {
        point.len() == self.decisions.len()
            && point
                .iter()
                .zip(&self.decisions)
                .all(|(v, d)| value_in(&d.domain, *v))
    }

    fn arch_point(
        &self,
        space: &ArchitectureSpace,
        arch: &Architecture,
    ) -> Result<Vec<Value>, SpaceError> {
        let index = |field: String, ops: &[String], op: &str| {
            ops.iter()
                .position(|o| o == op)
                .map(|i| Value::Choice(i as u32))
                .ok_or_else(|| err(field, format!("operation {op:?} is not one of {ops:?}")))
        };
        match (space, arch) {
            (ArchitectureSpace::Cell(cell), Architecture::Cell { nodes, edges }) => {
                if *nodes != cell.nodes {
                    return Err(err(
                        "architecture",
                        format!("has {nodes} nodes; the space's cells have {}", cell.nodes),
                    ));
                }
                edges
                    .iter()
                    .map(|e| {
                        index(
                            format!("architecture.edge_{}_{}", e.from, e.to),
                            &cell.operations,
                            &e.op,
                        )
                    })
                    .collect()
            }
            (ArchitectureSpace::Layers(layers), Architecture::Layers { layers: given }) => {
                if given.len() != layers.len() {
                    return Err(err(
                        "architecture",
                        format!("has {} layers; the space has {}", given.len(), layers.len()),
                    ));
                }
                let mut out = Vec::new();
                for (k, (opts, l)) in layers.iter().zip(given).enumerate() {
                    out.push(index(
                        format!("architecture.layers[{k}]"),
                        &opts.operations,
                        &l.op,
                    )?);
                    let w = opts
                        .widths
                        .iter()
                        .position(|&w| w == l.width)
                        .ok_or_else(|| {
                            err(
                                format!("architecture.layers[{k}]"),
                                format!("width {} is not one of {:?}", l.width, opts.widths),
                            )
                        })?;
                    out.push(Value::Choice(w as u32));
                }
                Ok(out)
            }
            _ => Err(err(
                "architecture",
                "is of the wrong kind for this space (cell vs layers)",
            )),
        }
    }

    /// The structured architecture of a point, if the space has one.
    pub fn architecture(&self, point: &Point) -> Option<Architecture> {
        match self.architecture.as_ref()? {
            ArchitectureSpace::Cell(cell) => {
                let edges = cell_edges(cell.nodes)
                    .into_iter()
                    .enumerate()
                    .map(|(k, (from, to))| Edge {
                        from,
                        to,
                        op: cell.operations[choice(point[k])].clone(),
                    })
                    .collect();
                Some(Architecture::Cell {
                    nodes: cell.nodes,
                    edges,
                })
            }
            ArchitectureSpace::Layers(layers) => Some(Architecture::Layers {
                layers: layers
                    .iter()
                    .enumerate()
                    .map(|(k, o)| Layer {
                        op: o.operations[choice(point[2 * k])].clone(),
                        width: o.widths[choice(point[2 * k + 1])],
                    })
                    .collect(),
            }),
        }
    }

    /// The hyperparameters of a point as JSON values (strings, integers, numbers).
    pub fn hyperparameter_values(&self, point: &Point) -> BTreeMap<String, serde_json::Value> {
        self.hyperparameters
            .iter()
            .enumerate()
            .map(|(k, hp)| {
                let v = match (&hp.domain, point[self.arch_decisions + k]) {
                    (Domain::Choice { options }, Value::Choice(i)) => {
                        serde_json::Value::from(options[i as usize].clone())
                    }
                    (_, Value::Int(i)) => serde_json::Value::from(i),
                    (_, Value::Real(x)) => serde_json::Value::from(x),
                    (_, v) => panic!("value {v:?} does not fit {:?}", hp.domain),
                };
                (hp.name.clone(), v)
            })
            .collect()
    }

    /// The candidate's identity: equal for candidates that are the same network, including
    /// isomorphic cells and cells that differ only in edges that cannot reach the output.
    /// A search never pays twice for one key.
    pub fn key(&self, point: &Point) -> String {
        match &self.architecture {
            Some(ArchitectureSpace::Cell(cell)) => {
                let ops: Vec<&str> = (0..self.arch_decisions)
                    .map(|k| cell.operations[choice(point[k])].as_str())
                    .collect();
                let mut key = cell_expression(cell.nodes, &ops);
                let hps = self.format_hyperparameters(point);
                if !hps.is_empty() {
                    key.push(';');
                    key.push_str(&hps);
                }
                key
            }
            _ => self.format(point),
        }
    }

    fn format_hyperparameters(&self, point: &Point) -> String {
        self.hyperparameters
            .iter()
            .enumerate()
            .map(|(k, hp)| {
                format!(
                    "{}={}",
                    hp.name,
                    format_value(&hp.domain, point[self.arch_decisions + k])
                )
            })
            .collect::<Vec<_>>()
            .join(";")
    }

    /// One-hot for choices, values scaled to [0, 1] for numbers (log scale where declared).
    pub fn one_hot(&self, point: &Point) -> Vec<f64> {
        let mut out = Vec::new();
        for (d, v) in self.decisions.iter().zip(point) {
            match (&d.domain, v) {
                (Domain::Choice { options }, Value::Choice(i)) => {
                    let start = out.len();
                    out.resize(start + options.len(), 0.0);
                    out[start + *i as usize] = 1.0;
                }
                (domain, v) => out.push(unit_of(domain, *v)),
            }
        }
        out
    }

    /// The cell's input-to-output paths as feature ids (the path encoding of White et al.,
    /// BANANAS): a path is the sequence of operations along increasing nodes from the input
    /// to the output, and a path through a zero operation does not exist. Empty outside
    /// cell spaces.
    pub fn paths(&self, point: &Point) -> Vec<u64> {
        let Some(ArchitectureSpace::Cell(cell)) = &self.architecture else {
            return Vec::new();
        };
        let n = cell.nodes;
        let zero: Vec<bool> = cell
            .operations
            .iter()
            .map(|o| ZERO_OPS.contains(&o.as_str()))
            .collect();
        let edge_index = |i: usize, j: usize| j * (j - 1) / 2 + i;
        let n_ops = cell.operations.len() as u64;
        let mut out = Vec::new();
        // Depth-first over paths 0 -> ... -> n-1; the id encodes the node sequence and ops.
        let mut stack: Vec<(usize, u64, u64)> = vec![(0, 1, 0)];
        while let Some((node, nodes_id, ops_id)) = stack.pop() {
            for next in node + 1..n {
                let op = choice(point[edge_index(node, next)]);
                if zero[op] {
                    continue;
                }
                let nodes_id = nodes_id | (1 << next);
                let ops_id = ops_id * n_ops + op as u64;
                if next == n - 1 {
                    out.push((nodes_id << 40) | ops_id);
                } else {
                    stack.push((next, nodes_id, ops_id));
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// The number of grid points.
    pub fn grid_size(&self) -> u128 {
        self.decisions
            .iter()
            .map(|d| grid_values(&d.domain).len() as u128)
            .product()
    }

    /// The k-th grid point in mixed-radix order (the last decision varies fastest).
    pub fn grid_point(&self, mut k: u128) -> Option<Point> {
        if k >= self.grid_size() {
            return None;
        }
        let mut point = vec![Value::Choice(0); self.decisions.len()];
        for (i, d) in self.decisions.iter().enumerate().rev() {
            let values = grid_values(&d.domain);
            let n = values.len() as u128;
            point[i] = values[(k % n) as usize];
            k /= n;
        }
        Some(point)
    }
}

fn choice(v: Value) -> usize {
    match v {
        Value::Choice(i) => i as usize,
        other => panic!("expected an option index, found {other:?}"),
    }
}

mod domain;
use domain::*;

#[cfg(test)]
mod tests;
