//! Training-mode batch norm, optionally followed by ReLU, with kiln's CPU kernel on flex: two
//! passes over memory forward and two backward, the ReLU folded into both (`cpu.rs`); an
//! autodiff route so training uses them. Other devices run burn's `batch_norm_train` and
//! `relu` (`reference.rs`).

pub mod cpu;
pub mod reference;

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::{
    AutodiffBackend, Backend, Dispatch, Flex, backend_extension, tensor::FloatTensor,
};
use burn::tensor::Tensor;

use crate::is_flex_device;

/// What [`batch_norm_train`] returns.
#[derive(Debug, Clone)]
pub struct BatchNormTrain {
    /// The normalised (and rectified) batch.
    pub output: Tensor<4>,
    /// Per-channel batch mean.
    pub mean: Tensor<1>,
    /// Per-channel biased batch variance.
    pub variance: Tensor<1>,
}

/// Backend operations behind [`batch_norm_train`]; flex only.
#[backend_extension(Flex, Autodiff)]
pub trait BatchNormBackend: Backend {
    /// (output, mean, biased variance).
    fn kiln_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// (dx, dgamma, dbeta). `beta` is for the ReLU's mask, recomputed from `x`.
    #[allow(clippy::too_many_arguments)]
    fn kiln_batch_norm_backward(
        x: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

impl BatchNormBackend for Flex {
    fn kiln_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        cpu::forward(x, gamma, beta, eps, relu)
    }

    fn kiln_batch_norm_backward(
        x: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        cpu::backward(x, beta, gamma, mean, variance, grad, eps, relu)
    }
}

impl<B: Backend + BatchNormBackend, C: CheckpointStrategy> BatchNormBackend for Autodiff<B, C> {
    fn kiln_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        #[derive(Debug)]
        struct BatchNorm;

        impl<B: Backend + BatchNormBackend> Backward<B, 3> for BatchNorm {
            // x, beta, gamma, mean, variance, eps, relu.
            type State = (
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                f64,
                bool,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (x, beta, gamma, mean, variance, eps, relu) = ops.state;
                let [node_x, node_gamma, node_beta] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (dx, dgamma, dbeta) =
                    B::kiln_batch_norm_backward(x, beta, gamma, mean, variance, grad, eps, relu);
                for (node, g) in [(node_x, dx), (node_gamma, dgamma), (node_beta, dbeta)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        let nodes = [x.node(), gamma.node(), beta.node()];
        let (x, gamma, beta) = (
            x.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
        );
        let (output, mean, variance) =
            B::kiln_batch_norm(x.clone(), gamma.clone(), beta.clone(), eps, relu);
        let state = (x, beta, gamma, mean.clone(), variance.clone(), eps, relu);
        let output = match BatchNorm.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(state, output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        };
        (
            output,
            <Self as AutodiffBackend>::from_inner(mean),
            <Self as AutodiffBackend>::from_inner(variance),
        )
    }

    fn kiln_batch_norm_backward(
        x: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // Called directly only by someone differentiating by hand: the results are constants.
        let (dx, dgamma, dbeta) = B::kiln_batch_norm_backward(
            x.into_primitive(),
            beta.into_primitive(),
            gamma.into_primitive(),
            mean.into_primitive(),
            variance.into_primitive(),
            grad.into_primitive(),
            eps,
            relu,
        );
        (
            <Self as AutodiffBackend>::from_inner(dx),
            <Self as AutodiffBackend>::from_inner(dgamma),
            <Self as AutodiffBackend>::from_inner(dbeta),
        )
    }
}

/// Training-mode batch norm of `x` `[N, C, H, W]` with the batch's statistics (PyTorch's
/// `BatchNorm2d` in train mode), followed by ReLU when `relu`: kiln's two-pass kernel on flex
/// (differentiable with respect to `x`, `gamma` and `beta`), burn's ops elsewhere. The running
/// statistics are the caller's to update from the returned mean and biased variance.
pub fn batch_norm_train(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    eps: f64,
    relu: bool,
) -> BatchNormTrain {
    if !is_flex_device(&x.device()) {
        return reference::batch_norm_train(x, gamma, beta, eps, relu);
    }
    let [_, c, _, _] = x.dims();
    assert_eq!(gamma.dims()[0], c, "batch_norm: one gamma per channel");
    assert_eq!(beta.dims()[0], c, "batch_norm: one beta per channel");
    let (output, mean, variance) = <Dispatch as BatchNormBackend>::kiln_batch_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        eps,
        relu,
    );
    BatchNormTrain {
        output: Tensor::from_dispatch(output),
        mean: Tensor::from_dispatch(mean),
        variance: Tensor::from_dispatch(variance),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tolerance};

    /// Output, statistics and the three gradients against burn's ops and autodiff.
    fn check(shape: [usize; 4], relu: bool, offset: f64, device: &Device) {
        let device = device.clone().autodiff();
        let [_, c, _, _] = shape;
        let x = Tensor::<4>::random(shape, Distribution::Normal(offset, 2.0), &device);
        let gamma = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.5), &device);
        let beta = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.5), &device);
        let run = |f: fn(Tensor<4>, Tensor<1>, Tensor<1>, f64, bool) -> BatchNormTrain| {
            let (x, g, b) = (
                x.clone().require_grad(),
                gamma.clone().require_grad(),
                beta.clone().require_grad(),
            );
            let r = f(x.clone(), g.clone(), b.clone(), 1e-5, relu);
            let pattern = r
                .output
                .clone()
                .inner()
                .ones_like()
                .cumsum(3)
                .sin()
                .autodiff();
            let grads = (r.output.clone() * pattern).sum().backward();
            [
                r.output.inner().flatten::<1>(0, 3),
                r.mean.inner(),
                r.variance.inner(),
                x.grad(&grads).unwrap().flatten::<1>(0, 3),
                g.grad(&grads).unwrap(),
                b.grad(&grads).unwrap(),
            ]
        };
        let got = run(batch_norm_train);
        let want = run(reference::batch_norm_train);
        for (i, (g, w)) in got.into_iter().zip(want).enumerate() {
            let what = ["output", "mean", "variance", "dx", "dgamma", "dbeta"][i];
            assert_eq!(g.dims(), w.dims(), "{what} {shape:?}");
            let (g, w) = (g.into_data(), w.into_data());
            let scale = w.iter::<f32>().fold(0.0f32, |m, v| m.max(v.abs())).max(1.0);
            // Relative to the largest magnitude: sums over thousands of values differ in order.
            g.assert_approx_eq::<f32>(&w, Tolerance::rel_abs(1e-4, 1e-4 * scale));
        }
    }

    crate::test_device!(matches_burn_forward_and_gradients, |device: Device| {
        for shape in [
            [1, 1, 1, 2],
            [2, 3, 5, 7],
            [16, 64, 8, 8],
            [3, 5, 1, 1],
            [4, 32, 17, 9],
            [6, 2, 30, 31], // over 4096 values a channel: the f32 lanes flush mid-channel
        ] {
            for relu in [false, true] {
                check(shape, relu, 0.0, &device);
            }
        }
        // A large mean next to a small spread: the variance must not cancel away.
        check([4, 8, 6, 6], true, 100.0, &device);
    });
}
