//! The sweep's plots with `plotters`, as PNG and SVG: quality (test accuracy, or the language
//! model's validation bits per byte) against mean k (the Pareto front; seed spread as error bars,
//! dense baselines as horizontal lines) and load CV per method.
//!
//! Text is drawn with an embedded subset of DejaVu Sans (`assets/`, license beside it) through
//! plotters' `ab_glyph` feature, so the plots render on a machine without system fonts.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::plan::Family;
use super::table::{MethodRow, Spread};
use crate::error::ExperimentError;
use crate::workload::Workload;

/// DejaVu Sans cut to ASCII and a few symbols (see `assets/DejaVuSans-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans-subset.ttf");
/// The family name the font is registered under.
const FONT_NAME: &str = "sans-serif";
const SIZE: (u32, u32) = (960, 640);

/// What a workload's plots show: the quality axis of the Pareto plot and the axis labels.
struct Axes {
    /// The quantity on the quality axis ([`Workload::quality`]).
    quality: &'static str,
    /// Factor from the quantity to the axis (100: a fraction shown in percent).
    scale: f64,
    /// The plot's caption after the sweep's title.
    caption: &'static str,
    /// The quality axis' label.
    quality_label: &'static str,
    /// The mean-k axis' label.
    mean_k_label: &'static str,
    /// Decimals and unit of a dense baseline's value in the legend.
    dense_value: (usize, &'static str),
    /// The quality range drawn when no method has a value.
    fallback: (f64, f64),
    /// Room above and below the quality values, in axis units.
    margin: f64,
    /// Where the legend sits (the corner the front leaves empty).
    legend: SeriesLabelPosition,
    /// The load-CV axis' label.
    load_label: &'static str,
}

/// The axes of `workload`'s plots.
fn axes(workload: Workload) -> Axes {
    match workload {
        Workload::Task => Axes {
            quality: workload.quality().quantity,
            scale: 100.0,
            caption: "test accuracy against mean k (mean ± std over seeds)",
            quality_label: "test accuracy (%)",
            mean_k_label: "mean k (experts per token, test set)",
            dense_value: (1, "%"),
            fallback: (50.0, 100.0),
            margin: 1.0,
            legend: SeriesLabelPosition::LowerRight,
            load_label: "coefficient of variation of the per-expert load (test set, mean over layers)",
        },
        Workload::Lm => Axes {
            quality: workload.quality().quantity,
            scale: 1.0,
            caption: "validation bits per byte against mean k (mean ± std over seeds)",
            quality_label: "validation bits per byte (lower is better)",
            mean_k_label: "mean k (experts per token, validation set)",
            dense_value: (3, " bpb"),
            fallback: (1.0, 3.0),
            margin: 0.02,
            legend: SeriesLabelPosition::UpperRight,
            load_label: "coefficient of variation of the per-expert load (validation set, mean over blocks)",
        },
    }
}

/// Writes `pareto.{png,svg}` and `load_cv.{png,svg}` of `workload`'s sweep into `dir`; returns
/// the paths.
pub fn plot_all(
    methods: &[MethodRow],
    workload: Workload,
    title: &str,
    dir: &Path,
) -> Result<Vec<PathBuf>, ExperimentError> {
    // Registering twice (a second sweep in one process) keeps the first registration.
    let _ = plotters::style::register_font(FONT_NAME, FontStyle::Normal, FONT);
    let axes = axes(workload);
    let mut written = Vec::new();
    written.extend(save_both(
        dir,
        "pareto",
        |area| pareto(area, methods, &axes, title),
        |area| pareto(area, methods, &axes, title),
    )?);
    written.extend(save_both(
        dir,
        "load_cv",
        |area| load_cv(area, methods, axes.load_label, title),
        |area| load_cv(area, methods, axes.load_label, title),
    )?);
    Ok(written)
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Draws one plot into `<stem>.png` and `<stem>.svg`.
fn save_both(
    dir: &Path,
    stem: &str,
    draw_png: impl Fn(&DrawingArea<BitMapBackend, Shift>) -> DrawResult,
    draw_svg: impl Fn(&DrawingArea<SVGBackend, Shift>) -> DrawResult,
) -> Result<[PathBuf; 2], ExperimentError> {
    let png = dir.join(format!("{stem}.png"));
    {
        let area = BitMapBackend::new(&png, SIZE).into_drawing_area();
        draw_png(&area).map_err(|e| plot_error(&png, e))?;
        area.present().map_err(|e| plot_error(&png, e))?;
    }
    let svg = dir.join(format!("{stem}.svg"));
    {
        let area = SVGBackend::new(&svg, SIZE).into_drawing_area();
        draw_svg(&area).map_err(|e| plot_error(&svg, e))?;
        area.present().map_err(|e| plot_error(&svg, e))?;
    }
    Ok([png, svg])
}

fn plot_error(path: &Path, error: impl std::fmt::Display) -> ExperimentError {
    ExperimentError::Plot {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}

/// The colour of a method family.
fn color(family: Family) -> RGBColor {
    match family {
        Family::Dense => RGBColor(90, 90, 90),
        Family::TopK => RGBColor(31, 119, 180),
        Family::Threshold => RGBColor(214, 39, 40),
        Family::Budget => RGBColor(255, 127, 14),
        Family::TopP => RGBColor(44, 160, 44),
        Family::ExpertChoice => RGBColor(148, 103, 189),
        Family::Balance => RGBColor(140, 86, 75),
        Family::Capacity => RGBColor(227, 119, 194),
        Family::Shared => RGBColor(23, 190, 207),
    }
}

/// Families drawn as a connected curve (a parameter swept), the others as points.
const CURVES: [Family; 3] = [Family::Threshold, Family::Budget, Family::TopP];

/// A method's quality on the axis (scaled), with its spread.
fn quality(method: &MethodRow, axes: &Axes) -> Option<Spread> {
    let value = method.get(axes.quality)?;
    Some(Spread {
        mean: axes.scale * value.mean,
        std: axes.scale * value.std,
    })
}

/// Quality against mean k, every routed method with its seed spread in both directions, each
/// swept family joined by a line, the dense baselines as horizontal lines.
fn pareto<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    methods: &[MethodRow],
    axes: &Axes,
    title: &str,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE)?;
    let routed: Vec<(&MethodRow, (Spread, Spread))> = methods
        .iter()
        .filter_map(|m| Some((m, (m.get("mean_k")?, quality(m, axes)?))))
        .collect();
    let dense: Vec<(&MethodRow, Spread)> = methods
        .iter()
        .filter(|m| m.family == Family::Dense)
        .filter_map(|m| Some((m, quality(m, axes)?)))
        .collect();
    let ks = routed
        .iter()
        .flat_map(|(_, (k, _))| [k.mean - k.std, k.mean + k.std]);
    let (k_min, k_max) = bounds(ks, (1.0, 2.0));
    let values = routed
        .iter()
        .flat_map(|(_, (_, a))| [a.mean - a.std, a.mean + a.std])
        .chain(dense.iter().map(|(_, a)| a.mean));
    let (low, high) = bounds(values, axes.fallback);
    let x_range = (k_min - 0.08)..(k_max + 0.08);
    let y_range = (low - axes.margin)..(high + axes.margin);

    let mut chart = ChartBuilder::on(area)
        .caption(format!("{title}: {}", axes.caption), (FONT_NAME, 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range.clone(), y_range)?;
    chart
        .configure_mesh()
        .x_desc(axes.mean_k_label)
        .y_desc(axes.quality_label)
        .label_style((FONT_NAME, 14))
        .axis_desc_style((FONT_NAME, 16))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;

    let (digits, unit) = axes.dense_value;
    for (i, (method, value)) in dense.iter().enumerate() {
        let style = [color(Family::Dense), BLACK][i % 2].stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(
                [(x_range.start, value.mean), (x_range.end, value.mean)],
                8,
                6,
                style,
            ))?
            .label(format!("{} {:.*}{unit}", method.method, digits, value.mean))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
    }

    let mut families: Vec<Family> = routed.iter().map(|(m, _)| m.family).collect();
    families.dedup();
    for family in families {
        let style = color(family);
        let mut members: Vec<&(&MethodRow, (Spread, Spread))> =
            routed.iter().filter(|(m, _)| m.family == family).collect();
        members.sort_by(|a, b| a.1.0.mean.total_cmp(&b.1.0.mean));
        if CURVES.contains(&family) && members.len() > 1 {
            chart.draw_series(LineSeries::new(
                members.iter().map(|(_, (k, a))| (k.mean, a.mean)),
                style.stroke_width(2),
            ))?;
        }
        chart.draw_series(members.iter().map(|(_, (k, a))| {
            ErrorBar::new_vertical(k.mean, a.mean - a.std, a.mean, a.mean + a.std, style, 8)
        }))?;
        chart.draw_series(members.iter().map(|(_, (k, a))| {
            ErrorBar::new_horizontal(a.mean, k.mean - k.std, k.mean, k.mean + k.std, style, 8)
        }))?;
        chart
            .draw_series(
                members
                    .iter()
                    .map(|(_, (k, a))| Circle::new((k.mean, a.mean), 5, style.filled())),
            )?
            .label(family.label())
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, style.filled()));
        chart.draw_series(members.iter().map(|(m, (k, a))| {
            Text::new(
                short_label(m),
                (k.mean, a.mean),
                (FONT_NAME, 12).into_font().color(&RGBColor(60, 60, 60)),
            )
        }))?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT_NAME, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .position(axes.legend.clone())
        .draw()?;
    Ok(())
}

/// Load coefficient of variation per routed method (mean ± std over seeds), as horizontal bars;
/// `label` says over what it was measured.
fn load_cv<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    methods: &[MethodRow],
    label: &str,
    title: &str,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE)?;
    let rows: Vec<(&MethodRow, Spread)> = methods
        .iter()
        .filter_map(|m| Some((m, m.get("load_cv")?)))
        .collect();
    let most = rows.iter().map(|(_, s)| s.mean + s.std).fold(0.1, f64::max);
    let count = rows.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{title}: expert load CV per method (lower is more balanced)"),
            (FONT_NAME, 20),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(150)
        .build_cartesian_2d(0.0..most * 1.1, (0..count - 1).into_segmented())?;
    let names: Vec<String> = rows.iter().map(|(m, _)| m.method.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(count)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc(label)
        .label_style((FONT_NAME, 13))
        .axis_desc_style((FONT_NAME, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    chart.draw_series(rows.iter().enumerate().map(|(i, (m, s))| {
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (s.mean, SegmentValue::Exact(i + 1)),
            ],
            color(m.family).mix(0.8).filled(),
        );
        bar.set_margin(4, 4, 0, 0);
        bar
    }))?;
    chart.draw_series(rows.iter().enumerate().map(|(i, (_, s))| {
        ErrorBar::new_horizontal(
            SegmentValue::CenterOf(i),
            (s.mean - s.std).max(0.0),
            s.mean,
            s.mean + s.std,
            BLACK.stroke_width(1),
            8,
        )
    }))?;
    Ok(())
}

/// A point's label: the swept parameter (`0.5` of `threshold-0.5`), or the method's name.
fn short_label(method: &MethodRow) -> String {
    let label = match method.family {
        Family::Threshold | Family::TopP | Family::Budget => {
            method.method.rsplit('-').next().unwrap_or(&method.method)
        }
        _ => &method.method,
    };
    format!("  {label}")
}

/// Smallest and largest of `values`, or `fallback` when there are none.
fn bounds(values: impl Iterator<Item = f64>, fallback: (f64, f64)) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo <= hi { (lo, hi) } else { fallback }
}
