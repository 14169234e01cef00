//! `crossover report`: the migration as it happened, node by node, from
//! the state and the per-node records kept in the cluster.
use std::fmt::Write;

use serde::Serialize;

use super::{
    record::{Moment, NodeRecord, Reading},
    state::{Phase, State},
};

/// Loss rows shown per reading in Markdown (the worst first); JSON has all.
const ROWS_SHOWN: usize = 12;

#[derive(Debug, Serialize)]
pub struct Report {
    pub state: State,
    /// In plan order; nodes not reached yet have no record.
    pub records: Vec<NodeRecord>,
}

impl Report {
    pub fn new(state: State, mut records: Vec<NodeRecord>) -> Self {
        let position = |node: &str| state.nodes.iter().position(|n| n.name == node);
        records.sort_by_key(|r| position(&r.node).unwrap_or(usize::MAX));
        Report { state, records }
    }

    pub fn markdown(&self) -> String {
        let mut out = String::from("# Migration to Cilium\n\n");
        let s = &self.state;
        let phase = match &s.phase {
            Phase::Running => "running (or its driver crashed: `crossover migrate resume`)".into(),
            Phase::Halted { node, step, at, .. } => {
                format!("**halted** at {at}, node {node}, step {step}")
            }
            Phase::Aborted { at } => format!("aborted at {at}"),
            Phase::Done { at } => format!("done at {at}"),
        };
        let t = &s.settings.thresholds;
        let _ = writeln!(out, "- started: {}\n- state: {phase}", s.started);
        let _ = writeln!(
            out,
            "- gate: loss ratio at most {:.2}% ({}), rows with at least {} sent; baseline {}s, soak {}s, on breach: {:?}",
            t.default * 100.0,
            t.per_signal
                .iter()
                .map(|(k, v)| format!("{k} {:.2}%", v * 100.0))
                .collect::<Vec<_>>()
                .join(", "),
            t.min_sent,
            s.settings.baseline_seconds,
            s.settings.soak_seconds,
            s.settings.on_breach
        );
        if let Phase::Halted { reason, .. } = &s.phase {
            let _ = writeln!(out, "\n## Why it halted\n\n```\n{reason}\n```");
        }
        out += "\n## Nodes\n\n| # | node | role | next step |\n|---|---|---|---|\n";
        for (i, n) in s.nodes.iter().enumerate() {
            let role = if n.control_plane {
                "control plane"
            } else {
                "worker"
            };
            let _ = writeln!(out, "| {} | {} | {role} | {} |", i + 1, n.name, n.step);
        }
        for skipped in &s.skipped {
            let _ = writeln!(
                out,
                "| - | {} | skipped | {} |",
                skipped.name, skipped.reason
            );
        }
        for r in &self.records {
            node_section(&mut out, r);
        }
        out
    }
}

fn node_section(out: &mut String, r: &NodeRecord) {
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
        out.push_str("\n### Loss\n");
        for reading in &r.readings {
            reading_section(out, reading);
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

fn reading_section(out: &mut String, reading: &Reading) {
    let moment = match reading.moment {
        Moment::Before => "before (baseline)",
        Moment::During => "during",
        Moment::After => "after (soak, the gate)",
        Moment::RolledBack => "after the rollback",
    };
    let d = &reading.decision;
    let verdict = if d.passed { "passed" } else { "**closed**" };
    let _ = writeln!(
        out,
        "\n{moment}, at {} ({}): gate {verdict}; {}\n",
        d.at,
        reading.step,
        cell(&d.summary())
    );
    let mut rows: Vec<_> = reading.rows.iter().collect();
    rows.sort_by(|a, b| {
        b.ratio()
            .unwrap_or(0.0)
            .total_cmp(&a.ratio().unwrap_or(0.0))
    });
    out.push_str("| node → peer | overlay | networks | signal | sent | lost | ratio |\n|---|---|---|---|---|---|---|\n");
    for row in rows.iter().take(ROWS_SHOWN) {
        let _ = writeln!(
            out,
            "| {} → {} | {} | {} → {} | {} | {} | {} | {:.2}% |",
            row.node,
            row.peer_node,
            row.overlay,
            row.src_net,
            row.dst_net,
            row.signal,
            row.sent,
            row.lost,
            row.ratio().unwrap_or(0.0) * 100.0
        );
    }
    if rows.len() > ROWS_SHOWN {
        let _ = writeln!(
            out,
            "\n({} more rows in `--format json`)",
            rows.len() - ROWS_SHOWN
        );
    }
}

/// Text made safe for one Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', "<br>")
}
