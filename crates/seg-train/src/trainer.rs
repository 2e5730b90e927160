//! Training: [`TrainConfig`] (settings, validated before any work), the
//! loop ([`Trainer`]: epochs of sampled patch batches, a seeded validation
//! split by image, early stopping on validation Dice, atomic best/last
//! checkpoints, exact resumption — every random draw is keyed by the seed
//! and the global step — a clear stop on a non-finite loss, and a
//! cooperative stop flag that writes a checkpoint first) and full-image
//! [`validate`] with threshold choice.
//!
//! - `trainer/config.rs`: [`TrainConfig`], [`DataSource`];
//! - `trainer/data.rs`: [`load_data`], [`load_labelled`];
//! - `trainer/run.rs`: [`Trainer`], its records and state, [`Observer`];
//! - `trainer/batch.rs`: a step's batch (all items or a rank's share);
//! - `trainer/parallel.rs`: data-parallel steps over [`crate::comm::Comm`]
//!   ([`Trainer::with_comm`]);
//! - `trainer/save.rs`: [`RunPaths`], the metrics files and the bundles;
//! - `trainer/validate.rs`: [`validate`];
//! - `trainer/budget.rs`: [`TimeBudget`], the wall-clock budget (`max_seconds`);
//! - `trainer/average.rs`: [`WeightAverage`], the moving average of the
//!   weights (`weight_average`);
//! - the checkpoint and resume format: [`crate::checkpoint`].

mod average;
mod batch;
mod budget;
mod config;
mod data;
mod parallel;
mod run;
mod save;
mod validate;

pub use average::WeightAverage;
pub use budget::{horizon, TimeBudget};
pub use config::{DataSource, TrainConfig, Volumetric};
pub use data::{load_data, load_labelled, LabelledData};
pub use run::{EpochRecord, Observer, Outcome, Silent, TrainState, Trainer};
pub use save::RunPaths;
pub use validate::validate;
