//! Delivery per node pair and overlay: what one node's underlay sent to a
//! peer against what the peer's underlay received from it. Both counts are
//! taken at the NIC by the same program, so their difference is what the
//! wire (and everything between the two NICs) lost.
use std::net::Ipv4Addr;

use serde::Serialize;

use observer_ebpf::Overlay;

use crate::datapath::PeerRecord;

/// One node's counters, with the address its peers know it by.
#[derive(Clone)]
pub struct NodeView<'a> {
    pub name: &'a str,
    pub underlay: Ipv4Addr,
    pub peers: &'a [PeerRecord],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Delivery {
    pub from: String,
    pub to: String,
    pub overlay: &'static str,
    pub sent: u64,
    pub received: u64,
}

impl Delivery {
    /// Packets sent and never received. Received beyond sent (a counter
    /// read in the middle of a burst) is not loss and counts as none.
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }

    pub fn loss_ratio(&self) -> Option<f64> {
        (self.sent > 0).then(|| self.lost() as f64 / self.sent as f64)
    }
}

fn peer_packets(peers: &[PeerRecord], peer: Ipv4Addr, overlay: &str, direction: &str) -> u64 {
    peers
        .iter()
        .filter(|p| p.peer == peer && p.overlay == overlay && p.direction == direction)
        .map(|p| p.packets)
        .sum()
}

/// Every ordered node pair and overlay that carried anything, from the
/// nodes' cumulative counters.
pub fn deliveries(nodes: &[NodeView]) -> Vec<Delivery> {
    let mut out = Vec::new();
    for from in nodes {
        for to in nodes.iter().filter(|n| n.underlay != from.underlay) {
            for overlay in Overlay::ALL.iter().map(|o| o.label()) {
                let sent = peer_packets(from.peers, to.underlay, overlay, "egress");
                let received = peer_packets(to.peers, from.underlay, overlay, "ingress");
                if sent > 0 || received > 0 {
                    out.push(Delivery {
                        from: from.name.into(),
                        to: to.name.into(),
                        overlay,
                        sent,
                        received,
                    });
                }
            }
        }
    }
    out
}

/// What happened between two readings of [`deliveries`]: a window.
pub fn window(before: &[Delivery], after: &[Delivery]) -> Vec<Delivery> {
    after
        .iter()
        .map(|a| {
            let b = before
                .iter()
                .find(|b| b.from == a.from && b.to == a.to && b.overlay == a.overlay);
            Delivery {
                sent: a.sent - b.map_or(0, |b| b.sent.min(a.sent)),
                received: a.received - b.map_or(0, |b| b.received.min(a.received)),
                ..a.clone()
            }
        })
        .filter(|d| d.sent > 0 || d.received > 0)
        .collect()
}
