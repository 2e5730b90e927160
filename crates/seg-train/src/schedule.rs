//! Learning-rate schedules, evaluated per epoch: constant, step, cosine with
//! linear warm-up, poly, and reduce-on-plateau (which watches a validation
//! score). The state is serialisable for exact resumption.

use serde::{Deserialize, Serialize};

/// A schedule and its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Schedule {
    Constant,
    /// × `gamma` every `step_size` epochs.
    Step {
        step_size: usize,
        gamma: f64,
    },
    /// Linear warm-up for `warmup_epochs`, then cosine decay to `min_lr`.
    Cosine {
        warmup_epochs: usize,
        min_lr: f64,
    },
    /// `lr × (1 - epoch/epochs)^power` (nnU-Net uses 0.9).
    Poly {
        power: f64,
    },
    /// × `factor` when the watched score has not improved for `patience` epochs.
    ReduceOnPlateau {
        factor: f64,
        patience: usize,
        min_lr: f64,
    },
}

impl Schedule {
    /// Checks the schedule's numbers (finite, in range).
    pub fn validate(&self) -> crate::error::Result<()> {
        let bad = |setting: &str, expected: &str, got: String| {
            Err(crate::error::Error::Setting {
                setting: format!("schedule.{setting}"),
                expected: expected.into(),
                got,
            })
        };
        match *self {
            Self::Constant => Ok(()),
            Self::Step { step_size, gamma } => {
                if step_size == 0 {
                    return bad("step_size", "≥ 1", step_size.to_string());
                }
                if !(gamma.is_finite() && gamma > 0.0) {
                    return bad("gamma", "> 0", gamma.to_string());
                }
                Ok(())
            }
            Self::Cosine { min_lr, .. } => {
                if !(min_lr.is_finite() && min_lr >= 0.0) {
                    return bad("min_lr", "≥ 0", min_lr.to_string());
                }
                Ok(())
            }
            Self::Poly { power } => {
                if !(power.is_finite() && power >= 0.0) {
                    return bad("power", "≥ 0", power.to_string());
                }
                Ok(())
            }
            Self::ReduceOnPlateau { factor, min_lr, .. } => {
                if !(factor > 0.0 && factor < 1.0) {
                    return bad("factor", "in (0, 1)", factor.to_string());
                }
                if !(min_lr.is_finite() && min_lr >= 0.0) {
                    return bad("min_lr", "≥ 0", min_lr.to_string());
                }
                Ok(())
            }
        }
    }

    /// The schedule with usual defaults by name.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "constant" => Self::Constant,
            "step" => Self::Step {
                step_size: 10,
                gamma: 0.5,
            },
            "cosine" => Self::Cosine {
                warmup_epochs: 1,
                min_lr: 1e-5,
            },
            "poly" => Self::Poly { power: 0.9 },
            "plateau" | "reduce_on_plateau" => Self::ReduceOnPlateau {
                factor: 0.5,
                patience: 3,
                min_lr: 1e-6,
            },
            _ => return None,
        })
    }
}

/// A schedule with its running state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scheduler {
    pub schedule: Schedule,
    pub base_lr: f64,
    pub epochs: usize,
    /// Plateau state: current lr, best score, epochs without improvement.
    pub plateau_lr: f64,
    pub best: Option<f64>,
    pub bad_epochs: usize,
}

impl Scheduler {
    pub fn new(schedule: Schedule, base_lr: f64, epochs: usize) -> Self {
        Self {
            schedule,
            base_lr,
            epochs: epochs.max(1),
            plateau_lr: base_lr,
            best: None,
            bad_epochs: 0,
        }
    }

    /// Learning rate for `epoch` (0-based).
    pub fn lr(&self, epoch: usize) -> f64 {
        let (b, e, n) = (self.base_lr, epoch as f64, self.epochs as f64);
        match self.schedule {
            Schedule::Constant => b,
            Schedule::Step { step_size, gamma } => {
                b * gamma.powi((epoch / step_size.max(1)) as i32)
            }
            Schedule::Cosine {
                warmup_epochs,
                min_lr,
            } => {
                if epoch < warmup_epochs {
                    b * (e + 1.0) / warmup_epochs as f64
                } else {
                    let span = (n - warmup_epochs as f64).max(1.0);
                    let t = ((e - warmup_epochs as f64) / span).clamp(0.0, 1.0);
                    min_lr + 0.5 * (b - min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
                }
            }
            Schedule::Poly { power } => b * (1.0 - (e / n).min(1.0)).powf(power),
            Schedule::ReduceOnPlateau { .. } => self.plateau_lr,
        }
    }

    /// Reports the epoch's validation score (higher is better).
    pub fn observe(&mut self, score: f64) {
        if let Schedule::ReduceOnPlateau {
            factor,
            patience,
            min_lr,
        } = self.schedule
        {
            if self.best.is_none_or(|b| score > b) {
                self.best = Some(score);
                self.bad_epochs = 0;
            } else {
                self.bad_epochs += 1;
                if self.bad_epochs > patience {
                    self.plateau_lr = (self.plateau_lr * factor).max(min_lr);
                    self.bad_epochs = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_their_formulas() {
        let s = Scheduler::new(
            Schedule::Step {
                step_size: 2,
                gamma: 0.1,
            },
            1.0,
            10,
        );
        assert_eq!([s.lr(0), s.lr(1)], [1.0, 1.0]);
        assert!((s.lr(2) - 0.1).abs() < 1e-12 && (s.lr(5) - 0.01).abs() < 1e-12);
        let c = Scheduler::new(
            Schedule::Cosine {
                warmup_epochs: 2,
                min_lr: 0.0,
            },
            1.0,
            12,
        );
        assert_eq!(c.lr(0), 0.5);
        assert_eq!(c.lr(2), 1.0);
        assert!((c.lr(7) - 0.5).abs() < 1e-12);
        assert!(c.lr(12) < 1e-12);
        let p = Scheduler::new(Schedule::Poly { power: 1.0 }, 1.0, 4);
        assert_eq!(p.lr(2), 0.5);
        let mut r = Scheduler::new(
            Schedule::ReduceOnPlateau {
                factor: 0.5,
                patience: 1,
                min_lr: 0.2,
            },
            1.0,
            10,
        );
        for score in [0.5, 0.6, 0.6, 0.6] {
            r.observe(score);
        }
        assert_eq!(r.lr(4), 0.5);
        for _ in 0..6 {
            r.observe(0.1);
        }
        assert_eq!(r.lr(10), 0.2);
    }
}
