//! Overlay pictures of a segmentation on its source (`seg-cli predict
//! --overlay`): a 2D image with each class tinted and outlined, a volume as
//! a montage of planes through the structures.

use super::{Geometry, Segmentation};
use crate::error::{Error, Result};
use seg_data::io::overlay::{blend, display_levels, grey_rgb, montage, write_rgb_png};
use seg_data::{Format, Volume};
use std::path::{Path, PathBuf};

/// Planes in a volume montage, and their least side on screen.
const MONTAGE_TILES: usize = 9;
const MONTAGE_MIN_SIDE: usize = 160;

impl Segmentation {
    /// The overlay picture of this segmentation on `source` (the input it
    /// was made from, as [`super::read_input`] reads it): `(rgb, height,
    /// width)`.
    pub fn overlay(&self, source: &Volume) -> Result<(Vec<u8>, usize, usize)> {
        match &self.geometry {
            Geometry::Image { height, width } => {
                let (h, w) = (*height, *width);
                if source.format != Format::Image || source.shape[..2] != [h, w] {
                    return Err(Error::UnsupportedVolume {
                        reason: "the overlay source is not the segmented 2D image",
                        shape: source.shape.clone(),
                    });
                }
                let c = source.shape[2];
                let levels = display_levels(&source.values);
                let rgb = if c >= 3 {
                    levels.chunks(c).flat_map(|p| [p[0], p[1], p[2]]).collect()
                } else {
                    grey_rgb(&levels.iter().step_by(c).copied().collect::<Vec<_>>())
                };
                Ok((blend(&rgb, &self.labels, h, w), h, w))
            }
            Geometry::Volume { dims, affine } => {
                let vol = match source.format {
                    Format::Dicom => seg_data::io::dicom::as_nifti(source)?,
                    _ => source.clone(),
                };
                let d = [
                    dims[0],
                    dims.get(1).copied().unwrap_or(1),
                    dims.get(2).copied().unwrap_or(1),
                ];
                if vol.values.len() != d.iter().product::<usize>() {
                    return Err(Error::UnsupportedVolume {
                        reason: "the overlay source is not the segmented volume",
                        shape: source.shape.clone(),
                    });
                }
                // planes across the coarsest axis when it is clearly coarser, else axial (z)
                let sp: Vec<f64> = (0..3)
                    .map(|j| {
                        (0..3)
                            .map(|i| affine[i][j] * affine[i][j])
                            .sum::<f64>()
                            .sqrt()
                    })
                    .collect();
                let (lo, hi) = sp
                    .iter()
                    .fold((f64::INFINITY, 0f64), |(l, h), &s| (l.min(s), h.max(s)));
                let axis = if hi >= 2.0 * lo {
                    (0..3).max_by(|&a, &b| sp[a].total_cmp(&sp[b])).unwrap_or(2)
                } else {
                    2
                };
                Ok(montage(
                    &vol.values,
                    &self.labels,
                    d,
                    axis,
                    MONTAGE_TILES,
                    MONTAGE_MIN_SIDE,
                ))
            }
        }
    }

    /// Writes [`Self::overlay`] to `out_dir/overlays/<name>.png` and returns
    /// the path.
    pub fn write_overlay(&self, source: &Volume, out_dir: &Path, name: &str) -> Result<PathBuf> {
        let dir = out_dir.join("overlays");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let path = dir.join(format!("{name}.png"));
        let (rgb, h, w) = self.overlay(source)?;
        write_rgb_png(&path, &rgb, h, w)?;
        Ok(path)
    }
}
