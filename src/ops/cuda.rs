//! CUDA forward kernels of the custom ops (the `cuda_fwd` of each `CustomOp`),
//! compiled from `src/ops/cuda/ops.cu` to PTX by build.rs and loaded once per
//! device through Candle's custom-module cache.
//!
//! Each function takes the already-checked storages and layouts of its op and
//! returns the result storage; the shape checks stay in the op files so the
//! CPU and CUDA paths share them.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Shape};

use super::act::Act;
use super::Geom;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/tuneserve_ops.ptx"));
const MODULE: &str = "tuneserve_ops";
const THREADS: u32 = 256;

/// Float types the kernels are instantiated for.
pub(crate) trait GpuElem: CudaDType + DeviceRepr + Copy + 'static {
    const SUFFIX: &'static str;
}
impl GpuElem for f32 {
    const SUFFIX: &'static str = "f32";
}
impl GpuElem for f64 {
    const SUFFIX: &'static str = "f64";
}

/// `Geom` as the kernels' `struct Geom` (eight ints).
#[repr(C)]
#[derive(Clone, Copy)]
struct GeomC([i32; 8]);
// SAFETY: plain old data (eight i32, repr(C)) with the layout of ops.cu's
// `struct Geom`, so it can be copied to the device as a kernel argument.
unsafe impl DeviceRepr for GeomC {}

impl From<&Geom> for GeomC {
    fn from(g: &Geom) -> Self {
        let v = [g.in_h, g.in_w, g.k, g.stride, g.pad_top, g.pad_left, g.out_h, g.out_w];
        GeomC(v.map(|x| x as i32))
    }
}

fn act_code(a: Option<Act>) -> i32 {
    match a {
        None => -1,
        Some(Act::Relu) => 0,
        Some(Act::Relu6) => 1,
    }
}

macro_rules! gpu_dispatch {
    ($s:expr, |$t:ident| $body:expr) => {
        match $s.dtype() {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::F64 => {
                type $t = f64;
                $body
            }
            d => candle_core::bail!("custom op expects f32 or f64, got {d:?}"),
        }
    };
}

fn view<'a, T: GpuElem>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    let data = s.as_cuda_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(data.slice(a..b)),
        None => candle_core::bail!("custom op needs a contiguous input, got {:?}", l.stride()),
    }
}

fn kernel_name<T: GpuElem>(base: &str) -> String {
    format!("{base}_{}", T::SUFFIX)
}

/// The kernel `<base>_<f32|f64>` of this module on `dev` (loaded once per device).
macro_rules! func {
    ($dev:expr, $t:ty, $base:expr) => {
        $dev.get_or_load_custom_func(&kernel_name::<$t>($base), MODULE, PTX)
    };
}

/// Launches the kernel `<name>_<T>` with `cfg` and the arguments in order.
/// One statement, so the temporaries the arguments borrow outlive the launch.
macro_rules! launch {
    ($dev:expr, $t:ty, $name:expr, $cfg:expr; $($arg:expr),+ $(,)?) => {{
        let f = func!($dev, $t, $name)?;
        // SAFETY: the arguments follow the kernel's parameter list in ops.cu
        // (order and types; the CUDA tests run every kernel), each buffer
        // holds every element the kernel indexes (allocated from the same
        // sizes and geometry passed here), and the kernels bound their loops
        // by those sizes.
        unsafe { f.builder()$(.arg($arg))+.launch($cfg) }.w()?;
    }};
}

/// Uninitialised output of `n` elements (every kernel writes all of it).
fn alloc<T: GpuElem>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: the kernel launched next writes every element.
    unsafe { dev.alloc::<T>(n.max(1)) }
}

/// Grid-stride launch over `n` elements.
fn elems(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

fn wrap<T: GpuElem>(out: CudaSlice<T>, dev: &CudaDevice, shape: impl Into<Shape>) -> Result<(CudaStorage, Shape)> {
    Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), shape.into()))
}

pub(crate) fn act_fwd(s: &CudaStorage, l: &Layout, a: Act) -> Result<(CudaStorage, Shape)> {
    let dev = s.device();
    let n = l.shape().elem_count();
    gpu_dispatch!(s, |T| {
        let x = view::<T>(s, l)?;
        let y = alloc::<T>(dev, n)?;
        launch!(dev, T, "act_fwd", elems(n); &(n as i64), &x, &y, &act_code(Some(a)));
        wrap(y, dev, l.shape().clone())
    })
}

pub(crate) fn act_grad(s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout, a: Act) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let n = l1.shape().elem_count();
    gpu_dispatch!(s1, |T| {
        let (y, dy) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?);
        let dx = alloc::<T>(dev, n)?;
        launch!(dev, T, "act_grad", elems(n); &(n as i64), &y, &dy, &dx, &act_code(Some(a)));
        wrap(dx, dev, l1.shape().clone())
    })
}

/// y = act(x * scale[c] + shift[c]) with `per_ch` elements per channel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn affine_fwd(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
    per_ch: usize,
    a: Option<Act>,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let n = l1.shape().elem_count();
    gpu_dispatch!(s1, |T| {
        let (x, scale, shift) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?, view::<T>(s3, l3)?);
        let y = alloc::<T>(dev, n)?;
        launch!(dev, T, "affine_fwd", elems(n); &(n as i64), &(per_ch as i64), &x, &scale, &shift, &y, &act_code(a));
        wrap(y, dev, l1.shape().clone())
    })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn affine_input_grad(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
    per_ch: usize,
    a: Option<Act>,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let n = l1.shape().elem_count();
    gpu_dispatch!(s1, |T| {
        let (y, dy, scale) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?, view::<T>(s3, l3)?);
        let dx = alloc::<T>(dev, n)?;
        launch!(dev, T, "affine_input_grad", elems(n); &(n as i64), &(per_ch as i64), &y, &dy, &scale, &dx, &act_code(a));
        wrap(dx, dev, l1.shape().clone())
    })
}

/// Sums `part` (rows, splits, width) over splits into (rows, width), in split order.
fn sum_splits<T: GpuElem>(dev: &CudaDevice, part: &CudaSlice<T>, rows: usize, splits: usize, width: usize) -> Result<CudaSlice<T>> {
    let out = alloc::<T>(dev, rows * width)?;
    launch!(dev, T, "sum_splits", elems(rows * width); &(rows as i64), &(splits as i64), &(width as i64), part, &out);
    Ok(out)
}

/// (C, 2): per channel (sum g*x, sum g) with g = dy masked by the activation.
#[allow(clippy::too_many_arguments)]
pub(crate) fn affine_param_grad(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
    c: usize,
    per_ch: usize,
    a: Option<Act>,
) -> Result<(CudaStorage, Shape)> {
    const CHUNK: usize = 1 << 14;
    let dev = s1.device();
    let splits = per_ch.div_ceil(CHUNK).max(1);
    gpu_dispatch!(s1, |T| {
        let (x, y, dy) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?, view::<T>(s3, l3)?);
        let part = alloc::<T>(dev, c * splits * 2)?;
        let cfg = LaunchConfig {
            grid_dim: (c as u32, splits as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 2 * THREADS * std::mem::size_of::<T>() as u32,
        };
        launch!(dev, T, "affine_param_partial", cfg; &(per_ch as i64), &(CHUNK as i64), &x, &y, &dy, &part, &act_code(a));
        let out = sum_splits(dev, &part, c, splits, 2)?;
        wrap(out, dev, (c, 2))
    })
}

/// Depthwise KxK convolution of (C,B,H,W) by (C,K*K), optionally of
/// act(x * scale[c] + shift[c]) (`pre`, inference fusion).
#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise_fwd(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    g: &Geom,
    c: usize,
    bsz: usize,
    pre: Option<&super::ChannelAffine>,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let n = c * bsz * g.out_plane();
    gpu_dispatch!(s1, |T| {
        let (x, k) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?);
        let y = alloc::<T>(dev, n)?;
        // With no pre-affine, pre_act = -2 and the (unread) vectors are one element.
        let (scale, shift, code): (Vec<T>, Vec<T>, i32) = match pre {
            None => (vec![0 as T], vec![0 as T], -2),
            Some(p) if p.scale.len() == c && p.shift.len() == c => {
                (p.scale.iter().map(|v| *v as T).collect(), p.shift.iter().map(|v| *v as T).collect(), act_code(p.act))
            }
            Some(_) => candle_core::bail!("depthwise: fused affine does not have {c} channels"),
        };
        let (scale, shift) = (dev.clone_htod(&scale)?, dev.clone_htod(&shift)?);
        let (n64, b32, gc) = (n as i64, bsz as i32, GeomC::from(g));
        launch!(dev, T, "dw_fwd", elems(n); &n64, &b32, &gc, &x, &k, &y, &scale, &shift, &code);
        wrap(y, dev, (c, bsz, g.out_h, g.out_w))
    })
}

pub(crate) fn depthwise_input_grad(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    g: &Geom,
    c: usize,
    bsz: usize,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let n = c * bsz * g.in_plane();
    gpu_dispatch!(s1, |T| {
        let (dy, k) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?);
        let dx = alloc::<T>(dev, n)?;
        launch!(dev, T, "dw_input_grad", elems(n); &(n as i64), &(bsz as i32), &GeomC::from(g), &dy, &k, &dx);
        wrap(dx, dev, (c, bsz, g.in_h, g.in_w))
    })
}

pub(crate) fn depthwise_kernel_grad(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    g: &Geom,
    c: usize,
    bsz: usize,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let kk = g.k * g.k;
    if kk > 25 {
        candle_core::bail!("depthwise kernel grad on CUDA supports kernels up to 5x5, got {}x{}", g.k, g.k);
    }
    gpu_dispatch!(s1, |T| {
        let (x, dy) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?);
        let part = alloc::<T>(dev, c * bsz * kk)?;
        // One block per plane; small planes (the 19x19 middle flow) get small
        // blocks, so that threads are not left idle through the reductions.
        let threads = (g.out_plane() / 4).next_power_of_two().clamp(32, THREADS as usize) as u32;
        let cfg = LaunchConfig {
            grid_dim: ((c * bsz) as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: threads * std::mem::size_of::<T>() as u32,
        };
        launch!(dev, T, "dw_kernel_grad_partial", cfg; &GeomC::from(g), &x, &dy, &part);
        let out = sum_splits(dev, &part, c, bsz, kk)?;
        wrap(out, dev, (c, kk))
    })
}

pub(crate) fn im2col(s: &CudaStorage, l: &Layout, g: &Geom, c: usize, bsz: usize) -> Result<(CudaStorage, Shape)> {
    let dev = s.device();
    let (rows, ncols) = (c * g.k * g.k, bsz * g.out_plane());
    let n = rows * ncols;
    gpu_dispatch!(s, |T| {
        let x = view::<T>(s, l)?;
        let cols = alloc::<T>(dev, n)?;
        launch!(dev, T, "im2col", elems(n); &(n as i64), &(bsz as i32), &GeomC::from(g), &x, &cols);
        wrap(cols, dev, (rows, ncols))
    })
}

pub(crate) fn col2im(s: &CudaStorage, l: &Layout, g: &Geom, c: usize, bsz: usize) -> Result<(CudaStorage, Shape)> {
    let dev = s.device();
    let n = c * bsz * g.in_plane();
    gpu_dispatch!(s, |T| {
        let cols = view::<T>(s, l)?;
        let dx = alloc::<T>(dev, n)?;
        launch!(dev, T, "col2im", elems(n); &(n as i64), &(bsz as i32), &GeomC::from(g), &cols, &dx);
        wrap(dx, dev, (c, bsz, g.in_h, g.in_w))
    })
}

/// Max pool over `planes` (C*B) planes; `shape` is the (C, B, Ho, Wo) result.
pub(crate) fn max_pool(s: &CudaStorage, l: &Layout, g: &Geom, planes: usize, shape: Shape) -> Result<(CudaStorage, Shape)> {
    let dev = s.device();
    let n = planes * g.out_plane();
    gpu_dispatch!(s, |T| {
        let x = view::<T>(s, l)?;
        let y = alloc::<T>(dev, n)?;
        launch!(dev, T, "max_pool_fwd", elems(n); &(n as i64), &GeomC::from(g), &x, &y);
        wrap(y, dev, shape)
    })
}

pub(crate) fn max_pool_grad(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    g: &Geom,
    planes: usize,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let (n_out, n) = (planes * g.out_plane(), planes * g.in_plane());
    gpu_dispatch!(s1, |T| {
        let (x, dy) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?);
        let gc = GeomC::from(g);
        // Pass 1: each window's first maximum.
        // SAFETY: the argmax kernel writes every element.
        let idx = unsafe { dev.alloc::<i32>(n_out.max(1)) }?;
        launch!(dev, T, "max_pool_argmax", elems(n_out); &(n_out as i64), &gc, &x, &idx);
        // Pass 2: each input pixel gathers the gradients of the windows it won.
        let dx = alloc::<T>(dev, n)?;
        launch!(dev, T, "max_pool_grad", elems(n); &(n as i64), &gc, &idx, &dy, &dx);
        wrap(dx, dev, l1.shape().clone())
    })
}

/// Fused Adam: (3, n) = [var'; m'; v'] from var (n), g (n), [m; v] (2, n).
pub(crate) fn adam_step(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
    p: &super::adam::AdamStep,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let n = l1.shape().elem_count();
    gpu_dispatch!(s1, |T| {
        let (var, g, mv) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?, view::<T>(s3, l3)?);
        let out = alloc::<T>(dev, 3 * n)?;
        let c = |x: f64| x as T;
        // 1 - b in the tensor's type, as `train::Adam`'s CPU path computes it.
        let (b1, omb1, b2, omb2, alpha, eps) = (c(p.b1), 1.0 - c(p.b1), c(p.b2), 1.0 - c(p.b2), c(p.alpha), c(p.eps));
        launch!(dev, T, "adam_step", elems(n); &(n as i64), &var, &g, &mv, &out, &b1, &omb1, &b2, &omb2, &alpha, &eps);
        wrap(out, dev, (3, n))
    })
}
