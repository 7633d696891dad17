//! `tuneserve bench`: backbone inference and training-step throughput, one
//! JSON line per workload in the same shape as bench/peers/peers.py prints,
//! so bench/compare.py can put them side by side.

use std::time::Instant;

use candle_core::{Device, Tensor};
use clap::{Args, ValueEnum};
use rand::SeedableRng;

use crate::device::{pick_device, DeviceArg};
use crate::model::weights::WeightSet;
use crate::model::{profile, Backbone, BackboneKind, Head, Precision, SeededInit, Variant, WeightSource};
use crate::train::adam::Adam;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Forward only, batch of `--batch`.
    Infer,
    /// Batch-1 forward latency.
    Latency,
    /// Stage 2: forward, hand-written backward and Adam over every weight.
    Stage2,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "infer")]
    pub workload: Workload,
    #[arg(long, default_value = "xception")]
    pub backbone: BackboneKind,
    /// Real weights (optional: speed does not depend on the values).
    #[arg(long)]
    pub weights: Option<std::path::PathBuf>,
    #[arg(long)]
    pub size: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
    /// Operand format of the frozen products (inference workloads; bf16 runs
    /// only where the CPU has AVX-512 BF16, int16 where it has AVX2, and the
    /// output says what ran).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: Precision,
    /// Print where the time goes (per layer kind, CPU seconds).
    #[arg(long)]
    pub profile: bool,
}

fn peak_rss_mib() -> f64 {
    // SAFETY: getrusage only writes the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_maxrss as f64 / 1024.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    // An explicit TUNESERVE_PROFILE (e.g. `wall`) picks the clock.
    if args.profile && std::env::var_os("TUNESERVE_PROFILE").is_none() {
        std::env::set_var("TUNESERVE_PROFILE", "1");
    }
    let device: Device = pick_device(args.device)?;
    let size = args.size.unwrap_or(args.backbone.notebook_size());
    let src: Box<dyn WeightSource> = match &args.weights {
        Some(p) => Box::new(WeightSet::from_file(p)?),
        None => Box::new(SeededInit { seed: 0, device: device.clone() }),
    };
    // Inference workloads run the network frozen, as /predict does.
    let trainable = args.workload == Workload::Stage2;
    let precision = if trainable || !device.is_cpu() { Precision::F32 } else { args.precision.supported() };
    let bb = Backbone::build(args.backbone, Variant::Full, src.as_ref(), trainable, precision, &device)?;
    let batch = if args.workload == Workload::Latency { 1 } else { args.batch };
    let x = Tensor::randn(0f32, 1.0, (batch, size, size, 3), &device)?;
    // Training batches come in the network's own (C,B,H,W) layout.
    let x_planar = x.permute((3, 0, 1, 2))?.contiguous()?;
    let head = Head::init(bb.feature_dim(), 1, 0.2, 0, &device)?;
    let mut opt = Adam::new(1e-5);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 2).collect();
    let mut step = || -> anyhow::Result<()> {
        match args.workload {
            Workload::Infer | Workload::Latency => {
                bb.features(&x)?.to_vec2::<f32>()?;
            }
            Workload::Stage2 => {
                crate::train::finetune_step(&bb, &head, &mut opt, x_planar.clone(), &labels, &mut rng)?;
            }
        }
        Ok(())
    };
    // The service runs the network on a worker of its rayon pools
    // (`compute::Pools`), so every op's parallel work starts there without a
    // hand-off between threads; so does the benchmark.
    let pool = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("bench-cpu-{i}")).build()?;
    let (times, cpu0) = pool.install(|| -> anyhow::Result<_> {
        for _ in 0..args.warmup {
            step()?;
        }
        profile::take();
        let mut times = Vec::with_capacity(args.iters);
        let cpu0 = profile::cpu_seconds();
        for _ in 0..args.iters.max(1) {
            let t = Instant::now();
            step()?;
            times.push(t.elapsed().as_secs_f64());
        }
        Ok((times, cpu0))
    })?;
    let cpu = (profile::cpu_seconds() - cpu0) / args.iters.max(1) as f64;
    let med = median(times);
    let workload = match args.workload {
        Workload::Infer => "infer",
        Workload::Latency => "latency",
        Workload::Stage2 => "stage2",
    };
    let mut out = serde_json::json!({
        "framework": "tuneserve",
        "model": args.backbone.as_str(),
        "workload": workload,
        "batch": batch,
        "size": size,
        "threads": rayon::current_num_threads(),
        "img_per_s": batch as f64 / med,
        "median_s": med,
        "cpu_s_per_iter": cpu,
        "peak_rss_mib": peak_rss_mib(),
        "device": format!("{device:?}"),
        "cpu_matmul": crate::ops::matmul_cpu_backend(),
        "precision": precision,
    });
    if args.workload == Workload::Latency {
        out["latency_ms"] = serde_json::json!(med * 1e3);
    }
    if args.backbone == BackboneKind::Xception && args.workload != Workload::Stage2 {
        // 3.85 GFLOP per 150x150 image, scaling with the pixel count.
        let gflop = 3.849 * (size * size) as f64 / (150.0 * 150.0) * batch as f64;
        out["gflop_per_s"] = serde_json::json!(gflop / med);
    }
    if args.profile {
        let rows: Vec<_> = profile::take().into_iter().map(|(k, n, s)| serde_json::json!({"op": k, "calls": n, "cpu_s": s})).collect();
        out["profile"] = serde_json::json!(rows);
    }
    println!("{out}");
    Ok(())
}
