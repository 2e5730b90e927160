//! The bf16 operand layouts of the convolution kernels.
//!
//! `VDPBF16PS` multiplies pairs of bf16 values held in one 32-bit lane and
//! adds both products to the lane's fp32 accumulator, so every bf16 kernel
//! takes its operands as *words* of two bf16 values (low half first) paired
//! along the sum it computes:
//! - forward and input gradient (a sum over input channels and taps):
//!   channel pairs — the padded input as ⌈C/2⌉ planes of words (channels
//!   2i, 2i + 1) and the weights as [o-block][channel pair][ky][kx][OB];
//! - Winograd products (a sum over input channels): the same pairs of the
//!   transformed inputs and weights;
//! - 3×3 weight gradient (a sum over pixels of every image): image pairs —
//!   the input in blocked channels-last layout and the output gradient in
//!   planes, each word holding images 2i and 2i + 1 at the same position.
//!
//! An odd count is completed with zeros. Values are rounded to nearest even
//! ([`to_bf16`]), as `VCVTNE2PS2BF16` does.

use super::Geom;
use std::mem::MaybeUninit;

/// True when the bf16 kernels can run: AVX-512F and AVX512-BF16.
pub(super) fn available() -> bool {
    crate::precision::bf16_kernels().is_some()
}

/// `v` rounded to the nearest bfloat16 (ties to even), as its 16 bits; NaN
/// stays NaN (quieted); subnormals become signed zeros (as `VCVTNEPS2BF16`
/// and `VDPBF16PS` take them).
#[inline]
pub(crate) fn to_bf16(v: f32) -> u32 {
    let b = v.to_bits();
    if v.is_nan() {
        return (b >> 16) | 0x40;
    }
    if b & 0x7f80_0000 == 0 {
        return (b >> 16) & 0x8000;
    }
    (b + 0x7fff + ((b >> 16) & 1)) >> 16
}

/// `dst[i] = pair(lo[i], hi[i])` (`hi` absent: zeros), with AVX512-BF16
/// conversions where the CPU has them (the same bits as [`pair`]).
pub(super) fn pair_into(lo: &[f32], hi: Option<&[f32]>, dst: &mut [u32]) {
    assert!(lo.len() == dst.len() && hi.is_none_or(|h| h.len() == lo.len()));
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX512-BF16 checked; the function stays in the slices.
        done = unsafe { pair_avx512(lo, hi, dst) };
    }
    for i in done..lo.len() {
        dst[i] = match hi {
            Some(h) => pair(lo[i], h[i]),
            None => to_bf16(lo[i]),
        };
    }
}

/// `dst[i] = to_bf16(src[i])` as 16 bits, with AVX512-BF16 conversions
/// where the CPU has them (the same bits).
pub(super) fn round_into(src: &[f32], dst: &mut [u16]) {
    assert!(src.len() == dst.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX512-BF16 checked; whole 16-float blocks inside both
        #[target_feature(enable = "avx512f,avx512bf16")]
        unsafe fn vec(src: &[f32], dst: &mut [u16]) -> usize {
            use std::arch::x86_64::*;
            let n = src.len() / 16 * 16;
            for i in (0..n).step_by(16) {
                // SAFETY: i + 16 <= len of both
                unsafe {
                    let h = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(i)));
                    _mm256_storeu_si256(
                        dst.as_mut_ptr().add(i).cast(),
                        std::mem::transmute::<__m256bh, __m256i>(h),
                    );
                }
            }
            n
        }
        done = unsafe { vec(src, dst) };
    }
    for i in done..src.len() {
        dst[i] = to_bf16(src[i]) as u16;
    }
}

/// [`pair_into`]'s vector part: whole 16-float blocks; returns how many
/// elements it wrote.
///
/// # Safety
/// AVX-512F and AVX512-BF16 available; `hi` (if any) and `dst` at least as
/// long as `lo`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pair_avx512(lo: &[f32], hi: Option<&[f32]>, dst: &mut [u32]) -> usize {
    use std::arch::x86_64::*;
    let n = lo.len() / 16 * 16;
    let mut i = 0;
    while i < n {
        // SAFETY: i + 16 <= len of each slice
        unsafe {
            let a: __m256i =
                std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(lo.as_ptr().add(i))));
            let mut w = _mm512_cvtepu16_epi32(a);
            if let Some(h) = hi {
                let b = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(
                    _mm512_loadu_ps(h.as_ptr().add(i)),
                ));
                w = _mm512_or_si512(w, _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(b)));
            }
            _mm512_storeu_epi32(dst.as_mut_ptr().add(i).cast(), w);
        }
        i += 16;
    }
    n
}

/// The word of two bf16 values: `lo` in the low half.
#[inline]
pub(crate) fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) | to_bf16(hi) << 16
}

/// The f32 value of a bf16 held in the low 16 bits.
#[cfg(test)]
pub(crate) fn from_bf16(h: u32) -> f32 {
    f32::from_bits(h << 16)
}

/// NCHW `x` zero-padded by `g.p` on every side, as channel-pair planes: per
/// image, ⌈C/2⌉ planes of hp × wp words (channels 2i, 2i + 1; the second
/// channel of an odd last pair zero), then `extra` rows of zeros (for loads
/// that run past the last plane).
pub(super) fn pad_input_pairs(x: &[f32], g: &Geom, extra: usize) -> Vec<u32> {
    let (hp, wp, c2) = (g.h + 2 * g.p, g.w + 2 * g.p, g.c.div_ceil(2));
    assert!(x.len() == g.n * g.c * g.h * g.w);
    let zero = MaybeUninit::new(0u32);
    let rows = g.n * c2 * hp;
    // SAFETY: each padded row (chunk of wp words) is written whole: border
    // rows and the extra rows zeroed, other rows' border columns zeroed and
    // inner words set.
    unsafe {
        crate::ops::par_uninit((rows + extra) * wp, wp, |r, dst| {
            let (plane, y) = (r / hp, r % hp);
            let (img, cp) = (plane / c2, plane % c2);
            if r >= rows || y < g.p || y >= g.p + g.h {
                dst.fill(zero);
                return;
            }
            dst[..g.p].fill(zero);
            dst[g.p + g.w..].fill(zero);
            let iy = y - g.p;
            let row = |c: usize| &x[((img * g.c + c) * g.h + iy) * g.w..][..g.w];
            let d = &mut dst[g.p..g.p + g.w];
            // SAFETY (of the cast): MaybeUninit<u32> has u32's layout, and
            // `pair_into` writes every element without reading any
            let d = &mut *(d as *mut [MaybeUninit<u32>] as *mut [u32]);
            pair_into(row(2 * cp), (2 * cp + 1 < g.c).then(|| row(2 * cp + 1)), d);
        })
    }
}

/// Weights (O × C × k × k) as [o-block][channel pair][ky][kx][OB] words
/// (zero past O and past C).
pub(super) fn pack_weight_pairs(wt: &[f32], g: &Geom) -> Vec<u32> {
    use rayon::prelude::*;
    const OB: usize = super::direct::OB;
    let (kk, c2) = (g.k * g.k, g.c.div_ceil(2));
    assert!(wt.len() == g.o * g.c * kk);
    // every weight rounded first (vector conversion, one output channel
    // per task), then only moved into the pairs' words
    let mut h = vec![0u32; wt.len()];
    h.par_chunks_mut((g.c * kk).max(1))
        .zip(wt.par_chunks((g.c * kk).max(1)))
        .for_each(|(d, w)| pair_into(w, None, d));
    let mut p = vec![0u32; g.o.div_ceil(OB) * c2 * kk * OB];
    p.par_chunks_mut(c2 * kk * OB)
        .enumerate()
        .for_each(|(b, dst)| {
            for j in 0..OB.min(g.o - b * OB) {
                let row = &h[(b * OB + j) * g.c * kk..][..g.c * kk];
                for cp in 0..c2 {
                    let lo = &row[2 * cp * kk..][..kk];
                    let hi = (2 * cp + 1 < g.c).then(|| &row[(2 * cp + 1) * kk..][..kk]);
                    for t in 0..kk {
                        dst[(cp * kk + t) * OB + j] = lo[t] | hi.map_or(0, |hi| hi[t] << 16);
                    }
                }
            }
        });
    p
}

/// Channel pairs of `c` channels held `stride` elements apart, `blocks`
/// runs of `len` values each (run i of channel ch at ch·stride + i·len), as
/// words: run i of pair cp at (cp·blocks + i)·len of `dst`. For the Winograd
/// products (V[c][ξ][tile] → [pair][ξ][tile]; U[c][OB] with one run).
pub(super) fn pair_channels(
    src: &[f32],
    c: usize,
    stride: usize,
    (blocks, len): (usize, usize),
    dst: &mut Vec<u32>,
) {
    let c2 = c.div_ceil(2);
    dst.resize(c2 * blocks * len, 0);
    for cp in 0..c2 {
        for i in 0..blocks {
            let lo = &src[2 * cp * stride + i * len..][..len];
            let hi = (2 * cp + 1 < c).then(|| &src[(2 * cp + 1) * stride + i * len..][..len]);
            pair_into(lo, hi, &mut dst[(cp * blocks + i) * len..][..len]);
        }
    }
}

/// The input zero-padded by `p`, in blocked channels-last layout with image
/// pairs: per image pair and block of 16 channels, hp × wp pixels of 16
/// words (images 2i, 2i + 1 of one channel); channels past C and the image
/// past N zero. Returns (data, hp, wp, blocks).
pub(super) fn pad_input_channels_last_pairs(
    x: &[f32],
    g: &Geom,
) -> (Vec<u32>, usize, usize, usize) {
    let (hp, wp, blocks, n2) = (
        g.h + 2 * g.p,
        g.w + 2 * g.p,
        g.c.div_ceil(16),
        g.n.div_ceil(2),
    );
    assert!(x.len() == g.n * g.c * g.h * g.w);
    let zero = MaybeUninit::new(0u32);
    // SAFETY: each padded row of a block is written whole: zero when it is a
    // border row; otherwise its border pixels zeroed and every inner pixel's
    // 16 words set (zero past C).
    let xp = unsafe {
        crate::ops::par_uninit(n2 * blocks * hp * wp * 16, wp * 16, |r, dst| {
            let (pb, y) = (r / hp, r % hp);
            let (ip, cb) = (pb / blocks, pb % blocks);
            if y < g.p || y >= g.p + g.h {
                dst.fill(zero);
                return;
            }
            dst[..g.p * 16].fill(zero);
            dst[(g.p + g.w) * 16..].fill(zero);
            let iy = y - g.p;
            let row = |img: usize, c: usize| &x[((img * g.c + c) * g.h + iy) * g.w..][..g.w];
            // one channel's row of word pairs at a time (vector
            // conversion), then spread over the pixels' 16-word groups
            let mut words = vec![0u32; g.w];
            for l in 0..16 {
                let c = cb * 16 + l;
                if c < g.c {
                    let hi = (2 * ip + 1 < g.n).then(|| row(2 * ip + 1, c));
                    pair_into(row(2 * ip, c), hi, &mut words);
                } else {
                    words.fill(0);
                }
                for (xx, &v) in words.iter().enumerate() {
                    dst[(xx + g.p) * 16 + l].write(v);
                }
            }
        })
    };
    (xp, hp, wp, blocks)
}

/// The output gradient (N, O, ho, wo) as image pairs: (⌈N/2⌉, O, ho, wo)
/// words (images 2i, 2i + 1; the image past N zero).
pub(super) fn image_pairs(dy: &[f32], n: usize, per_image: usize) -> Vec<u32> {
    use rayon::prelude::*;
    assert!(dy.len() == n * per_image);
    let mut out = vec![0u32; n.div_ceil(2) * per_image];
    out.par_chunks_mut(per_image.max(1))
        .enumerate()
        .for_each(|(ip, d)| {
            let a = &dy[2 * ip * per_image..][..per_image];
            let b = (2 * ip + 1 < n).then(|| &dy[(2 * ip + 1) * per_image..][..per_image]);
            pair_into(a, b, d);
        });
    out
}

/// A word buffer seen as floats, for code that passes operands on as
/// `&[f32]` to kernels that load them as integers (every bit pattern is a
/// valid f32, and the two types have the same size and alignment).
pub(super) fn as_f32(words: &[u32]) -> &[f32] {
    // SAFETY: see above; the length and lifetime are the input's.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<f32>(), words.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1)
        assert_eq!(from_bf16(to_bf16(1.0 + 2f32.powi(-8))), 1.0);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6
        assert_eq!(
            from_bf16(to_bf16(1.0 + 3.0 * 2f32.powi(-8))),
            1.0 + 2f32.powi(-6)
        );
        // just above halfway rounds up
        assert_eq!(
            from_bf16(to_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20))),
            1.0 + 2f32.powi(-7)
        );
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        // subnormals flush to signed zero, as the hardware takes them
        assert_eq!(to_bf16(1e-40), 0);
        assert_eq!(to_bf16(-1e-40), 0x8000);
        // relative error at most 2^-8 over a range of values
        for i in 0..10_000 {
            let v = (i as f32 * 0.7919).sin() * 10f32.powi(i % 7 - 3);
            let r = from_bf16(to_bf16(v));
            assert!((r - v).abs() <= v.abs() * 2f32.powi(-8), "{v} -> {r}");
        }
    }

    #[test]
    fn vector_pairs_match_the_scalar_rounding() {
        let mut v: Vec<f32> = (0..1000).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
        v.extend([
            f32::NAN,
            f32::INFINITY,
            -0.0,
            1e-40,
            -1e-40,
            1.0 + 2f32.powi(-8),
            3.4e38,
        ]);
        v.extend((0..37).map(|i| i as f32 * 1e-3));
        let hi: Vec<f32> = v.iter().rev().copied().collect();
        for h in [None, Some(hi.as_slice())] {
            let mut d = vec![0u32; v.len()];
            pair_into(&v, h, &mut d);
            for i in 0..v.len() {
                let want = match h {
                    Some(h) => pair(v[i], h[i]),
                    None => to_bf16(v[i]),
                };
                // NaN payloads may differ; both must be NaN
                let (a, b) = (from_bf16(d[i] & 0xffff), from_bf16(want & 0xffff));
                assert!(
                    d[i] == want || a.is_nan() && b.is_nan(),
                    "{i}: {:#x} vs {want:#x}",
                    d[i]
                );
            }
        }
        if !available() {
            eprintln!("SKIP: no AVX512-BF16: only the scalar conversion was checked");
        }
    }

    #[test]
    fn pairs_put_the_even_element_low() {
        let w = pair(1.0, -2.0);
        assert_eq!(from_bf16(w & 0xffff), 1.0);
        assert_eq!(from_bf16(w >> 16), -2.0);
    }
}
