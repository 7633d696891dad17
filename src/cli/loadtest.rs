//! `tuneserve loadtest`: closed-loop HTTP load on a running server's
//! /v1/predict. For each concurrency level, N clients send one image per
//! request back to back for a fixed time; prints one JSON line per level
//! (throughput, latency percentiles, 429s, errors, the server's RSS before,
//! after and sampled during the run) so scripts can chart and compare.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

#[derive(Args, Debug)]
pub struct LoadtestArgs {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// A folder of images (JPEG/PNG), sent round-robin as raw request bodies.
    #[arg(long)]
    pub images: PathBuf,
    /// Concurrency levels, run one after another.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64,256")]
    pub clients: Vec<usize>,
    /// Seconds per level.
    #[arg(long, default_value_t = 60)]
    pub duration_secs: u64,
    /// The server's process id, to read its memory from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Sample the server's RSS this often during a level (seconds).
    #[arg(long, default_value_t = 10)]
    pub rss_every_secs: u64,
    /// Bearer token, when the server has an API key (predict does not need one).
    #[arg(long, env = "TUNESERVE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

#[derive(Serialize)]
struct Level {
    workload: &'static str,
    clients: usize,
    seconds: f64,
    ok: u64,
    /// 429 answers (overload pushed back, as designed).
    rejected: u64,
    /// Anything else: other statuses and transport failures.
    errors: u64,
    images_per_second: f64,
    latency_ms_p50: f64,
    latency_ms_p95: f64,
    latency_ms_p99: f64,
    latency_ms_max: f64,
    rss_mib_before: Option<f64>,
    rss_mib_after: Option<f64>,
    /// (seconds since the level started, RSS MiB)
    rss_mib_samples: Vec<(f64, f64)>,
    first_error: Option<String>,
}

#[derive(Default)]
struct ClientStats {
    latencies_ms: Vec<f64>,
    rejected: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Resident set size of `pid` in MiB (VmRSS).
pub fn rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn load_images(dir: &std::path::Path) -> anyhow::Result<Vec<(bytes::Bytes, &'static str)>> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        let ct = match p.extension().and_then(|x| x.to_str()).map(|x| x.to_ascii_lowercase()).as_deref() {
            Some("jpg" | "jpeg") => "image/jpeg",
            Some("png") => "image/png",
            _ => continue,
        };
        out.push((bytes::Bytes::from(std::fs::read(&p)?), ct));
    }
    if out.is_empty() {
        bail!("no .jpg/.jpeg/.png images in {}", dir.display());
    }
    Ok(out)
}

pub fn run(args: LoadtestArgs) -> anyhow::Result<()> {
    let images = Arc::new(load_images(&args.images)?);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        for &n in &args.clients {
            let level = run_level(&args, images.clone(), n).await?;
            println!("{}", serde_json::to_string(&level)?);
        }
        Ok(())
    })
}

async fn run_level(args: &LoadtestArgs, images: Arc<Vec<(bytes::Bytes, &'static str)>>, n: usize) -> anyhow::Result<Level> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(n).timeout(Duration::from_secs(120)).build()?;
    let url = format!("{}/v1/predict", args.url.trim_end_matches('/'));
    let rss_before = args.server_pid.and_then(rss_mib);
    let started = Instant::now();
    let until = started + Duration::from_secs(args.duration_secs);
    let mut tasks = Vec::with_capacity(n);
    for c in 0..n {
        let (client, url, images, key) = (client.clone(), url.clone(), images.clone(), args.api_key.clone());
        tasks.push(tokio::spawn(client_loop(client, url, images, key, (c, n), until)));
    }
    let mut samples = Vec::new();
    if let Some(pid) = args.server_pid {
        let every = Duration::from_secs(args.rss_every_secs.max(1));
        while Instant::now() + every <= until {
            tokio::time::sleep(every).await;
            if let Some(r) = rss_mib(pid) {
                samples.push((started.elapsed().as_secs_f64(), r));
            }
        }
    }
    let mut all = ClientStats::default();
    for t in tasks {
        let s = t.await?;
        all.latencies_ms.extend(s.latencies_ms);
        all.rejected += s.rejected;
        all.errors += s.errors;
        if all.first_error.is_none() {
            all.first_error = s.first_error;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut lat = all.latencies_ms;
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok(Level {
        workload: "predict_load",
        clients: n,
        seconds,
        ok: lat.len() as u64,
        rejected: all.rejected,
        errors: all.errors,
        images_per_second: lat.len() as f64 / seconds,
        latency_ms_p50: percentile(&lat, 0.50),
        latency_ms_p95: percentile(&lat, 0.95),
        latency_ms_p99: percentile(&lat, 0.99),
        latency_ms_max: lat.last().copied().unwrap_or(f64::NAN),
        rss_mib_before: rss_before,
        rss_mib_after: args.server_pid.and_then(rss_mib),
        rss_mib_samples: samples,
        first_error: all.first_error,
    })
}

/// Client `c` of `n`: posts images (every n-th, from its own offset) until
/// `until`, one request at a time, and counts what came back.
async fn client_loop(
    client: reqwest::Client,
    url: String,
    images: Arc<Vec<(bytes::Bytes, &'static str)>>,
    key: Option<String>,
    (c, n): (usize, usize),
    until: Instant,
) -> ClientStats {
    let mut st = ClientStats::default();
    let mut i = c;
    while Instant::now() < until {
        let (body, ct) = &images[i % images.len()];
        i += n;
        let mut req = client.post(&url).header("content-type", *ct).body(body.clone());
        if let Some(k) = &key {
            req = req.bearer_auth(k);
        }
        let t = Instant::now();
        match req.send().await {
            Ok(r) if r.status().is_success() => {
                // Read the body: the request is done when the answer is in.
                let _ = r.bytes().await;
                st.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
            Ok(r) if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                st.rejected += 1;
                let _ = r.bytes().await;
                // Back off briefly (a real client would honour Retry-After).
                tokio::time::sleep(Duration::from_millis(50 + (c as u64 % 50))).await;
            }
            Ok(r) => {
                st.errors += 1;
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                st.first_error.get_or_insert_with(|| format!("{status}: {}", &body[..body.len().min(300)]));
            }
            Err(e) => {
                st.errors += 1;
                st.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    st
}
