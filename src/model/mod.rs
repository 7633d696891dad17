//! Backbones (Xception, MobileNetV2), the classification head, and weight import.

pub mod backbone;
pub mod checkpoint;
pub mod head;
pub mod keras;
pub mod mobilenet_v2;
pub mod net;
pub mod onnx;
pub mod profile;
pub mod weights;
pub mod xception;

use candle_core::{Device, Result, Tensor};

pub use backbone::{Backbone, BackboneKind, Precision, Variant};
pub use head::Head;
pub use net::ParamLayout;

/// Where a network's tensors come from when it is built: imported weights,
/// a checkpoint, or a seeded initialisation. Tensors are named canonically
/// and returned already in the internal layout of `layout`.
pub trait WeightSource {
    fn tensor(&self, name: &str, layout: &ParamLayout) -> Result<Tensor>;
}

/// Keras's default initialisation (glorot-uniform kernels, BatchNorm at
/// identity), seeded: for synthetic models in tests and for training from scratch.
pub struct SeededInit {
    pub seed: u64,
    pub device: Device,
}

impl WeightSource for SeededInit {
    fn tensor(&self, name: &str, layout: &ParamLayout) -> Result<Tensor> {
        let shape = layout.keras_shape();
        let n: usize = shape.iter().product();
        let data: Vec<f32> = match *layout {
            ParamLayout::Vector { c } => {
                let one = name.ends_with("gamma") || name.ends_with("moving_variance");
                vec![if one { 1.0 } else { 0.0 }; c]
            }
            ParamLayout::Conv { k, c, o } => glorot(name, self.seed, n, (k * k * c) as f64, (k * k * o) as f64),
            ParamLayout::Depthwise { k, .. } => glorot(name, self.seed, n, (k * k) as f64, (k * k) as f64),
        };
        layout.from_keras(&Tensor::from_vec(data, shape, &self.device)?)
    }
}

fn glorot(name: &str, seed: u64, n: usize, fan_in: f64, fan_out: f64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    // Seed per tensor name so adding a layer does not reshuffle the others.
    let h = name.bytes().fold(seed ^ 0x9e37_79b9_7f4a_7c15, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let mut rng = rand::rngs::StdRng::seed_from_u64(h);
    let limit = (6.0 / (fan_in + fan_out)).sqrt();
    (0..n).map(|_| rng.gen_range(-limit..limit) as f32).collect()
}

/// Keras-shaped tensors by canonical name (a loaded safetensors file, an
/// imported Keras file): each is checked against the layer's expected shape.
impl WeightSource for std::collections::HashMap<String, Tensor> {
    fn tensor(&self, name: &str, layout: &ParamLayout) -> Result<Tensor> {
        let t = self.get(name).ok_or_else(|| candle_core::Error::Msg(format!("weights have no tensor {name:?}")))?;
        let want = layout.keras_shape();
        if t.dims() != want.as_slice() {
            candle_core::bail!("tensor {name:?} has shape {:?}, the network needs {want:?}", t.dims());
        }
        layout.from_keras(t)
    }
}

/// Imported weights (any format `WeightSet::from_file` reads) feed a network directly.
impl WeightSource for weights::WeightSet {
    fn tensor(&self, name: &str, layout: &ParamLayout) -> Result<Tensor> {
        let t = self.get(name).ok_or_else(|| candle_core::Error::Msg(format!("weights have no tensor {name:?}")))?;
        let want = layout.keras_shape();
        if t.shape != want {
            candle_core::bail!("tensor {name:?} has shape {:?}, the network needs {want:?}", t.shape);
        }
        layout.from_keras(&Tensor::from_slice(&t.data, t.shape.as_slice(), &Device::Cpu)?)
    }
}
