//! Max-pooling 2×2 with stride 2 (odd sizes floored), remembering the argmax
//! so that the backward pass sends each gradient to the one input PyTorch
//! picks (the first maximum in row-major order of the window).

use super::use_cpu_kernel;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct MaxPool2x2 {
    /// Flat input index of the maximum, per output element (set by the forward).
    argmax: Mutex<Option<Arc<Vec<u32>>>>,
}

impl CustomOp1 for MaxPool2x2 {
    fn name(&self) -> &'static str {
        "seg-max-pool-2x2"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let x = super::cpu_f32(storage, layout, self.name())?;
        let (oh, ow) = (h / 2, w / 2);
        let plane_out = oh * ow;
        let mut out = vec![0f32; n * c * plane_out];
        let mut arg = vec![0u32; n * c * plane_out];
        if plane_out > 0 {
            out.par_chunks_mut(plane_out)
                .zip(arg.par_chunks_mut(plane_out))
                .enumerate()
                .for_each(|(p, (o, a))| {
                    let base = p * h * w;
                    let src = &x[base..base + h * w];
                    for i in 0..oh {
                        for j in 0..ow {
                            let r0 = 2 * i * w + 2 * j;
                            let cand = [r0, r0 + 1, r0 + w, r0 + w + 1];
                            let mut best = cand[0];
                            for &k in &cand[1..] {
                                let v = src[k];
                                if v > src[best] || v.is_nan() {
                                    best = k;
                                }
                            }
                            o[i * ow + j] = src[best];
                            a[i * ow + j] = (base + best) as u32;
                        }
                    }
                });
        }
        *self.argmax.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(arg));
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let argmax = super::stored_argmax(&self.argmax, "max-pool")?;
        let g = grad_res.contiguous()?.apply_op1_no_bwd(&MaxPoolScatter {
            argmax,
            in_shape: arg.shape().clone(),
        })?;
        Ok(Some(g))
    }
}

/// Scatters output gradients back to the remembered argmax positions.
struct MaxPoolScatter {
    argmax: Arc<Vec<u32>>,
    in_shape: Shape,
}

impl CustomOp1 for MaxPoolScatter {
    fn name(&self) -> &'static str {
        "seg-max-pool-2x2-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = super::cpu_f32(storage, layout, self.name())?;
        let (n, c, h, w) = self.in_shape.dims4()?;
        let plane_in = h * w;
        let plane_out = (h / 2) * (w / 2);
        let mut out = vec![0f32; n * c * plane_in];
        if plane_out > 0 {
            out.par_chunks_mut(plane_in).enumerate().for_each(|(p, o)| {
                let base = p * plane_in;
                for k in p * plane_out..(p + 1) * plane_out {
                    o[self.argmax[k] as usize - base] += g[k];
                }
            });
        }
        Ok((CpuStorage::F32(out), self.in_shape.clone()))
    }
}

/// Max-pooling with a 2×2 window and stride 2; odd heights/widths are floored.
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    if x.rank() == 5 {
        return super::vol::max_pool3d_2x(x);
    }
    let (_, _, h, w) = x.dims4()?;
    if h < 2 || w < 2 {
        candle_core::bail!("max-pool 2x2: input {h}x{w} is smaller than the window (the image is too small for this network depth)");
    }
    if use_cpu_kernel(x) {
        x.contiguous()?.apply_op1(MaxPool2x2::default())
    } else {
        max_pool2x2_reference(x)
    }
}

/// The same result composed from candle's kernels (used off the CPU, and as
/// the reference the CPU kernel is tested against). candle's own
/// `max_pool2d` backward scales gradients by 1/4 (candle 0.11), so this is a
/// reshape and a max over each window, whose backward is right (ties aside:
/// every tied maximum receives the gradient).
pub fn max_pool2x2_reference(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (oh, ow) = (h / 2, w / 2);
    x.narrow(2, 0, oh * 2)?
        .narrow(3, 0, ow * 2)?
        .reshape((n, c, oh, 2, ow, 2))?
        .permute((0, 1, 2, 4, 3, 5))?
        .reshape((n, c, oh, ow, 4))?
        .max(4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::*;
    use candle_core::{Device, Var};

    /// Plain loop: the gradient of each window goes to its first maximum.
    fn naive_backward(x: &Tensor, gy: &Tensor) -> Vec<f32> {
        let (n, c, h, w) = x.dims4().unwrap();
        let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gv = gy.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (oh, ow) = (h / 2, w / 2);
        let mut g = vec![0f32; xv.len()];
        for p in 0..n * c {
            for i in 0..oh {
                for j in 0..ow {
                    let mut best = p * h * w + 2 * i * w + 2 * j;
                    for (di, dj) in [(0, 1), (1, 0), (1, 1)] {
                        let k = p * h * w + (2 * i + di) * w + 2 * j + dj;
                        if xv[k] > xv[best] {
                            best = k;
                        }
                    }
                    g[best] += gv[p * oh * ow + i * ow + j];
                }
            }
        }
        g
    }

    #[test]
    fn matches_reference_on_odd_shapes_forward_and_backward() {
        for (i, dims) in [[2, 3, 7, 5], [1, 2, 6, 9], [1, 1, 2, 2], [1, 1, 3, 3]]
            .iter()
            .enumerate()
        {
            let x = Var::from_tensor(&rand_tensor(dims, i as u64)).unwrap();
            let gy = rand_tensor(&[dims[0], dims[1], dims[2] / 2, dims[3] / 2], 99);
            let y = max_pool2x2(x.as_tensor()).unwrap();
            let yr = max_pool2x2_reference(x.as_tensor()).unwrap();
            assert_eq!(y.dims(), yr.dims());
            assert_eq!(max_abs_diff(&y, &yr), 0.0);
            let want = naive_backward(x.as_tensor(), &gy);
            for out in [y, yr] {
                let g = (out * &gy).unwrap().sum_all().unwrap().backward().unwrap();
                let got = g
                    .get(x.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                assert_eq!(got, want, "{dims:?}");
            }
        }
    }

    #[test]
    fn too_small_inputs_are_refused() {
        assert!(max_pool2x2(&rand_tensor(&[1, 1, 1, 3], 0)).is_err());
    }

    #[test]
    fn ties_send_the_gradient_to_the_first_maximum() {
        let x = Var::from_tensor(
            &Tensor::zeros((1, 1, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        let g = max_pool2x2(x.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let v = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(v, vec![1.0, 0.0, 0.0, 0.0]);
    }
}
