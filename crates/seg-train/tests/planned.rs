//! The multi-class path end to end on tiny volumes built here: label values
//! discovered and remapped (0/200/500 ↔ classes 0/1/2), the plan from the
//! fingerprint, a short training run, and a prediction written as a label
//! volume with the source's shape, affine and label values. Then the plan of
//! real Hippocampus cases (skipped without ../shared).

use seg_core::Device;
use seg_data::io::nifti::read_nifti_with_info;
use seg_data::labelmap::IntensityNorm;
use seg_data::spec::DatasetSpec;
use seg_train::plan::{plan_dataset, write_plan};
use seg_train::segment::Segmenter;
use seg_train::trainer::{Outcome, Silent, Trainer};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

mod common;

fn tmp(name: &str) -> PathBuf {
    common::tmp("planned", name)
}

use common::shared;

const DIMS: [usize; 3] = [24, 20, 6];
const SPACING: [f64; 3] = [0.8, 0.8, 3.0];

/// Case `k`: a bright box labelled 200 and a dark box labelled 500 on a
/// noisy background, at positions that move with `k`.
fn write_case(root: &Path, k: usize) {
    let [nx, ny, nz] = DIMS;
    let (mut img, mut lab) = (Vec::new(), Vec::new());
    let mut seed = 12345u64 + k as u64;
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let noise = ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 20.0;
                let a = (2 + k..9 + k).contains(&x) && (3..10).contains(&y) && (1..5).contains(&z);
                let b = (14..20).contains(&x) && (8 + k % 3..16).contains(&y) && z >= 2;
                let (v, l) = if a {
                    (300.0, 200.0)
                } else if b {
                    (0.0, 500.0)
                } else {
                    (100.0, 0.0)
                };
                img.push(v + noise);
                lab.push(l);
            }
        }
    }
    common::write_volume_case(root, k, DIMS, SPACING, &img, &lab);
}

#[test]
fn multi_class_volumes_are_planned_trained_and_predicted_as_label_values() {
    let root = tmp("data");
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::create_dir_all(root.join("labels")).unwrap();
    for k in 0..5 {
        write_case(&root, k);
    }
    let spec = DatasetSpec::detect(&root).unwrap();
    let (plan, fp) = plan_dataset(&spec).unwrap();
    assert!(fp.volumes);
    assert_eq!(plan.labels.values, vec![0, 200, 500]);
    assert_eq!(plan.norm, IntensityNorm::ZscoreCase, "not CT: no air");
    assert_eq!(plan.slice_axis, 2, "3.0 mm ≥ 3 × 0.8 mm: slice across z");
    assert_eq!((plan.context, plan.in_channels), (1, 3));
    assert_eq!(plan.patch, 32, "planes 24×20 → 32");
    assert_eq!(plan.val_cases, 1);
    let run = tmp("run");
    write_plan(&run.join("plan.json"), &plan, &fp).unwrap();
    let text = std::fs::read_to_string(run.join("plan.json")).unwrap();
    assert!(text.contains("\"slice_axis\": 2") && text.contains("\"reasons\""));

    let mut cfg = plan.train_config(&root, spec.kind().name()).unwrap();
    cfg.model = cfg.model.with_base(8);
    cfg.epochs = 10;
    cfg.steps_per_epoch = 20;
    cfg.batch = 4;
    cfg.out_dir = run.clone();
    let mut t = Trainer::new(cfg, &Device::Cpu, false).unwrap();
    assert_eq!(
        t.split_sizes(),
        (4 * DIMS[2], 1),
        "slices of 4 cases; 1 case"
    );
    let out = t.run(&mut Silent, &AtomicBool::new(false)).unwrap();
    assert_eq!(out, Outcome::Finished);
    let last = t.state.history.last().unwrap();
    let per_class = last.val_class_dice.as_ref().expect("per-class Dice");
    assert_eq!(per_class.len(), 2);
    // boxes of distinct brightness: a tiny network separates them
    assert!(
        t.state.best_dice.unwrap() > 0.5,
        "best mean Dice {:?} (history {:?})",
        t.state.best_dice,
        t.state
            .history
            .iter()
            .map(|r| r.val_class_dice.clone())
            .collect::<Vec<_>>()
    );

    let seg = Segmenter::open(&run.join("best.safetensors"), &Device::Cpu).unwrap();
    let input = root.join("images/case01.nii.gz");
    let s = seg.segment_file(&input, None).unwrap();
    let written = s.write(&run.join("pred"), "case01").unwrap();
    let (mask, info) = read_nifti_with_info(&written.mask).unwrap();
    assert_eq!(mask.shape, DIMS.to_vec());
    let (_, src) = read_nifti_with_info(&input).unwrap();
    assert_eq!(info.sform_affine, src.sform_affine, "the source's affine");
    assert!(mask.values.iter().all(|v| [0.0, 200.0, 500.0].contains(v)));
    assert!(mask.values.contains(&200.0) && mask.values.contains(&500.0));
    assert_eq!(mask.stored, seg_data::StoredType::Int16, "500 needs int16");
}

#[test]
fn the_plan_of_real_hippocampus_cases() {
    let Some(src) = shared("datasets/Hippocampus") else {
        return;
    };
    let root = tmp("hippo");
    for sub in ["imagesTr", "labelsTr"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::copy(src.join("dataset.json"), root.join("dataset.json")).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(src.join("imagesTr"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for n in names.iter().take(6) {
        for sub in ["imagesTr", "labelsTr"] {
            std::os::unix::fs::symlink(src.join(sub).join(n), root.join(sub).join(n)).unwrap();
        }
    }
    let spec = DatasetSpec::detect(&root).unwrap();
    let (plan, fp) = plan_dataset(&spec).unwrap();
    assert_eq!(fp.cases.len(), 6);
    assert_eq!(plan.labels.values, vec![0, 1, 2]);
    assert_eq!(
        plan.labels.names,
        vec!["background", "Anterior", "Posterior"]
    );
    assert_eq!(fp.modalities, vec!["MRI"]);
    assert_eq!(plan.norm, IntensityNorm::ZscoreCase);
    // 1 mm isotropic, cases of about 36 × 50 × 35 that one 3D patch
    // covers: a 3D network on the whole cases
    assert_eq!(
        (plan.slice_axis, plan.context, plan.dims),
        (2, 0, 3),
        "{:#?}",
        plan.reasons
    );
    let p3 = plan.patch3.unwrap();
    assert!(
        p3.iter().all(|s| s % 8 == 0 && (32..=64).contains(s)),
        "{p3:?}"
    );
    // the 2.5D alternative stays available (--dims 2.5)
    let flat = plan.clone().with_dims("2.5", 1).unwrap();
    assert_eq!((flat.context, flat.in_channels), (1, 3));
    assert!(fp
        .cases
        .iter()
        .all(|c| c.label_voxels[1] > 0 && c.label_voxels[2] > 0));
    assert!((32..=64).contains(&plan.patch), "patch {}", plan.patch);
    let mut cfg = plan.train_config(&root, "msd").unwrap();
    cfg.model = cfg.model.with_base(2);
    cfg.epochs = 1;
    cfg.steps_per_epoch = 2;
    cfg.batch = 2;
    cfg.out_dir = root.join("run");
    let mut t = Trainer::new(cfg, &Device::Cpu, false).unwrap();
    assert_eq!(t.split_sizes().1, 1);
    t.run(&mut Silent, &AtomicBool::new(false)).unwrap();
    assert!(root.join("run/best.safetensors").is_file());
}

#[test]
fn a_many_class_ct_plan_and_a_dicom_series_predicted_to_its_shape() {
    let Some(src) = shared("datasets/TotalSegmentator-example") else {
        return;
    };
    // two labelings of one real CT (TotalSegmentator's 41- and 40-class outputs)
    let root = tmp("ct");
    for sub in ["images", "labels"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    for (case, seg) in [
        ("a", "example_seg.nii.gz"),
        ("b", "example_seg_fast.nii.gz"),
    ] {
        let name = format!("{case}.nii.gz");
        std::os::unix::fs::symlink(
            src.join("example_ct_sm.nii.gz"),
            root.join("images").join(&name),
        )
        .unwrap();
        std::os::unix::fs::symlink(src.join(seg), root.join("labels").join(&name)).unwrap();
    }
    let spec = DatasetSpec::detect(&root).unwrap();
    let (plan, fp) = plan_dataset(&spec).unwrap();
    assert!(fp.min_value <= -1000.0, "air in HU");
    assert!(
        matches!(plan.norm, IntensityNorm::Ct { lower, upper, .. } if lower < upper),
        "{:?}",
        plan.norm
    );
    assert!(
        plan.labels.classes() > 40,
        "{} classes",
        plan.labels.classes()
    );
    assert_eq!(*plan.labels.values.last().unwrap(), 117);
    let mut cfg = plan.train_config(&root, "folders").unwrap();
    cfg.model = cfg.model.with_base(2);
    cfg.epochs = 1;
    cfg.steps_per_epoch = 2;
    cfg.batch = 2;
    cfg.sliding_window.roi = 128;
    cfg.out_dir = root.join("run");
    let mut t = Trainer::new(cfg, &Device::Cpu, false).unwrap();
    t.run(&mut Silent, &AtomicBool::new(false)).unwrap();

    // the DICOM series (JPEG 2000, 512×512×20) through the multi-class bundle
    let seg = Segmenter::open(&root.join("run/best.safetensors"), &Device::Cpu).unwrap();
    let s = seg
        .segment_file(&src.join("example_ct_dicom"), None)
        .unwrap();
    let w = s.write(&root.join("pred"), "series").unwrap();
    let (mask, _) = read_nifti_with_info(&w.mask).unwrap();
    assert_eq!(mask.shape, vec![512, 512, 20], "the series' shape");
    assert!(mask
        .values
        .iter()
        .all(|&v| plan.labels.index(v as i64).is_some()));
}

#[test]
fn all_four_networks_train_and_predict_k_classes() {
    let root = tmp("four");
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::create_dir_all(root.join("labels")).unwrap();
    for k in 0..3 {
        write_case(&root, k);
    }
    let spec = DatasetSpec::detect(&root).unwrap();
    let (plan, _) = plan_dataset(&spec).unwrap();
    for name in seg_models::MODEL_NAMES {
        let mut cfg = plan.train_config(&root, "folders").unwrap();
        cfg.model = seg_models::ModelConfig::from_name(name)
            .unwrap()
            .with_base(4)
            .with_in_channels(plan.in_channels)
            .with_out_channels(plan.labels.classes());
        cfg.epochs = 1;
        cfg.steps_per_epoch = 2;
        cfg.batch = 2;
        cfg.out_dir = root.join(format!("run-{name}"));
        let mut t = Trainer::new(cfg, &Device::Cpu, false).unwrap();
        t.run(&mut Silent, &AtomicBool::new(false)).unwrap();
        let seg = Segmenter::open(
            &root.join(format!("run-{name}/best.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let s = seg
            .segment_file(&root.join("images/case00.nii.gz"), None)
            .unwrap();
        assert_eq!(s.labels.len(), DIMS.iter().product::<usize>(), "{name}");
        assert!(
            s.label_map().iter().all(|v| [0, 200, 500].contains(v)),
            "{name}"
        );
        let info = seg.info();
        assert_eq!(info.plan.as_ref().unwrap().labels.values, vec![0, 200, 500]);
    }
}
