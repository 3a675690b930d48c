//! One chart panel, drawn into an image: a title, a y-axis label with its unit, tick values on
//! both axes, a light grid, the curves, a legend and an optional marked x (the best epoch).
//! Text uses the public-domain 8x8 bitmap font of `font8x8`, compiled in, so a chart looks the
//! same on every machine.

use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

/// Colours: training blue, validation orange, anything else green (matplotlib's first three).
pub const TRAIN: Rgb<u8> = Rgb([31, 119, 180]);
/// Validation.
pub const VAL: Rgb<u8> = Rgb([255, 127, 14]);
/// Other splits.
pub const OTHER: Rgb<u8> = Rgb([44, 160, 44]);
const GRID: Rgb<u8> = Rgb([228, 228, 228]);
const AXIS: Rgb<u8> = Rgb([60, 60, 60]);
const TEXT: Rgb<u8> = Rgb([20, 20, 20]);
const BEST: Rgb<u8> = Rgb([150, 150, 150]);

/// Panel size in pixels.
pub const W: u32 = 560;
/// Panel height.
pub const H: u32 = 400;
const LEFT: u32 = 72;
const RIGHT: u32 = 20;
const TOP: u32 = 52;
const BOTTOM: u32 = 48;

/// One curve of a panel.
pub struct Curve {
    /// The legend's name (`train`, `val`).
    pub label: String,
    /// Its colour.
    pub color: Rgb<u8>,
    /// `(x, y)` points in order; non-finite ones are skipped.
    pub points: Vec<(f64, f64)>,
}

/// What a panel shows.
pub struct Panel {
    /// The title, above the chart.
    pub title: String,
    /// The x axis's label with its unit.
    pub x_label: String,
    /// The y axis's label with its unit.
    pub y_label: String,
    /// The curves.
    pub curves: Vec<Curve>,
    /// A fixed y range (accuracy: 0 to 1), else the data's.
    pub y_range: Option<(f64, f64)>,
    /// An x to mark with a dashed line and its label (`best epoch 3`).
    pub mark: Option<(f64, String)>,
}

/// Draws `panel` with its top-left corner at `(x0, y0)`.
pub fn draw_panel(img: &mut RgbImage, x0: u32, y0: u32, panel: &Panel) {
    let points = || {
        panel
            .curves
            .iter()
            .flat_map(|c| c.points.iter().copied())
            .filter(|p| p.0.is_finite() && p.1.is_finite())
    };
    let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points() {
        (x_lo, x_hi, y_lo, y_hi) = (x_lo.min(x), x_hi.max(x), y_lo.min(y), y_hi.max(y));
    }
    text(img, x0 + LEFT, y0 + 10, &panel.title, TEXT, 2);
    text(img, x0 + 8, y0 + TOP - 14, &panel.y_label, TEXT, 1);
    let label_w = panel.x_label.len() as u32 * 8;
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    text(
        img,
        x0 + LEFT + plot_w.saturating_sub(label_w) / 2,
        y0 + H - 16,
        &panel.x_label,
        TEXT,
        1,
    );
    if x_lo > x_hi {
        text(
            img,
            x0 + LEFT + 10,
            y0 + TOP + plot_h / 2,
            "no values",
            AXIS,
            1,
        );
        return;
    }
    if let Some((lo, hi)) = panel.y_range {
        (y_lo, y_hi) = (lo.min(y_lo), hi.max(y_hi));
    }
    if y_hi - y_lo <= 1e-9 * y_hi.abs().max(1e-300) {
        // A flat series (a constant learning rate): centre it in a range of its own size.
        let pad = if y_hi == 0.0 { 1.0 } else { y_hi.abs() / 2.0 };
        (y_lo, y_hi) = (y_lo - pad, y_hi + pad);
    }
    let x_ticks = ticks(x_lo, x_hi.max(x_lo + 1.0), 8, true);
    let y_ticks = ticks(y_lo, y_hi, 6, false);
    let (x_lo, x_hi) = (x_ticks[0].min(x_lo), x_ticks[x_ticks.len() - 1].max(x_hi));
    let (y_lo, y_hi) = (y_ticks[0].min(y_lo), y_ticks[y_ticks.len() - 1].max(y_hi));
    let (x_span, y_span) = ((x_hi - x_lo).max(1e-12), (y_hi - y_lo).max(1e-12));
    let at = |(x, y): (f64, f64)| {
        (
            x0 + LEFT + (plot_w as f64 * (x - x_lo) / x_span).round() as u32,
            y0 + TOP + plot_h - (plot_h as f64 * (y - y_lo) / y_span).round() as u32,
        )
    };
    for &t in &y_ticks {
        let (_, y) = at((x_lo, t));
        line(img, (x0 + LEFT, y), (x0 + LEFT + plot_w, y), GRID);
        let s = tick_text(t, &y_ticks);
        text(
            img,
            (x0 + LEFT).saturating_sub(6 + 8 * s.len() as u32),
            y.saturating_sub(3),
            &s,
            TEXT,
            1,
        );
    }
    for &t in &x_ticks {
        let (x, _) = at((t, y_lo));
        line(img, (x, y0 + TOP), (x, y0 + TOP + plot_h), GRID);
        let s = tick_text(t, &x_ticks);
        text(
            img,
            x.saturating_sub(4 * s.len() as u32),
            y0 + TOP + plot_h + 6,
            &s,
            TEXT,
            1,
        );
    }
    line(
        img,
        (x0 + LEFT, y0 + TOP),
        (x0 + LEFT, y0 + TOP + plot_h),
        AXIS,
    );
    line(
        img,
        (x0 + LEFT, y0 + TOP + plot_h),
        (x0 + LEFT + plot_w, y0 + TOP + plot_h),
        AXIS,
    );
    if let Some((x, label)) = &panel.mark {
        let (mx, _) = at((*x, y_lo));
        for y in (y0 + TOP..y0 + TOP + plot_h).step_by(8) {
            line(img, (mx, y), (mx, y + 3), BEST);
        }
        // Beside the line, at the bottom (the legend holds the top right), on whichever side
        // has room.
        let width = 8 * label.len() as u32;
        let lx = if mx + 6 + width <= x0 + LEFT + plot_w {
            mx + 6
        } else {
            mx.saturating_sub(6 + width)
        };
        text(img, lx, y0 + TOP + plot_h - 14, label, AXIS, 1);
    }
    for c in &panel.curves {
        let pts: Vec<(f64, f64)> = c
            .points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        for pair in pts.windows(2) {
            thick_line(img, at(pair[0]), at(pair[1]), c.color);
        }
        if pts.len() <= 100 {
            for &p in &pts {
                let (x, y) = at(p);
                dot(img, x, y, c.color);
            }
        }
    }
    legend(img, x0 + LEFT + plot_w, y0 + TOP, &panel.curves);
}

/// The legend, in a box at the plot's top-right corner.
fn legend(img: &mut RgbImage, right: u32, top: u32, curves: &[Curve]) {
    if curves.is_empty() {
        return;
    }
    let width = 36 + 8 * curves.iter().map(|c| c.label.len()).max().unwrap_or(0) as u32;
    let height = 8 + 14 * curves.len() as u32;
    let (x, y) = (right.saturating_sub(width + 6), top + 6);
    for yy in y..y + height {
        for xx in x..x + width {
            if let Some(p) = img.get_pixel_mut_checked(xx, yy) {
                *p = Rgb([255, 255, 255]);
            }
        }
    }
    line(img, (x, y), (x + width, y), GRID);
    line(img, (x, y + height), (x + width, y + height), GRID);
    line(img, (x, y), (x, y + height), GRID);
    line(img, (x + width, y), (x + width, y + height), GRID);
    for (i, c) in curves.iter().enumerate() {
        let cy = y + 8 + 14 * i as u32;
        thick_line(img, (x + 6, cy + 3), (x + 26, cy + 3), c.color);
        text(img, x + 32, cy, &c.label, TEXT, 1);
    }
}

/// About `n` round tick values (1, 2 or 5 times a power of ten) covering `lo..=hi`; whole
/// numbers only when `integer`.
pub fn ticks(lo: f64, hi: f64, n: usize, integer: bool) -> Vec<f64> {
    let span = (hi - lo).abs().max(if integer { 1.0 } else { 1e-9 });
    let raw = span / n.max(1) as f64;
    let power = 10f64.powf(raw.log10().floor());
    let mut step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * power);
    if integer {
        step = step.max(1.0).round();
    }
    let first = (lo / step).floor() * step;
    let mut out = Vec::new();
    let mut t = first;
    // Up to the first tick at or above `hi`, so the top of the axis is labelled.
    while out.last().is_none_or(|&last| last < hi - step * 1e-9) || out.len() < 2 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

/// A tick's label, with as many decimals as the tick spacing needs.
fn tick_text(t: f64, all: &[f64]) -> String {
    let step = if all.len() > 1 {
        (all[1] - all[0]).abs()
    } else {
        1.0
    };
    let decimals = (-step.log10().floor()).clamp(0.0, 6.0) as usize;
    if t.abs() >= 1e5 || (t != 0.0 && t.abs() < 1e-4) {
        return format!("{t:.1e}");
    }
    format!("{t:.decimals$}")
}

/// Writes `s` with its top-left at `(x, y)`, each font pixel `scale` pixels wide.
pub fn text(img: &mut RgbImage, x: u32, y: u32, s: &str, color: Rgb<u8>, scale: u32) {
    for (i, c) in s.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(c)
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8u32 {
                if bits >> col & 1 == 1 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let px = x + (i as u32 * 8 + col) * scale + dx;
                            let py = y + row as u32 * scale + dy;
                            if let Some(p) = img.get_pixel_mut_checked(px, py) {
                                *p = color;
                            }
                        }
                    }
                }
            }
        }
    }
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

fn thick_line(img: &mut RgbImage, a: (u32, u32), b: (u32, u32), color: Rgb<u8>) {
    line(img, a, b, color);
    line(img, (a.0, a.1 + 1), (b.0, b.1 + 1), color);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let t = ticks(0.0, 1.0, 6, false);
        let labels: Vec<String> = t.iter().map(|v| tick_text(*v, &t)).collect();
        assert_eq!(labels, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        assert_eq!(ticks(1.0, 5.0, 8, true), [1.0, 2.0, 3.0, 4.0, 5.0]);
        let t = ticks(0.37, 2.31, 6, false);
        assert!(
            t[0] <= 0.37 && *t.last().unwrap() >= 2.31 && t.len() <= 8,
            "{t:?}"
        );
        assert_eq!(tick_text(0.4, &[0.2, 0.4]), "0.4");
        assert_eq!(tick_text(0.05, &[0.0, 0.05]), "0.05");
        assert_eq!(tick_text(2.0, &[1.0, 2.0]), "2");
    }

    #[test]
    fn text_draws_glyph_pixels() {
        let mut img = RgbImage::from_pixel(40, 10, Rgb([255, 255, 255]));
        text(&mut img, 0, 0, "A1", TEXT, 1);
        let inked = img.pixels().filter(|p| **p == TEXT).count();
        assert!(inked > 10, "{inked}");
    }
}
