//! OpenBLAS for CPU f32 matrix products, when the machine has it.
//!
//! Measured on a 2-core AVX2 EPYC, OpenBLAS's sgemm is 5-15% faster than the
//! `gemm` crate on most of Xception's 1x1-convolution shapes and 2x faster on
//! the entry flow's im2col product (64 x 288 x 166k). It is loaded at run time
//! so the binary builds and runs without it (Candle's matmul then runs);
//! TUNESERVE_BLAS=off disables it. OpenBLAS runs single-threaded here: the
//! caller splits the product over its own rayon pool, so prediction and
//! training keep their separate CPU pools.

use std::sync::OnceLock;

type Sgemm = unsafe extern "C" fn(i32, i32, i32, i32, i32, i32, f32, *const f32, i32, *const f32, i32, f32, *mut f32, i32);

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

/// Picks OpenBLAS's kernels by this CPU's features, before the library loads
/// (it reads `OPENBLAS_CORETYPE` once, when loaded). With the AVX-512 subsets
/// that its "SkylakeX" sgemm kernels use, those run; they measured 76 img/s
/// against 47 with the AVX2 "Haswell" kernels for Xception inference on a
/// 2-core AVX-512 EPYC. An `OPENBLAS_CORETYPE` inherited from the environment
/// (machine images set it for other programs) does not hold tuneserve back;
/// `TUNESERVE_BLAS_KERNELS` decides: `auto` (default), `inherit` (keep
/// `OPENBLAS_CORETYPE` as it is), or an OpenBLAS core name. Returns what was
/// decided, for the log. Call first thing in main, before any other thread
/// exists (setting the environment races with threads that read it).
pub fn choose_kernels() -> Option<String> {
    let inherited = std::env::var("OPENBLAS_CORETYPE").ok();
    let choice = match std::env::var("TUNESERVE_BLAS_KERNELS").ok().as_deref() {
        None | Some("auto") => has_avx512().then(|| "SkylakeX".to_owned()),
        Some("inherit") => None,
        Some(name) => Some(name.to_owned()),
    }?;
    if inherited.as_deref() == Some(choice.as_str()) {
        return None;
    }
    std::env::set_var("OPENBLAS_CORETYPE", &choice);
    Some(match inherited {
        Some(old) => format!("OpenBLAS kernels {choice} (OPENBLAS_CORETYPE was {old}; TUNESERVE_BLAS_KERNELS=inherit keeps it)"),
        None => format!("OpenBLAS kernels {choice}"),
    })
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vl")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx512() -> bool {
    false
}

pub(crate) struct Blas {
    sgemm: Sgemm,
    /// The kernel family OpenBLAS runs (its `openblas_get_corename`).
    pub core: String,
    // Keeps the library mapped for as long as `sgemm` may be called.
    _lib: libloading::Library,
}

/// The loaded library, or None (absent, or disabled by TUNESERVE_BLAS=off).
pub(crate) fn get() -> Option<&'static Blas> {
    static BLAS: OnceLock<Option<Blas>> = OnceLock::new();
    BLAS.get_or_init(load).as_ref()
}

fn load() -> Option<Blas> {
    if std::env::var("TUNESERVE_BLAS").is_ok_and(|v| v == "off") {
        tracing::info!("OpenBLAS disabled by TUNESERVE_BLAS=off; matrix products use the gemm crate");
        return None;
    }
    for name in ["libopenblas.so.0", "libopenblas.so"] {
        // SAFETY: loading OpenBLAS runs only its own initialisers.
        let Ok(lib) = (unsafe { libloading::Library::new(name) }) else { continue };
        // SAFETY: the symbols have these C signatures in every OpenBLAS.
        let found = unsafe {
            let sgemm = lib.get::<Sgemm>(b"cblas_sgemm\0").map(|s| *s);
            let threads = lib.get::<unsafe extern "C" fn(i32)>(b"openblas_set_num_threads\0").map(|s| *s);
            sgemm.and_then(|s| threads.map(|t| (s, t)))
        };
        match found {
            Ok((sgemm, set_threads)) => {
                // SAFETY: plain setter.
                unsafe { set_threads(1) };
                let core = core_name(&lib);
                tracing::info!(library = name, kernels = %core, "matrix products use OpenBLAS");
                return Some(Blas { sgemm, core, _lib: lib });
            }
            Err(e) => tracing::warn!(library = name, error = %e, "found OpenBLAS without the CBLAS symbols; using the gemm crate"),
        }
    }
    tracing::info!("OpenBLAS not found (libopenblas.so.0); matrix products use the gemm crate");
    None
}

/// OpenBLAS's name for the kernels it picked ("?" when the build lacks the call).
fn core_name(lib: &libloading::Library) -> String {
    // SAFETY: `openblas_get_corename` takes nothing and returns a static C string.
    unsafe {
        let Ok(f) = lib.get::<unsafe extern "C" fn() -> *const std::ffi::c_char>(b"openblas_get_corename\0") else {
            return "?".into();
        };
        let p = f();
        if p.is_null() {
            return "?".into();
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// A strided matrix view: element (i, j) at `ptr + i * rs + j * cs`; one of
/// the strides must be 1 (BLAS takes row-major or its transpose).
#[derive(Clone, Copy)]
pub(crate) struct View {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

impl View {
    pub fn blas_ok(&self) -> bool {
        self.cs == 1 || self.rs == 1
    }
    fn offset(self, i: usize, j: usize) -> Self {
        // SAFETY (callers): (i, j) lies inside the viewed matrix.
        Self { ptr: unsafe { self.ptr.add(i * self.rs + j * self.cs) }, ..self }
    }
    /// (transpose flag, leading dimension) as CBLAS row-major wants them.
    fn cblas(&self) -> (i32, i32) {
        if self.cs == 1 {
            (NO_TRANS, self.rs.max(1) as i32)
        } else {
            (TRANS, self.cs.max(1) as i32)
        }
    }
}

impl Blas {
    /// C (m x n, row-major, fully written) = A (m x k) * B (k x n), split
    /// over the current rayon pool by columns, or by rows when columns are few.
    ///
    /// # Safety
    /// `a` and `b` must view m x k and k x n matrices inside live buffers,
    /// both `blas_ok`, and `c` must hold m * n writable floats.
    pub unsafe fn sgemm(&self, m: usize, n: usize, k: usize, a: View, b: View, c: *mut f32) {
        let threads = rayon::current_num_threads().max(1);
        let parts = |len: usize, align: usize| {
            let chunk = len.div_ceil(threads).next_multiple_of(align);
            (chunk, len.div_ceil(chunk))
        };
        let (a, b, c) = (Shared(a), Shared(b), Shared(c));
        if threads > 1 && n >= threads * 64 {
            let (chunk, count) = parts(n, 16);
            rayon::scope(|s| {
                for t in 0..count {
                    let (j0, nn) = (t * chunk, chunk.min(n - t * chunk));
                    s.spawn(move |_| self.serial(m, nn, k, a.get(), b.get().offset(0, j0), c.get().add(j0), n));
                }
            });
        } else if threads > 1 && m >= threads * 16 {
            let (chunk, count) = parts(m, 8);
            rayon::scope(|s| {
                for t in 0..count {
                    let (i0, mm) = (t * chunk, chunk.min(m - t * chunk));
                    s.spawn(move |_| self.serial(mm, n, k, a.get().offset(i0, 0), b.get(), c.get().add(i0 * n), n));
                }
            });
        } else {
            self.serial(m, n, k, a.get(), b.get(), c.get(), n);
        }
    }

    /// # Safety
    /// As [`Blas::sgemm`], with C's rows `ldc` floats apart.
    #[allow(clippy::too_many_arguments)] // ldc differs from n when C is split by columns
    unsafe fn serial(&self, m: usize, n: usize, k: usize, a: View, b: View, c: *mut f32, ldc: usize) {
        let ((ta, lda), (tb, ldb)) = (a.cblas(), b.cblas());
        (self.sgemm)(ROW_MAJOR, ta, tb, m as i32, n as i32, k as i32, 1.0, a.ptr, lda, b.ptr, ldb, 0.0, c, ldc as i32);
    }
}

/// Views and the output pointer cross into rayon tasks that touch disjoint
/// parts of C and only read A and B.
#[derive(Clone, Copy)]
struct Shared<T: Copy>(T);
// SAFETY: only raw views and pointers are wrapped; the tasks that share them
// write disjoint column blocks of C and read A and B, which outlive the scope.
unsafe impl<T: Copy> Send for Shared<T> {}
// SAFETY: as for Send.
unsafe impl<T: Copy> Sync for Shared<T> {}
impl<T: Copy> Shared<T> {
    fn get(self) -> T {
        self.0
    }
}
