//! Raw bytes as an uploaded archive (zip, tar or tar.gz by magic bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tuneserve::data::ingest;

#[path = "ingest_checks.rs"]
mod ingest_checks;

fuzz_target!(|data: &[u8]| {
    let root = tempfile::tempdir().expect("tempdir");
    let upload = root.path().join("upload");
    std::fs::write(&upload, data).expect("write upload");
    let dest = root.path().join("dataset");
    std::fs::create_dir(&dest).expect("dest");
    let result = ingest::ingest(&upload, &dest, &ingest_checks::limits(), &Default::default());
    std::fs::remove_file(&upload).expect("remove upload");
    ingest_checks::check(root.path(), &dest, &result);
});
