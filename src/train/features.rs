//! Stage 1's pooled features, on disk: the head's epochs read the rows each
//! batch needs, so memory does not grow with the dataset, and a run killed
//! in the middle of the feature pass (most of stage 1's time) resumes at the
//! first batch it had not finished instead of starting over.
//!
//! Layout, under a run's output directory, in `.features/`:
//! - `key`: a digest of what the features were computed from; a different one
//!   (other images, size, batch size, seed, augmentation, weights) empties
//!   the folder;
//! - `<part>.f32`: one row of `dim` little-endian f32 per image;
//! - `<part>.done`: how many batches of the part are written (renamed into
//!   place after their rows are synced, every few seconds and at the end, so
//!   it never runs ahead of them).
//!
//! The folder is removed once stage 1 has saved its checkpoint.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use super::TrainError;

const DIR: &str = ".features";
const KEY_FILE: &str = "key";

pub struct FeatureStore {
    dir: PathBuf,
}

impl FeatureStore {
    /// The store of the run in `out_dir` for features described by `key`
    /// (any text that changes whenever the features would). With `resume`
    /// false, or a key that differs from the stored one, it starts empty.
    pub fn open(out_dir: &Path, key: &str, resume: bool) -> Result<Self, TrainError> {
        let dir = out_dir.join(DIR);
        let digest = hex::encode(Sha256::digest(key.as_bytes()));
        let same = resume && fs::read_to_string(dir.join(KEY_FILE)).is_ok_and(|k| k == digest);
        if !same {
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            fs::create_dir_all(&dir)?;
            write_atomic(&dir.join(KEY_FILE), digest.as_bytes())?;
        }
        Ok(Self { dir })
    }

    /// The rows of one part (`rows` images, `dim` features each), with the
    /// batches an earlier attempt finished.
    /// `sync_every`: how often its progress is made durable (see `write_batch`).
    pub fn part(&self, name: &str, rows: usize, dim: usize, sync_every: Duration) -> Result<FeatureRows, TrainError> {
        let data = self.dir.join(format!("{name}.f32"));
        let done = self.dir.join(format!("{name}.done"));
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&data)?;
        let finished = fs::read_to_string(&done).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        Ok(FeatureRows { file, done, rows, dim, finished, synced: Instant::now(), sync_every })
    }

    /// Stage 1 is safe in its checkpoint: the features are not needed again.
    pub fn remove(self) -> Result<(), TrainError> {
        fs::remove_dir_all(&self.dir)?;
        Ok(())
    }
}

/// One part's features on disk.
pub struct FeatureRows {
    file: File,
    done: PathBuf,
    rows: usize,
    dim: usize,
    /// Batches already written, in order from the first.
    pub finished: usize,
    synced: Instant,
    sync_every: Duration,
}

/// How often the progress of a feature pass is made durable, at most.
pub const SYNC_EVERY: Duration = Duration::from_secs(5);

impl FeatureRows {
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Writes batch `step` (rows from `first_row`). Every few seconds, and at
    /// `last`, the rows are synced and the batches so far recorded finished:
    /// a crash loses at most those seconds, and syncing every batch would cost
    /// more than it saves.
    pub fn write_batch(&mut self, step: usize, first_row: usize, features: &Tensor, last: bool) -> Result<(), TrainError> {
        let values = features.flatten_all()?.to_vec1::<f32>()?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.file.write_all_at(&bytes, (first_row * self.dim * 4) as u64)?;
        if last || self.synced.elapsed() >= self.sync_every {
            self.file.sync_data()?;
            self.finished = step + 1;
            write_atomic(&self.done, self.finished.to_string().as_bytes())?;
            self.synced = Instant::now();
        }
        Ok(())
    }

    /// The rows `idx` as a (len, dim) tensor.
    pub fn rows(&self, idx: &[usize], device: &Device) -> Result<Tensor, TrainError> {
        let row = self.dim * 4;
        let mut bytes = vec![0u8; idx.len() * row];
        for (dst, &i) in bytes.chunks_exact_mut(row).zip(idx) {
            self.file.read_exact_at(dst, (i * row) as u64)?;
        }
        let values: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Ok(Tensor::from_vec(values, (idx.len(), self.dim), device)?)
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)?;
    Ok(())
}
