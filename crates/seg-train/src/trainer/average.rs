//! A moving average of the weights (`TrainConfig::weight_average`):
//! an exponential moving average of every parameter and BatchNorm running
//! statistic, updated after each optimiser step, with the usual warm-up of
//! the decay, `min(decay, (1 + t) / (10 + t))` at update `t`, so early
//! updates are not dominated by the random initialisation. The averaged
//! weights are the ones validated and written to the bundles (`best`,
//! `last`); training goes on from the live weights, which the resume
//! sidecar keeps beside the average (Polyak averaging; timm's `ModelEma`,
//! which averages the running statistics too).

use crate::error::{Error, Result};
use seg_core::{ParamStore, Tensor};
use std::collections::{BTreeMap, HashMap};

/// Prefix of the average's tensors in the resume sidecar.
pub(crate) const AVERAGE_PREFIX: &str = "average.";

/// The moving average of a network's weights.
pub struct WeightAverage {
    decay: f64,
    updates: u64,
    avg: BTreeMap<String, Tensor>,
}

/// Integer tensors (the BatchNorm batch counter) are copied, not averaged.
fn averaged(t: &Tensor) -> bool {
    t.dtype().is_float()
}

impl WeightAverage {
    /// Starts the average at the current weights of `params`.
    pub fn new(decay: f64, params: &ParamStore) -> Result<Self> {
        let avg = params
            .tensors()
            .into_iter()
            .map(|(k, t)| Ok((k, t.copy()?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            decay,
            updates: 0,
            avg,
        })
    }

    /// Updates so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The decay of update number `t` (from 1).
    pub fn decay_at(&self, t: u64) -> f64 {
        self.decay.min((1.0 + t as f64) / (10.0 + t as f64))
    }

    /// One update from the current weights of `params`.
    pub fn update(&mut self, params: &ParamStore) -> Result<()> {
        self.updates += 1;
        let w = 1.0 - self.decay_at(self.updates);
        for (name, var) in params.vars() {
            let t = var.as_tensor();
            let Some(a) = self.avg.get_mut(&name) else {
                continue;
            };
            if averaged(t) {
                seg_core::ops::average_step(a, t, w)?;
            } else {
                *a = t.copy()?;
            }
        }
        Ok(())
    }

    /// Runs `f` with the averaged weights in `params`, then puts the live
    /// weights back (also when `f` fails).
    pub fn with_average<R>(&self, params: &ParamStore, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let vars = params.vars();
        let mut live = Vec::with_capacity(vars.len());
        for (name, var) in &vars {
            if let Some(a) = self.avg.get(name) {
                live.push((var.clone(), var.as_tensor().copy()?));
                var.set(a)?;
            }
        }
        let out = f();
        for (var, t) in live {
            var.set(&t)?;
        }
        out
    }

    /// The average's tensors for the resume sidecar, by prefixed name.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.avg
            .iter()
            .map(|(k, t)| (format!("{AVERAGE_PREFIX}{k}"), t.clone()))
            .collect()
    }

    /// Restores the average written by [`state_tensors`](Self::state_tensors)
    /// after `updates` updates; every tensor must be present with its shape.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, updates: u64) -> Result<()> {
        for (name, a) in self.avg.iter_mut() {
            let key = format!("{AVERAGE_PREFIX}{name}");
            let Some(t) = tensors.get(&key) else {
                return Err(Error::StateIncomplete {
                    found: "the weight average".into(),
                    missing: key,
                });
            };
            if t.dims() != a.dims() {
                return Err(Error::StateShape {
                    name: key,
                    expected: a.dims().to_vec(),
                    got: t.dims().to_vec(),
                });
            }
            *a = t.to_device(a.device())?.to_dtype(a.dtype())?.copy()?;
        }
        self.updates = updates;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seg_core::{DType, Device};

    fn store() -> ParamStore {
        let s = ParamStore::new(1);
        let vb = s.var_builder(DType::F32, &Device::Cpu);
        let _ = vb.get_with_hints(3, "w", seg_core::Init::Const(1.0));
        let _ = vb.get_with_hints(3, "bn.running_mean", seg_core::Init::Const(0.0));
        s
    }

    fn values(s: &ParamStore, name: &str) -> Vec<f32> {
        s.get(name).unwrap().as_tensor().to_vec1::<f32>().unwrap()
    }

    fn set(s: &ParamStore, name: &str, v: f32) {
        let var = s.get(name).unwrap();
        var.set(&Tensor::full(v, 3, &Device::Cpu).unwrap()).unwrap();
    }

    #[test]
    fn averages_with_the_warm_up_and_swaps_the_weights_in_and_back() {
        let s = store();
        let mut avg = WeightAverage::new(0.99, &s).unwrap();
        // update 1: decay min(0.99, 2/11); update 2: min(0.99, 3/12)
        set(&s, "w", 3.0);
        avg.update(&s).unwrap();
        let d1 = 2.0 / 11.0;
        let a1 = d1 * 1.0 + (1.0 - d1) * 3.0;
        set(&s, "w", 5.0);
        set(&s, "bn.running_mean", 2.0);
        avg.update(&s).unwrap();
        let d2 = 3.0 / 12.0;
        let a2 = d2 * a1 + (1.0 - d2) * 5.0;
        let m2 = (1.0 - d2) * 2.0;
        assert_eq!(avg.updates(), 2);
        assert_eq!(avg.decay_at(10_000), 0.99);
        let seen = avg
            .with_average(&s, || Ok((values(&s, "w"), values(&s, "bn.running_mean"))))
            .unwrap();
        for (got, want) in [(seen.0[0], a2), (seen.1[0], m2)] {
            assert!((got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        }
        // the live weights are back, also after a failure inside
        assert_eq!(values(&s, "w"), vec![5.0; 3]);
        let err = avg.with_average(&s, || -> Result<()> {
            Err(Error::Setting {
                setting: "x".into(),
                expected: "y".into(),
                got: "z".into(),
            })
        });
        assert!(err.is_err());
        assert_eq!(values(&s, "w"), vec![5.0; 3]);
        assert_eq!(values(&s, "bn.running_mean"), vec![2.0; 3]);
        // the sidecar round trip; a missing tensor is refused
        let saved: HashMap<String, Tensor> = avg.state_tensors().into_iter().collect();
        let mut back = WeightAverage::new(0.99, &s).unwrap();
        back.load_state(&saved, 2).unwrap();
        assert_eq!(back.updates(), 2);
        let got = back.with_average(&s, || Ok(values(&s, "w"))).unwrap();
        assert!((got[0] as f64 - a2).abs() < 1e-6);
        let mut partial = saved.clone();
        partial.remove("average.w");
        assert!(back.load_state(&partial, 2).is_err());
    }
}
