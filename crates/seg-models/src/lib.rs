//! seg-models: the U-Net family, computing exactly what the PyTorch reference
//! (`shared/reference/models.py`) computes, under the same tensor names.
//!
//! - [`UNet`] (bilinear or transposed-convolution upsampling), [`ResUNet`],
//!   [`AttentionUNet`] and [`UNetPlusPlus`] (optional deep supervision), each
//!   with a serde config and `new(&Config, VarBuilder)`;
//! - [`ModelConfig`] and [`Model`]: the registry by name (`unet`, `resunet`,
//!   `attention_unet`, `unetpp`);
//! - [`Network`]: a model with its parameter store, weight load/save in
//!   PyTorch names, and a torchinfo-like [`Summary`].
//!
//! ```
//! use seg_models::{ModelConfig, Network};
//! use seg_core::{Device, DType, Tensor};
//! let cfg = ModelConfig::from_name("unet").unwrap().with_base(4).with_in_channels(1);
//! let net = Network::new(&cfg, &Device::Cpu, 0).unwrap();
//! let x = Tensor::zeros((1, 1, 32, 40), DType::F32, &Device::Cpu).unwrap();
//! let logits = net.forward_t(&x, false).unwrap();
//! assert_eq!(logits.dims(), &[1, 1, 32, 40]);
//! ```

mod attention_unet;
mod config;
mod error;
mod network;
mod resunet;
mod summary;
mod unet;
mod unetpp;

pub use attention_unet::{AttentionUNet, AttentionUNetConfig};
pub use config::{ModelConfig, Upsample, MODEL_NAMES};
pub use error::{Error, Result};
pub use network::{Model, Network, CONFIG_METADATA_KEY};
pub use resunet::{ResUNet, ResUNetConfig};
pub use seg_core::layers::NormKind;
pub use summary::{Summary, SummaryRow};
pub use unet::{UNet, UNetConfig};
pub use unetpp::{UNetPlusPlus, UNetPlusPlusConfig};

/// How many times every network halves the resolution; inputs must be at
/// least `2^DEPTH` pixels high and wide.
pub const DEPTH: usize = 4;

/// Records a block's output during a forward pass (for summaries).
pub type Recorder<'a> = dyn FnMut(&str, &seg_core::Tensor) + 'a;

/// Checks that an input has the expected rank (NCHW for `dims = 2`, NCDHW
/// for `dims = 3`), channels and size, and returns it in the layout the
/// layers take (volumes depth-major: `seg_core::ops::vol`).
pub(crate) fn check_input(
    x: &seg_core::Tensor,
    in_channels: usize,
    dims: usize,
) -> seg_core::candle::Result<seg_core::Tensor> {
    let min = 1 << DEPTH;
    if dims == 3 {
        let &[_, c, d, h, w] = x.dims() else {
            seg_core::candle::bail!(
                "a 3D network takes (N, C, D, H, W) volumes, got shape {:?}",
                x.dims()
            )
        };
        if c != in_channels {
            seg_core::candle::bail!("input has {c} channels, the network expects {in_channels}");
        }
        if d < min || h < min || w < min {
            seg_core::candle::bail!(
                "input {d}x{h}x{w} is too small: the network halves the size {DEPTH} times, so depth, height and width must be at least {min}"
            );
        }
        return seg_core::ops::vol::to_depth_major(x);
    }
    let (_, c, h, w) = x.dims4()?;
    if c != in_channels {
        seg_core::candle::bail!("input has {c} channels, the network expects {in_channels}");
    }
    if h < min || w < min {
        seg_core::candle::bail!(
            "input {h}x{w} is too small: the network halves the size {DEPTH} times, so height and width must be at least {min}"
        );
    }
    Ok(x.clone())
}

/// A network's logits in the caller's layout: depth-major volumes back to
/// NCDHW.
pub(crate) fn output(y: seg_core::Tensor) -> seg_core::candle::Result<seg_core::Tensor> {
    if y.rank() == 5 {
        seg_core::ops::vol::from_depth_major(&y)
    } else {
        Ok(y)
    }
}

/// serde's `skip_serializing_if` for `dims`: 2D configurations keep the
/// JSON they always had.
pub(crate) fn is_two(v: &usize) -> bool {
    *v == 2
}
