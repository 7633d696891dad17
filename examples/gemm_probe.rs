#[global_allocator]
static ALLOC: tuneserve::alloc::CachingAlloc = tuneserve::alloc::CachingAlloc::new();
use candle_core::{Device, Tensor};
fn cpu_time() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_utime.tv_sec as f64 + u.ru_utime.tv_usec as f64 * 1e-6 + u.ru_stime.tv_sec as f64 + u.ru_stime.tv_usec as f64 * 1e-6
}
fn main() {
    let dev = Device::Cpu;
    for (m, k, n) in [(728usize, 728usize, 2592usize), (128, 64, 165888), (128, 128, 165888), (256, 256, 41472), (2048, 1536, 800)] {
        let a = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (k, n), &dev).unwrap();
        let _ = a.matmul(&b).unwrap();
        let (t, c) = (std::time::Instant::now(), cpu_time());
        let reps = 5;
        for _ in 0..reps { let _ = a.matmul(&b).unwrap(); }
        let (w, cc) = (t.elapsed().as_secs_f64() / reps as f64, (cpu_time() - c) / reps as f64);
        let fl = 2.0 * (m * k * n) as f64;
        println!("{m}x{k}x{n}: wall {:.1} ms ({:.0} GFLOP/s), cpu {:.1} ms ({:.0} GFLOP/s per 2 cores)", w * 1e3, fl / w / 1e9, cc * 1e3, 2.0 * fl / cc / 1e9);
    }
}
