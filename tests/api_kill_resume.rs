//! SIGKILL the real binary during stage 2, start it again: the job resumes
//! from its last checkpoint and succeeds, and every checkpoint on disk is
//! complete (none half-written).

mod test_server;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_server::*;
use serde_json::{json, Value};


fn spawn(dir: &std::path::Path, port: u16, db_url: &str) -> KillOnDrop {
    spawn_with(dir, port, db_url, &[])
}

fn spawn_with(dir: &std::path::Path, port: u16, db_url: &str, extra: &[&str]) -> KillOnDrop {
    KillOnDrop(Command::new(env!("CARGO_BIN_EXE_tuneserve"))
        .args(["serve", "--bind", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir)
        .args(["--database-url", db_url, "--progress-every", "1"])
        .args(extra)
        .env("TUNESERVE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("server-{port}.log"))).unwrap())
        .spawn()
        .expect("start tuneserve"))
}

async fn wait_up(c: &reqwest::Client, base: &str) {
    for _ in 0..300 {
        if c.get(format!("{base}/health")).send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server did not come up");
}

async fn job(c: &reqwest::Client, base: &str, id: &str) -> Value {
    c.get(format!("{base}/v1/jobs/{id}")).send().await.unwrap().json().await.unwrap()
}

/// The job once it has ended (succeeded, failed or cancelled).
async fn wait_ended(c: &reqwest::Client, base: &str, id: &str, timeout: Duration) -> Value {
    let t0 = Instant::now();
    loop {
        let j = job(c, base, id).await;
        if matches!(j["status"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
            return j;
        }
        assert!(t0.elapsed() < timeout, "the resumed job did not finish: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every checkpoint directory (not the hidden temp ones) has parseable files.
fn assert_checkpoints_complete(job_dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(job_dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !p.is_dir() || name.starts_with('.') {
            continue;
        }
        let meta: Value = serde_json::from_slice(&std::fs::read(p.join("meta.json")).unwrap())
            .unwrap_or_else(|e| panic!("{name}/meta.json is damaged: {e}"));
        assert!(meta["stage"].is_string());
        for f in ["model.safetensors", "optimizer.safetensors"] {
            let bytes = std::fs::read(p.join(f)).unwrap_or_else(|e| panic!("{name}/{f}: {e}"));
            safetensors::SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{name}/{f} is damaged: {e}"));
        }
        n += 1;
    }
    n
}

async fn kill_during_stage_two(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let url = database_url(db, dir.path()).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let c = reqwest::Client::new();
    let mut child = spawn(dir.path(), port, &url);
    wait_up(&c, &base).await;

    let ds: Value = dataset_upload(&c, &base, two_class_zip("", 12, 4))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ds_id = ds["id"].as_str().expect("dataset created");
    let created: Value =
        c.post(format!("{base}/v1/jobs")).json(&tiny_job(ds_id, 2, 4)).send().await.unwrap().json().await.unwrap();
    let id = created["id"].as_str().expect("job created").to_string();

    // Wait until stage 2 has at least one checkpoint and is under way, then kill.
    let t0 = Instant::now();
    loop {
        let j = job(&c, &base, &id).await;
        assert_ne!(j["status"], "succeeded", "the job finished before the kill; make it longer: {j}");
        if j["stage"] == "finetune" && j["epoch"].as_i64().unwrap_or(0) >= 1 && j["step"].as_i64().unwrap_or(0) >= 1 {
            let cks: Value = c.get(format!("{base}/v1/jobs/{id}/checkpoints")).send().await.unwrap().json().await.unwrap();
            if cks["data"].as_array().unwrap().iter().any(|c| c["stage"] == "finetune") {
                break;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(600), "stage 2 never started: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    let before = assert_checkpoints_complete(&dir.path().join("jobs").join(&id));
    assert!(before >= 2, "stage 1's and at least one stage-2 checkpoint: {before}");

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _child = spawn(dir.path(), port, &url);
    wait_up(&c, &base).await;
    let j = wait_ended(&c, &base, &id, Duration::from_secs(600)).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    assert_eq!(j["attempts"], json!(2), "{j}");
    let after = assert_checkpoints_complete(&dir.path().join("jobs").join(&id));
    let cks: Value = c.get(format!("{base}/v1/jobs/{id}/checkpoints")).send().await.unwrap().json().await.unwrap();
    let cks = cks["data"].as_array().unwrap();
    assert_eq!(cks.len(), after, "listed checkpoints are the ones on disk: {cks:?}");
    assert!(cks.iter().any(|c| c["stage"] == "finetune"), "{cks:?}");
    // The resumed run started from the last checkpoint, not from scratch:
    // the second attempt's epoch events begin after the killed one's.
    let ev: Value = c.get(format!("{base}/v1/jobs/{id}/events?limit=1000")).send().await.unwrap().json().await.unwrap();
    let ev = ev["data"].as_array().unwrap();
    let second = ev.iter().rposition(|e| e["type"] == "status" && e["data"]["status"] == "running").unwrap();
    let first_epoch_after = ev[second..].iter().find(|e| e["type"] == "epoch").expect("epochs after resume");
    assert_eq!(first_epoch_after["data"]["stage"], "finetune", "{first_epoch_after}");
    let p = c.post(format!("{base}/v1/predict")).header("content-type", "image/png").body(image_bytes(true, 1, false));
    assert_eq!(p.send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_stage_two_resumes_sqlite() {
    kill_during_stage_two(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_stage_two_resumes_postgres() {
    kill_during_stage_two(Db::Postgres).await;
}

/// SIGKILL in the middle of a stage-2 epoch with mid-epoch checkpoints on:
/// the restarted service continues inside that epoch, at the batch after the
/// last mid-epoch checkpoint, instead of redoing the epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_inside_an_epoch_resumes_at_the_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    let url = database_url(Db::Sqlite, dir.path()).await;
    let c = reqwest::Client::new();
    // A mid-epoch checkpoint after every batch (~6 ms apart).
    let every = ["--checkpoint-minutes", "0.0001"];
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_with(dir.path(), port, &url, &every);
    wait_up(&c, &base).await;
    let ds: Value = dataset_upload(&c, &base, two_class_zip("", 40, 4))
        .send().await.unwrap().json().await.unwrap();
    let mut spec = tiny_job(ds["id"].as_str().expect("dataset created"), 1, 2);
    spec["hyperparameters"]["batch_size"] = json!(4); // 20 batches per epoch
    let created: Value = c.post(format!("{base}/v1/jobs")).json(&spec).send().await.unwrap().json().await.unwrap();
    let id = created["id"].as_str().expect("job created").to_string();

    // Kill once stage 2's first epoch is a few batches in (its partial checkpoint on disk).
    let partial = dir.path().join("jobs").join(&id).join(".partial");
    let t0 = Instant::now();
    let killed_at = loop {
        let j = job(&c, &base, &id).await;
        assert_ne!(j["status"], "succeeded", "the job finished before the kill: {j}");
        let step = j["step"].as_i64().unwrap_or(0);
        if j["stage"] == "finetune" && j["epoch"] == 1 && (3..18).contains(&step) && partial.join("progress.json").exists() {
            break step;
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "stage 2 never got going: {j}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let progress: Value = serde_json::from_slice(&std::fs::read(partial.join("progress.json")).unwrap()).unwrap();
    let saved = progress["steps_done"].as_i64().expect("steps_done in the partial checkpoint");
    assert_eq!(progress["epoch"], 1, "{progress}");

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _child = spawn_with(dir.path(), port, &url, &every);
    wait_up(&c, &base).await;
    let j = wait_ended(&c, &base, &id, Duration::from_secs(300)).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    let ev: Value = c.get(format!("{base}/v1/jobs/{id}/events?limit=1000")).send().await.unwrap().json().await.unwrap();
    let ev = ev["data"].as_array().unwrap();
    let second = ev.iter().rposition(|e| e["type"] == "status" && e["data"]["status"] == "running").unwrap();
    let after = &ev[second..];
    let note = format!("resuming stage 2 inside epoch 1 after {saved} batches");
    assert!(
        after.iter().any(|e| e["data"]["text"].as_str().is_some_and(|t| t.starts_with(&note))),
        "no '{note}' (killed at step {killed_at}): {after:?}"
    );
    // The first batch run after the restart is the one after the checkpoint.
    let first = after.iter().find(|e| e["type"] == "progress").expect("progress after the restart");
    assert_eq!((first["data"]["stage"].as_str(), first["data"]["epoch"].as_i64()), (Some("finetune"), Some(1)), "{first}");
    assert_eq!(first["data"]["step"].as_i64(), Some(saved + 1), "{first}");
    assert!(!partial.exists(), "the partial checkpoint outlived its epoch");
}
