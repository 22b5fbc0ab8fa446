//! `nasop plot`: charts of a run directory as PNG and SVG: the best value so far against
//! trials (with every trial's value) and against time, and the Pareto front of the first two
//! objectives when there are several.

use super::results::Run;
use crate::engine::{TrialPhase, TrialRecord, pareto_front};
use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SIZE: (u32, u32) = (900, 560);

fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = std::fs::read(FONT).map_err(|e| {
            format!(
                "{FONT}: {e}; install it with `apt-get install fonts-dejavu-core` (or `make data`)"
            )
        })?;
        plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            Box::leak(bytes.into_boxed_slice()),
        )
        .map_err(|_| format!("{FONT} is not a usable font"))
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}

/// Writes the charts into `out` and returns their paths.
/// Best so far against finished trials (with every trial's value) and against time.
fn progress_charts(
    run: &Run,
    values: &[f64],
    best: &[f64],
    by_time: Vec<(f64, f64)>,
) -> Vec<(&'static str, Chart)> {
    let name = &run.experiment.name;
    let metric = &run.experiment.objectives[0].metric;
    let by_trials: Vec<(f64, f64)> = (0..values.len())
        .map(|i| ((i + 1) as f64, best[i]))
        .collect();
    let each: Vec<(f64, f64)> = (0..values.len())
        .map(|i| ((i + 1) as f64, values[i]))
        .collect();
    vec![
        (
            "best_vs_trials",
            Chart {
                title: format!("{name}: best {metric} by finished trials"),
                x: "finished trials".into(),
                y: metric.clone(),
                line: by_trials,
                points: each,
                front: Vec::new(),
            },
        ),
        (
            "best_vs_time",
            Chart {
                title: format!("{name}: best {metric} over time"),
                x: "seconds since start".into(),
                y: metric.clone(),
                line: by_time,
                points: Vec::new(),
                front: Vec::new(),
            },
        ),
    ]
}

/// The first objective against the second for every finished trial, the front drawn.
fn pareto_chart(run: &Run, done: &[&TrialRecord]) -> Chart {
    let name = &run.experiment.name;
    let metric = &run.experiment.objectives[0].metric;
    let second = &run.experiment.objectives[1].metric;
    let pair = |t: &TrialRecord| Some((*t.metrics.get(second)?, *t.metrics.get(metric)?));
    let all: Vec<(f64, f64)> = done.iter().filter_map(|t| pair(t)).collect();
    let mut front: Vec<(f64, f64)> = pareto_front(&run.experiment, &run.trials)
        .into_iter()
        .filter_map(pair)
        .collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    Chart {
        title: format!("{name}: Pareto front"),
        x: second.clone(),
        y: metric.clone(),
        line: front.clone(),
        points: all,
        front,
    }
}

pub fn plot(run: &Run, out: &Path) -> Result<Vec<PathBuf>> {
    register_font()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let objective = &run.experiment.objectives[0];
    let mut done: Vec<&TrialRecord> = run
        .trials
        .iter()
        .filter(|t| t.phase == TrialPhase::Succeeded && t.metrics.contains_key(&objective.metric))
        .collect();
    anyhow::ensure!(
        !done.is_empty(),
        "{}: no trial has succeeded yet, nothing to plot",
        run.experiment.name
    );
    done.sort_by(|a, b| {
        a.finished_at
            .unwrap_or_default()
            .total_cmp(&b.finished_at.unwrap_or_default())
            .then(a.index.cmp(&b.index))
    });
    let start = run
        .trials
        .iter()
        .filter_map(|t| t.started_at)
        .fold(f64::INFINITY, f64::min);
    let values: Vec<f64> = done.iter().map(|t| t.metrics[&objective.metric]).collect();
    let mut best = Vec::with_capacity(values.len());
    for v in &values {
        let prev = best.last().copied().unwrap_or(*v);
        best.push(if objective.oriented(*v) > objective.oriented(prev) {
            *v
        } else {
            prev
        });
    }
    let times: Vec<f64> = done
        .iter()
        .map(|t| t.finished_at.unwrap_or(start) - start)
        .collect();
    let by_time: Vec<(f64, f64)> = times.iter().copied().zip(best.iter().copied()).collect();
    let mut charts = progress_charts(run, &values, &best, by_time);
    if run.experiment.objectives.len() > 1 {
        charts.push(("pareto", pareto_chart(run, &done)));
    }
    let mut written = Vec::new();
    for (file, chart) in &charts {
        let png = out.join(format!("{file}.png"));
        draw(BitMapBackend::new(&png, SIZE).into_drawing_area(), chart)
            .with_context(|| format!("drawing {}", png.display()))?;
        let svg = out.join(format!("{file}.svg"));
        draw(SVGBackend::new(&svg, SIZE).into_drawing_area(), chart)
            .with_context(|| format!("drawing {}", svg.display()))?;
        written.push(png);
        written.push(svg);
    }
    Ok(written)
}

struct Chart {
    title: String,
    x: String,
    y: String,
    /// Drawn as a line (best so far, or the front).
    line: Vec<(f64, f64)>,
    /// Drawn as dots (every trial).
    points: Vec<(f64, f64)>,
    /// Highlighted dots.
    front: Vec<(f64, f64)>,
}

fn range(values: impl Iterator<Item = f64> + Clone) -> std::ops::Range<f64> {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad)..(hi + pad)
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let all = chart.line.iter().chain(&chart.points);
    let xs = range(all.clone().map(|p| p.0));
    let ys = range(all.map(|p| p.1));
    let mut c = ChartBuilder::on(&root)
        .caption(&chart.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(xs, ys)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    c.configure_mesh()
        .x_desc(&chart.x)
        .y_desc(&chart.y)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    c.draw_series(
        chart
            .points
            .iter()
            .map(|p| Circle::new(*p, 3, BLUE.mix(0.45).filled())),
    )
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    c.draw_series(chart.front.iter().map(|p| Circle::new(*p, 5, RED.filled())))
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    c.draw_series(LineSeries::new(
        chart.line.iter().copied(),
        RED.stroke_width(2),
    ))
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}
