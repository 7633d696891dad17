//! The catalogue of bad inputs: each expects its status and the error shape,
//! then proves the server still answers and nothing stored was lost. Every
//! case runs on SQLite and on PostgreSQL.

mod test_server;

use std::time::Duration;

use test_server::*;
use serde_json::json;

/// A server holding one good dataset (whose survival each case checks).
async fn setup(db: Db, tweak: impl FnOnce(&mut tuneserve::config::ServeConfig)) -> (TestServer, String) {
    let srv = TestServer::start_with(db, tweak).await;
    let id = srv.good_dataset().await;
    (srv, id)
}

fn dataset_count(v: &serde_json::Value) -> usize {
    v["data"].as_array().map(|a| a.len()).unwrap_or(0)
}

async fn zip_slip(db: Db) {
    let (srv, good) = setup(db, |_| {}).await;
    let mut e = two_class_entries("", 3, 0);
    e.push(("train/bright/../../../../escaped.png".into(), image_bytes(true, 0, false)));
    assert_error(&srv.upload_zip(zip_of(&e)).await, 422, "unsafe_path");
    let mut e = two_class_entries("", 3, 0);
    e.push(("/etc/absolute.png".into(), image_bytes(true, 0, false)));
    assert_error(&srv.upload_zip(zip_of(&e)).await, 422, "unsafe_path");
    // The same in a tar (the raw header name, which tar::Builder would refuse to write).
    let mut t = tar::Builder::new(Vec::new());
    for (n, b) in two_class_entries("", 3, 0) {
        let mut h = tar::Header::new_ustar();
        h.set_size(b.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, n, &b[..]).unwrap();
    }
    let evil = image_bytes(true, 0, false);
    let mut h = tar::Header::new_old();
    let name = b"../../escaped.png";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(evil.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    t.append(&h, &evil[..]).unwrap();
    assert_error(&srv.post_bytes("/v1/datasets", "application/x-tar", t.into_inner().unwrap()).await, 422, "unsafe_path");
    srv.assert_alive(Some(&good)).await;
    // Nothing escaped into the data dir or its parents, nothing half-made stayed.
    assert!(!srv.dir.path().join("escaped.png").exists());
    assert!(!srv.dir.path().parent().unwrap().join("escaped.png").exists());
    assert_eq!(std::fs::read_dir(srv.dir.path().join("staging")).unwrap().count(), 0);
    assert_eq!(dataset_count(&srv.get("/v1/datasets").await.1), 1);
}

async fn symlink_entry(db: Db) {
    let (srv, good) = setup(db, |_| {}).await;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o = zip::write::SimpleFileOptions::default();
    for (n, b) in two_class_entries("", 2, 0) {
        w.start_file(n, o).unwrap();
        std::io::Write::write_all(&mut w, &b).unwrap();
    }
    w.add_symlink("train/bright/link.png", "/etc/passwd", o).unwrap();
    let z = w.finish().unwrap().into_inner();
    assert_error(&srv.upload_zip(z).await, 422, "link_entry");
    // A tar symlink and a hard link.
    for kind in [tar::EntryType::Symlink, tar::EntryType::Link] {
        let mut t = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o777);
        t.append_link(&mut h, "train/bright/link.png", "/etc/passwd").unwrap();
        assert_error(&srv.post_bytes("/v1/datasets", "application/x-tar", t.into_inner().unwrap()).await, 422, "link_entry");
    }
    srv.assert_alive(Some(&good)).await;
}

async fn zip_bomb(db: Db) {
    // 64 MiB of zeros deflate to ~64 KiB; the server allows 16 MiB expanded.
    let (srv, good) = setup(db, |c| c.max_uncompressed_bytes = 16 << 20).await;
    let mut e = two_class_entries("", 2, 0);
    e.push(("train/bright/bomb.png".into(), vec![0u8; 64 << 20]));
    let z = zip_of(&e);
    assert!(z.len() < 1 << 20);
    assert_error(&srv.upload_zip(z).await, 413, "archive_too_large");
    // The same as tar.gz.
    let mut tgz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    {
        let mut t = tar::Builder::new(&mut tgz);
        let mut h = tar::Header::new_gnu();
        h.set_size(64 << 20);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, "train/bright/bomb.png", std::io::Read::take(std::io::repeat(0), 64 << 20)).unwrap();
        t.finish().unwrap();
    }
    let tgz = tgz.finish().unwrap();
    assert_error(&srv.post_bytes("/v1/datasets", "application/gzip", tgz).await, 413, "archive_too_large");
    srv.assert_alive(Some(&good)).await;
}

async fn too_many_entries(db: Db) {
    let (srv, good) = setup(db, |c| c.max_archive_entries = 35).await;
    let z = two_class_zip("", 20, 0);
    assert_error(&srv.upload_zip(z).await, 413, "too_many_entries");
    srv.assert_alive(Some(&good)).await;
}

async fn bad_images_in_dataset_are_reported(db: Db) {
    // A truncated JPEG, a text file named .jpg and a 30000x30000 PNG header
    // inside an otherwise good dataset: skipped and reported, upload succeeds.
    let srv = TestServer::start(db).await;
    let mut e = two_class_entries("", 4, 0);
    e.push(("train/bright/truncated.jpg".into(), truncated_jpeg()));
    e.push(("train/dark/notes.jpg".into(), b"this is plain text, not a JPEG\n".to_vec()));
    e.push(("train/dark/huge.png".into(), png_declaring(30000, 30000)));
    e.push(("README.txt".into(), b"hello".to_vec()));
    let (s, v) = srv.upload_zip(zip_of(&e)).await;
    assert_eq!(s.as_u16(), 201, "{v}");
    assert_eq!(v["counts"][0]["train"], json!(4));
    let rejected = v["rejected"].as_array().unwrap();
    let reason = |p: &str| {
        rejected.iter().find(|r| r["path"] == p).map(|r| r["reason"].as_str().unwrap().to_string()).unwrap_or_default()
    };
    assert!(reason("train/bright/truncated.jpg").contains("corrupt"), "{rejected:?}");
    assert!(reason("train/dark/notes.jpg").contains("not an image"), "{rejected:?}");
    assert!(reason("train/dark/huge.png").contains("too large"), "{rejected:?}");
    assert!(!reason("README.txt").is_empty(), "{rejected:?}");
    let (_, again) = srv.get(&format!("/v1/datasets/{}", v["id"].as_str().unwrap())).await;
    assert_eq!(again["rejected"].as_array().unwrap().len(), rejected.len());
}

async fn empty_class(db: Db) {
    let (srv, good) = setup(db, |_| {}).await;
    let mut e: Vec<_> = (0..3).map(|i| (format!("bright/{i}.png"), image_bytes(true, i, false))).collect();
    e.push(("dark/only-text.jpg".into(), b"not an image".to_vec()));
    let got = srv.upload_zip(zip_of(&e)).await;
    assert_error(&got, 422, "invalid_dataset");
    assert!(got.1["error"]["message"].as_str().unwrap().contains("dark"));
    srv.assert_alive(Some(&good)).await;
}

async fn one_class(db: Db) {
    let (srv, good) = setup(db, |_| {}).await;
    let e: Vec<_> = (0..3).map(|i| (format!("pets/cats/{i}.png"), image_bytes(true, i, false))).collect();
    assert_error(&srv.upload_zip(zip_of(&e)).await, 422, "invalid_dataset");
    srv.assert_alive(Some(&good)).await;
}

async fn zero_byte_upload(db: Db) {
    let (srv, good) = setup(db, |_| {}).await;
    assert_error(&srv.post_bytes("/v1/datasets", "application/zip", vec![]).await, 400, "empty_upload");
    assert_error(&srv.upload_zip(vec![]).await, 400, "empty_upload");
    srv.assert_alive(Some(&good)).await;
}

async fn not_an_archive(db: Db) {
    let (srv, good) = setup(db, |_| {}).await;
    assert_error(&srv.post_bytes("/v1/datasets", "application/zip", b"hello, not a zip".to_vec()).await, 415, "unsupported_archive");
    // A damaged zip (central directory cut off).
    let z = two_class_zip("", 2, 0);
    assert_error(&srv.post_bytes("/v1/datasets", "application/zip", z[..z.len() - 30].to_vec()).await, 422, "corrupt_archive");
    // A tar header whose checksum does not match (was a 500 until fuzzing found it).
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_path("cats/0.jpg").unwrap();
    h.set_size(3);
    h.set_cksum();
    t.append(&h, &b"abc"[..]).unwrap();
    let mut t = t.into_inner().unwrap();
    t[0] = b'd';
    assert_error(&srv.post_bytes("/v1/datasets", "application/x-tar", t).await, 422, "corrupt_archive");
    srv.assert_alive(Some(&good)).await;
}

async fn oversized_body(db: Db) {
    let (srv, good) = setup(db, |c| {
        c.max_dataset_bytes = 64 << 10;
        c.max_predict_bytes = 8 << 10;
    })
    .await;
    let big = two_class_zip("", 200, 0);
    assert!(big.len() > 64 << 10);
    assert_error(&srv.post_bytes("/v1/datasets", "application/zip", big.clone()).await, 413, "body_too_large");
    assert_error(&srv.upload_zip(big.clone()).await, 413, "body_too_large");
    // Chunked (no Content-Length): counted while streaming.
    let stream = futures::stream::iter(big.chunks(4096).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>());
    let r = srv
        .client
        .post(srv.url("/v1/datasets"))
        .header("content-type", "application/zip")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_error(&json_of(r).await, 413, "body_too_large");
    assert_error(&srv.post_bytes("/v1/predict", "image/png", vec![0u8; 9 << 10]).await, 413, "body_too_large");
    srv.assert_alive(Some(&good)).await;
    assert_eq!(dataset_count(&srv.get("/v1/datasets").await.1), 1);
}

async fn wrong_content_type(db: Db) {
    let (srv, good) = setup(db, |_| {}).await;
    assert_error(&srv.post_bytes("/v1/datasets", "text/plain", b"x".to_vec()).await, 415, "unsupported_media_type");
    let body = serde_json::to_vec(&tiny_job(&good, 1, 0)).unwrap();
    assert_error(&srv.post_bytes("/v1/jobs", "text/plain", body).await, 415, "unsupported_media_type");
    srv.assert_alive(Some(&good)).await;
}

async fn malformed_json(db: Db) {
    let (srv, good) = setup(db, |_| {}).await;
    assert_error(&srv.post_bytes("/v1/jobs", "application/json", b"{\"dataset_id\": ".to_vec()).await, 400, "malformed_json");
    // Well-formed, wrong shape: 422.
    assert_error(&srv.post_json("/v1/jobs", json!({"dataset": good})).await, 422, "invalid_request");
    let mut bad = tiny_job(&good, 1, 0);
    bad["hyperparameters"]["batch_size"] = json!(0);
    assert_error(&srv.post_json("/v1/jobs", bad).await, 422, "invalid_hyperparameters");
    let mut bad = tiny_job(&good, 1, 0);
    bad["hyperparameters"]["serving_precision"] = json!("fp8");
    assert_error(&srv.post_json("/v1/jobs", bad).await, 422, "invalid_request");
    assert_error(&srv.post_json("/v1/jobs", json!({"dataset_id": good})).await, 422, "weights_missing");
    srv.assert_alive(Some(&good)).await;
    assert_eq!(srv.get("/v1/jobs").await.1["data"], json!([]));
}

async fn unknown_ids(db: Db) {
    let (srv, good) = setup(db, |_| {}).await;
    let u = uuid::Uuid::new_v4();
    assert_error(&srv.get(&format!("/v1/datasets/{u}")).await, 404, "dataset_not_found");
    assert_error(&srv.get("/v1/datasets/..%2F..%2Fetc").await, 404, "dataset_not_found");
    assert_error(&srv.get(&format!("/v1/jobs/{u}")).await, 404, "job_not_found");
    assert_error(&srv.get(&format!("/v1/jobs/{u}/events")).await, 404, "job_not_found");
    assert_error(&srv.get(&format!("/v1/jobs/{u}/checkpoints")).await, 404, "job_not_found");
    assert_error(&srv.post_json(&format!("/v1/jobs/{u}/cancel"), json!({})).await, 404, "job_not_found");
    assert_error(&srv.get(&format!("/v1/checkpoints/{u}/download")).await, 404, "checkpoint_not_found");
    assert_error(&srv.get(&format!("/v1/models/{u}")).await, 404, "model_not_found");
    assert_error(&srv.post_bytes(&format!("/v1/models/{u}/predict"), "image/png", image_bytes(true, 0, false)).await, 404, "model_not_found");
    assert_error(&srv.post_json("/v1/jobs", tiny_job(&u.to_string(), 1, 0)).await, 404, "dataset_not_found");
    assert_error(&srv.get("/v1/jobs?after=nope").await, 400, "invalid_cursor");
    assert_error(&srv.get("/v1/nothing-here").await, 404, "route_not_found");
    let r = srv.client.delete(srv.url(&format!("/v1/datasets/{u}"))).send().await.unwrap();
    assert_error(&json_of(r).await, 404, "dataset_not_found");
    srv.assert_alive(Some(&good)).await;
}

async fn cancel_finished_job(db: Db) {
    let (srv, good) = setup(db, |_| {}).await;
    let id = srv.create_tiny_job(&good, 1, 0).await;
    let j = srv.wait_job(&id, Duration::from_secs(300)).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    assert_error(&srv.post_json(&format!("/v1/jobs/{id}/cancel"), json!({})).await, 409, "job_finished");
    srv.assert_alive(Some(&good)).await;
    assert_eq!(srv.get(&format!("/v1/jobs/{id}")).await.1["status"], "succeeded");
}

async fn predict_without_model(db: Db) {
    let (srv, good) = setup(db, |_| {}).await;
    assert_error(&srv.post_bytes("/v1/predict", "image/png", image_bytes(true, 0, false)).await, 503, "no_model");
    srv.assert_alive(Some(&good)).await;
}

async fn bad_predict_images(db: Db) {
    // Needs a model: train a tiny one.
    let (srv, good) = setup(db, |_| {}).await;
    let id = srv.create_tiny_job(&good, 1, 0).await;
    assert_eq!(srv.wait_job(&id, Duration::from_secs(300)).await["status"], "succeeded");
    assert_error(&srv.post_bytes("/v1/predict", "image/jpeg", truncated_jpeg()).await, 422, "corrupt_image");
    assert_error(&srv.post_bytes("/v1/predict", "image/jpeg", b"just some text\n".to_vec()).await, 415, "not_an_image");
    assert_error(&srv.post_bytes("/v1/predict", "image/png", png_declaring(30000, 30000)).await, 422, "image_too_large");
    assert_error(&srv.post_bytes("/v1/predict", "text/plain", b"x".to_vec()).await, 415, "unsupported_media_type");
    assert_error(&srv.post_bytes("/v1/predict", "image/png", vec![]).await, 400, "no_images");
    assert_error(&srv.post_json("/v1/predict", json!({"image": "***not base64***"})).await, 400, "invalid_base64");
    assert_error(&srv.post_bytes("/v1/predict", "application/json", b"{\"image\": ".to_vec()).await, 400, "malformed_json");
    // Still serving.
    let (s, p) = srv.post_bytes("/v1/predict", "image/png", image_bytes(true, 0, false)).await;
    assert_eq!(s.as_u16(), 200, "{p}");
    srv.assert_alive(Some(&good)).await;
}

async fn wrong_api_key(db: Db) {
    let (srv, good) = {
        let srv = TestServer::start_with(db, |c| c.api_key = Some("s3cret".into())).await;
        let r = srv
            .dataset_upload(two_class_zip("", 4, 0))
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap();
        let (s, v) = json_of(r).await;
        assert_eq!(s.as_u16(), 201, "{v}");
        (srv, v["id"].as_str().unwrap().to_string())
    };
    let attempt = |key: Option<&'static str>| {
        let mut rb = srv.client.delete(srv.url(&format!("/v1/datasets/{good}")));
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        async move { json_of(rb.send().await.unwrap()).await }
    };
    let got = attempt(Some("wrong")).await;
    assert_error(&got, 401, "unauthorized");
    assert_error(&attempt(None).await, 401, "unauthorized");
    assert_error(&srv.post_json("/v1/jobs", tiny_job(&good, 1, 0)).await, 401, "unauthorized");
    // Reads need the key too; with it, the dataset survived.
    assert_error(&srv.get(&format!("/v1/datasets/{good}")).await, 401, "unauthorized");
    let r = srv.client.get(srv.url(&format!("/v1/datasets/{good}"))).bearer_auth("s3cret").send().await.unwrap();
    let (s, v) = json_of(r).await;
    assert_eq!(s.as_u16(), 200, "{v}");
    assert_eq!(v["classes"], json!(["bright", "dark"]));
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Db::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Db::Postgres).await })*
        }
    };
}

both!(
    zip_slip,
    symlink_entry,
    zip_bomb,
    too_many_entries,
    bad_images_in_dataset_are_reported,
    empty_class,
    one_class,
    zero_byte_upload,
    not_an_archive,
    oversized_body,
    wrong_content_type,
    malformed_json,
    unknown_ids,
    cancel_finished_job,
    predict_without_model,
    bad_predict_images,
    wrong_api_key,
);
