//! `seg-cli train`'s progress: an indicatif bar per epoch, a line and a log
//! record per epoch (per-class Dice for multi-class runs), `curves.png`.

use indicatif::{ProgressBar, ProgressStyle};
use seg_train::trainer::{EpochRecord, Observer, TrainConfig, TrainState};
use std::path::PathBuf;

pub(super) struct Progress {
    pub(super) bar: Option<ProgressBar>,
    pub(super) steps: usize,
    pub(super) epochs: usize,
    pub(super) curves: PathBuf,
    pub(super) history: Vec<EpochRecord>,
    pub(super) loss_sum: f64,
    pub(super) loss_n: usize,
}

impl Observer for Progress {
    fn on_start(&mut self, cfg: &TrainConfig, state: &TrainState, train: usize, val: usize) {
        self.history = state.history.clone();
        let (kind, what, patch) = match &cfg.volumetric {
            Some(v) => (
                "3D ",
                "cases",
                format!("{}x{}x{}", v.patch[0], v.patch[1], v.patch[2]),
            ),
            None => ("", "images", format!("{}px", cfg.sampler.size)),
        };
        say!(
            "training {kind}{} (base {}) on {train} {what}, validating on {val}; {} epochs x {} batches of {} patches {patch}; output {}",
            cfg.model.name(),
            cfg.model.base(),
            cfg.epochs,
            cfg.steps_per_epoch,
            cfg.batch,
            cfg.out_dir.display()
        );
        if let Some(t) = cfg.max_seconds {
            say!(
                "time budget {}: training stops inside it; the {:?} schedule spans the epochs that fit (at most {})",
                humantime::format_duration(std::time::Duration::from_secs(t.round() as u64)),
                cfg.schedule,
                cfg.epochs
            );
        }
    }

    fn on_horizon(&mut self, epochs: usize) {
        tracing::info!("time budget: the schedule now spans {epochs} epochs");
        self.epochs = epochs;
    }

    fn on_step(&mut self, epoch: usize, step: usize, loss: f32, lr: f64) {
        self.loss_sum += loss as f64;
        self.loss_n += 1;
        let bar = self.bar.get_or_insert_with(|| {
            let b = ProgressBar::new(self.steps as u64);
            b.set_style(
                ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} / eta {eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.set_prefix(format!("{}/{}", epoch + 1, self.epochs));
            b
        });
        bar.set_position(step as u64);
        bar.set_message(format!(
            "loss {:.4} lr {lr:.1e}",
            self.loss_sum / self.loss_n as f64
        ));
    }

    fn on_epoch(&mut self, r: &EpochRecord, improved: bool) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        self.loss_sum = 0.0;
        self.loss_n = 0;
        let f = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
        let line = match &r.val_class_dice {
            Some(per_class) => format!(
                "epoch {}/{}: loss {:.4}  val mean Dice {} (per class {})  {:.1}s{}",
                r.epoch,
                self.epochs,
                r.train_loss,
                f(r.val_dice),
                per_class
                    .iter()
                    .map(|d| format!("{d:.4}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                r.seconds,
                if improved { "  * best" } else { "" }
            ),
            None => format!(
                "epoch {}/{}: loss {:.4}  val Dice {} @0.5, {} @{:.2}  AUC {}  {:.1}s{}",
                r.epoch,
                self.epochs,
                r.train_loss,
                f(r.val_dice),
                f(r.val_dice_best),
                r.threshold,
                f(r.val_auc),
                r.seconds,
                if improved { "  * best" } else { "" }
            ),
        };
        say!("{line}");
        tracing::info!("{line}");
        self.history.push(r.clone());
        if let Err(e) = crate::plot::draw_curves(&self.history, &self.curves) {
            tracing::warn!("cannot draw {}: {e:#}", self.curves.display());
        }
    }
}
