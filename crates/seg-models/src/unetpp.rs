//! UNet++ (Zhou et al. 2018): nested dense skip pathways. Node X(i,j) sees
//! all of X(i,0..j) plus the upsampled X(i+1,j-1). With deep supervision the
//! four heads on X(0,1..4) are stacked on a new leading axis in training and
//! averaged in inference.

use crate::{check_input, output, Recorder};
use seg_core::candle::Result;
use seg_core::layers::{conv_nd, conv_norm_act, norm2d, Conv2d, Norm2d, NormKind};
use seg_core::ops::{cat_channels, max_pool2x2, pad_like, upsample_bilinear2x};
use seg_core::{Module, Tensor, VarBuilder};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// UNet++ configuration. Defaults: 3 → 1 channels, base 32, no deep supervision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UNetPlusPlusConfig {
    /// Input channels (default 3).
    pub in_channels: usize,
    /// Output channels (default 1).
    pub out_channels: usize,
    /// Width of the first level (default 32).
    pub base: usize,
    /// Four heads on X(0,1..4): stacked as (4,N,C,H,W) in training, averaged
    /// in inference (default false).
    pub deep_supervision: bool,
    /// Normalisation (default batch norm).
    pub norm: NormKind,
    /// Spatial dimensions: 2 (NCHW images) or 3 (NCDHW volumes, with
    /// `Conv3d` weights under the same names); default 2.
    #[serde(skip_serializing_if = "crate::is_two")]
    pub dims: usize,
}

impl Default for UNetPlusPlusConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 1,
            base: 32,
            deep_supervision: false,
            norm: NormKind::Batch,
            dims: 2,
        }
    }
}

#[derive(Debug, Clone)]
struct VggBlock {
    conv1: Conv2d,
    bn1: Norm2d,
    conv2: Conv2d,
    bn2: Norm2d,
}

impl VggBlock {
    fn new(
        cin: usize,
        mid: usize,
        cout: usize,
        (norm, dims): (NormKind, usize),
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            conv1: conv_nd(dims, cin, mid, 3, 1, true, vb.pp("conv1"))?,
            bn1: norm2d(norm, mid, vb.pp("bn1"))?,
            conv2: conv_nd(dims, mid, cout, 3, 1, true, vb.pp("conv2"))?,
            bn2: norm2d(norm, cout, vb.pp("bn2"))?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = conv_norm_act(&self.conv1, &self.bn1, true, x, train)?;
        conv_norm_act(&self.conv2, &self.bn2, true, &x, train)
    }
}

/// UNet++ with optional deep supervision.
#[derive(Debug, Clone)]
pub struct UNetPlusPlus {
    cfg: UNetPlusPlusConfig,
    nodes: HashMap<(usize, usize), VggBlock>,
    heads: Vec<Conv2d>,
}

impl UNetPlusPlus {
    /// Builds the network; tensor names are those of the reference.
    pub fn new(cfg: &UNetPlusPlusConfig, vb: VarBuilder) -> Result<Self> {
        let w: Vec<usize> = (0..5).map(|k| cfg.base << k).collect();
        let mut nodes = HashMap::new();
        for i in 0..5 {
            for j in 0..5 - i {
                let cin = match (i, j) {
                    (0, 0) => cfg.in_channels,
                    (_, 0) => w[i - 1],
                    _ => w[i] * j + w[i + 1],
                };
                nodes.insert(
                    (i, j),
                    VggBlock::new(
                        cin,
                        w[i],
                        w[i],
                        (cfg.norm, cfg.dims),
                        vb.pp(format!("conv{i}_{j}")),
                    )?,
                );
            }
        }
        let heads = if cfg.deep_supervision {
            (1..5)
                .map(|k| {
                    conv_nd(
                        cfg.dims,
                        w[0],
                        cfg.out_channels,
                        1,
                        0,
                        true,
                        vb.pp(format!("final{k}")),
                    )
                })
                .collect::<Result<_>>()?
        } else {
            vec![conv_nd(
                cfg.dims,
                w[0],
                cfg.out_channels,
                1,
                0,
                true,
                vb.pp("final"),
            )?]
        };
        Ok(Self {
            cfg: cfg.clone(),
            nodes,
            heads,
        })
    }

    /// Logits for an NCHW batch; `train` selects batch statistics in BatchNorm.
    /// With deep supervision the training output is (4,N,C,H,W).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_recorded(x, train, &mut |_, _| {})
    }

    /// As [`forward_t`](Self::forward_t), reporting each block's output.
    pub fn forward_recorded(&self, x: &Tensor, train: bool, rec: &mut Recorder) -> Result<Tensor> {
        let x = check_input(x, self.cfg.in_channels, self.cfg.dims)?;
        let node = |i: usize, j: usize| &self.nodes[&(i, j)];
        let mut xs: HashMap<(usize, usize), Tensor> = HashMap::new();
        for i in 0..5 {
            let input = if i == 0 {
                x.clone()
            } else {
                max_pool2x2(&xs[&(i - 1, 0)])?
            };
            let y = node(i, 0).forward_t(&input, train)?;
            rec(&format!("conv{i}_0"), &y);
            xs.insert((i, 0), y);
        }
        for j in 1..5 {
            for i in 0..5 - j {
                let up = pad_like(&upsample_bilinear2x(&xs[&(i + 1, j - 1)])?, &xs[&(i, 0)])?;
                let mut parts: Vec<&Tensor> = (0..j).map(|k| &xs[&(i, k)]).collect();
                parts.push(&up);
                let y = node(i, j).forward_t(&cat_channels(&parts)?, train)?;
                rec(&format!("conv{i}_{j}"), &y);
                xs.insert((i, j), y);
            }
        }
        if self.cfg.deep_supervision {
            let mut outs = Vec::new();
            for (k, head) in (1..5).zip(&self.heads) {
                let y = head.forward(&xs[&(0, k)])?;
                rec(&format!("final{k}"), &y);
                outs.push(output(y)?);
            }
            let stacked = Tensor::stack(&outs, 0)?;
            if train {
                Ok(stacked)
            } else {
                stacked.mean(0)
            }
        } else {
            let y = self.heads[0].forward(&xs[&(0, 4)])?;
            rec("final", &y);
            output(y)
        }
    }
}
