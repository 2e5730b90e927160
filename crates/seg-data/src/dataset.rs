//! Datasets: the DRIVE layout, paired folders (images/ + masks/ or labels/
//! matched by stem), NIfTI image/label volume pairs served as slices, and the
//! built-in synthetic vessel set ([`crate::spec`] tells them apart). Loading is parallel (rayon); every sample comes out
//! preprocessed by a [`Preprocess`] plan, channel-planar.

use crate::error::{Error, Result};
use crate::io::image2d::{read_image, read_mask};
use crate::io::{file_kind, nifti, FileKind};
use crate::preprocess::Preprocess;
use crate::sample::Sample;
use crate::slicing;
use crate::synthetic::{self, SyntheticConfig};
use crate::Volume;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which DRIVE split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveSplit {
    Training,
    Test,
}

/// One DRIVE case on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveCase {
    /// Two-digit case number, e.g. `21`.
    pub id: String,
    pub image: PathBuf,
    /// `1st_manual/NN_manual1.gif`, absent for the test split without labels.
    pub label: Option<PathBuf>,
    pub mask: Option<PathBuf>,
}

/// A file's stem, ignoring a `.gz` suffix (`scan.nii.gz` → `scan`,
/// `21_training.tif` → `21_training`).
pub fn file_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    Path::new(name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The case ID of a file: its stem up to the first `_` (DRIVE's `21_training`
/// → `21`), else the whole stem.
pub fn case_id(path: &Path) -> String {
    let stem = file_stem(path);
    match stem.split_once('_') {
        Some((id, _)) if !id.is_empty() => id.to_string(),
        _ => stem,
    }
}

/// The non-hidden entries of `dir` that are files (`dirs` false) or folders,
/// sorted.
fn entries_in(dir: &Path, dirs: bool) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            (if dirs { p.is_dir() } else { p.is_file() })
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    v.sort();
    Ok(v)
}

pub(crate) fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    entries_in(dir, false)
}

/// The non-hidden folders of `dir` (cases stored as DICOM series).
fn series_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    entries_in(dir, true)
}

/// Finds the DRIVE split folder: `root/training` (or `root/DRIVE/training`).
fn drive_split_dir(root: &Path, split: DriveSplit) -> Result<PathBuf> {
    let name = match split {
        DriveSplit::Training => "training",
        DriveSplit::Test => "test",
    };
    for cand in [root.join(name), root.join("DRIVE").join(name)] {
        if cand.join("images").is_dir() {
            return Ok(cand);
        }
    }
    if root.join("images").is_dir() {
        return Ok(root.to_path_buf());
    }
    Err(Error::NoDriveSplit {
        root: root.to_path_buf(),
        split: name,
    })
}

/// Lists the cases of a DRIVE split: `images/NN_<split>.tif` ↔
/// `1st_manual/NN_manual1.gif` ↔ `mask/NN_<split>_mask.gif`. A training case
/// without its label is an error; test labels are optional.
pub fn drive_cases(root: &Path, split: DriveSplit) -> Result<Vec<DriveCase>> {
    let dir = drive_split_dir(root, split)?;
    let by_id = |sub: &str| -> Result<BTreeMap<String, PathBuf>> {
        let d = dir.join(sub);
        if !d.is_dir() {
            return Ok(BTreeMap::new());
        }
        Ok(files_in(&d)?
            .into_iter()
            .filter(|p| file_kind(p) == Some(FileKind::Image))
            .map(|p| (case_id(&p), p))
            .collect())
    };
    let images = by_id("images")?;
    let labels = by_id("1st_manual")?;
    let masks = by_id("mask")?;
    if images.is_empty() {
        return Err(Error::NoCases {
            dir: dir.join("images"),
        });
    }
    let mut cases = Vec::new();
    for (id, image) in images {
        let label = labels.get(&id).cloned();
        if split == DriveSplit::Training && label.is_none() {
            return Err(Error::UnpairedCase {
                case: id.clone(),
                found: image.clone(),
                what: "label".into(),
                expected: dir.join("1st_manual").join(format!("{id}_manual1.gif")),
            });
        }
        cases.push(DriveCase {
            id: id.clone(),
            image,
            label,
            mask: masks.get(&id).cloned(),
        });
    }
    Ok(cases)
}

fn load_case(
    id: &str,
    image: &Path,
    label: Option<&Path>,
    fov: Option<&Path>,
    plan: &Preprocess,
) -> Result<Sample> {
    let vol = read_image(image)?;
    let (h, w) = (vol.shape[0], vol.shape[1]);
    let check = |m: &crate::Mask, p: &Path| -> Result<()> {
        if (m.height, m.width) != (h, w) {
            return Err(Error::ShapeMismatch {
                what: format!("{} against its image {}", p.display(), image.display()),
                a: vec![m.height, m.width],
                b: vec![h, w],
            });
        }
        Ok(())
    };
    let fov = match fov {
        Some(p) => {
            let m = read_mask(p)?;
            check(&m, p)?;
            Some(m.data)
        }
        None => None,
    };
    let label = match label {
        Some(p) => {
            let m = read_mask(p)?;
            check(&m, p)?;
            Some(m.data)
        }
        None => None,
    };
    let (img, channels) = plan
        .apply_image(&vol, fov.as_deref())
        .map_err(|e| match e {
            e @ (Error::NonFinite { .. }
            | Error::NoFiniteValue { .. }
            | Error::Shape { .. }
            | Error::Setting { .. }) => Error::InFile {
                path: image.to_path_buf(),
                error: Box::new(e),
            },
            other => other,
        })?;
    let s = Sample {
        id: id.to_string(),
        image: img,
        channels,
        height: h,
        width: w,
        label,
        fov,
    };
    s.validate()?;
    Ok(s)
}

/// Loads DRIVE cases (in parallel), preprocessed.
pub fn load_drive(cases: &[DriveCase], plan: &Preprocess) -> Result<Vec<Sample>> {
    cases
        .par_iter()
        .map(|c| load_case(&c.id, &c.image, c.label.as_deref(), c.mask.as_deref(), plan))
        .collect()
}

/// A paired-folder case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairedCase {
    pub id: String,
    pub image: PathBuf,
    pub label: Option<PathBuf>,
    pub fov: Option<PathBuf>,
}

/// Pairs `root/images/*` with `root/masks/*` (or, without `masks/`,
/// `root/labels/*`) and optional `root/fov/*` by file stem; returns the pairs
/// and the files left unpaired.
pub fn paired_cases(root: &Path) -> Result<(Vec<PairedCase>, Vec<PathBuf>)> {
    let stem = |p: &Path| file_stem(p);
    let list = |sub: &str| -> Result<BTreeMap<String, PathBuf>> {
        let d = root.join(sub);
        if !d.is_dir() {
            return Ok(BTreeMap::new());
        }
        Ok(files_in(&d)?
            .into_iter()
            .filter(|p| file_kind(p).is_some())
            .map(|p| (stem(&p), p))
            .collect())
    };
    let mut images = list("images")?;
    // a folder in images/ is a case stored as a DICOM series
    for d in series_dirs(&root.join("images"))? {
        let name = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        images.entry(name).or_insert(d);
    }
    if images.is_empty() {
        return Err(Error::NoCases {
            dir: root.join("images"),
        });
    }
    let labels = if root.join("masks").is_dir() {
        "masks"
    } else {
        "labels"
    };
    let mut masks = list(labels)?;
    let mut fovs = list("fov")?;
    let mut cases = Vec::new();
    let mut unpaired = Vec::new();
    for (id, image) in images {
        let label = masks.remove(&id);
        if label.is_none() {
            unpaired.push(image.clone());
        }
        cases.push(PairedCase {
            fov: fovs.remove(&id),
            id,
            image,
            label,
        });
    }
    unpaired.extend(masks.into_values());
    unpaired.extend(fovs.into_values());
    Ok((cases, unpaired))
}

/// Loads paired-folder cases that have labels (in parallel), preprocessed.
pub fn load_paired(cases: &[PairedCase], plan: &Preprocess) -> Result<Vec<Sample>> {
    cases
        .par_iter()
        .filter(|c| c.label.is_some())
        .map(|c| load_case(&c.id, &c.image, c.label.as_deref(), c.fov.as_deref(), plan))
        .collect()
}

/// The synthetic set, preprocessed (its images are RGB in [0, 1]).
pub fn load_synthetic(cfg: &SyntheticConfig, plan: &Preprocess) -> Result<Vec<Sample>> {
    (0..cfg.count)
        .into_par_iter()
        .map(|i| {
            let s = synthetic::generate(cfg, i);
            let n = s.height * s.width;
            let mut hwc = vec![0f32; s.image.len()];
            for p in 0..n {
                for c in 0..s.channels {
                    hwc[p * s.channels + c] = s.image[c * n + p];
                }
            }
            let (image, channels) =
                plan.apply_unit(&hwc, s.height, s.width, s.channels, s.fov.as_deref())?;
            Ok(Sample {
                image,
                channels,
                ..s
            })
        })
        .collect()
}

/// NIfTI image/label volumes (`root/images/X.nii[.gz]` ↔ `root/labels/X.nii[.gz]`)
/// served as 2D slices along `axis` with `context` neighbours as channels.
/// Slices are `case_id#k`. Labels: any non-zero voxel is foreground.
pub fn load_nifti_slices(
    root: &Path,
    axis: usize,
    context: usize,
    plan: &Preprocess,
) -> Result<Vec<Sample>> {
    let (cases, _) = paired_cases_named(root, "images", "labels")?;
    let per_case: Vec<Vec<Sample>> = cases
        .par_iter()
        .map(|(id, img_path, lab_path)| -> Result<Vec<Sample>> {
            let img = nifti::read_nifti(img_path)?;
            let lab = nifti::read_nifti(lab_path)?;
            if img.shape != lab.shape {
                return Err(Error::ShapeMismatch {
                    what: format!("{} against {}", lab_path.display(), img_path.display()),
                    a: lab.shape,
                    b: img.shape,
                });
            }
            let unit = Volume {
                values: plan.to_unit(&img.values, img.stored, img.format, false)?,
                ..img
            };
            let n = slicing::slice_count(&unit, axis)?;
            (0..n)
                .map(|k| {
                    let (vals, (h, w)) = slicing::slice(&unit, axis, k, context)?;
                    let (lv, _) = slicing::slice(&lab, axis, k, 0)?;
                    let ch = 2 * context + 1;
                    let mut hwc = vec![0f32; vals.len()];
                    for p in 0..h * w {
                        for c in 0..ch {
                            hwc[p * ch + c] = vals[c * h * w + p];
                        }
                    }
                    let plan_all = Preprocess {
                        channels: crate::intensity::ChannelChoice::All,
                        ..plan.clone()
                    };
                    let (image, channels) = plan_all.apply_unit(&hwc, h, w, ch, None)?;
                    Ok(Sample {
                        id: format!("{id}#{k}"),
                        image,
                        channels,
                        height: h,
                        width: w,
                        label: Some(lv.iter().map(|&v| (v != 0.0) as u8).collect()),
                        fov: None,
                    })
                })
                .collect()
        })
        .collect::<Result<_>>()?;
    Ok(per_case.into_iter().flatten().collect())
}

/// (case id, image path, label path).
type NamedPair = (String, PathBuf, PathBuf);

fn paired_cases_named(root: &Path, a: &str, b: &str) -> Result<(Vec<NamedPair>, Vec<PathBuf>)> {
    let stem = |p: &Path| -> String {
        let n = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        n.trim_end_matches(".gz")
            .trim_end_matches(".nii")
            .to_string()
    };
    let list = |sub: &str| -> Result<BTreeMap<String, PathBuf>> {
        Ok(files_in(&root.join(sub))?
            .into_iter()
            .filter(|p| file_kind(p) == Some(FileKind::Nifti))
            .map(|p| (stem(&p), p))
            .collect())
    };
    let imgs = list(a)?;
    let mut labs = list(b)?;
    let mut out = Vec::new();
    let mut unpaired = Vec::new();
    for (id, p) in imgs {
        match labs.remove(&id) {
            Some(l) => out.push((id, p, l)),
            None => unpaired.push(p),
        }
    }
    unpaired.extend(labs.into_values());
    Ok((out, unpaired))
}

/// A seeded split of cases into training and validation by image.
pub fn split_cases<T: Clone>(items: &[T], val_count: usize, seed: u64) -> (Vec<T>, Vec<T>) {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut idx: Vec<usize> = (0..items.len()).collect();
    idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let k = val_count.min(items.len());
    let mut val: Vec<usize> = idx[..k].to_vec();
    let mut train: Vec<usize> = idx[k..].to_vec();
    val.sort();
    train.sort();
    (
        train.iter().map(|&i| items[i].clone()).collect(),
        val.iter().map(|&i| items[i].clone()).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_ids_follow_drive_and_plain_stems() {
        assert_eq!(case_id(Path::new("a/21_training.tif")), "21");
        assert_eq!(case_id(Path::new("01_test_mask.gif")), "01");
        assert_eq!(case_id(Path::new("scan.nii.gz")), "scan");
        assert_eq!(case_id(Path::new("liver.png")), "liver");
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        let items: Vec<u32> = (0..20).collect();
        let (t, v) = split_cases(&items, 4, 7);
        assert_eq!((t.len(), v.len()), (16, 4));
        assert!(v.iter().all(|x| !t.contains(x)));
        assert_eq!(split_cases(&items, 4, 7), (t, v.clone()));
        assert_ne!(split_cases(&items, 4, 8).1, v);
    }

    #[test]
    fn paired_folders_report_unpaired_and_refuse_mismatched_sizes() {
        let d = std::env::temp_dir().join(format!("seg-paired-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        for sub in ["images", "masks"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        use crate::io::image2d::write_png_u8;
        write_png_u8(&d.join("images/a.png"), 4, 4, 3, &[100; 48]).unwrap();
        write_png_u8(
            &d.join("masks/a.png"),
            4,
            4,
            1,
            &[0, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255],
        )
        .unwrap();
        write_png_u8(&d.join("images/b.png"), 4, 4, 3, &[50; 48]).unwrap();
        write_png_u8(&d.join("masks/c.png"), 4, 4, 1, &[0; 16]).unwrap();
        let (cases, unpaired) = paired_cases(&d).unwrap();
        assert_eq!(cases.len(), 2);
        assert_eq!(unpaired.len(), 2, "{unpaired:?}");
        let plan = Preprocess {
            clahe: None,
            normalise: crate::preprocess::Normalise::None,
            ..Preprocess::fundus()
        };
        let s = load_paired(&cases, &plan).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].label.as_ref().unwrap().iter().sum::<u8>(), 2);
        assert!((s[0].image[0] - 100.0 / 255.0).abs() < 1e-6);
        write_png_u8(&d.join("masks/b.png"), 2, 2, 1, &[0; 4]).unwrap();
        let (cases, _) = paired_cases(&d).unwrap();
        let err = load_paired(&cases, &plan).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn nifti_pairs_become_labelled_slices_with_context() {
        let d = std::env::temp_dir().join(format!("seg-niipairs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        for sub in ["images", "labels"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let eye = [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let dims = [6usize, 5, 4];
        let img: Vec<f32> = (0..120).map(|i| (i % 17) as f32 * 10.0 - 50.0).collect();
        let lab: Vec<f32> = (0..120)
            .map(|i| ((i / 30) == 2 && i % 3 == 0) as u8 as f32)
            .collect();
        nifti::write_nifti(&d.join("images/case1.nii.gz"), &dims, &img, &eye).unwrap();
        nifti::write_nifti(&d.join("labels/case1.nii.gz"), &dims, &lab, &eye).unwrap();
        let plan = Preprocess {
            clahe: None,
            normalise: crate::preprocess::Normalise::None,
            ..Preprocess::fundus()
        };
        let s = load_nifti_slices(&d, 2, 1, &plan).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[2].id, "case1#2");
        assert_eq!((s[2].channels, s[2].height, s[2].width), (3, 6, 5));
        // labels only on slice 2
        let fg: Vec<usize> = s
            .iter()
            .map(|x| {
                x.label
                    .as_ref()
                    .unwrap()
                    .iter()
                    .filter(|&&v| v == 1)
                    .count()
            })
            .collect();
        assert_eq!(fg, vec![0, 0, 10, 0]);
        // channel 1 of slice k is slice k itself (channels 0 and 2 its
        // neighbours), min-max scaled over the volume; pixel (r, c) of a slice
        // along z is voxel (x = r, y = c), i.e. index r + 6c + 30k
        let (lo, hi) = (-50.0f32, 110.0f32);
        for (ch, k) in [(0usize, 1usize), (1, 2), (2, 3)] {
            for (r, c) in [(0usize, 0usize), (3, 2), (5, 4)] {
                let got = s[2].image[ch * 30 + r * 5 + c];
                let want = (img[r + 6 * c + 30 * k] - lo) / (hi - lo);
                assert!(
                    (got - want).abs() < 1e-5,
                    "channel {ch} ({r},{c}) {got} vs {want}"
                );
            }
        }
        // a label volume of another shape is refused
        nifti::write_nifti(&d.join("labels/case1.nii.gz"), &[6, 5, 3], &lab[..90], &eye).unwrap();
        assert!(matches!(
            load_nifti_slices(&d, 2, 0, &plan),
            Err(Error::ShapeMismatch { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
