//! The AVX-512 register tiles of the direct kernels: the forward tile
//! ([`tile`], also the Winograd products' 1×1 "kernel") and the 3×3
//! weight-gradient tiles ([`wg_tile`] over pixel vectors, [`wg_cl_tile`]
//! over 16-channel vectors). Only compiled on x86-64; callers check that
//! the CPU has AVX-512F ([`crate::ops::conv::route::cpu_has_avx512`]).

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

/// [`wg_cl_tile`] on image pairs (`VDPBF16PS`): `x` and `d` point at
/// words of two bf16 values, one per image of the pair
/// ([`crate::ops::conv::bf16::pad_input_channels_last_pairs`],
/// [`crate::ops::conv::bf16::image_pairs`]).
///
/// # Safety
/// AVX-512F and AVX512-BF16 available; otherwise as [`wg_cl_tile`], in
/// words.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn wg_cl_tile_bf16<const W: usize>(
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
            let (x, d) = (seg.x.cast::<i32>(), seg.d.cast::<i32>());
            for y in seg.rows.0..seg.rows.1 {
                let drow = d.add(y * wo);
                for xx in 0..wo {
                    let mut dv =
                        [std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512()); W];
                    for (j, slot) in dv.iter_mut().enumerate() {
                        *slot = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                            *drow.add(j * plane + xx),
                        ));
                    }
                    for ky in 0..3 {
                        let xr = x.add(((y + ky) * wp + xx) * 16);
                        for kx in 0..3 {
                            let xv: __m512bh =
                                std::mem::transmute(_mm512_loadu_epi32(xr.add(kx * 16)));
                            for j in 0..W {
                                acc[j][ky * 3 + kx] =
                                    _mm512_dpbf16_ps(acc[j][ky * 3 + kx], xv, dv[j]);
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
        store_tile(&acc, t);
    }
}

/// `V` vectors × OB channels of one output row from bf16 channel pairs
/// (`VDPBF16PS`): [`tile`] with each step taking two input channels.
///
/// # Safety
/// AVX-512F and AVX512-BF16 available; the pointers valid as described on
/// [`Tile`] (in words) for the columns and rows the tile covers.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn tile_bf16<const V: usize, const K: usize>(t: &Tile) {
    // SAFETY: the caller's contract
    unsafe { tile_bf16_body::<V, K>(t) }
}

#[inline(always)]
unsafe fn tile_bf16_body<const V: usize, const K: usize>(t: &Tile) {
    unsafe {
        let k = if K == 0 { t.k } else { K };
        let (x, w) = (t.x.cast::<i32>(), t.w.cast::<i32>());
        let mut acc = [[_mm512_setzero_ps(); OB]; V];
        for ci in 0..t.c {
            let xc = x.add(ci * t.plane);
            let wc = w.add(ci * k * k * OB);
            for ky in 0..k {
                let xr = xc.add(ky * t.wp);
                let wr = wc.add(ky * k * OB);
                for kx in 0..k {
                    let xs = xr.add(kx);
                    let mut xv = [_mm512_setzero_si512(); V];
                    for (v, slot) in xv.iter_mut().enumerate() {
                        *slot = if v + 1 == V {
                            _mm512_maskz_loadu_epi32(t.mask, xs.add(16 * v))
                        } else {
                            _mm512_loadu_epi32(xs.add(16 * v))
                        };
                    }
                    let wk = wr.add(kx * OB);
                    for j in 0..OB {
                        let wj =
                            std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*wk.add(j)));
                        for (a, &xvv) in acc.iter_mut().zip(&xv) {
                            a[j] = _mm512_dpbf16_ps(
                                a[j],
                                std::mem::transmute::<__m512i, __m512bh>(xvv),
                                wj,
                            );
                        }
                    }
                }
            }
        }
        store_tile(&acc, t);
    }
}

/// Adds the bias, applies the ReLU and stores the tile's accumulators.
#[inline(always)]
unsafe fn store_tile<const V: usize>(acc: &[[__m512; OB]; V], t: &Tile) {
    unsafe {
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
