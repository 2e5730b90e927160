//! `seg-cli export`: a model bundle as an ONNX model (a thin shell over
//! `seg_train::export`).

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The model bundle (`best.safetensors` / `last.safetensors` of a run).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The ONNX file to write (atomically: a temporary file, then a rename).
    #[arg(long)]
    output: PathBuf,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let s = seg_train::export::export_bundle(&a.checkpoint, &a.output).with_context(|| {
        format!(
            "exporting {} to {}",
            a.checkpoint.display(),
            a.output.display()
        )
    })?;
    println!(
        "{}: {} ({}D) as ONNX opset {}, {} nodes, {} parameters (BatchNorm folded), {} bytes; input `{}` {}, output `{}`",
        s.path.display(),
        s.model,
        s.dims,
        seg_train::export::OPSET,
        s.nodes,
        s.parameters,
        s.bytes,
        seg_train::export::INPUT_NAME,
        if s.dims == 3 { "float32 NCDHW" } else { "float32 NCHW" },
        seg_train::export::OUTPUT_NAME,
    );
    Ok(())
}
