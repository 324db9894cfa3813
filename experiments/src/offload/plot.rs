//! The curve the offloading study asks for: speed-up of prefetching over on-demand loading
//! against prediction accuracy, per shape (decode solid, time to first token dashed, the
//! oracle's speed-up as a dotted level), as PNG and SVG with the embedded font.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::replay::PolicyResult;
use crate::error::ExperimentError;

/// DejaVu Sans cut to ASCII and a few symbols (see `assets/DejaVuSans-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans-subset.ttf");
const FONT_NAME: &str = "sans-serif";
const SIZE: (u32, u32) = (960, 640);
/// File stem of the plot.
pub const STEM: &str = "speedup_vs_accuracy";

type DrawResult = Result<(), Box<dyn std::error::Error>>;

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Writes `speedup_vs_accuracy.{png,svg}` into `dir` from the rows of every shape.
pub fn plot(
    rows: &[PolicyResult],
    title: &str,
    dir: &Path,
) -> Result<Vec<PathBuf>, ExperimentError> {
    let _ = plotters::style::register_font(FONT_NAME, FontStyle::Normal, FONT);
    let png = dir.join(format!("{STEM}.png"));
    {
        let area = BitMapBackend::new(&png, SIZE).into_drawing_area();
        draw(&area, rows, title).map_err(|e| plot_error(&png, e))?;
        area.present().map_err(|e| plot_error(&png, e))?;
    }
    let svg = dir.join(format!("{STEM}.svg"));
    {
        let area = SVGBackend::new(&svg, SIZE).into_drawing_area();
        draw(&area, rows, title).map_err(|e| plot_error(&svg, e))?;
        area.present().map_err(|e| plot_error(&svg, e))?;
    }
    Ok(vec![png, svg])
}

fn plot_error(path: &Path, error: impl std::fmt::Display) -> ExperimentError {
    ExperimentError::Plot {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}

fn draw<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    rows: &[PolicyResult],
    title: &str,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE)?;
    let mut shapes: Vec<&str> = rows.iter().map(|r| r.shape.as_str()).collect();
    shapes.dedup();
    let curve = |shape: &str| -> Vec<&PolicyResult> {
        let mut points: Vec<&PolicyResult> = rows
            .iter()
            .filter(|r| r.shape == shape && r.accuracy.is_some())
            .collect();
        points.sort_by(|a, b| {
            a.accuracy
                .unwrap_or_default()
                .total_cmp(&b.accuracy.unwrap_or_default())
        });
        points
    };
    let oracle = |shape: &str| {
        rows.iter()
            .find(|r| r.shape == shape && r.policy == "oracle" && r.accuracy.is_none())
    };
    let values = rows
        .iter()
        .filter(|r| r.accuracy.is_some() || r.policy == "oracle")
        .flat_map(|r| [r.speedup_decode, r.speedup_ttft])
        .filter(|v| v.is_finite());
    let (lo, hi) = values.fold((1.0f64, 1.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let margin = ((hi - lo) * 0.1).max(0.05);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{title}: speed-up of prefetching over on-demand loading"),
            (FONT_NAME, 20),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.02f64..1.02f64, (lo - margin)..(hi + margin))?;
    chart
        .configure_mesh()
        .x_desc("prediction accuracy (share of the needed experts predicted; as many wrong ones as missed)")
        .y_desc("on-demand latency / prefetch latency")
        .label_style((FONT_NAME, 14))
        .axis_desc_style((FONT_NAME, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    chart.draw_series(DashedLineSeries::new(
        [(-0.02, 1.0), (1.02, 1.0)],
        4,
        4,
        RGBColor(120, 120, 120).stroke_width(1),
    ))?;
    for (i, shape) in shapes.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points = curve(shape);
        let decode: Vec<(f64, f64)> = points
            .iter()
            .map(|r| (r.accuracy.unwrap_or_default(), r.speedup_decode))
            .collect();
        let ttft: Vec<(f64, f64)> = points
            .iter()
            .map(|r| (r.accuracy.unwrap_or_default(), r.speedup_ttft))
            .collect();
        chart
            .draw_series(LineSeries::new(decode.clone(), color.stroke_width(2)))?
            .label(format!("{shape}: decode step"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(decode.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        chart
            .draw_series(DashedLineSeries::new(
                ttft.clone(),
                8,
                5,
                color.stroke_width(2),
            ))?
            .label(format!("{shape}: time to first token"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(1)));
        chart.draw_series(
            ttft.iter()
                .map(|&p| TriangleMarker::new(p, 5, color.filled())),
        )?;
        if let Some(oracle) = oracle(shape) {
            let level = oracle.speedup_decode;
            chart
                .draw_series(DashedLineSeries::new(
                    [(-0.02, level), (1.02, level)],
                    2,
                    4,
                    color.mix(0.6).stroke_width(1),
                ))?
                .label(format!("{shape}: oracle, decode ({level:.2}x)"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.mix(0.6)));
        }
    }
    chart
        .configure_series_labels()
        .label_font((FONT_NAME, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}
