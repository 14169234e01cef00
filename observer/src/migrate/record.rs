//! Everything the report needs about one node's migration: when each step
//! ran, the loss before, during and after, the gate's decisions with their
//! figures, and errors. One record per node, so a large cluster never
//! outgrows a ConfigMap.
use serde::{Deserialize, Serialize};

use super::{
    gate::{Decision, Verdict},
    state::{GateTally, Step},
};
use crate::loss::LossRow;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: Step,
    pub started: String,
    #[serde(default)]
    pub ended: Option<String>,
    /// "ok", "failed", "breach", "interrupted" (a driver that died in it).
    pub outcome: String,
    #[serde(default)]
    pub detail: String,
}

/// When a loss reading was taken, relative to the node's changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Moment {
    /// The baseline, before the node is touched.
    Before,
    /// At the end of a step that changes the node: recorded, not gated.
    During,
    /// The soak: the gate.
    After,
    /// After a rollback.
    RolledBack,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub moment: Moment,
    pub step: Step,
    pub decision: Decision,
    /// The cluster totals, every row that breached, and the node's own
    /// rows worst first up to [`RECORD_ROWS`]: bounded whatever the
    /// cluster's size, so a record stays far from a ConfigMap's 1 MiB.
    pub rows: Vec<LossRow>,
    /// The node's rows beyond [`RECORD_ROWS`]: counted, not kept.
    #[serde(default)]
    pub rows_left_out: usize,
}

/// The node's own rows a reading keeps, besides totals and breaches.
pub const RECORD_ROWS: usize = 40;

/// One decision of the gate during a baseline or soak: every reading's,
/// pass, pending (with each breach's `held` of the policy's
/// `consecutive`) or halt, with the figures of its breaches. The full
/// rows are in [`Reading`]s (the halt, the last of a hold).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateEntry {
    pub moment: Moment,
    pub step: Step,
    /// The policy's readings in a row, for reading `held` against.
    pub consecutive: u32,
    #[serde(flatten)]
    pub decision: Decision,
}

/// Gate decisions a record keeps (a 10-minute soak read every 2 s makes
/// 300): past it, the oldest pass makes room, then the oldest entry;
/// counted in `gate_left_out`.
pub const GATE_ENTRIES: usize = 120;
/// Breaches a gate entry lists (the worst), the rest counted in its
/// `more_breaches`: 120 entries stay under 300 KiB.
pub const GATE_ENTRY_BREACHES: usize = 8;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: String,
    pub steps: Vec<StepRecord>,
    pub readings: Vec<Reading>,
    pub errors: Vec<String>,
    #[serde(default)]
    pub rollbacks: Vec<RollbackRecord>,
    /// The Kubernetes Events put on the node.
    #[serde(default)]
    pub events: Vec<EventRecord>,
    /// Every decision of the gate, oldest first, bounded by
    /// [`GATE_ENTRIES`].
    #[serde(default)]
    pub gate: Vec<GateEntry>,
    #[serde(default)]
    pub gate_left_out: usize,
    /// Every decision of the gate by verdict, the ones left out of `gate`
    /// too.
    #[serde(default)]
    pub decisions: GateTally,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub at: String,
    pub reason: String,
    pub warning: bool,
    pub note: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RollbackRecord {
    pub started: String,
    pub ended: String,
    pub outcome: String,
    pub detail: String,
}

impl NodeRecord {
    pub fn new(node: &str) -> Self {
        NodeRecord {
            node: node.into(),
            ..Default::default()
        }
    }

    /// Opens a step; a step left open by a driver that died is closed as
    /// interrupted first, so the report shows the crash.
    pub fn begin(&mut self, step: Step, now: &str) {
        for open in self.steps.iter_mut().filter(|s| s.ended.is_none()) {
            open.ended = Some(now.into());
            open.outcome = "interrupted".into();
        }
        self.steps.push(StepRecord {
            step,
            started: now.into(),
            ended: None,
            outcome: "running".into(),
            detail: String::new(),
        });
    }

    pub fn end(&mut self, step: Step, now: &str, outcome: &str, detail: String) {
        if let Some(open) = self
            .steps
            .iter_mut()
            .rev()
            .find(|s| s.step == step && s.ended.is_none())
        {
            open.ended = Some(now.into());
            open.outcome = outcome.into();
            open.detail = detail;
        }
    }

    /// Keeps one decision of the gate, its breaches bounded.
    pub fn decide(&mut self, moment: Moment, step: Step, consecutive: u32, decision: &Decision) {
        self.decisions.add(decision.verdict);
        let mut decision = decision.clone();
        let listed = decision.breaches.len().min(GATE_ENTRY_BREACHES);
        decision.more_breaches += decision.breaches.len() - listed;
        decision.breaches.truncate(listed);
        if self.gate.len() >= GATE_ENTRIES {
            let oldest_pass = self
                .gate
                .iter()
                .position(|e| e.decision.verdict == Some(Verdict::Pass));
            self.gate.remove(oldest_pass.unwrap_or(0));
            self.gate_left_out += 1;
        }
        self.gate.push(GateEntry {
            moment,
            step,
            consecutive,
            decision,
        });
    }

    pub fn read(&mut self, moment: Moment, step: Step, decision: Decision, all: &[LossRow]) {
        let node = self.node.as_str();
        let breached = |r: &LossRow| decision.breaches.iter().any(|b| b.row.key() == r.key());
        let mut rows: Vec<LossRow> = all
            .iter()
            .filter(|r| r.is_total() || breached(r))
            .cloned()
            .collect();
        let mut own: Vec<&LossRow> = all
            .iter()
            .filter(|r| (r.node == node || r.peer_node == node) && r.sent > 0 && !breached(r))
            .collect();
        own.sort_by(|a, b| LossRow::worse(a, b));
        // The worst row of each node pair first, then the rest worst first:
        // kept rows cover as many of the node's pairs as they can (the
        // report's heatmaps), not one pair's every signal and network.
        let mut pairs = std::collections::HashSet::new();
        let (firsts, rest): (Vec<&LossRow>, Vec<&LossRow>) = own
            .into_iter()
            .partition(|r| pairs.insert((r.node.as_str(), r.peer_node.as_str())));
        let rows_left_out = (firsts.len() + rest.len()).saturating_sub(RECORD_ROWS);
        rows.extend(firsts.into_iter().chain(rest).take(RECORD_ROWS).cloned());
        self.readings.push(Reading {
            moment,
            step,
            decision,
            rows,
            rows_left_out,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_left_open_by_a_crash_is_closed_as_interrupted() {
        let mut r = NodeRecord::new("n1");
        r.begin(Step::Drain, "t1");
        // The driver died here; the next one runs the step again.
        r.begin(Step::Drain, "t2");
        r.end(Step::Drain, "t3", "ok", "2 pods evicted".into());
        assert_eq!(r.steps.len(), 2);
        assert_eq!(r.steps[0].outcome, "interrupted");
        assert_eq!(r.steps[0].ended.as_deref(), Some("t2"));
        assert_eq!(r.steps[1].outcome, "ok");
        assert_eq!(r.steps[1].started, "t2");
    }

    /// Rows kept reach every pair of the node before a second row of any.
    #[test]
    fn kept_rows_cover_every_pair_of_the_node() {
        use crate::loss::Signal;
        use observer_ebpf::{Net, Overlay};
        // 3 peers both ways, every signal x 3 network pairs each,
        // the first peer's (by name) sorting first when nothing is lost.
        let mut all = Vec::new();
        for peer in ["a", "b", "c"] {
            for (node, peer) in [("n1", peer), (peer, "n1")] {
                for signal in Signal::ALL {
                    for (src_net, dst_net) in [
                        (Net::Host, Net::Host),
                        (Net::Host, Net::Cilium),
                        (Net::Cilium, Net::Host),
                    ] {
                        all.push(LossRow {
                            node: node.into(),
                            peer_node: peer.into(),
                            overlay: Overlay::Cilium,
                            src_net,
                            dst_net,
                            signal,
                            sent: 100,
                            lost: 0,
                            refused: 0,
                            seconds: 6.0,
                            mtu: None,
                        });
                    }
                }
            }
        }
        let decision = crate::migrate::gate::judge(
            &crate::migrate::gate::Thresholds::default(),
            crate::migrate::gate::GateScope::All,
            None,
            &all,
            vec![],
            vec![],
            "t".into(),
        );
        let mut r = NodeRecord::new("n1");
        r.read(Moment::Before, Step::Baseline, decision, &all);
        let kept = &r.readings[0].rows;
        assert_eq!(kept.len(), RECORD_ROWS);
        let rows = 3 * 2 * Signal::ALL.len() * 3;
        assert_eq!(r.readings[0].rows_left_out, rows - RECORD_ROWS);
        let pairs: std::collections::HashSet<_> = kept
            .iter()
            .map(|r| (r.node.as_str(), r.peer_node.as_str()))
            .collect();
        assert_eq!(pairs.len(), 6, "{pairs:?}");
    }

    /// A reading of a 5,000-node cluster keeps its record far from a
    /// ConfigMap's 1 MiB: the totals, the breaches (at most 50) and the
    /// node's worst rows.
    #[test]
    fn a_reading_at_five_thousand_nodes_stays_under_64_kib() {
        use crate::loss::{CLUSTER, Signal};
        use observer_ebpf::{Net, Overlay};
        let row = |node: String, peer: String, lost| LossRow {
            node,
            peer_node: peer,
            overlay: Overlay::Cilium,
            src_net: Net::Cilium,
            dst_net: Net::Legacy,
            signal: Signal::Delivery,
            sent: 10_000,
            lost,
            refused: 0,
            seconds: 10.0,
            mtu: None,
        };
        // Every peer both ways, every one over the threshold.
        let all: Vec<LossRow> = (0..5000)
            .flat_map(|i| {
                let peer = format!("node-{i:05}");
                [
                    row("n1".into(), peer.clone(), 500),
                    row(peer, "n1".into(), 500),
                ]
            })
            .chain([row(CLUSTER.into(), CLUSTER.into(), 10)])
            .collect();
        let thresholds = crate::migrate::gate::Thresholds::default();
        let decision = crate::migrate::gate::judge(
            &thresholds,
            crate::migrate::gate::GateScope::All,
            Some("n1"),
            &all,
            vec![],
            vec![],
            "t".into(),
        );
        assert_eq!(decision.breaches.len(), crate::migrate::gate::MAX_BREACHES);
        let mut r = NodeRecord::new("n1");
        r.read(Moment::After, Step::Soak, decision, &all);
        let bytes = serde_json::to_vec(&r).unwrap().len();
        assert!(bytes <= 64 << 10, "{bytes} bytes");
        assert_eq!(r.readings[0].rows_left_out, 2 * 5000 - 50 - RECORD_ROWS);
    }

    /// Every gate decision of a long soak, each with its worst breaches,
    /// stays far from a ConfigMap's 1 MiB; the pending and halting ones
    /// are kept over passes.
    #[test]
    fn gate_decisions_are_bounded_and_keep_breaches_over_passes() {
        use crate::{
            loss::Signal,
            migrate::gate::{Breach, GateScope, Thresholds, judge},
        };
        use observer_ebpf::{Net, Overlay};
        let row = |peer: usize| LossRow {
            node: "n1".into(),
            peer_node: format!("node-{peer:05}"),
            overlay: Overlay::Cilium,
            src_net: Net::Cilium,
            dst_net: Net::Legacy,
            signal: Signal::Delivery,
            sent: 10_000,
            lost: 500,
            refused: 0,
            seconds: 10.0,
            mtu: None,
        };
        let all: Vec<LossRow> = (0..5000).map(row).collect();
        let t = Thresholds::default();
        let mut breached = judge(&t, GateScope::All, None, &all, vec![], vec![], "t".into());
        breached.verdict = Some(Verdict::Pending);
        let mut passed = judge(&t, GateScope::All, None, &[], vec![], vec![], "t".into());
        passed.verdict = Some(Verdict::Pass);
        let mut r = NodeRecord::new("n1");
        r.decide(Moment::After, Step::Soak, 2, &breached);
        for _ in 0..300 {
            r.decide(Moment::After, Step::Soak, 2, &passed);
        }
        for _ in 0..(GATE_ENTRIES - 1) {
            r.decide(Moment::After, Step::Soak, 2, &breached);
        }
        assert_eq!(r.gate.len(), GATE_ENTRIES);
        assert_eq!(r.gate_left_out, 300);
        assert!(
            r.gate
                .iter()
                .all(|e| e.decision.verdict == Some(Verdict::Pending))
        );
        let first: &Vec<Breach> = &r.gate[0].decision.breaches;
        assert_eq!(first.len(), GATE_ENTRY_BREACHES);
        assert_eq!(r.gate[0].decision.more_breaches, 5000 - GATE_ENTRY_BREACHES);
        let bytes = serde_json::to_vec(&r).unwrap().len();
        assert!(bytes <= 300 << 10, "{bytes} bytes");
    }
}
