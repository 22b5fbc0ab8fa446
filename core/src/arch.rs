//! Architectures in their structured form and their string forms.
//!
//! A cell is printed in the NAS-Bench-201 format, which parses and prints exactly:
//! `|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|`
//! (node j lists one `op~i` edge from every earlier node i, nodes separated by `+`).
//! A layer-wise network prints as `op@width` items joined by commas: `conv_3x3@32,conv_5x5@64`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The operation names that mean "no edge" in a cell.
pub const ZERO_OPS: [&str; 2] = ["none", "zero"];
/// The operation names that mean "identity" in a cell.
pub const IDENTITY_OPS: [&str; 3] = ["skip_connect", "identity", "skip"];

/// The five NAS-Bench-201 operations, in the benchmark's order.
pub const NB201_OPERATIONS: [&str; 5] = [
    "none",
    "skip_connect",
    "nor_conv_1x1",
    "nor_conv_3x3",
    "avg_pool_3x3",
];

/// One edge of a cell: `op` applied to node `from`, summed into node `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    pub op: String,
}

/// One layer of a layer-wise (macro) network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub op: String,
    pub width: u32,
}

/// The structured form of an architecture, as trials receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Architecture {
    /// A DAG cell of `nodes` nodes (node 0 is the input, the last node the output); every
    /// pair i < j has one edge, in the order of [`cell_edges`].
    Cell { nodes: usize, edges: Vec<Edge> },
    /// An ordered list of layers.
    Layers { layers: Vec<Layer> },
}

/// The (from, to) pairs of a cell of `nodes` nodes in canonical order: for each node j, its
/// inputs i = 0..j.
pub fn cell_edges(nodes: usize) -> Vec<(usize, usize)> {
    (1..nodes)
        .flat_map(|j| (0..j).map(move |i| (i, j)))
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("architecture {input:?}: {problem}")]
pub struct ParseArchitectureError {
    pub input: String,
    pub problem: String,
}

impl Architecture {
    /// Parses either form; a string starting with `|` is a cell.
    pub fn parse(input: &str) -> Result<Self, ParseArchitectureError> {
        let fail = |problem: String| ParseArchitectureError {
            input: input.to_string(),
            problem,
        };
        let text = input.trim();
        if text.starts_with('|') {
            parse_cell(text).map_err(fail)
        } else {
            parse_layers(text).map_err(fail)
        }
    }

    /// A cell's operation on each edge in canonical order.
    pub fn cell_ops(&self) -> Option<Vec<&str>> {
        match self {
            Architecture::Cell { edges, .. } => Some(edges.iter().map(|e| e.op.as_str()).collect()),
            Architecture::Layers { .. } => None,
        }
    }
}

fn parse_cell(text: &str) -> Result<Architecture, String> {
    let mut edges = Vec::new();
    let parts: Vec<&str> = text.split('+').collect();
    for (k, part) in parts.iter().enumerate() {
        let to = k + 1;
        let inner = part
            .strip_prefix('|')
            .and_then(|p| p.strip_suffix('|'))
            .ok_or_else(|| format!("node {to}: {part:?} must start and end with '|'"))?;
        let items: Vec<&str> = inner.split('|').collect();
        if items.len() != to {
            return Err(format!(
                "node {to} must have {to} input edge(s) (one from each earlier node), found {}",
                items.len()
            ));
        }
        for (i, item) in items.iter().enumerate() {
            let (op, from) = item
                .split_once('~')
                .ok_or_else(|| format!("edge {item:?} of node {to} must be written op~input"))?;
            let from: usize = from.parse().map_err(|_| {
                format!("edge {item:?} of node {to}: input {from:?} is not a number")
            })?;
            if from != i {
                return Err(format!(
                    "edge {item:?} of node {to}: inputs must be listed in order 0..{to}, expected ~{i}"
                ));
            }
            if op.is_empty() {
                return Err(format!("edge {item:?} of node {to} has no operation"));
            }
            edges.push(Edge {
                from,
                to,
                op: op.to_string(),
            });
        }
    }
    Ok(Architecture::Cell {
        nodes: parts.len() + 1,
        edges,
    })
}

fn parse_layers(text: &str) -> Result<Architecture, String> {
    let mut layers = Vec::new();
    for item in text.split(',') {
        let (op, width) = item
            .split_once('@')
            .ok_or_else(|| format!("layer {item:?} must be written op@width"))?;
        let width =
            width.parse().ok().filter(|w| *w > 0).ok_or_else(|| {
                format!("layer {item:?}: width {width:?} is not a positive integer")
            })?;
        if op.is_empty() {
            return Err(format!("layer {item:?} has no operation"));
        }
        layers.push(Layer {
            op: op.to_string(),
            width,
        });
    }
    Ok(Architecture::Layers { layers })
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Architecture::Cell { nodes, edges } => {
                let mut k = 0;
                for j in 1..*nodes {
                    if j > 1 {
                        f.write_str("+")?;
                    }
                    f.write_str("|")?;
                    for _ in 0..j {
                        let e = &edges[k];
                        write!(f, "{}~{}|", e.op, e.from)?;
                        k += 1;
                    }
                }
                Ok(())
            }
            Architecture::Layers { layers } => {
                for (i, l) in layers.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{}@{}", l.op, l.width)?;
                }
                Ok(())
            }
        }
    }
}

/// The function a cell computes, as a canonical expression: edges whose input is zero are
/// dropped, identity edges are flattened into the sum, and each node's sum is sorted. Two
/// cells with the same expression compute the same family of functions (they differ only by
/// isomorphism or by dead edges), so a search need evaluate only one of them.
pub fn cell_expression(nodes: usize, ops: &[&str]) -> String {
    let mut exprs: Vec<Vec<String>> = Vec::with_capacity(nodes);
    exprs.push(vec!["x".to_string()]);
    let mut k = 0;
    for _j in 1..nodes {
        let mut terms = Vec::new();
        for input in exprs.iter() {
            let op = ops[k];
            k += 1;
            if ZERO_OPS.contains(&op) || input.is_empty() {
                continue;
            }
            if IDENTITY_OPS.contains(&op) {
                terms.extend(input.iter().cloned());
            } else {
                terms.push(format!("{op}({})", input.join("+")));
            }
        }
        terms.sort();
        exprs.push(terms);
    }
    let out = exprs.pop().unwrap_or_default();
    if out.is_empty() {
        "zero".to_string()
    } else {
        out.join("+")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|";

    #[test]
    fn nb201_string_round_trips() {
        let a = Architecture::parse(A).unwrap();
        assert_eq!(a.to_string(), A);
        match &a {
            Architecture::Cell { nodes, edges } => {
                assert_eq!(*nodes, 4);
                assert_eq!(edges.len(), 6);
                assert_eq!(
                    edges[2],
                    Edge {
                        from: 1,
                        to: 2,
                        op: "avg_pool_3x3".into()
                    }
                );
            }
            _ => panic!("not a cell"),
        }
    }

    #[test]
    fn layers_round_trip() {
        let s = "conv_3x3@32,mbconv_5x5@64";
        assert_eq!(Architecture::parse(s).unwrap().to_string(), s);
    }

    #[test]
    fn bad_strings_say_where() {
        let e = Architecture::parse("|nor_conv_3x3~0|+|nor_conv_3x3~0|").unwrap_err();
        assert!(e.problem.contains("node 2 must have 2 input edge"), "{e}");
        let e = Architecture::parse("|nor_conv_3x3~1|").unwrap_err();
        assert!(e.problem.contains("expected ~0"), "{e}");
        let e = Architecture::parse("conv@wide").unwrap_err();
        assert!(e.problem.contains("width"), "{e}");
        let e = Architecture::parse("conv_3x3@16,conv_3x3@0").unwrap_err();
        assert!(e.problem.contains("\"0\" is not a positive integer"), "{e}");
    }

    #[test]
    fn expression_merges_isomorphic_and_dead_edges() {
        // Swapping the two parallel intermediate nodes is the same function.
        let a = [
            "nor_conv_3x3",
            "avg_pool_3x3",
            "none",
            "skip_connect",
            "skip_connect",
            "none",
        ];
        // An identity edge carries its input's sum: conv on 0->1 then skip 1->3 is conv on 0->3.
        let direct = ["none", "none", "none", "nor_conv_3x3", "none", "none"];
        let through = [
            "nor_conv_3x3",
            "none",
            "none",
            "none",
            "skip_connect",
            "none",
        ];
        assert_eq!(cell_expression(4, &direct), cell_expression(4, &through));
        let b = [
            "avg_pool_3x3",
            "nor_conv_3x3",
            "none",
            "skip_connect",
            "none",
            "skip_connect",
        ];
        assert_eq!(cell_expression(4, &a), cell_expression(4, &b));
        // A node that cannot reach the output does not matter.
        let c = [
            "nor_conv_3x3",
            "none",
            "none",
            "nor_conv_1x1",
            "none",
            "none",
        ];
        let d = [
            "avg_pool_3x3",
            "none",
            "none",
            "nor_conv_1x1",
            "none",
            "none",
        ];
        assert_eq!(cell_expression(4, &c), cell_expression(4, &d));
        // Different functions stay different.
        let e = [
            "nor_conv_3x3",
            "none",
            "none",
            "nor_conv_3x3",
            "none",
            "none",
        ];
        assert_ne!(cell_expression(4, &c), cell_expression(4, &e));
        assert_eq!(cell_expression(4, &["none"; 6]), "zero");
    }
}
