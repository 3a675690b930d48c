//! On-device preprocessing as one cubecl kernel: each unit writes one output float, reading its
//! byte from the u8 batch uploaded as packed 32-bit words (4 pixels' channels per word, so the
//! upload is a quarter of the f32 batch's bytes).

use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::{DType, Shape};
use burn_cubecl::{kernel::into_contiguous, ops::numeric::empty_device_dtype, tensor::CubeTensor};
use cubecl::{calculate_cube_count_elemwise, prelude::*};

use crate::cube::address_type;

/// Output position `(b, c, y, x)` of `[n, 3, size, size]` reads byte
/// `((b * height + oy + y) * width + ox + x') * 3 + c` with `x' = size - 1 - x` when sample `b`
/// is flipped; `params` holds `(oy, ox, flip)` per sample.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn preprocess_kernel<F: Float, I: Numeric>(
    words: &Tensor<I>,
    params: &Tensor<I>,
    out: &mut Tensor<F>,
    elements: usize,
    size: usize,
    height: usize,
    width: usize,
    scale0: InputScalar,
    scale1: InputScalar,
    scale2: InputScalar,
    shift0: InputScalar,
    shift1: InputScalar,
    shift2: InputScalar,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let pos = ABSOLUTE_POS;
    if pos >= elements {
        terminate!();
    }
    let x = pos % size;
    let y = (pos / size) % size;
    let c = (pos / (size * size)) % 3;
    let b = pos / (3 * size * size);
    let oy = usize::cast_from(params[b * 3]);
    let ox = usize::cast_from(params[b * 3 + 1]);
    let flip = usize::cast_from(params[b * 3 + 2]);
    let mut sx = x;
    if flip != 0 {
        sx = size - 1 - x;
    }
    let byte = ((b * height + oy + y) * width + ox + sx) * 3 + c;
    let word = u32::cast_from(words[byte / 4]);
    let value = (word >> (((byte % 4) * 8) as u32)) & 255u32;
    // (p / 255 - mean) / std == p * scale + shift, the constants folded on the host per channel.
    let mut k = scale0.get::<F>();
    let mut d = shift0.get::<F>();
    if c == 1 {
        k = scale1.get::<F>();
        d = shift1.get::<F>();
    } else if c == 2 {
        k = scale2.get::<F>();
        d = shift2.get::<F>();
    }
    out[pos] = F::cast_from(value) * k + d;
}

/// `[n, 3, size, size]` f32 from the packed words, per-sample `params` `[n * 3]` and the
/// folded per-channel `scale` and `shift`.
#[allow(clippy::too_many_arguments)]
pub fn preprocess(
    words: CubeTensor,
    params: CubeTensor,
    n: usize,
    height: usize,
    width: usize,
    size: usize,
    scale: [f32; 3],
    shift: [f32; 3],
) -> CubeTensor {
    let out = empty_device_dtype(
        words.client.clone(),
        words.device.clone(),
        Shape::new([n, 3, size, size]),
        DType::F32,
    );
    let elements = n * 3 * size * size;
    if elements == 0 {
        return out;
    }
    let words = into_contiguous(words);
    let params = into_contiguous(params);
    let client = out.client.clone();
    let cube_dim = CubeDim::new(&client, elements);
    let cube_count = calculate_cube_count_elemwise(&client, elements, cube_dim);
    let address = address_type(&[&words, &params, &out]);
    let elem = dtype_to_storage_type(DType::F32);
    let index = dtype_to_storage_type(words.dtype);
    let scalar = |v: f32| InputScalar::new(v as f64, elem);
    unsafe {
        preprocess_kernel::launch_unchecked(
            &client,
            cube_count,
            cube_dim,
            address,
            words.into_tensor_arg(),
            params.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            elements,
            size,
            height,
            width,
            scalar(scale[0]),
            scalar(scale[1]),
            scalar(scale[2]),
            scalar(shift[0]),
            scalar(shift[1]),
            scalar(shift[2]),
            [elem, index],
        );
    }
    out
}
