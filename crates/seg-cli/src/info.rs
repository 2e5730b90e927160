//! `seg-cli info`: a torchinfo-like summary of a configured network.

use anyhow::{bail, Context, Result};
use clap::Args;
use seg_core::Device;
use seg_models::{ModelConfig, Network, MODEL_NAMES};

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Network: unet, resunet, attention_unet or unetpp.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(MODEL_NAMES))]
    model: String,
    /// Width of the first level (default: the network's own, 64 or 32 for unetpp).
    #[arg(long)]
    base: Option<usize>,
    /// Input channels (default: the network's own).
    #[arg(long)]
    in_channels: Option<usize>,
    /// Output channels (default 1).
    #[arg(long)]
    out_channels: Option<usize>,
    /// U-Net: bilinear upsampling instead of transposed convolutions.
    #[arg(long)]
    bilinear: bool,
    /// UNet++: deep supervision heads.
    #[arg(long)]
    deep_supervision: bool,
    /// 3 for the 3D network (Conv3d layers; traced on a D×H×W volume with D = H).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..4))]
    dims: u8,
    /// Input height x width used to trace the output shapes.
    #[arg(long, default_value = "256x256", value_parser = parse_hw)]
    input: (usize, usize),
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// Parses `HxW` (e.g. `584x565`).
pub fn parse_hw(s: &str) -> Result<(usize, usize), String> {
    let (h, w) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("expected HxW such as 256x256, got {s:?}"))?;
    let p = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("not a size: {v:?} in {s:?}"))
    };
    let (h, w) = (p(h)?, p(w)?);
    if h == 0 || w == 0 {
        return Err(format!("height and width must be positive, got {s:?}"));
    }
    Ok((h, w))
}

pub fn run(a: InfoArgs) -> Result<()> {
    let mut cfg = ModelConfig::from_name(&a.model)?;
    if let Some(b) = a.base {
        cfg = cfg.with_base(b);
    }
    if let Some(c) = a.in_channels {
        cfg = cfg.with_in_channels(c);
    }
    if let Some(c) = a.out_channels {
        cfg = cfg.with_out_channels(c);
    }
    if a.bilinear {
        if !matches!(cfg, ModelConfig::UNet(_)) {
            bail!("--bilinear applies to unet only");
        }
        cfg = cfg.with_bilinear(true);
    }
    if a.deep_supervision {
        if !matches!(cfg, ModelConfig::UNetPlusPlus(_)) {
            bail!("--deep-supervision applies to unetpp only");
        }
        cfg = cfg.with_deep_supervision(true);
    }
    cfg = cfg.with_dims(a.dims as usize);
    cfg.validate()?;
    let net = Network::new(&cfg, &Device::Cpu, 0).context("building the network")?;
    let (h, w) = a.input;
    let summary = net
        .summary(h, w)
        .with_context(|| format!("tracing a {h}x{w} input"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("{summary}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_hw;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_hw("584x565").unwrap(), (584, 565));
        assert_eq!(parse_hw("32X48").unwrap(), (32, 48));
        assert!(parse_hw("32").is_err());
        assert!(parse_hw("0x4").is_err());
        assert!(parse_hw("ax4").is_err());
    }
}
