//! A trial answered from the tables instead of by training: `nasop nb201-trial`, and the
//! local runner's in-process executor for manifests whose command is `nasop nb201-trial`.

use super::{Dataset, Table};
use anyhow::{Context, Result, bail};
use nasop_core::SearchSpace;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The NAS-Bench-201 tables as a trial: `epochs` ≥ 200 reads the 200-epoch validation
/// accuracy, fewer the 12-epoch one; the test accuracy is the 200-epoch one.
pub struct Tabular {
    table: Table,
    space: SearchSpace,
}

impl Tabular {
    /// The CIFAR-10 table built into nasop.
    pub fn built_in() -> Result<Tabular> {
        Ok(Tabular {
            table: Table::load(None, Dataset::Cifar10, None)?,
            space: SearchSpace::nas_bench_201(),
        })
    }

    pub fn evaluate(&self, candidate: &str, epochs: u32) -> Result<BTreeMap<String, f64>> {
        let arch = candidate.split(';').next().unwrap_or_default();
        let point = self
            .space
            .parse(arch)
            .map_err(|e| anyhow::anyhow!("{arch} is not a NAS-Bench-201 cell: {e}"))?;
        let row = self.table.row(&point);
        let full = epochs >= 200;
        let mut m = BTreeMap::from([
            (
                "val_accuracy".to_string(),
                if full {
                    row.valid_200ep
                } else {
                    row.valid_12ep
                },
            ),
            ("test_accuracy".to_string(), row.test),
            ("params".to_string(), row.params * 1e6),
            ("flops".to_string(), row.flops),
            (
                "train_seconds".to_string(),
                row.train_time_200ep * epochs.min(200) as f64 / 200.0,
            ),
            ("nb201_index".to_string(), row.index as f64),
        ]);
        if row.latency_ms > 0.0 {
            m.insert("latency_ms".into(), row.latency_ms);
        }
        Ok(m)
    }
}

impl Tabular {
    /// `nasop nb201-trial` arguments: --data DIR --dataset NAME [--latency COLUMN].
    pub fn from_args(args: &[String]) -> Result<Tabular> {
        let mut data = None;
        let mut dataset = Dataset::Cifar10;
        let mut latency = None;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .with_context(|| format!("{a} needs a value"))
            };
            match a.as_str() {
                "--data" => data = Some(PathBuf::from(value()?)),
                "--dataset" => {
                    dataset = match value()?.as_str() {
                        "cifar10" => Dataset::Cifar10,
                        "cifar100" => Dataset::Cifar100,
                        "imagenet16" => Dataset::Imagenet16,
                        other => bail!("--dataset {other:?}: use cifar10, cifar100 or imagenet16"),
                    }
                }
                "--latency" => latency = Some(value()?),
                other => {
                    bail!(
                        "nb201-trial does not take {other:?} (it takes --data, --dataset, --latency)"
                    )
                }
            }
        }
        Ok(Tabular {
            table: Table::load(data.as_deref(), dataset, latency.as_deref())?,
            space: SearchSpace::nas_bench_201(),
        })
    }
}

/// `nasop nb201-trial`: the trial contract around a table lookup.
pub fn nb201_trial(args: &[String]) -> Result<()> {
    let text = std::env::var(nasop_core::contract::ENV_TRIAL)
        .context("nb201-trial reads its trial from NASOP_TRIAL, which is not set")?;
    let input: nasop_core::contract::TrialInput =
        serde_json::from_str(&text).context("NASOP_TRIAL is not a valid trial description")?;
    let metrics = Tabular::from_args(args)?.evaluate(&input.candidate, input.budget.epochs)?;
    let report = nasop_core::contract::Report {
        step: input.budget.epochs,
        metrics,
        info: BTreeMap::new(),
        end: Some(nasop_core::contract::RunEnd::Completed),
    };
    println!("{}", serde_json::to_string(&report)?);
    let path = std::env::var(nasop_core::contract::ENV_TERMINATION_PATH)
        .unwrap_or_else(|_| nasop_core::contract::DEFAULT_TERMINATION_PATH.to_string());
    std::fs::write(&path, nasop_core::contract::termination_message(&report))
        .with_context(|| format!("writing {path}"))?;
    Ok(())
}
