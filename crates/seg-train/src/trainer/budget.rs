//! The wall-clock budget of a run (`max_seconds`, `seg-cli train
//! --max-time`): when to cut an epoch short so its validation and
//! checkpoints still fit, and how many epochs the learning-rate schedule
//! should span so that it ends inside the budget rather than at an epoch
//! count the run cannot reach.
//!
//! The budget counts this invocation's wall time from the moment the trainer
//! was created (data loading included). Runs under a budget are not
//! reproducible step for step: where they stop depends on the machine's
//! speed (everything before the stop is, as without a budget).

use std::time::Instant;

/// Share of the budget held back for the first validation, before one has
/// been timed.
const FIRST_VALIDATION_RESERVE: f64 = 0.1;

/// Timings of the current invocation against its limit.
#[derive(Debug, Clone)]
pub struct TimeBudget {
    limit: f64,
    started: Instant,
    steps: (f64, usize),
    epochs: (f64, usize),
    validation: Option<f64>,
}

impl TimeBudget {
    /// A budget of `limit` seconds counted from `started`.
    pub fn new(limit: f64, started: Instant) -> Self {
        Self {
            limit,
            started,
            steps: (0.0, 0),
            epochs: (0.0, 0),
            validation: None,
        }
    }

    /// Seconds since the start.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn limit(&self) -> f64 {
        self.limit
    }

    pub fn record_step(&mut self, secs: f64) {
        self.steps.0 += secs;
        self.steps.1 += 1;
    }

    pub fn record_validation(&mut self, secs: f64) {
        // the largest seen: validation time varies little, and under-estimating it overruns
        self.validation = Some(self.validation.map_or(secs, |v| v.max(secs)));
    }

    /// Records a whole epoch (training steps, validation and checkpoints).
    pub fn record_epoch(&mut self, secs: f64) {
        self.epochs.0 += secs;
        self.epochs.1 += 1;
    }

    fn mean_step(&self) -> f64 {
        if self.steps.1 == 0 {
            0.0
        } else {
            self.steps.0 / self.steps.1 as f64
        }
    }

    /// Whether one more training step followed by the epoch's validation
    /// would end past the limit.
    pub fn step_would_overrun(&self) -> bool {
        let validation = self
            .validation
            .unwrap_or(FIRST_VALIDATION_RESERVE * self.limit);
        self.elapsed() + self.mean_step() + validation > self.limit
    }

    /// The schedule's epoch count after `done` epochs, at most `cap`.
    pub fn horizon(&self, done: usize, cap: usize) -> usize {
        let per_epoch = if self.epochs.1 == 0 {
            0.0
        } else {
            self.epochs.0 / self.epochs.1 as f64
        };
        horizon(done, self.limit - self.elapsed(), per_epoch, cap)
    }
}

/// A last epoch that fits only in part is run (and cut short) when at least
/// this share of it fits; a smaller tail is left unused rather than spent
/// mostly on that epoch's validation.
pub const PARTIAL_EPOCH: f64 = 0.25;

/// `done` epochs plus the epochs of `per_epoch` seconds that fit in
/// `remaining` seconds — the whole ones, and a last one cut short when at
/// least `PARTIAL_EPOCH` of it fits — between `done` and `cap`.
pub fn horizon(done: usize, remaining: f64, per_epoch: f64, cap: usize) -> usize {
    if per_epoch.is_nan() || per_epoch <= 0.0 {
        return cap.max(done);
    }
    let fit = remaining.max(0.0) / per_epoch;
    let mut more = fit.floor();
    if fit - more >= PARTIAL_EPOCH {
        more += 1.0;
    }
    let more = if more >= cap as f64 {
        cap
    } else {
        more as usize
    };
    done.saturating_add(more).min(cap).max(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_horizon_counts_whole_epochs_that_fit() {
        assert_eq!(horizon(2, 100.0, 10.0, 1000), 12);
        assert_eq!(
            horizon(2, 99.9, 10.0, 1000),
            12,
            "a last epoch 99 % of which fits"
        );
        assert_eq!(
            horizon(2, 92.0, 10.0, 1000),
            11,
            "20 % of an epoch is left unused"
        );
        assert_eq!(horizon(2, 100.0, 10.0, 8), 8);
        assert_eq!(horizon(5, -3.0, 10.0, 1000), 5);
        assert_eq!(horizon(0, 1e300, 1e-300, 7), 7);
        assert_eq!(horizon(3, 10.0, 0.0, 40), 40);
    }

    #[test]
    fn a_step_overruns_when_validation_would_not_fit() {
        let mut b = TimeBudget::new(1000.0, Instant::now());
        assert!(!b.step_would_overrun(), "reserve 100 s of 1000");
        b.record_validation(1000.0);
        assert!(b.step_would_overrun());
        let mut b = TimeBudget::new(1000.0, Instant::now());
        b.record_step(995.0);
        assert!(b.step_would_overrun());
    }
}
