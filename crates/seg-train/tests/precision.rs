//! Training and segmenting in bf16 (`--precision`): the run and the bundle
//! record it, it changes the arithmetic (not a no-op), it is deterministic,
//! and the bf16 masks of a trained model agree with the fp32 ones. On a CPU
//! without AVX512-BF16 the bf16 parts print `SKIP` and bf16 must be refused
//! with a typed error.

use seg_core::{Device, Precision, PrecisionChoice};
use seg_data::synthetic::SyntheticConfig;
use seg_models::ModelConfig;
use seg_train::checkpoint::load_bundle;
use seg_train::infer::SlidingWindow;
use seg_train::segment::Segmenter;
use seg_train::trainer::{DataSource, Silent, TrainConfig, Trainer};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("seg-precision-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config(out: PathBuf, precision: PrecisionChoice, epochs: usize) -> TrainConfig {
    let mut cfg = TrainConfig {
        model: ModelConfig::from_name("resunet")
            .unwrap()
            .with_base(8)
            .with_in_channels(1),
        data: DataSource::Synthetic(SyntheticConfig {
            count: 8,
            size: 64,
            seed: 5,
            noise: 0.02,
        }),
        epochs,
        steps_per_epoch: 12,
        batch: 4,
        val_count: 2,
        early_stop_patience: None,
        sliding_window: SlidingWindow {
            roi: 64,
            overlap: 0.25,
            ..Default::default()
        },
        out_dir: out,
        precision,
        ..TrainConfig::default()
    };
    cfg.sampler.size = 48;
    cfg
}

fn weights(t: &Trainer) -> Vec<Vec<f32>> {
    t.net
        .params()
        .tensors()
        .into_values()
        .map(|v| {
            let v = v.flatten_all().unwrap();
            v.to_dtype(seg_core::DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

fn bf16_here() -> bool {
    let here = seg_core::precision::bf16_kernels().is_some();
    if !here {
        eprintln!(
            "SKIP: no AVX512-BF16 ({}): bf16 training is not tested here",
            seg_core::precision::describe_cpu()
        );
    }
    here
}

#[test]
fn bf16_is_refused_with_a_typed_error_where_the_cpu_lacks_it() {
    let cfg = config(tmp("refuse"), PrecisionChoice::Bf16, 1);
    let r = Trainer::new(cfg, &Device::Cpu, false);
    if seg_core::precision::bf16_kernels().is_some() {
        assert!(r.is_ok());
    } else {
        let e = r.err().expect("bf16 without AVX512-BF16 must fail");
        assert!(e.to_string().contains("bf16"), "{e}");
    }
}

#[test]
fn a_bf16_run_is_deterministic_recorded_and_agrees_with_fp32_masks() {
    if !bf16_here() {
        return;
    }
    let never = AtomicBool::new(false);
    let run = |name: &str, p: PrecisionChoice| {
        let dir = tmp(name);
        let mut t = Trainer::new(config(dir.clone(), p, 6), &Device::Cpu, false).unwrap();
        t.run(&mut Silent, &never).unwrap();
        (t, dir)
    };
    let (a, dir_a) = run("bf16-a", PrecisionChoice::Bf16);
    let (b, _) = run("bf16-b", PrecisionChoice::Bf16);
    let (f, dir_f) = run("fp32", PrecisionChoice::Fp32);
    assert!(
        weights(&a) == weights(&b),
        "bf16 training is not repeatable"
    );
    assert!(
        weights(&a) != weights(&f),
        "bf16 training computed what fp32 does"
    );
    let (_, info) = load_bundle(&dir_a.join("best.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(info.precision, Some(Precision::Bf16));
    let (_, info) = load_bundle(&dir_f.join("best.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(info.precision, Some(Precision::Fp32));
    // both models reach a usable validation Dice
    for (t, what) in [(&a, "bf16"), (&f, "fp32")] {
        let best = t.state.best_dice.unwrap_or(0.0);
        assert!(best > 0.6, "{what} run: best validation Dice {best}");
    }

    // the fp32 model's masks in fp32 and in bf16 agree (Dice >= 0.99) on
    // synthetic images it has not seen
    let mut seg = Segmenter::open(&dir_f.join("best.safetensors"), &Device::Cpu).unwrap();
    let unseen = SyntheticConfig {
        count: 3,
        size: 96,
        seed: 77,
        noise: 0.02,
    };
    for i in 0..unseen.count {
        let s = seg_data::synthetic::generate(&unseen, i);
        // as an 8-bit picture: channel-planar to interleaved
        let (c, hw) = (s.channels, s.height * s.width);
        let values = (0..hw * c)
            .map(|i| s.image[(i % c) * hw + i / c] * 255.0)
            .collect();
        let vol = seg_data::Volume::from_image_values(s.height, s.width, c, values);
        seg.set_precision(PrecisionChoice::Fp32).unwrap();
        let m32 = seg.segment_image(&vol, None).unwrap().labels;
        seg.set_precision(PrecisionChoice::Bf16).unwrap();
        assert_eq!(seg.precision(), Precision::Bf16);
        let m16 = seg.segment_image(&vol, None).unwrap().labels;
        let inter = m32
            .iter()
            .zip(&m16)
            .filter(|(a, b)| **a > 0 && **b > 0)
            .count();
        let total = m32.iter().chain(&m16).filter(|a| **a > 0).count();
        assert!(total > 0, "empty masks");
        let dice = 2.0 * inter as f64 / total as f64;
        assert!(dice >= 0.99, "bf16 vs fp32 mask Dice {dice}");
        eprintln!("bf16 vs fp32 mask Dice {dice:.5}");
    }
}
