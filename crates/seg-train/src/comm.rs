//! Collective communication for data-parallel training and prediction: the
//! [`Comm`] trait (rank, size, sum-allreduce, broadcast), the one-process
//! [`Single`], and `Mpi` over MPI (the `mpi` feature, `mpirun -np N`).
//!
//! The training loop ([`crate::trainer::Trainer::with_comm`]) gives rank `r`
//! of `N` the items `r, r + N, ...` of every global batch, sums the loss's
//! batch statistics and the gradients over the ranks, and agrees on every
//! stop (time up, interrupted, an error on any rank) through small
//! allreduces, so all ranks leave the same step. Rank 0 alone validates and
//! writes. A GPU build would put NCCL behind the same trait (one rank per
//! GPU; docs/scaling.md).

#[cfg(feature = "mpi")]
mod mpi;

#[cfg(feature = "mpi")]
pub use self::mpi::{Mpi, MpiRuntime};

use crate::error::Result;
use seg_core::collective::StatReducer;
use std::sync::Arc;

/// The collective operations data-parallel training needs. Every rank must
/// call the same operations in the same order with buffers of the same
/// length.
pub trait Comm {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Element-wise sum over the ranks, in place on every rank.
    fn allreduce_sum_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// Element-wise sum over the ranks, in place on every rank.
    fn allreduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// `root`'s `buf` copied into every rank's.
    fn broadcast_f64(&self, buf: &mut [f64], root: usize) -> Result<()>;
    /// A sum over these ranks that seg-core's layers can call from inside a
    /// pass (synchronised BatchNorm; `seg_core::collective`); `None` for
    /// one process, where there is nothing to sum.
    fn stat_reducer(&self) -> Option<Arc<dyn StatReducer>> {
        None
    }

    /// Rank 0: the one that validates and writes.
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
    /// The indices of `0..n` this rank takes: `rank, rank + size, ...`.
    fn share(&self, n: usize) -> Vec<usize> {
        (self.rank()..n).step_by(self.size().max(1)).collect()
    }
}

/// One process: every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl Comm for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn allreduce_sum_f32(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn allreduce_sum_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast_f64(&self, _buf: &mut [f64], _root: usize) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(usize, usize);
    impl Comm for Fake {
        fn rank(&self) -> usize {
            self.0
        }
        fn size(&self) -> usize {
            self.1
        }
        fn allreduce_sum_f32(&self, _: &mut [f32]) -> Result<()> {
            Ok(())
        }
        fn allreduce_sum_f64(&self, _: &mut [f64]) -> Result<()> {
            Ok(())
        }
        fn broadcast_f64(&self, _: &mut [f64], _: usize) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn shares_are_strided_and_cover_the_batch_once() {
        assert_eq!(Single.share(3), vec![0, 1, 2]);
        assert_eq!(Fake(0, 3).share(8), vec![0, 3, 6]);
        assert_eq!(Fake(1, 3).share(8), vec![1, 4, 7]);
        assert_eq!(Fake(2, 3).share(8), vec![2, 5]);
        let mut all: Vec<usize> = (0..3).flat_map(|r| Fake(r, 3).share(8)).collect();
        all.sort();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
    }
}
