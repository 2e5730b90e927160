//! ReLU with PyTorch's backward (the gradient passes where the input is > 0),
//! and a probe for its kink.
//!
//! Where a ReLU input lies within float32 round-off of zero, which side of the
//! kink it lands on — and so whether its gradient passes — depends on the
//! summation order of the layers before it. Two correct implementations can
//! then differ in their gradients. [`relu_probe`] records such inputs during a
//! forward pass and can make the backward take the other branch at chosen
//! ones, so that a parity test can tell an ambiguous reference from a wrong
//! implementation.

use super::use_cpu_kernel;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use std::cell::RefCell;
use std::sync::Mutex;

struct ProbeState {
    band: f32,
    flip: Vec<usize>,
    found: Vec<f32>,
}

thread_local! {
    static PROBE: RefCell<Option<ProbeState>> = const { RefCell::new(None) };
}

/// Runs `f` (a forward pass on this thread) while recording every ReLU input
/// with `|x| < band`, numbered in the order met. The backward pass of the
/// ReLUs run inside `f` takes the other subgradient branch (block instead of
/// pass, or the reverse) at the inputs whose numbers are in `flip`.
/// Returns `f`'s result and the recorded inputs.
pub fn relu_probe<R>(band: f32, flip: &[usize], f: impl FnOnce() -> R) -> (R, Vec<f32>) {
    PROBE.with(|p| {
        *p.borrow_mut() = Some(ProbeState {
            band,
            flip: flip.to_vec(),
            found: Vec::new(),
        })
    });
    let r = f();
    let found = PROBE.with(|p| p.borrow_mut().take().map(|s| s.found).unwrap_or_default());
    (r, found)
}

/// Whether a [`relu_probe`] is recording on this thread (fused kernels that
/// apply ReLU themselves step aside then, so that the probe sees every ReLU).
pub(crate) fn probe_active() -> bool {
    PROBE.with(|p| p.borrow().is_some())
}

struct Relu {
    /// Flat indices whose backward branch is flipped (set by a probe).
    flips: Mutex<Vec<usize>>,
}

fn lock(m: &Mutex<Vec<usize>>) -> std::sync::MutexGuard<'_, Vec<usize>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

use super::cpu_f32 as contiguous;

const CHUNK: usize = 1 << 14;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "seg-relu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(storage, layout, self.name())?;
        // SAFETY: every chunk is written element by element (same lengths).
        let y = unsafe {
            super::par_uninit(x.len(), CHUNK, |i, o| {
                for (o, &v) in o.iter_mut().zip(&x[i * CHUNK..]) {
                    o.write(v.max(0.0));
                }
            })
        };
        PROBE.with(|p| {
            if let Some(state) = p.borrow_mut().as_mut() {
                for (k, &v) in x.iter().enumerate() {
                    if v.abs() < state.band {
                        if state.flip.contains(&state.found.len()) {
                            lock(&self.flips).push(k);
                        }
                        state.found.push(v);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = ReluBackward {
            flips: lock(&self.flips).clone(),
        };
        Ok(Some(
            grad.contiguous()?
                .apply_op2_no_bwd(&arg.contiguous()?, &op)?,
        ))
    }
}

struct ReluBackward {
    flips: Vec<usize>,
}

impl CustomOp2 for ReluBackward {
    fn name(&self) -> &'static str {
        "seg-relu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = contiguous(s1, l1, self.name())?;
        let x = contiguous(s2, l2, self.name())?;
        if g.len() != x.len() {
            candle_core::bail!("{}: gradient and input sizes differ", self.name())
        }
        // SAFETY: every chunk is written element by element (g, x and the
        // output have the same length).
        let mut dx = unsafe {
            super::par_uninit(g.len(), CHUNK, |i, o| {
                for ((o, &g), &x) in o.iter_mut().zip(&g[i * CHUNK..]).zip(&x[i * CHUNK..]) {
                    o.write(if x > 0.0 { g } else { 0.0 });
                }
            })
        };
        for &k in &self.flips {
            dx[k] = if x[k] > 0.0 { 0.0 } else { g[k] };
        }
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// `max(a + b, 0)` in one pass (a residual connection's add and ReLU).
struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "seg-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = contiguous(s1, l1, self.name())?;
        let b = contiguous(s2, l2, self.name())?;
        if l1.dims() != l2.dims() {
            candle_core::bail!(
                "{}: shapes {:?} and {:?} differ",
                self.name(),
                l1.dims(),
                l2.dims()
            )
        }
        // SAFETY: every chunk is written element by element (a, b and the
        // output have the same length).
        let y = unsafe {
            super::par_uninit(a.len(), CHUNK, |i, o| {
                for ((o, &p), &q) in o.iter_mut().zip(&a[i * CHUNK..]).zip(&b[i * CHUNK..]) {
                    o.write((p + q).max(0.0));
                }
            })
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // the output is positive exactly where a + b is
        let g = grad
            .contiguous()?
            .apply_op2_no_bwd(&res.contiguous()?, &ReluBackward { flips: Vec::new() })?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// `relu(a + b)`: one kernel on the CPU for equal shapes (not while a
/// [`relu_probe`] records), else the addition and [`relu`].
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if use_cpu_kernel(a) && use_cpu_kernel(b) && a.dims() == b.dims() && !probe_active() {
        a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
    } else {
        relu(&(a + b)?)
    }
}

/// ReLU; the gradient passes where the input is strictly positive.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if use_cpu_kernel(x) {
        x.contiguous()?.apply_op1(Relu {
            flips: Mutex::new(Vec::new()),
        })
    } else {
        relu_reference(x)
    }
}

/// The same composed from candle ops: `max(x, 0)`, whose gradient passes
/// where the input is > 0 (candle's own `relu` lets it pass at exactly 0).
pub fn relu_reference(x: &Tensor) -> Result<Tensor> {
    let mask = x.gt(0.0)?.to_dtype(x.dtype())?;
    x * mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::*;
    use candle_core::{Device, Var};

    #[test]
    fn add_relu_matches_the_composed_ops() {
        let a = Var::from_tensor(&rand_tensor(&[2, 3, 17, 19], 31)).unwrap();
        let b = Var::from_tensor(&rand_tensor(&[2, 3, 17, 19], 32)).unwrap();
        let gy = rand_tensor(&[2, 3, 17, 19], 33);
        let y = add_relu(a.as_tensor(), b.as_tensor()).unwrap();
        let yr = relu_reference(&(a.as_tensor() + b.as_tensor()).unwrap()).unwrap();
        assert_eq!(max_abs_diff(&y, &yr), 0.0);
        let g = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (&yr * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&a, &b] {
            let t = v.as_tensor();
            assert_eq!(max_abs_diff(g.get(t).unwrap(), gr.get(t).unwrap()), 0.0);
        }
        assert!(add_relu(a.as_tensor(), &rand_tensor(&[2, 3, 17, 18], 1)).is_err());
    }

    #[test]
    fn matches_reference_and_blocks_the_gradient_at_zero() {
        let mut v = rand_tensor(&[2, 3, 5, 7], 3)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        v[4] = 0.0;
        let x =
            Var::from_tensor(&Tensor::from_vec(v, (2, 3, 5, 7), &Device::Cpu).unwrap()).unwrap();
        let gy = rand_tensor(&[2, 3, 5, 7], 4);
        let y = relu(x.as_tensor()).unwrap();
        let yr = relu_reference(x.as_tensor()).unwrap();
        assert_eq!(max_abs_diff(&y, &yr), 0.0);
        let g = (y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (yr * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let g = g.get(x.as_tensor()).unwrap();
        assert_eq!(max_abs_diff(g, gr.get(x.as_tensor()).unwrap()), 0.0);
        assert_eq!(g.flatten_all().unwrap().to_vec1::<f32>().unwrap()[4], 0.0);
    }

    #[test]
    fn probe_records_near_zero_inputs_and_flips_chosen_branches() {
        let x = Var::from_tensor(&Tensor::new(&[1e-7f32, -2e-7, 0.5, -0.5], &Device::Cpu).unwrap())
            .unwrap();
        let (y, found) = relu_probe(1e-6, &[1], || relu(x.as_tensor()).unwrap());
        assert_eq!(found, vec![1e-7, -2e-7]);
        let g = y.sum_all().unwrap().backward().unwrap();
        let g = g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        // element 0 passes as usual; element 1 (negative) was flipped to pass
        assert_eq!(g, vec![1.0, 1.0, 1.0, 0.0]);
        // outside a probe nothing is recorded or flipped
        let g = relu(x.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(
            g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0, 0.0, 1.0, 0.0]
        );
    }
}
