//! kiln's own kernels, one folder each: the public function, the plain-burn reference it must
//! match, and kiln's version: a cubecl kernel (`cube.rs`) for cube devices (wgpu, cuda) or a
//! CPU kernel (`cpu.rs`) for flex. Each public function routes by the tensors' device; the
//! other devices run the reference.
//!
//! On cube devices:
//! - [`sgd_update`]: the fused SGD step (param, grad and momentum buffer in one pass).
//! - [`cross_entropy`]: softmax cross-entropy forward and backward, label smoothing.
//! - [`preprocess`]: u8 NHWC images -> normalised f32 NCHW with per-sample crop and flip.
//! - [`bucket`]: gradient bucket pack/unpack for the allreduce, f32 or f16 on the wire.
//!
//! On flex:
//! - [`conv2d`]: convolution forward and both gradients as whole-batch GEMMs.
//! - [`batch_norm`]: training-mode batch norm (+ ReLU) forward and backward in two passes.
//! - [`max_pool`]: 2-D max pooling forward and backward (the stems' 3x3, stride-2 pool).
//!
//! And [`cpu_info`]: the CPU's name, the GEMM's SIMD level and its measured peak;
//! [`testing`]: the test devices every crate shares and the `test_device!` macro.

pub mod batch_norm;
pub mod bucket;
pub mod conv2d;
pub mod cpu_info;
pub mod cross_entropy;
mod cube;
mod flex;
pub mod max_pool;
pub mod preprocess;
pub mod sgd_update;
pub mod testing;

use burn::backend::DispatchDevice;
use burn::tensor::Device;

/// Whether `device` runs on burn's cube backend (wgpu, cuda, rocm, metal, vulkan, cpu runtime),
/// i.e. whether kiln's functions run their cubecl kernels there. Autodiff is looked through.
pub fn is_cube_device(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Cube(_)
    )
}

/// Whether `device` is flex (autodiff looked through): where kiln's CPU kernels run.
pub fn is_flex_device(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}
