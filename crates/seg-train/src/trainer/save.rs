//! What a run writes: its output paths ([`RunPaths`]), the metrics
//! (metrics.csv, metrics.json) and the bundles (`best`, `last` and its
//! resume sidecar, [`crate::checkpoint`]).

use super::run::{EpochRecord, Trainer};
use crate::checkpoint::{self, BundleInfo};
use crate::error::Result;
use std::path::{Path, PathBuf};

/// Paths of a run's outputs.
pub struct RunPaths {
    pub best: PathBuf,
    pub last: PathBuf,
    pub state: PathBuf,
    pub csv: PathBuf,
    pub json: PathBuf,
    pub config: PathBuf,
}

impl RunPaths {
    pub fn new(dir: &Path) -> Self {
        let last = dir.join("last.safetensors");
        Self {
            best: dir.join("best.safetensors"),
            state: checkpoint::state_path(&last),
            last,
            csv: dir.join("metrics.csv"),
            json: dir.join("metrics.json"),
            config: dir.join("config.json"),
        }
    }
}

pub(super) fn write_metrics(paths: &RunPaths, history: &[EpochRecord]) -> Result<()> {
    let mut csv =
        String::from("epoch,lr,train_loss,val_dice,val_dice_best,threshold,val_auc,seconds\n");
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
    for r in history {
        csv.push_str(&format!(
            "{},{:.6e},{:.6},{},{},{:.3},{},{:.2}\n",
            r.epoch,
            r.lr,
            r.train_loss,
            opt(r.val_dice),
            opt(r.val_dice_best),
            r.threshold,
            opt(r.val_auc),
            r.seconds
        ));
    }
    seg_data::io::atomic_write(&paths.csv, csv.as_bytes())?;
    let json = serde_json::to_vec_pretty(history).expect("records serialise");
    seg_data::io::atomic_write(&paths.json, &json)?;
    Ok(())
}

impl Trainer {
    pub(super) fn bundle_info(&self, epoch: usize, val_dice: Option<f64>) -> BundleInfo {
        BundleInfo {
            format_version: 1,
            preprocess: self.cfg.preprocess.clone(),
            patch: self.cfg.sampler.size,
            sliding_window: self.cfg.sliding_window.clone(),
            threshold: self.threshold,
            epoch,
            val_dice,
            slices: self.labelled.as_ref().map(|d| d.plan.clone()),
            plan: self.cfg.plan.clone(),
            fov_diameter: self.fov_diameter,
            precision: self.precision().ok(),
        }
    }

    /// Writes `last` (bundle: the averaged weights when the run keeps an
    /// average) and its resume state (the live weights, and the average).
    pub(super) fn save_last(&self) -> Result<()> {
        checkpoint::save_resume(
            &self.paths.state,
            &self.net,
            &self.opt,
            &self.state,
            self.average.as_ref(),
        )?;
        let val = self.state.history.last().and_then(|r| r.val_dice_best);
        self.with_shipped_weights(|| {
            checkpoint::save_bundle(
                &self.net,
                &self.bundle_info(self.state.epoch, val),
                &self.paths.last,
            )
        })
    }

    /// Runs `f` with the weights that are validated and shipped in the
    /// network: the moving average when the run keeps one, else the live
    /// weights.
    pub(super) fn with_shipped_weights<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        match &self.average {
            Some(a) => a.with_average(self.net.params(), f),
            None => f(),
        }
    }
}
