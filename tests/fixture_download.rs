//! The download path of scripts/fetch-test-fixtures.py, against a local HTTP
//! mirror (this is how a fresh machine gets the Xception weights and the cats &
//! dogs photos): verified downloads land, a second run downloads nothing,
//! tampered bytes and an unreachable server fail loudly and leave nothing behind.
//! Needs `TUNESERVE_FIXTURES` (the files the mirror serves) and python3.

mod fixtures;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use bytes::Bytes;
use sha2::{Digest, Sha256};

const XCEPTION: &str = "weights/xception_weights_tf_dim_ordering_tf_kernels_notop.h5";
const DATASET: &str = "datasets/cats_and_dogs_filtered.zip";

#[derive(Clone, Default)]
struct Mirror {
    files: Arc<HashMap<String, Bytes>>,
    hits: Arc<Mutex<Vec<String>>>,
}

async fn serve_file(State(m): State<Mirror>, req: Request) -> Result<Bytes, StatusCode> {
    let path = req.uri().path().to_owned();
    m.hits.lock().expect("hits").push(path.clone());
    m.files.get(&path).cloned().ok_or(StatusCode::NOT_FOUND)
}

/// Serves `files` on a loopback port; returns its base URL.
async fn start(mirror: Mirror) -> String {
    let app = axum::Router::new().fallback(serve_file).with_state(mirror);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// The photos of the shared archive packed differently (deflated, with
/// directory entries and an extra non-photo file): the script's digest covers
/// the photos, not the packing. `flip` changes one byte of one photo.
fn repack_dataset(flip: bool) -> Bytes {
    let mut src =
        zip::ZipArchive::new(std::fs::File::open(fixtures::fixture(DATASET)).expect("open"))
            .expect("zip");
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let deflated = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    out.add_directory("cats_and_dogs_filtered/", deflated)
        .expect("dir");
    out.start_file("cats_and_dogs_filtered/vectorize.py", deflated)
        .expect("extra");
    out.write_all(b"# not a photo\n").expect("write");
    let flipped = src.len() / 2;
    for i in 0..src.len() {
        let mut entry = src.by_index(i).expect("entry");
        let name = entry.name().to_owned();
        let mut body = Vec::new();
        entry.read_to_end(&mut body).expect("read");
        if flip && i == flipped {
            let mid = body.len() / 2;
            body[mid] ^= 0x01;
        }
        out.start_file(name, deflated).expect("start");
        out.write_all(&body).expect("write");
    }
    Bytes::from(out.finish().expect("finish").into_inner())
}

fn mirror() -> Mirror {
    let h5 = std::fs::read(fixtures::fixture(XCEPTION)).expect("read h5");
    let mut tampered = h5.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x01;
    let files = HashMap::from([
        ("/good/xception.h5".to_owned(), Bytes::from(h5)),
        ("/good/cats.zip".to_owned(), repack_dataset(false)),
        ("/bad/xception.h5".to_owned(), Bytes::from(tampered)),
        ("/bad/cats.zip".to_owned(), repack_dataset(true)),
    ]);
    Mirror {
        files: Arc::new(files),
        hits: Arc::default(),
    }
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs the script's download step into `cache` with the given mirror URLs.
async fn fetch(cache: &Path, xception_url: &str, dataset_url: &str) -> Run {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-test-fixtures.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .args(["--downloads-only", "--dataset"])
        .env_remove("TUNESERVE_FIXTURES")
        .env("TUNESERVE_TEST_CACHE", cache)
        .env("TUNESERVE_XCEPTION_URL", xception_url)
        .env("TUNESERVE_DATASET_URL", dataset_url);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("python3 runs"))
        .await
        .expect("join");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).expect("read")))
}

/// Every file under `dir`, relative, sorted.
fn listing(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten() {
            let p: PathBuf = e.expect("entry").path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(
                    p.strip_prefix(root)
                        .expect("under root")
                        .display()
                        .to_string(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_verify_and_are_not_repeated() {
    let m = mirror();
    let base = start(m.clone()).await;
    let cache = tempfile::tempdir().expect("tempdir");
    let (h5_url, zip_url) = (
        format!("{base}/good/xception.h5"),
        format!("{base}/good/cats.zip"),
    );

    let run = fetch(cache.path(), &h5_url, &zip_url).await;
    assert!(run.ok, "fetch failed:\n{}", run.stderr);
    let root = cache.path().join("shared");
    assert_eq!(
        run.stdout.lines().last(),
        Some(root.to_str().expect("utf-8")),
        "prints the folder last"
    );
    assert_eq!(listing(&root), [DATASET, XCEPTION]);
    assert_eq!(
        sha256_file(&root.join(XCEPTION)),
        sha256_file(&fixtures::fixture(XCEPTION))
    );
    assert_eq!(
        std::fs::metadata(root.join(DATASET)).expect("zip").len() as usize,
        m.files["/good/cats.zip"].len()
    );
    assert_eq!(m.hits.lock().expect("hits").len(), 2);

    let again = fetch(cache.path(), &h5_url, &zip_url).await;
    assert!(again.ok, "second run failed:\n{}", again.stderr);
    assert_eq!(
        m.hits.lock().expect("hits").len(),
        2,
        "verified files are not downloaded again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_downloads_fail_and_leave_nothing() {
    let base = start(mirror()).await;

    let cache = tempfile::tempdir().expect("tempdir");
    let bad_h5 = format!("{base}/bad/xception.h5");
    let run = fetch(cache.path(), &bad_h5, &format!("{base}/good/cats.zip")).await;
    assert!(!run.ok, "a tampered .h5 must fail");
    assert!(
        run.stderr.contains("checksum mismatch") && run.stderr.contains(&bad_h5),
        "{}",
        run.stderr
    );
    assert_eq!(
        listing(cache.path()),
        Vec::<String>::new(),
        "no partial or unverified file left"
    );

    let cache = tempfile::tempdir().expect("tempdir");
    let bad_zip = format!("{base}/bad/cats.zip");
    let run = fetch(cache.path(), &format!("{base}/good/xception.h5"), &bad_zip).await;
    assert!(!run.ok, "a changed photo must fail");
    assert!(
        run.stderr.contains("checksum mismatch")
            && run.stderr.contains("3000 photos")
            && run.stderr.contains(&bad_zip),
        "{}",
        run.stderr
    );
    assert_eq!(
        listing(&cache.path().join("shared")),
        [XCEPTION],
        "only the verified .h5 stays"
    );

    let cache = tempfile::tempdir().expect("tempdir");
    let missing = format!("{base}/missing/xception.h5");
    let run = fetch(cache.path(), &missing, &format!("{base}/good/cats.zip")).await;
    assert!(
        !run.ok && run.stderr.contains("HTTP Error 404") && run.stderr.contains(&missing),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_fails_fast() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("http://127.0.0.1:{port}/xception.h5"); // closed again: refused
    let cache = tempfile::tempdir().expect("tempdir");
    let t = std::time::Instant::now();
    let run = fetch(cache.path(), &url, &url).await;
    assert!(
        !run.ok && run.stderr.contains("download failed") && run.stderr.contains(&url),
        "{}",
        run.stderr
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(30),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(listing(cache.path()), Vec::<String>::new());
}
