//! Which measurement a loss figure comes from: one type for the agent's
//! windows, the probes, the gate's thresholds, the JSON and the metric
//! labels, serialised by name.
use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Underlay packets one node sent to a peer against those the peer's
    /// underlay received: the only signal that needs both ends.
    Delivery,
    /// TCP handshakes a node's clients opened towards a peer, against those
    /// not answered within 0.8 s (before the client's first SYN retry);
    /// refused ones apart.
    Handshake,
    /// TCP segments a node sent to a peer, against those its stack
    /// retransmitted.
    Retransmit,
    /// Probe echoes of a datagram: one packet each way.
    ProbeUdp,
    /// Probe TCP handshakes, timed from connect to established.
    ProbeTcp,
    /// Packets of the cluster a node's kernel dropped on their way to a
    /// peer, or on their way in from it (`skb:kfree_skb`; `NO_SOCKET` is
    /// refused, the node's own sockets' `TCP_*` and `SOCKET_*` are not
    /// counted), against everything the node's
    /// underlay exchanged with that peer that way: loss inside a node,
    /// which delivery (underlay to underlay) cannot see.
    InNode,
    /// Large probe echoes (the route's MTU towards the peer, DF set):
    /// lost while small ones pass, an MTU black hole. Its rows carry the
    /// size that fits ([`crate::probe::PathMtu`]).
    Mtu,
}

impl Signal {
    pub const ALL: [Signal; 7] = [
        Signal::Delivery,
        Signal::Handshake,
        Signal::Retransmit,
        Signal::ProbeUdp,
        Signal::ProbeTcp,
        Signal::InNode,
        Signal::Mtu,
    ];
    /// The signals one agent measures alone, from its own counters.
    pub const LOCAL: [Signal; 6] = [
        Signal::Handshake,
        Signal::Retransmit,
        Signal::ProbeUdp,
        Signal::ProbeTcp,
        Signal::InNode,
        Signal::Mtu,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Signal::Delivery => "delivery",
            Signal::Handshake => "handshake",
            Signal::Retransmit => "retransmit",
            Signal::ProbeUdp => "probe_udp",
            Signal::ProbeTcp => "probe_tcp",
            Signal::InNode => "in_node",
            Signal::Mtu => "mtu",
        }
    }

    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.label() == label)
    }

    pub const fn is_probe(self) -> bool {
        matches!(self, Signal::ProbeUdp | Signal::ProbeTcp | Signal::Mtu)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.label())
    }
}

impl FromStr for Signal {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Signal::from_label(s).ok_or_else(|| {
            let names: Vec<_> = Signal::ALL.iter().map(|s| s.label()).collect();
            format!("{s:?} is not a signal (one of {})", names.join(", "))
        })
    }
}

impl From<crate::probe::Probe> for Signal {
    fn from(p: crate::probe::Probe) -> Self {
        p.signal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_labels_and_json() {
        for s in Signal::ALL {
            assert_eq!(s.label().parse::<Signal>(), Ok(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.label()));
            assert_eq!(serde_json::from_str::<Signal>(&json).unwrap(), s);
        }
        let err = "probe".parse::<Signal>().unwrap_err();
        assert!(
            err.contains("not a signal") && err.contains("probe_udp"),
            "{err}"
        );
    }
}
