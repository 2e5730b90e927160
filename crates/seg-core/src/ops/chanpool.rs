//! Mean and maximum over the channels of an NCHW tensor, side by side as a
//! (N, 2, H, W) tensor (CBAM-style spatial attention's input), as one kernel
//! that remembers each pixel's argmax channel, so that the backward pass is
//! one pass too (the mean's gradient spread over the channels, the max's
//! sent to the first maximal channel, as PyTorch's `max(dim)` does).

use super::use_cpu_kernel;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// Pixels per task.
const CHUNK: usize = 4096;

#[derive(Default)]
struct ChannelMeanMax {
    /// Argmax channel per (image, pixel), set by the forward.
    argmax: Mutex<Option<Arc<Vec<u32>>>>,
}

impl CustomOp1 for ChannelMeanMax {
    fn name(&self) -> &'static str {
        "seg-channel-mean-max"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        if c == 0 {
            candle_core::bail!("{}: input has no channels", self.name())
        }
        let x = super::cpu_f32(storage, layout, self.name())?;
        let hw = h * w;
        let chunks = hw.div_ceil(CHUNK).max(1);
        // one task per (image, chunk of pixels): the mean plane, the max
        // plane and the argmax of those pixels
        type Part = (Vec<f32>, Vec<f32>, Vec<u32>);
        let parts: Vec<Part> = {
            use rayon::prelude::*;
            (0..n * chunks)
                .into_par_iter()
                .map(|t| {
                    let (img, k) = (t / chunks, t % chunks);
                    let (p0, p1) = (k * CHUNK, ((k + 1) * CHUNK).min(hw));
                    let len = p1 - p0;
                    let plane = |ch: usize| &x[(img * c + ch) * hw + p0..][..len];
                    let mut sum = plane(0).to_vec();
                    let mut max = plane(0).to_vec();
                    let mut arg = vec![0u32; len];
                    for ch in 1..c {
                        let src = plane(ch);
                        for (((s, m), a), &v) in sum.iter_mut().zip(&mut max).zip(&mut arg).zip(src)
                        {
                            *s += v;
                            if v > *m || (v.is_nan() && !m.is_nan()) {
                                *m = v;
                                *a = ch as u32;
                            }
                        }
                    }
                    let inv = 1.0 / c as f32;
                    sum.iter_mut().for_each(|s| *s *= inv);
                    (sum, max, arg)
                })
                .collect()
        };
        let mut out = vec![0f32; n * 2 * hw];
        let mut argmax = vec![0u32; n * hw];
        for (t, (mean, max, arg)) in parts.into_iter().enumerate() {
            let (img, k) = (t / chunks, t % chunks);
            let p0 = k * CHUNK;
            let len = mean.len();
            out[img * 2 * hw + p0..][..len].copy_from_slice(&mean);
            out[(img * 2 + 1) * hw + p0..][..len].copy_from_slice(&max);
            argmax[img * hw + p0..][..len].copy_from_slice(&arg);
        }
        *self.argmax.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(argmax));
        Ok((CpuStorage::F32(out), Shape::from((n, 2, h, w))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let argmax = super::stored_argmax(&self.argmax, "channel mean/max")?;
        let g = grad_res
            .contiguous()?
            .apply_op1_no_bwd(&ChannelMeanMaxBackward {
                argmax,
                in_shape: arg.shape().clone(),
            })?;
        Ok(Some(g))
    }
}

/// dx[n, c, p] = g_mean[n, p] / C + (c == argmax[n, p]) · g_max[n, p].
struct ChannelMeanMaxBackward {
    argmax: Arc<Vec<u32>>,
    in_shape: Shape,
}

impl CustomOp1 for ChannelMeanMaxBackward {
    fn name(&self) -> &'static str {
        "seg-channel-mean-max-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = self.in_shape.dims4()?;
        let hw = h * w;
        if layout.dims() != [n, 2, h, w] || self.argmax.len() != n * hw {
            candle_core::bail!(
                "{}: gradient shape {:?} does not fit",
                self.name(),
                layout.dims()
            )
        }
        let g = super::cpu_f32(storage, layout, self.name())?;
        let inv = 1.0 / c as f32;
        // SAFETY: every (image, channel) plane is written element by element.
        let dx = unsafe {
            super::par_uninit(n * c * hw, hw.max(1), |plane, out| {
                let img = plane / c;
                let ch = plane % c;
                let gm = &g[img * 2 * hw..][..hw];
                let gx = &g[(img * 2 + 1) * hw..][..hw];
                let arg = &self.argmax[img * hw..][..hw];
                for (((o, &m), &x), &a) in out.iter_mut().zip(gm).zip(gx).zip(arg) {
                    o.write(m * inv + if a as usize == ch { x } else { 0.0 });
                }
            })
        };
        Ok((CpuStorage::F32(dx), self.in_shape.clone()))
    }
}

/// The channel mean and the channel maximum of an NCHW tensor, concatenated:
/// (N, C, H, W) → (N, 2, H, W). One kernel on the CPU; elsewhere composed
/// from [`super::channel_mean`], [`super::channel_max`] and a concatenation.
pub fn channel_mean_max(x: &Tensor) -> Result<Tensor> {
    if x.rank() == 5 {
        return super::vol::per_plane(x, channel_mean_max);
    }
    if use_cpu_kernel(x) {
        x.contiguous()?.apply_op1(ChannelMeanMax::default())
    } else {
        channel_mean_max_reference(x)
    }
}

/// The composed version (used off the CPU, and as the kernel's reference).
pub fn channel_mean_max_reference(x: &Tensor) -> Result<Tensor> {
    super::cat_channels(&[&super::channel_mean(x)?, &super::channel_max(x)?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::*;
    use candle_core::Var;

    #[test]
    fn matches_the_composed_ops_forward_and_backward() {
        for (i, dims) in [[2, 3, 5, 7], [1, 1, 4, 4], [3, 6, 65, 70]]
            .iter()
            .enumerate()
        {
            let x = Var::from_tensor(&rand_tensor(dims, 7 + i as u64)).unwrap();
            let y = channel_mean_max(x.as_tensor()).unwrap();
            let yr = channel_mean_max_reference(x.as_tensor()).unwrap();
            assert_eq!(y.dims(), &[dims[0], 2, dims[2], dims[3]]);
            assert!(max_abs_diff(&y, &yr) < 1e-6, "{dims:?}");
            let gy = rand_tensor(y.dims(), 70 + i as u64);
            let g = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (&yr * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let d = max_abs_diff(
                g.get(x.as_tensor()).unwrap(),
                gr.get(x.as_tensor()).unwrap(),
            );
            assert!(d < 1e-6, "{dims:?}: gradient differs by {d}");
        }
    }
}
