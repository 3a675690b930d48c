//! Mixed precision as `torch.autocast` does it: inside [`autocast`], the convolutions and the
//! classifier compute in a low precision (f16 or bf16) from f32 inputs and f32 weights, and
//! hand f32 back; batch norm, pooling, the loss and the optimizer stay in f32. The casts are
//! differentiable, so the backward runs the same layers in the low precision and the weights'
//! gradients arrive in f32, for f32 master weights.
//!
//! Like `torch.autocast`, it is a setting of the thread that runs the forward pass.

use std::cell::Cell;

use burn::tensor::{DType, Tensor};

thread_local! {
    static LOW: Cell<Option<DType>> = const { Cell::new(None) };
}

/// Runs `f` with the convolutions and the classifier in `low` (`None`: f32 throughout).
pub fn autocast<R>(low: Option<DType>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<DType>);
    impl Drop for Restore {
        fn drop(&mut self) {
            LOW.with(|l| l.set(self.0));
        }
    }
    let _restore = Restore(LOW.with(|l| l.replace(low)));
    f()
}

/// The precision [`autocast`] set on this thread, if any.
pub fn low_precision() -> Option<DType> {
    LOW.with(Cell::get)
}

/// `op(x, weight)` in the autocast precision, with an f32 result; plain `op` outside autocast.
pub(crate) fn in_low_precision<const D: usize, const W: usize, const O: usize>(
    x: Tensor<D>,
    weight: Tensor<W>,
    op: impl FnOnce(Tensor<D>, Tensor<W>) -> Tensor<O>,
) -> Tensor<O> {
    match low_precision() {
        Some(low) => op(x.cast(low), weight.cast(low)).cast(DType::F32),
        None => op(x, weight),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autocast_is_scoped_and_restored_even_on_panic() {
        assert_eq!(low_precision(), None);
        autocast(Some(DType::F16), || {
            assert_eq!(low_precision(), Some(DType::F16));
            autocast(None, || assert_eq!(low_precision(), None));
            assert_eq!(low_precision(), Some(DType::F16));
        });
        assert_eq!(low_precision(), None);
        let caught = std::panic::catch_unwind(|| autocast(Some(DType::BF16), || panic!("x")));
        assert!(caught.is_err());
        assert_eq!(low_precision(), None);
    }
}
