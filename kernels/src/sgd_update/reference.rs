//! The plain-burn SGD step: the semantics the cube kernel must match, and the implementation
//! every non-cube device (flex) runs, in the operation order kiln's trainer has always used, so
//! flex training stays bit for bit what it was.

use burn::tensor::Tensor;

/// One `torch.optim.SGD` step on a flat parameter.
///
/// - `d = grad + weight_decay * param` (skipped when `weight_decay == 0`, as torch does)
/// - momentum != 0: `buf = first_step ? d : momentum * buf + (1 - dampening) * d`,
///   then `d = nesterov ? d + momentum * buf : buf`
/// - `param = param - lr * d`
///
/// Returns the new parameter and, when `momentum != 0`, the new momentum buffer.
///
/// # Panics
/// When `momentum != 0`, `first_step` is false and `momentum_buf` is `None`.
#[allow(clippy::too_many_arguments)]
pub fn sgd_update(
    param: Tensor<1>,
    grad: Tensor<1>,
    momentum_buf: Option<Tensor<1>>,
    lr: f64,
    momentum: f64,
    dampening: f64,
    weight_decay: f64,
    nesterov: bool,
    first_step: bool,
) -> (Tensor<1>, Option<Tensor<1>>) {
    let mut d = grad;
    if weight_decay != 0.0 {
        d = d + param.clone().mul_scalar(weight_decay);
    }
    if momentum == 0.0 {
        return (param - d.mul_scalar(lr), None);
    }
    let buf = if first_step {
        d.clone()
    } else {
        let buf =
            momentum_buf.expect("sgd_update: a momentum buffer is required after the first step");
        buf.mul_scalar(momentum) + d.clone().mul_scalar(1.0 - dampening)
    };
    let d = if nesterov {
        d + buf.clone().mul_scalar(momentum)
    } else {
        buf.clone()
    };
    (param - d.mul_scalar(lr), Some(buf))
}
