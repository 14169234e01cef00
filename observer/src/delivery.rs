//! Delivery per node pair, overlay and network pair: what one node's
//! underlay sent to a peer against what the peer's underlay received from
//! it. Both counts are taken at the NIC by the same program, and both ends
//! classify an inner packet's networks from the same addresses, so their
//! difference is what the wire (and everything between the two NICs) lost.
use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::Serialize;

use crate::{agent::window::ALL, datapath::PeerRecord};

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
    /// Networks of the inner packets' ends; "unknown" for packets whose
    /// inner packet could not be parsed, "all" when one of the two agents
    /// predates network pairs (then compared per overlay only).
    pub src_net: &'static str,
    pub dst_net: &'static str,
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

    fn key(&self) -> (&str, &str, &str, &str, &str) {
        (
            &self.from,
            &self.to,
            self.overlay,
            self.src_net,
            self.dst_net,
        )
    }
}

type PairKey = (&'static str, &'static str, &'static str);

/// Every ordered node pair, overlay and network pair that carried
/// anything, from the nodes' cumulative counters.
pub fn deliveries(nodes: &[NodeView]) -> Vec<Delivery> {
    let mut out = Vec::new();
    for from in nodes {
        for to in nodes.iter().filter(|n| n.underlay != from.underlay) {
            let sent = records(from.peers, to.underlay, "egress");
            let received = records(to.peers, from.underlay, "ingress");
            // An agent from before network pairs reports "all": the other
            // side's pairs are then summed to match it.
            let collapse = sent
                .iter()
                .chain(&received)
                .any(|p| p.src_net == ALL || p.dst_net == ALL);
            let mut pairs: BTreeMap<PairKey, (u64, u64)> = BTreeMap::new();
            let key = |p: &PeerRecord| match collapse {
                true => (p.overlay, ALL, ALL),
                false => (p.overlay, p.src_net, p.dst_net),
            };
            for p in sent {
                pairs.entry(key(p)).or_default().0 += p.packets;
            }
            for p in received {
                pairs.entry(key(p)).or_default().1 += p.packets;
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

fn records<'a>(peers: &'a [PeerRecord], peer: Ipv4Addr, direction: &str) -> Vec<&'a PeerRecord> {
    peers
        .iter()
        .filter(|p| p.peer == peer && p.direction == direction)
        .collect()
}

/// What happened between two readings of [`deliveries`]: a window.
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
