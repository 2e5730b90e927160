//! The stride-1 k×k×k convolution ("same" padding k / 2) on depth-major
//! volumes, computed by the 2D kernels.
//!
//! A volume is stored depth-major, (N, D, C, H, W) (see [`crate::ops::vol`]),
//! so its N·D planes are an NCHW batch. With the kernel's depth taps
//! stacked as output channels — `wcat` (k·O, C, k, k), block `kd` holding
//! `w[:, :, kd]` — one 2D convolution of all planes gives
//! `Y[n·D + s, kd·O + o]`, the contribution of plane `s` through tap `kd`,
//! and the 3D output is the sum along depth
//! `out[n, d, o] = Σ_kd Y[n·D + d + kd − p, kd·O + o]` (planes outside the
//! volume are the zero padding). The backward pass is the 2D one on the
//! expanded gradient `dY[n·D + s, kd·O + o] = dout[n, s − kd + p, o]`: the
//! input gradient and the weight gradient of the 2D convolution, run by the
//! same kernels ([`super::route`]) with the same rules. The 2D products
//! (`Y`, `dY`) are scratch: nothing beyond the input is kept for backward.

use super::{channel_sums, route, slice, Geom, InputGrad, WeightGrad};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The sizes of a 3D convolution on a depth-major volume.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Geom3 {
    n: usize,
    d: usize,
    /// Output channels.
    o: usize,
    k: usize,
    /// The 2D convolution of all planes with the stacked taps.
    planes: Geom,
}

impl Geom3 {
    /// `x`: (N, D, C, H, W); `wcat`: (k·O, C, k, k).
    fn new(x: &[usize], wcat: &[usize]) -> Result<Self> {
        let (&[n, d, c, h, w], &[ko, _, k, _]) = (x, wcat) else {
            candle_core::bail!(
                "seg conv3d: expected a 5-d input and stacked 4-d weight, got {x:?} and {wcat:?}"
            )
        };
        if k % 2 == 0 || ko % k != 0 {
            candle_core::bail!("seg conv3d: stacked weight {wcat:?} is not an odd k×k×k kernel");
        }
        let planes = Geom::new(&[n * d, c, h, w], wcat, k / 2)?;
        Ok(Self {
            n,
            d,
            o: ko / k,
            k,
            planes,
        })
    }

    fn pad(&self) -> usize {
        self.k / 2
    }

    fn hw(&self) -> usize {
        self.planes.h * self.planes.w
    }

    fn out_shape(&self) -> Shape {
        Shape::from((self.n, self.d, self.o, self.planes.h, self.planes.w))
    }

    /// The source plane of output plane `d` through tap `kd`, if inside.
    fn source(&self, d: usize, kd: usize) -> Option<usize> {
        (d + kd).checked_sub(self.pad()).filter(|&s| s < self.d)
    }

    /// The output plane plane `s` feeds through tap `kd`, if inside.
    fn target(&self, s: usize, kd: usize) -> Option<usize> {
        (s + self.pad()).checked_sub(kd).filter(|&d| d < self.d)
    }
}

/// Sums the taps' planes along depth: `y` (N·D, k·O, H·W) → (N, D, O, H·W),
/// plus bias, then ReLU if `relu`.
fn combine(y: &[f32], g: &Geom3, bias: Option<&[f32]>, relu: bool) -> Vec<f32> {
    let hw = g.hw();
    let mut out = vec![0f32; g.n * g.d * g.o * hw];
    out.par_chunks_mut(hw).enumerate().for_each(|(i, dst)| {
        let (o, nd) = (i % g.o, i / g.o);
        let (n, d) = (nd / g.d, nd % g.d);
        let b = bias.map_or(0.0, |b| b[o]);
        dst.fill(b);
        for kd in 0..g.k {
            if let Some(s) = g.source(d, kd) {
                let src = &y[((n * g.d + s) * g.k * g.o + kd * g.o + o) * hw..][..hw];
                for (a, &v) in dst.iter_mut().zip(src) {
                    *a += v;
                }
            }
        }
        if relu {
            for a in dst.iter_mut() {
                *a = a.max(0.0);
            }
        }
    });
    out
}

/// The forward op on (x (N, D, C, H, W), wcat (k·O, C, k, k) [, bias (O)]).
struct Conv3dOp {
    relu: bool,
}

impl Conv3dOp {
    fn forward(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom3::new(x.1.dims(), w.1.dims())?;
        let bs = match b {
            Some((s, l)) => {
                if l.dims() != [g.o] {
                    candle_core::bail!("seg conv3d: bias shape {:?}, expected [{}]", l.dims(), g.o)
                }
                Some(slice(s, l, "bias")?)
            }
            None => None,
        };
        let y = route::forward(
            slice(x.0, x.1, "input")?,
            slice(w.0, w.1, "weight")?,
            None,
            false,
            &g.planes,
        );
        let out = combine(&y, &g, bs, self.relu);
        Ok((CpuStorage::F32(out), g.out_shape()))
    }

    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
        bias: bool,
    ) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
        let g = Geom3::new(x.dims(), w.dims())?;
        let grad = grad.contiguous()?;
        let dy = grad.apply_op1_no_bwd(&Expand { g })?;
        let x4 = x.contiguous()?.reshape(g.planes_dims().to_vec())?;
        let dx = if x.track_op() {
            let dx = dy.apply_op2_no_bwd(
                &w.contiguous()?,
                &InputGrad {
                    padding: g.pad(),
                    x_dims: g.planes_dims().to_vec(),
                },
            )?;
            Some(dx.reshape(x.dims())?)
        } else {
            None
        };
        let dw = dy
            .apply_op2_no_bwd(
                &x4,
                &WeightGrad {
                    padding: g.pad(),
                    bias: false,
                    w_dims: w.dims().to_vec(),
                },
            )?
            .reshape(w.dims())?;
        let db = if bias {
            let (n, d, o, h, wd) = grad.dims5()?;
            Some(
                grad.reshape((n * d, o, h * wd))?
                    .apply_op1_no_bwd(&ChannelSums)?,
            )
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

impl Geom3 {
    fn planes_dims(&self) -> [usize; 4] {
        [self.n * self.d, self.planes.c, self.planes.h, self.planes.w]
    }
}

impl CustomOp2 for Conv3dOp {
    fn name(&self) -> &'static str {
        "seg-conv3d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, grad, false)?;
        Ok((dx, Some(dw)))
    }
}

impl CustomOp3 for Conv3dOp {
    fn name(&self) -> &'static str {
        "seg-conv3d-bias"
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
        self.forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.backward(x, w, grad, true)?;
        Ok((dx, Some(dw), db))
    }
}

/// The expanded gradient: dout (N, D, O, H, W) → dY (N·D, k·O, H, W).
struct Expand {
    g: Geom3,
}

impl CustomOp1 for Expand {
    fn name(&self) -> &'static str {
        "seg-conv3d-expand"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let dout = slice(s, l, "gradient")?;
        let hw = g.hw();
        let mut dy = vec![0f32; g.n * g.d * g.k * g.o * hw];
        dy.par_chunks_mut(hw).enumerate().for_each(|(i, dst)| {
            let (o, rest) = (i % g.o, i / g.o);
            let (kd, ns) = (rest % g.k, rest / g.k);
            let (n, s) = (ns / g.d, ns % g.d);
            if let Some(d) = g.target(s, kd) {
                dst.copy_from_slice(&dout[((n * g.d + d) * g.o + o) * hw..][..hw]);
            }
        });
        let shape = Shape::from((g.n * g.d, g.k * g.o, g.planes.h, g.planes.w));
        Ok((CpuStorage::F32(dy), shape))
    }
}

/// Per-channel sums of (M, C, P) → (C): the bias gradient.
struct ChannelSums;

impl CustomOp1 for ChannelSums {
    fn name(&self) -> &'static str {
        "seg-conv3d-bias-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[m, c, p] = l.dims() else {
            candle_core::bail!(
                "seg conv3d bias gradient: expected 3 dims, got {:?}",
                l.dims()
            )
        };
        let sums = channel_sums(slice(s, l, "gradient")?, m, c, p);
        Ok((
            CpuStorage::F32(sums.iter().map(|&v| v as f32).collect()),
            Shape::from(c),
        ))
    }
}

/// The kernel's depth taps stacked as output channels: (O, C, k, k, k) →
/// (k·O, C, k, k), differentiable.
pub(crate) fn stack_taps(w: &Tensor) -> Result<Tensor> {
    let (o, c, k, _, _) = w.dims5()?;
    w.permute((2, 0, 1, 3, 4))?
        .contiguous()?
        .reshape((k * o, c, k, k))
}

/// The CPU op: `x` (N, D, C, H, W) ⋆ `w` (O, C, k, k, k) [+ bias], then ReLU
/// if `relu` (`relu` only without backward). `x` must be contiguous f32.
pub(crate) fn conv3d_cpu(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    let wcat = stack_taps(w)?;
    let x = x.contiguous()?;
    let op = Conv3dOp { relu };
    let tracked = x.track_op() || w.track_op() || bias.is_some_and(|b| b.track_op());
    match (bias, relu || !tracked) {
        (Some(b), false) => x.apply_op3(&wcat, &b.contiguous()?, op),
        (None, false) => x.apply_op2(&wcat, op),
        (Some(b), true) => x.apply_op3_no_bwd(&wcat, &b.contiguous()?, &op),
        (None, true) => x.apply_op2_no_bwd(&wcat, &op),
    }
}

/// The same convolution composed from candle ops (any device; the CPU
/// kernel's reference): candle's 2D convolution of all planes with the
/// stacked taps, then shifted sums along depth.
pub(crate) fn conv3d_composed(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, d, c, h, wd) = x.dims5()?;
    let (o, _, k, _, _) = w.dims5()?;
    let p = k / 2;
    let y = x
        .reshape((n * d, c, h, wd))?
        .conv2d(&stack_taps(w)?, p, 1, 1, 1)?
        .reshape((n, d, k, o, h, wd))?;
    let mut out: Option<Tensor> = None;
    for kd in 0..k {
        let tap = y.narrow(2, kd, 1)?.squeeze(2)?;
        // out[d] += tap[d + kd − p]
        let part = if kd == p {
            tap
        } else if d <= kd.abs_diff(p) {
            continue;
        } else if kd < p {
            let s = p - kd;
            tap.narrow(1, 0, d - s)?.pad_with_zeros(1, s, 0)?
        } else {
            let s = kd - p;
            tap.narrow(1, s, d - s)?.pad_with_zeros(1, 0, s)?
        };
        out = Some(match out {
            Some(acc) => (acc + part)?,
            None => part,
        });
    }
    let out = match out {
        Some(t) => t,
        None => Tensor::zeros((n, d, o, h, wd), x.dtype(), x.device())?,
    };
    match bias {
        Some(b) => out.broadcast_add(&b.reshape((1, 1, o, 1, 1))?),
        None => Ok(out),
    }
}
