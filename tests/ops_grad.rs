//! Every custom op: gradients against central finite differences in f64, and
//! forward/backward against plain Candle ops where Candle has an equivalent.

use candle_core::{DType, Device, Tensor, Var};
use tuneserve::ops::{self, Act, Geom};

fn rand(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| r.gen_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// Checks d(sum(f(inputs) * w))/d(inputs) from autograd against central
/// differences, for every element of every input.
fn grad_check(inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Tensor) {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts);
    let w = rand(out.dims(), 99);
    let loss = (out * &w).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let eps = 1e-6;
    for (i, v) in vars.iter().enumerate() {
        let g = to_vec(grads.get(v).expect("no gradient"));
        let base = to_vec(v.as_tensor());
        for j in 0..base.len() {
            let eval = |delta: f64| {
                let mut p = base.clone();
                p[j] += delta;
                let mut args = inputs.to_vec();
                args[i] = Tensor::from_vec(p, inputs[i].dims(), &Device::Cpu).unwrap();
                (f(&args) * &w).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
            };
            let num = (eval(eps) - eval(-eps)) / (2.0 * eps);
            assert!((num - g[j]).abs() <= 1e-6 * (1.0 + num.abs()), "input {i} elem {j}: autograd {} vs numeric {num}", g[j]);
        }
    }
}

fn close(a: &Tensor, b: &Tensor, tol: f64) {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    assert!(d <= tol, "max diff {d} > {tol}");
}

/// (C,B,H,W) <-> (B,C,H,W) for comparing with Candle's NCHW convolutions.
fn swap01(t: &Tensor) -> Tensor {
    t.transpose(0, 1).unwrap().contiguous().unwrap()
}

#[test]
fn depthwise_gradients_match_finite_differences() {
    for (h, w, stride) in [(5, 6, 1), (7, 6, 2), (4, 4, 2)] {
        let g = Geom::same(h, w, 3, stride);
        grad_check(&[rand(&[3, 2, h, w], 1), rand(&[3, 9], 2)], &|a| ops::depthwise(&a[0], &a[1], g).unwrap());
    }
    // 'valid' padding and a 5x5 window take the same stride-1 fast path.
    let g = Geom::valid(6, 7, 3, 1);
    grad_check(&[rand(&[2, 2, 6, 7], 3), rand(&[2, 9], 4)], &|a| ops::depthwise(&a[0], &a[1], g).unwrap());
    let g = Geom::same(7, 6, 5, 1);
    grad_check(&[rand(&[2, 2, 7, 6], 5), rand(&[2, 25], 6)], &|a| ops::depthwise(&a[0], &a[1], g).unwrap());
}

#[test]
fn depthwise_matches_candle_grouped_conv() {
    let (c, b, h, w) = (4, 2, 9, 9);
    let x = rand(&[c, b, h, w], 3);
    let k = rand(&[c, 9], 4);
    let ours = ops::depthwise(&x, &k, Geom::same(h, w, 3, 1)).unwrap();
    let reference = swap01(&x).conv2d(&k.reshape((c, 1, 3, 3)).unwrap(), 1, 1, 1, c).unwrap();
    close(&ours, &swap01(&reference), 1e-12);
    // Gradients too, through Candle's own autograd of the grouped conv.
    let (xv, kv) = (candle_core::Var::from_tensor(&x).unwrap(), candle_core::Var::from_tensor(&k).unwrap());
    let wgt = rand(&[c, b, h, w], 5);
    let ours = ops::depthwise(xv.as_tensor(), kv.as_tensor(), Geom::same(h, w, 3, 1)).unwrap();
    let g1 = (ours * &wgt).unwrap().sum_all().unwrap().backward().unwrap();
    let theirs = swap01(xv.as_tensor()).conv2d(&kv.as_tensor().reshape((c, 1, 3, 3)).unwrap(), 1, 1, 1, c).unwrap();
    let g2 = (swap01(&theirs) * &wgt).unwrap().sum_all().unwrap().backward().unwrap();
    close(g1.get(&xv).unwrap(), g2.get(&xv).unwrap(), 1e-10);
    close(g1.get(&kv).unwrap(), g2.get(&kv).unwrap(), 1e-10);
}

/// The kernel gradient against im2col's columns times dy, with planes many
/// and large enough that a channel's planes are summed in several groups
/// (30x30: three of 6 planes at a time; 9x9 with 5x5 windows; 'valid'), and
/// at stride 2.
#[test]
fn depthwise_kernel_grad_matches_im2col_over_many_planes() {
    for (h, w, k, stride, same, b) in [(30, 30, 3, 1, true, 6), (9, 9, 5, 1, true, 32), (12, 11, 3, 1, false, 5), (31, 30, 3, 1, true, 1), (10, 9, 3, 2, true, 4)] {
        let g = if same { Geom::same(h, w, k, stride) } else { Geom::valid(h, w, k, stride) };
        let c = 2;
        let x = rand(&[c, b, h, w], 31);
        let dy = rand(&[c, b, g.out_h, g.out_w], 32);
        let ours = ops::depthwise_kernel_grad(&x, &dy, g).unwrap();
        let cols = ops::im2col(&x, g).unwrap().reshape((c, k * k, b * g.out_h * g.out_w)).unwrap();
        let reference = cols.matmul(&dy.reshape((c, b * g.out_h * g.out_w, 1)).unwrap()).unwrap().reshape((c, k * k)).unwrap();
        close(&ours, &reference, 1e-11);
    }
}

/// The forward at every stride and padding the networks use (and a few they
/// don't, down to one-pixel rows and columns) against a product with
/// im2col's columns, itself checked against Candle's conv2d and finite
/// differences.
#[test]
fn depthwise_matches_im2col_at_any_stride_and_padding() {
    let cases = [(9, 9, 3, 1, true), (9, 8, 3, 2, true), (10, 10, 3, 2, true), (11, 7, 5, 2, true), (10, 10, 3, 2, false), (12, 13, 5, 3, true), (7, 7, 3, 3, false), (2, 3, 3, 2, true), (1, 4, 3, 1, true), (3, 1, 3, 1, true), (1, 1, 3, 1, true)];
    for (h, w, k, stride, same) in cases {
        let g = if same { Geom::same(h, w, k, stride) } else { Geom::valid(h, w, k, stride) };
        let (c, b) = (3, 2);
        let x = rand(&[c, b, h, w], 21);
        let kern = rand(&[c, k * k], 22);
        let ours = ops::depthwise(&x, &kern, g).unwrap();
        // cols: (C*K*K, B*oh*ow); channel c's output is its K*K rows weighted by its taps.
        let cols = ops::im2col(&x, g).unwrap().reshape((c, k * k, b * g.out_h * g.out_w)).unwrap();
        let reference = kern.unsqueeze(1).unwrap().matmul(&cols).unwrap().reshape((c, b, g.out_h, g.out_w)).unwrap();
        close(&ours, &reference, 1e-12);
    }
}

/// Inference's fused depthwise (BatchNorm + activation on its input, and on
/// its output) equals the three ops one after another, bit for bit.
#[test]
fn fused_depthwise_equals_the_separate_ops() {
    let affine = |c: usize, seed: u64, act: Option<Act>| {
        let s = rand(&[c], seed).to_dtype(DType::F32).unwrap();
        let t = rand(&[c], seed + 1).to_dtype(DType::F32).unwrap();
        let host = ops::ChannelAffine { scale: s.to_vec1().unwrap(), shift: t.to_vec1().unwrap(), act };
        (s, t, host)
    };
    for (h, w, stride) in [(9, 9, 1), (10, 10, 2), (9, 8, 2)] {
        let g = Geom::same(h, w, 3, stride);
        let c = 4;
        let x = rand(&[c, 2, h, w], 31).to_dtype(DType::F32).unwrap();
        let kern = rand(&[c, 9], 32).to_dtype(DType::F32).unwrap();
        let (ps, pt, pre) = affine(c, 33, Some(Act::Relu));
        let (qs, qt, post) = affine(c, 35, Some(Act::Relu6));
        let separate = ops::affine_act(&ops::depthwise(&ops::affine_act(&x, &ps, &pt, pre.act).unwrap(), &kern, g).unwrap(), &qs, &qt, post.act).unwrap();
        let fused = ops::depthwise_fused(&x, &kern, g, Some(pre.clone()), Some(post.clone())).unwrap();
        let only_post = ops::depthwise_fused(&ops::affine_act(&x, &ps, &pt, pre.act).unwrap(), &kern, g, None, Some(post)).unwrap();
        for (name, t) in [("pre and post", &fused), ("post only", &only_post)] {
            let (a, b) = (t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), separate.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            assert!(a.iter().any(|v| *v != 0.0), "all-zero output proves nothing");
            assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "{name}, stride {stride}: fused differs from the separate ops");
        }
    }
}

/// The end of a residual block in one pass (each branch's closing BatchNorm,
/// where it has one, then the add) equals the ops one after another, bit for
/// bit, in all four combinations of BatchNorms.
#[test]
fn residual_add_equals_the_separate_ops() {
    let c = 3;
    let x = rand(&[c, 2, 5, 7], 41).to_dtype(DType::F32).unwrap();
    let r = rand(&[c, 2, 5, 7], 42).to_dtype(DType::F32).unwrap();
    let bn = |seed: u64| {
        let s = rand(&[c], seed).to_dtype(DType::F32).unwrap();
        let t = rand(&[c], seed + 1).to_dtype(DType::F32).unwrap();
        let host = ops::ChannelAffine { scale: s.to_vec1().unwrap(), shift: t.to_vec1().unwrap(), act: None };
        (ops::affine_act(if seed == 43 { &x } else { &r }, &s, &t, None).unwrap(), host)
    };
    let ((xm, main), (rs, shortcut)) = (bn(43), bn(45));
    let cases = [
        ("plain", None, None, (&x + &r).unwrap()),
        ("main BatchNorm", Some(main.clone()), None, (&xm + &r).unwrap()),
        ("shortcut BatchNorm", None, Some(shortcut.clone()), (&x + &rs).unwrap()),
        ("both BatchNorms", Some(main), Some(shortcut), (&xm + &rs).unwrap()),
    ];
    for (name, m, sc, separate) in cases {
        let fused = ops::residual_affine_add(&x, m, &r, sc).unwrap();
        assert_eq!(fused.dims(), separate.dims());
        let (a, b) = (fused.flatten_all().unwrap().to_vec1::<f32>().unwrap(), separate.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "{name}: fused differs from the separate ops");
    }
    let with_act = ops::ChannelAffine { scale: vec![1.0; c], shift: vec![0.0; c], act: Some(Act::Relu) };
    assert!(ops::residual_affine_add(&x, Some(with_act), &r, None).is_err(), "an activation before the add must be refused");
}

/// Inference's fused 1x1 expansion + BatchNorm + depthwise + BatchNorm
/// equals the ops one after another (computed in f64), at both strides, with
/// channel counts that leave a partial block of 8 and planes whose pixel
/// count is not a multiple of the 16-pixel vector step.
#[test]
fn fused_expansion_equals_the_separate_ops() {
    let affine = |c: usize, seed: u64, act: Option<Act>| {
        let (s, t) = (rand(&[c], seed), rand(&[c], seed + 1));
        let host = ops::ChannelAffine { scale: s.to_dtype(DType::F32).unwrap().to_vec1().unwrap(), shift: t.to_dtype(DType::F32).unwrap().to_vec1().unwrap(), act };
        (s, t, host)
    };
    let f32s = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    for (kin, m, h, w, k, stride, same) in [(5, 13, 21, 21, 3, 2, true), (16, 24, 20, 20, 3, 1, true), (3, 8, 17, 23, 5, 1, false), (24, 17, 18, 19, 3, 2, true)] {
        let g = if same { Geom::same(h, w, k, stride) } else { Geom::valid(h, w, k, stride) };
        let b = 2;
        let x = rand(&[kin, b, h, w], 41);
        let wt = rand(&[m, kin], 42);
        let kern = rand(&[m, k * k], 43);
        let (ps, pt, pre) = affine(m, 44, Some(Act::Relu6));
        let (qs, qt, post) = affine(m, 46, Some(Act::Relu6));
        let expanded = wt.matmul(&x.reshape((kin, b * h * w)).unwrap()).unwrap().reshape((m, b, h, w)).unwrap();
        let want = ops::affine_act(&ops::depthwise(&ops::affine_act(&expanded, &ps, &pt, pre.act).unwrap(), &kern, g).unwrap(), &qs, &qt, post.act).unwrap();
        let got = ops::expand_depthwise(&f32s(&x), &f32s(&wt), Some(pre), &f32s(&kern), g, Some(post)).unwrap();
        assert_eq!(got.dims(), want.dims());
        let (got, want) = (to_vec(&got.to_dtype(DType::F64).unwrap()), to_vec(&want));
        assert!(want.iter().filter(|v| **v != 0.0).count() > want.len() / 4, "mostly-zero output proves little");
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-5, "({kin}->{m}, {h}x{w}, k{k}, s{stride}): max difference {worst}");
    }
}

#[test]
fn im2col_gradients_match_finite_differences() {
    for (h, w, k, stride, same) in [(6, 5, 3, 2, false), (5, 5, 3, 1, true), (9, 9, 1, 2, true)] {
        let g = if same { Geom::same(h, w, k, stride) } else { Geom::valid(h, w, k, stride) };
        grad_check(&[rand(&[2, 2, h, w], 5)], &|a| ops::im2col(&a[0], g).unwrap());
    }
}

#[test]
fn im2col_conv_matches_candle_conv2d() {
    let (c, b, h, w, o) = (3, 2, 11, 11, 5);
    let x = rand(&[c, b, h, w], 6);
    let wt = rand(&[o, c, 3, 3], 7);
    let g = Geom::valid(h, w, 3, 2);
    let ours = wt.reshape((o, c * 9)).unwrap().matmul(&ops::im2col(&x, g).unwrap()).unwrap();
    let ours = ours.reshape((o, b, g.out_h, g.out_w)).unwrap();
    let reference = swap01(&x).conv2d(&wt, 0, 2, 1, 1).unwrap();
    close(&ours, &swap01(&reference), 1e-12);
}

#[test]
fn max_pool_gradients_match_finite_differences() {
    for (h, w) in [(6, 6), (9, 9), (5, 7)] {
        let g = Geom::same(h, w, 3, 2);
        grad_check(&[rand(&[2, 2, h, w], 8)], &|a| ops::max_pool(&a[0], g).unwrap());
    }
}

#[test]
fn max_pool_matches_candle_without_padding() {
    let x = rand(&[2, 3, 8, 8], 9);
    let ours = ops::max_pool(&x, Geom::valid(8, 8, 2, 2)).unwrap();
    let reference = swap01(&x).max_pool2d_with_stride(2, 2).unwrap();
    close(&ours, &swap01(&reference), 0.0);
}

/// Every window shape (the unrolled 3x3/2 path and the general
/// one), 'same' and 'valid', against a direct scan of each window.
#[test]
fn max_pool_matches_a_direct_scan_of_each_window() {
    for (h, w, k, stride, same) in [(9, 9, 3, 2, true), (8, 7, 3, 2, true), (9, 9, 3, 2, false), (8, 6, 2, 2, false), (7, 8, 2, 2, true), (7, 6, 3, 1, true), (11, 10, 5, 3, true), (10, 11, 4, 3, false)] {
        let g = if same { Geom::same(h, w, k, stride) } else { Geom::valid(h, w, k, stride) };
        let planes = 6;
        let x = rand(&[3, 2, h, w], 17);
        let xs = to_vec(&x);
        let mut direct = Vec::new();
        for p in 0..planes {
            for oi in 0..g.out_h {
                for oj in 0..g.out_w {
                    let mut m = f64::NEG_INFINITY;
                    for a in 0..k {
                        for b in 0..k {
                            let (r, c) = ((oi * stride + a) as isize - g.pad_top as isize, (oj * stride + b) as isize - g.pad_left as isize);
                            if (0..h as isize).contains(&r) && (0..w as isize).contains(&c) {
                                m = m.max(xs[p * h * w + r as usize * w + c as usize]);
                            }
                        }
                    }
                    direct.push(m);
                }
            }
        }
        let ours = ops::max_pool(&x, g).unwrap();
        assert_eq!(ours.dims(), &[3, 2, g.out_h, g.out_w]);
        assert_eq!(to_vec(&ours), direct, "{k}x{k} stride {stride} on {h}x{w} (same: {same})");
    }
}

/// Inference's BatchNorm (+ activation) applied as the max-pool reads equals
/// the two ops one after another, bit for bit, with negative scales (the max
/// of the affine is not the affine of the max).
#[test]
fn fused_max_pool_equals_the_separate_ops() {
    let c = 4;
    for (h, w) in [(9, 9), (8, 7)] {
        let g = Geom::same(h, w, 3, 2);
        let x = rand(&[c, 2, h, w], 51).to_dtype(DType::F32).unwrap();
        let s = rand(&[c], 52).to_dtype(DType::F32).unwrap();
        let t = rand(&[c], 53).to_dtype(DType::F32).unwrap();
        assert!(s.to_vec1::<f32>().unwrap().iter().any(|v| *v < 0.0), "the case needs a negative scale");
        for act in [None, Some(Act::Relu)] {
            let separate = ops::max_pool(&ops::affine_act(&x, &s, &t, act).unwrap(), g).unwrap();
            let pre = ops::ChannelAffine { scale: s.to_vec1().unwrap(), shift: t.to_vec1().unwrap(), act };
            let fused = ops::max_pool_fused(&x, g, pre).unwrap();
            assert_eq!(fused.dims(), separate.dims());
            let (a, b) = (fused.flatten_all().unwrap().to_vec1::<f32>().unwrap(), separate.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "{h}x{w}, {act:?}: fused differs from the separate ops");
        }
    }
}

#[test]
fn affine_act_gradients_match_finite_differences() {
    for a in [None, Some(Act::Relu), Some(Act::Relu6)] {
        let x = (rand(&[3, 2, 4, 4], 10) * 4.0).unwrap();
        grad_check(&[x, rand(&[3], 11), rand(&[3], 12)], &|t| ops::affine_act(&t[0], &t[1], &t[2], a).unwrap());
    }
}

#[test]
fn act_gradients_match_finite_differences_and_candle() {
    let x = (rand(&[2, 3, 5, 5], 13) * 8.0).unwrap();
    grad_check(&[x.clone()], &|t| ops::act(&t[0], Act::Relu).unwrap());
    grad_check(&[x.clone()], &|t| ops::act(&t[0], Act::Relu6).unwrap());
    close(&ops::act(&x, Act::Relu).unwrap(), &x.relu().unwrap(), 0.0);
    close(&ops::act(&x, Act::Relu6).unwrap(), &x.clamp(0.0, 6.0).unwrap(), 0.0);
}

#[test]
fn ops_run_in_f32() {
    let x = rand(&[2, 2, 6, 6], 14).to_dtype(DType::F32).unwrap();
    let k = rand(&[2, 9], 15).to_dtype(DType::F32).unwrap();
    let y = ops::depthwise(&x, &k, Geom::same(6, 6, 3, 1)).unwrap();
    assert_eq!(y.dtype(), DType::F32);
}

#[test]
fn fused_affine_backward_equals_the_two_ops() {
    for a in [None, Some(Act::Relu), Some(Act::Relu6)] {
        let x = (rand(&[3, 2, 5, 7], 20) * 4.0).unwrap();
        let (scale, shift) = (rand(&[3], 21), rand(&[3], 22));
        let y = ops::affine_act(&x, &scale, &shift, a).unwrap();
        let dy = rand(&[3, 2, 5, 7], 23);
        let (dx, ds, dt) = ops::affine_act_backward(&x, &y, &dy, &scale, a).unwrap();
        close(&dx, &ops::affine_act_input_grad(&y, &dy, &scale, a).unwrap(), 1e-12);
        let (ds2, dt2) = ops::affine_act_param_grad(&x, &y, &dy, a).unwrap();
        close(&ds, &ds2, 1e-12);
        close(&dt, &dt2, 1e-12);
    }
}
