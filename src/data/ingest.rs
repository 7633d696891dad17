//! Safe extraction of an uploaded dataset archive (zip, tar, tar.gz) and the
//! scan of its class folders into a [`DatasetManifest`].
//!
//! The archive is hostile until proven otherwise: entry names are checked
//! component by component (no absolute paths, no `..`: zip-slip), links and
//! special files refuse the whole archive, the entry count and the bytes
//! actually written are bounded (zip bombs lie about sizes, so the declared
//! size is never trusted), and every image is decoded under header-checked
//! dimension limits. Files that are not usable images are deleted and
//! reported, not fatal. The class folders are then read by
//! [`DatasetManifest::scan`].

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::dataset::{DatasetManifest, Rejected, ScanError};
use super::image::{self, DecodeLimits};

/// Bounds on what one archive may contain.
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    pub max_entries: u64,
    /// Total bytes of all extracted entries.
    pub max_uncompressed_bytes: u64,
    /// One file; larger ones are skipped unread.
    pub max_file_bytes: u64,
    pub image: DecodeLimits,
}

/// Bounds for archives from a trusted hand (the CLI); the service takes its
/// own from its configuration.
impl Default for IngestLimits {
    fn default() -> Self {
        Self { max_entries: 200_000, max_uncompressed_bytes: 8 << 30, max_file_bytes: 64 << 20, image: DecodeLimits::default() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the upload is not a zip, tar or tar.gz archive ({0})")]
    NotAnArchive(String),
    #[error("unsafe entry path {0:?}: absolute paths and '..' are refused")]
    UnsafePath(String),
    #[error("entry {0:?} is a link or special file; archives may only hold regular files and folders")]
    Link(String),
    #[error("the archive has more than {0} entries")]
    TooManyEntries(u64),
    #[error("the archive expands to more than {0} bytes")]
    TooLarge(u64),
    #[error("entry {0:?} is larger than the limit of {1} bytes per file")]
    EntryTooLarge(String, u64),
    #[error("the upload was abandoned")]
    Cancelled,
    #[error("the archive is damaged: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Layout(String),
    #[error("i/o error while extracting: {0}")]
    Io(#[from] io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    Zip,
    Tar,
    TarGz,
}

/// Identifies the archive by its first bytes (never by name or content type).
pub fn sniff(path: &Path) -> Result<ArchiveKind, IngestError> {
    let mut head = [0u8; 512];
    let mut f = fs::File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        let r = f.read(&mut head[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Ok(ArchiveKind::Zip)
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Ok(ArchiveKind::TarGz)
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Ok(ArchiveKind::Tar)
    } else {
        let what = match image::sniff(head) {
            Ok(f) => format!("it looks like a single {f:?} image"),
            Err(e) => e.to_string(),
        };
        Err(IngestError::NotAnArchive(what))
    }
}

/// Extracts `archive` into `dest` (which must exist and be empty), validates
/// every image, and scans the result. Setting `cancel` stops the work at the
/// next entry or image (the caller removes what was written).
pub fn ingest(
    archive: &Path,
    dest: &Path,
    limits: &IngestLimits,
    cancel: &AtomicBool,
) -> Result<DatasetManifest, IngestError> {
    let mut rejected = Vec::new();
    let mut x = Extraction { dest, limits, cancel, rejected: &mut rejected, written: 0 };
    let files = match sniff(archive)? {
        ArchiveKind::Zip => extract_zip(archive, &mut x)?,
        ArchiveKind::Tar => extract_tar(fs::File::open(archive)?, &mut x)?,
        ArchiveKind::TarGz => {
            // The tar stream's headers and padding add at most ~1 KiB per entry.
            let cap = limits.max_uncompressed_bytes + limits.max_entries * 1024 + (1 << 20);
            let gz = flate2::read::GzDecoder::new(io::BufReader::new(fs::File::open(archive)?));
            extract_tar(CappedReader { inner: gz, left: cap, limit: limits.max_uncompressed_bytes }, &mut x)?
        }
    };
    let invalid = validate_images(dest, &files, limits, cancel);
    if cancel.load(Ordering::Relaxed) {
        return Err(IngestError::Cancelled);
    }
    rejected.extend(invalid);
    scan(dest, rejected)
}

/// One archive's extraction under way: where it goes, what it may use, what
/// it has written so far and which entries it skipped.
struct Extraction<'a> {
    dest: &'a Path,
    limits: &'a IngestLimits,
    cancel: &'a AtomicBool,
    rejected: &'a mut Vec<Rejected>,
    /// Bytes of all entries so far: every decompressed byte counts.
    written: u64,
}

/// A relative path made only of normal components, or None.
fn safe_relative(name: &str) -> Option<PathBuf> {
    if name.contains('\0') || name.starts_with('/') || name.starts_with('\\') {
        return None;
    }
    let mut out = PathBuf::new();
    // Backslashes are separators too: a Windows-made zip may use them, and
    // `..\` must not slip through as one odd file name.
    for part in name.split(['/', '\\']) {
        match part {
            "" | "." => continue,
            ".." => return None,
            p if p.contains(':') => return None,
            p => out.push(p),
        }
    }
    if out.components().all(|c| matches!(c, Component::Normal(_))) && out.components().next().is_some() {
        Some(out)
    } else {
        None
    }
}

/// macOS resource forks, .DS_Store, editor backups: never data.
fn is_hidden(rel: &Path) -> bool {
    rel.components().any(|c| {
        let s = c.as_os_str().to_string_lossy();
        s.starts_with('.') || s == "__MACOSX" || s == "Thumbs.db"
    })
}

fn display(rel: &Path) -> String {
    rel.to_string_lossy().replace('\\', "/")
}

impl Extraction<'_> {
    /// Writes one entry's bytes under `dest`, counting them against the
    /// budget. Returns false (and records why) when the entry was skipped; an
    /// entry over the per-file cap refuses the whole archive, so that no
    /// archive can make the server decompress more than its budget.
    fn write_entry(&mut self, rel: &Path, mut data: impl Read) -> Result<bool, IngestError> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(IngestError::Cancelled);
        }
        let limits = self.limits;
        let target = self.dest.join(rel);
        if let Some(parent) = target.parent() {
            if let Err(e) = fs::create_dir_all(parent) {
                let reason = match e.kind() {
                    io::ErrorKind::InvalidFilename => "a folder name is too long",
                    _ => "its folder clashes with a file of the same name",
                };
                self.rejected.push(Rejected { path: display(rel), reason: reason.into() });
                return Ok(false);
            }
        }
        let mut out = match fs::OpenOptions::new().write(true).create_new(true).open(&target) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.rejected.push(Rejected { path: display(rel), reason: "duplicate entry".into() });
                return Ok(false);
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidFilename => {
                self.rejected.push(Rejected { path: display(rel), reason: "file name too long".into() });
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        // Read at most one byte past what is allowed, to tell "exactly at the
        // limit" from "over it" without trusting any declared size.
        let budget = (limits.max_uncompressed_bytes - self.written).min(limits.max_file_bytes) + 1;
        let n = io::copy(&mut (&mut data).take(budget), &mut out).map_err(|e| corrupt_or_io(e, limits))?;
        self.written += n;
        if self.written > limits.max_uncompressed_bytes {
            return Err(IngestError::TooLarge(limits.max_uncompressed_bytes));
        }
        if n > limits.max_file_bytes {
            return Err(IngestError::EntryTooLarge(display(rel), limits.max_file_bytes));
        }
        out.flush()?;
        Ok(true)
    }

    fn skip_hidden(&mut self, rel: &Path) -> bool {
        let hidden = is_hidden(rel);
        if hidden {
            self.rejected.push(Rejected { path: display(rel), reason: "hidden or system file".into() });
        }
        hidden
    }
}

/// Errors while reading the archive are the archive's fault, not the
/// server's: only an error the operating system reported is an I/O failure.
/// The archive readers' own errors carry no OS code, whatever their kind (tar
/// reports a bad header checksum as `ErrorKind::Other`, found by fuzzing).
fn corrupt_or_io(e: io::Error, limits: &IngestLimits) -> IngestError {
    if e.kind() == io::ErrorKind::FileTooLarge {
        IngestError::TooLarge(limits.max_uncompressed_bytes)
    } else if e.raw_os_error().is_some() {
        IngestError::Io(e)
    } else {
        IngestError::Corrupt(e.to_string())
    }
}

fn extract_zip(archive: &Path, x: &mut Extraction) -> Result<Vec<PathBuf>, IngestError> {
    let limits = x.limits;
    let mut zip = zip::ZipArchive::new(io::BufReader::new(fs::File::open(archive)?))
        .map_err(|e| IngestError::Corrupt(e.to_string()))?;
    if zip.len() as u64 > limits.max_entries {
        return Err(IngestError::TooManyEntries(limits.max_entries));
    }
    let mut files = Vec::new();
    for i in 0..zip.len() {
        let entry = zip.by_index(i).map_err(|e| match e {
            zip::result::ZipError::Io(e) => corrupt_or_io(e, limits),
            e => IngestError::Corrupt(e.to_string()),
        })?;
        let name = String::from_utf8_lossy(entry.name_raw()).into_owned();
        let rel = safe_relative(&name).ok_or_else(|| IngestError::UnsafePath(name.clone()))?;
        if entry.is_symlink() {
            return Err(IngestError::Link(name));
        }
        if entry.is_dir() || x.skip_hidden(&rel) {
            continue;
        }
        if x.write_entry(&rel, entry)? {
            files.push(rel);
        }
    }
    Ok(files)
}

fn extract_tar(reader: impl Read, x: &mut Extraction) -> Result<Vec<PathBuf>, IngestError> {
    use tar::EntryType;
    let limits = x.limits;
    let mut tar = tar::Archive::new(reader);
    let mut files = Vec::new();
    let mut count = 0u64;
    for entry in tar.entries().map_err(|e| corrupt_or_io(e, limits))? {
        let entry = entry.map_err(|e| corrupt_or_io(e, limits))?;
        count += 1;
        if count > limits.max_entries {
            return Err(IngestError::TooManyEntries(limits.max_entries));
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let rel = safe_relative(&name).ok_or_else(|| IngestError::UnsafePath(name.clone()))?;
        match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous => {}
            EntryType::Directory => continue,
            // Metadata records (PAX, GNU long names) carry no file.
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink => continue,
            _ => return Err(IngestError::Link(name)),
        }
        if x.skip_hidden(&rel) {
            continue;
        }
        if x.write_entry(&rel, entry)? {
            files.push(rel);
        }
    }
    Ok(files)
}

/// Stops a decompressor once it has produced more than `left` bytes.
struct CappedReader<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("archive expands to more than {} bytes", self.limit),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Decodes every extracted file; those that are not usable images are
/// deleted and returned as rejections.
fn validate_images(dest: &Path, files: &[PathBuf], limits: &IngestLimits, cancel: &AtomicBool) -> Vec<Rejected> {
    files
        .par_iter()
        .filter_map(|rel| {
            if cancel.load(Ordering::Relaxed) {
                return None;
            }
            let path = dest.join(rel);
            let verdict = fs::read(&path).map_err(|e| e.to_string()).and_then(|bytes| {
                image::decode(&bytes, &limits.image).map(|_| ()).map_err(|e| e.to_string())
            });
            match verdict {
                Ok(()) => None,
                Err(reason) => {
                    let _ = fs::remove_file(&path);
                    Some(Rejected { path: display(rel), reason })
                }
            }
        })
        .collect()
}

/// Scans the extracted files with the dataset scanner; the files this
/// module left out are added to the manifest's `rejected`.
fn scan(dest: &Path, mut rejected: Vec<Rejected>) -> Result<DatasetManifest, IngestError> {
    let mut m = DatasetManifest::scan(dest).map_err(|e| match e {
        ScanError::Io(e) => IngestError::Io(e),
        e => IngestError::Layout(e.to_string()),
    })?;
    rejected.append(&mut m.rejected);
    rejected.sort_by(|a, b| a.path.cmp(&b.path));
    m.rejected = rejected;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_relative_refuses_escapes() {
        for bad in ["../x.jpg", "a/../../x", "/etc/passwd", "\\x", "a\\..\\..\\x", "C:/x", "c:x", "a/\0b"] {
            assert!(safe_relative(bad).is_none(), "{bad}");
        }
        assert_eq!(safe_relative("a/./b/c.jpg"), Some(PathBuf::from("a/b/c.jpg")));
        assert!(safe_relative("").is_none());
    }
}
