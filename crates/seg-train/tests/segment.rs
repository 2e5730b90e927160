//! The segmenting library and `examples/segment.rs` on a tiny bundle (random
//! weights: the pipeline is under test, not the model): a real DRIVE image,
//! its FOV, a NIfTI volume, a DICOM file and a DICOM series folder; the files
//! written equal what the Segmenter returned; bad input gets typed errors.

#[allow(dead_code)]
#[path = "../examples/segment.rs"]
mod example;

use seg_core::Device;
use seg_data::io::image2d::{read_image, write_mask_png};
use seg_data::io::nifti::{read_nifti_with_info, write_nifti};
use seg_data::{Mask, StoredType};
use seg_train::segment::{list_inputs, Geometry, Segmentation, Segmenter};
use seg_train::Error;
use std::path::{Path, PathBuf};

mod common;

fn tmp(name: &str) -> PathBuf {
    common::tmp("segment", name)
}

use common::shared;

/// A U-Net of base 2 with seeded random weights and the fundus plan.
fn tiny_bundle(dir: &Path, threshold: f32) -> PathBuf {
    common::tiny_fundus_bundle(&dir.join("bundle.safetensors"), threshold, None)
}

fn median(v: &[f32]) -> f32 {
    let mut s = v.to_vec();
    s.sort_by(f32::total_cmp);
    s[s.len() / 2]
}

/// A bundle whose threshold splits `input`'s probabilities in two halves, so
/// that masks hold both labels.
fn bundle_splitting(dir: &Path, input: &Path) -> PathBuf {
    let b = tiny_bundle(dir, 0.5);
    let s = Segmenter::open(&b, &Device::Cpu)
        .unwrap()
        .segment_file(input, None)
        .unwrap();
    let lo = s
        .probabilities
        .iter()
        .cloned()
        .fold(f32::INFINITY, f32::min);
    let hi = s.probabilities.iter().cloned().fold(0.0, f32::max);
    assert!(hi > lo, "constant probability map {lo}");
    tiny_bundle(dir, median(&s.probabilities))
}

/// The written 2D files hold exactly `s`: probabilities × 65535 rounded in a
/// 16-bit PNG, labels × 255 in the mask.
fn assert_png_matches(s: &Segmentation, prob: &Path, mask: &Path, (h, w): (usize, usize)) {
    let p = read_image(prob).unwrap();
    assert_eq!(
        (p.shape.clone(), p.stored),
        (vec![h, w, 1], StoredType::Uint16)
    );
    for (i, (&v, &q)) in p.values.iter().zip(&s.probabilities).enumerate() {
        assert_eq!(v, (q * 65535.0).round(), "pixel {i}");
    }
    let m = read_image(mask).unwrap();
    assert_eq!(m.shape, vec![h, w, 1]);
    let want: Vec<f32> = s.labels.iter().map(|&l| l as f32 * 255.0).collect();
    assert_eq!(m.values, want);
}

#[test]
fn a_drive_image_is_segmented_and_written_as_the_segmenter_returns() {
    let Some(img) = shared("datasets/DRIVE/test/images/01_test.tif") else {
        return;
    };
    let dir = tmp("drive");
    let bundle = bundle_splitting(&dir, &img);
    let seg = Segmenter::open(&bundle, &Device::Cpu).unwrap();
    let s = seg.segment_file(&img, None).unwrap();
    let src = read_image(&img).unwrap();
    let (h, w) = (src.shape[0], src.shape[1]);
    assert_eq!(
        s.geometry,
        Geometry::Image {
            height: h,
            width: w
        }
    );
    assert_eq!((s.probabilities.len(), s.labels.len()), (h * w, h * w));
    let fg = s.labels.iter().filter(|&&l| l == 1).count();
    assert!(fg > h * w / 10 && fg < h * w * 9 / 10, "{fg} of {}", h * w);
    for (&p, &l) in s.probabilities.iter().zip(&s.labels) {
        assert!((0.0..=1.0).contains(&p) && l == (p >= seg.threshold()) as u8);
    }
    // the example writes exactly that
    let out = dir.join("out");
    let written = example::segment_all(&bundle, &img, &out).unwrap();
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].probabilities[0], out.join("01_test.png"));
    assert_eq!(written[0].mask, out.join("masks/01_test.png"));
    assert_png_matches(&s, &written[0].probabilities[0], &written[0].mask, (h, w));

    // a FOV: zero outside, the same pixels as without it nowhere guaranteed
    // (normalisation statistics come from inside it), a typed size error
    let Some(fov) = shared("datasets/DRIVE/test/mask/01_test_mask.gif") else {
        return;
    };
    let f = seg.segment_file(&img, Some(&fov)).unwrap();
    let m = seg_data::read_mask(&fov).unwrap();
    assert!(m
        .data
        .iter()
        .zip(&f.probabilities)
        .all(|(&m, &p)| m != 0 || p == 0.0));
    assert!(m
        .data
        .iter()
        .zip(&f.probabilities)
        .any(|(&m, &p)| m != 0 && p > 0.0));
    assert_ne!(f.probabilities, s.probabilities);
    let small = dir.join("small_fov.png");
    write_mask_png(
        &small,
        &Mask {
            height: 10,
            width: 10,
            data: vec![1; 100],
        },
    )
    .unwrap();
    match seg.segment_file(&img, Some(&small)) {
        Err(Error::Input { path, error }) => {
            assert_eq!(path, img);
            assert!(
                matches!(*error, Error::FovSize { fov: (10, 10), image, .. } if image == (h, w)),
                "{error}"
            );
            assert!(error.to_string().contains("small_fov.png"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_nifti_volume_keeps_its_shape_and_affine() {
    let dir = tmp("nifti");
    let affine = [
        [0.8, 0.0, 0.0, -12.0],
        [0.0, 0.8, 0.0, 7.0],
        [0.0, 0.0, 2.5, 30.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let values: Vec<f32> = (0..40 * 36 * 3)
        .map(|i| ((i * 7) % 13) as f32 * 100.0 - 600.0)
        .collect();
    let input = dir.join("scan.nii.gz");
    write_nifti(&input, &[40, 36, 3], &values, &affine).unwrap();
    let bundle = bundle_splitting(&dir, &input);
    let s = Segmenter::open(&bundle, &Device::Cpu)
        .unwrap()
        .segment_file(&input, None)
        .unwrap();
    // the affine as read (float32 in the file)
    let (src, _) = read_nifti_with_info(&input).unwrap();
    assert_eq!(
        s.geometry,
        Geometry::Volume {
            dims: vec![40, 36, 3],
            affine: src.affine.unwrap()
        }
    );
    assert!(s.labels.contains(&0) && s.labels.contains(&1));
    let out = dir.join("out");
    let written = example::segment_all(&bundle, &input, &out).unwrap();
    assert_eq!(written[0].probabilities[0], out.join("scan.nii.gz"));
    for (file, want) in [
        (&written[0].probabilities[0], s.probabilities.clone()),
        (
            &written[0].mask,
            s.labels.iter().map(|&l| l as f32).collect(),
        ),
    ] {
        let (v, _) = read_nifti_with_info(file).unwrap();
        assert_eq!(v.shape, vec![40, 36, 3]);
        assert_eq!(v.values, want, "{}", file.display());
        let a = v.affine.unwrap();
        for i in 0..4 {
            for k in 0..4 {
                assert!((a[i][k] - affine[i][k]).abs() < 1e-5, "{a:?}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_dicom_file_and_a_series_folder_of_it_segment_alike() {
    let Some(ct) = shared("medical/dicom/CT_small.dcm") else {
        return;
    };
    let dir = tmp("dicom");
    let series = dir.join("series");
    std::fs::create_dir_all(&series).unwrap();
    std::fs::copy(&ct, series.join("slice1.dcm")).unwrap();
    assert_eq!(list_inputs(&series).unwrap(), vec![series.clone()]);
    let bundle = tiny_bundle(&dir, 0.5);
    let seg = Segmenter::open(&bundle, &Device::Cpu).unwrap();
    let a = seg.segment_file(&ct, None).unwrap();
    let b = seg.segment_file(&series, None).unwrap();
    assert!(matches!(&a.geometry, Geometry::Volume { dims, .. } if dims == &[128, 128, 1]));
    assert_eq!(a.probabilities, b.probabilities);
    let out = dir.join("out");
    let w = example::segment_all(&bundle, &series, &out).unwrap();
    assert_eq!(w[0].probabilities[0], out.join("series.nii.gz"));
    let (v, _) = read_nifti_with_info(&w[0].probabilities[0]).unwrap();
    assert_eq!(v.values, b.probabilities);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_bundles_inputs_and_settings_are_typed_errors() {
    let dir = tmp("errors");
    assert!(matches!(
        Segmenter::open(&dir.join("nope.safetensors"), &Device::Cpu),
        Err(Error::Checkpoint { .. })
    ));
    let bundle = tiny_bundle(&dir, 0.5);
    let mut seg = Segmenter::open(&bundle, &Device::Cpu).unwrap();
    assert!(matches!(
        seg.set_threshold(1.5),
        Err(Error::OutOfRange {
            what: "threshold",
            ..
        })
    ));
    assert!(matches!(
        seg.set_overlap(0.95),
        Err(Error::OutOfRange {
            what: "overlap",
            ..
        })
    ));
    seg.set_threshold(0.25).unwrap().set_overlap(0.5).unwrap();
    assert_eq!((seg.threshold(), seg.window().overlap), (0.25, 0.5));

    let missing = dir.join("missing.png");
    assert!(matches!(list_inputs(&missing), Err(Error::NoSuchInput { path }) if path == missing));
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "x").unwrap();
    assert!(matches!(
        list_inputs(&empty),
        Err(Error::NoInputFiles { .. })
    ));

    // a NaN in a volume: the error names the file and the problem
    let nan = dir.join("nan.nii.gz");
    let mut values: Vec<f32> = (0..8 * 8 * 2).map(|i| (i % 17) as f32).collect();
    values[9] = f32::NAN;
    let eye = [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    write_nifti(&nan, &[8, 8, 2], &values, &eye).unwrap();
    let err = seg.segment_file(&nan, None).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("nan.nii.gz") && msg.contains("finite"),
        "{msg}"
    );

    // a 2D image is not a volume, a volume not a 2D image; a 4D NIfTI is refused
    let vol = seg_data::io::nifti::read_nifti(&nan).unwrap();
    assert!(matches!(
        seg.segment_image(&vol, None),
        Err(Error::UnsupportedVolume { .. })
    ));
    let png = dir.join("img.png");
    seg_data::io::image2d::write_png_u8(&png, 20, 20, 1, &[100; 400]).unwrap();
    let img = read_image(&png).unwrap();
    assert!(matches!(
        seg.segment_volume(&img),
        Err(Error::UnsupportedVolume { .. })
    ));
    // a Volume built in code whose values do not fill its shape: an error,
    // not a panic
    let short = seg_data::Volume {
        values: img.values[..img.values.len() - 7].to_vec(),
        ..img.clone()
    };
    match seg.segment_image(&short, None) {
        Err(Error::UnsupportedVolume { reason, .. }) => {
            assert!(reason.contains("fill"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let short_vol = seg_data::Volume {
        values: vol.values[..vol.values.len() - 1].to_vec(),
        ..vol.clone()
    };
    assert!(matches!(
        seg.segment_volume(&short_vol),
        Err(Error::UnsupportedVolume { .. })
    ));
    let four = dir.join("four.nii.gz");
    write_nifti(&four, &[4, 4, 2, 2], &[0.5; 64], &eye).unwrap();
    match seg.segment_file(&four, None) {
        Err(Error::Input { error, .. }) => {
            assert!(matches!(*error, Error::UnsupportedVolume { .. }), "{error}")
        }
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
