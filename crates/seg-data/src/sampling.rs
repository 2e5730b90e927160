//! Patch sampling and batch assembly. Random patches with a
//! foreground-oversampling ratio and an inside-FOV option; overlapping grid
//! patches covering a whole image; batches assembled in parallel (rayon) into
//! NCHW f32 buffers, each patch with its own RNG derived from (seed, batch,
//! position), so the result does not depend on the thread count.

use crate::augment::{augment, AugmentConfig};
use crate::error::{Error, Result};
use crate::sample::Sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// How random training patches are drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PatchSampler {
    /// Patch height and width.
    pub size: usize,
    /// Probability that a patch is centred on a foreground (label) pixel.
    pub foreground_ratio: f32,
    /// Centre patches inside the field of view only.
    pub inside_fov: bool,
}

impl Default for PatchSampler {
    fn default() -> Self {
        Self {
            size: 64,
            foreground_ratio: 0.5,
            inside_fov: true,
        }
    }
}

/// Crops `size × size` at (y0, x0), padding with 0 (and FOV 0) outside.
pub fn crop(s: &Sample, y0: isize, x0: isize, size: usize) -> Sample {
    let (h, w) = (s.height as isize, s.width as isize);
    let n = size * size;
    let inside = |y: isize, x: isize| y >= 0 && x >= 0 && y < h && x < w;
    let mut image = vec![0f32; s.channels * n];
    let mut label = s.label.as_ref().map(|_| vec![0u8; n]);
    let mut fov = vec![0u8; n];
    for py in 0..size {
        for px in 0..size {
            let (y, x) = (y0 + py as isize, x0 + px as isize);
            if !inside(y, x) {
                continue;
            }
            let src = (y * w + x) as usize;
            let dst = py * size + px;
            for c in 0..s.channels {
                image[c * n + dst] = s.image[c * s.height * s.width + src];
            }
            if let (Some(l), Some(sl)) = (label.as_mut(), s.label.as_ref()) {
                l[dst] = sl[src];
            }
            fov[dst] = s.fov.as_ref().map_or(1, |f| f[src]);
        }
    }
    Sample {
        id: s.id.clone(),
        image,
        channels: s.channels,
        height: size,
        width: size,
        label,
        fov: Some(fov),
    }
}

impl PatchSampler {
    /// Draws one patch from `s`: centred on a foreground (any non-zero
    /// label) pixel with probability `foreground_ratio`, else anywhere.
    pub fn sample(&self, s: &Sample, rng: &mut ChaCha8Rng) -> Sample {
        let want_fg = rng.random::<f32>() < self.foreground_ratio;
        self.sample_centred(s, want_fg.then_some(Target::Foreground), rng)
    }

    /// Draws one patch from `s` centred on a pixel of `target` (inside the
    /// FOV when `inside_fov`), or anywhere when `target` is `None` or `s` has
    /// no such pixel.
    pub fn sample_centred(
        &self,
        s: &Sample,
        target: Option<Target>,
        rng: &mut ChaCha8Rng,
    ) -> Sample {
        let n = s.height * s.width;
        let ok = |i: usize| -> bool {
            let in_fov = !self.inside_fov || s.fov.as_ref().is_none_or(|f| f[i] != 0);
            let fg = match target {
                None => true,
                Some(Target::Foreground) => s.label.as_ref().is_some_and(|l| l[i] != 0),
                Some(Target::Class(c)) => s.label.as_ref().is_some_and(|l| l[i] == c),
            };
            in_fov && fg
        };
        // rejection sampling, then a scan from a random start
        let mut centre = None;
        for _ in 0..64 {
            let i = rng.random_range(0..n);
            if ok(i) {
                centre = Some(i);
                break;
            }
        }
        let centre = centre.or_else(|| {
            let start = rng.random_range(0..n);
            (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
        });
        let i = centre.unwrap_or_else(|| rng.random_range(0..n));
        let (cy, cx) = ((i / s.width) as isize, (i % s.width) as isize);
        let half = (self.size / 2) as isize;
        crop(s, cy - half, cx - half, self.size)
    }
}

/// What a patch is centred on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Any non-zero label.
    Foreground,
    /// This class index.
    Class(u8),
}

/// For each foreground class (1..K), the samples that contain it: the
/// index class-balanced sampling draws from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClassIndex {
    /// `by_class[k - 1]`: samples holding class `k`.
    pub by_class: Vec<Vec<usize>>,
}

impl ClassIndex {
    /// Indexes `samples` for classes 1..`classes`.
    pub fn new(samples: &[Sample], classes: usize) -> Self {
        let per_sample: Vec<Vec<bool>> = samples
            .par_iter()
            .map(|s| {
                let mut has = vec![false; classes];
                if let Some(l) = &s.label {
                    for &v in l {
                        if (v as usize) < classes {
                            has[v as usize] = true;
                        }
                    }
                }
                has
            })
            .collect();
        let by_class = (1..classes)
            .map(|k| {
                per_sample
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| h[k])
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect();
        Self { by_class }
    }
}

/// Like [`random_batch`], with class-balanced foreground: a patch is centred
/// on a foreground class with probability `sampler.foreground_ratio`, the
/// class drawn uniformly among those present (so rare structures are seen
/// as often as large ones), from a sample that holds it.
pub fn random_batch_balanced(
    images: &[Sample],
    index: &ClassIndex,
    sampler: &PatchSampler,
    aug: &AugmentConfig,
    batch_size: usize,
    seed: u64,
    batch_index: u64,
) -> Result<Batch> {
    let items: Vec<usize> = (0..batch_size).collect();
    random_batch_balanced_items(images, index, sampler, aug, &items, seed, batch_index)
}

/// The patches `items` (indices into the batch) of
/// [`random_batch_balanced`]'s batch: each patch depends only on (seed,
/// batch index, its index), so a data-parallel rank draws its share alone.
pub fn random_batch_balanced_items(
    images: &[Sample],
    index: &ClassIndex,
    sampler: &PatchSampler,
    aug: &AugmentConfig,
    items: &[usize],
    seed: u64,
    batch_index: u64,
) -> Result<Batch> {
    if images.is_empty() {
        return Err(Error::Empty {
            what: "images to sample patches from",
        });
    }
    let present: Vec<usize> = (0..index.by_class.len())
        .filter(|&k| !index.by_class[k].is_empty())
        .collect();
    let patches: Vec<Sample> = items
        .par_iter()
        .map(|&k| {
            let mut rng = patch_rng(seed, batch_index, k as u64);
            let want_fg = rng.random::<f32>() < sampler.foreground_ratio;
            let mut p = if want_fg && !present.is_empty() {
                let class = present[rng.random_range(0..present.len())];
                let list = &index.by_class[class];
                let img = &images[list[rng.random_range(0..list.len())]];
                sampler.sample_centred(img, Some(Target::Class(class as u8 + 1)), &mut rng)
            } else {
                let img = &images[rng.random_range(0..images.len())];
                sampler.sample_centred(img, None, &mut rng)
            };
            augment(&mut p, aug, &mut rng);
            p
        })
        .collect();
    stack(&patches)
}

/// Top-left corners of overlapping `size` patches covering an `h × w`
/// image with the given fractional overlap; the last row/column is aligned to
/// the border (patches may extend past an image smaller than `size`).
pub fn grid_positions(h: usize, w: usize, size: usize, overlap: f32) -> Vec<(usize, usize)> {
    let step = ((size as f32 * (1.0 - overlap.clamp(0.0, 0.95))).round() as usize).max(1);
    let axis = |n: usize| -> Vec<usize> {
        if n <= size {
            return vec![0];
        }
        let mut v: Vec<usize> = (0..=n - size).step_by(step).collect();
        if *v.last().unwrap() != n - size {
            v.push(n - size);
        }
        v
    };
    let (ys, xs) = (axis(h), axis(w));
    ys.iter()
        .flat_map(|&y| xs.iter().map(move |&x| (y, x)))
        .collect()
}

/// A batch of patches as NCHW buffers.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub n: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// N × C × H × W.
    pub images: Vec<f32>,
    /// N × 1 × H × W, values {0, 1}.
    pub labels: Vec<f32>,
    /// N × 1 × H × W, values {0, 1}.
    pub fov: Vec<f32>,
}

impl Batch {
    /// The three buffers as tensors on `device`: images, labels, FOV.
    pub fn to_tensors(
        &self,
        device: &seg_core::Device,
    ) -> Result<(seg_core::Tensor, seg_core::Tensor, seg_core::Tensor)> {
        use seg_core::Tensor;
        let (n, c, h, w) = (self.n, self.channels, self.height, self.width);
        Ok((
            Tensor::from_slice(&self.images, (n, c, h, w), device)?,
            Tensor::from_slice(&self.labels, (n, 1, h, w), device)?,
            Tensor::from_slice(&self.fov, (n, 1, h, w), device)?,
        ))
    }
}

/// The RNG for patch `k` of batch `b` under `seed`.
pub fn patch_rng(seed: u64, batch: u64, k: u64) -> ChaCha8Rng {
    let mut x = seed ^ 0x243F_6A88_85A3_08D3;
    for v in [batch, k] {
        x = (x ^ v.wrapping_add(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 31;
    }
    ChaCha8Rng::seed_from_u64(x)
}

/// Draws `batch_size` random patches from `images` (each patch picks its
/// image at random), augments them, and stacks them; in parallel, and the
/// same for the same (seed, batch index) whatever the thread count.
pub fn random_batch(
    images: &[Sample],
    sampler: &PatchSampler,
    aug: &AugmentConfig,
    batch_size: usize,
    seed: u64,
    batch_index: u64,
) -> Result<Batch> {
    let items: Vec<usize> = (0..batch_size).collect();
    random_batch_items(images, sampler, aug, &items, seed, batch_index)
}

/// The patches `items` (indices into the batch) of [`random_batch`]'s
/// batch: each patch depends only on (seed, batch index, its index), so a
/// data-parallel rank draws its share alone.
pub fn random_batch_items(
    images: &[Sample],
    sampler: &PatchSampler,
    aug: &AugmentConfig,
    items: &[usize],
    seed: u64,
    batch_index: u64,
) -> Result<Batch> {
    if images.is_empty() {
        return Err(Error::Empty {
            what: "images to sample patches from",
        });
    }
    let patches: Vec<Sample> = items
        .par_iter()
        .map(|&k| {
            let mut rng = patch_rng(seed, batch_index, k as u64);
            let img = &images[rng.random_range(0..images.len())];
            let mut p = sampler.sample(img, &mut rng);
            augment(&mut p, aug, &mut rng);
            p
        })
        .collect();
    stack(&patches)
}

/// Stacks equally sized samples into a batch.
pub fn stack(patches: &[Sample]) -> Result<Batch> {
    let first = patches.first().ok_or(Error::Empty {
        what: "patches to stack into a batch",
    })?;
    let (c, h, w) = (first.channels, first.height, first.width);
    let mut b = Batch {
        n: patches.len(),
        channels: c,
        height: h,
        width: w,
        images: Vec::with_capacity(patches.len() * c * h * w),
        labels: Vec::new(),
        fov: Vec::new(),
    };
    for p in patches {
        if (p.channels, p.height, p.width) != (c, h, w) {
            return Err(Error::ShapeMismatch {
                what: format!("patch of case {}", p.id),
                a: vec![p.channels, p.height, p.width],
                b: vec![c, h, w],
            });
        }
        b.images.extend_from_slice(&p.image);
        match &p.label {
            Some(l) => b.labels.extend(l.iter().map(|&v| v as f32)),
            None => b.labels.extend(std::iter::repeat_n(0.0, h * w)),
        }
        match &p.fov {
            Some(f) => b.fov.extend(f.iter().map(|&v| v as f32)),
            None => b.fov.extend(std::iter::repeat_n(1.0, h * w)),
        }
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{generate, SyntheticConfig};

    #[test]
    fn the_shares_of_a_batch_make_up_the_batch() {
        // a data-parallel rank draws items r, r + N, ... alone
        let imgs: Vec<Sample> = (0..3)
            .map(|i| {
                generate(
                    &SyntheticConfig {
                        size: 48,
                        ..Default::default()
                    },
                    i,
                )
            })
            .collect();
        let sampler = PatchSampler {
            size: 16,
            foreground_ratio: 0.5,
            inside_fov: false,
        };
        let aug = AugmentConfig::default();
        let whole = random_batch(&imgs, &sampler, &aug, 5, 3, 7).unwrap();
        let a = random_batch_items(&imgs, &sampler, &aug, &[0, 2, 4], 3, 7).unwrap();
        let b = random_batch_items(&imgs, &sampler, &aug, &[1, 3], 3, 7).unwrap();
        let n = whole.images.len() / 5;
        for (k, (p, j)) in [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]
            .into_iter()
            .enumerate()
        {
            let src = if p == 0 { &a } else { &b };
            assert_eq!(
                whole.images[k * n..(k + 1) * n],
                src.images[j * n..(j + 1) * n]
            );
        }
        assert_ne!(a.images[..n], a.images[n..2 * n]);
    }

    #[test]
    fn foreground_oversampling_and_fov() {
        let img = generate(
            &SyntheticConfig {
                size: 96,
                ..Default::default()
            },
            0,
        );
        let centre_label =
            |p: &Sample| p.label.as_ref().unwrap()[(p.height / 2) * p.width + p.width / 2];
        let fg_all = PatchSampler {
            size: 16,
            foreground_ratio: 1.0,
            inside_fov: true,
        };
        let fg_none = PatchSampler {
            size: 16,
            foreground_ratio: 0.0,
            inside_fov: true,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert!((0..50).all(|_| centre_label(&fg_all.sample(&img, &mut rng)) == 1));
        let fg_rate = (0..200)
            .filter(|_| centre_label(&fg_none.sample(&img, &mut rng)) == 1)
            .count() as f32
            / 200.0;
        assert!(fg_rate < 0.4, "{fg_rate}");
        let centre_fov =
            |p: &Sample| p.fov.as_ref().unwrap()[(p.height / 2) * p.width + p.width / 2];
        assert!((0..50).all(|_| centre_fov(&fg_none.sample(&img, &mut rng)) == 1));
    }

    #[test]
    fn grid_covers_every_pixel() {
        for (h, w, size, ov) in [(584, 565, 64, 0.5), (30, 20, 64, 0.5), (100, 100, 48, 0.0)] {
            let pos = grid_positions(h, w, size, ov);
            let mut covered = vec![false; h * w];
            for (y, x) in pos {
                for yy in y..(y + size).min(h) {
                    for xx in x..(x + size).min(w) {
                        covered[yy * w + xx] = true;
                    }
                }
            }
            assert!(covered.iter().all(|&c| c), "{h}x{w}");
        }
    }

    #[test]
    fn batches_are_deterministic_whatever_the_thread_count() {
        let cfg = SyntheticConfig {
            size: 64,
            count: 3,
            ..Default::default()
        };
        let imgs: Vec<Sample> = (0..3).map(|i| generate(&cfg, i)).collect();
        let sampler = PatchSampler {
            size: 32,
            ..Default::default()
        };
        let aug = AugmentConfig {
            elastic_p: 0.5,
            ..AugmentConfig::default()
        };
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let a = one.install(|| random_batch(&imgs, &sampler, &aug, 6, 9, 2).unwrap());
        let b = random_batch(&imgs, &sampler, &aug, 6, 9, 2).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, random_batch(&imgs, &sampler, &aug, 6, 9, 3).unwrap());
        let (x, y, f) = a.to_tensors(&seg_core::Device::Cpu).unwrap();
        assert_eq!(x.dims(), &[6, 3, 32, 32]);
        assert_eq!(y.dims(), &[6, 1, 32, 32]);
        assert_eq!(f.dims(), &[6, 1, 32, 32]);
    }
}
