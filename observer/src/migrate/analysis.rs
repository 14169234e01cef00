//! How the gate's readings add up to a halt, like an Argo Rollouts
//! analysis run: a row over its threshold must stay over it for
//! `consecutive` readings in a row, each over a window of its own, or reach
//! the hard ceiling once. One noisy reading of a pair does not stop a
//! migration; a fault that holds does, a window later.
//!
//! Readings come every `--gate-interval` (2 s) over a window of `--window`
//! (10 s): consecutive readings share most of their packets, so a burst of
//! loss stays in every reading for a whole window. A breach therefore
//! counts again only once a window has passed since it last counted;
//! readings in between that still show it keep it pending, and one that no
//! longer shows it clears it (it did not hold).
use std::{collections::BTreeMap, time::Duration};

use observer_ebpf::{Net, Overlay};
use serde::{Deserialize, Serialize};

use super::gate::{Decision, GateScope, Verdict};
use crate::loss::Signal;

/// How the gate decides over readings; kept in the state for `resume`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Readings in a row, over separate windows, a row must breach before
    /// the gate closes (1: the first breach closes it).
    pub consecutive: u32,
    /// A ratio at or over which one reading closes the gate at once.
    pub ceiling: Option<f64>,
    pub scope: GateScope,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            consecutive: 2,
            ceiling: Some(0.10),
            scope: GateScope::All,
        }
    }
}

/// A breaching row's identity, owned: what must breach again.
type Key = (String, String, Signal, Overlay, Net, Net);

#[derive(Clone, Debug)]
struct Pending {
    /// Readings over separate windows it breached in, in a row.
    held: u32,
    /// When it last counted.
    counted_at: Duration,
}

/// One analysis run: the breaches pending over a baseline or a soak.
/// Bounded by one reading's breaches (at most [`super::gate::MAX_BREACHES`]):
/// a row not breaching in a reading is forgotten.
pub struct Analysis {
    policy: Policy,
    window: Duration,
    pending: BTreeMap<Key, Pending>,
}

impl Analysis {
    pub fn new(policy: Policy, window: Duration) -> Self {
        Analysis {
            policy,
            window,
            pending: BTreeMap::new(),
        }
    }

    /// Weighs one reading's decision: fills in each breach's `held` and
    /// `over_ceiling`, the verdict, and `passed` (false when the gate
    /// closes, or when agents are missing: the hold waits a few readings
    /// for them, a pending verdict). Windows are told apart by the end of
    /// the window each reading covered (`window_end_ms`, the agents' ticks),
    /// or by `at`, when the reading was taken, for a decision without it.
    pub fn weigh(&mut self, mut decision: Decision, at: Duration) -> Decision {
        let at = match decision.window_end_ms {
            0 => at,
            ms => Duration::from_millis(ms),
        };
        let mut pending = BTreeMap::new();
        let mut halt = !decision.stuck.is_empty();
        for breach in &mut decision.breaches {
            let r = &breach.row;
            let key = (
                r.node.clone(),
                r.peer_node.clone(),
                r.signal,
                r.overlay,
                r.src_net,
                r.dst_net,
            );
            let held = match self.pending.remove(&key) {
                Some(p) if at.saturating_sub(p.counted_at) >= self.window => Pending {
                    held: p.held + 1,
                    counted_at: at,
                },
                // The same window as when it last counted: still pending.
                Some(p) => p,
                None => Pending {
                    held: 1,
                    counted_at: at,
                },
            };
            breach.held = held.held;
            breach.over_ceiling = self.policy.ceiling.is_some_and(|c| breach.ratio >= c);
            halt |= breach.over_ceiling || held.held >= self.policy.consecutive.max(1);
            pending.insert(key, held);
        }
        // Breaches beyond the listed ones are not followed; they close the
        // gate only through those listed (the worst).
        self.pending = pending;
        // What closed the gate first, then the rest worst first.
        let consecutive = self.policy.consecutive.max(1);
        decision
            .breaches
            .sort_by_key(|b| !(b.over_ceiling || b.held >= consecutive));
        let waiting = !decision.breaches.is_empty() || !decision.missing.is_empty();
        decision.verdict = Some(match (halt, waiting) {
            (true, _) => Verdict::Halt,
            (false, true) => Verdict::Pending,
            (false, false) => Verdict::Pass,
        });
        decision.passed = !halt && decision.missing.is_empty();
        decision
    }

    /// Breaches waiting for another window: the soak may not end on them.
    pub fn is_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        loss::LossRow,
        migrate::gate::{Thresholds, judge},
    };

    const WINDOW: Duration = Duration::from_secs(10);

    fn row(node: &str, peer: &str, lost: u64) -> LossRow {
        LossRow {
            node: node.into(),
            peer_node: peer.into(),
            overlay: Overlay::Cilium,
            src_net: Net::Cilium,
            dst_net: Net::Legacy,
            signal: Signal::Retransmit,
            sent: 99,
            lost,
            refused: 0,
            seconds: 10.0,
            mtu: None,
        }
    }

    fn reading(a: &mut Analysis, rows: &[LossRow], second: u64) -> Decision {
        let t = Thresholds {
            default: 0.02,
            ..Thresholds::default()
        };
        let d = judge(
            &t,
            GateScope::All,
            Some("n1"),
            rows,
            vec![],
            vec![],
            "t".into(),
        );
        a.weigh(d, Duration::from_secs(second))
    }

    /// The symptom: 2 of 99 retransmits (2.02% > 2%) of an
    /// unrelated pair in one window, then gone.
    #[test]
    fn one_noisy_window_is_pending_and_clears() {
        let mut a = Analysis::new(Policy::default(), WINDOW);
        let d = reading(&mut a, &[row("n2", "n3", 2)], 0);
        assert_eq!(d.verdict, Some(Verdict::Pending));
        assert!(d.passed && a.is_pending());
        assert_eq!(d.breaches[0].held, 1);
        assert!(
            d.summary().starts_with("pending: n2 -> n3"),
            "{}",
            d.summary()
        );
        // The same burst in the next readings of the same window: still
        // one window's worth, still pending.
        for second in [2, 4, 6, 8] {
            let d = reading(&mut a, &[row("n2", "n3", 2)], second);
            assert_eq!(d.verdict, Some(Verdict::Pending), "at {second}s");
            assert_eq!(d.breaches[0].held, 1);
        }
        // Out of the window: cleared.
        let d = reading(&mut a, &[row("n2", "n3", 0)], 10);
        assert_eq!(d.verdict, Some(Verdict::Pass));
        assert!(d.passed && !a.is_pending());
    }

    #[test]
    fn a_breach_held_over_two_windows_halts() {
        let mut a = Analysis::new(Policy::default(), WINDOW);
        assert_eq!(
            reading(&mut a, &[row("n1", "n3", 4)], 0).verdict,
            Some(Verdict::Pending)
        );
        assert_eq!(
            reading(&mut a, &[row("n1", "n3", 4)], 5).verdict,
            Some(Verdict::Pending)
        );
        let d = reading(&mut a, &[row("n1", "n3", 4)], 10);
        assert_eq!(d.verdict, Some(Verdict::Halt));
        assert!(!d.passed);
        assert_eq!(d.breaches[0].held, 2);
        // Another pair breaching in the second window starts its own count.
        let mut a = Analysis::new(Policy::default(), WINDOW);
        reading(&mut a, &[row("n1", "n3", 4)], 0);
        let d = reading(&mut a, &[row("n1", "n2", 4)], 10);
        assert_eq!(d.verdict, Some(Verdict::Pending));
        // The breach that closes the gate is listed first, though others
        // are worse.
        let mut a = Analysis::new(Policy::default(), WINDOW);
        reading(&mut a, &[row("n1", "n3", 3)], 0);
        let d = reading(&mut a, &[row("n1", "n2", 9), row("n1", "n3", 3)], 10);
        assert_eq!(d.verdict, Some(Verdict::Halt));
        assert_eq!(
            (d.breaches[0].row.peer_node.as_str(), d.breaches[0].held),
            ("n3", 2)
        );
        assert_eq!(d.breaches[1].held, 1);
        // A gap (a reading under the threshold) starts it again.
        let mut a = Analysis::new(Policy::default(), WINDOW);
        reading(&mut a, &[row("n1", "n3", 4)], 0);
        reading(&mut a, &[row("n1", "n3", 1)], 5);
        let d = reading(&mut a, &[row("n1", "n3", 4)], 10);
        assert_eq!((d.verdict, d.breaches[0].held), (Some(Verdict::Pending), 1));
    }

    /// Windows are told apart by where the agents' windows ended, not by
    /// when the readings were taken.
    #[test]
    fn windows_are_told_apart_by_their_end() {
        let mut a = Analysis::new(Policy::default(), WINDOW);
        let at_end = |a: &mut Analysis, end_ms: u64, taken: u64| {
            let t = Thresholds {
                default: 0.02,
                ..Thresholds::default()
            };
            let mut d = judge(
                &t,
                GateScope::All,
                None,
                &[row("n1", "n3", 4)],
                vec![],
                vec![],
                "t".into(),
            );
            d.window_end_ms = end_ms;
            a.weigh(d, Duration::from_secs(taken))
        };
        assert_eq!(at_end(&mut a, 1_700_000_000_000, 0).breaches[0].held, 1);
        // Taken 10 s later, but a tick short of a window after: the same.
        let d = at_end(&mut a, 1_700_000_009_000, 10);
        assert_eq!((d.verdict, d.breaches[0].held), (Some(Verdict::Pending), 1));
        let d = at_end(&mut a, 1_700_000_010_000, 11);
        assert_eq!((d.verdict, d.breaches[0].held), (Some(Verdict::Halt), 2));
    }

    #[test]
    fn the_ceiling_or_one_reading_policy_halts_at_once() {
        let mut a = Analysis::new(Policy::default(), WINDOW);
        let d = reading(&mut a, &[row("n1", "n3", 10)], 0); // 10.1% >= 10%
        assert_eq!(d.verdict, Some(Verdict::Halt));
        assert!(d.breaches[0].over_ceiling);
        let once = Policy {
            consecutive: 1,
            ceiling: None,
            ..Policy::default()
        };
        let mut a = Analysis::new(once, WINDOW);
        let d = reading(&mut a, &[row("n2", "n3", 2)], 0);
        assert_eq!(d.verdict, Some(Verdict::Halt));
        assert!(!d.breaches[0].over_ceiling);
        let mut a = Analysis::new(
            Policy {
                ceiling: None,
                consecutive: 3,
                ..Policy::default()
            },
            WINDOW,
        );
        assert!(reading(&mut a, &[row("n1", "n3", 50)], 0).passed);
        assert!(reading(&mut a, &[row("n1", "n3", 50)], 10).passed);
        assert!(!reading(&mut a, &[row("n1", "n3", 50)], 20).passed);
    }

    #[test]
    fn stuck_pods_and_missing_agents_close_it_as_before() {
        let mut a = Analysis::new(Policy::default(), WINDOW);
        let t = Thresholds::default();
        let d = judge(
            &t,
            GateScope::All,
            None,
            &[],
            vec![],
            vec!["default/web-1".into()],
            "t".into(),
        );
        let d = a.weigh(d, Duration::ZERO);
        assert_eq!((d.verdict, d.passed), (Some(Verdict::Halt), false));
        // Missing agents: not passed, pending (the hold waits for them).
        let d = judge(
            &t,
            GateScope::All,
            None,
            &[],
            vec!["agent n3".into()],
            vec![],
            "t".into(),
        );
        let d = a.weigh(d, Duration::ZERO);
        assert_eq!((d.verdict, d.passed), (Some(Verdict::Pending), false));
    }
}
