//! `tuneserve train`: the two-stage recipe from the command line, with a
//! progress bar per epoch and a JSON summary at the end.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::device::{pick_device, DeviceArg};
use crate::data::dataset::DatasetManifest;
use crate::model::{BackboneKind, Precision, Variant};
use crate::train::{self, Event, Recipe, RunSpec, Stage, TrainConfig, TrainSettings, WeightsChoice};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Dataset: a folder of class folders (optionally train/ + validation/), or a zip/tar of one.
    #[arg(long)]
    pub data: PathBuf,
    /// Pretrained backbone weights (Keras .h5/.keras/.weights.h5 or tuneserve safetensors).
    /// Omit with --variant tiny to start from a seeded random network.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Output folder for checkpoints.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from the newest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Print each training event as a JSON line on stderr instead of progress bars.
    #[arg(long)]
    pub json_events: bool,
    /// Minutes between mid-epoch checkpoints in stage 2 (0 = at epoch ends only).
    #[arg(long, default_value_t = 10.0)]
    pub checkpoint_minutes: f64,
    /// Named defaults for every setting below: standard (tuneserve's) or
    /// notebook (the Keras notebook exactly).
    #[arg(long, value_enum, default_value_t = Recipe::Standard)]
    pub recipe: Recipe,
    #[arg(long, default_value = "xception")]
    pub backbone: BackboneKind,
    /// full (the pretrained network) or tiny (a small seeded one, for trying things out).
    #[arg(long, default_value = "full")]
    pub variant: Variant,
    /// Input size (default: the recipe's for the backbone).
    #[arg(long)]
    pub image_size: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub frozen_epochs: Option<usize>,
    #[arg(long)]
    pub frozen_lr: Option<f64>,
    #[arg(long)]
    pub finetune_epochs: Option<usize>,
    #[arg(long)]
    pub finetune_lr: Option<f64>,
    #[arg(long)]
    pub dropout: Option<f32>,
    /// Early-stopping patience in epochs (0 = off).
    #[arg(long)]
    pub patience: Option<usize>,
    /// Random flips and rotations (RandomFlip + RandomRotation(0.1)); `--augment false` turns them off.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub augment: Option<bool>,
    /// Test-time augmentation: mean logit of each image and its mirror (`--tta false` turns it off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub tta: Option<bool>,
    /// Operand format of the saved model's products when served (`bf16`:
    /// faster where the CPU has AVX-512 BF16, `int16` where it has AVX2;
    /// both slightly less precise).
    #[arg(long, value_enum)]
    pub serving_precision: Option<Precision>,
    /// Validation fraction when the dataset has no validation/ folder.
    #[arg(long)]
    pub validation_split: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, default_value = "auto")]
    pub device: DeviceArg,
}

impl TrainArgs {
    pub fn config(&self) -> TrainConfig {
        TrainSettings {
            recipe: Some(self.recipe),
            backbone: Some(self.backbone),
            image_size: self.image_size,
            batch_size: self.batch_size,
            frozen_epochs: self.frozen_epochs,
            frozen_lr: self.frozen_lr,
            finetune_epochs: self.finetune_epochs,
            finetune_lr: self.finetune_lr,
            dropout: self.dropout,
            patience: self.patience,
            augment: self.augment,
            tta: self.tta,
            serving_precision: self.serving_precision,
            validation_split: self.validation_split,
            seed: self.seed,
        }
        .resolve()
    }
}

/// The dataset folder to train from: the given folder, or the archive unpacked under `out`.
fn dataset_dir(args: &TrainArgs) -> anyhow::Result<(PathBuf, DatasetManifest)> {
    if args.data.is_dir() {
        return Ok((args.data.clone(), DatasetManifest::scan(&args.data)?));
    }
    let dest = args.out.join("dataset");
    if dest.is_dir() && args.resume {
        return Ok((dest.clone(), DatasetManifest::scan(&dest)?));
    }
    if dest.exists() {
        std::fs::remove_dir_all(&dest)?;
    }
    let manifest = crate::data::ingest::ingest(&args.data, &dest, &Default::default(), &Default::default())?;
    Ok((dest, manifest))
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let (root, manifest) = dataset_dir(&args)?;
    let weights = match (&args.weights, args.variant) {
        (Some(p), _) => WeightsChoice::Pretrained(p.clone()),
        (None, Variant::Tiny) => WeightsChoice::Seeded,
        (None, Variant::Full) => anyhow::bail!(
            "--weights is required for the full network (run `tuneserve weights fetch xception` and pass the file it prints)"
        ),
    };
    let device = pick_device(args.device)?;
    tracing::info!(device = %crate::device::describe(&device), "training device");
    let spec = RunSpec {
        config: args.config(),
        dataset_root: root,
        manifest,
        cache_dir: args.out.join("pixel-cache"),
        partial_every: (args.checkpoint_minutes > 0.0).then(|| std::time::Duration::from_secs_f64(args.checkpoint_minutes * 60.0)),
        weights,
        variant: args.variant,
        out_dir: args.out.clone(),
        resume: args.resume,
        device,
    };
    let mut bar: Option<(Stage, usize, ProgressBar)> = None;
    let style = ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let summary = train::run(
        spec,
        &mut |e| match &e {
            _ if args.json_events => {
                if let Ok(line) = serde_json::to_string(&e) {
                    eprintln!("{line}");
                }
            }
            Event::Progress { stage, epoch, epochs, step, steps, .. } => {
                if bar.as_ref().is_none_or(|(s, ep, _)| s != stage || ep != epoch) {
                    let pb = ProgressBar::new(*steps as u64).with_style(style.clone());
                    pb.set_prefix(format!("{} {epoch}/{epochs}", stage_name(*stage)));
                    bar = Some((*stage, *epoch, pb));
                }
                if let Some((_, _, pb)) = &bar {
                    pb.set_position(*step as u64);
                }
            }
            Event::Epoch { stage, epoch, epochs, train, validation, seconds } => {
                let line = format!(
                    "{} epoch {epoch}/{epochs}: loss {:.4} acc {:.4} | val_loss {:.4} val_acc {:.4} ({seconds:.1}s)",
                    stage_name(*stage),
                    train.loss,
                    train.accuracy,
                    validation.loss,
                    validation.accuracy
                );
                match bar.take() {
                    Some((_, _, pb)) => pb.finish_with_message(line),
                    None => eprintln!("{line}"),
                }
            }
            Event::Checkpoint { name, .. } => eprintln!("checkpoint {name}"),
            Event::Message { text } => eprintln!("{text}"),
        },
        &AtomicBool::new(false),
    )?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Features => "features",
        Stage::Frozen => "stage 1",
        Stage::Finetune => "stage 2",
    }
}
