//! `tuneserve predict --checkpoint DIR IMG...`: JSON lines with logits,
//! probabilities and label per image.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use crate::device::{pick_device, DeviceArg};
use crate::data::image::{decode, DecodeLimits};
use crate::model::Precision;
use crate::serve::{Prediction, Predictor};

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A checkpoint folder, or a training output folder (its best checkpoint is used).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value = "auto")]
    pub device: DeviceArg,
    /// Test-time augmentation (mean logit of each image and its mirror);
    /// default: as the model was trained.
    #[arg(long)]
    pub tta: Option<bool>,
    /// The products' format (`bf16`: faster where the CPU has AVX-512 BF16,
    /// `int16` where it has AVX2; both slightly less precise); default: the
    /// model's `serving_precision`.
    #[arg(long, value_enum)]
    pub serving_precision: Option<Precision>,
    /// Exit 0 even when some images could not be read (they are still reported).
    #[arg(long)]
    pub keep_going: bool,
}

#[derive(Serialize)]
struct Line<'a> {
    path: String,
    #[serde(flatten)]
    prediction: &'a Prediction,
}

/// A checkpoint dir, or an output dir whose best.json names one.
pub fn resolve_checkpoint(p: &std::path::Path) -> anyhow::Result<PathBuf> {
    if crate::model::checkpoint::is_checkpoint(p) {
        return Ok(p.to_path_buf());
    }
    match crate::model::checkpoint::best(p)? {
        Some(name) => Ok(p.join(name)),
        None => anyhow::bail!("{} is neither a checkpoint nor a training output folder", p.display()),
    }
}

pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    let predictor = Predictor::load(&resolve_checkpoint(&args.checkpoint)?, &pick_device(args.device)?, args.serving_precision)?;
    let limits = DecodeLimits::default();
    let tta = args.tta.unwrap_or(predictor.tta());
    let pb = super::progress::bar(args.images.len() as u64, "predict", false);
    let mut failures = super::progress::Failures::default();
    for chunk in args.images.chunks(args.batch_size.max(1)) {
        let mut paths = Vec::new();
        let mut imgs = Vec::new();
        for p in chunk {
            match std::fs::read(p).map_err(anyhow::Error::from).and_then(|b| Ok(decode(&b, &limits)?)) {
                Ok(img) => {
                    paths.push(p);
                    imgs.push(img);
                }
                Err(e) => failures.record(&pb, p, e),
            }
        }
        for (p, pred) in paths.iter().zip(predictor.predict(&imgs, &vec![tta; imgs.len()])?) {
            let line = serde_json::to_string(&Line { path: p.display().to_string(), prediction: &pred })?;
            pb.suspend(|| println!("{line}"));
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    failures.finish(args.images.len(), args.keep_going)
}
