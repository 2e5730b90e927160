//! One type for every dataset seg reads: [`DatasetSpec`], found in a folder
//! by [`DatasetSpec::detect`] or named by [`DatasetKind`] (`--dataset`), and
//! listed as [`Case`]s. The layouts:
//!
//! - DRIVE: `training/images` + `1st_manual` + `mask` (also under `DRIVE/`,
//!   or a split folder itself), paired by the two-digit case number;
//! - paired folders: `images/` + `masks/` or `labels/` [+ `fov/`], paired by
//!   file stem;
//! - MSD / nnU-Net: `imagesTr/` + `labelsTr/` [+ `imagesTs/`] [+ `dataset.json`]
//!   ([`crate::msd`]);
//! - the built-in synthetic vessel set (no folder).

use crate::dataset::{case_id, drive_cases, files_in, paired_cases, DriveSplit};
use crate::error::{Error, Result};
use crate::io::{file_kind, FileKind};
use crate::msd::MsdDataset;
use crate::synthetic::SyntheticConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The dataset layouts, by their `--dataset` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetKind {
    Drive,
    Folders,
    Msd,
    Synthetic,
}

impl DatasetKind {
    /// Every kind, in the order [`DatasetSpec::detect`] tries the folder ones.
    pub const ALL: [DatasetKind; 4] = [Self::Drive, Self::Msd, Self::Folders, Self::Synthetic];
    /// The `--dataset` names.
    pub const NAMES: [&'static str; 4] = ["drive", "folders", "msd", "synthetic"];

    /// The `--dataset` name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Drive => "drive",
            Self::Folders => "folders",
            Self::Msd => "msd",
            Self::Synthetic => "synthetic",
        }
    }

    /// The kind a `--dataset` name stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// What the layout looks like on disk.
    pub fn layout(self) -> &'static str {
        match self {
            Self::Drive => "DRIVE (training/images/, DRIVE/training/images/ or a split folder with 1st_manual/)",
            Self::Folders => "paired folders (images/ with masks/ or labels/, optional fov/)",
            Self::Msd => "MSD/nnU-Net (imagesTr/ with labelsTr/, optional imagesTs/ and dataset.json)",
            Self::Synthetic => "the built-in synthetic set (no folder)",
        }
    }
}

/// A dataset: its layout and where it is.
#[derive(Debug, Clone, PartialEq)]
pub enum DatasetSpec {
    /// The DRIVE layout (training split) under `root`.
    Drive { root: PathBuf },
    /// `root/images` + `root/masks` or `root/labels` (+ optional `root/fov`).
    Folders { root: PathBuf },
    /// The MSD / nnU-Net layout.
    Msd(MsdDataset),
    /// The built-in synthetic vessel set.
    Synthetic(SyntheticConfig),
}

/// One case of a dataset on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub id: String,
    /// The image file(s): one per channel for nnU-Net channel files, else one.
    pub images: Vec<PathBuf>,
    pub label: Option<PathBuf>,
    /// Field-of-view mask (DRIVE `mask/`, paired folders' `fov/`).
    pub fov: Option<PathBuf>,
}

/// The cases of a dataset and the files it could not pair (paired folders).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CaseList {
    pub cases: Vec<Case>,
    pub unpaired: Vec<PathBuf>,
}

fn is_drive(dir: &Path) -> bool {
    dir.join("training/images").is_dir()
        || dir.join("DRIVE/training/images").is_dir()
        || dir.join("1st_manual").is_dir()
}

fn is_folders(dir: &Path) -> bool {
    dir.join("images").is_dir() && (dir.join("masks").is_dir() || dir.join("labels").is_dir())
}

impl DatasetSpec {
    /// The layout of `dir`: DRIVE, then MSD/nnU-Net, then paired folders.
    /// A folder with none of them is an [`Error::NoLayout`] that lists what
    /// was looked for and what the folder holds.
    pub fn detect(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
            ));
        }
        if is_drive(dir) {
            Ok(Self::Drive {
                root: dir.to_path_buf(),
            })
        } else if dir.join("imagesTr").is_dir() {
            Ok(Self::Msd(MsdDataset::open(dir)?))
        } else if is_folders(dir) {
            Ok(Self::Folders {
                root: dir.to_path_buf(),
            })
        } else {
            Err(no_layout(
                dir,
                vec![DatasetKind::Drive, DatasetKind::Msd, DatasetKind::Folders],
            ))
        }
    }

    /// The dataset of layout `kind` at `dir` (`--dataset`). DRIVE and paired
    /// folders are checked when their cases are listed; an MSD folder is
    /// opened (and its dataset.json read) here. `dir` is unused for the
    /// synthetic set.
    pub fn open(kind: DatasetKind, dir: &Path) -> Result<Self> {
        Ok(match kind {
            DatasetKind::Drive => Self::Drive {
                root: dir.to_path_buf(),
            },
            DatasetKind::Folders => Self::Folders {
                root: dir.to_path_buf(),
            },
            DatasetKind::Msd => Self::Msd(MsdDataset::open(dir)?),
            DatasetKind::Synthetic => Self::Synthetic(SyntheticConfig::default()),
        })
    }

    pub fn kind(&self) -> DatasetKind {
        match self {
            Self::Drive { .. } => DatasetKind::Drive,
            Self::Folders { .. } => DatasetKind::Folders,
            Self::Msd(_) => DatasetKind::Msd,
            Self::Synthetic(_) => DatasetKind::Synthetic,
        }
    }

    /// The dataset folder (none for the synthetic set).
    pub fn root(&self) -> Option<&Path> {
        match self {
            Self::Drive { root } | Self::Folders { root } => Some(root),
            Self::Msd(m) => Some(&m.root),
            Self::Synthetic(_) => None,
        }
    }

    /// The labelled (training) cases on disk: DRIVE's training split (every
    /// case has its label), paired folders (cases without a label are kept,
    /// with `label: None`, and stray masks are listed as unpaired), MSD's
    /// `imagesTr` ↔ `labelsTr` (every case has its label). The synthetic set
    /// has no files: an error.
    pub fn cases(&self) -> Result<CaseList> {
        match self {
            Self::Drive { root } => Ok(CaseList {
                cases: drive_cases(root, DriveSplit::Training)?
                    .into_iter()
                    .map(|c| Case {
                        id: c.id,
                        images: vec![c.image],
                        label: c.label,
                        fov: c.mask,
                    })
                    .collect(),
                unpaired: Vec::new(),
            }),
            Self::Folders { root } => {
                let (cases, unpaired) = paired_cases(root)?;
                Ok(CaseList {
                    cases: cases
                        .into_iter()
                        .map(|c| Case {
                            id: c.id,
                            images: vec![c.image],
                            label: c.label,
                            fov: c.fov,
                        })
                        .collect(),
                    unpaired,
                })
            }
            Self::Msd(m) => Ok(CaseList {
                cases: m
                    .training_cases()?
                    .into_iter()
                    .map(|c| Case {
                        id: c.id,
                        images: c.images,
                        label: c.label,
                        fov: None,
                    })
                    .collect(),
                unpaired: Vec::new(),
            }),
            Self::Synthetic(_) => Err(Error::GeneratedDataset),
        }
    }
}

/// The files of `dir` of `kind`, keyed by [`case_id`] (the stem up to its
/// first `_`); two files with one ID are an [`Error::DuplicateCase`].
pub fn files_by_case(dir: &Path, kind: FileKind) -> Result<BTreeMap<String, PathBuf>> {
    let mut m: BTreeMap<String, PathBuf> = BTreeMap::new();
    for p in files_in(dir)? {
        if file_kind(&p) != Some(kind) {
            continue;
        }
        let id = case_id(&p);
        if let Some(prev) = m.insert(id.clone(), p.clone()) {
            return Err(Error::DuplicateCase {
                case: id,
                a: prev,
                b: p,
            });
        }
    }
    Ok(m)
}

/// The entries of `dir` as [`Error::NoLayout`] lists them: sorted, folders
/// with a trailing `/`, hidden ones left out.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                if e.path().is_dir() {
                    format!("{name}/")
                } else {
                    name
                }
            })
            .filter(|n| !n.starts_with('.'))
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// The error for a folder with none of the `looked_for` layouts.
pub(crate) fn no_layout(dir: &Path, looked_for: Vec<DatasetKind>) -> Error {
    Error::NoLayout {
        path: dir.to_path_buf(),
        looked_for,
        found: entries(dir),
    }
}

/// [`Error::NoLayout`]'s message.
pub(crate) fn no_layout_message(
    path: &Path,
    looked_for: &[DatasetKind],
    found: &[String],
) -> String {
    const SHOWN: usize = 12;
    let looked: Vec<&str> = looked_for.iter().map(|k| k.layout()).collect();
    let found = if found.is_empty() {
        "nothing (an empty folder)".to_string()
    } else if found.len() > SHOWN {
        format!(
            "{} and {} more",
            found[..SHOWN].join(", "),
            found.len() - SHOWN
        )
    } else {
        found.join(", ")
    };
    format!(
        "{}: no dataset layout recognised; looked for {}; found {found}",
        path.display(),
        looked.join("; ")
    )
}
