//! The timeline page: one lane per process, each operation a bar from its
//! invocation to its completion, coloured by outcome; nemesis windows as
//! shaded bands across all lanes. Self-contained HTML, no scripts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::plot::{fmt_num, nice_ticks, outcome_color};
use super::windows::{color, FaultWindow};
use super::{esc, Span};
use crate::checker::{Call, CheckResult};
use crate::history::OpType;

/// At most this many operation bars (evenly thinned beyond, keeping every
/// operation an anomaly names).
pub(crate) const MAX_BARS: usize = 20_000;

const NAME_W: usize = 90;

pub(crate) fn render(
    calls: &[Call<'_>],
    windows: &[FaultWindow],
    span: Span,
    result: &CheckResult,
) -> String {
    let flagged = result.anomaly_indices();
    let stride = calls.len().div_ceil(MAX_BARS).max(1);
    let shown: Vec<&Call<'_>> = calls
        .iter()
        .enumerate()
        .filter(|(i, c)| {
            i % stride == 0
                || flagged.contains(&c.invoke.index)
                || c.complete.is_some_and(|o| flagged.contains(&o.index))
        })
        .map(|(_, c)| c)
        .collect();
    let mut lanes: BTreeMap<i64, Vec<&Call<'_>>> = BTreeMap::new();
    for c in calls {
        lanes.entry(c.process()).or_default();
    }
    for c in &shown {
        lanes.entry(c.process()).or_default().push(c);
    }
    let secs = span.len() as f64 / 1e9;
    // ~150 px per second, within reason.
    let width = (secs * 150.0).clamp(900.0, 30_000.0) as usize;

    let mut out = String::with_capacity(4096 + shown.len() * 160);
    let title = format!("{} — {}", result.workload, result.verdict);
    let _ = write!(
        out,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{t}</title>
<style>
body{{font:12px/1.4 sans-serif;margin:16px;color:#222}}
h1{{font-size:18px;margin:0 0 6px}}
.verdict-valid{{color:#2e7d32}}.verdict-invalid{{color:#c62828}}.verdict-unknown{{color:#a66300}}
.scroll{{overflow-x:auto;border:1px solid #ccc;padding:18px 0 4px}}
.tl{{position:relative}}
.bands{{position:absolute;left:{NAME_W}px;right:0;top:-18px;bottom:0;pointer-events:none}}
.band{{position:absolute;top:0;bottom:0;opacity:.16;min-width:2px}}
.blabel{{position:absolute;top:0;font-size:10px;white-space:nowrap;opacity:1}}
.row{{display:flex;height:16px;border-bottom:1px solid #f2f2f2}}
.name{{flex:none;width:{NAME_W}px;text-align:right;padding-right:6px;box-sizing:border-box;color:#555;position:sticky;left:0;background:#fff;z-index:2}}
.lane{{position:relative;flex:1}}
.op{{position:absolute;top:3px;height:10px;min-width:2px;border-radius:2px}}
.o{{background:{ok}}}.f{{background:{fail}}}.i{{background:{info}}}
.p{{background:repeating-linear-gradient(90deg,{info} 0 4px,#fff 4px 6px)}}
.x{{outline:2px solid #000;z-index:1}}
.axis{{position:relative;height:18px;margin-left:{NAME_W}px}}
.tick{{position:absolute;top:0;font-size:10px;color:#555;transform:translateX(-50%)}}
.legend span{{display:inline-block;width:12px;height:10px;margin:0 4px 0 12px;vertical-align:middle}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ddd;padding:2px 6px;text-align:left}}
</style></head><body>
<h1>{t_workload} — <span class="verdict-{v}">{v}</span></h1>
<p>{summary}</p>
<p>{calls} operations: {ok} ok, {fail} fail, {info} info ({pending} unfinished); {nem} nemesis events; {secs} s.</p>
<p class="legend"><span class="o"></span>ok<span class="f"></span>fail<span class="i"></span>info<span class="p"></span>unfinished<span class="x" style="background:#fff"></span>named by an anomaly</p>
"#,
        t = esc(&title),
        t_workload = esc(&result.workload),
        v = result.verdict,
        summary = esc(&result.summary),
        ok = outcome_color(OpType::Ok),
        fail = outcome_color(OpType::Fail),
        info = outcome_color(OpType::Info),
        calls = result.stats.calls,
        pending = result.stats.pending,
        nem = result.stats.nemesis,
        secs = fmt_num(secs),
    );
    if stride > 1 {
        let _ = write!(
            out,
            "<p>Showing {} of {} operations (every {stride}th, and all named by an anomaly).</p>",
            shown.len(),
            calls.len()
        );
    }
    let _ = write!(
        out,
        r#"<div class="scroll"><div class="tl" style="width:{}px">
<div class="bands">"#,
        width + NAME_W
    );
    for w in windows {
        let l = span.frac(w.start) * 100.0;
        let r = span.frac(w.end_or(span.end)) * 100.0;
        let c = color(&w.kind);
        let _ = write!(
            out,
            r#"<div class="band" data-kind="{k}" style="left:{l:.3}%;width:{:.3}%;background:{c}" title="{k}: {d}"></div><div class="blabel" style="left:{l:.3}%;color:{c}">{k}</div>"#,
            (r - l).max(0.0),
            k = esc(&w.kind),
            d = esc(&w.description),
        );
    }
    out.push_str("</div>\n");
    // The nemesis lane first.
    let _ = write!(
        out,
        r#"<div class="row" id="lane-nemesis" data-process="nemesis"><div class="name">nemesis</div><div class="lane">"#
    );
    for w in windows {
        let l = span.frac(w.start) * 100.0;
        let r = span.frac(w.end_or(span.end)) * 100.0;
        let _ = write!(
            out,
            r#"<div class="op" style="left:{l:.3}%;width:{:.3}%;background:{}" title="{}: {}"></div>"#,
            (r - l).max(0.0),
            color(&w.kind),
            esc(&w.kind),
            esc(&w.description)
        );
    }
    out.push_str("</div></div>\n");
    for (process, calls) in &lanes {
        let _ = write!(
            out,
            r#"<div class="row" id="lane-{process}" data-process="{process}"><div class="name">process {process}</div><div class="lane">"#
        );
        for c in calls {
            bar(&mut out, c, span, &flagged);
        }
        out.push_str("</div></div>\n");
    }
    out.push_str("</div>\n<div class=\"axis\" style=\"width:");
    let _ = write!(out, "{width}px\">");
    for s in nice_ticks(0.0, secs, (width / 120).max(2)) {
        let _ = write!(
            out,
            r#"<span class="tick" style="left:{:.3}%">{}s</span>"#,
            span.frac(span.start + (s * 1e9) as u64) * 100.0,
            fmt_num(s)
        );
    }
    out.push_str("</div></div>\n");
    anomalies_table(&mut out, result);
    out.push_str("</body></html>\n");
    out
}

fn bar(out: &mut String, c: &Call<'_>, span: Span, flagged: &BTreeSet<u64>) {
    let l = span.frac(c.start_time()) * 100.0;
    let r = span.frac(c.end_time().unwrap_or(span.end)) * 100.0;
    let class = match (c.outcome(), c.complete.is_some()) {
        (OpType::Ok, _) => "o",
        (OpType::Fail, _) => "f",
        (_, true) => "i",
        (_, false) => "p",
    };
    let bad =
        flagged.contains(&c.invoke.index) || c.complete.is_some_and(|o| flagged.contains(&o.index));
    let mut title = c.describe();
    if let Some(v) = c.result() {
        if !c.invoke.value.is_null() && v != &c.invoke.value {
            let _ = write!(title, " -> {v}");
        }
    }
    if let Some(end) = c.end_time() {
        let _ = write!(
            title,
            "; {} ms",
            fmt_num(end.saturating_sub(c.start_time()) as f64 / 1e6)
        );
    }
    if let Some(e) = c.complete.and_then(|o| o.error.as_deref()) {
        let _ = write!(title, "; {e}");
    }
    let _ = write!(
        out,
        r#"<div class="op {class}{}" style="left:{l:.3}%;width:{:.3}%" title="{}"></div>"#,
        if bad { " x" } else { "" },
        (r - l).max(0.0),
        esc(&title)
    );
}

fn anomalies_table(out: &mut String, result: &CheckResult) {
    if result.anomalies.is_empty() {
        out.push_str("<p>No anomalies.</p>\n");
        return;
    }
    let _ = write!(
        out,
        "<h2>Anomalies ({})</h2>\n<table><tr><th>kind</th><th>key</th><th>what</th><th>indices</th></tr>\n",
        esc(&result.anomaly_brief())
    );
    for a in &result.anomalies {
        let indices: Vec<String> = a.ops.iter().map(|o| o.index.to_string()).collect();
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            a.kind,
            esc(a.key.as_deref().unwrap_or("")),
            esc(&a.message),
            indices.join(" ")
        );
    }
    out.push_str("</table>\n");
}
