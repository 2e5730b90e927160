//! Case reports summarised: every case completed to the classes of all
//! cases, means per class over cases and overall (the mean of the
//! per-class means), and the CSV table.

use super::{CaseReport, ClassMetrics};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// The means of one class over the cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassSummary {
    pub class: u32,
    /// Cases averaged for Dice, IoU and the volumes (all of them).
    pub cases: usize,
    pub dice: f64,
    pub iou: f64,
    /// Mean over the cases where both masks have voxels (`distance_cases`).
    pub hd95: Option<f64>,
    pub asd: Option<f64>,
    pub distance_cases: usize,
    /// Mean over the cases where either mask has voxels (`nsd_cases`).
    pub nsd: Option<f64>,
    pub nsd_cases: usize,
    /// Mean signed difference, predicted − reference.
    pub volume_diff_mm3: f64,
    pub volume_diff_ml: f64,
    /// Mean over the cases whose reference has voxels.
    pub relative_volume_diff: Option<f64>,
}

/// Means of the per-class means (each over the classes where it is defined);
/// all absent when there is no class.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MeanMetrics {
    pub dice: Option<f64>,
    pub iou: Option<f64>,
    pub hd95: Option<f64>,
    pub asd: Option<f64>,
    pub nsd: Option<f64>,
    pub volume_diff_mm3: Option<f64>,
    pub volume_diff_ml: Option<f64>,
    pub relative_volume_diff: Option<f64>,
}

/// The evaluation of a set of cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelSummary {
    /// The NSD tolerance, mm.
    pub tolerance_mm: f64,
    /// Every class of every case, by label value.
    pub classes: Vec<u32>,
    /// Each case with an entry for every class of `classes`.
    pub cases: Vec<CaseReport>,
    /// Means per class over the cases, in the order of `classes`.
    pub per_class: Vec<ClassSummary>,
    /// Means of `per_class`.
    pub mean: MeanMetrics,
}

fn mean(values: impl Iterator<Item = Option<f64>>) -> (Option<f64>, usize) {
    let (sum, n) = values
        .flatten()
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    ((n > 0).then(|| sum / n as f64), n)
}

/// Summarises case reports (e.g. of [`super::evaluate_labels`]): a class
/// absent from a case (neither map holds it) is added to it as both empty
/// (Dice 1, IoU 1, no distances), so every case lists every class; then the
/// means per class and overall. `tolerance_mm` is recorded as given.
pub fn summarise_labels(mut cases: Vec<CaseReport>, tolerance_mm: f64) -> LabelSummary {
    let classes: BTreeSet<u32> = cases
        .iter()
        .flat_map(|c| c.classes.iter().map(|m| m.class))
        .collect();
    for case in &mut cases {
        let have: BTreeSet<u32> = case.classes.iter().map(|m| m.class).collect();
        case.classes.extend(
            classes
                .difference(&have)
                .map(|&c| ClassMetrics::both_empty(c)),
        );
        case.classes.sort_by_key(|m| m.class);
    }
    let per_class: Vec<ClassSummary> = classes
        .iter()
        .map(|&class| {
            let of: Vec<&ClassMetrics> = cases
                .iter()
                .filter_map(|c| c.classes.iter().find(|m| m.class == class))
                .collect();
            let m = |f: &dyn Fn(&ClassMetrics) -> Option<f64>| mean(of.iter().map(|x| f(x)));
            let (hd95, distance_cases) = m(&|x| x.hd95);
            let vol = m(&|x| Some(x.volume_diff_mm3)).0.unwrap_or(0.0);
            ClassSummary {
                class,
                cases: of.len(),
                dice: m(&|x| Some(x.dice)).0.unwrap_or(1.0),
                iou: m(&|x| Some(x.iou)).0.unwrap_or(1.0),
                hd95,
                asd: m(&|x| x.asd).0,
                distance_cases,
                nsd: m(&|x| x.nsd).0,
                nsd_cases: m(&|x| x.nsd).1,
                volume_diff_mm3: vol,
                volume_diff_ml: vol / 1000.0,
                relative_volume_diff: m(&|x| x.relative_volume_diff).0,
            }
        })
        .collect();
    let m = |f: &dyn Fn(&ClassSummary) -> Option<f64>| mean(per_class.iter().map(f)).0;
    let mean = MeanMetrics {
        dice: m(&|c| Some(c.dice)),
        iou: m(&|c| Some(c.iou)),
        hd95: m(&|c| c.hd95),
        asd: m(&|c| c.asd),
        nsd: m(&|c| c.nsd),
        volume_diff_mm3: m(&|c| Some(c.volume_diff_mm3)),
        volume_diff_ml: m(&|c| Some(c.volume_diff_ml)),
        relative_volume_diff: m(&|c| c.relative_volume_diff),
    };
    LabelSummary {
        tolerance_mm,
        classes: classes.into_iter().collect(),
        cases,
        per_class,
        mean,
    }
}

/// The CSV header of [`LabelSummary::to_csv`].
pub const CSV_HEADER: &str = "id,class,dice,iou,hd95,asd,nsd,pred_voxels,ref_voxels,pred_volume_mm3,ref_volume_mm3,volume_diff_mm3,volume_diff_ml,relative_volume_diff";

fn num(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.6}")).unwrap_or_default()
}

/// A CSV field: quoted when it holds a comma, a quote or a line break.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl LabelSummary {
    /// One row per case and class, then one `mean` row per class (its
    /// per-class means; voxel and volume columns other than the
    /// differences empty) and a last `mean,all` row (the overall means).
    /// Absent values are empty fields; numbers have 6 decimals.
    pub fn to_csv(&self) -> String {
        let mut s = format!("{CSV_HEADER}\n");
        for case in &self.cases {
            for m in &case.classes {
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                    field(&case.id),
                    m.class,
                    num(Some(m.dice)),
                    num(Some(m.iou)),
                    num(m.hd95),
                    num(m.asd),
                    num(m.nsd),
                    m.pred_voxels,
                    m.ref_voxels,
                    num(Some(m.pred_volume_mm3)),
                    num(Some(m.ref_volume_mm3)),
                    num(Some(m.volume_diff_mm3)),
                    num(Some(m.volume_diff_ml)),
                    num(m.relative_volume_diff),
                );
            }
        }
        for c in &self.per_class {
            let _ = writeln!(
                s,
                "mean,{},{},{},{},{},{},,,,,{},{},{}",
                c.class,
                num(Some(c.dice)),
                num(Some(c.iou)),
                num(c.hd95),
                num(c.asd),
                num(c.nsd),
                num(Some(c.volume_diff_mm3)),
                num(Some(c.volume_diff_ml)),
                num(c.relative_volume_diff),
            );
        }
        let m = &self.mean;
        let _ = writeln!(
            s,
            "mean,all,{},{},{},{},{},,,,,{},{},{}",
            num(m.dice),
            num(m.iou),
            num(m.hd95),
            num(m.asd),
            num(m.nsd),
            num(m.volume_diff_mm3),
            num(m.volume_diff_ml),
            num(m.relative_volume_diff),
        );
        s
    }
}
