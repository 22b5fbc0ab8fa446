//! Training recipes by name, resolved with the flags and the trial's hyperparameters over
//! them, and checked: every value the trainer uses is printed in the trial's first log line
//! and validated with an error that names where it came from and its valid range.

use crate::optim::OptimizerKind;
use anyhow::{Result, bail};
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecipeName {
    /// Small-data defaults: 10 epochs, batch 128, SGD (Nesterov 0.9) lr 0.1 cosine, weight
    /// decay 5e-4, 10% of the training images held out, augmentation for natural images.
    Small,
    /// NAS-Bench-201's recipe (Dong & Yang 2020): 200 epochs, batch 256, SGD (Nesterov 0.9)
    /// lr 0.1 cosine to 0, weight decay 5e-4, pad-4 random crop and flip on the raw pixels,
    /// half the training images held out (its cifar10-valid protocol).
    Nb201,
    /// The same with 12 epochs: the benchmark's search signal.
    #[value(name = "nb201-12")]
    Nb201_12,
    /// DARTS's search recipe (Liu et al. 2019): 50 epochs, batch 64, SGD (momentum 0.9) lr
    /// 0.025 cosine, weight decay 3e-4, gradients clipped at norm 5. The default of
    /// --mode darts|gdas.
    Darts,
}

impl RecipeName {
    pub fn as_str(self) -> &'static str {
        match self {
            RecipeName::Small => "small",
            RecipeName::Nb201 => "nb201",
            RecipeName::Nb201_12 => "nb201-12",
            RecipeName::Darts => "darts",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [
            RecipeName::Small,
            RecipeName::Nb201,
            RecipeName::Nb201_12,
            RecipeName::Darts,
        ]
        .into_iter()
        .find(|r| r.as_str() == text)
    }
}

/// Every setting of a training run.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    pub name: RecipeName,
    pub epochs: u32,
    pub batch_size: i64,
    pub optimizer: OptimizerKind,
    pub learning_rate: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub valid_fraction: f64,
    /// Random crop (pad 4 with black) and horizontal flip; `None`: for natural images only.
    pub augment: Option<bool>,
    pub channels: i64,
    pub cells_per_stage: i64,
}

impl Recipe {
    pub fn named(name: RecipeName) -> Self {
        let small = Recipe {
            name,
            epochs: 10,
            batch_size: 128,
            optimizer: OptimizerKind::Sgd,
            learning_rate: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            valid_fraction: 0.1,
            augment: None,
            channels: 16,
            cells_per_stage: 5,
        };
        match name {
            RecipeName::Small => small,
            RecipeName::Nb201 | RecipeName::Nb201_12 => Recipe {
                epochs: if name == RecipeName::Nb201 { 200 } else { 12 },
                batch_size: 256,
                valid_fraction: 0.5,
                augment: Some(true),
                ..small
            },
            RecipeName::Darts => Recipe {
                epochs: 50,
                batch_size: 64,
                learning_rate: 0.025,
                weight_decay: 3e-4,
                ..small
            },
        }
    }
}

impl Recipe {
    /// The recipe as used, for a model's description (`augment` as the data had it).
    pub fn to_json(&self, augment: bool, seed: u64) -> serde_json::Value {
        serde_json::json!({
            "recipe": self.name.as_str(),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "optimizer": match self.optimizer {
                OptimizerKind::Sgd => "sgd",
                OptimizerKind::Adam => "adam",
            },
            "learning_rate": self.learning_rate,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "valid_fraction": self.valid_fraction,
            "augment": augment,
            "channels": self.channels,
            "cells_per_stage": self.cells_per_stage,
            "seed": seed,
        })
    }
}

/// The network's size limits, shared by `train` and `params`.
pub const MAX_CHANNELS: i64 = 4096;
pub const MAX_CELLS_PER_STAGE: i64 = 64;

/// Where each setting that is not the recipe's came from, for messages.
#[derive(Debug, Default)]
pub struct Origins(BTreeMap<&'static str, String>);

impl Origins {
    pub fn set(&mut self, field: &'static str, origin: impl Into<String>) {
        self.0.insert(field, origin.into());
    }

    fn of(&self, field: &'static str, recipe: RecipeName) -> String {
        self.0
            .get(field)
            .cloned()
            .unwrap_or_else(|| format!("recipe {}'s {field}", recipe.as_str()))
    }
}

/// Applies one hyperparameter of the trial (`NASOP_TRIAL`) to the recipe. `Ok(false)` for a
/// name the trainer does not use.
pub fn apply_hyperparameter(
    recipe: &mut Recipe,
    origins: &mut Origins,
    name: &str,
    value: &serde_json::Value,
) -> Result<bool> {
    let origin = |field: &str| format!("NASOP_TRIAL hyperparameter {field}");
    let number = || -> Result<f64> {
        value
            .as_f64()
            .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
            .ok_or_else(|| anyhow::anyhow!("{} = {value}: not a number", origin(name)))
    };
    let whole = || -> Result<i64> {
        let x = number()?;
        if x.fract() != 0.0 || !x.is_finite() || x.abs() > 1e15 {
            bail!("{} = {value}: must be a whole number", origin(name));
        }
        Ok(x as i64)
    };
    let field: &'static str = match name {
        "learning_rate" | "lr" => {
            recipe.learning_rate = number()?;
            "learning_rate"
        }
        "weight_decay" => {
            recipe.weight_decay = number()?;
            "weight_decay"
        }
        "momentum" => {
            recipe.momentum = number()?;
            "momentum"
        }
        "valid_fraction" => {
            recipe.valid_fraction = number()?;
            "valid_fraction"
        }
        "batch_size" => {
            recipe.batch_size = whole()?;
            "batch_size"
        }
        "channels" => {
            recipe.channels = whole()?;
            "channels"
        }
        "cells_per_stage" => {
            recipe.cells_per_stage = whole()?;
            "cells_per_stage"
        }
        "optimizer" => {
            recipe.optimizer = match value.as_str() {
                Some("sgd") => OptimizerKind::Sgd,
                Some("adam") => OptimizerKind::Adam,
                _ => bail!("{} = {value}: use \"sgd\" or \"adam\"", origin(name)),
            };
            "optimizer"
        }
        "augment" => {
            recipe.augment = Some(match value {
                serde_json::Value::Bool(b) => *b,
                serde_json::Value::String(s) if s == "true" || s == "false" => s == "true",
                _ => bail!("{} = {value}: use true or false", origin(name)),
            });
            "augment"
        }
        _ => return Ok(false),
    };
    origins.set(field, origin(name));
    Ok(true)
}

/// The recipe a trial's `recipe` hyperparameter names.
pub fn recipe_hyperparameter(value: &serde_json::Value) -> Result<RecipeName> {
    value
        .as_str()
        .and_then(RecipeName::parse)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "NASOP_TRIAL hyperparameter recipe = {value}: use \"small\", \"nb201\", \"nb201-12\" or \"darts\""
            )
        })
}

/// Checks every value against its valid range; the error names where it came from.
pub fn validate(r: &Recipe, origins: &Origins) -> Result<()> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, field: &'static str, value: String, rule: &str| {
        if !ok {
            problems.push(format!("{} = {value}: {rule}", origins.of(field, r.name)));
        }
    };
    check(
        (1..=100_000).contains(&r.epochs),
        "epochs",
        r.epochs.to_string(),
        "must be from 1 to 100000",
    );
    check(
        (1..=65_536).contains(&r.batch_size),
        "batch_size",
        r.batch_size.to_string(),
        "must be from 1 to 65536",
    );
    check(
        r.learning_rate.is_finite() && r.learning_rate > 0.0 && r.learning_rate <= 10.0,
        "learning_rate",
        r.learning_rate.to_string(),
        "must be above 0 and at most 10",
    );
    check(
        r.momentum.is_finite() && (0.0..1.0).contains(&r.momentum),
        "momentum",
        r.momentum.to_string(),
        "must be from 0 to below 1",
    );
    check(
        r.weight_decay.is_finite() && (0.0..=1.0).contains(&r.weight_decay),
        "weight_decay",
        r.weight_decay.to_string(),
        "must be from 0 to 1",
    );
    check(
        r.valid_fraction.is_finite() && r.valid_fraction > 0.0 && r.valid_fraction < 1.0,
        "valid_fraction",
        r.valid_fraction.to_string(),
        "must be above 0 and below 1 (some images train, some validate)",
    );
    check(
        (1..=MAX_CHANNELS).contains(&r.channels),
        "channels",
        r.channels.to_string(),
        &format!("must be from 1 to {MAX_CHANNELS}"),
    );
    check(
        (1..=MAX_CELLS_PER_STAGE).contains(&r.cells_per_stage),
        "cells_per_stage",
        r.cells_per_stage.to_string(),
        &format!("must be from 1 to {MAX_CELLS_PER_STAGE}"),
    );
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("; "))
    }
}

impl fmt::Display for Recipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let optimizer = match self.optimizer {
            OptimizerKind::Sgd => format!("sgd (nesterov, momentum {})", self.momentum),
            OptimizerKind::Adam => "adam (betas 0.9, 0.999)".to_string(),
        };
        write!(
            f,
            "recipe {}: epochs {}, batch_size {}, optimizer {optimizer}, learning_rate {} (cosine to 0), weight_decay {}, valid_fraction {}, augment {}, channels {}, cells_per_stage {}",
            self.name.as_str(),
            self.epochs,
            self.batch_size,
            self.learning_rate,
            self.weight_decay,
            self.valid_fraction,
            match self.augment {
                Some(true) => "pad 4 + random crop + horizontal flip",
                Some(false) => "none",
                None => "for natural images only",
            },
            self.channels,
            self.cells_per_stage,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nb201_is_the_papers_recipe() {
        let r = Recipe::named(RecipeName::Nb201);
        assert_eq!((r.epochs, r.batch_size), (200, 256));
        assert_eq!(
            (r.learning_rate, r.momentum, r.weight_decay),
            (0.1, 0.9, 5e-4)
        );
        assert_eq!(r.augment, Some(true));
        assert_eq!(Recipe::named(RecipeName::Nb201_12).epochs, 12);
        for name in ["small", "nb201", "nb201-12", "darts"] {
            assert_eq!(RecipeName::parse(name).unwrap().as_str(), name);
            validate(
                &Recipe::named(RecipeName::parse(name).unwrap()),
                &Origins::default(),
            )
            .unwrap();
        }
    }

    #[test]
    fn bad_values_name_their_origin_and_range() {
        let mut r = Recipe::named(RecipeName::Small);
        let mut o = Origins::default();
        r.epochs = 0;
        o.set("epochs", "--epochs");
        let e = validate(&r, &o).unwrap_err().to_string();
        assert_eq!(e, "--epochs = 0: must be from 1 to 100000");
        let mut r = Recipe::named(RecipeName::Nb201);
        apply_hyperparameter(&mut r, &mut o, "lr", &serde_json::json!("nan")).unwrap();
        let e = validate(&r, &o).unwrap_err().to_string();
        assert!(
            e.contains("NASOP_TRIAL hyperparameter lr = NaN: must be above 0"),
            "{e}"
        );
        let e = apply_hyperparameter(&mut r, &mut o, "batch_size", &serde_json::json!(0.5))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("batch_size = 0.5: must be a whole number"),
            "{e}"
        );
        assert!(!apply_hyperparameter(&mut r, &mut o, "dropout", &serde_json::json!(0.1)).unwrap());
    }
}
