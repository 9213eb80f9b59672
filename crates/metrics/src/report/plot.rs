//! Drawing one panel (a titled chart of a few series) onto a `plotters` bitmap area, with text rendered by
//! `ab_glyph` from the bundled DejaVu Sans font: no fontconfig, no freetype, no system fonts.

use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// The bundled font (Bitstream Vera licence, see `assets/LICENSE-DejaVu.txt`).
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
/// The family name panels ask plotters for.
const FAMILY: &str = "sans-serif";

/// Colours for successive series: a colour-blind-friendly palette (Okabe–Ito).
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
];

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesKind {
    /// Faint raw points with a smoothed line over them (per-step training metrics).
    RawAndSmoothed,
    /// A line through marked points (sparse evaluation results).
    Markers,
}

/// One labelled series of (step, value) points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// (step, value) points, sorted by step.
    pub points: Vec<(f64, f64)>,
    /// How to draw it.
    pub kind: SeriesKind,
}

/// A chart: a file stem, a title, a y-axis description and its series.
#[derive(Debug, Clone)]
pub struct Panel {
    /// File stem of its PNG (`plots/<stem>.png`).
    pub stem: String,
    /// Chart title.
    pub title: String,
    /// Y-axis description.
    pub y_desc: String,
    /// Whether the y axis is a fraction, drawn from 0 to 1.
    pub unit_range: bool,
    /// What to draw.
    pub series: Vec<Series>,
}

/// Registers the bundled font with plotters once per process.
pub fn ensure_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            register_font(FAMILY, FontStyle::Normal, FONT)
                .map_err(|_| "the bundled DejaVu Sans font did not parse".to_string())
        })
        .clone()
}

/// Series shorter than this are drawn unsmoothed.
const SMOOTH_MIN_POINTS: usize = 10;

/// Centred moving average: each point becomes the mean of the points up to `h` either side, with `h`
/// about 4 % of the series (none below 10 points) and shrunk symmetrically at the ends. Unlike an
/// exponential average it does not lag behind a trend, so the line sits on the cloud of raw points.
pub fn smooth(values: &[f64]) -> Vec<f64> {
    let n = values.len();
    let h = if n < SMOOTH_MIN_POINTS { 0 } else { (n / 25).max(1) };
    let prefix: Vec<f64> = std::iter::once(0.0)
        .chain(values.iter().scan(0.0, |acc, v| {
            *acc += v;
            Some(*acc)
        }))
        .collect();
    (0..n)
        .map(|i| {
            let r = h.min(i).min(n - 1 - i);
            (prefix[i + r + 1] - prefix[i - r]) / (2 * r + 1) as f64
        })
        .collect()
}

/// Draws `panel` onto `area` (filled white first).
pub fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel) -> Result<(), String> {
    area.fill(&WHITE).map_err(|e| e.to_string())?;
    let (x_range, y_range) = ranges(panel);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FAMILY, 24).into_font().color(&BLACK))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(76)
        .build_cartesian_2d(x_range.clone(), y_range.clone())
        .map_err(|e| e.to_string())?;
    let y_fmt = tick_formatter(y_range.end - y_range.start);
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(panel.y_desc.as_str())
        .axis_desc_style((FAMILY, 16))
        .label_style((FAMILY, 14))
        .x_labels(8)
        .y_labels(7)
        .x_label_formatter(&|x| format!("{}", x.round() as i64))
        .y_label_formatter(&y_fmt)
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(205, 205, 205))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, series) in panel.series.iter().enumerate() {
        draw_series(&mut chart, series, PALETTE[i % PALETTE.len()])?;
    }
    if panel.series.len() > 1 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

fn draw_series<DB: DrawingBackend>(chart: &mut Chart<'_, DB>, series: &Series, color: RGBColor) -> Result<(), String> {
    let legend_color = color;
    let line_style = color.stroke_width(2);
    let line: Vec<(f64, f64)> = match series.kind {
        SeriesKind::RawAndSmoothed => {
            // Few points are not smoothed: mark each one plainly instead of as a faint cloud.
            let (radius, raw_style) = if series.points.len() < SMOOTH_MIN_POINTS {
                (3, color.filled())
            } else {
                (2, color.mix(0.35).filled())
            };
            chart
                .draw_series(series.points.iter().map(|&p| Circle::new(p, radius, raw_style)))
                .map_err(|e| e.to_string())?;
            let ys: Vec<f64> = series.points.iter().map(|p| p.1).collect();
            series.points.iter().map(|p| p.0).zip(smooth(&ys)).collect()
        }
        SeriesKind::Markers => {
            chart
                .draw_series(series.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(|e| e.to_string())?;
            series.points.clone()
        }
    };
    chart
        .draw_series(LineSeries::new(line, line_style))
        .map_err(|e| e.to_string())?
        .label(series.label.as_str())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], legend_color.stroke_width(2)));
    Ok(())
}

/// X and y ranges covering every point, padded; degenerate ranges are widened so the axes still draw.
fn ranges(panel: &Panel) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let points = || panel.series.iter().flat_map(|s| s.points.iter());
    let (x_min, x_max) = bounds(points().map(|p| p.0));
    let (y_min, y_max) = bounds(points().map(|p| p.1));
    let x_range = if x_max > x_min { x_min..x_max } else { x_min - 1.0..x_max + 1.0 };
    if panel.unit_range && y_min >= 0.0 && y_max <= 1.0 {
        return (x_range, 0.0..1.0);
    }
    let span = y_max - y_min;
    let pad = if span > 0.0 { span * 0.06 } else { y_max.abs().max(1.0) * 0.1 };
    (x_range, y_min - pad..y_max + pad)
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo.is_finite() && hi.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    }
}

/// Tick labels with as many decimals as the axis span needs; scientific notation for tiny or huge spans.
fn tick_formatter(span: f64) -> impl Fn(&f64) -> String {
    move |v: &f64| {
        if span > 0.0 && !(1e-3..1e6).contains(&span) {
            format!("{v:.2e}")
        } else {
            // About seven labels: enough decimals to tell neighbouring ticks apart.
            let tick = span / 7.0;
            let decimals = if tick >= 1.0 { 0 } else { (-tick.log10().floor()).clamp(0.0, 4.0) as usize };
            format!("{v:.decimals$}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_is_identity_for_short_series_and_unbiased_on_trends() {
        assert_eq!(smooth(&[1.0, 5.0, 2.0]), vec![1.0, 5.0, 2.0]);
        let line: Vec<f64> = (0..100).map(|i| 2.0 * i as f64 + 1.0).collect();
        let s = smooth(&line);
        assert!(s.iter().zip(&line).all(|(a, b)| (a - b).abs() < 1e-9), "no lag on a linear trend");
        let zigzag: Vec<f64> = (0..100).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let s = smooth(&zigzag);
        // Window 2*4+1 = 9 points: the mean of an alternating ±1 run of odd length is ±1/9.
        assert!((s[50].abs() - 1.0 / 9.0).abs() < 1e-12, "{}", s[50]);
        assert_eq!((s[0], s[99]), (1.0, -1.0), "ends keep the raw value");
    }

    #[test]
    fn tick_labels_adapt_to_the_span() {
        assert_eq!(tick_formatter(0.5)(&0.25), "0.25");
        assert_eq!(tick_formatter(1.5)(&0.5), "0.5");
        assert_eq!(tick_formatter(0.045)(&0.01), "0.010");
        assert_eq!(tick_formatter(200.0)(&123.4), "123");
        assert_eq!(tick_formatter(1e-5)(&3e-6), "3.00e-6");
    }

    #[test]
    fn font_registers() {
        ensure_font().unwrap();
        ensure_font().unwrap();
    }
}
