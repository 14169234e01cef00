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

use serde::{Deserialize, Serialize};

use crate::delivery::Delivery;

/// Which measurement a loss figure comes from.
pub mod signal {
    /// Underlay packets sent by this node against received by the peer.
    pub const DELIVERY: &str = "delivery";
    /// TCP handshakes this node's clients opened that were never answered.
    pub const HANDSHAKE: &str = "handshake";
    /// TCP segments this node's clients retransmitted.
    pub const RETRANSMIT: &str = "retransmit";
}

/// Label value for a dimension a signal does not have.
pub const ALL: &str = "all";

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
pub type TcpKey = (String, &'static str, &'static str, &'static str);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpTotals {
    pub segments: u64,
    pub retransmits: u64,
}

/// Handshakes of connections this node opened within the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakeCounts {
    pub answered: u64,
    pub unanswered: u64,
    pub reset: u64,
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
    pub tcp: BTreeMap<TcpKey, TcpTotals>,
}

/// Readings kept for one window.
pub struct Windows {
    window_ns: u64,
    samples: VecDeque<Sample>,
    /// Handshakes from the newest connection table (not cumulative: the
    /// table itself is the window, filtered by first sighting).
    handshakes: BTreeMap<TcpKey, HandshakeCounts>,
}

impl Windows {
    pub fn new(window_ns: u64) -> Self {
        Windows {
            window_ns,
            samples: VecDeque::new(),
            handshakes: BTreeMap::new(),
        }
    }

    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    /// Keeps the newest sample at or before the window's start, so a full
    /// window can always be measured.
    pub fn push(&mut self, sample: Sample, handshakes: BTreeMap<TcpKey, HandshakeCounts>) {
        let start = sample.at_ns.saturating_sub(self.window_ns);
        self.samples.push_back(sample);
        while self.samples.len() > 1 && self.samples[1].at_ns <= start {
            self.samples.pop_front();
        }
        self.handshakes = handshakes;
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
                node: node.into(),
                peer_node: now.to.clone(),
                overlay: now.overlay.into(),
                src_net: now.src_net.into(),
                dst_net: now.dst_net.into(),
                signal: signal::DELIVERY.into(),
                sent,
                lost: sent.saturating_sub(received),
                refused: 0,
                seconds: seconds(newest.at_ns - since),
            });
        }
        let oldest = &self.samples[0];
        for (key, now) in &newest.tcp {
            let before = oldest.tcp.get(key).copied().unwrap_or_default();
            let row = tcp_row(node, key, signal::RETRANSMIT);
            rows.push(LossRow {
                sent: now.segments.saturating_sub(before.segments),
                lost: now.retransmits.saturating_sub(before.retransmits),
                seconds: seconds(newest.at_ns - oldest.at_ns),
                ..row
            });
        }
        for (key, h) in &self.handshakes {
            rows.push(LossRow {
                sent: h.answered + h.unanswered + h.reset,
                lost: h.unanswered,
                seconds: seconds(self.window_ns),
                ..tcp_row(node, key, signal::HANDSHAKE)
            });
        }
        rows
    }
}

fn tcp_row(node: &str, (peer, overlay, src, dst): &TcpKey, signal: &str) -> LossRow {
    LossRow {
        node: node.into(),
        peer_node: peer.clone(),
        overlay: (*overlay).into(),
        src_net: (*src).into(),
        dst_net: (*dst).into(),
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
            overlay: "cilium",
            src_net: "legacy",
            dst_net: "cilium",
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
            w.push(
                sample(t, vec![delivery("b", t * 100, t * 100 - lost)]),
                BTreeMap::new(),
            );
        }
        let rows = w.loss("a");
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].sent, rows[0].lost), (1000, 15));
        assert_eq!(rows[0].seconds, 10.0);
        assert_eq!(w.samples.len(), 11);
    }

    #[test]
    fn a_peer_that_missed_rounds_is_measured_over_what_is_there() {
        let mut w = Windows::new(10_000_000_000);
        w.push(
            sample(0, vec![delivery("b", 0, 0), delivery("c", 0, 0)]),
            BTreeMap::new(),
        );
        w.push(sample(1, vec![delivery("b", 100, 100)]), BTreeMap::new());
        w.push(
            sample(2, vec![delivery("b", 200, 190), delivery("c", 50, 50)]),
            BTreeMap::new(),
        );
        let rows = w.loss("a");
        let c = rows.iter().find(|r| r.peer_node == "c").expect("c");
        assert_eq!((c.sent, c.lost, c.seconds), (50, 0, 2.0));
        let b = rows.iter().find(|r| r.peer_node == "b").expect("b");
        assert_eq!((b.sent, b.lost), (200, 10));
    }
}
