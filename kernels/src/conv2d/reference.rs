//! burn's own conv2d (flex's per-image im2col GEMM, differentiated by burn's autodiff): what
//! kiln's CPU kernel must equal, and what every non-flex device runs.

use burn::tensor::Tensor;
use burn::tensor::ops::ConvOptions;

use super::Conv2dOptions;

/// burn's `conv2d` without bias.
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, options: Conv2dOptions) -> Tensor<4> {
    burn::tensor::module::conv2d(
        x,
        weight,
        None,
        ConvOptions::new(
            options.stride,
            options.padding,
            options.dilation,
            options.groups,
        ),
    )
}
