//! [`Model`], any of the four networks, and [`Network`], a model together with
//! its parameters: the unit that is trained, saved, loaded and summarised.

use crate::error::{Error, Result};
use crate::summary::{Summary, SummaryRow};
use crate::{AttentionUNet, ModelConfig, Recorder, ResUNet, UNet, UNetPlusPlus};
use seg_core::params::{read_safetensors, LoadReport};
use seg_core::{DType, Device, ParamStore, Tensor, VarBuilder};
use std::collections::HashMap;
use std::path::Path;

/// The metadata key under which a weight file stores its [`ModelConfig`] (JSON).
pub const CONFIG_METADATA_KEY: &str = "config";

/// Any of the four networks.
#[derive(Debug, Clone)]
pub enum Model {
    /// U-Net.
    UNet(UNet),
    /// ResUNet.
    ResUNet(ResUNet),
    /// Attention U-Net.
    AttentionUNet(AttentionUNet),
    /// UNet++.
    UNetPlusPlus(UNetPlusPlus),
}

impl Model {
    /// Builds the configured network from a `VarBuilder`.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        Ok(match cfg {
            ModelConfig::UNet(c) => Self::UNet(UNet::new(c, vb)?),
            ModelConfig::ResUNet(c) => Self::ResUNet(ResUNet::new(c, vb)?),
            ModelConfig::AttentionUNet(c) => Self::AttentionUNet(AttentionUNet::new(c, vb)?),
            ModelConfig::UNetPlusPlus(c) => Self::UNetPlusPlus(UNetPlusPlus::new(c, vb)?),
        })
    }

    /// Logits for an NCHW batch; `train` selects batch statistics in BatchNorm
    /// (and, for UNet++ with deep supervision, the stacked heads).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_recorded(x, train, &mut |_, _| {})
    }

    /// As [`forward_t`](Self::forward_t), reporting each block's output.
    pub fn forward_recorded(&self, x: &Tensor, train: bool, rec: &mut Recorder) -> Result<Tensor> {
        Ok(match self {
            Self::UNet(m) => m.forward_recorded(x, train, rec)?,
            Self::ResUNet(m) => m.forward_recorded(x, train, rec)?,
            Self::AttentionUNet(m) => m.forward_recorded(x, train, rec)?,
            Self::UNetPlusPlus(m) => m.forward_recorded(x, train, rec)?,
        })
    }
}

/// A network with its parameters on a device.
#[derive(Clone)]
pub struct Network {
    config: ModelConfig,
    params: ParamStore,
    model: Model,
    device: Device,
}

impl Network {
    /// Builds the network with fresh weights (PyTorch's default
    /// initialisation, drawn deterministically from `seed`).
    pub fn new(config: &ModelConfig, device: &Device, seed: u64) -> Result<Self> {
        let params = ParamStore::new(seed);
        let model = Model::new(config, params.var_builder(DType::F32, device))?;
        Ok(Self { config: config.clone(), params, model, device: device.clone() })
    }

    /// Builds the network a weight file describes (its `config` metadata) and
    /// loads its weights.
    pub fn from_file(path: &Path, device: &Device) -> Result<(Self, HashMap<String, String>)> {
        let (tensors, metadata) = read_safetensors(path)?;
        let cfg = metadata
            .get(CONFIG_METADATA_KEY)
            .ok_or_else(|| Error::NoConfig { path: path.display().to_string() })?;
        let cfg = ModelConfig::from_json(cfg)?;
        let net = Self::new(&cfg, device, 0)?;
        net.params.load_tensors(&tensors, path)?;
        Ok((net, metadata))
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The parameters and buffers.
    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Logits for an NCHW batch.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.model.forward_t(x, train)
    }

    /// Loads weights in PyTorch names from a safetensors file (extra entries
    /// such as `num_batches_tracked` are tolerated; a missing or mis-shaped
    /// tensor is an error naming it).
    pub fn load_weights(&self, path: &Path) -> Result<LoadReport> {
        Ok(self.params.load_safetensors(path)?)
    }

    /// Saves every weight and buffer in PyTorch names (so that
    /// `load_state_dict(strict=True)` accepts the file), with the model
    /// configuration under `config` and `extra` in the metadata. Atomic.
    pub fn save_weights(&self, path: &Path, extra: &HashMap<String, String>) -> Result<()> {
        let mut metadata = extra.clone();
        metadata.insert(CONFIG_METADATA_KEY.to_string(), self.config.to_json());
        Ok(self.params.save_safetensors(path, &metadata)?)
    }

    /// A torchinfo-like summary for an input of `height`×`width` (batch 1):
    /// runs one inference pass and reports each block's output shape and
    /// parameter count.
    pub fn summary(&self, height: usize, width: usize) -> Result<Summary> {
        let x = Tensor::zeros((1, self.config.in_channels(), height, width), DType::F32, &self.device)?;
        let mut rows = Vec::new();
        let params = &self.params;
        let out = self.model.forward_recorded(&x, false, &mut |name, t| {
            rows.push(SummaryRow {
                name: name.to_string(),
                output_shape: t.dims().to_vec(),
                params: params.num_trainable_under(name),
            })
        })?;
        let buffers = params
            .vars()
            .iter()
            .filter(|(k, _)| seg_core::params::is_buffer(k))
            .map(|(_, v)| v.elem_count())
            .sum();
        Ok(Summary {
            model: self.config.name().to_string(),
            config: self.config.to_json(),
            input_shape: x.dims().to_vec(),
            output_shape: out.dims().to_vec(),
            rows,
            total_params: params.num_trainable(),
            buffer_elements: buffers,
        })
    }
}
