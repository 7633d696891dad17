//! Tiny generated image datasets for fast learning tests.

use std::path::Path;

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};

/// Writes `per_class` PNGs per class and split under `root/{train,validation}/<class>/`.
/// Class c draws bars at orientation c in colour c over noise: learnable from
/// a random network's features, yet no two images are alike.
pub fn write_dataset(root: &Path, classes: usize, per_class: usize, val_per_class: usize, size: u32, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (split, n) in [("train", per_class), ("validation", val_per_class)] {
        for c in 0..classes {
            let dir = root.join(split).join(format!("class{c}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                image_of(c, size, &mut rng).save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

pub fn image_of(class: usize, size: u32, rng: &mut impl Rng) -> RgbImage {
    let phase: u32 = rng.gen_range(0..8);
    RgbImage::from_fn(size, size, |x, y| {
        let noise: u8 = rng.gen_range(0..60);
        let on = match class % 3 {
            0 => (x + phase) / 4 % 2 == 0,
            1 => (y + phase) / 4 % 2 == 0,
            _ => ((x + y + phase) / 4) % 2 == 0,
        };
        let base: u8 = if on { 150 } else { 40 };
        // Each class leans to one colour channel, on top of its bar orientation.
        let mut px = [base / 2 + noise / 2, base / 2 + noise / 2, base / 2 + noise / 2];
        px[class % 3] = base + noise;
        Rgb(px)
    })
}
