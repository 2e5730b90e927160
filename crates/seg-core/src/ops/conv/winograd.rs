//! Winograd F(2×2, 3×3) convolution for CPUs with AVX-512 (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Each 2×2 block of outputs (a tile) comes from the 4×4 input patch around
//! it: `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`. The element-wise products, summed
//! over input channels, are 16 independent matrix products (one per position
//! ξ of the 4×4 transformed tile) of (O × C) transformed weights with (C ×
//! tiles) transformed inputs: 16·C·O multiply-adds per tile of 4 outputs
//! where the direct convolution needs 36·C·O, 2.25× fewer. The products run
//! on the direct kernel's register tile with a 1×1 "kernel"
//! ([`super::direct::row`]); the transforms are AVX-512 passes over 16 tiles
//! at a time (in [`avx512`]).
//!
//! The tiles (image, tile row, tile column, in that order) are cut into
//! blocks of a few hundred; a task transforms one block's inputs into a
//! buffer that stays in L2, runs the 16 products for its range of output
//! channels, and transforms the results into the output, so no intermediate
//! tensor goes through memory. Each output is one fixed sequence of
//! operations, so results do not depend on scheduling. In exact arithmetic
//! the result equals the direct convolution; in f32 the two differ by a few
//! units in the last place of the sums (tests compare them).

use super::direct::Data;
use super::route::cpu_has_avx512;
use super::{direct, Geom, SharedMut};
use crate::precision::Precision;
use rayon::prelude::*;
use std::mem::MaybeUninit;

const OB: usize = direct::OB;

/// Whether Winograd suits this geometry: 3×3, stride 1, padding 1 (output
/// the size of the input), with enough channels in and out for the products
/// to outweigh the transforms. The CPU and the switches are checked by
/// [`super::route`].
pub(super) fn suits(g: &Geom) -> bool {
    g.k == 3
        && g.p == 1
        && g.ho == g.h
        && g.wo == g.w
        && g.c >= 16
        && g.o >= OB
        && g.h.div_ceil(2) * g.w.div_ceil(2) >= MIN_TILES_PER_IMAGE
}

/// Fewest tiles (2×2 output blocks) per image for Winograd: with fewer,
/// each transformed weight (16/9 of the weights, written and read back
/// once per call) feeds too few products (4×4 images at batch 8 ran slower
/// than the direct path in `cargo xtask conv-layers`). Judged per image,
/// not over the batch, so that the kernel (and its rounding) of an image
/// does not depend on the batch it comes in: a data-parallel rank's share
/// of a batch is computed as in the whole batch. 24 tiles: 8×12 images and
/// larger (the old rule, 64 tiles over the batch, took 8×8 images at batch
/// 8; they now take the direct kernel's grid mode).
const MIN_TILES_PER_IMAGE: usize = 24;

/// Tile geometry: `th × tw` tiles per image, inputs zero-padded to `hp × wp`
/// (one row and column before the image, the rest after).
#[derive(Clone, Copy)]
struct Tiles {
    th: usize,
    tw: usize,
    hp: usize,
    wp: usize,
}

impl Tiles {
    fn new(g: &Geom) -> Self {
        let (th, tw) = (g.h.div_ceil(2), g.w.div_ceil(2));
        Tiles {
            th,
            tw,
            hp: 2 * th + 2,
            wp: 2 * tw + 2,
        }
    }
}

/// Floats read past the end of the padded input by the full-width loads of
/// [`avx512::input_chunk`] (their extra lanes are discarded).
const SLACK: usize = 48;

/// How [`conv_forward`] reads its weights.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kernel {
    /// (O × C × 3 × 3), as given.
    Plain,
    /// The weights of the forward convolution whose input gradient this is,
    /// (C × O × 3 × 3): kernel (o, c) is their kernel (c, o) turned by 180°.
    Flipped,
}

/// The transformed weights `U = G g Gᵀ`, packed for the product kernel as
/// [output block][ξ][c][OB] (zero past O).
fn transform_weights(wt: &[f32], kernel: Kernel, g: &Geom) -> Vec<f32> {
    let blocks = g.o.div_ceil(OB);
    let size = 16 * g.c * OB;
    // SAFETY: each block is written whole: for every channel, all 16 ξ × OB
    // entries (zero past O).
    unsafe {
        crate::ops::par_uninit(blocks * size, size, |b, dst| {
            for c in 0..g.c {
                let mut loc = [[0f32; OB]; 16];
                #[allow(clippy::needless_range_loop)] // j: output channel b·OB + j
                for j in 0..(g.o - b * OB).min(OB) {
                    let o = b * OB + j;
                    let k: [f32; 9] = match kernel {
                        Kernel::Plain => wt[(o * g.c + c) * 9..][..9].try_into().unwrap(),
                        Kernel::Flipped => {
                            let mut f: [f32; 9] = wt[(c * g.o + o) * 9..][..9].try_into().unwrap();
                            f.reverse();
                            f
                        }
                    };
                    // G g: rows g0, (g0 + g1 + g2)/2, (g0 − g1 + g2)/2, g2
                    let mut gg = [[0f32; 3]; 4];
                    for col in 0..3 {
                        let (r0, r1, r2) = (k[col], k[3 + col], k[6 + col]);
                        gg[0][col] = r0;
                        gg[1][col] = 0.5 * (r0 + r1 + r2);
                        gg[2][col] = 0.5 * (r0 - r1 + r2);
                        gg[3][col] = r2;
                    }
                    // (G g) Gᵀ, row by row
                    for (r, &[a0, a1, a2]) in gg.iter().enumerate() {
                        let vals = [a0, 0.5 * (a0 + a1 + a2), 0.5 * (a0 - a1 + a2), a2];
                        for (s, &v) in vals.iter().enumerate() {
                            loc[r * 4 + s][j] = v;
                        }
                    }
                }
                for (xi, l) in loc.iter().enumerate() {
                    for (d, &v) in dst[(xi * g.c + c) * OB..][..OB].iter_mut().zip(l) {
                        d.write(v);
                    }
                }
            }
        })
    }
}

/// A run of at most 16 tiles in one tile row: image, tile row, first tile
/// column, count, and offset within the block.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the AVX-512 kernels
#[derive(Clone, Copy)]
struct Chunk {
    img: usize,
    ty: usize,
    tx: usize,
    m: usize,
    off: usize,
}

/// The chunks of tiles `start .. end` (in image, row, column order).
fn chunks(t: Tiles, start: usize, end: usize) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut i = start;
    while i < end {
        let (img, r) = (i / (t.th * t.tw), i % (t.th * t.tw));
        let (ty, tx) = (r / t.tw, r % t.tw);
        let m = (t.tw - tx).min(16).min(end - i);
        out.push(Chunk {
            img,
            ty,
            tx,
            m,
            off: i - start,
        });
        i += m;
    }
    out
}

/// Stride-1, padding-1 3×3 convolution of NCHW `x` with the (O × C·9)
/// weights `wt` (or the flipped weights of a forward convolution:
/// [`Kernel`]), plus an optional bias, then an optional ReLU (NaN kept).
/// The caller checks [`suits`] and the CPU ([`super::route`]).
pub(super) fn conv_forward(
    x: &[f32],
    wt: &[f32],
    kernel: Kernel,
    bias: Option<&[f32]>,
    relu: bool,
    g: &Geom,
    prec: Precision,
) -> Vec<f32> {
    assert!(cpu_has_avx512(), "the Winograd convolution needs AVX-512");
    let bf16 = prec == Precision::Bf16 && super::bf16::available();
    assert!(suits(g) && x.len() == g.n * g.c * g.h * g.w && wt.len() == g.o * g.c * 9);
    let t = Tiles::new(g);
    // zero-padded to hp × wp per (image, channel) plane, plus SLACK zeros
    let xp = direct::pad_planes(x, g.n * g.c, (g.h, g.w), 1, (t.hp, t.wp), SLACK);
    let u = transform_weights(wt, kernel, g);
    // bf16: the transformed weights as channel pairs, [(b·16 + ξ)][pair][OB]
    let c2 = g.c.div_ceil(2);
    let u16: Vec<u32> = if bf16 {
        let mut all = Vec::with_capacity(u.len().div_ceil(g.c) * c2);
        let mut one = Vec::new();
        for blk in u.chunks(g.c * OB) {
            super::bf16::pair_channels(blk, g.c, OB, (1, OB), &mut one);
            all.extend_from_slice(&one);
        }
        all
    } else {
        Vec::new()
    };
    let total = g.n * t.th * t.tw;
    // tiles per block: the block's transformed inputs (16·C·per floats,
    // 256 KiB) and products stay in L2; at least 48 tiles (3 vectors)
    let per = (4096 / g.c).clamp(48, 256).min(total);
    let nblocks = total.div_ceil(per);
    let oblocks = g.o.div_ceil(OB);
    // enough tasks for the threads: split the output channels when there
    // are few tile blocks (small images)
    let want = 4 * rayon::current_num_threads().max(1);
    let osplit = want.div_ceil(nblocks).clamp(1, oblocks);
    let ob_per = oblocks.div_ceil(osplit);
    let osplit = oblocks.div_ceil(ob_per);
    let plane_out = g.h * g.w;
    let mut out: Vec<f32> = Vec::with_capacity(g.n * g.o * plane_out);
    let out_ptr = SharedMut(out.as_mut_ptr());
    let zero_bias = [0f32; OB];
    (0..nblocks * osplit).into_par_iter().for_each_init(
        || {
            (
                Vec::<MaybeUninit<f32>>::new(),
                Vec::<MaybeUninit<f32>>::new(),
                Vec::<u32>::new(),
            )
        },
        |(vbuf, mbuf, vpairs), task| {
            let (blk, os) = (task / osplit, task % osplit);
            let (start, end) = (blk * per, ((blk + 1) * per).min(total));
            let len = end - start;
            let (b0, b1) = (os * ob_per, ((os + 1) * ob_per).min(oblocks));
            let ol = (b1 - b0) * OB;
            let cks = chunks(t, start, end);
            mbuf.resize(16 * ol * len, MaybeUninit::uninit());
            let mp = mbuf.as_mut_ptr().cast::<f32>();
            let v: &[f32] = if bf16 {
                // input transform straight to channel-pair words:
                // [pair][ξ][tile]
                vpairs.resize(c2 * 16 * len, 0);
                let pp = vpairs.as_mut_ptr();
                for cp in 0..c2 {
                    for ck in &cks {
                        let plane = |c: usize| xp[(ck.img * g.c + c) * t.hp * t.wp..].as_ptr();
                        let hi = (2 * cp + 1 < g.c).then(|| plane(2 * cp + 1));
                        // SAFETY: AVX512-BF16 checked (`bf16`); the loads as
                        // below; the stores write lanes < m of words
                        // [cp][ξ][off ..], inside `vpairs`.
                        unsafe {
                            avx512::input_chunk_pair(
                                plane(2 * cp),
                                hi,
                                t.wp,
                                ck,
                                pp.add(cp * 16 * len + ck.off),
                                len,
                            )
                        }
                    }
                }
                &[]
            } else {
                vbuf.resize(16 * g.c * len, MaybeUninit::uninit());
                let vp = vbuf.as_mut_ptr().cast::<f32>();
                // input transform: V[c][ξ][tile] (one channel's 16 rows close
                // together for the stores; the products read row ξ of every
                // channel, 16·len apart)
                for c in 0..g.c {
                    for ck in &cks {
                        let plane = &xp[(ck.img * g.c + c) * t.hp * t.wp..];
                        // SAFETY: the loads reach row 2·ty + 3 < hp, columns up
                        // to 2·tx + 33 of it, inside the plane or the slack
                        // after the last one; the stores write lanes < m of
                        // V[c][ξ][off ..], inside `vbuf`.
                        unsafe {
                            avx512::input_chunk(
                                plane.as_ptr(),
                                t.wp,
                                ck,
                                vp.add(c * 16 * len + ck.off),
                                len,
                            )
                        }
                    }
                }
                // SAFETY: every V[c][ξ][i], i < len, was written above (the
                // chunks cover the block).
                unsafe { std::slice::from_raw_parts(vp, 16 * g.c * len) }
            };
            let g1 = Geom {
                n: 1,
                c: g.c,
                h: 1,
                w: len,
                o: g.o,
                k: 1,
                p: 0,
                ho: 1,
                wo: len,
            };
            for xi in 0..16 {
                // channel (pair) planes of 16 rows of `len`, starting at row ξ
                let vx = if bf16 {
                    Data::Bf16(&vpairs[xi * len..])
                } else {
                    Data::F32(&v[xi * len..])
                };
                for b in b0..b1 {
                    let wb = if bf16 {
                        Data::Bf16(&u16[(b * 16 + xi) * c2 * OB..][..c2 * OB])
                    } else {
                        Data::F32(&u[(b * 16 + xi) * g.c * OB..][..g.c * OB])
                    };
                    let ob_valid = (g.o - b * OB).min(OB);
                    // SAFETY: writes `len` floats of ob_valid rows of
                    // M[(b − b0)·OB + j][ξ], 16·len apart, inside `mbuf`.
                    unsafe {
                        direct::row(
                            vx,
                            16,
                            len,
                            (0, len),
                            wb,
                            &zero_bias,
                            false,
                            &g1,
                            mp.add(((b - b0) * OB * 16 + xi) * len),
                            16 * len,
                            ob_valid,
                        );
                    }
                }
            }
            // output transform
            let o_end = (b1 * OB).min(g.o);
            for o in b0 * OB..o_end {
                let bo = bias.map_or(0.0, |b| b[o]);
                let ol_i = o - b0 * OB;
                for ck in &cks {
                    let at = (ck.img * g.o + o) * plane_out;
                    assert!(at + plane_out <= g.n * g.o * plane_out);
                    // SAFETY: reads lanes < m of M[ol_i][ξ][off ..] (written
                    // by the products: o < O); writes the tile outputs
                    // inside this (image, channel) plane that fall inside
                    // h × w; these belong to this task alone.
                    unsafe {
                        avx512::output_chunk(
                            mp.add(ol_i * 16 * len + ck.off),
                            len,
                            bo,
                            relu,
                            out_ptr.ptr().add(at),
                            g.h,
                            g.w,
                            ck,
                        )
                    }
                }
            }
        },
    );
    // SAFETY: each output pixel belongs to one tile, each tile to one block,
    // and every (block, output channel) was transformed by one task.
    unsafe { out.set_len(g.n * g.o * plane_out) };
    out
}

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    use super::Chunk;

    pub(super) unsafe fn input_chunk(_: *const f32, _: usize, _: &Chunk, _: *mut f32, _: usize) {
        unreachable!("the Winograd convolution needs AVX-512")
    }

    pub(super) unsafe fn input_chunk_pair(
        _: *const f32,
        _: Option<*const f32>,
        _: usize,
        _: &Chunk,
        _: *mut u32,
        _: usize,
    ) {
        unreachable!("the Winograd convolution needs AVX-512")
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn output_chunk(
        _: *const f32,
        _: usize,
        _: f32,
        _: bool,
        _: *mut f32,
        _: usize,
        _: usize,
        _: &Chunk,
    ) {
        unreachable!("the Winograd convolution needs AVX-512")
    }
}
