//! Optimisers — Adam, AdamW, SGD (momentum, Nesterov) — with weight decay
//! and gradient clipping by global norm, following PyTorch's update rules.
//! Their state (moments, step count) can be saved and restored exactly.

use crate::error::{Error, Result};
use seg_core::{GradStore, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam; weight decay is L2 added to the gradient (PyTorch `Adam`).
    Adam,
    /// Adam with decoupled weight decay (PyTorch `AdamW`).
    #[serde(rename = "adamw")]
    AdamW,
    /// SGD with optional momentum and Nesterov.
    Sgd,
}

/// Optimiser settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    pub nesterov: bool,
    /// Clip the global gradient norm to this value.
    pub clip_grad_norm: Option<f64>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::AdamW,
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
            momentum: 0.9,
            nesterov: false,
            clip_grad_norm: Some(1.0),
        }
    }
}

impl OptimizerKind {
    /// Parses `adam`, `adamw`, `sgd`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "adam" => Some(Self::Adam),
            "adamw" => Some(Self::AdamW),
            "sgd" => Some(Self::Sgd),
            _ => None,
        }
    }
}

/// Per-parameter optimiser state.
enum Slot {
    /// Adam's first and second moments, stacked on a new first axis.
    Moments(Tensor),
    /// SGD's momentum buffer.
    Momentum(Tensor),
}

/// An optimiser over named parameters.
pub struct Optimizer {
    pub config: OptimizerConfig,
    params: Vec<(String, Var)>,
    state: BTreeMap<String, Slot>,
    steps: u64,
}

impl Optimizer {
    /// An optimiser over `params` (trainable variables, by name).
    pub fn new(config: OptimizerConfig, params: Vec<(String, Var)>) -> Self {
        Self {
            config,
            params,
            state: BTreeMap::new(),
            steps: 0,
        }
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Global L2 norm of the gradients.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0.0f64;
        for (_, v) in &self.params {
            if let Some(g) = grads.get(v.as_tensor()) {
                total += seg_core::ops::sum_squares(g)?;
            }
        }
        Ok(total.sqrt())
    }

    /// One update with learning rate `lr`; returns the gradient norm before clipping.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<f64> {
        let norm = self.grad_norm(grads)?;
        let clip = match self.config.clip_grad_norm {
            Some(max) if norm > max => max / (norm + 1e-6),
            _ => 1.0,
        };
        self.steps += 1;
        let t = self.steps as i32;
        let c = self.config.clone();
        for (name, var) in &self.params {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            match c.kind {
                OptimizerKind::Adam | OptimizerKind::AdamW => {
                    let mut moments = match self.state.remove(name) {
                        Some(Slot::Moments(t)) => Some(t),
                        _ => None,
                    };
                    let h = seg_core::ops::AdamStep {
                        lr,
                        beta1: c.beta1,
                        beta2: c.beta2,
                        eps: c.eps,
                        weight_decay: c.weight_decay,
                        decoupled: c.kind == OptimizerKind::AdamW,
                        step: t,
                        grad_scale: clip,
                    };
                    seg_core::ops::adam_step(var, g, &mut moments, &h)?;
                    if let Some(m) = moments {
                        self.state.insert(name.clone(), Slot::Moments(m));
                    }
                }
                OptimizerKind::Sgd => {
                    // Detached: gradients can carry autograd history, and
                    // buffers built from them would chain every step's graph.
                    let p = var.as_tensor().detach();
                    let g = g.detach();
                    let mut g = if clip != 1.0 { (g * clip)? } else { g };
                    if c.weight_decay != 0.0 {
                        g = (g + (&p * c.weight_decay)?)?;
                    }
                    if c.momentum != 0.0 {
                        let buf = match self.state.get(name) {
                            Some(Slot::Momentum(b)) => ((b * c.momentum)? + &g)?,
                            _ => g.clone(),
                        };
                        g = if c.nesterov {
                            (g + (&buf * c.momentum)?)?
                        } else {
                            buf.clone()
                        };
                        self.state
                            .insert(name.clone(), Slot::Momentum(buf.detach()));
                    }
                    var.set(&(p - (g * lr)?)?.detach())?;
                }
            }
        }
        Ok(norm)
    }

    /// The state as named tensors (`m.<param>`, `v.<param>`) and the step count.
    pub fn state_tensors(&self) -> (Vec<(String, Tensor)>, u64) {
        let mut out = Vec::new();
        for (name, slot) in &self.state {
            match slot {
                Slot::Moments(t) => {
                    if let (Ok(m), Ok(v)) = (t.get(0), t.get(1)) {
                        out.push((format!("m.{name}"), m));
                        out.push((format!("v.{name}"), v));
                    }
                }
                Slot::Momentum(b) => out.push((format!("m.{name}"), b.clone())),
            }
        }
        (out, self.steps)
    }

    /// Restores state saved by [`state_tensors`](Self::state_tensors).
    pub fn load_state(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
        steps: u64,
    ) -> Result<()> {
        self.state.clear();
        for (name, var) in &self.params {
            let get = |k: &str| -> Result<Option<Tensor>> {
                match tensors.get(&format!("{k}.{name}")) {
                    Some(t) if t.dims() != var.dims() => Err(Error::StateShape {
                        name: format!("{k}.{name}"),
                        expected: var.dims().to_vec(),
                        got: t.dims().to_vec(),
                    }),
                    Some(t) => Ok(Some(t.to_device(var.device())?)),
                    None => Ok(None),
                }
            };
            let slot = match (get("m")?, get("v")?) {
                (Some(m), Some(v)) => Slot::Moments(Tensor::stack(&[m, v], 0)?),
                (Some(m), None) => Slot::Momentum(m),
                (None, Some(_)) => {
                    return Err(Error::StateIncomplete {
                        found: format!("v.{name}"),
                        missing: format!("m.{name}"),
                    })
                }
                (None, None) => continue,
            };
            self.state.insert(name.clone(), slot);
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seg_core::Device;

    /// Minimises (p - 3)^2 from p = 0; every rule must get close.
    fn converge(cfg: OptimizerConfig, steps: usize, lr: f64) -> f32 {
        let v = Var::from_tensor(&Tensor::zeros(1, seg_core::DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let mut o = Optimizer::new(cfg, vec![("p".into(), v.clone())]);
        for _ in 0..steps {
            let loss = (v.as_tensor() - 3.0)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            let g = loss.backward().unwrap();
            o.step(&g, lr).unwrap();
        }
        v.as_tensor().to_vec1::<f32>().unwrap()[0]
    }

    #[test]
    fn every_rule_minimises_a_quadratic() {
        let none = OptimizerConfig {
            weight_decay: 0.0,
            clip_grad_norm: None,
            ..Default::default()
        };
        for kind in [OptimizerKind::Adam, OptimizerKind::AdamW] {
            let p = converge(
                OptimizerConfig {
                    kind,
                    ..none.clone()
                },
                400,
                0.05,
            );
            assert!((p - 3.0).abs() < 0.05, "{kind:?}: {p}");
        }
        for nesterov in [false, true] {
            let p = converge(
                OptimizerConfig {
                    kind: OptimizerKind::Sgd,
                    nesterov,
                    ..none.clone()
                },
                200,
                0.05,
            );
            assert!((p - 3.0).abs() < 1e-3, "sgd nesterov={nesterov}: {p}");
        }
    }

    #[test]
    fn first_adam_step_is_lr_times_sign_and_sgd_matches_by_hand() {
        // PyTorch: the first Adam step moves every parameter by lr (bias-corrected m/sqrt(v) = sign(g))
        let cfg = OptimizerConfig {
            kind: OptimizerKind::Adam,
            weight_decay: 0.0,
            clip_grad_norm: None,
            ..Default::default()
        };
        let p = converge(cfg, 1, 0.1);
        assert!((p - 0.1).abs() < 1e-6, "{p}");
        // SGD momentum 0.9, lr 0.1, two steps on (p-3)^2: g0 = -6 → p1 = 0.6; g1 = -4.8, buf = -10.2 → p2 = 1.62
        let cfg = OptimizerConfig {
            kind: OptimizerKind::Sgd,
            weight_decay: 0.0,
            clip_grad_norm: None,
            ..Default::default()
        };
        assert!((converge(cfg, 2, 0.1) - 1.62).abs() < 1e-5);
    }

    #[test]
    fn optimiser_state_keeps_no_autograd_history() {
        // Regression: moments built from gradients that carry history chained
        // every step's graph together (21 GB after a few DRIVE epochs).
        let v = Var::from_tensor(&Tensor::ones(3, seg_core::DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        for kind in [
            OptimizerKind::Adam,
            OptimizerKind::AdamW,
            OptimizerKind::Sgd,
        ] {
            let mut o = Optimizer::new(
                OptimizerConfig {
                    kind,
                    ..Default::default()
                },
                vec![("p".into(), v.clone())],
            );
            for _ in 0..3 {
                let loss = (v.as_tensor().sqr().unwrap() * 2.0)
                    .unwrap()
                    .sum_all()
                    .unwrap();
                o.step(&loss.backward().unwrap(), 0.01).unwrap();
            }
            for (name, t) in o.state_tensors().0 {
                assert!(!t.track_op(), "{kind:?}: {name} keeps an autograd graph");
            }
        }
    }

    #[test]
    fn clipping_bounds_the_update_and_state_round_trips() {
        let v = Var::from_tensor(&Tensor::zeros(2, seg_core::DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let cfg = OptimizerConfig {
            kind: OptimizerKind::Sgd,
            momentum: 0.0,
            weight_decay: 0.0,
            clip_grad_norm: Some(1.0),
            ..Default::default()
        };
        let mut o = Optimizer::new(cfg, vec![("p".into(), v.clone())]);
        let loss = (v.as_tensor() - 100.0)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let norm = o.step(&loss.backward().unwrap(), 1.0).unwrap();
        assert!(norm > 100.0);
        let moved = v
            .as_tensor()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        assert!((moved - 1.0).abs() < 1e-4, "{moved}");
        let mut a = Optimizer::new(OptimizerConfig::default(), vec![("p".into(), v.clone())]);
        let loss = v.as_tensor().sqr().unwrap().sum_all().unwrap();
        a.step(&loss.backward().unwrap(), 0.1).unwrap();
        let (t, steps) = a.state_tensors();
        let map = t.into_iter().collect();
        let mut b = Optimizer::new(OptimizerConfig::default(), vec![("p".into(), v.clone())]);
        b.load_state(&map, steps).unwrap();
        assert_eq!(b.steps(), 1);
        assert_eq!(b.state_tensors().0.len(), 2);
    }
}
