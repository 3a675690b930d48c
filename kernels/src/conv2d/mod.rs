//! conv2d (no bias, as every torchvision ResNet/DenseNet convolution) with kiln's CPU kernel on
//! flex: forward, input gradient and weight gradient as whole-batch GEMMs (`cpu.rs`), with an
//! autodiff route so training uses all three. Other devices run burn's `conv2d`
//! (`reference.rs`).

pub mod cpu;
pub mod reference;

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::{
    Backend, Dispatch, Flex, TensorMetadata, backend_extension, tensor::FloatTensor,
};
use burn::tensor::Tensor;

use crate::is_flex_device;

/// Stride, padding (symmetric, per side), dilation and groups of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dOptions {
    /// Step in (height, width).
    pub stride: [usize; 2],
    /// Zero padding added on both sides of (height, width).
    pub padding: [usize; 2],
    /// Spacing between kernel taps in (height, width).
    pub dilation: [usize; 2],
    /// Channel groups.
    pub groups: usize,
}

impl Conv2dOptions {
    fn geometry(&self, x: [usize; 4], weight: [usize; 4]) -> cpu::Geometry {
        cpu::Geometry::new(
            x,
            weight,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )
    }
}

fn dims4<T: TensorMetadata>(t: &T) -> [usize; 4] {
    let shape = t.shape();
    assert_eq!(shape.num_dims(), 4, "conv2d: tensors are 4-D");
    [shape[0], shape[1], shape[2], shape[3]]
}

/// Backend operations behind [`conv2d`]; flex only (elsewhere [`conv2d`] runs burn's).
#[backend_extension(Flex, Autodiff)]
pub trait Conv2dBackend: Backend {
    /// The convolution of `x` with `weight`.
    fn kiln_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
    ) -> FloatTensor<Self>;

    /// Gradient with respect to the weight, given the input and the output gradient.
    fn kiln_conv2d_weight_grad(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        weight_shape: [usize; 4],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
    ) -> FloatTensor<Self>;

    /// Gradient with respect to the input, given the weight and the output gradient.
    fn kiln_conv2d_input_grad(
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        input_shape: [usize; 4],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
    ) -> FloatTensor<Self>;
}

impl Conv2dBackend for Flex {
    fn kiln_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
    ) -> FloatTensor<Self> {
        let g = cpu::Geometry::new(dims4(&x), dims4(&weight), stride, padding, dilation, groups);
        cpu::conv2d(x, weight, &g)
    }

    fn kiln_conv2d_weight_grad(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        weight_shape: [usize; 4],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
    ) -> FloatTensor<Self> {
        let g = cpu::Geometry::new(dims4(&x), weight_shape, stride, padding, dilation, groups);
        cpu::conv2d_weight_grad(x, grad, &g)
    }

    fn kiln_conv2d_input_grad(
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        input_shape: [usize; 4],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
    ) -> FloatTensor<Self> {
        let g = cpu::Geometry::new(
            input_shape,
            dims4(&weight),
            stride,
            padding,
            dilation,
            groups,
        );
        cpu::conv2d_input_grad(weight, grad, &g)
    }
}

impl<B: Backend + Conv2dBackend, C: CheckpointStrategy> Conv2dBackend for Autodiff<B, C> {
    fn kiln_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Conv2d;

        impl<B: Backend + Conv2dBackend> Backward<B, 2> for Conv2d {
            // input, weight, options.
            type State = (FloatTensor<B>, FloatTensor<B>, Conv2dOptions);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (x, weight, o) = ops.state;
                let [node_x, node_w] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_shape, w_shape) = (dims4(&x), dims4(&weight));
                if let Some(node) = node_w {
                    let dw = B::kiln_conv2d_weight_grad(
                        x,
                        grad.clone(),
                        w_shape,
                        o.stride,
                        o.padding,
                        o.dilation,
                        o.groups,
                    );
                    grads.register::<B>(node.id, dw);
                }
                if let Some(node) = node_x {
                    let dx = B::kiln_conv2d_input_grad(
                        weight, grad, x_shape, o.stride, o.padding, o.dilation, o.groups,
                    );
                    grads.register::<B>(node.id, dx);
                }
            }
        }

        let nodes = [x.node(), weight.node()];
        let (x, weight) = (x.into_primitive(), weight.into_primitive());
        let out = B::kiln_conv2d(x.clone(), weight.clone(), stride, padding, dilation, groups);
        let options = Conv2dOptions {
            stride,
            padding,
            dilation,
            groups,
        };
        match Conv2d.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((x, weight, options), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn kiln_conv2d_weight_grad(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        weight_shape: [usize; 4],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
    ) -> FloatTensor<Self> {
        // Called directly only by someone differentiating by hand: the result is a constant.
        <Self as burn::backend::AutodiffBackend>::from_inner(B::kiln_conv2d_weight_grad(
            x.into_primitive(),
            grad.into_primitive(),
            weight_shape,
            stride,
            padding,
            dilation,
            groups,
        ))
    }

    fn kiln_conv2d_input_grad(
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        input_shape: [usize; 4],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
    ) -> FloatTensor<Self> {
        <Self as burn::backend::AutodiffBackend>::from_inner(B::kiln_conv2d_input_grad(
            weight.into_primitive(),
            grad.into_primitive(),
            input_shape,
            stride,
            padding,
            dilation,
            groups,
        ))
    }
}

/// The convolution of `x` `[N, C, H, W]` with `weight` `[Co, C / groups, KH, KW]`, no bias:
/// kiln's whole-batch GEMM kernel on flex (differentiable through autodiff), burn's `conv2d`
/// elsewhere.
///
/// # Panics
/// When the shapes and options do not fit together.
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, options: Conv2dOptions) -> Tensor<4> {
    if !is_flex_device(&x.device()) {
        return reference::conv2d(x, weight, options);
    }
    // Checked up front so a bad shape panics here rather than inside the backward pass.
    options.geometry(x.dims(), weight.dims());
    let out = <Dispatch as Conv2dBackend>::kiln_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        options.stride,
        options.padding,
        options.dilation,
        options.groups,
    );
    Tensor::from_dispatch(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tolerance};

    struct Case {
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        co: usize,
        k: [usize; 2],
        options: Conv2dOptions,
    }

    #[allow(clippy::too_many_arguments)]
    fn case(
        n: usize,
        c: usize,
        hw: [usize; 2],
        co: usize,
        k: usize,
        s: usize,
        p: usize,
        g: usize,
    ) -> Case {
        Case {
            n,
            c,
            h: hw[0],
            w: hw[1],
            co,
            k: [k, k],
            options: Conv2dOptions {
                stride: [s, s],
                padding: [p, p],
                dilation: [1, 1],
                groups: g,
            },
        }
    }

    /// Forward, input gradient and weight gradient against burn's conv2d and its autodiff (on
    /// flex the kernel under test; elsewhere the routing to burn's own).
    fn check(c: &Case, device: &Device) {
        let device = device.clone().autodiff();
        let x = Tensor::<4>::random(
            [c.n, c.c, c.h, c.w],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let w = Tensor::<4>::random(
            [c.co, c.c / c.options.groups, c.k[0], c.k[1]],
            Distribution::Normal(0.0, 0.5),
            &device,
        );
        let run = |f: fn(Tensor<4>, Tensor<4>, Conv2dOptions) -> Tensor<4>| {
            let (x, w) = (x.clone().require_grad(), w.clone().require_grad());
            let out = f(x.clone(), w.clone(), c.options);
            // A non-uniform output gradient: sum of out * (a fixed pattern).
            let pattern = out.clone().inner().ones_like().cumsum(3).sin().autodiff();
            let grads = (out.clone() * pattern).sum().backward();
            (
                out.inner(),
                x.grad(&grads).unwrap(),
                w.grad(&grads).unwrap(),
            )
        };
        let (out, dx, dw) = run(conv2d);
        let (want_out, want_dx, want_dw) = run(reference::conv2d);
        let what = format!(
            "n {} c {} {}x{} -> co {} k {:?} {:?}",
            c.n, c.c, c.h, c.w, c.co, c.k, c.options
        );
        let tol = Tolerance::rel_abs(1e-4, 1e-4);
        assert_eq!(out.dims(), want_out.dims(), "{what}");
        out.into_data()
            .assert_approx_eq::<f32>(&want_out.into_data(), tol);
        dx.into_data()
            .assert_approx_eq::<f32>(&want_dx.into_data(), tol);
        dw.into_data()
            .assert_approx_eq::<f32>(&want_dw.into_data(), tol);
    }

    // Every kernel/stride/padding/group case the 13 architectures use, at batch 1 and odd sizes.
    crate::test_device!(architecture_shapes_match_burn, |device: Device| {
        for c in [
            case(2, 3, [33, 31], 8, 7, 2, 3, 1),  // stem
            case(1, 16, [9, 9], 16, 3, 1, 1, 1),  // basic block
            case(3, 16, [9, 7], 32, 3, 2, 1, 1),  // downsampling 3x3
            case(2, 16, [9, 7], 32, 1, 2, 0, 1),  // downsample shortcut
            case(2, 24, [5, 5], 12, 1, 1, 0, 1),  // bottleneck / dense 1x1
            case(1, 32, [2, 2], 32, 3, 1, 1, 1),  // last stage at 64 px
            case(2, 64, [6, 5], 64, 3, 1, 1, 32), // ResNeXt grouped 3x3
            case(2, 64, [7, 7], 64, 3, 2, 1, 32), // ResNeXt grouped, strided
            case(1, 8, [4, 4], 8, 3, 1, 1, 8),    // depthwise
            case(2, 6, [5, 6], 4, 3, 1, 0, 2),    // no padding, 2 groups
            case(1, 1, [1, 1], 1, 1, 1, 0, 1),    // one of everything
            // Image by image (64+ output pixels), batch 1 and more images than threads:
            case(3, 24, [10, 9], 12, 1, 1, 0, 1), // pointwise, no im2col
            case(2, 8, [17, 17], 16, 1, 2, 0, 1), // strided 1x1 shortcut
            case(5, 12, [12, 11], 8, 3, 1, 1, 1), // 3x3, five images over the threads
            case(4, 64, [8, 8], 64, 3, 1, 1, 32), // grouped
            case(3, 16, [9, 8], 16, 1, 1, 0, 4),  // grouped pointwise
            case(3, 16, [9, 9], 4, 3, 1, 1, 1),   // dense 3x3, input gradient as a forward
            case(2, 16, [9, 9], 8, 3, 1, 1, 2),   // grouped, fewer outputs than inputs
            case(2, 16, [6, 5], 4, 3, 1, 1, 1),   // the same, batched
            // Narrow GEMMs (at most 15 output pixels in the batch), tails of rows and k:
            case(1, 256, [2, 2], 72, 3, 1, 1, 1), // a last stage at 64 px, batch 1: k 2304
            case(3, 40, [2, 2], 13, 3, 1, 1, 1),  // 12 columns, k 360, 13 rows
            case(1, 64, [4, 4], 30, 3, 2, 1, 1),  // strided, 4 columns
        ] {
            check(&c, &device);
        }
    });

    // Randomised shapes from a fixed seed: kernel 1..=7, stride 1..=3, padding 0..=3,
    // dilation 1..=2, groups 1/2/4. 400 on flex (a fraction of a second; they found taps that
    // read only padding), 24 through burn's own kernels elsewhere.
    crate::test_device!(random_shapes_match_burn, |device: Device| {
        let cases = if is_flex_device(&device) { 400 } else { 24 };
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut done = 0;
        while done < cases {
            let groups = [1, 2, 4][next(3)];
            let k = [1, 2, 3, 5, 7][next(5)];
            let dilation = 1 + next(2);
            let (h, w) = (1 + next(12), 1 + next(12));
            let padding = next(4);
            let span = dilation * (k - 1) + 1;
            if h + 2 * padding < span || w + 2 * padding < span {
                continue;
            }
            let mut c = case(
                1 + next(3),
                groups * (1 + next(4)),
                [h, w],
                groups * (1 + next(4)),
                k,
                1 + next(3),
                padding,
                groups,
            );
            c.options.dilation = [dilation, dilation];
            check(&c, &device);
            done += 1;
        }
    });

    #[test]
    fn the_kernel_runs_on_flex_only() {
        assert!(is_flex_device(&Device::flex()));
        assert!(is_flex_device(&Device::flex().autodiff()));
        if let Some(device) = crate::testing::wgpu() {
            assert!(!is_flex_device(&device));
        }
    }
}
