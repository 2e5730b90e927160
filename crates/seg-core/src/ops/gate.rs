//! A spatial gate: every channel of an NCHW tensor times one (N, 1, H, W)
//! map, as in the attention gates of Attention U-Net and ResUNet's spatial
//! attention. candle's `broadcast_mul` does this on one thread, and its
//! backward sums the gate's gradient over the channels with a strided
//! reduction, also on one thread; here forward and backward are parallel
//! passes over the planes (Attention U-Net base-16 step: 103 → 100 ms).

use super::use_cpu_kernel;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Pixels per task of the gate gradient.
const CHUNK: usize = 4096;

/// Checks `x` (N, C, H, W) against the gate `g` (N, 1, H, W); returns
/// (N, C, H·W).
fn dims(x: &Layout, g: &Layout, what: &str) -> Result<(usize, usize, usize)> {
    let (n, c, h, w) = x.shape().dims4()?;
    if g.dims() != [n, 1, h, w] {
        candle_core::bail!(
            "{what}: gate {:?} does not fit input {:?}",
            g.dims(),
            x.dims()
        )
    }
    Ok((n, c, h * w))
}

/// y[n, c, p] = x[n, c, p] · g[n, p].
struct SpatialGate;

impl CustomOp2 for SpatialGate {
    fn name(&self) -> &'static str {
        "seg-spatial-gate"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, hw) = dims(l1, l2, self.name())?;
        let x = super::cpu_f32(s1, l1, self.name())?;
        let g = super::cpu_f32(s2, l2, self.name())?;
        // SAFETY: every (image, channel) plane is written element by element.
        let y = unsafe {
            super::par_uninit(n * c * hw, hw.max(1), |plane, out| {
                let src = &x[plane * hw..][..hw];
                let gate = &g[(plane / c) * hw..][..hw];
                for ((o, &v), &s) in out.iter_mut().zip(src).zip(gate) {
                    o.write(v * s);
                }
            })
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        g: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = if x.track_op() {
            // the same product: dy times the gate
            Some(grad.apply_op2_no_bwd(&g.contiguous()?, &SpatialGate)?)
        } else {
            None
        };
        let dg = if g.track_op() {
            Some(grad.apply_op2_no_bwd(&x.contiguous()?, &GateGrad)?)
        } else {
            None
        };
        Ok((dx, dg))
    }
}

/// dg[n, 0, p] = Σ over c, in order, of dy[n, c, p] · x[n, c, p].
struct GateGrad;

impl CustomOp2 for GateGrad {
    fn name(&self) -> &'static str {
        "seg-spatial-gate-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        if l2.dims() != l1.dims() {
            candle_core::bail!(
                "{}: shapes {:?} and {:?} differ",
                self.name(),
                l1.dims(),
                l2.dims()
            )
        }
        let hw = h * w;
        let dy = super::cpu_f32(s1, l1, self.name())?;
        let x = super::cpu_f32(s2, l2, self.name())?;
        let mut dg = vec![0f32; n * hw];
        // one task per (image, chunk of pixels), its pixels' sums over the
        // channels accumulated plane by plane
        dg.par_chunks_mut(hw.max(1))
            .enumerate()
            .flat_map(|(img, d)| {
                d.par_chunks_mut(CHUNK)
                    .enumerate()
                    .map(move |(k, d)| (img, k, d))
            })
            .for_each(|(img, k, d)| {
                let p0 = k * CHUNK;
                for ch in 0..c {
                    let at = (img * c + ch) * hw + p0;
                    let (a, b) = (&dy[at..][..d.len()], &x[at..][..d.len()]);
                    for ((o, &u), &v) in d.iter_mut().zip(a).zip(b) {
                        *o += u * v;
                    }
                }
            });
        Ok((CpuStorage::F32(dg), Shape::from((n, 1, h, w))))
    }
}

/// `x` (N, C, H, W) times the gate `g` (N, 1, H, W) broadcast over the
/// channels. Parallel kernels on the CPU; elsewhere candle's
/// `broadcast_mul` (also the kernels' reference).
pub fn spatial_gate(x: &Tensor, g: &Tensor) -> Result<Tensor> {
    if x.rank() == 5 {
        let gp = super::vol::planes(g)?;
        return super::vol::per_plane(x, |p| spatial_gate(p, &gp));
    }
    if use_cpu_kernel(x) && use_cpu_kernel(g) {
        x.contiguous()?.apply_op2(&g.contiguous()?, SpatialGate)
    } else {
        spatial_gate_reference(x, g)
    }
}

/// The composed version: candle's `broadcast_mul`.
pub fn spatial_gate_reference(x: &Tensor, g: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::*;
    use candle_core::Var;

    #[test]
    fn matches_broadcast_mul_forward_and_backward() {
        for (i, dims) in [[2, 3, 5, 7], [1, 1, 4, 4], [3, 6, 65, 70]]
            .iter()
            .enumerate()
        {
            let x = Var::from_tensor(&rand_tensor(dims, 5 + i as u64)).unwrap();
            let g = Var::from_tensor(&rand_tensor(&[dims[0], 1, dims[2], dims[3]], 50 + i as u64))
                .unwrap();
            let y = spatial_gate(x.as_tensor(), g.as_tensor()).unwrap();
            let yr = spatial_gate_reference(x.as_tensor(), g.as_tensor()).unwrap();
            assert_eq!(y.dims(), dims);
            assert!(max_abs_diff(&y, &yr) < 1e-6, "{dims:?}");
            let gy = rand_tensor(y.dims(), 90 + i as u64);
            let gr = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let grr = (&yr * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &g] {
                let d = max_abs_diff(
                    gr.get(v.as_tensor()).unwrap(),
                    grr.get(v.as_tensor()).unwrap(),
                );
                assert!(d < 1e-5, "{dims:?}: gradient differs by {d}");
            }
        }
    }

    #[test]
    fn rejects_a_gate_of_the_wrong_shape() {
        let x = rand_tensor(&[2, 3, 4, 5], 1);
        let g = rand_tensor(&[2, 1, 4, 4], 2);
        let e = spatial_gate(&x, &g).unwrap_err().to_string();
        assert!(e.contains("does not fit"), "{e}");
    }
}
