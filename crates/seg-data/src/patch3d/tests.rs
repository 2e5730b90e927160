//! Tests of `patch3d.rs`: patches, augmentation and batches in 3D.

use super::*;

/// A 3-channel case whose channels are the voxel's z, y and x, and
/// whose label is 1 on the voxel column y = 2, x = 3.
fn ramp(slices: usize, h: usize, w: usize) -> Stack {
    let n = slices * h * w;
    let image: Vec<f32> = (0..3)
        .flat_map(|c| {
            (0..n).map(move |i| {
                let zyx = [i / (h * w), (i / w) % h, i % w];
                zyx[c] as f32 + 1.0
            })
        })
        .collect();
    let mut label = vec![0u8; n];
    for z in 0..slices {
        label[z * h * w + 2 * w + 3] = 1;
    }
    Stack {
        id: "ramp".into(),
        channels: 3,
        slices,
        height: h,
        width: w,
        image,
        label: Some(label),
        spacing: [1.0; 3],
        native: [h, w],
    }
}

#[test]
fn unaugmented_patches_are_exact_crops_and_foreground_patches_hold_the_class() {
    let s = ramp(9, 10, 12);
    let index = VoxelIndex::new(std::slice::from_ref(&s), 2);
    assert_eq!(index.by_class[0].len(), 9);
    let b = random_batch_3d(
        std::slice::from_ref(&s),
        &index,
        [4, 6, 6],
        1.0,
        &Augment3::none(),
        6,
        1,
        0,
    )
    .unwrap();
    let n = 4 * 6 * 6;
    assert_eq!(b.images.len(), 6 * 3 * n);
    for p in 0..6 {
        let img = &b.images[p * 3 * n..(p + 1) * 3 * n];
        let lab = &b.labels[p * n..(p + 1) * n];
        assert!(lab.contains(&1.0), "patch {p} misses the class");
        // a crop: each voxel inside the case holds whole coordinates that
        // step by one along each patch axis (0 where the patch runs off)
        for i in 0..n {
            let (z, y, x) = (i / 36, (i / 6) % 6, i % 6);
            for (c, pos) in [(0, z), (1, y), (2, x)] {
                let v = img[c * n + i];
                assert_eq!(v.fract(), 0.0, "patch {p}: {v}");
                if v > 0.0 && pos > 0 {
                    let step = [36, 6, 1][c];
                    let prev = img[c * n + i - step];
                    assert!(prev == 0.0 || v - prev == 1.0, "{prev} {v}");
                }
            }
            if lab[i] == 1.0 {
                assert_eq!((img[n + i], img[2 * n + i]), (3.0, 4.0));
            }
        }
    }
    // the same batch again, whatever the threads
    let again = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| {
            random_batch_3d(
                std::slice::from_ref(&s),
                &index,
                [4, 6, 6],
                1.0,
                &Augment3::none(),
                6,
                1,
                0,
            )
            .unwrap()
        });
    assert_eq!(again, b);
}

#[test]
fn flips_and_rotations_move_labels_with_the_image() {
    let s = ramp(8, 8, 8);
    let index = VoxelIndex::new(std::slice::from_ref(&s), 2);
    let aug = Augment3 {
        flip_p: 1.0,
        rot90_p: 1.0,
        rotate_p: 1.0,
        scale_p: 1.0,
        brightness_p: 0.0,
        contrast_p: 0.0,
        gamma_p: 0.0,
        noise_p: 0.0,
        ..Augment3::default()
    };
    let b = random_batch_3d(
        std::slice::from_ref(&s),
        &index,
        [8, 8, 8],
        1.0,
        &aug,
        4,
        3,
        0,
    )
    .unwrap();
    let n = 512;
    let mut labelled = 0;
    for p in 0..4 {
        // wherever the label is 1, the image sampled there is near the
        // labelled column (y = 2, x = 3, stored + 1): within one voxel
        for i in 0..n {
            if b.labels[p * n + i] == 1.0 {
                labelled += 1;
                let img = &b.images[p * 3 * n..];
                let (y, x) = (img[n + i] - 1.0, img[2 * n + i] - 1.0);
                assert!((y - 2.0).abs() <= 1.0 && (x - 3.0).abs() <= 1.0, "{y} {x}");
            }
        }
    }
    assert!(labelled > 0);
}

#[test]
fn intensity_changes_keep_values_finite() {
    let mut rng = patch_rng(0, 0, 0);
    let aug = Augment3 {
        noise_p: 1.0,
        brightness_p: 1.0,
        contrast_p: 1.0,
        gamma_p: 1.0,
        ..Augment3::default()
    };
    let mut v: Vec<f32> = (0..1000).map(|i| (i as f32 / 100.0).sin()).collect();
    intensity(&mut v, &aug, &mut rng);
    assert!(v.iter().all(|x| x.is_finite()));
}

#[test]
fn the_shares_of_a_batch_make_up_the_batch() {
    // a data-parallel rank draws items r, r + N, ... alone
    let s = ramp(9, 10, 12);
    let cases = std::slice::from_ref(&s);
    let index = VoxelIndex::new(cases, 2);
    let aug = Augment3::default();
    let whole = random_batch_3d(cases, &index, [4, 6, 6], 0.5, &aug, 5, 3, 7).unwrap();
    let part = |items: &[usize]| {
        random_batch_3d_items(cases, &index, [4, 6, 6], 0.5, &aug, items, 3, 7).unwrap()
    };
    let (a, b) = (part(&[0, 2, 4]), part(&[1, 3]));
    let n = whole.images.len() / 5;
    let m = whole.labels.len() / 5;
    for (k, (p, j)) in [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]
        .into_iter()
        .enumerate()
    {
        let src = if p == 0 { &a } else { &b };
        assert_eq!(
            whole.images[k * n..(k + 1) * n],
            src.images[j * n..(j + 1) * n]
        );
        assert_eq!(
            whole.labels[k * m..(k + 1) * m],
            src.labels[j * m..(j + 1) * m]
        );
    }
}
