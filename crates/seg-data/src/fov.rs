//! The field of view of a fundus photograph, found from the image: the
//! bright disc of the retina on a dark background. A threshold between the
//! background level and the retina's (robust percentiles of the brightest
//! channel, so dark and JPEG-compressed images work), the largest connected
//! region, its holes filled (dark vessels, the fovea, the optic disc's
//! surroundings), and its edge smoothed by an opening. Used where no FOV mask
//! is given.

use crate::error::{Error, Result};
use crate::io::image2d::Mask;
use crate::volume::{Format, Volume};
use std::collections::VecDeque;

/// Where the threshold lies between the background level (0) and the
/// retina's (1).
const THRESHOLD_SHARE: f32 = 0.15;

/// The brightest channel of each pixel of a 2D image.
fn brightest(vol: &Volume) -> Result<(Vec<f32>, usize, usize)> {
    match (vol.format, vol.shape.as_slice()) {
        (Format::Image, [h, w, c]) if *c >= 1 => {
            let v = vol
                .values
                .chunks(*c)
                .map(|p| p.iter().take(3).copied().fold(f32::MIN, f32::max))
                .collect();
            Ok((v, *h, *w))
        }
        _ => Err(Error::Shape {
            what: "a fundus photograph",
            expected: "a 2D image",
            got: vol.shape.clone(),
        }),
    }
}

fn percentile(sorted: &[f32], q: f32) -> f32 {
    sorted[((sorted.len() - 1) as f32 * q).round() as usize]
}

/// The largest 4-connected region of `on`, as a 0/1 map.
fn largest_region(on: &[bool], h: usize, w: usize) -> Vec<u8> {
    let mut label = vec![0u32; h * w];
    let (mut best, mut best_n, mut next) = (0u32, 0usize, 0u32);
    let mut queue = VecDeque::new();
    for start in 0..h * w {
        if !on[start] || label[start] != 0 {
            continue;
        }
        next += 1;
        label[start] = next;
        queue.push_back(start);
        let mut n = 0;
        while let Some(i) = queue.pop_front() {
            n += 1;
            let (y, x) = (i / w, i % w);
            let mut visit = |j: usize| {
                if on[j] && label[j] == 0 {
                    label[j] = next;
                    queue.push_back(j);
                }
            };
            if y > 0 {
                visit(i - w);
            }
            if y + 1 < h {
                visit(i + w);
            }
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < w {
                visit(i + 1);
            }
        }
        if n > best_n {
            (best, best_n) = (next, n);
        }
    }
    label
        .iter()
        .map(|&l| (l == best && best > 0) as u8)
        .collect()
}

/// `region` with every hole (background not connected to the image border)
/// filled.
fn fill_holes(region: &mut [u8], h: usize, w: usize) {
    let outside: Vec<bool> = region.iter().map(|&r| r == 0).collect();
    let mut reached = vec![false; h * w];
    let mut queue = VecDeque::new();
    for i in 0..h * w {
        let (y, x) = (i / w, i % w);
        if (y == 0 || x == 0 || y + 1 == h || x + 1 == w) && outside[i] {
            reached[i] = true;
            queue.push_back(i);
        }
    }
    while let Some(i) = queue.pop_front() {
        let (y, x) = (i / w, i % w);
        for (ok, j) in [
            (y > 0, i.wrapping_sub(w)),
            (y + 1 < h, i + w),
            (x > 0, i.wrapping_sub(1)),
            (x + 1 < w, i + 1),
        ] {
            if ok && outside[j] && !reached[j] {
                reached[j] = true;
                queue.push_back(j);
            }
        }
    }
    for (r, &out) in region.iter_mut().zip(&reached) {
        if !out {
            *r = 1;
        }
    }
}

/// Erosion (`grow` false) or dilation with a disc of radius `r`, through a
/// distance transform of squared Euclidean distances (exact, separable).
fn morph(region: &[u8], h: usize, w: usize, r: f32, grow: bool) -> Vec<u8> {
    // distance to the nearest pixel of the other kind
    let target = |v: u8| if grow { v != 0 } else { v == 0 };
    let d = edt(&region.iter().map(|&v| target(v)).collect::<Vec<_>>(), h, w);
    let r2 = r * r;
    region
        .iter()
        .zip(&d)
        .map(|(&v, &dd)| {
            if grow {
                (v != 0 || dd <= r2) as u8
            } else {
                (v != 0 && dd > r2) as u8
            }
        })
        .collect()
}

/// Squared Euclidean distance of each pixel to the nearest `seed` pixel
/// (Felzenszwalb–Huttenlocher, rows then columns).
pub(crate) fn edt(seed: &[bool], h: usize, w: usize) -> Vec<f32> {
    const INF: f32 = 1e20;
    fn pass(f: &[f32], n: usize) -> Vec<f32> {
        let mut d = vec![0f32; n];
        let mut v = vec![0usize; n];
        let mut z = vec![0f32; n + 1];
        let mut k = 0;
        z[0] = -INF;
        z[1] = INF;
        for q in 1..n {
            loop {
                let p = v[k];
                let s = ((f[q] + (q * q) as f32) - (f[p] + (p * p) as f32))
                    / (2.0 * (q as f32 - p as f32));
                if s <= z[k] && k > 0 {
                    k -= 1;
                    continue;
                }
                if s <= z[k] {
                    // k == 0: replace
                    v[0] = q;
                    z[1] = INF;
                    break;
                }
                k += 1;
                v[k] = q;
                z[k] = s;
                z[k + 1] = INF;
                break;
            }
        }
        k = 0;
        for (q, dq) in d.iter_mut().enumerate() {
            while z[k + 1] < q as f32 {
                k += 1;
            }
            let p = v[k];
            *dq = (q as f32 - p as f32).powi(2) + f[p];
        }
        d
    }
    let mut g: Vec<f32> = seed.iter().map(|&s| if s { 0.0 } else { INF }).collect();
    for y in 0..h {
        let row = pass(&g[y * w..(y + 1) * w], w);
        g[y * w..(y + 1) * w].copy_from_slice(&row);
    }
    for x in 0..w {
        let col: Vec<f32> = (0..h).map(|y| g[y * w + x]).collect();
        let out = pass(&col, h);
        for y in 0..h {
            g[y * w + x] = out[y];
        }
    }
    g
}

/// The diameter (pixels) of the disc with the area of a 0/1 FOV map.
pub fn diameter(fov: &[u8]) -> f64 {
    let area = fov.iter().filter(|&&v| v != 0).count() as f64;
    (4.0 * area / std::f64::consts::PI).sqrt()
}

/// The field of view of a fundus photograph (see the module documentation).
/// An image without a bright region distinct from its background (a flat
/// image) is an [`Error::Empty`].
pub fn estimate_fov(vol: &Volume) -> Result<Mask> {
    let (v, h, w) = brightest(vol)?;
    let mut sorted: Vec<f32> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if sorted.is_empty() {
        return Err(Error::Empty {
            what: "the image's finite values (no field of view)",
        });
    }
    sorted.sort_by(f32::total_cmp);
    let (lo, hi) = (percentile(&sorted, 0.01), percentile(&sorted, 0.99));
    if hi <= lo {
        return Err(Error::Empty {
            what: "the field of view (a flat image)",
        });
    }
    let t = lo + THRESHOLD_SHARE * (hi - lo);
    let on: Vec<bool> = v.iter().map(|&x| x > t).collect();
    let mut region = largest_region(&on, h, w);
    fill_holes(&mut region, h, w);
    // an opening with a disc of 1 % of the image's side smooths the rim
    let r = (h.min(w) as f32 * 0.01).max(1.0);
    let opened = morph(&morph(&region, h, w, r, false), h, w, r, true);
    Ok(Mask {
        height: h,
        width: w,
        data: opened,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic fundus: a bright disc with dark "vessels", JPEG-like noise outside.
    fn disc(h: usize, w: usize, r: f32, level: f32) -> Volume {
        let (cy, cx) = (h as f32 / 2.0, w as f32 / 2.0);
        let mut values = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let inside = ((y as f32 - cy).powi(2) + (x as f32 - cx).powi(2)).sqrt() < r;
                let vessel = (x as isize - cx as isize).abs() < 2;
                let noise = ((x * 7 + y * 13) % 5) as f32;
                let v = if inside {
                    if vessel {
                        level * 0.3
                    } else {
                        level
                    }
                } else {
                    noise
                };
                values.extend([v, v * 0.5, v * 0.2]);
            }
        }
        Volume::from_image_values(h, w, 3, values)
    }

    #[test]
    fn a_disc_is_found_with_its_dark_lines_inside() {
        for level in [40.0, 200.0] {
            let v = disc(80, 100, 30.0, level);
            let m = estimate_fov(&v).unwrap();
            let area = m.data.iter().filter(|&&x| x != 0).count() as f32;
            let want = std::f32::consts::PI * 30.0 * 30.0;
            assert!(
                (area / want - 1.0).abs() < 0.05,
                "level {level}: area {area} vs {want}"
            );
            assert_eq!(
                m.data[40 * 100 + 50],
                1,
                "the vessel through the centre is inside"
            );
            assert_eq!(m.data[0], 0);
        }
        let flat = Volume::from_image_values(4, 4, 1, vec![7.0; 16]);
        assert!(estimate_fov(&flat).is_err());
    }

    #[test]
    fn the_distance_transform_is_exact() {
        let (h, w) = (5, 7);
        let mut seed = vec![false; h * w];
        seed[2 * w + 3] = true;
        seed[0] = true;
        let d = edt(&seed, h, w);
        for y in 0..h {
            for x in 0..w {
                let a = ((y as f32 - 2.0).powi(2) + (x as f32 - 3.0).powi(2))
                    .min((y * y + x * x) as f32);
                assert_eq!(d[y * w + x], a, "({y}, {x})");
            }
        }
    }
}
