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
    /// Segmenting one input failed: the input and the cause. The cause's
    /// text is part of the message, so it is not repeated as `source()`.
    #[error("{}: {error}", path.display())]
    Input { path: PathBuf, error: Box<Error> },
    /// A segmentation input path is neither a file nor a folder.
    #[error("{}: no such file or folder", path.display())]
    NoSuchInput { path: PathBuf },
    /// A segmentation input folder holds no file seg reads.
    #[error("{}: no image, NIfTI or DICOM files", path.display())]
    NoInputFiles { path: PathBuf },
    /// A field-of-view mask of another size than its image.
    #[error("{}FOV {}x{} does not match the image {}x{}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default(), fov.0, fov.1, image.0, image.1)]
    FovSize {
        path: Option<PathBuf>,
        fov: (usize, usize),
        image: (usize, usize),
    },
    /// The preprocessed input has another channel count than the model takes.
    #[error("{got} channel(s) after preprocessing, the model expects {expected}")]
    Channels { got: usize, expected: usize },
    /// A volume seg does not segment (4D NIfTI, colour DICOM, a 2D image
    /// given as a volume).
    #[error("{reason} (shape {shape:?})")]
    UnsupportedVolume {
        reason: &'static str,
        shape: Vec<usize>,
    },
    /// A segmentation setting outside its range.
    #[error("{what} {value} is outside {range}")]
    OutOfRange {
        what: &'static str,
        value: f32,
        range: &'static str,
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
