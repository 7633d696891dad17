//! Opt-in per-layer-kind timing (TUNESERVE_PROFILE=1): where a forward or
//! backward pass spends its time, printed by benchmarks.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

static TABLE: OnceLock<Option<Mutex<BTreeMap<&'static str, (u64, f64)>>>> = OnceLock::new();

fn table() -> Option<&'static Mutex<BTreeMap<&'static str, (u64, f64)>>> {
    TABLE.get_or_init(|| std::env::var_os("TUNESERVE_PROFILE").map(|_| Mutex::new(BTreeMap::new()))).as_ref()
}

/// Times `f` under `key` when profiling is on; otherwise just runs it.
pub fn timed<T>(key: &'static str, f: impl FnOnce() -> T) -> T {
    match table() {
        None => f(),
        Some(t) => {
            let start = Instant::now();
            let out = f();
            let dt = start.elapsed().as_secs_f64();
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
