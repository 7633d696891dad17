//! Inference-only fusion of an inverted residual block's front half
//! (MobileNetV2): 1x1 expansion -> BatchNorm + ReLU6 -> depthwise ->
//! BatchNorm + ReLU6, one (image, block of channels) at a time. The expanded
//! tensor (six times the block's input, the largest activations of the
//! network) then lives in cache for the depthwise pass and never goes to
//! memory; unfused, the product writes it and the depthwise reads it back.
//!
//! The expansion product runs in a register-blocked kernel here (with fused
//! multiply-add where the CPU has it), so its last bits differ from the BLAS
//! product of the unfused path, as one BLAS kernel's differ from another's.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::depthwise::{channel_affine, check_kernel, host_affine, planes, ChannelAffine, Window, WindowScratch};
use super::simd::Simd;
use super::storage::{output, slice, DisjointParts};
use super::Geom;

/// Expanded channels per unit of work: their planes stay in L2.
const BLOCK: usize = 8;

/// Whether this CPU has the vector units the fused product is written for
/// (without them the unfused path, with BLAS, is faster).
pub fn worthwhile() -> bool {
    Simd::detect() != Simd::Baseline
}

/// post(depthwise(pre(w x), k)) for x (K,B,H,W), expansion weights w (M,K)
/// and depthwise kernels k (M, K*K) -> (M,B,Ho,Wo); f32, CPU, no gradient.
pub fn expand_depthwise(x: &Tensor, w: &Tensor, pre: Option<ChannelAffine>, k: &Tensor, g: Geom, post: Option<ChannelAffine>) -> Result<Tensor> {
    x.contiguous()?.apply_op3_no_bwd(&w.contiguous()?, &k.contiguous()?, &ExpandDepthwise { g, pre, post })
}

struct ExpandDepthwise {
    g: Geom,
    pre: Option<ChannelAffine>,
    post: Option<ChannelAffine>,
}

impl CustomOp3 for ExpandDepthwise {
    fn name(&self) -> &'static str {
        "expand-depthwise"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let (kin, b) = planes(l1, g.in_h, g.in_w, "expansion input")?;
        let m = match l2.dims() {
            [m, k] if *k == kin && kin > 0 => *m,
            d => candle_core::bail!("expansion weights: expected (M,{kin}), got {d:?}"),
        };
        check_kernel(l3, m, g)?;
        let (x, w, k) = (slice::<f32>(s1, l1)?, slice::<f32>(s2, l2)?, slice::<f32>(s3, l3)?);
        let (pre, post) = (host_affine::<f32>(self.pre.as_ref(), m)?, host_affine::<f32>(self.post.as_ref(), m)?);
        let (hw, op, kk) = (g.in_plane(), g.out_plane(), g.k * g.k);
        let blocks = m.div_ceil(BLOCK);
        // Weights per block as (K, BLOCK), zero-padded: one row of broadcasts per input channel.
        let mut packed = vec![0f32; blocks * kin * BLOCK];
        for (o, row) in w.chunks_exact(kin).enumerate() {
            for (c, v) in row.iter().enumerate() {
                packed[(o / BLOCK * kin + c) * BLOCK + o % BLOCK] = *v;
            }
        }
        let simd = Simd::detect();
        let mut y = vec![0f32; m * b * op];
        let out = DisjointParts::new(&mut y);
        // Units run image-major, so neighbouring units share the image's input.
        (0..b * blocks).into_par_iter().for_each_init(
            || (Vec::new(), WindowScratch::default()),
            |(e, scratch), unit| {
                let (img, blk) = (unit / blocks, unit % blocks);
                let c0 = blk * BLOCK;
                let rows = BLOCK.min(m - c0);
                e.resize(BLOCK * hw, 0.0);
                let product = Expansion { x, at: img * hw, channel_stride: b * hw, hw, kin, w: &packed[blk * kin * BLOCK..(blk + 1) * kin * BLOCK], rows };
                product.run(simd, e);
                for j in 0..rows {
                    let ch = c0 + j;
                    let window = Window::forward(g, &e[j * hw..(j + 1) * hw], 1, &k[ch * kk..(ch + 1) * kk], (channel_affine(&pre, ch), channel_affine(&post, ch)));
                    // SAFETY: plane (ch, img) belongs to this unit alone (units
                    // cover distinct images x channel blocks) and `y` outlives the loop.
                    let dst = unsafe { out.part((ch * b + img) * op, op) };
                    window.run(simd, dst, scratch);
                }
            },
        );
        output(y, (m, b, g.out_h, g.out_w))
    }
}

/// One unit's expansion product: e[j, p] = sum_c w[c, j] * x[c, p] for the
/// block's `rows` channels over one image's `hw` pixels.
struct Expansion<'a> {
    x: &'a [f32],
    /// Where the image's first input channel starts, and the distance between channels.
    at: usize,
    channel_stride: usize,
    hw: usize,
    kin: usize,
    /// (kin, BLOCK) packed weights.
    w: &'a [f32],
    rows: usize,
}

impl Expansion<'_> {
    /// The product, in vector registers where the CPU has AVX2 or AVX-512
    /// (with fused multiply-add; the baseline multiplies and adds).
    fn run(&self, simd: Simd, e: &mut [f32]) {
        assert!(e.len() >= self.rows * self.hw && self.w.len() >= self.kin * BLOCK);
        assert!(self.kin == 0 || self.at + (self.kin - 1) * self.channel_stride + self.hw <= self.x.len());
        match simd {
            // SAFETY: `Simd::detect` returns these levels only after seeing
            // the CPU's features; the bounds the kernels rely on are asserted above.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { self.run_avx512(e) },
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { self.run_avx2(e) },
            _ => self.scalar::<false>(e, 0),
        }
    }

    /// Pixels `from..hw`, one at a time.
    #[inline(always)]
    fn scalar<const FMA: bool>(&self, e: &mut [f32], from: usize) {
        for p in from..self.hw {
            let mut acc = [0f32; BLOCK];
            for c in 0..self.kin {
                let xv = self.x[self.at + c * self.channel_stride + p];
                for (a, w) in acc.iter_mut().zip(&self.w[c * BLOCK..(c + 1) * BLOCK]) {
                    *a = if FMA { w.mul_add(xv, *a) } else { *a + w * xv };
                }
            }
            for (j, a) in acc.iter().enumerate().take(self.rows) {
                e[j * self.hw + p] = *a;
            }
        }
    }

    /// 16 pixels x BLOCK channels per step in 8 (AVX-512) registers.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    unsafe fn run_avx512(&self, e: &mut [f32]) {
        use std::arch::x86_64::*;
        let (x, w, out) = (self.x.as_ptr(), self.w.as_ptr(), e.as_mut_ptr());
        let mut p0 = 0;
        while p0 + 16 <= self.hw {
            let mut acc = [_mm512_setzero_ps(); BLOCK];
            for c in 0..self.kin {
                // SAFETY (all pointer reads and writes): within the slices, as `run` asserts.
                let xv = unsafe { _mm512_loadu_ps(x.add(self.at + c * self.channel_stride + p0)) };
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(unsafe { *w.add(c * BLOCK + j) }), xv, *a);
                }
            }
            for (j, a) in acc.iter().enumerate().take(self.rows) {
                unsafe { _mm512_storeu_ps(out.add(j * self.hw + p0), *a) };
            }
            p0 += 16;
        }
        self.scalar::<true>(e, p0);
    }

    /// 16 pixels x half a block of channels per step in 8 (AVX2) registers
    /// (a whole block would take all 16 and spill: measured slower than BLAS).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, e: &mut [f32]) {
        use std::arch::x86_64::*;
        const HALF: usize = BLOCK / 2;
        let (x, w, out) = (self.x.as_ptr(), self.w.as_ptr(), e.as_mut_ptr());
        let mut p0 = 0;
        while p0 + 16 <= self.hw {
            for j0 in (0..self.rows).step_by(HALF) {
                let mut acc = [[_mm256_setzero_ps(); 2]; HALF];
                for c in 0..self.kin {
                    // SAFETY (all pointer reads and writes): within the slices, as `run` asserts.
                    let from = self.at + c * self.channel_stride + p0;
                    let xv = unsafe { [_mm256_loadu_ps(x.add(from)), _mm256_loadu_ps(x.add(from + 8))] };
                    for (j, a) in acc.iter_mut().enumerate() {
                        let wv = _mm256_set1_ps(unsafe { *w.add(c * BLOCK + j0 + j) });
                        a[0] = _mm256_fmadd_ps(wv, xv[0], a[0]);
                        a[1] = _mm256_fmadd_ps(wv, xv[1], a[1]);
                    }
                }
                for (j, a) in acc.iter().enumerate().take(self.rows - j0) {
                    unsafe {
                        _mm256_storeu_ps(out.add((j0 + j) * self.hw + p0), a[0]);
                        _mm256_storeu_ps(out.add((j0 + j) * self.hw + p0 + 8), a[1]);
                    }
                }
            }
            p0 += 16;
        }
        self.scalar::<true>(e, p0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every vector unit's product equals the product in f64 to rounding,
    /// including the pixels after the last full 16-pixel step and a block
    /// with fewer than BLOCK channels.
    #[test]
    fn every_vector_unit_computes_the_product() {
        let levels = Simd::levels_to_test();
        let (kin, b, hw, rows) = (7, 3, 37, 5);
        let x = Simd::test_values(kin * b * hw);
        let mut w = vec![0f32; kin * BLOCK];
        for c in 0..kin {
            for j in 0..rows {
                w[c * BLOCK + j] = (c * 5 + j) as f32 * 0.11 - 1.3;
            }
        }
        let img = 1;
        let product = Expansion { x: &x, at: img * hw, channel_stride: b * hw, hw, kin, w: &w, rows };
        for level in levels {
            let mut e = vec![f32::NAN; BLOCK * hw];
            product.run(level, &mut e);
            for j in 0..rows {
                for p in 0..hw {
                    let want: f64 = (0..kin).map(|c| w[c * BLOCK + j] as f64 * x[(c * b + img) * hw + p] as f64).sum();
                    let got = e[j * hw + p] as f64;
                    assert!((got - want).abs() < 1e-5 * want.abs().max(1.0), "{level:?}: channel {j} pixel {p}: {got} vs {want}");
                }
            }
        }
    }
}
