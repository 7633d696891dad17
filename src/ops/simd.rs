//! Which vector unit the CPU kernels compile for, picked at run time.
//!
//! The build targets baseline x86-64 (SSE2) so one binary runs anywhere; hot
//! loops are also compiled with AVX2 or AVX-512 enabled (`#[target_feature]`)
//! and chosen by the CPU's features. In the kernels built with
//! `simd_versions!` only the vector width differs between the versions: Rust
//! never contracts `a * b + c` into a fused multiply-add, so each lane computes
//! the same operations in the same order and every version gives the same
//! bits. (The fused expansion product, `super::expand`, uses FMA intrinsics
//! instead, as BLAS does, and runs only where AVX2 exists.)

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Simd {
    Baseline,
    Avx2,
    Avx512,
}

impl Simd {
    /// The widest level this CPU supports (detected once); the environment
    /// variable `TUNESERVE_SIMD=baseline|avx2` caps it (for comparisons).
    pub(crate) fn detect() -> Simd {
        static LEVEL: OnceLock<Simd> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            let cap = match std::env::var("TUNESERVE_SIMD").as_deref() {
                Ok("baseline") => Simd::Baseline,
                Ok("avx2") => Simd::Avx2,
                _ => Simd::Avx512,
            };
            Self::supported().min_with(cap)
        })
    }

    /// Whether this CPU has AVX-512 BF16 (the bfloat16 dot product), unless
    /// `TUNESERVE_SIMD` caps the level below AVX-512.
    pub(crate) fn has_bf16() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            static BF16: OnceLock<bool> = OnceLock::new();
            *BF16.get_or_init(|| Self::detect() == Simd::Avx512 && is_x86_feature_detected!("avx512bf16"))
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    #[cfg(target_arch = "x86_64")]
    fn supported() -> Simd {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") {
            Simd::Avx512
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            Simd::Avx2
        } else {
            Simd::Baseline
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn supported() -> Simd {
        Simd::Baseline
    }

    /// Every level this CPU can run, narrowest first, for tests that compare
    /// them; on CI (whose machines have AVX2) it insists on AVX2 being among them.
    #[cfg(test)]
    pub(crate) fn levels_to_test() -> Vec<Simd> {
        let levels: Vec<Simd> = [Simd::Baseline, Simd::Avx2, Simd::Avx512].into_iter().filter(|s| s.rank() <= Self::supported().rank()).collect();
        if std::env::var("CI").is_ok() && cfg!(target_arch = "x86_64") {
            assert!(levels.contains(&Simd::Avx2), "CI machines have AVX2: the test must exercise it");
        }
        levels
    }

    /// `n` test inputs in [-3.5, 4), varied but reproducible.
    #[cfg(test)]
    pub(crate) fn test_values(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919) % 97) as f32 / 13.0 - 3.5).collect()
    }

    fn rank(self) -> u8 {
        match self {
            Simd::Baseline => 0,
            Simd::Avx2 => 1,
            Simd::Avx512 => 2,
        }
    }

    fn min_with(self, cap: Simd) -> Simd {
        if cap.rank() < self.rank() {
            cap
        } else {
            self
        }
    }
}


/// Inside an `impl`, defines `run(&self, simd, args)`, which calls the method
/// `body(args)` compiled for the level `simd` names (`body` must be
/// `#[inline(always)]` so each version gets its own copy; a closure handed to
/// a `#[target_feature]` function is not vectorised: measured).
macro_rules! simd_versions {
    ($vis:vis $body:ident($($arg:ident: $ty:ty),*)) => {
        /// The kernel, compiled for the widest vector unit `simd` allows.
        $vis fn run(&self, simd: $crate::ops::simd::Simd, $($arg: $ty),*) {
            match simd {
                // SAFETY: `Simd::detect` returns these levels only after
                // seeing the CPU's features.
                #[cfg(target_arch = "x86_64")]
                $crate::ops::simd::Simd::Avx512 => unsafe { self.run_avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                $crate::ops::simd::Simd::Avx2 => unsafe { self.run_avx2($($arg),*) },
                _ => self.$body($($arg),*),
            }
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn run_avx2(&self, $($arg: $ty),*) {
            self.$body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        fn run_avx512(&self, $($arg: $ty),*) {
            self.$body($($arg),*)
        }
    };
}
pub(crate) use simd_versions;
