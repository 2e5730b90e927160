//! Multi-class label maps: integer labels read from any stored type
//! ([`integer_labels`]), the dataset's label values and their remapping to
//! class indices 0..K-1 and back ([`LabelSet`]), whole-case intensity
//! normalisation ([`IntensityNorm`]), and a case as planes along its slice
//! axis ([`Stack`]) from which 2D / 2.5D training samples are cut.

use crate::error::{Error, Result};
use crate::resample::{resampled_size, resize_labels, resize_plane};
use crate::sample::Sample;
use crate::slicing;
use crate::volume::{Format, Volume};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

/// Largest number of classes (class indices are stored as `u8`).
pub const MAX_CLASSES: usize = 255;

/// Largest distance of a stored label value from an integer (float labels
/// written by resampling tools carry rounding noise).
const INTEGER_TOLERANCE: f32 = 1e-3;

/// The label values of a dataset in class order: class `k` is stored as
/// `values[k]` in the files. The smallest value (0 when present) is class 0,
/// the background.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSet {
    pub values: Vec<i64>,
    /// Class names (from `dataset.json`), one per value, or empty.
    #[serde(default)]
    pub names: Vec<String>,
}

impl LabelSet {
    /// The set of `values` in increasing order.
    pub fn new(values: impl IntoIterator<Item = i64>) -> Result<Self> {
        let set: BTreeSet<i64> = values.into_iter().collect();
        if set.len() > MAX_CLASSES {
            return Err(Error::Setting {
                setting: "label values",
                expected: format!("at most {MAX_CLASSES} distinct values"),
                got: format!("{} values", set.len()),
            });
        }
        Ok(Self {
            values: set.into_iter().collect(),
            names: Vec::new(),
        })
    }

    /// Number of classes, background included.
    pub fn classes(&self) -> usize {
        self.values.len()
    }

    /// The class index of a stored value.
    pub fn index(&self, value: i64) -> Option<u8> {
        self.values.binary_search(&value).ok().map(|k| k as u8)
    }

    /// The stored value of class `k`.
    pub fn value(&self, k: u8) -> i64 {
        self.values[k as usize]
    }

    /// Class `k`'s name, or its value.
    pub fn name(&self, k: usize) -> String {
        self.names
            .get(k)
            .cloned()
            .unwrap_or_else(|| self.values[k].to_string())
    }

    /// Stored values to class indices; a value outside the set is an error
    /// naming `path`.
    pub fn to_classes(&self, labels: &[i64], path: &Path) -> Result<Vec<u8>> {
        labels
            .iter()
            .map(|&v| {
                self.index(v).ok_or_else(|| Error::UnknownLabel {
                    path: path.to_path_buf(),
                    value: v,
                    known: self.values.clone(),
                })
            })
            .collect()
    }
}

/// The integer labels of a label file read as a [`Volume`]: values in the
/// volume's own order, the first channel of a 2D image (palette images are
/// read as their colours by the image decoder: grey label PNGs are what
/// this reads). A non-integral or non-finite value is an error naming the
/// file and the voxel.
pub fn integer_labels(vol: &Volume, path: &Path) -> Result<Vec<i64>> {
    let (stride, n) = match (vol.format, vol.shape.as_slice()) {
        (Format::Image, [h, w, c]) => (*c, h * w),
        (_, shape) => (1, shape.iter().product()),
    };
    (0..n)
        .map(|i| {
            let v = vol.values[i * stride];
            let r = v.round();
            if !v.is_finite() || (v - r).abs() > INTEGER_TOLERANCE {
                return Err(Error::NonIntegralLabel {
                    path: path.to_path_buf(),
                    index: i,
                    value: v,
                });
            }
            Ok(r as i64)
        })
        .collect()
}

/// Reads a label file: a palette (indexed) PNG gives its palette indices,
/// not its colours; every other file is read as [`crate::read_any`] reads
/// it.
pub fn read_label(path: &Path) -> Result<Volume> {
    let is_png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if is_png {
        if let Some(v) = read_palette_png(path)? {
            return Ok(v);
        }
    }
    crate::read_any(path)
}

/// The indices of an indexed PNG as a one-channel 2D image, or `None` for
/// other PNGs.
fn read_palette_png(path: &Path) -> Result<Option<Volume>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut dec = png::Decoder::new(std::io::BufReader::new(file));
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut reader = dec.read_info().map_err(|e| Error::decode(path, "PNG", e))?;
    let info = reader.info();
    if info.color_type != png::ColorType::Indexed {
        return Ok(None);
    }
    let (w, h) = (info.width as usize, info.height as usize);
    let depth = info.bit_depth as usize;
    if (w as u64) * (h as u64) > crate::volume::max_elements() {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            what: "PNG",
            elements: (w as u128) * (h as u128),
            limit: crate::volume::max_elements(),
        });
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| Error::decode(path, "PNG", "image too large"))?;
    let mut buf = vec![0u8; size];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| Error::decode(path, "PNG", e))?;
    let line = frame.line_size;
    let mut values = Vec::with_capacity(w * h);
    for y in 0..h {
        let row = &buf[y * line..(y + 1) * line];
        for x in 0..w {
            let v = match depth {
                8 => row[x],
                4 => (row[x / 2] >> (4 * (1 - x % 2))) & 0x0F,
                2 => (row[x / 4] >> (2 * (3 - x % 4))) & 0x03,
                _ => (row[x / 8] >> (7 - x % 8)) & 0x01,
            };
            values.push(v as f32);
        }
    }
    let raw = crate::volume::Stats::of(values.iter().map(|&v| v as f64));
    Ok(Some(Volume {
        format: Format::Image,
        shape: vec![h, w, 1],
        layout: crate::volume::Layout::RowMajor,
        stored: crate::volume::StoredType::Uint8,
        raw,
        values,
        spacing: vec![1.0, 1.0],
        affine: None,
        window: None,
        transfer_syntax: None,
        photometric: Some("palette indices".into()),
    }))
}

/// The distinct values of `labels`.
pub fn distinct(labels: &[i64]) -> BTreeSet<i64> {
    let mut seen = BTreeSet::new();
    let mut last = None;
    for &v in labels {
        if last != Some(v) {
            seen.insert(v);
            last = Some(v);
        }
    }
    seen
}

/// Intensity normalisation of a whole case (before slicing, so all slices
/// of a volume share it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum IntensityNorm {
    /// Zero mean, unit variance over the case (MR and most modalities; also
    /// 2D images).
    ZscoreCase,
    /// CT: clip to [lower, upper] (the 0.5 / 99.5 percentiles of the
    /// training set's foreground), then z-score with the foreground's mean
    /// and standard deviation: the same mapping for every case.
    Ct {
        lower: f32,
        upper: f32,
        mean: f32,
        std: f32,
    },
}

impl IntensityNorm {
    /// Normalises `values` in place.
    pub fn apply(&self, values: &mut [f32]) -> Result<()> {
        match *self {
            Self::ZscoreCase => crate::intensity::zscore(values, None),
            Self::Ct {
                lower,
                upper,
                mean,
                std,
            } => {
                let s = if std > 0.0 { std } else { 1.0 };
                for v in values.iter_mut() {
                    *v = (v.clamp(lower, upper) - mean) / s;
                }
                Ok(())
            }
        }
    }
}

/// How a multi-class dataset's cases become network inputs, and how outputs
/// become label maps again: recorded in the training config and the bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlicePlan {
    /// Slices are cut perpendicular to this axis (0, 1, 2 of the NIfTI
    /// volume; ignored for 2D images).
    pub axis: usize,
    /// Neighbouring slices on each side as extra channels (2.5D).
    pub context: usize,
    pub norm: IntensityNorm,
    pub labels: LabelSet,
    /// In-plane (row, column) spacing the planes are resampled to before
    /// the network sees them (mm; pixels for 2D images without a physical
    /// size); `None`: each case at its own spacing.
    #[serde(default)]
    pub target_spacing: Option<[f64; 2]>,
    /// Axis codes (e.g. `"LAS"`) volumes are reordered to before slicing
    /// (the training set's usual orientation; see [`crate::orient`]);
    /// `None`: as stored.
    #[serde(default)]
    pub orientation: Option<String>,
}

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
                            oriented_label = Volume {
                                values: how.apply(&l.values),
                                shape: how.out_dims().to_vec(),
                                affine: l.affine.map(|a| how.affine(&a)),
                                spacing: how
                                    .perm
                                    .iter()
                                    .map(|&j| l.spacing.get(j).copied().unwrap_or(1.0))
                                    .collect(),
                                ..l.clone()
                            };
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

    fn nifti(dims: [usize; 3], values: Vec<f32>) -> Volume {
        Volume::from_nifti_values(&dims, values, [1.0, 2.0, 3.0])
    }

    #[test]
    fn labels_remap_both_ways_and_unknown_values_are_errors() {
        let set = LabelSet::new([600, 0, 200, 500, 200]).unwrap();
        assert_eq!(set.values, vec![0, 200, 500, 600]);
        let p = Path::new("l.nii");
        let c = set.to_classes(&[0, 500, 600, 200], p).unwrap();
        assert_eq!(c, vec![0, 2, 3, 1]);
        let back: Vec<i64> = c.iter().map(|&k| set.value(k)).collect();
        assert_eq!(back, vec![0, 500, 600, 200]);
        assert!(matches!(
            set.to_classes(&[7], p),
            Err(Error::UnknownLabel { value: 7, .. })
        ));
    }

    #[test]
    fn float_labels_must_be_integers() {
        let p = Path::new("l.nii");
        let ok = nifti([2, 1, 1], vec![2.0004, 1.0]);
        assert_eq!(integer_labels(&ok, p).unwrap(), vec![2, 1]);
        let bad = nifti([2, 1, 1], vec![0.0, 1.5]);
        assert!(matches!(
            integer_labels(&bad, p),
            Err(Error::NonIntegralLabel { index: 1, .. })
        ));
        let nan = nifti([2, 1, 1], vec![f32::NAN, 1.0]);
        assert!(integer_labels(&nan, p).is_err());
    }

    #[test]
    fn palette_pngs_give_their_indices_not_their_colours() {
        let dir = std::env::temp_dir().join(format!("seg-data-palette-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for depth in [png::BitDepth::Eight, png::BitDepth::Two] {
            let p = dir.join(format!("pal{}.png", depth as u8));
            let (w, h) = (5u32, 2u32);
            let idx: Vec<u8> = vec![0, 1, 2, 3, 0, 3, 2, 1, 0, 0];
            let data: Vec<u8> = if depth == png::BitDepth::Eight {
                idx.clone()
            } else {
                // two bits per pixel, rows padded to whole bytes
                idx.chunks(5)
                    .flat_map(|r| {
                        let mut b = [0u8; 2];
                        for (x, &v) in r.iter().enumerate() {
                            b[x / 4] |= v << (2 * (3 - x % 4));
                        }
                        b
                    })
                    .collect()
            };
            let mut enc = png::Encoder::new(
                std::io::BufWriter::new(std::fs::File::create(&p).unwrap()),
                w,
                h,
            );
            enc.set_color(png::ColorType::Indexed);
            enc.set_depth(depth);
            // colours whose red channels collide (a colour reading would merge classes)
            enc.set_palette(vec![0, 0, 0, 200, 10, 10, 200, 90, 10, 30, 30, 250]);
            let mut wr = enc.write_header().unwrap();
            wr.write_image_data(&data).unwrap();
            wr.finish().unwrap();
            let v = read_label(&p).unwrap();
            assert_eq!(v.shape, vec![2, 5, 1]);
            let got = integer_labels(&v, &p).unwrap();
            assert_eq!(
                got,
                idx.iter().map(|&x| x as i64).collect::<Vec<_>>(),
                "{depth:?}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
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
