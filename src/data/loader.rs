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

    /// (3,B,H,W) f32 batch of the given images (the network's own layout),
    /// scaled for the backbone; `transform` may rewrite each image's pixels
    /// first (augmentation). Inside a rayon pool the images are read in
    /// parallel on it; elsewhere (a prefetch thread) one after another.
    pub fn batch(
        &self,
        idx: &[usize],
        scaling: Scaling,
        device: &Device,
        transform: Option<&(dyn Fn(usize, &[u8]) -> Vec<u8> + Sync)>,
    ) -> Result<Tensor> {
        let lut: Vec<f32> = (0..=255u8).map(|v| scaling.apply(v)).collect();
        let plane = self.size * self.size;
        let b = idx.len();
        // Each image's pixels, interleaved RGB, then scattered into the planes.
        let mut pixels = vec![0u8; b * plane * 3];
        let read = |(slot, (dst, &i)): (usize, (&mut [u8], &usize))| -> Result<()> {
            self.src.read(i, dst).map_err(candle_core::Error::wrap)?;
            if let Some(t) = transform {
                let out = t(slot, dst);
                dst.copy_from_slice(&out);
            }
            Ok(())
        };
        if rayon::current_thread_index().is_some() {
            pixels.par_chunks_mut(plane * 3).zip(idx.par_iter()).enumerate().try_for_each(read)?;
        } else {
            pixels.chunks_mut(plane * 3).zip(idx.iter()).enumerate().try_for_each(read)?;
        }
        let mut data = vec![0f32; 3 * b * plane];
        for (slot, px) in pixels.chunks_exact(plane * 3).enumerate() {
            for (p, rgb) in px.chunks_exact(3).enumerate() {
                for (c, &v) in rgb.iter().enumerate() {
                    data[(c * b + slot) * plane + p] = lut[usize::from(v)];
                }
            }
        }
        Tensor::from_vec(data, (3, b, self.size, self.size), device)
    }
}

/// Runs `make` over `items` on a helper thread, at most `depth` results ahead
/// of `consume`, which gets them in order on the calling thread: batches are
/// read (and augmented) while the network works on the previous one, and
/// memory holds `depth + 1` batches whatever the dataset's size. An error on
/// either side stops both and is returned.
pub fn prefetch<I, T, E>(
    items: impl IntoIterator<Item = I, IntoIter: Send>,
    depth: usize,
    make: impl Fn(I) -> std::result::Result<T, E> + Send,
    mut consume: impl FnMut(T) -> std::result::Result<(), E>,
) -> std::result::Result<(), E>
where
    T: Send,
    E: Send,
{
    let (tx, rx) = std::sync::mpsc::sync_channel::<std::result::Result<T, E>>(depth.max(1));
    let items = items.into_iter();
    std::thread::scope(|s| {
        s.spawn(move || {
            for item in items {
                let made = make(item);
                let failed = made.is_err();
                // The consumer stopped (its error or the end): nothing more to do.
                if tx.send(made).is_err() || failed {
                    return;
                }
            }
        });
        // Dropping `rx` on the way out (error or not) ends the helper.
        for made in rx {
            consume(made?)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_keeps_order_and_stops_on_errors() {
        let mut seen = Vec::new();
        prefetch(0..50, 2, |i| Ok::<_, String>(i * 2), |v| {
            seen.push(v);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, (0..50).map(|i| i * 2).collect::<Vec<_>>());

        // A failing producer: the error reaches the caller after the good items.
        let mut seen = Vec::new();
        let got = prefetch(0..50, 2, |i| if i == 7 { Err(format!("bad {i}")) } else { Ok(i) }, |v| {
            seen.push(v);
            Ok(())
        });
        assert_eq!((got, seen), (Err("bad 7".to_string()), (0..7).collect::<Vec<_>>()));

        // A failing consumer stops the producer (no hang, no further items).
        let made = std::sync::atomic::AtomicUsize::new(0);
        let got = prefetch(0..1_000_000, 2, |i| {
            made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, String>(i)
        }, |v| if v == 3 { Err("stop".to_string()) } else { Ok(()) });
        assert_eq!(got, Err("stop".to_string()));
        assert!(made.load(std::sync::atomic::Ordering::Relaxed) < 10);
    }
}
