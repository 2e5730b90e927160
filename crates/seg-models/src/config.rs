//! The registry of networks by name and their configurations.
//!
//! A configuration serialises as the reference's constructor arguments plus
//! the name under `model`, e.g.
//! `{"model":"unet","in_channels":3,"out_channels":1,"base":64,"bilinear":false}`;
//! absent keys take the documented defaults (those of `models.py`).

use crate::error::{Error, Result};
use crate::{AttentionUNetConfig, ResUNetConfig, UNetConfig, UNetPlusPlusConfig};
use seg_core::layers::NormKind;
use serde::{Deserialize, Serialize};

/// The names the registry knows.
pub const MODEL_NAMES: [&str; 4] = ["unet", "resunet", "attention_unet", "unetpp"];

/// How a decoder doubles the resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsample {
    /// 2×2 transposed convolution, stride 2.
    Transpose,
    /// Bilinear interpolation (align_corners=True).
    Bilinear,
    /// Nearest-neighbour interpolation followed by a 3×3 convolution.
    NearestConv,
}

impl Upsample {
    /// The name used on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Transpose => "transpose",
            Self::Bilinear => "bilinear",
            Self::NearestConv => "nearest + 3x3 conv",
        }
    }
}

/// A network configuration of any of the four kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model")]
pub enum ModelConfig {
    /// Classic U-Net.
    #[serde(rename = "unet")]
    UNet(UNetConfig),
    /// Residual U-Net with spatial attention on the decoder.
    #[serde(rename = "resunet")]
    ResUNet(ResUNetConfig),
    /// Attention U-Net (Oktay et al. 2018).
    #[serde(rename = "attention_unet")]
    AttentionUNet(AttentionUNetConfig),
    /// UNet++ (Zhou et al. 2018).
    #[serde(rename = "unetpp")]
    UNetPlusPlus(UNetPlusPlusConfig),
}

macro_rules! each {
    ($self:expr, $c:ident => $e:expr) => {
        match $self {
            ModelConfig::UNet($c) => $e,
            ModelConfig::ResUNet($c) => $e,
            ModelConfig::AttentionUNet($c) => $e,
            ModelConfig::UNetPlusPlus($c) => $e,
        }
    };
}

impl ModelConfig {
    /// The default configuration of the named network.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "unet" => Ok(Self::UNet(Default::default())),
            "resunet" => Ok(Self::ResUNet(Default::default())),
            "attention_unet" => Ok(Self::AttentionUNet(Default::default())),
            "unetpp" => Ok(Self::UNetPlusPlus(Default::default())),
            _ => Err(Error::UnknownModel {
                name: name.to_string(),
            }),
        }
    }

    /// Parses the JSON form (as stored in checkpoints and fixtures).
    pub fn from_json(s: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(s)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a model configuration always serialises")
    }

    /// The registry name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::UNet(_) => "unet",
            Self::ResUNet(_) => "resunet",
            Self::AttentionUNet(_) => "attention_unet",
            Self::UNetPlusPlus(_) => "unetpp",
        }
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        each!(self, c => c.in_channels)
    }

    /// Output channels (1 for binary segmentation with a sigmoid).
    pub fn out_channels(&self) -> usize {
        each!(self, c => c.out_channels)
    }

    /// Width of the first level.
    pub fn base(&self) -> usize {
        each!(self, c => c.base)
    }

    /// The normalisation layers used.
    pub fn norm(&self) -> NormKind {
        each!(self, c => c.norm)
    }

    /// Spatial dimensions: 2 (images) or 3 (volumes).
    pub fn dims(&self) -> usize {
        each!(self, c => c.dims)
    }

    /// With 2D or 3D layers.
    pub fn with_dims(mut self, dims: usize) -> Self {
        each!(&mut self, c => c.dims = dims);
        self
    }

    /// With another input channel count.
    pub fn with_in_channels(mut self, n: usize) -> Self {
        each!(&mut self, c => c.in_channels = n);
        self
    }

    /// With another output channel count.
    pub fn with_out_channels(mut self, n: usize) -> Self {
        each!(&mut self, c => c.out_channels = n);
        self
    }

    /// With another base width.
    pub fn with_base(mut self, n: usize) -> Self {
        each!(&mut self, c => c.base = n);
        self
    }

    /// With another normalisation.
    pub fn with_norm(mut self, norm: NormKind) -> Self {
        each!(&mut self, c => c.norm = norm);
        self
    }

    /// Bilinear upsampling for U-Net (ignored by the others, which have a fixed scheme).
    pub fn with_bilinear(mut self, bilinear: bool) -> Self {
        if let Self::UNet(c) = &mut self {
            c.bilinear = bilinear;
        }
        self
    }

    /// Deep supervision for UNet++ (ignored by the others).
    pub fn with_deep_supervision(mut self, on: bool) -> Self {
        if let Self::UNetPlusPlus(c) = &mut self {
            c.deep_supervision = on;
        }
        self
    }

    /// The decoder's upsampling (that of `models.py`; only U-Net has a choice).
    pub fn upsample(&self) -> Upsample {
        match self {
            Self::UNet(c) if c.bilinear => Upsample::Bilinear,
            Self::UNet(_) | Self::ResUNet(_) => Upsample::Transpose,
            Self::AttentionUNet(_) => Upsample::NearestConv,
            Self::UNetPlusPlus(_) => Upsample::Bilinear,
        }
    }

    /// With the upsampling `up`: U-Net takes either; the others accept only
    /// their own fixed scheme and otherwise give an error naming it.
    pub fn try_with_upsample(self, up: Upsample) -> Result<Self> {
        match self {
            Self::UNet(_) if up != Upsample::NearestConv => {
                Ok(self.with_bilinear(up == Upsample::Bilinear))
            }
            _ if self.upsample() == up => Ok(self),
            _ => Err(Error::InvalidConfig {
                model: self.name(),
                reason: format!(
                    "its decoder's upsampling is fixed to `{}` (as in the reference models.py); `{}` is a choice for unet only",
                    self.upsample().name(),
                    up.name()
                ),
            }),
        }
    }

    /// With deep supervision on or off; only UNet++ has it, and the others
    /// give an error when asked to turn it on.
    pub fn try_with_deep_supervision(self, on: bool) -> Result<Self> {
        match self {
            Self::UNetPlusPlus(_) => Ok(self.with_deep_supervision(on)),
            _ if !on => Ok(self),
            _ => Err(Error::InvalidConfig {
                model: self.name(),
                reason: "it has no deep supervision heads (only unetpp does)".into(),
            }),
        }
    }

    /// Checks that the values describe a network that can be built.
    pub fn validate(&self) -> Result<()> {
        let model = self.name();
        let bad = |reason: String| Err(Error::InvalidConfig { model, reason });
        if !matches!(self.dims(), 2 | 3) {
            return bad(format!("dims must be 2 or 3 (got {})", self.dims()));
        }
        if self.in_channels() == 0 {
            return bad("in_channels must be at least 1".into());
        }
        if self.out_channels() == 0 {
            return bad("out_channels must be at least 1".into());
        }
        let min_base = match self {
            // the attention gates have base / 2 intermediate channels
            Self::AttentionUNet(_) => 2,
            _ => 1,
        };
        if self.base() < min_base {
            return bad(format!("base must be at least {min_base}"));
        }
        // bounds that keep the weights' size finite and sane (base 1024 is
        // already a 7.9-billion-parameter U-Net)
        if self.base() > 1024 || self.in_channels() > 4096 || self.out_channels() > 4096 {
            return bad(format!(
                "base ≤ 1024 and channel counts ≤ 4096 (got base {}, in {}, out {})",
                self.base(),
                self.in_channels(),
                self.out_channels()
            ));
        }
        if let NormKind::Group { groups: 0 } = self.norm() {
            return bad("group norm needs at least 1 group".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fixture_configs_with_defaults() {
        let c = ModelConfig::from_json(
            r#"{"model": "unet", "in_channels": 1, "out_channels": 2, "base": 8, "bilinear": true}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            ModelConfig::UNet(UNetConfig {
                in_channels: 1,
                out_channels: 2,
                base: 8,
                bilinear: true,
                norm: NormKind::Batch,
                dims: 2,
            })
        );
        // 2D configurations serialise without `dims`; 3D ones with it
        assert!(!c.to_json().contains("dims"));
        let c3 = c.clone().with_dims(3);
        assert!(c3.to_json().contains(r#""dims":3"#), "{}", c3.to_json());
        assert_eq!(ModelConfig::from_json(&c3.to_json()).unwrap(), c3);
        assert!(c.with_dims(4).validate().is_err());
        let c = ModelConfig::from_json(r#"{"model": "unetpp"}"#).unwrap();
        assert_eq!(c.base(), 32);
        let c = ModelConfig::from_json(r#"{"model": "resunet"}"#).unwrap();
        assert_eq!((c.in_channels(), c.base()), (1, 64));
        for name in MODEL_NAMES {
            let c = ModelConfig::from_name(name).unwrap();
            assert_eq!(c.name(), name);
            assert_eq!(ModelConfig::from_json(&c.to_json()).unwrap(), c);
        }
    }

    #[test]
    fn refuses_unknown_models_keys_and_bad_values() {
        assert!(matches!(
            ModelConfig::from_name("vnet"),
            Err(Error::UnknownModel { .. })
        ));
        assert!(ModelConfig::from_json(r#"{"model": "vnet"}"#).is_err());
        assert!(ModelConfig::from_json(r#"{"model": "unet", "bas": 8}"#).is_err());
        assert!(ModelConfig::from_json(r#"{"model": "unet", "base": 0}"#).is_err());
        assert!(ModelConfig::from_json(r#"{"model": "attention_unet", "base": 1}"#).is_err());
        let g =
            ModelConfig::from_json(r#"{"model": "unet", "norm": {"kind": "group", "groups": 8}}"#)
                .unwrap();
        assert_eq!(g.norm(), NormKind::Group { groups: 8 });
    }

    #[test]
    fn upsampling_and_deep_supervision_are_chosen_only_where_the_network_has_a_choice() {
        let unet = ModelConfig::from_name("unet").unwrap();
        assert_eq!(unet.upsample(), Upsample::Transpose);
        let bi = unet.clone().try_with_upsample(Upsample::Bilinear).unwrap();
        assert_eq!(bi.upsample(), Upsample::Bilinear);
        assert_eq!(
            bi.try_with_upsample(Upsample::Transpose)
                .unwrap()
                .upsample(),
            Upsample::Transpose
        );
        // the fixed schemes are accepted as they are, others refused with the fixed one named
        for (name, fixed, other) in [
            ("resunet", Upsample::Transpose, Upsample::Bilinear),
            ("unetpp", Upsample::Bilinear, Upsample::Transpose),
            ("attention_unet", Upsample::NearestConv, Upsample::Bilinear),
        ] {
            let c = ModelConfig::from_name(name).unwrap();
            assert_eq!(c.clone().try_with_upsample(fixed).unwrap(), c);
            let e = c.try_with_upsample(other).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(fixed.name()), "{e}");
        }
        let pp = ModelConfig::from_name("unetpp").unwrap();
        let ds = pp.try_with_deep_supervision(true).unwrap();
        assert!(matches!(ds, ModelConfig::UNetPlusPlus(c) if c.deep_supervision));
        let e = ModelConfig::from_name("resunet")
            .unwrap()
            .try_with_deep_supervision(true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("resunet") && e.contains("unetpp"), "{e}");
        let inst =
            ModelConfig::from_json(r#"{"model": "unet", "norm": {"kind": "instance"}}"#).unwrap();
        assert_eq!(inst.norm(), NormKind::Instance);
    }
}
