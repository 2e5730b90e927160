//! The weight gradient on AMX tiles: dW[o][c][tap] = Σ over images and
//! output pixels of dy[o] · x[c] at the tap's offset.
//!
//! Pixels are taken on the padded grid (output (y, x) at q = y·wp + x,
//! input at q + ky·wp + kx), with the output gradient zero in the k − 1
//! columns between rows and past the last row, so every tap is one sum over
//! q. K = 32 consecutive q as 16 pairs:
//! - A (row m): dy of output channel m at q0 .. q0 + 32, in bf16 — the
//!   grid plane itself, loaded with the plane length as the row stride;
//! - B (row k): 16 input channels at q0 + 2k + off and the next position,
//!   as pair words — a channels-last copy of the padded input, pairs
//!   starting at even positions and at odd positions (the tap offset's
//!   parity picks one);
//! - C: 16 output × 16 input channels of one tap.
//!
//! A task takes 32 output × 32 input channels of one image; for each chunk
//! of 512 grid positions (its A and B stay in L1/L2) it runs all taps, each
//! tap's 2 × 2 C tiles loaded from and stored to the task's accumulators.
//! The images' sums are added in image order, so results do not depend on
//! the threads.

use super::super::bf16::{pair, to_bf16};
use super::super::Geom;
use super::{kernel, T};

/// Grid positions per chunk (16 K steps of 32).
const CHUNK: usize = 512;

/// Whether the tiles take this weight gradient: 16 or more channels in and
/// out (fewer leave the tiles mostly empty).
pub(in crate::ops::conv) fn suits(g: &Geom) -> bool {
    g.c >= T && g.o >= T && g.ho * g.wo >= T
}

/// dW (O × C·k·k) of the stride-1 convolution `g` from NCHW `x` and `dy`,
/// operands rounded to bf16, sums in fp32.
pub(in crate::ops::conv) fn conv_weight_grad(x: &[f32], dy: &[f32], g: &Geom) -> Vec<f32> {
    use rayon::prelude::*;
    assert!(super::available() && suits(g));
    assert!(x.len() == g.n * g.c * g.h * g.w && dy.len() == g.n * g.o * g.ho * g.wo);
    let (hp, wp, kk) = (g.h + 2 * g.p, g.w + 2 * g.p, g.k * g.k);
    let taps: Vec<usize> = (0..kk).map(|t| (t / g.k) * wp + t % g.k).collect();
    let max_off = taps[kk - 1];
    // grid positions, in whole K steps
    let qn = (g.ho * wp).div_ceil(2 * T) * 2 * T;
    let (o16, cb) = (g.o.div_ceil(T), g.c.div_ceil(T));
    // dy on the grid in bf16: [image][16·o16 planes][qn]
    let mut dyg = vec![0u16; g.n * o16 * T * qn];
    dyg.par_chunks_mut(qn).enumerate().for_each(|(pl, d)| {
        let (img, o) = (pl / (o16 * T), pl % (o16 * T));
        if o < g.o {
            let src = &dy[(img * g.o + o) * g.ho * g.wo..][..g.ho * g.wo];
            for (y, row) in src.chunks(g.wo).enumerate() {
                for (xx, &v) in row.iter().enumerate() {
                    d[y * wp + xx] = to_bf16(v) as u16;
                }
            }
        }
    });
    // the input, channels last in 16-channel blocks, as pairs of grid
    // positions: [image][block][parity][pair k][16 words], word j =
    // (x at 2k + parity, x at 2k + parity + 1) of channel 16·block + j
    let kn = (qn + max_off) / 2 + 1;
    let padded = |img: usize, c: usize, i: usize| -> f32 {
        let (y, xx) = (i / wp, i % wp);
        if c >= g.c || i >= hp * wp || y < g.p || y >= g.p + g.h || xx < g.p || xx >= g.p + g.w {
            0.0
        } else {
            x[((img * g.c + c) * g.h + y - g.p) * g.w + xx - g.p]
        }
    };
    let mut xs = vec![0u32; g.n * cb * 2 * kn * T];
    xs.par_chunks_mut(kn * T).enumerate().for_each(|(i, d)| {
        let (img, rest) = (i / (cb * 2), i % (cb * 2));
        let (blk, par) = (rest / 2, rest % 2);
        for (k, words) in d.chunks_mut(T).enumerate() {
            let at = 2 * k + par;
            for (j, w) in words.iter_mut().enumerate() {
                let c = blk * T + j;
                *w = pair(padded(img, c, at), padded(img, c, at + 1));
            }
        }
    });
    let (op, cp) = (o16.div_ceil(2), cb.div_ceil(2));
    // per (image, output pair block, input pair block): kk × 2 × 2 tiles
    let parts: Vec<Vec<f32>> = (0..g.n * op * cp)
        .into_par_iter()
        .map(|task| {
            let (img, rest) = (task / (op * cp), task % (op * cp));
            let (ob, cbk) = (rest / cp, rest % cp);
            let (ma, na) = ((o16 - 2 * ob).min(2), (cb - 2 * cbk).min(2));
            let mut acc = vec![0f32; kk * 4 * T * T];
            let a_base = &dyg[(img * o16 + 2 * ob) * T * qn..];
            let x_img = &xs[img * cb * 2 * kn * T..][..cb * 2 * kn * T];
            // SAFETY: AMX available (asserted); reads: A rows < 16·ma
            // planes of qn u16 from a_base (q < qn); B rows k < (q0 + off)
            // / 2 + 16 <= kn of block < cb, inside x_img; the accumulators
            // are `acc`'s kk·4 tiles of 16 × 16.
            unsafe {
                assert!(a_base.len() >= ma * T * qn);
                kernel::configure();
                for q0 in (0..qn).step_by(CHUNK) {
                    let q1 = (q0 + CHUNK).min(qn);
                    for (t, &off) in taps.iter().enumerate() {
                        let c_at = acc.as_mut_ptr().add(t * 4 * T * T);
                        kernel::load_acc(c_at);
                        let par = off % 2;
                        for q in (q0..q1).step_by(2 * T) {
                            let k0 = (q + off - par) / 2;
                            assert!(k0 + T <= kn);
                            let a0 = a_base.as_ptr().add(q).cast::<u32>();
                            let a1 = (ma == 2).then(|| a0.cast::<u16>().add(T * qn).cast());
                            let b =
                                |blk: usize| x_img.as_ptr().add(((blk * 2 + par) * kn + k0) * T);
                            let b0 = b(2 * cbk);
                            let b1 = (na == 2).then(|| b(2 * cbk + 1));
                            kernel::step_strided(a0, a1, qn * 2, b0, b1, 4 * T);
                        }
                        kernel::store_acc(c_at);
                    }
                }
                kernel::release();
            }
            acc
        })
        .collect();
    let mut dw = vec![0f32; g.o * g.c * kk];
    for img in 0..g.n {
        for ob in 0..op {
            for cbk in 0..cp {
                let acc = &parts[(img * op + ob) * cp + cbk];
                for t in 0..kk {
                    for (tile, c_tile) in
                        acc[t * 4 * T * T..][..4 * T * T].chunks(T * T).enumerate()
                    {
                        let (i, j) = (tile / 2, tile % 2);
                        for m in 0..T {
                            let o = (2 * ob + i) * T + m;
                            if o >= g.o {
                                break;
                            }
                            for n in 0..T {
                                let c = (2 * cbk + j) * T + n;
                                if c >= g.c {
                                    break;
                                }
                                dw[(o * g.c + c) * kk + t] += c_tile[m * T + n];
                            }
                        }
                    }
                }
            }
        }
    }
    dw
}
