//! What a segmentation is and how it is written: `<name>.png` (16-bit
//! probabilities) and `masks/<name>.png` for 2D images, `<name>.nii.gz` and
//! `masks/<name>.nii.gz` (float32, the input's affine) for volumes. Every file
//! is written to a temporary file in the target folder, then renamed.

use crate::error::{Error, Result};
use seg_data::io::image2d::{write_label_png, write_mask_png, write_probability_png};
use seg_data::io::nifti::{write_nifti, write_nifti_labels};
use seg_data::Mask;
use std::path::{Path, PathBuf};

/// Where the values of a [`Segmentation`] lie.
#[derive(Debug, Clone, PartialEq)]
pub enum Geometry {
    /// A 2D image: values row-major over `height × width`.
    Image { height: usize, width: usize },
    /// A volume: values in NIfTI order (x fastest) over `dims`, placed in
    /// space by `affine` (RAS, as NIfTI's sform).
    Volume {
        dims: Vec<usize>,
        affine: [[f64; 4]; 4],
    },
}

/// Foreground probabilities and the labels at a threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Segmentation {
    pub geometry: Geometry,
    /// In [0, 1]; 0 outside the field of view when one was given.
    pub probabilities: Vec<f32>,
    /// Binary bundles: 1 where the probability is at least `threshold`,
    /// else 0. Multi-class bundles: the class index of each pixel.
    pub labels: Vec<u8>,
    pub threshold: f32,
    /// Multi-class bundles: the stored label value of each class (class `k`
    /// is written as `label_values[k]`); `None` for binary bundles.
    pub label_values: Option<Vec<i64>>,
}

/// The files [`Segmentation::write`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub probabilities: PathBuf,
    pub mask: PathBuf,
}

impl Segmentation {
    /// Labels `probabilities` at `threshold`.
    pub fn new(geometry: Geometry, probabilities: Vec<f32>, threshold: f32) -> Self {
        let labels = probabilities
            .iter()
            .map(|&p| (p >= threshold) as u8)
            .collect();
        Self {
            geometry,
            probabilities,
            labels,
            threshold,
            label_values: None,
        }
    }

    /// A multi-class result: foreground probabilities (1 − background),
    /// class indices, and the label value of each class.
    pub fn with_classes(
        geometry: Geometry,
        probabilities: Vec<f32>,
        classes: Vec<u8>,
        label_values: Vec<i64>,
    ) -> Self {
        Self {
            geometry,
            probabilities,
            labels: classes,
            threshold: 0.5,
            label_values: Some(label_values),
        }
    }

    /// The label map as stored values: the class values of a multi-class
    /// result, else the 0/1 mask.
    pub fn label_map(&self) -> Vec<i64> {
        match &self.label_values {
            Some(v) => self.labels.iter().map(|&k| v[k as usize]).collect(),
            None => self.labels.iter().map(|&l| l as i64).collect(),
        }
    }

    /// The paths [`Self::write`] writes for `name` under `out_dir`.
    pub fn paths(&self, out_dir: &Path, name: &str) -> Written {
        let ext = match self.geometry {
            Geometry::Image { .. } => "png",
            Geometry::Volume { .. } => "nii.gz",
        };
        let file = format!("{name}.{ext}");
        Written {
            probabilities: out_dir.join(&file),
            mask: out_dir.join("masks").join(file),
        }
    }

    /// Writes the probabilities and the mask as `seg-cli predict` does
    /// (`name` is usually the input's `seg_data::dataset::file_stem`),
    /// creating `out_dir/masks` if needed.
    pub fn write(&self, out_dir: &Path, name: &str) -> Result<Written> {
        let paths = self.paths(out_dir, name);
        let masks = out_dir.join("masks");
        std::fs::create_dir_all(&masks).map_err(|e| Error::io(&masks, e))?;
        match &self.geometry {
            Geometry::Image { height, width } => {
                write_probability_png(&paths.probabilities, *height, *width, &self.probabilities)?;
                if self.label_values.is_some() {
                    write_label_png(&paths.mask, *height, *width, &self.label_map())?;
                } else {
                    let mask = Mask {
                        height: *height,
                        width: *width,
                        data: self.labels.clone(),
                    };
                    write_mask_png(&paths.mask, &mask)?;
                }
            }
            Geometry::Volume { dims, affine } => {
                write_nifti(&paths.probabilities, dims, &self.probabilities, affine)?;
                if self.label_values.is_some() {
                    write_nifti_labels(&paths.mask, dims, &self.label_map(), affine)?;
                } else {
                    let mask: Vec<f32> = self.labels.iter().map(|&l| l as f32).collect();
                    write_nifti(&paths.mask, dims, &mask, affine)?;
                }
            }
        }
        Ok(paths)
    }
}
