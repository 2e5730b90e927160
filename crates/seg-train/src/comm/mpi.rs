//! [`Comm`] over MPI (Open MPI, MPICH): `mpirun -np N seg-cli ...`.

use super::Comm;
use crate::error::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
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

    /// Initialises MPI (once per process).
    pub fn init() -> Result<Self> {
        let universe = mpi::initialize().ok_or(Error::Collective {
            op: "MPI_Init",
            reason: "MPI is already initialised in this process".into(),
        })?;
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
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }
    fn broadcast_f64(&self, buf: &mut [f64], root: usize) -> Result<()> {
        self.world.process_at_rank(root as i32).broadcast_into(buf);
        Ok(())
    }
}
