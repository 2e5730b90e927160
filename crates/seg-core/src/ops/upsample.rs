//! ×2 upsampling: bilinear with `align_corners=True` (candle's own has no
//! backward pass) and nearest-neighbour.

use super::use_cpu_kernel;
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Source rows/columns and weights of one axis: output `o` reads
/// `w0 * x[i0] + w1 * x[i1]`, as PyTorch computes them with align_corners=True.
#[derive(Clone)]
struct AxisTable {
    i0: Vec<usize>,
    i1: Vec<usize>,
    w0: Vec<f32>,
    w1: Vec<f32>,
}

impl AxisTable {
    fn new(input: usize, output: usize) -> Self {
        let scale = if output > 1 {
            (input as f32 - 1.0) / (output as f32 - 1.0)
        } else {
            0.0
        };
        let mut t = Self {
            i0: Vec::with_capacity(output),
            i1: Vec::with_capacity(output),
            w0: Vec::with_capacity(output),
            w1: Vec::with_capacity(output),
        };
        for o in 0..output {
            let src = scale * o as f32;
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 + 1 < input { i0 + 1 } else { i0 };
            let l1 = src - i0 as f32;
            t.i0.push(i0);
            t.i1.push(i1);
            t.w0.push(1.0 - l1);
            t.w1.push(l1);
        }
        t
    }

    /// The same weights as a dense (output × input) matrix.
    fn matrix(&self, input: usize, device: &Device) -> Result<Tensor> {
        let output = self.i0.len();
        let mut m = vec![0f32; output * input];
        for o in 0..output {
            m[o * input + self.i0[o]] += self.w0[o];
            m[o * input + self.i1[o]] += self.w1[o];
        }
        Tensor::from_vec(m, (output, input), device)
    }
}

use super::cpu_f32 as contiguous_f32;

struct Bilinear2x;

impl CustomOp1 for Bilinear2x {
    fn name(&self) -> &'static str {
        "seg-upsample-bilinear-2x"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let (n, c, h, w) = layout.shape().dims4()?;
        let (oh, ow) = (2 * h, 2 * w);
        let (ty, tx) = (AxisTable::new(h, oh), AxisTable::new(w, ow));
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut((oh * ow).max(1))
            .enumerate()
            .for_each(|(p, o)| {
                let src = &x[p * h * w..(p + 1) * h * w];
                for y in 0..oh {
                    let r0 = &src[ty.i0[y] * w..ty.i0[y] * w + w];
                    let r1 = &src[ty.i1[y] * w..ty.i1[y] * w + w];
                    let (a, b) = (ty.w0[y], ty.w1[y]);
                    let row = &mut o[y * ow..(y + 1) * ow];
                    for (xo, v) in row.iter_mut().enumerate() {
                        let (j0, j1) = (tx.i0[xo], tx.i1[xo]);
                        let (c0, c1) = (tx.w0[xo], tx.w1[xo]);
                        *v = a * (c0 * r0[j0] + c1 * r0[j1]) + b * (c0 * r1[j0] + c1 * r1[j1]);
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        let g = grad_res
            .contiguous()?
            .apply_op1_no_bwd(&Bilinear2xBackward { h, w })?;
        Ok(Some(g))
    }
}

/// The adjoint of [`Bilinear2x`]: gathers output gradients into the input.
struct Bilinear2xBackward {
    h: usize,
    w: usize,
}

impl CustomOp1 for Bilinear2xBackward {
    fn name(&self) -> &'static str {
        "seg-upsample-bilinear-2x-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(storage, layout, self.name())?;
        let (n, c, oh, ow) = layout.shape().dims4()?;
        let (h, w) = (self.h, self.w);
        let (ty, tx) = (AxisTable::new(h, oh), AxisTable::new(w, ow));
        let mut out = vec![0f32; n * c * h * w];
        out.par_chunks_mut((h * w).max(1))
            .enumerate()
            .for_each(|(p, o)| {
                let src = &g[p * oh * ow..(p + 1) * oh * ow];
                for y in 0..oh {
                    let (a, b) = (ty.w0[y], ty.w1[y]);
                    let (y0, y1) = (ty.i0[y] * w, ty.i1[y] * w);
                    for xo in 0..ow {
                        let v = src[y * ow + xo];
                        let (j0, j1) = (tx.i0[xo], tx.i1[xo]);
                        let (c0, c1) = (tx.w0[xo] * v, tx.w1[xo] * v);
                        o[y0 + j0] += a * c0;
                        o[y0 + j1] += a * c1;
                        o[y1 + j0] += b * c0;
                        o[y1 + j1] += b * c1;
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, h, w))))
    }
}

/// Bilinear ×2 upsampling with `align_corners=True`, differentiable.
pub fn upsample_bilinear2x(x: &Tensor) -> Result<Tensor> {
    if x.rank() == 5 {
        return super::vol::upsample_trilinear2x(x);
    }
    if use_cpu_kernel(x) {
        x.contiguous()?.apply_op1(Bilinear2x)
    } else {
        upsample_bilinear2x_reference(x)
    }
}

/// The same as two matrix products with the interpolation matrices (used
/// off the CPU, and as the reference the CPU kernel is tested against).
pub fn upsample_bilinear2x_reference(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let my = AxisTable::new(h, 2 * h)
        .matrix(h, x.device())?
        .to_dtype(x.dtype())?;
    let mx = AxisTable::new(w, 2 * w)
        .matrix(w, x.device())?
        .to_dtype(x.dtype())?;
    let rows = x.broadcast_matmul(&mx.t()?)?; // (N,C,H,2W)
    my.broadcast_matmul(&rows) // (N,C,2H,2W)
}

/// Nearest ×2 upsampling of NCHW planes: each input pixel to a 2×2 block.
struct Nearest2x;

impl CustomOp1 for Nearest2x {
    fn name(&self) -> &'static str {
        "seg-upsample-nearest2x"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let x = super::cpu_f32(storage, layout, self.name())?;
        let plane = 4 * h * w;
        // SAFETY: every output plane is written whole, row pair by row pair.
        let y = unsafe {
            super::par_uninit(n * c * plane, plane.max(1), |p, out| {
                let src = &x[p * h * w..][..h * w];
                for (row, pair) in src.chunks(w.max(1)).zip(out.chunks_mut(4 * w.max(1))) {
                    let (top, bottom) = pair.split_at_mut(2 * w);
                    for (i, &v) in row.iter().enumerate() {
                        top[2 * i].write(v);
                        top[2 * i + 1].write(v);
                    }
                    bottom.copy_from_slice(top);
                }
            })
        };
        Ok((CpuStorage::F32(y), Shape::from((n, c, 2 * h, 2 * w))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad_res
                .contiguous()?
                .apply_op1_no_bwd(&Nearest2xBackward)?,
        ))
    }
}

/// The adjoint of [`Nearest2x`]: each input pixel's gradient is the sum of
/// its 2×2 block's, (top-left + top-right) + (bottom-left + bottom-right).
struct Nearest2xBackward;

impl CustomOp1 for Nearest2xBackward {
    fn name(&self) -> &'static str {
        "seg-upsample-nearest2x-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h2, w2) = layout.shape().dims4()?;
        if h2 % 2 != 0 || w2 % 2 != 0 {
            candle_core::bail!("{}: odd gradient shape {:?}", self.name(), layout.dims())
        }
        let (h, w) = (h2 / 2, w2 / 2);
        let g = super::cpu_f32(storage, layout, self.name())?;
        // SAFETY: every input-gradient plane is written whole.
        let dx = unsafe {
            super::par_uninit(n * c * h * w, (h * w).max(1), |p, out| {
                let src = &g[p * 4 * h * w..][..4 * h * w];
                for (row, pair) in out.chunks_mut(w.max(1)).zip(src.chunks(4 * w.max(1))) {
                    let (top, bottom) = pair.split_at(2 * w);
                    for (i, o) in row.iter_mut().enumerate() {
                        o.write(
                            (top[2 * i] + top[2 * i + 1]) + (bottom[2 * i] + bottom[2 * i + 1]),
                        );
                    }
                }
            })
        };
        Ok((CpuStorage::F32(dx), Shape::from((n, c, h, w))))
    }
}

/// Nearest-neighbour ×2 upsampling, differentiable: one parallel kernel
/// each way on the CPU ([`upsample_nearest2x_reference`] elsewhere).
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    if x.rank() == 5 {
        return super::vol::upsample_nearest3d_2x(x);
    }
    if use_cpu_kernel(x) {
        x.contiguous()?.apply_op1(Nearest2x)
    } else {
        upsample_nearest2x_reference(x)
    }
}

/// Nearest-neighbour ×2 upsampling as a broadcast (used off the CPU, and as
/// the kernel's reference). Written as a broadcast rather than candle's
/// `upsample_nearest2d`, whose backward (candle 0.11) overwrites the input's
/// accumulated gradient instead of adding to it; its backward is candle's
/// one-thread strided sum.
pub fn upsample_nearest2x_reference(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    x.reshape((n, c, h, 1, w, 1))?
        .broadcast_as((n, c, h, 2, w, 2))?
        .reshape((n, c, 2 * h, 2 * w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::*;
    use candle_core::Var;

    #[test]
    fn corners_are_kept_and_midpoints_interpolate() {
        let x = Tensor::from_vec(vec![0f32, 3.0], (1, 1, 1, 2), &Device::Cpu).unwrap();
        let y = upsample_bilinear2x(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // align_corners: positions 0, 1/3, 2/3, 1 of the source
        let want = [0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
    }

    #[test]
    fn kernel_matches_matrix_reference_forward_and_backward() {
        for (i, dims) in [[2, 3, 5, 7], [1, 2, 1, 4], [1, 1, 6, 1], [1, 4, 8, 8]]
            .iter()
            .enumerate()
        {
            let x = Var::from_tensor(&rand_tensor(dims, 10 + i as u64)).unwrap();
            let gy = rand_tensor(&[dims[0], dims[1], 2 * dims[2], 2 * dims[3]], 77);
            let y = upsample_bilinear2x(x.as_tensor()).unwrap();
            let yr = upsample_bilinear2x_reference(x.as_tensor()).unwrap();
            assert!(max_abs_diff(&y, &yr) < 1e-5);
            let g = (y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (yr * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(
                max_abs_diff(
                    g.get(x.as_tensor()).unwrap(),
                    gr.get(x.as_tensor()).unwrap()
                ) < 1e-5
            );
        }
    }

    #[test]
    fn nearest_repeats_and_sums_gradients() {
        let x = Var::from_tensor(&rand_tensor(&[1, 2, 3, 2], 5)).unwrap();
        let y = upsample_nearest2x(x.as_tensor()).unwrap();
        assert_eq!(y.dims(), &[1, 2, 6, 4]);
        let v = y.i((0, 1)).unwrap().to_vec2::<f32>().unwrap();
        let xv = x.as_tensor().i((0, 1)).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(v[5][3], xv[2][1]);
        assert_eq!(v[2][0], xv[1][0]);
        // the input also feeds another branch: both gradients must add up
        let loss = (y.sum_all().unwrap() + x.as_tensor().sum_all().unwrap()).unwrap();
        let g = loss.backward().unwrap();
        let gv = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(gv.iter().all(|&v| (v - 5.0).abs() < 1e-6), "{gv:?}");
    }

    #[test]
    fn nearest_kernel_matches_the_broadcast_forward_and_backward() {
        for (i, dims) in [[2, 3, 5, 7], [1, 2, 1, 4], [1, 1, 6, 1], [2, 4, 33, 20]]
            .iter()
            .enumerate()
        {
            let x = Var::from_tensor(&rand_tensor(dims, 30 + i as u64)).unwrap();
            let y = upsample_nearest2x(x.as_tensor()).unwrap();
            let yr = upsample_nearest2x_reference(x.as_tensor()).unwrap();
            assert_eq!(y.dims(), yr.dims());
            assert_eq!(max_abs_diff(&y, &yr), 0.0, "{dims:?}");
            let gy = rand_tensor(y.dims(), 88 + i as u64);
            let g = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (&yr * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let d = max_abs_diff(
                g.get(x.as_tensor()).unwrap(),
                gr.get(x.as_tensor()).unwrap(),
            );
            assert!(d < 1e-5, "{dims:?}: gradient differs by {d}");
        }
    }

    use candle_core::IndexOp;
}
