//! Tests of the bf16 convolution kernels (AVX512-BF16).
//!
//! Error bounds checked, per output element summing `n` products:
//! - against fp32 on the same inputs: `|y_bf16 − y_fp32| <= (2^-7 + 2^-16 +
//!   n·2^-23) · Σ|x_i·w_i|` (each bf16 operand within 2^-8 relative of its
//!   fp32 value; fp32 sums in either path within n·2^-24 · Σ|x_i·w_i|);
//! - against fp32 on inputs first rounded to bf16 (the products are then
//!   exact in both paths): `<= n·2^-23 · Σ|x_i·w_i|` — this checks that the
//!   kernel computes the bf16 products it should, not merely something close;
//! - Winograd, where the transformed operands are rounded: `(2^-7 + 2^-16)
//!   · Σ_c |Aᵀ| (|G||g||Gᵀ| ⊙ |Bᵀ||d||B|) |A|` per tile, plus the fp32
//!   bound of the transforms.
//!
//! A CPU without AVX512-BF16 prints `SKIP` and checks only that bf16 falls
//! back to fp32.

use super::bf16::{from_bf16, to_bf16};
use super::route::{self, choose_with, Pass, Route};
use super::Geom;
use crate::precision::{self, Precision, PrecisionChoice};

/// Deterministic values in [-1, 1) with a spread of magnitudes.
pub(super) fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub(super) fn rounded(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| from_bf16(to_bf16(x))).collect()
}

pub(super) fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

fn have_bf16() -> bool {
    if super::bf16::available() {
        true
    } else {
        eprintln!(
            "SKIP: this CPU has no AVX512-BF16 ({}): the bf16 kernels are not tested here",
            precision::describe_cpu()
        );
        false
    }
}

/// The bf16 forward route of `g` where Winograd does not take it: the AMX
/// tiles where the CPU has them and they take the geometry, else the
/// direct kernel (whose AVX512-BF16 tile `tests_amx` also compares with
/// the tiles on AMX CPUs).
fn bf16_route(g: &Geom) -> Route {
    if super::amx::available() && super::amx::suits(g) {
        Route::Amx
    } else {
        Route::Direct
    }
}

/// Checks `got` against `want` elementwise: |got − want| <= rel · bound.
pub(super) fn within(got: &[f32], want: &[f32], bound: &[f32], rel: f32, what: &str) {
    assert_eq!(got.len(), want.len());
    let mut worst = 0f32;
    for i in 0..got.len() {
        let d = (got[i] - want[i]).abs();
        let b = rel * bound[i] + 1e-30;
        assert!(
            d <= b,
            "{what}: element {i}: {} vs {} (|d| {d}, bound {b})",
            got[i],
            want[i]
        );
        worst = worst.max(d / b);
    }
    eprintln!("{what}: worst |d| / bound = {worst:.3}");
}

/// The three passes in `prec`: (y, dx, dw).
pub(super) fn passes(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    g: &Geom,
    prec: Precision,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    (
        route::forward(x, w, None, false, g, prec),
        route::input_grad(dy, w, g, prec),
        route::weight_grad(x, dy, g, prec),
    )
}

pub(super) const U: f32 = 1.0 / 128.0 + 1.0 / 65536.0;

/// Forward, input gradient and weight gradient in bf16 against fp32, for
/// the direct kernels (row mode, grid mode, odd channel counts, odd batch).
#[test]
fn direct_bf16_kernels_match_fp32_within_bf16_bounds() {
    if !have_bf16() {
        return;
    }
    // (n, c, h, w, o, k, p)
    for &(n, c, h, w, o, k, p) in &[
        (2, 8, 5, 16, 8, 3, 1),   // row mode, 1 vector
        (3, 9, 4, 31, 19, 3, 1),  // odd channels and batch, masked tails
        (1, 11, 6, 61, 9, 3, 2),  // 4 vectors, padding 2
        (2, 10, 3, 45, 8, 5, 2),  // 5×5 kernel
        (2, 7, 2, 31, 13, 1, 0),  // 1×1 kernel
        (2, 16, 3, 16, 8, 3, 1),  // channels-last weight gradient
        (3, 33, 3, 47, 11, 3, 0), // partial channel blocks, odd batch
        (2, 12, 7, 7, 16, 3, 1),  // grid mode (small image)
    ] {
        let g = Geom::new(&[n, c, h, w], &[o, c, k, k], p).unwrap();
        let (ho, wo) = (g.ho, g.wo);
        let x = values(n * c * h * w, 1 + c as u64);
        let wt = values(o * c * k * k, 2 + o as u64);
        let dy = values(n * o * ho * wo, 3 + h as u64);
        let fwd = choose_with(Pass::Forward, &g, Precision::Bf16);
        assert_eq!(fwd, (bf16_route(&g), Precision::Bf16), "{g:?}");
        let (yb, dxb, dwb) = passes(&x, &wt, &dy, &g, Precision::Bf16);
        let (yf, dxf, dwf) = passes(&x, &wt, &dy, &g, Precision::Fp32);
        let (yr, dxr, dwr) = passes(
            &rounded(&x),
            &rounded(&wt),
            &rounded(&dy),
            &g,
            Precision::Fp32,
        );
        // Σ|x·w| of every output: the passes on absolute values
        let (ya, dxa, dwa) = passes(&abs(&x), &abs(&wt), &abs(&dy), &g, Precision::Fp32);
        let terms = |n: usize| n as f32 / 8_388_608.0;
        let (nf, nb, nw) = (c * k * k, o * k * k, n * ho * wo);
        within(&yb, &yf, &ya, U + terms(nf), &format!("forward {g:?}"));
        within(
            &yb,
            &yr,
            &ya,
            terms(nf),
            &format!("forward, rounded inputs {g:?}"),
        );
        let back = choose_with(Pass::InputGrad, &g, Precision::Bf16);
        if back.0 == Route::Winograd {
            // the transformed operands are rounded: the Winograd bound, on
            // the input gradient as a forward convolution of dy
            let bg = g.input_grad();
            let wf = route::flipped_kernel(&wt, &g);
            let wb = winograd_bound(&dy, &wf, &bg);
            let bound: Vec<f32> = wb
                .iter()
                .zip(&dxa)
                .map(|(&b, &a)| U * b + terms(nb * 4) * a.max(b))
                .collect();
            within(
                &dxb,
                &dxf,
                &bound,
                1.0,
                &format!("input grad (winograd) {g:?}"),
            );
        } else if back.1 == Precision::Bf16 {
            within(
                &dxb,
                &dxf,
                &dxa,
                U + terms(nb),
                &format!("input grad {g:?}"),
            );
            within(
                &dxb,
                &dxr,
                &dxa,
                terms(nb),
                &format!("input grad, rounded {g:?}"),
            );
        } else {
            assert_eq!(dxb, dxf, "fp32 route: bitwise fp32 {g:?}");
        }
        let wg = choose_with(Pass::WeightGrad, &g, Precision::Bf16);
        assert_eq!(wg.1 == Precision::Bf16, k == 3 && c >= 16, "{g:?}");
        if wg.1 == Precision::Bf16 {
            within(
                &dwb,
                &dwf,
                &dwa,
                U + terms(nw),
                &format!("weight grad {g:?}"),
            );
            within(
                &dwb,
                &dwr,
                &dwa,
                terms(nw),
                &format!("weight grad, rounded {g:?}"),
            );
        } else {
            assert_eq!(dwb, dwf, "fp32 route: bitwise fp32 {g:?}");
        }
        // the bf16 path really rounds (it is not the fp32 kernel)
        assert_ne!(yb, yf, "{g:?}");
    }
}

/// Σ_c |Aᵀ| (|G||g||Gᵀ| ⊙ |Bᵀ||d||B|) |A| for every output of the 3×3,
/// padding-1 convolution: the bound of the Winograd products' rounding.
#[allow(clippy::needless_range_loop)] // the transforms' index notation
fn winograd_bound(x: &[f32], wt: &[f32], g: &Geom) -> Vec<f32> {
    const BT: [[f32; 4]; 4] = [
        [1., 0., -1., 0.],
        [0., 1., 1., 0.],
        [0., -1., 1., 0.],
        [0., 1., 0., -1.],
    ];
    const GM: [[f32; 3]; 4] = [
        [1., 0., 0.],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0., 0., 1.],
    ];
    const AT: [[f32; 4]; 2] = [[1., 1., 1., 0.], [0., 1., -1., -1.]];
    let (h, w) = (g.h, g.w);
    let mut out = vec![0f32; g.n * g.o * h * w];
    let at = |img: usize, c: usize, y: isize, xx: isize| {
        if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
            0.0
        } else {
            x[((img * g.c + c) * h + y as usize) * w + xx as usize].abs()
        }
    };
    for img in 0..g.n {
        for ty in 0..h.div_ceil(2) {
            for tx in 0..w.div_ceil(2) {
                // |Bᵀ||d||B| per channel
                let vs: Vec<[[f32; 4]; 4]> = (0..g.c)
                    .map(|c| {
                        let mut v = [[0f32; 4]; 4];
                        for (i, vi) in v.iter_mut().enumerate() {
                            for (j, vij) in vi.iter_mut().enumerate() {
                                for a in 0..4 {
                                    for b in 0..4 {
                                        let d = at(
                                            img,
                                            c,
                                            (2 * ty + a) as isize - 1,
                                            (2 * tx + b) as isize - 1,
                                        );
                                        *vij += BT[i][a].abs() * d * BT[j][b].abs();
                                    }
                                }
                            }
                        }
                        v
                    })
                    .collect();
                for o in 0..g.o {
                    let mut m = [[0f32; 4]; 4];
                    for (c, v) in vs.iter().enumerate() {
                        let gw = &wt[(o * g.c + c) * 9..][..9];
                        for i in 0..4 {
                            for j in 0..4 {
                                let mut u = 0f32;
                                for a in 0..3 {
                                    for b in 0..3 {
                                        u += GM[i][a].abs() * gw[a * 3 + b].abs() * GM[j][b].abs();
                                    }
                                }
                                m[i][j] += u * v[i][j];
                            }
                        }
                    }
                    for (r, atr) in AT.iter().enumerate() {
                        for (s, ats) in AT.iter().enumerate() {
                            let (y, xx) = (2 * ty + r, 2 * tx + s);
                            if y >= h || xx >= w {
                                continue;
                            }
                            let mut e = 0f32;
                            for i in 0..4 {
                                for j in 0..4 {
                                    e += atr[i].abs() * m[i][j] * ats[j].abs();
                                }
                            }
                            out[((img * g.o + o) * h + y) * w + xx] = e;
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn winograd_bf16_matches_fp32_within_its_bound() {
    if !have_bf16() {
        return;
    }
    // odd channel count (a half pair), odd sizes (partial tiles)
    for &(n, c, h, w, o) in &[(2, 17, 13, 22, 9), (1, 48, 16, 16, 16)] {
        let g = Geom::new(&[n, c, h, w], &[o, c, 3, 3], 1).unwrap();
        assert_eq!(
            choose_with(Pass::Forward, &g, Precision::Bf16),
            (Route::Winograd, Precision::Bf16)
        );
        let x = values(n * c * h * w, 7);
        let wt = values(o * c * 9, 8);
        let yb = route::forward(&x, &wt, None, false, &g, Precision::Bf16);
        let yf = route::forward(&x, &wt, None, false, &g, Precision::Fp32);
        // the fp32 transforms' own error: a few ulp of the Σ|x·w| scale
        let ya = route::forward(&abs(&x), &abs(&wt), None, false, &g, Precision::Fp32);
        let wb = winograd_bound(&x, &wt, &g);
        let bound: Vec<f32> = wb
            .iter()
            .zip(&ya)
            .map(|(&b, &a)| U * b + (c * 9 * 4) as f32 / 8_388_608.0 * a.max(b))
            .collect();
        within(&yb, &yf, &bound, 1.0, &format!("winograd forward {g:?}"));
        assert_ne!(yb, yf);
    }
}

/// The same bits on 1, 2 and 3 threads, for every bf16 kernel.
#[test]
fn bf16_results_do_not_depend_on_the_thread_count() {
    if !have_bf16() {
        return;
    }
    // Winograd + channels-last weight gradient; direct row mode (odd
    // channels; the weight gradient in fp32, pixel vectors); grid mode
    for &(n, c, h, w, o) in &[(4, 24, 30, 34, 16), (3, 9, 5, 48, 12), (2, 20, 6, 6, 24)] {
        let g = Geom::new(&[n, c, h, w], &[o, c, 3, 3], 1).unwrap();
        let x = values(n * c * h * w, 21);
        let wt = values(o * c * 9, 22);
        let dy = values(n * o * h * w, 23);
        let run = |threads: usize| {
            crate::ops::test_util::on_threads(threads, || passes(&x, &wt, &dy, &g, Precision::Bf16))
        };
        let one = run(1);
        for threads in [2, 3] {
            let t = run(threads);
            assert!(
                t.0 == one.0,
                "forward: {threads} threads differ from 1: {g:?}"
            );
            assert!(
                t.1 == one.1,
                "input grad: {threads} threads differ from 1: {g:?}"
            );
            assert!(
                t.2 == one.2,
                "weight grad: {threads} threads differ from 1: {g:?}"
            );
        }
    }
}

/// The precision setting reaches the op (forward and backward) and the
/// dispatch follows the CPU.
#[test]
fn precision_setting_routes_the_op_and_follows_the_cpu() {
    use crate::ops::test_util::rand_tensor;
    use candle_core::Var;
    let (amx, avx512bf16) = precision::cpu_bf16_features();
    eprintln!("{}", precision::describe_cpu());
    let auto = PrecisionChoice::Auto.resolve().unwrap();
    assert_eq!(auto == Precision::Bf16, avx512bf16);
    assert_eq!(PrecisionChoice::Bf16.resolve().is_ok(), avx512bf16);
    assert_eq!(PrecisionChoice::Fp32.resolve().unwrap(), Precision::Fp32);
    assert_eq!(
        precision::bf16_kernels() == Some(precision::Bf16Isa::Amx),
        amx && avx512bf16 && precision::amx_tiles()
    );
    let x = rand_tensor(&[2, 16, 12, 20], 1);
    let w = rand_tensor(&[8, 16, 3, 3], 2);
    let run = |p: Precision| {
        let _guard = precision::scoped(p);
        let xv = Var::from_tensor(&x).unwrap();
        let wv = Var::from_tensor(&w).unwrap();
        let y = super::conv2d(xv.as_tensor(), wv.as_tensor(), None, 1).unwrap();
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let v = |t: &candle_core::Tensor| crate::ops::f32_data(t).unwrap();
        (
            v(&y),
            v(g.get(xv.as_tensor()).unwrap()),
            v(g.get(wv.as_tensor()).unwrap()),
        )
    };
    let f = run(Precision::Fp32);
    let b = run(Precision::Bf16);
    assert_eq!(precision::current(), Precision::Fp32, "the guard restores");
    if !have_bf16() {
        assert!(f == b, "without bf16 kernels bf16 falls back to fp32");
        return;
    }
    assert_ne!(f.0, b.0, "forward ran in bf16");
    assert_ne!(f.1, b.1, "input gradient ran in bf16");
    assert_ne!(f.2, b.2, "weight gradient ran in bf16");
    // and on a worker thread too (on_worker carries the setting)
    let _guard = precision::scoped(Precision::Bf16);
    let yw = crate::on_worker(|| {
        let y = super::conv2d(&x, &w, None, 1).unwrap();
        crate::ops::f32_data(&y).unwrap()
    });
    assert_eq!(yw, b.0);
}

/// The transposed 2×2 convolution's forward pass in bf16 (a 1×1
/// convolution with 4·O outputs on the direct bf16 kernel, then the
/// shuffle): within the bf16 bound of fp32, exactly the fp32 pass on
/// bf16-rounded inputs up to fp32 summation, the same bits on 1, 2 and 3
/// threads; the fp32 setting keeps the fp32 GEMM.
#[test]
fn transposed_conv_forward_in_bf16_within_its_bound() {
    use candle_core::{Device, Tensor};
    if !have_bf16() {
        return;
    }
    // (n, c, h, w, o): rows of 16+, grid mode (small image), odd sizes
    for &(n, c, h, w, o) in &[(2, 16, 5, 16, 8), (1, 24, 7, 9, 4), (3, 5, 4, 33, 2)] {
        let g = Geom::new(&[n, c, h, w], &[4 * o, c, 1, 1], 0).unwrap();
        assert_eq!(
            choose_with(Pass::Forward, &g, Precision::Bf16),
            (bf16_route(&g), Precision::Bf16),
            "{g:?}"
        );
        let t = |v: Vec<f32>, dims: &[usize]| Tensor::from_vec(v, dims, &Device::Cpu).unwrap();
        let x = values(n * c * h * w, 31 + c as u64);
        let wt = values(c * o * 4, 32 + o as u64);
        let b = values(o, 33);
        let run = |x: &[f32], wt: &[f32], b: &[f32], p: Precision| {
            let _guard = precision::scoped(p);
            let y = crate::ops::conv_transpose2x2(
                &t(x.to_vec(), &[n, c, h, w]),
                &t(wt.to_vec(), &[c, o, 2, 2]),
                &t(b.to_vec(), &[o]),
            )
            .unwrap();
            crate::ops::f32_data(&y).unwrap()
        };
        let yb = run(&x, &wt, &b, Precision::Bf16);
        let yf = run(&x, &wt, &b, Precision::Fp32);
        let yr = run(&rounded(&x), &rounded(&wt), &b, Precision::Fp32);
        // Σ|x·w| + |b| of every output
        let ya = run(&abs(&x), &abs(&wt), &abs(&b), Precision::Fp32);
        let terms = (c + 1) as f32 / 8_388_608.0;
        assert_ne!(yb, yf, "{g:?}: the forward ran in bf16");
        within(&yb, &yf, &ya, U + terms, &format!("transposed {g:?}"));
        within(
            &yb,
            &yr,
            &ya,
            terms,
            &format!("transposed, rounded inputs {g:?}"),
        );
        for threads in [1, 2, 3] {
            let yt =
                crate::ops::test_util::on_threads(threads, || run(&x, &wt, &b, Precision::Bf16));
            assert!(yt == yb, "{threads} threads: {g:?}");
        }
    }
}
