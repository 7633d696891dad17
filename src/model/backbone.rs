//! The backbones behind one type: which network, its input convention, and
//! the built `Net`.

use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use super::net::{Grads, Net, Saved};
pub use crate::ops::packed::Precision;
use crate::data::image::Scaling;
use super::{mobilenet_v2, xception, WeightSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackboneKind {
    Xception,
    MobilenetV2,
}

/// Full-size (the pretrained network) or tiny (same topology, few channels: tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    Full,
    Tiny,
}

impl BackboneKind {
    /// The Keras notebook's input size (150 for Xception).
    pub fn notebook_size(self) -> usize {
        match self {
            BackboneKind::Xception => 150,
            BackboneKind::MobilenetV2 => 224,
        }
    }

    /// The size the ImageNet weights were trained at.
    pub fn native_size(self) -> usize {
        match self {
            BackboneKind::Xception => 299,
            BackboneKind::MobilenetV2 => 224,
        }
    }

    /// Smallest input the network accepts (Keras: 71 for Xception, 32 for MobileNetV2).
    pub fn min_size(self) -> usize {
        match self {
            BackboneKind::Xception => 71,
            BackboneKind::MobilenetV2 => 32,
        }
    }

    pub fn scaling(self) -> Scaling {
        match self {
            BackboneKind::Xception => Scaling::MinusOneToOne,
            BackboneKind::MobilenetV2 => Scaling::ZeroToOne,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BackboneKind::Xception => "xception",
            BackboneKind::MobilenetV2 => "mobilenet_v2",
        }
    }
}

impl std::str::FromStr for BackboneKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "xception" => Ok(Self::Xception),
            "mobilenet_v2" | "mobilenetv2" => Ok(Self::MobilenetV2),
            _ => Err(format!("unknown backbone {s:?} (expected xception or mobilenet_v2)")),
        }
    }
}

impl std::str::FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "full" => Ok(Self::Full),
            "tiny" => Ok(Self::Tiny),
            _ => Err(format!("unknown variant {s:?} (expected full or tiny)")),
        }
    }
}

pub struct Backbone {
    pub kind: BackboneKind,
    pub variant: Variant,
    pub net: Net,
    pub device: Device,
}

impl Backbone {
    /// `precision`: the format of the frozen products' operands (inference;
    /// trainable weights are always f32).
    pub fn build(kind: BackboneKind, variant: Variant, src: &dyn WeightSource, trainable: bool, precision: Precision, device: &Device) -> Result<Self> {
        let mut net = match (kind, variant) {
            (BackboneKind::Xception, Variant::Full) => xception::build(&xception::XceptionConfig::keras(), src, trainable)?,
            (BackboneKind::Xception, Variant::Tiny) => xception::build(&xception::XceptionConfig::tiny(), src, trainable)?,
            (BackboneKind::MobilenetV2, Variant::Full) => {
                mobilenet_v2::build(&mobilenet_v2::MobileNetV2Config::keras(), src, trainable)?
            }
            (BackboneKind::MobilenetV2, Variant::Tiny) => {
                mobilenet_v2::build(&mobilenet_v2::MobileNetV2Config::tiny(), src, trainable)?
            }
        };
        // Sources that load on the CPU (imported Keras files) still give a
        // network on `device`.
        for p in &mut net.params {
            if !p.var.device().same_device(device) {
                p.var = candle_core::Var::from_tensor(&p.var.as_tensor().to_device(device)?)?;
            }
        }
        net.pack_frozen_products(precision)?;
        Ok(Self { kind, variant, net, device: device.clone() })
    }

    pub fn feature_dim(&self) -> usize {
        self.net.feature_dim
    }

    /// (B,H,W,3) scaled pixels -> (B, feature_dim) pooled features.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        self.net.features(x)
    }

    /// (3,B,H,W) scaled pixels (see `data::image::to_planar_data`) -> (B, feature_dim).
    pub fn features_planar(&self, x: Tensor) -> Result<Tensor> {
        self.net.features_planar(x)
    }

    /// Training forward: pooled features plus what the backward needs.
    pub fn forward_train(&self, x: &Tensor) -> Result<(Tensor, Tape)> {
        let mut saved = Vec::new();
        let map = self.net.forward_map(x, Some(&mut saved))?;
        let dims = map.dims4()?;
        Ok((Net::gap(&map)?, Tape { saved, map_dims: dims }))
    }

    /// `forward_train` of a (3,B,H,W) input (see `data::loader::Images::batch`).
    pub fn forward_train_planar(&self, x: Tensor) -> Result<(Tensor, Tape)> {
        let mut saved = Vec::new();
        let map = self.net.forward_map_planar(x, Some(&mut saved))?;
        let dims = map.dims4()?;
        Ok((Net::gap(&map)?, Tape { saved, map_dims: dims }))
    }

    /// Gradients of every trainable parameter from dL/d(features).
    pub fn backward(&self, tape: Tape, dfeatures: &Tensor) -> Result<Grads> {
        let dmap = Net::gap_backward(dfeatures, tape.map_dims)?;
        self.net.backward_map(tape.saved, dmap)
    }
}

/// The forward pass's record for one batch.
pub struct Tape {
    saved: Vec<Saved>,
    map_dims: (usize, usize, usize, usize),
}
