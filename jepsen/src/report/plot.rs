//! Latency and throughput plots as hand-written SVG, with the fault windows
//! shaded.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::windows::{color, FaultWindow};
use super::{esc, Span};
use crate::checker::Call;
use crate::history::OpType;

/// At most this many points in the latency scatter (evenly thinned).
const MAX_POINTS: usize = 20_000;

const W: f64 = 960.0;
const H: f64 = 420.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 44.0;

/// Colours of `ok`, `fail`, `info`.
pub(crate) fn outcome_color(t: OpType) -> &'static str {
    match t {
        OpType::Ok => "#2e9e44",
        OpType::Fail => "#d62728",
        _ => "#f0a30a",
    }
}

const PALETTE: [&str; 8] = [
    "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

/// The plot area and its x mapping.
struct Frame {
    span: Span,
}

impl Frame {
    fn x(&self, t: u64) -> f64 {
        LEFT + self.span.frac(t) * (W - LEFT - RIGHT)
    }

    fn bottom(&self) -> f64 {
        H - BOTTOM
    }

    fn open(&self, out: &mut String, title: &str) {
        let _ = write!(
            out,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">
<title>{t}</title>
<rect width="{W}" height="{H}" fill="#ffffff"/>
<text x="{LEFT}" y="18" font-size="13" font-weight="bold">{t}</text>
"##,
            t = esc(title)
        );
    }

    /// Shaded fault windows with their labels.
    fn windows(&self, out: &mut String, windows: &[FaultWindow]) {
        for (i, w) in windows.iter().enumerate() {
            let x0 = self.x(w.start);
            let x1 = self.x(w.end_or(self.span.end)).max(x0 + 1.5);
            let c = color(&w.kind);
            let _ = write!(
                out,
                r#"<rect class="fault" x="{x0:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="{c}" fill-opacity="0.15"><title>{} {}</title></rect>
<text class="fault-label" x="{:.1}" y="{:.1}" fill="{c}" font-size="10">{}</text>
"#,
                x1 - x0,
                self.bottom() - TOP,
                esc(&w.kind),
                esc(&w.description),
                x0 + 2.0,
                TOP + 10.0 + (i % 3) as f64 * 11.0,
                esc(&w.kind)
            );
        }
    }

    /// The time axis, in seconds since the run began.
    fn time_axis(&self, out: &mut String) {
        let secs = self.span.len() as f64 / 1e9;
        let y = self.bottom();
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y}" x2="{:.1}" y2="{y}" stroke="#333"/>"##,
            W - RIGHT
        );
        for s in nice_ticks(0.0, secs, 10) {
            let x = self.x(self.span.start + (s * 1e9) as u64);
            let _ = writeln!(
                out,
                r##"<line x1="{x:.1}" y1="{y}" x2="{x:.1}" y2="{:.1}" stroke="#333"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                y + 4.0,
                y + 16.0,
                fmt_num(s)
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time (s)</text>"#,
            (LEFT + W - RIGHT) / 2.0,
            H - 8.0
        );
    }

    /// A y axis line with labelled ticks; `ticks` are (value label, y).
    fn y_axis(&self, out: &mut String, label: &str, ticks: &[(String, f64)]) {
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333"/>"##,
            self.bottom()
        );
        for (text, y) in ticks {
            let _ = writeln!(
                out,
                r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT,
                W - RIGHT,
                LEFT - 4.0,
                y + 4.0,
                esc(text)
            );
        }
        let _ = writeln!(
            out,
            r#"<text transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            (TOP + self.bottom()) / 2.0,
            esc(label)
        );
    }

    fn legend(&self, out: &mut String, entries: &[(String, &str)]) {
        for (i, (name, c)) in entries.iter().enumerate() {
            let y = TOP + 14.0 * i as f64;
            let x = W - RIGHT + 12.0;
            let _ = writeln!(
                out,
                r#"<rect x="{x:.1}" y="{y:.1}" width="10" height="10" fill="{c}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                x + 14.0,
                y + 9.0,
                esc(name)
            );
        }
    }
}

/// Latency of every completed call against its invocation time, log y.
pub(crate) fn latency(
    calls: &[Call<'_>],
    windows: &[FaultWindow],
    span: Span,
    title: &str,
) -> String {
    let frame = Frame { span };
    let mut out = String::new();
    frame.open(&mut out, title);
    frame.windows(&mut out, windows);
    let points: Vec<(u64, f64, OpType)> = calls
        .iter()
        .filter_map(|c| {
            let end = c.end_time()?;
            let ms = end.saturating_sub(c.start_time()) as f64 / 1e6;
            Some((c.start_time(), ms.max(1e-3), c.outcome()))
        })
        .collect();
    let (lo, hi) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let (lo, hi) = if points.is_empty() {
        (0.0, 1.0)
    } else {
        let lo = lo.log10().floor();
        (lo, hi.log10().ceil().max(lo + 1.0))
    };
    let y = |ms: f64| {
        let f = (ms.log10() - lo) / (hi - lo);
        frame.bottom() - f.clamp(0.0, 1.0) * (frame.bottom() - TOP)
    };
    let ticks: Vec<(String, f64)> = (lo as i32..=hi as i32)
        .map(|e| {
            let v = 10f64.powi(e);
            (fmt_num(v), y(v))
        })
        .collect();
    frame.y_axis(&mut out, "latency (ms, log)", &ticks);
    frame.time_axis(&mut out);
    let stride = points.len().div_ceil(MAX_POINTS).max(1);
    for (t, ms, kind) in points.iter().step_by(stride) {
        let _ = writeln!(
            out,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{}" fill-opacity="0.7"/>"#,
            frame.x(*t),
            y(*ms),
            outcome_color(*kind)
        );
    }
    if points.is_empty() {
        no_data(&mut out);
    }
    frame.legend(
        &mut out,
        &[
            ("ok".into(), outcome_color(OpType::Ok)),
            ("fail".into(), outcome_color(OpType::Fail)),
            ("info".into(), outcome_color(OpType::Info)),
        ],
    );
    if stride > 1 {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="10">every {stride}th of {} points</text>"#,
            W - RIGHT + 12.0,
            TOP + 60.0,
            points.len()
        );
    }
    out.push_str("</svg>\n");
    out
}

/// `ok` completions per second over time, one line per function.
pub(crate) fn throughput(
    calls: &[Call<'_>],
    windows: &[FaultWindow],
    span: Span,
    title: &str,
) -> String {
    let frame = Frame { span };
    let mut out = String::new();
    frame.open(&mut out, title);
    frame.windows(&mut out, windows);
    let secs = span.len() as f64 / 1e9;
    let bucket = bucket_secs(secs);
    let n = ((secs / bucket).ceil() as usize).max(1);
    let mut per_f: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for c in calls.iter().filter(|c| c.outcome() == OpType::Ok) {
        let Some(end) = c.end_time() else { continue };
        let i = ((end.saturating_sub(span.start) as f64 / 1e9 / bucket) as usize).min(n - 1);
        per_f.entry(c.f()).or_insert_with(|| vec![0; n])[i] += 1;
    }
    let max = per_f
        .values()
        .flat_map(|v| v.iter())
        .copied()
        .max()
        .unwrap_or(0) as f64
        / bucket;
    let top = nice_ticks(0.0, max.max(1.0), 6)
        .last()
        .copied()
        .unwrap_or(1.0)
        .max(max);
    let y = |rate: f64| frame.bottom() - (rate / top).clamp(0.0, 1.0) * (frame.bottom() - TOP);
    let ticks: Vec<(String, f64)> = nice_ticks(0.0, top, 6)
        .into_iter()
        .map(|v| (fmt_num(v), y(v)))
        .collect();
    frame.y_axis(&mut out, "ok ops/s", &ticks);
    frame.time_axis(&mut out);
    let mut legend = Vec::new();
    for (k, (f, counts)) in per_f.iter().enumerate() {
        let c = PALETTE[k % PALETTE.len()];
        let pts: Vec<String> = counts
            .iter()
            .enumerate()
            .map(|(i, &count)| {
                let mid = span.start + ((i as f64 + 0.5) * bucket * 1e9) as u64;
                format!(
                    "{:.1},{:.1}",
                    frame.x(mid.min(span.end)),
                    y(count as f64 / bucket)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{}"><title>{}</title></polyline>"#,
            pts.join(" "),
            esc(f)
        );
        legend.push((f.to_string(), c));
    }
    if per_f.is_empty() {
        no_data(&mut out);
    }
    frame.legend(&mut out, &legend);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="10">buckets of {} s</text>"#,
        W - RIGHT + 12.0,
        H - 8.0,
        fmt_num(bucket)
    );
    out.push_str("</svg>\n");
    out
}

fn no_data(out: &mut String) {
    let _ = writeln!(
        out,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#999">no data</text>"##,
        (LEFT + W - RIGHT) / 2.0,
        H / 2.0
    );
}

/// About 60 buckets over the run, each a round number of seconds.
fn bucket_secs(run_secs: f64) -> f64 {
    const STEPS: [f64; 10] = [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0];
    let want = run_secs / 60.0;
    STEPS.iter().copied().find(|&s| s >= want).unwrap_or(600.0)
}

/// Round tick values from `lo` to `hi`, about `n` of them.
pub(crate) fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi <= lo || n == 0 {
        return vec![lo];
    }
    let raw = (hi - lo) / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    (0..1000)
        .map(|i| first + step * i as f64)
        .take_while(|v| *v <= hi + step * 1e-9)
        .collect()
}

/// `0.5`, `12`, `1500`: no trailing zeros.
pub(crate) fn fmt_num(v: f64) -> String {
    if v.abs() >= 1.0 || v == 0.0 {
        let r = (v * 100.0).round() / 100.0;
        if r.fract() == 0.0 {
            format!("{r:.0}")
        } else {
            format!("{r}")
        }
    } else {
        let s = format!("{v:.6}");
        s.trim_end_matches('0').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            nice_ticks(0.0, 10.0, 5),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        );
        assert_eq!(nice_ticks(0.0, 0.9, 3), vec![0.0, 0.5]);
        assert_eq!(nice_ticks(3.0, 3.0, 5), vec![3.0]);
        assert_eq!(fmt_num(0.001), "0.001");
        assert_eq!(fmt_num(1500.0), "1500");
        assert_eq!(fmt_num(2.5), "2.5");
        assert_eq!(bucket_secs(30.0), 0.5);
        assert_eq!(bucket_secs(600.0), 10.0);
    }
}
