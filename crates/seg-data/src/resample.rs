//! Plane resampling to a target spacing: separable linear interpolation
//! whose triangle filter widens with the reduction factor when shrinking
//! (antialiased, as PIL's and `image`'s triangle filter), pixel centres
//! aligned (`align_corners = false`). `image`'s resize is not used because
//! it clamps float pixels to [0, 1]. Label planes are resampled as one-hot
//! maps, then the arg-max (nnU-Net's way: a class keeps the area it covers,
//! where nearest-neighbour sampling keeps or drops whole rows by chance).

/// Above this many classes label planes are resampled by nearest neighbour
/// (one-hot resampling costs one pass per class).
pub const ONE_HOT_MAX_CLASSES: usize = 32;

/// Per output sample: the first source index and its weights (sum 1).
fn weights(n: usize, m: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = n as f64 / m as f64;
    let support = scale.max(1.0);
    (0..m)
        .map(|i| {
            let c = (i as f64 + 0.5) * scale - 0.5;
            let lo = ((c - support).floor().max(0.0) as usize).min(n - 1);
            let hi = ((c + support).ceil().max(0.0) as usize).min(n - 1);
            let mut ws: Vec<f64> = (lo..=hi)
                .map(|j| (1.0 - (j as f64 - c).abs() / support).max(0.0))
                .collect();
            let sum: f64 = ws.iter().sum();
            if sum > 0.0 {
                ws.iter_mut().for_each(|w| *w /= sum);
            } else {
                // outside every tap (cannot happen with support ≥ 1): nearest
                ws.iter_mut().for_each(|w| *w = 0.0);
                let j = (c.round().max(0.0) as usize).clamp(lo, hi);
                ws[j - lo] = 1.0;
            }
            (lo, ws.into_iter().map(|w| w as f32).collect())
        })
        .collect()
}

/// Resamples a row-major `h × w` plane to `nh × nw`. Equal sizes return a
/// copy.
pub fn resize_plane(src: &[f32], h: usize, w: usize, nh: usize, nw: usize) -> Vec<f32> {
    assert_eq!(src.len(), h * w, "plane size");
    if (h, w) == (nh, nw) {
        return src.to_vec();
    }
    if h == 0 || w == 0 || nh == 0 || nw == 0 {
        return vec![0.0; nh * nw];
    }
    // columns first (h × nw), then rows
    let wx = weights(w, nw);
    let mut tmp = vec![0f32; h * nw];
    for y in 0..h {
        let row = &src[y * w..(y + 1) * w];
        for (x, (lo, ws)) in wx.iter().enumerate() {
            tmp[y * nw + x] = ws.iter().enumerate().map(|(k, &v)| v * row[lo + k]).sum();
        }
    }
    let wy = weights(h, nh);
    let mut out = vec![0f32; nh * nw];
    for (y, (lo, ws)) in wy.iter().enumerate() {
        let dst = &mut out[y * nw..(y + 1) * nw];
        for (k, &v) in ws.iter().enumerate() {
            let s = &tmp[(lo + k) * nw..(lo + k + 1) * nw];
            for (d, &t) in dst.iter_mut().zip(s) {
                *d += v * t;
            }
        }
    }
    out
}

/// Resamples a plane of class indices (`< classes`) to `nh × nw`: each
/// class's indicator resampled linearly, then the most likely class; above
/// [`ONE_HOT_MAX_CLASSES`] classes by nearest neighbour.
pub fn resize_labels(
    src: &[u8],
    h: usize,
    w: usize,
    nh: usize,
    nw: usize,
    classes: usize,
) -> Vec<u8> {
    assert_eq!(src.len(), h * w, "plane size");
    if (h, w) == (nh, nw) {
        return src.to_vec();
    }
    if classes > ONE_HOT_MAX_CLASSES || h == 0 || w == 0 {
        return (0..nh * nw)
            .map(|i| {
                let (y, x) = (i / nw, i % nw);
                let sy = (((y as f64 + 0.5) * h as f64 / nh as f64) as usize).min(h - 1);
                let sx = (((x as f64 + 0.5) * w as f64 / nw as f64) as usize).min(w - 1);
                src[sy * w + sx]
            })
            .collect();
    }
    let present: Vec<u8> = {
        let mut seen = vec![false; classes.max(1)];
        for &c in src {
            if let Some(s) = seen.get_mut(c as usize) {
                *s = true;
            }
        }
        (0..seen.len() as u8)
            .filter(|&c| seen[c as usize])
            .collect()
    };
    let mut best = vec![f32::NEG_INFINITY; nh * nw];
    let mut out = vec![0u8; nh * nw];
    for &c in &present {
        let ind: Vec<f32> = src.iter().map(|&v| (v == c) as u8 as f32).collect();
        let r = resize_plane(&ind, h, w, nh, nw);
        for i in 0..nh * nw {
            if r[i] > best[i] {
                best[i] = r[i];
                out[i] = c;
            }
        }
    }
    out
}

/// The plane size at `target` spacing of an `h × w` plane with `spacing`
/// (row, column), at least 1 pixel.
pub fn resampled_size(h: usize, w: usize, spacing: [f64; 2], target: [f64; 2]) -> (usize, usize) {
    let f = |n: usize, s: f64, t: f64| {
        if s > 0.0 && t > 0.0 && s.is_finite() && t.is_finite() {
            ((n as f64 * s / t).round() as usize).max(1)
        } else {
            n
        }
    };
    (f(h, spacing[0], target[0]), f(w, spacing[1], target[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_stay_constant_and_equal_sizes_are_copies() {
        let src = vec![-3.5f32; 7 * 5];
        for (nh, nw) in [(3, 2), (14, 10), (7, 5), (20, 1)] {
            let r = resize_plane(&src, 7, 5, nh, nw);
            assert_eq!(r.len(), nh * nw);
            assert!(r.iter().all(|v| (v + 3.5).abs() < 1e-5), "{nh}x{nw}");
        }
        let ramp: Vec<f32> = (0..12).map(|i| i as f32).collect();
        assert_eq!(resize_plane(&ramp, 3, 4, 3, 4), ramp);
    }

    #[test]
    fn upsampling_interpolates_and_downsampling_averages() {
        // a ramp along x, 4 → 8: interior samples on the ramp at half steps
        let src: Vec<f32> = (0..4).map(|x| x as f32).collect();
        let up = resize_plane(&src, 1, 4, 1, 8);
        let expect = [0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0];
        for (a, b) in up.iter().zip(expect) {
            assert!((a - b).abs() < 1e-5, "{up:?}");
        }
        // 1 0 1 0 ... halved: a triangle over the pairs, not every other pixel
        let stripes: Vec<f32> = (0..8).map(|x| (x % 2) as f32).collect();
        let down = resize_plane(&stripes, 1, 8, 1, 4);
        assert!(down.iter().all(|v| (0.3..0.7).contains(v)), "{down:?}");
    }

    #[test]
    fn label_planes_keep_their_areas() {
        // a 4-pixel band of class 2 (x = 8..12) in 16×16, shrunk 4×: exactly column 2
        let mut src = vec![0u8; 16 * 16];
        for y in 0..16 {
            for x in 8..12 {
                src[y * 16 + x] = 2;
            }
        }
        src[0] = 1;
        let r = resize_labels(&src, 16, 16, 4, 4, 3);
        for y in 0..4 {
            assert_eq!(&r[y * 4..y * 4 + 4], &[0, 0, 2, 0], "{r:?}");
        }
        assert_eq!(resize_labels(&src, 16, 16, 16, 16, 3), src);
        // doubled: the band becomes x = 16..24
        let up = resize_labels(&src, 16, 16, 32, 32, 3);
        let row: Vec<u8> = up[20 * 32..21 * 32].to_vec();
        assert_eq!(row.iter().filter(|&&c| c == 2).count(), 8, "{row:?}");
        assert_eq!(row[16], 2);
        assert_eq!(row[23], 2);
        // many classes: nearest neighbour
        let many = resize_labels(&src, 16, 16, 32, 32, 40);
        assert_eq!(many[20 * 32 + 17], 2);
        assert_eq!(many[20 * 32 + 24], 0);
    }

    #[test]
    fn sizes_follow_the_spacing() {
        assert_eq!(resampled_size(100, 80, [1.5, 1.5], [1.0, 1.0]), (150, 120));
        assert_eq!(resampled_size(100, 80, [1.0, 1.0], [4.0, 4.0]), (25, 20));
        assert_eq!(resampled_size(3, 3, [1.0, 1.0], [100.0, 0.0]), (1, 3));
    }
}
