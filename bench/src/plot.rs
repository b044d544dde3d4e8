//! Hand-written SVG charts (no dependencies): a latency percentile curve
//! (HdrHistogram style: x is the percentile on a log scale of 1/(1-q)) and
//! line charts of a value over time.

use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const W: f64 = 760.0;
const H: f64 = 420.0;
const L: f64 = 70.0;
const R: f64 = 170.0;
const T: f64 = 40.0;
const B: f64 = 50.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// `base.json` → `base-<suffix>.svg` (or `<suffix>.svg` without a base).
pub fn path_for(json: Option<&str>, suffix: &str) -> Option<PathBuf> {
    let j = json?;
    let p = Path::new(j);
    let stem = p.file_stem()?.to_string_lossy().to_string();
    Some(p.with_file_name(format!("{stem}-{suffix}.svg")))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let e = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * e {
            return m * e;
        }
    }
    10.0 * e
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.abs() >= 10.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// x ticks: (position in data units, label).
pub struct Chart<'a> {
    pub title: &'a str,
    pub xlabel: &'a str,
    pub ylabel: &'a str,
    pub series: Vec<Series>,
    pub x_ticks: Option<Vec<(f64, String)>>,
    pub x_range: Option<(f64, f64)>,
    pub y_max: Option<f64>,
    /// Vertical markers (x, label).
    pub marks: Vec<(f64, String)>,
}

impl Chart<'_> {
    pub fn svg(&self) -> String {
        // The legend column widens with the longest label; the plot keeps its size.
        let longest = self
            .series
            .iter()
            .map(|s| s.label.chars().count())
            .max()
            .unwrap_or(0);
        let rr = R.max(6.6 * longest as f64 + 45.0);
        let ww = W - R + rr;
        let pw = W - L - R;
        let ph = H - T - B;
        let all = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut ym) = (f64::MAX, f64::MIN, 0.0f64);
        for &(x, y) in all {
            x0 = x0.min(x);
            x1 = x1.max(x);
            if y.is_finite() {
                ym = ym.max(y);
            }
        }
        if let Some((a, b)) = self.x_range {
            x0 = a;
            x1 = b;
        }
        if x0 >= x1 {
            x0 = 0.0;
            x1 = x0 + 1.0;
        }
        let ymax = nice_max(self.y_max.unwrap_or(ym * 1.05));
        let sx = |x: f64| L + (x - x0) / (x1 - x0) * pw;
        let sy = |y: f64| T + ph - (y.min(ymax) / ymax) * ph;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{ww:.0}" height="{H}" viewBox="0 0 {ww:.0} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{ww:.0}" height="{H}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            L + pw / 2.0,
            esc(self.title)
        );
        // y grid
        for i in 0..=5 {
            let v = ymax * i as f64 / 5.0;
            let y = sy(v);
            let _ = writeln!(
                s,
                r##"<line x1="{L}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                L + pw,
                L - 6.0,
                y + 4.0,
                fmt_num(v)
            );
        }
        // x ticks
        let ticks: Vec<(f64, String)> = match &self.x_ticks {
            Some(t) => t.clone(),
            None => {
                // Multiples of a round step (1, 2, 2.5, 5 × 10^k).
                let step = nice_max((x1 - x0) / 6.0);
                let mut v = (x0 / step).ceil() * step;
                let mut t = Vec::new();
                while v <= x1 + 1e-9 && t.len() < 20 {
                    t.push((v, fmt_num(if v.abs() < 1e-9 { 0.0 } else { v })));
                    v += step;
                }
                t
            }
        };
        for (v, lab) in ticks {
            if v < x0 - 1e-9 || v > x1 + 1e-9 {
                continue;
            }
            let x = sx(v);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{T}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                T + ph,
                T + ph + 16.0,
                esc(&lab)
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            L + pw / 2.0,
            H - 12.0,
            esc(self.xlabel)
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate(16,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            T + ph / 2.0,
            esc(self.ylabel)
        );
        for (x, lab) in &self.marks {
            let xx = sx(*x);
            let _ = writeln!(
                s,
                r##"<line x1="{xx:.1}" y1="{T}" x2="{xx:.1}" y2="{:.1}" stroke="#000" stroke-dasharray="4,3"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"##,
                T + ph,
                xx + 3.0,
                T + 12.0,
                esc(lab)
            );
        }
        for (i, se) in self.series.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            let mut d = String::new();
            for (k, &(x, y)) in se.points.iter().enumerate() {
                if !y.is_finite() || x < x0 || x > x1 {
                    continue;
                }
                let _ = write!(
                    d,
                    "{}{:.1},{:.1} ",
                    if k == 0 || d.is_empty() { "M" } else { "L" },
                    sx(x),
                    sy(y)
                );
            }
            let _ = writeln!(
                s,
                r#"<path d="{d}" fill="none" stroke="{c}" stroke-width="1.8"/>"#
            );
            let ly = T + 14.0 + i as f64 * 18.0;
            let _ = writeln!(
                s,
                r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{c}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                L + pw + 10.0,
                L + pw + 30.0,
                L + pw + 35.0,
                ly + 4.0,
                esc(&se.label)
            );
        }
        s.push_str("</svg>\n");
        s
    }

    pub fn write(&self, path: &Path) {
        match std::fs::write(path, self.svg()) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => eprintln!("warning: write {}: {e}", path.display()),
        }
    }
}

/// Percentile curve points of a histogram recorded in microseconds, in ms,
/// x = log10(1/(1-q)) from 0 (p0) to 5 (p99.999).
pub fn percentile_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.len() == 0 {
        return Vec::new();
    }
    let max_x = (h.len() as f64).log10().clamp(1.0, 5.0);
    (0..=200)
        .map(|i| {
            let x = max_x * i as f64 / 200.0;
            let q = 1.0 - 10f64.powf(-x);
            (x, h.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect()
}

pub fn percentile_chart(title: &str, series: Vec<Series>) -> Chart<'_> {
    let ticks = vec![
        (0.0, "p0".to_string()),
        (1.0, "p90".to_string()),
        (2.0, "p99".to_string()),
        (3.0, "p99.9".to_string()),
        (4.0, "p99.99".to_string()),
        (5.0, "p99.999".to_string()),
    ];
    let xmax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max)
        .ceil();
    Chart {
        title,
        xlabel: "percentile",
        ylabel: "latency (ms)",
        series,
        x_ticks: Some(ticks),
        x_range: Some((0.0, xmax)),
        y_max: None,
        marks: Vec::new(),
    }
}

pub fn time_chart<'a>(title: &'a str, ylabel: &'a str, series: Vec<Series>) -> Chart<'a> {
    Chart {
        title,
        xlabel: "time (s)",
        ylabel,
        series,
        x_ticks: None,
        x_range: None,
        y_max: None,
        marks: Vec::new(),
    }
}

/// `append`'s plots next to its `--json` file: `<stem>-latency.svg` (one
/// percentile curve per run) and `<stem>-throughput.svg`.
pub fn append_plots(json: Option<&str>, doc: &serde_json::Value, results: &[crate::RunResult]) {
    let (Some(lat), Some(thr)) = (path_for(json, "latency"), path_for(json, "throughput")) else {
        return;
    };
    let mode = if doc["closed_loop"] == true {
        "closed loop".to_string()
    } else {
        format!("open loop {} /s", doc["open_loop_rate_per_sec"])
    };
    let title = format!(
        "append latency ({}, {}, {} B)",
        doc["transport"].as_str().unwrap_or("http"),
        mode,
        doc["payload_bytes"]
    );
    let series = results
        .iter()
        .map(|r| Series {
            label: format!("{} producers", r.producers),
            points: percentile_points(&r.hist),
        })
        .collect();
    percentile_chart(&title, series).write(&lat);
    let series = series_from_json(&doc["throughput_over_time"]);
    time_chart("append throughput over time", "appends/s", series).write(&thr);
}

/// `[{"run": label, "per_sec": [[t, v], …]}, …]` → series.
pub fn series_from_json(v: &serde_json::Value) -> Vec<Series> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|r| Series {
                    label: r["run"].as_str().unwrap_or("").to_string(),
                    points: r["per_sec"]
                        .as_array()
                        .map(|p| {
                            p.iter()
                                .filter_map(|xy| Some((xy[0].as_f64()?, xy[1].as_f64()?)))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}
