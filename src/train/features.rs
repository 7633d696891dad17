//! Stage 1's feature pass, kept on disk batch by batch: a run killed in the
//! middle of it (the pass is most of stage 1's time) resumes at the first
//! batch it had not finished instead of starting over.
//!
//! Layout, under a run's output directory:
//! `.features/key` (what the features were computed from) and
//! `.features/<part>/<step>.safetensors` (one batch's pooled features), each
//! written to a temporary name and renamed, so a file that exists is whole.
//! A different key (other images, size, batch size, seed, augmentation or
//! backbone) makes the folder start empty. The folder is removed once stage 1
//! has saved its checkpoint.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use super::TrainError;

const DIR: &str = ".features";
const KEY_FILE: &str = "key";
const TENSOR: &str = "features";

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

    fn path(&self, part: &str, step: usize) -> PathBuf {
        self.dir.join(part).join(format!("{step:06}.safetensors"))
    }

    /// One batch's features when a earlier attempt finished that batch.
    pub fn get(&self, part: &str, step: usize, device: &Device) -> Result<Option<Tensor>, TrainError> {
        let p = self.path(part, step);
        if !p.exists() {
            return Ok(None);
        }
        let mut t = candle_core::safetensors::load(&p, device)?;
        Ok(t.remove(TENSOR))
    }

    pub fn put(&self, part: &str, step: usize, features: &Tensor) -> Result<(), TrainError> {
        let p = self.path(part, step);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        let tmp = p.with_extension("tmp");
        candle_core::safetensors::save(&std::collections::HashMap::from([(TENSOR, features.clone())]), &tmp)?;
        fs::rename(&tmp, &p)?;
        Ok(())
    }

    /// Stage 1 is safe in its checkpoint: the features are not needed again.
    pub fn remove(self) -> Result<(), TrainError> {
        fs::remove_dir_all(&self.dir)?;
        Ok(())
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)?;
    Ok(())
}
