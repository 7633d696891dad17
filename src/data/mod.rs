//! Data: image decoding and preprocessing, datasets on disk.

pub mod cache;
pub mod dataset;
pub mod folder;
pub mod image;
pub mod ingest;
pub mod loader;
