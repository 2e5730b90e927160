//! A checkpoint is a self-contained model bundle: one `.safetensors` file with
//! the weights under PyTorch's names and, in its metadata, the model config
//! (`config`), the preprocessing plan, the patch size, the sliding-window
//! settings and the threshold chosen on validation — `predict` needs nothing
//! else. The optimiser and loop state go in a sidecar
//! (`<name>.state.safetensors`) used only to resume training.

use crate::error::{Error, Result};
use crate::infer::SlidingWindow;
use seg_core::params::{read_safetensors, write_safetensors};
use seg_core::{Device, Tensor};
use seg_data::Preprocess;
use seg_models::Network;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Metadata keys of the bundle (besides `config`).
pub const KEY_BUNDLE: &str = "seg.bundle";

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
    let meta = HashMap::from([("seg.train_state".to_string(), state_json.to_string())]);
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
        .get("seg.train_state")
        .cloned()
        .ok_or_else(|| Error::Checkpoint {
            path: path.to_path_buf(),
            reason: "no training state in this file".into(),
        })?;
    Ok((t, s))
}
