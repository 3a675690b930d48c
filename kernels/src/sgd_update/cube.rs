//! The fused SGD step as cubecl kernels: one pass reads param, grad (and the momentum buffer)
//! and writes the new param (and buffer). Outputs overwrite their input buffers when burn says
//! the buffer is uniquely owned (`can_mut`), the same in-place rule burn's own element-wise
//! kernels follow; otherwise they go to fresh allocations. Never an extra copy pass.
//!
//! Three kernels instead of one with dummy arguments: plain (momentum == 0), first momentum
//! step (no buffer to read, the buffer is written fresh), and later momentum steps.

use burn::backend::TensorMetadata;
use burn::backend::cubecl::dtype_to_storage_type;
use burn_cubecl::{kernel::into_contiguous, ops::numeric::empty_device_dtype, tensor::CubeTensor};
use cubecl::{
    calculate_cube_count_elemwise,
    prelude::*,
    std::tensor::layout::linear::{LinearView, LinearViewLaunch, LinearViewMut},
};

use super::SgdParams;
use crate::cube::address_type;

// ---------------------------------------------------------------------------------------------
// Kernels. One unit handles one `Vector<F, N>` (N elements). `N` is a launch argument (the
// `#[cube(launch*)]` macro turns every `N: Size` generic into a leading `usize` argument), `F`
// is fixed by the trailing `#[define(F)]` dtype argument.
// ---------------------------------------------------------------------------------------------

#[cube(launch_unchecked, address_type = "dynamic")]
fn sgd_plain_kernel<F: Float, N: Size>(
    param: LinearView<'_, Vector<F, N>>,
    grad: LinearView<'_, Vector<F, N>>,
    mut param_out: LinearViewMut<'_, Vector<F, N>>,
    lr: InputScalar,
    weight_decay: InputScalar,
    #[comptime] has_weight_decay: bool,
    #[define(F)] _dtype: ElemType,
) {
    if !param_out.is_in_bounds(ABSOLUTE_POS) {
        terminate!();
    }
    let p = param.read(ABSOLUTE_POS);
    let g = grad.read(ABSOLUTE_POS);
    let d = if has_weight_decay {
        g + p * Vector::new(weight_decay.get::<F>())
    } else {
        g
    };
    param_out.write(ABSOLUTE_POS, p - d * Vector::new(lr.get::<F>()));
}

#[cube(launch_unchecked, address_type = "dynamic")]
fn sgd_momentum_first_kernel<F: Float, N: Size>(
    param: LinearView<'_, Vector<F, N>>,
    grad: LinearView<'_, Vector<F, N>>,
    mut param_out: LinearViewMut<'_, Vector<F, N>>,
    mut buf_out: LinearViewMut<'_, Vector<F, N>>,
    lr: InputScalar,
    momentum: InputScalar,
    weight_decay: InputScalar,
    #[comptime] has_weight_decay: bool,
    #[comptime] nesterov: bool,
    #[define(F)] _dtype: ElemType,
) {
    if !param_out.is_in_bounds(ABSOLUTE_POS) {
        terminate!();
    }
    let p = param.read(ABSOLUTE_POS);
    let g = grad.read(ABSOLUTE_POS);
    let d = if has_weight_decay {
        g + p * Vector::new(weight_decay.get::<F>())
    } else {
        g
    };
    // First step: buf = d (torch clones d into the fresh buffer).
    let step = if nesterov {
        d + d * Vector::new(momentum.get::<F>())
    } else {
        d
    };
    buf_out.write(ABSOLUTE_POS, d);
    param_out.write(ABSOLUTE_POS, p - step * Vector::new(lr.get::<F>()));
}

#[cube(launch_unchecked, address_type = "dynamic")]
fn sgd_momentum_kernel<F: Float, N: Size>(
    param: LinearView<'_, Vector<F, N>>,
    grad: LinearView<'_, Vector<F, N>>,
    buf: LinearView<'_, Vector<F, N>>,
    mut param_out: LinearViewMut<'_, Vector<F, N>>,
    mut buf_out: LinearViewMut<'_, Vector<F, N>>,
    lr: InputScalar,
    momentum: InputScalar,
    one_minus_dampening: InputScalar,
    weight_decay: InputScalar,
    #[comptime] has_weight_decay: bool,
    #[comptime] nesterov: bool,
    #[define(F)] _dtype: ElemType,
) {
    if !param_out.is_in_bounds(ABSOLUTE_POS) {
        terminate!();
    }
    let p = param.read(ABSOLUTE_POS);
    let g = grad.read(ABSOLUTE_POS);
    let b = buf.read(ABSOLUTE_POS);
    let m = Vector::new(momentum.get::<F>());
    let d = if has_weight_decay {
        g + p * Vector::new(weight_decay.get::<F>())
    } else {
        g
    };
    // Same order as the reference: buf * momentum + d * (1 - dampening).
    let b_new = b * m + d * Vector::new(one_minus_dampening.get::<F>());
    let step = if nesterov { d + b_new * m } else { b_new };
    // Read everything before writing: the outputs may alias `param` / `buf`.
    buf_out.write(ABSOLUTE_POS, b_new);
    param_out.write(ABSOLUTE_POS, p - step * Vector::new(lr.get::<F>()));
}

// ---------------------------------------------------------------------------------------------
// Launch helpers.
// ---------------------------------------------------------------------------------------------

/// What every launch starts with: the parameter made contiguous, where the new parameter goes
/// (the parameter itself when burn holds its only reference), the launch geometry (every
/// tensor is contiguous with the parameter's length, so one vector size fits all) and the
/// element type.
struct ParamLaunch {
    param: CubeTensor,
    in_place: bool,
    out: CubeTensor,
    vector_size: usize,
    cube_dim: CubeDim,
    cube_count: CubeCount,
    elem: ElemType,
}

impl ParamLaunch {
    fn new(param: CubeTensor) -> Self {
        let param = into_contiguous(param);
        // Decide aliasing before cloning: every clone bumps the handle's reference count.
        let in_place = writable(&param);
        let out = output_tensor(&param, in_place);
        let num_elems = param.meta.num_elements();
        // `burn_cubecl::ops::max_vector_size` is pub(crate); for contiguous same-length
        // tensors it reduces to "largest io-optimized size dividing the length".
        let vector_size = param
            .client
            .io_optimized_vector_sizes(param.dtype.size())
            .filter(|&v| num_elems.is_multiple_of(v))
            .max()
            .unwrap_or(1);
        let working_units = num_elems / vector_size;
        let cube_dim = CubeDim::new(&param.client, working_units);
        let cube_count = calculate_cube_count_elemwise(&param.client, working_units, cube_dim);
        let elem = dtype_to_storage_type(param.dtype);
        Self {
            param,
            in_place,
            out,
            vector_size,
            cube_dim,
            cube_count,
            elem,
        }
    }

    fn is_empty(&self) -> bool {
        self.param.meta.num_elements() == 0
    }

    /// The new parameter's argument: an alias of input 0 (the parameter) when in place.
    fn out_arg(&self) -> LinearViewLaunch {
        if self.in_place {
            self.param.as_linear_view_alias(0)
        } else {
            self.out.clone().into_linear_view()
        }
    }

    fn scalar(&self, value: f64) -> InputScalar {
        InputScalar::new(value, self.elem)
    }
}

/// Contiguous (and un-tiled) float input, checked against `param`.
fn prepare(tensor: CubeTensor, param: &CubeTensor, what: &str) -> CubeTensor {
    let tensor = into_contiguous(tensor);
    tensor.assert_is_on_same_device(param);
    assert_eq!(
        tensor.shape(),
        param.shape(),
        "sgd_update: {what} shape differs from param"
    );
    assert_eq!(
        tensor.dtype, param.dtype,
        "sgd_update: {what} dtype differs from param"
    );
    tensor
}

/// The tensor a kernel writes: `input` itself when its buffer is uniquely owned (decided by the
/// caller before any clone), else a fresh allocation of the same shape and dtype.
fn output_tensor(input: &CubeTensor, in_place: bool) -> CubeTensor {
    if in_place {
        input.clone()
    } else {
        empty_device_dtype(
            input.client.clone(),
            input.device.clone(),
            input.shape(),
            input.dtype,
        )
    }
}

/// Writable only if burn holds the sole reference (`can_mut`) and the layout has no overlap.
fn writable(t: &CubeTensor) -> bool {
    t.can_mut() && t.is_nonoverlapping()
}

// ---------------------------------------------------------------------------------------------
// Entry points, called by the `SgdBackend` impl for `CubeBackend` in mod.rs.
// ---------------------------------------------------------------------------------------------

/// momentum == 0.
pub fn sgd_plain(param: CubeTensor, grad: CubeTensor, s: SgdParams) -> CubeTensor {
    let l = ParamLaunch::new(param);
    let grad = prepare(grad, &l.param, "grad");
    if l.is_empty() {
        return l.param;
    }
    let addr = address_type(&[&l.param, &grad, &l.out]);
    // Input positions for aliasing: param = 0, grad = 1 (registration order of the inputs).
    let out_arg = l.out_arg();
    unsafe {
        sgd_plain_kernel::launch_unchecked(
            &l.param.client,
            l.cube_count.clone(),
            l.cube_dim,
            addr,
            l.vector_size,
            l.param.clone().into_linear_view(),
            grad.into_linear_view(),
            out_arg,
            l.scalar(s.lr),
            l.scalar(s.weight_decay),
            s.weight_decay != 0.0,
            l.elem,
        );
    }
    l.out
}

/// momentum != 0, first step: the buffer is created (= d).
pub fn sgd_momentum_first(
    param: CubeTensor,
    grad: CubeTensor,
    s: SgdParams,
) -> (CubeTensor, CubeTensor) {
    let l = ParamLaunch::new(param);
    let grad = prepare(grad, &l.param, "grad");
    // The new buffer always gets its own allocation (contiguous: 1-D, fresh).
    let buf_out = output_tensor(&l.param, false);
    if l.is_empty() {
        return (l.param, buf_out);
    }
    let addr = address_type(&[&l.param, &grad, &l.out, &buf_out]);
    let out_arg = l.out_arg();
    unsafe {
        sgd_momentum_first_kernel::launch_unchecked(
            &l.param.client,
            l.cube_count.clone(),
            l.cube_dim,
            addr,
            l.vector_size,
            l.param.clone().into_linear_view(),
            grad.into_linear_view(),
            out_arg,
            buf_out.clone().into_linear_view(),
            l.scalar(s.lr),
            l.scalar(s.momentum),
            l.scalar(s.weight_decay),
            s.weight_decay != 0.0,
            s.nesterov,
            l.elem,
        );
    }
    (l.out, buf_out)
}

/// momentum != 0, later steps: reads and rewrites the buffer.
pub fn sgd_momentum(
    param: CubeTensor,
    grad: CubeTensor,
    buf: CubeTensor,
    s: SgdParams,
) -> (CubeTensor, CubeTensor) {
    let l = ParamLaunch::new(param);
    let grad = prepare(grad, &l.param, "grad");
    let buf = prepare(buf, &l.param, "momentum buffer");
    if l.is_empty() {
        return (l.param, buf);
    }
    let buf_in_place = writable(&buf);
    let buf_out = output_tensor(&buf, buf_in_place);
    let addr = address_type(&[&l.param, &grad, &buf, &l.out, &buf_out]);
    // Input positions: param = 0, grad = 1, buf = 2.
    let out_arg = l.out_arg();
    let buf_out_arg = if buf_in_place {
        buf.as_linear_view_alias(2)
    } else {
        buf_out.clone().into_linear_view()
    };
    unsafe {
        sgd_momentum_kernel::launch_unchecked(
            &l.param.client,
            l.cube_count.clone(),
            l.cube_dim,
            addr,
            l.vector_size,
            l.param.clone().into_linear_view(),
            grad.into_linear_view(),
            buf.into_linear_view(),
            out_arg,
            buf_out_arg,
            l.scalar(s.lr),
            l.scalar(s.momentum),
            l.scalar(1.0 - s.dampening),
            l.scalar(s.weight_decay),
            s.weight_decay != 0.0,
            s.nesterov,
            l.elem,
        );
    }
    (l.out, buf_out)
}
