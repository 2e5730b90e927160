//! The layers the networks are built from: convolution, transposed
//! convolution and normalisation. Each is a small struct with a constructor
//! taking a [`VarBuilder`](candle_nn::VarBuilder) whose path gives the
//! PyTorch names of its tensors (`weight`, `bias`, `running_mean`, ...).

mod conv;
mod norm;

pub use conv::{
    conv2d, conv_nd, conv_norm_act, conv_transpose2x2, conv_transpose_nd, Conv2d, ConvTranspose2d,
};
pub use norm::{
    batch_norm2d, group_count, group_norm, norm2d, BatchNorm2d, GroupNorm, Norm2d, NormKind,
};
