//! 2D convolution (square kernel, "same" padding for odd kernels, stride 1
//! unless [`Conv2d::with_stride`])
//! and the 2×2 stride-2 transposed convolution used for learned upsampling;
//! with `dims = 3` ([`conv_nd`], [`conv_transpose_nd`]) the same layers hold
//! `Conv3d` / `ConvTranspose3d` weights and take depth-major volumes
//! ([`crate::ops::vol`]).

use super::Norm2d;
use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// PyTorch's default initialisation (kaiming-uniform with a = √5, which is
/// U(-1/√fan_in, 1/√fan_in), for weight and bias alike).
fn torch_default(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// `nn.Conv2d(cin, cout, k, padding=p, bias=...)`, or `nn.Conv3d` when its
/// weight is 5-d (built by [`conv_nd`] with `dims = 3`).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    stride: usize,
}

impl Conv2d {
    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    /// The same convolution with stride `stride` along every spatial axis
    /// (`nn.Conv2d/3d(..., stride=s)`: output sizes ⌊(n + 2p − k) / s⌋ + 1).
    /// Computed as the stride-1 convolution sampled at every s-th position
    /// (exact, forward and backward; the stride-1 cost — see
    /// [`crate::ops::vol::conv3d_strided`]).
    pub fn with_stride(mut self, stride: usize) -> Result<Self> {
        if stride == 0 {
            candle_core::bail!("convolution stride must be at least 1");
        }
        self.stride = stride;
        Ok(self)
    }

    /// The stride.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Samples a stride-1 output at every `stride`-th position.
    fn strided(&self, y: Tensor) -> Result<Tensor> {
        if self.stride == 1 {
            return Ok(y);
        }
        let axes: &[usize] = if y.rank() == 5 { &[1, 3, 4] } else { &[2, 3] };
        crate::ops::vol::sample_every(&y, axes, self.stride)
    }

    fn forward_stride1(&self, x: &Tensor) -> Result<Tensor> {
        if self.weight.rank() == 5 {
            if self.padding != self.weight.dims()[2] / 2 {
                candle_core::bail!(
                    "conv3d: padding {} with kernel {} (only padding k / 2)",
                    self.padding,
                    self.weight.dims()[2]
                );
            }
            return crate::ops::vol::conv3d(x, &self.weight, self.bias.as_ref());
        }
        if self.weight.dims()[2] == 1
            && self.padding == 0
            && !crate::ops::cpu_kernels_on(x.device())
        {
            let y = pointwise(x, &self.weight)?;
            return match &self.bias {
                Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
                None => Ok(y),
            };
        }
        crate::ops::conv2d(x, &self.weight, self.bias.as_ref(), self.padding)
    }
}

/// Builds a k×k convolution with padding `padding` (k / 2 keeps the size).
pub fn conv2d(
    cin: usize,
    cout: usize,
    k: usize,
    padding: usize,
    bias: bool,
    vb: VarBuilder,
) -> Result<Conv2d> {
    conv_nd(2, cin, cout, k, padding, bias, vb)
}

/// Builds a k×k (`dims = 2`) or k×k×k (`dims = 3`, padding k / 2) convolution.
pub fn conv_nd(
    dims: usize,
    cin: usize,
    cout: usize,
    k: usize,
    padding: usize,
    bias: bool,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let spatial = if dims == 3 { 3 } else { 2 };
    let mut shape = vec![cout, cin];
    shape.extend(std::iter::repeat_n(k, spatial));
    let init = torch_default(cin * k.pow(spatial as u32));
    let weight = vb.get_with_hints(shape, "weight", init)?;
    let bias = if bias {
        Some(vb.get_with_hints(cout, "bias", init)?)
    } else {
        None
    };
    Ok(Conv2d {
        weight,
        bias,
        padding,
        stride: 1,
    })
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.strided(self.forward_stride1(x)?)
    }
}

/// `conv → norm → ReLU (if relu)`, the block every network chains.
///
/// In eval mode with BatchNorm, on the CPU, when neither the input nor any
/// weight tracks a gradient (an inference model:
/// `seg_models::Network::inference_model`), the norm is folded into the
/// convolution (weights `w·s`, bias `b·s + t`, with `s`, `t` the eval scale
/// and shift) and the ReLU applied as the kernel writes its output: one pass
/// over the activations instead of three. In training, BatchNorm followed by
/// ReLU runs as one kernel (forward and backward; not while a
/// [`crate::ops::relu_probe`] records). Otherwise the layers run as written,
/// with their backward passes.
pub fn conv_norm_act(
    conv: &Conv2d,
    norm: &Norm2d,
    relu: bool,
    x: &Tensor,
    train: bool,
) -> Result<Tensor> {
    if let (false, Norm2d::Batch(bn)) = (train, norm) {
        let fusable = crate::ops::cpu_kernels_on(x.device())
            && x.dtype() == candle_core::DType::F32
            && !x.track_op()
            && !conv.weight.track_op()
            && !conv.bias.as_ref().is_some_and(|b| b.track_op())
            && !bn.tracks_gradients();
        if fusable {
            let (scale, shift) = bn.eval_scale_shift()?;
            let o = conv.out_channels();
            let mut per_out = vec![1; conv.weight.rank()];
            per_out[0] = o;
            let w = conv.weight.broadcast_mul(&scale.reshape(per_out)?)?;
            let b = match &conv.bias {
                Some(b) => ((b * &scale)? + &shift)?,
                None => shift,
            };
            // the norm and ReLU act per voxel: they commute with the stride's sampling
            let y = if w.rank() == 5 {
                crate::ops::vol::conv3d_relu_inference(x, &w, Some(&b), relu)?
            } else {
                crate::ops::conv2d_relu_inference(x, &w, Some(&b), conv.padding, relu)?
            };
            return conv.strided(y);
        }
    }
    if let (true, true, Norm2d::Batch(bn)) = (train, relu, norm) {
        // BatchNorm and ReLU as one kernel, unless a ReLU probe is recording
        if !crate::ops::relu_probe_active() {
            return bn.forward_train(&conv.forward(x)?, true);
        }
    }
    let y = norm.forward_t(&conv.forward(x)?, train)?;
    if relu {
        crate::ops::relu(&y)
    } else {
        Ok(y)
    }
}

/// A 1×1 convolution as a matrix product: (Cout,Cin) · (N,Cin,HW).
fn pointwise(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, cin, h, wd) = x.dims4()?;
    let cout = w.dim(0)?;
    let w2 = w.reshape((cout, cin))?;
    let x3 = x.reshape((n, cin, h * wd))?;
    w2.broadcast_matmul(&x3)?.reshape((n, cout, h, wd))
}

/// `nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)`: doubles H and W
/// (or `nn.ConvTranspose3d`, doubling D too, when its weight is 5-d).
#[derive(Debug, Clone)]
pub struct ConvTranspose2d {
    weight: Tensor,
    bias: Tensor,
}

/// Builds a 2×2 stride-2 transposed convolution (weight `(cin, cout, 2, 2)`).
pub fn conv_transpose2x2(cin: usize, cout: usize, vb: VarBuilder) -> Result<ConvTranspose2d> {
    // PyTorch computes fan-in of a transposed conv from weight.size(1) * k * k.
    let init = torch_default(cout * 4);
    let weight = vb.get_with_hints((cin, cout, 2, 2), "weight", init)?;
    let bias = vb.get_with_hints(cout, "bias", init)?;
    Ok(ConvTranspose2d { weight, bias })
}

/// Builds a 2×2 (`dims = 2`) or 2×2×2 (`dims = 3`, weight `(cin, cout, 2,
/// 2, 2)`) stride-2 transposed convolution.
pub fn conv_transpose_nd(
    dims: usize,
    cin: usize,
    cout: usize,
    vb: VarBuilder,
) -> Result<ConvTranspose2d> {
    if dims != 3 {
        return conv_transpose2x2(cin, cout, vb);
    }
    let init = torch_default(cout * 8);
    let weight = vb.get_with_hints((cin, cout, 2, 2, 2), "weight", init)?;
    let bias = vb.get_with_hints(cout, "bias", init)?;
    Ok(ConvTranspose2d { weight, bias })
}

impl Module for ConvTranspose2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.weight.rank() == 5 {
            return crate::ops::vol::conv_transpose3d_2x(x, &self.weight, &self.bias);
        }
        crate::ops::conv_transpose2x2(x, &self.weight, &self.bias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::*;
    use crate::ParamStore;
    use candle_core::{DType, Device, Var};

    /// A strided layer is PyTorch's strided convolution: 2D against candle's
    /// own strided conv2d (padding 1 and 0), 3D against the op (the fused
    /// eval path of strided layers: the next test).
    #[test]
    fn strided_layers_match_pytorch_semantics() {
        let store = ParamStore::new(5);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        for (k, p) in [(3, 1), (1, 0), (3, 0)] {
            let conv = conv2d(3, 5, k, p, true, vb.pp(format!("a{k}{p}")))
                .unwrap()
                .with_stride(2)
                .unwrap();
            let x = rand_tensor(&[2, 3, 9, 8], 4);
            let want = x
                .conv2d(&conv.weight, p, 2, 1, 1)
                .unwrap()
                .broadcast_add(&conv.bias.as_ref().unwrap().reshape((1, 5, 1, 1)).unwrap())
                .unwrap();
            let got = conv.forward(&x).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert!(max_abs_diff(&got, &want) < 1e-5, "k {k} padding {p}");
        }
        let c3 = conv_nd(3, 2, 4, 3, 1, false, vb.pp("c3"))
            .unwrap()
            .with_stride(2)
            .unwrap();
        assert_eq!(c3.stride(), 2);
        let x = rand_tensor(&[1, 5, 2, 7, 6], 5);
        let got = c3.forward(&x).unwrap();
        assert_eq!(got.dims(), &[1, 3, 4, 4, 3]);
        let want = crate::ops::vol::conv3d_strided(&x, &c3.weight, None, 2).unwrap();
        assert!(max_abs_diff(&got, &want) == 0.0);
        assert!(conv2d(1, 1, 3, 1, false, vb.pp("z"))
            .unwrap()
            .with_stride(0)
            .is_err());
    }

    /// The fused eval path (BatchNorm folded into the convolution, ReLU in
    /// the kernel's output) against the three layers run as written, on odd
    /// shapes, with and without conv bias and ReLU, with non-trivial
    /// running statistics; 2D and 3D, stride 1 and 2.
    #[test]
    fn fused_eval_conv_norm_relu_matches_the_layers() {
        for (bias, relu, k, cin, cout, dims, stride) in [
            (false, true, 3, 5, 7, 2, 1),
            (true, false, 1, 4, 3, 2, 1),
            (true, true, 3, 2, 9, 2, 1),
            (true, true, 3, 3, 4, 2, 2),
            (false, true, 3, 2, 5, 3, 1),
            (true, true, 3, 2, 5, 3, 2),
        ] {
            let store = ParamStore::new(7);
            let vb = store.var_builder(DType::F32, &Device::Cpu);
            let conv = conv_nd(dims, cin, cout, k, k / 2, bias, vb.pp("c"))
                .unwrap()
                .with_stride(stride)
                .unwrap();
            let norm =
                super::super::norm2d(super::super::NormKind::Batch, cout, vb.pp("n")).unwrap();
            // running statistics and affine parameters away from 0/1
            for (name, seed, a, b) in [
                ("n.running_mean", 1, 0.5, 0.1),
                ("n.running_var", 2, 0.4, 1.0),
                ("n.weight", 3, 0.5, 1.0),
                ("n.bias", 4, 0.3, 0.0),
            ] {
                let v = rand_tensor(&[cout], seed).affine(a, b).unwrap();
                store.get(name).unwrap().set(&v).unwrap();
            }
            let x = if dims == 3 {
                rand_tensor(&[2, 5, cin, 7, 6], 9)
            } else {
                rand_tensor(&[2, cin, 7, 5], 9)
            };
            // the layers as written: weights are variables (tracked), so no fusion
            let want = {
                let y = norm.forward_t(&conv.forward(&x).unwrap(), false).unwrap();
                if relu {
                    crate::ops::relu(&y).unwrap()
                } else {
                    y
                }
            };
            let composed = conv_norm_act(&conv, &norm, relu, &x, false).unwrap();
            assert!(max_abs_diff(&composed, &want) == 0.0);
            // detached copies of every weight: the fused path
            let detached = |n: &str| store.get(n).unwrap().as_tensor().detach();
            let dconv = Conv2d {
                weight: detached("c.weight"),
                bias: bias.then(|| detached("c.bias")),
                padding: k / 2,
                stride,
            };
            let vbd = candle_nn::VarBuilder::from_tensors(
                ["weight", "bias", "running_mean", "running_var"]
                    .iter()
                    .map(|s| (s.to_string(), detached(&format!("n.{s}"))))
                    .chain([(
                        "num_batches_tracked".to_string(),
                        Tensor::zeros((), DType::I64, &Device::Cpu).unwrap(),
                    )])
                    .collect(),
                DType::F32,
                &Device::Cpu,
            );
            let dnorm = super::super::norm2d(super::super::NormKind::Batch, cout, vbd).unwrap();
            let fused = conv_norm_act(&dconv, &dnorm, relu, &x, false).unwrap();
            assert!(!fused.track_op());
            let d = max_abs_diff(&fused, &want);
            assert!(
                d < 1e-5,
                "bias {bias} relu {relu} k {k} {dims}D stride {stride}: {d}"
            );
            if relu {
                let min = fused
                    .flatten_all()
                    .unwrap()
                    .min(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(min >= 0.0);
            }
        }
    }

    #[test]
    fn pointwise_equals_general_conv_forward_and_backward() {
        let store = ParamStore::new(3);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let c = conv2d(3, 4, 1, 0, true, vb.pp("c")).unwrap();
        let x = Var::from_tensor(&rand_tensor(&[2, 3, 5, 7], 1)).unwrap();
        let y = c.forward(x.as_tensor()).unwrap();
        let yr = x
            .as_tensor()
            .conv2d(&c.weight, 0, 1, 1, 1)
            .unwrap()
            .broadcast_add(&c.bias.as_ref().unwrap().reshape((1, 4, 1, 1)).unwrap())
            .unwrap();
        assert!(max_abs_diff(&y, &yr) < 1e-5);
        let gy = rand_tensor(&[2, 4, 5, 7], 2);
        let g = (y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (yr * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(
            max_abs_diff(
                g.get(x.as_tensor()).unwrap(),
                gr.get(x.as_tensor()).unwrap()
            ) < 1e-5
        );
        assert!(max_abs_diff(g.get(&c.weight).unwrap(), gr.get(&c.weight).unwrap()) < 1e-4);
    }

    #[test]
    fn transposed_conv_places_each_pixel_in_a_2x2_block() {
        let store = ParamStore::new(1);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let t = conv_transpose2x2(1, 1, vb).unwrap();
        let x = rand_tensor(&[1, 1, 3, 2], 4);
        let y = t.forward(&x).unwrap();
        assert_eq!(y.dims(), &[1, 1, 6, 4]);
        let w = t.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = t.bias.to_vec1::<f32>().unwrap()[0];
        let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let yv = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // output (2i+a, 2j+b) = x(i,j) * w(a,b) + bias
        for i in 0..3 {
            for j in 0..2 {
                for a in 0..2 {
                    for bb in 0..2 {
                        let got = yv[(2 * i + a) * 4 + 2 * j + bb];
                        let want = xv[i * 2 + j] * w[a * 2 + bb] + b;
                        assert!((got - want).abs() < 1e-6);
                    }
                }
            }
        }
    }
}
