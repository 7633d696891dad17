//! `tuneserve embed`: pooled backbone features per image, one JSON line each.

use std::path::PathBuf;

use clap::Args;

use crate::device::{pick_device, DeviceArg};
use crate::data::image::{load_path_for_model, to_planar_data, DecodeLimits, RgbImage};
use crate::model::weights::WeightSet;
use crate::model::{Backbone, BackboneKind, Precision, Variant};

#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[arg(long, default_value = "xception")]
    pub backbone: BackboneKind,
    /// Backbone weights (Keras .h5/.keras/.weights.h5 or tuneserve safetensors).
    #[arg(long)]
    pub weights: PathBuf,
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Square input size (default: the backbone's, 150 for Xception, 224 for MobileNetV2).
    #[arg(long)]
    pub image_size: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value = "auto")]
    pub device: DeviceArg,
    /// Exit 0 even when some images could not be read (they are still reported).
    #[arg(long)]
    pub keep_going: bool,
}

pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    let device = pick_device(args.device)?;
    let weights = WeightSet::from_file(&args.weights)?;
    let bb = Backbone::build(args.backbone, Variant::Full, &weights, false, Precision::F32, &device)?;
    let size = args.image_size.unwrap_or(args.backbone.notebook_size());
    let limits = DecodeLimits::default();
    let pb = super::progress::bar(args.images.len() as u64, "embed", false);
    let mut failures = super::progress::Failures::default();
    for chunk in args.images.chunks(args.batch_size.max(1)) {
        let mut paths = Vec::new();
        let mut imgs = Vec::new();
        for p in chunk {
            match load_path_for_model(p, (size as u32, size as u32), &limits) {
                Ok(img) => {
                    paths.push(p);
                    imgs.push(img);
                }
                Err(e) => failures.record(&pb, p, e),
            }
        }
        if !imgs.is_empty() {
            let refs: Vec<&RgbImage> = imgs.iter().collect();
            let x = candle_core::Tensor::from_vec(to_planar_data(&refs, args.backbone.scaling()), (3, imgs.len(), size, size), &device)?;
            let feats = bb.features_planar(x)?.to_vec2::<f32>()?;
            for (p, f) in paths.iter().zip(feats) {
                let line = serde_json::json!({ "path": p.display().to_string(), "features": f });
                pb.suspend(|| println!("{line}"));
            }
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    failures.finish(args.images.len(), args.keep_going)
}
