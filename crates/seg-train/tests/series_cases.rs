//! Training cases stored as DICOM series folders (`images/<case>/`) with
//! NIfTI labels: the real TotalSegmentator CT series (JPEG 2000) and the
//! label volume TotalSegmentator made from it, stored LAS (rows flipped
//! against the series). The label must land on the series' voxels.

use seg_data::labelmap::read_label;
use seg_data::spec::DatasetSpec;
use seg_train::plan::{fingerprint, read_cases};

mod common;

/// The share of labelled voxels whose CT value is tissue or bone (above
/// -300 HU) rather than air or lung.
fn tissue_share(hu: &[f32], label: &[f32]) -> f64 {
    let (mut n, mut t) = (0usize, 0usize);
    for (&v, &l) in hu.iter().zip(label) {
        if l != 0.0 {
            n += 1;
            t += (v > -300.0) as usize;
        }
    }
    t as f64 / n.max(1) as f64
}

#[test]
fn a_dicom_series_case_gets_its_nifti_label_aligned() {
    let Some(src) = common::shared("datasets/TotalSegmentator-example") else {
        return;
    };
    let root = common::tmp("series", "data");
    for sub in ["images", "labels"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    for case in ["ct1", "ct2"] {
        std::os::unix::fs::symlink(src.join("example_ct_dicom"), root.join("images").join(case))
            .unwrap();
        std::os::unix::fs::symlink(
            src.join("example_seg_dicom.nii.gz"),
            root.join("labels").join(format!("{case}.nii.gz")),
        )
        .unwrap();
    }
    let spec = DatasetSpec::detect(&root).unwrap();
    let cases = spec.cases().unwrap();
    assert_eq!(cases.cases.len(), 2, "{:?}", cases.cases);
    assert!(cases.cases.iter().all(|c| c.label.is_some()));
    let read = read_cases(&cases.cases).unwrap();
    let c = &read[0];
    let img = &c.images[0].0;
    assert_eq!(img.shape, vec![512, 512, 20], "the series in NIfTI order");
    assert_eq!(c.label.0.shape, vec![512, 512, 20]);
    // the label as stored (LAS) against the aligned one
    let stored = read_label(&src.join("example_seg_dicom.nii.gz")).unwrap();
    let aligned = tissue_share(&img.values, &c.label.0.values);
    let unaligned = tissue_share(&img.values, &stored.values);
    assert!(
        aligned > 0.95 && aligned > unaligned + 0.1,
        "labelled voxels in tissue: aligned {aligned:.3}, as stored {unaligned:.3}"
    );
    eprintln!("tissue share: aligned {aligned:.3}, as stored {unaligned:.3}");
    let fp = fingerprint(&read, &spec).unwrap();
    assert!(fp.volumes && fp.min_value <= -1000.0, "HU with air");
    assert_eq!(fp.cases[0].shape, [512, 512, 20]);
    // columns run to the patient's left, rows to posterior, slices up
    assert_eq!(fp.cases[0].orientation.as_deref(), Some("LPS"));
    let p = seg_train::plan::plan(&fp);
    assert_eq!(p.orientation.as_deref(), Some("LPS"));
    assert!((fp.cases[0].spacing[2] - 2.0).abs() < 1e-6);
}
