//! The AMX instructions themselves (`asm!`: the AMX intrinsics are not
//! stable Rust): the tile configuration, zeroing, the K step of 2 × 2 C
//! tiles, and the accumulator loads and stores with the output epilogue.

use super::{Block, Gemm, T};
use std::arch::asm;
use std::arch::x86_64::*;

/// A palette-1 tile configuration.
#[repr(C, align(64))]
struct Config([u8; 64]);

/// Loads the tile configuration for K blocks of `kp` pairs (≤ 16):
/// tmm0–3 (C) 16 rows × 64 bytes, tmm4–5 (A) 16 rows × 4·kp bytes,
/// tmm6–7 (B) kp rows × 64 bytes; zeroes the tiles.
///
/// # Safety
/// AMX available and granted.
pub(super) unsafe fn configure(kp: usize) {
    assert!((1..=T).contains(&kp));
    let mut c = Config([0u8; 64]);
    c.0[0] = 1;
    for t in 0..8 {
        let (colsb, rows) = match t {
            4 | 5 => (4 * kp, T),
            6 | 7 => (64, kp),
            _ => (64, T),
        };
        c.0[16 + 2 * t] = colsb as u8;
        c.0[48 + t] = rows as u8;
    }
    // SAFETY: a valid 64-byte palette-1 configuration
    unsafe { asm!("ldtilecfg [{}]", in(reg) &c, options(nostack, readonly)) };
}

/// Releases the tile state.
///
/// # Safety
/// AMX available and granted.
pub(super) unsafe fn release() {
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// Zeroes the accumulators tmm0–3.
///
/// # Safety
/// Tiles configured.
pub(super) unsafe fn zero() {
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        )
    };
}

/// One K step: C[i][j] += A_i · B_j for the A tiles `a0`, `a1` (64-byte
/// rows) and the B tiles `b0`, `b1` (rows `plane` words apart); tmm0 =
/// (0, 0), tmm1 = (0, 1), tmm2 = (1, 0), tmm3 = (1, 1).
///
/// # Safety
/// Tiles configured for `kp` pairs; the A tiles' 16 rows of 4·kp bytes
/// (contiguous) and the B tiles' kp rows of 64 bytes readable.
#[inline(always)]
pub(super) unsafe fn step(
    a0: *const u32,
    a1: Option<*const u32>,
    b0: *const u32,
    b1: Option<*const u32>,
    plane: usize,
    kp: usize,
) {
    // SAFETY: the caller's
    unsafe { step_strided(a0, a1, 4 * kp, b0, b1, plane * 4) }
}

/// [`step`] with the row strides of A and B in bytes.
///
/// # Safety
/// Tiles configured; 16 rows of 64 bytes readable at each pointer
/// given, with its stride.
#[inline(always)]
pub(super) unsafe fn step_strided(
    a0: *const u32,
    a1: Option<*const u32>,
    sa: usize,
    b0: *const u32,
    b1: Option<*const u32>,
    sb: usize,
) {
    // SAFETY: the caller's bounds; tiles only touch tmm0–7
    unsafe {
        match (a1, b1) {
            (Some(a1), Some(b1)) => asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
                sa = in(reg) sa, sb = in(reg) sb,
                options(nostack, readonly)
            ),
            (Some(a1), None) => asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0,
                sa = in(reg) sa, sb = in(reg) sb,
                options(nostack, readonly)
            ),
            (None, Some(b1)) => asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                a0 = in(reg) a0, b0 = in(reg) b0, b1 = in(reg) b1,
                sa = in(reg) sa, sb = in(reg) sb,
                options(nostack, readonly)
            ),
            (None, None) => asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                a0 = in(reg) a0, b0 = in(reg) b0,
                sa = in(reg) sa, sb = in(reg) sb,
                options(nostack, readonly)
            ),
        }
    }
}

/// Loads the accumulators tmm0–3 from 4 consecutive 16 × 16 fp32
/// tiles at `p`.
///
/// # Safety
/// Tiles configured; 4 KiB readable at `p`.
pub(super) unsafe fn load_acc(p: *const f32) {
    unsafe {
        asm!(
            "tileloadd tmm0, [{p} + {s}*1]",
            "tileloadd tmm1, [{p1} + {s}*1]",
            "tileloadd tmm2, [{p2} + {s}*1]",
            "tileloadd tmm3, [{p3} + {s}*1]",
            p = in(reg) p, p1 = in(reg) p.add(T * T), p2 = in(reg) p.add(2 * T * T),
            p3 = in(reg) p.add(3 * T * T), s = in(reg) 64usize,
            options(nostack, readonly)
        )
    };
}

/// Stores the accumulators tmm0–3 as 4 consecutive 16 × 16 fp32 tiles
/// at `p`.
///
/// # Safety
/// Tiles configured; 4 KiB writable at `p`.
pub(super) unsafe fn store_acc(p: *mut f32) {
    unsafe {
        asm!(
            "tilestored [{p} + {s}*1], tmm0",
            "tilestored [{p1} + {s}*1], tmm1",
            "tilestored [{p2} + {s}*1], tmm2",
            "tilestored [{p3} + {s}*1], tmm3",
            p = in(reg) p, p1 = in(reg) p.add(T * T), p2 = in(reg) p.add(2 * T * T),
            p3 = in(reg) p.add(3 * T * T), s = in(reg) 64usize,
            options(nostack)
        )
    };
}

/// Stores accumulator tmm`t` (t < 4) as 16 rows of 16 floats `stride`
/// bytes apart at `p`.
///
/// # Safety
/// Tiles configured; the rows writable.
unsafe fn store_tile(t: usize, p: *mut f32, stride: usize) {
    // SAFETY: the caller's
    unsafe {
        match t {
            0 => {
                asm!("tilestored [{p} + {s}*1], tmm0", p = in(reg) p, s = in(reg) stride, options(nostack))
            }
            1 => {
                asm!("tilestored [{p} + {s}*1], tmm1", p = in(reg) p, s = in(reg) stride, options(nostack))
            }
            2 => {
                asm!("tilestored [{p} + {s}*1], tmm2", p = in(reg) p, s = in(reg) stride, options(nostack))
            }
            _ => {
                asm!("tilestored [{p} + {s}*1], tmm3", p = in(reg) p, s = in(reg) stride, options(nostack))
            }
        }
    }
}

/// Stores the accumulators of `ma` channel blocks (from `o_first`) ×
/// the blocks of `pair`, with bias and ReLU, into `out` (channel
/// `o_first` at `out`, rows `ostride` apart); rows past `g.o1` and
/// columns past each block's `n` are dropped.
///
/// # Safety
/// Tiles configured; the caller's `out` positions valid.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn store(
    g: &Gemm,
    o_first: usize,
    ma: usize,
    pair: &[Block],
    out: *mut f32,
    ostride: usize,
) {
    if g.bias.is_none() && !g.relu && o_first + ma * T <= g.o1 && pair.iter().all(|b| b.n == T) {
        // whole tiles with nothing to add: straight into `out`
        for i in 0..ma {
            for (j, blk) in pair.iter().enumerate() {
                // SAFETY: 16 rows of 16 floats of the caller's `out`
                unsafe { store_tile(i * 2 + j, out.add(i * T * ostride + blk.out), ostride * 4) };
            }
        }
        return;
    }
    let mut c = Scratch([0f32; 4 * T * T]);
    let p = c.0.as_mut_ptr();
    // SAFETY: 4 tiles of 16 rows × 64 bytes fit in `c`
    unsafe { store_acc(p) };
    let zero = _mm512_setzero_ps();
    for i in 0..ma {
        for m in 0..T {
            let o = o_first + i * T + m;
            if o >= g.o1 {
                break;
            }
            let b = _mm512_set1_ps(g.bias.map_or(0.0, |b| b[o]));
            for (j, blk) in pair.iter().enumerate() {
                // SAFETY: row m of tile (i, j) inside `c`; the store is
                // the caller's position of channel o, lanes < n
                unsafe {
                    let mut v = _mm512_add_ps(_mm512_loadu_ps(p.add(((i * 2 + j) * T + m) * T)), b);
                    if g.relu {
                        v = _mm512_max_ps(v, zero);
                    }
                    let mask = if blk.n == T {
                        u16::MAX
                    } else {
                        (1u16 << blk.n) - 1
                    };
                    _mm512_mask_storeu_ps(out.add((i * T + m) * ostride + blk.out), mask, v);
                }
            }
        }
    }
}

#[repr(C, align(64))]
struct Scratch([f32; 4 * T * T]);
