//! The automatic plan, as nnU-Net does it: a [`Fingerprint`] of the
//! training set (per-case shape and spacing, label values and how often each
//! occurs, intensities inside the foreground, the modality), and the
//! [`Plan`] decided from it — normalisation, slice axis and 2D/2.5D context,
//! patch and batch size, network, loss, sampling, augmentation, validation
//! share — each decision with its reason. `seg-cli train` turns a plan into a
//! [`crate::trainer::TrainConfig`] (flags override any decision) and writes it
//! to `plan.json` in the run folder and into the bundle.
//!
//! Rules (see docs/ARCHITECTURE.md, "The plan"):
//! - **normalisation**: CT (named so by `dataset.json`, or volumes holding
//!   Hounsfield-like values down to air) → clip to the foreground's 0.5 /
//!   99.5 percentiles over the training set, then z-score with the
//!   foreground's mean and deviation; everything else → per-case z-score.
//! - **slice axis**: for anisotropic volumes (largest median spacing ≥ 3 ×
//!   the smallest, e.g. 1.25 × 1.25 × 7.7 mm) the axis of largest spacing,
//!   so slices are the well-resolved planes; else the third (NIfTI z) axis.
//! - **context**: volumes get one neighbouring slice on each side as extra
//!   channels (2.5D); 2D images none.
//! - **dims** ([`volumetric`]): near-isotropic volumes whose median case one
//!   3D patch of at most 96³ voxels covers (sides rounded up to multiples of
//!   8) train a 3D network on such patches (batch ≈ 200k voxels, 2–8; a
//!   third of the patches on a foreground class; flips along each axis
//!   where no structure keeps a side; 3D sliding window with 50 % overlap);
//!   everything else 2.5D. Hippocampus (36 × 35 × 50 at 1 mm): 3D, withheld
//!   mean Dice 0.887 against 2.5D's 0.878 in the same 20 minutes
//!   (docs/results.md).
//! - **in-plane spacing**: planes are resampled to the median in-plane
//!   spacing (images linearly, labels as one-hot maps; predictions back to
//!   each input's grid), coarsened when the median plane would exceed
//!   [`MAX_PLANE_SIDE`] pixels.
//! - **patch**: the median of the resampled planes' larger side, rounded to the
//!   nearest multiple of 16, between 32 and 256 (larger planes are cropped
//!   in training and tiled at inference; padding a plane to the next
//!   multiple instead can double the pixels computed). **batch**: about
//!   8 × 128² pixels per batch, between 4 and 16; BatchNorm (InstanceNorm,
//!   nnU-Net's choice, is 2.5–3.5× slower per step in seg's kernels).
//! - **network**: ResUNet base 16 (the networks' 16–256 widths), K outputs;
//!   **loss**: cross-entropy + soft Dice (softmax); **sampling**: half the
//!   patches centred on a foreground class drawn uniformly among classes.
//! - **validation**: a seeded 20 % of the cases (1–50), whole volumes.

mod config;
mod fingerprint;
pub mod volumetric;

pub use config::STEPS_PER_EPOCH;

pub use fingerprint::{
    discover_labels, fingerprint, read_cases, CaseFingerprint, Fingerprint, IntensityStats,
    ReadCase,
};

use crate::error::Result;
use seg_data::augment::AugmentConfig;
use seg_data::labelmap::{IntensityNorm, LabelSet, SlicePlan};
use seg_data::resample::resampled_size;
use seg_data::spec::DatasetSpec;
use seg_models::NormKind;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Largest median plane side (pixels) the plan trains at: finer data is
/// resampled to a coarser in-plane spacing (at 2 CPU cores and minutes of
/// budget a 1024² plane costs 4× a 512² one per pass).
pub const MAX_PLANE_SIDE: usize = 512;

/// Everything the plan decides, with the reasons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub labels: LabelSet,
    pub norm: IntensityNorm,
    /// Slices are cut perpendicular to this axis of the volume.
    pub slice_axis: usize,
    /// Neighbouring slices on each side given as channels (2.5D when > 0).
    pub context: usize,
    /// Input channels: modalities × (2·context + 1).
    pub in_channels: usize,
    pub patch: usize,
    pub batch: usize,
    pub model: String,
    pub base: usize,
    /// Normalisation layers (BatchNorm; `--norm` overrides).
    #[serde(default)]
    pub layer_norm: NormKind,
    pub val_cases: usize,
    pub median_shape: [usize; 3],
    pub median_spacing: [f64; 3],
    /// In-plane (row, column) spacing planes are resampled to (`None`:
    /// each case at its own, `--target-spacing native`).
    #[serde(default)]
    pub target_spacing: Option<[f64; 2]>,
    /// Volumes: axis codes cases and inputs are reordered to.
    #[serde(default)]
    pub orientation: Option<String>,
    /// Mirroring augmentation along the planes' rows and columns (and
    /// rot90 when both): off along an axis where the structures keep a
    /// side.
    #[serde(default = "both_mirrors")]
    pub mirror: [bool; 2],
    /// 2 (2D / 2.5D, `context` neighbours) or 3 (a 3D network).
    #[serde(default = "two")]
    pub dims: usize,
    /// The 3D patch (depth = the slice axis, rows, columns) and batch: what
    /// `dims = 3` trains with (recorded for 2.5D plans too, for `--dims 3`).
    #[serde(default)]
    pub patch3: Option<[usize; 3]>,
    #[serde(default)]
    pub batch3: usize,
    /// Whether flips along the slice axis are allowed (3D augmentation).
    #[serde(default = "yes")]
    pub mirror_depth: bool,
    /// One line per decision: what and why.
    pub reasons: Vec<String>,
}

fn two() -> usize {
    2
}

fn yes() -> bool {
    true
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    v[v.len() / 2]
}

/// Whether the data is CT: named so, or volumes holding air (≤ -900).
pub fn is_ct(fp: &Fingerprint) -> bool {
    let named = fp
        .modalities
        .iter()
        .any(|m| m.trim().eq_ignore_ascii_case("ct"));
    named || (fp.modalities.is_empty() && fp.volumes && fp.min_value <= -900.0)
}

/// The training set's most common orientation (volumes with affines), and
/// the fingerprint with every case's shape and spacing in it.
fn orient_cases(fp: &Fingerprint, reasons: &mut Vec<String>) -> (Option<String>, Fingerprint) {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for c in &fp.cases {
        if let Some(o) = &c.orientation {
            *counts.entry(o.as_str()).or_default() += 1;
        }
    }
    let Some((codes, k)) = counts
        .iter()
        .max_by_key(|(_, &k)| k)
        .map(|(c, k)| (c.to_string(), *k))
    else {
        return (None, fp.clone());
    };
    let mut out = fp.clone();
    for c in &mut out.cases {
        if let Some(r) = c
            .orientation
            .as_deref()
            .and_then(|o| seg_data::orient::Reorient::between(o, &codes, c.shape))
        {
            c.shape = r.perm.map(|j| c.shape[j]);
            c.spacing = r.perm.map(|j| c.spacing[j]);
            for m in &mut c.label_centroids {
                let old = *m;
                *m = [0, 1, 2].map(|t| {
                    let v = old[r.perm[t]];
                    if r.flip[t] {
                        1.0 - v
                    } else {
                        v
                    }
                });
            }
        }
    }
    reasons.push(if k == fp.cases.len() {
        format!("orientation {codes}: every case; inputs stored otherwise (e.g. DICOM series) are reordered to it")
    } else {
        format!(
            "orientation {codes}: {k} of {} cases; the others, and inputs stored otherwise (e.g. DICOM series), are reordered to it",
            fp.cases.len()
        )
    });
    (Some(codes), out)
}

fn both_mirrors() -> [bool; 2] {
    [true, true]
}

/// Largest distance of a class's mean position from the centre of the
/// plane (as a fraction of the extent) for which mirroring along that axis
/// stays on: structures further off-centre keep a side (left/right organs,
/// apex/base), and mirrored copies would teach the network that either side
/// is the same class.
pub const MIRROR_CENTRE_TOLERANCE: f64 = 0.1;

/// Whether mirroring along axes `pa` (rows) and `pb` (columns) keeps the
/// structures where they occur: each foreground class's mean position over
/// the training set within [`MIRROR_CENTRE_TOLERANCE`] of the centre.
fn mirror_decision(fp: &Fingerprint, pa: usize, pb: usize) -> ([bool; 2], Vec<String>) {
    let mut notes = Vec::new();
    let mut out = [true, true];
    for (slot, axis) in [(0, pa), (1, pb)] {
        let off = off_centre(fp, axis, if slot == 0 { "rows" } else { "columns" });
        out[slot] = off.is_empty();
        notes.extend(off);
    }
    (out, notes)
}

/// The classes whose mean position along `axis` is more than
/// [`MIRROR_CENTRE_TOLERANCE`] off the centre, as notes naming the axis.
fn off_centre(fp: &Fingerprint, axis: usize, name: &str) -> Vec<String> {
    let mut notes = Vec::new();
    for class in 1..fp.labels.classes() {
        let (mut s, mut n) = (0f64, 0u64);
        for c in &fp.cases {
            let v = c.label_voxels.get(class).copied().unwrap_or(0);
            if let Some(m) = c.label_centroids.get(class) {
                s += m[axis] * v as f64;
                n += v;
            }
        }
        if n == 0 {
            continue;
        }
        let m = s / n as f64;
        if (m - 0.5).abs() > MIRROR_CENTRE_TOLERANCE {
            notes.push(format!(
                "{} sits at {:.2} of the {name}",
                fp.labels.name(class),
                m
            ));
        }
    }
    notes
}

/// Decides the plan from a fingerprint.
pub fn plan(fp: &Fingerprint) -> Plan {
    let mut reasons = Vec::new();
    let (orientation, fp) = orient_cases(fp, &mut reasons);
    let fp = &fp;
    let n = fp.cases.len();
    let median_shape = [0, 1, 2].map(|a| median(fp.cases.iter().map(|c| c.shape[a]).collect()));
    let median_spacing = [0, 1, 2].map(|a| median(fp.cases.iter().map(|c| c.spacing[a]).collect()));
    let norm = if is_ct(fp) {
        let f = fp.foreground;
        reasons.push(format!(
            "normalisation: CT — clip to the foreground's 0.5/99.5 percentiles [{:.1}, {:.1}], z-score with its mean {:.1} and sd {:.1}",
            f.p00_5, f.p99_5, f.mean, f.std
        ));
        IntensityNorm::Ct {
            lower: f.p00_5,
            upper: f.p99_5,
            mean: f.mean,
            std: f.std,
        }
    } else {
        reasons.push("normalisation: per-case z-score (not CT)".into());
        IntensityNorm::ZscoreCase
    };
    let (slice_axis, context) = if fp.volumes {
        let (lo, hi) = median_spacing
            .iter()
            .fold((f64::INFINITY, 0f64), |(l, h), &s| (l.min(s), h.max(s)));
        let axis = if hi >= 3.0 * lo {
            let a = (0..3)
                .max_by(|&a, &b| median_spacing[a].total_cmp(&median_spacing[b]))
                .expect("three axes");
            reasons.push(format!(
                "slice axis {a}: anisotropic median spacing {median_spacing:?} mm (largest ≥ 3 × smallest)"
            ));
            a
        } else {
            reasons.push(format!(
                "slice axis 2: near-isotropic median spacing {median_spacing:?} mm"
            ));
            2
        };
        reasons.push("2.5D: one neighbouring slice on each side as extra channels".into());
        (axis, 1)
    } else {
        reasons.push("2D images: no slice context".into());
        (2, 0)
    };
    let (pa, pb) = if fp.volumes {
        seg_data::labelmap::other_axes(slice_axis)
    } else {
        (1, 2)
    };
    // in-plane target spacing: the median (nnU-Net's 2D), coarsened when
    // the median plane would still exceed MAX_PLANE_SIDE
    let mut target = [
        median(fp.cases.iter().map(|c| c.spacing[pa]).collect()),
        median(fp.cases.iter().map(|c| c.spacing[pb]).collect()),
    ];
    let sides_at = |t: [f64; 2]| -> Vec<(usize, usize)> {
        fp.cases
            .iter()
            .map(|c| resampled_size(c.shape[pa], c.shape[pb], [c.spacing[pa], c.spacing[pb]], t))
            .collect()
    };
    let median_side = |t: [f64; 2]| median(sides_at(t).iter().map(|&(h, w)| h.max(w)).collect());
    let native_side = median_side(target);
    if native_side > MAX_PLANE_SIDE {
        let f = native_side as f64 / MAX_PLANE_SIDE as f64;
        target = target.map(|t| t * f);
    }
    let resample = fp
        .cases
        .iter()
        .zip(sides_at(target))
        .any(|(c, hw)| hw != (c.shape[pa], c.shape[pb]));
    // recorded even when every training case is at it: inputs at another
    // spacing are resampled at prediction
    let target_spacing = Some(target);
    let unit = if fp.volumes { " mm" } else { " px" };
    reasons.push(if !resample {
        format!("in-plane spacing {target:.3?}{unit}: every training case is at it (inputs at another spacing are resampled to it)")
    } else if native_side > MAX_PLANE_SIDE {
        format!(
            "in-plane spacing {target:.3?}{unit}: the median spacing would give planes of {native_side} px, more than {MAX_PLANE_SIDE} for a CPU budget; coarsened so the median plane is {MAX_PLANE_SIDE} px (predictions are resampled back to each input's grid)"
        )
    } else {
        format!(
            "in-plane spacing {target:.3?}{unit}: the median over cases; planes resampled to it (images linearly, labels as one-hot maps; predictions back to each input's grid)"
        )
    });
    let (mirror, notes) = mirror_decision(fp, pa, pb);
    let depth_notes = off_centre(fp, slice_axis, "slices");
    let mirror_depth = depth_notes.is_empty();
    reasons.push(match mirror {
        [true, true] => "augmentation: flips and 90° rotations (every structure near the centre of the planes: no side to keep), small rotations and scaling, intensity changes".into(),
        _ => format!(
            "augmentation: no flips along the {}{} (structures keep a side: {}), small rotations and scaling, intensity changes",
            match mirror {
                [false, false] => "rows or columns",
                [false, true] => "rows",
                _ => "columns",
            },
            ", no 90° rotations",
            notes.join(", ")
        ),
    });
    let mut sides: Vec<usize> = sides_at(target).iter().map(|&(h, w)| h.max(w)).collect();
    sides.sort_unstable();
    let side = sides[sides.len() / 2];
    let patch = ((side + 8) / 16).saturating_mul(16).clamp(32, 256);
    reasons.push(format!(
        "patch {patch}: the planes' median larger side is {side} px, rounded to the nearest multiple of 16 (the networks pool 4 times) within 32–256; larger planes are cropped in training and tiled at inference"
    ));
    let batch = ((8 * 128 * 128) / (patch * patch)).clamp(4, 16);
    let modalities = fp.cases[0].modalities;
    // 3D or 2.5D (plan/volumetric.rs): the median case as (depth along
    // the slice axis, rows, columns) at the target spacing
    let median_case = {
        let (h, w) = median_pair(&sides_at(target));
        [median_shape[slice_axis], h, w]
    };
    let (three_d, why) = volumetric::decide(fp, median_spacing, median_case);
    let (patch3, _) = volumetric::patch_for(median_case);
    let batch3 = volumetric::batch_for(patch3);
    let (dims, context) = if three_d { (3, 0) } else { (2, context) };
    if three_d {
        reasons.retain(|r| !r.starts_with("2.5D") && !r.starts_with("patch "));
        reasons.push(format!(
            "{why}; patch {patch3:?}, batch {batch3} (about {} voxels per step); flips along depth {}",
            volumetric::BATCH_VOXELS,
            if mirror_depth {
                "on".to_string()
            } else {
                format!("off ({})", depth_notes.join(", "))
            }
        ));
    } else {
        if fp.volumes {
            reasons.push(why);
        }
        reasons.push(format!("batch {batch}: about 8 × 128² pixels per step"));
    }
    let in_channels = modalities * (2 * context + 1);
    let val_cases = (n / 5).clamp(1, 50).min(n.saturating_sub(1)).max(1);
    reasons.push(format!(
        "validation: {val_cases} of {n} cases (20 %, whole volumes), the rest for training"
    ));
    let freq: Vec<String> = (0..fp.labels.classes())
        .map(|k| {
            let v: u64 = fp.cases.iter().map(|c| c.label_voxels[k]).sum();
            format!("{}: {v}", fp.labels.name(k))
        })
        .collect();
    reasons.push(format!(
        "{} classes ({}); loss: cross-entropy + soft Dice; {} of the patches centred on a class drawn uniformly among the foreground classes",
        fp.labels.classes(),
        freq.join(", "),
        if three_d { "a third (nnU-Net's 3D)" } else { "half" }
    ));
    // InstanceNorm is built as GroupNorm here and measured 2.5–3.5× slower
    // per step than the fused BatchNorm (ResUNet 16, 2 × 256², Zen 4): in a
    // time budget that costs more than small-batch statistics do
    let layer_norm = NormKind::Batch;
    let model = if three_d { "unet" } else { "resunet" };
    reasons.push(if three_d {
        "network: 3D unet base 16 (16–256 channels; nnU-Net's 3D full-resolution network is a plain U-Net), batch normalisation".into()
    } else {
        "network: resunet base 16 (16–256 channels), batch normalisation (--norm instance is 2.5–3.5× slower per step here)".into()
    });
    Plan {
        labels: fp.labels.clone(),
        norm,
        slice_axis,
        context,
        in_channels,
        patch,
        batch: if three_d { batch3 } else { batch },
        model: model.into(),
        base: 16,
        layer_norm,
        val_cases,
        median_shape,
        median_spacing,
        target_spacing,
        orientation,
        mirror,
        dims,
        patch3: Some(patch3),
        batch3,
        mirror_depth,
        reasons,
    }
}

/// The median of each side of (rows, columns) pairs.
fn median_pair(v: &[(usize, usize)]) -> (usize, usize) {
    (
        median(v.iter().map(|p| p.0).collect()),
        median(v.iter().map(|p| p.1).collect()),
    )
}

impl Plan {
    /// `base` with the plan's mirroring decision: flips only along the
    /// axes it allows, 90° rotations only when both are.
    pub fn augment(&self, base: AugmentConfig) -> AugmentConfig {
        let both = self.mirror == [true, true];
        AugmentConfig {
            flip_v: base.flip_v && self.mirror[0],
            flip_h: base.flip_h && self.mirror[1],
            rot90_p: if both { base.rot90_p } else { 0.0 },
            ..base
        }
    }

    /// How cases are sliced, normalised and labelled.
    pub fn slice_plan(&self) -> SlicePlan {
        SlicePlan {
            axis: self.slice_axis,
            context: self.context,
            norm: self.norm,
            labels: self.labels.clone(),
            target_spacing: self.target_spacing,
            orientation: self.orientation.clone(),
        }
    }
}

/// Whether a fingerprinted dataset trains through the multi-class path
/// (volumes, or more than two label values); binary 2D image sets keep the
/// binary path (sigmoid, threshold chosen on validation).
pub fn needs_label_maps(fp: &Fingerprint) -> bool {
    fp.volumes || fp.labels.classes() > 2
}

/// Reads a dataset's labelled cases, fingerprints them and plans.
pub fn plan_dataset(spec: &DatasetSpec) -> Result<(Plan, Fingerprint)> {
    let cases = spec.cases()?.cases;
    let read = read_cases(&cases)?;
    let fp = fingerprint(&read, spec)?;
    Ok((plan(&fp), fp))
}

/// Writes `plan.json` (the plan and the fingerprint) atomically.
pub fn write_plan(path: &Path, plan: &Plan, fp: &Fingerprint) -> Result<()> {
    let json = serde_json::json!({ "plan": plan, "fingerprint": fp });
    seg_data::io::atomic_write(
        path,
        serde_json::to_string_pretty(&json)
            .expect("plan serialises")
            .as_bytes(),
    )?;
    Ok(())
}
