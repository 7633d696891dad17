//! Where artifacts live. Training and prediction read plain files, so the
//! trait hands out local working directories; an object-storage
//! implementation would sync those to and from its bucket.

use std::io;
use std::path::{Path, PathBuf};

pub trait ArtifactStore: Send + Sync {
    /// A dataset's extracted files and manifest.
    fn dataset_dir(&self, id: &str) -> PathBuf;
    /// A job's checkpoints (`<dir>/<checkpoint name>/...`).
    fn job_dir(&self, id: &str) -> PathBuf;
    /// Scratch space for uploads in flight, on the same filesystem as the
    /// artifacts so finished work is moved in by rename.
    fn staging_dir(&self) -> PathBuf;
    fn remove_dataset(&self, id: &str) -> io::Result<()>;
}

/// Artifacts under one local directory.
pub struct LocalArtifacts {
    root: PathBuf,
}

impl LocalArtifacts {
    pub fn new(root: &Path) -> io::Result<Self> {
        let s = Self { root: root.to_path_buf() };
        for d in ["datasets", "jobs", "staging"] {
            std::fs::create_dir_all(s.root.join(d))?;
        }
        // Leftovers of uploads interrupted by a crash.
        for e in std::fs::read_dir(s.staging_dir())? {
            let p = e?.path();
            let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        }
        Ok(s)
    }
}

impl ArtifactStore for LocalArtifacts {
    fn dataset_dir(&self, id: &str) -> PathBuf {
        self.root.join("datasets").join(id)
    }

    fn job_dir(&self, id: &str) -> PathBuf {
        self.root.join("jobs").join(id)
    }

    fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }

    fn remove_dataset(&self, id: &str) -> io::Result<()> {
        match std::fs::remove_dir_all(self.dataset_dir(id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}
