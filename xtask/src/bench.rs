//! `cargo xtask bench`: what users wait for, side by side with the PyTorch
//! peer (`shared/bench/torch_peer.py`): `train` (one optimisation step:
//! train-mode forward, BCE-with-logits against a random target, backward,
//! Adam lr 1e-3) on a random N×C×S×S batch, and `infer` (eval-mode forward
//! on one 1×C×584×565 image). Each side runs in its own process (so each
//! reports its own peak RSS); with `--peer` the sides alternate, A B A B …,
//! and each ratio is seg/pytorch of one pair, the reported ratio their median.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// One benchmark configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub model: String,
    pub base: usize,
    pub in_channels: usize,
    pub mode: String,
    pub batch: usize,
    pub size: usize,
}

impl Case {
    fn args(&self) -> Vec<String> {
        let mut v = vec![
            "--model".into(),
            self.model.clone(),
            "--base".into(),
            self.base.to_string(),
            "--in-channels".into(),
            self.in_channels.to_string(),
            "--mode".into(),
            self.mode.clone(),
        ];
        if self.mode == "train" {
            v.extend([
                "--batch".into(),
                self.batch.to_string(),
                "--size".into(),
                self.size.to_string(),
            ]);
        } else {
            v.extend([
                "--height".into(),
                "584".into(),
                "--width".into(),
                "565".into(),
            ]);
        }
        v
    }

    fn shape(&self) -> Vec<usize> {
        if self.mode == "train" {
            vec![self.batch, self.in_channels, self.size, self.size]
        } else {
            vec![1, self.in_channels, 584, 565]
        }
    }
}

/// The default set: UNet base 16/32/64 in train 8×64², train 4×128² and
/// infer 584×565; each other network at base 16, train 8×64² and infer.
pub fn default_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for base in [16, 32, 64] {
        for (mode, batch, size) in [("train", 8, 64), ("train", 4, 128), ("infer", 1, 0)] {
            v.push(Case {
                model: "unet".into(),
                base,
                in_channels: 3,
                mode: mode.into(),
                batch,
                size,
            });
        }
    }
    for m in ["resunet", "attention_unet", "unetpp"] {
        for (mode, batch, size) in [("train", 8, 64), ("infer", 1, 0)] {
            v.push(Case {
                model: m.into(),
                base: 16,
                in_channels: 3,
                mode: mode.into(),
                batch,
                size,
            });
        }
    }
    v
}

/// Peak resident memory of this process (Linux `VmHWM`), MiB.
fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}

/// Runs one configuration in this process and prints one JSON line (the
/// `bench-one` task, which `bench` spawns).
pub fn run_one(case: &Case, reps: usize, warmup: usize) -> Result<()> {
    use seg_core::{DType, Device, Tensor};
    use seg_models::{ModelConfig, Network};
    use seg_train::optim::{Optimizer, OptimizerConfig, OptimizerKind};
    let cfg = ModelConfig::from_name(&case.model)?
        .with_base(case.base)
        .with_in_channels(case.in_channels);
    let net = Network::new(&cfg, &Device::Cpu, 0)?;
    let params = net.params().num_trainable();
    let shape = case.shape();
    let x = Tensor::randn(0f32, 1.0, shape.as_slice(), &Device::Cpu)?;
    let mut step: Box<dyn FnMut() -> Result<()> + Send> = if case.mode == "train" {
        let y = Tensor::rand(0f32, 1.0, (shape[0], 1, shape[2], shape[3]), &Device::Cpu)?
            .ge(0.8)?
            .to_dtype(DType::F32)?;
        let mut opt = Optimizer::new(
            OptimizerConfig {
                kind: OptimizerKind::Adam,
                lr: 1e-3,
                weight_decay: 0.0,
                clip_grad_norm: None,
                ..Default::default()
            },
            net.params().trainable(),
        );
        let net = net.clone();
        Box::new(move || {
            let mut out = net.forward_t(&x, true)?;
            if out.rank() == 5 {
                out = out.mean(0)?;
            }
            let loss = seg_train::losses::bce(&out, &y, None)?;
            let g = loss.backward()?;
            opt.step(&g, 1e-3)?;
            Ok(())
        })
    } else {
        let model = net.inference_model()?;
        Box::new(move || {
            model.forward_t(&x, false)?;
            Ok(())
        })
    };
    // as seg-train runs its steps and forward passes: on a worker of the
    // kernels' thread pool
    let mut step = move || seg_core::on_worker(&mut step);
    for _ in 0..warmup {
        step()?;
    }
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let med = median(times.clone());
    let pixels: usize = shape[0] * shape[2] * shape[3];
    println!(
        "{}",
        json!({
            "impl": "seg", "threads": rayon::current_num_threads(), "model": case.model, "base": case.base,
            "in_channels": case.in_channels, "params": params, "mode": case.mode, "shape": shape,
            "ms_median": (med * 1000.0).round() / 1000.0, "ms_min": times[0], "ms_max": times[times.len() - 1],
            "samples_per_s": shape[0] as f64 / med * 1e3, "megapixels_per_s": pixels as f64 / med / 1e3,
            "peak_rss_mib": peak_rss_mib(),
        })
    );
    Ok(())
}

fn run_json(mut cmd: Command, what: &str) -> Result<Value> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{what} printed no JSON"))?;
    serde_json::from_str(line).with_context(|| format!("{what}: bad JSON"))
}

/// The median (the mean of the two middle values for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

/// Settings of `cargo xtask bench`.
pub struct BenchOptions {
    pub cases: Vec<Case>,
    pub reps: usize,
    pub warmup: usize,
    pub rounds: usize,
    pub peer: Option<String>,
    pub peer_script: PathBuf,
}

/// Runs the benchmark; returns one JSON object per configuration.
pub fn run(o: &BenchOptions) -> Result<Vec<Value>> {
    if cfg!(debug_assertions) {
        // `cargo xtask` builds with --release (.cargo/config.toml); a dev
        // build runs seg's kernels at opt-level 1, about 2× slower
        eprintln!(
            "warning: this xtask is an unoptimised (dev) build: its seg timings are not representative; use `cargo xtask bench` (a release build)"
        );
    }
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    for case in &o.cases {
        let (mut seg_ms, mut peer_ms, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut seg_rss, mut peer_rss) = (0f64, 0f64);
        for _ in 0..o.rounds.max(1) {
            let mut c = Command::new(&exe);
            c.arg("bench-one").args(case.args()).args([
                "--reps",
                &o.reps.to_string(),
                "--warmup",
                &o.warmup.to_string(),
            ]);
            let s = run_json(c, "the seg side")?;
            let sm = s["ms_median"].as_f64().unwrap_or(f64::NAN);
            seg_ms.push(sm);
            seg_rss = seg_rss.max(s["peak_rss_mib"].as_f64().unwrap_or(0.0));
            if let Some(py) = &o.peer {
                let mut c = Command::new(py);
                c.arg(&o.peer_script).args(case.args()).args([
                    "--reps",
                    &o.reps.to_string(),
                    "--warmup",
                    &o.warmup.to_string(),
                ]);
                let p = run_json(c, "the PyTorch peer")?;
                let pm = p["ms_median"].as_f64().unwrap_or(f64::NAN);
                peer_ms.push(pm);
                peer_rss = peer_rss.max(p["peak_rss_mib"].as_f64().unwrap_or(0.0));
                ratios.push(sm / pm);
            }
        }
        let row = json!({
            "model": case.model, "base": case.base, "mode": case.mode, "shape": case.shape(),
            "seg_ms_median": median(seg_ms),
            "peer_ms_median": (!peer_ms.is_empty()).then(|| median(peer_ms.clone())),
            "ratio": (!ratios.is_empty()).then(|| median(ratios.clone())),
            "seg_peak_rss_mib": seg_rss,
            "peer_peak_rss_mib": (o.peer.is_some()).then_some(peer_rss),
        });
        println!("{row}");
        rows.push(row);
    }
    eprintln!("\n| model | base | mode | shape | seg ms | pytorch ms | ratio | seg RSS MiB | pytorch RSS MiB |\n|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let f = |v: &Value| {
            v.as_f64()
                .map(|x| format!("{x:.1}"))
                .unwrap_or_else(|| "-".into())
        };
        let ratio = r["ratio"]
            .as_f64()
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "-".into());
        eprintln!(
            "| {} | {} | {} | {} | {} | {} | {ratio} | {} | {} |",
            r["model"].as_str().unwrap_or(""),
            r["base"],
            r["mode"].as_str().unwrap_or(""),
            r["shape"],
            f(&r["seg_ms_median"]),
            f(&r["peer_ms_median"]),
            f(&r["seg_peak_rss_mib"]),
            f(&r["peer_peak_rss_mib"])
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![7.0]), 7.0);
    }

    #[test]
    fn default_set_covers_the_issue() {
        let c = default_cases();
        assert_eq!(c.len(), 15);
        for base in [16, 32, 64] {
            assert_eq!(
                c.iter()
                    .filter(|c| c.model == "unet" && c.base == base)
                    .count(),
                3
            );
        }
        for m in ["resunet", "attention_unet", "unetpp"] {
            assert_eq!(c.iter().filter(|c| c.model == m).count(), 2);
        }
    }
}
