//! The whole story over HTTP on a tiny synthetic dataset, on SQLite and on
//! PostgreSQL: upload -> job -> live events -> succeeded -> checkpoints ->
//! model -> predict (raw, JSON base64, multipart; batched).

mod test_server;

use std::time::Duration;

use test_server::*;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn story(db: Db) {
    let srv = TestServer::start(db).await;

    // Upload (multipart), then inspect.
    let (s, ds) = srv.upload_zip(two_class_zip("synthetic/", 12, 4)).await;
    assert_eq!(s, StatusCode::CREATED, "{ds}");
    assert_eq!(ds["classes"], json!(["bright", "dark"]));
    assert_eq!(ds["counts"][0], json!({"class": "bright", "train": 12, "validation": 4}));
    assert_eq!(ds["has_validation"], json!(true));
    let ds_id = ds["id"].as_str().unwrap();
    let (s, list) = srv.get("/v1/datasets").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["data"][0]["id"], ds["id"]);

    // Predict before any model: 503.
    assert_error(&srv.post_bytes("/v1/predict", "image/png", image_bytes(true, 0, false)).await, 503, "no_model");

    // A job, followed live.
    let job_id = srv.create_tiny_job(ds_id, 2, 1).await;
    let events = read_sse(&srv.client, &srv.url(&format!("/v1/jobs/{job_id}/events?stream=true")), Duration::from_secs(600)).await;
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(events.first().map(|e| e.1["status"].clone()), Some(json!("queued")), "{kinds:?}");
    assert!(kinds.contains(&"progress"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "epoch").count(), 3, "{kinds:?}");
    assert!(kinds.contains(&"checkpoint"), "{kinds:?}");
    let last = events.last().unwrap();
    assert_eq!((last.0.as_str(), &last.1["status"]), ("status", &json!("succeeded")), "{events:?}");

    let job = srv.wait_job(&job_id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["stage"], "finetune");
    // The job shows the recipe it ran and every setting, set or not.
    let hp = &job["hyperparameters"];
    assert_eq!(
        (&hp["recipe"], &hp["image_size"], &hp["batch_size"], &hp["tta"], &hp["serving_precision"]),
        (&json!("standard"), &json!(71), &json!(8), &json!(false), &json!("f32")),
        "{hp}"
    );
    assert!(job["validation_metrics"]["accuracy"].is_number(), "{job}");
    let model_id = job["model_id"].as_str().unwrap().to_string();

    // Paged history.
    let (s, page) = srv.get(&format!("/v1/jobs/{job_id}/events?limit=2")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert_eq!(page["has_more"], json!(true));
    let (_, rest) = srv.get(&format!("/v1/jobs/{job_id}/events?after=2&limit=1000")).await;
    assert_eq!(rest["data"].as_array().unwrap().len() + 2, events.len());
    assert_eq!(rest["data"][0]["seq"], json!(3));

    // Checkpoints: stage 1's best and stage 2's, each downloadable.
    let (s, cks) = srv.get(&format!("/v1/jobs/{job_id}/checkpoints")).await;
    assert_eq!(s, StatusCode::OK);
    let cks = cks["data"].as_array().unwrap().clone();
    assert_eq!(cks.iter().filter(|c| c["stage"] == "frozen").count(), 1, "{cks:?}");
    assert_eq!(cks.iter().filter(|c| c["stage"] == "finetune").count(), 1, "{cks:?}");
    assert!(cks.iter().all(|c| c["validation_metrics"]["loss"].is_number()), "{cks:?}");
    let url = srv.url(cks[0]["download_url"].as_str().unwrap());
    let tar_bytes = srv.client.get(url).send().await.unwrap().bytes().await.unwrap();
    let mut ar = tar::Archive::new(&tar_bytes[..]);
    let mut names: Vec<String> = ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
    names.sort();
    assert_eq!(names, ["meta.json", "model.safetensors"]);

    // The job list and the model.
    let (_, jobs) = srv.get("/v1/jobs").await;
    assert_eq!(jobs["data"][0]["id"], json!(job_id));
    let (_, models) = srv.get("/v1/models").await;
    assert_eq!(models["data"][0]["id"], json!(model_id));
    assert_eq!(models["data"][0]["is_default"], json!(true));
    assert_eq!(models["data"][0]["classes"], json!(["bright", "dark"]));

    // Export: ONNX (the default) and safetensors; tests/export.rs checks the numbers.
    let r = srv.client.get(srv.url(&format!("/v1/models/{model_id}/export"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let disposition = r.headers()["content-disposition"].to_str().unwrap().to_string();
    assert!(disposition.ends_with(".onnx\""), "{disposition}");
    let onnx = r.bytes().await.unwrap();
    // ModelProto field 1 (ir_version 8) comes first.
    assert_eq!(&onnx[..2], &[0x08, 8], "not an ONNX model");
    let r = srv.client.get(srv.url(&format!("/v1/models/{model_id}/export?format=safetensors"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let tensors = candle_core::safetensors::load_buffer(&r.bytes().await.unwrap(), &candle_core::Device::Cpu).unwrap();
    assert_eq!(tensors["head.bias"].dims(), &[1]);
    let r = srv.client.get(srv.url(&format!("/v1/models/{model_id}/export?format=keras"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let keras = r.bytes().await.unwrap();
    let names: Vec<String> = zip::ZipArchive::new(std::io::Cursor::new(keras.to_vec())).unwrap().file_names().map(str::to_string).collect();
    assert!(names.iter().any(|n| n == "config.json") && names.iter().any(|n| n == "model.weights.h5"), "{names:?}");
    assert_error(&srv.get(&format!("/v1/models/{model_id}/export?format=keras2")).await, 400, "invalid_query");
    let unknown = "00000000-0000-0000-0000-000000000000";
    assert_error(&srv.get(&format!("/v1/models/{unknown}/export")).await, 404, "model_not_found");

    // Predict: raw body, JSON base64 (two images), multipart (two images).
    let (s, p) = srv.post_bytes("/v1/predict", "image/png", image_bytes(true, 3, false)).await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["model"], json!(model_id));
    check_prediction(&p["predictions"][0]);

    let b64 = |b: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(b);
    let body = json!({"images": [b64(image_bytes(true, 5, true)), format!("data:image/png;base64,{}", b64(image_bytes(false, 5, false)))]});
    let (s, p) = srv.post_json("/v1/predict", body).await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["predictions"].as_array().unwrap().len(), 2);

    let form = reqwest::multipart::Form::new()
        .part("image", reqwest::multipart::Part::bytes(image_bytes(false, 7, true)).file_name("a.jpg"))
        .part("image", reqwest::multipart::Part::bytes(image_bytes(true, 7, false)).file_name("b.png"));
    let r = srv.client.post(srv.url(&format!("/v1/models/{model_id}/predict"))).multipart(form).send().await.unwrap();
    let (s, p) = json_of(r).await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["predictions"].as_array().unwrap().len(), 2);
    for x in p["predictions"].as_array().unwrap() {
        check_prediction(x);
    }

    // Test-time mirroring per request: off by default for this model, on
    // when asked (other logits for these asymmetric images); a bad value is 400.
    let raw = image_bytes(true, 11, false);
    let logit = |p: &Value| p["predictions"][0]["logits"][0].as_f64().unwrap();
    let (s, plain) = srv.post_bytes("/v1/predict", "image/png", raw.clone()).await;
    assert_eq!((s, &plain["tta"]), (StatusCode::OK, &json!(false)), "{plain}");
    let (s, mirrored) = srv.post_bytes("/v1/predict?tta=true", "image/png", raw.clone()).await;
    assert_eq!((s, &mirrored["tta"]), (StatusCode::OK, &json!(true)), "{mirrored}");
    assert!((logit(&plain) - logit(&mirrored)).abs() > 1e-6, "{plain} {mirrored}");
    assert_error(&srv.post_bytes("/v1/predict?tta=maybe", "image/png", raw).await, 400, "invalid_query");

    // Recipes: the notebook's fills unset fields with its own values.
    let (s, nb) = srv.post_json("/v1/jobs", json!({"dataset_id": ds_id, "variant": "tiny", "hyperparameters": {"recipe": "notebook", "frozen_epochs": 1}})).await;
    assert_eq!(s, StatusCode::CREATED, "{nb}");
    let hp = &nb["hyperparameters"];
    assert_eq!((&hp["recipe"], &hp["image_size"], &hp["frozen_epochs"], &hp["finetune_epochs"]), (&json!("notebook"), &json!(150), &json!(1), &json!(10)), "{hp}");
    let nb_id = nb["id"].as_str().unwrap();
    let (s, _) = srv.post_json(&format!("/v1/jobs/{nb_id}/cancel"), json!({})).await;
    assert_eq!(s, StatusCode::OK);
    srv.wait_job(nb_id, Duration::from_secs(60)).await;

    // Concurrent requests are all answered (and batched together).
    let mut tasks = Vec::new();
    for i in 0..16 {
        let c = srv.client.clone();
        let url = srv.url("/v1/predict");
        tasks.push(tokio::spawn(async move {
            c.post(url).header("content-type", "image/png").body(image_bytes(i % 2 == 0, i, false)).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }

    // Cancel of the finished job: 409.
    assert_error(&srv.post_json(&format!("/v1/jobs/{job_id}/cancel"), json!({})).await, 409, "job_finished");

    // A dataset in use by no active job can be deleted.
    let r = srv.client.delete(srv.url(&format!("/v1/datasets/{ds_id}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_error(&srv.get(&format!("/v1/datasets/{ds_id}")).await, 404, "dataset_not_found");
    srv.stop().await;
}

fn check_prediction(p: &Value) {
    let logits = p["logits"].as_array().unwrap();
    assert!(!logits.is_empty() && logits.iter().all(|l| l.as_f64().is_some_and(f64::is_finite)), "{p}");
    let probs = p["probabilities"].as_object().unwrap();
    assert_eq!(probs.keys().collect::<Vec<_>>(), ["bright", "dark"]);
    let sum: f64 = probs.values().map(|v| v.as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-4, "{p}");
    assert!(matches!(p["label"].as_str(), Some("bright" | "dark")), "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_sqlite() {
    story(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_postgres() {
    story(Db::Postgres).await;
}
