//! The NAS-Bench-201 tables (see data/nasbench201/README.md): the gzip-compressed copy in the
//! repository is built into nasop, so a lookup needs no file beside the binary; `--data DIR`
//! reads another copy (plain `.csv` or `.csv.gz`). A product feature: the local runner
//! answers tabular trials from them, and the strategy benchmark (src/bench) reads them.

mod trial;
pub use trial::{Tabular, nb201_trial};

use nasop_core::{Point, SearchSpace, Value};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// The repository's copy, compiled in.
const BUILT_IN: [(&str, &[u8]); 2] = [
    (
        "nb201.csv",
        include_bytes!("../../data/nasbench201/nb201.csv.gz"),
    ),
    (
        "nb201_hw_latency.csv",
        include_bytes!("../../data/nasbench201/nb201_hw_latency.csv.gz"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(
        "cannot read {path}: {source} (pass --data with a folder holding nb201.csv or nb201.csv.gz, or leave --data out to use the tables built into nasop)"
    )]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Format { path: String, problem: String },
}

/// A dataset of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataset {
    Cifar10,
    Cifar100,
    Imagenet16,
}

impl Dataset {
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Cifar10 => "cifar10",
            Dataset::Cifar100 => "cifar100",
            Dataset::Imagenet16 => "imagenet16",
        }
    }
}

/// One architecture's results on one dataset.
#[derive(Debug, Clone, Copy, Default)]
pub struct Row {
    pub index: u32,
    pub valid_12ep: f64,
    pub valid_200ep: f64,
    pub test: f64,
    pub train_time_200ep: f64,
    pub params: f64,
    pub flops: f64,
    pub latency_ms: f64,
}

/// The table for one dataset, indexed by the architecture's grid position in the
/// NAS-Bench-201 space (so a lookup is arithmetic, not a string hash).
pub struct Table {
    pub dataset: Dataset,
    pub space: SearchSpace,
    rows: Vec<Row>,
    pub arch_strings: Vec<String>,
}

/// Opens table `name` of `dir` (`name` or `name.gz`), or of the built-in copy when `dir` is
/// None. Returns the path for messages and a CSV reader.
fn read(
    dir: Option<&Path>,
    name: &str,
) -> Result<(String, csv::Reader<Box<dyn Read>>), TableError> {
    let (path, input): (String, Box<dyn Read>) = match dir {
        None => {
            let (_, bytes) = BUILT_IN
                .iter()
                .find(|(n, _)| *n == name)
                .expect("every table has a built-in copy");
            (
                format!("(built-in) data/nasbench201/{name}.gz"),
                Box::new(flate2::read::GzDecoder::new(*bytes)),
            )
        }
        Some(dir) => {
            let plain = dir.join(name);
            let gz = dir.join(format!("{name}.gz"));
            let (path, compressed) = if !plain.exists() && gz.exists() {
                (gz, true)
            } else {
                (plain, false)
            };
            let file = std::fs::File::open(&path).map_err(|source| TableError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let input: Box<dyn Read> = if compressed {
                Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
            } else {
                Box::new(file)
            };
            (path.display().to_string(), input)
        }
    };
    Ok((path, csv::Reader::from_reader(input)))
}

impl Table {
    /// Loads `nb201.csv`, and the latency column `latency` of `nb201_hw_latency.csv` if given,
    /// from `dir` or (None) from the copy built into nasop.
    pub fn load(
        dir: Option<&Path>,
        dataset: Dataset,
        latency: Option<&str>,
    ) -> Result<Self, TableError> {
        let space = SearchSpace::nas_bench_201();
        let (path, mut reader) = read(dir, "nb201.csv")?;
        let fmt = |problem: String| TableError::Format {
            path: path.clone(),
            problem,
        };
        let headers = reader.headers().map_err(|e| fmt(e.to_string()))?.clone();
        let col = |name: &str| {
            headers
                .iter()
                .position(|h| h == name)
                .ok_or_else(|| fmt(format!("no column {name}")))
        };
        let ds = dataset.name();
        let (c_index, c_arch) = (col("index")?, col("arch")?);
        let c_v12 = col(&format!("{ds}_valid_12ep"))?;
        let c_v200 = col(&format!("{ds}_valid"))?;
        let c_test = col(&format!("{ds}_test"))?;
        let c_time = col(&format!("{ds}_train_time_200ep_s"))?;
        let c_params = col(&format!("params_{ds}"))?;
        let c_flops = col(&format!("flops_{ds}"))?;
        let mut rows = vec![Row::default(); 15_625];
        let mut arch_strings = vec![String::new(); 15_625];
        let mut by_index = HashMap::new();
        let mut filled = 0;
        for record in reader.records() {
            let r = record.map_err(|e| fmt(e.to_string()))?;
            let num = |c: usize| {
                r[c].parse::<f64>()
                    .map_err(|_| fmt(format!("row {}: {:?} is not a number", &r[c_index], &r[c])))
            };
            let point = space
                .parse(&r[c_arch])
                .map_err(|e| fmt(format!("row {}: {e}", &r[c_index])))?;
            let g = grid_index(&point);
            let index: u32 = r[c_index]
                .parse()
                .map_err(|_| fmt(format!("bad index {:?}", &r[c_index])))?;
            rows[g] = Row {
                index,
                valid_12ep: num(c_v12)?,
                valid_200ep: num(c_v200)?,
                test: num(c_test)?,
                train_time_200ep: num(c_time)?,
                params: num(c_params)?,
                flops: num(c_flops)?,
                latency_ms: 0.0,
            };
            arch_strings[g] = r[c_arch].to_string();
            by_index.insert(index, g);
            filled += 1;
        }
        if filled != 15_625 {
            return Err(fmt(format!("expected 15625 architectures, found {filled}")));
        }
        if let Some(column) = latency {
            add_latency(dir, column, &by_index, &mut rows)?;
        }
        Ok(Table {
            dataset,
            space,
            rows,
            arch_strings,
        })
    }

    pub fn row(&self, point: &Point) -> &Row {
        &self.rows[grid_index(point)]
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// The best test accuracy in the table.
    pub fn optimum_test(&self) -> f64 {
        self.rows
            .iter()
            .map(|r| r.test)
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// The latency column `column` of `nb201_hw_latency.csv` into the rows (`by_index` maps a
/// NAS-Bench-201 index to its row).
fn add_latency(
    dir: Option<&Path>,
    column: &str,
    by_index: &HashMap<u32, usize>,
    rows: &mut [Row],
) -> Result<(), TableError> {
    let (path, mut reader) = read(dir, "nb201_hw_latency.csv")?;
    let fmt = |problem: String| TableError::Format {
        path: path.clone(),
        problem,
    };
    let headers = reader.headers().map_err(|e| fmt(e.to_string()))?.clone();
    let c_lat = headers.iter().position(|h| h == column).ok_or_else(|| {
        let names: Vec<&str> = headers
            .iter()
            .filter(|h| h.ends_with("_latency_ms"))
            .collect();
        fmt(format!(
            "no latency column {column:?}; choose one of {}",
            names.join(", ")
        ))
    })?;
    for record in reader.records() {
        let r = record.map_err(|e| fmt(e.to_string()))?;
        let index: u32 = r[0]
            .parse()
            .map_err(|_| fmt(format!("bad index {:?}", &r[0])))?;
        let g = *by_index
            .get(&index)
            .ok_or_else(|| fmt(format!("index {index} is not in nb201.csv")))?;
        rows[g].latency_ms = r[c_lat].parse().map_err(|_| {
            fmt(format!(
                "row {index}: latency {:?} is not a number",
                &r[c_lat]
            ))
        })?;
    }
    Ok(())
}

/// A NAS-Bench-201 point's position in the grid (base-5 digits, first edge most significant).
pub fn grid_index(point: &Point) -> usize {
    point.iter().fold(0, |acc, v| match v {
        Value::Choice(i) => acc * 5 + *i as usize,
        other => panic!("not a NAS-Bench-201 point: {other:?}"),
    })
}
