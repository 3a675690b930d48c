//! ONNX export: the model's inference graph written from its architecture (the same structure
//! torchvision's `torch.onnx.export` produces: Conv, BatchNormalization, Relu, MaxPool, Add,
//! Concat, AveragePool, GlobalAveragePool, Flatten, Gemm) with its weights as initializers
//! under torchvision's state-dict names, and the preprocessing in the metadata.
//!
//! kiln writes the protobuf itself ([`proto`]) rather than tracing through `burn-onnx`'s
//! exporter: that one (0.22.0) writes opset 18 only, has no metadata properties, needs burn's
//! `capture` backend, and would lower kiln's batch norm into elementwise arithmetic; the
//! thirteen graphs are small and fixed, so writing them directly is simpler and exact.

mod graph;
pub mod proto;

use burn::tensor::TensorData;

use crate::arch::{Arch, Model};
use crate::error::ModelError;
use crate::torchvision::{self, StateDict};
use proto::{Attr, Dim, Message};

/// Lowest and highest opsets kiln writes (every operator it uses is unchanged across them).
pub const OPSETS: std::ops::RangeInclusive<u32> = 11..=21;

/// How to export.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxOptions {
    /// ONNX opset (default 17).
    pub opset: u32,
    /// Fixed batch size, or `None` for a dynamic `batch` dimension.
    pub batch: Option<usize>,
    /// Input image side.
    pub image_size: usize,
    /// Key/value pairs for the model's `metadata_props`.
    pub metadata: Vec<(String, String)>,
}

impl Default for OnnxOptions {
    fn default() -> Self {
        Self {
            opset: 17,
            batch: None,
            image_size: 224,
            metadata: Vec::new(),
        }
    }
}

/// Input and output names in the exported graph.
pub const INPUT: &str = "input";
/// See [`INPUT`].
pub const OUTPUT: &str = "logits";

/// The ONNX model (`ModelProto` bytes) of `model`, an `arch`, in inference mode.
pub fn export(model: &Model, arch: Arch, options: &OnnxOptions) -> Result<Vec<u8>, ModelError> {
    if !OPSETS.contains(&options.opset) {
        return Err(ModelError::Export(format!(
            "opset {} is not supported; kiln writes opsets {} to {}",
            options.opset,
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    let state = torchvision::state_dict(model);
    let mut g = Graph::new(&state);
    if arch.is_densenet() {
        let config = arch
            .densenet(model.num_classes())
            .ok_or_else(|| ModelError::Export(format!("{arch} has no DenseNet config")))?;
        graph::densenet(&mut g, INPUT, OUTPUT, &config)?
    } else {
        let config = arch
            .resnet(model.num_classes())
            .ok_or_else(|| ModelError::Export(format!("{arch} has no ResNet config")))?;
        graph::resnet(&mut g, INPUT, OUTPUT, &config)?
    };
    let batch = match options.batch {
        Some(n) => Dim::Fixed(n),
        None => Dim::Named("batch".into()),
    };
    let s = options.image_size;
    let mut graph = Message::default();
    for node in &g.nodes {
        graph.message(1, node);
    }
    graph.string(2, &format!("kiln_{}", arch.name()));
    for init in &g.initializers {
        graph.message(5, init);
    }
    graph.message(
        11,
        &proto::value_info(
            INPUT,
            &[batch.clone(), Dim::Fixed(3), Dim::Fixed(s), Dim::Fixed(s)],
        ),
    );
    graph.message(
        12,
        &proto::value_info(OUTPUT, &[batch, Dim::Fixed(model.num_classes())]),
    );
    let mut opset = Message::default();
    opset.string(1, "").int(2, i64::from(options.opset));
    let mut m = Message::default();
    m.int(1, proto::ir_version(options.opset))
        .string(2, "kiln")
        .string(3, env!("CARGO_PKG_VERSION"))
        .message(7, &graph)
        .message(8, &opset);
    for (key, value) in &options.metadata {
        let mut entry = Message::default();
        entry.string(1, key).string(2, value);
        m.message(14, &entry);
    }
    Ok(m.0)
}

/// A graph being built: nodes in order, and the initializers they use (each once).
pub(crate) struct Graph<'a> {
    state: &'a StateDict,
    nodes: Vec<Message>,
    initializers: Vec<Message>,
    added: std::collections::HashSet<String>,
}

impl<'a> Graph<'a> {
    fn new(state: &'a StateDict) -> Self {
        Self {
            state,
            nodes: Vec::new(),
            initializers: Vec::new(),
            added: Default::default(),
        }
    }

    /// The state dict's tensor `key`, added as an initializer; returns its shape.
    fn weight(&mut self, key: &str) -> Result<Vec<usize>, ModelError> {
        let data: &TensorData = self
            .state
            .get(key)
            .ok_or_else(|| ModelError::Export(format!("the model has no tensor '{key}'")))?;
        let shape = data.shape().to_vec();
        if self.added.insert(key.to_string()) {
            let values = data
                .clone()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .map_err(|e| ModelError::Export(format!("tensor '{key}': {e:?}")))?;
            self.initializers.push(proto::tensor(key, &shape, &values));
        }
        Ok(shape)
    }

    /// Whether the state dict has `key`.
    fn has(&self, key: &str) -> bool {
        self.state.contains_key(key)
    }

    /// Appends a node named after its output; returns the output name.
    fn node(&mut self, op: &str, out: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        self.nodes.push(proto::node(op, out, inputs, &[out], attrs));
        out.to_string()
    }
}
