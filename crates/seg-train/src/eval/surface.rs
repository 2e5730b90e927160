//! Surface voxels of a binary mask and the surface-distance metrics of two
//! masks (HD95, ASD, NSD) in mm, through the exact distance transform.

use crate::metrics::squared_distance_to;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The distance-based metrics of two binary masks (see [`super`] for the
/// definitions and the empty-mask conventions).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SurfaceMetrics {
    /// 95th-percentile Hausdorff distance, mm.
    pub hd95: Option<f64>,
    /// Average symmetric surface distance, mm.
    pub asd: Option<f64>,
    /// Normalised surface Dice at the tolerance.
    pub nsd: Option<f64>,
}

impl SurfaceMetrics {
    /// Both masks empty: nothing is defined.
    pub const BOTH_EMPTY: Self = Self {
        hd95: None,
        asd: None,
        nsd: None,
    };
    /// One mask empty: no distance, and no surface voxel within reach.
    pub const ONE_EMPTY: Self = Self {
        hd95: None,
        asd: None,
        nsd: Some(0.0),
    };
}

/// Surface voxels of `mask` on the row-major grid `dims` (`[z, y, x]`):
/// set voxels with a face neighbour (6-connectivity; 4 in a 2D image) that
/// is unset or outside the grid. An axis of size 1 has no neighbours along
/// it (a 2D image is `[1, h, w]`).
///
/// # Panics
/// When `mask.len()` is not the product of `dims` (a caller's bug).
pub fn surface_voxels(mask: &[bool], dims: [usize; 3]) -> Vec<bool> {
    assert_eq!(mask.len(), dims.iter().product::<usize>(), "mask size");
    surface_in_box(mask, dims, dims.map(|d| d == 1))
}

/// [`surface_voxels`] on a box cut from a larger grid: `flat` axes have no
/// neighbours; along the others, outside the box is background.
fn surface_in_box(mask: &[bool], dims: [usize; 3], flat: [bool; 3]) -> Vec<bool> {
    let [n0, n1, n2] = dims;
    let mut out = vec![false; mask.len()];
    if n2 == 0 || n1 == 0 {
        return out;
    }
    let plane = n1 * n2;
    out.par_chunks_mut(n2).enumerate().for_each(|(r, row)| {
        let (z, y) = (r / n1, r % n1);
        let base = r * n2;
        // is the neighbour at offset `d` along an axis (position `at` of `n`) unset?
        let off = |flat: bool, at: usize, n: usize, step: usize, i: usize| -> bool {
            !flat && (at == 0 || at + 1 == n || !mask[i - step] || !mask[i + step])
        };
        for (x, o) in row.iter_mut().enumerate() {
            let i = base + x;
            if !mask[i] {
                continue;
            }
            *o = off(flat[2], x, n2, 1, i)
                || off(flat[1], y, n1, n2, i)
                || off(flat[0], z, n0, plane, i);
        }
    });
    out
}

/// The 95th percentile of sorted values, linear between order statistics.
fn percentile95(sorted: &[f64]) -> f64 {
    let pos = 0.95 * (sorted.len() - 1) as f64;
    let (i, f) = (pos.floor() as usize, pos - pos.floor());
    let j = (i + 1).min(sorted.len() - 1);
    sorted[i] * (1.0 - f) + sorted[j] * f
}

/// Distances (mm) from each voxel of surface `from` to the nearest voxel of
/// surface `to`, sorted.
fn directed(from: &[bool], to: &[bool], dims: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let d2 = squared_distance_to(to, dims, spacing);
    let mut d: Vec<f64> = from
        .par_iter()
        .zip(&d2)
        .filter(|(&f, _)| f)
        .map(|(_, &d)| d.sqrt())
        .collect();
    d.par_sort_unstable_by(f64::total_cmp);
    d
}

/// HD95, ASD and NSD of two binary masks on the row-major grid `dims`
/// (`[z, y, x]`, spacing in mm in the same order; a 2D image is
/// `[1, h, w]`), NSD at `tolerance_mm`. O(voxels).
///
/// # Panics
/// When a mask's length is not the product of `dims` (a caller's bug).
pub fn surface_metrics(
    pred: &[bool],
    gt: &[bool],
    dims: [usize; 3],
    spacing: [f64; 3],
    tolerance_mm: f64,
) -> SurfaceMetrics {
    let n: usize = dims.iter().product();
    assert!(pred.len() == n && gt.len() == n, "mask size");
    metrics_in_box(pred, gt, dims, spacing, dims.map(|d| d == 1), tolerance_mm)
}

/// [`surface_metrics`] on a box cut from a larger grid (see [`surface_in_box`]).
pub(super) fn metrics_in_box(
    pred: &[bool],
    gt: &[bool],
    dims: [usize; 3],
    spacing: [f64; 3],
    flat: [bool; 3],
    tolerance_mm: f64,
) -> SurfaceMetrics {
    let (sp, sg) = (
        surface_in_box(pred, dims, flat),
        surface_in_box(gt, dims, flat),
    );
    match (sp.contains(&true), sg.contains(&true)) {
        (false, false) => return SurfaceMetrics::BOTH_EMPTY,
        (true, false) | (false, true) => return SurfaceMetrics::ONE_EMPTY,
        (true, true) => {}
    }
    let a = directed(&sp, &sg, dims, spacing);
    let b = directed(&sg, &sp, dims, spacing);
    let total = (a.len() + b.len()) as f64;
    let reach = tolerance_mm * (1.0 + 1e-9);
    let within = |v: &[f64]| v.partition_point(|&d| d <= reach);
    SurfaceMetrics {
        hd95: Some(percentile95(&a).max(percentile95(&b))),
        asd: Some((a.iter().sum::<f64>() + b.iter().sum::<f64>()) / total),
        nsd: Some((within(&a) + within(&b)) as f64 / total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric by brute force: all pairs of surface voxels.
    fn brute(pred: &[bool], gt: &[bool], dims: [usize; 3], sp: [f64; 3], tol: f64) -> [f64; 3] {
        let (s1, s2) = (surface_voxels(pred, dims), surface_voxels(gt, dims));
        let at = |i: usize| {
            [
                i / (dims[1] * dims[2]),
                (i / dims[2]) % dims[1],
                i % dims[2],
            ]
        };
        let dist = |i: usize, j: usize| {
            let (a, b) = (at(i), at(j));
            (0..3)
                .map(|k| ((a[k] as f64 - b[k] as f64) * sp[k]).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let dir = |from: &[bool], to: &[bool]| -> Vec<f64> {
            let mut v: Vec<f64> = (0..from.len())
                .filter(|&i| from[i])
                .map(|i| {
                    (0..to.len())
                        .filter(|&j| to[j])
                        .map(|j| dist(i, j))
                        .fold(f64::INFINITY, f64::min)
                })
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let (a, b) = (dir(&s1, &s2), dir(&s2, &s1));
        let all: Vec<f64> = a.iter().chain(&b).copied().collect();
        [
            percentile95(&a).max(percentile95(&b)),
            all.iter().sum::<f64>() / all.len() as f64,
            all.iter().filter(|&&d| d <= tol + 1e-12).count() as f64 / all.len() as f64,
        ]
    }

    #[test]
    fn surface_metrics_match_brute_force_on_irregular_shapes() {
        for (dims, seed) in [
            ([6, 7, 8], 1u64),
            ([1, 12, 9], 2),
            ([5, 1, 9], 3),
            ([4, 4, 4], 4),
        ] {
            let n: usize = dims.iter().product();
            let mut state = seed;
            let mut bit = || {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 33) % 3 == 0
            };
            let pred: Vec<bool> = (0..n).map(|_| bit()).collect();
            let gt: Vec<bool> = (0..n).map(|_| bit()).collect();
            let sp = [1.7, 0.6, 1.1];
            let m = surface_metrics(&pred, &gt, dims, sp, 1.2);
            let [hd, asd, nsd] = brute(&pred, &gt, dims, sp, 1.2);
            assert!(
                (m.hd95.unwrap() - hd).abs() < 1e-9,
                "{dims:?}: {m:?} vs hd95 {hd}"
            );
            assert!(
                (m.asd.unwrap() - asd).abs() < 1e-9,
                "{dims:?}: {m:?} vs asd {asd}"
            );
            assert!(
                (m.nsd.unwrap() - nsd).abs() < 1e-12,
                "{dims:?}: {m:?} vs nsd {nsd}"
            );
        }
    }

    #[test]
    fn surface_of_a_square_and_of_a_cube() {
        // 2D: a 3×3 square's surface is its ring of 8
        let mut sq = vec![false; 25];
        for y in 1..4 {
            for x in 1..4 {
                sq[y * 5 + x] = true;
            }
        }
        let s = surface_voxels(&sq, [1, 5, 5]);
        assert_eq!(s.iter().filter(|&&b| b).count(), 8);
        assert!(!s[2 * 5 + 2]);
        // 3D: a full 3×3×3 grid is all surface but its centre (the grid edge is background)
        let s = surface_voxels(&[true; 27], [3, 3, 3]);
        assert_eq!(s.iter().filter(|&&b| b).count(), 26);
        assert!(!s[13]);
    }
}
