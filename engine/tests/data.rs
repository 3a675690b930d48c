//! Image folders, decoding, transforms, the loader and IDX import, by behaviour.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use image::{DynamicImage, GrayImage, ImageFormat, Rgb, RgbImage, RgbaImage};
use kiln_engine::EngineError;
use kiln_engine::data::decode::decode_rgb;
use kiln_engine::data::transform::{IMAGENET_MEAN, IMAGENET_STD};
use kiln_engine::data::{Augment, ImageFolder, Loader, LoaderConfig, Sampler, check_same_classes};
use kiln_engine::kernels::testing::temp_dir;
use kiln_kernels::preprocess::{RawBatch, preprocess};

fn write_image(path: &Path, seed: u8) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
    let img = RgbImage::from_fn(40, 30, |x, y| {
        Rgb([seed.wrapping_add(x as u8), y as u8 * 3, 7])
    });
    img.save(path).expect("save image");
}

fn folder(root: &Path, classes: &[(&str, usize)]) {
    for (class, n) in classes {
        std::fs::create_dir_all(root.join(class)).expect("dir");
        for i in 0..*n {
            write_image(&root.join(class).join(format!("{i}.png")), i as u8);
        }
    }
}

#[test]
fn classes_are_sorted_as_torchvision_sorts_them() {
    let root = temp_dir("sorted");
    folder(
        &root,
        &[("zebra", 2), ("Apple", 2), ("mango", 2), ("banana", 2)],
    );
    let f = ImageFolder::scan(&root).expect("scan");
    // Python's sorted(): byte order, capitals first.
    assert_eq!(f.classes, ["Apple", "banana", "mango", "zebra"]);
    assert_eq!(f.samples.len(), 8);
    assert_eq!(f.samples[0].1, 0);
    assert_eq!(f.samples[7].1, 3);
    assert!(f.samples[0].0.ends_with("Apple/0.png"));
}

#[test]
fn no_class_folders_is_not_labeled() {
    let root = temp_dir("empty");
    let err = ImageFolder::scan(&root).expect_err("no classes");
    assert!(matches!(err, EngineError::NotLabeledDataset(_)));
    assert!(
        err.to_string().starts_with("NotLabeledDatasetError"),
        "{err}"
    );
    assert!(
        err.to_string().contains(&root.display().to_string()),
        "{err}"
    );
}

#[test]
fn images_at_the_root_are_not_labeled() {
    let root = temp_dir("loose");
    folder(&root, &[("cat", 2)]);
    write_image(&root.join("stray.png"), 1);
    let err = ImageFolder::scan(&root).expect_err("loose image");
    let msg = err.to_string();
    assert!(
        msg.starts_with("NotLabeledDatasetError") && msg.contains("stray.png"),
        "{msg}"
    );
}

#[test]
fn different_class_sets_name_both_sides() {
    let (a, b) = (temp_dir("train-set"), temp_dir("val-set"));
    folder(&a, &[("cat", 2), ("dog", 2), ("owl", 2)]);
    folder(&b, &[("cat", 2), ("dog", 2), ("emu", 2)]);
    let err = check_same_classes(
        &ImageFolder::scan(&a).unwrap(),
        &ImageFolder::scan(&b).unwrap(),
    )
    .expect_err("differ");
    let msg = err.to_string();
    assert!(msg.starts_with("InvalidDatasetError"), "{msg}");
    assert!(
        msg.contains("only in train: [owl]") && msg.contains("only in validation: [emu]"),
        "{msg}"
    );
}

#[test]
fn empty_and_lone_classes_are_warned_about() {
    let root = temp_dir("warn");
    folder(&root, &[("cat", 3), ("dog", 1), ("owl", 0)]);
    let f = ImageFolder::scan(&root).expect("scan");
    assert_eq!(f.warnings.len(), 2, "{:?}", f.warnings);
    assert!(
        f.warnings
            .iter()
            .any(|w| w.contains("'dog'") && w.contains("only one"))
    );
    assert!(
        f.warnings
            .iter()
            .any(|w| w.contains("'owl'") && w.contains("no images"))
    );
}

#[test]
fn decodes_every_format_to_rgb() {
    let dir = temp_dir("formats");
    let rgb = RgbImage::from_fn(9, 7, |x, y| Rgb([x as u8 * 20, y as u8 * 30, 100]));
    let cases: Vec<(&str, DynamicImage, ImageFormat)> = vec![
        (
            "a.png",
            DynamicImage::ImageRgb8(rgb.clone()),
            ImageFormat::Png,
        ),
        (
            "a.jpg",
            DynamicImage::ImageRgb8(rgb.clone()),
            ImageFormat::Jpeg,
        ),
        (
            "a.bmp",
            DynamicImage::ImageRgb8(rgb.clone()),
            ImageFormat::Bmp,
        ),
        (
            "a.gif",
            DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(rgb.clone()).to_rgba8()),
            ImageFormat::Gif,
        ),
        (
            "a.webp",
            DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(rgb.clone()).to_rgba8()),
            ImageFormat::WebP,
        ),
        (
            "gray.png",
            DynamicImage::ImageLuma8(GrayImage::from_pixel(9, 7, image::Luma([77]))),
            ImageFormat::Png,
        ),
        (
            "rgba.png",
            DynamicImage::ImageRgba8(RgbaImage::from_pixel(9, 7, image::Rgba([1, 2, 3, 4]))),
            ImageFormat::Png,
        ),
    ];
    for (name, img, format) in cases {
        let path = dir.join(name);
        img.save_with_format(&path, format).expect("encode");
        let out = decode_rgb(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out.dimensions(), (9, 7), "{name}");
        if name == "gray.png" {
            assert_eq!(out.get_pixel(3, 3), &Rgb([77, 77, 77]));
        }
        if name == "rgba.png" {
            assert_eq!(out.get_pixel(0, 0), &Rgb([1, 2, 3]));
        }
    }
}

#[test]
fn a_broken_image_error_names_the_file() {
    let dir = temp_dir("broken");
    let path = dir.join("broken.png");
    std::fs::write(&path, b"\x89PNG\r\n\x1a\nnot really").expect("write");
    let msg = decode_rgb(&path).expect_err("broken").to_string();
    assert!(msg.contains("broken.png"), "{msg}");
}

#[test]
fn a_decompression_bomb_is_refused_before_decoding() {
    // A real 1x1 PNG whose header claims 100000 x 100000 pixels.
    let dir = temp_dir("bomb");
    let small = dir.join("small.png");
    RgbImage::from_pixel(1, 1, Rgb([1, 2, 3]))
        .save(&small)
        .expect("png");
    let mut bytes = std::fs::read(&small).expect("read");
    bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    let bomb = dir.join("bomb.png");
    std::fs::write(&bomb, bytes).expect("write");
    let msg = decode_rgb(&bomb).expect_err("bomb").to_string();
    assert!(msg.contains("bomb.png") && msg.contains("limit"), "{msg}");
}

#[test]
fn sampler_matches_distributed_sampler_padding_and_striding() {
    let s = |rank| Sampler {
        len: 10,
        world: 3,
        rank,
        shuffle: false,
        seed: 0,
    };
    // torch: indices 0..9 padded with 0, 1 to 12; rank r takes r::3.
    assert_eq!(s(0).indices(0), [0, 3, 6, 9]);
    assert_eq!(s(1).indices(0), [1, 4, 7, 0]);
    assert_eq!(s(2).indices(0), [2, 5, 8, 1]);
    let shuffled = |rank, epoch| {
        Sampler {
            shuffle: true,
            ..s(rank)
        }
        .indices(epoch)
    };
    let mut all: Vec<usize> = (0..3).flat_map(|r| shuffled(r, 4)).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 10, "the shards cover the dataset");
    assert_ne!(shuffled(0, 1), shuffled(0, 2), "reshuffled per epoch");
    assert_eq!(shuffled(0, 1), shuffled(0, 1), "deterministic for a seed");
}

fn loader(samples: Vec<(PathBuf, usize)>, workers: usize, skip: bool) -> Loader {
    loader_with(samples, workers, skip, Some(Augment::Standard), false)
}

fn loader_with(
    samples: Vec<(PathBuf, usize)>,
    workers: usize,
    skip: bool,
    augment: Option<Augment>,
    raw: bool,
) -> Loader {
    Loader::new(
        samples,
        LoaderConfig {
            batch_size: 4,
            image_size: 16,
            augment,
            seed: 9,
            workers,
            prefetch: 2,
            skip_bad_images: skip,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            raw,
        },
    )
    .expect("loader")
}

#[test]
fn loader_batches_are_the_same_for_any_worker_count() {
    let root = temp_dir("loader");
    folder(&root, &[("a", 5), ("b", 6)]);
    let f = ImageFolder::scan(&root).expect("scan");
    let idx: Vec<usize> = (0..f.len()).collect();
    let one: Vec<_> = loader(f.samples.clone(), 1, false)
        .batches(3, idx.clone())
        .map(Result::unwrap)
        .collect();
    let two: Vec<_> = loader(f.samples.clone(), 2, false)
        .batches(3, idx.clone())
        .map(Result::unwrap)
        .collect();
    assert_eq!(one, two);
    assert_eq!(one.iter().map(|b| b.len()).collect::<Vec<_>>(), [4, 4, 3]);
    assert_eq!(one[0].images.len(), 4 * 3 * 16 * 16);
    let other_epoch: Vec<_> = loader(f.samples.clone(), 2, false)
        .batches(4, idx)
        .map(Result::unwrap)
        .collect();
    assert_ne!(
        one[0].images, other_epoch[0].images,
        "augmentation differs per epoch"
    );
}

// A raw batch (bytes + flips) finished by `kernels::preprocess` on the device equals the batch
// the loader normalises on the host: same crops, same flips, same values.
kiln_kernels::test_device!(
    raw_batches_preprocessed_on_the_device_equal_host_batches,
    |device: Device| {
        let root = temp_dir(&format!("raw-{}", device_label(&device)));
        folder(&root, &[("a", 5), ("b", 6)]);
        let f = ImageFolder::scan(&root).expect("scan");
        let idx: Vec<usize> = (0..f.len()).collect();
        for augment in [Some(Augment::Standard), Some(Augment::Flip), None] {
            let host: Vec<_> = loader_with(f.samples.clone(), 2, false, augment, false)
                .batches(1, idx.clone())
                .map(Result::unwrap)
                .collect();
            let raw: Vec<_> = loader_with(f.samples.clone(), 2, false, augment, true)
                .batches(1, idx.clone())
                .map(Result::unwrap)
                .collect();
            assert_eq!(host.len(), raw.len());
            let mut flipped = 0;
            for (h, r) in host.iter().zip(&raw) {
                assert_eq!(h.labels, r.labels);
                assert!(r.images.is_empty());
                assert_eq!(
                    r.pixels.len(),
                    r.len() * 16 * 16 * 3,
                    "a quarter of the bytes"
                );
                flipped += r.flips.iter().filter(|&&f| f).count();
                let crops = vec![(0, 0); r.len()];
                let batch = RawBatch {
                    pixels: &r.pixels,
                    height: 16,
                    width: 16,
                    crops: &crops,
                    flips: &r.flips,
                };
                let got = preprocess(&batch, 16, IMAGENET_MEAN, IMAGENET_STD, &device)
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap();
                assert_eq!(got.len(), h.images.len());
                for (i, (g, w)) in got.iter().zip(&h.images).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-5,
                        "{augment:?}: element {i}: {g} vs {w}"
                    );
                }
            }
            if augment.is_some() {
                assert!(flipped > 0, "{augment:?}: some of 11 images are flipped");
            } else {
                assert_eq!(flipped, 0, "validation batches are never flipped");
            }
        }
    }
);

fn device_label(device: &Device) -> &'static str {
    if kiln_kernels::is_cube_device(device) {
        "cube"
    } else {
        "flex"
    }
}

#[test]
fn bad_images_fail_the_loader_or_are_skipped_and_counted() {
    let root = temp_dir("skip");
    folder(&root, &[("a", 3)]);
    std::fs::write(root.join("a/zz-broken.png"), b"garbage").expect("write");
    let f = ImageFolder::scan(&root).expect("scan");
    let idx: Vec<usize> = (0..f.len()).collect();
    let err = loader(f.samples.clone(), 1, false)
        .batches(0, idx.clone())
        .find_map(Result::err)
        .expect("an error");
    assert!(err.to_string().contains("zz-broken.png"), "{err}");
    let batches: Vec<_> = loader(f.samples, 1, true)
        .batches(0, idx)
        .map(Result::unwrap)
        .collect();
    let skipped: usize = batches.iter().map(|b| b.skipped.len()).sum();
    let kept: usize = batches.iter().map(|b| b.len()).sum();
    assert_eq!((skipped, kept), (1, 3));
}

#[test]
fn class_folders_are_read_as_they_are_on_disk() {
    use std::os::unix::ffi::OsStrExt;
    // A class folder whose name is not UTF-8: refused by path, not silently dropped.
    let root = temp_dir("non-utf8");
    write_image(&root.join("ok/0.png"), 1);
    let bad = root.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    write_image(&bad.join("0.png"), 2);
    let e = ImageFolder::scan(&root)
        .expect_err("non-UTF-8 class")
        .to_string();
    assert!(e.contains("not UTF-8") && e.contains("caf"), "{e}");

    // A link back up (a loop) is refused by path; a second link to a folder already read
    // counts its images once.
    let root = temp_dir("links");
    for i in 0..8u8 {
        write_image(&root.join(format!("Bag/{i}.png")), i);
    }
    std::os::unix::fs::symlink(".", root.join("Bag/loop")).expect("link");
    let e = ImageFolder::scan(&root).expect_err("loop").to_string();
    assert!(
        e.contains("symbolic link loop") && e.contains("loop"),
        "{e}"
    );
    std::fs::remove_file(root.join("Bag/loop")).expect("unlink");
    write_image(&root.join("Shirt/own/0.png"), 9);
    std::os::unix::fs::symlink(root.join("Shirt/own"), root.join("Shirt/again")).expect("link");
    let f = ImageFolder::scan(&root).expect("scan");
    assert_eq!(f.len(), 8 + 1, "each image once");
}
