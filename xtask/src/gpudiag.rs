//! `cargo xtask gpu-diag`: where a device's results part from the CPU's.
//! For a bundle, runs the same work on the CPU and on `--device` and prints
//! the largest difference relative to the CPU result's largest magnitude:
//! the network's eval forward pass on random tiles of several batch sizes
//! and sides (both the inference model, weights without gradients, and the
//! network with tracked weights), `flip` along each axis, the softmax /
//! sigmoid, and the whole segmentation of `--input` files with and
//! without test-time flips (probabilities, and the share of labels that
//! differ).

use anyhow::Result;
use seg_core::{Device, Tensor};
use std::path::PathBuf;

pub struct GpuDiag {
    pub bundle: PathBuf,
    pub inputs: Vec<PathBuf>,
    pub device: String,
}

fn rel(cpu: &Tensor, dev: &Tensor) -> Result<f64> {
    let a = cpu.flatten_all()?.to_vec1::<f32>()?;
    let b = dev
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(rel_vec(&a, &b))
}

fn rel_vec(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let scale = a.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-12);
    let d = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()));
    d / scale
}

pub fn run(o: &GpuDiag) -> Result<()> {
    let dev = seg_core::parse_device(&o.device)?;
    let cpu = Device::Cpu;
    let (net_c, _) = seg_train::checkpoint::load_bundle(&o.bundle, &cpu)?;
    let (net_d, _) = seg_train::checkpoint::load_bundle(&o.bundle, &dev)?;
    let (mc, md) = (net_c.inference_model()?, net_d.inference_model()?);
    let dims = net_c.config().dims();
    let cin = net_c.config().in_channels();
    println!(
        "gpu-diag: {} ({dims}D, {cin} input channels) on cpu and {}",
        o.bundle.display(),
        o.device
    );
    let shapes: Vec<Vec<usize>> = if dims == 3 {
        vec![
            vec![1, cin, 16, 16, 16],
            vec![1, cin, 40, 40, 56],
            vec![2, cin, 40, 40, 56],
            vec![4, cin, 40, 40, 56],
            vec![1, cin, 64, 64, 64],
        ]
    } else {
        vec![
            vec![1, cin, 64, 64],
            vec![4, cin, 64, 64],
            vec![1, cin, 256, 256],
            vec![8, cin, 128, 128],
            vec![1, cin, 584, 565],
        ]
    };
    for shape in &shapes {
        let x = Tensor::randn(0f32, 1.0, shape.as_slice(), &cpu)?;
        let xd = x.to_device(&dev)?;
        let yc = seg_core::on_worker(|| mc.forward_t(&x, false))?;
        let yd = md.forward_t(&xd, false)?;
        let yn = net_d.forward_t(&xd, false)?;
        println!(
            "forward {shape:?}: inference model {:.2e}, tracked network {:.2e}",
            rel(&yc, &yd)?,
            rel(&yc, &yn)?
        );
        let k = yc.dim(1)?;
        let (pc, pd) = if k == 1 {
            (
                seg_core::ops::sigmoid(&yc)?,
                seg_core::ops::sigmoid(&yc.to_device(&dev)?)?,
            )
        } else {
            (
                seg_core::nn::ops::softmax(&yc, 1)?,
                seg_core::nn::ops::softmax(&yc.to_device(&dev)?, 1)?,
            )
        };
        println!(
            "  sigmoid/softmax of the CPU logits: {:.2e}",
            rel(&pc, &pd)?
        );
        for axis in 2..shape.len() {
            println!(
                "  flip axis {axis}: {:.2e}",
                rel(&x.flip(&[axis])?, &xd.flip(&[axis])?)?
            );
        }
    }
    for input in &o.inputs {
        for tta in [false, true] {
            let mut sc = seg_train::segment::Segmenter::open(&o.bundle, &cpu)?;
            let mut sd = seg_train::segment::Segmenter::open(&o.bundle, &dev)?;
            sc.set_tta(tta);
            sd.set_tta(tta);
            let a = sc.segment_file(input, None)?;
            let b = sd.segment_file(input, None)?;
            let differ = a
                .labels
                .iter()
                .zip(&b.labels)
                .filter(|(x, y)| x != y)
                .count();
            println!(
                "segment {} (tta {tta}): probabilities {:.2e}, labels differing {} of {} ({} foreground on the CPU)",
                input.display(),
                rel_vec(&a.probabilities, &b.probabilities),
                differ,
                a.labels.len(),
                a.labels.iter().filter(|&&l| l != 0).count()
            );
        }
    }
    Ok(())
}
