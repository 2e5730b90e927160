//! ONNX export of a model bundle: the network's eval-mode forward pass as
//! an ONNX graph (opset [`OPSET`]), with the bundle's preprocessing plan,
//! label values and class names in the model's `metadata_props`.
//!
//! The graph has one input, [`INPUT_NAME`] (float32 NCHW, or NCDHW for 3D
//! networks, with symbolic batch, depth, height and width; each spatial side
//! at least 16), and one output, [`OUTPUT_NAME`] (the raw logits, same
//! spatial size; UNet++ with deep supervision: the mean of its four heads,
//! as seg and the reference infer). The layers are those of
//! `shared/reference/models.py` (see `export/networks.rs` for how each maps to
//! ONNX operators); the protobuf is written by `onnx-protobuf`'s generated
//! messages.
//!
//! ```no_run
//! use seg_train::export::export_bundle;
//! let summary = export_bundle("runs/latest/best.safetensors".as_ref(), "model.onnx".as_ref())?;
//! println!("{} nodes", summary.nodes);
//! # Ok::<(), seg_train::Error>(())
//! ```

mod graph;
mod networks;

use crate::checkpoint::{load_bundle, BundleInfo};
use crate::error::{Error, Result};
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::{dimension, Dimension};
use onnx_protobuf::type_proto::{self, Value};
use onnx_protobuf::{
    GraphProto, Message, ModelProto, OperatorSetIdProto, StringStringEntryProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};
use seg_core::Device;
use seg_models::Network;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The ONNX operator set the graphs use (default domain).
pub const OPSET: i64 = 17;
/// The ONNX IR version matching [`OPSET`].
pub const IR_VERSION: i64 = 8;
/// The graph input: float32 NCHW (NCDHW for 3D networks).
pub const INPUT_NAME: &str = "image";
/// The graph output: logits, one channel per output class.
pub const OUTPUT_NAME: &str = "logits";

/// `metadata_props` key: the model configuration (JSON, as in the bundle's
/// `config`).
pub const KEY_CONFIG: &str = "seg.config";
/// `metadata_props` key: the whole bundle information (JSON, as in the
/// bundle's `seg.bundle`: preprocessing, patch, sliding window, threshold,
/// slice plan, automatic plan).
pub const KEY_BUNDLE: &str = "seg.bundle";
/// `metadata_props` key: the preprocessing plan of 2D images (JSON of
/// [`seg_data::Preprocess`]).
pub const KEY_PREPROCESS: &str = "seg.preprocess";
/// `metadata_props` key: how volumes are sliced and normalised for
/// multi-class bundles (JSON of [`seg_data::labelmap::SlicePlan`]); absent
/// for bundles without one.
pub const KEY_SLICES: &str = "seg.slices";
/// `metadata_props` key: the classes ([`Labels`] as JSON).
pub const KEY_LABELS: &str = "seg.labels";
/// `metadata_props` key: the input's layout and limits ([`InputSpec`] as JSON).
pub const KEY_INPUT: &str = "seg.input";

/// The classes of an exported model, as written under [`KEY_LABELS`].
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Labels {
    /// `sigmoid` (one output channel, binary) or `softmax` (one channel per
    /// class).
    pub activation: String,
    /// The label value written for each class (class k ↔ `values[k]`);
    /// binary models: `[0, 1]`.
    pub values: Vec<i64>,
    /// Class names from the dataset's `dataset.json`, one per value, or empty.
    pub names: Vec<String>,
    /// Binary models: the decision threshold on the sigmoid, chosen on
    /// validation.
    pub threshold: Option<f32>,
}

/// The input's layout and limits, as written under [`KEY_INPUT`].
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct InputSpec {
    /// `NCHW` or `NCDHW`.
    pub layout: String,
    /// Input channels.
    pub channels: usize,
    /// Smallest spatial side (the networks halve the size four times).
    pub min_side: usize,
    /// Patch side the model was trained on.
    pub patch: usize,
}

/// What [`export_bundle`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSummary {
    /// The file written.
    pub path: PathBuf,
    /// The network's registry name.
    pub model: &'static str,
    /// 2 or 3.
    pub dims: usize,
    /// Graph nodes.
    pub nodes: usize,
    /// Float parameters stored (BatchNorm folded into the convolutions).
    pub parameters: usize,
    /// File size in bytes.
    pub bytes: usize,
}

/// The ONNX model of `net` (eval mode) with `info`'s metadata.
pub fn export_network(net: &Network, info: &BundleInfo) -> Result<ModelProto> {
    let cfg = net.config();
    let mut g = graph::GraphBuilder::default();
    let weights = net.params().tensors();
    let logits = networks::build(cfg, &weights, &mut g, INPUT_NAME)?;
    g.rename(&logits, OUTPUT_NAME);

    let spatial: &[&str] = if cfg.dims() == 3 {
        &["depth", "height", "width"]
    } else {
        &["height", "width"]
    };
    let value_info = |name: &str, channels: usize| {
        let mut dim = vec![symbolic("batch"), fixed(channels)];
        dim.extend(spatial.iter().map(|s| symbolic(s)));
        ValueInfoProto {
            name: name.to_string(),
            type_: protobuf::MessageField::some(TypeProto {
                value: Some(Value::TensorType(type_proto::Tensor {
                    elem_type: DataType::FLOAT as i32,
                    shape: protobuf::MessageField::some(TensorShapeProto {
                        dim,
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    let layout = if cfg.dims() == 3 { "NCDHW" } else { "NCHW" };
    let graph = GraphProto {
        name: cfg.name().to_string(),
        doc_string: format!(
            "{} ({}D): input {INPUT_NAME} float32 {layout}, output {OUTPUT_NAME} (raw logits, same spatial size)",
            cfg.name(),
            cfg.dims()
        ),
        node: g.nodes,
        initializer: g.initializers,
        input: vec![value_info(INPUT_NAME, cfg.in_channels())],
        output: vec![value_info(OUTPUT_NAME, cfg.out_channels())],
        ..Default::default()
    };
    let metadata = metadata(net, info)?
        .into_iter()
        .map(|(key, value)| StringStringEntryProto {
            key: key.to_string(),
            value,
            ..Default::default()
        })
        .collect();
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
            ..Default::default()
        }],
        producer_name: "seg".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: "exported by seg-cli export from a seg model bundle".into(),
        graph: protobuf::MessageField::some(graph),
        metadata_props: metadata,
        ..Default::default()
    })
}

/// The `metadata_props` entries of an export, in order.
fn metadata(net: &Network, info: &BundleInfo) -> Result<Vec<(&'static str, String)>> {
    let cfg = net.config();
    let labels = info
        .slices
        .as_ref()
        .map(|s| &s.labels)
        .or(info.plan.as_ref().map(|p| &p.labels));
    let k = cfg.out_channels();
    let labels = if k == 1 {
        Labels {
            activation: "sigmoid".into(),
            values: vec![0, 1],
            names: labels
                .filter(|l| l.names.len() == 2)
                .map(|l| l.names.clone())
                .unwrap_or_default(),
            threshold: Some(info.threshold),
        }
    } else {
        Labels {
            activation: "softmax".into(),
            values: labels
                .map(|l| l.values.clone())
                .unwrap_or_else(|| (0..k as i64).collect()),
            names: labels.map(|l| l.names.clone()).unwrap_or_default(),
            threshold: None,
        }
    };
    let input = InputSpec {
        layout: if cfg.dims() == 3 { "NCDHW" } else { "NCHW" }.into(),
        channels: cfg.in_channels(),
        min_side: 1 << seg_models::DEPTH,
        patch: info.patch,
    };
    let mut out = vec![
        (KEY_CONFIG, cfg.to_json()),
        (KEY_BUNDLE, to_json(info)?),
        (KEY_PREPROCESS, to_json(&info.preprocess)?),
    ];
    if let Some(s) = &info.slices {
        out.push((KEY_SLICES, to_json(s)?));
    }
    out.push((KEY_LABELS, to_json(&labels)?));
    out.push((KEY_INPUT, to_json(&input)?));
    Ok(out)
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::OnnxEncode {
        what: "metadata_props",
        reason: e.to_string(),
    })
}

fn symbolic(name: &str) -> Dimension {
    Dimension {
        value: Some(dimension::Value::DimParam(name.to_string())),
        ..Default::default()
    }
}

fn fixed(n: usize) -> Dimension {
    Dimension {
        value: Some(dimension::Value::DimValue(n as i64)),
        ..Default::default()
    }
}

/// The protobuf encoding of `model`.
pub fn encode(model: &ModelProto) -> Result<Vec<u8>> {
    model.write_to_bytes().map_err(|e| Error::OnnxEncode {
        what: "the model",
        reason: e.to_string(),
    })
}

/// Exports the bundle at `bundle` (read on the CPU) to `output`, written
/// atomically (a temporary file in the same folder, then a rename).
pub fn export_bundle(bundle: &Path, output: &Path) -> Result<ExportSummary> {
    let (net, info) = load_bundle(bundle, &Device::Cpu)?;
    let model = export_network(&net, &info)?;
    let bytes = encode(&model)?;
    seg_core::fsutil::atomic_write(output, &bytes)?;
    let graph = model.graph.as_ref().expect("export_network sets the graph");
    Ok(ExportSummary {
        path: output.to_path_buf(),
        model: net.config().name(),
        dims: net.config().dims(),
        nodes: graph.node.len(),
        parameters: graph
            .initializer
            .iter()
            .filter(|t| t.data_type == DataType::FLOAT as i32)
            .map(|t| t.dims.iter().product::<i64>() as usize)
            .sum(),
        bytes: bytes.len(),
    })
}
