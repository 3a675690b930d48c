//! Gradient bucket packing from plain burn ops: what flex runs, and what the cube kernels must
//! equal. Packing concatenates flat tensors and casts the result to the wire dtype; unpacking
//! slices the bucket back into pieces, cast to f32.

use burn::tensor::{DType, Tensor};

/// `tensors` end to end in one `[sum of lengths]` tensor of `dtype` (f32, or f16 for a
/// compressed wire format: values rounded to nearest, out of range to +-inf).
pub fn pack(tensors: &[Tensor<1>], dtype: DType) -> Tensor<1> {
    let total: usize = tensors.iter().map(|t| t.dims()[0]).sum();
    if total == 0 {
        let device = tensors
            .first()
            .map(|t| t.device())
            .unwrap_or_else(burn::tensor::Device::flex);
        return Tensor::empty([0], (&device, dtype));
    }
    // Zero-length pieces are left out: burn's ops on wgpu underflow on an empty dimension.
    let parts: Vec<Tensor<1>> = tensors
        .iter()
        .filter(|t| t.dims()[0] > 0)
        .cloned()
        .collect();
    Tensor::cat(parts, 0).cast(dtype)
}

/// The pieces of `flat` with lengths `lens` (which must sum to its length), as f32.
pub fn unpack(flat: Tensor<1>, lens: &[usize]) -> Vec<Tensor<1>> {
    assert_eq!(
        lens.iter().sum::<usize>(),
        flat.dims()[0],
        "unpack: the lengths do not add up to the bucket"
    );
    let device = flat.device();
    let mut offset = 0;
    lens.iter()
        .map(|&len| {
            let piece = if len == 0 {
                Tensor::empty([0], (&device, DType::F32))
            } else {
                flat.clone().slice(offset..offset + len).cast(DType::F32)
            };
            offset += len;
            piece
        })
        .collect()
}
