//! The error type of seg-core.

use std::path::PathBuf;

/// Errors raised by seg-core: device choice and weight files.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device string is not one seg understands.
    #[error("unknown device {spec:?}: expected cpu, cuda, cuda:N, metal, metal:N or auto")]
    UnknownDevice { spec: String },
    /// The device names a backend this build does not contain.
    #[error("device {spec:?} needs the {feature} backend, which this build lacks: rebuild with --features {feature}")]
    BackendNotCompiled { spec: String, feature: &'static str },
    /// The backend is compiled in but the device could not be opened.
    #[error("cannot open device {spec:?}: {source}")]
    DeviceInit {
        spec: String,
        #[source]
        source: candle_core::Error,
    },
    /// A weight file lacks a tensor the model needs.
    #[error("{}: missing tensor {name:?} (the model expects shape {expected:?})", path.display())]
    MissingTensor {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
    },
    /// A weight file holds a tensor of the wrong shape.
    #[error("{}: tensor {name:?} has shape {found:?} but the model expects {expected:?}", path.display())]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A weight file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is not a valid safetensors file.
    #[error("{}: not a valid safetensors file: {reason}", path.display())]
    Safetensors { path: PathBuf, reason: String },
    /// A precision name that is not fp32, bf16 or auto.
    #[error("unknown precision {0:?} (expected fp32, bf16 or auto)")]
    UnknownPrecision(String),
    /// bf16 asked for on a CPU without bf16 dot-product instructions.
    #[error(
        "precision bf16: this CPU has no bf16 dot-product instructions ({0}); use fp32 or auto"
    )]
    Bf16Unsupported(String),
    /// An error from the tensor library.
    #[error(transparent)]
    Candle(candle_core::Error),
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Self::Candle(without_backtrace(e))
    }
}

/// Drops the backtrace candle attaches to its errors when `RUST_BACKTRACE`
/// is set, so that messages stay one line.
pub fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        candle_core::Error::Context { inner, context } => candle_core::Error::Context {
            inner: Box::new(without_backtrace(*inner)),
            context,
        },
        e => e,
    }
}

/// seg-core's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
