//! Opt-in per-layer-kind timing (TUNESERVE_PROFILE=1): where a forward or
//! backward pass spends its time, printed by benchmarks. It counts process CPU
//! seconds (all threads), which a busy machine distorts less than wall time;
//! TUNESERVE_PROFILE=wall counts wall time instead (for GPU runs, together with
//! CUDA_LAUNCH_BLOCKING=1, where CPU time says little about the kernels).

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

static TABLE: OnceLock<Option<Mutex<BTreeMap<&'static str, (u64, f64)>>>> = OnceLock::new();

fn table() -> Option<&'static Mutex<BTreeMap<&'static str, (u64, f64)>>> {
    TABLE.get_or_init(|| std::env::var_os("TUNESERVE_PROFILE").map(|_| Mutex::new(BTreeMap::new()))).as_ref()
}

/// Times `f` under `key` when profiling is on; otherwise just runs it.
pub fn timed<T>(key: &'static str, f: impl FnOnce() -> T) -> T {
    match table() {
        None => f(),
        Some(t) => {
            let start = now();
            let out = f();
            let dt = now() - start;
            if let Ok(mut m) = t.lock() {
                let e = m.entry(key).or_insert((0, 0.0));
                e.0 += 1;
                e.1 += dt;
            }
            out
        }
    }
}

/// Takes the accumulated (key, calls, seconds), largest first, and resets.
pub fn take() -> Vec<(&'static str, u64, f64)> {
    let Some(t) = table() else { return Vec::new() };
    let Ok(mut m) = t.lock() else { return Vec::new() };
    let mut v: Vec<_> = std::mem::take(&mut *m).into_iter().map(|(k, (n, s))| (k, n, s)).collect();
    v.sort_by(|a, b| b.2.total_cmp(&a.2));
    v
}

/// The profiler's clock: CPU seconds, or wall seconds with TUNESERVE_PROFILE=wall.
fn now() -> f64 {
    static WALL: OnceLock<Option<std::time::Instant>> = OnceLock::new();
    match WALL.get_or_init(|| (std::env::var("TUNESERVE_PROFILE").as_deref() == Ok("wall")).then(std::time::Instant::now)) {
        Some(t0) => t0.elapsed().as_secs_f64(),
        None => cpu_seconds(),
    }
}

/// User + system CPU seconds of this process so far.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}
