//! The folder of an ingested dataset, the one place that knows its layout:
//! `manifest.json` (classes, samples, rejected files), `files/` (the images,
//! as extracted) and `cache/` (derived data, e.g. the pixel caches; safe to
//! delete, rebuilt on use). The manifest is written last: a folder with one
//! is complete.

use std::path::{Path, PathBuf};

use super::dataset::DatasetManifest;

/// The file whose presence marks a complete dataset folder.
pub const MANIFEST_FILE: &str = "manifest.json";
const FILES_DIR: &str = "files";
const CACHE_DIR: &str = "cache";

pub fn files_dir(dataset: &Path) -> PathBuf {
    dataset.join(FILES_DIR)
}

pub fn cache_dir(dataset: &Path) -> PathBuf {
    dataset.join(CACHE_DIR)
}

pub fn manifest_path(dataset: &Path) -> PathBuf {
    dataset.join(MANIFEST_FILE)
}

pub fn read_manifest(dataset: &Path) -> Result<DatasetManifest, String> {
    let bytes = std::fs::read(manifest_path(dataset)).map_err(|e| format!("dataset folder {}: {e}", dataset.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("dataset manifest: {e}"))
}

pub fn write_manifest(dataset: &Path, manifest: &DatasetManifest) -> std::io::Result<()> {
    std::fs::write(manifest_path(dataset), serde_json::to_vec(manifest)?)
}

/// Bytes of the files under `dir` (0 when it does not exist).
pub fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}
