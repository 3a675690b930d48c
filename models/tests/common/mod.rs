//! Shared by the model tests: the closed-form tensor formula the fixture generator uses, and
//! the fixtures it wrote.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use kiln_models::torchvision::{self, LoadOptions, StateDict};
use kiln_models::{Arch, Model};

/// The fixture directory.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fnv1a(text: &str) -> u32 {
    text.bytes()
        .fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619))
}

/// `n` values in [-1, 1), bit for bit what `generate.py`'s `unit` computes.
fn unit(key: &str, n: usize) -> impl Iterator<Item = f64> {
    let h = fnv1a(key);
    (0..n as u64).map(move |i| {
        let mut x = h ^ (i.wrapping_mul(0x9E37_79B1) & 0xFFFF_FFFF) as u32;
        x ^= x >> 16;
        x = x.wrapping_mul(0x7FEB_352D);
        x ^= x >> 15;
        x = x.wrapping_mul(0x846C_A68B);
        x ^= x >> 16;
        (x >> 8) as f64 / 8_388_608.0 - 1.0
    })
}

/// `generate.py`'s `scale_and_shift`; `train` centres batch-norm biases on 1 (see there).
fn scale_and_shift(key: &str, shape: &[usize], train: bool) -> (f64, f64) {
    let head = key.starts_with("fc.") || key.starts_with("classifier.");
    if train && key.ends_with("bias") && shape.len() == 1 && !head {
        (0.1, 1.0)
    } else if key.ends_with("running_var") {
        (0.5, 1.0)
    } else if key.ends_with("running_mean") {
        (0.1, 0.0)
    } else if shape.len() == 4 {
        ((3.0 / (shape[1] * shape[2] * shape[3]) as f64).sqrt(), 0.0)
    } else if shape.len() == 2 {
        (1.0 / (shape[1] as f64).sqrt(), 0.0)
    } else if key.ends_with("weight") {
        (0.2, 1.0)
    } else {
        (0.1, 0.0)
    }
}

/// The tensor `generate.py`'s `formula(key, shape)` makes.
pub fn formula(key: &str, shape: &[usize]) -> TensorData {
    formula_for(key, shape, false)
}

/// `generate.py`'s `formula(key, shape, train)`.
pub fn formula_for(key: &str, shape: &[usize], train: bool) -> TensorData {
    let (scale, shift) = scale_and_shift(key, shape, train);
    let n = shape.iter().product();
    let values: Vec<f32> = unit(key, n).map(|u| (shift + scale * u) as f32).collect();
    TensorData::new(values, shape.to_vec())
}

/// `arch` with 10 classes and every tensor filled by the formula, as the generator fills it.
pub fn filled(arch: Arch, device: &Device) -> Model {
    filled_for(arch, device, false)
}

/// `generate.py`'s `filled(arch, train)`.
pub fn filled_for(arch: Arch, device: &Device, train: bool) -> Model {
    let model = arch.init(10, device);
    let state: StateDict = torchvision::state_dict_shapes(&model)
        .into_iter()
        .map(|(key, shape)| {
            let data = formula_for(&key, &shape, train);
            (key, data)
        })
        .collect();
    torchvision::load_state_dict(
        model,
        state,
        arch,
        "formula".as_ref(),
        LoadOptions::default(),
    )
    .expect("the formula state dict fits the model")
}

/// The generator's input batch on `device`.
pub fn input(device: &Device) -> Tensor<4> {
    Tensor::from_data(formula("input", &[2, 3, 64, 64]), device)
}

/// Every tensor in `parity.safetensors`.
pub fn parity() -> BTreeMap<String, TensorData> {
    torchvision::read_state_dict(&fixtures().join("parity.safetensors"))
        .expect("parity fixture reads")
}

/// Max absolute difference over max absolute expected value.
pub fn relative_error(actual: &TensorData, expected: &TensorData) -> f64 {
    assert_eq!(actual.shape(), expected.shape(), "shapes differ");
    let a = actual.try_to_vec::<f32>().expect("f32 tensor");
    let e = expected.try_to_vec::<f32>().expect("f32 tensor");
    let scale = e.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let diff = a
        .iter()
        .zip(&e)
        .fold(0f64, |m, (a, e)| m.max((*a as f64 - *e as f64).abs()));
    assert!(diff.is_finite(), "non-finite values");
    diff / scale.max(f64::MIN_POSITIVE)
}
