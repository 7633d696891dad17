//! Persistence: the database (jobs, datasets, checkpoints, models, events) and
//! the artifact store (dataset files, checkpoints).

pub mod artifacts;
pub mod db;
pub mod object;
pub mod rows;

use std::path::Path;
use std::sync::Arc;

pub use artifacts::{ArtifactError, ArtifactStore, LocalArtifacts};
pub use db::Db;
pub use object::ObjectArtifacts;
pub use rows::{CheckpointRow, DatasetRow, EventRow, JobMetrics, JobRow, JobStatus, ModelRow, ModelStage};

/// The local store, or a shared one when `url` names it (`s3://...`, `file://...`);
/// `data_dir` holds the working copies either way.
pub fn open_artifacts(url: Option<&str>, data_dir: &Path) -> Result<Arc<dyn ArtifactStore>, ArtifactError> {
    Ok(match url {
        None => Arc::new(LocalArtifacts::new(data_dir)?),
        Some(u) => Arc::new(ObjectArtifacts::open(u, data_dir)?),
    })
}
