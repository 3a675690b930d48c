//! The `.pth` reader (a torch.save zip archive or a legacy pickle stream) as `kiln train
//! --weights` and `kiln export` use it: a file either reads as f32 tensors or is refused by
//! name, without a panic, a hang or an allocation over 1 GiB.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = kiln_fuzz::scratch_file("weights.pth", data);
    if let Ok(state) = kiln_models::torchvision::read_state_dict(&path) {
        for (key, tensor) in &state {
            let len: usize = tensor.shape().iter().product();
            assert_eq!(tensor.as_slice::<f32>().unwrap().len(), len, "tensor {key}");
        }
    }
});
