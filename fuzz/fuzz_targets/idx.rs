//! `kiln data import fashion-mnist` on IDX files: the input is cut into an images file and a
//! labels file (gzipped when the first byte is odd), imported at two images per class; the
//! import either writes its folder whole or fails by file name and leaves nothing.
#![no_main]

use kiln_engine::data::idx::{ImportLimit, import_fashion_mnist};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [flags, cut_hi, cut_lo, rest @ ..] = data else {
        return;
    };
    let cut = (usize::from(*cut_hi) << 8 | usize::from(*cut_lo)).min(rest.len());
    let (images, labels) = rest.split_at(cut);
    let gz = flags & 1 == 1;
    let src = kiln_fuzz::scratch().join("src");
    let dest = kiln_fuzz::scratch().join("dest");
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::create_dir_all(&src).unwrap();
    for split in ["train", "t10k"] {
        write(&src, &format!("{split}-images-idx3-ubyte"), images, gz);
        write(&src, &format!("{split}-labels-idx1-ubyte"), labels, gz);
    }
    let limit = ImportLimit {
        train_per_class: Some(2),
        val_per_class: Some(2),
    };
    match import_fashion_mnist(&src, &dest, limit) {
        Ok(_) => assert!(dest.join("train").is_dir() && dest.join("val").is_dir()),
        Err(_) => assert!(!dest.exists(), "a failed import left {}", dest.display()),
    }
    let leftovers: Vec<_> = std::fs::read_dir(kiln_fuzz::scratch())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("importing"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
});

fn write(dir: &std::path::Path, name: &str, data: &[u8], gz: bool) {
    use std::io::Write;
    if gz {
        let file = std::fs::File::create(dir.join(format!("{name}.gz"))).unwrap();
        let mut encoder = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap();
    } else {
        std::fs::write(dir.join(name), data).unwrap();
    }
}
