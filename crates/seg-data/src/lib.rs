//! seg-data (L1): the files clinicians and researchers have, in and out.
//!
//! - [`io`]: PNG/TIFF/GIF/JPEG/BMP, NIfTI-1 and DICOM (files and series
//!   folders) into one [`Volume`] type; PNG masks, 16-bit probability maps and
//!   NIfTI volumes out, atomically.
//! - [`volume`]: the `Volume` type, stored-value statistics, size limits.
//! - [`intensity`]: DICOM windowing and presets, ScaleIntensityRange,
//!   z-score, min-max, percentiles, channel choice, CLAHE, gamma;
//!   [`preprocess`]: the serialisable plan applying them.
//! - [`slicing`]: volumes into 2D/2.5D slices and back; [`labelmap`]:
//!   integer label maps, label values ↔ classes, whole-case normalisation,
//!   a case as a stack of planes for multi-class training.
//! - [`spec`]: one [`spec::DatasetSpec`] for every layout, detected from a
//!   folder; [`dataset`]: DRIVE, paired folders, NIfTI pairs, [`synthetic`]
//!   vessels; [`msd`] and [`dataset_json`]: the MSD/nnU-Net layout.
//! - [`sampling`] and [`augment`]: patches, augmentation, parallel batches.
//!
//! seg-data knows nothing of models or training.

pub mod augment;
pub mod check;
pub mod dataset;
pub mod dataset_json;
pub mod error;
pub mod fov;
pub mod intensity;
pub mod io;
pub mod labelmap;
pub mod msd;
pub mod orient;
pub mod patch3d;
pub mod preprocess;
pub mod resample;
pub mod sample;
pub mod sampling;
pub mod slicing;
pub mod spec;
pub mod synthetic;
pub mod volume;

pub use error::{Error, Result};
pub use io::image2d::{read_image, read_mask, Mask};
pub use io::{read_any, FileKind};
pub use preprocess::Preprocess;
pub use sample::Sample;
pub use volume::{Format, Layout, Stats, StoredType, Volume, Window};
