//! Sums across the processes of a data-parallel run, for the layers whose
//! training-mode arithmetic spans the whole global batch: synchronised
//! BatchNorm (per-channel batch statistics over every rank's items).
//!
//! seg-core names no communication library. The training loop (seg-train,
//! over its `Comm`) installs a [`StatReducer`] on the thread that runs a
//! step ([`scoped`]); BatchNorm's training kernel captures the thread's
//! reducer when it is built and sums its per-channel statistics through it
//! in the forward pass, and the matching sums of its backward pass.
//! [`crate::on_worker`] carries the setting to the worker thread like the
//! precision. Without a reducer (the default) every statistic is the
//! process's own, as in one-process training and PyTorch DDP's default.

use std::cell::RefCell;
use std::sync::Arc;

/// An element-wise sum over the ranks of a run, in place on every rank.
///
/// Every rank must call it the same number of times, in the same order,
/// with buffers of the same length (a collective).
pub trait StatReducer: Send + Sync {
    /// Replaces `buf` by its element-wise sum over the ranks.
    fn sum(&self, buf: &mut [f64]) -> candle_core::Result<()>;
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<dyn StatReducer>>> = const { RefCell::new(None) };
}

/// This thread's reducer (`None` unless [`scoped`]).
pub fn current() -> Option<Arc<dyn StatReducer>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Restores the previous reducer when dropped (see [`scoped`]).
pub struct Restore(Option<Arc<dyn StatReducer>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let before = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = before);
    }
}

/// Sets this thread's reducer until the returned guard is dropped.
#[must_use = "the reducer is restored when the guard is dropped"]
pub fn scoped(r: Option<Arc<dyn StatReducer>>) -> Restore {
    let before = CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), r));
    Restore(before)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Double;
    impl StatReducer for Double {
        fn sum(&self, buf: &mut [f64]) -> candle_core::Result<()> {
            buf.iter_mut().for_each(|v| *v *= 2.0);
            Ok(())
        }
    }

    #[test]
    fn scoped_sets_and_restores_and_on_worker_carries_it() {
        assert!(current().is_none());
        {
            let _g = scoped(Some(Arc::new(Double)));
            let mut b = [1.0, 2.0];
            current().unwrap().sum(&mut b).unwrap();
            assert_eq!(b, [2.0, 4.0]);
            assert!(crate::on_worker(|| current().is_some()));
        }
        assert!(current().is_none());
        assert!(crate::on_worker(|| current().is_none()));
    }
}
