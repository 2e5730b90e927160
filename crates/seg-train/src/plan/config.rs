//! A [`Plan`] carried out: [`Plan::train_config`] (the training
//! configuration of a planned run) and [`Plan::with_dims`] (`--dims`).

use super::Plan;
use crate::error::Result;
use crate::infer::SlidingWindow;
use crate::losses::Loss;
use crate::optim::OptimizerConfig;
use crate::schedule::Schedule;
use crate::trainer::{DataSource, TrainConfig};
use seg_data::augment::AugmentConfig;
use seg_data::intensity::ChannelChoice;
use seg_data::preprocess::Normalise;
use seg_data::sampling::PatchSampler;
use seg_data::Preprocess;
use seg_models::ModelConfig;
use std::path::Path;

/// Batches per epoch of planned runs (nnU-Net's 250).
pub const STEPS_PER_EPOCH: usize = 250;

impl Plan {
    /// A training configuration carrying out the plan on the dataset at
    /// `root` (`layout`: `folders` or `msd`). The epoch count is an upper
    /// bound; give `max_seconds` (or set `epochs`) for the length.
    pub fn train_config(&self, root: &Path, layout: &str) -> Result<TrainConfig> {
        let model = ModelConfig::from_name(&self.model)?
            .with_base(self.base)
            .with_norm(self.layer_norm)
            .with_in_channels(self.in_channels)
            .with_out_channels(self.labels.classes())
            .with_dims(if self.dims == 3 { 3 } else { 2 });
        let volumetric = match (self.dims, self.patch3) {
            (3, Some(patch)) => Some(crate::trainer::Volumetric {
                patch,
                augment: seg_data::patch3d::Augment3 {
                    flip_axes: [self.mirror_depth, self.mirror[0], self.mirror[1]],
                    // in-plane quarter turns where both plane axes may flip
                    // (applied to square in-plane patches only)
                    rot90_p: if self.mirror == [true, true] {
                        0.5
                    } else {
                        0.0
                    },
                    ..Default::default()
                },
            }),
            (3, None) => {
                return Err(crate::error::Error::Setting {
                    setting: "plan.patch3".into(),
                    expected: "a 3D patch for a 3D plan".into(),
                    got: "none".into(),
                })
            }
            _ => None,
        };
        Ok(TrainConfig {
            model,
            data: DataSource::Labelled {
                root: root.to_path_buf(),
                layout: layout.to_string(),
                slices: self.slice_plan(),
            },
            preprocess: Preprocess {
                channels: ChannelChoice::All,
                window: None,
                scale_range: None,
                clahe: None,
                gamma: None,
                normalise: Normalise::None,
            },
            epochs: 1000,
            steps_per_epoch: STEPS_PER_EPOCH,
            batch: self.batch,
            sampler: PatchSampler {
                size: self.patch,
                // nnU-Net's 3D: a third of the patches on a foreground class
                foreground_ratio: if volumetric.is_some() { 0.33 } else { 0.5 },
                inside_fov: false,
            },
            augment: self.augment(AugmentConfig::default()),
            loss: Loss::CeDice,
            optimizer: OptimizerConfig {
                lr: 3e-3,
                weight_decay: 1e-4,
                clip_grad_norm: Some(12.0),
                ..OptimizerConfig::default()
            },
            schedule: Schedule::Poly { power: 0.9 },
            val_count: self.val_cases,
            early_stop_patience: None,
            plan: Some(self.clone()),
            sliding_window: SlidingWindow {
                roi: self.patch,
                overlap: if volumetric.is_some() { 0.5 } else { 0.25 },
                // test-time flips only where training flipped
                tta_axes: self.mirror,
                roi3: volumetric.as_ref().map(|v| v.patch),
                tta_depth: self.mirror_depth,
                batch: if volumetric.is_some() { 2 } else { 4 },
                ..SlidingWindow::default()
            },
            volumetric,
            ..TrainConfig::default()
        })
    }

    /// The plan with `dims` forced: `3` a 3D network on the plan's 3D
    /// patch, `2` one plane (no context), `2.5` one neighbouring plane on
    /// each side as channels; `modalities` input images per case.
    pub fn with_dims(mut self, dims: &str, modalities: usize) -> Result<Self> {
        let (d, context) = match dims {
            "3" => (3, 0),
            "2" => (2, 0),
            "2.5" => (2, 1),
            _ => {
                return Err(crate::error::Error::Setting {
                    setting: "--dims".into(),
                    expected: "2, 2.5 or 3".into(),
                    got: dims.into(),
                })
            }
        };
        if d == 3 && self.patch3.is_none() {
            return Err(crate::error::Error::Setting {
                setting: "--dims".into(),
                expected: "volumes (3D needs a volume dataset)".into(),
                got: dims.into(),
            });
        }
        if d != self.dims {
            self.batch = if d == 3 {
                self.batch3
            } else {
                ((8 * 128 * 128) / (self.patch * self.patch)).clamp(4, 16)
            };
            if self.model == "unet" && d == 2 || self.model == "resunet" && d == 3 {
                self.model = if d == 3 { "unet" } else { "resunet" }.into();
            }
        }
        self.dims = d;
        self.context = context;
        self.in_channels = modalities * (2 * context + 1);
        self.reasons.push(match (d, self.patch3) {
            (3, Some(p)) => format!(
                "--dims 3: a 3D network on patches {p:?}, batch {}",
                self.batch
            ),
            _ => format!("--dims {dims}: context {context}"),
        });
        Ok(self)
    }
}
