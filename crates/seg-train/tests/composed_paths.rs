//! The code a GPU runs, run on the CPU: `seg_core::ops::force_composed`
//! makes every seg-core operation take its composed path (candle's ops, the
//! `*_reference` twins, no BatchNorm folding) as on a CUDA or Metal device.
//! The sliding-window predictions of trained-like 2D and 3D networks must
//! be those of the CPU kernels (each op pair is also tested alone in
//! seg-core). Its own test binary: the switch is process-wide.

use seg_core::{Device, Tensor};
use seg_models::{ModelConfig, Network};
use seg_train::infer::{predict, predict_volume, SlidingWindow};

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// A network with non-trivial BatchNorm statistics: a few training-mode
/// passes move the running mean and variance away from 0 and 1.
fn network(dims: usize, model: &str, classes: usize, shape: &[usize]) -> Network {
    let cfg = ModelConfig::from_name(model)
        .unwrap()
        .with_base(4)
        .with_in_channels(1)
        .with_out_channels(classes)
        .with_dims(dims);
    let net = Network::new(&cfg, &Device::Cpu, 7).unwrap();
    for s in 0..3u64 {
        let x = (Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap() * (1.0 + s as f64))
            .unwrap()
            .affine(1.0, 0.3)
            .unwrap();
        net.forward_t(&x, true).unwrap();
    }
    net
}

#[test]
fn composed_paths_predict_what_the_cpu_kernels_predict() {
    // 3D: the Hippocampus plan's network kind, tiles and flips
    let net = network(3, "unet", 3, &[2, 1, 16, 16, 16]);
    let model = net.inference_model().unwrap();
    let (d, h, w) = (20, 24, 28);
    let img: Vec<f32> = (0..d * h * w)
        .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
        .collect();
    let sw = SlidingWindow {
        roi3: Some([16, 16, 16]),
        overlap: 0.5,
        tta: true,
        ..SlidingWindow::default()
    };
    let run = |composed: bool| {
        seg_core::ops::force_composed(composed);
        let r = predict_volume(&model, &img, 1, [d, h, w], &sw, &Device::Cpu).unwrap();
        seg_core::ops::force_composed(false);
        r
    };
    let ((a, ka), (b, kb)) = (run(false), run(true));
    assert_eq!((ka, kb), (3, 3));
    let diff = max_diff(&a, &b);
    eprintln!("3D unet, 3 classes: kernels vs composed: max probability difference {diff:.2e}");
    assert!(diff < 1e-4, "3D: {diff}");
    // 2D: every network, binary, one image through the sliding window
    for name in ["unet", "resunet", "attention_unet", "unetpp"] {
        let net = network(2, name, 1, &[2, 1, 32, 32]);
        let model = net.inference_model().unwrap();
        let (h, w) = (70, 52);
        let img: Vec<f32> = (0..h * w)
            .map(|i| ((i * 13 % 31) as f32) / 15.0 - 1.0)
            .collect();
        let sw = SlidingWindow {
            roi: 32,
            overlap: 0.5,
            tta: true,
            ..SlidingWindow::default()
        };
        let run = |composed: bool| {
            seg_core::ops::force_composed(composed);
            let r = predict(&model, &img, 1, h, w, &sw, &Device::Cpu).unwrap();
            seg_core::ops::force_composed(false);
            r
        };
        let ((a, _), (b, _)) = (run(false), run(true));
        let diff = max_diff(&a, &b);
        eprintln!("2D {name}: kernels vs composed: max probability difference {diff:.2e}");
        assert!(diff < 1e-4, "2D {name}: {diff}");
    }
}
