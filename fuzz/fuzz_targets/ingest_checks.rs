//! What every ingest target checks after one run.

use std::path::Path;

use tuneserve::data::image::DecodeLimits;
use tuneserve::data::ingest::{IngestError, IngestLimits};

/// Small bounds so one input stays fast; the logic is the service's.
pub fn limits() -> IngestLimits {
    IngestLimits {
        max_entries: 64,
        max_uncompressed_bytes: 4 << 20,
        max_file_bytes: 1 << 20,
        image: DecodeLimits { max_pixels: 1 << 20, max_dimension: 4096 },
    }
}

/// The oracle: an archive never makes ingest fail with an I/O error (the disk
/// is fine, so that would be a 500 for the uploader's mistake), and whatever
/// was written stays inside `dest` as plain files and folders.
pub fn check(root: &Path, dest: &Path, result: &Result<tuneserve::data::dataset::DatasetManifest, IngestError>) {
    if let Err(IngestError::Io(e)) = result {
        panic!("archive input produced an I/O error: {e}");
    }
    for entry in std::fs::read_dir(root).expect("read root") {
        let entry = entry.expect("entry");
        assert_eq!(entry.path(), dest, "something was written outside the destination");
    }
    walk(dest, &mut |p| {
        let meta = std::fs::symlink_metadata(p).expect("metadata");
        assert!(meta.is_file() || meta.is_dir(), "{p:?} is neither a file nor a folder");
    });
    if let Ok(m) = result {
        for s in &m.samples {
            let p = m.resolve(dest, s);
            assert!(p.starts_with(dest) && p.is_file(), "sample {p:?} is not an extracted file");
            assert!(s.class < m.classes.len(), "sample class out of range");
        }
    }
}

fn walk(dir: &Path, f: &mut impl FnMut(&Path)) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let p = entry.expect("entry").path();
        f(&p);
        if std::fs::symlink_metadata(&p).expect("metadata").is_dir() {
            walk(&p, f);
        }
    }
}
