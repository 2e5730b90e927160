//! AMX tiles for the bf16 convolution products (Sapphire Rapids and later
//! Xeons): `TDPBF16PS` adds the product of a 16 × 32 bf16 tile A and a
//! 32 × 16 bf16 tile B (held as 16 rows of 16 pair words) to a 16 × 16 fp32
//! tile C, 8192 multiply-adds per instruction.
//!
//! The products take the operands in the layouts of the AVX512-BF16 kernels
//! ([`super::bf16`]): the input as channel-pair planes (word = channels 2i,
//! 2i + 1 at one position). With M = 16 output channels, N = 16 consecutive
//! outputs and K = 16 channel pairs of one tap:
//! - B (row r): pair plane r at the tap's offset, 16 words — the planes
//!   themselves, loaded with the plane length as the row stride;
//! - A (row m): output channel m's weights of the 16 pairs for that tap,
//!   packed by [`pack_weights`] as [16-channel block][tap][pair block][m][16];
//! - C (row m): output channel m at the 16 outputs.
//!
//! [`run`] sums over taps and pair blocks into 2 × 2 C tiles (32 channels ×
//! 32 outputs; A in tmm4–5, B in tmm6–7), then stores each C tile and adds
//! the bias and ReLU while copying its valid rows and columns out. The 16
//! outputs of a column block need not be adjacent to the next block's: the
//! caller lists them ([`Block`]). Each output is one fixed sequence of tile
//! products, so results do not depend on the threads.
//!
//! Linux hands out the tile state only on request, once per process
//! ([`crate::precision::amx_tiles`]).

mod weight_grad;

pub(super) use weight_grad::{conv_weight_grad, suits as suits_weight_grad};

use super::Geom;
use std::sync::OnceLock;

/// Output channels, outputs and channel pairs of one tile.
pub(super) const T: usize = 16;

/// Channel pairs per K block of a pass whose input has `c` channels: 16,
/// or all of them when there are fewer (4 to 15 pairs: 7 to 30 channels,
/// one partial K block, the tiles configured to it); `None` otherwise
/// (a partial block after whole ones, or fewer than 4 pairs).
pub(super) fn pairs_per_block(c: usize) -> Option<usize> {
    let c2 = c.div_ceil(2);
    if c2.is_multiple_of(T) {
        Some(T)
    } else if (4..T).contains(&c2) {
        Some(c2)
    } else {
        None
    }
}

/// True when the AMX kernels can run ([`crate::precision::amx_tiles`]) and
/// `SEG_CONV_AMX=0` does not switch them off (read once; for comparisons).
pub(crate) fn available() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        crate::precision::amx_tiles() && std::env::var("SEG_CONV_AMX").map_or(true, |v| v != "0")
    })
}

/// The (O × C × taps) weights `wt` as A tiles: [16-channel block][tap]
/// [16-pair block][16 rows][16 words] (each word channels 2i, 2i + 1
/// rounded to bf16), zero past `o` and `c`.
pub(super) fn pack_weights(wt: &[f32], o: usize, c: usize, taps: usize) -> Vec<u32> {
    use rayon::prelude::*;
    assert!(wt.len() == o * c * taps);
    let kp = pairs_per_block(c).expect("AMX: channel count without a K block");
    let (c2, kb) = (c.div_ceil(2), c.div_ceil(2).div_ceil(kp));
    let mut p = vec![0u32; o.div_ceil(T) * taps * kb * T * kp];
    p.par_chunks_mut(taps * kb * T * kp)
        .enumerate()
        .for_each_init(Vec::new, |h: &mut Vec<u16>, (ob, blk)| {
            h.resize(c * taps, 0);
            for m in 0..T.min(o - ob * T) {
                // the output channel's weights rounded (vector conversion),
                // then moved into the words
                super::bf16::round_into(&wt[(ob * T + m) * c * taps..][..c * taps], h);
                for cp in 0..c2 {
                    let (k, j) = (cp / kp, cp % kp);
                    for tap in 0..taps {
                        let lo = h[2 * cp * taps + tap] as u32;
                        let hi = if 2 * cp + 1 < c {
                            h[(2 * cp + 1) * taps + tap] as u32
                        } else {
                            0
                        };
                        blk[((tap * kb + k) * T + m) * kp + j] = lo | hi << 16;
                    }
                }
            }
        });
    p
}

/// Whether the AMX forward kernel takes this (forward or input-gradient)
/// geometry: channel pairs in whole blocks of 16 (C a multiple of 32; the
/// B tiles read 16 pair planes) or one partial block of 4 to 15 pairs
/// ([`pairs_per_block`]), at least 16 output channels, and at least 16
/// outputs per image.
pub(super) fn suits(g: &Geom) -> bool {
    pairs_per_block(g.c).is_some() && g.o >= T && g.ho * g.wo >= T
}

/// Stride-1 convolution (`g.k`×`g.k`, padding `g.p`) of NCHW `x` with the
/// (O × C·k·k) weights `wt`, plus an optional bias, then an optional ReLU,
/// on AMX tiles: the operands rounded to bf16 (channel pairs), sums in
/// fp32. The work is cut into units, output rows (row mode) or, for small
/// images, whole images each taken as one run over the padded grid (grid
/// mode, the k − 1 columns between rows computed and dropped); a task takes
/// a range of output channels and a run of units of any images, so that
/// each weight tile, loaded once per task, serves many outputs.
pub(super) fn conv_forward(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    g: &Geom,
) -> Vec<f32> {
    assert!(wt.len() == g.o * g.c * g.k * g.k);
    forward_packed(x, &pack_weights(wt, g.o, g.c, g.k * g.k), bias, relu, g)
}

/// The input gradient dx of the convolution `g` from `dy`: the forward
/// convolution of `dy` with the kernel flipped in space and its channel
/// axes swapped ([`Geom::input_grad`]), the flipped kernel packed straight
/// from the forward weights `wt` (O × C·k·k).
pub(super) fn conv_input_grad(dy: &[f32], wt: &[f32], g: &Geom) -> Vec<f32> {
    use rayon::prelude::*;
    let kk = g.k * g.k;
    assert!(wt.len() == g.o * g.c * kk);
    let back = g.input_grad();
    // every weight rounded once (vector conversion), then moved into words:
    // output channel c, pair p (forward outputs 2p, 2p + 1), tap t ←
    // wt[2p][c][kk − 1 − t], wt[2p + 1][c][kk − 1 − t]
    let mut h = vec![0u16; wt.len()];
    h.par_chunks_mut(4096)
        .zip(wt.par_chunks(4096))
        .for_each(|(d, w)| super::bf16::round_into(w, d));
    let kp = pairs_per_block(g.o).expect("AMX: channel count without a K block");
    let (o2, kb) = (g.o.div_ceil(2), g.o.div_ceil(2).div_ceil(kp));
    let mut p = vec![0u32; g.c.div_ceil(T) * kk * kb * T * kp];
    p.par_chunks_mut(kk * kb * T * kp)
        .enumerate()
        .for_each(|(cb, blk)| {
            for m in 0..T.min(g.c - cb * T) {
                let c = cb * T + m;
                for cp in 0..o2 {
                    let (k, j) = (cp / kp, cp % kp);
                    let lo = &h[((2 * cp) * g.c + c) * kk..][..kk];
                    let hi = (2 * cp + 1 < g.o).then(|| &h[((2 * cp + 1) * g.c + c) * kk..][..kk]);
                    for tap in 0..kk {
                        let f = kk - 1 - tap;
                        let word = lo[f] as u32 | hi.map_or(0, |hi| (hi[f] as u32) << 16);
                        blk[((tap * kb + k) * T + m) * kp + j] = word;
                    }
                }
            }
        });
    forward_packed(dy, &p, None, false, &back)
}

/// [`conv_forward`] with the weights already packed ([`pack_weights`]).
fn forward_packed(x: &[f32], w: &[u32], bias: Option<&[f32]>, relu: bool, g: &Geom) -> Vec<f32> {
    use rayon::prelude::*;
    assert!(available() && suits(g));
    let (hp, wp, kk) = (g.h + 2 * g.p, g.w + 2 * g.p, g.k * g.k);
    // zero rows after the last plane: the last block may read 15 words past
    let xh = super::bf16::pad_input_pairs(x, g, T.div_ceil(wp));
    let taps: Vec<usize> = (0..kk).map(|t| (t / g.k) * wp + t % g.k).collect();
    let kp = pairs_per_block(g.c).expect("AMX: channel count without a K block");
    let (kb, plane, plane_out) = (g.c.div_ceil(2) / kp, hp * wp, g.ho * g.wo);
    let (img_len, img_out) = (kb * kp * plane, g.o * plane_out);
    // the grid run over the padded image: output (y, x) at y·wp + x
    let grid_len = (g.ho - 1) * wp + g.wo;
    let row_fill = g.wo as f64 / (g.wo.div_ceil(T) * T) as f64;
    let grid_fill = plane_out as f64 / (grid_len.div_ceil(T) * T) as f64;
    let grid = grid_fill > row_fill * 1.1;
    let units = if grid { g.n } else { g.n * g.ho };
    // tasks: ranges of output channels (in 32s, the 2 × 2 tile block)
    // first, then runs of units, about 4 per thread
    let want = 4 * rayon::current_num_threads().max(1);
    let o32 = g.o.div_ceil(2 * T);
    let osplit = want.min(o32);
    let o_per = o32.div_ceil(osplit) * 2 * T;
    let osplit = g.o.div_ceil(o_per);
    let runs = want.div_ceil(osplit).clamp(1, units);
    let per = units.div_ceil(runs);
    let runs = units.div_ceil(per);
    let mut out: Vec<f32> = Vec::with_capacity(g.n * img_out);
    let out_ptr = super::SharedMut(out.as_mut_ptr());
    (0..runs * osplit).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(blocks, scratch): &mut (Vec<Block>, Vec<f32>), task| {
            let (r, os) = (task / osplit, task % osplit);
            let (u0, u1) = (r * per, ((r + 1) * per).min(units));
            let (o0, o1) = (os * o_per, ((os + 1) * o_per).min(g.o));
            let gm = Gemm {
                x: &xh,
                plane,
                kb,
                kp,
                taps: &taps,
                w,
                o0,
                o1,
                bias,
                relu,
            };
            blocks.clear();
            if grid {
                // images u0 .. u1 side by side in `scratch` (rows of
                // (u1 − u0)·grid_len per channel), then their valid
                // columns copied out
                let stride = (u1 - u0) * grid_len;
                for img in u0..u1 {
                    for j in 0..grid_len.div_ceil(T) {
                        blocks.push(Block {
                            x: img * img_len + j * T,
                            out: (img - u0) * grid_len + j * T,
                            n: (grid_len - j * T).min(T),
                        });
                    }
                }
                scratch.resize((o1 - o0) * stride, 0.0);
                // SAFETY: AMX available (asserted); the stores write
                // columns < stride of o1 − o0 rows of `scratch`
                unsafe { run(&gm, blocks, scratch.as_mut_ptr(), stride) };
                for img in u0..u1 {
                    for o in o0..o1 {
                        // SAFETY: plane o of image img, inside `out`, this
                        // task's alone
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(
                                out_ptr.ptr().add(img * img_out + o * plane_out),
                                plane_out,
                            )
                        };
                        let src = &scratch[(o - o0) * stride + (img - u0) * grid_len..];
                        for (y, d) in dst.chunks_mut(g.wo).enumerate() {
                            d.copy_from_slice(&src[y * wp..][..g.wo]);
                        }
                    }
                }
                return;
            }
            for u in u0..u1 {
                let (img, y) = (u / g.ho, u % g.ho);
                for j in 0..g.wo.div_ceil(T) {
                    blocks.push(Block {
                        x: img * img_len + y * wp + j * T,
                        out: img * img_out + y * g.wo + j * T,
                        n: (g.wo - j * T).min(T),
                    });
                }
            }
            // SAFETY: AMX available; the stores write this task's rows of
            // channels o0 .. o1 (columns < wo), inside `out`, written by
            // this task alone
            unsafe { run(&gm, blocks, out_ptr.ptr().add(o0 * plane_out), plane_out) };
        },
    );
    // SAFETY: every (image, channel, row) was written by one task: the
    // tasks cover the units and the channel ranges, and each row's blocks
    // (or the grid's copy) cover its columns.
    unsafe { out.set_len(g.n * img_out) };
    out
}

/// The fixed operands of [`run`].
pub(super) struct Gemm<'a> {
    /// The channel-pair planes (`kp`·`kb` of them, `plane` words apart).
    pub x: &'a [u32],
    pub plane: usize,
    /// Blocks of 16 pair planes.
    pub kb: usize,
    /// Pair planes per K block ([`pairs_per_block`]).
    pub kp: usize,
    /// Word offset of each tap.
    pub taps: &'a [usize],
    /// Packed weights ([`pack_weights`], same `kb` and tap count).
    pub w: &'a [u32],
    /// Output channels written: `o0 .. o1` (`o0` a multiple of 16).
    pub o0: usize,
    pub o1: usize,
    /// Bias per output channel (indexed by the channel), and ReLU.
    pub bias: Option<&'a [f32]>,
    pub relu: bool,
}

/// 16 outputs: output `i` (< `n` ≤ 16) reads offset `x + i` of every pair
/// plane (plus the tap offsets) and is written at `out + i` of every channel
/// row.
#[derive(Clone, Copy, Debug)]
pub(super) struct Block {
    pub x: usize,
    pub out: usize,
    pub n: usize,
}

/// C[o][i] = bias + Σ over taps and pairs of A·B for every listed block, and
/// channel `o` in `o0 .. o1`, written at `out + (o − o0)·ostride +
/// block.out + i` (ReLU'd if asked).
///
/// # Safety
/// [`available`] is true; every `out` position written is valid and
/// written by no other thread. (Reads of `x` and `w` are checked.)
pub(super) unsafe fn run(g: &Gemm, blocks: &[Block], out: *mut f32, ostride: usize) {
    let ntaps = g.taps.len();
    let reach = g.taps.iter().max().copied().unwrap_or(0)
        + blocks.iter().map(|b| b.x).max().unwrap_or(0)
        + (g.kb * g.kp - 1) * g.plane
        + T;
    assert!(g.o0.is_multiple_of(T) && g.o1 > g.o0 && blocks.iter().all(|b| b.n > 0 && b.n <= T));
    assert!(
        blocks.is_empty() || reach <= g.x.len(),
        "AMX input reads past the planes"
    );
    let nob = g.o1.div_ceil(T) - g.o0 / T;
    let a_words = T * g.kp;
    let ob_stride = ntaps * g.kb * a_words;
    assert!(g.w.len() >= (g.o1.div_ceil(T)) * ob_stride);
    assert!(g.bias.is_none_or(|b| b.len() >= g.o1));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AMX available (the caller); the loads stay inside `x` and `w`
    // (asserted above), the stores inside the caller's `out`.
    unsafe {
        kernel::configure(g.kp);
        for ob in (0..nob).step_by(2) {
            let ma = (nob - ob).min(2);
            let w0 = g.w.as_ptr().add((g.o0 / T + ob) * ob_stride);
            for pair in blocks.chunks(2) {
                kernel::zero();
                for (t, &off) in g.taps.iter().enumerate() {
                    for k in 0..g.kb {
                        let a = w0.add((t * g.kb + k) * a_words);
                        let b0 = g.x.as_ptr().add(off + k * g.kp * g.plane + pair[0].x);
                        let b1 = pair
                            .get(1)
                            .map(|b| g.x.as_ptr().add(off + k * g.kp * g.plane + b.x));
                        kernel::step(
                            a,
                            (ma == 2).then(|| a.add(ob_stride)),
                            b0,
                            b1,
                            g.plane,
                            g.kp,
                        );
                    }
                }
                let o_first = g.o0 + ob * T;
                kernel::store(g, o_first, ma, pair, out.add(ob * T * ostride), ostride);
            }
        }
        kernel::release();
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (out, ostride, nob, ob_stride, ntaps);
        unreachable!("AMX needs x86-64");
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel;
