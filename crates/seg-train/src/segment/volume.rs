//! Volumes, slice by slice: NIfTI along z, DICOM along frames/slices, with
//! neighbouring slices as extra channels for 2.5D models; the result keeps the
//! input's affine (DICOM's LPS turned into RAS, as NIfTI wants).

use super::{Geometry, Segmentation, Segmenter};
use crate::error::{Error, Result};
use seg_data::intensity::ChannelChoice;
use seg_data::{slicing, Format, Preprocess, Volume};

impl Segmenter {
    /// Segments a 3D NIfTI volume or a single-channel DICOM volume (a file or
    /// a series, as read by seg-data) slice by slice. The probabilities and
    /// labels are in NIfTI order (x fastest) over [`Geometry::Volume`]'s dims.
    pub fn segment_volume(&self, vol: &Volume) -> Result<Segmentation> {
        let _precision = seg_core::precision::scoped(self.precision);
        super::check_filled(vol)?;
        let (axis, dims, affine) = match vol.format {
            Format::Nifti => {
                if vol.shape.len() != 3 {
                    return Err(Error::UnsupportedVolume {
                        reason: "only 3D NIfTI volumes are predicted",
                        shape: vol.shape.clone(),
                    });
                }
                (
                    2,
                    vol.shape.clone(),
                    vol.affine.unwrap_or_else(|| diag(&vol.spacing)),
                )
            }
            Format::Dicom => {
                if vol.shape.len() != 4 || vol.shape[3] != 1 {
                    return Err(Error::UnsupportedVolume {
                        reason: "colour DICOM volumes are not supported",
                        shape: vol.shape.clone(),
                    });
                }
                let (f, r, c) = (vol.shape[0], vol.shape[1], vol.shape[2]);
                let mut a = vol
                    .affine
                    .unwrap_or_else(|| diag(&[vol.spacing[1], vol.spacing[0], 1.0]));
                for row in a.iter_mut().take(2) {
                    for v in row.iter_mut() {
                        *v = -*v;
                    }
                }
                (0, vec![c, r, f], a)
            }
            Format::Image => {
                return Err(Error::UnsupportedVolume {
                    reason: "a 2D image is not a volume",
                    shape: vol.shape.clone(),
                })
            }
        };
        if let Some(sp) = &self.info.slices {
            let v = if vol.format == Format::Dicom {
                seg_data::io::dicom::as_nifti(vol)?
            } else {
                vol.clone()
            };
            return self.segment_planned(&v, sp, Geometry::Volume { dims, affine });
        }
        let plan = &self.info.preprocess;
        let invert = vol.photometric.as_deref() == Some("MONOCHROME1");
        let unit = Volume {
            values: plan.to_unit(&vol.values, vol.stored, vol.format, invert)?,
            ..vol.clone()
        };
        let in_ch = self.in_channels;
        let context = if in_ch > 1 { (in_ch - 1) / 2 } else { 0 };
        let plan_all = Preprocess {
            channels: ChannelChoice::All,
            ..plan.clone()
        };
        let n = slicing::slice_count(&unit, axis)?;
        let mut slices = Vec::with_capacity(n);
        for k in 0..n {
            let (vals, (h, w)) = slicing::slice(&unit, axis, k, context)?;
            let ch = 2 * context + 1;
            let mut hwc = vec![0f32; vals.len()];
            for p in 0..h * w {
                for c in 0..ch {
                    hwc[p * ch + c] = vals[c * h * w + p];
                }
            }
            let (img, c) = plan_all.apply_unit(&hwc, h, w, ch, None)?;
            slices.push(self.foreground(&img, c, h, w)?);
        }
        let probs = slicing::assemble(&unit, axis, &slices)?;
        Ok(Segmentation::new(
            Geometry::Volume { dims, affine },
            probs,
            self.threshold,
        ))
    }
}

/// A diagonal affine of voxel spacings (1 where missing).
fn diag(s: &[f64]) -> [[f64; 4]; 4] {
    let g = |i: usize| s.get(i).copied().unwrap_or(1.0);
    [
        [g(0), 0.0, 0.0, 0.0],
        [0.0, g(1), 0.0, 0.0],
        [0.0, 0.0, g(2), 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
}
