//! A model directory's `kiln.json` as `kiln predict` and `kiln serve` read it: either it is
//! refused with the field named, or an image preprocessed with it is finite numbers.
#![no_main]

use image::RgbImage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = kiln_fuzz::scratch_file("kiln.json", data);
    let dir = path.parent().unwrap();
    let Ok((info, _arch)) = kiln_engine::model_dir::read_info(dir) else {
        return;
    };
    // A large accepted size costs a large resize: keep the run fast, not the check weaker.
    if info.image_size > 512 {
        return;
    }
    let image = RgbImage::from_fn(9, 7, |x, y| {
        image::Rgb([(x * 28) as u8, (y * 36) as u8, 255])
    });
    let mut out = Vec::new();
    kiln_engine::infer::preprocess(&info, &image, &mut out).expect("a small image preprocesses");
    assert_eq!(out.len(), kiln_engine::infer::input_len(&info));
    assert!(
        out.iter().all(|v| v.is_finite()),
        "kiln.json accepted with mean {:?} and std {:?}, which turn pixels into non-finite inputs",
        info.mean,
        info.std
    );
});
