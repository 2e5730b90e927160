//! Full-image validation after each epoch: sliding-window inference on the
//! held-out images, every count taken by [`crate::metrics`] (the confusion
//! at 0.5, the pixels inside the FOV, the threshold sweep, the AUC).

use crate::error::{Error, Result};
use crate::infer::{self, SlidingWindow};
use crate::metrics::{self, ThresholdSweep};
use seg_data::labelmap::Stack;
use seg_data::Sample;
use seg_models::Network;

/// Thresholds tried on validation: k / BINS for k = 1 .. BINS − 1.
const BINS: usize = 200;

/// Foreground probability plane of a prediction (channel 0 of a sigmoid
/// output, channel 1 of a softmax one).
fn foreground(probs: Vec<f32>, channels: usize, plane: usize) -> Vec<f32> {
    if channels == 1 {
        probs
    } else {
        probs[plane..2 * plane].to_vec()
    }
}

/// Validation metrics of `net` on `val`: pooled Dice at 0.5, the best
/// threshold and its pooled Dice, pooled AUC.
pub fn validate(
    net: &Network,
    val: &[Sample],
    sw: &SlidingWindow,
) -> Result<(f64, f64, f32, Option<f64>)> {
    let model = net.inference_model()?;
    let mut sweep = ThresholdSweep::new(BINS);
    let (mut all_p, mut all_g) = (Vec::new(), Vec::new());
    let mut total = metrics::Confusion::default();
    for s in val {
        let (probs, c) = infer::predict(
            &model,
            &s.image,
            s.channels,
            s.height,
            s.width,
            sw,
            net.device(),
        )?;
        let p = foreground(probs, c, s.height * s.width);
        let label = s
            .label
            .as_ref()
            .ok_or_else(|| Error::NoLabel { case: s.id.clone() })?;
        total = total + metrics::confusion(&p, label, s.fov.as_deref(), 0.5);
        let (fp, fg) = metrics::in_fov(&p, label, s.fov.as_deref());
        sweep.add(&fp, &fg);
        all_p.extend(fp);
        all_g.extend(fg);
    }
    // the threshold with the best pooled Dice (the highest on ties)
    let (mut best_d, mut best_t) = (-1.0f64, 0.5f32);
    for (t, counts) in sweep.confusions() {
        let d = counts.scores().dice;
        if d > best_d {
            best_d = d;
            best_t = t;
        }
    }
    Ok((
        total.scores().dice,
        best_d.max(0.0),
        best_t,
        metrics::auc_roc(&all_p, &all_g),
    ))
}

/// Validation pixels allowed per epoch, as a multiple of the pixels one
/// epoch trains on (`steps × batch × patch²`). A forward pass costs about a
/// third of a training step per pixel, so 0.5 keeps validation near a
/// sixth of the epoch (Hippocampus-sized validation sets stay whole).
pub const VALIDATION_SHARE: f64 = 0.5;

/// The plane stride that keeps an epoch's validation within
/// [`VALIDATION_SHARE`] of its training pixels: 1 (every plane) unless the
/// validation cases are large (e.g. CT volumes of hundreds of 512² planes).
pub fn validation_stride(stacks: &[Stack], steps: usize, batch: usize, patch: usize) -> usize {
    let val: f64 = stacks
        .iter()
        .map(|s| (s.slices * s.height.max(patch) * s.width.max(patch)) as f64)
        .sum();
    let allowed = VALIDATION_SHARE * (steps * batch * patch * patch) as f64;
    if allowed <= 0.0 || val <= allowed {
        1
    } else {
        (val / allowed).ceil() as usize
    }
}

/// Per-class validation of a multi-class model on whole cases: every slice
/// of each held-out stack predicted (sliding window, softmax, arg-max) and
/// a Dice per case and foreground class. Returns the mean foreground Dice
/// (the mean of the per-class means) and the per-class means (class 1..K).
/// A class absent from both a case's label and its prediction is not
/// counted for that case (nnU-Net's convention); a class never defined
/// counts as 0.
///
/// `stride` > 1 predicts every `stride`-th plane of each case (from
/// `stride / 2`), bounding the cost of validating large volumes every
/// epoch (see [`validation_stride`]).
pub fn validate_stacks(
    net: &Network,
    stacks: &[Stack],
    context: usize,
    classes: usize,
    sw: &SlidingWindow,
    stride: usize,
) -> Result<(f64, Vec<f64>)> {
    let stride = stride.max(1);
    let model = net.inference_model()?;
    let fg = classes.saturating_sub(1);
    let mut sums = vec![0f64; fg];
    let mut counts = vec![0usize; fg];
    for st in stacks {
        let label = st.label.as_ref().ok_or_else(|| Error::NoLabel {
            case: st.id.clone(),
        })?;
        let plane = st.height * st.width;
        let mut tp = vec![0u64; classes];
        let mut npred = vec![0u64; classes];
        let mut ngt = vec![0u64; classes];
        let mut count = |probs: &[f32], c: usize, gt: &[u8]| {
            let n = gt.len();
            for (i, &g) in gt.iter().enumerate() {
                let mut best = 0;
                for ch in 1..c {
                    if probs[ch * n + i] > probs[best * n + i] {
                        best = ch;
                    }
                }
                npred[best] += 1;
                ngt[g as usize] += 1;
                if best == g as usize {
                    tp[best] += 1;
                }
            }
        };
        if net.config().dims() == 3 {
            // a 3D model: the whole case through the 3D sliding window
            let (probs, c) = infer::predict_volume(
                &model,
                &st.image,
                st.channels,
                [st.slices, st.height, st.width],
                sw,
                net.device(),
            )?;
            count(&probs, c, label);
        }
        let first = (stride / 2).min(st.slices.saturating_sub(1));
        let ks: Vec<usize> = if net.config().dims() == 3 {
            Vec::new()
        } else {
            (first..st.slices).step_by(stride).collect()
        };
        for chunk in ks.chunks(16) {
            let planes: Vec<Vec<f32>> =
                chunk.iter().map(|&k| st.sample(k, context).image).collect();
            let chans = st.channels * (2 * context + 1);
            let preds = infer::predict_planes(
                &model,
                &planes,
                chans,
                st.height,
                st.width,
                sw,
                net.device(),
            )?;
            for (&k, (probs, c)) in chunk.iter().zip(preds) {
                count(&probs, c, &label[k * plane..(k + 1) * plane]);
            }
        }
        for k in 1..classes {
            let den = npred[k] + ngt[k];
            if den > 0 {
                sums[k - 1] += 2.0 * tp[k] as f64 / den as f64;
                counts[k - 1] += 1;
            }
        }
    }
    let per_class: Vec<f64> = sums
        .iter()
        .zip(&counts)
        .map(|(&s, &n)| if n > 0 { s / n as f64 } else { 0.0 })
        .collect();
    let mean = if per_class.is_empty() {
        0.0
    } else {
        per_class.iter().sum::<f64>() / per_class.len() as f64
    };
    Ok((mean, per_class))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(slices: usize, side: usize) -> Stack {
        Stack {
            id: "s".into(),
            channels: 1,
            slices,
            height: side,
            width: side,
            image: Vec::new(),
            label: None,
            spacing: [1.0; 3],
            native: [side, side],
        }
    }

    #[test]
    fn validation_of_large_volumes_is_strided_small_ones_whole() {
        // Hippocampus-like: 30 cases of 36 planes of 48² (patch 48, batch 16)
        let small: Vec<Stack> = (0..30).map(|_| stack(36, 48)).collect();
        assert_eq!(validation_stride(&small, 250, 16, 48), 1);
        // CT-like: 20 cases of 300 planes of 512², patch 256, batch 4
        let big: Vec<Stack> = (0..20).map(|_| stack(300, 512)).collect();
        let s = validation_stride(&big, 250, 4, 256);
        let val = 20.0 * 300.0 * 512.0 * 512.0 / s as f64;
        assert!(
            val <= VALIDATION_SHARE * 250.0 * 4.0 * 256.0 * 256.0,
            "stride {s}"
        );
        assert!(s > 1 && val > 0.5 * VALIDATION_SHARE * 250.0 * 4.0 * 256.0 * 256.0);
    }
}
