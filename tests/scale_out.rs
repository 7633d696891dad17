//! Scale-out on real engines: one API process (no workers of its own) and two
//! `tuneserve worker` processes share a real PostgreSQL and a real
//! S3-compatible server (moto), each with its own data directory, so every
//! artifact crosses S3. Three jobs are queued; one worker is SIGKILLed while
//! its job is in stage 2; the other worker takes the job over when the lease
//! runs out and finishes it from the last published checkpoint. All three
//! succeed, none runs twice at once, and the API process serves /predict with
//! the published model (fetched from S3) and streams events of jobs that ran
//! elsewhere.
//!
//! Needs TUNESERVE_TEST_POSTGRES_URL (scripts/start-postgres.sh) and
//! TUNESERVE_TEST_S3_URL (scripts/start-s3.sh); `.ci/run` sets both. Fails,
//! never skips, without them.

mod test_server;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_server::*;
use serde_json::{json, Value};

/// Seconds without a heartbeat after which a job is taken over.
const LEASE_SECS: &str = "5";


struct Cluster {
    database_url: String,
    artifacts: String,
    s3: String,
}

impl Cluster {
    fn command(&self, dir: &Path, log: &str, args: &[&str]) -> Command {
        std::fs::create_dir_all(dir).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_tuneserve"));
        c.args(args)
            .arg("--data-dir")
            .arg(dir)
            .args(["--database-url", &self.database_url, "--lease-secs", LEASE_SECS, "--progress-every", "1"])
            .env("TUNESERVE_ARTIFACTS", &self.artifacts)
            .env("AWS_ENDPOINT_URL", &self.s3)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "tuneserve-test")
            .env("AWS_SECRET_ACCESS_KEY", "tuneserve-test")
            .env("TUNESERVE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.parent().unwrap().join(log)).unwrap());
        c
    }

    fn worker(&self, dir: &Path, name: &str) -> KillOnDrop {
        KillOnDrop(self.command(dir, &format!("{name}.log"), &["worker", "--instance", name]).spawn().expect("start worker"))
    }

    fn api(&self, dir: &Path, port: u16) -> KillOnDrop {
        let bind = format!("127.0.0.1:{port}");
        KillOnDrop(self.command(dir, "api.log", &["serve", "--bind", &bind, "--workers", "0", "--instance", "api"])
            .spawn()
            .expect("start api"))
    }
}

async fn get(c: &reqwest::Client, url: String) -> Value {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

/// Keys under `prefix` in the bucket (S3 ListObjectsV2, which moto serves
/// without signature checks).
async fn s3_keys(c: &reqwest::Client, s3: &str, bucket: &str, prefix: &str) -> Vec<String> {
    let xml = c
        .get(format!("{s3}/{bucket}?list-type=2&prefix={prefix}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    xml.split("<Key>").skip(1).filter_map(|s| s.split("</Key>").next()).map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_one_api_share_postgres_and_s3() {
    let s3 = std::env::var("TUNESERVE_TEST_S3_URL").expect(
        "TUNESERVE_TEST_S3_URL is not set: start an S3-compatible server with scripts/start-s3.sh and export the URL \
         it prints (.ci/run does this); the scale-out test does not skip",
    );
    let c = reqwest::Client::new();
    let bucket = format!("tuneserve-t-{}", uuid::Uuid::new_v4().simple());
    let made = c.put(format!("{s3}/{bucket}")).send().await.expect("S3 server at TUNESERVE_TEST_S3_URL");
    assert!(made.status().is_success(), "create bucket: {}", made.status());
    let cluster = Cluster {
        database_url: fresh_postgres().await,
        artifacts: format!("s3://{bucket}/artifacts"),
        s3: s3.clone(),
    };
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _api = cluster.api(&root.path().join("api"), port);
    for _ in 0..300 {
        if c.get(format!("{base}/ready")).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut workers = vec![
        Some(cluster.worker(&root.path().join("worker-a"), "worker-a")),
        Some(cluster.worker(&root.path().join("worker-b"), "worker-b")),
    ];

    // A dataset uploaded to the API process lands in S3 as one object.
    let ds: Value = dataset_upload(&c, &base, two_class_zip("", 12, 4))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ds_id = ds["id"].as_str().unwrap_or_else(|| panic!("dataset created: {ds}")).to_string();
    assert_eq!(s3_keys(&c, &s3, &bucket, "artifacts/datasets/").await, vec![format!("artifacts/datasets/{ds_id}.tar")]);

    let mut ids = Vec::new();
    for _ in 0..3 {
        let j: Value = c.post(format!("{base}/v1/jobs")).json(&tiny_job(&ds_id, 2, 4)).send().await.unwrap().json().await.unwrap();
        ids.push(j["id"].as_str().unwrap_or_else(|| panic!("job created: {j}")).to_string());
    }

    // Kill -9 the worker of the first job to reach stage 2 with a published
    // stage-2 checkpoint.
    let pg = sqlx::PgPool::connect(&cluster.database_url).await.unwrap();
    let t0 = Instant::now();
    let (victim_job, victim) = 'found: loop {
        for id in &ids {
            let j = get(&c, format!("{base}/v1/jobs/{id}")).await;
            if j["status"] == "running" && j["stage"] == "finetune" && j["step"].as_i64().unwrap_or(0) >= 1 {
                let cks = get(&c, format!("{base}/v1/jobs/{id}/checkpoints")).await;
                if cks["data"].as_array().unwrap().iter().any(|c| c["stage"] == "finetune") {
                    let holder: Option<String> = sqlx::query_scalar("SELECT claimed_by FROM jobs WHERE id = $1")
                        .bind(id)
                        .fetch_one(&pg)
                        .await
                        .unwrap();
                    match holder.as_deref() {
                        Some("worker-a") => break 'found (id.clone(), 0),
                        Some("worker-b") => break 'found (id.clone(), 1),
                        _ => {}
                    }
                }
            }
            assert_ne!(j["status"], "failed", "{j}");
        }
        assert!(t0.elapsed() < Duration::from_secs(600), "no job reached stage 2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut killed = workers[victim].take().unwrap();
    killed.0.kill().unwrap(); // SIGKILL: no goodbye, the lease just runs out
    killed.0.wait().unwrap();
    let survivor = ["worker-a", "worker-b"][1 - victim];

    let t0 = Instant::now();
    let mut done = Vec::new();
    for id in &ids {
        let j = loop {
            let j = get(&c, format!("{base}/v1/jobs/{id}")).await;
            if matches!(j["status"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
                break j;
            }
            assert!(t0.elapsed() < Duration::from_secs(900), "job did not finish: {j}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(j["status"], "succeeded", "{j}");
        done.push(j);
    }

    for (id, j) in ids.iter().zip(&done) {
        let ev = get(&c, format!("{base}/v1/jobs/{id}/events?limit=1000")).await;
        let ev = ev["data"].as_array().unwrap();
        let starts: Vec<usize> = ev
            .iter()
            .enumerate()
            .filter(|(_, e)| e["type"] == "status" && e["data"]["status"] == "running")
            .map(|(i, _)| i)
            .collect();
        // No job ran twice: one start per attempt, and only the victim's job has two.
        assert_eq!(starts.len() as i64, j["attempts"].as_i64().unwrap(), "{id}: {ev:?}");
        let finished_by: Option<String> =
            sqlx::query_scalar("SELECT claimed_by FROM jobs WHERE id = $1").bind(id).fetch_one(&pg).await.unwrap();
        if *id == victim_job {
            assert_eq!(j["attempts"], json!(2), "{j}");
            assert_eq!(finished_by.as_deref(), Some(survivor));
            // The survivor resumed from the last stage-2 checkpoint (fetched from S3), not from scratch.
            let resumed = &ev[starts[1]..];
            assert!(
                resumed.iter().any(|e| e["data"]["text"].as_str().is_some_and(|t| t.starts_with("resuming from checkpoint finetune-"))),
                "{resumed:?}"
            );
            let first_epoch = resumed.iter().find(|e| e["type"] == "epoch").expect("epochs after the takeover");
            assert_eq!(first_epoch["data"]["stage"], "finetune", "{first_epoch}");
            assert!(first_epoch["data"]["epoch"].as_i64().unwrap() >= 2, "{first_epoch}");
        } else {
            assert_eq!(j["attempts"], json!(1), "{j}");
        }
        let epochs: Vec<(String, i64)> = ev
            .iter()
            .filter(|e| e["type"] == "epoch")
            .map(|e| (e["data"]["stage"].as_str().unwrap().to_string(), e["data"]["epoch"].as_i64().unwrap()))
            .collect();
        assert!(epochs.contains(&("finetune".to_string(), 4)), "{id}: {epochs:?}");
    }

    // Checkpoints are in S3 (the trainer's pruning included), and the API
    // process, which ran no job, serves the published model from there.
    let keys = s3_keys(&c, &s3, &bucket, &format!("artifacts/jobs/{}/", victim_job)).await;
    assert!(keys.iter().any(|k| k.ends_with("/meta.json")), "{keys:?}");
    let cks = get(&c, format!("{base}/v1/jobs/{victim_job}/checkpoints")).await;
    let listed = cks["data"].as_array().unwrap().len();
    assert_eq!(keys.iter().filter(|k| k.ends_with("/meta.json")).count(), listed, "{keys:?} vs {cks}");
    assert!(!root.path().join("api").join("jobs").join(&victim_job).exists());
    let p = c.post(format!("{base}/v1/predict")).header("content-type", "image/png").body(image_bytes(true, 1, false));
    let r = p.send().await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let last_model = done.iter().filter_map(|j| j["model_id"].as_str()).last().map(str::to_string);
    assert!(last_model.is_some(), "{done:?}");

    // Events of a job that ran on a worker reach an SSE client of the API process.
    let sse = read_sse(&c, &format!("{base}/v1/jobs/{victim_job}/events"), Duration::from_secs(30)).await;
    assert!(sse.iter().any(|(k, d)| k == "status" && d["status"] == "succeeded"), "{sse:?}");

    // A checkpoint download through the API process also comes from S3.
    let ck_id = cks["data"][0]["id"].as_str().unwrap();
    let r = c.get(format!("{base}/v1/checkpoints/{ck_id}/download")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().len() > 1000);
}
