//! Cross-entropy: the training loss on the device, and the validation loss on the host from
//! logits already read back (in f64, so summing many batches loses nothing).

use burn::tensor::{Int, Tensor};

/// Mean cross-entropy of `logits` `[n, classes]` against `labels`: kiln's fused kernel on cube
/// devices (forward and backward), its plain-burn reference on flex.
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    kiln_kernels::cross_entropy::cross_entropy(logits, labels, 0.0)
}

/// Sum over rows of the cross-entropy, computed in f64 from logits on the host.
pub fn cross_entropy_sum(logits: &[f32], labels: &[i64], classes: usize) -> f64 {
    labels
        .iter()
        .enumerate()
        .map(|(i, &label)| {
            let row = &logits[i * classes..(i + 1) * classes];
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let lse = row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln()
                + max;
            lse - row[label as usize] as f64
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn host_and_device_losses_agree_and_are_stable_for_large_logits() {
        let logits = vec![1000.0f32, 0.0, -3.0, 2.0, 2.5, 1.0];
        let labels = vec![1i64, 2];
        let device = Device::flex();
        let x = Tensor::<2>::from_data(TensorData::new(logits.clone(), [2, 3]), &device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [2]), &device);
        let on_device: f32 = cross_entropy(x, y).into_scalar();
        let on_host = cross_entropy_sum(&logits, &labels, 3) / 2.0;
        assert!(on_device.is_finite());
        assert!(
            (on_device as f64 - on_host).abs() < 1e-3,
            "{on_device} vs {on_host}"
        );
        // Row 0: log-sum-exp is 1000, target logit 0 -> loss 1000.
        assert!((cross_entropy_sum(&logits[..3], &labels[..1], 3) - 1000.0).abs() < 1e-9);
    }
}
