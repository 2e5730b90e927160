//! GEMM-based convolutions for the CPU: the stride-1 k×k convolution
//! (any padding up to k − 1) and the 2×2 stride-2 transposed convolution,
//! each a custom op with its own backward pass.
//!
//! The convolution works through the batch's output pixels (numbered across
//! the whole batch, image-major) in chunks: part of one image, or a run of
//! whole small images so that deep, small layers still give the matrix
//! multiply wide blocks. For each chunk it gathers the k·k·C input values of
//! every pixel into a column matrix (`im2col`, row by row with
//! `memcpy`-sized copies, rows in parallel) and multiplies the (O × k·k·C)
//! weight matrix by it with the `gemm` crate, which runs on all rayon
//! threads; a chunk inside one image is written straight into the NCHW
//! output. The backward pass needs no scatter:
//! - the input gradient is a forward convolution of the output gradient with
//!   the kernel flipped in space and its channel axes swapped, padding
//!   k − 1 − p;
//! - the weight gradient is one long product accumulated over all N·H·W
//!   pixels, dW += dY · colsᵀ, chunk after chunk.
//!
//! Every output element is one dot product computed by one thread in a fixed
//! order, so results do not depend on thread scheduling.
//!
//! The transposed 2×2/2 convolution is a product (4·O × C) · (C × pixels)
//! followed by a pixel shuffle into the doubled image; its backward is the
//! reverse shuffle and two products.

mod direct;
mod winograd;

use super::cpu_f32;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Floats a chunk's column matrix (and its output tile) aims for (16 MiB;
/// small in unit tests, so that they split images into several chunks).
const CHUNK_FLOATS: usize = if cfg!(test) { 1 << 12 } else { 1 << 22 };

/// Fewest pixels in a chunk (narrower products waste the packing of the
/// weight matrix).
const MIN_CHUNK: usize = 256;

/// A raw pointer the parallel tasks write through, each to its own disjoint
/// set of elements.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every user writes only to elements no other task touches, and the
// buffer outlives the parallel loop.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so that closures capture the whole wrapper,
    /// which is `Sync`, rather than its raw-pointer field).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

fn threads() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `dst (m×n, row stride dst_rs) (+)= lhs (m×k) · rhs (k×n)`, with general
/// (row stride, column stride) for each operand; on all threads if `par`.
#[allow(clippy::too_many_arguments)]
fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
    par: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    // the bounds the strides reach, checked so that the unsafe call below
    // stays inside each slice
    let last =
        |(rs, cs): (usize, usize), rows: usize, cols: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(last((dst_rs, 1), m, n) < dst.len());
    assert!(last(lhs_strides, m, k) < lhs.len());
    assert!(last(rhs_strides, k, n) < rhs.len());
    // SAFETY: the pointers are valid for every element the strides address
    // (checked above); dst does not alias lhs or rhs (distinct borrows).
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_strides.1 as isize,
            lhs_strides.0 as isize,
            rhs.as_ptr(),
            rhs_strides.1 as isize,
            rhs_strides.0 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            if par { threads() } else { Parallelism::None },
        )
    }
}

/// The sizes of a stride-1 convolution.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    p: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    fn new(x: &[usize], wt: &[usize], p: usize) -> Result<Self> {
        let (&[n, c, h, w], &[o, wc, k, k2]) = (x, wt) else {
            candle_core::bail!("seg conv2d: expected 4-d input and weight, got {x:?} and {wt:?}")
        };
        if wc != c || k != k2 || k == 0 {
            candle_core::bail!("seg conv2d: weight {wt:?} does not fit input {x:?}");
        }
        if h + 2 * p < k || w + 2 * p < k {
            candle_core::bail!(
                "seg conv2d: input {h}x{w} (padding {p}) is smaller than the {k}x{k} kernel"
            );
        }
        Ok(Self {
            n,
            c,
            h,
            w,
            o,
            k,
            p,
            ho: h + 2 * p - k + 1,
            wo: w + 2 * p - k + 1,
        })
    }

    /// Rows of the column matrix.
    fn kk(&self) -> usize {
        self.c * self.k * self.k
    }

    fn out_pixels(&self) -> usize {
        self.ho * self.wo
    }
}

/// Chunks `[start, end)` of `n` images of `hw` pixels each, for a column
/// matrix of `rows` rows and an output tile of `out_rows` rows: equal parts
/// of one image, or runs of whole images.
fn chunks(n: usize, hw: usize, rows: usize, out_rows: usize) -> Vec<(usize, usize)> {
    let target = (CHUNK_FLOATS / rows.max(out_rows).max(1)).max(MIN_CHUNK);
    let mut v = Vec::new();
    if hw == 0 || n == 0 {
        return v;
    }
    if hw >= target {
        let parts = hw.div_ceil(target);
        let len = hw.div_ceil(parts);
        for img in 0..n {
            let mut s = 0;
            while s < hw {
                let e = (s + len).min(hw);
                v.push((img * hw + s, img * hw + e));
                s = e;
            }
        }
    } else {
        let per = (target / hw).max(1);
        let mut i = 0;
        while i < n {
            let e = (i + per).min(n);
            v.push((i * hw, e * hw));
            i = e;
        }
    }
    v
}

/// Walks the output pixels `[start, end)` as row segments:
/// `f(offset_in_chunk, image, out_row, first_col, len)`.
fn segments(
    g: &Geom,
    start: usize,
    end: usize,
    mut f: impl FnMut(usize, usize, usize, usize, usize),
) {
    let hw = g.out_pixels();
    let mut pos = start;
    while pos < end {
        let (img, pix) = (pos / hw, pos % hw);
        let (oy, ox) = (pix / g.wo, pix % g.wo);
        let len = (g.wo - ox).min(end - pos);
        f(pos - start, img, oy, ox, len);
        pos += len;
    }
}

/// Fills `cols` (kk × len, row-major) with the input values the output
/// pixels `[start, start + len)` see; rows in parallel.
fn im2col(x: &[f32], g: &Geom, start: usize, len: usize, cols: &mut [f32], par: bool) {
    let p = g.p as isize;
    let fill_row = |(r, dst_row): (usize, &mut [f32])| {
        let ci = r / (g.k * g.k);
        let (ky, kx) = (((r / g.k) % g.k) as isize, (r % g.k) as isize);
        segments(g, start, start + len, |off, img, oy, ox, seg| {
            let dst = &mut dst_row[off..off + seg];
            let iy = oy as isize + ky - p;
            if iy < 0 || iy >= g.h as isize {
                dst.fill(0.0);
                return;
            }
            let row = &x[((img * g.c + ci) * g.h + iy as usize) * g.w..][..g.w];
            // input column of dst[j] is first + j
            let first = ox as isize + kx - p;
            let lo = (-first).clamp(0, seg as isize) as usize;
            let hi = (g.w as isize - first).clamp(lo as isize, seg as isize) as usize;
            dst[..lo].fill(0.0);
            if hi > lo {
                let a = (first + lo as isize) as usize;
                dst[lo..hi].copy_from_slice(&row[a..a + hi - lo]);
            }
            dst[hi..].fill(0.0);
        });
    };
    let rows = cols[..g.kk() * len].chunks_mut(len.max(1));
    if par {
        rows.collect::<Vec<_>>()
            .into_par_iter()
            .enumerate()
            .for_each(fill_row);
    } else {
        rows.enumerate().for_each(fill_row);
    }
}

/// Copies channel rows of whole images `[start, end)` (a multiple of `hw`)
/// between an NCHW tensor with `ch` channels and a (ch × len) tile.
fn tile_to_nchw(tile: &[f32], out: &mut [f32], ch: usize, hw: usize, start: usize, end: usize) {
    let len = end - start;
    let img0 = start / hw;
    let region = &mut out[img0 * ch * hw..(end / hw) * ch * hw];
    region
        .par_chunks_mut(hw)
        .enumerate()
        .for_each(|(plane, dst)| {
            let (i, c) = (plane / ch, plane % ch);
            dst.copy_from_slice(&tile[c * len + i * hw..][..hw]);
        });
}

fn nchw_to_tile(src: &[f32], tile: &mut [f32], ch: usize, hw: usize, start: usize, end: usize) {
    let len = end - start;
    let img0 = start / hw;
    tile[..ch * len]
        .par_chunks_mut(len)
        .enumerate()
        .for_each(|(c, row)| {
            for (i, dst) in row.chunks_mut(hw).enumerate() {
                dst.copy_from_slice(&src[((img0 + i) * ch + c) * hw..][..hw]);
            }
        });
}

/// Where a chunk's channel rows are in an NCHW tensor of `ch` channels:
/// `Some(offset)` (rows `hw` apart) when the chunk lies inside one image.
fn in_one_image(start: usize, end: usize, ch: usize, hw: usize) -> Option<usize> {
    let (img, pix) = (start / hw, start % hw);
    (end <= (img + 1) * hw).then_some(img * ch * hw + pix)
}

/// Floats of a column matrix that stays in one core's L2 cache (1 MiB;
/// small in unit tests, so that they take this path too).
const L2_FLOATS: usize = if cfg!(test) { 1 << 11 } else { 1 << 18 };

/// Fewest pixels per chunk in the parallel-chunks mode.
const MIN_PAR_CHUNK: usize = if cfg!(test) { 16 } else { 64 };

/// Chunks of `total` batch-wide pixels for the parallel-chunks mode (each
/// task works on one chunk with a single-threaded product, its column matrix
/// in cache), or `None` when the layer has too few pixels for its width and
/// is better served by a few big chunks and multithreaded products.
fn parallel_chunks(total: usize, rows: usize) -> Option<Vec<(usize, usize)>> {
    let threads = rayon::current_num_threads();
    if threads < 2 {
        return None;
    }
    let mut len = L2_FLOATS / rows.max(1);
    if total < 4 * threads * len {
        len = len.min(total / (2 * threads));
    }
    if len < MIN_PAR_CHUNK {
        return None;
    }
    Some(
        (0..total.div_ceil(len))
            .map(|i| (i * len, ((i + 1) * len).min(total)))
            .collect(),
    )
}

/// Runs `step` over the chunks in a fixed number of contiguous groups (two
/// per thread), the groups in parallel and each group's chunks in order, and
/// returns each group's state in group order: sums built this way do not
/// depend on thread scheduling, and their memory stays bounded.
fn grouped<T: Send>(
    chunks: &[(usize, usize)],
    init: impl Fn() -> T + Sync,
    step: impl Fn(&mut T, (usize, usize)) + Sync,
) -> Vec<T> {
    let groups = (2 * rayon::current_num_threads().max(1))
        .min(chunks.len())
        .max(1);
    let per = chunks.len().div_ceil(groups).max(1);
    chunks
        .par_chunks(per)
        .map(|grp| {
            let mut state = init();
            for &c in grp {
                step(&mut state, c);
            }
            state
        })
        .collect()
}

/// The element-wise sum of equal-length vectors, added in their order.
fn sum_in_order(parts: &[Vec<f32>], len: usize) -> Vec<f32> {
    let mut a = vec![0f32; len];
    a.par_chunks_mut(4096).enumerate().for_each(|(i, dst)| {
        for p in parts {
            for (d, s) in dst.iter_mut().zip(&p[i * 4096..]) {
                *d += s;
            }
        }
    });
    a
}

/// [`conv_forward`] in the parallel-chunks mode.
fn conv_forward_par(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    g: &Geom,
    chunks: Vec<(usize, usize)>,
) -> Vec<f32> {
    let (hw, kk, o) = (g.out_pixels(), g.kk(), g.o);
    let mut out = vec![0f32; g.n * o * hw];
    let out_len = out.len();
    let out_ptr = SharedMut(out.as_mut_ptr());
    chunks.into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(cols, tile): &mut (Vec<f32>, Vec<f32>), (start, end)| {
            let len = end - start;
            cols.resize(kk * len, 0.0);
            tile.resize(o * len, 0.0);
            im2col(x, g, start, len, cols, false);
            matmul(
                o,
                len,
                kk,
                tile,
                len,
                false,
                wt,
                (kk, 1),
                cols,
                (len, 1),
                false,
            );
            segments(g, start, end, |off, img, oy, ox, seg| {
                let pix = oy * g.wo + ox;
                for oc in 0..o {
                    let b = bias.map_or(0.0, |b| b[oc]);
                    let src = &tile[oc * len + off..][..seg];
                    let at = (img * o + oc) * hw + pix;
                    assert!(at + seg <= out_len);
                    // SAFETY: in bounds (checked); these outputs belong to
                    // this chunk alone.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.ptr().add(at), seg) };
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d = activate(s + b, relu);
                    }
                }
            });
        },
    );
    out
}

/// The weight gradient in the parallel-chunks mode (O × kk).
fn conv_weight_grad_par(x: &[f32], dy: &[f32], g: &Geom, chunks: &[(usize, usize)]) -> Vec<f32> {
    let (hw, kk, o) = (g.out_pixels(), g.kk(), g.o);
    type State = (Vec<f32>, Vec<f32>, Vec<f32>);
    let parts: Vec<State> = grouped(
        chunks,
        || (vec![0f32; o * kk], Vec::new(), Vec::new()),
        |(dw, cols, tile): &mut State, (start, end)| {
            let len = end - start;
            cols.resize(kk * len, 0.0);
            tile.resize(o * len, 0.0);
            im2col(x, g, start, len, cols, false);
            segments(g, start, end, |off, img, oy, ox, seg| {
                let pix = oy * g.wo + ox;
                for oc in 0..o {
                    tile[oc * len + off..][..seg]
                        .copy_from_slice(&dy[(img * o + oc) * hw + pix..][..seg]);
                }
            });
            // dW (o × kk) += tile (o × len) · colsᵀ (len × kk)
            matmul(
                o,
                kk,
                len,
                dw,
                kk,
                true,
                tile,
                (len, 1),
                cols,
                (1, len),
                false,
            );
        },
    );
    let parts: Vec<Vec<f32>> = parts.into_iter().map(|(dw, ..)| dw).collect();
    sum_in_order(&parts, o * kk)
}

/// `v`, or `max(v, 0)` when `relu` (NaN stays NaN, as in PyTorch).
#[inline(always)]
fn activate(v: f32, relu: bool) -> f32 {
    if relu && v < 0.0 {
        0.0
    } else {
        v
    }
}

/// Stride-1 convolution of NCHW `x` with the (O × kk) weight matrix `wt`,
/// plus an optional bias, then an optional ReLU: returns NCHW (n, o, ho, wo).
/// Winograd or the direct kernel where the CPU has them and the geometry
/// suits them, the GEMM path otherwise.
fn conv_forward(x: &[f32], wt: &[f32], bias: Option<&[f32]>, relu: bool, g: &Geom) -> Vec<f32> {
    if winograd::suits(g) {
        return winograd::conv_forward(x, wt, winograd::Kernel::Plain, bias, relu, g);
    }
    if direct::suits(g) {
        if let Some(y) = direct::conv_forward(x, wt, bias, relu, g) {
            return y;
        }
    }
    conv_forward_gemm(x, wt, bias, relu, g)
}

/// [`conv_forward`] through a column matrix and the `gemm` crate.
fn conv_forward_gemm(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    g: &Geom,
) -> Vec<f32> {
    let (hw, kk, o) = (g.out_pixels(), g.kk(), g.o);
    if let Some(chunks) = parallel_chunks(g.n * hw, kk) {
        return conv_forward_par(x, wt, bias, relu, g, chunks);
    }
    let mut out = vec![0f32; g.n * o * hw];
    let (mut cols, mut tile) = (Vec::new(), Vec::new());
    for (start, end) in chunks(g.n, hw, kk, o) {
        let len = end - start;
        cols.resize(kk * len, 0.0);
        im2col(x, g, start, len, &mut cols, true);
        match in_one_image(start, end, o, hw) {
            Some(off) => {
                let dst = &mut out[off..];
                matmul(
                    o,
                    len,
                    kk,
                    dst,
                    hw,
                    false,
                    wt,
                    (kk, 1),
                    &cols,
                    (len, 1),
                    true,
                );
            }
            None => {
                tile.resize(o * len, 0.0);
                matmul(
                    o,
                    len,
                    kk,
                    &mut tile,
                    len,
                    false,
                    wt,
                    (kk, 1),
                    &cols,
                    (len, 1),
                    true,
                );
                tile_to_nchw(&tile, &mut out, o, hw, start, end);
            }
        }
    }
    if bias.is_some() || relu {
        out.par_chunks_mut(hw.max(1))
            .enumerate()
            .for_each(|(plane, dst)| {
                let v = bias.map_or(0.0, |b| b[plane % o]);
                dst.iter_mut().for_each(|d| *d = activate(*d + v, relu));
            });
    }
    out
}

/// Per-channel sums of an NCHW tensor, in f64 (the bias gradient).
fn channel_sums(dy: &[f32], n: usize, ch: usize, hw: usize) -> Vec<f64> {
    (0..ch)
        .into_par_iter()
        .map(|c| {
            (0..n)
                .map(|i| super::lanes_sum(&dy[(i * ch + c) * hw..][..hw], |v| v as f64))
                .sum()
        })
        .collect()
}

/// Weight and bias gradients: returns (dW as O × kk, dB of length O).
fn conv_weight_grad(x: &[f32], dy: &[f32], g: &Geom) -> Vec<f32> {
    if direct::suits_weight_grad(g) {
        if let Some(dw) = direct::conv_weight_grad(x, dy, g) {
            return dw;
        }
    }
    conv_weight_grad_gemm(x, dy, g)
}

/// [`conv_weight_grad`] through column matrices and the `gemm` crate.
fn conv_weight_grad_gemm(x: &[f32], dy: &[f32], g: &Geom) -> Vec<f32> {
    let (hw, kk, o) = (g.out_pixels(), g.kk(), g.o);
    if let Some(chunks) = parallel_chunks(g.n * hw, kk) {
        return conv_weight_grad_par(x, dy, g, &chunks);
    }
    let mut dw = vec![0f32; o * kk];
    let (mut cols, mut tile) = (Vec::new(), Vec::new());
    for (start, end) in chunks(g.n, hw, kk, o) {
        let len = end - start;
        cols.resize(kk * len, 0.0);
        im2col(x, g, start, len, &mut cols, true);
        // dW (o × kk) += dY (o × len) · colsᵀ (len × kk)
        match in_one_image(start, end, o, hw) {
            Some(off) => matmul(
                o,
                kk,
                len,
                &mut dw,
                kk,
                true,
                &dy[off..],
                (hw, 1),
                &cols,
                (1, len),
                true,
            ),
            None => {
                tile.resize(o * len, 0.0);
                nchw_to_tile(dy, &mut tile, o, hw, start, end);
                matmul(
                    o,
                    kk,
                    len,
                    &mut dw,
                    kk,
                    true,
                    &tile,
                    (len, 1),
                    &cols,
                    (1, len),
                    true,
                );
            }
        }
    }
    dw
}

/// The kernel of the input gradient: flipped in space with the channel axes
/// swapped, as a (C × O·k·k) matrix.
fn flipped_kernel(wt: &[f32], g: &Geom) -> Vec<f32> {
    let (o, c, k) = (g.o, g.c, g.k);
    let kk = k * k;
    let mut f = vec![0f32; wt.len()];
    // one destination row (input channel ci) per task, written in order
    f.par_chunks_mut((o * kk).max(1))
        .enumerate()
        .for_each(|(ci, row)| {
            for oc in 0..o {
                let src = &wt[(oc * c + ci) * kk..][..kk];
                for (t, d) in row[oc * kk..][..kk].iter_mut().enumerate() {
                    *d = src[kk - 1 - t];
                }
            }
        });
    f
}

/// Input gradient: the forward convolution of `dy` with the flipped kernel.
fn conv_input_grad(dy: &[f32], wt: &[f32], g: &Geom) -> Vec<f32> {
    let back = Geom {
        n: g.n,
        c: g.o,
        h: g.ho,
        w: g.wo,
        o: g.c,
        k: g.k,
        p: g.k - 1 - g.p,
        ho: g.h,
        wo: g.w,
    };
    if winograd::suits(&back) {
        // the transform reads the forward weights flipped, no copy
        return winograd::conv_forward(dy, wt, winograd::Kernel::Flipped, None, false, &back);
    }
    conv_forward(dy, &flipped_kernel(wt, g), None, false, &back)
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    cpu_f32(s, l, &format!("seg conv2d: {what}"))
}

/// The forward op: `x` (N,C,H,W) * `w` (O,C,k,k) [+ `b` (O)], then ReLU if
/// `relu` (only without backward: see [`conv2d_relu_inference`]).
struct Conv2dOp {
    padding: usize,
    relu: bool,
}

impl Conv2dOp {
    fn forward(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(x.1.dims(), w.1.dims(), self.padding)?;
        let xs = slice(x.0, x.1, "input")?;
        let ws = slice(w.0, w.1, "weight")?;
        let bs = match b {
            Some((s, l)) => {
                if l.dims() != [g.o] {
                    candle_core::bail!("seg conv2d: bias shape {:?}, expected [{}]", l.dims(), g.o)
                }
                Some(slice(s, l, "bias")?)
            }
            None => None,
        };
        let y = conv_forward(xs, ws, bs, self.relu, &g);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.o, g.ho, g.wo))))
    }

    /// (dx, dw, db) of the op, each without autograd history; no dx when
    /// `x` needs none (a network's input).
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
        bias: bool,
    ) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(
                &w.contiguous()?,
                &InputGrad {
                    padding: self.padding,
                    x_dims: x.dims().to_vec(),
                },
            )?)
        } else {
            None
        };
        let flat = grad.apply_op2_no_bwd(
            &x.contiguous()?,
            &WeightGrad {
                padding: self.padding,
                bias,
                w_dims: w.dims().to_vec(),
            },
        )?;
        let (o, numel) = (w.dim(0)?, w.elem_count());
        let dw = flat.narrow(0, 0, numel)?.reshape(w.dims())?;
        let db = if bias {
            Some(flat.narrow(0, numel, o)?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "seg-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, grad, false)?;
        Ok((dx, Some(dw)))
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "seg-conv2d-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.backward(x, w, grad, true)?;
        Ok((dx, Some(dw), db))
    }
}

/// Input gradient op: (dy, w) → dx.
struct InputGrad {
    padding: usize,
    x_dims: Vec<usize>,
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "seg-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(&self.x_dims, l2.dims(), self.padding)?;
        if l1.dims() != [g.n, g.o, g.ho, g.wo] {
            candle_core::bail!(
                "seg conv2d backward: gradient shape {:?} does not fit",
                l1.dims()
            )
        }
        let dx = conv_input_grad(slice(s1, l1, "gradient")?, slice(s2, l2, "weight")?, &g);
        Ok((CpuStorage::F32(dx), Shape::from(self.x_dims.clone())))
    }
}

/// Weight-and-bias gradient op: (dy, x) → [dW flattened, dB].
struct WeightGrad {
    padding: usize,
    /// Whether to append the bias gradient.
    bias: bool,
    w_dims: Vec<usize>,
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "seg-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(l2.dims(), &self.w_dims, self.padding)?;
        if l1.dims() != [g.n, g.o, g.ho, g.wo] {
            candle_core::bail!(
                "seg conv2d backward: gradient shape {:?} does not fit",
                l1.dims()
            )
        }
        let dy = slice(s1, l1, "gradient")?;
        let mut dw = conv_weight_grad(slice(s2, l2, "input")?, dy, &g);
        if self.bias {
            let db = channel_sums(dy, g.n, g.o, g.out_pixels());
            dw.extend(db.iter().map(|&v| v as f32));
        }
        let len = dw.len();
        Ok((CpuStorage::F32(dw), Shape::from(len)))
    }
}

/// Stride-1 2D convolution with zero padding `padding` (at most k − 1) and
/// an optional bias, as PyTorch's `F.conv2d(x, w, b, padding=padding)`.
/// CPU f32 tensors use seg's GEMM kernel; other devices use candle's.
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, padding: usize) -> Result<Tensor> {
    if !cpu_kernel_applies(x, w, padding)? {
        let y = x.conv2d(w, padding, 1, 1, 1)?;
        return match bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
            None => Ok(y),
        };
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let op = Conv2dOp {
        padding,
        relu: false,
    };
    match bias {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

/// The plain reference of [`conv2d`] (candle's kernels), for tests.
pub fn conv2d_reference(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
) -> Result<Tensor> {
    let y = x.conv2d(w, padding, 1, 1, 1)?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
        None => Ok(y),
    }
}

/// Whether seg's CPU kernel computes this convolution: a CPU f32 input, a
/// square kernel and padding below its size.
fn cpu_kernel_applies(x: &Tensor, w: &Tensor, padding: usize) -> Result<bool> {
    let k = w.dim(2)?;
    Ok(super::use_cpu_kernel(x) && padding < k.max(1) && w.dim(3)? == k)
}

/// [`conv2d`] followed by an optional ReLU, for inference: on the CPU, when
/// no operand tracks a gradient, the ReLU is applied as the kernel writes
/// its output (one pass over the activations instead of two). Otherwise it
/// is the composed `conv2d` then [`super::relu`], with their backward.
pub fn conv2d_relu_inference(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    relu: bool,
) -> Result<Tensor> {
    let tracked = x.track_op() || w.track_op() || bias.is_some_and(|b| b.track_op());
    if tracked || !cpu_kernel_applies(x, w, padding)? {
        let y = conv2d(x, w, bias, padding)?;
        return if relu { super::relu(&y) } else { Ok(y) };
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let op = Conv2dOp { padding, relu };
    match bias {
        Some(b) => x.apply_op3_no_bwd(&w, &b.contiguous()?, &op),
        None => x.apply_op2_no_bwd(&w, &op),
    }
}

// ---------------------------------------------------------------------------
// 2×2 stride-2 transposed convolution

/// Sizes of a transposed 2×2/2 convolution: input (n, c, h, w), weight
/// (c, o, 2, 2), output (n, o, 2h, 2w).
#[derive(Debug, Clone, Copy)]
struct UpGeom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
}

impl UpGeom {
    fn new(x: &[usize], wt: &[usize]) -> Result<Self> {
        let (&[n, c, h, w], &[wc, o, 2, 2]) = (x, wt) else {
            candle_core::bail!("seg conv-transpose 2x2: expected input (N,C,H,W) and weight (C,O,2,2), got {x:?} and {wt:?}")
        };
        if wc != c {
            candle_core::bail!("seg conv-transpose 2x2: weight {wt:?} does not fit input {x:?}");
        }
        Ok(Self { n, c, h, w, o })
    }

    fn hw(&self) -> usize {
        self.h * self.w
    }

    fn chunks(&self) -> Vec<(usize, usize)> {
        chunks(self.n, self.hw(), self.c, 4 * self.o)
    }

    /// Visits every output pixel of the chunk `[start, end)` of input
    /// pixels, one parallel task per (image, channel) plane:
    /// `f(row_of_z_matrix_times_len_plus_j, index_in_doubled_image, channel)`.
    /// Row `oc·4 + a·2 + b` of the (4·O × len) matrix holds output pixel
    /// (2y + a, 2x + b) of channel `oc` for input pixel `start + j`.
    fn each_pixel(&self, start: usize, end: usize, f: impl Fn(usize, usize, usize) + Sync) {
        let (hw, len) = (self.hw(), end - start);
        let (w2, h2) = (2 * self.w, 2 * self.h);
        let (first, last) = (start / hw, (end - 1) / hw);
        (first..=last)
            .flat_map(|i| (0..self.o).map(move |oc| (i, oc)))
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each(|(i, oc)| {
                for pos in start.max(i * hw)..end.min((i + 1) * hw) {
                    let (pix, j) = (pos - i * hw, pos - start);
                    let (y, x) = (pix / self.w, pix % self.w);
                    let base = (i * self.o + oc) * h2 * w2 + 2 * y * w2 + 2 * x;
                    for (a, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        f((oc * 4 + a * 2 + b) * len + j, base + a * w2 + b, oc);
                    }
                }
            });
    }

    /// Matrix → doubled image (adding the bias).
    fn scatter(&self, z: &[f32], img: &mut [f32], start: usize, end: usize, bias: &[f32]) {
        let il = img.len();
        let ip = SharedMut(img.as_mut_ptr());
        self.each_pixel(start, end, |zi, ii, oc| {
            assert!(ii < il);
            // SAFETY: in bounds (checked); each image element is written by
            // the one task of its (image, channel) plane.
            unsafe { *ip.ptr().add(ii) = z[zi] + bias[oc] };
        });
    }

    /// Doubled image → matrix.
    fn gather(&self, img: &[f32], z: &mut [f32], start: usize, end: usize) {
        let zl = z.len();
        let zp = SharedMut(z.as_mut_ptr());
        self.each_pixel(start, end, |zi, ii, _| {
            assert!(zi < zl);
            // SAFETY: in bounds (checked); each matrix element belongs to
            // one (image, channel) plane, visited by one task.
            unsafe { *zp.ptr().add(zi) = img[ii] };
        });
    }
}

fn up_forward(x: &[f32], wt: &[f32], bias: &[f32], g: &UpGeom) -> Vec<f32> {
    let (hw, o4, c) = (g.hw(), 4 * g.o, g.c);
    let mut out = vec![0f32; g.n * g.o * hw * 4];
    let (mut xt, mut z) = (Vec::new(), Vec::new());
    for (start, end) in g.chunks() {
        let len = end - start;
        z.resize(o4 * len, 0.0);
        // z (4O × len) = Wᵀ (4O × C) · x (C × len); W is (C × 4O) row-major
        match in_one_image(start, end, c, hw) {
            Some(off) => matmul(
                o4,
                len,
                c,
                &mut z,
                len,
                false,
                wt,
                (1, o4),
                &x[off..],
                (hw, 1),
                true,
            ),
            None => {
                xt.resize(c * len, 0.0);
                nchw_to_tile(x, &mut xt, c, hw, start, end);
                matmul(
                    o4,
                    len,
                    c,
                    &mut z,
                    len,
                    false,
                    wt,
                    (1, o4),
                    &xt,
                    (len, 1),
                    true,
                );
            }
        }
        g.scatter(&z, &mut out, start, end, bias);
    }
    out
}

/// (dx, [dW flattened, dB]) of the transposed convolution.
fn up_backward(x: &[f32], wt: &[f32], dy: &[f32], g: &UpGeom) -> (Vec<f32>, Vec<f32>) {
    let (hw, o4, c) = (g.hw(), 4 * g.o, g.c);
    let mut dx = vec![0f32; g.n * c * hw];
    let mut dw = vec![0f32; c * o4];
    let (mut xt, mut dz, mut dxt) = (Vec::new(), Vec::new(), Vec::new());
    for (start, end) in g.chunks() {
        let len = end - start;
        dz.resize(o4 * len, 0.0);
        g.gather(dy, &mut dz, start, end);
        let xs: (&[f32], (usize, usize)) = match in_one_image(start, end, c, hw) {
            Some(off) => {
                // dx (C × len) = W (C × 4O) · dz (4O × len), straight into dx
                matmul(
                    c,
                    len,
                    o4,
                    &mut dx[off..],
                    hw,
                    false,
                    wt,
                    (o4, 1),
                    &dz,
                    (len, 1),
                    true,
                );
                (&x[off..], (hw, 1))
            }
            None => {
                dxt.resize(c * len, 0.0);
                matmul(
                    c,
                    len,
                    o4,
                    &mut dxt,
                    len,
                    false,
                    wt,
                    (o4, 1),
                    &dz,
                    (len, 1),
                    true,
                );
                tile_to_nchw(&dxt, &mut dx, c, hw, start, end);
                xt.resize(c * len, 0.0);
                nchw_to_tile(x, &mut xt, c, hw, start, end);
                (&xt, (len, 1))
            }
        };
        // dW (C × 4O) += x (C × len) · dzᵀ (len × 4O)
        matmul(
            c,
            o4,
            len,
            &mut dw,
            o4,
            true,
            xs.0,
            xs.1,
            &dz,
            (1, len),
            true,
        );
    }
    let db = channel_sums(dy, g.n, g.o, 4 * hw);
    dw.extend(db.iter().map(|&v| v as f32));
    (dx, dw)
}

struct ConvTranspose2x2Op;

impl CustomOp3 for ConvTranspose2x2Op {
    fn name(&self) -> &'static str {
        "seg-conv-transpose-2x2"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = UpGeom::new(l1.dims(), l2.dims())?;
        if l3.dims() != [g.o] {
            candle_core::bail!(
                "seg conv-transpose 2x2: bias shape {:?}, expected [{}]",
                l3.dims(),
                g.o
            )
        }
        let what = "seg conv-transpose 2x2";
        let y = up_forward(
            cpu_f32(s1, l1, what)?,
            cpu_f32(s2, l2, what)?,
            cpu_f32(s3, l3, what)?,
            &g,
        );
        Ok((
            CpuStorage::F32(y),
            Shape::from((g.n, g.o, 2 * g.h, 2 * g.w)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let both = grad.apply_op3_no_bwd(&x.contiguous()?, &w.contiguous()?, &UpBackward)?;
        let (xn, wn, o) = (x.elem_count(), w.elem_count(), w.dim(1)?);
        let dx = both.narrow(0, 0, xn)?.reshape(x.dims())?;
        let dw = both.narrow(0, xn, wn)?.reshape(w.dims())?;
        let db = both.narrow(0, xn + wn, o)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Backward op of the transposed convolution: (dy, x, w) → [dx, dW, dB] flat.
struct UpBackward;

impl CustomOp3 for UpBackward {
    fn name(&self) -> &'static str {
        "seg-conv-transpose-2x2-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = UpGeom::new(l2.dims(), l3.dims())?;
        if l1.dims() != [g.n, g.o, 2 * g.h, 2 * g.w] {
            candle_core::bail!(
                "seg conv-transpose 2x2 backward: gradient shape {:?} does not fit",
                l1.dims()
            )
        }
        let what = "seg conv-transpose 2x2 backward";
        let (mut dx, dwb) = up_backward(
            cpu_f32(s2, l2, what)?,
            cpu_f32(s3, l3, what)?,
            cpu_f32(s1, l1, what)?,
            &g,
        );
        dx.extend(dwb);
        let len = dx.len();
        Ok((CpuStorage::F32(dx), Shape::from(len)))
    }
}

/// `F.conv_transpose2d(x, w, b, stride=2)` with a (C, O, 2, 2) kernel:
/// doubles H and W. CPU f32 tensors use seg's GEMM kernel.
pub fn conv_transpose2x2(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !super::use_cpu_kernel(x) {
        return conv_transpose2x2_reference(x, w, b);
    }
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, ConvTranspose2x2Op)
}

/// The plain reference of [`conv_transpose2x2`] (candle's kernels).
pub fn conv_transpose2x2_reference(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let y = x.conv_transpose2d(w, 0, 0, 2, 1)?;
    y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::f32_data;
    use crate::ops::test_util::*;
    use candle_core::Var;

    /// Forward and all gradients of `f` and `reference` on the same inputs.
    fn check(
        inputs: &[Tensor],
        f: impl Fn(&[Tensor]) -> Tensor,
        reference: impl Fn(&[Tensor]) -> Tensor,
        tol: f32,
    ) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts);
        let yr = reference(&ts);
        let scale = |t: &Tensor| {
            t.abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .max(1.0)
        };
        assert!(
            max_abs_diff(&y, &yr) <= tol * scale(&yr),
            "forward differs: {}",
            max_abs_diff(&y, &yr)
        );
        let gy = rand_tensor(y.dims(), 99);
        let g = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (&yr * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, t) in ts.iter().enumerate() {
            let (a, b) = (g.get(t).unwrap(), gr.get(t).unwrap());
            let d = max_abs_diff(a, b);
            assert!(d <= tol * scale(b), "gradient of input {i} differs by {d}");
        }
    }

    /// [`check`] of [`conv2d`] against [`conv2d_reference`] on random
    /// inputs of the given sizes (n, c, h, w, o, k, p, bias); `seed` for the
    /// input, seed + 1 and + 2 for the weight and bias.
    #[allow(clippy::type_complexity)]
    fn check_conv(
        (n, c, h, w, o, k, p, bias): (usize, usize, usize, usize, usize, usize, usize, bool),
        seed: u64,
    ) {
        let x = rand_tensor(&[n, c, h, w], seed);
        let wt = rand_tensor(&[o, c, k, k], seed + 1);
        if bias {
            check(
                &[x, wt, rand_tensor(&[o], seed + 2)],
                |t| conv2d(&t[0], &t[1], Some(&t[2]), p).unwrap(),
                |t| conv2d_reference(&t[0], &t[1], Some(&t[2]), p).unwrap(),
                1e-5,
            );
        } else {
            check(
                &[x, wt],
                |t| conv2d(&t[0], &t[1], None, p).unwrap(),
                |t| conv2d_reference(&t[0], &t[1], None, p).unwrap(),
                1e-5,
            );
        }
    }

    #[test]
    fn conv_matches_candle_on_odd_shapes() {
        // (n, c, h, w, o, k, p, bias)
        for &(n, c, h, w, o, k, p, bias) in &[
            (2, 3, 7, 5, 4, 3, 1, true),
            (1, 1, 1, 1, 1, 3, 1, true),
            (3, 5, 9, 2, 2, 3, 1, false),
            (2, 4, 6, 11, 3, 1, 0, true),
            (1, 2, 8, 7, 3, 5, 2, true),
            (2, 3, 6, 6, 2, 3, 0, false),
            (1, 2, 5, 4, 3, 3, 2, true),
            (5, 17, 3, 3, 19, 3, 1, true),
            (1, 3, 40, 37, 5, 3, 1, true),
        ] {
            check_conv((n, c, h, w, o, k, p, bias), 1);
        }
    }

    #[test]
    fn direct_kernels_match_candle_on_odd_shapes() {
        if !direct::available() {
            eprintln!("skip: this CPU has no AVX-512, the direct kernels are not used");
            return;
        }
        // (n, c, h, w, o, k, p, bias): rows of 16, 31, 47 and 61 columns
        // (masked tails, 1–3 vectors per tile), channel counts that leave
        // partial blocks, kernels 1, 3 and 5 with every padding
        for &(n, c, h, w, o, k, p, bias) in &[
            (2, 8, 5, 16, 8, 3, 1, true),
            (1, 9, 4, 31, 19, 3, 1, false),
            (2, 3, 3, 47, 10, 3, 0, true),
            (1, 11, 6, 61, 9, 3, 2, true),
            (1, 10, 3, 45, 8, 5, 2, false),
            (2, 8, 2, 31, 13, 1, 0, true),
            // 16 channels or more: the channels-last weight gradient, with
            // channel counts that leave partial 16-channel blocks
            (2, 16, 5, 16, 8, 3, 1, true),
            (1, 20, 4, 31, 9, 3, 1, false),
            (2, 33, 3, 47, 11, 3, 0, true),
            (1, 17, 6, 61, 9, 3, 2, true),
        ] {
            let (ho, wo) = (h + 2 * p + 1 - k, w + 2 * p + 1 - k);
            let g = Geom::new(&[n, c, h, w], &[o, c, k, k], p).unwrap();
            assert!(direct::suits(&g), "{g:?} should take the direct path");
            assert_eq!(direct::suits_weight_grad(&g), k == 3, "{g:?}");
            let back = Geom::new(&[n, o, ho, wo], &[c, o, k, k], k - 1 - p).unwrap();
            assert_eq!(direct::suits(&back), c >= 8, "{back:?}");
            check_conv((n, c, h, w, o, k, p, bias), 11);
        }
    }

    #[test]
    fn direct_grid_mode_matches_candle_on_small_and_odd_images() {
        if !direct::available() {
            eprintln!("skip: this CPU has no AVX-512, the direct kernels are not used");
            return;
        }
        // (n, c, h, w, o, k, p, bias): images whose rows do not fill the
        // vector lanes, taken as one run over the padded grid
        for &(n, c, h, w, o, k, p, bias) in &[
            (3, 9, 8, 8, 10, 3, 1, true),
            (2, 8, 12, 12, 9, 3, 1, false),
            (1, 10, 36, 35, 8, 3, 1, true),
            (2, 8, 9, 9, 8, 1, 0, true),
            (2, 16, 10, 11, 17, 3, 0, false),
        ] {
            let g = Geom::new(&[n, c, h, w], &[o, c, k, k], p).unwrap();
            assert!(direct::suits(&g), "{g:?} should take the direct path");
            assert!(
                g.wo < 16 || g.wo * 100 < g.wo.div_ceil(16) * 16 * 85,
                "{g:?}: row mode"
            );
            check_conv((n, c, h, w, o, k, p, bias), 41);
        }
    }

    #[test]
    fn winograd_matches_candle_on_odd_shapes() {
        if !direct::available() {
            eprintln!("skip: this CPU has no AVX-512, the Winograd kernels are not used");
            return;
        }
        // (n, c, h, w, o, bias): odd heights and widths (tiles half
        // outside the image), runs of tiles that cross rows and images
        // inside a block, partial output-channel blocks, several blocks
        // and split output channels; the input gradients (o >= 16) take
        // the Winograd path too
        for &(n, c, h, w, o, bias) in &[
            (2, 16, 9, 37, 16, true),
            (1, 20, 16, 16, 19, false),
            (4, 33, 8, 8, 24, true),
            (1, 17, 31, 33, 16, true),
            (4, 16, 13, 5, 21, false),
        ] {
            let g = Geom::new(&[n, c, h, w], &[o, c, 3, 3], 1).unwrap();
            assert!(winograd::suits(&g), "{g:?} should take the Winograd path");
            let back = Geom::new(&[n, o, h, w], &[c, o, 3, 3], 1).unwrap();
            assert!(
                winograd::suits(&back),
                "{back:?} should take the Winograd path"
            );
            check_conv((n, c, h, w, o, 3, 1, bias), 61);
        }
    }

    #[test]
    fn winograd_results_do_not_depend_on_the_thread_count() {
        if !direct::available() {
            eprintln!("skip: this CPU has no AVX-512, the Winograd kernels are not used");
            return;
        }
        // several tile blocks (the first shape) and few tiles with the
        // output channels split across tasks (the second)
        for &(n, c, h, w, o) in &[(2, 24, 30, 34, 16), (4, 64, 8, 8, 40)] {
            let g = Geom::new(&[n, c, h, w], &[o, c, 3, 3], 1).unwrap();
            assert!(winograd::suits(&g));
            let x = rand_tensor(&[n, c, h, w], 81);
            let wt = rand_tensor(&[o, c, 3, 3], 82);
            let gy = rand_tensor(&[n, o, h, w], 83);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let (xv, wv) = (
                        Var::from_tensor(&x).unwrap(),
                        Var::from_tensor(&wt).unwrap(),
                    );
                    let y = conv2d(xv.as_tensor(), wv.as_tensor(), None, 1).unwrap();
                    let grads = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
                    let dx = grads.get(xv.as_tensor()).unwrap().clone();
                    (f32_data(&y).unwrap(), f32_data(&dx).unwrap())
                })
            };
            let one = run(1);
            for threads in [2, 3] {
                let other = run(threads);
                assert!(one.0 == other.0, "forward differs with {threads} threads");
                assert!(
                    one.1 == other.1,
                    "input gradient differs with {threads} threads"
                );
            }
        }
    }

    #[test]
    fn winograd_forward_applies_bias_and_relu_and_keeps_nan() {
        if !direct::available() {
            eprintln!("skip: this CPU has no AVX-512, the Winograd kernels are not used");
            return;
        }
        let (n, c, h, w, o) = (2, 16, 11, 13, 12);
        let g = Geom::new(&[n, c, h, w], &[o, c, 3, 3], 1).unwrap();
        assert!(winograd::suits(&g));
        let (x, wt, b) = (
            rand_tensor(&[n, c, h, w], 71),
            rand_tensor(&[o, c, 3, 3], 72),
            rand_tensor(&[o], 73),
        );
        let got = conv2d_relu_inference(&x, &wt, Some(&b), 1, true).unwrap();
        let want =
            crate::ops::relu_reference(&conv2d_reference(&x, &wt, Some(&b), 1).unwrap()).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-5, "differs by {d}");
        // a NaN input reaches every output whose window holds it
        let mut xs = f32_data(&x).unwrap();
        let (yy, xx) = (5, 7);
        xs[(c + 3) * h * w + yy * w + xx] = f32::NAN; // image 1, channel 3
        let x = Tensor::from_vec(xs, x.dims(), x.device()).unwrap();
        let got = f32_data(&conv2d_relu_inference(&x, &wt, Some(&b), 1, true).unwrap()).unwrap();
        for oc in 0..o {
            for (dy, dx) in [(0, 0), (1, 1), (-1, -1), (1, -1), (0, 1)] {
                let (py, px) = ((yy as i64 + dy) as usize, (xx as i64 + dx) as usize);
                assert!(
                    got[((o + oc) * h + py) * w + px].is_nan(),
                    "({oc}, {py}, {px})"
                );
            }
            // image 0 is untouched
            assert!(got[(oc * h * w)..((oc + 1) * h * w)]
                .iter()
                .all(|v| v.is_finite()));
        }
    }

    #[test]
    fn direct_forward_applies_bias_and_relu_like_the_layers() {
        if !direct::available() {
            eprintln!("skip: this CPU has no AVX-512, the direct kernels are not used");
            return;
        }
        let g = Geom::new(&[2, 4, 5, 31], &[12, 4, 3, 3], 1).unwrap();
        assert!(direct::suits(&g));
        let (x, wt, b) = (
            rand_tensor(&[2, 4, 5, 31], 21),
            rand_tensor(&[12, 4, 3, 3], 22),
            rand_tensor(&[12], 23),
        );
        let mut xs = f32_data(&x).unwrap();
        xs[7] = f32::NAN;
        let x = Tensor::from_vec(xs, x.dims(), x.device()).unwrap();
        let got = conv2d_relu_inference(&x, &wt, Some(&b), 1, true).unwrap();
        let want =
            crate::ops::relu_reference(&conv2d_reference(&x, &wt, Some(&b), 1).unwrap()).unwrap();
        let (g, w) = (f32_data(&got).unwrap(), f32_data(&want).unwrap());
        assert_eq!(g.len(), w.len());
        let mut nans = 0;
        for (a, e) in g.iter().zip(&w) {
            if e.is_nan() {
                assert!(a.is_nan(), "NaN must propagate through the fused ReLU");
                nans += 1;
            } else {
                assert!((a - e).abs() <= 1e-5 * e.abs().max(1.0), "{a} vs {e}");
            }
        }
        assert!(nans > 0);
    }

    #[test]
    fn chunks_split_big_images_and_group_small_ones() {
        let c = chunks(2, 1000, 27, 16);
        assert_eq!(c.len(), 8);
        assert!(c
            .iter()
            .all(|&(s, e)| in_one_image(s, e, 1, 1000).is_some()));
        assert_eq!(c.first(), Some(&(0, 250)));
        assert_eq!(c.last(), Some(&(1750, 2000)));
        assert_eq!(chunks(5, 15, 27, 16), vec![(0, 75)]);
        assert_eq!(
            chunks(40, 15, 27, 16),
            vec![(0, 255), (255, 510), (510, 600)]
        );
        assert!(chunks(0, 15, 27, 16).is_empty());
    }

    #[test]
    fn conv_chunks_spanning_images_match() {
        // many small images: chunks cover several images each
        let x = rand_tensor(&[37, 3, 3, 5], 4);
        let wt = rand_tensor(&[6, 3, 3, 3], 5);
        let b = rand_tensor(&[6], 6);
        check(
            &[x, wt, b],
            |t| conv2d(&t[0], &t[1], Some(&t[2]), 1).unwrap(),
            |t| conv2d_reference(&t[0], &t[1], Some(&t[2]), 1).unwrap(),
            1e-5,
        );
    }

    #[test]
    fn conv_rejects_bad_shapes() {
        let x = rand_tensor(&[1, 3, 4, 4], 1);
        assert!(conv2d(&x, &rand_tensor(&[2, 2, 3, 3], 2), None, 1).is_err());
        assert!(conv2d(
            &x,
            &rand_tensor(&[2, 3, 3, 3], 2),
            Some(&rand_tensor(&[3], 3)),
            1
        )
        .is_err());
        let tiny = rand_tensor(&[1, 3, 1, 1], 1);
        assert!(conv2d(&tiny, &rand_tensor(&[2, 3, 3, 3], 2), None, 0).is_err());
    }

    #[test]
    fn transposed_conv_matches_candle_on_odd_shapes() {
        for &(n, c, h, w, o) in &[
            (2, 3, 5, 3, 4),
            (1, 1, 1, 1, 1),
            (3, 7, 2, 9, 2),
            (1, 4, 33, 17, 3),
        ] {
            let x = rand_tensor(&[n, c, h, w], 7);
            let wt = rand_tensor(&[c, o, 2, 2], 8);
            let b = rand_tensor(&[o], 9);
            check(
                &[x, wt, b],
                |t| conv_transpose2x2(&t[0], &t[1], &t[2]).unwrap(),
                |t| conv_transpose2x2_reference(&t[0], &t[1], &t[2]).unwrap(),
                1e-5,
            );
        }
    }
}
