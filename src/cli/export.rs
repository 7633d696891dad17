//! `tuneserve export`: a checkpoint as ONNX or safetensors.

use std::path::PathBuf;

use clap::Args;

use crate::serve::export::{export, ExportFormat};

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A checkpoint folder, or a training output folder (its best checkpoint).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long, value_enum, default_value = "onnx")]
    pub format: ExportFormat,
    /// Where to write (default: model.<format> in the current folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let dir = super::predict::resolve_checkpoint(&args.checkpoint)?;
    let bytes = export(&dir, args.format)?;
    let out = args.out.unwrap_or_else(|| PathBuf::from(format!("model.{}", args.format.extension())));
    std::fs::write(&out, &bytes)?;
    eprintln!("wrote {} ({:.1} MB) from {}", out.display(), bytes.len() as f64 / 1e6, dir.display());
    Ok(())
}
