//! Small builders of a migration's state and records, as the driver
//! writes them, for the report's tests (here and in `crossover-tests`,
//! with the `fixtures` feature): four nodes, the gate's decisions made by
//! the real gate from the rows.
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use observer_ebpf::{Net, Overlay};

use super::{About, Report};
use crate::{
    loss::{CLUSTER, LossRow, Signal},
    migrate::{
        analysis::{Analysis, Policy},
        gate::{self, GateScope, Thresholds},
        plan::{Plan, PlannedNode},
        record::{Moment, NodeRecord},
        state::{OnBreach, Phase, Settings, State, Step},
    },
};

pub const NODES: [&str; 4] = ["worker-1", "worker-2", "worker-3", "control-plane"];
/// The migration starts at this instant; node `i` at `i * NODE_SPACING`.
pub const START: &str = "2026-11-30T10:00:00Z";
const NODE_SPACING: i64 = 140;

/// A time `seconds` after [`START`], as records write it.
pub fn at(seconds: i64) -> String {
    let start: Timestamp = START.parse().expect("START parses");
    (start + SignedDuration::from_secs(seconds)).to_string()
}

pub fn thresholds() -> Thresholds {
    let mut t = Thresholds {
        default: 0.02,
        min_sent: 50,
        ..Thresholds::default()
    };
    t.per_signal.insert(Signal::ProbeUdp, 0.05);
    t
}

pub fn row(
    node: &str,
    peer: &str,
    overlay: Overlay,
    signal: Signal,
    sent: u64,
    lost: u64,
) -> LossRow {
    let net = match overlay {
        Overlay::Cilium => Net::Cilium,
        _ => Net::Legacy,
    };
    LossRow {
        node: node.into(),
        peer_node: peer.into(),
        overlay,
        src_net: net,
        dst_net: net,
        signal,
        sent,
        lost,
        refused: 0,
        seconds: 6.0,
        mtu: None,
    }
}

/// The rows a reading keeps about `node`: both ways with every peer, on
/// `overlay`, delivery and UDP probes; `lost(from, to, signal)` per row;
/// the cluster totals first.
pub fn rows(
    node: &str,
    overlay: Overlay,
    lost: impl Fn(&str, &str, Signal) -> u64,
) -> Vec<LossRow> {
    let mut out = Vec::new();
    for peer in NODES.iter().filter(|p| **p != node) {
        for (from, to) in [(node, *peer), (*peer, node)] {
            out.push(row(
                from,
                to,
                overlay,
                Signal::Delivery,
                1000,
                lost(from, to, Signal::Delivery),
            ));
            out.push(row(
                from,
                to,
                overlay,
                Signal::ProbeUdp,
                60,
                lost(from, to, Signal::ProbeUdp),
            ));
        }
    }
    for signal in [Signal::Delivery, Signal::ProbeUdp] {
        let (sent, lost) = out
            .iter()
            .filter(|r| r.signal == signal)
            .fold((0, 0), |(s, l), r| (s + r.sent, l + r.lost));
        out.insert(0, row(CLUSTER, CLUSTER, overlay, signal, sent, lost));
    }
    out
}

/// One node's record: every step from `start`, the readings the driver
/// takes, and, when `faulted`, the soak closing on 5.2% of what every
/// peer sends the node lost (5% of UDP probes, at their threshold);
/// with when it ended.
pub fn node_record(node: &str, start: i64, faulted: bool) -> (NodeRecord, i64) {
    let t = thresholds();
    let mut r = NodeRecord::new(node);
    let mut now = start;
    let clean = |_: &str, _: &str, _: Signal| 0;
    // The gate's decisions as the driver weighs them: two readings in a
    // row over separate windows close it.
    let policy = Policy::default();
    let mut analysis = Analysis::new(policy, std::time::Duration::from_secs(10));
    let mut weigh = |r: &mut NodeRecord, moment, step, now: i64, rows: &[LossRow]| {
        let decision = gate::judge(&t, GateScope::All, None, rows, vec![], vec![], at(now));
        let decision = analysis.weigh(decision, std::time::Duration::from_secs(now as u64));
        r.decide(moment, step, policy.consecutive, &decision);
        decision
    };
    let read = |r: &mut NodeRecord, moment, step, now: i64, rows: Vec<LossRow>| {
        let decision = gate::judge(&t, GateScope::All, None, &rows, vec![], vec![], at(now));
        r.read(moment, step, decision, &rows);
    };
    for (step, seconds) in [
        (Step::Baseline, 20),
        (Step::Cordon, 1),
        (Step::Drain, 40),
        (Step::Label, 1),
        (Step::RestartCilium, 15),
        (Step::Reboot, 1),
        (Step::RestartLegacy, 10),
        (Step::Verify, 5),
        (Step::Soak, 30),
        (Step::Uncordon, 1),
    ] {
        r.begin(step, &at(now));
        let moved = step > Step::RestartCilium;
        let overlay = if moved {
            Overlay::Cilium
        } else {
            Overlay::Legacy
        };
        if step == Step::Soak {
            // While the node restarted: a few probes lost, not gated.
            let during = rows(node, overlay, |_, to, s| {
                u64::from(to == node && s == Signal::ProbeUdp) * 2
            });
            read(&mut r, Moment::During, step, now, during);
        }
        now += seconds;
        match step {
            Step::Baseline => {
                let clean = rows(node, Overlay::Legacy, clean);
                let decision = weigh(&mut r, Moment::Before, step, now, &clean);
                r.read(Moment::Before, step, decision, &clean);
            }
            Step::Drain | Step::RestartCilium | Step::RestartLegacy => {
                let lost = |from: &str, _: &str, s: Signal| {
                    u64::from(from == node && s == Signal::Delivery) * 8
                };
                read(&mut r, Moment::During, step, now, rows(node, overlay, lost));
            }
            Step::Soak if faulted => {
                let lost = |_: &str, to: &str, s: Signal| match (to == node, s) {
                    (true, Signal::Delivery) => 52,
                    (true, _) => 3,
                    _ => 0,
                };
                let breach = rows(node, overlay, lost);
                // Pending at the first window, closed at the second.
                weigh(&mut r, Moment::After, step, now - 12, &breach);
                let decision = weigh(&mut r, Moment::After, step, now, &breach);
                r.end(step, &at(now), "breach", decision.reasons().join("\n"));
                r.read(Moment::After, step, decision, &breach);
                return (r, now);
            }
            Step::Soak => {
                let clean = rows(node, overlay, clean);
                let decision = weigh(&mut r, Moment::After, step, now, &clean);
                r.read(Moment::After, step, decision, &clean);
            }
            _ => {}
        }
        let detail = match step {
            Step::Drain => "3 pods evicted".into(),
            Step::Soak => "4 readings over 30s: under threshold".into(),
            _ => String::new(),
        };
        r.end(step, &at(now), "ok", detail);
        now += 1;
    }
    (r, now)
}

fn state(phase: Phase, steps: [Step; 4]) -> State {
    let plan = Plan {
        nodes: NODES
            .iter()
            .map(|n| PlannedNode {
                name: n.to_string(),
                control_plane: *n == "control-plane",
            })
            .collect(),
        skipped: vec![],
    };
    let settings = Settings {
        thresholds: thresholds(),
        baseline_seconds: 20,
        soak_seconds: 30,
        on_breach: OnBreach::Halt,
        reboot_hook: None,
        policy: Default::default(),
    };
    let mut state = State::new(&plan, settings, at(0));
    state.started_by = Some("sre@laptop".into());
    state.phase = phase;
    for (n, step) in state.nodes.iter_mut().zip(steps) {
        n.step = step;
    }
    state
}

fn about() -> About {
    About {
        cluster: "kind-lab (https://172.18.0.1:6443)".into(),
        generated_at: at(600),
        generated_by: "sre@laptop".into(),
        version: "0.1.0".into(),
        leftovers: None,
    }
}

/// worker-1 and worker-2 migrated, worker-3 halted on its soak; when
/// worker-3's soak closed.
fn first_three() -> (Vec<NodeRecord>, i64) {
    let (w1, _) = node_record(NODES[0], 0, false);
    let (w2, _) = node_record(NODES[1], NODE_SPACING, false);
    let (w3, halted) = node_record(NODES[2], 2 * NODE_SPACING, true);
    (vec![w1, w2, w3], halted)
}

/// Two nodes done, the third halted by the gate on its soak, the control
/// plane not reached.
pub fn halted_migration() -> Report {
    let (records, halted) = first_three();
    let reasons = records[2]
        .readings
        .last()
        .map(|r| r.decision.reasons().join("\n  "))
        .unwrap_or_default();
    let phase = Phase::Halted {
        node: NODES[2].into(),
        step: Step::Soak,
        reason: format!("the gate closed at soak of worker-3:\n  {reasons}"),
        at: at(halted),
    };
    let steps = [Step::Done, Step::Done, Step::Soak, Step::Baseline];
    Report::new(about(), state(phase, steps), records)
}

/// The same, resumed a minute after the halt once the fault was cleared:
/// worker-3's soak passes, the control plane follows, done.
pub fn completed_migration() -> Report {
    let (mut records, halted) = first_three();
    let w3 = &mut records[2];
    let resumed = halted + 60;
    w3.begin(Step::Soak, &at(resumed));
    let clean = rows(NODES[2], Overlay::Cilium, |_, _, _| 0);
    let decision = gate::judge(
        &thresholds(),
        GateScope::All,
        None,
        &clean,
        vec![],
        vec![],
        at(resumed + 36),
    );
    w3.read(Moment::After, Step::Soak, decision, &clean);
    w3.end(
        Step::Soak,
        &at(resumed + 36),
        "ok",
        "4 readings over 30s".into(),
    );
    w3.begin(Step::Uncordon, &at(resumed + 37));
    w3.end(Step::Uncordon, &at(resumed + 38), "ok", String::new());
    let (cp, done) = node_record(NODES[3], resumed + 40, false);
    records.push(cp);
    let phase = Phase::Done { at: at(done) };
    Report::new(about(), state(phase, [Step::Done; 4]), records)
}
