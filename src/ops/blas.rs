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

pub(crate) struct Blas {
    sgemm: Sgemm,
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
                tracing::info!(library = name, "matrix products use OpenBLAS");
                return Some(Blas { sgemm, _lib: lib });
            }
            Err(e) => tracing::warn!(library = name, error = %e, "found OpenBLAS without the CBLAS symbols; using the gemm crate"),
        }
    }
    tracing::info!("OpenBLAS not found (libopenblas.so.0); matrix products use the gemm crate");
    None
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
