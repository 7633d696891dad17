//! An estimate of a training job's peak memory, so that a job which cannot
//! fit is refused before it starts: being killed for lack of memory is not an
//! error a process can report, and a job that kills its process would do so
//! again at every restart.
//!
//! The figures per backbone are measured peaks of `tuneserve bench --workload
//! stage2` (resident set size against batch size and image size), rounded up;
//! the rest is counted from the recipe's buffers. An estimate, not a bound:
//! admission leaves headroom for the server itself and loaded models.

use serde::Serialize;

use super::TrainConfig;
use crate::model::{BackboneKind, Variant};

/// What a job will hold at its peak, by part, in bytes.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct MemoryEstimate {
    /// Weights, gradients and Adam's two moments (plus a checkpoint's copy).
    pub model: u64,
    /// Stage 2's activations kept for the backward pass, for one batch.
    pub activations: u64,
    /// Input batches, the pixel cache's build chunk, per-image bookkeeping.
    pub data: u64,
    /// The process around it (runtime, thread pools, allocator caches).
    pub base: u64,
    pub total: u64,
}

/// Per backbone and variant: trainable parameters, stage-2 activation bytes
/// per input pixel of one image, and the pooled feature width.
fn profile(kind: BackboneKind, variant: Variant) -> (u64, u64, u64) {
    match (kind, variant) {
        (BackboneKind::Xception, Variant::Full) => (20_861_480, XCEPTION_BYTES_PER_PIXEL, 2048),
        (BackboneKind::MobilenetV2, Variant::Full) => (2_257_984, MOBILENET_BYTES_PER_PIXEL, 1280),
        // The tiny variants keep the topology at a quarter of the width or
        // less: a quarter of the activations is an upper bound.
        (BackboneKind::Xception, Variant::Tiny) => (60_000, XCEPTION_BYTES_PER_PIXEL / 4, 64),
        (BackboneKind::MobilenetV2, Variant::Tiny) => (200_000, MOBILENET_BYTES_PER_PIXEL / 4, 1280),
    }
}

/// Measured with `tuneserve bench --workload stage2 --batch 8|32` (peak RSS
/// difference over 24 images, CPU): Xception at 150 px 75.6 MiB per image =
/// 3,520 bytes per pixel, MobileNetV2 at 224 px 81 MiB = 1,690; ~15% added.
const XCEPTION_BYTES_PER_PIXEL: u64 = 4_000;
const MOBILENET_BYTES_PER_PIXEL: u64 = 2_000;
const BASE_BYTES: u64 = 400 << 20;
/// The manifest entry, label and cache slot of one image.
const PER_IMAGE_BYTES: u64 = 256;

/// The peak of a job on `images` images (training and validation together).
pub fn estimate(cfg: &TrainConfig, variant: Variant, images: u64) -> MemoryEstimate {
    let views = if cfg.augment { super::recipe::STAGE1_VIEWS as u64 } else { 1 };
    let (params, per_pixel, feature_dim) = profile(cfg.backbone, variant);
    let size = cfg.input_size() as u64;
    let pixels = size * size;
    let model = params * 4 * 6;
    let activations = if cfg.finetune_epochs > 0 {
        per_pixel * pixels * cfg.batch_size as u64
    } else {
        // Stage 1 only: the feature pass runs the base in inference mode.
        per_pixel / 8 * pixels * cfg.batch_size as u64
    };
    // Pixels and stage-1 features live on disk (the pixel cache, the feature
    // rows) and are read a batch at a time: memory keeps a batch of each, the
    // building chunk of the pixel cache, and per image only its path and label.
    let data = 2 * cfg.batch_size as u64 * (pixels * 3 * 4 + views * feature_dim * 4)
        + crate::data::cache::BUILD_CHUNK as u64 * pixels * 3
        + images * PER_IMAGE_BYTES;
    let base = BASE_BYTES;
    MemoryEstimate { model, activations, data, base, total: model + activations + data + base }
}

impl MemoryEstimate {
    /// Refuses an estimate over `budget` bytes, saying both.
    pub fn check(&self, budget: Option<u64>) -> Result<(), String> {
        match budget {
            Some(b) if self.total > b => Err(format!(
                "this job needs about {} MiB at its peak (model {} + activations {} + data {} + process {} MiB) but \
                 a job may use {} MiB here: lower batch_size or image_size, use a smaller dataset, or raise \
                 --memory-limit-mb",
                self.total >> 20,
                self.model >> 20,
                self.activations >> 20,
                self.data >> 20,
                self.base >> 20,
                b >> 20
            )),
            _ => Ok(()),
        }
    }
}

/// The memory this process may use: the container's limit (cgroup v2 or v1)
/// when there is one, else the machine's RAM.
pub fn available_memory() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    let cgroup = read("/sys/fs/cgroup/memory.max").or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"));
    let ram = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    match (cgroup, ram) {
        (Some(c), Some(r)) => Some(c.min(r)),
        (c, r) => c.or(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notebook_fits_and_the_extremes_do_not() {
        let notebook = TrainConfig::notebook();
        let e = estimate(&notebook, Variant::Full, 3_000);
        // Measured: ~2.9 GiB peak for stage 2 at batch 32, 150 px.
        assert!(e.total > 2 << 30 && e.total < 5 << 30, "{e:?}");
        let huge = TrainConfig { image_size: 1024, batch_size: 1024, ..TrainConfig::notebook() };
        assert!(estimate(&huge, Variant::Full, 3_000).total > 1 << 40);
        // Grows with the batch, the image and the dataset.
        let b64 = TrainConfig { batch_size: 64, ..TrainConfig::notebook() };
        assert!(estimate(&b64, Variant::Full, 3_000).total > e.total);
        assert!(estimate(&notebook, Variant::Full, 30_000).total > e.total);
        assert!(estimate(&notebook, Variant::Tiny, 3_000).total < e.total);
    }
}
