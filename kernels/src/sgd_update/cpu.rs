//! The SGD step on the CPU: one pass over parameter, gradient and momentum buffer on rayon's
//! pool, where the reference makes about seven (a scaled copy and a sum per term), each
//! reading and writing the whole parameter. The arithmetic is the reference's, in its order and
//! in f32 with the hyper-parameters rounded to f32 as flex's scalar ops round them, so training
//! on flex gives the same bits as before.

use burn::backend::TensorMetadata;
use rayon::prelude::*;

use super::SgdParams;
use crate::flex::{FlexTensor, f32_slice, filled, from_vec, unfilled};

/// Values a rayon task updates: big enough that the split costs nothing next to the work, and
/// small parameters (batch norm's) run on the calling thread.
const CHUNK: usize = 1 << 15;

/// The hyper-parameters as the reference's scalar multiplications apply them.
#[derive(Clone, Copy)]
struct Factors {
    lr: f32,
    momentum: f32,
    undamped: f32,
    weight_decay: Option<f32>,
    nesterov: bool,
}

impl Factors {
    fn new(p: &SgdParams) -> Self {
        Self {
            lr: p.lr as f32,
            momentum: p.momentum as f32,
            undamped: (1.0 - p.dampening) as f32,
            weight_decay: (p.weight_decay != 0.0).then_some(p.weight_decay as f32),
            nesterov: p.nesterov,
        }
    }

    /// The gradient with weight decay.
    fn decayed(self, p: f32, g: f32) -> f32 {
        match self.weight_decay {
            Some(wd) => g + p * wd,
            None => g,
        }
    }

    /// The new buffer and parameter from the parameter, the decayed gradient `d` and the old
    /// buffer (`None` on the first step, when the buffer starts as `d`).
    fn momentum_step(self, p: f32, d: f32, b: Option<f32>) -> (f32, f32) {
        let b = match b {
            Some(b) => b * self.momentum + d * self.undamped,
            None => d,
        };
        let d = if self.nesterov {
            d + b * self.momentum
        } else {
            b
        };
        (p - d * self.lr, b)
    }
}

/// One step of a flat parameter; see [`super::reference::sgd_update`]. Returns the new
/// parameter and, when momentum is non-zero, the new buffer.
pub fn sgd_update(
    param: FlexTensor,
    grad: FlexTensor,
    buf: Option<FlexTensor>,
    params: &SgdParams,
) -> (FlexTensor, Option<FlexTensor>) {
    let shape = param.shape().to_vec();
    let (p, g) = (
        f32_slice(&param, "sgd_update"),
        f32_slice(&grad, "sgd_update"),
    );
    assert_eq!(
        p.len(),
        g.len(),
        "sgd_update: parameter and gradient differ in size"
    );
    let f = Factors::new(params);
    let mut new_p = unfilled(p.len());
    if params.momentum == 0.0 {
        new_p
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, out)| {
                let at = i * CHUNK..i * CHUNK + out.len();
                for (o, (&p, &g)) in out.iter_mut().zip(p[at.clone()].iter().zip(&g[at])) {
                    o.write(p - f.decayed(p, g) * f.lr);
                }
            });
        // SAFETY: the chunks cover the buffer and every element was written.
        return (from_vec(unsafe { filled(new_p) }, &shape), None);
    }
    let b = buf.as_ref().map(|b| f32_slice(b, "sgd_update"));
    if let Some(b) = &b {
        assert_eq!(
            b.len(),
            p.len(),
            "sgd_update: buffer and parameter differ in size"
        );
    }
    let mut new_b = unfilled(p.len());
    new_p
        .par_chunks_mut(CHUNK)
        .zip(new_b.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(i, (out_p, out_b))| {
            let at = i * CHUNK..i * CHUNK + out_p.len();
            let (p, g) = (&p[at.clone()], &g[at.clone()]);
            let b = b.as_ref().map(|b| &b[at]);
            for (j, (op, ob)) in out_p.iter_mut().zip(out_b.iter_mut()).enumerate() {
                let d = f.decayed(p[j], g[j]);
                let (np, nb) = f.momentum_step(p[j], d, b.map(|b| b[j]));
                op.write(np);
                ob.write(nb);
            }
        });
    // SAFETY: the chunks cover both buffers and every element of each was written.
    let (new_p, new_b) = unsafe { (filled(new_p), filled(new_b)) };
    (from_vec(new_p, &shape), Some(from_vec(new_b, &shape)))
}
