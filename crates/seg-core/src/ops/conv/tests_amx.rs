//! Tests of the AMX tile kernels (bf16 forward, input and weight gradients): the
//! bounds of the AVX512-BF16 kernels ([`super::tests_bf16`]: against fp32
//! `(2^-7 + 2^-16 + n·2^-23) · Σ|x_i·w_i|`, against fp32 on bf16-rounded
//! inputs `n·2^-23 · Σ|x_i·w_i|`), the same bits on 1, 2 and 3 threads, and
//! the route. A CPU without AMX-BF16, or whose OS withholds the tile state,
//! prints `SKIP`.

use super::route::{self, choose_with, Pass, Route};
use super::tests_bf16::{abs, passes, rounded, values, within, U};
use super::Geom;
use crate::precision::{self, Precision};

fn have_amx() -> bool {
    if super::amx::available() {
        true
    } else {
        eprintln!(
            "SKIP: no AMX tiles here ({}): the AMX kernels are not tested",
            precision::describe_cpu()
        );
        false
    }
}

fn terms(n: usize) -> f32 {
    n as f32 / 8_388_608.0
}

/// Forward (with bias and ReLU), input and weight gradients on the tiles: row mode
/// with masked tails, grid mode, output channels not a multiple of 16, 1×1
/// and 5×5 kernels, several 16-pair blocks and row tasks.
#[test]
fn amx_kernels_match_fp32_within_bf16_bounds() {
    if !have_amx() {
        return;
    }
    // (n, c, h, w, o, k, p)
    for &(n, c, h, w, o, k, p) in &[
        (2, 32, 5, 40, 32, 3, 1),
        (1, 64, 6, 6, 40, 3, 1),
        (3, 32, 4, 17, 48, 1, 0),
        (2, 64, 9, 20, 17, 5, 2),
        (2, 96, 30, 34, 64, 3, 1),
        // one partial K block: 8, 5 and 12 channel pairs
        (2, 16, 6, 33, 16, 3, 1),
        (1, 9, 5, 20, 24, 3, 1),
        (2, 24, 4, 18, 32, 1, 0),
    ] {
        let g = Geom::new(&[n, c, h, w], &[o, c, k, k], p).unwrap();
        assert_eq!(
            choose_with(Pass::Forward, &g, Precision::Bf16),
            (Route::Amx, Precision::Bf16),
            "{g:?}"
        );
        let x = values(n * c * h * w, 41 + c as u64);
        let wt = values(o * c * k * k, 42 + o as u64);
        let dy = values(n * o * g.ho * g.wo, 43 + h as u64);
        let b = values(o, 44);
        let (nf, nb) = (c * k * k, o * k * k);
        // forward with bias and ReLU (|relu(a) − relu(b)| <= |a − b|)
        let fwd = |x: &[f32], wt: &[f32], b: &[f32], p: Precision, relu: bool| {
            route::forward(x, wt, Some(b), relu, &g, p)
        };
        let ya = fwd(&abs(&x), &abs(&wt), &abs(&b), Precision::Fp32, false);
        let yb = fwd(&x, &wt, &b, Precision::Bf16, true);
        let yf = fwd(&x, &wt, &b, Precision::Fp32, true);
        let yr = fwd(&rounded(&x), &rounded(&wt), &b, Precision::Fp32, true);
        within(
            &yb,
            &yf,
            &ya,
            U + terms(nf + 1),
            &format!("amx forward {g:?}"),
        );
        within(
            &yb,
            &yr,
            &ya,
            terms(nf + 1),
            &format!("amx forward, rounded {g:?}"),
        );
        assert_ne!(yb, yf, "{g:?}: the forward ran in bf16");
        // without bias and ReLU (whole tiles stored straight to the output)
        let plain = |x: &[f32], p: Precision| route::forward(x, &wt, None, false, &g, p);
        let ya0 = route::forward(&abs(&x), &abs(&wt), None, false, &g, Precision::Fp32);
        within(
            &plain(&x, Precision::Bf16),
            &plain(&x, Precision::Fp32),
            &ya0,
            U + terms(nf),
            &format!("amx forward, no bias {g:?}"),
        );
        // the AVX512-BF16 direct kernel rounds the same operands: the two
        // differ only in the order of the fp32 sums
        let yd = super::direct::conv_forward(&x, &wt, Some(&b), true, &g, Precision::Bf16);
        within(
            &yb,
            &yd,
            &ya,
            2.0 * terms(nf + 1),
            &format!("amx vs avx512 {g:?}"),
        );
        // the input gradient takes the tiles when its own input (dy) has
        // whole 32-channel blocks or one partial block, and ≥ 16 outputs
        let back = choose_with(Pass::InputGrad, &g, Precision::Bf16);
        assert_eq!(
            back.0 == Route::Amx,
            super::amx::pairs_per_block(o).is_some() && c >= 16,
            "{g:?}"
        );
        if back.0 == Route::Amx {
            let (_, dxb, _) = passes(&x, &wt, &dy, &g, Precision::Bf16);
            let (_, dxf, _) = passes(&x, &wt, &dy, &g, Precision::Fp32);
            let (_, dxr, _) = passes(&x, &rounded(&wt), &rounded(&dy), &g, Precision::Fp32);
            let (_, dxa, _) = passes(&x, &abs(&wt), &abs(&dy), &g, Precision::Fp32);
            within(
                &dxb,
                &dxf,
                &dxa,
                U + terms(nb),
                &format!("amx input grad {g:?}"),
            );
            within(
                &dxb,
                &dxr,
                &dxa,
                terms(nb),
                &format!("amx input grad, rounded {g:?}"),
            );
        }
        // the weight gradient: any kernel size, ≥ 16 channels in and out
        let wg = choose_with(Pass::WeightGrad, &g, Precision::Bf16);
        assert_eq!(wg.0 == Route::Amx, c >= 16 && o >= 16, "{g:?}");
        if wg.0 == Route::Amx {
            check_weight_grad(&x, &dy, &g);
        }
    }
}

/// The bf16 weight gradient of `g` within its bounds (against fp32, and
/// against fp32 on bf16-rounded inputs), and really in bf16.
fn check_weight_grad(x: &[f32], dy: &[f32], g: &Geom) {
    let nw = g.n * g.ho * g.wo;
    let dwb = route::weight_grad(x, dy, g, Precision::Bf16);
    let dwf = route::weight_grad(x, dy, g, Precision::Fp32);
    let dwr = route::weight_grad(&rounded(x), &rounded(dy), g, Precision::Fp32);
    let dwa = route::weight_grad(&abs(x), &abs(dy), g, Precision::Fp32);
    within(
        &dwb,
        &dwf,
        &dwa,
        U + terms(nw),
        &format!("amx weight grad {g:?}"),
    );
    within(
        &dwb,
        &dwr,
        &dwa,
        terms(nw),
        &format!("amx weight grad, rounded {g:?}"),
    );
    assert_ne!(dwb, dwf, "{g:?}: the weight gradient ran in bf16");
}

/// The same bits on 1, 2 and 3 threads (row mode split into row runs and
/// channel ranges; grid mode split into channel ranges).
#[test]
fn amx_results_do_not_depend_on_the_thread_count() {
    if !have_amx() {
        return;
    }
    for &(n, c, h, w, o) in &[(3, 32, 20, 37, 64), (2, 64, 5, 5, 96)] {
        let g = Geom::new(&[n, c, h, w], &[o, c, 3, 3], 1).unwrap();
        assert_eq!(
            choose_with(Pass::Forward, &g, Precision::Bf16).0,
            Route::Amx
        );
        let x = values(n * c * h * w, 51);
        let wt = values(o * c * 9, 52);
        let dy = values(n * o * h * w, 53);
        let run = |threads: usize| {
            crate::ops::test_util::on_threads(threads, || passes(&x, &wt, &dy, &g, Precision::Bf16))
        };
        let one = run(1);
        for threads in [2, 3] {
            assert!(
                run(threads) == one,
                "{threads} threads differ from 1: {g:?}"
            );
        }
    }
}

/// The weight gradient with channel counts that are not whole tiles
/// (partial 16-channel blocks in and out, an odd batch, a 1×1 kernel).
#[test]
fn amx_weight_grad_with_partial_channel_blocks() {
    if !have_amx() {
        return;
    }
    // (n, c, h, w, o, k, p)
    for &(n, c, h, w, o, k, p) in &[(3, 24, 7, 19, 20, 3, 1), (1, 17, 5, 9, 50, 1, 0)] {
        let g = Geom::new(&[n, c, h, w], &[o, c, k, k], p).unwrap();
        assert_eq!(
            choose_with(Pass::WeightGrad, &g, Precision::Bf16),
            (Route::Amx, Precision::Bf16)
        );
        let x = values(n * c * h * w, 61);
        let dy = values(n * o * g.ho * g.wo, 63);
        check_weight_grad(&x, &dy, &g);
    }
}

/// The transposed 2×2 convolution's backward pass in bf16 on the tiles (dx
/// a 1×1 convolution of the gathered dy, dW its weight gradient): within
/// the bf16 bounds of fp32, the same bits on 1, 2 and 3 threads.
#[test]
fn transposed_conv_backward_in_bf16_on_the_tiles() {
    use candle_core::{Device, Tensor, Var};
    if !have_amx() {
        return;
    }
    // (n, c, h, w, o): 4·o a multiple of 32
    for &(n, c, h, w, o) in &[(2, 32, 5, 9, 8), (3, 16, 4, 20, 16)] {
        let t = |v: Vec<f32>, dims: &[usize]| Tensor::from_vec(v, dims, &Device::Cpu).unwrap();
        let x = values(n * c * h * w, 71);
        let wt = values(c * o * 4, 72);
        let b = values(o, 73);
        let dy = values(n * o * 4 * h * w, 74);
        // (dx, dw, db) of Σ y·dy
        let run = |x: &[f32], wt: &[f32], dy: &[f32], p: Precision| {
            let _guard = precision::scoped(p);
            let xv = Var::from_tensor(&t(x.to_vec(), &[n, c, h, w])).unwrap();
            let wv = Var::from_tensor(&t(wt.to_vec(), &[c, o, 2, 2])).unwrap();
            let bv = Var::from_tensor(&t(b.clone(), &[o])).unwrap();
            let y = crate::ops::conv_transpose2x2(xv.as_tensor(), wv.as_tensor(), bv.as_tensor())
                .unwrap();
            let s = (y * t(dy.to_vec(), &[n, o, 2 * h, 2 * w])).unwrap();
            let gr = s.sum_all().unwrap().backward().unwrap();
            let v = |var: &Var| crate::ops::f32_data(gr.get(var.as_tensor()).unwrap()).unwrap();
            (v(&xv), v(&wv), v(&bv))
        };
        let (dxb, dwb, dbb) = run(&x, &wt, &dy, Precision::Bf16);
        let (dxf, dwf, dbf) = run(&x, &wt, &dy, Precision::Fp32);
        let (dxa, dwa, _) = run(&abs(&x), &abs(&wt), &abs(&dy), Precision::Fp32);
        assert_ne!(dxb, dxf, "dx ran in bf16");
        within(&dxb, &dxf, &dxa, U + terms(4 * o), "transposed dx");
        within(&dwb, &dwf, &dwa, U + terms(n * h * w), "transposed dw");
        assert_eq!(dbb, dbf, "the bias gradient stays fp32");
        for threads in [1, 2, 3] {
            let r =
                crate::ops::test_util::on_threads(threads, || run(&x, &wt, &dy, Precision::Bf16));
            assert!(
                r == (dxb.clone(), dwb.clone(), dbb.clone()),
                "{threads} threads"
            );
        }
    }
}
