//! The classification head on pooled features: [Dropout ->] Dense(k) logits,
//! with a hand-written backward (it is two matmuls).

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};

pub struct Head {
    /// (in, k), the Keras Dense convention: logits = x @ kernel + bias.
    pub kernel: Var,
    pub bias: Var,
    pub dropout: f32,
}

/// What the head's backward needs from its forward.
pub struct HeadTape {
    x: Tensor,
    mask: Option<Tensor>,
}

impl Head {
    /// Keras Dense defaults: glorot-uniform kernel, zero bias.
    pub fn init(in_dim: usize, classes: usize, dropout: f32, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x4ead);
        let limit = (6.0 / (in_dim + classes) as f64).sqrt();
        let w: Vec<f32> = (0..in_dim * classes).map(|_| rng.gen_range(-limit..limit) as f32).collect();
        Self::from_tensors(
            Tensor::from_vec(w, (in_dim, classes), device)?,
            Tensor::zeros(classes, DType::F32, device)?,
            dropout,
        )
    }

    pub fn from_tensors(kernel: Tensor, bias: Tensor, dropout: f32) -> Result<Self> {
        Ok(Self { kernel: Var::from_tensor(&kernel)?, bias: Var::from_tensor(&bias)?, dropout })
    }

    pub fn classes(&self) -> usize {
        self.bias.dim(0).unwrap_or(0)
    }

    /// Inference: (B, in) -> (B, k) logits.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Detached: the head's backward is written out, no autograd graph needed.
        x.matmul(&self.kernel.as_tensor().detach())?.broadcast_add(&self.bias.as_tensor().detach())
    }

    /// Training forward with inverted dropout drawn from `rng`.
    pub fn forward_train(&self, x: &Tensor, rng: &mut impl Rng) -> Result<(Tensor, HeadTape)> {
        let mask = if self.dropout > 0.0 {
            let keep = 1.0 - self.dropout;
            let m: Vec<f32> = (0..x.elem_count()).map(|_| if rng.gen::<f32>() < keep { 1.0 / keep } else { 0.0 }).collect();
            Some(Tensor::from_vec(m, x.shape(), x.device())?)
        } else {
            None
        };
        let xd = match &mask {
            Some(m) => (x * m)?,
            None => x.clone(),
        };
        let logits = self.forward(&xd)?;
        Ok((logits, HeadTape { x: xd, mask }))
    }

    /// (dkernel, dbias, dx) from dL/dlogits.
    pub fn backward(&self, tape: &HeadTape, dlogits: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let dk = tape.x.t()?.matmul(dlogits)?;
        let db = dlogits.sum(0)?;
        let mut dx = dlogits.matmul(&self.kernel.as_tensor().detach().t()?)?;
        if let Some(m) = &tape.mask {
            dx = (dx * m)?;
        }
        Ok((dk, db, dx))
    }
}
