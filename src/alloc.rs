//! The global allocator's settings. tuneserve runs on mimalloc: every Candle
//! op allocates a fresh output, and an allocator that returns freed pages to
//! the kernel at once makes each op pay a page fault per 4 KiB on first touch.
//! mimalloc keeps freed memory for `purge_delay` before returning it; 30 s
//! (instead of its 1 s default) keeps a training step's or a batch's
//! buffers warm between steps, while memory nobody asks for within 30 s still
//! goes back, so RSS follows the working set. Measured against glibc malloc,
//! jemalloc and a hand-written size-class cache in docs/benchmarks.md.

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_t` (the Rust bindings
/// export no constant for it; the test below checks the number).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Milliseconds freed memory stays with the process before going back.
pub const PURGE_DELAY_MS: i64 = 30_000;

/// Applies the settings, unless `MIMALLOC_PURGE_DELAY` in the environment
/// chose otherwise (mimalloc reads it at start-up). Call first thing in main.
pub fn configure() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores an option value; any option id
        // and value are accepted (an unknown id is ignored).
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS as _) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_delay_is_the_option_we_set() {
        // SAFETY: reading and setting option values only.
        unsafe {
            // mimalloc's (v3) default for mi_option_purge_delay is 1000 ms;
            // no neighbouring option defaults to 1000.
            if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
                assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), 1000);
            }
            configure();
            if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
                assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) as i64, PURGE_DELAY_MS);
            }
        }
    }
}
