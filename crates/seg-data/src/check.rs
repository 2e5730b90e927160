//! Checks of a labelled dataset before a long run ([`check_cases`]): every
//! case read in full (in parallel) and every problem listed — an unreadable
//! file, image/label shape or affine mismatch, NaN/Inf intensities,
//! non-integral or unexpected label values, empty labels, spacings far from
//! the dataset's median — with a summary of what the dataset holds.

use crate::labelmap::{distinct, integer_labels, spatial_dims, spatial_spacing};
use crate::spec::Case;
use crate::volume::Volume;
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

/// A case whose spacing differs from the median by more than this factor
/// on some axis is reported.
pub const SPACING_FACTOR: f64 = 3.0;

/// Tolerance on affine entries (mm) between an image and its label.
const AFFINE_TOLERANCE: f64 = 1e-3;

/// One problem found.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// A file could not be read (the reader's message).
    Unreadable { path: PathBuf, error: String },
    /// A case without a label file.
    NoLabel { case: String, image: PathBuf },
    /// Image and label (or two channel files) of different shapes.
    Shape {
        path: PathBuf,
        shape: Vec<usize>,
        other: PathBuf,
        other_shape: Vec<usize>,
    },
    /// Image and label placed differently in space.
    Affine { label: PathBuf, image: PathBuf },
    /// A non-finite intensity.
    NonFinite {
        path: PathBuf,
        index: usize,
        value: f32,
    },
    /// A label value that is not an integer.
    NonIntegral {
        path: PathBuf,
        index: usize,
        value: f32,
    },
    /// A label value `dataset.json` does not list.
    Unexpected {
        path: PathBuf,
        value: i64,
        allowed: Vec<i64>,
    },
    /// A label with background only.
    EmptyLabel { path: PathBuf },
    /// Spacing far from the dataset's median.
    Spacing {
        path: PathBuf,
        spacing: [f64; 3],
        median: [f64; 3],
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreadable { path, error } => write!(f, "{}: {error}", path.display()),
            Self::NoLabel { case, image } => {
                write!(f, "{}: case {case} has no label", image.display())
            }
            Self::Shape {
                path,
                shape,
                other,
                other_shape,
            } => write!(
                f,
                "{}: shape {shape:?}, but {} is {other_shape:?}",
                path.display(),
                other.display()
            ),
            Self::Affine { label, image } => write!(
                f,
                "{}: its affine (position/orientation in space) differs from {}'s",
                label.display(),
                image.display()
            ),
            Self::NonFinite { path, index, value } => write!(
                f,
                "{}: value {value} at index {index} is not finite",
                path.display()
            ),
            Self::NonIntegral { path, index, value } => write!(
                f,
                "{}: label value {value} at voxel {index} is not an integer",
                path.display()
            ),
            Self::Unexpected {
                path,
                value,
                allowed,
            } => write!(
                f,
                "{}: label value {value} is not one of the label values {allowed:?} of dataset.json",
                path.display()
            ),
            Self::EmptyLabel { path } => {
                write!(f, "{}: empty label (background only)", path.display())
            }
            Self::Spacing {
                path,
                spacing,
                median,
            } => write!(
                f,
                "{}: spacing {spacing:?} mm is more than {SPACING_FACTOR}× from the dataset's median {median:?}",
                path.display()
            ),
        }
    }
}

/// What a check found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    pub cases: usize,
    /// Whether the images are volumes (else 2D images).
    pub volumes: bool,
    /// Voxels per label value over all labels read.
    pub label_voxels: BTreeMap<i64, u64>,
    pub median_spacing: [f64; 3],
    pub problems: Vec<Problem>,
}

struct CaseResult {
    problems: Vec<Problem>,
    values: BTreeMap<i64, u64>,
    spacing: Option<(PathBuf, [f64; 3])>,
    volume: bool,
}

fn read(path: &std::path::Path, problems: &mut Vec<Problem>) -> Option<Volume> {
    match crate::labelmap::read_case_image(path) {
        Ok(v) => Some(v),
        Err(e) => {
            problems.push(Problem::Unreadable {
                path: path.to_path_buf(),
                error: e.to_string(),
            });
            None
        }
    }
}

fn check_case(c: &Case, allowed: &[i64]) -> CaseResult {
    let mut problems = Vec::new();
    let mut values = BTreeMap::new();
    let mut spacing = None;
    let mut first: Option<(Volume, PathBuf)> = None;
    let mut volume = false;
    for p in &c.images {
        let Some(v) = read(p, &mut problems) else {
            continue;
        };
        if let Some(i) = v.values.iter().position(|x| !x.is_finite()) {
            problems.push(Problem::NonFinite {
                path: p.clone(),
                index: i,
                value: v.values[i],
            });
        }
        match &first {
            Some((f, fp)) => {
                if spatial_dims(&v).ok() != spatial_dims(f).ok() {
                    problems.push(Problem::Shape {
                        path: p.clone(),
                        shape: v.shape.clone(),
                        other: fp.clone(),
                        other_shape: f.shape.clone(),
                    });
                }
            }
            None => {
                volume = v.format != crate::Format::Image;
                spacing = Some((p.clone(), spatial_spacing(&v)));
                first = Some((v, p.clone()));
            }
        }
    }
    let Some(lp) = &c.label else {
        problems.push(Problem::NoLabel {
            case: c.id.clone(),
            image: c.images[0].clone(),
        });
        return CaseResult {
            problems,
            values,
            spacing,
            volume,
        };
    };
    let label = match crate::labelmap::read_label(lp) {
        Ok(v) => Some(v),
        Err(e) => {
            problems.push(Problem::Unreadable {
                path: lp.clone(),
                error: e.to_string(),
            });
            None
        }
    };
    // a label in another axis order or direction than its image is aligned (as training does)
    let label = match (label, &first) {
        (Some(l), Some((img, _))) => Some(crate::labelmap::align_label(&l, img)),
        (l, _) => l,
    };
    if let Some(l) = label {
        if let Some((img, ip)) = &first {
            if spatial_dims(&l).ok() != spatial_dims(img).ok() {
                problems.push(Problem::Shape {
                    path: lp.clone(),
                    shape: l.shape.clone(),
                    other: ip.clone(),
                    other_shape: img.shape.clone(),
                });
            } else if let (Some(a), Some(b)) = (l.affine, img.affine) {
                let differs = (0..3)
                    .flat_map(|i| (0..4).map(move |j| (i, j)))
                    .any(|(i, j)| (a[i][j] - b[i][j]).abs() > AFFINE_TOLERANCE);
                if differs {
                    problems.push(Problem::Affine {
                        label: lp.clone(),
                        image: ip.clone(),
                    });
                }
            }
        }
        match integer_labels(&l, lp) {
            Err(crate::Error::NonIntegralLabel { index, value, .. }) => {
                problems.push(Problem::NonIntegral {
                    path: lp.clone(),
                    index,
                    value,
                })
            }
            Err(e) => problems.push(Problem::Unreadable {
                path: lp.clone(),
                error: e.to_string(),
            }),
            Ok(ints) => {
                for &v in &ints {
                    *values.entry(v).or_insert(0) += 1;
                }
                let set = distinct(&ints);
                if set.iter().all(|&v| v == 0) {
                    problems.push(Problem::EmptyLabel { path: lp.clone() });
                }
                if !allowed.is_empty() {
                    if let Some(&v) = set.iter().find(|v| !allowed.contains(v)) {
                        problems.push(Problem::Unexpected {
                            path: lp.clone(),
                            value: v,
                            allowed: allowed.to_vec(),
                        });
                    }
                }
            }
        }
    }
    CaseResult {
        problems,
        values,
        spacing,
        volume,
    }
}

/// Checks every case (read in full, in parallel). `allowed`: the label
/// values `dataset.json` lists (empty: any integer).
pub fn check_cases(cases: &[Case], allowed: &[i64]) -> Report {
    let results: Vec<CaseResult> = cases.par_iter().map(|c| check_case(c, allowed)).collect();
    let mut report = Report {
        cases: cases.len(),
        volumes: results.iter().any(|r| r.volume),
        ..Report::default()
    };
    let spacings: Vec<&(PathBuf, [f64; 3])> =
        results.iter().filter_map(|r| r.spacing.as_ref()).collect();
    if !spacings.is_empty() {
        report.median_spacing = [0, 1, 2].map(|a| {
            let mut v: Vec<f64> = spacings.iter().map(|s| s.1[a]).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        });
    }
    let m = report.median_spacing;
    for r in results {
        report.problems.extend(r.problems);
        for (k, n) in r.values {
            *report.label_voxels.entry(k).or_insert(0) += n;
        }
        if let Some((p, s)) = r.spacing {
            let far = (0..3).any(|a| {
                m[a] > 0.0 && (s[a] / m[a] > SPACING_FACTOR || m[a] / s[a] > SPACING_FACTOR)
            });
            if far {
                report.problems.push(Problem::Spacing {
                    path: p,
                    spacing: s,
                    median: m,
                });
            }
        }
    }
    report
}

impl Report {
    /// The label values seen.
    pub fn values(&self) -> BTreeSet<i64> {
        self.label_voxels.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::nifti::write_nifti;
    use std::path::Path;

    fn affine(s: [f64; 3]) -> [[f64; 4]; 4] {
        let mut a = [[0.0; 4]; 4];
        for i in 0..3 {
            a[i][i] = s[i];
        }
        a[3][3] = 1.0;
        a
    }

    fn case(
        dir: &Path,
        id: &str,
        img: (&[usize], Vec<f32>, [f64; 3]),
        lab: (&[usize], Vec<f32>, [f64; 3]),
    ) -> Case {
        let (ip, lp) = (
            dir.join(format!("{id}.nii")),
            dir.join(format!("{id}_seg.nii")),
        );
        write_nifti(&ip, img.0, &img.1, &affine(img.2)).unwrap();
        write_nifti(&lp, lab.0, &lab.1, &affine(lab.2)).unwrap();
        Case {
            id: id.into(),
            images: vec![ip],
            label: Some(lp),
            fov: None,
        }
    }

    #[test]
    fn every_problem_of_a_volume_dataset_is_listed() {
        let dir = std::env::temp_dir().join(format!("seg-data-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d: &[usize] = &[4, 4, 2];
        let sp = [1.0, 1.0, 2.0];
        let img = || vec![1.0f32; 32];
        let mut lab = vec![0.0f32; 32];
        lab[5] = 1.0;
        lab[6] = 2.0;
        let mut nan = img();
        nan[3] = f32::NAN;
        let mut frac = lab.clone();
        frac[7] = 1.5;
        let mut unexpected = lab.clone();
        unexpected[8] = 7.0;
        let cases = vec![
            case(&dir, "good", (d, img(), sp), (d, lab.clone(), sp)),
            case(&dir, "nan", (d, nan, sp), (d, lab.clone(), sp)),
            case(&dir, "frac", (d, img(), sp), (d, frac, sp)),
            case(&dir, "empty", (d, img(), sp), (d, vec![0.0; 32], sp)),
            case(&dir, "unexpected", (d, img(), sp), (d, unexpected, sp)),
            case(
                &dir,
                "shape",
                (d, img(), sp),
                (&[4, 4, 1], lab[..16].to_vec(), sp),
            ),
            case(
                &dir,
                "affine",
                (d, img(), sp),
                (d, lab.clone(), [1.0, 1.0, 2.5]),
            ),
            case(
                &dir,
                "spacing",
                (d, img(), [1.0, 1.0, 9.0]),
                (d, lab.clone(), [1.0, 1.0, 9.0]),
            ),
        ];
        let r = check_cases(&cases, &[0, 1, 2]);
        assert!(r.volumes);
        let found = |p: fn(&Problem) -> bool| r.problems.iter().filter(|x| p(x)).count();
        assert_eq!(
            found(|p| matches!(p, Problem::NonFinite { index: 3, .. })),
            1
        );
        assert_eq!(
            found(|p| matches!(p, Problem::NonIntegral { index: 7, .. })),
            1
        );
        assert_eq!(found(|p| matches!(p, Problem::EmptyLabel { .. })), 1);
        assert_eq!(
            found(|p| matches!(p, Problem::Unexpected { value: 7, .. })),
            1
        );
        assert_eq!(found(|p| matches!(p, Problem::Shape { .. })), 1);
        assert_eq!(found(|p| matches!(p, Problem::Affine { .. })), 1);
        assert_eq!(found(|p| matches!(p, Problem::Spacing { .. })), 1);
        assert_eq!(r.problems.len(), 7, "{:#?}", r.problems);
        // each names its file
        for p in &r.problems {
            assert!(p.to_string().contains(dir.to_str().unwrap()), "{p}");
        }
        assert_eq!(r.median_spacing, [1.0, 1.0, 2.0]);
        assert!(r.label_voxels[&2] >= 6);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
