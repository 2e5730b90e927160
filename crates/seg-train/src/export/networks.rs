//! The four networks of `shared/reference/models.py` as ONNX nodes, layer
//! by layer, reading the weights under their PyTorch names.
//!
//! - BatchNorm (eval: running statistics) is folded into the convolution
//!   before it (every BatchNorm of the reference follows a convolution), in
//!   f64: `w' = w·γ/√(var+ε)`, `b' = (b − mean)·γ/√(var+ε) + β`.
//! - GroupNorm and InstanceNorm (`affine=True`; G = C) are
//!   `Reshape(N, G, −1)` → mean and biased variance over the last axis
//!   (`ReduceMean`, `Sub`, `Mul`, `Add` ε, `Sqrt`, `Div`) → `Reshape` back →
//!   per-channel `Mul` + `Add`. Opset 17 has no per-channel
//!   `GroupNormalization`, and tract 0.21's `InstanceNormalization` takes
//!   its statistics over the batch as well, so neither is used.
//! - `pad_to` (zero padding of an upsampled tensor to its skip's size,
//!   `diff // 2` before and the rest after): in these networks the
//!   upsampled size is `2·⌊s/2⌋` for a skip of size `s`, so the difference
//!   is 0 or 1 and all of it goes after. It is `Pad` by one after each
//!   spatial axis, then `Slice` to `Shape(skip)` — exact for any input size
//!   with constant pads (which runtimes such as tract need).
//! - Upsampling: `ConvTranspose` (2, stride 2), `Resize` linear with
//!   `align_corners` (bilinear / trilinear, `align_corners=True`), or
//!   `Resize` nearest, `asymmetric` + `floor` (PyTorch's `nearest`).

use super::graph::{Attr, GraphBuilder};
use crate::error::{Error, Result};
use seg_core::layers::{group_count, NormKind};
use seg_core::Tensor;
use seg_models::ModelConfig;
use std::collections::BTreeMap;

/// BatchNorm's epsilon in the reference (PyTorch's default).
const BN_EPS: f64 = 1e-5;
/// GroupNorm's and InstanceNorm's epsilon.
const NORM_EPS: f32 = 1e-5;

/// Builds the graph of `cfg` reading weights from `weights`; `input` is the
/// graph input's name. Returns the name of the logits.
pub(crate) fn build(
    cfg: &ModelConfig,
    weights: &BTreeMap<String, Tensor>,
    g: &mut GraphBuilder,
    input: &str,
) -> Result<String> {
    let mut b = Builder {
        g,
        weights,
        model: cfg.name(),
        dims: cfg.dims(),
        norm: cfg.norm(),
    };
    match cfg {
        ModelConfig::UNet(c) => b.unet(input, c.bilinear),
        ModelConfig::ResUNet(_) => b.resunet(input),
        ModelConfig::AttentionUNet(_) => b.attention_unet(input),
        ModelConfig::UNetPlusPlus(c) => b.unetpp(input, c.deep_supervision),
    }
}

struct Builder<'a> {
    g: &'a mut GraphBuilder,
    weights: &'a BTreeMap<String, Tensor>,
    model: &'static str,
    dims: usize,
    norm: NormKind,
}

impl Builder<'_> {
    // ------------------------------------------------------------- weights
    fn has(&self, name: &str) -> bool {
        self.weights.contains_key(name)
    }

    fn weight(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self
            .weights
            .get(name)
            .ok_or_else(|| Error::ExportUnsupported {
                model: self.model,
                reason: format!("the weight {name:?} is missing"),
            })?;
        let data = t
            .to_dtype(seg_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok((t.dims().to_vec(), data))
    }

    /// A per-channel vector, checked to have `c` entries.
    fn vector(&self, name: &str, c: usize) -> Result<Vec<f32>> {
        let (dims, data) = self.weight(name)?;
        if data.len() != c {
            return Err(Error::ExportUnsupported {
                model: self.model,
                reason: format!("{name:?} has shape {dims:?}, expected [{c}]"),
            });
        }
        Ok(data)
    }

    /// `[c, 1, 1]` (2D) or `[c, 1, 1, 1]` (3D): broadcasts over N·C·spatial.
    fn channel_shape(&self, c: usize) -> Vec<usize> {
        let mut s = vec![c];
        s.extend(std::iter::repeat_n(1, self.dims));
        s
    }

    fn spatial(&self, v: i64) -> Vec<i64> {
        vec![v; self.dims]
    }

    // -------------------------------------------------------------- layers
    /// Convolution `conv` (PyTorch prefix: `conv.weight`, optional
    /// `conv.bias`; padding k/2, stride 1) followed by the normalisation
    /// under `norm` if given.
    fn conv(&mut self, x: &str, conv: &str, norm: Option<&str>) -> Result<String> {
        let (wdims, mut w) = self.weight(&format!("{conv}.weight"))?;
        if wdims.len() != 2 + self.dims {
            return Err(Error::ExportUnsupported {
                model: self.model,
                reason: format!(
                    "{conv}.weight has shape {wdims:?}, expected {} dimensions",
                    2 + self.dims
                ),
            });
        }
        let cout = wdims[0];
        let k = wdims[2] as i64;
        let bias_name = format!("{conv}.bias");
        let mut bias = if self.has(&bias_name) {
            Some(self.vector(&bias_name, cout)?)
        } else {
            None
        };
        let fold = matches!((norm, self.norm), (Some(_), NormKind::Batch));
        if let (true, Some(n)) = (fold, norm) {
            let gamma = self.vector(&format!("{n}.weight"), cout)?;
            let beta = self.vector(&format!("{n}.bias"), cout)?;
            let mean = self.vector(&format!("{n}.running_mean"), cout)?;
            let var = self.vector(&format!("{n}.running_var"), cout)?;
            let per = w.len() / cout;
            let mut b = vec![0f32; cout];
            for o in 0..cout {
                let s = gamma[o] as f64 / (var[o] as f64 + BN_EPS).sqrt();
                for v in &mut w[o * per..(o + 1) * per] {
                    *v = (*v as f64 * s) as f32;
                }
                let b0 = bias.as_ref().map_or(0.0, |b| b[o] as f64);
                b[o] = ((b0 - mean[o] as f64) * s + beta[o] as f64) as f32;
            }
            bias = Some(b);
        }
        let wn = self.g.f32_tensor(&format!("{conv}.weight"), &wdims, &w);
        let mut inputs = vec![x.to_string(), wn];
        if let Some(b) = bias {
            inputs.push(self.g.f32_tensor(&format!("{conv}.bias"), &[cout], &b));
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let y = self.g.op(
            "Conv",
            conv,
            &inputs,
            vec![
                ("kernel_shape", Attr::Ints(self.spatial(k))),
                ("pads", Attr::Ints(vec![k / 2; 2 * self.dims])),
                ("strides", Attr::Ints(self.spatial(1))),
            ],
        );
        match (norm, fold) {
            (Some(n), false) => self.group_norm(&y, n, cout),
            _ => Ok(y),
        }
    }

    /// GroupNorm / InstanceNorm (whichever the configuration names) over
    /// `c` channels with the affine weights under `n`.
    fn group_norm(&mut self, x: &str, n: &str, c: usize) -> Result<String> {
        let gamma = self.vector(&format!("{n}.weight"), c)?;
        let beta = self.vector(&format!("{n}.bias"), c)?;
        let groups = match self.norm {
            NormKind::Group { groups } => group_count(c, groups),
            NormKind::Instance => c,
            NormKind::Batch => unreachable!("batch norm is folded into the convolution"),
        };
        // the statistics as ReduceMean nodes over each sample's group, not
        // InstanceNormalization: tract 0.21 averages that one over the batch too
        let grouped_shape = self
            .g
            .i64_tensor(&format!("{n}.grouped_shape"), &[0, groups as i64, -1]);
        let grouped = self.g.op(
            "Reshape",
            &format!("{n}.grouped"),
            &[x, &grouped_shape],
            vec![],
        );
        let over_group = || vec![("axes", Attr::Ints(vec![2])), ("keepdims", Attr::Int(1))];
        let mean = self.g.op(
            "ReduceMean",
            &format!("{n}.mean"),
            &[&grouped],
            over_group(),
        );
        let centred = self
            .g
            .op("Sub", &format!("{n}.centred"), &[&grouped, &mean], vec![]);
        let squared = self.g.op(
            "Mul",
            &format!("{n}.squared"),
            &[&centred, &centred],
            vec![],
        );
        let var = self.g.op(
            "ReduceMean",
            &format!("{n}.variance"),
            &[&squared],
            over_group(),
        );
        let eps = self
            .g
            .f32_tensor(&format!("{n}.epsilon"), &[1], &[NORM_EPS]);
        let var = self
            .g
            .op("Add", &format!("{n}.variance_eps"), &[&var, &eps], vec![]);
        let std = self.g.op("Sqrt", &format!("{n}.std"), &[&var], vec![]);
        let normed = self
            .g
            .op("Div", &format!("{n}.normalised"), &[&centred, &std], vec![]);
        let shape = self.g.op("Shape", &format!("{n}.shape"), &[x], vec![]);
        let back = self.g.op(
            "Reshape",
            &format!("{n}.ungrouped"),
            &[&normed, &shape],
            vec![],
        );
        let cs = self.channel_shape(c);
        let s = self.g.f32_tensor(&format!("{n}.weight"), &cs, &gamma);
        let b = self.g.f32_tensor(&format!("{n}.bias"), &cs, &beta);
        let scaled = self
            .g
            .op("Mul", &format!("{n}.scaled"), &[&back, &s], vec![]);
        Ok(self.g.op("Add", n, &[&scaled, &b], vec![]))
    }

    fn conv_relu(&mut self, x: &str, conv: &str, norm: &str) -> Result<String> {
        let y = self.conv(x, conv, Some(norm))?;
        Ok(self.relu(&y))
    }

    fn relu(&mut self, x: &str) -> String {
        self.g.op("Relu", &format!("{x}.relu"), &[x], vec![])
    }

    fn sigmoid(&mut self, x: &str) -> String {
        self.g.op("Sigmoid", &format!("{x}.sigmoid"), &[x], vec![])
    }

    fn add(&mut self, a: &str, b: &str, hint: &str) -> String {
        self.g.op("Add", hint, &[a, b], vec![])
    }

    fn mul(&mut self, a: &str, b: &str, hint: &str) -> String {
        self.g.op("Mul", hint, &[a, b], vec![])
    }

    fn concat(&mut self, parts: &[&str], hint: &str) -> String {
        self.g
            .op("Concat", hint, parts, vec![("axis", Attr::Int(1))])
    }

    /// `MaxPool2d(2)` / `MaxPool3d(2)` (floor).
    fn pool(&mut self, x: &str) -> String {
        let attrs = vec![
            ("kernel_shape", Attr::Ints(self.spatial(2))),
            ("strides", Attr::Ints(self.spatial(2))),
        ];
        self.g.op("MaxPool", &format!("{x}.pool"), &[x], attrs)
    }

    /// `ConvTranspose{2,3}d(cin, cout, 2, stride=2)` with bias.
    fn conv_transpose(&mut self, x: &str, p: &str) -> Result<String> {
        let (wdims, w) = self.weight(&format!("{p}.weight"))?;
        let cout = *wdims.get(1).unwrap_or(&0);
        let b = self.vector(&format!("{p}.bias"), cout)?;
        let wn = self.g.f32_tensor(&format!("{p}.weight"), &wdims, &w);
        let bn = self.g.f32_tensor(&format!("{p}.bias"), &[cout], &b);
        Ok(self.g.op(
            "ConvTranspose",
            p,
            &[x, &wn, &bn],
            vec![
                ("kernel_shape", Attr::Ints(self.spatial(2))),
                ("strides", Attr::Ints(self.spatial(2))),
            ],
        ))
    }

    fn scales2x(&mut self) -> String {
        let mut s = vec![1.0, 1.0];
        s.extend(std::iter::repeat_n(2.0, self.dims));
        let n = s.len();
        self.g.f32_tensor("scales_2x", &[n], &s)
    }

    /// `Upsample(scale_factor=2, mode="bilinear"/"trilinear", align_corners=True)`.
    fn up_linear(&mut self, x: &str) -> String {
        let scales = self.scales2x();
        self.g.op(
            "Resize",
            &format!("{x}.up"),
            &[x, "", &scales],
            vec![
                ("mode", Attr::Str("linear")),
                ("coordinate_transformation_mode", Attr::Str("align_corners")),
            ],
        )
    }

    /// `Upsample(scale_factor=2, mode="nearest")`: source index ⌊i/2⌋.
    fn up_nearest(&mut self, x: &str) -> String {
        let scales = self.scales2x();
        self.g.op(
            "Resize",
            &format!("{x}.up"),
            &[x, "", &scales],
            vec![
                ("mode", Attr::Str("nearest")),
                ("coordinate_transformation_mode", Attr::Str("asymmetric")),
                ("nearest_mode", Attr::Str("floor")),
            ],
        )
    }

    /// The reference's `pad_to(x, skip)` (see the module documentation).
    fn pad_to(&mut self, x: &str, skip: &str) -> String {
        let rank = 2 + self.dims;
        let mut pads = vec![0i64; rank + 2];
        pads.extend(std::iter::repeat_n(1, self.dims));
        let pads = self.g.i64_tensor(&format!("{x}.pads"), &pads);
        let padded = self
            .g
            .op("Pad", &format!("{x}.padded"), &[x, &pads], vec![]);
        let ends = self.g.op(
            "Shape",
            &format!("{skip}.spatial_shape"),
            &[skip],
            vec![("start", Attr::Int(2))],
        );
        let starts = self
            .g
            .i64_tensor(&format!("{x}.starts"), &vec![0; self.dims]);
        let axes: Vec<i64> = (2..rank as i64).collect();
        let axes = self.g.i64_tensor(&format!("{x}.axes"), &axes);
        self.g.op(
            "Slice",
            &format!("{x}.like_skip"),
            &[&padded, &starts, &ends, &axes],
            vec![],
        )
    }

    // ------------------------------------------------------------ networks
    /// `DoubleConv`: (conv → norm → ReLU) × 2 under `p.double_conv.{0,1,3,4}`.
    fn double_conv(&mut self, x: &str, p: &str) -> Result<String> {
        let x = self.conv_relu(
            x,
            &format!("{p}.double_conv.0"),
            &format!("{p}.double_conv.1"),
        )?;
        self.conv_relu(
            &x,
            &format!("{p}.double_conv.3"),
            &format!("{p}.double_conv.4"),
        )
    }

    fn unet(&mut self, input: &str, bilinear: bool) -> Result<String> {
        let mut skips = vec![self.double_conv(input, "inc")?];
        for i in 1..=4 {
            let prev = skips.last().expect("the input block").clone();
            let pooled = self.pool(&prev);
            skips.push(self.double_conv(&pooled, &format!("down{i}.maxpool_conv.1"))?);
        }
        let mut x = skips.pop().expect("five levels");
        for i in 1..=4 {
            let skip = skips.pop().expect("one skip per level");
            let up = if bilinear {
                self.up_linear(&x)
            } else {
                self.conv_transpose(&x, &format!("up{i}.up"))?
            };
            let up = self.pad_to(&up, &skip);
            let cat = self.concat(&[&skip, &up], &format!("up{i}.cat"));
            x = self.double_conv(&cat, &format!("up{i}.conv"))?;
        }
        self.conv(&x, "outc.conv", None)
    }

    /// `ResidualBlock` under `p`.
    fn residual(&mut self, x: &str, p: &str) -> Result<String> {
        let out = self.conv_relu(x, &format!("{p}.conv1"), &format!("{p}.bn1"))?;
        let out = self.conv(&out, &format!("{p}.conv2"), Some(&format!("{p}.bn2")))?;
        let short = if self.has(&format!("{p}.shortcut.0.weight")) {
            self.conv(
                x,
                &format!("{p}.shortcut.0"),
                Some(&format!("{p}.shortcut.1")),
            )?
        } else {
            x.to_string()
        };
        let sum = self.add(&out, &short, &format!("{p}.sum"));
        Ok(self.relu(&sum))
    }

    fn resunet(&mut self, input: &str) -> Result<String> {
        let mut skips = vec![self.residual(input, "encoder1")?];
        for i in 2..=5 {
            let pooled = self.pool(skips.last().expect("encoder1"));
            skips.push(self.residual(&pooled, &format!("encoder{i}"))?);
        }
        let mut d = skips.pop().expect("five encoders");
        for lvl in [4, 3, 2, 1] {
            let skip = skips.pop().expect("one skip per level");
            let up = self.conv_transpose(&d, &format!("upconv{lvl}"))?;
            let up = self.pad_to(&up, &skip);
            let cat = self.concat(&[&up, &skip], &format!("cat{lvl}"));
            // SpatialAttention: sigmoid(conv7([mean_c, max_c]))
            let sam = format!("sam{lvl}");
            let axes = vec![("axes", Attr::Ints(vec![1])), ("keepdims", Attr::Int(1))];
            let avg = self
                .g
                .op("ReduceMean", &format!("{sam}.mean"), &[&cat], axes);
            let axes = vec![("axes", Attr::Ints(vec![1])), ("keepdims", Attr::Int(1))];
            let mx = self.g.op("ReduceMax", &format!("{sam}.max"), &[&cat], axes);
            let pooled = self.concat(&[&avg, &mx], &format!("{sam}.pooled"));
            let att = self.conv(&pooled, &format!("{sam}.conv"), None)?;
            let att = self.sigmoid(&att);
            let gated = self.mul(&cat, &att, &format!("{sam}.gated"));
            d = self.residual(&gated, &format!("decoder{lvl}"))?;
        }
        self.conv(&d, "final", None)
    }

    /// Attention U-Net's `ConvBlock` under `p.conv.{0,1,3,4}`.
    fn conv_block(&mut self, x: &str, p: &str) -> Result<String> {
        let x = self.conv_relu(x, &format!("{p}.conv.0"), &format!("{p}.conv.1"))?;
        self.conv_relu(&x, &format!("{p}.conv.3"), &format!("{p}.conv.4"))
    }

    fn attention_unet(&mut self, input: &str) -> Result<String> {
        let mut skips = vec![self.conv_block(input, "enc1")?];
        for i in 2..=5 {
            let pooled = self.pool(skips.last().expect("enc1"));
            skips.push(self.conv_block(&pooled, &format!("enc{i}"))?);
        }
        let mut d = skips.pop().expect("five encoders");
        for lvl in [4, 3, 2, 1] {
            let skip = skips.pop().expect("one skip per level");
            let up = self.up_nearest(&d);
            let p = format!("up{lvl}.up");
            let g = self.conv_relu(&up, &format!("{p}.1"), &format!("{p}.2"))?;
            let g = self.pad_to(&g, &skip);
            // AttentionGate: x * sigmoid(psi(relu(W_g(g) + W_x(x))))
            let a = format!("att{lvl}");
            let wg = self.conv(&g, &format!("{a}.W_g.0"), Some(&format!("{a}.W_g.1")))?;
            let wx = self.conv(&skip, &format!("{a}.W_x.0"), Some(&format!("{a}.W_x.1")))?;
            let sum = self.add(&wg, &wx, &format!("{a}.sum"));
            let sum = self.relu(&sum);
            let psi = self.conv(&sum, &format!("{a}.psi.0"), Some(&format!("{a}.psi.1")))?;
            let psi = self.sigmoid(&psi);
            let s = self.mul(&skip, &psi, &format!("{a}.gated"));
            let cat = self.concat(&[&s, &g], &format!("dec{lvl}.cat"));
            d = self.conv_block(&cat, &format!("dec{lvl}"))?;
        }
        self.conv(&d, "head", None)
    }

    /// UNet++'s `VGGBlock` under `p`.
    fn vgg(&mut self, x: &str, p: &str) -> Result<String> {
        let x = self.conv_relu(x, &format!("{p}.conv1"), &format!("{p}.bn1"))?;
        self.conv_relu(&x, &format!("{p}.conv2"), &format!("{p}.bn2"))
    }

    fn unetpp(&mut self, input: &str, deep_supervision: bool) -> Result<String> {
        let mut xs: BTreeMap<(usize, usize), String> = BTreeMap::new();
        for i in 0..5 {
            let x = if i == 0 {
                input.to_string()
            } else {
                self.pool(&xs[&(i - 1, 0)])
            };
            let y = self.vgg(&x, &format!("conv{i}_0"))?;
            xs.insert((i, 0), y);
        }
        for j in 1..5 {
            for i in 0..5 - j {
                let up = self.up_linear(&xs[&(i + 1, j - 1)].clone());
                let up = self.pad_to(&up, &xs[&(i, 0)].clone());
                let mut parts: Vec<String> = (0..j).map(|k| xs[&(i, k)].clone()).collect();
                parts.push(up);
                let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
                let cat = self.concat(&parts, &format!("conv{i}_{j}.cat"));
                let y = self.vgg(&cat, &format!("conv{i}_{j}"))?;
                xs.insert((i, j), y);
            }
        }
        if !deep_supervision {
            return self.conv(&xs[&(0, 4)].clone(), "final", None);
        }
        // eval mode: the mean of the four heads
        let mut heads = Vec::new();
        for k in 1..5 {
            heads.push(self.conv(&xs[&(0, k)].clone(), &format!("final{k}"), None)?);
        }
        // ((h1 + h2) + h3) + h4, then × 1/4 (exact: a power of two); not
        // the n-ary `Mean`, on which tract 0.21 crashed for some 3D shapes
        let mut sum = heads[0].clone();
        for h in &heads[1..] {
            sum = self.add(&sum, h, "heads_sum");
        }
        let quarter = self.g.f32_tensor("quarter", &[1], &[0.25]);
        Ok(self.mul(&sum, &quarter, "heads_mean"))
    }
}
