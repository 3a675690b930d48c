//! Dynamic loss scaling for f16 training, as `torch.amp.GradScaler` does it: the loss is
//! multiplied by the scale before the backward so that small f16 gradients do not flush to
//! zero; the gradients are divided by it again before SGD. A step whose gradients hold an
//! infinity or a NaN is skipped and the scale halved; after 2000 clean steps in a row it is
//! doubled. Its state is part of the trainer state, so a resumed run scales as the
//! uninterrupted one would.
//!
//! Knowing whether a step overflowed means reading one number from the device each f16 step,
//! as PyTorch's `GradScaler.step` does (`found_inf.item()`); bf16 and f32 need no scaler.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use kiln_models::Model;
use serde::{Deserialize, Serialize};

/// The scale's state: what `GradScaler.state_dict()` holds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// The factor the loss is multiplied by (initially 65536).
    pub scale: f32,
    /// Clean steps since the scale last changed.
    pub growth_tracker: u32,
}

/// `GradScaler`'s defaults.
const INIT_SCALE: f32 = 65536.0;
const GROWTH_FACTOR: f32 = 2.0;
const BACKOFF_FACTOR: f32 = 0.5;
/// Clean steps in a row before the scale grows.
pub const GROWTH_INTERVAL: u32 = 2000;

impl Default for LossScaler {
    fn default() -> Self {
        Self {
            scale: INIT_SCALE,
            growth_tracker: 0,
        }
    }
}

impl LossScaler {
    /// The loss to run the backward from.
    pub fn scale_loss(&self, loss: Tensor<1>) -> Tensor<1> {
        loss.mul_scalar(self.scale)
    }

    /// Divides `model`'s gradients in `grads` by the scale. Returns them when every one is
    /// finite, ready for SGD; `None` when the step must be skipped. Updates the scale either
    /// way.
    pub fn unscale(&mut self, model: &Model, grads: GradientsParams) -> Option<GradientsParams> {
        let mut unscale = Unscale {
            grads,
            inverse: 1.0 / self.scale,
            total: None,
        };
        model.visit(&mut unscale);
        // One read: the sum of every gradient is finite exactly when each is (an infinity
        // or a NaN anywhere makes it non-finite; finite gradients this far below f32's range
        // cannot add up to an overflow).
        let finite = unscale
            .total
            .map(|t| t.into_scalar::<f32>().is_finite())
            .unwrap_or(true);
        self.update(finite);
        finite.then_some(unscale.grads)
    }

    /// The scale after a step whose gradients were `finite` or not.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.growth_tracker += 1;
            if self.growth_tracker == GROWTH_INTERVAL {
                self.scale *= GROWTH_FACTOR;
                self.growth_tracker = 0;
            }
        } else {
            self.scale *= BACKOFF_FACTOR;
            self.growth_tracker = 0;
        }
    }
}

/// The gradients of `loss` for `model`; with a scaler, of the loss it scaled (what an f16 step
/// differentiates).
pub fn backward(model: &Model, loss: Tensor<1>, scaler: Option<&LossScaler>) -> GradientsParams {
    let loss = match scaler {
        Some(scaler) => scaler.scale_loss(loss),
        None => loss,
    };
    GradientsParams::from_grads(loss.backward(), model)
}

/// `grads` ready for SGD: as they are without a scaler; with one, unscaled ([`LossScaler::unscale`]),
/// or `None` when they overflowed and the step must be skipped.
pub fn for_sgd(
    model: &Model,
    grads: GradientsParams,
    scaler: Option<&mut LossScaler>,
) -> Option<GradientsParams> {
    match scaler {
        Some(scaler) => scaler.unscale(model, grads),
        None => Some(grads),
    }
}

/// Multiplies each gradient of the visited parameters by `inverse`, summing them all.
struct Unscale {
    grads: GradientsParams,
    inverse: f32,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for Unscale {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(grad) = self.grads.remove::<D>(param.id) else {
            return;
        };
        let grad = grad.mul_scalar(self.inverse);
        let sum = grad.clone().sum();
        self.total = Some(match self.total.take() {
            Some(total) => total + sum,
            None => sum,
        });
        self.grads.register(param.id, grad);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use kiln_models::Arch;

    #[test]
    fn overflow_skips_the_step_and_halves_the_scale() {
        let mut s = LossScaler::default();
        assert_eq!(s.scale, 65536.0);
        s.update(true);
        s.update(false);
        assert_eq!(s.scale, 32768.0);
        assert_eq!(s.growth_tracker, 0);
    }

    #[test]
    fn the_scale_doubles_after_growth_interval_clean_steps() {
        let mut s = LossScaler::default();
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.update(true);
        }
        assert_eq!(s.scale, 65536.0);
        s.update(true);
        assert_eq!((s.scale, s.growth_tracker), (131072.0, 0));
    }

    #[test]
    fn state_round_trips_through_json() {
        let s = LossScaler {
            scale: 1024.0,
            growth_tracker: 17,
        };
        let back: LossScaler = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    /// Gradients of resnet18's parameters: all `value`, except one that holds `bad`.
    fn grads(model: &Model, value: f32, bad: Option<f32>) -> GradientsParams {
        struct Fill(GradientsParams, f32, Option<f32>);
        impl ModuleVisitor for Fill {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let v = param.val();
                let fill = self.2.take().unwrap_or(self.1);
                self.0.register(param.id, v.zeros_like().add_scalar(fill));
            }
        }
        let mut fill = Fill(GradientsParams::new(), value, bad);
        model.visit(&mut fill);
        fill.0
    }

    #[test]
    fn unscale_divides_every_gradient_and_refuses_non_finite_ones() {
        let device = Device::flex();
        let model = Arch::Resnet18.init(3, &device);
        let mut s = LossScaler::default();
        let g = s
            .unscale(&model, grads(&model, 65536.0, None))
            .expect("finite");
        struct Check(GradientsParams, usize);
        impl ModuleVisitor for Check {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let g = self.0.get::<D>(param.id).expect("a gradient");
                let v = g.into_data().try_to_vec::<f32>().unwrap();
                assert!(v.iter().all(|&x| x == 1.0));
                self.1 += 1;
            }
        }
        let mut check = Check(g, 0);
        model.visit(&mut check);
        assert!(check.1 > 60, "every parameter checked ({})", check.1);
        assert_eq!(s.growth_tracker, 1);
        for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
            let before = s.scale;
            assert!(s.unscale(&model, grads(&model, 1.0, Some(bad))).is_none());
            assert_eq!(s.scale, before * 0.5, "{bad}");
        }
    }
}
