//! The gate: may the migration go on? Loss over every node pair, network
//! pair and signal in scope must stay at or under the SRE's threshold,
//! every agent must have answered (a pair nobody measured is not a
//! lossless pair), and no pod on the node may be stuck without a sandbox.
//! This is one reading's judgement; how readings add up to a halt (a
//! breach held over consecutive windows, or over the hard ceiling at once)
//! is [`super::analysis`]'s.
use std::{collections::BTreeMap, fmt, str::FromStr};

use observer_ebpf::{Net, Overlay};
use serde::{Deserialize, Serialize};

use crate::loss::{LossRow, Signal, Source, dropped::DropRow, mtu::PathMtu};

/// Which pairs the gate judges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum GateScope {
    /// Every node pair, network pair and the cluster totals.
    #[default]
    All,
    /// Only pairs with the node under migration at one end (its sums over
    /// its peers among them); the rest is recorded, not judged.
    Node,
}

/// Whether a row is crossover's own control traffic, never judged: TCP
/// handshakes and retransmits between two nodes' host addresses on the
/// plain underlay (overlay `none`, host to host). A guard: the datapath
/// keeps host-to-host traffic out of the peer counters, and the agents'
/// port out of the TCP signals wherever it comes from
/// (`Config::control_port`, docs/migrate.md); a row like this from another
/// source (Prometheus, an older agent) is left out all the same.
/// Judged still: delivery on that row, and every probe.
pub fn is_control_traffic(row: &LossRow) -> bool {
    matches!(row.signal, Signal::Handshake | Signal::Retransmit)
        && row.overlay == Overlay::None
        && (row.src_net, row.dst_net) == (Net::Host, Net::Host)
}

/// Loss ratios the gate tolerates, per signal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// For every signal without its own entry.
    pub default: f64,
    pub per_signal: BTreeMap<Signal, f64>,
    /// Rows with fewer packets sent are recorded but not judged: 1 lost of
    /// 3 says nothing about a network.
    pub min_sent: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            default: 0.01,
            per_signal: BTreeMap::new(),
            min_sent: 20,
        }
    }
}

impl Thresholds {
    pub fn for_signal(&self, signal: Signal) -> f64 {
        self.per_signal
            .get(&signal)
            .copied()
            .unwrap_or(self.default)
    }
}

/// A ratio as the SRE writes it: `1%`, `0.5%` or `0.01`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ratio(pub f64);

impl FromStr for Ratio {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (number, scale) = match s.strip_suffix('%') {
            Some(n) => (n, 100.0),
            None => (s, 1.0),
        };
        let value: f64 = number
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a ratio (write 1%, 0.5% or 0.01)"))?;
        let value = value / scale;
        if !(0.0..=1.0).contains(&value) {
            return Err(format!("{s:?} is not between 0% and 100%"));
        }
        Ok(Ratio(value))
    }
}

/// `SIGNAL=RATIO`, e.g. `probe_udp=2%`.
#[derive(Clone, Debug, PartialEq)]
pub struct SignalThreshold {
    pub signal: Signal,
    pub ratio: f64,
}

impl FromStr for SignalThreshold {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (signal, ratio) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected SIGNAL=RATIO, e.g. probe_udp=2%"))?;
        Ok(SignalThreshold {
            signal: signal.parse()?,
            ratio: ratio.parse::<Ratio>()?.0,
        })
    }
}

/// One row over its threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Breach {
    #[serde(flatten)]
    pub row: LossRow,
    pub ratio: f64,
    pub threshold: f64,
    /// Consecutive readings over separate windows this row has breached,
    /// this one included (the analysis fills it in; 0 when not gated).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held: u32,
    /// At or over the hard ceiling: closes the gate at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub over_ceiling: bool,
    /// The kernel's drops behind the loss, where the reading had them
    /// ("37 dropped on worker-3 by NETFILTER_DROP"): where and why.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub why: String,
    /// What ICMP fragmentation-needed said of the pair and overlay's path
    /// in the same reading, for a breach of another signal than mtu: the
    /// loss is likely an MTU's, with the size that fits
    /// ([`crate::loss::mtu::told`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_mtu: Option<PathMtu>,
}

impl Breach {
    /// Names the kernel's drops behind each breach (`drops` of the same
    /// reading, [`crate::loss::dropped`]) and what ICMP said of its path
    /// (`rows` of the same reading, those of signal mtu).
    pub fn explain(breaches: &mut [Breach], drops: &[DropRow], rows: &[LossRow]) {
        for b in breaches {
            if b.row.signal == Signal::Mtu {
                b.why = crate::loss::mtu::why(&b.row, drops);
                continue;
            }
            let behind = crate::loss::dropped::behind(drops, &b.row);
            b.why = crate::loss::dropped::describe(&behind, 3);
            b.path_mtu = crate::loss::mtu::told(&b.row, rows);
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_ms(n: &u64) -> bool {
    *n == 0
}

impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.row;
        write!(
            f,
            "{} -> {} overlay {} {}->{} {}: {} of {} lost ({:.2}% > {:.2}%)",
            r.node,
            r.peer_node,
            r.overlay,
            r.src_net,
            r.dst_net,
            r.signal,
            r.lost,
            r.sent,
            self.ratio * 100.0,
            self.threshold * 100.0
        )?;
        if self.over_ceiling {
            write!(f, ", at or over the hard ceiling")?;
        } else if self.held > 0 {
            let s = if self.held == 1 { "" } else { "s" };
            write!(f, ", in {} window{s} in a row", self.held)?;
        }
        if !self.why.is_empty() {
            write!(f, "; {}", self.why)?;
        }
        if let Some(m) = &self.path_mtu {
            write!(f, "; {}", crate::loss::mtu::say_told(m))?;
        }
        Ok(())
    }
}

/// What the gate made of a reading, once the analysis weighed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Nothing over its threshold (or only rows not judged).
    Pass,
    /// Rows over their threshold, not yet for the readings in a row the
    /// policy asks for: the migration goes on, the next windows decide.
    Pending,
    /// The gate closed.
    Halt,
}

/// What the gate saw and decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub at: String,
    /// Whether the migration may go on: a pass, or breaches still pending.
    pub passed: bool,
    /// The analysis's verdict; absent on readings only recorded (during a
    /// node's changes, after a rollback) and in records written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// End of the window the reading covered (Unix ms), when known: what
    /// the analysis tells separate windows by.
    #[serde(default, skip_serializing_if = "is_zero_ms")]
    pub window_end_ms: u64,
    pub breaches: Vec<Breach>,
    /// Agents or pairs that could not be measured.
    pub missing: Vec<String>,
    /// Pods that could not get a sandbox (e.g. no more IPs).
    pub stuck: Vec<String>,
    /// Rows judged (sent >= min_sent).
    pub judged: usize,
    /// Worst ratio per signal among judged rows.
    pub worst: BTreeMap<Signal, f64>,
    /// Breaches beyond the [`MAX_BREACHES`] worst: counted, not listed.
    #[serde(default)]
    pub more_breaches: usize,
    /// Rows with enough packets left unjudged by the scope (pairs without
    /// the node under migration, with `--gate-scope node`).
    #[serde(default)]
    pub out_of_scope: usize,
    /// Rows of crossover's own control traffic ([`is_control_traffic`]),
    /// never judged.
    #[serde(default)]
    pub control_traffic: usize,
    /// Where the reading came from (`--source`); the agents in records
    /// written before there was a choice.
    #[serde(default)]
    pub source: Source,
}

/// Breaches a decision lists, worst first.
pub const MAX_BREACHES: usize = 50;

impl Decision {
    /// One line per reason the gate closed.
    pub fn reasons(&self) -> Vec<String> {
        let mut out: Vec<String> = self.breaches.iter().map(|b| b.to_string()).collect();
        if self.more_breaches > 0 {
            out.push(format!(
                "and {} more rows over their threshold",
                self.more_breaches
            ));
        }
        out.extend(self.missing.iter().map(|m| format!("not measured: {m}")));
        out.extend(self.stuck.iter().map(|s| format!("stuck: {s}")));
        out
    }

    /// Where the reading came from, for a report's line: nothing for the
    /// agents (the default), else `; read from Prometheus at URL`.
    pub fn read_from(&self) -> String {
        match &self.source {
            Source::Agents => String::new(),
            other => format!("; read from {other}"),
        }
    }

    pub fn summary(&self) -> String {
        if self.verdict == Some(Verdict::Pending) {
            format!("pending: {}", self.reasons().join("; "))
        } else if self.passed {
            let worst = self
                .worst
                .iter()
                .map(|(s, r)| format!("{s} {:.2}%", r * 100.0))
                .collect::<Vec<_>>()
                .join(", ");
            format!("{} rows under threshold (worst: {worst})", self.judged)
        } else {
            self.reasons().join("; ")
        }
    }
}

/// Judges one reading's rows (cluster totals among them) in `scope`
/// around `node` (the node under migration; none judges every pair).
/// `missing` are agents that did not answer; `stuck` pods the caller found.
pub fn judge<'a>(
    thresholds: &Thresholds,
    scope: GateScope,
    node: Option<&str>,
    rows: impl IntoIterator<Item = &'a LossRow>,
    missing: Vec<String>,
    stuck: Vec<String>,
    at: String,
) -> Decision {
    let mut breaches = Vec::new();
    let mut worst = BTreeMap::<Signal, f64>::new();
    let mut judged = 0;
    // Totals of the signals each agent measures alone are summaries: the
    // agents' own rows (the worst of them listed) are what is judged, pair
    // by pair, as before; a sum of many pairs' few handshakes would judge
    // churn, not a network.
    let mut out_of_scope = 0;
    let mut control_traffic = 0;
    let in_scope = |r: &LossRow| match (scope, node) {
        (GateScope::Node, Some(n)) => r.node == n || r.peer_node == n,
        _ => true,
    };
    let judged_rows = rows
        .into_iter()
        .filter(|r| !(r.is_total() && r.signal != Signal::Delivery))
        .filter(|r| r.sent >= thresholds.min_sent);
    for row in judged_rows {
        if is_control_traffic(row) {
            control_traffic += 1;
            continue;
        }
        if !in_scope(row) {
            out_of_scope += 1;
            continue;
        }
        let Some(ratio) = row.ratio() else { continue };
        judged += 1;
        let w = worst.entry(row.signal).or_default();
        *w = w.max(ratio);
        let threshold = thresholds.for_signal(row.signal);
        if ratio > threshold {
            breaches.push(Breach {
                row: row.clone(),
                ratio,
                threshold,
                held: 0,
                over_ceiling: false,
                why: String::new(),
                path_mtu: None,
            });
        }
    }
    // A cluster total over its threshold is named by the pairs of its
    // signal, overlay and networks that breached (the drill-down's); only
    // when none did (loss spread thin) does the total itself close the gate.
    let named = |t: &LossRow| {
        breaches.iter().any(|b| {
            !b.row.is_total()
                && (b.row.signal, b.row.overlay, b.row.src_net, b.row.dst_net)
                    == (t.signal, t.overlay, t.src_net, t.dst_net)
        })
    };
    let explained: Vec<bool> = breaches
        .iter()
        .map(|b| b.row.is_total() && named(&b.row))
        .collect();
    let mut explained = explained.into_iter();
    breaches.retain(|_| !explained.next().unwrap_or(false));
    breaches.sort_by(|a, b| b.ratio.total_cmp(&a.ratio));
    let more_breaches = breaches.len().saturating_sub(MAX_BREACHES);
    breaches.truncate(MAX_BREACHES);
    Decision {
        at,
        passed: breaches.is_empty() && missing.is_empty() && stuck.is_empty(),
        verdict: None,
        window_end_ms: 0,
        breaches,
        missing,
        stuck,
        judged,
        worst,
        more_breaches,
        out_of_scope,
        control_traffic,
        source: Source::Agents,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pair judged, no node under migration.
    fn all(t: &Thresholds, rows: &[LossRow], missing: Vec<String>, stuck: Vec<String>) -> Decision {
        judge(t, GateScope::All, None, rows, missing, stuck, "now".into())
    }

    /// Only `node`'s pairs judged.
    fn around(t: &Thresholds, node: &str, rows: &[LossRow]) -> Decision {
        judge(
            t,
            GateScope::Node,
            Some(node),
            rows,
            vec![],
            vec![],
            "t".into(),
        )
    }

    fn row(node: &str, peer: &str, signal: &str, sent: u64, lost: u64) -> LossRow {
        LossRow {
            node: node.into(),
            peer_node: peer.into(),
            overlay: observer_ebpf::Overlay::Cilium,
            src_net: observer_ebpf::Net::Cilium,
            dst_net: observer_ebpf::Net::Legacy,
            signal: signal.parse().unwrap(),
            sent,
            lost,
            refused: 0,
            seconds: 10.0,
            mtu: None,
        }
    }

    #[test]
    fn ratios_parse_as_sres_write_them() {
        assert_eq!("1%".parse::<Ratio>().unwrap().0, 0.01);
        assert_eq!("0.5%".parse::<Ratio>().unwrap().0, 0.005);
        assert_eq!("0.02".parse::<Ratio>().unwrap().0, 0.02);
        assert!("150%".parse::<Ratio>().unwrap_err().contains("between"));
        assert!("lots".parse::<Ratio>().unwrap_err().contains("not a ratio"));
        let t: SignalThreshold = "probe_udp=2%".parse().unwrap();
        assert_eq!((t.signal, t.ratio), (Signal::ProbeUdp, 0.02));
        assert!(
            "probe=2%"
                .parse::<SignalThreshold>()
                .unwrap_err()
                .contains("not a signal")
        );
    }

    #[test]
    fn a_row_over_its_signals_threshold_closes_the_gate() {
        let mut t = Thresholds::default();
        t.per_signal.insert(Signal::Retransmit, 0.05);
        let rows = [
            row("n1", "n3", "probe_udp", 200, 10), // 5% > 1%
            row("n1", "n2", "retransmit", 200, 8), // 4% <= 5%
            row("n2", "n3", "delivery", 1000, 10), // 1% == 1%: passes
            row("n2", "n1", "probe_tcp", 10, 3),   // too few to judge
        ];
        let d = all(&t, &rows, vec![], vec![]);
        assert!(!d.passed);
        assert_eq!(d.judged, 3);
        assert_eq!(d.breaches.len(), 1);
        assert_eq!(d.breaches[0].row.peer_node, "n3");
        assert_eq!(d.worst[&Signal::Retransmit], 0.04);
        let reason = &d.reasons()[0];
        assert!(
            reason.contains("n1 -> n3") && reason.contains("10 of 200"),
            "{reason}"
        );
    }

    #[test]
    fn a_breach_names_the_kernels_drops_behind_it() {
        let mut d = all(
            &Thresholds::default(),
            &[row("n1", "n3", "probe_udp", 200, 10)],
            vec![],
            vec![],
        );
        let dropped = |node: &str, peer: &str, direction, packets| DropRow {
            node: node.into(),
            peer_node: peer.into(),
            direction,
            overlay: Overlay::Cilium,
            src_net: Net::Host,
            dst_net: Net::Cilium,
            reason: "NETFILTER_DROP".into(),
            packets,
        };
        let drops = [
            dropped("n1", "n3", observer_ebpf::Direction::Egress, 9),
            // n3's own sends to n1: another row's.
            dropped("n3", "n1", observer_ebpf::Direction::Egress, 4),
        ];
        Breach::explain(&mut d.breaches, &drops, &[]);
        let reason = &d.reasons()[0];
        assert!(
            reason.ends_with("; 9 dropped on n1 by NETFILTER_DROP"),
            "{reason}"
        );
    }

    #[test]
    fn an_mtu_breach_is_named_as_a_black_hole_with_the_size_that_fits() {
        let mut lossy = row("worker-1", "worker-2", "mtu", 20, 20);
        lossy.mtu = Some(crate::loss::mtu::PathMtu {
            probed: 1450,
            fits: Some(1400),
            ..Default::default()
        });
        let mut d = all(&Thresholds::default(), &[lossy], vec![], vec![]);
        let too_big = DropRow {
            node: "worker-1".into(),
            peer_node: "worker-2".into(),
            direction: observer_ebpf::Direction::Egress,
            overlay: Overlay::Cilium,
            src_net: Net::Host,
            dst_net: Net::Cilium,
            reason: "PKT_TOO_BIG".into(),
            packets: 2,
        };
        // Another reason on the same pair is not the MTU's.
        let other = DropRow {
            reason: "NETFILTER_DROP".into(),
            ..too_big.clone()
        };
        Breach::explain(&mut d.breaches, &[too_big, other], &[]);
        let reason = &d.reasons()[0];
        assert!(
            reason.ends_with(
                "; MTU black hole on worker-1 -> worker-2, cilium overlay: 1450-byte packets \
                 lost, 1400 pass; the kernel: 2 dropped on worker-1 by PKT_TOO_BIG"
            ),
            "{reason}"
        );
        assert!(!reason.contains("NETFILTER_DROP"), "{reason}");
    }

    /// A tunnel packet over the path MTU its node learnt is dropped as
    /// NOT_SPECIFIED: the pair's ICMP, from the reading's mtu row, says
    /// what the drop reason does not.
    #[test]
    fn a_breach_on_a_path_icmp_told_of_says_the_size_that_fits() {
        let lossy = row("worker-1", "worker-2", "in_node", 40, 14);
        let mut told = row("worker-1", "worker-2", "mtu", 0, 0);
        told.src_net = Net::Host;
        told.dst_net = Net::Host;
        told.mtu = Some(crate::loss::mtu::PathMtu {
            icmp_next_hop: Some(1350),
            icmp_frag_needed: 1,
            ..Default::default()
        });
        let rows = [lossy, told];
        let mut d = all(&Thresholds::default(), &rows[..1], vec![], vec![]);
        let dropped = DropRow {
            node: "worker-1".into(),
            peer_node: "worker-2".into(),
            direction: observer_ebpf::Direction::Egress,
            overlay: Overlay::Cilium,
            src_net: Net::Cilium,
            dst_net: Net::Legacy,
            reason: "NOT_SPECIFIED".into(),
            packets: 14,
        };
        Breach::explain(&mut d.breaches, &[dropped], &rows);
        let reason = &d.reasons()[0];
        assert!(
            reason.ends_with(
                "; 14 dropped on worker-1 by NOT_SPECIFIED; 1 ICMP fragmentation-needed about \
                 this path: overlay packets up to 1350 bytes fit"
            ),
            "{reason}"
        );
        // Serialised typed, by name.
        let json = serde_json::to_value(&d.breaches[0]).unwrap();
        assert_eq!(json["path_mtu"]["icmp_next_hop"], 1350, "{json}");
        // Without the mtu row: the drops alone.
        Breach::explain(&mut d.breaches, &[], &rows[..1]);
        assert_eq!(d.breaches[0].path_mtu, None);
    }

    #[test]
    fn unmeasured_pairs_and_stuck_pods_close_the_gate() {
        let t = Thresholds::default();
        let rows = [row("n1", "n2", "delivery", 1000, 0)];
        assert!(all(&t, &rows, vec![], vec![]).passed);
        let d = all(&t, &rows, vec!["agent n3".into()], vec![]);
        assert!(!d.passed && d.summary().contains("not measured: agent n3"));
        let d = all(&t, &rows, vec![], vec!["default/web-1".into()]);
        assert!(!d.passed && d.summary().contains("stuck: default/web-1"));
    }

    #[test]
    fn a_total_is_named_by_its_pairs_or_closes_the_gate_itself() {
        let t = Thresholds::default();
        let total = |lost| LossRow {
            node: crate::loss::CLUSTER.into(),
            peer_node: crate::loss::CLUSTER.into(),
            ..row("x", "y", "delivery", 1000, lost)
        };
        let pair = row("n1", "n2", "delivery", 100, 20);
        let d = all(&t, &[total(50), pair.clone()], vec![], vec![]);
        assert_eq!(d.breaches.len(), 1, "{d:?}");
        assert_eq!(d.breaches[0].row, pair);
        // Spread thin over many pairs: the total itself breaches.
        let d = all(
            &t,
            &[total(50), row("n1", "n2", "delivery", 100, 1)],
            vec![],
            vec![],
        );
        assert_eq!(d.breaches.len(), 1);
        assert!(d.breaches[0].row.is_total() && !d.passed);
        // Too few to judge, even when every one was lost: probes to a pod
        // that just moved are lost until every agent's view drops it.
        let d = all(&t, &[row("n1", "n2", "probe_udp", 8, 8)], vec![], vec![]);
        assert!(d.passed, "{d:?}");
        // A total of a signal agents judge alone is a summary, not judged.
        let handshakes = LossRow {
            signal: Signal::Handshake,
            ..total(50)
        };
        let d = all(&t, &[handshakes], vec![], vec![]);
        assert!(d.passed && d.judged == 0, "{d:?}");
    }

    #[test]
    fn the_scope_and_control_traffic_leave_rows_unjudged() {
        let t = Thresholds::default();
        let unrelated = row("n2", "n3", "retransmit", 100, 10);
        let ours = row("n1", "n2", "probe_udp", 100, 10);
        // Host to host on the plain underlay: readers, watches, the driver.
        let control = |signal: &str| LossRow {
            overlay: Overlay::None,
            src_net: Net::Host,
            dst_net: Net::Host,
            ..row("n1", "n3", signal, 100, 50)
        };
        let rows = [
            unrelated.clone(),
            ours.clone(),
            control("handshake"),
            control("retransmit"),
        ];
        let every = all(&t, &rows, vec![], vec![]);
        assert_eq!(every.breaches.len(), 2, "{every:?}");
        assert_eq!(
            (every.judged, every.control_traffic, every.out_of_scope),
            (2, 2, 0)
        );
        let node = around(&t, "n1", &rows);
        assert_eq!(node.breaches.len(), 1, "{node:?}");
        assert_eq!(node.breaches[0].row, ours);
        assert_eq!(
            (node.judged, node.control_traffic, node.out_of_scope),
            (1, 2, 1)
        );
        // Delivery on the same row is the underlay's loss: judged.
        let delivery = control("delivery");
        let d = all(&t, &[delivery], vec![], vec![]);
        assert_eq!((d.breaches.len(), d.control_traffic), (1, 0));
        // The node's sums over its peers are in its scope.
        let sum = row("n1", crate::loss::CLUSTER, "probe_tcp", 100, 10);
        let d = around(&t, "n1", &[sum]);
        assert_eq!(d.breaches.len(), 1);
    }
}
