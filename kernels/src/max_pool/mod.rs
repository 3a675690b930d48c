//! 2-D max pooling (the ResNet and DenseNet stems' 3x3, stride-2 pool) with kiln's CPU kernel
//! on flex (`cpu.rs`), with an autodiff route so training uses it. Other devices run burn's
//! `max_pool2d` (`reference.rs`).

pub mod cpu;
pub mod reference;

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::{
    AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::Tensor;

use crate::is_flex_device;

/// Window, step and padding of a max pooling (dilation 1, output size rounded down, as
/// torchvision's models use it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2dOptions {
    /// Window in (height, width).
    pub kernel: [usize; 2],
    /// Step in (height, width).
    pub stride: [usize; 2],
    /// Padding on both sides of (height, width); it never wins the maximum.
    pub padding: [usize; 2],
}

fn dims4<T: TensorMetadata>(t: &T) -> [usize; 4] {
    let shape = t.shape();
    assert_eq!(shape.num_dims(), 4, "max_pool2d: input is [N, C, H, W]");
    [shape[0], shape[1], shape[2], shape[3]]
}

/// Backend operations behind [`max_pool2d`]; flex only.
#[backend_extension(Flex, Autodiff)]
pub trait MaxPoolBackend: Backend {
    /// The pooled `x`, and where in its input plane each maximum lies.
    fn kiln_max_pool2d(
        x: FloatTensor<Self>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> (FloatTensor<Self>, IntTensor<Self>);

    /// Gradient with respect to the input `[N, C, H, W]`, given the forward's positions and the
    /// output gradient.
    fn kiln_max_pool2d_backward(
        positions: IntTensor<Self>,
        grad: FloatTensor<Self>,
        input_shape: [usize; 4],
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self>;
}

impl MaxPoolBackend for Flex {
    fn kiln_max_pool2d(
        x: FloatTensor<Self>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        let options = MaxPool2dOptions {
            kernel,
            stride,
            padding,
        };
        let g = cpu::Geometry::new(dims4(&x), options);
        cpu::forward(x, &g)
    }

    fn kiln_max_pool2d_backward(
        positions: IntTensor<Self>,
        grad: FloatTensor<Self>,
        input_shape: [usize; 4],
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self> {
        let options = MaxPool2dOptions {
            kernel,
            stride,
            padding,
        };
        let g = cpu::Geometry::new(input_shape, options);
        cpu::backward(positions, grad, &g)
    }
}

impl<B: Backend + MaxPoolBackend, C: CheckpointStrategy> MaxPoolBackend for Autodiff<B, C> {
    fn kiln_max_pool2d(
        x: FloatTensor<Self>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        #[derive(Debug)]
        struct MaxPool;

        impl<B: Backend + MaxPoolBackend> Backward<B, 1> for MaxPool {
            // positions, input shape, options.
            type State = (IntTensor<B>, [usize; 4], MaxPool2dOptions);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (positions, shape, o) = ops.state;
                let [node_x] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                if let Some(node) = node_x {
                    let dx = B::kiln_max_pool2d_backward(
                        positions, grad, shape, o.kernel, o.stride, o.padding,
                    );
                    grads.register::<B>(node.id, dx);
                }
            }
        }

        let nodes = [x.node()];
        let x = x.into_primitive();
        let shape = dims4(&x);
        let (out, positions) = B::kiln_max_pool2d(x, kernel, stride, padding);
        let options = MaxPool2dOptions {
            kernel,
            stride,
            padding,
        };
        let out = match MaxPool.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((positions.clone(), shape, options), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        (out, positions)
    }

    fn kiln_max_pool2d_backward(
        positions: IntTensor<Self>,
        grad: FloatTensor<Self>,
        input_shape: [usize; 4],
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self> {
        // Called directly only by someone differentiating by hand: the result is a constant.
        <Self as AutodiffBackend>::from_inner(B::kiln_max_pool2d_backward(
            positions,
            grad.into_primitive(),
            input_shape,
            kernel,
            stride,
            padding,
        ))
    }
}

/// Max pooling of `x` `[N, C, H, W]` (PyTorch's `max_pool2d` with dilation 1 and floor mode):
/// kiln's CPU kernel on flex (differentiable through autodiff), burn's `max_pool2d` elsewhere.
///
/// # Panics
/// When a window is empty, larger than the padded input, or padding is more than half of it.
pub fn max_pool2d(x: Tensor<4>, options: MaxPool2dOptions) -> Tensor<4> {
    if !is_flex_device(&x.device()) {
        return reference::max_pool2d(x, options);
    }
    // Checked up front so a bad shape panics here rather than inside the backward pass.
    cpu::Geometry::new(x.dims(), options);
    let (out, _positions) = <Dispatch as MaxPoolBackend>::kiln_max_pool2d(
        x.into_dispatch(),
        options.kernel,
        options.stride,
        options.padding,
    );
    Tensor::from_dispatch(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tolerance};

    /// Output and input gradient against burn's ops and autodiff.
    fn check(shape: [usize; 4], options: MaxPool2dOptions, device: &Device) {
        let device = device.clone().autodiff();
        let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let run = |f: fn(Tensor<4>, MaxPool2dOptions) -> Tensor<4>| {
            let x = x.clone().require_grad();
            let out = f(x.clone(), options);
            let pattern = out.clone().inner().ones_like().cumsum(3).sin().autodiff();
            let grads = (out.clone() * pattern).sum().backward();
            [
                out.inner().flatten::<1>(0, 3),
                x.grad(&grads).unwrap().flatten::<1>(0, 3),
            ]
        };
        let got = run(max_pool2d);
        let want = run(reference::max_pool2d);
        for (what, (g, w)) in ["output", "dx"].into_iter().zip(got.into_iter().zip(want)) {
            assert_eq!(g.dims(), w.dims(), "{what} {shape:?} {options:?}");
            g.into_data()
                .assert_approx_eq::<f32>(&w.into_data(), Tolerance::rel_abs(1e-6, 1e-6));
        }
    }

    fn options(k: usize, s: usize, p: usize) -> MaxPool2dOptions {
        MaxPool2dOptions {
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
        }
    }

    crate::test_device!(matches_burn_forward_and_gradient, |device: Device| {
        // The ResNet/DenseNet stem (3x3, stride 2, padding 1) at 64 and odd sizes, overlapping
        // and disjoint windows, batch 1, and a window as large as the padded input.
        for (shape, o) in [
            ([2, 3, 32, 32], options(3, 2, 1)),
            ([1, 5, 17, 9], options(3, 2, 1)),
            ([3, 2, 7, 8], options(2, 2, 0)),
            ([2, 4, 6, 5], options(3, 1, 1)),
            ([1, 1, 1, 1], options(1, 1, 0)),
            ([2, 3, 4, 4], options(4, 3, 2)),
            ([1, 2, 5, 6], options(3, 2, 0)),
        ] {
            check(shape, o, &device);
        }
        let mut o = options(3, 2, 1);
        o.kernel = [3, 2];
        o.stride = [1, 2];
        o.padding = [1, 0];
        check([2, 2, 9, 7], o, &device);
    });

    #[test]
    fn the_gradient_goes_to_the_first_maximum_of_a_window() {
        // Ties: PyTorch routes the gradient to the first maximum in row-major window order.
        // The first window's 3s tie at (0, 1) and (1, 0): row-major order picks (0, 1), a
        // column-first reduction would pick (1, 0).
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::from_floats([[[[1.0, 3.0, 2.0], [3.0, 0.0, 4.0]]]], &device)
            .require_grad();
        let out = max_pool2d(x.clone(), options(2, 1, 0));
        assert_eq!(out.to_data().try_to_vec::<f32>().unwrap(), [3.0, 4.0]);
        let grads = out.sum().backward();
        let dx = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(dx, [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    }
}
