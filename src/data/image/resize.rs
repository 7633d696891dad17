//! Pillow's `Image.resize(size, BILINEAR)` for 8-bit RGB, ported from
//! `src/libImaging/Resample.c` so that results are bit-identical.
//!
//! Pillow resamples with a separable triangle filter whose support grows with
//! the downscale factor (antialiasing), rounds the float weights to 22-bit
//! fixed point and runs two passes, each clipped to u8, skipping a pass whose
//! size does not change. Horizontal-first only touches the rows the vertical
//! pass will read. Every float expression keeps Pillow's evaluation order,
//! because a reordered sum can flip a rounding. Checked against Pillow 13.0.0.

use ::image::RgbImage;

/// 32 bits - 8 bits of result - 2 bits of headroom (Pillow's PRECISION_BITS).
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Bilinear (triangle) filter support, before scaling by the downscale factor.
const BILINEAR_SUPPORT: f64 = 1.0;

fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Fixed-point weights for one axis: for each output index, the first input
/// index, the tap count and `ksize` weights (zero-padded).
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the whole input range
/// (Pillow's default box `(0, 0, in_size, in_size)`).
fn precompute_coeffs(in_size: usize, out_size: usize) -> Coeffs {
    // Pillow computes `in1 - in0` in float, then divides in double.
    let in0 = 0.0f32;
    let in1 = in_size as f32;
    let scale = f64::from(in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = BILINEAR_SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;

    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's `(int)` truncates toward zero; negatives clamp to 0 anyway.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0f64;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = bilinear_filter(((x + xmin) as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..xx * ksize + n];
        for (dst, &w) in row.iter_mut().zip(&k[..n]) {
            let w = if ww != 0.0 { w / ww } else { w };
            // normalize_coeffs_8bpc: round half away from zero.
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            *dst = if w < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

/// Pillow's `clip8`: drop the fraction bits, clamp to 0..=255.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass over input rows `row0..row0 + rows`.
fn resample_horizontal(src: &[u8], src_w: usize, row0: usize, rows: usize, c: &Coeffs) -> Vec<u8> {
    let out_w = c.bounds.len();
    let mut out = vec![0u8; out_w * rows * 3];
    for (yy, out_row) in out.chunks_exact_mut(out_w * 3).enumerate() {
        let in_row = &src[(row0 + yy) * src_w * 3..(row0 + yy + 1) * src_w * 3];
        for (xx, px) in out_row.chunks_exact_mut(3).enumerate() {
            let (xmin, n) = c.bounds[xx];
            let k = &c.weights[xx * c.ksize..xx * c.ksize + n];
            let (mut s0, mut s1, mut s2) = (HALF, HALF, HALF);
            for (p, &w) in in_row[xmin * 3..(xmin + n) * 3].chunks_exact(3).zip(k) {
                s0 += i32::from(p[0]) * w;
                s1 += i32::from(p[1]) * w;
                s2 += i32::from(p[2]) * w;
            }
            px[0] = clip8(s0);
            px[1] = clip8(s1);
            px[2] = clip8(s2);
        }
    }
    out
}

/// Vertical pass; `c.bounds` are relative to the first row of `src`.
fn resample_vertical(src: &[u8], w: usize, c: &Coeffs, row_shift: usize) -> Vec<u8> {
    let out_h = c.bounds.len();
    let stride = w * 3;
    let mut out = vec![0u8; stride * out_h];
    let mut acc = vec![0i32; stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (ymin, n) = c.bounds[yy];
        let ymin = ymin - row_shift;
        let k = &c.weights[yy * c.ksize..yy * c.ksize + n];
        acc.fill(HALF);
        // Row-major accumulation: same integer sums as Pillow's column loop
        // (integer addition is associative), but cache friendly.
        for (y, &wt) in k.iter().enumerate() {
            let in_row = &src[(ymin + y) * stride..(ymin + y + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(in_row) {
                *a += i32::from(p) * wt;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Which Pillow release's pass order to reproduce. The order only matters
/// when the height shrinks more than twice as much as the width (e.g. a
/// 500x1000 portrait to 150x150); results then differ by a level on a few
/// pixels, because each pass rounds to u8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PassOrder {
    /// Pillow >= 13.0: vertical first when `in_h - out_h > 0` and
    /// `in_h - out_h > 2 * (in_w - out_w)`, else horizontal first.
    #[default]
    Pillow13,
    /// Pillow <= 12.1: always horizontal first. (12.2 and 12.3 went vertical
    /// first only for images over 100 times taller than wide.)
    HorizontalFirst,
}

/// Resize like Pillow's `Image.resize((w, h), Image.BILINEAR)` on an RGB
/// image: antialiased when shrinking, aspect ratio not kept. Follows the
/// current Pillow (13); see [`resize_bilinear_pil_ordered`].
///
/// Returns an empty image when `w` or `h` is 0 (Pillow raises instead).
pub fn resize_bilinear_pil(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    resize_bilinear_pil_ordered(img, w, h, PassOrder::Pillow13)
}

/// [`resize_bilinear_pil`] with an explicit Pillow pass order.
pub fn resize_bilinear_pil_ordered(img: &RgbImage, w: u32, h: u32, order: PassOrder) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (out_w, out_h) = (w as usize, h as usize);
    if out_w == 0 || out_h == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(w, h);
    }
    if (out_w, out_h) == (in_w, in_h) {
        return img.clone();
    }
    let src = img.as_raw();
    let need_horizontal = out_w != in_w;
    let need_vertical = out_h != in_h;
    let horizontal_first = match order {
        PassOrder::HorizontalFirst => true,
        PassOrder::Pillow13 => {
            let dy = in_h as i64 - out_h as i64;
            let dx = in_w as i64 - out_w as i64;
            !(dy > 0 && dy > dx * 2)
        }
    };

    let out = if horizontal_first {
        let vert = precompute_coeffs(in_h, out_h);
        let (buf, row_shift) = if need_horizontal {
            // Only the rows the vertical pass reads (Pillow's ybox_first/last).
            let first = vert.bounds.first().map_or(0, |b| b.0);
            let last = vert.bounds.last().map_or(in_h, |b| b.0 + b.1);
            let horiz = precompute_coeffs(in_w, out_w);
            (
                resample_horizontal(src, in_w, first, last - first, &horiz),
                first,
            )
        } else {
            (src.to_vec(), 0)
        };
        if need_vertical {
            resample_vertical(&buf, out_w, &vert, row_shift)
        } else {
            buf
        }
    } else {
        // Vertical first implies the height shrinks, so need_vertical holds.
        let buf = resample_vertical(src, in_w, &precompute_coeffs(in_h, out_h), 0);
        if need_horizontal {
            resample_horizontal(&buf, in_w, 0, out_h, &precompute_coeffs(in_w, out_w))
        } else {
            buf
        }
    };
    // The buffer is exactly out_w * out_h * 3 by construction.
    RgbImage::from_raw(w, h, out).unwrap_or_else(|| RgbImage::new(w, h))
}
