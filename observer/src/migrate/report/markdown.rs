//! The report as Markdown: the header, the nodes, and per node its steps,
//! one line per reading (the gate's decision) and its worst rows once.
use std::fmt::Write;

use super::{ROW_HEADER, Report, count, human, row_cells};
use crate::migrate::{
    record::{Moment, NodeRecord, Reading},
    state::Phase,
};

pub fn render(report: &Report) -> String {
    let mut out = String::from("# Migration to Cilium\n\n");
    let s = &report.state;
    let a = &report.about;
    let phase = match &s.phase {
        Phase::Running => "running (or its driver crashed: `crossover migrate resume`)".into(),
        Phase::Halted { node, step, at, .. } => {
            format!("**halted** at {at}, node {node}, step {step}")
        }
        Phase::Aborted { at } => format!("aborted at {at}"),
        Phase::Done { at } => format!("done at {at}"),
    };
    let d = report.durations();
    let took = d.total_seconds.map(human).unwrap_or_else(|| "-".into());
    let by = s.started_by.as_deref().unwrap_or("not recorded");
    let _ = writeln!(out, "- started: {} by {by}, took {took}", s.started);
    let _ = writeln!(out, "- state: {phase}");
    let _ = writeln!(out, "- cluster: {}", a.cluster);
    let _ = writeln!(out, "- gate: {}", report.settings_line());
    let _ = writeln!(
        out,
        "- report: crossover {} (the run: {}), by {} at {}",
        a.version,
        s.crossover_version.as_deref().unwrap_or("not recorded"),
        a.generated_by,
        a.generated_at
    );
    if let Phase::Halted { reason, .. } = &s.phase {
        let _ = writeln!(out, "\n## Why it halted\n\n```\n{reason}\n```");
    }
    out += "\n## What is left to do\n\n";
    for item in report.left_to_do() {
        let mut lines = item.lines();
        let _ = writeln!(out, "- {}", lines.next().unwrap_or_default());
        for command in lines {
            let _ = writeln!(out, "  - `{command}`");
        }
    }
    out += "\n## Nodes\n\n| # | node | role | next step | took |\n|---|---|---|---|---|\n";
    for (i, n) in s.nodes.iter().enumerate() {
        let role = if n.control_plane {
            "control plane"
        } else {
            "worker"
        };
        let took = d
            .per_node
            .iter()
            .find(|(name, _)| *name == n.name)
            .map(|(_, secs)| human(*secs))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "| {} | {} | {role} | {} | {took} |",
            i + 1,
            n.name,
            n.step
        );
    }
    for skipped in &s.skipped {
        let _ = writeln!(
            out,
            "| - | {} | skipped | {} | - |",
            skipped.name, skipped.reason
        );
    }
    out += "\n## Time per step (all nodes)\n\n| step | runs | took |\n|---|---|---|\n";
    for t in &d.per_step {
        let _ = writeln!(out, "| {} | {} | {} |", t.step, t.runs, human(t.seconds));
    }
    for r in &report.records {
        node_section(&mut out, report, r);
    }
    out
}

fn node_section(out: &mut String, report: &Report, r: &NodeRecord) {
    let _ = writeln!(
        out,
        "\n## {}\n\n| step | started | ended | outcome | detail |\n|---|---|---|---|---|",
        r.node
    );
    for s in &r.steps {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            s.step,
            s.started,
            s.ended.as_deref().unwrap_or("-"),
            s.outcome,
            cell(&s.detail)
        );
    }
    for rb in &r.rollbacks {
        let _ = writeln!(
            out,
            "| rollback | {} | {} | {} | {} |",
            rb.started,
            rb.ended,
            rb.outcome,
            cell(&rb.detail)
        );
    }
    if !r.readings.is_empty() {
        let _ = writeln!(
            out,
            "\n### Loss: {}\n\n| at | when | step | gate | what it saw |\n|---|---|---|---|---|",
            count(r.readings.len(), "reading")
        );
        for reading in &r.readings {
            reading_line(out, reading);
        }
        let worst = report.worst_rows(r);
        if !worst.is_empty() {
            let _ = writeln!(
                out,
                "\nWorst rows (each at its worst reading):\n\n| {} | when |\n|{}---|",
                ROW_HEADER.join(" | "),
                "---|".repeat(ROW_HEADER.len())
            );
            for (moment, row) in worst {
                let cells = row_cells(row).join(" | ");
                let _ = writeln!(out, "| {cells} | {} |", moment_word(moment));
            }
        }
    }
    let gate = Report::gate_lines(r);
    if !gate.is_empty() {
        let left_out = if r.gate_left_out > 0 {
            format!(" ({} more left out of the record)", r.gate_left_out)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "\n### Gate decisions: {}{left_out}\n\n| at | step | verdict | on what |\n|---|---|---|---|",
            gate.len()
        );
        for line in gate {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                line.at,
                line.step,
                line.verdict.word(),
                cell(&line.detail)
            );
        }
    }
    if !r.events.is_empty() {
        out.push_str(
            "\n### Events on the node\n\n| at | type | reason | note |\n|---|---|---|---|\n",
        );
        for e in &r.events {
            let kind = if e.warning { "Warning" } else { "Normal" };
            let _ = writeln!(
                out,
                "| {} | {kind} | {} | {} |",
                e.at,
                e.reason,
                cell(&e.note)
            );
        }
    }
    if !r.errors.is_empty() {
        out.push_str("\n### Errors\n\n");
        for e in &r.errors {
            let _ = writeln!(out, "- {}", cell(e));
        }
    }
}

pub fn moment_word(moment: Moment) -> &'static str {
    match moment {
        Moment::Before => "before (baseline)",
        Moment::During => "during",
        Moment::After => "after (soak, the gate)",
        Moment::RolledBack => "after the rollback",
    }
}

fn reading_line(out: &mut String, reading: &Reading) {
    let d = &reading.decision;
    let verdict = match (reading.moment, d.passed) {
        (Moment::During, _) => "recorded",
        (_, true) => "passed",
        (_, false) => "**closed**",
    };
    let _ = writeln!(
        out,
        "| {} | {} | {} | {verdict} | {} |",
        d.at,
        moment_word(reading.moment),
        reading.step,
        cell(&(d.summary() + &d.read_from()))
    );
}

/// Text made safe for one Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', "<br>")
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;

    #[test]
    fn the_markdown_reads_as_a_summary_not_a_dump() {
        let md = fixtures::halted_migration().markdown();
        assert!(
            md.contains("- gate: loss at most 2.00% for every signal (probe_udp 5.00%)"),
            "{md}"
        );
        assert!(md.contains("on breach: halt,"), "{md}");
        assert!(!md.contains("()") && !md.contains("Halt"), "{md}");
        assert!(
            md.contains("started: 2026-11-30T10:00:00Z by sre@laptop, took 6m 51s"),
            "{md}"
        );
        assert!(md.contains("cluster: kind-lab"), "{md}");
        assert!(md.contains("| drain | 3 | 2m |"), "{md}");
        assert!(md.contains("### Loss: 6 readings"), "{md}");
        assert!(
            md.contains("**closed**") && md.contains("## worker-3"),
            "{md}"
        );
        // One table line per reading, the worst rows once per node (3
        // records), never a table of every row at every reading.
        let row_lines = md
            .lines()
            .filter(|l| l.starts_with("| ") && l.contains(" → ") && !l.starts_with("| node →"))
            .count();
        assert_eq!(row_lines, 3 * super::super::WORST_ROWS, "{md}");
        assert!(md.contains("| worker-1 → worker-3 | cilium | cilium → cilium | delivery | 1000 | 52 | 5.20% | after (soak, the gate) |"), "{md}");
    }

    #[test]
    fn a_reading_from_prometheus_says_so() {
        let mut report = fixtures::completed_migration();
        let url = "http://prometheus.monitoring:9090";
        let w3 = &mut report.records[2];
        let last = w3.readings.last_mut().unwrap();
        last.decision.source = crate::loss::Source::Prometheus(url.into());
        let md = report.markdown();
        let line = md
            .lines()
            .find(|l| l.contains("read from Prometheus"))
            .unwrap_or_else(|| panic!("{md}"));
        assert!(
            line.contains("rows under threshold") && line.contains(url),
            "{line}"
        );
        // The agents' readings say nothing of where they came from.
        assert_eq!(md.matches("read from").count(), 1, "{md}");
        assert!(
            report
                .html()
                .contains(&format!("read from Prometheus at {url}"))
        );
    }
}
