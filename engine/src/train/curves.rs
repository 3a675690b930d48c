//! Charts a person can read: `outputs/curves.png` (loss and top-1 accuracy by epoch, training
//! and validation, the kept epoch marked) and `kiln runs metrics --plot` (one panel per metric).
//! Each panel has a title, axis labels with units, tick values and a legend ([`plot`]).

pub mod plot;

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::error::EngineError;
use crate::train::checkpoint::EpochMetrics;
use plot::{Curve, H, OTHER, Panel, TRAIN, VAL, W, draw_panel};

/// Draws the curves of `history` into a PNG at `path`, marking `best_epoch` (from 1), the
/// epoch whose weights were kept.
pub fn draw(
    path: &Path,
    history: &[EpochMetrics],
    best_epoch: Option<usize>,
) -> Result<(), EngineError> {
    let series = |f: fn(&EpochMetrics) -> f64| -> Vec<(f64, f64)> {
        history.iter().map(|m| (m.epoch as f64, f(m))).collect()
    };
    let curves = |train: fn(&EpochMetrics) -> f64, val: fn(&EpochMetrics) -> f64| {
        vec![
            Curve {
                label: "train".into(),
                color: TRAIN,
                points: series(train),
            },
            Curve {
                label: "val".into(),
                color: VAL,
                points: series(val),
            },
        ]
    };
    let mark = best_epoch.map(|e| (e as f64, format!("kept: epoch {e}")));
    let panels = [
        Panel {
            title: "Loss".into(),
            x_label: "epoch".into(),
            y_label: "cross-entropy loss (nats)".into(),
            curves: curves(|m| m.train_loss, |m| m.val_loss),
            y_range: Some((0.0, 0.0)),
            mark: mark.clone(),
        },
        Panel {
            title: "Top-1 accuracy".into(),
            x_label: "epoch".into(),
            y_label: "accuracy (fraction correct)".into(),
            curves: curves(|m| m.train_acc, |m| m.val_acc),
            y_range: Some((0.0, 1.0)),
            mark,
        },
    ];
    save(path, &panels)
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
/// to its own range, training in blue, validation in orange, other splits in green; x is the
/// epoch (or step). The best validation loss or accuracy is marked.
pub fn draw_metrics(path: &Path, series: &[Series]) -> Result<(), EngineError> {
    let mut names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let panels: Vec<Panel> = names
        .iter()
        .map(|name| {
            let mine: Vec<&Series> = series.iter().filter(|s| s.name == *name).collect();
            let curves = mine
                .iter()
                .map(|s| Curve {
                    label: if s.split.is_empty() {
                        (*name).to_string()
                    } else {
                        s.split.clone()
                    },
                    color: match s.split.as_str() {
                        "train" => TRAIN,
                        "val" => VAL,
                        _ => OTHER,
                    },
                    points: s.points.clone(),
                })
                .collect();
            let (title, y_label) = describe(name);
            Panel {
                title,
                x_label: "epoch (or step)".into(),
                y_label,
                curves,
                y_range: (name.contains("acc") || *name == "top5").then_some((0.0, 1.0)),
                mark: best_mark(name, &mine),
            }
        })
        .collect();
    save(path, &panels)
}

/// A metric's title and y-axis label with its unit.
fn describe(name: &str) -> (String, String) {
    let (title, unit) = match name {
        "loss" => ("Loss", "cross-entropy loss (nats)"),
        "acc" => ("Top-1 accuracy", "accuracy (fraction correct)"),
        "top5" => ("Top-5 accuracy", "accuracy (fraction correct)"),
        "lr" => ("Learning rate", "learning rate"),
        "images_per_s" => ("Throughput", "images per second"),
        "epoch_time_s" => ("Epoch time", "seconds"),
        other => return (other.to_string(), other.to_string()),
    };
    (title.into(), unit.into())
}

/// The best validation epoch of a loss (lowest) or accuracy (highest), marked.
fn best_mark(name: &str, series: &[&Series]) -> Option<(f64, String)> {
    let val = series.iter().find(|s| s.split == "val")?;
    let finite = val.points.iter().filter(|p| p.1.is_finite());
    let best = match name {
        "loss" => finite.min_by(|a, b| a.1.total_cmp(&b.1)),
        "acc" | "top5" => finite.max_by(|a, b| a.1.total_cmp(&b.1)),
        _ => None,
    }?;
    Some((best.0, format!("best val: {:.4} at {}", best.1, best.0)))
}

/// Lays `panels` out two to a row and writes the PNG.
fn save(path: &Path, panels: &[Panel]) -> Result<(), EngineError> {
    let rows = panels.len().div_ceil(2).max(1) as u32;
    let mut img = RgbImage::from_pixel(2 * W, rows * H, Rgb([255, 255, 255]));
    for (i, panel) in panels.iter().enumerate() {
        draw_panel(&mut img, (i as u32 % 2) * W, (i as u32 / 2) * H, panel);
    }
    img.save(path)
        .map_err(|e| EngineError::io(path, std::io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(e: usize, loss: f64, acc: f64) -> EpochMetrics {
        EpochMetrics {
            epoch: e,
            train_loss: loss,
            val_loss: loss * 0.9,
            train_acc: acc,
            val_acc: acc + 0.05,
            ..EpochMetrics::default()
        }
    }

    #[test]
    fn curves_have_titles_ticks_legends_and_the_kept_epoch() {
        let dir = std::env::temp_dir().join(format!("kiln-curves-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("curves.png");
        let history = [epoch(1, 2.3, 0.1), epoch(2, 1.7, 0.4), epoch(3, 1.2, 0.6)];
        draw(&path, &history, Some(3)).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (2 * W, H));
        let inked = |x0: u32, y0: u32, w: u32, h: u32, color: Rgb<u8>| {
            (y0..y0 + h)
                .flat_map(|y| (x0..x0 + w).map(move |x| (x, y)))
                .filter(|&(x, y)| *img.get_pixel(x, y) == color)
                .count()
        };
        let text = Rgb([20, 20, 20]);
        assert!(inked(60, 0, 200, 30, text) > 50, "the loss panel's title");
        assert!(
            inked(W + 60, 0, 300, 30, text) > 50,
            "the accuracy panel's title"
        );
        assert!(
            inked(0, 60, 70, 300, text) > 50,
            "tick values on the y axis"
        );
        assert!(inked(0, 0, 2 * W, H, TRAIN) > 100 && inked(0, 0, 2 * W, H, VAL) > 100);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
