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
        Ok(Self {
            config: config.clone(),
            params,
            model,
            device: device.clone(),
        })
    }

    /// Builds the network a weight file describes (its `config` metadata) and
    /// loads its weights.
    pub fn from_file(path: &Path, device: &Device) -> Result<(Self, HashMap<String, String>)> {
        let (tensors, metadata) = read_safetensors(path)?;
        let cfg = metadata
            .get(CONFIG_METADATA_KEY)
            .ok_or_else(|| Error::NoConfig {
                path: path.display().to_string(),
            })?;
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

    /// A copy of the model over detached weights, for inference: its forward
    /// passes build no autograd graph, so memory is bounded by the batch.
    pub fn inference_model(&self) -> Result<Model> {
        let tensors: HashMap<String, Tensor> = self
            .params
            .tensors()
            .into_iter()
            .map(|(k, t)| (k, t.detach()))
            .collect();
        Model::new(
            &self.config,
            VarBuilder::from_tensors(tensors, DType::F32, &self.device),
        )
    }

    /// Loads weights in PyTorch names from a safetensors file (extra entries
    /// such as `num_batches_tracked` are tolerated; a missing or mis-shaped
    /// tensor is an error naming it).
    pub fn load_weights(&self, path: &Path) -> Result<LoadReport> {
        Ok(self.params.load_safetensors(path)?)
    }

    /// Fine-tuning: loads the tensors of a safetensors file (a seg bundle
    /// or PyTorch weights in the same names) that match this network's
    /// names and shapes; the rest keep their initialisation (see
    /// [`seg_core::params::MatchReport`]).
    pub fn load_matching(&self, path: &Path) -> Result<seg_core::params::MatchReport> {
        let (tensors, _) = seg_core::params::read_safetensors(path)?;
        Ok(self.params.load_matching(&tensors)?)
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
        let c = self.config.in_channels();
        // 3D networks: a volume as deep as it is high
        let shape: Vec<usize> = if self.config.dims() == 3 {
            vec![1, c, height, height, width]
        } else {
            vec![1, c, height, width]
        };
        let x = Tensor::zeros(shape, DType::F32, &self.device)?;
        let mut rows = Vec::new();
        let params = &self.params;
        let out = self.model.forward_recorded(&x, false, &mut |name, t| {
            rows.push(SummaryRow {
                name: name.to_string(),
                output_shape: {
                    // volumes run depth-major inside: report PyTorch's NCDHW
                    let mut s = t.dims().to_vec();
                    if s.len() == 5 {
                        s.swap(1, 2);
                    }
                    s
                },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MODEL_NAMES;
    use seg_core::params::is_buffer;

    fn cfg(name: &str, base: usize) -> ModelConfig {
        ModelConfig::from_name(name)
            .unwrap()
            .with_base(base)
            .with_in_channels(2)
            .with_out_channels(1)
    }

    #[test]
    fn unet_parameter_counts_match_pytorch() {
        let t = ModelConfig::from_name("unet").unwrap();
        let n = Network::new(&t, &Device::Cpu, 0).unwrap();
        assert_eq!(n.params().num_trainable(), 31_037_633);
        let n = Network::new(&t.with_bilinear(true), &Device::Cpu, 0).unwrap();
        assert_eq!(n.params().num_trainable(), 17_262_977);
    }

    #[test]
    fn every_network_accepts_odd_sizes_and_keeps_them() {
        for name in MODEL_NAMES {
            let net = Network::new(&cfg(name, 2), &Device::Cpu, 1).unwrap();
            for (h, w) in [(16, 16), (37, 29), (50, 17)] {
                let x = Tensor::randn(0f32, 1.0, (2, 2, h, w), &Device::Cpu).unwrap();
                for train in [false, true] {
                    let y = net.forward_t(&x, train).unwrap();
                    assert_eq!(y.dims(), &[2, 1, h, w], "{name} {h}x{w} train={train}");
                }
            }
        }
    }

    #[test]
    fn every_3d_network_keeps_odd_volume_sizes_and_summarises_in_ncdhw() {
        for name in MODEL_NAMES {
            let net = Network::new(&cfg(name, 2).with_dims(3), &Device::Cpu, 1).unwrap();
            let x = Tensor::randn(0f32, 1.0, (2, 2, 17, 16, 19), &Device::Cpu).unwrap();
            for train in [false, true] {
                let y = net.forward_t(&x, train).unwrap();
                assert_eq!(y.dims(), &[2, 1, 17, 16, 19], "{name} train={train}");
            }
            let s = net.summary(16, 20).unwrap();
            assert_eq!(s.output_shape, vec![1, 1, 16, 16, 20]);
            assert_eq!(
                s.rows[0].output_shape[..3],
                [1, 2, 16],
                "{name}: NCDHW rows"
            );
            let sum: usize = s.rows.iter().map(|r| r.params).sum();
            assert_eq!(sum, s.total_params, "{name}");
            // a 2D batch is not a volume
            let flat = Tensor::zeros((1, 2, 16, 16), seg_core::DType::F32, &Device::Cpu).unwrap();
            let msg = net.forward_t(&flat, false).unwrap_err().to_string();
            assert!(msg.contains("(N, C, D, H, W)"), "{msg}");
        }
    }

    #[test]
    fn deep_supervision_stacks_heads_in_training_only() {
        let c = cfg("unetpp", 2).with_deep_supervision(true);
        let net = Network::new(&c, &Device::Cpu, 0).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 2, 20, 24), &Device::Cpu).unwrap();
        assert_eq!(net.forward_t(&x, true).unwrap().dims(), &[4, 2, 1, 20, 24]);
        assert_eq!(net.forward_t(&x, false).unwrap().dims(), &[2, 1, 20, 24]);
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let net = Network::new(&cfg("unet", 2), &Device::Cpu, 0).unwrap();
        let small = Tensor::zeros((1, 2, 15, 40), DType::F32, &Device::Cpu).unwrap();
        let msg = net.forward_t(&small, false).unwrap_err().to_string();
        assert!(msg.contains("at least 16"), "{msg}");
        let chans = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
        let msg = net.forward_t(&chans, false).unwrap_err().to_string();
        assert!(msg.contains("3 channels"), "{msg}");
    }

    #[test]
    fn group_norm_variant_trains_without_running_stats() {
        let c = cfg("resunet", 4).with_norm(seg_core::layers::NormKind::Group { groups: 2 });
        let net = Network::new(&c, &Device::Cpu, 0).unwrap();
        assert!(net.params().vars().iter().all(|(k, _)| !is_buffer(k)));
        let x = Tensor::randn(0f32, 1.0, (1, 2, 16, 16), &Device::Cpu).unwrap();
        let loss = net
            .forward_t(&x, true)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        for (name, v) in net.params().trainable() {
            assert!(grads.get(v.as_tensor()).is_some(), "no gradient for {name}");
        }
    }

    #[test]
    fn summary_rows_cover_every_parameter() {
        for name in MODEL_NAMES {
            let net = Network::new(&cfg(name, 2), &Device::Cpu, 0).unwrap();
            let s = net.summary(32, 48).unwrap();
            let sum: usize = s.rows.iter().map(|r| r.params).sum();
            assert_eq!(sum, s.total_params, "{name}: rows miss parameters");
            assert_eq!(s.output_shape, vec![1, 1, 32, 48]);
            let text = s.to_string();
            assert!(text.contains("Total params"), "{text}");
        }
        let net = Network::new(
            &ModelConfig::from_name("unet").unwrap().with_base(4),
            &Device::Cpu,
            0,
        )
        .unwrap();
        let s = net.summary(64, 64).unwrap();
        let inc = &s.rows[0];
        assert_eq!(
            (inc.name.as_str(), inc.output_shape.as_slice()),
            ("inc", &[1, 4, 64, 64][..])
        );
        assert_eq!(s.rows[4].output_shape, vec![1, 64, 4, 4]);
    }

    #[test]
    fn weights_round_trip_with_config_and_pytorch_names() {
        let dir = std::env::temp_dir().join(format!("seg-models-rt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        let c = cfg("attention_unet", 2);
        let a = Network::new(&c, &Device::Cpu, 3).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 2, 16, 16), &Device::Cpu).unwrap();
        a.forward_t(&x, true).unwrap(); // moves the running stats
        a.save_weights(&path, &HashMap::from([("note".into(), "x".into())]))
            .unwrap();
        let (b, meta) = Network::from_file(&path, &Device::Cpu).unwrap();
        assert_eq!(b.config(), &c);
        assert_eq!(meta["note"], "x");
        let (ya, yb) = (
            a.forward_t(&x, false).unwrap(),
            b.forward_t(&x, false).unwrap(),
        );
        let d = (ya - yb)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
        let (tensors, _) = read_safetensors(&path).unwrap();
        assert!(tensors.contains_key("att1.W_g.0.weight"));
        assert_eq!(
            tensors["enc1.conv.1.num_batches_tracked"]
                .to_scalar::<i64>()
                .unwrap(),
            1
        );
        // a file for another width names the tensor and both shapes
        let other = Network::new(&cfg("attention_unet", 4), &Device::Cpu, 0).unwrap();
        let msg = other.load_weights(&path).unwrap_err().to_string();
        assert!(
            msg.contains("has shape") && msg.contains("expects"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
