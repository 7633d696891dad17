//! Safe to expose: what a hostile or careless client tried against the
//! service, each as a test (SQLite and PostgreSQL where the database is
//! involved): concurrent writers, keyed reads, browser origins and hosts,
//! public binds without a key, jobs too large for the machine, jobs that
//! kill their process, and uploads that try to exhaust the disk.

mod test_server;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_server::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Model rows straight into the database: switching the default touches
/// nothing else, so no training is needed to race it.
async fn insert_models(url: &str, n: usize) -> Vec<String> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(url).await.expect("connect to the test database");
    let mut ids = Vec::new();
    for i in 0..n {
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO models (id, job_id, checkpoint_id, backbone, variant, classes, image_size, \
             validation_metrics, is_default, created_at) VALUES ($1, $2, $3, 'xception', 'tiny', '[\"a\",\"b\"]', 71, \
             '{\"loss\":0.5,\"accuracy\":0.5}', $4, $5)",
        )
        .bind(&id)
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(uuid::Uuid::new_v4().to_string())
        .bind((i == 0) as i64)
        .bind(1_700_000_000_000i64 + i as i64)
        .execute(&mut c)
        .await
        .expect("insert model");
        ids.push(id);
    }
    ids
}

/// 16 clients switch the default model 25 times each: every answer is 200,
/// and exactly one model is the default afterwards.
async fn concurrent_default_switches(db: Db) {
    let srv = TestServer::start(db).await;
    let ids = insert_models(&srv.database_url, 4).await;
    let mut tasks = Vec::new();
    for client in 0..16 {
        let (c, base, ids) = (srv.client.clone(), srv.base.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..25 {
                let id = &ids[(client + i) % ids.len()];
                let r = c.post(format!("{base}/v1/models/{id}/default")).send().await.unwrap();
                let s = r.status();
                statuses.push((s, r.text().await.unwrap_or_default()));
            }
            statuses
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap().into_iter().filter(|(s, _)| *s != StatusCode::OK));
    }
    assert!(failures.is_empty(), "{} of 400 switches failed, e.g. {:?}", failures.len(), failures.first());
    let (s, list) = srv.get("/v1/models?limit=100").await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let defaults = list["data"].as_array().unwrap().iter().filter(|m| m["is_default"] == json!(true)).count();
    assert_eq!(defaults, 1, "{list}");
}

/// With a key, every /v1 route needs it (reads, live events, downloads,
/// predictions); /health, /openapi.json and the page stay open.
async fn keyed_reads_need_the_key(db: Db) {
    let key = "reads-need-this-key";
    let srv = TestServer::start_with(db, |c| c.api_key = Some(format!("other-key-1,{key}"))).await;
    let id = uuid::Uuid::new_v4();
    let routes = [
        "/v1/datasets".to_string(),
        format!("/v1/datasets/{id}"),
        "/v1/jobs".to_string(),
        format!("/v1/jobs/{id}"),
        format!("/v1/jobs/{id}/events?stream=true"),
        format!("/v1/jobs/{id}/checkpoints"),
        "/v1/models".to_string(),
        format!("/v1/checkpoints/{id}"),
        format!("/v1/checkpoints/{id}/download"),
        "/metrics".to_string(),
    ];
    for r in &routes {
        let got = json_of(srv.client.get(srv.url(r)).send().await.unwrap()).await;
        assert_error(&got, 401, "unauthorized");
        let wrong = json_of(srv.client.get(srv.url(r)).bearer_auth("guess").send().await.unwrap()).await;
        assert_error(&wrong, 401, "unauthorized");
        let s = srv.client.get(srv.url(r)).bearer_auth(key).send().await.unwrap().status();
        assert_ne!(s, StatusCode::UNAUTHORIZED, "{r} refused the right key");
    }
    let png = image_bytes(true, 0, false);
    let got = json_of(srv.client.post(srv.url("/v1/predict")).header("content-type", "image/png").body(png.clone()).send().await.unwrap()).await;
    assert_error(&got, 401, "unauthorized");
    // The other configured key works too, and the browser's EventSource can
    // pass the key as access_token on the events route.
    let s = srv.client.get(srv.url("/v1/datasets")).bearer_auth("other-key-1").send().await.unwrap().status();
    assert_eq!(s, StatusCode::OK);
    let s = srv.client.get(srv.url(&format!("/v1/jobs/{id}/events?access_token={key}"))).send().await.unwrap().status();
    assert_eq!(s, StatusCode::NOT_FOUND, "the token passed: the job is unknown");
    let s = srv.client.get(srv.url(&format!("/v1/datasets?access_token={key}"))).send().await.unwrap().status();
    assert_eq!(s, StatusCode::UNAUTHORIZED, "access_token only on the events route");
    for open in ["/health", "/openapi.json", "/", "/docs"] {
        let s = srv.client.get(srv.url(open)).send().await.unwrap().status();
        assert_eq!(s, StatusCode::OK, "{open}");
    }

    // A documented flag makes predictions and metrics public.
    let srv = TestServer::start_with(db, |c| {
        c.api_key = Some(key.into());
        c.public_predict = true;
        c.public_metrics = true;
    })
    .await;
    let got = json_of(srv.client.post(srv.url("/v1/predict")).header("content-type", "image/png").body(png).send().await.unwrap()).await;
    assert_error(&got, 503, "no_model");
    assert_eq!(srv.client.get(srv.url("/metrics")).send().await.unwrap().status(), StatusCode::OK);
    let got = json_of(srv.client.get(srv.url("/v1/models")).send().await.unwrap()).await;
    assert_error(&got, 401, "unauthorized");
}

/// Keyless mode trusts no web page: a state-changing request from a foreign
/// Origin and any request under a foreign Host name (DNS rebinding) are
/// refused; the page's own origin works.
async fn keyless_refuses_foreign_origins_and_hosts(db: Db) {
    let srv = TestServer::start(db).await;
    let upload = |origin: Option<String>| {
        let mut rb = srv.dataset_upload(two_class_zip("", 3, 0));
        if let Some(o) = origin {
            rb = rb.header("origin", o);
        }
        rb.send()
    };
    let got = json_of(upload(Some("http://evil.example".into())).await.unwrap()).await;
    assert_error(&got, 403, "origin_not_allowed");
    let got = json_of(upload(Some("null".into())).await.unwrap()).await;
    assert_error(&got, 403, "origin_not_allowed");
    let (s, v) = json_of(upload(Some(srv.base.clone())).await.unwrap()).await;
    assert_eq!(s, StatusCode::CREATED, "same origin: {v}");
    let (s, v) = json_of(upload(None).await.unwrap()).await;
    assert_eq!(s, StatusCode::CREATED, "curl sends no Origin: {v}");
    let (s, list) = srv.get("/v1/datasets").await;
    assert_eq!((s, list["data"].as_array().map(Vec::len)), (StatusCode::OK, Some(2)), "{list}");

    let port = srv.base.rsplit(':').next().unwrap().to_string();
    for host in ["evil.example", "evil.example:80", "attacker.localhost.evil.example"] {
        let got = json_of(srv.client.get(srv.url("/v1/datasets")).header("host", host).send().await.unwrap()).await;
        assert_error(&got, 403, "host_not_allowed");
    }
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}"), "localhost".into()] {
        let s = srv.client.get(srv.url("/v1/datasets")).header("host", host.as_str()).send().await.unwrap().status();
        assert_eq!(s, StatusCode::OK, "{host}");
    }
}

/// A public address without a key refuses to start, unless explicitly allowed.
#[tokio::test]
async fn public_bind_without_a_key_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_tuneserve"))
        .args(["serve", "--bind", &format!("0.0.0.0:{port}"), "--data-dir"])
        .arg(dir.path())
        .env_remove("TUNESERVE_API_KEY")
        .output()
        .expect("run tuneserve");
    assert!(!out.status.success(), "started on 0.0.0.0 without a key");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without an API key") && err.contains("--allow-unauthenticated"), "{err}");

    // With the flag (or a key) it starts.
    for extra in [["--allow-unauthenticated", ""], ["--api-key", "a-long-enough-key"]] {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tuneserve"));
        cmd.args(["serve", "--bind", &format!("0.0.0.0:{port}"), "--data-dir"]).arg(dir.path());
        cmd.args(extra.iter().filter(|a| !a.is_empty()));
        let _child = KillOnDrop(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
        let c = reqwest::Client::new();
        let up = async {
            loop {
                if c.get(format!("http://127.0.0.1:{port}/health")).send().await.is_ok_and(|r| r.status().is_success()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), up).await.unwrap_or_else(|_| panic!("{extra:?}: did not start"));
    }
}

/// A job whose estimated peak memory exceeds the machine is refused with the
/// estimate and the limit; one that fits is accepted.
async fn job_too_large_for_the_machine(db: Db) {
    let srv = TestServer::start_with(db, |c| c.api_key = Some("admission-key".into())).await;
    let auth = |rb: reqwest::RequestBuilder| rb.bearer_auth("admission-key");
    let (s, ds) = json_of(
        auth(srv.dataset_upload(two_class_zip("", 4, 2)))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{ds}");
    let id = ds["id"].as_str().unwrap();
    let huge = json!({"dataset_id": id, "hyperparameters": {"image_size": 1024, "batch_size": 1024}});
    let got = json_of(auth(srv.client.post(srv.url("/v1/jobs"))).json(&huge).send().await.unwrap()).await;
    assert_error(&got, 422, "job_too_large");
    let msg = got.1["error"]["message"].as_str().unwrap();
    assert!(msg.contains("MiB") && msg.contains("--memory-limit-mb"), "{msg}");
    let (s, v) = json_of(auth(srv.client.post(srv.url("/v1/jobs"))).json(&tiny_job(id, 1, 0)).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

fn spawn_server(dir: &std::path::Path, port: u16, db_url: &str, extra: &[&str]) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_tuneserve"))
            .args(["serve", "--bind", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir)
            .args(["--database-url", db_url])
            .args(extra)
            .env("TUNESERVE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("server-{}.log", Instant::now().elapsed().as_nanos()))).unwrap())
            .spawn()
            .expect("start tuneserve"),
    )
}

async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, timeout: Duration, mut f: impl FnMut() -> F) {
    let t0 = Instant::now();
    while !f().await {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGKILL the process every time it runs the job (as an out-of-memory kill
/// would): after --max-attempts such deaths the job is `failed`, and the
/// server then serves normally instead of crash-looping.
async fn job_killing_its_process_fails_after_max_attempts(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let url = database_url(db, dir.path()).await;
    let c = reqwest::Client::new();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let args = ["--max-attempts", "2", "--progress-every", "1"];
    let mut child = spawn_server(dir.path(), port, &url, &args);
    wait_for("start", Duration::from_secs(30), || async { c.get(format!("{base}/health")).send().await.is_ok() }).await;
    let ds: Value = dataset_upload(&c, &base, two_class_zip("", 12, 4))
        .send().await.unwrap().json().await.unwrap();
    let job: Value = c.post(format!("{base}/v1/jobs")).json(&tiny_job(ds["id"].as_str().unwrap(), 1, 500))
        .send().await.unwrap().json().await.unwrap();
    let job_id = job["id"].as_str().expect("job created").to_string();
    let get_job = |c: reqwest::Client, base: String, id: String| async move {
        c.get(format!("{base}/v1/jobs/{id}")).send().await.ok()?.json::<Value>().await.ok()
    };
    for death in 1..=2 {
        wait_for(&format!("the job running (start {death})"), Duration::from_secs(60), || {
            let f = get_job(c.clone(), base.clone(), job_id.clone());
            async move { f.await.is_some_and(|j| j["status"] == "running") }
        })
        .await;
        // SIGKILL: nothing runs on the way out.
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        child = spawn_server(dir.path(), port, &url, &args);
        wait_for("restart", Duration::from_secs(30), || async { c.get(format!("{base}/health")).send().await.is_ok() }).await;
    }
    let j = get_job(c.clone(), base.clone(), job_id.clone()).await.expect("job readable");
    assert_eq!(j["status"], "failed", "{j}");
    assert!(j["error"].as_str().is_some_and(|e| e.contains("--max-attempts")), "{j}");
    // Nothing claims it again; the server works.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let j = get_job(c.clone(), base.clone(), job_id.clone()).await.unwrap();
    assert_eq!(j["status"], "failed", "{j}");
    let s = dataset_upload(&c, &base, two_class_zip("", 3, 0))
        .send().await.unwrap().status();
    assert_eq!(s, StatusCode::CREATED);
    let events: Value = c.get(format!("{base}/v1/jobs/{job_id}/events")).send().await.unwrap().json().await.unwrap();
    let last = events["data"].as_array().and_then(|d| d.last()).cloned().unwrap_or_default();
    assert_eq!(last["data"]["status"], "failed", "the failure is an event too: {events}");
    drop(child);
}

/// Uploads cannot exhaust the disk or the CPU: an entry over the per-file cap
/// refuses the archive at once, concurrent uploads are bounded, text fields
/// are capped, and nothing is left in staging.
#[tokio::test]
async fn ingest_bounds_hold() {
    let srv = TestServer::start_with(Db::Sqlite, |c| c.max_concurrent_uploads = 1).await;
    let staging_is_empty = || {
        let staging = srv.dir.path().join("staging");
        std::fs::read_dir(&staging).map(|d| d.count() == 0).unwrap_or(true)
    };

    // 65 MiB of zeros compress to ~64 KiB: over the 64 MiB per-file cap.
    let mut entries = two_class_entries("", 3, 0);
    entries.insert(0, ("train/bright/huge.png".into(), vec![0u8; 65 << 20]));
    let got = srv.upload_zip(zip_of(&entries)).await;
    assert_error(&got, 413, "entry_too_large");
    assert!(staging_is_empty(), "the refused archive left files behind");

    // A second upload while one is under way: 429 with Retry-After.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let zip = two_class_zip("", 3, 0);
    let (head, tail) = zip.split_at(zip.len() / 2);
    let (head, tail) = (head.to_vec(), tail.to_vec());
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(head) })
        .chain(futures::stream::once(async move {
            let _ = rx.await;
            Ok(tail)
        }));
    use futures::StreamExt;
    let slow = srv
        .client
        .post(srv.url("/v1/datasets"))
        .header("content-type", "application/zip")
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let slow = tokio::spawn(slow);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = srv.client.post(srv.url("/v1/datasets")).header("content-type", "application/zip").body(zip.clone()).send().await.unwrap();
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("5"));
    let got = json_of(r).await;
    assert_error(&got, 429, "too_many_uploads");
    tx.send(()).unwrap();
    let (s, v) = json_of(slow.await.unwrap().unwrap()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // Text fields: capped and checked.
    for bad in ["x".repeat(201), "a\u{7}b".into(), "  ".into()] {
        let part = reqwest::multipart::Part::bytes(zip.clone()).file_name("d.zip");
        let form = reqwest::multipart::Form::new().text("name", bad).part("file", part);
        let got = json_of(srv.client.post(srv.url("/v1/datasets")).multipart(form).send().await.unwrap()).await;
        assert_error(&got, 422, "invalid_name");
    }
    let part = reqwest::multipart::Part::bytes(zip.clone()).file_name("d.zip");
    let form = reqwest::multipart::Form::new().text("name", "x".repeat(1 << 20)).part("file", part);
    let got = json_of(srv.client.post(srv.url("/v1/datasets")).multipart(form).send().await.unwrap()).await;
    assert_error(&got, 422, "invalid_name");
    assert!(staging_is_empty());
}

/// A client that disconnects while its archive is extracted: the extraction
/// stops and its files are removed; no dataset appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_upload_is_cancelled_and_cleaned_up() {
    let srv = TestServer::start(Db::Sqlite).await;
    // Enough real decoding work (seconds) to disconnect in the middle of it.
    let mut entries = Vec::new();
    for i in 0..2500u32 {
        let img = image::RgbImage::from_fn(224, 224, |x, y| {
            let v = ((x + y * 2 + i * 7) % 256) as u8;
            image::Rgb([v, v.wrapping_mul(3), v.wrapping_add(90)])
        });
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, image::ImageFormat::Jpeg).unwrap();
        let class = if i % 2 == 0 { "a" } else { "b" };
        entries.push((format!("{class}/{i}.jpg"), buf.into_inner()));
    }
    let zip = zip_of(&entries);
    let addr = srv.base.trim_start_matches("http://").to_string();
    let staging = srv.dir.path().join("staging");
    let watched = staging.clone();
    tokio::task::spawn_blocking(move || {
        let mut sock = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            sock,
            "POST /v1/datasets HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/zip\r\nContent-Length: {}\r\n\r\n",
            zip.len()
        )
        .unwrap();
        sock.write_all(&zip).unwrap();
        sock.flush().unwrap();
        // Wait for the extraction to start writing files, then go away.
        let t0 = Instant::now();
        while !walk_has_files(&watched) {
            assert!(t0.elapsed() < Duration::from_secs(20), "the extraction never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        sock.shutdown(std::net::Shutdown::Both).unwrap();
    })
    .await
    .unwrap();

    let t0 = Instant::now();
    loop {
        let empty = std::fs::read_dir(&staging).map(|d| d.count() == 0).unwrap_or(true);
        if empty {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "the abandoned upload's files are still in staging");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (s, list) = srv.get("/v1/datasets").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["data"].as_array().map(Vec::len), Some(0), "an abandoned upload became a dataset: {list}");
}

/// Whether any file (not only folders) is below `dir`.
fn walk_has_files(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
        let p = e.path();
        if p.is_dir() { walk_has_files(&p) } else { p.file_name().is_some_and(|n| n != "upload") }
    })
}

/// Predictions: a request's images together may not exceed the pixel budget
/// (checked from the headers, before any decoding).
#[tokio::test]
async fn predict_pixel_budget() {
    let srv = TestServer::start_with(Db::Sqlite, |c| c.max_request_pixels = 40 * 40 * 3).await;
    let ds = srv.good_dataset().await;
    let (_, d) = srv.get(&format!("/v1/datasets/{ds}")).await;
    assert_eq!((d["images"].as_u64(), d["cache_bytes"].as_u64()), (Some(32), Some(0)), "{d}");
    assert!(d["files_bytes"].as_u64().is_some_and(|b| b > 0), "{d}");
    let job = srv.create_tiny_job(&ds, 1, 0).await;
    let j = srv.wait_job(&job, Duration::from_secs(120)).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    // The job left the dataset's pixel cache behind (71x71 RGB per image).
    let (_, d) = srv.get(&format!("/v1/datasets/{ds}")).await;
    assert!(d["cache_bytes"].as_u64().is_some_and(|b| b >= 32 * 71 * 71 * 3), "{d}");
    let images: Vec<String> = (0..4).map(|i| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(image_bytes(true, i, false))
    }).collect();
    let got = srv.post_json("/v1/predict", json!({"images": images})).await;
    assert_error(&got, 413, "too_many_pixels");
    let (s, v) = srv.post_json("/v1/predict", json!({"images": images[..3]})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["predictions"].as_array().map(Vec::len), Some(3));
}

macro_rules! both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::Db::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::Db::Postgres).await })*
        }
    };
}

both_databases!(
    concurrent_default_switches,
    keyed_reads_need_the_key,
    keyless_refuses_foreign_origins_and_hosts,
    job_too_large_for_the_machine,
    job_killing_its_process_fails_after_max_attempts,
);
