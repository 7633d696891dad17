//! Losses on logits with their gradients, numerically stable for any logit.

use candle_core::{Result, Tensor};

/// Mean binary cross-entropy from logits (B,1) against 0/1 labels, and dL/dlogits.
/// Uses max(z,0) - z*y + log(1 + exp(-|z|)), which never overflows.
pub fn bce_with_logits(logits: &Tensor, labels: &[u32]) -> Result<(f64, Tensor)> {
    let z = logits.flatten_all()?.to_vec1::<f32>()?;
    let n = z.len().max(1) as f64;
    let mut loss = 0.0;
    let mut grad = Vec::with_capacity(z.len());
    for (zi, yi) in z.iter().zip(labels) {
        let (z, y) = (*zi as f64, *yi as f64);
        loss += z.max(0.0) - z * y + (-z.abs()).exp().ln_1p();
        grad.push(((sigmoid(z) - y) / n) as f32);
    }
    Ok((loss / n, Tensor::from_vec(grad, logits.shape(), logits.device())?))
}

/// Mean softmax cross-entropy from logits (B,k) against class indices, and dL/dlogits.
pub fn softmax_cross_entropy(logits: &Tensor, labels: &[u32]) -> Result<(f64, Tensor)> {
    let (b, k) = logits.dims2()?;
    let z = logits.to_vec2::<f32>()?;
    let n = b.max(1) as f64;
    let mut loss = 0.0;
    let mut grad = Vec::with_capacity(b * k);
    for (row, y) in z.iter().zip(labels) {
        let max = row.iter().fold(f32::NEG_INFINITY, |a, v| a.max(*v)) as f64;
        let sum: f64 = row.iter().map(|v| (*v as f64 - max).exp()).sum();
        let log_sum = max + sum.ln();
        loss += log_sum - row[*y as usize] as f64;
        for (j, v) in row.iter().enumerate() {
            let p = (*v as f64 - log_sum).exp();
            grad.push(((p - if j == *y as usize { 1.0 } else { 0.0 }) / n) as f32);
        }
    }
    Ok((loss / n, Tensor::from_vec(grad, (b, k), logits.device())?))
}

/// The loss of the head's output kind: BCE for one logit, softmax CE otherwise.
pub fn loss_and_grad(logits: &Tensor, labels: &[u32]) -> Result<(f64, Tensor)> {
    if logits.dim(1)? == 1 {
        bce_with_logits(logits, labels)
    } else {
        softmax_cross_entropy(logits, labels)
    }
}

/// Predicted class per row: logit > 0 for a single logit (probability 0.5), else argmax.
pub fn predicted(logits: &Tensor) -> Result<Vec<u32>> {
    let rows = logits.to_vec2::<f32>()?;
    Ok(rows
        .iter()
        .map(|r| {
            if r.len() == 1 {
                (r[0] > 0.0) as u32
            } else {
                r.iter().enumerate().fold((0, f32::NEG_INFINITY), |a, (i, v)| if *v > a.1 { (i, *v) } else { a }).0 as u32
            }
        })
        .collect())
}

/// Class probabilities per row: [1-p, p] from a single logit, softmax otherwise.
pub fn probabilities(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    let rows = logits.to_vec2::<f32>()?;
    Ok(rows
        .iter()
        .map(|r| {
            if r.len() == 1 {
                let p = sigmoid(r[0] as f64) as f32;
                vec![1.0 - p, p]
            } else {
                let max = r.iter().fold(f32::NEG_INFINITY, |a, v| a.max(*v));
                let e: Vec<f32> = r.iter().map(|v| (v - max).exp()).collect();
                let s: f32 = e.iter().sum();
                e.iter().map(|v| v / s).collect()
            }
        })
        .collect())
}

pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn bce_is_finite_for_huge_logits_and_matches_formula() {
        let z = Tensor::new(&[[1000f32], [-1000.0], [0.5]], &Device::Cpu).unwrap();
        let (l, g) = bce_with_logits(&z, &[0, 1, 1]).unwrap();
        let expected = (1000.0 + 1000.0 + (1.0 + (-0.5f64).exp()).ln()) / 3.0;
        assert!((l - expected).abs() < 1e-9, "{l} vs {expected}");
        let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(g.iter().all(|v| v.is_finite()));
        assert!((g[0] - 1.0 / 3.0).abs() < 1e-6 && (g[1] + 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let dev = Device::Cpu;
        for (k, labels) in [(1usize, vec![1u32, 0]), (3, vec![2, 0])] {
            let base = vec![0.3f32, -1.2, 2.0, 0.1, -0.4, 0.7];
            let z = Tensor::from_vec(base[..2 * k].to_vec(), (2, k), &dev).unwrap();
            let (_, g) = loss_and_grad(&z, &labels).unwrap();
            let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for j in 0..2 * k {
                let f = |d: f32| {
                    let mut v = base[..2 * k].to_vec();
                    v[j] += d;
                    loss_and_grad(&Tensor::from_vec(v, (2, k), &dev).unwrap(), &labels).unwrap().0
                };
                let num = (f(1e-3) - f(-1e-3)) / 2e-3;
                assert!((num - g[j] as f64).abs() < 1e-4, "k={k} j={j}: {num} vs {}", g[j]);
            }
        }
    }
}
