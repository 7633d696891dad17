//! The full two-stage recipe (`train::run`) on a dataset folder and a chosen
//! device, for checking that a GPU run reaches the CPU's accuracy.
//!
//!     cargo run --release --features cuda --example gpu_recipe -- \
//!         DATA_DIR OUT_DIR WEIGHTS [cpu|cuda:N] [FINETUNE_EPOCHS] [SEED]
//!
//! WEIGHTS: a Keras .h5 / safetensors file, or `seeded`. Events go to stderr,
//! the run's summary as one JSON line to stdout.

use std::sync::atomic::AtomicBool;

use candle_core::Device;
use tuneserve::data::dataset::DatasetManifest;
use tuneserve::train::{run, Event, RunSpec, TrainConfig, WeightsChoice};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: gpu_recipe DATA_DIR OUT_DIR WEIGHTS [cpu|cuda:N] [FINETUNE_EPOCHS] [SEED]");
        std::process::exit(2);
    }
    let data = std::path::PathBuf::from(&args[1]);
    let out = std::path::PathBuf::from(&args[2]);
    let weights = match args[3].as_str() {
        "seeded" => WeightsChoice::Seeded,
        p => WeightsChoice::Pretrained(p.into()),
    };
    let device = match args.get(4).map(String::as_str).unwrap_or("cuda:0") {
        "cpu" => Device::Cpu,
        d => Device::new_cuda(d.strip_prefix("cuda:").unwrap_or("0").parse().expect("device")).expect("CUDA device"),
    };
    let ft: usize = args.get(5).map(|s| s.parse().unwrap()).unwrap_or(1);
    let seed: u64 = args.get(6).map(|s| s.parse().unwrap()).unwrap_or(0);
    eprintln!("device: {:?}", device.location());
    let cfg = TrainConfig { finetune_epochs: ft, seed, ..TrainConfig::default() };
    let spec = RunSpec {
        config: cfg,
        manifest: DatasetManifest::scan(&data).expect("dataset"),
        dataset_root: data,
        weights,
        variant: tuneserve::model::Variant::Full,
        cache_dir: out.join("pixel-cache"),
        partial_every: None,
        out_dir: out,
        resume: false,
        device,
    };
    let t = std::time::Instant::now();
    let s = run(
        spec,
        &mut |e| match e {
            Event::Progress { step, steps, .. } if step % 20 != 0 && step != steps => {}
            e => eprintln!("{:.1}s {e:?}", t.elapsed().as_secs_f64()),
        },
        &AtomicBool::new(false),
    )
    .expect("run");
    println!("{}", serde_json::to_string(&s).unwrap());
}
