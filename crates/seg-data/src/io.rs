//! Reading and writing files: 2D images ([`image2d`]), NIfTI ([`nifti`]) and
//! DICOM ([`dicom`]), and [`read_any`] which picks the reader by extension.

pub mod dicom;
pub mod image2d;
pub mod nifti;
pub mod overlay;

use crate::error::{Error, Result};
use crate::volume::Volume;
use std::path::Path;

/// The kind of file a path names, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// PNG, TIFF, GIF, JPEG, BMP.
    Image,
    /// `.nii` or `.nii.gz`.
    Nifti,
    /// `.dcm` (or `.dicom`).
    Dicom,
}

/// Classifies a path by extension (case-insensitive).
pub fn file_kind(path: &Path) -> Option<FileKind> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        return Some(FileKind::Nifti);
    }
    let ext = name.rsplit('.').next()?;
    match ext {
        "png" | "tif" | "tiff" | "gif" | "jpg" | "jpeg" | "bmp" => Some(FileKind::Image),
        "dcm" | "dicom" => Some(FileKind::Dicom),
        _ => None,
    }
}

/// Reads any supported file: a 2D image, a NIfTI volume or a DICOM file.
pub fn read_any(path: &Path) -> Result<Volume> {
    match file_kind(path) {
        Some(FileKind::Image) => image2d::read_image(path),
        Some(FileKind::Nifti) => nifti::read_nifti(path),
        Some(FileKind::Dicom) => dicom::read_dicom(path),
        None => Err(Error::UnknownFormat {
            path: path.to_path_buf(),
        }),
    }
}

/// Writes `bytes` atomically (temporary file in the same folder, then rename).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    seg_core::fsutil::atomic_write(path, bytes).map_err(|e| match e {
        seg_core::Error::Io { path, source } => Error::Io { path, source },
        other => Error::Core(other),
    })
}
