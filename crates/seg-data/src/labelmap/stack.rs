//! A case as planes along its slice axis ([`Stack`]), resampled to the
//! plan's target spacing and oriented as the plan says.

use super::{integer_labels, SlicePlan};
use crate::error::{Error, Result};
use crate::resample::{resampled_size, resize_labels, resize_plane};
use crate::sample::Sample;
use crate::slicing;
use crate::volume::{Format, Volume};
use std::path::Path;

/// A case as planes along its slice axis: `channels` modalities of
/// `slices × height × width` values, and the class index of every voxel.
#[derive(Debug, Clone, PartialEq)]
pub struct Stack {
    pub id: String,
    pub channels: usize,
    pub slices: usize,
    pub height: usize,
    pub width: usize,
    /// `[channel][slice][row][col]`, normalised.
    pub image: Vec<f32>,
    /// `[slice][row][col]` class indices.
    pub label: Option<Vec<u8>>,
    /// Voxel size along (slice, row, col), mm (1 where unknown), after
    /// resampling.
    pub spacing: [f64; 3],
    /// The planes' (rows, cols) as stored, before resampling to the plan's
    /// target spacing (equal to `height`, `width` when none was needed).
    pub native: [usize; 2],
}

/// The shape of a volume as slicing sees it: `[d0, d1, d2]` (2D images:
/// `[1, h, w]`; a 2D NIfTI `[nx, ny]`: `[nx, ny, 1]`), or an error for other
/// shapes.
pub fn spatial_dims(vol: &Volume) -> Result<[usize; 3]> {
    match (vol.format, vol.shape.as_slice()) {
        (Format::Image, [h, w, _]) => Ok([1, *h, *w]),
        (Format::Nifti, [a, b]) => Ok([*a, *b, 1]),
        (_, [a, b, c]) | (_, [a, b, c, 1]) => Ok([*a, *b, *c]),
        _ => Err(Error::Shape {
            what: "a training case",
            expected: "a 2D image or a single-channel 3D volume",
            got: vol.shape.clone(),
        }),
    }
}

/// Voxel size along the three axes of [`spatial_dims`].
pub fn spatial_spacing(vol: &Volume) -> [f64; 3] {
    let g = |i: usize| {
        vol.spacing
            .get(i)
            .copied()
            .filter(|v| v.is_finite() && *v > 0.0)
            .unwrap_or(1.0)
    };
    match vol.format {
        Format::Image => [1.0, g(0), g(1)],
        _ => [g(0), g(1), g(2)],
    }
}

/// The planes of a single-channel volume along `axis` (2D images: their
/// luminance, one plane).
fn planes(vol: &Volume, axis: usize) -> Result<(Vec<f32>, [usize; 3])> {
    if vol.format == Format::Image {
        let [_, h, w] = spatial_dims(vol)?;
        let c = vol.shape[2];
        let lum: Vec<f32> = (0..h * w)
            .map(|i| {
                let p = &vol.values[i * c..(i + 1) * c];
                if c >= 3 {
                    0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]
                } else {
                    p[0]
                }
            })
            .collect();
        return Ok((lum, [1, h, w]));
    }
    if vol.shape.len() == 2 {
        // a 2D NIfTI: one plane along z
        let as3 = Volume {
            shape: spatial_dims(vol)?.to_vec(),
            ..vol.clone()
        };
        return planes(&as3, axis);
    }
    let n = slicing::slice_count(vol, axis)?;
    let mut out = Vec::new();
    let (mut h, mut w) = (0, 0);
    for k in 0..n {
        let (v, (hh, ww)) = slicing::slice(vol, axis, k, 0)?;
        (h, w) = (hh, ww);
        out.extend(v);
    }
    Ok((out, [n, h, w]))
}

impl Stack {
    /// Builds a case's stack: each image volume (one per modality) and the
    /// label cut into planes along `plan.axis` (ignored for 2D images),
    /// images normalised with `plan.norm` over the whole case, labels
    /// remapped by `plan.labels`, planes resampled to `plan.target_spacing`
    /// (images linearly, labels as one-hot maps). Shapes must agree; errors
    /// name the files.
    pub fn new(
        id: &str,
        images: &[(&Volume, &Path)],
        label: Option<(&Volume, &Path)>,
        plan: &SlicePlan,
    ) -> Result<Self> {
        let (labels, axis, norm) = (&plan.labels, plan.axis, &plan.norm);
        // volumes in the plan's orientation (the label follows its image's reordering)
        let mut label = label;
        let oriented: Vec<(Volume, &Path)>;
        let oriented_label: Volume;
        let images: Vec<(&Volume, &Path)> = match (&plan.orientation, images.first()) {
            (Some(codes), Some((first, _))) => match crate::orient::reorient(first, codes) {
                Some((_, how)) => {
                    oriented = images
                        .iter()
                        .map(|(v, p)| {
                            let (o, _) =
                                crate::orient::reorient(v, codes).unwrap_or(((*v).clone(), how));
                            (o, *p)
                        })
                        .collect();
                    if let Some((l, lp)) = label {
                        if spatial_dims(l).ok() == Some(how.dims) {
                            oriented_label = how.volume(l);
                            label = Some((&oriented_label, lp));
                        }
                    }
                    oriented.iter().map(|(v, p)| (v, *p)).collect()
                }
                None => images.to_vec(),
            },
            _ => images.to_vec(),
        };
        let images = images.as_slice();
        let (first, first_path) = images.first().ok_or(Error::Empty {
            what: "a case's image files",
        })?;
        let in_file = |path: &Path| {
            let path = path.to_path_buf();
            move |e| Error::InFile {
                path,
                error: Box::new(e),
            }
        };
        let dims = spatial_dims(first).map_err(in_file(first_path))?;
        let mut image = Vec::new();
        let mut shape = [0; 3];
        for (vol, path) in images {
            if spatial_dims(vol)? != dims {
                return Err(Error::ShapeMismatch {
                    what: format!("{} against {}", path.display(), first_path.display()),
                    a: vol.shape.clone(),
                    b: first.shape.clone(),
                });
            }
            let (mut v, s) = planes(vol, axis)?;
            norm.apply(&mut v).map_err(|e| Error::InFile {
                path: path.to_path_buf(),
                error: Box::new(e),
            })?;
            shape = s;
            image.extend(v);
        }
        let label = match label {
            Some((vol, path)) => {
                let ld = spatial_dims(vol)?;
                if ld != dims {
                    return Err(Error::ShapeMismatch {
                        what: format!("label {} against {}", path.display(), first_path.display()),
                        a: vol.shape.clone(),
                        b: first.shape.clone(),
                    });
                }
                let ints = integer_labels(vol, path)?;
                let as_vol = Volume {
                    values: ints.iter().map(|&v| v as f32).collect(),
                    shape: match vol.format {
                        Format::Image => vec![ld[1], ld[2], 1],
                        _ => vol.shape.clone(),
                    },
                    ..vol.clone()
                };
                let (planes, _) = planes(&as_vol, axis)?;
                let ints: Vec<i64> = planes.iter().map(|&v| v as i64).collect();
                Some(labels.to_classes(&ints, path)?)
            }
            None => None,
        };
        let sp = spatial_spacing(first);
        let mut spacing = if first.format == Format::Image {
            sp
        } else {
            let (a, b) = other_axes(axis);
            [sp[axis], sp[a], sp[b]]
        };
        let [slices, h, w] = shape;
        let mut stack = Self {
            id: id.to_string(),
            channels: images.len(),
            slices,
            height: h,
            width: w,
            image,
            label,
            spacing,
            native: [h, w],
        };
        if let Some(t) = plan.target_spacing {
            let (nh, nw) = resampled_size(h, w, [spacing[1], spacing[2]], t);
            if (nh, nw) != (h, w) {
                let (p, q) = (h * w, nh * nw);
                stack.image = stack
                    .image
                    .chunks(p)
                    .flat_map(|pl| resize_plane(pl, h, w, nh, nw))
                    .collect();
                stack.label = stack.label.map(|l| {
                    l.chunks(p)
                        .flat_map(|pl| resize_labels(pl, h, w, nh, nw, labels.classes()))
                        .collect()
                });
                spacing[1] *= h as f64 / nh as f64;
                spacing[2] *= w as f64 / nw as f64;
                stack.spacing = spacing;
                (stack.height, stack.width) = (nh, nw);
                debug_assert_eq!(stack.image.len(), stack.channels * slices * q);
            }
        }
        Ok(stack)
    }

    /// Per-class maps of one plane (`classes × height × width`, class-major)
    /// brought back to the stored plane size (`classes × native`).
    pub fn to_native(&self, maps: &[f32], classes: usize) -> Vec<f32> {
        let [nh, nw] = self.native;
        if [self.height, self.width] == self.native {
            return maps.to_vec();
        }
        let p = self.height * self.width;
        maps.chunks(p)
            .take(classes)
            .flat_map(|m| resize_plane(m, self.height, self.width, nh, nw))
            .collect()
    }

    /// Plane `k` with `context` neighbours on each side (edge planes
    /// repeated) as channels, modality-major: `channels × (2·context+1)`
    /// channels.
    pub fn sample(&self, k: usize, context: usize) -> Sample {
        let plane = self.height * self.width;
        let mut image = Vec::with_capacity(self.channels * (2 * context + 1) * plane);
        for c in 0..self.channels {
            for d in -(context as isize)..=(context as isize) {
                let j = (k as isize + d).clamp(0, self.slices as isize - 1) as usize;
                let off = (c * self.slices + j) * plane;
                image.extend_from_slice(&self.image[off..off + plane]);
            }
        }
        Sample {
            id: format!("{}#{k}", self.id),
            image,
            channels: self.channels * (2 * context + 1),
            height: self.height,
            width: self.width,
            label: self
                .label
                .as_ref()
                .map(|l| l[k * plane..(k + 1) * plane].to_vec()),
            fov: None,
        }
    }

    /// Every plane as a sample.
    pub fn samples(&self, context: usize) -> Vec<Sample> {
        (0..self.slices).map(|k| self.sample(k, context)).collect()
    }
}

/// The two axes other than `axis`, in increasing order (the plane's rows and
/// columns, as [`slicing::slice`] cuts them).
pub fn other_axes(axis: usize) -> (usize, usize) {
    match axis {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labelmap::{IntensityNorm, LabelSet};

    fn nifti(dims: [usize; 3], values: Vec<f32>) -> Volume {
        Volume::from_nifti_values(&dims, values, [1.0, 2.0, 3.0])
    }

    #[test]
    fn a_stack_cuts_planes_with_context_and_keeps_labels_aligned() {
        // 2×3×4 column-major volume whose value encodes (x, y, z)
        let dims = [2, 3, 4];
        let mut vals = Vec::new();
        let mut labs = Vec::new();
        for z in 0..4 {
            for y in 0..3 {
                for x in 0..2 {
                    vals.push((100 * x + 10 * y + z) as f32);
                    labs.push(if z == 1 { 5.0 } else { 0.0 });
                }
            }
        }
        let img = nifti(dims, vals);
        let lab = nifti(dims, labs);
        let set = LabelSet::new([0, 5]).unwrap();
        let p = Path::new("x.nii");
        let norm = IntensityNorm::Ct {
            lower: -1e9,
            upper: 1e9,
            mean: 0.0,
            std: 1.0,
        };
        let mut plan = SlicePlan {
            axis: 2,
            context: 1,
            norm,
            labels: set,
            target_spacing: None,
            orientation: None,
        };
        let s = Stack::new("c", &[(&img, p)], Some((&lab, p)), &plan).unwrap();
        assert_eq!((s.slices, s.height, s.width), (4, 2, 3));
        assert_eq!(s.spacing, [3.0, 1.0, 2.0]);
        let smp = s.sample(0, 1);
        assert_eq!(smp.channels, 3);
        // channel 0 repeats plane 0 at the border, channel 2 is plane 1
        assert_eq!(smp.image[0], 0.0);
        assert_eq!(smp.image[2 * 6 + 5], (100 + 20 + 1) as f32);
        assert_eq!(smp.label.as_ref().unwrap(), &vec![0; 6]);
        assert_eq!(s.sample(1, 0).label.unwrap(), vec![1; 6]);
        assert_eq!(s.native, [2, 3]);
        // resampled to 0.5 × 1 mm in-plane: rows (x, 1 mm) doubled, columns (y, 2 mm) doubled
        plan.target_spacing = Some([0.5, 1.0]);
        let r = Stack::new("c", &[(&img, p)], Some((&lab, p)), &plan).unwrap();
        assert_eq!((r.slices, r.height, r.width), (4, 4, 6));
        assert_eq!(r.native, [2, 3]);
        assert_eq!(r.spacing, [3.0, 0.5, 1.0]);
        assert_eq!(r.image.len(), 4 * 24);
        assert_eq!(r.sample(1, 0).label.unwrap(), vec![1; 24]);
        assert_eq!(r.sample(0, 0).label.unwrap(), vec![0; 24]);
        // per-class maps come back to the stored plane size
        let maps: Vec<f32> = (0..2 * 24).map(|i| (i / 24) as f32).collect();
        let back = r.to_native(&maps, 2);
        assert_eq!(back.len(), 2 * 6);
        assert!(back[..6].iter().all(|&v| v == 0.0) && back[6..].iter().all(|&v| v == 1.0));
    }
}
