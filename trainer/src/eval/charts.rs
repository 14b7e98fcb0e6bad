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
            XScale::Log2 => {
                let x = 2f64.powf(v);
                if (x - x.round()).abs() < 1e-6 { format!("{}", x.round()) } else { format!("{x:.1}") }
            }
            XScale::Log10 => format!("{:.1e}", 10f64.powf(v)),
        }
    }
}

/// One chart of named (x, y) series, lines with a marker at every point.
pub fn chart(path: &Path, title: &str, x_desc: &str, y_desc: &str, scale: XScale, series: &[(String, Vec<(f64, f64)>)]) -> Result<()> {
    crate::plots::register_font();
    let series: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(n, s)| (n.as_str(), s.iter().filter(|(x, y)| y.is_finite() && (scale == XScale::Linear || *x > 0.0)).map(|&(x, y)| (scale.to_axis(x), y)).collect::<Vec<_>>()))
        .filter(|(_, s)| !s.is_empty())
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
    let (y0, y1) = if y0 >= 0.0 && y1 <= 1.0 { (0.0, 1.0) } else { (y0 - 0.05 * (y1 - y0).max(1e-3), y1 + 0.05 * (y1 - y0).max(1e-3)) };
    let root = BitMapBackend::new(path, (860, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
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
    for (i, (name, s)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(s.iter().copied(), color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(s.iter().map(|&(x, y)| Circle::new((x, y), 3, color.filled()))).map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

use super::EvalReport;

fn name(r: &EvalReport, what: &str, several: bool) -> String {
    if several {
        format!("{} {what}", r.label)
    } else {
        what.to_string()
    }
}

/// Accuracy against k (log2 axis): pass@k, maj@k and best-of-k per scorer, per model.
pub fn k_chart(path: &Path, reports: &[&EvalReport]) -> Result<()> {
    let several = reports.len() > 1;
    let mut series = vec![];
    for r in reports {
        let pts = |f: &dyn Fn(&super::KPoint) -> Option<f64>| r.curve.iter().filter_map(|p| f(p).map(|y| (p.k as f64, y))).collect::<Vec<_>>();
        series.push((name(r, "pass@k", several), pts(&|p| Some(p.pass))));
        series.push((name(r, "maj@k", several), pts(&|p| Some(p.maj))));
        let scorers: Vec<String> = r.curve.first().map(|p| p.best.keys().cloned().collect()).unwrap_or_default();
        for s in scorers {
            series.push((name(r, &format!("best-of-k by {s}"), several), pts(&|p| p.best.get(&s).copied())));
        }
    }
    let n = reports.iter().map(|r| r.samples_per_prompt).max().unwrap_or(0);
    chart(path, &format!("accuracy vs samples per problem ({n} drawn)"), "k (samples per problem)", "accuracy", XScale::Log2, &series)
}

/// Accuracy (avg@n) and maj@N against the thinking tokens used, one point per budget, per model.
pub fn budget_chart(path: &Path, sweeps: &[(String, Vec<&EvalReport>)]) -> Result<()> {
    let several = sweeps.len() > 1;
    let mut series = vec![];
    for (label, reps) in sweeps {
        let pre = if several { format!("{label} ") } else { String::new() };
        series.push((format!("{pre}accuracy (avg@n)"), reps.iter().map(|r| (r.think.mean_think_tokens, r.accuracy)).collect()));
        if reps.iter().any(|r| r.majority_accuracy.is_some()) {
            series.push((format!("{pre}maj@N"), reps.iter().filter_map(|r| r.majority_accuracy.map(|m| (r.think.mean_think_tokens, m))).collect()));
        }
    }
    let budgets: Vec<String> = sweeps.first().map(|(_, r)| r.iter().filter_map(|r| r.think.budget.map(|b| b.to_string())).collect()).unwrap_or_default();
    chart(path, &format!("accuracy vs thinking tokens (budgets {})", budgets.join(", ")), "mean thinking tokens per sample", "accuracy", XScale::Linear, &series)
}

/// pass@k and maj@k against inference FLOPs per problem (log10 axis), per model: a small
/// model's k samples next to a large model's one.
pub fn flops_chart(path: &Path, reports: &[&EvalReport]) -> Result<()> {
    let mut series = vec![];
    for r in reports {
        series.push((format!("{} pass@k", r.label), r.curve.iter().map(|p| (p.flops_per_problem, p.pass)).collect()));
        series.push((format!("{} maj@k", r.label), r.curve.iter().map(|p| (p.flops_per_problem, p.maj)).collect()));
    }
    chart(path, "accuracy vs inference FLOPs per problem (k = 1, 2, 4, ...)", "FLOPs per problem", "accuracy", XScale::Log10, &series)
}
