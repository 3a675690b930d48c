//! IDX import (Fashion-MNIST) and the inputs the fuzzers found (`fuzz/regressions/`): every
//! bad file refused by name before anything is allocated or written.

use std::path::Path;

use kiln_engine::data::ImageFolder;
use kiln_engine::data::idx::{FASHION_MNIST_CLASSES, ImportLimit, import_fashion_mnist, read_idx};
use kiln_engine::kernels::testing::temp_dir;

/// An IDX file's bytes: the magic for unsigned bytes, the dimensions, then `data`.
fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend(data);
    bytes
}

/// Writes the four Fashion-MNIST files into `src`, train and t10k alike, gzipped (`.gz`) or
/// not.
fn write_fashion_mnist(src: &Path, images: &[u8], labels: &[u8], gz: bool) {
    for split in ["train", "t10k"] {
        for (stem, data) in [("images-idx3", images), ("labels-idx1", labels)] {
            let name = format!("{split}-{stem}-ubyte");
            if gz {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                std::io::Write::write_all(&mut encoder, data).expect("gzip");
                let bytes = encoder.finish().expect("gzip");
                std::fs::write(src.join(format!("{name}.gz")), bytes).expect("write");
            } else {
                std::fs::write(src.join(name), data).expect("write");
            }
        }
    }
}

#[test]
fn imports_fashion_mnist_idx_to_an_image_folder() {
    let src = temp_dir("idx-src");
    let dest = temp_dir("idx-dest");
    let images: Vec<u8> = (0..12 * 4).map(|i| i as u8).collect();
    let labels: Vec<u8> = (0..12).map(|i| (i % 10) as u8).collect();
    write_fashion_mnist(
        &src,
        &idx_bytes(&[12, 2, 2], &images),
        &idx_bytes(&[12], &labels),
        true,
    );
    let (train, val) = import_fashion_mnist(
        &src,
        &dest,
        ImportLimit {
            train_per_class: Some(1),
            val_per_class: None,
        },
    )
    .expect("import");
    assert_eq!((train, val), (10, 12));
    let f = ImageFolder::scan(&dest.join("val")).expect("scan");
    let mut sorted = FASHION_MNIST_CLASSES.map(String::from).to_vec();
    sorted.sort();
    assert_eq!(f.classes, sorted);
    let first = image::open(dest.join("val/T-shirt_top/00000.png"))
        .expect("png")
        .to_luma8();
    assert_eq!(first.as_raw(), &[0, 1, 2, 3]);
    let idx = read_idx(&src.join("train-labels-idx1-ubyte.gz")).expect("idx");
    assert_eq!(idx.dims, [12]);
    std::fs::write(src.join("bad-idx"), b"\x00\x00\x08\x01\x00\x00\x00\x09abc").expect("write");
    let msg = read_idx(&src.join("bad-idx"))
        .expect_err("short")
        .to_string();
    assert!(
        msg.contains("bad-idx") && msg.contains("need 9 values"),
        "{msg}"
    );
}

#[test]
fn idx_headers_are_checked_before_anything_is_allocated() {
    let src = temp_dir("idx-headers");
    let raw = |name: &str, bytes: &[u8]| {
        let path = src.join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    };
    let cases = [
        // Dimensions whose product overflows usize, and a product past the limit: both
        // refused from the header, not by a panic or a 4 GB read.
        (
            "overflow",
            idx_bytes(&[u32::MAX, u32::MAX, u32::MAX], &[]),
            "make more than",
        ),
        (
            "huge",
            idx_bytes(&[60_000, 28_000, 28_000], &[]),
            "make more than",
        ),
        // More values than the header says.
        (
            "trailing",
            idx_bytes(&[2], &[1, 2, 3]),
            "need 2 values, the file has more",
        ),
        ("no-header", vec![0, 0], "header [00, 00]"),
        ("short-dims", vec![0, 0, 8, 2, 0, 0], "truncated header"),
    ];
    for (name, bytes, message) in cases {
        let msg = read_idx(&raw(name, &bytes)).expect_err(name).to_string();
        assert!(msg.contains(name) && msg.contains(message), "{name}: {msg}");
    }

    // Images of no rows or no columns: refused by file, and nothing written.
    let dest = src.join("dest");
    write_fashion_mnist(
        &src,
        &idx_bytes(&[2, 0, 5], &[]),
        &idx_bytes(&[2], &[0, 1]),
        true,
    );
    let msg = import_fashion_mnist(&src, &dest, ImportLimit::default())
        .expect_err("no rows")
        .to_string();
    assert!(
        msg.contains("train-images-idx3-ubyte.gz") && msg.contains("at least one row"),
        "{msg}"
    );
    assert!(!dest.exists());
}

/// The inputs in `fuzz/regressions/<target>/` (what the fuzzers found), replayed as their
/// targets feed them.
fn fuzz_regressions(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("fuzz/regressions")
        .map(|e| {
            let path = e.expect("entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("read"))
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no inputs in {}", dir.display());
    inputs
}

#[test]
fn fuzz_findings_stay_fixed() {
    // IDX import: flags byte (bit 0: gzip), the cut between the images and labels files, then
    // both files; the import is refused by file name and leaves nothing behind.
    for (name, input) in fuzz_regressions("idx") {
        let [flags, hi, lo, rest @ ..] = &input[..] else {
            panic!("{name}: too short");
        };
        let cut = (usize::from(*hi) << 8 | usize::from(*lo)).min(rest.len());
        let (images, labels) = rest.split_at(cut);
        let src = temp_dir(&format!("fuzz-idx-{name}"));
        let dest = src.join("dest");
        write_fashion_mnist(&src, images, labels, flags & 1 == 1);
        let msg = import_fashion_mnist(&src, &dest, ImportLimit::default())
            .expect_err(&name)
            .to_string();
        assert!(
            msg.contains("-ubyte") && msg.contains("expected"),
            "{name}: {msg}"
        );
        assert!(!dest.exists(), "{name}");
    }
    // kiln.json: refused naming the fields, where it was once accepted and made every input
    // an infinity.
    for (name, input) in fuzz_regressions("kiln_json") {
        let dir = temp_dir(&format!("fuzz-kiln-json-{name}"));
        std::fs::write(dir.join("kiln.json"), &input).expect("write");
        let msg = kiln_engine::model_dir::read_info(&dir)
            .expect_err(&name)
            .to_string();
        assert!(
            msg.contains("kiln.json") && msg.contains("into infinities"),
            "{name}: {msg}"
        );
    }
}

#[test]
fn a_failed_import_leaves_nothing_behind() {
    let src = temp_dir("bad-idx-src");
    let dest_parent = temp_dir("bad-idx-dest");
    let dest = dest_parent.join("fashion");
    let images: Vec<u8> = (0..30 * 4).map(|i| i as u8).collect();
    // Label 12 at index 19: not a Fashion-MNIST class.
    let labels: Vec<u8> = (0..30)
        .map(|i| if i == 19 { 12 } else { (i % 10) as u8 })
        .collect();
    write_fashion_mnist(
        &src,
        &idx_bytes(&[30, 2, 2], &images),
        &idx_bytes(&[30], &labels),
        true,
    );
    let limit = || ImportLimit {
        train_per_class: None,
        val_per_class: None,
    };
    let e = import_fashion_mnist(&src, &dest, limit()).expect_err("bad label");
    assert!(e.to_string().contains("label 12 at index 19"), "{e}");
    let left: Vec<_> = std::fs::read_dir(&dest_parent)
        .expect("dir")
        .flatten()
        .collect();
    assert!(
        left.is_empty(),
        "left behind: {:?}",
        left.iter().map(|e| e.path()).collect::<Vec<_>>()
    );
    // Into a directory that already holds files: refused before writing anything.
    std::fs::create_dir_all(dest.join("mine")).expect("dir");
    let e = import_fashion_mnist(&src, &dest, limit()).expect_err("not empty");
    assert!(e.to_string().contains("not an empty directory"), "{e}");
}
