//! The ranks of an `mpirun -np N seg-cli train|predict ...` job: with the
//! `mpi` feature and an MPI launcher, MPI is initialised at start
//! ([`init`]) and `train` / `predict` run data-parallel over its world
//! ([`comm`]); otherwise one process ([`seg_train::comm::Single`]).

use seg_train::comm::{Comm, Single};

#[cfg(feature = "mpi")]
static STARTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// MPI for the lifetime of `main` (finalised when dropped).
pub struct Ranks {
    #[cfg(feature = "mpi")]
    runtime: Option<seg_train::comm::MpiRuntime>,
}

/// Initialises MPI when the process runs under an MPI launcher (the `mpi`
/// feature); a build without it runs one process.
pub fn init() -> anyhow::Result<Ranks> {
    #[cfg(feature = "mpi")]
    {
        use seg_train::comm::MpiRuntime;
        let runtime = match MpiRuntime::launched() {
            true => Some(MpiRuntime::init()?),
            false => None,
        };
        let _ = STARTED.set(runtime.is_some());
        Ok(Ranks { runtime })
    }
    #[cfg(not(feature = "mpi"))]
    {
        Ok(Ranks {})
    }
}

impl Ranks {
    /// After an error: ends every rank of a job of more than one (a rank
    /// that merely exited could leave the others waiting in a collective).
    pub fn abort_others(&self, code: i32) {
        #[cfg(feature = "mpi")]
        if let Some(r) = &self.runtime {
            if r.world().size() > 1 {
                r.abort(code);
            }
        }
        let _ = code;
    }
}

/// The ranks this process belongs to: MPI's world under `mpirun` (the
/// `mpi` feature), else one process.
pub fn comm() -> Box<dyn Comm> {
    #[cfg(feature = "mpi")]
    if STARTED.get() == Some(&true) {
        return Box::new(seg_train::comm::Mpi::world());
    }
    Box::new(Single)
}
