use super::*;
use rand::SeedableRng;

/// A sample whose image encodes its label: image = 10 × label + channel.
fn coded(h: usize, w: usize) -> Sample {
    let label: Vec<u8> = (0..h * w)
        .map(|i| (i / w + 2 * (i % w)).is_multiple_of(5) as u8)
        .collect();
    let mut image = Vec::new();
    for c in 0..2 {
        image.extend(label.iter().map(|&l| 10.0 * l as f32 + c as f32));
    }
    Sample {
        id: "t".into(),
        image,
        channels: 2,
        height: h,
        width: w,
        label: Some(label),
        fov: Some(vec![1; h * w]),
    }
}

fn assert_moved_together(s: &Sample) {
    let n = s.height * s.width;
    let label = s.label.as_ref().unwrap();
    for (i, &l) in label.iter().enumerate() {
        for c in 0..s.channels {
            assert_eq!(
                s.image[c * n + i],
                10.0 * l as f32 + c as f32,
                "pixel {i} channel {c}"
            );
        }
    }
}

#[test]
fn flips_and_rot90_move_image_and_label_together_exactly() {
    let mut s = coded(5, 7);
    let before = s.clone();
    flip_h(&mut s);
    assert_moved_together(&s);
    assert_eq!(
        s.label.as_ref().unwrap()[0],
        before.label.as_ref().unwrap()[6]
    );
    flip_h(&mut s);
    assert_eq!(s, before);
    rot90(&mut s, 1);
    assert_eq!((s.height, s.width), (7, 5));
    assert_moved_together(&s);
    // rot90 ccw: new (0, 0) is old (0, w-1)
    assert_eq!(
        s.label.as_ref().unwrap()[0],
        before.label.as_ref().unwrap()[6]
    );
    rot90(&mut s, 3);
    assert_eq!(s, before);
    flip_v(&mut s);
    flip_v(&mut s);
    assert_eq!(s, before);
}

#[test]
fn geometric_warps_keep_label_and_image_aligned() {
    // a blob: after any warp, label pixels must sit where the image is bright
    let (h, w) = (48, 48);
    let label: Vec<u8> = (0..h * w)
        .map(|i| {
            let (y, x) = ((i / w) as f32 - 20.0, (i % w) as f32 - 28.0);
            (y * y + x * x < 64.0) as u8
        })
        .collect();
    let image: Vec<f32> = label.iter().map(|&l| l as f32).collect();
    let base = Sample {
        id: "b".into(),
        image,
        channels: 1,
        height: h,
        width: w,
        label: Some(label),
        fov: None,
    };
    let cfg = AugmentConfig {
        rotate_p: 1.0,
        rotate_max_deg: 40.0,
        scale_p: 1.0,
        scale_range: (0.8, 1.2),
        elastic_p: 1.0,
        grid_p: 1.0,
        gamma_p: 0.0,
        brightness_contrast_p: 0.0,
        noise_p: 0.0,
        ..AugmentConfig::default()
    };
    for seed in 0..10 {
        let mut s = base.clone();
        augment(&mut s, &cfg, &mut ChaCha8Rng::seed_from_u64(seed));
        let label = s.label.as_ref().unwrap();
        let fg: Vec<f32> = (0..h * w)
            .filter(|&i| label[i] == 1)
            .map(|i| s.image[i])
            .collect();
        let bg: Vec<f32> = (0..h * w)
            .filter(|&i| label[i] == 0)
            .map(|i| s.image[i])
            .collect();
        assert!(fg.len() > 50, "seed {seed}: blob lost");
        let mean_fg = fg.iter().sum::<f32>() / fg.len() as f32;
        let mean_bg = bg.iter().sum::<f32>() / bg.len() as f32;
        assert!(
            mean_fg > 0.8 && mean_bg < 0.05,
            "seed {seed}: image and label moved apart ({mean_fg}, {mean_bg})"
        );
        assert_ne!(s.label, base.label, "seed {seed}: nothing moved");
    }
}

#[test]
fn same_seed_same_result_and_photometric_leaves_masks_alone() {
    let base = coded(16, 16);
    let cfg = AugmentConfig {
        elastic_p: 0.5,
        grid_p: 0.5,
        ..AugmentConfig::default()
    };
    let run = |seed| {
        let mut s = base.clone();
        augment(&mut s, &cfg, &mut ChaCha8Rng::seed_from_u64(seed));
        s
    };
    assert_eq!(run(5), run(5));
    let photo = AugmentConfig {
        gamma_p: 1.0,
        brightness_contrast_p: 1.0,
        noise_p: 1.0,
        ..AugmentConfig::none()
    };
    let mut s = base.clone();
    augment(&mut s, &photo, &mut ChaCha8Rng::seed_from_u64(1));
    assert_eq!(s.label, base.label);
    assert_ne!(s.image, base.image);
}

/// Total variation of the first channel: how much neighbouring pixels differ.
fn variation(s: &Sample) -> f32 {
    let (h, w) = (s.height, s.width);
    let mut tv = 0.0;
    for y in 0..h {
        for x in 1..w {
            tv += (s.image[y * w + x] - s.image[y * w + x - 1]).abs();
        }
    }
    tv
}

#[test]
fn blur_and_lower_resolution_soften_the_image_only() {
    let base = coded(24, 20);
    for (name, cfg) in [
        (
            "blur",
            AugmentConfig {
                blur_p: 1.0,
                blur_sigma: (1.0, 1.0),
                ..AugmentConfig::none()
            },
        ),
        (
            "lowres",
            AugmentConfig {
                lowres_p: 1.0,
                lowres_range: (0.5, 0.5),
                ..AugmentConfig::none()
            },
        ),
    ] {
        let mut s = base.clone();
        augment(&mut s, &cfg, &mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(s.label, base.label, "{name}");
        assert_eq!(s.fov, base.fov, "{name}");
        assert_eq!((s.height, s.width), (base.height, base.width), "{name}");
        let (before, after) = (variation(&base), variation(&s));
        assert!(
            after < 0.8 * before,
            "{name}: variation {before} -> {after}"
        );
        // the mean brightness stays (both are averages of the image)
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        let (m0, m1) = (mean(&base.image), mean(&s.image));
        assert!((m0 - m1).abs() < 0.05 * m0, "{name}: mean {m0} -> {m1}");
    }
    // off by default, and then no random draw is taken for them
    let d = AugmentConfig::default();
    assert_eq!((d.blur_p, d.lowres_p), (0.0, 0.0));
    let mut a = ChaCha8Rng::seed_from_u64(9);
    let mut s = base.clone();
    augment(&mut s, &AugmentConfig::none(), &mut a);
    let mut b = ChaCha8Rng::seed_from_u64(9);
    let mut t = base.clone();
    let off = AugmentConfig {
        blur_sigma: (3.0, 4.0),
        lowres_range: (0.1, 0.2),
        ..AugmentConfig::none()
    };
    augment(&mut t, &off, &mut b);
    assert_eq!(a.random::<u64>(), b.random::<u64>());
    assert_eq!(s, t);
}
