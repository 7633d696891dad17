//! A caching global allocator for large tensor buffers.
//!
//! Every Candle op allocates a fresh output; with glibc, large blocks are
//! mmapped and unmapped each time, so each op pays a page fault per 4 KiB on
//! first touch (~2 us each here, ~40 ms per 85 MB activation). This keeps
//! freed blocks of >= 1 MiB in size classes (8 per doubling) and hands them
//! back on the next request of that class, asking for transparent huge pages
//! on fresh ones. The cache is bounded (TUNESERVE_ALLOC_CACHE_MB, default 3072)
//! and decays: a block nobody asked for within TUNESERVE_ALLOC_CACHE_DECAY_S
//! (default 30) goes back to the system, so sizes seen once (an odd dynamic
//! batch, a validation pass) do not keep RSS up and RSS follows the working set.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

const MIN_CACHED: usize = 1 << 20;
const STEPS: usize = 8;
const CLASSES: usize = STEPS * 14; // up to 1 MiB * 2^14 = 16 GiB
const SLOTS: usize = 64;
const ALIGN: usize = 4096;

/// Each bin is a stack: pushes happen in time order and pops take the top,
/// so stamps ascend from the bottom and the oldest blocks form a prefix.
struct Bins {
    ptrs: [[usize; SLOTS]; CLASSES],
    stamps: [[u64; SLOTS]; CLASSES],
    len: [usize; CLASSES],
}

pub struct CachingAlloc {
    bins: Mutex<Bins>,
    cached_bytes: AtomicUsize,
    limit: AtomicUsize,
    decay_ms: AtomicUsize,
    last_trim_ms: AtomicUsize,
}

/// Monotonic milliseconds (vDSO, no allocation).
fn now_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(default)
}

impl Default for CachingAlloc {
    fn default() -> Self {
        Self::new()
    }
}

impl CachingAlloc {
    pub const fn new() -> Self {
        Self {
            bins: Mutex::new(Bins { ptrs: [[0; SLOTS]; CLASSES], stamps: [[0; SLOTS]; CLASSES], len: [0; CLASSES] }),
            cached_bytes: AtomicUsize::new(0),
            limit: AtomicUsize::new(usize::MAX),
            decay_ms: AtomicUsize::new(usize::MAX),
            last_trim_ms: AtomicUsize::new(0),
        }
    }

    /// Size class and its rounded size for a large request.
    fn class(size: usize) -> Option<(usize, usize)> {
        if size < MIN_CACHED {
            return None;
        }
        let octave = (usize::BITS - 1 - (size / MIN_CACHED).leading_zeros()) as usize;
        let base = MIN_CACHED << octave;
        let step = base / STEPS;
        let sub = (size - base).div_ceil(step);
        let (octave, sub) = if sub == STEPS { (octave + 1, 0) } else { (octave, sub) };
        let idx = octave * STEPS + sub;
        (idx < CLASSES).then(|| (idx, Self::class_size(idx)))
    }

    fn limit(&self) -> usize {
        let l = self.limit.load(Ordering::Relaxed);
        if l != usize::MAX {
            return l;
        }
        // Read once; env lookup does not allocate through this allocator's large path.
        let l = env_usize("TUNESERVE_ALLOC_CACHE_MB", 3072) << 20;
        self.limit.store(l, Ordering::Relaxed);
        l
    }

    fn decay_ms(&self) -> usize {
        let d = self.decay_ms.load(Ordering::Relaxed);
        if d != usize::MAX {
            return d;
        }
        let d = env_usize("TUNESERVE_ALLOC_CACHE_DECAY_S", 30).saturating_mul(1000).min(usize::MAX - 1);
        self.decay_ms.store(d, Ordering::Relaxed);
        d
    }

    /// Returns blocks cached longer than the decay time to the system; runs at
    /// most once a second, under the bins lock the caller holds.
    unsafe fn trim(&self, b: &mut Bins, now: u64) {
        let last = self.last_trim_ms.load(Ordering::Relaxed) as u64;
        if now < last + 1000 {
            return;
        }
        self.last_trim_ms.store(now as usize, Ordering::Relaxed);
        let cutoff = now.saturating_sub(self.decay_ms() as u64);
        for idx in 0..CLASSES {
            let n = b.len[idx];
            let old = b.stamps[idx][..n].iter().take_while(|&&t| t < cutoff).count();
            if old == 0 {
                continue;
            }
            let rounded = Self::class_size(idx);
            for &p in &b.ptrs[idx][..old] {
                self.release(p as *mut u8, rounded);
            }
            b.ptrs[idx].copy_within(old..n, 0);
            b.stamps[idx].copy_within(old..n, 0);
            b.len[idx] = n - old;
            self.cached_bytes.fetch_sub(old * rounded, Ordering::Relaxed);
        }
    }

    /// Rounded size of a class index (the inverse of `class`).
    fn class_size(idx: usize) -> usize {
        let (octave, sub) = (idx / STEPS, idx % STEPS);
        (MIN_CACHED << octave) + sub * ((MIN_CACHED << octave) / STEPS)
    }

    /// A new large block straight from the kernel. Not from malloc: glibc
    /// raises its mmap threshold after such frees and would then carve later
    /// blocks out of its heap, which fragments and never shrinks.
    #[cfg(target_os = "linux")]
    unsafe fn fresh(&self, rounded: usize) -> *mut u8 {
        let p = libc::mmap(std::ptr::null_mut(), rounded, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
        if p == libc::MAP_FAILED {
            return std::ptr::null_mut();
        }
        libc::madvise(p, rounded, libc::MADV_HUGEPAGE);
        p as *mut u8
    }

    #[cfg(target_os = "linux")]
    unsafe fn release(&self, p: *mut u8, rounded: usize) {
        libc::munmap(p as *mut libc::c_void, rounded);
    }

    #[cfg(not(target_os = "linux"))]
    unsafe fn fresh(&self, rounded: usize) -> *mut u8 {
        System.alloc(Layout::from_size_align_unchecked(rounded, ALIGN))
    }

    #[cfg(not(target_os = "linux"))]
    unsafe fn release(&self, p: *mut u8, rounded: usize) {
        System.dealloc(p, Layout::from_size_align_unchecked(rounded, ALIGN));
    }
}

unsafe impl GlobalAlloc for CachingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::class(layout.size()) {
            Some((idx, rounded)) if layout.align() <= ALIGN => {
                if let Ok(mut b) = self.bins.lock() {
                    self.trim(&mut b, now_ms());
                    if b.len[idx] > 0 {
                        b.len[idx] -= 1;
                        let n = b.len[idx];
                        self.cached_bytes.fetch_sub(rounded, Ordering::Relaxed);
                        return b.ptrs[idx][n] as *mut u8;
                    }
                }
                self.fresh(rounded)
            }
            _ => System.alloc(layout),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match Self::class(layout.size()) {
            Some(_) if layout.align() <= ALIGN => {
                let p = self.alloc(layout);
                if !p.is_null() {
                    std::ptr::write_bytes(p, 0, layout.size());
                }
                p
            }
            _ => System.alloc_zeroed(layout),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match Self::class(layout.size()) {
            Some((idx, rounded)) if layout.align() <= ALIGN => {
                if self.cached_bytes.load(Ordering::Relaxed) + rounded <= self.limit() {
                    if let Ok(mut b) = self.bins.lock() {
                        let now = now_ms();
                        self.trim(&mut b, now);
                        let n = b.len[idx];
                        if n < SLOTS {
                            b.ptrs[idx][n] = ptr as usize;
                            b.stamps[idx][n] = now;
                            b.len[idx] = n + 1;
                            self.cached_bytes.fetch_add(rounded, Ordering::Relaxed);
                            return;
                        }
                    }
                }
                self.release(ptr, rounded);
            }
            _ => System.dealloc(ptr, layout),
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_class = Self::class(layout.size()).filter(|_| layout.align() <= ALIGN);
        let new_class = Self::class(new_size).filter(|_| layout.align() <= ALIGN);
        if old_class.is_none() && new_class.is_none() {
            return System.realloc(ptr, layout, new_size);
        }
        if let (Some((a, _)), Some((b, _))) = (old_class, new_class) {
            if a == b {
                return ptr;
            }
        }
        let new = self.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_up_and_stay_within_an_eighth() {
        for size in [1 << 20, (1 << 20) + 1, 3 << 20, 85_000_000, 1 << 30] {
            let (_, r) = CachingAlloc::class(size).unwrap();
            assert!(r >= size && (r - size) as f64 <= size as f64 / 8.0 + 1.0, "{size} -> {r}");
        }
        assert!(CachingAlloc::class(4096).is_none());
    }

    #[test]
    fn reuses_freed_blocks() {
        let a = CachingAlloc::new();
        unsafe {
            let l = Layout::from_size_align(5 << 20, 64).unwrap();
            let p = a.alloc(l);
            a.dealloc(p, l);
            let q = a.alloc_zeroed(Layout::from_size_align(5 << 20, 8).unwrap());
            assert_eq!(p, q);
            assert!(std::slice::from_raw_parts(q, 5 << 20).iter().all(|b| *b == 0));
            a.dealloc(q, l);
        }
    }

    #[test]
    fn class_size_inverts_class() {
        for idx in 0..CLASSES {
            assert_eq!(CachingAlloc::class(CachingAlloc::class_size(idx)), Some((idx, CachingAlloc::class_size(idx))));
        }
    }

    #[test]
    fn idle_blocks_decay_back_to_the_system() {
        let a = CachingAlloc::new();
        a.decay_ms.store(0, Ordering::Relaxed);
        unsafe {
            let l = Layout::from_size_align(3 << 20, 64).unwrap();
            let p = a.alloc(l);
            a.dealloc(p, l);
            assert!(a.cached_bytes.load(Ordering::Relaxed) >= 3 << 20);
            std::thread::sleep(std::time::Duration::from_millis(1100));
            // The next large request trims everything older than the (zero) decay first.
            let q = a.alloc(Layout::from_size_align(9 << 20, 64).unwrap());
            assert_eq!(a.cached_bytes.load(Ordering::Relaxed), 0);
            a.dealloc(q, Layout::from_size_align(9 << 20, 64).unwrap());
        }
    }
}
