//! The preprocessed pixel cache of a dataset: every image decoded and resized
//! once, for one input size, into one file that later jobs read instead of
//! decoding again. Reads are positioned (`pread`), so a job's memory does not
//! grow with the dataset (the kernel's page cache does the caching).
//!
//! Layout, in the cache folder of a dataset:
//! - `pixels-<size>-v<VERSION>.bin`: slot `i` holds sample `i` of the
//!   manifest as `size * size * 3` bytes of RGB, rows top to bottom;
//! - `pixels-<size>-v<VERSION>.json`: the index: version, size, a digest of the
//!   samples' paths, and for each slot `null` (a good image) or why it could
//!   not be used. It is written last, so an index that exists describes a
//!   complete file.
//!
//! `VERSION` changes whenever decoding or resizing would give other pixels.
//! Both files are written under temporary names and renamed: two jobs building
//! the same cache at once both end with a whole one.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::dataset::{Rejected, Sample};
use super::image::{load_path_for_model, DecodeLimits};

/// Preprocessing version: bump when decoded or resized pixels would change.
pub const VERSION: u32 = 1;

/// Images decoded at once while building: bounds the builder's memory.
pub const BUILD_CHUNK: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("pixel cache i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("pixel cache index: {0}")]
    Index(#[from] serde_json::Error),
    #[error("building the pixel cache was cancelled")]
    Cancelled,
}

#[derive(Serialize, Deserialize)]
struct Index {
    version: u32,
    size: usize,
    samples: String,
    /// Per slot: None for a usable image, else why not.
    rejected: Vec<Option<String>>,
}

/// An open, complete cache.
pub struct PixelCache {
    file: Arc<File>,
    size: usize,
    slot_of: HashMap<PathBuf, usize>,
    rejected: Vec<Option<String>>,
    /// Whether this open built it (false: an earlier job did, nothing was decoded).
    pub built: bool,
    pub bytes: u64,
}

fn digest(samples: &[Sample]) -> String {
    let mut h = Sha256::new();
    for s in samples {
        h.update(s.path.to_string_lossy().as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

fn paths(dir: &Path, size: usize) -> (PathBuf, PathBuf) {
    (dir.join(format!("pixels-{size}-v{VERSION}.bin")), dir.join(format!("pixels-{size}-v{VERSION}.json")))
}

impl PixelCache {
    /// Opens the cache of `samples` (files under `root`) at `size` in `dir`,
    /// building it first when there is none (decoding in parallel, a chunk
    /// at a time; `progress(done, total)` after each chunk).
    pub fn open_or_build(
        dir: &Path,
        root: &Path,
        samples: &[Sample],
        size: usize,
        limits: &DecodeLimits,
        mut progress: impl FnMut(usize, usize),
        cancel: &AtomicBool,
    ) -> Result<Self, CacheError> {
        let (bin, json) = paths(dir, size);
        let want = digest(samples);
        let existing = fs::read(&json).ok().and_then(|b| serde_json::from_slice::<Index>(&b).ok());
        let (index, built) = match existing {
            Some(ix) if ix.version == VERSION && ix.size == size && ix.samples == want && bin.exists() => (ix, false),
            _ => (build(dir, root, samples, size, limits, &want, &mut progress, cancel)?, true),
        };
        let file = File::open(&bin)?;
        let bytes = file.metadata()?.len();
        let slot_of = samples.iter().enumerate().map(|(i, s)| (s.path.clone(), i)).collect();
        Ok(Self { file: Arc::new(file), size, slot_of, rejected: index.rejected, built, bytes })
    }

    /// The usable images among `samples` (each must be one the cache was
    /// built from), in order, and the ones left out with why.
    pub fn images(&self, samples: &[&Sample]) -> (CachedImages, Vec<Rejected>) {
        let (mut slots, mut labels, mut rejected) = (Vec::new(), Vec::new(), Vec::new());
        for s in samples {
            let reason = match self.slot_of.get(&s.path) {
                Some(&i) => match &self.rejected[i] {
                    None => {
                        slots.push(i as u64);
                        labels.push(s.class as u32);
                        continue;
                    }
                    Some(r) => r.clone(),
                },
                None => "not in the dataset's pixel cache".to_string(),
            };
            rejected.push(Rejected { path: s.path.display().to_string(), reason });
        }
        (CachedImages { file: self.file.clone(), size: self.size, slots, labels }, rejected)
    }
}

#[allow(clippy::too_many_arguments)]
fn build(
    dir: &Path,
    root: &Path,
    samples: &[Sample],
    size: usize,
    limits: &DecodeLimits,
    want: &str,
    progress: &mut dyn FnMut(usize, usize),
    cancel: &AtomicBool,
) -> Result<Index, CacheError> {
    fs::create_dir_all(dir)?;
    let (bin, json) = paths(dir, size);
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let tmp_bin = dir.join(format!(".{tag}.bin"));
    let slot = (size * size * 3) as u64;
    let out = File::create(&tmp_bin)?;
    let mut rejected = Vec::with_capacity(samples.len());
    let result = (|| {
        for (c, chunk) in samples.chunks(BUILD_CHUNK).enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(CacheError::Cancelled);
            }
            let decoded: Vec<_> = chunk
                .par_iter()
                .map(|s| load_path_for_model(&root.join(&s.path), (size as u32, size as u32), limits))
                .collect();
            for (k, r) in decoded.into_iter().enumerate() {
                let i = (c * BUILD_CHUNK + k) as u64;
                match r {
                    Ok(img) => {
                        out.write_all_at(img.as_raw(), i * slot)?;
                        rejected.push(None);
                    }
                    Err(e) => rejected.push(Some(e.to_string())),
                }
            }
            progress(((c + 1) * BUILD_CHUNK).min(samples.len()), samples.len());
        }
        // Slots of rejected images at the end are holes; the file has its full length.
        out.set_len(samples.len() as u64 * slot)?;
        out.sync_all()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp_bin);
        return Err(e);
    }
    fs::rename(&tmp_bin, &bin)?;
    let index = Index { version: VERSION, size, samples: want.to_string(), rejected };
    let tmp_json = dir.join(format!(".{tag}.json"));
    fs::write(&tmp_json, serde_json::to_vec(&index)?)?;
    fs::rename(&tmp_json, &json)?;
    Ok(index)
}

/// Square u8 RGB images read from a pixel cache on demand.
pub struct CachedImages {
    file: Arc<File>,
    pub size: usize,
    slots: Vec<u64>,
    pub labels: Vec<u32>,
}

impl CachedImages {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Reads image `i` into `buf` (`size * size * 3` bytes).
    pub fn read(&self, i: usize, buf: &mut [u8]) -> std::io::Result<()> {
        let slot = (self.size * self.size * 3) as u64;
        self.file.read_exact_at(buf, self.slots[i] * slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::Split;

    fn sample(path: &str, class: usize) -> Sample {
        Sample { path: PathBuf::from(path), class, split: Split::Train }
    }

    #[test]
    fn built_once_read_back_exactly_and_rebuilt_when_the_samples_change() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("files");
        fs::create_dir_all(&root).unwrap();
        for (i, name) in ["a.png", "b.png"].iter().enumerate() {
            let img = ::image::RgbImage::from_fn(20, 10, |x, y| ::image::Rgb([x as u8 * 9, y as u8 * 20, i as u8 * 100]));
            img.save(root.join(name)).unwrap();
        }
        fs::write(root.join("broken.png"), b"not a png").unwrap();
        let samples = vec![sample("a.png", 0), sample("broken.png", 1), sample("b.png", 1)];
        let limits = DecodeLimits::default();
        let no = AtomicBool::new(false);
        let cache_dir = dir.path().join("cache");
        let c = PixelCache::open_or_build(&cache_dir, &root, &samples, 8, &limits, |_, _| {}, &no).unwrap();
        assert!(c.built);
        let refs: Vec<&Sample> = samples.iter().collect();
        let (imgs, rejected) = c.images(&refs);
        assert_eq!(imgs.labels, vec![0, 1]);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].path, "broken.png");
        // The same pixels as decoding directly.
        let mut px = vec![0u8; 8 * 8 * 3];
        imgs.read(1, &mut px).unwrap();
        let direct = load_path_for_model(&root.join("b.png"), (8, 8), &limits).unwrap();
        assert_eq!(px, direct.as_raw().as_slice());

        let again = PixelCache::open_or_build(&cache_dir, &root, &samples, 8, &limits, |_, _| {}, &no).unwrap();
        assert!(!again.built, "a second open reuses the cache");
        let other_size = PixelCache::open_or_build(&cache_dir, &root, &samples, 9, &limits, |_, _| {}, &no).unwrap();
        assert!(other_size.built, "another size is another cache");
        let fewer = vec![sample("a.png", 0)];
        assert!(PixelCache::open_or_build(&cache_dir, &root, &fewer, 8, &limits, |_, _| {}, &no).unwrap().built);
        let cancelled = PixelCache::open_or_build(&cache_dir, &root, &samples, 7, &limits, |_, _| {}, &AtomicBool::new(true));
        assert!(matches!(cancelled, Err(CacheError::Cancelled)));
        let leftovers = fs::read_dir(&cache_dir).unwrap().filter(|e| {
            e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.')
        }).count();
        assert_eq!(leftovers, 0, "a cancelled build leaves no temporary file");
    }
}
