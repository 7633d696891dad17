//! `tuneserve predict --checkpoint DIR IMG...`: JSON lines with logits,
//! probabilities and label per image.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use crate::device::{pick_device, DeviceArg};
use crate::data::image::{decode, DecodeLimits};
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
}

#[derive(Serialize)]
struct Line<'a> {
    path: String,
    #[serde(flatten)]
    prediction: &'a Prediction,
}

/// A checkpoint dir, or an output dir whose best.json names one.
pub fn resolve_checkpoint(p: &std::path::Path) -> anyhow::Result<PathBuf> {
    if p.join(crate::train::checkpoint::META_FILE).exists() {
        return Ok(p.to_path_buf());
    }
    match crate::train::checkpoint::best(p)? {
        Some(name) => Ok(p.join(name)),
        None => anyhow::bail!("{} is neither a checkpoint nor a training output folder", p.display()),
    }
}

pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    let predictor = Predictor::load(&resolve_checkpoint(&args.checkpoint)?, &pick_device(args.device)?)?;
    let limits = DecodeLimits::default();
    for chunk in args.images.chunks(args.batch_size.max(1)) {
        let mut ok = Vec::new();
        for p in chunk {
            match std::fs::read(p).map_err(anyhow::Error::from).and_then(|b| Ok(decode(&b, &limits)?)) {
                Ok(img) => ok.push((p, img)),
                Err(e) => eprintln!("{}: {e}", p.display()),
            }
        }
        let imgs: Vec<_> = ok.iter().map(|(_, i)| i.clone()).collect();
        for ((p, _), pred) in ok.iter().zip(predictor.predict(&imgs)?) {
            println!("{}", serde_json::to_string(&Line { path: p.display().to_string(), prediction: &pred })?);
        }
    }
    Ok(())
}
