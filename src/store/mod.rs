//! Persistence: the database (jobs, datasets, checkpoints, models, events) and
//! the artifact store (dataset files, checkpoints).

pub mod artifacts;
pub mod db;

pub use artifacts::{ArtifactStore, LocalArtifacts};
pub use db::Db;
