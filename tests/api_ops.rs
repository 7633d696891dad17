//! Operations and service behaviour: health, readiness, metrics, OpenAPI and
//! docs, request ids, the prediction queue's 429, job claiming by several
//! workers, cancel, graceful shutdown with resume, dataset layouts.

mod test_server;

use std::time::Duration;

use test_server::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_metrics_openapi_docs() {
    let srv = TestServer::start(Db::Sqlite).await;
    let (s, v) = srv.get("/health").await;
    assert_eq!((s, v), (StatusCode::OK, json!({"status": "ok"})));
    let (s, v) = srv.get("/ready").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["database"], "ok");

    let r = srv.client.get(srv.url("/health")).send().await.unwrap();
    let rid = r.headers().get("x-request-id").expect("request id").to_str().unwrap().to_string();
    assert_eq!(rid.len(), 36);
    let r = srv.client.get(srv.url("/health")).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(r.headers().get("x-request-id").unwrap(), "abc-123");

    let _ = srv.get("/v1/datasets").await;
    let m = srv.client.get(srv.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("tuneserve_http_requests_total"), "{m}");
    assert!(m.contains("route=\"/v1/datasets\""), "{m}");
    assert!(m.contains("tuneserve_jobs{status=\"queued\"}"), "{m}");

    let (s, doc) = srv.get("/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for p in ["/v1/datasets", "/v1/jobs/{id}/events", "/v1/predict", "/v1/checkpoints/{id}/download", "/ready"] {
        assert!(doc["paths"][p].is_object(), "{p} missing from the OpenAPI document");
    }
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    let html = srv.client.get(srv.url("/docs")).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("/openapi.json") && !html.contains("https://"), "docs page must be self-contained");

}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_not_allowed_has_error_shape() {
    let srv = TestServer::start(Db::Sqlite).await;
    let r = srv.client.put(srv.url("/v1/datasets")).send().await.unwrap();
    assert_error(&json_of(r).await, 405, "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_queue_gives_429_with_retry_after() {
    // A queue of 2 images and a long batching wait: the queue stays full
    // while the first batch gathers, so most concurrent requests are refused.
    let srv = TestServer::start_with(Db::Sqlite, |c| {
        c.predict_max_queue = 2;
        c.predict_max_wait_ms = 1500;
    })
    .await;
    let ds = srv.good_dataset().await;
    let job = srv.create_tiny_job(&ds, 1, 0).await;
    assert_eq!(srv.wait_job(&job, Duration::from_secs(300)).await["status"], "succeeded");
    let mut tasks = Vec::new();
    for i in 0..12 {
        let c = srv.client.clone();
        let url = srv.url("/v1/predict");
        tasks.push(tokio::spawn(async move {
            let r = c.post(url).header("content-type", "image/png").body(image_bytes(true, i, false)).send().await.unwrap();
            let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            (json_of(r).await, retry)
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        let (got, retry) = t.await.unwrap();
        if got.0 == StatusCode::OK {
            ok += 1;
        } else {
            assert_error(&got, 429, "queue_full");
            assert_eq!(retry.as_deref(), Some("1"));
            busy += 1;
        }
    }
    assert!(ok >= 1 && busy >= 1, "ok {ok}, busy {busy}");
    // Once drained, it serves again.
    let (s, _) = srv.post_bytes("/v1/predict", "image/png", image_bytes(false, 1, false)).await;
    assert_eq!(s, StatusCode::OK);
    let m = srv.client.get(srv.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("tuneserve_predict_rejected_total"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_and_abandoned_predictions_are_dropped() {
    // The batch gathers for 1.5 s but a request may wait 1 s: it is answered
    // 503 deadline_exceeded, and the batcher then drops it without running it.
    let srv = TestServer::start_with(Db::Sqlite, |c| {
        c.predict_max_wait_ms = 1500;
        c.predict_timeout_ms = 1000;
    })
    .await;
    let ds = srv.good_dataset().await;
    let job = srv.create_tiny_job(&ds, 1, 0).await;
    assert_eq!(srv.wait_job(&job, Duration::from_secs(300)).await["status"], "succeeded");
    let t0 = std::time::Instant::now();
    let r = srv.client.post(srv.url("/v1/predict")).header("content-type", "image/png").body(image_bytes(true, 1, false));
    let r = r.send().await.unwrap();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    assert_error(&json_of(r).await, 503, "deadline_exceeded");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(t0.elapsed() < Duration::from_millis(1450), "answered at the deadline, not after the batch: {:?}", t0.elapsed());
    // A client that hangs up while waiting: its work is dropped too.
    let gone = srv.client.post(srv.url("/v1/predict")).header("content-type", "image/png").body(image_bytes(false, 2, false));
    assert!(gone.timeout(Duration::from_millis(200)).send().await.is_err());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let m = srv.client.get(srv.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("tuneserve_predict_dropped_total{reason=\"deadline\"}"), "{m}");
    assert!(m.contains("tuneserve_predict_dropped_total{reason=\"client_gone\"}"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn predict_answers_while_a_job_trains() {
    // Training runs on its own (lower-priority) CPU pool, so /predict keeps
    // answering with the published model while a long job trains.
    let srv = TestServer::start(Db::Sqlite).await;
    let ds = srv.good_dataset().await;
    let first = srv.create_tiny_job(&ds, 1, 0).await;
    assert_eq!(srv.wait_job(&first, Duration::from_secs(300)).await["status"], "succeeded");
    let long = srv.create_tiny_job(&ds, 1, 500).await;
    let t0 = std::time::Instant::now();
    loop {
        let (_, j) = srv.get(&format!("/v1/jobs/{long}")).await;
        if j["stage"] == "finetune" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "the long job never reached stage 2: {j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..10 {
        let (s, v) = srv.post_bytes("/v1/predict", "image/png", image_bytes(i % 2 == 0, i, false)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["predictions"].as_array().map(Vec::len), Some(1), "{v}");
    }
    let (_, j) = srv.get(&format!("/v1/jobs/{long}")).await;
    assert_eq!(j["status"], "running", "the job trained on beside the predictions: {j}");
    let (s, _) = srv.post_json(&format!("/v1/jobs/{long}/cancel"), json!({})).await;
    assert!(s.is_success());
    assert_eq!(srv.wait_job(&long, Duration::from_secs(120)).await["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_layouts() {
    let srv = TestServer::start(Db::Sqlite).await;
    // Plain class folders, no split.
    let e: Vec<_> = (0..3)
        .flat_map(|i| [(format!("bright/{i}.png"), image_bytes(true, i, false)), (format!("dark/{i}.png"), image_bytes(false, i, false))])
        .collect();
    let (s, v) = srv.upload_zip(zip_of(&e)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["has_validation"], json!(false));
    assert_eq!(v["counts"][1], json!({"class": "dark", "train": 3, "validation": 0}));
    // Raw tar and tar.gz bodies, wrapped in one top-level folder.
    let mut tar = tar::Builder::new(Vec::new());
    for (n, b) in two_class_entries("wrapped/", 3, 2) {
        let mut h = tar::Header::new_ustar();
        h.set_size(b.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, n, &b[..]).unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let (s, v) = srv.post_bytes("/v1/datasets?name=tarred", "application/x-tar", tar.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["name"], "tarred");
    assert_eq!(v["counts"][0], json!({"class": "bright", "train": 3, "validation": 2}));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let (s, v) = srv.post_bytes("/v1/datasets", "application/gzip", gz.finish().unwrap()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, list) = srv.get("/v1/datasets?limit=2").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert_eq!(list["has_more"], json!(true));
    let last = list["data"][1]["id"].as_str().unwrap();
    let (_, rest) = srv.get(&format!("/v1/datasets?after={last}")).await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest["has_more"], json!(false));
}

async fn claims_are_exclusive(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let url = database_url(db, dir.path()).await;
    let store = tuneserve::store::Db::connect(&url).await.unwrap();
    for i in 0..6 {
        let config = tuneserve::train::TrainConfig::default();
        store.insert_job(&format!("00000000-0000-0000-0000-00000000000{i}"), "d", tuneserve::model::Variant::Tiny, &config).await.unwrap();
    }
    let mut tasks = Vec::new();
    for w in 0..12 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move { s.claim_job(&format!("w{w}")).await.unwrap().map(|j| j.id) }));
    }
    let mut got: Vec<String> = Vec::new();
    for t in tasks {
        got.extend(t.await.unwrap());
    }
    got.sort();
    let n = got.len();
    got.dedup();
    assert_eq!((n, got.len()), (6, 6), "each job claimed exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_are_exclusive_sqlite() {
    claims_are_exclusive(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_are_exclusive_postgres() {
    claims_are_exclusive(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queued_and_running_jobs() {
    let srv = TestServer::start(Db::Sqlite).await;
    let ds = srv.good_dataset().await;
    // The first job keeps the single worker busy; the second waits queued.
    let running = srv.create_tiny_job(&ds, 1, 500).await;
    let queued = srv.create_tiny_job(&ds, 1, 0).await;
    let (s, j) = srv.post_json(&format!("/v1/jobs/{queued}/cancel"), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert_eq!(j["status"], "cancelled");
    // A dataset used by a running job cannot be deleted.
    for _ in 0..200 {
        if srv.get(&format!("/v1/jobs/{running}")).await.1["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = srv.client.delete(srv.url(&format!("/v1/datasets/{ds}"))).send().await.unwrap();
    assert_error(&json_of(r).await, 409, "dataset_in_use");
    let (s, j) = srv.post_json(&format!("/v1/jobs/{running}/cancel"), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    let j = srv.wait_job(&running, Duration::from_secs(120)).await;
    assert_eq!(j["status"], "cancelled", "{j}");
    let (_, ev) = srv.get(&format!("/v1/jobs/{running}/events?limit=1000")).await;
    assert_eq!(ev["data"].as_array().unwrap().last().unwrap()["data"]["status"], "cancelled");
    // The SSE stream of a finished job replays and ends.
    let events = read_sse(&srv.client, &srv.url(&format!("/v1/jobs/{queued}/events")), Duration::from_secs(10)).await;
    assert_eq!(events.last().unwrap().1["status"], "cancelled", "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_checkpoints_then_resumes() {
    let srv = TestServer::start(Db::Sqlite).await;
    let ds = srv.good_dataset().await;
    let id = srv.create_tiny_job(&ds, 3, 20).await;
    // Wait for the first progress, then shut down mid-epoch.
    for _ in 0..2000 {
        if srv.get(&format!("/v1/jobs/{id}")).await.1["step"].is_number() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (dir, url) = srv.stop().await;
    // serve_with returned: the job went back to the queue after a checkpoint.
    let cks = std::fs::read_dir(dir.path().join("jobs").join(&id))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("meta.json").exists())
        .count();
    assert!(cks >= 1, "the running epoch was checkpointed before exit");
    let cfg = test_config(dir.path(), &url);
    let srv = TestServer::start_on(dir, url, cfg).await;
    let j = srv.wait_job(&id, Duration::from_secs(600)).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    assert_eq!(j["attempts"], json!(2), "{j}");
    let (_, ev) = srv.get(&format!("/v1/jobs/{id}/events?limit=1000")).await;
    let statuses: Vec<_> = ev["data"].as_array().unwrap().iter().filter(|e| e["type"] == "status").map(|e| e["data"]["status"].clone()).collect();
    assert_eq!(statuses, [json!("queued"), json!("running"), json!("queued"), json!("running"), json!("succeeded")]);
}

/// /metrics passes `promtool check metrics`; every metric has HELP text,
/// latency histograms have explicit buckets, throughput is counted (no
/// images-per-second gauges).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_pass_promtool() {
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let srv = TestServer::start(Db::Sqlite).await;
    let ds = srv.good_dataset().await;
    let job = srv.create_tiny_job(&ds, 1, 1).await;
    assert_eq!(srv.wait_job(&job, Duration::from_secs(300)).await["status"], "succeeded");
    let (s, v) = srv.post_bytes("/v1/predict", "image/png", image_bytes(true, 1, false)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let m = srv.client.get(srv.url("/metrics")).send().await.unwrap().text().await.unwrap();

    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{promtool} not found ({e}): install the Debian package prometheus"));
    use std::io::Write;
    child.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{m}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let typed: Vec<&str> = m.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    for name in &typed {
        assert!(m.contains(&format!("# HELP {name} ")), "{name} has no HELP line\n{m}");
    }
    for hist in [
        "tuneserve_http_request_duration_seconds",
        "tuneserve_predict_batch_size",
        "tuneserve_predict_batch_seconds",
        "tuneserve_predict_queue_wait_seconds",
        "tuneserve_train_step_seconds",
        "tuneserve_job_seconds",
    ] {
        assert!(m.contains(&format!("# TYPE {hist} histogram")), "{hist} is not a histogram\n{m}");
        assert!(m.contains(&format!("{hist}_bucket{{")), "{hist} has no buckets\n{m}");
    }
    for counter in ["tuneserve_predict_images_total", "tuneserve_train_images_total"] {
        assert!(m.contains(&format!("# TYPE {counter} counter")), "{counter}\n{m}");
    }
    assert!(!m.contains("per_second"), "throughput must be counters, not gauges\n{m}");
}

/// The page is built into the binary: served from any working directory,
/// with an ETag that turns a revalidation into 304.
#[tokio::test]
async fn page_is_built_in_with_etags() {
    let elsewhere = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_tuneserve"))
            .args(["serve", "--bind", &format!("127.0.0.1:{port}"), "--data-dir", "data"])
            .current_dir(elsewhere.path())
            .env_remove("TUNESERVE_STATIC_DIR")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let c = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let t0 = std::time::Instant::now();
    let r = loop {
        if let Ok(r) = c.get(format!("{base}/")).send().await {
            break r;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let etag = r.headers().get("etag").expect("an ETag").clone();
    assert!(r.text().await.unwrap().contains("app.js"));
    for (path, kind) in [("/app.js", "javascript"), ("/app.css", "text/css")] {
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert!(r.headers()["content-type"].to_str().unwrap().contains(kind), "{path}: {:?}", r.headers());
    }
    let r = c.get(format!("{base}/")).header("if-none-match", etag).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let got = json_of(c.get(format!("{base}/nothing-here.js")).send().await.unwrap()).await;
    assert_error(&got, 404, "route_not_found");
    let got = json_of(c.post(format!("{base}/app.js")).send().await.unwrap()).await;
    assert_error(&got, 405, "method_not_allowed");
}

/// Time to first prediction: stage 1's model is published as soon as stage 1
/// ends (the default when there is none) and answers while stage 2 runs. A
/// job that succeeds replaces its stage-1 model by its final one, which
/// becomes the default; a later job's stage-1 model does not take the
/// default away.
async fn stage_one_model_answers_during_stage_two(db: Db) {
    let srv = TestServer::start(db).await;
    let ds = srv.good_dataset().await;
    let models = |srv: &TestServer| {
        let (c, url) = (srv.client.clone(), srv.url("/v1/models?limit=100"));
        async move { c.get(url).send().await.unwrap().json::<serde_json::Value>().await.unwrap()["data"].as_array().unwrap().clone() }
    };
    // Wait for `job`'s model to be listed; the job must still be running then.
    async fn first_model_of(srv: &TestServer, job: &str) -> serde_json::Value {
        let t0 = std::time::Instant::now();
        loop {
            let (_, list) = srv.get("/v1/models?limit=100").await;
            if let Some(m) = list["data"].as_array().unwrap().iter().find(|m| m["job_id"] == json!(job)) {
                return m.clone();
            }
            let (_, j) = srv.get(&format!("/v1/jobs/{job}")).await;
            // Not claimed yet, or running; never finished without its stage-1 model.
            assert!(j["status"] == "queued" || j["status"] == "running", "no stage-1 model while the job ran: {j}");
            assert!(t0.elapsed() < Duration::from_secs(120), "no stage-1 model: {j}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut long = tiny_job(&ds, 1, 1000);
    long["hyperparameters"]["patience"] = json!(0);
    let (_, job) = srv.post_json("/v1/jobs", long.clone()).await;
    let id = job["id"].as_str().expect("job created").to_string();
    let early = first_model_of(&srv, &id).await;
    assert_eq!((early["stage"].as_str(), early["is_default"].as_bool()), (Some("stage1"), Some(true)), "{early}");
    let (s, p) = srv.post_bytes("/v1/predict", "image/png", image_bytes(true, 1, false)).await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["model"], early["id"], "the stage-1 model answers");
    let (_, j) = srv.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(j["status"], "running", "stage 2 still runs: {j}");
    let (s, _) = srv.post_json(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert!(s.is_success());
    assert_eq!(srv.wait_job(&id, Duration::from_secs(120)).await["status"], "cancelled");

    // A job that succeeds: its final model replaces its stage-1 model and is the default.
    let (_, job2) = srv.post_json("/v1/jobs", tiny_job(&ds, 1, 1)).await;
    let id2 = job2["id"].as_str().unwrap().to_string();
    let j2 = srv.wait_job(&id2, Duration::from_secs(300)).await;
    assert_eq!(j2["status"], "succeeded", "{j2}");
    let list = models(&srv).await;
    let of_job2: Vec<_> = list.iter().filter(|m| m["job_id"] == json!(id2)).collect();
    assert_eq!(of_job2.len(), 1, "the final model replaced the stage-1 one: {list:?}");
    assert_eq!((of_job2[0]["stage"].as_str(), of_job2[0]["is_default"].as_bool()), (Some("final"), Some(true)));
    assert_eq!(of_job2[0]["id"], j2["model_id"]);
    assert!(list.iter().any(|m| m["id"] == early["id"] && m["is_default"] == json!(false)), "the cancelled job's stage-1 model stays: {list:?}");

    // A later job's stage-1 model is listed but does not become the default.
    let (_, job3) = srv.post_json("/v1/jobs", long).await;
    let id3 = job3["id"].as_str().unwrap().to_string();
    let third = first_model_of(&srv, &id3).await;
    assert_eq!((third["stage"].as_str(), third["is_default"].as_bool()), (Some("stage1"), Some(false)), "{third}");
    let (_, p) = srv.post_bytes("/v1/predict", "image/png", image_bytes(true, 1, false)).await;
    assert_eq!(p["model"], j2["model_id"], "the finished model keeps answering");
    let (s, _) = srv.post_json(&format!("/v1/jobs/{id3}/cancel"), json!({})).await;
    assert!(s.is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stage_one_model_answers_during_stage_two_sqlite() {
    stage_one_model_answers_during_stage_two(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stage_one_model_answers_during_stage_two_postgres() {
    stage_one_model_answers_during_stage_two(Db::Postgres).await;
}
