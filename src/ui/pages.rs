//! The pages: the experiments list, one experiment, one trial. Each returns the content of
//! `<main>`; the server puts it in the frame (or sends it alone for a live refresh).

use super::html::{age, esc, url};
use super::model::{Detail, Event, Summary, Trial, phase_name, stage_name, value_of};
use super::shape::{self, Point};
use super::svg::{self, Axis, Chart, Layer, number};
use crate::engine::{TrialPhase, TrialRecord};
use nasop_core::arch::Architecture;
use nasop_core::space::{Domain, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// Rows of the trial table per page.
pub const PAGE_ROWS: usize = 50;
/// A chart draws at most one point per cell of this grid (about 7 × 7 pixels each).
const GRID: (usize, usize) = (80, 30);
/// Lines parallel coordinates draws at most.
const PARALLEL_LINES: usize = 600;

pub fn experiment_href(s: &Summary) -> String {
    format!("/e/{}/{}", url(&s.key.namespace), url(&s.key.name))
}

/// The list's filters.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub phase: String,
    #[serde(default)]
    pub namespace: String,
}

pub fn list(all: &[Summary], q: &ListQuery, now: f64) -> String {
    let mut s = String::new();
    let phases: BTreeSet<&str> = all.iter().map(|e| e.phase.as_str()).collect();
    let namespaces: BTreeSet<&str> = all.iter().map(|e| e.key.namespace.as_str()).collect();
    let shown: Vec<&Summary> = all
        .iter()
        .filter(|e| q.phase.is_empty() || e.phase == q.phase)
        .filter(|e| q.namespace.is_empty() || e.key.namespace == q.namespace)
        .collect();
    let _ = write!(
        s,
        r#"<h1>Experiments <span class="count">{}</span></h1><form class="filters" method="get" data-auto>"#,
        shown.len()
    );
    select(&mut s, "phase", "phase", &phases, &q.phase);
    select(&mut s, "namespace", "namespace", &namespaces, &q.namespace);
    s.push_str(r#"<noscript><button>filter</button></noscript></form>"#);
    if all.is_empty() {
        s.push_str(r#"<p class="empty">No experiments here yet.</p>"#);
        return s;
    }
    s.push_str(
        r#"<table class="data nav" id="experiments"><thead><tr><th>NAME</th><th>NAMESPACE</th><th>PHASE</th><th>STRATEGY</th><th>PROGRESS</th><th class="num">BEST</th><th class="num">AGE</th></tr></thead><tbody>"#,
    );
    for e in shown {
        let href = experiment_href(e);
        let _ = write!(
            s,
            r#"<tr tabindex="0" data-href="{href}"><td><a href="{href}">{}</a>{}</td><td>{}</td><td><span class="phase {}">{}</span></td><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
            esc(&e.key.name),
            e.problem
                .as_deref()
                .map(|p| format!(r#" <span class="warn" title="{}">⚠</span>"#, esc(p)))
                .unwrap_or_default(),
            esc(&e.key.namespace),
            esc(&e.phase),
            esc(&e.phase),
            esc(&e.strategy),
            progress(e.done, e.running, e.total),
            e.best_value.map(number).unwrap_or_default(),
            e.created.map(|c| age(now - c)).unwrap_or_default(),
        );
    }
    s.push_str("</tbody></table>");
    s
}

fn progress(done: u32, running: u32, total: u32) -> String {
    let pct = if total > 0 {
        (done as f64 / total as f64 * 100.0).min(100.0)
    } else {
        0.0
    };
    format!(
        r#"<span class="progress" title="done/running/total"><span class="bar"><span style="width:{pct:.0}%"></span></span>{done}/{running}/{total}</span>"#
    )
}

fn select(s: &mut String, name: &str, label: &str, options: &BTreeSet<&str>, current: &str) {
    let _ = write!(
        s,
        r#"<label>{label} <select name="{name}"><option value="">all</option>"#
    );
    for o in options {
        let _ = write!(
            s,
            r#"<option{}>{}</option>"#,
            if *o == current { " selected" } else { "" },
            esc(o)
        );
    }
    s.push_str("</select></label>");
}

/// The trial table's sorting, filters and page.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct TableQuery {
    #[serde(default = "default_sort")]
    pub sort: String,
    #[serde(default)]
    pub desc: bool,
    #[serde(default)]
    pub phase: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub page: usize,
}

fn default_sort() -> String {
    "index".into()
}

impl Default for TableQuery {
    fn default() -> Self {
        TableQuery {
            sort: default_sort(),
            desc: false,
            phase: String::new(),
            reason: String::new(),
            q: String::new(),
            page: 0,
        }
    }
}

impl TableQuery {
    fn href(&self, change: impl FnOnce(&mut TableQuery)) -> String {
        let mut q = self.clone();
        change(&mut q);
        let mut out = format!("?sort={}", url(&q.sort));
        if q.desc {
            out.push_str("&desc=true");
        }
        for (k, v) in [("phase", &q.phase), ("reason", &q.reason), ("q", &q.q)] {
            if !v.is_empty() {
                let _ = write!(out, "&{k}={}", url(v));
            }
        }
        if q.page > 0 {
            let _ = write!(out, "&page={}", q.page);
        }
        out + "#trials"
    }
}

fn duration(t: &TrialRecord, now: f64) -> Option<f64> {
    let start = t.started_at?;
    Some(t.finished_at.unwrap_or(now) - start)
}

/// The experiment page.
pub fn experiment(d: &Detail, events: &[Event], q: &TableQuery, now: f64) -> String {
    let records = d.records();
    let e = &d.summary;
    let base = format!("{}/", experiment_href(e));
    let objective = d.objective().to_string();
    let maximize = d.experiment.objectives[0].maximize;
    let best = d.best();
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<div class="title"><h1>{}</h1><span class="phase {}">{}</span></div><dl class="facts"><dt>namespace</dt><dd>{}</dd><dt>strategy</dt><dd>{}</dd><dt>progress</dt><dd>{}</dd><dt>objective</dt><dd>{} {}</dd><dt>best</dt><dd>{}</dd><dt>age</dt><dd>{}</dd></dl>"#,
        esc(&e.key.name),
        esc(&e.phase),
        esc(&e.phase),
        esc(&e.key.namespace),
        esc(&e.strategy),
        progress(e.done, e.running, e.total),
        if maximize { "maximize" } else { "minimize" },
        esc(&objective),
        match best.and_then(|b| d.trial(b)) {
            Some(t) => format!(
                r#"<a href="{base}{}">{}</a> (trial {})"#,
                t.record.index,
                value_of(&d.experiment, &t.record)
                    .map(number)
                    .unwrap_or_default(),
                t.record.index
            ),
            None => "none yet".into(),
        },
        e.created.map(|c| age(now - c)).unwrap_or_default(),
    );
    if let Some(p) = &e.problem {
        let _ = write!(s, r#"<p class="problem-inline">{}</p>"#, esc(p));
    }
    if let Some(m) = &d.message {
        let _ = write!(s, r#"<p class="message">{}</p>"#, esc(m));
    }
    if let Some(t) = best.and_then(|b| d.trial(b))
        && let Some(a) = &d.artifact(t)
    {
        let _ = write!(
            s,
            r#"<p class="artifact">Best trial's model: <code id="artifact">{}</code></p>"#,
            esc(a)
        );
    }
    if !d.conditions.is_empty() {
        s.push_str(r#"<table class="data compact" id="conditions"><thead><tr><th>CONDITION</th><th>STATUS</th><th>REASON</th><th>MESSAGE</th></tr></thead><tbody>"#);
        for c in &d.conditions {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&c.type_),
                esc(&c.status),
                esc(&c.reason),
                esc(&c.message)
            );
        }
        s.push_str("</tbody></table>");
    }
    charts(&mut s, d, records, &base);
    trial_table(&mut s, d, records, q, &base, now);
    finalists(&mut s, d, &base);
    if !events.is_empty() {
        s.push_str(r#"<h2>Recent events</h2><table class="data compact" id="events"><thead><tr><th class="num">AGE</th><th>TYPE</th><th>REASON</th><th>MESSAGE</th></tr></thead><tbody>"#);
        for ev in events.iter().rev().take(20) {
            let _ = write!(
                s,
                r#"<tr><td class="num">{}</td><td>{}</td><td>{}</td><td>{}{}</td></tr>"#,
                ev.at.map(|a| age(now - a)).unwrap_or_default(),
                esc(&ev.type_),
                esc(&ev.reason),
                esc(&ev.message),
                if ev.count > 1 {
                    format!(" (×{})", ev.count)
                } else {
                    String::new()
                }
            );
        }
        s.push_str("</tbody></table>");
    }
    s
}

fn charts(s: &mut String, d: &Detail, records: &[TrialRecord], base: &str) {
    let exp = &d.experiment;
    let objective = d.objective();
    let maximize = exp.objectives[0].maximize;
    let t0 = d
        .started
        .or_else(|| {
            records
                .iter()
                .filter_map(|t| t.started_at)
                .min_by(f64::total_cmp)
        })
        .unwrap_or(0.0);
    // Minutes, or seconds for a search shorter than two minutes.
    let span = records
        .iter()
        .filter_map(|t| t.finished_at)
        .fold(0.0f64, |m, f| m.max(f - t0));
    let (unit_s, time_label) = if span < 120.0 {
        (1.0, "seconds since start")
    } else {
        (60.0, "minutes since start")
    };
    // Every ended search trial with a value: by its end time and by its order.
    let mut by_time = Vec::new();
    let mut by_trial = Vec::new();
    for t in records.iter().filter(|t| !t.phase.is_active()) {
        let Some(v) = value_of(exp, t) else { continue };
        if !v.is_finite() {
            continue;
        }
        by_trial.push(Point {
            x: t.index as f64,
            y: v,
            trial: t.index,
        });
        if let Some(f) = t.finished_at {
            by_time.push(Point {
                x: (f - t0) / unit_s,
                y: v,
                trial: t.index,
            });
        }
    }
    // Best so far counts only what the engine could pick as the best: succeeded search
    // trials that meet the constraints, by their final metric.
    let eligible: std::collections::HashSet<u32> = records
        .iter()
        .filter(|r| {
            r.phase == TrialPhase::Succeeded
                && r.stage == crate::engine::Stage::Search
                && r.metrics.contains_key(objective)
                && exp
                    .constraints
                    .iter()
                    .all(|c| c.violation(r.metrics.get(&c.metric).copied()) == 0.0)
        })
        .map(|r| r.index)
        .collect();
    let succeeded = |p: &Point| eligible.contains(&p.trial);
    let ok_time: Vec<Point> = by_time.iter().copied().filter(succeeded).collect();
    let ok_trial: Vec<Point> = by_trial.iter().copied().filter(succeeded).collect();
    s.push_str(r#"<h2>Search</h2><div class="charts">"#);
    if by_trial.is_empty() {
        s.push_str(r#"<p class="empty">No trial has a value of the objective yet.</p>"#);
    } else {
        let _ = write!(
            s,
            r#"<figure><figcaption>Best {objective} so far against wall time</figcaption>{}</figure>"#,
            Chart {
                id: "best-time",
                x_label: time_label,
                y_label: objective,
                layers: vec![Layer::Steps {
                    class: "best",
                    points: shape::best_so_far(&ok_time, maximize),
                }],
                link: base,
                x_integer: false,
                x_range: Some(shape::extent(by_time.iter().map(|p| p.x))),
            }
            .render()
        );
        let _ = write!(
            s,
            r#"<figure><figcaption>Best {objective} so far against trials</figcaption>{}</figure>"#,
            Chart {
                id: "best-trials",
                x_label: "trial",
                y_label: objective,
                layers: vec![Layer::Steps {
                    class: "best",
                    points: shape::best_so_far(&ok_trial, maximize),
                }],
                link: base,
                x_integer: true,
                x_range: Some(shape::extent(by_trial.iter().map(|p| p.x))),
            }
            .render()
        );
        let thinned = shape::thin(&by_time, GRID.0, GRID.1);
        let _ = write!(
            s,
            r#"<figure><figcaption>Every trial's {objective} against time{}</figcaption>{}</figure>"#,
            if thinned.len() < by_time.len() {
                format!(
                    " ({} of {} points drawn, one per pixel cell)",
                    thinned.len(),
                    by_time.len()
                )
            } else {
                String::new()
            },
            Chart {
                id: "trials-time",
                x_label: time_label,
                y_label: objective,
                layers: vec![Layer::Points {
                    class: "trials",
                    points: thinned,
                }],
                link: base,
                x_integer: false,
                x_range: None,
            }
            .render()
        );
    }
    if exp.objectives.len() >= 2 {
        pareto(s, d, records, base);
    }
    s.push_str("</div>");
    parallel(s, d, records, base);
}

fn pareto(s: &mut String, d: &Detail, records: &[TrialRecord], base: &str) {
    let exp = &d.experiment;
    let (ox, oy) = (&exp.objectives[0], &exp.objectives[1]);
    let front: BTreeSet<u32> = d.pareto().iter().copied().collect();
    let mut all = Vec::new();
    let mut best = Vec::new();
    for t in records
        .iter()
        .filter(|t| t.phase == TrialPhase::Succeeded && t.stage == crate::engine::Stage::Search)
    {
        let (Some(x), Some(y)) = (t.metrics.get(&ox.metric), t.metrics.get(&oy.metric)) else {
            continue;
        };
        let p = Point {
            x: *x,
            y: *y,
            trial: t.index,
        };
        if front.contains(&t.index) {
            best.push(p);
        } else {
            all.push(p);
        }
    }
    best.sort_by(|a, b| a.x.total_cmp(&b.x));
    let mut layers = vec![Layer::Points {
        class: "trials dominated",
        points: shape::thin(&all, GRID.0, GRID.1),
    }];
    for c in &exp.constraints {
        for (limit, word) in [(c.min, "min"), (c.max, "max")] {
            let Some(at) = limit else { continue };
            let vertical = c.metric == ox.metric;
            if vertical || c.metric == oy.metric {
                layers.push(Layer::Rule {
                    vertical,
                    at,
                    label: format!("{} {word} {}", c.metric, number(at)),
                });
            }
        }
    }
    layers.push(Layer::Line {
        class: "front",
        points: best.clone(),
    });
    layers.push(Layer::Points {
        class: "trials pareto",
        points: best,
    });
    let _ = write!(
        s,
        r#"<figure><figcaption>Pareto front: {} ({}) against {} ({}); {} trials on the front</figcaption>{}</figure>"#,
        esc(&oy.metric),
        if oy.maximize { "max" } else { "min" },
        esc(&ox.metric),
        if ox.maximize { "max" } else { "min" },
        front.len(),
        Chart {
            id: "pareto",
            x_label: &ox.metric,
            y_label: &oy.metric,
            layers,
            link: base,
            x_integer: false,
            x_range: None,
        }
        .render()
    );
}

fn parallel(s: &mut String, d: &Detail, records: &[TrialRecord], base: &str) {
    let exp = &d.experiment;
    let space = &exp.space;
    let decisions = space.decisions();
    let objective = &exp.objectives[0];
    let mut rows: Vec<(&TrialRecord, f64)> = records
        .iter()
        .filter(|t| t.phase == TrialPhase::Succeeded && t.point.len() == decisions.len())
        .filter_map(|t| value_of(exp, t).filter(|v| v.is_finite()).map(|v| (t, v)))
        .collect();
    if rows.is_empty() || decisions.is_empty() {
        return;
    }
    rows.sort_by(|a, b| objective.oriented(b.1).total_cmp(&objective.oriented(a.1)));
    let (lo, hi) = shape::extent(rows.iter().map(|r| r.1));
    let unit = |v: f64| if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
    let mut axes: Vec<Axis> = decisions
        .iter()
        .map(|dec| Axis {
            name: dec.name.clone(),
            labels: match &dec.domain {
                Domain::Choice { options } => options
                    .iter()
                    .enumerate()
                    .map(|(k, o)| (choice_unit(k, options.len()), o.clone()))
                    .collect(),
                Domain::Int { min, max } => {
                    vec![(0.0, min.to_string()), (1.0, max.to_string())]
                }
                Domain::Real { min, max, .. } => vec![(0.0, number(*min)), (1.0, number(*max))],
            },
        })
        .collect();
    axes.push(Axis {
        name: objective.metric.clone(),
        labels: vec![(0.0, number(lo)), (1.0, number(hi))],
    });
    let picked = shape::sample_ranked(rows.len(), PARALLEL_LINES);
    // Worst first, so that the best lines are drawn on top.
    let lines: Vec<(u32, Vec<f64>, f64)> = picked
        .iter()
        .rev()
        .map(|&k| {
            let (t, v) = rows[k];
            let mut values: Vec<f64> = decisions
                .iter()
                .zip(&t.point)
                .map(|(dec, val)| match (&dec.domain, val) {
                    (Domain::Choice { options }, Value::Choice(c)) => {
                        choice_unit(*c as usize, options.len())
                    }
                    (domain, v) => domain.unit(*v),
                })
                .collect();
            values.push(unit(v));
            // By rank, not by value: one outlier would wash the rest into one colour.
            let colour = 1.0 - k as f64 / (rows.len() - 1).max(1) as f64;
            (t.index, values, colour)
        })
        .collect();
    let _ = write!(
        s,
        r#"<h2>Decisions and {}</h2><figure class="wide"><figcaption>Parallel coordinates over every decision, coloured by {} (teal best){}</figcaption>{}</figure>"#,
        esc(&objective.metric),
        esc(&objective.metric),
        if lines.len() < rows.len() {
            format!(
                "; {} of {} succeeded trials drawn: the best tenth and an even spread of the rest",
                lines.len(),
                rows.len()
            )
        } else {
            String::new()
        },
        svg::parallel(&axes, &lines, base)
    );
}

fn choice_unit(k: usize, n: usize) -> f64 {
    if n <= 1 {
        0.5
    } else {
        k as f64 / (n - 1) as f64
    }
}

fn trial_table(
    s: &mut String,
    d: &Detail,
    records: &[TrialRecord],
    q: &TableQuery,
    base: &str,
    now: f64,
) {
    let exp = &d.experiment;
    let objective = d.objective();
    let phases: BTreeSet<&str> = records.iter().map(|t| phase_name(t.phase)).collect();
    let reasons: BTreeSet<&str> = d
        .trials
        .iter()
        .map(|t| t.reason.as_str())
        .filter(|r| !r.is_empty())
        .collect();
    let needle = q.q.to_lowercase();
    let mut rows: Vec<&Trial> = d
        .trials
        .iter()
        .filter(|t| q.phase.is_empty() || phase_name(t.record.phase) == q.phase)
        .filter(|t| q.reason.is_empty() || t.reason == q.reason)
        .filter(|t| needle.is_empty() || t.record.candidate.to_lowercase().contains(&needle))
        .collect();
    let key_f = |t: &Trial| -> Option<f64> {
        match q.sort.as_str() {
            "value" => value_of(exp, &t.record),
            "epochs" => Some(t.record.epochs as f64),
            "duration" => duration(&t.record, now),
            "started" => t.record.started_at,
            _ => Some(t.record.index as f64),
        }
    };
    match q.sort.as_str() {
        "phase" => rows.sort_by(|a, b| {
            phase_name(a.record.phase)
                .cmp(phase_name(b.record.phase))
                .then(a.record.index.cmp(&b.record.index))
        }),
        "reason" => rows.sort_by(|a, b| {
            a.reason
                .cmp(&b.reason)
                .then(a.record.index.cmp(&b.record.index))
        }),
        _ => {
            // Each key once (a value is a map lookup), then sorted; trials without one go
            // last whichever the direction.
            let mut keyed: Vec<(Option<f64>, &Trial)> =
                rows.into_iter().map(|t| (key_f(t), t)).collect();
            keyed.sort_by(|(ka, a), (kb, b)| {
                match (ka, kb) {
                    (Some(x), Some(y)) => x.total_cmp(y),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                }
                .then(a.record.index.cmp(&b.record.index))
            });
            rows = keyed.into_iter().map(|(_, t)| t).collect();
        }
    }
    if q.desc {
        let (with, without): (Vec<&Trial>, Vec<&Trial>) = rows
            .into_iter()
            .partition(|t| matches!(q.sort.as_str(), "phase" | "reason") || key_f(t).is_some());
        rows = with.into_iter().rev().chain(without).collect();
    }
    let pages = rows.len().div_ceil(PAGE_ROWS).max(1);
    let page = q.page.min(pages - 1);
    let _ = write!(
        s,
        r##"<h2 id="trials">Trials <span class="count">{}</span></h2><form class="filters" method="get" action="#trials" data-auto><input type="hidden" name="sort" value="{}">{}"##,
        rows.len(),
        esc(&q.sort),
        if q.desc {
            r#"<input type="hidden" name="desc" value="true">"#
        } else {
            ""
        }
    );
    select(s, "phase", "phase", &phases, &q.phase);
    select(s, "reason", "reason", &reasons, &q.reason);
    let _ = write!(
        s,
        r#"<label>candidate <input type="search" name="q" value="{}" placeholder="contains… (/)" id="filter"></label><noscript><button>filter</button></noscript></form>"#,
        esc(&q.q)
    );
    let head = |s: &mut String, key: &str, label: &str, num: bool| {
        let active = q.sort == key;
        let desc = if active {
            !q.desc
        } else {
            key == "value" && exp.objectives[0].maximize
        };
        let arrow = match (active, q.desc) {
            (true, false) => " ▲",
            (true, true) => " ▼",
            _ => "",
        };
        let _ = write!(
            s,
            r#"<th{} aria-sort="{}"><a href="{}" data-sort="{key}">{}{arrow}</a></th>"#,
            if num { r#" class="num""# } else { "" },
            match (active, q.desc) {
                (true, false) => "ascending",
                (true, true) => "descending",
                _ => "none",
            },
            q.href(|n| {
                n.sort = key.to_string();
                n.desc = desc;
                n.page = 0;
            }),
            esc(label)
        );
    };
    s.push_str(r#"<table class="data nav" id="trial-table"><thead><tr>"#);
    head(s, "index", "#", true);
    head(s, "phase", "PHASE", false);
    head(s, "reason", "REASON", false);
    head(s, "value", &objective.to_uppercase(), true);
    head(s, "epochs", "EPOCHS", true);
    s.push_str("<th>STAGE</th><th>CANDIDATE</th>");
    head(s, "duration", "DURATION", true);
    s.push_str("</tr></thead><tbody>");
    for t in rows.iter().skip(page * PAGE_ROWS).take(PAGE_ROWS) {
        let r = &t.record;
        let href = format!("{base}{}", r.index);
        let _ = write!(
            s,
            r#"<tr tabindex="0" data-href="{href}" data-index="{}"><td class="num"><a href="{href}">{}</a></td><td><span class="phase {}">{}</span></td><td title="{}">{}</td><td class="num value">{}</td><td class="num">{}</td><td>{}</td><td class="cand"><code>{}</code></td><td class="num">{}</td></tr>"#,
            r.index,
            r.index,
            phase_name(r.phase),
            phase_name(r.phase),
            esc(&t.message),
            esc(&t.reason),
            value_of(exp, r).map(number).unwrap_or_default(),
            r.epochs,
            stage_name(r.stage),
            esc(&r.candidate),
            duration(r, now).map(age).unwrap_or_default(),
        );
    }
    s.push_str("</tbody></table>");
    if pages > 1 {
        let _ = write!(s, r#"<nav class="pager" aria-label="trial pages">"#);
        if page > 0 {
            let _ = write!(
                s,
                r#"<a rel="prev" href="{}">← previous</a>"#,
                q.href(|n| n.page = page - 1)
            );
        }
        let _ = write!(s, r#"<span>page {} of {pages}</span>"#, page + 1);
        if page + 1 < pages {
            let _ = write!(
                s,
                r#"<a rel="next" href="{}">next →</a>"#,
                q.href(|n| n.page = page + 1)
            );
        }
        s.push_str("</nav>");
    }
}

fn finalists(s: &mut String, d: &Detail, base: &str) {
    let finalists = d.finalists();
    if finalists.is_empty() {
        return;
    }
    let metrics: BTreeSet<&String> = finalists.iter().flat_map(|f| f.metrics.keys()).collect();
    s.push_str(r#"<h2>Final training</h2><table class="data" id="final-training"><thead><tr><th class="num">RANK</th><th>CANDIDATE</th><th class="num">SEARCH TRIAL</th><th class="num">DONE</th>"#);
    for m in &metrics {
        let _ = write!(s, r#"<th class="num">{}</th>"#, esc(m));
    }
    s.push_str("</tr></thead><tbody>");
    for f in finalists {
        let _ = write!(
            s,
            r#"<tr{}><td class="num">{}{}</td><td class="cand"><code>{}</code></td><td class="num"><a href="{base}{}">{}</a></td><td class="num">{}/{}</td>"#,
            if f.winner { r#" class="winner""# } else { "" },
            if f.winner { "★ " } else { "" },
            f.rank,
            esc(&f.candidate),
            f.search_trial,
            f.search_trial,
            f.succeeded,
            f.trials
        );
        for m in &metrics {
            let cell = f
                .metrics
                .get(*m)
                .map(|sp| format!("{} ± {} (n={})", number(sp.mean), number(sp.std), sp.count))
                .unwrap_or_default();
            let _ = write!(s, r#"<td class="num">{cell}</td>"#);
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
}

/// The trial page.
pub fn trial(d: &Detail, t: &Trial, now: f64) -> String {
    let r = &t.record;
    let exp = &d.experiment;
    let base = format!("{}/", experiment_href(&d.summary));
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<div class="title"><h1>{}</h1><span class="phase {}">{}</span></div><dl class="facts"><dt>experiment</dt><dd><a href="{}">{}</a></dd><dt>{}</dt><dd>{}</dd><dt>reason</dt><dd>{}</dd><dt>epochs</dt><dd>{}</dd><dt>stage</dt><dd>{}</dd><dt>attempts</dt><dd>{}</dd><dt>duration</dt><dd>{}</dd>{}{}</dl>"#,
        esc(&t.name),
        phase_name(r.phase),
        phase_name(r.phase),
        experiment_href(&d.summary),
        esc(&d.summary.key.name),
        esc(d.objective()),
        value_of(exp, r).map(number).unwrap_or_else(|| "–".into()),
        esc(&t.reason),
        r.epochs,
        stage_name(r.stage),
        t.attempts,
        duration(r, now).map(age).unwrap_or_default(),
        t.pod
            .as_deref()
            .map(|p| format!("<dt>pod</dt><dd><code>{}</code></dd>", esc(p)))
            .unwrap_or_default(),
        t.resume_from
            .map(|p| format!(r#"<dt>resumed from</dt><dd><a href="{base}{p}">trial {p}</a></dd>"#))
            .unwrap_or_default(),
    );
    if !t.message.is_empty() {
        let _ = write!(s, r#"<p class="message">{}</p>"#, esc(&t.message));
    }
    let _ = write!(
        s,
        r#"<h2>Candidate</h2><p><code id="candidate">{}</code></p>"#,
        esc(&r.candidate)
    );
    if let Some(a) = &d.artifact(t) {
        let _ = write!(
            s,
            r#"<p class="artifact">Model: <code>{}</code></p>"#,
            esc(a)
        );
    }
    s.push_str(r#"<div class="charts">"#);
    match shape::architecture(&r.candidate) {
        Some(Architecture::Cell { nodes, edges }) => {
            let _ = write!(
                s,
                r#"<figure id="architecture"><figcaption>The cell: the operation on each edge; grey edges cannot reach the output</figcaption>{}</figure>"#,
                svg::cell(&shape::cell_layout(nodes, &edges))
            );
        }
        Some(Architecture::Layers { layers }) => {
            let _ = write!(
                s,
                r#"<figure id="architecture"><figcaption>The network, input at the top</figcaption>{}</figure>"#,
                svg::layers(&layers)
            );
        }
        None => {}
    }
    let hp = exp.space.hyperparameters();
    if !hp.is_empty() && r.point.len() == exp.space.decisions().len() {
        let values = exp.space.hyperparameter_values(&r.point);
        s.push_str(r#"<figure><figcaption>Hyperparameters</figcaption><table class="data compact" id="hyperparameters"><tbody>"#);
        for (k, v) in values {
            let _ = write!(
                s,
                "<tr><td>{}</td><td><code>{}</code></td></tr>",
                esc(&k),
                esc(&v.to_string())
            );
        }
        s.push_str("</tbody></table></figure>");
    }
    s.push_str("</div>");
    curves(&mut s, d, r);
    if !r.metrics.is_empty() || !t.info.is_empty() {
        s.push_str(r#"<h2>Final report</h2><table class="data compact" id="metrics"><tbody>"#);
        for (k, v) in &r.metrics {
            let _ = write!(
                s,
                r#"<tr><td>{}</td><td class="num">{}</td></tr>"#,
                esc(k),
                number(*v)
            );
        }
        for (k, v) in &t.info {
            let _ = write!(
                s,
                "<tr><td>{}</td><td><code>{}</code></td></tr>",
                esc(k),
                esc(v)
            );
        }
        s.push_str("</tbody></table>");
    }
    let _ = write!(
        s,
        r#"<h2>Log <span class="hint">the last lines, refreshed</span></h2><pre id="log" class="log" data-src="{base}{}/log" tabindex="0">loading…</pre>"#,
        r.index
    );
    s
}

fn curves(s: &mut String, d: &Detail, r: &TrialRecord) {
    if r.reports.is_empty() {
        s.push_str(r#"<p class="empty">No reports yet.</p>"#);
        return;
    }
    let mut series: BTreeMap<&str, Vec<Point>> = BTreeMap::new();
    let mut reports = r.reports.clone();
    reports.sort_by_key(|rep| rep.step);
    for rep in &reports {
        for (k, v) in &rep.metrics {
            if v.is_finite() {
                series.entry(k.as_str()).or_default().push(Point {
                    x: rep.step as f64,
                    y: *v,
                    trial: rep.step,
                });
            }
        }
    }
    let rungs = d.promotion_steps(r.epochs.max(reports.last().map_or(0, |x| x.step)));
    s.push_str(r#"<h2>Learning curves</h2><div class="charts curves">"#);
    for (name, points) in series {
        let mut layers = vec![Layer::Line {
            class: "curve",
            points: points.clone(),
        }];
        for rung in &rungs {
            layers.push(Layer::Rule {
                vertical: true,
                at: *rung as f64,
                label: format!("promotion at {rung}"),
            });
        }
        let _ = write!(
            s,
            r#"<figure class="curve" data-metric="{}"><figcaption>{}</figcaption>{}</figure>"#,
            esc(name),
            esc(name),
            Chart {
                id: &format!("curve-{name}"),
                x_label: "step",
                y_label: name,
                layers,
                link: "#",
                x_integer: true,
                x_range: None,
            }
            .render()
        );
    }
    s.push_str("</div>");
}
