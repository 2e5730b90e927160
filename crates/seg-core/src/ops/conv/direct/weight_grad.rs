//! The direct 3×3 weight gradient (AVX-512): dW = Σ over pixels of dY ·
//! the input shifted by each tap, with no column matrix. For ≥ 16 input
//! channels the input is copied into a blocked channels-last layout and
//! each aligned load of 16 channels feeds [`OW`] output channels'
//! accumulators; for fewer, vectors run over 16 pixels of the padded input
//! planes and the lanes are summed at the end. Pixels are taken in bands,
//! and each (output block, input unit) pair belongs to one task that goes
//! through the bands in order, so results do not depend on scheduling.

#[cfg(target_arch = "x86_64")]
use super::avx512;
use super::pad_input;
use crate::ops::conv::route::cpu_has_avx512;
use crate::ops::conv::{bf16, Geom};
use crate::precision::Precision;
use rayon::prelude::*;

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
fn weight_grad_channels_last(x: &[f32], dy: &[f32], g: &Geom, prec: Precision) -> Vec<f32> {
    let acc = if prec == Precision::Bf16 {
        // image pairs: the sums over pixels take two images per step, so
        // the kernel sees ⌈N/2⌉ "images" of words
        let (xp, hp, wp, cblocks) = bf16::pad_input_channels_last_pairs(x, g);
        let dyp = bf16::image_pairs(dy, g.n, g.o * g.ho * g.wo);
        let g2 = Geom {
            n: g.n.div_ceil(2),
            ..*g
        };
        let (xv, dv) = (bf16::as_f32(&xp), bf16::as_f32(&dyp));
        wg_accumulate(xv, WgLayout::ChannelBlocksBf16, cblocks, hp, wp, dv, &g2)
    } else {
        let (xp, hp, wp, cblocks) = pad_input_channels_last(x, g);
        wg_accumulate(&xp, WgLayout::ChannelBlocks, cblocks, hp, wp, dy, g)
    };
    let cblocks = g.c.div_ceil(16);
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

/// Output channels per weight-gradient tile (3 × 9 taps = 27 accumulators).
const OW: usize = 3;

/// Whether a direct weight-gradient kernel takes this geometry (3×3
/// kernels; below 8 columns the GEMM path, which batches small images into
/// long products, was faster in `cargo xtask conv-layers`).
pub(in crate::ops::conv) fn suits_weight_grad(g: &Geom) -> bool {
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
/// by each tap, for a 3×3 kernel on a CPU with AVX-512F (the caller,
/// [`crate::ops::conv::route`], checks both). With 16 input channels or
/// more, [`weight_grad_channels_last`]; otherwise vectors over 16 pixels of
/// the padded input planes, the lanes summed at the end in a fixed order.
///
/// In bf16 (16 input channels or more only; fewer run in fp32) the input
/// and output gradient are rounded to bf16 image pairs.
pub(in crate::ops::conv) fn conv_weight_grad(
    x: &[f32],
    dy: &[f32],
    g: &Geom,
    prec: Precision,
) -> Vec<f32> {
    assert!(
        g.k == 3 && cpu_has_avx512(),
        "the direct weight gradient needs a 3x3 kernel and AVX-512"
    );
    if g.c >= 16 {
        let bf = prec == Precision::Bf16 && bf16::available();
        let prec = if bf { prec } else { Precision::Fp32 };
        return weight_grad_channels_last(x, dy, g, prec);
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
    dw
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
    // (image pairs in bf16: `g.n` is the number of pairs)
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
    /// [`WgLayout::ChannelBlocks`] of an image pair, in words of two bf16
    /// values: the bf16 channels-last kernel.
    ChannelBlocksBf16,
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
                // the caller checked AVX512-BF16 (`bf16::available`)
                (WgLayout::ChannelBlocksBf16, 3) => {
                    avx512::wg_cl_tile_bf16::<3>(&raw, wp, ho, wo, a)
                }
                (WgLayout::ChannelBlocksBf16, 2) => {
                    avx512::wg_cl_tile_bf16::<2>(&raw, wp, ho, wo, a)
                }
                (WgLayout::ChannelBlocksBf16, _) => {
                    avx512::wg_cl_tile_bf16::<1>(&raw, wp, ho, wo, a)
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (segs, layout, hp, wp, ow, g, acc);
        unreachable!("the direct convolution needs AVX-512");
    }
}
