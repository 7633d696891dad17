//! `tuneserve embed`: pooled backbone features per image, one JSON line each.

use std::path::PathBuf;

use clap::Args;

use crate::device::{pick_device, DeviceArg};
use crate::data::image::{load_path_for_model, to_tensor_data, DecodeLimits};
use crate::model::weights::WeightSet;
use crate::model::{Backbone, BackboneKind, Variant};

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
}

pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    let device = pick_device(args.device)?;
    let weights = WeightSet::from_file(&args.weights)?;
    let bb = Backbone::build(args.backbone, Variant::Full, &weights, false, &device)?;
    let size = args.image_size.unwrap_or(args.backbone.default_size());
    let limits = DecodeLimits::default();
    for chunk in args.images.chunks(args.batch_size.max(1)) {
        let mut ok = Vec::new();
        for p in chunk {
            match load_path_for_model(p, (size as u32, size as u32), &limits) {
                Ok(img) => ok.push((p, img)),
                Err(e) => eprintln!("{}: {e}", p.display()),
            }
        }
        if ok.is_empty() {
            continue;
        }
        let imgs: Vec<_> = ok.iter().map(|(_, i)| i.clone()).collect();
        let x = candle_core::Tensor::from_vec(to_tensor_data(&imgs, args.backbone.scaling()), (imgs.len(), size, size, 3), &device)?;
        let feats = bb.features(&x)?.to_vec2::<f32>()?;
        for ((p, _), f) in ok.iter().zip(feats) {
            println!("{}", serde_json::json!({ "path": p.display().to_string(), "features": f }));
        }
    }
    Ok(())
}
