//! The Open Inference Protocol's inference request and response (KServe v2, as Triton and
//! Seldon speak it), in JSON and with the binary tensor data extension: a body whose first
//! `Inference-Header-Content-Length` bytes are the JSON header and whose rest holds the raw
//! tensors named by `parameters.binary_data_size`, in input order.
//!
//! kiln's model takes one input, `input`: FP32 `[N, 3, S, S]` normalised NCHW (what `kiln
//! predict --input-tensor` reads), or BYTES `[N]` holding encoded images (base64 strings in
//! JSON, length-prefixed in binary) that the server decodes and preprocesses. It gives one
//! output, `logits` (FP32 `[N, classes]`); asked with `parameters.classification: K`, that
//! output comes back as Triton's classification extension does it: BYTES `[N, K]`, each
//! `"probability:index:class"`, most likely first.

use std::fmt;

use base64::Engine as _;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

use crate::error::Fault;

/// The header giving the JSON part's length in a binary-extension body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// The input's name.
pub const INPUT: &str = "input";
/// The output's name.
pub const OUTPUT: &str = "logits";

/// A decoded inference request.
#[derive(Debug)]
pub struct InferRequest {
    /// The client's request id, echoed back.
    pub id: Option<String>,
    /// What the client sent as `input`.
    pub input: Input,
    /// How `logits` is to come back.
    pub output: OutputForm,
}

/// The request's input tensor.
#[derive(Debug)]
pub enum Input {
    /// Normalised NCHW floats: `n` images.
    Floats {
        /// How many images.
        n: usize,
        /// The floats, `n * 3 * S * S` of them.
        values: Vec<f32>,
    },
    /// Encoded images, to be decoded and preprocessed.
    Images(Vec<Vec<u8>>),
}

impl Input {
    /// How many images the input holds.
    pub fn len(&self) -> usize {
        match self {
            Input::Floats { n, .. } => *n,
            Input::Images(images) => images.len(),
        }
    }

    /// Whether the input holds no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How the response carries `logits`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutputForm {
    /// In the binary part rather than the JSON.
    pub binary: bool,
    /// As the top `k` classes (`probability:index:class` strings) rather than raw logits.
    pub classification: Option<usize>,
}

/// The wire form of a request, before it is checked against the model.
#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<WireInput>,
    #[serde(default)]
    outputs: Vec<WireOutput>,
}

#[derive(Deserialize)]
struct WireInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Flat>,
}

#[derive(Deserialize)]
struct WireOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// Parses a request body for a model taking `[N, 3, size, size]`, N at most `most`.
/// `header_length` is the `Inference-Header-Content-Length` header, present when the body
/// carries binary tensors.
pub fn parse(
    body: &[u8],
    header_length: Option<&str>,
    size: usize,
    most: usize,
) -> Result<InferRequest, Fault> {
    let (json, mut binary) = match header_length {
        None => (body, &[][..]),
        Some(text) => {
            let length: usize = text.trim().parse().map_err(|_| {
                Fault::bad(format!(
                    "Inference-Header-Content-Length '{text}' is not a byte count"
                ))
            })?;
            if length > body.len() {
                return Err(Fault::bad(format!(
                    "Inference-Header-Content-Length {length} is longer than the {}-byte body",
                    body.len()
                )));
            }
            body.split_at(length)
        }
    };
    let wire: Wire = serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(
        json,
    ))
    .map_err(|e| {
        let at = e.path().to_string();
        if e.inner().is_syntax() || e.inner().is_eof() {
            Fault::bad(format!(
                "the request is not an inference request (not valid JSON): {}",
                e.inner()
            ))
        } else if at == "." || at == "?" {
            Fault::bad(format!(
                "the request is not an inference request: {}",
                e.inner()
            ))
        } else {
            Fault::bad(format!("the request's {at} is not valid: {}", e.inner()))
        }
    })?;
    let [input] = <[WireInput; 1]>::try_from(wire.inputs).map_err(|inputs| {
        Fault::bad(format!(
            "the request has {} inputs; this model takes one, named '{INPUT}'",
            inputs.len()
        ))
    })?;
    if input.name != INPUT {
        return Err(Fault::bad(format!(
            "inputs[0] is named '{}'; this model's input is named '{INPUT}'",
            input.name
        )));
    }
    let blob = match binary_size(&input.parameters, "inputs[0]")? {
        None => None,
        Some(size) => {
            if size > binary.len() {
                return Err(Fault::bad(format!(
                    "inputs[0] has binary_data_size {size} but the body holds {} bytes after \
                     its JSON header",
                    binary.len()
                )));
            }
            let (blob, rest) = binary.split_at(size);
            binary = rest;
            Some(blob)
        }
    };
    if !binary.is_empty() {
        return Err(Fault::bad(format!(
            "the body holds {} bytes after its tensors that no input claims",
            binary.len()
        )));
    }
    let input = read_input(input, blob, size, most)?;
    let default_binary = flag(&wire.parameters, "binary_data_output", "parameters")?;
    let output = match <[WireOutput; 1]>::try_from(wire.outputs) {
        Ok([out]) => {
            if out.name != OUTPUT {
                return Err(Fault::bad(format!(
                    "outputs[0] asks for '{}'; this model's output is named '{OUTPUT}'",
                    out.name
                )));
            }
            let binary = match out.parameters.get("binary_data") {
                None => default_binary,
                Some(_) => flag(&out.parameters, "binary_data", "outputs[0].parameters")?,
            };
            let classification = match out.parameters.get("classification") {
                None => None,
                Some(k) => match k.as_u64() {
                    Some(k) if k >= 1 => Some(k as usize),
                    _ => {
                        return Err(Fault::bad(format!(
                            "outputs[0].parameters.classification {k} is out of range; \
                             expected a whole number of classes, at least 1"
                        )));
                    }
                },
            };
            OutputForm {
                binary,
                classification,
            }
        }
        Err(outputs) if outputs.is_empty() => OutputForm {
            binary: default_binary,
            classification: None,
        },
        Err(outputs) => {
            return Err(Fault::bad(format!(
                "the request asks for {} outputs; this model has one, named '{OUTPUT}'",
                outputs.len()
            )));
        }
    };
    Ok(InferRequest {
        id: wire.id,
        input,
        output,
    })
}

fn binary_size(parameters: &Map<String, Value>, at: &str) -> Result<Option<usize>, Fault> {
    match parameters.get("binary_data_size") {
        None => Ok(None),
        Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            Fault::bad(format!(
                "{at}.parameters.binary_data_size {v} is not a byte count"
            ))
        }),
    }
}

fn flag(parameters: &Map<String, Value>, name: &str, at: &str) -> Result<bool, Fault> {
    match parameters.get(name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(Fault::bad(format!("{at}.{name} {v} is not true or false"))),
    }
}

fn read_input(
    input: WireInput,
    blob: Option<&[u8]>,
    size: usize,
    most: usize,
) -> Result<Input, Fault> {
    let shape = &input.shape;
    // Checked before any size is computed from it, so no shape overflows or allocates much.
    if let Some(&n) = shape.first()
        && n > most as i64
    {
        return Err(Fault::bad(format!(
            "the request holds {n} images; at most {most} per request (8 x --max-batch-size, \
             at least 64)"
        )));
    }
    match input.datatype.as_str() {
        "FP32" => {
            let expected = [-1, 3, size as i64, size as i64];
            if shape.len() != 4 || shape[0] < 1 || shape[1..] != expected[1..] {
                return Err(Fault::bad(format!(
                    "inputs[0] 'input' has shape {shape:?}; this model takes FP32 [N, 3, \
                     {size}, {size}] (N at least 1)"
                )));
            }
            let n = shape[0] as usize;
            let count = n * 3 * size * size;
            let values = match (input.data, blob) {
                (Some(_), Some(_)) => {
                    return Err(Fault::bad(
                        "inputs[0] has both data and binary_data_size; send one",
                    ));
                }
                (None, None) => {
                    return Err(Fault::bad("inputs[0] has no data (nor binary_data_size)"));
                }
                (None, Some(blob)) => {
                    if blob.len() != count * 4 {
                        return Err(Fault::bad(format!(
                            "inputs[0] holds {} bytes of binary data; shape {shape:?} in FP32 \
                             needs {}",
                            blob.len(),
                            count * 4
                        )));
                    }
                    blob.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect()
                }
                (Some(flat), None) => {
                    if !flat.strings.is_empty() {
                        return Err(Fault::bad(
                            "inputs[0] is FP32 but its data holds strings; expected numbers",
                        ));
                    }
                    if flat.numbers.len() != count {
                        return Err(Fault::bad(format!(
                            "inputs[0] holds {} numbers; shape {shape:?} needs {count}",
                            flat.numbers.len()
                        )));
                    }
                    flat.numbers.into_iter().map(|v| v as f32).collect()
                }
            };
            Ok(Input::Floats { n, values })
        }
        "BYTES" => {
            let n = match shape.as_slice() {
                [n] | [n, 1] if *n >= 1 => *n as usize,
                _ => {
                    return Err(Fault::bad(format!(
                        "inputs[0] 'input' is BYTES with shape {shape:?}; expected [N] or [N, \
                         1] encoded images (N at least 1)"
                    )));
                }
            };
            let images = match (input.data, blob) {
                (Some(_), Some(_)) => {
                    return Err(Fault::bad(
                        "inputs[0] has both data and binary_data_size; send one",
                    ));
                }
                (None, None) => {
                    return Err(Fault::bad("inputs[0] has no data (nor binary_data_size)"));
                }
                (None, Some(blob)) => split_bytes(blob, n)?,
                (Some(flat), None) => {
                    if !flat.numbers.is_empty() {
                        return Err(Fault::bad(
                            "inputs[0] is BYTES but its data holds numbers; expected base64 \
                             strings of encoded images",
                        ));
                    }
                    if flat.strings.len() != n {
                        return Err(Fault::bad(format!(
                            "inputs[0] holds {} images; shape {shape:?} says {n}",
                            flat.strings.len()
                        )));
                    }
                    flat.strings
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            base64::engine::general_purpose::STANDARD
                                .decode(s)
                                .map_err(|e| {
                                    Fault::bad(format!(
                                        "inputs[0] element {i} is not base64 ({e}); BYTES \
                                         elements in JSON are base64-encoded images"
                                    ))
                                })
                        })
                        .collect::<Result<_, _>>()?
                }
            };
            if images.len() != n {
                return Err(Fault::bad(format!(
                    "inputs[0] holds {} images; shape {shape:?} says {n}",
                    images.len()
                )));
            }
            Ok(Input::Images(images))
        }
        other => Err(Fault::bad(format!(
            "inputs[0] 'input' has datatype {other}; this model takes FP32 (normalised NCHW) or \
             BYTES (encoded images)"
        ))),
    }
}

/// Binary BYTES elements: each a 4-byte little-endian length, then that many bytes; `n` of
/// them.
fn split_bytes(mut blob: &[u8], n: usize) -> Result<Vec<Vec<u8>>, Fault> {
    let mut out = Vec::new();
    while !blob.is_empty() {
        if out.len() == n {
            return Err(Fault::bad(format!(
                "inputs[0]'s binary BYTES data holds more than the {n} elements its shape says"
            )));
        }
        let Some((head, rest)) = blob.split_first_chunk::<4>() else {
            return Err(Fault::bad(
                "inputs[0]'s binary BYTES data ends inside an element's 4-byte length",
            ));
        };
        let len = u32::from_le_bytes(*head) as usize;
        if len > rest.len() {
            return Err(Fault::bad(format!(
                "inputs[0]'s binary BYTES element {} claims {len} bytes, {} remain",
                out.len(),
                rest.len()
            )));
        }
        out.push(rest[..len].to_vec());
        blob = &rest[len..];
    }
    Ok(out)
}

/// A response body: the JSON, and the binary part when the output is sent binary.
pub struct Response {
    /// The JSON header (the whole body without binary data).
    pub json: Vec<u8>,
    /// The binary tensor data after it, if any.
    pub binary: Option<Vec<u8>>,
}

/// Builds the response for `n` rows of `logits` over `classes`.
pub fn respond(
    model: &str,
    version: &str,
    request_id: Option<String>,
    form: OutputForm,
    logits: &[f32],
    classes: &[String],
) -> Response {
    let c = classes.len();
    let n = logits.len() / c.max(1);
    let (datatype, shape, data, blob): (&str, [usize; 2], Value, Vec<u8>) =
        match form.classification {
            Some(k) => {
                let k = k.min(c);
                let rows: Vec<String> = logits
                    .chunks(c)
                    .flat_map(|row| {
                        let probs = kiln_engine::infer::softmax(row);
                        kiln_engine::infer::top_k(&probs, k)
                            .into_iter()
                            .map(move |i| format!("{}:{i}:{}", probs[i], classes[i]))
                    })
                    .collect();
                let blob = rows
                    .iter()
                    .flat_map(|s| {
                        let mut b = (s.len() as u32).to_le_bytes().to_vec();
                        b.extend_from_slice(s.as_bytes());
                        b
                    })
                    .collect();
                ("BYTES", [n, k], json!(rows), blob)
            }
            None => {
                let blob = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
                ("FP32", [n, c], json!(logits), blob)
            }
        };
    let mut output = json!({ "name": OUTPUT, "datatype": datatype, "shape": shape });
    let binary = if form.binary {
        output["parameters"] = json!({ "binary_data_size": blob.len() });
        Some(blob)
    } else {
        output["data"] = data;
        None
    };
    let mut body = json!({
        "model_name": model,
        "model_version": version,
        "outputs": [output],
    });
    if let Some(id) = request_id {
        body["id"] = json!(id);
    }
    Response {
        json: serde_json::to_vec(&body).expect("a response serialises"),
        binary,
    }
}

/// A tensor's `data`, flattened in row-major order whatever its nesting: numbers or strings.
#[derive(Debug, Default)]
struct Flat {
    numbers: Vec<f64>,
    strings: Vec<String>,
}

impl<'de> Deserialize<'de> for Flat {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut flat = Flat::default();
        FlatSeed(&mut flat).deserialize(deserializer)?;
        Ok(flat)
    }
}

struct FlatSeed<'a>(&'a mut Flat);

impl<'de> DeserializeSeed<'de> for FlatSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FlatSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of numbers or strings, flat or nested")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.numbers.push(v);
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.strings.push(v.to_string());
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let flat = self.0;
        while seq.next_element_seed(FlatSeed(&mut *flat))?.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(n: usize, size: usize) -> Value {
        json!(vec![0.5f32; n * 3 * size * size])
    }

    #[test]
    fn json_floats_flat_or_nested() {
        let body = json!({"inputs": [{"name": "input", "shape": [2, 3, 2, 2], "datatype": "FP32", "data": floats(2, 2)}]});
        let r = parse(body.to_string().as_bytes(), None, 2, 64).unwrap();
        assert!(matches!(r.input, Input::Floats { n: 2, ref values } if values.len() == 24));
        let nested = json!({"inputs": [{"name": "input", "shape": [1, 3, 1, 1], "datatype": "FP32", "data": [[[[1]], [[2]], [[3.5]]]]}]});
        let r = parse(nested.to_string().as_bytes(), None, 1, 64).unwrap();
        assert!(matches!(r.input, Input::Floats { ref values, .. } if values == &[1.0, 2.0, 3.5]));
    }

    #[test]
    fn binary_floats_and_bytes() {
        let header = json!({"inputs": [{"name": "input", "shape": [1, 3, 1, 1], "datatype": "FP32", "parameters": {"binary_data_size": 12}}], "outputs": [{"name": "logits", "parameters": {"binary_data": true}}]}).to_string();
        let mut body = header.clone().into_bytes();
        for v in [1.0f32, 2.0, 3.0] {
            body.extend(v.to_le_bytes());
        }
        let r = parse(&body, Some(&header.len().to_string()), 1, 64).unwrap();
        assert!(matches!(r.input, Input::Floats { ref values, .. } if values == &[1.0, 2.0, 3.0]));
        assert!(r.output.binary);

        let header = json!({"inputs": [{"name": "input", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 11}}]}).to_string();
        let mut body = header.clone().into_bytes();
        body.extend(3u32.to_le_bytes());
        body.extend(b"abc");
        body.extend(0u32.to_le_bytes());
        let r = parse(&body, Some(&header.len().to_string()), 1, 64).unwrap();
        assert!(matches!(r.input, Input::Images(ref i) if i == &[b"abc".to_vec(), vec![]]));
    }

    #[test]
    fn bad_requests_name_what_is_wrong() {
        let cases = [
            (json!({"inputs": []}).to_string(), "has 0 inputs"),
            (json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}).to_string(), "named 'x'"),
            (json!({"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": [1]}]}).to_string(), "shape [1, 3, 2, 2]"),
            (json!({"inputs": [{"name": "input", "shape": [1, 3, 1, 1], "datatype": "FP32", "data": [1, 2]}]}).to_string(), "holds 2 numbers"),
            (json!({"inputs": [{"name": "input", "shape": [1, 3, 1, 1], "datatype": "INT8", "data": [1, 2, 3]}]}).to_string(), "datatype INT8"),
            (json!({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}).to_string(), "not base64"),
            (json!({"inputs": [{"name": "input", "shape": "x", "datatype": "FP32"}]}).to_string(), "inputs[0].shape"),
            (json!({"inputs": [{"name": "input", "shape": [1, 3, 1, 1], "datatype": "FP32", "data": [1, 2, 3]}], "outputs": [{"name": "probs"}]}).to_string(), "'probs'"),
            ("{".to_string(), "not an inference request"),
            (json!({"inputs": [{"name": "input", "shape": [i64::MAX, 3, 1, 1], "datatype": "FP32", "data": []}]}).to_string(), "at most 64"),
        ];
        for (body, expected) in cases {
            let e = parse(body.as_bytes(), None, 1, 64).unwrap_err();
            assert!(e.message.contains(expected), "{body}: {}", e.message);
        }
        let e = parse(b"{}", Some("99"), 1, 64).unwrap_err();
        assert!(e.message.contains("longer than"), "{}", e.message);
    }

    #[test]
    fn classification_gives_probability_index_class() {
        let classes = vec!["a".to_string(), "b".to_string()];
        let form = OutputForm {
            binary: false,
            classification: Some(1),
        };
        let r = respond(
            "m",
            "1",
            Some("7".into()),
            form,
            &[0.0, 1.0, 3.0, 0.0],
            &classes,
        );
        let v: Value = serde_json::from_slice(&r.json).unwrap();
        assert_eq!(v["id"], "7");
        assert_eq!(v["outputs"][0]["shape"], json!([2, 1]));
        let first = v["outputs"][0]["data"][0].as_str().unwrap();
        assert!(
            first.ends_with(":1:b") && first.starts_with("0.73"),
            "{first}"
        );
    }
}
