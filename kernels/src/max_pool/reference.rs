//! burn's own max pooling (differentiated by burn's autodiff through its indices): what kiln's
//! CPU kernel must equal, and what every non-flex device runs.

use burn::tensor::Tensor;
use burn::tensor::ops::MaxPoolOptions;

use super::MaxPool2dOptions;

/// burn's `max_pool2d` (dilation 1, floor mode).
pub fn max_pool2d(x: Tensor<4>, options: MaxPool2dOptions) -> Tensor<4> {
    burn::tensor::module::max_pool2d(
        x,
        MaxPoolOptions::new(options.kernel)
            .with_stride(options.stride)
            .with_padding(options.padding),
    )
}
