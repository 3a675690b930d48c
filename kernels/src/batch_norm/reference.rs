//! Training-mode batch norm (+ ReLU) from burn's ops: what kiln's CPU kernel must equal, and
//! what every non-flex device runs.

use burn::tensor::Tensor;
use burn::tensor::activation::relu as relu_op;

use super::BatchNormTrain;

/// burn's `batch_norm_train`, then ReLU when `relu`.
pub fn batch_norm_train(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    eps: f64,
    relu: bool,
) -> BatchNormTrain {
    let r = burn::tensor::module::batch_norm_train(x, gamma, beta, eps);
    BatchNormTrain {
        output: if relu { relu_op(r.output) } else { r.output },
        mean: r.mean,
        variance: r.variance,
    }
}
