#[global_allocator]
static ALLOC: tuneserve::alloc::CachingAlloc = tuneserve::alloc::CachingAlloc::new();
use std::sync::atomic::AtomicBool;
use tuneserve::data::dataset::DatasetManifest;
use tuneserve::train::*;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let data = std::path::PathBuf::from(&args[1]);
    let out = std::path::PathBuf::from(&args[2]);
    let ft: usize = args[3].parse().unwrap();
    let seed: u64 = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(0);
    let cfg = TrainConfig { finetune_epochs: ft, patience: 0, seed, ..TrainConfig::default() };
    let spec = RunSpec { config: cfg, manifest: DatasetManifest::scan(&data).unwrap(), dataset_root: data,
        weights: WeightsChoice::Pretrained("/work/shared/weights/xception_weights_tf_dim_ordering_tf_kernels_notop.h5".into()),
        variant: tuneserve::model::Variant::Full, out_dir: out, resume: false, device: candle_core::Device::Cpu };
    let t = std::time::Instant::now();
    let s = run(spec, &mut |e| match e { Event::Progress { step, steps, .. } if step % 10 != 0 => {}, e => eprintln!("{:.1}s {e:?}", t.elapsed().as_secs_f64()) }, &AtomicBool::new(false)).unwrap();
    println!("{}", serde_json::to_string(&s).unwrap());
}
