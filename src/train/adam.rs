//! Adam with Keras semantics (epsilon added outside the square root, bias
//! correction folded into the step size), state kept so checkpoints can save
//! and restore it: resuming continues the same trajectory.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor, Var};

pub const BETA1: f64 = 0.9;
pub const BETA2: f64 = 0.999;
pub const EPSILON: f64 = 1e-7;

pub struct Adam {
    pub lr: f64,
    /// Number of updates done so far (Keras's `iterations`).
    pub step: u64,
    moments: BTreeMap<String, (Tensor, Tensor)>,
    /// Parameters on a CUDA device: [m; v] packed as (2, n) plus the
    /// parameter's shape, updated by one fused kernel (`ops::adam_step`).
    #[cfg(feature = "cuda")]
    packed: BTreeMap<String, (Tensor, candle_core::Shape)>,
}

impl Adam {
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            step: 0,
            moments: BTreeMap::new(),
            #[cfg(feature = "cuda")]
            packed: BTreeMap::new(),
        }
    }

    /// One update of every (name, var, grad):
    /// m += (g - m)(1-b1); v += (g^2 - v)(1-b2); var -= alpha * m / (sqrt(v) + eps),
    /// alpha = lr * sqrt(1 - b2^t) / (1 - b1^t).
    pub fn update<'a>(&mut self, params: impl IntoIterator<Item = (&'a str, &'a Var, &'a Tensor)>) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let alpha = self.lr * (1.0 - BETA2.powi(t)).sqrt() / (1.0 - BETA1.powi(t));
        for (name, var, g) in params {
            if var.device().is_cpu() {
                self.update_cpu(name, var, g, alpha)?;
                continue;
            }
            #[cfg(feature = "cuda")]
            if var.device().is_cuda() {
                self.update_packed(name, var, g, alpha)?;
                continue;
            }
            let (m, v) = match self.moments.remove(name) {
                Some(mv) => mv,
                None => (var.zeros_like()?, var.zeros_like()?),
            };
            let m = ((m * BETA1)? + (g * (1.0 - BETA1))?)?;
            let v = ((v * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
            let delta = ((&m * alpha)? / (v.sqrt()? + EPSILON)?)?;
            var.set(&var.as_tensor().detach().sub(&delta)?)?;
            self.moments.insert(name.to_string(), (m, v));
        }
        Ok(())
    }

    /// The CPU path's update (`update_cpu`), in one kernel per parameter.
    #[cfg(feature = "cuda")]
    fn update_packed(&mut self, name: &str, var: &Var, g: &Tensor, alpha: f64) -> Result<()> {
        let mv = match self.packed.remove(name) {
            Some((mv, _)) => mv,
            // Restored from a checkpoint: pack once.
            None => match self.moments.remove(name) {
                Some((m, v)) => Tensor::stack(&[m.flatten_all()?, v.flatten_all()?], 0)?.to_device(var.device())?,
                None => Tensor::zeros((2, var.elem_count()), var.dtype(), var.device())?,
            },
        };
        let out = crate::ops::adam_step(var.as_tensor(), g, &mv, BETA1, BETA2, alpha, EPSILON)?;
        var.set(&out.get(0)?.reshape(var.shape())?)?;
        self.packed.insert(name.to_string(), (out.narrow(0, 1, 2)?, var.shape().clone()));
        Ok(())
    }

    /// The same update in one pass over plain buffers (the generic version
    /// allocates a new tensor for each of its ten or so elementwise steps).
    fn update_cpu(&mut self, name: &str, var: &Var, g: &Tensor, alpha: f64) -> Result<()> {
        let (m, v) = match self.moments.remove(name) {
            Some(mv) => mv,
            None => (var.zeros_like()?, var.zeros_like()?),
        };
        let shape = var.shape().clone();
        let mut p = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let mut m = m.flatten_all()?.to_vec1::<f32>()?;
        let mut v = v.flatten_all()?.to_vec1::<f32>()?;
        let g = g.flatten_all()?.to_vec1::<f32>()?;
        if g.len() != p.len() {
            candle_core::bail!("gradient of {name} has {} values for {} parameters", g.len(), p.len());
        }
        let (b1, b2, a, eps) = (BETA1 as f32, BETA2 as f32, alpha as f32, EPSILON as f32);
        use rayon::prelude::*;
        p.par_chunks_mut(1 << 14)
            .zip(m.par_chunks_mut(1 << 14))
            .zip(v.par_chunks_mut(1 << 14))
            .zip(g.par_chunks(1 << 14))
            .for_each(|(((p, m), v), g)| {
                for i in 0..p.len() {
                    m[i] += (g[i] - m[i]) * (1.0 - b1);
                    v[i] += (g[i] * g[i] - v[i]) * (1.0 - b2);
                    p[i] -= a * m[i] / (v[i].sqrt() + eps);
                }
            });
        let dev = var.device().clone();
        var.set(&Tensor::from_vec(p, shape.clone(), &dev)?)?;
        let m = Tensor::from_vec(m, shape.clone(), &dev)?;
        let v = Tensor::from_vec(v, shape, &dev)?;
        self.moments.insert(name.to_string(), (m, v));
        Ok(())
    }

    /// State as named tensors (`m/<name>`, `v/<name>`) for a checkpoint.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        #[allow(unused_mut)]
        let mut state: Vec<(String, Tensor)> = self
            .moments
            .iter()
            .flat_map(|(n, (m, v))| [(format!("m/{n}"), m.clone()), (format!("v/{n}"), v.clone())])
            .collect();
        #[cfg(feature = "cuda")]
        for (n, (mv, shape)) in &self.packed {
            state.push((format!("m/{n}"), mv.get(0)?.reshape(shape)?));
            state.push((format!("v/{n}"), mv.get(1)?.reshape(shape)?));
        }
        Ok(state)
    }

    pub fn restore(lr: f64, step: u64, state: &std::collections::HashMap<String, Tensor>) -> Result<Self> {
        let mut moments = BTreeMap::new();
        for (k, m) in state {
            if let Some(name) = k.strip_prefix("m/") {
                let v = state
                    .get(&format!("v/{name}"))
                    .ok_or_else(|| candle_core::Error::Msg(format!("optimizer state has m/{name} without v/{name}")))?;
                moments.insert(name.to_string(), (m.clone(), v.clone()));
            }
        }
        Ok(Self {
            lr,
            step,
            moments,
            #[cfg(feature = "cuda")]
            packed: BTreeMap::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_keras_adam_by_hand() {
        // Keras Adam(1e-3) on f(x) = x^2 from x = 1: two steps computed by hand.
        let x = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let mut opt = Adam::new(1e-3);
        let mut xs = vec![];
        for _ in 0..2 {
            let g = (x.as_tensor() * 2.0).unwrap();
            opt.update([("x", &x, &g)]).unwrap();
            xs.push(x.as_tensor().to_vec1::<f32>().unwrap()[0] as f64);
        }
        // step 1: m=0.2, v=0.004, alpha=1e-3*sqrt(0.001)/0.1 -> x -= alpha*0.2/(sqrt(0.004)+1e-7)
        let a1 = 1e-3 * (1.0f64 - 0.999).sqrt() / (1.0 - 0.9);
        let x1 = 1.0 - a1 * 0.2 / (0.004f64.sqrt() + 1e-7);
        assert!((xs[0] - x1).abs() < 1e-6, "{} vs {x1}", xs[0]);
        let g2 = 2.0 * x1;
        let (m2, v2) = (0.2 * 0.9 + 0.1 * g2, 0.004 * 0.999 + 0.001 * g2 * g2);
        let a2 = 1e-3 * (1.0f64 - 0.999f64.powi(2)).sqrt() / (1.0 - 0.9f64.powi(2));
        let x2 = x1 - a2 * m2 / (v2.sqrt() + 1e-7);
        assert!((xs[1] - x2).abs() < 1e-6, "{} vs {x2}", xs[1]);
    }
}
