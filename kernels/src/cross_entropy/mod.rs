//! Fused softmax cross-entropy, forward and backward, with optional label smoothing
//! (`torch.nn.functional.cross_entropy` semantics, numerically stable for large logits).
//!
//! [`cross_entropy`] (the batch mean, the training loss) and [`cross_entropy_rows`] (one loss
//! per row) go through the [`CrossEntropyBackend`] extension:
//! - `Cube` -> `cube.rs`: one kernel for the forward (per-row loss and log-sum-exp), one for
//!   the backward (`softmax - target` times the row's gradient);
//! - `Flex` -> `reference.rs`, the same two steps in plain burn ops;
//! - `Autodiff` -> the impl below, which runs the inner backend's forward, keeps the logits and
//!   the log-sum-exp, and calls the inner backend's backward: the gradient is the closed form,
//!   not burn differentiating log-softmax, gather and mean op by op.

pub mod cube;
pub mod reference;

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind, unary},
};
use burn::backend::{
    AutodiffBackend, Backend, Dispatch, Flex, backend_extension,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{Int, Tensor};
#[cfg(feature = "fusion")]
use burn::{backend::fusion::custom::TensorSpec, tensor::Shape};
use burn_cubecl::CubeBackend;

/// Backend operations behind [`cross_entropy_rows`].
#[backend_extension(Cube, Flex, Autodiff, Fusion: cfg(feature = "fusion"))]
pub trait CrossEntropyBackend: Backend {
    /// Per-row losses `[n]` and log-sum-exps `[n]` of `logits` `[n, c]` against `targets` `[n]`.
    #[fusion(meta = |logits, _targets, _label_smoothing| {
        let rows = TensorSpec::new(Shape::new([logits.shape[0]]), logits.dtype);
        (rows.clone(), rows)
    })]
    fn cross_entropy_forward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        label_smoothing: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Gradient `[n, c]` of the per-row losses for upstream gradients `grad` `[n]`.
    #[fusion(dtype = logits, shape = logits)]
    fn cross_entropy_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        label_smoothing: f64,
    ) -> FloatTensor<Self>;
}

// The inner backend of the `Cube` route, with or without fusion (see sgd_update).
impl CrossEntropyBackend for CubeBackend {
    fn cross_entropy_forward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        label_smoothing: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        cube::cross_entropy_forward(logits, targets, label_smoothing)
    }

    fn cross_entropy_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        label_smoothing: f64,
    ) -> FloatTensor<Self> {
        cube::cross_entropy_backward(logits, targets, lse, grad, label_smoothing)
    }
}

fn flex_float<const D: usize>(primitive: FloatTensor<Flex>) -> Tensor<D> {
    crate::flex::to_tensor(primitive)
}

fn flex_primitive<const D: usize>(tensor: Tensor<D>) -> FloatTensor<Flex> {
    crate::flex::to_primitive(tensor, "cross_entropy")
}

impl CrossEntropyBackend for Flex {
    fn cross_entropy_forward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        label_smoothing: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (loss, lse) = reference::cross_entropy_forward(
            flex_float::<2>(logits),
            Tensor::<1, Int>::from_primitive::<Flex>(targets),
            label_smoothing,
        );
        (flex_primitive(loss), flex_primitive(lse))
    }

    fn cross_entropy_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        label_smoothing: f64,
    ) -> FloatTensor<Self> {
        flex_primitive(reference::cross_entropy_backward(
            flex_float::<2>(logits),
            Tensor::<1, Int>::from_primitive::<Flex>(targets),
            flex_float::<1>(lse),
            flex_float::<1>(grad),
            label_smoothing,
        ))
    }
}

impl<B: Backend + CrossEntropyBackend, C: CheckpointStrategy> CrossEntropyBackend
    for Autodiff<B, C>
{
    fn cross_entropy_forward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        label_smoothing: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        #[derive(Debug)]
        struct CrossEntropy;

        impl<B: Backend + CrossEntropyBackend> Backward<B, 1> for CrossEntropy {
            // logits, targets, log-sum-exp, label smoothing.
            type State = (FloatTensor<B>, IntTensor<B>, FloatTensor<B>, f64);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (logits, targets, lse, label_smoothing) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::cross_entropy_backward(logits, targets, lse, grad, label_smoothing)
                });
            }
        }

        let node = logits.node();
        let logits = logits.into_primitive();
        let (loss, lse) =
            B::cross_entropy_forward(logits.clone(), targets.clone(), label_smoothing);
        let state = (logits, targets, lse.clone(), label_smoothing);
        let loss = match CrossEntropy.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(state, loss),
            OpsKind::UnTracked(prep) => prep.finish(loss),
        };
        (loss, <Self as AutodiffBackend>::from_inner(lse))
    }

    fn cross_entropy_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        label_smoothing: f64,
    ) -> FloatTensor<Self> {
        // Called directly only by someone differentiating by hand: the result is a constant.
        <Self as AutodiffBackend>::from_inner(B::cross_entropy_backward(
            logits.into_primitive(),
            targets,
            lse.into_primitive(),
            grad.into_primitive(),
            label_smoothing,
        ))
    }
}

/// Softmax cross-entropy of each row of `logits` `[n, c]` against its class index in `targets`
/// `[n]` (each in `0..c`), with `label_smoothing` in `[0, 1]` as in torch: `[n]` losses.
/// Differentiable with respect to `logits` when they carry autodiff.
///
/// # Panics
/// When the shapes disagree, the devices differ, or the backend is neither cube nor flex.
pub fn cross_entropy_rows(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    label_smoothing: f64,
) -> Tensor<1> {
    let [n, _] = logits.dims();
    assert_eq!(targets.dims()[0], n, "cross_entropy: one target per row");
    let (loss, _lse) = <Dispatch as CrossEntropyBackend>::cross_entropy_forward(
        logits.into_dispatch(),
        targets.into_dispatch(),
        label_smoothing,
    );
    Tensor::from_dispatch(loss)
}

/// The batch mean of [`cross_entropy_rows`] (torch's default `reduction="mean"`): the training
/// loss, shape `[1]`.
pub fn cross_entropy(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    label_smoothing: f64,
) -> Tensor<1> {
    cross_entropy_rows(logits, targets, label_smoothing).mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData, Tolerance};

    /// Logits `[n, c]` spread over about +-6 with a few rows scaled up, and targets `(i * 7) % c`.
    fn inputs(n: usize, c: usize, device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
        let logits: Vec<f32> = (0..n * c)
            .map(|i| {
                ((i as f32 * 0.37).sin() * 6.0) * if i / c.max(1) % 5 == 4 { 40.0 } else { 1.0 }
            })
            .collect();
        let targets: Vec<i64> = (0..n).map(|i| ((i * 7) % c.max(1)) as i64).collect();
        (
            Tensor::from_data(TensorData::new(logits, [n, c]), device),
            Tensor::from_data(TensorData::new(targets, [n]), device),
        )
    }

    /// Equal within 1e-5 relative + 1e-5 absolute, NaN where `want` has NaN, same infinities.
    fn same<const D: usize>(got: Tensor<D>, want: Tensor<D>, what: &str) {
        let got = got.into_data().try_to_vec::<f32>().unwrap();
        let want = want.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let ok = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= 1e-5 + 1e-5 * w.abs();
            assert!(ok, "{what}: element {i}: kernel {g}, reference {w}");
        }
    }

    // Empty, one row of one class, odd sizes (not a multiple of any workgroup), ImageNet's 1000
    // classes, and a large batch; with and without smoothing. Forward against both references.
    crate::test_device!(forward_matches_references, |device: Device| {
        for (n, c) in [(0, 10), (1, 1), (3, 10), (37, 1000), (4099, 10)] {
            for eps in [0.0, 0.1] {
                let (x, y) = inputs(n, c, &device);
                let got = cross_entropy_rows(x.clone(), y.clone(), eps);
                let (want, _) = reference::cross_entropy_forward(x.clone(), y.clone(), eps);
                let textbook = reference::cross_entropy_textbook(x, y, eps);
                same(
                    got.clone(),
                    want,
                    &format!("{n}x{c} eps {eps} vs reference"),
                );
                same(got, textbook, &format!("{n}x{c} eps {eps} vs log_softmax"));
            }
        }
    });

    // The fused backward (through autodiff) against burn differentiating log_softmax + gather +
    // mean, and the mean loss against the textbook mean.
    crate::test_device!(gradient_matches_burns_autodiff, |device: Device| {
        let device = device.autodiff();
        for (n, c) in [(1, 1), (3, 10), (37, 1000), (257, 10)] {
            for eps in [0.0, 0.1] {
                let (x, y) = inputs(n, c, &device);
                let x1 = x.clone().require_grad();
                let loss = cross_entropy(x1.clone(), y.clone(), eps);
                let grads = loss.backward();
                let got = x1.grad(&grads).expect("logits have a gradient");

                let x2 = x.require_grad();
                let want_loss = reference::cross_entropy_textbook(x2.clone(), y, eps).mean();
                let grads = want_loss.backward();
                let want = x2.grad(&grads).expect("logits have a gradient");
                same(
                    loss.inner(),
                    want_loss.inner(),
                    &format!("{n}x{c} eps {eps} loss"),
                );
                got.into_data()
                    .assert_approx_eq::<f32>(&want.into_data(), Tolerance::rel_abs(1e-4, 1e-7));
            }
        }
    });

    // Logits of +-1e4 (exp overflows f32 without the max shift): finite, and equal to the f64
    // value computed here.
    crate::test_device!(large_logits_are_stable, |device: Device| {
        let rows = [[1e4f32, 0.0, -1e4], [-1e4, -1e4, 9990.0], [5e3, 5e3, 5e3]];
        let x = Tensor::<2>::from_data(TensorData::new(rows.concat(), [3, 3]), &device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 2, 0], [3]), &device);
        let got = cross_entropy_rows(x.clone(), y.clone(), 0.0)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let targets = [1usize, 2, 0];
        for (i, row) in rows.iter().enumerate() {
            let max = row.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
            let lse = max
                + row
                    .iter()
                    .map(|&v| (v as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            let want = lse - row[targets[i]] as f64;
            assert!(
                (got[i] as f64 - want).abs() <= 1e-3 * want.abs().max(1.0),
                "row {i}: {} vs {want}",
                got[i]
            );
        }
        // The gradient is finite too.
        let x = x.autodiff().require_grad();
        let y = y.autodiff();
        let g = cross_entropy(x.clone(), y, 0.1).backward();
        let g = x.grad(&g).unwrap().into_data().try_to_vec::<f32>().unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    });

    // NaN and infinities: the kernel gives NaN or inf exactly where the reference does.
    crate::test_device!(non_finite_logits, |device: Device| {
        let rows = [
            [1.0f32, f32::NAN, 0.0, 2.0],
            [f32::NEG_INFINITY, 0.5, 0.0, 2.0],
            [1.0, 0.5, f32::NEG_INFINITY, 2.0],
            [f32::INFINITY, 0.5, 0.0, 2.0],
            [1.0, 0.5, 0.0, 2.0],
        ];
        let x = Tensor::<2>::from_data(TensorData::new(rows.concat(), [5, 4]), &device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3, 3], [5]), &device);
        for eps in [0.0, 0.2] {
            let (want, want_lse) = reference::cross_entropy_forward(x.clone(), y.clone(), eps);
            same(cross_entropy_rows(x.clone(), y.clone(), eps), want, "loss");
            let grad = Tensor::<1>::ones([5], &device);
            let (_, got_lse) = <Dispatch as CrossEntropyBackend>::cross_entropy_forward(
                x.clone().into_dispatch(),
                y.clone().into_dispatch(),
                eps,
            );
            same(Tensor::<1>::from_dispatch(got_lse), want_lse.clone(), "lse");
            let got = <Dispatch as CrossEntropyBackend>::cross_entropy_backward(
                x.clone().into_dispatch(),
                y.clone().into_dispatch(),
                want_lse.clone().into_dispatch(),
                grad.clone().into_dispatch(),
                eps,
            );
            let want = reference::cross_entropy_backward(x.clone(), y.clone(), want_lse, grad, eps);
            same(Tensor::<2>::from_dispatch(got), want, "gradient");
        }
    });
}
