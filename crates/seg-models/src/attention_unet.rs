//! Attention U-Net (Oktay et al. 2018): additive attention gates filter each
//! skip connection with the gating signal coming up from the decoder.

use crate::{check_input, output, Recorder};
use seg_core::candle::Result;
use seg_core::layers::{conv_nd, conv_norm_act, norm2d, Conv2d, Norm2d, NormKind};
use seg_core::ops::{
    cat_channels, max_pool2x2, pad_like, relu, sigmoid, spatial_gate, upsample_nearest2x,
};
use seg_core::{Module, Tensor, VarBuilder};
use serde::{Deserialize, Serialize};

/// Attention U-Net configuration. Defaults: 3 → 1 channels, base 64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttentionUNetConfig {
    /// Input channels (default 3).
    pub in_channels: usize,
    /// Output channels (default 1).
    pub out_channels: usize,
    /// Width of the first level (default 64, at least 2).
    pub base: usize,
    /// Normalisation (default batch norm).
    pub norm: NormKind,
    /// Spatial dimensions: 2 (NCHW images) or 3 (NCDHW volumes, with
    /// `Conv3d` weights under the same names); default 2.
    #[serde(skip_serializing_if = "crate::is_two")]
    pub dims: usize,
}

impl Default for AttentionUNetConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 1,
            base: 64,
            norm: NormKind::Batch,
            dims: 2,
        }
    }
}

/// A convolution with bias followed by normalisation (`nn.Sequential(conv, bn)`).
#[derive(Debug, Clone)]
struct ConvNorm {
    conv: Conv2d,
    norm: Norm2d,
}

impl ConvNorm {
    fn new(
        cin: usize,
        cout: usize,
        k: usize,
        (norm, dims): (NormKind, usize),
        vb: VarBuilder,
        ci: &str,
        ni: &str,
    ) -> Result<Self> {
        Ok(Self {
            conv: conv_nd(dims, cin, cout, k, k / 2, true, vb.pp(ci))?,
            norm: norm2d(norm, cout, vb.pp(ni))?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        conv_norm_act(&self.conv, &self.norm, false, x, train)
    }

    fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        conv_norm_act(&self.conv, &self.norm, true, x, train)
    }
}

#[derive(Debug, Clone)]
struct ConvBlock {
    a: ConvNorm,
    b: ConvNorm,
}

impl ConvBlock {
    fn new(cin: usize, cout: usize, norm: (NormKind, usize), vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("conv");
        Ok(Self {
            a: ConvNorm::new(cin, cout, 3, norm, vb.clone(), "0", "1")?,
            b: ConvNorm::new(cout, cout, 3, norm, vb, "3", "4")?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = self.a.forward_relu(x, train)?;
        self.b.forward_relu(&x, train)
    }
}

#[derive(Debug, Clone)]
struct AttentionGate {
    w_g: ConvNorm,
    w_x: ConvNorm,
    psi: ConvNorm,
}

impl AttentionGate {
    fn new(
        f_g: usize,
        f_l: usize,
        f_int: usize,
        norm: (NormKind, usize),
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            w_g: ConvNorm::new(f_g, f_int, 1, norm, vb.pp("W_g"), "0", "1")?,
            w_x: ConvNorm::new(f_l, f_int, 1, norm, vb.pp("W_x"), "0", "1")?,
            psi: ConvNorm::new(f_int, 1, 1, norm, vb.pp("psi"), "0", "1")?,
        })
    }

    fn forward_t(&self, g: &Tensor, x: &Tensor, train: bool) -> Result<Tensor> {
        let a = relu(&(self.w_g.forward_t(g, train)? + self.w_x.forward_t(x, train)?)?)?;
        let psi = sigmoid(&self.psi.forward_t(&a, train)?)?;
        spatial_gate(x, &psi)
    }
}

#[derive(Debug, Clone)]
struct DecoderLevel {
    up: ConvNorm,
    att: AttentionGate,
    dec: ConvBlock,
}

/// U-Net with attention-gated skip connections and nearest-neighbour upsampling.
#[derive(Debug, Clone)]
pub struct AttentionUNet {
    cfg: AttentionUNetConfig,
    encoders: Vec<ConvBlock>,
    levels: Vec<DecoderLevel>,
    head: Conv2d,
}

impl AttentionUNet {
    /// Builds the network; tensor names are those of the reference.
    pub fn new(cfg: &AttentionUNetConfig, vb: VarBuilder) -> Result<Self> {
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
            encoders.push(ConvBlock::new(
                cin,
                cout,
                n,
                vb.pp(format!("enc{}", i + 1)),
            )?);
        }
        let mut levels = Vec::new();
        for (lvl, w) in [(4, 8 * b), (3, 4 * b), (2, 2 * b), (1, b)] {
            levels.push(DecoderLevel {
                up: ConvNorm::new(2 * w, w, 3, n, vb.pp(format!("up{lvl}")).pp("up"), "1", "2")?,
                att: AttentionGate::new(w, w, w / 2, n, vb.pp(format!("att{lvl}")))?,
                dec: ConvBlock::new(2 * w, w, n, vb.pp(format!("dec{lvl}")))?,
            });
        }
        let head = conv_nd(cfg.dims, b, cfg.out_channels, 1, 0, true, vb.pp("head"))?;
        Ok(Self {
            cfg: cfg.clone(),
            encoders,
            levels,
            head,
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
            rec(&format!("enc{}", i + 1), &d);
            skips.push(d.clone());
        }
        skips.pop();
        for (level, lvl) in self.levels.iter().zip([4, 3, 2, 1]) {
            let skip = skips.pop().expect("one skip per level");
            let g = level.up.forward_relu(&upsample_nearest2x(&d)?, train)?;
            let g = pad_like(&g, &skip)?;
            rec(&format!("up{lvl}"), &g);
            let s = level.att.forward_t(&g, &skip, train)?;
            rec(&format!("att{lvl}"), &s);
            d = level.dec.forward_t(&cat_channels(&[&s, &g])?, train)?;
            rec(&format!("dec{lvl}"), &d);
        }
        let y = self.head.forward(&d)?;
        rec("head", &y);
        output(y)
    }
}
