//! The AVX-512 kernels of the Winograd convolution: the input transform
//! `Bᵀ d B` (fp32, or straight to bf16 channel-pair words) and the output
//! transform `Aᵀ M A` with bias and ReLU, on chunks of 16 tiles. Only
//! compiled on x86-64; [`super::conv_forward`] checks that the CPU has
//! AVX-512F (and AVX512-BF16 for the pair words).

use super::Chunk;
use std::arch::x86_64::*;

/// Lanes 0..m.
fn lanes(m: usize) -> u16 {
    if m >= 16 {
        u16::MAX
    } else {
        (1u16 << m) - 1
    }
}

/// `Bᵀ d B` of the chunk's tiles of one channel, as 16 vectors (V[ξ],
/// ξ = a·4 + j; lane i for tile tx + i).
///
/// # Safety
/// AVX-512F available; `plane` valid for reads at rows 2·ty .. 2·ty + 4,
/// columns 2·tx .. 2·tx + 34 (row length `wp`).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transform(plane: *const f32, wp: usize, ck: &Chunk) -> [__m512; 16] {
    unsafe {
        let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        let odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
        let mut r = [[_mm512_setzero_ps(); 4]; 4];
        for (i, ri) in r.iter_mut().enumerate() {
            let p = plane.add((2 * ck.ty + i) * wp + 2 * ck.tx);
            let (a0, a1) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
            let (b0, b1) = (_mm512_loadu_ps(p.add(2)), _mm512_loadu_ps(p.add(18)));
            // d_j = row[2·tx + j] for the 16 tiles
            let d0 = _mm512_permutex2var_ps(a0, even, a1);
            let d1 = _mm512_permutex2var_ps(a0, odd, a1);
            let d2 = _mm512_permutex2var_ps(b0, even, b1);
            let d3 = _mm512_permutex2var_ps(b0, odd, b1);
            // d B
            *ri = [
                _mm512_sub_ps(d0, d2),
                _mm512_add_ps(d1, d2),
                _mm512_sub_ps(d2, d1),
                _mm512_sub_ps(d1, d3),
            ];
        }
        let mut v = [_mm512_setzero_ps(); 16];
        for j in 0..4 {
            // Bᵀ (d B), column j
            v[j] = _mm512_sub_ps(r[0][j], r[2][j]);
            v[4 + j] = _mm512_add_ps(r[1][j], r[2][j]);
            v[8 + j] = _mm512_sub_ps(r[2][j], r[1][j]);
            v[12 + j] = _mm512_sub_ps(r[1][j], r[3][j]);
        }
        v
    }
}

/// `Bᵀ d B` of the chunk's tiles of one channel: V[ξ] at `v + ξ·stride`,
/// lane i for tile tx + i.
///
/// # Safety
/// AVX-512F available; `plane` valid for reads at rows 2·ty .. 2·ty + 4,
/// columns 2·tx .. 2·tx + 34 (row length `wp`); `v` for writes of m
/// floats at each `v + ξ·stride`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn input_chunk(
    plane: *const f32,
    wp: usize,
    ck: &Chunk,
    v: *mut f32,
    stride: usize,
) {
    unsafe {
        let t = transform(plane, wp, ck);
        let mask = lanes(ck.m);
        for (xi, &tv) in t.iter().enumerate() {
            _mm512_mask_storeu_ps(v.add(xi * stride), mask, tv);
        }
    }
}

/// [`input_chunk`] of two channels at once, stored as bf16 channel-pair
/// words (`lo`'s value in the low half; zero for a missing `hi`), V[ξ]
/// at `v + ξ·stride`: the words `bf16::pair_into` makes of the fp32
/// transforms, without writing and reading those.
///
/// # Safety
/// AVX-512F and AVX512-BF16 available; `lo` and `hi` as `plane` of
/// [`input_chunk`]; `v` for writes of m words at each `v + ξ·stride`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn input_chunk_pair(
    lo: *const f32,
    hi: Option<*const f32>,
    wp: usize,
    ck: &Chunk,
    v: *mut u32,
    stride: usize,
) {
    unsafe {
        let tl = transform(lo, wp, ck);
        let th = hi.map(|h| transform(h, wp, ck));
        let mask = lanes(ck.m);
        for xi in 0..16 {
            let a: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(tl[xi]));
            let mut w = _mm512_cvtepu16_epi32(a);
            if let Some(th) = &th {
                let b: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(th[xi]));
                w = _mm512_or_si512(w, _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(b)));
            }
            _mm512_mask_storeu_epi32(v.add(xi * stride).cast(), mask, w);
        }
    }
}

/// `Aᵀ M A` of the chunk's tiles for one output channel, plus `bias`,
/// then ReLU (NaN kept) when asked, into the output plane.
///
/// # Safety
/// AVX-512F available; `m` valid for reads of m floats at each
/// `m + ξ·stride`; `out` for writes of the plane's `h × w` floats.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn output_chunk(
    mp: *const f32,
    stride: usize,
    bias: f32,
    relu: bool,
    out: *mut f32,
    h: usize,
    w: usize,
    ck: &Chunk,
) {
    unsafe {
        let mask = lanes(ck.m);
        let mut m = [_mm512_setzero_ps(); 16];
        for (xi, mv) in m.iter_mut().enumerate() {
            *mv = _mm512_maskz_loadu_ps(mask, mp.add(xi * stride));
        }
        // Aᵀ M: rows m0 + m1 + m2 and m1 − m2 − m3
        let mut s = [[_mm512_setzero_ps(); 4]; 2];
        for j in 0..4 {
            s[0][j] = _mm512_add_ps(_mm512_add_ps(m[j], m[4 + j]), m[8 + j]);
            s[1][j] = _mm512_sub_ps(_mm512_sub_ps(m[4 + j], m[8 + j]), m[12 + j]);
        }
        let b = _mm512_set1_ps(bias);
        let zero = _mm512_setzero_ps();
        let fin = |v: __m512| {
            let r = _mm512_add_ps(v, b);
            if relu {
                let neg = _mm512_cmp_ps_mask(r, zero, _CMP_LT_OQ);
                _mm512_mask_mov_ps(r, neg, zero)
            } else {
                r
            }
        };
        let lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        let hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
        let cols = (2 * ck.m).min(w - 2 * ck.tx);
        let (mlo, mhi) = (lanes(cols), lanes(cols.saturating_sub(16)));
        for (i, si) in s.iter().enumerate() {
            let y = 2 * ck.ty + i;
            if y >= h {
                break;
            }
            // (Aᵀ M) A: columns s0 + s1 + s2 and s1 − s2 − s3
            let y0 = fin(_mm512_add_ps(_mm512_add_ps(si[0], si[1]), si[2]));
            let y1 = fin(_mm512_sub_ps(_mm512_sub_ps(si[1], si[2]), si[3]));
            let o = out.add(y * w + 2 * ck.tx);
            _mm512_mask_storeu_ps(o, mlo, _mm512_permutex2var_ps(y0, lo, y1));
            if mhi != 0 {
                _mm512_mask_storeu_ps(o.add(16), mhi, _mm512_permutex2var_ps(y0, hi, y1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Chunk;
    use super::{input_chunk, input_chunk_pair};

    /// The fused bf16 input transform writes the words that the fp32
    /// transform followed by `bf16::pair_into` makes, bit for bit, in the
    /// lanes of the chunk and nowhere else (with and without a second
    /// channel; full and partial chunks).
    #[test]
    fn fused_bf16_input_transform_is_the_fp32_one_paired() {
        if !(super::super::cpu_has_avx512() && super::super::super::bf16::available()) {
            eprintln!("SKIP: this CPU has no AVX512-BF16: the fused transform is not tested");
            return;
        }
        let (wp, hp) = (40, 6);
        let plane = |seed: u32| -> Vec<f32> {
            (0..wp * hp + 64)
                .map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed) as f32 / 4.0e9 - 0.5)
                .collect()
        };
        let (lo, hi) = (plane(1), plane(7));
        for (m, tx, ty) in [(16, 0, 0), (5, 3, 1)] {
            let ck = Chunk {
                img: 0,
                ty,
                tx,
                m,
                off: 0,
            };
            let stride = 20;
            for with_hi in [true, false] {
                let (mut vl, mut vh) = (vec![0f32; 16 * stride], vec![0f32; 16 * stride]);
                let mut fused = vec![0xdead_beefu32; 16 * stride];
                // SAFETY: AVX-512F and AVX512-BF16 checked; the planes have
                // rows 2·ty + 3 < hp and 64 floats of slack; the outputs
                // hold 16 rows of `stride` >= m.
                unsafe {
                    input_chunk(lo.as_ptr(), wp, &ck, vl.as_mut_ptr(), stride);
                    input_chunk(hi.as_ptr(), wp, &ck, vh.as_mut_ptr(), stride);
                    input_chunk_pair(
                        lo.as_ptr(),
                        with_hi.then_some(hi.as_ptr()),
                        wp,
                        &ck,
                        fused.as_mut_ptr(),
                        stride,
                    );
                }
                for xi in 0..16 {
                    let row = xi * stride;
                    let mut want = vec![0u32; m];
                    let h = with_hi.then(|| &vh[row..row + m]);
                    super::super::super::bf16::pair_into(&vl[row..row + m], h, &mut want);
                    assert_eq!(
                        &fused[row..row + m],
                        &want[..],
                        "ξ {xi}, m {m}, hi {with_hi}"
                    );
                    assert!(
                        fused[row + m..row + stride]
                            .iter()
                            .all(|&w| w == 0xdead_beef),
                        "ξ {xi}: written past the chunk"
                    );
                }
            }
        }
    }
}
