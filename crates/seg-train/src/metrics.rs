//! Segmentation metrics on one image — probabilities in [0, 1], a {0, 1}
//! ground truth and an optional field of view (only pixels inside it count;
//! a pixel is positive when prob ≥ threshold) — and their summaries over
//! images: the mean of per-image scores and the pooled scores of the summed
//! counts. The definitions of `shared/reference/losses.py`.

use serde::{Deserialize, Serialize};

/// Confusion counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub tn: u64,
}

impl std::ops::Add for Confusion {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            tp: self.tp + o.tp,
            fp: self.fp + o.fp,
            fn_: self.fn_ + o.fn_,
            tn: self.tn + o.tn,
        }
    }
}

/// Counts inside `fov` (all pixels when `None`) at `threshold`.
pub fn confusion(prob: &[f32], gt: &[u8], fov: Option<&[u8]>, threshold: f32) -> Confusion {
    let mut c = Confusion::default();
    for i in 0..prob.len().min(gt.len()) {
        if fov.is_some_and(|f| f[i] == 0) {
            continue;
        }
        match (prob[i] >= threshold, gt[i] != 0) {
            (true, true) => c.tp += 1,
            (true, false) => c.fp += 1,
            (false, true) => c.fn_ += 1,
            (false, false) => c.tn += 1,
        }
    }
    c
}

/// Ratios from counts. Where a denominator is 0 the score is 1.0 (nothing to
/// find, nothing wrongly found).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Scores {
    pub dice: f64,
    pub iou: f64,
    pub sensitivity: f64,
    pub specificity: f64,
    pub precision: f64,
    pub accuracy: f64,
}

impl Confusion {
    /// The count-based scores.
    pub fn scores(&self) -> Scores {
        let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
        let (tp, fp, fn_, tn) = (self.tp, self.fp, self.fn_, self.tn);
        Scores {
            dice: ratio(2 * tp, 2 * tp + fp + fn_),
            iou: ratio(tp, tp + fp + fn_),
            sensitivity: ratio(tp, tp + fn_),
            specificity: ratio(tn, tn + fp),
            precision: ratio(tp, tp + fp),
            accuracy: ratio(tp + tn, tp + fp + fn_ + tn),
        }
    }
}

/// The (prob, label) pairs inside the FOV.
pub fn in_fov(prob: &[f32], gt: &[u8], fov: Option<&[u8]>) -> (Vec<f32>, Vec<u8>) {
    (0..prob.len().min(gt.len()))
        .filter(|&i| fov.is_none_or(|f| f[i] != 0))
        .map(|i| (prob[i], gt[i]))
        .unzip()
}

/// Confusion counts at every threshold k / bins (k = 1 .. bins − 1) at
/// once, for choosing a threshold: each pixel is counted once, in the bin
/// ⌊p · bins⌋ (the last bin holding p = 1), and a pixel is positive at
/// threshold k / bins when its bin is ≥ k.
#[derive(Debug, Clone)]
pub struct ThresholdSweep {
    /// Foreground / background pixels per bin.
    pos: Vec<u64>,
    neg: Vec<u64>,
}

impl ThresholdSweep {
    /// An empty sweep over `bins` bins (at least 1).
    pub fn new(bins: usize) -> Self {
        let bins = bins.max(1);
        Self {
            pos: vec![0; bins],
            neg: vec![0; bins],
        }
    }

    /// Counts (probability, label) pairs, e.g. those of [`in_fov`].
    pub fn add(&mut self, prob: &[f32], gt: &[u8]) {
        let bins = self.pos.len();
        for (&p, &g) in prob.iter().zip(gt) {
            let b = ((p * bins as f32) as usize).min(bins - 1);
            if g != 0 {
                self.pos[b] += 1;
            } else {
                self.neg[b] += 1;
            }
        }
    }

    /// (threshold, counts) for each threshold, from the highest down.
    pub fn confusions(&self) -> impl Iterator<Item = (f32, Confusion)> + '_ {
        let bins = self.pos.len();
        let mut c = Confusion {
            tp: 0,
            fp: 0,
            fn_: self.pos.iter().sum(),
            tn: self.neg.iter().sum(),
        };
        (1..bins).rev().map(move |k| {
            c.tp += self.pos[k];
            c.fn_ -= self.pos[k];
            c.fp += self.neg[k];
            c.tn -= self.neg[k];
            (k as f32 / bins as f32, c)
        })
    }
}

/// Exact area under the ROC curve (ties count one half, = Mann-Whitney U);
/// `None` when only one class is present.
pub fn auc_roc(prob: &[f32], gt: &[u8]) -> Option<f64> {
    let n = prob.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| prob[a].total_cmp(&prob[b]));
    let n_pos = gt.iter().filter(|&&g| g != 0).count() as f64;
    let n_neg = n as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return None;
    }
    let mut pos_rank_sum = 0.0f64;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && prob[order[j + 1]] == prob[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if gt[k] != 0 {
                pos_rank_sum += rank;
            }
        }
        i = j + 1;
    }
    Some((pos_rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg))
}

/// Average precision: the step sum of precision over recall increments, each
/// distinct score one threshold (scikit-learn's definition); `None` without
/// positives.
pub fn average_precision(prob: &[f32], gt: &[u8]) -> Option<f64> {
    let n = prob.len();
    let total_pos = gt.iter().filter(|&&g| g != 0).count();
    if total_pos == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| prob[b].total_cmp(&prob[a]));
    let (mut tp, mut ap, mut prev_recall) = (0usize, 0.0f64, 0.0f64);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && prob[order[j + 1]] == prob[order[i]] {
            j += 1;
        }
        tp += order[i..=j].iter().filter(|&&k| gt[k] != 0).count();
        let seen = j + 1;
        let precision = tp as f64 / seen as f64;
        let recall = tp as f64 / total_pos as f64;
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
        i = j + 1;
    }
    Some(ap)
}

/// Scratch buffers of [`edt_1d`], reused from line to line.
#[derive(Default)]
struct EdtScratch {
    v: Vec<usize>,
    z: Vec<f64>,
    src: Vec<f64>,
}

/// Squared Euclidean distance transform along one line (Felzenszwalb &
/// Huttenlocher), with sample spacing `s`: `f` holds squared distances
/// (∞ where unknown); the result replaces `f`.
fn edt_1d(f: &mut [f64], s: f64, scratch: &mut EdtScratch) {
    let n = f.len();
    // skip leading infinities; a line with none known stays ∞
    let Some(first) = f.iter().position(|x| x.is_finite()) else {
        return;
    };
    let EdtScratch { v, z, src } = scratch;
    v.clear();
    v.resize(n, 0);
    z.clear();
    z.resize(n + 1, 0.0);
    let mut k = 0usize;
    let pos = |q: usize| q as f64 * s;
    v[0] = first;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    for q in first + 1..n {
        if !f[q].is_finite() {
            continue;
        }
        loop {
            let p = v[k];
            let sq = ((f[q] + pos(q) * pos(q)) - (f[p] + pos(p) * pos(p)))
                / (2.0 * pos(q) - 2.0 * pos(p));
            if sq <= z[k] && k > 0 {
                k -= 1;
                continue;
            }
            if sq <= z[k] {
                // k == 0 and the new parabola dominates everywhere
                v[0] = q;
                z[1] = f64::INFINITY;
                break;
            }
            k += 1;
            v[k] = q;
            z[k] = sq;
            z[k + 1] = f64::INFINITY;
            break;
        }
    }
    src.clear();
    src.extend_from_slice(f);
    let mut j = 0;
    for (q, fq) in f.iter_mut().enumerate() {
        while z[j + 1] < pos(q) {
            j += 1;
        }
        let d = pos(q) - pos(v[j]);
        *fq = d * d + src[v[j]];
    }
}

/// Squared Euclidean distance (physical units²) from every voxel of a
/// row-major grid `dims` (`[slowest, middle, fastest]`, e.g. `[z, y, x]`;
/// a 2D image is `[1, height, width]`) to the nearest set voxel of `mask`,
/// with the spacing of each axis in `spacing` (same order); ∞ everywhere
/// when the mask is empty. Exact and separable (one Felzenszwalb &
/// Huttenlocher pass per axis), O(voxels), the lines of each pass in
/// parallel.
///
/// # Panics
/// When `mask.len()` is not the product of `dims` (a caller's bug).
pub fn squared_distance_to(mask: &[bool], dims: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    use rayon::prelude::*;
    let n: usize = dims.iter().product();
    assert_eq!(
        mask.len(),
        n,
        "mask of {} values for dims {dims:?}",
        mask.len()
    );
    let mut d: Vec<f64> = mask
        .par_iter()
        .map(|&m| if m { 0.0 } else { f64::INFINITY })
        .collect();
    if n == 0 {
        return d;
    }
    // a single slice is the same grid as [rows, 1, cols]: its row pass then
    // runs as the (parallel) slowest-axis pass
    let (dims, spacing) = if dims[0] == 1 {
        ([dims[1], 1, dims[2]], [spacing[1], spacing[0], spacing[2]])
    } else {
        (dims, spacing)
    };
    let [n0, n1, n2] = dims;
    let plane = n1 * n2;
    if n2 > 1 {
        d.par_chunks_mut(n2)
            .for_each_init(EdtScratch::default, |s, row| edt_1d(row, spacing[2], s));
    }
    if n1 > 1 {
        d.par_chunks_mut(plane).for_each_init(
            || (EdtScratch::default(), vec![0f64; n1]),
            |(s, col), slice| {
                for x in 0..n2 {
                    for (y, c) in col.iter_mut().enumerate() {
                        *c = slice[y * n2 + x];
                    }
                    edt_1d(col, spacing[1], s);
                    for (y, c) in col.iter().enumerate() {
                        slice[y * n2 + x] = *c;
                    }
                }
            },
        );
    }
    if n0 > 1 {
        // through a transposed copy, so that every line is contiguous
        let mut t = vec![0f64; n];
        t.par_chunks_mut(n0)
            .enumerate()
            .for_each_init(EdtScratch::default, |s, (k, line)| {
                for (z, v) in line.iter_mut().enumerate() {
                    *v = d[z * plane + k];
                }
                edt_1d(line, spacing[0], s);
            });
        d.par_chunks_mut(plane).enumerate().for_each(|(z, slice)| {
            for (k, v) in slice.iter_mut().enumerate() {
                *v = t[k * n0 + z];
            }
        });
    }
    d
}

/// Euclidean distance (physical units) from every pixel to the nearest set
/// pixel of `mask` (h × w), spacing `[row, col]`.
pub fn distance_to(mask: &[bool], h: usize, w: usize, spacing: [f64; 2]) -> Vec<f64> {
    squared_distance_to(mask, [1, h, w], [1.0, spacing[0], spacing[1]])
        .into_iter()
        .map(f64::sqrt)
        .collect()
}

/// Boundary pixels: set pixels with a 4-neighbour outside the mask (or on the image edge).
fn surface(mask: &[bool], h: usize, w: usize) -> Vec<bool> {
    let mut s = vec![false; mask.len()];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if !mask[i] {
                continue;
            }
            let edge = y == 0 || x == 0 || y == h - 1 || x == w - 1;
            s[i] = edge || !mask[i - 1] || !mask[i + 1] || !mask[i - w] || !mask[i + w];
        }
    }
    s
}

fn percentile95(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let pos = 0.95 * (v.len() - 1) as f64;
    let (i, f) = (pos.floor() as usize, pos - pos.floor());
    let j = (i + 1).min(v.len() - 1);
    v[i] * (1.0 - f) + v[j] * f
}

/// 95th-percentile Hausdorff distance between the surfaces of two masks, in
/// the units of `spacing` (`[row, col]`): the larger of the two directed 95th
/// percentiles (MONAI's convention). Both empty: 0. One empty: `None`
/// (undefined; reported as null).
pub fn hd95(pred: &[bool], gt: &[bool], h: usize, w: usize, spacing: [f64; 2]) -> Option<f64> {
    let (sp, sg) = (surface(pred, h, w), surface(gt, h, w));
    let (np, ng) = (sp.iter().any(|&b| b), sg.iter().any(|&b| b));
    match (np, ng) {
        (false, false) => return Some(0.0),
        (true, false) | (false, true) => return None,
        _ => {}
    }
    let to_gt = distance_to(&sg, h, w, spacing);
    let to_pred = distance_to(&sp, h, w, spacing);
    let a: Vec<f64> = (0..sp.len()).filter(|&i| sp[i]).map(|i| to_gt[i]).collect();
    let b: Vec<f64> = (0..sg.len())
        .filter(|&i| sg[i])
        .map(|i| to_pred[i])
        .collect();
    Some(percentile95(a).max(percentile95(b)))
}

/// Every metric of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageMetrics {
    pub id: String,
    #[serde(flatten)]
    pub counts: Confusion,
    #[serde(flatten)]
    pub scores: Scores,
    pub auc_roc: Option<f64>,
    pub average_precision: Option<f64>,
    pub hd95: Option<f64>,
}

/// Computes every metric of one image (`h × w`).
#[allow(clippy::too_many_arguments)]
pub fn image_metrics(
    id: &str,
    prob: &[f32],
    gt: &[u8],
    fov: Option<&[u8]>,
    h: usize,
    w: usize,
    threshold: f32,
    spacing: [f64; 2],
) -> ImageMetrics {
    let counts = confusion(prob, gt, fov, threshold);
    let (p, g) = in_fov(prob, gt, fov);
    let inside = |i: usize| fov.is_none_or(|f| f[i] != 0);
    let pred: Vec<bool> = (0..h * w)
        .map(|i| inside(i) && prob[i] >= threshold)
        .collect();
    let truth: Vec<bool> = (0..h * w).map(|i| inside(i) && gt[i] != 0).collect();
    ImageMetrics {
        id: id.to_string(),
        counts,
        scores: counts.scores(),
        auc_roc: auc_roc(&p, &g),
        average_precision: average_precision(&p, &g),
        hd95: hd95(&pred, &truth, h, w, spacing),
    }
}

/// Means over images and pooled scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub threshold: f32,
    pub images: Vec<ImageMetrics>,
    /// Mean of each per-image score (images where a score is undefined are skipped for it).
    pub mean: serde_json::Value,
    /// Scores of the summed counts, and AUC/AP over all pixels together.
    pub pooled: serde_json::Value,
}

fn mean_of(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Summarises per-image metrics; `pooled_auc` / `pooled_ap` come from all
/// FOV pixels of all images together (computed by the caller, which has them).
pub fn summarise(
    threshold: f32,
    images: Vec<ImageMetrics>,
    pooled_auc: Option<f64>,
    pooled_ap: Option<f64>,
) -> Summary {
    let total = images
        .iter()
        .fold(Confusion::default(), |a, m| a + m.counts);
    let s = total.scores();
    let m = |f: &dyn Fn(&ImageMetrics) -> Option<f64>| mean_of(images.iter().map(f));
    let mean = serde_json::json!({
        "dice": m(&|x| Some(x.scores.dice)),
        "iou": m(&|x| Some(x.scores.iou)),
        "sensitivity": m(&|x| Some(x.scores.sensitivity)),
        "specificity": m(&|x| Some(x.scores.specificity)),
        "precision": m(&|x| Some(x.scores.precision)),
        "accuracy": m(&|x| Some(x.scores.accuracy)),
        "auc_roc": m(&|x| x.auc_roc),
        "average_precision": m(&|x| x.average_precision),
        "hd95": m(&|x| x.hd95),
    });
    let pooled = serde_json::json!({
        "tp": total.tp, "fp": total.fp, "fn": total.fn_, "tn": total.tn,
        "dice": s.dice, "iou": s.iou, "sensitivity": s.sensitivity, "specificity": s.specificity,
        "precision": s.precision, "accuracy": s.accuracy,
        "auc_roc": pooled_auc, "average_precision": pooled_ap,
    });
    Summary {
        threshold,
        images,
        mean,
        pooled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_sweep_counts_as_confusion_does() {
        // probabilities away from the bin edges, some outside the FOV
        let n = 500;
        let prob: Vec<f32> = (0..n)
            .map(|i| ((i * 37) % 100) as f32 / 100.0 + 0.003)
            .collect();
        let gt: Vec<u8> = (0..n).map(|i| ((i * 11) % 7 < 3) as u8).collect();
        let fov: Vec<u8> = (0..n).map(|i| (i % 9 != 0) as u8).collect();
        let (p, g) = in_fov(&prob, &gt, Some(&fov));
        let mut sweep = ThresholdSweep::new(100);
        sweep.add(&p[..200], &g[..200]);
        sweep.add(&p[200..], &g[200..]);
        let all: Vec<(f32, Confusion)> = sweep.confusions().collect();
        assert_eq!(all.len(), 99);
        assert_eq!(all[0].0, 0.99);
        for (t, c) in all {
            assert_eq!(c, confusion(&prob, &gt, Some(&fov), t), "threshold {t}");
        }
    }

    #[test]
    fn distance_transform_matches_brute_force_with_anisotropic_spacing() {
        let (h, w) = (13, 17);
        let mask: Vec<bool> = (0..h * w).map(|i| (i * 7919) % 23 == 0).collect();
        let sp = [0.5, 1.3];
        let d = distance_to(&mask, h, w, sp);
        for (i, &di) in d.iter().enumerate() {
            let (y, x) = ((i / w) as f64, (i % w) as f64);
            let brute = (0..h * w)
                .filter(|&j| mask[j])
                .map(|j| (((j / w) as f64 - y) * sp[0]).hypot(((j % w) as f64 - x) * sp[1]))
                .fold(f64::INFINITY, f64::min);
            assert!((di - brute).abs() < 1e-9, "pixel {i}: {di} vs {brute}");
        }
    }

    #[test]
    fn distance_transform_3d_matches_brute_force_with_anisotropic_spacing() {
        for dims in [[5, 6, 7], [9, 1, 4], [1, 5, 8], [4, 3, 1], [2, 2, 2]] {
            let n: usize = dims.iter().product();
            let mask: Vec<bool> = (0..n).map(|i| (i * 7919 + 3) % 17 == 0).collect();
            let sp = [2.5, 0.7, 1.1];
            let d = squared_distance_to(&mask, dims, sp);
            let coord = |i: usize| {
                [
                    i / (dims[1] * dims[2]),
                    (i / dims[2]) % dims[1],
                    i % dims[2],
                ]
            };
            for (i, &di) in d.iter().enumerate() {
                let a = coord(i);
                let brute = (0..n)
                    .filter(|&j| mask[j])
                    .map(|j| {
                        let b = coord(j);
                        (0..3)
                            .map(|k| ((a[k] as f64 - b[k] as f64) * sp[k]).powi(2))
                            .sum::<f64>()
                    })
                    .fold(f64::INFINITY, f64::min);
                assert!(
                    (di - brute).abs() < 1e-9 || (di.is_infinite() && brute.is_infinite()),
                    "dims {dims:?} voxel {i}: {di} vs {brute}"
                );
            }
        }
        assert!(squared_distance_to(&[false; 8], [2, 2, 2], [1.0; 3])
            .iter()
            .all(|d| d.is_infinite()));
    }

    #[test]
    fn hd95_of_shifted_squares_and_empty_conventions() {
        let (h, w) = (40, 40);
        let square = |x0: usize| -> Vec<bool> {
            (0..h * w)
                .map(|i| (10..20).contains(&(i / w)) && (x0..x0 + 10).contains(&(i % w)))
                .collect()
        };
        let (a, b) = (square(10), square(13));
        let d = hd95(&a, &b, h, w, [1.0, 1.0]).unwrap();
        assert!((d - 3.0).abs() < 1e-9, "{d}");
        let d2 = hd95(&a, &b, h, w, [1.0, 0.5]).unwrap();
        assert!((d2 - 1.5).abs() < 1e-9, "{d2}");
        let empty = vec![false; h * w];
        assert_eq!(hd95(&empty, &empty, h, w, [1.0, 1.0]), Some(0.0));
        assert_eq!(hd95(&a, &empty, h, w, [1.0, 1.0]), None);
        assert_eq!(hd95(&a, &a, h, w, [1.0, 1.0]), Some(0.0));
    }
}
