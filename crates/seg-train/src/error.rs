//! The error type of seg-train.

use std::path::PathBuf;

/// Errors from training, inference and evaluation.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Training diverged.
    #[error("training stopped at epoch {epoch}, step {step}: the loss is {value} (not finite); the last good checkpoint is kept at {}", checkpoint.display())]
    NonFiniteLoss {
        epoch: usize,
        step: usize,
        value: f32,
        checkpoint: PathBuf,
    },
    /// A checkpoint lacks what is needed.
    #[error("{}: {reason}", path.display())]
    Checkpoint { path: PathBuf, reason: String },
    /// A configuration or argument problem.
    #[error("{0}")]
    Invalid(String),
    /// A file problem.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// From seg-data.
    #[error(transparent)]
    Data(#[from] seg_data::Error),
    /// From seg-models.
    #[error(transparent)]
    Model(#[from] seg_models::Error),
    /// From seg-core.
    #[error(transparent)]
    Core(#[from] seg_core::Error),
}

impl From<seg_core::candle::Error> for Error {
    fn from(e: seg_core::candle::Error) -> Self {
        Self::Core(seg_core::Error::from(e))
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// seg-train's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
