//! Normalisation: BatchNorm2d with PyTorch's train/eval behaviour and running
//! statistics, and GroupNorm and InstanceNorm as batch-size-independent
//! alternatives.

use candle_core::{DType, Module, ModuleT, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

/// Which normalisation a network uses after its convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum NormKind {
    /// BatchNorm2d (eps 1e-5, momentum 0.1), as in the reference networks.
    #[default]
    Batch,
    /// GroupNorm with at most `groups` groups (the largest divisor of the
    /// channel count not above it), eps 1e-5. Same tensor names (`weight`,
    /// `bias`), no running statistics.
    Group { groups: usize },
    /// `nn.InstanceNorm2d(c, affine=True)`: statistics per sample and per
    /// channel, eps 1e-5, `weight`/`bias`, no running statistics — the same
    /// map as GroupNorm with one group per channel, and built as that.
    Instance,
}

/// `nn.BatchNorm2d(c)`: eps 1e-5, momentum 0.1, affine, tracking running stats.
///
/// In training mode it normalises with the batch's biased variance and
/// updates `running_var` with the unbiased one, as PyTorch does.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: Var,
    eps: f64,
    momentum: f64,
}

/// Builds a BatchNorm2d over `c` channels.
pub fn batch_norm2d(c: usize, vb: VarBuilder) -> Result<BatchNorm2d> {
    let weight = vb.get_with_hints(c, "weight", Init::Const(1.0))?;
    let bias = vb.get_with_hints(c, "bias", Init::Const(0.0))?;
    let rm = vb.get_with_hints(c, "running_mean", Init::Const(0.0))?;
    let rv = vb.get_with_hints(c, "running_var", Init::Const(1.0))?;
    let nb = vb.get_with_hints_dtype((), "num_batches_tracked", Init::Const(0.0), DType::I64)?;
    Ok(BatchNorm2d {
        weight,
        bias,
        running_mean: Var::from_tensor(&rm)?,
        running_var: Var::from_tensor(&rv)?,
        num_batches_tracked: Var::from_tensor(&nb)?,
        eps: 1e-5,
        momentum: 0.1,
    })
}

impl ModuleT for BatchNorm2d {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            return self.forward_train(x, false);
        }
        let (scale, shift) = self.eval_scale_shift()?;
        crate::ops::channel_affine(x, &scale, &shift)
    }
}

impl BatchNorm2d {
    /// Training mode: normalises with the batch's statistics and updates the
    /// running ones; then ReLU when `relu` (one fused kernel on the CPU).
    pub fn forward_train(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        if x.rank() == 5 {
            // BatchNorm3d: statistics over N·D·H·W are those of the planes
            return crate::ops::vol::per_plane(x, |p| self.forward_train(p, relu));
        }
        let (n, c, h, w) = x.dims4()?;
        if n * h * w < 2 {
            candle_core::bail!(
                "batch norm in training mode needs more than one value per channel (got input {n}x{c}x{h}x{w})"
            );
        }
        // (synchronised under a `collective` reducer: the global batch's
        // statistics and count)
        let (y, bm, bv, count) =
            crate::ops::batch_norm_train_act(x, &self.weight, &self.bias, self.eps, relu)?;
        // running statistics (PyTorch: unbiased variance), no gradient
        let m = self.momentum;
        let bv = (bv * (count / (count - 1.0)))?;
        let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (bm * m)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (bv * m)?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        let nb = (self.num_batches_tracked.as_tensor() + 1.0)?;
        self.num_batches_tracked.set(&nb)?;
        Ok(y)
    }

    /// The eval-mode map as `y = x·scale + shift` per channel:
    /// `scale = weight / √(running_var + eps)`, `shift = bias − running_mean·scale`
    /// (the running statistics detached: no autograd graph through them).
    pub fn eval_scale_shift(&self) -> Result<(Tensor, Tensor)> {
        let mean = self.running_mean.as_tensor().detach();
        let var = self.running_var.as_tensor().detach();
        let scale = ((var + self.eps)?.sqrt()?.recip()? * &self.weight)?;
        let shift = (&self.bias - (&mean * &scale)?)?;
        Ok((scale, shift))
    }

    /// True when the affine weight or bias tracks a gradient.
    pub fn tracks_gradients(&self) -> bool {
        self.weight.track_op() || self.bias.track_op()
    }
}

/// `nn.GroupNorm(groups, c)` with eps 1e-5.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    inner: candle_nn::GroupNorm,
}

/// The number of groups used for `c` channels when at most `groups` are asked for.
pub fn group_count(c: usize, groups: usize) -> usize {
    (1..=groups.clamp(1, c.max(1)))
        .rev()
        .find(|g| c.is_multiple_of(*g))
        .unwrap_or(1)
}

/// Builds a GroupNorm over `c` channels with at most `groups` groups.
pub fn group_norm(c: usize, groups: usize, vb: VarBuilder) -> Result<GroupNorm> {
    let weight = vb.get_with_hints(c, "weight", Init::Const(1.0))?;
    let bias = vb.get_with_hints(c, "bias", Init::Const(0.0))?;
    let inner = candle_nn::GroupNorm::new(weight, bias, c, group_count(c, groups), 1e-5)?;
    Ok(GroupNorm { inner })
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() == 5 {
            // statistics per sample span every plane: normalise in PyTorch's layout
            let y = self.inner.forward(&crate::ops::vol::from_depth_major(x)?)?;
            return crate::ops::vol::to_depth_major(&y);
        }
        self.inner.forward(x)
    }
}

/// Builds an InstanceNorm over `c` channels: a GroupNorm with `c` groups.
pub fn instance_norm(c: usize, vb: VarBuilder) -> Result<GroupNorm> {
    group_norm(c, c, vb)
}

/// A normalisation layer of either kind.
#[derive(Debug, Clone)]
pub enum Norm2d {
    /// Batch normalisation.
    Batch(BatchNorm2d),
    /// Group normalisation (instance normalisation is the case of one group
    /// per channel).
    Group(GroupNorm),
}

/// Builds the normalisation `kind` over `c` channels.
pub fn norm2d(kind: NormKind, c: usize, vb: VarBuilder) -> Result<Norm2d> {
    Ok(match kind {
        NormKind::Batch => Norm2d::Batch(batch_norm2d(c, vb)?),
        NormKind::Group { groups } => Norm2d::Group(group_norm(c, groups, vb)?),
        NormKind::Instance => Norm2d::Group(instance_norm(c, vb)?),
    })
}

impl ModuleT for Norm2d {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Self::Batch(b) => b.forward_t(x, train),
            Self::Group(g) => g.forward(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::*;
    use crate::ParamStore;
    use candle_core::Device;

    #[test]
    fn train_mode_normalises_and_updates_running_stats_like_pytorch() {
        let store = ParamStore::new(0);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let bn = batch_norm2d(2, vb.pp("bn")).unwrap();
        let x = rand_tensor(&[3, 2, 4, 5], 1).affine(3.0, 2.0).unwrap();
        let y = bn.forward_t(&x, true).unwrap();
        // output: zero mean, unit (biased) variance per channel
        let m = y
            .mean_keepdim((0, 2, 3))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let v = y
            .sqr()
            .unwrap()
            .mean_keepdim((0, 2, 3))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for c in 0..2 {
            assert!(m[c].abs() < 1e-5);
            assert!((v[c] - 1.0).abs() < 1e-3, "{v:?}");
        }
        // running stats: 0.9 * init + 0.1 * batch (unbiased variance)
        let xs = x
            .transpose(0, 1)
            .unwrap()
            .flatten_from(1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let rm = store
            .get("bn.running_mean")
            .unwrap()
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap();
        let rv = store
            .get("bn.running_var")
            .unwrap()
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap();
        for c in 0..2 {
            let n = xs[c].len() as f32;
            let mean = xs[c].iter().sum::<f32>() / n;
            let var_u = xs[c].iter().map(|v| (v - mean).powi(2)).sum::<f32>() / (n - 1.0);
            assert!((rm[c] - 0.1 * mean).abs() < 1e-5);
            assert!((rv[c] - (0.9 + 0.1 * var_u)).abs() < 1e-4);
        }
        let nb = store
            .get("bn.num_batches_tracked")
            .unwrap()
            .as_tensor()
            .to_scalar::<i64>()
            .unwrap();
        assert_eq!(nb, 1);
        // eval mode uses the running stats
        let ye = bn.forward_t(&x, false).unwrap();
        let x0 = x.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        let y0 = ye.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((y0 - (x0 - rm[0]) / (rv[0] + 1e-5).sqrt()).abs() < 1e-5);
        // one value per channel cannot be normalised in training
        assert!(bn.forward_t(&rand_tensor(&[1, 2, 1, 1], 2), true).is_err());
    }

    #[test]
    fn group_norm_picks_a_dividing_group_count() {
        assert_eq!(group_count(12, 8), 6);
        assert_eq!(group_count(4, 8), 4);
        assert_eq!(group_count(64, 8), 8);
        assert_eq!(group_count(1, 8), 1);
        let store = ParamStore::new(0);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let g = norm2d(NormKind::Group { groups: 8 }, 12, vb.pp("gn")).unwrap();
        let y = g.forward_t(&rand_tensor(&[1, 12, 3, 3], 3), true).unwrap();
        assert_eq!(y.dims(), &[1, 12, 3, 3]);
        assert!(store.get("gn.running_mean").is_none());
    }

    #[test]
    fn instance_norm_uses_per_sample_per_channel_statistics() {
        let store = ParamStore::new(0);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let norm = norm2d(NormKind::Instance, 3, vb.pp("in")).unwrap();
        let (n, c, hw) = (2, 3, 4 * 5);
        // different scale and offset per sample and channel
        let x = rand_tensor(&[n, c, 4, 5], 7);
        let scale = Tensor::new(&[[1.0f32, 3.0, 0.5], [7.0, 0.2, 2.0]], &Device::Cpu)
            .unwrap()
            .reshape((n, c, 1, 1))
            .unwrap();
        let x = x.broadcast_mul(&scale).unwrap().affine(1.0, 4.0).unwrap();
        let y = norm.forward_t(&x, true).unwrap();
        let xs = x.flatten_from(2).unwrap().to_vec3::<f32>().unwrap();
        let ys = y.flatten_from(2).unwrap().to_vec3::<f32>().unwrap();
        // no running statistics: eval mode is the same map
        let ye = norm.forward_t(&x, false).unwrap();
        assert_eq!(ye.flatten_from(2).unwrap().to_vec3::<f32>().unwrap(), ys);
        for b in 0..n {
            for ch in 0..c {
                let v = &xs[b][ch];
                let mean = v.iter().map(|&a| a as f64).sum::<f64>() / hw as f64;
                let var = v.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / hw as f64;
                for (k, &a) in v.iter().enumerate() {
                    let want = (a as f64 - mean) / (var + 1e-5).sqrt();
                    let got = ys[b][ch][k] as f64;
                    assert!((got - want).abs() < 1e-4, "{b} {ch} {k}: {got} vs {want}");
                }
            }
        }
        assert!(store.get("in.weight").is_some() && store.get("in.bias").is_some());
        assert!(store.get("in.running_mean").is_none());
        // the serde form matches the group norm's
        let j = serde_json::to_string(&NormKind::Instance).unwrap();
        assert_eq!(j, r#"{"kind":"instance"}"#);
        assert_eq!(
            serde_json::from_str::<NormKind>(r#"{"kind":"instance"}"#).unwrap(),
            NormKind::Instance
        );
    }

    /// Volumes (depth-major): instance norm over each sample's whole volume
    /// per channel (InstanceNorm3d), batch norm over N·D·H·W (BatchNorm3d).
    #[test]
    fn volume_norms_take_statistics_over_every_plane() {
        let store = ParamStore::new(0);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let inorm = norm2d(NormKind::Instance, 2, vb.pp("in")).unwrap();
        let bn = norm2d(NormKind::Batch, 2, vb.pp("bn")).unwrap();
        let (n, d, c, h, w) = (2, 3, 2, 4, 5);
        // NCDHW, each depth plane with its own offset: per-plane statistics
        // would remove it, per-volume ones keep it
        let x = rand_tensor(&[n, c, d, h, w], 9);
        let offs = Tensor::new(&[0f32, 5.0, -3.0], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, d, 1, 1))
            .unwrap();
        let x = x.broadcast_add(&offs).unwrap();
        let xd = crate::ops::vol::to_depth_major(&x).unwrap();
        for (norm, per_sample) in [(&inorm, true), (&bn, false)] {
            let y = crate::ops::vol::from_depth_major(&norm.forward_t(&xd, true).unwrap()).unwrap();
            let want = if per_sample {
                let m = x.mean_keepdim((2, 3, 4)).unwrap();
                let v = x
                    .broadcast_sub(&m)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .mean_keepdim((2, 3, 4))
                    .unwrap();
                x.broadcast_sub(&m)
                    .unwrap()
                    .broadcast_div(&(v + 1e-5).unwrap().sqrt().unwrap())
                    .unwrap()
            } else {
                let m = x.mean_keepdim((0, 2, 3, 4)).unwrap();
                let v = x
                    .broadcast_sub(&m)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .mean_keepdim((0, 2, 3, 4))
                    .unwrap();
                x.broadcast_sub(&m)
                    .unwrap()
                    .broadcast_div(&(v + 1e-5).unwrap().sqrt().unwrap())
                    .unwrap()
            };
            let diff = max_abs_diff(&y, &want);
            assert!(diff < 1e-4, "per_sample {per_sample}: {diff}");
        }
    }
}
