//! ResUNet: residual blocks at every stage and a CBAM-style spatial attention
//! map (a 7×7 convolution over the channel mean and max) on each decoder
//! concatenation.

use crate::{check_input, output, Recorder};
use seg_core::candle::Result;
use seg_core::layers::{
    conv_nd, conv_norm_act, conv_transpose_nd, norm2d, Conv2d, ConvTranspose2d, Norm2d, NormKind,
};
use seg_core::ops::{
    add_relu, cat_channels, channel_mean_max, max_pool2x2, pad_like, sigmoid, spatial_gate,
};
use seg_core::{Module, Tensor, VarBuilder};
use serde::{Deserialize, Serialize};

/// ResUNet configuration. Defaults: 1 → 1 channels, base 64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResUNetConfig {
    /// Input channels (default 1).
    pub in_channels: usize,
    /// Output channels (default 1).
    pub out_channels: usize,
    /// Width of the first level (default 64).
    pub base: usize,
    /// Normalisation (default batch norm).
    pub norm: NormKind,
    /// Spatial dimensions: 2 (NCHW images) or 3 (NCDHW volumes, with
    /// `Conv3d` weights under the same names); default 2.
    #[serde(skip_serializing_if = "crate::is_two")]
    pub dims: usize,
}

impl Default for ResUNetConfig {
    fn default() -> Self {
        Self {
            in_channels: 1,
            out_channels: 1,
            base: 64,
            norm: NormKind::Batch,
            dims: 2,
        }
    }
}

#[derive(Debug, Clone)]
struct ResidualBlock {
    conv1: Conv2d,
    bn1: Norm2d,
    conv2: Conv2d,
    bn2: Norm2d,
    shortcut: Option<(Conv2d, Norm2d)>,
}

impl ResidualBlock {
    fn new(
        cin: usize,
        cout: usize,
        (norm, dims): (NormKind, usize),
        vb: VarBuilder,
    ) -> Result<Self> {
        let shortcut = if cin != cout {
            let s = vb.pp("shortcut");
            Some((
                conv_nd(dims, cin, cout, 1, 0, true, s.pp("0"))?,
                norm2d(norm, cout, s.pp("1"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: conv_nd(dims, cin, cout, 3, 1, true, vb.pp("conv1"))?,
            bn1: norm2d(norm, cout, vb.pp("bn1"))?,
            conv2: conv_nd(dims, cout, cout, 3, 1, true, vb.pp("conv2"))?,
            bn2: norm2d(norm, cout, vb.pp("bn2"))?,
            shortcut,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let out = conv_norm_act(&self.conv1, &self.bn1, true, x, train)?;
        let out = conv_norm_act(&self.conv2, &self.bn2, false, &out, train)?;
        let short = match &self.shortcut {
            Some((c, n)) => conv_norm_act(c, n, false, x, train)?,
            None => x.clone(),
        };
        add_relu(&out, &short)
    }
}

#[derive(Debug, Clone)]
struct SpatialAttention {
    conv: Conv2d,
}

impl SpatialAttention {
    fn new(dims: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv_nd(dims, 2, 1, 7, 3, true, vb.pp("conv"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let pooled = channel_mean_max(x)?;
        sigmoid(&self.conv.forward(&pooled)?)
    }
}

#[derive(Debug, Clone)]
struct DecoderLevel {
    upconv: ConvTranspose2d,
    sam: SpatialAttention,
    decoder: ResidualBlock,
}

/// Residual U-Net with spatial attention on the skip concatenations.
#[derive(Debug, Clone)]
pub struct ResUNet {
    cfg: ResUNetConfig,
    encoders: Vec<ResidualBlock>,
    /// Levels 4, 3, 2, 1 in the order they run.
    levels: Vec<DecoderLevel>,
    final_conv: Conv2d,
}

impl ResUNet {
    /// Builds the network; tensor names are those of the reference.
    pub fn new(cfg: &ResUNetConfig, vb: VarBuilder) -> Result<Self> {
        let (b, n) = (cfg.base, (cfg.norm, cfg.dims));
        let widths = [
            (cfg.in_channels, b),
            (b, 2 * b),
            (2 * b, 4 * b),
            (4 * b, 8 * b),
            (8 * b, 16 * b),
        ];
        let mut encoders = Vec::new();
        for (i, (cin, cout)) in widths.into_iter().enumerate() {
            encoders.push(ResidualBlock::new(
                cin,
                cout,
                n,
                vb.pp(format!("encoder{}", i + 1)),
            )?);
        }
        let mut levels = Vec::new();
        for (lvl, w) in [(4, 8 * b), (3, 4 * b), (2, 2 * b), (1, b)] {
            levels.push(DecoderLevel {
                upconv: conv_transpose_nd(cfg.dims, 2 * w, w, vb.pp(format!("upconv{lvl}")))?,
                sam: SpatialAttention::new(cfg.dims, vb.pp(format!("sam{lvl}")))?,
                decoder: ResidualBlock::new(2 * w, w, n, vb.pp(format!("decoder{lvl}")))?,
            });
        }
        let final_conv = conv_nd(cfg.dims, b, cfg.out_channels, 1, 0, true, vb.pp("final"))?;
        Ok(Self {
            cfg: cfg.clone(),
            encoders,
            levels,
            final_conv,
        })
    }

    /// Logits for an NCHW batch; `train` selects batch statistics in BatchNorm.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_recorded(x, train, &mut |_, _| {})
    }

    /// As [`forward_t`](Self::forward_t), reporting each block's output.
    pub fn forward_recorded(&self, x: &Tensor, train: bool, rec: &mut Recorder) -> Result<Tensor> {
        let x = check_input(x, self.cfg.in_channels, self.cfg.dims)?;
        let mut skips: Vec<Tensor> = Vec::new();
        let mut d = x;
        for (i, e) in self.encoders.iter().enumerate() {
            let input = if i == 0 { d.clone() } else { max_pool2x2(&d)? };
            d = e.forward_t(&input, train)?;
            rec(&format!("encoder{}", i + 1), &d);
            skips.push(d.clone());
        }
        skips.pop();
        for (level, lvl) in self.levels.iter().zip([4, 3, 2, 1]) {
            let skip = skips.pop().expect("one skip per level");
            let up = pad_like(&level.upconv.forward(&d)?, &skip)?;
            rec(&format!("upconv{lvl}"), &up);
            let cat = cat_channels(&[&up, &skip])?;
            let att = level.sam.forward(&cat)?;
            rec(&format!("sam{lvl}"), &att);
            d = level.decoder.forward_t(&spatial_gate(&cat, &att)?, train)?;
            rec(&format!("decoder{lvl}"), &d);
        }
        let y = self.final_conv.forward(&d)?;
        rec("final", &y);
        output(y)
    }
}
