//! The error type of seg-models.

/// Errors from building, running, loading or saving a network.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model name is not in the registry.
    #[error("unknown model {name:?}: expected one of unet, resunet, attention_unet, unetpp")]
    UnknownModel { name: String },
    /// A configuration value is out of range.
    #[error("invalid {model} configuration: {reason}")]
    InvalidConfig { model: &'static str, reason: String },
    /// A configuration could not be parsed.
    #[error("cannot parse model configuration: {0}")]
    ParseConfig(#[from] serde_json::Error),
    /// A weight file holds no model configuration.
    #[error("{path}: no model configuration in the file's metadata (key \"config\")")]
    NoConfig { path: String },
    /// An error from seg-core (weights, devices).
    #[error(transparent)]
    Core(#[from] seg_core::Error),
    /// An error from the tensor library.
    #[error(transparent)]
    Tensor(seg_core::candle::Error),
}

impl From<seg_core::candle::Error> for Error {
    fn from(e: seg_core::candle::Error) -> Self {
        Self::Tensor(seg_core::error::without_backtrace(e))
    }
}

/// seg-models' result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
