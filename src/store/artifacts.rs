//! Where artifacts live. Training and prediction read plain files, so every
//! store hands out local working directories; a shared store (S3) also
//! publishes finished artifacts and fetches those another process made.
//!
//! The rule that keeps several processes consistent: an artifact is published
//! before the database refers to it, and fetched before it is read.

use std::io;
use std::path::{Path, PathBuf};

/// Why an artifact could not be published or fetched.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("object store: {0}")]
    Remote(#[from] object_store::Error),
    #[error("{0} is not in the artifact store")]
    Missing(String),
    #[error("artifact store configuration: {0}")]
    Config(String),
}

#[async_trait::async_trait]
pub trait ArtifactStore: Send + Sync {
    /// A dataset's extracted files and manifest (local working copy).
    fn dataset_dir(&self, id: &str) -> PathBuf;
    /// A job's checkpoints (`<dir>/<checkpoint name>/...`, local working copy).
    fn job_dir(&self, id: &str) -> PathBuf;
    /// Scratch space for uploads in flight, on the same filesystem as the
    /// artifacts so finished work is moved in by rename.
    fn staging_dir(&self) -> PathBuf;
    /// Where artifacts are shared, for logs and /ready (`local` when they are not).
    fn describe(&self) -> String;

    /// Makes a complete local dataset visible to every process.
    async fn publish_dataset(&self, id: &str) -> Result<(), ArtifactError>;
    /// Makes sure the dataset is present locally; returns its directory.
    async fn fetch_dataset(&self, id: &str) -> Result<PathBuf, ArtifactError>;
    async fn remove_dataset(&self, id: &str) -> Result<(), ArtifactError>;

    /// Makes a complete local checkpoint visible to every process.
    async fn publish_checkpoint(&self, job: &str, name: &str) -> Result<(), ArtifactError>;
    /// Forgets the job's shared checkpoints not in `keep` (the trainer prunes).
    async fn retain_checkpoints(&self, job: &str, keep: &[String]) -> Result<(), ArtifactError>;
    /// Brings every complete checkpoint of the job to the local directory
    /// (before resuming a job another process started); returns that directory.
    async fn fetch_job(&self, job: &str) -> Result<PathBuf, ArtifactError>;
    /// Makes sure one checkpoint is present locally; returns its directory.
    async fn fetch_checkpoint(&self, job: &str, name: &str) -> Result<PathBuf, ArtifactError>;
}

/// Artifacts under one local directory, seen by this process only.
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

    pub(crate) fn remove_dataset_dir(&self, id: &str) -> io::Result<()> {
        match std::fs::remove_dir_all(self.dataset_dir(id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}

#[async_trait::async_trait]
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

    fn describe(&self) -> String {
        "local".into()
    }

    async fn publish_dataset(&self, _id: &str) -> Result<(), ArtifactError> {
        Ok(())
    }

    async fn fetch_dataset(&self, id: &str) -> Result<PathBuf, ArtifactError> {
        let dir = self.dataset_dir(id);
        if !dir.is_dir() {
            return Err(ArtifactError::Missing(format!("dataset {id}")));
        }
        Ok(dir)
    }

    async fn remove_dataset(&self, id: &str) -> Result<(), ArtifactError> {
        let me = Self { root: self.root.clone() };
        let id = id.to_string();
        tokio::task::spawn_blocking(move || me.remove_dataset_dir(&id)).await.map_err(io::Error::other)??;
        Ok(())
    }

    async fn publish_checkpoint(&self, _job: &str, _name: &str) -> Result<(), ArtifactError> {
        Ok(())
    }

    async fn retain_checkpoints(&self, _job: &str, _keep: &[String]) -> Result<(), ArtifactError> {
        Ok(())
    }

    async fn fetch_job(&self, job: &str) -> Result<PathBuf, ArtifactError> {
        Ok(self.job_dir(job))
    }

    async fn fetch_checkpoint(&self, job: &str, name: &str) -> Result<PathBuf, ArtifactError> {
        let dir = self.job_dir(job).join(name);
        if !dir.is_dir() {
            return Err(ArtifactError::Missing(format!("checkpoint {name} of job {job}")));
        }
        Ok(dir)
    }
}
