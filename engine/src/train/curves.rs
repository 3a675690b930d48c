//! `outputs/curves.png`: loss (left panel) and top-1 accuracy (right panel) by epoch, training
//! in blue and validation in orange, on a light grid (accuracy from 0 to 1, tenths marked).

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::error::EngineError;
use crate::train::checkpoint::EpochMetrics;

const W: u32 = 480;
const H: u32 = 360;
const MARGIN: u32 = 30;
const TRAIN: Rgb<u8> = Rgb([31, 119, 180]);
const VAL: Rgb<u8> = Rgb([255, 127, 14]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const AXIS: Rgb<u8> = Rgb([60, 60, 60]);

/// Draws the curves of `history` into a PNG at `path`.
pub fn draw(path: &Path, history: &[EpochMetrics]) -> Result<(), EngineError> {
    let mut img = RgbImage::from_pixel(2 * W, H, Rgb([255, 255, 255]));
    let max_loss = history
        .iter()
        .flat_map(|m| [m.train_loss, m.val_loss])
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-6);
    let panel = |img: &mut RgbImage, x0: u32, series: [(Vec<f64>, Rgb<u8>); 2], top: f64| {
        for i in 0..=10 {
            let y = MARGIN + (H - 2 * MARGIN) * i / 10;
            line(img, (x0 + MARGIN, y), (x0 + W - MARGIN, y), GRID);
        }
        line(img, (x0 + MARGIN, MARGIN), (x0 + MARGIN, H - MARGIN), AXIS);
        line(
            img,
            (x0 + MARGIN, H - MARGIN),
            (x0 + W - MARGIN, H - MARGIN),
            AXIS,
        );
        for (values, color) in series {
            let n = values.len().max(2) - 1;
            let point = |i: usize, v: f64| {
                let x = x0 + MARGIN + ((W - 2 * MARGIN) as usize * i / n) as u32;
                let frac = (v / top).clamp(0.0, 1.0);
                let y = H - MARGIN - ((H - 2 * MARGIN) as f64 * frac) as u32;
                (x, y)
            };
            for (i, pair) in values.windows(2).enumerate() {
                line(img, point(i, pair[0]), point(i + 1, pair[1]), color);
            }
            for (i, &v) in values.iter().enumerate() {
                let (x, y) = point(i, v);
                dot(img, x, y, color);
            }
        }
    };
    let get = |f: fn(&EpochMetrics) -> f64| history.iter().map(f).collect::<Vec<_>>();
    panel(
        &mut img,
        0,
        [(get(|m| m.train_loss), TRAIN), (get(|m| m.val_loss), VAL)],
        max_loss,
    );
    panel(
        &mut img,
        W,
        [(get(|m| m.train_acc), TRAIN), (get(|m| m.val_acc), VAL)],
        1.0,
    );
    img.save(path)
        .map_err(|e| EngineError::io(path, std::io::Error::other(e)))
}

/// One curve of [`draw_metrics`]: a metric's name, its split (`train`, `val` or none) and
/// `(x, y)` points.
pub struct Series {
    /// The metric's name; one panel per name.
    pub name: String,
    /// The split; one colour per split.
    pub split: String,
    /// Points in order.
    pub points: Vec<(f64, f64)>,
}

/// Draws any run's metrics into a PNG: one panel per metric name (two columns), each scaled
/// to its own range, training in blue, validation in orange, other splits in green.
pub fn draw_metrics(path: &Path, series: &[Series]) -> Result<(), EngineError> {
    let mut names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
    names.dedup();
    names.sort_unstable();
    names.dedup();
    let rows = names.len().div_ceil(2).max(1) as u32;
    let mut img = RgbImage::from_pixel(2 * W, rows * H, Rgb([255, 255, 255]));
    for (i, name) in names.iter().enumerate() {
        let (x0, y0) = ((i as u32 % 2) * W, (i as u32 / 2) * H);
        let curves: Vec<&Series> = series.iter().filter(|s| s.name == *name).collect();
        let finite = curves
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.0.is_finite() && p.1.is_finite());
        let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in finite {
            (x_lo, x_hi, y_lo, y_hi) = (x_lo.min(x), x_hi.max(x), y_lo.min(y), y_hi.max(y));
        }
        if x_lo > x_hi {
            continue;
        }
        let (x_span, y_span) = ((x_hi - x_lo).max(1e-12), (y_hi - y_lo).max(1e-12));
        for g in 0..=10 {
            let y = y0 + MARGIN + (H - 2 * MARGIN) * g / 10;
            line(&mut img, (x0 + MARGIN, y), (x0 + W - MARGIN, y), GRID);
        }
        line(
            &mut img,
            (x0 + MARGIN, y0 + MARGIN),
            (x0 + MARGIN, y0 + H - MARGIN),
            AXIS,
        );
        line(
            &mut img,
            (x0 + MARGIN, y0 + H - MARGIN),
            (x0 + W - MARGIN, y0 + H - MARGIN),
            AXIS,
        );
        let at = |(x, y): (f64, f64)| {
            let fx = (x - x_lo) / x_span;
            let fy = (y - y_lo) / y_span;
            (
                x0 + MARGIN + ((W - 2 * MARGIN) as f64 * fx) as u32,
                y0 + H - MARGIN - ((H - 2 * MARGIN) as f64 * fy) as u32,
            )
        };
        for s in curves {
            let color = match s.split.as_str() {
                "train" => TRAIN,
                "val" => VAL,
                _ => Rgb([44, 160, 44]),
            };
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .collect();
            for pair in points.windows(2) {
                line(&mut img, at(pair[0]), at(pair[1]), color);
            }
            if points.len() <= 100 {
                for &p in &points {
                    let (x, y) = at(p);
                    dot(&mut img, x, y, color);
                }
            }
        }
    }
    img.save(path)
        .map_err(|e| EngineError::io(path, std::io::Error::other(e)))
}

fn line(img: &mut RgbImage, (x0, y0): (u32, u32), (x1, y1): (u32, u32), color: Rgb<u8>) {
    let steps = x0.abs_diff(x1).max(y0.abs_diff(y1)).max(1);
    for s in 0..=steps {
        let x = x0 as f64 + (x1 as f64 - x0 as f64) * s as f64 / steps as f64;
        let y = y0 as f64 + (y1 as f64 - y0 as f64) * s as f64 / steps as f64;
        if let Some(p) = img.get_pixel_mut_checked(x.round() as u32, y.round() as u32) {
            *p = color;
        }
    }
}

fn dot(img: &mut RgbImage, x: u32, y: u32, color: Rgb<u8>) {
    for dx in 0..5u32 {
        for dy in 0..5u32 {
            if let Some(p) =
                img.get_pixel_mut_checked((x + dx).saturating_sub(2), (y + dy).saturating_sub(2))
            {
                *p = color;
            }
        }
    }
}
