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

/// Checks that an NCHW input has the expected channels and is large enough.
pub(crate) fn check_input(
    x: &seg_core::Tensor,
    in_channels: usize,
) -> seg_core::candle::Result<()> {
    let (_, c, h, w) = x.dims4()?;
    if c != in_channels {
        seg_core::candle::bail!("input has {c} channels, the network expects {in_channels}");
    }
    let min = 1 << DEPTH;
    if h < min || w < min {
        seg_core::candle::bail!(
            "input {h}x{w} is too small: the network halves the size {DEPTH} times, so height and width must be at least {min}"
        );
    }
    Ok(())
}
