//! BatchNorm in training mode as one fused kernel: per-channel batch
//! statistics (accumulated in f64), normalisation and affine transform in the
//! forward pass, and the closed-form gradient for input, weight and bias in
//! one backward pass.

use super::{lanes_sum, lanes_sum2, use_cpu_kernel};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Per-channel statistics of the last forward pass.
#[derive(Debug, Clone, Default)]
struct Stats {
    mean: Vec<f32>,
    /// Biased variance.
    var: Vec<f32>,
    inv_std: Vec<f32>,
    /// The forward's per-channel `y = x·scale + shift` (before any ReLU),
    /// as it computed them: the backward of the fused ReLU recomputes which
    /// outputs were positive from these.
    scale: Vec<f32>,
    shift: Vec<f32>,
}

struct BatchNormTrain {
    eps: f64,
    /// Apply ReLU to the output (and mask the gradient in the backward).
    relu: bool,
    stats: Arc<Mutex<Stats>>,
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    super::cpu_f32(s, l, &format!("seg batch-norm: {what}"))
}

/// Sums over (N, H, W) of `f(plane_of_x, plane_of_y)` per channel, in f64.
fn per_channel<F>(n: usize, c: usize, hw: usize, f: F) -> Vec<(f64, f64)>
where
    F: Fn(usize, usize) -> (f64, f64) + Sync,
{
    (0..c)
        .into_par_iter()
        .map(|ch| {
            (0..n).fold((0.0, 0.0), |acc, b| {
                let r = f(b * c * hw + ch * hw, ch);
                (acc.0 + r.0, acc.1 + r.1)
            })
        })
        .collect()
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "seg-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "input")?;
        let w = slice(s2, l2, "weight")?;
        let b = slice(s3, l3, "bias")?;
        let (n, c, h, wd) = l1.shape().dims4()?;
        let hw = h * wd;
        let count = (n * hw) as f64;
        // two passes over the data: mean, then centred sum of squares
        let sums = per_channel(n, c, hw, |off, _| {
            (lanes_sum(&x[off..off + hw], |v| v as f64), 0.0)
        });
        let mean: Vec<f64> = sums.iter().map(|s| s.0 / count).collect();
        let sq = per_channel(n, c, hw, |off, ch| {
            let m = mean[ch];
            (
                lanes_sum(&x[off..off + hw], |v| (v as f64 - m).powi(2)),
                0.0,
            )
        });
        let var: Vec<f64> = sq.iter().map(|s| s.0 / count).collect();
        let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        let scale: Vec<f32> = (0..c).map(|ch| (inv[ch] * w[ch] as f64) as f32).collect();
        let shift: Vec<f32> = (0..c)
            .map(|ch| (b[ch] as f64 - mean[ch] * inv[ch] * w[ch] as f64) as f32)
            .collect();
        let relu = self.relu;
        // SAFETY: each plane is written element by element from the plane
        // of x of the same length.
        let y = unsafe {
            super::par_uninit(x.len(), hw, |p, out| {
                let (a, t) = (scale[p % c], shift[p % c]);
                let src = &x[p * hw..(p + 1) * hw];
                if relu {
                    for (o, &v) in out.iter_mut().zip(src) {
                        o.write((v * a + t).max(0.0));
                    }
                } else {
                    for (o, &v) in out.iter_mut().zip(src) {
                        o.write(v * a + t);
                    }
                }
            })
        };
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = Stats {
            mean: mean.iter().map(|&v| v as f32).collect(),
            var: var.iter().map(|&v| v as f32).collect(),
            inv_std: inv.iter().map(|&v| v as f32).collect(),
            scale,
            shift,
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let wb = Arc::new(Mutex::new((Vec::new(), Vec::new())));
        let op = BatchNormTrainBackward {
            stats,
            relu: self.relu,
            param_grads: wb.clone(),
        };
        let dx =
            grad.contiguous()?
                .apply_op3_no_bwd(&x.contiguous()?, &weight.contiguous()?, &op)?;
        let (dw, db) = std::mem::take(&mut *wb.lock().unwrap_or_else(|e| e.into_inner()));
        let c = dw.len();
        let dw = Tensor::from_vec(dw, c, x.device())?;
        let db = Tensor::from_vec(db, c, x.device())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Computes dx (its output) and, as a side result, d weight and d bias.
struct BatchNormTrainBackward {
    stats: Stats,
    /// The forward applied ReLU: the gradient passes only where its output
    /// was positive (recomputed from x exactly as the forward computed it).
    relu: bool,
    param_grads: Arc<Mutex<(Vec<f32>, Vec<f32>)>>,
}

impl CustomOp3 for BatchNormTrainBackward {
    fn name(&self) -> &'static str {
        "seg-batch-norm-train-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = slice(s1, l1, "gradient")?;
        let x = slice(s2, l2, "input")?;
        let w = slice(s3, l3, "weight")?;
        let (n, c, h, wd) = l1.shape().dims4()?;
        let hw = h * wd;
        let count = (n * hw) as f64;
        let Stats {
            mean,
            inv_std,
            scale,
            shift,
            ..
        } = &self.stats;
        let relu = self.relu;
        // the gradient reaching the norm: g, or 0 where the fused ReLU's
        // output was not positive (the forward's own arithmetic, so the same
        // decision); the channel's scale and shift hoisted out of the loops
        let gate = |ch: usize| {
            let (a, t) = (scale[ch], shift[ch]);
            move |gv: f32, xv: f32| if xv * a + t > 0.0 { gv } else { 0.0 }
        };
        // per channel: sum g and sum g * xhat
        let sums = per_channel(n, c, hw, |off, ch| {
            let (m, inv) = (mean[ch] as f64, inv_std[ch] as f64);
            let (g, x) = (&g[off..off + hw], &x[off..off + hw]);
            // Σ g and Σ g·(x − m), the latter times inv once at the end
            if relu {
                let gt = gate(ch);
                (
                    lanes_sum2(g, x, |gv, xv| gt(gv, xv) as f64),
                    lanes_sum2(g, x, |gv, xv| gt(gv, xv) as f64 * (xv as f64 - m)) * inv,
                )
            } else {
                (
                    lanes_sum(g, |v| v as f64),
                    lanes_sum2(g, x, |gv, xv| gv as f64 * (xv as f64 - m)) * inv,
                )
            }
        });
        if x.len() != g.len() {
            candle_core::bail!("seg batch-norm backward: gradient and input sizes differ")
        }
        // SAFETY: each plane is written element by element from the planes
        // of g and x of the same length.
        let dx = unsafe {
            super::par_uninit(g.len(), hw, |p, out| {
                let ch = p % c;
                let (m, inv) = (mean[ch] as f64, inv_std[ch] as f64);
                let k = w[ch] as f64 * inv;
                let mg = sums[ch].0 / count;
                let mgx = sums[ch].1 / count;
                let src = p * hw..(p + 1) * hw;
                let (g, x) = (&g[src.clone()], &x[src]);
                if relu {
                    let gt = gate(ch);
                    for ((o, &gv), &xv) in out.iter_mut().zip(g).zip(x) {
                        let xhat = (xv as f64 - m) * inv;
                        o.write((k * (gt(gv, xv) as f64 - mg - xhat * mgx)) as f32);
                    }
                } else {
                    for ((o, &gv), &xv) in out.iter_mut().zip(g).zip(x) {
                        let xhat = (xv as f64 - m) * inv;
                        o.write((k * (gv as f64 - mg - xhat * mgx)) as f32);
                    }
                }
            })
        };
        let dw = sums.iter().map(|s| s.1 as f32).collect();
        let db = sums.iter().map(|s| s.0 as f32).collect();
        *self.param_grads.lock().unwrap_or_else(|e| e.into_inner()) = (dw, db);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// BatchNorm over the channels of an NCHW tensor using the batch's statistics.
/// Returns the output and the batch mean and biased variance per channel
/// (detached), for the running-statistics update.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    batch_norm_train_act(x, weight, bias, eps, false)
}

/// [`batch_norm_train`] followed by ReLU, as one kernel on the CPU (one pass
/// over the activations fewer each way); elsewhere the two composed.
pub fn batch_norm_relu_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    batch_norm_train_act(x, weight, bias, eps, true)
}

fn batch_norm_train_act(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    if use_cpu_kernel(x) && use_cpu_kernel(weight) && use_cpu_kernel(bias) {
        let stats = Arc::new(Mutex::new(Stats::default()));
        let op = BatchNormTrain {
            eps,
            relu,
            stats: stats.clone(),
        };
        let y = x.contiguous()?.apply_op3_arc(
            &weight.contiguous()?,
            &bias.contiguous()?,
            Arc::new(Box::new(op)),
        )?;
        let s = stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let c = s.mean.len();
        let mean = Tensor::from_vec(s.mean, c, x.device())?;
        let var = Tensor::from_vec(s.var, c, x.device())?;
        Ok((y, mean, var))
    } else {
        let (y, mean, var) = batch_norm_train_reference(x, weight, bias, eps)?;
        let y = if relu { super::relu(&y)? } else { y };
        Ok((y, mean, var))
    }
}

/// The same composed from candle's operations (used off the CPU, and as the
/// reference the kernel is tested against).
pub fn batch_norm_train_reference(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, c, h, w) = x.dims4()?;
    let count = (n * h * w) as f64;
    let mean = (x.sum_keepdim((0, 2, 3))? / count)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = (centred.sqr()?.sum_keepdim((0, 2, 3))? / count)?;
    let inv = (&var + eps)?.sqrt()?.recip()?;
    let scale = inv.broadcast_mul(&weight.reshape((1, c, 1, 1))?)?;
    let y = centred
        .broadcast_mul(&scale)?
        .broadcast_add(&bias.reshape((1, c, 1, 1))?)?;
    Ok((y, mean.detach().flatten_all()?, var.detach().flatten_all()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::f32_data;
    use crate::ops::test_util::*;
    use candle_core::Var;

    #[test]
    fn kernel_matches_composed_reference_forward_and_backward() {
        for (i, dims) in [[2, 3, 5, 7], [1, 1, 6, 4], [4, 2, 1, 3], [2, 5, 3, 3]]
            .iter()
            .enumerate()
        {
            let x = Var::from_tensor(&rand_tensor(dims, 20 + i as u64).affine(2.0, 0.5).unwrap())
                .unwrap();
            let w = Var::from_tensor(
                &rand_tensor(&[dims[1]], 40 + i as u64)
                    .affine(0.5, 1.0)
                    .unwrap(),
            )
            .unwrap();
            let b = Var::from_tensor(&rand_tensor(&[dims[1]], 60 + i as u64)).unwrap();
            let gy = rand_tensor(dims, 80 + i as u64);
            let (y, m, v) =
                batch_norm_train(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5).unwrap();
            let (yr, mr, vr) =
                batch_norm_train_reference(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)
                    .unwrap();
            assert!(max_abs_diff(&y, &yr) < 1e-5, "{dims:?}");
            assert!(max_abs_diff(&m, &mr) < 1e-5);
            assert!(max_abs_diff(&v, &vr) < 1e-5);
            let g = (y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (yr * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            for t in [x.as_tensor(), w.as_tensor(), b.as_tensor()] {
                let d = max_abs_diff(g.get(t).unwrap(), gr.get(t).unwrap());
                assert!(d < 1e-4, "{dims:?}: gradient differs by {d}");
            }
            // the fused ReLU against the norm followed by seg's ReLU
            let (yf, mf, vf) =
                batch_norm_relu_train(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5).unwrap();
            let (yu, _, _) =
                batch_norm_train(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5).unwrap();
            let yu = crate::ops::relu(&yu).unwrap();
            assert_eq!(
                max_abs_diff(&yf, &yu),
                0.0,
                "{dims:?}: fused forward differs"
            );
            assert!(max_abs_diff(&mf, &mr) < 1e-5 && max_abs_diff(&vf, &vr) < 1e-5);
            assert!(f32_data(&yf).unwrap().contains(&0.0));
            let gf = (yf * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let gu = (yu * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            for t in [x.as_tensor(), w.as_tensor(), b.as_tensor()] {
                let d = max_abs_diff(gf.get(t).unwrap(), gu.get(t).unwrap());
                assert!(d < 1e-5, "{dims:?}: fused gradient differs by {d}");
            }
        }
    }
}
