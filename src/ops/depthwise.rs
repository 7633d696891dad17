//! Depthwise KxK convolution (one filter per channel), forward and backward.
//!
//! Candle runs grouped convolutions as one conv per group (~100x slower than
//! needed); these kernels work per (channel, image) plane with row-wise inner
//! loops that the compiler vectorises.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::simd::{simd_versions, Simd};
use super::storage::{build_rows, dispatch, output, slice, zeros, CpuElem};
use super::{Act, Geom};

/// y[c,b] = depthwise(x[c,b], k[c]) for x (C,B,H,W) and k (C, K*K).
pub fn depthwise(x: &Tensor, k: &Tensor, g: Geom) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&k.contiguous()?, Depthwise { g, pre: None, post: None })
}

/// A per-channel affine + activation read on the host, for inference-time
/// fusions: applied to the depthwise input on the fly (or to its output as it
/// is written), a BatchNorm or ReLU next to a depthwise convolution costs no
/// pass over memory of its own (also the BatchNorms that end a residual
/// block, `residual_affine_add`).
#[derive(Debug, Clone)]
pub struct ChannelAffine {
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
    pub act: Option<Act>,
}

/// post(depthwise(pre(x), k)), without gradient (inference).
pub fn depthwise_fused(x: &Tensor, k: &Tensor, g: Geom, pre: Option<ChannelAffine>, post: Option<ChannelAffine>) -> Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(&k.contiguous()?, &Depthwise { g, pre, post })
}

/// dL/dx for the depthwise convolution, given dL/dy (C,B,Ho,Wo).
pub fn depthwise_input_grad(dy: &Tensor, k: &Tensor, g: Geom) -> Result<Tensor> {
    dy.contiguous()?.apply_op2_no_bwd(&k.contiguous()?, &DepthwiseInputGrad { g })
}

/// dL/dk (C, K*K) for the depthwise convolution, summed over the batch.
pub fn depthwise_kernel_grad(x: &Tensor, dy: &Tensor, g: Geom) -> Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &DepthwiseKernelGrad { g })
}

pub(super) fn planes(l: &Layout, h: usize, w: usize, what: &str) -> Result<(usize, usize)> {
    match l.dims() {
        [c, b, hh, ww] if *hh == h && *ww == w => Ok((*c, *b)),
        d => candle_core::bail!("{what}: expected (C,B,{h},{w}), got {d:?}"),
    }
}

pub(super) fn check_kernel(l: &Layout, c: usize, g: &Geom) -> Result<()> {
    if l.dims() != [c, g.k * g.k] {
        candle_core::bail!("depthwise kernel: expected ({c},{}), got {:?}", g.k * g.k, l.dims());
    }
    Ok(())
}

/// Per-channel scales, shifts and the activation, in the op's element type.
pub(super) type HostAffine<T> = Option<(Vec<T>, Vec<T>, Option<Act>)>;

/// An affine's per-channel numbers in the op's element type, checked against
/// the channel count.
pub(super) fn host_affine<T: CpuElem>(a: Option<&ChannelAffine>, c: usize) -> Result<HostAffine<T>> {
    match a {
        None => Ok(None),
        Some(p) if p.scale.len() == c && p.shift.len() == c => {
            let cast = |v: &[f32]| v.iter().map(|x| <T as num_traits::NumCast>::from(*x).unwrap_or(<T as num_traits::Zero>::zero())).collect::<Vec<T>>();
            Ok(Some((cast(&p.scale), cast(&p.shift), p.act)))
        }
        Some(_) => candle_core::bail!("depthwise: fused affine does not have {c} channels"),
    }
}

/// One channel's numbers of a `host_affine`.
pub(super) fn channel_affine<T: CpuElem>(a: &HostAffine<T>, ch: usize) -> PlaneAffine<T> {
    a.as_ref().map(|(s, t, act)| (s[ch], t[ch], *act))
}

type Taps = [(usize, usize, usize)];

fn input_grad_plane<T: CpuElem>(dy: &[T], k: &[T], dx: &mut [T], g: &Geom, taps: &Taps) {
    dx.fill(T::zero());
    for oi in 0..g.out_h {
        let dyrow = &dy[oi * g.out_w..(oi + 1) * g.out_w];
        for a in 0..g.k {
            let Some(r) = Geom::src(oi, a, g.stride, g.pad_top, g.in_h) else { continue };
            let dxrow = &mut dx[r * g.in_w..(r + 1) * g.in_w];
            for b in 0..g.k {
                let w = k[a * g.k + b];
                let (lo, hi, x0) = taps[b];
                if lo >= hi {
                    continue;
                }
                if g.stride == 1 {
                    for (dxv, dyv) in dxrow[x0..x0 + hi - lo].iter_mut().zip(&dyrow[lo..hi]) {
                        *dxv += w * *dyv;
                    }
                } else {
                    for (n, dyv) in dyrow[lo..hi].iter().enumerate() {
                        dxrow[x0 + n * g.stride] += w * *dyv;
                    }
                }
            }
        }
    }
}

/// Accumulates the K*K tap gradients of one plane into `dk`.
fn kernel_grad_plane<T: CpuElem>(x: &[T], dy: &[T], dk: &mut [T], g: &Geom, taps: &Taps) {
    for oi in 0..g.out_h {
        let dyrow = &dy[oi * g.out_w..(oi + 1) * g.out_w];
        for a in 0..g.k {
            let Some(r) = Geom::src(oi, a, g.stride, g.pad_top, g.in_h) else { continue };
            let xrow = &x[r * g.in_w..(r + 1) * g.in_w];
            for b in 0..g.k {
                let (lo, hi, x0) = taps[b];
                if lo >= hi {
                    continue;
                }
                let s: T = if g.stride == 1 {
                    dyrow[lo..hi].iter().zip(&xrow[x0..x0 + hi - lo]).map(|(d, x)| *d * *x).sum()
                } else {
                    dyrow[lo..hi].iter().enumerate().map(|(n, d)| *d * xrow[x0 + n * g.stride]).sum()
                };
                dk[a * g.k + b] += s;
            }
        }
    }
}

/// A per-channel affine + activation as plain numbers, for one plane.
pub(super) type PlaneAffine<T> = Option<(T, T, Option<Act>)>;

/// The arguments of one window sum over `planes` consecutive planes that share
/// a kernel (one channel's planes of several images):
/// dst[i,j] = post(sum_{a,b} w[a*k+b] * pre(src)_padded[i*s+a, j*s+b]) per
/// plane, where each (sh x sw) `src` plane sits at (pad_top, pad_left) in its
/// padded plane.
///
/// Each padded plane is split into its s x s polyphase components (rows and
/// columns by their remainder mod s), row-major with width wq = out_w + (k-1)/s,
/// and the planes are stacked within each component. Tap (a,b) then reads
/// component (a%s, b%s) shifted by (a/s, b/s): every tap is one contiguous
/// slice over all the planes' outputs at once (the rows between planes are
/// computed and dropped), so the inner loop vectorises at any stride and
/// small planes (Xception's 9x9 middle flow, MobileNetV2's 5x5 to 20x20) pay
/// their set-up once per group instead of once per plane.
pub(super) struct Window<'a, T> {
    src: &'a [T],
    src_dims: (usize, usize),
    planes: usize,
    w: &'a [T],
    k: usize,
    stride: usize,
    pads: (usize, usize),
    out_dims: (usize, usize),
    affines: (PlaneAffine<T>, PlaneAffine<T>),
}

impl<'a, T> Window<'a, T> {
    /// The forward convolution of `planes` planes of one channel (kernel `w`)
    /// under `g`, with the input and output affines.
    pub(super) fn forward(g: &Geom, src: &'a [T], planes: usize, w: &'a [T], affines: (PlaneAffine<T>, PlaneAffine<T>)) -> Self {
        Window { src, src_dims: (g.in_h, g.in_w), planes, w, k: g.k, stride: g.stride, pads: (g.pad_top, g.pad_left), out_dims: (g.out_h, g.out_w), affines }
    }
}

/// A thread's buffers for window sums, kept between the sums it runs.
pub(super) struct WindowScratch<T> {
    /// The (padded or polyphase) input planes.
    input: Vec<T>,
    /// The sums before the output affine.
    sums: Vec<T>,
    /// `sum_same3`'s column masks (left then right), and the row width and
    /// length they were built for.
    masks: Vec<T>,
    masks_for: (usize, usize),
}

impl<T> Default for WindowScratch<T> {
    fn default() -> Self {
        WindowScratch { input: Vec::new(), sums: Vec::new(), masks: Vec::new(), masks_for: (0, 0) }
    }
}

impl<T: CpuElem> Window<'_, T> {
    simd_versions!(pub(super) sum(dst: &mut [T], scratch: &mut WindowScratch<T>));

    #[inline(always)]
    fn sum(&self, dst: &mut [T], scratch: &mut WindowScratch<T>) {
        let (k, stride, w) = (self.k, self.stride, self.w);
        let ((sh, sw), (out_h, out_w)) = (self.src_dims, self.out_dims);
        if (k, stride, self.pads) == (3, 1, (1, 1)) && (out_h, out_w) == (sh, sw) {
            return self.sum_same3(dst, scratch);
        }
        let WindowScratch { input: scratch, sums: acc, .. } = scratch;
        let reach = (k - 1) / stride;
        let (hq, wq) = (out_h + reach, out_w + reach);
        let plane = hq * wq;
        let phase = self.planes * plane;
        // k spare elements at the end keep every tap slice in bounds.
        zeroed(scratch, stride * stride * phase + k);
        for (j, src) in self.src.chunks_exact(sh * sw).take(self.planes).enumerate() {
            polyphase_into(scratch, j * plane, phase, src, (sh, sw), stride, (hq, wq), self.pads, self.affines.0);
        }
        let n = (self.planes - 1) * plane + out_h * wq;
        zeroed(acc, n);
        let tap = |a: usize, b: usize| {
            let at = ((a % stride) * stride + b % stride) * phase + (a / stride) * wq + b / stride;
            &scratch[at..at + n]
        };
        if k == 3 {
            let (s0, s1, s2, s3, s4, s5, s6, s7, s8) = (tap(0, 0), tap(0, 1), tap(0, 2), tap(1, 0), tap(1, 1), tap(1, 2), tap(2, 0), tap(2, 1), tap(2, 2));
            let acc = &mut acc[..n];
            for q in 0..n {
                acc[q] = s0[q] * w[0] + s1[q] * w[1] + s2[q] * w[2] + s3[q] * w[3] + s4[q] * w[4] + s5[q] * w[5] + s6[q] * w[6] + s7[q] * w[7] + s8[q] * w[8];
            }
        } else {
            for a in 0..k {
                for b in 0..k {
                    let wt = w[a * k + b];
                    for (o, v) in acc.iter_mut().zip(tap(a, b)) {
                        *o += wt * *v;
                    }
                }
            }
        }
        for (j, dst) in dst.chunks_exact_mut(out_h * out_w).take(self.planes).enumerate() {
            for i in 0..out_h {
                let at = j * plane + i * wq;
                apply_affine(&mut dst[i * out_w..(i + 1) * out_w], &acc[at..at + out_w], self.affines.1);
            }
        }
    }

    /// `sum` for a 3x3 'same' window at stride 1 (every depthwise
    /// convolution of Xception, MobileNetV2's stride-1 ones, and the stride-1
    /// input gradient): the planes lie in one flat buffer, each followed by a
    /// row of zeros, so every tap is one shifted slice of it (no per-row
    /// copies: on Xception's 9 x 9 planes those were most of the time); the
    /// taps that would wrap to the row before or after are multiplied by 0
    /// (for finite inputs, the same sums as reading zero padding).
    #[inline(always)]
    fn sum_same3(&self, dst: &mut [T], scratch: &mut WindowScratch<T>) {
        let (h, w) = self.src_dims;
        let (plane, seg) = (h * w, (h + 1) * w);
        // Plane j's pixel (r, c) at lead + j*seg + r*w + c, after a lead of a
        // zero row and one zero; the outputs run over the planes and the
        // zero rows between them. Only the zeros are written before the
        // planes go in.
        let lead = w + 1;
        let n = (self.planes - 1) * seg + plane;
        let input = &mut scratch.input;
        input.resize(lead + self.planes * seg + 1, T::zero());
        input[..lead].fill(T::zero());
        for (j, src) in self.src.chunks_exact(plane).take(self.planes).enumerate() {
            let at = lead + j * seg;
            apply_affine(&mut input[at..at + plane], src, self.affines.0);
            input[at + plane..at + seg].fill(T::zero());
        }
        input[lead + self.planes * seg] = T::zero();
        // Column masks (1, or 0 where the tap's column is outside the row),
        // one row built and doubled by copies; the same for every sum of
        // this shape, so built once per thread.
        if scratch.masks_for != (w, n) {
            scratch.masks.resize(2 * n, T::zero());
            let (left, right) = scratch.masks.split_at_mut(n);
            for c in 0..w.min(n) {
                left[c] = if c == 0 { T::zero() } else { T::one() };
                right[c] = if c + 1 == w { T::zero() } else { T::one() };
            }
            let mut done = w.min(n);
            while done < n {
                let len = done.min(n - done);
                left.copy_within(0..len, done);
                right.copy_within(0..len, done);
                done += len;
            }
            scratch.masks_for = (w, n);
        }
        // One plane's sums go straight to its output (then the affine in place).
        let out = if self.planes == 1 {
            &mut dst[..n]
        } else {
            scratch.sums.resize(n, T::zero());
            &mut scratch.sums[..n]
        };
        let wt = self.w;
        let tap = |a: usize, b: usize| &scratch.input[a * w + b..][..n];
        let (s0, s1, s2, s3, s4, s5, s6, s7, s8) = (tap(0, 0), tap(0, 1), tap(0, 2), tap(1, 0), tap(1, 1), tap(1, 2), tap(2, 0), tap(2, 1), tap(2, 2));
        let (l, r) = scratch.masks.split_at(n);
        for q in 0..n {
            out[q] = (s0[q] * l[q]) * wt[0] + s1[q] * wt[1] + (s2[q] * r[q]) * wt[2] + (s3[q] * l[q]) * wt[3] + s4[q] * wt[4] + (s5[q] * r[q]) * wt[5]
                + (s6[q] * l[q]) * wt[6]
                + s7[q] * wt[7]
                + (s8[q] * r[q]) * wt[8];
        }
        if self.planes == 1 {
            affine_in_place(&mut dst[..n], self.affines.1);
            return;
        }
        for (j, dst) in dst.chunks_exact_mut(plane).take(self.planes).enumerate() {
            apply_affine(dst, &scratch.sums[j * seg..][..plane], self.affines.1);
        }
    }
}

/// How many of a channel's `b` planes one window sum (or stride-1 kernel
/// gradient pass) takes: the largest divisor of `b` whose planes stay
/// within a few L1-sized buffers.
fn plane_group(b: usize, plane: usize) -> usize {
    const ELEMS: usize = 4 * 1024;
    (1..=b).rev().find(|g| b % g == 0 && g * plane <= ELEMS).unwrap_or(1)
}

/// Makes `buf` `len` zeros, keeping its allocation. (`clear` then `resize`
/// wrote the zeros one element at a time past the last whole vector: a fifth
/// of the depthwise time on 9x9 planes, measured; a fill is one memset.)
#[inline(always)]
fn zeroed<T: CpuElem>(buf: &mut Vec<T>, len: usize) {
    buf.resize(len, T::zero());
    buf.fill(T::zero());
}

/// d = affine(s), or a copy without one.
#[inline(always)]
fn apply_affine<T: CpuElem>(d: &mut [T], s: &[T], affine: PlaneAffine<T>) {
    match affine {
        None => d.copy_from_slice(s),
        Some((sc, sh, None)) => d.iter_mut().zip(s).for_each(|(d, s)| *d = *s * sc + sh),
        Some((sc, sh, Some(a))) => d.iter_mut().zip(s).for_each(|(d, s)| *d = a.apply(*s * sc + sh)),
    }
}

/// d = affine(d).
#[inline(always)]
fn affine_in_place<T: CpuElem>(d: &mut [T], affine: PlaneAffine<T>) {
    match affine {
        None => {}
        Some((sc, sh, None)) => d.iter_mut().for_each(|d| *d = *d * sc + sh),
        Some((sc, sh, Some(a))) => d.iter_mut().for_each(|d| *d = a.apply(*d * sc + sh)),
    }
}

/// Lays a (sh x sw) plane, placed at (pad_top, pad_left) in a zero-padded
/// plane, into the zeroed `buf` as that plane's s x s polyphase components of
/// (hq x wq) each, component (ra, cb) at `base + (ra*s + cb) * phase` holding
/// padded[ra + s*r][cb + s*c] (for s = 1, the padded plane itself); `pre`
/// applies a per-channel affine + activation on the way (fused BatchNorm).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn polyphase_into<T: CpuElem>(
    buf: &mut [T],
    base: usize,
    phase: usize,
    src: &[T],
    (sh, sw): (usize, usize),
    s: usize,
    (hq, wq): (usize, usize),
    (pad_top, pad_left): (usize, usize),
    pre: PlaneAffine<T>,
) {
    for r in 0..sh {
        let pr = r + pad_top;
        if pr / s >= hq {
            break;
        }
        let row = &src[r * sw..(r + 1) * sw];
        if s == 1 {
            let n = sw.min(wq.saturating_sub(pad_left));
            let at = base + pr * wq + pad_left;
            apply_affine(&mut buf[at..at + n], &row[..n], pre);
            continue;
        }
        let f = |v: T| match pre {
            None => v,
            Some((sc, sh, None)) => v * sc + sh,
            Some((sc, sh, Some(a))) => a.apply(v * sc + sh),
        };
        let row_at = base + (pr % s) * s * phase + (pr / s) * wq;
        let mut done = 0;
        if s == 2 {
            // Column pairs (2t, 2t+1) land at q = t + pad_left/2 in component
            // pad_left%2 and at q = t + (pad_left+1)/2 in the other one: a
            // de-interleave, which vectorises.
            let (qa, qb) = (pad_left / 2, (pad_left + 1) / 2);
            let pairs = (sw / 2).min(wq.saturating_sub(qb));
            let ca = pad_left % 2;
            let (first, second) = buf[row_at..].split_at_mut(phase);
            let (da, db) = if ca == 0 { (first, second) } else { (second, first) };
            let (da, db) = (&mut da[qa..qa + pairs], &mut db[qb..qb + pairs]);
            for ((x, y), pair) in da.iter_mut().zip(db.iter_mut()).zip(row.chunks_exact(2)) {
                *x = f(pair[0]);
                *y = f(pair[1]);
            }
            done = 2 * pairs;
        }
        for (c, v) in row.iter().enumerate().skip(done) {
            let pc = c + pad_left;
            if pc / s < wq {
                buf[row_at + (pc % s) * phase + pc / s] = f(*v);
            }
        }
    }
}

/// Dot product with 16 independent partial sums, so it vectorises without
/// reassociation flags.
#[inline(always)]
fn dot<T: CpuElem>(a: &[T], b: &[T]) -> T {
    let mut lanes = [T::zero(); 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            lanes[l] += x[l] * y[l];
        }
    }
    let mut s = lanes.iter().fold(T::zero(), |acc, v| acc + *v);
    for (x, y) in ra.iter().zip(rb) {
        s += *x * *y;
    }
    s
}

/// Stride-1 kernel gradient of `count` planes, accumulated into `dk`:
/// dk[a,b] += sum_{p,i,j} dy_p[i,j] * x_p_padded[i+a, j+b]. The padded
/// planes are stacked in `xs` and the dy planes laid out alike in `dys`
/// (zero in the padding rows and columns), so that each tap is one dot over
/// all the planes at once: on small planes (Xception's 9x9 middle flow) a
/// dot per plane and tap was mostly set-up.
#[inline(always)]
fn kernel_grad_planes_s1<T: CpuElem>(x: &[T], dy: &[T], count: usize, dk: &mut [T], g: &Geom, xs: &mut Vec<T>, dys: &mut Vec<T>) {
    let k = g.k;
    let (hp, wp) = (g.out_h + k - 1, g.out_w + k - 1);
    let padded = hp * wp;
    zeroed(xs, count * padded + k);
    zeroed(dys, count * padded);
    for (q, (xp, dyp)) in x.chunks_exact(g.in_plane()).zip(dy.chunks_exact(g.out_plane())).take(count).enumerate() {
        polyphase_into(xs, q * padded, padded, xp, (g.in_h, g.in_w), 1, (hp, wp), (g.pad_top, g.pad_left), None);
        for (i, row) in dyp.chunks_exact(g.out_w).enumerate() {
            let at = q * padded + i * wp;
            dys[at..at + g.out_w].copy_from_slice(row);
        }
    }
    // The last plane's padding rows hold no dy: the dots stop before them.
    let n = (count * hp - (k - 1)) * wp;
    for a in 0..k {
        for b in 0..k {
            dk[a * k + b] += dot(&dys[..n], &xs[a * wp + b..a * wp + b + n]);
        }
    }
}

/// One channel's input and output-gradient planes (all images), whose
/// kernel gradient is the sum over the images.
struct KernelGradPlanes<'a, T> {
    x: &'a [T],
    dy: &'a [T],
    g: &'a Geom,
    taps: &'a Taps,
}

impl<T: CpuElem> KernelGradPlanes<'_, T> {
    // Accumulates into `dk`.
    simd_versions!(sum(dk: &mut [T], xs: &mut Vec<T>, dys: &mut Vec<T>));

    #[inline(always)]
    fn sum(&self, dk: &mut [T], xs: &mut Vec<T>, dys: &mut Vec<T>) {
        let g = self.g;
        if g.stride == 1 {
            let planes = self.x.len() / g.in_plane().max(1);
            let group = plane_group(planes, (g.out_h + g.k - 1) * (g.out_w + g.k - 1));
            for (xg, dyg) in self.x.chunks(group * g.in_plane()).zip(self.dy.chunks(group * g.out_plane())) {
                kernel_grad_planes_s1(xg, dyg, group, dk, g, xs, dys);
            }
            return;
        }
        for (xp, dyp) in self.x.chunks_exact(g.in_plane()).zip(self.dy.chunks_exact(g.out_plane())) {
            kernel_grad_plane(xp, dyp, dk, g, self.taps);
        }
    }
}

struct Depthwise {
    g: Geom,
    pre: Option<ChannelAffine>,
    post: Option<ChannelAffine>,
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "depthwise"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let (c, b) = planes(l1, g.in_h, g.in_w, "depthwise input")?;
        check_kernel(l2, c, g)?;
        dispatch!(s1, |T| {
            let x = slice::<T>(s1, l1)?;
            let k = slice::<T>(s2, l2)?;
            let kk = g.k * g.k;
            let (pre, post) = (host_affine::<T>(self.pre.as_ref(), c)?, host_affine::<T>(self.post.as_ref(), c)?);
            let simd = Simd::detect();
            // One task per group of a channel's planes (they share the kernel and affines).
            let group = plane_group(b, g.in_plane().max(g.out_plane()));
            let (y, _) = build_rows(
                c * b * g.out_plane(),
                group * g.out_plane(),
                WindowScratch::default,
                |scratch, p, yp: &mut [T]| {
                    let ch = p * group / b;
                    let src = &x[p * group * g.in_plane()..(p + 1) * group * g.in_plane()];
                    let window = Window::forward(g, src, group, &k[ch * kk..(ch + 1) * kk], (channel_affine(&pre, ch), channel_affine(&post, ch)));
                    window.run(simd, yp, scratch);
                },
            );
            output(y, (c, b, g.out_h, g.out_w))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = &self.g;
        let (c, b) = planes(l1, g.in_h, g.in_w, "depthwise input")?;
        check_kernel(l2, c, g)?;
        // The network fuses on the host only (it reads the affines there).
        if self.post.is_some() {
            candle_core::bail!("depthwise: an output affine is fused on the CPU only");
        }
        super::cuda::depthwise_fwd(s1, l1, s2, l2, g, c, b, self.pre.as_ref())
    }

    fn bwd(&self, x: &Tensor, k: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = depthwise_input_grad(dy, k, self.g)?;
        let dk = depthwise_kernel_grad(x, dy, self.g)?;
        Ok((Some(dx), Some(dk)))
    }
}

struct DepthwiseInputGrad {
    g: Geom,
}

impl CustomOp2 for DepthwiseInputGrad {
    fn name(&self) -> &'static str {
        "depthwise-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let (c, b) = planes(l1, g.out_h, g.out_w, "depthwise output grad")?;
        check_kernel(l2, c, g)?;
        dispatch!(s1, |T| {
            let dy = slice::<T>(s1, l1)?;
            let k = slice::<T>(s2, l2)?;
            let taps = g.col_taps();
            let simd = Simd::detect();
            let kk = g.k * g.k;
            // Stride 1 sums a channel's planes in groups, as the forward does.
            let group = if g.stride == 1 { plane_group(b, g.in_plane().max(g.out_plane())) } else { 1 };
            let (dx, _) = build_rows(
                c * b * g.in_plane(),
                group * g.in_plane(),
                || (WindowScratch::default(), Vec::new()),
                |(scratch, flipped), p, dxp: &mut [T]| {
                    let ch = p * group / b;
                    let dyp = &dy[p * group * g.out_plane()..(p + 1) * group * g.out_plane()];
                    let kc = &k[ch * kk..(ch + 1) * kk];
                    if g.stride == 1 {
                        // dx is dy correlated with the 180-degree-rotated kernel.
                        flipped.clear();
                        flipped.extend(kc.iter().rev().copied());
                        let window = Window {
                            src: dyp,
                            src_dims: (g.out_h, g.out_w),
                            planes: group,
                            w: flipped,
                            k: g.k,
                            stride: 1,
                            pads: (g.k - 1 - g.pad_top, g.k - 1 - g.pad_left),
                            out_dims: (g.in_h, g.in_w),
                            affines: (None, None),
                        };
                        window.run(simd, dxp, scratch);
                    } else {
                        input_grad_plane(dyp, kc, dxp, g, &taps);
                    }
                },
            );
            output(dx, (c, b, g.in_h, g.in_w))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = &self.g;
        let (c, b) = planes(l1, g.out_h, g.out_w, "depthwise output grad")?;
        check_kernel(l2, c, g)?;
        super::cuda::depthwise_input_grad(s1, l1, s2, l2, g, c, b)
    }
}

struct DepthwiseKernelGrad {
    g: Geom,
}

impl CustomOp2 for DepthwiseKernelGrad {
    fn name(&self) -> &'static str {
        "depthwise-kernel-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let (c, b) = planes(l1, g.in_h, g.in_w, "depthwise input")?;
        let (c2, b2) = planes(l2, g.out_h, g.out_w, "depthwise output grad")?;
        if (c, b) != (c2, b2) {
            candle_core::bail!("depthwise kernel grad: input {:?} vs grad {:?}", l1.dims(), l2.dims());
        }
        let kk = g.k * g.k;
        dispatch!(s1, |T| {
            let x = slice::<T>(s1, l1)?;
            let dy = slice::<T>(s2, l2)?;
            let taps = g.col_taps();
            let simd = Simd::detect();
            let mut dk = zeros::<T>(c * kk);
            dk.par_chunks_mut(kk).enumerate().for_each_init(
                || (Vec::new(), Vec::new()),
                |(xs, dys), (ch, dkc)| {
                    let planes = KernelGradPlanes {
                        x: &x[ch * b * g.in_plane()..(ch + 1) * b * g.in_plane()],
                        dy: &dy[ch * b * g.out_plane()..(ch + 1) * b * g.out_plane()],
                        g,
                        taps: &taps,
                    };
                    planes.run(simd, dkc, xs, dys);
                },
            );
            output(dk, (c, kk))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = &self.g;
        let (c, b) = planes(l1, g.in_h, g.in_w, "depthwise input")?;
        let (c2, b2) = planes(l2, g.out_h, g.out_w, "depthwise output grad")?;
        if (c, b) != (c2, b2) {
            candle_core::bail!("depthwise kernel grad: input {:?} vs grad {:?}", l1.dims(), l2.dims());
        }
        super::cuda::depthwise_kernel_grad(s1, l1, s2, l2, g, c, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The versions for each vector unit this CPU has give the same bits, at
    /// strides 1 and 2, with and without affines, over grouped planes.
    #[test]
    fn every_vector_unit_gives_the_same_bits() {
        let levels = Simd::levels_to_test();
        let src = Simd::test_values(4 * 13 * 11);
        let w: Vec<f32> = (0..9).map(|i| i as f32 * 0.37 - 1.2).collect();
        for (stride, affines) in [(1, (None, None)), (2, (Some((1.3f32, -0.2f32, Some(Act::Relu))), Some((0.7f32, 0.1f32, Some(Act::Relu6)))))] {
            let g = Geom::same(13, 11, 3, stride);
            let window = Window::forward(&g, &src, 4, &w, affines);
            let run = |simd| {
                let mut dst = vec![0f32; 4 * g.out_plane()];
                window.run(simd, &mut dst, &mut WindowScratch::default());
                dst
            };
            let baseline = run(Simd::Baseline);
            assert!(baseline.iter().any(|v| *v != 0.0));
            for level in &levels {
                let got = run(*level);
                assert!(got.iter().zip(&baseline).all(|(a, b)| a.to_bits() == b.to_bits()), "{level:?} differs from the baseline at stride {stride}");
            }
            // The kernel gradient over the same planes, with the output as dy.
            let taps = g.col_taps();
            let planes = KernelGradPlanes { x: &src, dy: &baseline, g: &g, taps: &taps };
            let grad = |simd| {
                let mut dk = vec![0f32; 9];
                planes.run(simd, &mut dk, &mut Vec::new(), &mut Vec::new());
                dk
            };
            let base_dk = grad(Simd::Baseline);
            assert!(base_dk.iter().any(|v| *v != 0.0));
            for level in &levels {
                assert!(grad(*level).iter().zip(&base_dk).all(|(a, b)| a.to_bits() == b.to_bits()), "{level:?} kernel gradient differs at stride {stride}");
            }
        }
    }

    /// A thread's scratch carries over between sums of different shapes (the
    /// masks and zero rows of the last one must not leak into the next): the
    /// same bits as a fresh scratch, with one plane (summed in its output)
    /// and with several.
    #[test]
    fn a_reused_scratch_gives_the_same_bits_as_a_fresh_one() {
        let src = Simd::test_values(3 * 9 * 9);
        let w: Vec<f32> = (0..9).map(|i| i as f32 * 0.41 - 1.3).collect();
        let affines = (Some((1.1f32, -0.3f32, Some(Act::Relu))), Some((0.8f32, 0.2f32, None)));
        let mut reused = WindowScratch::default();
        for (h, w_, planes) in [(9, 9, 3), (9, 9, 1), (5, 7, 2), (9, 8, 1), (8, 9, 1), (9, 9, 3)] {
            let g = Geom::same(h, w_, 3, 1);
            let window = Window::forward(&g, &src[..planes * h * w_], planes, &w, affines);
            let (mut fresh_out, mut reused_out) = (vec![f32::NAN; planes * h * w_], vec![f32::NAN; planes * h * w_]);
            window.run(Simd::detect(), &mut fresh_out, &mut WindowScratch::default());
            window.run(Simd::detect(), &mut reused_out, &mut reused);
            assert!(fresh_out.iter().all(|v| v.is_finite()), "{h}x{w_}, {planes} planes: an output was not written");
            assert!(fresh_out.iter().zip(&reused_out).all(|(a, b)| a.to_bits() == b.to_bits()), "{h}x{w_}, {planes} planes: reused scratch differs");
        }
    }
}
