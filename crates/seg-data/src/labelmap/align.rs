//! Reading a case's image (a file or a DICOM series folder) and putting
//! its label on the image's voxel grid.

use super::spatial_dims;
use crate::error::{Error, Result};
use crate::volume::{Format, Volume};
use std::path::Path;

/// Reads a case's image: a file by its extension, or a folder as one
/// DICOM series in NIfTI order with its RAS affine ([`crate::io::dicom::as_nifti`]).
pub fn read_case_image(path: &Path) -> Result<Volume> {
    if path.is_dir() {
        let series = crate::io::dicom::read_series(path, None)?;
        return crate::io::dicom::as_nifti(&series).map_err(|e| Error::InFile {
            path: path.to_path_buf(),
            error: Box::new(e),
        });
    }
    crate::read_any(path)
}

/// Tolerance (mm, and for matrix entries) of [`align_label`]'s affine
/// comparisons.
const AFFINE_TOL: f64 = 1e-3;

fn inverse3(m: [[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    if det.abs() < 1e-12 {
        return None;
    }
    let c =
        |r0: usize, c0: usize, r1: usize, c1: usize| m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0];
    Some([
        [
            c(1, 1, 2, 2) / det,
            -c(0, 1, 2, 2) / det,
            c(0, 1, 1, 2) / det,
        ],
        [
            -c(1, 0, 2, 2) / det,
            c(0, 0, 2, 2) / det,
            -c(0, 0, 1, 2) / det,
        ],
        [
            c(1, 0, 2, 1) / det,
            -c(0, 0, 2, 1) / det,
            c(0, 0, 1, 1) / det,
        ],
    ])
}

/// The label volume on its image's voxel grid. When both are 3D volumes
/// with affines and the label is stored in another axis order or direction
/// (e.g. a NIfTI label of a DICOM series, flipped rows), its voxels are
/// reordered so that voxel `ijk` of the result lies where voxel `ijk` of
/// the image does. Labels already on the image's grid, without affines, or
/// whose grid is not a reordering of the image's (another resolution or an
/// oblique cut) are returned unchanged, for the shape and affine checks to
/// report.
pub fn align_label(label: &Volume, image: &Volume) -> Volume {
    let (Some(al), Some(ai)) = (label.affine, image.affine) else {
        return label.clone();
    };
    let (Ok(dl), Ok(di)) = (spatial_dims(label), spatial_dims(image)) else {
        return label.clone();
    };
    if label.format == Format::Image
        || image.format == Format::Image
        || label.layout != crate::volume::Layout::ColumnMajor
    {
        return label.clone();
    }
    let same = (0..3).all(|r| (0..4).all(|c| (al[r][c] - ai[r][c]).abs() < AFFINE_TOL));
    if same && dl == di {
        return label.clone();
    }
    // M = A_label⁻¹ · A_image: image voxel → label voxel
    let rl = [0, 1, 2].map(|r| [al[r][0], al[r][1], al[r][2]]);
    let Some(inv) = inverse3(rl) else {
        return label.clone();
    };
    let mut m = [[0.0; 4]; 3];
    for r in 0..3 {
        for c in 0..4 {
            let mut v = 0.0;
            for k in 0..3 {
                v += inv[r][k] * (ai[k][c] - if c == 3 { al[k][3] } else { 0.0 });
            }
            m[r][c] = v;
        }
    }
    // a signed permutation with an integral shift, landing inside the label
    let mut perm = [(0usize, 0i64); 3]; // label axis r = sign · image axis perm.0 + shift
    for r in 0..3 {
        let nz: Vec<usize> = (0..3).filter(|&c| m[r][c].abs() > AFFINE_TOL).collect();
        if nz.len() != 1 || (m[r][nz[0]].abs() - 1.0).abs() > AFFINE_TOL {
            return label.clone();
        }
        let shift = m[r][3];
        if (shift - shift.round()).abs() > 0.05 {
            return label.clone();
        }
        perm[r] = (nz[0], m[r][nz[0]].signum() as i64);
    }
    let mut axes: Vec<usize> = perm.iter().map(|p| p.0).collect();
    axes.sort_unstable();
    if axes != [0, 1, 2] {
        return label.clone();
    }
    // the label extent seen along the image's axes must be the image's
    for (r, &(c, _)) in perm.iter().enumerate() {
        if dl[r] != di[c] {
            return label.clone();
        }
    }
    let shifts = [0, 1, 2].map(|r| m[r][3].round() as i64);
    let n = di[0] * di[1] * di[2];
    let mut values = Vec::with_capacity(n);
    for k in 0..di[2] {
        for j in 0..di[1] {
            for i in 0..di[0] {
                let ijk = [i as i64, j as i64, k as i64];
                let l: [i64; 3] = [0, 1, 2].map(|r| perm[r].1 * ijk[perm[r].0] + shifts[r]);
                if (0..3).any(|r| l[r] < 0 || l[r] >= dl[r] as i64) {
                    return label.clone();
                }
                let idx = l[0] as usize + dl[0] * (l[1] as usize + dl[1] * l[2] as usize);
                values.push(label.values[idx]);
            }
        }
    }
    Volume {
        shape: di.to_vec(),
        spacing: image.spacing.clone(),
        affine: Some(ai),
        values,
        ..label.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nifti(dims: [usize; 3], values: Vec<f32>) -> Volume {
        Volume::from_nifti_values(&dims, values, [1.0, 2.0, 3.0])
    }

    #[test]
    fn labels_stored_flipped_or_transposed_are_put_on_the_image_grid() {
        // image 3 × 2 × 2 at 1 × 2 × 3 mm; label value = the image index it belongs to
        let dims = [3, 2, 2];
        let mut img = nifti(dims, (0..12).map(|v| v as f32).collect());
        let ai = [
            [1.0, 0.0, 0.0, 10.0],
            [0.0, 2.0, 0.0, 20.0],
            [0.0, 0.0, 3.0, 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        img.affine = Some(ai);
        // the label stored with y flipped and x/z swapped: label (a, b, c) = image (c', 1 - b, a)
        let ld = [2, 2, 3];
        let mut lv = vec![0f32; 12];
        for c in 0..3 {
            for b in 0..2 {
                for a in 0..2 {
                    let (i, j, k) = (c, 1 - b, a);
                    lv[a + 2 * (b + 2 * c)] = (i + 3 * (j + 2 * k)) as f32;
                }
            }
        }
        let mut lab = nifti(ld, lv);
        // label voxel (a, b, c) sits at x = 10 + c, y = 20 + 2 (1 - b), z = 30 + 3 a
        lab.affine = Some([
            [0.0, 0.0, 1.0, 10.0],
            [0.0, -2.0, 0.0, 22.0],
            [3.0, 0.0, 0.0, 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ]);
        let al = align_label(&lab, &img);
        assert_eq!(al.shape, vec![3, 2, 2]);
        assert_eq!(al.values, img.values, "each voxel gets its own index back");
        // already aligned, or not a reordering (another resolution): unchanged
        assert_eq!(align_label(&al, &img).values, al.values);
        let mut coarse = lab.clone();
        coarse.affine = Some([
            [0.0, 0.0, 2.0, 10.0],
            [0.0, -2.0, 0.0, 22.0],
            [3.0, 0.0, 0.0, 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ]);
        assert_eq!(align_label(&coarse, &img).shape, vec![2, 2, 3]);
    }
}
