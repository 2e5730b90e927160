//! The workspace tasks as a library (the `xtask` binary's commands, and the
//! fetch-drive zip reader that `fuzz/` exercises).

pub mod bench;
pub mod convprof;
pub mod cuda;
pub mod fetch;
pub mod gpudiag;
pub mod layers;
pub mod vendor;
