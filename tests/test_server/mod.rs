//! Shared helpers of the HTTP tests: start a real server on 127.0.0.1:0
//! (SQLite in a temp dir, or a fresh database on the test PostgreSQL), make
//! tiny synthetic datasets, read SSE streams.
#![allow(dead_code)]

use std::io::{Cursor, Write};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tuneserve::config::ServeConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    pub dir: TempDir,
    pub database_url: String,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), tuneserve::api::ServeError>>>,
}

/// The URL of a fresh, empty PostgreSQL database. Fails (never skips) when
/// TUNESERVE_TEST_POSTGRES_URL is not set.
pub async fn fresh_postgres() -> String {
    let url = std::env::var("TUNESERVE_TEST_POSTGRES_URL").expect(
        "TUNESERVE_TEST_POSTGRES_URL is not set: start PostgreSQL with scripts/start-postgres.sh and export the URL \
         it prints (.ci/run does this); the PostgreSQL tests do not skip",
    );
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect to TUNESERVE_TEST_POSTGRES_URL");
    let name = format!("tuneserve_t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create test database");
    let base = url.rsplit_once('/').map(|(b, _)| b).expect("URL has a database path");
    format!("{base}/{name}")
}

pub async fn database_url(db: Db, dir: &std::path::Path) -> String {
    match db {
        Db::Sqlite => format!("sqlite://{}?mode=rwc", dir.join("tuneserve.db").display()),
        Db::Postgres => fresh_postgres().await,
    }
}

pub fn test_config(dir: &std::path::Path, database_url: &str) -> ServeConfig {
    let mut cfg = ServeConfig::for_data_dir(dir);
    cfg.database_url = Some(database_url.to_string());
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    cfg.progress_every = 1;
    cfg.shutdown_grace_secs = 60;
    cfg
}

impl TestServer {
    pub async fn start(db: Db) -> Self {
        Self::start_with(db, |_| {}).await
    }

    pub async fn start_with(db: Db, tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = database_url(db, dir.path()).await;
        let mut cfg = test_config(dir.path(), &url);
        tweak(&mut cfg);
        Self::start_on(dir, url, cfg).await
    }

    /// Starts on an existing data dir and database (a restart).
    pub async fn start_on(dir: TempDir, database_url: String, cfg: ServeConfig) -> Self {
        // Server logs only on request: they would drown the test report.
        if std::env::var_os("TUNESERVE_TEST_LOG").is_some() {
            tuneserve::cli::logging::init(tuneserve::cli::logging::LogFormat::Text);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(tuneserve::api::serve_with(cfg, listener, stop.clone()));
        let s = Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap(),
            dir,
            database_url,
            stop,
            task: Some(task),
        };
        s.wait_healthy().await;
        s
    }

    pub async fn wait_healthy(&self) {
        for _ in 0..100 {
            if let Ok(r) = self.client.get(self.url("/health")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server did not become healthy");
    }

    /// Graceful shutdown; returns the data dir for a restart.
    pub async fn stop(mut self) -> (TempDir, String) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
        let url = self.database_url.clone();
        (std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()), url)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        json_of(r).await
    }

    pub async fn post_json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        json_of(self.client.post(self.url(path)).json(&body).send().await.unwrap()).await
    }

    pub async fn post_bytes(&self, path: &str, content_type: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
        let r = self.client.post(self.url(path)).header("content-type", content_type).body(bytes).send().await.unwrap();
        json_of(r).await
    }

    pub async fn upload_zip(&self, zip: Vec<u8>) -> (StatusCode, Value) {
        let part = reqwest::multipart::Part::bytes(zip).file_name("data.zip").mime_str("application/zip").unwrap();
        let form = reqwest::multipart::Form::new().part("file", part).text("name", "synthetic");
        json_of(self.client.post(self.url("/v1/datasets")).multipart(form).send().await.unwrap()).await
    }

    /// POST /v1/datasets with `zip` as the file, not yet sent (add a key, an origin, ...).
    pub fn dataset_upload(&self, zip: Vec<u8>) -> reqwest::RequestBuilder {
        dataset_upload(&self.client, &self.base, zip)
    }

    /// Uploads a good dataset and returns its id.
    pub async fn good_dataset(&self) -> String {
        let (s, v) = self.upload_zip(two_class_zip("", 12, 4)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    pub async fn create_tiny_job(&self, dataset_id: &str, frozen: usize, finetune: usize) -> String {
        let (s, v) = self.post_json("/v1/jobs", tiny_job(dataset_id, frozen, finetune)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    /// Polls until the job reaches a final status.
    pub async fn wait_job(&self, id: &str, timeout: Duration) -> Value {
        let t0 = std::time::Instant::now();
        loop {
            let (_, j) = self.get(&format!("/v1/jobs/{id}")).await;
            if matches!(j["status"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
                return j;
            }
            assert!(t0.elapsed() < timeout, "job {id} did not finish in {timeout:?}: {j}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server answers and earlier data is intact.
    pub async fn assert_alive(&self, dataset_id: Option<&str>) {
        let (s, v) = self.get("/health").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if let Some(id) = dataset_id {
            let (s, v) = self.get(&format!("/v1/datasets/{id}")).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            assert_eq!(v["classes"], json!(["bright", "dark"]));
        }
    }
}

impl Drop for TestServer {
    /// Stops the workers before the test's runtime goes away.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn tiny_job(dataset_id: &str, frozen: usize, finetune: usize) -> Value {
    json!({
        "dataset_id": dataset_id,
        "variant": "tiny",
        "hyperparameters": {
            "image_size": 71, "batch_size": 8, "frozen_epochs": frozen, "finetune_epochs": finetune,
            "finetune_lr": 1e-4, "patience": 0
        }
    })
}

/// POST `base`/v1/datasets with `zip` as the file, not yet sent.
pub fn dataset_upload(c: &reqwest::Client, base: &str, zip: Vec<u8>) -> reqwest::RequestBuilder {
    let part = reqwest::multipart::Part::bytes(zip).file_name("d.zip");
    c.post(format!("{base}/v1/datasets")).multipart(reqwest::multipart::Form::new().part("file", part))
}

pub async fn json_of(r: reqwest::Response) -> (StatusCode, Value) {
    let s = r.status();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (s, v)
}

/// Asserts the error shape and code.
pub fn assert_error(got: &(StatusCode, Value), status: u16, code: &str) {
    let (s, v) = got;
    assert_eq!(s.as_u16(), status, "unexpected status, body {v}");
    assert_eq!(v["error"]["code"], code, "unexpected code in {v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "no message in {v}");
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "extra keys in {v}");
}

/// A 40x40 image: bright or dark, with some texture so it is not constant.
pub fn image_bytes(bright: bool, seed: u32, jpeg: bool) -> Vec<u8> {
    let img = image::RgbImage::from_fn(40, 40, |x, y| {
        let base: i32 = if bright { 200 } else { 40 };
        let v = (base + ((x * 7 + y * 13 + seed * 31) % 40) as i32 - 20).clamp(0, 255) as u8;
        image::Rgb([v, v.saturating_add(5), v])
    });
    let mut out = Cursor::new(Vec::new());
    let fmt = if jpeg { image::ImageFormat::Jpeg } else { image::ImageFormat::Png };
    img.write_to(&mut out, fmt).unwrap();
    out.into_inner()
}

/// (path, bytes) entries into a zip (deflated).
pub fn zip_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        w.start_file(name.as_str(), opts).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Entries of a two-class dataset (`bright`, `dark`) with train/ and validation/.
pub fn two_class_entries(prefix: &str, train: u32, val: u32) -> Vec<(String, Vec<u8>)> {
    let mut e = Vec::new();
    for (split, n) in [("train", train), ("validation", val)] {
        for i in 0..n {
            e.push((format!("{prefix}{split}/bright/b{i}.png"), image_bytes(true, i, false)));
            e.push((format!("{prefix}{split}/dark/d{i}.jpg"), image_bytes(false, i, true)));
        }
    }
    e
}

pub fn two_class_zip(prefix: &str, train: u32, val: u32) -> Vec<u8> {
    zip_of(&two_class_entries(prefix, train, val))
}

/// A PNG whose header declares `w` x `h` pixels (the data is a stub).
pub fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let chunk = |out: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A JPEG cut in half.
pub fn truncated_jpeg() -> Vec<u8> {
    let j = image_bytes(true, 1, true);
    j[..j.len() / 2].to_vec()
}

/// Reads an SSE stream until the job's final status event (or the timeout);
/// returns (event type, data) pairs.
pub async fn read_sse(client: &reqwest::Client, url: &str, timeout: Duration) -> Vec<(String, Value)> {
    use futures::StreamExt;
    let resp = client.get(url).header("accept", "text/event-stream").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp.headers().get("content-type").unwrap().to_str().unwrap().to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut events = Vec::new();
    let read = async {
        while let Some(chunk) = stream.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(i) = buf.find("\n\n") {
                let block: String = buf.drain(..i + 2).collect();
                let mut kind = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty() {
                    events.push((kind, serde_json::from_str(&data).unwrap_or(Value::String(data))));
                }
            }
        }
    };
    let _ = tokio::time::timeout(timeout, read).await;
    events
}

/// A free TCP port on loopback (for servers started as separate processes).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed if the test fails midway, so none outlives it.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
