//! Checkpoints: one directory per saved epoch, written atomically (temp dir,
//! fsync every file, rename, fsync the parent), so a crash never leaves a
//! half-written checkpoint behind.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{Metrics, Stage, TrainConfig, TrainError};
use crate::model::{Backbone, BackboneKind, Head, Variant};

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const META_FILE: &str = "meta.json";
pub const BEST_FILE: &str = "best.json";

/// Everything needed to rebuild and use the model without the job's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckpointMeta {
    pub stage: Stage,
    /// 1-based epoch within the stage.
    pub epoch: usize,
    pub backbone: BackboneKind,
    pub variant: Variant,
    pub classes: Vec<String>,
    pub image_size: usize,
    pub train: Metrics,
    pub validation: Metrics,
    /// Adam's update count at this point (restored on resume).
    pub optimizer_step: u64,
    pub config: TrainConfig,
    /// confusion[true][predicted] on the validation set at this epoch.
    pub confusion: Vec<Vec<usize>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Best {
    name: String,
}

pub fn name(stage: Stage, epoch: usize) -> String {
    let s = match stage {
        Stage::Features | Stage::Frozen => "frozen",
        Stage::Finetune => "finetune",
    };
    format!("{s}-{epoch:03}")
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

/// Model tensors in the Keras layout under their canonical names, plus `head.*`.
pub fn model_tensors(backbone: &Backbone, head: &Head) -> Result<HashMap<String, Tensor>, TrainError> {
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
    meta: &CheckpointMeta,
) -> Result<PathBuf, TrainError> {
    save_with(out, name, tensors, optimizer, meta, None)
}

fn save_with(
    out: &Path,
    name: &str,
    tensors: &HashMap<String, Tensor>,
    optimizer: &[(String, Tensor)],
    meta: &CheckpointMeta,
    extra: Option<(&str, Vec<u8>)>,
) -> Result<PathBuf, TrainError> {
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

/// The mid-epoch checkpoint of stage 2 (one at a time, hidden from
/// [`list`]: it is for resuming only, never a model).
pub const PARTIAL: &str = ".partial";
const PROGRESS_FILE: &str = "progress.json";

/// How far into an epoch a mid-epoch checkpoint was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochProgress {
    pub epoch: usize,
    /// Batches of the epoch already trained (in the epoch's seeded order).
    pub steps_done: usize,
    pub loss_sum: f64,
    pub correct: usize,
}

pub fn save_partial(
    out: &Path,
    tensors: &HashMap<String, Tensor>,
    optimizer: &[(String, Tensor)],
    meta: &CheckpointMeta,
    progress: &EpochProgress,
) -> Result<PathBuf, TrainError> {
    save_with(out, PARTIAL, tensors, optimizer, meta, Some((PROGRESS_FILE, serde_json::to_vec(progress)?)))
}

/// The mid-epoch checkpoint, if a complete one is there.
pub fn read_partial(out: &Path) -> Result<Option<(CheckpointMeta, EpochProgress)>, TrainError> {
    let dir = out.join(PARTIAL);
    match fs::read(dir.join(PROGRESS_FILE)) {
        Ok(b) => Ok(Some((read_meta(&dir)?, serde_json::from_slice(&b)?))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn remove_partial(out: &Path) -> Result<(), TrainError> {
    match fs::remove_dir_all(out.join(PARTIAL)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

pub fn set_best(out: &Path, name: &str) -> Result<(), TrainError> {
    let tmp = out.join(format!(".{BEST_FILE}.tmp"));
    write_synced(&tmp, &serde_json::to_vec(&Best { name: name.to_string() })?)?;
    fs::rename(&tmp, out.join(BEST_FILE))?;
    fsync_dir(out)?;
    Ok(())
}

pub fn best(out: &Path) -> Result<Option<String>, TrainError> {
    match fs::read(out.join(BEST_FILE)) {
        Ok(b) => Ok(Some(serde_json::from_slice::<Best>(&b)?.name)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn read_meta(dir: &Path) -> Result<CheckpointMeta, TrainError> {
    Ok(serde_json::from_slice(&fs::read(dir.join(META_FILE))?)?)
}

/// Complete checkpoints under `out`, oldest first (by stage, then epoch).
pub fn list(out: &Path) -> Result<Vec<(String, CheckpointMeta)>, TrainError> {
    let mut v = Vec::new();
    let entries = match fs::read_dir(out) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(e.into()),
    };
    for e in entries {
        let e = e?;
        let n = e.file_name().to_string_lossy().to_string();
        if n.starts_with('.') || !e.path().join(META_FILE).exists() {
            continue;
        }
        v.push((n, read_meta(&e.path())?));
    }
    v.sort_by_key(|(_, m)| (m.stage == Stage::Finetune, m.epoch));
    Ok(v)
}

pub fn load_tensors(dir: &Path, file: &str, device: &Device) -> Result<HashMap<String, Tensor>, TrainError> {
    Ok(candle_core::safetensors::load(dir.join(file), device)?)
}
