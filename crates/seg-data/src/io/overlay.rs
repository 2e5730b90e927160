//! Overlay pictures, so people can look at a segmentation before they trust
//! it: a 2D image with each class tinted in its colour and outlined, or for
//! a volume a montage of planes through the structures. Written as RGB PNG
//! (atomically).

use crate::error::{Error, Result};
use std::path::Path;

/// Class colours (class 1 takes the first); repeats past the end.
pub const PALETTE: [[u8; 3]; 12] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 212],
    [0, 128, 128],
    [170, 110, 40],
];

/// Opacity of the tint inside a structure (its outline is opaque).
const ALPHA: f32 = 0.4;

/// The colour of class `k` (≥ 1).
pub fn colour(k: u8) -> [u8; 3] {
    PALETTE[(k as usize + PALETTE.len() - 1) % PALETTE.len()]
}

/// Greyscale display levels of `values`: the 0.5 / 99.5 percentiles of the
/// finite values mapped to 0 / 255 (robust to outliers; CT and MR alike).
pub fn display_levels(values: &[f32]) -> Vec<u8> {
    let mut v: Vec<f32> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return vec![0; values.len()];
    }
    let step = (v.len() / 100_000).max(1);
    v = v.into_iter().step_by(step).collect();
    v.sort_by(f32::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let (lo, hi) = (q(0.005), q(0.995));
    let span = if hi > lo { hi - lo } else { 1.0 };
    values
        .iter()
        .map(|&x| {
            if x.is_finite() {
                (((x - lo) / span).clamp(0.0, 1.0) * 255.0).round() as u8
            } else {
                0
            }
        })
        .collect()
}

/// An RGB picture (`h × w × 3`) of `rgb` with `classes` (row-major, 0 =
/// background) tinted and outlined.
pub fn blend(rgb: &[u8], classes: &[u8], h: usize, w: usize) -> Vec<u8> {
    let mut out = rgb.to_vec();
    for y in 0..h {
        for x in 0..w {
            let c = classes[y * w + x];
            if c == 0 {
                continue;
            }
            let edge = [(0isize, 1isize), (0, -1), (1, 0), (-1, 0)]
                .iter()
                .any(|&(dy, dx)| {
                    let (yy, xx) = (y as isize + dy, x as isize + dx);
                    yy < 0
                        || xx < 0
                        || yy >= h as isize
                        || xx >= w as isize
                        || classes[yy as usize * w + xx as usize] != c
                });
            let col = colour(c);
            let a = if edge { 1.0 } else { ALPHA };
            for ch in 0..3 {
                let p = &mut out[(y * w + x) * 3 + ch];
                *p = ((1.0 - a) * *p as f32 + a * col[ch] as f32).round() as u8;
            }
        }
    }
    out
}

/// Grey levels as RGB.
pub fn grey_rgb(grey: &[u8]) -> Vec<u8> {
    grey.iter().flat_map(|&g| [g, g, g]).collect()
}

/// A montage of planes of a volume: `dims` `[nx, ny, nz]`, `values` and
/// `classes` in NIfTI order (x fastest); planes cut perpendicular to
/// `axis`, up to `tiles` of them evenly spread over the extent of the
/// structures (over the whole volume when there are none), each shown with
/// its first in-plane axis across and the second upwards (radiological
/// axial view for RAS volumes along z), enlarged to at least `min_side`
/// pixels. Returns `(rgb, height, width)`.
pub fn montage(
    values: &[f32],
    classes: &[u8],
    dims: [usize; 3],
    axis: usize,
    tiles: usize,
    min_side: usize,
) -> (Vec<u8>, usize, usize) {
    let [nx, ny, _] = dims;
    let idx = |p: [usize; 3]| p[0] + nx * (p[1] + ny * p[2]);
    let (a, b) = match axis {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    let n = dims[axis];
    let with_fg: Vec<usize> = (0..n)
        .filter(|&k| {
            (0..dims[a]).any(|i| {
                (0..dims[b]).any(|j| {
                    let mut p = [0; 3];
                    p[axis] = k;
                    p[a] = i;
                    p[b] = j;
                    classes[idx(p)] != 0
                })
            })
        })
        .collect();
    let (first, last) = match (with_fg.first(), with_fg.last()) {
        (Some(&f), Some(&l)) => (f, l),
        _ => (0, n.saturating_sub(1)),
    };
    let count = tiles.clamp(1, last - first + 1);
    let picks: Vec<usize> = (0..count)
        .map(|t| first + ((t as f64 + 0.5) * (last - first + 1) as f64 / count as f64) as usize)
        .map(|k| k.min(last))
        .collect();
    let grey = display_levels(values);
    let (pw, ph) = (dims[a], dims[b]);
    let scale = (min_side / pw.max(ph).max(1)).max(1);
    let (tw, th) = (pw * scale, ph * scale);
    let cols = (count as f64).sqrt().ceil() as usize;
    let rows = count.div_ceil(cols);
    let (w, h) = (cols * tw, rows * th);
    let mut out = vec![0u8; w * h * 3];
    for (t, &k) in picks.iter().enumerate() {
        let mut g = vec![0u8; pw * ph];
        let mut c = vec![0u8; pw * ph];
        for r in 0..ph {
            for q in 0..pw {
                let mut p = [0; 3];
                p[axis] = k;
                p[a] = q;
                p[b] = ph - 1 - r;
                g[r * pw + q] = grey[idx(p)];
                c[r * pw + q] = classes[idx(p)];
            }
        }
        // enlarge before outlining, so outlines stay one pixel wide
        let big = |v: &[u8]| -> Vec<u8> {
            (0..th * tw)
                .map(|i| v[(i / tw / scale) * pw + (i % tw) / scale])
                .collect()
        };
        let tile = blend(&grey_rgb(&big(&g)), &big(&c), th, tw);
        let (ty, tx) = (t / cols, t % cols);
        for y in 0..th {
            let dst = ((ty * th + y) * w + tx * tw) * 3;
            out[dst..dst + tw * 3].copy_from_slice(&tile[y * tw * 3..(y + 1) * tw * 3]);
        }
    }
    (out, h, w)
}

/// Writes an RGB picture as PNG, atomically.
pub fn write_rgb_png(path: &Path, rgb: &[u8], h: usize, w: usize) -> Result<()> {
    if rgb.len() != h * w * 3 {
        return Err(Error::ShapeMismatch {
            what: format!("overlay {}", path.display()),
            a: vec![rgb.len()],
            b: vec![h, w, 3],
        });
    }
    super::image2d::encode_png(path, w, h, rgb, image::ExtendedColorType::Rgb8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structures_are_tinted_and_outlined_and_background_kept() {
        let (h, w) = (5, 5);
        let grey = grey_rgb(&[100; 25]);
        let mut cls = vec![0u8; 25];
        for y in 1..4 {
            for x in 1..4 {
                cls[y * w + x] = 2;
            }
        }
        let out = blend(&grey, &cls, h, w);
        assert_eq!(&out[0..3], &[100, 100, 100]);
        // the outline takes the colour, the centre a tint between
        assert_eq!(&out[(w + 1) * 3..(w + 1) * 3 + 3], &colour(2));
        let centre = &out[(2 * w + 2) * 3..(2 * w + 2) * 3 + 3];
        assert_ne!(centre, &colour(2)[..]);
        assert_ne!(centre, &[100, 100, 100]);
    }

    #[test]
    fn a_montage_shows_the_planes_with_structures() {
        // 4 × 3 × 10 volume, class 1 only in planes z = 6 and 7
        let dims = [4, 3, 10];
        let n = 120;
        let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mut classes = vec![0u8; n];
        for z in 6..8 {
            classes[1 + 4 * (1 + 3 * z)] = 1;
        }
        let (rgb, h, w) = montage(&values, &classes, dims, 2, 9, 8);
        // two planes hold structures: two tiles, each 4 × 3 enlarged 2×
        assert_eq!((h, w), (6, 16));
        assert_eq!(rgb.len(), h * w * 3);
        let red = colour(1);
        let coloured = rgb.chunks(3).filter(|p| *p == red).count();
        assert_eq!(coloured, 2 * 4, "{rgb:?}");
        let levels = display_levels(&[0.0, 1.0, f32::NAN, 2.0]);
        assert_eq!(levels, vec![0, 128, 0, 255]);
    }
}
