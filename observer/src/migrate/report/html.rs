//! The report as one self-contained HTML page: inline CSS and SVG, no
//! script, no font or anything else fetched, so it opens anywhere and can
//! be attached to a change request as it is.
use std::fmt::Write;

use super::{
    ROW_HEADER, Report, count, human,
    markdown::moment_word,
    percent,
    plots::{self, HEATMAP_NODES, TIMELINE_NODES},
    row_cells,
};
use crate::{
    loss::Signal,
    migrate::{
        gate::Breach,
        record::{Moment, NodeRecord},
        state::{Phase, Step},
    },
};

const STYLE: &str = r#"
:root { --ink:#333a44; --muted:#6b7480; --line:#e3e6ea; --ok:#2e9e5b; --bad:#d63232; --warn:#f2841a; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); margin: 0; background: #f6f7f9; }
main { max-width: 1000px; margin: 0 auto; padding: 0 20px 40px; }
header { padding: 22px 20px 18px; color: #fff; }
header.done { background: linear-gradient(90deg, #1e7f4a, #2e9e5b); }
header.halted { background: linear-gradient(90deg, #a51f1f, #d63232); }
header.running, header.aborted { background: linear-gradient(90deg, #9a5b00, #f2841a); }
header .inner { max-width: 960px; margin: 0 auto; }
header h1 { margin: 0 0 4px; font-size: 24px; }
header p { margin: 0; font-size: 16px; opacity: .95; }
.badge { display: inline-block; padding: 1px 10px; border-radius: 12px; background: rgba(255,255,255,.22); font-size: 14px; vertical-align: middle; margin-left: 8px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px 18px; margin-top: 16px; }
h2 { font-size: 17px; margin: 0 0 10px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
.facts { display: grid; grid-template-columns: 150px 1fr; gap: 4px 14px; margin: 0; }
.facts dt { color: var(--muted); }
.facts dd { margin: 0; }
pre { background: #fbf3f3; border-left: 4px solid var(--bad); padding: 8px 12px; white-space: pre-wrap; margin: 0; font-size: 13px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.compact { width: auto; min-width: 320px; }
table.pairs td:first-child, table.pairs td:nth-child(3) { white-space: nowrap; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 12px; color: var(--muted); margin-top: 4px; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; vertical-align: -2px; margin-right: 4px; }
.panels { display: flex; flex-wrap: wrap; gap: 8px 10px; align-items: flex-end; }
figure { margin: 0; }
svg { max-width: 100%; height: auto; }
figcaption { font-size: 12px; color: var(--muted); text-align: center; }
.ok { color: var(--ok); font-weight: 600; }
.bad { color: var(--bad); font-weight: 600; }
ol.todo li { margin-bottom: 6px; }
ol.todo code, td code { background: #f1f3f5; padding: 0 4px; border-radius: 3px; }
.cmd { display: block; font-family: ui-monospace, monospace; font-size: 12px; background: #f1f3f5; padding: 2px 6px; margin-top: 2px; }
details { margin-top: 8px; }
summary { cursor: pointer; font-weight: 600; }
footer { color: var(--muted); font-size: 12px; margin-top: 16px; }
"#;

/// Lines of the halt's reason shown before the rest is folded.
const WHY_LINES: usize = 9;
/// Worst pairs of the whole migration listed.
const WORST_PAIRS: usize = 10;

pub fn render(report: &Report) -> String {
    let s = &report.state;
    let (class, word, lead) = match &s.phase {
        Phase::Done { .. } => (
            "done",
            "done",
            format!(
                "All {} migrated to Cilium, the gate held.",
                count(s.nodes.len(), "node")
            ),
        ),
        Phase::Halted { node, step, .. } => (
            "halted",
            "halted",
            format!("Stopped at {node}, step {step}: {}", halt_headline(report)),
        ),
        Phase::Aborted { at } => (
            "aborted",
            "aborted",
            format!("Aborted by an operator at {at}."),
        ),
        Phase::Running => (
            "running",
            "running",
            "In progress (or its driver died).".into(),
        ),
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Migration to Cilium: {word}</title><style>{STYLE}</style></head><body>\n\
         <header class=\"{class}\" id=\"summary\"><div class=\"inner\"><h1>Migration to Cilium\
         <span class=\"badge\">{word}</span></h1><p>{}</p></div></header>\n<main>\n",
        esc(&lead)
    );
    facts(&mut out, report);
    if let Phase::Halted { reason, .. } = &s.phase {
        // The worst reasons in view, the rest one click away.
        let lines: Vec<&str> = reason.lines().collect();
        let shown = lines.len().min(WHY_LINES);
        let _ = write!(
            out,
            "<section id=\"why\"><h2>Why it stopped</h2><pre>{}</pre>",
            esc(&lines[..shown].join("\n"))
        );
        if lines.len() > shown {
            let _ = write!(
                out,
                "<details><summary>{} more</summary><pre>{}</pre></details>",
                count(lines.len() - shown, "line"),
                esc(&lines[shown..].join("\n"))
            );
        }
        out.push_str("</section>\n");
    }
    // Stopped, the next move comes first; done, the figures do.
    let done = matches!(s.phase, Phase::Done { .. });
    if !done {
        left_to_do(&mut out, report);
    }
    timeline(&mut out, report);
    loss(&mut out, report);
    heatmaps(&mut out, report);
    worst_pairs(&mut out, report);
    if done {
        left_to_do(&mut out, report);
    }
    details(&mut out, report);
    let a = &report.about;
    let _ = write!(
        out,
        "<footer>crossover {} report, made {} by {}; the records it is made of: ConfigMaps \
         {} in the migration's namespace.</footer>\n</main></body></html>\n",
        esc(&a.version),
        esc(&a.generated_at),
        esc(&a.generated_by),
        esc("crossover-migration, crossover-migration-node-*"),
    );
    out
}

/// The first reason the gate gave, for the banner.
fn halt_headline(report: &Report) -> String {
    let Phase::Halted { node, reason, .. } = &report.state.phase else {
        return String::new();
    };
    let closed = report
        .records
        .iter()
        .filter(|r| r.node == *node)
        .flat_map(|r| r.readings.iter())
        .rfind(|r| !r.decision.passed && r.moment != Moment::During);
    // A pair towards the node first, then any pair, then a sum.
    let breaches = closed
        .map(|r| r.decision.breaches.as_slice())
        .unwrap_or_default();
    let pair = |b: &&Breach| super::is_pair(&b.row);
    let headline = breaches
        .iter()
        .filter(pair)
        .find(|b| b.row.peer_node == *node)
        .or_else(|| breaches.iter().find(pair))
        .or_else(|| breaches.first());
    match headline {
        Some(b) => {
            let mut line = format!(
                "{} lost {} of what {} sent it on the {} overlay ({}, threshold {}).",
                b.row.peer_node,
                percent(b.ratio),
                b.row.node,
                b.row.overlay,
                b.row.signal,
                percent(b.threshold)
            );
            if crate::loss::mtu::describe(&b.row).is_some() {
                line += &format!(" {}.", b.why);
            } else if !b.why.is_empty() {
                line += &format!(" The kernel: {}.", b.why);
            }
            if let Some(m) = &b.path_mtu {
                line += &format!(" {}.", crate::loss::mtu::say_told(m));
            }
            line
        }
        None => reason.lines().next().unwrap_or_default().to_string(),
    }
}

fn facts(out: &mut String, report: &Report) {
    let s = &report.state;
    let a = &report.about;
    let d = report.durations();
    let ended = match &s.phase {
        Phase::Done { at } | Phase::Halted { at, .. } | Phase::Aborted { at } => at.as_str(),
        Phase::Running => "not yet",
    };
    let done = s.nodes.iter().filter(|n| n.step == Step::Done).count();
    let per_step: Vec<String> = d
        .per_step
        .iter()
        .filter(|t| t.seconds > 0)
        .map(|t| format!("{} {}", t.step, human(t.seconds)))
        .collect();
    let rows: [(&str, String); 9] = [
        (
            "started by",
            s.started_by
                .clone()
                .unwrap_or_else(|| "not recorded".into()),
        ),
        ("started", s.started.clone()),
        ("ended", ended.into()),
        (
            "took",
            d.total_seconds.map(human).unwrap_or_else(|| "-".into()),
        ),
        (
            "time per step",
            format!("{} (all nodes; table below)", per_step.join(", ")),
        ),
        (
            "nodes",
            format!("{done} of {} done{}", s.nodes.len(), skipped(report)),
        ),
        ("cluster", a.cluster.clone()),
        ("gate", report.settings_line()),
        (
            "crossover",
            format!(
                "{} (the run), {} (this report)",
                s.crossover_version.as_deref().unwrap_or("not recorded"),
                a.version
            ),
        ),
    ];
    out.push_str("<section id=\"facts\"><h2>At a glance</h2><dl class=\"facts\">");
    for (k, v) in rows {
        let _ = write!(out, "<dt>{k}</dt><dd>{}</dd>", esc(&v));
    }
    out.push_str("</dl></section>\n");
}

fn skipped(report: &Report) -> String {
    match report.state.skipped.len() {
        0 => String::new(),
        n => format!(", {} skipped by the plan", count(n, "node")),
    }
}

fn left_to_do(out: &mut String, report: &Report) {
    out.push_str("<section id=\"todo\"><h2>What is left to do</h2><ol class=\"todo\">");
    for item in report.left_to_do() {
        let mut lines = item.lines();
        let _ = write!(out, "<li>{}", code_spans(lines.next().unwrap_or_default()));
        for cmd in lines {
            let _ = write!(out, "<span class=\"cmd\">{}</span>", esc(cmd));
        }
        out.push_str("</li>");
    }
    out.push_str("</ol></section>\n");
}

fn timeline(out: &mut String, report: &Report) {
    out.push_str("<section id=\"timeline\"><h2>Timeline: nodes and steps</h2>");
    out.push_str(&plots::timeline(report));
    out.push_str("<div class=\"legend\">");
    for step in Step::ALL.iter().filter(|s| **s != Step::Done) {
        let c = plots::step_colour(*step);
        let _ = write!(
            out,
            "<span><span class=\"swatch\" style=\"background:rgb({},{},{})\"></span>{step}</span>",
            c.0, c.1, c.2
        );
    }
    out.push_str(
        "<span><span class=\"swatch\" style=\"border:3px solid #d63232\"></span>failed, \
         breached or interrupted</span></div>",
    );
    if report.state.nodes.len() > TIMELINE_NODES {
        let _ = write!(
            out,
            "<p>The first {TIMELINE_NODES} nodes of the plan are drawn; {} more are in the \
             details below.</p>",
            report.state.nodes.len() - TIMELINE_NODES
        );
    }
    out.push_str("</section>\n");
}

fn loss(out: &mut String, report: &Report) {
    out.push_str(
        "<section id=\"loss\"><h2>Loss over time, per signal</h2><p>Each point is the worst \
         node pair the gate judged at one reading. Dashed: the thresholds. On the top line, \
         each gate decision (baseline and soak): <span class=\"ok\">○ passed</span>, \
         <span class=\"bad\">✕ closed</span>; readings while a node changes are recorded, not \
         gated.</p>",
    );
    out.push_str(&plots::loss_over_time(report));
    out.push_str("<div class=\"legend\">");
    for signal in Signal::ALL {
        let c = plots::signal_colour(signal);
        let _ = write!(
            out,
            "<span><span class=\"swatch\" style=\"background:rgb({},{},{})\"></span>{signal}</span>",
            c.0, c.1, c.2
        );
    }
    out.push_str("</div></section>\n");
}

fn heatmaps(out: &mut String, report: &Report) {
    out.push_str(
        "<section id=\"pairs\"><h2>Node pairs, before, during and after each move</h2><p>Row: \
         the sending node; column: the receiving node. Each cell is the worst judged loss \
         between the two (any signal, overlay and networks), green at none, amber at half the \
         threshold, red at or over it; <b>few</b>: too few packets to judge; <b>·</b>: no row \
         kept (a record keeps the node's own rows and every breach).</p>",
    );
    for r in &report.records {
        let panels = plots::panels(report, r);
        if panels.is_empty() {
            continue;
        }
        let _ = write!(
            out,
            "<h3>{}</h3><div class=\"panels\" data-node=\"{}\">",
            esc(&r.node),
            esc(&r.node)
        );
        let mut named: Option<&[String]> = None;
        for p in &panels {
            let row_names = named != Some(&p.nodes[..]);
            named = Some(&p.nodes);
            let svg = plots::heatmap(p, row_names);
            let _ = write!(out, "<figure>{svg}<figcaption>{}", esc(&p.title));
            if p.left_out > 0 {
                let _ = write!(
                    out,
                    "; the {HEATMAP_NODES} worst of {} nodes",
                    p.left_out + HEATMAP_NODES
                );
            }
            out.push_str("</figcaption></figure>");
        }
        out.push_str("</div>");
    }
    out.push_str("</section>\n");
}

fn worst_pairs(out: &mut String, report: &Report) {
    let worst = report.worst_overall(WORST_PAIRS);
    out.push_str("<section id=\"worst\"><h2>Worst pairs</h2>");
    if worst.is_empty() {
        out.push_str("<p>No judged row lost anything.</p></section>\n");
        return;
    }
    out.push_str("<table class=\"pairs\"><tr>");
    for h in ROW_HEADER {
        let _ = write!(out, "<th>{h}</th>");
    }
    out.push_str("<th>threshold</th><th>while migrating</th><th>when</th></tr>");
    let t = &report.state.settings.thresholds;
    for (node, moment, row) in worst {
        let threshold = t.for_signal(row.signal);
        let over = row.ratio().unwrap_or(0.0) > threshold;
        out.push_str("<tr>");
        for (i, cell) in row_cells(row).iter().enumerate() {
            // sent, lost, ratio: figures; the ratio red over its threshold.
            let class = match i {
                6 if over => "num bad",
                4.. => "num",
                _ => "",
            };
            let _ = write!(out, "<td class=\"{class}\">{}</td>", esc(cell));
        }
        let _ = write!(
            out,
            "<td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            percent(threshold),
            esc(node),
            moment_word(moment)
        );
    }
    out.push_str("</table></section>\n");
}

fn details(out: &mut String, report: &Report) {
    let d = report.durations();
    out.push_str("<section id=\"details\"><h2>In detail</h2>");
    out.push_str(
        "<h3>Time per step, all nodes</h3><table class=\"compact\"><tr><th>step</th>\
         <th class=\"num\">runs</th><th class=\"num\">took</th></tr>",
    );
    for t in &d.per_step {
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            t.step,
            t.runs,
            human(t.seconds)
        );
    }
    out.push_str("</table><h3>Per node</h3>");
    for r in &report.records {
        node_details(out, report, r);
    }
    out.push_str("</section>\n");
}

fn node_details(out: &mut String, report: &Report, r: &NodeRecord) {
    let failed = r
        .steps
        .iter()
        .any(|s| s.outcome != "ok" && s.outcome != "running");
    let took = report
        .durations()
        .per_node
        .into_iter()
        .find(|(n, _)| *n == r.node)
        .map(|(_, s)| human(s))
        .unwrap_or_else(|| "-".into());
    let _ = write!(
        out,
        "<details{}><summary>{} ({took}, {}, {})</summary>",
        if failed { " open" } else { "" },
        esc(&r.node),
        count(r.steps.len(), "step"),
        count(r.readings.len(), "reading")
    );
    out.push_str(
        "<table><tr><th>step</th><th>started</th><th>took</th><th>outcome</th><th>detail</th></tr>",
    );
    for s in &r.steps {
        let took = super::step_seconds(s)
            .map(human)
            .unwrap_or_else(|| "-".into());
        let class = if s.outcome == "ok" { "ok" } else { "bad" };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{took}</td><td class=\"{class}\">{}</td>\
             <td>{}</td></tr>",
            s.step,
            esc(&s.started),
            esc(&s.outcome),
            esc(&s.detail).replace('\n', "<br>")
        );
    }
    for rb in &r.rollbacks {
        let _ = write!(
            out,
            "<tr><td>rollback</td><td>{}</td><td></td><td>{}</td><td>{}</td></tr>",
            esc(&rb.started),
            esc(&rb.outcome),
            esc(&rb.detail)
        );
    }
    out.push_str("</table>");
    let gate = Report::gate_lines(r);
    if !gate.is_empty() {
        let _ = write!(
            out,
            "<h3>Gate decisions ({}{})</h3><table><tr><th>at</th><th>step</th><th>verdict</th>\
             <th>on what</th></tr>",
            gate.len(),
            if r.gate_left_out > 0 {
                format!(", {} more left out of the record", r.gate_left_out)
            } else {
                String::new()
            }
        );
        for line in gate {
            let class = match line.verdict {
                super::GateVerdict::Pass => "ok",
                super::GateVerdict::Pending => "",
                super::GateVerdict::Halt => "bad",
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td class=\"{class}\">{}</td><td>{}</td></tr>",
                esc(&line.at),
                line.step,
                line.verdict.word(),
                esc(&line.detail)
            );
        }
        out.push_str("</table>");
    }
    if !r.readings.is_empty() {
        out.push_str(
            "<h3>Readings</h3><table><tr><th>at</th><th>when</th><th>gate</th><th>what it saw</th></tr>",
        );
        for reading in &r.readings {
            let d = &reading.decision;
            let (class, verdict) = match (reading.moment, d.passed) {
                (Moment::During, _) => ("", "recorded"),
                (_, true) => ("ok", "passed"),
                (_, false) => ("bad", "closed"),
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{} ({})</td><td class=\"{class}\">{verdict}</td><td>{}</td></tr>",
                esc(&d.at),
                moment_word(reading.moment),
                reading.step,
                esc(&(d.summary() + &d.read_from()))
            );
        }
        out.push_str("</table>");
    }
    if !r.events.is_empty() || !r.errors.is_empty() {
        out.push_str("<h3>Events and errors</h3><table>");
        for e in &r.events {
            let class = if e.warning { "bad" } else { "" };
            let _ = write!(
                out,
                "<tr><td>{}</td><td class=\"{class}\">{}</td><td>{}</td></tr>",
                esc(&e.at),
                esc(&e.reason),
                esc(&e.note).replace('\n', "<br>")
            );
        }
        for e in &r.errors {
            let _ = write!(
                out,
                "<tr><td></td><td class=\"bad\">error</td><td>{}</td></tr>",
                esc(e)
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</details>");
}

/// Escaped text with `backquoted` spans as code.
fn code_spans(text: &str) -> String {
    esc(text)
        .split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("<code>{part}</code>")
            } else {
                part.to_string()
            }
        })
        .collect()
}

/// Text made safe inside HTML elements and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{super::fixtures, *};

    #[test]
    fn the_page_is_self_contained_and_names_what_stopped_it() {
        let html = fixtures::halted_migration().html();
        assert!(html.starts_with("<!DOCTYPE html>"));
        // Nothing fetched: no script, stylesheet link, image or font URL.
        for banned in ["<script", "<link", "<img", "src=", "href=", "url("] {
            assert!(!html.contains(banned), "{banned} in the page");
        }
        assert!(
            html.contains("worker-3 lost 5.20% of what worker-1 sent it on the cilium overlay"),
            "{html}"
        );
        assert!(html.contains("<span class=\"badge\">halted</span>"));
        assert!(
            html.matches("<svg").count() >= 2 + 3 * 3,
            "timeline, loss, 3 panels a node"
        );
        assert!(
            html.contains("<code>crossover migrate resume</code>"),
            "{html}"
        );
        assert!(html.contains("sre@laptop") && html.contains("6m 51s"));
    }

    #[test]
    fn text_from_the_cluster_is_escaped() {
        assert_eq!(
            esc("<b>\"x\" & 'y'</b>"),
            "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;"
        );
        assert_eq!(code_spans("run `a<b` now"), "run <code>a&lt;b</code> now");
    }
}
