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
//! (`Y`, `dY`) are scratch: nothing beyond the input is kept for backward,
//! and large volumes are computed a slab of planes at a time so that the
//! scratch stays under [`SLAB_BYTES`] (the forward's output planes with
//! their k − 1 neighbours; the backward's source planes, each input plane's
//! gradient needing only its own expanded plane, the weight gradient summed
//! over the slabs in order).

use super::{channel_sums, route, slice, Geom};
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

/// The taps' planes (`Y`) the forward pass holds at once, in bytes: larger
/// volumes are computed a slab of output planes at a time (with the k − 1
/// neighbouring input planes), so the scratch stays this small whatever
/// the volume (a 128³ volume's first layer would otherwise need 3× its
/// output).
const SLAB_BYTES: usize = 16 << 20;

#[cfg(test)]
thread_local! {
    /// Tests: a smaller slab scratch, to exercise the slab path on small volumes.
    pub(crate) static SLAB_BYTES_OVERRIDE: std::cell::Cell<Option<usize>> =
        const { std::cell::Cell::new(None) };
}

fn slab_bytes() -> usize {
    #[cfg(test)]
    if let Some(b) = SLAB_BYTES_OVERRIDE.with(|c| c.get()) {
        return b;
    }
    SLAB_BYTES
}

/// Writes output planes `d0..` of sample `n` (`out`: whole planes, O × H·W
/// each) from `y`, the taps' planes of source planes `y0..` of that sample
/// ((k·O) × H·W each): the sum along depth, plus bias, then ReLU if `relu`.
#[allow(clippy::too_many_arguments)]
fn combine(
    out: &mut [f32],
    y: &[f32],
    y0: usize,
    d0: usize,
    g: &Geom3,
    bias: Option<&[f32]>,
    relu: bool,
) {
    let hw = g.hw();
    let y_planes = y.len() / (g.k * g.o * hw);
    out.par_chunks_mut(hw).enumerate().for_each(|(i, dst)| {
        let (o, d) = (i % g.o, d0 + i / g.o);
        dst.fill(bias.map_or(0.0, |b| b[o]));
        for kd in 0..g.k {
            let Some(s) = g.source(d, kd) else { continue };
            debug_assert!(s >= y0 && s - y0 < y_planes);
            let src = &y[((s - y0) * g.k * g.o + kd * g.o + o) * hw..][..hw];
            for (a, &v) in dst.iter_mut().zip(src) {
                *a += v;
            }
        }
        if relu {
            for a in dst.iter_mut() {
                *a = a.max(0.0);
            }
        }
    });
}

/// The forward op on (x (N, D, C, H, W), wcat (k·O, C, k, k) [, bias (O)]).
struct Conv3dOp {
    relu: bool,
    /// The arithmetic of the 2D passes ([`crate::precision`] when built).
    prec: crate::precision::Precision,
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
        let (xs, ws) = (slice(x.0, x.1, "input")?, slice(w.0, w.1, "weight")?);
        let hw = g.hw();
        let (plane_in, plane_y, plane_out) = (g.planes.c * hw, g.k * g.o * hw, g.o * hw);
        let mut out = vec![0f32; g.n * g.d * plane_out];
        if g.n * g.d * plane_y * 4 <= slab_bytes() {
            // every plane of the batch in one 2D pass
            let y = route::forward(xs, ws, None, false, &g.planes, self.prec);
            for n in 0..g.n {
                let dst = &mut out[n * g.d * plane_out..(n + 1) * g.d * plane_out];
                let src = &y[n * g.d * plane_y..(n + 1) * g.d * plane_y];
                combine(dst, src, 0, 0, &g, bs, self.relu);
            }
        } else {
            let p = g.pad();
            let slab = (slab_bytes() / 4 / plane_y)
                .saturating_sub(2 * p)
                .clamp(1, g.d);
            for n in 0..g.n {
                for d0 in (0..g.d).step_by(slab) {
                    let d1 = (d0 + slab).min(g.d);
                    let (s0, s1) = (d0.saturating_sub(p), (d1 + p).min(g.d));
                    let geom = Geom::new(
                        &[s1 - s0, g.planes.c, g.planes.h, g.planes.w],
                        w.1.dims(),
                        p,
                    )?;
                    let xin = &xs[(n * g.d + s0) * plane_in..(n * g.d + s1) * plane_in];
                    let y = route::forward(xin, ws, None, false, &geom, self.prec);
                    let dst = &mut out[(n * g.d + d0) * plane_out..(n * g.d + d1) * plane_out];
                    combine(dst, &y, s0, d0, &g, bs, self.relu);
                }
            }
        }
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
        let want_dx = x.track_op();
        let flat = grad.apply_op3_no_bwd(
            &x.contiguous()?,
            &w.contiguous()?,
            &Backward {
                g,
                want_dx,
                prec: self.prec,
            },
        )?;
        let (nx, nw) = (if want_dx { x.elem_count() } else { 0 }, w.elem_count());
        let dx = if want_dx {
            Some(flat.narrow(0, 0, nx)?.reshape(x.dims())?)
        } else {
            None
        };
        let dw = flat.narrow(0, nx, nw)?.reshape(w.dims())?;
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

/// The expanded gradient of the batch's planes `a..b` (plane `n·D + s`):
/// dY[s, kd·O + o] = dout[n, s − kd + p, o] (0 where that plane is outside).
fn expand(dout: &[f32], g: &Geom3, a: usize, b: usize) -> Vec<f32> {
    let hw = g.hw();
    let mut dy = vec![0f32; (b - a) * g.k * g.o * hw];
    dy.par_chunks_mut(hw).enumerate().for_each(|(i, dst)| {
        let (o, rest) = (i % g.o, i / g.o);
        let (kd, ns) = (rest % g.k, a + rest / g.k);
        let (n, s) = (ns / g.d, ns % g.d);
        if let Some(d) = g.target(s, kd) {
            dst.copy_from_slice(&dout[((n * g.d + d) * g.o + o) * hw..][..hw]);
        }
    });
    dy
}

/// The backward op on (dout, x, wcat) → [dx (if `want_dx`), dwcat],
/// flattened: the 2D input- and weight-gradient kernels on the expanded
/// gradient, a slab of source planes at a time when the expansion of the
/// whole batch would exceed the slab scratch (each input plane's gradient
/// needs only its own expanded plane; the weight gradient is summed over
/// the slabs in order).
struct Backward {
    g: Geom3,
    want_dx: bool,
    prec: crate::precision::Precision,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "seg-conv3d-backward"
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
        let g = &self.g;
        let (dout, xs, ws) = (
            slice(s1, l1, "gradient")?,
            slice(s2, l2, "input")?,
            slice(s3, l3, "weight")?,
        );
        if l1.dims() != [g.n, g.d, g.o, g.planes.h, g.planes.w] {
            candle_core::bail!(
                "seg conv3d backward: gradient shape {:?} does not fit",
                l1.dims()
            )
        }
        let hw = g.hw();
        let (plane_in, plane_y) = (g.planes.c * hw, g.k * g.o * hw);
        let nw = ws.len();
        let nx = if self.want_dx { xs.len() } else { 0 };
        let mut out = vec![0f32; nx + nw];
        let (dx, dw) = out.split_at_mut(nx);
        // (sample, first plane, end plane) of each slab; one slab for the
        // whole batch when its expansion fits
        let slabs: Vec<(Option<usize>, usize, usize)> = if g.n * g.d * plane_y * 4 <= slab_bytes() {
            vec![(None, 0, g.d)]
        } else {
            let slab = (slab_bytes() / 4 / plane_y).clamp(1, g.d);
            (0..g.n)
                .flat_map(|n| {
                    (0..g.d)
                        .step_by(slab)
                        .map(move |s0| (Some(n), s0, (s0 + slab).min(g.d)))
                })
                .collect()
        };
        let mut first = true;
        for (n, s0, s1) in slabs {
            // the slab's planes of x, their expanded gradient, where dx goes
            let (at, planes) = match n {
                None => (0, g.n * g.d),
                Some(n) => (n * g.d + s0, s1 - s0),
            };
            let dy = expand(dout, g, at, at + planes);
            let geom = Geom::new(
                &[planes, g.planes.c, g.planes.h, g.planes.w],
                l3.dims(),
                g.pad(),
            )?;
            let x_slab = &xs[at * plane_in..(at + planes) * plane_in];
            if self.want_dx {
                let d = route::input_grad(&dy, ws, &geom, self.prec);
                dx[at * plane_in..(at + planes) * plane_in].copy_from_slice(&d);
            }
            let d = route::weight_grad(x_slab, &dy, &geom, self.prec);
            if first {
                dw.copy_from_slice(&d);
                first = false;
            } else {
                for (a, b) in dw.iter_mut().zip(&d) {
                    *a += b;
                }
            }
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
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
    let op = Conv3dOp {
        relu,
        prec: crate::precision::current(),
    };
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
