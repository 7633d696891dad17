//! A run's settings: named recipes (presets) and the per-field overrides a
//! request or the command line gives on top of one.

use serde::{Deserialize, Serialize};

use crate::model::{BackboneKind, Precision};

/// A named set of defaults for every setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Recipe {
    /// tuneserve's own: the backbone at the resolution its ImageNet weights
    /// were trained at (299 px for Xception), and a short stage 2.
    #[default]
    Standard,
    /// The Keras notebook exactly: 150 px for Xception, no augmentation,
    /// 20 + 10 epochs (its numbers are what docs/accuracy.md compares with Keras).
    Notebook,
}

impl Recipe {
    pub fn as_str(self) -> &'static str {
        match self {
            Recipe::Standard => "standard",
            Recipe::Notebook => "notebook",
        }
    }

    /// Every setting of this recipe for `backbone`.
    pub fn config(self, backbone: BackboneKind) -> TrainConfig {
        let notebook = TrainConfig {
            recipe: Recipe::Notebook,
            backbone,
            image_size: backbone.notebook_size(),
            batch_size: 32,
            frozen_epochs: 20,
            frozen_lr: 1e-3,
            finetune_epochs: 10,
            finetune_lr: 1e-5,
            dropout: 0.2,
            patience: 5,
            augment: false,
            tta: false,
            serving_precision: Precision::F32,
            validation_split: 0.2,
            seed: 0,
        };
        match self {
            Recipe::Notebook => notebook,
            Recipe::Standard => TrainConfig {
                recipe: Recipe::Standard,
                image_size: backbone.native_size(),
                finetune_epochs: 1,
                ..notebook
            },
        }
    }
}

/// Hyper-parameters of one training run, every field set (a recipe's
/// defaults with the request's overrides applied). Records stored before
/// recipes existed read as the notebook's, which is what they ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default = "TrainConfig::notebook")]
pub struct TrainConfig {
    /// The recipe whose defaults the unset fields took.
    pub recipe: Recipe,
    pub backbone: BackboneKind,
    /// Square input size (from the backbone's minimum to 1024); 0 in old
    /// records means the backbone's notebook size.
    #[schema(minimum = 0, maximum = 1024)]
    pub image_size: usize,
    #[schema(minimum = 1, maximum = 1024)]
    pub batch_size: usize,
    /// Stage 1: frozen base, head only.
    #[schema(minimum = 0, maximum = 1000)]
    pub frozen_epochs: usize,
    #[schema(exclusive_minimum = 0.0)]
    pub frozen_lr: f64,
    /// Stage 2: whole network, BatchNorm statistics frozen.
    #[schema(minimum = 0, maximum = 1000)]
    pub finetune_epochs: usize,
    #[schema(exclusive_minimum = 0.0)]
    pub finetune_lr: f64,
    #[schema(minimum = 0.0, exclusive_maximum = 1.0)]
    pub dropout: f32,
    /// Early stopping: epochs without validation-loss improvement (0 = off).
    #[schema(minimum = 0)]
    pub patience: usize,
    /// Random flips and rotations of training images.
    pub augment: bool,
    /// Test-time augmentation: the mean logit of each image and its mirror,
    /// for validation and (by default) for the published model's predictions.
    pub tta: bool,
    /// Operand format of the published model's products at /predict:
    /// `bf16` makes the large ones about 1.4x faster on CPUs with AVX-512
    /// BF16, `int16` (16-bit fixed point) about 1.25x on CPUs with AVX2 but
    /// not AVX-512 (others serve in f32), at a small cost in precision;
    /// training is always f32.
    pub serving_precision: Precision,
    #[schema(exclusive_minimum = 0.0, exclusive_maximum = 1.0)]
    pub validation_split: f64,
    #[schema(minimum = 0)]
    pub seed: u64,
}

impl Default for TrainConfig {
    /// The default recipe with Xception.
    fn default() -> Self {
        Recipe::default().config(BackboneKind::Xception)
    }
}

/// What a request or the command line sets: a recipe (default `standard`)
/// and any fields to override in it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct TrainSettings {
    pub recipe: Option<Recipe>,
    pub backbone: Option<BackboneKind>,
    /// 0 or unset: the recipe's size for the backbone (standard: 299
    /// Xception, 224 MobileNetV2; notebook: 150 Xception), else from the
    /// backbone's minimum (71 Xception, 32 MobileNetV2) to 1024.
    #[schema(minimum = 0, maximum = 1024)]
    pub image_size: Option<usize>,
    #[schema(minimum = 1, maximum = 1024)]
    pub batch_size: Option<usize>,
    /// Stage 1: frozen base, head only. At least one epoch in all (frozen + finetune).
    #[schema(minimum = 0, maximum = 1000)]
    pub frozen_epochs: Option<usize>,
    #[schema(exclusive_minimum = 0.0)]
    pub frozen_lr: Option<f64>,
    /// Stage 2: whole network, BatchNorm statistics frozen.
    #[schema(minimum = 0, maximum = 1000)]
    pub finetune_epochs: Option<usize>,
    #[schema(exclusive_minimum = 0.0)]
    pub finetune_lr: Option<f64>,
    /// In [0, 1).
    #[schema(minimum = 0.0, exclusive_maximum = 1.0)]
    pub dropout: Option<f32>,
    /// Early stopping: epochs without validation-loss improvement (0 = off).
    #[schema(minimum = 0)]
    pub patience: Option<usize>,
    /// Random flips and rotations of training images (stage 1: extra feature views).
    pub augment: Option<bool>,
    /// Test-time augmentation (mean logit of the image and its mirror).
    pub tta: Option<bool>,
    /// `bf16`: serve the published model with bfloat16 products where the
    /// CPU has AVX-512 BF16; `int16`: with 16-bit fixed-point products where
    /// its widest vector unit is AVX2 (both faster, slightly less precise);
    /// default `f32`.
    pub serving_precision: Option<Precision>,
    /// Fraction held out for validation when the dataset has no validation split, in (0, 1).
    #[schema(exclusive_minimum = 0.0, exclusive_maximum = 1.0)]
    pub validation_split: Option<f64>,
    #[schema(minimum = 0)]
    pub seed: Option<u64>,
}

impl TrainSettings {
    /// The recipe's settings for the chosen backbone with these overrides.
    pub fn resolve(&self) -> TrainConfig {
        let backbone = self.backbone.unwrap_or(BackboneKind::Xception);
        let base = self.recipe.unwrap_or_default().config(backbone);
        TrainConfig {
            recipe: base.recipe,
            backbone,
            image_size: self.image_size.filter(|s| *s != 0).unwrap_or(base.image_size),
            batch_size: self.batch_size.unwrap_or(base.batch_size),
            frozen_epochs: self.frozen_epochs.unwrap_or(base.frozen_epochs),
            frozen_lr: self.frozen_lr.unwrap_or(base.frozen_lr),
            finetune_epochs: self.finetune_epochs.unwrap_or(base.finetune_epochs),
            finetune_lr: self.finetune_lr.unwrap_or(base.finetune_lr),
            dropout: self.dropout.unwrap_or(base.dropout),
            patience: self.patience.unwrap_or(base.patience),
            augment: self.augment.unwrap_or(base.augment),
            tta: self.tta.unwrap_or(base.tta),
            serving_precision: self.serving_precision.unwrap_or(base.serving_precision),
            validation_split: self.validation_split.unwrap_or(base.validation_split),
            seed: self.seed.unwrap_or(base.seed),
        }
    }
}

impl TrainConfig {
    /// The notebook's settings with Xception (and how records from before
    /// recipes read).
    pub fn notebook() -> Self {
        Recipe::Notebook.config(BackboneKind::Xception)
    }

    /// The one rule set for a run's settings (the API, the CLI and the
    /// trainer all ask this); the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_size == 0 || self.batch_size > 1024 {
            return Err(format!("batch_size must be 1..=1024, got {}", self.batch_size));
        }
        if self.frozen_epochs + self.finetune_epochs == 0 {
            return Err("at least one epoch is needed (frozen_epochs + finetune_epochs > 0)".into());
        }
        if self.frozen_epochs > 1000 || self.finetune_epochs > 1000 {
            return Err("at most 1000 epochs per stage".into());
        }
        for (n, lr) in [("frozen_lr", self.frozen_lr), ("finetune_lr", self.finetune_lr)] {
            if !(lr.is_finite() && lr > 0.0) {
                return Err(format!("{n} must be a positive number"));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err("dropout must be in [0, 1)".into());
        }
        if !(self.validation_split > 0.0 && self.validation_split < 1.0) {
            return Err("validation_split must be in (0, 1)".into());
        }
        let min = self.backbone.min_size();
        if self.image_size != 0 && !(min..=1024).contains(&self.image_size) {
            return Err(format!("image_size must be 0 (the recipe's size) or {min}..=1024 for {}", self.backbone.as_str()));
        }
        Ok(())
    }

    /// The input size the run uses (`image_size`; 0 in old records: the
    /// backbone's notebook size).
    pub fn input_size(&self) -> usize {
        if self.image_size == 0 { self.backbone.notebook_size() } else { self.image_size }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_on_top_of_the_chosen_recipe() {
        let standard = TrainSettings::default().resolve();
        assert_eq!((standard.recipe, standard.image_size, standard.finetune_epochs), (Recipe::Standard, 299, 1));
        let nb = TrainSettings { recipe: Some(Recipe::Notebook), ..Default::default() }.resolve();
        assert_eq!(nb, TrainConfig::notebook());
        assert_eq!((nb.image_size, nb.frozen_epochs, nb.finetune_epochs, nb.tta, nb.augment), (150, 20, 10, false, false));
        let mobile = TrainSettings { backbone: Some(BackboneKind::MobilenetV2), image_size: Some(0), tta: Some(true), ..Default::default() }
            .resolve();
        assert_eq!((mobile.image_size, mobile.tta, mobile.recipe), (224, true, Recipe::Standard));
    }

    #[test]
    fn records_from_before_recipes_read_as_the_notebook() {
        let old = r#"{"backbone":"xception","image_size":0,"batch_size":32,"frozen_epochs":20,"frozen_lr":0.001,
            "finetune_epochs":10,"finetune_lr":1e-5,"dropout":0.2,"patience":5,"augment":false,"validation_split":0.2,"seed":3}"#;
        let c: TrainConfig = serde_json::from_str(old).unwrap();
        assert_eq!((c.recipe, c.tta, c.input_size(), c.seed), (Recipe::Notebook, false, 150, 3));
    }
}
