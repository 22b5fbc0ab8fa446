//! Scalars from TensorBoard event files, read as they are written: the TFRecord framing
//! (length, CRC, data, CRC) around `Event` protocol buffers, decoded by hand for the few
//! fields a scalar needs: `step`, and each summary value's `tag` with its `simple_value`
//! (TensorBoard 1, PyTorch's SummaryWriter, tensorboardX) or a one-number `tensor`
//! (TensorFlow 2's `tf.summary.scalar`).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Every event file under a directory, followed from where it was last read.
#[derive(Default)]
pub struct EventDir {
    pub root: PathBuf,
    offsets: BTreeMap<PathBuf, u64>,
}

/// One scalar: its step, its name and value.
pub type Scalar = (u32, String, f64);

impl EventDir {
    pub fn new(root: PathBuf) -> EventDir {
        EventDir {
            root,
            offsets: BTreeMap::new(),
        }
    }

    /// The scalars written since the last call. A record still being written is left for
    /// the next call. A file in a subdirectory (`validation/`) prefixes its tags with it.
    pub fn poll(&mut self) -> Vec<Scalar> {
        let mut files = Vec::new();
        collect(&self.root, &mut files);
        let mut out = Vec::new();
        for file in files {
            let offset = self.offsets.get(&file).copied().unwrap_or(0);
            let prefix = file
                .parent()
                .and_then(|p| p.strip_prefix(&self.root).ok())
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Ok(bytes) = read_from(&file, offset) else {
                continue;
            };
            let (used, events) = records(&bytes);
            for data in events {
                for (step, tag, value) in scalars(data) {
                    let name = if prefix.is_empty() {
                        tag
                    } else {
                        format!("{prefix}/{tag}")
                    };
                    out.push((step, metric_name(&name), value));
                }
            }
            self.offsets.insert(file, offset + used as u64);
        }
        out
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            collect(&p, out);
        } else if p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("tfevents"))
        {
            out.push(p);
        }
    }
}

fn read_from(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

/// A tag as a metric name: `[A-Za-z0-9_.-]`, others (`/`, spaces) become `_`.
pub fn metric_name(tag: &str) -> String {
    let name: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    name.chars().take(nasop_core::contract::MAX_NAME).collect()
}

/// The whole records at the start of `bytes`: how many bytes they take, and their data.
pub fn records(bytes: &[u8]) -> (usize, Vec<&[u8]>) {
    let mut at = 0;
    let mut out = Vec::new();
    while bytes.len() >= at + 12 {
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes")) as usize;
        let end = at + 12 + len + 4;
        if len > 64 << 20 || bytes.len() < end {
            break;
        }
        out.push(&bytes[at + 12..at + 12 + len]);
        at = end;
    }
    (at, out)
}

/// A protocol buffer's fields: (number, wire type, varint value or bytes).
enum Field<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(&'a [u8]),
    Fixed32([u8; 4]),
}

fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn fields(b: &[u8]) -> Vec<(u64, Field<'_>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let Some(key) = varint(b, &mut at) else { break };
        let (number, wire) = (key >> 3, key & 7);
        let field = match wire {
            0 => match varint(b, &mut at) {
                Some(v) => Field::Varint(v),
                None => break,
            },
            1 => match b.get(at..at + 8) {
                Some(s) => {
                    at += 8;
                    Field::Fixed64(s.try_into().expect("8 bytes"))
                }
                None => break,
            },
            2 => {
                let Some(len) = varint(b, &mut at) else { break };
                match b.get(at..at + len as usize) {
                    Some(s) => {
                        at += len as usize;
                        Field::Bytes(s)
                    }
                    None => break,
                }
            }
            5 => match b.get(at..at + 4) {
                Some(s) => {
                    at += 4;
                    Field::Fixed32(s.try_into().expect("4 bytes"))
                }
                None => break,
            },
            _ => break,
        };
        out.push((number, field));
    }
    out
}

/// An Event's scalars: (step, tag, value).
pub fn scalars(event: &[u8]) -> Vec<Scalar> {
    let mut step = 0u32;
    let mut summaries = Vec::new();
    for (n, f) in fields(event) {
        match (n, f) {
            (2, Field::Varint(v)) => step = v.min(u64::from(u32::MAX)) as u32,
            (5, Field::Bytes(b)) => summaries.push(b),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for summary in summaries {
        for (n, f) in fields(summary) {
            if let (1, Field::Bytes(value)) = (n, f)
                && let Some((tag, v)) = value_of(value)
            {
                out.push((step, tag, v));
            }
        }
    }
    out
}

/// A Summary.Value's tag and number, when it holds one number.
fn value_of(b: &[u8]) -> Option<(String, f64)> {
    let mut tag = None;
    let mut number = None;
    for (n, f) in fields(b) {
        match (n, f) {
            (1, Field::Bytes(t)) => tag = Some(String::from_utf8_lossy(t).into_owned()),
            (2, Field::Fixed32(v)) => number = Some(f64::from(f32::from_le_bytes(v))),
            (8, Field::Bytes(t)) => number = number.or_else(|| tensor_scalar(t)),
            _ => {}
        }
    }
    Some((tag?, number.filter(|v| v.is_finite())?))
}

/// A TensorProto of one float or double: in float_val / double_val or tensor_content.
fn tensor_scalar(b: &[u8]) -> Option<f64> {
    let mut dtype = 0;
    let mut values = Vec::new();
    let mut content: Option<&[u8]> = None;
    for (n, f) in fields(b) {
        match (n, f) {
            (1, Field::Varint(v)) => dtype = v,
            (4, Field::Bytes(c)) => content = Some(c),
            // Packed repeated float (5) and double (6), or one unpacked value.
            (5, Field::Bytes(p)) => values.extend(
                p.chunks_exact(4)
                    .map(|c| f64::from(f32::from_le_bytes(c.try_into().expect("4")))),
            ),
            (5, Field::Fixed32(v)) => values.push(f64::from(f32::from_le_bytes(v))),
            (6, Field::Bytes(p)) => values.extend(
                p.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8"))),
            ),
            (6, Field::Fixed64(v)) => values.push(f64::from_le_bytes(v)),
            _ => {}
        }
    }
    // DT_FLOAT = 1, DT_DOUBLE = 2.
    match (dtype, content, values.as_slice()) {
        (1, Some(c), _) if c.len() == 4 => Some(f64::from(f32::from_le_bytes(c.try_into().ok()?))),
        (2, Some(c), _) if c.len() == 8 => Some(f64::from_le_bytes(c.try_into().ok()?)),
        (1 | 2, None, [v]) => Some(*v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes what a writer would: a TFRecord around an Event.
    fn record(event: &[u8]) -> Vec<u8> {
        let mut out = (event.len() as u64).to_le_bytes().to_vec();
        out.extend([0; 4]);
        out.extend(event);
        out.extend([0; 4]);
        out
    }

    fn bytes_field(n: u8, b: &[u8]) -> Vec<u8> {
        let mut out = vec![(n << 3) | 2, b.len() as u8];
        out.extend(b);
        out
    }

    fn simple(step: u8, tag: &str, v: f32) -> Vec<u8> {
        let mut value = bytes_field(1, tag.as_bytes());
        value.push((2 << 3) | 5);
        value.extend(v.to_le_bytes());
        let summary = bytes_field(1, &value);
        let mut event = vec![(1 << 3) | 1];
        event.extend(1.5f64.to_le_bytes());
        event.extend([2 << 3, step]);
        event.extend(bytes_field(5, &summary));
        event
    }

    fn tensor(step: u8, tag: &str, v: f32) -> Vec<u8> {
        let mut t = vec![1 << 3, 1];
        t.extend(bytes_field(4, &v.to_le_bytes()));
        let mut value = bytes_field(1, tag.as_bytes());
        value.extend(bytes_field(8, &t));
        let summary = bytes_field(1, &value);
        let mut event = vec![2 << 3, step];
        event.extend(bytes_field(5, &summary));
        event
    }

    #[test]
    fn simple_values_and_scalar_tensors_are_read_and_a_torn_record_waits() {
        let mut file = record(&simple(1, "val/accuracy", 0.5));
        file.extend(record(&tensor(2, "epoch_loss", 0.25)));
        let whole = file.len();
        let next = record(&simple(3, "val/accuracy", 0.75));
        file.extend(&next[..7]);
        let (used, events) = records(&file);
        assert_eq!(used, whole, "the torn record is left for later");
        let got: Vec<Scalar> = events.iter().flat_map(|e| scalars(e)).collect();
        assert_eq!(
            got,
            vec![
                (1, "val/accuracy".to_string(), 0.5),
                (2, "epoch_loss".to_string(), 0.25)
            ]
        );
        assert_eq!(metric_name("val/accuracy"), "val_accuracy");
    }

    #[test]
    fn a_directory_is_followed_file_by_file() {
        let dir = std::env::temp_dir().join(format!("nasop-tfevents-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("validation")).unwrap();
        let path = dir.join("validation/events.out.tfevents.1.host");
        std::fs::write(&path, record(&simple(1, "acc", 0.5))).unwrap();
        let mut d = EventDir::new(dir.clone());
        assert_eq!(d.poll(), vec![(1, "validation_acc".to_string(), 0.5)]);
        assert!(d.poll().is_empty(), "nothing new");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, &record(&simple(2, "acc", 0.625))).unwrap();
        assert_eq!(d.poll(), vec![(2, "validation_acc".to_string(), 0.625)]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
