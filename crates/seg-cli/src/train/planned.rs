//! The training data of a run and, for planned data (MSD/nnU-Net folders,
//! volumes, multi-class label maps), the automatic plan with the flags that
//! override its data decisions (`--context`, `--slice-axis`, `--intensity`,
//! `--window`, `--mirror`, `--target-spacing`).

use super::{dataset_spec, Auto, TrainArgs};
use anyhow::{bail, Context, Result};
use seg_data::labelmap::IntensityNorm;
use seg_data::spec::DatasetSpec;
use seg_data::synthetic::SyntheticConfig;
use seg_train::trainer::DataSource;
use std::path::Path;

/// `--target-spacing`: a spacing or each case's own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TargetSpacing {
    Native,
    Mm([f64; 2]),
}

pub(super) fn parse_target_spacing(s: &str) -> std::result::Result<TargetSpacing, String> {
    if s.eq_ignore_ascii_case("native") {
        return Ok(TargetSpacing::Native);
    }
    let v: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("{s}: {e}"))?;
    let t = match v.as_slice() {
        [a] => [*a, *a],
        [a, b] => [*a, *b],
        _ => return Err(format!("{s}: give MM, ROW,COL or native")),
    };
    if t.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
        return Err(format!("{s}: spacings must be positive"));
    }
    Ok(TargetSpacing::Mm(t))
}

/// The training data of `dir`: DRIVE, the synthetic set and binary 2D
/// paired folders as they are; MSD/nnU-Net folders, volumes and multi-class
/// label maps through the automatic plan (returned, with the flags that
/// override its data decisions applied).
pub(super) fn data_source(a: &TrainArgs, dir: &Path) -> Result<(DataSource, Option<Auto>)> {
    let spec = dataset_spec(dir, a.dataset.as_deref())?;
    match &spec {
        DatasetSpec::Drive { root } => return Ok((DataSource::Drive { root: root.clone() }, None)),
        DatasetSpec::Synthetic(_) => {
            return Ok((DataSource::Synthetic(SyntheticConfig::default()), None))
        }
        DatasetSpec::Folders { .. } | DatasetSpec::Msd(_) => {}
    }
    let (mut p, fp) = seg_train::plan::plan_dataset(&spec)
        .with_context(|| format!("planning from {}", dir.display()))?;
    if matches!(spec, DatasetSpec::Folders { .. }) && !seg_train::plan::needs_label_maps(&fp) {
        return Ok((
            DataSource::Folders {
                root: dir.to_path_buf(),
            },
            None,
        ));
    }
    let modalities = fp.cases[0].modalities;
    if let Some(d) = &a.dims {
        p = p.with_dims(d, modalities)?;
    }
    if let (Some(_), 3) = (a.context, p.dims) {
        bail!("--context applies to 2D / 2.5D training; a 3D network (--dims 3) sees the volume whole");
    }
    if let Some(c) = a.context {
        p.context = c;
        p.reasons.push(format!("--context {c}"));
    }
    p.in_channels = modalities * (2 * p.context + 1);
    if let Some(ax) = a.slice_axis {
        p.slice_axis = ax as usize;
        p.reasons.push(format!("--slice-axis {ax}"));
    }
    match (a.intensity.as_deref(), a.window) {
        (Some(_), Some(_)) => {
            bail!("--intensity and --window both set the normalisation: give one")
        }
        (Some("ct"), None) => {
            let f = fp.foreground;
            p.norm = IntensityNorm::Ct {
                lower: f.p00_5,
                upper: f.p99_5,
                mean: f.mean,
                std: f.std,
            };
            p.reasons.push("--intensity ct".into());
        }
        (Some(_), None) => {
            p.norm = IntensityNorm::ZscoreCase;
            p.reasons.push("--intensity zscore".into());
        }
        (None, Some(w)) => {
            // the window onto [-1, 1]
            let (c, half) = (
                w.center as f32,
                (w.width as f32 / 2.0).max(f32::MIN_POSITIVE),
            );
            p.norm = IntensityNorm::Ct {
                lower: c - half,
                upper: c + half,
                mean: c,
                std: half,
            };
            p.reasons.push(format!(
                "--window: clip to [{}, {}], onto [-1, 1]",
                c - half,
                c + half
            ));
        }
        (None, None) => {}
    }
    if let Some(m) = a.mirror.as_deref() {
        let on = m == "on";
        p.mirror = [on, on];
        p.reasons.push(format!("--mirror {m}"));
    }
    match a.target_spacing {
        Some(TargetSpacing::Native) => {
            p.target_spacing = None;
            p.reasons
                .push("--target-spacing native: each case at its own spacing".into());
        }
        Some(TargetSpacing::Mm(t)) => {
            p.target_spacing = Some(t);
            p.reasons.push(format!("--target-spacing {t:?}"));
        }
        None => {}
    }
    let layout = spec.kind().name();
    let cfg = p.train_config(dir, layout)?;
    Ok((cfg.data, Some((p, fp))))
}
