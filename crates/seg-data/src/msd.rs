//! The MSD / nnU-Net layout: `imagesTr/` + `labelsTr/` [+ `imagesTs/`]
//! [+ `dataset.json`]. Images are either one file per case (MSD:
//! `imagesTr/hippocampus_003.nii.gz`, several modalities as a 4D volume) or
//! one file per channel with a four-digit suffix (nnU-Net:
//! `imagesTr/prostate_00_0000.nii.gz`, `..._0001.nii.gz`); the label is
//! `labelsTr/<case>.<ending>`. Which naming a folder uses is read off the
//! files: suffixes are stripped when every image has one and the stripped
//! names are the ones that match the labels (or dataset.json has nnU-Net v2
//! `channel_names`, or there are no labels to match).

use crate::dataset::file_stem;
use crate::dataset_json::{DatasetJson, JsonStyle};
use crate::error::{Error, Result};
use crate::io::{file_kind, FileKind};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// An MSD / nnU-Net dataset folder, with its `dataset.json` when present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsdDataset {
    pub root: PathBuf,
    pub json: Option<DatasetJson>,
}

/// One case: its image file(s), one per channel for nnU-Net naming (one in
/// all for MSD naming), and its label (absent for `imagesTs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsdCase {
    pub id: String,
    pub images: Vec<PathBuf>,
    pub label: Option<PathBuf>,
}

/// A case's shape from its files: the spatial shape (the first three
/// dimensions) and the channel count (files × 4th dimension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseShape {
    pub spatial: Vec<usize>,
    pub channels: usize,
}

/// `stem` split into the case ID and an nnU-Net channel suffix (`_0000`).
pub fn split_channel(stem: &str) -> Option<(&str, usize)> {
    let (base, ch) = stem.rsplit_once('_')?;
    if base.is_empty() || ch.len() != 4 || !ch.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((base, ch.parse().ok()?))
}

/// The part of a file name after its stem: `.nii.gz`, `.png`.
fn ending(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name[file_stem(path).len().min(name.len())..].to_string()
}

impl MsdDataset {
    /// Opens `root` (which must hold `imagesTr/`), reading `dataset.json` if present.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.join("imagesTr").is_dir() {
            return Err(crate::spec::no_layout(
                root,
                vec![crate::spec::DatasetKind::Msd],
            ));
        }
        let jp = root.join("dataset.json");
        let json = if jp.is_file() {
            Some(DatasetJson::read(&jp)?)
        } else {
            None
        };
        Ok(Self {
            root: root.to_path_buf(),
            json,
        })
    }

    /// The dataset's name: `name` in dataset.json, else the folder name.
    pub fn name(&self) -> String {
        self.json
            .as_ref()
            .and_then(|j| j.name.clone())
            .unwrap_or_else(|| {
                self.root
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| self.root.display().to_string())
            })
    }

    /// Image-like files of `sub` (by `file_ending` when dataset.json names one).
    fn files(&self, sub: &str) -> Result<Vec<PathBuf>> {
        let dir = self.root.join(sub);
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let ending = self.json.as_ref().and_then(|j| j.file_ending.clone());
        Ok(crate::dataset::files_in(&dir)?
            .into_iter()
            .filter(|p| match &ending {
                Some(e) => p.to_string_lossy().ends_with(e.as_str()),
                None => matches!(file_kind(p), Some(FileKind::Nifti | FileKind::Image)),
            })
            .collect())
    }

    /// Whether image names carry nnU-Net channel suffixes.
    fn suffixed(&self, images: &[PathBuf], labels: &BTreeSet<String>) -> bool {
        let stems: Vec<String> = images.iter().map(|p| file_stem(p)).collect();
        if stems.is_empty() || !stems.iter().all(|s| split_channel(s).is_some()) {
            return false;
        }
        if labels.is_empty()
            || self
                .json
                .as_ref()
                .is_some_and(|j| j.style == JsonStyle::NnUnetV2)
        {
            return true;
        }
        let raw = stems.iter().filter(|s| labels.contains(*s)).count();
        let stripped = stems
            .iter()
            .filter(|s| split_channel(s).is_some_and(|(id, _)| labels.contains(id)))
            .count();
        stripped > raw
    }

    /// Groups `images` into cases, checking every case has every channel.
    fn group(&self, sub: &str, images: Vec<PathBuf>, suffixed: bool) -> Result<Vec<MsdCase>> {
        let mut by_case: BTreeMap<String, BTreeMap<usize, PathBuf>> = BTreeMap::new();
        for p in images {
            let stem = file_stem(&p);
            let (id, ch) = match (suffixed, split_channel(&stem)) {
                (true, Some((id, ch))) => (id.to_string(), ch),
                _ => (stem.clone(), 0),
            };
            let files = by_case.entry(id.clone()).or_default();
            if let Some(prev) = files.insert(ch, p.clone()) {
                return Err(Error::DuplicateCase {
                    case: if suffixed {
                        format!("{id} channel {ch}")
                    } else {
                        id
                    },
                    a: prev,
                    b: p,
                });
            }
        }
        let named = self.json.as_ref().map_or(0, |j| j.channels.len());
        let most = by_case
            .values()
            .filter_map(|f| f.keys().last())
            .max()
            .map_or(0, |&m| m + 1);
        let n = if suffixed { named.max(most) } else { 1 };
        let mut cases = Vec::with_capacity(by_case.len());
        for (id, files) in by_case {
            let first = files.values().next().expect("a case has a file").clone();
            if let Some(k) = (0..n).find(|k| !files.contains_key(k)) {
                return Err(Error::UnpairedCase {
                    case: id.clone(),
                    found: first.clone(),
                    what: format!("channel {k}"),
                    expected: self
                        .root
                        .join(sub)
                        .join(format!("{id}_{k:04}{}", ending(&first))),
                });
            }
            cases.push(MsdCase {
                id,
                images: files.into_values().collect(),
                label: None,
            });
        }
        Ok(cases)
    }

    /// The training cases (`imagesTr` ↔ `labelsTr`, by case ID), in ID order.
    /// An image without its label, a label without its image and a case
    /// missing a channel are errors naming the case.
    pub fn training_cases(&self) -> Result<Vec<MsdCase>> {
        let images = self.files("imagesTr")?;
        if images.is_empty() {
            return Err(Error::NoCases {
                dir: self.root.join("imagesTr"),
            });
        }
        let mut labels: BTreeMap<String, PathBuf> = BTreeMap::new();
        for p in self.files("labelsTr")? {
            if let Some(prev) = labels.insert(file_stem(&p), p.clone()) {
                return Err(Error::DuplicateCase {
                    case: file_stem(&p),
                    a: prev,
                    b: p,
                });
            }
        }
        let ids: BTreeSet<String> = labels.keys().cloned().collect();
        let suffixed = self.suffixed(&images, &ids);
        let mut cases = self.group("imagesTr", images, suffixed)?;
        for c in &mut cases {
            match labels.remove(&c.id) {
                Some(l) => c.label = Some(l),
                None => {
                    return Err(Error::UnpairedCase {
                        case: c.id.clone(),
                        found: c.images[0].clone(),
                        what: "label".into(),
                        expected: self.root.join("labelsTr").join(format!(
                            "{}{}",
                            c.id,
                            ending(&c.images[0])
                        )),
                    })
                }
            }
        }
        if let Some((id, l)) = labels.into_iter().next() {
            let suffix = if suffixed { "_0000" } else { "" };
            return Err(Error::UnpairedCase {
                expected: self
                    .root
                    .join("imagesTr")
                    .join(format!("{id}{suffix}{}", ending(&l))),
                case: id,
                found: l,
                what: "image".into(),
            });
        }
        Ok(cases)
    }

    /// The test cases (`imagesTs`, no labels; empty when the folder is
    /// absent), named as the training images are.
    pub fn test_cases(&self) -> Result<Vec<MsdCase>> {
        let images = self.files("imagesTs")?;
        let train = self.files("imagesTr")?;
        let labels: BTreeSet<String> = self
            .files("labelsTr")?
            .iter()
            .map(|p| file_stem(p))
            .collect();
        let suffixed = if train.is_empty() {
            self.suffixed(&images, &BTreeSet::new())
        } else {
            self.suffixed(&train, &labels)
        };
        self.group("imagesTs", images, suffixed)
    }

    /// A case's shape from file headers only (NIfTI) or the decoded image
    /// (2D files), with the label checked against the images: the same
    /// spatial shape, and as many channels as dataset.json names (when it
    /// names any).
    pub fn case_shape(&self, case: &MsdCase) -> Result<CaseShape> {
        let mut spatial: Option<(Vec<usize>, &Path)> = None;
        let mut channels = 0;
        for p in &case.images {
            let (s, c) = case_file_shape(p)?;
            match &spatial {
                Some((first, fp)) if *first != s => {
                    return Err(Error::ShapeMismatch {
                        what: format!("case {}: {} against {}", case.id, p.display(), fp.display()),
                        a: s,
                        b: first.clone(),
                    })
                }
                Some(_) => {}
                None => spatial = Some((s, p)),
            }
            channels += c;
        }
        let (spatial, first) = spatial.ok_or_else(|| Error::NoCases {
            dir: self.root.join("imagesTr"),
        })?;
        if let Some(lp) = &case.label {
            let (ls, lc) = case_file_shape(lp)?;
            if ls != spatial || lc != 1 {
                let mut a = ls;
                if lc != 1 {
                    a.push(lc);
                }
                return Err(Error::ShapeMismatch {
                    what: format!(
                        "case {}: label {} against image {}",
                        case.id,
                        lp.display(),
                        first.display()
                    ),
                    a,
                    b: spatial,
                });
            }
        }
        let named = self.json.as_ref().map_or(0, |j| j.channels.len());
        if named > 0 && named != channels {
            return Err(Error::ShapeMismatch {
                what: format!(
                    "case {}: channels in {} against the channels named in {}",
                    case.id,
                    first.display(),
                    self.root.join("dataset.json").display()
                ),
                a: vec![channels],
                b: vec![named],
            });
        }
        Ok(CaseShape { spatial, channels })
    }
}

/// A file's shape without decoding its voxels where the format allows it:
/// the header dimensions of a NIfTI file; the `[height, width, channels]` of
/// a decoded 2D image.
pub fn file_shape(path: &Path) -> Result<Vec<usize>> {
    if file_kind(path) != Some(FileKind::Nifti) {
        return Ok(crate::io::read_any(path)?.shape);
    }
    let h = ::nifti::NiftiHeader::from_file(path).map_err(|e| Error::decode(path, "NIfTI", e))?;
    let n = h.dim[0];
    if !(1..=7).contains(&n) {
        return Err(Error::decode(
            path,
            "NIfTI",
            format!("dim[0] is {n}, expected 1 to 7"),
        ));
    }
    Ok(h.dim[1..=n as usize].iter().map(|&d| d as usize).collect())
}

/// (spatial shape, channels) of one file of a case: a 2D image's channels
/// are its colour channels, a volume's its 4th dimension.
fn case_file_shape(path: &Path) -> Result<(Vec<usize>, usize)> {
    let shape = file_shape(path)?;
    match (file_kind(path), shape.as_slice()) {
        (Some(FileKind::Image), &[h, w, c]) => Ok((vec![h, w], c)),
        _ => Ok(split_shape(shape)),
    }
}

/// A NIfTI shape as (spatial: up to three dimensions, channels: the 4th
/// dimension or 1); trailing dimensions of 1 beyond the 4th are dropped.
fn split_shape(mut shape: Vec<usize>) -> (Vec<usize>, usize) {
    while shape.len() > 3 && shape.last() == Some(&1) {
        shape.pop();
    }
    if shape.len() > 3 {
        let c = shape[3..].iter().product();
        shape.truncate(3);
        (shape, c)
    } else {
        (shape, 1)
    }
}
