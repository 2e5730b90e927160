//! A step's batch: the items of global batch `step` (all of them, or a
//! data-parallel rank's share) drawn, augmented and turned into the input
//! and target tensors the loss takes.

use super::config::TrainConfig;
use super::data::LabelledData;
use crate::error::Result;
use seg_core::{Device, Tensor};
use seg_data::patch3d::random_batch_3d_items;
use seg_data::sampling::{random_batch_balanced_items, random_batch_items};
use seg_data::Sample;

/// The items `items` of global batch `step` (a data-parallel rank's share,
/// or all of them) as inputs and targets: each patch depends only on (seed,
/// step, its index), so the shares of the ranks make up the one-process batch.
pub(super) fn batch(
    cfg: &TrainConfig,
    train: &[Sample],
    labelled: Option<&LabelledData>,
    device: &Device,
    step: u64,
    items: &[usize],
) -> Result<(Tensor, Tensor)> {
    let volumes = labelled.and_then(|d| d.volumes.as_ref());
    let (x, mut y) = if let (Some(v), Some((stacks, voxels))) = (&cfg.volumetric, volumes) {
        random_batch_3d_items(
            stacks,
            voxels,
            v.patch,
            cfg.sampler.foreground_ratio,
            &v.augment,
            items,
            cfg.seed,
            step,
        )?
        .to_tensors(device)?
    } else {
        let batch = match labelled {
            Some(d) => random_batch_balanced_items(
                train,
                &d.index,
                &cfg.sampler,
                &cfg.augment,
                items,
                cfg.seed,
                step,
            )?,
            None => random_batch_items(train, &cfg.sampler, &cfg.augment, items, cfg.seed, step)?,
        };
        let (x, y, _fov) = batch.to_tensors(device)?;
        (x, y)
    };
    if labelled.is_some() {
        y = one_hot(&y, cfg.model.out_channels())?;
    } else if cfg.loss.is_multiclass() {
        y = Tensor::cat(&[&y.affine(-1.0, 1.0)?, &y], 1)?;
    }
    Ok((x, y))
}

/// Class indices `(N, 1, H, W)` as one-hot `(N, K, H, W)` f32.
fn one_hot(y: &Tensor, k: usize) -> Result<Tensor> {
    // (N, 1, spatial...) → (N, K, spatial...)
    let mut dims = y.dims().to_vec();
    dims[1] = k;
    let mut per_class = vec![1; dims.len()];
    per_class[1] = k;
    let classes = Tensor::arange(0u32, k as u32, y.device())?
        .to_dtype(seg_core::DType::F32)?
        .reshape(per_class)?
        .broadcast_as(dims.as_slice())?;
    Ok(y.broadcast_as(dims.as_slice())?
        .eq(&classes)?
        .to_dtype(seg_core::DType::F32)?)
}
