//! kiln's own kernels, one folder each: the public function, the plain-burn reference it must
//! match, and a cubecl version used on cube devices (wgpu, cuda).
//!
//! - [`sgd_update`]: the fused SGD step (param, grad and momentum buffer in one pass).
//! - [`testing`]: the test devices every crate shares and the `test_device!` macro.
//!
//! Still to come (the kernels issue): on-device preprocessing, gradient bucket pack/unpack,
//! fused softmax cross-entropy.

pub mod cross_entropy;
pub mod sgd_update;
pub mod testing;
