//! The plain-burn SGD step: the semantics the cube kernel must match, and the implementation
//! every non-cube device (flex) runs, in the operation order kiln's trainer has always used, so
//! flex training stays bit for bit what it was.

use burn::tensor::Tensor;

use super::SgdParams;

/// One `torch.optim.SGD` step on a flat parameter.
///
/// - `d = grad + weight_decay * param` (skipped when `weight_decay == 0`, as torch does)
/// - momentum != 0: `buf = d` on the first step (no buffer yet), else
///   `buf = momentum * buf + (1 - dampening) * d`,
///   then `d = nesterov ? d + momentum * buf : buf`
/// - `param = param - lr * d`
///
/// Returns the new parameter and, when `momentum != 0`, the new momentum buffer.
pub fn sgd_update(
    param: Tensor<1>,
    grad: Tensor<1>,
    momentum_buf: Option<Tensor<1>>,
    params: &SgdParams,
) -> (Tensor<1>, Option<Tensor<1>>) {
    let SgdParams {
        lr,
        momentum,
        dampening,
        weight_decay,
        nesterov,
    } = *params;
    let mut d = grad;
    if weight_decay != 0.0 {
        d = d + param.clone().mul_scalar(weight_decay);
    }
    if momentum == 0.0 {
        return (param - d.mul_scalar(lr), None);
    }
    let buf = match momentum_buf {
        None => d.clone(),
        Some(buf) => buf.mul_scalar(momentum) + d.clone().mul_scalar(1.0 - dampening),
    };
    let d = if nesterov {
        d + buf.clone().mul_scalar(momentum)
    } else {
        buf.clone()
    };
    (param - d.mul_scalar(lr), Some(buf))
}
