//! `crossover report`: the migration as it happened, node by node, from
//! the state and the per-node records kept in the cluster: Markdown, JSON,
//! or one self-contained HTML page with plots. Every output is bounded:
//! summaries per reading and the worst rows per node, never every row of
//! every reading.
mod html;
mod markdown;
mod plots;

use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::Serialize;

pub use super::count;
use super::{
    finish::Leftovers,
    gate::{Decision, GateScope, Verdict},
    record::{EventRecord, Moment, NodeRecord, RollbackRecord, StepRecord},
    state::{OnBreach, Phase, State, Step},
};
use crate::loss::{CLUSTER, LossRow};

/// Worst rows kept per node (over all its readings, one per row key).
pub const WORST_ROWS: usize = 8;
/// Node names listed in "what is left to do" before the rest is counted.
const NAMED_NODES: usize = 20;

/// Who made the report, where and with what: what the records do not say.
#[derive(Debug, Serialize)]
pub struct About {
    /// The kubeconfig's context and server, or "in-cluster".
    pub cluster: String,
    pub generated_at: String,
    /// $USER@$HOSTNAME of whoever ran `crossover report`.
    pub generated_by: String,
    /// This binary's version.
    pub version: String,
    /// Read from the cluster once every node is done.
    #[serde(skip)]
    pub leftovers: Option<Leftovers>,
}

impl About {
    pub fn here(cluster: String, leftovers: Option<Leftovers>) -> About {
        About {
            cluster,
            generated_at: super::context::now(),
            generated_by: super::state::who(),
            version: env!("CARGO_PKG_VERSION").into(),
            leftovers,
        }
    }
}

#[derive(Debug)]
pub struct Report {
    pub about: About,
    pub state: State,
    /// In plan order; nodes not reached yet have no record.
    pub records: Vec<NodeRecord>,
}

/// How long each kind of step took, summed over the nodes.
#[derive(Debug, Serialize, PartialEq)]
pub struct StepTime {
    pub step: Step,
    /// Times it ran (a step run again after a crash or a halt counts twice).
    pub runs: usize,
    pub seconds: i64,
}

#[derive(Debug, Serialize)]
pub struct Durations {
    /// From the start to the end (done, halted, aborted) or the last step.
    pub total_seconds: Option<i64>,
    pub per_step: Vec<StepTime>,
    /// Per node, from its first step to its last.
    pub per_node: Vec<(String, i64)>,
}

/// One reading without its rows: the gate's decision and how much was kept.
#[derive(Debug, Serialize)]
struct ReadingSummary<'a> {
    moment: Moment,
    step: Step,
    decision: &'a Decision,
    rows_kept: usize,
    rows_left_out: usize,
}

#[derive(Debug, Serialize)]
struct NodeSummary<'a> {
    node: &'a str,
    steps: &'a [StepRecord],
    readings: Vec<ReadingSummary<'a>>,
    /// The node's worst rows over all its readings, worst first.
    worst_rows: Vec<&'a LossRow>,
    errors: &'a [String],
    rollbacks: &'a [RollbackRecord],
    events: &'a [EventRecord],
}

#[derive(Debug, Serialize)]
struct JsonReport<'a> {
    about: &'a About,
    state: &'a State,
    durations: Durations,
    left_to_do: Vec<String>,
    records: Vec<NodeSummary<'a>>,
}

impl Report {
    pub fn new(about: About, state: State, mut records: Vec<NodeRecord>) -> Self {
        let position = |node: &str| state.nodes.iter().position(|n| n.name == node);
        records.sort_by_key(|r| position(&r.node).unwrap_or(usize::MAX));
        Report {
            about,
            state,
            records,
        }
    }

    pub fn json(&self) -> serde_json::Result<String> {
        let records = self
            .records
            .iter()
            .map(|r| NodeSummary {
                node: &r.node,
                steps: &r.steps,
                readings: r
                    .readings
                    .iter()
                    .map(|reading| ReadingSummary {
                        moment: reading.moment,
                        step: reading.step,
                        decision: &reading.decision,
                        rows_kept: reading.rows.len(),
                        rows_left_out: reading.rows_left_out,
                    })
                    .collect(),
                worst_rows: self.worst_rows(r).into_iter().map(|(_, row)| row).collect(),
                errors: &r.errors,
                rollbacks: &r.rollbacks,
                events: &r.events,
            })
            .collect();
        serde_json::to_string_pretty(&JsonReport {
            about: &self.about,
            state: &self.state,
            durations: self.durations(),
            left_to_do: self.left_to_do(),
            records,
        })
    }

    pub fn markdown(&self) -> String {
        markdown::render(self)
    }

    pub fn html(&self) -> String {
        html::render(self)
    }

    /// When the migration ended (or was last seen doing something).
    fn ended(&self) -> Option<Timestamp> {
        match &self.state.phase {
            Phase::Halted { at, .. } | Phase::Aborted { at } | Phase::Done { at } => parse(at),
            Phase::Running => self
                .records
                .iter()
                .flat_map(|r| r.steps.iter())
                .filter_map(|s| parse(s.ended.as_deref().unwrap_or(&s.started)))
                .max(),
        }
    }

    pub fn durations(&self) -> Durations {
        let total_seconds = seconds(parse(&self.state.started), self.ended());
        let mut per_step = BTreeMap::<Step, (usize, i64)>::new();
        let mut per_node = Vec::new();
        for r in &self.records {
            for s in &r.steps {
                let e = per_step.entry(s.step).or_default();
                e.0 += 1;
                e.1 += step_seconds(s).unwrap_or(0);
            }
            let first = r.steps.first().and_then(|s| parse(&s.started));
            let last = r
                .steps
                .iter()
                .filter_map(|s| parse(s.ended.as_deref()?))
                .max();
            if let Some(s) = seconds(first, last) {
                per_node.push((r.node.clone(), s));
            }
        }
        Durations {
            total_seconds,
            per_step: per_step
                .into_iter()
                .map(|(step, (runs, seconds))| StepTime {
                    step,
                    runs,
                    seconds,
                })
                .collect(),
            per_node,
        }
    }

    /// The node's worst judged rows over all its readings: one per row
    /// key (its worst reading), worst first, at most [`WORST_ROWS`].
    fn worst_rows<'a>(&self, record: &'a NodeRecord) -> Vec<(Moment, &'a LossRow)> {
        let min_sent = self.state.settings.thresholds.min_sent;
        let mut worst: Vec<(Moment, &LossRow)> = Vec::new();
        for reading in &record.readings {
            for row in reading
                .rows
                .iter()
                .filter(|r| is_pair(r) && r.sent >= min_sent)
            {
                match worst.iter_mut().find(|(_, w)| w.key() == row.key()) {
                    Some(kept) if LossRow::worse(row, kept.1).is_lt() => {
                        *kept = (reading.moment, row)
                    }
                    Some(_) => {}
                    None => worst.push((reading.moment, row)),
                }
            }
        }
        worst.retain(|(_, r)| r.lost > 0);
        worst.sort_by(|a, b| LossRow::worse(a.1, b.1));
        worst.truncate(WORST_ROWS);
        worst
    }

    /// The worst rows of the whole migration, one per row key, worst first.
    fn worst_overall(&self, n: usize) -> Vec<(&str, Moment, &LossRow)> {
        let mut all: Vec<(&str, Moment, &LossRow)> = self
            .records
            .iter()
            .flat_map(|r| {
                self.worst_rows(r)
                    .into_iter()
                    .map(move |(m, row)| (r.node.as_str(), m, row))
            })
            .collect();
        all.sort_by(|a, b| LossRow::worse(a.2, b.2));
        all.dedup_by(|a, b| a.2.key() == b.2.key());
        all.truncate(n);
        all
    }

    /// What an SRE does next, one item a line.
    pub fn left_to_do(&self) -> Vec<String> {
        let s = &self.state;
        let mut out = Vec::new();
        match &s.phase {
            Phase::Halted { node, step, .. } => out.push(format!(
                "{node} is halted at its {step} step (cordoned unless rolled back): fix the cause \
                 named above, then `crossover migrate resume`; or `crossover migrate rollback \
                 {node}` to put it back on the legacy CNI"
            )),
            Phase::Aborted { .. } => {
                out.push("aborted: `crossover migrate resume` continues where it stopped".into())
            }
            Phase::Running => out.push(
                "a driver is running, or died: `crossover migrate status` tells, \
                 `crossover migrate resume` continues"
                    .into(),
            ),
            Phase::Done { .. } => {}
        }
        let pending: Vec<&str> = s
            .nodes
            .iter()
            .filter(|n| n.step != Step::Done)
            .map(|n| n.name.as_str())
            .collect();
        if !pending.is_empty() {
            let mut names = pending
                .iter()
                .take(NAMED_NODES)
                .copied()
                .collect::<Vec<_>>()
                .join(", ");
            if pending.len() > NAMED_NODES {
                names += &format!(" and {} more", pending.len() - NAMED_NODES);
            }
            out.push(format!(
                "{} still to migrate: {names}",
                count(pending.len(), "node")
            ));
        }
        if matches!(s.phase, Phase::Done { .. }) {
            match &self.about.leftovers {
                Some(l) => out.extend(l.items()),
                None => out.push(
                    "every node is done: `crossover migrate status` lists what the guide still \
                     asks (legacy pods, Helm values, CiliumNodeConfig, the legacy CNI)"
                        .into(),
                ),
            }
        }
        out
    }

    /// Settings in words: thresholds as percentages, per-signal overrides,
    /// the policy on breach.
    pub fn settings_line(&self) -> String {
        let s = &self.state.settings;
        let t = &s.thresholds;
        let overrides = t
            .per_signal
            .iter()
            .map(|(k, v)| format!("{k} {}", percent(*v)))
            .collect::<Vec<_>>();
        let overrides = if overrides.is_empty() {
            String::new()
        } else {
            format!(" ({})", overrides.join(", "))
        };
        let on_breach = match s.on_breach {
            OnBreach::Halt => "halt, the node left cordoned for a human",
            OnBreach::Rollback => "roll the node back to the legacy CNI, then halt",
        };
        let p = &s.policy;
        let held = match p.consecutive {
            1 => "at the first reading over it".to_string(),
            n => format!("when it holds {n} readings in a row, each over a window of its own"),
        };
        let ceiling = p
            .ceiling
            .map(|c| format!(", or at once at {}", percent(c)))
            .unwrap_or_default();
        let scope = match p.scope {
            GateScope::All => "every node pair",
            GateScope::Node => "the pairs of the node under migration",
        };
        format!(
            "loss at most {} for every signal{overrides}, judged on rows of at least {} packets \
             ({scope}; crossover's own connections never judged); the gate closes {held}\
             {ceiling}; baseline {}, soak {}; on breach: {on_breach}",
            percent(t.default),
            t.min_sent,
            human(s.baseline_seconds as i64),
            human(s.soak_seconds as i64),
        )
    }

    /// Every gate decision the node's record kept, as lines for a table:
    /// when, at which step, the verdict, and what it rests on.
    pub fn gate_lines(r: &NodeRecord) -> Vec<GateLine> {
        r.gate
            .iter()
            .map(|entry| {
                let d = &entry.decision;
                let verdict = match (d.verdict, d.passed) {
                    (Some(Verdict::Halt), _) | (None, false) => GateVerdict::Halt,
                    (Some(Verdict::Pending), _) => GateVerdict::Pending,
                    _ => GateVerdict::Pass,
                };
                let worst = d.breaches.first();
                let detail = match (verdict, worst) {
                    (GateVerdict::Pass, _) | (_, None) => format!(
                        "{} judged{}",
                        count(d.judged, "row"),
                        d.worst
                            .iter()
                            .max_by(|a, b| a.1.total_cmp(b.1))
                            .map(|(signal, ratio)| format!(", worst {signal} {}", percent(*ratio)))
                            .unwrap_or_default()
                    ),
                    (_, Some(b)) => {
                        let why = if b.over_ceiling {
                            "at or over the ceiling".to_string()
                        } else {
                            format!("held {} of {}", b.held.max(1), entry.consecutive.max(1))
                        };
                        let more = d.breaches.len() - 1 + d.more_breaches;
                        let more = if more > 0 {
                            format!("; {more} more")
                        } else {
                            String::new()
                        };
                        format!("{b} ({why}){more}")
                    }
                };
                GateLine {
                    at: d.at.clone(),
                    step: entry.step,
                    verdict,
                    detail,
                }
            })
            .collect()
    }
}

/// One gate decision, for the report's tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateLine {
    pub at: String,
    pub step: Step,
    pub verdict: GateVerdict,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateVerdict {
    Pass,
    Pending,
    Halt,
}

impl GateVerdict {
    pub fn word(self) -> &'static str {
        match self {
            GateVerdict::Pass => "pass",
            GateVerdict::Pending => "pending",
            GateVerdict::Halt => "halt",
        }
    }
}

/// The cells every output shows of a loss row: node → peer, overlay,
/// networks, signal, sent, lost, ratio.
pub const ROW_HEADER: [&str; 7] = [
    "node → peer",
    "overlay",
    "networks",
    "signal",
    "sent",
    "lost",
    "ratio",
];

fn row_cells(row: &LossRow) -> [String; 7] {
    [
        format!("{} → {}", row.node, row.peer_node),
        row.overlay.to_string(),
        format!("{} → {}", row.src_net, row.dst_net),
        row.signal.to_string(),
        row.sent.to_string(),
        row.lost.to_string(),
        percent(row.ratio().unwrap_or(0.0)),
    ]
}

/// A row between two real nodes (not a cluster total or a sum over peers).
fn is_pair(r: &LossRow) -> bool {
    r.node != CLUSTER && r.peer_node != CLUSTER
}

fn parse(at: &str) -> Option<Timestamp> {
    at.parse().ok()
}

fn seconds(from: Option<Timestamp>, to: Option<Timestamp>) -> Option<i64> {
    Some(to?.duration_since(from?).as_secs())
}

fn step_seconds(s: &StepRecord) -> Option<i64> {
    seconds(parse(&s.started), parse(s.ended.as_deref()?))
}

/// `1h 2m 5s`, `42s`.
pub fn human(seconds: i64) -> String {
    format!("{:#}", SignedDuration::from_secs(seconds))
}

pub fn percent(ratio: f64) -> String {
    format!("{:.2}%", ratio * 100.0)
}

#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_sum_steps_per_kind_and_span_the_migration() {
        let report = fixtures::halted_migration();
        let d = report.durations();
        // worker-3 starts 280 s in; its steps take 131 s to the breach.
        assert_eq!(d.total_seconds, Some(411));
        let drain = d.per_step.iter().find(|s| s.step == Step::Drain).unwrap();
        assert_eq!((drain.runs, drain.seconds), (3, 3 * 40));
        assert_eq!(d.per_node[0].0, "worker-1");
        assert_eq!(human(d.total_seconds.unwrap()), "6m 51s");
    }

    #[test]
    fn the_settings_read_as_an_sre_wrote_them() {
        let report = fixtures::halted_migration();
        let line = report.settings_line();
        assert!(
            line.contains("at most 2.00% for every signal (probe_udp 5.00%)"),
            "{line}"
        );
        assert!(line.contains("on breach: halt,"), "{line}");
        assert!(line.contains("soak 30s"), "{line}");
        assert!(
            line.contains(
                "the gate closes when it holds 2 readings in a row, each over a window of its own, or at once at 10.00%"
            ),
            "{line}"
        );
        assert!(
            line.contains("(every node pair; crossover's own connections never judged)"),
            "{line}"
        );
        assert!(!line.contains("()"), "{line}");
        assert_eq!(count(1, "reading"), "1 reading");
        assert_eq!(count(2, "pod"), "2 pods");
    }

    #[test]
    fn every_gate_decision_is_in_the_report_with_what_it_rests_on() {
        let report = fixtures::halted_migration();
        let halted = report
            .records
            .iter()
            .find(|r| r.steps.iter().any(|s| s.outcome == "breach"))
            .expect("a node whose soak closed the gate");
        let lines = Report::gate_lines(halted);
        let verdicts: Vec<&str> = lines.iter().map(|l| l.verdict.word()).collect();
        assert_eq!(verdicts, ["pass", "pending", "halt"], "{lines:#?}");
        assert!(lines[0].detail.contains("rows judged"), "{lines:#?}");
        assert!(lines[1].detail.contains("(held 1 of 2)"), "{lines:#?}");
        assert!(lines[2].detail.contains("(held 2 of 2)"), "{lines:#?}");
        let markdown = report.markdown();
        assert!(markdown.contains("### Gate decisions: 3"), "{markdown}");
        assert!(markdown.contains("| soak | pending |"), "{markdown}");
        let html = report.html();
        assert!(html.contains("<h3>Gate decisions (3)</h3>"));
        assert!(html.contains("<td class=\"bad\">halt</td>"));
    }

    #[test]
    fn json_keeps_decisions_and_worst_rows_not_every_row() {
        let report = fixtures::halted_migration();
        let json: serde_json::Value = serde_json::from_str(&report.json().unwrap()).unwrap();
        let w3 = &json["records"][2];
        assert_eq!(w3["node"], "worker-3");
        let readings = w3["readings"].as_array().unwrap();
        assert!(readings.iter().all(|r| r.get("rows").is_none()));
        assert!(readings.iter().any(|r| r["decision"]["passed"] == false));
        let worst = w3["worst_rows"].as_array().unwrap();
        assert!(!worst.is_empty() && worst.len() <= WORST_ROWS);
        assert_eq!(worst[0]["peer_node"], "worker-3");
        assert_eq!(json["durations"]["total_seconds"], 411);
        let todo = json["left_to_do"].as_array().unwrap();
        assert!(todo[0].as_str().unwrap().contains("worker-3 is halted"));
        assert!(
            todo[1]
                .as_str()
                .unwrap()
                .contains("2 nodes still to migrate: worker-3, control-plane")
        );
    }
}
