//! Checkpoints and resumption, in one format.
//!
//! A checkpoint is a self-contained model bundle: one `.safetensors` file with
//! the weights under PyTorch's names and, in its metadata, the model config
//! (`config`), the preprocessing plan, the patch size, the sliding-window
//! settings and the threshold chosen on validation — `predict` needs nothing
//! else ([`save_bundle`], [`load_bundle`]). The resume state goes in a
//! sidecar (`<name>.state.safetensors`, [`state_path`]) used only to resume
//! training: the optimiser's tensors under their own names, the model's
//! weights under `model.<name>`, and the loop state ([`TrainState`]) as JSON
//! in the `seg.train_state` metadata ([`save_resume`], [`load_resume`]).
//! Every file is written atomically, so a killed run leaves the previous
//! checkpoint whole.

use crate::error::{Error, Result};
use crate::infer::SlidingWindow;
use crate::optim::Optimizer;
use crate::trainer::{TrainState, WeightAverage};
use seg_core::params::{read_safetensors, write_safetensors};
use seg_core::{Device, Tensor};
use seg_data::labelmap::SlicePlan;
use seg_data::Preprocess;
use seg_models::Network;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Metadata keys of the bundle (besides `config`).
pub const KEY_BUNDLE: &str = "seg.bundle";

/// Metadata key of the sidecar's loop state (JSON).
const KEY_TRAIN_STATE: &str = "seg.train_state";

/// Prefix of the model's weights among the sidecar's tensors (the others
/// are the optimiser's).
const MODEL_PREFIX: &str = "model.";

/// What a bundle carries besides the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleInfo {
    pub format_version: u32,
    pub preprocess: Preprocess,
    pub patch: usize,
    pub sliding_window: SlidingWindow,
    /// Decision threshold on the foreground probability, chosen on validation.
    pub threshold: f32,
    /// Epoch (1-based) whose weights these are.
    pub epoch: usize,
    /// Validation Dice (pooled, at `threshold`) of these weights, if validated.
    pub val_dice: Option<f64>,
    /// Multi-class models: how volumes are sliced and normalised, and the
    /// label values of the classes (outputs are written as those values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slices: Option<SlicePlan>,
    /// The automatic plan the model was trained under, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<crate::plan::Plan>,
    /// Binary models trained with field-of-view masks (fundus photographs):
    /// the median FOV diameter of the training images, in pixels. Predict
    /// then finds a missing FOV itself and brings inputs to this scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fov_diameter: Option<f64>,
    /// The convolutions' arithmetic in training (fp32 or bf16); absent in
    /// bundles written before it was recorded (fp32). Predict chooses its
    /// own (`Segmenter::set_precision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<seg_core::Precision>,
}

/// Writes the bundle atomically.
pub fn save_bundle(net: &Network, info: &BundleInfo, path: &Path) -> Result<()> {
    let meta = HashMap::from([(
        KEY_BUNDLE.to_string(),
        serde_json::to_string(info).expect("bundle info serialises"),
    )]);
    net.save_weights(path, &meta)?;
    Ok(())
}

/// Reads a bundle: the network (weights loaded) and its info.
pub fn load_bundle(path: &Path, device: &Device) -> Result<(Network, BundleInfo)> {
    if !path.is_file() {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            reason: "no such checkpoint file".into(),
        });
    }
    let (net, meta) = Network::from_file(path, device)?;
    let info = meta
        .get(KEY_BUNDLE)
        .ok_or_else(|| Error::Checkpoint { path: path.to_path_buf(), reason: format!("not a seg model bundle (no {KEY_BUNDLE:?} metadata); weights alone can be loaded with Network::load_weights") })?;
    let info: BundleInfo = serde_json::from_str(info).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("bad {KEY_BUNDLE} metadata: {e}"),
    })?;
    Ok((net, info))
}

/// The sidecar path of a bundle: `last.safetensors` → `last.state.safetensors`.
pub fn state_path(bundle: &Path) -> PathBuf {
    let stem = bundle
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    bundle.with_file_name(format!("{stem}.state.safetensors"))
}

/// Writes the sidecar: optimiser tensors and a JSON state.
pub fn save_state(path: &Path, tensors: &[(String, Tensor)], state_json: &str) -> Result<()> {
    let meta = HashMap::from([(KEY_TRAIN_STATE.to_string(), state_json.to_string())]);
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    write_safetensors(path, &cpu, &meta)?;
    Ok(())
}

/// Reads the sidecar.
pub fn load_state(path: &Path) -> Result<(HashMap<String, Tensor>, String)> {
    let (t, meta) = read_safetensors(path)?;
    let s = meta
        .get(KEY_TRAIN_STATE)
        .cloned()
        .ok_or_else(|| Error::Checkpoint {
            path: path.to_path_buf(),
            reason: "no training state in this file".into(),
        })?;
    Ok((t, s))
}

/// Writes the resume sidecar of a run at `path`: the optimiser's state, the
/// model's weights and the loop state (with the optimiser's step count).
pub fn save_resume(
    path: &Path,
    net: &Network,
    opt: &Optimizer,
    state: &TrainState,
    average: Option<&WeightAverage>,
) -> Result<()> {
    let (mut tensors, steps) = opt.state_tensors();
    for (k, t) in net.params().tensors() {
        tensors.push((format!("{MODEL_PREFIX}{k}"), t));
    }
    if let Some(a) = average {
        tensors.extend(a.state_tensors());
    }
    let mut st = state.clone();
    st.optimizer_steps = steps;
    save_state(
        path,
        &tensors,
        &serde_json::to_string(&st).expect("state serialises"),
    )
}

/// Restores a run from the sidecar at `path`, written by [`save_resume`]:
/// loads the weights into `net` and the optimiser's state into `opt`, and
/// returns the loop state.
pub fn load_resume(
    path: &Path,
    net: &Network,
    opt: &mut Optimizer,
    average: Option<&mut WeightAverage>,
) -> Result<TrainState> {
    if !path.is_file() {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            reason: "nothing to resume: no training state in this run folder".into(),
        });
    }
    let (tensors, json) = load_state(path)?;
    let weights = tensors
        .iter()
        .filter_map(|(k, t)| {
            k.strip_prefix(MODEL_PREFIX)
                .map(|n| (n.to_string(), t.clone()))
        })
        .collect();
    net.params().load_tensors(&weights, path)?;
    let state: TrainState = serde_json::from_str(&json).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("bad training state: {e}"),
    })?;
    opt.load_state(&tensors, state.optimizer_steps)?;
    if let Some(a) = average {
        a.load_state(&tensors, state.average_updates)?;
    }
    Ok(state)
}
