//! Networks built from architectures: the NAS-Bench-201 skeleton (Dong & Yang, ICLR 2020)
//! with its operations, and layer-wise networks.
//!
//! Skeleton: 3×3 stem convolution (C channels) with batch norm; three stages of N cells at
//! C, 2C and 4C channels; between stages a residual reduction block (ReLU-conv-BN 3×3
//! stride 2, ReLU-conv-BN 3×3, shortcut 2×2 average pool then 1×1 convolution); BN-ReLU,
//! global average pool, linear classifier. C = 16 and N = 5 is the benchmark's network.

use anyhow::{Result, bail};
use nasop_core::arch::{Architecture, Edge, IDENTITY_OPS, Layer, ZERO_OPS};
use tch::Tensor;
use tch::nn::{self, ModuleT};

/// The operations the trainer knows, by name.
pub const CELL_OPERATIONS: [&str; 5] = [
    "none",
    "skip_connect",
    "nor_conv_1x1",
    "nor_conv_3x3",
    "avg_pool_3x3",
];
pub const LAYER_OPERATIONS: [&str; 4] = ["conv_3x3", "conv_5x5", "conv_1x1", "avg_pool_3x3"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// Channels of the first stage (16 in NAS-Bench-201).
    pub channels: i64,
    /// Cells per stage (5 in NAS-Bench-201).
    pub cells_per_stage: i64,
    pub input_channels: i64,
    pub classes: i64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            channels: 16,
            cells_per_stage: 5,
            input_channels: 3,
            classes: 10,
        }
    }
}

/// The layers with PyTorch's default initialisation (`reset_parameters` of `torch.nn.Conv2d`,
/// `Linear` and `BatchNorm2d`), which tch's defaults are not: tch draws conv and linear
/// weights from Kaiming-uniform with the ReLU gain (bound √6/√fan_in, √6 ≈ 2.45× PyTorch's)
/// and batch-norm scales from U(0, 1). PyTorch: weights U(−1/√fan_in, 1/√fan_in)
/// (`kaiming_uniform_(a=√5)`), biases the same, batch-norm scale 1 and shift 0.
pub mod torch_init {
    use tch::nn::{self, Init, init::FanInOut, init::NonLinearity, init::NormalOrUniform};

    /// Kaiming-uniform with a = √5: gain √(2/(1+a²)) = 1/√3, bound √3·gain/√fan_in.
    pub const WEIGHT: Init = Init::Kaiming {
        dist: NormalOrUniform::Uniform,
        fan: FanInOut::FanIn,
        non_linearity: NonLinearity::ExplicitGain(0.577_350_269_189_625_8),
    };

    pub fn conv2d<'a, T: std::borrow::Borrow<nn::Path<'a>>>(
        p: T,
        cin: i64,
        cout: i64,
        k: i64,
        config: nn::ConvConfig,
    ) -> nn::Conv2D {
        let bound = 1.0 / ((cin / config.groups * k * k) as f64).sqrt();
        let config = nn::ConvConfig {
            ws_init: WEIGHT,
            bs_init: Init::Uniform {
                lo: -bound,
                up: bound,
            },
            ..config
        };
        nn::conv2d(p, cin, cout, k, config)
    }

    /// tch's linear bias is already PyTorch's U(−1/√fan_in, 1/√fan_in).
    pub fn linear<'a, T: std::borrow::Borrow<nn::Path<'a>>>(
        p: T,
        cin: i64,
        cout: i64,
    ) -> nn::Linear {
        let config = nn::LinearConfig {
            ws_init: WEIGHT,
            ..Default::default()
        };
        nn::linear(p, cin, cout, config)
    }

    pub fn batch_norm2d<'a, T: std::borrow::Borrow<nn::Path<'a>>>(p: T, c: i64) -> nn::BatchNorm {
        let config = nn::BatchNormConfig {
            ws_init: Init::Const(1.0),
            bs_init: Init::Const(0.0),
            ..Default::default()
        };
        nn::batch_norm2d(p, c, config)
    }
}

/// ReLU, convolution without bias, batch norm (affine).
#[derive(Debug)]
pub struct ReluConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl ReluConvBn {
    pub fn new(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, padding: i64) -> Self {
        let cfg = nn::ConvConfig {
            stride,
            padding,
            bias: false,
            ..Default::default()
        };
        ReluConvBn {
            conv: torch_init::conv2d(&p / "conv", cin, cout, k, cfg),
            bn: torch_init::batch_norm2d(&p / "bn", cout),
        }
    }
}

impl ModuleT for ReluConvBn {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        x.relu().apply(&self.conv).apply_t(&self.bn, train)
    }
}

/// One cell operation (stride 1, channels preserved).
#[derive(Debug)]
pub enum Op {
    Zero,
    Identity,
    Conv(Box<ReluConvBn>),
    AvgPool,
}

impl Op {
    /// `None` for an operation the trainer does not know.
    pub fn new(p: nn::Path, name: &str, c: i64) -> Option<Op> {
        Some(match name {
            n if ZERO_OPS.contains(&n) => Op::Zero,
            n if IDENTITY_OPS.contains(&n) => Op::Identity,
            "nor_conv_1x1" => Op::Conv(Box::new(ReluConvBn::new(p, c, c, 1, 1, 0))),
            "nor_conv_3x3" => Op::Conv(Box::new(ReluConvBn::new(p, c, c, 3, 1, 1))),
            "avg_pool_3x3" => Op::AvgPool,
            _ => return None,
        })
    }

    /// `None` for the zero operation (the caller skips the term).
    pub fn forward(&self, x: &Tensor, train: bool) -> Option<Tensor> {
        match self {
            Op::Zero => None,
            Op::Identity => Some(x.shallow_clone()),
            Op::Conv(m) => Some(m.forward_t(x, train)),
            Op::AvgPool => Some(x.avg_pool2d([3i64, 3], [1i64, 1], [1i64, 1], false, false, None)),
        }
    }
}

/// A cell with one fixed operation per edge.
#[derive(Debug)]
pub struct Cell {
    nodes: usize,
    /// (from, to, op), grouped by `to` in increasing order.
    edges: Vec<(usize, usize, Op)>,
}

impl Cell {
    /// A cell of `c` channels under `cp` with one operation per edge.
    fn new(cp: &nn::Path, nodes: usize, edges: &[Edge], c: i64) -> Result<Self> {
        let mut ops = Vec::new();
        for e in edges {
            let path = cp / format!("edge{}_{}", e.from, e.to);
            let op = Op::new(path, &e.op, c).ok_or_else(|| {
                anyhow::anyhow!(
                    "operation {:?} (edge {}->{}) is unknown; the trainer knows {}",
                    e.op,
                    e.from,
                    e.to,
                    CELL_OPERATIONS.join(", ")
                )
            })?;
            ops.push((e.from, e.to, op));
        }
        Ok(Cell { nodes, edges: ops })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut states: Vec<Tensor> = vec![x.shallow_clone()];
        for j in 1..self.nodes {
            let terms: Vec<Tensor> = self
                .edges
                .iter()
                .filter(|e| e.1 == j)
                .filter_map(|(i, _, op)| op.forward(&states[*i], train))
                .collect();
            states.push(sum_or_zeros(terms, x));
        }
        states.pop().expect("a cell has an output node")
    }
}

pub fn sum_or_zeros(terms: Vec<Tensor>, like: &Tensor) -> Tensor {
    let mut it = terms.into_iter();
    match it.next() {
        Some(first) => it.fold(first, |acc, t| acc + t),
        None => like.zeros_like(),
    }
}

/// The residual reduction block between stages.
#[derive(Debug)]
pub struct Reduction {
    a: ReluConvBn,
    b: ReluConvBn,
    shortcut: nn::Conv2D,
}

impl Reduction {
    pub fn new(p: nn::Path, cin: i64, cout: i64) -> Self {
        let cfg = nn::ConvConfig {
            bias: false,
            ..Default::default()
        };
        Reduction {
            a: ReluConvBn::new(&p / "a", cin, cout, 3, 2, 1),
            b: ReluConvBn::new(&p / "b", cout, cout, 3, 1, 1),
            shortcut: torch_init::conv2d(&p / "shortcut", cin, cout, 1, cfg),
        }
    }
}

impl ModuleT for Reduction {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let main = self.b.forward_t(&self.a.forward_t(x, train), train);
        let short = x
            .avg_pool2d([2i64, 2], [2i64, 2], [0i64, 0], false, true, None)
            .apply(&self.shortcut);
        main + short
    }
}

/// Stem, head and the stage layout shared by fixed networks and the DARTS supernet.
#[derive(Debug)]
pub struct Skeleton {
    stem: nn::Conv2D,
    stem_bn: nn::BatchNorm,
    pub reductions: Vec<Reduction>,
    last_bn: nn::BatchNorm,
    classifier: nn::Linear,
    pub config: NetConfig,
}

impl Skeleton {
    pub fn new(p: &nn::Path, config: NetConfig) -> Self {
        let c = config.channels;
        let cfg = nn::ConvConfig {
            padding: 1,
            bias: false,
            ..Default::default()
        };
        Skeleton {
            stem: torch_init::conv2d(p / "stem", config.input_channels, c, 3, cfg),
            stem_bn: torch_init::batch_norm2d(p / "stem_bn", c),
            reductions: vec![
                Reduction::new(p / "reduce1", c, 2 * c),
                Reduction::new(p / "reduce2", 2 * c, 4 * c),
            ],
            last_bn: torch_init::batch_norm2d(p / "last_bn", 4 * c),
            classifier: torch_init::linear(p / "classifier", 4 * c, config.classes),
            config,
        }
    }

    /// Channels of stage `s` (0, 1, 2).
    pub fn stage_channels(&self, s: usize) -> i64 {
        self.config.channels << s
    }

    /// Runs the network, calling `cell(stage, index, x)` for every cell.
    pub fn forward_with(
        &self,
        x: &Tensor,
        train: bool,
        mut cell: impl FnMut(usize, usize, &Tensor) -> Tensor,
    ) -> Tensor {
        let mut h = x.apply(&self.stem).apply_t(&self.stem_bn, train);
        for stage in 0..3 {
            if stage > 0 {
                h = self.reductions[stage - 1].forward_t(&h, train);
            }
            for k in 0..self.config.cells_per_stage as usize {
                h = cell(stage, k, &h);
            }
        }
        h.apply_t(&self.last_bn, train)
            .relu()
            .adaptive_avg_pool2d([1i64, 1])
            .flatten(1, -1)
            .apply(&self.classifier)
    }
}

/// A network with a fixed architecture.
#[derive(Debug)]
pub enum Network {
    Cells {
        skeleton: Box<Skeleton>,
        cells: Vec<Cell>,
    },
    Layers {
        layers: Vec<LayerModule>,
        classifier: nn::Linear,
    },
}

#[derive(Debug)]
pub struct LayerModule {
    conv: Option<nn::Conv2D>,
    bn: nn::BatchNorm,
    /// A 1×1 projection when an average pool must change the width.
    project: Option<nn::Conv2D>,
    stride: i64,
}

impl Network {
    pub fn new(p: &nn::Path, arch: &Architecture, config: NetConfig) -> Result<Self> {
        match arch {
            Architecture::Cell { nodes, edges } => Self::cells(p, *nodes, edges, config),
            Architecture::Layers { layers } => Self::layers(p, layers, config),
        }
    }

    /// The skeleton with every cell of every stage built from the same edges.
    fn cells(p: &nn::Path, nodes: usize, edges: &[Edge], config: NetConfig) -> Result<Self> {
        let skeleton = Skeleton::new(p, config);
        let mut cells = Vec::new();
        for stage in 0..3 {
            let c = skeleton.stage_channels(stage);
            for k in 0..config.cells_per_stage {
                let cp = p / format!("cell{stage}_{k}");
                cells.push(Cell::new(&cp, nodes, edges, c)?);
            }
        }
        Ok(Network::Cells {
            skeleton: Box::new(skeleton),
            cells,
        })
    }

    /// The layers in order, each taking the previous one's width, then the classifier.
    fn layers(p: &nn::Path, layers: &[Layer], config: NetConfig) -> Result<Self> {
        let mut modules = Vec::new();
        let mut cin = config.input_channels;
        for (k, layer) in layers.iter().enumerate() {
            let lp = p / format!("layer{k}");
            modules.push(LayerModule::new(&lp, k, layer, cin)?);
            cin = layer.width as i64;
        }
        let classifier = torch_init::linear(p / "classifier", cin, config.classes);
        Ok(Network::Layers {
            layers: modules,
            classifier,
        })
    }
}

impl LayerModule {
    /// Layer `k` of a layer-wise network, taking `cin` channels.
    fn new(lp: &nn::Path, k: usize, layer: &Layer, cin: i64) -> Result<Self> {
        // Halve the resolution every third layer.
        let stride = if k % 3 == 2 { 2 } else { 1 };
        let width = layer.width as i64;
        let conv = |size, padding| {
            let cfg = nn::ConvConfig {
                stride,
                padding,
                bias: false,
                ..Default::default()
            };
            Some(torch_init::conv2d(lp / "conv", cin, width, size, cfg))
        };
        let (conv, project) = match layer.op.as_str() {
            "conv_3x3" => (conv(3, 1), None),
            "conv_5x5" => (conv(5, 2), None),
            "conv_1x1" => (conv(1, 0), None),
            "avg_pool_3x3" => (
                None,
                (cin != width).then(|| {
                    let cfg = nn::ConvConfig {
                        bias: false,
                        ..Default::default()
                    };
                    torch_init::conv2d(lp / "project", cin, width, 1, cfg)
                }),
            ),
            other => bail!(
                "layer {k}: operation {other:?} is unknown; the trainer knows {}",
                LAYER_OPERATIONS.join(", ")
            ),
        };
        Ok(LayerModule {
            conv,
            bn: torch_init::batch_norm2d(lp / "bn", width),
            project,
            stride,
        })
    }
}

impl ModuleT for Network {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            Network::Cells { skeleton, cells } => {
                let per_stage = skeleton.config.cells_per_stage as usize;
                skeleton.forward_with(x, train, |stage, k, h| {
                    cells[stage * per_stage + k].forward_t(h, train)
                })
            }
            Network::Layers { layers, classifier } => {
                let mut h = x.shallow_clone();
                for l in layers {
                    h = match (&l.conv, &l.project) {
                        (Some(conv), _) => h.apply(conv),
                        (None, project) => {
                            let pooled = h.avg_pool2d(
                                [3i64, 3],
                                [l.stride, l.stride],
                                [1i64, 1],
                                false,
                                false,
                                None,
                            );
                            match project {
                                Some(p) => pooled.apply(p),
                                None => pooled,
                            }
                        }
                    };
                    h = h.apply_t(&l.bn, train).relu();
                }
                h.adaptive_avg_pool2d([1i64, 1])
                    .flatten(1, -1)
                    .apply(classifier)
            }
        }
    }
}

/// Trainable parameters (batch-norm running statistics excluded), as the benchmark counts them.
pub fn parameter_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

/// Multiply-accumulates of one forward pass of one `hw`×`hw` image, in millions
/// (convolutions and the classifier; pools, BN and additions are not counted).
pub fn mflops(arch: &Architecture, config: NetConfig, hw: i64) -> f64 {
    let c = config.channels;
    let macs = match arch {
        Architecture::Cell { edges, .. } => {
            let mut macs = config.input_channels * c * 9 * hw * hw;
            for stage in 0..3i64 {
                let ch = c << stage;
                let side = hw >> stage;
                let cell: i64 = edges
                    .iter()
                    .map(|e| match e.op.as_str() {
                        "nor_conv_1x1" => ch * ch * side * side,
                        "nor_conv_3x3" => 9 * ch * ch * side * side,
                        _ => 0,
                    })
                    .sum();
                macs += cell * config.cells_per_stage;
                if stage > 0 {
                    let cin = ch / 2;
                    macs += 9 * cin * ch * side * side
                        + 9 * ch * ch * side * side
                        + cin * ch * side * side;
                }
            }
            macs + 4 * c * config.classes
        }
        Architecture::Layers { layers } => {
            let (mut macs, mut cin, mut side) = (0, config.input_channels, hw);
            for (k, l) in layers.iter().enumerate() {
                if k % 3 == 2 {
                    side = (side + 1) / 2;
                }
                let w = l.width as i64;
                macs += match l.op.as_str() {
                    "conv_3x3" => 9 * cin * w * side * side,
                    "conv_5x5" => 25 * cin * w * side * side,
                    "conv_1x1" => cin * w * side * side,
                    _ if cin != w => cin * w * side * side,
                    _ => 0,
                };
                cin = w;
            }
            macs + cin * config.classes
        }
    };
    macs as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every parameter the trainer builds starts as PyTorch's would: conv and linear weights
    /// and biases U(−b, b) with b = 1/√fan_in (mean 0, variance b²/3), batch-norm scales 1 and
    /// shifts 0. The moments are checked within 6 standard errors of the sample.
    #[test]
    fn initialisation_matches_pytorch_defaults() {
        let cell = "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|none~2|";
        let layers = "conv_3x3@48,conv_5x5@64,avg_pool_3x3@32,conv_1x1@96";
        let mut checked = 0;
        for arch in [cell, layers] {
            let arch = Architecture::parse(arch).unwrap();
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let config = NetConfig {
                channels: 32,
                cells_per_stage: 2,
                input_channels: 3,
                classes: 100,
            };
            let _net = Network::new(&vs.root(), &arch, config).unwrap();
            let vars = vs.variables();
            for (name, t) in &vars {
                let dims = t.size();
                let values: Vec<f64> =
                    Vec::<f64>::try_from(t.to_kind(tch::Kind::Double).flatten(0, -1)).unwrap();
                let n = values.len() as f64;
                let mean = values.iter().sum::<f64>() / n;
                let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                let is_bn = name.contains("bn.") || name.ends_with("bn");
                if is_bn || name.contains("_bn.") {
                    if name.ends_with(".weight") {
                        assert!(
                            values.iter().all(|&v| v == 1.0),
                            "{name}: batch-norm scale must start at 1"
                        );
                    } else if name.ends_with(".bias") {
                        assert!(
                            values.iter().all(|&v| v == 0.0),
                            "{name}: batch-norm shift must start at 0"
                        );
                    }
                    continue;
                }
                let fan_in = match dims.len() {
                    4 => dims[1] * dims[2] * dims[3],
                    2 => dims[1],
                    // A linear layer's bias: the fan-in of its weight.
                    1 => {
                        let weight = name.replace(".bias", ".weight");
                        vars[&weight].size()[1]
                    }
                    _ => panic!("{name}: unexpected shape {dims:?}"),
                } as f64;
                let b2 = 1.0 / fan_in;
                let (want_mean, want_var) = (0.0, b2 / 3.0);
                // Standard errors: of the mean √(σ²/n); of the variance √((μ4 − σ⁴)/n),
                // μ4 = b⁴/5 for U(−b, b).
                let se_mean = (want_var / n).sqrt();
                let se_var = ((b2 * b2 / 5.0 - want_var * want_var) / n).sqrt();
                assert!(
                    (mean - want_mean).abs() < 6.0 * se_mean,
                    "{name}: mean {mean} (want 0 ± {se_mean})"
                );
                assert!(
                    (var - want_var).abs() < 6.0 * se_var,
                    "{name}: variance {var}, PyTorch's {want_var} (± {se_var})"
                );
                assert!(
                    values.iter().all(|v| v.abs() <= b2.sqrt()),
                    "{name}: a value outside ±1/√fan_in"
                );
                checked += 1;
            }
        }
        assert!(checked >= 10, "only {checked} weight tensors checked");
    }
}
