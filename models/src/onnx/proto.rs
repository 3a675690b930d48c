//! Just enough of the ONNX protobuf schema (`onnx.proto3`) to write a model: each message is
//! built as bytes with its field numbers from the schema.

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED32: u8 = 5;
const BYTES: u8 = 2;

/// One message being written.
#[derive(Debug, Default, Clone)]
pub struct Message(pub Vec<u8>);

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Message {
    fn key(&mut self, field: u32, wire: u8) {
        varint(&mut self.0, (u64::from(field) << 3) | u64::from(wire));
    }

    /// An integer field (int32/int64/enum; negative values take ten bytes, as protobuf says).
    pub fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.key(field, VARINT);
        varint(&mut self.0, v as u64);
        self
    }

    /// A float field.
    pub fn float(&mut self, field: u32, v: f32) -> &mut Self {
        self.key(field, FIXED32);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A bytes field.
    pub fn bytes(&mut self, field: u32, v: &[u8]) -> &mut Self {
        self.key(field, BYTES);
        varint(&mut self.0, v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }

    /// A string field.
    pub fn string(&mut self, field: u32, v: &str) -> &mut Self {
        self.bytes(field, v.as_bytes())
    }

    /// An embedded message field.
    pub fn message(&mut self, field: u32, m: &Message) -> &mut Self {
        self.bytes(field, &m.0)
    }

    /// A packed repeated int64 field.
    pub fn packed_ints(&mut self, field: u32, vs: &[i64]) -> &mut Self {
        let mut packed = Vec::new();
        for v in vs {
            varint(&mut packed, *v as u64);
        }
        self.bytes(field, &packed)
    }
}

/// `TensorProto.DataType.FLOAT`.
pub const FLOAT: i64 = 1;

/// `AttributeProto` values kiln's graphs use.
#[derive(Debug, Clone)]
pub enum Attr {
    /// `INT`.
    Int(i64),
    /// `FLOAT`.
    Float(f32),
    /// `INTS`.
    Ints(Vec<i64>),
}

/// `AttributeProto { name = 1, f = 2, i = 3, ints = 8, type = 20 }`.
pub fn attribute(name: &str, value: &Attr) -> Message {
    let mut m = Message::default();
    m.string(1, name);
    match value {
        Attr::Float(f) => m.float(2, *f).int(20, 1),
        Attr::Int(i) => m.int(3, *i).int(20, 2),
        Attr::Ints(is) => m.packed_ints(8, is).int(20, 7),
    };
    m
}

/// `NodeProto { input = 1, output = 2, name = 3, op_type = 4, attribute = 5 }`.
pub fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: &[(&str, Attr)],
) -> Message {
    let mut m = Message::default();
    for i in inputs {
        m.string(1, i);
    }
    for o in outputs {
        m.string(2, o);
    }
    m.string(3, name).string(4, op);
    for (n, a) in attrs {
        m.message(5, &attribute(n, a));
    }
    m
}

/// `TensorProto { dims = 1, data_type = 2, name = 8, raw_data = 9 }`, f32 little-endian.
pub fn tensor(name: &str, dims: &[usize], values: &[f32]) -> Message {
    let mut m = Message::default();
    let dims: Vec<i64> = dims.iter().map(|d| *d as i64).collect();
    m.packed_ints(1, &dims).int(2, FLOAT).string(8, name);
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    m.bytes(9, &raw);
    m
}

/// A dimension: a fixed size or a named symbolic one.
#[derive(Debug, Clone)]
pub enum Dim {
    /// `dim_value`.
    Fixed(usize),
    /// `dim_param`.
    Named(String),
}

/// `ValueInfoProto { name = 1, type = 2 }` of an f32 tensor:
/// `TypeProto { tensor_type = 1 { elem_type = 1, shape = 2 { dim = 1 { dim_value = 1,
/// dim_param = 2 } } } }`.
pub fn value_info(name: &str, dims: &[Dim]) -> Message {
    let mut shape = Message::default();
    for d in dims {
        let mut dim = Message::default();
        match d {
            Dim::Fixed(v) => dim.int(1, *v as i64),
            Dim::Named(p) => dim.string(2, p),
        };
        shape.message(1, &dim);
    }
    let mut tensor_type = Message::default();
    tensor_type.int(1, FLOAT).message(2, &shape);
    let mut ty = Message::default();
    ty.message(1, &tensor_type);
    let mut m = Message::default();
    m.string(1, name).message(2, &ty);
    m
}

/// The IR version that goes with an opset (ONNX's versioning table).
pub fn ir_version(opset: u32) -> i64 {
    match opset {
        ..=11 => 6,
        12..=13 => 7,
        14..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields_encode_as_protobuf_does() {
        let mut m = Message::default();
        m.int(1, 150);
        assert_eq!(m.0, [0x08, 0x96, 0x01]);
        let mut m = Message::default();
        m.string(2, "testing");
        assert_eq!(m.0, [0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g']);
        let mut m = Message::default();
        m.int(3, -1);
        assert_eq!(m.0.len(), 11);
        let mut m = Message::default();
        m.packed_ints(4, &[3, 270]);
        assert_eq!(m.0, [0x22, 0x03, 0x03, 0x8e, 0x02]);
    }
}
