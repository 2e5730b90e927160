//! Tests of the CPU convolutions: forward and gradients against candle's
//! (every kernel, odd shapes), the kernel routing, bias/ReLU/NaN handling,
//! thread-count independence and the GEMM path's chunking.

use super::gemm::{chunks, in_one_image};
use super::route::{choose, simd_kernels, Pass, Route};
use super::*;
use crate::ops::f32_data;
use crate::ops::test_util::*;
use candle_core::Var;

/// Forward and all gradients of `f` and `reference` on the same inputs.
fn check(
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> Tensor,
    reference: impl Fn(&[Tensor]) -> Tensor,
    tol: f32,
) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts);
    let yr = reference(&ts);
    let scale = |t: &Tensor| {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1.0)
    };
    assert!(
        max_abs_diff(&y, &yr) <= tol * scale(&yr),
        "forward differs: {}",
        max_abs_diff(&y, &yr)
    );
    let gy = rand_tensor(y.dims(), 99);
    let g = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
    let gr = (&yr * &gy).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, t) in ts.iter().enumerate() {
        let (a, b) = (g.get(t).unwrap(), gr.get(t).unwrap());
        let d = max_abs_diff(a, b);
        assert!(d <= tol * scale(b), "gradient of input {i} differs by {d}");
    }
}

/// [`check`] of [`conv2d`] against [`conv2d_reference`] on random
/// inputs of the given sizes (n, c, h, w, o, k, p, bias); `seed` for the
/// input, seed + 1 and + 2 for the weight and bias.
#[allow(clippy::type_complexity)]
fn check_conv(
    (n, c, h, w, o, k, p, bias): (usize, usize, usize, usize, usize, usize, usize, bool),
    seed: u64,
) {
    let x = rand_tensor(&[n, c, h, w], seed);
    let wt = rand_tensor(&[o, c, k, k], seed + 1);
    if bias {
        check(
            &[x, wt, rand_tensor(&[o], seed + 2)],
            |t| conv2d(&t[0], &t[1], Some(&t[2]), p).unwrap(),
            |t| conv2d_reference(&t[0], &t[1], Some(&t[2]), p).unwrap(),
            1e-5,
        );
    } else {
        check(
            &[x, wt],
            |t| conv2d(&t[0], &t[1], None, p).unwrap(),
            |t| conv2d_reference(&t[0], &t[1], None, p).unwrap(),
            1e-5,
        );
    }
}

#[test]
fn conv_matches_candle_on_odd_shapes() {
    // (n, c, h, w, o, k, p, bias)
    for &(n, c, h, w, o, k, p, bias) in &[
        (2, 3, 7, 5, 4, 3, 1, true),
        (1, 1, 1, 1, 1, 3, 1, true),
        (3, 5, 9, 2, 2, 3, 1, false),
        (2, 4, 6, 11, 3, 1, 0, true),
        (1, 2, 8, 7, 3, 5, 2, true),
        (2, 3, 6, 6, 2, 3, 0, false),
        (1, 2, 5, 4, 3, 3, 2, true),
        (5, 17, 3, 3, 19, 3, 1, true),
        (1, 3, 40, 37, 5, 3, 1, true),
    ] {
        check_conv((n, c, h, w, o, k, p, bias), 1);
    }
}

#[test]
fn direct_kernels_match_candle_on_odd_shapes() {
    if !simd_kernels() {
        eprintln!("skip: this CPU has no AVX-512, the direct kernels are not used");
        return;
    }
    // (n, c, h, w, o, k, p, bias): rows of 16, 31, 47 and 61 columns
    // (masked tails, 1–3 vectors per tile), channel counts that leave
    // partial blocks, kernels 1, 3 and 5 with every padding
    for &(n, c, h, w, o, k, p, bias) in &[
        (2, 8, 5, 16, 8, 3, 1, true),
        (1, 9, 2, 31, 19, 3, 1, false),
        (2, 3, 3, 47, 10, 3, 0, true),
        (1, 11, 6, 61, 9, 3, 2, true),
        (1, 10, 3, 45, 8, 5, 2, false),
        (2, 8, 2, 31, 13, 1, 0, true),
        // 16 channels or more: the channels-last weight gradient, with
        // channel counts that leave partial 16-channel blocks
        (2, 16, 3, 16, 8, 3, 1, true),
        (1, 20, 2, 31, 9, 3, 1, false),
        (2, 33, 3, 47, 11, 3, 0, true),
        (1, 17, 6, 61, 9, 3, 2, true),
    ] {
        let (ho, wo) = (h + 2 * p + 1 - k, w + 2 * p + 1 - k);
        let g = Geom::new(&[n, c, h, w], &[o, c, k, k], p).unwrap();
        let kernel = |pass| choose(pass, &g);
        assert_eq!(kernel(Pass::Forward), Route::Direct, "{g:?}");
        assert_eq!(kernel(Pass::WeightGrad) == Route::Direct, k == 3, "{g:?}");
        let back = Geom::new(&[n, o, ho, wo], &[c, o, k, k], k - 1 - p).unwrap();
        assert_eq!(g.input_grad(), back);
        assert_eq!(kernel(Pass::InputGrad) == Route::Direct, c >= 8, "{back:?}");
        check_conv((n, c, h, w, o, k, p, bias), 11);
    }
}

#[test]
fn direct_grid_mode_matches_candle_on_small_and_odd_images() {
    if !simd_kernels() {
        eprintln!("skip: this CPU has no AVX-512, the direct kernels are not used");
        return;
    }
    // (n, c, h, w, o, k, p, bias): images whose rows do not fill the
    // vector lanes, taken as one run over the padded grid
    for &(n, c, h, w, o, k, p, bias) in &[
        (3, 9, 8, 8, 10, 3, 1, true),
        (2, 8, 12, 12, 9, 3, 1, false),
        (1, 10, 36, 35, 8, 3, 1, true),
        (2, 8, 9, 9, 8, 1, 0, true),
        (2, 16, 10, 11, 17, 3, 0, false),
    ] {
        let g = Geom::new(&[n, c, h, w], &[o, c, k, k], p).unwrap();
        assert_eq!(choose(Pass::Forward, &g), Route::Direct, "{g:?}");
        assert!(
            g.wo < 16 || g.wo * 100 < g.wo.div_ceil(16) * 16 * 85,
            "{g:?}: row mode"
        );
        check_conv((n, c, h, w, o, k, p, bias), 41);
    }
}

#[test]
fn winograd_matches_candle_on_odd_shapes() {
    if !simd_kernels() {
        eprintln!("skip: this CPU has no AVX-512, the Winograd kernels are not used");
        return;
    }
    // (n, c, h, w, o, bias): odd heights and widths (tiles half
    // outside the image), runs of tiles that cross rows and images
    // inside a block, partial output-channel blocks, several blocks
    // and split output channels; the input gradients (o >= 16) take
    // the Winograd path too
    for &(n, c, h, w, o, bias) in &[
        (2, 16, 9, 37, 16, true),
        (1, 20, 16, 16, 19, false),
        (4, 33, 8, 12, 24, true),
        (1, 17, 31, 33, 16, true),
        (4, 16, 13, 7, 21, false),
    ] {
        let g = Geom::new(&[n, c, h, w], &[o, c, 3, 3], 1).unwrap();
        assert_eq!(choose(Pass::Forward, &g), Route::Winograd, "{g:?}");
        let back = Geom::new(&[n, o, h, w], &[c, o, 3, 3], 1).unwrap();
        assert_eq!(g.input_grad(), back);
        assert_eq!(choose(Pass::InputGrad, &g), Route::Winograd, "{back:?}");
        check_conv((n, c, h, w, o, 3, 1, bias), 61);
    }
}

#[test]
fn winograd_results_do_not_depend_on_the_thread_count() {
    if !simd_kernels() {
        eprintln!("skip: this CPU has no AVX-512, the Winograd kernels are not used");
        return;
    }
    // several tile blocks (the first shape) and few tiles with the
    // output channels split across tasks (the second)
    for &(n, c, h, w, o) in &[(2, 24, 30, 34, 16), (4, 64, 8, 12, 40)] {
        let g = Geom::new(&[n, c, h, w], &[o, c, 3, 3], 1).unwrap();
        assert_eq!(choose(Pass::Forward, &g), Route::Winograd);
        let x = rand_tensor(&[n, c, h, w], 81);
        let wt = rand_tensor(&[o, c, 3, 3], 82);
        let gy = rand_tensor(&[n, o, h, w], 83);
        let run = |threads: usize| {
            on_threads(threads, || {
                let (xv, wv) = (
                    Var::from_tensor(&x).unwrap(),
                    Var::from_tensor(&wt).unwrap(),
                );
                let y = conv2d(xv.as_tensor(), wv.as_tensor(), None, 1).unwrap();
                let grads = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
                let dx = grads.get(xv.as_tensor()).unwrap().clone();
                (f32_data(&y).unwrap(), f32_data(&dx).unwrap())
            })
        };
        let one = run(1);
        for threads in [2, 3] {
            let other = run(threads);
            assert!(one.0 == other.0, "forward differs with {threads} threads");
            assert!(
                one.1 == other.1,
                "input gradient differs with {threads} threads"
            );
        }
    }
}

#[test]
fn winograd_forward_applies_bias_and_relu_and_keeps_nan() {
    if !simd_kernels() {
        eprintln!("skip: this CPU has no AVX-512, the Winograd kernels are not used");
        return;
    }
    let (n, c, h, w, o) = (2, 16, 11, 13, 12);
    let g = Geom::new(&[n, c, h, w], &[o, c, 3, 3], 1).unwrap();
    assert_eq!(choose(Pass::Forward, &g), Route::Winograd);
    let (x, wt, b) = (
        rand_tensor(&[n, c, h, w], 71),
        rand_tensor(&[o, c, 3, 3], 72),
        rand_tensor(&[o], 73),
    );
    let got = conv2d_relu_inference(&x, &wt, Some(&b), 1, true).unwrap();
    let want =
        crate::ops::relu_reference(&conv2d_reference(&x, &wt, Some(&b), 1).unwrap()).unwrap();
    let d = max_abs_diff(&got, &want);
    assert!(d <= 1e-5, "differs by {d}");
    // a NaN input reaches every output whose window holds it
    let mut xs = f32_data(&x).unwrap();
    let (yy, xx) = (5, 7);
    xs[(c + 3) * h * w + yy * w + xx] = f32::NAN; // image 1, channel 3
    let x = Tensor::from_vec(xs, x.dims(), x.device()).unwrap();
    let got = f32_data(&conv2d_relu_inference(&x, &wt, Some(&b), 1, true).unwrap()).unwrap();
    for oc in 0..o {
        for (dy, dx) in [(0, 0), (1, 1), (-1, -1), (1, -1), (0, 1)] {
            let (py, px) = ((yy as i64 + dy) as usize, (xx as i64 + dx) as usize);
            assert!(
                got[((o + oc) * h + py) * w + px].is_nan(),
                "({oc}, {py}, {px})"
            );
        }
        // image 0 is untouched
        assert!(got[(oc * h * w)..((oc + 1) * h * w)]
            .iter()
            .all(|v| v.is_finite()));
    }
}

#[test]
fn direct_forward_applies_bias_and_relu_like_the_layers() {
    if !simd_kernels() {
        eprintln!("skip: this CPU has no AVX-512, the direct kernels are not used");
        return;
    }
    let g = Geom::new(&[2, 4, 5, 31], &[12, 4, 3, 3], 1).unwrap();
    assert_eq!(choose(Pass::Forward, &g), Route::Direct);
    let (x, wt, b) = (
        rand_tensor(&[2, 4, 5, 31], 21),
        rand_tensor(&[12, 4, 3, 3], 22),
        rand_tensor(&[12], 23),
    );
    let mut xs = f32_data(&x).unwrap();
    xs[7] = f32::NAN;
    let x = Tensor::from_vec(xs, x.dims(), x.device()).unwrap();
    let got = conv2d_relu_inference(&x, &wt, Some(&b), 1, true).unwrap();
    let want =
        crate::ops::relu_reference(&conv2d_reference(&x, &wt, Some(&b), 1).unwrap()).unwrap();
    let (g, w) = (f32_data(&got).unwrap(), f32_data(&want).unwrap());
    assert_eq!(g.len(), w.len());
    let mut nans = 0;
    for (a, e) in g.iter().zip(&w) {
        if e.is_nan() {
            assert!(a.is_nan(), "NaN must propagate through the fused ReLU");
            nans += 1;
        } else {
            assert!((a - e).abs() <= 1e-5 * e.abs().max(1.0), "{a} vs {e}");
        }
    }
    assert!(nans > 0);
}

#[test]
fn chunks_split_big_images_and_group_small_ones() {
    let c = chunks(2, 1000, 27, 16);
    assert_eq!(c.len(), 8);
    assert!(c
        .iter()
        .all(|&(s, e)| in_one_image(s, e, 1, 1000).is_some()));
    assert_eq!(c.first(), Some(&(0, 250)));
    assert_eq!(c.last(), Some(&(1750, 2000)));
    assert_eq!(chunks(5, 15, 27, 16), vec![(0, 75)]);
    assert_eq!(
        chunks(40, 15, 27, 16),
        vec![(0, 255), (255, 510), (510, 600)]
    );
    assert!(chunks(0, 15, 27, 16).is_empty());
}

#[test]
fn conv_chunks_spanning_images_match() {
    // many small images: chunks cover several images each
    let x = rand_tensor(&[37, 3, 3, 5], 4);
    let wt = rand_tensor(&[6, 3, 3, 3], 5);
    let b = rand_tensor(&[6], 6);
    check(
        &[x, wt, b],
        |t| conv2d(&t[0], &t[1], Some(&t[2]), 1).unwrap(),
        |t| conv2d_reference(&t[0], &t[1], Some(&t[2]), 1).unwrap(),
        1e-5,
    );
}

#[test]
fn conv_rejects_bad_shapes() {
    let x = rand_tensor(&[1, 3, 4, 4], 1);
    assert!(conv2d(&x, &rand_tensor(&[2, 2, 3, 3], 2), None, 1).is_err());
    assert!(conv2d(
        &x,
        &rand_tensor(&[2, 3, 3, 3], 2),
        Some(&rand_tensor(&[3], 3)),
        1
    )
    .is_err());
    let tiny = rand_tensor(&[1, 3, 1, 1], 1);
    assert!(conv2d(&tiny, &rand_tensor(&[2, 3, 3, 3], 2), None, 0).is_err());
}

#[test]
fn transposed_conv_matches_candle_on_odd_shapes() {
    for &(n, c, h, w, o) in &[
        (2, 3, 5, 3, 4),
        (1, 1, 1, 1, 1),
        (3, 7, 2, 9, 2),
        (1, 4, 33, 17, 3),
    ] {
        let x = rand_tensor(&[n, c, h, w], 7);
        let wt = rand_tensor(&[c, o, 2, 2], 8);
        let b = rand_tensor(&[o], 9);
        check(
            &[x, wt, b],
            |t| conv_transpose2x2(&t[0], &t[1], &t[2]).unwrap(),
            |t| conv_transpose2x2_reference(&t[0], &t[1], &t[2]).unwrap(),
            1e-5,
        );
    }
}

/// The kernel of every pass is chosen per image: the same for any batch
/// size (a data-parallel rank's share of a batch runs what the whole batch
/// runs, with the same rounding).
#[test]
fn the_route_does_not_depend_on_the_batch_size() {
    for &(c, h, w, o, k, p) in &[
        (16, 4, 4, 16, 3, 1),
        (16, 6, 6, 16, 3, 1),
        (32, 8, 8, 64, 3, 1),
        (8, 5, 40, 12, 3, 1),
        (24, 30, 34, 16, 3, 1),
        (3, 64, 64, 16, 3, 1),
        (16, 16, 16, 2, 1, 0),
    ] {
        let at = |n: usize| {
            let g = Geom::new(&[n, c, h, w], &[o, c, k, k], p).unwrap();
            [Pass::Forward, Pass::InputGrad, Pass::WeightGrad].map(|pass| choose(pass, &g))
        };
        let one = at(1);
        for n in 2..=9 {
            assert_eq!(at(n), one, "batch {n} vs 1: c {c}, {h}x{w}, o {o}, k {k}");
        }
    }
}

/// Every fp32 route (GEMM for 1×1, the 3-channel first layer and narrow
/// layers, the direct kernel, Winograd) gives bitwise the same forward
/// output and input and weight gradients on 1, 2 and 3 threads, as does the
/// 2×2 transposed convolution: a run's weights do not depend on the
/// machine's core count.
#[test]
fn fp32_results_do_not_depend_on_the_thread_count() {
    // (n, c, h, w, o, k, padding)
    let shapes = [
        (4, 3, 40, 44, 16, 3, 1),
        (4, 8, 24, 20, 8, 3, 1),
        (2, 32, 20, 22, 32, 3, 1),
        (8, 64, 8, 8, 64, 3, 1),
        (4, 16, 30, 28, 2, 1, 0),
        (2, 24, 64, 64, 24, 1, 0),
    ];
    for (i, &(n, c, h, w, o, k, p)) in shapes.iter().enumerate() {
        let x = rand_tensor(&[n, c, h, w], 90 + i as u64);
        let wt = rand_tensor(&[o, c, k, k], 100 + i as u64);
        let gy = rand_tensor(
            &[n, o, h + 2 * p + 1 - k, w + 2 * p + 1 - k],
            110 + i as u64,
        );
        let run = |threads: usize| {
            on_threads(threads, || {
                let (xv, wv) = (
                    Var::from_tensor(&x).unwrap(),
                    Var::from_tensor(&wt).unwrap(),
                );
                let y = conv2d(xv.as_tensor(), wv.as_tensor(), None, p).unwrap();
                let grads = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
                [
                    f32_data(&y).unwrap(),
                    f32_data(grads.get(xv.as_tensor()).unwrap()).unwrap(),
                    f32_data(grads.get(wv.as_tensor()).unwrap()).unwrap(),
                ]
            })
        };
        let one = run(1);
        for threads in [2, 3] {
            let other = run(threads);
            for (j, what) in ["forward", "input gradient", "weight gradient"]
                .iter()
                .enumerate()
            {
                assert!(
                    one[j] == other[j],
                    "{what} of {:?} differs with {threads} threads",
                    (n, c, h, w, o, k)
                );
            }
        }
    }
    // the 2×2 transposed convolution
    let (x, wt, b) = (
        rand_tensor(&[4, 32, 12, 10], 120),
        rand_tensor(&[32, 16, 2, 2], 121),
        rand_tensor(&[16], 122),
    );
    let gy = rand_tensor(&[4, 16, 24, 20], 123);
    let run = |threads: usize| {
        on_threads(threads, || {
            let (xv, wv, bv) = (
                Var::from_tensor(&x).unwrap(),
                Var::from_tensor(&wt).unwrap(),
                Var::from_tensor(&b).unwrap(),
            );
            let y = crate::ops::conv_transpose2x2(xv.as_tensor(), wv.as_tensor(), bv.as_tensor())
                .unwrap();
            let grads = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            [
                f32_data(&y).unwrap(),
                f32_data(grads.get(xv.as_tensor()).unwrap()).unwrap(),
                f32_data(grads.get(wv.as_tensor()).unwrap()).unwrap(),
                f32_data(grads.get(bv.as_tensor()).unwrap()).unwrap(),
            ]
        })
    };
    let one = run(1);
    for threads in [2, 3] {
        let other = run(threads);
        for (j, what) in [
            "forward",
            "input gradient",
            "weight gradient",
            "bias gradient",
        ]
        .iter()
        .enumerate()
        {
            assert!(
                one[j] == other[j],
                "transposed conv: {what} differs with {threads} threads"
            );
        }
    }
}
