//! Loss over a sliding window, per peer node, overlay, network pair and
//! signal. The sampler stores cumulative readings once per interval; a
//! window is the difference between the newest reading and the oldest one
//! still inside the window, so a window never depends on when anyone
//! scrapes.
//!
//! Each pair is reported by its sender only (delivery: this node's sends
//! against the peer's receives; TCP: connections this node opened), so a
//! sum over all agents counts every packet once.
use std::collections::{BTreeMap, VecDeque};

use observer_ebpf::{Direction, Net, Overlay};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{PeerCounts, PeerRecord},
    delivery::Delivery,
};

/// Which measurement a loss figure comes from.
pub mod signal {
    /// Underlay packets sent by this node against received by the peer.
    pub const DELIVERY: &str = "delivery";
    /// TCP handshakes this node's clients opened towards the peer, against
    /// those not answered within 0.8 s (before the client's first SYN
    /// retry); refused ones apart.
    pub const HANDSHAKE: &str = "handshake";
    /// TCP segments this node sent to the peer, against those its stack
    /// retransmitted.
    pub const RETRANSMIT: &str = "retransmit";
}

/// One row of the loss matrix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossRow {
    pub node: String,
    pub peer_node: String,
    pub overlay: String,
    pub src_net: String,
    pub dst_net: String,
    pub signal: String,
    pub sent: u64,
    pub lost: u64,
    /// Probes the peer refused (nothing listening: TCP RST, ICMP port
    /// unreachable): in neither `sent` nor `lost`. 0 for other signals.
    #[serde(default)]
    pub refused: u64,
    /// Seconds the figures cover (less than the window while it fills).
    pub seconds: f64,
}

impl LossRow {
    pub fn ratio(&self) -> Option<f64> {
        (self.sent > 0).then(|| self.lost as f64 / self.sent as f64)
    }
}

/// (peer node, overlay, src_net, dst_net).
pub type TcpKey = (String, Overlay, Net, Net);

/// The TCP counters of this node's egress records, per peer node (named by
/// `name`), overlay and network pair: what its senders did towards each.
pub fn tcp_totals(
    records: &[PeerRecord],
    name: impl Fn(std::net::Ipv4Addr) -> String,
) -> BTreeMap<TcpKey, PeerCounts> {
    let mut out: BTreeMap<TcpKey, PeerCounts> = BTreeMap::new();
    for r in records.iter().filter(|r| r.direction == Direction::Egress) {
        let c = r.counts;
        if c.segments == 0 && c.handshakes() == 0 {
            continue;
        }
        *out.entry((name(r.peer), r.overlay, r.src_net, r.dst_net))
            .or_default() += c;
    }
    out
}

/// One reading, cumulative since the counters began.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub at_ns: u64,
    /// Peers whose agents answered this round.
    pub read: Vec<String>,
    /// This node to each of them, per overlay and network pair that ever
    /// carried anything.
    pub outgoing: Vec<Delivery>,
    /// The same, with the peers' counters read before this node's: what a
    /// window starting at this sample subtracts (see `sampler`).
    pub start: Vec<Delivery>,
    /// This node's own TCP counters: they need no peer, so every sample
    /// has them.
    pub tcp: BTreeMap<TcpKey, PeerCounts>,
}

/// Readings kept for one window.
pub struct Windows {
    window_ns: u64,
    samples: VecDeque<Sample>,
}

impl Windows {
    pub fn new(window_ns: u64) -> Self {
        Windows {
            window_ns,
            samples: VecDeque::new(),
        }
    }

    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    /// Keeps the newest sample at or before the window's start, so a full
    /// window can always be measured.
    pub fn push(&mut self, sample: Sample) {
        let start = sample.at_ns.saturating_sub(self.window_ns);
        self.samples.push_back(sample);
        while self.samples.len() > 1 && self.samples[1].at_ns <= start {
            self.samples.pop_front();
        }
    }

    /// The loss matrix over the current window, from `node`'s side.
    pub fn loss(&self, node: &str) -> Vec<LossRow> {
        let Some(newest) = self.samples.back() else {
            return Vec::new();
        };
        let mut rows = Vec::new();
        // Delivery, per peer: from the oldest reading of that peer in the
        // window (a peer that missed rounds is measured over what is
        // there); an overlay without a row then had carried nothing.
        for now in &newest.outgoing {
            let first = self.samples.iter().find(|s| s.read.contains(&now.to));
            let first = first.expect("the newest sample read it");
            let before = first.start.iter().find(|d| {
                (d.to.as_str(), d.overlay, d.src_net, d.dst_net)
                    == (now.to.as_str(), now.overlay, now.src_net, now.dst_net)
            });
            let since = first.at_ns;
            let sent = now.sent - before.map_or(0, |b| b.sent.min(now.sent));
            let received = now.received - before.map_or(0, |b| b.received.min(now.received));
            rows.push(LossRow {
                sent,
                lost: sent.saturating_sub(received),
                seconds: seconds(newest.at_ns - since),
                ..row(
                    node,
                    &(now.to.clone(), now.overlay, now.src_net, now.dst_net),
                    signal::DELIVERY,
                )
            });
        }
        // TCP, from this node's own counters: segments against the ones
        // its stack retransmitted, handshakes against the unanswered.
        let oldest = &self.samples[0];
        let seconds = seconds(newest.at_ns - oldest.at_ns);
        for (key, now) in &newest.tcp {
            let w = now.since(&oldest.tcp.get(key).copied().unwrap_or_default());
            if w.segments > 0 || w.retransmits > 0 {
                rows.push(LossRow {
                    sent: w.segments,
                    lost: w.retransmits,
                    seconds,
                    ..row(node, key, signal::RETRANSMIT)
                });
            }
            // A refused handshake reached the peer: not loss, shown apart
            // (as refused probes are).
            if w.handshakes() > 0 {
                rows.push(LossRow {
                    sent: w.handshakes_answered + w.handshakes_unanswered,
                    lost: w.handshakes_unanswered,
                    refused: w.handshakes_reset,
                    seconds,
                    ..row(node, key, signal::HANDSHAKE)
                });
            }
        }
        rows
    }
}

fn row(node: &str, (peer, overlay, src, dst): &TcpKey, signal: &str) -> LossRow {
    LossRow {
        node: node.into(),
        peer_node: peer.clone(),
        overlay: overlay.label().into(),
        src_net: src.label().into(),
        dst_net: dst.label().into(),
        signal: signal.into(),
        sent: 0,
        lost: 0,
        refused: 0,
        seconds: 0.0,
    }
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(to: &str, sent: u64, received: u64) -> Delivery {
        Delivery {
            from: "a".into(),
            to: to.into(),
            overlay: Overlay::Cilium,
            src_net: Net::Legacy,
            dst_net: Net::Cilium,
            sent,
            received,
        }
    }

    fn sample(at_s: u64, outgoing: Vec<Delivery>) -> Sample {
        Sample {
            at_ns: at_s * 1_000_000_000,
            read: outgoing.iter().map(|d| d.to.clone()).collect(),
            start: outgoing.clone(),
            outgoing,
            tcp: BTreeMap::new(),
        }
    }

    #[test]
    fn window_is_newest_minus_oldest_inside_it() {
        let mut w = Windows::new(10_000_000_000);
        for t in 0..=20u64 {
            // 100 packets a second, 3 of them lost from t = 15 on.
            let lost = t.saturating_sub(15) * 3;
            w.push(sample(t, vec![delivery("b", t * 100, t * 100 - lost)]));
        }
        let rows = w.loss("a");
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].sent, rows[0].lost), (1000, 15));
        assert_eq!(rows[0].seconds, 10.0);
        assert_eq!(w.samples.len(), 11);
    }

    fn record(overlay: Overlay, direction: Direction, counts: PeerCounts) -> PeerRecord {
        PeerRecord {
            peer: [192, 168, 50, 2].into(),
            overlay,
            direction,
            src_net: Net::Host,
            dst_net: Net::Cilium,
            counts,
        }
    }

    #[test]
    fn tcp_rows_are_differences_of_this_nodes_egress_counters() {
        let tcp = |segments, retransmits, answered, unanswered| {
            let counts = PeerCounts {
                packets: segments + 1,
                segments,
                retransmits,
                handshakes_answered: answered,
                handshakes_unanswered: unanswered,
                handshakes_reset: 1,
                ..PeerCounts::default()
            };
            // Ingress counters are the peer's senders': never this node's rows.
            let records = [
                record(Overlay::Cilium, Direction::Egress, counts),
                record(Overlay::Cilium, Direction::Ingress, counts),
                record(Overlay::Legacy, Direction::Egress, PeerCounts::default()),
            ];
            tcp_totals(&records, |_| "b".to_string())
        };
        let mut w = Windows::new(10_000_000_000);
        let mut push = |at_s: u64, totals| {
            w.push(Sample {
                at_ns: at_s * 1_000_000_000,
                tcp: totals,
                ..Sample::default()
            })
        };
        push(0, tcp(1000, 10, 20, 0));
        push(5, tcp(1500, 15, 30, 1));
        push(16, tcp(2000, 40, 40, 4));
        let rows = w.loss("a");
        let find = |signal: &str| rows.iter().find(|r| r.signal == signal).expect(signal);
        let retransmit = find(signal::RETRANSMIT);
        assert_eq!(
            (retransmit.sent, retransmit.lost),
            (500, 25),
            "from t=5 to t=16"
        );
        assert_eq!(retransmit.seconds, 11.0);
        let handshake = find(signal::HANDSHAKE);
        assert_eq!(
            (handshake.sent, handshake.lost, handshake.refused),
            (13, 3, 0)
        );
        assert_eq!(
            (
                handshake.peer_node.as_str(),
                handshake.overlay.as_str(),
                handshake.src_net.as_str()
            ),
            ("b", "cilium", "host")
        );
        assert_eq!(
            rows.len(),
            2,
            "nothing for the overlay without TCP: {rows:?}"
        );
    }

    #[test]
    fn a_peer_that_missed_rounds_is_measured_over_what_is_there() {
        let mut w = Windows::new(10_000_000_000);
        w.push(sample(0, vec![delivery("b", 0, 0), delivery("c", 0, 0)]));
        w.push(sample(1, vec![delivery("b", 100, 100)]));
        w.push(sample(
            2,
            vec![delivery("b", 200, 190), delivery("c", 50, 50)],
        ));
        let rows = w.loss("a");
        let c = rows.iter().find(|r| r.peer_node == "c").expect("c");
        assert_eq!((c.sent, c.lost, c.seconds), (50, 0, 2.0));
        let b = rows.iter().find(|r| r.peer_node == "b").expect("b");
        assert_eq!((b.sent, b.lost), (200, 10));
    }
}
