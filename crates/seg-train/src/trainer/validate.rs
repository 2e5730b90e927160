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

/// Per-class validation of a multi-class model on whole cases: every slice
/// of each held-out stack predicted (sliding window, softmax, arg-max) and
/// a Dice per case and foreground class. Returns the mean foreground Dice
/// (the mean of the per-class means) and the per-class means (class 1..K).
/// A class absent from both a case's label and its prediction is not
/// counted for that case (nnU-Net's convention); a class never defined
/// counts as 0.
pub fn validate_stacks(
    net: &Network,
    stacks: &[Stack],
    context: usize,
    classes: usize,
    sw: &SlidingWindow,
) -> Result<(f64, Vec<f64>)> {
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
        let ks: Vec<usize> = (0..st.slices).collect();
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
                let gt = &label[k * plane..(k + 1) * plane];
                for (i, &g) in gt.iter().enumerate() {
                    let mut best = 0;
                    for ch in 1..c {
                        if probs[ch * plane + i] > probs[best * plane + i] {
                            best = ch;
                        }
                    }
                    npred[best] += 1;
                    ngt[g as usize] += 1;
                    if best == g as usize {
                        tp[best] += 1;
                    }
                }
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
