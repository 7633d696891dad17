//! The web page in a real browser: Debian's chromium driven through
//! chromedriver (WebDriver, via fantoccini) against the real server started
//! in-process on 127.0.0.1:0 with a temporary data directory.
//!
//! Needs `chromium` and `chromedriver` on PATH (`apt-get install -y chromium
//! chromium-driver`); the tests fail, never skip, without them. Override the
//! binaries with CHROMEDRIVER / CHROMIUM. Screenshots go to
//! `<target>/test-artifacts/` (or TUNESERVE_TEST_ARTIFACTS).

mod test_server;

use std::future::Future;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use test_server::{zip_of, Db, TestServer};
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use serde_json::{json, Value};

const APT_HINT: &str = "install them with `apt-get update && apt-get install -y chromium chromium-driver` \
                        (.ci/run does this); the browser tests do not skip";

/// One browser test at a time: each runs a chromium, and one of them trains.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ------------------------------------------------------------------ browser

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn binary(env: &str, names: &[&str]) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{env}={} does not exist; {APT_HINT}", p.display());
        return p;
    }
    names
        .iter()
        .find_map(|n| which(n))
        .unwrap_or_else(|| panic!("{} not found on PATH (nor set in {env}): {APT_HINT}", names.join(" / ")))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// chromedriver as a child process, killed on drop.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
    chromium: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver() -> Driver {
    let driver = binary("CHROMEDRIVER", &["chromedriver"]);
    let chromium = binary("CHROMIUM", &["chromium", "chromium-browser", "google-chrome"]);
    let port = free_port();
    let child = Command::new(&driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {}: {e}; {APT_HINT}", driver.display()));
    let d = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _profile: tempfile::tempdir().unwrap(),
        chromium,
    };
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(20), "chromedriver did not listen on port {port} within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d
}

async fn open_browser(d: &Driver, width: u32, height: u32) -> Client {
    let args = vec![
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--disable-dev-shm-usage".into(),
        "--hide-scrollbars".into(),
        format!("--window-size={width},{height}"),
        format!("--user-data-dir={}", d._profile.path().display()),
    ];
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "args": args, "binary": d.chromium.to_string_lossy() }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&d.url)
        .await
        .unwrap_or_else(|e| panic!("chromedriver at {} could not start chromium {}: {e}", d.url, d.chromium.display()))
}

/// Runs `body` with a fresh browser, then closes the browser whatever happened
/// (a panicking test must not leave a chromium behind).
async fn with_browser<F, Fut>(width: u32, height: u32, body: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = ()>,
{
    let driver = start_driver().await;
    let c = open_browser(&driver, width, height).await;
    let outcome = std::panic::AssertUnwindSafe(body(c.clone())).catch_unwind().await;
    if outcome.is_err() {
        let _ = save_screenshot(&c, &format!("failure-{}", std::process::id())).await;
    }
    let _ = c.close().await;
    drop(driver);
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
}

fn artifacts_dir() -> PathBuf {
    let dir = match std::env::var_os("TUNESERVE_TEST_ARTIFACTS") {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
            .join("test-artifacts"),
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn save_screenshot(c: &Client, name: &str) -> PathBuf {
    let png = c.screenshot().await.expect("screenshot");
    let path = artifacts_dir().join(format!("web-{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
    path
}

/// Polls a JavaScript expression until it is truthy; returns its value.
async fn wait_for(c: &Client, expr: &str, timeout: Duration, what: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let v = c.execute(&format!("return ({expr});"), vec![]).await.expect("execute script");
        let truthy = match &v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::String(s) => !s.is_empty(),
            Value::Number(n) => n.as_f64() != Some(0.0),
            _ => true,
        };
        if truthy {
            return v;
        }
        if t0.elapsed() > timeout {
            let _ = save_screenshot(c, &format!("timeout-{}", what.replace(' ', "-"))).await;
            let page = js_string(c, "document.querySelector('main').innerText").await;
            panic!("timed out after {timeout:?} waiting for {what} ({expr}); page text:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

async fn js_string(c: &Client, expr: &str) -> String {
    match c.execute(&format!("return ({expr});"), vec![]).await {
        Ok(Value::String(s)) => s,
        Ok(v) => v.to_string(),
        Err(e) => format!("<script failed: {e}>"),
    }
}

async fn open_page(c: &Client, s: &TestServer) {
    c.goto(&s.url("/")).await.expect("open the page");
    wait_for(c, "document.body.dataset.ready === 'true'", Duration::from_secs(20), "the page script").await;
}

async fn set_value(c: &Client, css: &str, value: &str) {
    let e = c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

async fn start_server(api_key: Option<&str>) -> TestServer {
    let key = api_key.map(str::to_string);
    TestServer::start_with(Db::Sqlite, move |cfg| {
        cfg.api_key = key;
    })
    .await
}

// ------------------------------------------------------------------ data

/// 71x71: red horizontal bars (`red_h`) or green vertical bars (`green_v`),
/// with the phase, period and background varied by `seed`.
fn bars_png(red_horizontal: bool, seed: u32) -> Vec<u8> {
    let period = 6 + seed % 5;
    let phase = seed * 3;
    // The classes also differ in background brightness: the tiny seeded
    // network learns that within a few epochs, colour and orientation alone
    // take it longer.
    let bg = if red_horizontal { 190 } else { 25 } + (seed * 37 % 30) as u8;
    let img = image::RgbImage::from_fn(71, 71, |x, y| {
        let t = if red_horizontal { y } else { x };
        let on = (t + phase) % period < period / 2;
        match (on, red_horizontal) {
            (true, true) => image::Rgb([230, 30 + (x % 7) as u8 * 4, 30]),
            (true, false) => image::Rgb([30, 200 + (y % 7) as u8 * 4, 40]),
            (false, _) => image::Rgb([bg, bg, bg]),
        }
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// 20 training + 10 validation images per class, plus one broken file the
/// server must list as rejected.
fn bars_zip() -> Vec<u8> {
    let mut e = Vec::new();
    for (split, n, base) in [("train", 20, 0), ("validation", 10, 100)] {
        for i in 0..n {
            e.push((format!("bars/{split}/red_h/r{i:02}.png"), bars_png(true, base + i)));
            e.push((format!("bars/{split}/green_v/g{i:02}.png"), bars_png(false, base + i)));
        }
    }
    e.push(("bars/train/red_h/broken.png".to_string(), b"this is not a PNG".to_vec()));
    zip_of(&e)
}

fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

// ------------------------------------------------------------------ tests

/// Upload, inspect, train live, watch the curves, predict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_trains_and_predicts_in_a_real_browser() {
    let _serial = SERIAL.lock().await;
    let server = start_server(None).await;
    let files = tempfile::tempdir().unwrap();
    let zip = write_temp(files.path(), "bars.zip", &bars_zip());
    let red = bars_png(true, 999);
    let red_path = write_temp(files.path(), "red-bars.png", &red);
    const FROZEN: usize = 8;
    const FINETUNE: usize = 1;

    with_browser(1280, 1500, |c| async move {
        open_page(&c, &server).await;

        // Dataset: upload through the real file input behind the drop zone.
        c.find(Locator::Css("#dataset-file")).await.unwrap().send_keys(&zip).await.unwrap();
        wait_for(&c, "document.querySelector('#class-table')", Duration::from_secs(60), "the dataset summary").await;
        let table = js_string(&c, "document.querySelector('#class-table').innerText").await;
        assert!(table.contains("red_h") && table.contains("green_v"), "classes missing: {table}");
        let rows = c
            .execute(
                "return [...document.querySelectorAll('#class-table tbody tr')].map(r => [...r.cells].map(x => x.innerText.trim()));",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(rows, json!([["green_v", "20", "10"], ["red_h", "20", "10"]]), "counts per class and split");
        let rejected = js_string(&c, "document.querySelector('#rejected').innerText").await;
        assert!(rejected.contains("1 file left out") && rejected.contains("broken.png"), "rejected list: {rejected}");
        let selected = js_string(&c, "document.querySelector('#dataset-select').value").await;
        assert!(!selected.is_empty(), "the new dataset is selected");

        // Hyper-parameters: tiny variant, few epochs, small images.
        c.find(Locator::Css("#variant")).await.unwrap().select_by_value("tiny").await.unwrap();
        set_value(&c, "#frozen_epochs", &FROZEN.to_string()).await;
        set_value(&c, "#finetune_epochs", &FINETUNE.to_string()).await;
        set_value(&c, "#frozen_lr", "0.01").await;
        set_value(&c, "#finetune_lr", "0.0001").await;
        set_value(&c, "#batch_size", "8").await;
        set_value(&c, "#image_size", "71").await;
        c.find(Locator::Css("#start-job")).await.unwrap().click().await.unwrap();

        // The job shows the recipe it runs and the settings it resolved to.
        wait_for(&c, "document.querySelector('#live-recipe').textContent !== '–'", Duration::from_secs(30), "the job's recipe line").await;
        let recipe = js_string(&c, "document.querySelector('#live-recipe').textContent").await;
        assert!(recipe.starts_with("standard: 71 px") && recipe.contains("test-time mirroring off"), "recipe line: {recipe}");

        // Live: the first epoch arrives over SSE and is drawn.
        wait_for(
            &c,
            "Number(document.querySelector('#live-body').dataset.epochsDone || 0) >= 1",
            Duration::from_secs(300),
            "the first epoch",
        )
        .await;
        save_screenshot(&c, "training").await;

        // A fresh load opens on this job (running, or just finished: the tiny
        // job is quick), live; the idle upload panel shows no progress bar.
        let job_id = js_string(&c, "document.querySelector('#live-id').textContent").await;
        c.refresh().await.unwrap();
        wait_for(
            &c,
            &format!("document.body.dataset.ready === 'true' && !document.querySelector('#live-body').hidden \
                      && document.querySelector('#live-id').textContent === '{job_id}'"),
            Duration::from_secs(30),
            "the job on a fresh load",
        )
        .await;
        let upload_row = js_string(&c, "getComputedStyle(document.querySelector('#upload-row')).display").await;
        assert_eq!(upload_row, "none", "an idle upload panel shows an upload bar");

        wait_for(
            &c,
            "['succeeded','failed','cancelled'].includes(document.querySelector('#live-status').textContent)",
            Duration::from_secs(600),
            "the job to finish",
        )
        .await;
        let status = js_string(&c, "document.querySelector('#live-status').textContent").await;
        let err = js_string(&c, "document.querySelector('#live-error').textContent").await;
        assert_eq!(status, "succeeded", "job did not succeed: {err}");
        let epochs = FROZEN + FINETUNE;
        wait_for(&c, "!document.querySelector('#confusion').hidden", Duration::from_secs(30), "the confusion matrix").await;
        assert_eq!(
            js_string(&c, "document.querySelector('#live-body').dataset.epochsDone").await,
            epochs.to_string(),
            "every finished epoch is in the curves"
        );
        // Two series (train, validation) per chart, one dot per epoch.
        for chart in ["#chart-loss", "#chart-acc"] {
            let points = js_string(&c, &format!("document.querySelector('{chart}').dataset.points")).await;
            assert_eq!(points, (2 * epochs).to_string(), "{chart} points");
            let lines = js_string(&c, &format!("String(document.querySelectorAll('{chart} path.line').length)")).await;
            assert_eq!(lines, "2", "{chart} draws train and validation");
        }
        let confusion = c
            .execute(
                "return [...document.querySelectorAll('#confusion-table tbody td')].map(td => Number(td.innerText));",
                vec![],
            )
            .await
            .unwrap();
        let total: f64 = confusion.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).sum();
        assert_eq!(total, 20.0, "confusion matrix covers the 20 validation images: {confusion}");
        assert_eq!(js_string(&c, "document.querySelector('#live-progress').value").await, "100");
        // The jobs list shows it.
        wait_for(
            &c,
            "[...document.querySelectorAll('#jobs-table tbody .badge')].some(b => b.textContent === 'succeeded')",
            Duration::from_secs(20),
            "the job in the list",
        )
        .await;
        let result = js_string(&c, "document.querySelector('#live-result').textContent").await;
        eprintln!("{result}");

        // Predict one generated image through the page.
        c.find(Locator::Css("#predict-files")).await.unwrap().send_keys(&red_path).await.unwrap();
        let label = wait_for(
            &c,
            "document.querySelector('#predictions .pred-label')?.textContent",
            Duration::from_secs(60),
            "a prediction",
        )
        .await;
        let bars = js_string(&c, "String(document.querySelectorAll('#predictions .bars li').length)").await;
        assert_eq!(bars, "2", "one probability bar per class");
        let logits = js_string(&c, "document.querySelector('#predictions .logits').textContent").await;
        assert!(logits.starts_with("logits: ["), "{logits}");
        let thumb = js_string(&c, "String(document.querySelector('#predictions img.thumb').naturalWidth)").await;
        assert_eq!(thumb, "71", "thumbnail of the image");
        c.execute("document.querySelector('#predict').scrollIntoView({block: 'end'});", vec![]).await.unwrap();
        save_screenshot(&c, "prediction").await;

        // The page shows what the API answers for the same image.
        let api: Value = server
            .client
            .post(server.url("/v1/predict"))
            .header("content-type", "image/png")
            .body(red.clone())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(label, api["predictions"][0]["label"], "page and API agree");
        assert_eq!(label, json!("red_h"), "the trained model recognises red horizontal bars (result: {result})");

        // A fresh load with nothing running opens on the last finished job.
        c.refresh().await.unwrap();
        wait_for(
            &c,
            "document.querySelector('#live-status').textContent === 'succeeded' && !document.querySelector('#live-body').hidden",
            Duration::from_secs(30),
            "the finished job on a fresh load",
        )
        .await;

        // Readable at 360 px: nothing wider than the viewport.
        c.set_window_size(360, 1400).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let overflow = c
            .execute(
                "return {inner: window.innerWidth, scroll: document.documentElement.scrollWidth};",
                vec![],
            )
            .await
            .unwrap();
        eprintln!("narrow viewport: {overflow}");
        assert!(
            overflow["scroll"].as_i64() <= overflow["inner"].as_i64(),
            "the page scrolls sideways at a narrow width: {overflow}"
        );
        save_screenshot(&c, "narrow").await;
    })
    .await;
}

/// A file that is not an archive: the page shows the API's own message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_zip_shows_the_api_message() {
    let _serial = SERIAL.lock().await;
    let server = start_server(None).await;
    let files = tempfile::tempdir().unwrap();
    let junk = b"PK\x03\x04 definitely not a real zip archive".repeat(20);
    let path = write_temp(files.path(), "broken.zip", &junk);
    let part = reqwest::multipart::Part::bytes(junk.clone()).file_name("broken.zip");
    let form = reqwest::multipart::Form::new().part("file", part);
    let api: Value =
        server.client.post(server.url("/v1/datasets")).multipart(form).send().await.unwrap().json().await.unwrap();
    let message = api["error"]["message"].as_str().expect("an API error").to_string();

    with_browser(1024, 900, |c| async move {
        open_page(&c, &server).await;
        // The drop zone is reachable with Tab (a real file input) and shows a focus ring.
        for _ in 0..10 {
            if js_string(&c, "document.activeElement.id").await == "dataset-file" {
                break;
            }
            c.active_element().await.unwrap().send_keys("\u{E004}").await.unwrap();
        }
        assert_eq!(js_string(&c, "document.activeElement.id").await, "dataset-file", "Tab reaches the dataset drop zone");
        let ring = js_string(&c, "getComputedStyle(document.querySelector('label[for=dataset-file]')).outlineStyle").await;
        assert_ne!(ring, "none", "focused drop zone shows a focus ring");

        c.find(Locator::Css("#dataset-file")).await.unwrap().send_keys(&path).await.unwrap();
        let shown =
            wait_for(&c, "document.querySelector('#dataset-error').textContent", Duration::from_secs(30), "the error").await;
        let shown = shown.as_str().unwrap();
        assert!(shown.contains(&message), "page shows {shown:?}, API says {message:?}");
        assert!(js_string(&c, "String(document.querySelector('#dataset-error').hidden)").await == "false");
        save_screenshot(&c, "bad-zip").await;
    })
    .await;
}

/// The server goes away after the page loaded: a readable message, not a stack trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_shows_a_readable_message() {
    let _serial = SERIAL.lock().await;
    let server = start_server(None).await;
    let files = tempfile::tempdir().unwrap();
    let zip = write_temp(files.path(), "bars.zip", &bars_zip());
    let base = server.url("/");
    let driver = start_driver().await;
    let c = open_browser(&driver, 1024, 900).await;
    let run = async {
        c.goto(&base).await.unwrap();
        wait_for(&c, "document.body.dataset.ready === 'true'", Duration::from_secs(20), "the page script").await;
        let _ = server.stop().await;
        c.find(Locator::Css("#dataset-file")).await.unwrap().send_keys(&zip).await.unwrap();
        let shown =
            wait_for(&c, "document.querySelector('#dataset-error').textContent", Duration::from_secs(30), "the error").await;
        assert!(shown.as_str().unwrap().contains("Cannot reach the server"), "{shown}");
        // Refreshing the jobs list says the same.
        c.find(Locator::Css("#jobs-refresh")).await.unwrap().click().await.unwrap();
        let shown =
            wait_for(&c, "document.querySelector('#jobs-error').textContent", Duration::from_secs(30), "the jobs error").await;
        assert!(shown.as_str().unwrap().contains("Cannot reach the server"), "{shown}");
        save_screenshot(&c, "server-down").await;
    };
    let outcome = std::panic::AssertUnwindSafe(run).catch_unwind().await;
    let _ = c.close().await;
    drop(driver);
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
}

/// With an API key configured: the page asks for it (a form), says clearly
/// when it is wrong, and works once it is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_api_key_shows_a_readable_message() {
    let _serial = SERIAL.lock().await;
    let server = start_server(Some("right-key")).await;
    let files = tempfile::tempdir().unwrap();
    let zip = write_temp(files.path(), "bars.zip", &bars_zip());

    with_browser(1024, 900, |c| async move {
        open_page(&c, &server).await;
        c.find(Locator::Css("#dataset-file")).await.unwrap().send_keys(&zip).await.unwrap();
        // 401 without a key: the key form opens.
        wait_for(&c, "document.querySelector('#key-dialog').open", Duration::from_secs(30), "the key form").await;
        set_value(&c, "#key-input", "wrong-key").await;
        c.find(Locator::Css("#key-save")).await.unwrap().click().await.unwrap();
        // Refused: the form says so.
        let refused = wait_for(
            &c,
            "document.querySelector('#key-dialog').open && !document.querySelector('#key-error').hidden && document.querySelector('#key-error').textContent",
            Duration::from_secs(30),
            "the refusal in the key form",
        )
        .await;
        assert!(refused.as_str().unwrap().contains("wrong API key"), "{refused}");
        save_screenshot(&c, "wrong-key").await;
        c.find(Locator::Css("#key-cancel")).await.unwrap().click().await.unwrap();
        let shown =
            wait_for(&c, "document.querySelector('#dataset-error').textContent", Duration::from_secs(30), "the error").await;
        assert!(shown.as_str().unwrap().contains("Wrong API key"), "{shown}");

        // The right key: the upload goes through, and the key stays for this tab.
        c.find(Locator::Css("#key-button")).await.unwrap().click().await.unwrap();
        wait_for(&c, "document.querySelector('#key-dialog').open", Duration::from_secs(10), "the key form").await;
        set_value(&c, "#key-input", "right-key").await;
        c.find(Locator::Css("#key-save")).await.unwrap().click().await.unwrap();
        c.find(Locator::Css("#dataset-file")).await.unwrap().send_keys(&zip).await.unwrap();
        wait_for(&c, "document.querySelector('#class-table')", Duration::from_secs(60), "the dataset summary").await;
        assert_eq!(js_string(&c, "sessionStorage.getItem('tuneserve.apiKey')").await, "right-key");
        assert_eq!(js_string(&c, "String(document.querySelector('#dataset-error').hidden)").await, "true");
    })
    .await;
}
