//! Kernel routing: [`choose`] is the one place that decides which kernel
//! computes each pass of a stride-1 convolution ([`choose_with`] adds the
//! arithmetic, fp32 or bf16), and [`forward`],
//! [`input_grad`] and [`weight_grad`] are the only callers of the kernels.

use super::{amx, direct, gemm, winograd, Geom};
use crate::precision::Precision;
use std::sync::OnceLock;

/// A pass of the stride-1 convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    /// y = x ⋆ w (+ bias, ReLU).
    Forward,
    /// dx: the forward convolution of dy with the kernel flipped in space
    /// and its channel axes swapped, padding k − 1 − p ([`Geom::input_grad`]).
    InputGrad,
    /// dW = Σ over pixels of dy · the shifted input.
    WeightGrad,
}

/// The kernels a pass can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// Winograd F(2×2, 3×3) ([`winograd`]).
    Winograd,
    /// The direct AVX-512 kernels ([`direct`]).
    Direct,
    /// im2col + `gemm` ([`gemm`]).
    Gemm,
    /// AMX tiles, bf16 forward and input gradient only ([`amx`]).
    Amx,
}

/// True when this CPU has AVX-512F, which the direct and Winograd kernels
/// need (they assert it: running them without it would be undefined).
pub(super) fn cpu_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// True when the AVX-512 kernels (direct and Winograd) may run: the CPU has
/// AVX-512F and `SEG_CONV_DIRECT=0` does not switch them off (read once).
pub(super) fn simd_kernels() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| cpu_has_avx512() && switched_on("SEG_CONV_DIRECT"))
}

/// True unless `SEG_CONV_WINOGRAD=0` switches Winograd off (read once).
fn winograd_on() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| switched_on("SEG_CONV_WINOGRAD"))
}

/// An environment switch: on unless set to `0`.
fn switched_on(var: &str) -> bool {
    std::env::var(var).map_or(true, |v| v != "0")
}

/// The kernel and the arithmetic for `pass` of the convolution with forward
/// geometry `g` when `want` is asked for: [`choose`]'s route, in bf16 when
/// `want` is bf16, the CPU has AVX512-BF16 and the route has a bf16 kernel
/// (Winograd and direct forward/input gradient; the direct weight gradient
/// with ≥ 16 input channels), otherwise fp32 (the GEMM path, the
/// pixel-vector weight gradient).
///
/// On a CPU with AMX-BF16 ([`amx::available`]), a bf16 pass whose geometry
/// the tiles take ([`amx::suits`]: the forward and input gradient with whole
/// 32-channel input blocks; [`amx::suits_weight_grad`]: ≥ 16 channels in
/// and out) runs on [`Route::Amx`] instead of Winograd or the direct kernel
/// (a tile product does 256× the multiply-adds of a VDPBF16PS, so
/// Winograd's transforms no longer pay).
pub(super) fn choose_with(pass: Pass, g: &Geom, want: Precision) -> (Route, Precision) {
    let route = choose(pass, g);
    if want == Precision::Bf16 && simd_kernels() && amx::available() {
        let takes = match pass {
            Pass::Forward => amx::suits(g),
            Pass::InputGrad => amx::suits(&g.input_grad()),
            Pass::WeightGrad => amx::suits_weight_grad(g),
        };
        if takes {
            return (Route::Amx, Precision::Bf16);
        }
    }
    let bf16 = want == Precision::Bf16
        && super::bf16::available()
        && match (route, pass) {
            (Route::Gemm, _) => false,
            (Route::Direct, Pass::WeightGrad) => g.c >= 16,
            _ => true,
        };
    (
        route,
        if bf16 {
            Precision::Bf16
        } else {
            Precision::Fp32
        },
    )
}

/// The kernel for `pass` of the convolution with forward geometry `g`.
///
/// The rules, in order:
/// 1. Without AVX-512F, or with `SEG_CONV_DIRECT=0` (for comparisons with
///    the GEMM path), every pass runs on [`Route::Gemm`].
/// 2. Forward and input gradient (the input gradient judged on its own
///    geometry, [`Geom::input_grad`]): [`Route::Winograd`] when
///    [`winograd::suits`] (3×3, padding 1, ≥ 16 input and ≥ 8 output
///    channels, ≥ 24 2×2 tiles per image, whatever the batch) and `SEG_CONV_WINOGRAD=0`
///    does not switch it off; otherwise [`Route::Direct`] when
///    [`direct::suits`] (≥ 8 output channels, rows or whole images that fill
///    the 16-float vectors); otherwise [`Route::Gemm`].
/// 3. Weight gradient: [`Route::Direct`] when [`direct::suits_weight_grad`]
///    (3×3 kernels, with ≥ 16 input channels and ≥ 8 columns, or rows that
///    fill the vectors), otherwise [`Route::Gemm`]; never Winograd (a
///    Winograd weight gradient was measured no faster here).
///
/// Every kernel gives each output element a fixed order of operations, so
/// for a given route and thread count results are bit-for-bit repeatable.
pub(super) fn choose(pass: Pass, g: &Geom) -> Route {
    if !simd_kernels() {
        return Route::Gemm;
    }
    match pass {
        Pass::Forward | Pass::InputGrad => {
            let g = if pass == Pass::InputGrad {
                g.input_grad()
            } else {
                *g
            };
            if winograd::suits(&g) && winograd_on() {
                Route::Winograd
            } else if direct::suits(&g) {
                Route::Direct
            } else {
                Route::Gemm
            }
        }
        Pass::WeightGrad => {
            if direct::suits_weight_grad(g) {
                Route::Direct
            } else {
                Route::Gemm
            }
        }
    }
}

/// The forward pass: NCHW `x` convolved with the (O × C·k·k) weights `wt`,
/// plus an optional bias, then an optional ReLU, in `prec` where the route
/// has it ([`choose_with`]); returns NCHW (n, o, ho, wo).
pub(super) fn forward(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    g: &Geom,
    prec: Precision,
) -> Vec<f32> {
    match choose_with(Pass::Forward, g, prec) {
        (Route::Winograd, p) => {
            winograd::conv_forward(x, wt, winograd::Kernel::Plain, bias, relu, g, p)
        }
        (Route::Direct, p) => direct::conv_forward(x, wt, bias, relu, g, p),
        (Route::Gemm, _) => gemm::conv_forward(x, wt, bias, relu, g),
        (Route::Amx, _) => amx::conv_forward(x, wt, bias, relu, g),
    }
}

/// The input gradient dx (NCHW, the input's shape) of the convolution `g`
/// from the output gradient `dy`: a forward convolution of `dy` with the
/// flipped kernel (Winograd reads the forward weights flipped, no copy).
pub(super) fn input_grad(dy: &[f32], wt: &[f32], g: &Geom, prec: Precision) -> Vec<f32> {
    let back = g.input_grad();
    match choose_with(Pass::InputGrad, g, prec) {
        (Route::Winograd, p) => {
            winograd::conv_forward(dy, wt, winograd::Kernel::Flipped, None, false, &back, p)
        }
        (Route::Direct, p) => {
            direct::conv_forward(dy, &flipped_kernel(wt, g), None, false, &back, p)
        }
        (Route::Gemm, _) => gemm::conv_forward(dy, &flipped_kernel(wt, g), None, false, &back),
        (Route::Amx, _) => amx::conv_input_grad(dy, wt, g),
    }
}

/// The weight gradient dW (O × C·k·k) of the convolution `g`.
pub(super) fn weight_grad(x: &[f32], dy: &[f32], g: &Geom, prec: Precision) -> Vec<f32> {
    match choose_with(Pass::WeightGrad, g, prec) {
        (Route::Direct, p) => direct::conv_weight_grad(x, dy, g, p),
        (Route::Amx, _) => amx::conv_weight_grad(x, dy, g),
        // `choose` never picks Winograd for the weight gradient
        (Route::Gemm | Route::Winograd, _) => gemm::conv_weight_grad(x, dy, g),
    }
}

/// The kernel of the input gradient: flipped in space with the channel axes
/// swapped, as a (C × O·k·k) matrix.
pub(super) fn flipped_kernel(wt: &[f32], g: &Geom) -> Vec<f32> {
    use rayon::prelude::*;
    let (o, c, k) = (g.o, g.c, g.k);
    let kk = k * k;
    let mut f = vec![0f32; wt.len()];
    // a block of 16 destination rows (input channels) per task: each
    // output channel's kernels of those 16 input channels are one
    // contiguous run of the source (reading one channel's 9 floats per
    // output channel would touch a new cache line for each)
    const ROWS: usize = 16;
    f.par_chunks_mut((ROWS * o * kk).max(1))
        .enumerate()
        .for_each(|(blk, rows)| {
            let (ci0, nci) = (blk * ROWS, rows.len() / (o * kk).max(1));
            for oc in 0..o {
                let src = &wt[(oc * c + ci0) * kk..][..nci * kk];
                for (r, s) in src.chunks_exact(kk).enumerate() {
                    let dst = &mut rows[(r * o + oc) * kk..][..kk];
                    for (t, d) in dst.iter_mut().enumerate() {
                        *d = s[kk - 1 - t];
                    }
                }
            }
        });
    f
}
