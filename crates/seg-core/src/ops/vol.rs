//! Volumes: the 3D versions of the networks' operations.
//!
//! Inside the networks a volume's feature map is stored **depth-major**,
//! (N, D, C, H, W), rather than PyTorch's (N, C, D, H, W): its N·D planes
//! are then an NCHW batch (a reshape, no copy), so everything that acts
//! per plane or per channel — BatchNorm (whose statistics over N·D·H·W are
//! BatchNorm3d's), ReLU, the residual add, 1×1×1 convolutions, attention
//! gates, channel pooling — runs on the 2D kernels unchanged, and the 3D
//! operations are 2D ones plus a step along depth:
//! - [`conv3d`]: k×k×k, stride 1, padding k / 2 — the 2D kernels with the
//!   depth taps stacked as output channels, then a shifted sum along depth
//!   (`conv/conv3d.rs`); [`conv3d_strided`], the same sampled every s-th
//!   voxel;
//! - [`conv_transpose3d_2x`]: 2×2×2 stride 2 — the 2D transposed kernel
//!   with both depth taps as output channels, which is already the
//!   depth-interleaved output (a reshape);
//! - [`max_pool3d_2x`]: the 2×2 plane pool, then the max of plane pairs;
//! - [`upsample_trilinear2x`] (align_corners = True) and
//!   [`upsample_nearest3d_2x`]: the plane upsampling, then along depth;
//! - [`pad_to3`], [`to_depth_major`], [`from_depth_major`].
//!
//! The networks call the rank-generic entry points of [`crate::ops`]
//! (`max_pool2x2`, `upsample_bilinear2x`, `cat_channels`, `pad_like`, ...),
//! which send 5-d tensors here.

use super::conv::{conv3d_composed, conv3d_cpu};
use candle_core::{Result, Tensor};

/// (N, C, D, H, W), PyTorch's layout → depth-major (N, D, C, H, W).
pub fn to_depth_major(x: &Tensor) -> Result<Tensor> {
    x.permute((0, 2, 1, 3, 4))?.contiguous()
}

/// Depth-major (N, D, C, H, W) → PyTorch's (N, C, D, H, W).
pub fn from_depth_major(x: &Tensor) -> Result<Tensor> {
    x.permute((0, 2, 1, 3, 4))?.contiguous()
}

/// A depth-major volume's planes as an NCHW batch (N·D, C, H, W).
pub fn planes(x: &Tensor) -> Result<Tensor> {
    let (n, d, c, h, w) = x.dims5()?;
    x.reshape((n * d, c, h, w))
}

/// Applies a per-plane operation to a depth-major volume: `f` sees the
/// planes as an NCHW batch and its (N·D, C', H', W') result is returned as
/// (N, D, C', H', W').
pub fn per_plane(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let (n, d, _, _, _) = x.dims5()?;
    let y = f(&planes(x)?)?;
    let (_, c, h, w) = y.dims4()?;
    y.reshape((n, d, c, h, w))
}

/// The k×k×k convolution (stride 1, padding k / 2, k odd) of a depth-major
/// volume with PyTorch's `Conv3d` weight (O, C, k, k, k) and optional bias.
/// 1×1×1 kernels are the 2D 1×1 convolution of the planes. On the CPU
/// (f32) seg's kernels, elsewhere candle's 2D convolution composed.
pub fn conv3d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    conv3d_act(x, w, bias, false)
}

/// `nn.Conv3d(C, O, k, stride=s, padding=k // 2)` on a depth-major volume:
/// output sizes ⌊(n − 1) / s⌋ + 1 along D, H and W. Computed as the
/// stride-1 [`conv3d`] sampled at every `s`-th voxel, which is the strided
/// convolution exactly (output voxel `j` is centred on input voxel `j·s`)
/// and its gradient (the sampling scatters back), on every device — at the
/// stride-1 cost, s³ times the strided arithmetic: none of the networks
/// downsamples by convolution, so this path has no kernel of its own.
pub fn conv3d_strided(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
) -> Result<Tensor> {
    if stride == 0 {
        candle_core::bail!("conv3d: stride must be at least 1");
    }
    let y = conv3d(x, w, bias)?;
    sample_every(&y, &[1, 3, 4], stride)
}

/// Every `s`-th element (from the first) along each of `axes`.
pub(crate) fn sample_every(x: &Tensor, axes: &[usize], s: usize) -> Result<Tensor> {
    let mut out = x.clone();
    if s == 1 {
        return Ok(out);
    }
    for &axis in axes {
        let n = out.dim(axis)?;
        let idx: Vec<u32> = (0..n).step_by(s).map(|i| i as u32).collect();
        let idx = Tensor::new(idx, out.device())?;
        out = out.index_select(&idx, axis)?;
    }
    Ok(out)
}

/// [`conv3d`] then an optional ReLU applied as the output is written; only
/// for inference (no operand tracks a gradient) on the CPU, else composed.
pub fn conv3d_relu_inference(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    let tracked = x.track_op() || w.track_op() || bias.is_some_and(|b| b.track_op());
    if tracked || !super::use_cpu_kernel(x) {
        let y = conv3d(x, w, bias)?;
        return if relu { super::relu(&y) } else { Ok(y) };
    }
    conv3d_act(x, w, bias, relu)
}

fn conv3d_act(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, relu: bool) -> Result<Tensor> {
    let (_, _, c, _, _) = x.dims5()?;
    let (o, wc, k, k2, k3) = w.dims5()?;
    if wc != c || k != k2 || k != k3 || k % 2 == 0 {
        candle_core::bail!(
            "conv3d: weight {:?} does not fit input {:?} (odd cubic kernels only)",
            w.dims(),
            x.dims()
        );
    }
    if k == 1 {
        let w2 = w.reshape((o, c, 1, 1))?;
        return per_plane(x, |p| {
            if relu {
                super::conv2d_relu_inference(p, &w2, bias, 0, true)
            } else {
                super::conv2d(p, &w2, bias, 0)
            }
        });
    }
    if super::use_cpu_kernel(x) {
        conv3d_cpu(x, w, bias, relu)
    } else {
        let y = conv3d_composed(x, w, bias)?;
        if relu {
            super::relu(&y)
        } else {
            Ok(y)
        }
    }
}

/// [`conv3d`] composed from candle's ops on any device: the CPU kernel's
/// reference.
pub fn conv3d_reference(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    conv3d_composed(x, w, bias)
}

/// `nn.ConvTranspose3d(C, O, 2, stride=2)` on a depth-major volume: weight
/// (C, O, 2, 2, 2), bias (O); doubles D, H and W.
pub fn conv_transpose3d_2x(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (n, d, _, _, _) = x.dims5()?;
    let (c, o, _, _, _) = w.dims5()?;
    // (C, O, kd, kh, kw) → (C, kd·O + o, kh, kw): both depth taps as channels
    let wcat = w
        .permute((0, 2, 1, 3, 4))?
        .contiguous()?
        .reshape((c, 2 * o, 2, 2))?;
    let bcat = Tensor::cat(&[b, b], 0)?;
    let y = super::conv_transpose2x2(&planes(x)?, &wcat, &bcat)?;
    let (_, _, h2, w2) = y.dims4()?;
    // (N, D, kd, O, 2H, 2W) is already (N, 2D, O, 2H, 2W): plane 2d + kd
    y.reshape((n, 2 * d, o, h2, w2))
}

/// 2×2×2 max-pooling, stride 2 (odd sizes floored, as PyTorch).
pub fn max_pool3d_2x(x: &Tensor) -> Result<Tensor> {
    let (n, d, c, _, _) = x.dims5()?;
    if d < 2 {
        candle_core::bail!("max-pool 2x2x2: input depth {d} is smaller than the window (the volume is too small for this network depth)");
    }
    let p = per_plane(x, super::max_pool2x2)?;
    let (_, _, _, h, w) = p.dims5()?;
    let pairs = p
        .narrow(1, 0, 2 * (d / 2))?
        .reshape((n, d / 2, 2, c * h * w))?;
    let a = pairs.narrow(2, 0, 1)?;
    let b = pairs.narrow(2, 1, 1)?;
    a.maximum(&b)?.reshape((n, d / 2, c, h, w))
}

/// The (out × inp) matrix of 1D linear interpolation with align_corners =
/// True (PyTorch's `linear`/`trilinear` upsampling weights).
fn linear_matrix(inp: usize, out: usize) -> Vec<f32> {
    let mut m = vec![0f32; out * inp];
    let scale = if out > 1 {
        (inp as f64 - 1.0) / (out as f64 - 1.0)
    } else {
        0.0
    };
    for i in 0..out {
        let src = i as f64 * scale;
        let i0 = (src.floor() as usize).min(inp - 1);
        let i1 = (i0 + 1).min(inp - 1);
        let f = (src - i0 as f64) as f32;
        m[i * inp + i0] += 1.0 - f;
        m[i * inp + i1] += f;
    }
    m
}

/// Trilinear ×2 upsampling with align_corners = True: the bilinear plane
/// upsampling, then linear along depth (a (2D × D) matrix product).
pub fn upsample_trilinear2x(x: &Tensor) -> Result<Tensor> {
    let p = per_plane(x, super::upsample_bilinear2x)?;
    let (n, d, c, h, w) = p.dims5()?;
    let m =
        Tensor::from_vec(linear_matrix(d, 2 * d), (2 * d, d), x.device())?.to_dtype(x.dtype())?;
    m.broadcast_matmul(&p.reshape((n, d, c * h * w))?)?
        .reshape((n, 2 * d, c, h, w))
}

/// Nearest-neighbour ×2 upsampling of a depth-major volume.
pub fn upsample_nearest3d_2x(x: &Tensor) -> Result<Tensor> {
    let p = per_plane(x, super::upsample_nearest2x)?;
    let (n, d, c, h, w) = p.dims5()?;
    let p = p.reshape((n, d, 1, c * h * w))?;
    Tensor::cat(&[&p, &p], 2)?.reshape((n, 2 * d, c, h, w))
}

/// Zero-pads a depth-major volume to (d, h, w), each axis split as
/// PyTorch's `pad_to`: diff / 2 before, the rest after.
pub fn pad_to3(x: &Tensor, d: usize, h: usize, w: usize) -> Result<Tensor> {
    let (_, xd, _, xh, xw) = x.dims5()?;
    if xd > d || xh > h || xw > w {
        candle_core::bail!("pad_to: input {xd}x{xh}x{xw} is larger than the target {d}x{h}x{w}");
    }
    let mut out = x.clone();
    for (axis, diff) in [(1, d - xd), (3, h - xh), (4, w - xw)] {
        if diff > 0 {
            out = out.pad_with_zeros(axis, diff / 2, diff - diff / 2)?;
        }
    }
    Ok(out)
}

/// The channel axis of a 4-d (NCHW) or 5-d depth-major tensor.
pub(crate) fn channel_axis(x: &Tensor) -> usize {
    if x.rank() == 5 {
        2
    } else {
        1
    }
}

#[cfg(test)]
mod tests;
