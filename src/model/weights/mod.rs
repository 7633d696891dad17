//! Pretrained weight import: Keras files -> canonical `WeightSet` -> the
//! product's own safetensors.
//!
//! Canonical names: Xception uses `<keras layer>.<var>` (the four unnamed
//! shortcut layers are `block{2,3,4,13}_residual_{conv,bn}`), MobileNetV2 uses
//! TF-slim paths (`MobilenetV2/Conv/weights`). Shapes stay Keras-native
//! (HWIO kernels, depthwise `(kh,kw,cin,1)`). A Dense head found in a file is
//! `head.kernel`/`head.bias`; several head layers are `head/<layer>.<var>`.

mod error;
pub mod fetch;
mod import;
pub(crate) mod keras3;
mod keras_h5;
mod spec;

pub use error::WeightsError;
pub use spec::{mobilenet_v2_spec, xception_spec, Arch};

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, View};

pub type Result<T, E = WeightsError> = std::result::Result<T, E>;

/// One float32 tensor in C order.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorData {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl TensorData {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Little-endian bytes, the layout safetensors and the manifests hash.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        self.data.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

/// Tensors by canonical name, plus the file they came from (for messages).
#[derive(Debug, Clone, Default)]
pub struct WeightSet {
    tensors: BTreeMap<String, TensorData>,
    source: Option<PathBuf>,
}

impl PartialEq for WeightSet {
    fn eq(&self, other: &Self) -> bool {
        self.tensors == other.tensors
    }
}

/// True for tensors of a classifier head rather than the backbone.
pub fn is_head_name(name: &str) -> bool {
    name.starts_with("head.") || name.starts_with("head/")
}

impl WeightSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, tensor: TensorData) -> Option<TensorData> {
        self.tensors.insert(name.into(), tensor)
    }

    pub fn get(&self, name: &str) -> Option<&TensorData> {
        self.tensors.get(name)
    }

    pub fn remove(&mut self, name: &str) -> Option<TensorData> {
        self.tensors.remove(name)
    }

    pub fn tensors(&self) -> &BTreeMap<String, TensorData> {
        &self.tensors
    }

    pub fn into_tensors(self) -> BTreeMap<String, TensorData> {
        self.tensors
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The file this set was read from, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Splits off the head tensors (`head.*`, `head/*`): (backbone, head).
    pub fn split_head(mut self) -> (WeightSet, WeightSet) {
        let names: Vec<String> = self
            .tensors
            .keys()
            .filter(|n| is_head_name(n))
            .cloned()
            .collect();
        let mut head = WeightSet {
            tensors: BTreeMap::new(),
            source: self.source.clone(),
        };
        for n in names {
            if let Some(t) = self.tensors.remove(&n) {
                head.tensors.insert(n, t);
            }
        }
        (self, head)
    }

    /// Which backbone these tensors belong to, judged by a first-layer tensor.
    pub fn arch(&self) -> Option<Arch> {
        if self.tensors.contains_key("block1_conv1.kernel") {
            Some(Arch::Xception)
        } else if self.tensors.contains_key("MobilenetV2/Conv/weights") {
            Some(Arch::MobileNetV2)
        } else {
            None
        }
    }

    /// Checks the backbone tensors against `spec`; head tensors are ignored.
    /// Every missing, unexpected or mis-shaped tensor is reported, not just
    /// the first.
    pub fn validate(&self, spec: &[(String, Vec<usize>)]) -> Result<()> {
        let mut problems = Vec::new();
        let expected: HashMap<&str, &Vec<usize>> =
            spec.iter().map(|(n, s)| (n.as_str(), s)).collect();
        for (name, shape) in spec {
            match self.tensors.get(name) {
                None => problems.push(format!(
                    "missing tensor `{name}` (expected shape {shape:?})"
                )),
                Some(t) if &t.shape != shape => problems.push(format!(
                    "tensor `{name}`: expected shape {shape:?}, found {:?}",
                    t.shape
                )),
                Some(t) if t.data.len() != t.numel() => problems.push(format!(
                    "tensor `{name}`: shape {:?} needs {} values, holds {}",
                    t.shape,
                    t.numel(),
                    t.data.len()
                )),
                Some(_) => {}
            }
        }
        for (name, t) in &self.tensors {
            if !is_head_name(name) && !expected.contains_key(name.as_str()) {
                problems.push(format!("unexpected tensor `{name}` (shape {:?})", t.shape));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(WeightsError::Mismatch {
                origin: self.origin(),
                problems,
            })
        }
    }

    fn origin(&self) -> String {
        match &self.source {
            Some(p) => p.display().to_string(),
            None => "weight set".to_string(),
        }
    }

    /// Reads any supported file, chosen by its content, not its extension:
    /// legacy Keras-2 `.h5` (weights or whole model), Keras-3 `.keras` archive
    /// or `.weights.h5`, or the product's own `.safetensors`. Keras files are
    /// mapped to canonical names and checked against the detected backbone.
    pub fn from_file(path: impl AsRef<Path>) -> Result<WeightSet> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| WeightsError::io(path, e))?;
        let mut set = match sniff(&bytes) {
            Format::Hdf5 => keras_h5::read_hdf5(path, bytes)?,
            Format::Zip => keras3::read_archive(path, &bytes)?,
            Format::Safetensors => parse_safetensors(path, &bytes)?,
            Format::Other(what) => {
                return Err(WeightsError::UnknownFormat {
                    path: path.into(),
                    found: what,
                });
            }
        };
        set.source = Some(path.to_path_buf());
        Ok(set)
    }

    /// Reads a file written by [`WeightSet::save_safetensors`].
    pub fn load_safetensors(path: impl AsRef<Path>) -> Result<WeightSet> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| WeightsError::io(path, e))?;
        let mut set = parse_safetensors(path, &bytes)?;
        set.source = Some(path.to_path_buf());
        Ok(set)
    }

    /// Writes all tensors as float32 safetensors. Atomic: a temp file in the
    /// same directory is written, fsynced and renamed over `path`, so a crash
    /// never leaves a half-written cache behind.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let views = self.tensors.iter().map(|(n, t)| (n.as_str(), F32View(t)));
        let meta = HashMap::from([("format".to_string(), "tuneserve-weights-v1".to_string())]);
        let bytes =
            safetensors::serialize(views, Some(meta)).map_err(|e| WeightsError::Corrupt {
                path: path.into(),
                format: "safetensors",
                detail: e.to_string(),
            })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let io = |e| WeightsError::io(path, e);
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        tmp.write_all(&bytes).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        // The rename itself is durable only once the directory is synced.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

struct F32View<'a>(&'a TensorData);

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Owned(self.0.to_le_bytes())
    }
    fn data_len(&self) -> usize {
        self.0.data.len() * 4
    }
}

fn parse_safetensors(path: &Path, bytes: &[u8]) -> Result<WeightSet> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| WeightsError::Corrupt {
        path: path.into(),
        format: "safetensors",
        detail: e.to_string(),
    })?;
    let mut set = WeightSet::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(WeightsError::Tensor {
                path: path.into(),
                name,
                detail: format!("dtype {:?}, expected F32", view.dtype()),
            });
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        set.insert(
            name,
            TensorData {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(set)
}

enum Format {
    Hdf5,
    Zip,
    Safetensors,
    Other(String),
}

fn sniff(bytes: &[u8]) -> Format {
    if hdf5_pure::is_hdf5_bytes(bytes) {
        return Format::Hdf5;
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return Format::Zip;
    }
    // safetensors: u64 LE header length, then a JSON object.
    if bytes.len() >= 9 && bytes[8] == b'{' {
        let mut n = [0u8; 8];
        n.copy_from_slice(&bytes[..8]);
        if u64::from_le_bytes(n) <= bytes.len() as u64 {
            return Format::Safetensors;
        }
    }
    let what = if bytes.is_empty() {
        "the file is empty"
    } else if bytes.starts_with(b"\x89PNG") {
        "a PNG image"
    } else if bytes.starts_with(b"\xFF\xD8\xFF") {
        "a JPEG image"
    } else if bytes.starts_with(b"\x1F\x8B") {
        "gzip data"
    } else if is_html(bytes) {
        "an HTML page (a proxy or login page instead of the download?)"
    } else {
        "unrecognised content"
    };
    Format::Other(what.to_string())
}

fn is_html(bytes: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(256)]).to_ascii_lowercase();
    let head = head.trim_start();
    head.starts_with("<!doctype html") || head.starts_with("<html")
}
