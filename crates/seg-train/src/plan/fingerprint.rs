//! The dataset fingerprint: every labelled case read (a file or a DICOM
//! series; labels put on the image grid), its shape, spacing, orientation,
//! label values with their voxel counts and mean positions, and the
//! foreground intensities.

use crate::error::{Error, Result};
use rayon::prelude::*;
use seg_data::labelmap::{distinct, integer_labels, spatial_dims, spatial_spacing, LabelSet};
use seg_data::spec::{Case, DatasetSpec};
use seg_data::{Format, Volume};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Foreground voxels kept per case for the intensity statistics.
const FG_SAMPLES_PER_CASE: usize = 20_000;

/// What one training case looks like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseFingerprint {
    pub id: String,
    /// Spatial shape (2D images: `[1, h, w]`).
    pub shape: [usize; 3],
    pub spacing: [f64; 3],
    pub modalities: usize,
    /// Voxels per label value (in the dataset's value order).
    pub label_voxels: Vec<u64>,
    /// Volumes with an affine: its axis codes (e.g. `"LAS"`).
    #[serde(default)]
    pub orientation: Option<String>,
    /// Per label value: the mean position of its voxels along each axis of
    /// [`Self::shape`], as a fraction of the extent (0.5 = centred).
    #[serde(default)]
    pub label_centroids: Vec<[f64; 3]>,
}

/// Intensity statistics of the foreground voxels of the training set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IntensityStats {
    pub p00_5: f32,
    pub p99_5: f32,
    pub mean: f32,
    pub std: f32,
    pub min: f32,
    pub max: f32,
}

/// The dataset fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Volumes (NIfTI/DICOM) or 2D images.
    pub volumes: bool,
    /// Modality names from `dataset.json` (empty without one).
    pub modalities: Vec<String>,
    pub labels: LabelSet,
    pub cases: Vec<CaseFingerprint>,
    pub foreground: IntensityStats,
    /// Lowest value of any image (CT holds air near -1000 HU).
    pub min_value: f32,
}

/// A case's image volumes and label, read.
pub struct ReadCase {
    pub id: String,
    pub images: Vec<(Volume, std::path::PathBuf)>,
    pub label: (Volume, std::path::PathBuf),
}

/// Reads the labelled cases of `spec` (in parallel).
pub fn read_cases(cases: &[Case]) -> Result<Vec<ReadCase>> {
    cases
        .par_iter()
        .filter(|c| c.label.is_some())
        .map(|c| {
            let images = c
                .images
                .iter()
                .map(|p| Ok((seg_data::labelmap::read_case_image(p)?, p.clone())))
                .collect::<Result<Vec<_>>>()?;
            let lp = c.label.clone().expect("filtered");
            // labels stored in another axis order or direction are put on the image's grid
            let label = seg_data::labelmap::align_label(
                &seg_data::labelmap::read_label(&lp)?,
                &images[0].0,
            );
            Ok(ReadCase {
                id: c.id.clone(),
                images,
                label: (label, lp),
            })
        })
        .collect()
}

/// The label values of a dataset: every value in its label files, checked
/// against `dataset.json`'s when it lists them (a value the file does not
/// list is an error naming the label file).
pub fn discover_labels(cases: &[ReadCase], spec: &DatasetSpec) -> Result<LabelSet> {
    let per_case: Vec<BTreeSet<i64>> = cases
        .par_iter()
        .map(|c| Ok(distinct(&integer_labels(&c.label.0, &c.label.1)?)))
        .collect::<Result<_>>()?;
    let mut all = BTreeSet::new();
    for (c, s) in cases.iter().zip(&per_case) {
        if let DatasetSpec::Msd(m) = spec {
            if let Some(json) = &m.json {
                let listed = json.label_values();
                if let Some(v) = s.iter().find(|v| !listed.contains(&(**v as u32))) {
                    return Err(seg_data::Error::UnknownLabel {
                        path: c.label.1.clone(),
                        value: *v,
                        known: listed.iter().map(|&x| x as i64).collect(),
                    }
                    .into());
                }
            }
        }
        all.extend(s.iter().copied());
    }
    all.insert(0);
    let mut set = LabelSet::new(all)?;
    if let DatasetSpec::Msd(m) = spec {
        if let Some(json) = &m.json {
            set.names = set
                .values
                .iter()
                .map(|&v| {
                    json.labels
                        .iter()
                        .find(|l| l.values.contains(&(v as u32)))
                        .map(|l| l.name.clone())
                        .unwrap_or_else(|| v.to_string())
                })
                .collect();
        }
    }
    Ok(set)
}

fn percentile(sorted: &[f32], q: f64) -> f32 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q / 100.0).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The fingerprint of read cases.
pub fn fingerprint(cases: &[ReadCase], spec: &DatasetSpec) -> Result<Fingerprint> {
    if cases.is_empty() {
        return Err(Error::TooFewCases {
            found: 0,
            needed: 2,
        });
    }
    let labels = discover_labels(cases, spec)?;
    let per_case: Vec<(CaseFingerprint, Vec<f32>, f32)> = cases
        .par_iter()
        .map(|c| {
            let (img, img_path) = &c.images[0];
            let shape = spatial_dims(img).map_err(|e| seg_data::Error::InFile {
                path: img_path.clone(),
                error: Box::new(e),
            })?;
            let ints = integer_labels(&c.label.0, &c.label.1)?;
            let mut counts = vec![0u64; labels.classes()];
            let mut sums = vec![[0f64; 3]; labels.classes()];
            let ld = spatial_dims(&c.label.0).unwrap_or(shape);
            let image_label = c.label.0.format == Format::Image;
            for (i, &v) in ints.iter().enumerate() {
                if let Some(k) = labels.index(v) {
                    counts[k as usize] += 1;
                    let pos = if image_label {
                        [0, i / ld[2], i % ld[2]]
                    } else {
                        [i % ld[0], (i / ld[0]) % ld[1], i / (ld[0] * ld[1])]
                    };
                    for a in 0..3 {
                        sums[k as usize][a] += (pos[a] as f64 + 0.5) / ld[a] as f64;
                    }
                }
            }
            let centroids: Vec<[f64; 3]> = sums
                .iter()
                .zip(&counts)
                .map(|(s, &n)| s.map(|v| if n > 0 { v / n as f64 } else { 0.5 }))
                .collect();
            let stride = match img.format {
                Format::Image => img.shape[2],
                _ => 1,
            };
            let fg: Vec<usize> = (0..ints.len()).filter(|&i| ints[i] != 0).collect();
            let step = (fg.len() / FG_SAMPLES_PER_CASE).max(1);
            let vals: Vec<f32> = fg
                .iter()
                .step_by(step)
                .map(|&i| img.values.get(i * stride).copied().unwrap_or(0.0))
                .filter(|v| v.is_finite())
                .collect();
            let min = img
                .values
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .fold(f32::INFINITY, f32::min);
            Ok((
                CaseFingerprint {
                    id: c.id.clone(),
                    shape,
                    spacing: spatial_spacing(img),
                    modalities: c.images.len(),
                    label_voxels: counts,
                    orientation: match img.format {
                        Format::Image => None,
                        _ => img.affine.as_ref().map(seg_data::orient::axis_codes),
                    },
                    label_centroids: centroids,
                },
                vals,
                min,
            ))
        })
        .collect::<Result<_>>()?;
    let mut fg: Vec<f32> = per_case.iter().flat_map(|(_, v, _)| v.clone()).collect();
    fg.sort_by(f32::total_cmp);
    let (mean, std) = if fg.is_empty() {
        (0.0, 1.0)
    } else {
        let m = fg.iter().map(|&v| v as f64).sum::<f64>() / fg.len() as f64;
        let var = fg.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / fg.len() as f64;
        (m as f32, var.sqrt() as f32)
    };
    let min_value = per_case.iter().map(|p| p.2).fold(f32::INFINITY, f32::min);
    Ok(Fingerprint {
        volumes: cases[0].images[0].0.format != Format::Image,
        modalities: match spec {
            DatasetSpec::Msd(m) => m
                .json
                .as_ref()
                .map(|j| j.channels.clone())
                .unwrap_or_default(),
            _ => Vec::new(),
        },
        labels,
        cases: per_case.into_iter().map(|p| p.0).collect(),
        foreground: IntensityStats {
            p00_5: percentile(&fg, 0.5),
            p99_5: percentile(&fg, 99.5),
            mean,
            std,
            min: fg.first().copied().unwrap_or(0.0),
            max: fg.last().copied().unwrap_or(0.0),
        },
        min_value,
    })
}
