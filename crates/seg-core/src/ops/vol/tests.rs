//! The volume operations against plain loops over PyTorch's NCDHW layout
//! (forward and backward), and the CPU kernels against the composed ops.

use super::*;
use crate::ops::f32_data;
use crate::ops::test_util::*;
use candle_core::Var;

/// A naive NCDHW 3D convolution, stride 1, padding k / 2.
fn naive_conv3d(x: &[f32], xd: [usize; 5], w: &[f32], o: usize, k: usize, b: &[f32]) -> Vec<f32> {
    let [n, c, d, h, wd] = xd;
    let p = (k / 2) as isize;
    let mut out = vec![0f32; n * o * d * h * wd];
    for ni in 0..n {
        for oi in 0..o {
            for z in 0..d {
                for y in 0..h {
                    for xx in 0..wd {
                        let mut acc = b.get(oi).copied().unwrap_or(0.0) as f64;
                        for ci in 0..c {
                            for kz in 0..k {
                                for ky in 0..k {
                                    for kx in 0..k {
                                        let (sz, sy, sx) = (
                                            z as isize + kz as isize - p,
                                            y as isize + ky as isize - p,
                                            xx as isize + kx as isize - p,
                                        );
                                        if sz < 0
                                            || sy < 0
                                            || sx < 0
                                            || sz >= d as isize
                                            || sy >= h as isize
                                            || sx >= wd as isize
                                        {
                                            continue;
                                        }
                                        let xi = (((ni * c + ci) * d + sz as usize) * h
                                            + sy as usize)
                                            * wd
                                            + sx as usize;
                                        let wi = (((oi * c + ci) * k + kz) * k + ky) * k + kx;
                                        acc += (x[xi] * w[wi]) as f64;
                                    }
                                }
                            }
                        }
                        out[(((ni * o + oi) * d + z) * h + y) * wd + xx] = acc as f32;
                    }
                }
            }
        }
    }
    out
}

fn ncdhw(x: &Tensor) -> Vec<f32> {
    f32_data(&from_depth_major(x).unwrap()).unwrap()
}

fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (p, q)) in a.iter().zip(b).enumerate() {
        assert!(
            (p - q).abs() <= tol * scale,
            "{what}: element {i}: {p} vs {q}"
        );
    }
}

#[test]
fn conv3d_matches_loops_forward_and_backward() {
    // (n, c, d, h, w, o, k): depth 1 and 2 (taps outside), odd sizes, 1×1×1,
    // enough channels for the AVX-512 kernels (when the CPU has them)
    for &(n, c, d, h, w, o, k, bias) in &[
        (2, 3, 5, 6, 7, 4, 3, true),
        (1, 2, 1, 5, 4, 3, 3, false),
        (1, 16, 2, 9, 17, 8, 3, false),
        (2, 4, 3, 4, 5, 5, 1, true),
        (1, 2, 4, 9, 8, 1, 7, true),
    ] {
        let x = rand_tensor(&[n, c, d, h, w], 1);
        let wt = rand_tensor(&[o, c, k, k, k], 2);
        let b = rand_tensor(&[o], 3);
        let gy = rand_tensor(&[n, o, d, h, w], 4);
        let xv = Var::from_tensor(&to_depth_major(&x).unwrap()).unwrap();
        let wv = Var::from_tensor(&wt).unwrap();
        let bv = Var::from_tensor(&b).unwrap();
        let want = naive_conv3d(
            &f32_data(&x).unwrap(),
            [n, c, d, h, w],
            &f32_data(&wt).unwrap(),
            o,
            k,
            &if bias { f32_data(&b).unwrap() } else { vec![] },
        );
        let tag = format!("{n}x{c}x{d}x{h}x{w} -> {o}, k {k}");
        let mut grads = Vec::new();
        for (name, y) in [
            (
                "kernel",
                conv3d(
                    xv.as_tensor(),
                    wv.as_tensor(),
                    bias.then_some(bv.as_tensor()),
                )
                .unwrap(),
            ),
            (
                "composed",
                conv3d_reference(
                    xv.as_tensor(),
                    wv.as_tensor(),
                    bias.then_some(bv.as_tensor()),
                )
                .unwrap(),
            ),
        ] {
            close(&ncdhw(&y), &want, 1e-5, &format!("{tag} {name} forward"));
            let g = (&y * to_depth_major(&gy).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let dx = ncdhw(g.get(xv.as_tensor()).unwrap());
            let dw = f32_data(g.get(wv.as_tensor()).unwrap()).unwrap();
            let db = bias.then(|| f32_data(g.get(bv.as_tensor()).unwrap()).unwrap());
            grads.push((dx, dw, db));
        }
        // the composed op's gradients are candle's own autograd: the kernel's
        // must agree; and the input gradient is checked against loops too
        let (k_dx, k_dw, k_db) = &grads[0];
        let (c_dx, c_dw, c_db) = &grads[1];
        close(k_dx, c_dx, 1e-5, &format!("{tag} dx"));
        close(k_dw, c_dw, 1e-4, &format!("{tag} dw"));
        if let (Some(a), Some(b)) = (k_db, c_db) {
            close(a, b, 1e-5, &format!("{tag} db"));
        }
        // dx by loops: the adjoint — Σ gy·conv(x) is linear in x, so dx[i] is
        // the forward of a one-hot input; check a few positions
        let xs = f32_data(&x).unwrap();
        let ws = f32_data(&wt).unwrap();
        let gys = f32_data(&gy).unwrap();
        for i in [0, xs.len() / 3, xs.len() - 1] {
            let mut e = vec![0f32; xs.len()];
            e[i] = 1.0;
            let y = naive_conv3d(&e, [n, c, d, h, w], &ws, o, k, &[]);
            let v: f64 = y.iter().zip(&gys).map(|(a, b)| (a * b) as f64).sum();
            assert!(
                (k_dx[i] as f64 - v).abs() < 1e-4,
                "{tag} dx[{i}] {} vs {v}",
                k_dx[i]
            );
        }
    }
}

/// The stride-s output of a naive stride-1 NCDHW result: voxel (z, y, x)
/// of the strided output is (z·s, y·s, x·s) of the stride-1 one.
fn sample_ncdhw(full: &[f32], dims: [usize; 5], s: usize) -> (Vec<f32>, [usize; 5]) {
    let [n, o, d, h, w] = dims;
    let (sd, sh, sw) = ((d - 1) / s + 1, (h - 1) / s + 1, (w - 1) / s + 1);
    let mut out = Vec::with_capacity(n * o * sd * sh * sw);
    for no in 0..n * o {
        for z in 0..sd {
            for y in 0..sh {
                for x in 0..sw {
                    out.push(full[((no * d + z * s) * h + y * s) * w + x * s]);
                }
            }
        }
    }
    (out, [n, o, sd, sh, sw])
}

#[test]
fn strided_conv3d_matches_loops_forward_and_backward() {
    // PyTorch's Conv3d(c, o, k, stride=s, padding=k // 2): sizes ⌊(n − 1)/s⌋ + 1,
    // even and odd, a depth of 1
    for &(n, c, d, h, w, o, k, s) in &[
        (2, 3, 5, 6, 7, 4, 3, 2),
        (1, 16, 4, 9, 8, 8, 3, 2),
        (1, 2, 1, 7, 5, 3, 3, 2),
        (1, 2, 7, 7, 8, 2, 3, 3),
        (1, 3, 4, 6, 5, 2, 1, 2),
    ] {
        let tag = format!("{n}x{c}x{d}x{h}x{w} -> {o}, k {k}, stride {s}");
        let x = rand_tensor(&[n, c, d, h, w], 11);
        let wt = rand_tensor(&[o, c, k, k, k], 12);
        let b = rand_tensor(&[o], 13);
        let (xs, ws, bs) = (
            f32_data(&x).unwrap(),
            f32_data(&wt).unwrap(),
            f32_data(&b).unwrap(),
        );
        let conv = |xs: &[f32], wts: &[f32], bs: &[f32]| {
            sample_ncdhw(
                &naive_conv3d(xs, [n, c, d, h, w], wts, o, k, bs),
                [n, o, d, h, w],
                s,
            )
        };
        let (want, odims) = conv(&xs, &ws, &bs);
        let gy = rand_tensor(&odims, 14);
        let gys = f32_data(&gy).unwrap();
        let xv = Var::from_tensor(&to_depth_major(&x).unwrap()).unwrap();
        let wv = Var::from_tensor(&wt).unwrap();
        let y = conv3d_strided(xv.as_tensor(), wv.as_tensor(), Some(&b), s).unwrap();
        assert_eq!(from_depth_major(&y).unwrap().dims(), &odims, "{tag}");
        close(&ncdhw(&y), &want, 1e-5, &format!("{tag} forward"));
        let g = (&y * to_depth_major(&gy).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let dx = ncdhw(g.get(xv.as_tensor()).unwrap());
        let dw = f32_data(g.get(wv.as_tensor()).unwrap()).unwrap();
        // Σ gy·conv(x, w) is linear in x and in w: each gradient element is
        // the loops' forward of a one-hot input (weight), dotted with gy
        let dot = |y: &[f32]| -> f64 { y.iter().zip(&gys).map(|(a, b)| (a * b) as f64).sum() };
        for i in [0, xs.len() / 2, xs.len() - 1] {
            let mut e = vec![0f32; xs.len()];
            e[i] = 1.0;
            let v = dot(&conv(&e, &ws, &[]).0);
            assert!(
                (dx[i] as f64 - v).abs() < 1e-4,
                "{tag} dx[{i}] {} vs {v}",
                dx[i]
            );
        }
        for i in [0, ws.len() / 2, ws.len() - 1] {
            let mut e = vec![0f32; ws.len()];
            e[i] = 1.0;
            let v = dot(&conv(&xs, &e, &[]).0);
            assert!(
                (dw[i] as f64 - v).abs() < 1e-4,
                "{tag} dw[{i}] {} vs {v}",
                dw[i]
            );
        }
    }
    assert!(conv3d_strided(
        &rand_tensor(&[1, 1, 2, 2, 2], 1),
        &rand_tensor(&[1, 1, 1, 1, 1], 2),
        None,
        0
    )
    .is_err());
}

#[test]
fn conv3d_in_slabs_of_planes_gives_the_whole_volume_result() {
    let x = to_depth_major(&rand_tensor(&[2, 3, 11, 9, 10], 21)).unwrap();
    let wt = rand_tensor(&[5, 3, 3, 3, 3], 22);
    let b = rand_tensor(&[5], 23);
    let gy = rand_tensor(&[2, 11, 5, 9, 10], 24);
    let run = |slab: Option<usize>| {
        crate::ops::conv::SLAB_BYTES_OVERRIDE.with(|c| c.set(slab));
        let (xv, wv, bv) = (
            Var::from_tensor(&x).unwrap(),
            Var::from_tensor(&wt).unwrap(),
            Var::from_tensor(&b).unwrap(),
        );
        let y = conv3d(xv.as_tensor(), wv.as_tensor(), Some(bv.as_tensor())).unwrap();
        let g = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        crate::ops::conv::SLAB_BYTES_OVERRIDE.with(|c| c.set(None));
        [
            f32_data(&y).unwrap(),
            f32_data(g.get(xv.as_tensor()).unwrap()).unwrap(),
            f32_data(g.get(wv.as_tensor()).unwrap()).unwrap(),
            f32_data(g.get(bv.as_tensor()).unwrap()).unwrap(),
        ]
    };
    let whole = run(None);
    let want = conv3d_reference(&x, &wt, Some(&b)).unwrap();
    close(&whole[0], &f32_data(&want).unwrap(), 1e-5, "whole");
    // scratch for 1, 2 and 5 planes of taps (plus halo in the forward):
    // many slabs, the last one short, per sample
    let plane = 3 * 5 * 9 * 10 * 4;
    for planes in [3, 4, 7] {
        let slabs = run(Some(planes * plane));
        for (i, what) in ["forward", "dx", "dw", "db"].iter().enumerate() {
            close(
                &slabs[i],
                &whole[i],
                1e-5,
                &format!("{planes}-plane slabs: {what}"),
            );
        }
    }
}

#[test]
fn conv3d_results_do_not_depend_on_the_thread_count() {
    let x = rand_tensor(&[2, 6, 24, 10, 18], 5);
    let wt = rand_tensor(&[12, 24, 3, 3, 3], 6);
    let gy = rand_tensor(&[2, 6, 12, 10, 18], 7);
    let run = |threads: usize| {
        on_threads(threads, || {
            let (xv, wv) = (
                Var::from_tensor(&x).unwrap(),
                Var::from_tensor(&wt).unwrap(),
            );
            let y = conv3d(xv.as_tensor(), wv.as_tensor(), None).unwrap();
            let g = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            (
                f32_data(&y).unwrap(),
                f32_data(g.get(xv.as_tensor()).unwrap()).unwrap(),
                f32_data(g.get(wv.as_tensor()).unwrap()).unwrap(),
            )
        })
    };
    let one = run(1);
    for threads in [2, 3] {
        assert!(one == run(threads), "conv3d differs with {threads} threads");
    }
}

#[test]
fn transposed_conv3d_places_each_voxel_in_a_2x2x2_block() {
    let (n, c, d, h, w, o) = (2, 3, 3, 2, 4, 2);
    let x = rand_tensor(&[n, c, d, h, w], 8);
    let wt = rand_tensor(&[c, o, 2, 2, 2], 9);
    let b = rand_tensor(&[o], 10);
    let y = conv_transpose3d_2x(&to_depth_major(&x).unwrap(), &wt, &b).unwrap();
    assert_eq!(y.dims(), &[n, 2 * d, o, 2 * h, 2 * w]);
    let (xs, ws, bs, ys) = (
        f32_data(&x).unwrap(),
        f32_data(&wt).unwrap(),
        f32_data(&b).unwrap(),
        ncdhw(&y),
    );
    for ni in 0..n {
        for oi in 0..o {
            for z in 0..2 * d {
                for yy in 0..2 * h {
                    for xx in 0..2 * w {
                        let mut want = bs[oi];
                        for ci in 0..c {
                            let xi = (((ni * c + ci) * d + z / 2) * h + yy / 2) * w + xx / 2;
                            let wi = (((ci * o + oi) * 2 + z % 2) * 2 + yy % 2) * 2 + xx % 2;
                            want += xs[xi] * ws[wi];
                        }
                        let got = ys[(((ni * o + oi) * 2 * d + z) * 2 * h + yy) * 2 * w + xx];
                        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
                    }
                }
            }
        }
    }
}

#[test]
fn max_pool3d_takes_the_max_of_each_2x2x2_block_and_routes_the_gradient() {
    let (n, c, d, h, w) = (2, 3, 5, 4, 7);
    let x = rand_tensor(&[n, c, d, h, w], 11);
    let xv = Var::from_tensor(&to_depth_major(&x).unwrap()).unwrap();
    let y = max_pool3d_2x(xv.as_tensor()).unwrap();
    assert_eq!(y.dims(), &[n, 2, c, 2, 3]);
    let (xs, ys) = (f32_data(&x).unwrap(), ncdhw(&y));
    let g = y.sum_all().unwrap().backward().unwrap();
    let dx = ncdhw(g.get(xv.as_tensor()).unwrap());
    let mut want_dx = vec![0f32; xs.len()];
    for ni in 0..n {
        for ci in 0..c {
            for z in 0..2 {
                for yy in 0..2 {
                    for xx in 0..3 {
                        let mut best = (f32::NEG_INFINITY, 0);
                        for dz in 0..2 {
                            for dy in 0..2 {
                                for dx in 0..2 {
                                    let i = (((ni * c + ci) * d + 2 * z + dz) * h + 2 * yy + dy)
                                        * w
                                        + 2 * xx
                                        + dx;
                                    if xs[i] > best.0 {
                                        best = (xs[i], i);
                                    }
                                }
                            }
                        }
                        let got = ys[(((ni * c + ci) * 2 + z) * 2 + yy) * 3 + xx];
                        assert_eq!(got, best.0);
                        want_dx[best.1] = 1.0;
                    }
                }
            }
        }
    }
    assert_eq!(dx, want_dx);
}

#[test]
fn trilinear_upsampling_matches_the_separable_formula() {
    let (n, c, d, h, w) = (1, 2, 3, 4, 2);
    let x = rand_tensor(&[n, c, d, h, w], 12);
    let y = upsample_trilinear2x(&to_depth_major(&x).unwrap()).unwrap();
    assert_eq!(y.dims(), &[n, 2 * d, c, 2 * h, 2 * w]);
    let (xs, ys) = (f32_data(&x).unwrap(), ncdhw(&y));
    // align_corners = True: output i reads input i·(in − 1)/(out − 1)
    let taps = |i: usize, inp: usize| {
        let s = i as f64 * (inp as f64 - 1.0) / (2.0 * inp as f64 - 1.0);
        let i0 = s.floor() as usize;
        let i1 = (i0 + 1).min(inp - 1);
        (i0, i1, s - i0 as f64)
    };
    for ci in 0..c {
        for z in 0..2 * d {
            for yy in 0..2 * h {
                for xx in 0..2 * w {
                    let (z0, z1, fz) = taps(z, d);
                    let (y0, y1, fy) = taps(yy, h);
                    let (x0, x1, fx) = taps(xx, w);
                    let at =
                        |a: usize, b: usize, e: usize| xs[((ci * d + a) * h + b) * w + e] as f64;
                    let lerp = |a: f64, b: f64, f: f64| a * (1.0 - f) + b * f;
                    let plane = |a: usize| {
                        lerp(
                            lerp(at(a, y0, x0), at(a, y0, x1), fx),
                            lerp(at(a, y1, x0), at(a, y1, x1), fx),
                            fy,
                        )
                    };
                    let want = lerp(plane(z0), plane(z1), fz);
                    let got = ys[((ci * 2 * d + z) * 2 * h + yy) * 2 * w + xx] as f64;
                    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
                }
            }
        }
    }
}

#[test]
fn nearest_upsampling_and_padding_of_volumes() {
    let x = rand_tensor(&[1, 2, 3, 2, 2], 13);
    let y = upsample_nearest3d_2x(&to_depth_major(&x).unwrap()).unwrap();
    let (xs, ys) = (f32_data(&x).unwrap(), ncdhw(&y));
    for ci in 0..2 {
        for z in 0..6 {
            for yy in 0..4 {
                for xx in 0..4 {
                    let want = xs[((ci * 3 + z / 2) * 2 + yy / 2) * 2 + xx / 2];
                    assert_eq!(ys[((ci * 6 + z) * 4 + yy) * 4 + xx], want);
                }
            }
        }
    }
    let p = pad_to3(&to_depth_major(&x).unwrap(), 6, 3, 5).unwrap();
    assert_eq!(p.dims(), &[1, 6, 2, 3, 5]);
    // depth 3 → 6: one plane before, two after
    let first = p.narrow(1, 0, 1).unwrap().abs().unwrap().sum_all().unwrap();
    assert_eq!(first.to_scalar::<f32>().unwrap(), 0.0);
    assert!(pad_to3(&p, 5, 3, 5).is_err());
}
