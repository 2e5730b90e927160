//! Augmentation applied to image, label and FOV together: flips, rot90, free
//! rotation, scaling, elastic deformation and grid distortion (geometric,
//! one composed coordinate map: bilinear for the image, nearest for masks),
//! then gamma, brightness/contrast and gaussian noise on the image only.
//! Each transform has its own probability; all randomness comes from the
//! `rng` passed in, so results depend only on its seed.

mod preset;

pub use preset::{UnknownAugmentPreset, AUGMENT_PRESETS};

use crate::sample::Sample;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Which augmentations run, and how strongly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AugmentConfig {
    /// Probability of a horizontal flip, and (separately) of a vertical flip.
    pub flip_p: f32,
    /// Whether horizontal flips (columns reversed) may happen at all; the
    /// plan turns them off for data whose structures keep a side (left and
    /// right organs).
    pub flip_h: bool,
    /// Whether vertical flips (rows reversed) may happen at all.
    pub flip_v: bool,
    /// Probability of a rotation by a random multiple of 90°.
    pub rot90_p: f32,
    /// Probability of a free rotation by up to ±`rotate_max_deg`.
    pub rotate_p: f32,
    pub rotate_max_deg: f32,
    /// Probability of isotropic scaling by a factor in `scale_range`.
    pub scale_p: f32,
    pub scale_range: (f32, f32),
    /// Probability of elastic deformation: displacement fields of amplitude
    /// `elastic_alpha` pixels smoothed with a gaussian of `elastic_sigma` pixels.
    pub elastic_p: f32,
    pub elastic_alpha: f32,
    pub elastic_sigma: f32,
    /// Probability of grid distortion: `grid_steps` cells per axis, each
    /// stretched by up to ±`grid_limit`.
    pub grid_p: f32,
    pub grid_steps: usize,
    pub grid_limit: f32,
    /// Probability of gamma in `gamma_range` (on the image's value range).
    pub gamma_p: f32,
    pub gamma_range: (f32, f32),
    /// Probability of brightness (± `brightness` × value range) and contrast
    /// (× 1 ± `contrast`) changes.
    pub brightness_contrast_p: f32,
    pub brightness: f32,
    pub contrast: f32,
    /// Probability of additive gaussian noise of `noise_std` × value range.
    pub noise_p: f32,
    pub noise_std: f32,
    /// Probability of a gaussian blur of the image with a standard deviation
    /// drawn from `blur_sigma` pixels (nnU-Net: p 0.2, 0.5–1 px): the
    /// softness of another camera, of compression or of resampling.
    pub blur_p: f32,
    pub blur_sigma: (f32, f32),
    /// Probability of a simulated lower resolution: the image shrunk by a
    /// factor drawn from `lowres_range` (antialiased) and enlarged back
    /// (nnU-Net: p 0.25, 0.5–1).
    pub lowres_p: f32,
    pub lowres_range: (f32, f32),
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            flip_p: 0.5,
            flip_h: true,
            flip_v: true,
            rot90_p: 0.5,
            rotate_p: 0.3,
            rotate_max_deg: 20.0,
            scale_p: 0.2,
            scale_range: (0.9, 1.1),
            elastic_p: 0.0,
            elastic_alpha: 8.0,
            elastic_sigma: 4.0,
            grid_p: 0.0,
            grid_steps: 5,
            grid_limit: 0.2,
            gamma_p: 0.3,
            gamma_range: (0.8, 1.25),
            brightness_contrast_p: 0.3,
            brightness: 0.1,
            contrast: 0.1,
            noise_p: 0.2,
            noise_std: 0.02,
            blur_p: 0.0,
            blur_sigma: (0.5, 1.0),
            lowres_p: 0.0,
            lowres_range: (0.5, 1.0),
        }
    }
}

impl AugmentConfig {
    /// No augmentation at all.
    pub fn none() -> Self {
        Self {
            flip_p: 0.0,
            rot90_p: 0.0,
            rotate_p: 0.0,
            scale_p: 0.0,
            elastic_p: 0.0,
            grid_p: 0.0,
            gamma_p: 0.0,
            brightness_contrast_p: 0.0,
            noise_p: 0.0,
            blur_p: 0.0,
            lowres_p: 0.0,
            ..Self::default()
        }
    }
}

fn gauss(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f32 = 1.0 - rng.random::<f32>();
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// Applies an exact index permutation (flip / rot90) to every plane.
fn permute(
    s: &mut Sample,
    map: impl Fn(usize, usize) -> (usize, usize),
    out_h: usize,
    out_w: usize,
) {
    let (h, w) = (s.height, s.width);
    let remap_u8 = |m: &Vec<u8>| {
        let mut o = vec![0u8; out_h * out_w];
        for y in 0..out_h {
            for x in 0..out_w {
                let (sy, sx) = map(y, x);
                o[y * out_w + x] = m[sy * w + sx];
            }
        }
        o
    };
    let mut img = vec![0f32; s.channels * out_h * out_w];
    for c in 0..s.channels {
        let src = &s.image[c * h * w..(c + 1) * h * w];
        let dst = &mut img[c * out_h * out_w..(c + 1) * out_h * out_w];
        for y in 0..out_h {
            for x in 0..out_w {
                let (sy, sx) = map(y, x);
                dst[y * out_w + x] = src[sy * w + sx];
            }
        }
    }
    s.image = img;
    s.label = s.label.as_ref().map(remap_u8);
    s.fov = s.fov.as_ref().map(remap_u8);
    s.height = out_h;
    s.width = out_w;
}

/// Horizontal flip.
pub fn flip_h(s: &mut Sample) {
    let w = s.width;
    permute(s, |y, x| (y, w - 1 - x), s.height, s.width);
}

/// Vertical flip.
pub fn flip_v(s: &mut Sample) {
    let h = s.height;
    permute(s, |y, x| (h - 1 - y, x), s.height, s.width);
}

/// Rotation by 90° counter-clockwise, `k` times.
pub fn rot90(s: &mut Sample, k: usize) {
    for _ in 0..k % 4 {
        let (h, w) = (s.height, s.width);
        // output (y, x) of size (w, h) reads input (x, w - 1 - y)
        permute(s, |y, x| (x, w - 1 - y), w, h);
    }
}

/// 1D gaussian blur of a plane, separable, in place.
fn blur(field: &mut [f32], h: usize, w: usize, sigma: f32) {
    if sigma <= 0.0 {
        return;
    }
    let r = (3.0 * sigma).ceil() as isize;
    let k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let ks: f32 = k.iter().sum();
    let mut tmp = vec![0f32; field.len()];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0.0;
            for (j, kv) in k.iter().enumerate() {
                let xx = (x as isize + j as isize - r).clamp(0, w as isize - 1) as usize;
                acc += kv * field[y * w + xx];
            }
            tmp[y * w + x] = acc / ks;
        }
    }
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0.0;
            for (j, kv) in k.iter().enumerate() {
                let yy = (y as isize + j as isize - r).clamp(0, h as isize - 1) as usize;
                acc += kv * tmp[yy * w + x];
            }
            field[y * w + x] = acc / ks;
        }
    }
}

/// Piecewise-linear axis warp for grid distortion: output coordinate → source.
fn grid_axis(n: usize, steps: usize, limit: f32, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let steps = steps.max(1);
    let scales: Vec<f32> = (0..steps)
        .map(|_| 1.0 + limit * (2.0 * rng.random::<f32>() - 1.0))
        .collect();
    let total: f32 = scales.iter().sum();
    let cell = n as f32 / steps as f32;
    // knots: source positions of the cell boundaries in output space
    let mut knots = vec![0.0f32];
    for s in &scales {
        knots.push(knots.last().unwrap() + s * n as f32 / total);
    }
    (0..n)
        .map(|o| {
            let f = o as f32 / cell;
            let i = (f.floor() as usize).min(steps - 1);
            let t = f - i as f32;
            knots[i] + t * (knots[i + 1] - knots[i])
        })
        .collect()
}

/// Resamples every plane through `src(y, x) → (sy, sx)`: bilinear for the
/// image, nearest for label and FOV; outside the input the image is 0 and
/// the masks are 0.
fn resample(s: &mut Sample, sy: &[f32], sx: &[f32]) {
    let (h, w) = (s.height, s.width);
    let n = h * w;
    let mut img = vec![0f32; s.image.len()];
    for c in 0..s.channels {
        let src = &s.image[c * n..(c + 1) * n];
        for i in 0..n {
            let (y, x) = (sy[i], sx[i]);
            if y < -0.5 || x < -0.5 || y > h as f32 - 0.5 || x > w as f32 - 0.5 {
                continue;
            }
            let (yc, xc) = (y.clamp(0.0, (h - 1) as f32), x.clamp(0.0, (w - 1) as f32));
            let (y0, x0) = (yc.floor() as usize, xc.floor() as usize);
            let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
            let (fy, fx) = (yc - y0 as f32, xc - x0 as f32);
            img[c * n + i] = (1.0 - fy) * ((1.0 - fx) * src[y0 * w + x0] + fx * src[y0 * w + x1])
                + fy * ((1.0 - fx) * src[y1 * w + x0] + fx * src[y1 * w + x1]);
        }
    }
    let nearest = |m: &Vec<u8>| -> Vec<u8> {
        (0..n)
            .map(|i| {
                let (y, x) = (sy[i].round(), sx[i].round());
                if y < 0.0 || x < 0.0 || y >= h as f32 || x >= w as f32 {
                    0
                } else {
                    m[y as usize * w + x as usize]
                }
            })
            .collect()
    };
    s.label = s.label.as_ref().map(nearest);
    s.fov = Some(match &s.fov {
        Some(f) => nearest(f),
        // without a FOV, mark what came from inside the input
        None => nearest(&vec![1u8; n]),
    });
    s.image = img;
}

/// Value range of the image (for scale-aware photometric changes).
fn value_range(v: &[f32]) -> f32 {
    let (lo, hi) = v
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    if hi > lo {
        hi - lo
    } else {
        1.0
    }
}

/// Augments a sample in place.
pub fn augment(s: &mut Sample, cfg: &AugmentConfig, rng: &mut ChaCha8Rng) {
    // the draws happen whether or not a flip is allowed, so turning one off
    // leaves every other random choice as it was
    if rng.random::<f32>() < cfg.flip_p && cfg.flip_h {
        flip_h(s);
    }
    if rng.random::<f32>() < cfg.flip_p && cfg.flip_v {
        flip_v(s);
    }
    if rng.random::<f32>() < cfg.rot90_p {
        let k = 1 + (rng.random::<u32>() % 3) as usize;
        rot90(s, k);
    }
    let (h, w) = (s.height, s.width);
    let n = h * w;
    let do_rot = rng.random::<f32>() < cfg.rotate_p;
    let angle = (2.0 * rng.random::<f32>() - 1.0) * cfg.rotate_max_deg.to_radians();
    let do_scale = rng.random::<f32>() < cfg.scale_p;
    let scale = cfg.scale_range.0 + rng.random::<f32>() * (cfg.scale_range.1 - cfg.scale_range.0);
    let do_elastic = rng.random::<f32>() < cfg.elastic_p;
    let do_grid = rng.random::<f32>() < cfg.grid_p;
    if do_rot || do_scale || do_elastic || do_grid {
        let (mut sy, mut sx): (Vec<f32>, Vec<f32>) =
            (0..n).map(|i| ((i / w) as f32, (i % w) as f32)).unzip();
        if do_grid {
            let gy = grid_axis(h, cfg.grid_steps, cfg.grid_limit, rng);
            let gx = grid_axis(w, cfg.grid_steps, cfg.grid_limit, rng);
            for i in 0..n {
                sy[i] = gy[i / w];
                sx[i] = gx[i % w];
            }
        }
        if do_elastic {
            let mut dy: Vec<f32> = (0..n).map(|_| 2.0 * rng.random::<f32>() - 1.0).collect();
            let mut dx: Vec<f32> = (0..n).map(|_| 2.0 * rng.random::<f32>() - 1.0).collect();
            blur(&mut dy, h, w, cfg.elastic_sigma);
            blur(&mut dx, h, w, cfg.elastic_sigma);
            // normalise the smoothed field to the requested amplitude
            let peak = dy
                .iter()
                .chain(dx.iter())
                .fold(1e-6f32, |m, v| m.max(v.abs()));
            for i in 0..n {
                sy[i] += cfg.elastic_alpha * dy[i] / peak;
                sx[i] += cfg.elastic_alpha * dx[i] / peak;
            }
        }
        if do_rot || do_scale {
            let (a, z) = (
                if do_rot { angle } else { 0.0 },
                if do_scale { scale } else { 1.0 },
            );
            let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
            let (ca, sa) = (a.cos(), a.sin());
            for i in 0..n {
                let (y, x) = (sy[i] - cy, sx[i] - cx);
                // inverse map: rotate by -a and divide by the scale
                sy[i] = cy + (ca * y - sa * x) / z;
                sx[i] = cx + (sa * y + ca * x) / z;
            }
        }
        resample(s, &sy, &sx);
    }
    // blur and lower resolution draw only when enabled, so configurations
    // without them keep every random choice they had before they existed
    if cfg.blur_p > 0.0 && rng.random::<f32>() < cfg.blur_p {
        let (lo, hi) = cfg.blur_sigma;
        let sigma = lo + rng.random::<f32>() * (hi - lo);
        for c in 0..s.channels {
            blur(&mut s.image[c * n..(c + 1) * n], h, w, sigma);
        }
    }
    if cfg.lowres_p > 0.0 && rng.random::<f32>() < cfg.lowres_p {
        let (lo, hi) = cfg.lowres_range;
        let z = lo + rng.random::<f32>() * (hi - lo);
        let (sh, sw) = (
            ((h as f32 * z).round() as usize).max(1),
            ((w as f32 * z).round() as usize).max(1),
        );
        if (sh, sw) != (h, w) {
            for c in 0..s.channels {
                let plane = &mut s.image[c * n..(c + 1) * n];
                let small = crate::resample::resize_plane(plane, h, w, sh, sw);
                plane.copy_from_slice(&crate::resample::resize_plane(&small, sh, sw, h, w));
            }
        }
    }
    let range = value_range(&s.image);
    if rng.random::<f32>() < cfg.gamma_p {
        let g = cfg.gamma_range.0 + rng.random::<f32>() * (cfg.gamma_range.1 - cfg.gamma_range.0);
        for c in 0..s.channels {
            let plane = &mut s.image[c * n..(c + 1) * n];
            let (lo, hi) = plane
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                    (a.min(x), b.max(x))
                });
            if hi > lo {
                for v in plane.iter_mut() {
                    *v = lo + (hi - lo) * ((*v - lo) / (hi - lo)).powf(g);
                }
            }
        }
    }
    if rng.random::<f32>() < cfg.brightness_contrast_p {
        let b = (2.0 * rng.random::<f32>() - 1.0) * cfg.brightness * range;
        let k = 1.0 + (2.0 * rng.random::<f32>() - 1.0) * cfg.contrast;
        let mean = s.image.iter().sum::<f32>() / s.image.len().max(1) as f32;
        for v in s.image.iter_mut() {
            *v = (*v - mean) * k + mean + b;
        }
    }
    if rng.random::<f32>() < cfg.noise_p {
        let sd = cfg.noise_std * range;
        for v in s.image.iter_mut() {
            *v += sd * gauss(rng);
        }
    }
}

#[cfg(test)]
mod tests;
