//! 3D training patches from whole cases ([`Stack`]s, their planes being the
//! volume's depth): class-balanced sampling ([`VoxelIndex`]), 3D
//! augmentation ([`Augment3`]: flips along each allowed axis, 90° rotations
//! in the plane, rotation about the depth axis and scaling — trilinear for
//! the image (edge voxels extended by half a voxel), nearest for the label,
//! sampled from the whole case so that a
//! rotated patch sees real context rather than padding — and nnU-Net's
//! intensity changes), and batches as (N, C, D, H, W) buffers
//! ([`random_batch_3d`]). Each patch has its own RNG derived from (seed,
//! batch, position), so a batch does not depend on the thread count.

use crate::error::{Error, Result};
use crate::labelmap::Stack;
use crate::sampling::patch_rng;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// 3D augmentation. Defaults follow nnU-Net's 3D recipe (rotation ±15°
/// about the depth axis and scaling 0.7–1.4 each with p 0.2, mirroring,
/// brightness / contrast p 0.15, gamma p 0.3, noise p 0.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Augment3 {
    /// Flip probability per allowed axis.
    pub flip_p: f32,
    /// Which axes may be flipped: depth, rows, columns (a planned model
    /// keeps the sides its structures keep).
    pub flip_axes: [bool; 3],
    /// Probability of a 90° rotation in the plane (square patches, both
    /// plane axes flippable).
    pub rot90_p: f32,
    pub rotate_p: f32,
    pub rotate_max_deg: f32,
    pub scale_p: f32,
    pub scale_range: (f32, f32),
    /// Multiplicative brightness in `brightness_range`.
    pub brightness_p: f32,
    pub brightness_range: (f32, f32),
    /// Contrast around the patch mean in `contrast_range`.
    pub contrast_p: f32,
    pub contrast_range: (f32, f32),
    /// Gamma on the patch rescaled to [0, 1], then back.
    pub gamma_p: f32,
    pub gamma_range: (f32, f32),
    /// Gaussian noise of variance drawn from [0, `noise_var`].
    pub noise_p: f32,
    pub noise_var: f32,
}

impl Default for Augment3 {
    fn default() -> Self {
        Self {
            flip_p: 0.5,
            flip_axes: [true; 3],
            rot90_p: 0.0,
            rotate_p: 0.2,
            rotate_max_deg: 15.0,
            scale_p: 0.2,
            scale_range: (0.7, 1.4),
            brightness_p: 0.15,
            brightness_range: (0.75, 1.25),
            contrast_p: 0.15,
            contrast_range: (0.75, 1.25),
            gamma_p: 0.3,
            gamma_range: (0.7, 1.5),
            noise_p: 0.1,
            noise_var: 0.1,
        }
    }
}

impl Augment3 {
    /// No augmentation.
    pub fn none() -> Self {
        Self {
            flip_p: 0.0,
            rot90_p: 0.0,
            rotate_p: 0.0,
            scale_p: 0.0,
            brightness_p: 0.0,
            contrast_p: 0.0,
            gamma_p: 0.0,
            noise_p: 0.0,
            ..Self::default()
        }
    }
}

/// Where each foreground class lies: up to [`PER_CASE`] voxels per class and
/// case (evenly spread over that class's voxels), the centres
/// class-balanced sampling draws from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VoxelIndex {
    /// `by_class[k - 1]`: (case, voxel) pairs of class `k`.
    pub by_class: Vec<Vec<(u32, u32)>>,
}

/// Voxels kept per class and case in a [`VoxelIndex`].
pub const PER_CASE: usize = 4096;

impl VoxelIndex {
    /// Indexes classes 1..`classes` of `stacks`' labels.
    pub fn new(stacks: &[Stack], classes: usize) -> Self {
        let per_case: Vec<Vec<Vec<u32>>> = stacks
            .par_iter()
            .map(|s| {
                let mut lists = vec![Vec::new(); classes.saturating_sub(1)];
                if let Some(l) = &s.label {
                    for (i, &v) in l.iter().enumerate() {
                        let v = v as usize;
                        if v >= 1 && v < classes {
                            lists[v - 1].push(i as u32);
                        }
                    }
                }
                for list in &mut lists {
                    if list.len() > PER_CASE {
                        let step = list.len() as f64 / PER_CASE as f64;
                        *list = (0..PER_CASE)
                            .map(|j| list[(j as f64 * step) as usize])
                            .collect();
                    }
                }
                lists
            })
            .collect();
        let by_class = (0..classes.saturating_sub(1))
            .map(|k| {
                per_case
                    .iter()
                    .enumerate()
                    .flat_map(|(c, lists)| lists[k].iter().map(move |&v| (c as u32, v)))
                    .collect()
            })
            .collect();
        Self { by_class }
    }
}

/// A batch of 3D patches.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch3 {
    pub n: usize,
    pub channels: usize,
    /// Depth, height, width of each patch.
    pub size: [usize; 3],
    /// N × C × D × H × W.
    pub images: Vec<f32>,
    /// N × 1 × D × H × W class indices (as f32).
    pub labels: Vec<f32>,
}

impl Batch3 {
    /// Images (N, C, D, H, W) and labels (N, 1, D, H, W) on `device`.
    pub fn to_tensors(
        &self,
        device: &seg_core::Device,
    ) -> Result<(seg_core::Tensor, seg_core::Tensor)> {
        use seg_core::Tensor;
        let [d, h, w] = self.size;
        Ok((
            Tensor::from_slice(&self.images, (self.n, self.channels, d, h, w), device)?,
            Tensor::from_slice(&self.labels, (self.n, 1, d, h, w), device)?,
        ))
    }
}

/// The geometric part of one patch's augmentation: patch voxel p maps to
/// case position `centre + M · (p − patch centre)` (M: flips, 90°
/// rotation, rotation about depth, 1 / scale).
#[derive(Debug, Clone, Copy)]
struct Warp {
    /// Rows of M acting on (dz, dy, dx).
    m: [[f32; 3]; 3],
    identity: bool,
}

impl Warp {
    fn draw(aug: &Augment3, square: bool, rng: &mut ChaCha8Rng) -> Self {
        let mut m = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let mut identity = true;
        // draws happen whether or not an axis may flip (stable streams)
        for (a, row) in m.iter_mut().enumerate() {
            if rng.random::<f32>() < aug.flip_p && aug.flip_axes[a] {
                row[a] = -1.0;
                identity = false;
            }
        }
        let rot90 = rng.random::<f32>() < aug.rot90_p;
        let k = 1 + (rng.random::<u32>() % 3) as usize;
        let angle = if rng.random::<f32>() < aug.rotate_p {
            (2.0 * rng.random::<f32>() - 1.0) * aug.rotate_max_deg.to_radians()
        } else {
            0.0
        };
        let scale = if rng.random::<f32>() < aug.scale_p {
            aug.scale_range.0 + rng.random::<f32>() * (aug.scale_range.1 - aug.scale_range.0)
        } else {
            1.0
        };
        let mut theta = angle;
        if rot90 && square && aug.flip_axes[1] && aug.flip_axes[2] {
            theta += k as f32 * std::f32::consts::FRAC_PI_2;
        }
        if theta != 0.0 || scale != 1.0 {
            identity = false;
            let (c, s) = (theta.cos() / scale, theta.sin() / scale);
            // in-plane rotation of (dy, dx), depth scaled alike
            let r = [[1.0 / scale, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]];
            m = mat_mul(&r, &m);
        }
        Self { m, identity }
    }
}

fn mat_mul(a: &[[f32; 3]; 3], b: &[[f32; 3]; 3]) -> [[f32; 3]; 3] {
    let mut out = [[0f32; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            out[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    out
}

/// Cuts one patch of `size` centred at `centre` (case voxel coordinates)
/// through `warp`: image trilinear (0 outside the case), label nearest (0
/// outside). Returns (C × D × H × W, D × H × W).
fn cut(stack: &Stack, centre: [f32; 3], size: [usize; 3], warp: &Warp) -> (Vec<f32>, Vec<u8>) {
    let dims = [stack.slices, stack.height, stack.width];
    let [pd, ph, pw] = size;
    let n = pd * ph * pw;
    let plane = stack.height * stack.width;
    let vol = stack.slices * plane;
    let c = stack.channels;
    let mut image = vec![0f32; c * n];
    let mut label = vec![0u8; n];
    let half = size.map(|s| (s as f32 - 1.0) / 2.0);
    let at = |z: usize, y: usize, x: usize| z * plane + y * stack.width + x;
    for z in 0..pd {
        for y in 0..ph {
            for x in 0..pw {
                let d = [z as f32 - half[0], y as f32 - half[1], x as f32 - half[2]];
                let p: [f32; 3] = if warp.identity {
                    [centre[0] + d[0], centre[1] + d[1], centre[2] + d[2]]
                } else {
                    [0, 1, 2].map(|r| {
                        centre[r] + warp.m[r][0] * d[0] + warp.m[r][1] * d[1] + warp.m[r][2] * d[2]
                    })
                };
                let o = (z * ph + y) * pw + x;
                // label: nearest voxel
                let q = [0, 1, 2].map(|a| p[a].round());
                if (0..3).all(|a| q[a] >= 0.0 && (q[a] as usize) < dims[a]) {
                    if let Some(l) = &stack.label {
                        label[o] = l[at(q[0] as usize, q[1] as usize, q[2] as usize)];
                    }
                }
                // image: trilinear, edge voxels extended by half a voxel
                // (where the label's nearest voxel is still inside), 0 beyond
                let inside = (0..3).all(|a| p[a] >= -0.5 && p[a] <= dims[a] as f32 - 0.5);
                if !inside {
                    continue;
                }
                let f = p.map(|v| v.floor());
                let t = [0, 1, 2].map(|a| p[a] - f[a]);
                let lo = [0, 1, 2].map(|a| (f[a] as isize).clamp(0, dims[a] as isize - 1) as usize);
                let hi =
                    [0, 1, 2].map(|a| (f[a] as isize + 1).clamp(0, dims[a] as isize - 1) as usize);
                for ch in 0..c {
                    let img = &stack.image[ch * vol..(ch + 1) * vol];
                    let mut acc = 0f32;
                    for corner in 0..8 {
                        let off = [(corner >> 2) & 1, (corner >> 1) & 1, corner & 1];
                        let mut wgt = 1f32;
                        let mut idx = [0usize; 3];
                        for a in 0..3 {
                            if off[a] == 1 {
                                wgt *= t[a];
                                idx[a] = hi[a];
                            } else {
                                wgt *= 1.0 - t[a];
                                idx[a] = lo[a];
                            }
                        }
                        if wgt != 0.0 {
                            acc += wgt * img[at(idx[0], idx[1], idx[2])];
                        }
                    }
                    image[ch * n + o] = acc;
                }
            }
        }
    }
    (image, label)
}

/// nnU-Net's intensity augmentation of one channel of a patch.
fn intensity(v: &mut [f32], aug: &Augment3, rng: &mut ChaCha8Rng) {
    let u = |rng: &mut ChaCha8Rng, (lo, hi): (f32, f32)| lo + rng.random::<f32>() * (hi - lo);
    if rng.random::<f32>() < aug.noise_p {
        let var = rng.random::<f32>() * aug.noise_var;
        let sd = var.sqrt();
        for x in v.iter_mut() {
            // Box–Muller
            let (a, b) = (rng.random::<f32>().max(1e-7), rng.random::<f32>());
            *x += sd * (-2.0 * a.ln()).sqrt() * (std::f32::consts::TAU * b).cos();
        }
    }
    if rng.random::<f32>() < aug.brightness_p {
        let f = u(rng, aug.brightness_range);
        v.iter_mut().for_each(|x| *x *= f);
    }
    if rng.random::<f32>() < aug.contrast_p {
        let f = u(rng, aug.contrast_range);
        let (lo, hi) = min_max(v);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() as f32 / v.len().max(1) as f32;
        v.iter_mut()
            .for_each(|x| *x = ((*x - mean) * f + mean).clamp(lo, hi));
    }
    if rng.random::<f32>() < aug.gamma_p {
        let g = u(rng, aug.gamma_range);
        let (lo, hi) = min_max(v);
        let range = (hi - lo).max(1e-7);
        v.iter_mut()
            .for_each(|x| *x = ((*x - lo) / range).max(0.0).powf(g) * range + lo);
    }
}

fn min_max(v: &[f32]) -> (f32, f32) {
    v.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

/// `batch_size` patches of `size` from `stacks`: with probability
/// `foreground_ratio` centred on a voxel of a foreground class drawn
/// uniformly among the classes present (rare structures seen as often as
/// large ones), else anywhere the patch overlaps the case; augmented by
/// `aug`. The same for the same (seed, batch index) whatever the thread
/// count.
#[allow(clippy::too_many_arguments)]
pub fn random_batch_3d(
    stacks: &[Stack],
    index: &VoxelIndex,
    size: [usize; 3],
    foreground_ratio: f32,
    aug: &Augment3,
    batch_size: usize,
    seed: u64,
    batch_index: u64,
) -> Result<Batch3> {
    let items: Vec<usize> = (0..batch_size).collect();
    random_batch_3d_items(
        stacks,
        index,
        size,
        foreground_ratio,
        aug,
        &items,
        seed,
        batch_index,
    )
}

/// The patches `items` (indices into the batch) of [`random_batch_3d`]'s
/// batch: each patch depends only on (seed, batch index, its index), so a
/// data-parallel rank draws its share alone.
#[allow(clippy::too_many_arguments)]
pub fn random_batch_3d_items(
    stacks: &[Stack],
    index: &VoxelIndex,
    size: [usize; 3],
    foreground_ratio: f32,
    aug: &Augment3,
    items: &[usize],
    seed: u64,
    batch_index: u64,
) -> Result<Batch3> {
    let batch_size = items.len();
    if stacks.is_empty() {
        return Err(Error::Empty {
            what: "cases to sample 3D patches from",
        });
    }
    let channels = stacks[0].channels;
    if let Some(s) = stacks.iter().find(|s| s.channels != channels) {
        return Err(Error::ShapeMismatch {
            what: format!("channels of case {}", s.id),
            a: vec![s.channels],
            b: vec![channels],
        });
    }
    let present: Vec<usize> = (0..index.by_class.len())
        .filter(|&k| !index.by_class[k].is_empty())
        .collect();
    let square = size[1] == size[2];
    let patches: Vec<(Vec<f32>, Vec<u8>)> = items
        .par_iter()
        .map(|&k| {
            let mut rng = patch_rng(seed, batch_index, k as u64);
            let want_fg = rng.random::<f32>() < foreground_ratio;
            let (stack, centre) = if want_fg && !present.is_empty() {
                let class = present[rng.random_range(0..present.len())];
                let list = &index.by_class[class];
                let (c, v) = list[rng.random_range(0..list.len())];
                let s = &stacks[c as usize];
                let v = v as usize;
                let plane = s.height * s.width;
                let at = [v / plane, (v % plane) / s.width, v % s.width];
                // the voxel anywhere in the patch's central half
                let centre = [0, 1, 2].map(|a| {
                    let j = (rng.random::<f32>() - 0.5) * size[a] as f32 * 0.5;
                    at[a] as f32 + j
                });
                (s, centre)
            } else {
                let s = &stacks[rng.random_range(0..stacks.len())];
                let dims = [s.slices, s.height, s.width];
                let centre = [0, 1, 2].map(|a| {
                    // the patch's centre anywhere that keeps it over the case
                    let lo = (size[a] as f32 - 1.0) / 2.0;
                    let hi = dims[a] as f32 - 1.0 - lo;
                    let (lo, hi) = if hi >= lo { (lo, hi) } else { (hi, lo) };
                    lo + rng.random::<f32>() * (hi - lo)
                });
                (s, centre)
            };
            let warp = Warp::draw(aug, square, &mut rng);
            // whole-voxel origin: unwarped patches are exact crops
            let half = size.map(|s| (s as f32 - 1.0) / 2.0);
            let centre = [0, 1, 2].map(|a| (centre[a] - half[a]).round() + half[a]);
            let (mut image, label) = cut(stack, centre, size, &warp);
            let n = size.iter().product::<usize>();
            for ch in 0..channels {
                intensity(&mut image[ch * n..(ch + 1) * n], aug, &mut rng);
            }
            (image, label)
        })
        .collect();
    let mut images = Vec::with_capacity(batch_size * channels * size.iter().product::<usize>());
    let mut labels = Vec::with_capacity(batch_size * size.iter().product::<usize>());
    for (i, l) in patches {
        images.extend_from_slice(&i);
        labels.extend(l.iter().map(|&v| v as f32));
    }
    Ok(Batch3 {
        n: batch_size,
        channels,
        size,
        images,
        labels,
    })
}

#[cfg(test)]
mod tests;
