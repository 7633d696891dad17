#[global_allocator]
static ALLOC: tuneserve::alloc::CachingAlloc = tuneserve::alloc::CachingAlloc::new();
use candle_core::{Device, Tensor};
use tuneserve::model::{Backbone, BackboneKind, Variant};
fn cpu_time() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_utime.tv_sec as f64 + u.ru_utime.tv_usec as f64 * 1e-6 + u.ru_stime.tv_sec as f64 + u.ru_stime.tv_usec as f64 * 1e-6
}
fn main() {
    let dev = Device::Cpu;
    let w = tuneserve::model::weights::WeightSet::from_file("/work/shared/weights/xception_weights_tf_dim_ordering_tf_kernels_notop.h5").unwrap();
    let bb = Backbone::build(BackboneKind::Xception, Variant::Full, &w, true, &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (32, 150, 150, 3), &dev).unwrap();
    for i in 0..3 {
        let t = std::time::Instant::now();
        let c0 = cpu_time();
        let f = bb.features(&x).unwrap();
        let dt = t.elapsed().as_secs_f64();
        println!("   cpu {:.3}s -> {:.1} img/s at 2 ideal cores", cpu_time() - c0, 64.0 / (cpu_time() - c0));
        if i == 1 { for (k, n, s) in tuneserve::model::profile::take() { println!("  {k:<24} {n:>5} {s:.3}s"); } }
        println!("infer iter {i}: {:.3}s {:.1} img/s {:?}", dt, 32.0 / dt, f.dims());
    }
    for i in 0..1 {
        let t = std::time::Instant::now();
        let (f, tape) = bb.forward_train(&x).unwrap();
        let t1 = t.elapsed().as_secs_f64();
        let g = bb.backward(tape, &f.ones_like().unwrap()).unwrap();
        let dt = t.elapsed().as_secs_f64();
        for (k, n, s) in tuneserve::model::profile::take() { println!("  {k:<24} {n:>5} {s:.3}s"); }
        println!("train iter {i}: fwd {t1:.3}s total {:.3}s {:.1} img/s {}", dt, 32.0 / dt, g.0.iter().filter(|x| x.is_some()).count());
    }
}
