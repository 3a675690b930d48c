//! Weights in and out under torchvision's state-dict names.
//!
//! In: a `.pth` written by `torch.save` (zip format; the legacy pickle format where burn-store
//! reads it) or a `.safetensors` file, with DenseNet's old `norm.1`/`conv.2` names accepted and
//! `num_batches_tracked` ignored. Out: `.safetensors` that
//! `torchvision.models.<arch>(num_classes=N).load_state_dict(safetensors.torch.load_file(f))`
//! takes with no missing or unexpected keys.
//!
//! kiln's module paths equal torchvision's keys except in three places, mapped here both ways:
//! `downsample.conv|bn` is `downsample.0|1`, `features.blocks.I.layers.J` is
//! `features.denseblock{I+1}.denselayer{J+1}`, and `features.transitions.I` is
//! `features.transition{I+1}`.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use burn::module::Module;
use burn::tensor::{DType, Device, TensorData};
use burn_store::{
    BurnToPyTorchAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, PytorchStore,
    SafetensorsStore, bridge,
};

use crate::arch::{Arch, Model};
use crate::error::ModelError;

/// A state dict: torchvision key to tensor, in PyTorch's layouts (Linear weights `[out, in]`).
pub type StateDict = BTreeMap<String, TensorData>;

/// torchvision's key for a kiln module path.
pub fn torchvision_key(path: &str) -> String {
    let parts: Vec<&str> = path.split('.').collect();
    let mut out: Vec<String> = Vec::with_capacity(parts.len());
    let mut i = 0;
    while i < parts.len() {
        let next = parts.get(i + 1).and_then(|s| s.parse::<usize>().ok());
        match (parts[i], next) {
            ("blocks", Some(n)) if parts.get(i + 2) == Some(&"layers") => {
                out.push(format!("denseblock{}", n + 1));
                if let Some(m) = parts.get(i + 3).and_then(|s| s.parse::<usize>().ok()) {
                    out.push(format!("denselayer{}", m + 1));
                    i += 4;
                } else {
                    i += 3;
                }
                continue;
            }
            ("transitions", Some(n)) => {
                out.push(format!("transition{}", n + 1));
                i += 2;
                continue;
            }
            ("conv", _) if i > 0 && parts[i - 1] == "downsample" => out.push("0".into()),
            ("bn", _) if i > 0 && parts[i - 1] == "downsample" => out.push("1".into()),
            (part, _) => out.push(part.to_string()),
        }
        i += 1;
    }
    out.join(".")
}

/// kiln's module path for a torchvision key (current or legacy DenseNet names).
pub fn kiln_path(key: &str) -> String {
    let key = current_densenet_key(key);
    let parts: Vec<&str> = key.split('.').collect();
    let mut out: Vec<String> = Vec::with_capacity(parts.len() + 2);
    for (i, part) in parts.iter().enumerate() {
        let numbered = |prefix: &str| {
            part.strip_prefix(prefix)
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&n| n > 0)
        };
        if let Some(n) = numbered("denseblock") {
            out.push("blocks".into());
            out.push((n - 1).to_string());
        } else if let Some(n) = numbered("denselayer") {
            out.push("layers".into());
            out.push((n - 1).to_string());
        } else if let Some(n) = numbered("transition") {
            out.push("transitions".into());
            out.push((n - 1).to_string());
        } else if i > 0 && parts[i - 1] == "downsample" && *part == "0" {
            out.push("conv".into());
        } else if i > 0 && parts[i - 1] == "downsample" && *part == "1" {
            out.push("bn".into());
        } else {
            out.push(part.to_string());
        }
    }
    out.join(".")
}

/// torchvision renames DenseNet's pre-0.3 keys on load (`denselayer1.norm.1.weight` is
/// `denselayer1.norm1.weight`); so does kiln.
fn current_densenet_key(key: &str) -> String {
    if !key.contains("denselayer") {
        return key.to_string();
    }
    let parts: Vec<&str> = key.split('.').collect();
    let mut out: Vec<String> = Vec::with_capacity(parts.len());
    let mut i = 0;
    while i < parts.len() {
        let digit = parts.get(i + 1).filter(|d| **d == "1" || **d == "2");
        match (parts[i], digit) {
            (name @ ("norm" | "relu" | "conv"), Some(d)) if i + 2 < parts.len() => {
                out.push(format!("{name}{d}"));
                i += 2;
            }
            (part, _) => {
                out.push(part.to_string());
                i += 1;
            }
        }
    }
    out.join(".")
}

/// The model's state dict under torchvision's names, without `num_batches_tracked`.
pub fn state_dict(model: &Model) -> StateDict {
    // Batch norm keeps running statistics per thread until synced; `valid` syncs them in place.
    let _ = model.valid();
    model
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
        .into_iter()
        .filter_map(|tensor| {
            let key = torchvision_key(&tensor.name);
            bridge::into_data(tensor).ok().map(|data| (key, data))
        })
        .collect()
}

/// The shapes of the model's state dict, by torchvision key.
pub fn state_dict_shapes(model: &Model) -> BTreeMap<String, Vec<usize>> {
    model
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
        .into_iter()
        .map(|t| (torchvision_key(&t.name), t.shape.to_vec()))
        .collect()
}

/// Writes the model as `.safetensors` under torchvision's names, with a zero
/// `num_batches_tracked` beside every batch norm as `torch.save` writes it. `metadata` goes into
/// the file's header. The file appears whole or not at all (temporary name, then rename).
pub fn save_safetensors(
    model: &Model,
    path: &Path,
    metadata: Option<HashMap<String, String>>,
) -> Result<(), ModelError> {
    let mut tensors = state_dict(model);
    let norms: Vec<String> = tensors
        .keys()
        .filter_map(|k| k.strip_suffix(".running_var"))
        .map(|prefix| format!("{prefix}.num_batches_tracked"))
        .collect();
    for key in norms {
        tensors.insert(key, TensorData::new(vec![0i64], Vec::<usize>::new()));
    }
    write_safetensors(path, &tensors, metadata)
}

/// Writes named tensors (f32, f16, bf16, f64, i64 or i32) as a safetensors file, whole or not
/// at all.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, TensorData>,
    metadata: Option<HashMap<String, String>>,
) -> Result<(), ModelError> {
    use safetensors::Dtype;
    let views = tensors
        .iter()
        .map(|(key, data)| {
            let dtype = match data.dtype() {
                DType::F32 => Dtype::F32,
                DType::F16 => Dtype::F16,
                DType::BF16 => Dtype::BF16,
                DType::F64 => Dtype::F64,
                DType::I64 => Dtype::I64,
                DType::I32 => Dtype::I32,
                other => return Err(format!("tensor {key}: dtype {other:?} is not stored")),
            };
            safetensors::tensor::TensorView::new(dtype, data.shape().to_vec(), data.as_bytes())
                .map(|view| (key.clone(), view))
                .map_err(|e| format!("tensor {key}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| write_error(path, e))?;
    write_atomically(path, |tmp| {
        safetensors::serialize_to_file(views, metadata, tmp).map_err(|e| e.to_string())
    })
}

/// Every tensor of a safetensors file, as stored (no renaming, no dtype conversion).
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, TensorData>, ModelError> {
    let bad = |reason: String| ModelError::BadFile {
        path: path.to_path_buf(),
        reason,
        expected: "a safetensors file",
    };
    let mut store = SafetensorsStore::from_file(path).map_indices_contiguous(false);
    let raw = store
        .get_all_tensors()
        .map_err(|e| bad(e.to_string()))?
        .clone();
    raw.into_iter()
        .map(|(key, t)| {
            bridge::into_data(t)
                .map(|d| (key.clone(), d))
                .map_err(|e| bad(format!("tensor {key}: {e}")))
        })
        .collect()
}

/// Writes a file through `write` at a temporary name beside `path`, then renames it into
/// place, so a crash never leaves a torn file.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), ModelError> {
    let name = path
        .file_name()
        .ok_or_else(|| write_error(path, "not a file path"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = write(&tmp).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| e.to_string()));
    if let Err(reason) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_error(path, reason));
    }
    Ok(())
}

fn write_error(path: &Path, reason: impl ToString) -> ModelError {
    ModelError::Write {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The formats a weights file can be in, told from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WeightsFormat {
    /// `torch.save`'s zip archive, or its legacy pickle stream.
    Torch,
    /// A safetensors file.
    Safetensors,
}

fn sniff(path: &Path) -> Result<WeightsFormat, ModelError> {
    let bad = |reason: String| ModelError::BadFile {
        path: path.to_path_buf(),
        reason,
        expected: "a torch.save .pth/.pt file or a .safetensors file",
    };
    let mut head = [0u8; 10];
    let mut file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let n = file.read(&mut head).map_err(|e| bad(e.to_string()))?;
    let head = &head[..n];
    // safetensors: a little-endian u64 header length, then the JSON header.
    if n >= 9 && head[8] == b'{' {
        return Ok(WeightsFormat::Safetensors);
    }
    // torch.save: a zip archive, or (legacy) a pickle stream, protocol 2 to 5.
    if head.starts_with(b"PK\x03\x04") || (n >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]))
    {
        return Ok(WeightsFormat::Torch);
    }
    Err(bad(format!(
        "its first bytes {head:02x?} are neither a zip archive, a pickle nor a safetensors header"
    )))
}

/// Reads every tensor of a `.pth`/`.pt` or `.safetensors` file as f32, under current
/// torchvision names (legacy DenseNet names renamed, `num_batches_tracked` dropped, a
/// `module.` prefix from `DataParallel` stripped).
pub fn read_state_dict(path: &Path) -> Result<StateDict, ModelError> {
    let format = sniff(path)?;
    let bad = |reason: String| ModelError::BadFile {
        path: path.to_path_buf(),
        reason,
        expected: match format {
            WeightsFormat::Torch => {
                "a state dict saved by torch.save (re-save legacy files with torch.save(sd, f))"
            }
            WeightsFormat::Safetensors => "a safetensors file",
        },
    };
    let raw = match format {
        WeightsFormat::Torch => {
            // Keys as written: burn-store would otherwise renumber `norm.1`/`norm.2` from 0.
            let mut store = PytorchStore::from_file(path).map_indices_contiguous(false);
            store
                .get_all_tensors()
                .map_err(|e| bad(e.to_string()))?
                .clone()
        }
        WeightsFormat::Safetensors => {
            let mut store = SafetensorsStore::from_file(path).map_indices_contiguous(false);
            store
                .get_all_tensors()
                .map_err(|e| bad(e.to_string()))?
                .clone()
        }
    };
    let mut out = StateDict::new();
    for (key, tensor) in raw {
        if key.ends_with("num_batches_tracked") {
            continue;
        }
        let data = bridge::into_data(tensor).map_err(|e| bad(format!("tensor {key}: {e}")))?;
        let data = match data.dtype() {
            DType::F32 => data,
            DType::F16 | DType::BF16 | DType::F64 => data.convert::<f32>(),
            other => {
                return Err(bad(format!(
                    "tensor {key} has dtype {other:?}, not a float"
                )));
            }
        };
        let key = key.strip_prefix("module.").unwrap_or(&key);
        out.insert(current_densenet_key(key), data);
    }
    Ok(out)
}

/// The prefix of `arch`'s classifier keys in a torchvision state dict.
fn classifier_prefix(arch: Arch) -> &'static str {
    if arch.is_densenet() {
        "classifier."
    } else {
        "fc."
    }
}

/// The most classes kiln builds a model for (ImageNet-21k has 21,841): beyond it the classifier
/// alone would take gigabytes, so the count is refused before anything is built.
pub const MAX_CLASSES: usize = 100_000;

/// The class count to build `arch` with for the weights in `state` (read from `path`): `given`
/// (a model directory's class list), else the rows of the state dict's classifier. Refused
/// unless it is 1 to [`MAX_CLASSES`].
pub fn model_classes(
    arch: Arch,
    state: &StateDict,
    given: Option<usize>,
    path: &Path,
) -> Result<usize, ModelError> {
    let mismatch = |num_classes: usize, detail: String| ModelError::Mismatch {
        path: path.to_path_buf(),
        arch: arch.name().to_string(),
        num_classes,
        detail,
    };
    let key = format!("{}weight", classifier_prefix(arch));
    let num_classes = match (given, state.get(&key).map(|w| w.shape())) {
        (Some(n), _) => n,
        (None, None) => {
            return Err(mismatch(
                0,
                format!("no classifier key '{key}' to take the class count from"),
            ));
        }
        (None, Some(shape)) => match shape.as_slice() {
            [rows, _] => *rows,
            other => {
                return Err(mismatch(
                    0,
                    format!("key '{key}' has shape {other:?}; expected [classes, features]"),
                ));
            }
        },
    };
    if !(1..=MAX_CLASSES).contains(&num_classes) {
        return Err(mismatch(
            num_classes,
            format!("kiln builds models of 1 to {MAX_CLASSES} classes"),
        ));
    }
    Ok(num_classes)
}

/// Options of [`load_state_dict`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Accept a state dict that lacks some of the model's keys (they keep their values).
    pub allow_missing: bool,
    /// Ignore the classifier's tensors (transfer learning to a new class count).
    pub skip_classifier: bool,
}

/// Copies a torchvision state dict into `model`. Every key must exist in the model with the
/// same shape, and, unless `options` say otherwise, every model key must be given; the error
/// names the first mismatched key and both shapes. `path` and `arch` are for messages.
pub fn load_state_dict(
    model: Model,
    state: StateDict,
    arch: Arch,
    path: &Path,
    options: LoadOptions,
) -> Result<Model, ModelError> {
    let num_classes = model.num_classes();
    let mismatch = |detail: String| ModelError::Mismatch {
        path: path.to_path_buf(),
        arch: arch.name().to_string(),
        num_classes,
        detail,
    };
    let expected = state_dict_shapes(&model);
    let head = classifier_prefix(arch);
    let mut tensors = Vec::with_capacity(state.len());
    for (key, data) in state {
        if options.skip_classifier && key.starts_with(head) {
            continue;
        }
        let Some(shape) = expected.get(&key) else {
            return Err(mismatch(format!("unexpected key '{key}'")));
        };
        if data.shape().as_slice() != shape.as_slice() {
            return Err(mismatch(format!(
                "key '{key}' has shape {:?} in the file but {:?} in the model",
                data.shape().as_slice(),
                shape
            )));
        }
        tensors.push(bridge::from_data(data, kiln_path(&key), None));
    }
    if !options.allow_missing {
        let given: std::collections::HashSet<String> =
            tensors.iter().map(|t| torchvision_key(&t.name)).collect();
        let missing: Vec<&String> = expected
            .keys()
            .filter(|k| !given.contains(*k))
            .filter(|k| !(options.skip_classifier && k.starts_with(head)))
            .collect();
        if let Some(first) = missing.first() {
            return Err(mismatch(format!(
                "missing key '{first}' ({} missing in all)",
                missing.len()
            )));
        }
    }
    let mut model = model;
    let result = model.apply(tensors, None, Some(Box::new(PyTorchToBurnAdapter)), true);
    if let Some(error) = result.errors.first() {
        return Err(mismatch(error.to_string()));
    }
    Ok(model)
}

/// Builds `arch` and loads the weights file at `path` into it. `num_classes` defaults to the
/// file's classifier shape.
pub fn load(
    arch: Arch,
    path: &Path,
    num_classes: Option<usize>,
    device: &Device,
) -> Result<Model, ModelError> {
    let state = read_state_dict(path)?;
    let num_classes = model_classes(arch, &state, num_classes, path)?;
    load_state_dict(
        arch.init(num_classes, device),
        state,
        arch,
        path,
        LoadOptions::default(),
    )
}
