//! Losses on raw logits (N,C,H,W) and a {0,1} target of the same shape, each
//! reduced to a scalar; the definitions of `shared/reference/losses.py`.

use seg_core::candle::{Result, D};
use seg_core::ops::sigmoid;
use seg_core::Tensor;
use serde::{Deserialize, Serialize};

mod shard;

fn softplus_neg_abs(x: &Tensor) -> Result<Tensor> {
    // log(1 + exp(-|x|)), stable
    (x.abs()?.neg()?.exp()? + 1.0)?.log()
}

/// Binary cross-entropy on logits, mean over every element; `pos_weight`
/// multiplies the positive term (PyTorch's `BCEWithLogitsLoss(pos_weight=)`).
pub fn bce(logits: &Tensor, target: &Tensor, pos_weight: Option<f64>) -> Result<Tensor> {
    // -[w t log σ(x) + (1-t) log(1-σ(x))] = (1-t) x + (1 + (w-1) t) (log(1+e^-|x|) + max(-x, 0))
    let sp = (softplus_neg_abs(logits)? + logits.neg()?.relu()?)?;
    let one_minus_t = target.affine(-1.0, 1.0)?;
    let per = match pos_weight {
        None => ((&one_minus_t * logits)? + sp)?,
        Some(w) => ((&one_minus_t * logits)? + (target.affine(w - 1.0, 1.0)? * sp)?)?,
    };
    per.mean_all()
}

fn reduce_dims(t: &Tensor, per_image: bool) -> Result<Tensor> {
    if per_image {
        t.flatten_from(1)?.sum(D::Minus1)
    } else {
        t.sum_all()
    }
}

/// Soft Dice loss on sigmoid probabilities: one Dice over the batch, or
/// (`per_image`) one per sample, then the mean.
pub fn dice(logits: &Tensor, target: &Tensor, smooth: f64, per_image: bool) -> Result<Tensor> {
    let p = sigmoid(logits)?;
    let inter = reduce_dims(&(&p * target)?, per_image)?;
    let denom = ((reduce_dims(&p, per_image)? + reduce_dims(target, per_image)?)? + smooth)?;
    let d = ((inter * 2.0)? + smooth)?.div(&denom)?;
    d.affine(-1.0, 1.0)?.mean_all()
}

/// Sigmoid focal loss (Lin et al. 2017); `alpha < 0` disables the class weight.
pub fn focal(logits: &Tensor, target: &Tensor, alpha: f64, gamma: f64) -> Result<Tensor> {
    let p = sigmoid(logits)?;
    let one_minus_t = target.affine(-1.0, 1.0)?;
    let ce = ((&one_minus_t * logits)? + (softplus_neg_abs(logits)? + logits.neg()?.relu()?)?)?;
    let p_t = ((&p * target)? + (p.affine(-1.0, 1.0)? * &one_minus_t)?)?;
    let modulator = p_t.affine(-1.0, 1.0)?.clamp(0.0, 1.0)?.powf(gamma)?;
    let mut loss = (ce * modulator)?;
    if alpha >= 0.0 {
        let w = target.affine(2.0 * alpha - 1.0, 1.0 - alpha)?;
        loss = (loss * w)?;
    }
    loss.mean_all()
}

/// Tversky loss: `alpha` weights false positives, `beta` false negatives.
pub fn tversky(
    logits: &Tensor,
    target: &Tensor,
    alpha: f64,
    beta: f64,
    smooth: f64,
) -> Result<Tensor> {
    let p = sigmoid(logits)?;
    let tp = (&p * target)?.sum_all()?;
    let fp = (&p * target.affine(-1.0, 1.0)?)?.sum_all()?;
    let fneg = (p.affine(-1.0, 1.0)? * target)?.sum_all()?;
    let num = (&tp + smooth)?;
    let den = (((tp + (fp * alpha)?)? + (fneg * beta)?)? + smooth)?;
    num.div(&den)?.affine(-1.0, 1.0)
}

/// Softmax cross-entropy for C > 1 output channels, `target` one-hot (N,C,H,W).
pub fn cross_entropy(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let logp = seg_core::nn::ops::log_softmax(logits, 1)?;
    let n = (logits.elem_count() / logits.dim(1)?) as f64;
    ((logp * target)?.sum_all()? / n)?.neg()
}

/// Multi-class soft Dice on softmax probabilities: a Dice per class over the
/// batch, then the mean over classes.
pub fn multiclass_dice(logits: &Tensor, target: &Tensor, smooth: f64) -> Result<Tensor> {
    let p = seg_core::nn::ops::softmax(logits, 1)?;
    let per_class =
        |t: &Tensor| -> Result<Tensor> { t.transpose(0, 1)?.flatten_from(1)?.sum(D::Minus1) };
    let inter = per_class(&(&p * target)?)?;
    let den = ((per_class(&p)? + per_class(target)?)? + smooth)?;
    let d = ((inter * 2.0)? + smooth)?.div(&den)?;
    d.affine(-1.0, 1.0)?.mean_all()
}

/// A training loss by name, with its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "name")]
pub enum Loss {
    Bce {
        pos_weight: Option<f64>,
    },
    Dice {
        smooth: f64,
        per_image: bool,
    },
    Focal {
        alpha: f64,
        gamma: f64,
    },
    Tversky {
        alpha: f64,
        beta: f64,
        smooth: f64,
    },
    /// 0.5 × BCE + 1.0 × Dice (the reference's weights).
    BceDice {
        bce_weight: f64,
        dice_weight: f64,
    },
    /// 0.5 × Dice + 0.5 × focal.
    DiceFocal {
        dice_weight: f64,
        focal_weight: f64,
    },
    /// Softmax cross-entropy (C > 1).
    CrossEntropy,
    /// Softmax cross-entropy + multi-class Dice (C > 1).
    CeDice,
}

/// The names [`Loss::from_name`] knows.
pub const LOSS_NAMES: [&str; 8] = [
    "bce",
    "dice",
    "focal",
    "tversky",
    "bce_dice",
    "dice_focal",
    "ce",
    "ce_dice",
];

impl Loss {
    /// The loss with the reference's default parameters.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "bce" => Self::Bce { pos_weight: None },
            "dice" => Self::Dice {
                smooth: 1.0,
                per_image: false,
            },
            "focal" => Self::Focal {
                alpha: 0.25,
                gamma: 2.0,
            },
            "tversky" => Self::Tversky {
                alpha: 0.3,
                beta: 0.7,
                smooth: 1.0,
            },
            "bce_dice" => Self::BceDice {
                bce_weight: 0.5,
                dice_weight: 1.0,
            },
            "dice_focal" => Self::DiceFocal {
                dice_weight: 0.5,
                focal_weight: 0.5,
            },
            "ce" => Self::CrossEntropy,
            "ce_dice" => Self::CeDice,
            _ => return None,
        })
    }

    /// True for the losses that need C > 1 softmax outputs.
    pub fn is_multiclass(&self) -> bool {
        matches!(self, Self::CrossEntropy | Self::CeDice)
    }

    /// Computes the loss. A deep-supervision output (heads stacked on a
    /// leading axis: one rank more than the target) gives the mean of the
    /// per-head losses.
    pub fn compute(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        // deep supervision: heads stacked on a leading axis
        if logits.rank() == target.rank() + 1 {
            let heads = logits.dim(0)?;
            let mut total: Option<Tensor> = None;
            for k in 0..heads {
                let l = self.compute(&logits.get(k)?, target)?;
                total = Some(match total {
                    Some(t) => (t + l)?,
                    None => l,
                });
            }
            return total.expect("at least one head") / heads as f64;
        }
        match *self {
            Self::Bce { pos_weight } => bce(logits, target, pos_weight),
            Self::Dice { smooth, per_image } => dice(logits, target, smooth, per_image),
            Self::Focal { alpha, gamma } => focal(logits, target, alpha, gamma),
            Self::Tversky {
                alpha,
                beta,
                smooth,
            } => tversky(logits, target, alpha, beta, smooth),
            Self::BceDice {
                bce_weight,
                dice_weight,
            } => {
                (bce(logits, target, None)? * bce_weight)?
                    + (dice(logits, target, 1.0, false)? * dice_weight)?
            }
            Self::DiceFocal {
                dice_weight,
                focal_weight,
            } => {
                (dice(logits, target, 1.0, false)? * dice_weight)?
                    + (focal(logits, target, 0.25, 2.0)? * focal_weight)?
            }
            Self::CrossEntropy => cross_entropy(logits, target),
            Self::CeDice => cross_entropy(logits, target)? + multiclass_dice(logits, target, 1.0)?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seg_core::Device;

    #[test]
    fn multiclass_losses_behave() {
        // perfect, confident predictions give ~0 cross-entropy and Dice loss
        let t = Tensor::new(&[[[[1f32, 0.0]], [[0.0, 1.0]]]], &Device::Cpu).unwrap(); // (1,2,1,2)
        let good = (t.affine(20.0, -10.0)).unwrap();
        let ce = cross_entropy(&good, &t)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(ce < 1e-4, "{ce}");
        let md = multiclass_dice(&good, &t, 0.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(md < 1e-4, "{md}");
        let bad = good.neg().unwrap();
        assert!(cross_entropy(&bad, &t).unwrap().to_scalar::<f32>().unwrap() > 10.0);
        // uniform logits: CE = ln 2
        let u = Tensor::zeros((1, 2, 1, 2), seg_core::DType::F32, &Device::Cpu).unwrap();
        let ce = cross_entropy(&u, &t).unwrap().to_scalar::<f32>().unwrap();
        assert!((ce - std::f32::consts::LN_2).abs() < 1e-6);
    }

    #[test]
    fn bce_matches_the_naive_formula() {
        // logits across the range, both classes; with and without pos_weight
        let xs: Vec<f32> = (0..30).map(|i| (i as f32 - 14.5) * 0.37).collect();
        let ts: Vec<f32> = (0..30).map(|i| ((i * 7) % 3 == 0) as u8 as f32).collect();
        let x = Tensor::from_vec(xs.clone(), (2, 1, 3, 5), &Device::Cpu).unwrap();
        let t = Tensor::from_vec(ts.clone(), (2, 1, 3, 5), &Device::Cpu).unwrap();
        for w in [None, Some(3.0)] {
            let got = bce(&x, &t, w).unwrap().to_scalar::<f32>().unwrap();
            let want = xs
                .iter()
                .zip(&ts)
                .map(|(&x, &t)| {
                    let p = 1.0 / (1.0 + (-x as f64).exp());
                    -(w.unwrap_or(1.0) * t as f64 * p.ln() + (1.0 - t as f64) * (1.0 - p).ln())
                })
                .sum::<f64>()
                / xs.len() as f64;
            assert!((got as f64 - want).abs() < 1e-5, "{w:?}: {got} vs {want}");
        }
    }

    #[test]
    fn deep_supervision_averages_heads() {
        let a = Tensor::new(&[[[[0.5f32, -1.0]]]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[[[2.0f32, 0.3]]]], &Device::Cpu).unwrap();
        let t = Tensor::new(&[[[[1f32, 0.0]]]], &Device::Cpu).unwrap();
        let l = Loss::from_name("bce_dice").unwrap();
        let stacked = Tensor::stack(&[&a, &b], 0).unwrap();
        let got = l.compute(&stacked, &t).unwrap().to_scalar::<f32>().unwrap();
        let want = (l.compute(&a, &t).unwrap().to_scalar::<f32>().unwrap()
            + l.compute(&b, &t).unwrap().to_scalar::<f32>().unwrap())
            / 2.0;
        assert!((got - want).abs() < 1e-6);
    }
}
