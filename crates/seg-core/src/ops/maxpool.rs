//! Max-pooling 2×2 with stride 2 (odd sizes floored), remembering the argmax
//! so that the backward pass sends each gradient to the one input PyTorch
//! picks (the first maximum in row-major order of the window).

use super::use_cpu_kernel;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// The forward op. With `record` (an input that tracks a gradient) it keeps
/// the argmax for the backward pass; without (inference) it computes the
/// maxima alone. Both fold each window in the order (r0, r0 + 1, r0 + w,
/// r0 + w + 1) with [`replaces`], so their values are the same bits.
struct MaxPool2x2 {
    record: bool,
    /// Flat input index of the maximum, per output element (set by a
    /// recording forward).
    argmax: Mutex<Option<Arc<Vec<u32>>>>,
}

impl MaxPool2x2 {
    fn new(record: bool) -> Self {
        Self {
            record,
            argmax: Mutex::new(None),
        }
    }
}

/// The window fold's rule: `v` replaces the `kept` value when larger or NaN.
#[inline(always)]
fn replaces(kept: f32, v: f32) -> bool {
    v > kept || v.is_nan()
}

impl CustomOp1 for MaxPool2x2 {
    fn name(&self) -> &'static str {
        "seg-max-pool-2x2"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let x = super::cpu_f32(storage, layout, self.name())?;
        let (oh, ow) = (h / 2, w / 2);
        // (chunks of at least 1: no output, no task, when h or w is 1)
        let plane_out = (oh * ow).max(1);
        let mut out = vec![0f32; n * c * oh * ow];
        if self.record {
            let mut arg = vec![0u32; out.len()];
            out.par_chunks_mut(plane_out)
                .zip(arg.par_chunks_mut(plane_out))
                .enumerate()
                .for_each(|(p, (o, a))| {
                    let base = p * h * w;
                    let src = &x[base..base + h * w];
                    // a row of windows at a time
                    for (i, (orow, arow)) in o
                        .chunks_exact_mut(ow)
                        .zip(a.chunks_exact_mut(ow))
                        .enumerate()
                    {
                        let (r0, r1) = (2 * i * w, (2 * i + 1) * w);
                        let (top, bottom) = (&src[r0..r0 + 2 * ow], &src[r1..r1 + 2 * ow]);
                        for (j, (ov, av)) in orow.iter_mut().zip(arow.iter_mut()).enumerate() {
                            let (mut best, mut at) = (top[2 * j], r0 + 2 * j);
                            for (v, k) in [
                                (top[2 * j + 1], r0 + 2 * j + 1),
                                (bottom[2 * j], r1 + 2 * j),
                                (bottom[2 * j + 1], r1 + 2 * j + 1),
                            ] {
                                if replaces(best, v) {
                                    (best, at) = (v, k);
                                }
                            }
                            *ov = best;
                            *av = (base + at) as u32;
                        }
                    }
                });
            *self.argmax.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(arg));
        } else {
            let fold = |kept: f32, v: f32| if replaces(kept, v) { v } else { kept };
            out.par_chunks_mut(plane_out)
                .enumerate()
                .for_each(|(p, o)| {
                    let src = &x[p * h * w..(p + 1) * h * w];
                    for (i, row) in o.chunks_exact_mut(ow).enumerate() {
                        let r0 = &src[2 * i * w..2 * i * w + 2 * ow];
                        let r1 = &src[(2 * i + 1) * w..(2 * i + 1) * w + 2 * ow];
                        for ((o, a), b) in row
                            .iter_mut()
                            .zip(r0.chunks_exact(2))
                            .zip(r1.chunks_exact(2))
                        {
                            *o = fold(fold(fold(a[0], a[1]), b[0]), b[1]);
                        }
                    }
                });
        }
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
        let x = x.contiguous()?;
        if x.track_op() {
            x.apply_op1(MaxPool2x2::new(true))
        } else {
            // inference: no backward will ask for the argmax
            x.apply_op1_no_bwd(&MaxPool2x2::new(false))
        }
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

    /// The inference kernel (an input that tracks no gradient) gives the
    /// training kernel's values bit for bit, NaN and signed zeros included.
    #[test]
    fn the_inference_kernel_gives_the_training_kernels_values() {
        for (i, dims) in [[2, 3, 7, 5], [1, 2, 6, 9], [1, 1, 2, 2], [1, 4, 33, 18]]
            .iter()
            .enumerate()
        {
            let mut v = rand_tensor(dims, 10 + i as u64)
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            // ties of signed zeros, and NaNs in some windows
            for (k, e) in v.iter_mut().enumerate() {
                match k % 7 {
                    2 => *e = f32::NAN,
                    3 => *e = -0.0,
                    4 => *e = 0.0,
                    _ => {}
                }
            }
            let x = Tensor::from_vec(v, dims.to_vec(), &Device::Cpu).unwrap();
            let eval = max_pool2x2(&x).unwrap();
            let tracked = Var::from_tensor(&x).unwrap();
            let train = max_pool2x2(tracked.as_tensor()).unwrap();
            assert!(train.track_op() && !eval.track_op());
            let bits = |t: &Tensor| -> Vec<u32> {
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|f| if f.is_nan() { u32::MAX } else { f.to_bits() })
                    .collect()
            };
            assert_eq!(bits(&eval), bits(&train), "{dims:?}");
            assert!(bits(&eval).contains(&u32::MAX), "{dims:?}: no NaN window");
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
