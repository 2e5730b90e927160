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
    /// Multi-class bundles, when asked for: every class's probability,
    /// class-major (`classes × voxels`, each in the order of `labels`).
    pub class_probabilities: Option<Vec<f32>>,
}

/// The files [`Segmentation::write`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Binary bundles: the foreground probability. Multi-class bundles:
    /// nothing unless per-class probabilities were asked for — then one
    /// 4D NIfTI (`x × y × z × classes`) for a volume, one 16-bit PNG per
    /// class (`<name>_<value>.png`) for a 2D image.
    pub probabilities: Vec<PathBuf>,
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
            class_probabilities: None,
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
            class_probabilities: None,
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
        let probabilities = match (&self.label_values, &self.class_probabilities) {
            (None, _) => vec![out_dir.join(&file)],
            (Some(_), None) => Vec::new(),
            (Some(values), Some(_)) => match self.geometry {
                Geometry::Image { .. } => values
                    .iter()
                    .map(|v| out_dir.join(format!("{name}_{v}.png")))
                    .collect(),
                Geometry::Volume { .. } => vec![out_dir.join(&file)],
            },
        };
        Written {
            probabilities,
            mask: out_dir.join("masks").join(file),
        }
    }

    /// Writes the label map (and the probabilities, see [`Written`]) as
    /// `seg-cli predict` does (`name` is usually the input's
    /// `seg_data::dataset::file_stem`), creating `out_dir/masks` if needed.
    pub fn write(&self, out_dir: &Path, name: &str) -> Result<Written> {
        let paths = self.paths(out_dir, name);
        let masks = out_dir.join("masks");
        std::fs::create_dir_all(&masks).map_err(|e| Error::io(&masks, e))?;
        let n = self.labels.len();
        match &self.geometry {
            Geometry::Image { height, width } => {
                if self.label_values.is_some() {
                    write_label_png(&paths.mask, *height, *width, &self.label_map())?;
                    if let Some(all) = &self.class_probabilities {
                        for (p, path) in all.chunks(n).zip(&paths.probabilities) {
                            write_probability_png(path, *height, *width, p)?;
                        }
                    }
                } else {
                    write_probability_png(
                        &paths.probabilities[0],
                        *height,
                        *width,
                        &self.probabilities,
                    )?;
                    let mask = Mask {
                        height: *height,
                        width: *width,
                        data: self.labels.clone(),
                    };
                    write_mask_png(&paths.mask, &mask)?;
                }
            }
            Geometry::Volume { dims, affine } => {
                if self.label_values.is_some() {
                    write_nifti_labels(&paths.mask, dims, &self.label_map(), affine)?;
                    if let (Some(all), Some(path)) =
                        (&self.class_probabilities, paths.probabilities.first())
                    {
                        let mut d = dims.clone();
                        d.truncate(3);
                        d.resize(3, 1);
                        d.push(all.len() / n.max(1));
                        write_nifti(path, &d, all, affine)?;
                    }
                } else {
                    write_nifti(&paths.probabilities[0], dims, &self.probabilities, affine)?;
                    let mask: Vec<f32> = self.labels.iter().map(|&l| l as f32).collect();
                    write_nifti(&paths.mask, dims, &mask, affine)?;
                }
            }
        }
        Ok(paths)
    }
}
