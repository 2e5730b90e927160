//! seg-train (L2): what turns a network and data into a trained model.
//!
//! - [`losses`]: BCE (pos_weight), soft Dice, focal, Tversky, BCE+Dice,
//!   Dice+focal, softmax cross-entropy and multi-class Dice — the formulas of
//!   `shared/reference/losses.py`.
//! - [`metrics`]: confusion counts in a FOV, Dice/IoU/sensitivity/
//!   specificity/precision/accuracy, exact AUC-ROC and average precision,
//!   HD95 in physical units; per image, mean and pooled.

pub mod error;
pub mod losses;
pub mod metrics;

pub use error::{Error, Result};
