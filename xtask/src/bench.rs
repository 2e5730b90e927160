//! `cargo xtask bench`: what users wait for, side by side with the PyTorch
//! peer (`shared/bench/torch_peer.py`): `train` (one optimisation step:
//! train-mode forward, BCE-with-logits against a random target, backward,
//! Adam lr 1e-3) on a random N×C×S×S batch, and `infer` (eval-mode forward
//! on one 1×C×584×565 image). Each side runs in its own process (so each
//! reports its own peak RSS); with `--peer` the sides alternate, A B A B …,
//! and each ratio is seg/pytorch of one pair, the reported ratio their median.
//!
//! `--dims 3` runs the 3D networks (NCDHW) instead, against
//! `xtask/peer/torch_peer3d.py`: `train` on a random N×C×S×S×S batch, `infer`
//! on one 1×C×S×S×S volume (S = 128 unless `--size` says otherwise).

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
    /// The side of a train batch's images; with `dims` 3, also the side of
    /// the infer volume (2D inference is always on one 584×565 image).
    pub size: usize,
    /// 2 (NCHW images) or 3 (NCDHW volumes, the networks' 3D layers).
    pub dims: usize,
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
        if self.dims == 3 {
            let side = self.size.to_string();
            v.extend(["--dims".into(), "3".into()]);
            if self.mode == "train" {
                v.extend([
                    "--batch".into(),
                    self.batch.to_string(),
                    "--size".into(),
                    side,
                ]);
            } else {
                v.extend([
                    "--depth".into(),
                    side.clone(),
                    "--height".into(),
                    side.clone(),
                    "--width".into(),
                    side,
                ]);
            }
            return v;
        }
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

    /// The input's shape: (N, C, H, W), or (N, C, D, H, W) with `dims` 3.
    pub fn shape(&self) -> Vec<usize> {
        if self.dims == 3 {
            let n = if self.mode == "train" { self.batch } else { 1 };
            return vec![n, self.in_channels, self.size, self.size, self.size];
        }
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
                dims: 2,
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
                dims: 2,
            });
        }
    }
    v
}

/// The 3D cases of one network: `train` on a batch of `batch` S×S×S volumes
/// (S = `size`, default 64) and `infer` on one volume (S = `size`, default
/// 128), for each of `modes`.
pub fn cases_3d(
    model: &str,
    base: usize,
    in_channels: usize,
    modes: &[String],
    batch: usize,
    size: Option<usize>,
) -> Vec<Case> {
    modes
        .iter()
        .map(|mode| {
            let train = mode == "train";
            Case {
                model: model.into(),
                base,
                in_channels,
                mode: mode.clone(),
                batch: if train { batch } else { 1 },
                size: size.unwrap_or(if train { 64 } else { 128 }),
                dims: 3,
            }
        })
        .collect()
}

/// The default 3D set: U-Net base 16, one input channel, a train step on
/// 2×1×64³ and inference on one 1×1×128³ volume.
pub fn default_cases_3d() -> Vec<Case> {
    cases_3d("unet", 16, 1, &["train".into(), "infer".into()], 2, None)
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
pub fn run_one(
    case: &Case,
    reps: usize,
    warmup: usize,
    device: &str,
    precision: &str,
) -> Result<()> {
    use seg_core::{DType, Tensor};
    let prec = precision.parse::<seg_core::PrecisionChoice>()?.resolve()?;
    // this thread's setting; `on_worker` carries it to the step's thread
    seg_core::precision::set(prec);
    use seg_models::{ModelConfig, Network};
    use seg_train::optim::{Optimizer, OptimizerConfig, OptimizerKind};
    let cfg = ModelConfig::from_name(&case.model)?
        .with_base(case.base)
        .with_in_channels(case.in_channels)
        .with_dims(case.dims);
    let dev = seg_core::parse_device(device)?;
    let net = Network::new(&cfg, &dev, 0)?;
    let params = net.params().num_trainable();
    let shape = case.shape();
    let x = Tensor::randn(0f32, 1.0, shape.as_slice(), &dev)?;
    let mut step: Box<dyn FnMut() -> Result<()> + Send> = if case.mode == "train" {
        let mut y_shape = shape.clone();
        y_shape[1] = 1;
        let y = Tensor::rand(0f32, 1.0, y_shape.as_slice(), &dev)?
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
        // deep supervision stacks its heads in front: (heads, N, C, spatial…)
        let stacked_rank = case.dims + 3;
        Box::new(move || {
            let mut out = net.forward_t(&x, true)?;
            if out.rank() == stacked_rank {
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
    // kernels' thread pool; on a GPU each timed step ends when the device
    // has finished its queued work
    let sync = dev.clone();
    let mut step = move || {
        seg_core::on_worker(&mut step)?;
        sync.synchronize()?;
        Ok::<(), anyhow::Error>(())
    };
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
    let pixels: usize = shape[0] * shape[2..].iter().product::<usize>();
    println!(
        "{}",
        json!({
            "impl": "seg", "precision": prec.to_string(), "cpu_bf16": seg_core::precision::describe_cpu(), "device": seg_core::device::device_name(&dev), "threads": rayon::current_num_threads(), "model": case.model, "base": case.base,
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
    /// Where seg runs (`cpu`, `cuda:N`, `metal:N`).
    pub device: String,
    /// seg's arithmetic (`fp32`, `bf16`, `auto`).
    pub precision: String,
    /// The peer's `--variant` (none: the script's default, fp32).
    pub peer_variant: Option<String>,
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
        let (mut seg_prec, mut peer_impl, mut peer_tried) =
            (String::new(), String::new(), Value::Null);
        for _ in 0..o.rounds.max(1) {
            let mut c = Command::new(&exe);
            c.arg("bench-one").args(case.args()).args([
                "--reps",
                &o.reps.to_string(),
                "--warmup",
                &o.warmup.to_string(),
                "--device",
                &o.device,
                "--precision",
                &o.precision,
            ]);
            let s = run_json(c, "the seg side")?;
            seg_prec = s["precision"].as_str().unwrap_or("").to_string();
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
                if let Some(v) = &o.peer_variant {
                    c.args(["--variant", v]);
                }
                let p = run_json(c, "the PyTorch peer")?;
                peer_impl = p["impl"].as_str().unwrap_or("").to_string();
                if let Some(tried) = p.get("tried") {
                    peer_tried = tried.clone();
                }
                let pm = p["ms_median"].as_f64().unwrap_or(f64::NAN);
                peer_ms.push(pm);
                peer_rss = peer_rss.max(p["peak_rss_mib"].as_f64().unwrap_or(0.0));
                ratios.push(sm / pm);
            }
        }
        let row = json!({
            "model": case.model, "base": case.base, "mode": case.mode, "shape": case.shape(),
            "precision": seg_prec, "peer_impl": peer_impl, "peer_tried": peer_tried,
            "seg_ms_median": median(seg_ms),
            "peer_ms_median": (!peer_ms.is_empty()).then(|| median(peer_ms.clone())),
            "ratio": (!ratios.is_empty()).then(|| median(ratios.clone())),
            "seg_peak_rss_mib": seg_rss,
            "peer_peak_rss_mib": (o.peer.is_some()).then_some(peer_rss),
        });
        println!("{row}");
        rows.push(row);
    }
    eprintln!("\n| model | base | mode | shape | seg precision | seg ms | peer | peer ms | ratio | seg RSS MiB | peer RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|");
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
            "| {} | {} | {} | {} | {} | {} | {} | {} | {ratio} | {} | {} |",
            r["model"].as_str().unwrap_or(""),
            r["base"],
            r["mode"].as_str().unwrap_or(""),
            r["shape"],
            r["precision"].as_str().unwrap_or(""),
            f(&r["seg_ms_median"]),
            r["peer_impl"].as_str().unwrap_or("-"),
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
        assert!(c.iter().all(|c| c.dims == 2 && c.shape().len() == 4));
    }

    #[test]
    fn default_3d_set_is_a_unet_step_and_a_volume() {
        let c = default_cases_3d();
        assert_eq!(c.len(), 2);
        assert!(c
            .iter()
            .all(|c| c.model == "unet" && c.base == 16 && c.in_channels == 1 && c.dims == 3));
        assert_eq!(c[0].mode, "train");
        assert_eq!(c[0].shape(), [2, 1, 64, 64, 64]);
        assert_eq!(c[1].mode, "infer");
        assert_eq!(c[1].shape(), [1, 1, 128, 128, 128]);
        // both sides are told the volume's shape
        let a = c[0].args();
        assert!(a.windows(2).any(|w| w == ["--dims", "3"]));
        assert!(a.windows(2).any(|w| w == ["--size", "64"]));
        let a = c[1].args();
        for flag in ["--depth", "--height", "--width"] {
            assert!(a.windows(2).any(|w| w == [flag, "128"]), "{a:?}");
        }
        // --size overrides the side of both
        let c = cases_3d("resunet", 8, 2, &["infer".into()], 4, Some(32));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].shape(), [1, 2, 32, 32, 32]);
    }

    #[test]
    fn two_d_arguments_are_unchanged() {
        let c = &default_cases()[0];
        assert_eq!(
            c.args(),
            [
                "--model",
                "unet",
                "--base",
                "16",
                "--in-channels",
                "3",
                "--mode",
                "train",
                "--batch",
                "8",
                "--size",
                "64"
            ]
        );
        let c = default_cases()
            .into_iter()
            .find(|c| c.mode == "infer")
            .unwrap();
        assert_eq!(c.shape(), [1, 3, 584, 565]);
        assert!(c.args().ends_with(&[
            "--height".into(),
            "584".into(),
            "--width".into(),
            "565".into()
        ]));
    }
}
