//! Matrix products against weights packed once, for inference.
//!
//! BLAS packs both operands on every call. A 1x1 convolution at batch 1 has
//! few pixels (Xception at 150 px: 81 in the middle flow) against a large
//! weight matrix (728 x 728), so repacking the weights is a large share of
//! each product (perf, batch-1 Xception: OpenBLAS's weight packing 15% of the
//! time, its kernel 44%). Here the weights are packed when the model is made
//! ready for serving, and each call reads its input in place.

use candle_core::{Result, Storage, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::simd::{simd_versions, Simd};
use super::storage::{slice, DisjointParts};

/// Whether this CPU has the vector units the kernels are written for
/// (without them BLAS is faster).
pub fn worthwhile() -> bool {
    Simd::detect() != Simd::Baseline
}

/// Most pixels (columns of the input) at which the packed product is used:
/// past them BLAS's packing cost is spread thin and its kernel, which
/// writes its output tiles directly, is as fast or faster (measured on
/// 2 AVX-512 cores, GFLOP/s packed vs BLAS: 728 x 728 weights at 81 pixels
/// 414-449 vs 341-384, at 324 pixels 453-469 vs 409-412, at 2592 equal;
/// 256 x 256 at 1296 pixels 387-397 vs 429-449).
pub const MAX_PIXELS: usize = 400;

/// Output channels per packed panel: three AVX-512 registers.
const PANEL: usize = 48;
/// Cache lines per packed weight row.
const LINES: usize = PANEL / 16;

/// Number format of a packed product's operands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Weights and activations as trained.
    #[default]
    F32,
    /// Weights and activations rounded to bfloat16 (8 significant bits) for
    /// the products, which then do twice the multiply-adds per instruction on
    /// CPUs with AVX-512 BF16; elsewhere the products stay f32.
    Bf16,
    /// Weights and activations as 16-bit fixed-point integers (a scale per
    /// output channel and one per pixel), with as many bits as exact 32-bit
    /// sums allow (about 11.7 and a sign each), for AVX2's integer
    /// multiply-add: twice the multiply-adds of an f32 FMA per instruction,
    /// on CPUs whose widest vector unit is AVX2; elsewhere the products stay f32.
    Int16,
}

impl Precision {
    /// The format this CPU runs: bf16 only where it has the BF16 dot-product
    /// instruction (emulating it would be slower than f32); int16 only where
    /// AVX2 is the widest vector unit (AVX-512's f32 FMA does as many
    /// multiply-adds per instruction as AVX2's integer multiply-add, without
    /// the separate add).
    pub fn supported(self) -> Precision {
        match self {
            Precision::Bf16 if Simd::has_bf16() => Precision::Bf16,
            Precision::Int16 if Simd::detect() == Simd::Avx2 => Precision::Int16,
            _ => Precision::F32,
        }
    }

    /// Whether products of (rows, depth) weights are faster in this format
    /// than in f32. Converting the input costs a pass over it, so bf16 and
    /// int16 pay where each input value meets many weights. Measured on 2
    /// AVX-512 cores, ms f32 vs bf16: 728 x 728 weights at 10952 pixels 31.1
    /// vs 19.0, 728 x 256 11.7 vs 8.5, 256 x 256 at 43808 pixels 18.0 vs
    /// 16.1, but 128 x 128 at 175232 pixels 19.8 vs 37.8 and 128 x 64 12.2 vs
    /// 17.6 (those are memory-bound). On 2 AVX2 cores, ms f32 (BLAS or
    /// packed) vs int16 at batch 1 and 32 of Xception 150: 728 x 728 at 81
    /// pixels 0.59 vs 0.43, at 2592 15.5 vs 12.6; 2048 x 1536 at 800 31.9 vs
    /// 18.9; 256 x 256 at 1296 1.06 vs 0.98; but 256 x 128 at 1296 0.56 vs
    /// 0.58 and 128 x 128 at 5184 1.12 vs 1.31.
    pub fn pays(self, rows: usize, depth: usize) -> bool {
        match self {
            Precision::F32 => true,
            Precision::Bf16 => rows >= 256 && depth >= 128,
            Precision::Int16 => rows >= 256 && depth >= 256,
        }
    }
}

/// One cache line of 32-bit values (f32, or a pair of bf16 or of 16-bit
/// integers); panels are built from these so that every vector load of a
/// weight row is aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line<T>([T; 16]);

/// (O, K) weights as panels of PANEL output channels: panel p holds, for
/// each step along K, the weights of its PANEL output channels (zero past
/// O). A step is one input channel in f32, two in bf16 and int16 (a pair per
/// 32 bits, as the BF16 dot product and AVX2's integer multiply-add take them).
pub struct PackedWeights {
    rows: usize,
    depth: usize,
    panels: Panels,
}

enum Panels {
    F32(Vec<Line<f32>>),
    Bf16(Vec<Line<u32>>),
    /// Pairs of 16-bit integers, and each output channel's scale.
    Int16(Vec<Line<u32>>, Vec<f32>),
}

impl PackedWeights {
    /// Packs row-major (rows, depth) weights (`Bf16`: rounded to nearest
    /// even; `Int16`: each row scaled so that its largest |weight| is
    /// `operand_max(depth)`, then rounded).
    pub fn pack(w: &[f32], rows: usize, depth: usize, precision: Precision) -> Self {
        assert_eq!(w.len(), rows * depth, "weights are not {rows} x {depth}");
        let panels = rows.div_ceil(PANEL);
        let steps = steps(precision, depth);
        let at = |o: usize, step: usize| ((o / PANEL * steps + step) * LINES + o % PANEL / 16, o % 16);
        let rows_of = || w.chunks_exact(depth.max(1)).enumerate().take(rows);
        let panels = match precision {
            Precision::F32 => {
                let mut lines = vec![Line([0f32; 16]); panels * steps * LINES];
                for (o, row) in rows_of() {
                    for (c, v) in row.iter().enumerate() {
                        let (l, j) = at(o, c);
                        lines[l].0[j] = *v;
                    }
                }
                Panels::F32(lines)
            }
            Precision::Bf16 => {
                let mut lines = vec![Line([0u32; 16]); panels * steps * LINES];
                for (o, row) in rows_of() {
                    for (c, v) in row.iter().enumerate() {
                        let (l, j) = at(o, c / 2);
                        lines[l].0[j] |= bf16_bits(*v) << (16 * (c % 2));
                    }
                }
                Panels::Bf16(lines)
            }
            Precision::Int16 => {
                let mut lines = vec![Line([0u32; 16]); panels * steps * LINES];
                let mut scales = vec![1f32; rows];
                let q_max = operand_max(depth) as f32;
                for (o, row) in rows_of() {
                    let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                    if max > 0.0 && max.is_finite() {
                        scales[o] = max / q_max;
                    }
                    for (c, v) in row.iter().enumerate() {
                        let q = (v / scales[o]).round_ties_even().clamp(-q_max, q_max) as i32;
                        let (l, j) = at(o, c / 2);
                        lines[l].0[j] |= int16_bits(q) << (16 * (c % 2));
                    }
                }
                Panels::Int16(lines, scales)
            }
        };
        Self { rows, depth, panels }
    }

    /// Packs an (O, K) f32 weight tensor.
    pub fn from_tensor(w: &Tensor, precision: Precision) -> Result<Self> {
        let (rows, depth) = w.dims2()?;
        Ok(Self::pack(&w.flatten_all()?.to_vec1::<f32>()?, rows, depth, precision))
    }

    /// Whether a product over `pixels` columns is faster here than in BLAS
    /// (f32: up to MAX_PIXELS; bf16 and int16 at any size, their kernels have
    /// up to twice the rate).
    pub fn wins_at(&self, pixels: usize) -> bool {
        !matches!(self.panels, Panels::F32(_)) || pixels <= MAX_PIXELS
    }

    /// (K, N) f32 CPU input -> (O, N) product.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let (k, n) = x.dims2()?;
        if k != self.depth {
            candle_core::bail!("packed product: weights take {} inputs, got {:?}", self.depth, x.shape());
        }
        let x = x.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("packed product: the input is not on the CPU");
        };
        // Not zeroed first: the product writes every element (zeroing was a
        // pass over memory of its own, 7 MiB a product at batch 32).
        let len = self.rows * n;
        let mut out = Vec::with_capacity(len);
        self.matmul(Simd::detect(), slice::<f32>(cpu, layout)?, n, &mut out.spare_capacity_mut()[..len]);
        // SAFETY: `matmul` wrote all `len` elements.
        unsafe { out.set_len(len) };
        Tensor::from_vec(out, (self.rows, n), &candle_core::Device::Cpu)
    }

    /// out (rows, n) = W x (depth, n), all row-major (in bf16 the input is
    /// rounded first, as the weights were; in int16 each pixel's inputs are
    /// scaled to integers, see `operand_max`). Writes every element of `out`.
    pub(crate) fn matmul(&self, simd: Simd, x: &[f32], n: usize, out: &mut [MaybeUninit<f32>]) {
        let k = self.depth;
        assert_eq!(x.len(), k * n, "input is not {k} x {n}");
        assert_eq!(out.len(), self.rows * n, "output is not {} x {n}", self.rows);
        match &self.panels {
            Panels::F32(lines) => {
                // Whole tiles are read straight from the input; the last,
                // partial one is copied out with zero padding first.
                let mr = tile_pixels(simd);
                let (full, cols_left) = (n / mr, n % mr);
                let mut last = vec![0f32; if cols_left > 0 { k * mr } else { 0 }];
                for (c, d) in last.chunks_exact_mut(mr).enumerate() {
                    d[..cols_left].copy_from_slice(&x[c * n + full * mr..(c + 1) * n]);
                }
                let tile = |b: usize| if b < full { (&x[b * mr..], n) } else { (&last[..], mr) };
                let kc = if simd == Simd::Avx512 { k } else { KC };
                self.product(simd, lines, k, n, mr, kc, tile, None, out, |panel, ahead, xs, ldx, rows, tile| kernel(simd, panel, ahead, xs, ldx, rows, tile));
            }
            Panels::Bf16(lines) => {
                let steps = steps(Precision::Bf16, k);
                let vector = simd == Simd::Avx512 && Simd::has_bf16();
                let pairs = pair_tiles(x, k, n, MAX_TILE, |_, _| (), |_, even, odd, dst| bf16_pair_row(vector, even, odd, dst));
                let tile = |b: usize| (&pairs[b * steps * MAX_TILE..(b + 1) * steps * MAX_TILE], MAX_TILE);
                self.product(simd, lines, steps, n, MAX_TILE, steps, tile, None, out, |panel, ahead, xs, ldx, _, tile| {
                    kernel_bf16(vector, panel, ahead, xs, ldx, tile)
                });
            }
            Panels::Int16(lines, row_scales) => {
                let steps = steps(Precision::Int16, k);
                // Each group of tiles scales its own pixels (their inputs are then in cache).
                let mut pixel_scales = vec![0f32; n];
                let scales = DisjointParts::new(&mut pixel_scales);
                let group_scales = |p0: usize, cols: usize| {
                    // SAFETY: groups cover distinct pixels; `pixel_scales` outlives `pair_tiles`.
                    Quantize::for_pixels(simd, x, n, p0, unsafe { scales.part(p0, cols) })
                };
                let pairs = pair_tiles(x, k, n, INT16_TILE, group_scales, |quantize, even, odd, dst| quantize.pairs(simd, even, odd, dst));
                let tile = |b: usize| (&pairs[b * steps * INT16_TILE..(b + 1) * steps * INT16_TILE], INT16_TILE);
                let vector = simd != Simd::Baseline;
                self.product(simd, lines, steps, n, INT16_TILE, KC, tile, Some((row_scales, &pixel_scales)), out, |panel, ahead, xs, ldx, rows, tile| {
                    kernel_int16(vector, panel, ahead, xs, ldx, rows, tile)
                });
            }
        }
    }

    /// The product over `steps` packed steps along K, in tiles of `mr`
    /// pixels: `tile(b)` gives tile b's input (step c of pixel r at
    /// `c * ldx + r`) and `kernel` adds a block of steps of a panel times it
    /// to a tile of sums (its `rows` argument: the panel's output channels
    /// that exist). Split over the rayon pool by runs of tiles and panels of
    /// output channels; within a task, blocks of `kc` steps run over all the
    /// run's tiles, so that a block of the panel is read from L1 once per tile.
    /// `scales` (by output channel, by pixel) multiply each finished sum.
    #[allow(clippy::too_many_arguments)] // the operands, their shape and the kernel
    fn product<'a, T: Copy + Sync + 'a>(
        &self,
        simd: Simd,
        lines: &[Line<T>],
        steps: usize,
        n: usize,
        mr: usize,
        kc: usize,
        tile: impl Fn(usize) -> (&'a [T], usize) + Sync,
        scales: Option<(&[f32], &[f32])>,
        out: &mut [MaybeUninit<f32>],
        kernel: impl Fn(&[Line<T>], &[Line<T>], &[T], usize, usize, &mut Tile) + Sync,
    ) {
        let m = self.rows;
        if n == 0 || m == 0 {
            return;
        }
        let out = DisjointParts::uninit(out);
        let panel_len = steps * LINES;
        let (panels, tiles) = (m.div_ceil(PANEL), n.div_ceil(mr));
        let runs = tiles.div_ceil(RUN_TILES);
        let blocks = steps.div_ceil(kc.max(1)).max(1);
        // Panel-minor order: a worker's consecutive tasks walk the panels, so
        // the panel after this one is the one to bring into cache.
        (0..runs * panels).into_par_iter().for_each(|task| {
            let (run, p) = (task / panels, task % panels);
            let panel = &lines[p * panel_len..(p + 1) * panel_len];
            let o0 = p * PANEL;
            let orows = PANEL.min(m - o0);
            let run_tiles = run * RUN_TILES..tiles.min((run + 1) * RUN_TILES);
            // One tile of sums per tile of the run (they start zeroed), or
            // without blocks one in all, cleared before each tile.
            let mut sums = vec![[[0f32; PANEL]; MAX_TILE]; if blocks > 1 { run_tiles.len() } else { 1 }];
            // The next panel is fetched into cache a slice per kernel call, while
            // this one computes (weights come from memory: a network's do not fit in cache).
            let next = lines.get((p + 1) * panel_len..(p + 2) * panel_len).unwrap_or(&[]);
            let mut next = next.chunks(next.len().div_ceil(blocks * run_tiles.len()).max(1));
            for block in 0..blocks {
                let steps_in = block * kc..steps.min((block + 1) * kc);
                let weights = &panel[steps_in.start * LINES..steps_in.end * LINES];
                for (t, b) in run_tiles.clone().enumerate() {
                    let (xs, ldx) = tile(b);
                    assert!(ldx >= mr && (steps == 0 || xs.len() >= (steps - 1) * ldx + mr), "tile reads past the input");
                    let acc = &mut sums[if blocks > 1 { t } else { 0 }];
                    if blocks == 1 {
                        acc.iter_mut().for_each(|row| row.fill(0.0));
                    }
                    kernel(weights, next.next().unwrap_or(&[]), &xs[steps_in.start * ldx..], ldx, orows, acc);
                    if block + 1 < blocks {
                        continue;
                    }
                    let (p0, cols) = (b * mr, mr.min(n - b * mr));
                    let scales = scales.map(|(rows, pixels)| (&rows[o0..o0 + orows], &pixels[p0..p0 + cols]));
                    // SAFETY: rows o0..o0+orows, columns p0..p0+cols belong to this task alone; `out` outlives the loop.
                    let row = |j: usize| unsafe { out.part_ptr((o0 + j) * n + p0, cols) };
                    store_tile(simd, acc, orows, cols, scales, row);
                }
            }
        });
    }
}

/// Writes a finished tile of sums (`acc[r][j]`: pixel r, output channel j)
/// to the output rows (`row(j)`: where channel j's `cols` pixels go, to be
/// written only), times the channel's and the pixel's scale where given.
fn store_tile(simd: Simd, acc: &mut Tile, orows: usize, cols: usize, scales: Option<(&[f32], &[f32])>, row: impl Fn(usize) -> *mut f32) {
    if let Some((rows, pixels)) = scales {
        for (sums, p) in acc.iter_mut().zip(pixels) {
            sums.iter_mut().zip(rows).for_each(|(v, o)| *v *= o * p);
        }
    }
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if simd != Simd::Baseline {
        // SAFETY: AVX2 is there (`Simd::detect`).
        done = unsafe { store_tile_avx2(acc, orows, cols, &row) };
    }
    let _ = simd;
    for j in done..orows {
        let at = row(j);
        for (r, sums) in acc.iter().take(cols).enumerate() {
            // SAFETY: `row(j)` has room for `cols` values.
            unsafe { at.add(r).write(sums[j]) };
        }
    }
}

/// `store_tile` for whole groups of 8 channels and up to 8 pixels: an 8 x 8
/// transpose in registers and a store or two per channel, instead of a
/// scalar load and store per sum (those were 4% of batch-1 int16 Xception,
/// perf). Returns the channels it wrote.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn store_tile_avx2(acc: &Tile, orows: usize, cols: usize, row: &impl Fn(usize) -> *mut f32) -> usize {
    use std::arch::x86_64::*;
    if cols > 8 {
        return 0;
    }
    let lanes: [i32; 8] = std::array::from_fn(|i| if i < cols { -1 } else { 0 });
    // SAFETY (all accesses): tile rows hold PANEL >= j + 8 floats; each
    // output row holds `cols` floats, the lanes the mask stores.
    let mask = unsafe { _mm256_loadu_si256(lanes.as_ptr() as *const __m256i) };
    let mut j = 0;
    while j + 8 <= orows {
        let v: [__m256; 8] = std::array::from_fn(|r| if r < cols { unsafe { _mm256_loadu_ps(acc[r].as_ptr().add(j)) } } else { _mm256_setzero_ps() });
        let (a0, a1, a2, a3) = (_mm256_unpacklo_ps(v[0], v[1]), _mm256_unpackhi_ps(v[0], v[1]), _mm256_unpacklo_ps(v[2], v[3]), _mm256_unpackhi_ps(v[2], v[3]));
        let (a4, a5, a6, a7) = (_mm256_unpacklo_ps(v[4], v[5]), _mm256_unpackhi_ps(v[4], v[5]), _mm256_unpacklo_ps(v[6], v[7]), _mm256_unpackhi_ps(v[6], v[7]));
        let (b0, b1) = (_mm256_shuffle_ps::<0x44>(a0, a2), _mm256_shuffle_ps::<0xee>(a0, a2));
        let (b2, b3) = (_mm256_shuffle_ps::<0x44>(a1, a3), _mm256_shuffle_ps::<0xee>(a1, a3));
        let (b4, b5) = (_mm256_shuffle_ps::<0x44>(a4, a6), _mm256_shuffle_ps::<0xee>(a4, a6));
        let (b6, b7) = (_mm256_shuffle_ps::<0x44>(a5, a7), _mm256_shuffle_ps::<0xee>(a5, a7));
        let t = [
            _mm256_permute2f128_ps::<0x20>(b0, b4),
            _mm256_permute2f128_ps::<0x20>(b1, b5),
            _mm256_permute2f128_ps::<0x20>(b2, b6),
            _mm256_permute2f128_ps::<0x20>(b3, b7),
            _mm256_permute2f128_ps::<0x31>(b0, b4),
            _mm256_permute2f128_ps::<0x31>(b1, b5),
            _mm256_permute2f128_ps::<0x31>(b2, b6),
            _mm256_permute2f128_ps::<0x31>(b3, b7),
        ];
        for (jj, t) in t.into_iter().enumerate() {
            let at = row(j + jj);
            // Plain stores for whole tiles of 6 (masked stores are slow on AMD's cores).
            match cols {
                6 => unsafe {
                    _mm_storeu_ps(at, _mm256_castps256_ps128(t));
                    _mm_storel_epi64(at.add(4) as *mut __m128i, _mm_castps_si128(_mm256_extractf128_ps::<1>(t)));
                },
                _ => unsafe { _mm256_maskstore_ps(at, mask, t) },
            }
        }
        j += 8;
    }
    j
}

/// Tiles per task of a product: enough pixels that a task's work dwarfs
/// reading its panel of weights, few enough that large products split into
/// many tasks (batch 1 at Xception's middle flow is 9 tiles: one run).
const RUN_TILES: usize = 64;

/// Steps along K per block in the f32 products of AVX2 (and the scalar
/// reference): a block of a panel (96 x 48 floats, 18 KiB) and of a tile's
/// input stay in L1 while the run's tiles go by. (The AVX-512 kernel, with
/// three times the accumulators, runs each tile over all of K.) Also the
/// pairs per block of the int16 products, whose 32-bit sums span one block.
const KC: usize = 96;

/// Packed steps along K: one per input channel in f32, one per pair in bf16 and int16.
fn steps(precision: Precision, depth: usize) -> usize {
    match precision {
        Precision::F32 => depth,
        Precision::Bf16 | Precision::Int16 => depth.div_ceil(2),
    }
}

/// `v` rounded to the nearest bfloat16 (ties to even), as its 16 bits.
fn bf16_bits(v: f32) -> u32 {
    let b = v.to_bits();
    if v.is_nan() {
        (b >> 16) | 0x40
    } else {
        (b + 0x7fff + ((b >> 16) & 1)) >> 16
    }
}

fn bf16_value(bits: u32) -> f32 {
    f32::from_bits(bits << 16)
}

/// (k, n) f32 rows -> pairs of rows in 32 bits, in tiles of `mr` pixels,
/// tile-major: step c of tile b's pixel r at `(b * steps + c) * mr + r` holds
/// input rows 2c and 2c+1 as `pair(group, even, odd, dst)` encodes them
/// (dst[i] from the group's pixel i; odd is None past k); zero past n. The
/// kernel then reads each tile contiguously. Tiles are made a group of
/// GROUP_TILES at a time; `group(p0, cols)` gives what `pair` needs for the
/// group's pixels p0..p0 + cols.
fn pair_tiles<G>(x: &[f32], k: usize, n: usize, mr: usize, group: impl Fn(usize, usize) -> G + Sync, pair: impl Fn(&G, &[f32], Option<&[f32]>, &mut [u32]) + Sync) -> Vec<u32> {
    assert!(mr <= MAX_TILE, "tiles hold at most {MAX_TILE} pixels");
    let steps = k.div_ceil(2);
    let tile_len = steps * mr;
    // Not zeroed first (a pass over memory of its own): every value is written below.
    let len = n.div_ceil(mr) * tile_len;
    let mut tiles = Vec::with_capacity(len);
    tiles.spare_capacity_mut()[..len].par_chunks_mut(GROUP_TILES * tile_len.max(1)).enumerate().for_each(|(g, tiles)| {
        let p0 = g * GROUP_TILES * mr;
        let cols = (GROUP_TILES * mr).min(n - p0);
        let state = group(p0, cols);
        let mut row = [0u32; GROUP_PIXELS];
        for c in 0..steps {
            let even = &x[2 * c * n + p0..][..cols];
            let odd = (2 * c + 1 < k).then(|| &x[(2 * c + 1) * n + p0..][..cols]);
            pair(&state, even, odd, &mut row[..cols]);
            // Whole tiles: the lanes past the last pixel copy `row`'s zeros.
            for (tile, pairs) in tiles.chunks_exact_mut(tile_len).zip(row.chunks_exact(mr)) {
                tile[c * mr..][..mr].iter_mut().zip(pairs).for_each(|(t, p)| _ = t.write(*p));
            }
        }
    });
    // SAFETY: each tile's steps x mr values were written above.
    unsafe { tiles.set_len(len) };
    tiles
}

/// Tiles `pair_tiles` makes at a time: each input row is read a group's
/// pixels at a time, and the group's inputs and tiles stay in L2.
const GROUP_TILES: usize = 8;
/// Most pixels in a group of tiles.
const GROUP_PIXELS: usize = GROUP_TILES * MAX_TILE;

/// dst[i] = the bf16 pair (even[i], odd[i]) (odd: zero where absent); with
/// the CPU's conversion instruction where `vector` (AVX-512 BF16).
fn bf16_pair_row(vector: bool, even: &[f32], odd: Option<&[f32]>, dst: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if vector {
        // SAFETY: `vector` is set only where `Simd::has_bf16` saw the feature.
        return unsafe { bf16_pair_row_avx512(even, odd, dst) };
    }
    let _ = vector;
    for (i, d) in dst.iter_mut().enumerate() {
        *d = bf16_bits(even[i]) | odd.map_or(0, |o| bf16_bits(o[i]) << 16);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn bf16_pair_row_avx512(even: &[f32], odd: Option<&[f32]>, dst: &mut [u32]) {
    use std::arch::x86_64::*;
    assert!(even.len() >= dst.len() && odd.is_none_or(|o| o.len() >= dst.len()));
    // Converting (odd, even) gives even's 16 bf16 then odd's; this
    // interleaves them into pairs.
    let order: [i16; 32] = std::array::from_fn(|i| (i / 2 + 16 * (i % 2)) as i16);
    // SAFETY (all accesses): within the slices, whose lengths are asserted above.
    let order = unsafe { _mm512_loadu_si512(order.as_ptr() as *const __m512i) };
    let mut i = 0;
    while i + 16 <= dst.len() {
        let e = unsafe { _mm512_loadu_ps(even.as_ptr().add(i)) };
        let o = odd.map_or(_mm512_setzero_ps(), |o| unsafe { _mm512_loadu_ps(o.as_ptr().add(i)) });
        let halves: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(o, e));
        unsafe { _mm512_storeu_si512(dst.as_mut_ptr().add(i) as *mut __m512i, _mm512_permutexvar_epi16(order, halves)) };
        i += 16;
    }
    for j in i..dst.len() {
        dst[j] = bf16_bits(even[j]) | odd.map_or(0, |o| bf16_bits(o[j]) << 16);
    }
}

/// Most pixels a tile holds (the AVX-512 kernels').
const MAX_TILE: usize = 9;

/// A kernel's output: tile[r][j] for pixel r and output channel j of the panel.
type Tile = [[f32; PANEL]; MAX_TILE];

/// Pixels per tile: as many as leave room in the vector registers for the
/// accumulators and the weight vectors (AVX-512: 9 x 3 + 3 of 32 registers;
/// AVX2, a third of a panel at a time: 6 x 2 + 2 of 16).
fn tile_pixels(simd: Simd) -> usize {
    match simd {
        Simd::Avx512 => 9,
        Simd::Avx2 => 6,
        Simd::Baseline => 4,
    }
}

/// tile[r][j] += sum_c panel[c][j] * xs[c * ldx + r] for the tile's pixels r
/// and the panel's first `rows` channels (others may be left as they were);
/// meanwhile it asks for `ahead` to be brought into cache.
fn kernel(simd: Simd, panel: &[Line<f32>], ahead: &[Line<f32>], xs: &[f32], ldx: usize, rows: usize, tile: &mut Tile) {
    // `product` asserts that the tile's input holds these K rows.
    let k = panel.len() / LINES;
    match simd {
        // SAFETY: `Simd::detect` returns these levels only after seeing the
        // CPU's features; `product` asserts the lengths the kernels read within.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { kernel_avx512(panel, ahead, xs, ldx, k, tile) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { kernel_avx2(panel, ahead, xs, ldx, k, rows, tile) },
        _ => kernel_scalar(panel, xs, ldx, k, tile_pixels(simd), tile),
    }
}

/// The reference the vector kernels are tested against (without AVX2 the
/// network does not pack its weights).
fn kernel_scalar(panel: &[Line<f32>], xs: &[f32], ldx: usize, k: usize, mr: usize, tile: &mut Tile) {
    for c in 0..k {
        let w = &panel[c * LINES..(c + 1) * LINES];
        for (r, row) in tile.iter_mut().take(mr).enumerate() {
            let xv = xs[c * ldx + r];
            for (j, t) in row.iter_mut().enumerate() {
                *t += w[j / 16].0[j % 16] * xv;
            }
        }
    }
}

/// 9 pixels x 48 channels in 27 zmm accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn kernel_avx512(panel: &[Line<f32>], ahead: &[Line<f32>], xs: &[f32], ldx: usize, k: usize, tile: &mut Tile) {
    use std::arch::x86_64::*;
    const MR: usize = 9;
    let (w, x) = (panel.as_ptr() as *const f32, xs.as_ptr());
    // SAFETY: each tile row holds PANEL floats.
    let mut acc: [[__m512; LINES]; MR] = std::array::from_fn(|r| std::array::from_fn(|l| unsafe { _mm512_loadu_ps(tile[r].as_ptr().add(l * 16)) }));
    for c in 0..k {
        for line in ahead.iter().skip(c * LINES).take(LINES) {
            _mm_prefetch::<_MM_HINT_T1>(line.0.as_ptr() as *const i8);
        }
        // SAFETY (all reads): c < k, within the panel (k x PANEL) and the tile's input (`kernel` asserts).
        let wv: [__m512; LINES] = std::array::from_fn(|l| unsafe { _mm512_load_ps(w.add(c * PANEL + l * 16)) });
        for (r, a) in acc.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(unsafe { *x.add(c * ldx + r) });
            for l in 0..LINES {
                a[l] = _mm512_fmadd_ps(wv[l], xv, a[l]);
            }
        }
    }
    for (t, a) in tile.iter_mut().zip(&acc) {
        for (l, v) in a.iter().enumerate() {
            // SAFETY: each tile row holds PANEL floats.
            unsafe { _mm512_storeu_ps(t.as_mut_ptr().add(l * 16), *v) };
        }
    }
}

/// 6 pixels x 16 channels in 12 ymm accumulators, for each third of the
/// panel that holds output channels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2(panel: &[Line<f32>], ahead: &[Line<f32>], xs: &[f32], ldx: usize, k: usize, rows: usize, tile: &mut Tile) {
    use std::arch::x86_64::*;
    const MR: usize = 6;
    let (w, x) = (panel.as_ptr() as *const f32, xs.as_ptr());
    // (A call's share of the next panel is a few lines: asked for up front,
    // it keeps the inner loop free of branches.)
    for line in ahead {
        _mm_prefetch::<_MM_HINT_T1>(line.0.as_ptr() as *const i8);
    }
    for part in 0..rows.div_ceil(16).min(LINES) {
        // SAFETY (tile accesses): each tile row holds PANEL floats.
        let mut acc: [[__m256; 2]; MR] = std::array::from_fn(|r| unsafe {
            let at = tile[r].as_ptr().add(part * 16);
            [_mm256_loadu_ps(at), _mm256_loadu_ps(at.add(8))]
        });
        for c in 0..k {
            // SAFETY (all reads): c < k, within the panel (k x PANEL) and the tile's input (`kernel` asserts).
            let at = c * PANEL + part * 16;
            let (w0, w1) = unsafe { (_mm256_load_ps(w.add(at)), _mm256_load_ps(w.add(at + 8))) };
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_set1_ps(unsafe { *x.add(c * ldx + r) });
                a[0] = _mm256_fmadd_ps(w0, xv, a[0]);
                a[1] = _mm256_fmadd_ps(w1, xv, a[1]);
            }
        }
        for (t, a) in tile.iter_mut().zip(&acc) {
            // SAFETY: each tile row holds PANEL floats.
            unsafe {
                _mm256_storeu_ps(t.as_mut_ptr().add(part * 16), a[0]);
                _mm256_storeu_ps(t.as_mut_ptr().add(part * 16 + 8), a[1]);
            }
        }
    }
}

/// The bf16 product's tile (9 pixels), added to `tile`: `vector` where the
/// CPU has AVX-512 BF16, else the scalar reference.
fn kernel_bf16(vector: bool, panel: &[Line<u32>], ahead: &[Line<u32>], xs: &[u32], ldx: usize, tile: &mut Tile) {
    // `product` asserts that the tile's input holds these K/2 rows of pairs.
    let k2 = panel.len() / LINES;
    #[cfg(target_arch = "x86_64")]
    if vector {
        // SAFETY: `vector` is set only where `Simd::has_bf16` saw the feature;
        // the lengths the kernel reads within are asserted by `product`.
        return unsafe { kernel_bf16_avx512(panel, ahead, xs, ldx, k2, tile) };
    }
    let _ = (vector, ahead);
    for c in 0..k2 {
        let w = &panel[c * LINES..(c + 1) * LINES];
        for (r, row) in tile.iter_mut().enumerate() {
            let xv = xs[c * ldx + r];
            for (j, t) in row.iter_mut().enumerate() {
                let wv = w[j / 16].0[j % 16];
                *t += bf16_value(wv & 0xffff) * bf16_value(xv & 0xffff) + bf16_value(wv >> 16) * bf16_value(xv >> 16);
            }
        }
    }
}

/// 9 pixels x 48 channels in 27 zmm accumulators, two input channels per
/// BF16 dot-product instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel_bf16_avx512(panel: &[Line<u32>], ahead: &[Line<u32>], xs: &[u32], ldx: usize, k2: usize, tile: &mut Tile) {
    use std::arch::x86_64::*;
    const MR: usize = 9;
    let (w, x) = (panel.as_ptr() as *const __m512i, xs.as_ptr());
    // SAFETY: each tile row holds PANEL floats.
    let mut acc: [[__m512; LINES]; MR] = std::array::from_fn(|r| std::array::from_fn(|l| unsafe { _mm512_loadu_ps(tile[r].as_ptr().add(l * 16)) }));
    for c in 0..k2 {
        for line in ahead.iter().skip(c * LINES).take(LINES) {
            _mm_prefetch::<_MM_HINT_T1>(line.0.as_ptr() as *const i8);
        }
        // SAFETY (all reads): c < k2, within the panel (k2 x PANEL) and the tile's input (`product` asserts).
        let wv: [__m512bh; LINES] = std::array::from_fn(|l| unsafe { std::mem::transmute(_mm512_load_si512(w.add(c * LINES + l))) });
        for (r, a) in acc.iter_mut().enumerate() {
            let xv: __m512bh = std::mem::transmute(_mm512_set1_epi32(unsafe { *x.add(c * ldx + r) } as i32));
            for l in 0..LINES {
                a[l] = _mm512_dpbf16_ps(a[l], wv[l], xv);
            }
        }
    }
    for (t, a) in tile.iter_mut().zip(&acc) {
        for (l, v) in a.iter().enumerate() {
            // SAFETY: each tile row holds PANEL floats.
            unsafe { _mm512_storeu_ps(t.as_mut_ptr().add(l * 16), *v) };
        }
    }
}

/// Pixels per int16 tile: 6 x 2 accumulators and 2 weight vectors of AVX2's
/// 16 registers.
const INT16_TILE: usize = 6;

/// Largest |integer| of a weight row and of a pixel's inputs in int16
/// products of depth `k`: the most that keeps every 32-bit sum exact, the
/// same for both operands, whose rounding errors then weigh alike. The
/// kernel sums at most a block of KC pairs in 32 bits before adding the
/// block to f32 sums, so only the block's depth bounds it (depth x max^2 <
/// 2^31): 3344 at depths from 192 up, about 11.7 bits and a sign.
fn operand_max(k: usize) -> i32 {
    let summed = k.clamp(1, 2 * KC);
    ((i32::MAX as f64 / summed as f64).sqrt() as i32).min(i16::MAX as i32)
}

/// A 16-bit integer's bits, for half of a pair.
fn int16_bits(q: i32) -> u32 {
    q as i16 as u16 as u32
}

/// Each pixel's largest |input| over the K rows, as the bits of an f32 (for
/// non-negative floats the bits order as the values, infinity and NaN last).
struct ColumnMax<'a> {
    x: &'a [f32],
    n: usize,
}

impl ColumnMax<'_> {
    simd_versions!(max(p0: usize, m: &mut [u32]));

    #[inline(always)]
    fn max(&self, p0: usize, m: &mut [u32]) {
        for row in self.x.chunks_exact(self.n) {
            for (m, v) in m.iter_mut().zip(&row[p0..]) {
                *m = (*m).max(v.to_bits() & 0x7fff_ffff);
            }
        }
    }
}

/// A group of pixels' inputs to 16-bit integer pairs: each value times its
/// pixel's inverse scale, rounded to nearest even.
struct Quantize {
    inverse: [f32; GROUP_PIXELS],
}

impl Quantize {
    /// For the pixels (columns) p0..p0 + scales.len() of the (k, n) input
    /// `x`; writes each one's scale for the int16 product into `scales`: its
    /// largest |input| maps to `operand_max(k)`. A pixel whose inputs are
    /// all zero (or so small, below about 1e-34, that the inverse overflows)
    /// gets scale 0; one with a NaN or infinite input, scale NaN (its outputs
    /// are NaN, as the f32 product's would be NaN or infinite) and inverse 0.
    fn for_pixels(simd: Simd, x: &[f32], n: usize, p0: usize, scales: &mut [f32]) -> Self {
        let cols = scales.len();
        assert!(cols <= GROUP_PIXELS && p0 + cols <= n, "pixels {p0}..{} of {n} are not a group", p0 + cols);
        let mut max = [0u32; GROUP_PIXELS];
        ColumnMax { x, n }.run(simd, p0, &mut max[..cols]);
        let q = operand_max(x.len() / n.max(1)) as f32;
        let mut inverse = [0f32; GROUP_PIXELS];
        for ((s, i), bits) in scales.iter_mut().zip(&mut inverse).zip(max) {
            (*s, *i) = match f32::from_bits(bits) {
                m if m.is_finite() && (q / m).is_finite() => (m / q, q / m),
                m if m.is_finite() => (0.0, 0.0),
                _ => (f32::NAN, 0.0),
            };
        }
        Self { inverse }
    }

    /// dst[i] = the pair (even[i], odd[i]) of the group's pixel i (odd: zero where absent).
    fn pairs(&self, simd: Simd, even: &[f32], odd: Option<&[f32]>, dst: &mut [u32]) {
        let inverse = &self.inverse[..dst.len()];
        let (even, odd) = (&even[..dst.len()], odd.map(|o| &o[..dst.len()]));
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if simd != Simd::Baseline {
            // SAFETY: AVX2 is there (`Simd::detect`); the slices are cut to dst's length above.
            done = unsafe { Self::pairs_avx2(inverse, even, odd, dst) };
        }
        let _ = simd;
        let q = |v: f32, s: f32| int16_bits((v * s).round_ties_even() as i32);
        for i in done..dst.len() {
            dst[i] = q(even[i], inverse[i]) | odd.map_or(0, |o| q(o[i], inverse[i]) << 16);
        }
    }

    /// The whole vectors of `pairs`; returns how many values it did.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn pairs_avx2(inverse: &[f32], even: &[f32], odd: Option<&[f32]>, dst: &mut [u32]) -> usize {
        use std::arch::x86_64::*;
        let mut i = 0;
        // SAFETY (all accesses): i + 8 <= dst.len(), the length of every slice.
        while i + 8 <= dst.len() {
            let s = unsafe { _mm256_loadu_ps(inverse.as_ptr().add(i)) };
            // Converting rounds to nearest even (the default rounding mode).
            let e = _mm256_cvtps_epi32(_mm256_mul_ps(unsafe { _mm256_loadu_ps(even.as_ptr().add(i)) }, s));
            let o = odd.map_or(_mm256_setzero_si256(), |o| _mm256_cvtps_epi32(_mm256_mul_ps(unsafe { _mm256_loadu_ps(o.as_ptr().add(i)) }, s)));
            let pair = _mm256_blend_epi16::<0b1010_1010>(e, _mm256_slli_epi32::<16>(o));
            unsafe { _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, pair) };
            i += 8;
        }
        i
    }
}

/// The int16 product's tile (6 pixels), added to `tile`: each block's sums
/// are exact 32-bit integers (then converted to f32). `vector`: AVX2.
fn kernel_int16(vector: bool, panel: &[Line<u32>], ahead: &[Line<u32>], xs: &[u32], ldx: usize, rows: usize, tile: &mut Tile) {
    // `product` asserts that the tile's input holds these K/2 rows of pairs.
    let k2 = panel.len() / LINES;
    #[cfg(target_arch = "x86_64")]
    if vector {
        // SAFETY: `vector` is set only where `Simd::detect` saw AVX2; the
        // lengths the kernel reads within are asserted by `product`.
        return unsafe { kernel_int16_avx2(panel, ahead, xs, ldx, k2, rows, tile) };
    }
    let _ = (vector, ahead, rows);
    let half = |v: u32, h: u32| (v >> (16 * h)) as u16 as i16 as i32;
    for (r, row) in tile.iter_mut().take(INT16_TILE).enumerate() {
        for (j, t) in row.iter_mut().enumerate() {
            let mut sum = 0i32;
            for c in 0..k2 {
                let (w, x) = (panel[c * LINES + j / 16].0[j % 16], xs[c * ldx + r]);
                sum += half(w, 0) * half(x, 0) + half(w, 1) * half(x, 1);
            }
            *t += sum as f32;
        }
    }
}

/// 6 pixels x 16 channels in 12 ymm accumulators of 32-bit sums, for each
/// third of the panel that holds output channels; two input channels per
/// multiply-add instruction (`vpmaddwd`, pairs of 16-bit integers).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn kernel_int16_avx2(panel: &[Line<u32>], ahead: &[Line<u32>], xs: &[u32], ldx: usize, k2: usize, rows: usize, tile: &mut Tile) {
    use std::arch::x86_64::*;
    const MR: usize = INT16_TILE;
    let (w, x) = (panel.as_ptr() as *const __m256i, xs.as_ptr());
    for line in ahead {
        _mm_prefetch::<_MM_HINT_T1>(line.0.as_ptr() as *const i8);
    }
    for part in 0..rows.div_ceil(16).min(LINES) {
        let mut acc = [[_mm256_setzero_si256(); 2]; MR];
        for c in 0..k2 {
            // SAFETY (all reads): c < k2, within the panel (k2 x LINES lines
            // of two ymm each) and the tile's input (`product` asserts).
            let at = 2 * (c * LINES + part);
            let (w0, w1) = unsafe { (_mm256_load_si256(w.add(at)), _mm256_load_si256(w.add(at + 1))) };
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_set1_epi32(unsafe { *x.add(c * ldx + r) } as i32);
                a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(w0, xv));
                a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(w1, xv));
            }
        }
        for (t, a) in tile.iter_mut().zip(&acc) {
            // SAFETY: each tile row holds PANEL floats.
            unsafe {
                let at = t.as_mut_ptr().add(part * 16);
                _mm256_storeu_ps(at, _mm256_add_ps(_mm256_loadu_ps(at), _mm256_cvtepi32_ps(a[0])));
                _mm256_storeu_ps(at.add(8), _mm256_add_ps(_mm256_loadu_ps(at.add(8)), _mm256_cvtepi32_ps(a[1])));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A filled output as `matmul` takes it (the tests fill it with NaN, so
    /// that an element the product leaves unwritten shows).
    fn as_uninit(out: &mut [f32]) -> &mut [MaybeUninit<f32>] {
        // SAFETY: same layout; `matmul` writes only initialised values.
        unsafe { &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>]) }
    }

    /// Every vector unit's product equals the f64 product: several panels,
    /// the last one partial, a partial last tile, fewer pixels than a tile,
    /// and K in several blocks (the last one partial).
    #[test]
    fn every_vector_unit_computes_the_product() {
        for (m, k, n) in [(100, 19, 33), (7, 5, 4), (50, 2 * KC + 9, 13)] {
            check_product(m, k, n);
        }
    }

    fn check_product(m: usize, k: usize, n: usize) {
        let w = Simd::test_values(m * k);
        let x: Vec<f32> = Simd::test_values(k * n + 5)[5..].to_vec();
        let packed = PackedWeights::pack(&w, m, k, Precision::F32);
        let mut vector_bits: Option<Vec<f32>> = None;
        for level in Simd::levels_to_test() {
            let mut out = vec![f32::NAN; m * n];
            packed.matmul(level, &x, n, as_uninit(&mut out));
            // The vector kernels differ in tile shape only: each output is the
            // same chain of fused multiply-adds over k.
            if level != Simd::Baseline {
                match &vector_bits {
                    Some(bits) => assert!(bits.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()), "{level:?} differs in bits"),
                    None => vector_bits = Some(out.clone()),
                }
            }
            for i in 0..m {
                for j in 0..n {
                    let terms = (0..k).map(|c| w[i * k + c] as f64 * x[c * n + j] as f64);
                    let (want, size) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
                    let got = out[i * n + j] as f64;
                    // f32 sums of k terms: error within a few ulps of the terms' magnitude.
                    assert!((got - want).abs() <= 1e-6 * size.max(1.0), "{level:?}: ({i},{j}) {got} vs {want}");
                }
            }
        }
    }

    /// The bf16 product equals the f64 product of the rounded operands, on
    /// the vector unit where the CPU has one and in the scalar reference:
    /// odd K (a half-empty last pair), several panels, a partial last tile.
    #[test]
    fn the_bf16_product_is_the_product_of_the_rounded_operands() {
        for (m, k, n) in [(100, 19, 33), (7, 6, 4), (50, 1, 10)] {
            let w = Simd::test_values(m * k);
            let x: Vec<f32> = Simd::test_values(k * n + 3)[3..].iter().map(|v| v * 1.013).collect();
            let packed = PackedWeights::pack(&w, m, k, Precision::Bf16);
            let round = |v: f32| bf16_value(bf16_bits(v)) as f64;
            for level in [Simd::Baseline, Simd::detect()] {
                let mut out = vec![f32::NAN; m * n];
                packed.matmul(level, &x, n, as_uninit(&mut out));
                for i in 0..m {
                    for j in 0..n {
                        let terms = (0..k).map(|c| round(w[i * k + c]) * round(x[c * n + j]));
                        let (want, size) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
                        let got = out[i * n + j] as f64;
                        assert!((got - want).abs() <= 1e-6 * size.max(1.0), "{level:?}: ({i},{j}) {got} vs {want}");
                    }
                }
            }
        }
    }

    /// The int16 product equals the exact integer product of the quantized
    /// operands times their scales, in the same bits on every vector unit,
    /// and lies within the quantization's bound of the f32 product: odd K,
    /// several panels, a partial last tile, K in several blocks, a pixel of
    /// zeros, one holding a NaN and one of values too small to scale (which
    /// count as zeros).
    #[test]
    fn the_int16_product_is_the_product_of_the_quantized_operands() {
        // (The last shape's pixels span several groups of tiles, each with its own scales.)
        for (m, k, n) in [(100, 19, 33), (7, 6, 4), (50, 1, 10), (50, 4 * KC + 7, 13), (20, 9, 2 * GROUP_TILES * INT16_TILE + 5)] {
            // A NaN in pixel 2 (and in the last group's second-last pixel).
            let nan_pixel = |j: usize| j == 2 || (n > GROUP_TILES * INT16_TILE && j == n - 2);
            let w = Simd::test_values(m * k);
            let mut x: Vec<f32> = Simd::test_values(k * n + 3)[3..].iter().map(|v| v * 1.013).collect();
            for c in 0..k {
                x[c * n + 1] = 0.0;
                x[c * n + 3] = -1e-40;
            }
            for j in (0..n).filter(|j| nan_pixel(*j)) {
                x[(k / 2) * n + j] = f32::NAN;
            }
            let packed = PackedWeights::pack(&w, m, k, Precision::Int16);
            let qmax = operand_max(k) as f64;
            let weight_scale: Vec<f32> = w.chunks(k).map(|r| r.iter().fold(0f32, |a, v| a.max(v.abs())) / qmax as f32).collect();
            let mut bits: Option<Vec<u32>> = None;
            for level in Simd::levels_to_test() {
                let mut out = vec![f32::NAN; m * n];
                packed.matmul(level, &x, n, as_uninit(&mut out));
                let these: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
                match &bits {
                    Some(b) => assert!(b == &these, "{level:?} differs in bits"),
                    None => bits = Some(these),
                }
                for j in 0..n {
                    let column: Vec<f64> = (0..k).map(|c| x[c * n + j] as f64).collect();
                    let amax = column.iter().fold(0f64, |a, v| a.max(v.abs()));
                    for i in 0..m {
                        let got = out[i * n + j] as f64;
                        if nan_pixel(j) {
                            assert!(got.is_nan(), "({i},{j}): a NaN input gives {got}");
                            continue;
                        }
                        if j == 3 {
                            assert_eq!(got, 0.0, "({i},{j}): inputs too small to scale");
                            continue;
                        }
                        let (sw, sx) = (weight_scale[i] as f64, amax / qmax);
                        let (mut exact, mut size, mut f32_sum, mut bound) = (0i64, 0f64, 0f64, 0f64);
                        for (c, xv) in column.iter().enumerate() {
                            let wv = w[i * k + c] as f64;
                            let qw = (w[i * k + c] / weight_scale[i]).round_ties_even() as i64;
                            let qx = if amax > 0.0 { (*xv as f32 * (qmax / amax) as f32).round_ties_even() as i64 } else { 0 };
                            exact += qw * qx;
                            size += (qw * qx).abs() as f64;
                            f32_sum += wv * xv;
                            bound += sw / 2.0 * xv.abs() + (wv.abs() + sw / 2.0) * sx / 2.0;
                        }
                        let want = exact as f64 * sw * sx;
                        assert!((got - want).abs() <= 1e-6 * size * sw * sx + 1e-30, "{level:?}: ({i},{j}) {got} vs {want}");
                        assert!((got - f32_sum).abs() <= 1.001 * bound + 1e-6 * size * sw * sx, "{level:?}: ({i},{j}) {got} vs f32 {f32_sum}, bound {bound}");
                    }
                }
            }
        }
    }

    /// Every operand at its largest integer and of one sign: each block's
    /// 32-bit sums reach their most and must not wrap.
    #[test]
    fn int16_sums_of_the_largest_operands_stay_exact() {
        let (m, k, n) = (20, 4 * KC + 7, 2 * INT16_TILE + 1);
        let packed = PackedWeights::pack(&vec![0.5; m * k], m, k, Precision::Int16);
        let x: Vec<f32> = (0..k * n).map(|i| if i % n % 2 == 0 { 3.0 } else { -3.0 }).collect();
        for level in Simd::levels_to_test() {
            let mut out = vec![f32::NAN; m * n];
            packed.matmul(level, &x, n, as_uninit(&mut out));
            for (i, v) in out.iter().enumerate() {
                let want = if i % n % 2 == 0 { 1.5 * k as f32 } else { -1.5 * k as f32 };
                assert!((v - want).abs() <= 1e-5 * want.abs(), "{level:?}: element {i} is {v}, not {want}");
            }
        }
    }

    #[test]
    fn int16_operands_cannot_overflow_the_sums() {
        for k in [1, 2, 27, 191, 192, 193, 728, 1536, 2064, 4096, 100_000, 1 << 30] {
            let q = operand_max(k) as i64;
            // The most a kernel call sums in 32 bits: a block of KC pairs, or all of a shorter K.
            let summed = k.min(2 * KC) as i64;
            assert!(summed * q * q <= i32::MAX as i64, "k = {k}");
            assert!(summed * (q + 1) * (q + 1) > i32::MAX as i64 || q == i16::MAX as i64, "k = {k}: {q} is not the most");
        }
        assert_eq!((operand_max(1), operand_max(1536)), (32767, 3344));
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even 1.
        assert_eq!(bf16_value(bf16_bits(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(bf16_value(bf16_bits(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert_eq!(bf16_value(bf16_bits(-2.5)), -2.5);
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
        assert_eq!(bf16_value(bf16_bits(f32::INFINITY)), f32::INFINITY);
    }
}
