//! seg-core: the foundation layer (L0) of seg.
//!
//! It is the only crate of the workspace that names `candle-core` and
//! `candle-nn`; everything above uses the re-exports here. It provides:
//! - [`device`]: choosing a compute device from a string (`cpu`, `cuda:N`,
//!   `metal:N`, `auto`), with a clear error when a backend was not compiled in;
//! - [`ops`]: the tensor operations the networks need that candle lacks or has
//!   without a backward pass (max-pool 2×2 with argmax, bilinear ×2 upsampling
//!   with `align_corners=True`, padding to a size, ...);
//! - [`layers`]: convolution, transposed convolution, batch and group norm;
//! - [`params`]: the parameter store (seeded initialisation, loading and
//!   saving safetensors files under PyTorch's names);
//! - [`fsutil`]: atomic file writes (temporary file + rename);
//! - [`precision`]: fp32 or bf16 arithmetic in the CPU convolutions;
//! - [`collective`]: sums over the ranks of a data-parallel run for
//!   synchronised BatchNorm (installed by the training loop).

pub mod collective;
pub mod device;
pub mod error;
pub mod fsutil;
pub mod layers;
pub mod ops;
pub mod params;
pub mod precision;

pub use candle_core as candle;
pub use candle_core::{DType, Device, IndexOp, Module, ModuleT, Shape, Tensor, Var, D};
pub use candle_nn as nn;
pub use candle_nn::{Init, VarBuilder};
pub use device::{parse_device, DeviceSpec};
pub use error::{Error, Result};
pub use params::ParamStore;
pub use precision::{Precision, PrecisionChoice};

/// The gradients of a backward pass, keyed by tensor.
pub type GradStore = candle_core::backprop::GradStore;

/// Runs `f` on a worker thread of rayon's global pool and returns its result
/// (in place when called from such a thread).
///
/// seg's CPU kernels run their loops on that pool. From a thread outside it
/// (a program's main thread), every parallel loop hands its work to the pool
/// and puts the caller to sleep until it is done: two thread wake-ups per
/// kernel, which add up over the hundreds of kernels of a training step
/// (about 10 % of a small U-Net's step on 2 cores). Inside the pool, the
/// calling thread takes part in the loops instead. Wrap a whole training step
/// or forward pass, not single operations.
///
/// The caller's [`precision`] setting and [`collective`] reducer hold on the
/// worker for the call.
pub fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let p = precision::current();
    let r = collective::current();
    rayon::join(
        move || {
            let _restore = precision::scoped(p);
            let _reducer = collective::scoped(r);
            f()
        },
        || (),
    )
    .0
}
