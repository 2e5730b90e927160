//! Per-channel affine map `y = x·scale[c] + shift[c]` of an NCHW tensor in
//! one parallel pass (BatchNorm in eval mode, folded into scale and shift).

use super::{cpu_f32, use_cpu_kernel};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

struct ChannelAffine;

impl CustomOp3 for ChannelAffine {
    fn name(&self) -> &'static str {
        "seg-channel-affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s1, l1, self.name())?;
        let scale = cpu_f32(s2, l2, self.name())?;
        let shift = cpu_f32(s3, l3, self.name())?;
        let (_, c, h, w) = l1.shape().dims4()?;
        if scale.len() != c || shift.len() != c {
            candle_core::bail!(
                "{}: {c} channels, scale/shift of {}/{}",
                self.name(),
                scale.len(),
                shift.len()
            );
        }
        let hw = (h * w).max(1);
        // SAFETY: each plane is written element by element from the plane
        // of x of the same length.
        let y = unsafe {
            super::par_uninit(x.len(), hw, |plane, o| {
                let (a, b) = (scale[plane % c], shift[plane % c]);
                for (o, &v) in o.iter_mut().zip(&x[plane * hw..]) {
                    o.write(v * a + b);
                }
            })
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        _shift: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = scale.dim(0)?;
        let dx = grad.broadcast_mul(&scale.reshape((1, c, 1, 1))?)?;
        let dscale = (grad * x)?.sum((0, 2, 3))?;
        let dshift = grad.sum((0, 2, 3))?;
        Ok((Some(dx), Some(dscale), Some(dshift)))
    }
}

/// `x·scale + shift` per channel of an NCHW tensor (`scale`, `shift`: (C)).
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    if x.rank() == 5 {
        return super::vol::per_plane(x, |p| channel_affine(p, scale, shift));
    }
    if use_cpu_kernel(x) {
        return x.contiguous()?.apply_op3(
            &scale.contiguous()?,
            &shift.contiguous()?,
            ChannelAffine,
        );
    }
    let c = scale.dim(0)?;
    x.broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
        .broadcast_add(&shift.reshape((1, c, 1, 1))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::*;
    use candle_core::Var;

    #[test]
    fn matches_broadcast_ops_with_gradients() {
        let x = Var::from_tensor(&rand_tensor(&[2, 3, 5, 7], 1)).unwrap();
        let s = Var::from_tensor(&rand_tensor(&[3], 2)).unwrap();
        let b = Var::from_tensor(&rand_tensor(&[3], 3)).unwrap();
        let y = channel_affine(&x, &s, &b).unwrap();
        let yr = x
            .broadcast_mul(&s.reshape((1, 3, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&b.reshape((1, 3, 1, 1)).unwrap())
            .unwrap();
        assert!(max_abs_diff(&y, &yr) < 1e-6);
        let gy = rand_tensor(&[2, 3, 5, 7], 4);
        let g = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (&yr * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        for t in [x.as_tensor(), s.as_tensor(), b.as_tensor()] {
            assert!(max_abs_diff(g.get(t).unwrap(), gr.get(t).unwrap()) < 1e-5);
        }
        assert!(channel_affine(&x, &rand_tensor(&[2], 5), &b).is_err());
    }
}
