//! `seg-cli train`: a validated plan from the arguments (and an optional
//! TOML config), then the training loop with progress bars, logs, metrics
//! files, curves and Ctrl-C handling.

use anyhow::{bail, Context, Result};
use clap::Args;
use seg_core::parse_device;
use seg_data::augment::{AugmentConfig, AUGMENT_PRESETS};
use seg_data::intensity::{ChannelChoice, WindowSpec};
use seg_data::spec::{DatasetKind, DatasetSpec};
use seg_models::{ModelConfig, NormKind, Upsample, MODEL_NAMES};
use seg_train::losses::{Loss, LOSS_NAMES};
use seg_train::optim::OptimizerKind;
use seg_train::plan::{Fingerprint, Plan};
use seg_train::schedule::Schedule;
use seg_train::trainer::{DataSource, Outcome, TrainConfig, Trainer};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

mod planned;
mod progress;
use planned::{data_source, TargetSpacing};
use progress::Progress;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Network.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(MODEL_NAMES))]
    model: Option<String>,
    /// Dataset folder (DRIVE layout, images/ + masks/ or labels/, or MSD/nnU-Net imagesTr/ + labelsTr/). Without it: the built-in synthetic vessel set.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Dataset layout (detected from the folder when omitted).
    #[arg(long, value_parser = DatasetKind::NAMES)]
    dataset: Option<String>,
    #[arg(long)]
    epochs: Option<usize>,
    /// Batches per epoch.
    #[arg(long)]
    steps: Option<usize>,
    /// Patch size (pixels).
    #[arg(long)]
    patch: Option<usize>,
    #[arg(long)]
    batch: Option<usize>,
    /// Width of the first level (default: 8 on synthetic data, 16 otherwise).
    #[arg(long)]
    base: Option<usize>,
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(LOSS_NAMES))]
    loss: Option<String>,
    #[arg(long, value_parser = ["adam", "adamw", "sgd"])]
    optimizer: Option<String>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, value_parser = ["constant", "step", "cosine", "poly", "plateau"])]
    schedule: Option<String>,
    /// Images held out for validation.
    #[arg(long)]
    val: Option<usize>,
    /// Wall-clock budget, e.g. 20m, 1h30m, 90s: training stops inside it (validating and keeping best and last)
    /// and the learning-rate schedule spans the epochs that fit; --epochs becomes an upper bound.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    max_time: Option<std::time::Duration>,
    /// Early stopping patience in epochs (0 disables).
    #[arg(long)]
    patience: Option<usize>,
    /// Validate and ship a moving average of the weights with this decay, e.g. 0.999 (0 disables;
    /// the 3D plan uses one).
    #[arg(long, value_name = "DECAY")]
    weight_average: Option<f64>,
    /// Normalisation layers: batch, group or instance (InstanceNorm2d, affine).
    #[arg(long, value_parser = ["batch", "group", "instance"])]
    norm: Option<String>,
    /// Groups for --norm group: at most N per layer (the largest divisor of its channel count; default 8).
    #[arg(long)]
    groups: Option<usize>,
    /// Decoder upsampling: transpose or bilinear (a choice for unet; the other networks have a fixed one).
    #[arg(long, value_parser = ["transpose", "bilinear"])]
    upsample: Option<String>,
    /// UNet++ deep supervision heads (unetpp only).
    #[arg(long)]
    deep_supervision: bool,
    /// Intensity window applied to the raw values before normalisation, in the file's units (HU for CT):
    /// brain, subdural, stroke, lung, mediastinum, abdomen, soft_tissue, liver, bone, or CENTER,WIDTH (e.g. -600,1500).
    #[arg(long, allow_hyphen_values = true, value_name = "PRESET|CENTER,WIDTH")]
    window: Option<WindowSpec>,
    /// Augmentation strength (replaces the config file's augment block).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(AUGMENT_PRESETS))]
    augment: Option<String>,
    /// Input channels from colour images: green, luminance or all.
    #[arg(long, value_parser = ["green", "luminance", "all"])]
    channels: Option<String>,
    /// Skip CLAHE.
    #[arg(long)]
    no_clahe: bool,
    /// Planned (multi-class / volume) data: neighbouring slices on each side given as channels (0 = 2D, 1 = 2.5D with 3 slices).
    #[arg(long)]
    context: Option<usize>,
    /// Planned volume data: cut slices perpendicular to this axis (0, 1 or 2 of the NIfTI volume).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..3))]
    slice_axis: Option<u8>,
    /// Planned data: intensity normalisation, zscore (per case) or ct (clip to the foreground's 0.5/99.5 percentiles, dataset z-score).
    #[arg(long, value_parser = ["zscore", "ct"])]
    intensity: Option<String>,
    /// Planned data: in-plane spacing planes are resampled to, `MM` or `ROW,COL` (mm; pixels for 2D images), or `native` to keep each case's own.
    #[arg(long, value_name = "MM|ROW,COL|native", value_parser = planned::parse_target_spacing)]
    target_spacing: Option<TargetSpacing>,
    /// Planned volume data: 3 (a 3D network), 2.5 (neighbouring slices as channels) or 2 (single slices); the plan picks 3D for near-isotropic volumes a 3D patch covers.
    #[arg(long, value_parser = ["2", "2.5", "3"])]
    dims: Option<String>,
    /// Planned data: flips and 90° rotations in augmentation, `on` or `off` (the plan turns them off along axes where the structures keep a side).
    #[arg(long, value_parser = ["on", "off"])]
    mirror: Option<String>,
    #[arg(long)]
    seed: Option<u64>,
    /// cpu, cuda:N, metal:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Convolution arithmetic on the CPU: fp32, bf16 (bf16 operands, fp32 accumulation; needs AVX512-BF16; ~1.3x
    /// faster steps, the same accuracy) or auto (bf16 where the CPU has it; fp32 under mpirun) [default: fp32, so
    /// that data-parallel runs match one process]. Weights, optimiser state and the loss stay fp32. Recorded in the
    /// bundle.
    #[arg(long, value_parser = ["fp32", "bf16", "auto"])]
    precision: Option<String>,
    /// Under mpirun with --norm batch: synchronised BatchNorm (every rank normalises with the whole global batch's
    /// statistics: the one-process model up to rounding) instead of each rank's own statistics.
    #[arg(long)]
    sync_bn: bool,
    /// Run folder for checkpoints, metrics and curves.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Fine-tune: start from this bundle's (or safetensors file's) weights where names and shapes match;
    /// layers whose shape differs (e.g. a new class count) are re-initialised and listed.
    #[arg(long, value_name = "BUNDLE_OR_SAFETENSORS")]
    init_from: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// A TOML file with any TrainConfig fields; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Check the plan and the data, write config.json and split.json, and stop before training.
    #[arg(long)]
    dry_run: bool,
}

/// The dataset at `dir`: the `--dataset` layout, else the detected one.
fn dataset_spec(dir: &Path, kind: Option<&str>) -> Result<DatasetSpec> {
    Ok(match kind {
        Some(k) => {
            let kind = DatasetKind::from_name(k).expect("value checked by clap");
            DatasetSpec::open(kind, dir)?
        }
        None => DatasetSpec::detect(dir).map_err(|e| match e {
            seg_data::Error::NoLayout { .. } => anyhow::anyhow!("{e}; pass --dataset"),
            e => e.into(),
        })?,
    })
}

/// The automatic plan of a dataset and its fingerprint.
pub type Auto = (Plan, Fingerprint);

/// Budget of a planned run given neither `--max-time` nor `--epochs`.
const DEFAULT_PLANNED_BUDGET_S: f64 = 20.0 * 60.0;

/// Upper bound on epochs under `--max-time` when neither `--epochs` nor the
/// config file gives one: the budget decides.
const EPOCH_CAP_UNDER_BUDGET: usize = 1000;

/// Group count of `--norm group` without `--groups`.
const DEFAULT_GROUPS: usize = 8;

/// `--norm`, `--groups`, `--upsample` and `--deep-supervision` on the chosen network.
fn set_model_options(a: &TrainArgs, cfg: &mut TrainConfig) -> Result<()> {
    let model = cfg.model.clone();
    let norm = match (a.norm.as_deref(), a.groups) {
        (Some("batch"), None) => Some(NormKind::Batch),
        (Some("instance"), None) => Some(NormKind::Instance),
        (Some("group"), g) => Some(NormKind::Group {
            groups: g.unwrap_or(DEFAULT_GROUPS),
        }),
        (None, Some(g)) => match model.norm() {
            NormKind::Group { .. } => Some(NormKind::Group { groups: g }),
            other => {
                bail!("--groups needs --norm group (the network uses {other:?} normalisation)")
            }
        },
        (Some(n), Some(_)) => bail!("--groups applies to --norm group, not --norm {n}"),
        (None, None) => None,
        (Some(n), None) => bail!("--norm {n}: expected batch, group or instance"),
    };
    if let Some(NormKind::Group { groups: 0 }) = norm {
        bail!("--groups must be at least 1");
    }
    let mut model = match norm {
        Some(n) => model.with_norm(n),
        None => model,
    };
    if let Some(u) = &a.upsample {
        let up = if u == "bilinear" {
            Upsample::Bilinear
        } else {
            Upsample::Transpose
        };
        model = model
            .try_with_upsample(up)
            .with_context(|| format!("--upsample {u}"))?;
    }
    if a.deep_supervision {
        model = model
            .try_with_deep_supervision(true)
            .context("--deep-supervision")?;
    }
    cfg.model = model;
    Ok(())
}

/// Turns the arguments into a complete, checked configuration, with the
/// automatic plan when the data went through it.
pub fn plan(a: &TrainArgs) -> Result<(TrainConfig, Option<Auto>)> {
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/latest"));
    if a.resume {
        let saved = out.join("config.json");
        let text = std::fs::read_to_string(&saved)
            .with_context(|| format!("--resume: cannot read {}", saved.display()))?;
        let mut cfg: TrainConfig = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a training config", saved.display()))?;
        if let Some(e) = a.epochs {
            cfg.epochs = e;
        }
        if let Some(t) = a.max_time {
            cfg.max_seconds = Some(t.as_secs_f64());
        }
        cfg.out_dir = out;
        return Ok((cfg, None));
    }
    let mut config_sets_epochs = false;
    let mut cfg = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            config_sets_epochs = text
                .parse::<toml::Table>()
                .is_ok_and(|t| t.contains_key("epochs"));
            toml::from_str(&text)
                .with_context(|| format!("{}: not a valid training config", p.display()))?
        }
        None => TrainConfig::default(),
    };
    let mut auto = None;
    let synthetic = match (&a.data, a.dataset.as_deref()) {
        (None, None | Some("synthetic")) => true,
        (None, Some(d)) => bail!("--dataset {d} needs --data DIR"),
        (Some(dir), _) => {
            if !dir.is_dir() {
                bail!("{}: no such folder", dir.display());
            }
            let (data, planned) = data_source(a, dir)?;
            if let Some((p, _)) = &planned {
                let layout = match &data {
                    DataSource::Labelled { layout, .. } => layout.clone(),
                    _ => unreachable!("planned data is labelled"),
                };
                cfg = TrainConfig {
                    out_dir: cfg.out_dir.clone(),
                    ..p.train_config(dir, &layout)?
                };
                cfg.data = data;
                auto = planned;
            } else {
                cfg.data = data;
            }
            matches!(cfg.data, DataSource::Synthetic(_))
        }
    };
    if a.dims.is_some() && auto.is_none() {
        bail!("--dims applies to planned volume data (NIfTI / DICOM volumes with label maps); 2D image sets train in 2D");
    }
    let planned_io = auto
        .as_ref()
        .map(|(p, _)| (p.in_channels, p.labels.classes()));
    if let Some(m) = &a.model {
        let base = a.base.unwrap_or(if synthetic { 8 } else { 16 });
        cfg.model = ModelConfig::from_name(m)?
            .with_base(base)
            .with_dims(cfg.model.dims());
        if let Some((i, k)) = planned_io {
            cfg.model = cfg.model.with_in_channels(i).with_out_channels(k);
        }
    } else if let Some(b) = a.base {
        cfg.model = cfg.model.with_base(b);
    }
    set_model_options(a, &mut cfg)?;
    if auto.is_some() && (a.channels.is_some() || a.no_clahe) {
        bail!("--channels and --no-clahe apply to 2D fundus-style data; planned (multi-class or volume) data is normalised by the plan (--intensity, --window)");
    }
    if let (Some(w), None) = (a.window, &auto) {
        if matches!(cfg.data, DataSource::Synthetic(_)) {
            bail!("--window applies to image files (raw values such as Hounsfield units); the built-in synthetic set is generated in [0, 1] and is not windowed: pass --data DIR");
        }
        cfg.preprocess.window = Some(w);
    }
    if let Some(name) = &a.augment {
        cfg.augment = AugmentConfig::preset(name)?;
    }
    if let Some(c) = &a.channels {
        cfg.preprocess.channels = match c.as_str() {
            "green" => ChannelChoice::Green,
            "luminance" => ChannelChoice::Luminance,
            _ => ChannelChoice::All,
        };
    }
    if a.no_clahe {
        cfg.preprocess.clahe = None;
    }
    if auto.is_none() {
        let in_ch = cfg.preprocess.out_channels(3);
        cfg.model = cfg.model.with_in_channels(in_ch);
    } else if a.epochs.is_none() && a.max_time.is_none() && !config_sets_epochs {
        cfg.max_seconds = Some(DEFAULT_PLANNED_BUDGET_S);
    }
    macro_rules! set {
        ($field:expr, $v:expr) => {
            if let Some(v) = $v {
                $field = v;
            }
        };
    }
    if let Some(t) = a.max_time {
        if t.is_zero() {
            bail!("--max-time must be longer than zero");
        }
        cfg.max_seconds = Some(t.as_secs_f64());
        if a.epochs.is_none() && !config_sets_epochs {
            cfg.epochs = EPOCH_CAP_UNDER_BUDGET;
        }
    }
    set!(cfg.epochs, a.epochs);
    set!(cfg.steps_per_epoch, a.steps);
    set!(cfg.batch, a.batch);
    set!(cfg.seed, a.seed);
    set!(cfg.val_count, a.val);
    set!(cfg.optimizer.lr, a.lr);
    if let Some(p) = a.patch {
        cfg.sampler.size = p;
        cfg.sliding_window.roi = cfg.sliding_window.roi.max(p);
        if let Some(v) = &mut cfg.volumetric {
            v.patch = [p; 3];
            cfg.sliding_window.roi3 = Some([p; 3]);
        }
    }
    if let Some(l) = &a.loss {
        cfg.loss = Loss::from_name(l).expect("value checked by clap");
        if auto.is_some() && !cfg.loss.is_multiclass() {
            bail!(
                "--loss {l}: planned (multi-class) data trains with a softmax loss: ce or ce_dice"
            );
        }
        if cfg.loss.is_multiclass() && cfg.model.out_channels() == 1 {
            cfg.model = cfg.model.with_out_channels(2);
        }
    }
    if let Some(o) = &a.optimizer {
        cfg.optimizer.kind = OptimizerKind::from_name(o).expect("value checked by clap");
    }
    if let Some(s) = &a.schedule {
        cfg.schedule = Schedule::from_name(s).expect("value checked by clap");
    }
    if let Some(p) = a.patience {
        cfg.early_stop_patience = (p > 0).then_some(p);
    }
    if let Some(p) = &a.precision {
        cfg.precision = p.parse().expect("value checked by clap");
    }
    if a.sync_bn {
        cfg.sync_bn = true;
    }
    if let Some(d) = a.weight_average {
        cfg.weight_average = (d != 0.0).then_some(d);
    }
    if let Some(p) = &a.init_from {
        if !p.is_file() {
            bail!("--init-from {}: no such file", p.display());
        }
        cfg.init_from = Some(p.clone());
    }
    cfg.out_dir = out;
    cfg.model.validate()?;
    if cfg.sampler.size < 16 {
        bail!("--patch must be at least 16 (the networks halve the size four times)");
    }
    if !(cfg.optimizer.lr > 0.0 && cfg.optimizer.lr.is_finite()) {
        bail!("--lr must be a positive number");
    }
    if let Some((p, _)) = auto.as_mut() {
        // an --augment preset keeps the plan's mirroring decision (--mirror changes it)
        cfg.augment = p.augment(cfg.augment.clone());
        // the flags' values where they override the plan's
        for (what, planned, now) in [
            ("patch", p.patch, cfg.sampler.size),
            ("batch", p.batch, cfg.batch),
            ("base", p.base, cfg.model.base()),
            ("validation cases", p.val_cases, cfg.val_count),
        ] {
            if planned != now {
                p.reasons
                    .push(format!("{what} {now} (a flag; the plan chose {planned})"));
            }
        }
        if p.model != cfg.model.name() {
            p.reasons.push(format!(
                "network {} (a flag; the plan chose {})",
                cfg.model.name(),
                p.model
            ));
        }
        p.patch = cfg.sampler.size;
        p.batch = cfg.batch;
        p.base = cfg.model.base();
        p.val_cases = cfg.val_count;
        p.model = cfg.model.name().to_string();
        if p.layer_norm != cfg.model.norm() {
            p.reasons.push(format!(
                "normalisation layers {:?} (a flag; the plan chose {:?})",
                cfg.model.norm(),
                p.layer_norm
            ));
            p.layer_norm = cfg.model.norm();
        }
        cfg.plan = Some(p.clone());
    }
    Ok((cfg, auto))
}

pub fn run(a: TrainArgs) -> Result<()> {
    let (cfg, auto) = plan(&a)?;
    // under `mpirun -np N` (the `mpi` feature): rank 0 prints and writes
    let comm = crate::ranks::comm();
    let root = comm.is_root();
    if let (Some((p, fp)), true) = (&auto, root) {
        say!(
            "plan from {} cases ({} classes: values {:?}):",
            fp.cases.len(),
            p.labels.classes(),
            p.labels.values
        );
        for r in &p.reasons {
            say!("  {r}");
            tracing::info!("plan: {r}");
        }
        std::fs::create_dir_all(&cfg.out_dir)
            .with_context(|| format!("cannot create {}", cfg.out_dir.display()))?;
        seg_train::plan::write_plan(&cfg.out_dir.join("plan.json"), p, fp)?;
    }
    let device = parse_device(&a.device)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                say!("\nsecond interrupt: exiting without a checkpoint");
                std::process::exit(130);
            }
            say!(
                "\ninterrupt: writing a checkpoint after this step (Ctrl-C again to quit at once)"
            );
        });
    }
    let out = cfg.out_dir.clone();
    let epochs = cfg.epochs;
    let steps = cfg.steps_per_epoch;
    let mut trainer =
        Trainer::with_comm(cfg, &device, a.resume, comm).context("preparing the run")?;
    if a.dry_run && !root {
        return Ok(());
    }
    if a.dry_run {
        let (t, v) = trainer.split_sizes();
        let what = if auto.is_some() {
            "training slices and"
        } else {
            "training and"
        };
        println!(
            "plan ok: {t} {what} {v} validation images; wrote {} and {}",
            out.join("config.json").display(),
            out.join("split.json").display()
        );
        return Ok(());
    }
    let mut progress = Progress {
        bar: None,
        steps,
        epochs,
        curves: out.join("curves.png"),
        history: Vec::new(),
        loss_sum: 0.0,
        loss_n: 0,
    };
    let outcome = match root {
        true => trainer.run(&mut progress, &stop)?,
        false => trainer.run(&mut seg_train::trainer::Silent, &stop)?,
    };
    let best = trainer.state.best_dice;
    if !root {
        if let Outcome::Interrupted { .. } = outcome {
            std::process::exit(130);
        }
        return Ok(());
    }
    match outcome {
        Outcome::Finished => say!(
            "done: best validation Dice {:.4}; model bundle {}",
            best.unwrap_or(0.0),
            out.join("best.safetensors").display()
        ),
        Outcome::EarlyStopped { epoch } => say!(
            "early stop after epoch {epoch}: best validation Dice {:.4}; model bundle {}",
            best.unwrap_or(0.0),
            out.join("best.safetensors").display()
        ),
        Outcome::TimeUp { epoch } => say!(
            "time budget reached after epoch {epoch}: best validation Dice {:.4}; model bundle {}",
            best.unwrap_or(0.0),
            out.join("best.safetensors").display()
        ),
        Outcome::Interrupted { epoch, step } => {
            say!("interrupted in epoch {} at step {step}; checkpoint written; continue with: seg-cli train --resume --out {}", epoch + 1, out.display());
            std::process::exit(130);
        }
    }
    if let Some(b) = best {
        println!("best validation Dice: {b:.4}");
    }
    Ok(())
}
