//! The im2col + GEMM path of the stride-1 k×k convolution (any padding up
//! to k − 1): the kernel for every geometry the direct and Winograd kernels
//! do not take (see [`super::route`]), and the matrix products the 2×2
//! transposed convolution ([`super::transpose`]) is built on.
//!
//! The convolution works through the batch's output pixels (numbered across
//! the whole batch, image-major) in chunks: part of one image, or a run of
//! whole small images so that deep, small layers still give the matrix
//! multiply wide blocks. For each chunk it gathers the k·k·C input values of
//! every pixel into a column matrix (`im2col`, row by row with
//! `memcpy`-sized copies, rows in parallel) and multiplies the (O × k·k·C)
//! weight matrix by it with the `gemm` crate, which runs on all rayon
//! threads; a chunk inside one image is written straight into the NCHW
//! output. Wide, shallow layers instead use cache-sized chunks processed in
//! parallel with single-threaded products (the parallel-chunks mode).
//!
//! The weight gradient is one long product accumulated over all N·H·W
//! pixels, dW += dY · colsᵀ, chunk after chunk (parallel-chunks mode: fixed
//! groups of chunks summed in order). The input gradient is this module's
//! forward pass with the flipped kernel ([`super::route`]).
//!
//! Every output element is one dot product computed by one thread in a fixed
//! order, so results do not depend on thread scheduling.

use super::{Geom, SharedMut};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Floats a chunk's column matrix (and its output tile) aims for (16 MiB;
/// small in unit tests, so that they split images into several chunks).
const CHUNK_FLOATS: usize = if cfg!(test) { 1 << 12 } else { 1 << 22 };

/// Fewest pixels in a chunk (narrower products waste the packing of the
/// weight matrix).
const MIN_CHUNK: usize = 256;

fn threads() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `dst (m×n, row stride dst_rs) (+)= lhs (m×k) · rhs (k×n)`, with general
/// (row stride, column stride) for each operand; on all threads if `par`.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
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

/// Chunks `[start, end)` of `n` images of `hw` pixels each, for a column
/// matrix of `rows` rows and an output tile of `out_rows` rows: equal parts
/// of one image, or runs of whole images.
pub(super) fn chunks(n: usize, hw: usize, rows: usize, out_rows: usize) -> Vec<(usize, usize)> {
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
pub(super) fn tile_to_nchw(
    tile: &[f32],
    out: &mut [f32],
    ch: usize,
    hw: usize,
    start: usize,
    end: usize,
) {
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

pub(super) fn nchw_to_tile(
    src: &[f32],
    tile: &mut [f32],
    ch: usize,
    hw: usize,
    start: usize,
    end: usize,
) {
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
pub(super) fn in_one_image(start: usize, end: usize, ch: usize, hw: usize) -> Option<usize> {
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

/// Groups of the weight gradient's chunks (each a partial dW summed in
/// chunk order; the groups run in parallel and are added in group order).
const WGRAD_GROUPS: usize = 16;

/// Chunks of `total` batch-wide pixels for the weight gradient: their
/// length comes from the layer's sizes alone (a column matrix that stays
/// in L2, at least `MIN_PAR_CHUNK` pixels, and enough chunks for the
/// groups where the layer has the pixels), never from the thread count,
/// so that the gradient's summation order — and its bits — are the same
/// on any number of threads.
fn weight_grad_chunks(total: usize, rows: usize) -> Vec<(usize, usize)> {
    let len = (L2_FLOATS / rows.max(1))
        .min(total / WGRAD_GROUPS)
        .max(MIN_PAR_CHUNK)
        .min(total.max(1));
    (0..total.div_ceil(len))
        .map(|i| (i * len, ((i + 1) * len).min(total)))
        .collect()
}

/// Runs `step` over the chunks in a fixed number of contiguous groups
/// (`WGRAD_GROUPS`, whatever the thread count), the groups in parallel and
/// each group's chunks in order, and returns each group's state in group
/// order: sums built this way depend neither on thread scheduling nor on
/// the number of threads, and their memory stays bounded.
fn grouped<T: Send>(
    chunks: &[(usize, usize)],
    init: impl Fn() -> T + Sync,
    step: impl Fn(&mut T, (usize, usize)) + Sync,
) -> Vec<T> {
    let groups = WGRAD_GROUPS.min(chunks.len()).max(1);
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

/// The weight gradient dW (O × kk) through column matrices and the `gemm`
/// crate: chunks of pixels fixed by the layer's sizes
/// ([`weight_grad_chunks`]), each product single-threaded, summed in
/// [`grouped`]'s fixed order — bitwise the same on any number of threads.
pub(super) fn conv_weight_grad(x: &[f32], dy: &[f32], g: &Geom) -> Vec<f32> {
    let (hw, kk, o) = (g.out_pixels(), g.kk(), g.o);
    let chunks = &weight_grad_chunks(g.n * hw, kk);
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
/// plus an optional bias, then an optional ReLU: returns NCHW (n, o, ho, wo),
/// through a column matrix and the `gemm` crate.
pub(super) fn conv_forward(
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
