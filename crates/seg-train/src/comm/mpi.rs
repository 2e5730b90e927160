//! [`Comm`] over MPI (Open MPI, MPICH): `mpirun -np N seg-cli ...`.

use super::Comm;
use crate::error::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::environment::{Threading, Universe};
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

/// MPI, initialised for this process ([`MpiRuntime::init`]); dropping it
/// finalises MPI, after every [`Mpi`] is done (every rank must get there).
pub struct MpiRuntime {
    _universe: Universe,
}

impl MpiRuntime {
    /// Whether this process was started by an MPI launcher (`mpirun`,
    /// `mpiexec`, `srun`): the environment variables they set.
    pub fn launched() -> bool {
        [
            "OMPI_COMM_WORLD_SIZE",
            "PMI_SIZE",
            "PMIX_RANK",
            "MV2_COMM_WORLD_SIZE",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
    }

    /// Initialises MPI (once per process) for calls from any one thread at
    /// a time (`MPI_THREAD_SERIALIZED`): synchronised BatchNorm sums from
    /// the worker thread that runs a training step.
    pub fn init() -> Result<Self> {
        let (universe, level) =
            mpi::initialize_with_threading(Threading::Serialized).ok_or(Error::Collective {
                op: "MPI_Init_thread",
                reason: "MPI is already initialised in this process".into(),
            })?;
        if level < Threading::Serialized {
            tracing::warn!(
                "this MPI library gives thread level {level:?} (asked for Serialized): --sync-bn calls it from a worker thread"
            );
        }
        Ok(Self {
            _universe: universe,
        })
    }

    /// The world's ranks, as a [`Comm`].
    pub fn world(&self) -> Mpi {
        Mpi::world()
    }

    /// Ends every rank of the job with `code` (MPI_Abort): the way out
    /// after an error the other ranks cannot learn of through a collective.
    pub fn abort(&self, code: i32) -> ! {
        SimpleCommunicator::world().abort(code)
    }
}

/// The world communicator of an initialised [`MpiRuntime`].
pub struct Mpi {
    world: SimpleCommunicator,
}

impl Mpi {
    /// The world's ranks; an [`MpiRuntime`] must be alive (initialised and
    /// not yet dropped) while this is used.
    pub fn world() -> Self {
        Self {
            world: SimpleCommunicator::world(),
        }
    }
}

impl Comm for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn allreduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }
    fn allreduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        sum_f64(&self.world, buf);
        Ok(())
    }
    fn broadcast_f64(&self, buf: &mut [f64], root: usize) -> Result<()> {
        self.world.process_at_rank(root as i32).broadcast_into(buf);
        Ok(())
    }
    fn stat_reducer(&self) -> Option<std::sync::Arc<dyn seg_core::collective::StatReducer>> {
        (self.size() > 1).then(|| {
            std::sync::Arc::new(WorldSum(SimpleCommunicator::world()))
                as std::sync::Arc<dyn seg_core::collective::StatReducer>
        })
    }
}

/// The world's sum for seg-core's synchronised BatchNorm.
struct WorldSum(SimpleCommunicator);

// SAFETY: the communicator is a handle to the world communicator, valid
// from MPI_Init_thread to finalisation (the runtime outlives training). MPI
// is initialised for serialised calls from any thread, and seg makes one
// collective at a time: a training step runs on one thread, and the main
// thread waits for it before its own collectives.
unsafe impl Send for WorldSum {}
// SAFETY: as above; `sum` is the only use and calls are serialised.
unsafe impl Sync for WorldSum {}

impl seg_core::collective::StatReducer for WorldSum {
    fn sum(&self, buf: &mut [f64]) -> seg_core::candle::Result<()> {
        sum_f64(&self.0, buf);
        Ok(())
    }
}

/// `buf` summed element-wise over `world`'s ranks, in place.
fn sum_f64(world: &SimpleCommunicator, buf: &mut [f64]) {
    let send = buf.to_vec();
    world.all_reduce_into(&send[..], buf, SystemOperation::sum());
}
