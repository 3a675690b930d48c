//! What kiln's flex (CPU) kernels share: moving between flex primitives, burn tensors and f32
//! slices, and output buffers that are written exactly once instead of zeroed first.

use std::borrow::Cow;
use std::mem::MaybeUninit;

use burn::backend::Flex;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, Shape, Tensor, TensorData};

pub(crate) type FlexTensor = FloatTensor<Flex>;

/// A flex primitive as a `Tensor` (zero-copy), e.g. to run a plain-burn reference on it.
pub(crate) fn to_tensor<const D: usize>(primitive: FlexTensor) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(primitive)
}

/// A `Tensor` computed from flex primitives back as a flex primitive.
///
/// # Panics
/// When the tensor is not on flex; `what` names the caller.
pub(crate) fn to_primitive<const D: usize>(tensor: Tensor<D>, what: &str) -> FlexTensor {
    tensor
        .try_into_primitive::<Flex>()
        .unwrap_or_else(|_| panic!("{what}: a computation on flex inputs stays on flex"))
}

/// The values of an f32 tensor in row-major order, borrowed when it is contiguous.
///
/// # Panics
/// When the tensor is not f32; `what` names the caller.
pub(crate) fn f32_slice<'a>(t: &'a FlexTensor, what: &str) -> Cow<'a, [f32]> {
    assert_eq!(t.dtype(), DType::F32, "{what}: kiln's CPU kernel is f32");
    match t.as_slice::<f32>() {
        Some(s) if t.is_contiguous() => Cow::Borrowed(s),
        _ => Cow::Owned(
            t.to_contiguous()
                .as_slice::<f32>()
                .expect("a contiguous tensor has a slice")
                .to_vec(),
        ),
    }
}

/// A flex tensor of `shape` holding `values`.
pub(crate) fn from_vec(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, Shape::from(shape.to_vec())))
}

/// An output buffer of `len` values that its kernel writes exactly once, so it is not zeroed
/// first (a whole pass over memory saved). Turn it into values with [`filled`].
pub(crate) fn unfilled(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: MaybeUninit needs no initialisation.
    unsafe { v.set_len(len) };
    v
}

/// The values of a buffer from [`unfilled`].
///
/// # Safety
/// Every element has been written.
pub(crate) unsafe fn filled(mut v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let (ptr, len, cap) = (v.as_mut_ptr(), v.len(), v.capacity());
    std::mem::forget(v);
    // SAFETY: MaybeUninit<f32> has f32's layout; the caller guarantees every element is set.
    unsafe { Vec::from_raw_parts(ptr.cast::<f32>(), len, cap) }
}

/// Writes `value` to every element.
pub(crate) fn fill(dst: &mut [MaybeUninit<f32>], value: f32) {
    for d in dst {
        d.write(value);
    }
}

/// Zeroes `dst` and hands it back as values.
pub(crate) fn zeroed(dst: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    fill(dst, 0.0);
    // SAFETY: every element was just written; MaybeUninit<f32> has f32's layout.
    unsafe { &mut *(dst as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// A buffer from [`unfilled`] (or a part of one) as values, once written.
///
/// # Safety
/// Every element of `dst` has been written.
pub(crate) unsafe fn written(dst: &mut [MaybeUninit<f32>]) -> &[f32] {
    // SAFETY: the caller guarantees every element is set; MaybeUninit<f32> has f32's layout.
    unsafe { &*(dst as *const [MaybeUninit<f32>] as *const [f32]) }
}

/// Writes `src` to `dst` (same length).
pub(crate) fn copy(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    // SAFETY: same length, distinct buffers (`dst` is uniquely borrowed), and MaybeUninit<f32>
    // has f32's layout.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast::<f32>(), src.len())
    };
}

/// A pointer to an output buffer that rayon tasks writing disjoint ranges may share.
#[derive(Clone, Copy)]
pub(crate) struct Shared(*mut MaybeUninit<f32>);
// SAFETY: every task writes only its own ranges (see `range`'s contract).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    pub(crate) fn new(buffer: &mut [MaybeUninit<f32>]) -> Self {
        Self(buffer.as_mut_ptr())
    }

    /// # Safety
    /// `start..start + len` is inside the buffer, the buffer outlives the slice, and no other
    /// task touches that range meanwhile.
    pub(crate) unsafe fn range<'a>(self, start: usize, len: usize) -> &'a mut [MaybeUninit<f32>] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}
