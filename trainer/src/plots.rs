//! PNG plots of a run's metrics.jsonl (reward total and per module, held-out accuracy,
//! completion length, KL) with plotters. The font is embedded (DejaVu Sans Mono), so no
//! system fonts are needed.

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
static REGISTER: Once = Once::new();

pub(crate) fn register_font() {
    REGISTER.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// (step, value) series by metric name, from metrics.jsonl.
pub fn read_series(metrics: &Path) -> Result<BTreeMap<String, Vec<(f64, f64)>>> {
    let text = std::fs::read_to_string(metrics).map_err(|e| anyhow!("reading {}: {e}", metrics.display()))?;
    let mut out: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for line in text.lines() {
        let Ok(Value::Object(o)) = serde_json::from_str::<Value>(line) else { continue };
        let Some(step) = o.get("step").and_then(Value::as_f64) else { continue };
        for (k, v) in &o {
            if let Some(x) = v.as_f64().filter(|x| x.is_finite()) {
                if k != "step" {
                    out.entry(k.clone()).or_default().push((step, x));
                }
            }
        }
    }
    Ok(out)
}

/// One PNG with several named series against step.
pub fn line_chart(path: &Path, title: &str, series: &[(&str, &[(f64, f64)])]) -> Result<()> {
    register_font();
    let series: Vec<_> = series.iter().filter(|(_, s)| !s.is_empty()).collect();
    if series.is_empty() {
        return Ok(());
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (_, s) in &series {
        for &(x, y) in s.iter() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let root = BitMapBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| anyhow!("{e}"))?;
    chart.configure_mesh().x_desc("step").label_style(("sans-serif", 14)).draw().map_err(|e| anyhow!("{e}"))?;
    for (i, (name, s)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(s.iter().copied(), color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        if s.len() < 30 {
            chart.draw_series(s.iter().map(|&(x, y)| Circle::new((x, y), 3, color.filled()))).map_err(|e| anyhow!("{e}"))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

/// Writes reward.png, accuracy.png, completion_length.png and kl.png for a GRPO run folder.
pub fn plot_run(run_dir: &Path, out_dir: &Path) -> Result<()> {
    let s = read_series(&run_dir.join("metrics.jsonl"))?;
    std::fs::create_dir_all(out_dir)?;
    let get = |k: &str| s.get(k).map(|v| v.as_slice()).unwrap_or(&[]);
    let mut reward: Vec<(String, &[(f64, f64)])> = vec![("total".into(), get("reward"))];
    for (k, v) in &s {
        if let Some(name) = k.strip_prefix("rewards/").and_then(|r| r.strip_suffix("/mean")) {
            reward.push((name.to_string(), v.as_slice()));
        }
    }
    let reward_refs: Vec<(&str, &[(f64, f64)])> = reward.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    line_chart(&out_dir.join("reward.png"), "reward (train batch)", &reward_refs)?;
    let mut acc: Vec<(String, &[(f64, f64)])> = vec![];
    for (k, v) in &s {
        if let Some(name) = k.strip_prefix("eval/rewards/").and_then(|r| r.strip_suffix("/mean")) {
            acc.push((format!("held-out {name}"), v.as_slice()));
        }
    }
    let acc_refs: Vec<(&str, &[(f64, f64)])> = acc.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    line_chart(&out_dir.join("heldout.png"), "held-out evaluation", &acc_refs)?;
    line_chart(
        &out_dir.join("completion_length.png"),
        "completion length (tokens)",
        &[("mean", get("completions/mean_length")), ("min", get("completions/min_length")), ("max", get("completions/max_length"))],
    )?;
    line_chart(&out_dir.join("kl.png"), "KL to reference (k3)", &[("kl", get("kl"))])?;
    Ok(())
}
