//! The Adam / AdamW update as two fused in-place passes over the parameter
//! (PyTorch's update rule), with the two moments packed in one (2, …) tensor:
//! one pass updates both moments from the gradient, one updates the
//! parameter from them. On the CPU both are parallel kernels that allocate
//! nothing; elsewhere the same arithmetic is composed from tensor ops.
//!
//! Only the per-element update is here: it is a kernel (candle in-place
//! custom ops, which only seg-core may name). The optimiser itself — the
//! step count, gradient clipping, the moments kept per parameter, saving
//! and restoring them, SGD — is seg-train's `optim.rs`, which calls
//! [`adam_step`] once per parameter with the [`AdamStep`] it computed.

use super::cpu_f32;
use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor, Var};
use rayon::prelude::*;

/// Settings of one Adam step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// AdamW (decoupled weight decay) instead of Adam's L2 term.
    pub decoupled: bool,
    /// The step number, from 1 (bias correction).
    pub step: i32,
    /// Multiplies the gradient (gradient clipping).
    pub grad_scale: f64,
}

const CHUNK: usize = 1 << 14;

fn as_mut_f32<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("{what} needs a contiguous f32 tensor"),
    }
}

/// moments (2, …) ← β·moments + (1 − β)·(g′, g′²), g′ = scale·g [+ wd·p].
struct MomentPass(AdamStep);

impl InplaceOp3 for MomentPass {
    fn name(&self) -> &'static str {
        "seg-adam-moments"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> Result<()> {
        let h = self.0;
        let mv = as_mut_f32(dst, dst_l, self.name())?;
        let g = cpu_f32(gs, gl, self.name())?;
        let p = cpu_f32(ps, pl, self.name())?;
        if mv.len() != 2 * g.len() || p.len() != g.len() {
            candle_core::bail!("seg adam: moments, gradient and parameter sizes disagree");
        }
        let (m, v) = mv.split_at_mut(g.len());
        let (b1, b2) = (h.beta1 as f32, h.beta2 as f32);
        let (scale, l2) = (
            h.grad_scale as f32,
            if h.decoupled {
                0.0
            } else {
                h.weight_decay as f32
            },
        );
        m.par_chunks_mut(CHUNK)
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK).zip(p.par_chunks(CHUNK)))
            .for_each(|((m, v), (g, p))| {
                for i in 0..m.len() {
                    let gi = g[i] * scale + l2 * p[i];
                    m[i] = m[i] * b1 + gi * (1.0 - b1);
                    v[i] = v[i] * b2 + gi * gi * (1.0 - b2);
                }
            });
        Ok(())
    }
}

/// p ← p·(1 − lr·wd) − lr/bc1 · m / (√v/√bc2 + ε).
struct ParamPass(AdamStep);

impl InplaceOp2 for ParamPass {
    fn name(&self) -> &'static str {
        "seg-adam-param"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        ms: &CpuStorage,
        ml: &Layout,
    ) -> Result<()> {
        let h = self.0;
        let p = as_mut_f32(dst, dst_l, self.name())?;
        let mv = cpu_f32(ms, ml, self.name())?;
        if mv.len() != 2 * p.len() {
            candle_core::bail!("seg adam: moments and parameter sizes disagree");
        }
        let (m, v) = mv.split_at(p.len());
        let (bc1, bc2) = (1.0 - h.beta1.powi(h.step), 1.0 - h.beta2.powi(h.step));
        let decay = if h.decoupled {
            (1.0 - h.lr * h.weight_decay) as f32
        } else {
            1.0
        };
        let (step, sqrt_bc2, eps) = ((h.lr / bc1) as f32, bc2.sqrt() as f32, h.eps as f32);
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(p, (m, v))| {
                for i in 0..p.len() {
                    let denom = v[i].sqrt() / sqrt_bc2 + eps;
                    p[i] = p[i] * decay - step * (m[i] / denom);
                }
            });
        Ok(())
    }
}

/// One Adam/AdamW step of `param` with gradient `grad`. `moments` holds
/// (m, v) stacked on a new first axis; `None` (the first step) starts them
/// at zero.
pub fn adam_step(
    param: &Var,
    grad: &Tensor,
    moments: &mut Option<Tensor>,
    h: &AdamStep,
) -> Result<()> {
    let p = param.as_tensor();
    if grad.dims() != p.dims() {
        candle_core::bail!(
            "seg adam: gradient shape {:?}, parameter {:?}",
            grad.dims(),
            p.dims()
        );
    }
    let mut dims = vec![2];
    dims.extend_from_slice(p.dims());
    let mv = match moments.take() {
        Some(t) if t.dims() == dims.as_slice() => t,
        Some(t) => candle_core::bail!("seg adam: moments shape {:?}, expected {dims:?}", t.dims()),
        None => Tensor::zeros(dims.as_slice(), p.dtype(), p.device())?,
    };
    let grad = grad.detach();
    if p.device().is_cpu()
        && p.dtype() == DType::F32
        && p.is_contiguous()
        && grad.dtype() == DType::F32
    {
        let grad = grad.contiguous()?;
        mv.inplace_op3(&grad, p, &MomentPass(*h))?;
        p.inplace_op2(&mv, &ParamPass(*h))?;
        *moments = Some(mv);
        return Ok(());
    }
    // composed from tensor ops (other devices and dtypes)
    let pd = p.detach();
    let mut g = (grad * h.grad_scale)?;
    if !h.decoupled && h.weight_decay != 0.0 {
        g = (g + (&pd * h.weight_decay)?)?;
    }
    let (m, v) = (mv.get(0)?, mv.get(1)?);
    let m = ((m * h.beta1)? + (&g * (1.0 - h.beta1))?)?;
    let v = ((v * h.beta2)? + (g.sqr()? * (1.0 - h.beta2))?)?;
    let (bc1, bc2) = (1.0 - h.beta1.powi(h.step), 1.0 - h.beta2.powi(h.step));
    let decayed = if h.decoupled && h.weight_decay != 0.0 {
        (&pd * (1.0 - h.lr * h.weight_decay))?
    } else {
        pd
    };
    let denom = ((v.sqrt()? / bc2.sqrt())? + h.eps)?;
    let new_p = (decayed - ((&m / denom)? * (h.lr / bc1))?)?;
    param.set(&new_p.detach())?;
    *moments = Some(Tensor::stack(&[m.detach(), v.detach()], 0)?);
    Ok(())
}

/// `avg ← avg + w·(value − avg)`, in place.
struct AveragePass(f32);

impl InplaceOp2 for AveragePass {
    fn name(&self) -> &'static str {
        "seg-weight-average"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
    ) -> Result<()> {
        let avg = as_mut_f32(dst, dst_l, self.name())?;
        let value = cpu_f32(src, src_l, self.name())?;
        if avg.len() != value.len() {
            candle_core::bail!("seg weight average: sizes disagree");
        }
        let w = self.0;
        avg.par_chunks_mut(CHUNK)
            .zip(value.par_chunks(CHUNK))
            .for_each(|(a, v)| {
                for (a, &v) in a.iter_mut().zip(v) {
                    *a += w * (v - *a);
                }
            });
        Ok(())
    }
}

/// One step of a moving average of a weight: `avg ← avg + w·(value − avg)`
/// (an exponential moving average with decay 1 − w). In place on the CPU
/// (f32, contiguous; nothing allocated), else composed and replaced.
/// `avg` must be a tensor of its own (not sharing storage with a weight).
pub fn average_step(avg: &mut Tensor, value: &Tensor, w: f64) -> Result<()> {
    if avg.dims() != value.dims() {
        candle_core::bail!(
            "seg weight average: average {:?}, value {:?}",
            avg.dims(),
            value.dims()
        );
    }
    let value = value.detach();
    if avg.device().is_cpu()
        && avg.dtype() == DType::F32
        && avg.is_contiguous()
        && value.dtype() == DType::F32
    {
        let value = value.contiguous()?;
        return avg.inplace_op2(&value, &AveragePass(w as f32));
    }
    *avg = (&*avg + ((value - &*avg)? * w)?)?.detach();
    Ok(())
}

/// Σ x² of a tensor, in f64 (parallel and allocation-free for CPU f32).
pub fn sum_squares(x: &Tensor) -> Result<f64> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && x.is_contiguous() {
        let (s, l) = x.storage_and_layout();
        if let candle_core::Storage::Cpu(cpu) = &*s {
            let v = cpu_f32(cpu, l, "seg sum of squares")?;
            // per-chunk sums added in order: the result does not depend on
            // thread scheduling
            let parts: Vec<f64> = v
                .par_chunks(CHUNK)
                .map(|c| super::lanes_sum(c, |a| (a as f64) * (a as f64)))
                .collect();
            return Ok(parts.iter().sum());
        }
    }
    x.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::*;
    use candle_core::Device;

    /// The in-place average against the formula, on a tensor large enough
    /// for several parallel chunks; the value is left alone; a strided
    /// value; shape mismatch refused.
    #[test]
    fn average_step_is_the_moving_average() {
        let f32_vec = |t: &Tensor| crate::ops::f32_data(t).unwrap();
        let n = 3 * CHUNK + 17;
        let a0 = rand_tensor(&[n], 1);
        let v = rand_tensor(&[n], 2);
        let mut a = a0.copy().unwrap();
        average_step(&mut a, &v, 0.25).unwrap();
        let (a0s, vs, got) = (f32_vec(&a0), f32_vec(&v), f32_vec(&a));
        for i in 0..n {
            let want = a0s[i] + 0.25 * (vs[i] - a0s[i]);
            assert!((got[i] - want).abs() <= 1e-6, "{i}: {} vs {want}", got[i]);
        }
        assert_eq!(f32_vec(&v), vs, "the value changed");
        let t = rand_tensor(&[5, 4], 3);
        let mut b = rand_tensor(&[4, 5], 4);
        let b0 = f32_vec(&b);
        average_step(&mut b, &t.t().unwrap(), 1.0).unwrap();
        assert_eq!(f32_vec(&b), f32_vec(&t.t().unwrap().contiguous().unwrap()));
        assert_ne!(f32_vec(&b), b0);
        assert!(average_step(&mut b, &t, 0.5).is_err());
    }

    /// The composed (non-CPU) path written out on the CPU, for comparison.
    fn reference(
        p: &Tensor,
        g: &Tensor,
        m: &Tensor,
        v: &Tensor,
        h: &AdamStep,
    ) -> (Tensor, Tensor, Tensor) {
        let mut g = (g * h.grad_scale).unwrap();
        if !h.decoupled {
            g = (g + (p * h.weight_decay).unwrap()).unwrap();
        }
        let m = ((m * h.beta1).unwrap() + (&g * (1.0 - h.beta1)).unwrap()).unwrap();
        let v = ((v * h.beta2).unwrap() + (g.sqr().unwrap() * (1.0 - h.beta2)).unwrap()).unwrap();
        let (bc1, bc2) = (1.0 - h.beta1.powi(h.step), 1.0 - h.beta2.powi(h.step));
        let p = if h.decoupled {
            (p * (1.0 - h.lr * h.weight_decay)).unwrap()
        } else {
            p.clone()
        };
        let denom = ((v.sqrt().unwrap() / bc2.sqrt()).unwrap() + h.eps).unwrap();
        let p = (p - ((&m / denom).unwrap() * (h.lr / bc1)).unwrap()).unwrap();
        (p, m, v)
    }

    #[test]
    fn fused_adam_matches_the_composed_rule_over_steps() {
        for decoupled in [false, true] {
            let p0 = rand_tensor(&[3, 5, 7], 1);
            let var = Var::from_tensor(&p0).unwrap();
            let (mut rp, mut rm, mut rv) = (
                p0.clone(),
                p0.zeros_like().unwrap(),
                p0.zeros_like().unwrap(),
            );
            let mut mv = None;
            for step in 1..=4 {
                let g = rand_tensor(&[3, 5, 7], 10 + step as u64);
                let h = AdamStep {
                    lr: 1e-2,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: 0.1,
                    decoupled,
                    step,
                    grad_scale: 0.7,
                };
                adam_step(&var, &g, &mut mv, &h).unwrap();
                (rp, rm, rv) = reference(&rp, &g, &rm, &rv, &h);
                let mvt = mv.as_ref().unwrap();
                assert!(max_abs_diff(var.as_tensor(), &rp) < 1e-6);
                assert!(max_abs_diff(&mvt.get(0).unwrap(), &rm) < 1e-6);
                assert!(max_abs_diff(&mvt.get(1).unwrap(), &rv) < 1e-6);
            }
        }
    }

    #[test]
    fn sum_squares_is_exact_enough() {
        let t = rand_tensor(&[100_003], 3);
        let want: f64 = t
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|&a| (a as f64).powi(2))
            .sum();
        assert!((sum_squares(&t).unwrap() - want).abs() < 1e-9 * want);
        let z = Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(sum_squares(&z).unwrap(), 0.0);
    }
}
