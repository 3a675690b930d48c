//! What kiln's cubecl kernels share.

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::AddressType;

/// The index width a launch over `tensors` needs: the widest any of them requires.
/// (`burn_cubecl::kernel::utils::address_type!` is crate-private; this is its body.)
pub(crate) fn address_type(tensors: &[&CubeTensor]) -> AddressType {
    tensors
        .iter()
        .map(|t| t.required_address_type())
        .max()
        .unwrap_or_default()
}
