//! Charts and architecture drawings as SVG strings, drawn on the server: the page needs no
//! charting library, and what a test or a screenshot sees is what the server sent.

use super::html::esc;
use super::shape::{self, CellLayout, Point};
use std::fmt::Write;

const W: f64 = 640.0;
const H: f64 = 280.0;
const LEFT: f64 = 58.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 40.0;

/// What a chart draws, bottom layer first.
pub enum Layer {
    /// One circle per point, each linking to its trial's page (`link` + trial index).
    Points {
        class: &'static str,
        points: Vec<Point>,
    },
    /// A step line through the points (best so far).
    Steps {
        class: &'static str,
        points: Vec<Point>,
    },
    /// A line through the points in order.
    Line {
        class: &'static str,
        points: Vec<Point>,
    },
    /// A dashed line across the plot at x (vertical) or y (horizontal), labelled.
    Rule {
        vertical: bool,
        at: f64,
        label: String,
    },
}

pub struct Chart<'a> {
    pub id: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub layers: Vec<Layer>,
    /// Trial pages are `link` followed by the index.
    pub link: &'a str,
    /// Integer ticks on x (steps, trial numbers).
    pub x_integer: bool,
    /// The x axis' range when it must match another chart's (else the layers' extent).
    pub x_range: Option<(f64, f64)>,
}

/// Round tick positions covering [lo, hi], about `n` of them.
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater)
        || !lo.is_finite()
        || !hi.is_finite()
    {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    let mut out = Vec::new();
    let mut t = first;
    while t <= hi + step * 1e-9 && out.len() < 50 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

pub fn number(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e6).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{}", (v * 10.0).round() / 10.0)
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

impl Chart<'_> {
    pub fn render(&self) -> String {
        let mut xs: Vec<f64> = Vec::new();
        let mut ys: Vec<f64> = Vec::new();
        for l in &self.layers {
            match l {
                Layer::Points { points, .. }
                | Layer::Steps { points, .. }
                | Layer::Line { points, .. } => {
                    xs.extend(points.iter().map(|p| p.x));
                    ys.extend(points.iter().map(|p| p.y));
                }
                Layer::Rule { .. } => {}
            }
        }
        let (mut x0, mut x1) = self
            .x_range
            .unwrap_or_else(|| shape::extent(xs.into_iter()));
        let (mut y0, mut y1) = shape::extent(ys.into_iter());
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        if y1 <= y0 {
            let pad = if y0 == 0.0 { 1.0 } else { y0.abs() * 0.05 };
            y0 -= pad;
            y1 += pad;
        }
        let ypad = (y1 - y0) * 0.05;
        y0 -= ypad;
        y1 += ypad;
        if !self.x_integer {
            let xpad = (x1 - x0) * 0.02;
            x0 -= xpad;
            x1 += xpad;
        }
        let pw = W - LEFT - RIGHT;
        let ph = H - TOP - BOTTOM;
        let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
        let sy = |y: f64| TOP + ph - (y - y0) / (y1 - y0) * ph;
        let mut s = String::with_capacity(4096);
        let _ = write!(
            s,
            r#"<svg class="chart" id="{}" data-link="{}" viewBox="0 0 {W} {H}" role="img" aria-label="{} against {}">"#,
            esc(self.id),
            esc(self.link),
            esc(self.y_label),
            esc(self.x_label)
        );
        for t in ticks(y0, y1, 5) {
            let y = sy(t);
            let _ = write!(
                s,
                r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="tick" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                number(t)
            );
        }
        let xt: Vec<f64> = ticks(x0, x1, 6)
            .into_iter()
            .filter(|t| !self.x_integer || t.fract() == 0.0)
            .collect();
        for t in xt {
            let x = sx(t);
            let _ = write!(
                s,
                r#"<line class="grid" x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}"/><text class="tick" x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
                TOP + ph,
                TOP + ph + 16.0,
                number(t)
            );
        }
        let _ = write!(
            s,
            r#"<rect class="frame" x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}"/><text class="label" x="{}" y="{}" text-anchor="middle">{}</text><text class="label" transform="translate(14 {}) rotate(-90)" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            H - 6.0,
            esc(self.x_label),
            TOP + ph / 2.0,
            esc(self.y_label)
        );
        for l in &self.layers {
            match l {
                Layer::Rule {
                    vertical,
                    at,
                    label,
                } => {
                    if *vertical {
                        let x = sx(*at);
                        let _ = write!(
                            s,
                            r#"<line class="rule" x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}"/><text class="rule-label" x="{:.1}" y="{}">{}</text>"#,
                            TOP + ph,
                            x + 3.0,
                            TOP + 10.0,
                            esc(label)
                        );
                    } else {
                        let y = sy(*at);
                        let _ = write!(
                            s,
                            r#"<line class="rule" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="rule-label" x="{}" y="{:.1}">{}</text>"#,
                            W - RIGHT,
                            LEFT + 4.0,
                            y - 3.0,
                            esc(label)
                        );
                    }
                }
                Layer::Steps { class, points } | Layer::Line { class, points } => {
                    if points.is_empty() {
                        continue;
                    }
                    let steps = matches!(l, Layer::Steps { .. });
                    let mut d = String::new();
                    for (k, p) in points.iter().enumerate() {
                        if k == 0 {
                            let _ = write!(d, "M{:.1},{:.1}", sx(p.x), sy(p.y));
                        } else {
                            if steps {
                                let _ = write!(d, "H{:.1}", sx(p.x));
                            }
                            let _ = write!(d, "L{:.1},{:.1}", sx(p.x), sy(p.y));
                        }
                    }
                    if steps {
                        let _ = write!(d, "H{:.1}", W - RIGHT);
                    }
                    let _ = write!(s, r#"<path class="{class}" d="{d}"/>"#);
                    // A short line shows its points too (one point alone draws no line).
                    if !steps && points.len() <= 60 {
                        for p in points {
                            let _ = write!(
                                s,
                                r#"<circle class="curve-pt" cx="{:.1}" cy="{:.1}" r="2.4"><title>{}: {}</title></circle>"#,
                                sx(p.x),
                                sy(p.y),
                                number(p.x),
                                number(p.y)
                            );
                        }
                    }
                }
                Layer::Points { class, points } => {
                    let _ = write!(s, r#"<g class="{class}">"#);
                    for p in points {
                        // Short: thousands of these go into one page. The script opens
                        // the trial of a clicked point (data-link + data-trial).
                        let _ = write!(
                            s,
                            r#"<circle class="pt" data-trial="{}" cx="{:.1}" cy="{:.1}"><title>trial {}: {}, {}</title></circle>"#,
                            p.trial,
                            sx(p.x),
                            sy(p.y),
                            p.trial,
                            number(p.x),
                            number(p.y)
                        );
                    }
                    s.push_str("</g>");
                }
            }
        }
        s.push_str("</svg>");
        s
    }
}

/// A cell as a DAG: nodes left to right, the operation on every edge; edges that cannot
/// matter are grey and dashed.
pub fn cell(layout: &CellLayout) -> String {
    let (w, h) = (560.0, 250.0);
    let pos = |k: usize| {
        let (x, y) = layout.nodes[k];
        (40.0 + x * (w - 80.0), 30.0 + y * (h - 60.0))
    };
    let n = layout.nodes.len();
    let mut s = format!(
        r#"<svg class="cell" viewBox="0 0 {w} {h}" role="img" aria-label="cell of {n} nodes"><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" class="arrowhead"/></marker></defs>"#
    );
    for e in &layout.edges {
        let (x1, y1) = pos(e.from);
        let (x2, y2) = pos(e.to);
        // Edges skipping nodes bow away from the straight line so that none hide another.
        let span = (e.to - e.from) as f64;
        let bow = if span > 1.0 { 38.0 * (span - 1.0) } else { 0.0 };
        let side = if (y1 + y2) / 2.0 <= h / 2.0 {
            -1.0
        } else {
            1.0
        };
        let (mx, my) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0 + side * bow);
        // Stop short of the node's circle.
        let (dx, dy) = (x2 - mx, y2 - my);
        let len = (dx * dx + dy * dy).sqrt().max(1.0);
        let (ex, ey) = (x2 - dx / len * 16.0, y2 - dy / len * 16.0);
        let class = if e.live { "edge live" } else { "edge dead" };
        let _ = write!(
            s,
            r#"<g class="{class}" data-from="{}" data-to="{}" data-op="{}"><path d="M{x1:.1},{y1:.1}Q{mx:.1},{my:.1} {ex:.1},{ey:.1}" marker-end="url(#arrow)"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text></g>"#,
            e.from,
            e.to,
            esc(&e.op),
            (x1 + 2.0 * mx + x2) / 4.0,
            (y1 + 2.0 * my + y2) / 4.0 - 4.0,
            esc(&e.op)
        );
    }
    for k in 0..n {
        let (x, y) = pos(k);
        let label = if k == 0 {
            "in".to_string()
        } else if k == n - 1 {
            "out".to_string()
        } else {
            k.to_string()
        };
        let _ = write!(
            s,
            r#"<g class="node"><circle cx="{x:.1}" cy="{y:.1}" r="15"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text></g>"#,
            y + 4.0
        );
    }
    s.push_str("</svg>");
    s
}

/// A layer-wise network as a stack, input at the top; box width follows the layer's width.
pub fn layers(layers: &[nasop_core::arch::Layer]) -> String {
    let row = 34.0;
    let h = 24.0 + row * (layers.len() as f64 + 2.0);
    let w = 420.0;
    let widest = layers.iter().map(|l| l.width).max().unwrap_or(1).max(1) as f64;
    let mut s = format!(
        r#"<svg class="layers" viewBox="0 0 {w} {h}" role="img" aria-label="{} layers">"#,
        layers.len()
    );
    let mut y = 12.0;
    let _ = write!(
        s,
        r#"<text class="io" x="{}" y="{:.1}" text-anchor="middle">input</text>"#,
        w / 2.0,
        y + 18.0
    );
    for (k, l) in layers.iter().enumerate() {
        y += row;
        let bw = 120.0 + 240.0 * (l.width as f64 / widest).sqrt();
        let _ = write!(
            s,
            r#"<g class="layer" data-op="{}"><rect x="{:.1}" y="{y:.1}" width="{bw:.1}" height="26" rx="5"/><text x="{}" y="{:.1}" text-anchor="middle">{}: {} @ {}</text></g>"#,
            esc(&l.op),
            (w - bw) / 2.0,
            w / 2.0,
            y + 17.0,
            k + 1,
            esc(&l.op),
            l.width
        );
    }
    let _ = write!(
        s,
        r#"<text class="io" x="{}" y="{:.1}" text-anchor="middle">output</text></svg>"#,
        w / 2.0,
        y + row + 18.0
    );
    s
}

/// One axis of parallel coordinates: its name and tick labels at positions in [0, 1].
pub struct Axis {
    pub name: String,
    pub labels: Vec<(f64, String)>,
}

/// Parallel coordinates: one polyline per trial over the axes, coloured by `colour` in
/// [0, 1] (1 = best).
pub fn parallel(axes: &[Axis], lines: &[(u32, Vec<f64>, f64)], link: &str) -> String {
    let w = (150.0 * axes.len() as f64).clamp(900.0, 1800.0);
    let (h, top, bottom) = (300.0, 28.0, 24.0);
    let left = 60.0;
    let step = if axes.len() > 1 {
        (w - 2.0 * left) / (axes.len() - 1) as f64
    } else {
        0.0
    };
    let ax = |k: usize| left + k as f64 * step;
    let ay = |u: f64| top + (1.0 - u) * (h - top - bottom);
    let mut s = format!(
        r#"<svg class="parallel" data-link="{}" viewBox="0 0 {w} {h}" role="img" aria-label="parallel coordinates">"#,
        esc(link)
    );
    s.push_str(r#"<g class="lines">"#);
    for (trial, values, c) in lines {
        let mut pts = String::new();
        for (k, u) in values.iter().enumerate() {
            let _ = write!(pts, "{:.1},{:.1} ", ax(k), ay(*u));
        }
        // Worst red-brown to best teal, readable on light and dark.
        let hue = 10.0 + 160.0 * c.clamp(0.0, 1.0);
        let _ = write!(
            s,
            r#"<polyline data-trial="{trial}" points="{}" style="stroke:hsl({hue:.0} 70% 45%)"><title>trial {trial}</title></polyline>"#,
            pts.trim_end()
        );
    }
    s.push_str("</g>");
    for (k, a) in axes.iter().enumerate() {
        let x = ax(k);
        let _ = write!(
            s,
            r#"<g class="axis"><line x1="{x:.1}" x2="{x:.1}" y1="{top}" y2="{}"/><text class="axis-name" x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
            h - bottom,
            top - 10.0,
            esc(&a.name)
        );
        for (u, label) in &a.labels {
            let _ = write!(
                s,
                r#"<text class="tick" x="{:.1}" y="{:.1}">{}</text>"#,
                x + 4.0,
                ay(*u) + 4.0,
                esc(label)
            );
        }
        s.push_str("</g>");
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            ticks(0.0, 1.0, 5),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        let t = ticks(0.8123, 0.9371, 5);
        assert!(t.iter().all(|v| (0.8123..=0.9371).contains(v)));
        assert!(t.len() >= 3);
        assert_eq!(ticks(3.0, 3.0, 5), vec![3.0]);
    }

    #[test]
    fn numbers_print_short() {
        assert_eq!(number(0.912345), "0.9123");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(1234.56), "1234.6");
        assert_eq!(number(1.5e-5), "1.50e-5");
    }

    #[test]
    fn a_chart_draws_one_linked_circle_per_point() {
        let points: Vec<Point> = (0..7)
            .map(|i| Point {
                x: i as f64,
                y: (i * i) as f64,
                trial: i,
            })
            .collect();
        let svg = Chart {
            id: "c",
            x_label: "trial",
            y_label: "acc <%>",
            layers: vec![Layer::Points {
                class: "trials",
                points,
            }],
            link: "t/",
            x_integer: true,
            x_range: None,
        }
        .render();
        assert_eq!(svg.matches("<circle").count(), 7);
        assert!(svg.contains(r#"data-link="t/""#) && svg.contains(r#"data-trial="6""#));
        assert!(svg.contains("acc &lt;%&gt;"), "labels are escaped");
    }
}
