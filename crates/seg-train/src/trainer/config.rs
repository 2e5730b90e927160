//! The run's settings: [`TrainConfig`] (serde; the TOML of `seg-cli train
//! --config`, with documented defaults) and [`TrainConfig::validate`], which
//! refuses values training cannot use before any work starts.

use crate::error::{Error, Result};
use crate::infer::SlidingWindow;
use crate::losses::Loss;
use crate::optim::OptimizerConfig;
use crate::schedule::Schedule;
use seg_data::augment::AugmentConfig;
use seg_data::labelmap::SlicePlan;
use seg_data::patch3d::Augment3;
use seg_data::sampling::PatchSampler;
use seg_data::synthetic::SyntheticConfig;
use seg_data::Preprocess;
use seg_models::ModelConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where training images come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum DataSource {
    /// The built-in synthetic vessel set.
    Synthetic(SyntheticConfig),
    /// The DRIVE layout (training split) under `root`.
    Drive { root: PathBuf },
    /// `root/images` + `root/masks` (+ optional `root/fov`), matched by stem.
    Folders { root: PathBuf },
    /// Multi-class label maps — 2D images or volumes, paired folders or the
    /// MSD/nnU-Net layout (`layout`: a `--dataset` name) — cut into 2D /
    /// 2.5D slices as `slices` says, split into training and validation by
    /// case (see [`crate::plan`]).
    Labelled {
        root: PathBuf,
        layout: String,
        slices: SlicePlan,
    },
}

/// Everything a training run needs.
/// 3D training: a 3D network (`model.dims = 3`) on patches cut from whole
/// cases (a labelled dataset's planes as depth).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Volumetric {
    /// Patch depth, height and width.
    pub patch: [usize; 3],
    /// 3D augmentation.
    #[serde(default)]
    pub augment: Augment3,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub data: DataSource,
    pub preprocess: Preprocess,
    pub epochs: usize,
    /// Batches per epoch.
    pub steps_per_epoch: usize,
    pub batch: usize,
    pub sampler: PatchSampler,
    pub augment: AugmentConfig,
    pub loss: Loss,
    pub optimizer: OptimizerConfig,
    pub schedule: Schedule,
    pub seed: u64,
    /// Images held out for validation (by image, seeded).
    pub val_count: usize,
    /// Stop after this many epochs without a better validation Dice.
    pub early_stop_patience: Option<usize>,
    /// Wall-clock budget of the run in seconds (`--max-time`): training stops
    /// inside it, keeping best and last, and the schedule spans the epochs
    /// that fit (`epochs` is then an upper bound). See `trainer/budget.rs`.
    pub max_seconds: Option<f64>,
    /// Fine-tuning: start from the weights of this bundle or safetensors
    /// file wherever names and shapes match (`--init-from`); layers whose
    /// shape differs (e.g. the output layer for a new class count) keep
    /// their fresh initialisation, and the run says which.
    pub init_from: Option<PathBuf>,
    /// The automatic plan this run carries out, if any (recorded in
    /// `config.json` and in every bundle).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<crate::plan::Plan>,
    pub sliding_window: SlidingWindow,
    pub out_dir: PathBuf,
    /// 3D training (`None`: 2D / 2.5D).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volumetric: Option<Volumetric>,
    /// Validate and ship a moving average of the weights with this decay
    /// (e.g. 0.999; `None`: the weights as trained). See
    /// `trainer/average.rs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_average: Option<f64>,
    /// Arithmetic of the convolutions: fp32 (the default), bf16 (bf16
    /// operands, fp32 accumulation; needs AVX512-BF16) or auto (bf16 where
    /// the CPU has it, else fp32). bf16 matched fp32's accuracy on DRIVE
    /// and Hippocampus (docs/results.md) with ~1.3× faster steps; training
    /// stays fp32 by default because bf16's rounding makes a run's weights
    /// depend on how its batches are split (data-parallel runs match one
    /// process only in fp32; `auto` is fp32 there). Weights, optimiser
    /// state, norm statistics and the loss stay fp32. See
    /// `seg_core::precision`.
    pub precision: seg_core::PrecisionChoice,
    /// Synchronised BatchNorm in a data-parallel run: every rank normalises
    /// with the statistics of the whole global batch (two allreduces per
    /// BatchNorm layer in the forward pass, one in the backward), so a run
    /// of N ranks trains the one-process model up to float rounding, as it
    /// does with GroupNorm/InstanceNorm. Off (each rank's own statistics,
    /// PyTorch DDP's default) otherwise; no effect in one process. Needs
    /// the CPU kernels (f32 on the CPU).
    pub sync_bn: bool,
}

impl TrainConfig {
    /// Checks every setting for a value training cannot use (zero sizes,
    /// non-finite or out-of-range rates, sizes past sane limits), naming the
    /// setting. Loading data is not part of it.
    pub fn validate(&self) -> Result<()> {
        fn bad(setting: impl Into<String>, expected: &str, got: impl ToString) -> Result<()> {
            Err(Error::Setting {
                setting: setting.into(),
                expected: expected.into(),
                got: got.to_string(),
            })
        }
        /// Upper bound on any size in pixels or count (keeps products far from overflow).
        const MAX: usize = 1 << 16;
        self.model.validate()?;
        for (name, v) in [
            ("epochs", self.epochs),
            ("steps_per_epoch", self.steps_per_epoch),
            ("batch", self.batch),
            ("sampler.size", self.sampler.size),
            ("sliding_window.roi", self.sliding_window.roi),
            ("sliding_window.batch", self.sliding_window.batch),
        ] {
            if v == 0 || v > MAX {
                return bad(name, &format!("between 1 and {MAX}"), v);
            }
        }
        // bf16 on a CPU without bf16 kernels: refused before any work
        self.precision.resolve()?;
        if let Some(d) = self.weight_average {
            if !(d > 0.0 && d < 1.0) {
                return bad("weight_average", "a decay in (0, 1), e.g. 0.999", d);
            }
        }
        let o = &self.optimizer;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return bad("optimizer.lr", "a positive number", o.lr);
        }
        for (name, v) in [
            ("beta1", o.beta1),
            ("beta2", o.beta2),
            ("momentum", o.momentum),
        ] {
            if !(0.0..1.0).contains(&v) {
                return bad(format!("optimizer.{name}"), "in [0, 1)", v);
            }
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            return bad("optimizer.eps", "a positive number", o.eps);
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return bad("optimizer.weight_decay", "≥ 0", o.weight_decay);
        }
        if let Some(c) = o.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return bad("optimizer.clip_grad_norm", "a positive number", c);
            }
        }
        if !(0.0..=1.0).contains(&self.sampler.foreground_ratio) {
            return bad(
                "sampler.foreground_ratio",
                "in [0, 1]",
                self.sampler.foreground_ratio,
            );
        }
        if !(0.0..1.0).contains(&self.sliding_window.overlap) {
            return bad(
                "sliding_window.overlap",
                "in [0, 1)",
                self.sliding_window.overlap,
            );
        }
        if let DataSource::Synthetic(s) = &self.data {
            if s.count == 0 || s.count > 10_000 || s.size < 8 || s.size > 4096 {
                return bad(
                    "synthetic data",
                    "1–10000 images of 8–4096 pixels",
                    format!("{} of {}", s.count, s.size),
                );
            }
            if !(s.noise.is_finite() && s.noise >= 0.0) {
                return bad("synthetic noise", "≥ 0", s.noise);
            }
        }
        if let Some(t) = self.max_seconds {
            if !(t.is_finite() && t > 0.0) {
                return bad("max_seconds", "a positive number", t);
            }
        }
        match (&self.volumetric, self.model.dims()) {
            (Some(v), 3) => {
                if !matches!(self.data, DataSource::Labelled { .. }) {
                    return bad(
                        "volumetric",
                        "a labelled (volume / label-map) dataset",
                        "2D images",
                    );
                }
                if let Some(&s) = v.patch.iter().find(|&&s| !(16..=MAX).contains(&s)) {
                    return bad("volumetric.patch", "sides between 16 and 65536", s);
                }
            }
            (None, 2) => {}
            (Some(_), d) => return bad("model.dims", "3 for volumetric training", d),
            (None, d) => {
                return bad(
                    "volumetric",
                    "a 3D patch for a 3D model",
                    format!("none (dims {d})"),
                )
            }
        }
        self.schedule.validate()?;
        Ok(())
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: ModelConfig::from_name("resunet")
                .expect("registered")
                .with_base(8),
            data: DataSource::Synthetic(SyntheticConfig {
                count: 20,
                size: 96,
                seed: 0,
                noise: 0.03,
            }),
            preprocess: Preprocess::fundus(),
            epochs: 8,
            steps_per_epoch: 25,
            batch: 8,
            sampler: PatchSampler {
                size: 64,
                foreground_ratio: 0.5,
                inside_fov: true,
            },
            augment: AugmentConfig::default(),
            loss: Loss::BceDice {
                bce_weight: 0.5,
                dice_weight: 1.0,
            },
            optimizer: OptimizerConfig {
                lr: 3e-3,
                ..OptimizerConfig::default()
            },
            schedule: Schedule::Cosine {
                warmup_epochs: 1,
                min_lr: 1e-4,
            },
            seed: 0,
            val_count: 4,
            early_stop_patience: Some(10),
            max_seconds: None,
            init_from: None,
            plan: None,
            sliding_window: SlidingWindow {
                roi: 64,
                overlap: 0.5,
                ..SlidingWindow::default()
            },
            out_dir: PathBuf::from("runs/latest"),
            volumetric: None,
            weight_average: None,
            precision: seg_core::PrecisionChoice::Fp32,
            sync_bn: false,
        }
    }
}
