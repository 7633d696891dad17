// CUDA kernels for tuneserve's custom ops (src/ops/*.rs). Each kernel mirrors
// the CPU op it replaces: same TF 'same' geometry, same first-maximum rule in
// the max-pool gradient, same ReLU6 mask 0 < y < 6, and, where the CPU op sums
// in a fixed order, the same order. Compiled to PTX by build.rs (nvcc
// --fmad=false, so that x*s+t rounds like the CPU code).
//
// Layout: activations are (C, B, H, W) contiguous; a "plane" is one (c, b).
// Every kernel has an f32 and an f64 instance, named <op>_f32 / <op>_f64.

#include <stdint.h>

struct Geom {
    int in_h, in_w, k, stride, pad_top, pad_left, out_h, out_w;
};

// act: 0 = ReLU, 1 = ReLU6, -1 = none.
template <typename T> __device__ __forceinline__ T act_apply(T v, int act) {
    if (act < 0) return v;
    // Rust's f32::max(NaN, 0) is 0; so is fmax.
    T z = fmax(v, T(0));
    return act == 1 ? fmin(z, T(6)) : z;
}

template <typename T> __device__ __forceinline__ bool act_passes(T y, int act) {
    if (act < 0) return true;
    return act == 1 ? (y > T(0) && y < T(6)) : (y > T(0));
}

#define GRID_LOOP(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (int64_t)(n); \
         i += (int64_t)blockDim.x * gridDim.x)

// ---- act / act-grad --------------------------------------------------------

template <typename T> __device__ void act_fwd(int64_t n, const T* x, T* y, int act) {
    GRID_LOOP(i, n) { y[i] = act_apply(x[i], act); }
}

template <typename T> __device__ void act_grad(int64_t n, const T* y, const T* dy, T* dx, int act) {
    GRID_LOOP(i, n) { dx[i] = act_passes(y[i], act) ? dy[i] : T(0); }
}

// ---- per-channel affine + act ---------------------------------------------

template <typename T>
__device__ void affine_fwd(int64_t n, int64_t per_ch, const T* x, const T* scale, const T* shift, T* y, int act) {
    GRID_LOOP(i, n) {
        int64_t c = i / per_ch;
        y[i] = act_apply(x[i] * scale[c] + shift[c], act);
    }
}

template <typename T>
__device__ void affine_input_grad(int64_t n, int64_t per_ch, const T* y, const T* dy, const T* scale, T* dx, int act) {
    GRID_LOOP(i, n) {
        int64_t c = i / per_ch;
        dx[i] = act_passes(y[i], act) ? dy[i] * scale[c] : T(0);
    }
}

// Block-wide sum of NV values per thread into sh (blockDim.x * NV), result in sh[0..NV).
template <typename T, int NV> __device__ void block_sum(T (&v)[NV], T* sh) {
    int t = threadIdx.x;
    for (int j = 0; j < NV; j++) sh[j * blockDim.x + t] = v[j];
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s)
            for (int j = 0; j < NV; j++) sh[j * blockDim.x + t] += sh[j * blockDim.x + t + s];
        __syncthreads();
    }
}

// Partial sums of (g*x, g) over chunk `blockIdx.y` of channel `blockIdx.x`;
// g = dy masked by the activation. part: (C, splits, 2).
template <typename T>
__device__ void affine_param_partial(int64_t per_ch, int64_t chunk, const T* x, const T* y, const T* dy, T* part, int act) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* sh = reinterpret_cast<T*>(smem_raw);
    int64_t c = blockIdx.x, s = blockIdx.y;
    int64_t lo = s * chunk, hi = min(per_ch, lo + chunk);
    const T* xr = x + c * per_ch;
    const T* yr = y + c * per_ch;
    const T* gr = dy + c * per_ch;
    T v[2] = {T(0), T(0)};
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        T g = act_passes(yr[i], act) ? gr[i] : T(0);
        v[0] += g * xr[i];
        v[1] += g;
    }
    block_sum<T, 2>(v, sh);
    if (threadIdx.x == 0) {
        part[(c * gridDim.y + s) * 2 + 0] = sh[0];
        part[(c * gridDim.y + s) * 2 + 1] = sh[blockDim.x];
    }
}

// out (C, 2) = sum over splits of part (C, splits, 2), in split order.
template <typename T> __device__ void sum_splits(int64_t rows, int64_t splits, int64_t width, const T* part, T* out) {
    GRID_LOOP(i, rows * width) {
        int64_t r = i / width, j = i % width;
        T acc = T(0);
        for (int64_t s = 0; s < splits; s++) acc += part[(r * splits + s) * width + j];
        out[i] = acc;
    }
}

// ---- depthwise convolution -------------------------------------------------

// KK: the kernel size when known at compile time (3: every depthwise layer of
// Xception and MobileNetV2), so the tap loops unroll and the per-tap
// accumulators stay in registers; 0 = read it from the geometry.
#define KSIZE(g) (KK ? KK : (g).k)

// y[p, oi, oj] = sum_{a,b} k[c, a*K+b] * x'[p, oi*s+a-pt, oj*s+b-pl]; taps in (a, b) order like the CPU.
// x' = x, or with pre_act >= -1 the fused pre-affine act(x * pre_scale[c] + pre_shift[c])
// (inference; the zero padding stays zero, as on the CPU).
template <typename T, int KK>
__device__ void dw_fwd(int64_t n, int B, Geom g, const T* x, const T* k, T* y, const T* pre_scale, const T* pre_shift,
                       int pre_act) {
    const int K = KSIZE(g);
    int64_t op = (int64_t)g.out_h * g.out_w, ip = (int64_t)g.in_h * g.in_w;
    GRID_LOOP(i, n) {
        int64_t p = i / op;
        int rem = (int)(i % op), oi = rem / g.out_w, oj = rem % g.out_w;
        const T* xp = x + p * ip;
        const T* kc = k + (p / B) * K * K;
        const bool pre = pre_act >= -1;
        T sc = T(0), sh = T(0);
        if (pre) {
            sc = pre_scale[p / B];
            sh = pre_shift[p / B];
        }
        T acc = T(0);
#pragma unroll
        for (int a = 0; a < K; a++) {
            int r = oi * g.stride + a - g.pad_top;
            if (r < 0 || r >= g.in_h) continue;
#pragma unroll
            for (int b = 0; b < K; b++) {
                int c = oj * g.stride + b - g.pad_left;
                if (c < 0 || c >= g.in_w) continue;
                T xv = xp[r * g.in_w + c];
                if (pre) xv = act_apply(xv * sc + sh, pre_act);
                acc += kc[a * K + b] * xv;
            }
        }
        y[i] = acc;
    }
}

// dx[p, r, c] = sum over (a, b) with r = oi*s+a-pt, c = oj*s+b-pl inside the output.
template <typename T, int KK> __device__ void dw_input_grad(int64_t n, int B, Geom g, const T* dy, const T* k, T* dx) {
    const int K = KSIZE(g);
    int64_t op = (int64_t)g.out_h * g.out_w, ip = (int64_t)g.in_h * g.in_w;
    GRID_LOOP(i, n) {
        int64_t p = i / ip;
        int rem = (int)(i % ip), r = rem / g.in_w, c = rem % g.in_w;
        const T* dyp = dy + p * op;
        const T* kc = k + (p / B) * K * K;
        T acc = T(0);
#pragma unroll
        for (int a = 0; a < K; a++) {
            int t = r + g.pad_top - a;
            if (t < 0 || t % g.stride) continue;
            int oi = t / g.stride;
            if (oi >= g.out_h) continue;
#pragma unroll
            for (int b = 0; b < K; b++) {
                int u = c + g.pad_left - b;
                if (u < 0 || u % g.stride) continue;
                int oj = u / g.stride;
                if (oj >= g.out_w) continue;
                acc += kc[a * K + b] * dyp[oi * g.out_w + oj];
            }
        }
        dx[i] = acc;
    }
}

#define DW_MAX_TAPS 25

// One block per plane p = c*B + b: part[p, tap] = sum over outputs of dy * x at that tap.
template <typename T, int KK> __device__ void dw_kernel_grad_partial(Geom g, const T* x, const T* dy, T* part) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* sh = reinterpret_cast<T*>(smem_raw);
    const int K = KSIZE(g);
    constexpr int NV = KK ? KK * KK : DW_MAX_TAPS;
    int64_t p = blockIdx.x;
    int kk = K * K;
    int op = g.out_h * g.out_w;
    const T* xp = x + p * (int64_t)g.in_h * g.in_w;
    const T* dyp = dy + p * (int64_t)op;
    T v[NV];
#pragma unroll
    for (int j = 0; j < NV; j++) v[j] = T(0);
    for (int o = threadIdx.x; o < op; o += blockDim.x) {
        int oi = o / g.out_w, oj = o % g.out_w;
        T d = dyp[o];
#pragma unroll
        for (int a = 0; a < K; a++) {
            int r = oi * g.stride + a - g.pad_top;
            if (r < 0 || r >= g.in_h) continue;
#pragma unroll
            for (int b = 0; b < K; b++) {
                int c = oj * g.stride + b - g.pad_left;
                if (c < 0 || c >= g.in_w) continue;
                v[a * K + b] += d * xp[r * g.in_w + c];
            }
        }
    }
    // Reduce the taps one at a time (shared memory holds one value per thread).
#pragma unroll
    for (int j = 0; j < NV; j++) {
        if (j >= kk) break;
        T one[1] = {v[j]};
        block_sum<T, 1>(one, sh);
        if (threadIdx.x == 0) part[p * kk + j] = sh[0];
        __syncthreads();
    }
}

// ---- im2col / col2im -------------------------------------------------------

// cols[(ch*KK + a*K + b), img*op + oi*Wo + oj] = x[ch, img, oi*s+a-pt, oj*s+b-pl] or 0.
template <typename T> __device__ void im2col(int64_t n, int B, Geom g, const T* x, T* cols) {
    int64_t op = (int64_t)g.out_h * g.out_w, ip = (int64_t)g.in_h * g.in_w;
    int64_t ncols = (int64_t)B * op;
    int kk = g.k * g.k;
    GRID_LOOP(i, n) {
        int64_t row = i / ncols, col = i % ncols;
        int64_t ch = row / kk;
        int tap = (int)(row % kk), a = tap / g.k, b = tap % g.k;
        int64_t img = col / op;
        int rem = (int)(col % op), oi = rem / g.out_w, oj = rem % g.out_w;
        int r = oi * g.stride + a - g.pad_top, c = oj * g.stride + b - g.pad_left;
        T v = T(0);
        if (r >= 0 && r < g.in_h && c >= 0 && c < g.in_w) v = x[(ch * B + img) * ip + r * g.in_w + c];
        cols[i] = v;
    }
}

// Adjoint: dx[ch, img, r, c] = sum over taps (in tap order, like the CPU) of the matching cols entry.
template <typename T> __device__ void col2im(int64_t n, int B, Geom g, const T* cols, T* dx) {
    int64_t op = (int64_t)g.out_h * g.out_w, ip = (int64_t)g.in_h * g.in_w;
    int64_t ncols = (int64_t)B * op;
    int kk = g.k * g.k;
    GRID_LOOP(i, n) {
        int64_t p = i / ip;
        int64_t ch = p / B, img = p % B;
        int rem = (int)(i % ip), r = rem / g.in_w, c = rem % g.in_w;
        T acc = T(0);
        for (int a = 0; a < g.k; a++) {
            int t = r + g.pad_top - a;
            if (t < 0 || t % g.stride) continue;
            int oi = t / g.stride;
            if (oi >= g.out_h) continue;
            for (int b = 0; b < g.k; b++) {
                int u = c + g.pad_left - b;
                if (u < 0 || u % g.stride) continue;
                int oj = u / g.stride;
                if (oj >= g.out_w) continue;
                acc += cols[(ch * kk + a * g.k + b) * ncols + img * op + oi * g.out_w + oj];
            }
        }
        dx[i] = acc;
    }
}

// ---- max pool 'same' -------------------------------------------------------

template <typename T> __device__ void max_pool_fwd(int64_t n, Geom g, const T* x, T* y) {
    int64_t op = (int64_t)g.out_h * g.out_w, ip = (int64_t)g.in_h * g.in_w;
    GRID_LOOP(i, n) {
        int64_t p = i / op;
        int rem = (int)(i % op), oi = rem / g.out_w, oj = rem % g.out_w;
        const T* xp = x + p * ip;
        T m = -INFINITY;
        for (int a = 0; a < g.k; a++) {
            int r = oi * g.stride + a - g.pad_top;
            if (r < 0 || r >= g.in_h) continue;
            for (int b = 0; b < g.k; b++) {
                int c = oj * g.stride + b - g.pad_left;
                if (c < 0 || c >= g.in_w) continue;
                m = fmax(m, xp[r * g.in_w + c]);
            }
        }
        y[i] = m;
    }
}

// Index in the plane of the first maximum of window (oi, oj), like the CPU's argmax.
template <typename T> __device__ __forceinline__ int window_argmax(const T* xp, Geom g, int oi, int oj) {
    int best = -1;
    T best_v = -INFINITY;
    for (int a = 0; a < g.k; a++) {
        int r = oi * g.stride + a - g.pad_top;
        if (r < 0 || r >= g.in_h) continue;
        for (int b = 0; b < g.k; b++) {
            int c = oj * g.stride + b - g.pad_left;
            if (c < 0 || c >= g.in_w) continue;
            T v = xp[r * g.in_w + c];
            if (best < 0 || v > best_v) {
                best = r * g.in_w + c;
                best_v = v;
            }
        }
    }
    return best;
}

// Pass 1: the first maximum (index in the plane) of every window.
template <typename T> __device__ void max_pool_argmax(int64_t n, Geom g, const T* x, int* idx) {
    int64_t op = (int64_t)g.out_h * g.out_w, ip = (int64_t)g.in_h * g.in_w;
    GRID_LOOP(i, n) {
        int64_t p = i / op;
        int rem = (int)(i % op);
        idx[i] = window_argmax(x + p * ip, g, rem / g.out_w, rem % g.out_w);
    }
}

// Pass 2, gather form (no atomics): each input pixel sums dy of the windows
// whose first maximum it is, in increasing (oi, oj) order like the CPU's scatter.
template <typename T> __device__ void max_pool_grad(int64_t n, Geom g, const int* idx, const T* dy, T* dx) {
    int64_t op = (int64_t)g.out_h * g.out_w, ip = (int64_t)g.in_h * g.in_w;
    GRID_LOOP(i, n) {
        int64_t p = i / ip;
        int pix = (int)(i % ip), r = pix / g.in_w, c = pix % g.in_w;
        const int* ix = idx + p * op;
        const T* dyp = dy + p * op;
        T acc = T(0);
        for (int a = g.k - 1; a >= 0; a--) {  // oi ascending
            int t = r + g.pad_top - a;
            if (t < 0 || t % g.stride) continue;
            int oi = t / g.stride;
            if (oi >= g.out_h) continue;
            for (int b = g.k - 1; b >= 0; b--) {  // oj ascending
                int u = c + g.pad_left - b;
                if (u < 0 || u % g.stride) continue;
                int oj = u / g.stride;
                if (oj >= g.out_w) continue;
                if (ix[oi * g.out_w + oj] == pix) acc += dyp[oi * g.out_w + oj];
            }
        }
        dx[i] = acc;
    }
}

// ---- extern "C" instances --------------------------------------------------

#define INSTANCES(T, S)                                                                                      \
    extern "C" __global__ void act_fwd_##S(int64_t n, const T* x, T* y, int act) { act_fwd(n, x, y, act); } \
    extern "C" __global__ void act_grad_##S(int64_t n, const T* y, const T* dy, T* dx, int act) {           \
        act_grad(n, y, dy, dx, act);                                                                         \
    }                                                                                                        \
    extern "C" __global__ void affine_fwd_##S(int64_t n, int64_t per_ch, const T* x, const T* scale,        \
                                              const T* shift, T* y, int act) {                               \
        affine_fwd(n, per_ch, x, scale, shift, y, act);                                                      \
    }                                                                                                        \
    extern "C" __global__ void affine_input_grad_##S(int64_t n, int64_t per_ch, const T* y, const T* dy,    \
                                                     const T* scale, T* dx, int act) {                       \
        affine_input_grad(n, per_ch, y, dy, scale, dx, act);                                                 \
    }                                                                                                        \
    extern "C" __global__ void affine_param_partial_##S(int64_t per_ch, int64_t chunk, const T* x,          \
                                                        const T* y, const T* dy, T* part, int act) {         \
        affine_param_partial(per_ch, chunk, x, y, dy, part, act);                                            \
    }                                                                                                        \
    extern "C" __global__ void sum_splits_##S(int64_t rows, int64_t splits, int64_t width, const T* part,   \
                                              T* out) {                                                      \
        sum_splits(rows, splits, width, part, out);                                                          \
    }                                                                                                        \
    extern "C" __global__ void dw_fwd_##S(int64_t n, int B, Geom g, const T* x, const T* k, T* y,           \
                                          const T* pre_scale, const T* pre_shift, int pre_act) {             \
        if (g.k == 3) dw_fwd<T, 3>(n, B, g, x, k, y, pre_scale, pre_shift, pre_act);                         \
        else dw_fwd<T, 0>(n, B, g, x, k, y, pre_scale, pre_shift, pre_act);                                  \
    }                                                                                                        \
    extern "C" __global__ void dw_input_grad_##S(int64_t n, int B, Geom g, const T* dy, const T* k, T* dx) { \
        if (g.k == 3) dw_input_grad<T, 3>(n, B, g, dy, k, dx); else dw_input_grad<T, 0>(n, B, g, dy, k, dx); \
    }                                                                                                        \
    extern "C" __global__ void dw_kernel_grad_partial_##S(Geom g, const T* x, const T* dy, T* part) {       \
        if (g.k == 3) dw_kernel_grad_partial<T, 3>(g, x, dy, part); else dw_kernel_grad_partial<T, 0>(g, x, dy, part); \
    }                                                                                                        \
    extern "C" __global__ void im2col_##S(int64_t n, int B, Geom g, const T* x, T* cols) {                  \
        im2col(n, B, g, x, cols);                                                                            \
    }                                                                                                        \
    extern "C" __global__ void col2im_##S(int64_t n, int B, Geom g, const T* cols, T* dx) {                 \
        col2im(n, B, g, cols, dx);                                                                           \
    }                                                                                                        \
    extern "C" __global__ void max_pool_fwd_##S(int64_t n, Geom g, const T* x, T* y) {                      \
        max_pool_fwd(n, g, x, y);                                                                            \
    }                                                                                                        \
    extern "C" __global__ void max_pool_argmax_##S(int64_t n, Geom g, const T* x, int* idx) {               \
        max_pool_argmax(n, g, x, idx);                                                                       \
    }                                                                                                        \
    extern "C" __global__ void max_pool_grad_##S(int64_t n, Geom g, const int* idx, const T* dy, T* dx) {   \
        max_pool_grad(n, g, idx, dy, dx);                                                                    \
    }

INSTANCES(float, f32)
INSTANCES(double, f64)

// ---- fused Adam (see src/ops/adam.rs) ----------------------------------------

template <typename T>
__device__ void adam_step(int64_t n, const T* var, const T* g, const T* mv, T* out, T b1, T omb1, T b2, T omb2,
                          T alpha, T eps) {
    GRID_LOOP(i, n) {
        T gi = g[i];
        T m = mv[i] + (gi - mv[i]) * omb1;
        T v = mv[n + i] + (gi * gi - mv[n + i]) * omb2;
        out[i] = var[i] - (alpha * m) / (sqrt(v) + eps);
        out[n + i] = m;
        out[2 * n + i] = v;
    }
}

extern "C" __global__ void adam_step_f32(int64_t n, const float* var, const float* g, const float* mv, float* out,
                                         float b1, float omb1, float b2, float omb2, float alpha, float eps) {
    adam_step(n, var, g, mv, out, b1, omb1, b2, omb2, alpha, eps);
}
extern "C" __global__ void adam_step_f64(int64_t n, const double* var, const double* g, const double* mv, double* out,
                                         double b1, double omb1, double b2, double omb2, double alpha, double eps) {
    adam_step(n, var, g, mv, out, b1, omb1, b2, omb2, alpha, eps);
}
