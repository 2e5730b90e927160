//! A small builder of ONNX graphs over `onnx-protobuf`'s generated message
//! types: nodes with unique output names, initializers stored as raw
//! little-endian bytes, and the handful of attributes the networks need.

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::{AttributeProto, NodeProto, TensorProto};
use std::collections::HashSet;

/// An attribute value.
pub(crate) enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Str(&'static str),
}

/// Nodes and initializers of one graph, in the order they were added
/// (which is a topological order: a node only reads what exists).
#[derive(Default)]
pub(crate) struct GraphBuilder {
    pub(crate) nodes: Vec<NodeProto>,
    pub(crate) initializers: Vec<TensorProto>,
    names: HashSet<String>,
}

impl GraphBuilder {
    /// `hint`, or `hint_2`, `hint_3`, ... when taken.
    fn unique(&mut self, hint: &str) -> String {
        let mut name = hint.to_string();
        let mut k = 2;
        while self.names.contains(&name) {
            name = format!("{hint}_{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// Adds a node of type `op` with one output, named after `hint`, and
    /// returns the output's name.
    pub(crate) fn op(
        &mut self,
        op: &str,
        hint: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
    ) -> String {
        let out = self.unique(hint);
        let attribute = attrs
            .into_iter()
            .map(|(name, value)| attribute(name, value))
            .collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.to_string(),
            attribute,
            ..Default::default()
        });
        out
    }

    /// A float32 initializer of shape `dims`.
    pub(crate) fn f32_tensor(&mut self, hint: &str, dims: &[usize], data: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        let name = self.unique(hint);
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::FLOAT as i32,
            name: name.clone(),
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    /// A one-dimensional int64 initializer.
    pub(crate) fn i64_tensor(&mut self, hint: &str, data: &[i64]) -> String {
        let name = self.unique(hint);
        self.initializers.push(TensorProto {
            dims: vec![data.len() as i64],
            data_type: DataType::INT64 as i32,
            name: name.clone(),
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    /// Renames the output `from` of the last node that writes it to `to`
    /// (the graph's output names), updating every reader.
    pub(crate) fn rename(&mut self, from: &str, to: &str) {
        for node in &mut self.nodes {
            for name in node.output.iter_mut().chain(node.input.iter_mut()) {
                if name == from {
                    *name = to.to_string();
                }
            }
        }
        self.names.insert(to.to_string());
    }
}

fn attribute(name: &str, value: Attr) -> AttributeProto {
    let mut a = AttributeProto {
        name: name.to_string(),
        ..Default::default()
    };
    match value {
        Attr::Int(i) => {
            a.type_ = AttributeType::INT.into();
            a.i = i;
        }
        Attr::Ints(v) => {
            a.type_ = AttributeType::INTS.into();
            a.ints = v;
        }
        Attr::Str(s) => {
            a.type_ = AttributeType::STRING.into();
            a.s = s.as_bytes().to_vec();
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_initializers_little_endian() {
        let mut g = GraphBuilder::default();
        let a = g.op("Relu", "x", &["in"], vec![]);
        let b = g.op("Relu", "x", &[&a], vec![("k", Attr::Int(3))]);
        assert_eq!((a.as_str(), b.as_str()), ("x", "x_2"));
        assert_eq!(g.nodes[1].input, ["x"]);
        assert_eq!(g.nodes[1].attribute[0].i, 3);
        let t = g.f32_tensor("w", &[2], &[1.0, -2.0]);
        assert_eq!(t, "w");
        assert_eq!(
            g.initializers[0].raw_data,
            [1f32.to_le_bytes(), (-2f32).to_le_bytes()].concat()
        );
        g.rename("x_2", "logits");
        assert_eq!(g.nodes[1].output, ["logits"]);
    }
}
