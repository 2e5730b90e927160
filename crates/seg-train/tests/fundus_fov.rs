//! Bundles trained with FOV masks (fundus photographs) on a real DRIVE
//! image: without `--fov` the FOV is found from the image and used as a
//! given one is; an image whose FOV is another size than the training
//! images' is segmented at their scale. Tiny random-weight bundles: the
//! pipeline is under test, not the model.

use seg_core::Device;
use seg_data::io::image2d::read_image;
use seg_train::segment::Segmenter;
use std::path::{Path, PathBuf};

mod common;

fn bundle(dir: &Path, name: &str, fov_diameter: Option<f64>) -> PathBuf {
    common::tiny_fundus_bundle(&dir.join(name), 0.5, fov_diameter)
}

#[test]
fn a_missing_fov_is_found_and_other_scales_are_brought_to_the_training_one() {
    let Some(img) = common::shared("datasets/DRIVE/test/images/01_test.tif") else {
        return;
    };
    let dir = common::tmp("fundus", "fov");
    let src = read_image(&img).unwrap();
    let found = seg_data::fov::estimate_fov(&src).unwrap();
    let d = seg_data::fov::diameter(&found.data);
    let at_scale = bundle(&dir, "a.safetensors", Some(d));
    let seg = Segmenter::open(&at_scale, &Device::Cpu).unwrap();
    let s = seg.segment_file(&img, None).unwrap();
    // zero outside the found FOV, something inside
    assert!(found
        .data
        .iter()
        .zip(&s.probabilities)
        .all(|(&m, &p)| m != 0 || p == 0.0));
    assert!(found
        .data
        .iter()
        .zip(&s.probabilities)
        .any(|(&m, &p)| m != 0 && p > 0.0));
    // off: the whole image, as a bundle without a training FOV does
    let mut whole = Segmenter::open(&at_scale, &Device::Cpu).unwrap();
    whole.set_auto_fov(false);
    let w = whole.segment_file(&img, None).unwrap();
    let plain = Segmenter::open(&bundle(&dir, "b.safetensors", None), &Device::Cpu).unwrap();
    assert_eq!(
        w.probabilities,
        plain.segment_file(&img, None).unwrap().probabilities
    );
    assert!(found
        .data
        .iter()
        .zip(&w.probabilities)
        .any(|(&m, &p)| m == 0 && p > 0.0));

    // a bundle trained on FOVs 0.6 × this one: the image is shrunk, segmented, and brought back
    let smaller = bundle(&dir, "c.safetensors", Some(0.6 * d));
    let seg_c = Segmenter::open(&smaller, &Device::Cpu).unwrap();
    let r = seg_c.segment_file(&img, None).unwrap();
    assert_eq!(
        r.probabilities.len(),
        s.probabilities.len(),
        "the input's size"
    );
    assert_ne!(r.probabilities, s.probabilities);
    assert!(found
        .data
        .iter()
        .zip(&r.probabilities)
        .all(|(&m, &p)| (m != 0 || p == 0.0) && (0.0..=1.0).contains(&p)));
    let mut same_scale = Segmenter::open(&smaller, &Device::Cpu).unwrap();
    same_scale.set_rescale(false);
    assert_eq!(
        same_scale.segment_file(&img, None).unwrap().probabilities,
        s.probabilities,
        "without rescaling: as at the training scale"
    );
    // no plausible FOV (a flat image, a bright speck): segmented whole, no rescaling
    let flat = seg_data::Volume::from_image_values(40, 50, 3, vec![90.0; 40 * 50 * 3]);
    let mut speck = vec![0.0; 40 * 50 * 3];
    speck[(20 * 50 + 25) * 3] = 255.0;
    let speck = seg_data::Volume::from_image_values(40, 50, 3, speck);
    for v in [flat, speck] {
        let p = seg_c.segment_image(&v, None).unwrap().probabilities;
        assert_eq!(p.len(), 40 * 50);
        assert!(
            p.iter().all(|&x| x > 0.0),
            "nothing zeroed as outside a FOV"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
