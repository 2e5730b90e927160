//! seg-train (L2): what turns a network and data into a trained model.
//!
//! - [`losses`]: BCE (pos_weight), soft Dice, focal, Tversky, BCE+Dice,
//!   Dice+focal, softmax cross-entropy and multi-class Dice — the formulas of
//!   `shared/reference/losses.py`.
//! - [`metrics`]: confusion counts in a FOV, Dice/IoU/sensitivity/
//!   specificity/precision/accuracy, exact AUC-ROC and average precision,
//!   HD95 in physical units; per image, mean and pooled.
//! - [`optim`]: Adam, AdamW, SGD (momentum, Nesterov), weight decay, clipping;
//!   [`schedule`]: constant, step, cosine with warm-up, poly, reduce-on-plateau.
//! - [`trainer`]: the training loop; [`checkpoint`]: self-contained model
//!   bundles and resume state; [`infer`]: sliding-window inference;
//!   [`segment`]: files and volumes segmented with a bundle, and written;
//!   [`export`]: a bundle as an ONNX model; [`comm`]: collectives for
//!   data-parallel training (MPI under the `mpi` feature).

pub mod checkpoint;
pub mod comm;
pub mod error;
pub mod eval;
pub mod export;
pub mod infer;
pub mod losses;
pub mod metrics;
pub mod optim;
pub mod plan;
pub mod schedule;
pub mod segment;
pub mod trainer;

pub use error::{Error, Result};
