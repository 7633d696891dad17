//! A labelled image dataset on disk: one folder per class, optionally split
//! into train/ and validation/ (the layout of cats_and_dogs_filtered.zip).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Validation,
}

/// One usable image: its path relative to the dataset root, class index, split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub path: PathBuf,
    pub class: usize,
    pub split: Split,
}

/// A file that was left out, and why (shown to the user).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rejected {
    pub path: String,
    pub reason: String,
}

/// What a dataset holds once scanned. Class order is sorted by name (as Keras's
/// `image_dataset_from_directory` does), so `cats` = 0 and `dogs` = 1.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetManifest {
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
    pub rejected: Vec<Rejected>,
    /// True when the dataset brought its own validation split.
    pub has_validation: bool,
}

impl DatasetManifest {
    pub fn count(&self, class: usize, split: Split) -> usize {
        self.samples.iter().filter(|s| s.class == class && s.split == split).count()
    }

    pub fn resolve(&self, root: &Path, s: &Sample) -> PathBuf {
        root.join(&s.path)
    }
}
