//! `prediction.{png,svg}`: recall (solid) and precision (dashed) against block distance for every
//! predictor, per token (left) and on each prefill batch's union of experts (right).

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::PredictionReport;
use crate::error::ExperimentError;

/// DejaVu Sans cut to ASCII and a few symbols (see `assets/DejaVuSans-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans-subset.ttf");
/// The family name the font is registered under.
const FONT_NAME: &str = "sans-serif";
const SIZE: (u32, u32) = (1200, 560);
/// The plot's file name without extension.
pub const STEM: &str = "prediction";

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Writes `prediction.png` and `prediction.svg` into `dir`; returns their paths.
pub fn plot(report: &PredictionReport, dir: &Path) -> Result<Vec<PathBuf>, ExperimentError> {
    let _ = plotters::style::register_font(FONT_NAME, FontStyle::Normal, FONT);
    let png = dir.join(format!("{STEM}.png"));
    {
        let area = BitMapBackend::new(&png, SIZE).into_drawing_area();
        draw(&area, report).map_err(|e| plot_error(&png, e))?;
        area.present().map_err(|e| plot_error(&png, e))?;
    }
    let svg = dir.join(format!("{STEM}.svg"));
    {
        let area = SVGBackend::new(&svg, SIZE).into_drawing_area();
        draw(&area, report).map_err(|e| plot_error(&svg, e))?;
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

/// The colour of the `i`-th predictor.
fn color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 5] = [
        RGBColor(214, 39, 40),
        RGBColor(255, 127, 14),
        RGBColor(31, 119, 180),
        RGBColor(90, 90, 90),
        RGBColor(44, 160, 44),
    ];
    COLORS[i % COLORS.len()]
}

fn draw<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, report: &PredictionReport) -> DrawResult
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE)?;
    let batch = report
        .predictors
        .first()
        .and_then(|p| p.distances.first())
        .map_or(0, |d| d.all.batch_size);
    let panels = area.split_evenly((1, 2));
    panel(&panels[0], report, "per token", false)?;
    panel(
        &panels[1],
        report,
        &format!("union of each {batch}-token batch"),
        true,
    )?;
    Ok(())
}

/// One panel: recall and precision (percent) of every predictor against distance.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    report: &PredictionReport,
    title: &str,
    batch: bool,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let max_distance = report.max_distance.max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{}: predicted experts, {title}", report.run),
            (FONT_NAME, 18),
        )
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0.8..max_distance + 0.2, 0.0..102.0)?;
    chart
        .configure_mesh()
        .x_labels(report.max_distance.max(1))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("block distance j (predicting block l + j from block l)")
        .y_desc("percent (solid: recall, dashed: precision)")
        .label_style((FONT_NAME, 13))
        .axis_desc_style((FONT_NAME, 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for (i, predictor) in report.predictors.iter().enumerate() {
        let style = color(i);
        let points = |precision: bool| -> Vec<(f64, f64)> {
            predictor
                .distances
                .iter()
                .map(|d| {
                    let s = &d.all;
                    let value = match (batch, precision) {
                        (false, false) => s.recall,
                        (false, true) => s.precision,
                        (true, false) => s.batch_recall,
                        (true, true) => s.batch_precision,
                    };
                    (d.distance as f64, 100.0 * value)
                })
                .collect()
        };
        let recall = points(false);
        chart
            .draw_series(LineSeries::new(recall.clone(), style.stroke_width(2)))?
            .label(predictor.name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style.stroke_width(2)));
        chart.draw_series(recall.iter().map(|&p| Circle::new(p, 4, style.filled())))?;
        let precision = points(true);
        chart.draw_series(DashedLineSeries::new(
            precision.clone(),
            6,
            4,
            style.stroke_width(2),
        ))?;
        chart.draw_series(precision.iter().map(|&p| Circle::new(p, 3, style)))?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT_NAME, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .position(SeriesLabelPosition::LowerLeft)
        .draw()?;
    Ok(())
}
