//! A caching global allocator for large tensor buffers.
//!
//! Every Candle op allocates a fresh output; with glibc, large blocks are
//! mmapped and unmapped each time, so each op pays a page fault per 4 KiB on
//! first touch (~2 us each here, ~40 ms per 85 MB activation). This keeps
//! freed blocks of >= 1 MiB in size classes (8 per doubling) and hands them
//! back on the next request of that class, asking for transparent huge pages
//! on fresh ones. The cache is bounded (TUNESERVE_ALLOC_CACHE_MB, default 3072).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

const MIN_CACHED: usize = 1 << 20;
const STEPS: usize = 8;
const CLASSES: usize = STEPS * 14; // up to 1 MiB * 2^14 = 16 GiB
const SLOTS: usize = 16;
const ALIGN: usize = 4096;

struct Bins {
    ptrs: [[usize; SLOTS]; CLASSES],
    len: [usize; CLASSES],
}

pub struct CachingAlloc {
    bins: Mutex<Bins>,
    cached_bytes: AtomicUsize,
    limit: AtomicUsize,
}

impl Default for CachingAlloc {
    fn default() -> Self {
        Self::new()
    }
}

impl CachingAlloc {
    pub const fn new() -> Self {
        Self {
            bins: Mutex::new(Bins { ptrs: [[0; SLOTS]; CLASSES], len: [0; CLASSES] }),
            cached_bytes: AtomicUsize::new(0),
            limit: AtomicUsize::new(usize::MAX),
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
        (idx < CLASSES).then(|| (idx, (MIN_CACHED << octave) + sub * ((MIN_CACHED << octave) / STEPS)))
    }

    fn limit(&self) -> usize {
        let l = self.limit.load(Ordering::Relaxed);
        if l != usize::MAX {
            return l;
        }
        // Read once; env lookup does not allocate through this allocator's large path.
        let mb = std::env::var("TUNESERVE_ALLOC_CACHE_MB").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(3072);
        let l = mb << 20;
        self.limit.store(l, Ordering::Relaxed);
        l
    }

    unsafe fn fresh(&self, rounded: usize) -> *mut u8 {
        let p = System.alloc(Layout::from_size_align_unchecked(rounded, ALIGN));
        #[cfg(target_os = "linux")]
        if !p.is_null() {
            libc::madvise(p as *mut libc::c_void, rounded, libc::MADV_HUGEPAGE);
        }
        p
    }
}

unsafe impl GlobalAlloc for CachingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::class(layout.size()) {
            Some((idx, rounded)) if layout.align() <= ALIGN => {
                if let Ok(mut b) = self.bins.lock() {
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
                        let n = b.len[idx];
                        if n < SLOTS {
                            b.ptrs[idx][n] = ptr as usize;
                            b.len[idx] = n + 1;
                            self.cached_bytes.fetch_add(rounded, Ordering::Relaxed);
                            return;
                        }
                    }
                }
                System.dealloc(ptr, Layout::from_size_align_unchecked(rounded, ALIGN));
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
}
