//! The plan's choice between 2.5D and a 3D network, and the 3D patch.
//!
//! A CPU budget of minutes decides it: a 3D network learns from the whole
//! anatomy (nnU-Net's best configuration on most isotropic MRI / CT tasks),
//! but each of its steps costs ~k× a 2D step on the same voxels and a
//! patch of a large CT sees a small part of it, so within a budget it
//! sees far fewer cases than 2.5D does. The plan takes 3D when
//! - the volumes are near-isotropic (largest median spacing < 3 × the
//!   smallest; anisotropic volumes are planned as 2.5D along the coarse
//!   axis, as nnU-Net's 2D), and
//! - one patch covers the median case whole: the median (resampled) shape,
//!   each side rounded up to a multiple of 8 (the networks pool four times
//!   and pad odd sizes back; rounding to 16 would add up to 2.3× the voxels
//!   of a small case, e.g. Hippocampus' 36 × 35 × 50 → 48 × 48 × 64 instead
//!   of 40 × 40 × 56), is at most [`MAX_PATCH_VOXELS`] (96³). Each step then trains
//!   on whole cases with all their context, which is where 3D beats 2.5D
//!   (Hippocampus: docs/results.md); larger cases stay 2.5D.
//!
//! `--dims 3` forces 3D on larger volumes: the patch is then the median
//! shape scaled down (keeping its proportions) to [`MAX_PATCH_VOXELS`].

use super::Fingerprint;

/// The most voxels of a planned 3D patch (96³).
pub const MAX_PATCH_VOXELS: usize = 96 * 96 * 96;

/// About this many voxels per 3D batch (batch between 2 and 8): a
/// base-16 3D U-Net step on 2 × 64³ voxels takes ~4 s on two cores (Zen 4;
/// `cargo xtask bench --dims 3`), so a 20-minute budget fits ~1000 steps of
/// this size.
pub const BATCH_VOXELS: usize = 200_000;

/// Rounds up to a multiple of 8, at least 16.
fn up8(n: usize) -> usize {
    (n.div_ceil(8) * 8).max(16)
}

/// The 3D patch for a median case shape (depth, rows, columns): each side
/// rounded up to a multiple of 8, scaled down (proportions kept, sides
/// rounded down to multiples of 8, at least 16) while above
/// [`MAX_PATCH_VOXELS`]. Returns the patch and whether it covers the
/// median case whole.
pub fn patch_for(shape: [usize; 3]) -> ([usize; 3], bool) {
    let whole = shape.map(up8);
    if whole.iter().product::<usize>() <= MAX_PATCH_VOXELS {
        return (whole, true);
    }
    let mut f = (MAX_PATCH_VOXELS as f64 / whole.iter().product::<usize>() as f64).cbrt();
    loop {
        let p = whole.map(|s| (((s as f64 * f) as usize / 8) * 8).max(16));
        if p.iter().product::<usize>() <= MAX_PATCH_VOXELS || f < 0.01 {
            return (p, false);
        }
        f *= 0.95;
    }
}

/// The batch for a 3D patch: about [`BATCH_VOXELS`] voxels, 2 to 8.
pub fn batch_for(patch: [usize; 3]) -> usize {
    (BATCH_VOXELS / patch.iter().product::<usize>().max(1)).clamp(2, 8)
}

/// Whether the plan takes 3D, and why.
pub fn decide(
    fp: &Fingerprint,
    median_spacing: [f64; 3],
    median_case: [usize; 3],
) -> (bool, String) {
    if !fp.volumes {
        return (false, "2D images".into());
    }
    let (lo, hi) = median_spacing
        .iter()
        .fold((f64::INFINITY, 0f64), |(l, h), &s| (l.min(s), h.max(s)));
    if hi >= 3.0 * lo {
        return (
            false,
            format!("dims 2.5: anisotropic volumes (median spacing {median_spacing:?} mm)"),
        );
    }
    let (patch, covers) = patch_for(median_case);
    if covers {
        (
            true,
            format!(
                "dims 3: near-isotropic volumes whose median case {median_case:?} fits one 3D patch {patch:?} (≤ 96³): each step sees whole cases"
            ),
        )
    } else {
        (
            false,
            format!(
                "dims 2.5: the median case {median_case:?} is larger than a 96³ patch (a CPU budget sees too little of it in 3D; --dims 3 forces 3D)"
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_cover_small_cases_and_shrink_large_ones() {
        // Hippocampus-like
        assert_eq!(patch_for([36, 35, 50]), ([40, 40, 56], true));
        assert_eq!(batch_for([40, 40, 56]), 2);
        assert_eq!(patch_for([5, 9, 17]), ([16, 16, 24], true));
        // a CT: scaled down, proportions kept, within the budget
        let (p, whole) = patch_for([300, 512, 512]);
        assert!(!whole);
        assert!(p.iter().product::<usize>() <= MAX_PATCH_VOXELS, "{p:?}");
        assert!(p.iter().all(|s| s % 8 == 0 && *s >= 16));
        assert!(p[1] == p[2] && p[0] < p[1], "{p:?}");
        assert_eq!(batch_for(p), 2);
    }
}
