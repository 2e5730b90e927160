//! Multi-class evaluation of label maps (integer class maps, 2D or 3D), as
//! nnU-Net and MONAI users expect: per case and per class Dice, IoU, HD95,
//! ASD and normalised surface Dice in millimetres from the voxel spacing,
//! and the volume difference; means per class and overall.
//!
//! ```no_run
//! use seg_train::eval::{evaluate_labels, summarise_labels, LabelMap};
//! # fn main() -> seg_train::Result<()> {
//! let pred = LabelMap::read("pred/case_001.nii.gz".as_ref())?;
//! let gt = LabelMap::read("labelsTr/case_001.nii.gz".as_ref())?;
//! let case = evaluate_labels("case_001", &pred, &gt, 1.0)?;
//! let summary = summarise_labels(vec![case], 1.0);
//! println!("{}", summary.to_csv());
//! # Ok(()) }
//! ```
//!
//! Definitions (each class `c` is the binary mask `label == c`):
//! - **classes**: every non-zero label value found in the prediction or the
//!   reference of any case; 0 is background, not a class.
//! - **Dice** `2|P∩G| / (|P|+|G|)`, **IoU** `|P∩G| / |P∪G|`.
//! - **surface voxels**: foreground voxels with a face neighbour (4-connected
//!   in 2D, 6-connected in 3D) that is background or outside the image. An
//!   axis of size 1 has no neighbours along it, so a one-slice volume is
//!   evaluated as a 2D image.
//! - distances are Euclidean, in mm (the spacing: NIfTI `pixdim`, 1 for
//!   images), from each surface voxel of one mask to the nearest surface
//!   voxel of the other (exact distance transform, [`crate::metrics::squared_distance_to`]).
//! - **HD95**: the larger of the two directed 95th percentiles (linear
//!   interpolation between order statistics, numpy's default; MONAI's
//!   `compute_hausdorff_distance(percentile=95)`).
//! - **ASD** (average symmetric surface distance): the mean of both
//!   directions' distances together, `(Σ d(p,G) + Σ d(g,P)) / (|∂P| + |∂G|)`
//!   (MONAI's `compute_average_surface_distance(symmetric=True)`).
//! - **NSD** (normalised surface Dice, Nikolov et al. 2018) at tolerance τ:
//!   the share of both surfaces within τ of the other,
//!   `(#{p ∈ ∂P: d(p,G) ≤ τ} + #{g ∈ ∂G: d(g,P) ≤ τ}) / (|∂P| + |∂G|)`,
//!   counted in surface voxels (MONAI's `compute_surface_dice` without
//!   sub-voxels); a relative slack of 1e-9 absorbs rounding.
//! - **volume**: voxels × the voxel volume (mm³; for a 2D image the area,
//!   the missing axis counted as 1 mm); `volume_diff_mm3` = predicted −
//!   reference (`volume_diff_ml` = the same / 1000), `relative_volume_diff`
//!   = that difference / the reference volume.
//!
//! Empty masks:
//! - both empty: Dice 1, IoU 1, HD95/ASD/NSD absent (`None`, JSON `null`),
//!   volume difference 0, relative difference absent;
//! - one empty: Dice 0, IoU 0, HD95/ASD absent, NSD 0 (no voxel of the
//!   non-empty surface is within reach: what the formula gives, as MONAI
//!   and DeepMind's surface-distance do), relative volume difference absent
//!   when the reference is the empty one.
//!
//! Absent values are left out of the means, so a class missing from a case
//! adds Dice 1 to that class's mean but no distance; each summary says over
//! how many cases its distances were averaged.

mod summary;
mod surface;

pub use summary::{summarise_labels, ClassSummary, LabelSummary, MeanMetrics, CSV_HEADER};
pub use surface::{surface_metrics, surface_voxels, SurfaceMetrics};

use crate::error::{Error, Result};
use rayon::prelude::*;
use seg_data::{Format, Layout, Volume};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The largest label value: f32 holds every integer up to 2^24 exactly.
pub const MAX_LABEL: u32 = 1 << 24;

/// What [`LabelMap::new`] names as the file of a map built in memory.
const IN_MEMORY: &str = "(in memory)";

/// A label map: one non-negative integer class per voxel on a 3D grid.
///
/// The grid is row-major, last axis fastest: `dims = [z, y, x]`
/// (`[nz, ny, nx]` for a NIfTI file, whose x runs fastest; `[1, height,
/// width]` for a 2D image) with `spacing` in mm in the same order.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMap {
    /// The file it came from (or `(in memory)`), for messages and reports.
    pub source: PathBuf,
    /// The shape in the file's own convention (`[h, w, c]` for images,
    /// `[nx, ny, nz]` for NIfTI).
    pub file_shape: Vec<usize>,
    dims: [usize; 3],
    spacing: [f64; 3],
    labels: Vec<u32>,
}

fn check_spacing(source: &Path, spacing: [f64; 3]) -> Result<()> {
    for (axis, &s) in spacing.iter().enumerate() {
        if !(s.is_finite() && s > 0.0) {
            return Err(Error::LabelMap {
                path: source.to_path_buf(),
                field: [
                    "spacing (slowest axis)",
                    "spacing (middle axis)",
                    "spacing (fastest axis)",
                ][axis],
                expected: "a positive number of mm",
                got: s.to_string(),
            });
        }
    }
    Ok(())
}

impl LabelMap {
    /// A map from labels in row-major order over `dims` (see [`LabelMap`]).
    pub fn new(dims: [usize; 3], spacing: [f64; 3], labels: Vec<u32>) -> Result<Self> {
        let source = PathBuf::from(IN_MEMORY);
        let n: usize = dims.iter().product();
        if labels.len() != n {
            return Err(Error::LabelMap {
                path: source,
                field: "number of labels",
                expected: "the product of the dimensions",
                got: format!("{} for {dims:?}", labels.len()),
            });
        }
        if let Some(i) = labels.iter().position(|&l| l > MAX_LABEL) {
            return Err(Error::LabelValue {
                path: source,
                index: i,
                value: labels[i] as f32,
            });
        }
        check_spacing(&source, spacing)?;
        Ok(Self {
            source,
            file_shape: dims.to_vec(),
            dims,
            spacing,
            labels,
        })
    }

    /// Reads a label map (PNG or other 2D image, NIfTI `.nii`/`.nii.gz`, DICOM)
    /// with [`seg_data::labelmap::read_label`] (a palette PNG gives its
    /// indices, not its colours).
    pub fn read(path: &Path) -> Result<Self> {
        let v = seg_data::labelmap::read_label(path)?;
        Self::from_volume(&v, path)
    }

    /// The label map of a volume read from `source`: every value must be an
    /// integer from 0 to [`MAX_LABEL`], whatever type the file stores (uint8,
    /// int16, float32 …). Images must have one channel (spacing 1, 1);
    /// NIfTI volumes are 1D to 3D (trailing axes of size 1 allowed), with
    /// their `pixdim` spacing; DICOM frames are the slowest axis.
    pub fn from_volume(v: &Volume, source: &Path) -> Result<Self> {
        let bad = |field: &'static str, expected: &'static str, got: String| Error::LabelMap {
            path: source.to_path_buf(),
            field,
            expected,
            got,
        };
        let shape = &v.shape;
        let (dims, spacing) = match (v.format, v.layout) {
            (Format::Image, _) => {
                if shape.len() != 3 || shape[2] != 1 {
                    return Err(bad(
                        "channels",
                        "1 (a greyscale label image)",
                        format!("shape {shape:?}"),
                    ));
                }
                ([1, shape[0], shape[1]], [1.0, 1.0, 1.0])
            }
            (_, Layout::ColumnMajor) => {
                let spatial = shape.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1);
                if shape.is_empty() || spatial > 3 {
                    return Err(bad(
                        "shape",
                        "1 to 3 spatial axes (trailing axes of size 1 allowed)",
                        format!("{shape:?}"),
                    ));
                }
                let at = |i: usize| shape.get(i).copied().unwrap_or(1);
                let sp = |i: usize| v.spacing.get(i).copied().unwrap_or(1.0);
                ([at(2), at(1), at(0)], [sp(2), sp(1), sp(0)])
            }
            (_, Layout::RowMajor) => {
                // DICOM: [frames, rows, cols, samples], spacing [row, col] or [slice, row, col]
                if shape.len() != 4 || shape[3] != 1 {
                    return Err(bad(
                        "shape",
                        "[frames, rows, cols, 1]",
                        format!("{shape:?}"),
                    ));
                }
                let sp = match v.spacing.as_slice() {
                    [r, c] => [1.0, *r, *c],
                    [s, r, c] => [*s, *r, *c],
                    other => return Err(bad("spacing", "2 or 3 values", format!("{other:?}"))),
                };
                ([shape[0], shape[1], shape[2]], sp)
            }
        };
        check_spacing(source, spacing)?;
        let n: usize = dims.iter().product();
        if v.values.len() != n {
            return Err(bad(
                "number of values",
                "the product of the shape",
                format!("{} for {shape:?}", v.values.len()),
            ));
        }
        let is_label =
            |x: f32| x.is_finite() && x >= 0.0 && x.fract() == 0.0 && x <= MAX_LABEL as f32;
        if let Some(i) = v.values.par_iter().position_first(|&x| !is_label(x)) {
            return Err(Error::LabelValue {
                path: source.to_path_buf(),
                index: i,
                value: v.values[i],
            });
        }
        // column-major [nx, ny, nz] is row-major [nz, ny, nx]: the order stays
        let labels = v.values.par_iter().map(|&x| x as u32).collect();
        Ok(Self {
            source: source.to_path_buf(),
            file_shape: shape.clone(),
            dims,
            spacing,
            labels,
        })
    }

    /// The same map with another spacing (e.g. a 2D image's pixel size).
    pub fn with_spacing(mut self, spacing: [f64; 3]) -> Result<Self> {
        check_spacing(&self.source, spacing)?;
        self.spacing = spacing;
        Ok(self)
    }

    /// `[z, y, x]` (see [`LabelMap`]).
    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }

    /// Spacing in mm, `[z, y, x]`.
    pub fn spacing(&self) -> [f64; 3] {
        self.spacing
    }

    /// The labels, row-major over [`dims`](Self::dims).
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The non-zero labels present.
    pub fn classes(&self) -> BTreeSet<u32> {
        self.labels
            .par_chunks(4096)
            .fold(BTreeSet::new, |mut s, chunk| {
                let mut last = 0;
                for &l in chunk {
                    if l != last {
                        s.insert(l);
                        last = l;
                    }
                }
                s
            })
            .reduce(BTreeSet::new, |mut a, b| {
                a.extend(b);
                a
            })
            .into_iter()
            .filter(|&l| l != 0)
            .collect()
    }
}

/// The metrics of one class in one case (see the [module](self) for the
/// definitions and the empty-mask conventions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// The label value.
    pub class: u32,
    pub dice: f64,
    pub iou: f64,
    /// mm; absent unless both masks have voxels.
    pub hd95: Option<f64>,
    /// Average symmetric surface distance, mm; absent unless both masks have voxels.
    pub asd: Option<f64>,
    /// Normalised surface Dice at the tolerance; absent when both are empty.
    pub nsd: Option<f64>,
    pub pred_voxels: u64,
    pub ref_voxels: u64,
    pub pred_volume_mm3: f64,
    pub ref_volume_mm3: f64,
    /// Predicted − reference volume.
    pub volume_diff_mm3: f64,
    pub volume_diff_ml: f64,
    /// `volume_diff_mm3 / ref_volume_mm3`; absent when the reference is empty.
    pub relative_volume_diff: Option<f64>,
}

impl ClassMetrics {
    /// The metrics of a class that neither mask holds.
    pub fn both_empty(class: u32) -> Self {
        Self::from_counts(class, 0, 0, 0, 1.0, None)
    }

    fn from_counts(
        class: u32,
        pred: u64,
        truth: u64,
        both: u64,
        voxel_mm3: f64,
        surface: Option<SurfaceMetrics>,
    ) -> Self {
        let (dice, iou) = if pred + truth == 0 {
            (1.0, 1.0)
        } else {
            (
                2.0 * both as f64 / (pred + truth) as f64,
                both as f64 / (pred + truth - both) as f64,
            )
        };
        let (pv, rv) = (pred as f64 * voxel_mm3, truth as f64 * voxel_mm3);
        let diff = pv - rv;
        Self {
            class,
            dice,
            iou,
            hd95: surface.and_then(|s| s.hd95),
            asd: surface.and_then(|s| s.asd),
            nsd: surface.and_then(|s| s.nsd),
            pred_voxels: pred,
            ref_voxels: truth,
            pred_volume_mm3: pv,
            ref_volume_mm3: rv,
            volume_diff_mm3: diff,
            volume_diff_ml: diff / 1000.0,
            relative_volume_diff: (truth > 0).then(|| diff / rv),
        }
    }
}

/// The metrics of one case: every class found in either map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseReport {
    pub id: String,
    /// The prediction's file.
    pub pred: PathBuf,
    /// The reference's file.
    pub gt: PathBuf,
    /// The reference's shape in its file's convention.
    pub shape: Vec<usize>,
    /// The reference's voxel spacing in mm, `[z, y, x]` (see [`LabelMap`]),
    /// used for every distance and volume.
    pub spacing: [f64; 3],
    /// One entry per class, by label value.
    pub classes: Vec<ClassMetrics>,
}

/// Counts and the bounding box of one class.
#[derive(Clone, Copy)]
struct ClassStats {
    pred: u64,
    truth: u64,
    both: u64,
    lo: [usize; 3],
    hi: [usize; 3],
}

impl ClassStats {
    const EMPTY: Self = Self {
        pred: 0,
        truth: 0,
        both: 0,
        lo: [usize::MAX; 3],
        hi: [0; 3],
    };

    fn bound(&mut self, lo: [usize; 3], hi: [usize; 3]) {
        self.lo = std::array::from_fn(|k| self.lo[k].min(lo[k]));
        self.hi = std::array::from_fn(|k| self.hi[k].max(hi[k]));
    }

    fn grow(&mut self, at: [usize; 3]) {
        self.bound(at, at);
    }

    fn merge(&mut self, o: &Self) {
        self.pred += o.pred;
        self.truth += o.truth;
        self.both += o.both;
        self.bound(o.lo, o.hi);
    }
}

fn check_tolerance(tolerance_mm: f64) -> Result<()> {
    if tolerance_mm.is_finite() && tolerance_mm >= 0.0 {
        Ok(())
    } else {
        Err(Error::Setting {
            setting: "the surface Dice tolerance (mm)".into(),
            expected: "a number ≥ 0".into(),
            got: tolerance_mm.to_string(),
        })
    }
}

/// Evaluates a predicted label map against its reference: every class
/// present in either. The two must have the same grid
/// ([`Error::LabelShape`]) and spacing within 0.1 % ([`Error::LabelSpacing`]);
/// distances and volumes use the reference's spacing. `tolerance_mm` is the
/// NSD tolerance (≥ 0).
///
/// One pass over the voxels counts every class and finds its bounding box;
/// each class's surfaces and distance transforms then cover only that box
/// (exact: every surface voxel of both masks lies inside it).
pub fn evaluate_labels(
    id: &str,
    pred: &LabelMap,
    gt: &LabelMap,
    tolerance_mm: f64,
) -> Result<CaseReport> {
    check_tolerance(tolerance_mm)?;
    if pred.dims != gt.dims {
        return Err(Error::LabelShape {
            pred: pred.source.clone(),
            gt: gt.source.clone(),
            pred_shape: pred.file_shape.clone(),
            gt_shape: gt.file_shape.clone(),
        });
    }
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-3 * a.abs().max(b.abs());
    if (0..3).any(|k| !close(pred.spacing[k], gt.spacing[k])) {
        return Err(Error::LabelSpacing {
            pred: pred.source.clone(),
            gt: gt.source.clone(),
            pred_spacing: pred.spacing.to_vec(),
            gt_spacing: gt.spacing.to_vec(),
        });
    }
    // sorted: a BTreeSet's order
    let classes: Vec<u32> = pred.classes().union(&gt.classes()).copied().collect();
    let stats = class_stats(pred, gt, &classes);
    let spacing = gt.spacing;
    let voxel_mm3 = spacing.iter().product::<f64>();
    let mut out = Vec::with_capacity(classes.len());
    for (&c, st) in classes.iter().zip(&stats) {
        let surface = if st.pred > 0 && st.truth > 0 {
            Some(class_surface(pred, gt, c, st, spacing, tolerance_mm))
        } else if st.pred + st.truth > 0 {
            Some(SurfaceMetrics::ONE_EMPTY)
        } else {
            None
        };
        out.push(ClassMetrics::from_counts(
            c, st.pred, st.truth, st.both, voxel_mm3, surface,
        ));
    }
    Ok(CaseReport {
        id: id.to_string(),
        pred: pred.source.clone(),
        gt: gt.source.clone(),
        shape: gt.file_shape.clone(),
        spacing,
        classes: out,
    })
}

/// Reads both files and evaluates them ([`LabelMap::read`], [`evaluate_labels`]).
pub fn evaluate_label_files(
    id: &str,
    pred: &Path,
    gt: &Path,
    tolerance_mm: f64,
) -> Result<CaseReport> {
    check_tolerance(tolerance_mm)?;
    evaluate_labels(
        id,
        &LabelMap::read(pred)?,
        &LabelMap::read(gt)?,
        tolerance_mm,
    )
}

/// Counts and bounding boxes of every class (sorted `classes`), rows in parallel.
fn class_stats(pred: &LabelMap, gt: &LabelMap, classes: &[u32]) -> Vec<ClassStats> {
    let [_, n1, n2] = pred.dims;
    if n2 == 0 || classes.is_empty() {
        return vec![ClassStats::EMPTY; classes.len()];
    }
    // label → index in `classes`, remembering the last lookup (runs of one label)
    let index = |cache: &mut (u32, usize), l: u32| -> usize {
        if cache.0 != l {
            *cache = (l, classes.binary_search(&l).unwrap_or(usize::MAX));
        }
        cache.1
    };
    pred.labels
        .par_chunks(n2)
        .zip(gt.labels.par_chunks(n2))
        .enumerate()
        .fold(
            || {
                (
                    vec![ClassStats::EMPTY; classes.len()],
                    (0, usize::MAX),
                    (0, usize::MAX),
                )
            },
            |(mut st, mut cp, mut cg), (row, (p, g))| {
                let (z, y) = (row / n1, row % n1);
                for x in 0..n2 {
                    let (a, b) = (p[x], g[x]);
                    if a != 0 {
                        let s = &mut st[index(&mut cp, a)];
                        s.pred += 1;
                        s.both += (a == b) as u64;
                        s.grow([z, y, x]);
                    }
                    if b != 0 {
                        let s = &mut st[index(&mut cg, b)];
                        s.truth += 1;
                        s.grow([z, y, x]);
                    }
                }
                (st, cp, cg)
            },
        )
        .map(|(st, _, _)| st)
        .reduce(
            || vec![ClassStats::EMPTY; classes.len()],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    x.merge(y);
                }
                a
            },
        )
}

/// HD95, ASD and NSD of class `c` on its bounding box.
fn class_surface(
    pred: &LabelMap,
    gt: &LabelMap,
    c: u32,
    st: &ClassStats,
    spacing: [f64; 3],
    tolerance_mm: f64,
) -> SurfaceMetrics {
    let [_, n1, n2] = pred.dims;
    let (lo, hi) = (st.lo, st.hi);
    let crop = [hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1];
    // an axis the image does not extend along has no neighbours, whatever the crop
    let flat = pred.dims.map(|d| d == 1);
    let mask = |m: &LabelMap| -> Vec<bool> {
        let mut out = vec![false; crop.iter().product()];
        out.par_chunks_mut(crop[2])
            .enumerate()
            .for_each(|(r, row)| {
                let (z, y) = (lo[0] + r / crop[1], lo[1] + r % crop[1]);
                let start = (z * n1 + y) * n2 + lo[2];
                for (o, &l) in row.iter_mut().zip(&m.labels[start..start + crop[2]]) {
                    *o = l == c;
                }
            });
        out
    };
    let (pm, gm) = (mask(pred), mask(gt));
    surface::metrics_in_box(&pm, &gm, crop, spacing, flat, tolerance_mm)
}
