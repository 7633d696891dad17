//! A trained model ready to answer: backbone + head rebuilt from a checkpoint,
//! images in, logits / probabilities / label out.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::data::image::{resize_bilinear_pil, to_planar_data};
use crate::model::{Backbone, Head, Precision};
use crate::train::checkpoint::{self, CheckpointMeta};
use crate::train::{loss, TrainError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Prediction {
    /// Raw head outputs: one logit for two classes (positive = second class), else one per class.
    pub logits: Vec<f32>,
    pub probabilities: BTreeMap<String, f32>,
    pub label: String,
}

pub struct Predictor {
    backbone: Backbone,
    head: Head,
    meta: CheckpointMeta,
}

impl Predictor {
    /// `precision`: the products' format (None: the model's `serving_precision`).
    pub fn load(dir: &Path, device: &Device, precision: Option<Precision>) -> Result<Self, TrainError> {
        let meta = checkpoint::read_meta(dir)?;
        let t = crate::model::checkpoint::load_tensors(dir, crate::model::checkpoint::MODEL_FILE, device)?;
        let precision = precision.unwrap_or(meta.config.serving_precision);
        let bb = Backbone::build(meta.backbone, meta.variant, &t, false, precision, device)?;
        let get = |n: &str| t.get(n).cloned().ok_or_else(|| TrainError::Checkpoint(format!("checkpoint has no {n}")));
        let head = Head::from_tensors(get("head.kernel")?, get("head.bias")?, 0.0)?;
        if head.classes() != if meta.classes.len() == 2 { 1 } else { meta.classes.len() } {
            return Err(TrainError::Checkpoint("head size does not match the class list".into()));
        }
        Ok(Self { backbone: bb, head, meta })
    }

    pub fn classes(&self) -> &[String] {
        &self.meta.classes
    }

    pub fn image_size(&self) -> usize {
        self.meta.image_size
    }

    pub fn meta(&self) -> &CheckpointMeta {
        &self.meta
    }

    /// The model as ONNX (see [`crate::model::onnx`]).
    pub fn to_onnx(&self) -> Result<Vec<u8>, TrainError> {
        Ok(crate::model::onnx::export(&self.backbone, &self.head, &self.meta.classes, self.meta.image_size)?)
    }

    /// The model as a Keras 3 `.keras` archive (see [`crate::model::keras`]).
    pub fn to_keras(&self) -> Result<Vec<u8>, TrainError> {
        Ok(crate::model::keras::export(&self.backbone, &self.head, self.meta.image_size)?)
    }

    /// Only the Keras weights (`model.weights.h5`) of [`Self::to_keras`]'s model.
    pub fn to_keras_weights(&self) -> Result<Vec<u8>, TrainError> {
        Ok(crate::model::keras::weights(&self.backbone, &self.head, self.meta.image_size)?)
    }

    /// Whether the model was trained with test-time augmentation (its
    /// predictions then default to it too).
    pub fn tta(&self) -> bool {
        self.meta.config.tta
    }

    /// Predicts decoded images (resized here exactly as in training if
    /// needed; images decoded for this model already have its size). The
    /// pixels are copied once, into the network's input layout. Images with
    /// `tta` set get the mean logit of themselves and their mirror.
    pub fn predict(&self, images: &[RgbImage], tta: &[bool]) -> Result<Vec<Prediction>, TrainError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.meta.image_size as u32;
        let resized: Vec<Cow<RgbImage>> = images
            .iter()
            .map(|im| if im.dimensions() == (s, s) { Cow::Borrowed(im) } else { Cow::Owned(resize_bilinear_pil(im, s, s)) })
            .collect();
        let mirrored: Vec<(usize, RgbImage)> = (0..images.len())
            .filter(|i| tta.get(*i).copied().unwrap_or(false))
            .map(|i| (i, image::imageops::flip_horizontal(resized[i].as_ref())))
            .collect();
        let refs: Vec<&RgbImage> = resized.iter().map(|c| c.as_ref()).chain(mirrored.iter().map(|(_, m)| m)).collect();
        let data = to_planar_data(&refs, self.meta.backbone.scaling());
        let x = candle_core::Tensor::from_vec(data, (3, refs.len(), s as usize, s as usize), &self.backbone.device)?;
        let mut rows = self.head.forward(&self.backbone.features_planar(x)?)?.to_vec2::<f32>()?;
        let mirror_rows = rows.split_off(images.len());
        for ((i, _), m) in mirrored.iter().zip(mirror_rows) {
            for (a, b) in rows[*i].iter_mut().zip(m) {
                *a = (*a + b) / 2.0;
            }
        }
        let k = rows.first().map_or(0, |r| r.len());
        let probs = loss::probabilities(&candle_core::Tensor::from_vec(rows.concat(), (images.len(), k), &candle_core::Device::Cpu)?)?;
        Ok(rows
            .into_iter()
            .zip(probs)
            .map(|(l, p)| {
                let best = p.iter().enumerate().fold(0, |b, (i, v)| if *v > p[b] { i } else { b });
                Prediction {
                    probabilities: self.meta.classes.iter().cloned().zip(p.iter().copied()).collect(),
                    label: self.meta.classes[best].clone(),
                    logits: l,
                }
            })
            .collect())
    }
}
