//! The error type of seg-train.

use std::path::PathBuf;

/// Errors from training, inference and evaluation.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A collective operation of data-parallel training failed.
    #[error("{op}: {reason}")]
    Collective { op: &'static str, reason: String },
    /// Another rank of a data-parallel run failed (its own error is printed
    /// by that rank); this one stopped at the same step.
    #[error(
        "data-parallel training stopped at global step {step}: another rank failed (see its error)"
    )]
    PeerFailed { step: u64 },
    /// Training diverged.
    #[error("training stopped at epoch {epoch}, step {step}: the loss is {value} (not finite); the last good checkpoint is kept at {}", checkpoint.display())]
    NonFiniteLoss {
        epoch: usize,
        step: usize,
        value: f32,
        checkpoint: PathBuf,
    },
    /// The time budget ended before the first training step (data loading
    /// took it, or it is too small for one step and a validation).
    #[error("the time budget of {limit:.0} s was spent before the first training step ({elapsed:.1} s elapsed); give a larger --max-time")]
    BudgetExhausted { limit: f64, elapsed: f64 },
    /// A checkpoint lacks what is needed.
    #[error("{}: {reason}", path.display())]
    Checkpoint { path: PathBuf, reason: String },
    /// A setting training or inference cannot use: which, what it takes,
    /// what it got.
    #[error("{setting} must be {expected}, got {got}")]
    Setting {
        setting: String,
        expected: String,
        got: String,
    },
    /// Too few labelled cases to train and validate.
    #[error("{found} labelled case(s): training needs at least {needed} (one for validation)")]
    TooFewCases { found: usize, needed: usize },
    /// The loss and the network's output channels do not fit together.
    #[error("loss {loss} needs {expected} output channels, the model has {got}")]
    LossOutputs {
        loss: String,
        expected: &'static str,
        got: usize,
    },
    /// An image buffer whose length is not channels × height × width.
    #[error("image buffer of {len} values does not match {channels}x{height}x{width}")]
    BufferSize {
        len: usize,
        channels: usize,
        height: usize,
        width: usize,
    },
    /// An input value that is not a finite number.
    #[error("input value {value} at index {index} is not finite")]
    NonFiniteInput { index: usize, value: f32 },
    /// Saved optimiser state of another shape than its parameter.
    #[error("optimiser state {name} has shape {got:?}, the parameter {expected:?}")]
    StateShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// Saved optimiser state with one moment but not the other.
    #[error("optimiser state has {found} without {missing}")]
    StateIncomplete { found: String, missing: String },
    /// A validation case without a label.
    #[error("validation case {case} has no label")]
    NoLabel { case: String },
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
    /// A label map value that is not a class: labels are integers from 0
    /// to 2^24, whatever type the file stores. `index` counts in the
    /// file's order.
    #[error("{}: value {value} at index {index} is not a label (expected an integer from 0 to 16777216)", path.display())]
    LabelValue {
        path: PathBuf,
        index: usize,
        value: f32,
    },
    /// A label map seg cannot evaluate: the file, which field, what it
    /// must be, what it is.
    #[error("{}: {field} must be {expected}, got {got}", path.display())]
    LabelMap {
        path: PathBuf,
        field: &'static str,
        expected: &'static str,
        got: String,
    },
    /// A predicted label map of another shape than its reference.
    #[error("{} has shape {pred_shape:?} but its reference {} has shape {gt_shape:?}", pred.display(), gt.display())]
    LabelShape {
        pred: PathBuf,
        gt: PathBuf,
        pred_shape: Vec<usize>,
        gt_shape: Vec<usize>,
    },
    /// A predicted label map whose voxel spacing differs from its
    /// reference's by more than 0.1 % (`[z, y, x]`, mm).
    #[error("{} has voxel spacing {pred_spacing:?} mm but its reference {} has {gt_spacing:?} mm", pred.display(), gt.display())]
    LabelSpacing {
        pred: PathBuf,
        gt: PathBuf,
        pred_spacing: Vec<f64>,
        gt_spacing: Vec<f64>,
    },
    /// A network the ONNX export cannot write: which, and why.
    #[error("cannot export {model} to ONNX: {reason}")]
    ExportUnsupported { model: &'static str, reason: String },
    /// The ONNX protobuf (or its metadata) could not be encoded.
    #[error("cannot encode {what} as ONNX: {reason}")]
    OnnxEncode { what: &'static str, reason: String },
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
