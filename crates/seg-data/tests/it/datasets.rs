//! Dataset layouts: each one detected and listed from a tiny folder made in a
//! temp dir, the detect error, and the real MSD Hippocampus set.

use crate::shared_or_skip;
use seg_data::dataset_json::JsonStyle;
use seg_data::io::image2d::write_png_u8;
use seg_data::io::nifti::write_nifti;
use seg_data::msd::MsdDataset;
use seg_data::spec::{DatasetKind, DatasetSpec};
use seg_data::Error;
use std::path::{Path, PathBuf};

const EYE: [[f64; 4]; 4] = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

/// A fresh temp folder for one test.
fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("seg-spec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn png(path: &Path, channels: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    write_png_u8(path, 4, 4, channels, &vec![9u8; 16 * channels]).unwrap();
}

fn nii(path: &Path, dims: &[usize]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (i % 3) as f32).collect();
    write_nifti(path, dims, &v, &EYE).unwrap();
}

fn ids(spec: &DatasetSpec) -> Vec<String> {
    spec.cases()
        .unwrap()
        .cases
        .into_iter()
        .map(|c| c.id)
        .collect()
}

#[test]
fn drive_layout_is_detected_and_paired_by_case_number() {
    let d = tmp("drive");
    for id in ["21", "22"] {
        png(&d.join(format!("training/images/{id}_training.png")), 3);
        png(&d.join(format!("training/1st_manual/{id}_manual1.png")), 1);
        png(&d.join(format!("training/mask/{id}_training_mask.png")), 1);
    }
    let spec = DatasetSpec::detect(&d).unwrap();
    assert_eq!(spec, DatasetSpec::Drive { root: d.clone() });
    let list = spec.cases().unwrap();
    assert_eq!(ids(&spec), ["21", "22"]);
    let c = &list.cases[1];
    assert!(c.images[0].ends_with("training/images/22_training.png"));
    assert!(c.label.as_ref().unwrap().ends_with("22_manual1.png"));
    assert!(c.fov.as_ref().unwrap().ends_with("22_training_mask.png"));
    // also found under DRIVE/ and as a split folder itself
    let outer = tmp("drive-outer");
    std::fs::rename(&d, outer.join("DRIVE")).unwrap();
    assert_eq!(
        DatasetSpec::detect(&outer).unwrap().kind(),
        DatasetKind::Drive
    );
    let split = outer.join("DRIVE/training");
    assert_eq!(
        DatasetSpec::detect(&split).unwrap().kind(),
        DatasetKind::Drive
    );
    assert_eq!(ids(&DatasetSpec::detect(&split).unwrap()), ["21", "22"]);
    std::fs::remove_dir_all(&outer).unwrap();
}

#[test]
fn paired_folders_with_masks_or_labels_and_fov() {
    let d = tmp("folders");
    png(&d.join("images/a_1.png"), 3);
    png(&d.join("images/b.png"), 3);
    png(&d.join("masks/a_1.png"), 1);
    png(&d.join("masks/b.png"), 1);
    png(&d.join("masks/stray.png"), 1);
    png(&d.join("fov/b.png"), 1);
    let spec = DatasetSpec::detect(&d).unwrap();
    assert_eq!(spec.kind(), DatasetKind::Folders);
    let list = spec.cases().unwrap();
    // paired by the whole stem, not the DRIVE-style ID up to '_'
    assert_eq!(ids(&spec), ["a_1", "b"]);
    assert_eq!(list.cases[1].fov, Some(d.join("fov/b.png")));
    assert_eq!(list.cases[0].fov, None);
    assert_eq!(list.unpaired, [d.join("masks/stray.png")]);
    // labels/ instead of masks/ (NIfTI pairs)
    let v = tmp("folders-labels");
    nii(&v.join("images/scan.nii.gz"), &[3, 4, 2]);
    nii(&v.join("labels/scan.nii.gz"), &[3, 4, 2]);
    let spec = DatasetSpec::detect(&v).unwrap();
    assert_eq!(spec, DatasetSpec::Folders { root: v.clone() });
    let list = spec.cases().unwrap();
    assert_eq!(list.cases[0].id, "scan");
    assert_eq!(list.cases[0].label, Some(v.join("labels/scan.nii.gz")));
    std::fs::remove_dir_all(&d).unwrap();
    std::fs::remove_dir_all(&v).unwrap();
}

#[test]
fn msd_layout_one_file_per_case_with_v1_dataset_json() {
    let d = tmp("msd-v1");
    for id in ["hip_001", "hip_002", "hip_010"] {
        nii(&d.join(format!("imagesTr/{id}.nii.gz")), &[5, 4, 3]);
        nii(&d.join(format!("labelsTr/{id}.nii.gz")), &[5, 4, 3]);
    }
    nii(&d.join("imagesTs/hip_003.nii.gz"), &[5, 4, 3]);
    std::fs::write(
        d.join("dataset.json"),
        r#"{"name": "Hip", "modality": {"0": "MRI"}, "numTraining": 3,
            "labels": {"0": "background", "1": "Anterior", "2": "Posterior"}}"#,
    )
    .unwrap();
    let spec = DatasetSpec::detect(&d).unwrap();
    let DatasetSpec::Msd(m) = &spec else {
        panic!("{spec:?}")
    };
    let j = m.json.as_ref().unwrap();
    assert_eq!(j.style, JsonStyle::Msd);
    assert_eq!(j.channels, ["MRI"]);
    assert_eq!(j.label_names(), ["background", "Anterior", "Posterior"]);
    assert_eq!(m.name(), "Hip");
    assert_eq!(ids(&spec), ["hip_001", "hip_002", "hip_010"]);
    let cases = m.training_cases().unwrap();
    for c in &cases {
        assert_eq!(c.images, [d.join(format!("imagesTr/{}.nii.gz", c.id))]);
        assert_eq!(c.label, Some(d.join(format!("labelsTr/{}.nii.gz", c.id))));
        let s = m.case_shape(c).unwrap();
        assert_eq!((s.spatial.as_slice(), s.channels), (&[5, 4, 3][..], 1));
    }
    let test = m.test_cases().unwrap();
    assert_eq!(test.len(), 1);
    assert_eq!(
        (test[0].id.as_str(), test[0].label.as_ref()),
        ("hip_003", None)
    );

    // a label of another shape is named with its case
    nii(&d.join("labelsTr/hip_002.nii.gz"), &[5, 4, 2]);
    let err = m.case_shape(&m.training_cases().unwrap()[1]).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("case hip_002"), "{err}");
    // a missing label is an error naming the case
    std::fs::remove_file(d.join("labelsTr/hip_002.nii.gz")).unwrap();
    let err = m.training_cases().unwrap_err();
    let Error::UnpairedCase { case, what, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!((case.as_str(), what.as_str()), ("hip_002", "label"));
    assert!(err.to_string().contains("labelsTr/hip_002.nii.gz"), "{err}");
    // and so is a label without its image
    nii(&d.join("labelsTr/hip_002.nii.gz"), &[5, 4, 3]);
    nii(&d.join("labelsTr/hip_077.nii.gz"), &[5, 4, 3]);
    let err = m.training_cases().unwrap_err();
    assert!(
        matches!(&err, Error::UnpairedCase { case, what, .. } if case == "hip_077" && what == "image"),
        "{err}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn nnunet_v2_channel_files_are_grouped_by_case() {
    let d = tmp("msd-v2");
    for id in ["prostate_00", "prostate_01"] {
        for ch in 0..2 {
            nii(&d.join(format!("imagesTr/{id}_{ch:04}.nii.gz")), &[4, 4, 2]);
        }
        nii(&d.join(format!("labelsTr/{id}.nii.gz")), &[4, 4, 2]);
    }
    std::fs::write(
        d.join("dataset.json"),
        r#"{"channel_names": {"0": "T2", "1": "ADC"}, "numTraining": 2,
            "labels": {"background": 0, "PZ": 1, "TZ": 2}, "file_ending": ".nii.gz"}"#,
    )
    .unwrap();
    let spec = DatasetSpec::open(DatasetKind::Msd, &d).unwrap();
    let DatasetSpec::Msd(m) = &spec else {
        panic!("{spec:?}")
    };
    assert_eq!(m.json.as_ref().unwrap().style, JsonStyle::NnUnetV2);
    assert_eq!(m.json.as_ref().unwrap().channels, ["T2", "ADC"]);
    let cases = m.training_cases().unwrap();
    assert_eq!(cases.len(), 2);
    assert_eq!(cases[1].id, "prostate_01");
    assert_eq!(
        cases[1].images,
        [
            d.join("imagesTr/prostate_01_0000.nii.gz"),
            d.join("imagesTr/prostate_01_0001.nii.gz")
        ]
    );
    assert_eq!(m.case_shape(&cases[0]).unwrap().channels, 2);
    // a missing channel file names the case and the file
    std::fs::remove_file(d.join("imagesTr/prostate_01_0001.nii.gz")).unwrap();
    let err = m.training_cases().unwrap_err();
    assert!(
        matches!(&err, Error::UnpairedCase { case, what, .. } if case == "prostate_01" && what == "channel 1"),
        "{err}"
    );
    assert!(err.to_string().contains("prostate_01_0001.nii.gz"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn four_digit_case_numbers_are_not_taken_for_channels_without_reason() {
    // MSD naming whose case numbers happen to have four digits: the labels
    // carry the same names, so nothing is stripped
    let d = tmp("msd-4digit");
    for id in ["case_0001", "case_0002"] {
        nii(&d.join(format!("imagesTr/{id}.nii.gz")), &[3, 3, 3]);
        nii(&d.join(format!("labelsTr/{id}.nii.gz")), &[3, 3, 3]);
    }
    let m = MsdDataset::open(&d).unwrap();
    assert_eq!(m.json, None);
    assert_eq!(m.name(), d.file_name().unwrap().to_string_lossy());
    let ids: Vec<String> = m
        .training_cases()
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, ["case_0001", "case_0002"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn detect_error_says_what_it_looked_for_and_found() {
    let d = tmp("nolayout");
    png(&d.join("images/a.png"), 3);
    std::fs::write(d.join("notes.txt"), "x").unwrap();
    let err = DatasetSpec::detect(&d).unwrap_err();
    let Error::NoLayout {
        looked_for, found, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(
        looked_for,
        &[DatasetKind::Drive, DatasetKind::Msd, DatasetKind::Folders]
    );
    assert_eq!(found, &["images/", "notes.txt"]);
    let msg = err.to_string();
    for want in [
        d.display().to_string(),
        "training/images/".into(),
        "imagesTr/ with labelsTr/".into(),
        "images/ with masks/ or labels/".into(),
        "found images/, notes.txt".into(),
    ] {
        assert!(msg.contains(&want), "{want:?} not in: {msg}");
    }
    let empty = tmp("nolayout-empty");
    let msg = DatasetSpec::detect(&empty).unwrap_err().to_string();
    assert!(msg.contains("found nothing (an empty folder)"), "{msg}");
    // naming MSD for a folder without imagesTr/ says what MSD needs
    let msg = DatasetSpec::open(DatasetKind::Msd, &d)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("imagesTr/") && !msg.contains("DRIVE"), "{msg}");
    assert!(DatasetSpec::detect(&d.join("missing")).is_err());
    std::fs::remove_dir_all(&d).unwrap();
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn kinds_round_trip_their_names_and_synthetic_has_no_files() {
    for name in DatasetKind::NAMES {
        assert_eq!(DatasetKind::from_name(name).unwrap().name(), name);
    }
    assert_eq!(DatasetKind::from_name("nnunet"), None);
    let s = DatasetSpec::open(DatasetKind::Synthetic, Path::new("unused")).unwrap();
    assert_eq!((s.kind(), s.root()), (DatasetKind::Synthetic, None));
    assert!(s.cases().is_err());
}

#[test]
fn real_msd_hippocampus_lists_and_pairs_every_case() {
    let root = shared_or_skip!("datasets/Hippocampus");
    let spec = DatasetSpec::detect(&root).unwrap();
    let DatasetSpec::Msd(m) = &spec else {
        panic!("{spec:?}")
    };
    let j = m.json.as_ref().expect("dataset.json");
    assert_eq!(j.style, JsonStyle::Msd);
    assert_eq!(j.channels, ["MRI"]);
    assert_eq!(j.label_names(), ["background", "Anterior", "Posterior"]);
    assert_eq!(j.label_values(), [0, 1, 2]);
    assert_eq!(m.name(), "Hippocampus");
    let cases = m.training_cases().unwrap();
    // counted: `ls imagesTr | wc -l` and `ls labelsTr | wc -l` are both 208
    assert_eq!(cases.len(), 208);
    assert_eq!(j.num_training, Some(208));
    assert_eq!(j.training.len(), 208);
    for c in &cases {
        assert_eq!(c.images.len(), 1);
        let (img, lab) = (&c.images[0], c.label.as_ref().unwrap());
        assert_eq!(img.file_name(), lab.file_name(), "case {}", c.id);
        assert!(img.starts_with(root.join("imagesTr")) && lab.starts_with(root.join("labelsTr")));
        assert!(c.id.starts_with("hippocampus_"), "{}", c.id);
        // dataset.json lists the same pair
        let want = (
            format!("./imagesTr/{}.nii.gz", c.id),
            format!("./labelsTr/{}.nii.gz", c.id),
        );
        assert!(
            j.training.contains(&want),
            "case {} not in dataset.json",
            c.id
        );
    }
    assert_eq!(cases[0].id, "hippocampus_003");
    // headers agree between image and label for every case
    for c in &cases {
        let s = m.case_shape(c).unwrap();
        assert_eq!((s.spatial.len(), s.channels), (3, 1), "case {}", c.id);
    }
    assert!(m.test_cases().unwrap().is_empty());
}
