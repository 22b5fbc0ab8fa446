//! The model a trial leaves behind when it completes its budget, in a directory of its own:
//! the weights (`model.safetensors`), what the network is and how it was trained
//! (`model.json`), and a TorchScript module traced by tch (`model.pt`) that plain PyTorch
//! runs without nasop: `torch.jit.load("model.pt")(images)` gives the logits of N×C×H×W
//! float images with pixels in [0, 1] (the module normalises them as training did).

use crate::model::{NetConfig, Network};
use anyhow::{Context, Result};
use nasop_core::Architecture;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::nn::{self, ModuleT};
use tch::{CModule, Device, Kind, Tensor};

pub const WEIGHTS: &str = "model.safetensors";
pub const DESCRIPTION: &str = "model.json";
pub const TORCHSCRIPT: &str = "model.pt";

/// Largest difference allowed between the traced module's outputs and the network's.
const TOLERANCE: f64 = 1e-4;

/// What an export needs besides the trained weights.
pub struct Export<'a> {
    pub arch: &'a Architecture,
    pub net: NetConfig,
    /// The per-channel statistics the training images were normalised with (1×C×1×1).
    pub mean: &'a Tensor,
    pub std: &'a Tensor,
    /// Height and width of the images.
    pub size: (i64, i64),
    /// How it was trained (the recipe as used) and what it reached.
    pub recipe: serde_json::Value,
    pub metrics: &'a BTreeMap<String, f64>,
}

/// Writes the three files into `dir` (each written beside and renamed, so a file there is
/// always whole) from a copy of the weights on the CPU, then loads the TorchScript file back
/// and checks that it computes what the network does. Returns `dir`.
pub fn save(dir: &Path, vs: &nn::VarStore, export: &Export) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cpu = nn::VarStore::new(Device::Cpu);
    let net = Network::new(&cpu.root(), export.arch, export.net)?;
    cpu.copy(vs).context("copying the weights to the CPU")?;
    // Traced weights become constants of the graph, which must not require gradients.
    cpu.freeze();
    let mean = export.mean.to_device(Device::Cpu).to_kind(Kind::Float);
    let std = export.std.to_device(Device::Cpu).to_kind(Kind::Float);
    let forward = |x: &Tensor| net.forward_t(&((x - &mean) / &std), false);
    let (h, w) = export.size;
    let shape = [2, export.net.input_channels, h, w];
    let example = Tensor::rand(shape, (Kind::Float, Device::Cpu));
    let module = tch::no_grad(|| {
        CModule::create_by_tracing(
            "NasopNetwork",
            "forward",
            &[example],
            &mut |xs: &[Tensor]| vec![forward(&xs[0])],
        )
    })
    .context("tracing the network into TorchScript")?;

    // Hidden names that keep the extension (the weights' format follows it).
    let part = |name: &str| dir.join(format!(".partial.{name}"));
    cpu.save(part(WEIGHTS)).context("writing the weights")?;
    module
        .save(part(TORCHSCRIPT))
        .context("writing the TorchScript module")?;
    let description = serde_json::json!({
        "architecture": export.arch.to_string(),
        "network": {
            "channels": export.net.channels,
            "cellsPerStage": export.net.cells_per_stage,
            "inputChannels": export.net.input_channels,
            "classes": export.net.classes,
        },
        "input": {
            "shape": ["N", export.net.input_channels, h, w],
            "pixels": "float32 in [0, 1]; model.pt normalises them with mean and std, the weights alone expect (x - mean) / std",
            "mean": Vec::<f64>::try_from(mean.flatten(0, -1).to_kind(Kind::Double))?,
            "std": Vec::<f64>::try_from(std.flatten(0, -1).to_kind(Kind::Double))?,
        },
        "output": format!("logits, N×{}", export.net.classes),
        "recipe": export.recipe,
        "metrics": export.metrics,
        "files": {"weights": WEIGHTS, "torchscript": TORCHSCRIPT},
        "load": format!("torch.jit.load(\"{TORCHSCRIPT}\")(images)"),
    });
    std::fs::write(part(DESCRIPTION), serde_json::to_vec_pretty(&description)?)?;

    // The file as a user loads it computes what the network does.
    let loaded = CModule::load(part(TORCHSCRIPT)).context("loading the TorchScript module back")?;
    let batch = Tensor::rand(shape, (Kind::Float, Device::Cpu));
    let (want, got) =
        tch::no_grad(|| -> Result<_> { Ok((forward(&batch), loaded.forward_ts(&[&batch])?)) })?;
    let diff = (&want - &got).abs().max().double_value(&[]);
    anyhow::ensure!(
        diff <= TOLERANCE,
        "the traced TorchScript module differs from the network by {diff} on a batch"
    );

    for name in [WEIGHTS, TORCHSCRIPT, DESCRIPTION] {
        std::fs::rename(part(name), dir.join(name))?;
    }
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::OptimizerConfig;

    /// A network trained a few steps, exported: the TorchScript file loaded back gives its
    /// outputs, and the safetensors file holds its weights.
    #[test]
    fn the_exported_module_computes_what_the_network_does() {
        tch::manual_seed(3);
        let arch = Architecture::parse(
            "|nor_conv_3x3~0|+|skip_connect~0|avg_pool_3x3~1|+|nor_conv_1x1~0|none~1|skip_connect~2|",
        )
        .unwrap();
        let net_cfg = NetConfig {
            channels: 4,
            cells_per_stage: 1,
            input_channels: 1,
            classes: 10,
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Network::new(&vs.root(), &arch, net_cfg).unwrap();
        let mut opt = nn::Sgd::default().build(&vs, 0.1).unwrap();
        let (mean, std) = (
            Tensor::from_slice(&[0.3f32]).view([1, 1, 1, 1]),
            Tensor::from_slice(&[0.2f32]).view([1, 1, 1, 1]),
        );
        let images = Tensor::rand([8, 1, 12, 12], (Kind::Float, Device::Cpu));
        let labels = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5, 6, 7]);
        for _ in 0..3 {
            let loss = net
                .forward_t(&((&images - &mean) / &std), true)
                .cross_entropy_for_logits(&labels);
            opt.backward_step(&loss);
        }
        let dir = std::env::temp_dir().join(format!("nasop-artifact-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let metrics = BTreeMap::from([("val_accuracy".to_string(), 0.5)]);
        save(
            &dir,
            &vs,
            &Export {
                arch: &arch,
                net: net_cfg,
                mean: &mean,
                std: &std,
                size: (12, 12),
                recipe: serde_json::json!({"epochs": 1}),
                metrics: &metrics,
            },
        )
        .unwrap();

        let module = CModule::load(dir.join(TORCHSCRIPT)).unwrap();
        let batch = Tensor::rand([5, 1, 12, 12], (Kind::Float, Device::Cpu));
        let want = tch::no_grad(|| net.forward_t(&((&batch - &mean) / &std), false));
        let got = module.forward_ts(&[&batch]).unwrap();
        assert_eq!(got.size(), [5, 10]);
        let diff = (&want - &got).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "outputs differ by {diff}");

        // The weights alone rebuild the same network.
        let mut again = nn::VarStore::new(Device::Cpu);
        let rebuilt = Network::new(&again.root(), &arch, net_cfg).unwrap();
        again.load(dir.join(WEIGHTS)).unwrap();
        let out = tch::no_grad(|| rebuilt.forward_t(&((&batch - &mean) / &std), false));
        assert!((&want - &out).abs().max().double_value(&[]) < 1e-6);

        let description: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(DESCRIPTION)).unwrap()).unwrap();
        assert_eq!(description["architecture"], arch.to_string());
        assert_eq!(description["network"]["classes"], 10);
        assert_eq!(description["metrics"]["val_accuracy"], 0.5);
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".partial."))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
