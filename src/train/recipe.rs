//! The two-stage recipe of the Keras transfer-learning notebook.
//!
//! Stage 1 trains only the head on a frozen base called in inference mode, so
//! the base's features are computed once (per augmentation view) and the
//! epochs run on the cache. Stage 2 trains everything with BatchNorm
//! statistics frozen (the recipe's intent; Keras 3's fit() silently breaks
//! it). Both keep the best epoch by validation loss; if stage 2 ends worse
//! than stage 1, the stage-1 model stays the result.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::adam::Adam;
use super::augment::Augment;
use super::checkpoint::{self, CheckpointMeta, Partial};
use crate::model::checkpoint as files;
use super::features::{FeatureRows, FeatureStore, SYNC_EVERY};
use super::loss;
use super::{Event, Metrics, Stage, TrainConfig, TrainError};
use crate::data::dataset::{DatasetManifest, Rejected, Sample, Split};
use crate::data::image::DecodeLimits;
use crate::data::cache::{CacheError, PixelCache};
use crate::data::loader::{self, Images};
use crate::model::weights::WeightSet;
use crate::model::{Backbone, Head, Precision, SeededInit, Variant, WeightSource};

/// Augmented views of each training image cached for stage 1.
pub(crate) const STAGE1_VIEWS: usize = 4;

/// Where the backbone's starting weights come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WeightsChoice {
    /// Pretrained weights in any format `WeightSet::from_file` reads.
    Pretrained(PathBuf),
    /// Keras-style random initialisation from the run's seed (tests, demos).
    Seeded,
}

pub struct RunSpec {
    pub config: TrainConfig,
    pub dataset_root: PathBuf,
    pub manifest: DatasetManifest,
    /// Where the dataset's decoded, resized pixels are cached (built on first use).
    pub cache_dir: PathBuf,
    /// How often stage 2 saves a mid-epoch checkpoint to resume from (None: at
    /// epoch ends only).
    pub partial_every: Option<std::time::Duration>,
    pub weights: WeightsChoice,
    pub variant: Variant,
    pub out_dir: PathBuf,
    pub resume: bool,
    pub device: Device,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Summary {
    /// Directory name (under the run's output dir) of the model to use.
    pub best_checkpoint: String,
    pub best_stage: Stage,
    pub classes: Vec<String>,
    pub validation: Metrics,
    /// confusion[true][predicted] on the validation set.
    pub confusion: Vec<Vec<usize>>,
    pub train_images: usize,
    pub validation_images: usize,
    pub skipped: Vec<Rejected>,
    pub seconds: f64,
}

fn check_cancel(cancel: &AtomicBool) -> Result<(), TrainError> {
    if cancel.load(Ordering::Relaxed) {
        Err(TrainError::Cancelled)
    } else {
        Ok(())
    }
}

/// The run's input size, once its settings and dataset pass.
fn validate(cfg: &TrainConfig, manifest: &DatasetManifest) -> Result<usize, TrainError> {
    cfg.validate().map_err(TrainError::Config)?;
    if manifest.classes.len() < 2 {
        return Err(TrainError::Data(format!("need at least 2 classes, found {}", manifest.classes.len())));
    }
    Ok(cfg.input_size())
}

/// The dataset's own validation split, or a seeded stratified one.
fn split<'a>(manifest: &'a DatasetManifest, cfg: &TrainConfig) -> Result<(Vec<&'a Sample>, Vec<&'a Sample>), TrainError> {
    let (mut train, mut val): (Vec<&'a Sample>, Vec<&'a Sample>) = if manifest.has_validation {
        manifest.samples.iter().partition(|s| s.split == Split::Train)
    } else {
        let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 0x5911);
        let (mut t, mut v) = (Vec::new(), Vec::new());
        for c in 0..manifest.classes.len() {
            let mut of_class: Vec<&'a Sample> = manifest.samples.iter().filter(|s| s.class == c).collect();
            of_class.shuffle(&mut rng);
            let n_val = ((of_class.len() as f64) * cfg.validation_split).round() as usize;
            let n_val = if cfg.validation_split > 0.0 && of_class.len() >= 2 { n_val.max(1) } else { n_val };
            v.extend_from_slice(&of_class[..n_val]);
            t.extend_from_slice(&of_class[n_val..]);
        }
        (t, v)
    };
    train.sort_by(|a, b| a.path.cmp(&b.path));
    val.sort_by(|a, b| a.path.cmp(&b.path));
    for (c, name) in manifest.classes.iter().enumerate() {
        if !train.iter().any(|s| s.class == c) {
            return Err(TrainError::Data(format!("class {name:?} has no training images")));
        }
    }
    if val.is_empty() {
        return Err(TrainError::Data("no validation images (set validation_split > 0 or add validation/)".into()));
    }
    Ok((train, val))
}

struct Eval {
    metrics: Metrics,
    confusion: Vec<Vec<usize>>,
}

fn evaluate(logits: &Tensor, labels: &[u32], classes: usize) -> Result<Eval, TrainError> {
    let (loss, _) = loss::loss_and_grad(logits, labels)?;
    let pred = loss::predicted(logits)?;
    let mut confusion = vec![vec![0usize; classes]; classes];
    for (p, y) in pred.iter().zip(labels) {
        confusion[*y as usize][*p as usize] += 1;
    }
    let correct = pred.iter().zip(labels).filter(|(p, y)| p == y).count();
    Ok(Eval { metrics: Metrics { loss, accuracy: correct as f64 / labels.len().max(1) as f64 }, confusion })
}

/// Runs the frozen base over every image (optionally augmented), batch by
/// batch, into `out`; batches an earlier attempt finished are skipped.
fn extract(
    bb: &Backbone,
    images: &Images,
    cfg: &TrainConfig,
    aug: Option<(Augment, u64)>,
    mut progress: impl FnMut(usize, usize),
    out: &mut FeatureRows,
    cancel: &AtomicBool,
) -> Result<(), TrainError> {
    let idx: Vec<usize> = (0..images.len()).collect();
    let steps = idx.len().div_ceil(cfg.batch_size);
    for step in 0..out.finished.min(steps) {
        progress(step + 1, steps);
    }
    let todo = idx.chunks(cfg.batch_size).enumerate().skip(out.finished);
    let make = |(step, chunk): (usize, &[usize])| Ok((step, chunk[0], batch_of(images, chunk, cfg, aug, &bb.device)?));
    loader::prefetch(todo, PREFETCH, make, |(step, first, x)| {
        check_cancel(cancel)?;
        let t = Instant::now();
        out.write_batch(step, first, &bb.features_planar(x)?, step + 1 == steps)?;
        metrics::histogram!("tuneserve_train_step_seconds", "stage" => "features").record(t.elapsed().as_secs_f64());
        progress(step + 1, steps);
        Ok(())
    })
}

/// Batches read ahead of the network (each holds batch x size^2 x 3 floats).
const PREFETCH: usize = 2;

/// A stage-2 step's random generator (dropout) and augmentation seed: they
/// depend on the step's position only, so a resumed epoch draws exactly the
/// same.
fn step_rng(epoch_seed: u64, step: usize) -> (rand::rngs::StdRng, u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(epoch_seed ^ (step as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let batch_seed = rand::Rng::gen(&mut rng);
    (rng, batch_seed)
}

/// The network input for images `chunk`, augmented by `aug` (deterministic
/// per image and seed).
fn batch_of(images: &Images, chunk: &[usize], cfg: &TrainConfig, aug: Option<(Augment, u64)>, dev: &Device) -> Result<Tensor, TrainError> {
    Ok(match aug {
        Some((a, seed)) => {
            let f = |slot: usize, img: &[u8]| {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ ((chunk[slot] as u64) << 20));
                a.apply(img, images.size, &mut rng)
            };
            images.batch(chunk, cfg.backbone.scaling(), dev, Some(&f))?
        }
        None => images.batch(chunk, cfg.backbone.scaling(), dev, None)?,
    })
}

/// The head's logits for every row of `feats`, a batch at a time.
fn head_logits_rows(head: &Head, feats: &FeatureRows, batch: usize, dev: &Device) -> Result<Tensor, TrainError> {
    let idx: Vec<usize> = (0..feats.len()).collect();
    let parts = idx.chunks(batch).map(|c| head_logits(head, &feats.rows(c, dev)?)).collect::<Result<Vec<_>, _>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// The whole network's logits for every image (the mean with its mirror's
/// with test-time augmentation), a batch at a time (nothing kept but the
/// logits).
fn logits_of(bb: &Backbone, head: &Head, images: &Images, cfg: &TrainConfig, cancel: &AtomicBool) -> Result<Tensor, TrainError> {
    let idx: Vec<usize> = (0..images.len()).collect();
    let mut per_view = Vec::with_capacity(2);
    for &aug in val_views(cfg) {
        let mut parts = Vec::with_capacity(idx.len().div_ceil(cfg.batch_size));
        let make = |chunk: &[usize]| batch_of(images, chunk, cfg, aug, &bb.device);
        loader::prefetch(idx.chunks(cfg.batch_size), PREFETCH, make, |x| {
            check_cancel(cancel)?;
            parts.push(head_logits(head, &bb.features_planar(x)?)?);
            Ok(())
        })?;
        per_view.push(Tensor::cat(&parts, 0)?);
    }
    mean_logits(&per_view)
}

/// The mean of several views' logits (test-time augmentation).
fn mean_logits(per_view: &[Tensor]) -> Result<Tensor, TrainError> {
    let sum = per_view[1..].iter().try_fold(per_view[0].clone(), |a, b| a + b)?;
    Ok((sum / per_view.len() as f64)?)
}

fn head_logits(head: &Head, feats: &Tensor) -> Result<Tensor, TrainError> {
    Ok(head.forward(feats)?)
}

pub fn run(spec: RunSpec, on_event: &mut dyn FnMut(Event), cancel: &AtomicBool) -> Result<Summary, TrainError> {
    let started = Instant::now();
    let cfg = &spec.config;
    let size = validate(cfg, &spec.manifest)?;
    let r = Run { spec: &spec, cfg, classes: spec.manifest.classes.clone(), size, dev: &spec.device, cancel };
    let (train_s, val_s) = split(&spec.manifest, cfg)?;
    let (train, val, skipped) = load_images(&r, &train_s, &val_s, on_event)?;
    check_cancel(cancel)?;
    let Start { existing, resume_from, partial, bb, head } = restore(&r, on_event)?;
    let classes = r.classes.clone();

    // Stage 1: the head on the frozen base's features.
    let stage1_done = partial.is_some()
        || resume_from.as_ref().is_some_and(|(_, m)| m.stage == Stage::Frozen || m.stage == Stage::Finetune);
    let mut stage1_best: Option<(String, CheckpointMeta)> =
        existing.iter().filter(|(_, m)| m.stage == Stage::Frozen).last().cloned();
    if !stage1_done && cfg.frozen_epochs > 0 {
        stage1_best = Some(stage1(&r, &bb, &head, (&train, &val), (&train_s, &val_s), on_event)?);
    }
    // Stage 2: fine-tune everything, BatchNorm statistics frozen.
    let stage2_best = stage2(&r, &bb, &head, (&train, &val), &existing, (partial, resume_from), &stage1_best, on_event)?;

    let (best_name, best_meta) = better(&stage1_best, &stage2_best)
        .cloned()
        .ok_or_else(|| TrainError::Checkpoint("the run produced no checkpoint".into()))?;
    files::set_best(&spec.out_dir, &best_name)?;
    Ok(Summary {
        best_checkpoint: best_name,
        best_stage: best_meta.stage,
        classes,
        validation: best_meta.validation,
        confusion: best_meta.confusion,
        train_images: train.len(),
        validation_images: val.len(),
        skipped,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What every step of a run reads.
struct Run<'a> {
    spec: &'a RunSpec,
    cfg: &'a TrainConfig,
    classes: Vec<String>,
    size: usize,
    dev: &'a Device,
    cancel: &'a AtomicBool,
}

impl Run<'_> {
    /// A checkpoint's description of this run at (`stage`, `epoch`).
    fn meta(&self, stage: Stage, epoch: usize, train: Metrics, validation: Metrics, step: u64, confusion: Vec<Vec<usize>>) -> CheckpointMeta {
        CheckpointMeta {
            stage,
            epoch,
            backbone: self.cfg.backbone,
            variant: self.spec.variant,
            classes: self.classes.clone(),
            image_size: self.size,
            train,
            validation,
            optimizer_step: step,
            config: self.cfg.clone(),
            confusion,
        }
    }
}

/// Where a run starts: its checkpoints so far, what it resumes from, and the network.
struct Start {
    existing: Vec<(String, CheckpointMeta)>,
    resume_from: Option<(String, CheckpointMeta)>,
    partial: Option<Partial>,
    bb: Backbone,
    head: Head,
}

/// The dataset's pixel cache (built on first use) and the two splits' images,
/// with the images left out and why.
fn load_images(
    r: &Run,
    train_s: &[&Sample],
    val_s: &[&Sample],
    on_event: &mut dyn FnMut(Event),
) -> Result<(Images, Images, Vec<Rejected>), TrainError> {
    let (spec, size, cancel) = (r.spec, r.size, r.cancel);
    let limits = DecodeLimits::default();
    let t0 = Instant::now();
    let cache = PixelCache::open_or_build(
        &spec.cache_dir,
        &spec.dataset_root,
        &spec.manifest.samples,
        size,
        &limits,
        |_, _| {},
        cancel,
    )
    .map_err(|e| match e {
        CacheError::Cancelled => TrainError::Cancelled,
        e => TrainError::Data(e.to_string()),
    })?;
    let n = spec.manifest.samples.len();
    on_event(Event::Message {
        text: if cache.built {
            format!("pixel cache built: {n} images decoded at {size}x{size} in {:.1} s ({} MiB)", t0.elapsed().as_secs_f64(), cache.bytes >> 20)
        } else {
            format!("pixel cache reused: {n} images at {size}x{size}, no decoding")
        },
    });
    let (train, mut skipped) = Images::from_cache(&cache, train_s);
    let (val, skipped_val) = Images::from_cache(&cache, val_s);
    skipped.extend(skipped_val);
    for r in &skipped {
        on_event(Event::Message { text: format!("skipped {}: {}", r.path, r.reason) });
    }
    if train.is_empty() || val.is_empty() {
        return Err(TrainError::Data("no readable images left in the training or validation split".into()));
    }
    check_cancel(cancel)?;
    Ok((train, val, skipped))
}

/// The resume point (the newest complete checkpoint, or a mid-epoch one
/// after it) and the network built from it, or from the initial weights.
fn restore(r: &Run, on_event: &mut dyn FnMut(Event)) -> Result<Start, TrainError> {
    let (spec, cfg, dev, classes) = (r.spec, r.cfg, r.dev, &r.classes);
    let k = if classes.len() == 2 { 1 } else { classes.len() };
    // Resume point: the newest complete checkpoint of this run.
    let existing = checkpoint::list(&spec.out_dir)?;
    let resume_from = if spec.resume { existing.last().cloned() } else { None };
    if !spec.resume && !existing.is_empty() {
        return Err(TrainError::Checkpoint(format!(
            "{} already holds checkpoints; resume, or use an empty output directory",
            spec.out_dir.display()
        )));
    }

    // A mid-epoch checkpoint of the stage-2 epoch after the newest complete
    // one: the run continues from inside that epoch.
    let last_finetune = existing.iter().filter(|(_, m)| m.stage == Stage::Finetune).map(|(_, m)| m.epoch).max().unwrap_or(0);
    let partial = match spec.resume {
        true => checkpoint::read_partial(&spec.out_dir)?.filter(|(_, m, p)| {
            m.stage == Stage::Finetune && p.epoch == last_finetune + 1 && m.classes == *classes && m.backbone == cfg.backbone
        }),
        false => None,
    };
    if partial.is_none() {
        files::remove_partial(&spec.out_dir)?;
    }

    let (bb, head) = match (&partial, &resume_from) {
        (Some((dir, _, p)), _) => {
            let t = files::load_tensors(dir, files::MODEL_FILE, dev)?;
            on_event(Event::Message {
                text: format!("resuming stage 2 inside epoch {} after {} batches (mid-epoch checkpoint)", p.epoch, p.steps_done),
            });
            build_from(&t, cfg, spec.variant, dev)?
        }
        (None, Some((name, meta))) => {
            if meta.classes != *classes || meta.backbone != cfg.backbone {
                return Err(TrainError::Checkpoint(format!("checkpoint {name} was made for other classes or another backbone")));
            }
            let t = files::load_tensors(&spec.out_dir.join(name), files::MODEL_FILE, dev)?;
            on_event(Event::Message { text: format!("resuming from checkpoint {name}") });
            build_from(&t, cfg, spec.variant, dev)?
        }
        (None, None) => {
            let src: Box<dyn WeightSource> = match &spec.weights {
                WeightsChoice::Pretrained(p) => Box::new(
                    WeightSet::from_file(p).map_err(|e| TrainError::Checkpoint(format!("pretrained weights: {e}")))?,
                ),
                WeightsChoice::Seeded => Box::new(SeededInit { seed: cfg.seed, device: dev.clone() }),
            };
            let bb = Backbone::build(cfg.backbone, spec.variant, src.as_ref(), true, Precision::F32, dev)?;
            let head = Head::init(bb.feature_dim(), k, cfg.dropout, cfg.seed, dev)?;
            (bb, head)
        }
    };
    Ok(Start { existing, resume_from, partial, bb, head })
}

/// Stage 1: features of every image through the frozen base (on disk,
/// resumable), then the head's epochs on them; returns the best epoch's
/// checkpoint.
fn stage1(
    r: &Run,
    bb: &Backbone,
    head: &Head,
    (train, val): (&Images, &Images),
    (train_s, val_s): (&[&Sample], &[&Sample]),
    on_event: &mut dyn FnMut(Event),
) -> Result<(String, CheckpointMeta), TrainError> {
    let (store, train_views, val_views) = feature_pass(r, bb, (train, val), (train_s, val_s), on_event)?;
    let Some(best) = head_epochs(r, head, (&train.labels, &val.labels), (&train_views, &val_views), on_event)? else {
        return Err(TrainError::Config("stage 1 ran no epoch".into()));
    };
    head.kernel.set(&best.kernel)?;
    head.bias.set(&best.bias)?;
    let (epoch, ev) = (best.epoch, best.eval);
    let name = checkpoint::name(Stage::Frozen, epoch);
    let meta = r.meta(Stage::Frozen, epoch, best.train, ev.metrics, 0, ev.confusion);
    files::save(&r.spec.out_dir, &name, &files::model_tensors(bb, head)?, &[], &meta)?;
    files::set_best(&r.spec.out_dir, &name)?;
    store.remove()?;
    on_event(Event::Checkpoint { stage: Stage::Frozen, epoch, name: name.clone(), validation: meta.validation });
    Ok((name, meta))
}

/// The frozen base's features of every training view (one, or
/// `STAGE1_VIEWS` augmented ones) and of the validation images (and their
/// mirrors with test-time augmentation), on disk;
/// a resumed run reuses what an interrupted one finished.
fn feature_pass(
    r: &Run,
    bb: &Backbone,
    (train, val): (&Images, &Images),
    (train_s, val_s): (&[&Sample], &[&Sample]),
    on_event: &mut dyn FnMut(Event),
) -> Result<(FeatureStore, Vec<FeatureRows>, Vec<FeatureRows>), TrainError> {
    let (spec, cfg, cancel) = (r.spec, r.cfg, r.cancel);
    let aug = cfg.augment.then_some(Augment::KERAS_GUIDE);
    let views = if aug.is_some() { STAGE1_VIEWS } else { 1 };
    let steps = |n: usize| n.div_ceil(cfg.batch_size);
    let total_steps = views * steps(train.len()) + val_views(cfg).len() * steps(val.len());
    let mut done = 0;
    let pass_started = Instant::now();
    let mut report = |on_event: &mut dyn FnMut(Event)| {
        done += 1;
        let eta_s = eta(pass_started, done, total_steps);
        on_event(Event::Progress { stage: Stage::Features, epoch: 1, epochs: 1, step: done, steps: total_steps, eta_s });
    };
    // Everything the features depend on: a resumed run reuses the
    // batches an interrupted one finished only when all of it matches.
    let key = serde_json::json!({
        "version": 1, "backbone": cfg.backbone, "variant": spec.variant, "size": r.size,
        "batch": cfg.batch_size, "seed": cfg.seed, "augment": cfg.augment, "tta": cfg.tta, "weights": spec.weights,
        "train": train_s.iter().map(|s| &s.path).collect::<Vec<_>>(),
        "validation": val_s.iter().map(|s| &s.path).collect::<Vec<_>>(),
    });
    let store = FeatureStore::open(&spec.out_dir, &key.to_string(), spec.resume)?;
    let dim = bb.feature_dim();
    let sync_every = spec.partial_every.map_or(SYNC_EVERY, |p| p.min(SYNC_EVERY));
    let mut train_views = Vec::with_capacity(views);
    let mut reused = 0;
    for v in 0..views {
        let a = aug.map(|a| (a, cfg.seed ^ (v as u64 + 1) * 0x9e37));
        let mut rows = store.part(&format!("train-{v}"), train.len(), dim, sync_every)?;
        reused += rows.finished;
        extract(bb, train, cfg, a, |_, _| report(on_event), &mut rows, cancel)?;
        train_views.push(rows);
    }
    let mut val_rows = Vec::with_capacity(2);
    for (i, &a) in val_views(cfg).iter().enumerate() {
        let mut rows = store.part(if i == 0 { "validation" } else { "validation-mirror" }, val.len(), dim, sync_every)?;
        reused += rows.finished;
        extract(bb, val, cfg, a, |_, _| report(on_event), &mut rows, cancel)?;
        val_rows.push(rows);
    }
    if reused > 0 {
        on_event(Event::Message {
            text: format!("feature pass: reused {reused} of {total_steps} batches from an interrupted attempt"),
        });
    }
    Ok((store, train_views, val_rows))
}

/// How each validation image is seen: as it is, and mirrored with
/// test-time augmentation (the logits' mean is what counts).
fn val_views(cfg: &TrainConfig) -> &'static [Option<(Augment, u64)>] {
    const BOTH: [Option<(Augment, u64)>; 2] = [None, Some((Augment::MIRROR, 0))];
    if cfg.tta { &BOTH } else { &BOTH[..1] }
}

/// Stage 1's best epoch so far: the head's weights and how it did.
struct HeadBest {
    epoch: usize,
    kernel: Tensor,
    bias: Tensor,
    train: Metrics,
    eval: Eval,
}

/// The head's epochs on the stored features (a random training view per
/// batch), with early stopping on the validation loss; returns the best epoch.
fn head_epochs(
    r: &Run,
    head: &Head,
    (train_labels, val_labels): (&[u32], &[u32]),
    (train_views, val_views): (&[FeatureRows], &[FeatureRows]),
    on_event: &mut dyn FnMut(Event),
) -> Result<Option<HeadBest>, TrainError> {
    let (cfg, dev) = (r.cfg, r.dev);
    let n = train_labels.len();
    let mut opt = Adam::new(cfg.frozen_lr);
    let mut best: Option<HeadBest> = None;
    let mut since_best = 0;
    for epoch in 1..=cfg.frozen_epochs {
        check_cancel(r.cancel)?;
        let t0 = Instant::now();
        let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_mul(1_000_003) ^ epoch as u64);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct) = (0.0, 0usize);
        for chunk in order.chunks(cfg.batch_size) {
            let view = if train_views.len() > 1 { rand::Rng::gen_range(&mut rng, 0..train_views.len()) } else { 0 };
            let x = train_views[view].rows(chunk, dev)?;
            let labels: Vec<u32> = chunk.iter().map(|i| train_labels[*i]).collect();
            let (logits, tape) = head.forward_train(&x, &mut rng)?;
            let (l, dlogits) = loss::loss_and_grad(&logits, &labels)?;
            let (dk, db, _) = head.backward(&tape, &dlogits)?;
            opt.update([("head.kernel", &head.kernel, &dk), ("head.bias", &head.bias, &db)])?;
            loss_sum += l * chunk.len() as f64;
            correct += loss::predicted(&logits)?.iter().zip(&labels).filter(|(p, y)| p == y).count();
        }
        let train_m = Metrics { loss: loss_sum / n as f64, accuracy: correct as f64 / n as f64 };
        let per_view = val_views.iter().map(|v| head_logits_rows(head, v, cfg.batch_size, dev)).collect::<Result<Vec<_>, _>>()?;
        let ev = evaluate(&mean_logits(&per_view)?, val_labels, r.classes.len())?;
        finite(Stage::Frozen, epoch, &train_m, &ev.metrics, cfg.frozen_lr)?;
        let seconds = t0.elapsed().as_secs_f64();
        let (epochs, validation) = (cfg.frozen_epochs, ev.metrics);
        on_event(Event::Epoch { stage: Stage::Frozen, epoch, epochs, train: train_m, validation, seconds });
        if best.as_ref().is_none_or(|b| ev.metrics.loss < b.eval.metrics.loss) {
            let (kernel, bias) = (head.kernel.as_tensor().copy()?, head.bias.as_tensor().copy()?);
            best = Some(HeadBest { epoch, kernel, bias, train: train_m, eval: ev });
            since_best = 0;
        } else {
            since_best += 1;
            if cfg.patience > 0 && since_best >= cfg.patience {
                on_event(Event::Message { text: format!("stage 1: early stop after epoch {epoch}") });
                break;
            }
        }
    }
    Ok(best)
}

/// One stage-2 step on batch `x` (C,B,H,W): forward through base and head,
/// backward, Adam on every trainable tensor. Returns the batch's mean loss
/// and how many it got right. The benchmarks time this same function.
pub fn finetune_step(
    bb: &Backbone,
    head: &Head,
    opt: &mut Adam,
    x: Tensor,
    labels: &[u32],
    rng: &mut rand::rngs::StdRng,
) -> Result<(f64, usize), TrainError> {
    let (feats, tape) = bb.forward_train_planar(x)?;
    let feats = feats.detach();
    let (logits, htape) = head.forward_train(&feats, rng)?;
    let (l, dlogits) = loss::loss_and_grad(&logits, labels)?;
    let (dk, db, dfeat) = head.backward(&htape, &dlogits)?;
    let grads = bb.backward(tape, &dfeat)?;
    let mut updates: Vec<(&str, &candle_core::Var, &Tensor)> =
        vec![("head.kernel", &head.kernel, &dk), ("head.bias", &head.bias, &db)];
    for (i, p) in bb.net.trainable() {
        if let Some(g) = &grads.0[i] {
            updates.push((p.name.as_str(), &p.var, g));
        }
    }
    crate::model::profile::timed("adam", || opt.update(updates))?;
    let right = loss::predicted(&logits)?.iter().zip(labels).filter(|(p, y)| p == y).count();
    Ok((l, right))
}

/// The mid-epoch checkpoint: weights, Adam state, and how far the epoch got.
fn save_partial(
    r: &Run,
    bb: &Backbone,
    head: &Head,
    opt: &Adam,
    train_len: usize,
    progress: checkpoint::EpochProgress,
) -> Result<(), TrainError> {
    let seen = (progress.steps_done * r.cfg.batch_size).min(train_len) as f64;
    let so_far = Metrics { loss: progress.loss_sum / seen, accuracy: progress.correct as f64 / seen };
    let meta = r.meta(Stage::Finetune, progress.epoch, so_far, so_far, opt.step, Vec::new());
    files::save_partial(&r.spec.out_dir, &files::model_tensors(bb, head)?, &opt.state()?, &meta, &progress)?;
    Ok(())
}

/// Where stage 2 picks up: the epoch to start, Adam's state, the best
/// stage-2 checkpoint so far and the epochs since it improved.
struct Stage2Start {
    epoch: usize,
    opt: Adam,
    best: Option<(String, CheckpointMeta)>,
    since_best: usize,
}

fn stage2_start(
    r: &Run,
    existing: &[(String, CheckpointMeta)],
    partial: Option<&Partial>,
    resume_from: Option<&(String, CheckpointMeta)>,
) -> Result<Stage2Start, TrainError> {
    let (cfg, dev) = (r.cfg, r.dev);
    let finetuned = || existing.iter().filter(|(_, m)| m.stage == Stage::Finetune);
    let best = finetuned().min_by(|a, b| a.1.validation.loss.total_cmp(&b.1.validation.loss)).cloned();
    let since_best = best.as_ref().map_or(0, |(_, b)| finetuned().filter(|(_, m)| m.epoch > b.epoch).count());
    let (epoch, opt) = match (partial, resume_from) {
        (Some((dir, m, p)), _) => {
            let state = files::load_tensors(dir, files::OPTIMIZER_FILE, dev)?;
            (p.epoch, Adam::restore(cfg.finetune_lr, m.optimizer_step, &state)?)
        }
        (None, Some((name, m))) if m.stage == Stage::Finetune => {
            let state = files::load_tensors(&r.spec.out_dir.join(name), files::OPTIMIZER_FILE, dev)?;
            (m.epoch + 1, Adam::restore(cfg.finetune_lr, m.optimizer_step, &state)?)
        }
        _ => (1, Adam::new(cfg.finetune_lr)),
    };
    Ok(Stage2Start { epoch, opt, best, since_best })
}

/// Stage 2: every layer trains (BatchNorm statistics stay), from the resume
/// point, with mid-epoch checkpoints; returns the best stage-2 checkpoint.
#[allow(clippy::too_many_arguments)]
fn stage2(
    r: &Run,
    bb: &Backbone,
    head: &Head,
    (train, val): (&Images, &Images),
    existing: &[(String, CheckpointMeta)],
    (partial, resume_from): (Option<Partial>, Option<(String, CheckpointMeta)>),
    stage1_best: &Option<(String, CheckpointMeta)>,
    on_event: &mut dyn FnMut(Event),
) -> Result<Option<(String, CheckpointMeta)>, TrainError> {
    let (spec, cfg) = (r.spec, r.cfg);
    let start = stage2_start(r, existing, partial.as_ref(), resume_from.as_ref())?;
    let (mut opt, mut stage2_best, mut since_best) = (start.opt, start.best, start.since_best);
    let mut inside = partial.map(|(_, _, p)| p);
    let mut last_partial = Instant::now();
    for epoch in start.epoch..=cfg.finetune_epochs {
        if cfg.patience > 0 && since_best >= cfg.patience {
            on_event(Event::Message { text: format!("stage 2: early stop before epoch {epoch}") });
            break;
        }
        let t0 = Instant::now();
        // Continuing inside this epoch: the same order, from the next batch.
        let resumed = inside.take().filter(|p| p.epoch == epoch);
        let train_m = finetune_epoch(r, (bb, head, &mut opt), train, epoch, resumed, &mut last_partial, on_event)?;
        let ev = evaluate(&logits_of(bb, head, val, cfg, r.cancel)?, &val.labels, r.classes.len())?;
        finite(Stage::Finetune, epoch, &train_m, &ev.metrics, cfg.finetune_lr)?;
        let (epochs, validation, seconds) = (cfg.finetune_epochs, ev.metrics, t0.elapsed().as_secs_f64());
        on_event(Event::Epoch { stage: Stage::Finetune, epoch, epochs, train: train_m, validation, seconds });
        let name = checkpoint::name(Stage::Finetune, epoch);
        let meta = r.meta(Stage::Finetune, epoch, train_m, ev.metrics, opt.step, ev.confusion);
        files::save(&spec.out_dir, &name, &files::model_tensors(bb, head)?, &opt.state()?, &meta)?;
        files::remove_partial(&spec.out_dir)?;
        on_event(Event::Checkpoint { stage: Stage::Finetune, epoch, name: name.clone(), validation: meta.validation });
        let improved = stage2_best.as_ref().is_none_or(|(_, b)| meta.validation.loss < b.validation.loss);
        if improved {
            stage2_best = Some((name.clone(), meta));
            since_best = 0;
        } else {
            since_best += 1;
        }
        // Keep the best and the newest stage-2 checkpoints only (each holds Adam state too).
        prune(&spec.out_dir, &[stage1_best.as_ref().map(|b| b.0.clone()), stage2_best.as_ref().map(|b| b.0.clone()), Some(name)])?;
        if let Some(best) = better(stage1_best, &stage2_best) {
            files::set_best(&spec.out_dir, &best.0)?;
        }
    }
    Ok(stage2_best)
}

/// One stage-2 epoch over the training images (in the epoch's seeded order,
/// from where a mid-epoch checkpoint left it), saving mid-epoch checkpoints
/// as configured; returns the epoch's training metrics.
#[allow(clippy::too_many_arguments)]
fn finetune_epoch(
    r: &Run,
    (bb, head, opt): (&Backbone, &Head, &mut Adam),
    train: &Images,
    epoch: usize,
    resumed: Option<checkpoint::EpochProgress>,
    last_partial: &mut Instant,
    on_event: &mut dyn FnMut(Event),
) -> Result<Metrics, TrainError> {
    let (spec, cfg, dev, size) = (r.spec, r.cfg, r.dev, r.size);
    let t0 = Instant::now();
    let aug = cfg.augment.then_some(Augment::KERAS_GUIDE);
    let steps = train.len().div_ceil(cfg.batch_size);
    let progress_every = (steps / 20).max(1);
    let epoch_seed = cfg.seed.wrapping_mul(7_000_003) ^ (epoch as u64) << 8;
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(epoch_seed));
    let skip = resumed.as_ref().map_or(0, |p| p.steps_done);
    let (mut loss_sum, mut correct) = resumed.map_or((0.0, 0usize), |p| (p.loss_sum, p.correct));
    // The next batches are read (and augmented) while this one trains.
    let make = |(step, chunk)| {
        let (_, batch_seed) = step_rng(epoch_seed, step);
        let x = match aug {
            Some(a) => {
                let f = |slot: usize, img: &[u8]| {
                    let mut r = rand::rngs::StdRng::seed_from_u64(batch_seed ^ slot as u64);
                    a.apply(img, size, &mut r)
                };
                train.batch(chunk, cfg.backbone.scaling(), dev, Some(&f))?
            }
            None => train.batch(chunk, cfg.backbone.scaling(), dev, None)?,
        };
        Ok::<_, TrainError>((step, chunk, x))
    };
    let batches = order.chunks(cfg.batch_size).enumerate().skip(skip);
    loader::prefetch(batches, PREFETCH, make, |(step, chunk, x)| {
        check_cancel(r.cancel)?;
        let step_started = Instant::now();
        let (mut rng, _) = step_rng(epoch_seed, step);
        let labels: Vec<u32> = chunk.iter().map(|i| train.labels[*i]).collect();
        let (l, right) = finetune_step(bb, head, opt, x, &labels, &mut rng)?;
        loss_sum += l * chunk.len() as f64;
        correct += right;
        metrics::histogram!("tuneserve_train_step_seconds", "stage" => "finetune").record(step_started.elapsed().as_secs_f64());
        if (step + 1) % progress_every == 0 || step + 1 == steps {
            // This epoch's pace (from where it started or resumed), for all
            // steps left in the stage.
            let left = steps - (step + 1) + (cfg.finetune_epochs - epoch) * steps;
            let eta_s = eta(t0, step + 1 - skip, step + 1 - skip + left);
            on_event(Event::Progress { stage: Stage::Finetune, epoch, epochs: cfg.finetune_epochs, step: step + 1, steps, eta_s });
        }
        if spec.partial_every.is_some_and(|every| last_partial.elapsed() >= every) && step + 1 < steps {
            let progress = checkpoint::EpochProgress { epoch, steps_done: step + 1, loss_sum, correct };
            save_partial(r, bb, head, opt, train.len(), progress)?;
            *last_partial = Instant::now();
        }
        Ok(())
    })?;
    Ok(Metrics { loss: loss_sum / train.len() as f64, accuracy: correct as f64 / train.len() as f64 })
}

/// A loss that is NaN or infinite ends the run with a reason a person can act
/// on (nothing after it could be trusted, and its metrics cannot be stored).
fn finite(stage: Stage, epoch: usize, train: &Metrics, validation: &Metrics, lr: f64) -> Result<(), TrainError> {
    if train.loss.is_finite() && validation.loss.is_finite() {
        return Ok(());
    }
    Err(TrainError::Diverged(format!(
        "the loss became {} in {} epoch {epoch} (learning rate {lr}); try a lower learning rate",
        if train.loss.is_nan() || validation.loss.is_nan() { "NaN" } else { "infinite" },
        match stage {
            Stage::Finetune => "stage 2",
            _ => "stage 1",
        }
    )))
}

/// Seconds left for `total` steps when `done` took the time since `started`.
fn eta(started: Instant, done: usize, total: usize) -> Option<f64> {
    (done > 0).then(|| started.elapsed().as_secs_f64() / done as f64 * total.saturating_sub(done) as f64)
}

/// The checkpoint with the lower validation loss; stage 1 wins ties (fallback).
fn better<'a>(s1: &'a Option<(String, CheckpointMeta)>, s2: &'a Option<(String, CheckpointMeta)>) -> Option<&'a (String, CheckpointMeta)> {
    match (s1, s2) {
        (Some(a), Some(b)) => Some(if b.1.validation.loss < a.1.validation.loss { b } else { a }),
        (a, b) => a.as_ref().or(b.as_ref()),
    }
}

/// Removes the stage-2 checkpoints not in `keep`.
fn prune(out: &std::path::Path, keep: &[Option<String>]) -> Result<(), TrainError> {
    for (name, m) in checkpoint::list(out)? {
        if m.stage == Stage::Finetune && !keep.iter().flatten().any(|k| *k == name) {
            std::fs::remove_dir_all(out.join(&name))?;
        }
    }
    Ok(())
}

/// Rebuilds backbone and head from a checkpoint's tensors.
pub fn build_from(t: &HashMap<String, Tensor>, cfg: &TrainConfig, variant: Variant, dev: &Device) -> Result<(Backbone, Head), TrainError> {
    let bb = Backbone::build(cfg.backbone, variant, t, true, Precision::F32, dev)?;
    let kernel = t.get("head.kernel").ok_or_else(|| TrainError::Checkpoint("checkpoint has no head.kernel".into()))?;
    let bias = t.get("head.bias").ok_or_else(|| TrainError::Checkpoint("checkpoint has no head.bias".into()))?;
    let head = Head::from_tensors(kernel.clone(), bias.clone(), cfg.dropout)?;
    Ok((bb, head))
}
