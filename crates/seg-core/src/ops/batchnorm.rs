//! BatchNorm in training mode as one fused kernel: per-channel batch
//! statistics (accumulated in f64), normalisation and affine transform in the
//! forward pass, and the closed-form gradient for input, weight and bias in
//! one backward pass.
//!
//! Under a [`crate::collective`] reducer (synchronised BatchNorm in a
//! data-parallel run) the per-channel sums of both passes are summed over
//! the ranks before use: every rank normalises with the global batch's
//! statistics and back-propagates through them, as one process with the
//! whole batch would; the weight and bias gradients stay the rank's own
//! share (the training loop sums them with the other gradients).

use super::{lanes_sum, lanes_sum2, use_cpu_kernel};
use crate::collective::StatReducer;
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
    /// Values per channel the statistics were taken over (every rank's
    /// under a reducer).
    count: f64,
}

struct BatchNormTrain {
    eps: f64,
    /// Apply ReLU to the output (and mask the gradient in the backward).
    relu: bool,
    stats: Arc<Mutex<Stats>>,
    /// Sums the statistics over the ranks (synchronised BatchNorm).
    reducer: Option<Arc<dyn StatReducer>>,
}

/// `sums` (per channel, first of each pair) and, when given, `count`,
/// summed over the ranks when there is a reducer.
fn reduce_firsts(
    reducer: &Option<Arc<dyn StatReducer>>,
    sums: &mut [(f64, f64)],
    count: Option<&mut f64>,
) -> Result<()> {
    if let Some(r) = reducer {
        let mut buf: Vec<f64> = sums.iter().map(|s| s.0).collect();
        buf.extend(count.as_deref().copied());
        r.sum(&mut buf)?;
        for (s, v) in sums.iter_mut().zip(&buf) {
            s.0 = *v;
        }
        if let Some(c) = count {
            *c = buf[sums.len()];
        }
    }
    Ok(())
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
        let mut count = (n * hw) as f64;
        // two passes over the data: mean, then centred sum of squares (each
        // summed over the ranks under a reducer)
        let mut sums = per_channel(n, c, hw, |off, _| {
            (lanes_sum(&x[off..off + hw], |v| v as f64), 0.0)
        });
        reduce_firsts(&self.reducer, &mut sums, Some(&mut count))?;
        let mean: Vec<f64> = sums.iter().map(|s| s.0 / count).collect();
        let mut sq = per_channel(n, c, hw, |off, ch| {
            let m = mean[ch];
            (
                lanes_sum(&x[off..off + hw], |v| (v as f64 - m).powi(2)),
                0.0,
            )
        });
        reduce_firsts(&self.reducer, &mut sq, None)?;
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
            count,
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
            reducer: self.reducer.clone(),
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
    /// The forward's reducer: the sums below are taken over every rank.
    reducer: Option<Arc<dyn StatReducer>>,
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
        let Stats {
            mean,
            inv_std,
            scale,
            shift,
            count,
            ..
        } = &self.stats;
        let count = *count;
        let relu = self.relu;
        // the gradient reaching the norm: g, or 0 where the fused ReLU's
        // output was not positive (the forward's own arithmetic, so the same
        // decision); the channel's scale and shift hoisted out of the loops
        let gate = |ch: usize| {
            let (a, t) = (scale[ch], shift[ch]);
            move |gv: f32, xv: f32| if xv * a + t > 0.0 { gv } else { 0.0 }
        };
        // per channel: sum g and sum g * xhat
        let mut sums = per_channel(n, c, hw, |off, ch| {
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
        // the weight and bias gradients: this rank's share
        let dw = sums.iter().map(|s| s.1 as f32).collect();
        let db = sums.iter().map(|s| s.0 as f32).collect();
        if let Some(r) = &self.reducer {
            let mut buf: Vec<f64> = sums.iter().flat_map(|s| [s.0, s.1]).collect();
            r.sum(&mut buf)?;
            for (s, v) in sums.iter_mut().zip(buf.chunks_exact(2)) {
                *s = (v[0], v[1]);
            }
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
    let (y, m, v, _) = batch_norm_train_act(x, weight, bias, eps, false)?;
    Ok((y, m, v))
}

/// [`batch_norm_train`] followed by ReLU, as one kernel on the CPU (one pass
/// over the activations fewer each way); elsewhere the two composed.
pub fn batch_norm_relu_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (y, m, v, _) = batch_norm_train_act(x, weight, bias, eps, true)?;
    Ok((y, m, v))
}

/// [`batch_norm_train`] (then ReLU when `relu`) that also returns the
/// number of values per channel its statistics were taken over: N·H·W, or
/// that summed over the ranks under a [`crate::collective`] reducer, whose
/// statistics are then the global batch's (synchronised BatchNorm).
pub fn batch_norm_train_act(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor, f64)> {
    let reducer = crate::collective::current();
    if use_cpu_kernel(x) && use_cpu_kernel(weight) && use_cpu_kernel(bias) {
        let stats = Arc::new(Mutex::new(Stats::default()));
        let op = BatchNormTrain {
            eps,
            relu,
            stats: stats.clone(),
            reducer,
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
        Ok((y, mean, var, s.count))
    } else if reducer.is_some() {
        candle_core::bail!(
            "synchronised batch norm runs on seg's CPU kernels only (f32 on the CPU), not on {:?} {:?}",
            x.device(),
            x.dtype()
        )
    } else {
        let (n, _, h, w) = x.dims4()?;
        let (y, mean, var) = batch_norm_train_reference(x, weight, bias, eps)?;
        let y = if relu { super::relu(&y)? } else { y };
        Ok((y, mean, var, (n * h * w) as f64))
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

    /// Ranks simulated by threads: `sum` adds every thread's buffer.
    struct Threads {
        barrier: std::sync::Barrier,
        slots: Mutex<Vec<Vec<f64>>>,
        n: usize,
    }

    struct Rank(Arc<Threads>);

    impl StatReducer for Rank {
        fn sum(&self, buf: &mut [f64]) -> Result<()> {
            let t = &self.0;
            t.slots.lock().unwrap().push(buf.to_vec());
            t.barrier.wait();
            {
                let slots = t.slots.lock().unwrap();
                for (i, v) in buf.iter_mut().enumerate() {
                    *v = slots.iter().map(|s| s[i]).sum();
                }
            }
            t.barrier.wait();
            // the last rank out clears the slots for the next sum
            let mut slots = t.slots.lock().unwrap();
            if slots.len() == t.n {
                slots.clear();
            }
            drop(slots);
            t.barrier.wait();
            Ok(())
        }
    }

    /// Two "ranks" (threads), each with half the batch (items r, r + 2,
    /// ...) and a reducer over both, compute what one process computes on
    /// the whole batch: outputs, input gradients, statistics and count;
    /// their weight and bias gradients add up to the whole batch's.
    #[test]
    fn synchronised_ranks_match_one_process_on_the_whole_batch() {
        let dims = [4usize, 3, 5, 6];
        let x = rand_tensor(&dims, 7).affine(2.0, 0.5).unwrap();
        let w = rand_tensor(&[3], 8).affine(0.5, 1.0).unwrap();
        let b = rand_tensor(&[3], 9);
        let gy = rand_tensor(&dims, 10);
        type Out = (Tensor, Tensor, Tensor, f64, Tensor, Tensor, Tensor);
        let run = |x: &Tensor, gy: &Tensor| -> Out {
            let (xv, wv, bv) = (
                Var::from_tensor(x).unwrap(),
                Var::from_tensor(&w).unwrap(),
                Var::from_tensor(&b).unwrap(),
            );
            let (y, m, v, count) =
                batch_norm_train_act(xv.as_tensor(), wv.as_tensor(), bv.as_tensor(), 1e-5, true)
                    .unwrap();
            let g = (&y * gy).unwrap().sum_all().unwrap().backward().unwrap();
            let grad = |t: &Var| g.get(t.as_tensor()).unwrap().clone();
            (y, m, v, count, grad(&xv), grad(&wv), grad(&bv))
        };
        let whole = run(&x, &gy);
        assert_eq!(whole.3, (4 * 5 * 6) as f64);
        let threads = Arc::new(Threads {
            barrier: std::sync::Barrier::new(2),
            slots: Mutex::new(Vec::new()),
            n: 2,
        });
        let items = |t: &Tensor, r: usize| {
            let idx = Tensor::new(&[r as u32, r as u32 + 2], &candle_core::Device::Cpu).unwrap();
            t.index_select(&idx, 0).unwrap()
        };
        let ranks: Vec<Out> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|r| {
                    let (xr, gr) = (items(&x, r), items(&gy, r));
                    let reducer: Arc<dyn StatReducer> = Arc::new(Rank(threads.clone()));
                    let run = &run;
                    s.spawn(move || {
                        let _g = crate::collective::scoped(Some(reducer));
                        run(&xr, &gr)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (r, o) in ranks.iter().enumerate() {
            assert_eq!(o.3, whole.3, "rank {r}: the global count");
            assert!(max_abs_diff(&o.1, &whole.1) < 1e-6, "rank {r}: mean");
            assert!(max_abs_diff(&o.2, &whole.2) < 1e-6, "rank {r}: variance");
            assert!(
                max_abs_diff(&o.0, &items(&whole.0, r)) < 1e-5,
                "rank {r}: output"
            );
            let d = max_abs_diff(&o.4, &items(&whole.4, r));
            assert!(d < 1e-5, "rank {r}: input gradient differs by {d}");
        }
        for (k, name) in [(5, "weight"), (6, "bias")] {
            let pick = |o: &Out| if k == 5 { o.5.clone() } else { o.6.clone() };
            let sum = (pick(&ranks[0]) + pick(&ranks[1])).unwrap();
            let d = max_abs_diff(&sum, &pick(&whole));
            assert!(d < 1e-4, "{name} gradient: ranks' sum differs by {d}");
            // a rank's own share is not the whole (the test can fail)
            assert!(max_abs_diff(&pick(&ranks[0]), &pick(&whole)) > 1e-3);
        }
        // without the reducer a half batch has its own statistics
        let alone = run(&items(&x, 0), &items(&gy, 0));
        assert!(max_abs_diff(&alone.1, &whole.1) > 1e-3);
    }
}
