//! Losses and metrics against shared/reference/fixtures (made by
//! shared/reference/make_fixtures.py from shared/reference/losses.py).

use seg_core::params::read_safetensors;
use seg_core::{Tensor, Var};
use seg_train::losses::{self, Loss};
use seg_train::metrics::{self, confusion};
use serde_json::Value;
use std::path::PathBuf;

fn fixtures() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/fixtures");
    if p.is_dir() {
        Some(p)
    } else {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/dev/stderr") {
            let _ = writeln!(
                f,
                "SKIP: {} not found; loss/metric reference tests not run",
                p.display()
            );
        }
        None
    }
}

fn scalar(t: &Tensor) -> f64 {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as f64
}

#[test]
fn losses_and_bce_dice_gradient_match_pytorch() {
    let Some(dir) = fixtures() else { return };
    let (t, _) = read_safetensors(&dir.join("losses.safetensors")).unwrap();
    let (x, y) = (&t["logits"], &t["target"]);
    let cases: Vec<(&str, Tensor)> = vec![
        ("bce", losses::bce(x, y, None).unwrap()),
        ("bce_pos_weight_3", losses::bce(x, y, Some(3.0)).unwrap()),
        ("dice", losses::dice(x, y, 1.0, false).unwrap()),
        ("dice_per_image", losses::dice(x, y, 1.0, true).unwrap()),
        ("dice_smooth_1e-5", losses::dice(x, y, 1e-5, false).unwrap()),
        ("focal", losses::focal(x, y, 0.25, 2.0).unwrap()),
        (
            "focal_alpha_-1_gamma_1.5",
            losses::focal(x, y, -1.0, 1.5).unwrap(),
        ),
        ("tversky", losses::tversky(x, y, 0.3, 0.7, 1.0).unwrap()),
        (
            "bce_dice",
            Loss::from_name("bce_dice").unwrap().compute(x, y).unwrap(),
        ),
        (
            "dice_focal",
            Loss::from_name("dice_focal")
                .unwrap()
                .compute(x, y)
                .unwrap(),
        ),
    ];
    for (name, got) in cases {
        let (g, w) = (scalar(&got), scalar(&t[name]));
        assert!((g - w).abs() <= 1e-5 + 1e-5 * w.abs(), "{name}: {g} vs {w}");
    }
    let v = Var::from_tensor(x).unwrap();
    let l = Loss::from_name("bce_dice")
        .unwrap()
        .compute(v.as_tensor(), y)
        .unwrap();
    let g = l.backward().unwrap();
    let got = g
        .get(v.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let want = t["grad.bce_dice"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff <= 1e-4 * scale,
        "gradient differs by {diff} (scale {scale})"
    );
}

#[test]
fn metrics_match_the_reference_including_empty_masks() {
    let Some(dir) = fixtures() else { return };
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap();
    let thr = r["threshold"].as_f64().unwrap() as f32;
    for (k, c) in r["cases"].as_array().unwrap().iter().enumerate() {
        let prob: Vec<f32> = c["prob"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let gt: Vec<u8> = c["gt"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u8)
            .collect();
        let fov: Vec<u8> = c["fov"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u8)
            .collect();
        let counts = confusion(&prob, &gt, Some(&fov), thr);
        let want = &c["counts"];
        assert_eq!(
            (counts.tp, counts.fp, counts.fn_, counts.tn),
            (
                want["tp"].as_u64().unwrap(),
                want["fp"].as_u64().unwrap(),
                want["fn"].as_u64().unwrap(),
                want["tn"].as_u64().unwrap()
            ),
            "case {k}"
        );
        let s = serde_json::to_value(counts.scores()).unwrap();
        for key in [
            "dice",
            "iou",
            "sensitivity",
            "specificity",
            "precision",
            "accuracy",
        ] {
            let (a, b) = (s[key].as_f64().unwrap(), c["scores"][key].as_f64().unwrap());
            assert!((a - b).abs() < 1e-12, "case {k} {key}: {a} vs {b}");
        }
        let (p, g) = metrics::in_fov(&prob, &gt, Some(&fov));
        let check = |name: &str, got: Option<f64>| match (got, c[name].as_f64()) {
            (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "case {k} {name}: {a} vs {b}"),
            (None, None) => {}
            (a, b) => panic!("case {k} {name}: {a:?} vs {b:?}"),
        };
        check("auc_roc", metrics::auc_roc(&p, &g));
        check("average_precision", metrics::average_precision(&p, &g));
    }
}
