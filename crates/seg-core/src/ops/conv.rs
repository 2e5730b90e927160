//! The CPU convolutions, each a custom op with its own backward pass: the
//! stride-1 k×k convolution (any padding up to k − 1; [`conv2d`],
//! [`conv2d_relu_inference`]) and the 2×2 stride-2 transposed convolution
//! ([`conv_transpose2x2`]).
//!
//! This file holds the ops and their shapes; the kernels live in one file
//! each:
//! - [`route`]: `route::choose`, the one place that picks the kernel of
//!   each pass (forward, input gradient, weight gradient) from the
//!   geometry, the CPU and the `SEG_CONV_DIRECT` / `SEG_CONV_WINOGRAD`
//!   switches; its doc comment states the rules;
//! - [`winograd`]: Winograd F(2×2, 3×3), AVX-512;
//! - [`bf16`]: the operand layouts of the bf16 kernels (AVX512-BF16), which
//!   run when the op was built under [`crate::precision`] bf16;
//! - [`direct`]: direct convolutions with no column matrix, AVX-512
//!   (`direct/weight_grad.rs`: the 3×3 weight gradient; `direct/avx512.rs`:
//!   the register tiles);
//! - [`gemm`]: im2col + the `gemm` crate, for everything else;
//! - [`transpose`]: the transposed 2×2/2 convolution on `gemm`'s products.
//!
//! The backward pass needs no scatter: the input gradient is a forward
//! convolution of the output gradient with the kernel flipped in space and
//! its channel axes swapped, padding k − 1 − p; the weight gradient is one
//! sum over all N·H·W pixels. Every output element is computed by one
//! thread in a fixed order, so results do not depend on thread scheduling.

mod amx;
mod bf16;
mod conv3d;
mod direct;
mod gemm;
mod route;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_amx;
#[cfg(test)]
mod tests_bf16;
mod transpose;
mod winograd;

#[cfg(test)]
pub(crate) use conv3d::SLAB_BYTES_OVERRIDE;
pub(crate) use conv3d::{conv3d_composed, conv3d_cpu};
pub use transpose::{conv_transpose2x2, conv_transpose2x2_reference};

use super::cpu_f32;
use crate::precision::Precision;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// A raw pointer the parallel tasks write through, each to its own disjoint
/// set of elements.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every user writes only to elements no other task touches, and the
// buffer outlives the parallel loop.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so that closures capture the whole wrapper,
    /// which is `Sync`, rather than its raw-pointer field).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// The sizes of a stride-1 convolution.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    p: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    fn new(x: &[usize], wt: &[usize], p: usize) -> Result<Self> {
        let (&[n, c, h, w], &[o, wc, k, k2]) = (x, wt) else {
            candle_core::bail!("seg conv2d: expected 4-d input and weight, got {x:?} and {wt:?}")
        };
        if wc != c || k != k2 || k == 0 {
            candle_core::bail!("seg conv2d: weight {wt:?} does not fit input {x:?}");
        }
        if h + 2 * p < k || w + 2 * p < k {
            candle_core::bail!(
                "seg conv2d: input {h}x{w} (padding {p}) is smaller than the {k}x{k} kernel"
            );
        }
        Ok(Self {
            n,
            c,
            h,
            w,
            o,
            k,
            p,
            ho: h + 2 * p - k + 1,
            wo: w + 2 * p - k + 1,
        })
    }

    /// Rows of the column matrix.
    fn kk(&self) -> usize {
        self.c * self.k * self.k
    }

    fn out_pixels(&self) -> usize {
        self.ho * self.wo
    }

    /// The geometry of the input gradient as a forward convolution: dy
    /// (n, o, ho, wo) with the flipped kernel (c outputs), padding k − 1 − p.
    fn input_grad(&self) -> Geom {
        Geom {
            n: self.n,
            c: self.o,
            h: self.ho,
            w: self.wo,
            o: self.c,
            k: self.k,
            p: self.k - 1 - self.p,
            ho: self.h,
            wo: self.w,
        }
    }
}

/// Per-channel sums of an NCHW tensor, in f64 (the bias gradient).
fn channel_sums(dy: &[f32], n: usize, ch: usize, hw: usize) -> Vec<f64> {
    (0..ch)
        .into_par_iter()
        .map(|c| {
            (0..n)
                .map(|i| crate::ops::lanes_sum(&dy[(i * ch + c) * hw..][..hw], |v| v as f64))
                .sum()
        })
        .collect()
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    cpu_f32(s, l, &format!("seg conv2d: {what}"))
}

/// The forward op: `x` (N,C,H,W) * `w` (O,C,k,k) [+ `b` (O)], then ReLU if
/// `relu` (only without backward: see [`conv2d_relu_inference`]).
struct Conv2dOp {
    padding: usize,
    relu: bool,
    /// The arithmetic of the forward and backward passes (this thread's
    /// [`crate::precision`] when the op was built).
    prec: Precision,
}

impl Conv2dOp {
    fn forward(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(x.1.dims(), w.1.dims(), self.padding)?;
        let xs = slice(x.0, x.1, "input")?;
        let ws = slice(w.0, w.1, "weight")?;
        let bs = match b {
            Some((s, l)) => {
                if l.dims() != [g.o] {
                    candle_core::bail!("seg conv2d: bias shape {:?}, expected [{}]", l.dims(), g.o)
                }
                Some(slice(s, l, "bias")?)
            }
            None => None,
        };
        let y = route::forward(xs, ws, bs, self.relu, &g, self.prec);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.o, g.ho, g.wo))))
    }

    /// (dx, dw, db) of the op, each without autograd history; no dx when
    /// `x` needs none (a network's input).
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
        bias: bool,
    ) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(
                &w.contiguous()?,
                &InputGrad {
                    padding: self.padding,
                    x_dims: x.dims().to_vec(),
                    prec: self.prec,
                },
            )?)
        } else {
            None
        };
        let flat = grad.apply_op2_no_bwd(
            &x.contiguous()?,
            &WeightGrad {
                padding: self.padding,
                bias,
                w_dims: w.dims().to_vec(),
                prec: self.prec,
            },
        )?;
        let (o, numel) = (w.dim(0)?, w.elem_count());
        let dw = flat.narrow(0, 0, numel)?.reshape(w.dims())?;
        let db = if bias {
            Some(flat.narrow(0, numel, o)?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "seg-conv2d"
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

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "seg-conv2d-bias"
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

/// Input gradient op: (dy, w) → dx.
struct InputGrad {
    padding: usize,
    x_dims: Vec<usize>,
    prec: Precision,
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "seg-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(&self.x_dims, l2.dims(), self.padding)?;
        if l1.dims() != [g.n, g.o, g.ho, g.wo] {
            candle_core::bail!(
                "seg conv2d backward: gradient shape {:?} does not fit",
                l1.dims()
            )
        }
        let (dy, w) = (slice(s1, l1, "gradient")?, slice(s2, l2, "weight")?);
        let dx = route::input_grad(dy, w, &g, self.prec);
        Ok((CpuStorage::F32(dx), Shape::from(self.x_dims.clone())))
    }
}

/// Weight-and-bias gradient op: (dy, x) → [dW flattened, dB].
struct WeightGrad {
    padding: usize,
    /// Whether to append the bias gradient.
    bias: bool,
    w_dims: Vec<usize>,
    prec: Precision,
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "seg-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(l2.dims(), &self.w_dims, self.padding)?;
        if l1.dims() != [g.n, g.o, g.ho, g.wo] {
            candle_core::bail!(
                "seg conv2d backward: gradient shape {:?} does not fit",
                l1.dims()
            )
        }
        let dy = slice(s1, l1, "gradient")?;
        let mut dw = route::weight_grad(slice(s2, l2, "input")?, dy, &g, self.prec);
        if self.bias {
            let db = channel_sums(dy, g.n, g.o, g.out_pixels());
            dw.extend(db.iter().map(|&v| v as f32));
        }
        let len = dw.len();
        Ok((CpuStorage::F32(dw), Shape::from(len)))
    }
}

/// Stride-1 2D convolution with zero padding `padding` (at most k − 1) and
/// an optional bias, as PyTorch's `F.conv2d(x, w, b, padding=padding)`.
/// CPU f32 tensors use seg's kernels (chosen by `route::choose`); other
/// devices use candle's.
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, padding: usize) -> Result<Tensor> {
    if !cpu_kernel_applies(x, w, padding)? {
        let y = x.conv2d(w, padding, 1, 1, 1)?;
        return match bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
            None => Ok(y),
        };
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let op = Conv2dOp {
        padding,
        relu: false,
        prec: crate::precision::current(),
    };
    match bias {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

/// The plain reference of [`conv2d`] (candle's kernels), for tests.
pub fn conv2d_reference(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
) -> Result<Tensor> {
    let y = x.conv2d(w, padding, 1, 1, 1)?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
        None => Ok(y),
    }
}

/// Whether seg's CPU kernel computes this convolution: a CPU f32 input, a
/// square kernel and padding below its size.
fn cpu_kernel_applies(x: &Tensor, w: &Tensor, padding: usize) -> Result<bool> {
    let k = w.dim(2)?;
    Ok(super::use_cpu_kernel(x) && padding < k.max(1) && w.dim(3)? == k)
}

/// [`conv2d`] followed by an optional ReLU, for inference: on the CPU, when
/// no operand tracks a gradient, the ReLU is applied as the kernel writes
/// its output (one pass over the activations instead of two). Otherwise it
/// is the composed `conv2d` then [`super::relu`], with their backward.
pub fn conv2d_relu_inference(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    relu: bool,
) -> Result<Tensor> {
    let tracked = x.track_op() || w.track_op() || bias.is_some_and(|b| b.track_op());
    if tracked || !cpu_kernel_applies(x, w, padding)? {
        let y = conv2d(x, w, bias, padding)?;
        return if relu { super::relu(&y) } else { Ok(y) };
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let op = Conv2dOp {
        padding,
        relu,
        prec: crate::precision::current(),
    };
    match bias {
        Some(b) => x.apply_op3_no_bwd(&w, &b.contiguous()?, &op),
        None => x.apply_op2_no_bwd(&w, &op),
    }
}
