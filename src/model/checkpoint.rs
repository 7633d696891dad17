//! The checkpoint directory format, and its only reader and writer.
//!
//! A run's output directory holds one directory per saved epoch,
//! `<out>/<name>/` with `model.safetensors` (Keras-layout tensors under
//! canonical names, plus `head.*`), `optimizer.safetensors` and `meta.json`;
//! `<out>/best.json` names the best one and `<out>/.partial/` is the one
//! mid-epoch checkpoint (for resuming only). Every directory is written
//! atomically (temp dir, fsync every file, rename, fsync the parent), so a
//! crash never leaves a half-written checkpoint behind. What `meta.json` says
//! is the writer's schema (training's), so the functions here are generic over it.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Backbone, Head};

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const META_FILE: &str = "meta.json";
const BEST_FILE: &str = "best.json";
/// The mid-epoch checkpoint's directory (hidden from [`list`]).
const PARTIAL: &str = ".partial";
const PROGRESS_FILE: &str = "progress.json";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("checkpoint metadata: {0}")]
    Json(#[from] serde_json::Error),
    #[error("checkpoint tensors: {0}")]
    Tensor(#[from] candle_core::Error),
}

type Result<T> = std::result::Result<T, CheckpointError>;

#[derive(Serialize, Deserialize)]
struct Best {
    name: String,
}

/// Whether `dir` is a complete checkpoint.
pub fn is_checkpoint(dir: &Path) -> bool {
    dir.join(META_FILE).exists()
}

/// Model tensors in the Keras layout under their canonical names, plus `head.*`.
pub fn model_tensors(backbone: &Backbone, head: &Head) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for p in &backbone.net.params {
        out.insert(p.name.clone(), p.layout.to_keras(p.var.as_tensor())?);
    }
    out.insert("head.kernel".into(), head.kernel.as_tensor().clone());
    out.insert("head.bias".into(), head.bias.as_tensor().clone());
    Ok(out)
}

/// Atomically writes `<out>/<name>/` with weights, optimizer state and metadata.
pub fn save(
    out: &Path,
    name: &str,
    tensors: &HashMap<String, Tensor>,
    optimizer: &[(String, Tensor)],
    meta: &impl Serialize,
) -> Result<PathBuf> {
    save_with(out, name, tensors, optimizer, meta, None)
}

fn save_with(
    out: &Path,
    name: &str,
    tensors: &HashMap<String, Tensor>,
    optimizer: &[(String, Tensor)],
    meta: &impl Serialize,
    extra: Option<(&str, Vec<u8>)>,
) -> Result<PathBuf> {
    fs::create_dir_all(out)?;
    let tmp = out.join(format!(".tmp-{name}"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    candle_core::safetensors::save(tensors, tmp.join(MODEL_FILE))?;
    let opt: HashMap<String, Tensor> = optimizer.iter().cloned().collect();
    candle_core::safetensors::save(&opt, tmp.join(OPTIMIZER_FILE))?;
    for f in [MODEL_FILE, OPTIMIZER_FILE] {
        fs::File::open(tmp.join(f))?.sync_all()?;
    }
    write_synced(&tmp.join(META_FILE), &serde_json::to_vec_pretty(meta)?)?;
    if let Some((file, bytes)) = extra {
        write_synced(&tmp.join(file), &bytes)?;
    }
    fsync_dir(&tmp)?;
    let dst = out.join(name);
    if dst.exists() {
        fs::remove_dir_all(&dst)?;
    }
    fs::rename(&tmp, &dst)?;
    fsync_dir(out)?;
    Ok(dst)
}

/// Writes the mid-epoch checkpoint (replacing the previous one) with how far
/// into its epoch it was taken.
pub fn save_partial(
    out: &Path,
    tensors: &HashMap<String, Tensor>,
    optimizer: &[(String, Tensor)],
    meta: &impl Serialize,
    progress: &impl Serialize,
) -> Result<PathBuf> {
    save_with(out, PARTIAL, tensors, optimizer, meta, Some((PROGRESS_FILE, serde_json::to_vec(progress)?)))
}

/// The mid-epoch checkpoint's directory, metadata and progress, if a complete one is there.
pub fn read_partial<M: DeserializeOwned, P: DeserializeOwned>(out: &Path) -> Result<Option<(PathBuf, M, P)>> {
    let dir = out.join(PARTIAL);
    match fs::read(dir.join(PROGRESS_FILE)) {
        Ok(b) => {
            let progress = serde_json::from_slice(&b)?;
            Ok(Some((dir.clone(), read_meta(&dir)?, progress)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn remove_partial(out: &Path) -> Result<()> {
    match fs::remove_dir_all(out.join(PARTIAL)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

pub fn set_best(out: &Path, name: &str) -> Result<()> {
    let tmp = out.join(format!(".{BEST_FILE}.tmp"));
    write_synced(&tmp, &serde_json::to_vec(&Best { name: name.to_string() })?)?;
    fs::rename(&tmp, out.join(BEST_FILE))?;
    fsync_dir(out)?;
    Ok(())
}

pub fn best(out: &Path) -> Result<Option<String>> {
    match fs::read(out.join(BEST_FILE)) {
        Ok(b) => Ok(Some(serde_json::from_slice::<Best>(&b)?.name)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn read_meta<M: DeserializeOwned>(dir: &Path) -> Result<M> {
    Ok(serde_json::from_slice(&fs::read(dir.join(META_FILE))?)?)
}

/// Complete checkpoints under `out` (in no particular order).
pub fn list<M: DeserializeOwned>(out: &Path) -> Result<Vec<(String, M)>> {
    let mut v = Vec::new();
    let entries = match fs::read_dir(out) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(e.into()),
    };
    for e in entries {
        let e = e?;
        let n = e.file_name().to_string_lossy().to_string();
        if n.starts_with('.') || !is_checkpoint(&e.path()) {
            continue;
        }
        v.push((n, read_meta(&e.path())?));
    }
    Ok(v)
}

/// The model's tensors (`MODEL_FILE`) or the optimizer's (`OPTIMIZER_FILE`).
pub fn load_tensors(dir: &Path, file: &str, device: &Device) -> Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(dir.join(file), device)?)
}

fn fsync_dir(p: &Path) -> std::io::Result<()> {
    fs::File::open(p)?.sync_all()
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
