//! The fuzzers' seeds and every input a fuzzer ever crashed on, run through
//! the same checks the fuzz targets make (fuzz/fuzz_targets/ingest_checks.rs), so a
//! fixed crash stays fixed without nightly or cargo-fuzz. Crash inputs live in
//! tests/fuzz-regressions/<target>/ (docs/fuzzing.md).

use std::path::{Path, PathBuf};

use tuneserve::data::image::{self, DecodeLimits};
use tuneserve::data::ingest;

#[path = "../fuzz/fuzz_targets/ingest_checks.rs"]
mod ingest_checks;

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in [root.join("fuzz/seeds").join(target), root.join("tests/fuzz-regressions").join(target)] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            out.extend(rd.map(|e| e.expect("entry").path()));
        }
    }
    out.sort();
    out
}

fn ingest_one(path: &Path) -> Result<tuneserve::data::dataset::DatasetManifest, ingest::IngestError> {
    let root = tempfile::tempdir().expect("tempdir");
    let upload = root.path().join("upload");
    std::fs::copy(path, &upload).expect("copy input");
    let dest = root.path().join("dataset");
    std::fs::create_dir(&dest).expect("dest");
    let result = ingest::ingest(&upload, &dest, &ingest_checks::limits(), &Default::default());
    std::fs::remove_file(&upload).expect("remove upload");
    ingest_checks::check(root.path(), &dest, &result);
    result
}

#[test]
fn ingest_seeds_and_past_crashes() {
    let all = inputs("ingest");
    assert!(all.len() >= 6, "fuzz/seeds/ingest is missing (run fuzz/gen_seeds.py)");
    for path in all {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let result = ingest_one(&path);
        if !path.starts_with(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds")) {
            continue; // a past crash: the checks above are the whole test
        }
        let m = result.unwrap_or_else(|e| panic!("seed {name} was refused: {e}"));
        assert_eq!(m.classes, ["cats", "dogs"], "{name}");
        let split = name.starts_with("split");
        assert_eq!(m.has_validation, split, "{name}");
        assert_eq!(m.samples.len(), if split { 12 } else { 6 }, "{name}");
        let notes = if split { "data/train/cats/notes.txt" } else { "cats/notes.txt" };
        assert!(m.rejected.iter().any(|r| r.path == notes), "{name}: {:?}", m.rejected);
    }
}

#[test]
fn image_seeds_and_past_crashes() {
    let all = inputs("image");
    assert!(all.len() >= 10, "fuzz/seeds/image is missing (run fuzz/gen_seeds.py)");
    let limits = DecodeLimits { max_pixels: 1 << 22, max_dimension: 8192 };
    for path in all {
        let data = std::fs::read(&path).expect("read");
        let is_seed = path.starts_with(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds"));
        // The image target's input: two size bytes, then the file.
        let Some((&[w, h], bytes)) = data.split_first_chunk::<2>().map(|(a, b)| (a, b)) else { continue };
        let size = (u32::from(w % 200) + 1, u32::from(h % 200) + 1);
        match image::load_for_model(bytes, size, &limits) {
            Ok(img) => assert_eq!(img.dimensions(), size),
            Err(e) => assert!(!is_seed, "seed {path:?} did not decode: {e}"),
        }
    }
    // EXIF orientation 6 (rotate 90): the 10x6 seed decodes upright as 6x10.
    let rotated = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/image/exif-rotated.jpg")).expect("seed");
    let img = image::decode(&rotated[2..], &limits).expect("decode");
    assert_eq!(img.dimensions(), (6, 10));
}
