//! Per-decision operations on values: ranges, sampling, mutation, neighbours, grids and
//! their string forms.

use super::{Domain, GRID_POINTS, SMALL_INT_RANGE, Value};
use crate::rng::Rng;

pub(super) fn can_change(domain: &Domain) -> bool {
    match domain {
        Domain::Choice { options } => options.len() > 1,
        Domain::Int { min, max } => min < max,
        Domain::Real { min, max, .. } => min < max,
    }
}

pub(super) fn value_in(domain: &Domain, v: Value) -> bool {
    match (domain, v) {
        (Domain::Choice { options }, Value::Choice(i)) => (i as usize) < options.len(),
        (Domain::Int { min, max }, Value::Int(i)) => (*min..=*max).contains(&i),
        (Domain::Real { min, max, .. }, Value::Real(x)) => (*min..=*max).contains(&x),
        _ => false,
    }
}

impl Domain {
    /// A number's position in its range, in [0, 1] (log scale where declared); 0 for choices.
    pub fn unit(&self, v: Value) -> f64 {
        unit_of(self, v)
    }

    /// The value at position `u` of the range (clamped to [0, 1]).
    pub fn at_unit(&self, u: f64) -> Value {
        from_unit(self, u)
    }
}

pub(super) fn unit_of(domain: &Domain, v: Value) -> f64 {
    match (domain, v) {
        (Domain::Int { min, max }, Value::Int(i)) if max > min => {
            (i - min) as f64 / (max - min) as f64
        }
        (Domain::Real { min, max, log }, Value::Real(x)) if max > min => {
            if *log {
                (x.ln() - min.ln()) / (max.ln() - min.ln())
            } else {
                (x - min) / (max - min)
            }
        }
        _ => 0.0,
    }
}

pub(super) fn from_unit(domain: &Domain, u: f64) -> Value {
    let u = u.clamp(0.0, 1.0);
    match domain {
        Domain::Int { min, max } => {
            Value::Int((*min as f64 + u * (max - min) as f64).round() as i64)
        }
        Domain::Real { min, max, log } => {
            let x = if *log {
                (min.ln() + u * (max.ln() - min.ln())).exp()
            } else {
                min + u * (max - min)
            };
            Value::Real(x.clamp(*min, *max))
        }
        Domain::Choice { options } => {
            Value::Choice(((u * options.len() as f64) as usize).min(options.len() - 1) as u32)
        }
    }
}

pub(super) fn sample_value(domain: &Domain, rng: &mut Rng) -> Value {
    match domain {
        Domain::Choice { options } => Value::Choice(rng.below(options.len()) as u32),
        Domain::Int { min, max } => Value::Int(min + rng.below((max - min + 1) as usize) as i64),
        Domain::Real { .. } => from_unit(domain, rng.unit()),
    }
}

pub(super) fn mutate_value(domain: &Domain, v: Value, rng: &mut Rng) -> Value {
    match (domain, v) {
        (Domain::Choice { options }, Value::Choice(i)) => {
            let j = rng.below(options.len() - 1) as u32;
            Value::Choice(if j >= i { j + 1 } else { j })
        }
        (Domain::Int { min, max }, Value::Int(i)) => {
            let j = min + rng.below((max - min) as usize) as i64;
            Value::Int(if j >= i { j + 1 } else { j })
        }
        (Domain::Real { .. }, Value::Real(_)) => {
            // A Gaussian step of a tenth of the (log-)range.
            let u = unit_of(domain, v) + 0.1 * rng.normal();
            from_unit(domain, u)
        }
        (d, v) => panic!("value {v:?} does not fit {d:?}"),
    }
}

pub(super) fn neighbour_values(domain: &Domain, v: Value) -> Vec<Value> {
    match (domain, v) {
        (Domain::Choice { options }, Value::Choice(i)) => (0..options.len() as u32)
            .filter(|&j| j != i)
            .map(Value::Choice)
            .collect(),
        (Domain::Int { min, max }, Value::Int(i)) => {
            if max - min <= SMALL_INT_RANGE {
                (*min..=*max).filter(|&j| j != i).map(Value::Int).collect()
            } else {
                [i - 1, i + 1]
                    .into_iter()
                    .filter(|j| (*min..=*max).contains(j))
                    .map(Value::Int)
                    .collect()
            }
        }
        (Domain::Real { .. }, Value::Real(x)) => {
            let u = unit_of(domain, v);
            [u - 0.1, u + 0.1]
                .into_iter()
                .filter(|u| (0.0..=1.0).contains(u))
                .map(|u| from_unit(domain, u))
                .filter(|w| *w != Value::Real(x))
                .collect()
        }
        (d, v) => panic!("value {v:?} does not fit {d:?}"),
    }
}

pub(super) fn grid_values(domain: &Domain) -> Vec<Value> {
    match domain {
        Domain::Choice { options } => (0..options.len() as u32).map(Value::Choice).collect(),
        Domain::Int { min, max } if max - min <= SMALL_INT_RANGE => {
            (*min..=*max).map(Value::Int).collect()
        }
        _ => {
            let mut out: Vec<Value> = (0..GRID_POINTS)
                .map(|k| from_unit(domain, k as f64 / (GRID_POINTS - 1) as f64))
                .collect();
            out.dedup();
            out
        }
    }
}

pub(super) fn format_value(domain: &Domain, v: Value) -> String {
    match (domain, v) {
        (Domain::Choice { options }, Value::Choice(i)) => options[i as usize].clone(),
        (_, Value::Int(i)) => i.to_string(),
        (_, Value::Real(x)) => format!("{x}"),
        (d, v) => panic!("value {v:?} does not fit {d:?}"),
    }
}

pub(super) fn parse_value(domain: &Domain, raw: &str) -> Result<Value, String> {
    let v = match domain {
        Domain::Choice { options } => options
            .iter()
            .position(|o| o == raw)
            .map(|i| Value::Choice(i as u32))
            .ok_or_else(|| format!("{raw:?} is not one of {options:?}"))?,
        Domain::Int { .. } => Value::Int(
            raw.parse()
                .map_err(|_| format!("{raw:?} is not an integer"))?,
        ),
        Domain::Real { .. } => Value::Real(
            raw.parse()
                .map_err(|_| format!("{raw:?} is not a number"))?,
        ),
    };
    if !value_in(domain, v) {
        return Err(format!("{raw} is outside the range {domain:?}"));
    }
    Ok(v)
}
