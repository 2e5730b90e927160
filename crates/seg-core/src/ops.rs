//! Tensor operations the networks need, each differentiable.
//!
//! On the CPU, max-pooling and bilinear upsampling run seg's own kernels
//! (custom ops with their own backward pass, parallel over planes); on other
//! devices the same results are composed from candle's kernels. The networks
//! call only these functions, so kernels can be replaced without touching them.

mod adam;
mod affine;
mod batchnorm;
mod chanpool;
mod conv;
mod gate;
mod maxpool;
mod relu;
mod upsample;
pub mod vol;

use candle_core::{DType, Result, Tensor};

pub use adam::{adam_step, average_step, sum_squares, AdamStep};
pub use affine::channel_affine;
pub use batchnorm::{
    batch_norm_relu_train, batch_norm_train, batch_norm_train_act, batch_norm_train_reference,
};
pub use chanpool::{channel_mean_max, channel_mean_max_reference};
pub use conv::{
    conv2d, conv2d_reference, conv2d_relu_inference, conv_transpose2x2, conv_transpose2x2_reference,
};
pub use gate::{spatial_gate, spatial_gate_reference};
pub use maxpool::{max_pool2x2, max_pool2x2_reference};
pub(crate) use relu::probe_active as relu_probe_active;
pub use relu::{add_relu, relu, relu_probe, relu_reference};
pub use upsample::{
    upsample_bilinear2x, upsample_bilinear2x_reference, upsample_nearest2x,
    upsample_nearest2x_reference,
};

/// The f32 values of a contiguous CPU storage, or an error naming `what`.
pub(crate) fn cpu_f32<'a>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
    what: &str,
) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (candle_core::CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("{what} needs a contiguous f32 tensor"),
    }
}

/// A vector of `len` values written in parallel, chunk by chunk
/// (`fill(chunk_index, chunk)`, chunks of `chunk` elements, the last one
/// shorter), without first zeroing the memory: for outputs that a kernel
/// overwrites entirely, this saves one pass over them.
///
/// # Safety
/// `fill` must initialise every element of every chunk it is given.
pub(crate) unsafe fn par_uninit<T: Send>(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [std::mem::MaybeUninit<T>]) + Sync + Send,
) -> Vec<T> {
    use rayon::prelude::*;
    let mut v = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| fill(i, c));
    // SAFETY: the caller's `fill` initialised all `len` elements.
    unsafe { v.set_len(len) };
    v
}

/// Lanes of the f64 partial sums below: independent accumulators, so that
/// the sums vectorise instead of waiting on one addition chain.
const LANES: usize = 8;

/// Σ f(v) over `v` in f64, in [`LANES`] interleaved partial sums added in a
/// fixed order (the same result on every run).
#[inline]
pub(crate) fn lanes_sum(v: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    acc.iter().sum::<f64>() + rest.iter().map(|&x| f(x)).sum::<f64>()
}

/// Σ f(a, b) over pairs of `a` and `b` (equal lengths), as [`lanes_sum`].
#[inline]
pub(crate) fn lanes_sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f64) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f64; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((s, &p), &q) in acc.iter_mut().zip(x).zip(y) {
            *s += f(p, q);
        }
    }
    acc.iter().sum::<f64>() + ra.iter().zip(rb).map(|(&p, &q)| f(p, q)).sum::<f64>()
}

/// The argmax indices a kernel's forward pass stored in `slot`, for its
/// backward pass; an error naming `what` when the forward has not run.
pub(crate) fn stored_argmax(
    slot: &std::sync::Mutex<Option<std::sync::Arc<Vec<u32>>>>,
    what: &str,
) -> Result<std::sync::Arc<Vec<u32>>> {
    slot.lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what} backward before forward")))
}

static FORCE_COMPOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes the networks' layers and operations take the path other devices
/// take (candle's ops composed: the `*_reference` twins; not the
/// optimiser's fused Adam step) on the CPU too, process-wide, while `on` —
/// so that the code a GPU runs in a forward or backward pass can be tested
/// on a machine without one. Off by default; for tests.
pub fn force_composed(on: bool) {
    FORCE_COMPOSED.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// True when the seg CPU kernels may run on this device (the CPU, unless
/// [`force_composed`]).
pub fn cpu_kernels_on(device: &candle_core::Device) -> bool {
    device.is_cpu() && !FORCE_COMPOSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// True when the seg CPU kernels apply to this tensor.
fn use_cpu_kernel(x: &Tensor) -> bool {
    cpu_kernels_on(x.device()) && x.dtype() == DType::F32
}

/// Logistic sigmoid.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::sigmoid(x)
}

/// Zero-pads an NCHW tensor to height `h` and width `w`, the top/left sides
/// getting `diff / 2` and the bottom/right the rest (as the reference's `pad_to`).
pub fn pad_to(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, xh, xw) = x.dims4()?;
    if xh > h || xw > w {
        candle_core::bail!("pad_to: input {xh}x{xw} is larger than the target {h}x{w}");
    }
    let (dy, dx) = (h - xh, w - xw);
    let mut out = x.clone();
    if dy > 0 {
        out = out.pad_with_zeros(2, dy / 2, dy - dy / 2)?;
    }
    if dx > 0 {
        out = out.pad_with_zeros(3, dx / 2, dx - dx / 2)?;
    }
    Ok(out)
}

/// Zero-pads `x` to the spatial size of `reference` (NCHW, or depth-major
/// volumes: [`vol::pad_to3`]).
pub fn pad_like(x: &Tensor, reference: &Tensor) -> Result<Tensor> {
    if reference.rank() == 5 {
        let (_, d, _, h, w) = reference.dims5()?;
        return vol::pad_to3(x, d, h, w);
    }
    let (_, _, h, w) = reference.dims4()?;
    pad_to(x, h, w)
}

/// Concatenates NCHW (or depth-major 5-d) tensors along the channel axis.
pub fn cat_channels(xs: &[&Tensor]) -> Result<Tensor> {
    let axis = xs.first().map_or(1, |x| vol::channel_axis(x));
    Tensor::cat(xs, axis)
}

/// Mean over channels, keeping the axis: (N,C,H,W) → (N,1,H,W).
pub fn channel_mean(x: &Tensor) -> Result<Tensor> {
    x.mean_keepdim(vol::channel_axis(x))
}

/// Maximum over channels, keeping the axis: (N,C,H,W) → (N,1,H,W).
pub fn channel_max(x: &Tensor) -> Result<Tensor> {
    x.max_keepdim(vol::channel_axis(x))
}

/// Copies a contiguous f32 tensor's data out (any layout is made contiguous first).
#[cfg(test)]
pub(crate) fn f32_data(x: &Tensor) -> Result<Vec<f32>> {
    x.contiguous()?.flatten_all()?.to_vec1::<f32>()
}

#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::{Device, Tensor};

    /// A deterministic pseudo-random tensor.
    pub fn rand_tensor(dims: &[usize], seed: u64) -> Tensor {
        let n: usize = dims.iter().product();
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    /// `f` run on a rayon pool of `threads` threads (thread-count
    /// independence tests).
    pub fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn pad_to_splits_like_the_reference() {
        let x = Tensor::ones((1, 1, 2, 3), DType::F32, &Device::Cpu).unwrap();
        let y = pad_to(&x, 5, 4).unwrap();
        assert_eq!(y.dims(), &[1, 1, 5, 4]);
        let v = y
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        // dy = 3: 1 row on top, 2 below; dx = 1: 0 left, 1 right
        assert_eq!(v[0], vec![0., 0., 0., 0.]);
        assert_eq!(v[1], vec![1., 1., 1., 0.]);
        assert_eq!(v[2], vec![1., 1., 1., 0.]);
        assert_eq!(v[3], vec![0., 0., 0., 0.]);
        assert!(pad_to(&x, 1, 3).is_err());
    }

    #[test]
    fn pad_and_cat_are_differentiable() {
        let a = Var::from_tensor(&rand_tensor(&[1, 2, 3, 3], 3)).unwrap();
        let b = rand_tensor(&[1, 1, 4, 5], 4);
        let y = cat_channels(&[&pad_like(a.as_tensor(), &b).unwrap(), &b]).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let ga = g.get(a.as_tensor()).unwrap();
        assert_eq!(ga.sum_all().unwrap().to_scalar::<f32>().unwrap(), 18.0);
    }
}
