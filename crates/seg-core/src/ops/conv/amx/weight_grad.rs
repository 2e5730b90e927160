//! The weight gradient on AMX tiles: dW[o][c][tap] = Σ over images and
//! output pixels of dy[o] · x[c] at the tap's offset.
//!
//! Pixels are taken on the padded grid (output (y, x) at q = y·wp + x,
//! input at q + ky·wp + kx), with the output gradient zero in the k − 1
//! columns between rows and past the last row, so every tap is one sum over
//! q. K = 32 consecutive q as 16 pairs:
//! - A (row m): input channel m at q + off .. q + off + 32, in bf16 — the
//!   padded plane itself, loaded with the plane length as the row stride
//!   (any tap offset, even or odd);
//! - B (row k): 16 output channels' dy at q + 2k and q + 2k + 1, as pair
//!   words — a channels-last copy of dy on the grid;
//! - C: 16 input × 16 output channels of one tap.
//!
//! A task takes 32 input × 32 output channels of a fixed group of images;
//! for each chunk of 512 grid positions (its A and B stay in L1/L2) it runs
//! all taps, each tap's 2 × 2 C tiles loaded from and stored to the task's
//! accumulators. The groups depend on the geometry alone and their sums are
//! added in order, so results do not depend on the threads.

use super::super::bf16::round_into;
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
    let (wp, kk) = (g.w + 2 * g.p, g.k * g.k);
    let taps: Vec<usize> = (0..kk).map(|t| (t / g.k) * wp + t % g.k).collect();
    let max_off = taps[kk - 1];
    // grid positions, in whole K steps
    let qn = (g.ho * wp).div_ceil(2 * T) * 2 * T;
    let (c16, o16) = (g.c.div_ceil(T) * T, g.o.div_ceil(T) * T);
    // the padded input in bf16, zero planes past C: [image][c16][plen]
    let plen = ((g.h + 2 * g.p) * wp).max(qn + max_off).next_multiple_of(2);
    let mut xs = vec![0u16; g.n * c16 * plen];
    xs.par_chunks_mut(plen).enumerate().for_each(|(pl, d)| {
        let (img, c) = (pl / c16, pl % c16);
        if c < g.c {
            let src = &x[(img * g.c + c) * g.h * g.w..][..g.h * g.w];
            for (y, row) in src.chunks(g.w).enumerate() {
                round_into(row, &mut d[(y + g.p) * wp + g.p..][..g.w]);
            }
        }
    });
    // dy on the grid, channels last in 16-channel blocks as pairs of grid
    // positions: [image][block][qn / 2][16 words]
    let kn = qn / 2;
    let mut dys = vec![0u32; g.n * (o16 / T) * kn * T];
    dys.par_chunks_mut(kn * T).enumerate().for_each_init(
        || vec![0u16; T * qn],
        |planes, (i, d)| {
            let (img, blk) = (i / (o16 / T), i % (o16 / T));
            for j in 0..T.min(g.o - blk * T) {
                let src = &dy[(img * g.o + blk * T + j) * g.ho * g.wo..][..g.ho * g.wo];
                let p = &mut planes[j * qn..][..qn];
                for (y, row) in src.chunks(g.wo).enumerate() {
                    round_into(row, &mut p[y * wp..][..g.wo]);
                }
            }
            for (k, words) in d.chunks_mut(T).enumerate() {
                for (j, w) in words.iter_mut().enumerate().take(T.min(g.o - blk * T)) {
                    let p = &planes[j * qn..];
                    *w = p[2 * k] as u32 | (p[2 * k + 1] as u32) << 16;
                }
            }
        },
    );
    let (cp, op) = (c16.div_ceil(2 * T), o16.div_ceil(2 * T));
    // image groups: enough tasks for a few threads, fixed by the geometry
    let groups = 8usize.div_ceil(cp * op).clamp(1, g.n);
    let per = g.n.div_ceil(groups);
    let groups = g.n.div_ceil(per);
    let parts: Vec<Vec<f32>> = (0..groups * cp * op)
        .into_par_iter()
        .map(|task| {
            let (grp, rest) = (task / (cp * op), task % (cp * op));
            let (cb, ob) = (rest / op, rest % op);
            let (ma, na) = ((c16 / T - 2 * cb).min(2), (o16 / T - 2 * ob).min(2));
            let mut acc = vec![0f32; kk * 4 * T * T];
            // SAFETY: AMX available (asserted); reads: A rows < 16·ma
            // planes of plen u16 at q + off + 32 <= qn + max_off <= plen;
            // B rows k < qn / 2 of blocks < o16 / 16 of the image; the
            // accumulators are `acc`'s kk·4 tiles of 16 × 16.
            unsafe {
                kernel::configure(T);
                for img in grp * per..((grp + 1) * per).min(g.n) {
                    let a_img = &xs[(img * c16 + 2 * cb * T) * plen..][..ma * T * plen];
                    let b_img = &dys[(img * (o16 / T) + 2 * ob) * kn * T..][..na * kn * T];
                    for q0 in (0..qn).step_by(CHUNK) {
                        let q1 = (q0 + CHUNK).min(qn);
                        for (t, &off) in taps.iter().enumerate() {
                            let c_at = acc.as_mut_ptr().add(t * 4 * T * T);
                            kernel::load_acc(c_at);
                            for q in (q0..q1).step_by(2 * T) {
                                let a0 = a_img.as_ptr().add(q + off);
                                let a1 = (ma == 2).then(|| a0.add(T * plen).cast());
                                let b0 = b_img.as_ptr().add(q / 2 * T);
                                let b1 = (na == 2).then(|| b0.add(kn * T));
                                kernel::step_strided(a0.cast(), a1, plen * 2, b0, b1, 4 * T);
                            }
                            kernel::store_acc(c_at);
                        }
                    }
                }
                kernel::release();
            }
            acc
        })
        .collect();
    // the groups' sums in order, then C[c][o] of each tap into dW[o][c][tap]
    let mut sum = parts[..cp * op].to_vec();
    for grp in 1..groups {
        for (s, p) in sum.iter_mut().zip(&parts[grp * cp * op..]) {
            for (a, b) in s.iter_mut().zip(p) {
                *a += b;
            }
        }
    }
    let mut dw = vec![0f32; g.o * g.c * kk];
    dw.par_chunks_mut(g.c * kk)
        .enumerate()
        .for_each(|(o, row)| {
            let (ob, i) = (o / (2 * T), o % (2 * T));
            for c in 0..g.c {
                let (cb, j) = (c / (2 * T), c % (2 * T));
                let acc = &sum[cb * op + ob];
                let tile = (j / T) * 2 + i / T;
                for t in 0..kk {
                    row[c * kk + t] = acc[(t * 4 + tile) * T * T + (j % T) * T + i % T];
                }
            }
        });
    dw
}
