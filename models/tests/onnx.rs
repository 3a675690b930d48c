//! ONNX export checked by an independent runtime: every architecture, exported with batch-norm
//! statistics that are not the identity, run in `tract-onnx` and compared with kiln's own
//! logits; fixed and dynamic batch; the metadata; unsupported opsets.

use burn::tensor::{Device, Tensor, TensorData};
use kiln_models::onnx::{self, OnnxOptions};
use kiln_models::{Arch, Model, torchvision};
use tract_onnx::prelude::Tensor as TractTensor;
use tract_onnx::prelude::*;

const SIZE: usize = 32;
const CLASSES: usize = 5;

/// `arch` with seeded weights and batch-norm parameters and statistics drawn from a formula,
/// so an exporter that dropped or swapped any of them would be caught.
fn model(arch: Arch) -> Model {
    let device = Device::flex();
    device.seed(3);
    let model = arch.init(CLASSES, &device);
    let mut state = torchvision::state_dict(&model);
    for (key, data) in state.iter_mut() {
        let stat = |f: &dyn Fn(f32) -> f32| {
            let n = data.shape().iter().product::<usize>();
            let v: Vec<f32> = (0..n)
                .map(|i| f(((i * 7 + key.len()) % 13) as f32 / 13.0))
                .collect();
            TensorData::new(v, data.shape().to_vec())
        };
        if key.ends_with("running_mean") {
            *data = stat(&|t| 0.2 * (t - 0.5));
        } else if key.ends_with("running_var") {
            *data = stat(&|t| 0.5 + t);
        } else if key.ends_with("bias") && !key.starts_with("fc") && !key.starts_with("classifier")
        {
            *data = stat(&|t| 0.1 * (t - 0.5));
        }
    }
    let model = torchvision::load_state_dict(
        model,
        state,
        arch,
        "formula".as_ref(),
        torchvision::LoadOptions::default(),
    )
    .expect("loads");
    model.set_training(false)
}

fn input(batch: usize) -> Vec<f32> {
    (0..batch * 3 * SIZE * SIZE)
        .map(|i| ((i * 2_654_435_761usize) % 997) as f32 / 498.5 - 1.0)
        .collect()
}

fn kiln_logits(model: &Model, batch: usize) -> Vec<f32> {
    let x = Tensor::<4>::from_data(
        TensorData::new(input(batch), [batch, 3, SIZE, SIZE]),
        &Device::flex(),
    );
    model
        .forward(x)
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32")
}

fn tract_logits(bytes: &[u8], batch: usize) -> TractResult<Vec<f32>> {
    let plan = tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(bytes))?
        .with_input_fact(0, f32::fact([batch, 3, SIZE, SIZE]).into())?
        .into_optimized()?
        .into_runnable()?;
    let x = TractTensor::from_shape(&[batch, 3, SIZE, SIZE], &input(batch))?;
    let out = plan.run(tvec!(x.into()))?;
    Ok(out[0]
        .to_plain_array_view::<f32>()?
        .iter()
        .copied()
        .collect())
}

/// Largest difference relative to the largest logit.
fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = got
        .iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    worst / scale
}

#[test]
fn every_architecture_runs_in_tract_like_in_kiln() {
    for arch in Arch::ALL {
        let model = model(arch);
        let batch = 2;
        let options = OnnxOptions {
            image_size: SIZE,
            ..OnnxOptions::default()
        };
        let bytes = onnx::export(&model, arch, &options).expect("exports");
        let want = kiln_logits(&model, batch);
        let got = tract_logits(&bytes, batch).unwrap_or_else(|e| panic!("{arch}: tract: {e:?}"));
        assert_eq!(got.len(), batch * CLASSES, "{arch}");
        let err = relative_error(&got, &want);
        let abs = got
            .iter()
            .zip(&want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!(
            "{arch:18} tract vs kiln: max abs {abs:.2e}, relative {err:.2e}, {} bytes",
            bytes.len()
        );
        assert!(
            err <= 1e-4,
            "{arch}: tract differs from kiln by {err:e} relative"
        );
    }
}

#[test]
fn a_fixed_batch_and_metadata_are_written() {
    let arch = Arch::Resnet18;
    let model = model(arch);
    let options = OnnxOptions {
        opset: 13,
        batch: Some(3),
        image_size: SIZE,
        metadata: vec![("classes".into(), "[\"a\",\"b\"]".into())],
    };
    let bytes = onnx::export(&model, arch, &options).expect("exports");
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut std::io::Cursor::new(&bytes))
        .expect("parses");
    assert_eq!(proto.opset_import[0].version, 13);
    let meta: Vec<(String, String)> = proto
        .metadata_props
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    assert_eq!(meta, options.metadata);
    let graph = proto.graph.as_ref().expect("graph");
    let input_dims = format!("{:?}", graph.input[0]);
    assert!(input_dims.contains("DimValue(3)"), "{input_dims}");
    let got = tract_logits(&bytes, 3).expect("runs");
    assert!(relative_error(&got, &kiln_logits(&model, 3)) <= 1e-4);
}

#[test]
fn unsupported_opsets_are_refused() {
    let model = model(Arch::Resnet18);
    for opset in [7, 22] {
        let options = OnnxOptions {
            opset,
            ..OnnxOptions::default()
        };
        let err = onnx::export(&model, Arch::Resnet18, &options).unwrap_err();
        assert!(err.to_string().contains(&format!("opset {opset}")), "{err}");
    }
}
