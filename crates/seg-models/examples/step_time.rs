//! Times forward+backward of a network on random data: `cargo run --release -p seg-models --example step_time -- resunet 16 8 64`.
use seg_core::{Device, Tensor};
use seg_models::{ModelConfig, Network};

/// Mean binary cross-entropy with logits (stable form), the loss timed here.
fn bce_with_logits_mean(logits: &Tensor, target: &Tensor) -> seg_core::candle::Result<Tensor> {
    let softplus = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let per = ((logits.relu()? - (logits * target)?)? + softplus)?;
    per.mean_all()
}
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let name = a.get(1).map(String::as_str).unwrap_or("resunet");
    let base: usize = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(16);
    let n: usize = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(8);
    let s: usize = a.get(4).and_then(|s| s.parse().ok()).unwrap_or(64);
    let cfg = ModelConfig::from_name(name)
        .unwrap()
        .with_base(base)
        .with_in_channels(1);
    let net = Network::new(&cfg, &Device::Cpu, 0).unwrap();
    let x = Tensor::randn(0f32, 1.0, (n, 1, s, s), &Device::Cpu).unwrap();
    let y = Tensor::rand(0f32, 1.0, (n, 1, s, s), &Device::Cpu)
        .unwrap()
        .ge(0.8)
        .unwrap()
        .to_dtype(seg_core::DType::F32)
        .unwrap();
    for i in 0..4 {
        let t = std::time::Instant::now();
        let out = net.forward_t(&x, true).unwrap();
        let t1 = t.elapsed();
        let loss = bce_with_logits_mean(&out, &y).unwrap();
        let _g = loss.backward().unwrap();
        println!("{i}: forward {:?} total {:?}", t1, t.elapsed());
    }
    let t = std::time::Instant::now();
    let _ = net
        .forward_t(
            &Tensor::randn(0f32, 1.0, (1, 1, 584, 565), &Device::Cpu).unwrap(),
            false,
        )
        .unwrap();
    println!("infer 584x565: {:?}", t.elapsed());
}
