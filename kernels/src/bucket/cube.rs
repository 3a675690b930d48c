//! Gradient bucket packing as a cubecl kernel: one copy-and-convert launch per piece, straight
//! into its place in the bucket (or out of it), so packing is one pass over the gradients with
//! the f16 rounding folded in, and no concatenated f32 intermediate exists.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::{DType, Shape};
use burn_cubecl::{kernel::into_contiguous, ops::numeric::empty_device_dtype, tensor::CubeTensor};
use cubecl::{calculate_cube_count_elemwise, prelude::*};

/// `dst[dst_offset + i] = D(src[src_offset + i])` for `i < len`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn copy_convert_kernel<S: Float, D: Float>(
    src: &Tensor<S>,
    dst: &mut Tensor<D>,
    src_offset: usize,
    dst_offset: usize,
    len: usize,
    #[define(S, D)] _dtypes: [ElemType; 2],
) {
    if ABSOLUTE_POS >= len {
        terminate!();
    }
    dst[dst_offset + ABSOLUTE_POS] = D::cast_from(src[src_offset + ABSOLUTE_POS]);
}

fn copy_convert(
    src: &CubeTensor,
    dst: &CubeTensor,
    src_offset: usize,
    dst_offset: usize,
    len: usize,
) {
    let client = src.client.clone();
    let cube_dim = CubeDim::new(&client, len);
    let cube_count = calculate_cube_count_elemwise(&client, len, cube_dim);
    let address = src.required_address_type().max(dst.required_address_type());
    unsafe {
        copy_convert_kernel::launch_unchecked(
            &client,
            cube_count,
            cube_dim,
            address,
            src.clone().into_tensor_arg(),
            dst.clone().into_tensor_arg(),
            src_offset,
            dst_offset,
            len,
            [
                dtype_to_storage_type(src.dtype),
                dtype_to_storage_type(dst.dtype),
            ],
        );
    }
}

fn empty(like: &CubeTensor, len: usize, dtype: DType) -> CubeTensor {
    empty_device_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::new([len]),
        dtype,
    )
}

/// Writes `src` (converted to `bucket`'s dtype) at `offset` of `bucket` and returns the
/// bucket: in place when burn holds its only reference, else into a copy.
pub fn bucket_write(bucket: CubeTensor, src: CubeTensor, offset: usize) -> CubeTensor {
    let len = src.meta.num_elements();
    let total = bucket.meta.num_elements();
    assert!(
        offset + len <= total,
        "bucket_write: {len} values at {offset} overflow a bucket of {total}"
    );
    src.assert_is_on_same_device(&bucket);
    if len == 0 {
        return bucket;
    }
    let bucket = into_contiguous(bucket);
    let bucket = if bucket.can_mut() && bucket.is_nonoverlapping() {
        bucket
    } else {
        let copy = empty(&bucket, total, bucket.dtype);
        copy_convert(&bucket, &copy, 0, 0, total);
        copy
    };
    let src = into_contiguous(src);
    copy_convert(&src, &bucket, 0, offset, len);
    bucket
}

/// `len` values of `bucket` from `offset`, as a new tensor of `dtype`.
pub fn bucket_read(bucket: CubeTensor, offset: usize, len: usize, dtype: DType) -> CubeTensor {
    let total = bucket.meta.num_elements();
    assert!(
        offset + len <= total,
        "bucket_read: {len} values at {offset} overflow a bucket of {total}"
    );
    let out = empty(&bucket, len, dtype);
    if len == 0 {
        return out;
    }
    let bucket = into_contiguous(bucket);
    copy_convert(&bucket, &out, offset, 0, len);
    out
}
