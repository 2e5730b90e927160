//! Losses split over the shares of a batch (data-parallel training): every
//! loss is a function of a few sums over the batch's elements (its
//! statistics: BCE's summed terms and element count, Dice's intersection
//! and sums, ...). Each rank computes the statistics of its own items
//! ([`Loss::stats`]); summed over the ranks they are the whole batch's, and
//! [`Loss::loss_of_stats`] gives the loss one process computes on the whole
//! batch. The chain rule through the summed statistics gives each rank's
//! exact share of the batch gradient (`trainer/parallel.rs`).

use super::Loss;
use seg_core::candle::{Result, D};
use seg_core::ops::sigmoid;
use seg_core::Tensor;

/// `x` (any shape) summed to shape (1).
fn sum1(x: &Tensor) -> Result<Tensor> {
    x.sum_all()?.reshape(1)
}

/// A constant count of shape (1).
fn count(n: usize, like: &Tensor) -> Result<Tensor> {
    Tensor::new(&[n as f32], like.device())
}

/// Entry `i` of a statistics vector, shape ().
fn at(s: &Tensor, i: usize) -> Result<Tensor> {
    s.narrow(0, i, 1)?.reshape(())
}

fn bce_stats(logits: &Tensor, target: &Tensor, pos_weight: Option<f64>) -> Result<Tensor> {
    // the summed terms of `super::bce` and their count
    let sp = ((logits.abs()?.neg()?.exp()? + 1.0)?.log()? + logits.neg()?.relu()?)?;
    let one_minus_t = target.affine(-1.0, 1.0)?;
    let per = match pos_weight {
        None => ((&one_minus_t * logits)? + sp)?,
        Some(w) => ((&one_minus_t * logits)? + (target.affine(w - 1.0, 1.0)? * sp)?)?,
    };
    Tensor::cat(&[sum1(&per)?, count(per.elem_count(), logits)?], 0)
}

fn dice_stats(logits: &Tensor, target: &Tensor, smooth: f64, per_image: bool) -> Result<Tensor> {
    let p = sigmoid(logits)?;
    if per_image {
        // per-image losses summed, and the image count
        let d = super::dice(logits, target, smooth, true)?;
        let n = logits.dim(0)?;
        return Tensor::cat(&[(d * n as f64)?.reshape(1)?, count(n, logits)?], 0);
    }
    Tensor::cat(&[sum1(&(&p * target)?)?, sum1(&p)?, sum1(target)?], 0)
}

fn focal_stats(logits: &Tensor, target: &Tensor, alpha: f64, gamma: f64) -> Result<Tensor> {
    let mean = super::focal(logits, target, alpha, gamma)?;
    let n = logits.elem_count();
    Tensor::cat(&[(mean * n as f64)?.reshape(1)?, count(n, logits)?], 0)
}

fn tversky_stats(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let p = sigmoid(logits)?;
    let tp = sum1(&(&p * target)?)?;
    let fp = sum1(&(&p * target.affine(-1.0, 1.0)?)?)?;
    let fneg = sum1(&(p.affine(-1.0, 1.0)? * target)?)?;
    Tensor::cat(&[tp, fp, fneg], 0)
}

fn ce_stats(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let logp = seg_core::nn::ops::log_softmax(logits, 1)?;
    let n = logits.elem_count() / logits.dim(1)?;
    Tensor::cat(&[sum1(&(logp * target)?)?, count(n, logits)?], 0)
}

fn multiclass_dice_stats(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let p = seg_core::nn::ops::softmax(logits, 1)?;
    let per_class =
        |t: &Tensor| -> Result<Tensor> { t.transpose(0, 1)?.flatten_from(1)?.sum(D::Minus1) };
    Tensor::cat(
        &[
            per_class(&(&p * target)?)?,
            per_class(&p)?,
            per_class(target)?,
        ],
        0,
    )
}

fn dice_from(s: &Tensor, smooth: f64) -> Result<Tensor> {
    let d = ((at(s, 0)? * 2.0)? + smooth)?.div(&((at(s, 1)? + at(s, 2)?)? + smooth)?)?;
    d.affine(-1.0, 1.0)
}

fn mean_from(s: &Tensor) -> Result<Tensor> {
    at(s, 0)?.div(&at(s, 1)?)
}

impl Loss {
    /// The statistics of this loss on a share of a batch, shape (heads, m)
    /// (heads: deep-supervision outputs, else 1): sums over the share's
    /// elements, so the shares' statistics add up to the batch's.
    pub fn stats(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        if logits.rank() == target.rank() + 1 {
            let heads = (0..logits.dim(0)?)
                .map(|k| self.stats(&logits.get(k)?, target))
                .collect::<Result<Vec<_>>>()?;
            return Tensor::cat(&heads, 0);
        }
        let s = match *self {
            Self::Bce { pos_weight } => bce_stats(logits, target, pos_weight)?,
            Self::Dice { smooth, per_image } => dice_stats(logits, target, smooth, per_image)?,
            Self::Focal { alpha, gamma } => focal_stats(logits, target, alpha, gamma)?,
            Self::Tversky { .. } => tversky_stats(logits, target)?,
            Self::BceDice { .. } => Tensor::cat(
                &[
                    bce_stats(logits, target, None)?,
                    dice_stats(logits, target, 1.0, false)?,
                ],
                0,
            )?,
            Self::DiceFocal { .. } => Tensor::cat(
                &[
                    dice_stats(logits, target, 1.0, false)?,
                    focal_stats(logits, target, 0.25, 2.0)?,
                ],
                0,
            )?,
            Self::CrossEntropy => ce_stats(logits, target)?,
            Self::CeDice => Tensor::cat(
                &[
                    ce_stats(logits, target)?,
                    multiclass_dice_stats(logits, target)?,
                ],
                0,
            )?,
        };
        s.unsqueeze(0)
    }

    /// The loss from a whole batch's statistics ([`Loss::stats`], summed
    /// over the shares): what [`Loss::compute`] gives on the whole batch.
    pub fn loss_of_stats(&self, stats: &Tensor) -> Result<Tensor> {
        let heads = stats.dim(0)?;
        let mut total: Option<Tensor> = None;
        for k in 0..heads {
            let l = self.loss_of_head(&stats.get(k)?)?;
            total = Some(match total {
                Some(t) => (t + l)?,
                None => l,
            });
        }
        let total = total.expect("at least one head");
        if heads == 1 {
            Ok(total)
        } else {
            total / heads as f64
        }
    }

    fn loss_of_head(&self, s: &Tensor) -> Result<Tensor> {
        match *self {
            Self::Bce { .. } | Self::Focal { .. } => mean_from(s),
            Self::Dice { smooth, per_image } => {
                if per_image {
                    mean_from(s)
                } else {
                    dice_from(s, smooth)
                }
            }
            Self::Tversky {
                alpha,
                beta,
                smooth,
            } => {
                let (tp, fp, fneg) = (at(s, 0)?, at(s, 1)?, at(s, 2)?);
                let num = (&tp + smooth)?;
                let den = (((tp + (fp * alpha)?)? + (fneg * beta)?)? + smooth)?;
                num.div(&den)?.affine(-1.0, 1.0)
            }
            Self::BceDice {
                bce_weight,
                dice_weight,
            } => {
                (mean_from(&s.narrow(0, 0, 2)?)? * bce_weight)?
                    + (dice_from(&s.narrow(0, 2, 3)?, 1.0)? * dice_weight)?
            }
            Self::DiceFocal {
                dice_weight,
                focal_weight,
            } => {
                (dice_from(&s.narrow(0, 0, 3)?, 1.0)? * dice_weight)?
                    + (mean_from(&s.narrow(0, 3, 2)?)? * focal_weight)?
            }
            Self::CrossEntropy => mean_from(s)?.neg(),
            Self::CeDice => {
                let ce = mean_from(&s.narrow(0, 0, 2)?)?.neg()?;
                let k = (s.dim(0)? - 2) / 3;
                let (i, p, t) = (
                    s.narrow(0, 2, k)?,
                    s.narrow(0, 2 + k, k)?,
                    s.narrow(0, 2 + 2 * k, k)?,
                );
                let d = ((i * 2.0)? + 1.0)?.div(&((p + t)? + 1.0)?)?;
                ce + d.affine(-1.0, 1.0)?.mean_all()?
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seg_core::{DType, Device, Var};

    fn inputs(shape: &[usize], classes: bool, seed: u64) -> (Tensor, Tensor) {
        let dev = Device::Cpu;
        let n: usize = shape.iter().product();
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32
        };
        let logits: Vec<f32> = (0..n).map(|_| next() * 6.0 - 3.0).collect();
        let target: Vec<f32> = if classes {
            // one-hot over axis 1
            let (b, c) = (shape[0], shape[1]);
            let plane = n / (b * c);
            let mut t = vec![0f32; n];
            for i in 0..b {
                for j in 0..plane {
                    let k = ((next() * c as f32) as usize).min(c - 1);
                    t[(i * c + k) * plane + j] = 1.0;
                }
            }
            t
        } else {
            (0..n).map(|_| (next() > 0.7) as u8 as f32).collect()
        };
        (
            Tensor::from_slice(&logits, shape, &dev).unwrap(),
            Tensor::from_slice(&target, shape, &dev).unwrap(),
        )
    }

    /// The loss and logit gradient of the whole batch, and those of two
    /// shares (items 0, 2, 4 and 1, 3) combined through the summed statistics.
    fn whole_and_split(loss: Loss, shape: &[usize], classes: bool) -> (f32, f32, Tensor, Tensor) {
        let (x, t) = inputs(shape, classes, 7);
        let xv = Var::from_tensor(&x).unwrap();
        let whole = loss.compute(xv.as_tensor(), &t).unwrap();
        let g_whole = whole
            .backward()
            .unwrap()
            .get(xv.as_tensor())
            .unwrap()
            .clone();
        let axis = if shape.len() == 5 { 1 } else { 0 };
        let shares: Vec<Vec<u32>> = vec![vec![0, 2, 4], vec![1, 3]];
        let parts: Vec<(Var, Tensor, Tensor)> = shares
            .iter()
            .map(|ix| {
                let ix = Tensor::new(ix.as_slice(), &Device::Cpu).unwrap();
                let xs = Var::from_tensor(&x.index_select(&ix, axis).unwrap()).unwrap();
                let ts = t.index_select(&ix, 0).unwrap();
                let s = loss.stats(xs.as_tensor(), &ts).unwrap();
                (xs, ts, s)
            })
            .collect();
        let total = (parts[0].2.detach() + parts[1].2.detach()).unwrap();
        let sv = Var::from_tensor(&total).unwrap();
        let l = loss.loss_of_stats(sv.as_tensor()).unwrap();
        let c = l.backward().unwrap().get(sv.as_tensor()).unwrap().clone();
        let mut g_parts = Vec::new();
        for (xs, _, s) in &parts {
            let surrogate = (s * &c).unwrap().sum_all().unwrap();
            g_parts.push(
                surrogate
                    .backward()
                    .unwrap()
                    .get(xs.as_tensor())
                    .unwrap()
                    .clone(),
            );
        }
        // put the shares' gradients back in batch order
        let g_split = Tensor::cat(&g_parts, axis).unwrap();
        let order = Tensor::new(&[0u32, 3, 1, 4, 2], &Device::Cpu).unwrap();
        let g_split = g_split.index_select(&order, axis).unwrap();
        (
            whole.to_dtype(DType::F32).unwrap().to_scalar().unwrap(),
            l.to_scalar().unwrap(),
            g_whole,
            g_split,
        )
    }

    #[test]
    fn split_statistics_give_the_whole_batch_loss_and_gradient() {
        let binary = ["bce", "dice", "focal", "tversky", "bce_dice", "dice_focal"];
        let mut cases: Vec<(Loss, Vec<usize>, bool)> = binary
            .iter()
            .map(|n| (Loss::from_name(n).unwrap(), vec![5, 1, 6, 7], false))
            .collect();
        cases.push((
            Loss::Dice {
                smooth: 1.0,
                per_image: true,
            },
            vec![5, 1, 6, 7],
            false,
        ));
        for n in ["ce", "ce_dice"] {
            cases.push((Loss::from_name(n).unwrap(), vec![5, 3, 4, 6], true));
        }
        // deep supervision: 2 heads stacked ahead of the batch axis
        cases.push((
            Loss::from_name("bce_dice").unwrap(),
            vec![2, 5, 1, 6, 7],
            false,
        ));
        for (loss, shape, classes) in cases {
            let shape_t: Vec<usize> = if shape.len() == 5 {
                shape[1..].to_vec()
            } else {
                shape.clone()
            };
            let (whole, split, gw, gs) = if shape.len() == 5 {
                deep(loss, &shape, &shape_t)
            } else {
                whole_and_split(loss, &shape, classes)
            };
            assert!(
                (whole - split).abs() <= 1e-5 * whole.abs().max(1.0),
                "{loss:?}: {whole} vs {split}"
            );
            let diff = (&gw - &gs).unwrap().abs().unwrap().max_all().unwrap();
            let scale = gw.abs().unwrap().max_all().unwrap();
            let (diff, scale): (f32, f32) = (diff.to_scalar().unwrap(), scale.to_scalar().unwrap());
            assert!(scale > 0.0, "{loss:?}: zero gradient");
            assert!(
                diff <= 1e-5 * scale,
                "{loss:?}: gradient differs by {diff} (scale {scale})"
            );
        }
    }

    /// Deep supervision: heads on axis 0, the batch on axis 1.
    fn deep(loss: Loss, shape: &[usize], target_shape: &[usize]) -> (f32, f32, Tensor, Tensor) {
        let (x, _) = inputs(shape, false, 7);
        let (_, t) = inputs(target_shape, false, 9);
        let xv = Var::from_tensor(&x).unwrap();
        let whole = loss.compute(xv.as_tensor(), &t).unwrap();
        let g_whole = whole
            .backward()
            .unwrap()
            .get(xv.as_tensor())
            .unwrap()
            .clone();
        let shares: Vec<Vec<u32>> = vec![vec![0, 2, 4], vec![1, 3]];
        let mut parts = Vec::new();
        for ix in &shares {
            let ix = Tensor::new(ix.as_slice(), &Device::Cpu).unwrap();
            let xs = Var::from_tensor(&x.index_select(&ix, 1).unwrap()).unwrap();
            let ts = t.index_select(&ix, 0).unwrap();
            let s = loss.stats(xs.as_tensor(), &ts).unwrap();
            parts.push((xs, s));
        }
        let total = (parts[0].1.detach() + parts[1].1.detach()).unwrap();
        let sv = Var::from_tensor(&total).unwrap();
        let l = loss.loss_of_stats(sv.as_tensor()).unwrap();
        let c = l.backward().unwrap().get(sv.as_tensor()).unwrap().clone();
        let mut g = Vec::new();
        for (xs, s) in &parts {
            let surrogate = (s * &c).unwrap().sum_all().unwrap();
            g.push(
                surrogate
                    .backward()
                    .unwrap()
                    .get(xs.as_tensor())
                    .unwrap()
                    .clone(),
            );
        }
        let g_split = Tensor::cat(&g, 1).unwrap();
        let order = Tensor::new(&[0u32, 3, 1, 4, 2], &Device::Cpu).unwrap();
        (
            whole.to_scalar().unwrap(),
            l.to_scalar().unwrap(),
            g_whole,
            g_split.index_select(&order, 1).unwrap(),
        )
    }
}
