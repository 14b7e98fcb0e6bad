//! PNG charts of test-time compute (plotters, the embedded font of [`crate::plots`]):
//! accuracy against samples per problem, against a thinking budget, and against inference
//! FLOPs for several models.

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

/// How the x axis is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XScale {
    Linear,
    /// log2 axis (k = 1, 2, 4, ...).
    Log2,
    /// log10 axis (FLOPs).
    Log10,
}

impl XScale {
    fn to_axis(self, x: f64) -> f64 {
        match self {
            XScale::Linear => x,
            XScale::Log2 => x.log2(),
            XScale::Log10 => x.log10(),
        }
    }
    fn label(self, v: f64) -> String {
        match self {
            XScale::Linear => format!("{v}"),
            // Labels at powers of two only (k = 1, 2, 4, ...).
            XScale::Log2 => {
                if (v - v.round()).abs() < 1e-6 {
                    format!("{}", 2f64.powf(v.round()))
                } else {
                    String::new()
                }
            }
            XScale::Log10 => format!("{:.1e}", 10f64.powf(v)),
        }
    }
}

/// One line of a chart: a colour (index into a palette of 8 distinct colours) and a weight
/// (a thin line with crosses for a second metric of the same model).
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: usize,
    pub thin: bool,
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(228, 26, 28),
    RGBColor(55, 126, 184),
    RGBColor(77, 175, 74),
    RGBColor(152, 78, 163),
    RGBColor(255, 127, 0),
    RGBColor(0, 0, 0),
    RGBColor(166, 86, 40),
    RGBColor(247, 129, 191),
];

/// One chart of named (x, y) series, lines with a marker at every point; the legend sits
/// in a column right of the plot.
pub fn chart(path: &Path, title: &str, x_desc: &str, y_desc: &str, scale: XScale, series: &[Series]) -> Result<()> {
    crate::plots::register_font();
    let series: Vec<(&Series, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| {
            (
                s,
                s.points
                    .iter()
                    .filter(|(x, y)| y.is_finite() && (scale == XScale::Linear || *x > 0.0))
                    .map(|&(x, y)| (scale.to_axis(x), y))
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, p)| !p.is_empty())
        .collect();
    if series.is_empty() {
        return Ok(());
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (_, s) in &series {
        for &(x, y) in s {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
    }
    let xpad = ((x1 - x0) * 0.04).max(0.05);
    let (x0, x1) = (x0 - xpad, x1 + xpad);
    // Accuracies: keep 0..1 in view when the data lies inside it.
    let (y0, y1) = if y0 >= 0.0 && y1 <= 1.0 { (0.0, 1.02) } else { (y0 - 0.05 * (y1 - y0).max(1e-3), y1 + 0.05 * (y1 - y0).max(1e-3)) };
    let root = BitMapBackend::new(path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (plot_area, legend_area) = root.split_horizontally(740);
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(title, ("sans-serif", 18))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| anyhow!("{e}"))?;
    let fmt = |v: &f64| scale.label(*v);
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&fmt)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (s, pts) in &series {
        let color = PALETTE[s.color % PALETTE.len()];
        let width = if s.thin { 1 } else { 2 };
        chart.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(width))).map_err(|e| anyhow!("{e}"))?;
        if s.thin {
            chart.draw_series(pts.iter().map(|&(x, y)| Cross::new((x, y), 4, color.stroke_width(2)))).map_err(|e| anyhow!("{e}"))?;
        } else {
            chart.draw_series(pts.iter().map(|&(x, y)| Circle::new((x, y), 3, color.filled()))).map_err(|e| anyhow!("{e}"))?;
        }
    }
    // The legend: one row per series, in a column of its own so that it covers no line.
    let font = ("sans-serif", 13).into_font();
    for (i, (s, _)) in series.iter().enumerate() {
        let y = 40 + 22 * i as i32;
        let color = PALETTE[s.color % PALETTE.len()];
        let width = if s.thin { 1 } else { 2 };
        legend_area.draw(&PathElement::new(vec![(6, y), (30, y)], color.stroke_width(width))).map_err(|e| anyhow!("{e}"))?;
        if s.thin {
            legend_area.draw(&Cross::new((18, y), 4, color.stroke_width(2))).map_err(|e| anyhow!("{e}"))?;
        } else {
            legend_area.draw(&Circle::new((18, y), 3, color.filled())).map_err(|e| anyhow!("{e}"))?;
        }
        legend_area.draw(&Text::new(s.name.clone(), (36, y - 7), font.clone())).map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

use super::EvalReport;

/// Accuracy against k (log2 axis) for one model: pass@k, maj@k and best-of-k per scorer
/// (an oracle scorer is left out: selecting by the grader is pass@k).
pub fn k_chart(path: &Path, r: &EvalReport) -> Result<()> {
    let pts = |f: &dyn Fn(&super::KPoint) -> Option<f64>| r.curve.iter().filter_map(|p| f(p).map(|y| (p.k as f64, y))).collect::<Vec<_>>();
    let mut series = vec![
        Series { name: "pass@k".into(), points: pts(&|p| Some(p.pass)), color: 0, thin: false },
        Series { name: "maj@k".into(), points: pts(&|p| Some(p.maj)), color: 1, thin: false },
    ];
    let scorers: Vec<String> =
        r.curve.first().map(|p| p.best.keys().filter(|k| !k.ends_with("(oracle)")).cloned().collect()).unwrap_or_default();
    for (i, s) in scorers.iter().enumerate() {
        series.push(Series { name: format!("best-of-k by {s}"), points: pts(&|p| p.best.get(s).copied()), color: 2 + i, thin: false });
    }
    let title = format!("{}: accuracy vs samples per problem ({} drawn)", r.label, r.samples_per_prompt);
    chart(path, &title, "k (samples per problem)", "accuracy", XScale::Log2, &series)
}

/// Accuracy (avg@n, thick) and maj@N (thin) against the thinking tokens used, one point per
/// budget (a report without a budget is the unforced point), one colour per model.
pub fn budget_chart(path: &Path, sweeps: &[(String, Vec<&EvalReport>)]) -> Result<()> {
    let mut series = vec![];
    for (m, (label, reps)) in sweeps.iter().enumerate() {
        series.push(Series {
            name: format!("{label} accuracy (avg@n)"),
            points: reps.iter().map(|r| (r.think.mean_think_tokens, r.accuracy)).collect(),
            color: m,
            thin: false,
        });
        if reps.iter().any(|r| r.majority_accuracy.is_some()) {
            let n = reps.first().map_or(0, |r| r.samples_per_prompt);
            series.push(Series {
                name: format!("{label} maj@{n}"),
                points: reps.iter().filter_map(|r| r.majority_accuracy.map(|x| (r.think.mean_think_tokens, x))).collect(),
                color: m,
                thin: true,
            });
        }
    }
    chart(
        path,
        "accuracy vs thinking tokens used (a point per budget)",
        "mean thinking tokens per sample",
        "accuracy",
        XScale::Linear,
        &series,
    )
}

/// pass@k (thick) and maj@k (thin) against inference FLOPs per problem (log10 axis), one
/// colour per model: a small model's k samples next to a large model's one.
pub fn flops_chart(path: &Path, reports: &[&EvalReport]) -> Result<()> {
    let mut series = vec![];
    for (m, r) in reports.iter().enumerate() {
        series.push(Series {
            name: format!("{} pass@k", r.label),
            points: r.curve.iter().map(|p| (p.flops_per_problem, p.pass)).collect(),
            color: m,
            thin: false,
        });
        series.push(Series {
            name: format!("{} maj@k", r.label),
            points: r.curve.iter().map(|p| (p.flops_per_problem, p.maj)).collect(),
            color: m,
            thin: true,
        });
    }
    chart(path, "accuracy vs inference FLOPs per problem (k = 1, 2, 4, ...)", "FLOPs per problem", "accuracy", XScale::Log10, &series)
}
