//! A built-in synthetic retina-like vessel dataset: branching vessel trees of
//! varying width and contrast inside a circular field of view, uneven
//! illumination and noise, with exact labels. Any size; deterministic per
//! seed and index. It is the default training data when a user names none,
//! and the data most tests use.

use crate::sample::Sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Parameters of the synthetic set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyntheticConfig {
    /// Number of images.
    pub count: usize,
    /// Height and width in pixels.
    pub size: usize,
    /// Seed: the same seed gives the same images.
    pub seed: u64,
    /// Standard deviation of the additive noise (image values are in [0, 1]).
    pub noise: f32,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            count: 24,
            size: 96,
            seed: 0,
            noise: 0.02,
        }
    }
}

/// One vessel segment to draw.
struct Segment {
    a: (f32, f32),
    b: (f32, f32),
    width: f32,
    contrast: f32,
}

fn gauss(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f32 = 1.0 - rng.random::<f32>();
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

#[allow(clippy::too_many_arguments)]
fn grow(
    rng: &mut ChaCha8Rng,
    segs: &mut Vec<Segment>,
    mut p: (f32, f32),
    mut angle: f32,
    mut width: f32,
    contrast: f32,
    depth: usize,
    s: f32,
    inside: &dyn Fn((f32, f32)) -> bool,
) {
    let step = s / 48.0;
    let mut steps = 0;
    while width >= 0.6 && inside(p) && steps < 400 {
        angle += 0.18 * gauss(rng);
        let q = (p.0 + step * angle.cos(), p.1 + step * angle.sin());
        segs.push(Segment {
            a: p,
            b: q,
            width,
            contrast,
        });
        p = q;
        steps += 1;
        width *= 0.995;
        if depth < 5 && steps > 4 && rng.random::<f32>() < 0.08 {
            let spread = 0.35 + 0.5 * rng.random::<f32>();
            let side = if rng.random::<bool>() { 1.0 } else { -1.0 };
            let child_w = width * (0.55 + 0.25 * rng.random::<f32>());
            grow(
                rng,
                segs,
                p,
                angle + side * spread,
                child_w,
                contrast * 0.9,
                depth + 1,
                s,
                inside,
            );
            width *= 0.85;
            angle -= side * 0.15;
        }
    }
}

/// Generates image `index` of the set: RGB in [0, 1], label, FOV.
pub fn generate(cfg: &SyntheticConfig, index: usize) -> Sample {
    let s = cfg.size.max(8);
    let sf = s as f32;
    let mut rng = ChaCha8Rng::seed_from_u64(
        cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (index as u64)
                .wrapping_add(1)
                .wrapping_mul(0xD1B5_4A32_D192_ED03),
    );
    let (cx, cy, r) = (sf / 2.0, sf / 2.0, sf * 0.46);
    let inside = move |p: (f32, f32)| (p.0 - cx).powi(2) + (p.1 - cy).powi(2) < r * r;
    // optic disc on the left or right, vessel arcades leaving it
    let disc_x = if rng.random::<bool>() {
        cx - 0.55 * r
    } else {
        cx + 0.55 * r
    };
    let disc = (
        disc_x + 0.05 * r * gauss(&mut rng),
        cy + 0.05 * r * gauss(&mut rng),
    );
    let toward_centre = if disc.0 < cx {
        0.0f32
    } else {
        std::f32::consts::PI
    };
    let mut segs = Vec::new();
    let trees = 3 + (rng.random::<u32>() % 3) as usize;
    for t in 0..trees {
        let base = toward_centre + (t as f32 / trees as f32 - 0.5) * 2.6 + 0.2 * gauss(&mut rng);
        let width = sf / 70.0 * (1.0 + 0.6 * rng.random::<f32>()) + 0.8;
        let contrast = 0.3 + 0.2 * rng.random::<f32>();
        grow(
            &mut rng, &mut segs, disc, base, width, contrast, 0, sf, &inside,
        );
    }
    // illumination: a tilted plane and a bright disc
    let (gx, gy) = (0.25 * gauss(&mut rng), 0.25 * gauss(&mut rng));
    let base_level = 0.45 + 0.1 * rng.random::<f32>();
    let n = s * s;
    let mut label = vec![0u8; n];
    let mut fov = vec![0u8; n];
    let mut darkening = vec![0f32; n];
    for seg in &segs {
        let half = seg.width / 2.0;
        let reach = half + 1.5;
        let (x0, x1) = (seg.a.0.min(seg.b.0) - reach, seg.a.0.max(seg.b.0) + reach);
        let (y0, y1) = (seg.a.1.min(seg.b.1) - reach, seg.a.1.max(seg.b.1) + reach);
        let (dx, dy) = (seg.b.0 - seg.a.0, seg.b.1 - seg.a.1);
        let len2 = (dx * dx + dy * dy).max(1e-6);
        for y in (y0.floor().max(0.0) as usize)..=(y1.ceil().min(sf - 1.0) as usize) {
            for x in (x0.floor().max(0.0) as usize)..=(x1.ceil().min(sf - 1.0) as usize) {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                let t = (((px - seg.a.0) * dx + (py - seg.a.1) * dy) / len2).clamp(0.0, 1.0);
                let (qx, qy) = (seg.a.0 + t * dx, seg.a.1 + t * dy);
                let d = ((px - qx).powi(2) + (py - qy).powi(2)).sqrt();
                let i = y * s + x;
                if d <= half {
                    label[i] = 1;
                }
                // smooth (gaussian-like) cross-section: darkest on the centre line
                let profile = (-(d / half.max(0.5)).powi(2) * 0.7).exp();
                darkening[i] = darkening[i].max(seg.contrast * profile);
            }
        }
    }
    let mut image = vec![0f32; 3 * n];
    for y in 0..s {
        for x in 0..s {
            let i = y * s + x;
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            if !inside((px, py)) {
                label[i] = 0;
                for c in 0..3 {
                    image[c * n + i] = (0.01 + 0.01 * gauss(&mut rng)).max(0.0);
                }
                continue;
            }
            fov[i] = 1;
            let (u, v) = ((px - cx) / r, (py - cy) / r);
            let vignette = 1.0 - 0.35 * (u * u + v * v);
            let disc_glow =
                0.35 * (-((px - disc.0).powi(2) + (py - disc.1).powi(2)) / (0.02 * sf * sf)).exp();
            let bg = (base_level + gx * u * 0.3 + gy * v * 0.3) * vignette + disc_glow;
            let g = bg * (1.0 - darkening[i]) + cfg.noise * gauss(&mut rng);
            image[i] = (1.6 * g + 0.1).clamp(0.0, 1.0); // red: bright, less vessel contrast
            image[n + i] = g.clamp(0.0, 1.0); // green: vessels contrast best
            image[2 * n + i] = (0.35 * g).clamp(0.0, 1.0); // blue: dim
        }
    }
    Sample {
        id: format!("synthetic_{index:04}"),
        image,
        channels: 3,
        height: s,
        width: s,
        label: Some(label),
        fov: Some(fov),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_per_seed_and_index() {
        let cfg = SyntheticConfig {
            size: 64,
            ..Default::default()
        };
        assert_eq!(generate(&cfg, 3), generate(&cfg, 3));
        assert_ne!(generate(&cfg, 3).label, generate(&cfg, 4).label);
        let other = SyntheticConfig {
            seed: 1,
            ..cfg.clone()
        };
        assert_ne!(generate(&cfg, 3).label, generate(&other, 3).label);
    }

    #[test]
    fn looks_like_a_retina() {
        for size in [48, 128] {
            let cfg = SyntheticConfig {
                size,
                ..Default::default()
            };
            for i in 0..4 {
                let s = generate(&cfg, i);
                s.validate().unwrap();
                let n = (size * size) as f32;
                let label = s.label.as_ref().unwrap();
                let fov = s.fov.as_ref().unwrap();
                let fg = label.iter().filter(|&&v| v == 1).count() as f32 / n;
                let inside = fov.iter().filter(|&&v| v == 1).count() as f32 / n;
                assert!(
                    (0.03..0.35).contains(&fg),
                    "vessel fraction {fg} at size {size}"
                );
                assert!((0.55..0.75).contains(&inside), "FOV fraction {inside}");
                // labels lie inside the FOV
                assert!(label.iter().zip(fov).all(|(&l, &f)| l <= f));
                // vessels are darker than the background around them, in green
                let g = s.plane(1);
                let (mut diff, mut count) = (0.0f32, 0);
                for y in 4..size - 4 {
                    for x in 4..size - 4 {
                        let i = y * size + x;
                        if label[i] != 1 {
                            continue;
                        }
                        let near: Vec<f32> = (y - 4..=y + 4)
                            .flat_map(|yy| (x - 4..=x + 4).map(move |xx| yy * size + xx))
                            .filter(|&j| label[j] == 0 && fov[j] == 1)
                            .map(|j| g[j])
                            .collect();
                        if !near.is_empty() {
                            diff += near.iter().sum::<f32>() / near.len() as f32 - g[i];
                            count += 1;
                        }
                    }
                }
                let local = diff / count as f32;
                assert!(
                    local > 0.05,
                    "vessels only {local} darker than their surroundings"
                );
            }
        }
    }
}
