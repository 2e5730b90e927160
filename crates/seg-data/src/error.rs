//! The error type of seg-data: every variant names the file and the problem.

use std::path::PathBuf;

/// Errors reading, writing or transforming medical images and datasets.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid file of its format.
    #[error("{}: not a valid {format} file: {reason}", path.display())]
    Decode {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    /// The file is valid but uses something seg does not read.
    #[error("{}: unsupported {format} file: {reason}", path.display())]
    Unsupported {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    /// The header claims more elements than the configured limit.
    #[error("{}: {what} of {elements} elements exceeds the limit of {limit} (raise it with SEG_MAX_ELEMENTS if the file is genuine)", path.display())]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        elements: u128,
        limit: u64,
    },
    /// The extension is not one seg reads.
    #[error("{}: unknown image format (expected .png, .tif/.tiff, .gif, .jpg/.jpeg, .bmp, .nii, .nii.gz or .dcm)", path.display())]
    UnknownFormat { path: PathBuf },
    /// Two arrays that must agree in shape do not.
    #[error("{what}: shape {a:?} does not match {b:?}")]
    ShapeMismatch {
        what: String,
        a: Vec<usize>,
        b: Vec<usize>,
    },
    /// A setting outside what the operation accepts.
    #[error("{setting}: expected {expected}, got {got}")]
    Setting {
        setting: &'static str,
        expected: String,
        got: String,
    },
    /// A value that must be a finite number is not.
    #[error("{what}: value {value} at index {index} is not finite")]
    NonFinite {
        what: String,
        index: usize,
        value: f32,
    },
    /// An operation found no finite value to compute its statistics from.
    #[error("{operation}: no finite value{}", if *masked { " inside the mask" } else { "" })]
    NoFiniteValue {
        operation: &'static str,
        masked: bool,
    },
    /// Data of a shape the operation does not take.
    #[error("{what}: expected {expected}, got shape {got:?}")]
    Shape {
        what: &'static str,
        expected: &'static str,
        got: Vec<usize>,
    },
    /// A collection that must not be empty is.
    #[error("{what}: empty")]
    Empty { what: &'static str },
    /// A value to write is outside what the format stores.
    #[error("{}: {what} {value} at index {index} is outside {range}", path.display())]
    ValueOutOfRange {
        path: PathBuf,
        what: &'static str,
        index: usize,
        value: f32,
        range: &'static str,
    },
    /// The DRIVE split folder is not under the root.
    #[error("{}: no DRIVE {split}/images folder here", root.display())]
    NoDriveSplit { root: PathBuf, split: &'static str },
    /// A problem with one file: the file and the cause (whose text is part
    /// of the message, so it is not repeated as `source()`).
    #[error("{}: {error}", path.display())]
    InFile { path: PathBuf, error: Box<Error> },
    /// A label value that is not an integer.
    #[error("{}: label value {value} at voxel {index} is not an integer", path.display())]
    NonIntegralLabel {
        path: std::path::PathBuf,
        index: usize,
        value: f32,
    },
    /// A label value outside the dataset's label set.
    #[error("{}: label value {value} is not one of the dataset's values {known:?}", path.display())]
    UnknownLabel {
        path: std::path::PathBuf,
        value: i64,
        known: Vec<i64>,
    },
    /// The built-in synthetic set was asked for files.
    #[error(
        "the built-in synthetic set is generated, not read from files: it has no cases on disk"
    )]
    GeneratedDataset,
    /// A DICOM series folder problem.
    #[error("{}: {reason}", path.display())]
    Series { path: PathBuf, reason: String },
    /// A folder holds none of the dataset layouts looked for.
    #[error("{}", crate::spec::no_layout_message(path, looked_for, found))]
    NoLayout {
        path: PathBuf,
        looked_for: Vec<crate::spec::DatasetKind>,
        /// The folder's entries (sub-folders end in `/`), as listed.
        found: Vec<String>,
    },
    /// A case's file has no partner: an image without its label, a label
    /// without its image, a channel file without the case's other channels.
    #[error("case {case}: {} has no {what} (expected {})", found.display(), expected.display())]
    UnpairedCase {
        case: String,
        found: PathBuf,
        what: String,
        /// The missing file.
        expected: PathBuf,
    },
    /// Two files of one folder have the same case ID.
    #[error("{} and {} have the same case ID {case}", a.display(), b.display())]
    DuplicateCase {
        case: String,
        a: PathBuf,
        b: PathBuf,
    },
    /// A dataset folder holds no image files.
    #[error("{}: no image files", dir.display())]
    NoCases { dir: PathBuf },
    /// The dataset is valid, but seg cannot do this with it yet.
    #[error("{}: {layout} dataset {name:?}: {what} is not supported yet", path.display())]
    NotSupportedYet {
        path: PathBuf,
        layout: &'static str,
        name: String,
        what: String,
    },
    /// An error from the tensor library.
    #[error(transparent)]
    Core(#[from] seg_core::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn decode(
        path: impl Into<PathBuf>,
        format: &'static str,
        reason: impl ToString,
    ) -> Self {
        Self::Decode {
            path: path.into(),
            format,
            reason: reason.to_string(),
        }
    }
}

impl From<seg_core::candle::Error> for Error {
    fn from(e: seg_core::candle::Error) -> Self {
        Self::Core(seg_core::Error::from(e))
    }
}

/// seg-data's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
