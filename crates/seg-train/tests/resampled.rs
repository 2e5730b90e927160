//! Cases stored at different in-plane spacings: the plan resamples every
//! plane to the median spacing, trains there, and predicts back onto each
//! input's own grid (label map, per-class probabilities, overlay). And the
//! coarsening of planes too large for a CPU budget.

use seg_core::Device;
use seg_data::io::nifti::{read_nifti_with_info, write_nifti};
use seg_data::labelmap::{LabelSet, Stack};
use seg_data::spec::DatasetSpec;
use seg_train::plan::{
    plan, plan_dataset, CaseFingerprint, Fingerprint, IntensityStats, MAX_PLANE_SIDE,
};
use seg_train::segment::{read_input, Segmenter};
use seg_train::trainer::{Silent, Trainer};
use std::path::Path;
use std::sync::atomic::AtomicBool;

mod common;

/// A 24 × 20 × 6 case at 0.8 mm in-plane (`coarse`: the same field of view
/// as 12 × 10 at 1.6 mm): a bright box labelled 1 and a dark one labelled 2.
fn write_case(root: &Path, k: usize, coarse: bool) {
    let f = if coarse { 2 } else { 1 };
    let dims = [24 / f, 20 / f, 6];
    let (mut img, mut lab) = (Vec::new(), Vec::new());
    for z in 0..dims[2] {
        for y in 0..dims[1] {
            for x in 0..dims[0] {
                // the fine grid's coordinates of this voxel's centre
                let (fx, fy) = (x * f + f / 2, y * f + f / 2);
                let a = (2 + k..10 + k).contains(&fx) && (2..12).contains(&fy) && z >= 1;
                let b = (14..22).contains(&fx) && (8..18).contains(&fy) && z < 5;
                let noise = ((x * 7 + y * 13 + z * 3 + k) % 5) as f32;
                let (v, l) = if a {
                    (300.0, 1.0)
                } else if b {
                    (0.0, 2.0)
                } else {
                    (100.0, 0.0)
                };
                img.push(v + noise);
                lab.push(l);
            }
        }
    }
    let s = 0.8 * f as f64;
    let affine = [
        [s, 0.0, 0.0, 0.0],
        [0.0, s, 0.0, 0.0],
        [0.0, 0.0, 3.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let name = format!("case{k:02}.nii.gz");
    write_nifti(&root.join("images").join(&name), &dims, &img, &affine).unwrap();
    write_nifti(&root.join("labels").join(&name), &dims, &lab, &affine).unwrap();
}

#[test]
fn planes_are_resampled_to_the_median_spacing_and_predicted_back() {
    let root = common::tmp("resampled", "data");
    for sub in ["images", "labels"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    for k in 0..5 {
        write_case(&root, k, k >= 3);
    }
    let spec = DatasetSpec::detect(&root).unwrap();
    let (plan, fp) = plan_dataset(&spec).unwrap();
    assert_eq!(plan.slice_axis, 2);
    let t = plan.target_spacing.expect("resampling planned");
    assert!(
        t.iter().all(|s| (s - 0.8).abs() < 1e-6),
        "{:?}",
        plan.reasons
    );
    assert_eq!(plan.patch, 32, "resampled planes are 24 × 20");
    assert!(plan.reasons.iter().any(|r| r.contains("in-plane spacing")));
    assert_eq!(fp.cases[3].shape, [12, 10, 6]);
    // class 1 in the low x, class 2 in the high x of every case: x keeps a side
    let c = &fp.cases[0].label_centroids;
    assert!(c[1][0] < 0.4 && c[2][0] > 0.6, "{c:?}");
    assert!(!plan.mirror[0], "{:?}", plan.reasons);

    // a coarse case's stack is on the fine grid, its label aligned
    let coarse = root.join("images/case03.nii.gz");
    let img = read_input(&coarse).unwrap();
    let lab = seg_data::labelmap::read_label(&root.join("labels/case03.nii.gz")).unwrap();
    let st = Stack::new(
        "case03",
        &[(&img, coarse.as_path())],
        Some((&lab, coarse.as_path())),
        &plan.slice_plan(),
    )
    .unwrap();
    assert_eq!((st.height, st.width, st.native), (24, 20, [12, 10]));
    let l = st.label.as_ref().unwrap();
    // plane 2, fine voxel (x = 8, y = 5) is inside box 1; (18, 12) inside box 2
    let plane = 24 * 20;
    assert_eq!(l[2 * plane + 8 * 20 + 5], 1);
    assert_eq!(l[2 * plane + 18 * 20 + 12], 2);

    let mut cfg = plan.train_config(&root, "folders").unwrap();
    cfg.model = cfg.model.with_base(8);
    cfg.epochs = 6;
    cfg.steps_per_epoch = 20;
    cfg.batch = 4;
    cfg.out_dir = root.join("run");
    let mut t = Trainer::new(cfg, &Device::Cpu, false).unwrap();
    t.run(&mut Silent, &AtomicBool::new(false)).unwrap();
    assert!(
        t.state.best_dice.unwrap() > 0.5,
        "best Dice {:?}",
        t.state.best_dice
    );

    let mut seg = Segmenter::open(&root.join("run/best.safetensors"), &Device::Cpu).unwrap();
    seg.set_class_probabilities(true);
    let s = seg.segment_read(&coarse, &img, None).unwrap();
    let out = root.join("pred");
    let w = s.write(&out, "case03").unwrap();
    let (mask, info) = read_nifti_with_info(&w.mask).unwrap();
    assert_eq!(mask.shape, vec![12, 10, 6], "the input's own grid");
    let (_, src) = read_nifti_with_info(&coarse).unwrap();
    assert_eq!(info.sform_affine, src.sform_affine);
    let truth = read_nifti_with_info(&root.join("labels/case03.nii.gz"))
        .unwrap()
        .0;
    let agree = mask
        .values
        .iter()
        .zip(&truth.values)
        .filter(|(a, b)| a == b)
        .count();
    assert!(
        agree as f64 > 0.8 * truth.values.len() as f64,
        "{agree} of {} voxels agree",
        truth.values.len()
    );
    // every class's probability: x × y × z × 3, summing to 1, arg-max = the mask
    assert_eq!(w.probabilities, vec![out.join("case03.nii.gz")]);
    let (p, _) = read_nifti_with_info(&w.probabilities[0]).unwrap();
    assert_eq!(p.shape, vec![12, 10, 6, 3]);
    let n = 12 * 10 * 6;
    for i in 0..n {
        let v = [p.values[i], p.values[n + i], p.values[2 * n + i]];
        assert!(
            (v.iter().sum::<f32>() - 1.0).abs() < 1e-3,
            "voxel {i}: {v:?}"
        );
        let best = (0..3).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
        assert_eq!(best as f32, mask.values[i], "voxel {i}: {v:?}");
    }
    // the same case stored in another orientation (axes permuted, two
    // flipped: PIR-like) is the same anatomy: reordered to the training
    // orientation, segmented, and its labels come back on its own grid
    assert_eq!(plan.orientation.as_deref(), Some("RAS"));
    let fine = root.join("images/case01.nii.gz");
    let (v, _) = read_nifti_with_info(&fine).unwrap();
    let how = seg_data::orient::Reorient::between("RAS", "PIR", [24, 20, 6]).unwrap();
    let moved = root.join("moved.nii.gz");
    let a = how.affine(&v.affine.unwrap());
    assert_eq!(seg_data::orient::axis_codes(&a), "PIR");
    write_nifti(&moved, &how.out_dims(), &how.apply(&v.values), &a).unwrap();
    let seg_plain = Segmenter::open(&root.join("run/best.safetensors"), &Device::Cpu).unwrap();
    let original = seg_plain.segment_file(&fine, None).unwrap();
    let other = seg_plain.segment_file(&moved, None).unwrap();
    assert!(
        matches!(&other.geometry, seg_train::segment::Geometry::Volume { dims, .. } if dims == &vec![20, 6, 24])
    );
    assert_eq!(
        other.labels,
        how.apply(&original.labels),
        "the same labels, on the moved grid"
    );
    // the overlay montage
    let o = s.write_overlay(&img, &out, "case03").unwrap();
    let pic = seg_data::read_image(&o).unwrap();
    assert_eq!(pic.shape[2], 3, "RGB");
    assert!(
        pic.shape[0] >= 160 && pic.shape[1] >= 160,
        "{:?}",
        pic.shape
    );
}

fn fingerprint_2d(n: usize, side: usize) -> Fingerprint {
    Fingerprint {
        volumes: false,
        modalities: Vec::new(),
        labels: LabelSet::new([0, 1, 2]).unwrap(),
        cases: (0..n)
            .map(|k| CaseFingerprint {
                id: format!("c{k}"),
                shape: [1, side, side],
                spacing: [1.0, 1.0, 1.0],
                modalities: 1,
                label_voxels: vec![10, 5, 5],
                orientation: None,
                label_centroids: vec![[0.5; 3]; 3],
            })
            .collect(),
        foreground: IntensityStats {
            p00_5: 0.0,
            p99_5: 1.0,
            mean: 0.5,
            std: 0.2,
            min: 0.0,
            max: 1.0,
        },
        min_value: 0.0,
    }
}

#[test]
fn planes_larger_than_the_budget_allows_are_coarsened() {
    let small = plan(&fingerprint_2d(4, 256));
    assert_eq!(small.target_spacing, Some([1.0, 1.0]), "the median spacing");
    assert_eq!(small.patch, 256);
    let big = plan(&fingerprint_2d(4, 2048));
    let f = 2048.0 / MAX_PLANE_SIDE as f64;
    assert_eq!(big.target_spacing, Some([f, f]), "{:?}", big.reasons);
    assert_eq!(big.patch, 256, "512² planes, 256² patches");
}

#[test]
fn structures_that_keep_a_side_turn_mirroring_off_along_that_axis() {
    let centred = plan(&fingerprint_2d(4, 256));
    assert_eq!(centred.mirror, [true, true]);
    let aug = centred.augment(seg_data::augment::AugmentConfig::default());
    assert!(aug.flip_h && aug.flip_v && aug.rot90_p > 0.0);
    // class 1 on the left of every image, class 2 on the right (lungs,
    // kidneys): no horizontal flips, no 90° rotations; rows stay mirrored
    let mut fp = fingerprint_2d(4, 256);
    for c in &mut fp.cases {
        c.label_centroids = vec![[0.5, 0.5, 0.5], [0.5, 0.52, 0.3], [0.5, 0.47, 0.72]];
    }
    let lateral = plan(&fp);
    assert_eq!(lateral.mirror, [true, false], "{:?}", lateral.reasons);
    let aug = lateral.augment(seg_data::augment::AugmentConfig::default());
    assert!(!aug.flip_h && aug.flip_v && aug.rot90_p == 0.0);
    assert!(lateral
        .reasons
        .iter()
        .any(|r| r.contains("no flips along the columns")));
}
