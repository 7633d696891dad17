//! Dense convolutions over few input channels (a network's first layer reads
//! 3 colour channels), computed directly on the CPU.
//!
//! Through im2col, such a layer writes C*K*K = 27 columns per output pixel
//! and then runs a product of depth 27, a depth BLAS runs poorly: on 2 AVX2
//! cores, MobileNetV2's first layer at batch 32 (32 x 27 weights, 204,800
//! pixels) spent 12 ms in im2col and 10 ms in the product, 11% of the
//! forward. Here each output row gathers the C*K*K input rows its taps read
//! into a small buffer (in L1), and every output channel is a weighted sum
//! of those rows, kept in registers along the row: 11 ms, 6% of the forward.

use candle_core::{CpuStorage, Device, Result, Storage, Tensor};
use rayon::prelude::*;

use super::simd::Simd;
use super::storage::{slice, DisjointParts};
use super::Geom;

/// Largest C*K*K computed directly; deeper products keep im2col and BLAS,
/// which run them near their peak.
pub const MAX_DEPTH: usize = 32;

/// (C, B, H, W) input, (O, C*K*K) weights (rows ordered as `im2col`'s:
/// c*K*K + a*K + b) -> (O, B, Ho, Wo). CPU f32, C*K*K <= MAX_DEPTH.
pub fn conv_direct(x: &Tensor, w: &Tensor, g: Geom) -> Result<Tensor> {
    conv_direct_at(Simd::detect(), x, w, g)
}

fn conv_direct_at(simd: Simd, x: &Tensor, w: &Tensor, g: Geom) -> Result<Tensor> {
    let (c, b, h, wd) = x.dims4()?;
    let (o, depth) = w.dims2()?;
    if (h, wd) != (g.in_h, g.in_w) || depth != c * g.k * g.k || depth > MAX_DEPTH {
        candle_core::bail!("conv_direct: input {:?} and weights {:?} do not fit {g:?} (at most {MAX_DEPTH} taps)", x.shape(), w.shape());
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (Storage::Cpu(xc @ CpuStorage::F32(_)), Storage::Cpu(wc @ CpuStorage::F32(_))) = (&*xs, &*ws) else {
        candle_core::bail!("conv_direct: expected CPU f32 tensors");
    };
    let (xv, wv) = (slice::<f32>(xc, xl)?, slice::<f32>(wc, wl)?);
    let (plane, width) = (g.out_plane(), g.out_w);
    // Each tap's row, padded with zeros to whole vectors of 8.
    let padded = width.next_multiple_of(8);
    let len = o * b * plane;
    let mut out = Vec::with_capacity(len);
    let parts = DisjointParts::uninit(&mut out.spare_capacity_mut()[..len]);
    let cols = g.col_taps();
    (0..b * g.out_h).into_par_iter().for_each_init(
        || (vec![0f32; depth * padded], vec![0f32; g.in_w + 1]),
        |(taps, phases), row| {
            let (img, oy) = (row / g.out_h, row % g.out_h);
            // The K taps along a row read the same input row: with stride 2 it
            // is split once into its even and odd columns, so each tap's
            // pixels are one contiguous copy.
            for (t0, rows) in taps.chunks_mut(padded * g.k).enumerate() {
                let (ch, a) = (t0 / g.k, t0 % g.k);
                let Some(r) = Geom::src(oy, a, g.stride, g.pad_top, g.in_h) else {
                    rows.fill(0.0);
                    continue;
                };
                let src = &xv[((ch * b + img) * g.in_h + r) * g.in_w..][..g.in_w];
                let (even, odd) = phases.split_at_mut(g.in_w.div_ceil(2));
                if g.stride == 2 {
                    for (i, pair) in src.chunks(2).enumerate() {
                        even[i] = pair[0];
                        if let Some(v) = pair.get(1) {
                            odd[i] = *v;
                        }
                    }
                }
                for (bb, dst) in rows.chunks_exact_mut(padded).enumerate() {
                    let (lo, hi, x0) = cols[bb];
                    // Only the pixels outside the input (padding, and the tail
                    // up to a whole vector) are zeros.
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    let dst = &mut dst[lo..hi];
                    match g.stride {
                        1 => dst.copy_from_slice(&src[x0..x0 + dst.len()]),
                        2 => {
                            let phase: &[f32] = if x0 % 2 == 0 { even } else { odd };
                            dst.copy_from_slice(&phase[x0 / 2..x0 / 2 + dst.len()]);
                        }
                        s => dst.iter_mut().zip(src[x0..].iter().step_by(s)).for_each(|(d, v)| *d = *v),
                    }
                }
            }
            let sums = RowSums { taps, w: wv, depth, width, padded };
            // Output channel oc's row sits at oc * b * plane + this row's offset.
            sums.run(simd, &parts, img * plane + oy * width, b * plane);
        },
    );
    // SAFETY: the rows (b, oy) cover every image's output rows, and each
    // task wrote its row in every output channel.
    unsafe { out.set_len(len) };
    Tensor::from_vec(out, (o, b, g.out_h, g.out_w), &Device::Cpu)
}

/// One output row in every channel: out[oc][j] = sum over t of
/// w[oc][t] * taps[t][j], the terms added in order of t (the same bits at
/// every vector width).
struct RowSums<'a> {
    taps: &'a [f32],
    w: &'a [f32],
    depth: usize,
    width: usize,
    /// Taps' row length: `width` padded with zeros to whole vectors of 8.
    padded: usize,
}

impl RowSums<'_> {
    fn run(&self, simd: Simd, out: &DisjointParts, at: usize, channel_stride: usize) {
        #[cfg(target_arch = "x86_64")]
        if simd != Simd::Baseline {
            // SAFETY: AVX2 is there (`Simd::detect` or the test's levels).
            return unsafe { self.sum_avx2(out, at, channel_stride) };
        }
        let _ = simd;
        let stride = self.padded;
        for (oc, w) in self.w.chunks_exact(self.depth).enumerate() {
            // SAFETY: this row of channel oc belongs to the calling task alone.
            let dst = unsafe { out.part(at + oc * channel_stride, self.width) };
            for (j, d) in dst.iter_mut().enumerate() {
                *d = w.iter().enumerate().fold(0.0, |acc, (t, wt)| acc + wt * self.taps[t * stride + j]);
            }
        }
    }

    /// `run` in AVX2: up to 32 pixels at a time in registers over all taps
    /// (each lane the same multiply, then add, in the same order: the same bits).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn sum_avx2(&self, out: &DisjointParts, at: usize, channel_stride: usize) {
        let vectors = self.padded / 8;
        for (oc, w) in self.w.chunks_exact(self.depth).enumerate() {
            // SAFETY: this row of channel oc belongs to the calling task alone.
            let dst = unsafe { out.part(at + oc * channel_stride, self.width) };
            let mut v = 0;
            while v < vectors {
                // SAFETY (all four): the spans lie within the taps' padded rows.
                match vectors - v {
                    1 => unsafe { self.span_avx2::<1>(w, v * 8, dst) },
                    2 => unsafe { self.span_avx2::<2>(w, v * 8, dst) },
                    3 => unsafe { self.span_avx2::<3>(w, v * 8, dst) },
                    _ => unsafe { self.span_avx2::<4>(w, v * 8, dst) },
                }
                v += 4;
            }
        }
    }

    /// Pixels j0..j0 + 8N of one channel into dst (those of them that exist).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn span_avx2<const N: usize>(&self, w: &[f32], j0: usize, dst: &mut [f32]) {
        use std::arch::x86_64::*;
        let stride = self.padded;
        assert!(j0 + 8 * N <= stride && self.taps.len() >= w.len() * stride, "span outside the taps");
        let mut acc = [_mm256_setzero_ps(); N];
        for (t, wt) in w.iter().enumerate() {
            let wv = _mm256_set1_ps(*wt);
            // SAFETY: t * stride + j0 + 8N <= the taps' length (asserted).
            let row = unsafe { self.taps.as_ptr().add(t * stride + j0) };
            for (i, a) in acc.iter_mut().enumerate() {
                *a = _mm256_add_ps(*a, _mm256_mul_ps(wv, unsafe { _mm256_loadu_ps(row.add(8 * i)) }));
            }
        }
        let mut sums = [0f32; 32];
        for (i, a) in acc.iter().enumerate() {
            // SAFETY: 8N <= 32 floats.
            unsafe { _mm256_storeu_ps(sums.as_mut_ptr().add(8 * i), *a) };
        }
        let n = (dst.len() - j0).min(8 * N);
        dst[j0..j0 + n].copy_from_slice(&sums[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::im2col;

    /// Against the f64 product of im2col's columns, for 'same' and 'valid'
    /// padding, strides 1 and 2, rows shorter than, equal to and longer than
    /// a register span (with a partial span); every vector level gives the
    /// same bits.
    #[test]
    fn matches_im2col_product_at_every_vector_level() -> Result<()> {
        for (c, b, h, w, k, stride, same, o) in [(3, 2, 15, 13, 3, 2, true, 5), (3, 1, 150, 150, 3, 2, false, 32), (1, 3, 9, 70, 3, 1, true, 7), (2, 2, 8, 64, 2, 1, false, 3)] {
            let g = if same { Geom::same(h, w, k, stride) } else { Geom::valid(h, w, k, stride) };
            let x = Tensor::from_vec(Simd::test_values(c * b * h * w), (c, b, h, w), &Device::Cpu)?;
            let wt = Tensor::from_vec(Simd::test_values(o * c * k * k + 3)[3..].to_vec(), (o, c * k * k), &Device::Cpu)?;
            let cols = im2col(&x.to_dtype(candle_core::DType::F64)?, g)?;
            let want = wt.to_dtype(candle_core::DType::F64)?.matmul(&cols)?.flatten_all()?.to_vec1::<f64>()?;
            let size = wt.abs()?.to_dtype(candle_core::DType::F64)?.matmul(&cols.abs()?)?.flatten_all()?.to_vec1::<f64>()?;
            let mut bits: Option<Vec<u32>> = None;
            for level in Simd::levels_to_test() {
                let got = conv_direct_at(level, &x, &wt, g)?;
                assert_eq!(got.dims(), [o, b, g.out_h, g.out_w]);
                let got = got.flatten_all()?.to_vec1::<f32>()?;
                for (i, ((gv, wv), s)) in got.iter().zip(&want).zip(&size).enumerate() {
                    assert!((*gv as f64 - wv).abs() <= 1e-6 * s.max(1.0), "{level:?} {c}x{h}x{w} k{k} s{stride}: element {i} {gv} vs {wv}");
                }
                let b: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                match &bits {
                    Some(first) => assert!(first == &b, "{level:?} differs in bits"),
                    None => bits = Some(b),
                }
            }
        }
        Ok(())
    }

    #[test]
    fn refuses_deep_products_and_mismatched_shapes() -> Result<()> {
        let g = Geom::same(8, 8, 3, 1);
        let x = Tensor::zeros((4, 1, 8, 8), candle_core::DType::F32, &Device::Cpu)?;
        assert!(conv_direct(&x, &Tensor::zeros((2, 36), candle_core::DType::F32, &Device::Cpu)?, g).is_err());
        let x = Tensor::zeros((3, 1, 8, 9), candle_core::DType::F32, &Device::Cpu)?;
        assert!(conv_direct(&x, &Tensor::zeros((2, 27), candle_core::DType::F32, &Device::Cpu)?, g).is_err());
        Ok(())
    }
}
