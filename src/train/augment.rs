//! Keras-style augmentation on u8 images: RandomFlip("horizontal") and
//! RandomRotation(factor) with bilinear sampling and 'reflect' fill; and the
//! plain mirror image that test-time augmentation averages with.

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    pub flip: Flip,
    /// Fraction of a full turn: angles are drawn from [-factor, factor] * 2pi.
    pub rotation: f64,
}

/// Whether an image is mirrored left to right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flip {
    /// Half the time.
    Random,
    Always,
}

impl Augment {
    pub const KERAS_GUIDE: Augment = Augment { flip: Flip::Random, rotation: 0.1 };
    /// The mirror image only (test-time augmentation's second view).
    pub const MIRROR: Augment = Augment { flip: Flip::Always, rotation: 0.0 };

    pub fn apply(&self, img: &[u8], size: usize, rng: &mut impl Rng) -> Vec<u8> {
        let flip = match self.flip {
            Flip::Random => rng.gen_bool(0.5),
            Flip::Always => true,
        };
        let angle = if self.rotation > 0.0 {
            rng.gen_range(-self.rotation..=self.rotation) * std::f64::consts::TAU
        } else {
            0.0
        };
        transform(img, size, flip, angle)
    }
}

/// TF's 'reflect' fill: d c b a | a b c d | d c b a.
fn reflect(v: f64, n: usize) -> f64 {
    let n = n as f64;
    let period = 2.0 * n;
    let mut v = (v + 0.5).rem_euclid(period);
    if v >= n {
        v = period - v;
    }
    (v - 0.5).clamp(0.0, n - 1.0)
}

fn transform(img: &[u8], size: usize, flip: bool, angle: f64) -> Vec<u8> {
    if !flip && angle == 0.0 {
        return img.to_vec();
    }
    let mut out = vec![0u8; img.len()];
    let c = (size as f64 - 1.0) / 2.0;
    let (sin, cos) = angle.sin_cos();
    for y in 0..size {
        for x in 0..size {
            let xf = if flip { (size - 1 - x) as f64 } else { x as f64 };
            // Inverse-rotate the output coordinate into the source image.
            let (dx, dy) = (xf - c, y as f64 - c);
            let sx = reflect(cos * dx + sin * dy + c, size);
            let sy = reflect(-sin * dx + cos * dy + c, size);
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(size - 1), (y0 + 1).min(size - 1));
            let (fx, fy) = (sx - x0 as f64, sy - y0 as f64);
            for ch in 0..3 {
                let p = |xx: usize, yy: usize| img[(yy * size + xx) * 3 + ch] as f64;
                let v = p(x0, y0) * (1.0 - fx) * (1.0 - fy) + p(x1, y0) * fx * (1.0 - fy) + p(x0, y1) * (1.0 - fx) * fy + p(x1, y1) * fx * fy;
                out[(y * size + x) * 3 + ch] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flip_mirrors_and_zero_angle_is_identity() {
        let size = 4;
        let img: Vec<u8> = (0..size * size * 3).map(|v| v as u8).collect();
        assert_eq!(transform(&img, size, false, 0.0), img);
        let f = transform(&img, size, true, 0.0);
        for y in 0..size {
            for x in 0..size {
                for ch in 0..3 {
                    assert_eq!(f[(y * size + x) * 3 + ch], img[(y * size + size - 1 - x) * 3 + ch]);
                }
            }
        }
        // A half turn twice is the identity up to rounding.
        let r = transform(&transform(&img, size, false, std::f64::consts::PI), size, false, std::f64::consts::PI);
        assert_eq!(r, img);
    }
}
