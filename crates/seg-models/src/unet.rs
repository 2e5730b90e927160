//! U-Net (Ronneberger et al. 2015) with the state-dict names of the widely
//! used milesial/Pytorch-UNet repository, so its checkpoints load unchanged.

use crate::{check_input, output, Recorder};
use seg_core::candle::Result;
use seg_core::layers::{
    conv_nd, conv_norm_act, conv_transpose_nd, norm2d, Conv2d, ConvTranspose2d, Norm2d, NormKind,
};
use seg_core::ops::{cat_channels, max_pool2x2, pad_like, upsample_bilinear2x};
use seg_core::{Module, Tensor, VarBuilder};
use serde::{Deserialize, Serialize};

/// U-Net configuration. Defaults: 3 → 1 channels, base 64, transposed convolutions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UNetConfig {
    /// Input channels (default 3).
    pub in_channels: usize,
    /// Output channels (default 1).
    pub out_channels: usize,
    /// Width of the first level (default 64).
    pub base: usize,
    /// Bilinear upsampling instead of transposed convolutions, halving the
    /// deepest widths (default false).
    pub bilinear: bool,
    /// Normalisation (default batch norm).
    pub norm: NormKind,
    /// Spatial dimensions: 2 (NCHW images) or 3 (NCDHW volumes, with
    /// `Conv3d` weights under the same names); default 2.
    #[serde(skip_serializing_if = "crate::is_two")]
    pub dims: usize,
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 1,
            base: 64,
            bilinear: false,
            norm: NormKind::Batch,
            dims: 2,
        }
    }
}

/// (conv3×3 → norm → ReLU) × 2, convolutions without bias.
#[derive(Debug, Clone)]
pub(crate) struct DoubleConv {
    c1: Conv2d,
    n1: Norm2d,
    c2: Conv2d,
    n2: Norm2d,
}

impl DoubleConv {
    fn new(
        cin: usize,
        cout: usize,
        mid: usize,
        (norm, dims): (NormKind, usize),
        vb: VarBuilder,
    ) -> Result<Self> {
        let vb = vb.pp("double_conv");
        Ok(Self {
            c1: conv_nd(dims, cin, mid, 3, 1, false, vb.pp("0"))?,
            n1: norm2d(norm, mid, vb.pp("1"))?,
            c2: conv_nd(dims, mid, cout, 3, 1, false, vb.pp("3"))?,
            n2: norm2d(norm, cout, vb.pp("4"))?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = conv_norm_act(&self.c1, &self.n1, true, x, train)?;
        conv_norm_act(&self.c2, &self.n2, true, &x, train)
    }
}

#[derive(Debug, Clone)]
enum Upsample {
    Bilinear,
    Transposed(ConvTranspose2d),
}

#[derive(Debug, Clone)]
struct Up {
    up: Upsample,
    conv: DoubleConv,
}

impl Up {
    fn new(
        cin: usize,
        cout: usize,
        bilinear: bool,
        norm: (NormKind, usize),
        vb: VarBuilder,
    ) -> Result<Self> {
        if bilinear {
            Ok(Self {
                up: Upsample::Bilinear,
                conv: DoubleConv::new(cin, cout, cin / 2, norm, vb.pp("conv"))?,
            })
        } else {
            Ok(Self {
                up: Upsample::Transposed(conv_transpose_nd(norm.1, cin, cin / 2, vb.pp("up"))?),
                conv: DoubleConv::new(cin, cout, cout, norm, vb.pp("conv"))?,
            })
        }
    }

    fn forward_t(&self, x: &Tensor, skip: &Tensor, train: bool) -> Result<Tensor> {
        let x = match &self.up {
            Upsample::Bilinear => upsample_bilinear2x(x)?,
            Upsample::Transposed(t) => t.forward(x)?,
        };
        let x = pad_like(&x, skip)?;
        self.conv.forward_t(&cat_channels(&[skip, &x])?, train)
    }
}

/// The classic U-Net: four levels down, four up, skip concatenations.
#[derive(Debug, Clone)]
pub struct UNet {
    cfg: UNetConfig,
    inc: DoubleConv,
    downs: Vec<DoubleConv>,
    ups: Vec<Up>,
    outc: Conv2d,
}

impl UNet {
    /// Builds the network; tensor names are those of the reference.
    pub fn new(cfg: &UNetConfig, vb: VarBuilder) -> Result<Self> {
        let (b, f, n) = (
            cfg.base,
            if cfg.bilinear { 2 } else { 1 },
            (cfg.norm, cfg.dims),
        );
        let inc = DoubleConv::new(cfg.in_channels, b, b, n, vb.pp("inc"))?;
        let widths = [
            (b, 2 * b),
            (2 * b, 4 * b),
            (4 * b, 8 * b),
            (8 * b, 16 * b / f),
        ];
        let mut downs = Vec::new();
        for (i, (cin, cout)) in widths.into_iter().enumerate() {
            let vb = vb.pp(format!("down{}", i + 1)).pp("maxpool_conv").pp("1");
            downs.push(DoubleConv::new(cin, cout, cout, n, vb)?);
        }
        let up_widths = [
            (16 * b, 8 * b / f),
            (8 * b, 4 * b / f),
            (4 * b, 2 * b / f),
            (2 * b, b),
        ];
        let mut ups = Vec::new();
        for (i, (cin, cout)) in up_widths.into_iter().enumerate() {
            ups.push(Up::new(
                cin,
                cout,
                cfg.bilinear,
                n,
                vb.pp(format!("up{}", i + 1)),
            )?);
        }
        let outc = conv_nd(
            cfg.dims,
            b,
            cfg.out_channels,
            1,
            0,
            true,
            vb.pp("outc").pp("conv"),
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            inc,
            downs,
            ups,
            outc,
        })
    }

    /// Logits for an NCHW batch; `train` selects batch statistics in BatchNorm.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_recorded(x, train, &mut |_, _| {})
    }

    /// As [`forward_t`](Self::forward_t), reporting each block's output.
    pub fn forward_recorded(&self, x: &Tensor, train: bool, rec: &mut Recorder) -> Result<Tensor> {
        let x = check_input(x, self.cfg.in_channels, self.cfg.dims)?;
        let mut skips = vec![self.inc.forward_t(&x, train)?];
        rec("inc", &skips[0]);
        for (i, d) in self.downs.iter().enumerate() {
            let prev = skips.last().expect("at least the input block");
            let y = d.forward_t(&max_pool2x2(prev)?, train)?;
            rec(&format!("down{}", i + 1), &y);
            skips.push(y);
        }
        let mut x = skips.pop().expect("five levels");
        for (i, u) in self.ups.iter().enumerate() {
            let skip = skips.pop().expect("one skip per level");
            x = u.forward_t(&x, &skip, train)?;
            rec(&format!("up{}", i + 1), &x);
        }
        let y = self.outc.forward(&x)?;
        rec("outc", &y);
        output(y)
    }
}
