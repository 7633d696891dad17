//! Matrix products against weights packed once, for inference.
//!
//! BLAS packs both operands on every call. A 1x1 convolution at batch 1 has
//! few pixels (Xception at 150 px: 81 in the middle flow) against a large
//! weight matrix (728 x 728), so repacking the weights is a large share of
//! each product (perf, batch-1 Xception: OpenBLAS's weight packing 15% of the
//! time, its kernel 44%). Here the weights are packed when the model is made
//! ready for serving, and each call reads its input in place.

use candle_core::{Result, Storage, Tensor};
use rayon::prelude::*;

use super::simd::Simd;
use super::storage::{slice, DisjointParts};

/// Whether this CPU has the vector units the kernels are written for
/// (without them BLAS is faster).
pub fn worthwhile() -> bool {
    Simd::detect() != Simd::Baseline
}

/// Most pixels (columns of the input) at which the packed product is used:
/// past them BLAS's packing cost is spread thin and its kernel, which
/// writes its output tiles directly, is as fast or faster (measured on
/// 2 AVX-512 cores, GFLOP/s packed vs BLAS: 728 x 728 weights at 81 pixels
/// 414-449 vs 341-384, at 324 pixels 453-469 vs 409-412, at 2592 equal;
/// 256 x 256 at 1296 pixels 387-397 vs 429-449).
pub const MAX_PIXELS: usize = 400;

/// Output channels per packed panel: three AVX-512 registers.
const PANEL: usize = 48;
/// Cache lines per packed weight row.
const LINES: usize = PANEL / 16;

/// One cache line of floats; panels are built from these so that every
/// vector load of a weight row is aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// (O, K) weights as panels of PANEL output channels: panel p holds, for
/// each input channel, the weights of its PANEL output channels (zero past O).
pub struct PackedWeights {
    rows: usize,
    depth: usize,
    lines: Vec<Line>,
}

impl PackedWeights {
    /// Packs row-major (rows, depth) weights.
    pub fn pack(w: &[f32], rows: usize, depth: usize) -> Self {
        assert_eq!(w.len(), rows * depth, "weights are not {rows} x {depth}");
        let panels = rows.div_ceil(PANEL);
        let mut lines = vec![Line([0.0; 16]); panels * depth * LINES];
        for (o, row) in w.chunks_exact(depth.max(1)).enumerate().take(rows) {
            let (p, j) = (o / PANEL, o % PANEL);
            for (c, v) in row.iter().enumerate() {
                lines[(p * depth + c) * LINES + j / 16].0[j % 16] = *v;
            }
        }
        Self { rows, depth, lines }
    }

    /// Packs an (O, K) f32 weight tensor.
    pub fn from_tensor(w: &Tensor) -> Result<Self> {
        let (rows, depth) = w.dims2()?;
        Ok(Self::pack(&w.flatten_all()?.to_vec1::<f32>()?, rows, depth))
    }

    /// (K, N) f32 CPU input -> (O, N) product.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let (k, n) = x.dims2()?;
        if k != self.depth {
            candle_core::bail!("packed product: weights take {} inputs, got {:?}", self.depth, x.shape());
        }
        let x = x.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("packed product: the input is not on the CPU");
        };
        let mut out = vec![0f32; self.rows * n];
        self.matmul(Simd::detect(), slice::<f32>(cpu, layout)?, n, &mut out);
        Tensor::from_vec(out, (self.rows, n), &candle_core::Device::Cpu)
    }

    /// out (rows, n) = W x (depth, n), all row-major; split over the rayon
    /// pool by panels of output channels.
    pub(crate) fn matmul(&self, simd: Simd, x: &[f32], n: usize, out: &mut [f32]) {
        let (k, m) = (self.depth, self.rows);
        assert_eq!(x.len(), k * n, "input is not {k} x {n}");
        assert_eq!(out.len(), m * n, "output is not {m} x {n}");
        if n == 0 || m == 0 {
            return;
        }
        let mr = tile_pixels(simd);
        let (full, cols_left) = (n / mr, n % mr);
        // The kernel reads whole tiles straight from the input; the last,
        // partial one is copied out with zero padding first.
        let mut last = vec![0f32; if cols_left > 0 { k * mr } else { 0 }];
        for (c, d) in last.chunks_exact_mut(mr).enumerate() {
            d[..cols_left].copy_from_slice(&x[c * n + full * mr..(c + 1) * n]);
        }
        let out = DisjointParts::new(out);
        (0..m.div_ceil(PANEL)).into_par_iter().for_each(|p| {
            let panel = &self.lines[p * k * LINES..(p + 1) * k * LINES];
            let o0 = p * PANEL;
            let orows = PANEL.min(m - o0);
            let mut tile = [[0f32; PANEL]; MAX_TILE];
            // The next panel is fetched into cache a slice per tile, while this
            // one computes (weights come from memory: a network's do not fit in cache).
            let next = self.lines.get((p + 1) * k * LINES..(p + 2) * k * LINES).unwrap_or(&[]);
            let ahead = next.len().div_ceil(full + usize::from(cols_left > 0)).max(1);
            let mut next = next.chunks(ahead);
            let tiles = (0..full).map(|b| (&x[b * mr..], n, mr)).chain((cols_left > 0).then_some((&last[..], mr, cols_left)));
            for (b, (xs, ldx, cols)) in tiles.enumerate() {
                kernel(simd, mr, panel, next.next().unwrap_or(&[]), xs, ldx, k, &mut tile);
                let p0 = b * mr;
                for (j, o) in (o0..o0 + orows).enumerate() {
                    // SAFETY: rows o0..o0+orows belong to this panel alone; `out` outlives the loop.
                    let row = unsafe { out.part(o * n, n) };
                    for (r, v) in row[p0..p0 + cols].iter_mut().enumerate() {
                        *v = tile[r][j];
                    }
                }
            }
        });
    }
}

/// Most pixels a tile holds (the AVX-512 kernel's).
const MAX_TILE: usize = 9;

/// Pixels per tile: as many as leave room in the vector registers for the
/// accumulators and the weight vectors (AVX-512: 9 x 3 + 3 of 32 registers;
/// AVX2, a third of a panel at a time: 6 x 2 + 2 of 16).
fn tile_pixels(simd: Simd) -> usize {
    match simd {
        Simd::Avx512 => 9,
        Simd::Avx2 => 6,
        Simd::Baseline => 4,
    }
}

/// tile[r][j] = sum_c panel[c][j] * xs[c * ldx + r] for the tile's pixels r;
/// meanwhile it asks for `ahead` to be brought into cache.
#[allow(clippy::too_many_arguments)] // a kernel's operands and their shape
fn kernel(simd: Simd, mr: usize, panel: &[Line], ahead: &[Line], xs: &[f32], ldx: usize, k: usize, tile: &mut [[f32; PANEL]; MAX_TILE]) {
    assert!(panel.len() == k * LINES && mr == tile_pixels(simd) && ldx >= mr);
    assert!(k == 0 || xs.len() >= (k - 1) * ldx + mr, "tile reads past the input");
    match simd {
        // SAFETY: `Simd::detect` returns these levels only after seeing the
        // CPU's features; the lengths the kernels read within are asserted above.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { kernel_avx512(panel, ahead, xs, ldx, k, tile) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { kernel_avx2(panel, ahead, xs, ldx, k, tile) },
        _ => kernel_scalar(panel, xs, ldx, k, mr, tile),
    }
}

/// The reference the vector kernels are tested against (without AVX2 the
/// network does not pack its weights).
fn kernel_scalar(panel: &[Line], xs: &[f32], ldx: usize, k: usize, mr: usize, tile: &mut [[f32; PANEL]; MAX_TILE]) {
    for row in tile.iter_mut().take(mr) {
        row.fill(0.0);
    }
    for c in 0..k {
        let w = &panel[c * LINES..(c + 1) * LINES];
        for (r, row) in tile.iter_mut().take(mr).enumerate() {
            let xv = xs[c * ldx + r];
            for (j, t) in row.iter_mut().enumerate() {
                *t += w[j / 16].0[j % 16] * xv;
            }
        }
    }
}

/// 9 pixels x 48 channels in 27 zmm accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn kernel_avx512(panel: &[Line], ahead: &[Line], xs: &[f32], ldx: usize, k: usize, tile: &mut [[f32; PANEL]; MAX_TILE]) {
    use std::arch::x86_64::*;
    const MR: usize = 9;
    let (w, x) = (panel.as_ptr() as *const f32, xs.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); LINES]; MR];
    for c in 0..k {
        for line in ahead.iter().skip(c * LINES).take(LINES) {
            _mm_prefetch::<_MM_HINT_T1>(line.0.as_ptr() as *const i8);
        }
        // SAFETY (all reads): c < k, within the panel (k x PANEL) and the tile's input (`kernel` asserts).
        let wv: [__m512; LINES] = std::array::from_fn(|l| unsafe { _mm512_load_ps(w.add(c * PANEL + l * 16)) });
        for (r, a) in acc.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(unsafe { *x.add(c * ldx + r) });
            for l in 0..LINES {
                a[l] = _mm512_fmadd_ps(wv[l], xv, a[l]);
            }
        }
    }
    for (t, a) in tile.iter_mut().zip(&acc) {
        for (l, v) in a.iter().enumerate() {
            // SAFETY: each tile row holds PANEL floats.
            unsafe { _mm512_storeu_ps(t.as_mut_ptr().add(l * 16), *v) };
        }
    }
}

/// 6 pixels x 16 channels in 12 ymm accumulators, for each third of the panel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2(panel: &[Line], ahead: &[Line], xs: &[f32], ldx: usize, k: usize, tile: &mut [[f32; PANEL]; MAX_TILE]) {
    use std::arch::x86_64::*;
    const MR: usize = 6;
    let (w, x) = (panel.as_ptr() as *const f32, xs.as_ptr());
    for part in 0..LINES {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        for c in 0..k {
            if let Some(line) = ahead.get(c * LINES + part) {
                _mm_prefetch::<_MM_HINT_T1>(line.0.as_ptr() as *const i8);
            }
            // SAFETY (all reads): c < k, within the panel (k x PANEL) and the tile's input (`kernel` asserts).
            let at = c * PANEL + part * 16;
            let (w0, w1) = unsafe { (_mm256_load_ps(w.add(at)), _mm256_load_ps(w.add(at + 8))) };
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_set1_ps(unsafe { *x.add(c * ldx + r) });
                a[0] = _mm256_fmadd_ps(w0, xv, a[0]);
                a[1] = _mm256_fmadd_ps(w1, xv, a[1]);
            }
        }
        for (t, a) in tile.iter_mut().zip(&acc) {
            // SAFETY: each tile row holds PANEL floats.
            unsafe {
                _mm256_storeu_ps(t.as_mut_ptr().add(part * 16), a[0]);
                _mm256_storeu_ps(t.as_mut_ptr().add(part * 16 + 8), a[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every vector unit's product equals the f64 product: several panels,
    /// the last one partial, a partial last tile, and fewer pixels than a tile.
    #[test]
    fn every_vector_unit_computes_the_product() {
        for (m, k, n) in [(100, 19, 33), (7, 5, 4)] {
            check_product(m, k, n);
        }
    }

    fn check_product(m: usize, k: usize, n: usize) {
        let w = Simd::test_values(m * k);
        let x: Vec<f32> = Simd::test_values(k * n + 5)[5..].to_vec();
        let packed = PackedWeights::pack(&w, m, k);
        let mut vector_bits: Option<Vec<f32>> = None;
        for level in Simd::levels_to_test() {
            let mut out = vec![f32::NAN; m * n];
            packed.matmul(level, &x, n, &mut out);
            // The vector kernels differ in tile shape only: each output is the
            // same chain of fused multiply-adds over k.
            if level != Simd::Baseline {
                match &vector_bits {
                    Some(bits) => assert!(bits.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()), "{level:?} differs in bits"),
                    None => vector_bits = Some(out.clone()),
                }
            }
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|c| w[i * k + c] as f64 * x[c * n + j] as f64).sum();
                    let got = out[i * n + j] as f64;
                    assert!((got - want).abs() < 1e-5 * want.abs().max(1.0), "{level:?}: ({i},{j}) {got} vs {want}");
                }
            }
        }
    }
}
