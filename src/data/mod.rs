//! Data: image decoding and preprocessing, datasets on disk.

pub mod dataset;
pub mod ingest;
