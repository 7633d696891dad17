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

/// How many usable images a class has in each split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClassCount {
    pub class: String,
    pub train: usize,
    pub validation: usize,
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
    /// Usable images per class and split, in class order.
    pub fn class_counts(&self) -> Vec<ClassCount> {
        let count = |c, split| self.samples.iter().filter(|s| s.class == c && s.split == split).count();
        let counts = |(c, class): (usize, &String)| ClassCount {
            class: class.clone(),
            train: count(c, Split::Train),
            validation: count(c, Split::Validation),
        };
        self.classes.iter().enumerate().map(counts).collect()
    }

    pub fn resolve(&self, root: &Path, s: &Sample) -> PathBuf {
        root.join(&s.path)
    }
}

/// Folder names that mean "validation split".
const VALIDATION_DIRS: [&str; 3] = ["validation", "val", "valid"];

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("dataset folder {0} has no class folders")]
    NoClasses(String),
    #[error("need at least 2 classes, found {0}: {1:?}")]
    OneClass(usize, Vec<String>),
    #[error("class {0:?} has no files")]
    EmptyClass(String),
    #[error("train/ and validation/ have different classes: {0:?} vs {1:?}")]
    SplitMismatch(Vec<String>, Vec<String>),
    #[error("i/o error reading the dataset: {0}")]
    Io(#[from] std::io::Error),
}

fn subdirs(p: &Path) -> Result<Vec<String>, ScanError> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(p)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if e.file_type()?.is_dir() && !name.starts_with('.') && name != "__MACOSX" {
            v.push(name);
        }
    }
    v.sort();
    Ok(v)
}

fn files(p: &Path) -> Result<Vec<String>, ScanError> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(p)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if e.file_type()?.is_file() && !name.starts_with('.') {
            v.push(name);
        }
    }
    v.sort();
    Ok(v)
}

impl DatasetManifest {
    /// Scans a class-per-folder dataset: `train/` + `validation/` (each with
    /// class folders), or class folders directly, optionally inside one
    /// top-level folder. Files are listed, not decoded: unreadable images are
    /// rejected when loaded. Refuses fewer than 2 classes or an empty class.
    pub fn scan(root: &Path) -> Result<Self, ScanError> {
        let mut base = PathBuf::new();
        let mut dirs = subdirs(root)?;
        if dirs.len() == 1 && files(root)?.is_empty() {
            base = PathBuf::from(&dirs[0]);
            dirs = subdirs(&root.join(&base))?;
        }
        let train_dir = dirs.iter().find(|d| d.as_str() == "train").cloned();
        let val_dir = dirs.iter().find(|d| VALIDATION_DIRS.contains(&d.as_str())).cloned();
        let mut m = DatasetManifest::default();
        let splits: Vec<(PathBuf, Split)> = match &train_dir {
            Some(t) => {
                let mut v = vec![(base.join(t), Split::Train)];
                if let Some(vd) = &val_dir {
                    v.push((base.join(vd), Split::Validation));
                    m.has_validation = true;
                }
                v
            }
            None => vec![(base.clone(), Split::Train)],
        };
        let classes = subdirs(&root.join(&splits[0].0))?;
        if classes.is_empty() {
            return Err(ScanError::NoClasses(root.join(&splits[0].0).display().to_string()));
        }
        if classes.len() < 2 {
            return Err(ScanError::OneClass(classes.len(), classes));
        }
        for (dir, split) in &splits {
            let here = subdirs(&root.join(dir))?;
            if here != classes {
                return Err(ScanError::SplitMismatch(classes.clone(), here));
            }
            for (ci, c) in classes.iter().enumerate() {
                let fs = files(&root.join(dir).join(c))?;
                if fs.is_empty() && *split == Split::Train {
                    return Err(ScanError::EmptyClass(c.clone()));
                }
                m.samples.extend(fs.into_iter().map(|f| Sample { path: dir.join(c).join(f), class: ci, split: *split }));
            }
        }
        m.classes = classes;
        Ok(m)
    }
}
