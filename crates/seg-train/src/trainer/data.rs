//! A run's data: DRIVE, paired folders and the synthetic set as images split
//! by image ([`load_data`]), multi-class label maps as slices of cases split
//! by case ([`load_labelled`]).

use super::config::{DataSource, TrainConfig};
use crate::error::{Error, Result};
use seg_data::dataset::{self, DriveSplit};
use seg_data::labelmap::{SlicePlan, Stack};
use seg_data::patch3d::VoxelIndex;
use seg_data::sampling::ClassIndex;
use seg_data::spec::{DatasetKind, DatasetSpec};
use seg_data::Sample;
use std::path::Path;

/// A multi-class run's data: validation cases whole, and the index that
/// balances classes in training batches.
pub struct LabelledData {
    pub plan: SlicePlan,
    pub val: Vec<Stack>,
    pub index: ClassIndex,
    /// 3D training: the training cases whole (their planes are then not
    /// cut into samples) and where each class lies in them.
    pub volumes: Option<(Vec<Stack>, VoxelIndex)>,
}

/// Loads a [`DataSource::Labelled`] dataset: cases split by the seed (whole
/// cases, never slices of one case on both sides), read in parallel, cut
/// into slices.
pub fn load_labelled(
    root: &Path,
    layout: &str,
    slices: &SlicePlan,
    val_count: usize,
    seed: u64,
    volumetric: bool,
) -> Result<(Vec<Sample>, LabelledData)> {
    let kind = DatasetKind::from_name(layout).ok_or_else(|| Error::Setting {
        setting: "data.layout".into(),
        expected: "folders or msd".into(),
        got: layout.into(),
    })?;
    let spec = DatasetSpec::open(kind, root)?;
    let cases: Vec<_> = spec
        .cases()?
        .cases
        .into_iter()
        .filter(|c| c.label.is_some())
        .collect();
    if cases.len() < 2 {
        return Err(Error::TooFewCases {
            found: cases.len(),
            needed: 2,
        });
    }
    let val_count = val_count.clamp(1, cases.len() - 1);
    let (train_cases, val_cases) = dataset::split_cases(&cases, val_count, seed);
    let stacks = |cases: &[seg_data::spec::Case]| -> Result<Vec<Stack>> {
        use rayon::prelude::*;
        crate::plan::read_cases(cases)?
            .par_iter()
            .map(|c| {
                let images: Vec<(&seg_data::Volume, &Path)> =
                    c.images.iter().map(|(v, p)| (v, p.as_path())).collect();
                Ok(Stack::new(
                    &c.id,
                    &images,
                    Some((&c.label.0, &c.label.1)),
                    slices,
                )?)
            })
            .collect()
    };
    let train_stacks = stacks(&train_cases)?;
    let val = stacks(&val_cases)?;
    if volumetric {
        let voxels = VoxelIndex::new(&train_stacks, slices.labels.classes());
        return Ok((
            Vec::new(),
            LabelledData {
                plan: slices.clone(),
                val,
                index: ClassIndex::default(),
                volumes: Some((train_stacks, voxels)),
            },
        ));
    }
    let train: Vec<Sample> = train_stacks
        .iter()
        .flat_map(|s| s.samples(slices.context))
        .collect();
    let index = ClassIndex::new(&train, slices.labels.classes());
    Ok((
        train,
        LabelledData {
            plan: slices.clone(),
            val,
            index,
            volumes: None,
        },
    ))
}

/// Loads the training and validation images of a run (multi-class runs:
/// the validation cases' slices).
pub fn load_data(cfg: &TrainConfig) -> Result<(Vec<Sample>, Vec<Sample>)> {
    let (train, val, labelled) = load(cfg)?;
    Ok(match labelled {
        Some(d) => {
            let val = d
                .val
                .iter()
                .flat_map(|s| s.samples(d.plan.context))
                .collect();
            (train, val)
        }
        None => (train, val),
    })
}

/// Training samples, validation samples (empty for multi-class runs) and a
/// multi-class run's whole validation cases.
pub(super) fn load(cfg: &TrainConfig) -> Result<(Vec<Sample>, Vec<Sample>, Option<LabelledData>)> {
    let all = match &cfg.data {
        DataSource::Labelled {
            root,
            layout,
            slices,
        } => {
            let (train, data) = load_labelled(
                root,
                layout,
                slices,
                cfg.val_count,
                cfg.seed,
                cfg.volumetric.is_some(),
            )?;
            return Ok((train, Vec::new(), Some(data)));
        }
        DataSource::Synthetic(s) => dataset::load_synthetic(s, &cfg.preprocess)?,
        DataSource::Drive { root } => {
            let cases = dataset::drive_cases(root, DriveSplit::Training)?;
            dataset::load_drive(&cases, &cfg.preprocess)?
        }
        DataSource::Folders { root } => {
            let (cases, unpaired) = dataset::paired_cases(root)?;
            for p in unpaired {
                tracing::warn!("unpaired file ignored: {}", p.display());
            }
            dataset::load_paired(&cases, &cfg.preprocess)?
        }
    };
    if all.len() < 2 {
        return Err(Error::TooFewCases {
            found: all.len(),
            needed: 2,
        });
    }
    let val_count = cfg.val_count.clamp(1, all.len() - 1);
    let (train, val) = dataset::split_cases(&all, val_count, cfg.seed);
    Ok((train, val, None))
}
