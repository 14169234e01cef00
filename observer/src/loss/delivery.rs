//! Delivery per node pair, overlay and network pair: what one node's
//! underlay sent to a peer against what the peer's underlay received from
//! it. Both counts are taken at the NIC by the same program, and both ends
//! classify an inner packet's networks from the same addresses, so their
//! difference is what the wire (and everything between the two NICs) lost.
use std::{collections::BTreeMap, net::Ipv4Addr};

use observer_ebpf::{Direction, Net, Overlay};
use serde::Serialize;

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
    pub overlay: Overlay,
    /// Networks of the inner packets' ends; unknown for packets whose
    /// inner packet could not be parsed.
    pub src_net: Net,
    pub dst_net: Net,
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

    #[cfg(feature = "test-api")]
    fn key(&self) -> (&str, &str, Overlay, Net, Net) {
        (
            &self.from,
            &self.to,
            self.overlay,
            self.src_net,
            self.dst_net,
        )
    }
}

/// Every ordered node pair, overlay and network pair that carried
/// anything, from the nodes' cumulative counters.
pub fn deliveries(nodes: &[NodeView]) -> Vec<Delivery> {
    let mut out = Vec::new();
    for from in nodes {
        for to in nodes.iter().filter(|n| n.underlay != from.underlay) {
            let mut pairs: BTreeMap<(Overlay, Net, Net), (u64, u64)> = BTreeMap::new();
            for p in records(from.peers, to.underlay, Direction::Egress) {
                pairs
                    .entry((p.overlay, p.src_net, p.dst_net))
                    .or_default()
                    .0 += p.counts.packets;
            }
            for p in records(to.peers, from.underlay, Direction::Ingress) {
                pairs
                    .entry((p.overlay, p.src_net, p.dst_net))
                    .or_default()
                    .1 += p.counts.packets;
            }
            for ((overlay, src_net, dst_net), (sent, received)) in pairs {
                if sent > 0 || received > 0 {
                    out.push(Delivery {
                        from: from.name.into(),
                        to: to.name.into(),
                        overlay,
                        src_net,
                        dst_net,
                        sent,
                        received,
                    });
                }
            }
        }
    }
    out
}

fn records(
    peers: &[PeerRecord],
    peer: Ipv4Addr,
    direction: Direction,
) -> impl Iterator<Item = &PeerRecord> {
    peers
        .iter()
        .filter(move |p| p.peer == peer && p.direction == direction)
}

/// What happened between two readings of [`deliveries`]: a window.
#[cfg(feature = "test-api")]
pub fn window(before: &[Delivery], after: &[Delivery]) -> Vec<Delivery> {
    after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.key() == a.key());
            Delivery {
                sent: a.sent - b.map_or(0, |b| b.sent.min(a.sent)),
                received: a.received - b.map_or(0, |b| b.received.min(a.received)),
                ..a.clone()
            }
        })
        .filter(|d| d.sent > 0 || d.received > 0)
        .collect()
}
