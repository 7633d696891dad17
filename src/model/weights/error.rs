use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{}: not a weights file ({found}); expected a Keras .h5 / .weights.h5, a .keras archive \
         or a tuneserve .safetensors file",
        path.display()
    )]
    UnknownFormat { path: PathBuf, found: String },

    #[error("{}: corrupt or truncated {format} file: {detail}", path.display())]
    Corrupt {
        path: PathBuf,
        format: &'static str,
        detail: String,
    },

    /// The file parses but is not laid out like a Keras model we know.
    #[error("{}: {detail}", path.display())]
    Layout { path: PathBuf, detail: String },

    #[error("{}: tensor `{name}`: {detail}", path.display())]
    Tensor {
        path: PathBuf,
        name: String,
        detail: String,
    },

    #[error(
        "{origin}: weights do not match the expected architecture ({} problem(s)):\n  {}",
        problems.len(),
        problems.join("\n  ")
    )]
    Mismatch {
        origin: String,
        problems: Vec<String>,
    },

    #[error("download of {url} failed: {detail}\n{hint}")]
    Download {
        url: String,
        detail: String,
        hint: String,
    },

    #[error(
        "checksum mismatch for {url}: expected {algo} {expected}, got {found} \
         (corrupted download, proxy page, or a different file)\n{hint}"
    )]
    Checksum {
        url: String,
        algo: &'static str,
        expected: String,
        found: String,
        hint: String,
    },

    #[error("`{value}` is not a checksum: give a sha256 (64 hex digits) or md5 (32 hex digits)")]
    InvalidHash { value: String },
}

impl WeightsError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        WeightsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn layout(path: &Path, detail: impl Into<String>) -> Self {
        WeightsError::Layout {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }

    pub(crate) fn h5(path: &Path, what: &str, e: hdf5_pure::Error) -> Self {
        WeightsError::Corrupt {
            path: path.to_path_buf(),
            format: "HDF5",
            detail: format!("{what}: {e}"),
        }
    }
}
