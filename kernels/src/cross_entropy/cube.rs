//! Softmax cross-entropy as cubecl kernels.
//!
//! - Forward: one unit per row reads the row twice (maximum, then the shifted exponential sum,
//!   the row sum and the target logit) and writes the row's loss and log-sum-exp: no `[n, c]`
//!   intermediate (burn's composition writes log-softmax, then gathers, then reduces).
//! - Backward: one unit per logit, `(exp(x - lse) - target weight) * grad_row`, one pass.
//!
//! A target outside `0..c` is never read past its row: its loss is +inf and its gradient row
//! is zero (the reference and torch refuse such a target; kiln's loader never produces one).

use burn::backend::TensorMetadata;
use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::Shape;
use burn_cubecl::{kernel::into_contiguous, ops::numeric::empty_device_dtype, tensor::CubeTensor};
use cubecl::{calculate_cube_count_elemwise, prelude::*};

use crate::cube::address_type;

#[cube(launch_unchecked, address_type = "dynamic")]
fn cross_entropy_forward_kernel<F: Float, I: Numeric>(
    logits: &Tensor<F>,
    targets: &Tensor<I>,
    loss: &mut Tensor<F>,
    lse_out: &mut Tensor<F>,
    rows: usize,
    classes: usize,
    on_target: InputScalar,
    per_class: InputScalar,
    infinity: InputScalar,
    #[comptime] smoothing: bool,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let row = ABSOLUTE_POS;
    if row >= rows {
        terminate!();
    }
    let base = row * classes;
    // No -inf literal (WGSL rejects it): start from the first logit.
    let mut max = logits[base];
    for j in 1..classes {
        let v = logits[base + j];
        if v > max {
            max = v;
        }
    }
    let mut sum = F::new(0.0);
    let mut total = F::new(0.0);
    for j in 0..classes {
        let v = logits[base + j];
        sum += (v - max).exp();
        total += v;
    }
    let lse = max + sum.ln();
    let target = usize::cast_from(targets[row]);
    let mut out = infinity.get::<F>();
    if target < classes {
        out = lse - logits[base + target] * on_target.get::<F>();
        // Skipped without smoothing, as in torch: a -inf logit must not turn 0 * -inf into NaN.
        if smoothing {
            out -= total * per_class.get::<F>();
        }
    }
    loss[row] = out;
    lse_out[row] = lse;
}

#[cube(launch_unchecked, address_type = "dynamic")]
fn cross_entropy_backward_kernel<F: Float, I: Numeric>(
    logits: &Tensor<F>,
    targets: &Tensor<I>,
    lse: &Tensor<F>,
    grad: &Tensor<F>,
    out: &mut Tensor<F>,
    elements: usize,
    classes: usize,
    on_target: InputScalar,
    per_class: InputScalar,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let pos = ABSOLUTE_POS;
    if pos >= elements {
        terminate!();
    }
    let row = pos / classes;
    let class = pos % classes;
    let target = usize::cast_from(targets[row]);
    let mut g = F::new(0.0);
    if target < classes {
        let mut weight = per_class.get::<F>();
        if class == target {
            weight += on_target.get::<F>();
        }
        g = ((logits[pos] - lse[row]).exp() - weight) * grad[row];
    }
    out[pos] = g;
}

fn check(logits: &CubeTensor, targets: &CubeTensor) -> (usize, usize) {
    let shape = logits.shape();
    assert_eq!(
        shape.num_dims(),
        2,
        "cross_entropy: logits must be [n, classes]"
    );
    let (n, c) = (shape[0], shape[1]);
    assert_eq!(
        targets.shape().num_elements(),
        n,
        "cross_entropy: one target per row"
    );
    assert!(n == 0 || c > 0, "cross_entropy: logits have no classes");
    targets.assert_is_on_same_device(logits);
    (n, c)
}

fn empty(like: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_device_dtype(like.client.clone(), like.device.clone(), shape, like.dtype)
}

/// Per-row (loss, log-sum-exp) of `logits` `[n, c]`.
pub fn cross_entropy_forward(
    logits: CubeTensor,
    targets: CubeTensor,
    label_smoothing: f64,
) -> (CubeTensor, CubeTensor) {
    let (n, c) = check(&logits, &targets);
    let loss = empty(&logits, Shape::new([n]));
    let lse = empty(&logits, Shape::new([n]));
    if n == 0 {
        return (loss, lse);
    }
    // After the empty case: burn's layout checks underflow on a zero-length dimension.
    let logits = into_contiguous(logits);
    let targets = into_contiguous(targets);
    let client = logits.client.clone();
    let cube_dim = CubeDim::new(&client, n);
    let cube_count = calculate_cube_count_elemwise(&client, n, cube_dim);
    let address = address_type(&[&logits, &targets, &loss, &lse]);
    let elem = dtype_to_storage_type(logits.dtype);
    let index = dtype_to_storage_type(targets.dtype);
    unsafe {
        cross_entropy_forward_kernel::launch_unchecked(
            &client,
            cube_count,
            cube_dim,
            address,
            logits.into_tensor_arg(),
            targets.into_tensor_arg(),
            loss.clone().into_tensor_arg(),
            lse.clone().into_tensor_arg(),
            n,
            c,
            InputScalar::new(1.0 - label_smoothing, elem),
            InputScalar::new(label_smoothing / c as f64, elem),
            InputScalar::new(f64::INFINITY, elem),
            label_smoothing != 0.0,
            [elem, index],
        );
    }
    (loss, lse)
}

/// Gradient `[n, c]` of the per-row losses, given the forward's `lse` and each row's upstream
/// gradient `grad` `[n]`.
pub fn cross_entropy_backward(
    logits: CubeTensor,
    targets: CubeTensor,
    lse: CubeTensor,
    grad: CubeTensor,
    label_smoothing: f64,
) -> CubeTensor {
    let (n, c) = check(&logits, &targets);
    let out = empty(&logits, logits.shape());
    let elements = n * c;
    if elements == 0 {
        return out;
    }
    let logits = into_contiguous(logits);
    let targets = into_contiguous(targets);
    let lse = into_contiguous(lse);
    let grad = into_contiguous(grad);
    let client = logits.client.clone();
    let cube_dim = CubeDim::new(&client, elements);
    let cube_count = calculate_cube_count_elemwise(&client, elements, cube_dim);
    let address = address_type(&[&logits, &targets, &lse, &grad, &out]);
    let elem = dtype_to_storage_type(logits.dtype);
    let index = dtype_to_storage_type(targets.dtype);
    unsafe {
        cross_entropy_backward_kernel::launch_unchecked(
            &client,
            cube_count,
            cube_dim,
            address,
            logits.into_tensor_arg(),
            targets.into_tensor_arg(),
            lse.into_tensor_arg(),
            grad.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            elements,
            c,
            InputScalar::new(1.0 - label_smoothing, elem),
            InputScalar::new(label_smoothing / c as f64, elem),
            [elem, index],
        );
    }
    out
}
