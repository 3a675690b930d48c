//! safetensors weights against an architecture: read as `kiln train --weights` reads them,
//! then loaded into resnet18 (10 classes) key by key, where every key must name a parameter
//! of the model with its shape. Either the weights load or the error names the mismatch.
#![no_main]

use std::sync::OnceLock;

use burn::prelude::Device;
use kiln_models::Arch;
use kiln_models::Model;
use kiln_models::torchvision::{self, LoadOptions};
use libfuzzer_sys::fuzz_target;

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Arch::Resnet18.init(10, &Device::flex()))
}

fuzz_target!(|data: &[u8]| {
    let path = kiln_fuzz::scratch_file("weights.safetensors", data);
    let Ok(state) = torchvision::read_state_dict(&path) else {
        return;
    };
    // The class count `load` builds the model with: taken from the classifier, or refused.
    if let Ok(classes) = torchvision::model_classes(Arch::Resnet18, &state, None, &path) {
        assert!(
            (1..=torchvision::MAX_CLASSES).contains(&classes),
            "{classes} classes"
        );
    }
    let options = LoadOptions {
        allow_missing: true,
        skip_classifier: false,
    };
    let _ = torchvision::load_state_dict(model().clone(), state, Arch::Resnet18, &path, options);
});
