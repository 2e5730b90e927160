//! The training loop: epochs of sampled patch batches, validation every
//! epoch ([`super::validate`]), threshold choice, early stopping on
//! validation Dice, atomic best/last checkpoints and the resume sidecar
//! ([`crate::checkpoint`]), a clear stop on a non-finite loss, and a
//! cooperative stop flag (Ctrl-C) that writes a checkpoint first.

use super::average::WeightAverage;
use super::batch::batch;
use super::budget::TimeBudget;
use super::config::TrainConfig;
use super::data::{load, LabelledData};
use super::save::{write_metrics, RunPaths};
use super::validate::{validate, validate_stacks, validation_stride};
use crate::checkpoint;
use crate::comm::{Comm, Single};
use crate::error::{Error, Result};
use crate::optim::Optimizer;
use crate::schedule::Scheduler;
use seg_core::Device;
use seg_data::Sample;
use seg_models::Network;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// One epoch's record (a row of metrics.csv).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    /// Pooled validation Dice at 0.5.
    pub val_dice: Option<f64>,
    /// Best pooled validation Dice over thresholds, and that threshold.
    pub val_dice_best: Option<f64>,
    pub threshold: f32,
    pub val_auc: Option<f64>,
    pub seconds: f64,
    /// Multi-class runs: mean validation Dice per foreground class (1..K).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_class_dice: Option<Vec<f64>>,
}

/// The loop state saved for resumption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Next epoch to run (0-based) and next step within it.
    pub epoch: usize,
    pub step: usize,
    pub global_step: u64,
    pub optimizer_steps: u64,
    pub scheduler: Scheduler,
    pub best_dice: Option<f64>,
    pub epochs_since_best: usize,
    pub loss_sum: f64,
    pub loss_count: usize,
    pub history: Vec<EpochRecord>,
    /// Updates of the weight average so far (`TrainConfig::weight_average`).
    #[serde(default)]
    pub average_updates: u64,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// All epochs ran.
    Finished,
    /// Early stopping after `epoch` epochs.
    EarlyStopped { epoch: usize },
    /// The stop flag was raised; a checkpoint was written.
    Interrupted { epoch: usize, step: usize },
    /// The time budget (`max_seconds`) ended the run after `epoch` epochs
    /// (the last possibly cut short); best and last are written.
    TimeUp { epoch: usize },
}

/// Called as training progresses (progress bars, logs).
pub trait Observer {
    fn on_start(
        &mut self,
        _cfg: &TrainConfig,
        _state: &TrainState,
        _train_images: usize,
        _val_images: usize,
    ) {
    }
    fn on_step(&mut self, _epoch: usize, _step: usize, _loss: f32, _lr: f64) {}
    fn on_epoch(&mut self, _record: &EpochRecord, _improved: bool) {}
    /// Under a time budget: the schedule now spans `epochs` epochs.
    fn on_horizon(&mut self, _epochs: usize) {}
}

/// An observer that does nothing.
pub struct Silent;
impl Observer for Silent {}

/// A training run.
pub struct Trainer {
    pub cfg: TrainConfig,
    pub net: Network,
    pub device: Device,
    pub(super) opt: Optimizer,
    pub state: TrainState,
    pub(super) train: Vec<Sample>,
    pub(super) val: Vec<Sample>,
    pub paths: RunPaths,
    pub(super) threshold: f32,
    /// When [`Trainer::new`] began: the start of the time budget.
    pub(super) created: Instant,
    /// Multi-class runs: validation cases and the class index.
    pub(super) labelled: Option<LabelledData>,
    /// Multi-class runs: every `val_stride`-th plane is validated.
    pub(super) val_stride: usize,
    /// Binary runs on images with FOV masks: their median FOV diameter.
    pub(super) fov_diameter: Option<f64>,
    /// The moving average of the weights, if the run keeps one.
    pub(super) average: Option<WeightAverage>,
    /// The ranks of a data-parallel run ([`Single`] for one process).
    pub(super) comm: Box<dyn Comm>,
}

impl Trainer {
    /// Prepares a run: loads the data, builds the network (fresh, or from the
    /// run folder's last state when `resume`), and the optimiser.
    pub fn new(cfg: TrainConfig, device: &Device, resume: bool) -> Result<Self> {
        Self::with_comm(cfg, device, resume, Box::new(Single))
    }

    /// [`Trainer::new`] for one rank of a data-parallel run over `comm`:
    /// every rank holds the same weights and reads the same data; each
    /// computes its share of every global batch, rank 0 alone validates and
    /// writes (`trainer/parallel.rs`).
    pub fn with_comm(
        cfg: TrainConfig,
        device: &Device,
        resume: bool,
        comm: Box<dyn Comm>,
    ) -> Result<Self> {
        let created = Instant::now();
        cfg.validate()?;
        if cfg.batch < comm.size() {
            return Err(Error::Setting {
                setting: "batch".into(),
                expected: format!("at least the number of ranks ({})", comm.size()),
                got: cfg.batch.to_string(),
            });
        }
        let root = comm.is_root();
        let (train, val, labelled) = load(&cfg)?;
        if let Some(d) = &labelled {
            if cfg.model.out_channels() != d.plan.labels.classes() {
                return Err(Error::Setting {
                    setting: "model.out_channels".into(),
                    expected: format!("{} (the label classes)", d.plan.labels.classes()),
                    got: cfg.model.out_channels().to_string(),
                });
            }
        }
        let channels = match labelled.as_ref().and_then(|d| d.volumes.as_ref()) {
            Some((stacks, _)) => stacks.first().map(|s| s.channels),
            None => train.first().map(|s| s.channels),
        };
        let Some(channels) = channels else {
            return Err(Error::TooFewCases {
                found: 0,
                needed: 2,
            });
        };
        if channels != cfg.model.in_channels() {
            return Err(Error::Channels {
                got: channels,
                expected: cfg.model.in_channels(),
            });
        }
        if cfg.loss.is_multiclass() != (cfg.model.out_channels() > 1) {
            return Err(Error::LossOutputs {
                loss: format!("{:?}", cfg.loss),
                expected: if cfg.loss.is_multiclass() {
                    "2 or more"
                } else {
                    "1"
                },
                got: cfg.model.out_channels(),
            });
        }
        std::fs::create_dir_all(&cfg.out_dir).map_err(|e| Error::io(&cfg.out_dir, e))?;
        let stale = match root {
            true => seg_core::fsutil::remove_stale_temp_files(&cfg.out_dir),
            false => 0,
        };
        if stale > 0 {
            tracing::warn!(
                "removed {stale} unfinished temporary file(s) a killed run left in {}",
                cfg.out_dir.display()
            );
        }
        let paths = RunPaths::new(&cfg.out_dir);
        let net = Network::new(&cfg.model, device, cfg.seed)?;
        if let (Some(init), false) = (&cfg.init_from, resume) {
            let r = net.load_matching(init)?;
            tracing::info!(
                "--init-from {}: {} tensors loaded, {} re-initialised (shape differs), {} not in the file, {} unused",
                init.display(),
                r.loaded,
                r.reinitialised.len(),
                r.missing.len(),
                r.unused.len()
            );
            for (name, model, file) in &r.reinitialised {
                eprintln!(
                    "--init-from: {name} re-initialised: the model needs {model:?}, {} has {file:?}",
                    init.display()
                );
            }
            if r.loaded == 0 {
                return Err(Error::Checkpoint {
                    path: init.clone(),
                    reason: "no tensor matches this network's names and shapes".into(),
                });
            }
        }
        let mut opt = Optimizer::new(cfg.optimizer.clone(), net.params().trainable());
        let mut state = TrainState {
            epoch: 0,
            step: 0,
            global_step: 0,
            optimizer_steps: 0,
            scheduler: Scheduler::new(cfg.schedule.clone(), cfg.optimizer.lr, cfg.epochs),
            best_dice: None,
            epochs_since_best: 0,
            loss_sum: 0.0,
            loss_count: 0,
            history: Vec::new(),
            average_updates: 0,
        };
        let mut average = match cfg.weight_average {
            Some(d) => Some(WeightAverage::new(d, net.params())?),
            None => None,
        };
        let mut threshold = 0.5;
        if resume {
            state = checkpoint::load_resume(&paths.state, &net, &mut opt, average.as_mut())?;
            threshold = state.history.last().map(|r| r.threshold).unwrap_or(0.5);
            if cfg.max_seconds.is_none() {
                // the schedule spans the configured epochs (a budget's estimate, or a
                // changed --epochs, is replaced); under a budget it is re-estimated
                state.scheduler.epochs = cfg.epochs.max(1);
            }
            tracing::info!("resuming at epoch {}, step {}", state.epoch + 1, state.step);
        }
        let cfg_json = serde_json::to_vec_pretty(&cfg).expect("config serialises");
        super::parallel::check_same_config(comm.as_ref(), &cfg_json)?;
        if root {
            seg_data::io::atomic_write(&paths.config, &cfg_json)?;
        }
        let val_ids: Vec<String> = match &labelled {
            Some(d) => d.val.iter().map(|s| s.id.clone()).collect(),
            None => val.iter().map(|s| s.id.clone()).collect(),
        };
        let mut train_ids: Vec<String> = match labelled.as_ref().and_then(|d| d.volumes.as_ref()) {
            Some((stacks, _)) => stacks.iter().map(|s| s.id.clone()).collect(),
            None => train
                .iter()
                .map(|s| s.id.split('#').next().unwrap_or(&s.id).to_string())
                .collect(),
        };
        train_ids.dedup();
        let split = serde_json::json!({
            "seed": cfg.seed,
            "train": train_ids,
            "val": val_ids,
        });
        if root {
            seg_data::io::atomic_write(
                &cfg.out_dir.join("split.json"),
                serde_json::to_string_pretty(&split)
                    .expect("json")
                    .as_bytes(),
            )?;
        }
        let val_stride = match &labelled {
            Some(d) => validation_stride(&d.val, cfg.steps_per_epoch, cfg.batch, cfg.sampler.size),
            None => 1,
        };
        if val_stride > 1 {
            tracing::info!(
                "validation: one plane in {val_stride} of the validation cases (all of them would cost more than a sixth of an epoch)"
            );
        }
        let fov_diameter = median_fov_diameter(&train);
        Ok(Self {
            cfg,
            net,
            device: device.clone(),
            opt,
            state,
            train,
            val,
            paths,
            threshold,
            created,
            fov_diameter,
            labelled,
            val_stride,
            average,
            comm,
        })
    }

    /// Number of training and validation images (multi-class runs: training
    /// slices and validation cases).
    pub fn split_sizes(&self) -> (usize, usize) {
        match &self.labelled {
            Some(LabelledData {
                volumes: Some((stacks, _)),
                val,
                ..
            }) => (stacks.len(), val.len()),
            Some(d) => (self.train.len(), d.val.len()),
            None => (self.train.len(), self.val.len()),
        }
    }

    /// The convolutions' arithmetic of this run: the configuration's, with
    /// `auto` taken as fp32 in a data-parallel run (several ranks). bf16
    /// rounding is discontinuous: the last-bit differences of the ranks'
    /// summation order flip roundings, and after a few steps the weights
    /// are no longer the one-process weights to float tolerance; fp32 keeps
    /// them there. An explicit bf16 is honoured (with a warning).
    pub fn precision(&self) -> Result<seg_core::Precision> {
        let p = self.cfg.precision;
        if self.comm.size() > 1 {
            match p {
                seg_core::PrecisionChoice::Auto => return Ok(seg_core::Precision::Fp32),
                seg_core::PrecisionChoice::Bf16 if self.comm.is_root() => tracing::warn!(
                    "bf16 in a data-parallel run: the weights follow a one-process run only to bf16's rounding, not to float tolerance"
                ),
                _ => {}
            }
        }
        Ok(p.resolve()?)
    }

    /// Runs (or continues) training until the last epoch, early stopping, or `stop`.
    pub fn run(&mut self, obs: &mut dyn Observer, stop: &AtomicBool) -> Result<Outcome> {
        let (n_train, n_val) = self.split_sizes();
        // the convolutions' arithmetic, for every step and validation pass
        // of the run (`on_worker` carries it to the kernels' threads)
        let precision = self.precision()?;
        let _precision = seg_core::precision::scoped(precision);
        tracing::info!(
            "precision {precision} ({})",
            seg_core::precision::describe_cpu()
        );
        if self.cfg.sync_bn && self.comm.is_root() {
            if self.comm.size() == 1 {
                tracing::info!("--sync-bn: one process, nothing to synchronise");
            } else if self.cfg.model.norm() != seg_models::NormKind::Batch {
                tracing::info!(
                    "--sync-bn: the model has no BatchNorm ({:?}): nothing to synchronise",
                    self.cfg.model.norm()
                );
            } else {
                tracing::info!(
                    "synchronised BatchNorm: statistics over the global batch of {} ranks",
                    self.comm.size()
                );
            }
        }
        obs.on_start(&self.cfg, &self.state, n_train, n_val);
        let mut budget = self
            .cfg
            .max_seconds
            .map(|s| TimeBudget::new(s, self.created));
        while self.state.epoch < self.cfg.epochs {
            let epoch = self.state.epoch;
            let started = Instant::now();
            let lr = self.state.scheduler.lr(epoch);
            let mut cut = false;
            while self.state.step < self.cfg.steps_per_epoch {
                // every rank leaves at the same step: a stop or time-up on any
                // rank stops all (one process: the flags as they are)
                let mut flags = [
                    stop.load(Ordering::SeqCst) as u8 as f64,
                    budget.as_ref().is_some_and(|b| b.step_would_overrun()) as u8 as f64,
                ];
                self.comm.allreduce_sum_f64(&mut flags)?;
                if flags[0] > 0.0 {
                    if self.comm.is_root() {
                        self.save_last()?;
                    }
                    return Ok(Outcome::Interrupted {
                        epoch,
                        step: self.state.step,
                    });
                }
                if flags[1] > 0.0 {
                    cut = true;
                    break;
                }
                let step_started = Instant::now();
                let lv = if self.comm.size() > 1 {
                    self.parallel_step(lr)?
                } else {
                    let items: Vec<usize> = (0..self.cfg.batch).collect();
                    let (x, y) = batch(
                        &self.cfg,
                        &self.train,
                        self.labelled.as_ref(),
                        &self.device,
                        self.state.global_step,
                        &items,
                    )?;
                    // the step runs on a worker of the kernels' thread pool
                    // (see `seg_core::on_worker`)
                    let (net, loss_kind, opt) = (&self.net, &self.cfg.loss, &mut self.opt);
                    seg_core::on_worker(|| -> Result<f32> {
                        let logits = net.forward_t(&x, true)?;
                        let loss = loss_kind.compute(&logits, &y)?;
                        let lv = loss.to_scalar::<f32>()?;
                        if lv.is_finite() {
                            let grads = loss.backward()?;
                            opt.step(&grads, lr)?;
                        }
                        Ok(lv)
                    })?
                };
                if let (Some(a), true) = (&mut self.average, lv.is_finite()) {
                    a.update(self.net.params())?;
                    self.state.average_updates = a.updates();
                }
                if !lv.is_finite() {
                    return Err(Error::NonFiniteLoss {
                        epoch: epoch + 1,
                        step: self.state.step + 1,
                        value: lv,
                        checkpoint: self.paths.last.clone(),
                    });
                }
                self.state.global_step += 1;
                self.state.step += 1;
                self.state.loss_sum += lv as f64;
                self.state.loss_count += 1;
                if let Some(b) = &mut budget {
                    b.record_step(step_started.elapsed().as_secs_f64());
                }
                obs.on_step(epoch, self.state.step, lv, lr);
            }
            if cut && self.state.step == 0 {
                // nothing trained in this epoch: `last` is the previous epoch's
                let b = budget.as_ref().expect("cut under a budget");
                if self.state.history.is_empty() {
                    return Err(Error::BudgetExhausted {
                        limit: b.limit(),
                        elapsed: b.elapsed(),
                    });
                }
                return Ok(Outcome::TimeUp { epoch });
            }
            if cut {
                tracing::info!(
                    "time budget: epoch {} cut after {} of {} steps to validate inside it",
                    epoch + 1,
                    self.state.step,
                    self.cfg.steps_per_epoch
                );
            }
            // validation on full images
            // (rank 0 alone; the others receive its results)
            let val_started = Instant::now();
            let root = self.comm.is_root();
            let validated = root.then(|| {
                self.with_shipped_weights(|| match &self.labelled {
                    Some(d) => {
                        let (mean, per_class) = validate_stacks(
                            &self.net,
                            &d.val,
                            d.plan.context,
                            d.plan.labels.classes(),
                            &self.cfg.sliding_window,
                            self.val_stride,
                        )?;
                        Ok((mean, mean, 0.5, None, Some(per_class)))
                    }
                    None => {
                        let (a, b, c, d) =
                            validate(&self.net, &self.val, &self.cfg.sliding_window)?;
                        Ok((a, b, c, d, None))
                    }
                })
            });
            let (dice05, dice_best, thr, auc, class_dice) = self.share_validation(validated)?;
            if let (Some(b), true) = (&mut budget, root) {
                b.record_validation(val_started.elapsed().as_secs_f64());
            }
            let record = EpochRecord {
                epoch: epoch + 1,
                lr,
                train_loss: self.state.loss_sum / self.state.loss_count.max(1) as f64,
                val_dice: Some(dice05),
                val_dice_best: Some(dice_best),
                threshold: thr,
                val_auc: auc,
                seconds: started.elapsed().as_secs_f64(),
                val_class_dice: class_dice,
            };
            let improved = self.state.best_dice.is_none_or(|b| dice_best > b);
            self.state.scheduler.observe(dice_best);
            self.state.history.push(record.clone());
            self.state.epoch += 1;
            self.state.step = 0;
            self.state.loss_sum = 0.0;
            self.state.loss_count = 0;
            if improved {
                self.state.best_dice = Some(dice_best);
                self.state.epochs_since_best = 0;
                self.threshold = thr;
                if root {
                    self.with_shipped_weights(|| {
                        checkpoint::save_bundle(
                            &self.net,
                            &self.bundle_info(epoch + 1, Some(dice_best)),
                            &self.paths.best,
                        )
                    })?;
                }
            } else {
                self.state.epochs_since_best += 1;
            }
            if root {
                self.save_last()?;
                write_metrics(&self.paths, &self.state.history)?;
            }
            obs.on_epoch(&record, improved);
            if let Some(p) = self.cfg.early_stop_patience {
                if self.state.epochs_since_best >= p {
                    return Ok(Outcome::EarlyStopped { epoch: epoch + 1 });
                }
            }
            if let Some(b) = &mut budget {
                b.record_epoch(started.elapsed().as_secs_f64());
                // rank 0's estimate (it also validates) for every rank
                let mut h = [b.horizon(self.state.epoch, self.cfg.epochs) as f64];
                self.comm.broadcast_f64(&mut h, 0)?;
                let horizon = h[0] as usize;
                if cut || horizon <= self.state.epoch {
                    return Ok(Outcome::TimeUp {
                        epoch: self.state.epoch,
                    });
                }
                if horizon != self.state.scheduler.epochs {
                    tracing::debug!("time budget: the schedule spans {horizon} epochs");
                    self.state.scheduler.epochs = horizon;
                    obs.on_horizon(horizon);
                }
            }
        }
        Ok(Outcome::Finished)
    }
}

/// The median FOV diameter (pixels) of whole training images that carry an
/// FOV mask; `None` when they do not.
fn median_fov_diameter(train: &[Sample]) -> Option<f64> {
    let mut d: Vec<f64> = train
        .iter()
        .filter_map(|s| s.fov.as_ref())
        .map(|f| seg_data::fov::diameter(f))
        .filter(|d| *d > 0.0)
        .collect();
    if d.is_empty() {
        return None;
    }
    d.sort_by(f64::total_cmp);
    Some(d[d.len() / 2])
}
