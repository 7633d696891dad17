//! Network input batches, built from a dataset's pixel cache (see `cache`):
//! each batch reads its images from the cache file, so memory holds a batch,
//! not the dataset.

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

use super::cache::{CachedImages, PixelCache};
use super::dataset::{Rejected, Sample};
use super::image::Scaling;

/// Square u8 RGB images, all `size` x `size`, read on demand.
pub struct Images {
    pub size: usize,
    pub labels: Vec<u32>,
    src: CachedImages,
}

impl Images {
    /// The usable images among `samples` (those the cache could decode),
    /// and the ones left out with why.
    pub fn from_cache(cache: &PixelCache, samples: &[&Sample]) -> (Self, Vec<Rejected>) {
        let (src, rejected) = cache.images(samples);
        (Self { size: src.size, labels: src.labels.clone(), src }, rejected)
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
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
        data.par_chunks_mut(n).zip(idx.par_iter()).enumerate().try_for_each(|(slot, (dst, &i))| {
            let mut px = vec![0u8; n];
            self.src.read(i, &mut px).map_err(candle_core::Error::wrap)?;
            let src = match transform {
                Some(t) => t(slot, &px),
                None => px,
            };
            for (d, s) in dst.iter_mut().zip(&src) {
                *d = lut[*s as usize];
            }
            Ok::<(), candle_core::Error>(())
        })?;
        Tensor::from_vec(data, (idx.len(), self.size, self.size, 3), device)
    }
}
