//! Label-map evaluation (`seg_train::eval`) against values computed by hand
//! on known shapes, the empty-mask conventions, the per-class and overall
//! means, and the typed errors of bad label files.

use seg_train::eval::{
    evaluate_labels, summarise_labels, surface_metrics, ClassMetrics, LabelMap, SurfaceMetrics,
};
use seg_train::Error;
use std::path::{Path, PathBuf};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// A row-major `[z, y, x]` grid with `class` in the box `lo..hi` (exclusive).
fn paint(labels: &mut [u32], dims: [usize; 3], lo: [usize; 3], hi: [usize; 3], class: u32) {
    for z in lo[0]..hi[0] {
        for y in lo[1]..hi[1] {
            for x in lo[2]..hi[2] {
                labels[(z * dims[1] + y) * dims[2] + x] = class;
            }
        }
    }
}

fn boxes(dims: [usize; 3], items: &[([usize; 3], [usize; 3], u32)]) -> Vec<u32> {
    let mut l = vec![0; dims.iter().product()];
    for &(lo, hi, c) in items {
        paint(&mut l, dims, lo, hi, c);
    }
    l
}

fn class(m: &[ClassMetrics], c: u32) -> &ClassMetrics {
    m.iter().find(|x| x.class == c).expect("class present")
}

/// The surface distances of a 4×4×4 cube and the same cube moved by two
/// voxels along axis `a`, counted by hand. Each cube has 56 surface voxels
/// (64 less the 2×2×2 inside). From the first to the second: the 16 of the
/// far face are 2 steps away (2·s_a), the 12 surface voxels of the next layer
/// 1 step (s_a), the 12 + 12 of the two overlapping layers that lie on the
/// other cube's side faces 0, and the 4 face-centre voxels of the overlap's
/// end layer one step from the other cube's surface along any axis
/// (min spacing). By symmetry the other direction is the same.
fn shifted_cube_distances(s_a: f64, s_min: f64) -> Vec<f64> {
    let mut d = vec![0.0; 24];
    d.extend([s_a; 12]);
    d.extend([s_min; 4]);
    d.extend([2.0 * s_a; 16]);
    d
}

#[test]
fn cubes_offset_along_each_axis_with_anisotropic_spacing() {
    let dims = [9, 9, 9];
    let sp = [2.0, 1.0, 0.5];
    for axis in 0..3 {
        let mut lo = [2; 3];
        let mut hi = [6; 3];
        let gt = LabelMap::new(dims, sp, boxes(dims, &[(lo, hi, 1)])).unwrap();
        lo[axis] += 2;
        hi[axis] += 2;
        let pred = LabelMap::new(dims, sp, boxes(dims, &[(lo, hi, 1)])).unwrap();
        for tol in [0.0, 0.5, 1.0, 2.0, 4.0] {
            let r = evaluate_labels("cube", &pred, &gt, tol).unwrap();
            assert_eq!(r.classes.len(), 1);
            let m = &r.classes[0];
            let d = shifted_cube_distances(sp[axis], 0.5);
            assert_eq!(d.len(), 56);
            let within = d.iter().filter(|&&x| x <= tol).count() as f64 / 56.0;
            let asd = d.iter().sum::<f64>() / 56.0;
            assert!(close(m.dice, 0.5), "axis {axis}: {m:?}");
            assert!(close(m.iou, 1.0 / 3.0), "axis {axis}: {m:?}");
            // the 95th percentile of 56 sorted values sits between the 53rd
            // and 54th: both in the top 16, 2·s_a
            assert!(close(m.hd95.unwrap(), 2.0 * sp[axis]), "axis {axis}: {m:?}");
            assert!(close(m.asd.unwrap(), asd), "axis {axis}: {m:?} vs {asd}");
            assert!(
                close(m.nsd.unwrap(), within),
                "axis {axis} tolerance {tol}: {m:?} vs {within}"
            );
            // voxel volume 2 · 1 · 0.5 = 1 mm³
            assert_eq!((m.pred_voxels, m.ref_voxels), (64, 64));
            assert!(close(m.pred_volume_mm3, 64.0) && close(m.volume_diff_mm3, 0.0));
            assert_eq!(m.relative_volume_diff, Some(0.0));
        }
    }
}

#[test]
fn hand_computed_values_at_one_tolerance() {
    // the same numbers written out, for a reader who checks them by hand:
    // shift along x (0.5 mm): distances 0 ×24, 0.5 ×16, 1 ×16 per direction
    let dims = [9, 9, 9];
    let sp = [2.0, 1.0, 0.5];
    let gt = LabelMap::new(dims, sp, boxes(dims, &[([2, 2, 2], [6, 6, 6], 1)])).unwrap();
    let pred = LabelMap::new(dims, sp, boxes(dims, &[([2, 2, 4], [6, 6, 8], 1)])).unwrap();
    let m = &evaluate_labels("x", &pred, &gt, 0.5).unwrap().classes[0];
    assert!(close(m.hd95.unwrap(), 1.0));
    assert!(close(m.asd.unwrap(), 24.0 / 56.0));
    assert!(close(m.nsd.unwrap(), 40.0 / 56.0));
    // shift along z (2 mm): 0 ×24, 0.5 ×4, 2 ×12, 4 ×16
    let pred = LabelMap::new(dims, sp, boxes(dims, &[([4, 2, 2], [8, 6, 6], 1)])).unwrap();
    let m = &evaluate_labels("z", &pred, &gt, 1.0).unwrap().classes[0];
    assert!(close(m.hd95.unwrap(), 4.0));
    assert!(close(m.asd.unwrap(), 90.0 / 56.0));
    assert!(close(m.nsd.unwrap(), 0.5));
}

#[test]
fn hd95_interpolates_between_order_statistics() {
    // one row of 40 pixels, 0.5 mm apart: the reference is the pixel at 0,
    // the prediction every other pixel (20 isolated pixels, each its own
    // surface). Prediction → reference: 0, 1, 2, …, 19 mm; reference →
    // prediction: 0. The 95th percentile of the 20 sorted values sits at
    // 0.95 · 19 = 18.05: 18 + 0.05 · (19 − 18) = 18.05 mm (the 90th would
    // be 17.1, the maximum 19).
    let dims = [1, 1, 40];
    let sp = [1.0, 1.0, 0.5];
    let gt: Vec<bool> = (0..40).map(|x| x == 0).collect();
    let pred: Vec<bool> = (0..40).map(|x| x % 2 == 0).collect();
    let m = surface_metrics(&pred, &gt, dims, sp, 2.0);
    assert!(close(m.hd95.unwrap(), 18.05), "{m:?}");
    // ASD: (0 + 1 + … + 19) / (20 + 1)
    assert!(close(m.asd.unwrap(), 190.0 / 21.0), "{m:?}");
    // NSD at 2 mm: 0, 1, 2 of the prediction and the reference pixel
    assert!(close(m.nsd.unwrap(), 4.0 / 21.0), "{m:?}");
    // the same through label maps
    let l = |mask: &[bool]| mask.iter().map(|&b| b as u32).collect::<Vec<_>>();
    let r = evaluate_labels(
        "row",
        &LabelMap::new(dims, sp, l(&pred)).unwrap(),
        &LabelMap::new(dims, sp, l(&gt)).unwrap(),
        2.0,
    )
    .unwrap();
    assert!(close(r.classes[0].hd95.unwrap(), 18.05));
}

#[test]
fn volume_differences_use_the_voxel_volume() {
    let dims = [8, 8, 12];
    let sp = [2.0, 1.5, 0.5]; // 1.5 mm³ per voxel
    let gt = LabelMap::new(dims, sp, boxes(dims, &[([2, 2, 2], [6, 6, 8], 3)])).unwrap();
    let pred = LabelMap::new(dims, sp, boxes(dims, &[([2, 2, 2], [6, 6, 6], 3)])).unwrap();
    let m = &evaluate_labels("v", &pred, &gt, 1.0).unwrap().classes[0];
    assert_eq!(m.class, 3);
    assert_eq!((m.pred_voxels, m.ref_voxels), (64, 96));
    assert!(close(m.pred_volume_mm3, 96.0) && close(m.ref_volume_mm3, 144.0));
    assert!(close(m.volume_diff_mm3, -48.0) && close(m.volume_diff_ml, -0.048));
    assert!(close(m.relative_volume_diff.unwrap(), -1.0 / 3.0));
    assert!(close(m.dice, 128.0 / 160.0) && close(m.iou, 64.0 / 96.0));
}

#[test]
fn a_sphere_against_itself_is_perfect() {
    let dims = [11, 13, 15];
    let sp = [1.3, 0.8, 0.6];
    let mut l = vec![0u32; dims.iter().product()];
    for z in 0..dims[0] {
        for y in 0..dims[1] {
            for x in 0..dims[2] {
                let r2 = [(z, 5.0, sp[0]), (y, 6.0, sp[1]), (x, 7.0, sp[2])]
                    .iter()
                    .map(|&(i, c, s)| ((i as f64 - c) * s).powi(2))
                    .sum::<f64>();
                if r2 <= 16.0 {
                    l[(z * dims[1] + y) * dims[2] + x] = 7;
                }
            }
        }
    }
    let n = l.iter().filter(|&&v| v == 7).count() as u64;
    assert!(n > 100);
    let a = LabelMap::new(dims, sp, l).unwrap();
    let r = evaluate_labels("sphere", &a, &a.clone(), 0.0).unwrap();
    let m = class(&r.classes, 7);
    assert_eq!((m.dice, m.iou), (1.0, 1.0));
    assert_eq!((m.hd95, m.asd, m.nsd), (Some(0.0), Some(0.0), Some(1.0)));
    assert_eq!((m.pred_voxels, m.ref_voxels), (n, n));
    assert!(close(m.ref_volume_mm3, n as f64 * 1.3 * 0.8 * 0.6));
    assert_eq!(
        (m.volume_diff_mm3, m.relative_volume_diff),
        (0.0, Some(0.0))
    );
}

#[test]
fn one_empty_and_both_empty() {
    let dims = [1, 10, 10];
    let sp = [1.0, 1.0, 1.0];
    // the reference holds class 1 only, the prediction class 2 only
    let gt = LabelMap::new(dims, sp, boxes(dims, &[([0, 1, 1], [1, 4, 4], 1)])).unwrap();
    let pred = LabelMap::new(dims, sp, boxes(dims, &[([0, 5, 5], [1, 7, 7], 2)])).unwrap();
    let r = evaluate_labels("one", &pred, &gt, 1.0).unwrap();
    assert_eq!(
        r.classes.iter().map(|m| m.class).collect::<Vec<_>>(),
        [1, 2]
    );
    let missed = class(&r.classes, 1);
    assert_eq!((missed.dice, missed.iou), (0.0, 0.0));
    assert_eq!(
        (missed.hd95, missed.asd, missed.nsd),
        (None, None, Some(0.0))
    );
    assert_eq!((missed.pred_voxels, missed.ref_voxels), (0, 9));
    assert_eq!(missed.volume_diff_mm3, -9.0);
    assert_eq!(missed.relative_volume_diff, Some(-1.0));
    let spurious = class(&r.classes, 2);
    assert_eq!((spurious.dice, spurious.iou), (0.0, 0.0));
    assert_eq!((spurious.hd95, spurious.asd), (None, None));
    assert_eq!(spurious.volume_diff_mm3, 4.0);
    assert_eq!(spurious.relative_volume_diff, None);

    // a case holding neither class of the other case: both empty there
    let empty = LabelMap::new(dims, sp, vec![0; 100]).unwrap();
    let e = evaluate_labels("empty", &empty, &empty, 1.0).unwrap();
    assert!(e.classes.is_empty());
    let s = summarise_labels(vec![r, e], 1.0);
    assert_eq!(s.classes, [1, 2]);
    let both = class(&s.cases[1].classes, 1);
    assert_eq!(*both, ClassMetrics::both_empty(1));
    assert_eq!((both.dice, both.iou), (1.0, 1.0));
    assert_eq!((both.hd95, both.asd, both.nsd), (None, None, None));
    // class 1: Dice (0 + 1) / 2; NSD only over the case where it is defined
    assert!(close(s.per_class[0].dice, 0.5));
    assert_eq!(
        (s.per_class[0].nsd, s.per_class[0].nsd_cases),
        (Some(0.0), 1)
    );
    assert_eq!(
        (s.per_class[0].hd95, s.per_class[0].distance_cases),
        (None, 0)
    );
    // everything empty everywhere: no class, nothing to average
    let s = summarise_labels(
        vec![evaluate_labels("e", &empty, &empty, 1.0).unwrap()],
        1.0,
    );
    assert!(s.classes.is_empty() && s.mean.dice.is_none());

    // the binary-mask entry point follows the same conventions
    let none = vec![false; 100];
    let some: Vec<bool> = (0..100).map(|i| i == 55).collect();
    assert_eq!(
        surface_metrics(&none, &none, dims, sp, 1.0),
        SurfaceMetrics::BOTH_EMPTY
    );
    assert_eq!(
        surface_metrics(&some, &none, dims, sp, 1.0),
        SurfaceMetrics::ONE_EMPTY
    );
}

#[test]
fn means_per_class_skip_undefined_distances() {
    let dims = [9, 20, 12];
    let sp = [2.0, 1.0, 0.5];
    let c1 = ([2, 2, 2], [6, 6, 6], 1);
    let c2 = ([2, 11, 2], [6, 15, 6], 2);
    // case a: class 1 exact, no class 2 anywhere
    let a_gt = LabelMap::new(dims, sp, boxes(dims, &[c1])).unwrap();
    let a = evaluate_labels("a", &a_gt.clone(), &a_gt, 1.0).unwrap();
    // case b: class 1 moved 2 voxels along x, class 2 moved 2 voxels along y
    let b_gt = LabelMap::new(dims, sp, boxes(dims, &[c1, c2])).unwrap();
    let b_pred = LabelMap::new(
        dims,
        sp,
        boxes(
            dims,
            &[([2, 2, 4], [6, 6, 8], 1), ([2, 13, 2], [6, 17, 6], 2)],
        ),
    )
    .unwrap();
    let b = evaluate_labels("b", &b_pred, &b_gt, 1.0).unwrap();
    let s = summarise_labels(vec![a, b], 1.0);
    assert_eq!(s.classes, [1, 2]);
    assert!(s.cases.iter().all(|c| c.classes.len() == 2));
    let (k1, k2) = (&s.per_class[0], &s.per_class[1]);
    // class 1: (1 + 0.5) / 2 over both cases; distances (0 + 1) / 2 and (0 + 24/56) / 2
    assert_eq!((k1.cases, k1.distance_cases), (2, 2));
    assert!(close(k1.dice, 0.75) && close(k1.iou, (1.0 + 1.0 / 3.0) / 2.0));
    assert!(close(k1.hd95.unwrap(), 0.5));
    assert!(close(k1.asd.unwrap(), 12.0 / 56.0));
    assert!(close(k1.nsd.unwrap(), 1.0));
    // class 2: Dice over both cases (case a both empty: 1), distances from case b only
    let d = shifted_cube_distances(1.0, 0.5);
    let asd2 = d.iter().sum::<f64>() / 56.0;
    let nsd2 = d.iter().filter(|&&x| x <= 1.0).count() as f64 / 56.0;
    assert_eq!((k2.cases, k2.distance_cases, k2.nsd_cases), (2, 1, 1));
    assert!(close(k2.dice, 0.75));
    assert!(close(k2.hd95.unwrap(), 2.0));
    assert!(close(k2.asd.unwrap(), asd2));
    assert!(close(k2.nsd.unwrap(), nsd2));
    // overall: the mean of the two class means
    assert!(close(s.mean.dice.unwrap(), 0.75));
    assert!(close(s.mean.hd95.unwrap(), 1.25));
    assert!(close(s.mean.asd.unwrap(), (12.0 / 56.0 + asd2) / 2.0));
    assert!(close(s.mean.nsd.unwrap(), (1.0 + nsd2) / 2.0));
    // the CSV: 2 cases × 2 classes, 2 class means, the overall mean
    let csv = s.to_csv();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + 4 + 2 + 1, "{csv}");
    assert!(lines[0].starts_with("id,class,dice,iou,hd95,asd,nsd,"));
    assert!(
        lines[2].starts_with("a,2,1.000000,1.000000,,,,0,0,"),
        "{csv}"
    );
    assert!(
        lines[3].starts_with("b,1,0.500000,0.333333,1.000000,"),
        "{csv}"
    );
    assert!(lines[7].starts_with("mean,all,0.750000,"), "{csv}");
}

// ---- files ----

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("seg-train-eval-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A NIfTI-1 file of int16 voxels written byte by byte (seg-data writes
/// float32 only): dims `[nx, ny, nz]`, pixdim, values x fastest.
fn write_int16_nifti(path: &Path, dims: [usize; 3], pixdim: [f32; 3], values: &[i16]) {
    let mut h = vec![0u8; 352];
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    let dim: [i16; 8] = [
        3,
        dims[0] as i16,
        dims[1] as i16,
        dims[2] as i16,
        1,
        1,
        1,
        1,
    ];
    for (i, d) in dim.iter().enumerate() {
        h[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    h[70..72].copy_from_slice(&4i16.to_le_bytes()); // DT_INT16
    h[72..74].copy_from_slice(&16i16.to_le_bytes()); // bitpix
    let pd = [1.0f32, pixdim[0], pixdim[1], pixdim[2], 1.0, 1.0, 1.0, 1.0];
    for (i, p) in pd.iter().enumerate() {
        h[76 + 4 * i..80 + 4 * i].copy_from_slice(&p.to_le_bytes());
    }
    h[108..112].copy_from_slice(&352f32.to_le_bytes()); // vox_offset
    h[344..348].copy_from_slice(b"n+1\0");
    for v in values {
        h.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, h).unwrap();
}

fn diag(sp: [f64; 3]) -> [[f64; 4]; 4] {
    [
        [sp[0], 0.0, 0.0, 0.0],
        [0.0, sp[1], 0.0, 0.0],
        [0.0, 0.0, sp[2], 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

#[test]
fn label_files_of_any_stored_type_read_as_integers() {
    let d = temp_dir("types");
    // int16 NIfTI [nx 4, ny 3, nz 2]: value at (x, y, z) = x + 10 y + 100 z (mod 7 to stay small)
    let (nx, ny, nz) = (4, 3, 2);
    let val = |x: usize, y: usize, z: usize| ((x + 10 * y + 100 * z) % 7) as i16;
    let mut vals = Vec::new();
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                vals.push(val(x, y, z));
            }
        }
    }
    let p = d.join("int16.nii");
    write_int16_nifti(&p, [nx, ny, nz], [0.5, 0.75, 2.0], &vals);
    let m = LabelMap::read(&p).unwrap();
    assert_eq!(m.dims(), [nz, ny, nx]);
    assert_eq!(m.spacing(), [2.0, 0.75, 0.5]);
    assert_eq!(m.file_shape, [nx, ny, nz]);
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                assert_eq!(m.labels()[(z * ny + y) * nx + x], val(x, y, z) as u32);
            }
        }
    }
    // float32 NIfTI holding integers, with spacing from the affine
    let p = d.join("float.nii.gz");
    let f: Vec<f32> = vals.iter().map(|&v| v as f32).collect();
    seg_data::io::nifti::write_nifti(&p, &[nx, ny, nz], &f, &diag([0.5, 0.75, 2.0])).unwrap();
    let g = LabelMap::read(&p).unwrap();
    assert_eq!(g.labels(), m.labels());
    assert_eq!(g.spacing(), m.spacing());
    // an 8-bit PNG: [1, h, w], spacing 1
    let p = d.join("labels.png");
    seg_data::io::image2d::write_png_u8(&p, 2, 3, 1, &[0, 1, 2, 3, 0, 9]).unwrap();
    let i = LabelMap::read(&p).unwrap();
    assert_eq!((i.dims(), i.spacing()), ([1, 2, 3], [1.0; 3]));
    assert_eq!(i.labels(), [0, 1, 2, 3, 0, 9]);
    assert_eq!(i.classes().into_iter().collect::<Vec<_>>(), [1, 2, 3, 9]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_label_files_are_typed_errors_naming_the_file() {
    let d = temp_dir("bad");
    let id = diag([1.0; 3]);
    // a value that is not an integer: the file, the value and its index
    let p = d.join("frac.nii.gz");
    let mut v = vec![0.0f32; 24];
    v[13] = 1.5;
    seg_data::io::nifti::write_nifti(&p, &[4, 3, 2], &v, &id).unwrap();
    match LabelMap::read(&p) {
        Err(e @ Error::LabelValue { .. }) => {
            let Error::LabelValue { path, index, value } = &e else {
                unreachable!()
            };
            assert_eq!((path, *index, *value), (&p, 13, 1.5));
            let msg = e.to_string();
            assert!(
                msg.contains("frac.nii.gz") && msg.contains("1.5") && msg.contains("13"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    // a negative value
    let p = d.join("neg.nii");
    v[13] = -2.0;
    seg_data::io::nifti::write_nifti(&p, &[4, 3, 2], &v, &id).unwrap();
    assert!(matches!(
        LabelMap::read(&p),
        Err(Error::LabelValue { index: 13, .. })
    ));
    // NaN
    v[13] = f32::NAN;
    seg_data::io::nifti::write_nifti(&p, &[4, 3, 2], &v, &id).unwrap();
    assert!(matches!(
        LabelMap::read(&p),
        Err(Error::LabelValue { index: 13, .. })
    ));
    // a colour image
    let p = d.join("rgb.png");
    seg_data::io::image2d::write_png_u8(&p, 1, 2, 3, &[1, 2, 3, 4, 5, 6]).unwrap();
    match LabelMap::read(&p) {
        Err(Error::LabelMap { path, field, .. }) => assert_eq!((path, field), (p, "channels")),
        other => panic!("{other:?}"),
    }
    // a 4D volume with more than one time point
    let p = d.join("4d.nii");
    seg_data::io::nifti::write_nifti(&p, &[2, 2, 1, 3], &[0.0; 12], &id).unwrap();
    assert!(matches!(
        LabelMap::read(&p),
        Err(Error::LabelMap { field: "shape", .. })
    ));
    // trailing axes of size 1 are fine
    seg_data::io::nifti::write_nifti(&p, &[2, 2, 3, 1], &[0.0; 12], &id).unwrap();
    assert_eq!(LabelMap::read(&p).unwrap().dims(), [3, 2, 2]);
    // prediction and reference of different shapes: both files named
    let (a, b) = (d.join("pred.nii"), d.join("gt.nii"));
    seg_data::io::nifti::write_nifti(&a, &[4, 3, 2], &[0.0; 24], &id).unwrap();
    seg_data::io::nifti::write_nifti(&b, &[3, 4, 2], &[0.0; 24], &id).unwrap();
    let e = seg_train::eval::evaluate_label_files("x", &a, &b, 1.0).unwrap_err();
    match &e {
        Error::LabelShape {
            pred,
            gt,
            pred_shape,
            gt_shape,
        } => {
            assert_eq!((pred, gt), (&a, &b));
            assert_eq!(
                (pred_shape.as_slice(), gt_shape.as_slice()),
                (&[4, 3, 2][..], &[3, 4, 2][..])
            );
        }
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.contains("pred.nii") && msg.contains("gt.nii"), "{msg}");
    // same shape, another spacing
    seg_data::io::nifti::write_nifti(&b, &[4, 3, 2], &[0.0; 24], &diag([1.0, 1.0, 3.0])).unwrap();
    assert!(matches!(
        seg_train::eval::evaluate_label_files("x", &a, &b, 1.0),
        Err(Error::LabelSpacing { .. })
    ));
    // a tolerance that is not a distance
    let m = LabelMap::new([1, 1, 1], [1.0; 3], vec![0]).unwrap();
    for t in [-1.0, f64::NAN] {
        assert!(matches!(
            evaluate_labels("x", &m, &m, t),
            Err(Error::Setting { .. })
        ));
    }
    // in-memory maps are checked too
    assert!(matches!(
        LabelMap::new([1, 2, 2], [1.0; 3], vec![0; 3]),
        Err(Error::LabelMap { .. })
    ));
    assert!(matches!(
        LabelMap::new([1, 1, 1], [1.0, 0.0, 1.0], vec![0]),
        Err(Error::LabelMap { .. })
    ));
    std::fs::remove_dir_all(&d).unwrap();
}
