//! Decodes and resizes a dataset's images once, in parallel, into memory,
//! and builds network input batches from them.

use std::path::Path;

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

use super::dataset::{Rejected, Sample};
use super::image::{load_path_for_model, DecodeLimits, Scaling};

/// Square u8 RGB images, all `size` x `size`, back to back.
pub struct Images {
    pub size: usize,
    pixels: Vec<u8>,
    pub labels: Vec<u32>,
}

impl Images {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.size * self.size * 3;
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Decodes every sample (skipping unreadable files, reported by name).
    pub fn load(root: &Path, samples: &[&Sample], size: usize, limits: &DecodeLimits) -> (Self, Vec<Rejected>) {
        let decoded: Vec<_> = samples
            .par_iter()
            .map(|s| load_path_for_model(&root.join(&s.path), (size as u32, size as u32), limits))
            .collect();
        let mut pixels = Vec::with_capacity(samples.len() * size * size * 3);
        let (mut labels, mut rejected) = (Vec::new(), Vec::new());
        for (s, r) in samples.iter().zip(decoded) {
            match r {
                Ok(img) => {
                    pixels.extend_from_slice(img.as_raw());
                    labels.push(s.class as u32);
                }
                Err(e) => rejected.push(Rejected { path: s.path.display().to_string(), reason: e.to_string() }),
            }
        }
        (Self { size, pixels, labels }, rejected)
    }

    /// (B,H,W,3) f32 batch of the given images, scaled for the backbone;
    /// `transform` may rewrite each image's pixels first (augmentation).
    pub fn batch(
        &self,
        idx: &[usize],
        scaling: Scaling,
        device: &Device,
        transform: Option<&(dyn Fn(usize, &[u8]) -> Vec<u8> + Sync)>,
    ) -> Result<Tensor> {
        let lut: Vec<f32> = (0..=255u8).map(|v| scaling.apply(v)).collect();
        let n = self.size * self.size * 3;
        let mut data = vec![0f32; idx.len() * n];
        data.par_chunks_mut(n).zip(idx.par_iter()).enumerate().for_each(|(slot, (dst, &i))| {
            let owned;
            let src = match transform {
                Some(t) => {
                    owned = t(slot, self.image(i));
                    &owned[..]
                }
                None => self.image(i),
            };
            for (d, s) in dst.iter_mut().zip(src) {
                *d = lut[*s as usize];
            }
        });
        Tensor::from_vec(data, (idx.len(), self.size, self.size, 3), device)
    }
}
