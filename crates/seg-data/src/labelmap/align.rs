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
    if label.format == Format::Image || image.format == Format::Image {
        return label.clone();
    }
    let close =
        |a: &[[f64; 4]; 4]| (0..3).all(|r| (0..4).all(|c| (a[r][c] - ai[r][c]).abs() < AFFINE_TOL));
    let di = spatial_dims(image).ok();
    if close(&al) && spatial_dims(label).ok() == di {
        return label.clone();
    }
    // the label in the image's orientation: aligned when the grids then coincide
    match crate::orient::reorient(label, &crate::orient::axis_codes(&ai)) {
        Some((moved, _))
            if moved.affine.as_ref().is_some_and(close) && spatial_dims(&moved).ok() == di =>
        {
            Volume {
                spacing: image.spacing.clone(),
                ..moved
            }
        }
        _ => label.clone(),
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
