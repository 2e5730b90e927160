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
//! weights; the 3×3 weight gradient has kernels of its own (below).
//!
//! Every output element is one sum over (channel, ky, kx) in that order,
//! computed by one thread, so results do not depend on scheduling.

use super::{Geom, SharedMut};
use rayon::prelude::*;

/// Output channels per register tile (the weights are packed in blocks of it).
pub(super) const OB: usize = 8;

/// True when this CPU runs the direct kernel and `SEG_CONV_DIRECT=0` does
/// not switch it off (read once; for comparisons with the GEMM path).
pub(super) fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let cpu = {
            #[cfg(target_arch = "x86_64")]
            {
                std::is_x86_feature_detected!("avx512f")
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                false
            }
        };
        cpu && std::env::var("SEG_CONV_DIRECT").map_or(true, |v| v != "0")
    })
}

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
/// an optional bias, then an optional ReLU; `None` when the CPU lacks
/// AVX-512 (the caller then takes the GEMM path).
pub(super) fn conv_forward(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    g: &Geom,
) -> Option<Vec<f32>> {
    if !available() {
        return None;
    }
    let wpk = pack_weights(wt, g);
    let (xp, hp, wp) = pad_input(x, g);
    let mut bias_p = vec![0f32; g.o.div_ceil(OB) * OB];
    if let Some(b) = bias {
        bias_p[..g.o].copy_from_slice(b);
    }
    let plane_out = g.ho * g.wo;
    if !rows_fill_lanes(g) {
        return Some(grid_forward(&xp, hp, wp, &wpk, &bias_p, relu, g));
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
        let xi = &xp[img * g.c * hp * wp..(img + 1) * g.c * hp * wp];
        for y in y0..y1 {
            for b in 0..g.o.div_ceil(OB) {
                let ob_valid = (g.o - b * OB).min(OB);
                let wb = &wpk[b * g.c * g.k * g.k * OB..(b + 1) * g.c * g.k * g.k * OB];
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
    Some(out)
}

/// Grid mode of [`conv_forward`]: per (image, block of output channels), one
/// run of [`grid_len`] outputs over the padded grid into a scratch plane,
/// then the valid columns copied out.
#[allow(clippy::too_many_arguments)]
fn grid_forward(
    xp: &[f32],
    hp: usize,
    wp: usize,
    wpk: &[f32],
    bias_p: &[f32],
    relu: bool,
    g: &Geom,
) -> Vec<f32> {
    let len = grid_len(g);
    let blocks = g.o.div_ceil(OB);
    let wsize = g.c * g.k * g.k * OB;
    let plane_out = g.ho * g.wo;
    let mut out: Vec<f32> = Vec::with_capacity(g.n * g.o * plane_out);
    let out_ptr = SharedMut(out.as_mut_ptr());
    (0..g.n * blocks).into_par_iter().for_each_init(
        || vec![0f32; OB * len],
        |grid, t| {
            let (img, b) = (t / blocks, t % blocks);
            let ob_valid = (g.o - b * OB).min(OB);
            let xi = &xp[img * g.c * hp * wp..(img + 1) * g.c * hp * wp];
            // SAFETY: the kernel writes `len` floats of ob_valid planes of
            // `grid` (OB·len floats) and reads the padded planes of `xi` in
            // bounds (asserted in `row`).
            unsafe {
                row(
                    xi,
                    hp,
                    wp,
                    (0, len),
                    &wpk[b * wsize..(b + 1) * wsize],
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
    xi: &[f32],
    hp: usize,
    wp: usize,
    (start, len): (usize, usize),
    wb: &[f32],
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
        assert!(len > 0 && reach <= hp * wp && bias.len() == OB);
        assert!(g.c > 0 && xi.len() >= (g.c - 1) * hp * wp + reach);
        assert!(wb.len() == g.c * g.k * g.k * OB);
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
                x: xi.as_ptr().add(start + x0),
                plane: hp * wp,
                wp,
                c: g.c,
                k: g.k,
                w: wb.as_ptr(),
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

/// The input zero-padded by `p` in a blocked channels-last layout: per image
/// and block of 16 channels, hp × wp pixels of 16 channels (the channels
/// past C zero), so that one block's pixels lie contiguous. Returns (data,
/// hp, wp, number of blocks).
fn pad_input_channels_last(x: &[f32], g: &Geom) -> (Vec<f32>, usize, usize, usize) {
    let (hp, wp, blocks) = (g.h + 2 * g.p, g.w + 2 * g.p, g.c.div_ceil(16));
    let zero = std::mem::MaybeUninit::new(0f32);
    // SAFETY: each padded row of a block is written whole: zero when it is a
    // border row; otherwise its border pixels zeroed and, for each inner
    // pixel, its block's channels copied and those past C zeroed.
    let xp = unsafe {
        crate::ops::par_uninit(g.n * blocks * hp * wp * 16, wp * 16, |r, dst| {
            let (img_block, y) = (r / hp, r % hp);
            let (img, cb) = (img_block / blocks, img_block % blocks);
            if y < g.p || y >= g.p + g.h {
                dst.fill(zero);
                return;
            }
            dst[..g.p * 16].fill(zero);
            dst[(g.p + g.w) * 16..].fill(zero);
            let iy = y - g.p;
            let c_end = (cb * 16 + 16).min(g.c);
            for c in cb * 16..c_end {
                let src = &x[((img * g.c + c) * g.h + iy) * g.w..][..g.w];
                let lane = c - cb * 16;
                for (xx, &v) in src.iter().enumerate() {
                    dst[(xx + g.p) * 16 + lane].write(v);
                }
            }
            if c_end < cb * 16 + 16 {
                for xx in 0..g.w {
                    dst[(xx + g.p) * 16 + (c_end - cb * 16)..(xx + g.p + 1) * 16].fill(zero);
                }
            }
        })
    };
    (xp, hp, wp, blocks)
}

/// The weight gradient with vectors over 16 input channels: the input in
/// blocked channels-last layout ([`pad_input_channels_last`]), the output gradient
/// broadcast one pixel at a time. For each pixel and tap, one aligned load
/// of 16 channels feeds [`OW`] fused multiply-adds (one per output
/// channel of the block); the 27 accumulators hold dW itself (no sums across
/// lanes). Tasks, bands and summation order: [`wg_accumulate`].
fn weight_grad_channels_last(x: &[f32], dy: &[f32], g: &Geom) -> Vec<f32> {
    let (xp, hp, wp, cblocks) = pad_input_channels_last(x, g);
    let acc = wg_accumulate(&xp, WgLayout::ChannelBlocks, cblocks, hp, wp, dy, g);
    let kk = g.c * 9;
    let mut dw = vec![0f32; g.o * kk];
    for (t, a) in acc.chunks(WG_ACC).enumerate() {
        let (b, cb) = (t / cblocks, t % cblocks);
        for j in 0..(g.o - b * OW).min(OW) {
            let o = b * OW + j;
            for tap in 0..9 {
                let lanes = &a[(j * 9 + tap) * 16..][..16];
                for (l, &v) in lanes.iter().enumerate() {
                    let c = cb * 16 + l;
                    if c < g.c {
                        dw[o * kk + c * 9 + tap] = v;
                    }
                }
            }
        }
    }
    dw
}

/// The operands of one register tile.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the AVX-512 kernels
struct Tile {
    /// Input at (channel 0, row y, column x0) of the padded image.
    x: *const f32,
    /// Floats between input channel planes.
    plane: usize,
    /// Padded row length.
    wp: usize,
    c: usize,
    k: usize,
    /// Packed weights of the channel block: [c][ky][kx][OB].
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

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Tile, OB};
    use std::arch::x86_64::*;

    /// The weight-gradient accumulators [j][tap] from `mem` (16 lanes each).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load_acc<const W: usize>(mem: *const f32) -> [[__m512; 9]; W] {
        let mut acc = [[_mm512_setzero_ps(); 9]; W];
        for (j, row) in acc.iter_mut().enumerate() {
            for (t, a) in row.iter_mut().enumerate() {
                // SAFETY: the callers' `mem` holds OW·9·16 floats, W <= OW
                *a = unsafe { _mm512_loadu_ps(mem.add((j * 9 + t) * 16)) };
            }
        }
        acc
    }

    /// Stores the accumulators back to `mem`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn store_acc<const W: usize>(acc: &[[__m512; 9]; W], mem: *mut f32) {
        for (j, row) in acc.iter().enumerate() {
            for (t, a) in row.iter().enumerate() {
                // SAFETY: as in `load_acc`
                unsafe { _mm512_storeu_ps(mem.add((j * 9 + t) * 16), *a) };
            }
        }
    }

    /// The channels-last weight-gradient tile: for each segment's output
    /// pixels, `W` broadcast output-gradient values times the 16-channel
    /// input vector of each tap, into the accumulators at `mem` ([j][tap][16
    /// channels]), held in registers throughout.
    ///
    /// # Safety
    /// AVX-512F available; each `x` valid for 16 floats at every
    /// ((y + ky)·wp + xx + kx)·16 for the segment's rows y, xx < wo and ky,
    /// kx < 3; each `d` for `W` planes of ho × wo; `mem` for OW·9·16 floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn wg_cl_tile<const W: usize>(
        segs: &[Seg],
        wp: usize,
        ho: usize,
        wo: usize,
        mem: *mut f32,
    ) {
        unsafe {
            let mut acc = load_acc::<W>(mem);
            let plane = ho * wo;
            for seg in segs {
                for y in seg.rows.0..seg.rows.1 {
                    let drow = seg.d.add(y * wo);
                    for xx in 0..wo {
                        let mut dv = [_mm512_setzero_ps(); W];
                        for (j, slot) in dv.iter_mut().enumerate() {
                            *slot = _mm512_set1_ps(*drow.add(j * plane + xx));
                        }
                        for ky in 0..3 {
                            let xr = seg.x.add(((y + ky) * wp + xx) * 16);
                            for kx in 0..3 {
                                let xv = _mm512_loadu_ps(xr.add(kx * 16));
                                for j in 0..W {
                                    acc[j][ky * 3 + kx] =
                                        _mm512_fmadd_ps(dv[j], xv, acc[j][ky * 3 + kx]);
                                }
                            }
                        }
                    }
                }
            }
            store_acc(&acc, mem);
        }
    }

    /// A padded input channel plane, the first of the block's output
    /// gradient planes, and the output rows to take.
    pub(super) struct Seg {
        pub x: *const f32,
        pub d: *const f32,
        pub rows: (usize, usize),
    }

    /// Adds the weight-gradient products of the segments, each for `W`
    /// output channels (planes `ho·wo` apart at `d`) and one padded input
    /// channel plane at `x`, into the vector accumulators at `mem` ([j][tap]
    /// [16 lanes], tap = ky·3 + kx), held in registers through the segments.
    ///
    /// # Safety
    /// AVX-512F available; each `x` valid for rows 0 .. ho + 2 and columns
    /// 0 .. wo + 2 of rows `wp` long, each `d` for `W` planes of ho × wo,
    /// rows within 0 .. ho; `mem` for OW·9·16 floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn wg_tile<const W: usize>(
        segs: &[Seg],
        wp: usize,
        ho: usize,
        wo: usize,
        mem: *mut f32,
    ) {
        unsafe {
            let mut acc = load_acc::<W>(mem);
            let plane = ho * wo;
            for seg in segs {
                let (x, d) = (seg.x, seg.d);
                for y in seg.rows.0..seg.rows.1 {
                    let mut x0 = 0;
                    while x0 < wo {
                        let left = wo - x0;
                        let m: u16 = if left >= 16 {
                            u16::MAX
                        } else {
                            (1u16 << left) - 1
                        };
                        let full = m == u16::MAX;
                        let load = |p: *const f32| {
                            if full {
                                _mm512_loadu_ps(p)
                            } else {
                                _mm512_maskz_loadu_ps(m, p)
                            }
                        };
                        let mut dv = [_mm512_setzero_ps(); W];
                        for (j, slot) in dv.iter_mut().enumerate() {
                            *slot = load(d.add(j * plane + y * wo + x0));
                        }
                        for ky in 0..3 {
                            let xr = x.add((y + ky) * wp + x0);
                            for kx in 0..3 {
                                let xv = load(xr.add(kx));
                                for j in 0..W {
                                    acc[j][ky * 3 + kx] =
                                        _mm512_fmadd_ps(dv[j], xv, acc[j][ky * 3 + kx]);
                                }
                            }
                        }
                        x0 += 16;
                    }
                }
            }
            store_acc(&acc, mem);
        }
    }

    /// `V` vectors × OB channels of one output row.
    ///
    /// # Safety
    /// AVX-512F available; the pointers valid as described on [`Tile`] for
    /// the columns and rows the tile covers.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<const V: usize, const K: usize>(t: &Tile) {
        // SAFETY: the caller's contract
        unsafe { tile_body::<V, K>(t) }
    }

    #[inline(always)]
    unsafe fn tile_body<const V: usize, const K: usize>(t: &Tile) {
        unsafe {
            // K: the kernel size fixed at compile time (loops unrolled), or
            // 0 for any size (read from the tile)
            let k = if K == 0 { t.k } else { K };
            let mut acc = [[_mm512_setzero_ps(); OB]; V];
            for ci in 0..t.c {
                let xc = t.x.add(ci * t.plane);
                let wc = t.w.add(ci * k * k * OB);
                for ky in 0..k {
                    let xr = xc.add(ky * t.wp);
                    let wr = wc.add(ky * k * OB);
                    for kx in 0..k {
                        let xs = xr.add(kx);
                        let mut xv = [_mm512_setzero_ps(); V];
                        for (v, slot) in xv.iter_mut().enumerate() {
                            *slot = if v + 1 == V {
                                _mm512_maskz_loadu_ps(t.mask, xs.add(16 * v))
                            } else {
                                _mm512_loadu_ps(xs.add(16 * v))
                            };
                        }
                        let wk = wr.add(kx * OB);
                        for j in 0..OB {
                            let wj = _mm512_set1_ps(*wk.add(j));
                            for (a, &xvv) in acc.iter_mut().zip(&xv) {
                                a[j] = _mm512_fmadd_ps(xvv, wj, a[j]);
                            }
                        }
                    }
                }
            }
            let zero = _mm512_setzero_ps();
            for j in 0..t.ob_valid {
                let b = _mm512_set1_ps(*t.bias.add(j));
                let o = t.out.add(j * t.plane_out);
                for (v, a) in acc.iter().enumerate() {
                    let mut r = _mm512_add_ps(a[j], b);
                    if t.relu {
                        // max(r, 0) that keeps NaN (as PyTorch's ReLU does)
                        let neg = _mm512_cmp_ps_mask(r, zero, _CMP_LT_OQ);
                        r = _mm512_mask_mov_ps(r, neg, zero);
                    }
                    if v + 1 == V {
                        _mm512_mask_storeu_ps(o.add(16 * v), t.mask, r);
                    } else {
                        _mm512_storeu_ps(o.add(16 * v), r);
                    }
                }
            }
        }
    }
}

/// Output channels per weight-gradient tile (3 × 9 taps = 27 accumulators).
const OW: usize = 3;

/// Whether a direct weight-gradient kernel takes this geometry (3×3
/// kernels; below 8 columns the GEMM path, which batches small images into
/// long products, was faster in `cargo xtask conv-layers`).
pub(super) fn suits_weight_grad(g: &Geom) -> bool {
    // 16 input channels or more: the channels-last kernel; fewer: the
    // pixel-vector kernel, on rows that fill its lanes
    g.k == 3
        && (g.c >= 16 && g.wo >= 8
            || g.wo >= 16 && {
                let lanes = g.wo.div_ceil(16) * 16;
                g.wo * 100 >= lanes * 85
            })
}

/// The weight gradient dW (O × C·3·3) = Σ over pixels of dy[o] · x shifted
/// by each tap; `None` when the CPU lacks AVX-512. With 16 input channels or
/// more, [`weight_grad_channels_last`]; otherwise vectors over 16 pixels of
/// the padded input planes, the lanes summed at the end in a fixed order.
pub(super) fn conv_weight_grad(x: &[f32], dy: &[f32], g: &Geom) -> Option<Vec<f32>> {
    if !available() || g.k != 3 {
        return None;
    }
    if g.c >= 16 {
        return Some(weight_grad_channels_last(x, dy, g));
    }
    let (xp, hp, wp) = pad_input(x, g);
    let acc = wg_accumulate(&xp, WgLayout::Planes, g.c, hp, wp, dy, g);
    let kk = g.c * 9;
    let mut dw = vec![0f32; g.o * kk];
    for (t, a) in acc.chunks(WG_ACC).enumerate() {
        let (b, ci) = (t / g.c, t % g.c);
        for j in 0..(g.o - b * OW).min(OW) {
            let o = b * OW + j;
            for tap in 0..9 {
                let lanes = &a[(j * 9 + tap) * 16..][..16];
                dw[o * kk + ci * 9 + tap] = lanes.iter().sum();
            }
        }
    }
    Some(dw)
}

/// Floats of one (output block, input unit) pair's accumulators: [j][tap][16
/// lanes].
const WG_ACC: usize = OW * 9 * 16;

/// Runs the weight-gradient tiles and returns every pair's accumulators, pair
/// t = (output block t / units, input unit t % units), an input unit being
/// one channel plane ([`WgLayout::Planes`]) or one block of 16 channels
/// ([`WgLayout::ChannelBlocks`]) of the padded input `xp`.
///
/// The pixels are taken in bands (rows of one image, or several small
/// images, ≈ 2048 pixels); each task owns a run of pairs and goes through the
/// bands in order, so that a band stays in the caches while the run's pairs
/// read it and each pair's accumulators stay in registers through a band
/// (in memory between bands). Every accumulator is thus summed in a fixed
/// order: the result does not depend on scheduling.
fn wg_accumulate(
    xp: &[f32],
    layout: WgLayout,
    units: usize,
    hp: usize,
    wp: usize,
    dy: &[f32],
    g: &Geom,
) -> Vec<f32> {
    let plane_out = g.ho * g.wo;
    let unit = hp * wp * if layout == WgLayout::Planes { 1 } else { 16 };
    let oblocks = g.o.div_ceil(OW);
    let pairs = oblocks * units;
    let mut acc = vec![0f32; pairs * WG_ACC];
    let per = pairs
        .div_ceil(4 * rayon::current_num_threads().max(1))
        .max(1);
    let bands = wg_bands(g, 2048);
    acc.par_chunks_mut(per * WG_ACC)
        .enumerate()
        .for_each(|(chunk, accs)| {
            let mut segs = Vec::new();
            for band in &bands {
                for (i, a) in accs.chunks_mut(WG_ACC).enumerate() {
                    let t = chunk * per + i;
                    let (b, u) = (t / units, t % units);
                    let ow = (g.o - b * OW).min(OW);
                    segs.clear();
                    for &(img, y0, y1) in band {
                        let xi = &xp[(img * units + u) * unit..][..unit];
                        let d0 = (img * g.o + b * OW) * plane_out;
                        segs.push((xi, &dy[d0..d0 + ow * plane_out], (y0, y1)));
                    }
                    // SAFETY: `wg_band` checks the bounds it relies on.
                    unsafe { wg_band(&segs, layout, hp, wp, ow, g, a) };
                }
            }
        });
    acc
}

/// Bands of the weight-gradient work: lists of (image, first row, end row)
/// of about `target` output pixels each, in image and row order.
fn wg_bands(g: &Geom, target: usize) -> Vec<Vec<(usize, usize, usize)>> {
    let hw = (g.ho * g.wo).max(1);
    let mut bands = Vec::new();
    if hw >= target {
        let rows = (target / g.wo.max(1)).max(1);
        for img in 0..g.n {
            let mut y0 = 0;
            while y0 < g.ho {
                let y1 = (y0 + rows).min(g.ho);
                bands.push(vec![(img, y0, y1)]);
                y0 = y1;
            }
        }
    } else {
        let per = (target / hw).max(1);
        let imgs: Vec<usize> = (0..g.n).collect();
        for run in imgs.chunks(per) {
            bands.push(run.iter().map(|&i| (i, 0, g.ho)).collect());
        }
    }
    bands
}

/// One image's share of a band: its padded input channel plane, its `ow`
/// output-gradient planes, the output rows.
type WgSeg<'a> = (&'a [f32], &'a [f32], (usize, usize));

/// How a weight-gradient segment's input is laid out.
#[derive(Clone, Copy, PartialEq)]
enum WgLayout {
    /// One padded channel plane (hp × wp floats): the pixel-vector kernel.
    Planes,
    /// One padded image's block of 16 channels (hp × wp pixels of 16
    /// floats): the channels-last kernel.
    ChannelBlocks,
}

/// Adds the products of the band's segments, for one input channel (or
/// block of 16) and `ow` output channels, into the vector accumulators
/// `acc` ([j][ky·3 + kx][16 lanes]).
///
/// # Safety
/// AVX-512F must be available.
unsafe fn wg_band(
    segs: &[WgSeg],
    layout: WgLayout,
    hp: usize,
    wp: usize,
    ow: usize,
    g: &Geom,
    acc: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        // every tap of every output row y < ho and column < wo reads rows
        // < ho + 2 <= hp and columns < wo + 2 <= wp of a whole padded input
        assert!(g.ho + 2 <= hp && g.wo + 2 <= wp && (1..=OW).contains(&ow));
        assert!(acc.len() == OW * 9 * 16);
        let floats = hp * wp * if layout == WgLayout::Planes { 1 } else { 16 };
        let mut raw = Vec::with_capacity(segs.len());
        for &(xc, d, (y0, y1)) in segs {
            assert!(xc.len() == floats && d.len() == ow * g.ho * g.wo);
            assert!(y0 <= y1 && y1 <= g.ho);
            raw.push(avx512::Seg {
                x: xc.as_ptr(),
                d: d.as_ptr(),
                rows: (y0, y1),
            });
        }
        let a = acc.as_mut_ptr();
        let (ho, wo) = (g.ho, g.wo);
        // SAFETY: bounds asserted above; see `wg_tile` and `wg_cl_tile`.
        unsafe {
            match (layout, ow) {
                (WgLayout::Planes, 3) => avx512::wg_tile::<3>(&raw, wp, ho, wo, a),
                (WgLayout::Planes, 2) => avx512::wg_tile::<2>(&raw, wp, ho, wo, a),
                (WgLayout::Planes, _) => avx512::wg_tile::<1>(&raw, wp, ho, wo, a),
                (WgLayout::ChannelBlocks, 3) => avx512::wg_cl_tile::<3>(&raw, wp, ho, wo, a),
                (WgLayout::ChannelBlocks, 2) => avx512::wg_cl_tile::<2>(&raw, wp, ho, wo, a),
                (WgLayout::ChannelBlocks, _) => avx512::wg_cl_tile::<1>(&raw, wp, ho, wo, a),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (segs, layout, hp, wp, ow, g, acc);
        unreachable!("the direct convolution needs AVX-512");
    }
}
