//! Well-formed zip / tar / tar.gz archives with fuzzer-chosen entries: names
//! (`..`, absolute, backslashes, clashes, long names), kinds (file, folder,
//! symlink, hard link) and contents (random bytes or a small real image), so
//! the fuzzer reaches the path checks and the class scan, not just the parsers.
#![no_main]

use std::io::{Cursor, Write};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tuneserve::data::ingest::{self, IngestError};

#[path = "ingest_checks.rs"]
mod ingest_checks;

#[derive(Arbitrary, Debug)]
enum Format {
    Zip,
    Tar,
    TarGz,
}

#[derive(Arbitrary, Debug)]
enum Kind {
    File(Content),
    Dir,
    Symlink(String),
    HardLink(String),
}

#[derive(Arbitrary, Debug)]
enum Content {
    Bytes(Vec<u8>),
    /// A real image of this size (1..=64 per side) and colour.
    Png(u8, u8, [u8; 3]),
    Jpeg(u8, u8, [u8; 3]),
}

#[derive(Arbitrary, Debug)]
struct Entry {
    /// Path segments joined with '/'; segments may themselves be "..", "" or
    /// hold separators.
    segments: Vec<String>,
    kind: Kind,
}

#[derive(Arbitrary, Debug)]
struct Input {
    format: Format,
    entries: Vec<Entry>,
}

fn content_bytes(c: &Content) -> Vec<u8> {
    let encode = |w: u8, h: u8, rgb: [u8; 3], fmt: image::ImageFormat| {
        let img = image::RgbImage::from_pixel(u32::from(w % 64) + 1, u32::from(h % 64) + 1, image::Rgb(rgb));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, fmt).expect("encode");
        out.into_inner()
    };
    match c {
        Content::Bytes(b) => b.clone(),
        Content::Png(w, h, rgb) => encode(*w, *h, *rgb, image::ImageFormat::Png),
        Content::Jpeg(w, h, rgb) => encode(*w, *h, *rgb, image::ImageFormat::Jpeg),
    }
}

fn build_zip(entries: &[Entry]) -> Option<Vec<u8>> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    for e in entries {
        let name = e.segments.join("/");
        match &e.kind {
            Kind::File(c) => {
                zip.start_file(name, opts).ok()?;
                zip.write_all(&content_bytes(c)).ok()?;
            }
            Kind::Dir => zip.add_directory(name, opts).ok()?,
            Kind::Symlink(t) | Kind::HardLink(t) => zip.add_symlink(name, t, opts).ok()?,
        }
    }
    Some(zip.finish().ok()?.into_inner())
}

fn build_tar(entries: &[Entry]) -> Option<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for e in entries {
        let name = e.segments.join("/");
        let mut h = tar::Header::new_gnu();
        // set_path refuses ".." and absolute names; write the raw bytes so the
        // archive says exactly what a hostile one would.
        let raw = name.as_bytes();
        // A NUL ends the name in a tar header, hiding what follows it.
        if raw.contains(&0) {
            return None;
        }
        let field = &mut h.as_old_mut().name;
        if raw.len() > field.len() {
            return None;
        }
        field[..raw.len()].copy_from_slice(raw);
        h.set_mode(0o644);
        match &e.kind {
            Kind::File(c) => {
                let data = content_bytes(c);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                h.set_cksum();
                tar.append(&h, data.as_slice()).ok()?;
            }
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_cksum();
                tar.append(&h, std::io::empty()).ok()?;
            }
            Kind::Symlink(t) | Kind::HardLink(t) => {
                let ty = if matches!(e.kind, Kind::Symlink(_)) { tar::EntryType::Symlink } else { tar::EntryType::Link };
                h.set_entry_type(ty);
                h.set_size(0);
                let lt = t.as_bytes();
                let field = &mut h.as_old_mut().linkname;
                if lt.len() > field.len() {
                    return None;
                }
                field[..lt.len()].copy_from_slice(lt);
                h.set_cksum();
                tar.append(&h, std::io::empty()).ok()?;
            }
        }
    }
    tar.into_inner().ok()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("gzip");
    gz.finish().expect("gzip")
}

fn escapes(seg: &str) -> bool {
    seg.split(['/', '\\']).any(|p| p == "..")
}

fuzz_target!(|input: Input| {
    let bytes = match input.format {
        Format::Zip => build_zip(&input.entries),
        Format::Tar => build_tar(&input.entries),
        Format::TarGz => build_tar(&input.entries).map(|t| gzip(&t)),
    };
    let Some(bytes) = bytes else { return };
    let root = tempfile::tempdir().expect("tempdir");
    let upload = root.path().join("upload");
    std::fs::write(&upload, &bytes).expect("write upload");
    let dest = root.path().join("dataset");
    std::fs::create_dir(&dest).expect("dest");
    let result = ingest::ingest(&upload, &dest, &ingest_checks::limits(), &Default::default());
    std::fs::remove_file(&upload).expect("remove upload");
    ingest_checks::check(root.path(), &dest, &result);
    // Any entry that tries to climb out, or any link, refuses the whole archive
    // (when the archive is otherwise readable and within limits).
    let limited = matches!(result, Err(IngestError::TooManyEntries(_) | IngestError::TooLarge(_)));
    let within = input.entries.len() as u64 <= ingest_checks::limits().max_entries;
    if within && !limited {
        let first_bad = input.entries.iter().any(|e| e.segments.iter().any(|s| escapes(s)) || matches!(e.kind, Kind::Symlink(_) | Kind::HardLink(_)));
        if first_bad {
            assert!(result.is_err(), "an archive with an escaping name or a link was accepted: {input:?}");
        }
    }
});
