//! Direct stride-1 k×k convolution for CPUs with AVX-512: no column matrix.
//!
//! The GEMM path builds a (C·k·k × pixels) column matrix and the matrix
//! multiply then packs it again; for layers with few output channels (16–64,
//! the wide top of a U-Net) each column element feeds only 2·O flops, so the
//! copies cost as much as the arithmetic, and the product itself is skinny.
//! Here the register tile is `V` vectors of 16 consecutive output pixels of
//! one row × [`OB`] output channels; for every input channel and tap it loads
//! the `V` shifted input vectors straight from the (zero-padded) input row,
//! which stays in L1/L2, broadcasts the `OB` weights and accumulates with
//! fused multiply-adds. Row tails use masked loads and stores; images whose
//! rows are too short for the lanes are taken as one run over the padded
//! grid (grid mode). The input gradient is the same kernel with the flipped
//! weights; the 3×3 weight gradient has kernels of its own
//! ([`weight_grad`]); the AVX-512 register tiles are in [`avx512`].
//!
//! Every output element is one sum over (channel, ky, kx) in that order,
//! computed by one thread, so results do not depend on scheduling.

#[cfg(target_arch = "x86_64")]
mod avx512;
mod weight_grad;

pub(super) use weight_grad::{conv_weight_grad, suits_weight_grad};

use super::route::cpu_has_avx512;
use super::{Geom, SharedMut};
use crate::precision::Precision;
use rayon::prelude::*;

/// Output channels per register tile (the weights are packed in blocks of it).
pub(super) const OB: usize = 8;

/// Whether the direct kernel is the better choice for this geometry: enough
/// output channels to fill a tile, and rows (row mode) or whole images (grid
/// mode) that fill the vector lanes; the GEMM path batches the smallest
/// images into long products instead.
pub(super) fn suits(g: &Geom) -> bool {
    g.o >= OB && (rows_fill_lanes(g) || grid_fills_lanes(g))
}

/// Output rows fill at least 85 % of the vector lanes (row mode).
fn rows_fill_lanes(g: &Geom) -> bool {
    g.wo >= 16 && g.wo * 100 >= g.wo.div_ceil(16) * 16 * 85
}

/// The outputs of one image, taken as one run over the padded grid (grid
/// mode: output (y, x) at y·wp + x, the k − 1 columns between rows computed
/// and dropped), fill at least 75 % of the lanes: small images (8×8: 80 %)
/// and odd widths.
fn grid_fills_lanes(g: &Geom) -> bool {
    let len = grid_len(g);
    len > 0 && g.ho * g.wo * 100 >= len.div_ceil(16) * 16 * 75
}

/// Outputs per image in grid mode: (ho − 1)·wp + wo.
fn grid_len(g: &Geom) -> usize {
    let wp = g.w + 2 * g.p;
    (g.ho.max(1) - 1) * wp + g.wo
}

/// Weights (O × C × k × k) packed as [o-block][c][ky][kx][OB], zero-padded
/// past O.
fn pack_weights(wt: &[f32], g: &Geom) -> Vec<f32> {
    let kk = g.k * g.k;
    let blocks = g.o.div_ceil(OB);
    let mut p = vec![0f32; blocks * g.c * kk * OB];
    p.par_chunks_mut(g.c * kk * OB)
        .enumerate()
        .for_each(|(b, dst)| {
            for j in 0..OB {
                let o = b * OB + j;
                if o >= g.o {
                    break;
                }
                for ci in 0..g.c {
                    for t in 0..kk {
                        dst[(ci * kk + t) * OB + j] = wt[(o * g.c + ci) * kk + t];
                    }
                }
            }
        });
    p
}

/// The input zero-padded by `p` on every side: (N·C) planes of hp × wp.
fn pad_input<'a>(x: &'a [f32], g: &Geom) -> (std::borrow::Cow<'a, [f32]>, usize, usize) {
    let (hp, wp) = (g.h + 2 * g.p, g.w + 2 * g.p);
    if g.p == 0 {
        return (std::borrow::Cow::Borrowed(x), hp, wp);
    }
    let xp = pad_planes(x, g.n * g.c, (g.h, g.w), g.p, (hp, wp), 0);
    (std::borrow::Cow::Owned(xp), hp, wp)
}

/// `planes` planes of h × w, each placed at row and column `at` of an
/// hp × wp plane of zeros, then `slack` zeros after the last plane (for
/// loads that may run past it).
pub(super) fn pad_planes(
    x: &[f32],
    planes: usize,
    (h, w): (usize, usize),
    at: usize,
    (hp, wp): (usize, usize),
    slack: usize,
) -> Vec<f32> {
    assert!(x.len() == planes * h * w && at + h <= hp && at + w <= wp);
    let len = planes * hp * wp;
    let mut v: Vec<f32> = Vec::with_capacity(len + slack);
    let zero = std::mem::MaybeUninit::new(0f32);
    let (body, tail) = v.spare_capacity_mut()[..len + slack].split_at_mut(len);
    tail.fill(zero);
    body.par_chunks_mut((hp * wp).max(1))
        .enumerate()
        .for_each(|(plane, dst)| {
            let src = &x[plane * h * w..][..h * w];
            dst[..at * wp].fill(zero);
            dst[(at + h) * wp..].fill(zero);
            for (y, row) in src.chunks(w.max(1)).enumerate() {
                let d = &mut dst[(y + at) * wp..][..wp];
                d[..at].fill(zero);
                for (o, &v) in d[at..at + w].iter_mut().zip(row) {
                    o.write(v);
                }
                d[at + w..].fill(zero);
            }
        });
    // SAFETY: every padded plane was written whole (the rows above and
    // below the image, and each image row's left border, values and right
    // border), and the slack zeroed.
    unsafe { v.set_len(len + slack) };
    v
}

/// Stride-1 convolution of NCHW `x` with the (O × C·k·k) weights `wt`, plus
/// an optional bias, then an optional ReLU, on a CPU with AVX-512F (the
/// caller, [`super::route`], checks it); in `prec` (bf16: the operands
/// rounded to bf16 channel pairs, [`super::bf16`]).
pub(super) fn conv_forward(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    g: &Geom,
    prec: Precision,
) -> Vec<f32> {
    assert!(cpu_has_avx512(), "the direct convolution needs AVX-512");
    let (hp, wp) = (g.h + 2 * g.p, g.w + 2 * g.p);
    let (xf, wf, xh, wh);
    let (xp, wpk, planes) = if prec == Precision::Bf16 {
        xh = super::bf16::pad_input_pairs(x, g, 0);
        wh = super::bf16::pack_weight_pairs(wt, g);
        (Data::Bf16(&xh), Data::Bf16(&wh), g.c.div_ceil(2))
    } else {
        wf = pack_weights(wt, g);
        xf = pad_input(x, g).0;
        (Data::F32(&xf), Data::F32(&wf), g.c)
    };
    let mut bias_p = vec![0f32; g.o.div_ceil(OB) * OB];
    if let Some(b) = bias {
        bias_p[..g.o].copy_from_slice(b);
    }
    let plane_out = g.ho * g.wo;
    // elements of one image's input and of one block's weights
    let (img_len, wsize) = (planes * hp * wp, planes * g.k * g.k * OB);
    if !rows_fill_lanes(g) {
        return grid_forward(xp, img_len, hp, wp, wpk, wsize, &bias_p, relu, g);
    }
    let mut out: Vec<f32> = Vec::with_capacity(g.n * g.o * plane_out);
    let out_ptr = SharedMut(out.as_mut_ptr());
    // tasks: (image, run of output rows), about 8 per thread or more
    let rows_per = {
        let want = 8 * rayon::current_num_threads().max(1);
        let per_image = want.div_ceil(g.n.max(1)).max(1);
        g.ho.div_ceil(per_image).max(1)
    };
    let row_tasks = g.ho.div_ceil(rows_per);
    (0..g.n * row_tasks).into_par_iter().for_each(|t| {
        let (img, r) = (t / row_tasks, t % row_tasks);
        let (y0, y1) = (r * rows_per, ((r + 1) * rows_per).min(g.ho));
        let xi = xp.sub(img * img_len, img_len);
        for y in y0..y1 {
            for b in 0..g.o.div_ceil(OB) {
                let ob_valid = (g.o - b * OB).min(OB);
                let wb = wpk.sub(b * wsize, wsize);
                let bb = &bias_p[b * OB..(b + 1) * OB];
                // first output element of this row, channel b·OB
                let at = (img * g.o + b * OB) * plane_out + y * g.wo;
                // SAFETY: the kernel writes channels b·OB .. b·OB + ob_valid of
                // row y of image img, inside `out` (allocated for n·o·plane_out
                // floats) and written by this task alone; it reads the padded
                // rows y .. y + k of `xi` and the weight block `wb`, in bounds
                // (see `row`).
                unsafe {
                    row(
                        xi,
                        hp,
                        wp,
                        (y * wp, g.wo),
                        wb,
                        bb,
                        relu,
                        g,
                        out_ptr.ptr().add(at),
                        plane_out,
                        ob_valid,
                    );
                }
            }
        }
    });
    // SAFETY: every element was written: each (image, row) by one task, all
    // channels of it (the blocks cover 0..o), every column (the x-blocks
    // cover 0..wo).
    unsafe { out.set_len(g.n * g.o * plane_out) };
    out
}

/// Grid mode of [`conv_forward`]: per (image, block of output channels), one
/// run of [`grid_len`] outputs over the padded grid into a scratch plane,
/// then the valid columns copied out.
#[allow(clippy::too_many_arguments)]
fn grid_forward(
    xp: Data,
    img_len: usize,
    hp: usize,
    wp: usize,
    wpk: Data,
    wsize: usize,
    bias_p: &[f32],
    relu: bool,
    g: &Geom,
) -> Vec<f32> {
    let len = grid_len(g);
    let blocks = g.o.div_ceil(OB);
    let plane_out = g.ho * g.wo;
    let mut out: Vec<f32> = Vec::with_capacity(g.n * g.o * plane_out);
    let out_ptr = SharedMut(out.as_mut_ptr());
    (0..g.n * blocks).into_par_iter().for_each_init(
        || vec![0f32; OB * len],
        |grid, t| {
            let (img, b) = (t / blocks, t % blocks);
            let ob_valid = (g.o - b * OB).min(OB);
            let xi = xp.sub(img * img_len, img_len);
            // SAFETY: the kernel writes `len` floats of ob_valid planes of
            // `grid` (OB·len floats) and reads the padded planes of `xi` in
            // bounds (asserted in `row`).
            unsafe {
                row(
                    xi,
                    hp,
                    wp,
                    (0, len),
                    wpk.sub(b * wsize, wsize),
                    &bias_p[b * OB..(b + 1) * OB],
                    relu,
                    g,
                    grid.as_mut_ptr(),
                    len,
                    ob_valid,
                );
            }
            for j in 0..ob_valid {
                let at = (img * g.o + b * OB + j) * plane_out;
                assert!(at + plane_out <= g.n * g.o * plane_out);
                // SAFETY: in bounds (asserted); this plane belongs to this
                // task alone.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(out_ptr.ptr().add(at), plane_out) };
                for (y, d) in dst.chunks_mut(g.wo.max(1)).enumerate() {
                    d.copy_from_slice(&grid[j * len + y * wp..][..g.wo]);
                }
            }
        },
    );
    // SAFETY: every (image, channel) plane was written whole by one task:
    // each output (y, x) copied from grid position y·wp + x < len, which the
    // kernel wrote for every valid channel.
    unsafe { out.set_len(g.n * g.o * plane_out) };
    out
}

/// `len` consecutive outputs for one block of output channels: output `i`
/// reads, for tap (ky, kx), the padded input at `start + i + ky·wp + kx` of
/// each channel plane (an output row: `start = y·wp`, `len = wo`).
///
/// # Safety
/// AVX-512F must be available; `out` must point at the first output of
/// channel b·OB, valid for writes of `len` floats in each of `ob_valid`
/// planes `plane_out` apart.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn row(
    xi: Data,
    hp: usize,
    wp: usize,
    (start, len): (usize, usize),
    wb: Data,
    bias: &[f32],
    relu: bool,
    g: &Geom,
    out: *mut f32,
    plane_out: usize,
    ob_valid: usize,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: see the notes inside
    unsafe {
        // the last input read: start + len − 1 + (k − 1)·(wp + 1), inside
        // each channel plane (the last plane may end there)
        let reach = start + len + (g.k - 1) * (wp + 1);
        // the channel planes: C of floats, or ⌈C/2⌉ of bf16 channel pairs
        let bf16 = xi.is_bf16();
        let c = if bf16 { g.c.div_ceil(2) } else { g.c };
        assert!(bf16 == wb.is_bf16() && (!bf16 || super::bf16::available()));
        assert!(len > 0 && reach <= hp * wp && bias.len() == OB);
        assert!(c > 0 && xi.len() >= (c - 1) * hp * wp + reach);
        assert!(wb.len() == c * g.k * g.k * OB);
        // the vectors in blocks of at most 3, as even as possible (64
        // columns: 2 + 2 rather than 3 + 1)
        let nvec = len.div_ceil(16);
        let blocks = nvec.div_ceil(3);
        let mut x0 = 0;
        for blk in 0..blocks {
            let nv = nvec / blocks + usize::from(blk < nvec % blocks);
            let left = len - x0;
            let tail = (left - 16 * (nv - 1)).min(16);
            let mask: u16 = if tail == 16 {
                u16::MAX
            } else {
                (1u16 << tail) - 1
            };
            let args = Tile {
                x: xi.ptr().add(start + x0),
                plane: hp * wp,
                wp,
                c,
                k: g.k,
                w: wb.ptr(),
                bias: bias.as_ptr(),
                relu,
                mask,
                out: out.add(x0),
                plane_out,
                ob_valid,
            };
            // SAFETY (every arm): loads reach at most offset
            // start + x0 + 16·(nv − 1) + tail − 1 + (k − 1)·(wp + 1)
            // = start + len − 1 + (k − 1)·(wp + 1) < hp·wp of each channel
            // plane (asserted; masked lanes are not accessed); stores reach
            // outputs < len of ob_valid planes.
            if bf16 {
                // SAFETY: as above, in words of two bf16 values; the CPU
                // has AVX512-BF16 (asserted)
                match (nv, g.k) {
                    (3, 3) => avx512::tile_bf16::<3, 3>(&args),
                    (2, 3) => avx512::tile_bf16::<2, 3>(&args),
                    (1, 3) => avx512::tile_bf16::<1, 3>(&args),
                    (3, 1) => avx512::tile_bf16::<3, 1>(&args),
                    (2, 1) => avx512::tile_bf16::<2, 1>(&args),
                    (1, 1) => avx512::tile_bf16::<1, 1>(&args),
                    (3, _) => avx512::tile_bf16::<3, 0>(&args),
                    (2, _) => avx512::tile_bf16::<2, 0>(&args),
                    _ => avx512::tile_bf16::<1, 0>(&args),
                }
                x0 += 16 * nv;
                continue;
            }
            match (nv, g.k) {
                (3, 3) => avx512::tile::<3, 3>(&args),
                (2, 3) => avx512::tile::<2, 3>(&args),
                (1, 3) => avx512::tile::<1, 3>(&args),
                (3, 1) => avx512::tile::<3, 1>(&args),
                (2, 1) => avx512::tile::<2, 1>(&args),
                (1, 1) => avx512::tile::<1, 1>(&args),
                (3, _) => avx512::tile::<3, 0>(&args),
                (2, _) => avx512::tile::<2, 0>(&args),
                _ => avx512::tile::<1, 0>(&args),
            }
            x0 += 16 * nv;
        }
        debug_assert!(x0 >= len && x0 < len + 16);
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (
            xi, hp, wp, start, len, wb, bias, relu, g, out, plane_out, ob_valid,
        );
        unreachable!("the direct convolution needs AVX-512");
    }
}

/// The operands of a register tile: fp32 values, or words of two bf16
/// values (channel pairs: low half the even channel; see [`super::bf16`]).
#[derive(Clone, Copy)]
pub(super) enum Data<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u32]),
}

impl Data<'_> {
    fn is_bf16(&self) -> bool {
        matches!(self, Data::Bf16(_))
    }

    /// Elements (floats or words).
    fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::Bf16(v) => v.len(),
        }
    }

    /// Elements `start .. start + len`.
    pub(super) fn sub(&self, start: usize, len: usize) -> Self {
        match self {
            Data::F32(v) => Data::F32(&v[start..start + len]),
            Data::Bf16(v) => Data::Bf16(&v[start..start + len]),
        }
    }

    /// The first element, as the tiles take it (a word pointer cast: the
    /// bf16 tiles load it as integers).
    fn ptr(&self) -> *const f32 {
        match self {
            Data::F32(v) => v.as_ptr(),
            Data::Bf16(v) => v.as_ptr().cast(),
        }
    }
}

/// The operands of one register tile.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the AVX-512 kernels
struct Tile {
    /// Input at (channel 0, row y, column x0) of the padded image (in
    /// bf16 tiles: channel pair 0, a word pointer).
    x: *const f32,
    /// Elements between input channel (pair) planes.
    plane: usize,
    /// Padded row length.
    wp: usize,
    /// Input channels (bf16 tiles: channel pairs).
    c: usize,
    k: usize,
    /// Packed weights of the channel block: [c][ky][kx][OB] (bf16 tiles:
    /// [channel pair][ky][kx][OB] words).
    w: *const f32,
    /// OB biases.
    bias: *const f32,
    relu: bool,
    /// Valid lanes of the last vector.
    mask: u16,
    /// Output at (channel b·OB, row y, column x0).
    out: *mut f32,
    plane_out: usize,
    ob_valid: usize,
}
