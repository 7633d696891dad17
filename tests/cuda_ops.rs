//! CUDA kernels of the custom ops against the CPU ops, and the tiny networks'
//! forward + hand-written backward on the GPU against the CPU.
//! Built only with `--features cuda`; without a GPU each test says so and
//! passes, unless TUNESERVE_REQUIRE_GPU=1 (set it on GPU machines).
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use tuneserve::model::{Backbone, BackboneKind, Precision, SeededInit, Variant};
use tuneserve::ops::{self, Act, Geom};

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            assert!(std::env::var_os("TUNESERVE_REQUIRE_GPU").is_none(), "no CUDA device: {e}");
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// Max |a-b| over max(1, max |a|); both tensors are brought to the CPU as f64.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = b.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let scale = a.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    a.iter().zip(&b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn close(what: &str, cpu: &Tensor, gpu: &Tensor, tol: f64) {
    let d = rel_diff(cpu, gpu);
    eprintln!("{what}: rel max diff {d:.3e}");
    assert!(d <= tol, "{what}: GPU differs from CPU by {d:e} (tol {tol:e})");
}

fn randn(shape: &[usize], dtype: DType) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

/// Values in {0,1,2,3}: plenty of exact ties inside pooling windows.
fn ties(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| ((i * 7919 + i / 3) % 4) as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn geoms() -> Vec<Geom> {
    vec![
        Geom::same(9, 11, 3, 1),
        Geom::same(9, 9, 3, 2),  // pads 1 and 1
        Geom::same(8, 10, 3, 2), // odd padding at the bottom/right only
        Geom::valid(15, 13, 3, 2),
        Geom::same(9, 9, 1, 2),
        Geom::same(7, 7, 5, 1),
        Geom::same(37, 37, 3, 2),
    ]
}

const TOL: f64 = 1e-5;

fn check_window_ops(dev: &Device, dtype: DType) {
    let (c, b) = (5, 3);
    for g in geoms() {
        let x = randn(&[c, b, g.in_h, g.in_w], dtype);
        let k = randn(&[c, g.k * g.k], dtype);
        let dy = randn(&[c, b, g.out_h, g.out_w], dtype);
        let (xg, kg, dyg) = (x.to_device(dev).unwrap(), k.to_device(dev).unwrap(), dy.to_device(dev).unwrap());
        let tag = format!("{dtype:?} {g:?}");
        close(&format!("depthwise {tag}"), &ops::depthwise(&x, &k, g).unwrap(), &ops::depthwise(&xg, &kg, g).unwrap(), TOL);
        close(
            &format!("depthwise_input_grad {tag}"),
            &ops::depthwise_input_grad(&dy, &k, g).unwrap(),
            &ops::depthwise_input_grad(&dyg, &kg, g).unwrap(),
            TOL,
        );
        close(
            &format!("depthwise_kernel_grad {tag}"),
            &ops::depthwise_kernel_grad(&x, &dy, g).unwrap(),
            &ops::depthwise_kernel_grad(&xg, &dyg, g).unwrap(),
            TOL,
        );
        let cols = ops::im2col(&x, g).unwrap();
        close(&format!("im2col {tag}"), &cols, &ops::im2col(&xg, g).unwrap(), 0.0);
        close(&format!("col2im {tag}"), &ops::col2im(&cols, g).unwrap(), &ops::col2im(&cols.to_device(dev).unwrap(), g).unwrap(), TOL);
        close(&format!("max_pool {tag}"), &ops::max_pool(&x, g).unwrap(), &ops::max_pool(&xg, g).unwrap(), 0.0);
        close(
            &format!("max_pool_grad {tag}"),
            &ops::max_pool_grad(&x, &dy, g).unwrap(),
            &ops::max_pool_grad(&xg, &dyg, g).unwrap(),
            TOL,
        );
    }
}

#[test]
fn window_ops_match_cpu_f32() {
    let Some(dev) = gpu() else { return };
    check_window_ops(&dev, DType::F32);
}

#[test]
fn window_ops_match_cpu_f64() {
    let Some(dev) = gpu() else { return };
    check_window_ops(&dev, DType::F64);
}

#[test]
fn max_pool_grad_ties_go_to_the_first_maximum() {
    let Some(dev) = gpu() else { return };
    for g in [Geom::same(9, 9, 3, 2), Geom::same(8, 8, 3, 2), Geom::same(6, 7, 3, 1)] {
        let x = ties(&[4, 2, g.in_h, g.in_w]);
        let dy = randn(&[4, 2, g.out_h, g.out_w], DType::F32);
        let cpu = ops::max_pool_grad(&x, &dy, g).unwrap();
        let gpu = ops::max_pool_grad(&x.to_device(&dev).unwrap(), &dy.to_device(&dev).unwrap(), g).unwrap();
        // Same windows, same summation order: bit-identical.
        close(&format!("max_pool_grad ties {g:?}"), &cpu, &gpu, 0.0);
    }
}

#[test]
fn elementwise_ops_match_cpu() {
    let Some(dev) = gpu() else { return };
    for dtype in [DType::F32, DType::F64] {
        let (c, n) = (7, 3 * 41 * 29);
        let x = (randn(&[c, 3, 41, 29], dtype) * 4.0).unwrap();
        let scale = randn(&[c], dtype);
        let shift = randn(&[c], dtype);
        let dy = randn(&[c, 3, 41, 29], dtype);
        let (xg, sg, tg, dyg) = (x.to_device(&dev).unwrap(), scale.to_device(&dev).unwrap(), shift.to_device(&dev).unwrap(), dy.to_device(&dev).unwrap());
        assert_eq!(n * c, x.elem_count());
        for a in [None, Some(Act::Relu), Some(Act::Relu6)] {
            let tag = format!("{dtype:?} {a:?}");
            let y = ops::affine_act(&x, &scale, &shift, a).unwrap();
            let yg = ops::affine_act(&xg, &sg, &tg, a).unwrap();
            close(&format!("affine_act {tag}"), &y, &yg, TOL);
            // The masks must agree exactly, so feed both sides the CPU output.
            let yc = y.to_device(&dev).unwrap();
            close(
                &format!("affine_act_input_grad {tag}"),
                &ops::affine_act_input_grad(&y, &dy, &scale, a).unwrap(),
                &ops::affine_act_input_grad(&yc, &dyg, &sg, a).unwrap(),
                TOL,
            );
            let (ds, dt) = ops::affine_act_param_grad(&x, &y, &dy, a).unwrap();
            let (dsg, dtg) = ops::affine_act_param_grad(&xg, &yc, &dyg, a).unwrap();
            close(&format!("affine_act_param_grad scale {tag}"), &ds, &dsg, TOL);
            close(&format!("affine_act_param_grad shift {tag}"), &dt, &dtg, TOL);
            if let Some(a) = a {
                let y = ops::act(&x, a).unwrap();
                close(&format!("act {tag}"), &y, &ops::act(&xg, a).unwrap(), 0.0);
                close(
                    &format!("act_grad {tag}"),
                    &ops::act_grad(&y, &dy, a).unwrap(),
                    &ops::act_grad(&y.to_device(&dev).unwrap(), &dyg, a).unwrap(),
                    0.0,
                );
            }
        }
        // A long channel (several reduction blocks) for the param-grad partial sums.
        let x = randn(&[3, 70_000], dtype);
        let dy = randn(&[3, 70_000], dtype);
        let (ds, _) = ops::affine_act_param_grad(&x, &x, &dy, None).unwrap();
        let (dsg, _) = ops::affine_act_param_grad(&x.to_device(&dev).unwrap(), &x.to_device(&dev).unwrap(), &dy.to_device(&dev).unwrap(), None).unwrap();
        close(&format!("affine_act_param_grad long {dtype:?}"), &ds, &dsg, 1e-4);
    }
}

/// Tiny network on CPU and GPU from the same seeded weights: features and
/// every gradient of the hand-written backward agree.
fn network_matches(kind: BackboneKind, size: usize) {
    let Some(dev) = gpu() else { return };
    let build = |d: &Device| Backbone::build(kind, Variant::Tiny, &SeededInit { seed: 7, device: d.clone() }, true, Precision::F32, d).unwrap();
    let (cpu, gpu) = (build(&Device::Cpu), build(&dev));
    let x = Tensor::randn(0f32, 1.0, (3, size, size, 3), &Device::Cpu).unwrap();
    // Inference (the CPU fuses BatchNorm into the following depthwise here; the GPU does not).
    let (ic, ig) = (cpu.features(&x).unwrap(), gpu.features(&x.to_device(&dev).unwrap()).unwrap());
    close(&format!("{kind:?} inference features"), &ic, &ig, 1e-4);
    let (fc, tc) = cpu.forward_train(&x).unwrap();
    let (fg, tg) = gpu.forward_train(&x.to_device(&dev).unwrap()).unwrap();
    close(&format!("{kind:?} features"), &fc, &fg, 1e-4);
    let w = Tensor::randn(0f32, 1.0, fc.dims(), &Device::Cpu).unwrap();
    let gc = cpu.backward(tc, &w).unwrap();
    let gg = gpu.backward(tg, &w.to_device(&dev).unwrap()).unwrap();
    let mut checked = 0;
    for (i, p) in cpu.net.trainable() {
        let (a, b) = (gc.0[i].as_ref().unwrap(), gg.0[i].as_ref().unwrap());
        let d = rel_diff(a, b);
        assert!(d <= 1e-3, "{kind:?} {}: GPU grad differs by {d:e}", p.name);
        checked += 1;
    }
    eprintln!("{kind:?}: {checked} gradients match");
    assert!(checked > 20);
}

#[test]
fn tiny_xception_forward_backward_match_cpu() {
    network_matches(BackboneKind::Xception, 71);
}

#[test]
fn tiny_mobilenet_v2_forward_backward_match_cpu() {
    network_matches(BackboneKind::MobilenetV2, 64);
}

#[test]
fn fused_adam_on_gpu_matches_cpu_adam() {
    use tuneserve::train::adam::Adam;
    let Some(dev) = gpu() else { return };
    let init = randn(&[3, 5, 7], DType::F32);
    let (vc, vg) = (candle_core::Var::from_tensor(&init).unwrap(), candle_core::Var::from_tensor(&init.to_device(&dev).unwrap()).unwrap());
    let (mut oc, mut og) = (Adam::new(1e-2), Adam::new(1e-2));
    for step in 0..4 {
        let g = randn(&[3, 5, 7], DType::F32);
        oc.update([("w", &vc, &g)]).unwrap();
        og.update([("w", &vg, &g.to_device(&dev).unwrap())]).unwrap();
        close(&format!("adam var after step {step}"), vc.as_tensor(), vg.as_tensor(), 1e-6);
    }
    let (sc, sg) = (oc.state().unwrap(), og.state().unwrap());
    assert_eq!(sc.len(), sg.len());
    for ((nc, tc), (ng, tg)) in sc.iter().zip(&sg) {
        assert_eq!(nc, ng);
        close(&format!("adam state {nc}"), tc, tg, 1e-6);
    }
    // A restored state continues on the GPU like on the CPU.
    let map: std::collections::HashMap<String, Tensor> = sc.into_iter().collect();
    let mut og2 = Adam::restore(1e-2, oc.step, &map).unwrap();
    let vg2 = candle_core::Var::from_tensor(&vc.as_tensor().to_device(&dev).unwrap()).unwrap();
    let g = randn(&[3, 5, 7], DType::F32);
    oc.update([("w", &vc, &g)]).unwrap();
    og2.update([("w", &vg2, &g.to_device(&dev).unwrap())]).unwrap();
    close("adam var after restore", vc.as_tensor(), vg2.as_tensor(), 1e-6);
}

#[test]
fn fused_pre_affine_depthwise_matches_cpu() {
    let Some(dev) = gpu() else { return };
    let c = 6;
    for g in [Geom::same(9, 11, 3, 1), Geom::same(8, 10, 3, 2), Geom::valid(15, 13, 3, 2), Geom::same(7, 7, 5, 1)] {
        let x = randn(&[c, 3, g.in_h, g.in_w], DType::F32);
        let k = randn(&[c, g.k * g.k], DType::F32);
        let (xg, kg) = (x.to_device(&dev).unwrap(), k.to_device(&dev).unwrap());
        for act in [None, Some(Act::Relu), Some(Act::Relu6)] {
            let scale: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.7).collect();
            let shift: Vec<f32> = (0..c).map(|i| i as f32 * 0.3 - 0.8).collect();
            let pre = ops::ChannelAffine { scale, shift, act };
            close(
                &format!("depthwise_fused {act:?} {g:?}"),
                &ops::depthwise_fused(&x, &k, g, Some(pre.clone()), None).unwrap(),
                &ops::depthwise_fused(&xg, &kg, g, Some(pre), None).unwrap(),
                TOL,
            );
        }
    }
}

/// The fused step's CPU instance (same expression as the kernel) against
/// `train::Adam`'s CPU path, bit for bit: runs without a GPU.
#[test]
fn fused_adam_arithmetic_is_the_cpu_adams() {
    use tuneserve::train::adam::{Adam, BETA1, BETA2, EPSILON};
    let init = randn(&[4, 9], DType::F32);
    let var = candle_core::Var::from_tensor(&init).unwrap();
    let mut opt = Adam::new(1e-2);
    let mut p = init.flatten_all().unwrap();
    let mut mv = Tensor::zeros((2, 36), DType::F32, &Device::Cpu).unwrap();
    for t in 1..=3 {
        let g = randn(&[4, 9], DType::F32);
        opt.update([("w", &var, &g)]).unwrap();
        let alpha = 1e-2 * (1.0 - BETA2.powi(t)).sqrt() / (1.0 - BETA1.powi(t));
        let out = ops::adam_step(&p, &g, &mv, BETA1, BETA2, alpha, EPSILON).unwrap();
        p = out.get(0).unwrap();
        mv = out.narrow(0, 1, 2).unwrap().contiguous().unwrap();
        close(&format!("fused adam (cpu instance) step {t}"), &var.as_tensor().flatten_all().unwrap(), &p, 0.0);
    }
}
