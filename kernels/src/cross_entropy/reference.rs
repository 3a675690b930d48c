//! Softmax cross-entropy from plain burn ops: what flex runs, and what the cube kernels must
//! equal. `torch.nn.functional.cross_entropy(reduction="none", label_smoothing=eps)` semantics:
//!
//! `loss_i = -(1 - eps) * log p_i[y_i] - eps / C * sum_j log p_i[j]`, with `log p = log_softmax`.
//!
//! Written through the log-sum-exp `lse_i = max_i + ln sum_j exp(x_ij - max_i)`, which the
//! backward pass reuses: `d loss_i / d x_ij = exp(x_ij - lse_i) - (1 - eps) [j = y_i] - eps / C`.

use burn::tensor::{Int, Tensor};

/// Per-row log-sum-exp of `logits` `[n, c]`, shifted by the row maximum so large logits do not
/// overflow.
pub fn log_sum_exp(logits: Tensor<2>) -> Tensor<1> {
    let [n, _] = logits.dims();
    let max = logits.clone().max_dim(1);
    let sum = (logits - max.clone()).exp().sum_dim(1);
    (sum.log() + max).reshape([n])
}

/// Per-row losses `[n]` and log-sum-exps `[n]` of `logits` `[n, c]` against `targets` `[n]`
/// (class indices in `0..c`).
pub fn cross_entropy_forward(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    label_smoothing: f64,
) -> (Tensor<1>, Tensor<1>) {
    let [n, c] = logits.dims();
    if n == 0 {
        // burn's unary kernels on wgpu underflow on a zero-length dimension.
        let empty = Tensor::<1>::empty([0], &logits.device());
        return (empty.clone(), empty);
    }
    let lse = log_sum_exp(logits.clone());
    let target_logit = logits
        .clone()
        .gather(1, targets.reshape([n, 1]))
        .reshape([n]);
    let mut loss = lse.clone() - target_logit.mul_scalar(1.0 - label_smoothing);
    if label_smoothing != 0.0 {
        let row_sum = logits.sum_dim(1).reshape([n]);
        loss = loss - row_sum.mul_scalar(label_smoothing / c as f64);
    }
    (loss, lse)
}

/// Gradient of the per-row losses with respect to `logits`, given the forward's `lse` and the
/// upstream gradient `grad` `[n]` of each row's loss.
pub fn cross_entropy_backward(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    lse: Tensor<1>,
    grad: Tensor<1>,
    label_smoothing: f64,
) -> Tensor<2> {
    let [n, c] = logits.dims();
    if n == 0 {
        return logits;
    }
    let probs = (logits - lse.reshape([n, 1])).exp();
    // One-hot by comparison (burn's `one_hot` refuses a single class and reads the targets back).
    let classes = Tensor::<1, Int>::arange(0..c as i64, &probs.device())
        .reshape([1, c])
        .repeat_dim(0, n);
    let one_hot = classes
        .equal(targets.reshape([n, 1]).repeat_dim(1, c))
        .float();
    let target = one_hot
        .mul_scalar(1.0 - label_smoothing)
        .add_scalar(label_smoothing / c as f64);
    (probs - target) * grad.reshape([n, 1])
}

/// The same loss written the textbook way (`log_softmax`, `gather`), differentiated by burn's
/// autodiff: the tests' independent check of both the forward and the hand-written backward.
pub fn cross_entropy_textbook(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    label_smoothing: f64,
) -> Tensor<1> {
    let [n, c] = logits.dims();
    if n == 0 {
        return Tensor::empty([0], &logits.device());
    }
    let log_p = burn::tensor::activation::log_softmax(logits, 1);
    let nll = log_p
        .clone()
        .gather(1, targets.reshape([n, 1]))
        .reshape([n])
        .neg();
    let smooth = log_p.sum_dim(1).reshape([n]).neg().div_scalar(c as f64);
    nll.mul_scalar(1.0 - label_smoothing) + smooth.mul_scalar(label_smoothing)
}
