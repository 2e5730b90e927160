//! 3D training end to end on tiny isotropic volumes built here: the plan
//! takes a 3D network (near-isotropic cases one patch covers), trains it on
//! 3D patches, validates whole cases through the 3D sliding window, and
//! predicts a label volume with the source's shape, affine and values; and
//! `--dims`'s override on the same data.

use seg_core::Device;
use seg_data::io::nifti::read_nifti_with_info;
use seg_data::spec::DatasetSpec;
use seg_train::plan::plan_dataset;
use seg_train::segment::Segmenter;
use seg_train::trainer::{Outcome, Silent, Trainer};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

mod common;

fn tmp(name: &str) -> PathBuf {
    common::tmp("volumetric", name)
}

const DIMS: [usize; 3] = [20, 18, 22];

/// Case `k`: a bright ball labelled 1 and a dark block labelled 2 in noise,
/// both moving with `k`.
fn write_case(root: &Path, k: usize) {
    let [nx, ny, nz] = DIMS;
    let (mut img, mut lab) = (Vec::new(), Vec::new());
    let mut seed = 777u64 + k as u64;
    let c = [6.0 + k as f32, 8.0, 9.0 + (k % 3) as f32];
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let noise = ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 30.0;
                let d2 = (x as f32 - c[0]).powi(2)
                    + (y as f32 - c[1]).powi(2)
                    + (z as f32 - c[2]).powi(2);
                let block =
                    (13..18).contains(&x) && (3 + k % 2..12).contains(&y) && (12..19).contains(&z);
                let (v, l) = if d2 <= 16.0 {
                    (300.0, 1.0)
                } else if block {
                    (-100.0, 2.0)
                } else {
                    (100.0, 0.0)
                };
                img.push(v + noise);
                lab.push(l);
            }
        }
    }
    common::write_volume_case(root, k, DIMS, [1.0; 3], &img, &lab);
}

#[test]
fn isotropic_volumes_are_planned_in_3d_trained_and_predicted() {
    let root = tmp("data");
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::create_dir_all(root.join("labels")).unwrap();
    for k in 0..5 {
        write_case(&root, k);
    }
    let spec = DatasetSpec::detect(&root).unwrap();
    let (plan, _) = plan_dataset(&spec).unwrap();
    assert_eq!(plan.dims, 3, "{:#?}", plan.reasons);
    assert_eq!((plan.context, plan.in_channels), (0, 1));
    // depth = the slice axis (z, 22), then rows (x, 20) and columns (y, 18)
    assert_eq!(plan.patch3, Some([24, 24, 24]));
    assert!(plan.reasons.iter().any(|r| r.starts_with("dims 3")));
    // --dims overrides the plan both ways
    let flat = plan.clone().with_dims("2.5", 1).unwrap();
    assert_eq!((flat.dims, flat.context, flat.in_channels), (2, 1, 3));
    assert!(flat
        .train_config(&root, "folders")
        .unwrap()
        .volumetric
        .is_none());
    assert!(plan.clone().with_dims("4", 1).is_err());

    let run = tmp("run");
    let mut cfg = plan.train_config(&root, spec.kind().name()).unwrap();
    assert_eq!(cfg.model.dims(), 3);
    assert_eq!(cfg.sliding_window.roi3, Some([24, 24, 24]));
    cfg.model = cfg.model.with_base(8);
    cfg.epochs = 10;
    cfg.steps_per_epoch = 20;
    cfg.batch = 2;
    cfg.out_dir = run.clone();
    let mut t = Trainer::new(cfg, &Device::Cpu, false).unwrap();
    assert_eq!(t.split_sizes(), (4, 1), "whole cases on both sides");
    let out = t.run(&mut Silent, &AtomicBool::new(false)).unwrap();
    assert_eq!(out, Outcome::Finished);
    let per_class = t
        .state
        .history
        .last()
        .unwrap()
        .val_class_dice
        .clone()
        .unwrap();
    assert_eq!(per_class.len(), 2);
    assert!(
        t.state.best_dice.unwrap() > 0.5,
        "best mean Dice {:?} ({:?})",
        t.state.best_dice,
        t.state
            .history
            .iter()
            .map(|r| (r.train_loss, r.val_class_dice.clone()))
            .collect::<Vec<_>>()
    );

    let seg = Segmenter::open(&run.join("best.safetensors"), &Device::Cpu).unwrap();
    let input = root.join("images/case01.nii.gz");
    let s = seg.segment_file(&input, None).unwrap();
    let written = s.write(&run.join("pred"), "case01").unwrap();
    let (mask, info) = read_nifti_with_info(&written.mask).unwrap();
    assert_eq!(mask.shape, DIMS.to_vec());
    let (_, src) = read_nifti_with_info(&input).unwrap();
    assert_eq!(info.sform_affine, src.sform_affine);
    assert!(mask.values.iter().all(|v| [0.0, 1.0, 2.0].contains(v)));
    // the prediction agrees with the case's label on most voxels
    let (label, _) = read_nifti_with_info(&root.join("labels/case01.nii.gz")).unwrap();
    let agree = mask
        .values
        .iter()
        .zip(&label.values)
        .filter(|(a, b)| a == b)
        .count();
    assert!(
        agree as f64 > 0.9 * label.values.len() as f64,
        "{agree} of {}",
        label.values.len()
    );
}
